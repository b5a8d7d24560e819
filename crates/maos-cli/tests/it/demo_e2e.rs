//! End to end: the demo at small scale, its outcome checked independently through the CLI
//! and git on the workspace it leaves behind.

use std::path::Path;
use std::process::Command;

use crate::util::{Maos, Run};

fn maos_auditor(ws: &Path) -> Command {
    Maos::new(ws).agent("auditor").cmd()
}

fn json(cmd: &mut Command) -> serde_json::Value {
    Run::of(cmd).ok().json()
}

#[test]
fn the_demo_coordinates_four_agents_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let out = Run::of(
        Command::new(env!("CARGO_BIN_EXE_maos"))
            .env_remove("MAOS_WORKSPACE")
            .env_remove("MAOS_AGENT_ID")
            .args([
                "demo", "--agents", "4", "--tasks", "3", "--seed", "11", "--keep",
            ])
            .arg(&ws),
    );
    let text = out.stdout();
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        out.stderr()
    );
    assert!(text.contains("every step held"), "{text}");
    assert!(
        text.contains("```mermaid\ngantt"),
        "no Gantt chart:\n{text}"
    );

    // Every task completed, each exactly once (one start, no retry).
    let tasks = json(maos_auditor(&ws).args(["task", "list", "--json"]));
    let tasks = tasks.as_array().expect("task list is an array");
    assert!(tasks.len() >= 3 + 8, "{} tasks", tasks.len());
    for t in tasks {
        assert_eq!(t["status"], "completed", "{t}");
        assert!(
            t["attempts"].as_u64().unwrap_or(0) <= 1,
            "task started more than once: {t}"
        );
    }

    // The conflict was detected and resolved: a completed merge-conflict task exists.
    let conflict_tasks: Vec<_> = tasks
        .iter()
        .filter(|t| {
            t["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l == "merge-conflict"))
        })
        .collect();
    assert!(!conflict_tasks.is_empty(), "no resolution task was created");

    // The merged history holds every agent's work: a commit by each working agent is
    // reachable from main.
    let log = Run::of(Command::new("git").current_dir(&ws).args([
        "log",
        "main",
        "--format=%(trailers:key=Maos-Agent,valueonly)",
    ]));
    log.ok();
    let authors = log.stdout();
    for agent in ["architect-1", "backend-1", "frontend-1"] {
        assert!(
            authors.contains(agent),
            "main lacks {agent}'s work:\n{authors}"
        );
    }
    let routes = Run::of(
        Command::new("git")
            .current_dir(&ws)
            .args(["show", "main:src/shared/routes.rs"]),
    );
    let routes = routes.stdout();
    assert!(
        routes.contains("/users") && routes.contains("/profile"),
        "{routes}"
    );

    // No lock left behind.
    let locks = json(maos_auditor(&ws).args(["lock", "list", "--json"]));
    let held = locks["locks"].as_array().map_or(0, Vec::len);
    assert_eq!(held, 0, "locks left behind: {locks}");

    // The deadlock was reported on the deadlock topic.
    let out = Run::of(maos_auditor(&ws).args(["recv", "broadcast/deadlock", "--json"]));
    out.ok();
    assert!(
        !out.stdout().trim().is_empty(),
        "no deadlock report on the topic"
    );
}
