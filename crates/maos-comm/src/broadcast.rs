//! [`BroadcastChannel`]: publish on a topic channel plus a notification on the global feed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use maos_core::{AgentId, ChannelName, Message, MessageId, Recipients, Workspace};
use serde::{Deserialize, Serialize};

use crate::{Error, FileChannel, Receipt, Result};

/// The channel of the global notification feed.
pub const GLOBAL_FEED: &str = "broadcast/global";
/// Prefix of topic channels: topic `build/done` lives on channel `broadcast/build/done`.
pub const TOPIC_PREFIX: &str = "broadcast/";

/// The payload of a notification on [`GLOBAL_FEED`]: a message was published on `topic` at
/// `position` of channel `broadcast/<topic>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastNotification {
    /// The topic.
    pub topic: String,
    /// The message's position in the topic channel.
    pub position: u64,
    /// The message's id.
    pub id: MessageId,
}

/// The channel name of a topic (`build/done` -> `broadcast/build/done`).
pub fn topic_channel(topic: &str) -> Result<ChannelName> {
    let invalid = |reason: String| Error::InvalidTopic {
        topic: topic.to_string(),
        reason,
    };
    if topic == "global" {
        return Err(invalid(
            "\"global\" is the notification feed, not a topic".into(),
        ));
    }
    if topic.split('/').any(|s| s == "*" || s == "**") {
        return Err(invalid(
            "wildcards are for subscriptions, not for publishing".into(),
        ));
    }
    ChannelName::new(format!("{TOPIC_PREFIX}{topic}")).map_err(|e| invalid(e.to_string()))
}

/// Publishes to topics. A publisher never needs to know who listens: subscribers read the
/// topic channel (`broadcast/<topic>`) or the global feed ([`GLOBAL_FEED`]), whose
/// notifications name the topic and position of every broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastChannel {
    ws: Workspace,
    sender: AgentId,
    channels: Arc<Mutex<HashMap<String, FileChannel>>>,
}

impl BroadcastChannel {
    /// A publisher acting as `sender`.
    pub fn new(ws: &Workspace, sender: AgentId) -> Self {
        Self {
            ws: ws.clone(),
            sender,
            channels: Arc::default(),
        }
    }

    fn channel(&self, name: ChannelName) -> Result<FileChannel> {
        let mut map = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = map.get(name.as_str()) {
            return Ok(c.clone());
        }
        let c = FileChannel::open(&self.ws, name)?;
        map.insert(c.name().to_string(), c.clone());
        Ok(c)
    }

    /// Publishes `payload` on `broadcast/<topic>` and a notification on `broadcast/global`;
    /// returns the topic message's receipt once both are durable.
    pub fn broadcast_blocking<T: Serialize>(&self, topic: &str, payload: &T) -> Result<Receipt> {
        let _span = tracing::debug_span!("broadcast", topic, agent = %self.sender).entered();
        let topic_ch = self.channel(topic_channel(topic)?)?;
        let msg = Message::new(self.sender.clone(), Recipients::All, payload);
        let receipt = topic_ch.send_blocking(&msg)?;
        let feed =
            self.channel(ChannelName::new(GLOBAL_FEED).map_err(|e| Error::core(GLOBAL_FEED, e))?)?;
        let note = Message::new(
            self.sender.clone(),
            Recipients::All,
            BroadcastNotification {
                topic: topic.to_string(),
                position: receipt.position,
                id: receipt.id,
            },
        );
        feed.send_blocking(&note)?;
        Ok(receipt)
    }

    /// [`BroadcastChannel::broadcast_blocking`] on a blocking thread.
    pub async fn broadcast<T: Serialize>(&self, topic: &str, payload: &T) -> Result<Receipt> {
        // Serialise here so the payload need not be 'static.
        let value = serde_json::to_value(payload).map_err(|source| Error::Serialize {
            channel: format!("{TOPIC_PREFIX}{topic}"),
            source,
        })?;
        let this = self.clone();
        let t = topic.to_string();
        crate::asyncify(topic, "broadcast", move || {
            this.broadcast_blocking(&t, &value)
        })
        .await
    }
}
