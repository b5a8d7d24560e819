//! Power cuts (issue 11): a workload of concurrent writers (creates, batch creates, claims,
//! completions, compactions) is recorded with `fsx::sim`; for hundreds of cut points
//! (thousands with `MAOS_SLOW_TESTS=1`) the directory a power cut could leave is rebuilt and
//! checked: it opens, no acknowledged change is lost, no task is claimed twice, the doctor
//! finds no error, and writes go on.

use std::collections::HashMap;
use std::sync::Mutex;

use maos_core::doctor::Severity;
use maos_core::fsx::sim::Recording;
use maos_core::{AgentId, TaskId, Workspace};

use crate::{EventKind, Options, Task, TaskStatus, TaskTracker};

#[derive(Debug, Clone)]
enum Ack {
    Created(TaskId),
    Claimed(TaskId, AgentId),
    Completed(TaskId),
}

fn options(agent: &AgentId) -> Options {
    Options::default()
        .publish(false)
        .release_dead_claims(false)
        .agent(agent.clone())
        .compact_records(40)
}

fn t_show(t: &TaskTracker, id: &TaskId) -> Vec<crate::Event> {
    t.show_blocking(id).unwrap().unwrap().history
}

/// Images go to memory when the machine has a tmpfs: the cuts are many, the files small.
fn scratch() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

fn slow() -> bool {
    std::env::var("MAOS_SLOW_TESTS").is_ok_and(|v| v == "1")
}

#[test]
fn power_cuts_lose_no_acknowledged_change_and_claim_no_task_twice() {
    let cuts = if slow() { 3000 } else { 300 };
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let rec = Recording::start(dir.path()).unwrap();
    let acks: Mutex<Vec<(usize, Ack)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for k in 0..3 {
            let (ws, rec, acks) = (&ws, &rec, &acks);
            s.spawn(move || {
                let me = AgentId::new(format!("w{k}")).unwrap();
                let t = TaskTracker::open_with(ws, options(&me)).unwrap();
                let ack = |a: Ack| acks.lock().unwrap().push((rec.len(), a));
                for i in 0..40 {
                    if i % 7 == 3 {
                        let batch: Vec<Task> =
                            (0..4).map(|j| Task::new(format!("w{k}-{i}-{j}"))).collect();
                        for id in t.create_tasks_blocking(&batch).unwrap() {
                            ack(Ack::Created(id));
                        }
                    } else {
                        let id = t
                            .create_task_blocking(&Task::new(format!("w{k}-{i}")))
                            .unwrap();
                        ack(Ack::Created(id));
                    }
                    if i % 2 == 1
                        && let Some(c) = t.claim_blocking(&me).unwrap()
                    {
                        ack(Ack::Claimed(c.id.clone(), me.clone()));
                        t.update_status_blocking(&c.id, TaskStatus::Completed, None)
                            .unwrap();
                        ack(Ack::Completed(c.id));
                    }
                }
            });
        }
    });
    let acks = acks.into_inner().unwrap();
    let generation = crate::store::read_current(&ws.tasks_dir())
        .unwrap()
        .unwrap_or(0);
    assert!(
        generation >= 3,
        "the workload crossed several compactions ({generation})"
    );
    for seed in 0..cuts {
        let cut = rec.random_cut(seed);
        let img = scratch();
        rec.image(&cut, img.path()).unwrap();
        let ws = Workspace::open(img.path()).unwrap();
        let me = AgentId::new("after").unwrap();
        let t = TaskTracker::open_with(&ws, options(&me)).unwrap();
        let tracker = t.clone();
        let tasks: HashMap<TaskId, Task> = match t.list_blocking() {
            Ok(v) => v.into_iter().map(|t| (t.id.clone(), t)).collect(),
            Err(e) => panic!("cut {cut:?}: the store does not open: {e}"),
        };
        for (at, ack) in acks.iter().filter(|(at, _)| *at <= cut.at) {
            match ack {
                Ack::Created(id) => {
                    assert!(
                        tasks.contains_key(id),
                        "cut {cut:?}: created {id} (acked at {at}) is lost"
                    );
                }
                Ack::Claimed(id, who) => {
                    let t = &tasks[id];
                    assert!(
                        t.attempts == 1 && t.assigned_to.as_ref() == Some(who),
                        "cut {cut:?}: the claim of {id} by {who} (acked at {at}) is lost: {t:?}"
                    );
                    if seed % 10 == 0 {
                        let h = t_show(&tracker, id);
                        assert!(
                            h.iter().any(
                                |e| matches!(&e.what, EventKind::Claimed { agent } if agent == who)
                            ),
                            "cut {cut:?}: the history of {id} lacks its claim by {who}"
                        );
                    }
                }
                Ack::Completed(id) => assert_eq!(
                    tasks.get(id).map(|t| t.status),
                    Some(TaskStatus::Completed),
                    "cut {cut:?}: the completion of {id} (acked at {at}) is lost"
                ),
            }
        }
        // Every start of work in this workload is a claim: more than one attempt would be
        // a task handed out twice.
        for (id, task) in &tasks {
            assert!(
                task.attempts <= 1,
                "cut {cut:?}: {id} was claimed {} times",
                task.attempts
            );
        }
        let findings = crate::doctor(&ws, false).unwrap();
        assert!(
            findings.iter().all(|f| f.severity < Severity::Error),
            "cut {cut:?}: {findings:?}"
        );
        // Writes go on, and claims never hand out a task twice (every fifth cut: each write
        // is an fsync, the slow part of this test).
        if seed % 5 != 0 {
            continue;
        }
        t.create_task_blocking(&Task::new("after the cut")).unwrap();
        let mut claimed = 0;
        while claimed < 3
            && let Some(c) = t.claim_blocking(&me).unwrap()
        {
            assert_eq!(c.attempts, 1, "cut {cut:?}: {} claimed again", c.id);
            claimed += 1;
        }
        assert!(
            claimed >= 1,
            "cut {cut:?}: the task created after the cut is claimable"
        );
    }
}
