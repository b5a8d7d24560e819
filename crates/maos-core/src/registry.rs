//! The agent registry: `.maos/agents/<id>.json`, one record per agent, and the session map
//! `.maos/sessions/<session>.json`.
//!
//! # Liveness
//! An agent is a name plus the sessions it runs. Its liveness comes from its **anchors**, the
//! processes that stand for it, and falling back on a **lease**:
//! - a *session* anchor is a process whose end ends the agent (an MCP server of its session,
//!   the Claude Code process its hooks run under, a process registered on purpose with
//!   `--pid`, the process of a Rust program that registered itself);
//! - an *ancestor* anchor is what a plain CLI call finds by walking up past shells and
//!   wrappers ([`ProcessIdentity::anchor`]): usually the agent's own client process, but its end
//!   alone is not taken as proof (it may have been a wrapper like `make`);
//! - the lease runs until `lease_until`, and every call by the agent (CLI command, hook, MCP
//!   call) moves it to now + the workspace's idle lease ([`Config::agent_lease`], 15 min).
//!
//! The verdict ([`AgentRecord::liveness`]): alive while any anchor runs on this host; dead at
//! once when a session anchor has ended and none runs; otherwise (anchors on other hosts,
//! ancestors gone, no anchor found) alive until the lease runs out. A short-lived shell that
//! registered and exited is therefore never a death.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::{ProcessIdentity, ProcessState};
use crate::{AgentId, AgentRole, Config, Error, Name, Result, Workspace, fsx, now_ms};

/// Largest agent record a reader accepts.
const RECORD_LIMIT: u64 = 64 << 10;

/// Most anchors kept per agent (the oldest dead ones go first).
const MAX_ANCHORS: usize = 16;

/// Kept for callers of the former heartbeat API: how long without a call before a record
/// counts as stale in listings. Liveness itself follows anchors and the lease.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);

/// How a process stands for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorKind {
    /// Its end ends the agent (unless another anchor runs).
    Session,
    /// Found by walking up from a CLI call; its end alone does not end the agent.
    Ancestor,
}

/// A process standing for an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Session or ancestor.
    pub kind: AnchorKind,
    /// The process.
    pub process: ProcessIdentity,
    /// The client session it belongs to, when known (Claude Code's `session_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When it was recorded (ms since the Unix epoch).
    pub since: u64,
}

impl Anchor {
    /// A session anchor.
    pub fn session(process: ProcessIdentity) -> Self {
        Self {
            kind: AnchorKind::Session,
            process,
            session: None,
            since: now_ms(),
        }
    }

    /// An ancestor anchor.
    pub fn ancestor(process: ProcessIdentity) -> Self {
        Self {
            kind: AnchorKind::Ancestor,
            process,
            session: None,
            since: now_ms(),
        }
    }

    /// Names the client session.
    #[must_use = "returns the changed anchor"]
    pub fn in_session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }
}

/// One agent's entry in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent.
    pub id: AgentId,
    /// Its role, used to route messages addressed to a role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<AgentRole>,
    /// The process that registered the agent (for people; liveness uses `anchors`). A record
    /// without `anchors` (written by an older maos) takes this process as its session anchor.
    pub process: ProcessIdentity,
    /// When the agent registered (ms since the Unix epoch).
    pub started_at: u64,
    /// Its latest call (ms since the Unix epoch).
    pub last_seen: u64,
    /// The git branch the agent works on, if any (maos-merge maps branches to agents with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The agent's worktree, if not the workspace root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree: Option<PathBuf>,
    /// The processes standing for the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchors: Option<Vec<Anchor>>,
    /// The end of its lease (ms since the Unix epoch); 0 in records of an older maos.
    #[serde(default)]
    pub lease_until: u64,
}

/// Whether an agent is still around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// A process standing for it runs on this host.
    Alive,
    /// No anchor runs here, but its lease has not run out (anchors on another host, or only
    /// ancestors that ended, or none found).
    Leased,
    /// A session anchor ended and no anchor runs, or its lease ran out with no anchor running.
    Dead,
}

impl Liveness {
    /// True for [`Liveness::Dead`]: its claims and locks may be released.
    pub fn is_dead(self) -> bool {
        self == Liveness::Dead
    }
}

