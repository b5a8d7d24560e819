//! End to end: the demo at small scale, both ways (agents on the library; agents speaking only
//! MCP and Claude Code hooks), its outcome checked independently through the CLI and git on
//! the workspace it leaves behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Maos, Run, bin};

const AGENTS: [&str; 4] = ["architect-1", "backend-1", "frontend-1", "reviewer-1"];

fn auditor(ws: &Path) -> Maos {
    Maos::new(ws).agent("auditor")
}

fn git(dir: &Path, args: &[&str]) -> String {
    Run::of(Command::new("git").current_dir(dir).args(args))
        .ok()
        .stdout()
}

/// Runs the demo with `flags` in a kept workspace; returns it and the report.
fn demo(dir: &Path, flags: &[&str]) -> (PathBuf, String) {
    let ws = dir.join("ws");
    let out = Run::of(
        Command::new(bin())
            .env_remove("MAOS_WORKSPACE")
            .env_remove("MAOS_AGENT_ID")
            .env_remove("RUST_LOG")
            .args(["demo", "--agents", "4", "--tasks", "3", "--seed", "11"])
            .args(flags)
            .arg("--keep")
            .arg(&ws),
    );
    let text = out.stdout();
    assert!(
        out.status.success(),
        "demo {flags:?} failed:\n{text}\n{}",
        out.stderr()
    );
    assert!(text.contains("every step held"), "{text}");
    assert!(
        text.contains("```mermaid\ngantt"),
        "no Gantt chart:\n{text}"
    );
    // A run of a second or two: the axis shows seconds (or milliseconds), not hours.
    assert!(
        text.contains("axisFormat %S.%L") || text.contains("axisFormat %M:%S"),
        "{text}"
    );
    // The live view went to stderr, every line of it the view's own: log lines (the demo's,
    // its agents', their MCP servers' and hooks') are in its event log, not raw.
    let err = out.stderr();
    for line in err.lines() {
        assert!(
            line.starts_with("maos demo: ") || line.starts_with('['),
            "a raw line in the view: {line:?}\n{err}"
        );
    }
    (ws, text)
}

