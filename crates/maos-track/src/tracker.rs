//! [`TaskTracker`]: the shared task graph, read and written by every process of a workspace.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use maos_core::{AgentId, AgentRegistry, Liveness, ResourceName, TaskId, Workspace, fsx};

use crate::graph::{self, weight_ms};
use crate::store::{self, Change, Op, State};
use crate::{Error, Task, TaskStatus, asyncify};

/// Settings of a [`TaskTracker`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The agent recorded as the author of changes (`by` in the log); defaults to
    /// `MAOS_AGENT_ID` or the default agent.
    pub agent: Option<AgentId>,
    /// Publish status changes on the `tasks` broadcast topic (default true).
    pub publish: bool,
    /// Release claims of agents the registry reports dead (no live anchor, and their session
    /// ended or their lease ran out) before each claim (default true).
    pub release_dead_claims: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            agent: AgentId::current().ok(),
            publish: true,
            release_dead_claims: true,
        }
    }
}

impl Options {
    /// Sets the acting agent.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn agent(mut self, agent: AgentId) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Turns publishing on the `tasks` topic on or off.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn publish(mut self, on: bool) -> Self {
        self.publish = on;
        self
    }

    /// Turns the release of dead agents' claims on or off.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn release_dead_claims(mut self, on: bool) -> Self {
        self.release_dead_claims = on;
        self
    }
}

/// A status change with optional preconditions: a revision (compare-and-swap) and a fencing
/// token from maos-lock.
#[derive(Debug, Clone)]
pub struct Update {
    /// The new status.
    pub status: TaskStatus,
    /// A note: the result on completion, the reason on failure.
    pub note: Option<String>,
    /// Refuse unless the task is still at this revision.
    pub expected_revision: Option<u64>,
    /// Refuse unless this token is the current one of the lock on `resource`.
    pub fence: Option<(ResourceName, crate::fence::FencingToken)>,
}

impl Update {
    /// A change to `status`.
    pub fn status(status: TaskStatus) -> Self {
        Self {
            status,
            note: None,
            expected_revision: None,
            fence: None,
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
    pub fn fenced(mut self, resource: ResourceName, token: crate::fence::FencingToken) -> Self {
        self.fence = Some((resource, token));
        self
    }
}

/// The shared task graph of a workspace (`.maos/tasks/`). Cheap to clone; every clone and
/// every process sees the same tasks.
///
/// Reads load a snapshot once and then only the log's new records; writes happen under a
/// tracker-wide kernel lock after catching up with the log, so no update is lost and a claim
/// never hands the same task out twice.
#[derive(Clone)]
pub struct TaskTracker {
    inner: Arc<Inner>,
}

struct Inner {
    ws: Workspace,
    dir: PathBuf,
    lock_file: File,
    state: Mutex<State>,
    options: Options,
    publisher: std::sync::OnceLock<maos_comm::BroadcastChannel>,
}

impl std::fmt::Debug for TaskTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTracker")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Holds the tracker-wide kernel lock; released on drop (also by the kernel if the process
/// dies).
struct KernelLock<'a>(&'a File);

impl<'a> KernelLock<'a> {
    fn take(f: &'a File, path: &Path) -> Result<Self, Error> {
        f.lock().map_err(|e| Error::io("lock", path, e))?;
        Ok(Self(f))
    }
}

impl Drop for KernelLock<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl TaskTracker {
    /// Opens the task store of `ws` with default [`Options`].
    pub fn open(ws: &Workspace) -> Result<Self, Error> {
        Self::open_with(ws, Options::default())
    }

    /// Opens the task store of `ws`.
    pub fn open_with(ws: &Workspace, options: Options) -> Result<Self, Error> {
        let dir = ws.tasks_dir();
        fsx::create_dir_private(&dir)?;
        let lock_file = fsx::open_lock_file(&store::lock_path(&dir))?;
        Ok(Self {
            inner: Arc::new(Inner {
                ws: ws.clone(),
                dir,
                lock_file,
                state: Mutex::new(State::default()),
                options,
                publisher: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.inner.ws
    }

    /// `.maos/tasks/`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn state(&self) -> MutexGuard<'_, State> {
        match self.inner.state.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                // A panic mid-update may have left the cache half-applied: reload it.
                let mut g = poisoned.into_inner();
                *g = State::default();
                g
            }
        }
    }

    /// Runs `f` on an up-to-date state (no kernel lock: the store is readable while written).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&mut State) -> R) -> Result<R, Error> {
        let mut st = self.state();
        st.refresh(&self.inner.dir)?;
        Ok(f(&mut st))
    }

