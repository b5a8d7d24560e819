//! Who an agent session is: its name, from the environment, the git worktree or branch it works
//! in, or its client session; and which repository path a file is.

use std::path::{Path, PathBuf};

use maos_core::{AgentId, MAX_NAME_LEN, ResourceName, Workspace};
use serde::Serialize;

use crate::Result;

/// Where an agent's name came from (said to the agent, so it knows how to change it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedFrom {
    /// `MAOS_AGENT_ID` (or `--agent`).
    Env,
    /// The branch checked out in its worktree.
    Branch,
    /// The directory name of its linked git worktree.
    Worktree,
    /// Its client's session id.
    Session,
    /// Its own process id (nothing better was known).
    Process,
}

impl NamedFrom {
    /// How the name was chosen, in words.
    pub fn describe(self) -> &'static str {
        match self {
            NamedFrom::Env => "from MAOS_AGENT_ID",
            NamedFrom::Branch => "from the git branch of your worktree",
            NamedFrom::Worktree => "from the directory of your git worktree",
            NamedFrom::Session => "from your session id (set MAOS_AGENT_ID to choose a name)",
            NamedFrom::Process => "from a process id (set MAOS_AGENT_ID to choose a name)",
        }
    }
}

/// An agent's name and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentName {
    /// The agent.
    pub agent: AgentId,
    /// Where the name came from.
    pub named_from: NamedFrom,
}

/// Branch names that say nothing about who works on them.
const SHARED_BRANCHES: &[&str] = &["main", "master", "trunk", "develop", "dev"];

/// Names the agent of a session: `env` (`MAOS_AGENT_ID`) when set, else the branch of the
/// linked worktree `cwd` is in (or of the main worktree, unless it is a shared branch such as
/// `main`), else the linked worktree's directory name, else `session` (`claude-<first 8>`),
/// else `fallback` with [`NamedFrom::Process`].
pub fn name_agent(
    env: Option<&str>,
    cwd: &Path,
    session: Option<&str>,
    fallback: &str,
) -> Result<AgentName> {
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        return Ok(AgentName {
            agent: AgentId::new(e)?,
            named_from: NamedFrom::Env,
        });
    }
    if let Some(place) = GitPlace::find(cwd) {
        let branch = place
            .branch()
            .filter(|b| !SHARED_BRANCHES.contains(&b.as_str()));
        if let Some(b) = branch
            .and_then(|b| sanitize(b.trim_start_matches("agents/").trim_start_matches("agent/")))
        {
            return Ok(AgentName {
                agent: AgentId::new(b)?,
                named_from: NamedFrom::Branch,
            });
        }
        if place.linked
            && let Some(name) = place
                .root
                .file_name()
                .and_then(|n| sanitize(&n.to_string_lossy()))
        {
            return Ok(AgentName {
                agent: AgentId::new(name)?,
                named_from: NamedFrom::Worktree,
            });
        }
    }
    if let Some(s) = session.and_then(|s| sanitize(&s.chars().take(8).collect::<String>())) {
        return Ok(AgentName {
            agent: AgentId::new(format!("claude-{s}"))?,
            named_from: NamedFrom::Session,
        });
    }
    Ok(AgentName {
        agent: AgentId::new(sanitize(fallback).unwrap_or_else(|| "agent".into()))?,
        named_from: NamedFrom::Process,
    })
}

/// `s` with every character an agent id cannot hold replaced by `-`, at most the name length;
/// `None` when nothing usable is left.
fn sanitize(s: &str) -> Option<String> {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME_LEN)
        .collect();
    let out = out.trim_matches(|c| c == '-' || c == '.').to_owned();
    (!out.is_empty()).then_some(out)
}

/// A git worktree: its root, its git directory, whether it is a linked worktree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitPlace {
    /// The worktree's root directory.
    pub root: PathBuf,
    /// Its git directory (`.git/` of the main worktree, `.git/worktrees/<name>/` of a linked one).
    pub git_dir: PathBuf,
    /// True for a linked worktree (`git worktree add`).
    pub linked: bool,
}

impl GitPlace {
    /// The worktree containing `path` (the nearest ancestor holding `.git`), read from git's
    /// own files (no `git` process).
    pub fn find(path: &Path) -> Option<Self> {
        for dir in path.ancestors() {
            let dot = dir.join(".git");
            let Ok(meta) = std::fs::symlink_metadata(&dot) else {
                continue;
            };
            if meta.is_dir() {
                return Some(Self {
                    root: dir.to_path_buf(),
                    git_dir: dot,
                    linked: false,
                });
            }
            if meta.is_file() {
                let text = read_small(&dot)?;
                let target = text.strip_prefix("gitdir:")?.trim();
                let git_dir = dir.join(target);
                return Some(Self {
                    root: dir.to_path_buf(),
                    git_dir,
                    linked: true,
                });
            }
        }
        None
    }

