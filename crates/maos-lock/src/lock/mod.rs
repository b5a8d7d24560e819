//! File locks with leases, fencing tokens, FIFO waiting and liveness (see the crate docs):
//! [`FileLock`] (the builder and the acquisitions), [`LockGuard`] (a held lock), the
//! renewal thread, and [`LockTable`] (listing, and the agent-level operations of the CLI).

mod guard;
mod heartbeat;
mod table;
mod waiting;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use maos_core::{AgentId, ResourceName, Workspace};
use serde::{Deserialize, Serialize};

pub use self::guard::{LeaseGrant, LockGuard};
pub use self::table::LockTable;
use self::waiting::Waiting;
use crate::store::ops::{self, Blocker, Hold};
use crate::store::{LockMode, Shared};
use crate::{Error, Result};

/// Default lease length.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default longest wait of [`FileLock::acquire`].
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest lease: a longer one is cut to this (the CLI refuses it). A lock that must
/// outlive it is renewed, so a forgotten lock still ends one day.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
/// The shortest time an operation waits for the table's guard (held for microseconds by
/// each operation), even with `wait(0)`.
pub const GUARD_FLOOR: Duration = Duration::from_millis(100);

/// A fencing token: strictly increasing per resource across all holders, crashes, power
/// cuts and restarts (all tokens of a workspace come from one counter). Pass it along with
/// every write made under the lock; the receiver refuses writes whose token is stale
/// ([`check_fencing_token`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Checks that `token` belongs to a current holder of `resource`: the record granted with it
/// still exists, its lease has not ended and its process (if any) is alive. A read: costs
/// the resource's own record, not the table's size.
///
/// # Errors
/// [`Error::StaleToken`] otherwise (with the token of the lock that holds it now, if any).
pub fn check_fencing_token(
    ws: &Workspace,
    resource: &ResourceName,
    token: FencingToken,
) -> Result<()> {
    let _span = tracing::debug_span!("check_fencing_token", resource = %resource, token = token.0)
        .entered();
    ops::check_token(&*Shared::of(ws)?, resource, token)
}

type BlockedHook = Arc<dyn Fn(&Blocker) + Send + Sync>;
type LostHook = Arc<dyn Fn(&Error) + Send + Sync>;

/// A lock on one resource (a workspace-relative path or pattern), configured builder-style.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use maos_core::{ResourceName, Workspace};
/// use maos_lock::FileLock;
/// let dir = tempfile::tempdir()?;
/// let ws = Workspace::init(dir.path())?;
/// let lock = FileLock::new(&ws, ResourceName::new("src/api/**")?)
///     .ttl(std::time::Duration::from_secs(120))
///     .wait(std::time::Duration::from_secs(5));
/// let guard = lock.acquire_blocking("refactor the API")?;
/// let other = FileLock::new(&ws, ResourceName::new("src/api/user.rs")?);
/// assert!(other.try_acquire("edit user")?.is_none()); // overlaps the pattern
/// guard.release()?;
/// assert!(other.try_acquire("edit user")?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileLock {
    ws: Workspace,
    resource: ResourceName,
    mode: LockMode,
    ttl: Duration,
    wait: Duration,
    heartbeat: bool,
    inheritable: bool,
    agent: Option<AgentId>,
    metadata: BTreeMap<String, String>,
    on_blocked: Option<BlockedHook>,
    on_lost: Option<LostHook>,
}

