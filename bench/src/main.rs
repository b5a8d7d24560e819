//! `cargo xtask bench`: every benchmark of the workspace, each figure beside a baseline
//! measured in the same run, printed as one markdown table.
//!
//! Usage: `maos-bench [--write-docs] [FILTER..]`; a filter selects benchmarks whose group
//! name contains it.

mod agents;
mod comm;
mod core;
mod dashboard;
mod lock;
mod merge;
mod postgres;
mod soak;
mod table;
mod track;

use table::Table;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--lock-child") {
        return lock::child(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "--soak-agent") {
        let [root, id, inc, deadline, seed, think] = &args[1..] else {
            anyhow::bail!("--soak-agent ROOT ID INC DEADLINE SEED THINK_MS");
        };
        return soak::agent::run(
            std::path::Path::new(root),
            id,
            inc.parse()?,
            deadline.parse()?,
            seed.parse()?,
            std::time::Duration::from_millis(think.parse()?),
        );
    }
    if args.first().is_some_and(|a| a == "--soak") {
        return soak::main(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "--claim-child") {
        return postgres::child(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "--track-claim-child") {
        return track::claim_child(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "--comm-child") {
        return comm::child(&args[1..]);
    }
    let write_docs = args.iter().any(|a| a == "--write-docs");
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let selected = |group: &str| filters.is_empty() || filters.iter().any(|f| group.contains(f));

    let mut table = Table::default();
    if selected("core") {
        core::run(&mut table)?;
    }
    if selected("comm") {
        comm::run(&mut table)?;
    }
    if selected("lock") {
        lock::run(&mut table)?;
    }
    if selected("track") {
        track::run(&mut table)?;
    }
    if selected("merge") {
        merge::run(&mut table)?;
    }
    if selected("agents") {
        agents::run(&mut table)?;
    }
    if selected("dashboard") {
        dashboard::run(&mut table)?;
    }
    if selected("postgres") {
        postgres::run(&mut table)?;
    }
    let md = table.markdown();
    println!("{md}");
    if write_docs {
        table.write_docs(&md)?;
    }
    Ok(())
}
