//! The mechanisms' storage traits on PostgreSQL: [`maos_comm::ChannelStore`],
//! [`maos_lock::LockStore`], [`maos_track::TaskStore`] and [`maos_core::AgentStore`],
//! so that the CLI commands, written once over the traits, run on a server when the
//! workspace's backend is `postgres://...` (`maos_coordination::backend::open`).
//!
//! Errors the mechanism crates have a variant for (a lock timeout is kept as this crate's
//! error; a deadlock, a missing channel, a task refusal) are translated, so a command says the
//! same on both backends; the rest is [`maos_core::Error::Backend`] with this crate's error as
//! its source.

use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use maos_comm::{
    ChannelRead, ChannelReader, ChannelStore, Delivered, Notice, RawPayload, Start, TopicRead,
    TopicReader,
};
use maos_core::{
    AgentId, AgentRecord, AgentRole, AgentStore, AgentView, Anchor, ChannelName, Message, Name,
    Registration, ResourceName, TaskId,
};
use maos_lock::{
    Deadlock, FencingToken, LeaseGrant, LockMode, LockRequest, LockStore, Node, Report, RunOutcome,
    Snapshot, Via,
};
use maos_track::{
    Amendment, Ownership, ProgressReport, ReadyPage, Task, TaskDetails, TaskStatus, TaskStore,
    Update,
};

use crate::comm::{self as pc, PgBroadcast, PgChannel, PgConsumer, PgSubscription};
use crate::lock::{self as pl, PgDeadlockDetector, PgLock, PgLockTable};
use crate::registry::PgRegistry;
use crate::track::PgTracker;
use crate::{Error, Pg};

/// This backend's name in errors and `maos status`.
pub const BACKEND_NAME: &str = "postgresql";

/// This crate's error as maos-core's.
pub fn core_error(e: Error) -> maos_core::Error {
    match e {
        Error::Core(c) => c,
        other => maos_core::Error::Backend {
            backend: BACKEND_NAME,
            source: Box::new(other),
        },
    }
}

fn comm_error(channel: &str, e: Error) -> maos_comm::Error {
    match e {
        Error::Unreadable {
            channel,
            id,
            reason,
        } => maos_comm::Error::Unreadable {
            channel,
            id,
            reason,
        },
        Error::AheadOfLog {
            channel,
            position,
            newest,
        } => maos_comm::Error::AheadOfLog {
            channel,
            position,
            newest,
        },
        other => maos_comm::Error::Core {
            channel: channel.to_string(),
            source: core_error(other),
        },
    }
}

fn lock_error(e: Error) -> maos_lock::Error {
    maos_lock::Error::Core(core_error(e))
}

/// A wait of `agent` ended: a deadlock victim is told as with the files.
fn wait_error(agent: &AgentId, e: Error) -> maos_lock::Error {
    match e {
        Error::Deadlock { resource, agents } => maos_lock::Error::Deadlock {
            agent: agent.clone(),
            resource,
            cycle: agents,
            release: Vec::new(),
        },
        other => lock_error(other),
    }
}

fn track_error(e: Error) -> maos_track::Error {
    match e {
        Error::TaskNotFound { task } => maos_track::Error::NotFound { task },
        Error::DuplicateTask { task } => maos_track::Error::DuplicateId { task },
        Error::UnknownDependency { task, dependency } => {
            maos_track::Error::UnknownDependency { task, dependency }
        }
        Error::Cycle { cycle } => maos_track::Error::Cycle { cycle },
        Error::InvalidTransition {
            task,
            from,
            to,
            reason,
        } => maos_track::Error::InvalidTransition {
            task,
            from,
            to,
            reason,
        },
        Error::RevisionMismatch {
            task,
            expected,
            actual,
        } => maos_track::Error::RevisionMismatch {
            task,
            expected,
            actual,
        },
        Error::Invalid { what, reason } => maos_track::Error::Invalid { what, reason },
        Error::NotAssignee {
            task,
            assignee,
            actor,
        } => maos_track::Error::NotAssignee {
            task,
            assignee,
            actor: Some(actor),
        },
        other => maos_track::Error::Core(core_error(other)),
    }
}

