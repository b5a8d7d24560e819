//! The task graph as a writer's cache holds it: caught up from the server, and the rules a
//! record must pass before it is written (the file store's, record by record).

use std::collections::{HashMap, HashSet};

use maos_core::{AgentId, TaskId};
use maos_track::{Event, EventKind, Task, TaskStatus};

use super::Op;
use crate::{Error, Result};

#[derive(Default)]
pub(super) struct Cache {
    pub(super) seq: i64,
    pub(super) tasks: Vec<Task>,
    pub(super) created: Vec<i64>,
    pub(super) index: HashMap<TaskId, usize>,
    pub(super) dependents: HashMap<TaskId, Vec<TaskId>>,
    pub(super) dirty: bool,
}

impl Cache {
    pub(super) fn get(&self, id: &TaskId) -> Option<&Task> {
        self.index.get(id).map(|&i| &self.tasks[i])
    }

    pub(super) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        match self.index.get(id) {
            Some(&i) => Some(&mut self.tasks[i]),
            None => None,
        }
    }

    pub(super) fn rebuild_dependents(&mut self) {
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
    pub(super) fn merge(&mut self, rows: Vec<(Task, i64)>, seq: i64) {
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

    pub(super) fn deps_done(&self, t: &Task) -> bool {
        t.dependencies.iter().all(|d| {
            self.get(d)
                .is_some_and(|d| d.status == TaskStatus::Completed)
        })
    }

    pub(super) fn need(&self, id: &TaskId) -> Result<&Task> {
        self.get(id).ok_or_else(|| Error::TaskNotFound {
            task: id.to_string(),
        })
    }

    /// Only the assignee acts on an assigned task, unless forced (as on the files).
    pub(super) fn permit(&self, id: &TaskId, ctx: &Ctx<'_>) -> Result<()> {
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
    pub(super) fn apply(
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

    pub(super) fn create(
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
    pub(super) fn set_status(
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

    pub(super) fn add_dependency(
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

    pub(super) fn remove_dependency(
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
    pub(super) fn chains(&self) -> Vec<u64> {
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
    pub(super) fn ready(&self) -> Vec<usize> {
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
    pub(super) fn depends_on(&self, from: &TaskId, to: &TaskId) -> Option<Vec<TaskId>> {
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

pub(super) fn weight(t: &Task) -> u64 {
    u64::try_from(
        t.estimated_duration
            .unwrap_or(maos_track::DEFAULT_ESTIMATE)
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

pub(super) fn gave_up_prefix(id: &TaskId) -> String {
    format!("dependency {id} ")
}

/// The reason a given-up (failed or cancelled) task gives its blocked dependents, worded
/// as on the files.
pub(super) fn gave_up_reason(t: &Task) -> String {
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
pub(super) fn invalid(e: maos_track::Error) -> Error {
    match e {
        maos_track::Error::Invalid { what, reason } => Error::Invalid { what, reason },
        other => Error::Invalid {
            what: "task",
            reason: other.to_string(),
        },
    }
}

/// Who caused a record, and when: what its history events carry.
pub(super) struct Ctx<'a> {
    pub(super) seq: u64,
    pub(super) at: u64,
    pub(super) by: Option<&'a AgentId>,
    pub(super) force: bool,
}

impl Ctx<'_> {
    pub(super) fn event(&self, task: &TaskId, what: EventKind) -> (TaskId, Event) {
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
