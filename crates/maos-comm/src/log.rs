//! The segmented append-only log under a channel's `.chan/` directory: writing (kernel lock,
//! torn-tail repair, append, roll, then fdatasync outside the lock) and reading forward from a
//! cursor.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use maos_core::fsx;
use serde::{Deserialize, Serialize};

use crate::record;
use crate::{Error, Result};

/// The kernel-lock file of a channel's writers.
pub(crate) const LOCK_FILE: &str = "lock";
/// Durable consumers' cursors.
pub(crate) const CONSUMERS_DIR: &str = "consumers";
/// Where corrupt records and foreign files are moved.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";
/// Extension of segment files.
pub(crate) const SEGMENT_EXT: &str = ".jsonl";

/// How much of a segment a reader reads at once.
const READ_CHUNK: usize = 4 << 20;
/// The longest line a reader accepts as a record; longer ones are corrupt.
const MAX_LINE: usize = 256 << 20;
/// How often a reader starts a segment over because a writer changed its tail meanwhile (a
/// torn-tail repair) before it gives up with the error.
const MAX_RETRIES: u32 = 1000;

/// How reading one segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegRead {
    /// `max` records were collected.
    Full,
    /// Every complete record is read.
    End,
    /// The bytes changed under the reader (a writer repaired a torn tail, and possibly
    /// appended in its place): read again from the cursor, which is at a record boundary.
    Changed,
}

/// Where a reader stands in a channel: the last position it has consumed, and where the next
/// record starts (`segment`, `offset`) so that reading on costs nothing for the history.
///
/// A cursor with `segment == 0` holds only a position; the reader then finds the segment by
/// its name and scans that one segment. Cursors are plain data: persist them as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// The last position consumed (0: none yet).
    pub position: u64,
    /// First position of the segment the next record is in (0: unknown).
    #[serde(default)]
    pub segment: u64,
    /// Byte offset of the next record in that segment.
    #[serde(default)]
    pub offset: u64,
}

impl Cursor {
    /// Before the first message of a channel.
    pub fn start() -> Self {
        Self::default()
    }

    /// After `position` (the next message read is `position + 1`, or the first one after it).
    pub fn after(position: u64) -> Self {
        Self {
            position,
            segment: 0,
            offset: 0,
        }
    }
}

/// A record or file a reader could not use. It has been reported (here and in the log) and,
/// where possible, copied or moved to the channel's `quarantine/` directory; readers go on
/// with the records after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file concerned.
    pub path: PathBuf,
    /// Byte offset of the bad record in that file, if it is a record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The record's position, if it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// What is wrong.
    pub reason: String,
    /// Where the bad bytes (or the foreign file) were put.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<PathBuf>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(o) = self.offset {
            write!(f, " at byte {o}")?;
        }
        if let Some(p) = self.position {
            write!(f, " (position {p})")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(q) = &self.quarantined {
            write!(f, " (quarantined to {})", q.display())?;
        }
        Ok(())
    }
}

/// What a raw read returned.
#[derive(Debug, Default)]
pub(crate) struct RawBatch {
    /// (position, message bytes), in position order.
    pub(crate) records: Vec<(u64, Vec<u8>)>,
    pub(crate) cursor: Cursor,
    /// Positions `from..=to` that were pruned before this reader got to them.
    pub(crate) pruned: Option<(u64, u64)>,
    pub(crate) problems: Vec<Problem>,
}

pub(crate) fn segment_name(first: u64) -> String {
    format!("{first:020}{SEGMENT_EXT}")
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

/// The segments of a channel, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) segments: Vec<u64>,
}

struct Active {
    first: u64,
    file: Arc<File>,
    /// Length of the file up to the end of its last complete record, as last seen under the
    /// lock (`u64::MAX`: unknown).
    len: u64,
    /// Position of the last record in the segment.
    last: u64,
}

struct WriterState {
    lock: File,
    active: Option<Active>,
}

