//! maos-merge: git conflict prediction, merge coordination and automation.

mod coordinator;
mod detect;
mod error;
mod queue;
mod touch;

pub use coordinator::{
    AffectedFile, CONFLICT_TASK_LABEL, ConflictNotice, CoordinatorOptions, DEFAULT_LOCK_WAIT,
    MergeCoordinator, MergeOutcome, MergePreparation, MergeStrategy, NoticeFile, PreparedConflict,
    Resolution, ResolutionProgress, ResolutionTask, Side, TASK_LABEL, merge_lock_resource,
};
pub use detect::{
    Conflict, ConflictDetector, ConflictEntry, ConflictKind, ConflictRegion, DetectOptions,
    LineRange, MergeCheck, PairResult, Prediction, Relation,
};
pub use error::{Error, Result};
pub use queue::{
    EntryStatus, MergeQueue, QUEUE_FILE, QUEUE_LOCK_FILE, QUEUE_RUN_LOCK_FILE, QueueEntry, QueueRun,
    QueueState,
};
pub use touch::{AGENT_TRAILER, Actor, Attribution, branch_agents};
