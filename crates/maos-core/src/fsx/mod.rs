//! Crash-safe file primitives. Every file maos publishes goes through [`write_replace`] or
//! [`write_new`], and every file it reads through [`read_bounded`]: a reader never sees a
//! partial file, a writer killed at any instant leaves either the old content or the new one
//! (plus, at worst, a stray temporary file that readers ignore), and a symbolic link planted
//! inside `.maos/` is never followed.
//!
//! # The write-then-publish rule
//! 1. create a temporary file `.tmp.<pid>.<n>.<random>` in the destination's directory;
//! 2. write the content, `fsync` it;
//! 3. publish: `rename` over the destination (replace) or `link` to it, failing if it exists
//!    (create-only-if-absent), then remove the temporary name;
//! 4. `fsync` the directory, so the new name survives a power cut.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

mod file;
mod flock;
pub mod sim;

pub use file::DataFile;

pub(crate) use flock::describe_holders;
pub use flock::{DEFAULT_GUARD_TIMEOUT, FlockGuard, FlockMode, LockFile, LockHolder, holders_of};

/// Prefix of temporary files. Readers skip names that start with it.
pub const TEMP_PREFIX: &str = ".tmp.";

/// Default limit for [`read_bounded`] callers that have no better one: 16 MiB.
pub const DEFAULT_READ_LIMIT: u64 = 16 << 20;

const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
const CLOEXEC: i32 = rustix::fs::OFlags::CLOEXEC.bits() as i32;
const NONBLOCK: i32 = rustix::fs::OFlags::NONBLOCK.bits() as i32;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// True for names of temporary files that readers must ignore.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

fn temp_path(dir: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r = uuid::Uuid::new_v4().as_u128() as u32;
    dir.join(format!("{TEMP_PREFIX}{}.{n}.{r:08x}", std::process::id()))
}

fn parent_of(path: &Path) -> Result<&Path> {
    path.parent().ok_or_else(|| Error::Corrupt {
        path: path.to_path_buf(),
        reason: "path has no parent directory".into(),
    })
}

fn map_open_err(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    // ELOOP is what O_NOFOLLOW reports for a symbolic link.
    if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        return Error::Symlink {
            path: path.to_path_buf(),
        };
    }
    if e.kind() == std::io::ErrorKind::NotFound {
        return Error::NotFound {
            path: path.to_path_buf(),
        };
    }
    Error::io(op, path, e)
}

/// Refuses anything but a regular file behind `f` (a FIFO, a device, a socket or a directory
/// planted where maos keeps a file would hang or confuse a reader).
fn regular(f: File, path: &Path) -> Result<File> {
    let ft = f
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .file_type();
    if ft.is_file() {
        return Ok(f);
    }
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO (named pipe)"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "special file"
    };
    Err(Error::NotRegularFile {
        path: path.to_path_buf(),
        kind,
    })
}

/// Opens with `O_NONBLOCK` (so a FIFO planted at `path` cannot block the open) and refuses
/// anything but a regular file. `O_NONBLOCK` has no effect on a regular file's reads and writes.
fn open_regular(opts: &mut OpenOptions, op: &'static str, path: &Path) -> Result<File> {
    let f = opts
        .custom_flags(NOFOLLOW | CLOEXEC | NONBLOCK)
        .open(path)
        .map_err(|e| map_open_err(op, path, e))?;
    regular(f, path)
}

/// Opens `path` for reading without following a symbolic link at its last component and
/// without blocking; anything but a regular file is refused ([`Error::NotRegularFile`]).
pub fn open_read(path: &Path) -> Result<File> {
    open_regular(OpenOptions::new().read(true), "open", path)
}

/// Opens (creating it with mode 0600 if needed) `path` for reading and appending, without
/// following a symbolic link.
pub fn open_append(path: &Path) -> Result<File> {
    open_created(OpenOptions::new().read(true).append(true), "open", path)
}

/// Opens `path` with `opts`, creating it (mode 0600) when missing; a file created here has its
/// name made durable (the directory is fsynced) before this returns, so data later fsynced in
/// it cannot be lost with its name in a power cut.
fn open_created(opts: &mut OpenOptions, op: &'static str, path: &Path) -> Result<File> {
    match open_regular(opts, op, path) {
        Err(Error::NotFound { .. }) => {}
        other => return other,
    }
    let created = sim::with(
        path,
        || match open_regular(opts.clone().create_new(true).mode(0o600), op, path) {
            Ok(f) => Ok(Some(f)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(None)
            }
            Err(e) => Err(e),
        },
        |st, f| {
            if f.is_some() {
                st.create(path);
            }
        },
    )?;
    match created {
        Some(f) => {
            sync_dir(parent_of(path)?)?;
            Ok(f)
        }
        // Someone else created it between the two opens.
        None => open_regular(opts, op, path),
    }
}

