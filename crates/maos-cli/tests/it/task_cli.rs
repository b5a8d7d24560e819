//! `maos task ...` end to end, running the real binary.

use std::path::Path;
use std::process::Stdio;

use crate::util::{Exit, Maos, Run};

fn ok(ws: &Path, agent: &str, args: &[&str]) -> String {
    Maos::new(ws).agent(agent).run(args).ok().stdout()
}

fn maos(ws: &Path, agent: &str, args: &[&str]) -> Run {
    Maos::new(ws).agent(agent).run(args)
}

fn stdout(r: &Run) -> String {
    r.stdout()
}

fn stderr(r: &Run) -> String {
    r.stderr()
}

fn json(ws: &Path, agent: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(ws, agent, &a)).expect("valid JSON")
}

#[test]
fn add_claim_complete_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let design = ok(
        ws,
        "lead",
        &[
            "task",
            "add",
            "Design: API #1",
            "--estimate",
            "90m",
            "--priority",
            "2",
        ],
    );
    let design = design.trim().to_string();
    assert!(design.starts_with('t') && design.len() == 13, "{design}");
    let build = ok(
        ws,
        "lead",
        &[
            "task",
            "add",
            "Build",
            "--after",
            &design[..8],
            "--description",
            "the code",
        ],
    );
    let build = build.trim().to_string();

    let listed = json(ws, "lead", &["task", "list", "--status", "blocked"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], build.as_str());
    let ready = json(ws, "lead", &["task", "ready"]);
    assert_eq!(ready[0]["id"], design.as_str());
    assert!(ok(ws, "lead", &["task", "show", &build]).contains("after:"));

    // A blocked task cannot start.
    let out = Maos::new(ws).agent("dev").run(["task", "start", &build]);
    out.assert_code(Exit::Error);
    out.stderr_has("dependencies are not all completed");

    let claimed = json(ws, "dev", &["task", "claim"]);
    assert_eq!(claimed["id"], design.as_str());
    assert_eq!(claimed["assigned_to"], "dev");
    let out = Maos::new(ws).agent("dev2").run(["task", "claim"]);
    out.assert_code(Exit::Busy); // nothing ready

    ok(ws, "dev", &["task", "review", &design]);
    ok(ws, "dev", &["task", "done", &design, "--note", "approved"]);
    let out = Maos::new(ws).agent("dev").run(["task", "start", &design]);
    out.stderr_has("final");
    assert_eq!(
        json(ws, "dev", &["task", "show", &build])["status"],
        "pending"
    );

    let report = json(ws, "lead", &["task", "report"]);
    assert_eq!(report["total_tasks"], 2);
    assert_eq!(report["completion_percentage"], 50.0);
    assert!(ws.join(".maos/progress.json").exists());
    assert!(ok(ws, "lead", &["task", "report"]).contains("1/2 tasks completed"));

    let gantt = ok(ws, "lead", &["task", "gantt"]);
    assert!(gantt.starts_with("gantt"));
    assert!(gantt.contains("Design#58; API #35;1 :done"), "{gantt}");
    assert!(gantt.contains(&format!("after {design}")), "{gantt}");
    let dot = ok(ws, "lead", &["task", "graph"]);
    assert!(
        dot.contains(&format!("\"{design}\" -> \"{build}\"")),
        "{dot}"
    );
    let mm = ok(ws, "lead", &["task", "graph", "--format", "mermaid"]);
    assert!(
        mm.starts_with("flowchart LR") && mm.contains("n0 --> n1"),
        "{mm}"
    );
    assert!(ok(ws, "lead", &["task", "list"]).contains("50.0%"));
}

#[test]
fn failure_blocks_dependents_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let a = ok(ws, "x", &["task", "add", "a"]).trim().to_string();
    let b = ok(ws, "x", &["task", "add", "b", "--after", &a])
        .trim()
        .to_string();
    ok(ws, "x", &["task", "start", &a]);
    ok(ws, "x", &["task", "fail", &a, "--note", "flaky build"]);
    let shown = json(ws, "x", &["task", "show", &b]);
    assert_eq!(shown["status"], "blocked");
    assert!(
        shown["blocked_reason"]
            .as_str()
            .unwrap()
            .contains("flaky build")
    );
    let out = Maos::new(ws)
        .agent("x")
        .run(["task", "add", "c", "--after", "tzzzzzzzzzzzz"]);
    out.failed();
    out.stderr_has("not found");
    // A stale revision is refused.
    let rev = shown["revision"].as_u64().unwrap();
    ok(ws, "x", &["task", "reset", &a]);
    let out = Maos::new(ws)
        .agent("x")
        .run(["task", "start", &a, "--revision", "1"]);
    out.stderr_has("revision");
    assert!(rev > 0);
}

