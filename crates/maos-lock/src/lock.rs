//! File locks with leases, fencing tokens, FIFO waiting and liveness (see the crate docs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use maos_core::{AgentId, ResourceName, Workspace, now_ms};
use serde::{Deserialize, Serialize};

use crate::error::HolderSummary;
use crate::store::{LockInfo, LockMode, Locked, Shared, TableState, WaiterInfo};
use crate::watch::{self, DirWatch, Signal};
use crate::{Error, Result, overlaps};

/// Default lease length.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default longest wait of [`FileLock::acquire`].
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// A fencing token: strictly increasing per resource across all holders, crashes and
/// restarts. Pass it along with every write made under the lock; the receiver refuses writes
/// whose token is stale ([`check_fencing_token`]).
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

/// True when locks on `a` (in `am` mode) and `b` (in `bm` mode) cannot be held together.
pub(crate) fn conflicts(a: &ResourceName, am: LockMode, b: &ResourceName, bm: LockMode) -> bool {
    !(am == LockMode::Shared && bm == LockMode::Shared) && overlaps(a, b)
}

/// Checks that `token` belongs to a current holder of `resource`: the record granted with it
/// still exists, its lease has not ended and its process (if any) is alive. For an exclusive
/// lock that is the newest token issued for `resource`.
///
/// # Errors
/// [`Error::StaleToken`] otherwise (with the newest token issued).
pub fn check_fencing_token(
    ws: &Workspace,
    resource: &ResourceName,
    token: FencingToken,
) -> Result<()> {
    let _span = tracing::debug_span!("check_fencing_token", resource = %resource, token = token.0)
        .entered();
    Shared::of(ws)?.locked(|l| {
        let (mut t, mut dirty) = l.load_table()?;
        let now = now_ms();
        let current = t.current_token(resource);
        let pos = t
            .holders
            .iter()
            .position(|h| &h.resource == resource && h.token == token);
        let ok = match pos {
            Some(i) if l.holds(&t.holders[i], now) => true,
            Some(i) => {
                t.holders.remove(i);
                dirty = true;
                false
            }
            None => false,
        };
        if dirty {
            l.save_table(&t)?;
        }
        if ok {
            Ok(())
        } else {
            Err(Error::StaleToken {
                resource: resource.clone(),
                token,
                current,
            })
        }
    })
}

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
#[derive(Debug, Clone)]
pub struct FileLock {
    ws: Workspace,
    resource: ResourceName,
    mode: LockMode,
    ttl: Duration,
    wait: Duration,
    heartbeat: bool,
    agent: Option<AgentId>,
    metadata: BTreeMap<String, String>,
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
            agent: None,
            metadata: BTreeMap::new(),
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

    /// The lease length: a holder that neither renews nor releases loses the lock after it.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The longest [`FileLock::acquire`] waits before failing with [`Error::Timeout`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Renews the lease automatically from a background thread every `ttl / 3` while the
    /// guard lives (no async runtime needed).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn heartbeat(mut self, on: bool) -> Self {
        self.heartbeat = on;
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

    /// The resource.
    pub fn resource(&self) -> &ResourceName {
        &self.resource
    }

    fn start(&self, purpose: &str) -> Result<Waiting> {
        crate::store::check_record_text(&self.resource, purpose, &self.metadata)?;
        let agent = match &self.agent {
            Some(a) => a.clone(),
            None => AgentId::current()?,
        };
        let started = Instant::now();
        Ok(Waiting {
            shared: Shared::of(&self.ws)?,
            lock: self.clone(),
            agent,
            purpose: purpose.to_owned(),
            ticket: None,
            started,
            deadline: watch::deadline_after(started, self.wait),
            blocker: None,
            blocked_until: None,
            sleeps: 0,
            watch: None,
            registered: None,
        })
    }

    /// Takes the lock if it is free and nobody is queued for an overlapping resource;
    /// `Ok(None)` otherwise (never waits).
    pub fn try_acquire(&self, purpose: &str) -> Result<Option<LockGuard>> {
        let _span = tracing::debug_span!("try_acquire", resource = %self.resource).entered();
        let mut w = self.start(purpose)?;
        match w.step(false)? {
            Some(info) => Ok(Some(w.finish(info))),
            None => Ok(None),
        }
    }

