//! Exit codes, documented in docs/cli.md. Every command uses them.

use std::fmt;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
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
}

impl Failure {
    /// Fails with `code` and `message`.
    pub(crate) fn error(code: Exit, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            code,
            message: message.into(),
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

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
