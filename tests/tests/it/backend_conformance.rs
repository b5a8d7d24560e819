//! One conformance suite over the storage traits (`ChannelStore`, `InboxStore`, `LockStore`,
//! `TaskStore`, `AgentStore`): every test body is written once and runs against both backends, the files
//! of a temporary workspace and the throwaway PostgreSQL server
//! (`maos_postgres::server`), each through `maos_coordination::backend::open`, the one
//! place where the CLI chooses. The CLI-level half (real `maos` processes claiming tasks, a
//! scripted session compared between the backends) is in
//! crates/maos-cli/tests/it/backend_cli.rs.
#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::sync::mpsc;
use std::time::Duration;

use maos_coordination::backend::{self, Backends};
use maos_coordination::comm::{Filter, RawPayload, Start};
use maos_coordination::core::{AgentStore, Config};
use maos_coordination::lock::{LockMode, LockRequest, Report};
use maos_coordination::postgres::server;
use maos_coordination::track::{Task, TaskStatus, Update};
use maos_coordination::{
    AgentId, AgentRole, ChannelName, Message, Recipients, Registration, ResourceName, Workspace,
};

/// A workspace on each backend: `("file", ..)` and `("postgresql", ..)`.
fn both() -> Vec<(tempfile::TempDir, Backends)> {
    let file = tempfile::tempdir().unwrap();
    let ws = Workspace::init(file.path()).unwrap();
    let f = backend::open(&ws).unwrap();
    assert_eq!(f.name(), "file");

    let pg = tempfile::tempdir().unwrap();
    let ws = Workspace::init(pg.path()).unwrap();
    let mut c = Config::load(&ws).unwrap();
    c.backend = Some(server::shared_url().expect("a PostgreSQL server for the tests"));
    c.namespace = Some(server::unique_namespace("conf"));
    c.save(&ws).unwrap();
    let p = backend::open(&ws).unwrap();
    assert_eq!(p.name(), "postgresql");
    vec![(file, f), (pg, p)]
}

fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn raw(s: &str) -> RawPayload {
    serde_json::from_str(s).unwrap()
}

fn res(s: &str) -> ResourceName {
    ResourceName::new(s).unwrap()
}

/// Everything a reader gets until nothing new is there.
fn drain(r: &mut dyn maos_coordination::comm::ChannelReader) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    loop {
        let b = r.read().unwrap();
        out.extend(
            b.messages
                .iter()
                .map(|d| (d.position, d.message.payload.get().to_string())),
        );
        if !b.progressed {
            return out;
        }
    }
}

#[test]
fn channels_keep_one_gapless_order_per_channel_under_concurrent_senders() {
    for (_dir, b) in both() {
        let ch = ChannelName::new("conf-order").unwrap();
        std::thread::scope(|s| {
            for t in 0..3 {
                let b = &b;
                let ch = &ch;
                s.spawn(move || {
                    let store = b.channels();
                    for n in 0..20 {
                        let m = Message::new(
                            agent(&format!("s{t}")),
                            Recipients::All,
                            raw(&format!("\"{t}-{n}\"")),
                        );
                        store.send(ch, &m, Duration::from_secs(10)).unwrap();
                    }
                });
            }
        });
        let mut r = b
            .channels()
            .reader(&ch, Start::After(0), Filter::Everything, false)
            .unwrap();
        let got = drain(r.as_mut());
        let positions: Vec<u64> = got.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, (1..=60).collect::<Vec<_>>(), "{}", b.name());
        for t in 0..3 {
            let mine: Vec<&str> = got
                .iter()
                .map(|(_, p)| p.as_str())
                .filter(|p| p.starts_with(&format!("\"{t}-")))
                .collect();
            let want: Vec<String> = (0..20).map(|n| format!("\"{t}-{n}\"")).collect();
            assert_eq!(mine, want, "{}: sender {t}'s order", b.name());
        }
        // A reader from a position gets what follows it, nothing before.
        let mut r = b
            .channels()
            .reader(&ch, Start::After(57), Filter::Everything, false)
            .unwrap();
        let tail: Vec<u64> = drain(r.as_mut()).iter().map(|(p, _)| *p).collect();
        assert_eq!(tail, vec![58, 59, 60], "{}", b.name());
        // An unknown channel is an error naming it, not an empty read.
        let err = b
            .channels()
            .reader(
                &ChannelName::new("conf-none").unwrap(),
                Start::After(0),
                Filter::Everything,
                false,
            )
            .err()
            .expect("no such channel");
        assert!(err.to_string().contains("conf-none"), "{}: {err}", b.name());
    }
}

