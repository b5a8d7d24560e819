//! Unit tests of the tracker against a real temporary workspace.

use std::time::Duration;

use maos_core::{AgentId, Priority, TaskId, Workspace};

use crate::{Error, Options, Task, TaskStatus, TaskTracker, Update};

fn setup() -> (tempfile::TempDir, TaskTracker) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let t = TaskTracker::open_with(&ws, Options::default().publish(false)).unwrap();
    (dir, t)
}

fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

#[test]
fn create_blocked_then_unblocked_by_completion() {
    let (_d, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let b = t
        .create_task_blocking(&Task::new("b").after(a.clone()))
        .unwrap();
    assert_eq!(
        t.get_blocking(&a).unwrap().unwrap().status,
        TaskStatus::Pending
    );
    assert_eq!(
        t.get_blocking(&b).unwrap().unwrap().status,
        TaskStatus::Blocked
    );
    let err = t
        .update_status_blocking(&b, TaskStatus::InProgress, None)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
    t.update_status_blocking(&a, TaskStatus::InProgress, None)
        .unwrap();
    let done = t
        .update_status_blocking(&a, TaskStatus::Completed, Some("ok"))
        .unwrap();
    assert_eq!(done.note.as_deref(), Some("ok"));
    assert!(done.completed_at.is_some());
    assert_eq!(
        t.get_blocking(&b).unwrap().unwrap().status,
        TaskStatus::Pending
    );
    // Completed is final.
    let err = t
        .update_status_blocking(&a, TaskStatus::InProgress, None)
        .unwrap_err();
    assert!(err.to_string().contains("final"), "{err}");
}

#[test]
fn unknown_dependency_and_cycles_are_rejected() {
    let (_d, t) = setup();
    let ghost = TaskId::new();
    let err = t
        .create_task_blocking(&Task::new("x").after(ghost.clone()))
        .unwrap_err();
    assert!(matches!(err, Error::UnknownDependency { ref dependency, .. } if *dependency == ghost));
    let mut a = Task::new("a");
    let mut b = Task::new("b");
    let c = Task::new("c").after(b.id.clone());
    a.dependencies.push(c.id.clone());
    b.dependencies.push(a.id.clone());
    let err = t.create_tasks_blocking(&[a.clone(), b, c]).unwrap_err();
    let Error::Cycle { cycle } = &err else {
        panic!("{err}")
    };
    assert_eq!(cycle.len(), 4);
    assert!(err.to_string().starts_with("dependency cycle: "));
    assert!(
        t.list_blocking().unwrap().is_empty(),
        "nothing of a rejected batch is created"
    );
    let self_dep = Task::new("s");
    let id = self_dep.id.clone();
    let err = t.create_task_blocking(&self_dep.after(id)).unwrap_err();
    assert!(matches!(err, Error::Cycle { .. }));
    // add_dependency closing a cycle.
    let x = t.create_task_blocking(&Task::new("x")).unwrap();
    let y = t
        .create_task_blocking(&Task::new("y").after(x.clone()))
        .unwrap();
    let err = t.add_dependency_blocking(&x, &y).unwrap_err();
    let Error::Cycle { cycle } = err else {
        panic!()
    };
    assert_eq!(cycle, vec![x.clone(), y.clone(), x]);
}

#[test]
fn failure_blocks_dependents_with_reason_and_retry_clears_it() {
    let (_d, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let b = t
        .create_task_blocking(&Task::new("b").after(a.clone()))
        .unwrap();
    t.update_status_blocking(&a, TaskStatus::InProgress, None)
        .unwrap();
    t.update_status_blocking(&a, TaskStatus::Failed, Some("tests red"))
        .unwrap();
    let bt = t.get_blocking(&b).unwrap().unwrap();
    assert_eq!(bt.status, TaskStatus::Blocked);
    assert!(bt.blocked_reason.unwrap().contains("tests red"));
    t.update_status_blocking(&a, TaskStatus::Pending, None)
        .unwrap();
    assert!(
        t.get_blocking(&b)
            .unwrap()
            .unwrap()
            .blocked_reason
            .is_none()
    );
}

#[test]
fn ready_orders_by_priority_then_critical_path() {
    let (_d, t) = setup();
    let short = t.create_task_blocking(&Task::new("short")).unwrap();
    let long = t
        .create_task_blocking(&Task::new("long").estimate(Duration::from_secs(60)))
        .unwrap();
    t.create_task_blocking(
        &Task::new("after long")
            .after(long.clone())
            .estimate(Duration::from_secs(7200)),
    )
    .unwrap();
    let urgent = t
        .create_task_blocking(&Task::new("urgent").priority(Priority::High))
        .unwrap();
    let ready: Vec<TaskId> = t
        .ready_blocking()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ready, vec![urgent, long, short]);
}

#[test]
fn claims_never_hand_out_a_task_twice_and_respect_assignment() {
    let (_d, t) = setup();
    let mine = t
        .create_task_blocking(&Task {
            name: "for b".into(),
            assigned_to: Some(agent("b")),
            ..Task::default()
        })
        .unwrap();
    let free = t.create_task_blocking(&Task::new("free")).unwrap();
    let c1 = t.claim_blocking(&agent("a")).unwrap().unwrap();
    assert_eq!(c1.id, free);
    assert_eq!(c1.status, TaskStatus::InProgress);
    assert_eq!(c1.attempts, 1);
    assert!(t.claim_blocking(&agent("a")).unwrap().is_none());
    let c2 = t.claim_blocking(&agent("b")).unwrap().unwrap();
    assert_eq!(c2.id, mine);
}

#[test]
fn revision_cas_refuses_lost_updates() {
    let (_d, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let r = t.get_blocking(&a).unwrap().unwrap().revision;
    t.update_blocking(
        &a,
        &Update::status(TaskStatus::InProgress).expect_revision(r),
    )
    .unwrap();
    let err = t
        .update_blocking(
            &a,
            &Update::status(TaskStatus::Completed).expect_revision(r),
        )
        .unwrap_err();
    assert!(matches!(err, Error::RevisionMismatch { .. }));
}

#[test]
fn two_trackers_share_state_across_compactions() {
    let (d, t1) = setup();
    let ws = Workspace::open(d.path()).unwrap();
    let t2 = TaskTracker::open_with(&ws, Options::default().publish(false)).unwrap();
    let mut ids = Vec::new();
    for i in 0..1100 {
        ids.push(
            t1.create_task_blocking(&Task::new(format!("t{i}")))
                .unwrap(),
        );
        if i % 500 == 0 {
            assert_eq!(t2.list_blocking().unwrap().len(), i + 1);
        }
    }
    // A compaction happened (more than COMPACT_RECORDS records).
    assert!(t1.dir().join("snapshot.1").exists());
    t2.update_status_blocking(&ids[3], TaskStatus::InProgress, None)
        .unwrap();
    t1.compact_blocking().unwrap();
    t1.compact_blocking().unwrap();
    // t2 fell two generations behind: it reloads the snapshot.
    let listed = t2.list_blocking().unwrap();
    assert_eq!(listed.len(), 1100);
    assert_eq!(listed[3].status, TaskStatus::InProgress);
    let fresh = TaskTracker::open(&ws).unwrap();
    assert_eq!(fresh.list_blocking().unwrap(), t1.list_blocking().unwrap());
}

#[test]
fn torn_tail_is_ignored_by_readers_and_repaired_by_writers() {
    let (d, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let log = t.dir().join("log.0.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\":2,\"at\":1,\"op\":\"sta").unwrap();
    let ws = Workspace::open(d.path()).unwrap();
    let other = TaskTracker::open(&ws).unwrap();
    assert_eq!(other.list_blocking().unwrap().len(), 1);
    other
        .update_status_blocking(&a, TaskStatus::InProgress, None)
        .unwrap();
    let again = TaskTracker::open(&ws).unwrap();
    assert_eq!(
        again.get_blocking(&a).unwrap().unwrap().status,
        TaskStatus::InProgress
    );
}

#[test]
fn prefixes_resolve() {
    let (_d, t) = setup();
    let a = t
        .create_task_blocking(&Task {
            id: TaskId::parse("abc1").unwrap(),
            name: "a".into(),
            ..Task::default()
        })
        .unwrap();
    t.create_task_blocking(&Task {
        id: TaskId::parse("abd2").unwrap(),
        name: "b".into(),
        ..Task::default()
    })
    .unwrap();
    assert_eq!(t.resolve_blocking("abc").unwrap(), a);
    assert!(matches!(
        t.resolve_blocking("ab"),
        Err(Error::AmbiguousPrefix { .. })
    ));
    assert!(matches!(
        t.resolve_blocking("zz"),
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn async_api_round_trip() {
    let (d, anon) = setup();
    let ws = Workspace::open(d.path()).unwrap();
    let t =
        TaskTracker::open_with(&ws, Options::default().publish(false).agent(agent("w"))).unwrap();
    let id = t.create_task(Task::new("async")).await.unwrap();
    let c = t.claim(&agent("w")).await.unwrap().unwrap();
    assert_eq!(c.id, id);
    // The task is w's now: another agent may not move it.
    let err = anon
        .update_status(&id, TaskStatus::Completed, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotAssignee { .. }), "{err}");
    let done = t
        .update_status(&id, TaskStatus::Completed, None)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(t.list().await.unwrap().len(), 1);
}

#[test]
fn fencing_tokens_are_checked() {
    let (d, t) = setup();
    let ws = Workspace::open(d.path()).unwrap();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let res = maos_core::ResourceName::new("src/lib.rs").unwrap();
    let guard = maos_lock::FileLock::new(&ws, res.clone())
        .try_acquire("test")
        .unwrap()
        .unwrap();
    let token = guard.token();
    t.update_blocking(
        &a,
        &Update::status(TaskStatus::InProgress).fenced(res.clone(), token),
    )
    .unwrap();
    guard.release().unwrap();
    let err = t
        .update_blocking(
            &a,
            &Update::status(TaskStatus::Completed).fenced(res, token),
        )
        .unwrap_err();
    assert!(matches!(err, Error::StaleToken { .. }), "{err}");
    assert_eq!(
        t.get_blocking(&a).unwrap().unwrap().status,
        TaskStatus::InProgress
    );
}

#[test]
fn status_changes_are_published_on_the_tasks_topic() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let t = TaskTracker::open_with(&ws, Options::default().agent(agent("pub"))).unwrap();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let b = t
        .create_task_blocking(&Task::new("b").after(a.clone()))
        .unwrap();
    t.update_status_blocking(&a, TaskStatus::InProgress, None)
        .unwrap();
    t.update_status_blocking(&a, TaskStatus::Completed, None)
        .unwrap();
    let ch =
        maos_comm::FileChannel::open(&ws, maos_comm::topic_channel(crate::TOPIC).unwrap()).unwrap();
    let batch = ch
        .receive_blocking::<crate::TaskEvent>(
            &maos_comm::Cursor::start(),
            &maos_comm::Filter::Everything,
        )
        .unwrap();
    let events: Vec<crate::TaskEvent> = batch
        .messages
        .into_iter()
        .map(|d| d.message.payload)
        .collect();
    assert_eq!(events.len(), 4);
    let last = events.last().unwrap();
    assert_eq!(
        last.changes.len(),
        2,
        "the completion and the dependent it unblocked"
    );
    assert_eq!(last.changes[0].to, TaskStatus::Completed);
    assert_eq!(
        (last.changes[1].task.clone(), last.changes[1].to),
        (b, TaskStatus::Pending)
    );
}

/// Completing a task that someone else already started or completed is idempotent: the
/// caller's intent ("this work is done") holds either way, and nothing is written twice.
#[test]
fn complete_is_idempotent_whatever_the_current_status() {
    let (_d, t) = setup();
    let pending = t.create_task_blocking(&Task::new("pending")).unwrap();
    let started = t.create_task_blocking(&Task::new("started")).unwrap();
    let done = t.create_task_blocking(&Task::new("done")).unwrap();
    let review = t.create_task_blocking(&Task::new("review")).unwrap();
    for id in [&started, &done, &review] {
        t.update_status_blocking(id, TaskStatus::InProgress, None)
            .unwrap();
    }
    t.update_status_blocking(&review, TaskStatus::Review, None)
        .unwrap();
    t.update_status_blocking(&done, TaskStatus::Completed, Some("first"))
        .unwrap();
    let before = t.version_blocking().unwrap();
    let again = t.complete_blocking(&done, Some("second")).unwrap();
    assert_eq!(again.status, TaskStatus::Completed);
    assert_eq!(
        again.note.as_deref(),
        Some("first"),
        "the first completion stays"
    );
    assert_eq!(t.version_blocking().unwrap(), before, "nothing was written");
    for id in [&pending, &started, &review] {
        let task = t.complete_blocking(id, Some("merged")).unwrap();
        assert_eq!(task.status, TaskStatus::Completed, "{id}");
        assert_eq!(task.note.as_deref(), Some("merged"));
        assert!(task.started_at.is_some() && task.completed_at.is_some());
    }
    // A blocked or failed task is not silently completed.
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let b = t
        .create_task_blocking(&Task::new("b").after(a.clone()))
        .unwrap();
    assert!(matches!(
        t.complete_blocking(&b, None).unwrap_err(),
        Error::InvalidTransition { .. }
    ));
    t.update_status_blocking(&a, TaskStatus::Failed, None)
        .unwrap();
    assert!(matches!(
        t.complete_blocking(&a, None).unwrap_err(),
        Error::InvalidTransition { .. }
    ));
}

/// A writer killed in the middle of a multi-record append (a multi-page write is cut at a
/// page boundary by SIGKILL) leaves some complete records of its batch: readers must not
/// apply a batch that is not whole (create_tasks is all or none), and the next writer
/// removes it.
#[test]
fn a_torn_batch_is_not_applied_even_when_some_of_its_records_are_whole() {
    let (d, t) = setup();
    let first = t.create_task_blocking(&Task::new("first")).unwrap();
    let batch = [Task::new("x"), Task::new("y"), Task::new("z")];
    t.create_tasks_blocking(&batch).unwrap();
    let log = t.dir().join("log.0.jsonl");
    let bytes = std::fs::read(&log).unwrap();
    let lines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 4, "one record per task");
    // Cut inside the batch's last record: x and y are whole lines, z is torn.
    let cut = lines[2] + (lines[3] - lines[2]) / 2;
    std::fs::write(&log, &bytes[..cut]).unwrap();

    let ws = Workspace::open(d.path()).unwrap();
    let fresh = TaskTracker::open_with(&ws, Options::default().publish(false)).unwrap();
    let names: Vec<String> = fresh
        .list_blocking()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["first"], "all or none of a batch");
    // The next write drops the torn batch and goes on.
    let next = fresh.create_task_blocking(&Task::new("next")).unwrap();
    let again = TaskTracker::open_with(&ws, Options::default().publish(false)).unwrap();
    let ids: Vec<TaskId> = again
        .list_blocking()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, [first, next]);
}

/// Estimates are user input (`--estimate`, or any `Duration`): a chain of huge ones must not
/// overflow the critical path, the ready order, the report or the Gantt chart.
#[test]
fn huge_estimates_saturate_instead_of_overflowing() {
    let (_d, t) = setup();
    let huge = Duration::MAX;
    let a = t
        .create_task_blocking(&Task::new("a").estimate(huge))
        .unwrap();
    let b = t
        .create_task_blocking(&Task::new("b").estimate(huge).after(a.clone()))
        .unwrap();
    t.create_task_blocking(&Task::new("c").estimate(huge).after(b))
        .unwrap();
    let crate::CriticalPath { tasks: path, total } = t.critical_path_blocking().unwrap();
    assert!(!path.is_empty());
    assert_eq!(total, Duration::from_millis(u64::MAX), "saturated");
    assert_eq!(t.ready_blocking().unwrap()[0].id, a);
    let tasks = t.list_blocking().unwrap();
    let r = crate::report(&tasks, maos_core::now_ms());
    assert_eq!(r.critical_path_ms, u64::MAX);
    let g = crate::gantt(&tasks, maos_core::now_ms());
    assert!(g.contains("gantt"), "{g}");
}

mod doctor;
mod ownership;
mod power;
mod replay;
mod sweep;

/// Helpers for tests that forge or damage the store's files.
pub(crate) mod forge {
    use std::io::Write as _;
    use std::path::{Path, PathBuf};

    /// The current generation's log of the workspace at `root`.
    pub(crate) fn log(root: &Path) -> PathBuf {
        let dir = root.join(maos_core::MAOS_DIR).join("tasks");
        let g = crate::store::read_current(&dir).unwrap().unwrap_or(0);
        crate::store::log_path(&dir, g)
    }

    /// The seq of the last complete record of the current log (0 when empty).
    pub(crate) fn last_seq(dir: &Path) -> u64 {
        let text = std::fs::read_to_string(log(dir)).unwrap_or_default();
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["seq"].as_u64())
            .unwrap_or(0)
    }

    /// Appends `record` (an object without `seq`/`at`) as the next record of the log, the
    /// way a buggy or hostile writer would.
    pub(crate) fn append(dir: &Path, mut record: serde_json::Value) {
        let seq = last_seq(dir) + 1;
        record["seq"] = seq.into();
        record["at"] = maos_core::now_ms().into();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log(dir))
            .unwrap();
        writeln!(f, "{record}").unwrap();
    }

    /// Appends raw bytes to the log.
    pub(crate) fn append_raw(dir: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(log(dir))
            .unwrap();
        f.write_all(bytes).unwrap();
    }
}
