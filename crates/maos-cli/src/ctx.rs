//! What every command needs: the workspace, the acting agent, the output mode.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use maos_coordination::backend::{self, Backends};
use maos_coordination::core::{AgentStore, Anchor, Discovery, ProcessIdentity};
use maos_coordination::{AgentId, Workspace};
use serde::Serialize;

/// The context of one invocation.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) root: PathBuf,
    /// `--workspace` / `MAOS_WORKSPACE`, as given.
    pub(crate) explicit_workspace: Option<PathBuf>,
    /// `--agent` / `MAOS_AGENT_ID`, as given (non-empty).
    pub(crate) explicit_agent: Option<String>,
    pub(crate) discovery: Discovery,
    pub(crate) agent: AgentId,
    pub(crate) json: bool,
    /// The command being run, in words (`lock acquire`), for errors.
    pub(crate) command: String,
}

impl Ctx {
    pub(crate) fn new(
        workspace: Option<&Path>,
        agent: Option<&str>,
        json: bool,
    ) -> anyhow::Result<Self> {
        let (root, discovery) = Workspace::discover(workspace).context("locating the workspace")?;
        let agent_arg = agent;
        let agent = match agent {
            Some(a) if !a.is_empty() => AgentId::new(a).context("--agent / MAOS_AGENT_ID")?,
            _ => AgentId::current()?,
        };
        Ok(Self {
            root,
            explicit_workspace: workspace.map(Path::to_path_buf),
            explicit_agent: agent_arg.filter(|a| !a.is_empty()).map(str::to_owned),
            discovery,
            agent,
            json,
            command: String::new(),
        })
    }

    /// The workspace, which must exist: only `maos init` creates one, so a typo in
    /// `--workspace` (or running in the wrong directory) is an error, not a new `.maos/`.
    /// Whatever its backend (`maos init`, `status`, `doctor`).
    pub(crate) fn open_workspace(&self) -> anyhow::Result<Workspace> {
        let ws = Workspace::open(&self.root).map_err(|e| match e {
            maos_coordination::core::Error::NotInitialized { path } => crate::exit::Failure::error(
                crate::exit::Exit::Error,
                format!(
                    "no maos workspace at {} ({}): run `maos init` there first, or point \
                     --workspace / MAOS_WORKSPACE at an existing one",
                    path.display(),
                    self.discovery_words()
                ),
            ),
            other => anyhow::Error::new(other)
                .context(format!("opening workspace {}", self.root.display())),
        })?;
        Ok(ws)
    }

    /// The workspace's storage, on its backend (files or a PostgreSQL server).
    pub(crate) fn backends(&self) -> anyhow::Result<Backends> {
        let ws = self.open_workspace()?;
        let b = backend::open(&ws)?;
        if b.is_file() && ws.is_network_filesystem() {
            tracing::warn!(
                path = %ws.maos_dir().display(),
                "the workspace is on a network filesystem: the file backend is single-host only"
            );
        }
        self.touch(b.agents().as_ref());
        Ok(b)
    }

    /// Every command by a registered agent renews its lease and records the process that
    /// stands for it (the agent's client, found past the shells this command runs under).
    fn touch(&self, agents: &dyn AgentStore) {
        if let Err(e) = agents.touch(&self.agent, &|| {
            ProcessIdentity::anchor().map(Anchor::ancestor)
        }) {
            tracing::warn!("cannot renew the lease of agent {}: {e}", self.agent);
        }
    }

    /// How the workspace root was found, in words.
    pub(crate) fn discovery_words(&self) -> &'static str {
        match self.discovery {
            Discovery::Explicit => "from --workspace / MAOS_WORKSPACE",
            Discovery::Ancestor => "the nearest ancestor holding .maos/",
            Discovery::GitMainWorktree => "the root of the main git worktree",
            Discovery::CurrentDir => "the current directory",
        }
    }

    /// Prints `value` as one JSON document with `--json`, else the human text.
    pub(crate) fn emit<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            outln!("{}", serde_json::to_string_pretty(value)?)?;
        } else {
            let text = human();
            if !text.is_empty() {
                outln!("{}", text.trim_end())?;
            }
        }
        Ok(())
    }

    /// Prints one JSON Lines record with `--json`, else the human line.
    pub(crate) fn emit_line<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            outln!("{}", serde_json::to_string(value)?)
        } else {
            outln!("{}", human())
        }
    }
}

/// Writes `args` to stdout, flushed; a reader that went away is [`StdoutClosed`], which ends
/// the command quietly (see `main`). Use through [`outln!`] and [`out!`].
///
/// [`StdoutClosed`]: crate::exit::StdoutClosed
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush())
        .map_err(crate::exit::stdout_error)
}
