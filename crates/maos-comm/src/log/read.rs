//! Reading forward from a cursor: at a cost proportional to what is new, never past the last
//! complete record, reporting pruned history, skipped positions, a cursor ahead of the log and
//! damaged records instead of hiding them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use maos_core::fsx;

use super::tail;
use super::{
    Ahead, Cursor, Epoch, Gap, GapCause, Log, MAX_BATCH_BYTES, MAX_RECORD, MAX_TORN, Problem,
    QUARANTINE_COPY_LIMIT, RawBatch, RawRecord,
};
use crate::record;
use crate::{Error, Result};

/// First read size; it grows (x4) up to one record when a line does not fit.
const READ_CHUNK: usize = 256 << 10;
/// How often a reader starts a segment over because a writer changed its tail meanwhile.
const MAX_RETRIES: u32 = 1000;
/// How long a reader waits for the writers' lock to confirm that a bad line is really damage
/// (and not bytes a writer is replacing).
const CONFIRM_WAIT: Duration = Duration::from_millis(200);

/// How reading one segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegRead {
    /// Enough records (or bytes) were collected.
    Full,
    /// Every complete record is read.
    End,
    /// The bytes changed under the reader (a writer repaired a torn tail, and possibly
    /// appended in its place): read again from the cursor, which is at a record boundary.
    Changed,
    /// A bad line could not be confirmed as damage (the writers' lock is held for long):
    /// stop before it; the next read looks again.
    Stalled,
}

/// What the reader knows about the segment it is in.
struct SegState {
    /// The largest position seen in the segment so far (`first - 1` when none, or the
    /// cursor's position when reading started mid-segment).
    max_seen: u64,
    /// Whether every record of the segment before the cursor was looked at (so `max_seen`
    /// is the segment's true last position once the end is reached).
    from_start: bool,
}

