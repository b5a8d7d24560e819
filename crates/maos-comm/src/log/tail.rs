//! Finding where the complete records of a segment end, with bounded memory: a segment's tail
//! may hold a torn record left by a killed writer, damage, or (planted) gigabytes without a
//! line break; none of it may make a writer or reader allocate without limit.

use super::{MAX_RECORD, MAX_TORN};
use crate::record;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// How much of a segment's end is read first: a record that ends the file and fits here
/// needs no other read.
const QUICK: u64 = 4 << 10;
/// Chunk size of backward searches.
const CHUNK: u64 = 64 << 10;
/// How often a scan starts over because the file shrank under it (a writer repaired a torn
/// tail while an unlocked reader looked).
const MAX_RETRIES: u32 = 100;

/// Where a segment's complete records end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    /// End of the last complete line; bytes after it are a torn tail (not yet a record).
    pub(crate) valid_end: u64,
    /// Position of the last record (`first - 1` for a segment without complete lines);
    /// `None` when the last complete line is not a good record.
    pub(crate) last: Option<u64>,
    /// Why the last complete line is not a good record.
    pub(crate) damage: Option<String>,
}

/// Why a tail could not be found.
#[derive(Debug)]
pub(crate) enum TailError {
    Io(std::io::Error),
    /// More than [`MAX_TORN`] bytes after the last line break: no writer leaves that.
    Garbage {
        size: u64,
    },
}

/// Scans the end of segment `first` (`file`, `size` bytes as last measured).
pub(crate) fn scan(file: &File, size: u64, first: u64) -> Result<Tail, TailError> {
    let mut size = size;
    for _ in 0..MAX_RETRIES {
        match scan_once(file, size, first) {
            Err(TailError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                size = file.metadata().map_err(TailError::Io)?.len();
            }
            other => return other,
        }
    }
    scan_once(file, size, first)
}

fn scan_once(file: &File, size: u64, first: u64) -> Result<Tail, TailError> {
    let empty = Tail {
        valid_end: 0,
        last: Some(first - 1),
        damage: None,
    };
    if size == 0 {
        return Ok(empty);
    }
    // The common case, cheaply: the last record ends the file and fits in the last 4 KiB.
    let w = size.min(QUICK);
    let mut buf = vec![0u8; w as usize];
    file.read_exact_at(&mut buf, size - w)
        .map_err(TailError::Io)?;
    if buf.last() == Some(&b'\n') {
        let body = &buf[..buf.len() - 1];
        let start = match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => Some(i + 1),
            None if w == size => Some(0),
            None => None,
        };
        if let Some(start) = start
            && let Ok(p) = record::parse(&body[start..])
            && p.seq >= first
        {
            return Ok(Tail {
                valid_end: size,
                last: Some(p.seq),
                damage: None,
            });
        }
    }
    let Some(nl) = rfind_newline(file, size, MAX_TORN).map_err(TailError::Io)? else {
        if size > MAX_TORN {
            return Err(TailError::Garbage { size });
        }
        return Ok(empty); // a torn first record
    };
    let valid_end = nl + 1;
    let start = match rfind_newline(file, nl, MAX_RECORD as u64 + 1).map_err(TailError::Io)? {
        Some(p) => p + 1,
        None if nl <= MAX_RECORD as u64 => 0,
        None => {
            return Ok(Tail {
                valid_end,
                last: None,
                damage: Some(format!(
                    "its last line is longer than any record ({MAX_RECORD} bytes)"
                )),
            });
        }
    };
    let mut line = vec![0u8; (nl - start) as usize];
    file.read_exact_at(&mut line, start)
        .map_err(TailError::Io)?;
    Ok(match record::parse(&line) {
        Ok(p) if p.seq >= first => Tail {
            valid_end,
            last: Some(p.seq),
            damage: None,
        },
        Ok(p) => Tail {
            valid_end,
            last: None,
            damage: Some(format!(
                "its last record has position {}, below the segment's first position {first}",
                p.seq
            )),
        },
        Err(reason) => Tail {
            valid_end,
            last: None,
            damage: Some(format!(
                "its last record at byte {start} is damaged: {reason}"
            )),
        },
    })
}

/// The offset of the last `\n` in `[end - limit, end)`, reading backwards in chunks.
pub(crate) fn rfind_newline(file: &File, end: u64, limit: u64) -> std::io::Result<Option<u64>> {
    let stop = end.saturating_sub(limit);
    let mut hi = end;
    let mut buf = vec![0u8; CHUNK.min(limit.max(1)) as usize];
    while hi > stop {
        let lo = hi.saturating_sub(CHUNK).max(stop);
        let n = (hi - lo) as usize;
        file.read_exact_at(&mut buf[..n], lo)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// The offset just after the next `\n` at or after `offset` (before `end`), reading forward
/// in chunks; `None` when there is none.
pub(crate) fn find_line_end(
    file: &File,
    mut offset: u64,
    end: u64,
) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; CHUNK as usize];
    while offset < end {
        let n = ((end - offset).min(CHUNK)) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            return Ok(Some(offset + i as u64 + 1));
        }
        offset += n as u64;
    }
    Ok(None)
}

