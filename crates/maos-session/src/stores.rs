//! Where a session's shared state lives: the workspace's backend (its files, or a PostgreSQL
//! server), through the mechanisms' storage traits. What concerns one client session on one
//! machine (which agent it is, what it last read) stays in the workspace's files on every
//! backend.

use std::sync::Arc;

use maos_comm::{FileInboxes, InboxStore};
use maos_core::{AgentId, AgentRecord, AgentRegistry, AgentStore, FileAgents, Workspace};
use maos_lock::{FileLocks, LockStore};
use maos_track::{FileTasks, TaskStore, TaskTracker};

use crate::Result;

/// Opens the task store acting as an agent.
type TaskOpener = dyn Fn(&AgentId) -> Result<Box<dyn TaskStore>, maos_track::Error> + Send + Sync;

/// The stores of one workspace a session works with: its agent registry, lock table, inboxes
/// and task store on the workspace's backend.
#[derive(Clone)]
pub struct Stores {
    pub(crate) ws: Workspace,
    pub(crate) agents: Arc<dyn AgentStore>,
    pub(crate) locks: Arc<dyn LockStore>,
    inboxes: Arc<dyn InboxStore>,
    tasks: Arc<TaskOpener>,
    files: bool,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("ws", &self.ws.root())
            .field("agents", &self.agents)
            .field("locks", &self.locks)
            .field("inboxes", &self.inboxes)
            .field("files", &self.files)
            .finish()
    }
}

impl Stores {
    /// The file backend's stores of `ws` (under `.maos/`).
    pub fn files(ws: &Workspace) -> Self {
        let w = ws.clone();
        Self {
            ws: ws.clone(),
            agents: Arc::new(FileAgents::new(ws)),
            locks: Arc::new(FileLocks::new(ws)),
            inboxes: Arc::new(FileInboxes::new(ws)),
            tasks: Arc::new(move |agent: &AgentId| {
                let t = TaskTracker::open_with(
                    &w,
                    maos_track::Options::default().agent(agent.clone()),
                )?;
                Ok(Box::new(FileTasks::new(t)) as Box<dyn TaskStore>)
            }),
            files: true,
        }
    }

    /// Stores on another backend (`maos_coordination::backend::open` hands them out); the
    /// workspace `ws` keeps only the session-local state.
    pub fn on(
        ws: &Workspace,
        agents: Box<dyn AgentStore>,
        locks: Box<dyn LockStore>,
        inboxes: Box<dyn InboxStore>,
        tasks: impl Fn(&AgentId) -> Result<Box<dyn TaskStore>, maos_track::Error>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            ws: ws.clone(),
            agents: Arc::from(agents),
            locks: Arc::from(locks),
            inboxes: Arc::from(inboxes),
            tasks: Arc::new(tasks),
            files: false,
        }
    }

    /// True when the shared state is the workspace's files (file locks and the registry's
    /// session anchors are available then).
    pub fn is_files(&self) -> bool {
        self.files
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// The agent registry.
    pub fn agents(&self) -> &dyn AgentStore {
        self.agents.as_ref()
    }

    /// The lock table.
    pub fn locks(&self) -> &dyn LockStore {
        self.locks.as_ref()
    }

    /// The agents' inboxes.
    pub fn inboxes(&self) -> &dyn InboxStore {
        self.inboxes.as_ref()
    }

    /// The task store, acting as `agent`.
    ///
    /// # Errors
    /// The store cannot be opened.
    pub fn tasks(&self, agent: &AgentId) -> Result<Box<dyn TaskStore>> {
        Ok((self.tasks)(agent)?)
    }

    /// The record of `id`, if registered.
    pub(crate) fn agent(&self, id: &AgentId) -> Result<Option<AgentRecord>> {
        if self.files {
            return Ok(AgentRegistry::new(&self.ws).get(id)?);
        }
        let (list, _) = self.agents.list()?;
        Ok(list.into_iter().map(|v| v.record).find(|r| &r.id == id))
    }
}
