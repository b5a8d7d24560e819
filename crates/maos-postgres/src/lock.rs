//! Locks on PostgreSQL: exclusive, shared and pattern locks, FIFO waiters, leases on the
//! server's clock, fencing tokens from one sequence, holders alive while their database
//! session lasts, and deadlock detection over the waits of every machine.
//!
//! Every state change of a namespace's locks is one transaction that first takes the row lock
//! of `maos.guards (ns, 'locks')` (the table-wide guard of the file backend), reads the
//! holders and waiters with their liveness (`session_key IS NULL OR maos.session_alive(key)`)
//! and the server's clock (`maos.now_ms()`), decides in Rust with the same conflict rules as
//! maos-lock ([`maos_lock::overlaps`]), writes, and notifies every waiter that is no longer
//! blocked (`pg_notify('maos_l<ns>', ticket)`, delivered at commit).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use maos_core::{AgentId, ResourceName};
use maos_lock::LockMode;
use serde::Serialize;

use crate::conn::{Exec, Session, Tx};
use crate::{Error, Holder, Pg, Result};

/// Default lease length.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default longest wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The topic deadlocks are broadcast on.
pub const DEADLOCK_TOPIC: &str = "deadlock";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn mode_str(m: LockMode) -> &'static str {
    match m {
        LockMode::Shared => "shared",
        _ => "exclusive",
    }
}

fn mode_of(s: &str) -> LockMode {
    if s == "shared" {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    }
}

fn conflicts(a: &ResourceName, am: LockMode, b: &ResourceName, bm: LockMode) -> bool {
    !(am == LockMode::Shared && bm == LockMode::Shared) && maos_lock::overlaps(a, b)
}

/// The NOTIFY channel of a namespace's lock waiters.
pub(crate) fn notify_channel(ns: i64) -> String {
    format!("maos_l{ns}")
}

/// A held lock as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockInfo {
    /// The ticket it was granted under.
    pub id: u64,
    /// The resource.
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The owning agent.
    pub owner: AgentId,
    /// The liveness session holding it; `None` for a lease held by the agent alone.
    pub session_key: Option<i64>,
    /// Granted at (ms, server clock).
    pub acquired_at: u64,
    /// Lease end (ms, server clock).
    pub expires_at: u64,
    /// Lease length.
    pub ttl_ms: u64,
    /// Why.
    pub purpose: String,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// The fencing token.
    pub token: u64,
}

