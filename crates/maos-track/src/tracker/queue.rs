//! The ready queue: listing it, claiming from it, and releasing the claims of dead agents.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use maos_core::{AgentId, AgentRegistry, Liveness, TaskId, Workspace, fsx};

use super::TaskTracker;
use super::query::ReadyPage;
use crate::store::graph::Graph;
use crate::store::record::Op;
use crate::{Error, Task};

impl TaskTracker {
    /// Every ready (pending) task, in claim order: by priority (highest first), then by the
    /// length of the critical path they start (longest first), then by creation order.
    /// Costs O(ready tasks); [`ready_page_blocking`](Self::ready_page_blocking) reads a page.
    pub fn ready_blocking(&self) -> Result<Vec<Task>, Error> {
        Ok(self.ready_page_blocking(usize::MAX)?.tasks)
    }

    /// The first `limit` ready tasks in claim order, and how many are ready in all. Costs
    /// what the page reads, not what the store holds.
    pub fn ready_page_blocking(&self, limit: usize) -> Result<ReadyPage, Error> {
        self.read(|g| {
            let ords = g.ready_page(0, limit, |_, _| true)?;
            // Sized up front (collecting `Result`s grows the vector by doubling, moving every
            // task cloned so far each time), each task cloned into place.
            let mut tasks = Vec::with_capacity(ords.len());
            for o in ords {
                g.push_task(o, &mut tasks)?;
            }
            Ok(ReadyPage {
                tasks,
                total: g.ready_len(),
            })
        })
    }

    /// Atomically assigns the next ready task to `agent` and starts it (blocking): the best
    /// ready task that is unassigned or assigned to `agent`. Claims of agents the registry
    /// reports dead are released to the queue first (in the same write): looking for them
    /// reads every agent's record, so the claims of all processes together look at most once
    /// a second (the store's `sweep` file records when), and a claim that finds nothing to
    /// take always looks. `None` when nothing is ready.
    pub fn claim_blocking(&self, agent: &AgentId) -> Result<Option<Task>, Error> {
        let _span = tracing::info_span!("claim", agent = %agent).entered();
        let release = self.inner.options.release_dead_claims;
        let swept = release && sweep_due(self.dir());
        if let Some(task) = self.claim_once(agent, swept)? {
            return Ok(Some(task));
        }
        if release && !swept {
            // Nothing to take: a dead agent may hold what is left.
            return self.claim_once(agent, true);
        }
        Ok(None)
    }

    /// One claim; with `sweep`, releasing the claims of the agents that look dead first.
    fn claim_once(&self, agent: &AgentId, sweep: bool) -> Result<Option<Task>, Error> {
        let ws = self.workspace().clone();
        // Who looks dead is read before taking the store's lock (the registry's records and
        // /proc, once per agent): under the lock only those agents are checked again. An
        // agent that dies meanwhile has its claims released by a later sweep.
        let suspects = if sweep {
            let dead = dead_agents(&ws);
            mark_swept(self.dir());
            dead
        } else {
            HashSet::new()
        };
        self.write(Some(agent), false, |tx| {
            if !suspects.is_empty() {
                for op in dead_claims(&ws, tx.graph, Some(&suspects))? {
                    tx.push(op)?;
                }
            }
            let best = tx
                .graph
                .ready_page(0, 1, |_, a| a.is_none_or(|a| a == agent))?;
            let Some(&ord) = best.first() else {
                return Ok(None);
            };
            let id = tx.graph.task(ord)?.id;
            tx.push(Op::Claim {
                task: id,
                agent: agent.clone(),
            })?;
            tx.graph.task(ord).map(Some)
        })
    }

    /// Releases (back to Pending, unassigned) every active task whose agent the registry
    /// reports dead. Returns the released ids.
    pub fn release_dead_claims_blocking(&self) -> Result<Vec<TaskId>, Error> {
        let ws = self.workspace().clone();
        self.write(None, false, |tx| {
            let ops = dead_claims(&ws, tx.graph, None)?;
            let ids = released_ids(&ops);
            for op in ops {
                tx.push(op)?;
            }
            Ok(ids)
        })
    }

