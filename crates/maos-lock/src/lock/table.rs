//! [`LockTable`]: listing, the cheap conflict query, and the agent-level release and renewal
//! the CLI uses for leases held by an agent rather than by a process.

use std::sync::Arc;
use std::time::Duration;

use maos_core::{AgentId, ResourceName, Workspace, fsx};

use super::{FencingToken, MAX_TTL};
use crate::Result;
use crate::store::ops::{self, AgentAction, Snapshot};
use crate::store::{LockInfo, LockMode, Shared};

fn ttl_ms(ttl: Duration) -> u64 {
    crate::watch::millis(ttl.clamp(Duration::from_millis(1), MAX_TTL))
}

/// Table-wide operations: listing, conflict queries, and the agent-level release and renewal
/// the CLI uses for leases held by an agent rather than by a process.
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

    /// Holders and waiters, after reclaiming dead and expired ones. Reads the whole table.
    pub fn snapshot(&self) -> Result<Snapshot> {
        ops::snapshot(&self.shared)
    }

    /// Every holder and waiter record as stored, including those whose process has ended or
    /// whose lease ran out: a read under the shared guard that reaps nothing (unlike
    /// [`LockTable::snapshot`]), for checkers that verify dead records are reclaimed. Its
    /// cost follows the table's size.
    pub fn records(&self) -> Result<Snapshot> {
        ops::dump(&self.shared)
    }

    /// Current holders whose locks conflict with a `mode` lock on `resource`: the locks on
    /// the resource itself, on its parents, below it, and on overlapping patterns. A read
    /// under the shared guard, synchronous, no runtime; its cost follows the resource (its
    /// parents' records and the patterns held), not the number of unrelated locks.
    pub fn conflicting(&self, resource: &ResourceName, mode: LockMode) -> Result<Vec<LockInfo>> {
        self.conflicting_within(resource, mode, fsx::DEFAULT_GUARD_TIMEOUT)
    }

    /// [`LockTable::conflicting`], waiting at most `timeout` for the table's guard.
    pub fn conflicting_within(
        &self,
        resource: &ResourceName,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<Vec<LockInfo>> {
        ops::conflicting(&self.shared, resource, mode, timeout)
    }

    /// The token of the exclusive lock that holds exactly `resource` now, if any.
    pub fn current_token(&self, resource: &ResourceName) -> Result<Option<FencingToken>> {
        Ok(self
            .conflicting(resource, LockMode::Shared)?
            .into_iter()
            .filter(|h| &h.resource == resource)
            .map(|h| h.token)
            .max())
    }

    /// Releases `agent`'s locks on exactly `resource` (only the one with `token`, if given).
    ///
    /// # Errors
    /// [`Error::NotOwner`](crate::Error::NotOwner) when the agent holds none (naming who
    /// does).
    pub fn release(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        token: Option<FencingToken>,
    ) -> Result<Vec<LockInfo>> {
        let _span = tracing::info_span!("release", resource = %resource, agent = %agent).entered();
        ops::agent_records(&self.shared, resource, agent, token, AgentAction::Release)
    }

    /// Releases every lease `agent` holds without a process (its `maos lock acquire` locks):
    /// what unregistering an agent does. Locks held by live processes stay theirs.
    pub fn release_agent(&self, agent: &AgentId) -> Result<Vec<LockInfo>> {
        let _span = tracing::info_span!("release_agent", agent = %agent).entered();
        ops::release_agent(&self.shared, agent)
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
        ops::renew_all(&self.shared, agent, ttl.map(ttl_ms))
    }

    /// Renews `agent`'s locks on exactly `resource` by their lease length (or `ttl`).
    ///
    /// # Errors
    /// [`Error::NotOwner`](crate::Error::NotOwner) when the agent holds none (its lease may
    /// have ended).
    pub fn renew(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        ttl: Option<Duration>,
    ) -> Result<Vec<LockInfo>> {
        let _span = tracing::info_span!("renew", resource = %resource, agent = %agent).entered();
        ops::agent_records(
            &self.shared,
            resource,
            agent,
            None,
            AgentAction::Renew(ttl.map(ttl_ms)),
        )
    }
}