impl LockInfo {
    fn holder(&self) -> Holder {
        Holder {
            owner: self.owner.clone(),
            resource: self.resource.clone(),
            purpose: self.purpose.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// A queued waiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaiterInfo {
    /// Arrival order.
    pub ticket: u64,
    /// The resource.
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The waiting agent.
    pub agent: AgentId,
    /// Its liveness session.
    pub session_key: i64,
    /// Since (ms, server clock).
    pub since: u64,
    /// Why.
    pub purpose: String,
    /// Set by deadlock resolution: the agents of the cycle.
    pub aborted: Option<Vec<AgentId>>,
}

/// Holders and waiters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Current holders (alive, lease running), by id.
    pub holders: Vec<LockInfo>,
    /// Waiters, by ticket.
    pub waiters: Vec<WaiterInfo>,
}

struct Row2<T> {
    v: T,
    alive: bool,
    req: Option<uuid::Uuid>,
}

/// The table as read under the guard.
struct State {
    now: i64,
    /// The server started since the last token epoch: tokens must jump first.
    restarted: bool,
    /// The requester's liveness session is alive (checked in the same snapshot as the
    /// holders): a grant under a session that is already gone would be a lock that others
    /// see as free at once.
    me_alive: bool,
    counter: i64,
    holders: Vec<Row2<LockInfo>>,
    waiters: Vec<Row2<WaiterInfo>>,
}

fn parse_res(s: String) -> Result<ResourceName> {
    ResourceName::new(&s).map_err(|e| Error::Corrupt {
        what: format!("lock record for {s:?}"),
        reason: e.to_string(),
    })
}

fn parse_agent(s: String) -> Result<AgentId> {
    AgentId::new(&s).map_err(|e| Error::Corrupt {
        what: format!("lock record of agent {s:?}"),
        reason: e.to_string(),
    })
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn holder_of(r: &postgres::Row) -> Result<Row2<LockInfo>> {
    let meta: serde_json::Value = r.get(9);
    let metadata = serde_json::from_value(meta).map_err(|e| Error::Corrupt {
        what: "lock metadata".into(),
        reason: e.to_string(),
    })?;
    Ok(Row2 {
        v: LockInfo {
            id: u(r.get(0)),
            resource: parse_res(r.get(1))?,
            mode: mode_of(r.get(2)),
            owner: parse_agent(r.get(3))?,
            session_key: r.get(4),
            acquired_at: u(r.get(5)),
            expires_at: u(r.get(6)),
            ttl_ms: u(r.get(7)),
            purpose: r.get(8),
            metadata,
            token: u(r.get(10)),
        },
        alive: r.get(11),
        req: None,
    })
}

/// Takes the guard and reads the table.
fn load(t: &mut Tx<'_>, ns: i64) -> Result<State> {
    load_as(t, ns, None, true)
}

/// The table as one statement sees it, without the guard: for readers, which never wait
/// for a writer (nor for a process stopped in the middle of a change).
fn read(t: &mut Tx<'_>, ns: i64) -> Result<State> {
    load_as(t, ns, None, false)
}

/// [`load`] (or [`read`], without `guard`), also telling whether the liveness session `me`
/// is alive right now ([`State::me_alive`]; true without one).
fn load_as(t: &mut Tx<'_>, ns: i64, me: Option<i64>, guard: bool) -> Result<State> {
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
            0 => {
                let meta: serde_json::Value = r.get(10);
                let metadata = serde_json::from_value(meta).map_err(|e| Error::Corrupt {
                    what: "lock metadata".into(),
                    reason: e.to_string(),
                })?;
                st.holders.push(Row2 {
                    v: LockInfo {
                        id: u(r.get(1)),
                        resource: parse_res(r.get(2))?,
                        mode: mode_of(r.get(3)),
                        owner: parse_agent(r.get(4))?,
                        session_key: r.get(5),
                        acquired_at: u(r.get(6)),
                        expires_at: u(r.get(7)),
                        ttl_ms: u(r.get(8)),
                        purpose: r.get(9),
                        metadata,
                        token: u(r.get(11)),
                    },
                    alive: r.get(12),
                    req: r.get(14),
                });
            }
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
    fn holds(&self, h: &Row2<LockInfo>) -> bool {
        h.alive && i64::try_from(h.v.expires_at).unwrap_or(i64::MAX) > self.now
    }

    /// Waiters no longer blocked by a holder or an earlier waiter.
    fn unblocked(&self) -> Vec<u64> {
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

fn remove_holders(t: &mut Tx<'_>, ns: i64, ids: &[i64]) -> Result<()> {
    if !ids.is_empty() {
        t.exec(
            "remove lock holders",
            "DELETE FROM maos.lock_holders WHERE ns = $1 AND id = ANY($2)",
            &[&ns, &ids],
        )?;
    }
    Ok(())
}

fn remove_waiters(t: &mut Tx<'_>, ns: i64, tickets: &[i64]) -> Result<()> {
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
fn signal(t: &mut Tx<'_>, ns: i64, st: &State) -> Result<()> {
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
struct Request<'a> {
    lock: &'a PgLock,
    agent: &'a AgentId,
    purpose: &'a str,
    req: uuid::Uuid,
    session_key: Option<i64>,
    lease: bool,
}

enum Step {
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
/// guard is not the lock (it is held for a statement or two), as `maos_lock::GUARD_FLOOR`.
const GUARD_FLOOR: Duration = Duration::from_millis(100);

/// One look at the table: grant, queue or report the blocker. `guard_wait` bounds the wait
/// for the guard row (at least [`GUARD_FLOOR`]): a process stopped while holding it makes
/// the step fail with [`Error::Busy`] instead of hanging.
fn step(
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

fn step_tx(
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
                     g AS (UPDATE maos.guards SET counter = $14 WHERE ns = $1 AND what = 'locks')
                     SELECT token FROM h",
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

/// A lock on one resource (a path or pattern), configured builder-style, as
/// `maos_lock::FileLock`.
#[derive(Debug, Clone)]
pub struct PgLock {
    pg: Pg,
    resource: ResourceName,
    mode: LockMode,
    ttl: Duration,
    wait: Duration,
    agent: Option<AgentId>,
    metadata: BTreeMap<String, String>,
}

impl PgLock {
    /// An exclusive lock on `resource`, with the default lease and wait, owned by the
    /// current agent (`MAOS_AGENT_ID`).
    pub fn new(pg: &Pg, resource: ResourceName) -> Self {
        Self {
            pg: pg.clone(),
            resource,
            mode: LockMode::Exclusive,
            ttl: DEFAULT_TTL,
            wait: DEFAULT_WAIT,
            agent: None,
            metadata: BTreeMap::new(),
        }
    }

    /// A shared lock instead.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn shared(mut self) -> Self {
        self.mode = LockMode::Shared;
        self
    }

    /// Sets the mode.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn mode(mut self, mode: LockMode) -> Self {
        self.mode = mode;
        self
    }

    /// The lease length (measured on the server's clock).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The longest [`PgLock::acquire`] waits.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Acts for `agent`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn agent(mut self, agent: AgentId) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Adds a metadata entry.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The limits every backend applies to a lock record (purpose, metadata).
    fn check_text(&self, purpose: &str) -> Result<()> {
        maos_lock::check_record_text(&self.resource, purpose, &self.metadata).map_err(|e| {
            Error::Invalid {
                what: "lock",
                reason: e.to_string(),
            }
        })
    }

    fn agent_id(&self) -> Result<AgentId> {
        match &self.agent {
            Some(a) => Ok(a.clone()),
            None => Ok(AgentId::current()?),
        }
    }

    /// Takes the lock if it is free and nobody is queued for an overlapping resource;
    /// `Ok(None)` otherwise.
    pub fn try_acquire(&self, purpose: &str) -> Result<Option<PgGuard>> {
        self.check_text(purpose)?;
        let agent = self.agent_id()?;
        let session = self.pg.session()?;
        let reconnect = self.pg.inner.options.reconnect_for;
        let (mut key, mut epoch) = session.current(reconnect)?;
        loop {
            let r = Request {
                lock: self,
                agent: &agent,
                purpose,
                req: uuid::Uuid::new_v4(),
                session_key: Some(key),
                lease: false,
            };
            let mut ticket = None;
            match step(&self.pg, &r, &mut ticket, false, GUARD_FLOOR)? {
                Step::Granted(info) => {
                    return Ok(Some(PgGuard::new(&self.pg, session, epoch, info)));
                }
                Step::Blocked { .. } => return Ok(None),
                Step::SessionGone => (key, epoch) = session.after(epoch, reconnect)?,
            }
        }
    }

    /// Takes the lock as a lease of the agent alone (no session: it outlives this process and
    /// ends when released, expired, or the agent's locks are released): `maos lock acquire`.
    pub fn acquire_lease(&self, purpose: &str) -> Result<LockInfo> {
        let g = self.acquire(purpose)?;
        g.detach()
    }

    /// Takes the lock, waiting first come, first served up to the configured wait.
    ///
    /// # Errors
    /// [`Error::Timeout`] naming the blocker; [`Error::Deadlock`] when deadlock resolution
    /// chose this wait.
    pub fn acquire(&self, purpose: &str) -> Result<PgGuard> {
        self.check_text(purpose)?;
        let agent = self.agent_id()?;
        let session = self.pg.session()?;
        let started = Instant::now();
        let deadline = started + self.wait;
        let reconnect = self.pg.inner.options.reconnect_for;
        let (key, mut epoch) = session.current(reconnect)?;
        let mut r = Request {
            lock: self,
            agent: &agent,
            purpose,
            req: uuid::Uuid::new_v4(),
            session_key: Some(key),
            lease: false,
        };
        // The hub listens before the first step, so that no wake-up can be missed.
        let hub = self.pg.hub()?;
        let chan = notify_channel(self.pg.inner.ns);
        let mut w = Withdraw {
            pg: &self.pg,
            ticket: None,
        };
        loop {
            let seen = hub.seen();
            let guard_wait = deadline.saturating_duration_since(Instant::now());
            let s = step(&self.pg, &r, &mut w.ticket, true, guard_wait)?;
            let (blocker, until, server_now) = match s {
                Step::Granted(info) => {
                    w.ticket = None;
                    return Ok(PgGuard::new(&self.pg, session, epoch, info));
                }
                Step::Blocked {
                    blocker,
                    until,
                    now,
                } => (blocker, until, now),
                Step::SessionGone => {
                    // Our place in the queue went with the session: ask again as a new
                    // request under the new one (the wait's deadline stands).
                    let (key, e) = session.after(epoch, reconnect)?;
                    epoch = e;
                    r.session_key = Some(key);
                    r.req = uuid::Uuid::new_v4();
                    continue;
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    resource: self.resource.clone(),
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    allowed_ms: u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX),
                    blocker: blocker.map(Box::new),
                });
            }
            let mut sleep = left.min(self.pg.inner.options.lock_fallback);
            if let Some(until) = until {
                let lease_left = Duration::from_millis(u(until - server_now) + 1);
                sleep = sleep.min(lease_left);
            }
            let mine = w.ticket.map(|t| t.to_string());
            hub.wait(seen, sleep, |ch, p| {
                ch == chan
                    && match p.strip_prefix("r:") {
                        Some(res) => ResourceName::new(res)
                            .is_ok_and(|r| maos_lock::overlaps(&r, &self.resource)),
                        None => mine
                            .as_deref()
                            .is_some_and(|m| p.split(',').any(|t| t == m)),
                    }
            });
        }
    }

    /// The resource.
    pub fn resource(&self) -> &ResourceName {
        &self.resource
    }
}

/// Removes a queued waiter when an acquisition ends without the lock (timeout, error,
/// unwinding).
struct Withdraw<'a> {
    pg: &'a Pg,
    ticket: Option<u64>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let ns = self.pg.inner.ns;
        let tk = i64::try_from(ticket).unwrap_or(i64::MAX);
        let r = self.pg.run(|c| {
            c.tx("withdraw a wait", |t| {
                t.relaxed()?;
                let mut st = load(t, ns)?;
                remove_waiters(t, ns, &[tk])?;
                st.waiters.retain(|w| w.v.ticket != ticket);
                signal(t, ns, &st)
            })
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, ticket, "cannot withdraw a lock wait");
        }
    }
}

/// A held lock. Dropping it releases the lock.
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock"]
pub struct PgGuard {
    pg: Pg,
    session: Arc<Session>,
    epoch: u64,
    info: LockInfo,
    active: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("key", &self.key()).finish()
    }
}

impl PgGuard {
    fn new(pg: &Pg, session: Arc<Session>, epoch: u64, info: LockInfo) -> Self {
        Self {
            pg: pg.clone(),
            session,
            epoch,
            info,
            active: true,
        }
    }

