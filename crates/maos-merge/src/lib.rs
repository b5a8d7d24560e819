//! maos-merge: git conflict prediction, merge coordination and automated merging for many
//! agents working on branches of one repository.
//!
//! - [`ConflictDetector`] predicts a merge with an in-memory three-way merge modelled on
//!   git's merge-ort (what `git merge-tree --write-tree` runs): every merge base (several
//!   merged into a virtual one), git's rename detection (exact renames first, unique
//!   basenames, the similarity matrix at 50%, git's similarity measure and limits),
//!   directory renames, and content merges with libgit2's xdiff merge (the same algorithm
//!   as git's). Objects are read through libgit2; the repository's index and working trees
//!   are never touched. Each [`Conflict`] has a [`ConflictKind`] (content, binary, add/add,
//!   modify/delete, rename/rename, rename/delete, mode, file/directory, file location), the
//!   paths on each side and, for content conflicts, the conflicting line ranges in each
//!   version ([`ConflictRegion`]). Its verdict and conflicted paths equal `git merge-tree
//!   --write-tree` on every merge of two real histories and on generated pairs (tests).
//!   [`ConflictDetector::predict`] checks many branches against a target and pairwise in
//!   one pass that shares trees, merge bases and file merges;
//!   [`ConflictDetector::snapshot_worktree`] includes an agent's uncommitted changes.
//! - Who touched what: every commit since the merge base is attributed to an agent by its
//!   `Maos-Agent:` trailer ([`AGENT_TRAILER`]), else by the agent registry's branch-to-agent
//!   map, else to its author ([`Actor`]); content conflicts are blamed line by line.
//! - [`MergeCoordinator`]: [`prepare_merge`](MergeCoordinator::prepare_merge) (under the merge
//!   lock, [`merge_lock_resource`]) returns a [`MergePreparation`] with the suggested
//!   [`MergeStrategy`] and a resolver per conflict;
//!   [`coordinate_resolution`](MergeCoordinator::coordinate_resolution) creates one task per
//!   conflict (maos-track), the merge task depending on them, and messages each affected agent
//!   (maos-comm, [`ConflictNotice`]); [`merge`](MergeCoordinator::merge) performs a clean merge
//!   and moves the target by compare-and-swap, then brings a checked-out target along
//!   without ever overwriting a local edit; a merge killed half way is finished by the next
//!   one ([`recover`](MergeCoordinator::recover)).
//! - [`MergeQueue`]: `.maos/merge/queue.json`; entries merge in order, each re-checked against
//!   the new target; a conflicting entry becomes resolution tasks and never blocks the rest.
//!
//! The on-disk formats (queue file, trailer, message payloads, task conventions) are in
//! `docs/protocol.md` (merge section).
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use git2::{Repository, Signature};
//! use maos_merge::{ConflictDetector, ConflictKind};
//!
//! // A repository where `main` and `feature` change line 2 of the same file.
//! let dir = tempfile::tempdir()?;
//! let repo = Repository::init(dir.path())?;
//! let sig = Signature::now("dev", "dev@example.com")?;
//! let commit = |parent: Option<git2::Oid>, text: &str, branch: &str| -> Result<git2::Oid, git2::Error> {
//!     let blob = repo.blob(text.as_bytes())?;
//!     let mut tb = repo.treebuilder(None)?;
//!     tb.insert("notes.txt", blob, 0o100644)?;
//!     let tree = repo.find_tree(tb.write()?)?;
//!     let parents: Vec<git2::Commit<'_>> = parent.into_iter().map(|p| repo.find_commit(p)).collect::<Result<_, _>>()?;
//!     let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
//!     repo.commit(Some(&format!("refs/heads/{branch}")), &sig, &sig, "change", &tree, &refs)
//! };
//! let base = commit(None, "a\nb\nc\n", "main")?;
//! commit(Some(base), "a\nfrom main\nc\n", "main")?;
//! commit(Some(base), "a\nfrom feature\nc\n", "feature")?;
//!
//! let check = ConflictDetector::open(dir.path())?.check("feature", "main")?;
//! assert_eq!(check.conflicts.len(), 1);
//! let c = &check.conflicts[0];
//! assert_eq!((c.kind, c.path.as_str()), (ConflictKind::Content, "notes.txt"));
//! assert_eq!(c.regions[0].source.start, 2); // line 2 of feature's version
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - One git rule is not followed, a naming one: where a file meets a directory, git moves
//!   the file aside and lists it as `PATH~BRANCH` (merge-ort's `unique_path`); maos reports
//!   the conflict at `PATH` (`tests/tests/it/merge_equivalence.rs` counts it).
//! - Not modelled from git: `.gitattributes` merge drivers, `text`/`binary` attributes and
//!   CRLF renormalisation (binary means a NUL byte in the first 8,000 bytes, as git's
//!   default; `tests/tests/it/merge_kinds.rs` shows a `merge=union` file and a `binary` one
//!   against git), merge-ort's cache of renames across a rebase's picks, and the
//!   `handle_early_known_dir_renames` pruning of the rename matrix; a submodule merges only
//!   as a fast-forward of one side (as git) and only when its commits are in this
//!   repository.
//! - Line ranges come from the two-way diffs (base to each side) grouped the way xdiff groups
//!   conflicting hunks; blame attributes the lines of each side's current version.
//! - [`ConflictDetector::snapshot_worktree`] writes blob, tree and commit objects to the object
//!   database (unreferenced, collected by `git gc`); it never writes the index or files.
//!   Reading objects, libgit2's re-hashing of every object is turned off (as git does not
//!   re-hash on read): process-wide for libgit2.
//! - A merge into a checked-out branch needs that worktree clean (tracked files) first; a
//!   file edited while a merge was interrupted keeps the edit and its index entry the
//!   pre-merge version (shown by `git status`). Worktree files are compared and written raw
//!   (no clean/smudge filters, no CRLF conversion); submodule paths are left to the user.
//! - Without a [`backend::MergeBackend`] the merge lock, the queue, the resolution tasks and
//!   notices are files in `.maos/`: single host, like the rest of maos; with one (the
//!   PostgreSQL backend) they are shared, and git stays local to each clone.