    /// Under the kernel lock and on an up-to-date state: `prepare` validates and returns the
    /// records to append; they are appended (fsynced) and applied; `finish` reads the result.
    fn write<R>(
        &self,
        by: Option<&AgentId>,
        prepare: impl FnOnce(&mut State) -> Result<Vec<Op>, Error>,
        finish: impl FnOnce(&State) -> R,
    ) -> Result<R, Error> {
        let dir = &self.inner.dir;
        let mut st = self.state();
        let changes;
        let result;
        {
            let _lock = KernelLock::take(&self.inner.lock_file, &store::lock_path(dir))?;
            st.refresh(dir)?;
            let ops = prepare(&mut st)?;
            changes = if ops.is_empty() {
                Vec::new()
            } else {
                let by = by.or(self.inner.options.agent.as_ref());
                st.append(dir, by, ops)?
            };
            result = finish(&st);
            if let Err(e) = st.maybe_compact(dir) {
                // The records are durable; a failed compaction only costs read time.
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "task store compaction failed"
                );
            }
        }
        drop(st);
        self.publish(&changes);
        Ok(result)
    }

    fn publish(&self, changes: &[Change]) {
        if !self.inner.options.publish || changes.is_empty() {
            return;
        }
        crate::notify::publish(
            &self.inner.publisher,
            &self.inner.ws,
            self.inner.options.agent.as_ref(),
            changes,
        );
    }