#[test]
fn recipients_consumers_waits_and_topics_behave_the_same() {
    for (_dir, b) in both() {
        let store = b.channels();
        let ch = ChannelName::new("conf-to").unwrap();
        let wait = Duration::from_secs(10);
        let send = |to: Recipients, p: &str| {
            store
                .send(&ch, &Message::new(agent("lead"), to, raw(p)), wait)
                .unwrap()
                .position
        };
        send(Recipients::Agent(agent("bob")), "1");
        send(Recipients::Role(AgentRole::new("reviewer").unwrap()), "2");
        send(Recipients::Group(vec![agent("bob"), agent("carol")]), "3");
        send(Recipients::All, "4");
        let read_as = |f: Filter| -> Vec<String> {
            let mut r = store.reader(&ch, Start::After(0), f, false).unwrap();
            drain(r.as_mut()).into_iter().map(|(_, p)| p).collect()
        };
        let bob = Filter::Agent {
            agent: agent("bob"),
            role: None,
        };
        let carol = Filter::Agent {
            agent: agent("carol"),
            role: Some(AgentRole::new("reviewer").unwrap()),
        };
        assert_eq!(read_as(bob), ["1", "3", "4"], "{}", b.name());
        assert_eq!(read_as(carol), ["2", "3", "4"], "{}", b.name());
        // The role comes from the registry.
        b.agents()
            .register(Registration::new(agent("dave")).role(AgentRole::new("reviewer").unwrap()))
            .unwrap();
        let dave = store.filter_for(agent("dave")).unwrap();
        assert_eq!(read_as(dave), ["2", "4"], "{}", b.name());

        // A durable consumer continues after what it acknowledged.
        let c = maos_coordination::core::Name::new("conf-c").unwrap();
        let mut r = store
            .reader(&ch, Start::Consumer(c.clone()), Filter::Everything, false)
            .unwrap();
        let first = r.read().unwrap();
        assert_eq!(first.messages.len(), 4, "{}", b.name());
        r.ack(first.messages[1].position).unwrap();
        drop(r);
        let mut r = store
            .reader(&ch, Start::Consumer(c), Filter::Everything, false)
            .unwrap();
        let again: Vec<String> = drain(r.as_mut()).into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            again,
            ["3", "4"],
            "{}: at-least-once after the ack",
            b.name()
        );

        // A waiting reader is woken by a send from another thread.
        let mut r = store
            .reader(&ch, Start::After(4), Filter::Everything, false)
            .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let got = r.wait(Duration::from_secs(60)).unwrap();
                tx.send(got.messages.len()).unwrap();
            });
            send(Recipients::All, "5");
        });
        assert_eq!(rx.recv().unwrap(), 1, "{}", b.name());

        // Topics: patterns, order, and a durable reader.
        let pub_ = |t: &str, p: &str| {
            store
                .broadcast(&agent("lead"), t, &raw(p), wait)
                .unwrap()
                .position
        };
        let p1 = pub_("build/a", "\"a\"");
        pub_("deploy/x", "\"x\"");
        let p3 = pub_("build/b", "\"b\"");
        assert!(p1 < p3, "{}", b.name());
        let mut sub = store.topic_reader(&["build/*"], None).unwrap();
        let got: Vec<(String, u64)> = sub
            .read()
            .unwrap()
            .messages
            .iter()
            .map(|m| (m.topic.clone(), m.position))
            .collect();
        assert_eq!(
            got,
            [("build/a".to_string(), p1), ("build/b".to_string(), p3)],
            "{}",
            b.name()
        );
        let name = maos_coordination::core::Name::new("conf-s").unwrap();
        let mut d = store.topic_reader(&["**"], Some(name.clone())).unwrap();
        let all = d.read().unwrap();
        assert_eq!(all.messages.len(), 3, "{}", b.name());
        d.ack(all.messages[0].position).unwrap();
        drop(d);
        let mut d = store.topic_reader(&["**"], Some(name)).unwrap();
        assert_eq!(d.read().unwrap().messages.len(), 2, "{}", b.name());
    }
}

