//! The storage's own tests: positions, tails, damage, bounded reads, hostile files.

use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::time::Duration;

use super::*;
use crate::record;

fn config(boot: &str) -> LogConfig {
    LogConfig {
        segment_size: 1 << 20,
        lock_timeout: Duration::from_secs(10),
        reserve: 10,
        retain: None,
        boot_id: boot.into(),
    }
}

fn log() -> (tempfile::TempDir, Log) {
    let d = tempfile::tempdir().unwrap();
    let l = Log::new("t".into(), d.path().join(".chan"), config("boot-1"));
    (d, l)
}

/// Another process's handle on the same log (same boot unless said otherwise).
fn other(l: &Log, boot: &str) -> Log {
    Log::new(
        "t".into(),
        l.dir.clone(),
        LogConfig {
            boot_id: boot.into(),
            ..l.config.clone()
        },
    )
}

/// An error with its causes, as the CLI prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn msg(i: u64) -> Vec<u8> {
    format!("{{\"i\":{i}}}").into_bytes()
}

fn send(l: &Log, i: u64) -> u64 {
    l.append(&[&msg(i)]).unwrap()
}

fn positions(b: &RawBatch) -> Vec<u64> {
    b.records.iter().map(|r| r.position).collect()
}

fn read_all(l: &Log, from: Cursor) -> RawBatch {
    l.read(from, 1_000_000).unwrap()
}

fn append_raw(path: &std::path::Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
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
    for i in 1..=25u64 {
        assert_eq!(send(&l, i), i);
    }
    let b = l.read(Cursor::start(), 100).unwrap();
    assert_eq!(positions(&b), (1..=25).collect::<Vec<_>>());
    assert_eq!(b.cursor.position, 25);
    assert!(b.gaps.is_empty() && b.ahead.is_none() && b.problems.is_empty());
    let more = l.read(b.cursor, 100).unwrap();
    assert!(more.records.is_empty());
    assert_eq!(
        l.read(Cursor::after(7), 100).unwrap().records[0].position,
        8
    );
    // Each record knows where a reader continues after it.
    assert_eq!(
        b.records[4].after,
        l.read(Cursor::start(), 5).unwrap().cursor
    );
    // The reservation grew in steps, durably, ahead of every position handed out.
    let e = l.read_epoch().unwrap().unwrap();
    assert!(e.reserved >= 25 && e.jumps.is_empty(), "{e:?}");
    let h = l.read_head().unwrap();
    assert_eq!((h.segment, h.last, h.reserved), (1, 25, e.reserved));
}

#[test]
fn segments_roll_and_readers_follow() {
    let (_d, l) = log();
    let l = Log::new(
        "t".into(),
        l.dir.clone(),
        LogConfig {
            segment_size: 300,
            ..l.config.clone()
        },
    );
    for i in 0..50 {
        l.append(&[b"{\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}"])
            .unwrap();
        let _ = i;
    }
    let listing = l.list(&mut Vec::new()).unwrap();
    assert!(listing.segments.len() > 5, "{:?}", listing.segments);
    let mut cur = Cursor::start();
    let mut seen = Vec::new();
    loop {
        let b = l.read(cur, 7).unwrap();
        assert!(b.gaps.is_empty());
        if b.records.is_empty() {
            break;
        }
        seen.extend(positions(&b));
        cur = b.cursor;
    }
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    // A position-only cursor finds its segment by name.
    assert_eq!(
        l.read(Cursor::after(33), 1).unwrap().records[0].position,
        34
    );
    assert_eq!(l.bounds().unwrap().newest, 50);
    // Every segment file is private, the first and the rolled ones.
    for s in &listing.segments {
        let mode = std::fs::metadata(l.segment_path(*s))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "segment {s}");
    }
}

