//! maos-lock: mutual exclusion between agents and processes sharing one repository, correct
//! when holders crash at any instant.
//!
//! - [`FileLock`] takes an exclusive or shared lock on a workspace-relative path or pattern
//!   (`src/api/**` conflicts with `src/api/user.rs`) and returns a [`LockGuard`] carrying a
//!   [`FencingToken`]; [`check_fencing_token`] lets other components refuse work from a holder
//!   whose lock is gone.
//! - Leases: every lock ends at `expires_at` unless renewed ([`LockGuard::renew`], or the
//!   automatic heartbeat thread of [`FileLock::heartbeat`]); a lock whose process died on this
//!   host is reclaimed at once (kernel-lock liveness, no pid reuse trap).
//! - Waiters are served first come, first served, and sleep until whoever unblocks them writes
//!   their wake-up file (an inotify event), their blocker dies or its lease ends, or a fallback
//!   timer fires; a timeout names the holder, its purpose and its lease end.
//! - [`LockTable`] lists the table and releases or renews leases held by an agent (the CLI);
//!   [`LockGuard::detach`] turns a process's lock into such a lease.
//! - [`AdvisoryLock`]: cooperative turns by priority, then arrival.
//! - [`DeadlockDetector`]: cycles in the wait-for graph of every process, broadcast on the
//!   `deadlock` topic (maos-comm), optionally resolved by aborting the youngest wait.
//!
//! Everything lives in `.maos/locks/` (a guard file whose kernel lock serialises every state
//! change, the lock table in two checksummed slots, one liveness file per process, one wake-up
//! file per waiter); the format and the exact protocol are in `docs/protocol.md` (lock
//! section). Start at [`FileLock`].
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use maos_core::{ResourceName, Workspace};
//! use maos_lock::{FileLock, check_fencing_token};
//!
//! let dir = tempfile::tempdir()?;
//! let ws = Workspace::init(dir.path())?;
//! let res = ResourceName::new("src/api/user.rs")?;
//! let guard = FileLock::new(&ws, res.clone()).acquire_blocking("add the /users endpoint")?;
//! check_fencing_token(&ws, &res, guard.token())?; // what a task tracker or merger calls
//! let token = guard.token();
//! guard.release()?;
//! assert!(check_fencing_token(&ws, &res, token).is_err()); // stale now
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - Single host: liveness uses kernel locks and waiting uses inotify, neither of which works
//!   across NFS; a holder on another host is only ended by its lease.
//! - The lock table is not fsynced on every change (locks matter only while processes run); a
//!   power cut may lose the newest changes, so after a reboot every fencing counter jumps by
//!   2^32 to stay ahead of any token handed out before.
//! - All processes of one agent are one node in the deadlock detector's wait-for graph.
//! - A lease that runs out while its holder still works is lost: the holder finds out when it
//!   renews or releases ([`Error::LockLost`]); writes must carry the fencing token.

#![warn(clippy::return_self_not_must_use, clippy::await_holding_invalid_type)]

mod advisory;
mod deadlock;
mod error;
mod lock;
mod pattern;
mod store;
mod watch;

pub use advisory::{AdvisoryInterest, AdvisoryLock, Interest};
pub use deadlock::{
    AgentNode, DEADLOCK_TOPIC, Deadlock, DeadlockDetector, DeadlockNotification, Monitor,
    Resolution, VICTIM_RULE, WaitEdge, WaitForGraph, WaitId,
};
pub use error::{Error, HolderSummary, Result};
pub use lock::{
    DEFAULT_TTL, DEFAULT_WAIT, FencingToken, FileLock, LockGuard, LockTable, Snapshot,
    check_fencing_token,
};
pub use pattern::overlaps;
pub use store::{LockInfo, LockMode, WaiterInfo};

/// Runs the blocking step `op` on tokio's blocking pool: the one way this crate's async
/// methods call their blocking parts, and the one place where a background task that panicked
/// or was cancelled becomes an error (an [`Error::Io`] on `dir`, the lock directory), as
/// `tokio::fs` does with its `asyncify`.
pub(crate) async fn asyncify<F, T>(op: &'static str, dir: &std::path::Path, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(Error::io(op, dir, std::io::Error::other(e))),
    }
}
