//! May this agent edit this file now? The decision the Claude Code `PreToolUse` hook (and any
//! other client) asks for before a write, and the record of what the agent last saw, kept by
//! `PostToolUse`.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use maos_core::{AgentId, ResourceName, Workspace, escape_controls, fsx, human_ms, now_ms};
use std::sync::Arc;

use maos_lock::{FileLock, LockInfo, LockMode, LockRequest, LockStore};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Stores, resource_for};

/// Files larger than this are identified by size and modification time instead of content.
const HASH_LIMIT: u64 = 16 << 20;

/// What a check decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum EditDecision {
    /// Go ahead.
    Allow {
        /// The resource the file is (`None`: outside the repository, not coordinated).
        resource: Option<ResourceName>,
        /// Something the agent should know (an auto-lock taken), if anything.
        note: Option<String>,
    },
    /// Do not edit; `reason` says why and what to do instead.
    Deny {
        /// Why, naming the holder, its purpose, its lease and what to do.
        reason: String,
    },
}

enum AutoLock {
    Held(Option<String>),
    Busy(Box<LockInfo>),
}

/// What the agent last saw of a file (`.maos/sessions/<session>.files/<key>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    path: PathBuf,
    fingerprint: String,
    at: u64,
}

/// Edit checks for one agent in one client session.
#[derive(Debug, Clone)]
pub struct EditGuard {
    ws: Workspace,
    /// The lock table (the workspace's files, or another backend's).
    locks: Arc<dyn LockStore>,
    /// True when `locks` is the workspace's files.
    files: bool,
    agent: AgentId,
    session: Option<String>,
    auto_lock: bool,
    auto_lock_ttl: std::time::Duration,
}

impl EditGuard {
    /// Checks for `agent` in client session `session` (the stale-read check needs a session;
    /// without one only locks are checked). Auto-locking follows the workspace config.
    pub fn new(ws: &Workspace, agent: AgentId, session: Option<&str>) -> Result<Self> {
        Self::in_stores(&Stores::files(ws), agent, session)
    }

    /// The same, checking the lock table of `stores` (what the session saw stays in the
    /// workspace's files).
    pub fn in_stores(stores: &Stores, agent: AgentId, session: Option<&str>) -> Result<Self> {
        let ws = stores.workspace();
        let config = maos_core::Config::load(ws)?;
        Ok(Self {
            ws: ws.clone(),
            locks: stores.locks.clone(),
            files: stores.is_files(),
            agent,
            session: session.map(str::to_owned),
            auto_lock: config.hooks.auto_lock,
            auto_lock_ttl: config.hooks.auto_lock_ttl(),
        })
    }

    /// Decides whether the agent may write `file` (absolute) now: not while another agent holds
    /// a lock overlapping it (exact path or pattern, any mode: a write conflicts with readers
    /// too), not when the file changed on disk since this session last read or wrote it. With
    /// auto-locking on, an allowed write takes (or renews) an exclusive lease on the file for
    /// the agent.
    pub fn check(&self, file: &Path) -> Result<EditDecision> {
        let Some(resource) = resource_for(&self.ws, file)? else {
            return Ok(EditDecision::Allow {
                resource: None,
                note: None,
            });
        };
        let holders = self.locks.conflicting(&resource, LockMode::Exclusive)?;
        let (mine, others): (Vec<LockInfo>, Vec<LockInfo>) =
            holders.into_iter().partition(|h| h.owner == self.agent);
        if let Some(h) = others.first() {
            return Ok(EditDecision::Deny {
                reason: locked_reason(&resource, h, others.len()),
            });
        }
        if let Some(reason) = self.stale(file, &resource)? {
            return Ok(EditDecision::Deny { reason });
        }
        let mut note = None;
        if self.auto_lock {
            match self.auto_lock(&resource, &mine)? {
                AutoLock::Held(n) => note = n,
                AutoLock::Busy(h) => {
                    return Ok(EditDecision::Deny {
                        reason: locked_reason(&resource, &h, 1),
                    });
                }
            }
        }
        Ok(EditDecision::Allow {
            resource: Some(resource),
            note,
        })
    }

    /// Takes or renews the agent's exclusive lease on `resource`.
    fn auto_lock(&self, resource: &ResourceName, mine: &[LockInfo]) -> Result<AutoLock> {
        let held = mine
            .iter()
            .any(|h| &h.resource == resource && h.mode == LockMode::Exclusive && h.live.is_none());
        if held {
            self.locks.renew(Some(resource), &self.agent, None)?;
            return Ok(AutoLock::Held(None));
        }
        let purpose = "edit (maos auto-lock)";
        let taken = if self.files {
            let lock = FileLock::new(&self.ws, resource.clone())
                .agent(self.agent.clone())
                .ttl(self.auto_lock_ttl);
            match lock.try_acquire(purpose)? {
                Some(guard) => Some(guard.detach()?),
                None => None,
            }
        } else {
            // One look (no wait) at the backend's table; a lease of the agent alone.
            let mut req = LockRequest::new(
                self.agent.clone(),
                resource.clone(),
                self.auto_lock_ttl,
                std::time::Duration::ZERO,
            );
            req.purpose = purpose.to_owned();
            match self.locks.acquire_lease(&req, Arc::new(|_: &str| {})) {
                Ok(grant) => Some(grant.info),
                Err(e) => {
                    // Busy: said below, naming the holder; anything else is an error.
                    let others = self
                        .locks
                        .conflicting(resource, LockMode::Exclusive)?
                        .into_iter()
                        .any(|h| h.owner != self.agent);
                    if !others {
                        return Err(e.into());
                    }
                    None
                }
            }
        };
        if let Some(info) = taken {
            return Ok(AutoLock::Held(Some(format!(
                "maos locked {resource} for you (token {}, lease {}, renewed by each edit); it is \
                 released when your session ends, or run `maos lock release {resource}`",
                info.token,
                human_ms(info.ttl_ms),
            ))));
        }
        // Someone took it between the check and the acquire.
        let holder = self
            .locks
            .conflicting(resource, LockMode::Exclusive)?
            .into_iter()
            .find(|h| h.owner != self.agent);
        match holder {
            Some(h) => Ok(AutoLock::Busy(Box::new(h))),
            // Only this agent's own locks (held by its processes) are in the way.
            None => Ok(AutoLock::Held(None)),
        }
    }

