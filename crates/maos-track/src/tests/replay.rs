//! Replay refuses what no writer could have written, and missing history is an error naming
//! what is missing, never a smaller graph (issue 11, item 8). Each test forges or damages the
//! files the way a hostile writer, a buggy script or a careless `rm` would.

use maos_core::{AgentId, TaskId, Workspace};
use serde_json::json;

use super::forge;
use crate::{Error, Options, Task, TaskStatus, TaskTracker};

fn open_as(dir: &std::path::Path, agent: &str) -> TaskTracker {
    let ws = Workspace::open(dir).unwrap();
    TaskTracker::open_with(
        &ws,
        Options::default()
            .publish(false)
            .release_dead_claims(false)
            .agent(AgentId::new(agent).unwrap()),
    )
    .unwrap()
}

fn setup() -> (tempfile::TempDir, TaskTracker) {
    let dir = tempfile::tempdir().unwrap();
    Workspace::init(dir.path()).unwrap();
    let t = open_as(dir.path(), "lead");
    (dir, t)
}

fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

/// The error of a fresh reader of the store.
fn fresh_error(dir: &std::path::Path) -> Error {
    open_as(dir, "reader").list_blocking().unwrap_err()
}

fn assert_refused(err: &Error, words: &[&str]) {
    let text = err.to_string();
    assert!(matches!(err, Error::Corrupt { .. }), "{text}");
    for w in words {
        assert!(text.contains(w), "{w:?} missing in: {text}");
    }
    assert!(text.contains("maos doctor --repair"), "no hint: {text}");
}

/// Before: a second `create` for an existing id replaced the task (status pending again) and
/// a second agent claimed the task the first one was working on.
#[test]
fn a_duplicate_create_is_refused_and_no_task_is_claimed_twice() {
    let (d, t) = setup();
    let x = t.create_task_blocking(&Task::new("x")).unwrap();
    let a = open_as(d.path(), "a");
    assert_eq!(a.claim_blocking(&agent("a")).unwrap().unwrap().id, x);
    forge::append(
        d.path(),
        json!({"by": "mallory", "op": "create", "task": {"id": x, "name": "x again"}}),
    );
    let b = open_as(d.path(), "b");
    let err = b.claim_blocking(&agent("b")).unwrap_err();
    assert_refused(
        &err,
        &[
            "could never have been written",
            "already exists",
            "log.0.jsonl",
        ],
    );
    // Readers refuse too, and so does the process that read up to the forged record.
    assert_refused(&fresh_error(d.path()), &["already exists"]);
    assert!(a.get_blocking(&x).is_err());
}

/// Before: a cycle written into the log was accepted and the critical path came out empty.
#[test]
fn a_cycle_written_into_the_log_is_refused() {
    let (d, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let b = t
        .create_task_blocking(&Task::new("b").after(a.clone()))
        .unwrap();
    forge::append(
        d.path(),
        json!({"by": "lead", "op": "add_dependency", "task": a, "dependency": b}),
    );
    assert_refused(
        &fresh_error(d.path()),
        &["dependency cycle", a.as_str(), b.as_str()],
    );
}

/// A cycle in a snapshot (the files were altered: no writer makes one) is refused by every
/// reader that looks at the whole graph, instead of an empty critical path.
#[test]
fn a_cycle_written_into_the_snapshot_is_refused() {
    let (d, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let b = t
        .create_task_blocking(&Task::new("b").after(a.clone()))
        .unwrap();
    t.compact_blocking().unwrap();
    // Rewrite snapshot.1 with `a` depending on `b` (a valid file in every other way).
    let dir = t.dir().to_path_buf();
    let mut st = crate::store::State::load(&dir).unwrap();
    st.refresh(&dir).unwrap();
    let seq = st.graph.seq;
    st.graph
        .tamper(0, |task| task.dependencies.push(b.clone()))
        .unwrap();
    let bytes = crate::store::compact_bytes(&st.graph, 1, seq).unwrap();
    std::fs::write(crate::store::snapshot_path(&dir, 1), bytes).unwrap();

    let r = open_as(d.path(), "reader");
    for err in [
        r.list_blocking().unwrap_err(),
        r.critical_path_blocking().map(|_| ()).unwrap_err(),
        crate::ProgressVisualizer::new(r.clone())
            .generate_progress_report_blocking()
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert_refused(&err, &["cycle", a.as_str(), b.as_str()]);
    }
    let findings = crate::doctor(&Workspace::open(d.path()).unwrap(), false).unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f.severity == maos_core::doctor::Severity::Error),
        "{findings:?}"
    );
}

