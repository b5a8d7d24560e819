//! Deadlock detection across every process of the workspace.
//!
//! The wait-for graph is built from the lock table on disk, so it sees every process and
//! agent, not one process's memory. Its nodes are the actual holders and waiters:
//! - a **process** (its liveness file): what a process holds, and what it waits for;
//! - an agent's **leases** (locks the agent holds without a process, `maos lock acquire`):
//!   only the agent can release them, so they wait for whatever the agent's processes wait
//!   for (an edge from the agent's lease node to each of its waiting processes).
//!
//! A waiting process has an edge to each holder of a conflicting lock and to each earlier
//! waiter for a conflicting lock (waiters are served in arrival order). A strongly connected
//! component of two or more nodes (Tarjan, via petgraph) is a deadlock. Two processes of one
//! agent are two nodes: an agent whose one process holds X while another waits for Y is not
//! in a cycle unless X's waiters are themselves waited for by that second process.
//!
//! **Victim rule:** among the waits inside the cycle, the youngest (the highest ticket, i.e.
//! the one that started waiting last) is the suggested victim: it has waited least, so
//! aborting it wastes the least, and the choice is the same from every process. With
//! resolution on, the detector checks under the table's guard that the wait is still the
//! victim of a cycle, marks it aborted (with what the victim holds that the others wait
//! for), and tells the victim's agent in its inbox (`direct/<agent>`); the victim's
//! `acquire` ends with [`Error::Deadlock`](crate::Error::Deadlock) and the others proceed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use maos_core::{AgentId, Message, Recipients, ResourceName, Workspace, now_ms};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use serde::{Deserialize, Serialize};

use crate::store::ops::{self, Snapshot, conflicts};
use crate::store::records::Abort;
use crate::store::{LockInfo, Shared, WaiterInfo};
use crate::watch::Signal;
use crate::{Error, Result};

/// The topic deadlocks are broadcast on (`broadcast/deadlock`).
pub const DEADLOCK_TOPIC: &str = "deadlock";

/// The rule that picks the victim, as written in notifications.
pub const VICTIM_RULE: &str = "youngest wait in the cycle (highest ticket) is aborted";

/// A node of the wait-for graph: who holds and who waits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Node {
    /// A process of `agent`.
    Process {
        /// Its agent.
        agent: AgentId,
        /// What identifies it: `host:pid:start_time`, or its liveness file name.
        live: String,
        /// Its pid, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    /// The locks `agent` holds as leases, without a process.
    Lease {
        /// The agent.
        agent: AgentId,
    },
}

impl Node {
    /// A hash of what identifies the node (its kind and its process key, or its agent),
    /// eight bytes at a time (FxHash's mixing): interning 10,000 nodes stays cheap.
    fn key_hash(&self) -> u64 {
        let (tag, bytes) = match self {
            Node::Process { live, .. } => (1u64, live.as_bytes()),
            Node::Lease { agent } => (2u64, agent.as_str().as_bytes()),
        };
        let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
        let mut h = mix(0, tag);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = mix(h, u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        mix(mix(h, u64::from_le_bytes(w)), bytes.len() as u64)
    }

    /// The agent of the node.
    pub fn agent(&self) -> &AgentId {
        match self {
            Node::Process { agent, .. } | Node::Lease { agent } => agent,
        }
    }

    fn of_holder(h: &LockInfo) -> Node {
        match &h.live {
            // The process that took it (for a `lock run` lock, `maos` itself, whose command
            // inherited the lock's own liveness file).
            Some(live) => Node::Process {
                agent: h.owner.clone(),
                live: process_key(h.process.as_ref(), live),
                pid: h.process.as_ref().map(|p| p.pid),
            },
            None => Node::Lease {
                agent: h.owner.clone(),
            },
        }
    }

    fn of_waiter(w: &WaiterInfo) -> Node {
        match &w.live {
            Some(live) => Node::Process {
                agent: w.agent.clone(),
                live: process_key(w.process.as_ref(), live),
                pid: w.process.as_ref().map(|p| p.pid),
            },
            None => Node::Lease {
                agent: w.agent.clone(),
            },
        }
    }
}

/// What identifies a process node: the process (host, pid, start time) when known, so that a
/// process's holdings and its waits meet in one node; else its liveness file.
fn process_key(p: Option<&maos_core::ProcessIdentity>, live: &str) -> String {
    match p {
        Some(p) => format!("{}:{}:{}", p.host, p.pid, p.start_time),
        None => live.to_owned(),
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Process {
                agent,
                pid: Some(pid),
                ..
            } => write!(f, "{agent} (pid {pid})"),
            Node::Process { agent, live, .. } => write!(f, "{agent} (process {live})"),
            Node::Lease { agent } => write!(f, "{agent}'s leases"),
        }
    }
}

