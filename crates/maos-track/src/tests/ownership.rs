//! Who may do what (only the assignee moves its task), cancellation, edits, comments,
//! history, the rules docs/protocol.md states for revisions and timestamps, compact
//! notifications that name their sender, and pages.

use std::time::Duration;

use maos_core::{AgentId, Priority, Workspace};

use crate::{
    Amendment, Edit, Error, EventKind, Options, Ownership, Query, Task, TaskStatus, TaskTracker,
    Update,
};

fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn open_as(dir: &std::path::Path, who: &str) -> TaskTracker {
    let ws = Workspace::open(dir).unwrap();
    TaskTracker::open_with(
        &ws,
        Options::default()
            .publish(false)
            .release_dead_claims(false)
            .agent(agent(who)),
    )
    .unwrap()
}

fn setup() -> (tempfile::TempDir, TaskTracker) {
    let dir = tempfile::tempdir().unwrap();
    Workspace::init(dir.path()).unwrap();
    let t = open_as(dir.path(), "lead");
    (dir, t)
}

/// Issue 12: after a dead agent's task was re-assigned to w2, `maos --agent w1 task fail ID`
/// succeeded. Only the assignee moves its task; others need force, recorded with the actor.
#[test]
fn only_the_assignee_moves_its_task() {
    let (d, lead) = setup();
    let x = lead.create_task_blocking(&Task::new("x")).unwrap();
    let w1 = open_as(d.path(), "w1");
    let w2 = open_as(d.path(), "w2");
    assert_eq!(w1.claim_blocking(&agent("w1")).unwrap().unwrap().id, x);
    // w1 is declared dead: its claims go back to the queue, and w2 takes the task.
    assert_eq!(
        lead.release_agent_blocking(&agent("w1"), "released: agent w1 died")
            .unwrap(),
        vec![x.clone()]
    );
    assert_eq!(w2.claim_blocking(&agent("w2")).unwrap().unwrap().id, x);

    for status in [
        TaskStatus::Failed,
        TaskStatus::Completed,
        TaskStatus::Pending,
        TaskStatus::Cancelled,
    ] {
        let err = w1.update_status_blocking(&x, status, None).unwrap_err();
        let Error::NotAssignee {
            assignee, actor, ..
        } = &err
        else {
            panic!("{status}: {err}")
        };
        assert_eq!(
            (assignee.as_str(), actor.as_ref().map(AgentId::as_str)),
            ("w2", Some("w1"))
        );
        assert!(err.to_string().contains("--force"), "{err}");
    }
    assert!(matches!(
        w1.assign_blocking(&x, Some(&agent("w1")), Ownership::Respect),
        Err(Error::NotAssignee { .. })
    ));
    assert!(matches!(
        w1.assign_blocking(&x, None, Ownership::Respect),
        Err(Error::NotAssignee { .. })
    ));
    assert_eq!(
        w1.get_blocking(&x).unwrap().unwrap().status,
        TaskStatus::InProgress
    );
    // With force it goes through, and the history says who forced it.
    let t = w1
        .update_blocking(
            &x,
            &Update::status(TaskStatus::Failed)
                .note("w2 is stuck")
                .force(),
        )
        .unwrap();
    assert_eq!(t.status, TaskStatus::Failed);
    let last = w1
        .show_blocking(&x)
        .unwrap()
        .unwrap()
        .history
        .pop()
        .unwrap();
    assert_eq!(last.by, Some(agent("w1")));
    assert!(last.forced);
    assert!(matches!(
        last.what,
        EventKind::Status {
            to: TaskStatus::Failed,
            ..
        }
    ));
    // The assignee itself needs no force.
    w2.update_status_blocking(&x, TaskStatus::Pending, None)
        .unwrap();
}