fn pg_filter(f: &maos_comm::Filter) -> pc::Filter {
    match f {
        maos_comm::Filter::Agent { agent, role } => pc::Filter::Agent {
            agent: agent.clone(),
            role: role.clone(),
        },
        _ => pc::Filter::Everything,
    }
}

/// Channels and broadcasts on the server.
#[derive(Debug, Clone)]
pub struct PgComm {
    pg: Pg,
}

impl PgComm {
    /// The channels of `pg`'s namespace.
    pub fn new(pg: &Pg) -> Self {
        Self { pg: pg.clone() }
    }
}

/// `b` as the mechanism's read; `ahead_told` remembers that a cursor ahead of the channel
/// was reported already (once per reader, as on the files).
fn read_of(
    channel: &str,
    b: pc::Batch<RawPayload>,
    before: u64,
    ahead_told: &mut bool,
) -> ChannelRead {
    let mut r = ChannelRead::default();
    r.progressed = b.cursor != before;
    r.cursor = b.cursor;
    r.notices.extend(b.pruned.map(|p| {
        Notice::Pruned(maos_comm::Pruned {
            from: p.from,
            to: p.to,
        })
    }));
    r.warnings.extend(
        b.problems
            .into_iter()
            .map(|(pos, why)| format!("message {pos} on {channel} is unreadable: {why}")),
    );
    let ahead = b.ahead_of.filter(|_| !std::mem::replace(ahead_told, true));
    r.warnings.extend(ahead.map(|newest| {
        format!(
            "the cursor (position {before}) is ahead of {channel}'s newest message ({newest}): \
             messages sent there up to position {before} will not be shown to this reader; \
             read from an earlier position (--after {newest})"
        )
    }));
    r.messages = b
        .messages
        .into_iter()
        .map(|d| Delivered {
            position: d.position,
            message: d.message,
        })
        .collect();
    r
}

struct PgReader {
    channel: PgChannel,
    filter: pc::Filter,
    consumer: Option<PgConsumer>,
    cursor: u64,
    ahead_told: bool,
}

impl PgReader {
    fn name(&self) -> String {
        self.channel.name().to_string()
    }
}

impl ChannelReader for PgReader {
    fn read(&mut self) -> maos_comm::Result<ChannelRead> {
        let b = self
            .channel
            .receive::<RawPayload>(self.cursor, &self.filter)
            .map_err(|e| comm_error(&self.name(), e))?;
        let before = self.cursor;
        self.cursor = b.cursor;
        Ok(read_of(&self.name(), b, before, &mut self.ahead_told))
    }

    fn wait(&mut self, timeout: Duration) -> maos_comm::Result<ChannelRead> {
        let b = self
            .channel
            .wait::<RawPayload>(self.cursor, &self.filter, timeout)
            .map_err(|e| comm_error(&self.name(), e))?;
        let before = self.cursor;
        self.cursor = b.cursor;
        Ok(read_of(&self.name(), b, before, &mut self.ahead_told))
    }

    fn ack(&mut self, position: u64) -> maos_comm::Result<()> {
        let name = self.name();
        match self.consumer.as_mut() {
            Some(c) => c.ack(position).map_err(|e| comm_error(&name, e)),
            None => Ok(()),
        }
    }
}

struct PgTopics {
    pg: Pg,
    sub: PgSubscription,
    consumer: Option<PgConsumer>,
}

