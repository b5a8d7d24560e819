//! maos on PostgreSQL: the same channels, locks, tasks, agent registry and merge queue as
//! the file backend, on a server that agents on several machines share.
//!
//! (Documentation is completed below.)
//!
//! # Limitations
//! - Work in progress.

#![warn(clippy::return_self_not_must_use, clippy::await_holding_invalid_type)]

pub mod comm;
mod config;
mod conn;
mod error;
pub mod lock;
pub mod merge;
pub mod registry;
mod schema;
pub mod server;
pub mod track;

pub use config::{
    BACKEND_ENV, BackendUrl, MAX_NAMESPACE_LEN, NAMESPACE_ENV, check_namespace,
    default_namespace, redact,
};
pub use conn::{KEY_TAG, Options, Pg};
pub use error::{Error, Holder, Result};
pub use schema::{MIGRATIONS, SCHEMA_VERSION};