#[test]
fn unassign_gives_the_task_back_and_handing_over_keeps_it_active() {
    let (d, lead) = setup();
    let x = lead.create_task_blocking(&Task::new("x")).unwrap();
    let y = lead.create_task_blocking(&Task::new("y")).unwrap();
    let w1 = open_as(d.path(), "w1");
    w1.claim_blocking(&agent("w1")).unwrap();
    w1.claim_blocking(&agent("w1")).unwrap();
    // Giving up an active task puts it back in the queue, unassigned.
    let t = w1.assign_blocking(&x, None, Ownership::Respect).unwrap();
    assert_eq!((t.status, t.assigned_to), (TaskStatus::Pending, None));
    // Handing over an active task keeps it in progress, with the new owner.
    let t = w1
        .amend_blocking(&y, &{
            let mut a = Amendment::new();
            a.assignee = Some(Some(agent("w2")));
            a
        })
        .unwrap();
    assert_eq!(
        (t.status, t.assigned_to),
        (TaskStatus::InProgress, Some(agent("w2")))
    );
    // Now y is w2's.
    assert!(matches!(
        w1.update_status_blocking(&y, TaskStatus::Completed, None),
        Err(Error::NotAssignee { .. })
    ));
    open_as(d.path(), "w2")
        .update_status_blocking(&y, TaskStatus::Completed, None)
        .unwrap();
}

/// Issue 13: `task cancel` is a status of its own; dependents are told (their reason says
/// why they stay blocked); a reset reopens it; removing the dependency unblocks them.
#[test]
fn cancel_tells_dependents_and_reopen_or_removal_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let lead = TaskTracker::open_with(&ws, Options::default().agent(agent("lead"))).unwrap();
    let a = lead.create_task_blocking(&Task::new("a")).unwrap();
    let b = lead
        .create_task_blocking(&Task::new("b").after(a.clone()))
        .unwrap();
    let c = lead
        .create_task_blocking(&Task::new("c").after(a.clone()))
        .unwrap();
    let t = lead
        .cancel_blocking(&a, Some("not needed"), Ownership::Respect)
        .unwrap();
    assert_eq!(t.status, TaskStatus::Cancelled);
    for dep in [&b, &c] {
        let t = lead.get_blocking(dep).unwrap().unwrap();
        assert_eq!(t.status, TaskStatus::Blocked);
        assert_eq!(
            t.blocked_reason.as_deref(),
            Some(format!("dependency {a} was cancelled: not needed").as_str())
        );
    }
    // The notification of the cancel names the dependents it told.
    let (event, sender) = last_event(&ws);
    assert_eq!(sender, agent("lead"));
    let told: Vec<_> = event
        .changes
        .iter()
        .filter(|c| c.reason.is_some())
        .map(|c| c.task.clone())
        .collect();
    assert_eq!(told, vec![b.clone(), c.clone()]);
    assert!(lead.claim_blocking(&agent("lead")).unwrap().is_none());
    // b drops the dependency: ready.
    let t = lead.remove_dependency_blocking(&b, &a).unwrap();
    assert_eq!((t.status, t.blocked_reason), (TaskStatus::Pending, None));
    // a is reopened: c's reason is cleared (still blocked: a is not done).
    lead.update_status_blocking(&a, TaskStatus::Pending, None)
        .unwrap();
    let t = lead.get_blocking(&c).unwrap().unwrap();
    assert_eq!((t.status, t.blocked_reason), (TaskStatus::Blocked, None));
    assert_eq!(lead.counts_blocking().unwrap().cancelled, 0);
}

/// The last task notification and the agent that sent it.
fn last_event(ws: &Workspace) -> (crate::TaskEvent, AgentId) {
    let ch =
        maos_comm::FileChannel::open(ws, maos_comm::topic_channel(crate::TOPIC).unwrap()).unwrap();
    let batch = ch
        .receive_blocking::<crate::TaskEvent>(
            &maos_comm::Cursor::start(),
            &maos_comm::Filter::Everything,
        )
        .unwrap();
    let m = batch.messages.last().unwrap();
    (m.message.payload.clone(), m.message.sender.clone())
}

