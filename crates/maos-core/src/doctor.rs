//! What `maos doctor` reports: one [`Finding`] per problem a store's check found in its files,
//! in words, with the file, and what `--repair` did or would do about it.
//!
//! Every store (channels, locks, tasks, registry, merge queue) has a `doctor`-style check
//! that returns findings; the CLI prints them all. A repair never drops acknowledged data: what
//! it removes is moved to `.maos/quarantine/` first ([`quarantine`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Result, Workspace, fsx, now_ms};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; nothing is wrong with the data (a stray temporary file, say).
    Note,
    /// Something is off but every operation still works.
    Warning,
    /// Operations fail or data is at risk until it is repaired.
    Error,
}

/// One problem found in a workspace's files.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// The store it belongs to (`channels`, `locks`, `tasks`, `agents`, `merge`, `workspace`).
    pub store: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// What is wrong, in words.
    pub problem: String,
    /// What `--repair` does about it (or why it cannot).
    pub remedy: String,
    /// Whether it was repaired in this run.
    pub repaired: bool,
}

impl Finding {
    /// A finding, not repaired.
    pub fn new(
        severity: Severity,
        store: &'static str,
        path: impl Into<PathBuf>,
        problem: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            store,
            path: path.into(),
            problem: problem.into(),
            remedy: remedy.into(),
            repaired: false,
        }
    }

    /// Marks it repaired.
    pub fn repaired(mut self) -> Self {
        self.repaired = true;
        self
    }
}

/// Moves `path` into `.maos/quarantine/<store>/<millis>.<file name>` (durably) and returns the
/// new path: what a repair does instead of deleting.
pub fn quarantine(ws: &Workspace, store: &str, path: &Path) -> Result<PathBuf> {
    let dir = ws.maos_dir().join("quarantine").join(store);
    fsx::create_dir_private(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unnamed".into());
    let dest = dir.join(format!("{}.{name}", now_ms()));
    fsx::rename(path, &dest)?;
    Ok(dest)
}
