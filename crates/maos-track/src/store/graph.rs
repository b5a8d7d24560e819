//! [`Graph`]: the task graph as a process sees it: an immutable [`Snapshot`] read by position,
//! plus an overlay of the tasks that the log records since the snapshot touched.
//!
//! [`Graph::apply`] is the one place where a record changes the graph, and it validates the
//! record first: a writer's own records go through it before they are appended (so what is
//! written is exactly what replay accepts), and a reader refuses a record that no writer could
//! have written (a duplicate `create`, a transition the state machine forbids, an actor who
//! does not own the task, an edge that closes a cycle...).

use std::collections::{BTreeSet, VecDeque};

use maos_core::{AgentId, TaskId};

use super::record::{Op, Record};
use super::snapshot::{Entry, ReadyKey, Snapshot, ready_key};
use crate::graph::{FxMap, weight_ms};
use crate::history::{Event, EventKind};
use crate::notify::Effect;
use crate::{Error, Task, TaskStatus};

/// One task of the overlay, with what the graph derives from it.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) task: Task,
    /// Events since the snapshot (the snapshot's part is read only when asked for).
    pub(crate) history: Vec<Event>,
    /// Where the snapshot keeps the task's earlier history (its entry's history line).
    pub(crate) base_history: Option<(u64, u32, u32)>,
    /// Tasks that depend on this one (ordinals), in the order the edges were made.
    pub(crate) dependents: Vec<u32>,
    /// Dependencies not completed yet.
    pub(crate) remaining: u32,
    /// Downstream critical path (ms): the ready order's tie-breaker.
    pub(crate) rank: u64,
}

impl Node {
    fn weight(&self) -> u64 {
        weight_ms(&self.task)
    }
}

/// Who caused a record, and when.
#[derive(Debug, Clone, Copy)]
struct Ctx<'a> {
    seq: u64,
    at: u64,
    by: Option<&'a AgentId>,
    force: bool,
}

impl Ctx<'_> {
    fn event(&self, what: EventKind) -> Event {
        Event {
            seq: self.seq,
            at: self.at,
            by: self.by.cloned(),
            forced: self.force,
            what,
        }
    }
}

/// The graph: a snapshot plus an overlay.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub(crate) base: Option<Snapshot>,
    nodes: FxMap<u32, Node>,
    /// Ids of the overlay's tasks (and of base tasks looked up before).
    ids: FxMap<TaskId, u32>,
    /// Ready keys of the overlay's pending tasks.
    ready: BTreeSet<ReadyKey>,
    /// The overlay's active tasks.
    active: BTreeSet<u32>,
    /// Base tasks that were pending in the snapshot and are in the overlay now.
    shadowed_ready: u64,
    /// Status counts of the overlay relative to the snapshot's.
    counts_delta: [i64; 7],
    count: u32,
    /// The last record applied.
    pub(crate) seq: u64,
}

fn gave_up_prefix(id: &TaskId) -> String {
    format!("dependency {id} ")
}

fn gave_up_reason(t: &Task) -> String {
    let what = if t.status == TaskStatus::Cancelled {
        "was cancelled"
    } else {
        "failed"
    };
    match &t.note {
        Some(n) => format!("{}{what}: {n}", gave_up_prefix(&t.id)),
        None => format!("{}{what}", gave_up_prefix(&t.id)),
    }
}

fn not_found(id: &TaskId) -> Error {
    Error::NotFound {
        task: id.to_string(),
    }
}

impl Graph {
    /// A graph on top of `base` (or empty), at the snapshot's sequence number.
    pub(crate) fn new(base: Option<Snapshot>) -> Self {
        let (count, seq) = base.as_ref().map_or((0, 0), |b| (b.count(), b.seq()));
        Self {
            base,
            count,
            seq,
            ..Self::default()
        }
    }

    /// Number of tasks.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Tasks per status code.
    pub(crate) fn counts(&self) -> [u64; 7] {
        let mut c = self.base.as_ref().map_or([0; 7], |b| b.header.counts);
        for (k, d) in self.counts_delta.iter().enumerate() {
            c[k] = c[k].saturating_add_signed(*d);
        }
        c
    }

