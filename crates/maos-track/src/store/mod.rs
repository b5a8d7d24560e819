//! The task store behind [`TaskTracker`](crate::TaskTracker): files under `.maos/tasks/`,
//! and the one narrow interface the tracker uses (a transaction that applies a validated
//! batch of records; reads of a caught-up [`Graph`]: tasks by id, the ready set, pages).
//! A PostgreSQL backend would implement the same three things.
//!
//! Files (`docs/protocol.md`, section 8):
//! - `lock`: the writers' kernel lock;
//! - `current`: `{"generation":G}`, where a fresh reader starts;
//! - `snapshot.<G>`: the graph when generation `G` began (none for generation 0), read by
//!   position ([`snapshot`]);
//! - `log.<G>.jsonl`: the records since, one JSON object per line ([`record`], [`log`]).
//!
//! A compaction writes `snapshot.<G+1>`, creates `log.<G+1>.jsonl`, appends a `rotate` record
//! to `log.<G>.jsonl` (the commit point), updates `current` and removes generations older than
//! `G`. Readers that follow a rotation switch to the new snapshot, so every process with the
//! same records has the same graph.

pub(crate) mod doctor;
pub(crate) mod graph;
pub(crate) mod log;
pub(crate) mod record;
pub(crate) mod snapshot;

use std::path::{Path, PathBuf};
use std::time::Duration;

use maos_core::fsx::{self, DataFile, LockFile};
use maos_core::{TaskId, now_ms};
use serde::{Deserialize, Serialize};

use self::graph::Graph;
use self::log::{LogCursor, TailEnd};
use self::record::{Author, Op, Record};
use self::snapshot::{Snapshot, corrupt};
use crate::Error;
use crate::notify::Effect;

/// A compaction happens once the current log holds this many records: it bounds what a
/// fresh process replays (the cost of a command is the records since the snapshot plus what
/// the command reads), and costs one pass over the graph per this many writes.
pub(crate) const COMPACT_RECORDS: u64 = 512;

pub(crate) fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot.{generation}"))
}

pub(crate) fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log.{generation}.jsonl"))
}

pub(crate) fn current_path(dir: &Path) -> PathBuf {
    dir.join("current")
}

pub(crate) fn lock_path(dir: &Path) -> PathBuf {
    dir.join("lock")
}

