//! The public value types of coordination: preparations, resolutions, notices, outcomes.

use std::collections::BTreeMap;
use std::time::Duration;

use maos_core::{AgentId, ResourceName, TaskId};
use maos_track::TaskStatus;
use serde::{Deserialize, Serialize};

use crate::detect::{Conflict, ConflictKind, LineRange, MergeCheck};
use crate::error::{Error, Result};
use crate::touch::{Actor, short_branch};

/// Label carried by every task maos-merge creates.
pub const TASK_LABEL: &str = "merge";
/// Label of the per-conflict resolution tasks.
pub const CONFLICT_TASK_LABEL: &str = "merge-conflict";
/// How long a merge waits for the merge lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(120);

/// The lock resource that serialises merges into `target`: `.maos/merge/<target>`.
pub fn merge_lock_resource(target: &str) -> Result<ResourceName> {
    let name = format!(".maos/merge/{}", short_branch(target));
    ResourceName::new(&name).map_err(|source| Error::Core {
        context: format!("merge lock name {name}"),
        source,
    })
}

/// Which side of a merge a file changed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Only the source changed it since the merge base.
    Source,
    /// Only the target changed it.
    Target,
    /// Both did.
    Both,
}

/// A file the merge involves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffectedFile {
    /// The path.
    pub path: String,
    /// Who changed it since the merge base.
    pub side: Side,
    /// Whether it is part of a conflict.
    pub conflicted: bool,
    /// The source side's actors, most recent first.
    pub source_actors: Vec<Actor>,
    /// The target side's actors, most recent first.
    pub target_actors: Vec<Actor>,
}

/// A conflict with the people behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedConflict {
    /// The conflict.
    #[serde(flatten)]
    pub conflict: Conflict,
    /// Source side: who last changed the conflicting lines (content conflicts), else who
    /// changed the file since the merge base.
    pub source_actors: Vec<Actor>,
    /// Target side, likewise.
    pub target_actors: Vec<Actor>,
    /// Who should resolve it (see [`MergeStrategy::Manual`] for the rule).
    pub suggested_resolver: Option<AgentId>,
}

/// How to carry out a merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum MergeStrategy {
    /// The target already contains the source: nothing to do.
    UpToDate,
    /// The target is an ancestor of the source: move the target to the source.
    FastForward,
    /// Diverged, no conflicts: a merge commit, automatically.
    CleanMerge,
    /// Conflicts: a human or agent resolves each one first. The suggested resolver of a
    /// conflict is (1) the agent who last changed the conflicting lines on the source side
    /// (blame; for conflicts without line ranges, the most recent agent who changed the file
    /// on the source side), else (2) the same on the target side, else (3) the agent the
    /// registry maps the source branch to, then the target branch's, else nobody (the task is
    /// left for anyone to claim). The source goes first because its agent is the one
    /// integrating: it merges the target into its branch, resolves, and the merge then runs
    /// clean, while the shared target stays untouched.
    Manual {
        /// Per conflicted path, the suggested resolver.
        resolvers: BTreeMap<String, Option<AgentId>>,
    },
}

impl MergeStrategy {
    /// A short name: `up_to_date`, `fast_forward`, `clean_merge`, `manual`.
    pub fn name(&self) -> &'static str {
        match self {
            MergeStrategy::UpToDate => "up_to_date",
            MergeStrategy::FastForward => "fast_forward",
            MergeStrategy::CleanMerge => "clean_merge",
            MergeStrategy::Manual { .. } => "manual",
        }
    }
}

/// Everything known about a merge before doing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergePreparation {
    /// The source revision.
    pub source: String,
    /// The target branch.
    pub target: String,
    /// The source commit (hex).
    pub source_commit: String,
    /// The target commit (hex).
    pub target_commit: String,
    /// The merge base (hex).
    pub merge_base: Option<String>,
    /// The conflicts, with who is behind each side.
    pub conflicts: Vec<PreparedConflict>,
    /// Every file changed on either side since the merge base.
    pub affected_files: Vec<AffectedFile>,
    /// Per agent (or author, when no agent is known), the affected files they changed.
    pub agent_modifications: BTreeMap<String, Vec<String>>,
    /// What to do.
    pub suggested_strategy: MergeStrategy,
}

