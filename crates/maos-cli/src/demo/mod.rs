//! `maos demo`: a real multi-agent session in a temporary workspace.
//!
//! Agents run as separate OS processes of this same binary (`maos demo --as-agent ...`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use maos_coordination::core::{DEFAULT_STALE_AFTER, ProcessIdentity};
use maos_coordination::{AgentId, AgentRegistry, AgentRole, Liveness, Registration, Workspace};

use crate::ctx::Ctx;
use crate::exit::Exit;

const ROLES: [&str; 4] = ["architect", "backend", "frontend", "reviewer"];

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many agents to start.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    agents: u32,
    /// Keep the workspace in DIR instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Internal: run as one agent of a demo.
    #[arg(long, hide = true, value_name = "ROLE")]
    as_agent: Option<String>,
}

pub(crate) fn run(args: DemoArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    if let Some(role) = args.as_agent {
        return agent(ctx, &role);
    }
    let started = Instant::now();
    let tmp;
    let root = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("maos-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let ws = Workspace::init(&root)?;
    eprintln!("workspace: {}", ws.root().display());
    let exe = std::env::current_exe().context("locating the maos binary")?;

    let mut children = Vec::new();
    for i in 0..args.agents {
        let role = ROLES[i as usize % ROLES.len()];
        let id = format!("{role}-{}", i / ROLES.len() as u32 + 1);
        let child = Command::new(&exe)
            .args(["--workspace"])
            .arg(ws.root())
            .args(["--agent", &id, "demo", "--as-agent", role])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting agent {id}"))?;
        children.push((id, child));
    }
    // Every agent registers itself, then prints one line once its record is durable.
    let mut handles = Vec::new();
    for (id, child) in &mut children {
        let out = child.stdout.take().context("agent stdout")?;
        let id = id.clone();
        handles.push(std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
            (id, line)
        }));
    }
    for h in handles {
        let (id, line) = h
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
        anyhow::ensure!(line.trim() == "ready", "agent {id} did not start: {line:?}");
    }
    // Crash one agent the hard way; the registry must see it dead, the others alive.
    let (victim, mut child) = children.remove(0);
    child.kill()?;
    child.wait()?;
    let reg = AgentRegistry::new(&ws);
    let list = reg.list()?;
    let mut ok = list.problems.is_empty() && list.agents.len() == args.agents as usize;
    for rec in &list.agents {
        let verdict = rec.liveness(DEFAULT_STALE_AFTER);
        let expected = if rec.id.as_str() == victim {
            Liveness::Dead
        } else {
            Liveness::Alive
        };
        ok &= verdict == expected;
        println!(
            "{:<14} {:<10} pid {:>7}  {:?}",
            rec.id,
            rec.role.as_ref().map_or("-", |r| r.as_str()),
            rec.process.pid,
            verdict
        );
    }
    for (_, mut child) in children {
        child.kill()?;
        child.wait()?;
    }
    println!(
        "{} agents registered as separate processes; {victim} was killed with SIGKILL and is reported dead; {:.1?}",
        args.agents,
        started.elapsed()
    );
    if args.keep.is_some() {
        println!("workspace kept in {}", ws.root().display());
    }
    Ok(if ok { Exit::Ok } else { Exit::Error })
}

fn agent(ctx: &Ctx, role: &str) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let reg = AgentRegistry::new(&ws);
    reg.register(
        Registration::new(ctx.agent.clone())
            .role(AgentRole::new(role)?)
            .process(ProcessIdentity::current()),
    )?;
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        reg.heartbeat(&ctx.agent)?;
        let _: &AgentId = &ctx.agent;
    }
}
