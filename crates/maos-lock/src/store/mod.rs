//! The lock table's storage: everything under `.maos/locks/` (see the lock section of
//! docs/protocol.md) behind one narrow interface, the operations of [`ops`] (take or queue,
//! withdraw, break, renew, release, detach, check, list), so that another backend can
//! implement the same semantics.
//!
//! - `guard`: its kernel lock (exclusive for changes, shared for reads) serialises every
//!   operation; a wait for it ends at the operation's deadline with an error naming the
//!   holder (and saying when it is stopped).
//! - `index`, `cells`, `tokens`: the table ([`table`]).
//! - `live/`, `wake/`: liveness and wake-up files ([`live`]).
//! - `advisory.0`, `advisory.1`: advisory interests ([`slots`]).

pub(crate) mod layout;
pub(crate) mod live;
pub(crate) mod ops;
pub(crate) mod records;
pub(crate) mod slots;
pub(crate) mod table;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use maos_core::process::{boot_id, hostname};

use maos_core::fsx::{FlockGuard, FlockMode, LockFile};
use maos_core::{AgentId, ProcessIdentity, ResourceName, Workspace, fsx, now_ms};

pub(crate) use self::records::{LockInfo, LockMode, WaiterInfo};

use self::live::{LIVE_DIR, LiveFile, Probe, WAKE_DIR};
use self::records::key_of;
use self::slots::TwoSlots;
use self::table::{Cause, Files, Txn, check_header, rebuild};
use crate::watch::DirWatch;
use crate::{Error, Result};

/// Largest purpose, and largest metadata (keys and values together), of one record.
pub const RECORD_TEXT_LIMIT: usize = 64 << 10;

/// Refuses a record whose purpose or metadata exceeds [`RECORD_TEXT_LIMIT`] (every
/// backend applies it, so that a lock taken on one is representable on the other).
///
/// # Errors
/// [`Error::TooLarge`] naming the resource and the field.
pub fn check_record_text(
    resource: &ResourceName,
    purpose: &str,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let meta: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    for (what, size) in [("purpose", purpose.len()), ("metadata", meta)] {
        if size > RECORD_TEXT_LIMIT {
            return Err(Error::TooLarge {
                resource: resource.to_string(),
                what,
                size: size as u64,
                limit: RECORD_TEXT_LIMIT as u64,
            });
        }
    }
    Ok(())
}

/// Per-process, per-workspace state: the open files, this process's liveness file and its
/// file watch.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    files: Mutex<Option<Files>>,
    live: OnceLock<LiveFile>,
    watch: OnceLock<Arc<DirWatch>>,
    advisory: OnceLock<TwoSlots>,
    /// Queue entries this process could not withdraw in time (the guard was busy): removed
    /// by its next change.
    pending: Mutex<Vec<(ResourceName, u64)>>,
    pub(crate) identity: ProcessIdentity,
    /// This boot, as the table's header records it.
    boot: [u8; 16],
}

static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Arc<Shared>>>> = OnceLock::new();

