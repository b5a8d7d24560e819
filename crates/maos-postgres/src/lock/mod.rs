//! Locks on PostgreSQL: exclusive, shared and pattern locks, FIFO waiters, leases on the
//! server's clock, fencing tokens from one sequence, holders alive while their database
//! session lasts, and deadlock detection over the waits of every machine.
//!
//! Every state change of a namespace's locks is one transaction that first takes the row lock
//! of `maos.guards (ns, 'locks')` (the table-wide guard of the file backend), reads the
//! holders and waiters with their liveness (`session_key IS NULL OR maos.session_alive(key)`)
//! and the server's clock (`maos.now_ms()`), decides in Rust with the same conflict rules as
//! maos-lock ([`maos_lock::overlaps`]), writes, and notifies every waiter that is no longer
//! blocked (`pg_notify('maos_l<ns>', ticket)`, delivered at commit).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use maos_core::{AgentId, ResourceName};
use maos_lock::LockMode;
use serde::Serialize;

use crate::conn::{Exec, Session};
use crate::{Error, Holder, Pg, Result};

mod deadlock;
mod state;
mod table;
#[cfg(test)]
mod tests;

pub use deadlock::{Deadlock, PgDeadlockDetector, WaitEdge};
pub use table::PgLockTable;

use state::{GUARD_FLOOR, Request, Step, load, remove_waiters, signal, step, u};

/// Default lease length.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default longest wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The topic deadlocks are broadcast on.
pub const DEADLOCK_TOPIC: &str = "deadlock";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn mode_str(m: LockMode) -> &'static str {
    match m {
        LockMode::Shared => "shared",
        _ => "exclusive",
    }
}

fn mode_of(s: &str) -> LockMode {
    if s == "shared" {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    }
}

fn conflicts(a: &ResourceName, am: LockMode, b: &ResourceName, bm: LockMode) -> bool {
    !(am == LockMode::Shared && bm == LockMode::Shared) && maos_lock::overlaps(a, b)
}

/// The NOTIFY channel of a namespace's lock waiters.
pub(crate) fn notify_channel(ns: i64) -> String {
    format!("maos_l{ns}")
}

/// A held lock as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockInfo {
    /// The ticket it was granted under.
    pub id: u64,
    /// The resource.
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The owning agent.
    pub owner: AgentId,
    /// The liveness session holding it; `None` for a lease held by the agent alone.
    pub session_key: Option<i64>,
    /// Granted at (ms, server clock).
    pub acquired_at: u64,
    /// Lease end (ms, server clock).
    pub expires_at: u64,
    /// Lease length.
    pub ttl_ms: u64,
    /// Why.
    pub purpose: String,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// The fencing token.
    pub token: u64,
}

impl LockInfo {
    /// `(id, token)` as the table's columns: what identifies this holding.
    fn row_key(&self) -> (i64, i64) {
        (
            i64::try_from(self.id).unwrap_or(i64::MAX),
            i64::try_from(self.token).unwrap_or(i64::MAX),
        )
    }

    fn holder(&self) -> Holder {
        Holder {
            owner: self.owner.clone(),
            resource: self.resource.clone(),
            purpose: self.purpose.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// A queued waiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaiterInfo {
    /// Arrival order.
    pub ticket: u64,
    /// The resource.
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The waiting agent.
    pub agent: AgentId,
    /// Its liveness session.
    pub session_key: i64,
    /// Since (ms, server clock).
    pub since: u64,
    /// Why.
    pub purpose: String,
    /// Set by deadlock resolution: the agents of the cycle.
    pub aborted: Option<Vec<AgentId>>,
}

/// Holders and waiters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Current holders (alive, lease running), by id.
    pub holders: Vec<LockInfo>,
    /// Waiters, by ticket.
    pub waiters: Vec<WaiterInfo>,
}

/// A lock on one resource (a path or pattern), configured builder-style, as
/// `maos_lock::FileLock`.
#[derive(Debug, Clone)]
pub struct PgLock {
    pg: Pg,
    resource: ResourceName,
    mode: LockMode,
    ttl: Duration,
    wait: Duration,
    agent: Option<AgentId>,
    metadata: BTreeMap<String, String>,
}

impl PgLock {
    /// An exclusive lock on `resource`, with the default lease and wait, owned by the
    /// current agent (`MAOS_AGENT_ID`).
    pub fn new(pg: &Pg, resource: ResourceName) -> Self {
        Self {
            pg: pg.clone(),
            resource,
            mode: LockMode::Exclusive,
            ttl: DEFAULT_TTL,
            wait: DEFAULT_WAIT,
            agent: None,
            metadata: BTreeMap::new(),
        }
    }

    /// A shared lock instead.
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

