use std::path::PathBuf;

/// Everything that can go wrong in `maos-core`.
///
/// Every variant names the path or the name it is about, so a message printed to a user
/// is actionable on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A storage backend other than the files (PostgreSQL) failed; the source says how.
    #[error("{backend}")]
    Backend {
        /// The backend's name (`postgresql`).
        backend: &'static str,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// An operating-system call on `path` failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`open`, `write`, `rename`, ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A name (agent, role, channel, resource, ...) was rejected by its constructor.
    #[error("invalid {kind} name \"{name}\": {reason}")]
    InvalidName {
        /// Which kind of name (`agent`, `channel`, `resource`, ...).
        kind: &'static str,
        /// The rejected input, lossily escaped for display.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A path resolves outside the workspace it must stay in.
    #[error("path {path} is outside the workspace {workspace}")]
    OutsideWorkspace {
        /// The offending path.
        path: PathBuf,
        /// The workspace root.
        workspace: PathBuf,
    },

    /// A file is larger than the limit the reader accepts.
    #[error("{path} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (or a lower bound on it).
        size: u64,
        /// The limit in force.
        limit: u64,
    },

    /// A symbolic link was found inside `.maos/` where maos never creates one.
    #[error("refusing to follow symbolic link {path} inside the maos directory")]
    Symlink {
        /// The link.
        path: PathBuf,
    },

    /// Create-only-if-absent publishing found the name taken.
    #[error("{path} already exists")]
    AlreadyExists {
        /// The name that was taken.
        path: PathBuf,
    },

    /// A file does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },

    /// A file could not be parsed.
    #[error("corrupt file {path}: {reason} (`maos doctor` checks every file of the workspace)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A value could not be serialised.
    #[error("cannot serialise {what}")]
    Serialize {
        /// What was being serialised.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// The workspace was written by a newer (or unknown) version of maos.
    #[error(
        "workspace {path} has on-disk format {found:?}, this maos understands format {supported}; \
         upgrade maos or use another workspace"
    )]
    UnsupportedFormat {
        /// The format file.
        path: PathBuf,
        /// What the file says.
        found: String,
        /// The format this build reads and writes.
        supported: u32,
    },

    /// The workspace has no `.maos/` directory yet.
    #[error("no maos workspace at {path} (run `maos init`)")]
    NotInitialized {
        /// The workspace root that was looked at.
        path: PathBuf,
    },

    /// An agent is not in the registry.
    #[error("agent {agent} is not registered in {path}")]
    UnknownAgent {
        /// The agent.
        agent: String,
        /// The registry directory.
        path: PathBuf,
    },

    /// The state directory can be written by someone maos does not trust.
    #[error(
        "refusing to use {}: {problem}; other users could release your locks and send as your \
         agents. Fix it with `chmod -R go-w {}` (and chown it to yourself), or set \
         MAOS_ALLOW_SHARED_WORKSPACE=1 to accept a group-writable one",
        path.display(),
        path.display()
    )]
    UnsafePermissions {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// Something other than a regular file sits where maos keeps one.
    #[error(
        "{path} is a {kind}, not a regular file; maos never creates one there: move it away \
         (`maos doctor` lists such files)"
    )]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is (`FIFO (named pipe)`, `directory`, ...).
        kind: &'static str,
    },

    /// Waiting for a kernel lock (`flock`) on a state file took longer than the operation allows.
    #[error(
        "timed out after {} waiting for the kernel lock on {}{}",
        crate::human_duration(*waited),
        path.display(),
        crate::fsx::describe_holders(holders)
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long it waited.
        waited: std::time::Duration,
        /// Who holds it, as far as the kernel says.
        holders: Vec<crate::fsx::LockHolder>,
    },
}

impl Error {
    /// Builds an [`Error::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the error is an I/O error of kind `NotFound` or [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound { .. } => true,
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
