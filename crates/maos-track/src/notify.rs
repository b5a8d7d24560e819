//! Publishing status changes on the `tasks` topic.

use maos_core::{AgentId, Workspace};

use crate::Change;

/// The broadcast topic status changes are published on.
pub const TOPIC: &str = "tasks";

/// What is published on the [`TOPIC`] topic after each write: the status changes one write
/// caused (the requested change plus dependents unblocked or blocked), in log order.
///
/// Writers publish after their write is durable and outside the tracker lock, so two
/// writers' events may reach the topic out of log order: order them by `seq`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskEvent {
    /// The log sequence number of the write's last record.
    pub seq: u64,
    /// The changes.
    pub changes: Vec<Change>,
}

/// Publishes `changes` (best effort: the task log is the truth; a lost notification only
/// delays a watcher until its fallback timer).
pub(crate) fn publish(
    publisher: &std::sync::OnceLock<maos_comm::BroadcastChannel>,
    ws: &Workspace,
    agent: Option<&AgentId>,
    changes: &[Change],
) {
    let Some(seq) = changes.iter().map(|c| c.seq).max() else {
        return;
    };
    let channel = publisher.get_or_init(|| {
        let sender = agent
            .cloned()
            .or_else(|| AgentId::current().ok())
            .unwrap_or_else(|| AgentId::new("maos-track").expect("a valid agent name"));
        maos_comm::BroadcastChannel::new(ws, sender)
    });
    let event = TaskEvent {
        seq,
        changes: changes.to_vec(),
    };
    if let Err(e) = channel.broadcast_blocking(TOPIC, &event) {
        tracing::warn!(
            error = &e as &dyn std::error::Error,
            seq,
            "could not publish task changes on the tasks topic"
        );
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
