//! `LockTable::records`: the raw read the soak's checker uses. A holder killed inside its
//! section stays in the records (nothing reaps on a read) while `snapshot` leaves it out and
//! reaps it; afterwards the records no longer hold it either.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;

use maos_coordination::{LockTable, Workspace};

#[test]
fn records_show_a_killed_holder_until_something_reaps_it() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut child = crate::helper("lock_worker")
        .args([
            ws.root().to_str().unwrap(),
            data.to_str().unwrap(),
            "7",
            "0",
            "1",
            "0",
        ])
        .env_remove("MAOS_AGENT_ID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "INSIDE 0");
    let pid = child.id();
    let table = LockTable::open(&ws).unwrap();
    let live = table.records().unwrap();
    assert_eq!(live.holders.len(), 1, "{live:?}");
    child.kill().unwrap(); // SIGKILL inside the section
    child.wait().unwrap();

    let raw = table.records().unwrap();
    assert_eq!(raw.holders.len(), 1, "{raw:?}");
    let h = &raw.holders[0];
    assert_eq!(h.owner.as_str(), "w7");
    assert_eq!(h.process.as_ref().unwrap().pid, pid);
    // A second raw read still sees it: reading reaps nothing.
    assert_eq!(table.records().unwrap().holders, raw.holders);
    // The snapshot leaves the dead holder out and reaps it.
    assert!(table.snapshot().unwrap().holders.is_empty());
    assert!(table.records().unwrap().holders.is_empty());
}
