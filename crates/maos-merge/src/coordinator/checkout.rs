//! Bringing a checked-out target branch along after its ref moved, crash-safely.
//!
//! The protocol (all under the target's merge lock):
//! 1. an intent record `.maos/merge/pending/<branch>.json` (`from`, `to`, the worktrees) is
//!    published (fsynced) before anything changes;
//! 2. the ref moves by compare-and-swap, `from` to `to`;
//! 3. in each worktree, every path that differs between `from` and `to` is replaced only if
//!    the file still holds `from`'s version (or already holds `to`'s: a resumed run); any
//!    other content is a local edit and is left alone, as are untracked files; the index
//!    entries of the replaced paths are rewritten in one atomic index write;
//! 4. the intent is removed.
//!
//! A process killed at any point leaves the ref at `from` (nothing happened; the intent is
//! dropped) or at `to` (the next merge into the branch, or
//! [`MergeCoordinator::recover`](super::MergeCoordinator::recover), finishes step 3). No
//! step forces a checkout, so no edit is ever overwritten.

use std::path::{Path, PathBuf};

use git2::{Oid, Repository};
use maos_core::fsx;
use serde::{Deserialize, Serialize};

use super::MergeStep;
use crate::error::{CoreContext as _, Error, GitContext as _, Result};
use crate::touch::short_branch;

/// The largest intent record read.
const INTENT_LIMIT: u64 = 1 << 20;

/// A merge that moved (or is about to move) a checked-out branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub(crate) branch: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) worktrees: Vec<PathBuf>,
}

/// What updating one worktree did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct WorktreeUpdate {
    /// Paths replaced (or already at the new version).
    pub(crate) updated: usize,
    /// Paths left alone because they hold a local edit.
    pub(crate) kept: Vec<String>,
}

/// `.maos/merge/pending/<branch>.json` (slashes and percent signs of the branch escaped).
pub(crate) fn intent_path(merge_dir: &Path, refname: &str) -> PathBuf {
    let name: String = short_branch(refname)
        .chars()
        .map(|c| match c {
            '/' => "%2F".to_owned(),
            '%' => "%25".to_owned(),
            c => c.to_string(),
        })
        .collect();
    merge_dir.join("pending").join(format!("{name}.json"))
}

pub(crate) fn write_intent(path: &Path, intent: &Intent) -> Result<()> {
    if let Some(dir) = path.parent() {
        fsx::create_dir_private(dir).core(|| format!("create {}", dir.display()))?;
    }
    fsx::write_json_replace(path, intent).core(|| format!("write {}", path.display()))
}

