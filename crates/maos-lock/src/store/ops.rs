//! The lock operations: the narrow interface between the lock semantics ([`crate::lock`],
//! [`crate::deadlock`]) and the storage. Each function is one guarded transaction: take or
//! queue ([`take`]), withdraw a wait, break dead holders (inside every step), renew, release,
//! detach, check a token, list, abort a deadlocked wait. A second backend (PostgreSQL)
//! implements these with the same meaning.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use maos_core::{AgentId, ResourceName, fsx};
use serde::Serialize;

use super::live::{self, LiveFile};
use super::records::{
    Abort, Doc, LockInfo, LockMode, WaiterInfo, key_of, literal_prefix, prefixes,
};
use super::{Op, Shared};
use crate::error::{HolderSummary, WaiterSummary};
use crate::{Error, FencingToken, Result, overlaps};

/// True when locks on `a` (in `am` mode) and `b` (in `bm` mode) cannot be held together.
pub(crate) fn conflicts(a: &ResourceName, am: LockMode, b: &ResourceName, bm: LockMode) -> bool {
    !(am == LockMode::Shared && bm == LockMode::Shared) && overlaps(a, b)
}

/// How a granted lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// By this process (its liveness file).
    Process,
    /// By a liveness file of its own, which child processes inherit (`lock run`).
    Inheritable,
    /// By the agent alone (`maos lock acquire`): ends when released, expired, or the agent
    /// is dead.
    Lease,
}

/// What a step asks for.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) resource: &'a ResourceName,
    pub(crate) mode: LockMode,
    pub(crate) agent: &'a AgentId,
    pub(crate) purpose: &'a str,
    pub(crate) metadata: &'a BTreeMap<String, String>,
    pub(crate) ttl_ms: u64,
    pub(crate) hold: Hold,
}

/// What blocks a waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Blocker {
    /// A holder of a conflicting lock.
    Holder(HolderSummary),
    /// An earlier waiter for a conflicting lock (first come, first served).
    Waiter(WaiterSummary),
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocker::Holder(h) => h.fmt(f),
            Blocker::Waiter(w) => w.fmt(f),
        }
    }
}

impl Blocker {
    /// Identifies the blocker (a holding, or a wait) so a change can be noticed.
    pub(crate) fn identity(&self) -> (u64, u64) {
        match self {
            Blocker::Holder(h) => (1, h.token.0),
            Blocker::Waiter(w) => (2, w.ticket),
        }
    }
}

/// A granted lock.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) info: LockInfo,
    /// The liveness file of an inheritable lock (kept open by the guard).
    pub(crate) run_live: Option<LiveFile>,
    /// True when the agent already held this lease (re-entrant: renewed, not taken again).
    pub(crate) reentered: bool,
}

/// A step that could not take the lock.
#[derive(Debug, Clone)]
pub(crate) struct Blocked {
    /// True when this step queued the caller and made its wake-up file (under the guard).
    pub(crate) wake_ready: bool,
    pub(crate) blocker: Option<Blocker>,
    /// The lease end of the blocking holder (ms since the epoch): look again then.
    pub(crate) until: Option<u64>,
    /// Liveness files of the blockers: their closing (a holder's death) is worth a look.
    pub(crate) lives: Vec<String>,
}

/// The outcome of a step.
#[derive(Debug)]
pub(crate) enum Step {
    Granted(Grant),
    Blocked(Blocked),
}

/// Everything the lock table holds, after dead and expired entries were removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Current holders, in grant order.
    pub holders: Vec<LockInfo>,
    /// Queued waiters, in ticket order.
    pub waiters: Vec<WaiterInfo>,
}

fn waiter_summary(w: &WaiterInfo) -> WaiterSummary {
    WaiterSummary {
        agent: w.agent.clone(),
        resource: w.resource.clone(),
        pid: w.live.as_ref().and(w.process.as_ref()).map(|p| p.pid),
        ticket: w.ticket,
        purpose: w.purpose.clone(),
    }
}

