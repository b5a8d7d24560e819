//! `maos merge ...` through the real binary.

// Fixture helpers outside #[test] functions: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use maos_tests::merge_fixtures::{Repo, diverged, numbered, numbered_with};

use crate::util::{Exit, Maos, Run};

fn conflicting() -> Repo {
    diverged(
        |r| r.write("api.rs", numbered(10)),
        |r| r.write("api.rs", numbered_with(10, 3, "target")),
        |r| {
            r.write("api.rs", numbered_with(10, 3, "source"));
            r.write("own.txt", "own\n");
        },
    )
}

#[test]
fn check_exits_0_when_clean_and_4_with_conflicts() {
    let r = conflicting();
    let out = Maos::new(r.path())
        .agent("a")
        .run(["merge", "check", "source", "main"]);
    out.assert_code(Exit::Conflicts);
    let text = out.stdout();
    assert!(
        text.contains("content") && text.contains("api.rs"),
        "{text}"
    );
    assert!(text.contains("line 3"), "{text}");

    let out = Maos::new(r.path())
        .agent("a")
        .run(["--json", "merge", "check", "source"]);
    out.assert_code(Exit::Conflicts);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["target"], "main",
        "TARGET defaults to the checked-out branch"
    );
    assert_eq!(v["conflicts"][0]["path"], "api.rs");
    assert_eq!(v["conflicts"][0]["kind"], "content");
    assert_eq!(v["conflicts"][0]["regions"][0]["source"]["start"], 3);

    r.git(&["checkout", "-q", "-b", "clean", "main~1"]);
    r.write("other.txt", "x\n");
    r.commit_all("clean change");
    r.checkout("main", false);
    let out = Maos::new(r.path())
        .agent("a")
        .run(["merge", "check", "clean", "main"]);
    out.assert_code(Exit::Ok);
    assert!(out.stdout().contains("cleanly"));

    let out = Maos::new(r.path())
        .agent("a")
        .run(["merge", "check", "no-such-branch", "main"]);
    out.assert_code(Exit::Error);
    out.stderr_has("no-such-branch");
}

#[test]
fn check_all_prints_the_pairwise_matrix() {
    let r = Repo::new();
    r.write("shared.txt", numbered(10));
    r.commit_all("base");
    for (b, line) in [("b1", "one"), ("b2", "two")] {
        r.checkout(b, true);
        r.write("shared.txt", numbered_with(10, 2, line));
        r.commit_all(b);
        r.checkout("main", false);
    }
    for (agent, b) in [("x1", "b1"), ("x2", "b2")] {
        let out = Maos::new(r.path())
            .agent(agent)
            .run(["agents", "register", "--branch", b]);
        out.ok();
    }
    let out = Maos::new(r.path())
        .agent("x1")
        .run(["--json", "merge", "check", "--all", "--target", "main"]);
    out.assert_code(Exit::Conflicts);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vs_target"].as_array().unwrap().len(), 2);
    // The same conflict objects as `merge check --json`.
    let c = &v["pairwise"][0]["conflicts"][0];
    assert_eq!(c["path"], "shared.txt");
    assert_eq!(c["kind"], "content");
    assert_eq!(c["regions"][0]["source"]["start"], 2);
    let single = Maos::new(r.path())
        .agent("x1")
        .run(["--json", "merge", "check", "b2", "b1"]);
    let single: serde_json::Value = serde_json::from_slice(&single.stdout).unwrap();
    assert_eq!(&single["conflicts"][0], c);
    let out = Maos::new(r.path())
        .agent("x1")
        .run(["merge", "check", "--all"]);
    out.stdout_has("pairwise");

    // A label over 30 characters keeps the verdicts in one column.
    let long = "agent/a-branch-name-well-over-thirty-characters";
    r.checkout(long, true);
    r.write("other.txt", "new\n");
    r.commit_all("long");
    r.checkout("main", false);
    Maos::new(r.path())
        .agent("x3")
        .run(["agents", "register", "--branch", long])
        .ok();
    let out = Maos::new(r.path())
        .agent("x1")
        .run(["merge", "check", "--all", "--worktree"]);
    let text = out.stdout();
    let columns: Vec<usize> = text
        .lines()
        .skip_while(|l| !l.starts_with("against"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            l.find(" clean")
                .or_else(|| l.find(" 1 conflict"))
                .unwrap_or_else(|| panic!("no verdict in {l:?}"))
        })
        .collect();
    assert_eq!(columns.len(), 3, "{text}");
    assert!(columns.iter().all(|c| *c == columns[0]), "{text}");
    // --worktree with no registered worktree says so instead of silently comparing branches.
    out.stderr_has("no worktree registered for x1, x2, x3");
}