/// Why an edge exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The waiter waits for a lock the holder holds.
    Lock,
    /// The waiter is queued behind an earlier waiter (first come, first served).
    Queue,
    /// An agent's leases wait for the agent's waiting process (only the agent can release
    /// them).
    Agent,
}

/// One edge of the wait-for graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitEdge {
    /// The waiting agent.
    pub waiter: AgentId,
    /// The agent it waits for.
    pub holder: AgentId,
    /// The waiting node.
    pub waiter_node: Node,
    /// The node it waits for.
    pub holder_node: Node,
    /// The resource the wait is for.
    pub resource: ResourceName,
    /// What the holder holds that blocks the wait (for [`Via::Lock`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<ResourceName>,
    /// Why the edge exists.
    pub via: Via,
    /// The wait's ticket.
    pub ticket: u64,
    /// When it started waiting (ms since the Unix epoch).
    pub since: u64,
}

/// FNV-1a: node keys are short strings from cooperating processes, so a fast non-keyed hash
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

/// For keys that already are hashes (node keys): passes the `u64` through.
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type PassBuild = std::hash::BuildHasherDefault<PassThrough>;

/// A node's handle in a [`WaitForGraph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(NodeIndex);

/// One wait (a queued waiter) in a [`WaitForGraph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WaitId(u32);

#[derive(Debug, Clone)]
struct WaitInfo {
    node: NodeIndex,
    resource: ResourceName,
    ticket: u64,
    since: u64,
}

/// An edge's weight, one `u32` (graphs of 100,000 edges stay compact for Tarjan): the index
/// of the wait it comes from (30 bits) and why it exists (2 bits).
#[derive(Debug, Clone, Copy)]
struct EdgeInfo(u32);

impl EdgeInfo {
    fn new(wait: u32, via: Via) -> Self {
        let v = match via {
            Via::Lock => 0,
            Via::Queue => 1,
            Via::Agent => 2,
        };
        EdgeInfo((wait & 0x3fff_ffff) | (v << 30))
    }

    fn wait(self) -> u32 {
        self.0 & 0x3fff_ffff
    }

    fn via(self) -> Via {
        match self.0 >> 30 {
            0 => Via::Lock,
            1 => Via::Queue,
            _ => Via::Agent,
        }
    }
}

/// The wait-for graph: holders and waiters (processes and agents' leases) and who waits for
/// whom. Nodes are interned once ([`WaitForGraph::node`]); edges point at the wait they come
/// from, so building a graph of 100,000 edges hashes each node once, not once per edge.
#[derive(Debug, Default, Clone)]
pub struct WaitForGraph {
    /// The edges; a node's weight is nothing (its `Node` is `nodes[index]`): small nodes keep
    /// the graph's memory compact for large graphs.
    graph: DiGraph<(), EdgeInfo>,
    nodes: Vec<Node>,
    /// Nodes by the FNV hash of their identity (another node with the same hash goes to
    /// `collisions`): interning clones no node.
    index: HashMap<u64, NodeIndex, PassBuild>,
    collisions: HashMap<Node, NodeIndex>,
    waits: Vec<WaitInfo>,
    /// What the holder holds, for the edges that name it: edge index -> resource.
    held: HashMap<u32, ResourceName, FnvBuild>,
}

impl WaitForGraph {
    /// An empty graph with room for `nodes` nodes and `edges` edges.
    pub fn with_capacity(nodes: usize, edges: usize) -> Self {
        Self {
            graph: DiGraph::with_capacity(nodes, edges),
            nodes: Vec::with_capacity(nodes),
            index: HashMap::with_capacity_and_hasher(nodes, PassBuild::default()),
            collisions: HashMap::new(),
            waits: Vec::new(),
            held: HashMap::default(),
        }
    }

    /// The handle of `n`, added on first use.
    pub fn node(&mut self, n: &Node) -> NodeId {
        let key = n.key_hash();
        match self.index.get(&key) {
            Some(&i) if &self.nodes[i.index()] == n => return NodeId(i),
            Some(_) => {
                if let Some(&i) = self.collisions.get(n) {
                    return NodeId(i);
                }
                let i = self.add(n);
                self.collisions.insert(n.clone(), i);
                return NodeId(i);
            }
            None => {}
        }
        let i = self.add(n);
        self.index.insert(key, i);
        NodeId(i)
    }

    fn add(&mut self, n: &Node) -> NodeIndex {
        let i = self.graph.add_node(());
        self.nodes.push(n.clone());
        i
    }