impl MergePreparation {
    /// True when the merge needs no resolution.
    pub fn is_clean(&self) -> bool {
        self.conflicts.is_empty()
    }
}

/// One resolution task of a [`Resolution`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionTask {
    /// The task.
    pub task: TaskId,
    /// The conflicted path.
    pub path: String,
    /// Its kind.
    pub kind: ConflictKind,
    /// Who it is assigned to.
    pub assigned_to: Option<AgentId>,
}

/// The tasks and messages created for a conflicted merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The source revision.
    pub source: String,
    /// The target branch.
    pub target: String,
    /// One task per conflict.
    pub conflict_tasks: Vec<ResolutionTask>,
    /// The merge itself, depending on every conflict task.
    pub merge_task: TaskId,
    /// The agents that were sent a message.
    pub notified: Vec<AgentId>,
}

/// How far a [`Resolution`] has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionProgress {
    /// Conflict tasks completed.
    pub resolved: usize,
    /// Conflict tasks in all.
    pub total: usize,
    /// Conflict tasks that failed.
    pub failed: usize,
    /// The merge task's status.
    pub merge_task: TaskStatus,
}

impl ResolutionProgress {
    /// Every conflict task is completed.
    pub fn is_resolved(&self) -> bool {
        self.resolved == self.total
    }
}

/// One file of a [`ConflictNotice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeFile {
    /// The conflicted path.
    pub path: String,
    /// The conflict kind.
    pub kind: ConflictKind,
    /// The conflicting line ranges in the recipient's side's version (source side if the
    /// recipient changed it there, else target side).
    pub lines: Vec<LineRange>,
    /// The resolution task.
    pub task: TaskId,
    /// Whether the recipient is the suggested resolver.
    pub you_resolve: bool,
}

/// The payload of the direct message an affected agent receives
/// (`"type": "merge_conflicts"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictNotice {
    /// Always `merge_conflicts`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The source revision.
    pub source: String,
    /// The target branch.
    pub target: String,
    /// The recipient's conflicted files.
    pub files: Vec<NoticeFile>,
    /// The merge task.
    pub merge_task: TaskId,
}

/// What an automated merge did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MergeOutcome {
    /// Nothing to merge.
    UpToDate {
        /// The target commit.
        commit: String,
    },
    /// The target moved forward to the source.
    FastForward {
        /// The old target commit.
        from: String,
        /// The new one (the source).
        to: String,
    },
    /// A merge commit was created and the target moved to it.
    Merged {
        /// The old target commit.
        from: String,
        /// The merge commit.
        commit: String,
    },
    /// The merge conflicts; nothing changed.
    Conflicts(MergeCheck),
}

/// A step of a merge, reported to [`CoordinatorOptions::on_step`] as it completes (for
/// tests that kill a merge at a chosen point, and for progress displays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MergeStep {
    /// The intent record of a merge into a checked-out branch is durable.
    IntentWritten,
    /// The target ref moved (compare-and-swap done).
    RefMoved,
    /// One file of a checked-out worktree was replaced.
    FileUpdated,
    /// Every checked-out worktree is up to date and the intent is gone.
    WorktreesUpdated,
    /// The merge queue merged an entry but has not recorded it yet.
    QueueEntryMerged,
}

/// A callback told each [`MergeStep`].
#[derive(Clone)]
pub struct StepHook(pub std::sync::Arc<dyn Fn(MergeStep) + Send + Sync>);

impl std::fmt::Debug for StepHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepHook")
    }
}

/// Options of a [`MergeCoordinator`](crate::MergeCoordinator).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoordinatorOptions {
    /// How long to wait for the merge lock.
    pub lock_wait: Duration,
    /// Compute blame for content conflicts (default true).
    pub blame: bool,
    /// Told each step of a merge as it completes (default none).
    pub on_step: Option<StepHook>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            lock_wait: DEFAULT_LOCK_WAIT,
            blame: true,
            on_step: None,
        }
    }
}