    /// The fencing token.
    pub fn token(&self) -> u64 {
        self.info.token
    }

    /// The lock record.
    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// True once the liveness session this lock was taken under was lost: the lock may be
    /// held by someone else now (a renewal or [`PgGuard::check`] says for sure).
    pub fn is_lost(&self) -> bool {
        self.session.epoch() != self.epoch
    }

    /// Extends the lease by its length from now (server clock).
    ///
    /// # Errors
    /// [`Error::LockLost`] when the lock is gone (lease ended, session ended, broken).
    pub fn renew(&mut self) -> Result<()> {
        let ns = self.pg.inner.ns;
        let (id, token) = (
            i64::try_from(self.info.id).unwrap_or(i64::MAX),
            i64::try_from(self.info.token).unwrap_or(i64::MAX),
        );
        let row = self.pg.run(|c| {
            c.opt(
                "renew a lock",
                "UPDATE maos.lock_holders SET expires_at = maos.now_ms() + ttl_ms
                 WHERE ns = $1 AND id = $2 AND token = $3 AND expires_at > maos.now_ms()
                   AND (session_key IS NULL OR maos.session_alive(session_key))
                 RETURNING expires_at",
                &[&ns, &id, &token],
            )
        })?;
        match row {
            Some(r) => {
                self.info.expires_at = u(r.get(0));
                Ok(())
            }
            None => Err(self.lost()),
        }
    }

