//! The demo's git repository, driven through git2 in memory: agents commit on their own
//! branches without a worktree, so nothing is ever checked out behind anyone's back.

use std::path::Path;

use anyhow::{Context as _, bail};
use git2::{FileFavor, Index, IndexEntry, IndexTime, MergeFileOptions, Oid, Repository, Signature};

/// The files of the initial commit on `main`.
pub(crate) const INITIAL_FILES: &[(&str, &str)] = &[
    (".gitignore", ".maos/\n"),
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

/// Commits `edits` (path, new content) on `branch` as `agent`, with a `Maos-Agent:` trailer,
/// moving the branch by compare-and-swap.
pub(crate) fn commit(
    repo: &Repository,
    branch: &str,
    agent: &str,
    summary: &str,
    edits: &[(String, String)],
) -> anyhow::Result<Oid> {
    let parent_id = ensure_branch(repo, branch)?;
    let parent = repo.find_commit(parent_id)?;
    let mut index = Index::new()?;
    index.read_tree(&parent.tree()?)?;
    for (path, content) in edits {
        add(repo, &mut index, path, content.as_bytes())?;
    }
    let tree = repo.find_tree(index.write_tree_to(repo)?)?;
    let sig = signature(agent)?;
    let msg = format!("{summary}\n\nMaos-Agent: {agent}\n");
    let id = repo.commit(None, &sig, &sig, &msg, &tree, &[&parent])?;
    repo.reference_matching(&branch_ref(branch), id, true, parent_id, summary)
        .with_context(|| format!("moving {branch} (someone else moved it)"))?;
    Ok(id)
}

/// Merges `target` into `branch` in memory, resolving each conflicting file by keeping both
/// sides' lines (what an agent resolving "both routes must exist" does), and commits the
/// merge on `branch`. Returns the paths that had conflicts.
pub(crate) fn merge_in_resolving(
    repo: &Repository,
    branch: &str,
    target: &str,
    agent: &str,
) -> anyhow::Result<Vec<String>> {
    let ours_id = tip(repo, branch)?.context("branch has no commits")?;
    let theirs_id = tip(repo, target)?.context("target has no commits")?;
    let ours = repo.find_commit(ours_id)?;
    let theirs = repo.find_commit(theirs_id)?;
    let mut index = repo.merge_commits(&ours, &theirs, None)?;
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
            let merged = repo.merge_file_from_index(
                c.ancestor
                    .as_ref()
                    .context("conflict without a common ancestor")?,
                our,
                their,
                Some(&mut opts),
            )?;
            let content = merged.content().to_vec();
            index.conflict_remove(Path::new(&path))?;
            add(repo, &mut index, &path, &content)?;
            resolved.push(path);
        }
    }
    let tree = repo.find_tree(index.write_tree_to(repo)?)?;
    let sig = signature(agent)?;
    let msg = format!(
        "Merge {target} into {branch}, resolving {}\n\nMaos-Agent: {agent}\n",
        if resolved.is_empty() {
            "nothing".to_string()
        } else {
            resolved.join(", ")
        }
    );
    let id = repo.commit(None, &sig, &sig, &msg, &tree, &[&ours, &theirs])?;
    repo.reference_matching(&branch_ref(branch), id, true, ours_id, "maos demo: resolve")?;
    Ok(resolved)
}
