//! A commit of a worktree's uncommitted state, built in memory.

use std::path::Path;

use git2::{Index, IndexEntry, Oid, Repository};

use super::types::MODE_LINK;
use crate::error::{Error, GitContext as _, Result};

pub(crate) fn snapshot_in(repo: &Repository) -> Result<Oid> {
    let head = repo
        .head()
        .git("read HEAD")?
        .peel_to_commit()
        .git("peel HEAD")?;
    let workdir = repo
        .workdir()
        .ok_or_else(|| Error::Git {
            op: "snapshot worktree",
            source: git2::Error::from_str("bare repository has no working tree"),
        })?
        .to_path_buf();
    let mut index = Index::new().git("new index")?;
    index
        .read_tree(&head.tree().git("read tree")?)
        .git("read tree")?;
    let mut so = git2::StatusOptions::new();
    so.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .renames_head_to_index(false);
    let statuses = repo.statuses(Some(&mut so)).git("status")?;
    let mut changed = 0usize;
    for st in statuses.iter() {
        // Bytes, not `path()`: a name that is not UTF-8 is a file like any other.
        let bytes = st.path_bytes();
        if bytes.starts_with(b".maos/") {
            continue;
        }
        let path = {
            use std::os::unix::ffi::OsStrExt as _;
            Path::new(std::ffi::OsStr::from_bytes(bytes))
        };
        let full = workdir.join(path);
        match std::fs::symlink_metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = index.remove_path(path);
                changed += 1;
            }
            Err(e) => {
                return Err(Error::Git {
                    op: "snapshot worktree",
                    source: git2::Error::from_str(&format!("{}: {e}", full.display())),
                });
            }
            Ok(meta) => {
                let (oid, mode) = if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&full).map_err(|e| Error::Git {
                        op: "snapshot worktree",
                        source: git2::Error::from_str(&format!("{}: {e}", full.display())),
                    })?;
                    let bytes = target.to_string_lossy().into_owned().into_bytes();
                    (repo.blob(&bytes).git("write blob")?, MODE_LINK)
                } else if meta.is_file() {
                    let oid = repo.blob_path(&full).git("write blob")?;
                    let exec = {
                        use std::os::unix::fs::PermissionsExt as _;
                        meta.permissions().mode() & 0o111 != 0
                    };
                    (oid, if exec { 0o100755 } else { 0o100644 })
                } else {
                    continue;
                };
                index
                    .add(&IndexEntry {
                        ctime: git2::IndexTime::new(0, 0),
                        mtime: git2::IndexTime::new(0, 0),
                        dev: 0,
                        ino: 0,
                        mode,
                        uid: 0,
                        gid: 0,
                        file_size: 0,
                        id: oid,
                        flags: u16::try_from(bytes.len().min(0xfff)).unwrap_or(0xfff),
                        flags_extended: 0,
                        path: bytes.to_vec(),
                    })
                    .git("stage snapshot entry")?;
                changed += 1;
            }
        }
    }
    if changed == 0 {
        return Ok(head.id());
    }
    let tree_id = index.write_tree_to(repo).git("write tree")?;
    let tree = repo.find_tree(tree_id).git("read tree")?;
    let sig = git2::Signature::now("maos", "maos@localhost").git("signature")?;
    repo.commit(
        None,
        &sig,
        &sig,
        "maos: snapshot of uncommitted changes",
        &tree,
        &[&head],
    )
    .git("write snapshot commit")
}
