//! `maos lock run` where the lock lives in `maos`'s own database session (the PostgreSQL
//! backend): no child can inherit a session, so if that `maos` ends first (killed, Ctrl-C,
//! out of memory) the lock is freed while the command may still run, unprotected. The command
//! therefore runs under a supervisor, a second `maos` process started as
//! `maos __lock-run-child PID -- CMD [ARGS...]`, which
//!
//! - starts `CMD` (same terminal, same process group: job control and Ctrl-C reach it as
//!   before) and waits for it, exiting with its status (`128 + N` for a signal `N`);
//! - watches `PID`, the `maos` holding the lock, through a pidfd, and when it ends before
//!   `CMD` does, stops and kills `CMD` and every process descended from it
//!   ([`maos_coordination::core::process::kill_tree`]), says so on stderr and exits 1;
//! - survives the terminal's SIGINT, SIGTERM, SIGHUP and SIGQUIT, which reach `maos` too:
//!   `maos`'s end is the signal it acts on.
//!
//! The lock thus never outlives, and is never outlived by, the work it protects. On the file
//! backend the command inherits the lock's liveness instead (as with flock(1)) and runs
//! without a supervisor.

use std::ffi::OsString;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// The first argument that makes `maos` the supervisor (not a subcommand: never typed).
pub(crate) const ENTRY: &str = "__lock-run-child";

/// A command's exit status as a shell gives it: its code, or `128 + N` when signal `N`
/// ended it.
pub(crate) fn status_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// The supervisor command running `prog args` for this `maos` process.
pub(crate) fn command(prog: &OsString, args: &[OsString]) -> std::io::Result<Command> {
    let mut c = Command::new(std::env::current_exe()?);
    c.arg(ENTRY)
        .arg(std::process::id().to_string())
        .arg("--")
        .arg(prog)
        .args(args);
    Ok(c)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("maos: {msg}");
    ExitCode::FAILURE
}

/// The supervisor's `main`: `args` are what follows [`ENTRY`].
pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    let [parent, dashes, prog, rest @ ..] = args.as_slice() else {
        return fail(&format!(
            "{ENTRY} PID -- CMD [ARGS...] is started by `maos lock run` only"
        ));
    };
    let Some(parent) = parent
        .to_str()
        .and_then(|p| p.parse::<i32>().ok())
        .and_then(Pid::from_raw)
    else {
        return fail(&format!("{ENTRY}: {parent:?} is not a process id"));
    };
    if dashes != "--" {
        return fail(&format!("{ENTRY} PID -- CMD: the `--` is missing"));
    }
    // The terminal's signals reach `maos` as well: its end is what this process acts on.
    let caught = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, caught.clone()) {
            return fail(&format!("cannot handle signal {sig}: {e}"));
        }
    }
    // Watch the lock's holder first, then check that it is still our parent: if it had ended
    // already, we would have been handed to another parent.
    let holder = match pidfd_open(parent, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => return fail(&format!("cannot watch the maos that holds the lock: {e}")),
    };
    if i32::try_from(std::os::unix::process::parent_id()).ok()
        != Some(parent.as_raw_nonzero().get())
    {
        return fail(&format!(
            "the maos that took the lock ended before {} started: not running it",
            prog.to_string_lossy()
        ));
    }
    let mut child = match Command::new(prog).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => return fail(&format!("cannot run {}: {e}", prog.to_string_lossy())),
    };
    let pid = child.id();
    // A pidfd of the command tells when it exits without reaping it: its pid stays ours
    // (no reuse) until we decide.
    let command = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .map(|p| pidfd_open(p, PidfdFlags::empty()));
    let command = match command {
        Some(Ok(fd)) => fd,
        other => {
            let why = match other {
                Some(Err(e)) => e.to_string(),
                _ => "not a process id".to_owned(),
            };
            maos_coordination::core::process::kill_tree(pid);
            let _ = child.wait();
            return fail(&format!(
                "cannot watch {} (pid {pid}): {why}; it was stopped",
                prog.to_string_lossy()
            ));
        }
    };
    let holder_ended = loop {
        let mut fds = [
            PollFd::new(&holder, PollFlags::IN),
            PollFd::new(&command, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue, // a terminal signal: ignored
            Err(e) => {
                maos_coordination::core::process::kill_tree(pid);
                let _ = child.wait();
                return fail(&format!("cannot watch {}: {e}", prog.to_string_lossy()));
            }
        }
        if !fds[1].revents().is_empty() {
            break false;
        }
        if !fds[0].revents().is_empty() {
            break true;
        }
    };
    if holder_ended {
        maos_coordination::core::process::kill_tree(pid);
        let _ = child.wait();
        return fail(&format!(
            "the maos holding the lock ended while {} ran: it and every process it started \
             were killed, since the lock went with that maos's database session",
            prog.to_string_lossy()
        ));
    }
    match child.wait() {
        Ok(status) => ExitCode::from(u8::try_from(status_code(status)).unwrap_or(1)),
        Err(e) => fail(&format!("cannot wait for {}: {e}", prog.to_string_lossy())),
    }
}