impl AgentRecord {
    /// The anchors, including the implicit one of an older record.
    pub fn anchor_list(&self) -> std::borrow::Cow<'_, [Anchor]> {
        match &self.anchors {
            Some(a) => a.as_slice().into(),
            None => vec![Anchor {
                kind: AnchorKind::Session,
                process: self.process.clone(),
                session: None,
                since: self.started_at,
            }]
            .into(),
        }
    }

    /// The liveness verdict now (see the module documentation).
    pub fn liveness(&self) -> Liveness {
        self.liveness_at(now_ms())
    }

    /// The liveness verdict at `now` (ms since the Unix epoch).
    pub fn liveness_at(&self, now: u64) -> Liveness {
        let mut session_ended = false;
        for a in self.anchor_list().iter() {
            match a.process.state() {
                ProcessState::Running => return Liveness::Alive,
                ProcessState::Gone => session_ended |= a.kind == AnchorKind::Session,
                ProcessState::OtherHost => {}
            }
        }
        if session_ended {
            Liveness::Dead
        } else if now < self.lease_until {
            Liveness::Leased
        } else {
            Liveness::Dead
        }
    }

    /// The anchor that keeps it alive now, if any.
    pub fn live_anchor(&self) -> Option<Anchor> {
        self.anchor_list()
            .iter()
            .find(|a| a.process.state() == ProcessState::Running)
            .cloned()
    }

    /// Time left on the lease at `now` (zero once it ran out).
    pub fn lease_left(&self, now: u64) -> Duration {
        Duration::from_millis(self.lease_until.saturating_sub(now))
    }
}

/// What to register.
#[derive(Debug, Clone)]
#[must_use = "a registration does nothing until passed to AgentRegistry::register"]
pub struct Registration {
    /// The agent.
    pub id: AgentId,
    /// Its role.
    pub role: Option<AgentRole>,
    /// The process standing for it (default: the calling process, as a session anchor).
    pub anchor: Option<Anchor>,
    /// Its git branch.
    pub branch: Option<String>,
    /// Its worktree.
    pub worktree: Option<PathBuf>,
    /// Its idle lease (default: the workspace's [`Config::agent_lease`]).
    pub lease: Option<Duration>,
}

impl Registration {
    /// Registers `id` with no role, anchored by the calling process.
    pub fn new(id: AgentId) -> Self {
        Self {
            id,
            role: None,
            anchor: None,
            branch: None,
            worktree: None,
            lease: None,
        }
    }

    /// Sets the role.
    pub fn role(mut self, role: AgentRole) -> Self {
        self.role = Some(role);
        self
    }

    /// Anchors the agent on `p` as a session anchor: the agent ends when `p` ends.
    pub fn process(mut self, p: ProcessIdentity) -> Self {
        self.anchor = Some(Anchor::session(p));
        self
    }

    /// Sets the anchor.
    pub fn anchor(mut self, a: Anchor) -> Self {
        self.anchor = Some(a);
        self
    }

    /// Sets the git branch.
    pub fn branch(mut self, b: impl Into<String>) -> Self {
        self.branch = Some(b.into());
        self
    }

    /// Sets the worktree.
    pub fn worktree(mut self, w: impl Into<PathBuf>) -> Self {
        self.worktree = Some(w.into());
        self
    }

    /// Sets the idle lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// Which agent a client session acts as (`.maos/sessions/<session>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The client's session id.
    pub session: String,
    /// The agent it acts as.
    pub agent: AgentId,
    /// Where the agent was named from (`MAOS_AGENT_ID`, `branch`, `worktree`, `session`).
    pub named_from: String,
    /// The session's working directory when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// When it started (ms since the Unix epoch).
    pub started_at: u64,
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
/// assert_eq!(reg.liveness_of(&me)?, Some(Liveness::Alive));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    ws: Workspace,
    dir: PathBuf,
    sessions: PathBuf,
}

/// The registry's kernel lock, taken by every read-modify-write of a record.
const LOCK_NAME: &str = ".lock";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Keeps at most [`MAX_ANCHORS`], dropping the oldest first.
fn trim_anchors(anchors: &mut Vec<Anchor>) {
    if anchors.len() > MAX_ANCHORS {
        anchors.sort_by_key(|a| a.since);
        let extra = anchors.len() - MAX_ANCHORS;
        anchors.drain(..extra);
    }
}