impl std::fmt::Debug for FileLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLock")
            .field("resource", &self.resource)
            .field("mode", &self.mode)
            .field("ttl", &self.ttl)
            .field("wait", &self.wait)
            .field("heartbeat", &self.heartbeat)
            .field("inheritable", &self.inheritable)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl FileLock {
    /// An exclusive lock on `resource` in `ws`, with the default lease ([`DEFAULT_TTL`]) and
    /// wait ([`DEFAULT_WAIT`]), owned by the current agent (`MAOS_AGENT_ID`).
    pub fn new(ws: &Workspace, resource: ResourceName) -> Self {
        Self {
            ws: ws.clone(),
            resource,
            mode: LockMode::Exclusive,
            ttl: DEFAULT_TTL,
            wait: DEFAULT_WAIT,
            heartbeat: false,
            inheritable: false,
            agent: None,
            metadata: BTreeMap::new(),
            on_blocked: None,
            on_lost: None,
        }
    }

    /// A shared (read) lock instead: many holders, none exclusive.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn shared(mut self) -> Self {
        self.mode = LockMode::Shared;
        self
    }

    /// Sets the mode.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn mode(mut self, mode: LockMode) -> Self {
        self.mode = mode;
        self
    }

    /// The lease length (1 ms to [`MAX_TTL`]; longer is cut): a holder that neither renews
    /// nor releases loses the lock after it.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.clamp(Duration::from_millis(1), MAX_TTL);
        self
    }

    /// The longest [`FileLock::acquire`] waits before failing with [`Error::Timeout`]
    /// (`Duration::MAX`: as long as it takes).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Renews the lease automatically from a background thread every `ttl / 3` while the
    /// guard lives (no async runtime needed). A lock the thread finds lost is reported
    /// ([`FileLock::on_lost`], [`LockGuard::is_lost`]).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn heartbeat(mut self, on: bool) -> Self {
        self.heartbeat = on;
        self
    }

    /// Gives the lock a liveness descriptor of its own that child processes can inherit
    /// ([`LockGuard::share_with_children`]): the lock then lasts as long as any of them runs,
    /// even if this process is killed and nobody renews the lease (`maos lock run`, like
    /// flock(1)).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn inheritable(mut self, on: bool) -> Self {
        self.inheritable = on;
        self
    }

    /// Acts for `agent` instead of the current agent.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn agent(mut self, agent: AgentId) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Adds a metadata entry to the lock record.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Calls `f` while waiting, whenever what blocks the wait changes (first a holder, then
    /// another, or an earlier waiter): `maos lock run` says on stderr whom it waits for.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn on_blocked(mut self, f: impl Fn(&Blocker) + Send + Sync + 'static) -> Self {
        self.on_blocked = Some(Arc::new(f));
        self
    }

    /// Calls `f` (from the heartbeat thread) when a renewal finds the lock lost: its lease
    /// ended and someone broke it, or its agent released it.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn on_lost(mut self, f: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_lost = Some(Arc::new(f));
        self
    }

    /// The resource.
    pub fn resource(&self) -> &ResourceName {
        &self.resource
    }

    fn start(&self, purpose: &str, hold: Hold) -> Result<Waiting> {
        crate::store::check_record_text(&self.resource, purpose, &self.metadata)?;
        let agent = match &self.agent {
            Some(a) => a.clone(),
            None => AgentId::current()?,
        };
        Waiting::new(Shared::of(&self.ws)?, self.clone(), agent, purpose, hold)
    }

    fn hold(&self) -> Hold {
        if self.inheritable {
            Hold::Inheritable
        } else {
            Hold::Process
        }
    }

    /// Takes the lock if it is free and nobody is queued for an overlapping resource;
    /// `Ok(None)` otherwise (never waits for the lock; waits at most [`GUARD_FLOOR`] for the
    /// table's guard).
    ///
    /// # Errors
    /// [`Error::AlreadyHeld`] when the agent holds an overlapping lease itself.
    pub fn try_acquire(&self, purpose: &str) -> Result<Option<LockGuard>> {
        let _span = tracing::debug_span!("try_acquire", resource = %self.resource).entered();
        // Never waits for the lock; waits for the guard only as long as GUARD_FLOOR.
        let mut w = self
            .clone()
            .wait(Duration::ZERO)
            .start(purpose, self.hold())?;
        match w.step(false)? {
            Some(g) => Ok(Some(w.finish(g))),
            None => Ok(None),
        }
    }

    /// Takes the lock, waiting (first come, first served) up to the configured wait, without
    /// an async runtime.
    ///
    /// # Errors
    /// [`Error::Timeout`] naming the holder, its purpose and its lease end;
    /// [`Error::Deadlock`] when deadlock resolution chose this wait as the victim;
    /// [`Error::AlreadyHeld`] at once when the agent holds an overlapping lease itself;
    /// a guard timeout ([`Error::is_timeout`]) naming a process that keeps the table's
    /// guard (stopped, say) past the wait.
    pub fn acquire_blocking(&self, purpose: &str) -> Result<LockGuard> {
        let _span =
            tracing::info_span!("acquire", resource = %self.resource, mode = ?self.mode).entered();
        let mut w = self.start(purpose, self.hold())?;
        let g = w.wait_blocking()?;
        Ok(w.finish(g))
    }

    /// Takes the lock as a lease of the agent, held without any process: it stays held after
    /// this process exits, until the agent releases it ([`LockTable::release`]), its lease
    /// ends, or the agent is dead (its registry record says so). Written durably: it
    /// survives a power cut. When the agent already holds exactly this lease, it is renewed
    /// and returned at once ([`LeaseGrant::reentered`]). What `maos lock acquire` does.
    ///
    /// # Errors
    /// As [`FileLock::acquire_blocking`].
    pub fn acquire_lease(&self, purpose: &str) -> Result<LeaseGrant> {
        let _span =
            tracing::info_span!("acquire_lease", resource = %self.resource, mode = ?self.mode)
                .entered();
        let mut w = self.start(purpose, Hold::Lease)?;
        let g = w.wait_blocking()?;
        Ok(LeaseGrant {
            info: g.info,
            reentered: g.reentered,
        })
    }

    /// Takes the lock, waiting (first come, first served) up to the configured wait. The
    /// table operations run on tokio's blocking pool; the wait itself is a file-system event
    /// or the fallback timer. Dropping the future withdraws from the queue.
    ///
    /// # Errors
    /// As [`FileLock::acquire_blocking`].
    pub async fn acquire(&self, purpose: &str) -> Result<LockGuard> {
        use tracing::Instrument as _;
        let span = tracing::info_span!("acquire", resource = %self.resource, mode = ?self.mode);
        self.acquire_async(purpose).instrument(span).await
    }

    async fn acquire_async(&self, purpose: &str) -> Result<LockGuard> {
        let dir = self.ws.locks_dir();
        let mut w = self.start(purpose, self.hold())?;
        loop {
            let seen = w.seen();
            // The guard is built on the blocking pool: if this future is dropped while the
            // step runs and the step grants the lock, dropping the task's output releases it
            // (a bare record would stay held until its lease ends).
            let stepped = crate::asyncify("run lock step", &dir, move || match w.step(true) {
                Ok(Some(g)) => Ok(Stepped::Held(w.finish(g))),
                Ok(None) => Ok(Stepped::Blocked(w)),
                Err(e) => Err(e),
            })
            .await?;
            w = match stepped {
                Stepped::Blocked(w) => w,
                Stepped::Held(guard) => return Ok(guard),
            };
            if w.prepare_watch() {
                continue;
            }
            let Some(until) = w.sleep_until() else {
                return crate::asyncify("run lock step", &dir, move || Err(w.timed_out())).await;
            };
            w.report();
            if let Some(wt) = w.watch() {
                wt.wait_async(crate::watch::Signal::Wake, seen, until).await;
            }
        }
    }
}

/// The outcome of one step of an async acquisition, built on the blocking pool.
#[allow(clippy::large_enum_variant)] // moved once per step across the blocking pool
enum Stepped {
    Held(LockGuard),
    Blocked(Waiting),
}

#[cfg(test)]
mod tests;
