//! `maos lock ...` and `maos deadlock ...`: locks on files and resources (maos-lock).

use std::ffi::OsString;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use maos_coordination::ResourceName;
use maos_coordination::core::now_ms;
use maos_coordination::lock::{
    Deadlock, DeadlockDetector, Error as LockError, FencingToken, FileLock, LockInfo, LockMode,
    LockTable, VICTIM_RULE,
};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::duration;
use crate::exit::{Exit, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum LockCommand {
    /// Take a lock for the acting agent and print its fencing token. The lock stays held by
    /// the agent after this command exits, until `maos lock release` or the lease ends (keep
    /// it with `maos lock renew`).
    Acquire {
        /// Workspace-relative path or pattern (`src/api/**`); an absolute path inside the
        /// workspace is accepted.
        resource: String,
        /// Lease length.
        #[arg(long, default_value = "5m", value_parser = duration::parse)]
        ttl: Duration,
        /// How long to wait for the lock (0: fail at once when it is taken).
        #[arg(long, default_value = "30s", value_parser = duration::parse)]
        wait: Duration,
        /// Why you take it (shown to others who wait).
        #[arg(long, default_value = "")]
        purpose: String,
        /// A shared (read) lock instead of an exclusive one.
        #[arg(long)]
        shared: bool,
    },
    /// Release the acting agent's lock on RESOURCE.
    Release {
        /// The resource, as given to `acquire`.
        resource: String,
        /// Release only the lock with this fencing token.
        #[arg(long)]
        token: Option<u64>,
    },
    /// Extend the acting agent's lease on RESOURCE by its length (or --ttl); without
    /// RESOURCE, renew every lock the agent holds (its heartbeat).
    Renew {
        /// The resource, as given to `acquire`.
        resource: Option<String>,
        /// New lease length.
        #[arg(long, value_parser = duration::parse)]
        ttl: Option<Duration>,
    },
    /// List held locks and queued waiters.
    List,
    /// Hold a lock while CMD runs, renewing it; exit with CMD's status (like flock(1)).
    /// CMD gets MAOS_LOCK_RESOURCE and MAOS_LOCK_TOKEN in its environment.
    Run {
        /// The resource.
        resource: String,
        /// Lease length (renewed every third of it while CMD runs).
        #[arg(long, default_value = "1m", value_parser = duration::parse)]
        ttl: Duration,
        /// How long to wait for the lock.
        #[arg(long, default_value = "30s", value_parser = duration::parse)]
        wait: Duration,
        /// Why you take it.
        #[arg(long, default_value = "")]
        purpose: String,
        /// A shared (read) lock.
        #[arg(long)]
        shared: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Exit 0 if PATH is free or held by the acting agent, 3 if another holds it.
    Check {
        /// Workspace-relative path (or absolute path inside the workspace).
        path: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadlockCommand {
    /// Look for a cycle in the wait-for graph of all processes; exit 5 if there is one.
    Check {
        /// Also broadcast each cycle on the `deadlock` topic.
        #[arg(long)]
        broadcast: bool,
        /// Also resolve each cycle: the victim's wait ends with a deadlock error.
        #[arg(long)]
        resolve: bool,
    },
}

fn resource(ctx: &Ctx, s: &str) -> anyhow::Result<ResourceName> {
    ResourceName::in_workspace(&ctx.root, s).with_context(|| format!("resource {s:?}"))
}

fn lock_failure(e: LockError) -> anyhow::Error {
    let code = match &e {
        LockError::Timeout { .. } => Exit::Busy,
        LockError::Deadlock { .. } => Exit::Deadlock,
        _ => return anyhow::Error::new(e),
    };
    Failure::error(code, e.to_string())
}

fn describe(h: &LockInfo) -> String {
    let now = now_ms();
    let left = if h.expires_at > now {
        duration::format(Duration::from_millis(h.expires_at - now))
    } else {
        "expired".into()
    };
    let by = match (&h.live, &h.process) {
        (Some(_), Some(p)) => format!("pid {}", p.pid),
        _ => "lease".into(),
    };
    format!(
        "{} {} token {} by {} ({}), lease left {}{}",
        h.resource,
        match h.mode {
            LockMode::Shared => "shared",
            _ => "exclusive",
        },
        h.token,
        h.owner,
        by,
        left,
        if h.purpose.is_empty() {
            String::new()
        } else {
            format!(": {}", h.purpose)
        }
    )
}

pub(crate) fn run(cmd: LockCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    match cmd {
        LockCommand::Acquire {
            resource: r,
            ttl,
            wait,
            purpose,
            shared,
        } => {
            let res = resource(ctx, &r)?;
            let lock = FileLock::new(&ws, res)
                .agent(ctx.agent.clone())
                .ttl(ttl)
                .wait(wait)
                .mode(if shared {
                    LockMode::Shared
                } else {
                    LockMode::Exclusive
                });
            let guard = lock.acquire_blocking(&purpose).map_err(lock_failure)?;
            let info = guard.detach()?;
            ctx.emit(&info, || info.token.to_string())?;
            Ok(Exit::Ok)
        }
        LockCommand::Release { resource: r, token } => {
            let res = resource(ctx, &r)?;
            let done = LockTable::open(&ws)?
                .release(&res, &ctx.agent, token.map(FencingToken))
                .map_err(lock_failure)?;
            ctx.emit(&done, || {
                done.iter()
                    .map(|h| format!("released {} token {}", h.resource, h.token))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            Ok(Exit::Ok)
        }
        LockCommand::Renew { resource: r, ttl } => {
            let table = LockTable::open(&ws)?;
            let done = match r {
                Some(r) => table
                    .renew(&resource(ctx, &r)?, &ctx.agent, ttl)
                    .map_err(lock_failure)?,
                None => table.renew_all_ttl(&ctx.agent, ttl)?,
            };
            ctx.emit(&done, || {
                if done.is_empty() {
                    return format!("agent {} holds no locks", ctx.agent);
                }
                done.iter().map(describe).collect::<Vec<_>>().join("\n")
            })?;
            Ok(Exit::Ok)
        }
        LockCommand::List => {
            let snap = LockTable::open(&ws)?.snapshot()?;
            ctx.emit(&snap, || {
                let mut s = String::new();
                if snap.holders.is_empty() {
                    s.push_str("no locks held\n");
                }
                for h in &snap.holders {
                    s.push_str(&describe(h));
                    s.push('\n');
                }
                for w in &snap.waiters {
                    s.push_str(&format!(
                        "waiting: {} for {} (ticket {}, {}){}\n",
                        w.agent,
                        w.resource,
                        w.ticket,
                        duration::format(Duration::from_millis(now_ms().saturating_sub(w.since))),
                        if w.purpose.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", w.purpose)
                        }
                    ));
                }
                s
            })?;
            Ok(Exit::Ok)
        }
        LockCommand::Run {
            resource: r,
            ttl,
            wait,
            purpose,
            shared,
            cmd,
        } => run_command(ctx, &ws, &r, ttl, wait, &purpose, shared, cmd),
        LockCommand::Check { path } => {
            let res = resource(ctx, &path)?;
            let holders = LockTable::open(&ws)?.conflicting(&res, LockMode::Exclusive)?;
            let others: Vec<&LockInfo> = holders.iter().filter(|h| h.owner != ctx.agent).collect();
            #[derive(Serialize)]
            struct CheckOut<'a> {
                resource: &'a ResourceName,
                free: bool,
                held_by_you: bool,
                holders: &'a [LockInfo],
            }
            let out = CheckOut {
                resource: &res,
                free: holders.is_empty(),
                held_by_you: !holders.is_empty() && others.is_empty(),
                holders: &holders,
            };
            if others.is_empty() {
                ctx.emit(&out, || {
                    if holders.is_empty() {
                        format!("{res} is free")
                    } else {
                        format!("{res} is held by you ({})", ctx.agent)
                    }
                })?;
                Ok(Exit::Ok)
            } else {
                if ctx.json {
                    ctx.emit(&out, String::new)?;
                }
                Err(Failure::error(
                    Exit::Busy,
                    format!("{res} is held: {}", describe(others[0])),
                ))
            }
        }
    }
}

#[allow(clippy::too_many_arguments)] // one argument per command-line option
fn run_command(
    ctx: &Ctx,
    ws: &maos_coordination::Workspace,
    r: &str,
    ttl: Duration,
    wait: Duration,
    purpose: &str,
    shared: bool,
    cmd: Vec<OsString>,
) -> anyhow::Result<Exit> {
    let res = resource(ctx, r)?;
    let purpose = if purpose.is_empty() {
        cmd.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        purpose.to_owned()
    };
    let guard = FileLock::new(ws, res.clone())
        .agent(ctx.agent.clone())
        .ttl(ttl)
        .wait(wait)
        .heartbeat(true)
        .mode(if shared {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        })
        .acquire_blocking(&purpose)
        .map_err(lock_failure)?;
    // The child inherits this process's liveness descriptor: killing this CLI does not free
    // the lock while the child still runs inside the critical section.
    guard.share_with_children()?;
    let (prog, args) = cmd.split_first().context("no command given")?;
    let status = std::process::Command::new(prog)
        .args(args)
        .env("MAOS_LOCK_RESOURCE", res.as_str())
        .env("MAOS_LOCK_TOKEN", guard.token().to_string())
        .status()
        .with_context(|| format!("cannot run {}", prog.to_string_lossy()));
    let lost = guard.is_lost();
    let released = guard.release();
    let status = status?;
    if lost {
        tracing::warn!(resource = %res, "the lock was lost while the command ran");
    }
    if let Err(e) = released {
        eprintln!("maos: {:#}", anyhow::Error::new(e));
    }
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    std::process::exit(code)
}

pub(crate) fn run_deadlock(cmd: DeadlockCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    match cmd {
        DeadlockCommand::Check { broadcast, resolve } => {
            let mut det = DeadlockDetector::new(&ws)
                .sender(ctx.agent.clone())
                .broadcast(broadcast)
                .resolve(resolve);
            let found = det.check()?;
            #[derive(Serialize)]
            struct Out<'a> {
                deadlock: bool,
                cycles: &'a [Deadlock],
                victim_rule: &'a str,
            }
            ctx.emit(
                &Out {
                    deadlock: !found.is_empty(),
                    cycles: &found,
                    victim_rule: VICTIM_RULE,
                },
                || {
                    if found.is_empty() {
                        return "no deadlock".into();
                    }
                    let mut s = String::new();
                    for d in &found {
                        s.push_str(&format!(
                            "deadlock among {}\n",
                            d.agents
                                .iter()
                                .map(|a| a.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        for w in &d.waits {
                            s.push_str(&format!(
                                "  {} waits for {} on {} (ticket {})\n",
                                w.waiter, w.holder, w.resource, w.ticket
                            ));
                        }
                        s.push_str(&format!(
                            "  suggested victim: {} (its wait for {}; rule: {}){}\n",
                            d.victim,
                            d.victim_resource,
                            VICTIM_RULE,
                            if resolve { ", aborted" } else { "" }
                        ));
                    }
                    s
                },
            )?;
            Ok(if found.is_empty() {
                Exit::Ok
            } else {
                Exit::Deadlock
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_without_a_resource_applies_the_given_ttl() {
        let dir = std::env::temp_dir().join(format!(
            "maos-lock-review-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        maos_coordination::Workspace::init(&dir).unwrap();
        let ctx = Ctx::new(Some(&dir), Some("agent-a"), true).unwrap();
        let acquire = LockCommand::Acquire {
            resource: "f.txt".into(),
            ttl: Duration::from_secs(60),
            wait: Duration::ZERO,
            purpose: String::new(),
            shared: false,
        };
        run(acquire, &ctx).unwrap();
        let renew = LockCommand::Renew {
            resource: None,
            ttl: Some(Duration::from_secs(3600)),
        };
        run(renew, &ctx).unwrap();
        let ws = ctx.workspace().unwrap();
        let snap = LockTable::open(&ws).unwrap().snapshot().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(snap.holders.len(), 1);
        assert_eq!(
            snap.holders[0].ttl_ms, 3_600_000,
            "`maos lock renew --ttl 1h` (the agent heartbeat) ignored --ttl"
        );
    }
}
