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

use std::path::Path;

use maos_core::{AgentId, Workspace};
use maos_lock::{FileLock, LockGuard};

pub use types::*;

use crate::detect::{ConflictDetector, PairResult, Prediction};
use crate::error::{Error, Result};
use crate::touch::short_branch;

/// Prepares, coordinates and performs merges in one repository shared by many agents.
#[derive(Debug, Clone)]
pub struct MergeCoordinator {
    ws: Workspace,
    agent: AgentId,
    detector: ConflictDetector,
    options: CoordinatorOptions,
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
        })
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

    fn lock(&self, target: &str, purpose: &str) -> Result<LockGuard> {
        let resource = merge_lock_resource(target)?;
        let err = |source| Error::Lock {
            resource: resource.to_string(),
            source: Box::new(source),
        };
        FileLock::new(&self.ws, resource.clone())
            .agent(self.agent.clone())
            .wait(self.options.lock_wait)
            .acquire_blocking(purpose)
            .map_err(err)
    }

    pub(crate) fn step(&self, step: MergeStep) {
        if let Some(h) = &self.options.on_step {
            (h.0)(step);
        }
    }

    fn release(guard: LockGuard) {
        if let Err(e) = guard.release() {
            tracing::warn!(error = %e, "releasing the merge lock failed");
        }
    }

    /// Which registered agents' branches would conflict, with `target` and with each other:
    /// every agent whose registry record names a branch. With `include_worktrees`, an agent
    /// whose record also names a worktree is checked with that worktree's uncommitted
    /// changes ([`ConflictDetector::snapshot_worktree`]). Results name branches
    /// (`<branch> (<agent>)`), not snapshot commits.
    pub fn predict_agents(&self, target: &str, include_worktrees: bool) -> Result<Prediction> {
        let span = tracing::info_span!("predict_agents", target, include_worktrees);
        let _enter = span.enter();
        let list = maos_core::AgentRegistry::new(&self.ws)
            .list()
            .map_err(|source| Error::Core {
                context: "read the agent registry".into(),
                source,
            })?;
        let mut revs = Vec::new();
        let mut labels = Vec::new();
        for rec in list.agents {
            let Some(branch) = rec.branch.clone() else {
                continue;
            };
            let rev = match (&rec.worktree, include_worktrees) {
                (Some(wt), true) => self.detector.snapshot_worktree(wt)?,
                _ => branch.clone(),
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
