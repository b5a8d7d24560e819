//! maos-merge with the other crates: who touched what, preparation under the merge lock,
//! resolution tasks and messages, CAS merges, the queue, and the two-agent end-to-end story.

// Fixture helpers outside #[test] functions: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use maos_coordination::comm::{Cursor, FileChannel, Filter};
use maos_coordination::merge::{
    Attribution, ConflictKind, ConflictNotice, EntryStatus, Error, MergeCoordinator, MergeOutcome,
    MergeQueue, MergeStrategy, Side,
};
use maos_coordination::track::{TaskStatus, TaskTracker};
use maos_coordination::{AgentId, AgentRegistry, Registration, Workspace};
use maos_tests::merge_fixtures::{Repo, numbered, numbered_with};

fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn commit_as(dir: &Path, msg: &str, who: Option<&str>) {
    maos_tests::git(dir, &["add", "-A"]);
    let msg = match who {
        Some(a) => format!("{msg}\n\nMaos-Agent: {a}"),
        None => msg.to_owned(),
    };
    maos_tests::git(dir, &["commit", "-q", "-m", &msg]);
}

/// main holds api.rs; alice (trailer) and bob (registry branch map) each change line 5 and
/// add their own file on branches `alice` and `bob`, in their own worktrees.
struct Story {
    repo: Repo,
    ws: Workspace,
    _wts: tempfile::TempDir,
    alice_wt: std::path::PathBuf,
    bob_wt: std::path::PathBuf,
}

fn story() -> Story {
    let repo = Repo::new();
    repo.write("api.rs", numbered(20));
    repo.commit_all("base api");
    let ws = Workspace::init(repo.path()).unwrap();
    let reg = AgentRegistry::new(&ws);
    let wts = tempfile::tempdir().unwrap();
    let alice_wt = wts.path().join("alice");
    let bob_wt = wts.path().join("bob");
    for (who, wt) in [("alice", &alice_wt), ("bob", &bob_wt)] {
        let mut r = Registration::new(agent(who)).branch(who);
        r.worktree = Some(wt.clone());
        reg.register(r).unwrap();
    }
    repo.git(&[
        "worktree",
        "add",
        "-q",
        "-b",
        "alice",
        alice_wt.to_str().unwrap(),
    ]);
    repo.git(&[
        "worktree",
        "add",
        "-q",
        "-b",
        "bob",
        bob_wt.to_str().unwrap(),
    ]);
    std::fs::write(
        alice_wt.join("api.rs"),
        numbered_with(20, 5, "fn users() // alice"),
    )
    .unwrap();
    std::fs::write(alice_wt.join("alice.txt"), "alice's work\n").unwrap();
    commit_as(&alice_wt, "alice: users endpoint", Some("alice"));
    std::fs::write(
        bob_wt.join("api.rs"),
        numbered_with(20, 5, "fn orders() // bob"),
    )
    .unwrap();
    std::fs::write(bob_wt.join("bob.txt"), "bob's work\n").unwrap();
    commit_as(&bob_wt, "bob: orders endpoint", None);
    Story {
        repo,
        ws,
        _wts: wts,
        alice_wt,
        bob_wt,
    }
}

#[tokio::test]
async fn prepare_reports_who_touched_what_and_a_resolver() {
    let s = story();
    let coord = MergeCoordinator::new(&s.ws, agent("merger")).unwrap();
    let prep = coord.prepare_merge("bob", "alice").await.unwrap();
    assert_eq!(prep.conflicts.len(), 1, "{prep:#?}");
    let c = &prep.conflicts[0];
    assert_eq!(c.conflict.kind, ConflictKind::Content);
    assert_eq!(c.conflict.path, "api.rs");
    assert_eq!(c.conflict.regions[0].source.start, 5);
    // Blame: bob last changed the source side's lines (via the registry's branch map),
    // alice the target side's (via her trailer).
    assert_eq!(c.source_actors[0].agent, Some(agent("bob")));
    assert_eq!(c.source_actors[0].attribution, Attribution::Branch);
    assert_eq!(c.target_actors[0].agent, Some(agent("alice")));
    assert_eq!(c.target_actors[0].attribution, Attribution::Trailer);
    assert_eq!(c.suggested_resolver, Some(agent("bob")));
    match &prep.suggested_strategy {
        MergeStrategy::Manual { resolvers } => {
            assert_eq!(resolvers.get("api.rs"), Some(&Some(agent("bob"))));
        }
        other => panic!("expected manual, got {other:?}"),
    }
    let api = prep
        .affected_files
        .iter()
        .find(|f| f.path == "api.rs")
        .unwrap();
    assert_eq!(api.side, Side::Both);
    assert!(api.conflicted);
    assert_eq!(prep.agent_modifications["bob"], vec!["api.rs", "bob.txt"]);
    assert_eq!(
        prep.agent_modifications["alice"],
        vec!["alice.txt", "api.rs"]
    );

    // Against main, alice is a fast-forward and bob too.
    let ff = coord.prepare_merge("alice", "main").await.unwrap();
    assert_eq!(ff.suggested_strategy, MergeStrategy::FastForward);
}

