//! `maos doctor` for channels: checks every file of every channel (segments record by record,
//! the position state, consumers' cursors, quarantine) and the inbox states. A repair never
//! drops an acknowledged message: it cuts off only bytes after the last complete record
//! (keeping a copy of their start in quarantine), moves unusable state files to
//! `.maos/quarantine/`, and raises position reservations past every cursor.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use maos_core::doctor::{Finding, Severity, quarantine};
use maos_core::{ChannelName, Workspace, fsx};

use crate::envelope::Envelope;
use crate::log::{
    CONSUMERS_DIR, Cursor, Epoch, Jump, Log, MAX_TORN, QUARANTINE_COPY_LIMIT, QUARANTINE_DIR, tail,
};
use crate::{ChannelOptions, Error, GLOBAL_FEED, Result, list_channels, record};

const STORE: &str = "channels";

/// Checks every channel of `ws` and every inbox state; with `repair`, fixes what can be fixed
/// without losing acknowledged messages.
pub fn doctor(ws: &Workspace, repair: bool) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let mut names = list_channels(ws)?;
    let feed = ChannelName::new(GLOBAL_FEED).map_err(|e| Error::core(GLOBAL_FEED, e))?;
    if !names.contains(&feed) {
        names.push(feed);
    }
    let mut cursors: BTreeMap<String, Vec<(PathBuf, u64)>> = BTreeMap::new();
    inbox_states(ws, repair, &mut cursors, &mut out)?;
    for name in names {
        // The channel's own directory (for a topic name too: doctor looks at what is there).
        let dir = ws
            .channel_dir(&name)
            .map_err(|e| Error::core(name.as_str(), e))?
            .join(crate::CHANNEL_DATA_DIR);
        let log = Log::new(
            name.to_string(),
            dir,
            ChannelOptions::default().log_config(),
        );
        if !log.exists() {
            continue;
        }
        // Every directory from `channels/` down to the channel's data is private: a client
        // in another language that made one with its umask's mode is told (and repaired).
        let top = ws.channels_dir();
        let mut d = log.dir.clone();
        while d.starts_with(&top) && d != top {
            private_dir(&d, repair, &mut out)?;
            if !d.pop() {
                break;
            }
        }
        let extra = cursors.remove(name.as_str()).unwrap_or_default();
        check_channel(ws, &log, extra, repair, &mut out)?;
    }
    Ok(out)
}

fn finding(sev: Severity, path: &Path, problem: String, remedy: &str) -> Finding {
    Finding::new(sev, STORE, path, problem, remedy)
}

/// What a full scan of one segment found.
#[derive(Debug, Default)]
struct SegmentScan {
    last: Option<u64>,
    records: u64,
    damaged: Vec<(u64, String)>,
    undecodable: Vec<(u64, u64, String)>,
    out_of_order: Vec<(u64, u64)>,
    /// End of the last complete line, and the file size.
    valid_end: u64,
    size: u64,
    /// More than a writer could tear after the last line break.
    garbage: bool,
}

fn scan_segment(path: &Path, first: u64) -> std::io::Result<SegmentScan> {
    let file = fsx::open_read(path).map_err(std::io::Error::other)?;
    let size = file.metadata()?.len();
    let mut s = SegmentScan {
        size,
        ..SegmentScan::default()
    };
    match tail::scan(&file, size, first) {
        Ok(t) => s.valid_end = t.valid_end,
        Err(tail::TailError::Garbage { .. }) => {
            s.garbage = true;
            s.valid_end = tail::rfind_newline(&file, size, size)?.map_or(0, |nl| nl + 1);
        }
        Err(tail::TailError::Io(e)) => return Err(e),
    }
    let mut prev = first - 1;
    tail::for_each_line(&file, 0, s.valid_end, |offset, line| {
        let Some(line) = line else {
            s.damaged
                .push((offset, "a line longer than any record".into()));
            return;
        };
        match record::parse(line) {
            Ok(p) => {
                s.records += 1;
                if p.seq <= prev {
                    s.out_of_order.push((offset, p.seq));
                } else {
                    prev = p.seq;
                }
                s.last = Some(prev);
                if let Err(e) = Envelope::decode(p.msg) {
                    s.undecodable.push((offset, p.seq, e.to_string()));
                }
            }
            Err(reason) => s.damaged.push((offset, reason)),
        }
    })?;
    Ok(s)
}