/// Opens (creating it with mode 0600 if needed) `path` for reading and writing, without
/// following a symbolic link. Meant for files used only as kernel-lock handles.
pub fn open_lock_file(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(NOFOLLOW | CLOEXEC | NONBLOCK)
        .open(path)
        .map_err(|e| map_open_err("open", path, e))?;
    regular(f, path)
}

/// `fsync`s a directory, making the names created or removed in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    sim::with(
        dir,
        || {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::DIRECTORY.bits() as i32 | NOFOLLOW | CLOEXEC)
                .open(dir)
                .map_err(|e| map_open_err("open directory", dir, e))?;
            f.sync_all()
                .map_err(|e| Error::io("fsync directory", dir, e))
        },
        |st, ()| st.sync_dir(dir),
    )
}

/// Creates `dir` and its missing parents with mode 0700, durably (each new directory's parent
/// is fsynced). An existing directory is fine; an existing symbolic link, or a file in the
/// way, is refused.
pub fn create_dir_private(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::Symlink {
                path: dir.to_path_buf(),
            });
        }
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(Error::Corrupt {
                path: dir.to_path_buf(),
                reason: "expected a directory, found a file".into(),
            });
        }
        Err(_) => {}
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_private(parent)?;
    }
    use std::os::unix::fs::DirBuilderExt;
    let created = sim::with(
        dir,
        || match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("create directory", dir, e)),
        },
        |st, created| {
            if *created {
                st.mkdir(dir);
            }
        },
    )?;
    if !created {
        // Raced with another creator: it must be a real directory now.
        return match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(m) if m.file_type().is_symlink() => Err(Error::Symlink {
                path: dir.to_path_buf(),
            }),
            _ => Err(Error::Corrupt {
                path: dir.to_path_buf(),
                reason: "expected a directory, found a file".into(),
            }),
        };
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn write_temp(dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = temp_path(dir);
    sim::with(
        &tmp,
        || {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(NOFOLLOW | CLOEXEC)
                .open(&tmp)
                .map_err(|e| map_open_err("create", &tmp, e))?;
            let res = f
                .write_all(bytes)
                .and_then(|()| f.sync_data())
                .map_err(|e| Error::io("write", &tmp, e));
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(())
        },
        |st, ()| {
            st.create(&tmp);
            st.write(&tmp, 0, bytes);
            st.sync(&tmp);
        },
    )?;
    Ok(tmp)
}

/// Renames `from` to `to` (replacing `to`), then fsyncs the directories involved so the move
/// survives a power cut.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    sim::with(
        to,
        || std::fs::rename(from, to).map_err(|e| Error::io("rename", to, e)),
        |st, ()| st.rename(from, to),
    )?;
    let (a, b) = (parent_of(from)?, parent_of(to)?);
    sync_dir(b)?;
    if a != b {
        sync_dir(a)?;
    }
    Ok(())
}

/// Publishes `bytes` at `path`, replacing what was there, atomically and durably.
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path)?;
    let tmp = write_temp(dir, bytes)?;
    let renamed = sim::with(
        path,
        || std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e)),
        |st, ()| st.rename(&tmp, path),
    );
    if let Err(e) = renamed {
        let _ = remove_if_exists(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Publishes `bytes` at `path`, replacing what was there, atomically but NOT durably: readers
/// see the old or the new content, never a mix, but a power cut may bring back the old content
/// (or an empty file in place of the new one). For hints that are cheap to lose (a cache, the
/// hash of a file an agent last read), where an fsync per write would cost more than it saves.
pub fn write_replace_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path)?;
    let tmp = temp_path(dir);
    sim::with(
        &tmp,
        || {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(NOFOLLOW | CLOEXEC)
                .open(&tmp)
                .map_err(|e| map_open_err("create", &tmp, e))?;
            f.write_all(bytes).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io("write", &tmp, e)
            })
        },
        |st, ()| {
            st.create(&tmp);
            st.write(&tmp, 0, bytes);
        },
    )?;
    let renamed = sim::with(
        path,
        || std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e)),
        |st, ()| st.rename(&tmp, path),
    );
    if let Err(e) = renamed {
        let _ = remove_if_exists(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Publishes `bytes` at `path` only if nothing is there yet, atomically and durably.
///
/// # Errors
/// [`Error::AlreadyExists`] when the name is taken (by anything, including a symbolic link).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path)?;
    let tmp = write_temp(dir, bytes)?;
    let linked = sim::with(
        path,
        || match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("link", path, e)),
        },
        |st, linked| {
            if *linked {
                st.link(&tmp, path);
            }
        },
    );
    remove_if_exists(&tmp)?;
    match linked? {
        true => sync_dir(dir),
        false => Err(Error::AlreadyExists {
            path: path.to_path_buf(),
        }),
    }
}

