//! Helper for tests/tests/lock_mutex.rs: runs critical sections on the resource `counter`.
//!
//! `lock_worker WORKSPACE DATA_DIR WORKER FROM TO HANG_AT`: for each section i in FROM..TO,
//! takes the lock, appends `enter W i TOKEN` to DATA_DIR/log, increments DATA_DIR/counter,
//! appends `exit W i TOKEN`, releases. At section HANG_AT (-1: never) it prints `INSIDE i`
//! after `enter` and blocks holding the lock until killed. Prints `DONE` at the end.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use maos_coordination::lock::{FileLock, check_fencing_token};
use maos_coordination::{AgentId, ResourceName, Workspace};

fn append(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    f.write_all(line.as_bytes())?; // one write: O_APPEND makes it atomic
    Ok(())
}

pub(crate) fn main() -> anyhow::Result<()> {
    let a: Vec<String> = crate::args().skip(1).collect();
    anyhow::ensure!(
        a.len() == 6,
        "usage: lock_worker WS DATA WORKER FROM TO HANG_AT"
    );
    let ws = Workspace::open(&a[0])?;
    let data = Path::new(&a[1]);
    let worker: usize = a[2].parse()?;
    let from: usize = a[3].parse()?;
    let to: usize = a[4].parse()?;
    let hang_at: i64 = a[5].parse()?;
    let res = ResourceName::new("counter")?;
    let lock = FileLock::new(&ws, res.clone())
        .agent(AgentId::new(format!("w{worker}"))?)
        .ttl(Duration::from_secs(300))
        .wait(Duration::from_secs(300));
    let log = data.join("log");
    let counter = data.join("counter");
    for i in from..to {
        let guard = lock.acquire_blocking("increment")?;
        let token = guard.token();
        append(&log, &format!("enter {worker} {i} {token}\n"))?;
        if i as i64 == hang_at {
            println!("INSIDE {i}");
            std::io::stdout().flush()?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            anyhow::bail!("was meant to be killed inside section {i}");
        }
        check_fencing_token(&ws, &res, token)?;
        let n: u64 = match std::fs::read_to_string(&counter) {
            Ok(s) => s.trim().parse()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        std::fs::write(&counter, format!("{}\n", n + 1))?;
        append(&log, &format!("exit {worker} {i} {token}\n"))?;
        guard.release()?;
    }
    println!("DONE");
    Ok(())
}
