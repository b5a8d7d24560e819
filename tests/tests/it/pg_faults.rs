//! Crash and fault tests of the PostgreSQL backend against a real server, with agents as
//! real processes (`pg_agent`): SIGKILL mid-operation, a terminated database session, a
//! server restart mid-run.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use maos_coordination::{AgentId, ChannelName, ResourceName};
use maos_postgres::comm::{Filter, PgChannel};
use maos_postgres::lock::{PgLock, PgLockTable};
use maos_postgres::server::{self, TestServer, wait_until};
use maos_postgres::track::PgTracker;
use maos_postgres::{BackendUrl, Pg};
use maos_tests::pg::PgAgent;

const BIN: &str = env!("CARGO_BIN_EXE_pg_agent");

/// The acknowledged sends `(sender index -> [i])` an agent printed (`ack i pos`).
fn acks(a: &PgAgent) -> Vec<u64> {
    a.events
        .iter()
        .filter_map(|e| e.strip_prefix("ack "))
        .map(|r| r.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// Every message of `ch` grouped by sender, in channel order; checks positions are 1..=n.
fn by_sender(pg: &Pg, ch: &str) -> BTreeMap<String, Vec<u64>> {
    let ch = PgChannel::open(pg, ChannelName::new(ch).unwrap());
    let mut cur = 0;
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    loop {
        let b = ch
            .receive::<(String, u64)>(cur, &Filter::Everything)
            .unwrap();
        if b.messages.is_empty() {
            break;
        }
        for d in b.messages {
            assert_eq!(d.position, cur + 1, "a gap in the channel");
            cur = d.position;
            out.entry(d.message.payload.0)
                .or_default()
                .push(d.message.payload.1);
        }
    }
    out
}

/// Every acknowledged message is present exactly once, and each sender's messages are in
/// send order.
fn check_messages(pg: &Pg, ch: &str, agents: &[&PgAgent]) {
    let got = by_sender(pg, ch);
    for a in agents {
        let mine = got.get(&a.name).cloned().unwrap_or_default();
        let sorted: Vec<u64> = (0..mine.len() as u64).collect();
        assert_eq!(
            mine, sorted,
            "{}: messages once each, in send order",
            a.name
        );
        for i in acks(a) {
            assert!(
                i < mine.len() as u64,
                "{}: acknowledged message {i} is missing",
                a.name
            );
        }
    }
}

fn counter(url: &str, ns: &str) -> i64 {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query_one("SELECT v FROM test_counter WHERE ns = $1", &[&ns])
        .unwrap()
        .get(0)
}

fn setup_counter(url: &str, ns: &str) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS test_counter (ns text PRIMARY KEY, v bigint NOT NULL)",
    )
    .unwrap();
    c.execute(
        "INSERT INTO test_counter VALUES ($1, 0) ON CONFLICT DO NOTHING",
        &[&ns],
    )
    .unwrap();
}

#[test]
fn sigkilled_agents_lose_nothing_acknowledged_and_free_their_locks() {
    let url = server::shared_url().unwrap();
    let ns = server::unique_namespace("faults-kill");
    setup_counter(&url, &ns);
    let mut agents: Vec<PgAgent> = (0..5)
        .map(|n| PgAgent::start(BIN, &[], &url, &ns, &format!("a{n}")))
        .collect();
    // a0, a1: long sends, killed mid-way; a2: a full send; a3, a4: critical sections, a4
    // killed mid-way.
    agents[0].send("send c 100000");
    agents[1].send("send c 100000");
    agents[2].send("send c 60");
    agents[3].send("count counter 40");
    agents[4].send("count counter 100000");
    agents[0].wait_count("ack ", 15);
    agents[1].wait_count("ack ", 5);
    agents[4].wait_count("inc", 5);
    agents[0].kill();
    agents[1].kill();
    agents[4].kill();
    assert_eq!(agents[2].answer(), "sent 60");
    assert_eq!(agents[3].answer(), "counted");
    let pg = Pg::connect(&BackendUrl::parse(&url).unwrap(), &ns).unwrap();
    check_messages(&pg, "c", &agents.iter().collect::<Vec<_>>());
    // Mutual exclusion: no increment lost; at most one unacknowledged by the killed agent.
    let incs: usize = agents
        .iter()
        .map(|a| a.events.iter().filter(|e| *e == "inc").count())
        .sum();
    let v = counter(&url, &ns) as usize;
    assert!(
        v >= incs && v <= incs + 1,
        "counter {v}, acknowledged increments {incs}"
    );
    // The killed agent's lock (if it held one) is freed once its session is gone.
    let res = ResourceName::new("counter").unwrap();
    wait_until(Duration::from_secs(60), || {
        PgLock::new(&pg, res.clone())
            .agent(AgentId::new("checker").unwrap())
            .try_acquire("check")
            .unwrap()
            .is_some()
    });
}