#[test]
fn watch_wakes_on_changes_and_stops_when_done() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let a = ok(ws, "x", &["task", "add", "only"]).trim().to_string();
    let watcher = Maos::new(ws)
        .agent("viewer")
        .cmd()
        .args([
            "--json",
            "task",
            "watch",
            "--until-done",
            "--timeout",
            "60s",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ok(ws, "x", &["task", "start", &a]);
    ok(ws, "x", &["task", "done", &a]);
    let out = Run::wait(watcher);
    out.ok();
    let last = out.lines().pop().expect("watch printed its progress");
    assert_eq!(last["completed_tasks"], 1);
}

/// Issue 12: after a dead agent's task went to w2, `maos --agent w1 task fail ID` succeeded.
/// Only the assignee moves its task; `--force` overrides and is recorded with the actor.
#[test]
fn only_the_assignee_moves_its_task_and_force_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let id = ok(ws, "lead", &["task", "add", "x"]).trim().to_string();
    assert_eq!(json(ws, "w1", &["task", "claim"])["id"], id.as_str());
    // w1 gives it up; w2 takes it.
    ok(ws, "w1", &["task", "unassign", &id]);
    assert_eq!(json(ws, "w2", &["task", "claim"])["id"], id.as_str());
    for verb in ["fail", "done", "reset", "cancel", "unassign"] {
        let out = maos(ws, "w1", &["task", verb, &id]);
        assert_eq!(out.status.code(), Some(1), "{verb}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("assigned to w2, not w1") && err.contains("--force"),
            "{verb}: {err}"
        );
    }
    let out = maos(ws, "w1", &["task", "edit", &id, "--assignee", "w1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    ok(
        ws,
        "w1",
        &["task", "fail", &id, "--force", "--note", "w2 vanished"],
    );
    let shown = json(ws, "lead", &["task", "show", &id]);
    assert_eq!(shown["status"], "failed");
    let last = shown["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["by"], "w1");
    assert_eq!(last["forced"], true);
    assert!(ok(ws, "lead", &["task", "show", &id]).contains("w1 (forced): failed: w2 vanished"));
}

/// Issue 13: edit, cancel (dependents told), comment, show with timestamps and history,
/// list filters.
#[test]
fn edit_cancel_comment_show_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let a = ok(ws, "lead", &["task", "add", "a", "--label", "api"])
        .trim()
        .to_string();
    let b = ok(ws, "lead", &["task", "add", "b", "--after", &a])
        .trim()
        .to_string();
    let c = ok(ws, "lead", &["task", "add", "c", "--assign", "w9"])
        .trim()
        .to_string();
    let t = json(
        ws,
        "lead",
        &[
            "task",
            "edit",
            &a,
            "--name",
            "A",
            "--estimate",
            "2h",
            "--priority",
            "high",
            "--label",
            "x",
            "--label",
            "y",
        ],
    );
    assert_eq!(t["name"], "A");
    assert_eq!(t["estimate_ms"], 7_200_000);
    assert_eq!(t["priority"], "high");
    assert_eq!(t["labels"], serde_json::json!(["x", "y"]));
    let out = maos(ws, "lead", &["task", "edit", &a]);
    assert_eq!(out.status.code(), Some(2), "nothing to change: usage");
    ok(ws, "someone", &["task", "comment", &a, "ship it"]);
    ok(ws, "lead", &["task", "cancel", &a, "--note", "not needed"]);
    let shown = json(ws, "lead", &["task", "show", &b]);
    assert_eq!(shown["status"], "blocked");
    assert_eq!(
        shown["blocked_reason"],
        format!("dependency {a} was cancelled: not needed").as_str()
    );
    // b drops the dependency and is ready.
    let t = json(ws, "lead", &["task", "edit", &b, "--remove-after", &a]);
    assert_eq!(t["status"], "pending");
    let text = ok(ws, "lead", &["task", "show", &a]);
    for want in [
        "created:",
        "updated:",
        "UTC",
        "history:",
        "lead: created",
        "someone: comment: ship it",
        "lead: cancelled: not needed",
        "edited: name \"A\"",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    let hist = json(ws, "lead", &["task", "show", &a])["history"].clone();
    assert_eq!(hist.as_array().unwrap().len(), 4, "{hist}");
    // Filters.
    let ids = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(json(ws, "x", &["task", "list", "--assignee", "w9"])),
        vec![c.clone()]
    );
    assert_eq!(
        ids(json(ws, "x", &["task", "list", "--status", "cancelled"])),
        vec![a.clone()]
    );
    assert_eq!(
        ids(json(ws, "x", &["task", "list", "--label", "x"])),
        vec![a.clone()]
    );
    assert_eq!(
        ids(json(
            ws,
            "x",
            &["task", "list", "--unassigned", "--status", "pending"]
        )),
        vec![b.clone()]
    );
    assert_eq!(
        ids(json(
            ws,
            "x",
            &["task", "list", "--limit", "1", "--offset", "1"]
        )),
        vec![b.clone()]
    );
    let text = ok(ws, "x", &["task", "list", "--limit", "1"]);
    assert!(
        text.contains("3 tasks:") && text.contains("--offset 1"),
        "{text}"
    );
    // Ready lists a page; the rest is counted on stderr.
    let out = maos(ws, "x", &["task", "ready", "--limit", "1"]);
    assert_eq!(stdout(&out).lines().count(), 1);
    assert!(stderr(&out).contains("1 more ready"), "{}", stderr(&out));
}

/// Issue 12: names with newlines or escape sequences are printed escaped by list, ready,
/// show, graph and report.
#[test]
fn control_characters_are_escaped_in_human_output() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let evil = "evil\x1b[2J\nname\x07";
    let id = ok(ws, "x", &["task", "add", evil, "-d", "line\x1b[31m"])
        .trim()
        .to_string();
    ok(ws, "x", &["task", "comment", &id, "bell\x07"]);
    for args in [
        vec!["task", "list"],
        vec!["task", "ready"],
        vec!["task", "show", id.as_str()],
        vec!["task", "graph"],
        vec!["task", "graph", "--format", "mermaid"],
        vec!["task", "report"],
    ] {
        let out = ok(ws, "x", &args);
        assert!(
            !out.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?} printed a control character: {out:?}"
        );
        assert!(!out.contains("evil\n"), "{args:?}: {out:?}");
    }
    // JSON keeps the exact text.
    assert_eq!(json(ws, "x", &["task", "show", &id])["name"], evil);
}

