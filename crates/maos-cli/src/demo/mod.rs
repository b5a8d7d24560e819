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
//!
//! On a terminal the session is paced (work takes simulated time, 15 s or so in all) and
//! drawn as a live view; `--fast` (the default when stdout is not a terminal) runs it flat
//! out. `--via mcp` makes the agents reach maos only through their own `maos mcp` servers and
//! Claude Code hooks, as coding agents do.

mod agent;
mod coord;
mod log;
mod orchestrator;
mod repo;
mod shared;
mod view;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Run flat out, without simulated work time (the default when stdout is not a
    /// terminal; tests use it).
    #[arg(long, conflicts_with = "paced")]
    fast: bool,
    /// Pace the session even when stdout is not a terminal (work takes simulated time: about
    /// 15 s in all).
    #[arg(long)]
    paced: bool,
    /// How the agents reach maos: `library` (the Rust library, in each agent process) or
    /// `mcp` (only through their own `maos mcp` server and Claude Code hooks).
    #[arg(long, value_enum, default_value = "library", value_name = "HOW")]
    via: coord::Via,
    /// Where the session's coordination lives: `file` (the workspace's `.maos/`, the default)
    /// or a PostgreSQL server, `postgres://user@host[:port]/database` (recorded in the demo
    /// workspace as `maos init --backend` does; git stays local). Not with `--via mcp`.
    #[arg(long, value_name = "URL")]
    backend: Option<String>,
    /// The namespace on the PostgreSQL server (default: the demo repository's identity, new
    /// for every run).
    #[arg(long, value_name = "NAME", requires = "backend")]
    namespace: Option<String>,
    /// Internal: run as one agent of a demo with this role.
    #[arg(long, hide = true, value_name = "ROLE")]
    as_agent: Option<String>,
    /// Internal: milliseconds of simulated work per estimated hour (0: none).
    #[arg(long, hide = true, default_value_t = 0, value_name = "MS")]
    pace_ms: u64,
}

/// How long the simulated work of a paced session takes in all (what the plan's estimates
/// are scaled to); setting up, merging and the agents' own calls come on top.
pub(crate) const PACED_WORK: Duration = Duration::from_secs(16);

impl DemoArgs {
    /// Paced unless `--fast`, or stdout is not a terminal (unless `--paced`).
    fn paced(&self) -> bool {
        self.paced || (!self.fast && std::io::stdout().is_terminal())
    }
}

/// What an agent process reports to the orchestrator, one JSON object per line on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AgentEvent {
    /// When it happened (ms since the Unix epoch).
    #[serde(default)]
    pub(crate) at: u64,
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
    /// Started; the detail says who it is and how it reaches maos.
    Ready,
    Claimed,
    /// What it is doing now (the view's row; not logged).
    Doing,
    Completed,
    /// A task it worked on that someone else (the merge queue) completed first.
    Closed,
    Failed,
    Committed,
    ApiRequested,
    ApiAnswered,
    ApiReceived,
    /// Waiting for a lock another agent holds.
    LockWaiting,
    DeadlockVictim,
    Resolved,
    Merged,
    /// Through MCP: the merge task's pair is clean now; the merge queue merges it.
    MergeChecked,
    /// Done; the detail is its counters (JSON).
    Exiting,
}

pub(crate) use log::LogSink;

pub(crate) fn run(args: DemoArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    match args.as_agent.clone() {
        Some(role) => {
            // The agent process stands for a coding agent's client (as `claude` does): give it
            // a name of its own, so the hooks and the MCP server it starts find it as their
            // session's anchor instead of walking past it as one more `maos` wrapper.
            if let Err(e) = rustix::thread::set_name(c"maos-demo-agent") {
                tracing::warn!("cannot name the agent process: {e}");
            }
            // An agent answers messages while it works: two threads.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let pace = agent::Pace {
                per_hour: Duration::from_millis(args.pace_ms),
            };
            let keep = shared::Keep::default();
            let exit = rt.block_on(agent::run(ctx, &role, args.via, pace, &keep));
            drop(rt);
            drop(keep);
            exit
        }
        None => {
            // Multi-threaded (one worker) so that blocking backend calls can step aside
            // (`block_in_place`): the PostgreSQL client blocks on a runtime of its own.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let paced = args.paced();
            let keep = shared::Keep::default();
            let exit = rt.block_on(orchestrator::run(args, paced, &keep));
            drop(rt);
            drop(keep);
            exit
        }
    }
}
