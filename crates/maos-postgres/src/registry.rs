//! The agent registry on PostgreSQL: the records maos-core defines
//! ([`maos_core::AgentRecord`]), with leases on the server's clock and a session anchor that
//! every machine can check: an agent registered by a process anchored on its database
//! session is alive exactly while that session lasts.

use std::time::Duration;

use maos_core::{
    AgentId, AgentRecord, AgentRole, Anchor, AnchorKind, Liveness, ProcessIdentity, Registration,
};

use crate::conn::Exec;
use crate::{Error, Pg, Result};

/// The registry of a namespace.
#[derive(Debug, Clone)]
pub struct PgRegistry {
    pg: Pg,
    lease: Duration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn decode(v: serde_json::Value) -> Result<AgentRecord> {
    serde_json::from_value(v).map_err(|e| Error::Corrupt {
        what: "agent record".into(),
        reason: e.to_string(),
    })
}

/// An agent as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgAgent {
    /// The record.
    pub record: AgentRecord,
    /// The session anchoring it, if any.
    pub session_key: Option<i64>,
    /// Whether that session is alive.
    pub session_alive: bool,
    /// Since when (server clock, ms) its session has been seen dead.
    pub dead_since: Option<u64>,
    /// The grace before a session's end counts as the agent's death.
    pub grace_ms: u64,
    /// The server's clock when read (ms).
    pub now: u64,
}

impl PgAgent {
    /// The liveness verdict: for an agent anchored on a database session, alive exactly
    /// while that session lasts (seen the same from every machine); otherwise maos-core's
    /// verdict on the server's clock (anchors on this host, else the lease). A session seen
    /// ended counts as the agent's death only after [`Options::dead_grace`](crate::Options)
    /// (leased until then), since its process re-anchors the agent when it reconnects.
    pub fn liveness(&self) -> Liveness {
        match (self.session_key, self.session_alive) {
            (_, true) => Liveness::Alive,
            (Some(_), false) => match self.dead_since {
                Some(since) if self.now.saturating_sub(since) >= self.grace_ms => Liveness::Dead,
                _ => Liveness::Leased,
            },
            (None, _) => self.record.liveness_at(self.now),
        }
    }
}

impl PgRegistry {
    /// The registry of `pg`'s namespace, with the default idle lease (15 min).
    pub fn new(pg: &Pg) -> Self {
        Self {
            pg: pg.clone(),
            lease: maos_core::DEFAULT_AGENT_LEASE,
        }
    }

    /// Sets the idle lease.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// Registers `reg`. Without an explicit anchor the agent is anchored on this process's
    /// database session: it is dead for every machine once that session ends.
    pub fn register(&self, reg: Registration) -> Result<AgentRecord> {
        let on_session = reg.anchor.is_none();
        let session = if on_session {
            Some(self.pg.session()?)
        } else {
            None
        };
        let mut current = match &session {
            Some(s) => Some(s.current(self.pg.inner.options.reconnect_for)?),
            None => None,
        };
        if on_session {
            let mut anchored = match self.pg.inner.anchored.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if !anchored.iter().any(|a| a == reg.id.as_str()) {
                anchored.push(reg.id.to_string());
            }
        }
        loop {
            match self.write(&reg, current.map(|c| c.0))? {
                Some(rec) => return Ok(rec),
                // The session ended before this process noticed: an agent anchored on it
                // would count as dead. Anchor it on the new session instead.
                None => {
                    if let (Some(s), Some((_, epoch))) = (&session, current) {
                        current = Some(s.after(epoch, self.pg.inner.options.reconnect_for)?);
                    }
                }
            }
        }
    }

