//! The one error type of maos-merge.

use std::path::PathBuf;

/// Everything that can go wrong in `maos-merge`.
///
/// Conflicts are not errors: a check that finds conflicts returns `Ok` with them
/// ([`crate::MergeCheck::conflicts`], [`crate::MergeOutcome::Conflicts`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No git repository at or above `path`.
    #[error("no git repository at {path}")]
    NoRepository {
        /// Where the repository was looked for.
        path: PathBuf,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },

    /// A revision (branch, tag, commit id, `HEAD~2`, ...) did not name a commit.
    #[error("cannot resolve revision \"{rev}\" to a commit")]
    UnknownRevision {
        /// The revision as given.
        rev: String,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },

    /// The merge target must be a local branch (`main`, `refs/heads/main`).
    #[error("merge target \"{target}\" is not a local branch")]
    TargetNotBranch {
        /// The target as given.
        target: String,
    },

    /// The source and the target share no history; maos does not merge those.
    #[error("{source_rev} and {target} have no common history; refusing to merge them")]
    UnrelatedHistories {
        /// The source revision.
        source_rev: String,
        /// The target branch.
        target: String,
    },

    /// A git operation failed.
    #[error("git {op} failed")]
    Git {
        /// What was being done.
        op: &'static str,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },

    /// The target ref moved between the check and the update (compare-and-swap failed).
    #[error(
        "branch {branch} moved concurrently (expected {expected}, it changed): nothing was merged; retry"
    )]
    ConcurrentUpdate {
        /// The branch ref.
        branch: String,
        /// Where we expected it to point.
        expected: String,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },

    /// The target branch is checked out in a worktree that has uncommitted changes.
    #[error(
        "branch {branch} is checked out at {worktree} with uncommitted changes ({changes}); \
         commit or stash them before merging into it"
    )]
    DirtyCheckout {
        /// The branch.
        branch: String,
        /// The worktree where it is checked out.
        worktree: PathBuf,
        /// A short list of changed paths.
        changes: String,
    },

    /// The merge would conflict; resolve first (see [`crate::MergeCoordinator::coordinate_resolution`]).
    #[error("merging {source_rev} into {target} conflicts in {count} path(s): {paths}")]
    WouldConflict {
        /// The source revision.
        source_rev: String,
        /// The target branch.
        target: String,
        /// How many conflicts.
        count: usize,
        /// The first conflicted paths.
        paths: String,
    },

    /// A file of the maos workspace (queue, registry) could not be read or written.
    #[error("{context}")]
    Core {
        /// What was being done.
        context: String,
        /// The maos-core error.
        #[source]
        source: maos_core::Error,
    },

    /// Taking or releasing the merge lock failed.
    #[error("merge lock {resource}")]
    Lock {
        /// The lock's resource name.
        resource: String,
        /// The maos-lock error.
        #[source]
        source: Box<maos_lock::Error>,
    },

    /// Sending a message failed.
    #[error("message to {recipient}")]
    Comm {
        /// Who the message was for.
        recipient: String,
        /// The maos-comm error.
        #[source]
        source: Box<maos_comm::Error>,
    },

    /// Creating, reading or updating a task failed.
    #[error("task {context}")]
    Track {
        /// Which task, or what was being done.
        context: String,
        /// The maos-track error.
        #[source]
        source: Box<maos_track::Error>,
    },

    /// The merge queue has no entry with this id.
    #[error("merge queue has no entry {id}")]
    NoQueueEntry {
        /// The id.
        id: u64,
    },

    /// Another process is running the merge queue.
    #[error("the merge queue is being run by another process")]
    QueueBusy,

    /// The shared state's backend (a server) failed.
    #[error("{context} on the {backend} backend")]
    Backend {
        /// What was being done.
        context: String,
        /// The backend's name.
        backend: &'static str,
        /// Why.
        #[source]
        source: crate::backend::BackendError,
    },

    /// A blocking worker thread panicked or was cancelled.
    #[error("background task failed: {0}")]
    Join(String),
}

/// `Result<T, maos_merge::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait GitContext<T> {
    fn git(self, op: &'static str) -> Result<T>;
}

impl<T> GitContext<T> for std::result::Result<T, git2::Error> {
    fn git(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Git { op, source })
    }
}

pub(crate) trait CoreContext<T> {
    fn core(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CoreContext<T> for std::result::Result<T, maos_core::Error> {
    fn core(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Core {
            context: context(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendered chain (what the CLI prints) names each cause once.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            out.push_str(": ");
            out.push_str(&s.to_string());
            src = s.source();
        }
        out
    }

    #[test]
    fn every_error_says_its_cause_once() {
        let io = std::io::Error::from_raw_os_error(20);
        let e = Error::Git {
            op: "read tree",
            source: git2::Error::from_str("object not found (os error 20)"),
        };
        let text = chain(&e);
        assert_eq!(text.matches("os error").count(), 1, "{text}");
        // A wrapped error of another crate: this crate's message adds only its context.
        let e = Error::Core {
            context: "read /w/.maos/merge/queue.json".into(),
            source: maos_core::Error::io("open", "/w/.maos/merge/queue.json", io),
        };
        assert_eq!(e.to_string(), "read /w/.maos/merge/queue.json");
    }
}
