//! Review: the merge queue on a hand-edited or hostile queue file.

#![allow(clippy::unwrap_used)]

use maos_coordination::merge::{EntryStatus, MergeCoordinator, MergeQueue};
use maos_coordination::{AgentId, Workspace};
use maos_tests::merge_fixtures::Repo;

#[test]
fn an_entry_at_the_largest_attempt_count_is_processed_without_overflow() {
    let repo = Repo::new();
    repo.git(&["checkout", "-q", "-b", "feat"]);
    repo.write("f.txt", "feature\n");
    repo.commit_all("feature");
    repo.git(&["checkout", "-q", "main"]);
    let ws = Workspace::init(repo.path()).unwrap();
    let coord = MergeCoordinator::new(&ws, AgentId::new("reviewer").unwrap()).unwrap();
    let queue = MergeQueue::new(coord);
    queue.add("feat", "main").unwrap();
    let path = ws.merge_dir().join("queue.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["entries"][0]["attempts"] = u32::MAX.into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let run = queue.run_blocking().unwrap();
    assert_eq!(run.entries.len(), 1);
    assert_eq!(run.entries[0].status, EntryStatus::Merged);
    assert_eq!(run.entries[0].attempts, u32::MAX);
}

#[test]
fn a_queue_whose_next_id_cannot_grow_is_a_clear_error() {
    let repo = Repo::new();
    let ws = Workspace::init(repo.path()).unwrap();
    let coord = MergeCoordinator::new(&ws, AgentId::new("reviewer").unwrap()).unwrap();
    let queue = MergeQueue::new(coord);
    std::fs::create_dir_all(ws.merge_dir()).unwrap();
    let path = ws.merge_dir().join("queue.json");
    let state = serde_json::json!({"version": 1, "next_id": u64::MAX, "entries": []});
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let err = queue.add("feat", "main").unwrap_err().to_string();
    assert!(err.contains("queue.json"), "{err}");
    assert!(queue.list().unwrap().is_empty(), "nothing was added");
}
