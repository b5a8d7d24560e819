//! The shared vocabulary of maos, a coordination layer that lets many AI coding agents (and
//! any other processes) work in one repository at once.
//!
//! This crate holds what every other maos crate agrees on and nothing else:
//! - identifiers: [`AgentId`], [`AgentRole`], [`TaskId`], [`MessageId`];
//! - the message envelope: [`Message`], [`Recipients`], [`MessageMetadata`], [`Priority`];
//! - validated names that can be turned into paths safely: [`Name`], [`ChannelName`],
//!   [`ResourceName`];
//! - the workspace and its `.maos/` layout: [`Workspace`];
//! - crash-safe file primitives: [`fsx`] (write-then-publish, bounded reads, no symlinks);
//! - the agent registry with liveness verdicts: [`AgentRegistry`];
//! - one error type: [`Error`].
//!
//! Start at [`Workspace`]; the on-disk format is specified in `docs/protocol.md`.
//!
//! # Example
//! ```
//! # fn main() -> maos_core::Result<()> {
//! use maos_core::{AgentId, AgentRegistry, AgentRole, Message, Recipients, Registration, Workspace};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let ws = Workspace::init(dir.path())?;
//! let me = AgentId::new("frontend-1")?;
//! AgentRegistry::new(&ws).register(Registration::new(me.clone()).role(AgentRole::frontend()))?;
//!
//! let msg = Message::new(me, Recipients::Role(AgentRole::backend()), "need /users API");
//! assert!(msg.recipients.includes(&AgentId::new("b1")?, Some(&AgentRole::backend())));
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - The file backend is single-host: kernel locks and file events do not cross NFS
//!   ([`Workspace::is_network_filesystem`] detects it).
//! - Symbolic-link checks are done component by component before use; a process that swaps a
//!   directory for a link between the check and the use is not defended against (maos agents
//!   cooperate; the check stops accidents and planted links, not a racing attacker).

mod agent_store;
mod config;
pub mod doctor;
mod error;
pub mod fsx;
mod ids;
mod message;
mod name;
pub mod process;
mod registry;
mod text;
mod time;
mod workspace;

pub use agent_store::{AgentStore, AgentView, FileAgents};
pub use config::{Config, DEFAULT_AGENT_LEASE, HookConfig, MAX_AGENT_LEASE};
pub use error::{Error, Result};
pub use ids::{MessageId, TaskId};
pub use message::{Message, MessageMetadata, Priority, Recipients, now_ms};
pub use name::{
    AGENT_ENV, AgentId, AgentRole, ChannelName, MAX_CHANNEL_LEN, MAX_CHANNEL_SEGMENTS,
    MAX_NAME_LEN, MAX_RESOURCE_LEN, MAX_RESOURCE_SEGMENT_LEN, Name, ResourceName,
};
pub use process::{ProcessIdentity, ProcessState};
pub use registry::{
    AgentList, AgentRecord, AgentRegistry, Anchor, AnchorKind, DEFAULT_STALE_AFTER, Liveness,
    Registration, SessionRecord,
};
pub use text::{escape_controls, excerpt};
pub use time::{deadline_after, human_duration, human_ms};
pub use workspace::{Discovery, FORMAT_VERSION, LAYOUT_DIRS, MAOS_DIR, WORKSPACE_ENV, Workspace};