    /// The lease length (measured on the server's clock).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The longest [`PgLock::acquire`] waits.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Acts for `agent`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn agent(mut self, agent: AgentId) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Adds a metadata entry.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The limits every backend applies to a lock record (purpose, metadata).
    fn check_text(&self, purpose: &str) -> Result<()> {
        maos_lock::check_record_text(&self.resource, purpose, &self.metadata).map_err(|e| {
            Error::Invalid {
                what: "lock",
                reason: e.to_string(),
            }
        })
    }

    fn agent_id(&self) -> Result<AgentId> {
        match &self.agent {
            Some(a) => Ok(a.clone()),
            None => Ok(AgentId::current()?),
        }
    }

    /// Takes the lock if it is free and nobody is queued for an overlapping resource;
    /// `Ok(None)` otherwise.
    pub fn try_acquire(&self, purpose: &str) -> Result<Option<PgGuard>> {
        self.check_text(purpose)?;
        let agent = self.agent_id()?;
        let session = self.pg.session()?;
        let reconnect = self.pg.inner.options.reconnect_for;
        let (mut key, mut epoch) = session.current(reconnect)?;
        loop {
            let r = Request {
                lock: self,
                agent: &agent,
                purpose,
                req: uuid::Uuid::new_v4(),
                session_key: Some(key),
                lease: false,
            };
            let mut ticket = None;
            match step(&self.pg, &r, &mut ticket, false, GUARD_FLOOR)? {
                Step::Granted(info) => {
                    return Ok(Some(PgGuard::new(&self.pg, session, epoch, info)));
                }
                Step::Blocked { .. } => return Ok(None),
                Step::SessionGone => (key, epoch) = session.after(epoch, reconnect)?,
            }
        }
    }

    /// Takes the lock as a lease of the agent alone (no session: it outlives this process and
    /// ends when released, expired, or the agent's locks are released): `maos lock acquire`.
    pub fn acquire_lease(&self, purpose: &str) -> Result<LockInfo> {
        let g = self.acquire(purpose)?;
        g.detach()
    }

    /// Takes the lock, waiting first come, first served up to the configured wait.
    ///
    /// # Errors
    /// [`Error::Timeout`] naming the blocker; [`Error::Deadlock`] when deadlock resolution
    /// chose this wait.
    pub fn acquire(&self, purpose: &str) -> Result<PgGuard> {
        self.check_text(purpose)?;
        let agent = self.agent_id()?;
        let session = self.pg.session()?;
        let started = Instant::now();
        let deadline = started + self.wait;
        let reconnect = self.pg.inner.options.reconnect_for;
        let (key, mut epoch) = session.current(reconnect)?;
        let mut r = Request {
            lock: self,
            agent: &agent,
            purpose,
            req: uuid::Uuid::new_v4(),
            session_key: Some(key),
            lease: false,
        };
        // The hub listens before the first step, so that no wake-up can be missed.
        let hub = self.pg.hub()?;
        let chan = notify_channel(self.pg.inner.ns);
        let mut w = Withdraw {
            pg: &self.pg,
            ticket: None,
        };
        loop {
            let seen = hub.seen();
            let guard_wait = deadline.saturating_duration_since(Instant::now());
            let s = step(&self.pg, &r, &mut w.ticket, true, guard_wait)?;
            let (blocker, until, server_now) = match s {
                Step::Granted(info) => {
                    w.ticket = None;
                    return Ok(PgGuard::new(&self.pg, session, epoch, info));
                }
                Step::Blocked {
                    blocker,
                    until,
                    now,
                } => (blocker, until, now),
                Step::SessionGone => {
                    // Our place in the queue went with the session: ask again as a new
                    // request under the new one (the wait's deadline stands).
                    let (key, e) = session.after(epoch, reconnect)?;
                    epoch = e;
                    r.session_key = Some(key);
                    r.req = uuid::Uuid::new_v4();
                    continue;
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    resource: self.resource.clone(),
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    allowed_ms: u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX),
                    blocker: blocker.map(Box::new),
                });
            }
            let mut sleep = left.min(self.pg.inner.options.lock_fallback);
            if let Some(until) = until {
                let lease_left = Duration::from_millis(u(until - server_now) + 1);
                sleep = sleep.min(lease_left);
            }
            let mine = w.ticket.map(|t| t.to_string());
            hub.wait(seen, sleep, |ch, p| {
                ch == chan
                    && match p.strip_prefix("r:") {
                        Some(res) => ResourceName::new(res)
                            .is_ok_and(|r| maos_lock::overlaps(&r, &self.resource)),
                        None => mine
                            .as_deref()
                            .is_some_and(|m| p.split(',').any(|t| t == m)),
                    }
            });
        }
    }

    /// The resource.
    pub fn resource(&self) -> &ResourceName {
        &self.resource
    }
}

