//! `maos hook git pre-commit` and `maos hook git prepare-commit-msg`: the git guard (a commit
//! touching a file another live agent holds exclusively is refused) and the `Maos-Agent:`
//! trailer on commits agents make themselves. Each runs the hook it replaced afterwards
//! (`<hook>.maos-chained`, kept by `maos hook install`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use clap::Subcommand;
use maos_coordination::backend::Backends;
use maos_coordination::session::{GitPlace, resource_for};
use maos_coordination::{AgentId, LockMode, Workspace};

use crate::ctx::Ctx;
use crate::exit::{Exit, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum GitHook {
    /// Refuse a commit that touches a file another live agent holds exclusively.
    PreCommit {
        /// Arguments git passes (forwarded to a chained hook).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Add a `Maos-Agent: <agent>` trailer to the commit message (once).
    PrepareCommitMsg {
        /// The commit message file.
        file: PathBuf,
        /// The rest of git's arguments (source, commit).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub(crate) fn run(hook: GitHook, ctx: &Ctx) -> anyhow::Result<Exit> {
    match hook {
        GitHook::PreCommit { args } => {
            pre_commit(ctx)?;
            chain("pre-commit", &args)
        }
        GitHook::PrepareCommitMsg { file, args } => {
            prepare_commit_msg(ctx, &file)?;
            let mut all = vec![file.display().to_string()];
            all.extend(args);
            chain("prepare-commit-msg", &all)
        }
    }
}

fn git(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("git")
        .args(args)
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    anyhow::ensure!(
        out.status.success(),
        "git {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// The committing agent: `--agent` / `MAOS_AGENT_ID`, else the registered agent whose worktree
/// or branch this is.
fn committer(b: &Backends, ctx: &Ctx, top: &Path) -> anyhow::Result<Option<AgentId>> {
    if ctx.explicit_agent.is_some() {
        return Ok(Some(ctx.agent.clone()));
    }
    let branch = GitPlace::find(top).and_then(|p| p.branch());
    let (list, _) = b.agents().list()?;
    let list: Vec<_> = list.into_iter().map(|v| v.record).collect();
    let by_worktree = list
        .iter()
        .find(|a| a.worktree.as_deref().is_some_and(|w| same(w, top)));
    let by_branch = || list.iter().find(|a| branch.is_some() && a.branch == branch);
    Ok(by_worktree.or_else(by_branch).map(|a| a.id.clone()))
}

fn same(a: &Path, b: &Path) -> bool {
    a == b || (std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok())
}

/// The workspace and its backend (the files, or a PostgreSQL server).
fn open_workspace(ctx: &Ctx) -> anyhow::Result<Option<Backends>> {
    match Workspace::open(&ctx.root) {
        Ok(ws) => Ok(Some(maos_coordination::backend::open(&ws)?)),
        Err(maos_coordination::core::Error::NotInitialized { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn pre_commit(ctx: &Ctx) -> anyhow::Result<()> {
    let Some(b) = open_workspace(ctx)? else {
        return Ok(());
    };
    let ws = b.workspace();
    let top = PathBuf::from(String::from_utf8(git(&["rev-parse", "--show-toplevel"])?)?.trim());
    let me = committer(&b, ctx, &top)?;
    let staged = git(&["diff", "--cached", "--name-only", "-z", "--no-renames"])?;
    let table = b.locks();
    let mut refused = Vec::new();
    for name in staged.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = String::from_utf8_lossy(name);
        let Some(res) = resource_for(ws, &top.join(rel.as_ref()))? else {
            continue;
        };
        for h in table.conflicting(&res, LockMode::Exclusive)? {
            if h.mode == LockMode::Exclusive && Some(&h.owner) != me.as_ref() {
                refused.push(format!(
                    "  {res}: locked exclusively by agent {} (token {}{})",
                    h.owner,
                    h.token,
                    if h.purpose.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", \"{}\"",
                            maos_coordination::core::escape_controls(&h.purpose)
                        )
                    }
                ));
            }
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(Failure::error(
        Exit::Error,
        format!(
            "commit refused: it touches files another agent holds exclusively{}:\n{}\nWait for \
             the release, message the holder (`maos send direct/AGENT --to AGENT --data ...`), or \
             unstage those files (`git restore --staged PATH`).",
            me.map(|m| format!(" (you are {m})")).unwrap_or_default(),
            refused.join("\n")
        ),
    ))
}

fn prepare_commit_msg(ctx: &Ctx, file: &Path) -> anyhow::Result<()> {
    let Some(b) = open_workspace(ctx)? else {
        return Ok(());
    };
    let top = PathBuf::from(String::from_utf8(git(&["rev-parse", "--show-toplevel"])?)?.trim());
    let Some(me) = committer(&b, ctx, &top)? else {
        return Ok(());
    };
    let text = maos_coordination::core::fsx::read_bounded(file, 16 << 20)?;
    if String::from_utf8_lossy(&text)
        .lines()
        .any(|l| l.starts_with("Maos-Agent:"))
    {
        return Ok(());
    }
    let file_s = file
        .to_str()
        .context("the commit message path is not UTF-8")?;
    git(&[
        "interpret-trailers",
        "--in-place",
        "--if-exists",
        "doNothing",
        "--trailer",
        &format!("Maos-Agent: {me}"),
        file_s,
    ])?;
    Ok(())
}

/// Runs the hook `maos hook install` moved aside, if any, with git's arguments.
fn chain(name: &str, args: &[String]) -> anyhow::Result<Exit> {
    let dir = PathBuf::from(String::from_utf8(git(&["rev-parse", "--git-path", "hooks"])?)?.trim());
    let chained = dir.join(format!("{name}{}", super::install::CHAINED_SUFFIX));
    if !chained.exists() {
        return Ok(Exit::Ok);
    }
    let status = Command::new(&chained)
        .args(args)
        .status()
        .with_context(|| format!("running the chained hook {}", chained.display()))?;
    if status.success() {
        Ok(Exit::Ok)
    } else {
        Err(Failure::error(
            Exit::Error,
            format!("{} failed ({status})", chained.display()),
        ))
    }
}