/// The keys whose documents may hold records overlapping `res`: its prefixes and itself,
/// the keys below it (only when the index says there are some), and the pattern document.
fn related_keys(op: &mut Op<'_>, res: &ResourceName) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let base = if res.is_pattern() {
        literal_prefix(res)
    } else {
        res.as_str()
    };
    if !base.is_empty() {
        keys.extend(prefixes(base).map(str::to_owned));
        keys.push(base.to_owned());
        if op.txn.below(base)? > 0 {
            keys.extend(op.txn.keys_under(base)?);
        }
    } else if op.txn.hdr.keys > 0 {
        keys.extend(op.txn.keys_under("")?);
    }
    if op.txn.hdr.pattern_doc != 0 || res.is_pattern() {
        keys.push(String::new());
    }
    Ok(keys)
}

fn remove_holder(op: &mut Op<'_>, key: &str, h: &LockInfo) -> Result<()> {
    op.txn
        .doc_mut(key)?
        .holders
        .retain(|x| !(x.id == h.id && x.token == h.token));
    Ok(())
}

fn remove_waiter(op: &mut Op<'_>, key: &str, ticket: u64) -> Result<()> {
    op.txn.doc_mut(key)?.waiters.retain(|w| w.ticket != ticket);
    Ok(())
}

/// One look at the table: take the lock, or (with `enqueue`) join the queue. `ticket` is
/// the caller's queue entry, kept across steps.
///
/// `run_live` is the liveness file of an inheritable request ([`Hold::Inheritable`]): made
/// when it first queues (its waiter record names it) or is granted, and handed to the
/// grant, so a `lock run` has one liveness file from its wait to its end.
pub(crate) fn take(
    shared: &Shared,
    req: &Request<'_>,
    ticket: &mut Option<u64>,
    enqueue: bool,
    timeout: Duration,
    run_live: &mut Option<LiveFile>,
) -> Result<Step> {
    shared.write(timeout, |op| take_in(op, req, ticket, enqueue, run_live))
}

/// The liveness file of an inheritable request, made (under the guard) if needed; its name.
fn ensure_run_live(op: &Op<'_>, run_live: &mut Option<LiveFile>) -> Result<String> {
    if let Some(f) = run_live {
        return Ok(f.name.clone());
    }
    let f = LiveFile::create(&op.shared.dir, op.shared.identity.start_time)?;
    let name = f.name.clone();
    *run_live = Some(f);
    Ok(name)
}

