//! Writes: creating tasks, status changes, ownership, edits, comments, dependencies.

use std::collections::{HashMap, HashSet};

use maos_core::{AgentId, ResourceName, TaskId};

use super::TaskTracker;
use crate::fence::FencingToken;
use crate::store::Tx;
use crate::store::record::Op;
use crate::{Edit, Error, Task, TaskStatus};

/// Whether an agent may act on a task assigned to another agent.
///
/// A task assigned to an agent is that agent's: only it changes the task's status, gives
/// it up or hands it over. Anyone else needs [`Ownership::Override`] (`--force`), and the
/// log records who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    /// Refuse ([`Error::NotAssignee`]) when the task is assigned to another agent.
    #[default]
    Respect,
    /// Act anyway; recorded as forced.
    Override,
}

impl Ownership {
    fn forced(self) -> bool {
        self == Ownership::Override
    }
}

/// A status change with optional preconditions: a revision (compare-and-swap), a fencing
/// token from maos-lock, and whether to override another agent's ownership.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Update {
    /// The new status.
    pub status: TaskStatus,
    /// A note: the result on completion, the reason on failure or cancellation.
    pub note: Option<String>,
    /// Refuse unless the task is still at this revision.
    pub expected_revision: Option<u64>,
    /// Refuse unless this token is the current one of the lock on `resource`.
    pub fence: Option<(ResourceName, FencingToken)>,
    /// Act on a task assigned to another agent.
    pub ownership: Ownership,
}

impl Update {
    /// A change to `status`.
    pub fn status(status: TaskStatus) -> Self {
        Self {
            status,
            note: None,
            expected_revision: None,
            fence: None,
            ownership: Ownership::Respect,
        }
    }

    /// Adds a note.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Applies only if the task is still at `revision`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn expect_revision(mut self, revision: u64) -> Self {
        self.expected_revision = Some(revision);
        self
    }

    /// Applies only if `token` is still current for the lock on `resource`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn fenced(mut self, resource: ResourceName, token: FencingToken) -> Self {
        self.fence = Some((resource, token));
        self
    }

    /// Acts even when the task is assigned to another agent (recorded as forced).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn force(mut self) -> Self {
        self.ownership = Ownership::Override;
        self
    }
}

/// Several changes to one task, made in one write (all or none): what `maos task edit`
/// does. Descriptive fields first, then the assignee, then dependencies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Amendment {
    /// Descriptive fields (anyone may change them).
    pub edit: Edit,
    /// A new assignee (`Some(None)`: unassign), subject to `ownership`.
    pub assignee: Option<Option<AgentId>>,
    /// Dependencies to add.
    pub add_dependencies: Vec<TaskId>,
    /// Dependencies to remove.
    pub remove_dependencies: Vec<TaskId>,
    /// Act on a task assigned to another agent.
    pub ownership: Ownership,
}

impl Amendment {
    /// No change.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.edit.is_empty()
            && self.assignee.is_none()
            && self.add_dependencies.is_empty()
            && self.remove_dependencies.is_empty()
    }
}

fn need(tx: &mut Tx<'_>, id: &TaskId) -> Result<u32, Error> {
    tx.graph.lookup(id)?.ok_or_else(|| Error::NotFound {
        task: id.to_string(),
    })
}

impl TaskTracker {
    /// Creates a task (blocking). Its status is Blocked if a dependency is not completed,
    /// else Pending; timestamps and revision are set by the tracker.
    ///
    /// # Errors
    /// [`Error::UnknownDependency`], [`Error::DuplicateId`], [`Error::Cycle`] (a task
    /// depending on itself), [`Error::Invalid`] for an empty name or a field over its limit.
    pub fn create_task_blocking(&self, task: &Task) -> Result<TaskId, Error> {
        let mut ids = self.create_tasks_blocking(std::slice::from_ref(task))?;
        ids.pop().ok_or_else(|| Error::Invalid {
            what: "task",
            reason: "nothing created".into(),
        })
    }

