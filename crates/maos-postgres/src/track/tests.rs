//! The task graph on a real server (the shared test server).

use super::*;
use crate::registry::PgRegistry;
use crate::server::test_backend;
use maos_core::{Priority, Registration};
use maos_track::EventKind;

fn a(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

#[test]
fn dependencies_claims_revisions_and_the_report() {
    let pg = test_backend("track-basic").unwrap();
    let tr = PgTracker::new(&pg).agent(a("lead"));
    let design = Task::new("design").estimate(Duration::from_secs(1800));
    let backend = Task::new("backend").after(design.id.clone());
    let docs = Task::new("docs").priority(Priority::Low);
    // Given in any order: dependencies are created first.
    tr.create_tasks(&[backend.clone(), design.clone(), docs.clone()])
        .unwrap();
    assert_eq!(
        tr.get(&backend.id).unwrap().unwrap().status,
        TaskStatus::Blocked
    );
    let err = tr
        .create_task(&Task::new("x").after(TaskId::new()))
        .unwrap_err();
    assert!(matches!(err, Error::UnknownDependency { .. }), "{err}");
    let err = tr.create_task(&design).unwrap_err();
    assert!(matches!(err, Error::DuplicateTask { .. }), "{err}");
    // Claim order: the design starts the longest chain, docs is low priority.
    let first = tr.claim(&a("w1")).unwrap().unwrap();
    assert_eq!(first.id, design.id);
    assert_eq!(first.status, TaskStatus::InProgress);
    assert_eq!(first.assigned_to, Some(a("w1")));
    // The lead moves w1's task only by overriding its owner, as on the files.
    let err = tr
        .update(&design.id, &Update::status(TaskStatus::Completed))
        .unwrap_err();
    assert!(matches!(err, Error::NotAssignee { .. }), "{err}");
    let err = tr
        .update(
            &design.id,
            &Update::status(TaskStatus::Completed)
                .expect_revision(1)
                .force(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::RevisionMismatch { .. }), "{err}");
    tr.update(
        &design.id,
        &Update::status(TaskStatus::Completed)
            .expect_revision(first.revision)
            .note("done")
            .force(),
    )
    .unwrap();
    let b = tr.get(&backend.id).unwrap().unwrap();
    assert_eq!(b.status, TaskStatus::Pending);
    let err = tr
        .update(&design.id, &Update::status(TaskStatus::InProgress).force())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
    // Idempotent completion.
    tr.complete(&design.id, None).unwrap();
    tr.complete(&docs.id, Some("skipped")).unwrap();
    let err = tr.add_dependency(&design.id, &backend.id).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    let report = tr.report().unwrap();
    assert_eq!(report.total_tasks, 3);
    assert_eq!(report.completed_tasks, 2);
    assert!(tr.gantt().unwrap().contains("gantt"));
    let (path, _) = tr.critical_path().unwrap();
    assert_eq!(path.first().map(|t| t.id.clone()), Some(design.id.clone()));
    // Another tracker (another machine) sees the same graph and history.
    let other = PgTracker::new(&pg);
    assert_eq!(other.list().unwrap(), tr.list().unwrap());
    assert_eq!(
        other.log_after(0).unwrap().len() as u64,
        other.version().unwrap()
    );
}

#[test]
fn amendments_ownership_comments_and_a_paged_history() {
    let pg = test_backend("track-amend").unwrap();
    let tr = PgTracker::new(&pg).agent(a("lead"));
    let x = Task::new("x");
    let y = Task::new("y").after(x.id.clone());
    tr.create_tasks(&[x.clone(), y.clone()]).unwrap();
    // A cycle through an added dependency is refused, naming it; nothing is written.
    let v = tr.version().unwrap();
    let mut am = Amendment::new();
    am.edit = Edit::new().name("renamed");
    am.add_dependencies = vec![y.id.clone()];
    let err = tr.amend(&x.id, &am).unwrap_err();
    assert!(
        matches!(&err, Error::Cycle { cycle } if *cycle == [x.id.clone(), y.id.clone(), x.id.clone()]),
        "{err}"
    );
    assert_eq!(tr.version().unwrap(), v);
    assert_eq!(tr.get(&x.id).unwrap().unwrap().name, "x");
    let err = tr.amend(&x.id, &Amendment::new()).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    // Removing the only dependency unblocks; a field over its limit is refused.
    let mut am = Amendment::new();
    am.remove_dependencies = vec![x.id.clone()];
    am.edit = Edit::new().priority(maos_core::Priority::High);
    let t = tr.amend(&y.id, &am).unwrap();
    assert_eq!(t.status, TaskStatus::Pending);
    assert_eq!(t.revision, 3, "one revision per record");
    let long = "n".repeat(maos_track::MAX_NAME_BYTES + 1);
    let err = tr.edit(&y.id, &Edit::new().name(long)).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    // Ownership: another agent's task moves only when forced, and the history says so.
    tr.assign(&x.id, Some(&a("w")), Ownership::Respect).unwrap();
    let err = tr.assign(&x.id, None, Ownership::Respect).unwrap_err();
    assert!(matches!(err, Error::NotAssignee { .. }), "{err}");
    let t = tr.assign(&x.id, None, Ownership::Override).unwrap();
    assert_eq!(t.assigned_to, None);
    let d = tr.show(&x.id, 100).unwrap().unwrap();
    let last = d.history.last().unwrap();
    assert!(last.forced, "{last:?}");
    assert_eq!(last.by, Some(a("lead")));
    // Cancelling (refused before) tells a blocked dependent why.
    let z = Task::new("z").after(x.id.clone());
    tr.create_task(&z).unwrap();
    tr.update(
        &x.id,
        &Update::status(TaskStatus::Cancelled).note("dropped"),
    )
    .unwrap();
    assert_eq!(
        tr.get(&z.id).unwrap().unwrap().blocked_reason.as_deref(),
        Some(format!("dependency {} was cancelled: dropped", x.id).as_str())
    );
    // Comments change no revision; a history longer than the limit is paged: the
    // latest events, and how many earlier ones are left out.
    let rev = tr.get(&y.id).unwrap().unwrap().revision;
    for i in 0..15 {
        tr.comment(&y.id, &format!("c{i}")).unwrap();
    }
    let err = tr.comment(&y.id, " ").unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert_eq!(tr.get(&y.id).unwrap().unwrap().revision, rev);
    let d = tr.show(&y.id, 10).unwrap().unwrap();
    assert_eq!(d.history.len(), 10);
    // created, dependency removed, edited, 15 comments: 18 events.
    assert_eq!(d.omitted, 8);
    assert_eq!(
        d.history.first().map(|e| e.what.clone()),
        Some(EventKind::Comment { text: "c5".into() })
    );
    assert_eq!(
        d.history.last().map(|e| e.what.clone()),
        Some(EventKind::Comment { text: "c14".into() })
    );
    let full = tr.show(&y.id, 1000).unwrap().unwrap();
    assert_eq!((full.history.len(), full.omitted), (18, 0));
    assert!(full.history.windows(2).all(|w| w[0].seq <= w[1].seq));
    // Another machine reads the same history.
    assert_eq!(
        PgTracker::new(&pg).show(&y.id, 1000).unwrap().unwrap(),
        full
    );
}

#[test]
fn a_waiter_wakes_on_another_connections_write_and_times_out_without_one() {
    let pg = test_backend("track-wait").unwrap();
    let tr = PgTracker::new(&pg).agent(a("lead"));
    let seen = tr.version().unwrap();
    // Nothing written: the wait ends at its timeout with the same version.
    assert_eq!(
        tr.wait_changed(seen, Duration::from_millis(50)).unwrap(),
        seen
    );
    // Written by another process's connection: the wait returns the new version.
    let other =
        PgTracker::new(&Pg::connect(&pg.inner.url, pg.namespace()).unwrap()).agent(a("other"));
    let waiter = {
        let tr = tr.clone();
        std::thread::spawn(move || tr.wait_changed(seen, Duration::from_secs(60)))
    };
    let hub = pg.hub().unwrap();
    let before = hub.seen();
    other.create_tasks(&[Task::new("news")]).unwrap();
    let now = waiter.join().unwrap().unwrap();
    assert!(now > seen, "{now} after {seen}");
    // It was the write's notification (not the re-check) that reached this process.
    let chan = notify_channel(pg.inner.ns);
    assert!(hub.wait(before, Duration::from_secs(60), |ch, _| ch == chan));
}

#[test]
fn concurrent_claims_never_hand_a_task_out_twice() {
    let pg = test_backend("track-claims").unwrap();
    let tr = PgTracker::new(&pg).agent(a("lead"));
    let tasks: Vec<Task> = (0..40).map(|n| Task::new(format!("t{n}"))).collect();
    tr.create_tasks(&tasks).unwrap();
    let threads: Vec<_> = (0..6)
        .map(|w| {
            let tr = PgTracker::new(&pg);
            std::thread::spawn(move || {
                let me = a(&format!("w{w}"));
                let mut got = Vec::new();
                while let Some(t) = tr.claim(&me).unwrap() {
                    got.push(t.id);
                }
                got
            })
        })
        .collect();
    let mut all: Vec<TaskId> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(all.len(), 40);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "a task was claimed twice");
}

