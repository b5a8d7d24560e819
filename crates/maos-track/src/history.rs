//! The history of a task: who did what, when. Every log record that touches a task adds one
//! or more [`Event`]s to it (the records themselves are kept only until a compaction; the
//! events are kept forever, in the snapshot).

use maos_core::{AgentId, TaskId};
use serde::{Deserialize, Serialize};

use crate::{Edit, Task, TaskStatus};

/// One thing that happened to a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The sequence number of the log record that caused it.
    pub seq: u64,
    /// When (ms since the Unix epoch, the writer's clock).
    pub at: u64,
    /// The agent that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<AgentId>,
    /// The agent acted with `--force` on a task assigned to someone else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// What happened.
    #[serde(flatten)]
    pub what: EventKind,
}

/// What happened to a task (JSON: the `event` field names the kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// It was created.
    Created,
    /// Its status changed on request (start, review, done, fail, reset, cancel).
    Status {
        /// Before.
        from: TaskStatus,
        /// After.
        to: TaskStatus,
        /// The note given with the change.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// An agent claimed it (pending -> in progress).
    Claimed {
        /// The agent.
        agent: AgentId,
    },
    /// Its claim was released (its agent died): back to pending, unassigned.
    Released {
        /// Why.
        reason: String,
    },
    /// Its assignee was set or cleared.
    Assigned {
        /// The new assignee (`null`: unassigned).
        #[serde(default)]
        agent: Option<AgentId>,
        /// An active task that lost its assignee went back to this status (pending or
        /// blocked).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requeued: Option<TaskStatus>,
    },
    /// Descriptive fields were edited (the new values).
    Edited {
        /// The changes.
        set: Edit,
    },
    /// A comment.
    Comment {
        /// The text.
        text: String,
    },
    /// A dependency was added.
    DependencyAdded {
        /// The dependency.
        task: TaskId,
    },
    /// A dependency was removed.
    DependencyRemoved {
        /// The former dependency.
        task: TaskId,
    },
    /// Its last unfinished dependency completed (or was removed): blocked -> pending.
    Unblocked {
        /// The dependency.
        dependency: TaskId,
    },
    /// A dependency failed or was cancelled: it stays blocked with a reason.
    DependencyGaveUp {
        /// The dependency.
        dependency: TaskId,
        /// The reason recorded on this task.
        reason: String,
    },
    /// A dependency that had failed or was cancelled was reopened: the reason is cleared.
    DependencyReopened {
        /// The dependency.
        dependency: TaskId,
    },
}

/// A task with its full history ([`TaskTracker::show`](crate::TaskTracker::show)); the JSON
/// form is the task object plus a `history` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDetails {
    /// The task.
    #[serde(flatten)]
    pub task: Task,
    /// Everything that happened to it, oldest first (on PostgreSQL the latest
    /// [`MAX_HISTORY`](crate::MAX_HISTORY) events: see `omitted`).
    pub history: Vec<Event>,
    /// How many earlier events `history` leaves out (0, and absent from the JSON, when it
    /// is complete).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
