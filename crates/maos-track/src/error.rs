//! The one error type of maos-track.

use std::path::PathBuf;

use maos_core::TaskId;

use crate::TaskStatus;

/// Everything that can go wrong in maos-track. Every variant names the task, file or agent it
/// is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system or validation error from maos-core.
    #[error(transparent)]
    Core(#[from] maos_core::Error),

    /// An operating-system call on `path` failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// No task has this id.
    #[error("task {task} not found")]
    NotFound {
        /// The id asked for.
        task: String,
    },

    /// An id prefix given on the command line matches more than one task.
    #[error("task id prefix \"{prefix}\" is ambiguous: it matches {}", .matches.join(", "))]
    AmbiguousPrefix {
        /// The prefix.
        prefix: String,
        /// Some of the ids it matches.
        matches: Vec<String>,
    },

    /// A task with this id exists already.
    #[error("task {task} already exists")]
    DuplicateId {
        /// The id.
        task: TaskId,
    },

    /// A task names a dependency that does not exist.
    #[error("task {task} depends on {dependency}, which does not exist")]
    UnknownDependency {
        /// The task being created.
        task: TaskId,
        /// The missing dependency.
        dependency: TaskId,
    },

    /// The dependencies would form a cycle; `cycle` lists it, first id repeated at the end.
    #[error("dependency cycle: {}", .cycle.iter().map(TaskId::as_str).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// The cycle, `a -> b -> ... -> a` (each task depends on the next).
        cycle: Vec<TaskId>,
    },

    /// A status change that the state machine does not allow.
    #[error("task {task}: cannot go from {from} to {to}: {reason}")]
    InvalidTransition {
        /// The task.
        task: TaskId,
        /// Its current status.
        from: TaskStatus,
        /// The status asked for.
        to: TaskStatus,
        /// Why not.
        reason: String,
    },

    /// A compare-and-swap update found the task changed since it was read.
    #[error("task {task} is at revision {actual}, not {expected}: it changed meanwhile")]
    RevisionMismatch {
        /// The task.
        task: TaskId,
        /// The revision the caller read.
        expected: u64,
        /// The revision found.
        actual: u64,
    },

    /// An update carried a fencing token that is no longer current.
    #[error("task {task}: fencing token refused")]
    StaleToken {
        /// The task.
        task: TaskId,
        /// Why maos-lock refused the token.
        #[source]
        source: Box<maos_lock::Error>,
    },

    /// An argument is not acceptable (empty name, ...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was rejected.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// A file of the task store is damaged.
    #[error("task store {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The blocking task behind an async call panicked or was cancelled.
    #[error("background task failed")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
