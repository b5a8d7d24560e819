//! Claude Code hooks and git hooks through the real binary: hook payloads shaped as Claude
//! Code sends them (session_id, cwd, hook_event_name, tool_name, tool_input), replayed for two
//! agents in two worktrees of one repository, on the files and on the PostgreSQL server of
//! this test process.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use maos_tests::{git, stderr, stdout};
use serde_json::{Value, json};

use crate::util::{Exit, Maos, Run, bin};

/// Runs `maos hook claude EVENT` in `cwd` with `payload` on stdin, as Claude Code does (no
/// MAOS_AGENT_ID: agents are named from their worktree's branch).
fn hook(cwd: &Path, event: &str, payload: &Value) -> (Output, Option<Value>) {
    let mut child = Command::new(bin())
        .args(["hook", "claude", event])
        .current_dir(cwd)
        .env_remove("MAOS_AGENT_ID")
        .env_remove("MAOS_WORKSPACE")
        .env_remove("MAOS_BACKEND")
        .env_remove("MAOS_NAMESPACE")
        .env_remove("RUST_LOG")
        .env_remove("MAOS_HOOK_FAIL_OPEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = payload.clone();
    input["hook_event_name"] = json!(event);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "hooks always exit 0: {}",
        stderr(&out)
    );
    let text = stdout(&out);
    let json = (!text.trim().is_empty())
        .then(|| serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")));
    (out, json)
}

fn decision(v: &Option<Value>) -> Option<(String, String)> {
    let o = v.as_ref()?.get("hookSpecificOutput")?;
    Some((
        o.get("permissionDecision")?.as_str()?.to_owned(),
        o.get("permissionDecisionReason")?.as_str()?.to_owned(),
    ))
}

struct Repo {
    _dir: tempfile::TempDir,
    main: PathBuf,
    wt_a: PathBuf,
    wt_b: PathBuf,
}

fn repo() -> Repo {
    repo_on(false)
}

/// The repository with its workspace on the files, or (`pg`) on the test PostgreSQL server
/// in a namespace of its own.
fn repo_on(pg: bool) -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("repo");
    std::fs::create_dir(&main).unwrap();
    git(&main, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(main.join("src")).unwrap();
    std::fs::write(main.join("src/api.rs"), "fn api() {}\n").unwrap();
    std::fs::write(main.join("src/ui.rs"), "fn ui() {}\n").unwrap();
    git(&main, &["add", "."]);
    git(&main, &["commit", "-qm", "init"]);
    let wt_a = dir.path().join("wt-a");
    let wt_b = dir.path().join("wt-b");
    git(
        &main,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "agent/alpha",
            wt_a.to_str().unwrap(),
        ],
    );
    git(
        &main,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "agent/beta",
            wt_b.to_str().unwrap(),
        ],
    );
    if pg {
        crate::backend_cli::pg_workspace(&main);
    } else {
        let out = Run::of(Maos::new(&main).agent("lead").cmd().arg("init"));
        out.ok();
    }
    Repo {
        _dir: dir,
        main,
        wt_a,
        wt_b,
    }
}

fn edit(session: &str, cwd: &Path, file: &Path) -> Value {
    json!({
        "session_id": session,
        "transcript_path": "/tmp/transcript.jsonl",
        "cwd": cwd,
        "permission_mode": "default",
        "tool_name": "Edit",
        "tool_input": { "file_path": file, "old_string": "fn", "new_string": "pub fn" },
        "tool_use_id": "toolu_01",
    })
}

fn read(session: &str, cwd: &Path, file: &Path) -> Value {
    json!({
        "session_id": session,
        "cwd": cwd,
        "tool_name": "Read",
        "tool_input": { "file_path": file },
        "tool_response": { "type": "text" },
    })
}

#[test]
fn two_agents_in_two_worktrees_edit_through_the_hooks() {
    two_agents_edit_through_the_hooks(false);
}

/// The same on PostgreSQL: the hooks register, deny with the holder from the server's lock
/// table, report and release there (nothing of it under `.maos/`).
#[test]
fn two_agents_edit_through_the_hooks_on_postgresql() {
    two_agents_edit_through_the_hooks(true);
}