    /// One registration under the session `key` (none for an explicit anchor); `None`
    /// when that session is no longer alive on the server.
    fn write(&self, reg: &Registration, key: Option<i64>) -> Result<Option<AgentRecord>> {
        let ns = self.pg.inner.ns;
        let lease = millis(reg.lease.unwrap_or(self.lease));
        let anchor = reg
            .anchor
            .clone()
            .unwrap_or_else(|| Anchor::session(ProcessIdentity::current()));
        self.pg.run(|c| {
            c.tx("register an agent", |t| {
                t.exec(
                    "take the agents guard",
                    "SELECT counter FROM maos.guards WHERE ns = $1 AND what = 'agents' FOR UPDATE",
                    &[&ns],
                )?;
                let row = t.one(
                    "read the server clock",
                    "SELECT maos.now_ms(), $1::bigint IS NULL OR maos.session_alive($1)",
                    &[&key],
                )?;
                if !row.get::<_, bool>(1) {
                    return Ok(None);
                }
                let now: i64 = row.get(0);
                let now_u = u64::try_from(now).unwrap_or(0);
                let old = t
                    .opt(
                        "read an agent",
                        "SELECT record FROM maos.agents WHERE ns = $1 AND id = $2",
                        &[&ns, &reg.id.as_str()],
                    )?
                    .map(|r| decode(r.get(0)))
                    .transpose()?;
                let mut anchors: Vec<Anchor> = old
                    .map(|o| {
                        o.anchor_list()
                            .iter()
                            .filter(|a| {
                                a.process.state() != maos_core::ProcessState::Gone
                                    && a.process != anchor.process
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                anchors.push(anchor.clone());
                let rec = AgentRecord {
                    id: reg.id.clone(),
                    role: reg.role.clone(),
                    process: anchor.process.clone(),
                    started_at: now_u,
                    last_seen: now_u,
                    branch: reg.branch.clone(),
                    worktree: reg.worktree.clone(),
                    anchors: Some(anchors),
                    lease_until: u64::try_from(now.saturating_add(lease)).unwrap_or(0),
                };
                let json = serde_json::to_value(&rec).map_err(|e| Error::Corrupt {
                    what: "agent record".into(),
                    reason: e.to_string(),
                })?;
                let role = rec.role.as_ref().map(|r| r.as_str().to_string());
                let until = i64::try_from(rec.lease_until).unwrap_or(i64::MAX);
                t.exec(
                    "write an agent",
                    "INSERT INTO maos.agents (ns, id, role, session_key, lease_until, record)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (ns, id) DO UPDATE SET role = EXCLUDED.role, session_key = EXCLUDED.session_key,
                         lease_until = EXCLUDED.lease_until, record = EXCLUDED.record, dead_since = NULL",
                    &[&ns, &rec.id.as_str(), &role, &key, &until, &json],
                )?;
                Ok(Some(rec))
            })
        })
    }

    /// Renews `id`'s lease (server clock); `None` for an unknown agent.
    pub fn touch(&self, id: &AgentId) -> Result<Option<AgentRecord>> {
        let ns = self.pg.inner.ns;
        let lease = millis(self.lease);
        let row = self.pg.run(|c| {
            c.opt(
                "renew an agent's lease",
                "UPDATE maos.agents SET lease_until = maos.now_ms() + $3,
                     record = jsonb_set(jsonb_set(record, '{lease_until}', to_jsonb(maos.now_ms() + $3)),
                                        '{last_seen}', to_jsonb(maos.now_ms()))
                 WHERE ns = $1 AND id = $2 RETURNING record",
                &[&ns, &id.as_str(), &lease],
            )
        })?;
        row.map(|r| decode(r.get(0))).transpose()
    }

    /// The agent `id`, with its session's state.
    pub fn get(&self, id: &AgentId) -> Result<Option<PgAgent>> {
        Ok(self.read(Some(id))?.into_iter().next())
    }

    fn read(&self, id: Option<&AgentId>) -> Result<Vec<PgAgent>> {
        let ns = self.pg.inner.ns;
        let ids: Option<Vec<String>> = id.map(|i| vec![i.to_string()]);
        let grace = self.pg.inner.options.dead_grace;
        self.pg.run(|c| agents_in(c, ns, ids.as_deref(), grace))
    }

    /// The liveness of `id`, or `None` when it is not registered.
    pub fn liveness_of(&self, id: &AgentId) -> Result<Option<Liveness>> {
        Ok(self.get(id)?.map(|a| a.liveness()))
    }

    /// Every agent, by id.
    pub fn list(&self) -> Result<Vec<PgAgent>> {
        self.read(None)
    }

    /// The agents registered with `role`.
    pub fn agents_with_role(&self, role: &AgentRole) -> Result<Vec<AgentId>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|a| a.record.role.as_ref() == Some(role))
            .map(|a| a.record.id)
            .collect())
    }

    /// Removes `id`. Returns whether it was registered.
    pub fn unregister(&self, id: &AgentId) -> Result<bool> {
        let ns = self.pg.inner.ns;
        let n = self.pg.run(|c| {
            c.exec(
                "unregister an agent",
                "DELETE FROM maos.agents WHERE ns = $1 AND id = $2",
                &[&ns, &id.as_str()],
            )
        })?;
        Ok(n > 0)
    }
}

/// The agents `ids` (all when `None`) of namespace `ns` with their sessions' state, noting
/// when an anchoring session was first seen gone.
pub(crate) fn agents_in(
    c: &mut impl Exec,
    ns: i64,
    ids: Option<&[String]>,
    grace: Duration,
) -> Result<Vec<PgAgent>> {
    let ids: Option<Vec<String>> = ids.map(<[String]>::to_vec);
    let rows = c.query(
        "read agents",
        "SELECT record, session_key,
             session_key IS NOT NULL AND maos.session_alive(session_key), maos.now_ms(), dead_since
         FROM maos.agents WHERE ns = $1 AND ($2::text[] IS NULL OR id = ANY($2)) ORDER BY id",
        &[&ns, &ids],
    )?;
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut a = PgAgent {
            record: decode(r.get(0))?,
            session_key: r.get(1),
            session_alive: r.get(2),
            now: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            dead_since: r
                .get::<_, Option<i64>>(4)
                .map(|v| u64::try_from(v).unwrap_or(0)),
            grace_ms,
        };
        if a.session_key.is_some() && !a.session_alive && a.dead_since.is_none() {
            // The first reader that sees the anchoring session gone notes when.
            let since: Option<i64> = c
                .opt(
                    "note an ended session",
                    "UPDATE maos.agents SET dead_since = COALESCE(dead_since, maos.now_ms())
                     WHERE ns = $1 AND id = $2 AND session_key = $3 RETURNING dead_since",
                    &[&ns, &a.record.id.as_str(), &a.session_key],
                )?
                .map(|r| r.get(0));
            a.dead_since = since.map(|v| u64::try_from(v).unwrap_or(0));
        }
        out.push(a);
    }
    Ok(out)
}

