//! The records of the lock table: holders ([`LockInfo`]), queued waiters ([`WaiterInfo`]) and
//! the document that keeps a key's records together ([`Doc`]).

use std::collections::BTreeMap;

use maos_core::{AgentId, ProcessIdentity, ResourceName};
use serde::{Deserialize, Serialize};

use crate::FencingToken;
use crate::error::HolderSummary;

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// One holder; conflicts with every overlapping lock.
    #[default]
    Exclusive,
    /// Many holders; conflicts only with overlapping exclusive locks.
    Shared,
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        })
    }
}

/// One held lock: the record every reader sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Unique id of this holding (the ticket it was granted under).
    pub id: u64,
    /// The resource (path or pattern).
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The owning agent.
    pub owner: AgentId,
    /// The process that took it (for humans and `lock list`; liveness uses `live`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
    /// The liveness file (`live/<name>`) whose kernel lock keeps the lock alive; `None` for a
    /// lease held by the agent alone (its expiry, or the agent's death, ends it). A `lock run`
    /// lock has a file of its own, inherited by the command: while the command runs and the
    /// process that took the lock (`process`, which renews it) is gone, nobody can renew it,
    /// and the end of the lease does not end the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// When it was granted (ms since the Unix epoch).
    pub acquired_at: u64,
    /// When the lease ends unless renewed (ms since the Unix epoch).
    pub expires_at: u64,
    /// Lease length used by renewals, in ms.
    pub ttl_ms: u64,
    /// Why it is held.
    pub purpose: String,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The fencing token issued with it.
    pub token: FencingToken,
}

impl LockInfo {
    /// True for a lease held by the agent alone (`maos lock acquire`), with no process.
    pub fn is_lease(&self) -> bool {
        self.live.is_none()
    }

    pub(crate) fn summary(&self) -> HolderSummary {
        HolderSummary {
            owner: self.owner.clone(),
            resource: self.resource.clone(),
            mode: self.mode,
            purpose: self.purpose.clone(),
            expires_at: self.expires_at,
            pid: self.live.as_ref().and(self.process.as_ref()).map(|p| p.pid),
            token: self.token,
        }
    }
}

/// One queued waiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterInfo {
    /// Its ticket: the arrival order (smaller is earlier).
    pub ticket: u64,
    /// The resource it waits for.
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The waiting agent.
    pub agent: AgentId,
    /// The waiting process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
    /// Its liveness file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// When it started waiting (ms since the Unix epoch).
    pub since: u64,
    /// Why it wants the lock.
    pub purpose: String,
    /// Set by deadlock resolution: the wait must end with a `Deadlock` error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<Abort>,
}

/// Why deadlock resolution ended a wait, and what the victim should release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    /// The agents in the cycle.
    pub cycle: Vec<AgentId>,
    /// The victim's locks that others in the cycle wait for: release them to let them on.
    #[serde(default)]
    pub release: Vec<ResourceName>,
}

/// Everything held or awaited at one key: for a plain resource its own records, for the key
/// `""` every record on a pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Doc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) holders: Vec<LockInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) waiters: Vec<WaiterInfo>,
}

impl Doc {
    pub(crate) fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// True when it holds an agent lease: every change to it must then be durable.
    pub(crate) fn has_lease(&self) -> bool {
        self.holders.iter().any(LockInfo::is_lease)
    }

    /// The largest ticket, id or token it mentions.
    pub(crate) fn max_id(&self) -> u64 {
        let h = self
            .holders
            .iter()
            .map(|h| h.id.max(h.token.0))
            .max()
            .unwrap_or(0);
        let w = self.waiters.iter().map(|w| w.ticket).max().unwrap_or(0);
        h.max(w)
    }
}

/// The index key of a resource: itself for a plain path, `""` for a pattern.
pub(crate) fn key_of(r: &ResourceName) -> &str {
    if r.is_pattern() { "" } else { r.as_str() }
}

/// The proper prefixes of a plain key, shortest first (`a`, `a/b` for `a/b/c`).
pub(crate) fn prefixes(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('/').map(move |(i, _)| &key[..i])
}

/// The literal prefix of a pattern: its segments before the first one with a glob character
/// (`src/api` for `src/api/**`, `""` for `**/*.rs`).
pub(crate) fn literal_prefix(r: &ResourceName) -> &str {
    let s = r.as_str();
    let mut end = 0;
    for (i, seg) in s.split('/').enumerate() {
        if seg.contains(['*', '?', '[']) {
            break;
        }
        end = if i == 0 {
            seg.len()
        } else {
            end + 1 + seg.len()
        };
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_prefixes_and_literal_prefixes() {
        let r = |s: &str| ResourceName::new(s).unwrap();
        assert_eq!(key_of(&r("src/a.rs")), "src/a.rs");
        assert_eq!(key_of(&r("src/*.rs")), "");
        assert_eq!(prefixes("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(prefixes("a").count(), 0);
        assert_eq!(literal_prefix(&r("src/api/**")), "src/api");
        assert_eq!(literal_prefix(&r("src/*.rs")), "src");
        assert_eq!(literal_prefix(&r("**/*.rs")), "");
        assert_eq!(literal_prefix(&r("a/b?/c")), "a");
    }
}
