//! Agent tools: whoami, agents_list.

use maos_coordination::core::now_ms;
use maos_coordination::session::{Holdings, NamedFrom};
use maos_coordination::{AgentRegistry, Liveness};
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
    let held = s
        .blocking(move |s| Ok(Holdings::of(s.ws(), &agent)?))
        .await?;
    let how = match me.named_from {
        NamedFrom::Session => "the agent your session's hooks registered",
        other => other.describe(),
    };
    let text = format!(
        "you are {} ({how}); {} lock(s), {} active task(s)",
        me.agent,
        held.locks.len(),
        held.tasks.len()
    );
    Reply::new(
        &json!({ "agent": me.agent, "named_from": me.named_from, "locks": held.locks, "tasks": held.tasks }),
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
            let reg = AgentRegistry::new(s.ws());
            let old = reg.get(&me)?;
            let mut r = maos_coordination::Registration::new(me.clone()).anchor(
                maos_coordination::core::Anchor::session(
                    maos_coordination::core::ProcessIdentity::current(),
                )
                .in_session(format!("mcp-{}", std::process::id())),
            );
            r.role = role.or_else(|| old.as_ref().and_then(|o| o.role.clone()));
            r.branch = a
                .branch
                .or_else(|| old.as_ref().and_then(|o| o.branch.clone()));
            r.worktree = worktree.or_else(|| old.as_ref().and_then(|o| o.worktree.clone()));
            Ok(reg.register(r)?)
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
    let ws = s.ws().clone();
    let list = s
        .blocking(move |_| Ok(AgentRegistry::new(&ws).list()?))
        .await?;
    let now = now_ms();
    let rows: Vec<_> = list
        .agents
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "role": a.role,
                "liveness": a.liveness_at(now),
                "branch": a.branch,
                "worktree": a.worktree,
                "lease_left_ms": a.lease_until.saturating_sub(now),
            })
        })
        .collect();
    let alive = list
        .agents
        .iter()
        .filter(|a| a.liveness_at(now) != Liveness::Dead)
        .count();
    let text = format!("{} agent(s), {alive} alive", rows.len());
    Reply::new(
        &json!({ "agents": rows, "problems": list.problems.iter().map(ToString::to_string).collect::<Vec<_>>() }),
        text,
    )
}
