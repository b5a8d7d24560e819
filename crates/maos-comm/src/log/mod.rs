//! The storage of a channel: a segmented append-only log under `.maos/channels/<name>/.chan/`.
//!
//! This module is the whole storage seam of maos-comm: everything above it (typed channels,
//! consumers, broadcast, the inbox) calls only [`Log::append`], [`Log::read`],
//! [`Log::make_durable_through`] (what a consumer does before it stores an acknowledgement),
//! [`Log::bounds`] and [`Log::prune`], so another backend (PostgreSQL) can implement the same
//! five operations with the same semantics.
//!
//! - `write.rs`: the writer (kernel lock with a timeout, torn-tail repair, position
//!   reservation, rolls and jumps, the head hint, then `fdatasync` outside the lock).
//! - `read.rs`: reading forward from a [`Cursor`] (gaps, pruned history, a cursor ahead of
//!   the log, damaged records).
//! - `state.rs`: the two small state files beside the segments, `head` (a hint written in
//!   place) and `epoch.json` (the durable position reservation and the record of jumps).
//! - `tail.rs`: finding the end of the last complete record with bounded memory.
//! - `quarantine.rs`: bounded copies of bad bytes and moved foreign files.
//! - `retention.rs`: pruning whole segments.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use maos_core::fsx;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod quarantine;
mod read;
mod retention;
mod state;
pub(crate) mod tail;
mod write;

pub(crate) use state::{Epoch, Jump};

/// The kernel-lock file of a channel's writers.
pub(crate) const LOCK_FILE: &str = "lock";
/// The head hint.
pub(crate) const HEAD_FILE: &str = "head";
/// The durable position reservation.
pub(crate) const EPOCH_FILE: &str = "epoch.json";
/// Durable consumers' cursors.
pub(crate) const CONSUMERS_DIR: &str = "consumers";
/// Where corrupt records and foreign files are moved.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";
/// Extension of segment files.
pub(crate) const SEGMENT_EXT: &str = ".jsonl";

/// The largest message (serialised envelope) any channel accepts: 16 MiB. Readers accept
/// records up to this size plus the record header; a longer line is damage.
pub const MAX_MESSAGE_LIMIT: usize = 16 << 20;
/// The longest line a reader accepts as a record.
pub(crate) const MAX_RECORD: usize = MAX_MESSAGE_LIMIT + crate::record::MAX_OVERHEAD;
/// At most this many bytes are written by one `write(2)`; a killed writer's torn tail is
/// never longer than this or one record, whichever is larger.
pub(crate) const MAX_APPEND: usize = 4 << 20;
/// The longest torn tail a writer repairs by itself: no writer ever leaves more.
pub(crate) const MAX_TORN: u64 = (MAX_RECORD + MAX_APPEND) as u64;
/// At most this many bytes of bad data are copied to `quarantine/` (the rest stays where it
/// was, or its size is noted).
pub(crate) const QUARANTINE_COPY_LIMIT: usize = 64 << 10;
/// A read returns at most this many message bytes (besides its record count limit).
pub(crate) const MAX_BATCH_BYTES: usize = 64 << 20;

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
            write!(f, " (a copy is in {})", q.display())?;
        }
        Ok(())
    }
}

/// Why positions hold no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GapCause {
    /// The writer resumed after a restart of the machine (a power loss): positions reserved
    /// before it were skipped, so none is ever used twice. No acknowledged message was among
    /// them; unacknowledged ones may have been.
    Restart,
    /// The log was found shorter than it had been (a truncated or deleted segment, a damaged
    /// last record): messages at these positions, acknowledged ones included, were lost.
    Damage,
    /// The writer could not tell whether these positions were used (its state files were
    /// missing or unreadable); messages may have been lost.
    Unknown,
}

/// Positions `from..=to` hold no message: the writer skipped them (see [`GapCause`]). Reported
/// to every reader that reads across them; positions are never used twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// First skipped position.
    pub from: u64,
    /// Last skipped position.
    pub to: u64,
    /// Why.
    pub cause: GapCause,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b) = (self.from, self.to);
        match self.cause {
            GapCause::Restart => write!(
                f,
                "positions {a}..{b} hold no message: the writer skipped them after a restart \
                 (no acknowledged message was among them)"
            ),
            GapCause::Damage => write!(
                f,
                "positions {a}..{b} were lost: the channel's log was truncated or damaged \
                 (`maos doctor` checks it)"
            ),
            GapCause::Unknown => write!(
                f,
                "positions {a}..{b} hold no message: the writer skipped them because its state \
                 files were missing, so messages may have been lost (`maos doctor` checks it)"
            ),
        }
    }
}

/// "The reader's cursor is after the newest message": the log lost messages the reader had
/// already consumed (a truncated or damaged segment). Reported until new messages arrive;
/// those get positions after the cursor, so nothing new is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ahead {
    /// The reader's position.
    pub cursor: u64,
    /// The newest position the log holds.
    pub newest: u64,
}