/// Whether `a` should be added to `anchors`: it is new, and it is a session anchor or no
/// session anchor runs (while one runs, the agent's life is its session's; the processes a
/// CLI call finds above its shell add nothing).
fn wanted(anchors: &[Anchor], a: &Anchor) -> bool {
    !anchors.iter().any(|x| x.process == a.process)
        && (a.kind == AnchorKind::Session
            || !anchors.iter().any(|x| {
                x.kind == AnchorKind::Session && x.process.state() == ProcessState::Running
            }))
}

/// Whether a call must rewrite the record (see [`AgentRegistry::touch`]).
fn needs_write(rec: &AgentRecord, anchor: Option<&Anchor>, lease: Duration, now: u64) -> bool {
    if rec.anchors.is_none() {
        return true;
    }
    if anchor.is_some_and(|a| wanted(&rec.anchor_list(), a)) {
        return true;
    }
    let lease = millis(lease);
    let slack = (lease / 10).min(60_000);
    now.saturating_add(lease).saturating_sub(rec.lease_until) > slack
}

impl AgentRegistry {
    /// The registry of `ws`.
    pub fn new(ws: &Workspace) -> Self {
        Self {
            ws: ws.clone(),
            dir: ws.agents_dir(),
            sessions: ws.sessions_dir(),
        }
    }

