//! Review: writers of the task log killed with SIGKILL at arbitrary instants (mid-append,
//! mid-compaction) leave a store every process can read, in which each `create_tasks`
//! batch is all or none.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};

use maos_coordination::Workspace;
use maos_coordination::track::{Options, Task, TaskTracker};

const WRITER_ENV: &str = "MAOS_REVIEW_TRACK_WRITER";
const BATCH: usize = 40;

/// Writer mode (re-executed by the test): creates batches of tasks forever, printing the
/// number of each batch once it is durable.
fn writer(dir: &str, round: &str) -> anyhow::Result<()> {
    let ws = Workspace::open(dir)?;
    let tracker = TaskTracker::open_with(&ws, Options::default().publish(false))?;
    let mut out = std::io::stdout().lock();
    for i in 0..100_000 {
        let tasks: Vec<Task> = (0..BATCH)
            .map(|k| {
                let mut t = Task::new(format!("{round}-b{i}-{k}"));
                t.description = "x".repeat(300); // a batch spans several pages
                t
            })
            .collect();
        tracker.create_tasks_blocking(&tasks)?;
        writeln!(out, "batch {i}")?;
        out.flush()?;
    }
    Ok(())
}

#[test]
fn writers_killed_at_any_instant_leave_whole_batches() -> anyhow::Result<()> {
    if let Ok(spec) = std::env::var(WRITER_ENV) {
        let (dir, round) = spec.split_once('\n').expect("dir and round");
        return writer(dir, round);
    }
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let dir_str = dir.path().to_str().expect("utf-8 temp dir").to_owned();
    // This test re-runs itself as the writer: its full name inside the test binary.
    let name = format!(
        "{}::writers_killed_at_any_instant_leave_whole_batches",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    for round in 0..12 {
        let mut child = Command::new(std::env::current_exe()?)
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(WRITER_ENV, format!("{dir_str}\nr{round}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = std::io::BufReader::new(stdout).lines();
        // Let it write a few batches (more in later rounds, to cross compactions), then
        // kill it wherever it is.
        let mut seen = 0;
        while seen < 1 + round % 4 {
            match lines.next() {
                Some(l) => {
                    if l?.starts_with("batch ") {
                        seen += 1;
                    }
                }
                None => anyhow::bail!("the writer exited early"),
            }
        }
        child.kill()?;
        child.wait()?;

        // Every process can read what is left, and every batch is whole or absent.
        let fresh = TaskTracker::open_with(&ws, Options::default().publish(false))?;
        let mut per_batch: BTreeMap<String, usize> = BTreeMap::new();
        for t in fresh.list_blocking()? {
            if t.name.starts_with("after-") {
                continue;
            }
            let (batch, _) = t.name.rsplit_once('-').expect("named by the writer");
            *per_batch.entry(batch.to_owned()).or_default() += 1;
        }
        for (batch, n) in &per_batch {
            assert_eq!(*n, BATCH, "batch {batch} is torn");
        }
        // And writes go on.
        fresh.create_task_blocking(&Task::new(format!("after-round-{round}-x")))?;
    }
    let last = TaskTracker::open_with(&ws, Options::default().publish(false))?;
    let names: Vec<String> = last.list_blocking()?.into_iter().map(|t| t.name).collect();
    assert!(names.iter().any(|n| n == "after-round-11-x"));
    Ok(())
}