#[tokio::test]
async fn clean_merge_creates_a_merge_commit_and_moves_the_checked_out_target() {
    let s = story();
    // Make bob's change non-conflicting: revert his api.rs edit.
    std::fs::write(s.bob_wt.join("api.rs"), numbered(20)).unwrap();
    commit_as(&s.bob_wt, "bob: keep api.rs", None);
    let coord = MergeCoordinator::new(&s.ws, agent("merger")).unwrap();
    let out = coord.merge("alice", "main").await.unwrap();
    assert!(matches!(out, MergeOutcome::FastForward { .. }), "{out:?}");
    let prep = coord.prepare_merge("bob", "main").await.unwrap();
    assert_eq!(prep.suggested_strategy, MergeStrategy::CleanMerge);
    let out = coord.merge("bob", "main").await.unwrap();
    let MergeOutcome::Merged { commit, .. } = out else {
        panic!("expected a merge commit, got {out:?}");
    };
    let parents = s.repo.git(&["rev-list", "--parents", "-n", "1", &commit]);
    assert_eq!(
        parents.split(' ').count(),
        3,
        "a merge commit has two parents"
    );
    let msg = s.repo.git(&["log", "-1", "--format=%B", &commit]);
    assert!(msg.starts_with("Merge branch 'bob' into main"), "{msg}");
    assert!(msg.contains("Maos-Agent: merger"), "{msg}");
    // main is checked out in the repository's worktree: it was brought along, clean.
    assert_eq!(s.repo.read("bob.txt"), "bob's work\n");
    assert_eq!(s.repo.read("alice.txt"), "alice's work\n");
    assert_eq!(s.repo.git(&["status", "--porcelain"]), "");
    assert!(matches!(
        coord.merge("bob", "main").await.unwrap(),
        MergeOutcome::UpToDate { .. }
    ));
}

#[tokio::test]
async fn a_dirty_checked_out_target_is_refused() {
    let s = story();
    s.repo.write("api.rs", "uncommitted\n");
    let before = s.repo.git(&["rev-parse", "main"]);
    let coord = MergeCoordinator::new(&s.ws, agent("merger")).unwrap();
    let err = coord.merge("alice", "main").await.unwrap_err();
    assert!(matches!(err, Error::DirtyCheckout { .. }), "{err}");
    assert!(err.to_string().contains("uncommitted changes"), "{err}");
    assert_eq!(s.repo.git(&["rev-parse", "main"]), before);
    assert_eq!(s.repo.read("api.rs"), "uncommitted\n");
}

#[tokio::test]
async fn a_concurrent_move_of_the_target_is_detected() {
    let s = story();
    let coord = MergeCoordinator::new(&s.ws, agent("merger")).unwrap();
    std::fs::write(s.bob_wt.join("api.rs"), numbered(20)).unwrap();
    commit_as(&s.bob_wt, "bob: keep api.rs", None);
    // `integration` is not checked out anywhere: only the ref's compare-and-swap guards it.
    s.repo.git(&["branch", "integration", "alice"]);
    let seen = s.repo.git(&["rev-parse", "integration"]);
    // Someone else moves it after the caller looked.
    s.repo.git(&["branch", "-f", "integration", "main"]);
    let moved = s.repo.git(&["rev-parse", "integration"]);
    let err = coord
        .merge_expecting("bob", "integration", &seen)
        .unwrap_err();
    assert!(matches!(err, Error::ConcurrentUpdate { .. }), "{err}");
    assert_eq!(
        s.repo.git(&["rev-parse", "integration"]),
        moved,
        "the ref was not moved"
    );
    // Against the commit it really points at, the merge goes through.
    let out = coord.merge_expecting("bob", "integration", &moved).unwrap();
    assert!(matches!(out, MergeOutcome::FastForward { .. }), "{out:?}");

    // A checked-out target (alice's worktree) that moved is refused before its files change.
    let seen = s.repo.git(&["rev-parse", "alice"]);
    std::fs::write(s.alice_wt.join("late.txt"), "late\n").unwrap();
    commit_as(&s.alice_wt, "alice: a late commit", Some("alice"));
    let err = coord.merge_expecting("bob", "alice", &seen).unwrap_err();
    assert!(matches!(err, Error::ConcurrentUpdate { .. }), "{err}");
    assert_eq!(
        maos_tests::git(&s.alice_wt, &["status", "--porcelain"]).stdout,
        b"".to_vec()
    );
    assert!(!s.alice_wt.join("bob.txt").exists());
}

