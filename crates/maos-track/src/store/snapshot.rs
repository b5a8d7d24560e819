//! `snapshot.<G>`: the whole task graph at a sequence number, readable with random access.
//!
//! A fresh process reads only what a command touches: the header line, then fixed-width
//! entries, sorted ids and the ready list by position (`pread`), and the JSON of the tasks it
//! returns. Layout (`docs/protocol.md`, section 8):
//!
//! ```text
//! {"format":2,"generation":G,"seq":S,"count":N,"counts":[..],"agents":[..],"sections":{..},"crc":C}\n
//! tasks       N JSON lines, one task object per line, in creation order
//! history     N JSON lines, one array of events per line
//! entries     N x 72 bytes (little-endian), see `Entry`
//! dependents  u32 ordinals, the dependents of task i at entries[i].dep_start..+dep_count
//! ids         N x 8 bytes (ordinal u32, end of its id in idtext u32), sorted by id bytes
//! idtext      the ids in that order, concatenated
//! ready       u32 ordinals of the pending tasks, in claim order
//! active      u32 ordinals of the in-progress and review tasks, ascending
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use maos_core::{AgentId, Priority, TaskId, fsx};
use serde::{Deserialize, Serialize};

use crate::history::Event;
use crate::{Error, Task, TaskStatus};

/// Snapshot format version.
pub(crate) const FORMAT: u32 = 2;
/// Longest header line a reader accepts.
const HEADER_LIMIT: usize = 16 << 20;
/// Bytes per entry.
pub(crate) const ENTRY_BYTES: usize = 72;
/// Bytes per sorted-id slot.
const ID_BYTES: usize = 8;

/// Byte ranges `[offset, length]` of the sections, from the start of the file.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Sections {
    pub(crate) tasks: [u64; 2],
    pub(crate) history: [u64; 2],
    pub(crate) entries: [u64; 2],
    pub(crate) dependents: [u64; 2],
    pub(crate) ids: [u64; 2],
    pub(crate) idtext: [u64; 2],
    pub(crate) ready: [u64; 2],
    pub(crate) active: [u64; 2],
}

impl Sections {
    fn all(&self) -> [(&'static str, [u64; 2]); 8] {
        [
            ("tasks", self.tasks),
            ("history", self.history),
            ("entries", self.entries),
            ("dependents", self.dependents),
            ("ids", self.ids),
            ("idtext", self.idtext),
            ("ready", self.ready),
            ("active", self.active),
        ]
    }
}

/// The first line of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) format: u32,
    pub(crate) generation: u64,
    /// The last record reflected.
    pub(crate) seq: u64,
    /// Number of tasks.
    pub(crate) count: u32,
    /// Tasks per status code (`TaskStatus::code`).
    pub(crate) counts: [u64; 7],
    /// The assignees; an entry's `assignee` k > 0 is `agents[k - 1]`.
    pub(crate) agents: Vec<AgentId>,
    pub(crate) sections: Sections,
    /// CRC-32 of every byte after the header line.
    pub(crate) crc: u32,
}

/// One row of the entry table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The task's JSON line: absolute offset, length (no newline), CRC-32.
    pub(crate) task: (u64, u32, u32),
    /// The history's JSON line: absolute offset, length, CRC-32.
    pub(crate) history: (u64, u32, u32),
    /// Downstream critical path (ms), for the ready order.
    pub(crate) rank: u64,
    /// The task's own weight (estimate in ms, or the default).
    pub(crate) weight: u64,
    pub(crate) dep_start: u32,
    pub(crate) dep_count: u32,
    /// Dependencies not completed yet.
    pub(crate) remaining: u32,
    /// 0: unassigned; k: `agents[k - 1]`.
    pub(crate) assignee: u32,
    pub(crate) status: TaskStatus,
    pub(crate) priority: Priority,
}

pub(crate) fn priority_code(p: Priority) -> u8 {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
        Priority::Critical => 3,
    }
}

fn priority_of(c: u8) -> Option<Priority> {
    Some(match c {
        0 => Priority::Low,
        1 => Priority::Normal,
        2 => Priority::High,
        3 => Priority::Critical,
        _ => return None,
    })
}

