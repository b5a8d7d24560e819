//! A held lock: [`LockGuard`] (released on drop) and the lease an agent holds without a
//! process ([`LeaseGrant`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock"]
pub struct LockGuard {
    shared: Arc<Shared>,
    info: LockInfo,
    heartbeat: Option<Heartbeat>,
    lost: Arc<AtomicBool>,
    run_live: Option<LiveFile>,
    active: bool,
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

    fn stop_heartbeat(&mut self) {
        if let Some(hb) = self.heartbeat.take() {
            hb.stop();
        }
    }

    /// Removes the lock's own liveness file (after its record is gone).
    fn drop_live(&mut self) {
        if let Some(f) = self.run_live.take() {
            f.remove();
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