#[test]
fn a_torn_tail_is_invisible_and_repaired_by_the_next_writer() {
    let (_d, l) = log();
    send(&l, 1);
    append_raw(&l.segment_path(1), b"{\"seq\":2,\"len\":10,\"crc\":\"0000");
    let b = l.read(Cursor::start(), 10).unwrap();
    assert_eq!(b.records.len(), 1);
    assert!(b.problems.is_empty());
    // A fresh writer (another process) repairs it, and uses the torn record's position:
    // it was never visible to anyone.
    let l2 = other(&l, "boot-1");
    assert_eq!(send(&l2, 2), 2);
    let b2 = l.read(b.cursor, 10).unwrap();
    assert_eq!(positions(&b2), [2]);
    assert!(b2.gaps.is_empty());
    assert_eq!(l.quarantine_dir().read_dir().unwrap().count(), 1);
}

/// A writer repairing a torn tail (truncating it) while a reader is between its look at
/// the segment's size and its read must neither fail the reader nor make it skip a
/// record as corrupt.
#[test]
fn readers_racing_a_torn_tail_repair_neither_fail_nor_lose_records() {
    let (_d, l) = log();
    let m: &[u8] = b"{\"n\":1}";
    l.append(&[m]).unwrap();
    let mut rec = Vec::new();
    record::encode(2, m, &mut rec);
    let rounds = 1000u64;
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
                append_raw(&seg, &vec![b'x'; torn]);
                other(&l, "boot-1").append(&[m]).unwrap();
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
                assert_eq!(r.position, cur.position + 1 + i as u64);
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
/// forged segment at the end of the number range) give an empty read or a clear error,
/// never an overflow panic or a wrapped position 0.
#[test]
fn positions_at_the_end_of_the_range_neither_panic_nor_wrap() {
    let (_d, l) = log();
    send(&l, 1);
    let b = l.read(Cursor::after(u64::MAX), 10).unwrap();
    assert!(b.records.is_empty() && b.pruned.is_none(), "{b:?}");
    assert_eq!(b.cursor.position, u64::MAX);
    // A forged last segment whose first position is the largest there is, found by a
    // writer that has no head to go by.
    std::fs::write(l.segment_path(u64::MAX), b"").unwrap();
    std::fs::remove_file(l.head_path()).unwrap();
    let l2 = other(&l, "boot-1");
    assert_eq!(send(&l2, 2), u64::MAX);
    let err = chain(&l2.append(&[b"{}"]).unwrap_err());
    assert!(err.contains("no position left"), "{err}");
    let b = l.read(Cursor::after(u64::MAX - 1), 10).unwrap();
    assert_eq!(positions(&b), [u64::MAX]);
    assert_eq!(l.bounds().unwrap().newest, u64::MAX);
}

#[test]
fn corrupt_records_and_foreign_files_are_quarantined_not_fatal() {
    let (_d, l) = log();
    send(&l, 1);
    append_raw(&l.segment_path(1), b"garbage line\n");
    std::fs::write(l.dir.join("notes.txt"), "hi").unwrap();
    send(&l, 2);
    let b = read_all(&l, Cursor::start());
    // The damaged line sat at the end of the log when the second writer came: it cannot
    // know which position it held, so it skips to fresh positions (a gap) rather than risk
    // using one twice.
    assert_eq!(b.records.len(), 2);
    assert_eq!(b.records[0].position, 1);
    assert_eq!(b.problems.len(), 2, "{:?}", b.problems);
    assert!(b.problems.iter().all(|p| p.quarantined.is_some()));
    assert!(!l.dir.join("notes.txt").exists());
}

/// Issue 11, item 4: a segment cut back (truncated at a record boundary) while a consumer had
/// read to its end. The log is now shorter than its cursor: the reader is told (not silently
/// given nothing), and new messages get positions after every position ever handed out, so
/// the reader sees them and is told which positions were lost.
#[test]
fn a_truncated_segment_never_gets_its_positions_reused() {
    let (_d, l) = log();
    for i in 1..=5 {
        send(&l, i);
    }
    let consumer = read_all(&l, Cursor::start()).cursor;
    assert_eq!(consumer.position, 5);
    // Cut back to three records.
    let seg = l.segment_path(1);
    let three = read_all(&l, Cursor::start()).records[3].offset;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(three)
        .unwrap();
    let b = read_all(&l, consumer);
    assert!(b.records.is_empty());
    assert_eq!(
        b.ahead,
        Some(Ahead {
            cursor: 5,
            newest: 3
        })
    );
    // Another process sends: it finds the log shorter than the head says, and jumps.
    let p = send(&other(&l, "boot-1"), 6);
    assert!(p > 5, "position {p} reused");
    let b = read_all(&l, consumer);
    assert_eq!(positions(&b), [p]);
    assert_eq!(b.ahead, None);
    assert_eq!(b.gaps.len(), 1);
    assert_eq!(
        (b.gaps[0].from, b.gaps[0].to, b.gaps[0].cause),
        (6, p - 1, GapCause::Damage)
    );
    // A reader from the start is told that 4..p-1 are gone.
    let b = read_all(&l, Cursor::start());
    assert_eq!(positions(&b), [1, 2, 3, p]);
    assert_eq!((b.gaps[0].from, b.gaps[0].cause), (4, GapCause::Damage));
    // The writer's own cached state does not hide the loss either.
    std::fs::OpenOptions::new()
        .write(true)
        .open(l.segment_path(p))
        .unwrap()
        .set_len(0)
        .unwrap();
    let q = send(&l, 7);
    assert!(q > p, "{q} <= {p}");
}

/// Issue 11, item 4: a damaged (one flipped byte) or zero-filled last record.
#[test]
fn a_damaged_or_zeroed_last_record_never_gets_its_position_reused() {
    for zero in [false, true] {
        let (_d, l) = log();
        for i in 1..=4 {
            send(&l, i);
        }
        let seg = l.segment_path(1);
        let off = read_all(&l, Cursor::start()).records[3].offset;
        let len = std::fs::metadata(&seg).unwrap().len() - off;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        if zero {
            // What a power cut can leave: the file's length survived, its data did not.
            f.write_all_at(&vec![0u8; len as usize], off).unwrap();
        } else {
            f.write_all_at(b"X", off + len - 3).unwrap();
        }
        let p = send(&other(&l, "boot-1"), 5);
        assert!(p > 4, "zero={zero}: position {p} reused");
        let b = read_all(&l, Cursor::start());
        assert_eq!(positions(&b), [1, 2, 3, p], "zero={zero}");
        assert!(
            b.gaps
                .iter()
                .any(|g| g.from == 4 && g.cause == GapCause::Damage),
            "{:?}",
            b.gaps
        );
        if !zero {
            assert_eq!(b.problems.len(), 1, "{:?}", b.problems);
        }
    }
}

/// After a restart (another boot id: a power cut), the positions reserved before it are
/// skipped: one that was visible before the cut but lost with it is never handed out again.
#[test]
fn after_a_restart_positions_continue_past_the_reservation() {
    let (_d, l) = log();
    for i in 1..=3 {
        send(&l, i);
    }
    // The power cut loses record 3 (it was visible, not yet durable).
    let seg = l.segment_path(1);
    let off = read_all(&l, Cursor::start()).records[2].offset;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(off)
        .unwrap();
    let reserved = l.read_epoch().unwrap().unwrap().reserved;
    let after = other(&l, "boot-2");
    let p = send(&after, 4);
    assert_eq!(p, reserved + 1);
    let b = after.read(Cursor::start(), 100).unwrap();
    assert_eq!(positions(&b), [1, 2, p]);
    assert_eq!(
        b.gaps,
        vec![Gap {
            from: 3,
            to: reserved,
            cause: GapCause::Restart
        }]
    );
    // The next restart with nothing lost skips only what was reserved and unused.
    let again = other(&l, "boot-3");
    let q = send(&again, 5);
    assert!(q > p);
    let e = l.read_epoch().unwrap().unwrap();
    assert_eq!(e.boot, "boot-3");
    assert_eq!(e.jumps.len(), 2);
}

/// Issue 12: a 3 GiB (sparse) tail without a line break in the active segment must not make
/// a writer or a reader allocate (or read) it: the writer leaves it alone and starts a new
/// segment after fresh positions; readers look at most one torn write's length into it.
#[test]
fn a_huge_tail_is_stepped_over_never_read_whole() {
    let (_d, l) = log();
    send(&l, 1);
    let seg = l.segment_path(1);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let size = 3u64 << 30;
    f.set_len(size).unwrap(); // 3 GiB of (sparse) zeros, no line break
    let p = send(&other(&l, "boot-1"), 2);
    assert!(p > 1);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        size,
        "left for doctor"
    );
    let b = read_all(&l, Cursor::start());
    assert_eq!(positions(&b), [1, p]);
    assert_eq!(b.problems.len(), 1, "{:?}", b.problems);
    assert!(
        b.problems[0].reason.contains("not a complete record"),
        "{}",
        b.problems[0]
    );
    let q = b.problems[0].quarantined.as_ref().unwrap();
    assert!(std::fs::metadata(q).unwrap().len() <= (QUARANTINE_COPY_LIMIT + 200) as u64);
    assert_eq!(l.bounds().unwrap().newest, p);
}

