//! The demo's git repository, driven through git2: `main` is checked out in the workspace root
//! and each agent works in its own linked worktree (`.worktrees/<agent>`, branch
//! `agent/<agent>`): it edits files there and commits them, as a coding agent does. Only the
//! agent moves its branch; the merge queue moves `main`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use git2::{FileFavor, Index, IndexEntry, IndexTime, MergeFileOptions, Oid, Repository, Signature};

/// The files of the initial commit on `main`.
pub(crate) const INITIAL_FILES: &[(&str, &str)] = &[
    (".gitignore", ".maos/\n.worktrees/\n"),
    (
        "README.md",
        "# user-profile service\n\nA demo project edited by several maos agents.\n",
    ),
    (
        "db/schema.sql",
        "-- tables\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n",
    ),
    (
        "src/shared/types.rs",
        "// shared types\npub struct UserId(pub u64);\n",
    ),
    (
        "src/shared/routes.rs",
        "// HTTP routes\npub const ROUTES: &[&str] = &[\n    \"/health\",\n];\n",
    ),
    ("src/api/user.rs", "// user API\n"),
    ("src/ui/user_view.rs", "// user view\n"),
    ("docs/design.md", "# design\n"),
];

pub(crate) fn signature(agent: &str) -> anyhow::Result<Signature<'static>> {
    Ok(Signature::now(
        agent,
        &format!("{agent}@agents.maos.invalid"),
    )?)
}

/// Creates the repository with one commit on `main`.
pub(crate) fn init(root: &Path) -> anyhow::Result<Repository> {
    let mut opts = git2::RepositoryInitOptions::new();
    opts.initial_head("main");
    let repo = Repository::init_opts(root, &opts).context("git init")?;
    {
        let mut index = Index::new()?;
        for (path, content) in INITIAL_FILES {
            add(&repo, &mut index, path, content.as_bytes())?;
        }
        let tree = repo.find_tree(index.write_tree_to(&repo)?)?;
        let sig = signature("orchestrator")?;
        repo.commit(
            Some("refs/heads/main"),
            &sig,
            &sig,
            "Initial commit\n\nMaos-Agent: orchestrator\n",
            &tree,
            &[],
        )?;
    }
    // Check the files out so the workspace looks like a real project.
    repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))?;
    Ok(repo)
}

fn add(repo: &Repository, index: &mut Index, path: &str, content: &[u8]) -> anyhow::Result<()> {
    let id = repo.blob(content)?;
    index.add(&IndexEntry {
        ctime: IndexTime::new(0, 0),
        mtime: IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode: 0o100644,
        uid: 0,
        gid: 0,
        file_size: content.len() as u32,
        id,
        flags: 0,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    })?;
    Ok(())
}

fn branch_ref(branch: &str) -> String {
    format!("refs/heads/{branch}")
}

