//! `doctor`: a healthy store has no findings; stray files are notes (repair quarantines
//! them); a missing file is reported, never "repaired" by dropping history.

use maos_core::Workspace;
use maos_core::doctor::Severity;

use crate::{Options, Task, TaskTracker};

fn setup() -> (tempfile::TempDir, Workspace, TaskTracker) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let t = TaskTracker::open_with(&ws, Options::default().publish(false)).unwrap();
    (dir, ws, t)
}

#[test]
fn a_healthy_store_has_no_findings() {
    let (_d, ws, t) = setup();
    assert!(crate::doctor(&ws, false).unwrap().is_empty(), "empty store");
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    t.create_task_blocking(&Task::new("b").after(a)).unwrap();
    t.compact_blocking().unwrap();
    t.create_task_blocking(&Task::new("c")).unwrap();
    t.compact_blocking().unwrap();
    let f = crate::doctor(&ws, false).unwrap();
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn stray_files_are_notes_and_repair_quarantines_them() {
    let (_d, ws, t) = setup();
    t.create_task_blocking(&Task::new("a")).unwrap();
    t.compact_blocking().unwrap();
    std::fs::write(t.dir().join(".tmp.1.2.3"), "partial").unwrap();
    // A compaction that did not commit left the next generation's files.
    std::fs::copy(t.dir().join("snapshot.1"), t.dir().join("snapshot.2")).unwrap();
    let f = crate::doctor(&ws, false).unwrap();
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f.iter()
            .all(|f| f.severity == Severity::Note && !f.repaired)
    );
    let f = crate::doctor(&ws, true).unwrap();
    assert!(f.iter().all(|f| f.repaired), "{f:?}");
    assert!(crate::doctor(&ws, false).unwrap().is_empty());
    let q = ws.maos_dir().join("quarantine/tasks");
    assert_eq!(std::fs::read_dir(q).unwrap().count(), 2);
    assert_eq!(t.list_blocking().unwrap().len(), 1);
}

#[test]
fn a_missing_log_is_reported_and_not_repaired_away() {
    let (_d, ws, t) = setup();
    t.create_task_blocking(&Task::new("a")).unwrap();
    std::fs::remove_file(t.dir().join("log.0.jsonl")).unwrap();
    for repair in [false, true] {
        let f = crate::doctor(&ws, repair).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].problem.contains("missing"), "{f:?}");
        assert!(f[0].remedy.contains("restore"), "{f:?}");
        assert!(!f[0].repaired);
    }
}

/// A damaged snapshot with its previous generation still there: repair rebuilds from the
/// previous generation and both logs, losing nothing.
#[test]
fn a_damaged_snapshot_is_rebuilt_from_the_previous_generation() {
    let (d, ws, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    t.compact_blocking().unwrap();
    let b = t
        .create_task_blocking(&Task::new("b").after(a.clone()))
        .unwrap();
    t.compact_blocking().unwrap();
    let c = t.create_task_blocking(&Task::new("c")).unwrap();
    // Flip a byte in the body of snapshot.2.
    let p = t.dir().join("snapshot.2");
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x55;
    std::fs::write(&p, bytes).unwrap();
    let f = crate::doctor(&ws, false).unwrap();
    assert!(f.iter().any(|f| f.severity == Severity::Error), "{f:?}");
    crate::doctor(&ws, true).unwrap();
    let r =
        TaskTracker::open_with(&Workspace::open(d.path()).unwrap(), Options::default()).unwrap();
    let ids: Vec<_> = r
        .list_blocking()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, vec![a, b, c]);
    assert!(crate::doctor(&ws, false).unwrap().is_empty());
}
