//! [`BroadcastChannel`]: publishing on topics. A broadcast is one record on the broadcast feed
//! (`broadcast/global`): the message itself plus its `topic`, appended once, so it is
//! acknowledged exactly when it is durable and every subscriber (exact topic or wildcard) reads
//! it from the same place, once.

use std::sync::{Arc, Mutex};

use maos_core::{AgentId, ChannelName, Message, MessageId, Recipients, Workspace};
use serde::Serialize;

use crate::envelope;
use crate::{ChannelOptions, Error, FileChannel, Receipt, Result, Retention};

/// The broadcast feed: every broadcast, in one total order.
pub const GLOBAL_FEED: &str = "broadcast/global";
/// Prefix of topic views: topic `build/done` is readable as channel `broadcast/build/done`.
pub const TOPIC_PREFIX: &str = "broadcast/";
/// Segment size of the broadcast feed: 4 MiB.
pub const FEED_SEGMENT_SIZE: u64 = 4 << 20;
/// Segments of the broadcast feed kept by default (16 x 4 MiB: the newest 48-64 MiB of
/// broadcasts); `.maos/config.json` key `broadcast_keep_segments` changes it.
pub const FEED_KEEP_SEGMENTS: usize = 16;
/// The `.maos/config.json` key that sets how many feed segments are kept.
pub const FEED_KEEP_CONFIG_KEY: &str = "broadcast_keep_segments";

/// The channel name of a topic's read-only view (`build/done` -> `broadcast/build/done`).
///
/// # Errors
/// [`Error::InvalidTopic`] for `global` (the feed itself), wildcards, and names that are not
/// valid channel names.
pub fn topic_channel(topic: &str) -> Result<ChannelName> {
    let invalid = |reason: String| Error::InvalidTopic {
        topic: topic.to_string(),
        reason,
    };
    if topic == "global" {
        return Err(invalid(
            "\"global\" is the broadcast feed, not a topic".into(),
        ));
    }
    if topic.split('/').any(|s| s == "*" || s == "**") {
        return Err(invalid(
            "wildcards are for subscriptions, not for publishing".into(),
        ));
    }
    ChannelName::new(format!("{TOPIC_PREFIX}{topic}")).map_err(|e| invalid(e.to_string()))
}

/// The options of the broadcast feed in `ws`: small segments, and pruning that keeps the
/// newest [`FEED_KEEP_SEGMENTS`] of them (or the workspace's `broadcast_keep_segments`).
pub fn feed_options(ws: &Workspace) -> ChannelOptions {
    let keep = maos_core::Config::load(ws)
        .ok()
        .and_then(|c| {
            c.other
                .get(FEED_KEEP_CONFIG_KEY)
                .and_then(serde_json::Value::as_u64)
        })
        .map_or(FEED_KEEP_SEGMENTS, |n| {
            usize::try_from(n).unwrap_or(usize::MAX).max(1)
        });
    ChannelOptions::default()
        .segment_size(FEED_SEGMENT_SIZE)
        .retain(Some(Retention::Segments(keep)))
}

/// Topics maos's own mechanisms publish on (and everything under them): `tasks` (the task
/// store's changes), `deadlock` (the deadlock detector's cycles) and `dashboard` (actions
/// taken from the dashboard). Readers act on them, so only a publisher marked
/// [`BroadcastChannel::system`] may publish there; the CLI and the MCP server never are.
pub const SYSTEM_TOPICS: &[&str] = &["tasks", "deadlock", "dashboard"];

/// The system topic `topic` is, or falls under.
fn system_topic(topic: &str) -> Option<&'static str> {
    SYSTEM_TOPICS.iter().copied().find(|t| {
        topic == *t
            || topic
                .strip_prefix(t)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The broadcast feed of `ws`.
pub(crate) fn open_feed(ws: &Workspace, options: ChannelOptions) -> Result<FileChannel> {
    let name = ChannelName::new(GLOBAL_FEED).map_err(|e| Error::core(GLOBAL_FEED, e))?;
    FileChannel::open_with(ws, name, options)
}

/// Publishes to topics. A publisher never needs to know who listens: subscribers read the
/// feed ([`GLOBAL_FEED`]) and pick the topics they want ([`crate::Subscription`], or the
/// read-only channel `broadcast/<topic>`).
#[derive(Debug, Clone)]
pub struct BroadcastChannel {
    ws: Workspace,
    sender: AgentId,
    options: ChannelOptions,
    feed: Arc<Mutex<Option<FileChannel>>>,
    system: bool,
}

impl BroadcastChannel {
    /// A publisher acting as `sender` (the feed is opened on the first broadcast).
    pub fn new(ws: &Workspace, sender: AgentId) -> Self {
        Self::with_options(ws, sender, feed_options(ws))
    }

    /// A publisher whose feed handle uses `options`.
    pub fn with_options(ws: &Workspace, sender: AgentId, options: ChannelOptions) -> Self {
        Self {
            ws: ws.clone(),
            sender,
            options,
            feed: Arc::default(),
            system: false,
        }
    }

    /// Marks this publisher as one of maos's own mechanisms, allowed to publish on the
    /// [`SYSTEM_TOPICS`]. For the task store, the deadlock detector and the dashboard.
    #[must_use = "returns the changed publisher"]
    pub fn system(mut self) -> Self {
        self.system = true;
        self
    }

    /// The feed (opened, and its directory created, on first use).
    pub fn feed(&self) -> Result<FileChannel> {
        let mut slot = self
            .feed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = slot.as_ref() {
            return Ok(f.clone());
        }
        let f = open_feed(&self.ws, self.options.clone())?;
        *slot = Some(f.clone());
        Ok(f)
    }

    fn encode<T: Serialize>(&self, topic: &str, payload: &T) -> Result<(Vec<u8>, MessageId)> {
        topic_channel(topic)?;
        if let Some(owner) = system_topic(topic).filter(|_| !self.system) {
            return Err(Error::InvalidTopic {
                topic: topic.to_string(),
                reason: format!(
                    "topic {owner:?} is published by maos itself (readers act on it); \
                     choose another topic"
                ),
            });
        }
        let msg = Message::new(self.sender.clone(), Recipients::All, payload);
        let bytes = envelope::encode(GLOBAL_FEED, &msg, Some(topic), self.options.max_message)?;
        Ok((bytes, msg.id))
    }

    /// Publishes `payload` on `topic`: one record on the feed. Returns its receipt (position
    /// on the feed, id) once it is durable.
    ///
    /// # Errors
    /// [`Error::InvalidTopic`] (also for a [`SYSTEM_TOPICS`] topic unless this publisher is
    /// [`BroadcastChannel::system`]); those of [`FileChannel::send`].
    pub fn broadcast_blocking<T: Serialize>(&self, topic: &str, payload: &T) -> Result<Receipt> {
        let _span = tracing::debug_span!("broadcast", topic, agent = %self.sender).entered();
        let (bytes, id) = self.encode(topic, payload)?;
        self.feed()?.append_bytes(&[&bytes], id)
    }

    /// [`BroadcastChannel::broadcast_blocking`] on a blocking thread.
    pub async fn broadcast<T: Serialize>(&self, topic: &str, payload: &T) -> Result<Receipt> {
        // Encode here (no I/O) so the payload need not be 'static.
        let (bytes, id) = self.encode(topic, payload)?;
        let this = self.clone();
        crate::asyncify(topic, "broadcast", move || {
            this.feed()?.append_bytes(&[&bytes], id)
        })
        .await
    }
}
