//! Waking waiters when the lock state changes: a notify (inotify) watch on `.maos/locks/`
//! and `.maos/locks/live/`, shared by every waiter of the process, plus a fallback timer.
//! A holder that dies wakes waiters at once: the kernel closes its liveness file, which
//! inotify reports as a close-after-write.
//!
//! Events are hints: a waiter always re-reads the table under the guard. A waiter that sees
//! no event re-checks after [`FALLBACK`] anyway (lost events, network file systems).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::Watcher as _;

use crate::store::{ADVISORY, LIVE_DIR, TABLE};

/// Longest sleep without an event while the watch works.
pub(crate) const FALLBACK: Duration = Duration::from_secs(1);
/// Longest sleep without an event when no watch could be set up (backs off from 5 ms).
const NO_WATCH_MAX: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct Inner {
    generation: Mutex<u64>,
    cv: Condvar,
    notify: tokio::sync::Notify,
}

impl Inner {
    fn bump(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *g += 1;
        drop(g);
        self.cv.notify_all();
        self.notify.notify_waiters();
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
            Ok(ev) => {
                // A state file replaced, or a liveness file closed by the last process holding
                // it open (its holder died or exited: the kernel released its lock).
                let closed = matches!(
                    ev.kind,
                    notify::EventKind::Access(notify::event::AccessKind::Close(
                        notify::event::AccessMode::Write
                    ))
                );
                let relevant = ev.need_rescan()
                    || ev.paths.iter().any(|p| {
                        let name = p.file_name().and_then(|n| n.to_str());
                        let in_live = p
                            .parent()
                            .and_then(|d| d.file_name())
                            .is_some_and(|d| d == LIVE_DIR);
                        (in_live && closed) || name.is_some_and(|n| n == TABLE || n == ADVISORY)
                    });
                if relevant {
                    sink.bump();
                }
            }
            Err(_) => sink.bump(),
        };
        let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(dir, notify::RecursiveMode::NonRecursive)?;
            w.watch(&dir.join(LIVE_DIR), notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the lock directory; waiters fall back to timed re-checks");
                None
            }
        };
        Self { inner, watcher }
    }

    /// The change counter: read it before looking at the state, then wait for it to move.
    pub(crate) fn generation(&self) -> u64 {
        *self
            .inner
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
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

    /// Blocks until the generation differs from `seen` or `until` passes.
    pub(crate) fn wait_blocking(&self, seen: u64, until: Instant) {
        let mut g = self
            .inner
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while *g == seen {
            let now = Instant::now();
            if now >= until {
                return;
            }
            g = match self.inner.cv.wait_timeout(g, until - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Waits until the generation differs from `seen` or `until` passes.
    pub(crate) async fn wait_async(&self, seen: u64, until: Instant) {
        let notified = self.inner.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.generation() != seen {
            return;
        }
        let _ = tokio::time::timeout_at(until.into(), notified).await;
    }

    /// Wakes every waiter of this process (used after local changes).
    pub(crate) fn poke(&self) {
        self.inner.bump();
    }
}
