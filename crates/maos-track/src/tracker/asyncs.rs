//! The async twins: each runs its `_blocking` method on tokio's blocking pool.

use maos_core::{AgentId, TaskId};

use super::{Amendment, CriticalPath, Ownership, Page, Query, ReadyPage, TaskTracker, Update};
use crate::history::TaskDetails;
use crate::{Edit, Error, Task, TaskStatus, asyncify};

impl TaskTracker {
    /// Creates a task; see [`create_task_blocking`](Self::create_task_blocking).
    pub async fn create_task(&self, task: Task) -> Result<TaskId, Error> {
        let this = self.clone();
        asyncify(move || this.create_task_blocking(&task)).await
    }

    /// Creates several tasks atomically; see
    /// [`create_tasks_blocking`](Self::create_tasks_blocking).
    pub async fn create_tasks(&self, tasks: Vec<Task>) -> Result<Vec<TaskId>, Error> {
        let this = self.clone();
        asyncify(move || this.create_tasks_blocking(&tasks)).await
    }

    /// The task `id`, if it exists.
    pub async fn get(&self, id: &TaskId) -> Result<Option<Task>, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.get_blocking(&id)).await
    }

    /// The task `id` with its history; see [`show_blocking`](Self::show_blocking).
    pub async fn show(&self, id: &TaskId) -> Result<Option<TaskDetails>, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.show_blocking(&id)).await
    }

    /// Every task, in creation order.
    pub async fn list(&self) -> Result<Vec<Task>, Error> {
        let this = self.clone();
        asyncify(move || this.list_blocking()).await
    }

    /// A page of tasks; see [`list_page_blocking`](Self::list_page_blocking).
    pub async fn list_page(&self, query: Query) -> Result<Page, Error> {
        let this = self.clone();
        asyncify(move || this.list_page_blocking(&query)).await
    }

    /// Changes the status of `id`; see [`update_status_blocking`](Self::update_status_blocking).
    pub async fn update_status(
        &self,
        id: &TaskId,
        status: TaskStatus,
        note: Option<String>,
    ) -> Result<Task, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.update_status_blocking(&id, status, note.as_deref())).await
    }

    /// Applies `update`; see [`update_blocking`](Self::update_blocking).
    pub async fn update(&self, id: &TaskId, update: &Update) -> Result<Task, Error> {
        let (this, id, update) = (self.clone(), id.clone(), update.clone());
        asyncify(move || this.update_blocking(&id, &update)).await
    }

    /// Completes `id` idempotently; see [`complete_blocking`](Self::complete_blocking).
    pub async fn complete(&self, id: &TaskId, note: Option<String>) -> Result<Task, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.complete_blocking(&id, note.as_deref())).await
    }

    /// Cancels `id`; see [`cancel_blocking`](Self::cancel_blocking).
    pub async fn cancel(
        &self,
        id: &TaskId,
        note: Option<String>,
        ownership: Ownership,
    ) -> Result<Task, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.cancel_blocking(&id, note.as_deref(), ownership)).await
    }

    /// Sets or clears the assignee; see [`assign_blocking`](Self::assign_blocking).
    pub async fn assign(
        &self,
        id: &TaskId,
        agent: Option<AgentId>,
        ownership: Ownership,
    ) -> Result<Task, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.assign_blocking(&id, agent.as_ref(), ownership)).await
    }

    /// Several changes in one write; see [`amend_blocking`](Self::amend_blocking).
    pub async fn amend(&self, id: &TaskId, amendment: Amendment) -> Result<Task, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.amend_blocking(&id, &amendment)).await
    }

    /// Edits descriptive fields; see [`edit_blocking`](Self::edit_blocking).
    pub async fn edit(&self, id: &TaskId, edit: Edit) -> Result<Task, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.edit_blocking(&id, &edit)).await
    }

    /// Comments; see [`comment_blocking`](Self::comment_blocking).
    pub async fn comment(&self, id: &TaskId, text: String) -> Result<(), Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.comment_blocking(&id, &text)).await
    }

    /// Claims the next ready task; see [`claim_blocking`](Self::claim_blocking).
    pub async fn claim(&self, agent: &AgentId) -> Result<Option<Task>, Error> {
        let (this, agent) = (self.clone(), agent.clone());
        asyncify(move || this.claim_blocking(&agent)).await
    }

    /// Ready tasks in claim order; see [`ready_blocking`](Self::ready_blocking).
    pub async fn ready(&self) -> Result<Vec<Task>, Error> {
        let this = self.clone();
        asyncify(move || this.ready_blocking()).await
    }

    /// The first ready tasks; see [`ready_page_blocking`](Self::ready_page_blocking).
    pub async fn ready_page(&self, limit: usize) -> Result<ReadyPage, Error> {
        let this = self.clone();
        asyncify(move || this.ready_page_blocking(limit)).await
    }

    /// Adds a dependency; see [`add_dependency_blocking`](Self::add_dependency_blocking).
    pub async fn add_dependency(&self, task: &TaskId, dependency: &TaskId) -> Result<Task, Error> {
        let (this, task, dependency) = (self.clone(), task.clone(), dependency.clone());
        asyncify(move || this.add_dependency_blocking(&task, &dependency)).await
    }

    /// Removes a dependency; see
    /// [`remove_dependency_blocking`](Self::remove_dependency_blocking).
    pub async fn remove_dependency(
        &self,
        task: &TaskId,
        dependency: &TaskId,
    ) -> Result<Task, Error> {
        let (this, task, dependency) = (self.clone(), task.clone(), dependency.clone());
        asyncify(move || this.remove_dependency_blocking(&task, &dependency)).await
    }

    /// Releases dead agents' claims; see
    /// [`release_dead_claims_blocking`](Self::release_dead_claims_blocking).
    pub async fn release_dead_claims(&self) -> Result<Vec<TaskId>, Error> {
        let this = self.clone();
        asyncify(move || this.release_dead_claims_blocking()).await
    }

    /// The version (log sequence number of the latest record): changes whenever tasks change.
    pub async fn version(&self) -> Result<u64, Error> {
        let this = self.clone();
        asyncify(move || this.version_blocking()).await
    }

    /// The critical path; see [`critical_path_blocking`](Self::critical_path_blocking).
    pub async fn critical_path(&self) -> Result<CriticalPath, Error> {
        let this = self.clone();
        asyncify(move || this.critical_path_blocking()).await
    }
}
