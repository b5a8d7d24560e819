//! The merge queue on PostgreSQL: maos-merge's entries ([`maos_merge::QueueEntry`]), one row
//! each, changed under the row lock of `maos.guards (ns, 'queue')`; one runner at a time per
//! namespace, held by a session-level advisory lock (it ends with the runner's session).
//!
//! Git stays local to each clone: agents push their branches to a shared remote and the
//! machine that runs the queue fetches them before it checks and merges (docs/protocol.md,
//! PostgreSQL section).

use maos_core::{AgentId, now_ms};
use maos_merge::{EntryStatus, QueueEntry};

use crate::conn::{Conn, Exec};
use crate::{Error, Pg, Result};

/// The high word of the runner lock (two-int advisory lock `(RUNNER_CLASS, ns)`).
pub const RUNNER_CLASS: i32 = 0x6D71; // "mq"

fn decode(v: serde_json::Value) -> Result<QueueEntry> {
    serde_json::from_value(v).map_err(|e| Error::Corrupt {
        what: "merge queue entry".into(),
        reason: e.to_string(),
    })
}

fn status_str(s: EntryStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "queued".into())
}

/// The merge queue of a namespace.
#[derive(Debug, Clone)]
pub struct PgQueue {
    pg: Pg,
}

/// The runner's hold on the queue; dropping it lets another runner in.
#[must_use = "dropping the runner guard releases the queue"]
pub struct RunnerGuard {
    conn: Conn,
    ns: i64,
}

impl std::fmt::Debug for RunnerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerGuard").field("ns", &self.ns).finish()
    }
}

impl Drop for RunnerGuard {
    fn drop(&mut self) {
        let ns = i32::try_from(self.ns).unwrap_or(i32::MAX);
        let _ = self.conn.exec(
            "release the queue runner",
            "SELECT pg_advisory_unlock($1, $2)",
            &[&RUNNER_CLASS, &ns],
        );
    }
}

impl PgQueue {
    /// The queue of `pg`'s namespace.
    pub fn new(pg: &Pg) -> Self {
        Self { pg: pg.clone() }
    }

    /// Appends a merge of `source` into `target` requested by `agent`; an active entry for
    /// the same pair is returned instead of a duplicate.
    pub fn add(&self, source: &str, target: &str, agent: &AgentId) -> Result<QueueEntry> {
        let ns = self.pg.inner.ns;
        self.pg.run(|c| {
            c.tx("add to the merge queue", |t| {
                let id: i64 = t
                    .one(
                        "take the queue guard",
                        "SELECT counter FROM maos.guards WHERE ns = $1 AND what = 'queue' FOR UPDATE",
                        &[&ns],
                    )?
                    .get(0);
                for r in t.query(
                    "read the queue",
                    "SELECT entry FROM maos.merge_queue WHERE ns = $1 AND source = $2 AND target = $3 ORDER BY id",
                    &[&ns, &source, &target],
                )? {
                    let e = decode(r.get(0))?;
                    if e.status.is_active() {
                        return Ok(e);
                    }
                }
                let now = now_ms();
                let id = id + 1;
                let e = QueueEntry {
                    id: u64::try_from(id).unwrap_or(0),
                    source: source.to_owned(),
                    target: target.to_owned(),
                    requested_by: agent.clone(),
                    added_at: now,
                    updated_at: now,
                    status: EntryStatus::Queued,
                    attempts: 0,
                    outcome: None,
                    conflicted_paths: Vec::new(),
                    resolution: None,
                    error: None,
                };
                self.write(t, &e)?;
                t.exec(
                    "advance the queue",
                    "UPDATE maos.guards SET counter = $2 WHERE ns = $1 AND what = 'queue'",
                    &[&ns, &id],
                )?;
                Ok(e)
            })
        })
    }

    fn write(&self, t: &mut impl Exec, e: &QueueEntry) -> Result<()> {
        let ns = self.pg.inner.ns;
        let doc = serde_json::to_value(e).map_err(|err| Error::Corrupt {
            what: "merge queue entry".into(),
            reason: err.to_string(),
        })?;
        let id = i64::try_from(e.id).unwrap_or(i64::MAX);
        t.exec(
            "write a queue entry",
            "INSERT INTO maos.merge_queue (ns, id, source, target, status, entry) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (ns, id) DO UPDATE SET status = EXCLUDED.status, entry = EXCLUDED.entry",
            &[&ns, &id, &e.source, &e.target, &status_str(e.status), &doc],
        )?;
        Ok(())
    }

