//! Test helper: takes the task store's kernel lock of WORKSPACE, prints `locked`, and holds
//! it until stdin closes (the test stops it with SIGSTOP meanwhile).
//!
//! Usage: `track_lock_hold WORKSPACE`.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use maos_coordination::Workspace;
use maos_coordination::core::fsx::LockFile;

pub(crate) fn main() -> anyhow::Result<()> {
    let args: Vec<String> = crate::args().skip(1).collect();
    anyhow::ensure!(args.len() == 1, "usage: track_lock_hold WORKSPACE");
    let ws = Workspace::open(&args[0])?;
    let lock = LockFile::open(&ws.tasks_dir().join("lock"))?;
    let _guard = lock.exclusive(Duration::from_secs(10))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "locked")?;
    out.flush()?;
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}
