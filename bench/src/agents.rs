//! Agents where they work: a Claude Code hook call end to end (process start to exit) with
//! 1,000 locks held and 10 agents registered, beside a bare `maos --version`; an MCP tool call
//! round trip for a lock check, beside an MCP `ping` round trip on the same server.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maos_coordination::{AgentId, AgentRegistry, FileLock, Registration, ResourceName, Workspace};
use serde_json::{Value, json};

use crate::table::{Row, Table, median_us, percentile_us};

fn maos_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("maos");
    p.exists().then_some(p)
}

/// A workspace with 10 agents registered and 1,000 agent-held locks.
fn workspace() -> anyhow::Result<(tempfile::TempDir, Workspace)> {
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let reg = AgentRegistry::new(&ws);
    for i in 0..10 {
        reg.register(Registration::new(AgentId::new(format!("agent-{i}"))?))?;
    }
    for i in 0..1000 {
        let owner = AgentId::new(format!("agent-{}", i % 10))?;
        let g = FileLock::new(&ws, ResourceName::new(format!("src/m{}/f{i}.rs", i % 37))?)
            .agent(owner)
            .ttl(Duration::from_secs(3600))
            .try_acquire("bench")?
            .ok_or_else(|| anyhow::anyhow!("lock {i} busy"))?;
        g.detach()?;
    }
    Ok((dir, ws))
}

fn run_hook(bin: &Path, cwd: &Path, event: &str, payload: &Value) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(["hook", "claude", event])
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("MAOS_WORKSPACE")
        .env("MAOS_AGENT_ID", "agent-3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(payload.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    anyhow::ensure!(out.status.success(), "hook {event} failed");
    Ok(took)
}

pub(crate) fn run(table: &mut Table) -> anyhow::Result<()> {
    let Some(bin) = maos_binary() else {
        anyhow::bail!(
            "no maos binary next to the bench binary: `cargo xtask bench` builds it with --release"
        );
    };
    let (dir, _ws) = workspace()?;
    let root = dir.path();
    let file = root.join("src/m1/unlocked.rs");
    let pre = json!({
        "session_id": "bench-session", "cwd": root, "hook_event_name": "PreToolUse",
        "tool_name": "Edit",
        "tool_input": { "file_path": file, "old_string": "a", "new_string": "b" },
    });
    let post = json!({
        "session_id": "bench-session", "cwd": root, "hook_event_name": "PostToolUse",
        "tool_name": "Edit",
        "tool_input": { "file_path": file, "old_string": "a", "new_string": "b" },
        "tool_response": {},
    });
    std::fs::create_dir_all(file.parent().unwrap_or(root))?;
    std::fs::write(&file, "a\n")?;
    run_hook(
        &bin,
        root,
        "SessionStart",
        &json!({ "session_id": "bench-session", "cwd": root, "hook_event_name": "SessionStart" }),
    )?;
    let runs = 200;
    let (mut pre_t, mut post_t, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        pre_t.push(run_hook(&bin, root, "PreToolUse", &pre)?);
        post_t.push(run_hook(&bin, root, "PostToolUse", &post)?);
        let t = Instant::now();
        let st = Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .status()?;
        base.push(t.elapsed());
        anyhow::ensure!(st.success(), "maos --version failed");
    }
    let base_p50 = median_us(&mut base) / 1000.0;
    let rows = [
        (
            "PreToolUse (Edit) hook, 1,000 locks, 10 agents (p50)",
            percentile_us(&mut pre_t, 50.0),
            5.0,
        ),
        (
            "PreToolUse (Edit) hook, 1,000 locks, 10 agents (p99)",
            percentile_us(&mut pre_t, 99.0),
            20.0,
        ),
        (
            "PostToolUse (Edit) hook, 1,000 locks, 10 agents (p50)",
            percentile_us(&mut post_t, 50.0),
            5.0,
        ),
        (
            "PostToolUse (Edit) hook, 1,000 locks, 10 agents (p99)",
            percentile_us(&mut post_t, 99.0),
            20.0,
        ),
    ];
    for (name, us, target_ms) in rows {
        let v = us / 1000.0;
        table.push(Row {
            group: "agents",
            name: name.into(),
            value: v,
            baseline_name: "process start: `maos --version` (p50)".into(),
            baseline: base_p50,
            unit: "ms",
            higher_is_better: false,
            target: format!("<= {target_ms} ms"),
            met: v <= target_ms,
        });
    }
    mcp(table, &bin, root)
}

/// One `maos mcp` process spoken to over its stdio, JSON-RPC line by line.
struct Mcp {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    next: u64,
}

impl Mcp {
    fn start(bin: &Path, cwd: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .arg("mcp")
            .current_dir(cwd)
            .env("MAOS_AGENT_ID", "agent-5")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
        );
        let mut m = Self {
            child,
            out,
            next: 0,
        };
        m.request(
            "initialize",
            json!({
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": { "name": "maos-bench", "version": "1" } }),
        )?;
        m.notify("notifications/initialized")?;
        Ok(m)
    }

    fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        writeln!(stdin, "{v}")?;
        stdin.flush()?;
        Ok(())
    }

    fn notify(&mut self, method: &str) -> anyhow::Result<()> {
        self.send(&json!({ "jsonrpc": "2.0", "method": method }))
    }

    fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next += 1;
        let id = self.next;
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))?;
        loop {
            let mut line = String::new();
            anyhow::ensure!(
                self.out.read_line(&mut line)? > 0,
                "the MCP server closed its output"
            );
            let v: Value = serde_json::from_str(&line)?;
            if v.get("id") == Some(&json!(id)) {
                anyhow::ensure!(v.get("error").is_none(), "{method}: {v}");
                return Ok(v);
            }
        }
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn mcp(table: &mut Table, bin: &Path, root: &Path) -> anyhow::Result<()> {
    let mut m = Mcp::start(bin, root)?;
    let check = json!({ "name": "lock_check", "arguments": { "resource": "src/m1/f1.rs" } });
    // Warm up (the first call names and registers the agent).
    m.request("tools/call", check.clone())?;
    let (mut calls, mut pings) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        let t = Instant::now();
        let r = m.request("tools/call", check.clone())?;
        calls.push(t.elapsed());
        anyhow::ensure!(
            r["result"]["isError"] == json!(false),
            "lock_check failed: {r}"
        );
        let t = Instant::now();
        m.request("ping", json!({}))?;
        pings.push(t.elapsed());
    }
    let v = median_us(&mut calls) / 1000.0;
    table.push(Row {
        group: "agents",
        name: "MCP tool call round trip: lock_check, 1,000 locks held (p50)".into(),
        value: v,
        baseline_name: "MCP `ping` round trip, same server (p50)".into(),
        baseline: median_us(&mut pings) / 1000.0,
        unit: "ms",
        higher_is_better: false,
        target: "<= 1 ms".into(),
        met: v <= 1.0,
    });
    Ok(())
}