impl PgTopics {
    fn poll(&mut self) -> maos_comm::Result<TopicRead> {
        let got = self
            .sub
            .poll::<RawPayload>()
            .map_err(|e| comm_error(pc::GLOBAL_FEED, e))?;
        let mut r = TopicRead::default();
        r.cursor = self.sub.cursor();
        r.messages = got
            .into_iter()
            .map(|m| maos_comm::TopicMessage {
                topic: m.topic,
                position: m.feed_position,
                message: m.message,
            })
            .collect();
        Ok(r)
    }
}

impl TopicReader for PgTopics {
    fn read(&mut self) -> maos_comm::Result<TopicRead> {
        self.poll()
    }

    fn wait(&mut self, timeout: Duration) -> maos_comm::Result<TopicRead> {
        let deadline = std::time::Instant::now() + timeout;
        let feed = PgChannel::open(
            &self.pg,
            ChannelName::new(pc::GLOBAL_FEED).map_err(|e| maos_comm::Error::Core {
                channel: pc::GLOBAL_FEED.into(),
                source: e,
            })?,
        );
        loop {
            let r = self.poll()?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !r.messages.is_empty() || left.is_zero() {
                return Ok(r);
            }
            // Wake on the next feed entry (a hint: the poll above reads forward).
            feed.wait::<serde_json::Value>(self.sub.cursor(), &pc::Filter::Everything, left)
                .map_err(|e| comm_error(pc::GLOBAL_FEED, e))?;
        }
    }

    fn ack(&mut self, position: u64) -> maos_comm::Result<()> {
        match self.consumer.as_mut() {
            Some(c) => c.ack(position).map_err(|e| comm_error(pc::GLOBAL_FEED, e)),
            None => Ok(()),
        }
    }
}

impl ChannelStore for PgComm {
    fn send(
        &self,
        channel: &ChannelName,
        msg: &Message<RawPayload>,
        _lock_wait: Duration,
    ) -> maos_comm::Result<maos_comm::Receipt> {
        let r = PgChannel::open(&self.pg, channel.clone())
            .send(msg)
            .map_err(|e| comm_error(channel.as_str(), e))?;
        Ok(maos_comm::Receipt {
            position: r.position,
            id: r.id,
        })
    }

    fn filter_for(&self, agent: AgentId) -> maos_comm::Result<maos_comm::Filter> {
        let role = PgAgents::new(&self.pg)
            .role_of(&agent)
            .map_err(|e| maos_comm::Error::Core {
                channel: format!("the inbox of {agent}"),
                source: e,
            })?;
        Ok(maos_comm::Filter::Agent { agent, role })
    }

    fn reader(
        &self,
        channel: &ChannelName,
        start: Start,
        filter: maos_comm::Filter,
        even_empty: bool,
    ) -> maos_comm::Result<Box<dyn ChannelReader>> {
        let name = channel.as_str();
        let known = pc::list_channels(&self.pg).map_err(|e| comm_error(name, e))?;
        if !even_empty && !known.contains(channel) {
            return Err(maos_comm::Error::NoSuchChannel {
                channel: name.to_string(),
                path: format!("{} namespace {}", self.pg.target(), self.pg.namespace()).into(),
            });
        }
        let ch = PgChannel::open(&self.pg, channel.clone());
        let filter = pg_filter(&filter);
        let (consumer, cursor) = match start {
            Start::Consumer(n) => {
                let c = ch
                    .consumer(n, filter.clone())
                    .map_err(|e| comm_error(name, e))?;
                let p = c.position();
                (Some(c), p)
            }
            Start::After(p) => (None, p),
            _ => (None, 0),
        };
        Ok(Box::new(PgReader {
            channel: ch,
            filter,
            consumer,
            cursor,
            ahead_told: false,
        }))
    }