    /// The registry directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &AgentId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Registers (or re-registers) an agent, replacing any earlier record of the same id but
    /// keeping the anchors of it that still run.
    pub fn register(&self, reg: Registration) -> Result<AgentRecord> {
        let _span = tracing::info_span!("register", agent = %reg.id).entered();
        let now = now_ms();
        let lease = match reg.lease {
            Some(l) => l,
            None => self.config_lease()?,
        };
        fsx::create_dir_private(&self.dir)?;
        let lock = self.lock()?;
        let _g = lock.exclusive(fsx::DEFAULT_GUARD_TIMEOUT)?;
        let anchor = reg
            .anchor
            .unwrap_or_else(|| Anchor::session(ProcessIdentity::current()));
        let mut anchors: Vec<Anchor> = match self.get(&reg.id) {
            Ok(Some(old)) => old
                .anchor_list()
                .iter()
                .filter(|a| a.process.state() != ProcessState::Gone)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        anchors.retain(|a| a.process != anchor.process);
        let process = anchor.process.clone();
        anchors.push(anchor);
        trim_anchors(&mut anchors);
        let rec = AgentRecord {
            id: reg.id,
            role: reg.role,
            process,
            started_at: now,
            last_seen: now,
            branch: reg.branch,
            worktree: reg.worktree,
            anchors: Some(anchors),
            lease_until: now.saturating_add(millis(lease)),
        };
        fsx::write_json_replace(&self.path_of(&rec.id), &rec)?;
        tracing::info!(role = ?rec.role, pid = rec.process.pid, "agent registered");
        Ok(rec)
    }

    /// Records a call by a registered agent: renews its lease and adds `anchor` (when given
    /// and new). Cheap when nothing changes: the record is rewritten only when an anchor is
    /// added or removed, or the lease has less than its length minus a minute (a tenth for
    /// short leases) left, so an agent making many calls writes about once a minute.
    /// Returns `None` for an agent that is not registered (it is not registered by this).
    /// `anchor` is called only for a registered agent (finding one walks `/proc`).
    pub fn touch(
        &self,
        id: &AgentId,
        anchor: impl FnOnce() -> Option<Anchor>,
    ) -> Result<Option<AgentRecord>> {
        let Some(rec) = self.get(id)? else {
            return Ok(None);
        };
        let anchor = anchor();
        let lease = self.config_lease()?;
        if !needs_write(&rec, anchor.as_ref(), lease, now_ms()) {
            return Ok(Some(rec));
        }
        let lock = self.lock()?;
        let _g = lock.exclusive(fsx::DEFAULT_GUARD_TIMEOUT)?;
        // Re-read under the lock: another process of the agent may have written meanwhile.
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        let now = now_ms();
        let mut anchors = rec.anchor_list().into_owned();
        if let Some(a) = anchor.filter(|a| wanted(&anchors, a)) {
            anchors.push(a);
        }
        if anchors
            .iter()
            .any(|a| a.process.state() == ProcessState::Running)
        {
            anchors.retain(|a| a.process.state() != ProcessState::Gone);
        }
        trim_anchors(&mut anchors);
        rec.anchors = Some(anchors);
        rec.last_seen = now;
        rec.lease_until = now.saturating_add(millis(lease));
        fsx::write_json_replace(&self.path_of(id), &rec)?;
        tracing::trace!(agent = %id, "lease renewed");
        Ok(Some(rec))
    }

    /// Renews the lease of a registered agent (an error for an unknown one).
    pub fn heartbeat(&self, id: &AgentId) -> Result<AgentRecord> {
        let lease = self.config_lease()?;
        let lock = self.lock()?;
        let _g = lock.exclusive(fsx::DEFAULT_GUARD_TIMEOUT)?;
        let mut rec = self.get(id)?.ok_or_else(|| Error::UnknownAgent {
            agent: id.to_string(),
            path: self.dir.clone(),
        })?;
        let now = now_ms();
        rec.last_seen = now;
        rec.lease_until = now.saturating_add(millis(lease));
        fsx::write_json_replace(&self.path_of(id), &rec)?;
        tracing::trace!(agent = %id, "heartbeat");
        Ok(rec)
    }

    /// Removes the anchors of client session `session` from `id`'s record (the session ended
    /// while another session of the agent goes on). Returns the record as written.
    pub fn remove_session(&self, id: &AgentId, session: &str) -> Result<Option<AgentRecord>> {
        let lock = self.lock()?;
        let _g = lock.exclusive(fsx::DEFAULT_GUARD_TIMEOUT)?;
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        let mut anchors = rec.anchor_list().into_owned();
        anchors.retain(|a| a.session.as_deref() != Some(session));
        rec.anchors = Some(anchors);
        fsx::write_json_replace(&self.path_of(id), &rec)?;
        Ok(Some(rec))
    }

    /// The liveness of `id`, or `None` when it is not registered.
    pub fn liveness_of(&self, id: &AgentId) -> Result<Option<Liveness>> {
        Ok(self.get(id)?.map(|r| r.liveness()))
    }

    fn config_lease(&self) -> Result<Duration> {
        Ok(Config::load(&self.ws)?.agent_lease())
    }

    fn lock(&self) -> Result<fsx::LockFile> {
        fsx::LockFile::open(&self.dir.join(LOCK_NAME))
    }

    /// Binds a client session to an agent (`.maos/sessions/<session>.json`), replacing an
    /// earlier binding of the same session.
    pub fn bind_session(&self, rec: &SessionRecord) -> Result<()> {
        let path = self.session_path(&rec.session)?;
        fsx::create_dir_private(&self.sessions)?;
        fsx::write_json_replace(&path, rec)
    }

    /// The agent a client session acts as, if bound.
    pub fn session(&self, session: &str) -> Result<Option<SessionRecord>> {
        let path = self.session_path(session)?;
        match fsx::read_json::<SessionRecord>(&path, RECORD_LIMIT) {
            Ok(r) if r.session == session => Ok(Some(r)),
            Ok(r) => Err(Error::Corrupt {
                path,
                reason: format!("record names session {} instead", r.session),
            }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a session binding. Returns whether it existed.
    pub fn unbind_session(&self, session: &str) -> Result<bool> {
        let removed = fsx::remove_if_exists(&self.session_path(session)?)?;
        if removed {
            fsx::sync_dir(&self.sessions)?;
        }
        Ok(removed)
    }

    fn session_path(&self, session: &str) -> Result<PathBuf> {
        let name = Name::new(session).map_err(|e| match e {
            Error::InvalidName { name, reason, .. } => Error::InvalidName {
                kind: "session",
                name,
                reason,
            },
            other => other,
        })?;
        Ok(self.sessions.join(format!("{name}.json")))
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
            if fsx::is_temp_name(name) || name == LOCK_NAME {
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
                    tracing::debug!(path = %path.display(), error = &e as &dyn std::error::Error, "unreadable agent record (returned to the caller)");
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

    fn sleeper() -> (std::process::Child, ProcessIdentity) {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let ident = ProcessIdentity::of(child.id()).unwrap();
        (child, ident)
    }

    fn end(mut child: std::process::Child) {
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_session_anchor_that_ends_ends_the_agent_at_once() {
        let (_d, reg) = registry();
        let (child, ident) = sleeper();
        let id = AgentId::new("worker").unwrap();
        reg.register(Registration::new(id.clone()).process(ident))
            .unwrap();
        assert_eq!(reg.liveness_of(&id).unwrap(), Some(Liveness::Alive));
        end(child);
        // The lease has 15 minutes left, yet the session is over.
        assert_eq!(reg.liveness_of(&id).unwrap(), Some(Liveness::Dead));
    }

    #[test]
    fn an_ancestor_that_ends_leaves_the_lease() {
        let (_d, reg) = registry();
        let (child, ident) = sleeper();
        let id = AgentId::new("shell-user").unwrap();
        reg.register(Registration::new(id.clone()).anchor(Anchor::ancestor(ident)))
            .unwrap();
        assert_eq!(reg.liveness_of(&id).unwrap(), Some(Liveness::Alive));
        end(child);
        let rec = reg.get(&id).unwrap().unwrap();
        assert_eq!(rec.liveness(), Liveness::Leased);
        assert_eq!(rec.liveness_at(rec.lease_until), Liveness::Dead);
    }

    #[test]
    fn another_hosts_anchor_counts_through_the_lease() {
        let (_d, reg) = registry();
        let id = AgentId::new("remote").unwrap();
        let elsewhere = ProcessIdentity {
            host: "elsewhere.invalid".into(),
            ..ProcessIdentity::current()
        };
        let rec = reg
            .register(Registration::new(id.clone()).process(elsewhere))
            .unwrap();
        assert_eq!(rec.liveness(), Liveness::Leased);
        assert_eq!(rec.liveness_at(rec.lease_until + 1), Liveness::Dead);
    }

    #[test]
    fn touch_renews_the_lease_and_adds_anchors_but_rarely_writes() {
        let (_d, reg) = registry();
        let id = AgentId::new("a").unwrap();
        let me = ProcessIdentity::current();
        let mut rec = reg
            .register(Registration::new(id.clone()).anchor(Anchor::ancestor(me)))
            .unwrap();
        // An old lease is renewed.
        rec.lease_until = 1;
        fsx::write_json_replace(&reg.path_of(&id), &rec).unwrap();
        let rec = reg.touch(&id, || None).unwrap().unwrap();
        assert!(rec.lease_until > now_ms());
        // A fresh one is not rewritten.
        let again = reg.touch(&id, || None).unwrap().unwrap();
        assert_eq!(again, rec);
        // A new anchor is added; the record keeps the running ones.
        let (child, ident) = sleeper();
        let rec = reg
            .touch(&id, || Some(Anchor::ancestor(ident.clone())))
            .unwrap()
            .unwrap();
        assert!(rec.anchor_list().iter().any(|a| a.process == ident));
        assert_eq!(rec.anchor_list().len(), 2);
        end(child);
        // While a session anchor runs, ancestors found by CLI calls are not added.
        let s = AgentId::new("in-session").unwrap();
        reg.register(Registration::new(s.clone())).unwrap();
        let (child, ident) = sleeper();
        let rec = reg
            .touch(&s, || Some(Anchor::ancestor(ident.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(rec.anchor_list().len(), 1);
        end(child);
        // Unknown agents are not registered by a touch.
        assert!(
            reg.touch(&AgentId::new("ghost").unwrap(), || None)
                .unwrap()
                .is_none()
        );
        assert!(reg.get(&AgentId::new("ghost").unwrap()).unwrap().is_none());
    }

    #[test]
    fn an_older_record_is_anchored_by_its_process() {
        let (_d, reg) = registry();
        let (child, ident) = sleeper();
        let json = serde_json::json!({
            "id": "old", "process": ident, "started_at": 1, "last_seen": 1
        });
        std::fs::write(reg.dir().join("old.json"), json.to_string()).unwrap();
        let id = AgentId::new("old").unwrap();
        assert_eq!(reg.liveness_of(&id).unwrap(), Some(Liveness::Alive));
        end(child);
        assert_eq!(reg.liveness_of(&id).unwrap(), Some(Liveness::Dead));
    }

    #[test]
    fn sessions_map_to_agents_and_hostile_ids_are_refused() {
        let (_d, reg) = registry();
        let rec = SessionRecord {
            session: "3f2b-11aa".into(),
            agent: AgentId::new("a").unwrap(),
            named_from: "MAOS_AGENT_ID".into(),
            cwd: None,
            started_at: 1,
        };
        reg.bind_session(&rec).unwrap();
        assert_eq!(reg.session("3f2b-11aa").unwrap(), Some(rec));
        assert!(reg.session("nope").unwrap().is_none());
        let err = reg.session("../../etc/passwd").unwrap_err().to_string();
        assert!(err.contains("session"), "{err}");
        assert!(reg.unbind_session("3f2b-11aa").unwrap());
    }

    #[test]
    fn acknowledged_registrations_survive_any_power_cut() {
        use crate::fsx::sim::Recording;
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let reg = AgentRegistry::new(&ws);
        let rec = Recording::start(ws.maos_dir()).unwrap();
        // (op index when it began, when it was acknowledged, the entity, present afterwards?)
        let mut acked: Vec<(usize, usize, String, bool)> = Vec::new();
        for i in 0..12u64 {
            let id = AgentId::new(format!("agent-{}", i % 5)).unwrap();
            let mut r = Registration::new(id.clone()).branch(format!("b{i}"));
            if i % 3 == 0 {
                r = r.role(AgentRole::new("dev").unwrap());
            }
            let began = rec.len();
            reg.register(r).unwrap();
            acked.push((began, rec.len(), id.to_string(), true));
            if i % 4 == 1 {
                let began = rec.len();
                reg.bind_session(&SessionRecord {
                    session: format!("s{i}"),
                    agent: id.clone(),
                    named_from: "env".into(),
                    cwd: None,
                    started_at: i,
                })
                .unwrap();
                acked.push((began, rec.len(), format!("session:s{i}"), true));
            }
            if i % 5 == 4 {
                let began = rec.len();
                reg.unregister(&AgentId::new("agent-0").unwrap()).unwrap();
                acked.push((began, rec.len(), "agent-0".into(), false));
            }
        }
        let cuts = if std::env::var_os("MAOS_SLOW_TESTS").is_some_and(|v| v == "1") {
            3000
        } else {
            300
        };
        for seed in 0..cuts {
            let cut = rec.random_cut(seed);
            let img = tempfile::tempdir().unwrap();
            rec.image(&cut, img.path()).unwrap();
            // The image is a .maos/ directory: reopen it as a workspace.
            let root = tempfile::tempdir().unwrap();
            std::fs::rename(img.path(), root.path().join(crate::MAOS_DIR)).unwrap();
            let ws2 = Workspace::open(root.path()).unwrap();
            let reg2 = AgentRegistry::new(&ws2);
            // Nothing partial: every record parses.
            let list = reg2.list().unwrap();
            assert!(list.problems.is_empty(), "cut {cut:?}: {:?}", list.problems);
            // Each entity is as its latest acknowledged change left it, or as a change in
            // flight at the cut (begun, not acknowledged) left it.
            let entities: std::collections::BTreeSet<&String> =
                acked.iter().map(|(_, _, e, _)| e).collect();
            for e in entities {
                let mut allowed = std::collections::BTreeSet::new();
                let latest = acked
                    .iter()
                    .rfind(|(_, ack, x, _)| x == e && *ack <= cut.at);
                match latest {
                    Some((_, _, _, present)) => allowed.insert(*present),
                    None => allowed.insert(false),
                };
                for (began, ack, x, present) in &acked {
                    if x == e && *began < cut.at && *ack > cut.at {
                        allowed.insert(*present);
                    }
                }
                let present = match e.strip_prefix("session:") {
                    Some(s) => reg2.session(s).unwrap().is_some(),
                    None => reg2.get(&AgentId::new(e).unwrap()).unwrap().is_some(),
                };
                assert!(
                    allowed.contains(&present),
                    "cut {cut:?}: {e} present={present}, allowed {allowed:?}\n{}",
                    rec.describe()
                );
            }
        }
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
