//! The on-disk store: `snapshot.json` + `log.<generation>.jsonl` + `lock` under `.maos/tasks/`,
//! and the in-memory state rebuilt from them.
//!
//! Writers append small records to the current log under the tracker-wide kernel lock and
//! fsync; readers load the snapshot once and then read only the log's new tail. Now and then a
//! writer compacts: it creates the next generation's empty log, appends a `rotate` record to
//! the current one, writes a snapshot of the state after that record, and deletes logs two
//! generations old. The format is specified in `docs/protocol.md`.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use maos_core::{AgentId, TaskId, fsx, now_ms};
use serde::{Deserialize, Serialize};

use crate::graph::FxMap;
use crate::{Error, Task, TaskStatus};

/// Snapshot format version.
pub(crate) const FORMAT: u32 = 1;
/// Largest snapshot a reader accepts.
const SNAPSHOT_LIMIT: u64 = 4 << 30;
/// A compaction happens once the current log holds more records than this or a quarter of
/// the task count, whichever is larger.
pub(crate) const COMPACT_MIN_RECORDS: u64 = 1024;

pub(crate) fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join("snapshot.json")
}

pub(crate) fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log.{generation}.jsonl"))
}

pub(crate) fn lock_path(dir: &Path) -> PathBuf {
    dir.join("lock")
}

/// One log record: `{"seq":..,"at":..,"by":..,"op":"..",...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) by: Option<AgentId>,
    /// More records of the same append follow (`"more":true` on every record of a
    /// multi-record append but the last). A reader applies an append only once its last
    /// record is there: a writer killed mid-append leaves complete lines of a torn batch,
    /// which are never applied and which the next writer truncates with the torn line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) more: bool,
    #[serde(flatten)]
    pub(crate) op: Op,
}

/// What a record does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    /// A new task (dependencies already present).
    Create { task: Box<Task> },
    /// A status change requested by a caller (validated before it was written).
    Status {
        task: TaskId,
        to: TaskStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// `agent` claimed the pending task: it is in progress and assigned to `agent`.
    Claim { task: TaskId, agent: AgentId },
    /// An active task goes back to the queue (its agent died): pending, unassigned.
    Release { task: TaskId, reason: String },
    /// Sets or clears the assignee.
    Assign {
        task: TaskId,
        #[serde(default)]
        agent: Option<AgentId>,
    },
    /// `task` now also depends on `dependency`.
    AddDependency { task: TaskId, dependency: TaskId },
    /// The log continues in `log.<generation>.jsonl`.
    Rotate { generation: u64 },
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    generation: u64,
    seq: u64,
    tasks: &'a [Task],
}

#[derive(Deserialize)]
struct SnapshotIn {
    format: u32,
    generation: u64,
    seq: u64,
    tasks: Vec<Task>,
}

/// A status change that happened (published on the `tasks` topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The task.
    pub task: TaskId,
    /// Its name.
    pub name: String,
    /// The status before (`None` for a new task).
    pub from: Option<TaskStatus>,
    /// The status after.
    pub to: TaskStatus,
    /// The assignee after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    /// The note recorded with the change (result, failure or blocking reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The log sequence number of the record that caused it.
    pub seq: u64,
}