fn take_in(
    op: &mut Op<'_>,
    req: &Request<'_>,
    ticket: &mut Option<u64>,
    enqueue: bool,
    run_live: &mut Option<LiveFile>,
) -> Result<Step> {
    let key = key_of(req.resource).to_owned();
    let dir = op.shared.dir.clone();
    let mut mine = None;
    if let Some(t) = *ticket {
        let found = op
            .txn
            .doc(&key)?
            .waiters
            .iter()
            .find(|w| w.ticket == t)
            .cloned();
        match found {
            Some(w) => {
                if let Some(abort) = w.aborted {
                    remove_waiter(op, &key, t)?;
                    op.txn.commit()?;
                    live::remove_wake(&dir, t);
                    *ticket = None;
                    tracing::info!(resource = %req.resource, agent = %req.agent, "wait aborted by deadlock resolution");
                    return Err(Error::Deadlock {
                        resource: req.resource.clone(),
                        agent: req.agent.clone(),
                        cycle: abort.cycle,
                        release: abort.release,
                    });
                }
                mine = Some(t);
            }
            None => {
                tracing::warn!(resource = %req.resource, ticket = t, "queue entry vanished; queueing again");
                *ticket = None;
            }
        }
    }
    let keys = related_keys(op, req.resource)?;
    let mut removed: Vec<ResourceName> = Vec::new();
    let mut holder_blocker: Option<(HolderSummary, u64)> = None;
    let mut first_waiter: Option<WaiterInfo> = None;
    let mut lives = Vec::new();
    let mut blocked = false;
    for k in &keys {
        let holders: Vec<LockInfo> = op.txn.doc(k)?.holders.clone();
        for h in holders
            .iter()
            .filter(|h| conflicts(&h.resource, h.mode, req.resource, req.mode))
        {
            if !op.holds(h) {
                tracing::debug!(resource = %h.resource, owner = %h.owner, token = h.token.0, "stale lock broken");
                remove_holder(op, k, h)?;
                removed.push(h.resource.clone());
                continue;
            }
            // The agent's own lease: waiting would only wait for the agent itself. A try
            // that would not wait anyway (a process lock, not queued) just sees it taken.
            if h.is_lease() && &h.owner == req.agent && (enqueue || req.hold == Hold::Lease) {
                return own_lease(op, req, &key, k, h, mine, ticket, &removed);
            }
            blocked = true;
            if holder_blocker.is_none() {
                holder_blocker = Some((h.summary(), h.expires_at));
            }
            lives.extend(h.live.iter().cloned());
        }
        let waiters: Vec<WaiterInfo> = op.txn.doc(k)?.waiters.clone();
        for w in waiters.iter().filter(|w| {
            mine.is_none_or(|m| w.ticket < m)
                && conflicts(&w.resource, w.mode, req.resource, req.mode)
        }) {
            if !op.waits(w) {
                tracing::debug!(ticket = w.ticket, agent = %w.agent, "dead waiter removed");
                remove_waiter(op, k, w.ticket)?;
                live::remove_wake(&dir, w.ticket);
                removed.push(w.resource.clone());
                continue;
            }
            blocked = true;
            if first_waiter.as_ref().is_none_or(|f| w.ticket < f.ticket) {
                first_waiter = Some(w.clone());
            }
            lives.extend(w.live.iter().cloned());
        }
    }
    if !blocked {
        let grant = grant(op, req, &key, mine, false, run_live)?;
        if let Some(m) = mine {
            live::remove_wake(&dir, m);
        }
        *ticket = None;
        signal_unblocked(op, &removed)?;
        tracing::debug!(resource = %req.resource, token = grant.info.token.0, "lock granted");
        return Ok(Step::Granted(grant));
    }
    let mut queued = None;
    if enqueue && mine.is_none() {
        let live = match req.hold {
            Hold::Inheritable => ensure_run_live(op, run_live)?,
            Hold::Process | Hold::Lease => op.own_live()?,
        };
        let t = op.txn.issue_id()?;
        op.txn.doc_mut(&key)?.waiters.push(WaiterInfo {
            ticket: t,
            resource: req.resource.clone(),
            mode: req.mode,
            agent: req.agent.clone(),
            process: Some(op.shared.identity.clone()),
            live: Some(live.clone()),
            since: op.now,
            purpose: req.purpose.to_owned(),
            aborted: None,
        });
        queued = Some((t, live));
    }
    op.txn.commit()?;
    let mut wake_ready = false;
    if let Some((t, live)) = queued {
        // Its wake-up file is a second name of its liveness file (a link: no inode to
        // allocate, so it is made here, before anyone can signal it). When that fails the
        // waiter creates one after the guard is released (creating a file can take long on
        // a busy file system): see `Waiting::prepare_watch`.
        wake_ready = live::link_wake(&dir, t, &live);
        *ticket = Some(t);
        tracing::debug!(resource = %req.resource, ticket = t, "queued");
    }
    signal_unblocked(op, &removed)?;
    let (blocker, until) = match (holder_blocker, first_waiter) {
        (Some((h, until)), _) => (Some(Blocker::Holder(h)), Some(until)),
        (None, Some(w)) => (Some(Blocker::Waiter(waiter_summary(&w))), None),
        (None, None) => (None, None),
    };
    Ok(Step::Blocked(Blocked {
        wake_ready,
        blocker,
        until,
        lives,
    }))
}

/// The request overlaps a lease its own agent holds: renew it when it is the very same
/// lock asked for as a lease (re-entrant), else refuse at once (waiting would only wait for
/// the agent itself).
#[allow(clippy::too_many_arguments)] // one step's state, passed through once
fn own_lease(
    op: &mut Op<'_>,
    req: &Request<'_>,
    key: &str,
    k: &str,
    h: &LockInfo,
    mine: Option<u64>,
    ticket: &mut Option<u64>,
    removed: &[ResourceName],
) -> Result<Step> {
    let dir = op.shared.dir.clone();
    if let Some(m) = mine {
        remove_waiter(op, key, m)?;
    }
    let same = req.hold == Hold::Lease && &h.resource == req.resource && h.mode == req.mode;
    let mut info = None;
    if same {
        let now = op.now;
        let d = op.txn.doc_mut(k)?;
        if let Some(x) = d
            .holders
            .iter_mut()
            .find(|x| x.id == h.id && x.token == h.token)
        {
            x.ttl_ms = x.ttl_ms.max(req.ttl_ms);
            x.expires_at = x.expires_at.max(now.saturating_add(x.ttl_ms));
            if !req.purpose.is_empty() {
                x.purpose = req.purpose.to_owned();
            }
            info = Some(x.clone());
        }
    }
    op.txn.commit()?;
    if let Some(m) = mine {
        live::remove_wake(&dir, m);
    }
    *ticket = None;
    signal_unblocked(op, removed)?;
    match info {
        Some(info) => Ok(Step::Granted(Grant {
            info,
            run_live: None,
            reentered: true,
        })),
        None => Err(Error::AlreadyHeld {
            resource: req.resource.clone(),
            agent: req.agent.clone(),
            holder: Box::new(h.summary()),
        }),
    }
}

