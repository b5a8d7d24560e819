//! `maos` commands of the task group (being built; see its issue).

use clap::Subcommand;

use crate::ctx::Ctx;
use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// Not built yet.
    #[command(hide = true)]
    TaskPending,
}

pub(crate) fn run(cmd: TaskCommand, _ctx: &Ctx) -> anyhow::Result<Exit> {
    match cmd {
        TaskCommand::TaskPending => anyhow::bail!("the task commands are not built yet"),
    }
}