/// Serialises `value` as pretty JSON (plus a newline) and publishes it with [`write_replace`].
pub fn write_json_replace<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_replace(path, &to_json_bytes(path, value)?)
}

/// Serialises `value` as pretty JSON (plus a newline) and publishes it with [`write_new`].
pub fn write_json_new<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_new(path, &to_json_bytes(path, value)?)
}

fn to_json_bytes<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(value).map_err(|source| Error::Serialize {
        what: path.display().to_string(),
        source,
    })?;
    v.push(b'\n');
    Ok(v)
}

/// Reads all of `path`, refusing files over `limit` bytes and symbolic links.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let f = open_read(path)?;
    let size = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    if size > limit {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", path, e))?;
    if buf.len() as u64 > limit {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// Reads and parses a JSON file with [`read_bounded`]; a parse failure is [`Error::Corrupt`].
pub fn read_json<T: DeserializeOwned>(path: &Path, limit: u64) -> Result<T> {
    let bytes = read_bounded(path, limit)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Removes `path`; a missing file is not an error. Returns whether something was removed.
/// The removal is not made durable: call [`sync_dir`] when it must survive a power cut.
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    sim::with(
        path,
        || match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", path, e)),
        },
        |st, removed| {
            if *removed {
                st.unlink(path);
            }
        },
    )
}

/// Removes the empty directory `path`; a missing one is not an error. Not made durable.
pub fn remove_empty_dir(path: &Path) -> Result<bool> {
    sim::with(
        path,
        || match std::fs::remove_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove directory", path, e)),
        },
        |st, removed| {
            if *removed {
                st.rmdir(path);
            }
        },
    )
}

/// Removes temporary files in `dir` older than `age`, left behind by writers that were killed
/// between creating and publishing them. Returns how many were removed.
pub fn sweep_temp_files(dir: &Path, age: std::time::Duration) -> Result<usize> {
    let mut removed = 0;
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    let now = std::time::SystemTime::now();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_temp_name) {
            continue;
        }
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d >= age);
        if old && remove_if_exists(&entry.path())? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Checks that no existing component of `rel` below `base` is a symbolic link, and returns
/// `base.join(rel)`. `rel` must be relative and free of `..` (validated names always are).
pub fn checked_join(base: &Path, rel: &Path) -> Result<PathBuf> {
    if !crate::name::stays_inside(rel) {
        return Err(Error::OutsideWorkspace {
            path: rel.to_path_buf(),
            workspace: base.to_path_buf(),
        });
    }
    let mut p = base.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Err(Error::Symlink { path: p }),
            Ok(_) => {}
            Err(_) => {
                // Nothing further exists, so nothing further can be a link.
                return Ok(base.join(rel));
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_publishes_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_replace(&p, b"one").unwrap();
        write_replace(&p, b"two").unwrap();
        assert_eq!(read_bounded(&p, 10).unwrap(), b"two");
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn create_only_if_absent_refuses_a_taken_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        write_new(&p, b"first").unwrap();
        let err = write_new(&p, b"second").unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("x"));
        assert_eq!(read_bounded(&p, 10).unwrap(), b"first");
    }

    #[test]
    fn bounded_reads_refuse_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        write_replace(&p, &[b'x'; 100]).unwrap();
        let err = read_bounded(&p, 99).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    size: 100,
                    limit: 99,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("big"));
    }

    #[test]
    fn symbolic_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "s").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let err = read_bounded(&link, 10).unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{err}");
        // Publishing onto a link's name does not write through it.
        assert!(matches!(
            write_new(&link, b"x"),
            Err(Error::AlreadyExists { .. })
        ));
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "s");
        // A directory link in the middle of a path is refused too.
        let dlink = dir.path().join("dlink");
        std::os::unix::fs::symlink(outside.path(), &dlink).unwrap();
        let err = checked_join(dir.path(), Path::new("dlink/secret")).unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{err}");
    }

    #[test]
    fn stray_temp_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".tmp.1.2.3"), "partial").unwrap();
        std::fs::write(dir.path().join("keep"), "k").unwrap();
        assert_eq!(
            sweep_temp_files(dir.path(), std::time::Duration::ZERO).unwrap(),
            1
        );
        assert!(dir.path().join("keep").exists());
    }
}
