//! Tasks on PostgreSQL: the task graph with dependencies, atomic claims, revisions, the
//! release of dead agents' claims, and the same report, critical path and Gantt chart
//! (maos-track's pure renderers).
//!
//! Every write is one transaction under the row lock of `maos.guards (ns, 'tasks')`, whose
//! counter is the log's last sequence number: the writer catches up with the rows changed
//! since its cache (`maos.tasks.seq > cached`), validates against the whole graph, appends
//! its records to `maos.task_log` (gapless `seq`, the same record kinds as the file log) and
//! upserts the changed task documents stamped with their `seq`. A claim reads the ready set
//! and writes the claim in that one transaction, so a task is never claimed twice. Readers
//! need no lock: one statement reads the counter and the rows changed since their cache, in
//! one snapshot. Each write carries a request id, so a retry after a lost connection whose
//! commit may have happened is recognised and not applied twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use maos_core::{AgentId, Liveness, TaskId};
/// A status change with its preconditions: maos-track's own, so both backends take the same.
pub use maos_track::Update;
use maos_track::{Amendment, Edit, Event, EventKind, Ownership, Task, TaskDetails, TaskStatus};
use serde::{Deserialize, Serialize};

use crate::conn::{Exec, Tx};
use crate::{Error, Pg, Result};

/// How often [`PgTracker::wait_changed`] looks again without a notification (one lost to a
/// connection reset).
const RECHECK: Duration = Duration::from_secs(1);

/// The NOTIFY channel of a namespace's task writes.
pub(crate) fn notify_channel(ns: i64) -> String {
    format!("maos_t{ns}")
}

/// One record of the task log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// A new task.
    Create {
        /// The task as created.
        task: Box<Task>,
    },
    /// A status change.
    Status {
        /// The task.
        task: TaskId,
        /// The new status.
        to: TaskStatus,
        /// A note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A claim: assigned, then in progress.
    Claim {
        /// The task.
        task: TaskId,
        /// The claiming agent.
        agent: AgentId,
    },
    /// A dead agent's claim released.
    Release {
        /// The task.
        task: TaskId,
        /// Why.
        reason: String,
    },
    /// An assignment.
    Assign {
        /// The task.
        task: TaskId,
        /// The agent, or none.
        agent: Option<AgentId>,
    },
    /// Descriptive fields changed.
    Edit {
        /// The task.
        task: TaskId,
        /// The new values.
        set: Edit,
    },
    /// A comment (history only).
    Comment {
        /// The task.
        task: TaskId,
        /// The text.
        text: String,
    },
    /// A new dependency.
    AddDependency {
        /// The task.
        task: TaskId,
        /// What it now depends on.
        dependency: TaskId,
    },
    /// A dependency removed.
    RemoveDependency {
        /// The task.
        task: TaskId,
        /// What it no longer depends on.
        dependency: TaskId,
    },
}

#[derive(Default)]
struct Cache {
    seq: i64,
    tasks: Vec<Task>,
    created: Vec<i64>,
    index: HashMap<TaskId, usize>,
    dependents: HashMap<TaskId, Vec<TaskId>>,
    dirty: bool,
}

impl Cache {
    fn get(&self, id: &TaskId) -> Option<&Task> {
        self.index.get(id).map(|&i| &self.tasks[i])
    }