fn grant(
    op: &mut Op<'_>,
    req: &Request<'_>,
    key: &str,
    mine: Option<u64>,
    reentered: bool,
    run_live: &mut Option<LiveFile>,
) -> Result<Grant> {
    let token = op.txn.issue_id()?;
    let id = mine.unwrap_or(token);
    let live = match req.hold {
        Hold::Lease => None,
        Hold::Process => Some(op.own_live()?),
        Hold::Inheritable => Some(ensure_run_live(op, run_live)?),
    };
    let info = LockInfo {
        id,
        resource: req.resource.clone(),
        mode: req.mode,
        owner: req.agent.clone(),
        process: Some(op.shared.identity.clone()),
        live,
        acquired_at: op.now,
        expires_at: op.now.saturating_add(req.ttl_ms),
        ttl_ms: req.ttl_ms,
        purpose: req.purpose.to_owned(),
        metadata: req.metadata.clone(),
        token: FencingToken(token),
    };
    let d = op.txn.doc_mut(key)?;
    if let Some(m) = mine {
        d.waiters.retain(|w| w.ticket != m);
    }
    d.holders.push(info.clone());
    // On failure the liveness file stays with the caller (retired when it gives up).
    op.txn.commit()?;
    Ok(Grant {
        info,
        run_live: if req.hold == Hold::Inheritable {
            run_live.take()
        } else {
            None
        },
        reentered,
    })
}