/// Issue 11, item 6: a process holding the task store's lock (here: this test) makes a
/// write wait its `--wait` and fail with exit 3 naming the holder, never hang.
#[test]
fn a_held_store_lock_times_out_with_exit_3_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(ws, "x", &["task", "add", "first"]);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ws.join(".maos/tasks/lock"))
        .unwrap();
    lock.lock().unwrap();
    let started = std::time::Instant::now();
    let out = maos(ws, "x", &["task", "add", "second", "--wait", "300ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // Readers do not need the lock.
    assert!(ok(ws, "x", &["task", "list"]).contains("first"));
    lock.unlock().unwrap();
    ok(ws, "x", &["task", "add", "second", "--wait", "300ms"]);
}

/// Issue 13: the README recipe claims with the exit code visible (not hidden by a pipe).
#[test]
fn the_claim_recipe_sees_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    Maos::new(ws).run(["status"]).ok();
    let script = r#"
        set -u
        if maos --json task claim > claim.json; then echo "claimed $(jq -r .id claim.json)"; else echo "rc=$?"; fi
        maos task add only > /dev/null
        if maos --json task claim > claim.json; then echo "claimed $(jq -r .id claim.json)"; else echo "rc=$?"; fi
    "#;
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_maos"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(ws)
        .env("PATH", path)
        .env("MAOS_WORKSPACE", ws)
        .env("MAOS_AGENT_ID", "w")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"rc=3"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("claimed t")),
        "{text}"
    );
}

/// Issue 13: a refused fencing token is reported once, naming the resource and both tokens.
#[test]
fn a_stale_fencing_token_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let m = Maos::new(ws).agent("a");
    let id = m
        .run(["task", "add", "Migrate"])
        .ok()
        .stdout()
        .trim()
        .to_owned();
    m.run(["task", "start", &id]).ok();
    m.run(["lock", "acquire", "db/schema.sql"]).ok();
    let out = m.run([
        "task",
        "done",
        &id,
        "--fence",
        "db/schema.sql",
        "--token",
        "999",
    ]);
    out.assert_code(Exit::Error);
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("999") && err.contains("db/schema.sql"),
        "{err}"
    );
    assert_eq!(err.matches("stale").count(), 1, "{err}");
}
