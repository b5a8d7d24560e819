//! A three-agent deadlock across three processes is detected, broadcast on the `deadlock`
//! topic, and resolved: the victim's wait ends with a deadlock error, the others proceed.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use maos_coordination::comm::{ChannelWatcher, FileChannel, Filter};
use maos_coordination::lock::{DeadlockDetector, DeadlockNotification};
use maos_coordination::{AgentId, ChannelName, Workspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_in_a_cycle_are_detected_reported_and_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let plan = [("a", "x", "y"), ("b", "y", "z"), ("c", "z", "x")];
    let mut procs = Vec::new();
    for (agent, first, second) in plan {
        let mut c = crate::helper("lock_deadlock")
            .args([ws.root().to_str().unwrap(), agent, first, second])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "HELD", "{agent}");
        procs.push((agent, c, out));
    }
    let topic = FileChannel::open(&ws, ChannelName::new("broadcast/deadlock").unwrap()).unwrap();
    let mut watcher = ChannelWatcher::from_cursor(
        topic,
        maos_coordination::comm::Cursor::start(),
        Filter::Everything,
    )
    .unwrap();
    let monitor = DeadlockDetector::new(&ws)
        .resolve(true)
        .sender(AgentId::new("monitor").unwrap())
        .spawn_monitor(Duration::from_secs(5))
        .unwrap();
    let start = Instant::now();
    for (_, c, _) in &mut procs {
        c.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let got = watcher
        .next_timeout::<DeadlockNotification>(Duration::from_secs(120))
        .await
        .unwrap()
        .expect("no deadlock reported");
    let latency = start.elapsed();
    eprintln!("deadlock reported {latency:?} after the last wait began");
    let note = got.message.payload;
    let names: Vec<&str> = note.involved_agents.iter().map(|a| a.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(note.waits.len(), 3);
    assert!(note.suggested_resolution.applied);
    let youngest = note.waits.iter().max_by_key(|w| w.ticket).unwrap();
    assert_eq!(note.suggested_resolution.victim, youngest.waiter);
    drop(monitor);

    for (agent, mut c, mut out) in procs {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        let want = if note.suggested_resolution.victim.as_str() == agent {
            "DEADLOCK"
        } else {
            "GOT"
        };
        assert_eq!(l.trim(), want, "agent {agent}");
        assert!(c.wait().unwrap().success());
    }
}
