//! The crate's one error type.

use std::net::SocketAddr;

/// What can go wrong serving a dashboard or running one of its actions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be opened.
    #[error(
        "cannot listen on {addr} (is another dashboard running there? pick another port with --listen, or port 0 for any free one)"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A non-loopback address was asked for without allowing remote access.
    #[error(
        "refusing to listen on {addr}: it is not a loopback address, so anyone who can reach it \
         could read the workspace; allow it explicitly (--allow-remote), which also requires a token"
    )]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The server failed while serving.
    #[error("the dashboard server failed")]
    Serve(#[source] std::io::Error),
    /// An action was refused (read-only dashboard, wrong state, bad input).
    #[error("{action} refused: {reason}")]
    Refused {
        /// The action.
        action: &'static str,
        /// Why, and what to do.
        reason: String,
    },
    /// A background step stopped (panicked or was cancelled).
    #[error("the dashboard's background work on {what} stopped unexpectedly")]
    Join {
        /// What it was doing.
        what: &'static str,
        /// The runtime's report.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A thread could not be started.
    #[error("cannot start a thread for {what}")]
    Thread {
        /// What it was for.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// From maos-core.
    #[error(transparent)]
    Core(#[from] maos_core::Error),
    /// From maos-comm.
    #[error(transparent)]
    Comm(#[from] maos_comm::Error),
    /// From maos-lock.
    #[error(transparent)]
    Lock(#[from] maos_lock::Error),
    /// From maos-track.
    #[error(transparent)]
    Track(#[from] maos_track::Error),
    /// From maos-merge.
    #[error(transparent)]
    Merge(#[from] maos_merge::Error),
}

/// `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
