//! `maos mcp` through a real MCP client (the official Rust SDK, rmcp, speaking JSON-RPC over the
//! child's stdio) against two servers, one per agent: on the files and on the PostgreSQL
//! server of this test process (the same test body).

// Helpers outside #[test] functions: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use maos_tests::git;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

use crate::util::{Maos, bin};

type Client = RunningService<RoleClient, ()>;

async fn server(repo: &Path, agent: &str) -> (Client, u32) {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("mcp")
        .current_dir(repo)
        .env("MAOS_AGENT_ID", agent)
        .env_remove("MAOS_WORKSPACE")
        .env_remove("MAOS_BACKEND")
        .env_remove("MAOS_NAMESPACE")
        .env_remove("RUST_LOG");
    let transport = TokioChildProcess::new(cmd).unwrap();
    let pid = transport.id().unwrap();
    let client = ().serve(transport).await.unwrap();
    (client, pid)
}

struct Calls {
    seen: BTreeSet<String>,
}

impl Calls {
    async fn call(&mut self, c: &Client, name: &str, args: Value) -> CallToolResult {
        self.seen.insert(name.to_owned());
        let Value::Object(args) = args else {
            panic!("arguments are an object")
        };
        c.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args))
            .await
            .unwrap_or_else(|e| panic!("{name}: protocol error {e}"))
    }

    /// Calls a tool that must succeed; returns its structured result.
    async fn ok(&mut self, c: &Client, name: &str, args: Value) -> Value {
        let r = self.call(c, name, args).await;
        assert_ne!(r.is_error, Some(true), "{name} failed: {:?}", r.content);
        let s = r
            .structured_content
            .unwrap_or_else(|| panic!("{name}: no structured content"));
        assert!(!r.content.is_empty(), "{name}: no human line");
        s["result"].clone()
    }
}

fn text(r: &CallToolResult) -> String {
    serde_json::to_string(&r.content).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_use_every_tool_and_a_killed_server_frees_its_locks_at_once() {
    every_tool_by_two_agents(Backend::File).await;
}

/// The same on PostgreSQL: the servers act through the database (nothing under `.maos/`), a
/// lock is held by a server's database session, and SIGKILL of that server frees it for the
/// other once the session ends. A missing PostgreSQL server fails the test (never skips it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_use_every_tool_on_postgresql_and_a_killed_server_frees_its_locks() {
    every_tool_by_two_agents(Backend::Postgres).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    File,
    Postgres,
}