pub(crate) fn lock_poisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the mutex leaves no broken invariant in the guarded value (the
    // kernel guard is released on unwind by its own guard), so recover it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The shared state for `ws`'s lock directory (created on first use).
    pub(crate) fn of(ws: &Workspace) -> Result<Arc<Shared>> {
        Self::of_dir(&ws.locks_dir(), boot_id())
    }

    /// The shared state for `dir`, as if the host's boot id were `boot` (the power-cut
    /// simulation opens an image of the table "after a restart").
    pub(crate) fn of_dir(dir: &Path, boot: &str) -> Result<Arc<Shared>> {
        let reg = REGISTRY.get_or_init(Default::default);
        let mut map = lock_poisoned(reg);
        if let Some(s) = map.get(dir) {
            return Ok(s.clone());
        }
        fsx::create_dir_private(dir)?;
        fsx::create_dir_private(&dir.join(LIVE_DIR))?;
        fsx::create_dir_private(&dir.join(WAKE_DIR))?;
        let s = Arc::new(Shared {
            dir: dir.to_path_buf(),
            files: Mutex::new(None),
            live: OnceLock::new(),
            watch: OnceLock::new(),
            advisory: OnceLock::new(),
            pending: Mutex::new(Vec::new()),
            identity: ProcessIdentity::current(),
            boot: table_boot(boot),
        });
        map.insert(dir.to_path_buf(), s.clone());
        Ok(s)
    }

    pub(crate) fn watch(&self) -> Arc<DirWatch> {
        self.watch
            .get_or_init(|| Arc::new(DirWatch::new(&self.dir)))
            .clone()
    }

    /// The advisory interests' slots (opened on first use).
    pub(crate) fn advisory(&self) -> Result<&TwoSlots> {
        if let Some(s) = self.advisory.get() {
            return Ok(s);
        }
        let s = TwoSlots::open(&self.dir, crate::watch::ADVISORY)?;
        let _ = self.advisory.set(s);
        Ok(self
            .advisory
            .get()
            .expect("set just above (or by another thread)"))
    }

    /// Remembers a queue entry to remove with this process's next change.
    pub(crate) fn defer_withdrawal(&self, resource: ResourceName, ticket: u64) {
        lock_poisoned(&self.pending).push((resource, ticket));
    }

    /// Removes the queue entries [`Shared::defer_withdrawal`] remembered.
    fn withdraw_pending(&self, files: &Files) -> Result<()> {
        let pending = std::mem::take(&mut *lock_poisoned(&self.pending));
        if pending.is_empty() {
            return Ok(());
        }
        let mut signals = Vec::new();
        let mut f = |op: &mut Op<'_>| {
            let mut removed = Vec::new();
            for (res, t) in &pending {
                let key = key_of(res);
                if op.txn.doc(key)?.waiters.iter().any(|w| w.ticket == *t) {
                    op.txn.doc_mut(key)?.waiters.retain(|w| w.ticket != *t);
                    removed.push(res.clone());
                }
            }
            op.txn.commit()?;
            for (_, t) in &pending {
                live::remove_wake(&self.dir, *t);
            }
            ops::signal_unblocked(op, &removed)
        };
        let r = self.run(files, true, &mut f, &mut signals);
        // (Signalled now, under the guard: rare, and the caller's own change follows.)
        for t in signals {
            live::signal(&self.dir, t);
        }
        r
    }
    /// Runs `f` as a change under the exclusive guard, waiting at most `timeout` for it.
    pub(crate) fn write<R>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&mut Op<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut slot = lock_poisoned(&self.files);
        let files = self.files_in(&mut slot)?;
        let mut signals = Vec::new();
        let r = {
            let _guard = take_guard(&files.guard, FlockMode::Exclusive, timeout)?;
            if let Err(e) = self.withdraw_pending(files) {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot withdraw earlier queue entries"
                );
            }
            self.run(files, true, &mut f, &mut signals)
        };
        // Waiters are woken once the guard is free: their first look does not wait for it.
        for t in signals {
            live::signal(&self.dir, t);
        }
        r
    }

    /// Runs `f` as a read under the shared guard (or the exclusive one, when the table must
    /// first be recovered).
    pub(crate) fn read<R>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&mut Op<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut slot = lock_poisoned(&self.files);
        let files = self.files_in(&mut slot)?;
        {
            let _guard = take_guard(&files.guard, FlockMode::Shared, timeout)?;
            if let Ok(hdr) = check_header(files, &self.boot)? {
                let mut op = Op::new(self, Txn::new(files, hdr, false));
                let r = f(&mut op);
                if op.txn.rebuild.is_none() {
                    return r;
                }
            }
        }
        let mut signals = Vec::new();
        let r = {
            let _guard = take_guard(&files.guard, FlockMode::Exclusive, timeout)?;
            self.run(files, true, &mut f, &mut signals)
        };
        for t in signals {
            live::signal(&self.dir, t);
        }
        r
    }

    fn files_in<'m>(&self, slot: &'m mut Option<Files>) -> Result<&'m Files> {
        if slot.is_none() {
            *slot = Some(Files::open(&self.dir)?);
        }
        Ok(slot.as_ref().expect("opened just above"))
    }

    fn run<R>(
        &self,
        files: &Files,
        exclusive: bool,
        f: &mut impl FnMut(&mut Op<'_>) -> Result<R>,
        signals: &mut Vec<u64>,
    ) -> Result<R> {
        let mut attempt = 0;
        loop {
            let hdr = match check_header(files, &self.boot)? {
                Ok(h) => h,
                Err(cause) => self.recover(files, cause)?,
            };
            let mut op = Op::new(self, Txn::new(files, hdr, exclusive));
            let r = f(&mut op);
            signals.append(&mut op.signals);
            match (r, op.txn.rebuild) {
                (Err(e), Some(cause)) => {
                    attempt += 1;
                    if attempt > 2 {
                        return Err(e);
                    }
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "rebuilding the lock table index"
                    );
                    rebuild(files, self.boot, cause)?;
                }
                (r, _) => {
                    if r.is_ok() && op.txn.wants_reindex() {
                        rebuild(files, self.boot, Cause::Reindex)?;
                    }
                    return r;
                }
            }
        }
    }

    /// Brings the index back after a crash, a restart or damage (under the exclusive guard).
    fn recover(&self, files: &Files, cause: Cause) -> Result<layout::Header> {
        let cause = match cause {
            // An index that is missing or empty while documents exist was removed: rebuild
            // it as after damage (the counter jumps).
            Cause::Fresh if files.cells.len()? > 0 => Cause::Unreadable,
            Cause::Fresh => {
                legacy::seed(files)?;
                Cause::Fresh
            }
            c => c,
        };
        let (hdr, _) = rebuild(files, self.boot, cause)?;
        if !matches!(cause, Cause::Fresh | Cause::Reindex) {
            live::sweep(&self.dir);
        }
        Ok(hdr)
    }

    /// Runs `f` on the table's files under the guard (exclusive or shared), without the
    /// header checks of an operation: for `maos doctor`.
    pub(crate) fn inspect<R>(
        &self,
        exclusive: bool,
        f: impl FnOnce(&Files) -> Result<R>,
    ) -> Result<R> {
        let mut slot = lock_poisoned(&self.files);
        let files = self.files_in(&mut slot)?;
        let mode = if exclusive {
            FlockMode::Exclusive
        } else {
            FlockMode::Shared
        };
        let _guard = take_guard(&files.guard, mode, fsx::DEFAULT_GUARD_TIMEOUT)?;
        f(files)
    }

    /// The boot bytes headers are checked against.
    pub(crate) fn boot(&self) -> [u8; 16] {
        self.boot
    }
}