/// True when `a` is a session anchor (for callers building registrations).
pub fn is_session(a: &Anchor) -> bool {
    a.kind == AnchorKind::Session
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registered after this process's session was terminated on the server but before
    /// the session thread noticed (a one-minute heartbeat here): anchored on the dead key,
    /// the agent would count as dead for everyone. It is anchored on the new session.
    #[test]
    fn an_agent_is_never_anchored_on_a_session_that_already_ended() {
        let raw = crate::server::shared_url().unwrap();
        let url = crate::BackendUrl::parse(&raw).unwrap();
        let ns = crate::server::unique_namespace("registry-dead-session");
        let worker = Pg::connect_with(
            &url,
            &ns,
            crate::Options::default().heartbeat(std::time::Duration::from_secs(60)),
        )
        .unwrap();
        let watcher = Pg::connect_with(
            &url,
            &ns,
            crate::Options::default().dead_grace(std::time::Duration::ZERO),
        )
        .unwrap();
        let old = worker.session_key().unwrap();
        let mut admin = postgres::Client::connect(&raw, postgres::NoTls).unwrap();
        let done: bool = admin
            .query_one(
                "SELECT pg_terminate_backend(backend_pid) FROM maos.sessions WHERE key = $1",
                &[&old],
            )
            .unwrap()
            .get(0);
        assert!(done);
        crate::server::wait_until(std::time::Duration::from_secs(30), || {
            !watcher.session_alive(old).unwrap()
        });
        let id = AgentId::new("w").unwrap();
        PgRegistry::new(&worker)
            .register(Registration::new(id.clone()))
            .unwrap();
        let seen = PgRegistry::new(&watcher).get(&id).unwrap().unwrap();
        assert_ne!(seen.session_key, Some(old), "anchored on the ended session");
        assert_eq!(seen.liveness(), Liveness::Alive);
    }

    #[test]
    fn agents_anchored_on_a_session_die_with_it_everywhere() {
        let url = crate::BackendUrl::parse(&crate::server::shared_url().unwrap()).unwrap();
        let ns = crate::server::unique_namespace("registry");
        let watcher = Pg::connect_with(
            &url,
            &ns,
            crate::Options::default().dead_grace(std::time::Duration::ZERO),
        )
        .unwrap();
        let reg = PgRegistry::new(&watcher);
        {
            let worker = Pg::connect(&url, &ns).unwrap();
            let wreg = PgRegistry::new(&worker);
            wreg.register(
                Registration::new(AgentId::new("w1").unwrap()).role(AgentRole::backend()),
            )
            .unwrap();
            assert_eq!(
                reg.liveness_of(&AgentId::new("w1").unwrap()).unwrap(),
                Some(Liveness::Alive)
            );
            assert_eq!(
                reg.agents_with_role(&AgentRole::backend()).unwrap(),
                [AgentId::new("w1").unwrap()]
            );
            assert!(wreg.touch(&AgentId::new("w1").unwrap()).unwrap().is_some());
        }
        // The worker's backend (and its session) is gone: dead, lease or not, as soon as
        // the server has ended the session.
        crate::server::wait_until(std::time::Duration::from_secs(30), || {
            reg.liveness_of(&AgentId::new("w1").unwrap()).unwrap() == Some(Liveness::Dead)
        });
        // An agent anchored on a process of another host lives by its lease.
        let elsewhere = ProcessIdentity {
            host: "elsewhere.invalid".into(),
            ..ProcessIdentity::current()
        };
        reg.register(Registration::new(AgentId::new("remote").unwrap()).process(elsewhere))
            .unwrap();
        assert_eq!(
            reg.liveness_of(&AgentId::new("remote").unwrap()).unwrap(),
            Some(Liveness::Leased)
        );
        assert!(reg.unregister(&AgentId::new("remote").unwrap()).unwrap());
        assert!(
            reg.touch(&AgentId::new("ghost").unwrap())
                .unwrap()
                .is_none()
        );
    }
}
