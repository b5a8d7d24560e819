//! maos where agents work: what the MCP server, the Claude Code hooks and the CLI all need to
//! decide the same way, so each of them is a thin adapter.
//!
//! - [`name_agent`]: who a session is (`MAOS_AGENT_ID`, else its worktree's branch or
//!   directory, else its client session id), and [`resource_for`]: which repository path a
//!   file is, from any worktree.
//! - [`EditGuard`]: may this agent write this file now? Refused while another agent holds an
//!   overlapping lock, or when the file changed since the session last read it; optionally
//!   takes an exclusive lease on the first edit (auto-lock).
//! - [`start`], [`briefing`], [`Holdings`], [`end`]: a client session's life.
//! - [`Mail`]: new messages for the agent, put into its context once (at least once: they
//!   are acknowledged only after the answer carrying them was written).
//! - [`Stores`]: where the shared state lives (the workspace's files, or another backend
//!   through the mechanisms' storage traits): [`start_in`], [`briefing_in`], [`end_in`],
//!   [`Holdings::in_stores`] and [`EditGuard::in_stores`] work on either.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use maos_core::{AgentId, ResourceName, Workspace};
//! use maos_lock::FileLock;
//! use maos_session::{EditDecision, EditGuard};
//!
//! let dir = tempfile::tempdir()?;
//! let ws = Workspace::init(dir.path())?;
//! let file = dir.path().join("src/api.rs");
//! let lock = FileLock::new(&ws, ResourceName::new("src/api.rs")?).agent(AgentId::new("a")?);
//! let held = lock.acquire_blocking("rewrite the API")?;
//!
//! let b = EditGuard::new(&ws, AgentId::new("b")?, Some("session-b"))?;
//! match b.check(&file)? {
//!     EditDecision::Deny { reason } => assert!(reason.contains("locked by agent a")),
//!     other => panic!("{other:?}"),
//! }
//! held.release()?;
//! assert!(matches!(b.check(&file)?, EditDecision::Allow { .. }));
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - The stale-read check compares what the session last read or wrote with the file now; a
//!   change made and undone in between is not seen, and files over 16 MiB are compared by size
//!   and modification time.
//! - The records of what a session saw are not fsynced (losing one after a power cut costs at
//!   most one refused edit).
//! - On a backend other than the files, what concerns one client session (its binding to an
//!   agent, what it last read) stays in the local workspace's files: a second session of the
//!   same agent on another machine is not seen when one ends (the agent's locks and claims
//!   are released then). [`Mail::collect_in`] reads the inbox on the workspace's backend.
//! - Naming from a worktree reads git's own files (`.git`, `HEAD`); exotic layouts (a
//!   `GIT_DIR` elsewhere) fall back to the session id.

mod edit;
mod error;
mod identity;
mod mail;
mod session;
mod stores;

pub use edit::{EditDecision, EditGuard};
pub use error::{Error, Result};
pub use identity::{AgentName, GitPlace, NamedFrom, name_agent, resource_for};
pub use mail::{MAIL_BATCH, Mail};
pub use session::{
    Ended, Holdings, Started, agent_of_session, briefing, briefing_in, end, end_in, start, start_in,
};
pub use stores::Stores;