impl Entry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.task.0.to_le_bytes());
        out.extend_from_slice(&self.task.1.to_le_bytes());
        out.extend_from_slice(&self.task.2.to_le_bytes());
        out.extend_from_slice(&self.history.0.to_le_bytes());
        out.extend_from_slice(&self.history.1.to_le_bytes());
        out.extend_from_slice(&self.history.2.to_le_bytes());
        out.extend_from_slice(&self.rank.to_le_bytes());
        out.extend_from_slice(&self.weight.to_le_bytes());
        out.extend_from_slice(&self.dep_start.to_le_bytes());
        out.extend_from_slice(&self.dep_count.to_le_bytes());
        out.extend_from_slice(&self.remaining.to_le_bytes());
        out.extend_from_slice(&self.assignee.to_le_bytes());
        out.push(self.status.code());
        out.push(priority_code(self.priority));
        out.extend_from_slice(&[0u8; 6]);
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let u64_at = |o: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
        };
        let u32_at = |o: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
        };
        Some(Self {
            task: (u64_at(0)?, u32_at(8)?, u32_at(12)?),
            history: (u64_at(16)?, u32_at(24)?, u32_at(28)?),
            rank: u64_at(32)?,
            weight: u64_at(40)?,
            dep_start: u32_at(48)?,
            dep_count: u32_at(52)?,
            remaining: u32_at(56)?,
            assignee: u32_at(60)?,
            status: TaskStatus::from_code(*b.get(64)?)?,
            priority: priority_of(*b.get(65)?)?,
        })
    }
}

/// What a compaction hands to [`encode`] for one task.
pub(crate) struct Item<'a> {
    pub(crate) task_json: std::borrow::Cow<'a, [u8]>,
    pub(crate) history_json: std::borrow::Cow<'a, [u8]>,
    pub(crate) status: TaskStatus,
    pub(crate) priority: Priority,
    pub(crate) remaining: u32,
    pub(crate) assignee: u32,
    pub(crate) weight: u64,
}

/// Everything a snapshot holds, ready to be encoded.
pub(crate) struct Contents<'a> {
    pub(crate) generation: u64,
    pub(crate) seq: u64,
    pub(crate) agents: Vec<AgentId>,
    pub(crate) items: Vec<Item<'a>>,
    /// Dependents of each task (ordinals), in creation order of the dependents.
    pub(crate) dependents: Vec<Vec<u32>>,
    pub(crate) ranks: Vec<u64>,
    /// Every id with its ordinal, sorted by id bytes.
    pub(crate) ids: Vec<(&'a str, u32)>,
}