pub(crate) fn read_intent(path: &Path) -> Result<Option<Intent>> {
    match fsx::read_json::<Intent>(path, INTENT_LIMIT) {
        Ok(i) => Ok(Some(i)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(source) => Err(Error::Core {
            context: format!(
                "read the interrupted-merge record {} (remove it after checking the branch's \
                 worktrees by hand)",
                path.display()
            ),
            source,
        }),
    }
}

pub(crate) fn remove_intent(path: &Path) -> Result<()> {
    fsx::remove_if_exists(path)
        .map(|_| ())
        .core(|| format!("remove {}", path.display()))
}

/// The state of one path: blob id and git mode, or absent.
type State = Option<(Oid, u32)>;

fn current_state(full: &Path) -> Result<State> {
    let io = |e: std::io::Error| Error::Git {
        op: "read the worktree",
        source: git2::Error::from_str(&format!("{}: {e}", full.display())),
    };
    let meta = match std::fs::symlink_metadata(full) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.file_type().is_symlink() {
        use std::os::unix::ffi::OsStrExt as _;
        let target = std::fs::read_link(full).map_err(io)?;
        let oid = Oid::hash_object(git2::ObjectType::Blob, target.as_os_str().as_bytes())
            .git("hash link")?;
        return Ok(Some((oid, 0o120000)));
    }
    if !meta.is_file() {
        // A directory (or anything else) where a file is expected: not ours to touch.
        return Ok(Some((Oid::ZERO_SHA1, 0)));
    }
    use std::os::unix::fs::PermissionsExt as _;
    let oid = Oid::hash_file(git2::ObjectType::Blob, full).git("hash file")?;
    let mode = if meta.permissions().mode() & 0o111 != 0 {
        0o100755
    } else {
        0o100644
    };
    Ok(Some((oid, mode)))
}

fn write_state(repo: &Repository, full: &Path, state: State) -> Result<()> {
    let io = |e: std::io::Error| Error::Git {
        op: "update the worktree",
        source: git2::Error::from_str(&format!("{}: {e}", full.display())),
    };
    let Some((oid, mode)) = state else {
        match std::fs::remove_file(full) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        // Directories the deletion left empty go too (as git does).
        let mut dir = full.parent();
        while let Some(d) = dir {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        return Ok(());
    };
    let dir = full
        .parent()
        .ok_or_else(|| io(std::io::ErrorKind::InvalidInput.into()))?;
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.maos-merge"));
    let _ = std::fs::remove_file(&tmp); // left by a killed run
    let blob = repo.find_blob(oid).git("read blob")?;
    if mode == 0o120000 {
        use std::os::unix::ffi::OsStrExt as _;
        let target = std::ffi::OsStr::from_bytes(blob.content());
        std::os::unix::fs::symlink(target, &tmp).map_err(io)?;
    } else {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(&tmp, blob.content()).map_err(io)?;
        let perm = if mode == 0o100755 { 0o755 } else { 0o644 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(perm)).map_err(io)?;
    }
    std::fs::rename(&tmp, full).map_err(io)
}

/// Step 3 of the protocol for one worktree: `from` -> `to`, never touching a local edit.
pub(crate) fn update_worktree(
    wt: &Repository,
    from: Oid,
    to: Oid,
    step: &dyn Fn(MergeStep),
) -> Result<WorktreeUpdate> {
    let workdir = wt
        .workdir()
        .ok_or_else(|| Error::Git {
            op: "update the worktree",
            source: git2::Error::from_str("bare repository"),
        })?
        .to_path_buf();
    let old = wt
        .find_commit(from)
        .git("read commit")?
        .tree()
        .git("read tree")?;
    let new = wt
        .find_commit(to)
        .git("read commit")?
        .tree()
        .git("read tree")?;
    let diff = wt
        .diff_tree_to_tree(Some(&old), Some(&new), None)
        .git("diff trees")?;
    let mut out = WorktreeUpdate::default();
    let mut applied: Vec<(PathBuf, State)> = Vec::new();
    for delta in diff.deltas() {
        let file = if delta.status() == git2::Delta::Deleted {
            delta.old_file()
        } else {
            delta.new_file()
        };
        let Some(rel) = file.path().map(Path::to_path_buf) else {
            continue;
        };
        let state = |f: git2::DiffFile<'_>| -> State {
            (!f.id().is_zero()).then(|| (f.id(), u32::from(f.mode())))
        };
        let (was, will) = (state(delta.old_file()), state(delta.new_file()));
        if [was, will].iter().flatten().any(|(_, m)| *m == 0o160000) {
            out.kept.push(rel.to_string_lossy().into_owned()); // submodules: by hand
            continue;
        }
        let full = workdir.join(&rel);
        let now = current_state(&full)?;
        if now == will {
            applied.push((rel, will));
            out.updated += 1;
            continue;
        }
        if now != was {
            tracing::warn!(path = %rel.display(), "local edit kept: the merged version was not written");
            out.kept.push(rel.to_string_lossy().into_owned());
            continue;
        }
        write_state(wt, &full, will)?;
        applied.push((rel, will));
        out.updated += 1;
        step(MergeStep::FileUpdated);
    }
    let mut index = wt.index().git("read index")?;
    for (rel, state) in &applied {
        match state {
            Some(_) => index.add_path(rel).git("stage merged file")?,
            None => match index.remove_path(rel) {
                Ok(()) => {}
                Err(e) if e.code() == git2::ErrorCode::NotFound => {}
                Err(e) => return Err(e).git("unstage deleted file"),
            },
        }
    }
    index.write().git("write index")?;
    Ok(out)
}