    /// Records that `node` waits (ticket `ticket`, since `since`) for `resource`.
    pub fn wait(
        &mut self,
        node: NodeId,
        resource: ResourceName,
        ticket: u64,
        since: u64,
    ) -> WaitId {
        self.waits.push(WaitInfo {
            node: node.0,
            resource,
            ticket,
            since,
        });
        WaitId((self.waits.len() - 1) as u32)
    }

    /// Records that `wait` is blocked by a lock `holder` holds (ignored when a node would
    /// wait for itself: the threads of one process are one node).
    pub fn blocked_by(&mut self, wait: WaitId, holder: NodeId) {
        self.edge(wait, holder, Via::Lock);
    }

    /// [`WaitForGraph::blocked_by`], naming the resource `holder` holds (what to release).
    pub fn blocked_by_holding(&mut self, wait: WaitId, holder: NodeId, held: ResourceName) {
        if let Some(e) = self.edge(wait, holder, Via::Lock) {
            self.held.insert(e, held);
        }
    }

    /// Records that `wait` is queued behind the earlier wait of `earlier` (first come, first
    /// served).
    pub fn queued_behind(&mut self, wait: WaitId, earlier: NodeId) {
        self.edge(wait, earlier, Via::Queue);
    }

    fn edge(&mut self, wait: WaitId, to: NodeId, via: Via) -> Option<u32> {
        let from = self.waits[wait.0 as usize].node;
        (from != to.0).then(|| {
            self.graph
                .add_edge(from, to.0, EdgeInfo::new(wait.0, via))
                .index() as u32
        })
    }

    fn agent_edge(&mut self, lease: NodeId, wait: WaitId) {
        let to = self.waits[wait.0 as usize].node;
        if lease.0 != to {
            self.graph
                .add_edge(lease.0, to, EdgeInfo::new(wait.0, Via::Agent));
        }
    }

