//! Power-cut simulation: records every file mutation made through [`fsx`](super) under a
//! directory, and rebuilds the directory as a power cut at any point could have left it.
//!
//! The page cache makes a killed process's writes durable, so SIGKILL tests never lose an
//! unsynced write; only a power cut does. A [`Recording`] logs, in order, every create, write,
//! truncate, rename, link, unlink, mkdir and fsync that `fsx` performs below its root (the
//! stores route every mutation through `fsx`, so the log is complete). [`Recording::image`]
//! then builds the state after a cut (ALICE/CrashMonkey style):
//! - the cut happens after the first `at` operations; nothing later happened;
//! - an operation survives if a later `fsync` made it durable: writes and truncations of a file
//!   by an `fsync` of that file, names (create, link, rename, unlink, mkdir) by an `fsync` of
//!   their directory;
//! - of the operations no `fsync` covered, an arbitrary prefix (in order) also survives, and the
//!   last write of that prefix may be torn (only its first bytes reached the disk).
//!
//! This is the POSIX model, stricter than ext4 (which often persists more): a store correct
//! under it is correct on any file system that keeps `fsync`'s promise. Only operations of the
//! recording process are seen; run the workload in-process (threads are fine).
//!
//! ```
//! # fn main() -> maos_core::Result<()> {
//! use maos_core::fsx::{self, sim::{Cut, Recording}};
//! let dir = tempfile::tempdir().unwrap();
//! let rec = Recording::start(dir.path())?;
//! fsx::write_replace(&dir.path().join("a"), b"durable")?; // fsyncs file and directory
//! let mut f = fsx::DataFile::open_append(&dir.path().join("log"))?;
//! f.append(b"not synced")?;
//! let after = tempfile::tempdir().unwrap();
//! // Power fails right now and nothing unsynced survives:
//! rec.image(&Cut::durable_only(rec.len()), after.path())?;
//! assert_eq!(std::fs::read(after.path().join("a")).unwrap(), b"durable");
//! // fsx made the new file's name durable, but its unsynced content is gone:
//! assert_eq!(std::fs::read(after.path().join("log")).unwrap(), b"");
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Error, Result};

/// An inode of the recorded file system.
type Ino = u64;

/// One recorded mutation.
#[derive(Debug, Clone)]
enum Op {
    Create {
        path: PathBuf,
        ino: Ino,
    },
    Link {
        path: PathBuf,
        ino: Ino,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        ino: Ino,
    },
    Unlink {
        path: PathBuf,
    },
    Mkdir {
        path: PathBuf,
    },
    Rmdir {
        path: PathBuf,
    },
    Write {
        ino: Ino,
        offset: u64,
        data: Vec<u8>,
    },
    SetLen {
        ino: Ino,
        len: u64,
    },
    Sync {
        ino: Ino,
    },
    SyncDir {
        path: PathBuf,
    },
}

#[derive(Debug, Default)]
struct State {
    /// The namespace as it is now (files).
    names: HashMap<PathBuf, Ino>,
    next_ino: Ino,
    /// Files and directories when recording started.
    initial_files: Vec<(PathBuf, Ino, Vec<u8>)>,
    initial_dirs: Vec<PathBuf>,
    ops: Vec<Op>,
}

impl State {
    fn new_ino(&mut self) -> Ino {
        self.next_ino += 1;
        self.next_ino
    }

    /// The inode a name refers to now, registering an unknown existing file as a new inode
    /// (a file created by something that did not go through `fsx`: its content is not known,
    /// so writes to it are recorded from here on against an empty initial content).
    fn ino_of(&mut self, path: &Path) -> Ino {
        if let Some(&ino) = self.names.get(path) {
            return ino;
        }
        let ino = self.new_ino();
        self.names.insert(path.to_path_buf(), ino);
        ino
    }
}

#[derive(Debug)]
struct Rec {
    root: PathBuf,
    state: Mutex<State>,
}

