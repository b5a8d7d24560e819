//! `maos doctor` for the task store: check every file, explain each problem, and with
//! `--repair` rebuild a store that replay refuses from everything that can still be read,
//! moving the damaged files to `.maos/quarantine/tasks/` (never deleting them).

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use maos_core::doctor::{Finding, Severity, quarantine};
use maos_core::{TaskId, Workspace, fsx};

use super::graph::Graph;
use super::record::{MAX_RECORD_BYTES, Op, Record};
use super::snapshot::{ENTRY_BYTES, Snapshot, ready_key};
use super::{
    State, StoreOptions, compact_bytes, current_path, generation_files, log_path, read_current,
    snapshot_path, write_current,
};
use crate::graph::{FxMap, weight_ms};
use crate::{Error, Task, TaskStatus};

const STORE: &str = "tasks";

/// Checks the task store of `ws`: `current`, the snapshot (checksum, every entry, task and
/// history, the sorted ids, dependents, ready and active lists, counts, no cycle) and every
/// record of the log (replayed and validated as a reader does). With `repair`, a store that
/// replay refuses (a garbled record, a record no writer could have written, a damaged
/// snapshot with its previous generation still there) is rebuilt as a new generation from
/// every readable change; the damaged files go to `.maos/quarantine/tasks/`. A missing file
/// is reported, not repaired: its records cannot be recovered by maos.
///
/// # Errors
/// Only when the check itself cannot run (the lock cannot be had, the directory cannot be
/// listed); problems in the files are findings.
pub fn doctor(ws: &Workspace, repair: bool) -> Result<Vec<Finding>, Error> {
    let dir = ws.tasks_dir();
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut store = super::Store::open(&dir, StoreOptions::default())?;
    store.locked(|dir| check(ws, dir, repair))
}