/// A cursor beyond the channel's newest position is reported (once per reader), never
/// passed over in silence; a consumer cannot acknowledge a position its channel does not
/// hold (it would hide the messages sent there later).
#[test]
fn a_cursor_ahead_of_the_channel_is_reported_and_never_acknowledged() {
    for (_dir, b) in both() {
        let store = b.channels();
        let ch = ChannelName::new("conf-ahead").unwrap();
        for p in ["1", "2"] {
            store
                .send(
                    &ch,
                    &Message::new(agent("a"), Recipients::All, raw(p)),
                    Duration::from_secs(10),
                )
                .unwrap();
        }
        let said = |x: &maos_coordination::comm::ChannelRead| {
            x.notices
                .iter()
                .map(ToString::to_string)
                .chain(x.warnings.iter().cloned())
                .any(|t| t.contains("ahead of"))
        };
        let mut r = store
            .reader(&ch, Start::After(u64::MAX), Filter::Everything, false)
            .unwrap();
        let first = r.read().unwrap();
        assert!(first.messages.is_empty(), "{}", b.name());
        assert!(said(&first), "{}: {first:?}", b.name());
        assert!(!said(&r.read().unwrap()), "{}: said once", b.name());

        let c = maos_coordination::core::Name::new("conf-ahead-c").unwrap();
        let mut r = store
            .reader(&ch, Start::Consumer(c.clone()), Filter::Everything, false)
            .unwrap();
        let err = r.ack(10).unwrap_err();
        assert!(
            matches!(err, maos_coordination::comm::Error::AheadOfLog { .. }),
            "{}: {err}",
            b.name()
        );
        r.ack(2).unwrap();
        drop(r);
        store
            .send(
                &ch,
                &Message::new(agent("a"), Recipients::All, raw("3")),
                Duration::from_secs(10),
            )
            .unwrap();
        let mut r = store
            .reader(&ch, Start::Consumer(c), Filter::Everything, false)
            .unwrap();
        assert_eq!(drain(r.as_mut()), [(3, "3".to_string())], "{}", b.name());
    }
}

/// The payloads of an inbox batch, sorted (the order across channels follows the senders'
/// clocks).
fn inbox_texts(b: &maos_coordination::comm::InboxBatch) -> Vec<String> {
    let mut v: Vec<String> = b
        .items
        .iter()
        .map(|i| i.message.payload.get().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn inboxes_address_subscribe_acknowledge_and_wake_the_same() {
    for (dir, b) in both() {
        let n = b.name();
        let store = b.channels();
        let wait = Duration::from_secs(10);
        let send = |ch: &str, from: &str, to: Recipients, p: &str| {
            let ch = ChannelName::new(ch).unwrap();
            store
                .send(&ch, &Message::new(agent(from), to, raw(p)), wait)
                .unwrap();
        };
        b.agents()
            .register(Registration::new(agent("rev")).role(AgentRole::new("reviewer").unwrap()))
            .unwrap();
        send("direct/rev", "lead", Recipients::All, "1");
        send("direct/dev", "lead", Recipients::All, "2");
        send("direct/dev", "lead", Recipients::Agent(agent("rev")), "3");
        send(
            "review",
            "lead",
            Recipients::Role(AgentRole::new("reviewer").unwrap()),
            "4",
        );
        send("review", "rev", Recipients::All, "5");
        send("review", "lead", Recipients::Group(vec![agent("rev")]), "6");
        store
            .broadcast(&agent("ci"), "build/a", &raw("7"), wait)
            .unwrap();
        let mut inbox = b.inboxes().open(agent("rev")).unwrap();
        assert!(inbox.subscribe(&["build/*"]).unwrap() == ["build/*"], "{n}");
        store
            .broadcast(&agent("ci"), "build/b", &raw("8"), wait)
            .unwrap();
        assert_eq!(inbox.unread().unwrap().total, 5, "{n}");
        let batch = inbox.read(100).unwrap();
        assert_eq!(inbox_texts(&batch), ["1", "3", "4", "6", "8"], "{n}");
        inbox.ack(&batch).unwrap();
        // Another process (a new connection, new handles) finds it acknowledged.
        let ws = Workspace::open(dir.path()).unwrap();
        let again = backend::open(&ws).unwrap();
        let mut inbox = again.inboxes().open(agent("rev")).unwrap();
        assert!(inbox.read(100).unwrap().is_empty(), "{n}");
        assert_eq!(inbox.subscriptions(), ["build/*"], "{n}");
        // A reader waiting on its watcher is woken for a send from another thread.
        let watcher = inbox.watcher().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| send("review", "lead", Recipients::Agent(agent("rev")), "9"));
            let mut got = Vec::new();
            while got.is_empty() {
                got = inbox_texts(&inbox.read(100).unwrap());
                if got.is_empty() {
                    watcher.wait(Duration::from_secs(60));
                }
            }
            assert_eq!(got, ["9"], "{n}");
        });
    }
}

