//! The cross-crate and multi-process tests of maos, as one test binary (one link of
//! libgit2 and the workspace instead of one per file). One module per concern; helpers shared
//! by them live in the `maos-tests` library (`tests/src/lib.rs`).

mod backend_conformance;
mod comm_multiprocess;
mod comm_power_cut;
mod comm_stopped;
mod core_hostile_names;
mod fuzz;
mod lock_deadlock;
mod lock_mutex;
mod lock_race;
mod lock_records;
mod merge_coordination;
mod merge_crash;
mod merge_equivalence;
mod merge_history_parity;
mod merge_kinds;
mod merge_power_cut;
mod merge_review_queue;
mod merge_review_snapshot;
mod merge_review_touch;
mod pg_faults;
mod pg_netns;
mod tidy;
mod track_dag;
mod track_dead_agent;
mod track_feature;
mod track_review_kill;
mod track_stopped_holder;

/// The multi-process tests' helper binary (`tests/src/bin/helper`) in `role`.
fn helper(role: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_helper"));
    c.arg(role);
    c
}
