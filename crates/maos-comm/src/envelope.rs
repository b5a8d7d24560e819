//! Decoding records into messages the way every reader does, and encoding them so that every
//! reader can decode what a writer accepted.

use maos_core::{AgentId, Message, MessageId, MessageMetadata, Recipients};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::record;
use crate::{Error, Result};

/// A message payload kept exactly as it was sent (its JSON text, byte for byte): large
/// integers, number formats and key order pass through unchanged. Use it as the `T` of
/// [`crate::FileChannel::receive_blocking`] or [`crate::FileChannel::send_blocking`] when a
/// program only forwards payloads (the CLI does).
pub type RawPayload = Box<RawValue>;

/// A record's message with its payload undecoded, plus the topic of a broadcast.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    id: MessageId,
    timestamp: u64,
    sender: AgentId,
    recipients: Recipients,
    payload: RawPayload,
    #[serde(default)]
    metadata: MessageMetadata,
    /// Set on records of the broadcast feed.
    #[serde(default)]
    pub(crate) topic: Option<String>,
}

impl Envelope {
    /// Decodes a record's message bytes.
    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub(crate) fn recipients(&self) -> &Recipients {
        &self.recipients
    }

    pub(crate) fn sender(&self) -> &AgentId {
        &self.sender
    }

    /// The message with its payload decoded as `T`.
    pub(crate) fn into_message<T: DeserializeOwned>(
        self,
    ) -> std::result::Result<Message<T>, serde_json::Error> {
        let payload: T = serde_json::from_str(self.payload.get())?;
        Ok(Message {
            id: self.id,
            timestamp: self.timestamp,
            sender: self.sender,
            recipients: self.recipients,
            payload,
            metadata: self.metadata,
        })
    }
}

/// A broadcast as stored on the feed: the message's own fields plus `topic`, so a reader that
/// decodes a plain [`Message`] gets exactly the message that was published.
#[derive(Serialize)]
struct FeedRecord<'a, T> {
    id: MessageId,
    timestamp: u64,
    sender: &'a AgentId,
    recipients: &'a Recipients,
    payload: &'a T,
    metadata: &'a MessageMetadata,
    topic: &'a str,
}

/// Serialises `msg` (with `topic`, for the broadcast feed) into one line of JSON that every
/// reader can decode, at most `limit` bytes.
pub(crate) fn encode<T: Serialize>(
    channel: &str,
    msg: &Message<T>,
    topic: Option<&str>,
    limit: usize,
) -> Result<Vec<u8>> {
    let ser = |source| Error::Serialize {
        channel: channel.to_string(),
        source,
    };
    let mut bytes = match topic {
        None => serde_json::to_vec(msg).map_err(ser)?,
        Some(topic) => serde_json::to_vec(&FeedRecord {
            id: msg.id,
            timestamp: msg.timestamp,
            sender: &msg.sender,
            recipients: &msg.recipients,
            payload: &msg.payload,
            metadata: &msg.metadata,
            topic,
        })
        .map_err(ser)?,
    };
    if bytes.contains(&b'\n') {
        // Only a pre-serialised payload can put a line break between tokens.
        bytes = record::strip_whitespace(&bytes);
    }
    if bytes.len() > limit {
        return Err(Error::PayloadTooLarge {
            channel: channel.to_string(),
            id: msg.id,
            size: bytes.len(),
            limit,
        });
    }
    // Decode it as the most demanding reader does (every value materialised, with
    // serde_json's nesting limit), so that what is acknowledged is readable by everyone.
    if let Err(e) = serde_json::from_slice::<Message<serde_json::Value>>(&bytes) {
        return Err(Error::Unreadable {
            channel: channel.to_string(),
            id: msg.id,
            reason: e.to_string(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentId {
        AgentId::new("a").unwrap()
    }

    #[test]
    fn raw_payloads_pass_through_byte_for_byte() {
        let raw: RawPayload = serde_json::from_str(
            "{\n \"big\": 123456789012345678901234567890123456789, \"f\": 1.50 }",
        )
        .unwrap();
        let msg = Message::new(agent(), Recipients::All, raw);
        let bytes = encode("c", &msg, None, 1 << 20).unwrap();
        assert!(!bytes.contains(&b'\n'));
        let env = Envelope::decode(&bytes).unwrap();
        let back: Message<RawPayload> = env.into_message().unwrap();
        assert_eq!(
            back.payload.get(),
            r#"{"big":123456789012345678901234567890123456789,"f":1.50}"#
        );
    }

    #[test]
    fn what_no_reader_could_decode_is_refused() {
        let deep: RawPayload =
            serde_json::from_str(&format!("{}{}", "[".repeat(127), "]".repeat(127))).unwrap();
        let err = encode(
            "deep",
            &Message::new(agent(), Recipients::All, deep),
            None,
            1 << 20,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("recursion limit"), "{err}");
        let lone: RawPayload = serde_json::from_str(r#""\ud800""#).unwrap();
        let err = encode(
            "c",
            &Message::new(agent(), Recipients::All, lone),
            None,
            1 << 20,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Unreadable { .. }), "{err}");
        // A little less deep is fine.
        let ok: RawPayload =
            serde_json::from_str(&format!("{}{}", "[".repeat(120), "]".repeat(120))).unwrap();
        encode(
            "c",
            &Message::new(agent(), Recipients::All, ok),
            None,
            1 << 20,
        )
        .unwrap();
    }

    #[test]
    fn feed_records_are_messages_with_a_topic() {
        let msg = Message::new(agent(), Recipients::All, 7);
        let bytes = encode("broadcast/global", &msg, Some("build/done"), 1 << 20).unwrap();
        let plain: Message<i32> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(plain, msg);
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!(env.topic.as_deref(), Some("build/done"));
    }
}
