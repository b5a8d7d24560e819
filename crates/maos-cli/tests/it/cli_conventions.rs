//! Conventions every command keeps: bad values are usage errors (2), "nothing to do" is 3 with
//! a JSON document for scripts, unknown revisions are refused when given, not later.

use maos_tests::git;

use crate::util::{Exit, Maos};

#[test]
fn a_bad_status_filter_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Maos::new(dir.path())
        .agent("a")
        .run(["task", "list", "--status", "bogus"]);
    out.assert_code(Exit::Usage);
    out.stderr_has("bogus");
}

#[test]
fn claiming_with_nothing_ready_prints_null_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = Maos::new(dir.path())
        .agent("a")
        .run(["--json", "task", "claim"]);
    out.assert_code(Exit::Busy);
    assert_eq!(out.stdout().trim(), "null");
    out.stderr_has("no task is ready");
}

#[test]
fn the_merge_queue_refuses_unknown_revisions_when_they_are_added() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join("a.txt"), "a\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    let out = Maos::new(dir.path())
        .agent("a")
        .run(["merge", "queue", "add", "nosuch", "main"]);
    out.assert_code(Exit::Error);
    out.stderr_has("nosuch");
    let list = Maos::new(dir.path())
        .agent("a")
        .run(["--json", "merge", "queue", "list"]);
    assert_eq!(list.stdout().trim(), "[]");
}

#[test]
fn merge_check_worktree_defaults_to_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join("a.txt"), "a\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    std::fs::write(dir.path().join("a.txt"), "changed\n").unwrap();
    let out = Maos::new(dir.path()).current_dir(dir.path()).run([
        "merge",
        "check",
        "main",
        "main",
        "--worktree",
    ]);
    out.assert_code(Exit::Ok);
}