    fn get_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        match self.index.get(id) {
            Some(&i) => Some(&mut self.tasks[i]),
            None => None,
        }
    }

    fn rebuild_dependents(&mut self) {
        self.dependents.clear();
        for t in &self.tasks {
            for d in &t.dependencies {
                self.dependents
                    .entry(d.clone())
                    .or_default()
                    .push(t.id.clone());
            }
        }
    }

    /// Merges rows read from the server (doc, created_seq), then sets `seq`.
    fn merge(&mut self, rows: Vec<(Task, i64)>, seq: i64) {
        let mut new: Vec<(Task, i64)> = Vec::new();
        for (t, created) in rows {
            match self.index.get(&t.id) {
                Some(&i) => self.tasks[i] = t,
                None => new.push((t, created)),
            }
        }
        new.sort_by_key(|(_, c)| *c);
        for (t, c) in new {
            self.index.insert(t.id.clone(), self.tasks.len());
            self.tasks.push(t);
            self.created.push(c);
        }
        self.seq = seq;
        self.rebuild_dependents();
    }

    fn deps_done(&self, t: &Task) -> bool {
        t.dependencies.iter().all(|d| {
            self.get(d)
                .is_some_and(|d| d.status == TaskStatus::Completed)
        })
    }

    fn need(&self, id: &TaskId) -> Result<&Task> {
        self.get(id).ok_or_else(|| Error::TaskNotFound {
            task: id.to_string(),
        })
    }

    /// Only the assignee acts on an assigned task, unless forced (as on the files).
    fn permit(&self, id: &TaskId, ctx: &Ctx<'_>) -> Result<()> {
        let t = self.need(id)?;
        match (&t.assigned_to, ctx.by) {
            (None, _) => Ok(()),
            (Some(a), Some(b)) if a == b => Ok(()),
            _ if ctx.force => Ok(()),
            (Some(a), Some(b)) => Err(Error::NotAssignee {
                task: id.clone(),
                assignee: a.clone(),
                actor: b.clone(),
            }),
            (Some(a), None) => Err(Error::Invalid {
                what: "actor",
                reason: format!(
                    "task {id} is assigned to {a} and this writer names no agent: set \
                     MAOS_AGENT_ID or force it"
                ),
            }),
        }
    }

    /// Validates one record against the graph, exactly as the file store's replay does
    /// (`docs/protocol.md`, section 8), and applies it; the history events it causes are
    /// pushed on `events`. Returns the tasks whose documents changed. On error the cache
    /// may be partly changed: the caller discards it.
    fn apply(
        &mut self,
        op: &Op,
        ctx: &Ctx<'_>,
        events: &mut Vec<(TaskId, Event)>,
    ) -> Result<Vec<TaskId>> {
        match op {
            Op::Create { task } => self.create(task, ctx, events),
            Op::Status { task, to, note } => {
                let t = self.need(task)?;
                if let Some(reason) = t.status.refuse(*to) {
                    return Err(Error::InvalidTransition {
                        task: task.clone(),
                        from: t.status,
                        to: *to,
                        reason: reason.to_string(),
                    });
                }
                let from = t.status;
                self.permit(task, ctx)?;
                if let Some(n) = note {
                    maos_track::check_text("task note", n).map_err(invalid)?;
                }
                let ev = EventKind::Status {
                    from,
                    to: *to,
                    note: note.clone(),
                };
                Ok(self.set_status(task, *to, note.clone(), ctx, ev, events))
            }
            Op::Claim { task, agent } => {
                let t = self.need(task)?;
                if t.status != TaskStatus::Pending {
                    return Err(Error::InvalidTransition {
                        task: task.clone(),
                        from: t.status,
                        to: TaskStatus::InProgress,
                        reason: "only a pending task can be claimed".into(),
                    });
                }
                if let Some(a) = &t.assigned_to
                    && a != agent
                {
                    return Err(Error::NotAssignee {
                        task: task.clone(),
                        assignee: a.clone(),
                        actor: agent.clone(),
                    });
                }
                if let Some(t) = self.get_mut(task) {
                    t.assigned_to = Some(agent.clone());
                }
                let ev = EventKind::Claimed {
                    agent: agent.clone(),
                };
                Ok(self.set_status(task, TaskStatus::InProgress, None, ctx, ev, events))
            }
            Op::Release { task, reason } => {
                let t = self.need(task)?;
                if !t.status.is_active() {
                    return Err(Error::InvalidTransition {
                        task: task.clone(),
                        from: t.status,
                        to: TaskStatus::Pending,
                        reason: "only an active task can be released".into(),
                    });
                }
                maos_track::check_text("release reason", reason).map_err(invalid)?;
                if let Some(t) = self.get_mut(task) {
                    t.assigned_to = None;
                }
                let ev = EventKind::Released {
                    reason: reason.clone(),
                };
                Ok(self.set_status(
                    task,
                    TaskStatus::Pending,
                    Some(reason.clone()),
                    ctx,
                    ev,
                    events,
                ))
            }
            Op::Assign { task, agent } => {
                self.permit(task, ctx)?;
                let t = self.get_mut(task).ok_or_else(|| Error::TaskNotFound {
                    task: task.to_string(),
                })?;
                let from = t.status;
                t.assigned_to = agent.clone();
                t.updated_at = ctx.at;
                t.revision += 1;
                // An active task nobody works on any more goes back to the queue (an active
                // task's dependencies are all completed: it is pending again).
                let requeued = (agent.is_none() && from.is_active()).then(|| {
                    t.status = TaskStatus::Pending;
                    t.status
                });
                events.push(ctx.event(
                    task,
                    EventKind::Assigned {
                        agent: agent.clone(),
                        requeued,
                    },
                ));
                Ok(vec![task.clone()])
            }
            Op::Edit { task, set } => {
                set.check().map_err(invalid)?;
                let t = self.get_mut(task).ok_or_else(|| Error::TaskNotFound {
                    task: task.to_string(),
                })?;
                set.apply_to(t);
                t.updated_at = ctx.at;
                t.revision += 1;
                events.push(ctx.event(task, EventKind::Edited { set: set.clone() }));
                Ok(vec![task.clone()])
            }
            Op::Comment { task, text } => {
                self.need(task)?;
                if text.trim().is_empty() {
                    return Err(Error::Invalid {
                        what: "comment",
                        reason: "it is empty".into(),
                    });
                }
                maos_track::check_text("comment", text).map_err(invalid)?;
                events.push(ctx.event(task, EventKind::Comment { text: text.clone() }));
                // History only: the task's document does not change.
                Ok(Vec::new())
            }
            Op::AddDependency { task, dependency } => {
                self.add_dependency(task, dependency, ctx, events)
            }
            Op::RemoveDependency { task, dependency } => {
                self.remove_dependency(task, dependency, ctx, events)
            }
        }
    }

    fn create(
        &mut self,
        task: &Task,
        ctx: &Ctx<'_>,
        events: &mut Vec<(TaskId, Event)>,
    ) -> Result<Vec<TaskId>> {
        task.check().map_err(invalid)?;
        if self.get(&task.id).is_some() {
            return Err(Error::DuplicateTask {
                task: task.id.clone(),
            });
        }
        let mut remaining = 0;
        let mut reason = None;
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
            let dep = self.get(d).ok_or_else(|| Error::UnknownDependency {
                task: task.id.clone(),
                dependency: d.clone(),
            })?;
            if dep.status != TaskStatus::Completed {
                remaining += 1;
            }
            if reason.is_none() && dep.status.is_given_up() {
                reason = Some(gave_up_reason(dep));
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
        for d in &t.dependencies {
            self.dependents
                .entry(d.clone())
                .or_default()
                .push(t.id.clone());
        }
        self.index.insert(t.id.clone(), self.tasks.len());
        self.created.push(self.seq);
        events.push(ctx.event(&t.id, EventKind::Created));
        let id = t.id.clone();
        self.tasks.push(t);
        Ok(vec![id])
    }

    /// Sets the status of `id` (validated by the caller) and derives the effects on its
    /// dependents, as the file store does.
    fn set_status(
        &mut self,
        id: &TaskId,
        to: TaskStatus,
        note: Option<String>,
        ctx: &Ctx<'_>,
        ev: EventKind,
        events: &mut Vec<(TaskId, Event)>,
    ) -> Vec<TaskId> {
        let Some(t) = self.get(id) else {
            return Vec::new();
        };
        let from = t.status;
        // Back to the queue with dependencies outstanding is Blocked.
        let to = if to == TaskStatus::Pending && !self.deps_done(t) {
            TaskStatus::Blocked
        } else {
            to
        };
        let at = ctx.at;
        let mut gave_up = None;
        if let Some(t) = self.get_mut(id) {
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
            gave_up = to.is_given_up().then(|| gave_up_reason(t));
        }
        events.push(ctx.event(id, ev));
        let mut changed = vec![id.clone()];
        let dependents = self.dependents.get(id).cloned().unwrap_or_default();
        let prefix = gave_up_prefix(id);
        for d in dependents {
            let Some(dt) = self.get(&d) else { continue };
            let done = self.deps_done(dt);
            let what = if to == TaskStatus::Completed {
                (dt.status == TaskStatus::Blocked && done).then(|| EventKind::Unblocked {
                    dependency: id.clone(),
                })
            } else if let Some(reason) = &gave_up {
                (dt.status == TaskStatus::Blocked).then(|| EventKind::DependencyGaveUp {
                    dependency: id.clone(),
                    reason: reason.clone(),
                })
            } else if from.is_given_up() {
                dt.blocked_reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with(&prefix))
                    .then(|| EventKind::DependencyReopened {
                        dependency: id.clone(),
                    })
            } else {
                None
            };
            let Some(what) = what else { continue };
            if let Some(dt) = self.get_mut(&d) {
                match &what {
                    EventKind::Unblocked { .. } => {
                        dt.status = TaskStatus::Pending;
                        dt.blocked_reason = None;
                    }
                    EventKind::DependencyGaveUp { reason, .. } => {
                        dt.blocked_reason = Some(reason.clone());
                    }
                    _ => dt.blocked_reason = None,
                }
                dt.updated_at = at;
                dt.revision += 1;
            }
            events.push(ctx.event(&d, what));
            changed.push(d);
        }
        changed
    }

    fn add_dependency(
        &mut self,
        task: &TaskId,
        dependency: &TaskId,
        ctx: &Ctx<'_>,
        events: &mut Vec<(TaskId, Event)>,
    ) -> Result<Vec<TaskId>> {
        let t = self.need(task)?;
        let dep = self
            .get(dependency)
            .ok_or_else(|| Error::UnknownDependency {
                task: task.clone(),
                dependency: dependency.clone(),
            })?;
        if task == dependency {
            return Err(Error::Cycle {
                cycle: vec![task.clone(), task.clone()],
            });
        }
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
        if t.dependencies.len() >= maos_track::MAX_DEPENDENCIES {
            return Err(Error::Invalid {
                what: "dependencies",
                reason: format!(
                    "task {task} has {} dependencies, the limit",
                    maos_track::MAX_DEPENDENCIES
                ),
            });
        }
        if let Some(mut path) = self.depends_on(dependency, task) {
            path.insert(0, task.clone());
            return Err(Error::Cycle { cycle: path });
        }
        let (dep_status, reason) = (
            dep.status,
            dep.status.is_given_up().then(|| gave_up_reason(dep)),
        );
        let Some(t) = self.get_mut(task) else {
            return Ok(Vec::new());
        };
        t.dependencies.push(dependency.clone());
        t.updated_at = ctx.at;
        t.revision += 1;
        if dep_status != TaskStatus::Completed {
            if t.blocked_reason.is_none() {
                t.blocked_reason = reason;
            }
            if t.status == TaskStatus::Pending {
                t.status = TaskStatus::Blocked;
            }
        }
        self.dependents
            .entry(dependency.clone())
            .or_default()
            .push(task.clone());
        events.push(ctx.event(
            task,
            EventKind::DependencyAdded {
                task: dependency.clone(),
            },
        ));
        Ok(vec![task.clone()])
    }

    fn remove_dependency(
        &mut self,
        task: &TaskId,
        dependency: &TaskId,
        ctx: &Ctx<'_>,
        events: &mut Vec<(TaskId, Event)>,
    ) -> Result<Vec<TaskId>> {
        if !self.need(task)?.dependencies.contains(dependency) {
            return Err(Error::Invalid {
                what: "dependency",
                reason: format!("task {task} does not depend on {dependency}"),
            });
        }
        if self.get(dependency).is_none() {
            return Err(Error::UnknownDependency {
                task: task.clone(),
                dependency: dependency.clone(),
            });
        }
        if let Some(ds) = self.dependents.get_mut(dependency) {
            ds.retain(|d| d != task);
        }
        let prefix = gave_up_prefix(dependency);
        let Some(t) = self.get_mut(task) else {
            return Ok(Vec::new());
        };
        t.dependencies.retain(|d| d != dependency);
        t.updated_at = ctx.at;
        t.revision += 1;
        let cleared = t
            .blocked_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(&prefix));
        if cleared {
            t.blocked_reason = None;
        }
        let t = self.need(task)?;
        let unblocked = t.status == TaskStatus::Blocked && self.deps_done(t);
        // Another dependency may still have given up: its reason takes over.
        let next_reason = (cleared && !unblocked)
            .then(|| {
                t.dependencies.iter().find_map(|d| {
                    self.get(d)
                        .filter(|d| d.status.is_given_up())
                        .map(gave_up_reason)
                })
            })
            .flatten();
        if let Some(t) = self.get_mut(task) {
            if unblocked {
                t.status = TaskStatus::Pending;
                t.blocked_reason = None;
            } else if next_reason.is_some() {
                t.blocked_reason = next_reason;
            }
        }
        events.push(ctx.event(
            task,
            EventKind::DependencyRemoved {
                task: dependency.clone(),
            },
        ));
        Ok(vec![task.clone()])
    }

    /// Length of the heaviest chain of work starting at each task (its estimate plus the
    /// heaviest chain of its dependents), in ms.
    fn chains(&self) -> Vec<u64> {
        let n = self.tasks.len();
        let mut memo: Vec<Option<u64>> = vec![None; n];
        // Iterative post-order over dependents (no recursion limit).
        for start in 0..n {
            let mut stack = vec![(start, false)];
            while let Some((i, expanded)) = stack.pop() {
                if memo[i].is_some() {
                    continue;
                }
                let deps = self
                    .dependents
                    .get(&self.tasks[i].id)
                    .cloned()
                    .unwrap_or_default();
                let idx: Vec<usize> = deps
                    .iter()
                    .filter_map(|d| self.index.get(d).copied())
                    .collect();
                if !expanded {
                    stack.push((i, true));
                    for j in idx.iter().copied().filter(|&j| memo[j].is_none()) {
                        stack.push((j, false));
                    }
                    continue;
                }
                let best = idx.iter().filter_map(|&j| memo[j]).max().unwrap_or(0);
                memo[i] = Some(weight(&self.tasks[i]).saturating_add(best));
            }
        }
        memo.into_iter().map(|m| m.unwrap_or(0)).collect()
    }

    /// Ready tasks in claim order: priority, then the longest chain, then creation order.
    fn ready(&self) -> Vec<usize> {
        let chains = self.chains();
        let mut ready: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.tasks[i].status == TaskStatus::Pending)
            .collect();
        ready.sort_by(|&a, &b| {
            self.tasks[b]
                .priority
                .cmp(&self.tasks[a].priority)
                .then(chains[b].cmp(&chains[a]))
                .then(a.cmp(&b))
        });
        ready
    }

    /// Whether `to` is reachable from `from` along dependencies.
    fn depends_on(&self, from: &TaskId, to: &TaskId) -> Option<Vec<TaskId>> {
        let mut stack = vec![(from.clone(), vec![from.clone()])];
        let mut seen = HashSet::new();
        while let Some((id, path)) = stack.pop() {
            if &id == to {
                return Some(path);
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(t) = self.get(&id) {
                for d in &t.dependencies {
                    let mut p = path.clone();
                    p.push(d.clone());
                    stack.push((d.clone(), p));
                }
            }
        }
        None
    }
}

