//! Waking waiters: inotify watches on exactly the files a process waits on, shared by every
//! waiter of the process, plus a fallback timer.
//!
//! Two signals:
//! - *wake*: a queued waiter's own `wake/<ticket>` file was written (whoever removed the
//!   entry that blocked it signals it), or the liveness file of one of its blockers was
//!   closed after writing (a holder died or exited: its kernel lock is gone). Each of these
//!   is a watch on that one file, held while the waiter waits: only the waiters concerned
//!   wake, not every process.
//! - *change*: the table (`index`) or the advisory interests were written, or any liveness
//!   file closed; for monitors and advisory waiters. The directory watches behind it are set
//!   up on the first use of this signal only.
//!
//! Why not a watch on the directories for everything: with a hundred processes each watching
//! `locks/`, every write of the table, every probe of a liveness file and every wake-up woke
//! all hundred watch threads (inotify queues the event for each watch), and on a loaded
//! machine those threads took the CPU from the process holding the table's guard.
//!
//! Events are hints: a waiter always re-reads the table under the guard, and re-checks after
//! [`FALLBACK`] anyway (lost events, network file systems).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

use crate::store::live::{LIVE_DIR, WAKE_DIR};
use crate::store::table::INDEX;

/// Base name of the advisory slots (`advisory.0`, `advisory.1`).
pub(crate) const ADVISORY: &str = "advisory";

/// Longest sleep without an event while the watch works.
pub(crate) const FALLBACK: Duration = Duration::from_secs(1);
/// Longest sleep without an event when no watch could be set up (backs off from 5 ms).
const NO_WATCH_MAX: Duration = Duration::from_millis(250);

pub(crate) use maos_core::deadline_after;

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Which signal to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// A lock waiter of this process may proceed.
    Wake,
    /// The lock table or the advisory file changed.
    Change,
}

#[derive(Debug, Default)]
struct Counters {
    wake: u64,
    change: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Events read from the kernel (tests: a watch must not be told about what it does not
    /// wait on).
    events: std::sync::atomic::AtomicU64,
    counters: Mutex<Counters>,
    cv: Condvar,
    wake_notify: tokio::sync::Notify,
    change_notify: tokio::sync::Notify,
}

fn relock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn bump(&self, wake: bool, change: bool) {
        let mut c = relock(&self.counters);
        if wake {
            c.wake += 1;
        }
        if change {
            c.change += 1;
        }
        drop(c);
        self.cv.notify_all();
        if wake {
            self.wake_notify.notify_waiters();
        }
        if change {
            self.change_notify.notify_waiters();
        }
    }

    fn get(&self, s: Signal) -> u64 {
        let c = relock(&self.counters);
        match s {
            Signal::Wake => c.wake,
            Signal::Change => c.change,
        }
    }
}

/// What a watch descriptor watches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `wake/<ticket>` of a waiter of this process.
    Ticket(u64),
    /// `live/<name>` of a blocker of a waiter of this process.
    Live(String),
    /// The lock directory (table and advisory writes), for the change signal.
    LocksDir,
    /// `live/` (any liveness file closed), for the change signal.
    LiveDir,
    /// The lock directory itself being removed: never fires in use; removing this watch
    /// (when the watch is dropped) ends the reader thread.
    Anchor,
}

/// The watches routed to this process, and what each one is. The reader thread looks events
/// up here; a watch is added while this map is locked, so no event of it is read before it
/// is known. One watch can serve several targets: the kernel gives one descriptor per inode,
/// and a waiter's wake-up file is a second name of its liveness file (which another waiter
/// of the process may watch as its blocker's).
#[derive(Debug, Default)]
struct Routes {
    targets: HashMap<WatchDescriptor, Vec<Target>>,
    tickets: HashMap<u64, WatchDescriptor>,
    /// Per liveness file: its watch and how many waiters care about it.
    lives: HashMap<String, (Option<WatchDescriptor>, usize)>,
    change: bool,
}

/// The kernel side of a [`DirWatch`].
struct Kernel {
    watches: Mutex<Watches>,
    routes: Arc<Mutex<Routes>>,
    anchor: WatchDescriptor,
    /// False once the reader thread stopped (waiters fall back to timed re-checks).
    reading: Arc<AtomicBool>,
}

