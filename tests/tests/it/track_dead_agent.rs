//! A claim held by an agent whose process was killed (SIGKILL) goes back to the queue.

use std::io::BufRead as _;
use std::process::Stdio;

use maos_coordination::track::{Options, Task, TaskStatus, TaskTracker};
use maos_coordination::{AgentId, TaskId, Workspace};

#[test]
fn claims_of_a_killed_agent_are_released() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let tracker = TaskTracker::open_with(&ws, Options::default().publish(false))?;
    let only = tracker.create_task_blocking(&Task::new("the only task"))?;

    let mut child = crate::helper("track_hold")
        .arg(dir.path())
        .arg("doomed")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    assert_eq!(TaskId::parse(line.trim())?, only);
    let held = tracker.get_blocking(&only)?.expect("exists");
    assert_eq!(held.status, TaskStatus::InProgress);
    assert_eq!(held.assigned_to, Some(AgentId::new("doomed")?));

    // Alive: nothing to release, nothing to claim.
    assert!(tracker.claim_blocking(&AgentId::new("rescuer")?)?.is_none());

    child.kill()?;
    child.wait()?;
    let got = tracker
        .claim_blocking(&AgentId::new("rescuer")?)?
        .expect("the dead agent's task is claimable again");
    assert_eq!(got.id, only);
    assert_eq!(got.attempts, 2);
    assert_eq!(got.assigned_to, Some(AgentId::new("rescuer")?));
    Ok(())
}