fn req(who: &str, r: &str, mode: LockMode, ttl: Duration, wait: Duration) -> LockRequest {
    let mut q = LockRequest::new(agent(who), res(r), ttl, wait);
    q.mode = mode;
    q
}

fn quiet() -> Report {
    std::sync::Arc::new(|_: &str| {})
}

fn busy(e: &maos_coordination::lock::Error) -> bool {
    e.is_timeout() || backend::is_timeout(e)
}

#[test]
fn locks_are_exclusive_shared_by_pattern_with_growing_tokens_and_expiring_leases() {
    let (x, s) = (LockMode::Exclusive, LockMode::Shared);
    let long = Duration::from_secs(600);
    let now = Duration::ZERO;
    for (_dir, b) in both() {
        let locks = b.locks();
        let l = locks.as_ref();
        let t1 = l
            .acquire_lease(&req("a", "src/a.rs", x, long, now), quiet())
            .unwrap()
            .info
            .token;
        let e = l
            .acquire_lease(&req("b", "src/a.rs", x, long, now), quiet())
            .unwrap_err();
        assert!(busy(&e), "{}: {e}", b.name());
        let e = l
            .acquire_lease(&req("b", "src/**", x, long, now), quiet())
            .unwrap_err();
        assert!(
            busy(&e),
            "{}: a pattern overlapping a held file: {e}",
            b.name()
        );
        l.acquire_lease(&req("b", "docs/x.md", s, long, now), quiet())
            .unwrap();
        l.acquire_lease(&req("c", "docs/x.md", s, long, now), quiet())
            .unwrap();
        let e = l
            .acquire_lease(&req("a", "docs/**", x, long, now), quiet())
            .unwrap_err();
        assert!(busy(&e), "{}: exclusive over shared holders: {e}", b.name());
        // Taking the same lease again renews it (same token).
        let again = l
            .acquire_lease(&req("a", "src/a.rs", x, long, now), quiet())
            .unwrap();
        assert!(again.reentered && again.info.token == t1, "{}", b.name());
        let held: Vec<String> = l
            .conflicting(&res("src/a.rs"), x)
            .unwrap()
            .iter()
            .map(|h| h.owner.to_string())
            .collect();
        assert_eq!(held, ["a"], "{}", b.name());
        let e = l.release(&res("src/a.rs"), &agent("b"), None).unwrap_err();
        assert!(e.to_string().contains("src/a.rs"), "{}: {e}", b.name());
        assert_eq!(
            l.release(&res("src/a.rs"), &agent("a"), None)
                .unwrap()
                .len(),
            1
        );
        let t2 = l
            .acquire_lease(&req("b", "src/a.rs", x, long, now), quiet())
            .unwrap()
            .info
            .token;
        assert!(t2 > t1, "{}: tokens only grow ({t1} then {t2})", b.name());
        // Renewing one resource changes that lock only.
        let renewed = l
            .renew(Some(&res("src/a.rs")), &agent("b"), Some(long * 2))
            .unwrap();
        assert_eq!(renewed.len(), 1, "{}", b.name());
        assert_eq!(renewed[0].ttl_ms, 1_200_000, "{}", b.name());
        let docs = l.snapshot().unwrap();
        let other = docs
            .holders
            .iter()
            .find(|h| h.owner == agent("b") && h.resource == res("docs/x.md"))
            .unwrap();
        assert_eq!(
            other.ttl_ms,
            600_000,
            "{}: another lock's lease kept",
            b.name()
        );
        let e = l
            .renew(Some(&res("nothing/here")), &agent("b"), None)
            .unwrap_err();
        assert!(e.to_string().contains("nothing/here"), "{}: {e}", b.name());
        // A lease that ends frees the resource for a waiter, with a newer token.
        let t3 = l
            .acquire_lease(
                &req("c", "exp/x", x, Duration::from_millis(300), now),
                quiet(),
            )
            .unwrap()
            .info
            .token;
        let t4 = l
            .acquire_lease(
                &req("d", "exp/x", x, long, Duration::from_secs(60)),
                quiet(),
            )
            .unwrap()
            .info
            .token;
        assert!(t4 > t3, "{}", b.name());
        let snap = l.snapshot().unwrap();
        assert!(
            snap.holders
                .iter()
                .any(|h| h.owner == agent("d") && h.resource == res("exp/x")),
            "{}",
            b.name()
        );
        assert!(
            !snap
                .holders
                .iter()
                .any(|h| h.owner == agent("c") && h.resource == res("exp/x")),
            "{}: the expired lease is gone",
            b.name()
        );
        // Renewing and releasing an agent's locks.
        assert!(!l.renew(None, &agent("d"), None).unwrap().is_empty());
        assert!(!l.release_agent(&agent("d")).unwrap().is_empty());
        assert!(l.deadlocks(&agent("a"), false, false).unwrap().is_empty());
    }
}