#[test]
fn a_terminated_session_frees_the_agents_locks_and_claims_and_it_learns_so() {
    let url = server::shared_url().unwrap();
    let ns = server::unique_namespace("faults-term");
    let pg = Pg::connect_with(
        &BackendUrl::parse(&url).unwrap(),
        &ns,
        maos_postgres::Options::default().dead_grace(Duration::from_millis(300)),
    )
    .unwrap();
    let mut x = PgAgent::start(BIN, &[], &url, &ns, "x");
    let token: u64 = x.cmd("try f").parse().unwrap();
    x.cmd("create 1");
    assert!(x.cmd("hold-claim").starts_with("holding "));
    let me = AgentId::new("other").unwrap();
    let f = ResourceName::new("f").unwrap();
    assert!(
        PgLock::new(&pg, f.clone())
            .agent(me.clone())
            .try_acquire("x")
            .unwrap()
            .is_none()
    );
    let tracker = PgTracker::new(&pg);
    assert!(tracker.claim(&me).unwrap().is_none());
    // x hangs (stopped), and its session is terminated (as an administrator would, or as
    // a network cut ends it).
    x.signal("STOP");
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let killed: bool = admin
        .query_one(
            "SELECT pg_terminate_backend(backend_pid) FROM maos.sessions WHERE key = $1",
            &[&x.key],
        )
        .unwrap()
        .get(0);
    assert!(killed);
    // Its lock is free for the others at once; its claim once the grace for a reconnect
    // has passed without x coming back.
    wait_until(Duration::from_secs(30), || {
        PgLock::new(&pg, f.clone())
            .agent(me.clone())
            .try_acquire("x")
            .unwrap()
            .is_some()
    });
    let mut claimed = None;
    wait_until(Duration::from_secs(30), || {
        claimed = tracker.claim(&me).unwrap();
        claimed.is_some()
    });
    assert_eq!(claimed.unwrap().assigned_to, Some(me.clone()));
    assert!(
        PgLockTable::new(&pg)
            .check_fencing_token(&f, token)
            .is_err()
    );
    // x wakes up, learns that its locks may be gone, reconnects and works on.
    x.signal("CONT");
    x.wait_for("lost ");
    assert_eq!(x.cmd("try g").parse::<u64>().map(|t| t > token), Ok(true));
}