#[test]
fn an_overlong_line_is_skipped_and_quarantined_in_part() {
    for (mib, words) in [
        (18u64, "longer than any record"),
        (40, "not a complete record"),
    ] {
        let (_d, l) = log();
        send(&l, 1);
        let seg = l.segment_path(1);
        let start = std::fs::metadata(&seg).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        // A (sparse) line longer than any record, ending with a line break.
        let end = start + (mib << 20);
        f.set_len(end).unwrap();
        f.write_all_at(b"\n", end - 1).unwrap();
        let p = send(&other(&l, "boot-1"), 2);
        let b = read_all(&l, Cursor::start());
        assert_eq!(positions(&b), [1, p]);
        assert_eq!(b.problems.len(), 1, "{:?}", b.problems);
        assert!(b.problems[0].reason.contains(words), "{}", b.problems[0]);
        let q = b.problems[0].quarantined.as_ref().unwrap();
        assert!(std::fs::metadata(q).unwrap().len() <= (QUARANTINE_COPY_LIMIT + 200) as u64);
    }
}

#[test]
fn fifos_in_a_channel_directory_never_hang() {
    let (_d, l) = log();
    send(&l, 1);
    let fifo = |p: &std::path::Path| {
        let _ = std::fs::remove_file(p);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    };
    // A FIFO named like a segment is moved aside, unopened.
    fifo(&l.segment_path(100));
    let b = read_all(&l, Cursor::start());
    assert_eq!(positions(&b), [1]);
    assert!(!l.segment_path(100).exists());
    // A FIFO as the head hint is no hint; as the epoch, a clear error.
    fifo(&l.head_path());
    assert!(l.read_head().is_none());
    fifo(&l.epoch_path());
    let err = chain(&other(&l, "boot-1").append(&[b"{}"]).unwrap_err());
    assert!(err.contains("FIFO"), "{err}");
    std::fs::remove_file(l.epoch_path()).unwrap();
    // As the lock file: refused, not waited on.
    std::fs::remove_file(l.head_path()).unwrap();
    fifo(&l.lock_path());
    let err = chain(&other(&l, "boot-1").append(&[b"{}"]).unwrap_err());
    assert!(err.contains("FIFO"), "{err}");
}