fn weight(t: &Task) -> u64 {
    u64::try_from(
        t.estimated_duration
            .unwrap_or(maos_track::DEFAULT_ESTIMATE)
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

fn gave_up_prefix(id: &TaskId) -> String {
    format!("dependency {id} ")
}

/// The reason a given-up (failed or cancelled) task gives its blocked dependents, worded
/// as on the files.
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

/// maos-track's refusal of a field (its limits are the same on every backend).
fn invalid(e: maos_track::Error) -> Error {
    match e {
        maos_track::Error::Invalid { what, reason } => Error::Invalid { what, reason },
        other => Error::Invalid {
            what: "task",
            reason: other.to_string(),
        },
    }
}

/// Who caused a record, and when: what its history events carry.
struct Ctx<'a> {
    seq: u64,
    at: u64,
    by: Option<&'a AgentId>,
    force: bool,
}

impl Ctx<'_> {
    fn event(&self, task: &TaskId, what: EventKind) -> (TaskId, Event) {
        (
            task.clone(),
            Event {
                seq: self.seq,
                at: self.at,
                by: self.by.cloned(),
                forced: self.force,
                what,
            },
        )
    }
}

/// The task graph of a namespace, shared by every machine. Cheap to clone.
#[derive(Clone)]
pub struct PgTracker {
    pg: Pg,
    agent: Option<AgentId>,
    release_dead_claims: bool,
    /// The longest a write waits for the tasks guard (`None`: the connection's
    /// `lock_timeout`, [`crate::ROW_WAIT`]).
    lock_wait: Option<Duration>,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for PgTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTracker")
            .field("namespace", &self.pg.namespace())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => {
            let mut g = p.into_inner();
            *g = Cache::default();
            g
        }
    }
}

fn decode_task(v: serde_json::Value) -> Result<Task> {
    serde_json::from_value(v).map_err(|e| Error::Corrupt {
        what: "task document".into(),
        reason: e.to_string(),
    })
}

fn catch_up(t: &mut impl Exec, ns: i64, cache: &mut Cache) -> Result<()> {
    catch_up_with(t, ns, cache, None).map(|_| ())
}

