//! Issue 11, item 6: one suspended process must not hang everyone. A process stopped with
//! SIGSTOP while it holds the task store's kernel lock makes writers fail at their timeout
//! with an error that names it and says it is stopped; readers go on.

use std::io::BufRead as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use maos_coordination::track::{Options, Task, TaskTracker};
use maos_coordination::{AgentId, Workspace};
use rustix::process::{Pid, Signal, kill_process};

#[test]
fn a_stopped_lock_holder_makes_writers_time_out_naming_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let tracker = TaskTracker::open_with(
        &ws,
        Options::default()
            .publish(false)
            .agent(AgentId::new("w")?)
            .lock_timeout(Duration::from_millis(400)),
    )?;
    tracker.create_task_blocking(&Task::new("before"))?;

    let mut holder = crate::helper("track_lock_hold")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().expect("piped")).read_line(&mut line)?;
    assert_eq!(line.trim(), "locked");
    let pid = Pid::from_raw(holder.id() as i32).expect("a pid");
    kill_process(pid, Signal::STOP)?;

    let started = Instant::now();
    let err = tracker
        .create_task_blocking(&Task::new("while stopped"))
        .unwrap_err();
    let waited = started.elapsed();
    let text = format!("{:#}", anyhow::Error::new(err));
    assert!(text.contains(&format!("pid {}", holder.id())), "{text}");
    assert!(text.contains("stopped"), "{text}");
    assert!(
        waited >= Duration::from_millis(400),
        "gave up early: {waited:?}"
    );
    // Readers need no lock.
    assert_eq!(tracker.list_blocking()?.len(), 1);

    kill_process(pid, Signal::CONT)?;
    drop(holder.stdin.take());
    assert!(holder.wait()?.success());
    tracker.create_task_blocking(&Task::new("after"))?;
    assert_eq!(tracker.list_blocking()?.len(), 2);
    Ok(())
}
