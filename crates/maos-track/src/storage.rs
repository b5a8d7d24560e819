//! The storage seam of the task commands: what `maos task ...` needs, implemented here on
//! the files ([`FileTasks`]) and by `maos-postgres` on a server. The backend is chosen once,
//! by whoever opens the workspace (`maos_coordination::backend::open`); a command is written
//! once, over [`TaskStore`].

use std::time::{Duration, Instant};

use maos_core::{AgentId, TaskId};

use crate::{
    Amendment, Error, Ownership, Page, ProgressReport, ProgressVisualizer, Query, ReadyPage,
    StatusCounts, Task, TaskDetails, TaskTracker, Update,
};

/// The most events [`TaskStore::show`] returns for one task on a backend that pages its
/// history (PostgreSQL: the latest ones; [`TaskDetails::omitted`] counts the rest). The file
/// store keeps a task's history in its snapshot and returns all of it.
pub const MAX_HISTORY: usize = 1000;

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
    /// Applies `amendment` to `id` in one write, all or none (`maos task edit`): descriptive
    /// fields, then the assignee (subject to its ownership), then dependencies removed and
    /// added (cycles, unknown ids and started tasks refused).
    fn amend(&self, id: &TaskId, amendment: &Amendment) -> Result<Task, Error>;
    /// Adds a comment to the history of `id` (anyone may; the task does not change).
    fn comment(&self, id: &TaskId, text: &str) -> Result<(), Error>;
    /// Sets (`Some`) or clears (`None`) the assignee of `id`; an active task that loses its
    /// assignee goes back to the queue. Refused for a task assigned to another agent unless
    /// `ownership` overrides it.
    fn assign(
        &self,
        id: &TaskId,
        agent: Option<&AgentId>,
        ownership: Ownership,
    ) -> Result<Task, Error>;
    /// The version of the graph: it changes whenever a task changes.
    fn version(&self) -> Result<u64, Error>;
    /// Waits up to `timeout` for the version to move past `seen` (woken by the backend's
    /// change events, which are hints: it also looks again on a fallback timer); returns the
    /// version then (`seen` when the time ran out).
    fn wait_changed(&self, seen: u64, timeout: Duration) -> Result<u64, Error>;
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

    fn amend(&self, id: &TaskId, amendment: &Amendment) -> Result<Task, Error> {
        self.tracker.amend_blocking(id, amendment)
    }

    fn comment(&self, id: &TaskId, text: &str) -> Result<(), Error> {
        self.tracker.comment_blocking(id, text)
    }

    fn assign(
        &self,
        id: &TaskId,
        agent: Option<&AgentId>,
        ownership: Ownership,
    ) -> Result<Task, Error> {
        self.tracker.assign_blocking(id, agent, ownership)
    }

    fn version(&self) -> Result<u64, Error> {
        self.tracker.version_blocking()
    }

    fn wait_changed(&self, seen: u64, timeout: Duration) -> Result<u64, Error> {
        wait_on_files(&self.tracker, seen, timeout)
    }
}

/// [`TaskStore::wait_changed`] on the files: a directory watch on `.maos/tasks/` (every event
/// a hint, the version re-read) plus the [`FALLBACK_INTERVAL`](crate::FALLBACK_INTERVAL)
/// timer, without a runtime.
fn wait_on_files(tracker: &TaskTracker, seen: u64, timeout: Duration) -> Result<u64, Error> {
    use notify::Watcher as _;
    let deadline = Instant::now() + timeout;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // Watch first, then read: a write between the two is seen by the read.
    let watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .and_then(|mut w| {
        w.watch(tracker.dir(), notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "no file events for the task store: polling every {:?}",
                crate::FALLBACK_INTERVAL
            );
            None
        }
    };
    loop {
        let v = tracker.version_blocking()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if v != seen || left.is_zero() {
            return Ok(v);
        }
        match rx.recv_timeout(left.min(crate::FALLBACK_INTERVAL)) {
            // Drain the burst of events one write causes.
            Ok(()) => while rx.try_recv().is_ok() {},
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // No watcher (it failed): the fallback timer alone.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(left.min(crate::FALLBACK_INTERVAL));
            }
        }
    }
}