/// Before: deleting the log of a store that had not compacted yet gave an empty graph.
#[test]
fn a_deleted_log_is_an_error_naming_it() {
    let (d, t) = setup();
    for i in 0..3 {
        t.create_task_blocking(&Task::new(format!("t{i}"))).unwrap();
    }
    std::fs::remove_file(t.dir().join("log.0.jsonl")).unwrap();
    let err = fresh_error(d.path());
    assert_refused(&err, &["log.0.jsonl", "missing"]);
    // The same after compactions: the current generation's log is gone.
    let (d, t) = setup();
    t.create_task_blocking(&Task::new("first")).unwrap();
    t.compact_blocking().unwrap();
    t.create_task_blocking(&Task::new("second")).unwrap();
    std::fs::remove_file(t.dir().join("log.1.jsonl")).unwrap();
    assert_refused(&fresh_error(d.path()), &["log.1.jsonl", "missing"]);
}

/// Before: a snapshot of another generation (or none) made tasks vanish silently.
#[test]
fn a_missing_or_mismatched_snapshot_is_an_error_naming_it() {
    let (d, t) = setup();
    let dir = t.dir().to_path_buf();
    t.create_task_blocking(&Task::new("a")).unwrap();
    t.compact_blocking().unwrap();
    t.create_task_blocking(&Task::new("b")).unwrap();
    t.compact_blocking().unwrap();
    let snap2 = dir.join("snapshot.2");
    let kept = std::fs::read(&snap2).unwrap();

    std::fs::remove_file(&snap2).unwrap();
    assert_refused(&fresh_error(d.path()), &["snapshot.2", "missing"]);

    // The previous generation's snapshot put in its place.
    std::fs::copy(dir.join("snapshot.1"), &snap2).unwrap();
    assert_refused(
        &fresh_error(d.path()),
        &["snapshot.2", "generation 1", "does not match"],
    );

    // `current` gone while generations exist.
    std::fs::write(&snap2, &kept).unwrap();
    assert_eq!(open_as(d.path(), "r").list_blocking().unwrap().len(), 2);
    std::fs::remove_file(dir.join("current")).unwrap();
    assert_refused(&fresh_error(d.path()), &["current", "missing"]);
}

/// A reader following a rotation checks that the snapshot it switches to is the one the
/// rotate record names (same seq, same tasks).
#[test]
fn a_snapshot_that_does_not_match_the_rotate_record_is_refused() {
    let (d, t) = setup();
    let dir = t.dir().to_path_buf();
    t.create_task_blocking(&Task::new("a")).unwrap();
    t.compact_blocking().unwrap();
    t.create_task_blocking(&Task::new("b")).unwrap();
    // Replace snapshot.1 by a snapshot of generation 1 at another seq.
    let mut st = crate::store::State::load(&dir).unwrap();
    st.refresh(&dir).unwrap();
    let bytes = crate::store::compact_bytes(&st.graph, 1, st.graph.seq).unwrap();
    std::fs::write(dir.join("snapshot.1"), bytes).unwrap();
    // A reader starting at generation 0 meets the rotate record first.
    crate::store::write_current(&dir, 0).unwrap();
    assert_refused(
        &fresh_error(d.path()),
        &["snapshot.1", "does not match the logs"],
    );
}

/// Before: one garbled line blocked every task command with no hint how to recover.
#[test]
fn a_garbled_line_blocks_with_a_hint_and_repair_keeps_every_readable_change() {
    let (d, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let b = t.create_task_blocking(&Task::new("b")).unwrap();
    forge::append_raw(d.path(), b"{\"seq\":3,\"at\":1,\"op\":\"sta\x00garbage\n");
    // A valid record after the damage: seq 4 (what the writer wrote after the lost one).
    forge::append(
        d.path(),
        json!({"by": "w", "op": "claim", "task": a, "agent": "w"}),
    );
    let err = fresh_error(d.path());
    assert_refused(&err, &["garbled", "byte", "log.0.jsonl"]);

    let ws = Workspace::open(d.path()).unwrap();
    let report = crate::doctor(&ws, false).unwrap();
    let problem = report
        .iter()
        .find(|f| f.severity == maos_core::doctor::Severity::Error)
        .expect("an error finding");
    assert!(problem.problem.contains("garbled"), "{problem:?}");
    assert!(problem.remedy.contains("--repair"), "{problem:?}");
    assert!(!problem.repaired);

    let repaired = crate::doctor(&ws, true).unwrap();
    assert!(repaired.iter().any(|f| f.repaired), "{repaired:?}");
    let r = open_as(d.path(), "reader");
    let tasks = r.list_blocking().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(
        r.get_blocking(&a).unwrap().unwrap().status,
        TaskStatus::InProgress
    );
    assert_eq!(
        r.get_blocking(&b).unwrap().unwrap().status,
        TaskStatus::Pending
    );
    // The damaged log is kept in quarantine, and the store works again.
    let q = ws.maos_dir().join("quarantine").join("tasks");
    assert!(std::fs::read_dir(&q).unwrap().count() >= 1);
    r.create_task_blocking(&Task::new("after repair")).unwrap();
    assert!(
        crate::doctor(&ws, false)
            .unwrap()
            .iter()
            .all(|f| f.severity < maos_core::doctor::Severity::Error)
    );
}

/// Before: a 3 GiB line made every task command abort ("memory allocation of 3221225639
/// bytes failed"). Reads are bounded: the reader stops after a few MiB with an error.
#[test]
fn a_huge_line_is_refused_without_reading_it_all() {
    let (d, t) = setup();
    t.create_task_blocking(&Task::new("a")).unwrap();
    let log = forge::log(d.path());
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len + (3 << 30)).unwrap(); // sparse: costs no disk
    assert_refused(&fresh_error(d.path()), &["longer than any writer writes"]);
    // A writer refuses too, instead of truncating three gigabytes it cannot vouch for.
    assert!(t.create_task_blocking(&Task::new("b")).is_err());
}