    fn lost(&self) -> Error {
        let now = PgLockTable::new(&self.pg)
            .conflicting(&self.info.resource, self.info.mode)
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|h| Box::new(h.holder()));
        Error::LockLost {
            resource: self.info.resource.clone(),
            token: self.info.token,
            now,
        }
    }

    /// Checks that this guard still holds the lock.
    pub fn check(&self) -> Result<()> {
        PgLockTable::new(&self.pg).check_fencing_token(&self.info.resource, self.info.token)
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// [`Error::LockLost`] when it was lost already.
    pub fn release(mut self) -> Result<()> {
        self.active = false;
        release_record(&self.pg, &self.info)
    }

    /// Hands the lock to the owning agent: it no longer depends on this process's session
    /// and ends when released or when its lease runs out.
    pub fn detach(mut self) -> Result<LockInfo> {
        self.active = false;
        let ns = self.pg.inner.ns;
        let (id, token) = (
            i64::try_from(self.info.id).unwrap_or(i64::MAX),
            i64::try_from(self.info.token).unwrap_or(i64::MAX),
        );
        let n = self.pg.run(|c| {
            c.exec(
                "detach a lock",
                "UPDATE maos.lock_holders SET session_key = NULL WHERE ns = $1 AND id = $2 AND token = $3",
                &[&ns, &id, &token],
            )
        })?;
        if n == 0 {
            return Err(self.lost());
        }
        let mut info = self.info.clone();
        info.session_key = None;
        Ok(info)
    }
}

fn release_record(pg: &Pg, info: &LockInfo) -> Result<()> {
    // One statement, no guard: it only removes this holding, and tells the waiters of
    // overlapping resources to look again (each re-steps under the guard, in ticket order).
    let ns = pg.inner.ns;
    let (id, token) = (
        i64::try_from(info.id).unwrap_or(i64::MAX),
        i64::try_from(info.token).unwrap_or(i64::MAX),
    );
    let chan = notify_channel(ns);
    let rows = pg.run(|c| {
        c.tx("release a lock", |t| {
            t.relaxed()?;
            t.query(
                "release a lock",
                "WITH d AS (DELETE FROM maos.lock_holders WHERE ns = $1 AND id = $2 AND token = $3 RETURNING resource)
                 SELECT 1, pg_notify($4, 'r:' || d.resource) FROM d",
                &[&ns, &id, &token, &chan],
            )
        })
    })?;
    if rows.is_empty() {
        return Err(Error::LockLost {
            resource: info.resource.clone(),
            token: info.token,
            now: None,
        });
    }
    Ok(())
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        match release_record(&self.pg, &self.info) {
            Ok(()) => {}
            Err(Error::LockLost { .. }) => {
                tracing::warn!(resource = %self.info.resource, token = self.info.token, "lock was lost before it was dropped")
            }
            Err(e) => {
                tracing::error!(resource = %self.info.resource, error = &e as &dyn std::error::Error, "cannot release lock on drop")
            }
        }
    }
}

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

