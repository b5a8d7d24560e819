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
    #[must_use = "returns the changed value; the original is consumed"]
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

/// How deep [`check`] walks below `.maos/`.
const MAX_DEPTH: usize = 12;

/// Checks what maos-core owns: files that are not regular files or directories anywhere under
/// `.maos/` (a FIFO would hang a reader, a link is never followed), stray temporary files, the
/// settings (`config.json`), the agent registry and the session map. With `repair`, moves what
/// cannot be used to `.maos/quarantine/` (an unreadable agent record: the agent registers
/// again) and removes temporary files older than a minute.
pub fn check(ws: &Workspace, repair: bool) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    walk(ws, ws.maos_dir(), 0, repair, &mut out)?;
    if let Err(e) = crate::Config::load(ws) {
        let path = ws.config_path();
        let f = Finding::new(
            Severity::Error,
            "workspace",
            &path,
            e.to_string(),
            "quarantine it (every setting falls back to its default); fix and restore it by hand",
        );
        out.push(if repair && path.exists() {
            quarantine(ws, "workspace", &path)?;
            f.repaired()
        } else {
            f
        });
    }
    let list = crate::AgentRegistry::new(ws).list()?;
    for p in list.problems {
        let path = problem_path(&p).unwrap_or_else(|| ws.agents_dir());
        let f = Finding::new(
            Severity::Error,
            "agents",
            &path,
            p.to_string(),
            "quarantine it; the agent registers again (`maos agents register`)",
        );
        out.push(if repair && path.is_file() {
            quarantine(ws, "agents", &path)?;
            f.repaired()
        } else {
            f
        });
    }
    if let Ok(rd) = std::fs::read_dir(ws.sessions_dir()) {
        let reg = crate::AgentRegistry::new(ws);
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(session) = name.strip_suffix(".json") else {
                continue;
            };
            if let Err(err) = reg.session(session) {
                let f = Finding::new(
                    Severity::Warning,
                    "agents",
                    e.path(),
                    err.to_string(),
                    "quarantine it; the session is named again at its next hook call",
                );
                out.push(if repair {
                    quarantine(ws, "sessions", &e.path())?;
                    f.repaired()
                } else {
                    f
                });
            }
        }
    }
    Ok(out)
}

fn problem_path(e: &crate::Error) -> Option<PathBuf> {
    use crate::Error as E;
    match e {
        E::Io { path, .. }
        | E::Corrupt { path, .. }
        | E::TooLarge { path, .. }
        | E::Symlink { path }
        | E::NotRegularFile { path, .. }
        | E::NotFound { path } => Some(path.clone()),
        _ => None,
    }
}

fn walk(
    ws: &Workspace,
    dir: &Path,
    depth: usize,
    repair: bool,
    out: &mut Vec<Finding>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            out.push(Finding::new(
                Severity::Error,
                "workspace",
                dir,
                format!("cannot list it: {e}"),
                "fix its permissions by hand (`chmod u+rwx`)",
            ));
            return Ok(());
        }
    };
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if path.starts_with(ws.maos_dir().join("quarantine")) {
            continue;
        }
        if ft.is_dir() {
            walk(ws, &path, depth + 1, repair, out)?;
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if ft.is_file() {
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|d| d.as_secs() >= 60);
            if fsx::is_temp_name(&name) && old {
                let f = Finding::new(
                    Severity::Note,
                    "workspace",
                    &path,
                    "a temporary file left by a writer that was killed before publishing",
                    "remove it",
                );
                out.push(if repair {
                    fsx::remove_if_exists(&path)?;
                    f.repaired()
                } else {
                    f
                });
            }
            continue;
        }
        let kind = if ft.is_symlink() {
            "symbolic link (never followed)"
        } else {
            "special file (FIFO, socket or device) where maos only keeps regular files"
        };
        let f = Finding::new(
            Severity::Error,
            "workspace",
            &path,
            format!("a {kind}"),
            "quarantine it",
        );
        out.push(if repair {
            quarantine(ws, "workspace", &path)?;
            f.repaired()
        } else {
            f
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_and_bad_records_are_found_and_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let fifo = ws.tasks_dir().join("snapshot.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        std::fs::write(ws.agents_dir().join("bad.json"), "{not json").unwrap();
        std::fs::write(ws.config_path(), "[]").unwrap();
        let found = check(&ws, false).unwrap();
        let text: Vec<String> = found
            .iter()
            .map(|f| format!("{}: {}", f.path.display(), f.problem))
            .collect();
        assert_eq!(found.len(), 3, "{text:#?}");
        assert!(
            found
                .iter()
                .all(|f| f.severity == Severity::Error && !f.repaired)
        );
        let fixed = check(&ws, true).unwrap();
        assert!(fixed.iter().all(|f| f.repaired), "{fixed:#?}");
        assert!(check(&ws, false).unwrap().is_empty());
        assert!(!fifo.exists() && ws.maos_dir().join("quarantine/agents").is_dir());
    }
}