    /// Every entry, in queue order.
    pub fn list(&self) -> Result<Vec<QueueEntry>> {
        let ns = self.pg.inner.ns;
        let rows = self.pg.run(|c| {
            c.query(
                "read the queue",
                "SELECT entry FROM maos.merge_queue WHERE ns = $1 ORDER BY id",
                &[&ns],
            )
        })?;
        rows.into_iter().map(|r| decode(r.get(0))).collect()
    }

    /// Replaces an entry (a runner's progress); an entry removed meanwhile stays removed.
    pub fn update(&self, e: &QueueEntry) -> Result<()> {
        let ns = self.pg.inner.ns;
        let id = i64::try_from(e.id).unwrap_or(i64::MAX);
        self.pg.run(|c| {
            c.tx("update a queue entry", |t| {
                t.exec(
                    "take the queue guard",
                    "SELECT counter FROM maos.guards WHERE ns = $1 AND what = 'queue' FOR UPDATE",
                    &[&ns],
                )?;
                let exists = t
                    .opt(
                        "find a queue entry",
                        "SELECT 1 FROM maos.merge_queue WHERE ns = $1 AND id = $2",
                        &[&ns, &id],
                    )?
                    .is_some();
                if exists {
                    self.write(t, e)?;
                }
                Ok(())
            })
        })
    }

    /// Removes entry `id`, returning it.
    pub fn remove(&self, id: u64) -> Result<QueueEntry> {
        let ns = self.pg.inner.ns;
        let i = i64::try_from(id).unwrap_or(i64::MAX);
        let row = self.pg.run(|c| {
            c.opt(
                "remove a queue entry",
                "DELETE FROM maos.merge_queue WHERE ns = $1 AND id = $2 RETURNING entry",
                &[&ns, &i],
            )
        })?;
        match row {
            Some(r) => decode(r.get(0)),
            None => Err(Error::Invalid {
                what: "queue entry",
                reason: format!("no entry {id} in the merge queue"),
            }),
        }
    }

    /// Becomes the queue's runner, or `None` when another process (on any machine) runs it.
    pub fn try_run(&self) -> Result<Option<RunnerGuard>> {
        let ns = i32::try_from(self.pg.inner.ns).map_err(|_| Error::Invalid {
            what: "namespace",
            reason: "namespace id beyond the advisory lock's range".into(),
        })?;
        let mut conn = self.pg.dedicated()?;
        let got: bool = conn
            .one(
                "take the queue runner",
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&RUNNER_CLASS, &ns],
            )?
            .get(0);
        Ok(got.then_some(RunnerGuard {
            conn,
            ns: self.pg.inner.ns,
        }))
    }
}

/// maos-merge's shared state on the server: the merge lock ([`crate::lock::PgLock`], held
/// by this process's session), the resolution tasks ([`crate::track::PgTracker`]), the
/// notices (the agents' inboxes), the agent registry and the queue ([`PgQueue`]). Git stays
/// in the clone that merges.
#[derive(Debug, Clone)]
pub struct PgMerge {
    pg: Pg,
    tracker: crate::track::PgTracker,
    queue: PgQueue,
}

impl PgMerge {
    /// The merge state of `pg`'s namespace, acting as `agent` (tasks created, completed and
    /// failed, notices sent).
    pub fn new(pg: &Pg, agent: AgentId) -> Self {
        Self {
            pg: pg.clone(),
            tracker: crate::track::PgTracker::new(pg).agent(agent),
            queue: PgQueue::new(pg),
        }
    }
}

type Boxed = maos_merge::backend::BackendError;

