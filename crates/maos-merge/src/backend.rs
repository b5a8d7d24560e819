//! The storage seam of the merge coordinator and queue: where the merge lock, the resolution
//! tasks, the conflict notices, the agent registry (branch to agent) and the queue live.
//! Without one ([`MergeCoordinator::new`](crate::MergeCoordinator::new)) they are the files
//! of the workspace (`FileLock`, `TaskTracker`, `FileChannel`, `AgentRegistry`,
//! `.maos/merge/queue.json`); `maos-postgres` implements [`MergeBackend`] on a server, and
//! [`MergeCoordinator::with_backend`](crate::MergeCoordinator::with_backend) uses it.
//!
//! Git is never behind this seam: each clone merges in its own repository. The intent files
//! of an interrupted merge (`.maos/merge/intent-*`) stay local too, since they describe that
//! clone's worktrees.

use maos_core::{AgentId, AgentRecord, Message, ResourceName, TaskId};
use maos_track::Task;

use crate::QueueEntry;

/// An error of a backend, with its own causes.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Something held until dropped (the merge lock, the queue's runner).
pub trait Hold: Send {}

impl<T: Send> Hold for T {}

/// Where the merge coordinator and queue keep their shared state, other than git.
pub trait MergeBackend: Send + Sync + std::fmt::Debug {
    /// The backend's name, for messages.
    fn name(&self) -> &'static str;

    /// Takes the exclusive merge lock `resource` for `agent`, waiting up to `wait`; the lock
    /// is held until the returned value is dropped (and ends with the process).
    fn lock(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        wait: std::time::Duration,
        purpose: &str,
    ) -> Result<Box<dyn Hold>, BackendError>;

    /// Every task, in creation order.
    fn tasks(&self) -> Result<Vec<Task>, BackendError>;
    /// One task.
    fn task(&self, id: &TaskId) -> Result<Option<Task>, BackendError>;
    /// Creates `tasks` at once (all or none).
    fn create_tasks(&self, tasks: &[Task]) -> Result<(), BackendError>;
    /// Completes `id`, idempotently (a completed task is left as it is; a pending one is
    /// started and completed).
    fn complete_task(&self, id: &TaskId, note: &str) -> Result<(), BackendError>;
    /// Marks `id` failed.
    fn fail_task(&self, id: &TaskId, note: &str) -> Result<(), BackendError>;

    /// Sends `msg` to `agent`'s inbox (`direct/<agent>`).
    fn notify(&self, agent: &AgentId, msg: &Message<serde_json::Value>)
    -> Result<(), BackendError>;

    /// Every registered agent.
    fn agents(&self) -> Result<Vec<AgentRecord>, BackendError>;

    /// Appends a merge of `source` into `target` for `agent`; an active entry of the same
    /// pair is returned instead of a duplicate.
    fn queue_add(
        &self,
        source: &str,
        target: &str,
        agent: &AgentId,
    ) -> Result<QueueEntry, BackendError>;
    /// Every queue entry, in queue order.
    fn queue_list(&self) -> Result<Vec<QueueEntry>, BackendError>;
    /// Replaces an entry (an entry removed meanwhile stays removed).
    fn queue_update(&self, entry: &QueueEntry) -> Result<(), BackendError>;
    /// Removes entry `id`; `None` when there is none.
    fn queue_remove(&self, id: u64) -> Result<Option<QueueEntry>, BackendError>;
    /// Becomes the queue's only runner until the returned value is dropped, or `None` when
    /// another process runs it.
    fn queue_try_run(&self) -> Result<Option<Box<dyn Hold>>, BackendError>;
}