    /// Creates a task (blocking). Its status is Blocked if a dependency is not completed,
    /// else Pending; timestamps and revision are set by the tracker.
    ///
    /// # Errors
    /// [`Error::UnknownDependency`], [`Error::DuplicateId`], [`Error::Cycle`] (a task
    /// depending on itself), [`Error::Invalid`] for an empty name.
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
        self.write(None, |st| prepare_create(st, tasks), |_| ())?;
        Ok(ids)
    }

    /// The task `id`, if it exists.
    pub fn get_blocking(&self, id: &TaskId) -> Result<Option<Task>, Error> {
        self.read(|st| st.get(id).cloned())
    }

    /// Every task, in creation order.
    pub fn list_blocking(&self) -> Result<Vec<Task>, Error> {
        self.read(|st| st.tasks.clone())
    }

    /// Resolves a full id or a unique id prefix.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::AmbiguousPrefix`].
    pub fn resolve_blocking(&self, prefix: &str) -> Result<TaskId, Error> {
        self.read(|st| {
            if let Ok(id) = TaskId::parse(prefix)
                && st.index.contains_key(&id)
            {
                return Ok(id);
            }
            let matches: Vec<&TaskId> = st
                .tasks
                .iter()
                .map(|t| &t.id)
                .filter(|id| id.as_str().starts_with(prefix))
                .take(5)
                .collect();
            match matches.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(Error::NotFound {
                    task: prefix.to_string(),
                }),
                many => Err(Error::AmbiguousPrefix {
                    prefix: prefix.to_string(),
                    matches: many.iter().map(|m| m.to_string()).collect(),
                }),
            }
        })?
    }

    /// Changes the status of `id` (blocking).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::InvalidTransition`] (a completed task is final, a blocked
    /// task cannot start, ...).
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

    /// Applies `update` to `id` (blocking): checks the revision and the fencing token, then
    /// the transition, all under the tracker lock.
    ///
    /// # Errors
    /// As [`update_status_blocking`](Self::update_status_blocking), plus
    /// [`Error::RevisionMismatch`] and [`Error::StaleToken`].
    pub fn update_blocking(&self, id: &TaskId, update: &Update) -> Result<Task, Error> {
        let _span = tracing::info_span!("update_status", task = %id, to = %update.status).entered();
        let ws = &self.inner.ws;
        self.write(
            None,
            |st| {
                let t = st.get(id).ok_or_else(|| Error::NotFound {
                    task: id.to_string(),
                })?;
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
                    crate::fence::check(ws, id, resource, *token)?;
                }
                if let Some(reason) = t.status.refuse(update.status) {
                    return Err(Error::InvalidTransition {
                        task: id.clone(),
                        from: t.status,
                        to: update.status,
                        reason: reason.to_string(),
                    });
                }
                Ok(vec![Op::Status {
                    task: id.clone(),
                    to: update.status,
                    note: update.note.clone(),
                }])
            },
            |st| st.get(id).cloned(),
        )?
        .ok_or_else(|| Error::NotFound {
            task: id.to_string(),
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
    /// complete it too): neither side gets an error for the other's completion.
    /// [`update_status_blocking`](Self::update_status_blocking) stays strict and refuses
    /// completed -> completed.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidTransition`] for a blocked task (its dependencies
    /// are not done) or a failed one (it must be retried first).
    pub fn complete_blocking(&self, id: &TaskId, note: Option<&str>) -> Result<Task, Error> {
        let _span = tracing::info_span!("complete", task = %id).entered();
        self.write(
            None,
            |st| {
                let t = st.get(id).ok_or_else(|| Error::NotFound {
                    task: id.to_string(),
                })?;
                let status = |to| Op::Status {
                    task: id.clone(),
                    to,
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
                        status(TaskStatus::Completed),
                    ]),
                    TaskStatus::InProgress | TaskStatus::Review => {
                        Ok(vec![status(TaskStatus::Completed)])
                    }
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
            },
            |st| st.get(id).cloned(),
        )?
        .ok_or_else(|| Error::NotFound {
            task: id.to_string(),
        })
    }

    /// Sets or clears the assignee of `id`.
    pub fn assign_blocking(&self, id: &TaskId, agent: Option<&AgentId>) -> Result<Task, Error> {
        self.write(
            None,
            |st| {
                if st.get(id).is_none() {
                    return Err(Error::NotFound {
                        task: id.to_string(),
                    });
                }
                Ok(vec![Op::Assign {
                    task: id.clone(),
                    agent: agent.cloned(),
                }])
            },
            |st| st.get(id).cloned(),
        )?
        .ok_or_else(|| Error::NotFound {
            task: id.to_string(),
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
        self.write(
            None,
            |st| {
                let i = st.idx(task).ok_or_else(|| Error::NotFound {
                    task: task.to_string(),
                })?;
                let j = st.idx(dependency).ok_or_else(|| Error::UnknownDependency {
                    task: task.clone(),
                    dependency: dependency.clone(),
                })?;
                let t = &st.tasks[i];
                if !matches!(t.status, TaskStatus::Pending | TaskStatus::Blocked) {
                    return Err(Error::Invalid {
                        what: "dependency",
                        reason: format!("task {task} is {} already", t.status),
                    });
                }
                if t.dependencies.contains(dependency) {
                    return Ok(Vec::new());
                }
                if let Some(path) = path_via_dependencies(st, j, i) {
                    let mut cycle = vec![task.clone()];
                    cycle.extend(path.into_iter().map(|k| st.tasks[k].id.clone()));
                    return Err(Error::Cycle { cycle });
                }
                Ok(vec![Op::AddDependency {
                    task: task.clone(),
                    dependency: dependency.clone(),
                }])
            },
            |st| st.get(task).cloned(),
        )?
        .ok_or_else(|| Error::NotFound {
            task: task.to_string(),
        })
    }

    /// Unblocked pending tasks, by priority (highest first), then by the length of the
    /// critical path they start (longest first), then by creation order.
    pub fn ready_blocking(&self) -> Result<Vec<Task>, Error> {
        self.read(|st| {
            ready_order(st)
                .into_iter()
                .map(|i| st.tasks[i].clone())
                .collect()
        })
    }

    /// Atomically assigns the next ready task to `agent` and starts it (blocking): the best
    /// ready task that is unassigned or assigned to `agent`. Claims of agents the registry
    /// reports dead are released to the queue first. `None` when nothing is ready.
    pub fn claim_blocking(&self, agent: &AgentId) -> Result<Option<Task>, Error> {
        let _span = tracing::info_span!("claim", agent = %agent).entered();
        let release = self.inner.options.release_dead_claims;
        let ws = &self.inner.ws;
        let mut claimed = None;
        self.write(
            Some(agent),
            |st| {
                let mut ops = if release {
                    dead_claims(ws, st)
                } else {
                    Vec::new()
                };
                // Tasks released by this same batch are claimable too (the Release record is
                // applied before the Claim record).
                let released: HashSet<usize> = ops
                    .iter()
                    .filter_map(|op| match op {
                        Op::Release { task, .. } => st.idx(task),
                        _ => None,
                    })
                    .collect();
                ensure_tail(st);
                let best = best_ready(st, agent, &released);
                if let Some(i) = best {
                    let id = st.tasks[i].id.clone();
                    ops.push(Op::Claim {
                        task: id.clone(),
                        agent: agent.clone(),
                    });
                    claimed = Some(id);
                }
                Ok(ops)
            },
            |_| (),
        )?;
        match claimed {
            Some(id) => self.read(|st| st.get(&id).cloned()),
            None => Ok(None),
        }
    }

    /// Releases (back to Pending, unassigned) every active task whose agent the registry
    /// reports dead. Returns the released ids.
    pub fn release_dead_claims_blocking(&self) -> Result<Vec<TaskId>, Error> {
        let ws = &self.inner.ws;
        let mut released = Vec::new();
        self.write(
            None,
            |st| {
                let ops = dead_claims(ws, st);
                for op in &ops {
                    if let Op::Release { task, .. } = op {
                        released.push(task.clone());
                    }
                }
                Ok(ops)
            },
            |_| (),
        )?;
        Ok(released)
    }

    /// Releases (back to Pending, unassigned) every active task assigned to `agent`, recording
    /// `reason`: what unregistering an agent does. Returns the released ids.
    pub fn release_agent_blocking(
        &self,
        agent: &AgentId,
        reason: &str,
    ) -> Result<Vec<TaskId>, Error> {
        let mut released = Vec::new();
        self.write(
            None,
            |st| {
                let ops: Vec<Op> = st
                    .tasks
                    .iter()
                    .filter(|t| t.status.is_active() && t.assigned_to.as_ref() == Some(agent))
                    .map(|t| Op::Release {
                        task: t.id.clone(),
                        reason: reason.to_owned(),
                    })
                    .collect();
                released = ops
                    .iter()
                    .filter_map(|op| match op {
                        Op::Release { task, .. } => Some(task.clone()),
                        _ => None,
                    })
                    .collect();
                Ok(ops)
            },
            |_| (),
        )?;
        Ok(released)
    }

    /// The critical path over all tasks, weighted by estimates (dependencies first), and its
    /// total estimated duration.
    pub fn critical_path_blocking(&self) -> Result<(Vec<Task>, Duration), Error> {
        self.read(|st| {
            let deps = deps_index(st);
            let (path, total) =
                graph::critical_path(&deps, &st.dependents, |i| weight_ms(&st.tasks[i]));
            (
                path.into_iter()
                    .map(|i| st.tasks[i as usize].clone())
                    .collect(),
                Duration::from_millis(total),
            )
        })
    }

    /// Compacts the store now: writes a snapshot and starts a new log generation.
    pub fn compact_blocking(&self) -> Result<(), Error> {
        let dir = &self.inner.dir;
        let mut st = self.state();
        let _lock = KernelLock::take(&self.inner.lock_file, &store::lock_path(dir))?;
        st.refresh(dir)?;
        st.compact(dir)
    }

    /// The sequence number of the latest record seen: changes whenever the tasks change.
    pub fn version_blocking(&self) -> Result<u64, Error> {
        self.read(|st| st.seq)
    }

    /// Creates a task; see [`create_task_blocking`](Self::create_task_blocking).
    pub async fn create_task(&self, task: Task) -> Result<TaskId, Error> {
        let this = self.clone();
        asyncify(move || this.create_task_blocking(&task)).await
    }

    /// Creates several tasks atomically; see
    /// [`create_tasks_blocking`](Self::create_tasks_blocking).
    pub async fn create_tasks(&self, tasks: Vec<Task>) -> Result<Vec<TaskId>, Error> {
        let this = self.clone();
        asyncify(move || this.create_tasks_blocking(&tasks)).await
    }

    /// The task `id`, if it exists.
    pub async fn get(&self, id: &TaskId) -> Result<Option<Task>, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.get_blocking(&id)).await
    }

    /// Every task, in creation order.
    pub async fn list(&self) -> Result<Vec<Task>, Error> {
        let this = self.clone();
        asyncify(move || this.list_blocking()).await
    }

    /// Changes the status of `id`; see [`update_status_blocking`](Self::update_status_blocking).
    pub async fn update_status(
        &self,
        id: &TaskId,
        status: TaskStatus,
        note: Option<String>,
    ) -> Result<Task, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.update_status_blocking(&id, status, note.as_deref())).await
    }

    /// Applies `update`; see [`update_blocking`](Self::update_blocking).
    pub async fn update(&self, id: &TaskId, update: &Update) -> Result<Task, Error> {
        let (this, id, update) = (self.clone(), id.clone(), update.clone());
        asyncify(move || this.update_blocking(&id, &update)).await
    }

    /// Completes `id` idempotently; see [`complete_blocking`](Self::complete_blocking).
    pub async fn complete(&self, id: &TaskId, note: Option<String>) -> Result<Task, Error> {
        let (this, id) = (self.clone(), id.clone());
        asyncify(move || this.complete_blocking(&id, note.as_deref())).await
    }

    /// Claims the next ready task; see [`claim_blocking`](Self::claim_blocking).
    pub async fn claim(&self, agent: &AgentId) -> Result<Option<Task>, Error> {
        let (this, agent) = (self.clone(), agent.clone());
        asyncify(move || this.claim_blocking(&agent)).await
    }

    /// Unblocked pending tasks in claim order; see [`ready_blocking`](Self::ready_blocking).
    pub async fn ready(&self) -> Result<Vec<Task>, Error> {
        let this = self.clone();
        asyncify(move || this.ready_blocking()).await
    }

    /// Adds a dependency; see [`add_dependency_blocking`](Self::add_dependency_blocking).
    pub async fn add_dependency(&self, task: &TaskId, dependency: &TaskId) -> Result<Task, Error> {
        let (this, task, dependency) = (self.clone(), task.clone(), dependency.clone());
        asyncify(move || this.add_dependency_blocking(&task, &dependency)).await
    }

    /// Releases dead agents' claims; see
    /// [`release_dead_claims_blocking`](Self::release_dead_claims_blocking).
    pub async fn release_dead_claims(&self) -> Result<Vec<TaskId>, Error> {
        let this = self.clone();
        asyncify(move || this.release_dead_claims_blocking()).await
    }

    /// The version (log sequence number of the latest record): changes whenever tasks change.
    pub async fn version(&self) -> Result<u64, Error> {
        let this = self.clone();
        asyncify(move || this.version_blocking()).await
    }

    /// A watcher that wakes when the tasks change (file events plus a fallback timer).
    pub fn watch(&self) -> Result<crate::notify::TaskWatch, Error> {
        crate::notify::TaskWatch::new(self.clone())
    }

    /// The critical path; see [`critical_path_blocking`](Self::critical_path_blocking).
    pub async fn critical_path(&self) -> Result<(Vec<Task>, Duration), Error> {
        let this = self.clone();
        asyncify(move || this.critical_path_blocking()).await
    }
}