fn two_agents_edit_through_the_hooks(pg: bool) {
    let r = repo_on(pg);
    let start = |s: &str, cwd: &Path| json!({ "session_id": s, "cwd": cwd, "source": "startup" });
    let (_, a_ctx) = hook(&r.wt_a, "SessionStart", &start("sess-a", &r.wt_a));
    let text = a_ctx.unwrap()["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.contains("`alpha`") && text.contains("git branch"),
        "{text}"
    );
    hook(&r.wt_b, "SessionStart", &start("sess-b", &r.wt_b));

    // A locks src/api.rs (from its worktree, the same resource in every worktree).
    let out = Run::of(
        Maos::new(&r.main)
            .agent("alpha")
            .cmd()
            .current_dir(&r.wt_a)
            .args([
                "lock",
                "acquire",
                "src/api.rs",
                "--ttl",
                "10m",
                "--purpose",
                "new endpoint",
            ]),
    );
    out.ok();

    // B's Edit of its own copy of src/api.rs is denied, naming A.
    let b_file = r.wt_b.join("src/api.rs");
    hook(&r.wt_b, "PostToolUse", &read("sess-b", &r.wt_b, &b_file));
    let (_, d) = hook(&r.wt_b, "PreToolUse", &edit("sess-b", &r.wt_b, &b_file));
    let (what, why) = decision(&d).expect("a decision");
    assert_eq!(what, "deny");
    assert!(
        why.contains("locked by agent alpha") && why.contains("new endpoint"),
        "{why}"
    );
    // Another file is fine.
    let (_, d) = hook(
        &r.wt_b,
        "PreToolUse",
        &edit("sess-b", &r.wt_b, &r.wt_b.join("src/ui.rs")),
    );
    assert_eq!(decision(&d), None);

    // After A's release B's Edit is allowed.
    let out = Maos::new(&r.main)
        .agent("alpha")
        .run(["lock", "release", "src/api.rs"]);
    out.ok();
    let (_, d) = hook(&r.wt_b, "PreToolUse", &edit("sess-b", &r.wt_b, &b_file));
    assert_eq!(decision(&d), None, "{d:?}");
    std::fs::write(&b_file, "pub fn api() {}\n").unwrap();
    hook(&r.wt_b, "PostToolUse", &edit("sess-b", &r.wt_b, &b_file));

    // The file changes behind B's back: B's next Edit is denied until it re-reads.
    std::fs::write(&b_file, "pub fn api() { changed() }\n").unwrap();
    let (_, d) = hook(&r.wt_b, "PreToolUse", &edit("sess-b", &r.wt_b, &b_file));
    let (what, why) = decision(&d).expect("a decision");
    assert_eq!(what, "deny");
    assert!(why.contains("re-read it first"), "{why}");
    hook(&r.wt_b, "PostToolUse", &read("sess-b", &r.wt_b, &b_file));
    let (_, d) = hook(&r.wt_b, "PreToolUse", &edit("sess-b", &r.wt_b, &b_file));
    assert_eq!(decision(&d), None, "{d:?}");

    // Stop reports what A still holds; SessionEnd frees A's locks.
    let out =
        Maos::new(&r.main)
            .agent("alpha")
            .run(["lock", "acquire", "src/ui.rs", "--ttl", "10m"]);
    out.ok();
    let (_, s) = hook(
        &r.wt_a,
        "Stop",
        &json!({ "session_id": "sess-a", "cwd": r.wt_a, "stop_hook_active": false }),
    );
    let msg = s.unwrap()["systemMessage"].as_str().unwrap().to_owned();
    assert!(msg.contains("src/ui.rs"), "{msg}");
    let (_, d) = hook(
        &r.wt_b,
        "PreToolUse",
        &edit("sess-b", &r.wt_b, &r.wt_b.join("src/ui.rs")),
    );
    assert_eq!(decision(&d).unwrap().0, "deny");
    hook(
        &r.wt_a,
        "SessionEnd",
        &json!({ "session_id": "sess-a", "cwd": r.wt_a, "reason": "exit" }),
    );
    let (_, d) = hook(
        &r.wt_b,
        "PreToolUse",
        &edit("sess-b", &r.wt_b, &r.wt_b.join("src/ui.rs")),
    );
    assert_eq!(
        decision(&d),
        None,
        "A's locks are freed at SessionEnd: {d:?}"
    );
    let list = stdout(
        &Maos::new(&r.main)
            .agent("x")
            .run(["--json", "agents", "list"]),
    );
    assert!(!list.contains("\"alpha\""), "A is unregistered: {list}");
    assert!(list.contains("\"beta\""), "B goes on: {list}");
    if pg {
        // The state was on the server: nothing shared went to the files.
        for store in ["channels", "tasks", "inboxes", "locks", "agents"] {
            let d = r.main.join(".maos").join(store);
            let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
            assert_eq!(n, 0, "{} holds files", d.display());
        }
    }
}