    /// The graph of a snapshot of the lock table.
    pub fn from_snapshot(t: &Snapshot) -> Self {
        let mut g = Self::default();
        let holders: Vec<(NodeId, &LockInfo)> = t
            .holders
            .iter()
            .map(|h| (g.node(&Node::of_holder(h)), h))
            .collect();
        let mut waiters: Vec<&WaiterInfo> = t.waiters.iter().collect();
        waiters.sort_by_key(|w| w.ticket);
        let nodes: Vec<NodeId> = waiters
            .iter()
            .map(|w| g.node(&Node::of_waiter(w)))
            .collect();
        let mut waits_of_agent: HashMap<&AgentId, Vec<WaitId>> = HashMap::new();
        for (k, w) in waiters.iter().enumerate() {
            let id = g.wait(nodes[k], w.resource.clone(), w.ticket, w.since);
            if w.live.is_some() {
                waits_of_agent.entry(&w.agent).or_default().push(id);
            }
            for (hn, h) in &holders {
                if conflicts(&h.resource, h.mode, &w.resource, w.mode) {
                    g.blocked_by_holding(id, *hn, h.resource.clone());
                }
            }
            for (e, &en) in waiters[..k].iter().zip(&nodes) {
                if conflicts(&e.resource, e.mode, &w.resource, w.mode) {
                    g.queued_behind(id, en);
                }
            }
        }
        // An agent's leases wait for whatever its processes wait for.
        let leases: Vec<(NodeId, AgentId)> = holders
            .iter()
            .filter(|(_, h)| h.is_lease())
            .map(|(n, h)| (*n, h.owner.clone()))
            .collect();
        let mut seen = HashSet::new();
        for (ln, agent) in leases {
            if !seen.insert(ln) {
                continue;
            }
            for &wid in waits_of_agent.get(&agent).map(Vec::as_slice).unwrap_or(&[]) {
                g.agent_edge(ln, wid);
            }
        }
        g
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// Number of edges.
    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Every deadlock: each strongly connected component of two or more nodes.
    pub fn deadlocks(&self) -> Vec<Deadlock> {
        let mut out = Vec::new();
        // petgraph's Tarjan (what `tarjan_scc` runs), keeping only components of two or
        // more nodes instead of allocating one vector per node.
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
                    if !members.contains(&e.target()) {
                        continue;
                    }
                    let info = *e.weight();
                    let w = &self.waits[info.wait() as usize];
                    let (waiter_node, holder_node) =
                        (&self.nodes[n.index()], &self.nodes[e.target().index()]);
                    waits.push(WaitEdge {
                        waiter: waiter_node.agent().clone(),
                        holder: holder_node.agent().clone(),
                        waiter_node: waiter_node.clone(),
                        holder_node: holder_node.clone(),
                        resource: w.resource.clone(),
                        held: self.held.get(&(e.id().index() as u32)).cloned(),
                        via: info.via(),
                        ticket: w.ticket,
                        since: w.since,
                    });
                }
            }
            waits.sort_by_key(|e| (e.ticket, e.via != Via::Lock));
            // The victim: the youngest real wait (a process's own wait) in the cycle.
            let Some(victim) = waits
                .iter()
                .filter(|e| e.via != Via::Agent)
                .max_by_key(|e| e.ticket)
                .cloned()
            else {
                continue;
            };
            let victim_agent = victim.waiter.clone();
            let release: Vec<ResourceName> = {
                let mut r: Vec<ResourceName> = waits
                    .iter()
                    .filter(|e| {
                        e.via == Via::Lock
                            && (e.holder_node == victim.waiter_node
                                || e.holder_node
                                    == (Node::Lease {
                                        agent: victim_agent.clone(),
                                    }))
                    })
                    .filter_map(|e| e.held.clone())
                    .collect();
                r.sort();
                r.dedup();
                r
            };
            let mut agents: Vec<AgentId> = scc
                .iter()
                .map(|&n| self.nodes[n.index()].agent().clone())
                .collect();
            agents.sort();
            agents.dedup();
            let mut nodes: Vec<Node> = scc.iter().map(|&n| self.nodes[n.index()].clone()).collect();
            nodes.sort_by_key(|n| n.to_string());
            out.push(Deadlock {
                victim: victim.waiter,
                victim_node: victim.waiter_node,
                victim_ticket: victim.ticket,
                victim_resource: victim.resource,
                release,
                agents,
                nodes,
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
    /// The holders and waiters in the cycle.
    pub nodes: Vec<Node>,
    /// The waits between them.
    pub waits: Vec<WaitEdge>,
    /// The suggested victim (see [`VICTIM_RULE`]).
    pub victim: AgentId,
    /// The victim's waiting node.
    pub victim_node: Node,
    /// The ticket of the victim's wait.
    pub victim_ticket: u64,
    /// The resource the victim waits for.
    pub victim_resource: ResourceName,
    /// What the victim holds that the others in the cycle wait for: releasing it breaks the
    /// cycle.
    pub release: Vec<ResourceName>,
}

impl Deadlock {
    fn key(&self) -> Vec<u64> {
        let mut k: Vec<u64> = self.waits.iter().map(|w| w.ticket).collect();
        k.sort_unstable();
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
    /// What the victim should release so the others can go on.
    #[serde(default)]
    pub release: Vec<ResourceName>,
    /// How the victim was chosen.
    pub rule: String,
    /// Whether the detector aborted the wait itself.
    pub applied: bool,
}

/// What the victim's agent finds in its inbox (`direct/<agent>`) when its wait was aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VictimNotice {
    /// Always `"deadlock_victim"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The resource whose wait was aborted.
    pub waited_for: ResourceName,
    /// The aborted wait's ticket.
    pub ticket: u64,
    /// The agents in the cycle.
    pub cycle: Vec<AgentId>,
    /// What to release so the others can go on.
    pub release: Vec<ResourceName>,
    /// What to do, in words.
    pub advice: String,
}

impl VictimNotice {
    fn new(d: &Deadlock) -> Self {
        let release = if d.release.is_empty() {
            "the locks you hold".to_owned()
        } else {
            d.release
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Self {
            kind: "deadlock_victim".into(),
            waited_for: d.victim_resource.clone(),
            ticket: d.victim_ticket,
            cycle: d.agents.clone(),
            release: d.release.clone(),
            advice: format!(
                "your wait for {} was aborted to break a deadlock: release {release} (`maos lock release RESOURCE`, or let your `maos lock run` command end), then take the locks again, preferably in the same order as the other agents",
                d.victim_resource
            ),
        }
    }
}

/// Finds cycles in the wait-for graph of every process, reports them on the `deadlock`
/// topic, and (opt-in) aborts the victim's wait and tells the victim what to release.
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
    notify_victim: bool,
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
            notify_victim: true,
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

    /// Sends the victim of a resolved cycle a [`VictimNotice`] in its inbox (on by default).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn notify_victim(mut self, on: bool) -> Self {
        self.notify_victim = on;
        self
    }

    /// The sender of the broadcasts and notices (default: the current agent).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn sender(mut self, agent: AgentId) -> Self {
        self.sender = Some(agent);
        self
    }