impl Log {
    /// Reads forward from `cursor`: at most `max` records.
    pub(crate) fn read(&self, cursor: Cursor, max: usize) -> Result<RawBatch> {
        let mut out = RawBatch {
            cursor,
            ..RawBatch::default()
        };
        let mut cur = cursor;
        let mut from_start = false;
        if cur.segment == 0 {
            if !self.locate(&mut cur, &mut out)? {
                out.cursor = cur;
                return Ok(out);
            }
            from_start = true;
        }
        let mut epoch: Option<Option<Epoch>> = None;
        let mut sealed = false;
        let mut relocations = 0;
        let mut changes = 0;
        let mut bytes = 0usize;
        loop {
            let path = self.segment_path(cur.segment);
            let file = match fsx::open_read(&path) {
                Ok(f) => f,
                Err(e) if e.is_not_found() => {
                    relocations += 1;
                    if relocations > 100 || !self.locate(&mut cur, &mut out)? {
                        break;
                    }
                    from_start = true;
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
                // Not a record boundary: the segment shrank below the cursor (truncated), or
                // the cursor is hand-made. Scan the segment from its start; records up to
                // `position` are skipped.
                cur.offset = 0;
                from_start = true;
            }
            let mut seg = SegState {
                max_seen: if cur.offset == 0 {
                    cur.segment - 1
                } else {
                    cur.position
                },
                from_start: from_start || cur.offset == 0,
            };
            match self.read_segment(
                &file, &path, size, &mut cur, max, &mut bytes, &mut seg, &mut out,
            )? {
                SegRead::Full | SegRead::Stalled => break,
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
            let Some(next) = self.next_segment(cur.segment, &mut out.problems)? else {
                if seg.from_start && cur.position > seg.max_seen {
                    out.ahead = Some(Ahead {
                        cursor: cur.position,
                        newest: seg.max_seen,
                    });
                }
                break;
            };
            if !sealed {
                // A record may have completed just before the roll: read this segment once
                // more now that it is known to be sealed.
                sealed = true;
                continue;
            }
            if cur.offset < size {
                let n = ((size - cur.offset) as usize).min(QUARANTINE_COPY_LIMIT);
                let mut rest = vec![0u8; n];
                let _ = file.read_exact_at(&mut rest, cur.offset);
                let q =
                    self.quarantine_bytes(cur.segment, cur.offset, "bad", &rest, size - cur.offset);
                out.problems.push(Problem {
                    path: path.clone(),
                    offset: Some(cur.offset),
                    position: None,
                    reason: format!(
                        "{} bytes at the end of a sealed segment that are not a complete record \
                         (a writer killed mid-write, or damage); readers skip them",
                        size - cur.offset
                    ),
                    quarantined: q,
                });
            }
            if let Some(from) = cur.position.checked_add(1).filter(|&f| f < next) {
                let e = epoch.get_or_insert_with(|| self.read_epoch().ok().flatten());
                let cause = e
                    .as_ref()
                    .map_or(GapCause::Unknown, |e| e.cause_of(from, next - 1));
                let gap = Gap {
                    from,
                    to: next - 1,
                    cause,
                };
                if cause != GapCause::Restart {
                    tracing::debug!(channel = %self.channel, %gap, "positions missing (returned to the reader)");
                }
                out.gaps.push(gap);
                cur.position = next - 1;
            }
            cur.segment = next;
            cur.offset = 0;
            from_start = true;
            sealed = false;
        }
        out.cursor = cur;
        Ok(out)
    }

    /// The segment after `segment`, if any: `None` at once when this boot's head hint names
    /// `segment` as the active one (no listing), else from a listing.
    fn next_segment(&self, segment: u64, problems: &mut Vec<Problem>) -> Result<Option<u64>> {
        if let Some(h) = self.read_head()
            && h.current(&self.config.boot_id)
            && h.segment == segment
        {
            return Ok(None);
        }
        Ok(self.list(problems)?.after(segment))
    }

    /// Places `cur` at the segment that holds `cur.position + 1`; notes a pruned gap.
    /// Returns false when there is nothing to read.
    fn locate(&self, cur: &mut Cursor, out: &mut RawBatch) -> Result<bool> {
        let listing = self.list(&mut out.problems)?;
        // Nothing can come after the largest position: look for it in the newest segment,
        // whose end then tells that the cursor is ahead of the log.
        let want = cur.position.saturating_add(1);
        match listing.holding(want) {
            Some(s) => {
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
                out.pruned = Some(crate::Pruned {
                    from: out.pruned.map_or(from, |p| p.from),
                    to,
                });
                cur.position = to;
                cur.segment = oldest;
                cur.offset = 0;
            }
        }
        Ok(true)
    }

    /// Reads the complete records of one segment after `cur`.
    #[allow(clippy::too_many_arguments)] // one reader's state, threaded through one pass
    fn read_segment(
        &self,
        file: &File,
        path: &Path,
        size: u64,
        cur: &mut Cursor,
        max: usize,
        bytes: &mut usize,
        seg: &mut SegState,
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
                let end = offset + i as u64 + 1;
                match record::parse(line) {
                    Ok(p) => {
                        seg.max_seen = seg.max_seen.max(p.seq);
                        if p.seq > cur.position {
                            out.records.push(RawRecord {
                                position: p.seq,
                                bytes: p.msg.to_vec(),
                                segment: cur.segment,
                                offset,
                                after: Cursor {
                                    position: p.seq,
                                    segment: cur.segment,
                                    offset: end,
                                },
                            });
                            *bytes += p.msg.len();
                            cur.position = p.seq;
                        }
                    }
                    Err(reason) => match self.confirm_corrupt(file, offset, line) {
                        Some(true) => {
                            let q = self.quarantine_bytes(
                                cur.segment,
                                offset,
                                "bad",
                                line,
                                line.len() as u64,
                            );
                            tracing::debug!(channel = %self.channel, path = %path.display(),
                                offset, %reason, "damaged record skipped (returned to the reader)");
                            out.problems.push(Problem {
                                path: path.to_path_buf(),
                                offset: Some(offset),
                                position: None,
                                reason: format!("a damaged record: {reason}"),
                                quarantined: q,
                            });
                        }
                        Some(false) => {
                            // We saw torn bytes being replaced by a new record: not damage.
                            cur.offset = offset;
                            return Ok(SegRead::Changed);
                        }
                        None => {
                            cur.offset = offset;
                            return Ok(SegRead::Stalled);
                        }
                    },
                }
                pos += i + 1;
                if out.records.len() >= max || *bytes >= MAX_BATCH_BYTES {
                    cur.offset += pos as u64;
                    return Ok(SegRead::Full);
                }
            }
            if pos == 0 {
                if n < chunk {
                    return Ok(SegRead::End); // an incomplete record at the tail: not ours yet
                }
                if chunk > MAX_RECORD {
                    // A line longer than any record can be: find its end without holding it
                    // all, looking at most as far as a writer could have torn.
                    let limit = size.min(cur.offset.saturating_add(MAX_TORN));
                    let skip = tail::find_line_end(file, cur.offset + n as u64, limit)
                        .map_err(|e| self.io("read", path, e))?;
                    let Some(end) = skip else {
                        // No record boundary in reach: nothing a writer wrote follows (writers
                        // start a new segment after such damage). The rest of this segment is
                        // reported when the reader moves past it.
                        return Ok(SegRead::End);
                    };
                    let q = self.quarantine_bytes(
                        cur.segment,
                        cur.offset,
                        "bad",
                        &buf,
                        end - cur.offset,
                    );
                    out.problems.push(Problem {
                        path: path.to_path_buf(),
                        offset: Some(cur.offset),
                        position: None,
                        reason: format!(
                            "a line of {} bytes, longer than any record ({MAX_RECORD} bytes)",
                            end - cur.offset
                        ),
                        quarantined: q,
                    });
                    cur.offset = end;
                    chunk = READ_CHUNK;
                    continue;
                }
                chunk = (chunk * 4).min(MAX_RECORD + 1);
                continue;
            }
            cur.offset += pos as u64;
        }
        Ok(SegRead::End)
    }

