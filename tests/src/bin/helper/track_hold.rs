//! Test helper: registers AGENT, claims one task, prints its id, then waits for stdin to
//! close (the test kills it with SIGKILL instead).
//!
//! Usage: `track_hold WORKSPACE AGENT`.

use std::io::{Read as _, Write as _};

use maos_coordination::track::{Options, TaskTracker};
use maos_coordination::{AgentId, AgentRegistry, Registration, Workspace};

pub(crate) fn main() -> anyhow::Result<()> {
    let args: Vec<String> = crate::args().skip(1).collect();
    anyhow::ensure!(args.len() == 2, "usage: track_hold WORKSPACE AGENT");
    let ws = Workspace::open(&args[0])?;
    let agent = AgentId::new(&args[1])?;
    AgentRegistry::new(&ws).register(Registration::new(agent.clone()))?;
    let tracker = TaskTracker::open_with(&ws, Options::default().agent(agent.clone()))?;
    let task = tracker
        .claim_blocking(&agent)?
        .ok_or_else(|| anyhow::anyhow!("nothing to claim"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", task.id)?;
    out.flush()?;
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}
