//! One acquisition in progress: steps under the guard, the queue entry, the sleep between
//! steps (woken by this waiter's own wake-up file, its blockers' deaths, the blocking lease's
//! end, or the fallback timer), and what it reports while it waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use maos_core::{AgentId, deadline_after, now_ms};

use super::{FileLock, GUARD_FLOOR, LockGuard};
use crate::error::HolderSummary;
use crate::store::Shared;
use crate::store::live::LiveFile;
use crate::store::ops::{self, Blocked, Blocker, Grant, Hold, Request, Step};
use crate::watch::{self, DirWatch, Signal};
use crate::{Error, Result};

/// An acquisition in progress. Dropping it withdraws its queue entry.
pub(crate) struct Waiting {
    shared: Arc<Shared>,
    lock: FileLock,
    agent: AgentId,
    purpose: String,
    hold: Hold,
    ticket: Option<u64>,
    started: Instant,
    deadline: Instant,
    last: Option<Blocked>,
    /// The last holder that blocked a step (for the timeout error).
    last_holder: Option<HolderSummary>,
    reported: Option<(u64, u64)>,
    sleeps: u32,
    watch: Option<Arc<DirWatch>>,
    registered: Option<u64>,
    lives: Vec<String>,
    /// The liveness file of an inheritable request (its wait's, then its lock's).
    run_live: Option<LiveFile>,
}

impl Waiting {
    pub(crate) fn new(
        shared: Arc<Shared>,
        lock: FileLock,
        agent: AgentId,
        purpose: &str,
        hold: Hold,
    ) -> Result<Self> {
        let started = Instant::now();
        Ok(Self {
            shared,
            deadline: deadline_after(started, lock.wait),
            lock,
            agent,
            purpose: purpose.to_owned(),
            hold,
            ticket: None,
            started,
            last: None,
            last_holder: None,
            reported: None,
            sleeps: 0,
            watch: None,
            registered: None,
            lives: Vec::new(),
            run_live: None,
        })
    }

    pub(crate) fn watch(&self) -> Option<Arc<DirWatch>> {
        self.watch.clone()
    }

    pub(crate) fn seen(&self) -> u64 {
        self.watch
            .as_ref()
            .map_or(0, |w| w.generation(Signal::Wake))
    }

    /// How long the next step may wait for the table's guard: what is left of the wait, but
    /// at least [`GUARD_FLOOR`] (the guard is not the lock: it is held for microseconds).
    fn guard_timeout(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(GUARD_FLOOR)
    }

    /// One look at the table: take the lock, or (if `enqueue`) join the queue.
    pub(crate) fn step(&mut self, enqueue: bool) -> Result<Option<Grant>> {
        let req = Request {
            resource: &self.lock.resource,
            mode: self.lock.mode,
            agent: &self.agent,
            purpose: &self.purpose,
            metadata: &self.lock.metadata,
            ttl_ms: watch::millis(self.lock.ttl).max(1),
            hold: self.hold,
        };
        let timeout = self.guard_timeout();
        match ops::take(
            &self.shared,
            &req,
            &mut self.ticket,
            enqueue,
            timeout,
            &mut self.run_live,
        )? {
            Step::Granted(g) => Ok(Some(g)),
            Step::Blocked(b) => {
                if let Some(Blocker::Holder(h)) = &b.blocker {
                    self.last_holder = Some(h.clone());
                }
                self.last = Some(b);
                Ok(None)
            }
        }
    }

    /// Before sleeping: tells the `on_blocked` hook whom this wait waits for, when that
    /// changed since it last said.
    pub(crate) fn report(&mut self) {
        let Some(bl) = self.last.as_ref().and_then(|b| b.blocker.clone()) else {
            return;
        };
        let id = bl.identity();
        if self.reported != Some(id) {
            self.reported = Some(id);
            tracing::debug!(resource = %self.lock.resource, blocker = %bl, "waiting");
            if let Some(f) = &self.lock.on_blocked {
                f(&bl);
            }
        }
    }

    /// Waits for the lock without an async runtime.
    pub(crate) fn wait_blocking(&mut self) -> Result<Grant> {
        loop {
            let seen = self.seen();
            if let Some(g) = self.step(true)? {
                return Ok(g);
            }
            if self.prepare_watch() {
                continue; // look again now that the wake-ups are routed here
            }
            let Some(until) = self.sleep_until() else {
                return Err(self.timed_out_ref());
            };
            self.report();
            if let Some(wt) = &self.watch {
                wt.wait_blocking(Signal::Wake, seen, until);
            }
        }
    }

