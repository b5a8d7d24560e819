//! maos-lock: mutual exclusion between agents and processes sharing one repository, correct
//! when holders crash at any instant, when the machine loses power, and when a process is
//! stopped in the middle of an operation.
//!
//! - [`FileLock`] takes an exclusive or shared lock on a workspace-relative path or pattern
//!   (`src/api/**` conflicts with `src/api/user.rs`, `src` with `src/main.rs`) and returns a
//!   [`LockGuard`] carrying a [`FencingToken`]; [`check_fencing_token`] lets other components
//!   refuse work from a holder whose lock is gone. Tokens come from one workspace-wide counter
//!   whose reservation is made durable before use: they only grow, across crashes, power cuts
//!   and damaged files.
//! - Leases: every lock ends at `expires_at` unless renewed ([`LockGuard::renew`], or the
//!   heartbeat thread of [`FileLock::heartbeat`], which reports a lost lock through
//!   [`FileLock::on_lost`]); a lock whose process died on this host is reclaimed at once
//!   (kernel-lock liveness, no pid reuse trap). A lock taken with [`FileLock::inheritable`]
//!   lives as long as the child processes that inherit it (`maos lock run`, like flock(1)).
//! - [`FileLock::acquire_lease`] takes a lock for the agent alone (no process: `maos lock
//!   acquire`), written durably; it ends when released, expired, or when the agent's registry
//!   record says it is dead. Taking a lease the agent already holds returns it at once.
//! - Waiters are served first come, first served, and sleep until whoever unblocks them writes
//!   their wake-up file (an inotify event), their blocker dies or its lease ends, or a fallback
//!   timer fires; [`FileLock::on_blocked`] tells whom a wait waits for; a timeout names the
//!   holder, its purpose and its lease end. Every operation gives up at its deadline even if
//!   another process is stopped while it holds the table's guard, and names that process.
//! - [`LockTable`] lists the table, answers "who holds a lock conflicting with this path"
//!   ([`LockTable::conflicting`]: synchronous, no runtime, a cost that follows the path, not
//!   the number of locks held) and releases or renews an agent's leases.
//! - [`AdvisoryLock`]: cooperative turns by priority, then arrival.
//! - [`DeadlockDetector`]: cycles in the wait-for graph of the real holders and waiters
//!   (processes and agents' leases), broadcast on the `deadlock` topic (maos-comm), optionally
//!   resolved by aborting the youngest wait and telling its agent what to release.
//! - [`doctor`]: checks every file of the table, and repairs what can be repaired without
//!   losing a lock a live process may hold or letting a token repeat.
//!
//! Everything lives in `.maos/locks/`: a guard file whose kernel lock serialises every
//! operation, an index of keys (hash buckets) over one checksummed document per key written
//! copy on write (an operation reads the documents of the resource, its parents and the
//! patterns, and writes only what it changes), the durable id reservation, one liveness file
//! per process (and one per inheritable lock, also the liveness of its wait), reused as
//! spares rather than created and deleted, and one wake-up file per waiter (a hard link to
//! its liveness file). The format and the exact protocol are in
//! `docs/protocol.md` (lock section); the storage sits behind one module (the take, queue,
//! break, renew and release steps) so another backend can implement the same semantics. Start
//! at [`FileLock`].
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use maos_core::{AgentId, ResourceName, Workspace};
//! use maos_lock::{FileLock, LockMode, LockTable, check_fencing_token};
//!
//! let dir = tempfile::tempdir()?;
//! let ws = Workspace::init(dir.path())?;
//! let res = ResourceName::new("src/api/user.rs")?;
//! let guard = FileLock::new(&ws, res.clone()).acquire_blocking("add the /users endpoint")?;
//! check_fencing_token(&ws, &res, guard.token())?; // what a task tracker or merger calls
//! // Who holds something an edit of src/api would conflict with?
//! let holders = LockTable::open(&ws)?.conflicting(&ResourceName::new("src/api")?, LockMode::Exclusive)?;
//! assert_eq!(holders.len(), 1);
//! let token = guard.token();
//! guard.release()?;
//! assert!(check_fencing_token(&ws, &res, token).is_err()); // stale now
//!
//! // A lease of the agent alone, as `maos lock acquire` takes it: re-entrant.
//! let lease = FileLock::new(&ws, res.clone()).agent(AgentId::new("a1")?);
//! let first = lease.acquire_lease("refactor")?;
//! let again = lease.acquire_lease("refactor")?;
//! assert!(again.reentered && again.info.token == first.info.token);
//! assert!(again.info.token > token); // tokens only grow
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - Single host: liveness uses kernel locks and waiting uses inotify, neither of which works
//!   across NFS; a holder on another host is only ended by its lease.
//! - Each waiting process uses one inotify instance (the kernel's default limit is 128 per
//!   user, `fs.inotify.max_user_instances`); a process that cannot get one logs a warning and
//!   its waiters re-check on a timer (5 ms doubling to 250 ms) instead of being woken.
//! - Only leases (and the id reservation) are fsynced; locks held by processes are not: after
//!   a power cut every process is gone anyway, and the table's index is rebuilt from the
//!   documents on the first operation after a restart. A lease whose document a power cut
//!   tore is dropped (its bytes saved for `maos doctor`); its holder's fenced writes fail.
//! - A damaged document (not a torn write) stops the operations that must read it with an
//!   error pointing at `maos doctor`; they never guess. Operations on unrelated resources go
//!   on.
//! - A lock on a directory (or a pattern) that has locks below it reads the whole table to
//!   find them; so do listing, `renew` of all of an agent's locks, and deadlock detection.
//! - The threads of one process are one node of the wait-for graph; a command run under
//!   `maos lock run` that itself waits for another lock is a separate process, and a cycle
//!   through it is not seen (its timeout ends it).
//! - A lease that runs out while its holder still works is lost: the holder finds out when it
//!   renews or releases ([`Error::LockLost`]); writes must carry the fencing token.

mod advisory;
mod deadlock;
mod doctor;
mod error;
mod lock;
mod pattern;
mod storage;
mod store;
mod watch;

pub use advisory::{AdvisoryInterest, AdvisoryLock, Interest};
pub use deadlock::{
    DEADLOCK_TOPIC, Deadlock, DeadlockDetector, DeadlockNotification, Monitor, Node, NodeId,
    Resolution, VICTIM_RULE, Via, VictimNotice, WaitEdge, WaitForGraph, WaitId,
};
pub use doctor::doctor;
pub use error::{Error, HolderSummary, Result, WaiterSummary};
pub use lock::{
    DEFAULT_TTL, DEFAULT_WAIT, FencingToken, FileLock, GUARD_FLOOR, LeaseGrant, LockGuard,
    LockTable, MAX_TTL, check_fencing_token,
};
pub use pattern::overlaps;
pub use storage::{FileLocks, LockRequest, LockStore, Report, RunOutcome};
pub use store::ops::{Blocker, Snapshot};
pub use store::records::{Abort, LockInfo, LockMode, WaiterInfo};
pub use store::{RECORD_TEXT_LIMIT, check_record_text};

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