    /// Creates several tasks atomically (all or none); they may depend on each other in any
    /// order. Returns their ids in the order given.
    ///
    /// # Errors
    /// As [`create_task_blocking`](Self::create_task_blocking); a cycle among the new tasks is
    /// [`Error::Cycle`] naming it.
    pub fn create_tasks_blocking(&self, tasks: &[Task]) -> Result<Vec<TaskId>, Error> {
        let _span = tracing::info_span!("create_tasks", count = tasks.len()).entered();
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id.clone()).collect();
        self.write(None, false, |tx| create_in(tx, tasks))?;
        Ok(ids)
    }

    /// Changes the status of `id` (blocking) as this handle's agent.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidTransition`] (a completed task is final, a blocked
    /// task cannot start, ...), [`Error::NotAssignee`] (the task is another agent's).
    pub fn update_status_blocking(
        &self,
        id: &TaskId,
        status: TaskStatus,
        note: Option<&str>,
    ) -> Result<Task, Error> {
        let mut u = Update::status(status);
        u.note = note.map(str::to_owned);
        self.update_blocking(id, &u)
    }

    /// Applies `update` to `id` (blocking): checks the revision, the fencing token, the
    /// transition and the ownership, all under the tracker lock.
    ///
    /// # Errors
    /// As [`update_status_blocking`](Self::update_status_blocking), plus
    /// [`Error::RevisionMismatch`] and [`Error::StaleToken`].
    pub fn update_blocking(&self, id: &TaskId, update: &Update) -> Result<Task, Error> {
        let _span = tracing::info_span!("update_status", task = %id, to = %update.status).entered();
        let ws = self.workspace().clone();
        self.write(None, update.ownership.forced(), |tx| {
            let ord = need(tx, id)?;
            let t = tx.graph.task(ord)?;
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
                crate::fence::check(&ws, id, resource, *token)?;
            }
            tx.push(Op::Status {
                task: id.clone(),
                to: update.status,
                note: update.note.clone(),
            })?;
            tx.graph.task(ord)
        })
    }

    /// Marks `id` completed, idempotently (blocking): the decision is taken under the tracker
    /// lock on the current status, so it cannot race with another process.
    ///
    /// - completed already: nothing is written; the task is returned as it is (the first
    ///   completion's note and time stay);
    /// - pending: started and completed in one atomic append;
    /// - in progress or in review (whoever works on it): completed.
    ///
    /// This is the call for "this work is done" when someone else may have finished it first
    /// (the merge queue completes merge tasks after merging; the agent that claimed one may
    /// complete it too): neither side gets an error for the other's completion. When the
    /// task is assigned to another agent, the completion overrides its ownership and is
    /// recorded as forced. [`update_status_blocking`](Self::update_status_blocking) stays
    /// strict and refuses completed -> completed.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidTransition`] for a blocked task (its dependencies
    /// are not done), a failed or a cancelled one (it must be reopened first).
    pub fn complete_blocking(&self, id: &TaskId, note: Option<&str>) -> Result<Task, Error> {
        let _span = tracing::info_span!("complete", task = %id).entered();
        let me = self.agent().cloned();
        self.write(None, false, |tx| {
            let ord = need(tx, id)?;
            let t = tx.graph.task(ord)?;
            if t.assigned_to.is_some() && t.assigned_to != me {
                tx.set_force(true);
            }
            let status = |to| Op::Status {
                task: id.clone(),
                to,
                note: note.map(str::to_owned),
            };
            match t.status {
                TaskStatus::Completed => return Ok(t),
                TaskStatus::Pending => {
                    tx.push(Op::Status {
                        task: id.clone(),
                        to: TaskStatus::InProgress,
                        note: None,
                    })?;
                    tx.push(status(TaskStatus::Completed))?;
                }
                TaskStatus::InProgress | TaskStatus::Review => {
                    tx.push(status(TaskStatus::Completed))?;
                }
                from => {
                    return Err(Error::InvalidTransition {
                        task: id.clone(),
                        from,
                        to: TaskStatus::Completed,
                        reason: from
                            .refuse(TaskStatus::Completed)
                            .unwrap_or("not a valid transition")
                            .to_string(),
                    });
                }
            }
            tx.graph.task(ord)
        })
    }

    /// Cancels `id`: work on it is given up on purpose. Its dependents stay blocked, told why
    /// (their `blocked_reason` names it); a reset reopens it.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidTransition`] (completed, or cancelled already),
    /// [`Error::NotAssignee`].
    pub fn cancel_blocking(
        &self,
        id: &TaskId,
        note: Option<&str>,
        ownership: Ownership,
    ) -> Result<Task, Error> {
        let mut u = Update::status(TaskStatus::Cancelled);
        u.note = note.map(str::to_owned);
        u.ownership = ownership;
        self.update_blocking(id, &u)
    }

    /// Sets (`Some`) or clears (`None`) the assignee of `id`. An active task that loses its
    /// assignee goes back to the queue; one handed to another agent stays active. Nothing is
    /// written when the assignee is already the one asked for.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::NotAssignee`] when the task is assigned to an agent
    /// other than this handle's and `ownership` is [`Ownership::Respect`].
    pub fn assign_blocking(
        &self,
        id: &TaskId,
        agent: Option<&AgentId>,
        ownership: Ownership,
    ) -> Result<Task, Error> {
        self.write(None, ownership.forced(), |tx| {
            let ord = need(tx, id)?;
            let t = tx.graph.task(ord)?;
            if t.assigned_to.as_ref() == agent {
                return Ok(t);
            }
            tx.push(Op::Assign {
                task: id.clone(),
                agent: agent.cloned(),
            })?;
            tx.graph.task(ord)
        })
    }

    /// Changes descriptive fields of `id` (anyone may; the history records who).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Invalid`] (an empty edit, a field over its limit).
    pub fn edit_blocking(&self, id: &TaskId, edit: &Edit) -> Result<Task, Error> {
        self.write(None, false, |tx| {
            let ord = need(tx, id)?;
            tx.push(Op::Edit {
                task: id.clone(),
                set: edit.clone(),
            })?;
            tx.graph.task(ord)
        })
    }

    /// Applies `amendment` to `id` in one write (all or none).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty amendment, and the errors of
    /// [`edit_blocking`](Self::edit_blocking), [`assign_blocking`](Self::assign_blocking),
    /// [`add_dependency_blocking`](Self::add_dependency_blocking) and
    /// [`remove_dependency_blocking`](Self::remove_dependency_blocking).
    pub fn amend_blocking(&self, id: &TaskId, amendment: &Amendment) -> Result<Task, Error> {
        if amendment.is_empty() {
            return Err(Error::Invalid {
                what: "edit",
                reason: "it changes nothing".into(),
            });
        }
        self.write(None, amendment.ownership.forced(), |tx| {
            let ord = need(tx, id)?;
            if !amendment.edit.is_empty() {
                tx.push(Op::Edit {
                    task: id.clone(),
                    set: amendment.edit.clone(),
                })?;
            }
            if let Some(agent) = &amendment.assignee
                && tx.graph.task(ord)?.assigned_to != *agent
            {
                tx.push(Op::Assign {
                    task: id.clone(),
                    agent: agent.clone(),
                })?;
            }
            for d in &amendment.remove_dependencies {
                tx.push(Op::RemoveDependency {
                    task: id.clone(),
                    dependency: d.clone(),
                })?;
            }
            for d in &amendment.add_dependencies {
                if !tx.graph.task(ord)?.dependencies.contains(d) {
                    tx.push(Op::AddDependency {
                        task: id.clone(),
                        dependency: d.clone(),
                    })?;
                }
            }
            tx.graph.task(ord)
        })
    }

    /// Adds a comment to the history of `id` (anyone may). The task itself (status,
    /// revision) does not change.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Invalid`] (empty, or over [`MAX_TEXT_BYTES`](crate::MAX_TEXT_BYTES)).
    pub fn comment_blocking(&self, id: &TaskId, text: &str) -> Result<(), Error> {
        self.write(None, false, |tx| {
            need(tx, id)?;
            tx.push(Op::Comment {
                task: id.clone(),
                text: text.to_owned(),
            })
        })
    }

    /// Makes `task` also depend on `dependency` (only while `task` has not started).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::UnknownDependency`], [`Error::Cycle`] naming the cycle
    /// the edge would close, [`Error::Invalid`] when `task` already started.
    pub fn add_dependency_blocking(
        &self,
        task: &TaskId,
        dependency: &TaskId,
    ) -> Result<Task, Error> {
        self.write(None, false, |tx| {
            let ord = need(tx, task)?;
            if tx.graph.task(ord)?.dependencies.contains(dependency) {
                return tx.graph.task(ord);
            }
            tx.push(Op::AddDependency {
                task: task.clone(),
                dependency: dependency.clone(),
            })?;
            tx.graph.task(ord)
        })
    }

    /// Makes `task` no longer depend on `dependency`; a blocked task whose last outstanding
    /// dependency this was becomes pending.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Invalid`] when `task` does not depend on `dependency`.
    pub fn remove_dependency_blocking(
        &self,
        task: &TaskId,
        dependency: &TaskId,
    ) -> Result<Task, Error> {
        self.write(None, false, |tx| {
            let ord = need(tx, task)?;
            tx.push(Op::RemoveDependency {
                task: task.clone(),
                dependency: dependency.clone(),
            })?;
            tx.graph.task(ord)
        })
    }
}