#[test]
fn a_held_lock_times_out_naming_the_holder() {
    let (_d, l) = log();
    send(&l, 1);
    let lock = maos_core::fsx::LockFile::open(&l.lock_path()).unwrap();
    let _held = lock.exclusive(Duration::from_secs(1)).unwrap();
    let quick = Log::new(
        "t".into(),
        l.dir.clone(),
        LogConfig {
            lock_timeout: Duration::from_millis(50),
            ..l.config.clone()
        },
    );
    let err = quick.append(&[b"{}"]).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let text = chain(&err);
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
}

#[test]
fn acknowledging_makes_durable_and_refuses_positions_beyond_the_log() {
    let (_d, l) = log();
    for i in 1..=3 {
        send(&l, i);
    }
    l.make_durable_through(3).unwrap();
    l.make_durable_through(0).unwrap();
    let err = l.make_durable_through(4).unwrap_err();
    assert!(
        matches!(
            err,
            Error::AheadOfLog {
                position: 4,
                newest: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn pruning_keeps_whole_segments_and_files_private() {
    let (_d, l) = log();
    let l = Log::new(
        "t".into(),
        l.dir.clone(),
        LogConfig {
            segment_size: 200,
            ..l.config.clone()
        },
    );
    for i in 0..40 {
        send(&l, i);
    }
    let rep = l.prune(crate::Retention::Segments(2)).unwrap();
    assert!(rep.segments_removed > 0);
    assert_eq!(l.list(&mut Vec::new()).unwrap().segments.len(), 2);
    let rep = l.prune(crate::Retention::Keep(0)).unwrap();
    assert_eq!(rep.oldest, 41);
    let segs = l.list(&mut Vec::new()).unwrap().segments;
    assert_eq!(segs, [41]);
    let mode = std::fs::metadata(l.segment_path(41))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(send(&l, 41), 41);
    let b = read_all(&l, Cursor::start());
    assert_eq!(b.pruned, Some(crate::Pruned { from: 1, to: 40 }));
    assert_eq!(positions(&b), [41]);
}

#[test]
fn writers_prune_by_themselves_when_told_to() {
    let (_d, l) = log();
    let l = Log::new(
        "t".into(),
        l.dir.clone(),
        LogConfig {
            segment_size: 200,
            retain: Some(crate::Retention::Segments(3)),
            ..l.config.clone()
        },
    );
    for i in 0..200 {
        send(&l, i);
    }
    assert!(l.list(&mut Vec::new()).unwrap().segments.len() <= 3);
    let b = read_all(&l, Cursor::start());
    let crate::Pruned { from, to } = b.pruned.unwrap();
    assert_eq!(from, 1);
    assert_eq!(b.records.first().unwrap().position, to + 1);
    assert_eq!(b.records.last().unwrap().position, 200);
}

/// Issue 11, item 4: a record is readable before its `fdatasync`; a consumer that acknowledges
/// it must not store a cursor that a power cut could leave ahead of the log. The
/// acknowledgement makes the record durable first.
#[test]
fn an_acknowledged_cursor_is_never_ahead_of_the_log_after_a_power_cut() {
    use maos_core::fsx::sim::{Cut, Recording};
    let (d, l) = log();
    send(&l, 1);
    let rec = Recording::start(d.path()).unwrap();
    // A sender writes record 2 and dies before its fdatasync.
    let p = l.append_unsynced(&[&msg(2)]).unwrap();
    assert_eq!(p, 2);
    // A reader sees it and acknowledges it: what Consumer::ack does before storing.
    let b = read_all(&l, Cursor::start());
    assert_eq!(positions(&b), [1, 2]);
    l.make_durable_through(b.cursor.position).unwrap();
    let stored = d.path().join("cursor.json");
    maos_core::fsx::write_json_replace(&stored, &b.cursor).unwrap();
    // The power fails right after the acknowledgement is durable.
    let img = tempfile::tempdir().unwrap();
    rec.image(&Cut::durable_only(rec.len()), img.path())
        .unwrap();
    let after = Log::new("t".into(), img.path().join(".chan"), config("boot-2"));
    let cursor: Cursor =
        serde_json::from_slice(&std::fs::read(img.path().join("cursor.json")).unwrap()).unwrap();
    assert_eq!(cursor.position, 2);
    let b = read_all(&after, cursor);
    assert_eq!(b.ahead, None, "the acknowledged record was lost");
    assert_eq!(positions(&read_all(&after, Cursor::start())), [1, 2]);
}
