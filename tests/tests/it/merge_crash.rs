//! A merge into a checked-out branch killed (SIGKILL) at each of its steps: no edit is lost,
//! the branch is never left looking dirty, the next run finishes the job, and the queue
//! entry is merged exactly once.

// Test fixtures: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;

use maos_coordination::merge::{EntryStatus, MergeCoordinator, MergeQueue};
use maos_coordination::{AgentId, Workspace};
use maos_tests::merge_fixtures::Repo;

/// main (checked out at the workspace root) and a diverged `feature` that edits a.txt,
/// deletes gone.txt and adds new/b.txt; a queue entry merges feature into main.
fn setup() -> (Repo, Workspace) {
    let repo = Repo::new();
    repo.write("a.txt", "one\ntwo\nthree\n");
    repo.write("gone.txt", "soon gone\n");
    repo.write("c.txt", "c\n");
    repo.commit_all("base");
    repo.checkout("feature", true);
    repo.write("a.txt", "one\nTWO (feature)\nthree\n");
    std::fs::remove_file(repo.path().join("gone.txt")).unwrap();
    repo.write("new/b.txt", "b\n");
    repo.commit_all("feature work");
    repo.checkout("main", false);
    repo.write("c.txt", "c on main\n");
    repo.commit_all("main work");
    let ws = Workspace::init(repo.path()).unwrap();
    queue(&ws).add("feature", "main").unwrap();
    (repo, ws)
}

fn queue(ws: &Workspace) -> MergeQueue {
    MergeQueue::new(MergeCoordinator::new(ws, AgentId::new("merger").unwrap()).unwrap())
}

/// Runs the queue in a helper process, kills it once it reports `pause`, after `meanwhile`
/// ran (the helper sits at that step).
fn kill_at(ws: &Workspace, pause: &str, meanwhile: impl FnOnce()) {
    let mut child = crate::helper("merge_crash")
        .arg(ws.root())
        .arg(pause)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(l)) if l == "paused" => break,
            Some(Ok(l)) => seen.push(l),
            _ => {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "the helper never reached {pause} (steps {seen:?}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    meanwhile();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn merges_on_main(repo: &Repo) -> usize {
    repo.git(&["rev-list", "--merges", "main"]).lines().count()
}

/// After the crash and a second run: merged once, the worktree and index are main's tree
/// (only the untracked file written during the crash differs), nothing pending, and the
/// branch takes the next merge.
fn assert_recovered(repo: &Repo, ws: &Workspace) {
    let run = queue(ws).run_blocking().unwrap();
    let entries = queue(ws).list().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].status, EntryStatus::Merged, "{run:?}");
    assert_eq!(merges_on_main(repo), 1, "merged exactly once");
    assert_eq!(repo.git(&["status", "--porcelain"]), "?? scratch.txt");
    assert_eq!(repo.read("scratch.txt"), "written during the merge\n");
    assert_eq!(repo.read("a.txt"), "one\nTWO (feature)\nthree\n");
    assert_eq!(repo.read("new/b.txt"), "b\n");
    assert!(!repo.path().join("gone.txt").exists());
    let pending = ws.merge_dir().join("pending");
    let left: Vec<_> = std::fs::read_dir(&pending)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "intent records left: {left:?}");
    // Not stuck: the next branch merges into the checked-out main.
    repo.checkout("next", true);
    repo.git(&["reset", "-q", "--hard", "main"]);
    std::fs::remove_file(repo.path().join("scratch.txt")).unwrap();
    repo.write("z.txt", "z\n");
    repo.commit_all("next work");
    repo.checkout("main", false);
    repo.write("scratch.txt", "written during the merge\n");
    let e = queue(ws).add("next", "main").unwrap();
    let run = queue(ws).run_blocking().unwrap();
    assert_eq!(run.merged, [e.id], "{run:?}");
    assert_eq!(repo.read("z.txt"), "z\n");
}

#[test]
fn a_merge_killed_at_any_step_is_finished_by_the_next_run() {
    for step in [
        "IntentWritten",
        "RefMoved",
        "FileUpdated",
        "WorktreesUpdated",
        "QueueEntryMerged",
    ] {
        let (repo, ws) = setup();
        kill_at(&ws, step, || {
            repo.write("scratch.txt", "written during the merge\n");
        });
        assert_recovered(&repo, &ws);
    }
}

/// Killed right after the ref moved, while the user edits a file the merge changes: the
/// edit survives (never overwritten), every other file is brought along.
#[test]
fn an_edit_made_while_a_merge_was_interrupted_is_never_overwritten() {
    let (repo, ws) = setup();
    kill_at(&ws, "RefMoved", || {
        repo.write("a.txt", "my edit\n");
    });
    let kept = MergeCoordinator::new(&ws, AgentId::new("merger").unwrap())
        .unwrap()
        .recover("main")
        .unwrap();
    assert_eq!(kept, ["a.txt"]);
    assert_eq!(repo.read("a.txt"), "my edit\n");
    assert_eq!(repo.read("new/b.txt"), "b\n");
    assert!(!repo.path().join("gone.txt").exists());
    // Only a.txt shows: its index entry keeps the pre-merge version, the file the edit.
    assert_eq!(repo.git(&["status", "--porcelain"]), "MM a.txt");
    assert_eq!(merges_on_main(&repo), 1);
}
