//! The lock table as one transaction sees it, and the step that grants, queues or reports
//! the blocker: the core of [`super::PgLock`].

use std::time::Duration;

use maos_core::{AgentId, ResourceName};

use super::{LockInfo, PgLock, WaiterInfo, conflicts, millis, mode_of, mode_str, notify_channel};
use crate::conn::{Exec, Tx};
use crate::{Error, Holder, Pg, Result};

pub(super) struct Row2<T> {
    pub(super) v: T,
    pub(super) alive: bool,
    pub(super) req: Option<uuid::Uuid>,
}

/// The table as read under the guard.
pub(super) struct State {
    pub(super) now: i64,
    /// The server started since the last token epoch: tokens must jump first.
    pub(super) restarted: bool,
    /// The requester's liveness session is alive (checked in the same snapshot as the
    /// holders): a grant under a session that is already gone would be a lock that others
    /// see as free at once.
    pub(super) me_alive: bool,
    pub(super) counter: i64,
    pub(super) holders: Vec<Row2<LockInfo>>,
    pub(super) waiters: Vec<Row2<WaiterInfo>>,
}

pub(super) fn parse_res(s: String) -> Result<ResourceName> {
    ResourceName::new(&s).map_err(|e| Error::Corrupt {
        what: format!("lock record for {s:?}"),
        reason: e.to_string(),
    })
}

pub(super) fn parse_agent(s: String) -> Result<AgentId> {
    AgentId::new(&s).map_err(|e| Error::Corrupt {
        what: format!("lock record of agent {s:?}"),
        reason: e.to_string(),
    })
}

pub(super) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn holder_of(r: &postgres::Row) -> Result<Row2<LockInfo>> {
    Ok(Row2 {
        v: holding_at(r, 0)?,
        alive: r.get(11),
        req: None,
    })
}

/// A holding from the columns `id, resource, mode, owner, session_key, acquired_at,
/// expires_at, ttl_ms, purpose, metadata, token`, the first at index `at`.
fn holding_at(r: &postgres::Row, at: usize) -> Result<LockInfo> {
    let meta: serde_json::Value = r.get(at + 9);
    let metadata = serde_json::from_value(meta).map_err(|e| Error::Corrupt {
        what: "lock metadata".into(),
        reason: e.to_string(),
    })?;
    Ok(LockInfo {
        id: u(r.get(at)),
        resource: parse_res(r.get(at + 1))?,
        mode: mode_of(r.get(at + 2)),
        owner: parse_agent(r.get(at + 3))?,
        session_key: r.get(at + 4),
        acquired_at: u(r.get(at + 5)),
        expires_at: u(r.get(at + 6)),
        ttl_ms: u(r.get(at + 7)),
        purpose: r.get(at + 8),
        metadata,
        token: u(r.get(at + 10)),
    })
}

/// Takes the guard and reads the table.
pub(super) fn load(t: &mut Tx<'_>, ns: i64) -> Result<State> {
    load_as(t, ns, None, true)
}

/// The table as one statement sees it, without the guard: for readers, which never wait
/// for a writer (nor for a process stopped in the middle of a change).
pub(super) fn read(t: &mut Tx<'_>, ns: i64) -> Result<State> {
    load_as(t, ns, None, false)
}

