//! A held lock: [`LockGuard`] (released on drop) and the lease an agent holds without a
//! process ([`LeaseGrant`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use maos_core::ResourceName;
use serde::Serialize;

use super::heartbeat::Heartbeat;
use super::{FencingToken, LostHook};
use crate::store::live::LiveFile;
use crate::store::ops::{self, Grant};
use crate::store::{LockInfo, Shared};
use crate::{Error, Result};

/// A lease taken by [`FileLock::acquire_lease`](super::FileLock::acquire_lease).
#[derive(Debug, Clone, Serialize)]
pub struct LeaseGrant {
    /// The lock record.
    #[serde(flatten)]
    pub info: LockInfo,
    /// True when the agent already held this very lease: it was renewed, not taken again.
    pub reentered: bool,
}

/// A held lock. Dropping it releases the lock synchronously (no runtime needed).
#[must_use = "dropping the guard releases the lock"]
pub struct LockGuard {
    shared: Arc<Shared>,
    info: LockInfo,
    heartbeat: Option<Heartbeat>,
    lost: Arc<AtomicBool>,
    on_lost: Option<LostHook>,
    run_live: Option<LiveFile>,
    active: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("info", &self.info)
            .field("heartbeat", &self.heartbeat.is_some())
            .field("lost", &self.is_lost())
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    pub(crate) fn new(
        shared: Arc<Shared>,
        g: Grant,
        heartbeat: bool,
        on_lost: Option<LostHook>,
    ) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = heartbeat.then(|| {
            Heartbeat::start(
                shared.clone(),
                g.info.clone(),
                lost.clone(),
                on_lost.clone(),
            )
        });
        Self {
            shared,
            info: g.info,
            heartbeat,
            lost,
            on_lost,
            run_live: g.run_live,
            active: true,
        }
    }

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
        match ops::renew(&self.shared, &self.info) {
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

    /// Checks that this guard still holds the lock ([`check_fencing_token`](super::check_fencing_token)).
    pub fn check(&self) -> Result<()> {
        ops::check_token(&self.shared, &self.info.resource, self.info.token)
    }

    /// Releases the lock: deletes its record, if it is still this guard's.
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock was already lost (nothing is deleted then).
    pub fn release(mut self) -> Result<()> {
        self.active = false;
        self.stop_heartbeat();
        let r = ops::release(&self.shared, &self.info);
        self.drop_live();
        r
    }

    /// Hands the lock over to the owning agent: it no longer depends on this process, stays
    /// held after it exits, and ends when released by the agent, when its lease runs out, or
    /// when the agent is dead. Written durably.
    pub fn detach(mut self) -> Result<LockInfo> {
        self.active = false;
        self.stop_heartbeat();
        let r = ops::detach(&self.shared, &self.info);
        self.drop_live();
        r
    }

    /// Lets child processes spawned from now on inherit this lock's own liveness descriptor,
    /// so the lock counts as held while any of them still runs, even if this process is
    /// killed (`maos lock run`, like flock(1)). Needs a lock taken with
    /// [`FileLock::inheritable`](super::FileLock::inheritable).
    pub fn share_with_children(&self) -> Result<()> {
        match &self.run_live {
            Some(f) => f.inherit(),
            None => Err(Error::io(
                "share with children",
                &self.shared.dir,
                std::io::Error::other("the lock was not taken with FileLock::inheritable(true)"),
            )),
        }
    }

    /// Waits for `child` to end while renewing this lock's lease every third of its length,
    /// on this thread (no heartbeat thread: `maos lock run`'s critical path stays one thread).
    /// A renewal that finds the lock lost sets [`LockGuard::is_lost`] and calls the
    /// [`FileLock::on_lost`](super::FileLock::on_lost) hook; the wait goes on.
    ///
    /// # Errors
    /// When waiting for the child fails.
    pub fn wait_child(
        &mut self,
        child: &mut std::process::Child,
    ) -> Result<std::process::ExitStatus> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let dir = self.shared.dir.clone();
        let wait_err = |e: std::io::Error| Error::io("wait for", &dir, e);
        let pid = rustix::process::Pid::from_raw(child.id() as i32);
        let pidfd = match pid
            .map(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()))
        {
            Some(Ok(fd)) => fd,
            // No pidfd (an old kernel): renew from a thread meanwhile.
            _ => {
                if self.heartbeat.is_none() {
                    self.heartbeat = Some(Heartbeat::start(
                        self.shared.clone(),
                        self.info.clone(),
                        self.lost.clone(),
                        self.on_lost.clone(),
                    ));
                }
                return child.wait().map_err(wait_err);
            }
        };
        let every = Duration::from_millis((self.info.ttl_ms / 3).max(1));
        let mut next = Instant::now() + every;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            let ts = Timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => {}
                Ok(_) => return child.wait().map_err(wait_err),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(wait_err(e.into())),
            }
            next = Instant::now() + every;
            if self.is_lost() {
                continue;
            }
            match ops::renew(&self.shared, &self.info) {
                Ok(expires) => self.info.expires_at = expires,
                Err(e @ Error::LockLost { .. }) => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "lock lost while waiting for the child"
                    );
                    self.lost.store(true, Ordering::Relaxed);
                    if let Some(f) = &self.on_lost {
                        f(&e);
                    }
                }
                Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "renewal failed"),
            }
        }
    }

    fn stop_heartbeat(&mut self) {
        if let Some(hb) = self.heartbeat.take() {
            hb.stop();
        }
    }

    /// Retires the lock's own liveness file (after its record is gone).
    fn drop_live(&mut self) {
        if let Some(f) = self.run_live.take() {
            f.retire();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        self.stop_heartbeat();
        match ops::release(&self.shared, &self.info) {
            Ok(()) => {}
            Err(Error::LockLost { .. }) => {
                tracing::warn!(resource = %self.info.resource, token = self.info.token.0, "lock was lost before it was dropped")
            }
            Err(e) => {
                tracing::error!(resource = %self.info.resource, error = &e as &dyn std::error::Error, "cannot release lock on drop")
            }
        }
        self.drop_live();
    }
}
