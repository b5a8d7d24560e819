//! A client session's life: start (name and register the agent, bind the session, tell it
//! what it needs to know), what it holds, end (release and unregister).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use maos_core::{
    AgentId, AgentRecord, AgentRegistry, AgentRole, Anchor, AnchorKind, Name, ProcessIdentity,
    Registration, SessionRecord, TaskId, Workspace, escape_controls, fsx, human_ms, now_ms,
};
use maos_lock::LockInfo;
use maos_track::Task;
use serde::Serialize;

use crate::{AgentName, Result, Stores};

/// The directory of a session's own small state (`.maos/sessions/<session>.files/`).
pub(crate) fn session_dir(ws: &Workspace, session: &str) -> Result<PathBuf> {
    let name = Name::new(session).map_err(|e| match e {
        maos_core::Error::InvalidName { name, reason, .. } => maos_core::Error::InvalidName {
            kind: "session",
            name,
            reason,
        },
        other => other,
    })?;
    Ok(ws.sessions_dir().join(format!("{name}.files")))
}

/// The agent a session acts as: the one bound to it (`.maos/sessions/<session>.json`), else a
/// new name from `name` (called only then).
pub fn agent_of_session(
    ws: &Workspace,
    session: &str,
    name: impl FnOnce() -> Result<AgentName>,
) -> Result<(AgentId, Option<SessionRecord>)> {
    match AgentRegistry::new(ws).session(session)? {
        Some(rec) => Ok((rec.agent.clone(), Some(rec))),
        None => Ok((name()?.agent, None)),
    }
}

/// What an agent holds and claims.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Holdings {
    /// Locks it holds (by a process of it or as a lease).
    pub locks: Vec<LockInfo>,
    /// Tasks assigned to it that are not finished.
    pub tasks: Vec<Task>,
}

impl Holdings {
    /// What `agent` holds now (the file backend).
    pub fn of(ws: &Workspace, agent: &AgentId) -> Result<Self> {
        Self::in_stores(&Stores::files(ws), agent)
    }

    /// What `agent` holds now in `stores`.
    pub fn in_stores(stores: &Stores, agent: &AgentId) -> Result<Self> {
        let locks = stores
            .locks()
            .snapshot()?
            .holders
            .into_iter()
            .filter(|h| &h.owner == agent)
            .collect();
        let tasks = stores
            .tasks(agent)?
            .list()?
            .into_iter()
            .filter(|t| t.status.is_active() && t.assigned_to.as_ref() == Some(agent))
            .collect();
        Ok(Self { locks, tasks })
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty() && self.tasks.is_empty()
    }

    /// One line per lock and task.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for l in &self.locks {
            let _ = writeln!(
                s,
                "- lock {} ({:?}, token {}, lease {} left){}",
                l.resource,
                l.mode,
                l.token,
                human_ms(l.expires_at.saturating_sub(now_ms())),
                purpose(&l.purpose)
            );
        }
        for t in &self.tasks {
            let _ = writeln!(
                s,
                "- task {} \"{}\" ({})",
                t.id,
                escape_controls(&t.name),
                t.status
            );
        }
        s
    }
}

fn purpose(p: &str) -> String {
    if p.is_empty() {
        String::new()
    } else {
        format!(" for \"{}\"", escape_controls(p))
    }
}

/// What starting a session did.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    /// The agent and where its name came from.
    pub name: AgentName,
    /// Its registry record.
    pub record: AgentRecord,
    /// Whether the session was already bound (a resumed session).
    pub resumed: bool,
}

/// Starts (or resumes) client session `session` for the agent `name`: registers the agent
/// anchored on `anchor` (the client process; its end ends the session), with `role` (else the
/// role it had), and binds the session.
pub fn start(
    ws: &Workspace,
    session: &str,
    name: AgentName,
    role: Option<AgentRole>,
    cwd: &Path,
    anchor: Option<ProcessIdentity>,
) -> Result<Started> {
    start_in(&Stores::files(ws), session, name, role, cwd, anchor)
}

/// [`start`] with the agent registered in `stores` (the session binding stays in the
/// workspace's files: it concerns this machine's client).
pub fn start_in(
    stores: &Stores,
    session: &str,
    name: AgentName,
    role: Option<AgentRole>,
    cwd: &Path,
    anchor: Option<ProcessIdentity>,
) -> Result<Started> {
    let reg = AgentRegistry::new(stores.workspace());
    let resumed = reg.session(session)?.is_some();
    let old = stores.agent(&name.agent)?;
    let mut r = Registration::new(name.agent.clone());
    if let Some(role) = role.or_else(|| old.as_ref().and_then(|o| o.role.clone())) {
        r = r.role(role);
    }
    if let Some(old) = &old {
        // Keep what the agent said of itself (branch, worktree).
        r.branch = old.branch.clone();
        r.worktree = old.worktree.clone();
    }
    if r.worktree.is_none()
        && let Some(place) = crate::GitPlace::find(cwd)
        && place.linked
    {
        r.branch = r.branch.or_else(|| place.branch());
        r = r.worktree(place.root);
    }
    let process = anchor.unwrap_or_else(ProcessIdentity::current);
    let record = stores
        .agents()
        .register(r.anchor(Anchor::session(process).in_session(session)))?;
    reg.bind_session(&SessionRecord {
        session: session.to_owned(),
        agent: name.agent.clone(),
        named_from: format!("{:?}", name.named_from).to_lowercase(),
        cwd: Some(cwd.to_path_buf()),
        started_at: now_ms(),
    })?;
    tracing::info!(agent = %name.agent, session, "session started");
    Ok(Started {
        name,
        record,
        resumed,
    })
}