/// Removes a queued waiter when an acquisition ends without the lock (timeout, error,
/// unwinding).
struct Withdraw<'a> {
    pg: &'a Pg,
    ticket: Option<u64>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let ns = self.pg.inner.ns;
        let tk = i64::try_from(ticket).unwrap_or(i64::MAX);
        let r = self.pg.run(|c| {
            c.tx("withdraw a wait", |t| {
                t.relaxed()?;
                let mut st = load(t, ns)?;
                remove_waiters(t, ns, &[tk])?;
                st.waiters.retain(|w| w.v.ticket != ticket);
                signal(t, ns, &st)
            })
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, ticket, "cannot withdraw a lock wait");
        }
    }
}

/// A held lock. Dropping it releases the lock.
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock"]
pub struct PgGuard {
    pg: Pg,
    session: Arc<Session>,
    epoch: u64,
    info: LockInfo,
    active: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("key", &self.key()).finish()
    }
}

impl PgGuard {
    fn new(pg: &Pg, session: Arc<Session>, epoch: u64, info: LockInfo) -> Self {
        Self {
            pg: pg.clone(),
            session,
            epoch,
            info,
            active: true,
        }
    }

    /// The fencing token.
    pub fn token(&self) -> u64 {
        self.info.token
    }

    /// The lock record.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// True once the liveness session this lock was taken under was lost: the lock may be
    /// held by someone else now (a renewal or [`PgGuard::check`] says for sure).
    pub fn is_lost(&self) -> bool {
        self.session.epoch() != self.epoch
    }

    /// Extends the lease by its length from now (server clock).
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock is gone (lease ended, session ended, broken).
    pub fn renew(&mut self) -> Result<()> {
        let ns = self.pg.inner.ns;
        let (id, token) = self.info.row_key();
        let row = self.pg.run(|c| {
            c.opt(
                "renew a lock",
                "UPDATE maos.lock_holders SET expires_at = maos.now_ms() + ttl_ms
                 WHERE ns = $1 AND id = $2 AND token = $3 AND expires_at > maos.now_ms()
                   AND (session_key IS NULL OR maos.session_alive(session_key))
                 RETURNING expires_at",
                &[&ns, &id, &token],
            )
        })?;
        match row {
            Some(r) => {
                self.info.expires_at = u(r.get(0));
                Ok(())
            }
            None => Err(self.lost()),
        }
    }

    fn lost(&self) -> Error {
        let now = PgLockTable::new(&self.pg)
            .conflicting(&self.info.resource, self.info.mode)
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|h| Box::new(h.holder()));
        Error::LockLost {
            resource: self.info.resource.clone(),
            token: self.info.token,
            now,
        }
    }

    /// Checks that this guard still holds the lock.
    pub fn check(&self) -> Result<()> {
        PgLockTable::new(&self.pg).check_fencing_token(&self.info.resource, self.info.token)
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// [`Error::LockLost`] when it was lost already.
    pub fn release(mut self) -> Result<()> {
        self.active = false;
        release_record(&self.pg, &self.info)
    }

    /// Hands the lock to the owning agent: it no longer depends on this process's session
    /// and ends when released or when its lease runs out.
    pub fn detach(mut self) -> Result<LockInfo> {
        self.active = false;
        let ns = self.pg.inner.ns;
        let (id, token) = self.info.row_key();
        let n = self.pg.run(|c| {
            c.exec(
                "detach a lock",
                "UPDATE maos.lock_holders SET session_key = NULL WHERE ns = $1 AND id = $2 AND token = $3",
                &[&ns, &id, &token],
            )
        })?;
        if n == 0 {
            return Err(self.lost());
        }
        let mut info = self.info.clone();
        info.session_key = None;
        Ok(info)
    }
}

fn release_record(pg: &Pg, info: &LockInfo) -> Result<()> {
    // One statement, no guard: it only removes this holding, and tells the waiters of
    // overlapping resources to look again (each re-steps under the guard, in ticket order).
    let ns = pg.inner.ns;
    let (id, token) = info.row_key();
    let chan = notify_channel(ns);
    let rows = pg.run(|c| {
        c.tx("release a lock", |t| {
            t.relaxed()?;
            t.query(
                "release a lock",
                "WITH d AS (DELETE FROM maos.lock_holders WHERE ns = $1 AND id = $2 AND token = $3 RETURNING resource)
                 SELECT 1, pg_notify($4, 'r:' || d.resource) FROM d",
                &[&ns, &id, &token, &chan],
            )
        })
    })?;
    if rows.is_empty() {
        return Err(Error::LockLost {
            resource: info.resource.clone(),
            token: info.token,
            now: None,
        });
    }
    Ok(())
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        match release_record(&self.pg, &self.info) {
            Ok(()) => {}
            Err(Error::LockLost { .. }) => {
                tracing::warn!(resource = %self.info.resource, token = self.info.token, "lock was lost before it was dropped")
            }
            Err(e) => {
                tracing::error!(resource = %self.info.resource, error = &e as &dyn std::error::Error, "cannot release lock on drop")
            }
        }
    }
}