#[test]
fn a_dead_agents_claims_are_released_to_the_next_claim() {
    let url = crate::BackendUrl::parse(&crate::server::shared_url().unwrap()).unwrap();
    let ns = crate::server::unique_namespace("track-dead");
    let pg = Pg::connect_with(
        &url,
        &ns,
        crate::Options::default().dead_grace(Duration::ZERO),
    )
    .unwrap();
    let tr = PgTracker::new(&pg);
    let t = Task::new("only");
    tr.create_task(&t).unwrap();
    {
        let worker = Pg::connect(&url, &ns).unwrap();
        PgRegistry::new(&worker)
            .register(Registration::new(a("gone")))
            .unwrap();
        let mine = PgTracker::new(&worker).claim(&a("gone")).unwrap().unwrap();
        assert_eq!(mine.id, t.id);
        assert!(tr.claim(&a("next")).unwrap().is_none());
    }
    let reg = PgRegistry::new(&pg);
    crate::server::wait_until(Duration::from_secs(30), || {
        reg.liveness_of(&a("gone")).unwrap() == Some(Liveness::Dead)
    });
    let again = tr.claim(&a("next")).unwrap().unwrap();
    assert_eq!(again.id, t.id);
    assert_eq!(again.assigned_to, Some(a("next")));
    assert_eq!(again.attempts, 2);
}