    /// After a blocked step: makes sure the watch exists, creates the wake-up file of a new
    /// ticket (outside the guard: a signal sent before it existed is lost, and the look
    /// again below sees what it announced) and routes it and its blockers' liveness files to
    /// the watch. Returns true when something changed, so the caller must look again before
    /// sleeping (a signal sent before the routing would otherwise be missed).
    pub(crate) fn prepare_watch(&mut self) -> bool {
        let mut changed = false;
        if self.watch.is_none() {
            self.watch = Some(self.shared.watch());
            changed = true;
        }
        let wt = self.watch.as_ref().expect("created just above");
        if self.registered != self.ticket {
            if let Some(old) = self.registered.take() {
                wt.unregister(old);
            }
            if let Some(t) = self.ticket {
                // Made under the guard by the step that queued, unless that failed.
                if !self.last.as_ref().is_some_and(|b| b.wake_ready) {
                    crate::store::live::create_wake(&self.shared.dir, t);
                }
                wt.register(t);
            }
            self.registered = self.ticket;
            changed = true;
        }
        let mut lives = self
            .last
            .as_ref()
            .map(|b| b.lives.clone())
            .unwrap_or_default();
        lives.sort();
        lives.dedup();
        if lives != self.lives {
            wt.unregister_lives(&self.lives);
            wt.register_lives(&lives);
            self.lives = lives;
            changed = true;
        }
        changed
    }

    /// When to look again: the deadline, the fallback timer, or the blocking lease's end,
    /// whichever is first; `None` once the deadline has passed.
    pub(crate) fn sleep_until(&mut self) -> Option<Instant> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        let fallback = self
            .watch
            .as_ref()
            .map_or(watch::FALLBACK, |w| w.fallback(self.sleeps));
        self.sleeps += 1;
        let mut until = self.deadline.min(now + fallback);
        if let Some(end) = self.last.as_ref().and_then(|b| b.until) {
            let wall = now_ms();
            // A lease already over (its holder may be a `lock run` command nobody can renew)
            // is no reason to look again before the fallback.
            if end >= wall {
                let left = Duration::from_millis(end - wall + 1);
                until = until.min(deadline_after(now, left));
            }
        }
        Some(until)
    }

    /// Leaves the queue and builds the timeout error.
    pub(crate) fn timed_out(mut self) -> Error {
        self.timed_out_ref()
    }

    fn timed_out_ref(&mut self) -> Error {
        self.withdraw();
        let ahead = match self.last.as_ref().and_then(|b| b.blocker.clone()) {
            Some(Blocker::Waiter(w)) => Some(Box::new(w)),
            _ => None,
        };
        let holder = match self.last.as_ref().and_then(|b| b.blocker.clone()) {
            Some(Blocker::Holder(h)) => Some(Box::new(h)),
            _ => None,
        };
        Error::Timeout {
            resource: self.lock.resource.clone(),
            waited: self.started.elapsed(),
            allowed: self.lock.wait,
            holder: holder.or_else(|| {
                if ahead.is_none() {
                    self.last_holder.clone().map(Box::new)
                } else {
                    None
                }
            }),
            ahead,
        }
    }

    fn withdraw(&mut self) {
        let Some(tk) = self.ticket.take() else { return };
        if let Err(e) = ops::withdraw(&self.shared, &self.lock.resource, tk, GUARD_FLOOR) {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                ticket = tk,
                "cannot withdraw from the lock queue now; retried by this process's next lock operation"
            );
            self.shared.defer_withdrawal(self.lock.resource.clone(), tk);
        }
    }

    pub(crate) fn finish(mut self, g: Grant) -> LockGuard {
        self.ticket = None;
        LockGuard::new(
            self.shared.clone(),
            g,
            self.lock.heartbeat,
            self.lock.on_lost.clone(),
        )
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(w) = &self.watch {
            if let Some(t) = self.registered.take() {
                w.unregister(t);
            }
            w.unregister_lives(&self.lives);
        }
        self.withdraw();
        // After the withdrawal: no record names it any more (or one that probes as gone).
        if let Some(f) = self.run_live.take() {
            f.retire();
        }
    }
}
