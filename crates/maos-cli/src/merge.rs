//! `maos merge ...`: conflict prediction, preparation, resolution tasks, merging and the
//! merge queue (maos-merge). The repository is the one at or above the workspace root.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use maos_coordination::merge::{
    ConflictDetector, Error as MergeError, MergeCheck, MergeCoordinator, MergeOutcome,
    MergePreparation, MergeQueue, PairResult, Prediction, QueueEntry,
};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::exit::{Exit, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum MergeCommand {
    /// Predict whether SOURCE merges cleanly into TARGET (in memory; nothing is touched).
    /// Exit 0 clean, 4 conflicts (listed), 1 error. With --all: every agent branch of the
    /// registry against TARGET and against each other.
    Check {
        /// The branch or commit to merge (omit with --all).
        #[arg(required_unless_present = "all")]
        source: Option<String>,
        /// The branch to merge into (default: the branch checked out at the workspace root).
        target: Option<String>,
        /// Check every registered agent's branch, pairwise.
        #[arg(long)]
        all: bool,
        /// Include uncommitted changes: of the worktree at DIR (default: the current
        /// directory) as the source; with --all, of each agent's worktree registered with
        /// `maos agents register --worktree` (give --worktree without DIR).
        #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = ".")]
        worktree: Option<PathBuf>,
        /// The target for --all.
        #[arg(long = "target", value_name = "BRANCH", requires = "all")]
        all_target: Option<String>,
        /// With --all: first `git fetch REMOTE`, then read each agent's branch from REMOTE's
        /// remote-tracking ref (`REMOTE/BRANCH`) where there is one: agents on other
        /// machines push their branches there.
        #[arg(long, value_name = "REMOTE", requires = "all")]
        fetch: Option<String>,
    },
    /// Prepare merging SOURCE into TARGET under the merge lock: conflicts with line ranges,
    /// affected files, who changed what, and the suggested strategy and resolvers.
    /// Exit 0 clean, 4 conflicts.
    Prepare {
        /// The branch or commit to merge.
        source: String,
        /// The branch to merge into.
        target: String,
    },
    /// Prepare, then create one resolution task per conflict (assigned to its suggested
    /// resolver) and the merge task depending on them, and message each affected agent.
    Resolve {
        /// The branch or commit to merge.
        source: String,
        /// The branch to merge into.
        target: String,
    },
    /// Merge SOURCE into TARGET if it merges cleanly (fast-forward or merge commit) under the
    /// merge lock. Exit 0 merged, 4 conflicts (nothing changed), 3 lock busy, 1 error.
    Run {
        /// The branch or commit to merge.
        source: String,
        /// The branch to merge into.
        target: String,
    },
    /// The merge queue (`.maos/merge/queue.json`, or the PostgreSQL backend's table).
    #[command(subcommand)]
    Queue(QueueCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Append a merge of SOURCE into TARGET.
    Add {
        /// The branch or commit to merge.
        source: String,
        /// The branch to merge into.
        target: String,
    },
    /// List the entries.
    List,
    /// Merge every queued entry in order; conflicting ones become resolution tasks and are
    /// retried on later runs. Exit 0 all merged, 4 some blocked, 3 another run in progress.
    Run {
        /// First `git fetch REMOTE`, so that entries naming `REMOTE/BRANCH` (branches pushed
        /// from other machines) merge what was pushed last.
        #[arg(long, value_name = "REMOTE")]
        fetch: Option<String>,
    },
    /// Remove an entry.
    Remove {
        /// The entry id.
        id: u64,
    },
}

pub(crate) fn run(cmd: MergeCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    if let MergeCommand::Check {
        source: Some(source),
        target,
        all: false,
        worktree,
        ..
    } = cmd
    {
        // The lean path: the repository only (no workspace files, no agent registry).
        let det =
            ConflictDetector::open(&ctx.root).map_err(|e| fail(e, "opening the git repository"))?;
        return check_one(ctx, &det, source, target, worktree);
    }
    // The workspace's backend keeps the merge lock, the queue, the resolution tasks and the
    // registry (the files, or a server shared by several machines); git is this clone's.
    let backends = ctx.backends()?;
    let mut coord = MergeCoordinator::new(backends.workspace(), ctx.agent.clone())
        .map_err(|e| fail(e, "opening the git repository"))?;
    if let Some(shared) = backends.merge(&ctx.agent) {
        coord = coord.with_backend(shared);
    }
    match cmd {
        MergeCommand::Check {
            source,
            target,
            all: true,
            worktree,
            all_target,
            fetch,
        } => {
            let target = match all_target.or(target).or(source) {
                Some(t) => t,
                None => default_target(coord.detector())?,
            };
            if worktree
                .as_deref()
                .is_some_and(|w| w != std::path::Path::new("."))
            {
                return Err(Failure::error(
                    Exit::Usage,
                    "with --all, --worktree takes no DIR: each agent's registered worktree is used",
                ));
            }
            if let Some(remote) = &fetch {
                git_fetch(coord.workspace().root(), remote)?;
            }
            check_all(
                ctx,
                &backends,
                &coord,
                &target,
                worktree.is_some(),
                fetch.as_deref(),
            )
        }
        MergeCommand::Check {
            source,
            target,
            worktree,
            ..
        } => {
            let source = source.context("SOURCE is required without --all")?;
            check_one(ctx, coord.detector(), source, target, worktree)
        }
        MergeCommand::Prepare { source, target } => {
            let prep = coord
                .prepare_merge_blocking(&source, &target)
                .map_err(|e| fail(e, "preparing the merge"))?;
            ctx.emit(&prep, || prep_text(&prep))?;
            Ok(if prep.is_clean() {
                Exit::Ok
            } else {
                Exit::Conflicts
            })
        }
        MergeCommand::Resolve { source, target } => {
            let prep = coord
                .prepare_merge_blocking(&source, &target)
                .map_err(|e| fail(e, "preparing the merge"))?;
            if prep.is_clean() {
                #[derive(Serialize)]
                struct Nothing<'a> {
                    preparation: &'a MergePreparation,
                    resolution: Option<()>,
                }
                ctx.emit(
                    &Nothing {
                        preparation: &prep,
                        resolution: None,
                    },
                    || {
                        format!(
                            "{source} merges into {target} without conflicts ({}): nothing to resolve",
                            prep.suggested_strategy.name()
                        )
                    },
                )?;
                return Ok(Exit::Ok);
            }
            // Running `resolve` again reuses the open tasks of this pair instead of creating
            // a second set.
            let existing = coord
                .open_resolution(&source, &target)
                .map_err(|e| fail(e, "looking for open resolution tasks"))?;
            let reused = existing.is_some();
            let res = match existing {
                Some(res) => res,
                None => coord
                    .coordinate_resolution_blocking(&prep)
                    .map_err(|e| fail(e, "creating resolution tasks"))?,
            };
            #[derive(Serialize)]
            struct Out<'a> {
                preparation: &'a MergePreparation,
                resolution: &'a maos_coordination::merge::Resolution,
            }
            ctx.emit(
                &Out {
                    preparation: &prep,
                    resolution: &res,
                },
                || {
                    let mut s = prep_text(&prep);
                    let _ = writeln!(
                        s,
                        "\nresolution tasks{}:",
                        if reused {
                            " (already open, reused)"
                        } else {
                            ""
                        }
                    );
                    for t in &res.conflict_tasks {
                        let _ = writeln!(
                            s,
                            "  {}  {} ({}) -> {}",
                            t.task,
                            t.path,
                            t.kind,
                            t.assigned_to
                                .as_ref()
                                .map_or("unassigned".into(), |a| a.to_string())
                        );
                    }
                    let _ = writeln!(s, "merge task: {} (depends on the above)", res.merge_task);
                    let notified: Vec<String> =
                        res.notified.iter().map(|a| a.to_string()).collect();
                    let _ = writeln!(s, "messaged: {}", notified.join(", "));
                    s
                },
            )?;
            // Conflicts were found (and handed to resolvers): exit 4, like check and prepare.
            Ok(Exit::Conflicts)
        }
        MergeCommand::Run { source, target } => {
            let out = coord
                .merge_blocking(&source, &target)
                .map_err(|e| fail(e, "merging"))?;
            ctx.emit(&out, || outcome_text(&source, &target, &out))?;
            Ok(match out {
                MergeOutcome::Conflicts(_) => Exit::Conflicts,
                _ => Exit::Ok,
            })
        }
        MergeCommand::Queue(q) => {
            let repo = coord
                .detector()
                .repository()
                .map_err(|e| fail(e, "opening the repository"))?;
            queue(ctx, MergeQueue::new(coord), q, &repo)
        }
    }
}

