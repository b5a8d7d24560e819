//! Exit codes: the one table ([`EXIT_CODES`]) that `maos --help` prints and docs/cli.md's
//! "Exit codes" section must match (a test compares them). Every command uses them.

use std::fmt;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Ok = 0,
    /// 1: an error (message on stderr).
    Error = 1,
    /// 2: bad usage (clap reports these itself).
    Usage = 2,
    /// 3: timed out, or busy (a lock held by someone else).
    Busy = 3,
    /// 4: conflicts found.
    Conflicts = 4,
    /// 5: a deadlock found.
    Deadlock = 5,
}

/// Every exit code: the code, its short name (in `maos --help`) and its meaning (the table
/// in docs/cli.md).
pub const EXIT_CODES: [(Exit, &str, &str); 6] = [
    (Exit::Ok, "success", "success"),
    (
        Exit::Error,
        "error",
        "error (the message on stderr names the file, name or agent involved)",
    ),
    (Exit::Usage, "usage", "usage error (bad arguments)"),
    (
        Exit::Busy,
        "timed out or busy",
        "timed out, or busy (for example a lock held by someone else)",
    ),
    (Exit::Conflicts, "conflicts found", "conflicts found"),
    (Exit::Deadlock, "deadlock found", "deadlock found"),
];

/// The text after `maos --help`: the exit codes of [`EXIT_CODES`] and where to read more.
pub(crate) fn after_help() -> String {
    let codes: Vec<String> = EXIT_CODES
        .iter()
        .map(|(code, short, _)| format!("{} {short}", *code as u8))
        .collect();
    format!(
        "Exit codes: {}.\nSee docs/cli.md and docs/protocol.md.",
        codes.join(", ")
    )
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// An error that ends the command with a specific exit code (other errors exit with 1).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: Exit,
    pub(crate) message: String,
    /// The library error behind it, printed after `message` as part of the chain.
    pub(crate) source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Failure {
    /// Fails with `code` and `message`.
    pub(crate) fn error(code: Exit, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            code,
            message: message.into(),
            source: None,
        })
    }

    /// Fails with `code`, saying `message` and then the chain of `source`.
    pub(crate) fn caused_by(
        code: Exit,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> anyhow::Error {
        anyhow::Error::new(Failure {
            code,
            message: message.into(),
            source: Some(Box::new(source)),
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Writing to stdout failed because the reader went away (EPIPE): the command ends quietly
/// with exit 0, as Unix tools do (`maos task list | head -1`).
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Maps an error writing to stdout: a broken pipe becomes [`StdoutClosed`].
pub(crate) fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// True when `err` says that stdout's reader went away.
pub(crate) fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<StdoutClosed>())
}

/// The exit code for an error returned by a command (or an MCP tool): a [`Failure`]'s own, a
/// lock wait that timed out or a kernel lock that could not be had is busy (3), a wait aborted
/// to break a deadlock is 5, anything else 1.
pub(crate) fn code_of(err: &anyhow::Error) -> Exit {
    use maos_coordination::core::Error as CoreError;
    use maos_coordination::lock::Error as LockError;
    err.chain()
        .find_map(|e| {
            if let Some(f) = e.downcast_ref::<Failure>() {
                return Some(f.code);
            }
            match e.downcast_ref::<LockError>() {
                Some(LockError::Timeout { .. }) => return Some(Exit::Busy),
                Some(LockError::Deadlock { .. }) => return Some(Exit::Deadlock),
                _ => {}
            }
            match e.downcast_ref::<CoreError>() {
                Some(CoreError::LockTimeout { .. }) => Some(Exit::Busy),
                _ => None,
            }
        })
        .unwrap_or(Exit::Error)
}