/// Catches `cache` up (rows changed since it, in one statement: one snapshot). With `req`,
/// also returns the server's clock and whether a write with that request id exists.
fn catch_up_with(
    t: &mut impl Exec,
    ns: i64,
    cache: &mut Cache,
    req: Option<uuid::Uuid>,
) -> Result<(i64, bool)> {
    if cache.dirty {
        *cache = Cache::default();
    }
    let rows = t.query(
        "read changed tasks",
        "SELECT g.counter, t.doc, t.created_seq, maos.now_ms(),
                $3::uuid IS NOT NULL AND EXISTS (SELECT 1 FROM maos.task_log l WHERE l.ns = $1 AND l.req = $3)
         FROM maos.guards g
             LEFT JOIN maos.tasks t ON t.ns = g.ns AND t.seq > $2
         WHERE g.ns = $1 AND g.what = 'tasks'",
        &[&ns, &cache.seq, &req],
    )?;
    let mut seq = cache.seq;
    let mut now = 0;
    let mut done = false;
    let mut changed = Vec::new();
    for r in rows {
        seq = r.get(0);
        now = r.get(3);
        done = r.get(4);
        if let Some(doc) = r.get::<_, Option<serde_json::Value>>(1) {
            changed.push((decode_task(doc)?, r.get::<_, i64>(2)));
        }
    }
    if !changed.is_empty() || seq != cache.seq {
        cache.merge(changed, seq);
    }
    Ok((now, done))
}

impl PgTracker {
    /// The tracker of `pg`'s namespace, acting as `MAOS_AGENT_ID`.
    pub fn new(pg: &Pg) -> Self {
        Self {
            pg: pg.clone(),
            agent: AgentId::current().ok(),
            release_dead_claims: true,
            lock_wait: None,
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    /// Bounds the wait of every write for the tasks guard (at least 100 ms): a process
    /// stopped in the middle of a write then makes it fail with [`Error::Busy`] in time
    /// (`--wait` of the task commands), as the file store's lock timeout does.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait.clamp(Duration::from_millis(100), crate::ROW_WAIT));
        self
    }

    /// Acts as `agent`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn agent(mut self, agent: AgentId) -> Self {
        self.agent = Some(agent);
        self
    }

    fn read<R>(&self, f: impl FnOnce(&Cache) -> R) -> Result<R> {
        let ns = self.pg.inner.ns;
        let mut cache = lock(&self.cache);
        self.pg.run(|c| catch_up(c, ns, &mut cache))?;
        Ok(f(&cache))
    }

    /// Under the tasks guard on a caught-up cache: `prepare` returns the records to append;
    /// they are applied and written in the same transaction. Returns the records written.
    ///
    /// Each record is validated against the graph as it is applied (the file store's rules:
    /// transitions, ownership, cycles, limits), so a record that would be refused is never
    /// written. `force` is the write's override of ownership (`--force`), recorded in the
    /// history; `prepare` may set it (an idempotent completion of another agent's task).
    fn write(
        &self,
        by: Option<&AgentId>,
        force: bool,
        mut prepare: impl FnMut(&Cache, &mut Tx<'_>, &mut bool) -> Result<Vec<Op>>,
    ) -> Result<Vec<Op>> {
        let ns = self.pg.inner.ns;
        let req = uuid::Uuid::new_v4();
        let by = by.or(self.agent.as_ref()).map(|a| a.to_string());
        let mut cache = lock(&self.cache);
        self.pg
            .run(|c| {
                c.tx("write tasks", |t| {
                    if let Some(w) = self.lock_wait {
                        t.wait_at_most(w)?;
                    }
                    t.exec(
                        "take the tasks guard",
                        "SELECT counter FROM maos.guards WHERE ns = $1 AND what = 'tasks' FOR UPDATE",
                        &[&ns],
                    )?;
                    let (at, done) = catch_up_with(t, ns, &mut cache, Some(req))?;
                    if done {
                        // A retry of a write whose commit we did not hear about: it is there.
                        return t
                            .query(
                                "find an earlier write",
                                "SELECT record FROM maos.task_log WHERE ns = $1 AND req = $2 ORDER BY seq",
                                &[&ns, &req],
                            )?
                            .into_iter()
                            .map(|r| {
                                serde_json::from_value(r.get(0)).map_err(|e| Error::Corrupt {
                                    what: "task log record".into(),
                                    reason: e.to_string(),
                                })
                            })
                            .collect();
                    }
                    let mut forced = force;
                    let ops = prepare(&cache, t, &mut forced)?;
                    if ops.is_empty() {
                        return Ok(ops);
                    }
                    let at_u = u64::try_from(at).unwrap_or(0);
                    cache.dirty = true;
                    let by_id = by.as_deref().and_then(|b| AgentId::new(b).ok());
                    let mut changed: Vec<TaskId> = Vec::new();
                    let mut seqs = Vec::with_capacity(ops.len());
                    let mut recs = Vec::with_capacity(ops.len());
                    let mut events = Vec::new();
                    for op in &ops {
                        cache.seq += 1;
                        let ctx = Ctx {
                            seq: u64::try_from(cache.seq).unwrap_or(0),
                            at: at_u,
                            by: by_id.as_ref(),
                            force: forced,
                        };
                        changed.extend(cache.apply(op, &ctx, &mut events)?);
                        seqs.push(cache.seq);
                        recs.push(serde_json::to_value(op).map_err(|e| Error::Corrupt {
                            what: "task log record".into(),
                            reason: e.to_string(),
                        })?);
                    }
                    changed.sort();
                    changed.dedup();
                    let (mut ids, mut created, mut statuses, mut assigned, mut docs) =
                        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    for id in &changed {
                        let Some(&i) = cache.index.get(id) else { continue };
                        let task = &cache.tasks[i];
                        ids.push(id.to_string());
                        created.push(cache.created[i]);
                        statuses.push(task.status.as_str().to_string());
                        assigned.push(task.assigned_to.as_ref().map(|a| a.to_string()));
                        docs.push(serde_json::to_value(task).map_err(|e| Error::Corrupt {
                            what: "task document".into(),
                            reason: e.to_string(),
                        })?);
                    }
                    let (mut ev_tasks, mut ev_seqs, mut ev_docs) = (Vec::new(), Vec::new(), Vec::new());
                    for (task, ev) in &events {
                        ev_tasks.push(task.to_string());
                        ev_seqs.push(i64::try_from(ev.seq).unwrap_or(i64::MAX));
                        ev_docs.push(serde_json::to_value(ev).map_err(|e| Error::Corrupt {
                            what: "task history event".into(),
                            reason: e.to_string(),
                        })?);
                    }
                    let ev_n: Vec<i32> = (0..i32::try_from(events.len()).unwrap_or(i32::MAX)).collect();
                    // The records, the history, the changed tasks and the counter in one
                    // statement.
                    t.exec(
                        "write tasks",
                        "WITH l AS (
                             INSERT INTO maos.task_log (ns, seq, at, by, record, req)
                             SELECT $1, s, $3, $4, r, $5 FROM unnest($2::bigint[], $6::jsonb[]) AS x(s, r)),
                         e AS (
                             INSERT INTO maos.task_events (ns, task, seq, n, event)
                             SELECT $1, et, es, en, ed
                             FROM unnest($13::text[], $14::bigint[], $15::int[], $16::jsonb[]) AS z(et, es, en, ed)),
                         t AS (
                             INSERT INTO maos.tasks (ns, id, created_seq, seq, status, assigned_to, doc)
                             SELECT $1, i, c, $7, st, a, d
                             FROM unnest($8::text[], $9::bigint[], $10::text[], $11::text[], $12::jsonb[]) AS y(i, c, st, a, d)
                             ON CONFLICT (ns, id) DO UPDATE SET seq = EXCLUDED.seq, status = EXCLUDED.status,
                                 assigned_to = EXCLUDED.assigned_to, doc = EXCLUDED.doc)
                         UPDATE maos.guards SET counter = $7 WHERE ns = $1 AND what = 'tasks'",
                        &[
                            &ns, &seqs, &at, &by, &req, &recs, &cache.seq, &ids, &created, &statuses,
                            &assigned, &docs, &ev_tasks, &ev_seqs, &ev_n, &ev_docs,
                        ],
                    )?;
                    // Wakes `wait_changed` in every process, at commit.
                    t.notify(&notify_channel(ns), "")?;
                    Ok(ops)
                })
            })
            .inspect(|_| cache.dirty = false)
    }

