//! Liveness files (`live/<name>`) and wake-up files (`wake/<ticket>`).
//!
//! A process that takes or waits for a lock holds an exclusive kernel lock on its own
//! liveness file for its lifetime (close-on-exec: children do not inherit it). A `lock run`
//! lock gets a liveness file of its own (also the liveness of its wait), which the command
//! inherits, so the lock lives as long as the command even if `maos` is killed. A prober
//! that can take a shared kernel lock on a liveness file knows that every process holding its
//! descriptor is gone: no pid, no `/proc`, no pid-reuse trap. These are kernel locks used as
//! liveness, not guards: they are held for a process's (or a command's) whole life, never
//! waited for.
//!
//! **Spare files.** Creating and deleting a file per lock costs an inode allocation, which on
//! ext4 under create/unlink churn was about a third of a contended `lock run`'s CPU. So a
//! liveness file that is done with is renamed to a spare name, `live/.spare.<k>` (`k` below
//! [`SPARES`]), and a new liveness file is a spare adopted by renaming it to a fresh name,
//! `O_CREAT|O_EXCL` only when no spare is free. A spare is adopted only under the table's
//! exclusive guard and only once its exclusive kernel lock is taken (nobody holds its
//! descriptor any more: a command's children may), before it gets its new name; the old
//! name disappears with the rename, so a record that names it probes as gone, as it would
//! after a delete: a name never comes back to life.

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

/// Spare liveness files kept for reuse: `live/.spare.0` .. `live/.spare.<SPARES - 1>`.
/// Adopting looks at them in order, retiring from a random one on (a failed look is an
/// `open` or a `rename` refused, about 2 us).
pub(crate) const SPARES: u32 = 16;
/// Prefix of a spare's name (hidden: no record can name it, [`valid_name`]).
pub(crate) const SPARE_PREFIX: &str = ".spare.";

/// Whether `name` is a spare liveness file's name.
pub(crate) fn is_spare(name: &str) -> bool {
    name.starts_with(SPARE_PREFIX)
}

fn spare_path(dir: &Path, k: u32) -> PathBuf {
    dir.join(LIVE_DIR).join(format!("{SPARE_PREFIX}{k}"))
}

/// Where a retirement starts looking for a free spare name (spreads processes over them).
fn spare_start() -> u32 {
    let n = LIVE_COUNTER.load(Ordering::Relaxed);
    let mix = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n;
    (mix % u64::from(SPARES)) as u32
}

/// Renames `from` to `to` unless `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(std::io::Error::from)
}

/// Gives the file at `path` (its holders gone, or about to close it) a free spare name;
/// deletes it when every spare name is taken (or the rename fails).
fn to_spare(dir: &Path, path: &Path) {
    let start = spare_start();
    for i in 0..SPARES {
        let k = (start + i) % SPARES;
        match rename_noreplace(path, &spare_path(dir, k)) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => break, // RENAME_NOREPLACE unsupported here: just delete
        }
    }
    let _ = fsx::remove_if_exists(path);
}

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
    /// A new liveness file `live/<pid>.<start_time>.<ms>.<n>`, locked: a spare adopted
    /// (locked, then renamed), else a file created and locked. Call under the table's
    /// exclusive guard: a prober never sees the file before it is locked, and never sees a
    /// spare locked under the name of a dead record.
    pub(crate) fn create(dir: &Path, start_time: u64) -> Result<Self> {
        let n = LIVE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}.{start_time}.{}.{n}", std::process::id(), now_ms());
        let path = dir.join(LIVE_DIR).join(&name);
        if let Some(file) = adopt_spare(dir, &path) {
            return Ok(Self { name, file, path });
        }
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

    /// Retires the file: gives it a spare name (or deletes it) and closes it. Its record
    /// must be gone already; a child that inherited the descriptor keeps the spare locked
    /// (not adoptable) until it exits.
    pub(crate) fn retire(self) {
        if let Some(dir) = self.path.parent().and_then(Path::parent) {
            to_spare(dir, &self.path);
        }
    }
}