async fn every_tool_by_two_agents(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    let pg = backend == Backend::Postgres;
    git(repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("shared.rs"), "one\ntwo\nthree\n").unwrap();
    git(repo, &["add", "."]);
    git(repo, &["commit", "-qm", "init"]);
    for (branch, text) in [
        ("agent/alpha", "ONE\ntwo\nthree\n"),
        ("agent/beta", "uno\ntwo\nthree\n"),
    ] {
        git(repo, &["checkout", "-q", "-b", branch, "main"]);
        std::fs::write(repo.join("shared.rs"), text).unwrap();
        git(repo, &["commit", "-qam", branch]);
    }
    git(repo, &["checkout", "-q", "main"]);
    let maos = if pg {
        crate::backend_cli::pg_workspace(repo).0
    } else {
        Maos::new(repo)
    };
    for (agent, branch) in [("alpha", "agent/alpha"), ("beta", "agent/beta")] {
        maos.agent(agent)
            .run(["agents", "register", "--role", "dev", "--branch", branch])
            .ok();
    }

    let (a, a_pid) = server(repo, "alpha").await;
    let (b, _) = server(repo, "beta").await;
    let info = a.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "maos");
    let listed: BTreeSet<String> = a
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| {
            assert!(
                t.description.as_deref().is_some_and(|d| d.len() > 40),
                "{} needs a description",
                t.name
            );
            assert_eq!(
                t.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                t.name
            );
            t.name.to_string()
        })
        .collect();
    let mut calls = Calls {
        seen: BTreeSet::new(),
    };

    // Agents.
    let me = calls.ok(&a, "whoami", json!({})).await;
    assert_eq!(me["agent"], "alpha");
    assert_eq!(
        me["backend"],
        if pg { "postgresql" } else { "file" },
        "{me}"
    );
    let reg = calls
        .ok(
            &b,
            "register",
            json!({ "role": "dev", "branch": "agent/beta" }),
        )
        .await;
    assert_eq!(reg["role"], "dev");
    let agents = calls.ok(&b, "agents_list", json!({})).await;
    assert_eq!(agents["agents"].as_array().unwrap().len(), 2, "{agents}");

    // Messages.
    calls
        .ok(
            &a,
            "send",
            json!({ "channel": "dev", "to": "beta", "data": { "text": "hi beta" } }),
        )
        .await;
    calls
        .ok(
            &a,
            "send",
            json!({ "channel": "dev", "role": "dev", "data": { "n": 123456789012345678u64 } }),
        )
        .await;
    let got = calls.ok(&b, "receive", json!({ "channel": "dev" })).await;
    assert_eq!(got["messages"].as_array().unwrap().len(), 2, "{got}");
    assert_eq!(
        got["messages"][0]["message"]["payload"]["text"], "hi beta",
        "{got}"
    );
    let again = calls.ok(&b, "receive", json!({ "channel": "dev" })).await;
    assert_eq!(
        again["messages"].as_array().unwrap().len(),
        0,
        "each message once: {again}"
    );
    calls
        .ok(&b, "read_topics", json!({ "patterns": ["build/*"] }))
        .await;
    calls
        .ok(
            &a,
            "broadcast",
            json!({ "topic": "build/linux", "data": { "status": "green" } }),
        )
        .await;
    let topics = calls
        .ok(
            &b,
            "read_topics",
            json!({ "patterns": ["build/*"], "wait_seconds": 5 }),
        )
        .await;
    assert_eq!(topics["messages"][0]["topic"], "build/linux", "{topics}");

    {
        // The inbox (on both backends): everything addressed to beta, plus its stored topic
        // subscriptions.
        let subs = calls
            .ok(&b, "subscribe", json!({ "patterns": ["deploy/**", "x/*"] }))
            .await;
        assert_eq!(subs["subscriptions"], json!(["deploy/**", "x/*"]), "{subs}");
        let subs = calls
            .ok(
                &b,
                "subscribe",
                json!({ "patterns": ["x/*"], "unsubscribe": true }),
            )
            .await;
        assert_eq!(subs["subscriptions"], json!(["deploy/**"]), "{subs}");
        calls
            .ok(
                &a,
                "broadcast",
                json!({ "topic": "deploy/prod/eu", "data": { "status": "live" } }),
            )
            .await;
        let unread = calls.ok(&b, "inbox", json!({})).await;
        assert_eq!(unread["total"], 3, "two on dev, one broadcast: {unread}");
        assert_eq!(unread["channels"]["dev"], 2, "{unread}");
        let read = calls.ok(&b, "inbox", json!({ "read": true })).await;
        let items = read["messages"].as_array().unwrap();
        assert_eq!(items.len(), 3, "{read}");
        assert!(
            items.iter().any(|m| m["topic"] == "deploy/prod/eu"),
            "{read}"
        );
        let again = calls
            .ok(&b, "inbox", json!({ "read": true, "wait_seconds": 0.2 }))
            .await;
        assert_eq!(again["messages"], json!([]), "each once: {again}");
        let bad = calls
            .call(&b, "inbox", json!({ "read": true, "max": 0 }))
            .await;
        assert_eq!(bad.is_error, Some(true));
    }

    // Tasks.
    let design = calls
        .ok(
            &a,
            "task_add",
            json!({ "name": "Design", "estimate_minutes": 30, "priority": "high" }),
        )
        .await;
    let design_id = design["id"].as_str().unwrap().to_owned();
    let build = calls
        .ok(
            &a,
            "task_add",
            json!({ "name": "Build", "after": [design_id.clone()] }),
        )
        .await;
    let build_id = build["id"].as_str().unwrap().to_owned();
    let ready = calls.ok(&b, "task_ready", json!({})).await;
    assert_eq!(ready["total"], 1, "{ready}");
    let claimed = calls.ok(&a, "task_claim", json!({})).await;
    assert_eq!(claimed["id"], design_id.as_str());
    calls
        .ok(&a, "task_done", json!({ "id": design_id, "note": "done" }))
        .await;
    let docs = calls
        .ok(&a, "task_add", json!({ "name": "Docs", "assign": "alpha" }))
        .await;
    let docs_id = docs["id"].as_str().unwrap().to_owned();
    calls.ok(&a, "task_start", json!({ "id": docs_id })).await;
    calls.ok(&a, "task_review", json!({ "id": docs_id })).await;
    let claimed = calls.ok(&b, "task_claim", json!({})).await;
    assert_eq!(claimed["id"], build_id.as_str());
    calls
        .ok(
            &b,
            "task_fail",
            json!({ "id": build_id, "reason": "tests red" }),
        )
        .await;
    let shown = calls
        .ok(&b, "task_show", json!({ "id": &build_id[..6] }))
        .await;
    assert_eq!(shown["status"], "failed");
    let listed_tasks = calls
        .ok(&a, "task_list", json!({ "status": "review" }))
        .await;
    assert_eq!(listed_tasks.as_array().unwrap().len(), 1);
    let report = calls.ok(&a, "task_report", json!({})).await;
    assert!(report.is_object(), "{report}");
    let gantt = calls.ok(&a, "task_gantt", json!({})).await;
    assert!(gantt["mermaid"].as_str().unwrap().contains("gantt"));
    let none = calls.call(&a, "task_claim", json!({})).await;
    assert_eq!(none.is_error, Some(true));
    assert_eq!(none.structured_content.unwrap()["kind"], "busy");
    // The history: created, unblocked by the design's completion, claimed, failed.
    let events: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["created", "unblocked", "claimed", "status"],
        "{shown}"
    );
    let commented = calls
        .ok(
            &a,
            "task_comment",
            json!({ "id": build_id, "text": "flaky runner?" }),
        )
        .await;
    assert_eq!(commented["history"][4]["text"], "flaky runner?");
    // Editing: a completed task takes no new dependency; fields and dependencies change in
    // one step.
    let refused_dep = calls
        .call(
            &a,
            "task_edit",
            json!({ "id": design_id, "add_after": [build_id.clone()] }),
        )
        .await;
    assert_eq!(refused_dep.is_error, Some(true));
    assert!(
        text(&refused_dep).contains("already"),
        "{}",
        text(&refused_dep)
    );
    let edited = calls
        .ok(
            &b,
            "task_edit",
            json!({ "id": build_id, "name": "Build v2", "priority": "high",
                    "labels": ["ci"], "remove_after": [design_id.clone()] }),
        )
        .await;
    assert_eq!(edited["name"], "Build v2");
    assert_eq!(edited["priority"], "high");
    assert!(edited.get("dependencies").is_none(), "{edited}");
    // Alpha's docs task: beta gives it up only by forcing it.
    let refused = calls
        .call(&b, "task_unassign", json!({ "id": docs_id }))
        .await;
    assert_eq!(refused.is_error, Some(true));
    let freed = calls
        .ok(&b, "task_unassign", json!({ "id": docs_id, "force": true }))
        .await;
    assert!(freed["assigned_to"].is_null(), "{freed}");
    assert_eq!(freed["status"], "pending");
    let back = calls
        .ok(
            &b,
            "task_edit",
            json!({ "id": docs_id, "assignee": "alpha" }),
        )
        .await;
    assert_eq!(back["assigned_to"], "alpha");

    // Merge.
    let check = calls
        .call(
            &a,
            "merge_check",
            json!({ "source": "agent/alpha", "target": "agent/beta" }),
        )
        .await;
    assert_eq!(check.is_error, Some(false), "{}", text(&check));
    assert_eq!(
        check.structured_content.as_ref().unwrap()["exit_code"],
        4,
        "{}",
        text(&check)
    );
    let all = calls
        .call(&a, "merge_check_all", json!({ "target": "main" }))
        .await;
    assert_eq!(
        all.structured_content.as_ref().unwrap()["exit_code"],
        4,
        "{}",
        text(&all)
    );
    let res = calls
        .call(
            &a,
            "merge_resolve",
            json!({ "source": "agent/alpha", "target": "agent/beta" }),
        )
        .await;
    assert_eq!(res.is_error, Some(false), "{}", text(&res));

    // Locks: A holds, B is busy naming A.
    let held = calls
        .ok(
            &a,
            "lock_acquire",
            json!({ "resource": "shared.rs", "purpose": "rewrite", "ttl_seconds": 600 }),
        )
        .await;
    assert!(held["token"].as_u64().unwrap() > 0);
    let chk = calls
        .ok(&b, "lock_check", json!({ "resource": "shared.rs" }))
        .await;
    assert_eq!(chk["free"], false);
    let busy = calls
        .call(
            &b,
            "lock_acquire",
            json!({ "resource": "shared.rs", "purpose": "mine" }),
        )
        .await;
    assert_eq!(busy.is_error, Some(true));
    let s = busy.structured_content.unwrap();
    assert_eq!(
        (s["kind"].as_str(), s["exit_code"].as_u64()),
        (Some("busy"), Some(3)),
        "{s}"
    );
    assert!(s["error"].as_str().unwrap().contains("alpha"), "{s}");
    calls
        .ok(&a, "lock_renew", json!({ "resource": "shared.rs" }))
        .await;
    let list = calls.ok(&b, "lock_list", json!({})).await;
    assert_eq!(list["holders"][0]["owner"], "alpha");
    // The lock is the server's, seen by every process (the CLI here), held through its
    // process on the files and through its database session on PostgreSQL.
    let cli = maos.run(["lock", "list", "--json"]);
    cli.ok();
    let live = cli.json()["holders"][0]["live"].clone();
    assert!(
        live.as_str()
            .is_some_and(|l| l.starts_with("session ") == pg),
        "{live}"
    );
    let dl = calls.ok(&b, "deadlock_check", json!({})).await;
    assert_eq!(dl["deadlock"], false);
    calls
        .ok(
            &a,
            "lock_acquire",
            json!({ "resource": "other.rs", "purpose": "x" }),
        )
        .await;
    calls
        .ok(&a, "lock_release", json!({ "resource": "other.rs" }))
        .await;

    // A bad argument is a tool error, and the server keeps serving.
    for (tool, args) in [
        (
            "lock_acquire",
            json!({ "resource": "../../etc/passwd", "purpose": "x" }),
        ),
        (
            "lock_acquire",
            json!({ "resource": "x", "purpose": "x", "wait_seconds": -1 }),
        ),
        ("task_show", json!({ "id": 42 })),
        (
            "send",
            json!({ "channel": "dev", "data": 1, "to": "a", "role": "b" }),
        ),
        ("no_such_tool", json!({})),
    ] {
        let r = calls.call(&b, tool, args).await;
        assert_eq!(r.is_error, Some(true), "{tool}");
        assert_eq!(r.structured_content.unwrap()["kind"], "usage", "{tool}");
    }
    calls.seen.remove("no_such_tool");
    let me = calls.ok(&b, "whoami", json!({})).await;
    assert_eq!(me["agent"], "beta");

    // B waits for the lock; A's server is killed: B gets it through liveness, long before
    // the 600 s lease could end (the wait is 60 s).
    let waiter = {
        let args = json!({ "resource": "shared.rs", "purpose": "after alpha", "wait_seconds": 60 });
        let Value::Object(args) = args else {
            unreachable!()
        };
        let peer = b.peer().clone();
        tokio::spawn(async move {
            peer.call_tool(CallToolRequestParams::new("lock_acquire").with_arguments(args))
                .await
        })
    };
    // Let B's wait begin (its lock_check sees it queued), then kill A.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = calls.ok(&b, "lock_list", json!({})).await;
        if !l["waiters"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "B never queued");
        tokio::task::yield_now().await;
    }
    let killed_at = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(a_pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let got = waiter.await.unwrap().unwrap();
    let took = killed_at.elapsed();
    assert_ne!(got.is_error, Some(true), "{}", text(&got));
    assert_eq!(got.structured_content.unwrap()["result"]["owner"], "beta");
    eprintln!("B acquired the lock {took:?} after A's server was killed");

    assert_eq!(
        calls.seen, listed,
        "every listed tool is called by this test"
    );
    b.cancel().await.unwrap();
    if pg {
        // What the servers did is on the server: the CLI sees it, and nothing went to files.
        let tasks = maos.run(["task", "list", "--json"]);
        tasks.ok();
        assert!(tasks.stdout().contains("Design"), "{}", tasks.stdout());
        for store in ["channels", "tasks", "inboxes", "locks", "agents"] {
            let d = repo.join(".maos").join(store);
            let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
            assert_eq!(n, 0, "{} holds files", d.display());
        }
    }
}