    /// The task `id` as this tracker's cache has it (up to date after its own write).
    fn cached(&self, id: &TaskId) -> Result<Task> {
        lock(&self.cache)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::TaskNotFound {
                task: id.to_string(),
            })
    }

    /// Creates tasks atomically (all or none); they may depend on each other in any order.
    ///
    /// # Errors
    /// [`Error::DuplicateTask`], [`Error::UnknownDependency`], [`Error::Cycle`],
    /// [`Error::Invalid`] for an empty name.
    pub fn create_tasks(&self, tasks: &[Task]) -> Result<Vec<TaskId>> {
        // Order the batch so that dependencies come first; refuse cycles among them.
        let ids: HashSet<&TaskId> = tasks.iter().map(|t| &t.id).collect();
        let mut ordered: Vec<&Task> = Vec::new();
        let mut placed: HashSet<&TaskId> = HashSet::new();
        while ordered.len() < tasks.len() {
            let before = ordered.len();
            for t in tasks {
                if !placed.contains(&t.id)
                    && t.dependencies
                        .iter()
                        .all(|d| !ids.contains(d) || placed.contains(d))
                {
                    placed.insert(&t.id);
                    ordered.push(t);
                }
            }
            if ordered.len() == before {
                let cycle = tasks
                    .iter()
                    .filter(|t| !placed.contains(&t.id))
                    .map(|t| t.id.clone())
                    .collect();
                return Err(Error::Cycle { cycle });
            }
        }
        self.write(None, false, |st, _, _| {
            let mut ops = Vec::new();
            let mut seen = HashSet::new();
            for t in &ordered {
                // The rest (limits, dependencies) is checked as each record is applied.
                if st.get(&t.id).is_some() || !seen.insert(&t.id) {
                    return Err(Error::DuplicateTask { task: t.id.clone() });
                }
                ops.push(Op::Create {
                    task: Box::new((*t).clone()),
                });
            }
            Ok(ops)
        })?;
        Ok(tasks.iter().map(|t| t.id.clone()).collect())
    }

    /// Creates one task.
    pub fn create_task(&self, task: &Task) -> Result<TaskId> {
        Ok(self.create_tasks(std::slice::from_ref(task))?.remove(0))
    }

    /// The task `id`.
    pub fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        self.read(|c| c.get(id).cloned())
    }

    /// Every task, in creation order.
    pub fn list(&self) -> Result<Vec<Task>> {
        self.read(|c| c.tasks.clone())
    }

    /// The sequence number of the latest change.
    pub fn version(&self) -> Result<u64> {
        self.read(|c| u64::try_from(c.seq).unwrap_or(0))
    }

    /// Waits up to `timeout` for the task graph to move past version `seen`, woken by the
    /// writers' notifications (hints: it also looks again every second); returns the
    /// version then.
    pub fn wait_changed(&self, seen: u64, timeout: Duration) -> Result<u64> {
        let hub = self.pg.hub()?;
        let chan = notify_channel(self.pg.inner.ns);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let g = hub.seen();
            let now = self.version()?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if now != seen || left.is_zero() {
                return Ok(now);
            }
            hub.wait(g, left.min(RECHECK), |ch, _| ch == chan);
        }
    }

    /// Applies `update` to `id` in one transaction: the revision and the fencing token are
    /// checked, then the transition and the owner ([`Error::NotAssignee`] for a task
    /// assigned to another agent than the tracker's, unless the update overrides it).
    pub fn update(&self, id: &TaskId, update: &Update) -> Result<Task> {
        let pg = self.pg.clone();
        let force = update.ownership == Ownership::Override;
        self.write(None, force, |st, _, _| {
            let t = st.need(id)?;
            if let Some(expected) = update.expected_revision
                && expected != t.revision
            {
                return Err(Error::RevisionMismatch {
                    task: id.clone(),
                    expected,
                    actual: t.revision,
                });
            }
            if let Some((resource, token)) = &update.fence {
                crate::lock::PgLockTable::new(&pg).check_fencing_token(resource, token.0)?;
            }
            Ok(vec![Op::Status {
                task: id.clone(),
                to: update.status,
                note: update.note.clone(),
            }])
        })?;
        self.cached(id)
    }

    /// Changes the status of `id`.
    pub fn update_status(
        &self,
        id: &TaskId,
        status: TaskStatus,
        note: Option<&str>,
    ) -> Result<Task> {
        let mut u = Update::status(status);
        u.note = note.map(str::to_owned);
        self.update(id, &u)
    }

    /// Marks `id` completed, idempotently (nothing is written for a completed task; a
    /// pending one is started and completed in one transaction).
    /// When the task is assigned to another agent, the completion overrides its ownership
    /// and is recorded as forced (as on the files).
    pub fn complete(&self, id: &TaskId, note: Option<&str>) -> Result<Task> {
        let me = self.agent.clone();
        self.write(None, false, |st, _, force| {
            let t = st.need(id)?;
            if t.assigned_to.is_some() && t.assigned_to != me {
                *force = true;
            }
            let done = Op::Status {
                task: id.clone(),
                to: TaskStatus::Completed,
                note: note.map(str::to_owned),
            };
            match t.status {
                TaskStatus::Completed => Ok(Vec::new()),
                TaskStatus::Pending => Ok(vec![
                    Op::Status {
                        task: id.clone(),
                        to: TaskStatus::InProgress,
                        note: None,
                    },
                    done,
                ]),
                TaskStatus::InProgress | TaskStatus::Review => Ok(vec![done]),
                from => Err(Error::InvalidTransition {
                    task: id.clone(),
                    from,
                    to: TaskStatus::Completed,
                    reason: from
                        .refuse(TaskStatus::Completed)
                        .unwrap_or("not a valid transition")
                        .to_string(),
                }),
            }
        })?;
        self.cached(id)
    }

    /// Sets (`Some`) or clears (`None`) the assignee of `id`: an active task that loses its
    /// assignee goes back to the queue. Nothing is written when the assignee is already the
    /// one asked for.
    ///
    /// # Errors
    /// [`Error::TaskNotFound`]; [`Error::NotAssignee`] when the task is assigned to another
    /// agent than the tracker's and `ownership` respects it.
    pub fn assign(
        &self,
        id: &TaskId,
        agent: Option<&AgentId>,
        ownership: Ownership,
    ) -> Result<Task> {
        self.write(None, ownership == Ownership::Override, |st, _, _| {
            if st.need(id)?.assigned_to.as_ref() == agent {
                return Ok(Vec::new());
            }
            Ok(vec![Op::Assign {
                task: id.clone(),
                agent: agent.cloned(),
            }])
        })?;
        self.cached(id)
    }

    /// Makes `task` also depend on `dependency` (only while it has not started; nothing is
    /// written when it does already).
    ///
    /// # Errors
    /// [`Error::TaskNotFound`], [`Error::UnknownDependency`], [`Error::Cycle`] naming the
    /// cycle the edge would close, [`Error::Invalid`] when `task` started already.
    pub fn add_dependency(&self, task: &TaskId, dependency: &TaskId) -> Result<Task> {
        self.write(None, false, |st, _, _| {
            if st.need(task)?.dependencies.contains(dependency) {
                return Ok(Vec::new());
            }
            Ok(vec![Op::AddDependency {
                task: task.clone(),
                dependency: dependency.clone(),
            }])
        })?;
        self.cached(task)
    }

    /// Makes `task` no longer depend on `dependency`; a blocked task whose last outstanding
    /// dependency this was becomes pending.
    ///
    /// # Errors
    /// [`Error::TaskNotFound`], [`Error::Invalid`] when `task` does not depend on it.
    pub fn remove_dependency(&self, task: &TaskId, dependency: &TaskId) -> Result<Task> {
        self.write(None, false, |_, _, _| {
            Ok(vec![Op::RemoveDependency {
                task: task.clone(),
                dependency: dependency.clone(),
            }])
        })?;
        self.cached(task)
    }

    /// Changes descriptive fields of `id` (anyone may; the history records who).
    ///
    /// # Errors
    /// [`Error::TaskNotFound`], [`Error::Invalid`] (an empty edit, a field over its limit).
    pub fn edit(&self, id: &TaskId, edit: &Edit) -> Result<Task> {
        self.write(None, false, |_, _, _| {
            Ok(vec![Op::Edit {
                task: id.clone(),
                set: edit.clone(),
            }])
        })?;
        self.cached(id)
    }

    /// Applies `amendment` to `id` in one transaction, all or none (what `maos task edit`
    /// does): descriptive fields, then the assignee (subject to `amendment.ownership`), then
    /// the dependencies removed, then those added; the same records as on the files.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty amendment, and the errors of [`edit`](Self::edit),
    /// [`assign`](Self::assign), [`add_dependency`](Self::add_dependency) and
    /// [`remove_dependency`](Self::remove_dependency).
    pub fn amend(&self, id: &TaskId, amendment: &Amendment) -> Result<Task> {
        if amendment.is_empty() {
            return Err(Error::Invalid {
                what: "edit",
                reason: "it changes nothing".into(),
            });
        }
        let force = amendment.ownership == Ownership::Override;
        self.write(None, force, |st, _, _| {
            let t = st.need(id)?;
            let mut ops = Vec::new();
            if !amendment.edit.is_empty() {
                ops.push(Op::Edit {
                    task: id.clone(),
                    set: amendment.edit.clone(),
                });
            }
            if let Some(agent) = &amendment.assignee
                && t.assigned_to != *agent
            {
                ops.push(Op::Assign {
                    task: id.clone(),
                    agent: agent.clone(),
                });
            }
            // The dependencies as they will be when each record applies.
            let mut deps = t.dependencies.clone();
            for d in &amendment.remove_dependencies {
                ops.push(Op::RemoveDependency {
                    task: id.clone(),
                    dependency: d.clone(),
                });
                deps.retain(|x| x != d);
            }
            for d in &amendment.add_dependencies {
                if !deps.contains(d) {
                    ops.push(Op::AddDependency {
                        task: id.clone(),
                        dependency: d.clone(),
                    });
                    deps.push(d.clone());
                }
            }
            Ok(ops)
        })?;
        self.cached(id)
    }

    /// Adds a comment to the history of `id` (anyone may). The task itself (status,
    /// revision) does not change.
    ///
    /// # Errors
    /// [`Error::TaskNotFound`], [`Error::Invalid`] (empty, or over
    /// [`MAX_TEXT_BYTES`](maos_track::MAX_TEXT_BYTES)).
    pub fn comment(&self, id: &TaskId, text: &str) -> Result<()> {
        self.write(None, false, |_, _, _| {
            Ok(vec![Op::Comment {
                task: id.clone(),
                text: text.to_owned(),
            }])
        })?;
        Ok(())
    }

    /// The task `id` with its history: the latest `limit` events, oldest first, and how
    /// many earlier ones are left out. The events are written with the records that cause
    /// them (`maos.task_events`), so this reads one task's rows, never the whole log.
    pub fn show(&self, id: &TaskId, limit: usize) -> Result<Option<TaskDetails>> {
        let Some(task) = self.get(id)? else {
            return Ok(None);
        };
        let ns = self.pg.inner.ns;
        let key = id.to_string();
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.pg.run(|c| {
            c.query(
                "read a task's history",
                "SELECT event, count(*) OVER () FROM maos.task_events
                 WHERE ns = $1 AND task = $2 ORDER BY seq DESC, n DESC LIMIT $3",
                &[&ns, &key, &lim],
            )
        })?;
        let total = rows
            .first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(1)).unwrap_or(0));
        let mut history = rows
            .into_iter()
            .map(|r| {
                serde_json::from_value::<Event>(r.get(0)).map_err(|e| Error::Corrupt {
                    what: format!("history event of task {id}"),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        history.reverse();
        let omitted = total.saturating_sub(history.len() as u64);
        Ok(Some(TaskDetails {
            task,
            history,
            omitted,
        }))
    }

    /// Ready tasks in claim order.
    pub fn ready(&self) -> Result<Vec<Task>> {
        self.read(|c| c.ready().into_iter().map(|i| c.tasks[i].clone()).collect())
    }

    /// Releases the claims of agents the registry reports dead (inside a write).
    fn dead_claims(&self, st: &Cache, t: &mut Tx<'_>) -> Result<Vec<Op>> {
        let owners: Vec<String> = st
            .tasks
            .iter()
            .filter(|t| matches!(t.status, TaskStatus::InProgress | TaskStatus::Review))
            .filter_map(|t| t.assigned_to.as_ref().map(ToString::to_string))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if owners.is_empty() {
            return Ok(Vec::new());
        }
        let dead: HashSet<AgentId> = crate::registry::agents_in(
            t,
            self.pg.inner.ns,
            Some(&owners),
            self.pg.inner.options.dead_grace,
        )?
        .into_iter()
        .filter(|a| a.liveness() == Liveness::Dead)
        .map(|a| a.record.id)
        .collect();
        Ok(st
            .tasks
            .iter()
            .filter(|t| matches!(t.status, TaskStatus::InProgress | TaskStatus::Review))
            .filter(|t| t.assigned_to.as_ref().is_some_and(|a| dead.contains(a)))
            .map(|t| Op::Release {
                task: t.id.clone(),
                reason: format!(
                    "released: agent {} is dead",
                    t.assigned_to
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            })
            .collect())
    }

    /// Atomically assigns the best ready task (unassigned or assigned to `agent`) to
    /// `agent` and starts it; claims of dead agents are released first. `None` when nothing
    /// is ready.
    pub fn claim(&self, agent: &AgentId) -> Result<Option<Task>> {
        let release = self.release_dead_claims;
        let ops = self.write(Some(agent), false, |st, t, _| {
            let mut ops = if release {
                self.dead_claims(st, t)?
            } else {
                Vec::new()
            };
            let released: HashSet<TaskId> = ops
                .iter()
                .filter_map(|o| match o {
                    Op::Release { task, .. } => Some(task.clone()),
                    _ => None,
                })
                .collect();
            let mut order = st.ready();
            // Tasks released by this write are claimable too (when their dependencies are done).
            for (i, t) in st.tasks.iter().enumerate() {
                if released.contains(&t.id) && st.deps_done(t) {
                    order.insert(0, i);
                }
            }
            if let Some(i) = order.into_iter().find(|&i| {
                st.tasks[i]
                    .assigned_to
                    .as_ref()
                    .is_none_or(|a| a == agent || released.contains(&st.tasks[i].id))
            }) {
                ops.push(Op::Claim {
                    task: st.tasks[i].id.clone(),
                    agent: agent.clone(),
                });
            }
            Ok(ops)
        })?;
        let claimed = ops.iter().rev().find_map(|o| match o {
            Op::Claim { task, agent: a } if a == agent => Some(task.clone()),
            _ => None,
        });
        match claimed {
            Some(id) => self.cached(&id).map(Some),
            None => Ok(None),
        }
    }

    /// Releases every active claim of agents the registry reports dead.
    pub fn release_dead_claims(&self) -> Result<Vec<TaskId>> {
        let ops = self.write(None, false, |st, t, _| self.dead_claims(st, t))?;
        Ok(released(&ops))
    }

    /// Releases every active task assigned to `agent` (what unregistering does).
    pub fn release_agent(&self, agent: &AgentId, reason: &str) -> Result<Vec<TaskId>> {
        let ops = self.write(None, false, |st, _, _| {
            Ok(st
                .tasks
                .iter()
                .filter(|t| matches!(t.status, TaskStatus::InProgress | TaskStatus::Review))
                .filter(|t| t.assigned_to.as_ref() == Some(agent))
                .map(|t| Op::Release {
                    task: t.id.clone(),
                    reason: reason.to_string(),
                })
                .collect())
        })?;
        Ok(released(&ops))
    }

    /// The critical path and its estimated duration.
    pub fn critical_path(&self) -> Result<(Vec<Task>, Duration)> {
        let tasks = self.list()?;
        let (ids, total) = maos_track::critical_path_of(&tasks);
        let by: HashMap<&TaskId, &Task> = tasks.iter().map(|t| (&t.id, t)).collect();
        Ok((
            ids.iter()
                .filter_map(|i| by.get(i).map(|t| (*t).clone()))
                .collect(),
            total,
        ))
    }

    /// The progress report (maos-track's renderer, on the server's clock).
    pub fn report(&self) -> Result<maos_track::ProgressReport> {
        let now = self.pg.server_now_ms()?;
        Ok(maos_track::report(&self.list()?, now))
    }

    /// The Mermaid Gantt chart (maos-track's renderer).
    pub fn gantt(&self) -> Result<String> {
        let now = self.pg.server_now_ms()?;
        Ok(maos_track::gantt(&self.list()?, now))
    }

    /// The records of the task log after `seq` (at most 10,000), with their sequence
    /// numbers: the history every machine sees in the same order.
    pub fn log_after(&self, seq: u64) -> Result<Vec<(u64, Op)>> {
        let ns = self.pg.inner.ns;
        let after = i64::try_from(seq).unwrap_or(i64::MAX);
        let rows = self.pg.run(|c| {
            c.query(
                "read the task log",
                "SELECT seq, record FROM maos.task_log WHERE ns = $1 AND seq > $2 ORDER BY seq LIMIT 10000",
                &[&ns, &after],
            )
        })?;
        rows.into_iter()
            .map(|r| {
                let op = serde_json::from_value(r.get(1)).map_err(|e| Error::Corrupt {
                    what: "task log record".into(),
                    reason: e.to_string(),
                })?;
                Ok((u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), op))
            })
            .collect()
    }
}

fn released(ops: &[Op]) -> Vec<TaskId> {
    ops.iter()
        .filter_map(|o| match o {
            Op::Release { task, .. } => Some(task.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::PgRegistry;
    use crate::server::test_backend;
    use maos_core::{Priority, Registration};

    fn a(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    #[test]
    fn dependencies_claims_revisions_and_the_report() {
        let pg = test_backend("track-basic").unwrap();
        let tr = PgTracker::new(&pg).agent(a("lead"));
        let design = Task::new("design").estimate(Duration::from_secs(1800));
        let backend = Task::new("backend").after(design.id.clone());
        let docs = Task::new("docs").priority(Priority::Low);
        // Given in any order: dependencies are created first.
        tr.create_tasks(&[backend.clone(), design.clone(), docs.clone()])
            .unwrap();
        assert_eq!(
            tr.get(&backend.id).unwrap().unwrap().status,
            TaskStatus::Blocked
        );
        let err = tr
            .create_task(&Task::new("x").after(TaskId::new()))
            .unwrap_err();
        assert!(matches!(err, Error::UnknownDependency { .. }), "{err}");
        let err = tr.create_task(&design).unwrap_err();
        assert!(matches!(err, Error::DuplicateTask { .. }), "{err}");
        // Claim order: the design starts the longest chain, docs is low priority.
        let first = tr.claim(&a("w1")).unwrap().unwrap();
        assert_eq!(first.id, design.id);
        assert_eq!(first.status, TaskStatus::InProgress);
        assert_eq!(first.assigned_to, Some(a("w1")));
        // The lead moves w1's task only by overriding its owner, as on the files.
        let err = tr
            .update(&design.id, &Update::status(TaskStatus::Completed))
            .unwrap_err();
        assert!(matches!(err, Error::NotAssignee { .. }), "{err}");
        let err = tr
            .update(
                &design.id,
                &Update::status(TaskStatus::Completed)
                    .expect_revision(1)
                    .force(),
            )
            .unwrap_err();
        assert!(matches!(err, Error::RevisionMismatch { .. }), "{err}");
        tr.update(
            &design.id,
            &Update::status(TaskStatus::Completed)
                .expect_revision(first.revision)
                .note("done")
                .force(),
        )
        .unwrap();
        let b = tr.get(&backend.id).unwrap().unwrap();
        assert_eq!(b.status, TaskStatus::Pending);
        let err = tr
            .update(&design.id, &Update::status(TaskStatus::InProgress).force())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTransition { .. }), "{err}");
        // Idempotent completion.
        tr.complete(&design.id, None).unwrap();
        tr.complete(&docs.id, Some("skipped")).unwrap();
        let err = tr.add_dependency(&design.id, &backend.id).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        let report = tr.report().unwrap();
        assert_eq!(report.total_tasks, 3);
        assert_eq!(report.completed_tasks, 2);
        assert!(tr.gantt().unwrap().contains("gantt"));
        let (path, _) = tr.critical_path().unwrap();
        assert_eq!(path.first().map(|t| t.id.clone()), Some(design.id.clone()));
        // Another tracker (another machine) sees the same graph and history.
        let other = PgTracker::new(&pg);
        assert_eq!(other.list().unwrap(), tr.list().unwrap());
        assert_eq!(
            other.log_after(0).unwrap().len() as u64,
            other.version().unwrap()
        );
    }

    #[test]
    fn amendments_ownership_comments_and_a_paged_history() {
        let pg = test_backend("track-amend").unwrap();
        let tr = PgTracker::new(&pg).agent(a("lead"));
        let x = Task::new("x");
        let y = Task::new("y").after(x.id.clone());
        tr.create_tasks(&[x.clone(), y.clone()]).unwrap();
        // A cycle through an added dependency is refused, naming it; nothing is written.
        let v = tr.version().unwrap();
        let mut am = Amendment::new();
        am.edit = Edit::new().name("renamed");
        am.add_dependencies = vec![y.id.clone()];
        let err = tr.amend(&x.id, &am).unwrap_err();
        assert!(
            matches!(&err, Error::Cycle { cycle } if *cycle == [x.id.clone(), y.id.clone(), x.id.clone()]),
            "{err}"
        );
        assert_eq!(tr.version().unwrap(), v);
        assert_eq!(tr.get(&x.id).unwrap().unwrap().name, "x");
        let err = tr.amend(&x.id, &Amendment::new()).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        // Removing the only dependency unblocks; a field over its limit is refused.
        let mut am = Amendment::new();
        am.remove_dependencies = vec![x.id.clone()];
        am.edit = Edit::new().priority(maos_core::Priority::High);
        let t = tr.amend(&y.id, &am).unwrap();
        assert_eq!(t.status, TaskStatus::Pending);
        assert_eq!(t.revision, 3, "one revision per record");
        let long = "n".repeat(maos_track::MAX_NAME_BYTES + 1);
        let err = tr.edit(&y.id, &Edit::new().name(long)).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        // Ownership: another agent's task moves only when forced, and the history says so.
        tr.assign(&x.id, Some(&a("w")), Ownership::Respect).unwrap();
        let err = tr.assign(&x.id, None, Ownership::Respect).unwrap_err();
        assert!(matches!(err, Error::NotAssignee { .. }), "{err}");
        let t = tr.assign(&x.id, None, Ownership::Override).unwrap();
        assert_eq!(t.assigned_to, None);
        let d = tr.show(&x.id, 100).unwrap().unwrap();
        let last = d.history.last().unwrap();
        assert!(last.forced, "{last:?}");
        assert_eq!(last.by, Some(a("lead")));
        // Cancelling (refused before) tells a blocked dependent why.
        let z = Task::new("z").after(x.id.clone());
        tr.create_task(&z).unwrap();
        tr.update(
            &x.id,
            &Update::status(TaskStatus::Cancelled).note("dropped"),
        )
        .unwrap();
        assert_eq!(
            tr.get(&z.id).unwrap().unwrap().blocked_reason.as_deref(),
            Some(format!("dependency {} was cancelled: dropped", x.id).as_str())
        );
        // Comments change no revision; a history longer than the limit is paged: the
        // latest events, and how many earlier ones are left out.
        let rev = tr.get(&y.id).unwrap().unwrap().revision;
        for i in 0..15 {
            tr.comment(&y.id, &format!("c{i}")).unwrap();
        }
        let err = tr.comment(&y.id, " ").unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        assert_eq!(tr.get(&y.id).unwrap().unwrap().revision, rev);
        let d = tr.show(&y.id, 10).unwrap().unwrap();
        assert_eq!(d.history.len(), 10);
        // created, dependency removed, edited, 15 comments: 18 events.
        assert_eq!(d.omitted, 8);
        assert_eq!(
            d.history.first().map(|e| e.what.clone()),
            Some(EventKind::Comment { text: "c5".into() })
        );
        assert_eq!(
            d.history.last().map(|e| e.what.clone()),
            Some(EventKind::Comment { text: "c14".into() })
        );
        let full = tr.show(&y.id, 1000).unwrap().unwrap();
        assert_eq!((full.history.len(), full.omitted), (18, 0));
        assert!(full.history.windows(2).all(|w| w[0].seq <= w[1].seq));
        // Another machine reads the same history.
        assert_eq!(
            PgTracker::new(&pg).show(&y.id, 1000).unwrap().unwrap(),
            full
        );
    }

    #[test]
    fn a_waiter_wakes_on_another_connections_write_and_times_out_without_one() {
        let pg = test_backend("track-wait").unwrap();
        let tr = PgTracker::new(&pg).agent(a("lead"));
        let seen = tr.version().unwrap();
        // Nothing written: the wait ends at its timeout with the same version.
        assert_eq!(
            tr.wait_changed(seen, Duration::from_millis(50)).unwrap(),
            seen
        );
        // Written by another process's connection: the wait returns the new version.
        let other =
            PgTracker::new(&Pg::connect(&pg.inner.url, pg.namespace()).unwrap()).agent(a("other"));
        let waiter = {
            let tr = tr.clone();
            std::thread::spawn(move || tr.wait_changed(seen, Duration::from_secs(60)))
        };
        let hub = pg.hub().unwrap();
        let before = hub.seen();
        other.create_tasks(&[Task::new("news")]).unwrap();
        let now = waiter.join().unwrap().unwrap();
        assert!(now > seen, "{now} after {seen}");
        // It was the write's notification (not the re-check) that reached this process.
        let chan = notify_channel(pg.inner.ns);
        assert!(hub.wait(before, Duration::from_secs(60), |ch, _| ch == chan));
    }

    #[test]
    fn concurrent_claims_never_hand_a_task_out_twice() {
        let pg = test_backend("track-claims").unwrap();
        let tr = PgTracker::new(&pg).agent(a("lead"));
        let tasks: Vec<Task> = (0..40).map(|n| Task::new(format!("t{n}"))).collect();
        tr.create_tasks(&tasks).unwrap();
        let threads: Vec<_> = (0..6)
            .map(|w| {
                let tr = PgTracker::new(&pg);
                std::thread::spawn(move || {
                    let me = a(&format!("w{w}"));
                    let mut got = Vec::new();
                    while let Some(t) = tr.claim(&me).unwrap() {
                        got.push(t.id);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<TaskId> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(all.len(), 40);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 40, "a task was claimed twice");
    }

    #[test]
    fn a_dead_agents_claims_are_released_to_the_next_claim() {
        let url = crate::BackendUrl::parse(&crate::server::shared_url().unwrap()).unwrap();
        let ns = crate::server::unique_namespace("track-dead");
        let pg = Pg::connect_with(
            &url,
            &ns,
            crate::Options::default().dead_grace(Duration::ZERO),
        )
        .unwrap();
        let tr = PgTracker::new(&pg);
        let t = Task::new("only");
        tr.create_task(&t).unwrap();
        {
            let worker = Pg::connect(&url, &ns).unwrap();
            PgRegistry::new(&worker)
                .register(Registration::new(a("gone")))
                .unwrap();
            let mine = PgTracker::new(&worker).claim(&a("gone")).unwrap().unwrap();
            assert_eq!(mine.id, t.id);
            assert!(tr.claim(&a("next")).unwrap().is_none());
        }
        let reg = PgRegistry::new(&pg);
        crate::server::wait_until(Duration::from_secs(30), || {
            reg.liveness_of(&a("gone")).unwrap() == Some(Liveness::Dead)
        });
        let again = tr.claim(&a("next")).unwrap().unwrap();
        assert_eq!(again.id, t.id);
        assert_eq!(again.assigned_to, Some(a("next")));
        assert_eq!(again.attempts, 2);
    }
}