/// The whole task graph in memory, plus the read position in the store.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) tasks: Vec<Task>,
    pub(crate) index: FxMap<TaskId, u32>,
    /// Reverse dependency index: who depends on each task.
    pub(crate) dependents: Vec<Vec<u32>>,
    /// Per task, how many of its dependencies are not completed yet.
    pub(crate) remaining: Vec<u32>,
    /// The last applied record.
    pub(crate) seq: u64,
    generation: u64,
    offset: u64,
    log_records: u64,
    log: Option<File>,
    loaded: bool,
    /// Downstream critical-path length of each task (ms), for the ready order.
    pub(crate) tail: Option<Vec<u64>>,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl State {
    pub(crate) fn idx(&self, id: &TaskId) -> Option<usize> {
        self.index.get(id).map(|&i| i as usize)
    }

    pub(crate) fn get(&self, id: &TaskId) -> Option<&Task> {
        self.idx(id).map(|i| &self.tasks[i])
    }

    fn reset(&mut self) {
        *self = State::default();
    }

    fn load_snapshot(&mut self, dir: &Path) -> Result<(), Error> {
        let path = snapshot_path(dir);
        self.reset();
        self.loaded = true;
        let bytes = match fsx::read_bounded(&path, SNAPSHOT_LIMIT) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let snap: SnapshotIn =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e.to_string()))?;
        if snap.format != FORMAT {
            return Err(corrupt(
                &path,
                format!("format {} (this reader knows {FORMAT})", snap.format),
            ));
        }
        self.generation = snap.generation;
        self.seq = snap.seq;
        self.tasks = snap.tasks;
        self.rebuild_indexes(&path)
    }

    fn rebuild_indexes(&mut self, path: &Path) -> Result<(), Error> {
        let n = self.tasks.len();
        self.index = FxMap::default();
        self.index.reserve(n);
        for (i, t) in self.tasks.iter().enumerate() {
            if self.index.insert(t.id.clone(), i as u32).is_some() {
                return Err(corrupt(path, format!("task {} appears twice", t.id)));
            }
        }
        self.dependents = vec![Vec::new(); n];
        self.remaining = vec![0; n];
        for i in 0..n {
            for d in 0..self.tasks[i].dependencies.len() {
                let dep = &self.tasks[i].dependencies[d];
                let Some(&j) = self.index.get(dep) else {
                    return Err(corrupt(
                        path,
                        format!("task {} depends on unknown {dep}", self.tasks[i].id),
                    ));
                };
                self.dependents[j as usize].push(i as u32);
                if self.tasks[j as usize].status != TaskStatus::Completed {
                    self.remaining[i] += 1;
                }
            }
        }
        Ok(())
    }

    /// Brings the state up to date with the store: loads the snapshot the first time, then
    /// reads and applies the log's new complete records.
    pub(crate) fn refresh(&mut self, dir: &Path) -> Result<(), Error> {
        if !self.loaded {
            self.load_snapshot(dir)?;
        }
        let mut reloads = 0;
        loop {
            if self.log.is_none() {
                let path = log_path(dir, self.generation);
                match fsx::open_read(&path) {
                    Ok(f) => self.log = Some(f),
                    Err(e) if e.is_not_found() => {
                        // Either no record was written in this generation yet, or we fell
                        // two compactions behind and the log is gone: the snapshot tells.
                        let generation = self.generation;
                        reloads += 1;
                        if reloads > 8 {
                            return Err(corrupt(&path, "log keeps disappearing"));
                        }
                        self.load_snapshot(dir)?;
                        if self.generation == generation {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !self.read_tail(dir)? {
                return Ok(());
            }
        }
    }

    /// Reads the current log from the cursor; returns true when it rotated to a new log.
    fn read_tail(&mut self, dir: &Path) -> Result<bool, Error> {
        let path = log_path(dir, self.generation);
        let Some(f) = self.log.as_ref() else {
            return Ok(false);
        };
        let len = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        if len <= self.offset {
            return Ok(false);
        }
        let mut buf = vec![0u8; (len - self.offset) as usize];
        let mut got = 0;
        while got < buf.len() {
            let n = f
                .read_at(&mut buf[got..], self.offset + got as u64)
                .map_err(|e| Error::io("read", &path, e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        // Records of the append being read; applied once its last record is read.
        let mut batch: Vec<Record> = Vec::new();
        let mut pos = 0;
        let mut committed = 0;
        while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
            let line = &buf[pos..pos + nl];
            let rec: Record = serde_json::from_slice(line).map_err(|e| {
                corrupt(
                    &path,
                    format!("record at byte {}: {e}", self.offset + pos as u64),
                )
            })?;
            pos += nl + 1;
            let expected = self.seq + 1 + batch.len() as u64;
            if rec.seq != expected {
                return Err(corrupt(
                    &path,
                    format!("record seq {} after seq {}", rec.seq, expected - 1),
                ));
            }
            let more = rec.more;
            batch.push(rec);
            if more {
                continue;
            }
            self.offset += (pos - committed) as u64;
            committed = pos;
            let mut rotated = false;
            for rec in batch.drain(..) {
                self.log_records += 1;
                self.apply(&rec);
                rotated |= matches!(rec.op, Op::Rotate { .. });
            }
            if rotated {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Appends `ops` as records (the caller holds the kernel lock and has refreshed), fsyncs,
    /// applies them and returns the status changes they caused.
    pub(crate) fn append(
        &mut self,
        dir: &Path,
        by: Option<&AgentId>,
        ops: Vec<Op>,
    ) -> Result<Vec<Change>, Error> {
        let path = log_path(dir, self.generation);
        let f = fsx::open_append(&path)?;
        let len = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        if len > self.offset {
            // A writer died in the middle of a record: drop the torn tail.
            tracing::debug!(path = %path.display(), torn = len - self.offset, "truncating torn log tail");
            f.set_len(self.offset)
                .map_err(|e| Error::io("truncate", &path, e))?;
        }
        let at = now_ms();
        let mut bytes = Vec::with_capacity(256 * ops.len());
        let mut recs = Vec::with_capacity(ops.len());
        let count = ops.len();
        for (k, op) in ops.into_iter().enumerate() {
            let rec = Record {
                seq: self.seq + 1 + k as u64,
                at,
                by: by.cloned(),
                more: k + 1 < count,
                op,
            };
            serde_json::to_writer(&mut bytes, &rec).map_err(|e| Error::Invalid {
                what: "task record",
                reason: e.to_string(),
            })?;
            bytes.push(b'\n');
            recs.push(rec);
        }
        (&f).write_all(&bytes)
            .and_then(|()| f.sync_data())
            .map_err(|e| Error::io("append", &path, e))?;
        self.log = Some(f);
        self.offset += bytes.len() as u64;
        let mut changes = Vec::new();
        for rec in &recs {
            self.log_records += 1;
            changes.extend(self.apply(rec));
        }
        Ok(changes)
    }

    /// Compacts when the log is long (the caller holds the kernel lock).
    pub(crate) fn maybe_compact(&mut self, dir: &Path) -> Result<(), Error> {
        let threshold = COMPACT_MIN_RECORDS.max(self.tasks.len() as u64 / 4);
        if self.log_records < threshold {
            return Ok(());
        }
        self.compact(dir)
    }

    /// Rotates to a new log generation and writes a snapshot (the caller holds the lock).
    pub(crate) fn compact(&mut self, dir: &Path) -> Result<(), Error> {
        let _span = tracing::debug_span!("compact", tasks = self.tasks.len()).entered();
        let next = self.generation + 1;
        let next_path = log_path(dir, next);
        // The next log exists before any record points to it.
        drop(fsx::open_append(&next_path)?);
        fsx::sync_dir(dir)?;
        self.append(dir, None, vec![Op::Rotate { generation: next }])?;
        let snap = SnapshotOut {
            format: FORMAT,
            generation: self.generation,
            seq: self.seq,
            tasks: &self.tasks,
        };
        let bytes = serde_json::to_vec(&snap).map_err(|e| Error::Invalid {
            what: "snapshot",
            reason: e.to_string(),
        })?;
        fsx::write_replace(&snapshot_path(dir), &bytes)?;
        if next >= 2 {
            fsx::remove_if_exists(&log_path(dir, next - 2))?;
        }
        Ok(())
    }

    /// Applies one record. Records were validated before they were written, so this never
    /// fails; it returns the status changes, dependents included.
    pub(crate) fn apply(&mut self, rec: &Record) -> Vec<Change> {
        self.seq = rec.seq;
        let at = rec.at;
        let mut changes = Vec::new();
        match &rec.op {
            Op::Create { task } => {
                let i = self.tasks.len();
                let mut t = (**task).clone();
                t.created_at = at;
                t.updated_at = at;
                t.revision = 1;
                let mut remaining = 0;
                let mut reason = None;
                for dep in &t.dependencies {
                    if let Some(&j) = self.index.get(dep) {
                        self.dependents[j as usize].push(i as u32);
                        let d = &self.tasks[j as usize];
                        if d.status != TaskStatus::Completed {
                            remaining += 1;
                        }
                        if d.status == TaskStatus::Failed {
                            reason = Some(failed_reason(d));
                        }
                    }
                }
                t.status = if remaining > 0 {
                    TaskStatus::Blocked
                } else {
                    TaskStatus::Pending
                };
                t.blocked_reason = reason;
                self.index.insert(t.id.clone(), i as u32);
                self.dependents.push(Vec::new());
                self.remaining.push(remaining);
                changes.push(change(&t, None, rec.seq));
                self.tasks.push(t);
                self.tail = None;
            }
            Op::Status { task, to, note } => {
                if let Some(i) = self.idx(task) {
                    self.set_status(
                        i,
                        *to,
                        note.clone(),
                        rec.by.as_ref(),
                        at,
                        rec.seq,
                        &mut changes,
                    );
                }
            }
            Op::Claim { task, agent } => {
                if let Some(i) = self.idx(task) {
                    self.tasks[i].assigned_to = Some(agent.clone());
                    self.set_status(
                        i,
                        TaskStatus::InProgress,
                        None,
                        Some(agent),
                        at,
                        rec.seq,
                        &mut changes,
                    );
                }
            }
            Op::Release { task, reason } => {
                if let Some(i) = self.idx(task) {
                    self.tasks[i].assigned_to = None;
                    self.set_status(
                        i,
                        TaskStatus::Pending,
                        Some(reason.clone()),
                        None,
                        at,
                        rec.seq,
                        &mut changes,
                    );
                }
            }
            Op::Assign { task, agent } => {
                if let Some(i) = self.idx(task) {
                    let t = &mut self.tasks[i];
                    t.assigned_to = agent.clone();
                    t.updated_at = at;
                    t.revision += 1;
                }
            }
            Op::AddDependency { task, dependency } => {
                if let (Some(i), Some(j)) = (self.idx(task), self.idx(dependency)) {
                    self.dependents[j].push(i as u32);
                    let dep_status = self.tasks[j].status;
                    let reason =
                        (dep_status == TaskStatus::Failed).then(|| failed_reason(&self.tasks[j]));
                    let t = &mut self.tasks[i];
                    t.dependencies.push(dependency.clone());
                    t.updated_at = at;
                    t.revision += 1;
                    if dep_status != TaskStatus::Completed {
                        self.remaining[i] += 1;
                        if t.status == TaskStatus::Pending {
                            t.status = TaskStatus::Blocked;
                            t.blocked_reason = reason;
                            changes.push(change(t, Some(TaskStatus::Pending), rec.seq));
                        }
                    }
                    self.tail = None;
                }
            }
            Op::Rotate { generation } => {
                self.generation = *generation;
                self.offset = 0;
                self.log_records = 0;
                self.log = None;
            }
        }
        changes
    }

    #[allow(clippy::too_many_arguments)] // one record's worth of context
    fn set_status(
        &mut self,
        i: usize,
        to: TaskStatus,
        note: Option<String>,
        by: Option<&AgentId>,
        at: u64,
        seq: u64,
        changes: &mut Vec<Change>,
    ) {
        let from = self.tasks[i].status;
        // Back to the queue with dependencies outstanding (a retry after new ones) is Blocked.
        let to = if to == TaskStatus::Pending && self.remaining[i] > 0 {
            TaskStatus::Blocked
        } else {
            to
        };
        {
            let t = &mut self.tasks[i];
            t.status = to;
            t.updated_at = at;
            t.revision += 1;
            if note.is_some() {
                t.note = note;
            }
            match to {
                TaskStatus::InProgress if from != TaskStatus::Review => {
                    t.started_at = Some(at);
                    t.attempts += 1;
                    if t.assigned_to.is_none() {
                        t.assigned_to = by.cloned();
                    }
                }
                TaskStatus::Completed => t.completed_at = Some(at),
                _ => {}
            }
            changes.push(change(t, Some(from), seq));
        }
        let id = self.tasks[i].id.clone();
        match to {
            TaskStatus::Completed => {
                // O(dependents): each dependent's outstanding count drops by one.
                for k in 0..self.dependents[i].len() {
                    let d = self.dependents[i][k] as usize;
                    self.remaining[d] = self.remaining[d].saturating_sub(1);
                    let dt = &mut self.tasks[d];
                    if self.remaining[d] == 0 && dt.status == TaskStatus::Blocked {
                        dt.status = TaskStatus::Pending;
                        dt.blocked_reason = None;
                        dt.updated_at = at;
                        dt.revision += 1;
                        changes.push(change(dt, Some(TaskStatus::Blocked), seq));
                    }
                }
            }
            TaskStatus::Failed => {
                let reason = failed_reason(&self.tasks[i]);
                for k in 0..self.dependents[i].len() {
                    let d = self.dependents[i][k] as usize;
                    let dt = &mut self.tasks[d];
                    if dt.status == TaskStatus::Blocked {
                        dt.blocked_reason = Some(reason.clone());
                        dt.updated_at = at;
                        dt.revision += 1;
                        let mut c = change(dt, Some(TaskStatus::Blocked), seq);
                        c.note = Some(reason.clone());
                        changes.push(c);
                    }
                }
            }
            _ if from == TaskStatus::Failed => {
                let prefix = failed_prefix(&id);
                for k in 0..self.dependents[i].len() {
                    let d = self.dependents[i][k] as usize;
                    let dt = &mut self.tasks[d];
                    if dt
                        .blocked_reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with(&prefix))
                    {
                        dt.blocked_reason = None;
                        dt.updated_at = at;
                        dt.revision += 1;
                    }
                }
            }
            _ => {}
        }
    }
}

fn failed_prefix(id: &TaskId) -> String {
    format!("dependency {id} failed")
}

fn failed_reason(t: &Task) -> String {
    match &t.note {
        Some(n) => format!("{}: {n}", failed_prefix(&t.id)),
        None => failed_prefix(&t.id),
    }
}

fn change(t: &Task, from: Option<TaskStatus>, seq: u64) -> Change {
    Change {
        task: t.id.clone(),
        name: t.name.clone(),
        from,
        to: t.status,
        agent: t.assigned_to.clone(),
        note: if t.status == TaskStatus::Blocked {
            t.blocked_reason.clone()
        } else {
            t.note.clone()
        },
        seq,
    }
}