/// On PostgreSQL too, a server started without `MAOS_AGENT_ID` acts for the agent its
/// client's SessionStart hook registered (anchored on the same client process, found in the
/// server's registry), and adds its database session as that agent's anchor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_the_server_acts_for_the_agent_its_hooks_registered() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("a.rs"), "a\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "init"]);
    let wt = dir.path().join("wt-gamma");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "agent/gamma",
            wt.to_str().unwrap(),
        ],
    );
    let (maos, _, _) = crate::backend_cli::pg_workspace(&repo);
    // SessionStart, as Claude Code runs it (no MAOS_AGENT_ID: named from the branch).
    let mut hook = std::process::Command::new(bin());
    hook.args(["hook", "claude", "SessionStart"])
        .current_dir(&wt)
        .env_remove("MAOS_AGENT_ID")
        .env_remove("MAOS_WORKSPACE")
        .env_remove("MAOS_BACKEND")
        .env_remove("MAOS_NAMESPACE")
        .env_remove("RUST_LOG");
    let payload = json!({
        "session_id": "sess-g", "cwd": wt, "hook_event_name": "SessionStart", "source": "startup",
    });
    let mut child = hook
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(payload.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let brief = answer["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(
        brief.contains("`gamma`") && brief.contains("PostgreSQL"),
        "{brief}"
    );

    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("mcp")
        .current_dir(&wt)
        .env_remove("MAOS_AGENT_ID")
        .env_remove("MAOS_WORKSPACE")
        .env_remove("MAOS_BACKEND")
        .env_remove("MAOS_NAMESPACE")
        .env_remove("RUST_LOG");
    let c: Client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    let mut calls = Calls {
        seen: BTreeSet::new(),
    };
    let me = calls.ok(&c, "whoami", json!({})).await;
    assert_eq!(
        (me["agent"].as_str(), me["named_from"].as_str()),
        (Some("gamma"), Some("session")),
        "{me}"
    );
    assert_eq!(me["backend"], "postgresql");
    let agents = maos.run(["agents", "list", "--json"]);
    agents.ok();
    let list = agents.json();
    let gamma = list
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == "gamma"))
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(gamma["liveness"], "alive", "{gamma}");
    c.cancel().await.unwrap();
}

