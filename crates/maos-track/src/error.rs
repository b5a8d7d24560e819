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

    /// An agent tried to act on a task assigned to another agent without forcing it.
    #[error(
        "task {task} is assigned to {assignee}, not {}: only {assignee} moves it (use --force \
         to act anyway; the log records who did)",
        .actor.as_ref().map_or("an anonymous caller", |a| a.as_str())
    )]
    NotAssignee {
        /// The task.
        task: TaskId,
        /// Its assignee.
        assignee: maos_core::AgentId,
        /// Who tried.
        actor: Option<maos_core::AgentId>,
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

    /// A file of the task store is damaged, missing, or holds what no writer could have
    /// written.
    #[error(
        "task store {path} is corrupt: {reason} (`maos doctor` explains; `maos doctor --repair` \
         quarantines what cannot be read and keeps every readable change)"
    )]
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
    /// True for a refusal of the request itself (what replay would refuse in a record):
    /// not found, invalid transition, not the assignee, duplicate, cycle, invalid argument.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::NotFound { .. }
                | Error::AmbiguousPrefix { .. }
                | Error::DuplicateId { .. }
                | Error::UnknownDependency { .. }
                | Error::Cycle { .. }
                | Error::InvalidTransition { .. }
                | Error::NotAssignee { .. }
                | Error::RevisionMismatch { .. }
                | Error::StaleToken { .. }
                | Error::Invalid { .. }
        )
    }

    /// True when the store's kernel lock could not be had in time (another process holds
    /// it; the message names it).
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, Error::Core(maos_core::Error::LockTimeout { .. }))
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
