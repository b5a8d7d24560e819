//! The one kernel-lock guard every store uses: shared or exclusive, with a timeout, unlocked on
//! drop (and so on unwind), and a timeout that names the process holding the lock and says
//! whether it looks stopped.
//!
//! `flock(2)` has no timeout, so a contended lock is first retried a few times with `LOCK_NB`
//! (about 0.2 ms: every guard maos takes is held for microseconds), then waited for in the
//! kernel by a helper thread until the deadline (by polling with a backoff of 50 us doubling to
//! 2 ms only when no thread can be had). A holder that is suspended (SIGSTOP,
//! Ctrl-Z, a laptop lid) or hung keeps the lock, and then the waiter gives up at its deadline
//! with an error that names it (`/proc/locks` lists the holders of the file's inode,
//! `/proc/<pid>/stat` says whether each is stopped).

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a guard waits when the operation has no timeout of its own.
pub const DEFAULT_GUARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Quick retries before waiting in the kernel: this many yields, then sleeps up to
/// `QUICK_TRIES` in all.
const QUICK_YIELDS: u32 = 8;
const QUICK_TRIES: u32 = 12;

/// How long a waiter waits before it logs (once) who holds the lock.
const REPORT_AFTER: Duration = Duration::from_secs(1);

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlockMode {
    /// Many holders at once.
    Shared,
    /// One holder.
    Exclusive,
}

/// A file kept open for its kernel lock (`flock`). Open it once and take guards from it.
///
/// ```
/// # fn main() -> maos_core::Result<()> {
/// use std::time::Duration;
/// use maos_core::fsx::LockFile;
/// let dir = tempfile::tempdir().unwrap();
/// let lock = LockFile::open(&dir.path().join("lock"))?;
/// {
///     let _guard = lock.exclusive(Duration::from_secs(1))?;
///     // ... read-modify-write the state this lock protects ...
/// } // unlocked here, also when the block unwinds
/// assert!(lock.try_exclusive()?.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// A held kernel lock; dropping it unlocks.
#[derive(Debug)]
#[must_use = "dropping the guard unlocks the file at once"]
pub struct FlockGuard<'a> {
    lock: &'a LockFile,
    /// The open file description the lock was taken on, when not the lock file's own (a
    /// helper thread waited for it in the kernel).
    held: Option<File>,
}

/// What a helper thread waiting in `flock(2)` hands over.
#[derive(Default)]
struct Handoff {
    /// The waiter gave up.
    abandoned: bool,
    /// The description now holding the lock.
    got: Option<File>,
    failed: Option<std::io::Error>,
}

