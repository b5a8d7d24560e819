//! [`Stores`]: the workspace's storage as the mechanisms' traits, for a dashboard on a
//! backend that is not the files under `.maos/` (PostgreSQL), with [`Wakes`], what tells it
//! that something changed there. The facade builds both from its backend
//! (`maos_coordination::backend`); this crate knows no backend but the files.

use std::sync::Arc;
use std::time::Duration;

use maos_comm::{BroadcastChannel, ChannelStore, FileComm};
use maos_core::{AgentId, AgentStore, FileAgents, Workspace};
use maos_lock::{FileLocks, LockStore};
use maos_merge::backend::MergeBackend;
use maos_track::{FileTasks, TaskStore, TaskTracker};

use crate::Result;
use crate::snapshot::Changed;

/// Publishes a record on a system topic (one maos itself publishes on, such as
/// [`crate::actions::ACTIONS_TOPIC`]) as the given agent: what ordinary broadcasts refuse.
pub type SystemBroadcast = Arc<
    dyn Fn(&AgentId, &str, &serde_json::Value) -> std::result::Result<(), String> + Send + Sync,
>;

/// One workspace's stores, each through its mechanism's storage trait. Cheap to clone.
#[derive(Clone)]
pub struct Stores {
    pub(crate) backend: String,
    pub(crate) channels: Arc<dyn ChannelStore>,
    pub(crate) locks: Arc<dyn LockStore>,
    pub(crate) tasks: Arc<dyn TaskStore>,
    pub(crate) agents: Arc<dyn AgentStore>,
    pub(crate) merge: Option<Arc<dyn MergeBackend>>,
    pub(crate) system: SystemBroadcast,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// The stores of a backend named `backend` (`postgresql`): channels, locks, the task
    /// graph (acting as the dashboard's agent: its updates are an operator's), the agent
    /// registry, and `system`, how an action is recorded.
    pub fn new(
        backend: impl Into<String>,
        channels: Arc<dyn ChannelStore>,
        locks: Arc<dyn LockStore>,
        tasks: Arc<dyn TaskStore>,
        agents: Arc<dyn AgentStore>,
        system: SystemBroadcast,
    ) -> Self {
        Self {
            backend: backend.into(),
            channels,
            locks,
            tasks,
            agents,
            merge: None,
            system,
        }
    }

    /// The merge coordinator's shared state (its queue and registry), when the backend keeps
    /// it (git stays local either way).
    #[must_use = "returns the changed stores"]
    pub fn merge(mut self, merge: Arc<dyn MergeBackend>) -> Self {
        self.merge = Some(merge);
        self
    }

    /// The files under `.maos/` of `ws` as traits, acting as `actor` (what the actions use on
    /// the file backend).
    ///
    /// # Errors
    /// The task store cannot be opened.
    pub fn files(ws: &Workspace, actor: &AgentId) -> Result<Self> {
        let tracker =
            TaskTracker::open_with(ws, maos_track::Options::default().agent(actor.clone()))?;
        let ws2 = ws.clone();
        let system: SystemBroadcast = Arc::new(move |sender, topic, payload| {
            BroadcastChannel::new(&ws2, sender.clone())
                .system()
                .broadcast_blocking(topic, payload)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        Ok(Self::new(
            "file",
            Arc::new(FileComm::new(ws)),
            Arc::new(FileLocks::new(ws)),
            Arc::new(FileTasks::new(tracker)),
            Arc::new(FileAgents::new(ws)),
            system,
        ))
    }

    /// The backend's name (`file`, `postgresql`).
    pub fn backend(&self) -> &str {
        &self.backend
    }
}

/// What tells a dashboard on [`Stores`] that something changed: the backend's notifications
/// (hints: the dashboard re-reads what they name). Blocking: run on a thread of its own.
pub trait Wakes: Send + 'static {
    /// Blocks up to `timeout` for the next notifications; returns what they say changed
    /// (empty at the timeout).
    fn wait(&mut self, timeout: Duration) -> Changed;

    /// Why the connection to the backend is down, while it is: shown on the page as a
    /// problem of the `connection` section until it comes back.
    fn problem(&self) -> Option<String> {
        None
    }
}

/// A dashboard's source on a backend other than the files: its stores, what wakes it, and
/// how often it looks at what sends no notification.
pub struct Remote {
    /// The stores.
    pub stores: Stores,
    /// The notifications.
    pub wakes: Box<dyn Wakes>,
    /// How often the sections without notifications are read again (at least
    /// [`crate::DEBOUNCE`]); [`REMOTE_POLL`] by default.
    pub poll: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("stores", &self.stores)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

/// How often a dashboard on a server reads again what sends no notification: uncontended
/// lock grants, the agent registry (and its liveness), the merge queue.
pub const REMOTE_POLL: Duration = Duration::from_secs(1);

impl Remote {
    /// A source on `stores` woken by `wakes`, polling every [`REMOTE_POLL`].
    pub fn new(stores: Stores, wakes: Box<dyn Wakes>) -> Self {
        Self {
            stores,
            wakes,
            poll: REMOTE_POLL,
        }
    }
}
