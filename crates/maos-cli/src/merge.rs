//! `maos` commands of the merge group (being built; see its issue).

use clap::Subcommand;

use crate::ctx::Ctx;
use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub(crate) enum MergeCommand {
    /// Not built yet.
    #[command(hide = true)]
    MergePending,
}

pub(crate) fn run(cmd: MergeCommand, _ctx: &Ctx) -> anyhow::Result<Exit> {
    match cmd {
        MergeCommand::MergePending => anyhow::bail!("the merge commands are not built yet"),
    }
}