/// [`load`] (or [`read`], without `guard`), also telling whether the liveness session `me`
/// is alive right now ([`State::me_alive`]; true without one).
pub(super) fn load_as(t: &mut Tx<'_>, ns: i64, me: Option<i64>, guard: bool) -> Result<State> {
    // The guard first, in a statement of its own: the next statement's snapshot is taken
    // after the lock was granted, so it sees every change of the previous guard holder.
    let counter: i64 = if guard {
        t.one(
            "take the lock guard",
            "SELECT counter FROM maos.guards WHERE ns = $1 AND what = 'locks' FOR UPDATE",
            &[&ns],
        )?
        .get(0)
    } else {
        0 // only writers use it
    };
    // Then the clock, the holders and the waiters in one round trip.
    let rows = t.query(
        "read the lock table",
        "SELECT 0 AS kind, id, resource, mode, owner, session_key, acquired_at, expires_at, ttl_ms, purpose,
                metadata, token, (session_key IS NULL OR session_key IN (SELECT key FROM maos.live_sessions)),
                NULL::jsonb, req
           FROM maos.lock_holders WHERE ns = $1
         UNION ALL
         SELECT 1, ticket, resource, mode, agent, session_key, since, 0, 0, purpose, '{}'::jsonb, 0,
                session_key IN (SELECT key FROM maos.live_sessions), aborted, req
           FROM maos.lock_waiters WHERE ns = $1
         UNION ALL
         SELECT 2, maos.now_ms(), '', '', '', ($2::bigint IN (SELECT key FROM maos.live_sessions))::int::bigint,
                0, 0, 0, '', '{}'::jsonb, 0,
                pg_postmaster_start_time() IS DISTINCT FROM (SELECT started FROM maos.token_epoch),
                NULL, NULL
         ORDER BY 1, 2",
        &[&ns, &me],
    )?;
    let mut st = State {
        now: 0,
        restarted: false,
        me_alive: true,
        counter,
        holders: Vec::new(),
        waiters: Vec::new(),
    };
    for r in rows {
        let kind: i32 = r.get(0);
        match kind {
            0 => st.holders.push(Row2 {
                v: holding_at(&r, 1)?,
                alive: r.get(12),
                req: r.get(14),
            }),
            1 => {
                let aborted: Option<serde_json::Value> = r.get(13);
                st.waiters.push(Row2 {
                    v: WaiterInfo {
                        ticket: u(r.get(1)),
                        resource: parse_res(r.get(2))?,
                        mode: mode_of(r.get(3)),
                        agent: parse_agent(r.get(4))?,
                        session_key: r.get::<_, Option<i64>>(5).unwrap_or(0),
                        since: u(r.get(6)),
                        purpose: r.get(9),
                        aborted: aborted.and_then(|v| serde_json::from_value(v).ok()),
                    },
                    alive: r.get(12),
                    req: r.get(14),
                });
            }
            _ => {
                st.now = r.get(1);
                st.restarted = r.get(12);
                // NULL without `me`; 0 when its session is gone.
                st.me_alive = r.get::<_, Option<i64>>(5) != Some(0);
            }
        }
    }
    Ok(st)
}

impl State {
    pub(super) fn holds(&self, h: &Row2<LockInfo>) -> bool {
        h.alive && i64::try_from(h.v.expires_at).unwrap_or(i64::MAX) > self.now
    }

    /// Waiters no longer blocked by a holder or an earlier waiter.
    pub(super) fn unblocked(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (n, w) in self.waiters.iter().enumerate() {
            let w = &w.v;
            let by_holder = self
                .holders
                .iter()
                .any(|h| self.holds(h) && conflicts(&h.v.resource, h.v.mode, &w.resource, w.mode));
            let by_waiter = self.waiters[..n]
                .iter()
                .any(|e| conflicts(&e.v.resource, e.v.mode, &w.resource, w.mode));
            if !by_holder && !by_waiter {
                out.push(w.ticket);
            }
        }
        out
    }
}

pub(super) fn remove_holders(t: &mut Tx<'_>, ns: i64, ids: &[i64]) -> Result<()> {
    if !ids.is_empty() {
        t.exec(
            "remove lock holders",
            "DELETE FROM maos.lock_holders WHERE ns = $1 AND id = ANY($2)",
            &[&ns, &ids],
        )?;
    }
    Ok(())
}

pub(super) fn remove_waiters(t: &mut Tx<'_>, ns: i64, tickets: &[i64]) -> Result<()> {
    if !tickets.is_empty() {
        t.exec(
            "remove lock waiters",
            "DELETE FROM maos.lock_waiters WHERE ns = $1 AND ticket = ANY($2)",
            &[&ns, &tickets],
        )?;
    }
    Ok(())
}

/// Notifies the waiters `st` shows unblocked.
pub(super) fn signal(t: &mut Tx<'_>, ns: i64, st: &State) -> Result<()> {
    let tickets = st.unblocked();
    if !tickets.is_empty() {
        let payload = tickets
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        t.notify(&notify_channel(ns), &payload)?;
    }
    Ok(())
}

/// What a step asks for.
pub(super) struct Request<'a> {
    pub(super) lock: &'a PgLock,
    pub(super) agent: &'a AgentId,
    pub(super) purpose: &'a str,
    pub(super) req: uuid::Uuid,
    pub(super) session_key: Option<i64>,
    pub(super) lease: bool,
}

pub(super) enum Step {
    Granted(LockInfo),
    Blocked {
        blocker: Option<Holder>,
        until: Option<i64>,
        now: i64,
    },
    /// The requester's liveness session ended (terminated, or its connection cut) before
    /// this process noticed: nothing was granted or queued; wait for the new session and
    /// ask again under its key.
    SessionGone,
}

/// The longest a step waits for the table's guard row when its caller allows less: the
/// guard is not the lock (it is held for a statement or two), the same floor as the files'.
pub(super) use maos_lock::GUARD_FLOOR;