/// Issues 12 and 13: notifications carry the agent that caused them (as the message's
/// sender) and only ids and statuses.
#[test]
fn notifications_are_compact_and_name_their_sender() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    // The handle's agent is "lead", but the claim is w7's: the message says w7.
    let t = TaskTracker::open_with(&ws, Options::default().agent(agent("lead"))).unwrap();
    let mut task = Task::new("a name that is not repeated in notifications");
    task.description = "x".repeat(2000);
    let a = t.create_task_blocking(&task).unwrap();
    t.claim_blocking(&agent("w7")).unwrap();
    let (ev, sender) = last_event(&ws);
    assert_eq!(sender, agent("w7"));
    assert_eq!(ev.changes.len(), 1);
    assert_eq!(
        (
            ev.changes[0].task.clone(),
            ev.changes[0].from,
            ev.changes[0].to
        ),
        (a.clone(), Some(TaskStatus::Pending), TaskStatus::InProgress)
    );
    let json = serde_json::to_string(&ev).unwrap();
    assert!(!json.contains("not repeated"), "{json}");
    assert!(json.len() < 100, "{} bytes: {json}", json.len());
    // A comment touches the task without a status change.
    t.comment_blocking(&a, "hello").unwrap();
    let (ev, _) = last_event(&ws);
    assert!(ev.changes.is_empty());
    assert_eq!(ev.touched, vec![a]);
}

/// Issue 13: `task show` has the full history of who did what; comments do not change the
/// task; edits are recorded with their new values.
#[test]
fn history_records_who_did_what() {
    let (d, lead) = setup();
    let a = lead
        .create_task_blocking(&Task::new("a").estimate(Duration::from_secs(60)))
        .unwrap();
    let w = open_as(d.path(), "w");
    w.claim_blocking(&agent("w")).unwrap();
    let rev = w.get_blocking(&a).unwrap().unwrap().revision;
    lead.comment_blocking(&a, "looks good").unwrap();
    assert_eq!(
        w.get_blocking(&a).unwrap().unwrap().revision,
        rev,
        "a comment is not a change"
    );
    lead.edit_blocking(&a, &Edit::new().name("A").priority(Priority::High))
        .unwrap();
    w.update_status_blocking(&a, TaskStatus::Review, Some("PR #1"))
        .unwrap();
    w.update_status_blocking(&a, TaskStatus::Completed, None)
        .unwrap();
    let h = w.show_blocking(&a).unwrap().unwrap().history;
    let got: Vec<(String, &str)> = h
        .iter()
        .map(|e| {
            let what = match &e.what {
                EventKind::Created => "created",
                EventKind::Claimed { .. } => "claimed",
                EventKind::Comment { .. } => "comment",
                EventKind::Edited { .. } => "edited",
                EventKind::Status {
                    to: TaskStatus::Review,
                    ..
                } => "review",
                EventKind::Status {
                    to: TaskStatus::Completed,
                    ..
                } => "completed",
                _ => "other",
            };
            (
                e.by.as_ref().map(|b| b.to_string()).unwrap_or_default(),
                what,
            )
        })
        .collect();
    let want: Vec<(String, &str)> = [
        ("lead", "created"),
        ("w", "claimed"),
        ("lead", "comment"),
        ("lead", "edited"),
        ("w", "review"),
        ("w", "completed"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), *b))
    .collect();
    assert_eq!(got, want);
    assert!(
        h.windows(2)
            .all(|p| p[0].seq < p[1].seq && p[0].at <= p[1].at)
    );
    // History survives compaction.
    lead.compact_blocking().unwrap();
    assert_eq!(
        open_as(d.path(), "r")
            .show_blocking(&a)
            .unwrap()
            .unwrap()
            .history,
        h
    );
}