/// What both ways leave behind, checked with the CLI and git only.
fn check_workspace(ws: &Path) {
    // Every task completed, each exactly once (one start, no retry).
    let tasks = auditor(ws).run(["task", "list", "--json"]).ok().json();
    let tasks = tasks.as_array().expect("task list is an array");
    assert!(tasks.len() >= 3 + 8, "{} tasks", tasks.len());
    for t in tasks {
        assert_eq!(t["status"], "completed", "{t}");
        assert!(
            t["attempts"].as_u64().unwrap_or(0) <= 1,
            "task started more than once: {t}"
        );
    }

    // The conflict was detected and resolved: completed merge-conflict tasks exist, and one
    // merge commit on the resolver's branch resolved them all.
    let conflict_tasks: Vec<_> = tasks
        .iter()
        .filter(|t| {
            t["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l == "merge-conflict"))
        })
        .collect();
    assert!(!conflict_tasks.is_empty(), "no resolution task was created");
    let merges = git(ws, &["log", "agent/frontend-1", "--merges", "--format=%s"]);
    assert_eq!(
        merges
            .lines()
            .filter(|l| l.starts_with("Merge main into agent/frontend-1, resolving "))
            .count(),
        1,
        "{merges}"
    );

    // The merged history holds every agent's work: a commit by each working agent is
    // reachable from main.
    let authors = git(
        ws,
        &[
            "log",
            "main",
            "--format=%(trailers:key=Maos-Agent,valueonly)",
        ],
    );
    for agent in ["architect-1", "backend-1", "frontend-1"] {
        assert!(
            authors.contains(agent),
            "main lacks {agent}'s work:\n{authors}"
        );
    }
    let routes = git(ws, &["show", "main:src/shared/routes.rs"]);
    assert!(
        routes.contains("/users") && routes.contains("/profile"),
        "{routes}"
    );

    // Each agent worked in its own worktree, on its branch, and left it clean.
    let worktrees = git(ws, &["worktree", "list", "--porcelain"]);
    for agent in AGENTS {
        let wt = ws.join(".worktrees").join(agent);
        assert!(
            worktrees.contains(&format!("branch refs/heads/agent/{agent}")),
            "{worktrees}"
        );
        assert_eq!(
            git(&wt, &["status", "--porcelain"]),
            "",
            "{agent}'s worktree"
        );
        assert_eq!(
            git(&wt, &["rev-parse", "HEAD"]),
            git(ws, &["rev-parse", &format!("agent/{agent}")])
        );
    }

    // No lock left behind.
    let locks = auditor(ws).run(["lock", "list", "--json"]).ok().json();
    let held = locks["locks"].as_array().map_or(0, Vec::len);
    assert_eq!(held, 0, "locks left behind: {locks}");

    // Every task notification names the agent that caused it (none is anonymous).
    let notes = auditor(ws)
        .run(["recv", "broadcast/tasks", "--everything", "--json"])
        .ok()
        .lines();
    assert!(!notes.is_empty(), "no task notifications");
    for n in &notes {
        assert_ne!(n["sender"], "anonymous", "{n}");
    }

    // The deadlock was reported on the deadlock topic.
    let out = auditor(ws).run(["recv", "broadcast/deadlock", "--json"]);
    assert!(
        !out.ok().stdout().trim().is_empty(),
        "no deadlock report on the topic"
    );

    // The frontend asked the backend role and got its answer, each message from its agent.
    let messages = auditor(ws)
        .run(["recv", "backend-frontend", "--everything", "--json"])
        .ok()
        .lines();
    let request = messages
        .iter()
        .find(|m| m["payload"]["type"] == "implement_api")
        .unwrap_or_else(|| panic!("no API request: {messages:?}"));
    assert_eq!(request["sender"], "frontend-1", "{request}");
    assert_eq!(
        request["recipients"],
        serde_json::json!({ "kind": "role", "value": "backend" })
    );
    let answer = messages
        .iter()
        .find(|m| m["payload"]["type"] == "api_implemented")
        .unwrap_or_else(|| panic!("no API answer: {messages:?}"));
    assert_eq!(answer["sender"], "backend-1", "{answer}");
    assert_eq!(answer["payload"]["in_reply_to"], request["id"], "{answer}");
}

#[test]
fn the_demo_coordinates_four_agents_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    // No --fast: stdout is not a terminal here, so the run is not paced.
    let (ws, text) = demo(dir.path(), &[]);
    assert!(text.contains("(fast, via library)"), "{text}");
    check_workspace(&ws);
    // Library agents stay registered (dead once their process ended), with their branches.
    let agents = auditor(&ws).run(["agents", "list", "--json"]).ok().json();
    let listed = agents.to_string();
    for a in AGENTS {
        assert!(listed.contains(&format!("agent/{a}")), "{agents}");
    }
}

/// Issue 13: the paced mode (the default on a terminal) takes time a person can follow, one
/// line per real event, and passes the same checks.
#[test]
fn the_paced_demo_is_watchable_and_passes_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, text) = demo(dir.path(), &["--paced"]);
    let held = text
        .lines()
        .find_map(|l| l.strip_prefix("every step held in "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(held.contains("(paced, via library)"), "{held}");
    let secs: f64 = held.split('s').next().unwrap().parse().unwrap();
    // Pacing waits simulated work time: a lower bound only (it cannot be faster).
    assert!(secs >= 5.0, "paced run over in {secs} s: {held}");
    check_workspace(&ws);
}

#[test]
fn the_demo_via_mcp_and_hooks_passes_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, text) = demo(dir.path(), &["--fast", "--via", "mcp"]);
    assert!(text.contains("(fast, via mcp)"), "{text}");
    assert!(
        text.contains("- [x] every agent drove maos only through its own MCP server"),
        "{text}"
    );
    check_workspace(&ws);
    // Each session ended through the SessionEnd hook: the agents are unregistered and no
    // session is left bound.
    let agents = auditor(&ws).run(["agents", "list", "--json"]).ok().json();
    let listed = agents.to_string();
    for a in AGENTS {
        assert!(
            !listed.contains(&format!("\"{a}\"")),
            "{a} still registered: {agents}"
        );
    }
    let sessions: Vec<_> = std::fs::read_dir(ws.join(".maos/sessions"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(sessions.is_empty(), "sessions left: {sessions:?}");
}