/// What a session should be told when it starts: who it is, what it holds, what others hold.
pub fn briefing(ws: &Workspace, name: &AgentName) -> Result<String> {
    briefing_in(&Stores::files(ws), name)
}

/// [`briefing`] from `stores`.
pub fn briefing_in(stores: &Stores, name: &AgentName) -> Result<String> {
    let me = &name.agent;
    let mut s = format!(
        "You are maos agent `{me}` (named {}). Other agents work in this repository at the same \
         time; maos coordinates you: messages, file locks, a shared task list.\n",
        name.named_from.describe()
    );
    let mine = Holdings::in_stores(stores, me)?;
    if mine.is_empty() {
        s.push_str("You hold no locks and have no claimed task (`maos task claim` takes the next ready one).\n");
    } else {
        s.push_str("You hold:\n");
        s.push_str(&mine.describe());
    }
    let others: Vec<LockInfo> = stores
        .locks()
        .snapshot()?
        .holders
        .into_iter()
        .filter(|h| &h.owner != me)
        .collect();
    if !others.is_empty() {
        s.push_str(
            "Files locked by other agents (your edits of them are refused until released):\n",
        );
        for h in others.iter().take(20) {
            let _ = writeln!(
                s,
                "- {} by {} ({:?}, lease {} left){}",
                h.resource,
                h.owner,
                h.mode,
                human_ms(h.expires_at.saturating_sub(now_ms())),
                purpose(&h.purpose)
            );
        }
        if others.len() > 20 {
            let _ = writeln!(s, "- ... and {} more (`maos lock list`)", others.len() - 20);
        }
    }
    s.push_str(
        "Before editing a file others may touch: `maos lock acquire PATH --ttl 15m --purpose WHY`, \
         then `maos lock release PATH`. Message an agent: `maos send direct/AGENT --to AGENT --data \
         '{\"text\":\"...\"}'`. Finish a task: `maos task done ID`.\n",
    );
    Ok(s)
}

/// What ending a session did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ended {
    /// The agent.
    pub agent: Option<AgentId>,
    /// Leases released.
    pub locks: Vec<LockInfo>,
    /// Claimed tasks released to the queue.
    pub tasks: Vec<TaskId>,
    /// Whether the agent was unregistered (false when another session of it goes on).
    pub unregistered: bool,
}

/// Ends client session `session`: when no other session of its agent runs, releases the
/// agent's leases and claims and unregisters it; otherwise only forgets this session.
pub fn end(ws: &Workspace, session: &str) -> Result<Ended> {
    end_in(&Stores::files(ws), session)
}

/// [`end`] in `stores` (the session binding is in the workspace's files).
pub fn end_in(stores: &Stores, session: &str) -> Result<Ended> {
    let ws = stores.workspace();
    let reg = AgentRegistry::new(ws);
    let Some(bound) = reg.session(session)? else {
        return Ok(Ended::default());
    };
    let agent = bound.agent;
    // Another client session of the agent goes on when an anchor of another bound session
    // (`sessions/<id>.json` naming this agent) still runs. An MCP server's anchor is not a
    // client session: it serves this session and ends with it.
    let others_run = stores.agent(&agent)?.is_some_and(|r| {
        r.anchor_list().iter().any(|a| {
            a.kind == AnchorKind::Session
                && a.session.as_deref().is_some_and(|s| {
                    s != session
                        && reg
                            .session(s)
                            .ok()
                            .flatten()
                            .is_some_and(|b| b.agent == agent)
                })
                && a.process.state() == maos_core::process::ProcessState::Running
        })
    });
    let mut ended = Ended {
        agent: Some(agent.clone()),
        ..Ended::default()
    };
    if others_run {
        if stores.is_files() {
            reg.remove_session(&agent, session)?;
        }
    } else {
        ended.locks = stores.locks().release_agent(&agent)?;
        ended.tasks = stores
            .tasks(&agent)?
            .release_agent(&agent, &format!("released: session of {agent} ended"))?;
        ended.unregistered = stores.agents().unregister(&agent)?;
    }
    reg.unbind_session(session)?;
    let dir = session_dir(ws, session)?;
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            fsx::remove_if_exists(&e.path())?;
        }
        fsx::remove_empty_dir(&dir)?;
    }
    tracing::info!(agent = %agent, session, "session ended");
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NamedFrom;

    fn sleeper() -> (std::process::Child, ProcessIdentity) {
        let c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = ProcessIdentity::of(c.id()).unwrap();
        (c, p)
    }

    #[test]
    fn a_session_end_releases_unless_another_client_session_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let name = AgentName {
            agent: AgentId::new("a").unwrap(),
            named_from: NamedFrom::Env,
        };
        let (mut client, cp) = sleeper();
        start(&ws, "s1", name.clone(), None, dir.path(), Some(cp.clone())).unwrap();
        // An MCP server of the same session registers itself as an anchor: it does not count
        // as another session.
        let (mut mcp, mp) = sleeper();
        AgentRegistry::new(&ws)
            .register(
                Registration::new(name.agent.clone())
                    .anchor(Anchor::session(mp).in_session("mcp-1")),
            )
            .unwrap();
        let ended = end(&ws, "s1").unwrap();
        assert!(ended.unregistered, "{ended:?}");
        // Two client sessions of one agent: ending one keeps the agent.
        start(&ws, "s1", name.clone(), None, dir.path(), Some(cp)).unwrap();
        let (mut other, op) = sleeper();
        start(&ws, "s2", name.clone(), None, dir.path(), Some(op)).unwrap();
        let ended = end(&ws, "s1").unwrap();
        assert!(!ended.unregistered, "{ended:?}");
        assert!(AgentRegistry::new(&ws).get(&name.agent).unwrap().is_some());
        for c in [&mut client, &mut mcp, &mut other] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}