    /// The ordinal of `id`.
    pub(crate) fn lookup(&mut self, id: &TaskId) -> Result<Option<u32>, Error> {
        if let Some(&o) = self.ids.get(id) {
            return Ok(Some(o));
        }
        let Some(base) = &self.base else {
            return Ok(None);
        };
        let found = base.find(id.as_str())?;
        if let Some(o) = found {
            // The sorted ids are not checksummed: check the task the slot points at.
            let e = base.entry(o)?;
            if base.task(o, &e)?.id != *id {
                return Err(super::snapshot::corrupt(
                    base.path(),
                    format!("the sorted id slot of {id} points at another task"),
                ));
            }
            self.ids.insert(id.clone(), o);
        }
        Ok(found)
    }

    fn need(&mut self, id: &TaskId) -> Result<u32, Error> {
        self.lookup(id)?.ok_or_else(|| not_found(id))
    }

    /// Ids starting with `prefix` (at most `limit`), from the snapshot and the overlay.
    pub(crate) fn with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<TaskId>, Error> {
        let mut out: BTreeSet<TaskId> = BTreeSet::new();
        if let Some(b) = &self.base {
            out.extend(b.with_prefix(prefix, limit)?.into_iter().map(|(id, _)| id));
        }
        for id in self.ids.keys() {
            if id.as_str().starts_with(prefix) {
                out.insert(id.clone());
            }
        }
        Ok(out.into_iter().take(limit).collect())
    }

    fn base_entry(&self, ord: u32) -> Result<(&Snapshot, Entry), Error> {
        let base = self.base.as_ref().ok_or_else(|| Error::Invalid {
            what: "task number",
            reason: format!("{ord} is not a task"),
        })?;
        Ok((base, base.entry(ord)?))
    }

    /// Loads base task `ord` into the overlay (no-op when it is there).
    fn load(&mut self, ord: u32) -> Result<(), Error> {
        if self.nodes.contains_key(&ord) {
            return Ok(());
        }
        let (base, e) = self.base_entry(ord)?;
        let task = base.task(ord, &e)?;
        let node = Node {
            history: Vec::new(),
            base_history: Some(e.history),
            dependents: base.dependents(&e)?,
            remaining: e.remaining,
            rank: e.rank,
            task,
        };
        if e.status == TaskStatus::Pending {
            self.shadowed_ready += 1;
        }
        self.ids.insert(node.task.id.clone(), ord);
        self.index(ord, &node);
        self.nodes.insert(ord, node);
        Ok(())
    }

    fn index(&mut self, ord: u32, n: &Node) {
        match n.task.status {
            TaskStatus::Pending => {
                self.ready.insert(ready_key(n.task.priority, n.rank, ord));
            }
            s if s.is_active() => {
                self.active.insert(ord);
            }
            _ => {}
        }
    }

    fn unindex(&mut self, ord: u32, n: &Node) {
        self.ready.remove(&ready_key(n.task.priority, n.rank, ord));
        self.active.remove(&ord);
    }

    /// Runs `f` on task `ord` (loaded first) and keeps the indexes and counts right.
    fn modify<R>(&mut self, ord: u32, f: impl FnOnce(&mut Node) -> R) -> Result<R, Error> {
        self.load(ord)?;
        let mut node = self.nodes.remove(&ord).ok_or_else(|| Error::Invalid {
            what: "task number",
            reason: format!("{ord} is not loaded"),
        })?;
        self.unindex(ord, &node);
        let before = node.task.status;
        let r = f(&mut node);
        let after = node.task.status;
        if before != after {
            self.counts_delta[usize::from(before.code())] -= 1;
            self.counts_delta[usize::from(after.code())] += 1;
        }
        self.index(ord, &node);
        self.nodes.insert(ord, node);
        Ok(r)
    }

    /// Task `ord`, loaded into the overlay.
    fn loaded(&mut self, ord: u32) -> Result<&Node, Error> {
        self.load(ord)?;
        self.nodes.get(&ord).ok_or_else(|| Error::Invalid {
            what: "task number",
            reason: format!("{ord} is not loaded"),
        })
    }

    /// Task `ord` (from the overlay, or read from the snapshot without loading it).
    pub(crate) fn task(&self, ord: u32) -> Result<Task, Error> {
        if let Some(n) = self.nodes.get(&ord) {
            return Ok(n.task.clone());
        }
        if let Some(t) = self.base.as_ref().and_then(|b| b.cached_task(ord)) {
            return Ok(t);
        }
        let (base, e) = self.base_entry(ord)?;
        base.task(ord, &e)
    }

