//! `maos lock run` where the lock lives in `maos`'s own database session (the PostgreSQL
//! backend): no child can inherit a session, so if that `maos` ends first (killed, Ctrl-C,
//! out of memory) the lock is freed while the command may still run, unprotected. `maos`
//! therefore starts, beside the command, a watcher: a second `maos` process started as
//! `maos __lock-run-watch PID CMD_PID`, which
//!
//! - watches `PID`, the `maos` holding the lock, and `CMD_PID`, the command, through pidfds;
//! - when `maos` ends before the command does, stops and kills the command and every process
//!   descended from it ([`maos_coordination::core::process::kill_tree`]), says so on stderr
//!   and exits 1; when the command ends first, exits 0;
//! - survives the terminal's SIGINT, SIGTERM, SIGHUP and SIGQUIT, which reach `maos` too:
//!   `maos`'s end is what it acts on.
//!
//! The command stays `maos`'s own child (same terminal, same process group, its status as
//! on the files), so a watcher killed on its own harms nothing: `maos` still holds the lock
//! until the command ends. The lock thus never outlives, and is never outlived by, the work
//! it protects. On the file backend the command inherits the lock's liveness instead (as with
//! flock(1)) and no watcher runs.

use std::ffi::OsString;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use maos_coordination::core::process::kill_tree;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};

/// The first argument that makes `maos` the watcher (not a subcommand: never typed).
pub(crate) const ENTRY: &str = "__lock-run-watch";

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

/// Starts the watcher of `command` (a child of this process). When it cannot be started the
/// command is stopped (it must not run without its lock's guardian) and the error returned.
pub(crate) fn watch(command: &mut Child) -> std::io::Result<Child> {
    let started = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .arg(ENTRY)
            .arg(std::process::id().to_string())
            .arg(command.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
    });
    started.inspect_err(|_| {
        kill_tree(command.id());
        let _ = command.wait();
    })
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("maos: {msg}");
    ExitCode::FAILURE
}

fn pid_of(arg: &OsString) -> Option<Pid> {
    arg.to_str()?.parse::<i32>().ok().and_then(Pid::from_raw)
}

/// The watcher's `main`: `args` are what follows [`ENTRY`].
pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    let [holder, command] = args.as_slice() else {
        return fail(&format!(
            "{ENTRY} PID CMD_PID is started by `maos lock run` only"
        ));
    };
    let (Some(holder), Some(command)) = (pid_of(holder), pid_of(command)) else {
        return fail(&format!(
            "{ENTRY}: {holder:?} {command:?} are not process ids"
        ));
    };
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
    let cmd = command.as_raw_nonzero().get().unsigned_abs();
    // The command first: gone already, there is nothing to guard.
    let Ok(command_fd) = pidfd_open(command, PidfdFlags::empty()) else {
        return ExitCode::SUCCESS;
    };
    let end = |why: &str| {
        kill_tree(cmd);
        fail(&format!(
            "{why} while its command (pid {cmd}) ran: the command and every process it \
             started were killed, since the lock went with that maos's database session"
        ))
    };
    // Then the holder, and that it is still our parent: had it ended already, we would have
    // been handed to another parent.
    let holder_fd = match pidfd_open(holder, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(_) => return end("the maos holding the lock had ended"),
    };
    if i32::try_from(std::os::unix::process::parent_id()).ok()
        != Some(holder.as_raw_nonzero().get())
    {
        return end("the maos holding the lock had ended");
    }
    loop {
        let mut fds = [
            PollFd::new(&command_fd, PollFlags::IN),
            PollFd::new(&holder_fd, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue, // a terminal signal: ignored
            Err(e) => return end(&format!("cannot watch the maos holding the lock ({e})")),
        }
        // The command's end first: when both ended, there is nothing left to stop.
        if !fds[0].revents().is_empty() {
            return ExitCode::SUCCESS;
        }
        if !fds[1].revents().is_empty() {
            return end("the maos holding the lock ended");
        }
    }
}