fn queue(
    ctx: &Ctx,
    queue: MergeQueue,
    cmd: QueueCommand,
    repo: &git2::Repository,
) -> anyhow::Result<Exit> {
    match cmd {
        QueueCommand::Add { source, target } => {
            // Refuse what cannot be merged now rather than at `queue run`.
            for (what, rev) in [("SOURCE", &source), ("TARGET", &target)] {
                repo.revparse_single(rev).map_err(|e| {
                    Failure::error(
                        Exit::Error,
                        format!("{what} {rev:?} is not a known revision: {}", e.message()),
                    )
                })?;
            }
            let e = queue
                .add(&source, &target)
                .map_err(|e| fail(e, "adding to the merge queue"))?;
            ctx.emit(&e, || {
                format!("queued #{}: {} into {}", e.id, e.source, e.target)
            })?;
            Ok(Exit::Ok)
        }
        QueueCommand::List => {
            let entries = queue
                .list()
                .map_err(|e| fail(e, "reading the merge queue"))?;
            ctx.emit(&entries, || {
                if entries.is_empty() {
                    return "the merge queue is empty".into();
                }
                entries
                    .iter()
                    .map(entry_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            Ok(Exit::Ok)
        }
        QueueCommand::Run { fetch } => {
            if let Some(remote) = &fetch {
                git_fetch(&repo_root(repo), remote)?;
            }
            let run = queue
                .run_blocking()
                .map_err(|e| fail(e, "running the merge queue"))?;
            ctx.emit(&run, || {
                if run.entries.is_empty() {
                    return "nothing queued".into();
                }
                run.entries
                    .iter()
                    .map(entry_line)
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
            if !run.failed.is_empty() && run.blocked.is_empty() {
                let reasons: Vec<String> = run
                    .entries
                    .iter()
                    .filter(|e| run.failed.contains(&e.id))
                    .map(|e| {
                        format!(
                            "#{} {} into {}: {}",
                            e.id,
                            e.source,
                            e.target,
                            e.error.as_deref().unwrap_or("unknown error")
                        )
                    })
                    .collect();
                return Err(Failure::error(
                    Exit::Error,
                    format!(
                        "{} queue entry(ies) failed: {}",
                        run.failed.len(),
                        reasons.join("; ")
                    ),
                ));
            }
            Ok(if run.blocked.is_empty() {
                Exit::Ok
            } else {
                Exit::Conflicts
            })
        }
        QueueCommand::Remove { id } => {
            let e = queue
                .remove(id)
                .map_err(|e| fail(e, "removing from the merge queue"))?;
            ctx.emit(&e, || {
                format!("removed #{}: {} into {}", e.id, e.source, e.target)
            })?;
            Ok(Exit::Ok)
        }
    }
}

/// Maps a library error to the CLI's exit codes (3 for a busy lock or queue).
fn fail(e: MergeError, what: &str) -> anyhow::Error {
    let code = match &e {
        MergeError::QueueBusy => Exit::Busy,
        MergeError::Core {
            source: maos_coordination::core::Error::LockTimeout { .. },
            ..
        } => Exit::Busy,
        MergeError::Lock { source, .. }
            if matches!(**source, maos_coordination::lock::Error::Timeout { .. }) =>
        {
            Exit::Busy
        }
        // The PostgreSQL backend's merge lock, waited for in vain.
        MergeError::Backend { source, .. }
            if maos_coordination::backend::is_timeout(source.as_ref()) =>
        {
            Exit::Busy
        }
        _ => Exit::Error,
    };
    Failure::caused_by(code, what, e)
}

fn check_one(
    ctx: &Ctx,
    det: &ConflictDetector,
    source: String,
    target: Option<String>,
    worktree: Option<PathBuf>,
) -> anyhow::Result<Exit> {
    let target = match target {
        Some(t) => t,
        None => default_target(det)?,
    };
    let rev = match worktree {
        Some(dir) => det
            .snapshot_worktree(&dir)
            .map_err(|e| fail(e, "snapshotting the worktree"))?,
        None => source.clone(),
    };
    let mut check = det
        .check(&rev, &target)
        .map_err(|e| fail(e, "checking the merge"))?;
    check.source = source;
    ctx.emit(&check, || check_text(&check))?;
    Ok(if check.is_clean() {
        Exit::Ok
    } else {
        Exit::Conflicts
    })
}

fn default_target(det: &ConflictDetector) -> anyhow::Result<String> {
    let repo = det
        .repository()
        .map_err(|e| fail(e, "opening the repository"))?;
    let head = repo
        .head()
        .context("reading HEAD (give TARGET explicitly)")?;
    Ok(head
        .shorthand()
        .ok()
        .map(str::to_owned)
        .unwrap_or_else(|| "main".into()))
}

/// The directory git commands run in: the repository's worktree (or its git directory).
fn repo_root(repo: &git2::Repository) -> PathBuf {
    repo.workdir().unwrap_or_else(|| repo.path()).to_path_buf()
}

/// `git fetch --prune REMOTE` in `dir`, with git's own transports and credentials; its
/// error output is part of the error.
fn git_fetch(dir: &std::path::Path, remote: &str) -> anyhow::Result<()> {
    if remote.is_empty() || remote.starts_with('-') {
        return Err(Failure::error(
            Exit::Usage,
            format!("--fetch {remote:?}: give the name or URL of a git remote"),
        ));
    }
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["fetch", "--prune", "--quiet", "--", remote])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running `git fetch` (is git installed?)")?;
    if !out.status.success() {
        return Err(Failure::error(
            Exit::Error,
            format!(
                "`git fetch {remote}` in {} failed ({}): {}; check the remote (`git remote -v`) \
                 and that it is reachable from here",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

fn check_all(
    ctx: &Ctx,
    backends: &maos_coordination::backend::Backends,
    coord: &MergeCoordinator,
    target: &str,
    worktrees: bool,
    remote: Option<&str>,
) -> anyhow::Result<Exit> {
    if worktrees {
        // Say which agents have no worktree to compare: their committed branch stands in.
        let (list, _) = backends.agents().list()?;
        let without: Vec<String> = list
            .iter()
            .map(|v| &v.record)
            .filter(|a| a.branch.is_some() && a.worktree.is_none())
            .map(|a| a.id.to_string())
            .collect();
        if !without.is_empty() {
            eprintln!(
                "maos: note: no worktree registered for {}: their committed branches are \
                 compared instead (register one with `maos agents register --worktree DIR`)",
                without.join(", ")
            );
        }
    }
    let p = coord
        .predict_agents_from(target, worktrees, remote)
        .map_err(|e| fail(e, "checking the agent branches"))?;
    ctx.emit(&p, || matrix_text(&p))?;
    Ok(if p.is_clean() {
        Exit::Ok
    } else {
        Exit::Conflicts
    })
}

fn matrix_text(p: &Prediction) -> String {
    let mut s = String::new();
    if p.vs_target.is_empty() {
        return "no registered agent has a branch (maos agents register --branch ...)".into();
    }
    let _ = writeln!(s, "against {}:", p.target);
    // The label column is as wide as the longest label (characters, not bytes).
    let width = p
        .vs_target
        .iter()
        .map(|r| r.source.chars().count())
        .max()
        .unwrap_or(0);
    for r in &p.vs_target {
        let _ = writeln!(s, "  {:<width$} {}", r.source, pair_text(r));
    }
    if !p.pairwise.is_empty() {
        let _ = writeln!(s, "pairwise:");
        for r in &p.pairwise {
            let _ = writeln!(s, "  {} x {}: {}", r.target, r.source, pair_text(r));
        }
    }
    s
}

fn pair_text(r: &PairResult) -> String {
    if r.is_clean() {
        "clean".into()
    } else {
        let v: Vec<String> = r
            .conflicts
            .iter()
            .map(|c| format!("{} ({})", c.path, c.kind))
            .collect();
        format!("{} conflict(s): {}", v.len(), v.join(", "))
    }
}

fn check_text(c: &MergeCheck) -> String {
    let mut s = String::new();
    if c.is_clean() {
        let how = match c.relation {
            maos_coordination::merge::Relation::UpToDate => "already merged",
            maos_coordination::merge::Relation::FastForward => "fast-forward",
            _ => "clean merge",
        };
        let _ = writeln!(s, "{} merges into {} cleanly ({how})", c.source, c.target);
        return s;
    }
    let _ = writeln!(
        s,
        "{} into {}: {} conflict(s)",
        c.source,
        c.target,
        c.conflicts.len()
    );
    for x in &c.conflicts {
        let _ = writeln!(s, "  {:<14} {}", x.kind.label(), x.path);
        let _ = writeln!(s, "                 {}", x.description);
    }
    s
}

fn prep_text(p: &MergePreparation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} into {}: strategy {}",
        p.source,
        p.target,
        p.suggested_strategy.name()
    );
    for c in &p.conflicts {
        let who = |v: &[maos_coordination::merge::Actor]| {
            v.iter().map(|a| a.label()).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(s, "  {:<14} {}", c.conflict.kind.label(), c.conflict.path);
        let _ = writeln!(s, "                 {}", c.conflict.description);
        let _ = writeln!(
            s,
            "                 source: {}; target: {}; resolver: {}",
            who(&c.source_actors),
            who(&c.target_actors),
            c.suggested_resolver
                .as_ref()
                .map_or("none (anyone may claim)".into(), |a| a.to_string())
        );
    }
    let _ = writeln!(s, "affected files: {}", p.affected_files.len());
    for (who, files) in &p.agent_modifications {
        let _ = writeln!(s, "  {who}: {}", files.join(", "));
    }
    s
}

fn outcome_text(source: &str, target: &str, o: &MergeOutcome) -> String {
    match o {
        MergeOutcome::UpToDate { commit } => {
            format!("{target} already contains {source} ({commit})")
        }
        MergeOutcome::FastForward { from, to } => {
            format!("fast-forwarded {target} from {from} to {to}")
        }
        MergeOutcome::Merged { from, commit } => {
            format!("merged {source} into {target}: {commit} (was {from})")
        }
        MergeOutcome::Conflicts(c) => {
            let mut s = check_text(c);
            s.push_str("nothing was merged; run `maos merge resolve` to create resolution tasks");
            s
        }
    }
}

fn entry_line(e: &QueueEntry) -> String {
    let status = format!("{:?}", e.status).to_lowercase();
    let mut s = format!("#{:<4} {:<8} {} into {}", e.id, status, e.source, e.target);
    if !e.conflicted_paths.is_empty() {
        let _ = write!(s, "  conflicts: {}", e.conflicted_paths.join(", "));
    }
    if let Some(err) = &e.error {
        let _ = write!(s, "  error: {err}");
    }
    s
}

/// `maos [--workspace DIR] [--agent ID] [--json] merge check SOURCE [TARGET] [--json]`, the
/// command agents and hooks run most, parsed without building the whole clap command tree
/// (about a third of the process's start-up). Anything else (another flag, `--help`, a
/// value that looks like a flag) returns `None` and goes through clap as usual, so the two
/// parsers accept the same language on this path.
#[derive(Debug, Default)]
pub(crate) struct FastCheck {
    pub(crate) workspace: Option<PathBuf>,
    pub(crate) agent: Option<String>,
    pub(crate) json: bool,
    source: String,
    target: Option<String>,
}

impl FastCheck {
    pub(crate) fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<Self> {
        let mut out = FastCheck::default();
        let mut words: Vec<String> = Vec::new();
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            let a = a.into_string().ok()?;
            match a.as_str() {
                "--json" => out.json = true,
                "--workspace" => out.workspace = Some(PathBuf::from(args.next()?)),
                "--agent" => out.agent = Some(args.next()?.into_string().ok()?),
                _ if a.starts_with("--workspace=") => {
                    out.workspace = Some(PathBuf::from(&a["--workspace=".len()..]));
                }
                _ if a.starts_with("--agent=") => out.agent = Some(a["--agent=".len()..].into()),
                _ if a.starts_with('-') || a.is_empty() => return None,
                _ => words.push(a),
            }
        }
        let [merge, check, rest @ ..] = words.as_slice() else {
            return None;
        };
        if merge != "merge" || check != "check" {
            return None;
        }
        match rest {
            [s] => out.source = s.clone(),
            [s, t] => {
                out.source = s.clone();
                out.target = Some(t.clone());
            }
            _ => return None,
        }
        // clap's environment defaults for the global options.
        if out.workspace.is_none() {
            out.workspace = std::env::var_os("MAOS_WORKSPACE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
        }
        if out.agent.is_none() {
            out.agent = std::env::var("MAOS_AGENT_ID").ok();
        }
        Some(out)
    }

    pub(crate) fn run(self, ctx: &Ctx) -> anyhow::Result<Exit> {
        let det =
            ConflictDetector::open(&ctx.root).map_err(|e| fail(e, "opening the git repository"))?;
        check_one(ctx, &det, self.source, self.target, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_lock_waited_for_in_vain_is_busy_on_every_backend() {
        let timeout = maos_coordination::postgres::Error::Timeout {
            resource: maos_coordination::ResourceName::new(".maos/merge/main").unwrap(),
            waited_ms: 120_000,
            allowed_ms: 120_000,
            blocker: None,
        };
        let e = MergeError::Backend {
            context: "take the merge lock .maos/merge/main".into(),
            backend: "postgresql",
            source: Box::new(timeout),
        };
        assert_eq!(crate::exit::code_of(&fail(e, "merging")), Exit::Busy);
        let other = MergeError::Backend {
            context: "read the merge queue".into(),
            backend: "postgresql",
            source: Box::new(std::io::Error::other("connection refused")),
        };
        assert_eq!(crate::exit::code_of(&fail(other, "merging")), Exit::Error);
    }

    fn parse(args: &[&str]) -> Option<FastCheck> {
        FastCheck::parse(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn the_fast_path_takes_only_the_plain_check() {
        let f = parse(&[
            "--workspace",
            "/w",
            "merge",
            "check",
            "feat",
            "main",
            "--json",
        ])
        .unwrap();
        assert_eq!(f.workspace.as_deref(), Some(std::path::Path::new("/w")));
        assert!(f.json);
        assert_eq!(
            (f.source.as_str(), f.target.as_deref()),
            ("feat", Some("main"))
        );
        let f = parse(&["merge", "check", "feat"]).unwrap();
        assert_eq!(f.target, None);
        for other in [
            &["merge", "check", "--all"][..],
            &["merge", "check"],
            &["merge", "check", "a", "b", "c"],
            &["merge", "check", "a", "--worktree"],
            &["merge", "check", "--help"],
            &["-v", "merge", "check", "a"],
            &["merge", "run", "a", "b"],
            &["task", "check", "a"],
        ] {
            assert!(parse(other).is_none(), "{other:?}");
        }
    }
}