fn check(ws: &Workspace, dir: &Path, repair: bool) -> Result<Vec<Finding>, Error> {
    let mut out = Vec::new();
    stray_temp_files(ws, dir, repair, &mut out)?;
    match strict(dir).err() {
        None => leftovers(ws, dir, repair, &mut out)?,
        Some(e) => {
            let mut f = Finding::new(
                Severity::Error,
                STORE,
                error_path(&e, dir),
                strip_hint(&e),
                "",
            );
            match salvage_plan(dir, &e) {
                Plan::Missing => {
                    f.remedy = "a file the store needs is missing: restore it (from a backup) if \
                                you can; otherwise move .maos/tasks aside and re-create the tasks; \
                                --repair does not guess at lost records"
                        .into();
                    out.push(f);
                }
                Plan::Rebuild => {
                    f.remedy = "--repair rebuilds the store as a new generation from every \
                                readable change, skipping what cannot be read or replayed, and \
                                moves the damaged files to .maos/quarantine/tasks/"
                        .into();
                    if repair {
                        let notes = rebuild(ws, dir)?;
                        f = f.repaired();
                        out.push(f);
                        out.extend(notes);
                    } else {
                        out.push(f);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The file an error names, or the store's directory.
fn error_path(e: &Error, dir: &Path) -> PathBuf {
    match e {
        Error::Corrupt { path, .. } | Error::Io { path, .. } => path.clone(),
        _ => dir.to_path_buf(),
    }
}

/// The error's words without the hint to run doctor (we are doctor).
fn strip_hint(e: &Error) -> String {
    match e {
        Error::Corrupt { reason, .. } => format!("corrupt: {reason}"),
        other => other.to_string(),
    }
}

enum Plan {
    Missing,
    Rebuild,
}

fn salvage_plan(_dir: &Path, e: &Error) -> Plan {
    let text = e.to_string();
    if text.contains("it is missing") {
        Plan::Missing
    } else {
        Plan::Rebuild
    }
}

/// Everything a reader checks, plus the deep check of the snapshot.
fn strict(dir: &Path) -> Result<(), Error> {
    let mut st = State::load(dir)?;
    if let Some(base) = &st.graph.base {
        deep_check(base)?;
    }
    st.refresh(dir)?;
    if let Some(base) = &st.graph.base {
        // A rotation was followed: check the snapshot it led to as well.
        deep_check(base)?;
    }
    Ok(())
}

/// The whole snapshot, checked against itself.
fn deep_check(base: &Snapshot) -> Result<(), Error> {
    use super::snapshot::corrupt;
    let path = base.path();
    base.verify()?;
    let s = base.header.sections;
    let rows = base.section(s.entries)?;
    let n = base.count() as usize;
    let mut entries = Vec::with_capacity(n);
    let mut tasks: Vec<Task> = Vec::with_capacity(n);
    for (k, row) in rows.chunks_exact(ENTRY_BYTES).enumerate() {
        let e = base.decode_entry(k as u32, row)?;
        let t = base.task(k as u32, &e)?;
        base.history(k as u32, &e)?;
        if t.status != e.status || t.priority != e.priority {
            return Err(corrupt(
                path,
                format!(
                    "entry {k} disagrees with task {} on status or priority",
                    t.id
                ),
            ));
        }
        if base.agent(e.assignee) != t.assigned_to.as_ref() {
            return Err(corrupt(
                path,
                format!("entry {k} disagrees with task {} on its assignee", t.id),
            ));
        }
        if e.weight != weight_ms(&t) {
            return Err(corrupt(
                path,
                format!("entry {k} disagrees with task {} on its weight", t.id),
            ));
        }
        entries.push(e);
        tasks.push(t);
    }
    // Sorted, unique ids that name the tasks at their ordinals.
    let ids = base.all_ids()?;
    if ids.len() != n {
        return Err(corrupt(path, "the sorted ids do not cover every task"));
    }
    let mut index: FxMap<&TaskId, u32> = FxMap::default();
    for (k, (id, ord)) in ids.iter().enumerate() {
        if k > 0 && ids[k - 1].0.as_bytes() >= id.as_bytes() {
            return Err(corrupt(
                path,
                format!("the sorted ids are out of order at {id}"),
            ));
        }
        let t = tasks.get(*ord as usize).ok_or_else(|| {
            corrupt(
                path,
                format!("id {id} points at task number {ord}, out of range"),
            )
        })?;
        if t.id.as_str() != id {
            return Err(corrupt(
                path,
                format!("id {id} points at task number {ord}, which is {}", t.id),
            ));
        }
        index.insert(&t.id, *ord);
    }
    // Dependencies, dependents and outstanding counts agree.
    let mut expected: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, t) in tasks.iter().enumerate() {
        let mut remaining = 0;
        for d in &t.dependencies {
            let j = *index.get(d).ok_or_else(|| {
                corrupt(
                    path,
                    format!("task {} depends on {d}, which does not exist", t.id),
                )
            })?;
            expected[j as usize].push(i as u32);
            if tasks[j as usize].status != TaskStatus::Completed {
                remaining += 1;
            }
        }
        if entries[i].remaining != remaining {
            return Err(corrupt(
                path,
                format!(
                    "task {} has {remaining} unfinished dependencies, its entry says {}",
                    t.id, entries[i].remaining
                ),
            ));
        }
        let waiting = matches!(t.status, TaskStatus::Blocked);
        let free = matches!(
            t.status,
            TaskStatus::Pending
                | TaskStatus::InProgress
                | TaskStatus::Review
                | TaskStatus::Completed
        );
        if (free && remaining > 0) || (waiting && remaining == 0 && t.blocked_reason.is_none()) {
            return Err(corrupt(
                path,
                format!(
                    "task {} is {} with {remaining} unfinished dependencies",
                    t.id, t.status
                ),
            ));
        }
    }
    for (j, e) in entries.iter().enumerate() {
        let mut have = base.dependents(e)?;
        have.sort_unstable();
        let mut want = expected[j].clone();
        want.sort_unstable();
        if have != want {
            return Err(corrupt(
                path,
                format!(
                    "the dependents of task {} do not match the dependencies",
                    tasks[j].id
                ),
            ));
        }
    }
    let adj = crate::graph::Adjacency::of(&tasks);
    if crate::graph::topo_order(&adj.deps, &adj.dependents).is_err() {
        let cyc = crate::graph::find_cycle(&adj.deps).unwrap_or_default();
        let names: Vec<&str> = cyc.iter().map(|&i| tasks[i as usize].id.as_str()).collect();
        return Err(corrupt(
            path,
            format!("the dependencies form a cycle ({})", names.join(" -> ")),
        ));
    }
    // Ready and active lists, and the counts.
    let mut ready: Vec<u32> = (0..n as u32)
        .filter(|&i| entries[i as usize].status == TaskStatus::Pending)
        .collect();
    ready.sort_unstable_by_key(|&i| {
        let e = &entries[i as usize];
        ready_key(e.priority, e.rank, i)
    });
    if base.ready(0, u64::MAX)? != ready {
        return Err(corrupt(
            path,
            "the ready list does not match the pending tasks",
        ));
    }
    let active: Vec<u32> = (0..n as u32)
        .filter(|&i| entries[i as usize].status.is_active())
        .collect();
    if base.active()? != active {
        return Err(corrupt(
            path,
            "the active list does not match the active tasks",
        ));
    }
    let mut counts = [0u64; 7];
    for e in &entries {
        counts[usize::from(e.status.code())] += 1;
    }
    if counts != base.header.counts {
        return Err(corrupt(path, "the status counts do not match the tasks"));
    }
    Ok(())
}

fn stray_temp_files(
    ws: &Workspace,
    dir: &Path,
    repair: bool,
    out: &mut Vec<Finding>,
) -> Result<(), Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(fsx::is_temp_name) {
            continue;
        }
        let mut f = Finding::new(
            Severity::Note,
            STORE,
            entry.path(),
            "a temporary file left by a writer that was killed before publishing it",
            "--repair moves it to .maos/quarantine/tasks/",
        );
        if repair {
            quarantine(ws, STORE, &entry.path())?;
            f = f.repaired();
        }
        out.push(f);
    }
    Ok(())
}

/// Generation files the store no longer (or not yet) uses.
fn leftovers(
    ws: &Workspace,
    dir: &Path,
    repair: bool,
    out: &mut Vec<Finding>,
) -> Result<(), Error> {
    let Some(current) = read_current(dir)? else {
        return Ok(());
    };
    for (g, snap, path) in generation_files(dir)? {
        let (problem, remedy) = if g + 1 < current {
            (
                format!(
                    "generation {g} is older than the previous generation and no longer read (a power cut may have undone its removal)"
                ),
                "--repair moves it to .maos/quarantine/tasks/",
            )
        } else if g > current && (snap || is_empty(&path)) {
            (
                format!("generation {g} was prepared by a compaction that did not commit"),
                "harmless: the next compaction overwrites it; --repair moves it to .maos/quarantine/tasks/",
            )
        } else if g > current {
            (
                format!(
                    "log of generation {g} holds records, but `current` names generation {current} and its log does not rotate to it"
                ),
                "--repair moves it to .maos/quarantine/tasks/",
            )
        } else {
            continue;
        };
        let mut f = Finding::new(Severity::Note, STORE, &path, problem, remedy);
        if repair {
            quarantine(ws, STORE, &path)?;
            f = f.repaired();
        }
        out.push(f);
    }
    Ok(())
}

fn is_empty(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.len() == 0)
}

/// Rebuilds the store as a new generation from everything readable; returns notes on what
/// was skipped.
fn rebuild(ws: &Workspace, dir: &Path) -> Result<Vec<Finding>, Error> {
    let mut notes = Vec::new();
    let files = generation_files(dir)?;
    let current = match read_current(dir) {
        Ok(Some(g)) => g,
        Ok(None) => 0,
        Err(_) => files
            .iter()
            .filter(|(_, snap, _)| *snap)
            .map(|(g, _, _)| *g)
            .max()
            .unwrap_or(0),
    };
    // The newest generation at or before `current` whose snapshot passes the deep check
    // (or generation 0, which has none), and the logs from there on.
    let mut start = current;
    let mut base = None;
    while start > 0 {
        match Snapshot::open(&snapshot_path(dir, start), start)
            .and_then(|s| deep_check(&s).map(|()| s))
        {
            Ok(s) => {
                base = Some(s);
                break;
            }
            Err(e) => {
                notes.push(Finding::new(
                    Severity::Warning,
                    STORE,
                    snapshot_path(dir, start),
                    format!("skipped: {}", strip_hint(&e)),
                    "the previous generation and its log are used instead",
                ));
                start -= 1;
            }
        }
    }
    if start == 0 && current > 0 && !log_path(dir, 0).exists() {
        return Err(super::snapshot::corrupt(
            &snapshot_path(dir, current),
            "no readable snapshot and no log from the beginning: nothing to rebuild from",
        ));
    }
    let mut graph = Graph::new(base);
    let mut g = start;
    loop {
        let path = log_path(dir, g);
        let rotated = replay_leniently(&path, &mut graph, &mut notes)?;
        match rotated {
            Some(next) if next == g + 1 => g = next,
            _ => break,
        }
    }
    let next = files
        .iter()
        .map(|(g, _, _)| *g)
        .max()
        .unwrap_or(0)
        .max(current)
        + 1;
    let bytes = compact_bytes(&graph, next, graph.seq)?;
    fsx::write_replace(&snapshot_path(dir, next), &bytes)?;
    let log = fsx::DataFile::open_append(&log_path(dir, next))?;
    log.sync_data()?;
    write_current(dir, next)?;
    let mut moved = BTreeSet::new();
    for (k, _, path) in generation_files(dir)? {
        if k < next {
            moved.insert(quarantine(ws, STORE, &path)?);
        }
    }
    notes.push(
        Finding::new(
            Severity::Note,
            STORE,
            current_path(dir),
            format!(
                "rebuilt as generation {next} at seq {} with {} tasks; the previous files are in quarantine ({} files)",
                graph.seq,
                graph.count(),
                moved.len()
            ),
            "nothing more to do",
        )
        .repaired(),
    );
    Ok(notes)
}

/// Replays every complete batch of `path` that can be read, skipping (and noting) records
/// that are garbled or that replay refuses. Returns the generation a `rotate` record names.
fn replay_leniently(
    path: &Path,
    graph: &mut Graph,
    notes: &mut Vec<Finding>,
) -> Result<Option<u64>, Error> {
    let file = match fsx::open_read(path) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let mut off = 0u64;
    let mut batch: Vec<(u64, Result<Record, String>)> = Vec::new();
    let mut rotated = None;
    while off < len {
        // One line at a time, bounded.
        let want = usize::try_from((len - off).min(MAX_RECORD_BYTES as u64 + 1)).unwrap_or(0);
        let mut buf = vec![0u8; want];
        let n = file
            .read_at(&mut buf, off)
            .map_err(|e| Error::io("read", path, e))?;
        buf.truncate(n);
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_RECORD_BYTES {
                notes.push(Finding::new(
                    Severity::Warning,
                    STORE,
                    path,
                    format!("skipped everything from byte {off}: a line longer than any record"),
                    "kept in quarantine",
                ));
            }
            break; // a torn tail: never acknowledged
        };
        let line = &buf[..nl];
        let parsed = serde_json::from_slice::<Record>(line).map_err(|e| {
            format!(
                "garbled record: {e}: {}",
                maos_core::excerpt(&String::from_utf8_lossy(line), 80)
            )
        });
        let more = parsed.as_ref().is_ok_and(|r| r.more);
        batch.push((off, parsed));
        off += nl as u64 + 1;
        if more {
            continue;
        }
        for (at, rec) in batch.drain(..) {
            let rec = match rec {
                Ok(r) => r,
                Err(why) => {
                    notes.push(skipped(path, at, why));
                    continue;
                }
            };
            if rec.seq <= graph.seq {
                notes.push(skipped(
                    path,
                    at,
                    format!("seq {} repeats an earlier record", rec.seq),
                ));
                continue;
            }
            if let Op::Rotate { generation } = rec.op {
                graph.seq = rec.seq;
                rotated = Some(generation);
                continue;
            }
            let mut effects = Vec::new();
            match graph.apply(&rec, &mut effects) {
                Ok(()) => {}
                // Refusals happen before the record changes anything: skip it.
                Err(e) if e.is_refusal() => {
                    notes.push(skipped(path, at, format!("seq {}: {e}", rec.seq)));
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(rotated)
}

fn skipped(path: &Path, at: u64, why: String) -> Finding {
    Finding::new(
        Severity::Warning,
        STORE,
        path,
        format!("skipped the record at byte {at}: {why}"),
        "its bytes stay in the quarantined log",
    )
}
