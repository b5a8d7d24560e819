//! Agent tools: whoami, agents_list.

use maos_coordination::Liveness;
use maos_coordination::session::NamedFrom;
use serde_json::json;

use super::locks::Empty;
use super::{Reply, Server, ToolResult};

tool_group! {
    "whoami" => whoami(Empty):
        "Who you are to maos (your agent name and how it was chosen), what you hold (locks) and \
         claim (tasks). Call it first.",
    "register" => register(Register):
        "Say who you are to the other agents: your role (messages addressed to that role reach \
         you, e.g. `backend`), the git branch you work on and your worktree (used to predict \
         merge conflicts and attribute changes). Only the fields you give change.",
    "agents_list" => list(Empty):
        "List the agents working in this repository: alive or not, role, branch, worktree, how \
         many locks and tasks each holds.",
}

async fn whoami(s: &Server, _: Empty) -> ToolResult {
    let me = s.me()?.clone();
    let agent = me.agent.clone();
    let (locks, tasks) = s
        .blocking(move |s| {
            let b = s.backends();
            let locks: Vec<_> = b
                .locks()
                .snapshot()?
                .holders
                .into_iter()
                .filter(|h| h.owner == agent)
                .collect();
            let tasks: Vec<_> = b
                .tasks(&agent, None)?
                .list()?
                .into_iter()
                .filter(|t| t.status.is_active() && t.assigned_to.as_ref() == Some(&agent))
                .collect();
            Ok((locks, tasks))
        })
        .await?;
    let how = match me.named_from {
        NamedFrom::Session => "the agent your session's hooks registered",
        other => other.describe(),
    };
    let text = format!(
        "you are {} ({how}); {} lock(s), {} active task(s)",
        me.agent,
        locks.len(),
        tasks.len()
    );
    Reply::new(
        &json!({ "agent": me.agent, "named_from": me.named_from, "locks": locks, "tasks": tasks,
                 "backend": s.backends().name() }),
        text,
    )
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Register {
    /// Your role (letters, digits, `._-`).
    #[serde(default)]
    role: Option<String>,
    /// The git branch you work on.
    #[serde(default)]
    branch: Option<String>,
    /// Your git worktree (absolute path).
    #[serde(default)]
    worktree: Option<String>,
}

async fn register(s: &Server, a: Register) -> ToolResult {
    let me = s.agent()?;
    let role = a
        .role
        .map(maos_coordination::AgentRole::new)
        .transpose()
        .map_err(|e| super::ToolError::usage(format!("role: {e}")))?;
    let worktree = a.worktree.map(std::path::PathBuf::from);
    if let Some(w) = &worktree
        && !w.is_dir()
    {
        return Err(super::ToolError::usage(format!(
            "worktree {}: not a directory",
            w.display()
        )));
    }
    let rec = s
        .blocking(move |s| {
            let old = s.registered(&me)?.map(|v| v.record);
            let mut r = s.anchored(maos_coordination::Registration::new(me.clone()));
            r.role = role.or_else(|| old.as_ref().and_then(|o| o.role.clone()));
            r.branch = a
                .branch
                .or_else(|| old.as_ref().and_then(|o| o.branch.clone()));
            r.worktree = worktree.or_else(|| old.as_ref().and_then(|o| o.worktree.clone()));
            Ok(s.backends().agents().register(r)?)
        })
        .await?;
    let text = format!(
        "{} registered (role {}, branch {})",
        rec.id,
        rec.role.as_ref().map_or("-", |r| r.as_str()),
        rec.branch.as_deref().unwrap_or("-")
    );
    Reply::new(&rec, text)
}

async fn list(s: &Server, _: Empty) -> ToolResult {
    let (agents, problems) = s
        .blocking(move |s| Ok(s.backends().agents().list()?))
        .await?;
    let rows: Vec<_> = agents
        .iter()
        .map(|a| {
            json!({
                "id": a.record.id,
                "role": a.record.role,
                "liveness": a.liveness,
                "branch": a.record.branch,
                "worktree": a.record.worktree,
                "lease_left_ms": a.lease_left_ms,
            })
        })
        .collect();
    let alive = agents
        .iter()
        .filter(|a| a.liveness != Liveness::Dead)
        .count();
    let text = format!("{} agent(s), {alive} alive", rows.len());
    Reply::new(&json!({ "agents": rows, "problems": problems }), text)
}
