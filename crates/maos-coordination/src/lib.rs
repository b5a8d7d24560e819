//! maos: coordination for many AI coding agents (and any other processes) working in one
//! repository at the same time. This crate re-exports the maos crates so that a program can
//! depend on one crate; its one module with code, [`backend`], chooses a workspace's storage
//! (the files, or a PostgreSQL server) once and hands out each mechanism's storage trait.
//!
//! # Limitations
//! The default file backend is single-host (kernel locks and file events do not cross NFS);
//! the PostgreSQL backend ([`backend::open`]) serves only the commands the storage traits
//! cover (see `maos_postgres`'s limitations).
#![doc = include_str!("../README.md")]

pub mod backend;

pub use maos_comm as comm;
pub use maos_core as core;
pub use maos_dashboard as dashboard;
pub use maos_lock as lock;
pub use maos_merge as merge;
pub use maos_postgres as postgres;
pub use maos_session as session;
pub use maos_track as track;

#[doc(inline)]
pub use maos_core::{
    AgentId, AgentRecord, AgentRegistry, AgentRole, ChannelName, Liveness, Message, MessageId,
    MessageMetadata, Priority, Recipients, Registration, ResourceName, TaskId, Workspace,
};

// --- maos-comm main types ---
#[doc(inline)]
pub use maos_comm::{
    BroadcastChannel, ChannelWatcher, Consumer, Cursor, FileChannel, Filter, Receipt, Subscription,
};

// --- maos-lock main types ---
#[doc(inline)]
pub use maos_lock::{
    AdvisoryLock, DeadlockDetector, FencingToken, FileLock, LockGuard, LockInfo, LockMode,
    LockTable, check_fencing_token,
};

// --- maos-track main types ---
#[doc(inline)]
pub use maos_track::{ProgressReport, ProgressVisualizer, Task, TaskStatus, TaskTracker};

// --- maos-merge main types ---
#[doc(inline)]
pub use maos_merge::{
    Conflict, ConflictDetector, ConflictKind, MergeCheck, MergeCoordinator, MergeOutcome,
    MergePreparation, MergeQueue, MergeStrategy, Resolution,
};