fn prepare_create(st: &State, tasks: &[Task]) -> Result<Vec<Op>, Error> {
    let mut local: HashMap<&TaskId, usize> = HashMap::with_capacity(tasks.len());
    for (k, t) in tasks.iter().enumerate() {
        if t.name.trim().is_empty() {
            return Err(Error::Invalid {
                what: "task name",
                reason: format!("task {} has an empty name", t.id),
            });
        }
        if st.index.contains_key(&t.id) || local.insert(&t.id, k).is_some() {
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
            } else if !st.index.contains_key(d) {
                return Err(Error::UnknownDependency {
                    task: t.id.clone(),
                    dependency: d.clone(),
                });
            }
        }
    }
    let order = match graph::topo_order(&deps, &dependents) {
        Ok(o) => o,
        Err(()) => {
            let cyc = graph::find_cycle(&deps).unwrap_or_default();
            return Err(Error::Cycle {
                cycle: cyc
                    .into_iter()
                    .map(|k| tasks[k as usize].id.clone())
                    .collect(),
            });
        }
    };
    Ok(order
        .into_iter()
        .map(|k| {
            let mut t = tasks[k as usize].clone();
            let mut seen = HashSet::new();
            t.dependencies.retain(|d| seen.insert(d.clone()));
            t.status = TaskStatus::Pending;
            t.revision = 0;
            t.started_at = None;
            t.completed_at = None;
            t.attempts = 0;
            t.blocked_reason = None;
            Op::Create { task: Box::new(t) }
        })
        .collect())
}