#[test]
fn lock_waiters_are_served_first_come_first_served() {
    let x = LockMode::Exclusive;
    let long = Duration::from_secs(600);
    for (_dir, b) in both() {
        let l = b.locks();
        l.acquire_lease(&req("a", "fifo/x", x, long, Duration::ZERO), quiet())
            .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            let queued = |who: &str| {
                server::wait_until(Duration::from_secs(60), || {
                    l.snapshot()
                        .unwrap()
                        .waiters
                        .iter()
                        .any(|w| w.agent == agent(who))
                });
            };
            for who in ["b", "c"] {
                let tx = tx.clone();
                let l = &l;
                s.spawn(move || {
                    l.acquire_lease(
                        &req(who, "fifo/x", x, long, Duration::from_secs(120)),
                        quiet(),
                    )
                    .unwrap();
                    tx.send(who).unwrap();
                });
                queued(who);
            }
            l.release(&res("fifo/x"), &agent("a"), None).unwrap();
            let first = rx.recv().unwrap();
            assert_eq!(first, "b", "{}: b queued first", b.name());
            l.release(&res("fifo/x"), &agent("b"), None).unwrap();
            assert_eq!(rx.recv().unwrap(), "c", "{}", b.name());
        });
    }
}

#[test]
fn tasks_depend_claim_once_and_refuse_the_same_way() {
    for (_dir, b) in both() {
        let lead = b.tasks(&agent("lead"), None).unwrap();
        let one = lead
            .create(&Task {
                name: "one".into(),
                ..Task::default()
            })
            .unwrap();
        let two = lead
            .create(&Task {
                name: "two".into(),
                dependencies: vec![one.id.clone()],
                ..Task::default()
            })
            .unwrap();
        assert_eq!(two.status, TaskStatus::Blocked, "{}", b.name());
        let ready: Vec<String> = lead
            .ready_page(10)
            .unwrap()
            .tasks
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(ready, ["one"], "{}", b.name());
        let prefix = &one.id.as_str()[..6];
        assert_eq!(lead.resolve(prefix).unwrap(), one.id, "{}", b.name());
        // Four claimers at once: one task, one winner.
        let winners: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let b = &b;
                    s.spawn(move || {
                        let me = agent(&format!("w{i}"));
                        b.tasks(&me, None).unwrap().claim(&me).unwrap()
                    })
                })
                .collect();
            hs.into_iter()
                .filter_map(|h| h.join().unwrap())
                .map(|t| t.name)
                .collect()
        });
        assert_eq!(winners, ["one"], "{}", b.name());
        let t = lead.get(&one.id).unwrap().unwrap();
        let owner = t.assigned_to.clone().unwrap();
        assert_eq!(t.status, TaskStatus::InProgress, "{}", b.name());
        // Another agent may not finish it; the owner may, once.
        let e = lead
            .update(&one.id, &Update::status(TaskStatus::Completed))
            .unwrap_err();
        assert!(
            matches!(e, maos_coordination::track::Error::NotAssignee { .. }),
            "{}: {e}",
            b.name()
        );
        let mine = b.tasks(&owner, None).unwrap();
        let mut stale = Update::status(TaskStatus::Completed);
        stale.expected_revision = Some(t.revision + 7);
        let e = mine.update(&one.id, &stale).unwrap_err();
        assert!(
            matches!(e, maos_coordination::track::Error::RevisionMismatch { .. }),
            "{}: {e}",
            b.name()
        );
        mine.update(&one.id, &Update::status(TaskStatus::Completed))
            .unwrap();
        let e = mine
            .update(&one.id, &Update::status(TaskStatus::InProgress))
            .unwrap_err();
        assert!(
            matches!(e, maos_coordination::track::Error::InvalidTransition { .. }),
            "{}: {e}",
            b.name()
        );
        // The dependent is ready now; releasing a claimer puts its task back.
        assert_eq!(
            lead.get(&two.id).unwrap().unwrap().status,
            TaskStatus::Pending,
            "{}",
            b.name()
        );
        let w = agent("w9");
        let claimed = b.tasks(&w, None).unwrap().claim(&w).unwrap().unwrap();
        assert_eq!(claimed.id, two.id);
        let released = lead.release_agent(&w, "gone").unwrap();
        assert_eq!(released, std::slice::from_ref(&two.id), "{}", b.name());
        let r = lead.report().unwrap();
        assert_eq!(
            (r.total_tasks, r.completed_tasks, r.pending_tasks),
            (2, 1, 1),
            "{}",
            b.name()
        );
        assert_eq!(lead.counts().unwrap().total, 2);
        let e = lead.resolve("zzzzzz").unwrap_err();
        assert!(
            matches!(e, maos_coordination::track::Error::NotFound { .. }),
            "{}: {e}",
            b.name()
        );
    }
}