/// On PostgreSQL a lock taken through a server is held by that server's database session: when
/// the session is terminated (an administrator, a network cut), another agent's waiting acquire
/// gets the lock, the server learns that its lock is gone (asking for it again waits in line,
/// naming the new holder, instead of answering "you already hold"), and it works on through a
/// new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_terminated_server_session_frees_its_lock_and_the_server_learns_it() {
    let dir = tempfile::tempdir().unwrap();
    let (maos, url, _) = crate::backend_cli::pg_workspace(dir.path());
    let (a, _) = server(dir.path(), "alpha").await;
    let (b, _) = server(dir.path(), "beta").await;
    let mut calls = Calls {
        seen: BTreeSet::new(),
    };
    let held = calls
        .ok(
            &a,
            "lock_acquire",
            json!({ "resource": "f.rs", "purpose": "edit", "ttl_seconds": 600 }),
        )
        .await;
    let token = held["token"].as_u64().unwrap();
    let list = maos.run(["lock", "list", "--json"]);
    list.ok();
    let live = list.json()["holders"][0]["live"]
        .as_str()
        .unwrap()
        .to_owned();
    let key: i64 = live.strip_prefix("session ").unwrap().parse().unwrap();

    let psql = maos_coordination::postgres::server::find_binaries()
        .unwrap()
        .join("psql");
    let out = std::process::Command::new(psql)
        .arg(&url)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-qtAc",
            &format!(
                "SELECT pg_terminate_backend(backend_pid) FROM maos.sessions WHERE key = {key}"
            ),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "t",
        "{out:?}"
    );

    // B's wait is granted once A's session is gone, long before the 600 s lease.
    let got = calls
        .ok(
            &b,
            "lock_acquire",
            json!({ "resource": "f.rs", "purpose": "after alpha", "wait_seconds": 60 }),
        )
        .await;
    assert_eq!(got["owner"], "beta", "{got}");
    assert!(
        got["token"].as_u64().unwrap() > token,
        "fencing tokens only grow: {got}"
    );
    // A does not believe it still holds the lock: busy, naming B.
    let again = calls
        .call(
            &a,
            "lock_acquire",
            json!({ "resource": "f.rs", "purpose": "edit" }),
        )
        .await;
    assert_eq!(again.is_error, Some(true), "{}", text(&again));
    let s = again.structured_content.unwrap();
    assert_eq!(s["kind"], "busy", "{s}");
    assert!(s["error"].as_str().unwrap().contains("beta"), "{s}");
    // A works on through a new session.
    calls
        .ok(
            &a,
            "lock_acquire",
            json!({ "resource": "g.rs", "purpose": "other" }),
        )
        .await;
    let list = maos.run(["lock", "list", "--json"]);
    list.ok();
    let holders = list.json()["holders"].clone();
    let g = holders
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["resource"] == "g.rs")
        .unwrap_or_else(|| panic!("{holders}"));
    assert_eq!(g["owner"], "alpha");
    assert_ne!(
        g["live"].as_str(),
        Some(live.as_str()),
        "a new session: {g}"
    );
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}
