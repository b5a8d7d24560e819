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
use maos_track::{Ownership, Task, TaskStatus};
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
    /// A new dependency.
    AddDependency {
        /// The task.
        task: TaskId,
        /// What it now depends on.
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

    fn failed_dep(&self, t: &Task) -> Option<String> {
        t.dependencies.iter().find_map(|d| {
            let d = self.get(d)?;
            (d.status == TaskStatus::Failed).then(|| match &d.note {
                Some(n) => format!("dependency {} failed: {n}", d.id),
                None => format!("dependency {} failed", d.id),
            })
        })
    }

    /// Applies one validated record (the protocol's rules, section 8); returns the tasks
    /// it changed.
    fn apply(&mut self, op: &Op, at: u64, by: Option<&AgentId>) -> Vec<TaskId> {
        match op {
            Op::Create { task } => {
                let mut t = (**task).clone();
                t.revision = 1;
                t.created_at = at;
                t.updated_at = at;
                t.status = if self.deps_done(&t) {
                    TaskStatus::Pending
                } else {
                    TaskStatus::Blocked
                };
                t.blocked_reason = self.failed_dep(&t);
                for d in &t.dependencies {
                    self.dependents
                        .entry(d.clone())
                        .or_default()
                        .push(t.id.clone());
                }
                self.index.insert(t.id.clone(), self.tasks.len());
                self.created.push(self.seq);
                let id = t.id.clone();
                self.tasks.push(t);
                vec![id]
            }
            Op::Status { task, to, note } => self.set_status(task, *to, note.clone(), at, by),
            Op::Claim { task, agent } => {
                if let Some(t) = self.get_mut(task) {
                    t.assigned_to = Some(agent.clone());
                }
                self.set_status(task, TaskStatus::InProgress, None, at, Some(agent))
            }
            Op::Release { task, reason } => {
                if let Some(t) = self.get_mut(task) {
                    t.assigned_to = None;
                }
                self.set_status(task, TaskStatus::Pending, Some(reason.clone()), at, by)
            }
            Op::Assign { task, agent } => {
                if let Some(t) = self.get_mut(task) {
                    t.assigned_to = agent.clone();
                    t.revision += 1;
                    t.updated_at = at;
                }
                vec![task.clone()]
            }
            Op::AddDependency { task, dependency } => {
                let done = self
                    .get(dependency)
                    .is_some_and(|d| d.status == TaskStatus::Completed);
                if let Some(t) = self.get_mut(task) {
                    t.dependencies.push(dependency.clone());
                    if !done && t.status == TaskStatus::Pending {
                        t.status = TaskStatus::Blocked;
                    }
                    t.revision += 1;
                    t.updated_at = at;
                }
                self.dependents
                    .entry(dependency.clone())
                    .or_default()
                    .push(task.clone());
                vec![task.clone()]
            }
        }
    }

    fn set_status(
        &mut self,
        id: &TaskId,
        to: TaskStatus,
        note: Option<String>,
        at: u64,
        by: Option<&AgentId>,
    ) -> Vec<TaskId> {
        let Some(t) = self.get(id) else {
            return Vec::new();
        };
        let from = t.status;
        let to = if to == TaskStatus::Pending && !self.deps_done(t) {
            TaskStatus::Blocked
        } else {
            to
        };
        let mut changed = vec![id.clone()];
        if let Some(t) = self.get_mut(id) {
            t.status = to;
            t.updated_at = at;
            t.revision += 1;
            if note.is_some() {
                t.note = note;
            }
            if to == TaskStatus::InProgress && from != TaskStatus::Review {
                t.started_at = Some(at);
                t.attempts += 1;
                if t.assigned_to.is_none() {
                    t.assigned_to = by.cloned();
                }
            }
            if to == TaskStatus::Completed {
                t.completed_at = Some(at);
            }
        }
        let dependents = self.dependents.get(id).cloned().unwrap_or_default();
        for d in dependents {
            let Some(dt) = self.get(&d) else { continue };
            let (status, done, reason) = (dt.status, self.deps_done(dt), dt.blocked_reason.clone());
            let mut touch = false;
            let mut new_status = status;
            let mut new_reason = reason.clone();
            if to == TaskStatus::Completed && status == TaskStatus::Blocked && done {
                new_status = TaskStatus::Pending;
                new_reason = None;
                touch = true;
            }
            if to == TaskStatus::Failed && status == TaskStatus::Blocked {
                let n = self.get(id).and_then(|t| t.note.clone());
                new_reason = Some(match n {
                    Some(n) => format!("dependency {id} failed: {n}"),
                    None => format!("dependency {id} failed"),
                });
                touch = true;
            }
            if from == TaskStatus::Failed
                && to != TaskStatus::Failed
                && reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with(&format!("dependency {id} failed")))
            {
                new_reason = None;
                touch = true;
            }
            if touch && let Some(dt) = self.get_mut(&d) {
                dt.status = new_status;
                dt.blocked_reason = new_reason;
                dt.revision += 1;
                dt.updated_at = at;
                changed.push(d);
            }
        }
        changed
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

fn refuse(from: TaskStatus, to: TaskStatus) -> Option<&'static str> {
    use TaskStatus as S;
    let ok = matches!(
        (from, to),
        (S::Pending, S::InProgress | S::Failed)
            | (S::Blocked, S::Failed)
            | (
                S::InProgress,
                S::Review | S::Completed | S::Failed | S::Pending
            )
            | (
                S::Review,
                S::Completed | S::Failed | S::InProgress | S::Pending
            )
            | (S::Failed, S::Pending)
    );
    if ok {
        return None;
    }
    Some(match from {
        S::Completed => "a completed task is final",
        S::Blocked => "its dependencies are not completed",
        _ => "not a valid transition",
    })
}