/// Encodes a snapshot file.
pub(crate) fn encode(c: &Contents<'_>) -> Result<Vec<u8>, Error> {
    let n = c.items.len();
    let too_big = || Error::Invalid {
        what: "snapshot",
        reason: "a section would exceed 4 GiB".into(),
    };
    let count = u32::try_from(n).map_err(|_| too_big())?;
    // Body first (offsets relative to the body), then the header with absolute offsets.
    let mut body: Vec<u8> = Vec::new();
    let mut task_at = Vec::with_capacity(n);
    let tasks_start = 0u64;
    for it in &c.items {
        let len = u32::try_from(it.task_json.len()).map_err(|_| too_big())?;
        task_at.push((body.len() as u64, len, crc32fast::hash(&it.task_json)));
        body.extend_from_slice(&it.task_json);
        body.push(b'\n');
    }
    let history_start = body.len() as u64;
    let mut hist_at = Vec::with_capacity(n);
    for it in &c.items {
        let len = u32::try_from(it.history_json.len()).map_err(|_| too_big())?;
        hist_at.push((body.len() as u64, len, crc32fast::hash(&it.history_json)));
        body.extend_from_slice(&it.history_json);
        body.push(b'\n');
    }
    let entries_start = body.len() as u64;
    // Entries are written with body-relative offsets and fixed up once the header length is
    // known; dependents positions are relative to their section anyway.
    let mut dep_start = 0u32;
    let mut entry_rows = Vec::with_capacity(n);
    let mut counts = [0u64; 7];
    for (i, it) in c.items.iter().enumerate() {
        let deps = c.dependents.get(i).map_or(0, Vec::len);
        let dep_count = u32::try_from(deps).map_err(|_| too_big())?;
        counts[usize::from(it.status.code())] += 1;
        entry_rows.push(Entry {
            task: task_at[i],
            history: hist_at[i],
            rank: c.ranks.get(i).copied().unwrap_or(it.weight),
            weight: it.weight,
            dep_start,
            dep_count,
            remaining: it.remaining,
            assignee: it.assignee,
            status: it.status,
            priority: it.priority,
        });
        dep_start = dep_start.checked_add(dep_count).ok_or_else(too_big)?;
    }
    body.resize(body.len() + n * ENTRY_BYTES, 0);
    let dependents_start = body.len() as u64;
    for d in &c.dependents {
        for &x in d {
            body.extend_from_slice(&x.to_le_bytes());
        }
    }
    let ids_start = body.len() as u64;
    let mut text = Vec::new();
    for (id, ord) in &c.ids {
        text.extend_from_slice(id.as_bytes());
        let end = u32::try_from(text.len()).map_err(|_| too_big())?;
        body.extend_from_slice(&ord.to_le_bytes());
        body.extend_from_slice(&end.to_le_bytes());
    }
    let idtext_start = body.len() as u64;
    body.extend_from_slice(&text);
    let ready_start = body.len() as u64;
    let mut ready: Vec<u32> = (0..count)
        .filter(|&i| c.items[i as usize].status == TaskStatus::Pending)
        .collect();
    ready.sort_unstable_by_key(|&i| {
        ready_key(c.items[i as usize].priority, entry_rows[i as usize].rank, i)
    });
    for r in &ready {
        body.extend_from_slice(&r.to_le_bytes());
    }
    let active_start = body.len() as u64;
    for i in 0..count {
        if c.items[i as usize].status.is_active() {
            body.extend_from_slice(&i.to_le_bytes());
        }
    }
    let end = body.len() as u64;

    // The header's length depends on the offsets it holds: size it with the widest CRC,
    // iterate until the offsets stop changing it, then pad the real header to that length
    // (JSON allows the trailing spaces).
    let mut header_len = 0u64;
    let header = loop {
        let sec = |a: u64, b: u64| [header_len + a, b - a];
        let header = Header {
            format: FORMAT,
            generation: c.generation,
            seq: c.seq,
            count,
            counts,
            agents: c.agents.clone(),
            sections: Sections {
                tasks: sec(tasks_start, history_start),
                history: sec(history_start, entries_start),
                entries: sec(entries_start, dependents_start),
                dependents: sec(dependents_start, ids_start),
                ids: sec(ids_start, idtext_start),
                idtext: sec(idtext_start, ready_start),
                ready: sec(ready_start, active_start),
                active: sec(active_start, end),
            },
            crc: u32::MAX,
        };
        let len = header_json(&header)?.len() as u64 + 1;
        if len == header_len {
            break header;
        }
        header_len = len;
    };
    for (i, e) in entry_rows.iter().enumerate() {
        let mut e = *e;
        e.task.0 += header_len;
        e.history.0 += header_len;
        let mut row = Vec::with_capacity(ENTRY_BYTES);
        e.encode(&mut row);
        let at = entries_start as usize + i * ENTRY_BYTES;
        body[at..at + ENTRY_BYTES].copy_from_slice(&row);
    }
    let header = Header {
        crc: crc32fast::hash(&body),
        ..header
    };
    let mut out = header_json(&header)?;
    while (out.len() as u64) + 1 < header_len {
        out.push(b' ');
    }
    out.push(b'\n');
    out.extend_from_slice(&body);
    Ok(out)
}

fn header_json(h: &Header) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(h).map_err(|e| Error::Invalid {
        what: "snapshot header",
        reason: e.to_string(),
    })
}

/// The ready order: priority (high first), rank (long first), creation order.
pub(crate) fn ready_key(p: Priority, rank: u64, ord: u32) -> ReadyKey {
    ReadyKey(std::cmp::Reverse(p), std::cmp::Reverse(rank), ord)
}

/// Sort key of a ready task (smaller first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ReadyKey(
    pub(crate) std::cmp::Reverse<Priority>,
    pub(crate) std::cmp::Reverse<u64>,
    pub(crate) u32,
);

impl ReadyKey {
    pub(crate) fn ord(&self) -> u32 {
        self.2
    }
}

/// Bytes per cached block of a snapshot.
const BLOCK: u64 = 4096;
/// Most blocks a snapshot keeps cached (16 MiB).
const MAX_BLOCKS: usize = 4096;
/// Reads longer than this bypass the block cache.
const CACHED_READ_LIMIT: usize = 64 * 1024;