/// A FIFO where a store file should be is an error, not a hang.
#[test]
fn a_fifo_in_place_of_a_store_file_is_an_error_not_a_hang() {
    for name in ["current", "log.0.jsonl"] {
        let (d, t) = setup();
        t.create_task_blocking(&Task::new("a")).unwrap();
        let p = t.dir().join(name);
        std::fs::remove_file(&p).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = fresh_error(d.path());
        assert!(err.to_string().contains("FIFO"), "{name}: {err}");
    }
}

/// Table: records a writer never writes, each refused by replay with its reason.
#[test]
fn records_no_writer_could_have_written_are_refused() {
    struct Case {
        what: &'static str,
        record: fn(&TaskId, &TaskId) -> serde_json::Value,
        words: &'static [&'static str],
    }
    let cases = [
        Case {
            what: "completing a blocked task",
            record: |_, b| json!({"by": "lead", "op": "status", "task": b, "to": "completed"}),
            words: &["cannot go from blocked to completed"],
        },
        Case {
            what: "claiming a task someone works on",
            record: |a, _| json!({"by": "z", "op": "claim", "task": a, "agent": "z"}),
            words: &["only a pending task can be claimed"],
        },
        Case {
            what: "moving another agent's task without force",
            record: |a, _| json!({"by": "z", "op": "status", "task": a, "to": "failed"}),
            words: &["assigned to w", "not z"],
        },
        Case {
            what: "a task naming a dependency that does not exist",
            record: |_, _| json!({"by": "z", "op": "create", "task": {"id": "tnew", "name": "n", "dependencies": ["tghost"]}}),
            words: &["tghost, which does not exist"],
        },
        Case {
            what: "a task with an empty name",
            record: |_, _| json!({"by": "z", "op": "create", "task": {"id": "tnew", "name": " "}}),
            words: &["task name", "empty"],
        },
        Case {
            what: "a rotation to a generation that is not the next",
            record: |_, _| json!({"op": "rotate", "generation": 7}),
            words: &["rotates to generation 7"],
        },
        Case {
            what: "an unknown task",
            record: |_, _| json!({"by": "z", "op": "status", "task": "tnope", "to": "failed"}),
            words: &["task tnope not found"],
        },
    ];
    for c in cases {
        let (d, t) = setup();
        let a = t.create_task_blocking(&Task::new("a")).unwrap();
        let b = t
            .create_task_blocking(&Task::new("b").after(a.clone()))
            .unwrap();
        let w = open_as(d.path(), "w");
        assert_eq!(w.claim_blocking(&agent("w")).unwrap().unwrap().id, a);
        forge::append(d.path(), (c.record)(&a, &b));
        let err = fresh_error(d.path());
        assert_refused(&err, c.words);
        assert!(
            err.to_string().contains("could never have been written"),
            "{}: {err}",
            c.what
        );
    }
}

/// Records out of sequence (missing or repeated) are refused.
#[test]
fn a_gap_or_a_repeat_in_the_sequence_is_refused() {
    let (d, t) = setup();
    t.create_task_blocking(&Task::new("a")).unwrap();
    forge::append_raw(
        d.path(),
        format!(
            "{}\n",
            json!({"seq": 5, "at": 1, "op": "comment", "task": "x", "text": "hi"})
        )
        .as_bytes(),
    );
    assert_refused(&fresh_error(d.path()), &["has seq 5, expected 2"]);
}
