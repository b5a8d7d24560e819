//! [`PgLockTable`]: the operations on the whole table (list, release, renew, fencing).

use std::time::Duration;

use maos_core::{AgentId, ResourceName};
use maos_lock::LockMode;

use super::state::{holder_of, load, read, remove_holders, signal, u};
use super::{LockInfo, Snapshot, conflicts, millis};
use crate::conn::Exec;
use crate::{Error, Pg, Result};

/// Table-wide operations.
#[derive(Debug, Clone)]
pub struct PgLockTable {
    pg: Pg,
}

impl PgLockTable {
    /// The lock table of the namespace.
    pub fn new(pg: &Pg) -> Self {
        Self { pg: pg.clone() }
    }

    /// Holders (alive, lease running) and waiters (alive).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let ns = self.pg.inner.ns;
        self.pg.run(|c| {
            c.tx("list locks", |t| {
                let st = read(t, ns)?;
                Ok(Snapshot {
                    holders: st
                        .holders
                        .iter()
                        .filter(|h| st.holds(h))
                        .map(|h| h.v.clone())
                        .collect(),
                    waiters: st
                        .waiters
                        .iter()
                        .filter(|w| w.alive)
                        .map(|w| w.v.clone())
                        .collect(),
                })
            })
        })
    }

    /// Current holders conflicting with a `mode` lock on `resource`.
    pub fn conflicting(&self, resource: &ResourceName, mode: LockMode) -> Result<Vec<LockInfo>> {
        Ok(self
            .snapshot()?
            .holders
            .into_iter()
            .filter(|h| conflicts(&h.resource, h.mode, resource, mode))
            .collect())
    }

    /// The newest fencing token issued for `resource` (0 if none).
    pub fn current_token(&self, resource: &ResourceName) -> Result<u64> {
        let ns = self.pg.inner.ns;
        let r = resource.as_str();
        let row = self.pg.run(|c| {
            c.opt(
                "read a token",
                "SELECT token FROM maos.lock_tokens WHERE ns = $1 AND resource = $2",
                &[&ns, &r],
            )
        })?;
        Ok(row.map_or(0, |r| u(r.get(0))))
    }

    /// Checks that `token` belongs to a current holder of `resource` (alive, lease running).
    ///
    /// # Errors
    /// [`Error::StaleToken`] otherwise.
    pub fn check_fencing_token(&self, resource: &ResourceName, token: u64) -> Result<()> {
        let ns = self.pg.inner.ns;
        let r = resource.as_str();
        let tk = i64::try_from(token).unwrap_or(i64::MAX);
        let ok: bool = self
            .pg
            .run(|c| {
                c.one(
                    "check a fencing token",
                    "SELECT EXISTS (SELECT 1 FROM maos.lock_holders WHERE ns = $1 AND resource = $2 AND token = $3
                         AND expires_at > maos.now_ms()
                         AND (session_key IS NULL OR maos.session_alive(session_key)))",
                    &[&ns, &r, &tk],
                )
            })?
            .get(0);
        if ok {
            return Ok(());
        }
        Err(Error::StaleToken {
            resource: resource.clone(),
            token,
            current: self.current_token(resource)?,
        })
    }

    /// Releases `agent`'s locks on exactly `resource` (only `token`'s, if given).
    ///
    /// # Errors
    /// [`Error::NotOwner`] when it holds none.
    pub fn release(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        token: Option<u64>,
    ) -> Result<Vec<LockInfo>> {
        let ns = self.pg.inner.ns;
        let out = self.pg.run(|c| {
            c.tx("release an agent's lock", |t| {
                let mut st = load(t, ns)?;
                let (mine, keep): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut st.holders).into_iter().partition(|h| {
                        &h.v.resource == resource
                            && &h.v.owner == agent
                            && token.is_none_or(|tk| tk == h.v.token)
                    });
                st.holders = keep;
                let ids: Vec<i64> = mine
                    .iter()
                    .map(|h| i64::try_from(h.v.id).unwrap_or(i64::MAX))
                    .collect();
                remove_holders(t, ns, &ids)?;
                signal(t, ns, &st)?;
                let held: Vec<LockInfo> = mine
                    .iter()
                    .filter(|h| st.holds(h))
                    .map(|h| h.v.clone())
                    .collect();
                let other = st
                    .holders
                    .iter()
                    .find(|h| st.holds(h) && maos_lock::overlaps(&h.v.resource, resource))
                    .map(|h| Box::new(h.v.holder()));
                Ok((held, other))
            })
        })?;
        if out.0.is_empty() {
            return Err(Error::NotOwner {
                resource: resource.clone(),
                agent: agent.clone(),
                holder: out.1,
            });
        }
        Ok(out.0)
    }

    /// Releases every lease `agent` holds without a session (what unregistering does).
    pub fn release_agent(&self, agent: &AgentId) -> Result<Vec<LockInfo>> {
        let ns = self.pg.inner.ns;
        self.pg.run(|c| {
            c.tx("release an agent's leases", |t| {
                let mut st = load(t, ns)?;
                let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.holders)
                    .into_iter()
                    .partition(|h| &h.v.owner == agent && h.v.session_key.is_none());
                st.holders = keep;
                let ids: Vec<i64> = gone
                    .iter()
                    .map(|h| i64::try_from(h.v.id).unwrap_or(i64::MAX))
                    .collect();
                remove_holders(t, ns, &ids)?;
                signal(t, ns, &st)?;
                Ok(gone.into_iter().map(|h| h.v).collect())
            })
        })
    }

    /// Renews `agent`'s locks on exactly `resource` (setting their lease length to `ttl`
    /// first when given): `maos lock renew RESOURCE`.
    ///
    /// # Errors
    /// [`Error::NotOwner`] when the agent holds none there (its lease may have ended).
    pub fn renew(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        ttl: Option<Duration>,
    ) -> Result<Vec<LockInfo>> {
        let ns = self.pg.inner.ns;
        let ttl = ttl.map(|d| millis(d).max(1));
        let (a, r) = (agent.as_str(), resource.as_str());
        let rows = self.pg.run(|c| {
            c.query(
                "renew an agent's lock",
                "UPDATE maos.lock_holders SET ttl_ms = COALESCE($3, ttl_ms),
                     expires_at = maos.now_ms() + COALESCE($3, ttl_ms)
                 WHERE ns = $1 AND owner = $2 AND resource = $4 AND expires_at > maos.now_ms()
                   AND (session_key IS NULL OR maos.session_alive(session_key))
                 RETURNING id, resource, mode, owner, session_key, acquired_at, expires_at, ttl_ms, purpose, metadata, token, true",
                &[&ns, &a, &ttl, &r],
            )
        })?;
        if rows.is_empty() {
            return Err(Error::NotOwner {
                resource: resource.clone(),
                agent: agent.clone(),
                holder: None,
            });
        }
        rows.iter().map(|r| holder_of(r).map(|h| h.v)).collect()
    }

    /// Renews every lock `agent` still holds (its heartbeat), setting the lease length to
    /// `ttl` first when given.
    pub fn renew_all(&self, agent: &AgentId, ttl: Option<Duration>) -> Result<Vec<LockInfo>> {
        let ns = self.pg.inner.ns;
        let ttl = ttl.map(|d| millis(d).max(1));
        let a = agent.as_str();
        let rows = self.pg.run(|c| {
            c.query(
                "renew an agent's locks",
                "UPDATE maos.lock_holders SET ttl_ms = COALESCE($3, ttl_ms),
                     expires_at = maos.now_ms() + COALESCE($3, ttl_ms)
                 WHERE ns = $1 AND owner = $2 AND expires_at > maos.now_ms()
                   AND (session_key IS NULL OR maos.session_alive(session_key))
                 RETURNING id, resource, mode, owner, session_key, acquired_at, expires_at, ttl_ms, purpose, metadata, token, true",
                &[&ns, &a, &ttl],
            )
        })?;
        rows.iter().map(|r| holder_of(r).map(|h| h.v)).collect()
    }
}
