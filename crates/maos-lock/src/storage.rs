//! The storage seam of the lock commands: what `maos lock ...` and `maos deadlock check`
//! need, implemented here on the files ([`FileLocks`]) and by `maos-postgres` on a server.
//! The backend is chosen once, by whoever opens the workspace
//! (`maos_coordination::backend::open`); a command is written once, over [`LockStore`].

use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use maos_core::{AgentId, ResourceName, Workspace};

use crate::{
    Deadlock, DeadlockDetector, Error, FencingToken, FileLock, LeaseGrant, LockInfo, LockMode,
    LockTable, Result, Snapshot,
};

/// A report callback: a line saying whom a wait waits for, or why a lock was lost.
pub type Report = Arc<dyn Fn(&str) + Send + Sync>;

/// What to take: `maos lock acquire` and `maos lock run`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LockRequest {
    /// The resource (path or pattern).
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The lease length.
    pub ttl: Duration,
    /// The longest wait.
    pub wait: Duration,
    /// Why (shown to waiters).
    pub purpose: String,
    /// The owner.
    pub agent: AgentId,
}

impl LockRequest {
    /// An exclusive request of `agent` for `resource`, with the given lease and wait.
    pub fn new(agent: AgentId, resource: ResourceName, ttl: Duration, wait: Duration) -> Self {
        Self {
            resource,
            mode: LockMode::Exclusive,
            ttl,
            wait,
            purpose: String::new(),
            agent,
        }
    }
}

/// How a `maos lock run` ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The command's status, or why it could not be run or waited for.
    pub status: std::result::Result<ExitStatus, Box<dyn std::error::Error + Send + Sync>>,
    /// True when the lock was lost while the command ran (already reported).
    pub lost: bool,
    /// A release that failed for another reason than a lost lock.
    pub release_error: Option<Error>,
}

/// The lock table of one workspace, on whichever backend it lives.
pub trait LockStore: Send + Sync + std::fmt::Debug {
    /// Takes the lock as a lease of the agent alone (it outlives this process); waiting
    /// first come, first served; `blocked` hears whom it waits for.
    fn acquire_lease(&self, req: &LockRequest, blocked: Report) -> Result<LeaseGrant>;
    /// Releases `agent`'s locks on exactly `resource` (only the one with `token`, if given).
    fn release(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        token: Option<FencingToken>,
    ) -> Result<Vec<LockInfo>>;
    /// Renews `agent`'s locks on `resource`, or every lock it holds, by their lease (or `ttl`).
    fn renew(
        &self,
        resource: Option<&ResourceName>,
        agent: &AgentId,
        ttl: Option<Duration>,
    ) -> Result<Vec<LockInfo>>;
    /// Releases every lease `agent` holds (unregistering it).
    fn release_agent(&self, agent: &AgentId) -> Result<Vec<LockInfo>>;
    /// Holders and waiters now.
    fn snapshot(&self) -> Result<Snapshot>;
    /// The current holders that conflict with `mode` on `resource`.
    fn conflicting(&self, resource: &ResourceName, mode: LockMode) -> Result<Vec<LockInfo>>;
    /// The deadlocks now, each with whether this call aborted its victim's wait.
    fn deadlocks(
        &self,
        sender: &AgentId,
        broadcast: bool,
        resolve: bool,
    ) -> Result<Vec<(Deadlock, bool)>>;
    /// Holds the lock while the process `spawn` starts (given the fencing token) runs,
    /// renewing it; releases it after.
    fn run(
        &self,
        req: &LockRequest,
        spawn: &mut dyn FnMut(FencingToken) -> std::io::Result<Child>,
        blocked: Report,
        lost: Report,
    ) -> Result<RunOutcome>;
}

/// The file backend: the lock table under `.maos/locks/`.
#[derive(Debug, Clone)]
pub struct FileLocks {
    ws: Workspace,
}

impl FileLocks {
    /// The lock table of `ws`.
    pub fn new(ws: &Workspace) -> Self {
        Self { ws: ws.clone() }
    }

    fn lock(&self, req: &LockRequest, blocked: Report) -> FileLock {
        FileLock::new(&self.ws, req.resource.clone())
            .agent(req.agent.clone())
            .ttl(req.ttl)
            .wait(req.wait)
            .mode(req.mode)
            .on_blocked(move |b| blocked(&b.to_string()))
    }
}

impl LockStore for FileLocks {
    fn acquire_lease(&self, req: &LockRequest, blocked: Report) -> Result<LeaseGrant> {
        self.lock(req, blocked).acquire_lease(&req.purpose)
    }

    fn release(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        token: Option<FencingToken>,
    ) -> Result<Vec<LockInfo>> {
        LockTable::open(&self.ws)?.release(resource, agent, token)
    }

    fn renew(
        &self,
        resource: Option<&ResourceName>,
        agent: &AgentId,
        ttl: Option<Duration>,
    ) -> Result<Vec<LockInfo>> {
        let table = LockTable::open(&self.ws)?;
        match resource {
            Some(r) => table.renew(r, agent, ttl),
            None => table.renew_all_ttl(agent, ttl),
        }
    }

    fn release_agent(&self, agent: &AgentId) -> Result<Vec<LockInfo>> {
        LockTable::open(&self.ws)?.release_agent(agent)
    }

    fn snapshot(&self) -> Result<Snapshot> {
        LockTable::open(&self.ws)?.snapshot()
    }

    fn conflicting(&self, resource: &ResourceName, mode: LockMode) -> Result<Vec<LockInfo>> {
        LockTable::open(&self.ws)?.conflicting(resource, mode)
    }

    fn deadlocks(
        &self,
        sender: &AgentId,
        broadcast: bool,
        resolve: bool,
    ) -> Result<Vec<(Deadlock, bool)>> {
        DeadlockDetector::new(&self.ws)
            .sender(sender.clone())
            .broadcast(broadcast)
            .resolve(resolve)
            .check_with_outcome()
    }

    fn run(
        &self,
        req: &LockRequest,
        spawn: &mut dyn FnMut(FencingToken) -> std::io::Result<Child>,
        blocked: Report,
        lost: Report,
    ) -> Result<RunOutcome> {
        let flag = Arc::new(AtomicBool::new(false));
        let seen = flag.clone();
        let told = lost.clone();
        let mut guard = self
            .lock(req, blocked)
            // The command inherits the lock's own liveness: killing this process does not
            // free the lock while the command still runs inside the critical section.
            .inheritable(true)
            .on_lost(move |e| {
                seen.store(true, Ordering::Relaxed);
                told(&e.to_string());
            })
            .acquire_blocking(&req.purpose)?;
        guard.share_with_children()?;
        let status = match spawn(guard.token()) {
            Ok(mut child) => guard
                .wait_child(&mut child)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            Err(e) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
        };
        let mut was_lost = flag.load(Ordering::Relaxed);
        let mut release_error = None;
        match guard.release() {
            Ok(()) => {}
            Err(e @ Error::LockLost { .. }) => {
                if !was_lost {
                    lost(&e.to_string());
                }
                was_lost = true;
            }
            Err(e) => release_error = Some(e),
        }
        Ok(RunOutcome {
            status,
            lost: was_lost,
            release_error,
        })
    }
}
