//! `maos` commands of the comm group (being built; see its issue).

use clap::Subcommand;

use crate::ctx::Ctx;
use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub(crate) enum CommCommand {
    /// Not built yet.
    #[command(hide = true)]
    CommPending,
}

pub(crate) fn run(cmd: CommCommand, _ctx: &Ctx) -> anyhow::Result<Exit> {
    match cmd {
        CommCommand::CommPending => anyhow::bail!("the comm commands are not built yet"),
    }
}