/// One channel's log.
pub(crate) struct Log {
    pub(crate) channel: String,
    pub(crate) dir: PathBuf,
    writer: Mutex<Option<WriterState>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("channel", &self.channel)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Log {
    pub(crate) fn new(channel: String, dir: PathBuf) -> Self {
        Self {
            channel,
            dir,
            writer: Mutex::new(None),
        }
    }

    fn core(&self, e: maos_core::Error) -> Error {
        Error::core(self.channel.clone(), e)
    }

    fn io(&self, op: &'static str, path: &Path, e: std::io::Error) -> Error {
        Error::io(self.channel.clone(), op, path, e)
    }

    pub(crate) fn segment_path(&self, first: u64) -> PathBuf {
        self.dir.join(segment_name(first))
    }

    pub(crate) fn quarantine_dir(&self) -> PathBuf {
        self.dir.join(QUARANTINE_DIR)
    }

    /// Lists the segments; moves foreign files to `quarantine/`, reporting them in `problems`.
    pub(crate) fn list(&self, problems: &mut Vec<Problem>) -> Result<Listing> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing::default()),
            Err(e) => return Err(self.io("read directory", &self.dir, e)),
        };
        let mut out = Listing::default();
        for entry in rd {
            let entry = entry.map_err(|e| self.io("read directory", &self.dir, e))?;
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if let Some(first) = parse_segment_name(&name_str) {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    out.segments.push(first);
                    continue;
                }
            } else if fsx::is_temp_name(&name_str)
                || matches!(&*name_str, LOCK_FILE | CONSUMERS_DIR | QUARANTINE_DIR)
            {
                continue;
            }
            self.quarantine_file(&entry.path(), problems);
        }
        out.segments.sort_unstable();
        Ok(out)
    }

    fn quarantine_file(&self, path: &Path, problems: &mut Vec<Problem>) {
        let qdir = self.quarantine_dir();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = qdir.join(format!("{}.{}.foreign", name, maos_core::now_ms()));
        let moved = fsx::create_dir_private(&qdir)
            .ok()
            .and_then(|()| std::fs::rename(path, &target).ok());
        if moved.is_none() && !path.exists() {
            return; // another reader moved it first
        }
        tracing::warn!(channel = %self.channel, path = %path.display(),
            "foreign file in a channel directory quarantined");
        problems.push(Problem {
            path: path.to_path_buf(),
            offset: None,
            position: None,
            reason: "foreign file in the channel directory (not a segment)".into(),
            quarantined: moved.map(|()| target),
        });
    }

    fn quarantine_bytes(&self, seg: u64, offset: u64, what: &str, bytes: &[u8]) -> Option<PathBuf> {
        let qdir = self.quarantine_dir();
        let target = qdir.join(format!("{}-{offset}.{what}", segment_name(seg)));
        if target.exists() {
            return Some(target);
        }
        let cap = bytes.len().min(MAX_LINE);
        match fsx::create_dir_private(&qdir).and_then(|()| fsx::write_new(&target, &bytes[..cap])) {
            Ok(()) | Err(maos_core::Error::AlreadyExists { .. }) => Some(target),
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = &e as &dyn std::error::Error, "cannot quarantine bytes");
                None
            }
        }
    }

    // ----- writing -----

    /// Appends the records (message bytes, each already checked against the payload limit)
    /// and returns the position of the first. Durable and visible when this returns.
    pub(crate) fn append(&self, msgs: &[&[u8]], segment_limit: u64) -> Result<u64> {
        let mut buf = Vec::new();
        let (file, first_seq) = self.locked(|st| {
            let res = self.append_locked(st, msgs, segment_limit, &mut buf);
            if res.is_err() {
                // Forget cached state: the next append re-reads everything.
                st.active = None;
            }
            res
        })?;
        // Outside the lock: concurrent writers' appends share this flush.
        file.sync_data()
            .map_err(|e| self.io("fdatasync", &self.dir, e))?;
        Ok(first_seq)
    }

    /// Runs `f` on this process's writer state while holding the channel's kernel lock
    /// (creating the directory, the lock file and the state on first use).
    fn locked<R>(&self, f: impl FnOnce(&mut WriterState) -> Result<R>) -> Result<R> {
        let mut guard = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            fsx::create_dir_private(&self.dir).map_err(|e| self.core(e))?;
            let path = self.dir.join(LOCK_FILE);
            let lock = fsx::open_lock_file(&path).map_err(|e| self.core(e))?;
            *guard = Some(WriterState { lock, active: None });
        }
        let st = guard.as_mut().expect("writer state was just set");
        st.lock
            .lock()
            .map_err(|e| self.io("lock", &self.dir.join(LOCK_FILE), e))?;
        let res = f(st);
        if let Err(e) = st.lock.unlock() {
            tracing::warn!(channel = %self.channel, error = &e as &dyn std::error::Error, "unlock failed");
        }
        res
    }

    fn open_segment(&self, first: u64) -> Result<Active> {
        let path = self.segment_path(first);
        let file = fsx::open_append(&path).map_err(|e| self.core(e))?;
        Ok(Active {
            first,
            file: Arc::new(file),
            len: u64::MAX,
            last: first - 1,
        })
    }

    /// Creates segment `first` (empty) and makes its name durable.
    fn create_segment(&self, first: u64) -> Result<Active> {
        let path = self.segment_path(first);
        let created = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path);
        match created {
            Ok(f) => {
                fsx::sync_dir(&self.dir).map_err(|e| self.core(e))?;
                tracing::debug!(channel = %self.channel, segment = first, "new segment");
                Ok(Active {
                    first,
                    file: Arc::new(f),
                    len: 0,
                    last: first - 1,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.open_segment(first),
            Err(e) => Err(self.io("create", &path, e)),
        }
    }

    /// Under the lock: makes `st.active` the true newest segment with a known, repaired tail.
    fn refresh_active(&self, st: &mut WriterState) -> Result<()> {
        loop {
            let mut active = match st.active.take() {
                Some(a) => a,
                None => {
                    let listing = self.list(&mut Vec::new())?;
                    match listing.segments.last() {
                        Some(&first) => self.open_segment(first)?,
                        None => self.create_segment(1)?,
                    }
                }
            };
            let path = self.segment_path(active.first);
            let meta = active
                .file
                .metadata()
                .map_err(|e| self.io("stat", &path, e))?;
            if meta.nlink() == 0 {
                continue; // pruned away: find the newest again
            }
            let size = meta.len();
            if size != active.len {
                let (valid_end, last) = self.scan_tail(&active.file, &path, size, active.first)?;
                if valid_end < size {
                    self.repair_tail(&active, &path, valid_end, size)?;
                }
                active.len = valid_end;
                active.last = last;
            }
            // Has another writer rolled to a new segment since?
            // (An empty segment's `last + 1` is its own name.)
            let next = active.last.checked_add(1);
            if let Some(next) = next.filter(|&n| n != active.first)
                && std::fs::symlink_metadata(self.segment_path(next)).is_ok()
            {
                st.active = Some(self.open_segment(next)?);
                continue;
            }
            st.active = Some(active);
            return Ok(());
        }
    }

    fn repair_tail(&self, active: &Active, path: &Path, valid_end: u64, size: u64) -> Result<()> {
        let n = (size - valid_end).min(MAX_LINE as u64) as usize;
        let mut torn = vec![0u8; n];
        let _ = active.file.read_exact_at(&mut torn, valid_end);
        let q = self.quarantine_bytes(active.first, valid_end, "torn", &torn);
        active
            .file
            .set_len(valid_end)
            .map_err(|e| self.io("truncate", path, e))?;
        tracing::warn!(channel = %self.channel, path = %path.display(), offset = valid_end,
            bytes = size - valid_end, quarantined = ?q,
            "repaired a torn record left by a killed writer");
        Ok(())
    }

    fn append_locked(
        &self,
        st: &mut WriterState,
        msgs: &[&[u8]],
        segment_limit: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(Arc<File>, u64)> {
        self.refresh_active(st)?;
        let mut active = st.active.take().expect("refresh_active sets the segment");
        let no_position = || {
            let path = self.segment_path(active.first);
            let e = std::io::Error::other(format!(
                "no position left after {} for {} message(s)",
                active.last,
                msgs.len()
            ));
            self.io("append", &path, e)
        };
        let first_seq = active.last.checked_add(1).ok_or_else(no_position)?;
        first_seq
            .checked_add((msgs.len() as u64).saturating_sub(1))
            .ok_or_else(no_position)?;
        let mut seq = first_seq;
        for m in msgs {
            record::encode(seq, m, buf);
            seq = seq.wrapping_add(1);
        }
        if active.len > 0 && active.len + buf.len() as u64 > segment_limit {
            active = self.create_segment(first_seq)?;
        }
        let path = self.segment_path(active.first);
        let written = (&*active.file).write_all(buf);
        if let Err(e) = written {
            // Leave no partial record behind (best effort; the next writer repairs it anyway).
            let _ = active.file.set_len(active.len);
            return Err(self.io("append", &path, e));
        }
        active.len += buf.len() as u64;
        active.last = seq.wrapping_sub(1);
        let file = Arc::clone(&active.file);
        st.active = Some(active);
        Ok((file, first_seq))
    }

    /// Finds the end of the last complete record and the last valid position of a segment.
    fn scan_tail(&self, file: &File, path: &Path, size: u64, first: u64) -> Result<(u64, u64)> {
        let mut size = size;
        let mut shrinks = 0;
        if size == 0 {
            return Ok((0, first - 1));
        }
        let mut chunk = (64u64 << 10).min(size);
        loop {
            let base = size - chunk;
            let mut buf = vec![0u8; chunk as usize];
            match file.read_exact_at(&mut buf, base) {
                Ok(()) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof && shrinks < MAX_RETRIES =>
                {
                    // A writer repaired a torn tail since we measured (we are a reader, not
                    // under the lock): measure again.
                    shrinks += 1;
                    size = file.metadata().map_err(|e| self.io("stat", path, e))?.len();
                    if size == 0 {
                        return Ok((0, first - 1));
                    }
                    chunk = (64u64 << 10).min(size);
                    continue;
                }
                Err(e) => return Err(self.io("read", path, e)),
            }
            let Some(nl) = buf.iter().rposition(|&b| b == b'\n') else {
                if base == 0 {
                    return Ok((0, first - 1)); // no complete record at all
                }
                chunk = (chunk * 4).min(size);
                continue;
            };
            let valid_end = base + nl as u64 + 1;
            let start = buf[..nl].iter().rposition(|&b| b == b'\n').map(|i| i + 1);
            let Some(start) = start.or(if base == 0 { Some(0) } else { None }) else {
                chunk = (chunk * 4).min(size);
                continue;
            };
            if let Ok(p) = record::parse(&buf[start..nl]) {
                return Ok((valid_end, p.seq));
            }
            // The last complete line is damaged: find the last good record the slow way.
            let mut last = first - 1;
            self.for_each_line(file, path, 0, valid_end, |_, line| {
                if let Ok(p) = record::parse(line) {
                    last = last.max(p.seq);
                }
            })?;
            return Ok((valid_end, last));
        }
    }

    fn for_each_line(
        &self,
        file: &File,
        path: &Path,
        mut offset: u64,
        end: u64,
        mut f: impl FnMut(u64, &[u8]),
    ) -> Result<()> {
        while offset < end {
            let n = ((end - offset) as usize).min(READ_CHUNK);
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| self.io("read", path, e))?;
            let mut pos = 0;
            while let Some(i) = buf[pos..].iter().position(|&b| b == b'\n') {
                f(offset + pos as u64, &buf[pos..pos + i]);
                pos += i + 1;
            }
            if pos == 0 {
                // A line longer than a chunk: skip it.
                pos = n;
            }
            offset += pos as u64;
        }
        Ok(())
    }

    /// The newest position in the channel (0 if empty) and the first position still kept.
    pub(crate) fn bounds(&self) -> Result<(u64, u64, usize, u64)> {
        let listing = self.list(&mut Vec::new())?;
        let Some(&last_seg) = listing.segments.last() else {
            return Ok((0, 1, 0, 0));
        };
        let path = self.segment_path(last_seg);
        let mut bytes = 0;
        for s in &listing.segments {
            bytes += std::fs::symlink_metadata(self.segment_path(*s))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        let file = match fsx::open_read(&path) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return self.bounds(),
            Err(e) => return Err(self.core(e)),
        };
        let size = file
            .metadata()
            .map_err(|e| self.io("stat", &path, e))?
            .len();
        let (_, last) = self.scan_tail(&file, &path, size, last_seg)?;
        Ok((last, listing.segments[0], listing.segments.len(), bytes))
    }

    // ----- reading -----

    /// Places `cur` at the segment that holds `cur.position + 1`; notes a pruned gap.
    fn locate(&self, cur: &mut Cursor, out: &mut RawBatch) -> Result<bool> {
        let listing = self.list(&mut out.problems)?;
        let Some(want) = cur.position.checked_add(1) else {
            return Ok(false); // nothing can come after the largest position
        };
        match listing.segments.iter().rev().find(|&&s| s <= want) {
            Some(&s) => {
                cur.segment = s;
                cur.offset = 0;
            }
            None => {
                let Some(&oldest) = listing.segments.first() else {
                    cur.segment = 0;
                    cur.offset = 0;
                    return Ok(false);
                };
                // Everything before `oldest` is gone.
                let (from, to) = (want, oldest - 1);
                out.pruned = Some(match out.pruned {
                    Some((f, _)) => (f, to),
                    None => (from, to),
                });
                cur.position = to;
                cur.segment = oldest;
                cur.offset = 0;
            }
        }
        Ok(true)
    }

    /// Reads forward from `cursor`: at most `max` records.
    pub(crate) fn read(&self, cursor: Cursor, max: usize) -> Result<RawBatch> {
        let mut out = RawBatch {
            cursor,
            ..RawBatch::default()
        };
        let mut cur = cursor;
        if cur.segment == 0 && !self.locate(&mut cur, &mut out)? {
            out.cursor = cur;
            return Ok(out);
        }
        let mut sealed = false;
        let mut relocations = 0;
        let mut changes = 0;
        loop {
            let path = self.segment_path(cur.segment);
            let file = match fsx::open_read(&path) {
                Ok(f) => f,
                Err(e) if e.is_not_found() => {
                    relocations += 1;
                    if relocations > 100 || !self.locate(&mut cur, &mut out)? {
                        break;
                    }
                    sealed = false;
                    continue;
                }
                Err(e) => return Err(self.core(e)),
            };
            let size = file
                .metadata()
                .map_err(|e| self.io("stat", &path, e))?
                .len();
            if cur.offset > size || (cur.offset > 0 && !byte_is_newline(&file, cur.offset - 1)) {
                // Not a record boundary (a hand-made cursor): scan the segment from its start;
                // records up to `position` are skipped.
                cur.offset = 0;
            }
            match self.read_segment(&file, &path, size, &mut cur, max, &mut out)? {
                SegRead::Full => break,
                SegRead::Changed if changes < MAX_RETRIES => {
                    changes += 1;
                    continue;
                }
                SegRead::Changed => {
                    return Err(self.io(
                        "read",
                        &path,
                        std::io::Error::other("the segment keeps changing under the reader"),
                    ));
                }
                SegRead::End => {}
            }
            // All complete records of this segment are read. Is there a next segment?
            let listing = self.list(&mut out.problems)?;
            let Some(&next) = listing.segments.iter().find(|&&s| s > cur.segment) else {
                break;
            };
            if !sealed {
                // A record may have completed just before the roll: read this segment once
                // more now that it is known to be sealed.
                sealed = true;
                continue;
            }
            if cur.offset < size {
                let n = ((size - cur.offset) as usize).min(MAX_LINE);
                let mut rest = vec![0u8; n];
                let _ = file.read_exact_at(&mut rest, cur.offset);
                let q = self.quarantine_bytes(cur.segment, cur.offset, "bad", &rest);
                out.problems.push(Problem {
                    path: path.clone(),
                    offset: Some(cur.offset),
                    position: None,
                    reason: "incomplete record at the end of a sealed segment".into(),
                    quarantined: q,
                });
            }
            cur.segment = next;
            cur.offset = 0;
            sealed = false;
        }
        out.cursor = cur;
        Ok(out)
    }

    /// Reads the complete records of one segment after `cur`.
    fn read_segment(
        &self,
        file: &File,
        path: &Path,
        size: u64,
        cur: &mut Cursor,
        max: usize,
        out: &mut RawBatch,
    ) -> Result<SegRead> {
        let mut chunk = READ_CHUNK;
        while cur.offset < size {
            let n = ((size - cur.offset) as usize).min(chunk);
            let mut buf = vec![0u8; n];
            match file.read_exact_at(&mut buf, cur.offset) {
                Ok(()) => {}
                // The file shrank since we measured it: a writer repaired a torn tail.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(SegRead::Changed);
                }
                Err(e) => return Err(self.io("read", path, e)),
            }
            let mut pos = 0;
            while let Some(i) = buf[pos..].iter().position(|&b| b == b'\n') {
                let line = &buf[pos..pos + i];
                let offset = cur.offset + pos as u64;
                match record::parse(line) {
                    Ok(p) if p.seq > cur.position => {
                        out.records.push((p.seq, p.msg.to_vec()));
                        cur.position = p.seq;
                    }
                    Ok(_) => {}
                    Err(_) if !self.confirm_corrupt(file, offset, line) => {
                        // We saw torn bytes being replaced by a new record: not corrupt.
                        cur.offset = offset;
                        return Ok(SegRead::Changed);
                    }
                    Err(reason) => {
                        let q = self.quarantine_bytes(cur.segment, offset, "bad", line);
                        tracing::warn!(channel = %self.channel, path = %path.display(), offset,
                            %reason, "corrupt record skipped");
                        out.problems.push(Problem {
                            path: path.to_path_buf(),
                            offset: Some(offset),
                            position: None,
                            reason,
                            quarantined: q,
                        });
                    }
                }
                pos += i + 1;
                if out.records.len() >= max {
                    cur.offset += pos as u64;
                    return Ok(SegRead::Full);
                }
            }
            if pos == 0 {
                if n < chunk {
                    return Ok(SegRead::End); // an incomplete record at the tail: not ours yet
                }
                if chunk >= MAX_LINE {
                    // A line longer than any record can be: skip to its end.
                    let skip = self.skip_line(file, path, cur.offset + n as u64, size)?;
                    let q = self.quarantine_bytes(cur.segment, cur.offset, "bad", &buf);
                    out.problems.push(Problem {
                        path: path.to_path_buf(),
                        offset: Some(cur.offset),
                        position: None,
                        reason: format!("line longer than {MAX_LINE} bytes"),
                        quarantined: q,
                    });
                    match skip {
                        Some(end) => cur.offset = end,
                        None => return Ok(SegRead::End),
                    }
                    chunk = READ_CHUNK;
                    continue;
                }
                chunk = (chunk * 4).min(MAX_LINE);
                continue;
            }
            cur.offset += pos as u64;
        }
        Ok(SegRead::End)
    }

    /// Whether the invalid line `line` at `offset` is really corrupt: true when it is still
    /// there, byte for byte, while no writer is inside its critical section (we hold the
    /// writers' lock shared). A reader that measured the segment while it ended with a torn
    /// tail may have read bytes that a writer was replacing (repair, then append): those are
    /// not a corrupt record, and the record now there must not be skipped.
    fn confirm_corrupt(&self, file: &File, offset: u64, line: &[u8]) -> bool {
        let Ok(lock) = fsx::open_lock_file(&self.dir.join(LOCK_FILE)) else {
            return true; // cannot synchronise with writers: report what we saw
        };
        if lock.lock_shared().is_err() {
            return true;
        }
        let mut now = vec![0u8; line.len() + 1];
        let same = file.read_exact_at(&mut now, offset).is_ok()
            && now[..line.len()] == *line
            && now[line.len()] == b'\n';
        let _ = lock.unlock();
        same
    }

    fn skip_line(
        &self,
        file: &File,
        path: &Path,
        mut offset: u64,
        size: u64,
    ) -> Result<Option<u64>> {
        while offset < size {
            let n = ((size - offset) as usize).min(READ_CHUNK);
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| self.io("read", path, e))?;
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                return Ok(Some(offset + i as u64 + 1));
            }
            offset += n as u64;
        }
        Ok(None)
    }

    // ----- retention -----

    /// Under the writers' lock: `f` gets the segments (oldest first) and the newest position.
    pub(crate) fn with_lock<R>(
        &self,
        f: impl FnOnce(&Self, &Listing, u64) -> Result<R>,
    ) -> Result<R> {
        self.locked(|st| {
            let res = (|| {
                self.refresh_active(st)?;
                let newest = st.active.as_ref().map_or(0, |a| a.last);
                let listing = self.list(&mut Vec::new())?;
                f(self, &listing, newest)
            })();
            st.active = None;
            res
        })
    }

    /// Under the lock: starts a new, empty segment after `newest` (so older ones can go).
    pub(crate) fn roll_locked(&self, newest: u64) -> Result<u64> {
        let Some(next) = newest.checked_add(1) else {
            let e = std::io::Error::other(format!("no position left after {newest}"));
            return Err(self.io("roll", &self.dir, e));
        };
        let a = self.create_segment(next)?;
        Ok(a.first)
    }

    /// Under the lock: removes segment `first`.
    pub(crate) fn remove_segment_locked(&self, first: u64) -> Result<()> {
        fsx::remove_if_exists(&self.segment_path(first)).map_err(|e| self.core(e))?;
        Ok(())
    }

    pub(crate) fn sync_dir(&self) -> Result<()> {
        fsx::sync_dir(&self.dir).map_err(|e| self.core(e))
    }

    /// Last position of segment `first` and its modification time.
    pub(crate) fn segment_info(&self, first: u64) -> Result<(u64, std::time::SystemTime)> {
        let path = self.segment_path(first);
        let file = fsx::open_read(&path).map_err(|e| self.core(e))?;
        let meta = file.metadata().map_err(|e| self.io("stat", &path, e))?;
        let (_, last) = self.scan_tail(&file, &path, meta.len(), first)?;
        let mtime = meta.modified().map_err(|e| self.io("stat", &path, e))?;
        Ok((last, mtime))
    }
}