#[tokio::test]
async fn two_agents_conflict_resolve_and_the_queue_merges_both() {
    let s = story();
    let merger = MergeCoordinator::new(&s.ws, agent("merger")).unwrap();
    // The prediction sees the two agents' branches conflict before anything merges.
    let p = merger.predict_agents("main", false).unwrap();
    assert!(p.vs_target.iter().all(|x| x.is_clean()));
    let kinds: Vec<(&str, ConflictKind)> = p.pairwise[0]
        .conflicts
        .iter()
        .map(|c| (c.path.as_str(), c.kind))
        .collect();
    assert_eq!(kinds, [("api.rs", ConflictKind::Content)]);
    // The same conflict objects as `check`: line ranges included.
    assert!(!p.pairwise[0].conflicts[0].regions.is_empty());

    // Alice's work goes in first.
    let queue = MergeQueue::new(merger.clone());
    let a = queue.add("alice", "main").unwrap();
    let run = queue.run().await.unwrap();
    assert_eq!(run.merged, vec![a.id]);

    // prepare: bob into main now conflicts; bob should resolve.
    let prep = merger.prepare_merge("bob", "main").await.unwrap();
    assert_eq!(prep.conflicts.len(), 1, "{prep:#?}");
    assert_eq!(prep.conflicts[0].suggested_resolver, Some(agent("bob")));
    assert!(matches!(
        prep.suggested_strategy,
        MergeStrategy::Manual { .. }
    ));

    // resolve: the tasks and the messages appear.
    let res = merger.coordinate_resolution(&prep).await.unwrap();
    assert_eq!(res.conflict_tasks.len(), 1);
    assert_eq!(res.conflict_tasks[0].assigned_to, Some(agent("bob")));
    assert_eq!(res.notified, vec![agent("alice"), agent("bob")]);
    let tracker = TaskTracker::open(&s.ws).unwrap();
    let task = tracker
        .get_blocking(&res.conflict_tasks[0].task)
        .unwrap()
        .unwrap();
    assert_eq!(task.assigned_to, Some(agent("bob")));
    assert!(task.labels.contains(&"merge-conflict".to_owned()));
    assert_eq!(task.metadata["merge.path"], "api.rs");
    let merge_task = tracker.get_blocking(&res.merge_task).unwrap().unwrap();
    assert_eq!(
        merge_task.dependencies,
        vec![res.conflict_tasks[0].task.clone()]
    );
    for (who, resolves) in [("bob", true), ("alice", false)] {
        let inbox = FileChannel::inbox(&s.ws, &agent(who)).unwrap();
        let batch = inbox
            .receive_blocking::<ConflictNotice>(
                &Cursor::start(),
                &Filter::for_agent(&s.ws, agent(who)).unwrap(),
            )
            .unwrap();
        assert_eq!(batch.messages.len(), 1, "{who}");
        let n = &batch.messages[0].message.payload;
        assert_eq!(n.kind, "merge_conflicts");
        assert_eq!(n.files[0].path, "api.rs");
        assert_eq!(n.files[0].lines[0].start, 5);
        assert_eq!(n.files[0].you_resolve, resolves);
        assert_eq!(n.files[0].task, res.conflict_tasks[0].task);
        assert_eq!(n.merge_task, res.merge_task);
    }

    // Queued before it is resolved, bob's entry stays blocked (and does not duplicate
    // tasks on a second run).
    let b = queue.add("bob", "main").unwrap();
    assert_eq!(
        queue.add("bob", "main").unwrap().id,
        b.id,
        "no duplicate entries"
    );
    let run = queue.run().await.unwrap();
    assert_eq!(run.blocked, vec![b.id]);
    let adopted = run.entries[0].resolution.clone().unwrap();
    assert_eq!(
        adopted.merge_task, res.merge_task,
        "the queue adopts the open tasks"
    );
    assert_eq!(adopted.conflict_tasks, res.conflict_tasks);
    let run = queue.run().await.unwrap();
    assert_eq!(run.entries[0].resolution, Some(adopted));

    // The agent resolves on its branch: merges main, keeps both endpoints, commits, and
    // completes its tasks.
    let out = std::process::Command::new("git")
        .current_dir(&s.bob_wt)
        .args(["merge", "-q", "main", "-m", "merge main"])
        .env("GIT_AUTHOR_NAME", "bob")
        .env("GIT_AUTHOR_EMAIL", "bob@maos.invalid")
        .env("GIT_COMMITTER_NAME", "bob")
        .env("GIT_COMMITTER_EMAIL", "bob@maos.invalid")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the merge conflicts in bob's worktree"
    );
    let resolved = numbered_with(20, 5, "fn users() // alice\nfn orders() // bob");
    std::fs::write(s.bob_wt.join("api.rs"), &resolved).unwrap();
    commit_as(&s.bob_wt, "bob: resolve api.rs", Some("bob"));
    for t in &res.conflict_tasks {
        tracker
            .update_status_blocking(&t.task, TaskStatus::InProgress, None)
            .unwrap();
        tracker
            .update_status_blocking(&t.task, TaskStatus::Completed, Some("kept both"))
            .unwrap();
    }
    let progress = merger
        .wait_for_resolution(&res, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(progress.is_resolved());

    // The queue merges bob; the merge tasks are completed.
    let run = queue.run().await.unwrap();
    assert_eq!(run.merged, vec![b.id], "{run:#?}");
    assert_eq!(
        tracker
            .get_blocking(&res.merge_task)
            .unwrap()
            .unwrap()
            .status,
        TaskStatus::Completed
    );
    // main holds both agents' work, and so does the checked-out main worktree.
    let show = |p: &str| s.repo.git(&["show", &format!("main:{p}")]);
    assert_eq!(show("alice.txt"), "alice's work");
    assert_eq!(show("bob.txt"), "bob's work");
    let api = show("api.rs");
    assert!(
        api.contains("fn users() // alice") && api.contains("fn orders() // bob"),
        "{api}"
    );
    assert_eq!(s.repo.read("api.rs"), resolved);
    assert!(
        queue
            .list()
            .unwrap()
            .iter()
            .all(|e| e.status == EntryStatus::Merged)
    );
}

