//! Publishing what changed on the `tasks` topic, and [`TaskWatch`].

use std::collections::HashMap;
use std::sync::Mutex;

use maos_core::{AgentId, TaskId, Workspace};
use serde::{Deserialize, Serialize};

use crate::TaskStatus;

/// The broadcast topic status changes are published on.
pub const TOPIC: &str = "tasks";

/// A status change that happened (published on the `tasks` topic): ids and statuses only,
/// so a notification stays small; read the task for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The task.
    pub task: TaskId,
    /// The status before (`None`, and omitted, for a new task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<TaskStatus>,
    /// The status after (`blocked` -> `blocked` with a `reason`: a dependency failed or was
    /// cancelled).
    pub to: TaskStatus,
    /// Why a dependent stays blocked (a dependency gave up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What one record did to one task: a status change, or another change (edit, comment,
/// assignee, dependency, history) that leaves the status as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    Status(Change),
    Touched(TaskId),
}

impl Effect {
    pub(crate) fn status(task: TaskId, from: Option<TaskStatus>, to: TaskStatus) -> Self {
        Effect::Status(Change {
            task,
            from,
            to,
            reason: None,
        })
    }

    pub(crate) fn blocked(task: TaskId, reason: String) -> Self {
        Effect::Status(Change {
            task,
            from: Some(TaskStatus::Blocked),
            to: TaskStatus::Blocked,
            reason: Some(reason),
        })
    }

    pub(crate) fn touched(task: TaskId) -> Self {
        Effect::Touched(task)
    }
}

/// What is published on the [`TOPIC`] topic after each write: the status changes it caused
/// (the requested one, then the dependents unblocked or told), and the other tasks it
/// changed. The message's sender is the agent that made the write.
///
/// Writers publish after their write is durable and outside the tracker lock, so two
/// writers' events may reach the topic out of log order: order them by `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// The log sequence number of the write's last record.
    pub seq: u64,
    /// Status changes, in the order they happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// Tasks changed without a status change (edited, commented, reassigned, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touched: Vec<TaskId>,
}

impl TaskEvent {
    pub(crate) fn new(seq: u64, effects: Vec<Effect>) -> Self {
        let mut changes = Vec::new();
        let mut touched: Vec<TaskId> = Vec::new();
        for e in effects {
            match e {
                Effect::Status(c) => changes.push(c),
                Effect::Touched(t) => {
                    if !touched.contains(&t) {
                        touched.push(t);
                    }
                }
            }
        }
        touched.retain(|t| !changes.iter().any(|c| c.task == *t));
        Self {
            seq,
            changes,
            touched,
        }
    }

    /// True when the write changed nothing worth telling.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.touched.is_empty()
    }
}

/// Publishers, one per sending agent.
#[derive(Debug, Default)]
pub(crate) struct Publishers {
    by_agent: Mutex<HashMap<AgentId, maos_comm::BroadcastChannel>>,
}

impl Publishers {
    /// Publishes `event` as `sender` (best effort: the task log is the truth; a lost
    /// notification only delays a watcher until its fallback timer).
    pub(crate) fn publish(&self, ws: &Workspace, sender: AgentId, event: &TaskEvent) {
        if event.is_empty() {
            return;
        }
        let channel = {
            let mut map = self
                .by_agent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(sender.clone())
                .or_insert_with(|| maos_comm::BroadcastChannel::new(ws, sender).system())
                .clone()
        };
        if let Err(e) = channel.broadcast_blocking(TOPIC, event) {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                seq = event.seq,
                "could not publish task changes on the tasks topic"
            );
        }
    }
}

/// How long a watcher waits without any file event before it re-reads anyway (events can be
/// lost: queue overflow, network filesystems).
pub const FALLBACK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Wakes when the tasks change: a directory watch on `.maos/tasks/` (every event is a hint;
/// the log is re-read from the cursor) plus a fallback timer.
///
/// Made by [`TaskTracker::watch`](crate::TaskTracker::watch).
pub struct TaskWatch {
    tracker: crate::TaskTracker,
    seen: u64,
    rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for TaskWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskWatch")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl TaskWatch {
    pub(crate) fn new(tracker: crate::TaskTracker) -> Result<Self, crate::Error> {
        use notify::Watcher as _;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
            let _ = tx.send(());
        })
        .and_then(|mut w| {
            w.watch(tracker.dir(), notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "no file events for the task store: polling every {FALLBACK_INTERVAL:?}"
                );
                None
            }
        };
        let seen = tracker.version_blocking()?;
        Ok(Self {
            tracker,
            seen,
            rx,
            _watcher: watcher,
        })
    }

    /// The version (log sequence number) last reported.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Waits until the tasks change (or `timeout` passes) and returns the new version;
    /// returns the unchanged version on timeout.
    pub async fn changed(&mut self, timeout: std::time::Duration) -> Result<u64, crate::Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.tracker.version().await?;
            if v != self.seen {
                self.seen = v;
                return Ok(v);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(v);
            }
            let wait = (deadline - now).min(FALLBACK_INTERVAL);
            tokio::select! {
                _ = self.rx.recv() => {
                    // Drain the burst of events one write causes.
                    while self.rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