    fn list(&self) -> maos_comm::Result<Vec<maos_comm::ChannelStats>> {
        let names = pc::list_channels(&self.pg).map_err(|e| comm_error("(all)", e))?;
        names
            .into_iter()
            .map(|name| {
                let st = PgChannel::open(&self.pg, name.clone())
                    .stats()
                    .map_err(|e| comm_error(name.as_str(), e))?;
                // The server keeps no segments; their sizes are its own business.
                Ok(maos_comm::ChannelStats {
                    name,
                    newest: st.newest,
                    oldest: st.oldest,
                    count: st.count,
                    segments: 0,
                    bytes: 0,
                })
            })
            .collect()
    }

    fn broadcast(
        &self,
        sender: &AgentId,
        topic: &str,
        payload: &RawPayload,
        _lock_wait: Duration,
    ) -> maos_comm::Result<maos_comm::Receipt> {
        // The topics maos's own mechanisms publish on are refused, as with the files.
        if let Some(owner) = maos_comm::SYSTEM_TOPICS.iter().find(|t| {
            topic == **t
                || topic
                    .strip_prefix(**t)
                    .is_some_and(|rest| rest.starts_with('/'))
        }) {
            return Err(maos_comm::Error::InvalidTopic {
                topic: topic.to_string(),
                reason: format!(
                    "topic {owner:?} is published by maos itself (readers act on it); \
                     choose another topic"
                ),
            });
        }
        // The receipt names the feed position, the one subscribers see (as with the files).
        let (r, feed_position) = PgBroadcast::new(&self.pg, sender.clone())
            .broadcast_with_feed(topic, payload)
            .map_err(|e| match e {
                Error::Invalid { reason, .. } => maos_comm::Error::InvalidTopic {
                    topic: topic.to_string(),
                    reason,
                },
                other => comm_error(topic, other),
            })?;
        Ok(maos_comm::Receipt {
            position: feed_position,
            id: r.id,
        })
    }

    fn topic_reader(
        &self,
        patterns: &[&str],
        consumer: Option<Name>,
    ) -> maos_comm::Result<Box<dyn TopicReader>> {
        for p in patterns {
            maos_comm::TopicPattern::new(p)?;
        }
        let feed_name = ChannelName::new(pc::GLOBAL_FEED).map_err(|e| maos_comm::Error::Core {
            channel: pc::GLOBAL_FEED.into(),
            source: e,
        })?;
        let (consumer, cursor) = match consumer {
            Some(n) => {
                let c = PgChannel::open(&self.pg, feed_name)
                    .consumer(n, pc::Filter::Everything)
                    .map_err(|e| comm_error(pc::GLOBAL_FEED, e))?;
                let p = c.position();
                (Some(c), p)
            }
            None => (None, 0),
        };
        let sub = PgSubscription::new(&self.pg, patterns, cursor)
            .map_err(|e| comm_error(pc::GLOBAL_FEED, e))?;
        Ok(Box::new(PgTopics {
            pg: self.pg.clone(),
            sub,
            consumer,
        }))
    }

    fn prune(
        &self,
        channel: &ChannelName,
        retention: maos_comm::Retention,
    ) -> maos_comm::Result<maos_comm::PruneReport> {
        crate::inbox::prune(&self.pg, channel, retention)
    }
}

/// The lock table on the server.
#[derive(Debug, Clone)]
pub struct PgLocks {
    pg: Pg,
}

impl PgLocks {
    /// The lock table of `pg`'s namespace.
    pub fn new(pg: &Pg) -> Self {
        Self { pg: pg.clone() }
    }

    fn table(&self) -> PgLockTable {
        PgLockTable::new(&self.pg)
    }

    fn lock(&self, req: &LockRequest) -> PgLock {
        PgLock::new(&self.pg, req.resource.clone())
            .agent(req.agent.clone())
            .ttl(req.ttl)
            .wait(req.wait)
            .mode(req.mode)
    }
}