    /// Takes the lock, waiting (first come, first served) up to the configured wait, without
    /// an async runtime.
    ///
    /// # Errors
    /// [`Error::Timeout`] naming the holder, its purpose and its lease end;
    /// [`Error::Deadlock`] when deadlock resolution chose this wait as the victim.
    pub fn acquire_blocking(&self, purpose: &str) -> Result<LockGuard> {
        let _span =
            tracing::info_span!("acquire", resource = %self.resource, mode = ?self.mode).entered();
        let mut w = self.start(purpose)?;
        loop {
            let seen = w.seen();
            if let Some(info) = w.step(true)? {
                return Ok(w.finish(info));
            }
            if w.prepare_watch() {
                continue; // look again now that the wake-ups are routed here
            }
            let Some(until) = w.sleep_until() else {
                return Err(w.timed_out());
            };
            if let Some(wt) = &w.watch {
                wt.wait_blocking(Signal::Wake, seen, until);
            }
        }
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
        let mut w = self.start(purpose)?;
        loop {
            let seen = w.seen();
            // The guard is built on the blocking pool: if this future is dropped while the
            // step runs and the step grants the lock, dropping the task's output releases it
            // (a bare `LockInfo` would leave the record held until its lease ends).
            let stepped = crate::asyncify("run lock step", &dir, move || match w.step(true) {
                Ok(Some(info)) => Ok(Stepped::Held(w.finish(info))),
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
            if let Some(wt) = w.watch.clone() {
                wt.wait_async(Signal::Wake, seen, until).await;
            }
        }
    }
}

/// The outcome of one step of an async acquisition, built on the blocking pool.
enum Stepped {
    Held(LockGuard),
    Blocked(Waiting),
}

/// One acquisition in progress. Dropping it withdraws its queue entry.
struct Waiting {
    shared: Arc<Shared>,
    lock: FileLock,
    agent: AgentId,
    purpose: String,
    ticket: Option<u64>,
    started: Instant,
    deadline: Instant,
    blocker: Option<HolderSummary>,
    /// Lease end of the holder that blocked the last step (ms since the epoch).
    blocked_until: Option<u64>,
    sleeps: u32,
    watch: Option<Arc<DirWatch>>,
    registered: Option<u64>,
}

impl Waiting {
    fn seen(&self) -> u64 {
        self.watch
            .as_ref()
            .map_or(0, |w| w.generation(Signal::Wake))
    }

    /// After a blocked step: makes sure the watch exists and routes this waiter's ticket to
    /// it. Returns true when something changed, so the caller must look again before
    /// sleeping (a signal sent before the routing would otherwise be missed).
    fn prepare_watch(&mut self) -> bool {
        let mut changed = false;
        if self.watch.is_none() {
            self.watch = Some(self.shared.watch());
            changed = true;
        }
        if self.registered != self.ticket {
            let wt = self.watch.as_ref().expect("created just above");
            if let Some(old) = self.registered.take() {
                wt.unregister(old);
            }
            if let Some(t) = self.ticket {
                wt.register(t);
            }
            self.registered = self.ticket;
            changed = true;
        }
        changed
    }

    /// When to look again: the deadline, the fallback timer, or the blocking lease's end,
    /// whichever is first; `None` once the deadline has passed.
    fn sleep_until(&mut self) -> Option<Instant> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        let fallback = self
            .watch
            .as_ref()
            .map_or(watch::FALLBACK, |w| w.fallback(self.sleeps));
        self.sleeps += 1;
        let mut until = self.deadline.min(now + fallback);
        if let Some(end) = self.blocked_until {
            let left = Duration::from_millis(end.saturating_sub(now_ms()).saturating_add(1));
            until = until.min(watch::deadline_after(now, left));
        }
        Some(until)
    }

    /// One look at the table under the guard: take the lock, or (if `enqueue`) join the queue.
    fn step(&mut self, enqueue: bool) -> Result<Option<LockInfo>> {
        let shared = self.shared.clone();
        shared.locked(|l| self.step_locked(l, enqueue))
    }

    fn step_locked(&mut self, l: &mut Locked<'_>, enqueue: bool) -> Result<Option<LockInfo>> {
        let (mut t, mut dirty) = l.load_table()?;
        let now = now_ms();
        let res = &self.lock.resource;
        let mode = self.lock.mode;
        let mut mine = None;
        if let Some(tk) = self.ticket {
            match t.waiters.iter().position(|w| w.ticket == tk) {
                Some(i) => {
                    if let Some(cycle) = t.waiters[i].aborted.clone() {
                        t.waiters.remove(i);
                        self.ticket = None;
                        l.remove_wake(tk);
                        l.save_table(&t)?;
                        tracing::info!(resource = %res, agent = %self.agent, "wait aborted by deadlock resolution");
                        return Err(Error::Deadlock {
                            resource: res.clone(),
                            agent: self.agent.clone(),
                            cycle,
                        });
                    }
                    mine = Some(tk);
                }
                None => {
                    tracing::warn!(resource = %res, ticket = tk, "queue entry vanished; queueing again");
                    self.ticket = None;
                }
            }
        }
        let mut blocked = false;
        let mut blocker = None;
        let mut i = 0;
        while i < t.holders.len() {
            let h = &t.holders[i];
            if conflicts(&h.resource, h.mode, res, mode) {
                if !l.holds(h, now) {
                    tracing::debug!(resource = %h.resource, owner = %h.owner, token = h.token.0, "stale lock broken");
                    t.holders.remove(i);
                    dirty = true;
                    continue;
                }
                blocked = true;
                blocker.get_or_insert_with(|| h.summary());
            }
            i += 1;
        }
        let mut i = 0;
        while i < t.waiters.len() {
            let w = &t.waiters[i];
            let earlier = mine.is_none_or(|m| w.ticket < m);
            if earlier && conflicts(&w.resource, w.mode, res, mode) {
                if !l.waits(w) {
                    tracing::debug!(ticket = w.ticket, agent = %w.agent, "dead waiter removed");
                    l.remove_wake(w.ticket);
                    t.waiters.remove(i);
                    dirty = true;
                    continue;
                }
                blocked = true;
            }
            i += 1;
        }
        if !blocked {
            let live = l.live_name()?;
            if let Some(m) = mine {
                t.waiters.retain(|w| w.ticket != m);
                l.remove_wake(m);
            }
            let id = match mine {
                Some(m) => m,
                None => t.take_ticket(),
            };
            self.ticket = None;
            let token = t.issue_token(res);
            let info = LockInfo {
                id,
                resource: res.clone(),
                mode,
                owner: self.agent.clone(),
                process: Some(l.shared.identity.clone()),
                live: Some(live),
                acquired_at: now,
                expires_at: now.saturating_add(watch::millis(self.lock.ttl)),
                ttl_ms: watch::millis(self.lock.ttl),
                purpose: self.purpose.clone(),
                metadata: self.lock.metadata.clone(),
                token,
            };
            t.holders.push(info.clone());
            l.save_table(&t)?;
            tracing::debug!(resource = %res, token = token.0, "lock granted");
            return Ok(Some(info));
        }
        self.blocked_until = blocker.as_ref().map(|b| b.expires_at);
        if blocker.is_some() {
            self.blocker = blocker;
        }
        if enqueue && mine.is_none() {
            let live = l.live_name()?;
            let tk = t.take_ticket();
            t.waiters.push(WaiterInfo {
                ticket: tk,
                resource: res.clone(),
                mode,
                agent: self.agent.clone(),
                process: Some(l.shared.identity.clone()),
                live: Some(live),
                since: now,
                purpose: self.purpose.clone(),
                aborted: None,
            });
            l.create_wake(tk);
            self.ticket = Some(tk);
            dirty = true;
            tracing::debug!(resource = %res, ticket = tk, "queued");
        }
        if dirty {
            l.save_table(&t)?;
        }
        Ok(None)
    }

    /// Leaves the queue and builds the timeout error.
    fn timed_out(mut self) -> Error {
        self.withdraw();
        Error::Timeout {
            resource: self.lock.resource.clone(),
            waited: self.started.elapsed(),
            holder: self.blocker.take().map(Box::new),
        }
    }

    fn withdraw(&mut self) {
        let Some(tk) = self.ticket.take() else { return };
        let r = self.shared.locked(|l| {
            let (mut t, _) = l.load_table()?;
            let before = t.waiters.len();
            t.waiters.retain(|w| w.ticket != tk);
            l.remove_wake(tk);
            if t.waiters.len() != before {
                l.save_table(&t)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                ticket = tk,
                "cannot withdraw from the lock queue"
            );
        }
    }

    fn finish(mut self, info: LockInfo) -> LockGuard {
        self.ticket = None;
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = self.lock.heartbeat.then(|| {
            let every = Duration::from_millis((info.ttl_ms / 3).max(1));
            Heartbeat::start(self.shared.clone(), info.clone(), every, lost.clone())
        });
        LockGuard {
            shared: self.shared.clone(),
            info,
            heartbeat,
            lost,
            active: true,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let (Some(w), Some(t)) = (&self.watch, self.registered.take()) {
            w.unregister(t);
        }
        self.withdraw();
    }
}

/// A held lock. Dropping it releases the lock synchronously (no runtime needed).
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock"]
pub struct LockGuard {
    shared: Arc<Shared>,
    info: LockInfo,
    heartbeat: Option<Heartbeat>,
    lost: Arc<AtomicBool>,
    active: bool,
}

impl LockGuard {
    /// The fencing token issued with this lock.
    pub fn token(&self) -> FencingToken {
        self.info.token
    }

    /// The lock record as published (its `expires_at` as of the last renewal by this guard).
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// The resource.
    pub fn resource(&self) -> &ResourceName {
        &self.info.resource
    }

    /// True once a renewal found the lock lost (the automatic heartbeat sets it).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Extends the lease by its length from now.
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock was broken meanwhile.
    pub fn renew(&mut self) -> Result<()> {
        let r = renew_record(&self.shared, &self.info);
        match r {
            Ok(expires) => {
                self.info.expires_at = expires;
                Ok(())
            }
            Err(e) => {
                if matches!(e, Error::LockLost { .. }) {
                    self.lost.store(true, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    /// Checks that this guard still holds the lock ([`check_fencing_token`]).
    pub fn check(&self) -> Result<()> {
        check_token_in(&self.shared, &self.info.resource, self.info.token)
    }

    /// Releases the lock: deletes its record, if it is still this guard's.
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock was already lost (nothing is deleted then).
    pub fn release(mut self) -> Result<()> {
        self.active = false;
        self.stop_heartbeat();
        release_record(&self.shared, &self.info)
    }

    /// Hands the lock over to the owning agent: it no longer depends on this process, stays
    /// held after it exits, and ends when released by the agent or when its lease runs out
    /// (`maos lock acquire` uses this).
    pub fn detach(mut self) -> Result<LockInfo> {
        self.active = false;
        self.stop_heartbeat();
        let id = self.info.id;
        let token = self.info.token;
        let info = self.info.clone();
        self.shared.locked(|l| {
            let (mut t, _) = l.load_table()?;
            let Some(h) = t
                .holders
                .iter_mut()
                .find(|h| h.id == id && h.token == token)
            else {
                return Err(lost_error(&t, &info));
            };
            h.live = None;
            let out = h.clone();
            l.save_table(&t)?;
            Ok(out)
        })
    }

    /// Lets child processes spawned from now on inherit this process's liveness descriptor,
    /// so the lock counts as held while any of them still runs, even if this process is
    /// killed (`maos lock run`, like flock(1)). Affects every lock of this process.
    pub fn share_with_children(&self) -> Result<()> {
        let Some(f) = self.shared.live_file() else {
            return Ok(());
        };
        rustix::io::fcntl_setfd(f, rustix::io::FdFlags::empty())
            .map_err(|e| Error::io("fcntl", &self.shared.dir, e.into()))
    }

    fn stop_heartbeat(&mut self) {
        if let Some(hb) = self.heartbeat.take() {
            hb.stop();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        self.stop_heartbeat();
        match release_record(&self.shared, &self.info) {
            Ok(()) => {}
            Err(Error::LockLost { .. }) => {
                tracing::warn!(resource = %self.info.resource, token = self.info.token.0, "lock was lost before it was dropped")
            }
            Err(e) => {
                tracing::error!(resource = %self.info.resource, error = &e as &dyn std::error::Error, "cannot release lock on drop")
            }
        }
    }
}

fn lost_error(t: &TableState, info: &LockInfo) -> Error {
    let now_held_by = t
        .holders
        .iter()
        .find(|h| conflicts(&h.resource, h.mode, &info.resource, info.mode))
        .map(|h| Box::new(h.summary()));
    Error::LockLost {
        resource: info.resource.clone(),
        token: info.token,
        now_held_by,
    }
}

fn release_record(shared: &Shared, info: &LockInfo) -> Result<()> {
    let _span =
        tracing::debug_span!("release", resource = %info.resource, token = info.token.0).entered();
    shared.locked(|l| {
        let (mut t, _) = l.load_table()?;
        match t
            .holders
            .iter()
            .position(|h| h.id == info.id && h.token == info.token)
        {
            Some(i) => {
                t.holders.remove(i);
                l.save_table(&t)?;
                Ok(())
            }
            None => Err(lost_error(&t, info)),
        }
    })
}

fn renew_record(shared: &Shared, info: &LockInfo) -> Result<u64> {
    shared.locked(|l| {
        let (mut t, _) = l.load_table()?;
        let now = now_ms();
        let Some(h) = t
            .holders
            .iter_mut()
            .find(|h| h.id == info.id && h.token == info.token)
        else {
            return Err(lost_error(&t, info));
        };
        h.expires_at = now.saturating_add(h.ttl_ms);
        let e = h.expires_at;
        l.save_table(&t)?;
        Ok(e)
    })
}

pub(crate) fn check_token_in(
    shared: &Shared,
    resource: &ResourceName,
    token: FencingToken,
) -> Result<()> {
    shared.locked(|l| {
        let (t, _) = l.load_table()?;
        let now = now_ms();
        let ok = t
            .holders
            .iter()
            .find(|h| &h.resource == resource && h.token == token)
            .is_some_and(|h| l.holds(h, now));
        if ok {
            Ok(())
        } else {
            Err(Error::StaleToken {
                resource: resource.clone(),
                token,
                current: t.current_token(resource),
            })
        }
    })
}

/// The automatic lease renewal thread of a guard.
#[derive(Debug)]
struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Heartbeat {
    fn start(shared: Arc<Shared>, info: LockInfo, every: Duration, lost: Arc<AtomicBool>) -> Self {
        let (stop, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("maos-lock-heartbeat".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    match renew_record(&shared, &info) {
                        Ok(_) => tracing::trace!(resource = %info.resource, "lease renewed"),
                        Err(e @ Error::LockLost { .. }) => {
                            tracing::warn!(
                                error = &e as &dyn std::error::Error,
                                "heartbeat: lock lost"
                            );
                            lost.store(true, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "heartbeat: renewal failed"
                        ),
                    }
                }
            })
            .expect("spawning a thread only fails when the system is out of resources");
        Self { stop, thread }
    }

    fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Everything the lock table holds, after dead and expired entries were removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Current holders.
    pub holders: Vec<LockInfo>,
    /// Queued waiters, in ticket order.
    pub waiters: Vec<WaiterInfo>,
}

/// Table-wide operations: listing, and the agent-level release and renewal the CLI uses for
/// leases held by an agent rather than by a process.
#[derive(Debug, Clone)]
pub struct LockTable {
    shared: Arc<Shared>,
}

impl LockTable {
    /// The lock table of `ws`.
    pub fn open(ws: &Workspace) -> Result<Self> {
        Ok(Self {
            shared: Shared::of(ws)?,
        })
    }

    /// Holders and waiters, after reclaiming dead and expired ones.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.shared.locked(|l| {
            let (mut t, dirty) = l.load_table()?;
            let reaped = l.reap_all(&mut t);
            if dirty || reaped {
                l.save_table(&t)?;
            }
            t.waiters.sort_by_key(|w| w.ticket);
            Ok(Snapshot {
                holders: t.holders,
                waiters: t.waiters,
            })
        })
    }

    /// Current holders whose locks conflict with a `mode` lock on `resource`.
    pub fn conflicting(&self, resource: &ResourceName, mode: LockMode) -> Result<Vec<LockInfo>> {
        Ok(self
            .snapshot()?
            .holders
            .into_iter()
            .filter(|h| conflicts(&h.resource, h.mode, resource, mode))
            .collect())
    }

    /// The newest fencing token issued for `resource` (0 if none).
    pub fn current_token(&self, resource: &ResourceName) -> Result<FencingToken> {
        self.shared
            .locked(|l| Ok(l.load_table()?.0.current_token(resource)))
    }

    fn agent_records(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        token: Option<FencingToken>,
        f: impl Fn(&mut LockInfo),
        remove: bool,
    ) -> Result<Vec<LockInfo>> {
        self.shared.locked(|l| {
            let (mut t, _) = l.load_table()?;
            let now = now_ms();
            let mut hit = Vec::new();
            let mut keep = Vec::with_capacity(t.holders.len());
            for mut h in std::mem::take(&mut t.holders) {
                let mine = &h.resource == resource
                    && &h.owner == agent
                    && token.is_none_or(|tk| tk == h.token);
                if mine && l.holds(&h, now) {
                    f(&mut h);
                    hit.push(h.clone());
                    if !remove {
                        keep.push(h);
                    }
                } else if mine {
                    // Expired or dead: lost already.
                } else {
                    keep.push(h);
                }
            }
            t.holders = keep;
            if hit.is_empty() {
                let holder = t
                    .holders
                    .iter()
                    .find(|h| overlaps(&h.resource, resource))
                    .map(|h| Box::new(h.summary()));
                l.save_table(&t)?;
                return Err(Error::NotOwner {
                    resource: resource.clone(),
                    agent: agent.clone(),
                    holder,
                });
            }
            l.save_table(&t)?;
            Ok(hit)
        })
    }

    /// Releases `agent`'s locks on exactly `resource` (only the one with `token`, if given).
    ///
    /// # Errors
    /// [`Error::NotOwner`] when the agent holds none (naming who does).
    pub fn release(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        token: Option<FencingToken>,
    ) -> Result<Vec<LockInfo>> {
        let _span = tracing::info_span!("release", resource = %resource, agent = %agent).entered();
        self.agent_records(resource, agent, token, |_| {}, true)
    }

    /// Releases every lease `agent` holds without a process (its `maos lock acquire` locks):
    /// what unregistering an agent does. Locks held by live processes stay theirs.
    pub fn release_agent(&self, agent: &AgentId) -> Result<Vec<LockInfo>> {
        let _span = tracing::info_span!("release_agent", agent = %agent).entered();
        self.shared.locked(|l| {
            let (mut t, dirty) = l.load_table()?;
            let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut t.holders)
                .into_iter()
                .partition(|h| &h.owner == agent && h.live.is_none());
            t.holders = keep;
            if dirty || !gone.is_empty() {
                l.save_table(&t)?;
            }
            Ok(gone)
        })
    }

    /// Renews every lock `agent` still holds by its lease length: the agent's heartbeat for
    /// leases it holds without a process (`maos lock renew` without a resource).
    pub fn renew_all(&self, agent: &AgentId) -> Result<Vec<LockInfo>> {
        self.renew_all_ttl(agent, None)
    }

    /// [`LockTable::renew_all`], setting every renewed lock's lease length to `ttl` first
    /// when given (`maos lock renew --ttl` without a resource).
    pub fn renew_all_ttl(&self, agent: &AgentId, ttl: Option<Duration>) -> Result<Vec<LockInfo>> {
        let _span = tracing::info_span!("renew_all", agent = %agent).entered();
        self.shared.locked(|l| {
            let (mut t, _) = l.load_table()?;
            let now = now_ms();
            let mut out = Vec::new();
            let mut holders = std::mem::take(&mut t.holders);
            for h in &mut holders {
                if &h.owner == agent && l.holds(h, now) {
                    if let Some(ttl) = ttl {
                        h.ttl_ms = watch::millis(ttl).max(1);
                    }
                    h.expires_at = now.saturating_add(h.ttl_ms);
                    out.push(h.clone());
                }
            }
            t.holders = holders;
            if !out.is_empty() {
                l.save_table(&t)?;
            }
            Ok(out)
        })
    }

    /// Renews `agent`'s locks on exactly `resource` by their lease length (or `ttl`).
    ///
    /// # Errors
    /// [`Error::NotOwner`] when the agent holds none (its lease may have ended).
    pub fn renew(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        ttl: Option<Duration>,
    ) -> Result<Vec<LockInfo>> {
        let _span = tracing::info_span!("renew", resource = %resource, agent = %agent).entered();
        let now = now_ms();
        self.agent_records(
            resource,
            agent,
            None,
            |h| {
                if let Some(ttl) = ttl {
                    h.ttl_ms = watch::millis(ttl).max(1);
                }
                h.expires_at = now.saturating_add(h.ttl_ms);
            },
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> (tempfile::TempDir, Workspace) {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        (d, ws)
    }

    fn r(s: &str) -> ResourceName {
        ResourceName::new(s).unwrap()
    }

    fn agent(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    #[test]
    fn tokens_increase_and_release_frees() {
        let (_d, ws) = ws();
        let l = FileLock::new(&ws, r("a.txt")).agent(agent("x"));
        let g1 = l.try_acquire("one").unwrap().unwrap();
        assert!(l.try_acquire("two").unwrap().is_none());
        let t1 = g1.token();
        check_fencing_token(&ws, &r("a.txt"), t1).unwrap();
        g1.release().unwrap();
        let err = check_fencing_token(&ws, &r("a.txt"), t1).unwrap_err();
        assert!(
            matches!(err, Error::StaleToken { current, .. } if current == t1),
            "{err}"
        );
        let g2 = l.try_acquire("three").unwrap().unwrap();
        assert!(g2.token() > t1);
        drop(g2); // released synchronously, no runtime
        assert!(l.try_acquire("four").unwrap().is_some());
    }

    #[test]
    fn patterns_and_shared_modes_conflict_as_documented() {
        let (_d, ws) = ws();
        let g = FileLock::new(&ws, r("src/api/**"))
            .try_acquire("p")
            .unwrap()
            .unwrap();
        assert!(
            FileLock::new(&ws, r("src/api/user.rs"))
                .try_acquire("u")
                .unwrap()
                .is_none()
        );
        assert!(
            FileLock::new(&ws, r("src/lib.rs"))
                .try_acquire("l")
                .unwrap()
                .is_some()
        );
        drop(g);
        let s1 = FileLock::new(&ws, r("doc"))
            .shared()
            .try_acquire("r1")
            .unwrap()
            .unwrap();
        let s2 = FileLock::new(&ws, r("doc/x.md"))
            .shared()
            .try_acquire("r2")
            .unwrap()
            .unwrap();
        assert!(
            FileLock::new(&ws, r("doc/x.md"))
                .try_acquire("w")
                .unwrap()
                .is_none()
        );
        drop((s1, s2));
        assert!(
            FileLock::new(&ws, r("doc/x.md"))
                .try_acquire("w")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn an_expired_holder_is_told_and_deletes_nothing() {
        let (_d, ws) = ws();
        let old = FileLock::new(&ws, r("f"))
            .agent(agent("old"))
            .ttl(Duration::from_millis(1))
            .try_acquire("slow")
            .unwrap()
            .unwrap();
        // Wait for the lease to end by observing the clock, not by sleeping a guess.
        let end = old.info().expires_at;
        while now_ms() <= end {
            std::thread::yield_now();
        }
        let new = FileLock::new(&ws, r("f"))
            .agent(agent("new"))
            .try_acquire("fresh")
            .unwrap()
            .unwrap();
        assert!(new.token() > old.token());
        let err = old.release().unwrap_err();
        match &err {
            Error::LockLost {
                now_held_by: Some(h),
                ..
            } => assert_eq!(h.owner.as_str(), "new"),
            other => panic!("{other}"),
        }
        check_fencing_token(&ws, &r("f"), new.token()).unwrap();
    }

    #[test]
    fn timeout_names_the_holder_purpose_and_lease() {
        let (_d, ws) = ws();
        let _g = FileLock::new(&ws, r("busy"))
            .agent(agent("holder"))
            .try_acquire("long migration")
            .unwrap()
            .unwrap();
        let err = FileLock::new(&ws, r("busy"))
            .wait(Duration::from_millis(20))
            .acquire_blocking("me")
            .unwrap_err();
        let s = err.to_string();
        assert!(matches!(err, Error::Timeout { .. }), "{s}");
        assert!(
            s.contains("holder") && s.contains("long migration") && s.contains("lease ends"),
            "{s}"
        );
        // The timed-out waiter left the queue.
        assert!(
            LockTable::open(&ws)
                .unwrap()
                .snapshot()
                .unwrap()
                .waiters
                .is_empty()
        );
    }

    #[test]
    fn a_waiter_wakes_on_release() {
        let (_d, ws) = ws();
        let g = FileLock::new(&ws, r("h"))
            .try_acquire("first")
            .unwrap()
            .unwrap();
        let ws2 = ws.clone();
        let t = std::thread::spawn(move || {
            FileLock::new(&ws2, r("h"))
                .wait(Duration::from_secs(60))
                .acquire_blocking("second")
                .map(|g| g.token())
        });
        // Release once the waiter is queued.
        let table = LockTable::open(&ws).unwrap();
        while table.snapshot().unwrap().waiters.is_empty() {
            std::thread::yield_now();
        }
        let first = g.token();
        g.release().unwrap();
        assert!(t.join().unwrap().unwrap() > first);
    }

    #[tokio::test]
    async fn async_acquire_and_renew() {
        let (_d, ws) = ws();
        let mut g = FileLock::new(&ws, r("x")).acquire("a").await.unwrap();
        let before = g.info().expires_at;
        g.renew().unwrap();
        assert!(g.info().expires_at >= before);
        assert!(!g.is_lost());
        let t = LockTable::open(&ws).unwrap();
        assert_eq!(t.snapshot().unwrap().holders.len(), 1);
        drop(g);
        assert!(t.snapshot().unwrap().holders.is_empty());
    }

    #[test]
    fn agent_leases_survive_detach_and_are_released_by_the_agent_only() {
        let (_d, ws) = ws();
        let g = FileLock::new(&ws, r("lease"))
            .agent(agent("a"))
            .try_acquire("cli")
            .unwrap()
            .unwrap();
        let info = g.detach().unwrap();
        assert!(info.live.is_none());
        let table = LockTable::open(&ws).unwrap();
        let err = table.release(&r("lease"), &agent("b"), None).unwrap_err();
        assert!(matches!(err, Error::NotOwner { .. }), "{err}");
        assert!(err.to_string().contains("agent a"), "{err}");
        table.renew(&r("lease"), &agent("a"), None).unwrap();
        let done = table
            .release(&r("lease"), &agent("a"), Some(info.token))
            .unwrap();
        assert_eq!(done.len(), 1);
    }

    #[test]
    fn a_torn_table_slot_falls_back_to_the_state_before_the_torn_change() {
        let (_d, ws) = ws();
        let l = FileLock::new(&ws, r("t")).agent(agent("a"));
        let g = l.try_acquire("one").unwrap().unwrap(); // generation 1 -> table.1
        let token = g.token();
        g.release().unwrap(); // generation 2 -> table.0
        let slot0 = ws.locks_dir().join("table.0");
        let bytes = std::fs::read(&slot0).unwrap();
        std::fs::write(&slot0, &bytes[..bytes.len() / 2]).unwrap(); // a writer died mid-write
        let snap = LockTable::open(&ws).unwrap().snapshot().unwrap();
        assert_eq!(snap.holders.len(), 1, "the release never completed");
        assert_eq!(snap.holders[0].token, token);
        // And the table keeps working: the next write goes to the torn slot's turn again.
        let err = l.try_acquire("two").unwrap();
        assert!(
            err.is_none(),
            "still held by the (live) first guard's record"
        );
    }

    #[test]
    fn the_heartbeat_keeps_a_short_lease_alive() {
        let (_d, ws) = ws();
        let g = FileLock::new(&ws, r("hb"))
            .ttl(Duration::from_millis(150))
            .heartbeat(true)
            .try_acquire("long job")
            .unwrap()
            .unwrap();
        // Watch the clock (no sleeping guess) until well past the first lease end.
        let first_end = g.info().expires_at;
        while now_ms() <= first_end + 300 {
            std::thread::yield_now();
        }
        check_fencing_token(&ws, &r("hb"), g.token()).unwrap();
        assert!(!g.is_lost());
        assert!(
            FileLock::new(&ws, r("hb"))
                .try_acquire("x")
                .unwrap()
                .is_none()
        );
        g.release().unwrap();
    }

    #[tokio::test]
    async fn a_dropped_async_wait_leaves_the_queue() {
        let (_d, ws) = ws();
        let g = FileLock::new(&ws, r("q"))
            .try_acquire("hold")
            .unwrap()
            .unwrap();
        let table = LockTable::open(&ws).unwrap();
        {
            let lock = FileLock::new(&ws, r("q")).wait(Duration::from_secs(60));
            let fut = lock.acquire("wait");
            tokio::pin!(fut);
            // Poll until it has queued, then drop it.
            loop {
                tokio::select! {
                    r = &mut fut => panic!("acquired while held: {:?}", r.map(|g| g.token())),
                    () = tokio::task::yield_now() => {}
                }
                if !table.snapshot().unwrap().waiters.is_empty() {
                    break;
                }
            }
        }
        // The withdrawal runs when the blocking step finishes: wait for it by observation.
        while !table.snapshot().unwrap().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        g.release().unwrap();
        assert!(
            FileLock::new(&ws, r("q"))
                .try_acquire("next")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_dropped_async_acquire_that_was_granted_meanwhile_releases_the_lock() {
        use std::future::Future as _;
        let (_d, ws) = ws();
        // Hold the guard on a descriptor of our own, so the acquisition's step blocks on the
        // blocking pool until we let it go.
        let guard = maos_core::fsx::open_lock_file(&ws.locks_dir().join("guard")).unwrap();
        guard.lock().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        {
            let _enter = rt.enter();
            let lock = FileLock::new(&ws, r("cancel")).agent(agent("a"));
            let mut fut = Box::pin(lock.acquire("then cancelled"));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            drop(fut); // the caller gives up (a timeout, a select)
        }
        guard.unlock().unwrap();
        drop(rt); // waits for the blocking step, which grants the lock
        let snap = LockTable::open(&ws).unwrap().snapshot().unwrap();
        assert!(
            snap.holders.is_empty(),
            "a lock granted to a dropped acquisition stays held: {:?}",
            snap.holders
        );
    }

    #[test]
    fn huge_ttl_and_wait_are_clamped_not_a_panic() {
        let (_d, ws) = ws();
        let g = FileLock::new(&ws, r("huge"))
            .agent(agent("a"))
            .ttl(Duration::MAX)
            .wait(Duration::MAX)
            .acquire_blocking("forever")
            .unwrap();
        assert!(g.info().expires_at > now_ms());
        let mut g2 = g;
        g2.renew().unwrap();
        assert!(g2.info().expires_at > now_ms());
        let renewed = LockTable::open(&ws)
            .unwrap()
            .renew(&r("huge"), &agent("a"), Some(Duration::MAX))
            .unwrap();
        assert!(renewed[0].expires_at > now_ms());
        g2.release().unwrap();
    }

    #[test]
    fn an_oversized_purpose_or_metadata_is_refused_and_the_table_keeps_working() {
        let (_d, ws) = ws();
        let huge = "x".repeat(crate::store::RECORD_TEXT_LIMIT + 1);
        let err = FileLock::new(&ws, r("big"))
            .agent(agent("a"))
            .try_acquire(&huge)
            .expect_err("a purpose larger than the limit is an error");
        assert!(
            matches!(&err, Error::TooLarge { resource, what, .. } if resource.as_str() == "big" && *what == "purpose"),
            "{err}"
        );
        let err = FileLock::new(&ws, r("big"))
            .agent(agent("a"))
            .metadata("k", huge.clone())
            .try_acquire("ok")
            .expect_err("metadata larger than the limit is an error");
        assert!(
            matches!(&err, Error::TooLarge { what, .. } if *what == "metadata"),
            "{err}"
        );
        let err = crate::AdvisoryLock::new(&ws)
            .agent(agent("a"))
            .request(r("big"), &huge, maos_core::Priority::Normal)
            .expect_err("an advisory purpose larger than the limit is an error");
        assert!(matches!(&err, Error::TooLarge { .. }), "{err}");
        assert!(
            FileLock::new(&ws, r("small"))
                .try_acquire("fine")
                .unwrap()
                .is_some()
        );
    }
}