impl std::fmt::Display for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the cursor (position {}) is ahead of the channel's newest message ({}): the log lost \
             messages already read (truncated or damaged; `maos doctor` checks it); new messages \
             continue after the cursor",
            self.cursor, self.newest
        )
    }
}

/// One record as read from a segment.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub(crate) position: u64,
    pub(crate) bytes: Vec<u8>,
    /// The segment (its first position) and byte offset of the record.
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    /// Where a reader continues after this record.
    pub(crate) after: Cursor,
}

/// What a raw read returned.
#[derive(Debug, Default)]
pub(crate) struct RawBatch {
    /// In position order.
    pub(crate) records: Vec<RawRecord>,
    pub(crate) cursor: Cursor,
    /// Positions `from..=to` that were pruned before this reader got to them.
    pub(crate) pruned: Option<crate::Pruned>,
    pub(crate) gaps: Vec<Gap>,
    pub(crate) ahead: Option<Ahead>,
    pub(crate) problems: Vec<Problem>,
}

/// Counts and bounds of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Bounds {
    /// The newest position (0: none yet).
    pub(crate) newest: u64,
    /// First position of the oldest segment (0: no segment).
    pub(crate) first_segment: u64,
    /// Segment files.
    pub(crate) segments: usize,
    /// Bytes in segment files.
    pub(crate) bytes: u64,
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

impl Listing {
    pub(crate) fn newest(&self) -> Option<u64> {
        self.segments.last().copied()
    }

    /// The newest segment whose first position is at most `position`.
    pub(crate) fn holding(&self, position: u64) -> Option<u64> {
        self.segments
            .iter()
            .rev()
            .find(|&&s| s <= position)
            .copied()
    }

    /// The first segment after `segment`.
    pub(crate) fn after(&self, segment: u64) -> Option<u64> {
        self.segments.iter().find(|&&s| s > segment).copied()
    }
}

/// How a log is written: the parts of [`crate::ChannelOptions`] the storage uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogConfig {
    pub(crate) segment_size: u64,
    pub(crate) lock_timeout: Duration,
    pub(crate) reserve: u64,
    pub(crate) retain: Option<crate::Retention>,
    pub(crate) boot_id: String,
}

/// One channel's log.
pub(crate) struct Log {
    pub(crate) channel: String,
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    writer: Mutex<Option<write::Writer>>,
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
    pub(crate) fn new(channel: String, dir: PathBuf, config: LogConfig) -> Self {
        Self {
            channel,
            dir,
            config,
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

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// False only when nothing is at the channel's directory (something else there is not
    /// "missing": reading it reports what it is).
    pub(crate) fn exists(&self) -> bool {
        !matches!(std::fs::symlink_metadata(&self.dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
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
                || matches!(
                    &*name_str,
                    LOCK_FILE | HEAD_FILE | EPOCH_FILE | CONSUMERS_DIR | QUARANTINE_DIR
                )
            {
                continue;
            }
            if let Some(p) = self.quarantine_file(&entry.path()) {
                problems.push(p);
            }
        }
        out.segments.sort_unstable();
        Ok(out)
    }

    /// Stores `position` (and so everything before it) durably, so that a reader may act
    /// durably on it (store an acknowledgement): `fdatasync` of the segment that holds it
    /// (older segments were synced when they were sealed).
    ///
    /// # Errors
    /// [`Error::AheadOfLog`] when the log holds no position that large.
    pub(crate) fn make_durable_through(&self, position: u64) -> Result<()> {
        if position == 0 {
            return Ok(());
        }
        let listing = self.list(&mut Vec::new())?;
        let newest_seg = listing.newest();
        let Some(seg) = listing.holding(position) else {
            // Older than everything kept: pruned, durable long ago (or never there).
            return match newest_seg {
                Some(_) => Ok(()),
                None => Err(Error::AheadOfLog {
                    channel: self.channel.clone(),
                    position,
                    newest: 0,
                }),
            };
        };
        let path = self.segment_path(seg);
        let file = match fsx::DataFile::open_existing_rw(&path) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return self.make_durable_through(position),
            Err(e) => return Err(self.core(e)),
        };
        if Some(seg) == newest_seg {
            let size = file.len().map_err(|e| self.core(e))?;
            let t = tail::scan(file.file(), size, seg).map_err(|e| self.tail_error(&file, e))?;
            let last = t.last.unwrap_or(seg - 1);
            if position > last {
                return Err(Error::AheadOfLog {
                    channel: self.channel.clone(),
                    position,
                    newest: last,
                });
            }
        }
        file.sync_data().map_err(|e| self.core(e))
    }
}

#[cfg(test)]
mod tests;