/// A PostgreSQL lock record as maos-lock's: a lock held through a session shows the session
/// as its `live` key.
pub fn lock_info(i: pl::LockInfo) -> maos_lock::LockInfo {
    maos_lock::LockInfo {
        id: i.id,
        resource: i.resource,
        mode: i.mode,
        owner: i.owner,
        process: None,
        live: i.session_key.map(|k| format!("session {k}")),
        acquired_at: i.acquired_at,
        expires_at: i.expires_at,
        ttl_ms: i.ttl_ms,
        purpose: i.purpose,
        metadata: i.metadata,
        token: FencingToken(i.token),
    }
}

fn conflicts(a: &ResourceName, am: LockMode, b: &ResourceName, bm: LockMode) -> bool {
    !(am == LockMode::Shared && bm == LockMode::Shared) && maos_lock::overlaps(a, b)
}

fn summary(h: &maos_lock::LockInfo) -> maos_lock::HolderSummary {
    maos_lock::HolderSummary {
        owner: h.owner.clone(),
        resource: h.resource.clone(),
        mode: h.mode,
        purpose: h.purpose.clone(),
        expires_at: h.expires_at,
        pid: None,
        token: h.token,
    }
}

impl LockStore for PgLocks {
    fn acquire_lease(&self, req: &LockRequest, blocked: Report) -> maos_lock::Result<LeaseGrant> {
        // A lease the agent holds itself: the same one is renewed (as with the files), an
        // overlapping other one would only wait for itself.
        let mine: Vec<maos_lock::LockInfo> = self
            .snapshot()?
            .holders
            .into_iter()
            .filter(|h| {
                h.owner == req.agent
                    && h.live.is_none()
                    && conflicts(&h.resource, h.mode, &req.resource, req.mode)
            })
            .collect();
        if let Some(h) = mine.first() {
            if h.resource == req.resource && h.mode == req.mode {
                let renewed = self.renew(Some(&req.resource), &req.agent, Some(req.ttl))?;
                if let Some(info) = renewed.into_iter().find(|r| r.token == h.token) {
                    return Ok(LeaseGrant {
                        info,
                        reentered: true,
                    });
                }
            } else {
                return Err(maos_lock::Error::AlreadyHeld {
                    resource: req.resource.clone(),
                    agent: req.agent.clone(),
                    holder: Box::new(summary(h)),
                });
            }
        }
        if !req.wait.is_zero()
            && let Some(h) = self
                .conflicting(&req.resource, req.mode)?
                .into_iter()
                .find(|h| h.owner != req.agent)
        {
            blocked(&format!(
                "held by {} ({}, token {})",
                h.owner, h.resource, h.token
            ));
        }
        let info = self
            .lock(req)
            .acquire_lease(&req.purpose)
            .map_err(|e| wait_error(&req.agent, e))?;
        Ok(LeaseGrant {
            info: lock_info(info),
            reentered: false,
        })
    }

    fn release(
        &self,
        resource: &ResourceName,
        agent: &AgentId,
        token: Option<FencingToken>,
    ) -> maos_lock::Result<Vec<maos_lock::LockInfo>> {
        let out = self
            .table()
            .release(resource, agent, token.map(|t| t.0))
            .map_err(|e| match e {
                Error::NotOwner {
                    resource,
                    agent,
                    holder,
                } => maos_lock::Error::NotOwner {
                    resource,
                    agent,
                    holder: holder.map(|h| {
                        Box::new(maos_lock::HolderSummary {
                            owner: h.owner,
                            resource: h.resource,
                            mode: LockMode::Exclusive,
                            purpose: h.purpose,
                            expires_at: h.expires_at,
                            pid: None,
                            token: FencingToken(0),
                        })
                    }),
                },
                other => lock_error(other),
            })?;
        Ok(out.into_iter().map(lock_info).collect())
    }

