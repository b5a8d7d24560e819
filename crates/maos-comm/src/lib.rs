//! Crash-safe message channels for maos: point-to-point and shared channels, broadcast,
//! pub/sub with wildcards, durable consumers, an inbox per agent and live watching, all as
//! plain files under `<workspace>/.maos/channels/`.
//!
//! Start at [`FileChannel`]: [`FileChannel::send`] returns a [`Receipt`] (position and id)
//! only once the message is durable and readable whole, and only accepts what every reader can
//! decode; [`FileChannel::receive`] reads forward from a [`Cursor`] at a cost proportional to
//! what is new. [`ChannelWatcher`] waits for new messages (file events as hints, plus a
//! fallback timer). [`BroadcastChannel`] publishes to topics, [`Subscription`] listens to topic
//! patterns such as `build/*`. [`Consumer`] keeps a named, durable cursor (at-least-once
//! delivery). [`Inbox`] gathers everything addressed to one agent from every channel and its
//! stored topic subscriptions. [`doctor()`] checks and repairs the files. [`ChannelStore`] and
//! [`InboxStore`] are the storage seams the commands use, implemented here on the files
//! ([`FileComm`], [`FileInboxes`]) and by `maos-postgres` on a server.
//!
//! On disk a channel is a segmented append-only log of JSON Lines (`docs/protocol.md`,
//! section 6): writers take the channel's kernel lock, repair a torn tail left by a killed
//! writer, append complete records (position, length, CRC-32, message), release the lock and
//! only then `fdatasync`, so concurrent writers share flushes. Positions are never used twice:
//! they are reserved durably, and after a power loss or damage writers skip past everything
//! that may have been seen, telling readers ([`Gap`]).
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use maos_comm::{Cursor, FileChannel, Filter, Inbox};
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
//!
//! // The same message, in the inbox of an agent addressed by name:
//! ch.send_blocking(&Message::new(AgentId::new("f2")?, Recipients::Agent(AgentId::new("b1")?), 7))?;
//! let mut inbox = Inbox::open(&ws, AgentId::new("b1")?)?;
//! let items = inbox.read(10)?;
//! assert_eq!(items.items.len(), 1); // b1 is not registered, so the role message is not its
//! inbox.ack(&items)?;
//! assert_eq!(inbox.unread()?.total, 0);
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - Single host: kernel locks and inotify events do not cross NFS (a watcher there falls
//!   back to its timer; writers on two hosts would not exclude each other).
//! - A message is visible to readers a moment before its `fdatasync` completes; after a power
//!   cut such an unacknowledged message may vanish (acknowledged ones never do), and its
//!   position is skipped, not reused. A reader that acts durably on what it read must
//!   acknowledge first ([`Consumer::ack`], [`Inbox::ack`] make the records durable).
//! - Positions skip after every restart of the machine (at most [`DEFAULT_RESERVE`] per
//!   channel written before it); [`ChannelStats::count`] counts positions, not messages.
//! - Retention removes whole segments: [`Retention::Keep`] keeps at least `n` messages. The
//!   broadcast feed keeps its newest [`FEED_KEEP_SEGMENTS`] segments.
//! - Recipients are a routing rule, not access control: any process that can read
//!   `.maos/` can read every message.
//! - A consumer name is meant for one reader at a time; an inbox orders items from different
//!   channels by their senders' clocks.

mod broadcast;
mod channel;
mod doctor;
mod envelope;
mod error;
mod inbox;
mod log;
mod pubsub;
mod record;
mod retention;
mod storage;
mod watch;

pub use broadcast::{
    BroadcastChannel, FEED_KEEP_CONFIG_KEY, FEED_KEEP_SEGMENTS, FEED_SEGMENT_SIZE, GLOBAL_FEED,
    SYSTEM_TOPICS, TOPIC_PREFIX, feed_options, topic_channel,
};
pub use channel::{
    Batch, CHANNEL_DATA_DIR, ChannelOptions, ChannelStats, Consumer, DEFAULT_MAX_MESSAGE,
    DEFAULT_RESERVE, DEFAULT_SEGMENT_SIZE, Delivered, FileChannel, Filter, Pruned, Receipt,
    direct_channel,
};
pub use doctor::doctor;
pub use envelope::RawPayload;
pub use error::{Error, Result};
pub use inbox::{DEFAULT_INBOX_BATCH, Inbox, InboxBatch, InboxItem, InboxWatcher, Unread};
pub use log::{Ahead, Cursor, Gap, GapCause, MAX_MESSAGE_LIMIT, Problem};
pub use pubsub::{Subscription, TopicMessage, TopicPattern};
pub use retention::{PruneReport, Retention, channel_stats, list_channels};
pub use storage::{
    AgentInbox, ChannelRead, ChannelReader, ChannelStore, FileComm, FileInboxes, InboxStore,
    InboxWait, Start, TopicRead, TopicReader,
};
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
