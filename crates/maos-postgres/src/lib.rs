//! maos on PostgreSQL: the same channels, locks, tasks, agent registry and merge queue as the
//! file backend, on a server that agents on several machines (CI runners, devcontainers, a
//! second laptop) share. The file backend stays the embedded default; this crate is for
//! workspaces configured with a `postgres://` backend.
//!
//! Start at [`Pg`]: [`Pg::connect`] creates or migrates the schema (numbered migrations
//! embedded in the binary, [`SCHEMA_VERSION`] stored in the database, a newer server schema
//! refused with [`Error::SchemaTooNew`]) and opens a namespace: one server serves many
//! repositories, each workspace in its own namespace, by default `repo-<root commit id>`
//! ([`default_namespace`]), so the clones of one repository on every machine meet in the same
//! one. Then:
//!
//! - [`comm::PgChannel`] (send, receive from a position, wait, consumers, pruning),
//!   [`comm::PgBroadcast`] and [`comm::PgSubscription`] (topics and the global feed);
//!   [`inbox::PgInbox`] (everything addressed to one agent, its stored subscriptions);
//! - [`lock::PgLock`] / [`lock::PgGuard`] (exclusive, shared and pattern locks, FIFO waiting,
//!   leases, fencing tokens), [`lock::PgLockTable`], [`lock::PgDeadlockDetector`];
//! - [`track::PgTracker`] (the task graph, claims, report, critical path, Gantt);
//! - [`registry::PgRegistry`] (agents and their liveness);
//! - [`merge::PgQueue`] (the merge queue) and [`merge::PgMerge`] (maos-merge's
//!   `MergeBackend`: merge lock, queue, resolution tasks and notices on the server; git stays
//!   in each clone);
//! - [`hints::Hints`]: what the namespace's notifications say changed (the dashboard's
//!   wake-ups);
//! - [`stores`]: the mechanisms' storage traits (`ChannelStore`, `LockStore`, `TaskStore`,
//!   `AgentStore`; `InboxStore` in [`inbox`]) on the types above, which the CLI uses when a
//!   workspace's backend is `postgres://...`.
//!
//! How each semantic is kept, in one line each (docs/protocol.md, section 10, has the exact
//! rules a client follows):
//! - one total order per channel, no gap ever visible: a sender increments the channel's
//!   `last` in its transaction; the row lock makes positions commit in order;
//! - acknowledged means committed (the write-ahead log is flushed): a server crash or restart
//!   loses nothing acknowledged; LISTEN/NOTIFY wakes readers and waiters, as a hint only;
//! - every state change of a namespace's locks, tasks or queue runs under one row lock of
//!   `maos.guards` (the file backend's table-wide guard), with the server's clock
//!   (`maos.now_ms()`), so leases never depend on a client's clock;
//! - liveness: each process holds a session-level advisory lock on its own key; a holder is
//!   alive while its database session lasts (a killed process, a terminated session, a
//!   partitioned machine once the server's keepalives give up);
//! - fencing tokens come from one sequence: they only grow, across crashes too;
//! - a lost session is reported ([`Pg::on_session_lost`], [`lock::PgGuard::is_lost`],
//!   [`Error::LockLost`] on renewal) and replaced by a new one; operations retry across a lost
//!   connection, recognising their own earlier commit by a request id.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use maos_core::{AgentId, ChannelName, Message, Recipients, ResourceName};
//! use maos_postgres::comm::{Filter, PgChannel};
//! use maos_postgres::lock::PgLock;
//! use maos_postgres::{BackendUrl, Pg};
//!
//! // A throwaway server for the example; a real one is `postgres://user@host/db`.
//! let url = BackendUrl::parse(&maos_postgres::server::shared_url()?)?;
//! let pg = Pg::connect(&url, "example-repo")?;
//! let me = AgentId::new("backend-1")?;
//!
//! let ch = PgChannel::open(&pg, ChannelName::new("backend-frontend")?);
//! let r = ch.send(&Message::new(me.clone(), Recipients::All, "need /users"))?;
//! let batch = ch.receive::<String>(r.position - 1, &Filter::Everything)?;
//! assert_eq!(batch.messages[0].message.payload, "need /users");
//!
//! let guard = PgLock::new(&pg, ResourceName::new("src/api/**")?).agent(me).try_acquire("refactor")?;
//! let guard = guard.expect("free");
//! assert!(guard.token() > 0);
//! guard.release()?;
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - No TLS yet (the client connects without it): use a trusted network, an SSH tunnel or a
//!   unix socket. Passwords come from `PGPASSWORD` or a pgpass file, never from the URL.
//! - A killed lock holder is noticed by waiters within [`Options::lock_fallback`] (500 ms),
//!   not at once as with the file backend's kernel locks: PostgreSQL sends no notification
//!   when a session ends. A partitioned machine's session ends only when the server's TCP
//!   keepalives (or `tcp_user_timeout`) give up: configure them on the server.
//! - A lock held by a process cannot be handed to a child process (`maos lock run` holds it
//!   through the CLI's session); an agent anchored on a session that ended counts as dead only
//!   after [`Options::dead_grace`] (10 s), since its process re-anchors it when it reconnects.
//! - Every machine must reach the server; the server is the single point of failure (use the
//!   replication PostgreSQL offers).
//! - A workspace chooses this backend with `maos init --backend postgres://...`
//!   (`maos_coordination::backend::open` then hands out [`stores`]' implementations of the
//!   mechanisms' storage traits); the mechanisms' own file types (`FileChannel`, `FileLock`,
//!   `TaskTracker`) stay file-only. A task's history is paged on the server (the latest
//!   [`maos_track::MAX_HISTORY`] events of `task show`, with the count of earlier ones), and
//!   records written before schema version 3 have no history events (`maos channels` lists
//!   without byte counts). The inbox ([`inbox::PgInboxes`]), its stored subscriptions, channel
//!   pruning, the MCP server's tools, the hooks and the dashboard ([`hints::Hints`] wakes it)
//!   work here. A stored subscription brings the
//!   broadcasts published after that pattern was stored (the file inbox starts its one feed
//!   cursor at the first subscription). The demo runs here with its agents on the library (`maos demo
//!   --backend URL`), not through MCP and the hooks.
//! - The synchronous client blocks on a runtime of its own: from async code, call it where
//!   blocking is allowed (`tokio::task::block_in_place`, `spawn_blocking`), and drop the last
//!   handle of a [`Pg`] outside the runtime's threads.

pub mod comm;
mod config;
mod conn;
mod error;
pub mod hints;
mod hub;
pub mod inbox;
pub mod lock;
pub mod merge;
pub mod registry;
mod schema;
pub mod server;
pub mod stores;
pub mod track;

pub use config::{
    BACKEND_ENV, BackendUrl, IDLE_IN_TRANSACTION, MAX_NAMESPACE_LEN, NAMESPACE_ENV, ROW_WAIT,
    check_namespace, default_namespace, redact,
};
pub use conn::{KEY_TAG, Options, Pg};
pub use error::{Error, Holder, Result};
pub use schema::{MIGRATIONS, SCHEMA_VERSION};