impl Rec {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while recording leaves a consistent log (ops are pushed after the syscall).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static RECORDINGS: Mutex<Vec<Arc<Rec>>> = Mutex::new(Vec::new());

/// The recording whose root contains `path`, if any (one relaxed load when none is active).
fn recording_for(path: &Path) -> Option<Arc<Rec>> {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let all = RECORDINGS.lock().unwrap_or_else(|p| p.into_inner());
    all.iter().find(|r| path.starts_with(&r.root)).cloned()
}

/// Runs `op` (the real system call) and, when `path` is being recorded, records what it did
/// while holding the recording's lock, so the log has the real order of this process's
/// operations. `record` gets the state and `op`'s result and returns the ops to log.
pub(super) fn with<T>(
    path: &Path,
    op: impl FnOnce() -> Result<T>,
    record: impl FnOnce(&mut StateHandle<'_>, &T),
) -> Result<T> {
    let Some(rec) = recording_for(path) else {
        return op();
    };
    let mut st = rec.lock();
    let out = op()?;
    record(&mut StateHandle { st: &mut st }, &out);
    Ok(out)
}

/// What the recording hooks in `fsx` may do with the recorded state.
pub(super) struct StateHandle<'a> {
    st: &'a mut State,
}

impl StateHandle<'_> {
    pub(super) fn create(&mut self, path: &Path) {
        let ino = self.st.new_ino();
        self.st.names.insert(path.to_path_buf(), ino);
        self.st.ops.push(Op::Create {
            path: path.to_path_buf(),
            ino,
        });
    }

    pub(super) fn write(&mut self, path: &Path, offset: u64, data: &[u8]) {
        let ino = self.st.ino_of(path);
        self.st.ops.push(Op::Write {
            ino,
            offset,
            data: data.to_vec(),
        });
    }

    pub(super) fn set_len(&mut self, path: &Path, len: u64) {
        let ino = self.st.ino_of(path);
        self.st.ops.push(Op::SetLen { ino, len });
    }

    pub(super) fn sync(&mut self, path: &Path) {
        let ino = self.st.ino_of(path);
        self.st.ops.push(Op::Sync { ino });
    }

    pub(super) fn sync_dir(&mut self, path: &Path) {
        self.st.ops.push(Op::SyncDir {
            path: path.to_path_buf(),
        });
    }

    pub(super) fn rename(&mut self, from: &Path, to: &Path) {
        let ino = self.st.ino_of(from);
        self.st.names.remove(from);
        self.st.names.insert(to.to_path_buf(), ino);
        self.st.ops.push(Op::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            ino,
        });
    }

    pub(super) fn link(&mut self, from: &Path, to: &Path) {
        let ino = self.st.ino_of(from);
        self.st.names.insert(to.to_path_buf(), ino);
        self.st.ops.push(Op::Link {
            path: to.to_path_buf(),
            ino,
        });
    }

    pub(super) fn unlink(&mut self, path: &Path) {
        self.st.names.remove(path);
        self.st.ops.push(Op::Unlink {
            path: path.to_path_buf(),
        });
    }

    pub(super) fn mkdir(&mut self, path: &Path) {
        self.st.ops.push(Op::Mkdir {
            path: path.to_path_buf(),
        });
    }

    pub(super) fn rmdir(&mut self, path: &Path) {
        self.st.ops.push(Op::Rmdir {
            path: path.to_path_buf(),
        });
    }
}

/// Where the power fails, and what of the unsynced tail survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The cut comes after the first `at` recorded operations.
    pub at: usize,
    /// How many of the operations before the cut that no `fsync` covered survive anyway (the
    /// first ones, in order).
    pub keep_unsynced: usize,
    /// When the last surviving unsynced operation is a write: how many of its bytes survive
    /// (`None`: all of them).
    pub tear: Option<usize>,
}

impl Cut {
    /// A cut after `at` operations that keeps only what was made durable.
    pub fn durable_only(at: usize) -> Self {
        Self {
            at,
            keep_unsynced: 0,
            tear: None,
        }
    }
}

/// An active recording of the file mutations below a directory. Dropping it stops recording.
#[derive(Debug)]
#[must_use = "dropping the recording stops it"]
pub struct Recording {
    rec: Arc<Rec>,
}

