//! Where the demo's coordination lives: the workspace's backend (`.maos/` files, or the
//! PostgreSQL server `maos demo --backend URL` records), chosen once by
//! `maos_coordination::backend::open`. Messages, the lock table, the registry and the merge
//! queue go through the backend's storage traits; what the traits do not cover (the task
//! graph's batch creation, idempotent completion, critical path and Gantt; locks held by a
//! guard for this process; waking on task changes) goes to the backend's own types here, one
//! match per operation. Git stays local either way.

use std::time::Duration;

use maos_coordination::backend::Backends;
use maos_coordination::lock::LockGuard;
use maos_coordination::postgres::lock::PgGuard;
use maos_coordination::postgres::track::PgTracker;
use maos_coordination::track::{
    CriticalPath, Options, ProgressReport, ProgressVisualizer, TaskTracker, TaskWatch,
};
use maos_coordination::{AgentId, Task, TaskId, TaskStatus};

/// The task graph on the workspace's backend, acting as one agent.
#[derive(Debug, Clone)]
pub(crate) enum Tasks {
    File(TaskTracker),
    Pg(PgTracker),
}

impl Tasks {
    pub(crate) fn open(b: &Backends, agent: &AgentId) -> anyhow::Result<Self> {
        Ok(match b.postgres() {
            Some(pg) => Tasks::Pg(PgTracker::new(pg).agent(agent.clone())),
            None => Tasks::File(TaskTracker::open_with(
                b.workspace(),
                Options::default().agent(agent.clone()),
            )?),
        })
    }

    /// Creates `tasks` at once (all or none).
    pub(crate) fn create_all(&self, tasks: &[Task]) -> anyhow::Result<()> {
        match self {
            Tasks::File(t) => {
                t.create_tasks_blocking(tasks)?;
            }
            Tasks::Pg(t) => {
                t.create_tasks(tasks)?;
            }
        }
        Ok(())
    }

    pub(crate) fn list(&self) -> anyhow::Result<Vec<Task>> {
        Ok(match self {
            Tasks::File(t) => t.list_blocking()?,
            Tasks::Pg(t) => t.list()?,
        })
    }

    pub(crate) fn get(&self, id: &TaskId) -> anyhow::Result<Option<Task>> {
        Ok(match self {
            Tasks::File(t) => t.get_blocking(id)?,
            Tasks::Pg(t) => t.get(id)?,
        })
    }

    pub(crate) fn claim(&self, agent: &AgentId) -> anyhow::Result<Option<Task>> {
        Ok(match self {
            Tasks::File(t) => t.claim_blocking(agent)?,
            Tasks::Pg(t) => t.claim(agent)?,
        })
    }

    /// Completes `id`, idempotently (a completed task stays as it is).
    pub(crate) fn complete(&self, id: &TaskId, note: &str) -> anyhow::Result<()> {
        match self {
            Tasks::File(t) => {
                t.complete_blocking(id, Some(note))?;
            }
            Tasks::Pg(t) => {
                t.complete(id, Some(note))?;
            }
        }
        Ok(())
    }

    pub(crate) fn update_status(
        &self,
        id: &TaskId,
        status: TaskStatus,
        note: Option<&str>,
    ) -> anyhow::Result<()> {
        match self {
            Tasks::File(t) => {
                t.update_status_blocking(id, status, note)?;
            }
            Tasks::Pg(t) => {
                t.update_status(id, status, note)?;
            }
        }
        Ok(())
    }

    pub(crate) fn critical_path(&self) -> anyhow::Result<CriticalPath> {
        Ok(match self {
            Tasks::File(t) => t.critical_path_blocking()?,
            Tasks::Pg(t) => {
                let (tasks, total) = t.critical_path()?;
                CriticalPath { tasks, total }
            }
        })
    }

    pub(crate) fn report(&self) -> anyhow::Result<ProgressReport> {
        Ok(match self {
            Tasks::File(t) => {
                ProgressVisualizer::new(t.clone()).generate_progress_report_blocking()?
            }
            Tasks::Pg(t) => t.report()?,
        })
    }

    pub(crate) fn gantt(&self) -> anyhow::Result<String> {
        Ok(match self {
            Tasks::File(t) => ProgressVisualizer::new(t.clone()).generate_gantt_chart_blocking()?,
            Tasks::Pg(t) => t.gantt()?,
        })
    }

    /// Something that wakes when the task graph changes.
    pub(crate) fn watch(&self) -> anyhow::Result<Watch> {
        Ok(match self {
            Tasks::File(t) => Watch::File(Box::new(t.watch()?)),
            Tasks::Pg(t) => Watch::Pg {
                tracker: t.clone(),
                seen: t.version()?,
            },
        })
    }
}

/// Waking on task changes: the files' change events, or the server's notifications.
pub(crate) enum Watch {
    File(Box<TaskWatch>),
    Pg { tracker: PgTracker, seen: u64 },
}

impl Watch {
    /// Returns when the task graph changed, or after `timeout`.
    pub(crate) async fn changed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match self {
            Watch::File(w) => {
                w.changed(timeout).await?;
            }
            Watch::Pg { tracker, seen } => {
                let (t, before) = (tracker.clone(), *seen);
                *seen =
                    tokio::task::spawn_blocking(move || t.wait_changed(before, timeout)).await??;
            }
        }
        Ok(())
    }
}

/// A lock held by this process: released when dropped, ended with the process (the file
/// backend's kernel lock; the PostgreSQL backend's database session).
pub(crate) enum Guard {
    File(LockGuard),
    Pg(PgGuard),
}

impl Guard {
    pub(crate) fn release(self) -> anyhow::Result<()> {
        match self {
            Guard::File(g) => g.release()?,
            Guard::Pg(g) => g.release()?,
        }
        Ok(())
    }
}

/// Runs blocking backend work from the demo's async code: the PostgreSQL client blocks on a
/// runtime of its own, which must not be entered from a task's thread (and a file lock's
/// wait should not hold up the other tasks either).
pub(crate) fn sync<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// Backends held open until the demo's runtime is gone. The PostgreSQL client closes its
/// connections when its last handle is dropped, blocking on a runtime of its own, which must
/// not happen on a thread that drives the demo's tasks: the handles dropped there are never
/// the last ones, these are, dropped by `demo::run` after the runtime.
#[derive(Debug, Default)]
pub(crate) struct Keep(std::sync::Mutex<Vec<Backends>>);

impl Keep {
    pub(crate) fn hold(&self, b: &Backends) {
        if let Ok(mut v) = self.0.lock() {
            v.push(b.clone());
        }
    }
}