#[test]
fn agents_register_live_renew_and_leave() {
    for (_dir, b) in both() {
        let reg = b.agents();
        let r = reg
            .register(Registration::new(agent("rita")).role(AgentRole::new("qa").unwrap()))
            .unwrap();
        assert_eq!(r.id, agent("rita"));
        let (all, problems) = reg.list().unwrap();
        assert!(problems.is_empty());
        let me = all.iter().find(|a| a.record.id == agent("rita")).unwrap();
        assert!(!me.liveness.is_dead(), "{}: {me:?}", b.name());
        assert!(me.lease_left_ms > 0, "{}", b.name());
        assert_eq!(
            reg.role_of(&agent("rita")).unwrap(),
            Some(AgentRole::new("qa").unwrap())
        );
        reg.heartbeat(&agent("rita")).unwrap();
        assert!(reg.heartbeat(&agent("nobody")).is_err(), "{}", b.name());
        assert!(reg.unregister(&agent("rita")).unwrap());
        assert!(!reg.unregister(&agent("rita")).unwrap());
        assert!(reg.list().unwrap().0.is_empty(), "{}", b.name());
        assert_eq!(reg.role_of(&agent("rita")).unwrap(), None);
    }
}

#[test]
fn an_agent_anchored_on_a_process_dies_with_it_on_both_backends() {
    use maos_coordination::core::{Anchor, Liveness, ProcessIdentity};
    for (_dir, b) in both() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let id = ProcessIdentity::of(child.id()).expect("the child runs");
        let reg = b.agents();
        reg.register(Registration::new(agent("kid")).anchor(Anchor::session(id)))
            .unwrap();
        let state = |reg: &dyn AgentStore| {
            reg.list()
                .unwrap()
                .0
                .into_iter()
                .find(|a| a.record.id == agent("kid"))
                .map(|a| a.liveness)
        };
        assert_eq!(state(reg.as_ref()), Some(Liveness::Alive), "{}", b.name());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(state(reg.as_ref()), Some(Liveness::Dead), "{}", b.name());
    }
}