/// Adopts a spare: opens it, takes its exclusive kernel lock without waiting (it fails while
/// anyone still holds the descriptor) and renames it to `path`.
fn adopt_spare(dir: &Path, path: &Path) -> Option<File> {
    for k in 0..SPARES {
        let spare = spare_path(dir, k);
        let Ok(f) = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(NOFOLLOW_CLOEXEC | rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&spare)
        else {
            continue;
        };
        if !f.metadata().is_ok_and(|m| m.is_file()) || f.try_lock().is_err() {
            continue;
        }
        // (O_NONBLOCK only kept a FIFO from blocking the open: no effect on a file.)
        if rename_noreplace(&spare, path).is_ok() {
            return Some(f);
        }
    }
    None
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
                to_spare(dir, &path);
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

/// Turns liveness files nobody holds (processes gone) into spares (or removes them), and
/// removes stale temporary files. Under the exclusive guard.
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

/// Makes `wake/<ticket>` a second name of the waiter's liveness file `live/<live>`: no new
/// inode (a `link`, not a create), and cheap enough to do under the guard, so the file
/// exists before anyone can signal it. False when that failed ([`create_wake`] then).
pub(crate) fn link_wake(dir: &Path, ticket: u64, live: &str) -> bool {
    if !valid_name(live) {
        return false;
    }
    let path = wake_path(dir, ticket);
    match std::fs::hard_link(dir.join(LIVE_DIR).join(live), &path) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = &e as &dyn std::error::Error, "cannot link the wake-up file");
            false
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn setup() -> tempfile::TempDir {
        let d = crate::store::test_dir();
        std::fs::create_dir(d.path().join(LIVE_DIR)).unwrap();
        std::fs::create_dir(d.path().join(WAKE_DIR)).unwrap();
        d
    }

    fn spares(dir: &Path) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(dir.join(LIVE_DIR))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.to_owned();
                is_spare(&n).then(|| (n, e.metadata().unwrap().ino()))
            })
            .collect();
        v.sort();
        v
    }

    /// A retired liveness file becomes a spare; the next liveness file is that inode under
    /// a new name, and the old name never probes alive again (a record naming it is dead).
    #[test]
    fn a_retired_liveness_file_is_adopted_under_a_new_name_and_its_old_name_stays_gone() {
        let d = setup();
        let a = LiveFile::create(d.path(), 1).unwrap();
        let old = a.name.clone();
        assert_eq!(probe(d.path(), &old, false), Probe::Alive);
        a.retire();
        let s = spares(d.path());
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(probe(d.path(), &old, false), Probe::Gone);
        let b = LiveFile::create(d.path(), 1).unwrap();
        assert_ne!(b.name, old);
        assert_eq!(
            b.file.metadata().unwrap().ino(),
            s[0].1,
            "the spare's inode was reused"
        );
        assert!(spares(d.path()).is_empty());
        assert_eq!(probe(d.path(), &b.name, false), Probe::Alive);
        assert_eq!(probe(d.path(), &old, false), Probe::Gone);
        // A dead file found by a probe under the exclusive guard becomes a spare too.
        let name_b = b.name.clone();
        drop(b);
        assert_eq!(probe(d.path(), &name_b, true), Probe::Gone);
        assert_eq!(spares(d.path()).len(), 1);
        assert!(!d.path().join(LIVE_DIR).join(&name_b).exists());
    }

    /// A spare whose descriptor a child process still holds (a `lock run` command's
    /// background child) is not adopted until that process is gone (SIGKILL here).
    #[test]
    fn a_spare_another_process_still_holds_is_not_adopted() {
        let d = setup();
        let a = LiveFile::create(d.path(), 1).unwrap();
        // The child holds the same open file description (as an inherited descriptor).
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .stdin(a.file.try_clone().unwrap())
            .spawn()
            .unwrap();
        a.retire();
        let held = spares(d.path());
        assert_eq!(held.len(), 1);
        let b = LiveFile::create(d.path(), 1).unwrap();
        assert_ne!(
            b.file.metadata().unwrap().ino(),
            held[0].1,
            "adopted a held spare"
        );
        assert_eq!(spares(d.path()), held, "the held spare stays");
        child.kill().unwrap();
        child.wait().unwrap();
        let c = LiveFile::create(d.path(), 1).unwrap();
        assert_eq!(c.file.metadata().unwrap().ino(), held[0].1);
        assert!(spares(d.path()).is_empty());
    }

    /// With every spare name taken, a retired file is deleted, not kept.
    #[test]
    fn spares_are_bounded() {
        let d = setup();
        let files: Vec<LiveFile> = (0..SPARES + 8)
            .map(|_| LiveFile::create(d.path(), 1).unwrap())
            .collect();
        for f in files {
            f.retire();
        }
        let s = spares(d.path()).len();
        assert!(s <= SPARES as usize, "{s}");
        let others = std::fs::read_dir(d.path().join(LIVE_DIR)).unwrap().count() - s;
        assert_eq!(others, 0, "retired files left under their names");
    }

    /// The wake-up file made by a link is the liveness file itself (no new inode) and a
    /// signal through it is a close after writing on that inode.
    #[test]
    fn a_linked_wake_file_is_the_liveness_file() {
        let d = setup();
        let a = LiveFile::create(d.path(), 1).unwrap();
        assert!(link_wake(d.path(), 7, &a.name));
        let w = std::fs::metadata(wake_path(d.path(), 7)).unwrap();
        assert_eq!(w.ino(), a.file.metadata().unwrap().ino());
        assert!(!link_wake(d.path(), 8, "../escape"));
        remove_wake(d.path(), 7);
        assert_eq!(probe(d.path(), &a.name, false), Probe::Alive);
    }
}
