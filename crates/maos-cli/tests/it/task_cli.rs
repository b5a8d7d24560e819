//! `maos task ...` end to end, running the real binary.

use std::path::Path;
use std::process::Stdio;

use crate::util::{Exit, Maos, Run};

fn ok(ws: &Path, agent: &str, args: &[&str]) -> String {
    Maos::new(ws).agent(agent).run(args).ok().stdout()
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