    /// Whether the invalid line `line` at `offset` is really damage: true when it is still
    /// there, byte for byte, while no writer is inside its critical section (we hold the
    /// writers' lock shared). A reader that measured the segment while it ended with a torn
    /// tail may have read bytes that a writer was replacing (repair, then append): those are
    /// not damage, and the record now there must not be skipped. `None`: the lock could not
    /// be had in time (a stopped writer holds it); decide later.
    fn confirm_corrupt(&self, file: &File, offset: u64, line: &[u8]) -> Option<bool> {
        let Ok(lock) = fsx::LockFile::open(&self.lock_path()) else {
            return Some(true); // cannot synchronise with writers: report what we saw
        };
        let _guard = match lock.shared(CONFIRM_WAIT) {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(channel = %self.channel, error = &e as &dyn std::error::Error,
                    "cannot confirm a damaged record now; reading stops before it");
                return None;
            }
        };
        let mut now = vec![0u8; line.len() + 1];
        Some(
            file.read_exact_at(&mut now, offset).is_ok()
                && now[..line.len()] == *line
                && now[line.len()] == b'\n',
        )
    }

    /// Counts and bounds.
    pub(crate) fn bounds(&self) -> Result<super::Bounds> {
        for _ in 0..100 {
            let listing = self.list(&mut Vec::new())?;
            let Some(newest_seg) = listing.newest() else {
                return Ok(super::Bounds::default());
            };
            let mut bytes = 0;
            for s in &listing.segments {
                bytes += std::fs::symlink_metadata(self.segment_path(*s))
                    .map(|m| m.len())
                    .unwrap_or(0);
            }
            let newest = match self.segment_last(newest_seg) {
                Ok(l) => l,
                Err(Error::Core { source, .. }) if source.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            return Ok(super::Bounds {
                newest,
                first_segment: listing.segments[0],
                segments: listing.segments.len(),
                bytes,
            });
        }
        Err(self.io(
            "list",
            &self.dir,
            std::io::Error::other("the segments keep changing"),
        ))
    }

    /// The last position of segment `first` (its last good record; `first - 1` if none).
    pub(crate) fn segment_last(&self, first: u64) -> Result<u64> {
        let path = self.segment_path(first);
        let file = fsx::open_read(&path).map_err(|e| self.core(e))?;
        let size = file
            .metadata()
            .map_err(|e| self.io("stat", &path, e))?
            .len();
        match tail::scan(&file, size, first) {
            Ok(t) => match t.last {
                Some(l) => Ok(l),
                None => {
                    // The last line is damaged: the largest good position before it.
                    let mut max = first - 1;
                    tail::for_each_line(&file, 0, t.valid_end, |_, line| {
                        if let Some(p) = line.and_then(|l| record::parse(l).ok()) {
                            max = max.max(p.seq);
                        }
                    })
                    .map_err(|e| self.io("read", &path, e))?;
                    Ok(max)
                }
            },
            Err(tail::TailError::Io(e)) => Err(self.io("read", &path, e)),
            Err(tail::TailError::Garbage { .. }) => {
                let mut max = first - 1;
                tail::for_each_line(&file, 0, size, |_, line| {
                    if let Some(p) = line.and_then(|l| record::parse(l).ok()) {
                        max = max.max(p.seq);
                    }
                })
                .map_err(|e| self.io("read", &path, e))?;
                Ok(max)
            }
        }
    }
}

fn byte_is_newline(file: &File, offset: u64) -> bool {
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).is_ok() && b[0] == b'\n'
}
