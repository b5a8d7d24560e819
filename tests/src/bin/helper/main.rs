//! The multi-process tests' helper: one binary (one link) playing every role, `helper ROLE
//! ARGS..`, ROLE one of the modules below (each documents its arguments). Test code: a failure
//! is an error exit with its message.

mod comm_agent;
mod comm_follower;
mod comm_hold;
mod comm_writer;
mod lock_deadlock;
mod lock_racer;
mod lock_worker;
mod merge_crash;
mod track_hold;
mod track_lock_hold;
mod track_worker;

/// The process's arguments as the role sees them: the program, then the role's own arguments
/// (the role's name removed).
pub(crate) fn args() -> impl Iterator<Item = String> {
    let mut all = std::env::args();
    let program = all.next();
    program.into_iter().chain(all.skip(1))
}

fn main() -> anyhow::Result<()> {
    let role = std::env::args().nth(1).unwrap_or_default();
    match role.as_str() {
        "comm_agent" => comm_agent::main(),
        "comm_follower" => comm_follower::main(),
        "comm_hold" => comm_hold::main(),
        "comm_writer" => comm_writer::main(),
        "lock_deadlock" => lock_deadlock::main(),
        "lock_racer" => lock_racer::main(),
        "lock_worker" => lock_worker::main(),
        "merge_crash" => merge_crash::main(),
        "track_hold" => track_hold::main(),
        "track_lock_hold" => track_lock_hold::main(),
        "track_worker" => track_worker::main(),
        other => anyhow::bail!("helper: unknown role {other:?}"),
    }
}