impl Recording {
    /// Starts recording below `root`, taking a copy of what it holds now as the initial state.
    ///
    /// # Errors
    /// When `root` cannot be read, or another recording already covers it.
    pub fn start(root: &Path) -> Result<Self> {
        let root = root.to_path_buf();
        let mut st = State::default();
        snapshot(&root, &root, &mut st)?;
        let rec = Arc::new(Rec {
            root: root.clone(),
            state: Mutex::new(st),
        });
        let mut all = RECORDINGS.lock().unwrap_or_else(|p| p.into_inner());
        if all
            .iter()
            .any(|r| r.root.starts_with(&root) || root.starts_with(&r.root))
        {
            return Err(Error::AlreadyExists { path: root });
        }
        all.push(rec.clone());
        ACTIVE.fetch_add(1, Ordering::Relaxed);
        Ok(Self { rec })
    }

    /// The root being recorded.
    pub fn root(&self) -> &Path {
        &self.rec.root
    }

    /// How many operations have been recorded so far: a cut point for "the power failed now".
    pub fn len(&self) -> usize {
        self.rec.lock().ops.len()
    }

    /// True when nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A listing of the recorded operations (for debugging a failed invariant).
    pub fn describe(&self) -> String {
        let st = self.rec.lock();
        let durable = durability(&st.ops);
        st.ops
            .iter()
            .zip(durable)
            .enumerate()
            .map(|(i, (op, d))| {
                let mut s = format!("{i:4} {} {op:?}", if d { "D" } else { " " });
                s.truncate(200);
                s + "\n"
            })
            .collect()
    }

    /// How many of the first `at` operations no later `fsync` (before the cut) covered.
    pub fn unsynced_before(&self, at: usize) -> usize {
        let st = self.rec.lock();
        durability(&st.ops[..at.min(st.ops.len())])
            .iter()
            .filter(|d| !**d)
            .count()
    }

    /// A pseudo-random cut (deterministic in `seed`) anywhere in the recording: a point, a
    /// prefix of the unsynced tail, and sometimes a torn last write.
    pub fn random_cut(&self, seed: u64) -> Cut {
        let mut rng = SplitMix(seed);
        let at = (rng.next() % (self.len() as u64 + 1)) as usize;
        let unsynced = self.unsynced_before(at);
        let keep_unsynced = match rng.next() % 4 {
            0 => 0,
            1 => unsynced,
            _ => (rng.next() % (unsynced as u64 + 1)) as usize,
        };
        let tear = rng
            .next()
            .is_multiple_of(3)
            .then(|| (rng.next() % 4096) as usize);
        Cut {
            at,
            keep_unsynced,
            tear,
        }
    }

