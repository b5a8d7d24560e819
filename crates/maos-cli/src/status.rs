//! `maos init` and `maos status`.

use maos_coordination::{AgentRegistry, Workspace};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::exit::Exit;

pub(crate) fn init(ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = Workspace::init(&ctx.root)?;
    ctx.emit(
        &serde_json::json!({ "workspace": ws.root(), "maos_dir": ws.maos_dir(), "format": maos_coordination::core::FORMAT_VERSION }),
        || format!("initialised maos workspace in {}", ws.maos_dir().display()),
    )?;
    Ok(Exit::Ok)
}

/// `maos status` options.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// A live terminal view of agents, locks, tasks, messages and merges, redrawn when the
    /// workspace changes (q, Esc or Ctrl-C to quit).
    #[arg(long)]
    pub(crate) watch: bool,
}

#[derive(Serialize)]
struct Status {
    workspace: std::path::PathBuf,
    discovery: maos_coordination::core::Discovery,
    agent: maos_coordination::AgentId,
    format: u32,
    network_filesystem: bool,
    agents: usize,
    agents_alive: usize,
    sections: Vec<Section>,
}

#[derive(Serialize)]
struct Section {
    name: &'static str,
    files: u64,
    bytes: u64,
}

fn du(path: &std::path::Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

pub(crate) fn status(ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let list = AgentRegistry::new(&ws).list()?;
    let alive = list
        .agents
        .iter()
        .filter(|a| !a.liveness().is_dead())
        .count();
    let sections = maos_coordination::core::LAYOUT_DIRS
        .iter()
        .map(|name| {
            let (files, bytes) = du(&ws.maos_dir().join(name));
            Section { name, files, bytes }
        })
        .collect();
    let st = Status {
        workspace: ws.root().to_path_buf(),
        discovery: ctx.discovery,
        agent: ctx.agent.clone(),
        format: maos_coordination::core::FORMAT_VERSION,
        network_filesystem: ws.is_network_filesystem(),
        agents: list.agents.len(),
        agents_alive: alive,
        sections,
    };
    ctx.emit(&st, || {
        let mut s = format!(
            "workspace  {} ({})\nagent      {}\nformat     {}{}\nagents     {} registered, {} alive\n",
            st.workspace.display(),
            ctx.discovery_words(),
            st.agent,
            st.format,
            if st.network_filesystem { " (network filesystem: single-host only!)" } else { "" },
            st.agents,
            st.agents_alive
        );
        let disk: Vec<String> = st
            .sections
            .iter()
            .map(|sec| format!("{} {} files {} bytes", sec.name, sec.files, sec.bytes))
            .collect();
        s.push_str(&format!("on disk    {}\n", disk.join(", ")));
        s
    })?;
    Ok(Exit::Ok)
}