    /// Appends task `ord` to `out`, cloned straight from where it is held (a listing of
    /// thousands of tasks would otherwise move each one through every return on its way).
    pub(crate) fn push_task(&self, ord: u32, out: &mut Vec<Task>) -> Result<(), Error> {
        if let Some(n) = self.nodes.get(&ord) {
            out.push(n.task.clone());
            return Ok(());
        }
        if let Some(base) = &self.base
            && base.with_cached_task(ord, |t| out.push(t.clone()))
        {
            return Ok(());
        }
        out.push(self.task(ord)?);
        Ok(())
    }

    /// Task `ord` with its history.
    pub(crate) fn details(&self, ord: u32) -> Result<(Task, Vec<Event>), Error> {
        if let Some(n) = self.nodes.get(&ord) {
            let mut history = match (&self.base, n.base_history) {
                (Some(base), Some(at)) => base.history_at(ord, at)?,
                _ => Vec::new(),
            };
            history.extend(n.history.iter().cloned());
            return Ok((n.task.clone(), history));
        }
        let (base, e) = self.base_entry(ord)?;
        Ok((base.task(ord, &e)?, base.history(ord, &e)?))
    }

    /// The status and assignee of `ord` without parsing its JSON when it is in the snapshot.
    pub(crate) fn status_of(&self, ord: u32) -> Result<(TaskStatus, Option<AgentId>), Error> {
        if let Some(n) = self.nodes.get(&ord) {
            return Ok((n.task.status, n.task.assigned_to.clone()));
        }
        let (base, e) = self.base_entry(ord)?;
        Ok((e.status, base.agent(e.assignee).cloned()))
    }

    /// The dependents of `ord` without loading it.
    fn dependents_of(&self, ord: u32) -> Result<Vec<u32>, Error> {
        if let Some(n) = self.nodes.get(&ord) {
            return Ok(n.dependents.clone());
        }
        let (base, e) = self.base_entry(ord)?;
        base.dependents(&e)
    }

    /// Number of ready (pending) tasks.
    pub(crate) fn ready_len(&self) -> u64 {
        let base = self.base.as_ref().map_or(0, Snapshot::ready_len);
        base - self.shadowed_ready + self.ready.len() as u64
    }