    /// Builds in `dest` (an empty directory) the content of the root after `cut`.
    pub fn image(&self, cut: &Cut, dest: &Path) -> Result<()> {
        let st = self.rec.lock();
        let ops = &st.ops[..cut.at.min(st.ops.len())];
        let durable = durability(ops);
        let mut kept_unsynced = 0;
        let mut last_unsynced = None;
        let mut survives = vec![false; ops.len()];
        for (i, d) in durable.iter().enumerate() {
            if *d {
                survives[i] = true;
            } else if kept_unsynced < cut.keep_unsynced {
                kept_unsynced += 1;
                survives[i] = true;
                last_unsynced = Some(i);
            }
        }
        let mut dirs: BTreeSet<PathBuf> = st.initial_dirs.iter().cloned().collect();
        let mut names: BTreeMap<PathBuf, Ino> = BTreeMap::new();
        let mut data: HashMap<Ino, Vec<u8>> = HashMap::new();
        for (path, ino, content) in &st.initial_files {
            names.insert(path.clone(), *ino);
            data.insert(*ino, content.clone());
        }
        for (i, op) in ops.iter().enumerate() {
            if !survives[i] {
                continue;
            }
            match op {
                Op::Create { path, ino } | Op::Link { path, ino } => {
                    data.entry(*ino).or_default();
                    names.insert(path.clone(), *ino);
                }
                Op::Rename { from, to, ino } => {
                    if names.get(from) == Some(ino) {
                        names.remove(from);
                    }
                    data.entry(*ino).or_default();
                    names.insert(to.clone(), *ino);
                }
                Op::Unlink { path } => {
                    names.remove(path);
                }
                Op::Mkdir { path } => {
                    dirs.insert(path.clone());
                }
                Op::Rmdir { path } => {
                    dirs.remove(path);
                }
                Op::Write {
                    ino,
                    offset,
                    data: bytes,
                } => {
                    let bytes = match cut.tear {
                        Some(n) if Some(i) == last_unsynced => &bytes[..n.min(bytes.len())],
                        _ => &bytes[..],
                    };
                    let buf = data.entry(*ino).or_default();
                    let end = *offset as usize + bytes.len();
                    if buf.len() < end {
                        buf.resize(end, 0);
                    }
                    buf[*offset as usize..end].copy_from_slice(bytes);
                }
                Op::SetLen { ino, len } => data.entry(*ino).or_default().resize(*len as usize, 0),
                Op::Sync { .. } | Op::SyncDir { .. } => {}
            }
        }
        let root = &self.rec.root;
        let reachable = |p: &Path| {
            p.ancestors()
                .skip(1)
                .take_while(|a| *a != root.as_path())
                .all(|a| dirs.contains(a))
        };
        let target = |p: &Path| -> Result<PathBuf> {
            p.strip_prefix(root)
                .map(|rel| dest.join(rel))
                .map_err(|_| Error::OutsideWorkspace {
                    path: p.to_path_buf(),
                    workspace: root.clone(),
                })
        };
        for d in &dirs {
            if reachable(d) && d.as_path() != root.as_path() {
                let t = target(d)?;
                std::fs::create_dir_all(&t).map_err(|e| Error::io("create directory", &t, e))?;
            }
        }
        let mut first_name: HashMap<Ino, PathBuf> = HashMap::new();
        for (path, ino) in &names {
            if !reachable(path) {
                continue;
            }
            let t = target(path)?;
            if let Some(first) = first_name.get(ino) {
                std::fs::hard_link(first, &t).map_err(|e| Error::io("link", &t, e))?;
            } else {
                let content = data.get(ino).map_or(&[][..], Vec::as_slice);
                std::fs::write(&t, content).map_err(|e| Error::io("write", &t, e))?;
                first_name.insert(*ino, t);
            }
        }
        Ok(())
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let mut all = RECORDINGS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|r| !Arc::ptr_eq(r, &self.rec));
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// For each op, whether a later op (before the end of `ops`) made it durable.
fn durability(ops: &[Op]) -> Vec<bool> {
    let mut synced_inos: HashSet<Ino> = HashSet::new();
    let mut synced_dirs: HashSet<&Path> = HashSet::new();
    let mut out = vec![false; ops.len()];
    let dir_synced = |dirs: &HashSet<&Path>, p: &Path| p.parent().is_some_and(|d| dirs.contains(d));
    for (i, op) in ops.iter().enumerate().rev() {
        out[i] = match op {
            Op::Sync { ino } => {
                synced_inos.insert(*ino);
                true
            }
            Op::SyncDir { path } => {
                synced_dirs.insert(path);
                true
            }
            Op::Write { ino, .. } | Op::SetLen { ino, .. } => synced_inos.contains(ino),
            Op::Create { path, .. }
            | Op::Link { path, .. }
            | Op::Unlink { path }
            | Op::Mkdir { path }
            | Op::Rmdir { path } => dir_synced(&synced_dirs, path),
            Op::Rename { from, to, .. } => {
                dir_synced(&synced_dirs, from) && dir_synced(&synced_dirs, to)
            }
        };
    }
    out
}

/// Records the files and directories below `dir` as the initial state.
fn snapshot(root: &Path, dir: &Path, st: &mut State) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    if dir != root {
        st.initial_dirs.push(dir.to_path_buf());
    }
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| Error::io("stat", &path, e))?;
        if ft.is_dir() {
            snapshot(root, &path, st)?;
        } else if ft.is_file() {
            let content = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
            let ino = st.new_ino();
            st.names.insert(path.clone(), ino);
            st.initial_files.push((path, ino, content));
        }
    }
    Ok(())
}

