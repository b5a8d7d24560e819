//! Waking waiters: a notify (inotify) watch on `.maos/locks/`, `live/` and `wake/`, shared by
//! every waiter of the process, plus a fallback timer.
//!
//! Two signals:
//! - *wake*: a queued waiter's own `wake/<ticket>` file was written (whoever removed the
//!   entry that blocked it signals it), or a liveness file was closed by the last process
//!   holding it open (a holder died or exited: its kernel lock is gone). Only the waiters
//!   concerned wake, not every process.
//! - *change*: a state file (`table.0`/`table.1` written, `advisory.json` replaced); for monitors and
//!   advisory waiters.
//!
//! Events are hints: a waiter always re-reads the table under the guard, and re-checks after
//! [`FALLBACK`] anyway (lost events, network file systems).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::Watcher as _;

use crate::store::{ADVISORY, LIVE_DIR, TABLE_SLOTS, WAKE_DIR};

/// Longest sleep without an event while the watch works.
pub(crate) const FALLBACK: Duration = Duration::from_secs(1);
/// Longest sleep without an event when no watch could be set up (backs off from 5 ms).
const NO_WATCH_MAX: Duration = Duration::from_millis(250);

/// `start + d`, or a point about a century ahead when that is not representable (a caller's
/// `Duration::MAX` means "wait forever", not a panic).
pub(crate) fn deadline_after(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .or_else(|| start.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(start)
}

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
    counters: Mutex<Counters>,
    cv: Condvar,
    wake_notify: tokio::sync::Notify,
    change_notify: tokio::sync::Notify,
    tickets: Mutex<HashSet<u64>>,
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

    fn on_event(&self, ev: &notify::Event) {
        if ev.need_rescan() {
            self.bump(true, true);
            return;
        }
        let closed = matches!(
            ev.kind,
            notify::EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write
            ))
        );
        let (mut wake, mut change) = (false, false);
        for p in &ev.paths {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let dir = p
                .parent()
                .and_then(|d| d.file_name())
                .and_then(|d| d.to_str());
            match dir {
                Some(LIVE_DIR) if closed => {
                    wake = true;
                    change = true;
                }
                Some(WAKE_DIR)
                    if closed
                        && name
                            .parse::<u64>()
                            .is_ok_and(|t| relock(&self.tickets).contains(&t)) =>
                {
                    wake = true;
                }
                _ if TABLE_SLOTS.contains(&name) => {
                    change |= matches!(ev.kind, notify::EventKind::Modify(_));
                }
                _ if name == ADVISORY => change = true,
                _ => {}
            }
        }
        if wake || change {
            self.bump(wake, change);
        }
    }
}

/// A watch on one lock directory.
pub(crate) struct DirWatch {
    inner: Arc<Inner>,
    watcher: Option<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("active", &self.watcher.is_some())
            .finish()
    }
}

impl DirWatch {
    pub(crate) fn new(dir: &Path) -> Self {
        let inner = Arc::new(Inner::default());
        let sink = inner.clone();
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => sink.on_event(&ev),
            Err(_) => sink.bump(true, true),
        };
        let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(dir, notify::RecursiveMode::NonRecursive)?;
            w.watch(&dir.join(LIVE_DIR), notify::RecursiveMode::NonRecursive)?;
            w.watch(&dir.join(WAKE_DIR), notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = &e as &dyn std::error::Error, "cannot watch the lock directory; waiters fall back to timed re-checks");
                None
            }
        };
        Self { inner, watcher }
    }

    /// Routes `wake/<ticket>` events to this process's waiters.
    pub(crate) fn register(&self, ticket: u64) {
        relock(&self.inner.tickets).insert(ticket);
    }

    /// Stops routing `wake/<ticket>` events.
    pub(crate) fn unregister(&self, ticket: u64) {
        relock(&self.inner.tickets).remove(&ticket);
    }

    /// A signal's counter: read it before looking at the state, then wait for it to move.
    pub(crate) fn generation(&self, s: Signal) -> u64 {
        self.inner.get(s)
    }

    /// The longest a waiter should sleep before re-checking, `attempt` counting its
    /// consecutive sleeps without a change.
    pub(crate) fn fallback(&self, attempt: u32) -> Duration {
        if self.watcher.is_some() {
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