/// Whether waiter `w` is still blocked (by a live conflicting holder or an earlier live
/// conflicting waiter).
fn blocked_now(op: &mut Op<'_>, w: &WaiterInfo) -> Result<bool> {
    for k in related_keys(op, &w.resource)? {
        let d: Doc = op.txn.doc(&k)?.clone();
        for h in d
            .holders
            .iter()
            .filter(|h| conflicts(&h.resource, h.mode, &w.resource, w.mode))
        {
            if op.holds(h) {
                return Ok(true);
            }
        }
        for e in d
            .waiters
            .iter()
            .filter(|e| e.ticket < w.ticket && conflicts(&e.resource, e.mode, &w.resource, w.mode))
        {
            if op.waits(e) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// After records on `removed` left the table: signals (writes the wake-up file of) every
/// waiter they may have blocked that nothing blocks any more. Only those waiters wake.
pub(crate) fn signal_unblocked(op: &mut Op<'_>, removed: &[ResourceName]) -> Result<()> {
    if removed.is_empty() {
        return Ok(());
    }
    let uniq: BTreeSet<&ResourceName> = removed.iter().collect();
    let mut cands: BTreeMap<u64, WaiterInfo> = BTreeMap::new();
    for r in uniq {
        for k in related_keys(op, r)? {
            for w in &op.txn.doc(&k)?.waiters {
                if overlaps(&w.resource, r) && w.aborted.is_none() {
                    cands.insert(w.ticket, w.clone());
                }
            }
        }
    }
    for w in cands.values() {
        if !blocked_now(op, w)? {
            op.signal(w.ticket);
        }
    }
    Ok(())
}

/// Leaves the queue, waiting at most `timeout` for the guard.
pub(crate) fn withdraw(
    shared: &Shared,
    resource: &ResourceName,
    ticket: u64,
    timeout: Duration,
) -> Result<()> {
    shared.write(timeout, |op| {
        let key = key_of(resource);
        let present = op.txn.doc(key)?.waiters.iter().any(|w| w.ticket == ticket);
        if present {
            remove_waiter(op, key, ticket)?;
            op.txn.commit()?;
            // Those queued behind it may go now.
            signal_unblocked(op, std::slice::from_ref(resource))?;
        }
        live::remove_wake(&op.shared.dir, ticket);
        Ok(())
    })
}

fn lost_error(op: &mut Op<'_>, info: &LockInfo) -> Result<Error> {
    let mut now_held_by = None;
    'outer: for k in related_keys(op, &info.resource)? {
        let holders = op.txn.doc(&k)?.holders.clone();
        for h in holders
            .iter()
            .filter(|h| conflicts(&h.resource, h.mode, &info.resource, info.mode))
        {
            if op.holds(h) {
                now_held_by = Some(Box::new(h.summary()));
                break 'outer;
            }
        }
    }
    Ok(Error::LockLost {
        resource: info.resource.clone(),
        token: info.token,
        now_held_by,
    })
}

fn find_own(op: &mut Op<'_>, info: &LockInfo) -> Result<Option<usize>> {
    Ok(op
        .txn
        .doc(key_of(&info.resource))?
        .holders
        .iter()
        .position(|h| h.id == info.id && h.token == info.token))
}

/// Releases the holding `info` (by id and token).
///
/// # Errors
/// [`Error::LockLost`] when it is no longer there (nothing is deleted then).
pub(crate) fn release(shared: &Shared, info: &LockInfo) -> Result<()> {
    shared.write(fsx::DEFAULT_GUARD_TIMEOUT, |op| match find_own(op, info)? {
        Some(i) => {
            op.txn.doc_mut(key_of(&info.resource))?.holders.remove(i);
            op.txn.commit()?;
            signal_unblocked(op, std::slice::from_ref(&info.resource))?;
            Ok(())
        }
        None => Err(lost_error(op, info)?),
    })
}

/// Extends the lease of `info` by its length from now; returns the new end.
pub(crate) fn renew(shared: &Shared, info: &LockInfo) -> Result<u64> {
    shared.write(fsx::DEFAULT_GUARD_TIMEOUT, |op| match find_own(op, info)? {
        Some(i) => {
            let now = op.now;
            let h = &mut op.txn.doc_mut(key_of(&info.resource))?.holders[i];
            h.expires_at = now.saturating_add(h.ttl_ms);
            let e = h.expires_at;
            op.txn.commit()?;
            Ok(e)
        }
        None => Err(lost_error(op, info)?),
    })
}

/// Turns a process's lock into a lease of its agent (durable).
pub(crate) fn detach(shared: &Shared, info: &LockInfo) -> Result<LockInfo> {
    shared.write(fsx::DEFAULT_GUARD_TIMEOUT, |op| match find_own(op, info)? {
        Some(i) => {
            let h = &mut op.txn.doc_mut(key_of(&info.resource))?.holders[i];
            h.live = None;
            let out = h.clone();
            op.txn.commit()?;
            Ok(out)
        }
        None => Err(lost_error(op, info)?),
    })
}

/// Checks that `token` belongs to a current holder of exactly `resource`.
pub(crate) fn check_token(
    shared: &Shared,
    resource: &ResourceName,
    token: FencingToken,
) -> Result<()> {
    shared.read(fsx::DEFAULT_GUARD_TIMEOUT, |op| {
        let holders = op.txn.doc(key_of(resource))?.holders.clone();
        let mut ok = false;
        let mut current = None;
        for h in holders.iter().filter(|h| &h.resource == resource) {
            if op.holds(h) {
                if h.token == token {
                    ok = true;
                }
                current = current.max(Some(h.token));
            }
        }
        if ok {
            Ok(())
        } else {
            Err(Error::StaleToken {
                resource: resource.clone(),
                token,
                current,
            })
        }
    })
}

/// What to do with an agent's records in [`agent_records`].
pub(crate) enum AgentAction {
    Release,
    Renew(Option<u64>),
}

/// Releases or renews `agent`'s locks on exactly `resource` (only the one with `token`, if
/// given).
pub(crate) fn agent_records(
    shared: &Shared,
    resource: &ResourceName,
    agent: &AgentId,
    token: Option<FencingToken>,
    action: AgentAction,
) -> Result<Vec<LockInfo>> {
    shared.write(fsx::DEFAULT_GUARD_TIMEOUT, |op| {
        let key = key_of(resource);
        let holders = op.txn.doc(key)?.holders.clone();
        let now = op.now;
        let mut hit = Vec::new();
        let mut keep = Vec::with_capacity(holders.len());
        let mut changed = false;
        for mut h in holders {
            let mine =
                &h.resource == resource && &h.owner == agent && token.is_none_or(|t| t == h.token);
            if mine && op.holds(&h) {
                changed = true;
                match action {
                    AgentAction::Release => hit.push(h),
                    AgentAction::Renew(ttl) => {
                        if let Some(ttl) = ttl {
                            h.ttl_ms = ttl;
                        }
                        h.expires_at = now.saturating_add(h.ttl_ms);
                        hit.push(h.clone());
                        keep.push(h);
                    }
                }
            } else if mine {
                changed = true; // expired or dead: lost already
            } else {
                keep.push(h);
            }
        }
        if changed {
            op.txn.doc_mut(key)?.holders = keep;
            op.txn.commit()?;
        }
        if hit.is_empty() {
            let mut holder = None;
            'outer: for k in related_keys(op, resource)? {
                let hs = op.txn.doc(&k)?.holders.clone();
                for h in hs.iter().filter(|h| overlaps(&h.resource, resource)) {
                    if op.holds(h) {
                        holder = Some(Box::new(h.summary()));
                        break 'outer;
                    }
                }
            }
            return Err(Error::NotOwner {
                resource: resource.clone(),
                agent: agent.clone(),
                holder,
            });
        }
        if matches!(action, AgentAction::Release) {
            signal_unblocked(op, std::slice::from_ref(resource))?;
        }
        Ok(hit)
    })
}

/// Every record, after removing holders that no longer hold and dead waiters (`reap`, under
/// the exclusive guard) or leaving them out (a read).
fn snapshot_in(op: &mut Op<'_>, reap: bool) -> Result<Snapshot> {
    let keys = op.txn.all_keys()?;
    let mut snap = Snapshot::default();
    let mut removed = Vec::new();
    for k in keys {
        let d = op.txn.doc(&k)?.clone();
        let mut keep_h = Vec::with_capacity(d.holders.len());
        for h in d.holders {
            if op.holds(&h) {
                keep_h.push(h);
            } else {
                tracing::debug!(resource = %h.resource, owner = %h.owner, token = h.token.0, "stale lock reclaimed");
                removed.push(h.resource);
            }
        }
        let mut keep_w = Vec::with_capacity(d.waiters.len());
        for w in d.waiters {
            if op.waits(&w) {
                keep_w.push(w);
            } else {
                if reap {
                    live::remove_wake(&op.shared.dir, w.ticket);
                }
                removed.push(w.resource);
            }
        }
        let lost = keep_h.len() + keep_w.len()
            != op.txn.doc(&k)?.holders.len() + op.txn.doc(&k)?.waiters.len();
        snap.holders.extend(keep_h.iter().cloned());
        snap.waiters.extend(keep_w.iter().cloned());
        if reap && lost {
            let dm = op.txn.doc_mut(&k)?;
            dm.holders = keep_h;
            dm.waiters = keep_w;
        }
    }
    if reap {
        op.txn.commit()?;
        signal_unblocked(op, &removed)?;
    }
    snap.holders.sort_by_key(|h| h.id);
    snap.waiters.sort_by_key(|w| w.ticket);
    Ok(snap)
}

/// Holders and waiters, after reclaiming dead and expired ones.
pub(crate) fn snapshot(shared: &Shared) -> Result<Snapshot> {
    shared.write(fsx::DEFAULT_GUARD_TIMEOUT, |op| snapshot_in(op, true))
}

/// Current holders whose locks conflict with a `mode` lock on `resource` (a read: nothing
/// is written, the cost follows the resource's own keys, not the table's size).
pub(crate) fn conflicting(
    shared: &Shared,
    resource: &ResourceName,
    mode: LockMode,
    timeout: Duration,
) -> Result<Vec<LockInfo>> {
    shared.read(timeout, |op| {
        let mut out = Vec::new();
        for k in related_keys(op, resource)? {
            let holders = op.txn.doc(&k)?.holders.clone();
            for h in holders
                .into_iter()
                .filter(|h| conflicts(&h.resource, h.mode, resource, mode))
            {
                if op.holds(&h) {
                    out.push(h);
                }
            }
        }
        out.sort_by_key(|h| h.id);
        Ok(out)
    })
}

/// Releases every lease `agent` holds without a process.
pub(crate) fn release_agent(shared: &Shared, agent: &AgentId) -> Result<Vec<LockInfo>> {
    shared.write(fsx::DEFAULT_GUARD_TIMEOUT, |op| {
        let mut gone = Vec::new();
        for k in op.txn.all_keys()? {
            let d = op.txn.doc(&k)?;
            if !d.holders.iter().any(|h| &h.owner == agent && h.is_lease()) {
                continue;
            }
            let holders = std::mem::take(&mut op.txn.doc_mut(&k)?.holders);
            let (g, keep): (Vec<_>, Vec<_>) = holders
                .into_iter()
                .partition(|h| &h.owner == agent && h.is_lease());
            op.txn.doc_mut(&k)?.holders = keep;
            gone.extend(g);
        }
        op.txn.commit()?;
        let removed: Vec<ResourceName> = gone.iter().map(|h| h.resource.clone()).collect();
        signal_unblocked(op, &removed)?;
        Ok(gone)
    })
}

/// Renews every lock `agent` still holds (setting the lease length to `ttl_ms` first when
/// given).
pub(crate) fn renew_all(
    shared: &Shared,
    agent: &AgentId,
    ttl_ms: Option<u64>,
) -> Result<Vec<LockInfo>> {
    shared.write(fsx::DEFAULT_GUARD_TIMEOUT, |op| {
        let mut out = Vec::new();
        for k in op.txn.all_keys()? {
            let holders = op.txn.doc(&k)?.holders.clone();
            let mut changed = false;
            let mut new = Vec::with_capacity(holders.len());
            for mut h in holders {
                if &h.owner == agent && op.holds(&h) {
                    if let Some(t) = ttl_ms {
                        h.ttl_ms = t;
                    }
                    h.expires_at = op.now.saturating_add(h.ttl_ms);
                    out.push(h.clone());
                    changed = true;
                }
                new.push(h);
            }
            if changed {
                op.txn.doc_mut(&k)?.holders = new;
            }
        }
        op.txn.commit()?;
        Ok(out)
    })
}

/// Under one guard: the current records (reaped) go to `decide`, which may name a wait to
/// abort (its resource, its ticket, and the abort to record). Returns the abort applied.
pub(crate) fn abort_wait(
    shared: &Shared,
    mut decide: impl FnMut(&Snapshot) -> Option<(ResourceName, u64, Abort)>,
) -> Result<Option<(ResourceName, u64, Abort)>> {
    shared.write(fsx::DEFAULT_GUARD_TIMEOUT, |op| {
        let snap = snapshot_in(op, true)?;
        let Some((resource, ticket, abort)) = decide(&snap) else {
            return Ok(None);
        };
        let key = key_of(&resource);
        let d = op.txn.doc_mut(key)?;
        let Some(w) = d.waiters.iter_mut().find(|w| w.ticket == ticket) else {
            return Ok(None);
        };
        w.aborted = Some(abort.clone());
        op.txn.commit()?;
        op.signal(ticket);
        Ok(Some((resource, ticket, abort)))
    })
}

/// The records as they are (a read, nothing reaped): for the wait-for graph.
pub(crate) fn read_all(shared: &Shared) -> Result<Snapshot> {
    shared.read(fsx::DEFAULT_GUARD_TIMEOUT, |op| snapshot_in(op, false))
}

/// Every record as stored, live or not: nothing reaped, nothing left out.
pub(crate) fn dump(shared: &Shared) -> Result<Snapshot> {
    shared.read(fsx::DEFAULT_GUARD_TIMEOUT, |op| {
        let mut snap = Snapshot::default();
        for k in op.txn.all_keys()? {
            let d = op.txn.doc(&k)?;
            snap.holders.extend(d.holders.iter().cloned());
            snap.waiters.extend(d.waiters.iter().cloned());
        }
        snap.holders.sort_by_key(|h| h.id);
        snap.waiters.sort_by_key(|w| w.ticket);
        Ok(snap)
    })
}