/// Takes the table's guard in `mode`, waiting at most `timeout`. After a few quick retries
/// the wait is in the kernel ([`LockFile::lock`]: a helper thread blocks in `flock(2)`): a
/// waiter takes no CPU until the
/// guard is free, so on a loaded machine a hundred waiters do not take the CPU from the
/// process holding it (waiters polling with short sleeps did: the holder, preempted, kept the
/// guard for milliseconds). At the deadline the error names the processes holding it and
/// says when one is stopped (`/proc/locks`, `/proc/<pid>/stat`).
fn take_guard(lock: &LockFile, mode: FlockMode, timeout: Duration) -> Result<FlockGuard<'_>> {
    Ok(lock.lock(mode, timeout)?)
}

/// The boot bytes a table header records for `boot`.
fn table_boot(boot: &str) -> [u8; 16] {
    layout::boot_bytes(boot)
}

/// One operation: the transaction plus what deciding needs (liveness probes, cached).
pub(crate) struct Op<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) txn: Txn<'a>,
    pub(crate) now: u64,
    alive: HashMap<String, bool>,
    /// Waiters to wake once the guard is released.
    signals: Vec<u64>,
}

impl<'a> Op<'a> {
    fn new(shared: &'a Shared, txn: Txn<'a>) -> Self {
        Self {
            shared,
            txn,
            now: now_ms(),
            alive: HashMap::new(),
            signals: Vec::new(),
        }
    }

    /// Wakes the waiter with `ticket` once this operation has released the guard.
    pub(crate) fn signal(&mut self, ticket: u64) {
        self.signals.push(ticket);
    }

    /// This process's liveness file name, creating and locking it on first use (under the
    /// exclusive guard: a sweeper never removes a file between its creation and its lock).
    pub(crate) fn own_live(&mut self) -> Result<String> {
        if let Some(l) = self.shared.live.get() {
            return Ok(l.name.clone());
        }
        // Now and then, remove the liveness files of processes that are gone.
        if rand_one_in(16) {
            live::sweep(&self.shared.dir);
        }
        let f = LiveFile::create(&self.shared.dir, self.shared.identity.start_time)?;
        let _ = self.shared.live.set(f);
        Ok(self
            .shared
            .live
            .get()
            .expect("set just above (or by another thread)")
            .name
            .clone())
    }

    /// Whether the process behind a liveness file still runs. No file (an agent lease) and
    /// other hosts count as alive: only the lease can end those.
    pub(crate) fn alive(&mut self, live: Option<&str>, process: Option<&ProcessIdentity>) -> bool {
        let Some(live) = live else { return true };
        if let Some(p) = process {
            if p.host != hostname() {
                return true;
            }
            if !p.boot_id.is_empty() && p.boot_id != boot_id() {
                return false; // a process of an earlier boot
            }
        }
        if self.shared.live.get().is_some_and(|l| l.name == live) {
            return true;
        }
        if let Some(&v) = self.alive.get(live) {
            return v;
        }
        let v = live::probe(&self.shared.dir, live, self.txn.is_exclusive()) == Probe::Alive;
        self.alive.insert(live.to_owned(), v);
        v
    }

    /// Whether a holder record still holds: its liveness (process, or the agent for a lease)
    /// and its lease. An expired lease ends the lock unless its live holder still runs and
    /// nobody can renew it (a `lock run` command whose `maos` was killed).
    pub(crate) fn holds(&mut self, h: &LockInfo) -> bool {
        let live_ok = match &h.live {
            None => self.agent_alive(&h.owner),
            Some(l) => self.alive(Some(l), h.process.as_ref()),
        };
        if !live_ok {
            return false;
        }
        if h.expires_at > self.now {
            return true;
        }
        // The lease is over. A lock whose liveness file is still held by someone (the command
        // of a `lock run`) while the process that took it, which renews it, is gone: nobody
        // can renew it, and it lasts as long as its holder runs. A taker that still runs and
        // did not renew is hung (or stopped): its lease ends the lock.
        h.live.is_some() && h.process.as_ref().is_some_and(|p| self.taker_gone(p))
    }

