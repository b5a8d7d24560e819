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
use maos_track::{Amendment, Edit, Event, Ownership, Task, TaskDetails, TaskStatus};
use serde::{Deserialize, Serialize};

use crate::conn::{Exec, Tx};
use crate::{Error, Pg, Result};

mod cache;
#[cfg(test)]
mod tests;

use cache::{Cache, Ctx};

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

    /// Bounds the wait of every write for the tasks guard (at least `maos_lock::GUARD_FLOOR`,
    /// as for the lock table's guard): a process
    /// stopped in the middle of a write then makes it fail with [`Error::Busy`] in time
    /// (`--wait` of the task commands), as the file store's lock timeout does.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait.clamp(maos_lock::GUARD_FLOOR, crate::ROW_WAIT));
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
