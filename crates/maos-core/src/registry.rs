//! The agent registry: `.maos/agents/<id>.json`, one record per agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::{ProcessIdentity, ProcessState};
use crate::{AgentId, AgentRole, Error, Result, Workspace, fsx, now_ms};

/// Largest agent record a reader accepts.
const RECORD_LIMIT: u64 = 64 << 10;

/// How long without a heartbeat before an agent counts as stale, unless told otherwise.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);

/// One agent's entry in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent.
    pub id: AgentId,
    /// Its role, used to route messages addressed to a role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<AgentRole>,
    /// The process that represents the agent (for a CLI registration, the agent's shell).
    pub process: ProcessIdentity,
    /// When the agent registered (ms since the Unix epoch).
    pub started_at: u64,
    /// Its latest heartbeat (ms since the Unix epoch).
    pub last_seen: u64,
    /// The git branch the agent works on, if any (maos-merge maps branches to agents with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The agent's worktree, if not the workspace root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<PathBuf>,
}

/// Whether an agent is still around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Its process runs on this host and its heartbeat is fresh.
    Alive,
    /// Its process is gone (or its pid was reused, or the host rebooted).
    Dead,
    /// On another host with a fresh heartbeat: its process cannot be checked from here.
    UnknownOtherHost,
    /// No heartbeat for longer than the staleness limit.
    StaleHeartbeat,
}

impl AgentRecord {
    /// The liveness verdict: a process known gone on this host is [`Liveness::Dead`]
    /// regardless of heartbeats; otherwise a heartbeat older than `stale_after` makes it
    /// [`Liveness::StaleHeartbeat`].
    pub fn liveness(&self, stale_after: Duration) -> Liveness {
        let stale = now_ms().saturating_sub(self.last_seen) > stale_after.as_millis() as u64;
        match self.process.state() {
            ProcessState::Gone => Liveness::Dead,
            _ if stale => Liveness::StaleHeartbeat,
            ProcessState::Running => Liveness::Alive,
            ProcessState::OtherHost => Liveness::UnknownOtherHost,
        }
    }
}

/// What to register.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The agent.
    pub id: AgentId,
    /// Its role.
    pub role: Option<AgentRole>,
    /// The process representing it (default: the calling process).
    pub process: Option<ProcessIdentity>,
    /// Its git branch.
    pub branch: Option<String>,
    /// Its worktree.
    pub worktree: Option<PathBuf>,
}

impl Registration {
    /// Registers `id` with no role, represented by the calling process.
    pub fn new(id: AgentId) -> Self {
        Self {
            id,
            role: None,
            process: None,
            branch: None,
            worktree: None,
        }
    }

    /// Sets the role.
    pub fn role(mut self, role: AgentRole) -> Self {
        self.role = Some(role);
        self
    }

    /// Sets the representing process.
    pub fn process(mut self, p: ProcessIdentity) -> Self {
        self.process = Some(p);
        self
    }

    /// Sets the git branch.
    pub fn branch(mut self, b: impl Into<String>) -> Self {
        self.branch = Some(b.into());
        self
    }
}

/// The registry's contents: readable records, and the files that could not be read.
#[derive(Debug, Default)]
pub struct AgentList {
    /// Readable records, sorted by id.
    pub agents: Vec<AgentRecord>,
    /// Unreadable files, with the reason (never silently skipped).
    pub problems: Vec<Error>,
}

/// The agent registry of a workspace.
///
/// ```
/// # fn main() -> maos_core::Result<()> {
/// use maos_core::{AgentId, AgentRegistry, AgentRole, Liveness, Registration, Workspace};
/// let dir = tempfile::tempdir().unwrap();
/// let ws = Workspace::init(dir.path())?;
/// let reg = AgentRegistry::new(&ws);
/// let me = AgentId::new("backend-1")?;
/// reg.register(Registration::new(me.clone()).role(AgentRole::backend()))?;
/// assert_eq!(reg.agents_with_role(&AgentRole::backend())?, vec![me.clone()]);
/// assert_eq!(reg.get(&me)?.unwrap().liveness(maos_core::DEFAULT_STALE_AFTER), Liveness::Alive);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    dir: PathBuf,
}

impl AgentRegistry {
    /// The registry of `ws`.
    pub fn new(ws: &Workspace) -> Self {
        Self {
            dir: ws.agents_dir(),
        }
    }

    /// The registry directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &AgentId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Registers (or re-registers) an agent, replacing any earlier record of the same id.
    pub fn register(&self, reg: Registration) -> Result<AgentRecord> {
        let _span = tracing::info_span!("register", agent = %reg.id).entered();
        let now = now_ms();
        let rec = AgentRecord {
            id: reg.id,
            role: reg.role,
            process: reg.process.unwrap_or_else(ProcessIdentity::current),
            started_at: now,
            last_seen: now,
            branch: reg.branch,
            worktree: reg.worktree,
        };
        fsx::create_dir_private(&self.dir)?;
        fsx::write_json_replace(&self.path_of(&rec.id), &rec)?;
        tracing::info!(role = ?rec.role, pid = rec.process.pid, "agent registered");
        Ok(rec)
    }

