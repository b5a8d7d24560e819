//! Review: snapshots of uncommitted changes include files whose names are not UTF-8.

#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;

use maos_coordination::merge::ConflictDetector;
use maos_tests::merge_fixtures::Repo;

#[test]
fn an_uncommitted_change_to_a_non_utf8_path_is_in_the_snapshot() {
    let repo = Repo::new();
    let name = OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(repo.path().join(name), "one\n").unwrap();
    let head = repo.commit_all("latin-1 name");
    std::fs::write(repo.path().join(name), "two\n").unwrap();
    let snap = ConflictDetector::open(repo.path())
        .unwrap()
        .snapshot_worktree(repo.path())
        .unwrap();
    assert_ne!(snap, head, "the change was skipped");
    let out = std::process::Command::new("git")
        .current_dir(repo.path())
        .args(["diff", "--name-only", "-z", &head, &snap])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"caf\xe9.txt\0");
}
