//! `maos`: the command-line face of maos, for agents working from a shell.
//!
//! Every subcommand follows the same conventions (docs/cli.md): global `--workspace`,
//! `--agent`, `--json`, `-v/-q`; machine-readable output on stdout with `--json`; logs on
//! stderr; exit codes from [`Exit`], listed once in [`EXIT_CODES`].
//!
//! The binary (`src/main.rs`) only calls [`main`]. The library target exists so that tests
//! can walk the clap definition ([`command`]) and the exit-code table, and check
//! `docs/cli.md` and `maos --help` against them.
//!
//! ```
//! // Every subcommand of the real definition, as docs/cli.md must list them.
//! let cmd = maos_cli::command();
//! assert!(cmd.get_subcommands().any(|c| c.get_name() == "lock"));
//! assert_eq!(maos_cli::Exit::Busy as u8, 3);
//! ```
//!
//! # Limitations
//!
//! - Not an API for other programs: use the library crates (`maos-coordination`) instead;
//!   this target exposes only what the CLI's own tests need.
//! - Output goes to the process's stdout and stderr; [`main`] is meant to be called once.

// Standard output goes through `outln!`/`out!` only: a closed pipe is a quiet exit, never a
// panic (`println!` panics on EPIPE).
#![warn(clippy::print_stdout)]

/// `println!` that returns an error instead of panicking (see [`ctx::write_stdout`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::ctx::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` that returns an error instead of panicking (see [`ctx::write_stdout`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::ctx::write_stdout(format_args!($($arg)*), false)
    };
}

mod agents;
mod comm;
mod ctx;
mod dashboard;
mod demo;
mod doctor;
mod duration;
mod exit;
mod hook;
mod lock;
mod mcp;
mod merge;
mod picture;
mod status;
mod task;
mod tied;
mod watch_view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::ctx::Ctx;
pub use crate::exit::{EXIT_CODES, Exit};

/// Coordinate many AI coding agents working in one repository: messages, locks, tasks and
/// merges, kept as plain files in `<workspace>/.maos/`.
#[derive(Debug, Parser)]
#[command(name = "maos", version, propagate_version = true, max_term_width = 100)]
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
    /// Create the .maos/ layout in the workspace (idempotent); --backend chooses where the
    /// state lives.
    Init(status::InitArgs),
    /// Register agents and list them with their liveness.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Show what the workspace holds (--watch: a live terminal view).
    Status(status::StatusArgs),
    /// Serve the live web dashboard of the workspace (loopback, read-only by default).
    Dashboard(dashboard::DashboardArgs),
    /// Check every file of the workspace; --repair fixes what can be fixed without losing
    /// acknowledged data (quarantining what it removes). Exit 1 while problems remain.
    Doctor(doctor::DoctorArgs),
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

fn init_tracing(verbose: u8, quiet: u8, demo: bool) {
    use tracing_subscriber::EnvFilter;
    let level = match (verbose, quiet) {
        (_, q) if q > 0 => "error",
        (0, _) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    // notify warns when a watched directory disappears before its watcher (a removed
    // temporary workspace): harmless for maos, which treats events as hints only.
    // The demo reports the deadlocks it provokes itself (from the `deadlock` topic).
    let demo_quiet = if demo {
        ",maos_lock::deadlock=error"
    } else {
        ""
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},notify=error{demo_quiet}")));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if demo {
        // Its live view shows log lines in its event log instead of breaking the drawing.
        log.with_writer(demo::LogSink).with_ansi(false).init();
    } else {
        log.with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// The clap definition of `maos`, with the exit codes of [`EXIT_CODES`] after `--help`.
pub fn command() -> clap::Command {
    Cli::command().after_help(exit::after_help())
}

/// Runs `maos` with the process's arguments; the binary's `main`.
pub fn main() -> ExitCode {
    // `lock run`'s supervisor (tied.rs): not a command anyone types.
    if std::env::args_os().nth(1).is_some_and(|a| a == tied::ENTRY) {
        return tied::main(std::env::args_os().skip(2).collect());
    }
    // `merge check SOURCE [TARGET]` skips building the clap tree (merge::FastCheck).
    if let Some(fast) = merge::FastCheck::parse(std::env::args_os().skip(1)) {
        init_tracing(0, 0, false);
        let result = Ctx::new(fast.workspace.as_deref(), fast.agent.as_deref(), fast.json)
            .and_then(|mut ctx| {
                ctx.command = "merge check".into();
                fast.run(&ctx)
            });
        return finish(result);
    }
    // `lock run RESOURCE -- CMD` likewise (lock::FastRun).
    if let Some(fast) = lock::FastRun::parse(std::env::args_os().skip(1)) {
        init_tracing(0, 0, false);
        let result = Ctx::new(fast.workspace.as_deref(), fast.agent.as_deref(), fast.json)
            .and_then(|mut ctx| {
                ctx.command = "lock run".into();
                fast.run(&ctx)
            });
        return finish(result);
    }
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // `lock acquire`: the command's words, for errors that name it.
    let mut words = Vec::new();
    let mut m = &matches;
    while let Some((name, sub)) = m.subcommand() {
        words.push(name.to_owned());
        m = sub;
    }
    init_tracing(
        cli.verbose,
        cli.quiet,
        matches!(cli.command, Command::Demo(_)),
    );
    let result =
        Ctx::new(cli.workspace.as_deref(), cli.agent.as_deref(), cli.json).and_then(|mut ctx| {
            ctx.command = words.join(" ");
            run(cli.command, &ctx)
        });
    finish(result)
}

fn finish(result: anyhow::Result<Exit>) -> ExitCode {
    match result {
        Ok(code) => code.into(),
        // A reader that closed our stdout early (`maos task list --json | head`) is not an
        // error: end quietly, as Unix tools do.
        Err(err) if exit::is_stdout_closed(&err) => Exit::Ok.into(),
        Err(err) => {
            let code = exit::code_of(&err);
            eprintln!("maos: {err:#}");
            code.into()
        }
    }
}

fn run(command: Command, ctx: &Ctx) -> anyhow::Result<Exit> {
    match command {
        Command::Init(args) => status::init(args, ctx),
        Command::Agents(cmd) => agents::run(cmd, ctx),
        Command::Status(args) if args.watch => watch_view::run(ctx),
        Command::Status(_) => status::status(ctx),
        Command::Dashboard(args) => dashboard::run(args, ctx),
        Command::Doctor(args) => doctor::run(args, ctx),
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
