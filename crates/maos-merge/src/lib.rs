//! maos-merge: git conflict prediction, merge coordination and automated merging for many
//! agents working on branches of one repository.
//!
//! - [`ConflictDetector`] predicts a merge with an in-memory three-way merge (libgit2's
//!   `merge_commits`: merge base, then a merge of the two commits into an in-memory index):
//!   the repository's index and working trees are never touched. Each [`Conflict`] has a
//!   [`ConflictKind`] (content, binary, add/add, modify/delete, rename/rename, rename/delete,
//!   mode, file/directory), the paths on each side and, for content conflicts, the conflicting
//!   line ranges in each version ([`ConflictRegion`]). Its conflicted-path set is tested
//!   against `git merge-tree --write-tree --name-only`. [`ConflictDetector::predict`] checks
//!   many branches against a target and pairwise; [`ConflictDetector::snapshot_worktree`]
//!   includes an agent's uncommitted changes.
//! - Who touched what: every commit since the merge base is attributed to an agent by its
//!   `Maos-Agent:` trailer ([`AGENT_TRAILER`]), else by the agent registry's branch-to-agent
//!   map, else to its author ([`Actor`]); content conflicts are blamed line by line.
//! - [`MergeCoordinator`]: [`prepare_merge`](MergeCoordinator::prepare_merge) (under the merge
//!   lock, [`merge_lock_resource`]) returns a [`MergePreparation`] with the suggested
//!   [`MergeStrategy`] and a resolver per conflict;
//!   [`coordinate_resolution`](MergeCoordinator::coordinate_resolution) creates one task per
//!   conflict (maos-track), the merge task depending on them, and messages each affected agent
//!   (maos-comm, [`ConflictNotice`]); [`merge`](MergeCoordinator::merge) performs a clean merge
//!   and moves the target by compare-and-swap.
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
//! - libgit2 is not git: the conflicted paths match `git merge-tree` except in documented
//!   cases, each covered by `tests/tests/merge_equivalence.rs`: libgit2 has no directory-rename
//!   detection (git's `CONFLICT (file location)`); a rename with edits onto a path the other
//!   side added is reported as a modify/delete at the rename's source plus the add/add (a pure
//!   rename is normalised to git's single add/add); an
//!   add/add of identical content with different modes merges silently in libgit2; and git
//!   names a file moved aside by a file/directory conflict `PATH~BRANCH` where maos reports
//!   `PATH`. Criss-cross histories use libgit2's recursive virtual merge base, which may differ
//!   from git's in rare cases.
//! - Line ranges come from the two-way diffs (base to each side) grouped the way xdiff groups
//!   conflicting hunks; blame attributes the lines of each side's current version.
//! - [`ConflictDetector::snapshot_worktree`] writes blob, tree and commit objects to the object
//!   database (unreferenced, collected by `git gc`); it never writes the index or files.
//! - A merge into a branch checked out in a clean worktree updates that worktree with a safe
//!   checkout before the ref moves; if another process moves the ref in the instant between
//!   (the merge lock only binds maos), the worktree is forced back and the merge fails with
//!   [`Error::ConcurrentUpdate`]. A dirty checked-out target is refused.
//! - The merge lock and queue are files in `.maos/`: single host, like the rest of maos.

mod coordinator;
mod detect;
mod error;
mod queue;
mod touch;

pub use coordinator::{
    AffectedFile, CONFLICT_TASK_LABEL, ConflictNotice, CoordinatorOptions, DEFAULT_LOCK_WAIT,
    MergeCoordinator, MergeOutcome, MergePreparation, MergeStep, MergeStrategy, NoticeFile,
    PreparedConflict,
    Resolution, ResolutionProgress, ResolutionTask, Side, StepHook, TASK_LABEL, merge_lock_resource,
};
pub use detect::{
    Conflict, ConflictDetector, ConflictEntry, ConflictKind, ConflictRegion, DetectOptions,
    LineRange, MergeCheck, PairResult, Prediction, Relation,
};
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