/// The dependency lists as indexes.
pub(crate) fn deps_index(st: &State) -> Vec<Vec<u32>> {
    st.tasks
        .iter()
        .map(|t| {
            t.dependencies
                .iter()
                .filter_map(|d| st.index.get(d).copied())
                .collect()
        })
        .collect()
}

pub(crate) fn ensure_tail(st: &mut State) {
    if st.tail.as_ref().is_some_and(|t| t.len() == st.tasks.len()) {
        return;
    }
    let deps = deps_index(st);
    let tail = graph::downstream(&deps, &st.dependents, |i| weight_ms(&st.tasks[i]));
    st.tail = Some(tail);
}

/// Sort key of a ready task: priority (high first), downstream critical path (long first),
/// creation order.
fn key(
    st: &State,
    i: usize,
) -> (
    std::cmp::Reverse<maos_core::Priority>,
    std::cmp::Reverse<u64>,
    usize,
) {
    let tail = st.tail.as_ref().map_or(0, |t| t[i]);
    (
        std::cmp::Reverse(st.tasks[i].priority),
        std::cmp::Reverse(tail),
        i,
    )
}

pub(crate) fn ready_order(st: &mut State) -> Vec<usize> {
    ensure_tail(st);
    let mut ready: Vec<usize> = (0..st.tasks.len())
        .filter(|&i| st.tasks[i].status == TaskStatus::Pending)
        .collect();
    ready.sort_unstable_by_key(|&i| key(st, i));
    ready
}