/// Pushes the `create` records of `tasks` (dependencies first).
fn create_in(tx: &mut Tx<'_>, tasks: &[Task]) -> Result<(), Error> {
    let mut local: HashMap<&TaskId, usize> = HashMap::with_capacity(tasks.len());
    for (k, t) in tasks.iter().enumerate() {
        t.check()?;
        if local.insert(&t.id, k).is_some() || tx.graph.lookup(&t.id)?.is_some() {
            return Err(Error::DuplicateId { task: t.id.clone() });
        }
    }
    let mut deps = vec![Vec::new(); tasks.len()];
    let mut dependents = vec![Vec::new(); tasks.len()];
    for (k, t) in tasks.iter().enumerate() {
        for d in &t.dependencies {
            if let Some(&j) = local.get(d) {
                deps[k].push(j as u32);
                dependents[j].push(k as u32);
            } else if tx.graph.lookup(d)?.is_none() {
                return Err(Error::UnknownDependency {
                    task: t.id.clone(),
                    dependency: d.clone(),
                });
            }
        }
    }
    let order = match crate::graph::topo_order(&deps, &dependents) {
        Ok(o) => o,
        Err(()) => {
            let cyc = crate::graph::find_cycle(&deps).unwrap_or_default();
            return Err(Error::Cycle {
                cycle: cyc
                    .into_iter()
                    .map(|k| tasks[k as usize].id.clone())
                    .collect(),
            });
        }
    };
    for k in order {
        let mut t = tasks[k as usize].clone();
        let mut seen = HashSet::new();
        t.dependencies.retain(|d| seen.insert(d.clone()));
        t.status = TaskStatus::Pending;
        t.revision = 0;
        t.created_at = 0;
        t.updated_at = 0;
        t.started_at = None;
        t.completed_at = None;
        t.attempts = 0;
        t.blocked_reason = None;
        tx.push(Op::Create { task: Box::new(t) })?;
    }
    Ok(())
}
