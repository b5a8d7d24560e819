//! Crash-safe message channels for maos: point-to-point and shared channels, broadcast,
//! pub/sub with wildcards, durable consumers and live watching, all as plain files under
//! `<workspace>/.maos/channels/`.
//!
//! Start at [`FileChannel`]: [`FileChannel::send`] returns a [`Receipt`] (position and id)
//! only once the message is durable and readable whole; [`FileChannel::receive`] reads
//! forward from a [`Cursor`] at a cost proportional to what is new. [`ChannelWatcher`] waits
//! for new messages (file events as hints, plus a fallback timer). [`BroadcastChannel`]
//! publishes to topics, [`Subscription`] listens to topic patterns such as `build/*`.
//! [`Consumer`] keeps a named, durable cursor (at-least-once delivery).
//!
//! On disk a channel is a segmented append-only log of JSON Lines (`docs/protocol.md`, comm
//! section): writers take the channel's kernel lock, repair a torn tail left by a killed
//! writer, append one complete record (position, length, CRC-32, message), release the lock
//! and only then `fdatasync`, so concurrent writers share flushes.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use maos_comm::{Cursor, FileChannel, Filter};
//! use maos_core::{AgentId, AgentRole, ChannelName, Message, Recipients, Workspace};
//!
//! let dir = tempfile::tempdir()?;
//! let ws = Workspace::init(dir.path())?;
//! let ch = FileChannel::open(&ws, ChannelName::new("backend-frontend")?)?;
//! let me = AgentId::new("frontend-1")?;
//! let r = ch.send_blocking(&Message::new(me, Recipients::Role(AgentRole::backend()), "need /users"))?;
//! assert_eq!(r.position, 1);
//!
//! let backend = Filter::Agent { agent: AgentId::new("b1")?, role: Some(AgentRole::backend()) };
//! let batch = ch.receive_blocking::<String>(&Cursor::start(), &backend)?;
//! assert_eq!(batch.messages[0].message.payload, "need /users");
//! // The next read starts at batch.cursor and finds nothing new.
//! assert!(ch.receive_blocking::<String>(&batch.cursor, &backend)?.messages.is_empty());
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - Single host: kernel locks and inotify events do not cross NFS (a watcher there falls
//!   back to its timer; writers on two hosts would not exclude each other).
//! - A message is visible to readers a moment before its `fdatasync` completes; after a power
//!   cut an unacknowledged message may vanish (acknowledged ones never do).
//! - Retention removes whole segments: [`Retention::Keep`] keeps at least `n` messages.
//! - Recipients are a routing rule, not access control: any process that can read
//!   `.maos/` can read every message.
//! - A consumer name is meant for one reader at a time.

#![warn(clippy::return_self_not_must_use, clippy::await_holding_invalid_type)]

mod broadcast;
mod channel;
mod error;
mod log;
mod pubsub;
mod record;
mod retention;
mod watch;

pub use broadcast::{
    BroadcastChannel, BroadcastNotification, GLOBAL_FEED, TOPIC_PREFIX, topic_channel,
};
pub use channel::{
    Batch, CHANNEL_DATA_DIR, ChannelOptions, ChannelStats, Consumer, DEFAULT_MAX_MESSAGE,
    DEFAULT_SEGMENT_SIZE, Delivered, FileChannel, Filter, Pruned, Receipt,
};
pub use error::{Error, Result};
pub use log::{Cursor, Problem};
pub use pubsub::{Subscription, TopicMessage, TopicPattern};
pub use retention::{PruneReport, Retention, channel_stats, list_channels};
pub use watch::{ChannelWatcher, Notice};

/// Runs the blocking operation `op` on `channel` on tokio's blocking pool: the one way this
/// crate's async methods call their blocking twins, and the one place where a background task
/// that panicked or was cancelled becomes an error ([`Error::Background`]), as `tokio::fs`
/// does with its `asyncify`.
pub(crate) async fn asyncify<F, T>(channel: &str, op: &'static str, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(Error::Background {
            channel: channel.to_string(),
            op,
            reason: e.to_string(),
        }),
    }
}
