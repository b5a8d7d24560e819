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