/// The format-1 snapshot of an older maos.
fn legacy_snapshot_path(dir: &Path) -> PathBuf {
    dir.join("snapshot.json")
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Current {
    pub(crate) generation: u64,
}

/// Reads `current`; `None` when it does not exist.
pub(crate) fn read_current(dir: &Path) -> Result<Option<u64>, Error> {
    let path = current_path(dir);
    match fsx::read_json::<Current>(&path, 4096) {
        Ok(c) => Ok(Some(c.generation)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(maos_core::Error::Corrupt { reason, .. }) => Err(corrupt(&path, reason)),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn write_current(dir: &Path, generation: u64) -> Result<(), Error> {
    let mut bytes = serde_json::to_vec(&Current { generation }).map_err(|e| Error::Invalid {
        what: "current",
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    fsx::write_replace(&current_path(dir), &bytes)?;
    Ok(())
}

/// The generation files in `dir`: (generation, is snapshot, path).
pub(crate) fn generation_files(dir: &Path) -> Result<Vec<(u64, bool, PathBuf)>, Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(g) = name
            .strip_prefix("snapshot.")
            .and_then(|g| g.parse::<u64>().ok())
        {
            out.push((g, true, entry.path()));
        } else if let Some(g) = name
            .strip_prefix("log.")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .and_then(|g| g.parse::<u64>().ok())
        {
            out.push((g, false, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A process's view of the store: the graph and where it is in the log.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) graph: Graph,
    pub(crate) generation: u64,
    /// Reading position; `None` while the generation's log does not exist (a new store).
    cursor: Option<LogCursor>,
    /// The append handle of the current log (writers).
    writer: Option<DataFile>,
    /// `current` exists (the store was created).
    created: bool,
}

/// What one round of catching up did.
enum Step {
    /// Caught up with the current log.
    Caught,
    /// Switched logs (a rotation, or the log of a new store appeared): go on.
    Again,
    /// The files of this generation are gone because later compactions removed them: start
    /// over from `current`.
    FellBehind,
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Core(c) if c.is_not_found())
}

impl State {
    /// Loads the store in `dir` as a fresh reader does (`docs/protocol.md`, "Reading"); the
    /// log is not read yet ([`refresh`](Self::refresh) does). A file of the generation
    /// `current` named that is gone because compactions moved `current` on meanwhile is not
    /// an error: the load starts over.
    pub(crate) fn load(dir: &Path) -> Result<Self, Error> {
        let mut attempts = 0;
        loop {
            match Self::load_once(dir) {
                Err(e) if attempts < 8 && current_moved(dir, &e) => attempts += 1,
                other => return other,
            }
        }
    }

    fn load_once(dir: &Path) -> Result<Self, Error> {
        if legacy_snapshot_path(dir).exists() {
            return Err(corrupt(
                &legacy_snapshot_path(dir),
                "this is the format-1 task store of an older maos; this maos reads format 2 \
                 (move .maos/tasks aside and re-create the tasks, or use the older maos)",
            ));
        }
        let (generation, created) = match read_current(dir)? {
            Some(g) => (g, true),
            None => {
                let files = generation_files(dir)?;
                if let Some((g, _, p)) = files.iter().find(|(g, snap, _)| *g > 0 || *snap) {
                    return Err(corrupt(
                        &current_path(dir),
                        format!(
                            "it is missing, but generation {g} files exist ({}): the store \
                             cannot tell where its history starts",
                            p.display()
                        ),
                    ));
                }
                (0, false)
            }
        };
        let base = if generation > 0 {
            let p = snapshot_path(dir, generation);
            match Snapshot::open(&p, generation) {
                Ok(s) => Some(s),
                Err(e) if is_not_found(&e) => {
                    return Err(corrupt(
                        &p,
                        format!("it is missing, but `current` names generation {generation}"),
                    ));
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let path = log_path(dir, generation);
        let cursor = match log::open_log(&path)? {
            Some(file) => Some(LogCursor {
                generation,
                offset: 0,
                records: 0,
                file,
            }),
            None if generation > 0 || created => {
                return Err(corrupt(
                    &path,
                    format!(
                        "it is missing, but `current` names generation {generation}: its \
                         records are lost unless the file is restored"
                    ),
                ));
            }
            None => None,
        };
        Ok(Self {
            graph: Graph::new(base),
            generation,
            cursor,
            writer: None,
            created,
        })
    }

    /// Catches up with the log, following rotations.
    pub(crate) fn refresh(&mut self, dir: &Path) -> Result<(), Error> {
        let mut reloads = 0;
        loop {
            match self.step(dir)? {
                Step::Caught => return Ok(()),
                Step::Again => {}
                Step::FellBehind => {
                    reloads += 1;
                    if reloads > 8 {
                        return Err(corrupt(
                            &log_path(dir, self.generation),
                            "the logs keep disappearing while being read",
                        ));
                    }
                    *self = State::load(dir)?;
                }
            }
        }
    }

    fn step(&mut self, dir: &Path) -> Result<Step, Error> {
        let Some(cursor) = &mut self.cursor else {
            // A new store: its log appears with the first write.
            let path = log_path(dir, self.generation);
            return Ok(match log::open_log(&path)? {
                Some(file) => {
                    self.cursor = Some(LogCursor {
                        generation: self.generation,
                        offset: 0,
                        records: 0,
                        file,
                    });
                    Step::Again
                }
                None => Step::Caught,
            });
        };
        let path = log_path(dir, cursor.generation);
        match cursor.read_tail(&path, &mut self.graph)? {
            TailEnd::Caught => Ok(Step::Caught),
            TailEnd::Rotated { generation, seq } => self.follow(dir, generation, seq),
        }
    }

    /// Switches to generation `generation`, whose snapshot must hold the graph at `seq`.
    fn follow(&mut self, dir: &Path, generation: u64, seq: u64) -> Result<Step, Error> {
        let sp = snapshot_path(dir, generation);
        let snap = match Snapshot::open(&sp, generation) {
            Ok(s) => s,
            Err(e) if is_not_found(&e) => return missing(dir, generation, &sp),
            Err(e) => return Err(e),
        };
        if snap.seq() != seq {
            return Err(corrupt(
                &sp,
                format!(
                    "it holds the graph at seq {}, but the rotate record naming it is seq \
                     {seq}: it does not match the logs",
                    snap.seq()
                ),
            ));
        }
        if snap.count() != self.graph.count() {
            return Err(corrupt(
                &sp,
                format!(
                    "it holds {} tasks, but the log before it created {}: it does not match \
                     the logs",
                    snap.count(),
                    self.graph.count()
                ),
            ));
        }
        let lp = log_path(dir, generation);
        let Some(file) = log::open_log(&lp)? else {
            return missing(dir, generation, &lp);
        };
        self.graph = Graph::new(Some(snap));
        self.generation = generation;
        self.cursor = Some(LogCursor {
            generation,
            offset: 0,
            records: 0,
            file,
        });
        self.writer = None;
        Ok(Step::Again)
    }

    /// Records in the current log.
    pub(crate) fn log_records(&self) -> u64 {
        self.cursor.as_ref().map_or(0, |c| c.records)
    }

    /// Makes everything appended to the current log durable (one `fdatasync` covers the
    /// appends of every process before it).
    fn sync(&self) -> Result<(), Error> {
        if let Some(w) = &self.writer {
            w.sync_data()?;
        }
        Ok(())
    }

    fn offset(&self) -> u64 {
        self.cursor.as_ref().map_or(0, |c| c.offset)
    }

    /// Appends `records` (already applied to the graph), durable at once with `durable` (else
    /// by [`State::sync`] after the lock is released); creates the store (`log.0.jsonl`, then
    /// `current`) on its first write.
    fn append(&mut self, dir: &Path, records: &[Record], durable: bool) -> Result<(), Error> {
        let offset = self.offset();
        if self.writer.is_none() {
            self.writer = Some(DataFile::open_append(&log_path(dir, self.generation))?);
        }
        let writer = self.writer.as_mut().ok_or_else(|| Error::Invalid {
            what: "task log",
            reason: "no writer".into(),
        })?;
        let written = log::append(writer, offset, records, durable)?;
        match &mut self.cursor {
            Some(c) => {
                c.offset += written;
                c.records += records.len() as u64;
            }
            None => {
                let file = fsx::open_read(&log_path(dir, self.generation))?;
                self.cursor = Some(LogCursor {
                    generation: self.generation,
                    offset: written,
                    records: records.len() as u64,
                    file,
                });
            }
        }
        if !self.created {
            write_current(dir, self.generation)?;
            self.created = true;
        }
        Ok(())
    }
}

/// True when `e` says a file of the generation the load started from is missing, and
/// `current` names another generation by now.
fn current_moved(dir: &Path, e: &Error) -> bool {
    let Error::Corrupt { path, .. } = e else {
        return false;
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let generation = name
        .strip_prefix("snapshot.")
        .or_else(|| {
            name.strip_prefix("log.")
                .and_then(|r| r.strip_suffix(".jsonl"))
        })
        .and_then(|g| g.parse::<u64>().ok());
    match (generation, read_current(dir)) {
        (Some(g), Ok(Some(c))) => c != g && !path.exists(),
        _ => false,
    }
}

/// A file a reader needs is missing: fine if later compactions removed it (start over),
/// an error naming it otherwise.
fn missing(dir: &Path, generation: u64, path: &Path) -> Result<Step, Error> {
    match read_current(dir)? {
        Some(c) if c >= generation.saturating_add(2) => Ok(Step::FellBehind),
        _ => Err(corrupt(
            path,
            format!(
                "it is missing, but the log of generation {} rotates to generation \
                 {generation}: the records since are lost unless the file is restored",
                generation.saturating_sub(1)
            ),
        )),
    }
}

/// A write in progress: each [`push`](Tx::push) validates a record against the graph and
/// applies it, so later decisions of the same write see its effects; the records are
/// appended together when the write ends.
pub(crate) struct Tx<'a> {
    pub(crate) graph: &'a mut Graph,
    author: &'a Author,
    force: bool,
    at: u64,
    records: Vec<Record>,
    effects: Vec<Effect>,
    /// A record was applied (or failed half-way): the graph no longer matches the files.
    dirty: bool,
}

impl Tx<'_> {
    /// Validates `op` and applies it.
    ///
    /// # Errors
    /// What [`Graph::apply`] refuses: the write fails and nothing of it is written.
    pub(crate) fn push(&mut self, op: Op) -> Result<(), Error> {
        let rec = Record {
            seq: self.graph.seq + 1,
            at: self.at,
            by: self.author.by.clone(),
            force: self.force,
            more: false,
            op,
        };
        self.dirty = true;
        self.graph.apply(&rec, &mut self.effects)?;
        self.records.push(rec);
        Ok(())
    }

    /// Marks the records pushed from now on as forced (the author acts on a task another
    /// agent owns, on purpose).
    pub(crate) fn set_force(&mut self, on: bool) {
        self.force = on;
    }
}

/// What a write did.
#[derive(Debug)]
pub(crate) struct Written<R> {
    pub(crate) value: R,
    /// The sequence number of its last record (0 when it wrote nothing).
    pub(crate) seq: u64,
    pub(crate) effects: Vec<Effect>,
}

/// Settings of a [`Store`].
#[derive(Debug, Clone)]
pub(crate) struct StoreOptions {
    pub(crate) lock_timeout: Duration,
    pub(crate) compact_records: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            lock_timeout: fsx::DEFAULT_GUARD_TIMEOUT,
            compact_records: COMPACT_RECORDS,
        }
    }
}

/// The task store of one workspace, as one process uses it.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    lock: LockFile,
    options: StoreOptions,
    /// `None` until first used, and after an error left it out of step with the files.
    state: Option<State>,
}

impl Store {
    /// Opens the store in `dir` (creating the directory and its lock file).
    pub(crate) fn open(dir: &Path, options: StoreOptions) -> Result<Self, Error> {
        fsx::create_dir_private(dir)?;
        let lock = LockFile::open(&lock_path(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            lock,
            options,
            state: None,
        })
    }

    /// The graph, caught up with the log.
    pub(crate) fn read(&mut self) -> Result<&mut Graph, Error> {
        self.refreshed().map(|st| &mut st.graph)
    }

    fn refreshed(&mut self) -> Result<&mut State, Error> {
        let dir = self.dir.clone();
        let st = match &mut self.state {
            Some(st) => st,
            none => none.insert(State::load(&dir)?),
        };
        if let Err(e) = st.refresh(&dir) {
            self.state = None;
            return Err(e);
        }
        self.state.as_mut().ok_or_else(|| Error::Invalid {
            what: "task store",
            reason: "no state".into(),
        })
    }

    /// Runs one write: takes the kernel lock (waiting at most the lock timeout), catches
    /// up, lets `f` push records (each validated and applied), appends them in one write and
    /// fsyncs, compacts when the log is long, and unlocks.
    pub(crate) fn write<R>(
        &mut self,
        author: &Author,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, Error>,
    ) -> Result<Written<R>, Error> {
        let dir = self.dir.clone();
        // Catch up before taking the lock, as a reader does (the log is read without it):
        // under the lock only the records appended meanwhile are left to read and apply.
        // With many writers, the records of all the others since this process's last write
        // would otherwise be parsed and applied while every other writer waits. A failure
        // here only drops the state: the locked catch-up below loads it again and reports.
        let caught_up = match &mut self.state {
            Some(st) => st.refresh(&dir),
            none => State::load(&dir).map(|st| {
                none.replace(st);
            }),
        };
        if caught_up.is_err() {
            self.state = None;
        }
        let _guard = self.lock.exclusive(self.options.lock_timeout)?;
        let compact_records = self.options.compact_records;
        let st = match &mut self.state {
            Some(st) => st,
            none => none.insert(State::load(&dir)?),
        };
        if let Err(e) = st.refresh(&dir) {
            self.state = None;
            return Err(e);
        }
        let mut tx = Tx {
            graph: &mut st.graph,
            author,
            force: author.force,
            at: now_ms(),
            records: Vec::new(),
            effects: Vec::new(),
            dirty: false,
        };
        let value = match f(&mut tx) {
            Ok(v) => v,
            Err(e) => {
                if tx.dirty {
                    self.state = None;
                }
                return Err(e);
            }
        };
        let Tx {
            mut records,
            effects,
            ..
        } = tx;
        if records.is_empty() {
            return Ok(Written {
                value,
                seq: 0,
                effects,
            });
        }
        let last = records.len() - 1;
        for r in &mut records[..last] {
            r.more = true;
        }
        let seq = records[last].seq;
        if let Err(e) = st.append(&dir, &records, false) {
            self.state = None;
            return Err(e);
        }
        if st.log_records() >= compact_records {
            // Durable first (under the lock, once per compaction), so that a failed
            // compaction only costs read time.
            if let Err(e) = st.sync() {
                self.state = None;
                return Err(e);
            }
            if let Err(e) = compact(&dir, st) {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "task store compaction failed"
                );
                self.state = None;
            }
        } else {
            // Group commit: the lock is released before the `fdatasync`, so the writers
            // waiting for it append meanwhile and share flushes. Nothing is acknowledged
            // (returned) before it is durable; a reader may see records that are not yet,
            // and whatever a writer acknowledges after reading them made them durable too
            // (they precede its own records in the same file).
            drop(_guard);
            if let Err(e) = st.sync() {
                self.state = None;
                return Err(e);
            }
        }
        Ok(Written {
            value,
            seq,
            effects,
        })
    }

    /// Compacts now (under the lock).
    pub(crate) fn compact(&mut self) -> Result<(), Error> {
        let dir = self.dir.clone();
        let _guard = self.lock.exclusive(self.options.lock_timeout)?;
        let st = match &mut self.state {
            Some(st) => st,
            none => none.insert(State::load(&dir)?),
        };
        let r = st.refresh(&dir).and_then(|()| compact(&dir, st));
        if r.is_err() {
            self.state = None;
        }
        r
    }

    /// Drops the in-memory state: the next use reloads it from the files.
    pub(crate) fn forget(&mut self) {
        self.state = None;
    }

    /// Takes the writers' lock for `f` (doctor's repairs).
    pub(crate) fn locked<R>(
        &mut self,
        f: impl FnOnce(&Path) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let _guard = self.lock.exclusive(self.options.lock_timeout)?;
        self.state = None;
        f(&self.dir)
    }
}

/// Starts generation G+1: `snapshot.<G+1>`, an empty `log.<G+1>.jsonl`, the `rotate` record
/// in `log.<G>.jsonl` (the commit point), `current`, then removes generations before G.
fn compact(dir: &Path, st: &mut State) -> Result<(), Error> {
    let _span = tracing::debug_span!("compact", tasks = st.graph.count()).entered();
    let next = st.generation + 1;
    let rotate_seq = st.graph.seq + 1;
    let bytes = compact_bytes(&st.graph, next, rotate_seq)?;
    fsx::write_replace(&snapshot_path(dir, next), &bytes)?;
    let next_log = DataFile::open_append(&log_path(dir, next))?;
    if next_log.len()? > 0 {
        // Left by a compaction whose rotate record never became durable: no writer appends
        // to a log before the rotate naming it is durable, so it holds nothing acknowledged.
        next_log.set_len(0)?;
        next_log.sync_data()?;
    }
    let rotate = Record {
        seq: rotate_seq,
        at: now_ms(),
        by: None,
        force: false,
        more: false,
        op: Op::Rotate { generation: next },
    };
    let mut effects = Vec::new();
    st.graph.apply(&rotate, &mut effects)?;
    // The commit point of the rotation: durable before `current` names the new generation
    // (it also makes the writes before it in this log durable).
    st.append(dir, std::slice::from_ref(&rotate), true)?;
    write_current(dir, next)?;
    for (g, _, path) in generation_files(dir)? {
        if g < st.generation {
            fsx::remove_if_exists(&path)?;
        }
    }
    let snap = Snapshot::open(&snapshot_path(dir, next), next)?;
    st.graph = Graph::new(Some(snap));
    st.generation = next;
    st.cursor = Some(LogCursor {
        generation: next,
        offset: 0,
        records: 0,
        file: fsx::open_read(&log_path(dir, next))?,
    });
    // Keep the append handle of the new log.
    st.writer = Some(next_log);
    Ok(())
}

/// The snapshot of `graph` for generation `generation` at `seq`.
pub(crate) fn compact_bytes(graph: &Graph, generation: u64, seq: u64) -> Result<Vec<u8>, Error> {
    use std::borrow::Cow;

    use self::snapshot::{Contents, ENTRY_BYTES, Item};
    let n = graph.count() as usize;
    let base = graph.base.as_ref();
    let (base_tasks, base_hist, base_entries, base_ids) = match base {
        Some(b) => {
            let s = b.header.sections;
            let entries = b.section(s.entries)?;
            let decoded = entries
                .chunks_exact(ENTRY_BYTES)
                .enumerate()
                .map(|(k, r)| b.decode_entry(k as u32, r))
                .collect::<Result<Vec<_>, _>>()?;
            (
                b.section(s.tasks)?,
                b.section(s.history)?,
                decoded,
                b.all_ids()?,
            )
        }
        None => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
    };
    let mut agents: Vec<maos_core::AgentId> =
        base.map(|b| b.header.agents.clone()).unwrap_or_default();
    let mut agent_code: crate::graph::FxMap<maos_core::AgentId, u32> = agents
        .iter()
        .enumerate()
        .map(|(k, a)| (a.clone(), k as u32 + 1))
        .collect();
    let nodes = graph.nodes();
    let mut items = Vec::with_capacity(n);
    let mut dependents: Vec<Vec<u32>> = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    for ord in 0..n as u32 {
        if let Some(node) = nodes.get(&ord) {
            let assignee = match &node.task.assigned_to {
                None => 0,
                Some(a) => *agent_code.entry(a.clone()).or_insert_with(|| {
                    agents.push(a.clone());
                    agents.len() as u32
                }),
            };
            let history_json = match (base, node.base_history) {
                (Some(b), Some((o, l, crc))) => {
                    let s = b.header.sections;
                    let from = (o - s.history[0]) as usize;
                    let old = base_hist
                        .get(from..from + l as usize)
                        .filter(|x| crc32fast::hash(x) == crc)
                        .ok_or_else(|| {
                            corrupt(
                                b.path(),
                                format!("the history of task number {ord} fails its checksum"),
                            )
                        })?;
                    splice_history(old, &node.history)?
                }
                _ => to_json(&node.history)?,
            };
            items.push(Item {
                task_json: Cow::Owned(to_json(&node.task)?),
                history_json: Cow::Owned(history_json),
                status: node.task.status,
                priority: node.task.priority,
                remaining: node.remaining,
                assignee,
                weight: crate::graph::weight_ms(&node.task),
            });
            weights.push(crate::graph::weight_ms(&node.task));
            dependents.push(node.dependents.clone());
        } else {
            let b = base.ok_or_else(|| Error::Invalid {
                what: "task number",
                reason: format!("{ord} is neither in the snapshot nor in the overlay"),
            })?;
            let e = base_entries
                .get(ord as usize)
                .ok_or_else(|| corrupt(b.path(), format!("entry {ord} is missing")))?;
            let slice = |buf: &'_ [u8], start: u64, (o, l, crc): (u64, u32, u32)| {
                let from = (o - start) as usize;
                buf.get(from..from + l as usize)
                    .filter(|x| crc32fast::hash(x) == crc)
                    .map(|x| x.to_vec())
                    .ok_or_else(|| {
                        corrupt(b.path(), format!("task number {ord} fails its checksum"))
                    })
            };
            let s = b.header.sections;
            items.push(Item {
                task_json: Cow::Owned(slice(&base_tasks, s.tasks[0], e.task)?),
                history_json: Cow::Owned(slice(&base_hist, s.history[0], e.history)?),
                status: e.status,
                priority: e.priority,
                remaining: e.remaining,
                assignee: e.assignee,
                weight: e.weight,
            });
            weights.push(e.weight);
            dependents.push(b.dependents(e)?);
        }
    }
    // Ranks: the downstream critical path over the whole graph.
    let mut deps: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, ds) in dependents.iter().enumerate() {
        for &d in ds {
            let d = d as usize;
            if d >= n {
                return Err(Error::Invalid {
                    what: "dependents",
                    reason: format!("task number {i} names dependent {d} of {n}"),
                });
            }
            deps[d].push(i as u32);
        }
    }
    let ranks = match crate::graph::topo_order(&deps, &dependents) {
        Ok(_) => crate::graph::downstream(&deps, &dependents, |i| weights[i]),
        Err(()) => {
            let cyc = crate::graph::find_cycle(&deps).unwrap_or_default();
            let mut cycle = Vec::new();
            for k in cyc {
                cycle.push(task_id_of(graph, k)?);
            }
            return Err(Error::Cycle { cycle });
        }
    };
    let mut new_ids: Vec<(TaskId, u32)> = graph.new_ids();
    new_ids.sort();
    let mut ids: Vec<(&str, u32)> = Vec::with_capacity(n);
    let (mut a, mut b) = (base_ids.iter().peekable(), new_ids.iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(x), Some(y)) => x.0.as_bytes() < y.0.as_str().as_bytes(),
        };
        if take_a {
            if let Some((id, o)) = a.next() {
                ids.push((id.as_str(), *o));
            }
        } else if let Some((id, o)) = b.next() {
            ids.push((id.as_str(), *o));
        }
    }
    if ids.len() != n {
        return Err(Error::Invalid {
            what: "task ids",
            reason: format!("{} ids for {n} tasks", ids.len()),
        });
    }
    snapshot::encode(&Contents {
        generation,
        seq,
        agents,
        items,
        dependents,
        ranks,
        ids,
    })
}

fn task_id_of(graph: &Graph, ord: u32) -> Result<TaskId, Error> {
    Ok(graph.task(ord)?.id)
}

/// The JSON array `old` with `new` events appended.
fn splice_history(old: &[u8], new: &[crate::history::Event]) -> Result<Vec<u8>, Error> {
    if new.is_empty() {
        return Ok(old.to_vec());
    }
    let trimmed = old.trim_ascii_end();
    let Some((b']', head)) = trimmed.split_last() else {
        return Err(Error::Invalid {
            what: "history",
            reason: "a history line is not a JSON array".into(),
        });
    };
    let mut out = head.to_vec();
    let empty = head.trim_ascii() == b"[";
    for (k, e) in new.iter().enumerate() {
        if k > 0 || !empty {
            out.push(b',');
        }
        out.extend_from_slice(&to_json(e)?);
    }
    out.push(b']');
    Ok(out)
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Invalid {
        what: "snapshot",
        reason: e.to_string(),
    })
}
