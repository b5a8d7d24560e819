//! Deadlock detection across every process of the workspace.
//!
//! The wait-for graph is built from the lock table on disk (`table.0`/`table.1`), so it sees every
//! process and agent, not one process's memory: a node per agent, an edge `A -> B` when a
//! waiter of agent A is blocked by a lock of agent B (a conflicting holder, or a conflicting
//! waiter queued earlier: waiters are served in arrival order). A strongly connected
//! component of more than one agent (Tarjan, via petgraph) is a deadlock.
//!
//! **Victim rule:** among the waits inside the cycle, the youngest (the highest ticket, i.e.
//! the one that started waiting last) is the suggested victim: it has waited least, so
//! aborting it wastes the least, and the choice is the same from every process. With
//! resolution on, the detector marks that wait aborted; the victim's `acquire` ends with
//! [`Error::Deadlock`](crate::Error::Deadlock) and the others proceed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use maos_core::{AgentId, ResourceName, Workspace, now_ms};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

use crate::lock::conflicts;
use crate::store::{Shared, TableState};
use crate::watch::Signal;
use crate::{Error, Result};

/// The topic deadlocks are broadcast on (`broadcast/deadlock`).
pub const DEADLOCK_TOPIC: &str = "deadlock";

/// The rule that picks the victim, as written in notifications.
pub const VICTIM_RULE: &str = "youngest wait in the cycle (highest ticket) is aborted";

/// One edge of the wait-for graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitEdge {
    /// The waiting agent.
    pub waiter: AgentId,
    /// The agent it waits for.
    pub holder: AgentId,
    /// The resource the waiter asked for.
    pub resource: ResourceName,
    /// The waiter's ticket.
    pub ticket: u64,
    /// When it started waiting (ms since the Unix epoch).
    pub since: u64,
}

/// FNV-1a: agent ids are short strings from cooperating processes, so a fast non-keyed hash
/// is fine here (and twice as fast as SipHash when building large graphs).
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type FnvBuild = std::hash::BuildHasherDefault<Fnv>;

/// An agent's node in a [`WaitForGraph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentNode(NodeIndex);

/// One wait (a queued waiter) in a [`WaitForGraph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WaitId(u32);

#[derive(Debug, Clone)]
struct WaitInfo {
    agent: NodeIndex,
    resource: ResourceName,
    ticket: u64,
    since: u64,
}

/// The wait-for graph: agents and who waits for whom. Agents are interned once
/// ([`WaitForGraph::agent`]); edges are integers pointing at the wait they come from, so
/// building a graph of 100,000 edges hashes each agent name once, not once per edge.
#[derive(Debug, Default, Clone)]
pub struct WaitForGraph {
    graph: DiGraph<AgentId, u32>,
    index: HashMap<AgentId, NodeIndex, FnvBuild>,
    waits: Vec<WaitInfo>,
}

impl WaitForGraph {
    /// An empty graph with room for `agents` nodes and `edges` edges.
    pub fn with_capacity(agents: usize, edges: usize) -> Self {
        Self {
            graph: DiGraph::with_capacity(agents, edges),
            index: HashMap::with_capacity_and_hasher(agents, FnvBuild::default()),
            waits: Vec::new(),
        }
    }

    /// The node of `a`, added on first use.
    pub fn agent(&mut self, a: &AgentId) -> AgentNode {
        if let Some(&n) = self.index.get(a) {
            return AgentNode(n);
        }
        let n = self.graph.add_node(a.clone());
        self.index.insert(a.clone(), n);
        AgentNode(n)
    }

    /// Records that `agent` waits (ticket `ticket`, since `since`) for `resource`.
    pub fn wait(
        &mut self,
        agent: AgentNode,
        resource: ResourceName,
        ticket: u64,
        since: u64,
    ) -> WaitId {
        self.waits.push(WaitInfo {
            agent: agent.0,
            resource,
            ticket,
            since,
        });
        WaitId((self.waits.len() - 1) as u32)
    }

    /// Records that `wait` is blocked by `holder` (ignored when an agent would wait for
    /// itself).
    pub fn blocked_by(&mut self, wait: WaitId, holder: AgentNode) {
        let from = self.waits[wait.0 as usize].agent;
        if from != holder.0 {
            self.graph.add_edge(from, holder.0, wait.0);
        }
    }

    /// Adds one edge given by names (convenience for small graphs).
    pub fn add(&mut self, edge: WaitEdge) {
        let w = self.agent(&edge.waiter);
        let h = self.agent(&edge.holder);
        let id = self.wait(w, edge.resource, edge.ticket, edge.since);
        self.blocked_by(id, h);
    }