/// docs/protocol.md (issue 12): entering `completed` sets `updated_at` (and revision + 1)
/// on the dependents it unblocks; leaving `failed` adds 1 to `revision` and sets
/// `updated_at` on the dependents whose reason it clears; `assign` and `add_dependency` set
/// `updated_at` and add 1 to `revision`.
#[test]
fn revisions_and_timestamps_follow_the_spec() {
    let (_d, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let b = t
        .create_task_blocking(&Task::new("b").after(a.clone()))
        .unwrap();
    let get = |id| t.get_blocking(id).unwrap().unwrap();
    assert_eq!((get(&a).revision, get(&b).revision), (1, 1));
    t.update_status_blocking(&a, TaskStatus::InProgress, None)
        .unwrap();
    t.update_status_blocking(&a, TaskStatus::Failed, Some("x"))
        .unwrap();
    let fb = get(&b);
    assert_eq!(fb.revision, 2, "the failure's reason was set on b");
    t.update_status_blocking(&a, TaskStatus::Pending, None)
        .unwrap();
    let rb = get(&b);
    assert_eq!(rb.revision, 3, "leaving failed cleared b's reason");
    assert!(rb.updated_at >= fb.updated_at);
    t.update_status_blocking(&a, TaskStatus::InProgress, None)
        .unwrap();
    let done = t
        .update_status_blocking(&a, TaskStatus::Completed, None)
        .unwrap();
    let ub = get(&b);
    assert_eq!((ub.status, ub.revision), (TaskStatus::Pending, 4));
    assert_eq!(ub.updated_at, done.updated_at, "same record, same time");
    let c = t.create_task_blocking(&Task::new("c")).unwrap();
    let before = get(&c);
    let after = t
        .assign_blocking(&c, Some(&agent("x")), Ownership::Respect)
        .unwrap();
    assert_eq!(after.revision, before.revision + 1);
    assert!(after.updated_at >= before.updated_at);
    let after2 = t.add_dependency_blocking(&c, &b).unwrap();
    assert_eq!(after2.revision, after.revision + 1);
    assert_eq!(after2.status, TaskStatus::Blocked);
}

/// `task list --assignee --status --label` and pages; `task ready` pages.
#[test]
fn pages_and_filters() {
    let (_d, t) = setup();
    let mut ids = Vec::new();
    for i in 0..30 {
        let mut task = Task::new(format!("t{i}"));
        if i % 3 == 0 {
            task.labels = vec!["api".into()];
        }
        if i % 5 == 0 {
            task.assigned_to = Some(agent("w5"));
        }
        task.priority = if i == 29 {
            Priority::High
        } else {
            Priority::Normal
        };
        ids.push(t.create_task_blocking(&task).unwrap());
    }
    t.compact_blocking().unwrap();
    t.update_status_blocking(&ids[3], TaskStatus::InProgress, None)
        .unwrap();
    let page = t.list_page_blocking(&Query::all().page(0, 10)).unwrap();
    assert_eq!(page.tasks.len(), 10);
    assert!(page.more);
    assert_eq!(page.total, 30);
    let page = t.list_page_blocking(&Query::all().page(25, 10)).unwrap();
    assert_eq!(page.tasks.len(), 5);
    assert!(!page.more);
    let api: Vec<_> = t
        .list_page_blocking(&Query::all().label("api"))
        .unwrap()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(api, ids.iter().step_by(3).cloned().collect::<Vec<_>>());
    let w5 = t
        .list_page_blocking(&Query::all().assignee(agent("w5")))
        .unwrap();
    assert_eq!(w5.tasks.len(), 6);
    let active = t
        .list_page_blocking(&Query::all().status(TaskStatus::InProgress))
        .unwrap();
    assert_eq!(
        active.tasks.iter().map(|t| &t.id).collect::<Vec<_>>(),
        vec![&ids[3]]
    );
    let ready = t.ready_page_blocking(5).unwrap();
    assert_eq!(ready.total, 29);
    assert_eq!(ready.tasks.len(), 5);
    assert_eq!(ready.tasks[0].id, ids[29], "high priority first");
    let counts = t.counts_blocking().unwrap();
    assert_eq!(
        (counts.total, counts.pending, counts.in_progress),
        (30, 29, 1)
    );
}

/// Field limits: what a writer accepts, replay accepts; the rest is refused up front.
#[test]
fn oversize_fields_are_refused_with_their_limit() {
    let (_d, t) = setup();
    let err = t
        .create_task_blocking(&Task::new("x".repeat(crate::MAX_NAME_BYTES + 1)))
        .unwrap_err();
    assert!(err.to_string().contains("limit is 1024"), "{err}");
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let err = t
        .comment_blocking(&a, &"y".repeat(crate::MAX_TEXT_BYTES + 1))
        .unwrap_err();
    assert!(err.to_string().contains("limit is 262144"), "{err}");
    let err = t.edit_blocking(&a, &Edit::new()).unwrap_err();
    assert!(err.to_string().contains("changes nothing"), "{err}");
}
