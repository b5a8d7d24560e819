//! The message envelope shared by every channel.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AgentId, AgentRole, MessageId};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One message: who sent it, to whom, what, and how to treat it.
///
/// `timestamp` is informational (milliseconds since the Unix epoch, the sender's clock); a
/// channel orders messages by the position it assigns, never by timestamp.
///
/// The JSON form is documented in `docs/protocol.md`; fields a newer writer adds are ignored
/// by this reader.
///
/// ```
/// use maos_core::{AgentId, Message, Recipients};
/// let m = Message::new(AgentId::new("a").unwrap(), Recipients::All, "hello");
/// let json = serde_json::to_string(&m).unwrap();
/// let back: Message<String> = serde_json::from_str(&json).unwrap();
/// assert_eq!(back.id, m.id);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message<T> {
    /// Unique, time-ordered id.
    pub id: MessageId,
    /// Milliseconds since the Unix epoch when the sender built the message.
    pub timestamp: u64,
    /// The sending agent.
    pub sender: AgentId,
    /// Who should read it.
    pub recipients: Recipients,
    /// The content.
    pub payload: T,
    /// Priority, correlation and free-form headers.
    #[serde(default)]
    pub metadata: MessageMetadata,
}

impl<T> Message<T> {
    /// A message from `sender` to `recipients` with a fresh id, the current time and default
    /// metadata.
    pub fn new(sender: AgentId, recipients: Recipients, payload: T) -> Self {
        Self {
            id: MessageId::new(),
            timestamp: now_ms(),
            sender,
            recipients,
            payload,
            metadata: MessageMetadata::default(),
        }
    }

    /// Replaces the metadata.
    #[must_use = "the message with the metadata is returned, not set in place"]
    pub fn with_metadata(mut self, metadata: MessageMetadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Maps the payload, keeping the envelope.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Message<U> {
        Message {
            id: self.id,
            timestamp: self.timestamp,
            sender: self.sender,
            recipients: self.recipients,
            payload: f(self.payload),
            metadata: self.metadata,
        }
    }
}

/// Who a message is for.
///
/// JSON: `{"kind":"all"}`, `{"kind":"agent","value":"a1"}`, `{"kind":"group","value":["a1","a2"]}`,
/// `{"kind":"role","value":"backend"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Recipients {
    /// Every reader.
    All,
    /// One agent.
    Agent(AgentId),
    /// Each listed agent.
    Group(Vec<AgentId>),
    /// Every agent that holds the role (resolved through the agent registry).
    Role(AgentRole),
}

impl Recipients {
    /// True when `agent`, holding `role` (if known), is an addressee. The sender of a message
    /// is not implicitly an addressee.
    pub fn includes(&self, agent: &AgentId, role: Option<&AgentRole>) -> bool {
        match self {
            Recipients::All => true,
            Recipients::Agent(a) => a == agent,
            Recipients::Group(g) => g.contains(agent),
            Recipients::Role(r) => role == Some(r),
        }
    }
}

/// How urgent a message (or a task) is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Whenever convenient.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Before normal work.
    High,
    /// Drop everything.
    Critical,
}

/// Envelope metadata: priority, correlation and free-form headers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageMetadata {
    /// How urgent the message is.
    pub priority: Priority,
    /// Groups the messages of one conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<MessageId>,
    /// The message this one answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// Anything else, as strings.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agent() -> impl Strategy<Value = AgentId> {
        "[a-z][a-z0-9_-]{0,12}".prop_map(|s| AgentId::new(s).unwrap())
    }

    fn recipients() -> impl Strategy<Value = Recipients> {
        prop_oneof![
            Just(Recipients::All),
            agent().prop_map(Recipients::Agent),
            proptest::collection::vec(agent(), 0..4).prop_map(Recipients::Group),
            "[a-z]{1,8}".prop_map(|r| Recipients::Role(AgentRole::new(r).unwrap())),
        ]
    }

    proptest! {
        #[test]
        fn envelopes_round_trip_exactly(
            sender in agent(),
            recipients in recipients(),
            payload in any::<String>(),
            ts in any::<u64>(),
            headers in proptest::collection::btree_map("[a-z]{1,5}", any::<String>(), 0..3),
            reply in any::<bool>(),
        ) {
            let mut m = Message::new(sender, recipients, serde_json::json!({ "text": payload }));
            m.timestamp = ts;
            m.metadata.headers = headers;
            if reply {
                m.metadata.reply_to = Some(MessageId::new());
                m.metadata.priority = Priority::High;
            }
            let json = serde_json::to_string(&m).unwrap();
            let back: Message<serde_json::Value> = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &m);
            prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
        }
    }

    #[test]
    fn unknown_fields_from_newer_writers_are_tolerated() {
        let json = r#"{"id":"019a0000-0000-7000-8000-000000000000","timestamp":1,
            "sender":"a","recipients":{"kind":"all"},"payload":1,
            "metadata":{"priority":"high","future":true},"added_in_v2":[1,2]}"#;
        let m: Message<u32> = serde_json::from_str(json).unwrap();
        assert_eq!(m.metadata.priority, Priority::High);
    }

    #[test]
    fn recipients_select_their_readers() {
        let a = AgentId::new("a").unwrap();
        let b = AgentId::new("b").unwrap();
        let backend = AgentRole::backend();
        assert!(Recipients::All.includes(&a, None));
        assert!(Recipients::Agent(a.clone()).includes(&a, None));
        assert!(!Recipients::Agent(a.clone()).includes(&b, None));
        assert!(Recipients::Group(vec![a.clone(), b.clone()]).includes(&b, None));
        assert!(Recipients::Role(backend.clone()).includes(&a, Some(&backend)));
        assert!(!Recipients::Role(backend).includes(&a, Some(&AgentRole::frontend())));
    }
}
