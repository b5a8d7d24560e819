//! Reading the log's tail (bounded, batch by batch) and appending to it.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use maos_core::fsx::{self, DataFile};

use super::graph::Graph;
use super::record::{MAX_RECORD_BYTES, Op, Record};
use super::snapshot::corrupt;
use crate::Error;

/// How much of a log a reader reads at once.
const CHUNK: usize = 4 << 20;

/// What reading a log's tail found at its end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TailEnd {
    /// Everything complete was applied; the log may grow later.
    Caught,
    /// A `rotate` record was applied: the log continues in this generation.
    Rotated { generation: u64, seq: u64 },
}

/// A reader's position in one log file.
#[derive(Debug)]
pub(crate) struct LogCursor {
    pub(crate) generation: u64,
    /// Byte offset of the first record not yet applied.
    pub(crate) offset: u64,
    /// Records applied from this log (drives compaction).
    pub(crate) records: u64,
    pub(crate) file: File,
}

/// The error for a record replay refuses: where it is, what it is, and what to do.
fn refused(path: &Path, offset: u64, seq: u64, what: impl std::fmt::Display) -> Error {
    corrupt(
        path,
        format!("record seq {seq} at byte {offset} could never have been written: {what}"),
    )
}

impl LogCursor {
    /// Reads from the cursor to the end of the log and applies every complete batch to
    /// `graph` (validating each record). Stops after a `rotate` record.
    pub(crate) fn read_tail(&mut self, path: &Path, graph: &mut Graph) -> Result<TailEnd, Error> {
        let len = self
            .file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        if len < self.offset {
            return Err(corrupt(
                path,
                format!(
                    "the log is {len} bytes, shorter than the {} bytes already read: it was cut or replaced",
                    self.offset
                ),
            ));
        }
        // Records of the batch being read (applied once its last record is read), and the
        // offset where that batch starts.
        let mut batch: Vec<(u64, Record)> = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        let mut pos = self.offset; // file offset of carry[0]
        let mut read_to = self.offset;
        while read_to < len {
            let want = usize::try_from(len - read_to).unwrap_or(CHUNK).min(CHUNK);
            let mut buf = vec![0u8; want];
            let n = self
                .file
                .read_at(&mut buf, read_to)
                .map_err(|e| Error::io("read", path, e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            read_to += n as u64;
            carry.extend_from_slice(&buf);
            let mut start = 0usize;
            while let Some(nl) = carry[start..].iter().position(|&b| b == b'\n') {
                let line = &carry[start..start + nl];
                let at = pos + start as u64;
                if line.len() > MAX_RECORD_BYTES {
                    return Err(corrupt(
                        path,
                        format!(
                            "the record at byte {at} is {} bytes, more than any writer writes ({MAX_RECORD_BYTES})",
                            line.len()
                        ),
                    ));
                }
                let expected = graph.seq + 1 + batch.len() as u64;
                let rec: Record = serde_json::from_slice(line).map_err(|e| {
                    corrupt(
                        path,
                        format!(
                            "the record at byte {at} (seq {expected} expected) is garbled: {e}: {}",
                            maos_core::excerpt(&String::from_utf8_lossy(line), 80)
                        ),
                    )
                })?;
                if rec.seq != expected {
                    return Err(corrupt(
                        path,
                        format!(
                            "the record at byte {at} has seq {}, expected {expected}: records are missing or repeated",
                            rec.seq
                        ),
                    ));
                }
                start += nl + 1;
                let more = rec.more;
                batch.push((at, rec));
                if more {
                    continue;
                }
                let batch_end = pos + start as u64;
                let mut effects = Vec::new();
                let mut rotated = None;
                for (at, rec) in batch.drain(..) {
                    if rotated.is_some() {
                        return Err(refused(
                            path,
                            at,
                            rec.seq,
                            "a record follows the rotate record in its batch",
                        ));
                    }
                    if let Op::Rotate { generation } = rec.op {
                        if generation != self.generation + 1 {
                            return Err(refused(
                                path,
                                at,
                                rec.seq,
                                format!(
                                    "it rotates to generation {generation}, but this log is generation {}",
                                    self.generation
                                ),
                            ));
                        }
                        rotated = Some((generation, rec.seq));
                    }
                    graph.apply(&rec, &mut effects).map_err(|e| match e {
                        Error::Corrupt { .. } | Error::Io { .. } | Error::Core(_) => e,
                        other => refused(path, at, rec.seq, other),
                    })?;
                    self.records += 1;
                }
                self.offset = batch_end;
                if let Some((generation, seq)) = rotated {
                    if len > batch_end {
                        return Err(corrupt(
                            path,
                            format!(
                                "{} bytes follow the rotate record at the end of the log",
                                len - batch_end
                            ),
                        ));
                    }
                    return Ok(TailEnd::Rotated { generation, seq });
                }
            }
            // Keep the incomplete line for the next chunk; the records of an incomplete batch
            // stay parsed in `batch` (applied once its last record arrives, or never).
            carry.drain(..start);
            pos += start as u64;
            if carry.len() > MAX_RECORD_BYTES {
                return Err(corrupt(
                    path,
                    format!(
                        "the record at byte {pos} is longer than any writer writes ({MAX_RECORD_BYTES} bytes)"
                    ),
                ));
            }
        }
        Ok(TailEnd::Caught)
    }
}

/// Appends `records` to the log at `path` (the caller holds the kernel lock and has applied
/// them) at `offset`, truncating a torn tail first, and, with `durable`, makes them durable
/// (else the caller does, after releasing the lock). Returns the bytes written.
pub(crate) fn append(
    writer: &mut DataFile,
    offset: u64,
    records: &[Record],
    durable: bool,
) -> Result<u64, Error> {
    let path = writer.path().to_path_buf();
    let len = writer.len()?;
    if len < offset {
        return Err(corrupt(
            &path,
            format!("the log is {len} bytes, shorter than the {offset} bytes already read"),
        ));
    }
    if len > offset {
        // A writer died in the middle of an append: drop the torn tail.
        tracing::debug!(path = %path.display(), torn = len - offset, "truncating torn log tail");
        writer.set_len(offset)?;
    }
    let mut bytes = Vec::with_capacity(256 * records.len());
    for rec in records {
        let before = bytes.len();
        serde_json::to_writer(&mut bytes, rec).map_err(|e| Error::Invalid {
            what: "task record",
            reason: e.to_string(),
        })?;
        if bytes.len() - before > MAX_RECORD_BYTES {
            return Err(Error::Invalid {
                what: "task record",
                reason: format!(
                    "a {} record would be {} bytes, more than the limit of {MAX_RECORD_BYTES}",
                    rec.op.kind(),
                    bytes.len() - before
                ),
            });
        }
        bytes.push(b'\n');
    }
    writer.append(&bytes)?;
    if durable {
        writer.sync_data()?;
    }
    Ok(bytes.len() as u64)
}

/// Opens a log for reading, `None` when it does not exist.
pub(crate) fn open_log(path: &Path) -> Result<Option<File>, Error> {
    match fsx::open_read(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}