/// A finding (repaired with `repair`) when directory `d` is open to others.
fn private_dir(d: &Path, repair: bool, out: &mut Vec<Finding>) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(d) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() || mode & 0o077 == 0 {
        return Ok(());
    }
    let f = finding(
        Severity::Warning,
        d,
        format!("a directory open to others (mode {mode:o})"),
        "make it private (mode 0700)",
    );
    out.push(if repair {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(d.display().to_string(), "chmod", d, e))?;
        f.repaired()
    } else {
        f
    });
    Ok(())
}

fn check_channel(
    ws: &Workspace,
    log: &Log,
    extra_cursors: Vec<(PathBuf, u64)>,
    repair: bool,
    out: &mut Vec<Finding>,
) -> Result<()> {
    let mut problems = Vec::new();
    let segs = log.list(&mut problems)?.segments;
    for p in problems {
        // `list` moved a foreign file aside (into the channel's quarantine).
        out.push(
            finding(
                Severity::Warning,
                &p.path,
                p.reason,
                "moved to the channel's quarantine/ directory",
            )
            .repaired(),
        );
    }
    // Segments, oldest first.
    let mut newest = 0u64;
    let mut prev_last: Option<u64> = None;
    let epoch = log.read_epoch();
    for (i, &first) in segs.iter().enumerate() {
        let path = log.segment_path(first);
        let is_newest = i + 1 == segs.len();
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            let f = finding(
                Severity::Warning,
                &path,
                format!(
                    "readable or writable by others (mode {:o})",
                    meta.permissions().mode() & 0o777
                ),
                "make it private (mode 0600)",
            );
            out.push(if repair {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| Error::io(log.channel.clone(), "chmod", &path, e))?;
                f.repaired()
            } else {
                f
            });
        }
        let s = match scan_segment(&path, first) {
            Ok(s) => s,
            Err(e) => {
                out.push(finding(
                    Severity::Error,
                    &path,
                    format!("cannot be read: {e}"),
                    "fix its permissions by hand",
                ));
                continue;
            }
        };
        for (off, reason) in &s.damaged {
            out.push(finding(
                Severity::Warning,
                &path,
                format!("a damaged record at byte {off}: {reason}"),
                "nothing to do: readers skip it (a copy goes to the channel's quarantine/)",
            ));
        }
        for (off, pos, reason) in &s.undecodable {
            out.push(finding(
                Severity::Warning,
                &path,
                format!(
                    "the record at byte {off} (position {pos}) is not a maos message: {reason}"
                ),
                "nothing to do: readers skip and report it",
            ));
        }
        for (off, pos) in &s.out_of_order {
            out.push(finding(
                Severity::Error,
                &path,
                format!("the record at byte {off} has position {pos}, not above the one before it"),
                "none (a writer outside maos broke the protocol); readers skip it",
            ));
        }
        if let (Some(p), Some(l)) = (prev_last, s.last)
            && first <= p
        {
            out.push(finding(
                Severity::Error,
                &path,
                format!("the segment starts at position {first}, but the one before ends at {p}"),
                "none (a writer outside maos broke the protocol)",
            ));
            let _ = l;
        }
        if let Some(p) = prev_last
            && first > p + 1
        {
            let cause = epoch
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .map(|e| e.cause_of(p + 1, first - 1));
            let sev = match cause {
                Some(crate::GapCause::Restart) => Severity::Note,
                _ => Severity::Warning,
            };
            out.push(finding(
                sev,
                &path,
                crate::Gap {
                    from: p + 1,
                    to: first - 1,
                    cause: cause.unwrap_or(crate::GapCause::Unknown),
                }
                .to_string(),
                "nothing to do: positions are never used twice, readers are told",
            ));
        }
        let tail_bytes = s.size - s.valid_end;
        if tail_bytes > 0 {
            let (sev, what) = if s.garbage {
                (
                    Severity::Error,
                    format!(
                        "it ends with {tail_bytes} bytes without a line break (more than the \
                         {MAX_TORN} any writer can leave)"
                    ),
                )
            } else if is_newest {
                (
                    Severity::Note,
                    format!("a torn record ({tail_bytes} bytes) left by a killed writer"),
                )
            } else {
                (
                    Severity::Warning,
                    format!(
                        "{tail_bytes} bytes after the last complete record of a sealed segment"
                    ),
                )
            };
            let f = finding(
                sev,
                &path,
                what,
                "cut them off (no complete record is among them; their first 64 KiB are kept in \
                 the channel's quarantine/)",
            );
            out.push(if repair {
                cut_tail(log, first, s.valid_end, s.size)?;
                f.repaired()
            } else {
                f
            });
        }
        if let Some(l) = s.last {
            newest = newest.max(l);
            prev_last = Some(l);
        } else {
            prev_last = Some(prev_last.unwrap_or(0).max(first - 1));
        }
    }
    // Consumers' cursors (and inbox cursors on this channel).
    let mut cursors = extra_cursors;
    let cdir = log.dir.join(CONSUMERS_DIR);
    for path in json_files(&cdir) {
        match fsx::read_json::<Cursor>(&path, 4096) {
            Ok(c) => cursors.push((path, c.position)),
            Err(e) => {
                let f = finding(
                    Severity::Error,
                    &path,
                    format!("a consumer's cursor that cannot be read: {e}"),
                    "quarantine it; the consumer starts over from the oldest message (it may see \
                     messages again, it loses none)",
                );
                out.push(if repair && path.is_file() {
                    quarantine(ws, STORE, &path)
                        .map_err(|e| Error::core(log.channel.clone(), e))?;
                    f.repaired()
                } else {
                    f
                });
            }
        }
    }
    let mut need = newest;
    let mut ahead = false;
    for (path, pos) in &cursors {
        if *pos > newest {
            out.push(finding(
                Severity::Error,
                path,
                format!(
                    "the cursor (position {pos}) is ahead of the channel's newest message \
                     ({newest}): the log lost messages already read"
                ),
                "reserve positions past the cursor, so new messages reach this reader",
            ));
            need = need.max(*pos);
            ahead = true;
        }
    }
    // The position state.
    let epoch_path = log.epoch_path();
    let head = log.read_head();
    if std::fs::symlink_metadata(log.head_path()).is_ok_and(|m| m.is_file()) && head.is_none() {
        let f = finding(
            Severity::Note,
            &log.head_path(),
            "the head hint cannot be read".into(),
            "quarantine it (the next writer writes a new one)",
        );
        out.push(if repair {
            quarantine(ws, STORE, &log.head_path())
                .map_err(|e| Error::core(log.channel.clone(), e))?;
            f.repaired()
        } else {
            f
        });
    }
    let need = need.max(head.map_or(0, |h| h.last));
    let lost = ahead.then(|| Jump {
        from: newest + 1,
        to: need,
        cause: crate::GapCause::Damage,
        at: maos_core::now_ms(),
    });
    match epoch {
        Ok(Some(e)) if e.reserved >= need && lost.is_none() => {}
        Ok(Some(e)) if e.reserved >= need => {
            // The positions are reserved, but this boot's writers would still use the ones
            // after the newest message: make the next writer skip past the cursors.
            if repair {
                reserve(log, need, Some(e), lost)?;
            }
        }
        Ok(Some(e)) => {
            let f = finding(
                Severity::Error,
                &epoch_path,
                format!(
                    "reserves positions up to {}, but position {need} is in use",
                    e.reserved
                ),
                "raise the reservation past every position in use",
            );
            out.push(if repair {
                reserve(log, need, Some(e), lost)?;
                f.repaired()
            } else {
                f
            });
        }
        Ok(None) if segs.is_empty() => {}
        Ok(None) => {
            let f = finding(
                Severity::Warning,
                &epoch_path,
                "missing: the channel cannot prove that no position is used twice after a \
                 restart"
                    .into(),
                "create it, reserving past every position in use",
            );
            out.push(if repair {
                let e = Epoch {
                    boot: log.config.boot_id.clone(),
                    ..Epoch::default()
                };
                reserve(log, need, Some(e), lost)?;
                f.repaired()
            } else {
                f
            });
        }
        Err(e) => {
            let f = finding(
                Severity::Error,
                &epoch_path,
                e.to_string(),
                "quarantine it and write a new one reserving past every position in use (the \
                 next message skips the positions the lost reservation may have covered)",
            );
            out.push(if repair {
                if epoch_path.is_file() {
                    quarantine(ws, STORE, &epoch_path)
                        .map_err(|e| Error::core(log.channel.clone(), e))?;
                }
                reserve(log, need, None, lost)?;
                f.repaired()
            } else {
                f
            });
        }
    }
    // Quarantine: evidence worth a look.
    let qdir = log.dir.join(QUARANTINE_DIR);
    if let Ok(rd) = std::fs::read_dir(&qdir) {
        let (mut n, mut bytes) = (0u64, 0u64);
        for e in rd.flatten() {
            n += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        if n > 0 {
            out.push(finding(
                Severity::Note,
                &qdir,
                format!("{n} quarantined item(s), {bytes} bytes: copies of damaged records and moved files"),
                "review and delete them by hand when done (doctor never deletes them)",
            ));
        }
    }
    Ok(())
}