impl LockFile {
    /// Opens (creating it with mode 0600 if needed) `path`, without following a symbolic link.
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            file: super::open_lock_file(path)?,
            path: path.to_path_buf(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for example to let a child process inherit it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Takes the lock exclusively, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::LockTimeout`] naming the holders when the deadline passes.
    pub fn exclusive(&self, timeout: Duration) -> Result<FlockGuard<'_>> {
        self.lock(FlockMode::Exclusive, timeout)
    }

    /// Takes the lock shared, waiting at most `timeout`.
    pub fn shared(&self, timeout: Duration) -> Result<FlockGuard<'_>> {
        self.lock(FlockMode::Shared, timeout)
    }

    /// Takes the lock exclusively if nobody holds it.
    pub fn try_exclusive(&self) -> Result<Option<FlockGuard<'_>>> {
        self.try_lock(FlockMode::Exclusive)
    }

    /// Takes the lock shared if nobody holds it exclusively.
    pub fn try_shared(&self) -> Result<Option<FlockGuard<'_>>> {
        self.try_lock(FlockMode::Shared)
    }

    /// Takes the lock in `mode`, waiting at most `timeout`.
    ///
    /// The wait is in the kernel: a helper thread blocks in `flock(2)` on a second open file
    /// description of the same file, so the lock is taken the moment it is free (a waiter
    /// polling with a backoff sleeps through free moments, which under contention costs
    /// throughput and makes the waits unfair). At the deadline the waiter gives up; a helper
    /// that gets the lock later releases it at once.
    ///
    /// Every lock maos takes is held for microseconds, so a few quick retries come first
    /// (yielding, then sleeping 10 us doubling to 80 us: about 0.2 ms in all): they usually
    /// get the lock soon after it is free without the helper thread and the second open,
    /// which cost a handoff 100-500 us; past them a hundred waiters sleep in the kernel
    /// instead of taking the CPU their holder needs.
    pub fn lock(&self, mode: FlockMode, timeout: Duration) -> Result<FlockGuard<'_>> {
        let start = Instant::now();
        let deadline = crate::deadline_after(start, timeout);
        let mut pause = Duration::from_micros(10);
        for i in 0..QUICK_TRIES {
            if let Some(g) = self.try_lock(mode)? {
                return Ok(g);
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out(start));
            }
            if i < QUICK_YIELDS {
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause);
                pause *= 2;
            }
        }
        if let Some(g) = self.try_lock(mode)? {
            return Ok(g);
        }
        if Instant::now() >= deadline {
            return Err(self.timed_out(start));
        }
        match self.second_description() {
            Some(second) => self.lock_in_kernel(mode, second, start, deadline),
            None => self.lock_polling(mode, start, deadline),
        }
    }

    /// Another open file description of the same inode (`None` when the path now names
    /// another file, or cannot be opened).
    fn second_description(&self) -> Option<File> {
        use std::os::unix::fs::MetadataExt;
        let second = super::open_lock_file(&self.path).ok()?;
        let (a, b) = (self.file.metadata().ok()?, second.metadata().ok()?);
        (a.dev() == b.dev() && a.ino() == b.ino()).then_some(second)
    }

    fn timed_out(&self, start: Instant) -> Error {
        Error::LockTimeout {
            path: self.path.clone(),
            waited: start.elapsed(),
            holders: holders_of(&self.file),
        }
    }

    fn report_wait(&self) {
        tracing::warn!(
            path = %self.path.display(),
            "waiting for a kernel lock{}",
            describe_holders(&holders_of(&self.file))
        );
    }

    fn lock_in_kernel(
        &self,
        mode: FlockMode,
        second: File,
        start: Instant,
        deadline: Instant,
    ) -> Result<FlockGuard<'_>> {
        let shared = Arc::new((Mutex::new(Handoff::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let helper = std::thread::Builder::new()
            .name("maos-flock".into())
            .spawn(move || {
                let r = match mode {
                    FlockMode::Exclusive => second.lock(),
                    FlockMode::Shared => second.lock_shared(),
                };
                let (m, cv) = &*theirs;
                let mut h = m.lock().unwrap_or_else(PoisonError::into_inner);
                match r {
                    // The waiter gave up: release at once (closing `second` does it too).
                    Ok(()) if h.abandoned => drop(second.unlock()),
                    Ok(()) => h.got = Some(second),
                    Err(e) => h.failed = Some(e),
                }
                cv.notify_all();
            });
        if helper.is_err() {
            return self.lock_polling(mode, start, deadline);
        }
        let (m, cv) = &*shared;
        let mut h = m.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reported = false;
        loop {
            if let Some(f) = h.got.take() {
                return Ok(FlockGuard {
                    lock: self,
                    held: Some(f),
                });
            }
            if let Some(e) = h.failed.take() {
                return Err(Error::io("flock", &self.path, e));
            }
            let now = Instant::now();
            if now >= deadline {
                h.abandoned = true;
                drop(h);
                return Err(self.timed_out(start));
            }
            if !reported && now - start >= REPORT_AFTER {
                reported = true;
                self.report_wait();
            }
            let until = if reported {
                deadline
            } else {
                (start + REPORT_AFTER).min(deadline)
            };
            h = cv
                .wait_timeout(h, until.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waiting by polling (when no helper can be had): retries with a backoff of 50 us
    /// doubling to 2 ms.
    fn lock_polling(
        &self,
        mode: FlockMode,
        start: Instant,
        deadline: Instant,
    ) -> Result<FlockGuard<'_>> {
        let mut pause = Duration::from_micros(50);
        let mut reported = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timed_out(start));
            }
            if !reported && now - start >= REPORT_AFTER {
                reported = true;
                self.report_wait();
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(2));
            if let Some(g) = self.try_lock(mode)? {
                return Ok(g);
            }
        }
    }

    fn try_lock(&self, mode: FlockMode) -> Result<Option<FlockGuard<'_>>> {
        let r = match mode {
            FlockMode::Exclusive => self.file.try_lock(),
            FlockMode::Shared => self.file.try_lock_shared(),
        };
        match r {
            Ok(()) => Ok(Some(FlockGuard {
                lock: self,
                held: None,
            })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Error::io("flock", &self.path, e)),
        }
    }
}

impl FlockGuard<'_> {
    /// The lock file this guard holds.
    pub fn lock_file(&self) -> &LockFile {
        self.lock
    }
}

impl Drop for FlockGuard<'_> {
    fn drop(&mut self) {
        let file = self.held.as_ref().unwrap_or(&self.lock.file);
        if let Err(e) = file.unlock() {
            // Closing the descriptor would release it; this one stays open, so say so.
            tracing::error!(path = %self.lock.path.display(), error = %e, "cannot unlock");
        }
    }
}

/// A process holding a kernel lock, as `/proc/locks` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Its pid (the process that took the lock; children may hold it by inheritance).
    pub pid: u32,
    /// The lock mode.
    pub mode: FlockMode,
    /// The process's state letter from `/proc/<pid>/stat` (`T` stopped, `t` traced, `D`
    /// uninterruptible, ...), if it could be read.
    pub state: Option<char>,
    /// The process's command name, if it could be read.
    pub command: Option<String>,
}

impl LockHolder {
    /// True when the holder is suspended (SIGSTOP, Ctrl-Z) or stopped by a tracer.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, Some('T' | 't'))
    }
}

/// Renders holders for an error message: `" (held by pid 12 maos, stopped: ...)"`.
pub(crate) fn describe_holders(holders: &[LockHolder]) -> String {
    if holders.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = holders
        .iter()
        .map(|h| {
            let mut s = format!("pid {}", h.pid);
            if let Some(c) = &h.command {
                s.push_str(&format!(" ({c})"));
            }
            if h.mode == FlockMode::Shared {
                s.push_str(" shared");
            }
            if h.is_stopped() {
                s.push_str(&format!(
                    ", which is stopped: resume it (`kill -CONT {}`) or end it",
                    h.pid
                ));
            }
            s
        })
        .collect();
    format!(" held by {}", parts.join("; "))
}

/// The processes holding a `flock` on `file`'s inode, from `/proc/locks`. Best effort: empty
/// when the kernel does not say.
pub fn holders_of(file: &File) -> Vec<LockHolder> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else {
        return Vec::new();
    };
    let Ok(text) = read_proc("/proc/locks") else {
        return Vec::new();
    };
    let dev = meta.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let mut out: Vec<LockHolder> = parse_proc_locks(&text, major, minor, meta.ino())
        .into_iter()
        .map(|(pid, mode)| {
            let stat = read_proc(&format!("/proc/{pid}/stat")).ok();
            let (command, state) = stat.as_deref().map(parse_stat).unwrap_or((None, None));
            LockHolder {
                pid,
                mode,
                state,
                command,
            }
        })
        .collect();
    out.sort_by_key(|h| h.pid);
    out.dedup_by_key(|h| h.pid);
    out
}

/// Reads a small `/proc` file (bounded: `/proc/locks` can be long on a busy host).
fn read_proc(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = String::new();
    File::open(path)?.take(4 << 20).read_to_string(&mut s)?;
    Ok(s)
}

/// `(pid, mode)` of the granted FLOCK entries for inode `ino` on device `major:minor`. Lines
/// look like `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`; blocked requests start with
/// `1: -> FLOCK` and are skipped.
fn parse_proc_locks(text: &str, major: u32, minor: u32, ino: u64) -> Vec<(u32, FlockMode)> {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().skip(1);
            if f.next()? != "FLOCK" {
                return None;
            }
            let _advisory = f.next()?;
            let mode = match f.next()? {
                "WRITE" => FlockMode::Exclusive,
                "READ" => FlockMode::Shared,
                _ => return None,
            };
            let pid = f.next()?.parse().ok()?;
            (f.next()? == want).then_some((pid, mode))
        })
        .collect()
}

/// `(command, state)` from `/proc/<pid>/stat`; the command is in parentheses and may contain
/// anything, so the state is the first field after the last `)`.
fn parse_stat(stat: &str) -> (Option<String>, Option<char>) {
    let open = stat.find('(');
    let close = stat.rfind(')');
    let command = match (open, close) {
        (Some(o), Some(c)) if o < c => Some(stat[o + 1..c].to_owned()),
        _ => None,
    };
    let state = close.and_then(|c| stat[c + 1..].split_whitespace().next()?.chars().next());
    (command, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_are_parsed_by_inode() {
        let text = "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 99 08:01:5678 0 EOF\n\
                    2: FLOCK  ADVISORY  READ 77 08:01:5678 0 EOF\n\
                    3: POSIX  ADVISORY  WRITE 55 08:01:5678 0 EOF\n\
                    4: FLOCK  ADVISORY  WRITE 66 08:01:9999 0 EOF\n";
        assert_eq!(
            parse_proc_locks(text, 8, 1, 5678),
            vec![(1234, FlockMode::Exclusive), (77, FlockMode::Shared)]
        );
    }

    #[test]
    fn stat_state_survives_odd_command_names() {
        assert_eq!(
            parse_stat("42 (a) b (c) T 1 42"),
            (Some("a) b (c".into()), Some('T'))
        );
    }

    #[test]
    fn a_held_lock_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = LockFile::open(&path).unwrap();
        let b = LockFile::open(&path).unwrap();
        let held = a.exclusive(Duration::from_secs(1)).unwrap();
        assert!(b.try_exclusive().unwrap().is_none());
        assert!(b.try_shared().unwrap().is_none());
        let err = b.exclusive(Duration::from_millis(20)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::LockTimeout { .. }), "{text}");
        assert!(text.contains("lock"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(held);
        let _g = b.exclusive(Duration::from_millis(20)).unwrap();
    }

    /// A waiter gets the lock when it is released (it waits in the kernel), and a waiter that
    /// gave up never keeps it.
    #[test]
    fn waiters_get_a_released_lock_and_abandoned_waits_leave_it_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = LockFile::open(&path).unwrap();
        let held = a.exclusive(Duration::ZERO).unwrap();
        let b = LockFile::open(&path).unwrap();
        // Gives up while `a` holds it.
        assert!(b.exclusive(Duration::from_millis(20)).is_err());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let c = LockFile::open(&path).unwrap();
                let _g = c.exclusive(Duration::from_secs(60)).unwrap();
            });
            // Release once the waiter is queued in the kernel (a blocked FLOCK request).
            let (dev, ino) = {
                use std::os::unix::fs::MetadataExt;
                let m = a.file().metadata().unwrap();
                (m.dev(), m.ino())
            };
            let want = format!(
                "{:02x}:{:02x}:{ino}",
                rustix::fs::major(dev),
                rustix::fs::minor(dev)
            );
            while !read_proc("/proc/locks")
                .unwrap()
                .lines()
                .any(|l| l.contains("->") && l.contains(&want))
            {
                std::thread::yield_now();
            }
            drop(held);
            waiter.join().unwrap();
        });
        // Nobody keeps it: not the abandoned helper, not the finished waiter.
        let d = LockFile::open(&path).unwrap();
        let _g = d.exclusive(Duration::from_secs(60)).unwrap();
        assert!(b.try_exclusive().unwrap().is_none());
    }

    #[test]
    fn shared_guards_coexist_and_exclude_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let (a, b, c) = (
            LockFile::open(&path).unwrap(),
            LockFile::open(&path).unwrap(),
            LockFile::open(&path).unwrap(),
        );
        let _ga = a.shared(Duration::ZERO).unwrap();
        let _gb = b.shared(Duration::ZERO).unwrap();
        assert!(c.try_exclusive().unwrap().is_none());
    }

    #[test]
    fn a_panic_under_the_guard_unlocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = LockFile::open(&path).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _g = a.exclusive(Duration::ZERO).unwrap();
            panic!("inside the guarded section");
        }));
        assert!(r.is_err());
        let b = LockFile::open(&path).unwrap();
        assert!(b.try_exclusive().unwrap().is_some());
    }

    #[test]
    fn a_stopped_holder_is_named_as_stopped() {
        // flock(1) takes the lock and runs the command, which stops flock(1) itself: the
        // holder is then a real, suspended process.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        std::fs::write(&path, "").unwrap();
        let mut child = std::process::Command::new("flock")
            .arg(&path)
            .args(["-c", "kill -STOP $PPID"])
            .spawn()
            .expect("flock(1) from util-linux");
        let lock = LockFile::open(&path).unwrap();
        // Wait (bounded) until the child holds the lock and is stopped.
        let deadline = Instant::now() + Duration::from_secs(10);
        let holder = loop {
            let hs = holders_of(lock.file());
            if let Some(h) = hs.into_iter().find(|h| h.is_stopped()) {
                break h;
            }
            assert!(Instant::now() < deadline, "the child never stopped");
            std::thread::yield_now();
        };
        let err = lock.exclusive(Duration::from_millis(10)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("stopped"), "{text}");
        assert!(
            text.contains(&format!("kill -CONT {}", holder.pid)),
            "{text}"
        );
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        child.wait().unwrap();
    }
}