    /// Records a heartbeat: `last_seen` becomes now.
    pub fn heartbeat(&self, id: &AgentId) -> Result<AgentRecord> {
        let mut rec = self.get(id)?.ok_or_else(|| Error::UnknownAgent {
            agent: id.to_string(),
            path: self.dir.clone(),
        })?;
        rec.last_seen = now_ms();
        fsx::write_json_replace(&self.path_of(id), &rec)?;
        tracing::trace!(agent = %id, "heartbeat");
        Ok(rec)
    }

    /// The record of `id`, if registered.
    pub fn get(&self, id: &AgentId) -> Result<Option<AgentRecord>> {
        let path = self.path_of(id);
        match fsx::read_json::<AgentRecord>(&path, RECORD_LIMIT) {
            Ok(rec) if rec.id == *id => Ok(Some(rec)),
            Ok(rec) => Err(Error::Corrupt {
                path,
                reason: format!("record names agent {} instead", rec.id),
            }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes `id` from the registry. Returns whether it was registered.
    pub fn unregister(&self, id: &AgentId) -> Result<bool> {
        let removed = fsx::remove_if_exists(&self.path_of(id))?;
        if removed {
            fsx::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Every record, sorted by id; unreadable files are listed in [`AgentList::problems`].
    pub fn list(&self) -> Result<AgentList> {
        let mut out = AgentList::default();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("read directory", &self.dir, e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("read directory", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if fsx::is_temp_name(name) {
                continue;
            }
            let path = entry.path();
            let Some(stem) = name.strip_suffix(".json") else {
                out.problems.push(Error::Corrupt {
                    path,
                    reason: "not an agent record (expected <agent>.json)".into(),
                });
                continue;
            };
            match AgentId::new(stem).and_then(|id| self.get(&id)) {
                Ok(Some(rec)) => out.agents.push(rec),
                Ok(None) => {} // removed while listing
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable agent record");
                    out.problems.push(e);
                }
            }
        }
        out.agents.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The role of `id`, if registered with one.
    pub fn role_of(&self, id: &AgentId) -> Result<Option<AgentRole>> {
        Ok(self.get(id)?.and_then(|r| r.role))
    }

    /// The agents registered with `role`, sorted.
    pub fn agents_with_role(&self, role: &AgentRole) -> Result<Vec<AgentId>> {
        Ok(self
            .list()?
            .agents
            .into_iter()
            .filter(|r| r.role.as_ref() == Some(role))
            .map(|r| r.id)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (tempfile::TempDir, AgentRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let reg = AgentRegistry::new(&ws);
        (dir, reg)
    }

    #[test]
    fn a_dead_process_makes_a_dead_agent() {
        let (_d, reg) = registry();
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let ident = ProcessIdentity::of(child.id()).unwrap();
        let id = AgentId::new("worker").unwrap();
        reg.register(Registration::new(id.clone()).process(ident))
            .unwrap();
        assert_eq!(
            reg.get(&id).unwrap().unwrap().liveness(DEFAULT_STALE_AFTER),
            Liveness::Alive
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            reg.get(&id).unwrap().unwrap().liveness(DEFAULT_STALE_AFTER),
            Liveness::Dead
        );
    }

    #[test]
    fn heartbeats_and_staleness() {
        let (_d, reg) = registry();
        let id = AgentId::new("a").unwrap();
        let mut rec = reg.register(Registration::new(id.clone())).unwrap();
        rec.last_seen = 0;
        fsx::write_json_replace(&reg.path_of(&id), &rec).unwrap();
        let rec = reg.get(&id).unwrap().unwrap();
        assert_eq!(
            rec.liveness(Duration::from_secs(1)),
            Liveness::StaleHeartbeat
        );
        let rec = reg.heartbeat(&id).unwrap();
        assert_eq!(rec.liveness(Duration::from_secs(60)), Liveness::Alive);
        let other = AgentRecord {
            process: ProcessIdentity {
                host: "elsewhere.invalid".into(),
                ..rec.process.clone()
            },
            ..rec
        };
        assert_eq!(
            other.liveness(Duration::from_secs(60)),
            Liveness::UnknownOtherHost
        );
    }

    #[test]
    fn corrupt_records_are_reported_not_skipped() {
        let (_d, reg) = registry();
        reg.register(Registration::new(AgentId::new("good").unwrap()))
            .unwrap();
        std::fs::write(reg.dir().join("bad.json"), "{not json").unwrap();
        let list = reg.list().unwrap();
        assert_eq!(list.agents.len(), 1);
        assert_eq!(list.problems.len(), 1);
        assert!(list.problems[0].to_string().contains("bad.json"));
    }

    #[test]
    fn heartbeat_of_an_unknown_agent_is_an_error() {
        let (_d, reg) = registry();
        let err = reg.heartbeat(&AgentId::new("ghost").unwrap()).unwrap_err();
        assert!(err.to_string().contains("ghost"), "{err}");
    }
}
