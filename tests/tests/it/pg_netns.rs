//! Two machines for real: two network namespaces joined to a third that runs PostgreSQL,
//! agents in both exchanging messages, taking locks, deadlocking across the two and
//! claiming tasks; then one machine's link is cut and its locks are freed for the other
//! once the server has ended its session. Needs root (CI runs as root).

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::collections::HashSet;
use std::time::Duration;

use maos_coordination::{AgentId, Task};
use maos_postgres::lock::PgLockTable;
use maos_postgres::server::{TestServer, unique_namespace, wait_until};
use maos_postgres::track::PgTracker;
use maos_postgres::{BackendUrl, Pg};
use maos_tests::pg::{Netns, PgAgent};

const BIN: &str = env!("CARGO_BIN_EXE_pg_agent");

#[test]
fn agents_on_two_machines_share_messages_locks_deadlocks_and_tasks() {
    let net = Netns::create(&["a", "b"]);
    // Dead peers are noticed in seconds (an idle session's keepalives go unanswered).
    let server = TestServer::builder()
        .netns(net.server())
        .listen(net.server_addr())
        .trust(format!("10.213.{}.0/24", net.net))
        .setting("tcp_keepalives_idle=1")
        .setting("tcp_keepalives_interval=1")
        .setting("tcp_keepalives_count=2")
        .setting("tcp_user_timeout=3000")
        .start()
        .unwrap();
    let ns = unique_namespace("two-machines");
    // The test itself reaches the server through its unix socket (not a network path).
    let admin = Pg::connect(&BackendUrl::parse(&server.socket_url()).unwrap(), &ns).unwrap();
    let url = format!(
        "postgres://postgres@{}:{}/postgres",
        net.server_addr(),
        server.port()
    );
    let ma = net.machine("a");
    let mb = net.machine("b");
    let mut a = PgAgent::start(BIN, &["ip", "netns", "exec", &ma], &url, &ns, "on-a");
    let mut b = PgAgent::start(BIN, &["ip", "netns", "exec", &mb], &url, &ns, "on-b");

    // Messages: both send, each reads the other's, one order for both.
    a.send("send c 20");
    b.send("send c 20");
    assert_eq!(a.answer(), "sent 20");
    assert_eq!(b.answer(), "sent 20");
    let seen_a: serde_json::Value = serde_json::from_str(&a.cmd("recv c 0")).unwrap();
    let seen_b: serde_json::Value = serde_json::from_str(&b.cmd("recv c 0")).unwrap();
    assert_eq!(seen_a, seen_b);
    let senders: HashSet<String> = seen_a
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[1][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(senders.len(), 2);
    assert_eq!(seen_a.as_array().unwrap().len(), 40);

    // Locks: b waits for a's lock and gets it when a releases.
    let ta: u64 = a.cmd("try f").parse().unwrap();
    assert_eq!(b.cmd("try f"), "busy");
    b.cmd("lock f");
    a.cmd("release f");
    let granted = b.wait_for("granted f ");
    assert!(granted["granted f ".len()..].parse::<u64>().unwrap() > ta);
    b.cmd("release f");

    // A deadlock across the two machines, found and resolved by a third party.
    a.cmd("try x");
    b.cmd("try y");
    a.cmd("lock y");
    wait_until(Duration::from_secs(30), || {
        PgLockTable::new(&admin).snapshot().unwrap().waiters.len() == 1
    });
    b.cmd("lock x");
    wait_until(Duration::from_secs(30), || {
        PgLockTable::new(&admin).snapshot().unwrap().waiters.len() == 2
    });
    let found = maos_postgres::lock::PgDeadlockDetector::new(&admin)
        .resolve(true)
        .check()
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].involved_agents,
        [AgentId::new("on-a").unwrap(), AgentId::new("on-b").unwrap()]
    );
    let failed = b.wait_for("failed x ");
    assert!(failed.contains("deadlock"), "{failed}");
    b.cmd("release y");
    a.wait_for("granted y ");
    a.cmd("release x");
    a.cmd("release y");

    // Task claims from both machines: every task once.
    let tasks: Vec<Task> = (0..30).map(|i| Task::new(format!("t{i}"))).collect();
    PgTracker::new(&admin).create_tasks(&tasks).unwrap();
    a.send("claim");
    b.send("claim");
    a.answer();
    b.answer();
    let mut claimed: Vec<String> = Vec::new();
    for ag in [&a, &b] {
        claimed.extend(
            ag.events
                .iter()
                .filter_map(|e| e.strip_prefix("claimed "))
                .map(str::to_string),
        );
    }
    let distinct: HashSet<&String> = claimed.iter().collect();
    assert_eq!((claimed.len(), distinct.len()), (30, 30));

    // Cut machine a off while it holds a lock b waits for: the server ends a's session
    // (keepalives), the lock is freed for b, and a learns that its locks may be gone.
    a.cmd("try cut");
    b.cmd("lock cut");
    net.cut("a");
    b.wait_for("granted cut ");
    a.wait_for("lost ");
    let snap = PgLockTable::new(&admin).snapshot().unwrap();
    let holders: Vec<_> = snap
        .holders
        .iter()
        .filter(|h| h.resource.as_str() == "cut")
        .map(|h| h.owner.to_string())
        .collect();
    assert_eq!(holders, ["on-b"]);
    drop(a);
    drop(b);
    drop(server);
}