/// An open snapshot: the header in memory, everything else read by position through a small
/// block cache (a binary search over the sorted ids shares its first probes with every other
/// search; neighbouring entries share blocks).
#[derive(Debug)]
pub(crate) struct Snapshot {
    path: PathBuf,
    file: File,
    size: u64,
    blocks: std::cell::RefCell<crate::graph::FxMap<u64, Box<[u8]>>>,
    /// Tasks parsed so far (a snapshot never changes: a long-lived reader parses each once).
    parsed: std::cell::RefCell<crate::graph::FxMap<u32, Task>>,
    /// The ready list decoded so far, in order: (key, assignee code).
    ready_keys: std::cell::RefCell<Vec<(ReadyKey, u32)>>,
    pub(crate) header: Header,
    ready_len: u64,
    active_len: u64,
}

pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Snapshot {
    /// Opens `path` and checks its header: the format, the generation it must hold, and that
    /// every section lies inside the file with the sizes the task count implies.
    pub(crate) fn open(path: &Path, generation: u64) -> Result<Self, Error> {
        let file = fsx::open_read(path)?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let mut head = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut off = 0u64;
        let nl = loop {
            let n = file
                .read_at(&mut chunk, off)
                .map_err(|e| Error::io("read", path, e))?;
            if n == 0 {
                return Err(corrupt(path, "the header line is incomplete (no newline)"));
            }
            if let Some(p) = chunk[..n].iter().position(|&b| b == b'\n') {
                head.extend_from_slice(&chunk[..p]);
                break off + p as u64;
            }
            head.extend_from_slice(&chunk[..n]);
            off += n as u64;
            if head.len() > HEADER_LIMIT {
                return Err(corrupt(
                    path,
                    format!("the header line is longer than {HEADER_LIMIT} bytes"),
                ));
            }
        };
        let header: Header = serde_json::from_slice(&head)
            .map_err(|e| corrupt(path, format!("unreadable header: {e}")))?;
        if header.format != FORMAT {
            return Err(corrupt(
                path,
                format!(
                    "snapshot format {} (this maos reads format {FORMAT})",
                    header.format
                ),
            ));
        }
        if header.generation != generation {
            return Err(corrupt(
                path,
                format!(
                    "it holds generation {}, but its name says {generation}: it does not match the logs",
                    header.generation
                ),
            ));
        }
        let body = nl + 1;
        for (name, [o, l]) in header.sections.all() {
            if o < body || o.checked_add(l).is_none_or(|e| e > size) {
                return Err(corrupt(
                    path,
                    format!("section {name} ({o}+{l}) lies outside the file ({size} bytes)"),
                ));
            }
        }
        let n = u64::from(header.count);
        let s = &header.sections;
        let bad = |what: &str| {
            corrupt(
                path,
                format!("section {what} has the wrong size for {n} tasks"),
            )
        };
        if s.entries[1] != n * ENTRY_BYTES as u64 {
            return Err(bad("entries"));
        }
        if s.ids[1] != n * ID_BYTES as u64 {
            return Err(bad("ids"));
        }
        if !s.dependents[1].is_multiple_of(4)
            || !s.ready[1].is_multiple_of(4)
            || !s.active[1].is_multiple_of(4)
        {
            return Err(bad("dependents/ready/active"));
        }
        if header.counts.iter().sum::<u64>() != n {
            return Err(corrupt(
                path,
                "the status counts do not add up to the task count",
            ));
        }
        let ready_len = s.ready[1] / 4;
        let active_len = s.active[1] / 4;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            blocks: std::cell::RefCell::default(),
            parsed: std::cell::RefCell::default(),
            ready_keys: std::cell::RefCell::default(),
            header,
            ready_len,
            active_len,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn count(&self) -> u32 {
        self.header.count
    }

    pub(crate) fn seq(&self) -> u64 {
        self.header.seq
    }

    fn read(&self, off: u64, len: usize) -> Result<Vec<u8>, Error> {
        let end = off
            .checked_add(len as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                corrupt(
                    &self.path,
                    format!(
                        "a read of {len} bytes at {off} goes past the end ({} bytes)",
                        self.size
                    ),
                )
            })?;
        if len > CACHED_READ_LIMIT {
            let mut buf = vec![0u8; len];
            self.file
                .read_exact_at(&mut buf, off)
                .map_err(|e| Error::io("read", &self.path, e))?;
            return Ok(buf);
        }
        let mut out = Vec::with_capacity(len);
        let mut blocks = self.blocks.borrow_mut();
        if blocks.len() > MAX_BLOCKS {
            blocks.clear();
        }
        let mut at = off;
        while at < end {
            let b = at / BLOCK;
            let block = match blocks.entry(b) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let start = b * BLOCK;
                    let n = BLOCK.min(self.size - start) as usize;
                    let mut buf = vec![0u8; n];
                    self.file
                        .read_exact_at(&mut buf, start)
                        .map_err(|e| Error::io("read", &self.path, e))?;
                    v.insert(buf.into_boxed_slice())
                }
            };
            let from = (at - b * BLOCK) as usize;
            let to = ((end - b * BLOCK) as usize).min(block.len());
            out.extend_from_slice(&block[from..to]);
            at = b * BLOCK + to as u64;
        }
        Ok(out)
    }

    /// The bytes of a whole section (for compaction, full scans and checks).
    pub(crate) fn section(&self, [o, l]: [u64; 2]) -> Result<Vec<u8>, Error> {
        let len = usize::try_from(l).map_err(|_| corrupt(&self.path, "section too large"))?;
        self.read(o, len)
    }

    fn check_ord(&self, ord: u32) -> Result<(), Error> {
        if ord >= self.header.count {
            return Err(corrupt(
                &self.path,
                format!(
                    "task number {ord} is out of range ({} tasks)",
                    self.header.count
                ),
            ));
        }
        Ok(())
    }

    /// Decodes and checks one entry row.
    pub(crate) fn decode_entry(&self, ord: u32, row: &[u8]) -> Result<Entry, Error> {
        let e = Entry::decode(row)
            .ok_or_else(|| corrupt(&self.path, format!("entry {ord} is unreadable")))?;
        let s = &self.header.sections;
        let inside = |(o, l, _): (u64, u32, u32), [so, sl]: [u64; 2]| {
            o >= so && o + u64::from(l) < so + sl + 1
        };
        if !inside(e.task, s.tasks)
            || !inside(e.history, s.history)
            || (u64::from(e.dep_start) + u64::from(e.dep_count)) * 4 > s.dependents[1]
            || e.assignee as usize > self.header.agents.len()
        {
            return Err(corrupt(
                &self.path,
                format!("entry {ord} points outside its sections"),
            ));
        }
        Ok(e)
    }

    /// Entry `ord`.
    pub(crate) fn entry(&self, ord: u32) -> Result<Entry, Error> {
        self.check_ord(ord)?;
        let off = self.header.sections.entries[0] + u64::from(ord) * ENTRY_BYTES as u64;
        let row = self.read(off, ENTRY_BYTES)?;
        self.decode_entry(ord, &row)
    }

    /// Entries `from..from + n` (clamped to the count).
    pub(crate) fn entries(&self, from: u32, n: u32) -> Result<Vec<Entry>, Error> {
        let end = from.saturating_add(n).min(self.header.count);
        if from >= end {
            return Ok(Vec::new());
        }
        let off = self.header.sections.entries[0] + u64::from(from) * ENTRY_BYTES as u64;
        let rows = self.read(off, (end - from) as usize * ENTRY_BYTES)?;
        rows.chunks_exact(ENTRY_BYTES)
            .enumerate()
            .map(|(k, r)| self.decode_entry(from + k as u32, r))
            .collect()
    }

    fn line(&self, ord: u32, what: &str, (o, l, crc): (u64, u32, u32)) -> Result<Vec<u8>, Error> {
        let b = self.read(o, l as usize)?;
        if crc32fast::hash(&b) != crc {
            return Err(corrupt(
                &self.path,
                format!("the {what} of task number {ord} fails its checksum"),
            ));
        }
        Ok(b)
    }

    /// The task of entry `e`.
    pub(crate) fn task(&self, ord: u32, e: &Entry) -> Result<Task, Error> {
        if let Some(t) = self.cached_task(ord) {
            return Ok(t);
        }
        let b = self.line(ord, "record", e.task)?;
        let t: Task = serde_json::from_slice(&b)
            .map_err(|err| corrupt(&self.path, format!("task number {ord}: {err}")))?;
        // Keyed by ordinal, not a table of `count` slots: a fresh process pays for the
        // tasks it reads, not for the size of the store.
        self.parsed.borrow_mut().insert(ord, t.clone());
        Ok(t)
    }

    /// Task `ord` if it was parsed before.
    pub(crate) fn cached_task(&self, ord: u32) -> Option<Task> {
        self.parsed.borrow().get(&ord).cloned()
    }

    /// Calls `f` on task `ord` in place if it was parsed before; returns whether it was.
    pub(crate) fn with_cached_task(&self, ord: u32, f: impl FnOnce(&Task)) -> bool {
        match self.parsed.borrow().get(&ord) {
            Some(t) => {
                f(t);
                true
            }
            None => false,
        }
    }

    /// Ready-list position `k` decoded: its key and assignee code (`None` past the end).
    pub(crate) fn ready_key(&self, k: u64) -> Result<Option<(ReadyKey, u32)>, Error> {
        const CHUNK: u64 = 256;
        if k >= self.ready_len {
            return Ok(None);
        }
        let have = self.ready_keys.borrow().len() as u64;
        if k >= have {
            // Decode up to and including k, a chunk at a time.
            let mut from = have;
            while from <= k {
                let ords = self.ready(from, CHUNK)?;
                let mut decoded = Vec::with_capacity(ords.len());
                for o in &ords {
                    let e = self.entry(*o)?;
                    if e.status != TaskStatus::Pending {
                        return Err(corrupt(
                            &self.path,
                            format!(
                                "the ready list names task number {o}, which is {}",
                                e.status
                            ),
                        ));
                    }
                    decoded.push((ready_key(e.priority, e.rank, *o), e.assignee));
                }
                from += ords.len().max(1) as u64;
                self.ready_keys.borrow_mut().extend(decoded);
            }
        }
        Ok(self.ready_keys.borrow().get(k as usize).copied())
    }

    /// The history of entry `e`.
    pub(crate) fn history(&self, ord: u32, e: &Entry) -> Result<Vec<Event>, Error> {
        self.history_at(ord, e.history)
    }

    /// The history line at `at` (an entry's `history`).
    pub(crate) fn history_at(&self, ord: u32, at: (u64, u32, u32)) -> Result<Vec<Event>, Error> {
        let b = self.line(ord, "history", at)?;
        serde_json::from_slice(&b)
            .map_err(|err| corrupt(&self.path, format!("history of task number {ord}: {err}")))
    }

    /// The dependents of entry `e`.
    pub(crate) fn dependents(&self, e: &Entry) -> Result<Vec<u32>, Error> {
        if e.dep_count == 0 {
            return Ok(Vec::new());
        }
        let off = self.header.sections.dependents[0] + u64::from(e.dep_start) * 4;
        let b = self.read(off, e.dep_count as usize * 4)?;
        let out: Vec<u32> = b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(bad) = out.iter().find(|&&d| d >= self.header.count) {
            return Err(corrupt(
                &self.path,
                format!("dependent {bad} is out of range"),
            ));
        }
        Ok(out)
    }

    /// The agent of an entry's `assignee` code.
    pub(crate) fn agent(&self, code: u32) -> Option<&AgentId> {
        code.checked_sub(1)
            .and_then(|k| self.header.agents.get(k as usize))
    }

    /// Sorted-id slot `k`: (ordinal, id bytes).
    fn id_slot(&self, k: u64) -> Result<(u32, Vec<u8>), Error> {
        let s = &self.header.sections;
        let (start, here) = if k == 0 {
            (0u32, self.read(s.ids[0], ID_BYTES)?)
        } else {
            let b = self.read(s.ids[0] + (k - 1) * ID_BYTES as u64, 2 * ID_BYTES)?;
            (
                u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                b[ID_BYTES..].to_vec(),
            )
        };
        let ord = u32::from_le_bytes([here[0], here[1], here[2], here[3]]);
        let end = u32::from_le_bytes([here[4], here[5], here[6], here[7]]);
        if end < start || u64::from(end) > s.idtext[1] || ord >= self.header.count {
            return Err(corrupt(
                &self.path,
                format!("sorted id slot {k} is unreadable"),
            ));
        }
        let text = self.read(s.idtext[0] + u64::from(start), (end - start) as usize)?;
        Ok((ord, text))
    }

    /// The first sorted slot whose id is >= `key`.
    fn lower_bound(&self, key: &[u8]) -> Result<u64, Error> {
        let (mut lo, mut hi) = (0u64, u64::from(self.header.count));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.id_slot(mid)?.1.as_slice() < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The ordinal of `id`.
    pub(crate) fn find(&self, id: &str) -> Result<Option<u32>, Error> {
        let k = self.lower_bound(id.as_bytes())?;
        if k >= u64::from(self.header.count) {
            return Ok(None);
        }
        let (ord, text) = self.id_slot(k)?;
        Ok((text == id.as_bytes()).then_some(ord))
    }

    /// Up to `limit` ids starting with `prefix`, in id order.
    pub(crate) fn with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(TaskId, u32)>, Error> {
        let mut k = self.lower_bound(prefix.as_bytes())?;
        let mut out = Vec::new();
        while k < u64::from(self.header.count) && out.len() < limit {
            let (ord, text) = self.id_slot(k)?;
            if !text.starts_with(prefix.as_bytes()) {
                break;
            }
            let id = String::from_utf8(text)
                .ok()
                .and_then(|s| TaskId::parse(s).ok())
                .ok_or_else(|| {
                    corrupt(&self.path, format!("sorted id slot {k} is not a task id"))
                })?;
            out.push((id, ord));
            k += 1;
        }
        Ok(out)
    }

    /// Every (id, ordinal) in id order (for compaction).
    pub(crate) fn all_ids(&self) -> Result<Vec<(String, u32)>, Error> {
        let s = &self.header.sections;
        let slots = self.section(s.ids)?;
        let text = self.section(s.idtext)?;
        let mut out = Vec::with_capacity(self.header.count as usize);
        let mut start = 0usize;
        for (k, c) in slots.chunks_exact(ID_BYTES).enumerate() {
            let ord = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let end = u32::from_le_bytes([c[4], c[5], c[6], c[7]]) as usize;
            let id = text
                .get(start..end)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| corrupt(&self.path, format!("sorted id slot {k} is unreadable")))?;
            out.push((id.to_owned(), ord));
            start = end;
        }
        Ok(out)
    }

    /// Number of ready (pending) tasks in the snapshot.
    pub(crate) fn ready_len(&self) -> u64 {
        self.ready_len
    }

    /// Ready-list positions `from..from + n` (ordinals, in claim order).
    pub(crate) fn ready(&self, from: u64, n: u64) -> Result<Vec<u32>, Error> {
        let end = from.saturating_add(n).min(self.ready_len);
        if from >= end {
            return Ok(Vec::new());
        }
        self.ordinals(
            "ready",
            self.header.sections.ready[0] + from * 4,
            end - from,
        )
    }

    /// The active (in progress, review) tasks of the snapshot.
    pub(crate) fn active(&self) -> Result<Vec<u32>, Error> {
        self.ordinals("active", self.header.sections.active[0], self.active_len)
    }

    /// `n` task ordinals (u32, little-endian) at `offset`, each checked against the count.
    fn ordinals(&self, what: &str, offset: u64, n: u64) -> Result<Vec<u32>, Error> {
        let b = self.read(offset, (n * 4) as usize)?;
        let out: Vec<u32> = b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(bad) = out.iter().find(|&&d| d >= self.header.count) {
            return Err(corrupt(
                &self.path,
                format!("{what} task {bad} is out of range"),
            ));
        }
        Ok(out)
    }

    /// Checks the body's CRC (reads the whole file: for `doctor`).
    pub(crate) fn verify(&self) -> Result<(), Error> {
        let start = self.header.sections.tasks[0];
        let size = self
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &self.path, e))?
            .len();
        let mut hasher = crc32fast::Hasher::new();
        let mut off = start;
        let mut buf = vec![0u8; 1 << 20];
        while off < size {
            let n = self
                .file
                .read_at(&mut buf, off)
                .map_err(|e| Error::io("read", &self.path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            off += n as u64;
        }
        if hasher.finalize() != self.header.crc {
            return Err(corrupt(&self.path, "the body fails its checksum"));
        }
        Ok(())
    }
}