impl maos_merge::backend::MergeBackend for PgMerge {
    fn name(&self) -> &'static str {
        crate::stores::BACKEND_NAME
    }

    fn lock(
        &self,
        resource: &maos_core::ResourceName,
        agent: &AgentId,
        wait: std::time::Duration,
        purpose: &str,
    ) -> std::result::Result<Box<dyn maos_merge::backend::Hold>, Boxed> {
        let guard = crate::lock::PgLock::new(&self.pg, resource.clone())
            .agent(agent.clone())
            .wait(wait)
            .acquire(purpose)?;
        Ok(Box::new(guard))
    }

    fn tasks(&self) -> std::result::Result<Vec<maos_track::Task>, Boxed> {
        Ok(self.tracker.list()?)
    }

    fn task(&self, id: &maos_core::TaskId) -> std::result::Result<Option<maos_track::Task>, Boxed> {
        Ok(self.tracker.get(id)?)
    }

    fn create_tasks(&self, tasks: &[maos_track::Task]) -> std::result::Result<(), Boxed> {
        self.tracker.create_tasks(tasks)?;
        Ok(())
    }

    fn complete_task(&self, id: &maos_core::TaskId, note: &str) -> std::result::Result<(), Boxed> {
        self.tracker.complete(id, Some(note))?;
        Ok(())
    }

    fn fail_task(&self, id: &maos_core::TaskId, note: &str) -> std::result::Result<(), Boxed> {
        self.tracker
            .update_status(id, maos_track::TaskStatus::Failed, Some(note))?;
        Ok(())
    }

    fn notify(
        &self,
        agent: &AgentId,
        msg: &maos_core::Message<serde_json::Value>,
    ) -> std::result::Result<(), Boxed> {
        crate::comm::PgChannel::inbox(&self.pg, agent)?.send(msg)?;
        Ok(())
    }

    fn agents(&self) -> std::result::Result<Vec<maos_core::AgentRecord>, Boxed> {
        use maos_core::AgentStore as _;
        let (views, _) = crate::stores::PgAgents::new(&self.pg).list()?;
        Ok(views.into_iter().map(|v| v.record).collect())
    }

    fn queue_add(
        &self,
        source: &str,
        target: &str,
        agent: &AgentId,
    ) -> std::result::Result<QueueEntry, Boxed> {
        Ok(self.queue.add(source, target, agent)?)
    }

    fn queue_list(&self) -> std::result::Result<Vec<QueueEntry>, Boxed> {
        Ok(self.queue.list()?)
    }

    fn queue_update(&self, entry: &QueueEntry) -> std::result::Result<(), Boxed> {
        Ok(self.queue.update(entry)?)
    }

    fn queue_remove(&self, id: u64) -> std::result::Result<Option<QueueEntry>, Boxed> {
        match self.queue.remove(id) {
            Ok(e) => Ok(Some(e)),
            Err(Error::Invalid { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn queue_try_run(
        &self,
    ) -> std::result::Result<Option<Box<dyn maos_merge::backend::Hold>>, Boxed> {
        Ok(self
            .queue
            .try_run()?
            .map(|g| Box::new(g) as Box<dyn maos_merge::backend::Hold>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_added_once_per_pair_and_one_runner_runs() {
        let pg = crate::server::test_backend("queue").unwrap();
        let q = PgQueue::new(&pg);
        let me = AgentId::new("a").unwrap();
        let e1 = q.add("alice", "main", &me).unwrap();
        let again = q.add("alice", "main", &me).unwrap();
        assert_eq!(e1, again);
        let mut e2 = q.add("bob", "main", &me).unwrap();
        assert_eq!(e2.id, e1.id + 1);
        e2.status = EntryStatus::Merged;
        q.update(&e2).unwrap();
        let ids: Vec<u64> = q.list().unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, [e1.id, e2.id]);
        // A merged pair can be queued again.
        assert_ne!(q.add("bob", "main", &me).unwrap().id, e2.id);
        let runner = q.try_run().unwrap().expect("first runner");
        let other = PgQueue::new(&crate::server::test_backend("queue2").unwrap());
        assert!(
            other.try_run().unwrap().is_some(),
            "other namespaces run apart"
        );
        assert!(q.try_run().unwrap().is_none(), "busy");
        drop(runner);
        assert!(q.try_run().unwrap().is_some());
        assert_eq!(q.remove(e1.id).unwrap().id, e1.id);
        assert!(q.remove(e1.id).is_err());
    }
}