/// Issue 11.6 on PostgreSQL: a process stopped (SIGSTOP) in the middle of a change holds the
/// lock table's guard row. Everyone else's wait is honoured (a clear busy error naming the
/// stopped session, counted as a timeout: exit 3), readers do not wait at all, and the
/// server ends the stopped transaction after `stuck_after`, after which locks are granted
/// again; the stopped process, resumed, reconnects and works on.
#[test]
fn a_process_stopped_mid_change_blocks_nobody_beyond_their_wait() {
    let url = server::shared_url().unwrap();
    let ns = server::unique_namespace("faults-stopped");
    let pg = Pg::connect(&BackendUrl::parse(&url).unwrap(), &ns).unwrap();
    let mut x = PgAgent::start(
        BIN,
        &["env", "PG_AGENT_STUCK_AFTER_MS=3000"],
        &url,
        &ns,
        "x",
    );
    assert_eq!(x.cmd("hold-guard locks"), "holding");
    x.signal("STOP");
    let me = AgentId::new("other").unwrap();
    let f = ResourceName::new("f").unwrap();
    let err = PgLock::new(&pg, f.clone())
        .agent(me.clone())
        .wait(Duration::from_millis(300))
        .acquire("edit")
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, maos_postgres::Error::Busy { .. }), "{text}");
    assert!(maos_coordination::backend::is_timeout(&err), "{text}");
    assert!(
        text.contains(&format!("maos pid {}", x.pid())) && text.contains("idle in a transaction"),
        "the stopped process is named: {text}"
    );
    // A try does not hang either; a reader does not wait at all.
    assert!(matches!(
        PgLock::new(&pg, f.clone())
            .agent(me.clone())
            .try_acquire("edit"),
        Err(maos_postgres::Error::Busy { .. })
    ));
    assert!(PgLockTable::new(&pg).snapshot().unwrap().holders.is_empty());
    // The server ends the stopped transaction: the guard is free again.
    wait_until(Duration::from_secs(60), || {
        matches!(
            PgLock::new(&pg, f.clone())
                .agent(me.clone())
                .try_acquire("edit"),
            Ok(Some(_))
        )
    });
    x.signal("CONT");
    let token = x.cmd("try g");
    assert!(token.parse::<u64>().is_ok(), "{token}");

    // The same for the task store: a write honours its wait, a read does not wait.
    assert_eq!(x.cmd("hold-guard tasks"), "holding");
    x.signal("STOP");
    let tracker = PgTracker::new(&pg)
        .agent(me.clone())
        .lock_wait(Duration::from_millis(300));
    let err = tracker
        .create_task(&maos_coordination::Task::new("t"))
        .unwrap_err();
    assert!(matches!(err, maos_postgres::Error::Busy { .. }), "{err}");
    assert!(tracker.list().unwrap().is_empty());
    wait_until(Duration::from_secs(60), || {
        tracker
            .create_task(&maos_coordination::Task::new("t"))
            .is_ok()
    });
    x.signal("CONT");
}

#[test]
fn a_server_restart_mid_run_loses_nothing_acknowledged() {
    let server = TestServer::start().unwrap();
    let url = server.url();
    let ns = server::unique_namespace("faults-restart");
    let pg = Pg::connect_with(
        &BackendUrl::parse(&url).unwrap(),
        &ns,
        maos_postgres::Options::default().reconnect_for(Duration::from_secs(120)),
    )
    .unwrap();
    let mut senders: Vec<PgAgent> = (0..3)
        .map(|n| PgAgent::start(BIN, &[], &url, &ns, &format!("s{n}")))
        .collect();
    let mut claimers: Vec<PgAgent> = (0..2)
        .map(|n| PgAgent::start(BIN, &[], &url, &ns, &format!("c{n}")))
        .collect();
    let mut holder = PgAgent::start(BIN, &[], &url, &ns, "holder");
    let mut next = PgAgent::start(BIN, &[], &url, &ns, "next");
    claimers[0].cmd("create 150");
    let before: u64 = holder.cmd("try f").parse().unwrap();
    for s in &mut senders {
        s.send("send c 300");
    }
    for c in &mut claimers {
        c.send("claim");
    }
    senders[0].wait_count("ack ", 30);
    claimers[0].wait_count("claimed ", 5);
    server.stop().unwrap();
    server.restart().unwrap();
    // The holder's session died with the server: it learns so, and the lock is free.
    holder.wait_for("lost ");
    next.send("lock f");
    let granted = next.wait_for("granted f ");
    // Tokens only grow across the restart (the sequence jumps to a new epoch first).
    let after: u64 = granted["granted f ".len()..].parse().unwrap();
    assert!(
        after > before + (1 << 31),
        "token {after} after the restart, {before} before: the epoch jump is missing"
    );
    for s in &mut senders {
        assert_eq!(s.answer(), "sent 300");
    }
    let mut claimed = Vec::new();
    for c in &mut claimers {
        c.answer();
        claimed.extend(
            c.events
                .iter()
                .filter_map(|e| e.strip_prefix("claimed "))
                .map(str::to_string),
        );
    }
    check_messages(&pg, "c", &senders.iter().collect::<Vec<_>>());
    let distinct: HashSet<&String> = claimed.iter().collect();
    assert_eq!(distinct.len(), claimed.len(), "a task was claimed twice");
    assert_eq!(claimed.len(), 150);
    let snap = PgLockTable::new(&pg).snapshot().unwrap();
    assert_eq!(snap.holders.len(), 1, "one holder of f: {:?}", snap.holders);
    assert_eq!(snap.holders[0].owner, AgentId::new("next").unwrap());
}