    /// Releases (back to Pending, unassigned) every active task assigned to `agent`,
    /// recording `reason`: what unregistering an agent does. Returns the released ids.
    pub fn release_agent_blocking(
        &self,
        agent: &AgentId,
        reason: &str,
    ) -> Result<Vec<TaskId>, Error> {
        self.write(None, false, |tx| {
            let mut ops = Vec::new();
            for ord in tx.graph.active()? {
                let (_, assignee) = tx.graph.status_of(ord)?;
                if assignee.as_ref() == Some(agent) {
                    ops.push(Op::Release {
                        task: tx.graph.task(ord)?.id,
                        reason: reason.to_owned(),
                    });
                }
            }
            let ids = released_ids(&ops);
            for op in ops {
                tx.push(op)?;
            }
            Ok(ids)
        })
    }
}

fn released_ids(ops: &[Op]) -> Vec<TaskId> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Release { task, .. } => Some(task.clone()),
            _ => None,
        })
        .collect()
}

/// How often, at most, the claims of all processes together look for dead agents' claims
/// (each look reads every agent's record and its processes in /proc).
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The file whose modification time is when a claim last looked for dead agents.
const SWEEP_FILE: &str = "sweep";

/// Whether no claim looked for dead agents within [`SWEEP_INTERVAL`] (also when the file is
/// missing or unreadable, or its time is ahead of the clock).
fn sweep_due(dir: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(dir.join(SWEEP_FILE)) else {
        return true;
    };
    match meta
        .modified()
        .map(|m| std::time::SystemTime::now().duration_since(m))
    {
        Ok(Ok(age)) => age >= SWEEP_INTERVAL,
        _ => true,
    }
}

/// Records that a claim looked for dead agents now (a hint, never synced: losing it costs
/// one more look).
fn mark_swept(dir: &Path) {
    let path = dir.join(SWEEP_FILE);
    let r = fsx::DataFile::open_rw(&path).and_then(|f| {
        f.file()
            .set_modified(std::time::SystemTime::now())
            .map_err(|e| maos_core::Error::io("set the modification time of", &path, e))
    });
    if let Err(e) = r {
        tracing::debug!(
            error = &e as &dyn std::error::Error,
            "cannot record the sweep for dead agents"
        );
    }
}

/// The agents the registry reports dead now (none when it cannot be read: their claims stay
/// until a later check can read it).
fn dead_agents(ws: &Workspace) -> HashSet<AgentId> {
    match AgentRegistry::new(ws).list() {
        Ok(list) => list
            .agents
            .into_iter()
            .filter(|rec| rec.liveness() == Liveness::Dead)
            .map(|rec| rec.id)
            .collect(),
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot list the agents to release dead agents' claims"
            );
            HashSet::new()
        }
    }
}

/// `release` records for the active tasks of agents the registry reports dead (only among
/// `suspects`, when given). Costs O(active tasks) plus one registry read per distinct agent
/// checked.
fn dead_claims(
    ws: &Workspace,
    g: &mut Graph,
    suspects: Option<&HashSet<AgentId>>,
) -> Result<Vec<Op>, Error> {
    let registry = AgentRegistry::new(ws);
    let mut verdicts: HashMap<AgentId, bool> = HashMap::new();
    let mut ops = Vec::new();
    for ord in g.active()? {
        let (_, assignee) = g.status_of(ord)?;
        let Some(agent) = assignee else {
            continue;
        };
        if suspects.is_some_and(|s| !s.contains(&agent)) {
            continue;
        }
        let dead = *verdicts.entry(agent.clone()).or_insert_with(|| {
            matches!(
                registry.get(&agent),
                Ok(Some(rec)) if rec.liveness() == Liveness::Dead
            )
        });
        if dead {
            let id = g.task(ord)?.id;
            tracing::info!(task = %id, agent = %agent, "releasing the claim of a dead agent");
            ops.push(Op::Release {
                task: id,
                reason: format!("released: agent {agent} died"),
            });
        }
    }
    Ok(ops)
}
