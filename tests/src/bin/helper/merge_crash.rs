//! Test helper: runs the merge queue of WORKSPACE once, printing each merge step as it
//! completes (`step RefMoved`); at the step named PAUSE it prints `paused` and waits for
//! stdin to close (the test kills it with SIGKILL instead).
//!
//! Usage: `merge_crash WORKSPACE PAUSE`.

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use maos_coordination::merge::{CoordinatorOptions, MergeCoordinator, MergeQueue, StepHook};
use maos_coordination::{AgentId, Workspace};

pub(crate) fn main() -> anyhow::Result<()> {
    let args: Vec<String> = crate::args().skip(1).collect();
    anyhow::ensure!(args.len() == 2, "usage: merge_crash WORKSPACE PAUSE");
    let ws = Workspace::open(&args[0])?;
    let pause = args[1].clone();
    let mut options = CoordinatorOptions::default();
    options.on_step = Some(StepHook(Arc::new(move |step| {
        let name = format!("{step:?}");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "step {name}");
        if name == pause {
            let _ = writeln!(out, "paused");
            let _ = out.flush();
            drop(out);
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            std::process::exit(3);
        }
        let _ = out.flush();
    })));
    let coord = MergeCoordinator::new(&ws, AgentId::new("merger")?)?.with_options(options);
    let run = MergeQueue::new(coord).run_blocking()?;
    println!("done merged={}", run.merged.len());
    Ok(())
}
