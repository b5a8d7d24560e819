//! Identifiers that are generated rather than chosen.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::{Error, Result};

/// Identifies one message. A UUIDv7, so ids sort by creation time (millisecond precision,
/// then random); ordering within a channel is by position, never by id or clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for MessageId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| Error::InvalidName {
                kind: "message id",
                name: s.escape_debug().to_string(),
                reason: e.to_string(),
            })
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Identifies one task: `t` followed by 12 lower-case Crockford base-32 characters (60 random
/// bits), short enough to type, unique enough for millions of tasks. Any valid plain name is
/// also accepted, so callers may choose their own ids.
///
/// ```
/// use maos_core::TaskId;
/// let id = TaskId::new();
/// assert_eq!(id.as_str().len(), 13);
/// assert!(TaskId::parse("../x").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(String);

impl TaskId {
    /// A new random id.
    pub fn new() -> Self {
        let bits = Uuid::new_v4().as_u128();
        let mut s = String::with_capacity(13);
        s.push('t');
        for i in 0..12 {
            s.push(CROCKFORD[((bits >> (i * 5)) & 31) as usize] as char);
        }
        Self(s)
    }

    /// Validates a caller-chosen id (the rules of [`crate::Name`]).
    pub fn parse(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        crate::name::check_plain("task id", &s)?;
        Ok(Self(s))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for TaskId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_sort_by_creation() {
        let ids: Vec<MessageId> = (0..100).map(|_| MessageId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn task_ids_are_valid_names_and_distinct() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| TaskId::new()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(50) {
            assert_eq!(TaskId::parse(id.as_str()).unwrap(), *id);
        }
    }
}
