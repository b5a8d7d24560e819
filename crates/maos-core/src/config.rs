//! Workspace settings: `.maos/config.json`. Every setting is optional and has a default; a
//! missing file means all defaults. Keys this build does not know are kept when the file is
//! rewritten, so a newer maos's settings survive an older one's `maos config set`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Workspace, fsx};

/// Largest config file a reader accepts.
const CONFIG_LIMIT: u64 = 1 << 20;

/// Default idle lease of an agent that has no live anchor: 15 minutes.
pub const DEFAULT_AGENT_LEASE: Duration = Duration::from_secs(15 * 60);

/// The longest idle lease a workspace may set (30 days).
pub const MAX_AGENT_LEASE: Duration = Duration::from_secs(30 * 86_400);

/// The settings of a workspace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Config {
    /// How long an agent with no live anchor stays alive after its last call, in ms
    /// (default [`DEFAULT_AGENT_LEASE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_lease_ms: Option<u64>,
    /// The storage backend: absent (or `"file"`) for the files under `.maos/`, or a
    /// `postgres://user@host/db` URL (never with a password). `MAOS_BACKEND` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The namespace of this workspace on a shared backend (default: derived from the
    /// repository's identity). `MAOS_NAMESPACE` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Claude Code hook settings.
    #[serde(default, skip_serializing_if = "HookConfig::is_default")]
    pub hooks: HookConfig,
    /// Settings this build does not know, kept as they are.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Settings of `maos hook claude`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HookConfig {
    /// The first Edit/Write of a file takes an exclusive lease on it for the editing agent,
    /// later edits renew it.
    #[serde(default)]
    pub auto_lock: bool,
    /// Lease of an auto-lock, in ms (default 10 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_lock_ttl_ms: Option<u64>,
}

impl HookConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The auto-lock lease.
    pub fn auto_lock_ttl(&self) -> Duration {
        Duration::from_millis(self.auto_lock_ttl_ms.unwrap_or(10 * 60 * 1000))
    }
}

impl Config {
    /// The idle lease of agents without a live anchor.
    pub fn agent_lease(&self) -> Duration {
        self.agent_lease_ms
            .map_or(DEFAULT_AGENT_LEASE, Duration::from_millis)
            .min(MAX_AGENT_LEASE)
    }

    /// Reads `.maos/config.json` of `ws` (defaults when it does not exist).
    pub fn load(ws: &Workspace) -> Result<Self> {
        let path = ws.config_path();
        match fsx::read_json::<Self>(&path, CONFIG_LIMIT) {
            Ok(c) => c.validated(&path),
            Err(e) if e.is_not_found() => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Publishes this config as `.maos/config.json` of `ws`.
    pub fn save(&self, ws: &Workspace) -> Result<()> {
        let path = ws.config_path();
        self.clone().validated(&path)?;
        fsx::write_json_replace(&path, self)
    }

    fn validated(self, path: &std::path::Path) -> Result<Self> {
        if let Some(ms) = self.agent_lease_ms
            && (ms == 0 || ms > MAX_AGENT_LEASE.as_millis() as u64)
        {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "agent_lease_ms is {ms}; it must be between 1 and {} (30 days)",
                    MAX_AGENT_LEASE.as_millis()
                ),
            });
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_unknown_keys_survive() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let c = Config::load(&ws).unwrap();
        assert_eq!(c.agent_lease(), DEFAULT_AGENT_LEASE);
        std::fs::write(
            ws.config_path(),
            r#"{"agent_lease_ms": 60000, "future": {"x": 1}, "hooks": {"auto_lock": true}}"#,
        )
        .unwrap();
        let c = Config::load(&ws).unwrap();
        assert_eq!(c.agent_lease(), Duration::from_secs(60));
        assert!(c.hooks.auto_lock);
        c.save(&ws).unwrap();
        let text = std::fs::read_to_string(ws.config_path()).unwrap();
        assert!(text.contains("future"), "{text}");
    }

    #[test]
    fn a_bad_lease_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        std::fs::write(ws.config_path(), r#"{"agent_lease_ms": 0}"#).unwrap();
        let err = Config::load(&ws).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("agent_lease_ms"),
            "{err}"
        );
    }
}
