//! Advisory locks: agents announce an interest in a resource (with a purpose and a priority)
//! and take turns, highest priority first, then in arrival order.
//!
//! Interests live in `.maos/locks/advisory.json`, read-modified-written only under the guard
//! kernel lock (no lost updates between concurrent requests). An interest vanishes when its
//! handle is dropped or withdrawn, or when its process dies (kernel-lock liveness, as for
//! locks). Nothing is enforced: an advisory lock is a queue that cooperating agents respect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use maos_core::{AgentId, Priority, ProcessIdentity, ResourceName, Workspace, now_ms};
use serde::{Deserialize, Serialize};

use crate::store::{ADVISORY, Locked, STATE_VERSION, Shared};
use crate::watch::{FALLBACK, Signal};
use crate::{Error, Result, overlaps};

/// One agent's interest in a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interest {
    /// Unique id, in arrival order.
    pub id: u64,
    /// The resource (path or pattern).
    pub resource: ResourceName,
    /// The interested agent.
    pub agent: AgentId,
    /// What it wants to do.
    pub purpose: String,
    /// How urgent it is: higher goes first.
    pub priority: Priority,
    /// When it was registered (ms since the Unix epoch).
    pub since: u64,
    /// True once its turn came (it keeps the turn until withdrawn).
    #[serde(default)]
    pub granted: bool,
    /// The registering process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
    /// Its liveness file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AdvisoryState {
    version: u32,
    #[serde(default)]
    next_id: u64,
    #[serde(default)]
    interests: Vec<Interest>,
}

/// Turn order: interests holding their turn, then higher priority, then earlier arrival.
fn turn_key(i: &Interest) -> (bool, std::cmp::Reverse<Priority>, u64) {
    (!i.granted, std::cmp::Reverse(i.priority), i.id)
}

fn with_state<R>(
    shared: &Shared,
    f: impl FnOnce(&mut Locked<'_>, &mut AdvisoryState) -> Result<(R, bool)>,
) -> Result<R> {
    shared.locked(|l| {
        let mut st: AdvisoryState = l.load(ADVISORY)?;
        let before = st.interests.len();
        let mut kept = Vec::with_capacity(before);
        for i in std::mem::take(&mut st.interests) {
            if l.alive(i.live.as_deref(), i.process.as_ref()) {
                kept.push(i);
            } else {
                tracing::debug!(agent = %i.agent, resource = %i.resource, "interest of a dead process removed");
            }
        }
        st.interests = kept;
        st.version = STATE_VERSION;
        let (r, dirty) = f(l, &mut st)?;
        if dirty || st.interests.len() != before {
            l.save(ADVISORY, &st)?;
        }
        Ok(r)
    })
}

/// Interests ahead of `me` for overlapping resources, in turn order.
fn ahead_of(st: &AdvisoryState, me: &Interest) -> Vec<Interest> {
    let mut v: Vec<Interest> = st
        .interests
        .iter()
        .filter(|i| i.id != me.id && overlaps(&i.resource, &me.resource))
        .filter(|i| turn_key(i) < turn_key(me))
        .cloned()
        .collect();
    v.sort_by_key(turn_key);
    v
}

/// The advisory lock registry of a workspace.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use maos_core::{AgentId, Priority, ResourceName, Workspace};
/// use maos_lock::AdvisoryLock;
/// let dir = tempfile::tempdir()?;
/// let ws = Workspace::init(dir.path())?;
/// let res = ResourceName::new("docs/api.md")?;
/// let a = AdvisoryLock::new(&ws).agent(AgentId::new("a")?);
/// let b = AdvisoryLock::new(&ws).agent(AgentId::new("b")?);
/// let first = a.request(res.clone(), "rewrite", Priority::Normal)?;
/// let mut urgent = b.request(res.clone(), "fix typo", Priority::High)?;
/// assert!(urgent.is_my_turn()?); // higher priority goes first
/// assert!(!first.is_my_turn()?);
/// urgent.wait_for_turn_blocking(std::time::Duration::from_secs(1))?;
/// drop(urgent);
/// assert!(first.is_my_turn()?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AdvisoryLock {
    ws: Workspace,
    agent: Option<AgentId>,
}

