//! Review: who touched what across merge commits on an agent's branch.

#![allow(clippy::unwrap_used)]

use maos_coordination::merge::MergeCoordinator;
use maos_coordination::{AgentId, Workspace};
use maos_tests::merge_fixtures::Repo;

/// alice merges main into her branch before asking to merge back: the merge commit's diff
/// against its first parent holds main's own changes, which are not alice's work and do not
/// differ between the two sides. Only files the merge commit changed against every parent
/// (a conflict resolution, an evil merge) are the merger's.
#[test]
fn merging_the_target_into_the_source_does_not_attribute_the_targets_files() {
    let repo = Repo::new();
    repo.write("shared.txt", "base\n");
    repo.commit_all("base");
    repo.git(&["checkout", "-q", "-b", "alice"]);
    repo.write("alice.txt", "alice\n");
    repo.commit_all("alice's work\n\nMaos-Agent: alice");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("main.txt", "main\n");
    repo.commit_all("main's work");
    repo.git(&["checkout", "-q", "alice"]);
    repo.git(&[
        "merge",
        "-q",
        "--no-edit",
        "-m",
        "merge main\n\nMaos-Agent: alice",
        "main",
    ]);
    assert_eq!(repo.read("main.txt"), "main\n", "the merge happened");
    repo.git(&["checkout", "-q", "main"]);

    let ws = Workspace::init(repo.path()).unwrap();
    let coord = MergeCoordinator::new(&ws, AgentId::new("reviewer").unwrap()).unwrap();
    let prep = coord.prepare_unlocked("alice", "main").unwrap();
    let paths: Vec<&str> = prep
        .affected_files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(paths, ["alice.txt"], "{:#?}", prep.affected_files);
    let alice = prep
        .agent_modifications
        .get("alice")
        .cloned()
        .unwrap_or_default();
    assert_eq!(alice, ["alice.txt"], "{:#?}", prep.agent_modifications);
}