    /// The graph of the current lock table.
    pub(crate) fn from_table(t: &TableState) -> Self {
        let mut g = Self::default();
        let holders: Vec<AgentNode> = t.holders.iter().map(|h| g.agent(&h.owner)).collect();
        let mut waiters: Vec<_> = t.waiters.iter().collect();
        waiters.sort_by_key(|w| w.ticket);
        let nodes: Vec<AgentNode> = waiters.iter().map(|w| g.agent(&w.agent)).collect();
        for (k, w) in waiters.iter().enumerate() {
            let id = g.wait(nodes[k], w.resource.clone(), w.ticket, w.since);
            for (h, &hn) in t.holders.iter().zip(&holders) {
                if conflicts(&h.resource, h.mode, &w.resource, w.mode) {
                    g.blocked_by(id, hn);
                }
            }
            for (e, &en) in waiters[..k].iter().zip(&nodes) {
                if conflicts(&e.resource, e.mode, &w.resource, w.mode) {
                    g.blocked_by(id, en);
                }
            }
        }
        g
    }

    /// Number of agents.
    pub fn agent_count(&self) -> usize {
        self.graph.node_count()
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Every deadlock: each strongly connected component of two or more agents.
    pub fn deadlocks(&self) -> Vec<Deadlock> {
        let mut out = Vec::new();
        // petgraph's Tarjan (what `tarjan_scc` runs), keeping only components of two or
        // more agents instead of allocating one vector per agent.
        let mut sccs: Vec<Vec<NodeIndex>> = Vec::new();
        petgraph::algo::TarjanScc::new().run(&self.graph, |scc| {
            if scc.len() > 1 {
                sccs.push(scc.to_vec());
            }
        });
        for scc in sccs {
            let members: HashSet<NodeIndex> = scc.iter().copied().collect();
            let mut waits: Vec<WaitEdge> = Vec::new();
            for &n in &scc {
                for e in self.graph.edges(n) {
                    use petgraph::visit::EdgeRef;
                    if members.contains(&e.target()) {
                        let w = &self.waits[*e.weight() as usize];
                        waits.push(WaitEdge {
                            waiter: self.graph[w.agent].clone(),
                            holder: self.graph[e.target()].clone(),
                            resource: w.resource.clone(),
                            ticket: w.ticket,
                            since: w.since,
                        });
                    }
                }
            }
            waits.sort_by_key(|e| e.ticket);
            let Some(victim) = waits.iter().max_by_key(|e| e.ticket) else {
                continue;
            };
            let mut agents: Vec<AgentId> = scc.iter().map(|&n| self.graph[n].clone()).collect();
            agents.sort();
            out.push(Deadlock {
                victim: victim.waiter.clone(),
                victim_ticket: victim.ticket,
                victim_resource: victim.resource.clone(),
                agents,
                waits,
            });
        }
        out
    }
}

/// One cycle of waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlock {
    /// The agents in the cycle, sorted.
    pub agents: Vec<AgentId>,
    /// The waits between them.
    pub waits: Vec<WaitEdge>,
    /// The suggested victim (see [`VICTIM_RULE`]).
    pub victim: AgentId,
    /// The ticket of the victim's wait.
    pub victim_ticket: u64,
    /// The resource the victim waits for.
    pub victim_resource: ResourceName,
}

impl Deadlock {
    fn key(&self) -> Vec<u64> {
        let mut k: Vec<u64> = self.waits.iter().map(|w| w.ticket).collect();
        k.dedup();
        k
    }
}

/// What is broadcast on the `deadlock` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlockNotification {
    /// When the cycle was found (ms since the Unix epoch).
    pub detected_at: u64,
    /// The agents in the cycle.
    pub involved_agents: Vec<AgentId>,
    /// The waits that form it.
    pub waits: Vec<WaitEdge>,
    /// What to do about it.
    pub suggested_resolution: Resolution,
}

/// The suggested (or, with resolution on, applied) way out of a deadlock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The agent whose wait should end.
    pub victim: AgentId,
    /// That wait's ticket.
    pub ticket: u64,
    /// The resource it waits for.
    pub resource: ResourceName,
    /// How the victim was chosen.
    pub rule: String,
    /// Whether the detector aborted the wait itself.
    pub applied: bool,
}

/// Finds cycles in the wait-for graph of every process, reports them on the `deadlock`
/// topic, and (opt-in) aborts the victim's wait.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let ws = maos_core::Workspace::init(dir.path())?;
/// let found = maos_lock::DeadlockDetector::new(&ws).detect()?;
/// assert!(found.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DeadlockDetector {
    ws: Workspace,
    sender: Option<AgentId>,
    resolve: bool,
    broadcast: bool,
    reported: HashSet<Vec<u64>>,
}

