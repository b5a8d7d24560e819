//! `maos dashboard`: the live web page of the workspace (maos-dashboard's server).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use maos_coordination::backend::Backends;
use maos_coordination::dashboard::{
    self, Changed, ChannelSet, Error as DashError, Options, Remote, Server, Stores, Wakes,
};
use maos_coordination::postgres::hints::Hints;
use maos_coordination::postgres::{Pg, comm::PgBroadcast};

use crate::ctx::Ctx;
use crate::exit::{Exit, Failure};

#[derive(Debug, clap::Args)]
pub(crate) struct DashboardArgs {
    /// Where to listen (loopback by default; port 0 picks a free port, printed at start).
    #[arg(long, default_value = dashboard::DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
    /// Allow a non-loopback --listen address. Anyone who can reach it could read the
    /// workspace, so every request then needs the token printed (once) at start.
    #[arg(long)]
    allow_remote: bool,
    /// Let the page act: release a dead agent's lock, reset a failed task, resolve a deadlock
    /// (each through the same library call as the CLI, recorded with the acting agent).
    #[arg(long)]
    allow_actions: bool,
    /// Open the page in the default browser (xdg-open).
    #[arg(long)]
    open: bool,
}

/// Ends on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// The server's notifications as the dashboard's wake-ups.
struct PgWakes(Hints);

impl Wakes for PgWakes {
    fn wait(&mut self, timeout: Duration) -> Changed {
        let c = self.0.wait(timeout);
        if c.everything {
            return Changed::all();
        }
        Changed {
            tasks: c.tasks,
            locks: c.locks,
            channels: if c.channels.is_empty() {
                ChannelSet::None
            } else {
                ChannelSet::Some(c.channels)
            },
            ..Changed::default()
        }
    }

    fn problem(&self) -> Option<String> {
        self.0.lost()
    }
}

/// The stores of a workspace on PostgreSQL as the dashboard reads them, acting as `agent`.
fn remote(b: &Backends, pg: &Pg, agent: &maos_coordination::AgentId) -> anyhow::Result<Remote> {
    let pg2 = pg.clone();
    // Actions are recorded on a topic maos itself publishes on: past the check ordinary
    // broadcasts make.
    let system: dashboard::SystemBroadcast = Arc::new(move |sender, topic, payload| {
        PgBroadcast::new(&pg2, sender.clone())
            .broadcast(topic, payload)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let mut stores = Stores::new(
        b.name(),
        Arc::from(b.channels()),
        Arc::from(b.locks()),
        Arc::from(b.tasks(agent, None)?),
        Arc::from(b.agents()),
        system,
    );
    if let Some(m) = b.merge(agent) {
        stores = stores.merge(m);
    }
    Ok(Remote::new(stores, Box::new(PgWakes(Hints::new(pg)?))))
}

/// What `maos dashboard` and `maos status --watch` read: the workspace's backends and, on
/// PostgreSQL, the stores and notifications the dashboard follows. Keep the [`Backends`]
/// until the tokio runtime is gone: the last handle of the server connection must be
/// dropped outside it.
pub(crate) fn source(ctx: &Ctx) -> anyhow::Result<(Backends, Option<Remote>)> {
    let b = ctx.backends()?;
    let r = match b.postgres() {
        Some(pg) => Some(remote(&b, pg, &ctx.agent)?),
        None => None,
    };
    Ok((b, r))
}

pub(crate) fn run(args: DashboardArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    // Declared before the runtime: dropped after it.
    let (backends, remote) = source(ctx)?;
    let ws = backends.workspace().clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let opts = Options {
            listen: args.listen,
            allow_remote: args.allow_remote,
            allow_actions: args.allow_actions,
            actor: ctx.agent.clone(),
        };
        let bound = match remote {
            Some(r) => Server::bind_remote(&ws, opts, r).await,
            None => Server::bind(&ws, opts).await,
        };
        let server = match bound {
            Ok(s) => s,
            Err(e @ DashError::NotLoopback { .. }) => {
                return Err(Failure::error(Exit::Usage, e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let url = server.url();
        if server.token().is_some() {
            eprintln!(
                "maos dashboard: WARNING: listening on {} (not loopback): anyone who can reach \
                 it and has the token can read the workspace{}; the token is printed once, below",
                server.local_addr(),
                if args.allow_actions {
                    " and act on it"
                } else {
                    ""
                }
            );
        }
        ctx.emit_line(
            &serde_json::json!({
                "url": url,
                "listen": server.local_addr(),
                "token": server.token(),
                "actions": args.allow_actions,
                "workspace": ws.root(),
                "backend": backends.name(),
            }),
            || {
                format!(
                    "maos dashboard: {url} ({}; Ctrl-C to stop)",
                    if args.allow_actions {
                        "actions allowed"
                    } else {
                        "read-only"
                    }
                )
            },
        )?;
        if args.open {
            match std::process::Command::new("xdg-open")
                .arg(&url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                Ok(mut child) => {
                    // Reap it in the background; its exit status does not matter.
                    std::thread::spawn(move || child.wait());
                }
                Err(e) => eprintln!(
                    "maos dashboard: cannot open a browser (xdg-open: {e}); open {url} yourself"
                ),
            }
        }
        server.serve(stop_signal()).await?;
        Ok(Exit::Ok)
    })
}