/// A watch on one lock directory.
pub(crate) struct DirWatch {
    dir: PathBuf,
    inner: Arc<Inner>,
    kernel: Option<Kernel>,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("dir", &self.dir)
            .field("active", &self.active())
            .finish()
    }
}

/// What an event on `target` means: (wake, change).
fn classify(target: &Target, mask: EventMask, name: Option<&std::ffi::OsStr>) -> (bool, bool) {
    match target {
        Target::Ticket(_) => (mask.contains(EventMask::CLOSE_WRITE), false),
        Target::Live(_) => {
            let closed = mask.contains(EventMask::CLOSE_WRITE);
            (closed, closed)
        }
        Target::LiveDir => (false, mask.contains(EventMask::CLOSE_WRITE)),
        Target::LocksDir => {
            let name = name.and_then(|n| n.to_str()).unwrap_or("");
            let ours = name == INDEX
                || name
                    .strip_prefix(ADVISORY)
                    .is_some_and(|r| r.starts_with('.'));
            (false, ours && mask.contains(EventMask::MODIFY))
        }
        Target::Anchor => (false, false),
    }
}

/// Reads events until the anchor watch is removed (or reading fails), bumping the signals.
fn read_events(
    mut inotify: Inotify,
    inner: Arc<Inner>,
    routes: Arc<Mutex<Routes>>,
    anchor: WatchDescriptor,
    reading: Arc<AtomicBool>,
) {
    let mut buf = [0u8; 4096];
    loop {
        let events = match inotify.read_events_blocking(&mut buf) {
            Ok(ev) => ev,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot read lock-directory events; waiters fall back to timed re-checks"
                );
                reading.store(false, Ordering::Relaxed);
                inner.bump(true, true);
                return;
            }
        };
        let (mut wake, mut change, mut stop) = (false, false, false);
        {
            let mut r = relock(&routes);
            for ev in events {
                inner.events.fetch_add(1, Ordering::Relaxed);
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    (wake, change) = (true, true);
                    continue;
                }
                if ev.mask.contains(EventMask::IGNORED) {
                    // The watch is gone (removed, or its file deleted).
                    stop |= ev.wd == anchor;
                    r.targets.remove(&ev.wd);
                    continue;
                }
                for t in r.targets.get(&ev.wd).into_iter().flatten() {
                    let (w, c) = classify(t, ev.mask, ev.name);
                    wake |= w;
                    change |= c;
                }
            }
        }
        if wake || change {
            inner.bump(wake, change);
        }
        if stop {
            reading.store(false, Ordering::Relaxed);
            return;
        }
    }
}

