//! The storage seam of the task commands: what `maos task ...` needs, implemented here on
//! the files ([`FileTasks`]) and by `maos-postgres` on a server. The backend is chosen once,
//! by whoever opens the workspace (`maos_coordination::backend::open`); a command is written
//! once, over [`TaskStore`].

use maos_core::{AgentId, TaskId};

use crate::{
    Error, Page, ProgressReport, ProgressVisualizer, Query, ReadyPage, StatusCounts, Task,
    TaskDetails, TaskTracker, Update,
};

/// The task graph of one workspace, on whichever backend it lives, acting for one agent
/// (the one whose ownership updates are checked against).
pub trait TaskStore: Send + Sync + std::fmt::Debug {
    /// Creates `task`; returns it as stored.
    fn create(&self, task: &Task) -> Result<Task, Error>;
    /// The id a full id or a unique id prefix names.
    fn resolve(&self, id_or_prefix: &str) -> Result<TaskId, Error>;
    /// One task.
    fn get(&self, id: &TaskId) -> Result<Option<Task>, Error>;
    /// One task with its history (as far as the backend keeps one).
    fn show(&self, id: &TaskId) -> Result<Option<TaskDetails>, Error>;
    /// Every task, in creation order.
    fn list(&self) -> Result<Vec<Task>, Error>;
    /// The tasks matching `query`, in creation order.
    fn list_page(&self, query: &Query) -> Result<Page, Error> {
        Ok(page_of(self.list()?, query))
    }
    /// How many tasks are in each status.
    fn counts(&self) -> Result<StatusCounts, Error> {
        Ok(StatusCounts::of(&self.list()?))
    }
    /// The first `limit` ready tasks, in claim order.
    fn ready_page(&self, limit: usize) -> Result<ReadyPage, Error>;
    /// Claims the next ready task for `agent` and starts it (atomic among every claimer).
    fn claim(&self, agent: &AgentId) -> Result<Option<Task>, Error>;
    /// A status change.
    fn update(&self, id: &TaskId, update: &Update) -> Result<Task, Error>;
    /// Releases `agent`'s claims (unregistering it).
    fn release_agent(&self, agent: &AgentId, reason: &str) -> Result<Vec<TaskId>, Error>;
    /// The progress report.
    fn report(&self) -> Result<ProgressReport, Error> {
        Ok(crate::report(&self.list()?, maos_core::now_ms()))
    }
}

/// The page of `tasks` (in creation order) that `q` asks for.
pub fn page_of(tasks: Vec<Task>, q: &Query) -> Page {
    let total = tasks.len() as u64;
    let limit = q.limit.unwrap_or(usize::MAX);
    let mut hits = tasks.into_iter().filter(|t| {
        q.status.is_none_or(|s| t.status == s)
            && q.assignee
                .as_ref()
                .is_none_or(|a| t.assigned_to.as_ref() == Some(a))
            && (!q.unassigned || t.assigned_to.is_none())
            && q.label.as_ref().is_none_or(|l| t.labels.contains(l))
    });
    let tasks: Vec<Task> = hits.by_ref().skip(q.offset).take(limit).collect();
    let more = hits.next().is_some();
    Page { tasks, more, total }
}

/// The file backend: the task store under `.maos/tasks/`.
#[derive(Debug, Clone)]
pub struct FileTasks {
    tracker: TaskTracker,
}

impl FileTasks {
    /// The task store `tracker` opened (with its agent and lock timeout).
    pub fn new(tracker: TaskTracker) -> Self {
        Self { tracker }
    }
}

impl TaskStore for FileTasks {
    fn create(&self, task: &Task) -> Result<Task, Error> {
        let id = self.tracker.create_task_blocking(task)?;
        self.tracker
            .get_blocking(&id)?
            .ok_or_else(|| Error::NotFound {
                task: id.to_string(),
            })
    }

    fn resolve(&self, id_or_prefix: &str) -> Result<TaskId, Error> {
        self.tracker.resolve_blocking(id_or_prefix)
    }

    fn get(&self, id: &TaskId) -> Result<Option<Task>, Error> {
        self.tracker.get_blocking(id)
    }

    fn show(&self, id: &TaskId) -> Result<Option<TaskDetails>, Error> {
        self.tracker.show_blocking(id)
    }

    fn list(&self) -> Result<Vec<Task>, Error> {
        self.tracker.list_blocking()
    }

    fn list_page(&self, query: &Query) -> Result<Page, Error> {
        self.tracker.list_page_blocking(query)
    }

    fn counts(&self) -> Result<StatusCounts, Error> {
        self.tracker.counts_blocking()
    }

    fn ready_page(&self, limit: usize) -> Result<ReadyPage, Error> {
        self.tracker.ready_page_blocking(limit)
    }

    fn claim(&self, agent: &AgentId) -> Result<Option<Task>, Error> {
        self.tracker.claim_blocking(agent)
    }

    fn update(&self, id: &TaskId, update: &Update) -> Result<Task, Error> {
        self.tracker.update_blocking(id, update)
    }

    fn release_agent(&self, agent: &AgentId, reason: &str) -> Result<Vec<TaskId>, Error> {
        self.tracker.release_agent_blocking(agent, reason)
    }

    fn report(&self) -> Result<ProgressReport, Error> {
        ProgressVisualizer::new(self.tracker.clone()).generate_progress_report_blocking()
    }
}
