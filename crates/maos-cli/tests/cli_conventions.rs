//! Conventions every command keeps: bad values are usage errors (2), "nothing to do" is 3 with
//! a JSON document for scripts, unknown revisions are refused when given, not later.

use std::path::Path;
use std::process::Command;

use maos_tests::{git, maos_at, output, stderr, stdout};

fn maos(ws: &Path, agent: &str) -> Command {
    maos_at(Path::new(env!("CARGO_BIN_EXE_maos")), ws, agent)
}

#[test]
fn a_bad_status_filter_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(maos(dir.path(), "a").args(["task", "list", "--status", "bogus"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bogus"), "{}", stderr(&out));
}

#[test]
fn claiming_with_nothing_ready_prints_null_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(maos(dir.path(), "a").args(["--json", "task", "claim"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "null");
    assert!(
        stderr(&out).contains("no task is ready"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_merge_queue_refuses_unknown_revisions_when_they_are_added() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join("a.txt"), "a\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    let out = output(maos(dir.path(), "a").args(["merge", "queue", "add", "nosuch", "main"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    let list = output(maos(dir.path(), "a").args(["--json", "merge", "queue", "list"]));
    assert_eq!(stdout(&list).trim(), "[]");
}

#[test]
fn merge_check_worktree_defaults_to_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join("a.txt"), "a\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "init"]);
    std::fs::write(dir.path().join("a.txt"), "changed\n").unwrap();
    let out = output(maos(dir.path(), "a").current_dir(dir.path()).args([
        "merge",
        "check",
        "main",
        "main",
        "--worktree",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