#[test]
fn lock_run_holds_and_renews_the_lock_while_the_command_runs() {
    use std::io::Write as _;
    let ttl = Duration::from_millis(400);
    for (_dir, b) in both() {
        let l = b.locks();
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut reader = Some(reader);
        let r = req(
            "runner",
            "run/x",
            LockMode::Exclusive,
            ttl,
            Duration::from_secs(10),
        );
        std::thread::scope(|s| {
            let l2 = &l;
            let h = s.spawn(move || {
                let mut spawn = |token: maos_coordination::lock::FencingToken| {
                    assert!(token.0 > 0);
                    std::process::Command::new("sh")
                        .args(["-c", "read x; exit 7"])
                        .stdin(reader.take().expect("spawned once"))
                        .spawn()
                };
                l2.run(&r, &mut spawn, quiet(), quiet()).unwrap()
            });
            // Held while the command runs, and renewed past its first lease.
            let mut first_expiry = None;
            server::wait_until(Duration::from_secs(60), || {
                let snap = l.snapshot().unwrap();
                let Some(h) = snap.holders.iter().find(|h| h.resource == res("run/x")) else {
                    return false;
                };
                let first = *first_expiry.get_or_insert(h.expires_at);
                h.expires_at > first + 100
            });
            let e = l
                .acquire_lease(
                    &req("other", "run/x", LockMode::Exclusive, ttl, Duration::ZERO),
                    quiet(),
                )
                .unwrap_err();
            assert!(busy(&e), "{}: {e}", b.name());
            writeln!(writer, "go").unwrap();
            drop(writer);
            let out = h.join().unwrap();
            assert_eq!(out.status.unwrap().code(), Some(7), "{}", b.name());
            assert!(!out.lost, "{}", b.name());
            assert!(out.release_error.is_none(), "{}", b.name());
        });
        assert!(
            l.conflicting(&res("run/x"), LockMode::Exclusive)
                .unwrap()
                .is_empty(),
            "{}: released after the command",
            b.name()
        );
    }
}

/// `git ARGS` in `dir` as a fixed author (the merge tests' repositories).
fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A branch `name` from main whose `f.txt` is `text`.
fn branch(dir: &std::path::Path, name: &str, text: &str) {
    git(dir, &["checkout", "-q", "-b", name, "main"]);
    std::fs::write(dir.join("f.txt"), text).unwrap();
    git(dir, &["commit", "-qam", name]);
    git(dir, &["checkout", "-q", "main"]);
}

