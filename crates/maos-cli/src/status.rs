//! `maos init` and `maos status`.

use maos_coordination::Workspace;
use maos_coordination::backend::{self, Choice};
use maos_coordination::core::Config;
use serde::Serialize;

use crate::ctx::Ctx;
use crate::exit::Exit;

/// `maos init` options.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// Where the workspace's state lives: `file` (the default: files under .maos/) or a
    /// PostgreSQL server shared by agents on several machines, `postgres://user@host[:port]/db`
    /// (no password in it: PGPASSWORD or ~/.pgpass). Checked (the server reached, its schema
    /// created or migrated) and recorded in .maos/config.json; MAOS_BACKEND overrides it.
    #[arg(long, value_name = "file|URL")]
    backend: Option<String>,
    /// The workspace's namespace on the server (default: the repository's identity, so
    /// clones of one repository on every machine share it); MAOS_NAMESPACE overrides it.
    #[arg(long, value_name = "NAME", requires = "backend")]
    namespace: Option<String>,
}

/// The backend of `ws`, in words, without connecting.
pub(crate) fn backend_words(ws: &Workspace) -> anyhow::Result<(String, String)> {
    Ok(match backend::choice(ws)? {
        Choice::Postgres { url, namespace, .. } => {
            ("postgresql".into(), format!("{url} namespace {namespace}"))
        }
        _ => ("file".into(), ws.maos_dir().display().to_string()),
    })
}

pub(crate) fn init(args: InitArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = Workspace::init(&ctx.root)?;
    if let Some(value) = args.backend.as_deref() {
        let mut config = Config::load(&ws)?;
        match backend::parse(value, "--backend")? {
            None => {
                config.backend = None;
                config.namespace = None;
            }
            Some(url) => {
                let ns = backend::namespace_for(ws.root(), &url, args.namespace.as_deref())?;
                // Reach the server (and create or migrate its schema) before recording it.
                backend::connect(&url, &ns, "--backend")?;
                config.backend = Some(url.as_str().to_owned());
                config.namespace = Some(ns);
            }
        }
        config.save(&ws)?;
    }
    let (name, location) = backend_words(&ws)?;
    ctx.emit(
        &serde_json::json!({
            "workspace": ws.root(),
            "maos_dir": ws.maos_dir(),
            "format": maos_coordination::core::FORMAT_VERSION,
            "backend": name,
            "location": location,
        }),
        || {
            let mut s = format!("initialised maos workspace in {}", ws.maos_dir().display());
            if name != "file" {
                s.push_str(&format!("\nbackend: {name} {location}"));
            }
            s
        },
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
    /// `file` or `postgresql`.
    backend: &'static str,
    /// Where the state lives: `.maos/`, or the server and namespace.
    location: String,
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
    let backends = ctx.backends()?;
    let ws = backends.workspace().clone();
    let (agents, _) = backends.agents().list()?;
    let alive = agents.iter().filter(|a| !a.liveness.is_dead()).count();
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
        backend: backends.name(),
        location: backends.location(),
        format: maos_coordination::core::FORMAT_VERSION,
        network_filesystem: backends.is_file() && ws.is_network_filesystem(),
        agents: agents.len(),
        agents_alive: alive,
        sections,
    };
    ctx.emit(&st, || {
        let mut s = format!(
            "workspace  {} ({})\nbackend    {} ({})\nagent      {}\nformat     {}{}\nagents     {} registered, {} alive\n",
            st.workspace.display(),
            ctx.discovery_words(),
            st.backend,
            st.location,
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
