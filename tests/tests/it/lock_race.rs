//! Many processes race to reclaim the same stale lock at once: exactly one wins.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Stdio};

use maos_coordination::lock::{FileLock, LockTable};
use maos_coordination::{AgentId, ResourceName, Workspace};

const RACERS: usize = 12;

fn racer(ws: &Path, res: &str, agent: &str, mode: &str) -> (Child, BufReader<ChildStdout>) {
    let mut c = crate::helper("lock_racer")
        .args([ws.to_str().unwrap(), res, agent, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn lock_racer");
    let out = BufReader::new(c.stdout.take().unwrap());
    (c, out)
}

fn line(r: &mut BufReader<ChildStdout>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s.trim().to_owned()
}

fn race(ws: &Workspace, res: &str, stale_token: u64) {
    let mut racers: Vec<_> = (0..RACERS)
        .map(|i| racer(ws.root(), res, &format!("r{i}"), "race"))
        .collect();
    for (_, out) in &mut racers {
        assert_eq!(line(out), "READY");
    }
    // Release them all at once.
    for (c, _) in &mut racers {
        c.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let results: Vec<String> = racers.iter_mut().map(|(_, out)| line(out)).collect();
    let winners: Vec<&String> = results.iter().filter(|r| r.starts_with("WON")).collect();
    assert_eq!(winners.len(), 1, "results: {results:?}");
    let token: u64 = winners[0].trim_start_matches("WON ").parse().unwrap();
    assert!(token > stale_token);
    for (mut c, _) in racers {
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success());
    }
    assert!(
        LockTable::open(ws)
            .unwrap()
            .snapshot()
            .unwrap()
            .holders
            .is_empty()
    );
}

#[test]
fn racers_reclaiming_a_dead_holders_lock_produce_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let (mut holder, mut out) = racer(ws.root(), "shared/file.rs", "holder", "hold");
    let held = line(&mut out);
    let stale: u64 = held.trim_start_matches("HELD ").parse().unwrap();
    holder.kill().unwrap(); // SIGKILL: its record stays, its kernel lock goes
    holder.wait().unwrap();
    race(&ws, "shared/file.rs", stale);
}

#[test]
fn racers_reclaiming_an_expired_lease_produce_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let g = FileLock::new(&ws, ResourceName::new("lease/x").unwrap())
        .agent(AgentId::new("cli-agent").unwrap())
        .ttl(std::time::Duration::from_millis(1))
        .try_acquire("short lease")
        .unwrap()
        .unwrap();
    let info = g.detach().unwrap(); // an agent lease, no live process: only expiry ends it
    while maos_coordination::core::now_ms() <= info.expires_at {
        std::thread::yield_now();
    }
    race(&ws, "lease/x", info.token.0);
}

#[test]
fn a_killed_waiter_leaves_the_queue_and_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let res = ResourceName::new("q").unwrap();
    let holder = FileLock::new(&ws, res.clone())
        .try_acquire("hold")
        .unwrap()
        .unwrap();
    let (mut waiter, _out) = racer(ws.root(), "q", "doomed", "wait");
    let table = LockTable::open(&ws).unwrap();
    while table.snapshot().unwrap().waiters.is_empty() {
        std::thread::yield_now();
    }
    waiter.kill().unwrap();
    waiter.wait().unwrap();
    holder.release().unwrap();
    // First come, first served would make us wait behind the queued waiter; it is dead, so
    // the next attempt removes it and takes the lock at once.
    let g = FileLock::new(&ws, res).try_acquire("next").unwrap();
    assert!(g.is_some());
    assert!(table.snapshot().unwrap().waiters.is_empty());
}