/// The task graph of a namespace, shared by every machine. Cheap to clone.
#[derive(Clone)]
pub struct PgTracker {
    pg: Pg,
    agent: Option<AgentId>,
    release_dead_claims: bool,
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
            cache: Arc::new(Mutex::new(Cache::default())),
        }
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
    fn write(
        &self,
        by: Option<&AgentId>,
        mut prepare: impl FnMut(&Cache, &mut Tx<'_>) -> Result<Vec<Op>>,
    ) -> Result<Vec<Op>> {
        let ns = self.pg.inner.ns;
        let req = uuid::Uuid::new_v4();
        let by = by.or(self.agent.as_ref()).map(|a| a.to_string());
        let mut cache = lock(&self.cache);
        self.pg
            .run(|c| {
                c.tx("write tasks", |t| {
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
                    let ops = prepare(&cache, t)?;
                    if ops.is_empty() {
                        return Ok(ops);
                    }
                    let at_u = u64::try_from(at).unwrap_or(0);
                    cache.dirty = true;
                    let by_id = by.as_deref().and_then(|b| AgentId::new(b).ok());
                    let mut changed: Vec<TaskId> = Vec::new();
                    let mut seqs = Vec::with_capacity(ops.len());
                    let mut recs = Vec::with_capacity(ops.len());
                    for op in &ops {
                        cache.seq += 1;
                        changed.extend(cache.apply(op, at_u, by_id.as_ref()));
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
                    // The records, the changed tasks and the counter in one statement.
                    t.exec(
                        "write tasks",
                        "WITH l AS (
                             INSERT INTO maos.task_log (ns, seq, at, by, record, req)
                             SELECT $1, s, $3, $4, r, $5 FROM unnest($2::bigint[], $6::jsonb[]) AS x(s, r)),
                         t AS (
                             INSERT INTO maos.tasks (ns, id, created_seq, seq, status, assigned_to, doc)
                             SELECT $1, i, c, $7, st, a, d
                             FROM unnest($8::text[], $9::bigint[], $10::text[], $11::text[], $12::jsonb[]) AS y(i, c, st, a, d)
                             ON CONFLICT (ns, id) DO UPDATE SET seq = EXCLUDED.seq, status = EXCLUDED.status,
                                 assigned_to = EXCLUDED.assigned_to, doc = EXCLUDED.doc)
                         UPDATE maos.guards SET counter = $7 WHERE ns = $1 AND what = 'tasks'",
                        &[
                            &ns, &seqs, &at, &by, &req, &recs, &cache.seq, &ids, &created, &statuses,
                            &assigned, &docs,
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
        self.write(None, |st, _| {
            let mut ops = Vec::new();
            let mut seen = HashSet::new();
            for t in &ordered {
                if t.name.trim().is_empty() {
                    return Err(Error::Invalid {
                        what: "task",
                        reason: "a task needs a name".into(),
                    });
                }
                if st.get(&t.id).is_some() || !seen.insert(&t.id) {
                    return Err(Error::DuplicateTask { task: t.id.clone() });
                }
                for d in &t.dependencies {
                    if d == &t.id {
                        return Err(Error::Cycle {
                            cycle: vec![t.id.clone(), t.id.clone()],
                        });
                    }
                    if st.get(d).is_none() && !ids.contains(d) {
                        return Err(Error::UnknownDependency {
                            task: t.id.clone(),
                            dependency: d.clone(),
                        });
                    }
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

    /// Applies `update` to `id` in one transaction: the owner (unless the update overrides
    /// it: [`Error::NotAssignee`] for a task assigned to another agent than the tracker's), the
    /// revision and the fencing token are checked, then the transition.
    pub fn update(&self, id: &TaskId, update: &Update) -> Result<Task> {
        let respect_owner = update.ownership == Ownership::Respect;
        let pg = self.pg.clone();
        let actor = self.agent.clone();
        self.write(None, |st, _| {
            let t = st.get(id).ok_or_else(|| Error::TaskNotFound {
                task: id.to_string(),
            })?;
            if respect_owner
                && let (Some(assignee), Some(actor)) = (&t.assigned_to, &actor)
                && assignee != actor
            {
                return Err(Error::NotAssignee {
                    task: id.clone(),
                    assignee: assignee.clone(),
                    actor: actor.clone(),
                });
            }
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
            if let Some(reason) = refuse(t.status, update.status) {
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
    pub fn complete(&self, id: &TaskId, note: Option<&str>) -> Result<Task> {
        self.write(None, |st, _| {
            let t = st.get(id).ok_or_else(|| Error::TaskNotFound {
                task: id.to_string(),
            })?;
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
                    reason: refuse(from, TaskStatus::Completed)
                        .unwrap_or("not a valid transition")
                        .to_string(),
                }),
            }
        })?;
        self.cached(id)
    }

    /// Sets or clears the assignee of `id`.
    pub fn assign(&self, id: &TaskId, agent: Option<&AgentId>) -> Result<Task> {
        self.write(None, |st, _| {
            if st.get(id).is_none() {
                return Err(Error::TaskNotFound {
                    task: id.to_string(),
                });
            }
            Ok(vec![Op::Assign {
                task: id.clone(),
                agent: agent.cloned(),
            }])
        })?;
        self.cached(id)
    }

    /// Makes `task` also depend on `dependency` (only while it has not started).
    pub fn add_dependency(&self, task: &TaskId, dependency: &TaskId) -> Result<Task> {
        self.write(None, |st, _| {
            let t = st.get(task).ok_or_else(|| Error::TaskNotFound {
                task: task.to_string(),
            })?;
            if st.get(dependency).is_none() {
                return Err(Error::UnknownDependency {
                    task: task.clone(),
                    dependency: dependency.clone(),
                });
            }
            if !matches!(t.status, TaskStatus::Pending | TaskStatus::Blocked) {
                return Err(Error::Invalid {
                    what: "dependency",
                    reason: format!("task {task} is {} already", t.status),
                });
            }
            if t.dependencies.contains(dependency) {
                return Ok(Vec::new());
            }
            if let Some(mut path) = st.depends_on(dependency, task) {
                path.insert(0, task.clone());
                return Err(Error::Cycle { cycle: path });
            }
            Ok(vec![Op::AddDependency {
                task: task.clone(),
                dependency: dependency.clone(),
            }])
        })?;
        self.cached(task)
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
        let ops = self.write(Some(agent), |st, t| {
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
        let ops = self.write(None, |st, t| self.dead_claims(st, t))?;
        Ok(released(&ops))
    }

    /// Releases every active task assigned to `agent` (what unregistering does).
    pub fn release_agent(&self, agent: &AgentId, reason: &str) -> Result<Vec<TaskId>> {
        let ops = self.write(None, |st, _| {
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