pub mod backend;
mod coordinator;
mod detect;
mod doctor;
mod error;
mod queue;
mod touch;

pub use coordinator::{
    AffectedFile, CONFLICT_TASK_LABEL, ConflictNotice, CoordinatorOptions, DEFAULT_LOCK_WAIT,
    MergeCoordinator, MergeOutcome, MergePreparation, MergeStep, MergeStrategy, NoticeFile,
    PreparedConflict, Resolution, ResolutionProgress, ResolutionTask, Side, StepHook, TASK_LABEL,
    merge_lock_resource,
};
pub use detect::{
    Conflict, ConflictDetector, ConflictEntry, ConflictKind, ConflictRegion, DetectOptions,
    LineRange, MergeCheck, PairResult, Prediction, Relation,
};
pub use doctor::doctor;
pub use error::{Error, Result};
pub use queue::{
    EntryStatus, MergeQueue, QUEUE_FILE, QUEUE_LOCK_FILE, QUEUE_RUN_LOCK_FILE, QueueEntry,
    QueueRun, QueueState,
};
pub use touch::{AGENT_TRAILER, Actor, Attribution, branch_agents};

/// Runs blocking work on tokio's blocking pool: the async twin of every blocking entry
/// point, and the one place where a failed background task becomes [`Error::Join`].
pub(crate) async fn asyncify<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::Join(e.to_string())),
    }
}

/// A git repository with one commit on `main`, and its workspace (for the unit tests).
#[cfg(test)]
pub(crate) fn test_repo() -> (tempfile::TempDir, maos_core::Workspace) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut opts = git2::RepositoryInitOptions::new();
    opts.initial_head("main");
    let repo = git2::Repository::init_opts(dir.path(), &opts).expect("git init");
    let tree = repo
        .find_tree(
            repo.index()
                .and_then(|mut i| i.write_tree())
                .expect("an empty tree"),
        )
        .expect("the empty tree");
    let sig = git2::Signature::now("t", "t@t.invalid").expect("a signature");
    repo.commit(Some("refs/heads/main"), &sig, &sig, "init", &tree, &[])
        .expect("the first commit");
    let ws = maos_core::Workspace::init(dir.path()).expect("a workspace");
    (dir, ws)
}
