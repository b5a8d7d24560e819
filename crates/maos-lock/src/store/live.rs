//! Liveness files (`live/<name>`) and wake-up files (`wake/<ticket>`).
//!
//! A process that takes or waits for a lock holds an exclusive kernel lock on its own
//! liveness file for its lifetime (close-on-exec: children do not inherit it). A `lock run`
//! lock gets a liveness file of its own, which the command inherits, so the lock lives as
//! long as the command even if `maos` is killed. A prober that can take a shared kernel lock
//! on a liveness file knows that every process holding its descriptor is gone: no pid, no
//! `/proc`, no pid-reuse trap. These are kernel locks used as liveness, not guards: they are
//! held for a process's (or a command's) whole life, never waited for.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use maos_core::{fsx, now_ms};

use crate::{Error, Result};

/// Directory of liveness files.
pub(crate) const LIVE_DIR: &str = "live";
/// Directory of waiters' wake-up files.
pub(crate) const WAKE_DIR: &str = "wake";

static LIVE_COUNTER: AtomicU64 = AtomicU64::new(0);

const NOFOLLOW_CLOEXEC: i32 =
    (rustix::fs::OFlags::NOFOLLOW.bits() | rustix::fs::OFlags::CLOEXEC.bits()) as i32;

/// A liveness file created and locked by this process.
#[derive(Debug)]
pub(crate) struct LiveFile {
    pub(crate) name: String,
    pub(crate) file: File,
    path: PathBuf,
}

impl LiveFile {
    /// Creates `live/<pid>.<start_time>.<ms>.<n>` and takes its kernel lock. Call under the
    /// table guard: a prober never sees the file before it is locked.
    pub(crate) fn create(dir: &Path, start_time: u64) -> Result<Self> {
        let n = LIVE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}.{start_time}.{}.{n}", std::process::id(), now_ms());
        let path = dir.join(LIVE_DIR).join(&name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(NOFOLLOW_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        file.try_lock().map_err(|e| match e {
            TryLockError::WouldBlock => Error::io(
                "lock",
                &path,
                std::io::Error::other("a liveness file just created is locked by someone else"),
            ),
            TryLockError::Error(e) => Error::io("lock", &path, e),
        })?;
        Ok(Self { name, file, path })
    }

    /// Lets child processes spawned from now on inherit the descriptor (clears
    /// close-on-exec).
    pub(crate) fn inherit(&self) -> Result<()> {
        rustix::io::fcntl_setfd(&self.file, rustix::io::FdFlags::empty())
            .map_err(|e| Error::io("fcntl", &self.path, e.into()))
    }

    /// Removes the file (its lock goes with the descriptor when this is dropped).
    pub(crate) fn remove(&self) {
        let _ = fsx::remove_if_exists(&self.path);
    }
}

/// Whether `name` can be a liveness file's name (one plain component, not hidden).
pub(crate) fn valid_name(name: &str) -> bool {
    !(name.is_empty() || name.contains('/') || name.starts_with('.'))
}

/// The verdict of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Alive,
    Gone,
}

/// Probes `live/<name>`: gone when the file is missing or nobody holds its lock. With
/// `remove`, a gone file is deleted (only under the exclusive guard).
pub(crate) fn probe(dir: &Path, name: &str, remove: bool) -> Probe {
    if !valid_name(name) {
        return Probe::Gone;
    }
    let path = dir.join(LIVE_DIR).join(name);
    let f = match fsx::open_read(&path) {
        Ok(f) => f,
        Err(e) if e.is_not_found() => return Probe::Gone,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = &e as &dyn std::error::Error, "cannot probe liveness file; assuming alive");
            return Probe::Alive;
        }
    };
    match f.try_lock_shared() {
        Ok(()) => {
            tracing::debug!(live = name, "holder process is gone");
            if remove {
                let _ = fsx::remove_if_exists(&path);
            }
            Probe::Gone
        }
        Err(TryLockError::WouldBlock) => Probe::Alive,
        Err(TryLockError::Error(e)) => {
            tracing::warn!(path = %path.display(), error = &e as &dyn std::error::Error, "cannot probe liveness file; assuming alive");
            Probe::Alive
        }
    }
}

/// Removes liveness files nobody holds (processes gone) and stale temporary files.
pub(crate) fn sweep(dir: &Path) {
    let live = dir.join(LIVE_DIR);
    if let Ok(rd) = std::fs::read_dir(&live) {
        for e in rd.flatten() {
            if let Some(name) = e.file_name().to_str() {
                let _ = probe(dir, name, true);
            }
        }
    }
    let _ = fsx::sweep_temp_files(dir, std::time::Duration::from_secs(60));
}

pub(crate) fn wake_path(dir: &Path, ticket: u64) -> PathBuf {
    dir.join(WAKE_DIR).join(ticket.to_string())
}

/// Creates the wake-up file of a new waiter.
pub(crate) fn create_wake(dir: &Path, ticket: u64) {
    let path = wake_path(dir, ticket);
    if let Err(e) = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(NOFOLLOW_CLOEXEC)
        .open(&path)
    {
        tracing::warn!(path = %path.display(), error = &e as &dyn std::error::Error, "cannot create wake-up file; relying on the fallback timer");
    }
}

/// Signals the waiter with `ticket`: opening its file for writing and closing it is the
/// event (inotify `IN_CLOSE_WRITE`); a missing file is fine.
pub(crate) fn signal(dir: &Path, ticket: u64) {
    let _ = OpenOptions::new()
        .write(true)
        .custom_flags(NOFOLLOW_CLOEXEC | rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(wake_path(dir, ticket));
}

/// Removes the wake-up file of a waiter that left the queue.
pub(crate) fn remove_wake(dir: &Path, ticket: u64) {
    let _ = fsx::remove_if_exists(&wake_path(dir, ticket));
}