fn byte_is_newline(file: &File, offset: u64) -> bool {
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).is_ok() && b[0] == b'\n'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, Log) {
        let d = tempfile::tempdir().unwrap();
        let l = Log::new("t".into(), d.path().join(".chan"));
        (d, l)
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("00000000000000000000.jsonl"), None);
        assert_eq!(parse_segment_name("1.jsonl"), None);
        assert_eq!(parse_segment_name("lock"), None);
    }

    #[test]
    fn appends_get_consecutive_positions_and_read_back() {
        let (_d, l) = log();
        for i in 1..=10u64 {
            let m = format!("{{\"i\":{i}}}");
            assert_eq!(l.append(&[m.as_bytes()], 1 << 20).unwrap(), i);
        }
        let b = l.read(Cursor::start(), 100).unwrap();
        assert_eq!(b.records.len(), 10);
        assert_eq!(b.cursor.position, 10);
        let more = l.read(b.cursor, 100).unwrap();
        assert!(more.records.is_empty());
        assert_eq!(l.read(Cursor::after(7), 100).unwrap().records[0].0, 8);
    }

    #[test]
    fn segments_roll_and_readers_follow() {
        let (_d, l) = log();
        for _ in 0..50 {
            l.append(
                &[b"{\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}"],
                300,
            )
            .unwrap();
        }
        let listing = l.list(&mut Vec::new()).unwrap();
        assert!(listing.segments.len() > 5, "{:?}", listing.segments);
        let mut cur = Cursor::start();
        let mut seen = Vec::new();
        loop {
            let b = l.read(cur, 7).unwrap();
            if b.records.is_empty() {
                break;
            }
            seen.extend(b.records.iter().map(|r| r.0));
            cur = b.cursor;
        }
        assert_eq!(seen, (1..=50).collect::<Vec<_>>());
        // A position-only cursor finds its segment by name.
        assert_eq!(l.read(Cursor::after(33), 1).unwrap().records[0].0, 34);
        assert_eq!(l.bounds().unwrap().0, 50);
    }

    #[test]
    fn a_torn_tail_is_invisible_and_repaired_by_the_next_writer() {
        let (_d, l) = log();
        l.append(&[b"{}"], 1 << 20).unwrap();
        let seg = l.segment_path(1);
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"seq\":2,\"len\":10,\"crc\":\"0000")
            .unwrap();
        let b = l.read(Cursor::start(), 10).unwrap();
        assert_eq!(b.records.len(), 1);
        assert!(b.problems.is_empty());
        // A fresh writer (another process) repairs it.
        let l2 = Log::new("t".into(), l.dir.clone());
        assert_eq!(l2.append(&[b"{\"n\":2}"], 1 << 20).unwrap(), 2);
        let b2 = l.read(b.cursor, 10).unwrap();
        assert_eq!(b2.records, vec![(2, b"{\"n\":2}".to_vec())]);
        assert!(l.quarantine_dir().read_dir().unwrap().count() == 1);
    }

    /// A writer repairing a torn tail (truncating it) while a reader is between its look at
    /// the segment's size and its read must neither fail the reader nor make it skip a
    /// record as corrupt.
    #[test]
    fn readers_racing_a_torn_tail_repair_neither_fail_nor_lose_records() {
        let (_d, l) = log();
        let msg: &[u8] = b"{\"n\":1}";
        l.append(&[msg], 1 << 30).unwrap();
        let mut rec = Vec::new();
        record::encode(2, msg, &mut rec);
        let rounds = 1000u64;
        let dir = l.dir.clone();
        let seg = l.segment_path(1);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..rounds {
                    // A killed writer's leftovers, longer or exactly as long as the next
                    // record, then the next writer (another process) repairs and appends.
                    let torn = if i % 2 == 0 {
                        rec.len() + 300
                    } else {
                        rec.len()
                    };
                    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
                    f.write_all(&vec![b'x'; torn]).unwrap();
                    drop(f);
                    Log::new("t".into(), dir.clone())
                        .append(&[msg], 1 << 30)
                        .unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut cur = Cursor::start();
            let mut seen = 0u64;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let b = l
                    .read(cur, 1_000_000)
                    .expect("a reader never fails on a repair");
                assert!(b.problems.is_empty(), "{:?}", b.problems);
                for (i, r) in b.records.iter().enumerate() {
                    assert_eq!(r.0, cur.position + 1 + i as u64);
                }
                seen += b.records.len() as u64;
                cur = b.cursor;
                if finished && b.records.is_empty() {
                    break;
                }
            }
            assert_eq!(seen, rounds + 1);
        });
    }

    /// Hostile positions (a hand-made cursor, `maos recv --after 18446744073709551615`, a
    /// forged record or segment at the end of the number range) give an empty read or a clear
    /// error, never an overflow panic or a wrapped position 0.
    #[test]
    fn positions_at_the_end_of_the_range_neither_panic_nor_wrap() {
        let (_d, l) = log();
        l.append(&[b"{}"], 1 << 20).unwrap();
        let b = l.read(Cursor::after(u64::MAX), 10).unwrap();
        assert!(b.records.is_empty() && b.pruned.is_none(), "{b:?}");
        assert_eq!(b.cursor.position, u64::MAX);
        // A forged last segment whose first position is the largest there is.
        std::fs::write(l.segment_path(u64::MAX), b"").unwrap();
        let l2 = Log::new("t".into(), l.dir.clone());
        assert_eq!(l2.append(&[b"{}"], 1 << 20).unwrap(), u64::MAX);
        let err = l2.append(&[b"{}"], 1 << 20).unwrap_err();
        let chain: Vec<String> =
            std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect();
        assert!(chain.iter().any(|m| m.contains("position")), "{chain:?}");
        let b = l.read(Cursor::after(u64::MAX - 1), 10).unwrap();
        assert_eq!(
            b.records.iter().map(|r| r.0).collect::<Vec<_>>(),
            [u64::MAX]
        );
        let ch_stats = l.bounds().unwrap();
        assert_eq!(ch_stats.0, u64::MAX);
    }

    #[test]
    fn corrupt_records_and_foreign_files_are_quarantined_not_fatal() {
        let (_d, l) = log();
        l.append(&[b"{\"a\":1}"], 1 << 20).unwrap();
        let seg = l.segment_path(1);
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"garbage line\n").unwrap();
        drop(f);
        std::fs::write(l.dir.join("notes.txt"), "hi").unwrap();
        l.append(&[b"{\"a\":2}"], 1 << 20).unwrap();
        let b = l.read(Cursor::start(), 10).unwrap();
        assert_eq!(b.records.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(b.problems.len(), 2, "{:?}", b.problems);
        assert!(b.problems.iter().all(|p| p.quarantined.is_some()));
        assert!(!l.dir.join("notes.txt").exists());
    }
}
