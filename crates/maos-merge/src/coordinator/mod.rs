//! Merge preparation, resolution coordination and automated merging: the coordinator
//! (`mod.rs`), its value types (`types.rs`), preparation with who touched what
//! (`prepare.rs`), resolution tasks and notices (`resolution.rs`), the merge itself
//! (`merge.rs`) and the crash-safe update of a checked-out target (`checkout.rs`).

mod checkout;
mod merge;
mod prepare;
mod resolution;
mod types;

pub(crate) use checkout::{Intent, read_intent};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use maos_core::{AgentId, AgentRecord, Workspace};
use maos_lock::{FileLock, LockGuard};

pub use types::*;

use crate::backend::{BackendError, Hold, MergeBackend};
use crate::detect::{ConflictDetector, PairResult, Prediction};
use crate::error::{Error, Result};
use crate::touch::short_branch;

/// The merge lock as held: a file lock guard, or a backend's hold.
pub(crate) enum MergeLock {
    File(Box<LockGuard>),
    Backend(#[allow(dead_code)] Box<dyn Hold>), // held until dropped
}

/// Prepares, coordinates and performs merges in one repository shared by many agents.
#[derive(Debug, Clone)]
pub struct MergeCoordinator {
    ws: Workspace,
    agent: AgentId,
    detector: ConflictDetector,
    options: CoordinatorOptions,
    backend: Option<Arc<dyn MergeBackend>>,
}

impl MergeCoordinator {
    /// A coordinator acting as `agent`, on the git repository at or above the workspace root.
    pub fn new(ws: &Workspace, agent: AgentId) -> Result<Self> {
        Self::with_repository(ws, agent, ws.root())
    }

    /// A coordinator on the repository at or above `repo`.
    pub fn with_repository(ws: &Workspace, agent: AgentId, repo: &Path) -> Result<Self> {
        Ok(Self {
            ws: ws.clone(),
            agent,
            detector: ConflictDetector::open(repo)?,
            options: CoordinatorOptions::default(),
            backend: None,
        })
    }

