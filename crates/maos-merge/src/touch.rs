//! Who touched what: the agents behind the commits of each side since the merge base.

use std::collections::{BTreeMap, BTreeSet};

use git2::{Commit, Oid, Repository};
use maos_core::{AgentId, AgentRegistry, Workspace};
use serde::{Deserialize, Serialize};

use crate::detect::{ConflictEntry, LineRange};
use crate::error::{GitContext as _, Result};

/// The commit trailer naming the agent that made a commit: `Maos-Agent: backend-1`.
pub const AGENT_TRAILER: &str = "Maos-Agent";

/// How a commit was attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// A `Maos-Agent:` trailer in the commit message.
    Trailer,
    /// The agent registry maps the branch being analysed to the agent.
    Branch,
    /// Only the commit author is known (not an agent).
    Author,
}

/// Who made a change: an agent if known, else the commit author.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Actor {
    /// The agent, when the trailer or the branch map names one.
    pub agent: Option<AgentId>,
    /// The commit author's name.
    pub author: String,
    /// How the agent (or author) was found.
    pub attribution: Attribution,
}

impl Actor {
    /// The agent id, else the author's name: a key for grouping.
    pub fn label(&self) -> String {
        match &self.agent {
            Some(a) => a.to_string(),
            None => self.author.clone(),
        }
    }
}

/// The branch-to-agent map of the agent registry (`AgentRecord::branch`), keyed by short
/// branch name (`refs/heads/` stripped).
pub fn branch_agents(ws: &Workspace) -> BTreeMap<String, AgentId> {
    let mut out = BTreeMap::new();
    match AgentRegistry::new(ws).list() {
        Ok(list) => {
            for rec in list.agents {
                if let Some(b) = rec.branch {
                    out.insert(short_branch(&b).to_owned(), rec.id);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the agent registry"),
    }
    out
}

/// `refs/heads/x` -> `x`.
pub(crate) fn short_branch(name: &str) -> &str {
    name.strip_prefix("refs/heads/").unwrap_or(name)
}

/// The actor of one commit, for a side whose branch belongs to `branch_agent`.
pub(crate) fn actor_of(commit: &Commit<'_>, branch_agent: Option<&AgentId>) -> Actor {
    let author = commit.author().name().unwrap_or("unknown").to_owned();
    if let Ok(msg) = commit.message()
        && let Ok(trailers) = git2::message_trailers_strs(msg)
    {
        for (k, v) in trailers.iter() {
            if k.eq_ignore_ascii_case(AGENT_TRAILER)
                && let Ok(id) = AgentId::new(v.trim())
            {
                return Actor {
                    agent: Some(id),
                    author,
                    attribution: Attribution::Trailer,
                };
            }
        }
    }
    match branch_agent {
        Some(a) => Actor {
            agent: Some(a.clone()),
            author,
            attribution: Attribution::Branch,
        },
        None => Actor {
            agent: None,
            author,
            attribution: Attribution::Author,
        },
    }
}

/// Per file, who changed it in the commits reachable from `tip` but not from `base`, most
/// recent first (each actor once). Only paths in `only` when given.
pub(crate) fn touches(
    repo: &Repository,
    base: Option<Oid>,
    tip: Oid,
    branch_agent: Option<&AgentId>,
    only: Option<&BTreeSet<String>>,
) -> Result<BTreeMap<String, Vec<Actor>>> {
    let mut walk = repo.revwalk().git("revwalk")?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)
        .git("revwalk")?;
    walk.push(tip).git("revwalk")?;
    if let Some(b) = base {
        walk.hide(b).git("revwalk")?;
    }
    let mut out: BTreeMap<String, Vec<Actor>> = BTreeMap::new();
    for oid in walk {
        let commit = repo.find_commit(oid.git("revwalk")?).git("read commit")?;
        let actor = actor_of(&commit, branch_agent);
        for p in changed_paths(repo, &commit)? {
            if only.is_some_and(|o| !o.contains(&p)) {
                continue;
            }
            let list = out.entry(p).or_default();
            if !list.contains(&actor) {
                list.push(actor.clone());
            }
        }
    }
    Ok(out)
}

/// The paths `commit` changed: against its parent, or for a root commit against the empty
/// tree. A merge commit changed only what differs from every parent (a conflict resolution,
/// an evil merge): what it brings in from one parent is that parent's history's work, not the
/// merger's (as `git log --cc` shows it). Paths that are not UTF-8 are named lossily rather
/// than skipped.
fn changed_paths(repo: &Repository, commit: &Commit<'_>) -> Result<BTreeSet<String>> {
    let tree = commit.tree().git("read tree")?;
    let parents: Vec<Commit<'_>> = commit.parents().collect();
    let diff_paths = |parent: Option<&git2::Tree<'_>>| -> Result<BTreeSet<String>> {
        let diff = repo
            .diff_tree_to_tree(parent, Some(&tree), None)
            .git("diff")?;
        let mut paths = BTreeSet::new();
        for delta in diff.deltas() {
            for f in [delta.old_file(), delta.new_file()] {
                if let Some(p) = f.path() {
                    paths.insert(p.to_string_lossy().into_owned());
                }
            }
        }
        Ok(paths)
    };
    let mut changed: Option<BTreeSet<String>> = None;
    for p in &parents {
        let paths = diff_paths(Some(&p.tree().git("read tree")?))?;
        changed = Some(match changed {
            None => paths,
            Some(c) => c.intersection(&paths).cloned().collect(),
        });
    }
    match changed {
        Some(c) => Ok(c),
        None => diff_paths(None),
    }
}

/// Who last changed the lines `range` of `entry` in the history of `tip` since `base`
/// (blame), most lines first. Lines older than the merge base are not counted.
pub(crate) fn blame(
    repo: &Repository,
    entry: &ConflictEntry,
    tip: Oid,
    base: Option<Oid>,
    range: LineRange,
    branch_agent: Option<&AgentId>,
) -> Result<Vec<Actor>> {
    if range.count == 0 {
        return Ok(Vec::new());
    }
    let mut opts = git2::BlameOptions::new();
    opts.newest_commit(tip)
        .min_line(range.start as usize)
        .max_line(range.end() as usize);
    if let Some(b) = base {
        opts.oldest_commit(b);
    }
    let blame = match repo.blame_file(std::path::Path::new(&entry.path), Some(&mut opts)) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(path = %entry.path, error = %e, "blame failed");
            return Ok(Vec::new());
        }
    };
    let mut lines: BTreeMap<Actor, usize> = BTreeMap::new();
    for hunk in blame.iter() {
        let id = hunk.final_commit_id();
        if Some(id) == base || hunk.is_boundary() {
            continue;
        }
        let Ok(commit) = repo.find_commit(id) else {
            continue;
        };
        *lines.entry(actor_of(&commit, branch_agent)).or_default() += hunk.lines_in_hunk();
    }
    let mut v: Vec<(Actor, usize)> = lines.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(v.into_iter().map(|(a, _)| a).collect())
}