    /// The wait-for graph of the table as it is now (dead holders and waiters left out).
    pub fn graph(&self) -> Result<WaitForGraph> {
        let shared = Shared::of(&self.ws)?;
        Ok(WaitForGraph::from_snapshot(&ops::read_all(&shared)?))
    }

    /// The deadlocks now, without reporting or resolving them.
    pub fn detect(&self) -> Result<Vec<Deadlock>> {
        let _span = tracing::debug_span!("detect_deadlocks").entered();
        Ok(self.graph()?.deadlocks())
    }

    /// Detects, broadcasts the cycles not reported by this detector before, and resolves
    /// them if enabled. Returns every current cycle (each `applied` resolution is also in
    /// its notification).
    pub fn check(&mut self) -> Result<Vec<Deadlock>> {
        Ok(self
            .check_with_outcome()?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    /// [`DeadlockDetector::check`], with whether each cycle's victim was aborted now.
    pub fn check_with_outcome(&mut self) -> Result<Vec<(Deadlock, bool)>> {
        let found = self.detect()?;
        let keys: HashSet<Vec<u64>> = found.iter().map(Deadlock::key).collect();
        self.reported.retain(|k| keys.contains(k));
        let mut out = Vec::with_capacity(found.len());
        for d in found {
            let key = d.key();
            if self.reported.contains(&key) {
                out.push((d, false));
                continue;
            }
            tracing::info!(agents = ?d.agents, victim = %d.victim, "deadlock detected");
            let applied = self.resolve && self.abort(&d)?;
            if applied && self.notify_victim {
                self.tell_victim(&d);
            }
            if self.broadcast {
                self.report(&d, applied)?;
            }
            self.reported.insert(key);
            out.push((d, applied));
        }
        Ok(out)
    }

    /// Aborts `d`'s victim wait if, under the guard and on the table as it is now, it is
    /// still the victim of a cycle (the table may have changed since detection).
    fn abort(&self, d: &Deadlock) -> Result<bool> {
        let shared = Shared::of(&self.ws)?;
        let ticket = d.victim_ticket;
        let applied = ops::abort_wait(&shared, |snap| {
            let now = WaitForGraph::from_snapshot(snap).deadlocks();
            let Some(c) = now.into_iter().find(|c| c.victim_ticket == ticket) else {
                tracing::debug!(ticket, "the cycle resolved itself before its resolution");
                return None;
            };
            Some((
                c.victim_resource.clone(),
                ticket,
                Abort {
                    cycle: c.agents.clone(),
                    release: c.release.clone(),
                },
            ))
        })?;
        if applied.is_some() {
            tracing::info!(victim = %d.victim, ticket, "deadlock victim's wait aborted");
        }
        Ok(applied.is_some())
    }

    fn sender_id(&self) -> Result<AgentId> {
        match &self.sender {
            Some(a) => Ok(a.clone()),
            None => Ok(AgentId::current()?),
        }
    }

    /// Best effort: the abort itself already ended the wait.
    fn tell_victim(&self, d: &Deadlock) {
        let r = (|| -> Result<()> {
            let msg = Message::new(
                self.sender_id()?,
                Recipients::Agent(d.victim.clone()),
                VictimNotice::new(d),
            );
            maos_comm::FileChannel::inbox(&self.ws, &d.victim)
                .and_then(|ch| ch.send_blocking(&msg))
                .map_err(Error::Broadcast)?;
            Ok(())
        })();
        if let Err(e) = r {
            tracing::warn!(victim = %d.victim, error = &e as &dyn std::error::Error, "cannot tell the deadlock victim");
        }
    }

    fn report(&self, d: &Deadlock, applied: bool) -> Result<()> {
        let note = DeadlockNotification {
            detected_at: now_ms(),
            involved_agents: d.agents.clone(),
            waits: d.waits.clone(),
            suggested_resolution: Resolution {
                victim: d.victim.clone(),
                ticket: d.victim_ticket,
                resource: d.victim_resource.clone(),
                release: d.release.clone(),
                rule: VICTIM_RULE.to_owned(),
                applied,
            },
        };
        maos_comm::BroadcastChannel::new(&self.ws, self.sender_id()?)
            .system()
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
        let dir = shared.dir.clone();
        let thread = std::thread::Builder::new()
            .name("maos-deadlock-monitor".into())
            // Tarjan recurses once per node on a wait chain: room for very long chains.
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
                        maos_core::deadline_after(Instant::now(), interval),
                    );
                }
            })
            .map_err(|e| Error::io("spawn thread", dir, e))?;
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
            let (back, r) = crate::asyncify("deadlock check", &shared.dir, move || {
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
                    maos_core::deadline_after(Instant::now(), interval),
                )
                .await;
        }
    }
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
mod tests;
