//! [`TaskTracker`]: the shared task graph, read and written by every process of a workspace.
//!
//! - `mod.rs`: the handle, its options, and the read/write plumbing over the store;
//! - `write.rs`: creating tasks, status changes, ownership, edits, comments, dependencies;
//! - `queue.rs`: the ready queue, claims, releasing the claims of dead agents;
//! - `query.rs`: tasks by id, pages, history, counts, the critical path;
//! - `asyncs.rs`: the async twins.

mod asyncs;
mod query;
mod queue;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use maos_core::{AgentId, Workspace, fsx};

pub use self::query::{CriticalPath, Page, Query, ReadyPage};
pub use self::write::{Amendment, Ownership, Update};
use crate::Error;
use crate::notify::{Publishers, TaskEvent};
use crate::store::graph::Graph;
use crate::store::record::Author;
use crate::store::{Store, StoreOptions, Tx, Written};

/// Settings of a [`TaskTracker`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The agent recorded as the author of changes (`by` in the log) and checked against a
    /// task's assignee; defaults to `MAOS_AGENT_ID` or the default agent.
    pub agent: Option<AgentId>,
    /// Publish status changes on the `tasks` broadcast topic (default true).
    pub publish: bool,
    /// Release claims of agents the registry reports dead (no live anchor, and their session
    /// ended or their lease ran out) before a claim (default true): at most once a second
    /// across all processes, and whenever a claim finds nothing else to take.
    pub release_dead_claims: bool,
    /// How long a write waits for the store's kernel lock before it fails naming the
    /// holder (default [`fsx::DEFAULT_GUARD_TIMEOUT`]).
    pub lock_timeout: Duration,
    /// Compact once the current log holds this many records (default 512): a fresh process
    /// replays at most this many records; each compaction costs one pass over the graph.
    pub compact_records: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            agent: AgentId::current().ok(),
            publish: true,
            release_dead_claims: true,
            lock_timeout: fsx::DEFAULT_GUARD_TIMEOUT,
            compact_records: crate::store::COMPACT_RECORDS,
        }
    }
}

impl Options {
    /// Sets the acting agent.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn agent(mut self, agent: AgentId) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Turns publishing on the `tasks` topic on or off.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn publish(mut self, on: bool) -> Self {
        self.publish = on;
        self
    }

    /// Turns the release of dead agents' claims on or off.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn release_dead_claims(mut self, on: bool) -> Self {
        self.release_dead_claims = on;
        self
    }

    /// Sets how many log records trigger a compaction (at least 1).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn compact_records(mut self, records: u64) -> Self {
        self.compact_records = records.max(1);
        self
    }

    /// Sets how long a write waits for the store's kernel lock.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }
}

/// The shared task graph of a workspace (`.maos/tasks/`). Cheap to clone; every clone and
/// every process sees the same tasks.
///
/// Reads catch up with the log and read only what they need from the snapshot; writes
/// happen under a tracker-wide kernel lock after catching up, each record validated before
/// it is appended, so no update is lost and a claim never hands the same task out twice.
#[derive(Clone)]
pub struct TaskTracker {
    inner: Arc<Inner>,
}

struct Inner {
    ws: Workspace,
    dir: PathBuf,
    store: Mutex<Store>,
    options: Options,
    publishers: Publishers,
}

impl std::fmt::Debug for TaskTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTracker")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl TaskTracker {
    /// Opens the task store of `ws` with default [`Options`].
    pub fn open(ws: &Workspace) -> Result<Self, Error> {
        Self::open_with(ws, Options::default())
    }

    /// Opens the task store of `ws`.
    pub fn open_with(ws: &Workspace, options: Options) -> Result<Self, Error> {
        let dir = ws.tasks_dir();
        let store = Store::open(
            &dir,
            StoreOptions {
                lock_timeout: options.lock_timeout,
                compact_records: options.compact_records.max(1),
            },
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                ws: ws.clone(),
                dir,
                store: Mutex::new(store),
                options,
                publishers: Publishers::default(),
            }),
        })
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.inner.ws
    }

    /// `.maos/tasks/`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The acting agent of this handle.
    pub fn agent(&self) -> Option<&AgentId> {
        self.inner.options.agent.as_ref()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic in a store operation leaves the state reloadable: the store drops its
        // state on every error path, and a poisoned guard's store is reloaded from the files.
        match self.inner.store.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                let mut g = poisoned.into_inner();
                g.forget();
                g
            }
        }
    }

    /// Runs `f` on the caught-up graph (no kernel lock: the store is readable while written).
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&mut Graph) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut store = self.store();
        let graph = store.read()?;
        f(graph)
    }

    /// One write as `by` (default: this handle's agent): see [`Store::write`]. Publishes what
    /// changed once the write is durable and the lock released.
    pub(crate) fn write<R>(
        &self,
        by: Option<&AgentId>,
        force: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let author = Author {
            by: by.or(self.inner.options.agent.as_ref()).cloned(),
            force,
        };
        let Written {
            value,
            seq,
            effects,
        } = self.store().write(&author, f)?;
        if self.inner.options.publish && seq > 0 {
            let event = TaskEvent::new(seq, effects);
            let sender = author
                .by
                .clone()
                .or_else(|| AgentId::current().ok())
                .unwrap_or_else(|| AgentId::new("maos-track").expect("a valid agent name"));
            self.inner
                .publishers
                .publish(&self.inner.ws, sender, &event);
        }
        Ok(value)
    }

    /// Compacts the store now: writes a snapshot and starts a new log generation.
    pub fn compact_blocking(&self) -> Result<(), Error> {
        self.store().compact()
    }

    /// The sequence number of the latest record seen: changes whenever the tasks change.
    pub fn version_blocking(&self) -> Result<u64, Error> {
        self.read(|g| Ok(g.seq))
    }

    /// A watcher that wakes when the tasks change (file events plus a fallback timer).
    pub fn watch(&self) -> Result<crate::notify::TaskWatch, Error> {
        crate::notify::TaskWatch::new(self.clone())
    }
}
