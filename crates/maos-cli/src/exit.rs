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

/// The exit code for an error returned by a command.
pub(crate) fn code_of(err: &anyhow::Error) -> Exit {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>().map(|f| f.code))
        .unwrap_or(Exit::Error)
}
