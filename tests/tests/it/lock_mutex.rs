//! Mutual exclusion across processes with holders killed by SIGKILL mid-section.
//!
//! 8 worker processes (tests/src/bin/lock_worker.rs) each run N critical sections that
//! increment a shared counter file and log entry and exit. Three holders are SIGKILLed while
//! inside a section (they block there, holding the lock, until the test kills them) and are
//! restarted for their remaining sections. At the end: the counter equals the number of
//! completed sections, no two sections overlapped, fencing tokens strictly increased, and
//! every process finished. N = 300 by default (about 5 s in a debug build), 1000 under `maos_tests::slow_tests()`.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use maos_coordination::Workspace;

const WORKERS: usize = 8;

fn spawn(
    ws: &Path,
    data: &Path,
    w: usize,
    from: usize,
    to: usize,
    hang: i64,
    tx: &mpsc::Sender<(usize, String)>,
) -> Child {
    let mut child = crate::helper("lock_worker")
        .args([
            ws.to_str().unwrap(),
            data.to_str().unwrap(),
            &w.to_string(),
            &from.to_string(),
            &to.to_string(),
            &hang.to_string(),
        ])
        .env_remove("MAOS_AGENT_ID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn lock_worker");
    let out = child.stdout.take().unwrap();
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((w, line)).is_err() {
                break;
            }
        }
    });
    child
}

#[test]
fn eight_processes_never_overlap_and_survive_sigkill() {
    let n = if maos_tests::slow_tests() { 1000 } else { 300 };
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Workers 1, 4 and 6 hang (and are killed) inside one section each.
    let hangs: HashMap<usize, usize> = [(1, n / 3), (4, n / 2), (6, 2 * n / 3)].into();
    let (tx, rx) = mpsc::channel();
    let mut children: HashMap<usize, Child> = HashMap::new();
    for w in 0..WORKERS {
        let hang = hangs.get(&w).map_or(-1, |&h| h as i64);
        children.insert(w, spawn(ws.root(), &data, w, 0, n, hang, &tx));
    }
    let mut finished = 0;
    let mut killed = Vec::new();
    while finished < WORKERS {
        let (w, line) = rx
            .recv_timeout(Duration::from_secs(600))
            .expect("workers made no progress for 10 minutes");
        if let Some(i) = line.strip_prefix("INSIDE ") {
            let i: usize = i.parse().unwrap();
            let mut c = children.remove(&w).unwrap();
            c.kill().unwrap(); // SIGKILL while it holds the lock mid-section
            c.wait().unwrap();
            killed.push((w, i));
            children.insert(w, spawn(ws.root(), &data, w, i + 1, n, -1, &tx));
        } else if line == "DONE" {
            let st = children.get_mut(&w).unwrap().wait().unwrap();
            assert!(st.success(), "worker {w} failed: {st}");
            finished += 1;
        } else {
            panic!("unexpected output from worker {w}: {line}");
        }
    }
    assert_eq!(killed.len(), hangs.len());

    let log = std::fs::read_to_string(data.join("log")).unwrap();
    let mut inside: Option<(usize, usize, u64)> = None;
    let mut completed = 0;
    let mut last_token = 0;
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (w, i, t): (usize, usize, u64) = (
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        );
        match f[0] {
            "enter" => {
                if let Some((pw, pi, _)) = inside {
                    assert!(
                        killed.contains(&(pw, pi)),
                        "section {w}/{i} entered while {pw}/{pi} was inside"
                    );
                }
                assert!(t > last_token, "fencing token {t} after {last_token}");
                last_token = t;
                inside = Some((w, i, t));
            }
            "exit" => {
                assert_eq!(
                    inside,
                    Some((w, i, t)),
                    "exit of a section that is not inside"
                );
                inside = None;
                completed += 1;
            }
            other => panic!("bad log line {other}"),
        }
    }
    let counter: usize = std::fs::read_to_string(data.join("counter"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(counter, completed);
    assert_eq!(completed, WORKERS * n - killed.len());
}
