//! `maos`: the command-line face of maos, for agents working from a shell.
//!
//! Every subcommand follows the same conventions (docs/cli.md): global `--workspace`,
//! `--agent`, `--json`, `-v/-q`; machine-readable output on stdout with `--json`; logs on
//! stderr; exit codes from [`exit::Exit`].

mod agents;
mod comm;
mod ctx;
mod dashboard;
mod demo;
mod duration;
mod exit;
mod hook;
mod lock;
mod mcp;
mod merge;
mod picture;
mod status;
mod task;
mod watch_view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::ctx::Ctx;
use crate::exit::Exit;

/// Coordinate many AI coding agents working in one repository: messages, locks, tasks and
/// merges, kept as plain files in `<workspace>/.maos/`.
#[derive(Debug, Parser)]
#[command(name = "maos", version, propagate_version = true, max_term_width = 100)]
#[command(
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 timed out or busy, \
4 conflicts found, 5 deadlock found.\nSee docs/cli.md and docs/protocol.md."
)]
struct Cli {
    /// Workspace root (default: nearest ancestor with .maos/, else the main git worktree,
    /// else the current directory).
    #[arg(long, global = true, env = "MAOS_WORKSPACE", value_name = "DIR")]
    workspace: Option<PathBuf>,

    /// Act as this agent (default: $MAOS_AGENT_ID, else "anonymous").
    #[arg(long, global = true, env = "MAOS_AGENT_ID", value_name = "ID")]
    agent: Option<String>,

    /// Print machine-readable JSON on stdout (JSON Lines for streams).
    #[arg(long, global = true)]
    json: bool,

    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Less log output on stderr (-q errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the .maos/ layout in the workspace (idempotent).
    Init,
    /// Register agents and list them with their liveness.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Show what the workspace holds (--watch: a live terminal view).
    Status(status::StatusArgs),
    /// Serve the live web dashboard of the workspace (loopback, read-only by default).
    Dashboard(dashboard::DashboardArgs),
    /// Run a real multi-agent session in a temporary workspace.
    Demo(demo::DemoArgs),
    // Messages: send, recv, broadcast, subscribe, channels (top-level commands).
    #[command(flatten)]
    Comm(comm::CommCommand),
    /// Locks on files and resources: acquire, release, renew, list, run, check.
    #[command(subcommand)]
    Lock(lock::LockCommand),
    /// Deadlocks between lock waiters: check.
    #[command(subcommand)]
    Deadlock(lock::DeadlockCommand),
    /// Tasks: add, list, show, ready, claim, start/review/done/fail, report, gantt, graph, watch.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Merges: check, prepare, resolve, run, queue.
    #[command(subcommand)]
    Merge(merge::MergeCommand),
    /// Serve MCP on stdio for one agent session (Claude Code, Codex, Gemini CLI, Cursor).
    Mcp(mcp::McpArgs),
    /// Hooks for the tools agents work in: Claude Code (`claude EVENT`), git, and `install`.
    #[command(subcommand)]
    Hook(hook::HookCommand),
}

fn init_tracing(verbose: u8, quiet: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match (verbose, quiet) {
        (_, q) if q > 0 => "error",
        (0, _) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    // notify warns when a watched directory disappears before its watcher (a removed
    // temporary workspace): harmless for maos, which treats events as hints only.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},notify=error")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// A reader that closes our stdout early (`maos task list --json | head`) is not an error:
/// `print!` panics on EPIPE, so end quietly the way Unix tools do, instead of a backtrace.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    init_tracing(cli.verbose, cli.quiet);
    let result = Ctx::new(cli.workspace.as_deref(), cli.agent.as_deref(), cli.json)
        .and_then(|ctx| run(cli.command, &ctx));
    match result {
        Ok(code) => code.into(),
        Err(err) => {
            let code = exit::code_of(&err);
            eprintln!("maos: {err:#}");
            code.into()
        }
    }
}

fn run(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    match command {
        Command::Init => status::init(ctx),
        Command::Agents(cmd) => agents::run(cmd, ctx),
        Command::Status(args) if args.watch => watch_view::run(ctx),
        Command::Status(_) => status::status(ctx),
        Command::Dashboard(args) => dashboard::run(args, ctx),
        Command::Demo(args) => demo::run(args, ctx),
        Command::Comm(cmd) => comm::run(cmd, ctx),
        Command::Lock(cmd) => lock::run(cmd, ctx),
        Command::Deadlock(cmd) => lock::run_deadlock(cmd, ctx),
        Command::Task(cmd) => task::run(cmd, ctx),
        Command::Merge(cmd) => merge::run(cmd, ctx),
        Command::Hook(cmd) => hook::run(cmd, ctx),
        Command::Mcp(args) => mcp::run(args, ctx),
    }
}
