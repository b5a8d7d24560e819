use std::path::PathBuf;

/// Everything that can go wrong in `maos-session`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A workspace file or name problem.
    #[error(transparent)]
    Core(#[from] maos_core::Error),
    /// The agent's inbox could not be read or acknowledged.
    #[error(transparent)]
    Comm(#[from] maos_comm::Error),
    /// The lock table could not be consulted.
    #[error(transparent)]
    Lock(#[from] maos_lock::Error),
    /// The task store could not be consulted.
    #[error(transparent)]
    Track(#[from] maos_track::Error),
    /// A file to be edited could not be read to compare it with what the agent last saw.
    #[error("cannot read {path} to check whether it changed since you last read it")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
