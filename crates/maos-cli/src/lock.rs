//! `maos` commands of the lock group (being built; see its issue).

use clap::Subcommand;

use crate::ctx::Ctx;
use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub(crate) enum LockCommand {
    /// Not built yet.
    #[command(hide = true)]
    LockPending,
}

pub(crate) fn run(cmd: LockCommand, _ctx: &Ctx) -> anyhow::Result<Exit> {
    match cmd {
        LockCommand::LockPending => anyhow::bail!("the lock commands are not built yet"),
    }
}