    fn renew(
        &self,
        resource: Option<&ResourceName>,
        agent: &AgentId,
        ttl: Option<Duration>,
    ) -> maos_lock::Result<Vec<maos_lock::LockInfo>> {
        let table = self.table();
        let renewed = match resource {
            Some(r) => table.renew(r, agent, ttl),
            None => table.renew_all(agent, ttl),
        };
        Ok(renewed
            .map_err(|e| match e {
                Error::NotOwner {
                    resource, agent, ..
                } => maos_lock::Error::NotOwner {
                    resource,
                    agent,
                    holder: None,
                },
                other => lock_error(other),
            })?
            .into_iter()
            .map(lock_info)
            .collect())
    }

    fn release_agent(&self, agent: &AgentId) -> maos_lock::Result<Vec<maos_lock::LockInfo>> {
        Ok(self
            .table()
            .release_agent(agent)
            .map_err(lock_error)?
            .into_iter()
            .map(lock_info)
            .collect())
    }

    fn snapshot(&self) -> maos_lock::Result<Snapshot> {
        let s = self.table().snapshot().map_err(lock_error)?;
        Ok(Snapshot {
            holders: s.holders.into_iter().map(lock_info).collect(),
            waiters: s
                .waiters
                .into_iter()
                .map(|w| maos_lock::WaiterInfo {
                    ticket: w.ticket,
                    resource: w.resource,
                    mode: w.mode,
                    agent: w.agent,
                    process: None,
                    live: Some(format!("session {}", w.session_key)),
                    since: w.since,
                    purpose: w.purpose,
                    aborted: w.aborted.map(|cycle| maos_lock::Abort {
                        cycle,
                        release: Vec::new(),
                    }),
                })
                .collect(),
        })
    }

    fn conflicting(
        &self,
        resource: &ResourceName,
        mode: LockMode,
    ) -> maos_lock::Result<Vec<maos_lock::LockInfo>> {
        Ok(self
            .table()
            .conflicting(resource, mode)
            .map_err(lock_error)?
            .into_iter()
            .map(lock_info)
            .collect())
    }

    fn deadlocks(
        &self,
        sender: &AgentId,
        broadcast: bool,
        resolve: bool,
    ) -> maos_lock::Result<Vec<(Deadlock, bool)>> {
        let mut det = PgDeadlockDetector::new(&self.pg).resolve(resolve);
        if broadcast {
            det = det.broadcast(sender.clone());
        }
        let found = det.check().map_err(lock_error)?;
        let node = |a: &AgentId| Node::Lease { agent: a.clone() };
        Ok(found
            .into_iter()
            .map(|d| {
                let waits = d
                    .waits
                    .iter()
                    .map(|w| maos_lock::WaitEdge {
                        waiter: w.waiter.clone(),
                        holder: w.holder.clone(),
                        waiter_node: node(&w.waiter),
                        holder_node: node(&w.holder),
                        resource: w.resource.clone(),
                        held: None,
                        via: Via::Lock,
                        ticket: w.ticket,
                        since: 0,
                    })
                    .collect();
                let applied = d.applied;
                (
                    Deadlock {
                        nodes: d.involved_agents.iter().map(node).collect(),
                        agents: d.involved_agents,
                        waits,
                        victim_node: node(&d.victim.waiter),
                        victim: d.victim.waiter,
                        victim_ticket: d.victim.ticket,
                        victim_resource: d.victim.resource,
                        release: Vec::new(),
                    },
                    applied,
                )
            })
            .collect())
    }

