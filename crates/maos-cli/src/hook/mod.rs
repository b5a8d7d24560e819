//! `maos hook ...`: Claude Code hooks (`claude EVENT`), git hooks (`git pre-commit`,
//! `git prepare-commit-msg`) and `install`. Thin adapters over maos-session and the stores.

mod claude;
mod git;
mod install;

use clap::Subcommand;

/// The role an agent takes when a hook or an MCP server registers it.
pub(crate) const ROLE_ENV: &str = "MAOS_AGENT_ROLE";

use crate::ctx::Ctx;
use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub(crate) enum HookCommand {
    /// Run as a Claude Code hook: reads the event's JSON on stdin, answers on stdout.
    ///
    /// SessionStart registers the agent and tells it what it needs to know; PreToolUse (Edit,
    /// Write, MultiEdit, NotebookEdit) refuses an edit of a file another agent has locked or
    /// that changed since the session last read it; PostToolUse records what the session saw
    /// and renews its lease; Stop reports what it still holds; SessionEnd releases it.
    Claude {
        /// The hook event (SessionStart, PreToolUse, PostToolUse, Stop, SessionEnd).
        event: String,
    },
    /// Run as a git hook.
    #[command(subcommand)]
    Git(git::GitHook),
    /// Install the hooks: merge maos's Claude Code hooks into .claude/settings.json, add the
    /// maos MCP server to .mcp.json, install the git hooks. Prints what it changed; running it
    /// twice changes nothing.
    Install(install::InstallArgs),
}

pub(crate) fn run(cmd: HookCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    match cmd {
        HookCommand::Claude { event } => claude::run(&event, ctx),
        HookCommand::Git(h) => git::run(h, ctx),
        HookCommand::Install(args) => install::run(args, ctx),
    }
}
