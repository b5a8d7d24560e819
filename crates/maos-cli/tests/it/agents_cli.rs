//! Agent identity and liveness through the real binary: an agent whose every command runs in
//! a fresh shell stays alive (issue: its task was re-assigned as "agent died").

// Helpers outside #[test] functions: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use crate::util::{Exit, Maos, Run, bin};

fn maos(ws: &Path, agent: &str, args: &[&str]) -> Run {
    Maos::new(ws).agent(agent).run(args)
}

/// Runs `maos` through `sh -c`, the way Claude Code's Bash tool runs every command: the shell
/// exits right after.
fn in_fresh_shell(ws: &Path, agent: &str, args: &str) -> Run {
    Run::of(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec_maos() {{ \"$MAOS_BIN\" \"$@\"; }}; exec_maos {args}"
            ))
            .env("MAOS_BIN", bin())
            .env("MAOS_WORKSPACE", ws)
            .env("MAOS_AGENT_ID", agent)
            .env_remove("RUST_LOG"),
    )
}

fn ok(out: Run) -> String {
    out.ok().stdout()
}

/// The task id a `task claim` printed (`<id>  in_progress <name> @<agent>`).
fn claimed(out: Run) -> String {
    ok(out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_fresh_shell_registration_is_not_a_death() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(maos(ws, "lead", &["init"]));
    let t = ok(maos(ws, "lead", &["task", "add", "The only task"]));
    let t = t.trim();
    ok(in_fresh_shell(ws, "A", "agents register"));
    assert_eq!(claimed(in_fresh_shell(ws, "A", "task claim")), t);
    // B claims: nothing is ready, A's task stays A's.
    maos(ws, "B", &["task", "claim"]).assert_code(Exit::Busy);
    let show: serde_json::Value =
        serde_json::from_str(&ok(maos(ws, "B", &["--json", "task", "show", t]))).unwrap();
    assert_eq!(show["assigned_to"], "A", "{show}");
    assert_eq!(show["status"], "in_progress", "{show}");
    // The listing says A is alive through an anchor and shows its claim.
    let list: serde_json::Value =
        serde_json::from_str(&ok(maos(ws, "B", &["--json", "agents", "list"]))).unwrap();
    let a = &list.as_array().unwrap()[0];
    assert_eq!(a["id"], "A");
    assert_eq!(a["liveness"], "alive", "{a}");
    assert!(a["live_anchor"]["process"]["pid"].is_u64(), "{a}");
    assert_eq!(a["claims"][0], t, "{a}");
    assert!(a["lease_left_ms"].as_u64().unwrap() > 0, "{a}");
}

#[test]
fn an_agent_anchored_on_a_process_that_ends_releases_its_claims_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(maos(ws, "lead", &["init"]));
    let t = ok(maos(ws, "lead", &["task", "add", "Work"]));
    let t = t.trim();
    let mut session = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = session.id().to_string();
    ok(maos(ws, "A", &["agents", "register", "--pid", &pid]));
    assert_eq!(claimed(maos(ws, "A", &["task", "claim"])), t);
    session.kill().unwrap();
    session.wait().unwrap();
    // The session ended: B's claim releases A's task and takes it.
    assert_eq!(claimed(maos(ws, "B", &["task", "claim"])), t);
    let show: serde_json::Value =
        serde_json::from_str(&ok(maos(ws, "B", &["--json", "task", "show", t]))).unwrap();
    assert_eq!(show["assigned_to"], "B", "{show}");
}

#[test]
fn unregistering_releases_locks_and_claims() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(maos(ws, "lead", &["init"]));
    let t = ok(maos(ws, "lead", &["task", "add", "Work"]));
    ok(maos(ws, "A", &["agents", "register"]));
    assert_eq!(claimed(maos(ws, "A", &["task", "claim"])), t.trim());
    ok(maos(
        ws,
        "A",
        &["lock", "acquire", "src/a.rs", "--ttl", "10m"],
    ));
    let out: serde_json::Value =
        serde_json::from_str(&ok(maos(ws, "A", &["--json", "agents", "unregister"]))).unwrap();
    assert_eq!(out["released_locks"], 1, "{out}");
    assert_eq!(out["released_tasks"][0], t.trim(), "{out}");
    // B can take both at once.
    ok(maos(
        ws,
        "B",
        &["lock", "acquire", "src/a.rs", "--wait", "0s"],
    ));
    assert_eq!(claimed(maos(ws, "B", &["task", "claim"])), t.trim());
}
