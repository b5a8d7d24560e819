//! The automatic lease renewal thread of a guard ([`FileLock::heartbeat`](super::FileLock::heartbeat)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use super::LostHook;
use crate::Error;
use crate::store::ops;
use crate::store::{LockInfo, Shared};

/// Renews a lease every third of its length until stopped; a renewal that finds the lock
/// lost sets the guard's flag, calls the `on_lost` hook, and ends the thread.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Heartbeat {
    pub(crate) fn start(
        shared: Arc<Shared>,
        info: LockInfo,
        lost: Arc<AtomicBool>,
        on_lost: Option<LostHook>,
    ) -> Self {
        let every = Duration::from_millis((info.ttl_ms / 3).max(1));
        let (stop, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("maos-lock-heartbeat".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    match ops::renew(&shared, &info) {
                        Ok(_) => tracing::trace!(resource = %info.resource, "lease renewed"),
                        Err(e @ Error::LockLost { .. }) => {
                            tracing::warn!(
                                error = &e as &dyn std::error::Error,
                                "heartbeat: lock lost"
                            );
                            lost.store(true, Ordering::Relaxed);
                            if let Some(f) = &on_lost {
                                f(&e);
                            }
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

    pub(crate) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
