//! Eight processes claim and complete tasks of a 500-task random DAG until none is left:
//! every task is completed exactly once, and none starts before all its dependencies are
//! completed. The order of events is the order of lines the workers append to one O_APPEND
//! file (kernel-serialised), not wall clocks. A ninth agent claims a task and is killed with
//! SIGKILL: its claim goes back to the queue and is completed by someone else.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::process::Stdio;

use maos_coordination::track::{Options, Task, TaskStatus, TaskTracker};
use maos_coordination::{TaskId, Workspace};

fn random_dag(n: usize, seed: u64) -> Vec<Task> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut tasks: Vec<Task> = Vec::with_capacity(n);
    for i in 0..n {
        let mut t = Task::new(format!("task {i}"));
        for _ in 0..(next() % 4) {
            if i == 0 {
                break;
            }
            let lo = i.saturating_sub(40);
            let j = lo + (next() as usize) % (i - lo);
            let dep = tasks[j].id.clone();
            if !t.dependencies.contains(&dep) {
                t.dependencies.push(dep);
            }
        }
        tasks.push(t);
    }
    tasks
}

#[test]
fn eight_processes_drain_a_random_dag() -> anyhow::Result<()> {
    let n = if maos_tests::slow_tests() { 2000 } else { 500 };
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let tracker = TaskTracker::open_with(&ws, Options::default().publish(false))?;
    let tasks = random_dag(n, 0x5eed);
    tracker.create_tasks_blocking(&tasks)?;

    // The victim claims the best task (a root) and dies holding it.
    let mut victim = crate::helper("track_hold")
        .arg(dir.path())
        .arg("victim")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(victim.stdout.take().expect("piped")).read_line(&mut line)?;
    let held = TaskId::parse(line.trim())?;

    let events = dir.path().join("events.txt");
    let workers: Vec<_> = (0..8)
        .map(|i| {
            crate::helper("track_worker")
                .arg(dir.path())
                .arg(format!("worker-{i}"))
                .arg(&events)
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    victim.kill()?;
    victim.wait()?;
    // Wake the workers (a claim would release it too, on their next wake-up).
    tracker.release_dead_claims_blocking()?;
    let mut total = 0;
    for w in workers {
        let out = w.wait_with_output()?;
        assert!(out.status.success(), "a worker failed");
        total += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<usize>()?;
    }
    assert_eq!(total, n, "the workers completed {total} tasks for {n}");

    let log = std::fs::read_to_string(&events)?;
    let mut start: HashMap<&str, usize> = HashMap::new();
    let mut done: HashMap<&str, usize> = HashMap::new();
    for (i, line) in log.lines().enumerate() {
        let mut parts = line.split(' ');
        let (kind, id) = (parts.next().unwrap(), parts.next().unwrap());
        let map = if kind == "start" {
            &mut start
        } else {
            &mut done
        };
        assert!(map.insert(id, i).is_none(), "{kind} {id} twice");
    }
    assert_eq!(start.len(), n);
    assert_eq!(done.len(), n);
    for t in &tasks {
        let s = start[t.id.as_str()];
        for d in &t.dependencies {
            assert!(
                done[d.as_str()] < s,
                "{} started (line {s}) before its dependency {d} completed (line {})",
                t.id,
                done[d.as_str()]
            );
        }
    }
    // The drain wrote more records than the compaction threshold: readers in other processes
    // followed a log rotation.
    let current: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.tasks_dir().join("current"))?)?;
    assert!(
        current["generation"].as_u64().is_some_and(|g| g >= 1),
        "{current}"
    );
    let fin: HashMap<TaskId, Task> = tracker
        .list_blocking()?
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    assert_eq!(fin.len(), n);
    for t in fin.values() {
        assert_eq!(t.status, TaskStatus::Completed);
        let expected = if t.id == held { 2 } else { 1 };
        assert_eq!(
            t.attempts, expected,
            "{} was started {} times",
            t.id, t.attempts
        );
    }
    Ok(())
}