#[test]
fn a_corrupt_workspace_denies_edits_with_a_clear_reason() {
    let r = repo();
    // The lock table is unreadable: its index and its documents garbage.
    let locks = r.main.join(".maos/locks");
    std::fs::create_dir_all(&locks).unwrap();
    for file in ["index", "cells"] {
        std::fs::write(locks.join(file), b"garbage that is not a lock table file").unwrap();
    }
    let file = r.wt_b.join("src/api.rs");
    let (_, d) = hook(&r.wt_b, "PreToolUse", &edit("sess-b", &r.wt_b, &file));
    let (what, why) = decision(&d).expect("a decision");
    assert_eq!(what, "deny");
    assert!(
        why.contains("maos doctor") && why.contains("table"),
        "{why}"
    );
    // Fail open only when asked.
    let mut child = Command::new(bin())
        .args(["hook", "claude", "PreToolUse"])
        .current_dir(&r.wt_b)
        .env("MAOS_HOOK_FAIL_OPEN", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = edit("sess-b", &r.wt_b, &file);
    p["hook_event_name"] = json!("PreToolUse");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(p.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v.get("hookSpecificOutput").is_none(), "{v}");
    assert!(
        v["systemMessage"].as_str().unwrap().contains("failed"),
        "{v}"
    );
    // Hostile input never blocks anything but PreToolUse, and never crashes.
    for (event, payload) in [
        ("PostToolUse", "not json".to_owned()),
        (
            "SessionStart",
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
        ),
        ("Stop", "{\"session_id\": \"../../etc\"}".to_owned()),
    ] {
        let mut child = Command::new(bin())
            .args(["hook", "claude", event])
            .current_dir(&r.wt_b)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(payload.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{event}: {}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert!(
            v["systemMessage"].as_str().unwrap().contains("failed"),
            "{event}: {v}"
        );
    }
}

#[test]
fn install_merges_once_and_the_git_guard_refuses_a_locked_file() {
    install_and_git_guard(false);
}

/// The same on PostgreSQL: installed there too, and the git guard reads the server's locks.
#[test]
fn install_and_the_git_guard_work_on_postgresql() {
    install_and_git_guard(true);
}

fn install_and_git_guard(pg: bool) {
    let r = repo_on(pg);
    // An existing settings file and pre-commit hook are kept.
    std::fs::create_dir_all(r.main.join(".claude")).unwrap();
    std::fs::write(
        r.main.join(".claude/settings.json"),
        r#"{"model": "x", "hooks": {"PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "my-check"}]}]}}"#,
    )
    .unwrap();
    let hooks = r.main.join(".git/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(
        hooks.join("pre-commit"),
        "#!/bin/sh\necho previous-hook-ran >&2\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        hooks.join("pre-commit"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let install = |extra: &[&str]| {
        let mut c = Maos::new(&r.main).agent("x").cmd();
        c.current_dir(&r.main)
            .args(["hook", "install", "--command", bin().to_str().unwrap()]);
        c.args(extra);
        Run::of(&mut c)
    };
    let first = install(&[]);
    first.ok();
    assert!(
        stdout(&first).contains("added the maos PreToolUse hook"),
        "{}",
        stdout(&first)
    );
    let settings: Value = serde_json::from_str(
        &std::fs::read_to_string(r.main.join(".claude/settings.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(settings["model"], "x");
    let pre = settings["hooks"]["PreToolUse"].as_array().unwrap();
    assert_eq!(pre.len(), 2, "{settings}");
    assert_eq!(pre[0]["hooks"][0]["command"], "my-check");
    let mcp: Value =
        serde_json::from_str(&std::fs::read_to_string(r.main.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(mcp["mcpServers"]["maos"]["args"][0], "mcp");
    // Twice changes nothing.
    let second = install(&[]);
    assert!(
        stdout(&second).contains("nothing to change"),
        "{}",
        stdout(&second)
    );
    // A malformed settings file is reported, not overwritten.
    std::fs::write(r.main.join(".claude/settings.json"), "{ broken").unwrap();
    let bad = install(&["--claude"]);
    bad.assert_code(Exit::Error);
    assert!(stderr(&bad).contains("settings.json") && stderr(&bad).contains("not valid JSON"));
    assert_eq!(
        std::fs::read_to_string(r.main.join(".claude/settings.json")).unwrap(),
        "{ broken"
    );

    // The git guard: alpha holds src/api.rs; beta's commit touching it is refused.
    let out =
        Maos::new(&r.main)
            .agent("alpha")
            .run(["lock", "acquire", "src/api.rs", "--ttl", "10m"]);
    out.ok();
    std::fs::write(r.wt_b.join("src/api.rs"), "changed\n").unwrap();
    git(&r.wt_b, &["add", "src/api.rs"]);
    let commit = Command::new("git")
        .current_dir(&r.wt_b)
        .args(["commit", "-qm", "touch api"])
        .env("MAOS_AGENT_ID", "beta")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(!commit.status.success());
    let err = stderr(&commit);
    assert!(
        err.contains("commit refused") && err.contains("alpha") && err.contains("src/api.rs"),
        "{err}"
    );
    // Released: the commit goes through, the previous hook still runs, and the commit carries
    // the agent's trailer.
    let out = Maos::new(&r.main)
        .agent("alpha")
        .run(["lock", "release", "src/api.rs"]);
    out.ok();
    let commit = Command::new("git")
        .current_dir(&r.wt_b)
        .args(["commit", "-qm", "touch api"])
        .env("MAOS_AGENT_ID", "beta")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(commit.status.success(), "{}", stderr(&commit));
    assert!(
        stderr(&commit).contains("previous-hook-ran"),
        "{}",
        stderr(&commit)
    );
    let msg = stdout(&git(&r.wt_b, &["log", "-1", "--format=%B"]));
    assert!(msg.contains("Maos-Agent: beta"), "{msg}");
    // Uninstall puts the previous hook back.
    std::fs::write(r.main.join(".claude/settings.json"), "{}").unwrap();
    let out = install(&["--uninstall", "--git"]);
    out.ok();
    let hook = std::fs::read_to_string(hooks.join("pre-commit")).unwrap();
    assert!(hook.contains("previous-hook-ran"), "{hook}");
}

fn context_of(v: &Option<Value>) -> Option<String> {
    Some(
        v.as_ref()?
            .get("hookSpecificOutput")?
            .get("additionalContext")?
            .as_str()?
            .to_owned(),
    )
}

/// Messages reach an agent's model through its hooks, each exactly once: those waiting at
/// SessionStart in the briefing, later ones with the next tool call of any kind.
#[test]
fn messages_reach_the_agent_through_its_hooks_exactly_once() {
    messages_reach_the_agent_through_its_hooks(false);
}

/// The same on PostgreSQL: the hooks deliver the inbox kept on the server.
#[test]
fn messages_reach_the_agent_through_its_hooks_exactly_once_on_postgresql() {
    messages_reach_the_agent_through_its_hooks(true);
}

fn messages_reach_the_agent_through_its_hooks(pg: bool) {
    let r = repo_on(pg);
    let send = |to: &[&str], text: &str| {
        let mut args = vec!["send", "api"];
        args.extend_from_slice(to);
        let data = json!({ "text": text }).to_string();
        args.extend(["--data", &data]);
        Maos::new(&r.main).agent("alpha").run(args).ok();
    };
    send(&["--to", "beta"], "waiting before you started");
    send(&["--to", "someone-else"], "not for beta");

    let start = json!({ "session_id": "sess-b", "cwd": r.wt_b, "source": "startup" });
    let (_, s) = hook(&r.wt_b, "SessionStart", &start);
    let text = context_of(&s).expect("a briefing");
    assert!(text.contains("`beta`"), "{text}");
    assert!(text.contains("waiting before you started"), "{text}");
    assert!(
        text.contains("api#1") && text.contains("from alpha"),
        "{text}"
    );
    assert!(!text.contains("not for beta"), "{text}");

    let bash = json!({
        "session_id": "sess-b",
        "cwd": r.wt_b,
        "tool_name": "Bash",
        "tool_input": { "command": "ls" },
        "tool_response": { "stdout": "" },
    });
    // Nothing new: no context at all.
    let (_, p) = hook(&r.wt_b, "PostToolUse", &bash);
    assert_eq!(p, None, "the briefing's message is not given twice");

    send(&["--to", "beta"], "the users endpoint is ready");
    send(&["--all"], "to everyone");
    let (_, p) = hook(&r.wt_b, "PostToolUse", &bash);
    let text = context_of(&p).expect("the new messages");
    assert!(text.contains("2 new message(s)"), "{text}");
    assert!(text.contains("the users endpoint is ready"), "{text}");
    assert!(text.contains("to everyone"), "{text}");
    let (_, p) = hook(&r.wt_b, "PostToolUse", &bash);
    assert_eq!(p, None, "each message once");

    // The CLI's inbox agrees: nothing unread for beta.
    let out = Maos::new(&r.main)
        .agent("beta")
        .run(["--json", "inbox", "--unread"]);
    let unread: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(unread["total"], 0, "{unread}");
    // A broadcast on a topic beta subscribed to comes with its next tool call.
    Maos::new(&r.main)
        .agent("beta")
        .run(["subscribe", "--durable", "build/*"])
        .ok();
    Maos::new(&r.main)
        .agent("alpha")
        .run(["broadcast", "build/linux", "--data", "\"green\""])
        .ok();
    let (_, p) = hook(&r.wt_b, "PostToolUse", &bash);
    let text = context_of(&p).expect("the broadcast");
    assert!(
        text.contains("(topic build/linux)") && text.contains("green"),
        "{text}"
    );
    if pg {
        assert!(!text.contains("not delivered"), "{text}");
        for store in ["channels", "inboxes"] {
            let d = r.main.join(".maos").join(store);
            let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
            assert_eq!(n, 0, "{} holds files", d.display());
        }
    }
}
