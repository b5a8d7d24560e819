//! `maos agents ...`: the agent registry.

use clap::Subcommand;
use maos_coordination::core::ProcessIdentity;
use maos_coordination::{AgentId, AgentRegistry, AgentRole, Registration};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::duration;
use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// Register the acting agent (--agent / MAOS_AGENT_ID), replacing an earlier record.
    Register {
        /// Its role (messages to this role reach it).
        #[arg(long)]
        role: Option<String>,
        /// The git branch it works on.
        #[arg(long)]
        branch: Option<String>,
        /// Its git worktree, if not the workspace root (`maos merge check --all --worktree`
        /// then includes its uncommitted changes).
        #[arg(long, value_name = "DIR")]
        worktree: Option<std::path::PathBuf>,
        /// The pid of the process that represents the agent (default: the parent of this
        /// command, i.e. the agent's shell).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Record a heartbeat for the acting agent.
    Heartbeat,
    /// Remove the acting agent (or ID) from the registry.
    Unregister {
        /// The agent to remove (default: the acting agent).
        id: Option<String>,
    },
    /// List registered agents with their liveness.
    List {
        /// Heartbeats older than this count as stale.
        #[arg(long, default_value = "5m", value_parser = duration::parse)]
        stale_after: std::time::Duration,
    },
}

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    record: maos_coordination::AgentRecord,
    liveness: maos_coordination::Liveness,
}

pub(crate) fn run(cmd: AgentsCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let reg = AgentRegistry::new(&ws);
    match cmd {
        AgentsCommand::Register {
            role,
            branch,
            worktree,
            pid,
        } => {
            let mut r = Registration::new(ctx.agent.clone());
            if let Some(role) = role {
                r = r.role(AgentRole::new(role)?);
            }
            if let Some(b) = branch {
                r = r.branch(b);
            }
            if let Some(w) = worktree {
                let w = std::path::absolute(&w)
                    .map_err(|e| anyhow::anyhow!("--worktree {}: {e}", w.display()))?;
                anyhow::ensure!(w.is_dir(), "--worktree {}: not a directory", w.display());
                r.worktree = Some(w);
            }
            let process = match pid {
                Some(pid) => ProcessIdentity::of(pid)
                    .ok_or_else(|| anyhow::anyhow!("no process with pid {pid} on this host"))?,
                None => ProcessIdentity::parent(),
            };
            let rec = reg.register(r.process(process))?;
            ctx.emit(&rec, || {
                format!(
                    "registered {} (role {}, pid {})",
                    rec.id,
                    rec.role.as_ref().map_or("-", |r| r.as_str()),
                    rec.process.pid
                )
            })?;
        }
        AgentsCommand::Heartbeat => {
            let rec = reg.heartbeat(&ctx.agent)?;
            ctx.emit(&rec, || format!("heartbeat recorded for {}", rec.id))?;
        }
        AgentsCommand::Unregister { id } => {
            let id = match id {
                Some(id) => AgentId::new(id)?,
                None => ctx.agent.clone(),
            };
            let removed = reg.unregister(&id)?;
            ctx.emit(
                &serde_json::json!({ "agent": id, "removed": removed }),
                || {
                    if removed {
                        format!("unregistered {id}")
                    } else {
                        format!("{id} was not registered")
                    }
                },
            )?;
        }
        AgentsCommand::List { stale_after } => {
            let list = reg.list()?;
            for p in &list.problems {
                tracing::warn!("{p}");
            }
            let rows: Vec<Row> = list
                .agents
                .into_iter()
                .map(|record| Row {
                    liveness: record.liveness(stale_after),
                    record,
                })
                .collect();
            ctx.emit(&rows, || render(&rows))?;
            if !list.problems.is_empty() {
                return Err(anyhow::anyhow!(
                    "{} unreadable agent record(s): {}",
                    list.problems.len(),
                    list.problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
    }
    Ok(Exit::Ok)
}

fn render(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no agents registered".into();
    }
    let now = maos_coordination::core::now_ms();
    let mut out = format!(
        "{:<20} {:<12} {:<18} {:>8} {:>10}  {}\n",
        "AGENT", "ROLE", "LIVENESS", "PID", "SEEN", "BRANCH"
    );
    for r in rows {
        let rec = &r.record;
        out.push_str(&format!(
            "{:<20} {:<12} {:<18} {:>8} {:>10}  {}\n",
            rec.id,
            rec.role.as_ref().map_or("-", |r| r.as_str()),
            serde_json::to_value(r.liveness)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            rec.process.pid,
            format!(
                "{} ago",
                duration::format(std::time::Duration::from_millis(
                    now.saturating_sub(rec.last_seen)
                ))
            ),
            rec.branch.as_deref().unwrap_or("-"),
        ));
    }
    out
}