    /// The branch checked out (`None` when detached or unreadable).
    pub fn branch(&self) -> Option<String> {
        let head = read_small(&self.git_dir.join("HEAD"))?;
        head.trim()
            .strip_prefix("ref: refs/heads/")
            .map(str::to_owned)
    }

    /// Whether this worktree belongs to the repository whose main worktree is `main_root`.
    pub fn belongs_to(&self, main_root: &Path) -> bool {
        let main_git = main_root.join(".git");
        if !self.linked {
            return same_path(&self.root, main_root);
        }
        let git_dir = canonical(&self.git_dir);
        git_dir.starts_with(canonical(&main_git).join("worktrees"))
    }
}

fn read_small(path: &Path) -> Option<String> {
    let bytes = maos_core::fsx::read_bounded(path, 4096).ok()?;
    String::from_utf8(bytes).ok()
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || canonical(a) == canonical(b)
}

/// The resource (repository-relative path) a file is, mapping a file in a linked worktree of
/// the workspace's repository to the same path in every worktree (a lock taken in one worktree
/// applies in all). `None` for a file outside the repository: maos does not coordinate it.
/// `file` must be absolute.
pub fn resource_for(ws: &Workspace, file: &Path) -> Result<Option<ResourceName>> {
    let existing = file
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or_else(|| Path::new("/"));
    let root = match GitPlace::find(existing) {
        Some(place) if place.linked && place.belongs_to(ws.root()) => place.root,
        _ => ws.root().to_path_buf(),
    };
    let Some(text) = file.to_str() else {
        return Ok(None);
    };
    match ResourceName::in_workspace(&root, text) {
        Ok(r) => Ok(Some(r)),
        Err(maos_core::Error::OutsideWorkspace { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let st = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }

    fn repo() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("repo");
        std::fs::create_dir(&main).unwrap();
        git(&main, &["init", "-q", "-b", "main"]);
        std::fs::write(main.join("a.rs"), "x").unwrap();
        git(&main, &["add", "."]);
        git(&main, &["commit", "-qm", "init"]);
        let wt = d.path().join("wt-frontend");
        git(
            &main,
            &[
                "worktree",
                "add",
                "-q",
                "-b",
                "agent/frontend-1",
                wt.to_str().unwrap(),
            ],
        );
        (d, main, wt)
    }

    #[test]
    fn names_come_from_env_branch_worktree_session_in_that_order() {
        let (_d, main, wt) = repo();
        let n = name_agent(Some("me"), &wt, Some("s"), "p").unwrap();
        assert_eq!((n.agent.as_str(), n.named_from), ("me", NamedFrom::Env));
        let n = name_agent(None, &wt.join("sub"), Some("s"), "p").unwrap();
        assert_eq!(
            (n.agent.as_str(), n.named_from),
            ("frontend-1", NamedFrom::Branch)
        );
        // The main worktree on `main` says nothing: the session names it.
        let n = name_agent(None, &main, Some("0a1b2c3d-4444"), "p").unwrap();
        assert_eq!(
            (n.agent.as_str(), n.named_from),
            ("claude-0a1b2c3d", NamedFrom::Session)
        );
        let n = name_agent(None, Path::new("/"), None, "mcp-42").unwrap();
        assert_eq!(
            (n.agent.as_str(), n.named_from),
            ("mcp-42", NamedFrom::Process)
        );
        // A detached worktree is named after its directory.
        git(&wt, &["checkout", "-q", "--detach"]);
        let n = name_agent(None, &wt, None, "p").unwrap();
        assert_eq!(
            (n.agent.as_str(), n.named_from),
            ("wt-frontend", NamedFrom::Worktree)
        );
        // Hostile session ids are sanitised, not trusted.
        let n = name_agent(None, Path::new("/"), Some("../\u{1b}[2J"), "p").unwrap();
        assert_eq!(n.named_from, NamedFrom::Session);
        assert!(
            n.agent.as_str().chars().all(|c| c.is_ascii_graphic()),
            "{}",
            n.agent
        );
    }

    #[test]
    fn a_file_in_any_worktree_is_the_same_resource() {
        let (_d, main, wt) = repo();
        let ws = Workspace::init(&main).unwrap();
        let in_main = resource_for(&ws, &main.join("src/api/user.rs")).unwrap();
        let in_wt = resource_for(&ws, &wt.join("src/api/user.rs")).unwrap();
        assert_eq!(in_main, in_wt);
        assert_eq!(in_main.unwrap().as_str(), "src/api/user.rs");
        assert_eq!(resource_for(&ws, Path::new("/etc/passwd")).unwrap(), None);
        // Another repository's worktree is not ours.
        let (_d2, _other, other_wt) = repo();
        assert_eq!(resource_for(&ws, &other_wt.join("a.rs")).unwrap(), None);
    }
}