    /// The reason to refuse when `file` changed since this session last saw it.
    fn stale(&self, file: &Path, resource: &ResourceName) -> Result<Option<String>> {
        let Some(seen_path) = self.seen_path(file)? else {
            return Ok(None);
        };
        let seen: Seen = match fsx::read_json(&seen_path, 64 << 10) {
            Ok(s) => s,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let now = fingerprint(file)?;
        if now.as_deref() == Some(seen.fingerprint.as_str()) {
            return Ok(None);
        }
        let what = if now.is_none() {
            "was deleted"
        } else {
            "changed on disk"
        };
        Ok(Some(format!(
            "maos: {resource} {what} since you last read or wrote it ({} ago), probably by another \
             agent: re-read it first, then make your edit on the current content",
            human_ms(now_ms().saturating_sub(seen.at))
        )))
    }

    /// Records what the file holds now as what this session last saw (after a Read, Edit or
    /// Write). Not durable: losing it costs at most one refused edit.
    pub fn record(&self, file: &Path) -> Result<()> {
        let Some(path) = self.seen_path(file)? else {
            return Ok(());
        };
        let Some(fp) = fingerprint(file)? else {
            fsx::remove_if_exists(&path)?;
            return Ok(());
        };
        let seen = Seen {
            path: file.to_path_buf(),
            fingerprint: fp,
            at: now_ms(),
        };
        fsx::create_dir_private(path.parent().unwrap_or(&path))?;
        let bytes = serde_json::to_vec(&seen).map_err(|source| maos_core::Error::Serialize {
            what: path.display().to_string(),
            source,
        })?;
        fsx::write_replace_unsynced(&path, &bytes)?;
        Ok(())
    }

    /// Renews the agent's auto-lock on `file`, if it holds one.
    pub fn renew(&self, file: &Path) -> Result<()> {
        if !self.auto_lock {
            return Ok(());
        }
        let Some(resource) = resource_for(&self.ws, file)? else {
            return Ok(());
        };
        match self.locks.renew(Some(&resource), &self.agent, None) {
            Ok(_) | Err(maos_lock::Error::NotOwner { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn seen_path(&self, file: &Path) -> Result<Option<PathBuf>> {
        let Some(session) = &self.session else {
            return Ok(None);
        };
        let dir = crate::session::session_dir(&self.ws, session)?;
        let key = fnv64(file.as_os_str().as_encoded_bytes());
        Ok(Some(dir.join(format!("{key:016x}.json"))))
    }
}

fn locked_reason(resource: &ResourceName, h: &LockInfo, count: usize) -> String {
    let purpose = if h.purpose.is_empty() {
        String::new()
    } else {
        format!(", purpose \"{}\"", escape_controls(&h.purpose))
    };
    let on = if &h.resource == resource {
        String::new()
    } else {
        format!(" (through its lock on {})", h.resource)
    };
    let more = if count > 1 {
        format!(" ({} agents hold overlapping locks)", count)
    } else {
        String::new()
    };
    format!(
        "maos: {resource} is locked by agent {owner}{on}{more}: {mode} lock{purpose}, lease \
         {left} left, fencing token {token}. Do not edit it now. Ask them: `maos send direct/{owner} \
         --to {owner} --data '{{\"text\":\"I need {resource}\"}}'`; or wait for it: `maos lock \
         acquire {resource} --wait 10m`; or work on something else first.",
        owner = h.owner,
        mode = match h.mode {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        },
        left = human_ms(h.expires_at.saturating_sub(now_ms())),
        token = h.token,
    )
}

/// What identifies a file's content: a hash of it (FNV-1a 64 and length) for files up to 16 MiB,
/// else its size and modification time. `None` when it does not exist.
fn fingerprint(file: &Path) -> Result<Option<String>> {
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::ReadFile {
                path: file.to_path_buf(),
                source: e,
            });
        }
    };
    if !meta.is_file() {
        return Ok(Some(format!("special:{:?}", meta.file_type())));
    }
    if meta.len() > HASH_LIMIT {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        return Ok(Some(format!("size:{}:mtime:{mtime}", meta.len())));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    let read = std::fs::File::open(file).and_then(|f| f.take(HASH_LIMIT + 1).read_to_end(&mut buf));
    match read {
        Ok(_) => Ok(Some(format!("fnv64:{:016x}:{}", fnv64(&buf), buf.len()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::ReadFile {
            path: file.to_path_buf(),
            source: e,
        }),
    }
}

/// FNV-1a, 64 bits: stable across builds and versions (unlike std's hasher).
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