/// A tiny deterministic generator for cut points (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsx;

    fn image(rec: &Recording, cut: Cut) -> tempfile::TempDir {
        let out = tempfile::tempdir().unwrap();
        rec.image(&cut, out.path()).unwrap();
        out
    }

    #[test]
    fn unsynced_appends_are_lost_and_synced_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut f = fsx::DataFile::open_append(&path).unwrap();
        let rec = Recording::start(dir.path()).unwrap();
        f.append(b"one\n").unwrap();
        f.sync_data().unwrap();
        let acked = rec.len();
        f.append(b"two\n").unwrap();
        let end = rec.len();
        // Durable only: "one" survives, "two" does not.
        let img = image(&rec, Cut::durable_only(end));
        assert_eq!(std::fs::read(img.path().join("log")).unwrap(), b"one\n");
        // Everything kept.
        let all = Cut {
            at: end,
            keep_unsynced: rec.unsynced_before(end),
            tear: None,
        };
        let img = image(&rec, all);
        assert_eq!(
            std::fs::read(img.path().join("log")).unwrap(),
            b"one\ntwo\n"
        );
        // Torn: the last write keeps two bytes.
        let img = image(
            &rec,
            Cut {
                tear: Some(2),
                ..all
            },
        );
        assert_eq!(std::fs::read(img.path().join("log")).unwrap(), b"one\ntw");
        // Before the sync, even "one" may be lost.
        let img = image(&rec, Cut::durable_only(acked - 1));
        assert_eq!(std::fs::read(img.path().join("log")).unwrap(), b"");
    }

    #[test]
    fn a_name_needs_its_directory_synced() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::start(dir.path()).unwrap();
        // fsx makes the names it creates durable: the new directory and the new file.
        let sub = dir.path().join("sub");
        fsx::create_dir_private(&sub).unwrap();
        let mut f = fsx::DataFile::open_append(&sub.join("f")).unwrap();
        f.append(b"x").unwrap();
        f.sync_data().unwrap();
        let img = image(&rec, Cut::durable_only(rec.len()));
        assert_eq!(std::fs::read(img.path().join("sub/f")).unwrap(), b"x");
        // A removal is not durable until the directory is synced.
        fsx::remove_if_exists(&sub.join("f")).unwrap();
        let img = image(&rec, Cut::durable_only(rec.len()));
        assert!(img.path().join("sub/f").exists());
        fsx::sync_dir(&sub).unwrap();
        let img = image(&rec, Cut::durable_only(rec.len()));
        assert!(!img.path().join("sub/f").exists());
    }

    #[test]
    fn replace_is_all_or_nothing_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fsx::write_replace(&path, b"old").unwrap();
        let rec = Recording::start(dir.path()).unwrap();
        fsx::write_replace(&path, b"new").unwrap();
        for at in 0..=rec.len() {
            for keep in 0..=rec.unsynced_before(at) {
                for tear in [None, Some(1)] {
                    let img = image(
                        &rec,
                        Cut {
                            at,
                            keep_unsynced: keep,
                            tear,
                        },
                    );
                    let got = std::fs::read(img.path().join("state.json")).unwrap();
                    assert!(got == b"old" || got == b"new", "{at}/{keep}: {got:?}");
                }
            }
        }
        let img = image(&rec, Cut::durable_only(rec.len()));
        assert_eq!(
            std::fs::read(img.path().join("state.json")).unwrap(),
            b"new"
        );
    }

    #[test]
    fn recordings_do_not_overlap_and_stop_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recording::start(dir.path()).unwrap();
        assert!(Recording::start(&dir.path().join("inner")).is_err());
        drop(rec);
        let again = Recording::start(dir.path()).unwrap();
        assert!(again.is_empty());
    }
}
