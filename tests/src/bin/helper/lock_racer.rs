//! Helper for tests/tests/lock_race.rs.
//!
//! `lock_racer WORKSPACE RESOURCE AGENT hold`: takes the lock, prints `HELD TOKEN`, blocks
//! until stdin closes (the test kills it to leave a stale lock).
//! `lock_racer WORKSPACE RESOURCE AGENT wait`: waits (queued) for the lock; prints `WON TOKEN`.
//! `lock_racer WORKSPACE RESOURCE AGENT race`: prints `READY`, waits for a line on stdin,
//! tries the lock once, prints `WON TOKEN` or `LOST`, and (if it won) keeps the lock until
//! stdin closes.

use std::io::{BufRead, Write};

use maos_coordination::lock::FileLock;
use maos_coordination::{AgentId, ResourceName, Workspace};

pub(crate) fn main() -> anyhow::Result<()> {
    let a: Vec<String> = crate::args().skip(1).collect();
    anyhow::ensure!(
        a.len() == 4,
        "usage: lock_racer WS RESOURCE AGENT hold|race"
    );
    let ws = Workspace::open(&a[0])?;
    let lock = FileLock::new(&ws, ResourceName::new(&a[1])?).agent(AgentId::new(&a[2])?);
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut out = std::io::stdout();
    match a[3].as_str() {
        "hold" => {
            let g = lock.acquire_blocking("hold")?;
            writeln!(out, "HELD {}", g.token())?;
            out.flush()?;
            stdin.lock().read_line(&mut line)?;
        }
        "race" => {
            writeln!(out, "READY")?;
            out.flush()?;
            stdin.lock().read_line(&mut line)?;
            match lock.try_acquire("race")? {
                Some(g) => {
                    writeln!(out, "WON {}", g.token())?;
                    out.flush()?;
                    line.clear();
                    stdin.lock().read_line(&mut line)?;
                    g.release()?;
                }
                None => {
                    writeln!(out, "LOST")?;
                    out.flush()?;
                }
            }
        }
        "wait" => {
            let g = lock
                .wait(std::time::Duration::from_secs(300))
                .acquire_blocking("wait")?;
            writeln!(out, "WON {}", g.token())?;
            out.flush()?;
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
    Ok(())
}
