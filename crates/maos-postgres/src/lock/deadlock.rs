//! [`PgDeadlockDetector`]: cycles in the wait-for graph of every machine's waits.

use maos_core::{AgentId, ResourceName};
use serde::Serialize;

use super::state::{State, load, read};
use super::{DEADLOCK_TOPIC, WaiterInfo, conflicts, notify_channel};
use crate::conn::Exec;
use crate::{Pg, Result};

/// A wait in a deadlock cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WaitEdge {
    /// The waiting agent.
    pub waiter: AgentId,
    /// The agent it waits for.
    pub holder: AgentId,
    /// The resource waited for.
    pub resource: ResourceName,
    /// The wait's ticket.
    pub ticket: u64,
}

/// A cycle in the wait-for graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Deadlock {
    /// The agents of the cycle, sorted.
    pub involved_agents: Vec<AgentId>,
    /// The waits between them.
    pub waits: Vec<WaitEdge>,
    /// The suggested victim: the youngest wait (highest ticket).
    pub victim: WaitEdge,
    /// Whether the victim's wait was aborted.
    pub applied: bool,
}

/// Finds cycles in the wait-for graph of every machine's waits (the waiters and holders
/// tables), optionally aborts the youngest wait of each and broadcasts each on the
/// `deadlock` topic.
#[derive(Debug, Clone)]
pub struct PgDeadlockDetector {
    pg: Pg,
    resolve: bool,
    broadcast: Option<AgentId>,
}

impl PgDeadlockDetector {
    /// A detector that only reports.
    pub fn new(pg: &Pg) -> Self {
        Self {
            pg: pg.clone(),
            resolve: false,
            broadcast: None,
        }
    }

    /// Aborts the victim's wait of each cycle found.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn resolve(mut self, on: bool) -> Self {
        self.resolve = on;
        self
    }

    /// Broadcasts each cycle on [`DEADLOCK_TOPIC`] as `sender`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn broadcast(mut self, sender: AgentId) -> Self {
        self.broadcast = Some(sender);
        self
    }

    /// Finds the cycles now (and resolves and broadcasts them, as configured).
    pub fn check(&self) -> Result<Vec<Deadlock>> {
        let ns = self.pg.inner.ns;
        let resolve = self.resolve;
        let found = self.pg.run(|c| {
            c.tx("detect deadlocks", |t| {
                // Resolving writes (under the guard); only looking does not wait for it.
                let st = if resolve { load(t, ns)? } else { read(t, ns)? };
                let mut found = cycles(&st);
                if resolve {
                    for d in &mut found {
                        let agents = serde_json::to_value(&d.involved_agents).unwrap_or_default();
                        let tk = i64::try_from(d.victim.ticket).unwrap_or(i64::MAX);
                        t.exec(
                            "abort a deadlocked wait",
                            "UPDATE maos.lock_waiters SET aborted = $3 WHERE ns = $1 AND ticket = $2",
                            &[&ns, &tk, &agents],
                        )?;
                        t.notify(&notify_channel(ns), &d.victim.ticket.to_string())?;
                        d.applied = true;
                    }
                }
                Ok(found)
            })
        })?;
        if let Some(sender) = &self.broadcast {
            let b = crate::comm::PgBroadcast::new(&self.pg, sender.clone());
            for d in &found {
                b.broadcast(DEADLOCK_TOPIC, d)?;
            }
        }
        Ok(found)
    }
}

/// The deadlocks of `st`: strongly connected components of two or more agents.
fn cycles(st: &State) -> Vec<Deadlock> {
    use petgraph::graph::DiGraph;
    let mut g: DiGraph<AgentId, WaitEdge> = DiGraph::new();
    let mut idx = std::collections::HashMap::new();
    let mut node = |g: &mut DiGraph<AgentId, WaitEdge>, a: &AgentId| {
        *idx.entry(a.clone())
            .or_insert_with(|| g.add_node(a.clone()))
    };
    let live: Vec<&WaiterInfo> = st
        .waiters
        .iter()
        .filter(|w| w.alive)
        .map(|w| &w.v)
        .collect();
    for (n, w) in live.iter().enumerate() {
        let from = node(&mut g, &w.agent);
        let mut blockers: Vec<AgentId> = st
            .holders
            .iter()
            .filter(|h| st.holds(h) && conflicts(&h.v.resource, h.v.mode, &w.resource, w.mode))
            .map(|h| h.v.owner.clone())
            .collect();
        blockers.extend(
            live[..n]
                .iter()
                .filter(|e| conflicts(&e.resource, e.mode, &w.resource, w.mode))
                .map(|e| e.agent.clone()),
        );
        for b in blockers {
            if b == w.agent {
                continue;
            }
            let to = node(&mut g, &b);
            g.add_edge(
                from,
                to,
                WaitEdge {
                    waiter: w.agent.clone(),
                    holder: b,
                    resource: w.resource.clone(),
                    ticket: w.ticket,
                },
            );
        }
    }
    let mut out = Vec::new();
    for comp in petgraph::algo::tarjan_scc(&g) {
        if comp.len() < 2 {
            continue;
        }
        let set: std::collections::HashSet<_> = comp.iter().copied().collect();
        let mut waits: Vec<WaitEdge> = g
            .edge_indices()
            .filter_map(|e| {
                let (a, b) = g.edge_endpoints(e)?;
                (set.contains(&a) && set.contains(&b)).then(|| g[e].clone())
            })
            .collect();
        waits.sort_by_key(|w| w.ticket);
        let Some(victim) = waits.last().cloned() else {
            continue;
        };
        let mut agents: Vec<AgentId> = comp.iter().map(|n| g[*n].clone()).collect();
        agents.sort();
        out.push(Deadlock {
            involved_agents: agents,
            waits,
            victim,
            applied: false,
        });
    }
    out
}