impl DeadlockDetector {
    /// A detector for `ws` that broadcasts and does not resolve.
    pub fn new(ws: &Workspace) -> Self {
        Self {
            ws: ws.clone(),
            sender: None,
            resolve: false,
            broadcast: true,
            reported: HashSet::new(),
        }
    }

    /// Aborts the victim's wait of every cycle found (off by default).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn resolve(mut self, on: bool) -> Self {
        self.resolve = on;
        self
    }

    /// Broadcasts every new cycle on the `deadlock` topic (on by default).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn broadcast(mut self, on: bool) -> Self {
        self.broadcast = on;
        self
    }

    /// The sender of the broadcasts (default: the current agent).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn sender(mut self, agent: AgentId) -> Self {
        self.sender = Some(agent);
        self
    }

    /// The wait-for graph of the table as it is now (dead holders and waiters removed first).
    pub fn graph(&self) -> Result<WaitForGraph> {
        let shared = Shared::of(&self.ws)?;
        shared.locked(|l| {
            let (mut t, dirty) = l.load_table()?;
            if l.reap_all(&mut t) || dirty {
                l.save_table(&t)?;
            }
            Ok(WaitForGraph::from_table(&t))
        })
    }

    /// The deadlocks now, without reporting or resolving them.
    pub fn detect(&self) -> Result<Vec<Deadlock>> {
        let _span = tracing::debug_span!("detect_deadlocks").entered();
        Ok(self.graph()?.deadlocks())
    }

    /// Detects, broadcasts the cycles not reported by this detector before, and resolves
    /// them if enabled. Returns every current cycle.
    pub fn check(&mut self) -> Result<Vec<Deadlock>> {
        let found = self.detect()?;
        let keys: HashSet<Vec<u64>> = found.iter().map(Deadlock::key).collect();
        self.reported.retain(|k| keys.contains(k));
        for d in &found {
            let key = d.key();
            if self.reported.contains(&key) {
                continue;
            }
            tracing::warn!(agents = ?d.agents, victim = %d.victim, "deadlock detected");
            let applied = self.resolve && self.abort(d)?;
            if self.broadcast {
                self.report(d, applied)?;
            }
            self.reported.insert(key);
        }
        Ok(found)
    }

    fn abort(&self, d: &Deadlock) -> Result<bool> {
        let shared = Shared::of(&self.ws)?;
        shared.locked(|l| {
            let (mut t, _) = l.load_table()?;
            // The table may have changed since detection (a holder released, a waiter gave
            // up): abort only a wait that is still the victim of a cycle now.
            l.reap_all(&mut t);
            let still = WaitForGraph::from_table(&t)
                .deadlocks()
                .iter()
                .any(|c| c.victim_ticket == d.victim_ticket);
            if !still {
                tracing::debug!(ticket = d.victim_ticket, "the cycle resolved itself before its resolution");
                return Ok(false);
            }
            let Some(w) = t.waiters.iter_mut().find(|w| w.ticket == d.victim_ticket) else {
                return Ok(false);
            };
            w.aborted = Some(d.agents.clone());
            l.save_table(&t)?;
            l.signal(d.victim_ticket);
            tracing::info!(victim = %d.victim, ticket = d.victim_ticket, "deadlock victim's wait aborted");
            Ok(true)
        })
    }

    fn report(&self, d: &Deadlock, applied: bool) -> Result<()> {
        let sender = match &self.sender {
            Some(a) => a.clone(),
            None => AgentId::current()?,
        };
        let note = DeadlockNotification {
            detected_at: now_ms(),
            involved_agents: d.agents.clone(),
            waits: d.waits.clone(),
            suggested_resolution: Resolution {
                victim: d.victim.clone(),
                ticket: d.victim_ticket,
                resource: d.victim_resource.clone(),
                rule: VICTIM_RULE.to_owned(),
                applied,
            },
        };
        maos_comm::BroadcastChannel::new(&self.ws, sender)
            .broadcast_blocking(DEADLOCK_TOPIC, &note)
            .map_err(Error::Broadcast)?;
        Ok(())
    }

    /// Runs [`DeadlockDetector::check`] on a background thread whenever the lock table
    /// changes (file-system event) and at least every `interval`, until the handle is
    /// dropped. No async runtime needed.
    pub fn spawn_monitor(mut self, interval: Duration) -> Result<Monitor> {
        let shared = Shared::of(&self.ws)?;
        let watch = shared.watch();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let w = watch.clone();
        let thread = std::thread::Builder::new()
            .name("maos-deadlock-monitor".into())
            // Tarjan recurses once per agent on a wait chain: room for very long chains.
            .stack_size(64 << 20)
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let seen = w.generation(Signal::Change);
                    if let Err(e) = self.check() {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "deadlock check failed"
                        );
                    }
                    w.wait_blocking(
                        Signal::Change,
                        seen,
                        crate::watch::deadline_after(Instant::now(), interval),
                    );
                }
            })
            .map_err(|e| Error::io("spawn thread", self_dir(&shared), e))?;
        Ok(Monitor {
            stop,
            watch,
            thread: Some(thread),
        })
    }

    /// The monitor as a future: checks on every table change and at least every `interval`,
    /// forever (drop the future to stop).
    pub async fn start_monitoring(mut self, interval: Duration) -> Result<()> {
        let shared = Shared::of(&self.ws)?;
        let watch = shared.watch();
        loop {
            let seen = watch.generation(Signal::Change);
            let (back, r) = crate::asyncify("deadlock check", &self_dir(&shared), move || {
                let r = self.check();
                Ok((self, r))
            })
            .await?;
            self = back;
            if let Err(e) = r {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "deadlock check failed"
                );
            }
            watch
                .wait_async(
                    Signal::Change,
                    seen,
                    crate::watch::deadline_after(Instant::now(), interval),
                )
                .await;
        }
    }
}

