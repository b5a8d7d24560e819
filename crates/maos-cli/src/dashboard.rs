//! `maos dashboard`: the live web page of the workspace (maos-dashboard's server).

use std::net::SocketAddr;

use maos_coordination::dashboard::{self, Error as DashError, Options, Server};

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

pub(crate) fn run(args: DashboardArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
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
        let server = match Server::bind(&ws, opts).await {
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