impl DirWatch {
    pub(crate) fn new(dir: &Path) -> Self {
        let inner = Arc::new(Inner::default());
        let kernel = match Self::start(dir, &inner) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = &e as &dyn std::error::Error, "cannot watch the lock directory; waiters fall back to timed re-checks");
                None
            }
        };
        Self {
            dir: dir.to_path_buf(),
            inner,
            kernel,
        }
    }

    fn start(dir: &Path, inner: &Arc<Inner>) -> std::io::Result<Kernel> {
        let inotify = Inotify::init()?;
        let mut watches = inotify.watches();
        let routes = Arc::new(Mutex::new(Routes::default()));
        let anchor = watches.add(dir, WatchMask::DELETE_SELF | WatchMask::ONLYDIR)?;
        relock(&routes)
            .targets
            .insert(anchor.clone(), vec![Target::Anchor]);
        let reading = Arc::new(AtomicBool::new(true));
        let (i, r, a, g) = (
            inner.clone(),
            routes.clone(),
            anchor.clone(),
            reading.clone(),
        );
        std::thread::Builder::new()
            .name("maos-lock-watch".into())
            .spawn(move || read_events(inotify, i, r, a, g))?;
        Ok(Kernel {
            watches: Mutex::new(watches),
            routes,
            anchor,
            reading,
        })
    }

    fn active(&self) -> bool {
        self.kernel
            .as_ref()
            .is_some_and(|k| k.reading.load(Ordering::Relaxed))
    }

    /// Adds a watch on `path` for `target` (`None` when the file is gone or cannot be
    /// watched: the waiter's re-check and the fallback timer cover it).
    fn add(
        k: &Kernel,
        r: &mut Routes,
        path: &Path,
        mask: WatchMask,
        target: Target,
    ) -> Option<WatchDescriptor> {
        // Adding to a watched inode replaces its mask: keep every target's events.
        let mask = match target {
            Target::Ticket(_) | Target::Live(_) => WatchMask::CLOSE_WRITE,
            _ => mask,
        };
        match relock(&k.watches).add(path, mask) {
            Ok(wd) => {
                r.targets.entry(wd.clone()).or_default().push(target);
                Some(wd)
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(path = %path.display(), error = &e as &dyn std::error::Error, "cannot watch");
                }
                None
            }
        }
    }

    fn remove(k: &Kernel, r: &mut Routes, wd: WatchDescriptor, target: &Target) {
        let Some(ts) = r.targets.get_mut(&wd) else {
            return;
        };
        let Some(i) = ts.iter().position(|t| t == target) else {
            return;
        };
        ts.swap_remove(i);
        if ts.is_empty() {
            r.targets.remove(&wd);
            // Fails when the file was deleted meanwhile (the kernel removed the watch).
            let _ = relock(&k.watches).remove(wd);
        }
    }

    /// Routes `wake/<ticket>` events to this process's waiters.
    pub(crate) fn register(&self, ticket: u64) {
        let Some(k) = &self.kernel else { return };
        let mut r = relock(&k.routes);
        if r.tickets.contains_key(&ticket) {
            return;
        }
        let path = self.dir.join(WAKE_DIR).join(ticket.to_string());
        if let Some(wd) = Self::add(
            k,
            &mut r,
            &path,
            WatchMask::CLOSE_WRITE,
            Target::Ticket(ticket),
        ) {
            r.tickets.insert(ticket, wd);
        }
    }

    /// Stops routing `wake/<ticket>` events.
    pub(crate) fn unregister(&self, ticket: u64) {
        let Some(k) = &self.kernel else { return };
        let mut r = relock(&k.routes);
        if let Some(wd) = r.tickets.remove(&ticket) {
            Self::remove(k, &mut r, wd, &Target::Ticket(ticket));
        }
    }

    /// Routes the closing of these liveness files (their holders' deaths) to this
    /// process's waiters.
    pub(crate) fn register_lives(&self, names: &[String]) {
        let Some(k) = &self.kernel else { return };
        let mut r = relock(&k.routes);
        for n in names {
            if let Some((_, c)) = r.lives.get_mut(n) {
                *c += 1;
                continue;
            }
            let wd = if crate::store::live::valid_name(n) {
                let path = self.dir.join(LIVE_DIR).join(n);
                Self::add(
                    k,
                    &mut r,
                    &path,
                    WatchMask::CLOSE_WRITE,
                    Target::Live(n.clone()),
                )
            } else {
                None
            };
            r.lives.insert(n.clone(), (wd, 1));
        }
    }

    /// Undoes [`DirWatch::register_lives`].
    pub(crate) fn unregister_lives(&self, names: &[String]) {
        let Some(k) = &self.kernel else { return };
        let mut r = relock(&k.routes);
        for n in names {
            let Some((_, c)) = r.lives.get_mut(n) else {
                continue;
            };
            *c -= 1;
            if *c == 0
                && let Some((Some(wd), _)) = r.lives.remove(n)
            {
                Self::remove(k, &mut r, wd, &Target::Live(n.clone()));
            }
        }
    }

    /// Sets up the directory watches behind the change signal (once).
    fn enable_change(&self) {
        let Some(k) = &self.kernel else { return };
        let mut r = relock(&k.routes);
        if r.change {
            return;
        }
        r.change = true;
        Self::add(
            k,
            &mut r,
            &self.dir,
            WatchMask::MODIFY | WatchMask::ONLYDIR,
            Target::LocksDir,
        );
        Self::add(
            k,
            &mut r,
            &self.dir.join(LIVE_DIR),
            WatchMask::CLOSE_WRITE | WatchMask::ONLYDIR,
            Target::LiveDir,
        );
    }

    /// A signal's counter: read it before looking at the state, then wait for it to move.
    pub(crate) fn generation(&self, s: Signal) -> u64 {
        if s == Signal::Change {
            self.enable_change();
        }
        self.inner.get(s)
    }

    /// The longest a waiter should sleep before re-checking, `attempt` counting its
    /// consecutive sleeps without a change.
    pub(crate) fn fallback(&self, attempt: u32) -> Duration {
        if self.active() {
            FALLBACK
        } else {
            (Duration::from_millis(5) * 2u32.saturating_pow(attempt.min(8))).min(NO_WATCH_MAX)
        }
    }

    /// Blocks until signal `s` moves past `seen` or `until` passes.
    pub(crate) fn wait_blocking(&self, s: Signal, seen: u64, until: Instant) {
        let mut c = relock(&self.inner.counters);
        loop {
            let g = match s {
                Signal::Wake => c.wake,
                Signal::Change => c.change,
            };
            let now = Instant::now();
            if g != seen || now >= until {
                return;
            }
            c = match self.inner.cv.wait_timeout(c, until - now) {
                Ok((c, _)) => c,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Wakes every waiter and monitor of this process (used to stop a monitor).
    pub(crate) fn poke(&self) {
        self.inner.bump(true, true);
    }

    /// Waits until signal `s` moves past `seen` or `until` passes.
    pub(crate) async fn wait_async(&self, s: Signal, seen: u64, until: Instant) {
        let n = match s {
            Signal::Wake => &self.inner.wake_notify,
            Signal::Change => &self.inner.change_notify,
        };
        let notified = n.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.generation(s) != seen {
            return;
        }
        let _ = tokio::time::timeout_at(until.into(), notified).await;
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // Removing the anchor ends the reader thread (its last event is the anchor's
        // `IN_IGNORED`); the other watches go with the inotify descriptor it closes.
        if let Some(k) = &self.kernel {
            let _ = relock(&k.watches).remove(k.anchor.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileLock;
    use maos_core::{AgentId, ResourceName, Workspace};

    /// A watch with nothing registered reads no event while other waiters of the same table
    /// lock, queue, get woken and release (the directory watches it replaced read every
    /// table write, probe and wake-up of every process); a registered wake file still wakes
    /// it.
    #[test]
    fn a_watch_hears_only_the_files_it_waits_on() {
        let d = crate::store::test_dir();
        let ws = Workspace::init(d.path()).unwrap();
        let res = ResourceName::new("busy.rs").unwrap();
        // Creates the lock directory and the table.
        drop(
            FileLock::new(&ws, res.clone())
                .try_acquire("first")
                .unwrap(),
        );
        let idle = DirWatch::new(&ws.locks_dir());
        assert!(idle.active(), "inotify is available here");
        for round in 0..20 {
            let holder = FileLock::new(&ws, res.clone())
                .agent(AgentId::new("holder").unwrap())
                .try_acquire("hold")
                .unwrap()
                .unwrap();
            std::thread::scope(|s| {
                let waiter = s.spawn(|| {
                    FileLock::new(&ws, res.clone())
                        .agent(AgentId::new("waiter").unwrap())
                        .wait(Duration::from_secs(30))
                        .acquire_blocking("wait")
                        .map(|g| g.token())
                });
                // Released once the waiter is queued (its entry is in the table).
                while crate::LockTable::open(&ws)
                    .unwrap()
                    .records()
                    .unwrap()
                    .waiters
                    .is_empty()
                {
                    std::thread::yield_now();
                }
                holder.release().unwrap();
                let token = waiter.join().unwrap().unwrap();
                assert!(token.0 > 0, "round {round}");
            });
        }
        // Events are read in order: once this wake-up is read, every earlier one was.
        let ticket = u64::MAX - 1;
        let path = ws.locks_dir().join(WAKE_DIR).join(ticket.to_string());
        std::fs::write(&path, b"").unwrap();
        idle.register(ticket);
        let seen = idle.generation(Signal::Wake);
        crate::store::live::signal(&ws.locks_dir(), ticket);
        let until = Instant::now() + Duration::from_secs(30);
        while idle.generation(Signal::Wake) == seen && Instant::now() < until {
            idle.wait_blocking(Signal::Wake, seen, until);
        }
        assert_ne!(
            idle.generation(Signal::Wake),
            seen,
            "the registered wake file woke it"
        );
        assert_eq!(
            idle.inner.events.load(Ordering::Relaxed),
            1,
            "only its own wake-up was read"
        );
        idle.unregister(ticket);
    }
}