/// Calls `f(offset, line)` for every complete line of `[offset, end)` that is at most
/// [`MAX_RECORD`] bytes long; longer lines are passed as `None` (their bytes are not read
/// into memory). Memory is bounded by one record; a line longer than [`MAX_TORN`] ends the
/// walk (nothing a writer wrote can follow it).
pub(crate) fn for_each_line(
    file: &File,
    mut offset: u64,
    end: u64,
    mut f: impl FnMut(u64, Option<&[u8]>),
) -> std::io::Result<()> {
    let mut chunk = (1usize << 20).min(MAX_RECORD + 1);
    while offset < end {
        let n = ((end - offset) as usize).min(chunk);
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, offset)?;
        let mut pos = 0;
        while let Some(i) = buf[pos..].iter().position(|&b| b == b'\n') {
            f(offset + pos as u64, Some(&buf[pos..pos + i]));
            pos += i + 1;
        }
        if pos == 0 {
            if n < chunk {
                return Ok(()); // an incomplete line at the end
            }
            if chunk > MAX_RECORD {
                // Longer than any record: skip to its end without holding it (no writer
                // appends after more than MAX_TORN bytes without a line break: stop there).
                f(offset, None);
                match find_line_end(file, offset + n as u64, end.min(offset + MAX_TORN))? {
                    Some(e) => offset = e,
                    None => return Ok(()),
                }
                chunk = 1 << 20;
                continue;
            }
            chunk = (chunk * 4).min(MAX_RECORD + 1);
            continue;
        }
        offset += pos as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(bytes).unwrap();
        let f = File::open(t.path()).unwrap();
        (t, f)
    }

    fn rec(seq: u64) -> Vec<u8> {
        let mut v = Vec::new();
        record::encode(seq, br#"{"a":1}"#, &mut v);
        v
    }

    #[test]
    fn the_tail_is_the_end_of_the_last_good_record() {
        let mut bytes = rec(5);
        bytes.extend(rec(6));
        let (_t, f) = file_with(&bytes);
        let t = scan(&f, bytes.len() as u64, 5).unwrap();
        assert_eq!(t.valid_end, bytes.len() as u64);
        assert_eq!(t.last, Some(6));
        // A torn tail is not part of it.
        let mut torn = bytes.clone();
        torn.extend_from_slice(b"{\"seq\":7,\"len\"");
        let (_t, f) = file_with(&torn);
        let t = scan(&f, torn.len() as u64, 5).unwrap();
        assert_eq!((t.valid_end, t.last), (bytes.len() as u64, Some(6)));
        // An empty segment, and one with only a torn record.
        let (_t, f) = file_with(b"");
        assert_eq!(scan(&f, 0, 5).unwrap().last, Some(4));
        let (_t, f) = file_with(b"{\"seq\":5");
        assert_eq!(scan(&f, 8, 5).unwrap().valid_end, 0);
    }

    #[test]
    fn a_damaged_last_record_is_named_not_guessed() {
        let mut bytes = rec(5);
        let mut bad = rec(6);
        let n = bad.len();
        bad[n - 4] ^= 1;
        bytes.extend(bad);
        let (_t, f) = file_with(&bytes);
        let t = scan(&f, bytes.len() as u64, 5).unwrap();
        assert_eq!(t.last, None);
        assert!(t.damage.unwrap().contains("damaged"));
        // Zeros then a newline: a complete but damaged line.
        let mut z = rec(5);
        z.extend(vec![0u8; 100]);
        z.push(b'\n');
        let (_t, f) = file_with(&z);
        assert_eq!(scan(&f, z.len() as u64, 5).unwrap().last, None);
    }

    #[test]
    fn a_huge_tail_without_a_line_break_is_refused_without_reading_it_all() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(t.path())
            .unwrap();
        f.write_all_at(&rec(1), 0).unwrap();
        // A sparse 3 GiB of zeros after it.
        let size = 3u64 << 30;
        f.set_len(size).unwrap();
        match scan(&f, size, 1) {
            Err(TailError::Garbage { size: s }) => assert_eq!(s, size),
            other => panic!("{other:?}"),
        }
        // And a 3 GiB line that does end with a newline is damage, found without reading it.
        f.write_all_at(b"\n", size - 1).unwrap();
        let t = scan(&f, size, 1).unwrap();
        assert_eq!(t.last, None);
        assert!(t.damage.unwrap().contains("longer than any record"));
    }
}