    /// Whether the process that took a lock has ended (pid and start time: a reused pid is
    /// another process). Other hosts cannot be checked: their leases decide.
    fn taker_gone(&mut self, p: &ProcessIdentity) -> bool {
        if p.host != hostname() {
            return false;
        }
        let key = format!("process:{}:{}", p.pid, p.start_time);
        if let Some(&v) = self.alive.get(&key) {
            return !v;
        }
        let gone = p.state() == maos_core::ProcessState::Gone;
        self.alive.insert(key, !gone);
        gone
    }

    /// Whether a waiter still waits.
    pub(crate) fn waits(&mut self, w: &WaiterInfo) -> bool {
        self.alive(w.live.as_deref(), w.process.as_ref())
    }

    /// Whether the agent holding a lease without a process is still around: not when the
    /// registry says it is dead (its session ended, or no anchor runs and its lease ran out).
    /// An unregistered agent's lease ends only by expiry.
    pub(crate) fn agent_alive(&mut self, agent: &AgentId) -> bool {
        let key = format!("agent:{agent}");
        if let Some(&v) = self.alive.get(&key) {
            return v;
        }
        let path = self
            .shared
            .dir
            .parent()
            .map(|m| m.join("agents").join(format!("{agent}.json")));
        let v = match path.map(|p| fsx::read_json::<maos_core::AgentRecord>(&p, 64 << 10)) {
            Some(Ok(rec)) => !rec.liveness().is_dead(),
            Some(Err(e)) if e.is_not_found() => true,
            Some(Err(e)) => {
                tracing::warn!(agent = %agent, error = &e as &dyn std::error::Error, "cannot read the agent's record; assuming alive");
                true
            }
            None => true,
        };
        self.alive.insert(key, v);
        v
    }
}

/// True about once in `n` calls (no cryptographic needs: spreads housekeeping out).
fn rand_one_in(n: u64) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = now_ms() ^ u64::from(std::process::id()).rotate_left(32) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x.is_multiple_of(n)
}

/// The lock table of maos before 0.2 (`table.0`, `table.1`: JSON in two slots).
pub(crate) mod legacy {
    use super::table::{Files, write_reservation_both};
    use crate::Result;

    /// Names of the old slots.
    pub(crate) const SLOTS: [&str; 2] = ["table.0", "table.1"];

    /// A new table in a directory that holds an old one starts its counter above every
    /// ticket and token the old one handed out (plus the old reboot jump), so no token
    /// repeats across the upgrade.
    pub(crate) fn seed(files: &Files) -> Result<()> {
        let mut max = 0u64;
        for name in SLOTS {
            let Ok(bytes) = maos_core::fsx::read_bounded(&files.dir.join(name), 64 << 20) else {
                continue;
            };
            let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes[nl + 1..]) else {
                // A torn old slot: the other one (or the jump below) covers it.
                continue;
            };
            let next = v.get("next_ticket").and_then(|x| x.as_u64()).unwrap_or(0);
            let tokens = v
                .get("tokens")
                .and_then(|t| t.as_object())
                .map(|o| o.values().filter_map(|x| x.as_u64()).max().unwrap_or(0))
                .unwrap_or(0);
            max = max.max(next).max(tokens);
        }
        if max > 0 {
            let floor = max.saturating_add(1 << 33).min(super::table::ID_LIMIT);
            tracing::info!(
                floor,
                "an older lock table is present: fencing tokens start above it"
            );
            write_reservation_both(files, floor)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod sim_tests;

/// A temporary directory for tests that build many small file trees: on tmpfs when there is
/// one (creating thousands of inodes on a busy ext4 costs seconds), else the default place.
#[cfg(test)]
pub(crate) fn test_dir() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().expect("a temporary directory"),
    }
}

// Test-only code stays at the end of the file (the tidy tests read what follows the first
// `#[cfg(test)]` as test code).
#[cfg(test)]
impl Shared {
    /// Rebuilds the index with `cause` (tests: a simulated restart).
    pub(crate) fn rebuild_now(&self, cause: Cause) -> Result<table::RebuildReport> {
        let mut slot = lock_poisoned(&self.files);
        let files = self.files_in(&mut slot)?;
        let _guard = take_guard(
            &files.guard,
            FlockMode::Exclusive,
            fsx::DEFAULT_GUARD_TIMEOUT,
        )?;
        Ok(rebuild(files, self.boot, cause)?.1)
    }
}
