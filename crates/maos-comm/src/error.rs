//! The one error type of maos-comm.

use std::path::PathBuf;

/// Everything that can go wrong in maos-comm.
///
/// Every variant names the channel, path, topic or position it is about. Expected outcomes
/// (nothing new, a pruned gap, a corrupt record that was skipped) are values in
/// [`crate::Batch`], not errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A workspace-level operation (names, paths, file primitives) failed.
    #[error("channel {channel}")]
    Core {
        /// The channel (or topic, or consumer) concerned.
        channel: String,
        /// The underlying error, naming the path.
        #[source]
        source: maos_core::Error,
    },

    /// An operating-system call on `path` failed.
    #[error("channel {channel}: {op} {path}")]
    Io {
        /// The channel.
        channel: String,
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A message is larger than the channel's limit; nothing was written.
    #[error(
        "channel {channel}: message {id} is {size} bytes serialised, more than the limit of \
         {limit} bytes (nothing was written)"
    )]
    PayloadTooLarge {
        /// The channel.
        channel: String,
        /// The refused message.
        id: maos_core::MessageId,
        /// Its serialised size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },

    /// A message could not be serialised; nothing was written.
    #[error("channel {channel}: cannot serialise message")]
    Serialize {
        /// The channel.
        channel: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// A broadcast topic or subscription pattern was rejected.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected topic or pattern.
        topic: String,
        /// Why.
        reason: String,
    },

    /// The file watcher could not be set up.
    #[error("channel {channel}: cannot watch {path}")]
    Watch {
        /// The channel.
        channel: String,
        /// The watched directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: notify::Error,
    },

    /// A background (blocking) task died before finishing.
    #[error("channel {channel}: background {op} failed: {reason}")]
    Background {
        /// The channel.
        channel: String,
        /// The operation.
        op: &'static str,
        /// Why it did not finish (a panic or a cancelled runtime).
        reason: String,
    },

    /// A consumer or subscription state file could not be parsed.
    #[error("channel {channel}: corrupt state file {path}: {reason}")]
    CorruptState {
        /// The channel.
        channel: String,
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn core(channel: impl Into<String>, source: maos_core::Error) -> Self {
        Error::Core {
            channel: channel.into(),
            source,
        }
    }

    pub(crate) fn io(
        channel: impl Into<String>,
        op: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            channel: channel.into(),
            op,
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