    /// Keeps the merge lock, the resolution tasks, the notices, the agent registry and the
    /// queue in `backend` (a server shared by several machines) instead of the workspace's
    /// files; git stays this clone's.
    #[must_use = "with_backend returns the changed coordinator"]
    pub fn with_backend(mut self, backend: Arc<dyn MergeBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The backend given with [`MergeCoordinator::with_backend`], if any.
    pub fn backend(&self) -> Option<&Arc<dyn MergeBackend>> {
        self.backend.as_ref()
    }

    /// Wraps a backend's error with what was being done.
    pub(crate) fn backend_err(&self, context: impl Into<String>, source: BackendError) -> Error {
        Error::Backend {
            context: context.into(),
            backend: self.backend.as_ref().map_or("file", |b| b.name()),
            source,
        }
    }

    /// The registered agents, from the backend or the workspace's registry.
    pub(crate) fn agent_records(&self) -> Result<Vec<AgentRecord>> {
        match &self.backend {
            Some(b) => b
                .agents()
                .map_err(|e| self.backend_err("read the agent registry", e)),
            None => maos_core::AgentRegistry::new(&self.ws)
                .list()
                .map(|l| l.agents)
                .map_err(|source| Error::Core {
                    context: "read the agent registry".into(),
                    source,
                }),
        }
    }

    /// Branch (short name) to agent, from the registry; a registry that cannot be read is
    /// logged and gives an empty map (attribution falls back to trailers and authors).
    pub(crate) fn branch_agents(&self) -> BTreeMap<String, AgentId> {
        if self.backend.is_none() {
            return crate::touch::branch_agents(&self.ws);
        }
        let mut out = BTreeMap::new();
        match self.agent_records() {
            Ok(list) => {
                for rec in list {
                    if let Some(b) = rec.branch {
                        out.insert(short_branch(&b).to_owned(), rec.id);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the agent registry"),
        }
        out
    }

    /// Replaces the options.
    #[must_use = "with_options returns the changed coordinator"]
    pub fn with_options(mut self, options: CoordinatorOptions) -> Self {
        self.options = options;
        self
    }

    /// The detector.
    pub fn detector(&self) -> &ConflictDetector {
        &self.detector
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// The acting agent.
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }

    fn lock(&self, target: &str, purpose: &str) -> Result<MergeLock> {
        let resource = merge_lock_resource(target)?;
        if let Some(b) = &self.backend {
            return b
                .lock(&resource, &self.agent, self.options.lock_wait, purpose)
                .map(MergeLock::Backend)
                .map_err(|e| self.backend_err(format!("take the merge lock {resource}"), e));
        }
        let err = |source| Error::Lock {
            resource: resource.to_string(),
            source: Box::new(source),
        };
        FileLock::new(&self.ws, resource.clone())
            .agent(self.agent.clone())
            .wait(self.options.lock_wait)
            .acquire_blocking(purpose)
            .map(|g| MergeLock::File(Box::new(g)))
            .map_err(err)
    }

    pub(crate) fn step(&self, step: MergeStep) {
        if let Some(h) = &self.options.on_step {
            (h.0)(step);
        }
    }

    fn release(guard: MergeLock) {
        match guard {
            MergeLock::File(g) => {
                if let Err(e) = g.release() {
                    tracing::warn!(error = %e, "releasing the merge lock failed");
                }
            }
            MergeLock::Backend(hold) => drop(hold),
        }
    }

    /// Which registered agents' branches would conflict, with `target` and with each other:
    /// every agent whose registry record names a branch. With `include_worktrees`, an agent
    /// whose record also names a worktree is checked with that worktree's uncommitted
    /// changes ([`ConflictDetector::snapshot_worktree`]). Results name branches
    /// (`<branch> (<agent>)`), not snapshot commits.
    pub fn predict_agents(&self, target: &str, include_worktrees: bool) -> Result<Prediction> {
        self.predict_agents_from(target, include_worktrees, None)
    }

    /// [`MergeCoordinator::predict_agents`], reading each agent's branch from `remote`'s
    /// remote-tracking ref (`refs/remotes/<remote>/<branch>`, as the last `git fetch <remote>`
    /// left it) when there is one: agents on other machines push their branches to a shared
    /// remote, the coordinator fetches and checks them. A branch the remote lacks is read
    /// locally.
    pub fn predict_agents_from(
        &self,
        target: &str,
        include_worktrees: bool,
        remote: Option<&str>,
    ) -> Result<Prediction> {
        let span = tracing::info_span!("predict_agents", target, include_worktrees, remote);
        let _enter = span.enter();
        let list = self.agent_records()?;
        let mut revs = Vec::new();
        let mut labels = Vec::new();
        for rec in list {
            let Some(branch) = rec.branch.clone() else {
                continue;
            };
            let rev = match (&rec.worktree, include_worktrees) {
                (Some(wt), true) => self.detector.snapshot_worktree(wt)?,
                _ => match remote {
                    Some(r) => self
                        .remote_ref(r, &branch)?
                        .unwrap_or_else(|| branch.clone()),
                    None => branch.clone(),
                },
            };
            revs.push(rev);
            labels.push(format!("{} ({})", short_branch(&branch), rec.id));
        }
        let mut p = self.detector.predict(&revs, target)?;
        let rename = |r: &mut PairResult| {
            for (rev, label) in revs.iter().zip(&labels) {
                if &r.source == rev {
                    r.source = label.clone();
                }
                if &r.target == rev {
                    r.target = label.clone();
                }
            }
        };
        p.vs_target.iter_mut().for_each(rename);
        p.pairwise.iter_mut().for_each(rename);
        Ok(p)
    }
}

impl MergeCoordinator {
    /// `refs/remotes/<remote>/<branch>` if this repository has it.
    fn remote_ref(&self, remote: &str, branch: &str) -> Result<Option<String>> {
        let name = format!("refs/remotes/{remote}/{}", short_branch(branch));
        let repo = self.detector.repository()?;
        Ok(repo.find_reference(&name).is_ok().then_some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_merge_lock_is_per_target_branch() {
        assert_eq!(
            merge_lock_resource("main").unwrap().as_str(),
            ".maos/merge/main"
        );
        assert_eq!(
            merge_lock_resource("refs/heads/release/1.0")
                .unwrap()
                .as_str(),
            ".maos/merge/release/1.0"
        );
        assert!(merge_lock_resource("../x").is_err());
    }

    #[test]
    fn strategy_names() {
        assert_eq!(MergeStrategy::FastForward.name(), "fast_forward");
        let m = MergeStrategy::Manual {
            resolvers: BTreeMap::new(),
        };
        assert_eq!(serde_json::to_value(&m).unwrap()["strategy"], "manual");
    }
}
