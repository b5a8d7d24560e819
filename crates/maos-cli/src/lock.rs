//! `maos lock ...` and `maos deadlock ...`: locks on files and resources (maos-lock).

use std::ffi::OsString;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use maos_coordination::ResourceName;
use maos_coordination::core::{escape_controls, human_ms, now_ms};
use maos_coordination::lock::{
    Deadlock, Error as LockError, FencingToken, LockInfo, LockMode, LockRequest, Report,
    VICTIM_RULE, Via,
};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::duration;
use crate::exit::{Exit, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum LockCommand {
    /// Take a lock for the acting agent and print its fencing token. The lock stays held by
    /// the agent after this command exits, until `maos lock release`, the end of the lease
    /// (keep it with `maos lock renew`) or the agent's death. Taking a lock the agent already
    /// holds renews it and prints the same token.
    Acquire {
        /// Workspace-relative path or pattern (`src/api/**`); an absolute path inside the
        /// workspace is accepted.
        resource: String,
        /// Lease length (at most 30d).
        #[arg(long, default_value = "5m", value_parser = duration::ttl)]
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
        /// New lease length (at most 30d).
        #[arg(long, value_parser = duration::ttl)]
        ttl: Option<Duration>,
    },
    /// List held locks and queued waiters.
    List,
    /// Hold a lock while CMD runs, renewing it; exit with CMD's status (like flock(1)). The
    /// lock lasts as long as CMD runs, even if this process is killed. CMD gets
    /// MAOS_LOCK_RESOURCE and MAOS_LOCK_TOKEN in its environment.
    Run {
        /// The resource.
        resource: String,
        /// Lease length (renewed every third of it while CMD runs; at most 30d).
        #[arg(long, default_value = "1m", value_parser = duration::ttl)]
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
        e if e.is_timeout() || maos_coordination::backend::is_timeout(e) => Exit::Busy,
        LockError::AlreadyHeld { .. } => Exit::Busy,
        LockError::Deadlock { .. } => Exit::Deadlock,
        _ => return anyhow::Error::new(e),
    };
    Failure::error(code, format!("{:#}", anyhow::Error::new(e)))
}

fn describe(h: &LockInfo) -> String {
    let now = now_ms();
    let left = if h.expires_at > now {
        format!("lease left {}", human_ms(h.expires_at - now))
    } else if h.live.is_some() {
        "lease over, held while its command runs".to_owned()
    } else {
        "lease over".to_owned()
    };
    let by = match (&h.live, &h.process) {
        (Some(_), Some(p)) => format!("pid {}", p.pid),
        (Some(_), None) => "a process".into(),
        _ => "lease".into(),
    };
    format!(
        "{} {} token {} by {} ({}), {}{}",
        h.resource,
        h.mode,
        h.token,
        h.owner,
        by,
        left,
        if h.purpose.is_empty() {
            String::new()
        } else {
            format!(": {}", escape_controls(&h.purpose))
        }
    )
}

fn request(
    ctx: &Ctx,
    res: ResourceName,
    ttl: Duration,
    wait: Duration,
    purpose: &str,
    shared: bool,
) -> LockRequest {
    let mut req = LockRequest::new(ctx.agent.clone(), res, ttl, wait);
    req.purpose = purpose.to_owned();
    req.mode = if shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    req
}

pub(crate) fn run(cmd: LockCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    let backends = ctx.backends()?;
    let store = backends.locks();
    match cmd {
        LockCommand::Acquire {
            resource: r,
            ttl,
            wait,
            purpose,
            shared,
        } => {
            let res = resource(ctx, &r)?;
            let req = request(ctx, res.clone(), ttl, wait, &purpose, shared);
            let grant = store
                .acquire_lease(&req, waiting_note(res))
                .map_err(lock_failure)?;
            if grant.reentered {
                eprintln!(
                    "maos: agent {} already held this lock; its lease was renewed",
                    ctx.agent
                );
            }
            ctx.emit(&grant, || grant.info.token.to_string())?;
            Ok(Exit::Ok)
        }
        LockCommand::Release { resource: r, token } => {
            let res = resource(ctx, &r)?;
            let done = store
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
            let res = r.map(|r| resource(ctx, &r)).transpose()?;
            let done = store
                .renew(res.as_ref(), &ctx.agent, ttl)
                .map_err(lock_failure)?;
            ctx.emit(&done, || {
                if done.is_empty() {
                    return format!("agent {} holds no locks", ctx.agent);
                }
                done.iter().map(describe).collect::<Vec<_>>().join("\n")
            })?;
            Ok(Exit::Ok)
        }
        LockCommand::List => {
            let snap = store.snapshot()?;
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
                        "waiting: {}{} for {} (ticket {}, {}){}\n",
                        w.agent,
                        match (&w.live, &w.process) {
                            (Some(_), Some(p)) => format!(" (pid {})", p.pid),
                            _ => String::new(),
                        },
                        w.resource,
                        w.ticket,
                        human_ms(now_ms().saturating_sub(w.since)),
                        if w.purpose.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", escape_controls(&w.purpose))
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
        } => run_command(ctx, &backends, &r, ttl, wait, &purpose, shared, cmd),
        LockCommand::Check { path } => {
            let res = resource(ctx, &path)?;
            let holders = store.conflicting(&res, LockMode::Exclusive)?;
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

/// Says on stderr whom a wait for `res` waits for, each time that changes.
fn waiting_note(res: ResourceName) -> Report {
    std::sync::Arc::new(move |b: &str| eprintln!("maos: waiting for {res}: {b}"))
}

#[allow(clippy::too_many_arguments)] // one argument per command-line option
fn run_command(
    ctx: &Ctx,
    backends: &maos_coordination::backend::Backends,
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
    let (prog, args) = cmd.split_first().context("no command given")?;
    let req = request(ctx, res.clone(), ttl, wait, &purpose, shared);
    // Where the lock lives in this process's database session, the command runs under a
    // supervisor that ends it if this process ends first (tied.rs); on the files the command
    // inherits the lock itself.
    let tied = !backends.is_file();
    let store = backends.locks();
    let mut spawn = |token: FencingToken| {
        let mut c = if tied {
            crate::tied::command(prog, args)?
        } else {
            let mut c = std::process::Command::new(prog);
            c.args(args);
            c
        };
        c.env("MAOS_LOCK_RESOURCE", res.as_str())
            .env("MAOS_LOCK_TOKEN", token.to_string())
            .spawn()
    };
    // The lease is renewed while waiting for the command.
    let outcome = store
        .run(
            &req,
            &mut spawn,
            waiting_note(res.clone()),
            std::sync::Arc::new(|e: &str| eprintln!("maos: {e}")),
        )
        .map_err(lock_failure)?;
    if let Some(e) = outcome.release_error {
        eprintln!("maos: {:#}", anyhow::Error::new(e));
    }
    let status = outcome
        .status
        .map_err(anyhow::Error::from_boxed)
        .with_context(|| format!("cannot run {}", prog.to_string_lossy()))?;
    let code = crate::tied::status_code(status);
    // A lock lost while the command ran is a failure even if the command succeeded: its
    // work was not protected all along.
    let code = if outcome.lost && code == 0 {
        Exit::Error as i32
    } else {
        code
    };
    std::process::exit(code)
}

/// `maos [--json] [--workspace DIR] [--agent ID] lock run [--ttl D] [--wait D] [--purpose T]
/// [--shared] RESOURCE -- CMD [ARGS...]`, the command scripts run in loops, parsed without
/// building the whole clap command tree (a third of the process's CPU before any work, as
/// [`crate::merge::FastCheck`]). Anything else (another flag, `--help`, an option before
/// `lock run` that is not global, a value that looks like a flag or does not parse) returns
/// `None` and goes through clap as usual, so the two parsers accept the same language on
/// this path and clap says every error.
#[derive(Debug)]
pub(crate) struct FastRun {
    pub(crate) workspace: Option<std::path::PathBuf>,
    pub(crate) agent: Option<String>,
    pub(crate) json: bool,
    resource: String,
    ttl: Duration,
    wait: Duration,
    purpose: String,
    shared: bool,
    cmd: Vec<OsString>,
}

impl FastRun {
    pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Option<Self> {
        let mut out = FastRun {
            workspace: None,
            agent: None,
            json: false,
            resource: String::new(),
            ttl: duration::ttl("1m").ok()?,
            wait: duration::parse("30s").ok()?,
            purpose: String::new(),
            shared: false,
            cmd: Vec::new(),
        };
        let mut words: Vec<String> = Vec::new();
        let mut args = args.into_iter();
        // The value of an option: present, UTF-8, and not something clap would take for a flag.
        let value = |v: Option<OsString>| -> Option<String> {
            v?.into_string().ok().filter(|v| !v.starts_with('-'))
        };
        while let Some(a) = args.next() {
            if a == "--" {
                out.cmd = args.collect();
                break;
            }
            let a = a.into_string().ok()?;
            // Options of `lock run` itself only after `lock run`, as clap wants them.
            let in_run = words.len() >= 2;
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (a.clone(), None),
            };
            let mut take = |inline: Option<String>| match inline {
                Some(v) if !v.is_empty() => Some(v),
                Some(_) => None,
                None => value(args.next()),
            };
            match name.as_str() {
                "--json" if inline.is_none() => out.json = true,
                "--workspace" => out.workspace = Some(take(inline)?.into()),
                "--agent" => out.agent = Some(take(inline)?),
                "--ttl" if in_run => out.ttl = duration::ttl(&take(inline)?).ok()?,
                "--wait" if in_run => out.wait = duration::parse(&take(inline)?).ok()?,
                "--purpose" if in_run => out.purpose = take(inline)?,
                "--shared" if in_run && inline.is_none() => out.shared = true,
                _ if a.starts_with('-') || a.is_empty() => return None,
                _ => words.push(a),
            }
        }
        let [lock, run, resource] = words.as_slice() else {
            return None;
        };
        if lock != "lock" || run != "run" || out.cmd.is_empty() {
            return None;
        }
        out.resource = resource.clone();
        // clap's environment defaults for the global options.
        if out.workspace.is_none() {
            out.workspace = std::env::var_os("MAOS_WORKSPACE")
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from);
        }
        if out.agent.is_none() {
            out.agent = std::env::var("MAOS_AGENT_ID").ok();
        }
        Some(out)
    }

    pub(crate) fn run(self, ctx: &Ctx) -> anyhow::Result<Exit> {
        let backends = ctx.backends()?;
        run_command(
            ctx,
            &backends,
            &self.resource,
            self.ttl,
            self.wait,
            &self.purpose,
            self.shared,
            self.cmd,
        )
    }
}

pub(crate) fn run_deadlock(cmd: DeadlockCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    let store = ctx.backends()?.locks();
    match cmd {
        DeadlockCommand::Check { broadcast, resolve } => {
            let found = store.deadlocks(&ctx.agent, broadcast, resolve)?;
            #[derive(Serialize)]
            struct Cycle<'a> {
                #[serde(flatten)]
                deadlock: &'a Deadlock,
                aborted: bool,
            }
            #[derive(Serialize)]
            struct Out<'a> {
                deadlock: bool,
                cycles: Vec<Cycle<'a>>,
                victim_rule: &'a str,
            }
            let cycles: Vec<Cycle<'_>> = found
                .iter()
                .map(|(d, aborted)| Cycle {
                    deadlock: d,
                    aborted: *aborted,
                })
                .collect();
            ctx.emit(
                &Out {
                    deadlock: !found.is_empty(),
                    cycles,
                    victim_rule: VICTIM_RULE,
                },
                || {
                    if found.is_empty() {
                        return "no deadlock".into();
                    }
                    let mut s = String::new();
                    for (d, aborted) in &found {
                        s.push_str(&format!(
                            "deadlock among {}\n",
                            d.nodes
                                .iter()
                                .map(|n| n.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        for w in &d.waits {
                            let line = match w.via {
                                Via::Lock => format!(
                                    "  {} waits for {} on {}{} (ticket {})",
                                    w.waiter_node,
                                    w.holder_node,
                                    w.resource,
                                    match &w.held {
                                        Some(h) if h != &w.resource => format!(" (holds {h})"),
                                        _ => String::new(),
                                    },
                                    w.ticket
                                ),
                                Via::Queue => format!(
                                    "  {} waits behind {} in line for {} (ticket {})",
                                    w.waiter_node, w.holder_node, w.resource, w.ticket
                                ),
                                Via::Agent => format!(
                                    "  {} stay held while {} waits for {} (ticket {})",
                                    w.waiter_node, w.holder_node, w.resource, w.ticket
                                ),
                            };
                            s.push_str(&line);
                            s.push('\n');
                        }
                        let release = if d.release.is_empty() {
                            "the locks it holds".to_owned()
                        } else {
                            d.release
                                .iter()
                                .map(|r| r.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        s.push_str(&format!(
                            "  victim: {} (its wait for {}; rule: {}){}\n  {} must release {} and take its locks again, in the same order as the others\n",
                            d.victim_node,
                            d.victim_resource,
                            VICTIM_RULE,
                            if *aborted {
                                ", aborted; told in its inbox direct/".to_owned() + d.victim.as_str()
                            } else if resolve {
                                ", already aborted".to_owned()
                            } else {
                                String::new()
                            },
                            d.victim,
                            release,
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

    /// The fast path of `lock run` takes exactly what clap takes, with the same values, and
    /// leaves everything else to clap.
    #[test]
    fn the_fast_path_of_lock_run_agrees_with_clap() {
        use clap::Parser as _;
        let taken: &[&[&str]] = &[
            &["lock", "run", "r", "--", "true"],
            &["--json", "lock", "run", "r", "--", "sh", "-c", "exit 3"],
            &[
                "--workspace",
                "/w",
                "--agent",
                "a",
                "lock",
                "run",
                "r",
                "--",
                "x",
            ],
            &["--workspace=/w", "lock", "run", "--agent=b", "r", "--", "x"],
            &[
                "lock",
                "run",
                "--ttl",
                "5s",
                "--wait=2m",
                "--purpose",
                "p q",
                "--shared",
                "r",
                "--",
                "x",
                "--y",
            ],
            &["lock", "run", "r", "--ttl=90s", "--json", "--", "x"],
            &["lock", "run", "src/*.rs", "--", "x"],
        ];
        for args in taken {
            let fast = FastRun::parse(args.iter().map(OsString::from))
                .unwrap_or_else(|| panic!("not taken: {args:?}"));
            let cli =
                crate::Cli::try_parse_from(std::iter::once("maos").chain(args.iter().copied()))
                    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let crate::Command::Lock(LockCommand::Run {
                resource,
                ttl,
                wait,
                purpose,
                shared,
                cmd,
            }) = cli.command
            else {
                panic!("{args:?}: not lock run");
            };
            assert_eq!(
                (
                    &fast.resource,
                    fast.ttl,
                    fast.wait,
                    &fast.purpose,
                    fast.shared,
                    &fast.cmd
                ),
                (&resource, ttl, wait, &purpose, shared, &cmd),
                "{args:?}"
            );
            assert_eq!(fast.json, cli.json, "{args:?}");
            if cli.workspace.is_some() {
                assert_eq!(fast.workspace, cli.workspace, "{args:?}");
            }
            if args.iter().any(|a| a.starts_with("--agent")) {
                assert_eq!(fast.agent, cli.agent, "{args:?}");
            }
        }
        let left: &[&[&str]] = &[
            &["lock", "run", "r"],
            &["lock", "run", "r", "--"],
            &["lock", "run", "--help"],
            &["-v", "lock", "run", "r", "--", "x"],
            &["--ttl", "5s", "lock", "run", "r", "--", "x"],
            &["lock", "--ttl", "5s", "run", "r", "--", "x"],
            &["lock", "run", "--ttl", "forever", "r", "--", "x"],
            &["lock", "run", "--purpose", "-x", "r", "--", "x"],
            &["lock", "run", "--wait", "r", "--", "x"],
            &["lock", "run", "a", "b", "--", "x"],
            &["lock", "acquire", "r"],
            &["lock", "run", "--shared=yes", "r", "--", "x"],
            &["lock", "run", "--bogus", "r", "--", "x"],
            // An empty inline value: left to clap (which takes it), never guessed.
            &["lock", "run", "--purpose=", "r", "--", "x"],
        ];
        for args in left {
            assert!(
                FastRun::parse(args.iter().map(OsString::from)).is_none(),
                "taken: {args:?}"
            );
        }
    }

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
        let ws = ctx.open_workspace().unwrap();
        let snap = maos_coordination::lock::LockTable::open(&ws)
            .unwrap()
            .snapshot()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(snap.holders.len(), 1);
        assert_eq!(
            snap.holders[0].ttl_ms, 3_600_000,
            "`maos lock renew --ttl 1h` (the agent heartbeat) ignored --ttl"
        );
    }
}
