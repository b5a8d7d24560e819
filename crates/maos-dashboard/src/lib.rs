//! maos-dashboard: see the swarm. A live [`Snapshot`] of a maos workspace (agents, locks with
//! their waiters and deadlock cycles, tasks with counts, the critical path and the ETA, recent
//! messages per channel and topic, the merge prediction matrix and the merge queue), served
//! as one web page by [`Server`] and drawn in a terminal by `maos status --watch`.
//!
//! Start at [`Live`]: it reads the workspace through the libraries' own read calls (a
//! [`Collector`]), then re-reads only what file events say changed and publishes a new
//! version when the content differs. [`Server`] is an axum router whose handlers only
//! serialise that snapshot (paged: [`Snapshot::view`]), stream versions as server-sent events,
//! serve the pictures of maos-track ([`maos_track::graph_svg`], [`maos_track::gantt_svg`]) and
//! the page (hand-written HTML, CSS and JavaScript embedded in the binary: no build step, no
//! network). With [`Options::allow_actions`] the page can release a dead agent's lock, reset a
//! failed task and resolve a deadlock ([`actions`]), each through the same library call as the
//! CLI and recorded with the actor on the [`actions::ACTIONS_TOPIC`] topic.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use maos_core::{AgentId, ResourceName, Workspace};
//! use maos_dashboard::Live;
//!
//! let dir = tempfile::tempdir()?;
//! let ws = Workspace::init(dir.path())?;
//! let live = Live::start(&ws, AgentId::new("viewer")?).await?;
//! assert!(live.snapshot().locks.holders.is_empty());
//!
//! let mut versions = live.subscribe();
//! let lock = maos_lock::FileLock::new(&ws, ResourceName::new("src/api.rs")?)
//!     .agent(AgentId::new("backend")?)
//!     .acquire("add the /users endpoint")
//!     .await?;
//! // A file event wakes the dashboard: the next version shows the lock.
//! versions.changed().await?;
//! while live.snapshot().locks.holders.is_empty() {
//!     versions.changed().await?;
//! }
//! assert_eq!(live.snapshot().locks.holders[0].owner, "backend");
//! lock.release()?;
//! # Ok(()) }
//! ```
//!
//! A workspace whose state is on a server (PostgreSQL) is read through the mechanisms'
//! storage traits instead: [`Live::start_remote`] / [`Server::bind_remote`] with a [`Remote`]
//! (the [`Stores`] and the backend's notifications as [`Wakes`]), which the CLI builds from
//! its backend; the page, the snapshot and the actions are the same.
//!
//! # Limitations
//! - On the files, single host like the file backend: file events (inotify) drive updates;
//!   without them (a network filesystem) the snapshot is re-read every
//!   [`NO_EVENTS_INTERVAL`].
//! - On a server, what sends no notification (an uncontended lock grant, the agent
//!   registry, the merge queue) shows at the next read, every [`REMOTE_POLL`]; a read while
//!   the server is away waits for the backend's own reconnection (30 s on PostgreSQL) before
//!   the section shows as failed (the lost connection itself shows at once, through
//!   [`Wakes::problem`]). The prediction checks the branches the server's registry names in
//!   the local clone's git.
//! - A process that ends leaves no file event: agents' liveness is re-checked every
//!   [`FALLBACK`] (lock holders' deaths are seen at once: their liveness file
//!   closes).
//! - Branches are predicted pairwise only up to [`MAX_PAIRWISE_BRANCHES`]; beyond, each
//!   against the target only. The prediction follows branches (commits), not uncommitted
//!   work in worktrees.
//! - Pages hold at most 1,000 rows; the pictures show at most 2,000 tasks (a window around
//!   the critical path beyond).
//! - The token of a remote dashboard travels in clear text over HTTP: put TLS in front of it
//!   (a reverse proxy) for anything beyond a trusted network.

pub mod actions;
mod error;
mod live;
mod server;
mod snapshot;
mod stores;
mod watch;

pub use error::{Error, Result};

/// Runs blocking store work on tokio's blocking pool: the one way this crate leaves the async
/// world. A task that panicked or was cancelled is [`Error::Join`] naming `what`.
pub(crate) async fn asyncify<F, T>(what: &'static str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| Error::Join { what, source })
}
pub use live::{DEBOUNCE, FALLBACK, Live, NO_EVENTS_INTERVAL, Picture};
pub use server::{DEFAULT_LISTEN, DEFAULT_PICTURE_TASKS, Options, Server};
pub use snapshot::{
    AgentView, AnchorView, Changed, ChannelKind, ChannelSet, ChannelView, Collector, DeadlockView,
    LockView, LocksPage, LocksView, MAX_PAIRWISE_BRANCHES, MergeInputs, MergesView, MessageView,
    Page, Problem, QueueView, RECENT_MESSAGES, Snapshot, TaskRef, TaskRow, TasksPage, TasksView,
    View, ViewQuery, WaiterView, predict, predict_with,
};
pub use stores::{REMOTE_POLL, Remote, Stores, SystemBroadcast, Wakes};