/// Cuts segment `first` back to `valid_end` under the writers' lock, copying the start of what
/// goes to quarantine.
fn cut_tail(log: &Log, first: u64, valid_end: u64, size: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    log.locked(|_| {
        let path = log.segment_path(first);
        let f = fsx::DataFile::open_existing_rw(&path)
            .map_err(|e| Error::core(log.channel.clone(), e))?;
        if f.len().map_err(|e| Error::core(log.channel.clone(), e))? != size {
            return Ok(()); // a writer changed it meanwhile: leave it to the next check
        }
        let n = ((size - valid_end) as usize).min(QUARANTINE_COPY_LIMIT);
        let mut head = vec![0u8; n];
        let _ = f.file().read_exact_at(&mut head, valid_end);
        log.quarantine_bytes(first, valid_end, "tail", &head, size - valid_end);
        f.set_len(valid_end)
            .map_err(|e| Error::core(log.channel.clone(), e))?;
        f.sync_data()
            .map_err(|e| Error::core(log.channel.clone(), e))
    })
}

/// Publishes a reservation past `need` (boot unknown when `epoch` is `None`, so the next
/// writer skips past it). With `lost` (a reader's cursor is ahead of the log), records the
/// loss and invalidates the head hint, so the next writer skips past the cursor too.
fn reserve(log: &Log, need: u64, epoch: Option<Epoch>, lost: Option<Jump>) -> Result<()> {
    log.locked(|st| {
        let mut e = epoch.unwrap_or_default();
        e.reserved = e.reserved.max(need.saturating_add(log.config.reserve));
        let invalidate = lost.is_some();
        if let Some(j) = lost {
            e.push_jump(j);
        }
        log.write_epoch(&e)?;
        if invalidate {
            log.invalidate_head(st);
        }
        Ok(())
    })
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Inbox states: each must parse; their cursors are checked against their channels.
fn inbox_states(
    ws: &Workspace,
    repair: bool,
    cursors: &mut BTreeMap<String, Vec<(PathBuf, u64)>>,
    out: &mut Vec<Finding>,
) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct State {
        #[serde(default)]
        cursors: BTreeMap<String, Cursor>,
    }
    for path in json_files(&ws.maos_dir().join("inbox")) {
        match fsx::read_json::<State>(&path, 4 << 20) {
            Ok(s) => {
                for (ch, c) in s.cursors {
                    cursors
                        .entry(ch)
                        .or_default()
                        .push((path.clone(), c.position));
                }
            }
            Err(e) => {
                let f = finding(
                    Severity::Error,
                    &path,
                    format!("an inbox state that cannot be read: {e}"),
                    "quarantine it; the agent's inbox starts over (it may show messages again and \
                     loses its stored subscriptions, which `maos subscribe --durable` restores)",
                );
                out.push(if repair && path.is_file() {
                    quarantine(ws, STORE, &path).map_err(|e| Error::core("inbox", e))?;
                    f.repaired()
                } else {
                    f
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use maos_core::{AgentId, Message, Name, Recipients};

    fn setup() -> (tempfile::TempDir, Workspace, FileChannelT) {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let ch = crate::FileChannel::open(&ws, ChannelName::new("c").unwrap()).unwrap();
        for i in 0..5 {
            ch.send_blocking(&Message::new(
                AgentId::new("a").unwrap(),
                Recipients::All,
                i,
            ))
            .unwrap();
        }
        (d, ws, ch)
    }

    type FileChannelT = crate::FileChannel;

    fn problems(f: &[Finding]) -> Vec<String> {
        f.iter()
            .map(|f| format!("{:?} {}: {}", f.severity, f.path.display(), f.problem))
            .collect()
    }

    #[test]
    fn a_healthy_channel_has_no_findings() {
        let (_d, ws, _ch) = setup();
        assert!(doctor(&ws, false).unwrap().is_empty());
    }

    #[test]
    fn damage_is_found_and_repaired_without_losing_acknowledged_messages() {
        let (_d, ws, ch) = setup();
        let log = &ch.inner.log;
        let seg = log.segment_path(1);
        // A torn tail, a damaged line in the middle, a consumer ahead of the log, an
        // unreadable epoch.
        let mut bytes = std::fs::read(&seg).unwrap();
        let mid = bytes.iter().position(|&b| b == b'\n').unwrap() + 5;
        bytes[mid] ^= 0x20;
        bytes.extend_from_slice(b"{\"seq\":6,\"len\":3");
        std::fs::write(&seg, &bytes).unwrap();
        let mut c = ch
            .consumer(Name::new("w").unwrap(), crate::Filter::Everything)
            .unwrap();
        c.ack(Cursor::after(5)).unwrap();
        let cpath = log.dir.join("consumers/w.json");
        std::fs::write(&cpath, r#"{"position":900}"#).unwrap();
        std::fs::write(log.epoch_path(), "{oops").unwrap();
        let found = doctor(&ws, false).unwrap();
        let text = problems(&found);
        assert!(
            text.iter().any(|t| t.contains("damaged record")),
            "{text:#?}"
        );
        assert!(text.iter().any(|t| t.contains("torn record")), "{text:#?}");
        assert!(
            text.iter().any(|t| t.contains("ahead of the channel")),
            "{text:#?}"
        );
        assert!(text.iter().any(|t| t.contains("epoch.json")), "{text:#?}");
        assert!(found.iter().all(|f| !f.repaired));
        let fixed = doctor(&ws, true).unwrap();
        assert!(fixed.iter().any(|f| f.repaired), "{:#?}", problems(&fixed));
        // What remains is what needs no repair (the damaged record readers skip, the cursor
        // that new messages now go past) and the evidence in quarantine.
        let after = doctor(&ws, false).unwrap();
        assert!(
            after
                .iter()
                .all(|f| f.severity != Severity::Error || f.problem.contains("ahead")),
            "{:#?}",
            problems(&after)
        );
        assert!(!after.iter().any(|f| f.problem.contains("torn")));
        // Every message but the damaged one is still there, and the next one goes past the
        // consumer.
        let b = ch
            .receive_blocking::<i32>(&Cursor::start(), &crate::Filter::Everything)
            .unwrap();
        assert_eq!(b.messages.len(), 4);
        let r = ch
            .send_blocking(&Message::new(
                AgentId::new("a").unwrap(),
                Recipients::All,
                9,
            ))
            .unwrap();
        assert!(r.position > 900, "{}", r.position);
    }

    #[test]
    fn an_unreadable_inbox_state_is_quarantined() {
        let (_d, ws, _ch) = setup();
        let dir = ws.maos_dir().join("inbox");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("me.json"), "not json").unwrap();
        let found = doctor(&ws, false).unwrap();
        assert_eq!(found.len(), 1, "{:#?}", problems(&found));
        assert!(doctor(&ws, true).unwrap()[0].repaired);
        assert!(doctor(&ws, false).unwrap().is_empty());
        assert!(crate::Inbox::open(&ws, AgentId::new("me").unwrap()).is_ok());
    }
}

#[cfg(test)]
mod permission_tests {
    use std::os::unix::fs::PermissionsExt as _;

    use maos_core::{AgentId, Message, Recipients};

    use super::*;
    use crate::FileChannel;

    /// Directories other users may enter are found and, with `repair`, made private; a
    /// damaged record is reported; a healthy channel gives no finding.
    #[test]
    fn open_directories_and_damaged_records_are_found_and_repaired() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let ch = FileChannel::open(&ws, ChannelName::new("team/api").unwrap()).unwrap();
        let a = AgentId::new("a").unwrap();
        ch.send_blocking(&Message::new(a.clone(), Recipients::All, 1))
            .unwrap();
        assert!(
            doctor(&ws, false).unwrap().is_empty(),
            "a healthy workspace"
        );

        let team = ws.channels_dir().join("team");
        let data = team.join("api").join(crate::CHANNEL_DATA_DIR);
        for dir in [&team, &data] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let seg = data.join("00000000000000000001.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(
            &mut f,
            b"{\"seq\":2,\"len\":3,\"crc\":\"00000000\",\"msg\":123}\n",
        )
        .unwrap();
        drop(f);

        let found = doctor(&ws, false).unwrap();
        let open: Vec<_> = found
            .iter()
            .filter(|f| f.problem.contains("open to others"))
            .collect();
        assert_eq!(open.len(), 2, "{found:#?}");
        assert!(
            found
                .iter()
                .any(|f| f.path == seg && f.problem.contains("damaged")),
            "{found:#?}"
        );
        doctor(&ws, true).unwrap();
        for dir in [&team, &data] {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        let after = doctor(&ws, false).unwrap();
        assert!(
            !after.iter().any(|f| f.problem.contains("open to others")),
            "{after:#?}"
        );
    }
}
