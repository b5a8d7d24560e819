//! The one error type of maos-comm.

use std::path::PathBuf;

/// Everything that can go wrong in maos-comm.
///
/// Every variant names the channel, path, topic or position it is about. Expected outcomes
/// (nothing new, a pruned gap, skipped positions, a damaged record that was skipped) are
/// values in [`crate::Batch`], not errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A workspace-level operation (names, paths, file primitives, kernel locks) failed.
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

    /// A message serialised to JSON that receivers could not decode (nested deeper than
    /// their limit, an invalid string escape...); nothing was written.
    #[error(
        "channel {channel}: message {id} would not be readable by receivers ({reason}); nothing \
         was written"
    )]
    Unreadable {
        /// The channel.
        channel: String,
        /// The refused message.
        id: maos_core::MessageId,
        /// What a receiver would fail on.
        reason: String,
    },

    /// A channel that only maos itself writes (the broadcast feed and topics).
    #[error("channel {channel} is reserved: {reason}")]
    Reserved {
        /// The channel.
        channel: String,
        /// Who writes it, and what to use instead.
        reason: String,
    },

    /// Reading a channel that does not exist.
    #[error(
        "no channel {channel} (nothing at {path}): a channel is created by its first `send`; \
         `maos channels` lists the existing ones"
    )]
    NoSuchChannel {
        /// The channel.
        channel: String,
        /// Where it would be.
        path: PathBuf,
    },

    /// Acknowledging a position the channel's log does not hold.
    #[error(
        "channel {channel}: cannot acknowledge position {position}, the newest message is at \
         {newest}"
    )]
    AheadOfLog {
        /// The channel.
        channel: String,
        /// The position to acknowledge.
        position: u64,
        /// The newest position in the log.
        newest: u64,
    },

    /// A file of the channel is damaged in a way the operation cannot work around.
    #[error("channel {channel}: {path}: {reason}; {remedy}")]
    Damaged {
        /// The channel.
        channel: String,
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// What to do.
        remedy: String,
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

    /// A consumer, subscription or inbox state file could not be parsed.
    #[error(
        "channel {channel}: corrupt state file {path}: {reason} (`maos doctor --repair` moves it \
         to quarantine; the reader then starts over and may see messages again)"
    )]
    CorruptState {
        /// The channel (or `inbox <agent>`).
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

    /// True when the operation gave up waiting for a kernel lock (a writer held it past the
    /// timeout; the message names the holder and whether it is stopped).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::Core {
                source: maos_core::Error::LockTimeout { .. },
                ..
            }
        )
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
