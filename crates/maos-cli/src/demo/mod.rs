//! `maos demo`: a real multi-agent session in a temporary workspace, nothing to set up.
//!
//! The orchestrator (this process) creates a git repository and a maos workspace, builds the
//! feature's task graph (the design's `track_feature_implementation`) and starts the agents as
//! separate OS processes of this same binary (`maos demo --as-agent ROLE`). Agents claim ready
//! tasks, lock the files they edit, message each other and commit on their own branches. The
//! backend and frontend edit the same lines of `src/shared/routes.rs`: the merge coordinator
//! predicts the conflict, the queue turns it into a resolution task, an agent resolves it and
//! the queue merges everything. Two agents take two locks in opposite orders: the deadlock
//! detector finds the cycle, broadcasts it and ends the victim's wait. The run ends with the
//! report, the critical path, the Mermaid Gantt, and a check of every step (exit status).

mod agent;
mod orchestrator;
mod repo;
mod view;

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::ctx::Ctx;
use crate::exit::Exit;

/// Roles of the agents, in start order.
pub(crate) const ROLES: [&str; 4] = ["architect", "backend", "frontend", "reviewer"];
/// The orchestrator's agent id.
pub(crate) const ORCHESTRATOR: &str = "orchestrator";
/// The channel frontend and backend talk on (as in the design's `coordinate_with_backend`).
pub(crate) const API_CHANNEL: &str = "backend-frontend";
/// The channel the two deadlocking agents use as a barrier.
pub(crate) const SYNC_CHANNEL: &str = "demo/sync";

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many agents to start (at least the four roles: architect, backend, frontend,
    /// reviewer; more agents share the extra tasks).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(4..=12))]
    agents: u32,
    /// How many extra module tasks (random dependencies) to add to the feature's graph.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=200))]
    tasks: u32,
    /// Seed of the random task graph.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep the workspace in DIR (created if needed) instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Give up (exit 1) if the session has not finished after this long.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse)]
    timeout: std::time::Duration,
    /// Internal: run as one agent of a demo with this role.
    #[arg(long, hide = true, value_name = "ROLE")]
    as_agent: Option<String>,
}

/// What an agent process reports to the orchestrator, one JSON object per line on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AgentEvent {
    pub(crate) agent: String,
    pub(crate) event: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) task: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventKind {
    Ready,
    Claimed,
    Completed,
    Failed,
    Committed,
    ApiRequested,
    ApiAnswered,
    ApiReceived,
    DeadlockVictim,
    Resolved,
    Merged,
    Exiting,
}

pub(crate) fn run(args: DemoArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.as_agent.clone() {
        Some(role) => rt.block_on(agent::run(ctx, &role)),
        None => rt.block_on(orchestrator::run(args)),
    }
}