/// The tip of `branch`, if it exists.
pub(crate) fn tip(repo: &Repository, branch: &str) -> anyhow::Result<Option<Oid>> {
    match repo.find_reference(&branch_ref(branch)) {
        Ok(r) => Ok(r.target()),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Creates `branch` at `main`'s tip if it does not exist yet.
pub(crate) fn ensure_branch(repo: &Repository, branch: &str) -> anyhow::Result<Oid> {
    if let Some(t) = tip(repo, branch)? {
        return Ok(t);
    }
    let main = tip(repo, "main")?.context("main has no commits")?;
    match repo.reference(
        &branch_ref(branch),
        main,
        false,
        "maos demo: branch from main",
    ) {
        Ok(_) => Ok(main),
        Err(e) if e.code() == git2::ErrorCode::Exists => {
            tip(repo, branch)?.context("branch vanished")
        }
        Err(e) => Err(e.into()),
    }
}

/// The content of `path` at the tip of `branch`.
pub(crate) fn read(repo: &Repository, branch: &str, path: &str) -> anyhow::Result<Option<String>> {
    let Some(t) = tip(repo, branch)? else {
        return Ok(None);
    };
    let tree = repo.find_commit(t)?.tree()?;
    match tree.get_path(Path::new(path)) {
        Ok(entry) => {
            let blob = repo.find_blob(entry.id())?;
            Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
        }
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Where the agents' worktrees live, inside the workspace root (ignored by `.gitignore`).
pub(crate) const WORKTREES: &str = ".worktrees";

/// The worktree of `agent` under `root`.
pub(crate) fn worktree_path(root: &Path, agent: &str) -> PathBuf {
    root.join(WORKTREES).join(agent)
}

/// Creates `agent`'s linked worktree with `branch` (created at `main`) checked out.
pub(crate) fn add_worktree(
    repo: &Repository,
    root: &Path,
    agent: &str,
    branch: &str,
) -> anyhow::Result<PathBuf> {
    ensure_branch(repo, branch)?;
    let path = worktree_path(root, agent);
    std::fs::create_dir_all(root.join(WORKTREES))
        .with_context(|| format!("creating {}", root.join(WORKTREES).display()))?;
    let reference = repo.find_reference(&branch_ref(branch))?;
    let mut opts = git2::WorktreeAddOptions::new();
    opts.reference(Some(&reference));
    repo.worktree(agent, &path, Some(&opts))
        .with_context(|| format!("git worktree add {} {branch}", path.display()))?;
    Ok(path)
}

/// A merge of the target into an agent's branch, computed in memory: the conflicting files
/// resolved by keeping both sides' lines (what an agent resolving "both routes must exist"
/// does), waiting to be written and committed.
pub(crate) struct PendingMerge {
    index: Index,
    ours: Oid,
    theirs: Oid,
    target: String,
    /// The conflicting paths and their resolved content.
    pub(crate) resolved: Vec<(String, String)>,
}

/// An agent's worktree: files on disk, its own index, its branch checked out.
pub(crate) struct Worktree {
    repo: Repository,
    path: PathBuf,
    branch: String,
}

impl Worktree {
    pub(crate) fn open(path: &Path, branch: &str) -> anyhow::Result<Self> {
        let repo = Repository::open(path)
            .with_context(|| format!("opening the worktree {}", path.display()))?;
        let head = repo
            .head()?
            .name()
            .map_or_else(|_| "a detached HEAD".to_owned(), str::to_owned);
        anyhow::ensure!(
            head == branch_ref(branch),
            "the worktree {} has {head} checked out, not {branch}",
            path.display(),
        );
        Ok(Self {
            repo,
            path: path.to_path_buf(),
            branch: branch.to_owned(),
        })
    }

    pub(crate) fn branch(&self) -> &str {
        &self.branch
    }

    /// The absolute path of a repository path in this worktree.
    pub(crate) fn file(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The file's content on disk (`None` when it does not exist).
    pub(crate) fn read(&self, rel: &str) -> anyhow::Result<Option<String>> {
        match std::fs::read(self.file(rel)) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.file(rel).display())),
        }
    }

    pub(crate) fn write(&self, rel: &str, content: &str) -> anyhow::Result<()> {
        let path = self.file(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))
    }

    /// `git add FILES && git commit` as `agent`, with a `Maos-Agent:` trailer.
    pub(crate) fn commit(
        &self,
        agent: &str,
        summary: &str,
        files: &[String],
    ) -> anyhow::Result<Oid> {
        let mut index = self.repo.index()?;
        for f in files {
            index
                .add_path(Path::new(f))
                .with_context(|| format!("git add {f}"))?;
        }
        index.write()?;
        let tree = self.repo.find_tree(index.write_tree()?)?;
        let parent = self.repo.head()?.peel_to_commit()?;
        let sig = signature(agent)?;
        let msg = format!("{summary}\n\nMaos-Agent: {agent}\n");
        // Moves the branch only if its tip is still `parent` (libgit2 checks).
        self.repo
            .commit(Some("HEAD"), &sig, &sig, &msg, &tree, &[&parent])
            .with_context(|| format!("committing on {}", self.branch))
    }

    /// Merges `target` into this worktree's branch in memory (nothing written yet).
    pub(crate) fn prepare_merge(&self, target: &str) -> anyhow::Result<PendingMerge> {
        let ours = self.repo.head()?.peel_to_commit()?;
        let theirs_id = tip(&self.repo, target)?.context("target has no commits")?;
        let theirs = self.repo.find_commit(theirs_id)?;
        let mut index = self.repo.merge_commits(&ours, &theirs, None)?;
        let mut resolved = Vec::new();
        if index.has_conflicts() {
            let conflicts: Vec<_> = index.conflicts()?.collect::<Result<_, _>>()?;
            for c in conflicts {
                let (Some(our), Some(their)) = (&c.our, &c.their) else {
                    bail!("the demo only resolves content conflicts");
                };
                let path = String::from_utf8_lossy(&our.path).into_owned();
                let mut opts = MergeFileOptions::new();
                opts.favor(FileFavor::Union);
                let merged = self.repo.merge_file_from_index(
                    c.ancestor
                        .as_ref()
                        .context("conflict without a common ancestor")?,
                    our,
                    their,
                    Some(&mut opts),
                )?;
                let content = String::from_utf8_lossy(merged.content()).into_owned();
                index.conflict_remove(Path::new(&path))?;
                add(&self.repo, &mut index, &path, content.as_bytes())?;
                resolved.push((path, content));
            }
        }
        Ok(PendingMerge {
            index,
            ours: ours.id(),
            theirs: theirs_id,
            target: target.to_owned(),
            resolved,
        })
    }

    /// Commits a prepared merge (its resolved files already written by the agent) and checks
    /// the result out, so the worktree is clean at the new tip.
    pub(crate) fn commit_merge(&self, mut m: PendingMerge, agent: &str) -> anyhow::Result<Oid> {
        let tree = self.repo.find_tree(m.index.write_tree_to(&self.repo)?)?;
        let ours = self.repo.find_commit(m.ours)?;
        let theirs = self.repo.find_commit(m.theirs)?;
        let paths: Vec<&str> = m.resolved.iter().map(|(p, _)| p.as_str()).collect();
        let msg = format!(
            "Merge {} into {}, resolving {}\n\nMaos-Agent: {agent}\n",
            m.target,
            self.branch,
            if paths.is_empty() {
                "nothing".to_string()
            } else {
                paths.join(", ")
            }
        );
        let sig = signature(agent)?;
        let id = self
            .repo
            .commit(None, &sig, &sig, &msg, &tree, &[&ours, &theirs])?;
        self.repo
            .reference_matching(
                &branch_ref(&self.branch),
                id,
                true,
                m.ours,
                "maos demo: resolve",
            )
            .with_context(|| format!("moving {} (someone else moved it)", self.branch))?;
        self.repo
            .checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
            .with_context(|| format!("checking out {} after the merge", self.branch))?;
        // The files the agent wrote already match: make the index say so too.
        let mut index = self.repo.index()?;
        index.read_tree(&tree)?;
        index.write()?;
        Ok(id)
    }

    /// Paths that differ between the worktree (index or files) and HEAD, for the checks.
    pub(crate) fn dirty(&self) -> anyhow::Result<Vec<String>> {
        let mut opts = git2::StatusOptions::new();
        opts.include_untracked(true);
        let statuses = self.repo.statuses(Some(&mut opts))?;
        Ok(statuses
            .iter()
            .filter_map(|s| s.path().ok().map(str::to_owned))
            .collect())
    }
}
