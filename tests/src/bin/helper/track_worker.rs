//! Test helper: an agent that claims and completes tasks until none it could take is left.
//!
//! Usage: `track_worker WORKSPACE AGENT EVENTS_FILE [--review]`. It exits when no task it could
//! take (unassigned or assigned to it) and no active task (which could be released) is left. Appends `start ID` after each
//! claim and `done ID` just before completing, to EVENTS_FILE (O_APPEND: the kernel orders
//! the lines of all workers). Waits for changes with file events, never by polling.

use std::io::Write as _;
use std::time::Duration;

use maos_coordination::track::{Options, TaskStatus, TaskTracker};
use maos_coordination::{AgentId, AgentRegistry, Registration, Workspace};

pub(crate) fn main() -> anyhow::Result<()> {
    let args: Vec<String> = crate::args().skip(1).collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: track_worker WORKSPACE AGENT EVENTS [--review]"
    );
    let review = args.iter().any(|a| a == "--review");
    let ws = Workspace::open(&args[0])?;
    let agent = AgentId::new(&args[1])?;
    AgentRegistry::new(&ws).register(Registration::new(agent.clone()))?;
    let mut events = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args[2])?;
    let tracker = TaskTracker::open_with(&ws, Options::default().agent(agent.clone()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut watch = tracker.watch()?;
    let mut done = 0usize;
    loop {
        if let Some(task) = tracker.claim_blocking(&agent)? {
            events.write_all(format!("start {} {agent}\n", task.id).as_bytes())?;
            if review {
                tracker.update_status_blocking(&task.id, TaskStatus::Review, None)?;
            }
            events.write_all(format!("done {} {agent}\n", task.id).as_bytes())?;
            tracker.update_status_blocking(
                &task.id,
                TaskStatus::Completed,
                Some(&format!("done by {agent}")),
            )?;
            done += 1;
            continue;
        }
        let left = tracker
            .list_blocking()?
            .into_iter()
            // Tasks it could take, and active ones (their agent may die and release them).
            .filter(|t| t.assigned_to.as_ref().is_none_or(|a| *a == agent) || t.status.is_active())
            .filter(|t| !matches!(t.status, TaskStatus::Completed | TaskStatus::Failed))
            .count();
        if left == 0 {
            break;
        }
        rt.block_on(watch.changed(Duration::from_secs(5)))?;
    }
    println!("{done}");
    Ok(())
}