    fn run(
        &self,
        req: &LockRequest,
        spawn: &mut dyn FnMut(FencingToken) -> std::io::Result<Child>,
        blocked: Report,
        lost: Report,
    ) -> maos_lock::Result<RunOutcome> {
        if let Some(h) = self
            .conflicting(&req.resource, req.mode)?
            .into_iter()
            .find(|h| h.owner != req.agent)
            && !req.wait.is_zero()
        {
            blocked(&format!(
                "held by {} ({}, token {})",
                h.owner, h.resource, h.token
            ));
        }
        let mut guard = self
            .lock(req)
            .acquire(&req.purpose)
            .map_err(|e| wait_error(&req.agent, e))?;
        let mut child = match spawn(FencingToken(guard.token())) {
            Ok(c) => c,
            Err(e) => {
                let release_error = guard.release().err().map(lock_error);
                return Ok(RunOutcome {
                    status: Err(Box::new(e)),
                    lost: false,
                    release_error,
                });
            }
        };
        // The child is waited for on a thread; this one renews the lease every third of it.
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let r = child.wait();
            let _ = tx.send(());
            r
        });
        let every = (req.ttl / 3).max(Duration::from_millis(10));
        let mut was_lost = false;
        while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
            if was_lost {
                continue;
            }
            if let Err(e) = guard.renew() {
                was_lost = true;
                lost(&lock_error(e).to_string());
            }
        }
        let status = match waiter.join() {
            Ok(r) => r.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            Err(_) => Err("the thread waiting for the command panicked".into()),
        };
        let mut release_error = None;
        if !was_lost {
            match guard.release() {
                Ok(()) => {}
                Err(e @ Error::LockLost { .. }) => {
                    was_lost = true;
                    lost(&e.to_string());
                }
                Err(e) => release_error = Some(lock_error(e)),
            }
        }
        Ok(RunOutcome {
            status,
            lost: was_lost,
            release_error,
        })
    }
}

/// The task graph on the server, acting for one agent.
#[derive(Debug, Clone)]
pub struct PgTasks {
    tracker: PgTracker,
}

impl PgTasks {
    /// The task graph of `pg`'s namespace, acting as `agent`.
    pub fn new(pg: &Pg, agent: AgentId) -> Self {
        Self {
            tracker: PgTracker::new(pg).agent(agent),
        }
    }

    /// Writes wait at most `wait` for the tasks guard ([`PgTracker::lock_wait`]).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.tracker = self.tracker.lock_wait(wait);
        self
    }
}

fn ready_after_claims(t: &Task) -> bool {
    t.status == TaskStatus::Pending
}

impl TaskStore for PgTasks {
    fn create(&self, task: &Task) -> Result<Task, maos_track::Error> {
        let id = self.tracker.create_task(task).map_err(track_error)?;
        self.get(&id)?.ok_or_else(|| maos_track::Error::NotFound {
            task: id.to_string(),
        })
    }