/// A wait in a deadlock cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WaitEdge {
    /// The waiting agent.
    pub waiter: AgentId,
    /// The agent it waits for.
    pub holder: AgentId,
    /// The resource waited for.
    pub resource: ResourceName,
    /// The wait's ticket.
    pub ticket: u64,
}

/// A cycle in the wait-for graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Deadlock {
    /// The agents of the cycle, sorted.
    pub involved_agents: Vec<AgentId>,
    /// The waits between them.
    pub waits: Vec<WaitEdge>,
    /// The suggested victim: the youngest wait (highest ticket).
    pub victim: WaitEdge,
    /// Whether the victim's wait was aborted.
    pub applied: bool,
}

/// Finds cycles in the wait-for graph of every machine's waits (the waiters and holders
/// tables), optionally aborts the youngest wait of each and broadcasts each on the
/// `deadlock` topic.
#[derive(Debug, Clone)]
pub struct PgDeadlockDetector {
    pg: Pg,
    resolve: bool,
    broadcast: Option<AgentId>,
}

impl PgDeadlockDetector {
    /// A detector that only reports.
    pub fn new(pg: &Pg) -> Self {
        Self {
            pg: pg.clone(),
            resolve: false,
            broadcast: None,
        }
    }

    /// Aborts the victim's wait of each cycle found.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn resolve(mut self, on: bool) -> Self {
        self.resolve = on;
        self
    }

    /// Broadcasts each cycle on [`DEADLOCK_TOPIC`] as `sender`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn broadcast(mut self, sender: AgentId) -> Self {
        self.broadcast = Some(sender);
        self
    }

    /// Finds the cycles now (and resolves and broadcasts them, as configured).
    pub fn check(&self) -> Result<Vec<Deadlock>> {
        let ns = self.pg.inner.ns;
        let resolve = self.resolve;
        let found = self.pg.run(|c| {
            c.tx("detect deadlocks", |t| {
                // Resolving writes (under the guard); only looking does not wait for it.
                let st = if resolve { load(t, ns)? } else { read(t, ns)? };
                let mut found = cycles(&st);
                if resolve {
                    for d in &mut found {
                        let agents = serde_json::to_value(&d.involved_agents).unwrap_or_default();
                        let tk = i64::try_from(d.victim.ticket).unwrap_or(i64::MAX);
                        t.exec(
                            "abort a deadlocked wait",
                            "UPDATE maos.lock_waiters SET aborted = $3 WHERE ns = $1 AND ticket = $2",
                            &[&ns, &tk, &agents],
                        )?;
                        t.notify(&notify_channel(ns), &d.victim.ticket.to_string())?;
                        d.applied = true;
                    }
                }
                Ok(found)
            })
        })?;
        if let Some(sender) = &self.broadcast {
            let b = crate::comm::PgBroadcast::new(&self.pg, sender.clone());
            for d in &found {
                b.broadcast(DEADLOCK_TOPIC, d)?;
            }
        }
        Ok(found)
    }
}

