use std::collections::BTreeMap;

use maos_core::ProcessIdentity;

use super::*;
use crate::FencingToken;
use crate::store::LockMode;

fn a(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn r(s: &str) -> ResourceName {
    ResourceName::new(s).unwrap()
}

fn proc(agent: &str, live: &str) -> Node {
    Node::Process {
        agent: a(agent),
        live: live.into(),
        pid: None,
    }
}

/// A graph from edges `waiter -> holder` between process nodes named `agent/live`.
fn graph(edges: &[(&str, &str, u64)]) -> WaitForGraph {
    let mut g = WaitForGraph::default();
    for (w, h, ticket) in edges {
        let (wa, wl) = w.split_once('/').unwrap();
        let (ha, hl) = h.split_once('/').unwrap();
        let wn = g.node(&proc(wa, wl));
        let hn = g.node(&proc(ha, hl));
        let id = g.wait(wn, r("r"), *ticket, *ticket);
        g.blocked_by_holding(id, hn, r(&format!("held-by-{ha}")));
    }
    g
}

#[test]
fn cycles_are_found_and_the_youngest_wait_is_the_victim() {
    let g = graph(&[
        ("a/1", "b/2", 1),
        ("b/2", "c/3", 5),
        ("c/3", "a/1", 3),
        ("d/4", "a/1", 9),  // waits on the cycle, not part of it
        ("e/5", "e/5", 10), // a self-wait is ignored
    ]);
    let d = g.deadlocks();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].agents, vec![a("a"), a("b"), a("c")]);
    assert_eq!(d[0].victim, a("b"));
    assert_eq!(d[0].victim_ticket, 5);
    assert_eq!(d[0].waits.len(), 3);
    // The victim (b) holds what a waits for.
    assert_eq!(d[0].release, vec![r("held-by-b")]);
}

#[test]
fn chains_are_not_deadlocks() {
    let g = graph(&[("a/1", "b/2", 1), ("b/2", "c/3", 2)]);
    assert!(g.deadlocks().is_empty());
}

/// A process identity standing for process `name` (distinct names, distinct processes).
fn pid(name: &str) -> ProcessIdentity {
    let mut p = ProcessIdentity::current();
    p.pid = 100_000 + name.bytes().map(u32::from).sum::<u32>();
    p
}

fn holder(res: &str, agent: &str, live: Option<&str>, taker: &str, token: u64) -> LockInfo {
    LockInfo {
        id: token,
        resource: r(res),
        mode: LockMode::Exclusive,
        owner: a(agent),
        process: Some(pid(taker)),
        live: live.map(str::to_owned),
        acquired_at: 0,
        expires_at: u64::MAX,
        ttl_ms: 60_000,
        purpose: String::new(),
        metadata: BTreeMap::new(),
        token: FencingToken(token),
    }
}

fn waiter(res: &str, agent: &str, live: &str, ticket: u64) -> WaiterInfo {
    WaiterInfo {
        ticket,
        resource: r(res),
        mode: LockMode::Exclusive,
        agent: a(agent),
        process: Some(pid(live)),
        live: Some(live.into()),
        since: ticket,
        purpose: String::new(),
        aborted: None,
    }
}

/// Issue 11, item 7: A runs `lock run X -- sleep 4` (process P1, the command holds X), B
/// holds Y and waits for X (its process P2), and another process of A (P3) waits for Y. With
/// one node per agent that is "A -> B -> A"; the real holders and waiters form a chain that
/// resolves when the command ends.
#[test]
fn two_processes_of_one_agent_are_two_nodes_not_a_cycle() {
    let snap = Snapshot {
        holders: vec![
            holder("x", "A", Some("run-1"), "p1", 1),
            holder("y", "B", Some("p2"), "p2", 2),
        ],
        waiters: vec![waiter("x", "B", "p2", 3), waiter("y", "A", "p3", 4)],
    };
    let g = WaitForGraph::from_snapshot(&snap);
    assert!(g.deadlocks().is_empty(), "{:?}", g.deadlocks());
    // B's lock on Y as a lease (held by the agent, not P2): B's leases wait for B's waiting
    // process, which waits for A's command: still a chain.
    let snap = Snapshot {
        holders: vec![
            holder("x", "A", Some("run-1"), "p1", 1),
            holder("y", "B", None, "p2", 2),
        ],
        waiters: vec![waiter("x", "B", "p2", 3), waiter("y", "A", "p3", 4)],
    };
    assert!(WaitForGraph::from_snapshot(&snap).deadlocks().is_empty());
}

/// Two agents holding leases (`maos lock acquire`) and waiting for each other's: a real
/// deadlock (only the agents can release their leases, and each one waits).
#[test]
fn leases_wait_for_what_their_agents_processes_wait_for() {
    let snap = Snapshot {
        holders: vec![
            holder("x", "A", None, "pa", 1),
            holder("y", "B", None, "pb", 2),
        ],
        waiters: vec![waiter("y", "A", "pa", 3), waiter("x", "B", "pb", 4)],
    };
    let d = WaitForGraph::from_snapshot(&snap).deadlocks();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].agents, vec![a("A"), a("B")]);
    // The youngest wait is B's (ticket 4): B must release what A waits for.
    assert_eq!(d[0].victim, a("B"));
    assert_eq!(d[0].victim_ticket, 4);
    assert_eq!(d[0].release, vec![r("y")]);
    assert!(d[0].waits.iter().any(|w| w.via == Via::Agent));
}

#[test]
fn a_cycle_that_resolved_itself_meanwhile_aborts_nobody() {
    let d = tempfile::tempdir().unwrap();
    let ws = Workspace::init(d.path()).unwrap();
    let x = crate::FileLock::new(&ws, r("x"))
        .agent(a("a"))
        .acquire_lease("x")
        .unwrap();
    let _y = crate::FileLock::new(&ws, r("y"))
        .agent(a("b"))
        .acquire_lease("y")
        .unwrap();
    // a's process waits for y, b's for x (queue entries of two other processes, whose
    // liveness files this test holds).
    let dir = ws.locks_dir();
    let pa = crate::store::live::LiveFile::create(&dir, 1).unwrap();
    let pb = crate::store::live::LiveFile::create(&dir, 2).unwrap();
    Shared::of(&ws)
        .unwrap()
        .write(Duration::from_secs(5), |op| {
            for (agent, res, live) in [("a", "y", &pa.name), ("b", "x", &pb.name)] {
                let ticket = op.txn.issue_id()?;
                op.txn.doc_mut(res)?.waiters.push(WaiterInfo {
                    ticket,
                    resource: r(res),
                    mode: LockMode::Exclusive,
                    agent: a(agent),
                    process: Some(ProcessIdentity::current()),
                    live: Some(live.clone()),
                    since: now_ms(),
                    purpose: String::new(),
                    aborted: None,
                });
            }
            op.txn.commit()
        })
        .unwrap();
    let det = DeadlockDetector::new(&ws).broadcast(false).resolve(true);
    let found = det.detect().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    // Before the resolution runs, a's lease on x is released: no cycle any more.
    crate::LockTable::open(&ws)
        .unwrap()
        .release(&r("x"), &a("a"), Some(x.info.token))
        .unwrap();
    assert!(!det.abort(&found[0]).unwrap());
    let snap = crate::LockTable::open(&ws).unwrap().snapshot().unwrap();
    assert!(
        snap.waiters.iter().all(|w| w.aborted.is_none()),
        "a wait was aborted although its cycle no longer exists: {:?}",
        snap.waiters
    );
    drop((pa, pb));
}