#[test]
fn prepare_resolve_run_and_queue() {
    let r = conflicting();
    let out = Maos::new(r.path())
        .agent("m")
        .run(["--json", "merge", "prepare", "source", "main"]);
    out.assert_code(Exit::Conflicts);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["suggested_strategy"]["strategy"], "manual");

    let out = Maos::new(r.path())
        .agent("m")
        .run(["--json", "merge", "resolve", "source", "main"]);
    // Conflicts were found (and handed to resolvers): exit 4, like check and prepare.
    out.assert_code(Exit::Conflicts);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let task = v["resolution"]["conflict_tasks"][0]["task"]
        .as_str()
        .unwrap()
        .to_owned();
    // Resolving again reuses the open tasks instead of creating a second set.
    let again = Maos::new(r.path())
        .agent("m")
        .run(["--json", "merge", "resolve", "source", "main"]);
    again.assert_code(Exit::Conflicts);
    let v2: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v2["resolution"]["conflict_tasks"][0]["task"], task.as_str());
    let out = Maos::new(r.path())
        .agent("m")
        .run(["--json", "task", "show", &task]);
    out.ok();
    out.stdout_has("api.rs");

    let out = Maos::new(r.path())
        .agent("m")
        .run(["merge", "run", "source", "main"]);
    out.assert_code(Exit::Conflicts);

    // A clean branch merges through the queue; the conflicting one stays blocked.
    r.git(&["branch", "clean", "main"]);
    r.git(&["checkout", "-q", "clean"]);
    r.write("c.txt", "c\n");
    r.commit_all("c");
    r.checkout("main", false);
    for b in ["source", "clean"] {
        let out = Maos::new(r.path())
            .agent("m")
            .run(["merge", "queue", "add", b, "main"]);
        out.ok();
    }
    let out = Maos::new(r.path())
        .agent("m")
        .run(["merge", "queue", "run"]);
    out.assert_code(Exit::Conflicts);
    let out = Maos::new(r.path())
        .agent("m")
        .run(["--json", "merge", "queue", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["status"], "blocked");
    assert_eq!(v[1]["status"], "merged");
    assert_eq!(r.git(&["show", "main:c.txt"]), "c");

    let out = Maos::new(r.path())
        .agent("m")
        .run(["merge", "run", "clean", "main"]);
    out.assert_code(Exit::Ok);
    out.stdout_has("already contains");
}

#[test]
fn run_refuses_a_dirty_checked_out_target() {
    let r = Repo::new();
    r.checkout("ff", true);
    r.write("f.txt", "f\n");
    r.commit_all("f");
    r.checkout("main", false);
    r.write("README", "dirty\n");
    let out = Maos::new(r.path())
        .agent("m")
        .run(["merge", "run", "ff", "main"]);
    out.assert_code(Exit::Error);
    out.stderr_has("uncommitted changes");
}

#[test]
fn concurrent_merges_into_one_target_lose_nothing() {
    // Several processes merge different branches into the checked-out main at once: the
    // merge lock serialises them, every ref move is a compare-and-swap, none is lost.
    let r = Repo::new();
    let n = if maos_tests::slow_tests() { 12 } else { 5 };
    for i in 0..n {
        r.git(&["branch", &format!("b{i}"), "main"]);
        r.checkout(&format!("b{i}"), false);
        r.write(&format!("file{i}.txt"), format!("{i}\n"));
        r.commit_all(&format!("b{i}"));
        r.checkout("main", false);
    }
    let children: Vec<_> = (0..n)
        .map(|i| {
            Maos::new(r.path())
                .agent(&format!("m{i}"))
                .cmd()
                .args(["merge", "run", &format!("b{i}"), "main"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = Run::wait(c);
        out.assert_code(Exit::Ok);
    }
    for i in 0..n {
        assert_eq!(
            r.git(&["show", &format!("main:file{i}.txt")]),
            i.to_string()
        );
        assert_eq!(r.read(&format!("file{i}.txt")), format!("{i}\n"));
    }
    assert_eq!(r.git(&["status", "--porcelain"]), "");
}