fn best_ready(st: &State, agent: &AgentId, released: &HashSet<usize>) -> Option<usize> {
    (0..st.tasks.len())
        .filter(|&i| {
            let t = &st.tasks[i];
            released.contains(&i)
                || (t.status == TaskStatus::Pending
                    && t.assigned_to.as_ref().is_none_or(|a| a == agent))
        })
        .min_by_key(|&i| key(st, i))
}

fn dead_claims(ws: &Workspace, st: &State) -> Vec<Op> {
    let registry = AgentRegistry::new(ws);
    let mut verdicts: HashMap<&AgentId, bool> = HashMap::new();
    let mut ops = Vec::new();
    for t in &st.tasks {
        if !t.status.is_active() {
            continue;
        }
        let Some(agent) = &t.assigned_to else {
            continue;
        };
        let dead = *verdicts.entry(agent).or_insert_with(|| {
            matches!(
                registry.get(agent),
                Ok(Some(rec)) if rec.liveness() == Liveness::Dead
            )
        });
        if dead {
            tracing::info!(task = %t.id, agent = %agent, "releasing the claim of a dead agent");
            ops.push(Op::Release {
                task: t.id.clone(),
                reason: format!("released: agent {agent} died"),
            });
        }
    }
    ops
}

/// A path from `from` to `to` following dependencies (`from` first, `to` last), if any.
fn path_via_dependencies(st: &State, from: usize, to: usize) -> Option<Vec<usize>> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut stack = vec![from];
    parent.insert(from, usize::MAX);
    while let Some(v) = stack.pop() {
        if v == to {
            let mut path = vec![v];
            let mut x = v;
            while parent[&x] != usize::MAX {
                x = parent[&x];
                path.push(x);
            }
            path.reverse();
            return Some(path);
        }
        for d in &st.tasks[v].dependencies {
            if let Some(w) = st.idx(d)
                && !parent.contains_key(&w)
            {
                parent.insert(w, v);
                stack.push(w);
            }
        }
    }
    None
}