    fn resolve(&self, id_or_prefix: &str) -> Result<TaskId, maos_track::Error> {
        if let Ok(id) = TaskId::parse(id_or_prefix)
            && self.get(&id)?.is_some()
        {
            return Ok(id);
        }
        let matches: Vec<TaskId> = self
            .list()?
            .into_iter()
            .map(|t| t.id)
            .filter(|id| !id_or_prefix.is_empty() && id.as_str().starts_with(id_or_prefix))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(maos_track::Error::NotFound {
                task: id_or_prefix.to_string(),
            }),
            many => Err(maos_track::Error::AmbiguousPrefix {
                prefix: id_or_prefix.to_string(),
                matches: many.iter().take(5).map(ToString::to_string).collect(),
            }),
        }
    }

    fn get(&self, id: &TaskId) -> Result<Option<Task>, maos_track::Error> {
        self.tracker.get(id).map_err(track_error)
    }

    fn show(&self, id: &TaskId) -> Result<Option<TaskDetails>, maos_track::Error> {
        self.tracker
            .show(id, maos_track::MAX_HISTORY)
            .map_err(track_error)
    }

    fn list(&self) -> Result<Vec<Task>, maos_track::Error> {
        self.tracker.list().map_err(track_error)
    }

    fn ready_page(&self, limit: usize) -> Result<ReadyPage, maos_track::Error> {
        let ready: Vec<Task> = self
            .tracker
            .ready()
            .map_err(track_error)?
            .into_iter()
            .filter(ready_after_claims)
            .collect();
        let total = ready.len() as u64;
        Ok(ReadyPage {
            tasks: ready.into_iter().take(limit).collect(),
            total,
        })
    }

    fn claim(&self, agent: &AgentId) -> Result<Option<Task>, maos_track::Error> {
        self.tracker.claim(agent).map_err(track_error)
    }

    fn update(&self, id: &TaskId, update: &Update) -> Result<Task, maos_track::Error> {
        self.tracker.update(id, update).map_err(track_error)
    }

    fn release_agent(
        &self,
        agent: &AgentId,
        reason: &str,
    ) -> Result<Vec<TaskId>, maos_track::Error> {
        self.tracker
            .release_agent(agent, reason)
            .map_err(track_error)
    }

    fn report(&self) -> Result<ProgressReport, maos_track::Error> {
        self.tracker.report().map_err(track_error)
    }

    fn amend(&self, id: &TaskId, amendment: &Amendment) -> Result<Task, maos_track::Error> {
        self.tracker.amend(id, amendment).map_err(track_error)
    }

    fn comment(&self, id: &TaskId, text: &str) -> Result<(), maos_track::Error> {
        self.tracker.comment(id, text).map_err(track_error)
    }

    fn assign(
        &self,
        id: &TaskId,
        agent: Option<&AgentId>,
        ownership: Ownership,
    ) -> Result<Task, maos_track::Error> {
        self.tracker
            .assign(id, agent, ownership)
            .map_err(track_error)
    }

    fn version(&self) -> Result<u64, maos_track::Error> {
        self.tracker.version().map_err(track_error)
    }

    fn wait_changed(&self, seen: u64, timeout: Duration) -> Result<u64, maos_track::Error> {
        self.tracker
            .wait_changed(seen, timeout)
            .map_err(track_error)
    }
}

/// The agent registry on the server.
#[derive(Debug, Clone)]
pub struct PgAgents {
    registry: PgRegistry,
    pg: Pg,
}

impl PgAgents {
    /// The registry of `pg`'s namespace.
    pub fn new(pg: &Pg) -> Self {
        Self {
            registry: PgRegistry::new(pg),
            pg: pg.clone(),
        }
    }

    /// The same, with the idle lease `lease` (the workspace's `agent_lease_ms`).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.registry = self.registry.lease(lease);
        self
    }
}

impl AgentStore for PgAgents {
    fn register(&self, reg: Registration) -> maos_core::Result<AgentRecord> {
        self.registry.register(reg).map_err(core_error)
    }

    fn heartbeat(&self, id: &AgentId) -> maos_core::Result<AgentRecord> {
        self.registry
            .touch(id)
            .map_err(core_error)?
            .ok_or_else(|| maos_core::Error::UnknownAgent {
                agent: id.to_string(),
                path: format!("{} namespace {}", self.pg.target(), self.pg.namespace()).into(),
            })
    }

    fn touch(&self, id: &AgentId, _anchor: &dyn Fn() -> Option<Anchor>) -> maos_core::Result<()> {
        self.registry.touch(id).map(|_| ()).map_err(core_error)
    }

    fn unregister(&self, id: &AgentId) -> maos_core::Result<bool> {
        self.registry.unregister(id).map_err(core_error)
    }

    fn list(&self) -> maos_core::Result<(Vec<AgentView>, Vec<String>)> {
        let agents = self.registry.list().map_err(core_error)?;
        Ok((
            agents
                .into_iter()
                .map(|a| {
                    let liveness = a.liveness();
                    let left = a.record.lease_until.saturating_sub(a.now);
                    let anchor = a.record.live_anchor();
                    AgentView::new(a.record, liveness, anchor, left)
                })
                .collect(),
            Vec::new(),
        ))
    }

    fn role_of(&self, id: &AgentId) -> maos_core::Result<Option<AgentRole>> {
        Ok(self
            .registry
            .get(id)
            .map_err(core_error)?
            .and_then(|a| a.record.role))
    }
}