impl AdvisoryLock {
    /// The registry of `ws`, acting as the current agent.
    pub fn new(ws: &Workspace) -> Self {
        Self {
            ws: ws.clone(),
            agent: None,
        }
    }

    /// Acts for `agent`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn agent(mut self, agent: AgentId) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Registers an interest in `resource`; it lasts until the handle is dropped or
    /// withdrawn, or its process dies.
    pub fn request(
        &self,
        resource: ResourceName,
        purpose: &str,
        priority: Priority,
    ) -> Result<AdvisoryInterest> {
        let _span = tracing::info_span!("advisory_request", resource = %resource).entered();
        crate::store::check_record_text(&resource, purpose, &Default::default())?;
        let agent = match &self.agent {
            Some(a) => a.clone(),
            None => AgentId::current()?,
        };
        let shared = Shared::of(&self.ws)?;
        let info = with_state(&shared, |l, st| {
            let live = l.live_name()?;
            st.next_id += 1;
            let i = Interest {
                id: st.next_id,
                resource,
                agent,
                purpose: purpose.to_owned(),
                priority,
                since: now_ms(),
                granted: false,
                process: Some(l.shared.identity.clone()),
                live: Some(live),
            };
            st.interests.push(i.clone());
            Ok((i, true))
        })?;
        Ok(AdvisoryInterest {
            shared,
            info,
            active: true,
        })
    }

    /// Every live interest overlapping `resource`, in turn order.
    pub fn interests(&self, resource: &ResourceName) -> Result<Vec<Interest>> {
        let shared = Shared::of(&self.ws)?;
        with_state(&shared, |_, st| {
            let mut v: Vec<Interest> = st
                .interests
                .iter()
                .filter(|i| overlaps(&i.resource, resource))
                .cloned()
                .collect();
            v.sort_by_key(turn_key);
            Ok((v, false))
        })
    }
}

/// A registered interest; dropping it withdraws it.
#[derive(Debug)]
#[must_use = "dropping the interest withdraws it"]
pub struct AdvisoryInterest {
    shared: Arc<Shared>,
    info: Interest,
    active: bool,
}

impl AdvisoryInterest {
    /// The interest as registered.
    pub fn info(&self) -> &Interest {
        &self.info
    }

    /// The live interests ahead of this one (overlapping resources), in turn order.
    pub fn ahead(&self) -> Result<Vec<Interest>> {
        with_state(&self.shared, |_, st| Ok((ahead_of(st, &self.info), false)))
    }

    /// True when no interest is ahead of this one.
    pub fn is_my_turn(&self) -> Result<bool> {
        Ok(self.ahead()?.is_empty())
    }

    /// Takes the turn if it has come: returns the interest ahead otherwise.
    fn try_turn(&mut self) -> Result<Option<Interest>> {
        let (first, granted) = try_turn(&self.shared, &self.info)?;
        if granted {
            self.info.granted = true;
        }
        Ok(first)
    }

    /// Waits until it is this interest's turn (highest priority, then earliest arrival, among
    /// overlapping interests), then keeps the turn until withdrawn.
    ///
    /// # Errors
    /// [`Error::AdvisoryTimeout`] naming the interest ahead.
    pub fn wait_for_turn_blocking(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let watch = self.shared.watch();
        loop {
            let seen = watch.generation(Signal::Change);
            let Some(first) = self.try_turn()? else {
                return Ok(());
            };
            let now = Instant::now();
            if now >= crate::watch::deadline_after(start, timeout) {
                return Err(self.timeout(first, start));
            }
            watch.wait_blocking(
                Signal::Change,
                seen,
                (now + FALLBACK).min(crate::watch::deadline_after(start, timeout)),
            );
        }
    }

    /// [`AdvisoryInterest::wait_for_turn_blocking`] for async callers.
    pub async fn wait_for_turn(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let watch = self.shared.watch();
        loop {
            let seen = watch.generation(Signal::Change);
            let (shared, info) = (self.shared.clone(), self.info.clone());
            let (first, granted) = crate::asyncify("advisory turn", &self.shared.dir, move || {
                try_turn(&shared, &info)
            })
            .await?;
            if granted {
                self.info.granted = true;
            }
            let Some(first) = first else { return Ok(()) };
            let now = Instant::now();
            if now >= crate::watch::deadline_after(start, timeout) {
                return Err(self.timeout(first, start));
            }
            watch
                .wait_async(
                    Signal::Change,
                    seen,
                    (now + FALLBACK).min(crate::watch::deadline_after(start, timeout)),
                )
                .await;
        }
    }