/// The deadlocks of `st`: strongly connected components of two or more agents.
fn cycles(st: &State) -> Vec<Deadlock> {
    use petgraph::graph::DiGraph;
    let mut g: DiGraph<AgentId, WaitEdge> = DiGraph::new();
    let mut idx = std::collections::HashMap::new();
    let mut node = |g: &mut DiGraph<AgentId, WaitEdge>, a: &AgentId| {
        *idx.entry(a.clone())
            .or_insert_with(|| g.add_node(a.clone()))
    };
    let live: Vec<&WaiterInfo> = st
        .waiters
        .iter()
        .filter(|w| w.alive)
        .map(|w| &w.v)
        .collect();
    for (n, w) in live.iter().enumerate() {
        let from = node(&mut g, &w.agent);
        let mut blockers: Vec<AgentId> = st
            .holders
            .iter()
            .filter(|h| st.holds(h) && conflicts(&h.v.resource, h.v.mode, &w.resource, w.mode))
            .map(|h| h.v.owner.clone())
            .collect();
        blockers.extend(
            live[..n]
                .iter()
                .filter(|e| conflicts(&e.resource, e.mode, &w.resource, w.mode))
                .map(|e| e.agent.clone()),
        );
        for b in blockers {
            if b == w.agent {
                continue;
            }
            let to = node(&mut g, &b);
            g.add_edge(
                from,
                to,
                WaitEdge {
                    waiter: w.agent.clone(),
                    holder: b,
                    resource: w.resource.clone(),
                    ticket: w.ticket,
                },
            );
        }
    }
    let mut out = Vec::new();
    for comp in petgraph::algo::tarjan_scc(&g) {
        if comp.len() < 2 {
            continue;
        }
        let set: std::collections::HashSet<_> = comp.iter().copied().collect();
        let mut waits: Vec<WaitEdge> = g
            .edge_indices()
            .filter_map(|e| {
                let (a, b) = g.edge_endpoints(e)?;
                (set.contains(&a) && set.contains(&b)).then(|| g[e].clone())
            })
            .collect();
        waits.sort_by_key(|w| w.ticket);
        let Some(victim) = waits.last().cloned() else {
            continue;
        };
        let mut agents: Vec<AgentId> = comp.iter().map(|n| g[*n].clone()).collect();
        agents.sort();
        out.push(Deadlock {
            involved_agents: agents,
            waits,
            victim,
            applied: false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::test_backend;

    fn r(s: &str) -> ResourceName {
        ResourceName::new(s).unwrap()
    }
    fn a(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    #[test]
    fn exclusive_shared_and_pattern_conflicts_with_growing_tokens() {
        let pg = test_backend("lock-conflicts").unwrap();
        let g = PgLock::new(&pg, r("src/api/**"))
            .agent(a("x"))
            .try_acquire("refactor")
            .unwrap()
            .unwrap();
        let other = PgLock::new(&pg, r("src/api/user.rs")).agent(a("y"));
        assert!(other.try_acquire("edit").unwrap().is_none());
        assert!(
            PgLock::new(&pg, r("src/main.rs"))
                .agent(a("y"))
                .try_acquire("edit")
                .unwrap()
                .is_some()
        );
        let t1 = g.token();
        g.release().unwrap();
        let g2 = other.try_acquire("edit").unwrap().unwrap();
        assert!(g2.token() > t1, "tokens only grow");
        let table = PgLockTable::new(&pg);
        table
            .check_fencing_token(&r("src/api/user.rs"), g2.token())
            .unwrap();
        let stale = g2.token();
        drop(g2);
        let err = table
            .check_fencing_token(&r("src/api/user.rs"), stale)
            .unwrap_err();
        assert!(matches!(err, Error::StaleToken { .. }), "{err}");
        // Shared locks coexist; an exclusive one waits for them.
        let s1 = PgLock::new(&pg, r("doc"))
            .shared()
            .agent(a("p"))
            .try_acquire("read")
            .unwrap()
            .unwrap();
        let s2 = PgLock::new(&pg, r("doc/a.md"))
            .shared()
            .agent(a("q"))
            .try_acquire("read")
            .unwrap()
            .unwrap();
        assert!(
            PgLock::new(&pg, r("doc/a.md"))
                .agent(a("w"))
                .try_acquire("write")
                .unwrap()
                .is_none()
        );
        assert_eq!(table.snapshot().unwrap().holders.len(), 2);
        drop((s1, s2));
        assert!(table.snapshot().unwrap().holders.is_empty());
    }

    /// A lock asked for after this process's session was terminated on the server, but
    /// before the session thread noticed (its heartbeat is a minute here): granted under
    /// the dead session it would look free to everyone else at once. It must be granted
    /// under the new session instead, and only there.
    #[test]
    fn a_grant_is_never_made_under_a_session_that_already_ended() {
        let raw = crate::server::shared_url().unwrap();
        let url = crate::BackendUrl::parse(&raw).unwrap();
        let ns = crate::server::unique_namespace("lock-dead-session");
        let slow = crate::Options::default().heartbeat(Duration::from_secs(60));
        let pg = Pg::connect_with(&url, &ns, slow).unwrap();
        let other = Pg::connect(&url, &ns).unwrap();
        let mut admin = postgres::Client::connect(&raw, postgres::NoTls).unwrap();
        let terminate = |admin: &mut postgres::Client, key: i64| {
            let done: bool = admin
                .query_one(
                    "SELECT pg_terminate_backend(backend_pid) FROM maos.sessions WHERE key = $1",
                    &[&key],
                )
                .unwrap()
                .get(0);
            assert!(done);
            crate::server::wait_until(Duration::from_secs(30), || {
                !other.session_alive(key).unwrap()
            });
        };
        for (n, waiting) in [(0, false), (1, true)] {
            let old = pg.session_key().unwrap();
            terminate(&mut admin, old);
            let res = r(&format!("f{n}"));
            let lock = PgLock::new(&pg, res.clone())
                .agent(a("x"))
                .wait(Duration::from_secs(30));
            let g = if waiting {
                lock.acquire("edit").unwrap()
            } else {
                lock.try_acquire("edit").unwrap().unwrap()
            };
            let key = g.info().session_key.unwrap();
            assert_ne!(key, old, "granted under the session that ended");
            assert!(other.session_alive(key).unwrap());
            assert!(!g.is_lost());
            // One holder: the other process sees it held.
            assert!(
                PgLock::new(&other, res)
                    .agent(a("y"))
                    .try_acquire("edit")
                    .unwrap()
                    .is_none()
            );
        }
        // A waiter whose session ends while it waits queues again under the new one and
        // gets the lock when the holder lets go.
        let held = PgLock::new(&other, r("w"))
            .agent(a("y"))
            .try_acquire("hold")
            .unwrap()
            .unwrap();
        let waiter = {
            let pg = pg.clone();
            std::thread::spawn(move || {
                PgLock::new(&pg, r("w"))
                    .agent(a("x"))
                    .wait(Duration::from_secs(60))
                    .acquire("after y")
                    .map(|g| g.info().session_key)
            })
        };
        let table = PgLockTable::new(&other);
        crate::server::wait_until(Duration::from_secs(30), || {
            !table.snapshot().unwrap().waiters.is_empty()
        });
        terminate(&mut admin, pg.session_key().unwrap());
        drop(held);
        let key = waiter.join().unwrap().unwrap().unwrap();
        assert!(other.session_alive(key).unwrap());
    }

    #[test]
    fn waiters_are_served_first_come_first_served() {
        let pg = test_backend("lock-fifo").unwrap();
        let holder = PgLock::new(&pg, r("f"))
            .agent(a("h"))
            .try_acquire("hold")
            .unwrap()
            .unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let table = PgLockTable::new(&pg);
        let mut threads = Vec::new();
        for (n, name) in ["first", "second", "third"].iter().enumerate() {
            let pg2 = pg.clone();
            let order = order.clone();
            let name = name.to_string();
            threads.push(std::thread::spawn(move || {
                let g = PgLock::new(&pg2, r("f"))
                    .agent(a(&name))
                    .wait(Duration::from_secs(60))
                    .acquire("turn")
                    .unwrap();
                order.lock().unwrap().push(name);
                drop(g);
            }));
            // The next one starts only once this one is queued.
            while table.snapshot().unwrap().waiters.len() < n + 1 {
                std::thread::yield_now();
            }
        }
        holder.release().unwrap();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["first", "second", "third"]);
        // try_acquire does not jump the queue.
        let h = PgLock::new(&pg, r("g"))
            .agent(a("h"))
            .try_acquire("x")
            .unwrap()
            .unwrap();
        let pg2 = pg.clone();
        let w = std::thread::spawn(move || {
            PgLock::new(&pg2, r("g"))
                .agent(a("w"))
                .wait(Duration::from_secs(60))
                .acquire("x")
                .map(|g| g.token())
        });
        while table.snapshot().unwrap().waiters.is_empty() {
            std::thread::yield_now();
        }
        drop(h);
        w.join().unwrap().unwrap();
    }

    #[test]
    fn a_lease_ends_on_the_servers_clock_and_the_holder_learns_it() {
        let pg = test_backend("lock-lease").unwrap();
        let mut g = PgLock::new(&pg, r("f"))
            .agent(a("slow"))
            .ttl(Duration::from_millis(300))
            .try_acquire("slow work")
            .unwrap()
            .unwrap();
        g.renew().unwrap();
        // A waiter gets the lock once the lease runs out (woken by its timer).
        let g2 = PgLock::new(&pg, r("f"))
            .agent(a("next"))
            .wait(Duration::from_secs(30))
            .acquire("after the lease")
            .unwrap();
        assert!(g2.token() > g.token());
        let err = g.renew().unwrap_err();
        assert!(matches!(err, Error::LockLost { .. }), "{err}");
        assert!(err.to_string().contains("next"), "{err}");
        let err = PgLockTable::new(&pg)
            .check_fencing_token(&r("f"), g.token())
            .unwrap_err();
        assert!(matches!(err, Error::StaleToken { .. }));
        drop(g); // releasing a lost lock changes nothing
        assert_eq!(PgLockTable::new(&pg).snapshot().unwrap().holders.len(), 1);
    }

    #[test]
    fn timeouts_name_the_holder_and_withdraw_the_wait() {
        let pg = test_backend("lock-timeout").unwrap();
        let _g = PgLock::new(&pg, r("f"))
            .agent(a("owner"))
            .try_acquire("long job")
            .unwrap()
            .unwrap();
        let err = PgLock::new(&pg, r("f"))
            .agent(a("w"))
            .wait(Duration::from_millis(50))
            .acquire("x")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("owner") && msg.contains("long job"), "{msg}");
        assert!(PgLockTable::new(&pg).snapshot().unwrap().waiters.is_empty());
    }

    #[test]
    fn agent_leases_outlive_the_session_until_released() {
        let url = crate::BackendUrl::parse(&crate::server::shared_url().unwrap()).unwrap();
        let ns = crate::server::unique_namespace("lock-agent");
        let info = {
            let pg = Pg::connect(&url, &ns).unwrap();
            PgLock::new(&pg, r("f"))
                .agent(a("cli"))
                .acquire_lease("edit")
                .unwrap()
        };
        // The process (its backend and session) is gone; the lease stays.
        let pg = Pg::connect(&url, &ns).unwrap();
        let table = PgLockTable::new(&pg);
        assert_eq!(table.snapshot().unwrap().holders, vec![info.clone()]);
        assert_eq!(
            table
                .renew_all(&a("cli"), Some(Duration::from_secs(5)))
                .unwrap()
                .len(),
            1
        );
        let err = table.release(&r("f"), &a("other"), None).unwrap_err();
        assert!(matches!(err, Error::NotOwner { .. }), "{err}");
        assert!(err.to_string().contains("cli"), "{err}");
        assert_eq!(table.release_agent(&a("cli")).unwrap().len(), 1);
        assert!(table.snapshot().unwrap().holders.is_empty());
    }

    #[test]
    fn a_deadlock_between_two_agents_is_found_and_resolved() {
        let pg = test_backend("lock-deadlock").unwrap();
        let gx = PgLock::new(&pg, r("x"))
            .agent(a("alice"))
            .try_acquire("x")
            .unwrap()
            .unwrap();
        let gy = PgLock::new(&pg, r("y"))
            .agent(a("bob"))
            .try_acquire("y")
            .unwrap()
            .unwrap();
        let table = PgLockTable::new(&pg);
        let pg1 = pg.clone();
        let t1 = std::thread::spawn(move || {
            PgLock::new(&pg1, r("y"))
                .agent(a("alice"))
                .wait(Duration::from_secs(60))
                .acquire("y")
                .map(|g| g.token())
        });
        while table.snapshot().unwrap().waiters.is_empty() {
            std::thread::yield_now();
        }
        let pg2 = pg.clone();
        let t2 = std::thread::spawn(move || {
            PgLock::new(&pg2, r("x"))
                .agent(a("bob"))
                .wait(Duration::from_secs(60))
                .acquire("x")
                .map(|g| g.token())
        });
        while table.snapshot().unwrap().waiters.len() < 2 {
            std::thread::yield_now();
        }
        let found = PgDeadlockDetector::new(&pg).check().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].involved_agents, [a("alice"), a("bob")]);
        assert_eq!(found[0].victim.waiter, a("bob"), "the youngest wait");
        let mut sub = crate::comm::PgSubscription::new(&pg, &[DEADLOCK_TOPIC], 0).unwrap();
        let resolved = PgDeadlockDetector::new(&pg)
            .resolve(true)
            .broadcast(a("monitor"))
            .check()
            .unwrap();
        assert!(resolved[0].applied);
        let err = t2.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::Deadlock { .. }), "{err}");
        // The victim's wait left the queue (it would block every later request for x,
        // the victim's own retry included); alice's wait is still there.
        let waiters = table.snapshot().unwrap().waiters;
        assert_eq!(waiters.len(), 1, "{waiters:?}");
        assert_eq!(waiters[0].agent, a("alice"));
        drop(gx); // bob gave up; alice still waits for y
        drop(gy);
        t1.join().unwrap().unwrap();
        // Bob retries x, now free: nothing of his aborted wait stands in the way.
        let again = PgLock::new(&pg, r("x"))
            .agent(a("bob"))
            .try_acquire("x again")
            .unwrap();
        assert!(again.is_some(), "bob's retry is blocked");
        let notes = sub.poll::<Deadlock>().unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].message.payload.victim.waiter, a("bob"));
    }
}