#[tokio::test]
async fn a_conflicting_entry_never_blocks_the_ones_behind_it() {
    let s = story();
    // carol's branch is independent of both.
    let carol_wt = s._wts.path().join("carol");
    s.repo.git(&[
        "worktree",
        "add",
        "-q",
        "-b",
        "carol",
        carol_wt.to_str().unwrap(),
        "main",
    ]);
    std::fs::write(carol_wt.join("carol.txt"), "carol\n").unwrap();
    commit_as(&carol_wt, "carol", Some("carol"));
    let merger = MergeCoordinator::new(&s.ws, agent("merger")).unwrap();
    let queue = MergeQueue::new(merger);
    let a = queue.add("alice", "main").unwrap();
    let b = queue.add("bob", "main").unwrap();
    let c = queue.add("carol", "main").unwrap();
    let x = queue.add("no-such-branch", "main").unwrap();
    let run = queue.run().await.unwrap();
    assert_eq!(run.merged, vec![a.id, c.id]);
    assert_eq!(run.blocked, vec![b.id]);
    assert_eq!(run.failed, vec![x.id]);
    // The conflicting entry turned into resolution tasks for bob.
    let blocked = run.entries.iter().find(|e| e.id == b.id).unwrap();
    let res = blocked.resolution.as_ref().unwrap();
    assert_eq!(res.conflict_tasks.len(), 1);
    assert_eq!(res.conflict_tasks[0].assigned_to, Some(agent("bob")));
    assert!(
        run.entries
            .iter()
            .find(|e| e.id == x.id)
            .unwrap()
            .error
            .is_some()
    );
    assert_eq!(s.repo.git(&["show", "main:carol.txt"]), "carol");
}

#[tokio::test]
async fn prediction_over_agents_can_include_uncommitted_work() {
    let s = story();
    std::fs::write(s.alice_wt.join("README"), "alice's uncommitted readme\n").unwrap();
    std::fs::write(s.bob_wt.join("README"), "bob's uncommitted readme\n").unwrap();
    let coord = MergeCoordinator::new(&s.ws, agent("merger")).unwrap();
    let committed = coord.predict_agents("main", false).unwrap();
    assert_eq!(committed.pairwise.len(), 1);
    assert_eq!(committed.pairwise[0].target, "alice (alice)");
    assert_eq!(committed.pairwise[0].source, "bob (bob)");
    let paths = |p: &maos_coordination::merge::PairResult| {
        p.conflicts
            .iter()
            .map(|c| c.path.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&committed.pairwise[0]), ["api.rs"]);
    let live = coord.predict_agents("main", true).unwrap();
    assert_eq!(paths(&live.pairwise[0]), ["README", "api.rs"]);
    assert!(live.vs_target.iter().all(|p| p.is_clean()));
    // The worktrees are untouched.
    let st = maos_tests::git(&s.bob_wt, &["status", "--porcelain"]);
    assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), "M README");
}