    fn timeout(&self, first: Interest, start: Instant) -> Error {
        Error::AdvisoryTimeout {
            resource: self.info.resource.clone(),
            waited: start.elapsed(),
            ahead: first.agent,
            purpose: first.purpose,
        }
    }

    /// Withdraws the interest.
    pub fn withdraw(mut self) -> Result<()> {
        self.active = false;
        withdraw(&self.shared, self.info.id)
    }
}

fn try_turn(shared: &Shared, info: &Interest) -> Result<(Option<Interest>, bool)> {
    let me = info.id;
    with_state(shared, |_, st| {
        let Some(mine) = st.interests.iter().find(|i| i.id == me).cloned() else {
            return Err(Error::NotOwner {
                resource: info.resource.clone(),
                agent: info.agent.clone(),
                holder: None,
            });
        };
        if let Some(first) = ahead_of(st, &mine).into_iter().next() {
            return Ok(((Some(first), false), false));
        }
        let dirty = !mine.granted;
        if let Some(i) = st.interests.iter_mut().find(|i| i.id == me) {
            i.granted = true;
        }
        Ok(((None, true), dirty))
    })
}

fn withdraw(shared: &Shared, id: u64) -> Result<()> {
    with_state(shared, |_, st| {
        let before = st.interests.len();
        st.interests.retain(|i| i.id != id);
        Ok(((), st.interests.len() != before))
    })
}

impl Drop for AdvisoryInterest {
    fn drop(&mut self) {
        if self.active
            && let Err(e) = withdraw(&self.shared, self.info.id)
        {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot withdraw advisory interest"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_requests_lose_nothing_and_turns_follow_priority_then_arrival() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let res = ResourceName::new("src/**").unwrap();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let ws = ws.clone();
                let res = res.clone();
                std::thread::spawn(move || {
                    AdvisoryLock::new(&ws)
                        .agent(AgentId::new(format!("t{i}")).unwrap())
                        .request(
                            res,
                            "work",
                            if i == 5 {
                                Priority::Critical
                            } else {
                                Priority::Normal
                            },
                        )
                        .unwrap()
                })
            })
            .collect();
        let mut interests: Vec<AdvisoryInterest> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let all = AdvisoryLock::new(&ws)
            .interests(&ResourceName::new("src/a.rs").unwrap())
            .unwrap();
        assert_eq!(all.len(), 8, "no request lost");
        assert_eq!(all[0].agent.as_str(), "t5");
        let ids: Vec<u64> = all[1..].iter().map(|i| i.id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "then arrival order");
        // Take turns in order; each withdrawal hands the turn on.
        let order: Vec<u64> = all.iter().map(|i| i.id).collect();
        for id in order {
            let k = interests.iter().position(|i| i.info().id == id).unwrap();
            let mut it = interests.remove(k);
            it.wait_for_turn_blocking(Duration::from_secs(5)).unwrap();
            for other in &interests {
                assert!(!other.is_my_turn().unwrap());
            }
            it.withdraw().unwrap();
        }
        assert!(AdvisoryLock::new(&ws).interests(&res).unwrap().is_empty());
    }

    #[test]
    fn a_granted_turn_is_kept_and_timeouts_name_who_is_ahead() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let res = ResourceName::new("x").unwrap();
        let mut low = AdvisoryLock::new(&ws)
            .agent(AgentId::new("low").unwrap())
            .request(res.clone(), "slow job", Priority::Low)
            .unwrap();
        low.wait_for_turn_blocking(Duration::ZERO).unwrap();
        let mut high = AdvisoryLock::new(&ws)
            .agent(AgentId::new("high").unwrap())
            .request(res, "urgent", Priority::Critical)
            .unwrap();
        let err = high
            .wait_for_turn_blocking(Duration::from_millis(10))
            .unwrap_err();
        assert!(
            err.to_string().contains("low") && err.to_string().contains("slow job"),
            "{err}"
        );
    }
}