    /// Ready tasks in claim order: skips `skip` accepted ones and returns up to `limit`
    /// ordinals for which `accept(ordinal, assignee)` holds.
    pub(crate) fn ready_page(
        &self,
        skip: usize,
        limit: usize,
        mut accept: impl FnMut(u32, Option<&AgentId>) -> bool,
    ) -> Result<Vec<u32>, Error> {
        let mut out = Vec::with_capacity(limit.min(usize::try_from(self.ready_len()).unwrap_or(0)));
        let mut skipped = 0;
        let mut overlay = self.ready.iter().copied().peekable();
        let mut k = 0u64;
        let next_base = |k: &mut u64| -> Result<Option<(ReadyKey, u32)>, Error> {
            let Some(base) = &self.base else {
                return Ok(None);
            };
            // Skip tasks the overlay holds: their state there is the current one.
            while let Some((key, a)) = base.ready_key(*k)? {
                *k += 1;
                if !self.nodes.contains_key(&key.ord()) {
                    return Ok(Some((key, a)));
                }
            }
            Ok(None)
        };
        let mut pending_base = next_base(&mut k)?;
        while out.len() < limit {
            let from_base = match (&pending_base, overlay.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((b, _)), Some(o)) => b < o,
            };
            let (ord, agent) = if from_base {
                let Some((key, code)) = pending_base.take() else {
                    break;
                };
                pending_base = next_base(&mut k)?;
                let agent = self.base.as_ref().and_then(|b| b.agent(code));
                (key.ord(), agent)
            } else {
                let Some(key) = overlay.next() else {
                    break;
                };
                let agent = self
                    .nodes
                    .get(&key.ord())
                    .and_then(|n| n.task.assigned_to.as_ref());
                (key.ord(), agent)
            };
            if accept(ord, agent) {
                if skipped < skip {
                    skipped += 1;
                } else {
                    out.push(ord);
                }
            }
        }
        Ok(out)
    }

    /// The active (in progress, review) tasks, ascending.
    pub(crate) fn active(&self) -> Result<Vec<u32>, Error> {
        let mut out: BTreeSet<u32> = self.active.clone();
        if let Some(base) = &self.base {
            for o in base.active()? {
                if !self.nodes.contains_key(&o) {
                    out.insert(o);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Ordinals `from..` in creation order with their status and assignee, read in chunks
    /// (for filtered pages): `visit` returns false to stop.
    pub(crate) fn scan_light(
        &self,
        from: u32,
        mut visit: impl FnMut(u32, TaskStatus, Option<&AgentId>) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        const CHUNK: u32 = 512;
        let mut o = from;
        while o < self.count {
            let base_count = self.base.as_ref().map_or(0, Snapshot::count);
            if o < base_count
                && let Some(base) = &self.base
            {
                let rows = base.entries(o, CHUNK)?;
                for (k, e) in rows.iter().enumerate() {
                    let ord = o + k as u32;
                    let go = match self.nodes.get(&ord) {
                        Some(n) => visit(ord, n.task.status, n.task.assigned_to.as_ref())?,
                        None => visit(ord, e.status, base.agent(e.assignee))?,
                    };
                    if !go {
                        return Ok(());
                    }
                }
                o += rows.len().max(1) as u32;
            } else {
                let n = self.nodes.get(&o).ok_or_else(|| Error::Invalid {
                    what: "task number",
                    reason: format!("{o} is missing from the overlay"),
                })?;
                if !visit(o, n.task.status, n.task.assigned_to.as_ref())? {
                    return Ok(());
                }
                o += 1;
            }
        }
        Ok(())
    }

    /// Every task in creation order (reads the whole snapshot).
    pub(crate) fn all_tasks(&self) -> Result<Vec<Task>, Error> {
        let mut out = Vec::with_capacity(self.count as usize);
        if let Some(base) = &self.base {
            let s = base.header.sections;
            let tasks = base.section(s.tasks)?;
            let entries = base.section(s.entries)?;
            let start = s.tasks[0];
            for (ord, row) in entries
                .chunks_exact(super::snapshot::ENTRY_BYTES)
                .enumerate()
            {
                let ord = ord as u32;
                if let Some(n) = self.nodes.get(&ord) {
                    out.push(n.task.clone());
                    continue;
                }
                let e = base.decode_entry(ord, row)?;
                let from = (e.task.0 - start) as usize;
                let line = tasks
                    .get(from..from + e.task.1 as usize)
                    .filter(|b| crc32fast::hash(b) == e.task.2)
                    .ok_or_else(|| {
                        super::snapshot::corrupt(
                            base.path(),
                            format!("the record of task number {ord} fails its checksum"),
                        )
                    })?;
                out.push(serde_json::from_slice(line).map_err(|err| {
                    super::snapshot::corrupt(base.path(), format!("task number {ord}: {err}"))
                })?);
            }
        }
        let base_count = out.len() as u32;
        for ord in base_count..self.count {
            let n = self.nodes.get(&ord).ok_or_else(|| Error::Invalid {
                what: "task number",
                reason: format!("{ord} is missing from the overlay"),
            })?;
            out.push(n.task.clone());
        }
        Ok(out)
    }

    /// Applies one record after validating it against the graph.
    ///
    /// # Errors
    /// The error a writer would have met proposing the record ([`Error::NotFound`],
    /// [`Error::InvalidTransition`], [`Error::NotAssignee`], [`Error::DuplicateId`],
    /// [`Error::Cycle`], ...), or an error reading the snapshot. On error the graph may be
    /// partly changed: the caller discards it.
    pub(crate) fn apply(&mut self, rec: &Record, out: &mut Vec<Effect>) -> Result<(), Error> {
        let ctx = Ctx {
            seq: rec.seq,
            at: rec.at,
            by: rec.by.as_ref(),
            force: rec.force,
        };
        match &rec.op {
            Op::Create { task } => self.create(ctx, task, out)?,
            Op::Status { task, to, note } => {
                let ord = self.need(task)?;
                self.check_status(ord, *to)?;
                self.permit(ord, ctx)?;
                if let Some(n) = note {
                    crate::task::check_text("task note", n)?;
                }
                let from = self.loaded(ord)?.task.status;
                let ev = EventKind::Status {
                    from,
                    to: *to,
                    note: note.clone(),
                };
                self.set_status(ord, *to, note.clone(), ctx, Some(ev), out)?;
            }
            Op::Claim { task, agent } => {
                let ord = self.need(task)?;
                let n = self.loaded(ord)?;
                if n.task.status != TaskStatus::Pending {
                    return Err(Error::InvalidTransition {
                        task: task.clone(),
                        from: n.task.status,
                        to: TaskStatus::InProgress,
                        reason: "only a pending task can be claimed".into(),
                    });
                }
                if let Some(a) = &n.task.assigned_to
                    && a != agent
                {
                    return Err(Error::NotAssignee {
                        task: task.clone(),
                        assignee: a.clone(),
                        actor: Some(agent.clone()),
                    });
                }
                self.modify(ord, |n| n.task.assigned_to = Some(agent.clone()))?;
                let ev = EventKind::Claimed {
                    agent: agent.clone(),
                };
                self.set_status(ord, TaskStatus::InProgress, None, ctx, Some(ev), out)?;
            }
            Op::Release { task, reason } => {
                let ord = self.need(task)?;
                let n = self.loaded(ord)?;
                if !n.task.status.is_active() {
                    return Err(Error::InvalidTransition {
                        task: task.clone(),
                        from: n.task.status,
                        to: TaskStatus::Pending,
                        reason: "only an active task can be released".into(),
                    });
                }
                crate::task::check_text("release reason", reason)?;
                self.modify(ord, |n| n.task.assigned_to = None)?;
                let ev = EventKind::Released {
                    reason: reason.clone(),
                };
                self.set_status(
                    ord,
                    TaskStatus::Pending,
                    Some(reason.clone()),
                    ctx,
                    Some(ev),
                    out,
                )?;
            }
            Op::Assign { task, agent } => {
                let ord = self.need(task)?;
                self.permit(ord, ctx)?;
                let at = ctx.at;
                let (from, to) = self.modify(ord, |n| {
                    let from = n.task.status;
                    n.task.assigned_to = agent.clone();
                    n.task.updated_at = at;
                    n.task.revision += 1;
                    // An active task nobody works on any more goes back to the queue (an
                    // active task's dependencies are all completed: it is pending again).
                    let requeued = (agent.is_none() && from.is_active()).then(|| {
                        n.task.status = TaskStatus::Pending;
                        n.task.status
                    });
                    n.history.push(ctx.event(EventKind::Assigned {
                        agent: agent.clone(),
                        requeued,
                    }));
                    (from, n.task.status)
                })?;
                out.push(if from == to {
                    Effect::touched(task.clone())
                } else {
                    Effect::status(task.clone(), Some(from), to)
                });
            }
            Op::Edit { task, set } => {
                let ord = self.need(task)?;
                set.check()?;
                let at = ctx.at;
                self.modify(ord, |n| {
                    let old_w = n.weight();
                    set.apply_to(&mut n.task);
                    let new_w = n.weight();
                    n.rank = n
                        .rank
                        .saturating_sub(old_w)
                        .saturating_add(new_w)
                        .max(new_w);
                    n.task.updated_at = at;
                    n.task.revision += 1;
                    n.history
                        .push(ctx.event(EventKind::Edited { set: set.clone() }));
                })?;
                out.push(Effect::touched(task.clone()));
            }
            Op::Comment { task, text } => {
                let ord = self.need(task)?;
                if text.trim().is_empty() {
                    return Err(Error::Invalid {
                        what: "comment",
                        reason: "it is empty".into(),
                    });
                }
                crate::task::check_text("comment", text)?;
                self.modify(ord, |n| {
                    n.history
                        .push(ctx.event(EventKind::Comment { text: text.clone() }));
                })?;
                out.push(Effect::touched(task.clone()));
            }
            Op::AddDependency { task, dependency } => {
                self.add_dependency(ctx, task, dependency, out)?;
            }
            Op::RemoveDependency { task, dependency } => {
                self.remove_dependency(ctx, task, dependency, out)?;
            }
            Op::Rotate { .. } => {}
        }
        self.seq = rec.seq;
        Ok(())
    }

    /// Refuses a status change the state machine does not allow.
    fn check_status(&mut self, ord: u32, to: TaskStatus) -> Result<(), Error> {
        let t = &self.loaded(ord)?.task;
        if let Some(reason) = t.status.refuse(to) {
            return Err(Error::InvalidTransition {
                task: t.id.clone(),
                from: t.status,
                to,
                reason: reason.to_string(),
            });
        }
        Ok(())
    }

    /// Only the assignee acts on an assigned task, unless forced.
    fn permit(&mut self, ord: u32, ctx: Ctx<'_>) -> Result<(), Error> {
        let t = &self.loaded(ord)?.task;
        match (&t.assigned_to, ctx.by) {
            (None, _) => Ok(()),
            (Some(a), Some(b)) if a == b => Ok(()),
            _ if ctx.force => Ok(()),
            (Some(a), by) => Err(Error::NotAssignee {
                task: t.id.clone(),
                assignee: a.clone(),
                actor: by.cloned(),
            }),
        }
    }

    fn create(&mut self, ctx: Ctx<'_>, task: &Task, out: &mut Vec<Effect>) -> Result<(), Error> {
        task.check()?;
        if self.lookup(&task.id)?.is_some() {
            return Err(Error::DuplicateId {
                task: task.id.clone(),
            });
        }
        let mut dep_ords = Vec::with_capacity(task.dependencies.len());
        for (k, d) in task.dependencies.iter().enumerate() {
            if *d == task.id {
                return Err(Error::Cycle {
                    cycle: vec![task.id.clone(), task.id.clone()],
                });
            }
            if task.dependencies[..k].contains(d) {
                return Err(Error::Invalid {
                    what: "dependencies",
                    reason: format!("task {} names {d} twice", task.id),
                });
            }
            let j = self.lookup(d)?.ok_or_else(|| Error::UnknownDependency {
                task: task.id.clone(),
                dependency: d.clone(),
            })?;
            dep_ords.push(j);
        }
        let ord = self.count;
        let weight = weight_ms(task);
        let mut remaining = 0u32;
        let mut reason = None;
        for &j in &dep_ords {
            let (st, r) = self.modify(j, |n| {
                n.dependents.push(ord);
                n.rank = n.rank.max(n.weight().saturating_add(weight));
                let r = n.task.status.is_given_up().then(|| gave_up_reason(&n.task));
                (n.task.status, r)
            })?;
            if st != TaskStatus::Completed {
                remaining += 1;
            }
            if reason.is_none() {
                reason = r;
            }
        }
        let mut t = task.clone();
        t.status = if remaining > 0 {
            TaskStatus::Blocked
        } else {
            TaskStatus::Pending
        };
        t.blocked_reason = if remaining > 0 { reason } else { None };
        t.created_at = ctx.at;
        t.updated_at = ctx.at;
        t.revision = 1;
        t.started_at = None;
        t.completed_at = None;
        t.attempts = 0;
        let node = Node {
            history: vec![ctx.event(EventKind::Created)],
            base_history: None,
            dependents: Vec::new(),
            remaining,
            rank: weight,
            task: t,
        };
        out.push(Effect::status(task.id.clone(), None, node.task.status));
        self.counts_delta[usize::from(node.task.status.code())] += 1;
        self.ids.insert(task.id.clone(), ord);
        self.index(ord, &node);
        self.nodes.insert(ord, node);
        self.count = self.count.checked_add(1).ok_or_else(|| Error::Invalid {
            what: "task",
            reason: "the store holds the largest number of tasks it can".into(),
        })?;
        Ok(())
    }

    /// Sets the status of `ord` (validated by the caller) and derives the effects on its
    /// dependents. `ev` is the history event of the request (none when the caller records
    /// its own).
    fn set_status(
        &mut self,
        ord: u32,
        to: TaskStatus,
        note: Option<String>,
        ctx: Ctx<'_>,
        ev: Option<EventKind>,
        out: &mut Vec<Effect>,
    ) -> Result<(), Error> {
        let at = ctx.at;
        let (id, from, to, dependents, gave_up) = self.modify(ord, |n| {
            let from = n.task.status;
            // Back to the queue with dependencies outstanding is Blocked.
            let to = if to == TaskStatus::Pending && n.remaining > 0 {
                TaskStatus::Blocked
            } else {
                to
            };
            let t = &mut n.task;
            t.status = to;
            t.updated_at = at;
            t.revision += 1;
            if note.is_some() {
                t.note = note;
            }
            match to {
                TaskStatus::InProgress if from != TaskStatus::Review => {
                    t.started_at = Some(at);
                    t.attempts = t.attempts.saturating_add(1);
                    if t.assigned_to.is_none() {
                        t.assigned_to = ctx.by.cloned();
                    }
                }
                TaskStatus::Completed => t.completed_at = Some(at),
                _ => {}
            }
            if let Some(ev) = ev {
                n.history.push(ctx.event(ev));
            }
            let gave_up = to.is_given_up().then(|| gave_up_reason(&n.task));
            let touches_dependents =
                to == TaskStatus::Completed || gave_up.is_some() || from.is_given_up();
            let dependents = if touches_dependents {
                n.dependents.clone()
            } else {
                Vec::new()
            };
            (n.task.id.clone(), from, to, dependents, gave_up)
        })?;
        out.push(Effect::status(id.clone(), Some(from), to));
        if to == TaskStatus::Completed {
            // O(dependents): each dependent's outstanding count drops by one.
            for d in dependents {
                let unblocked = self.modify(d, |n| {
                    n.remaining = n.remaining.saturating_sub(1);
                    if n.remaining == 0 && n.task.status == TaskStatus::Blocked {
                        n.task.status = TaskStatus::Pending;
                        n.task.blocked_reason = None;
                        n.task.updated_at = at;
                        n.task.revision += 1;
                        n.history.push(ctx.event(EventKind::Unblocked {
                            dependency: id.clone(),
                        }));
                        Some(n.task.id.clone())
                    } else {
                        None
                    }
                })?;
                if let Some(u) = unblocked {
                    out.push(Effect::status(
                        u,
                        Some(TaskStatus::Blocked),
                        TaskStatus::Pending,
                    ));
                }
            }
        } else if let Some(reason) = gave_up {
            for d in dependents {
                let told = self.modify(d, |n| {
                    if n.task.status != TaskStatus::Blocked {
                        return None;
                    }
                    n.task.blocked_reason = Some(reason.clone());
                    n.task.updated_at = at;
                    n.task.revision += 1;
                    n.history.push(ctx.event(EventKind::DependencyGaveUp {
                        dependency: id.clone(),
                        reason: reason.clone(),
                    }));
                    Some(n.task.id.clone())
                })?;
                if let Some(t) = told {
                    out.push(Effect::blocked(t, reason.clone()));
                }
            }
        } else if from.is_given_up() {
            let prefix = gave_up_prefix(&id);
            for d in dependents {
                let cleared = self.modify(d, |n| {
                    if !n
                        .task
                        .blocked_reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with(&prefix))
                    {
                        return None;
                    }
                    n.task.blocked_reason = None;
                    n.task.updated_at = at;
                    n.task.revision += 1;
                    n.history.push(ctx.event(EventKind::DependencyReopened {
                        dependency: id.clone(),
                    }));
                    Some(n.task.id.clone())
                })?;
                if let Some(t) = cleared {
                    out.push(Effect::touched(t));
                }
            }
        }
        Ok(())
    }

    fn add_dependency(
        &mut self,
        ctx: Ctx<'_>,
        task: &TaskId,
        dependency: &TaskId,
        out: &mut Vec<Effect>,
    ) -> Result<(), Error> {
        let i = self.need(task)?;
        let j = self
            .lookup(dependency)?
            .ok_or_else(|| Error::UnknownDependency {
                task: task.clone(),
                dependency: dependency.clone(),
            })?;
        if i == j {
            return Err(Error::Cycle {
                cycle: vec![task.clone(), task.clone()],
            });
        }
        let t = &self.loaded(i)?.task;
        if !matches!(t.status, TaskStatus::Pending | TaskStatus::Blocked) {
            return Err(Error::Invalid {
                what: "dependency",
                reason: format!("task {task} is {} already", t.status),
            });
        }
        if t.dependencies.contains(dependency) {
            return Err(Error::Invalid {
                what: "dependency",
                reason: format!("task {task} depends on {dependency} already"),
            });
        }
        if t.dependencies.len() >= crate::task::MAX_DEPENDENCIES {
            return Err(Error::Invalid {
                what: "dependencies",
                reason: format!(
                    "task {task} has {} dependencies, the limit",
                    crate::task::MAX_DEPENDENCIES
                ),
            });
        }
        if let Some(path) = self.path_via_dependents(i, j)? {
            // `path` runs i -> ... -> j along dependents: each depends on the one before.
            let mut cycle = vec![task.clone()];
            for &k in path.iter().rev() {
                cycle.push(self.task(k)?.id);
            }
            return Err(Error::Cycle { cycle });
        }
        let rank_i = self.loaded(i)?.rank;
        let (dep_status, reason) = self.modify(j, |n| {
            n.dependents.push(i);
            n.rank = n.rank.max(n.weight().saturating_add(rank_i));
            (
                n.task.status,
                n.task.status.is_given_up().then(|| gave_up_reason(&n.task)),
            )
        })?;
        let at = ctx.at;
        let blocked = self.modify(i, |n| {
            n.task.dependencies.push(dependency.clone());
            n.task.updated_at = at;
            n.task.revision += 1;
            n.history.push(ctx.event(EventKind::DependencyAdded {
                task: dependency.clone(),
            }));
            if dep_status == TaskStatus::Completed {
                return false;
            }
            n.remaining += 1;
            if n.task.blocked_reason.is_none() {
                n.task.blocked_reason = reason;
            }
            if n.task.status == TaskStatus::Pending {
                n.task.status = TaskStatus::Blocked;
                return true;
            }
            false
        })?;
        out.push(if blocked {
            Effect::status(task.clone(), Some(TaskStatus::Pending), TaskStatus::Blocked)
        } else {
            Effect::touched(task.clone())
        });
        Ok(())
    }

    fn remove_dependency(
        &mut self,
        ctx: Ctx<'_>,
        task: &TaskId,
        dependency: &TaskId,
        out: &mut Vec<Effect>,
    ) -> Result<(), Error> {
        let i = self.need(task)?;
        if !self.loaded(i)?.task.dependencies.contains(dependency) {
            return Err(Error::Invalid {
                what: "dependency",
                reason: format!("task {task} does not depend on {dependency}"),
            });
        }
        let j = self
            .lookup(dependency)?
            .ok_or_else(|| Error::UnknownDependency {
                task: task.clone(),
                dependency: dependency.clone(),
            })?;
        let dep_status = self.modify(j, |n| {
            n.dependents.retain(|&d| d != i);
            n.task.status
        })?;
        let prefix = gave_up_prefix(dependency);
        let at = ctx.at;
        let (unblocked, deps_left, reason_cleared) = self.modify(i, |n| {
            n.task.dependencies.retain(|d| d != dependency);
            n.task.updated_at = at;
            n.task.revision += 1;
            n.history.push(ctx.event(EventKind::DependencyRemoved {
                task: dependency.clone(),
            }));
            if dep_status != TaskStatus::Completed {
                n.remaining = n.remaining.saturating_sub(1);
            }
            let cleared = n
                .task
                .blocked_reason
                .as_deref()
                .is_some_and(|r| r.starts_with(&prefix));
            if cleared {
                n.task.blocked_reason = None;
            }
            let unblocked = n.remaining == 0 && n.task.status == TaskStatus::Blocked;
            if unblocked {
                n.task.status = TaskStatus::Pending;
                n.task.blocked_reason = None;
            }
            (unblocked, n.task.dependencies.clone(), cleared)
        })?;
        if reason_cleared && !unblocked {
            // Another dependency may still have given up: its reason takes over.
            for d in deps_left {
                if let Some(k) = self.lookup(&d)? {
                    let (st, _) = self.status_of(k)?;
                    if st.is_given_up() {
                        let reason = gave_up_reason(&self.task(k)?);
                        self.modify(i, |n| n.task.blocked_reason = Some(reason))?;
                        break;
                    }
                }
            }
        }
        out.push(if unblocked {
            Effect::status(task.clone(), Some(TaskStatus::Blocked), TaskStatus::Pending)
        } else {
            Effect::touched(task.clone())
        });
        Ok(())
    }

    /// A path from `from` to `to` following dependents (`from` first, `to` last), if any:
    /// `to` depends, transitively, on `from`.
    fn path_via_dependents(&self, from: u32, to: u32) -> Result<Option<Vec<u32>>, Error> {
        let mut parent: FxMap<u32, u32> = FxMap::default();
        parent.insert(from, u32::MAX);
        let mut queue = VecDeque::from([from]);
        while let Some(v) = queue.pop_front() {
            if v == to {
                let mut path = vec![v];
                let mut x = v;
                while let Some(&p) = parent.get(&x) {
                    if p == u32::MAX {
                        break;
                    }
                    path.push(p);
                    x = p;
                }
                path.reverse();
                return Ok(Some(path));
            }
            for w in self.dependents_of(v)? {
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(w) {
                    e.insert(v);
                    queue.push_back(w);
                }
            }
        }
        Ok(None)
    }

    /// The overlay's nodes, for compaction.
    pub(crate) fn nodes(&self) -> &FxMap<u32, Node> {
        &self.nodes
    }

    /// The ids of tasks created since the snapshot (ordinal >= the snapshot's count).
    pub(crate) fn new_ids(&self) -> Vec<(TaskId, u32)> {
        let base = self.base.as_ref().map_or(0, Snapshot::count);
        self.ids
            .iter()
            .filter(|(_, o)| **o >= base)
            .map(|(id, o)| (id.clone(), *o))
            .collect()
    }
}

#[cfg(test)]
impl Graph {
    /// Changes a task without any of the bookkeeping (tests that forge damaged files).
    pub(crate) fn tamper(&mut self, ord: u32, f: impl FnOnce(&mut Task)) -> Result<(), Error> {
        self.load(ord)?;
        if let Some(n) = self.nodes.get_mut(&ord) {
            f(&mut n.task);
        }
        Ok(())
    }
}
