//! Log records: one JSON object per line of `log.<G>.jsonl` (`docs/protocol.md`, section 8).

use maos_core::{AgentId, TaskId};
use serde::{Deserialize, Serialize};

use crate::{Edit, Task, TaskStatus};

/// Longest record line a writer produces and a reader accepts (the field limits of
/// [`Task`] keep every record well below it).
pub(crate) const MAX_RECORD_BYTES: usize = 4 << 20;

/// One log record: `{"seq":..,"at":..,"by":..,"force":..,"more":..,"op":"..",...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) by: Option<AgentId>,
    /// The agent acted on a task assigned to someone else, on purpose (`--force`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) force: bool,
    /// More records of the same append follow (`"more":true` on every record of a
    /// multi-record append but the last). A reader applies an append only once its last
    /// record is there: a writer killed mid-append leaves complete lines of a torn batch,
    /// which are never applied and which the next writer truncates with the torn line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) more: bool,
    #[serde(flatten)]
    pub(crate) op: Op,
}

/// What a record does. Every op but `rotate` names one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// A new task (its dependencies exist already).
    Create { task: Box<Task> },
    /// A status change requested by a caller.
    Status {
        task: TaskId,
        to: TaskStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// `agent` claimed the pending task: it is in progress and assigned to `agent`.
    Claim { task: TaskId, agent: AgentId },
    /// An active task goes back to the queue (its agent died): pending, unassigned.
    Release { task: TaskId, reason: String },
    /// Sets or clears the assignee; an active task that loses its assignee is requeued.
    Assign {
        task: TaskId,
        #[serde(default)]
        agent: Option<AgentId>,
    },
    /// Changes descriptive fields.
    Edit { task: TaskId, set: Edit },
    /// A comment (history only).
    Comment { task: TaskId, text: String },
    /// `task` now also depends on `dependency`.
    AddDependency { task: TaskId, dependency: TaskId },
    /// `task` no longer depends on `dependency`.
    RemoveDependency { task: TaskId, dependency: TaskId },
    /// The log continues in `log.<generation>.jsonl`, on top of `snapshot.<generation>`.
    Rotate { generation: u64 },
}

impl Op {
    /// The record kind (`op` field).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Status { .. } => "status",
            Op::Claim { .. } => "claim",
            Op::Release { .. } => "release",
            Op::Assign { .. } => "assign",
            Op::Edit { .. } => "edit",
            Op::Comment { .. } => "comment",
            Op::AddDependency { .. } => "add_dependency",
            Op::RemoveDependency { .. } => "remove_dependency",
            Op::Rotate { .. } => "rotate",
        }
    }
}

/// Who writes a batch of records, and whether they override ownership.
#[derive(Debug, Clone, Default)]
pub(crate) struct Author {
    pub(crate) by: Option<AgentId>,
    pub(crate) force: bool,
}
