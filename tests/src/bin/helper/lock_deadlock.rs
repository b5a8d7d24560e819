//! Helper for tests/tests/lock_deadlock.rs.
//!
//! `lock_deadlock WORKSPACE AGENT FIRST SECOND`: takes FIRST, prints `HELD`, waits for a line
//! on stdin, then waits (up to 120 s) for SECOND. Prints `GOT` when it gets it, `DEADLOCK`
//! when deadlock resolution aborted its wait (then releases FIRST), else `ERR <error>`.

use std::io::{BufRead, Write};
use std::time::Duration;

use maos_coordination::lock::{Error, FileLock};
use maos_coordination::{AgentId, ResourceName, Workspace};

pub(crate) fn main() -> anyhow::Result<()> {
    let a: Vec<String> = crate::args().skip(1).collect();
    anyhow::ensure!(a.len() == 4, "usage: lock_deadlock WS AGENT FIRST SECOND");
    let ws = Workspace::open(&a[0])?;
    let agent = AgentId::new(&a[1])?;
    let lock = |r: &str| -> anyhow::Result<FileLock> {
        Ok(FileLock::new(&ws, ResourceName::new(r)?)
            .agent(agent.clone())
            .ttl(Duration::from_secs(300))
            .wait(Duration::from_secs(120)))
    };
    let first = lock(&a[2])?.acquire_blocking("first")?;
    let mut out = std::io::stdout();
    writeln!(out, "HELD")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    match lock(&a[3])?.acquire_blocking("second") {
        Ok(second) => {
            writeln!(out, "GOT")?;
            second.release()?;
        }
        Err(Error::Deadlock { .. }) => writeln!(out, "DEADLOCK")?,
        Err(e) => writeln!(out, "ERR {e}")?,
    }
    out.flush()?;
    first.release()?;
    Ok(())
}