/// The merge coordinator and queue over each backend's shared state (git local): the agent
/// prediction reads the registry, the queue keeps one active entry per pair, merges in order,
/// turns a conflict into resolution tasks for the source's agent and a notice in its inbox,
/// and merges the entry once it is resolved, completing the pair's tasks; the same on both.
#[test]
fn the_merge_queue_and_its_resolution_tasks_behave_the_same() {
    use maos_coordination::merge::{EntryStatus, MergeCoordinator, MergeQueue};
    let mut seen = Vec::new();
    for (dir, b) in both() {
        let d = dir.path();
        git(d, &["init", "-q", "-b", "main"]);
        std::fs::write(d.join(".gitignore"), ".maos/\n").unwrap();
        std::fs::write(d.join("f.txt"), "one\ntwo\nthree\nfour\nfive\n").unwrap();
        git(d, &["add", "."]);
        git(d, &["commit", "-qm", "base"]);
        branch(d, "feat-1", "ONE\ntwo\nthree\nfour\nfive\n");
        branch(d, "feat-2", "uno\ntwo\nthree\nfour\nfive\n");
        branch(d, "feat-3", "one\ntwo\nthree\nfour\nFIVE\n");
        for (a, br) in [("a1", "feat-1"), ("a2", "feat-2"), ("a3", "feat-3")] {
            b.agents()
                .register(Registration::new(agent(a)).branch(br))
                .unwrap();
        }
        let mut coord = MergeCoordinator::new(b.workspace(), agent("lead")).unwrap();
        if let Some(shared) = b.merge(&agent("lead")) {
            coord = coord.with_backend(shared);
        }
        let p = coord.predict_agents("main", false).unwrap();
        assert!(p.vs_target.iter().all(|r| r.is_clean()), "{}", b.name());
        let clashes: Vec<(String, String)> = p
            .pairwise
            .iter()
            .filter(|r| !r.is_clean())
            .map(|r| (r.target.clone(), r.source.clone()))
            .collect();
        assert_eq!(
            clashes,
            [("feat-1 (a1)".to_owned(), "feat-2 (a2)".to_owned())],
            "{}",
            b.name()
        );

        let queue = MergeQueue::new(coord.clone());
        let e1 = queue.add("feat-1", "main").unwrap();
        let e2 = queue.add("feat-2", "main").unwrap();
        let e3 = queue.add("feat-3", "main").unwrap();
        assert_eq!(
            queue.add("feat-1", "main").unwrap().id,
            e1.id,
            "{}",
            b.name()
        );
        let run = queue.run_blocking().unwrap();
        assert_eq!(run.merged, [e1.id, e3.id], "{}", b.name());
        assert_eq!(run.blocked, [e2.id], "{}", b.name());
        let blocked = run.entries.iter().find(|e| e.id == e2.id).unwrap();
        assert_eq!(blocked.conflicted_paths, ["f.txt"], "{}", b.name());
        let res = blocked.resolution.clone().unwrap();
        assert_eq!(res.conflict_tasks.len(), 1, "{}", b.name());
        assert_eq!(res.conflict_tasks[0].assigned_to, Some(agent("a2")));
        // The resolver's inbox has the notice.
        let store = b.channels();
        let mut inbox = store
            .reader(
                &ChannelName::new("direct/a2").unwrap(),
                Start::After(0),
                Filter::Everything,
                false,
            )
            .unwrap();
        let notices = drain(inbox.as_mut());
        assert_eq!(notices.len(), 1, "{}", b.name());
        assert!(notices[0].1.contains("merge_conflicts"), "{notices:?}");
        // A second run while the resolution is open keeps the entry blocked, same tasks.
        let again = queue.run_blocking().unwrap();
        assert_eq!(again.blocked, [e2.id], "{}", b.name());
        assert_eq!(
            again.entries[0].resolution.as_ref().unwrap().merge_task,
            res.merge_task
        );

        // a2 resolves on its branch (merges main, keeps both lines) and completes its task.
        git(d, &["checkout", "-q", "feat-2"]);
        let _ = std::process::Command::new("git")
            .current_dir(d)
            .args(["merge", "-q", "main"])
            .output()
            .unwrap();
        std::fs::write(d.join("f.txt"), "ONE uno\ntwo\nthree\nfour\nFIVE\n").unwrap();
        git(d, &["commit", "-qam", "resolve"]);
        git(d, &["checkout", "-q", "main"]);
        let a2 = b.tasks(&agent("a2"), None).unwrap();
        let task = &res.conflict_tasks[0].task;
        a2.update(task, &Update::status(TaskStatus::InProgress))
            .unwrap();
        a2.update(task, &Update::status(TaskStatus::Completed))
            .unwrap();
        let last = queue.run_blocking().unwrap();
        assert_eq!(last.merged, [e2.id], "{}", b.name());
        let list = queue.list().unwrap();
        assert!(
            list.iter().all(|e| e.status == EntryStatus::Merged),
            "{}: {list:?}",
            b.name()
        );
        // The merge closed the pair's merge task; every resolution task is completed.
        let tasks = b.tasks(&agent("lead"), None).unwrap().list().unwrap();
        assert_eq!(tasks.len(), 2, "{}", b.name());
        assert!(
            tasks.iter().all(|t| t.status == TaskStatus::Completed),
            "{}: {tasks:?}",
            b.name()
        );
        assert_eq!(
            std::fs::read_to_string(d.join("f.txt")).unwrap(),
            "ONE uno\ntwo\nthree\nfour\nFIVE\n"
        );
        // The file backend's queue is its file; the server's leaves no file behind.
        assert_eq!(
            d.join(".maos/merge/queue.json").exists(),
            b.is_file(),
            "{}",
            b.name()
        );
        seen.push((
            run.merged.len(),
            run.blocked.len(),
            last.merged.len(),
            tasks.len(),
        ));
    }
    assert_eq!(seen[0], seen[1], "the backends differ");
}
