//! `maos agents ...`: the agent registry.

use std::collections::BTreeMap;

use clap::Subcommand;
use maos_coordination::core::{AgentView, Anchor, AnchorKind, ProcessIdentity, human_ms, now_ms};
use maos_coordination::{AgentId, AgentRole, Liveness, Registration};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// Register the acting agent (--agent / MAOS_AGENT_ID), replacing an earlier record.
    ///
    /// The agent stays alive while the process standing for it runs: by default the nearest
    /// ancestor of this command that is not a shell or wrapper (for an agent running each
    /// command in a fresh shell, its own client process), else while its lease runs (renewed
    /// by every maos command of the agent; `agent_lease_ms` in .maos/config.json, default 15m).
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
        /// A long-lived process that stands for the agent: when it ends, the agent is dead at
        /// once and its claims and locks are released.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Renew the acting agent's lease (every maos command of a registered agent does too).
    Heartbeat,
    /// Remove the acting agent (or ID) from the registry, releasing its locks and claims.
    Unregister {
        /// The agent to remove (default: the acting agent).
        id: Option<String>,
    },
    /// List registered agents: liveness, anchor, lease left, branch, worktree, what they hold
    /// and claim.
    List,
}

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    view: AgentView,
    /// Resources it holds locks on.
    holds: Vec<String>,
    /// Tasks assigned to it that are not finished (ids).
    claims: Vec<String>,
}

pub(crate) fn run(cmd: AgentsCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    let backends = ctx.backends()?;
    let reg = backends.agents();
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
                r = r.worktree(w);
            }
            let anchor =
                match pid {
                    Some(pid) => Anchor::session(ProcessIdentity::of(pid).ok_or_else(|| {
                        anyhow::anyhow!("--pid {pid}: no such process on this host")
                    })?),
                    None => Anchor::ancestor(
                        ProcessIdentity::anchor().unwrap_or_else(ProcessIdentity::current),
                    ),
                };
            let rec = reg.register(r.anchor(anchor.clone()))?;
            ctx.emit(&rec, || {
                format!(
                    "registered {} (role {}), anchored by pid {} ({}); lease {}",
                    rec.id,
                    rec.role.as_ref().map_or("-", |r| r.as_str()),
                    anchor.process.pid,
                    match anchor.kind {
                        AnchorKind::Session => "the agent ends when it ends",
                        AnchorKind::Ancestor => "the agent's client process",
                    },
                    human_ms(rec.lease_until.saturating_sub(now_ms())),
                )
            })?;
        }
        AgentsCommand::Heartbeat => {
            let rec = reg.heartbeat(&ctx.agent)?;
            ctx.emit(&rec, || {
                format!(
                    "lease of {} renewed: {} left",
                    rec.id,
                    human_ms(rec.lease_until.saturating_sub(now_ms()))
                )
            })?;
        }
        AgentsCommand::Unregister { id } => {
            let id = match id {
                Some(id) => AgentId::new(id)?,
                None => ctx.agent.clone(),
            };
            let released_locks = backends.locks().release_agent(&id)?;
            let released_tasks = backends
                .tasks(&ctx.agent, None)?
                .release_agent(&id, &format!("released: agent {id} unregistered"))?;
            let removed = reg.unregister(&id)?;
            ctx.emit(
                &serde_json::json!({
                    "agent": id,
                    "removed": removed,
                    "released_locks": released_locks.len(),
                    "released_tasks": released_tasks,
                }),
                || {
                    let what = format!(
                        "{} lock(s) and {} claimed task(s) released",
                        released_locks.len(),
                        released_tasks.len()
                    );
                    if removed {
                        format!("unregistered {id}; {what}")
                    } else {
                        format!("{id} was not registered; {what}")
                    }
                },
            )?;
        }
        AgentsCommand::List => {
            let (agents, problems) = reg.list()?;
            for p in &problems {
                tracing::warn!("{p}");
            }
            let mut holds: BTreeMap<AgentId, Vec<String>> = BTreeMap::new();
            for h in backends.locks().snapshot()?.holders {
                holds
                    .entry(h.owner)
                    .or_default()
                    .push(h.resource.to_string());
            }
            let mut claims: BTreeMap<AgentId, Vec<String>> = BTreeMap::new();
            for t in backends.tasks(&ctx.agent, None)?.list()? {
                if let (true, Some(a)) = (t.status.is_active(), t.assigned_to) {
                    claims.entry(a).or_default().push(t.id.to_string());
                }
            }
            let rows: Vec<Row> = agents
                .into_iter()
                .map(|view| Row {
                    holds: holds.remove(&view.record.id).unwrap_or_default(),
                    claims: claims.remove(&view.record.id).unwrap_or_default(),
                    view,
                })
                .collect();
            ctx.emit(&rows, || render(&rows))?;
            if !problems.is_empty() {
                return Err(anyhow::anyhow!(
                    "{} unreadable agent record(s): {}",
                    problems.len(),
                    problems.join("; ")
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
    let mut out = format!(
        "{:<20} {:<10} {:<8} {:<22} {:>7}  {:<18} {:<6} {:<6} {}\n",
        "AGENT", "ROLE", "STATE", "ANCHOR", "LEASE", "BRANCH", "LOCKS", "TASKS", "WORKTREE"
    );
    for r in rows {
        let rec = &r.view.record;
        let anchor = match &r.view.live_anchor {
            Some(a) => format!(
                "pid {} ({})",
                a.process.pid,
                match a.kind {
                    AnchorKind::Session => "session",
                    AnchorKind::Ancestor => "client",
                }
            ),
            None => "none running".into(),
        };
        out.push_str(&format!(
            "{:<20} {:<10} {:<8} {:<22} {:>7}  {:<18} {:<6} {:<6} {}\n",
            rec.id,
            rec.role.as_ref().map_or("-", |r| r.as_str()),
            match r.view.liveness {
                Liveness::Alive => "alive",
                Liveness::Leased => "leased",
                Liveness::Dead => "dead",
            },
            anchor,
            human_ms(r.view.lease_left_ms),
            rec.branch.as_deref().unwrap_or("-"),
            r.holds.len(),
            r.claims.len(),
            rec.worktree
                .as_ref()
                .map_or_else(|| "-".into(), |w| w.display().to_string()),
        ));
        for h in &r.holds {
            out.push_str(&format!("    holds  {h}\n"));
        }
        for c in &r.claims {
            out.push_str(&format!("    claims {c}\n"));
        }
    }
    out
}