/// One look at the table: grant, queue or report the blocker. `guard_wait` bounds the wait
/// for the guard row (at least [`GUARD_FLOOR`]): a process stopped while holding it makes
/// the step fail with [`Error::Busy`] instead of hanging.
pub(super) fn step(
    pg: &Pg,
    r: &Request<'_>,
    ticket: &mut Option<u64>,
    wait: bool,
    guard_wait: Duration,
) -> Result<Step> {
    // An aborted wait (a deadlock's victim) comes out of the transaction as `Err(agents)`, so
    // that the removal of its queue entry commits; then it is the error.
    match step_tx(pg, r, ticket, wait, guard_wait)? {
        Ok(s) => Ok(s),
        Err(agents) => Err(Error::Deadlock {
            resource: r.lock.resource.clone(),
            agents,
        }),
    }
}

pub(super) fn step_tx(
    pg: &Pg,
    r: &Request<'_>,
    ticket: &mut Option<u64>,
    wait: bool,
    guard_wait: Duration,
) -> Result<std::result::Result<Step, Vec<AgentId>>> {
    let ns = pg.inner.ns;
    let l = r.lock;
    let guard_ms = u64::try_from(guard_wait.clamp(GUARD_FLOOR, crate::ROW_WAIT).as_millis())
        .unwrap_or(u64::MAX);
    pg.run(|c| {
        c.tx("take a lock", |t| {
            t.relaxed_within(guard_ms)?;
            let mut st = load_as(t, ns, r.session_key, true)?;
            if !st.me_alive {
                // Checked first: even a grant of this request found below would be under the
                // dead session. Our own queue entry, if any, is as dead as the session:
                // withdraw it (the retry asks again, as a new request, under the new session).
                if let Some(tk) = ticket.take() {
                    remove_waiters(t, ns, &[i64::try_from(tk).unwrap_or(i64::MAX)])?;
                    st.waiters.retain(|w| w.v.ticket != tk);
                    signal(t, ns, &st)?;
                }
                return Ok(Ok(Step::SessionGone));
            }
            // A grant or a queueing whose commit we did not hear about (a retry after a lost
            // connection), found by the request id.
            if let Some(h) = st.holders.iter().find(|h| h.req == Some(r.req)) {
                return Ok(Ok(Step::Granted(h.v.clone())));
            }
            if ticket.is_none()
                && let Some(w) = st.waiters.iter().find(|w| w.req == Some(r.req))
            {
                *ticket = Some(w.v.ticket);
            }
            let mine = st
                .waiters
                .iter()
                .position(|w| Some(w.v.ticket) == *ticket);
            if let Some(i) = mine
                && let Some(agents) = st.waiters[i].v.aborted.clone()
            {
                let tk = st.waiters[i].v.ticket;
                remove_waiters(t, ns, &[i64::try_from(tk).unwrap_or(i64::MAX)])?;
                *ticket = None;
                st.waiters.remove(i);
                signal(t, ns, &st)?;
                return Ok(Err(agents));
            }
            if ticket.is_some() && mine.is_none() {
                *ticket = None; // withdrawn by someone (a reap of a dead session): queue again
            }
            let my_ticket = *ticket;
            let mut blocker = None;
            let mut until = None;
            let mut dead_holders = Vec::new();
            for h in &st.holders {
                if !conflicts(&h.v.resource, h.v.mode, &l.resource, l.mode) {
                    continue;
                }
                if !st.holds(h) {
                    dead_holders.push(i64::try_from(h.v.id).unwrap_or(i64::MAX));
                } else if blocker.is_none() {
                    blocker = Some(h.v.holder());
                    until = Some(i64::try_from(h.v.expires_at).unwrap_or(i64::MAX));
                }
            }
            let mut dead_waiters = Vec::new();
            for w in &st.waiters {
                if Some(w.v.ticket) == my_ticket {
                    break; // only earlier waiters count
                }
                if !conflicts(&w.v.resource, w.v.mode, &l.resource, l.mode) {
                    continue;
                }
                if !w.alive {
                    dead_waiters.push(i64::try_from(w.v.ticket).unwrap_or(i64::MAX));
                } else if blocker.is_none() {
                    blocker = Some(Holder {
                        owner: w.v.agent.clone(),
                        resource: w.v.resource.clone(),
                        purpose: format!("queued earlier: {}", w.v.purpose),
                        expires_at: 0,
                    });
                }
            }
            remove_holders(t, ns, &dead_holders)?;
            remove_waiters(t, ns, &dead_waiters)?;
            let removed = !dead_holders.is_empty() || !dead_waiters.is_empty();
            st.holders
                .retain(|h| !dead_holders.contains(&i64::try_from(h.v.id).unwrap_or(0)));
            st.waiters
                .retain(|w| !dead_waiters.contains(&i64::try_from(w.v.ticket).unwrap_or(0)));
            if blocker.is_none() {
                let id = match my_ticket {
                    Some(tk) => i64::try_from(tk).unwrap_or(i64::MAX),
                    None => {
                        st.counter += 1;
                        st.counter
                    }
                };
                let ttl = millis(l.ttl).max(1);
                let meta = serde_json::to_value(&l.metadata).unwrap_or_default();
                let process = serde_json::to_value(maos_core::ProcessIdentity::current())
                    .unwrap_or_default();
                let key = if r.lease { None } else { r.session_key };
                if st.restarted {
                    // Tokens handed out before a crash may be forgotten by the sequence:
                    // jump past them, durably (this transaction commits synchronously).
                    t.batch("SET LOCAL synchronous_commit = on")?;
                    t.exec(
                        "move the fencing tokens to a new epoch",
                        "SELECT setval('maos.fencing_tokens', nextval('maos.fencing_tokens') + 4294967296)",
                        &[],
                    )?;
                    t.exec(
                        "record the token epoch",
                        "INSERT INTO maos.token_epoch (one, started) VALUES (true, pg_postmaster_start_time())
                         ON CONFLICT (one) DO UPDATE SET started = EXCLUDED.started",
                        &[],
                    )?;
                }
                let mine = my_ticket.map(|tk| i64::try_from(tk).unwrap_or(i64::MAX));
                let row = t.one(
                    "grant a lock",
                    "WITH h AS (
                         INSERT INTO maos.lock_holders (ns, id, resource, mode, owner, session_key, process,
                             acquired_at, expires_at, ttl_ms, purpose, metadata, token, req)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::bigint, $8::bigint + $9::bigint, $9, $10, $11,
                                 nextval('maos.fencing_tokens'), $12)
                         RETURNING token),
                     k AS (
                         INSERT INTO maos.lock_tokens (ns, resource, token) SELECT $1, $3, token FROM h
                         ON CONFLICT (ns, resource) DO UPDATE SET token = GREATEST(maos.lock_tokens.token, EXCLUDED.token)),
                     w AS (DELETE FROM maos.lock_waiters WHERE ns = $1 AND ticket = $13),
                     g AS (UPDATE maos.guards SET counter = $14 WHERE ns = $1 AND what = 'locks'),
                     n AS (SELECT pg_notify($15, 'g:' || $3))
                     SELECT token FROM h, n",
                    &[
                        &ns,
                        &id,
                        &l.resource.as_str(),
                        &mode_str(l.mode),
                        &r.agent.as_str(),
                        &key,
                        &process,
                        &st.now,
                        &ttl,
                        &r.purpose,
                        &meta,
                        &r.req,
                        &mine,
                        &st.counter,
                        &notify_channel(ns),
                    ],
                )?;
                let token: i64 = row.get(0);
                if let Some(tk) = my_ticket {
                    st.waiters.retain(|w| w.v.ticket != tk);
                }
                let info = LockInfo {
                    id: u(id),
                    resource: l.resource.clone(),
                    mode: l.mode,
                    owner: r.agent.clone(),
                    session_key: key,
                    acquired_at: u(st.now),
                    expires_at: u(st.now + ttl),
                    ttl_ms: u(ttl),
                    purpose: r.purpose.to_string(),
                    metadata: l.metadata.clone(),
                    token: u(token),
                };
                st.holders.push(Row2 {
                    v: info.clone(),
                    alive: true,
                    req: Some(r.req),
                });
                if removed || my_ticket.is_some() {
                    signal(t, ns, &st)?;
                }
                *ticket = None;
                return Ok(Ok(Step::Granted(info)));
            }
            if wait && my_ticket.is_none() {
                let Some(key) = r.session_key else {
                    return Err(Error::Invalid {
                        what: "lock wait",
                        reason: "a waiter needs a liveness session".into(),
                    });
                };
                st.counter += 1;
                let process = serde_json::to_value(maos_core::ProcessIdentity::current())
                    .unwrap_or_default();
                t.exec(
                    "queue a waiter",
                    "INSERT INTO maos.lock_waiters (ns, ticket, resource, mode, agent, session_key, process, since, purpose, req)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &ns,
                        &st.counter,
                        &l.resource.as_str(),
                        &mode_str(l.mode),
                        &r.agent.as_str(),
                        &key,
                        &process,
                        &st.now,
                        &r.purpose,
                        &r.req,
                    ],
                )?;
                t.exec(
                    "advance the ticket counter",
                    "UPDATE maos.guards SET counter = $2 WHERE ns = $1 AND what = 'locks'",
                    &[&ns, &st.counter],
                )?;
                *ticket = Some(u(st.counter));
            }
            if removed {
                signal(t, ns, &st)?;
            }
            Ok(Ok(Step::Blocked {
                blocker,
                until,
                now: st.now,
            }))
        })
    })
}