fn self_dir(s: &Shared) -> std::path::PathBuf {
    s.dir.clone()
}

/// A running deadlock monitor; dropping it stops the thread.
#[derive(Debug)]
#[must_use = "dropping the monitor stops it"]
pub struct Monitor {
    stop: Arc<AtomicBool>,
    watch: Arc<crate::watch::DirWatch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.watch.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn edge(w: &str, h: &str, ticket: u64) -> WaitEdge {
        WaitEdge {
            waiter: a(w),
            holder: a(h),
            resource: ResourceName::new("r").unwrap(),
            ticket,
            since: ticket,
        }
    }

    #[test]
    fn cycles_are_found_and_the_youngest_wait_is_the_victim() {
        let mut g = WaitForGraph::default();
        g.add(edge("a", "b", 1));
        g.add(edge("b", "c", 5));
        g.add(edge("c", "a", 3));
        g.add(edge("d", "a", 9)); // waits on the cycle, not part of it
        g.add(edge("e", "e", 10)); // self-waits are ignored
        let d = g.deadlocks();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].agents, vec![a("a"), a("b"), a("c")]);
        assert_eq!(d[0].victim, a("b"));
        assert_eq!(d[0].victim_ticket, 5);
        assert_eq!(d[0].waits.len(), 3);
    }

    #[test]
    fn chains_are_not_deadlocks() {
        let mut g = WaitForGraph::default();
        g.add(edge("a", "b", 1));
        g.add(edge("b", "c", 2));
        assert!(g.deadlocks().is_empty());
    }

    #[test]
    fn a_cycle_that_resolved_itself_meanwhile_aborts_nobody() {
        use crate::store::{LockMode, WaiterInfo};
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let r = |s: &str| ResourceName::new(s).unwrap();
        let gx = crate::FileLock::new(&ws, r("x"))
            .agent(a("a"))
            .try_acquire("x")
            .unwrap()
            .unwrap();
        let _gy = crate::FileLock::new(&ws, r("y"))
            .agent(a("b"))
            .try_acquire("y")
            .unwrap()
            .unwrap();
        // a waits for y, b waits for x (queue entries of agent-level waits).
        Shared::of(&ws)
            .unwrap()
            .locked(|l| {
                let (mut t, _) = l.load_table()?;
                for (agent, res) in [("a", "y"), ("b", "x")] {
                    let ticket = t.take_ticket();
                    t.waiters.push(WaiterInfo {
                        ticket,
                        resource: r(res),
                        mode: LockMode::Exclusive,
                        agent: a(agent),
                        process: None,
                        live: None,
                        since: now_ms(),
                        purpose: String::new(),
                        aborted: None,
                    });
                }
                l.save_table(&t)
            })
            .unwrap();
        let det = DeadlockDetector::new(&ws).broadcast(false).resolve(true);
        let found = det.detect().unwrap();
        assert_eq!(found.len(), 1);
        // Before the resolution runs, a's lock on x is released: no cycle any more.
        gx.release().unwrap();
        assert!(!det.abort(&found[0]).unwrap());
        let snap = crate::LockTable::open(&ws).unwrap().snapshot().unwrap();
        assert!(
            snap.waiters.iter().all(|w| w.aborted.is_none()),
            "a wait was aborted although its cycle no longer exists: {:?}",
            snap.waiters
        );
    }
}
