//! The storage seam of the agent registry: what the `maos agents` commands (and every
//! command's lease renewal) need, implemented here on the files ([`FileAgents`]) and by
//! `maos-postgres` on a server. The backend is chosen once, by whoever opens the workspace
//! (`maos_coordination::backend::open`).

use crate::{
    AgentId, AgentRecord, AgentRegistry, AgentRole, Anchor, Liveness, Registration, Result,
    Workspace, now_ms,
};

/// A registered agent as a backend sees it now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AgentView {
    /// The record.
    #[serde(flatten)]
    pub record: AgentRecord,
    /// The verdict on its liveness (only `Dead` releases its claims and locks).
    pub liveness: Liveness,
    /// The process keeping it alive now, if any.
    pub live_anchor: Option<Anchor>,
    /// How long its lease still runs (ms, on the backend's clock).
    pub lease_left_ms: u64,
}

impl AgentView {
    /// A view with the given verdicts (a backend that judges liveness itself).
    pub fn new(
        record: AgentRecord,
        liveness: Liveness,
        live_anchor: Option<Anchor>,
        lease_left_ms: u64,
    ) -> Self {
        Self {
            record,
            liveness,
            live_anchor,
            lease_left_ms,
        }
    }

    /// A view of `record` at `now` (ms) as the record's own anchors and lease say.
    pub fn at(record: AgentRecord, now: u64) -> Self {
        Self {
            liveness: record.liveness_at(now),
            live_anchor: record.live_anchor(),
            lease_left_ms: record.lease_until.saturating_sub(now),
            record,
        }
    }
}

/// The agent registry of one workspace, on whichever backend it lives.
pub trait AgentStore: Send + Sync + std::fmt::Debug {
    /// Registers (or re-registers) an agent.
    fn register(&self, reg: Registration) -> Result<AgentRecord>;
    /// Renews the lease of a registered agent (an error for an unknown one).
    fn heartbeat(&self, id: &AgentId) -> Result<AgentRecord>;
    /// Records a call by `id` if it is registered (renews its lease); nothing otherwise.
    fn touch(&self, id: &AgentId, anchor: &dyn Fn() -> Option<Anchor>) -> Result<()>;
    /// Removes `id`; whether it was registered.
    fn unregister(&self, id: &AgentId) -> Result<bool>;
    /// Every agent, by id, with the problems met while reading (never skipped silently).
    fn list(&self) -> Result<(Vec<AgentView>, Vec<String>)>;
    /// The role of `id`, if registered with one.
    fn role_of(&self, id: &AgentId) -> Result<Option<AgentRole>>;
}

/// The file backend's registry: [`AgentRegistry`] on `.maos/agents/`.
#[derive(Debug, Clone)]
pub struct FileAgents {
    ws: Workspace,
}

impl FileAgents {
    /// The registry of `ws`.
    pub fn new(ws: &Workspace) -> Self {
        Self { ws: ws.clone() }
    }
}

impl AgentStore for FileAgents {
    fn register(&self, reg: Registration) -> Result<AgentRecord> {
        AgentRegistry::new(&self.ws).register(reg)
    }

    fn heartbeat(&self, id: &AgentId) -> Result<AgentRecord> {
        AgentRegistry::new(&self.ws).heartbeat(id)
    }

    fn touch(&self, id: &AgentId, anchor: &dyn Fn() -> Option<Anchor>) -> Result<()> {
        AgentRegistry::new(&self.ws).touch(id, anchor).map(|_| ())
    }

    fn unregister(&self, id: &AgentId) -> Result<bool> {
        AgentRegistry::new(&self.ws).unregister(id)
    }

    fn list(&self) -> Result<(Vec<AgentView>, Vec<String>)> {
        let list = AgentRegistry::new(&self.ws).list()?;
        let now = now_ms();
        Ok((
            list.agents
                .into_iter()
                .map(|r| AgentView::at(r, now))
                .collect(),
            list.problems.iter().map(ToString::to_string).collect(),
        ))
    }

    fn role_of(&self, id: &AgentId) -> Result<Option<AgentRole>> {
        AgentRegistry::new(&self.ws).role_of(id)
    }
}
