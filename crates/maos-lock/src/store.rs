//! The on-disk lock table and the kernel locks around it (see the lock section of docs/protocol.md).
//!
//! `.maos/locks/`:
//! - `guard`: an empty file; every read-modify-write of the state files happens while holding
//!   an exclusive kernel lock (`flock`) on it, so all state changes are serialised.
//! - `table.0`, `table.1`: the lock table (holders, waiters, fencing counters, the ticket
//!   counter) in two slots written alternately in place under the guard: each slot is a line
//!   `<crc32 hex> <length>` followed by the JSON document; a reader takes the valid slot with
//!   the higher `generation`. A writer killed mid-write leaves a slot whose checksum fails, and
//!   the other slot holds the state before its change, so no change is ever half-applied.
//!   In-place writes on descriptors kept open make a state change a handful of syscalls.
//! - `advisory.json`: advisory interests, same rules.
//! - `live/<pid>.<n>`: one liveness file per process taking locks; the process holds an
//!   exclusive kernel lock on it for its lifetime. A breaker (under the guard) that can take
//!   that kernel lock knows the process (and every child that inherited the descriptor) is gone.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use maos_core::process::{boot_id, hostname};
use maos_core::{AgentId, ProcessIdentity, ResourceName, Workspace, fsx, now_ms};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::HolderSummary;
use crate::watch::DirWatch;
use crate::{Error, FencingToken, Result};

/// Name of the guard file.
pub(crate) const GUARD: &str = "guard";
/// Names of the two slots of the lock table.
pub(crate) const TABLE_SLOTS: [&str; 2] = ["table.0", "table.1"];
/// Name of the advisory interests file.
pub(crate) const ADVISORY: &str = "advisory.json";
/// Directory of liveness files.
pub(crate) const LIVE_DIR: &str = "live";
/// Directory of waiters' wake-up files.
pub(crate) const WAKE_DIR: &str = "wake";
/// Format version of the state files.
pub(crate) const STATE_VERSION: u32 = 1;
/// Largest state file a reader accepts.
const STATE_LIMIT: u64 = 64 << 20;
/// Largest purpose, and largest metadata (keys and values together), of one record, in
/// bytes: every record is rewritten with the whole table on every change, and a table above
/// [`STATE_LIMIT`] would be unreadable for every process.
pub(crate) const RECORD_TEXT_LIMIT: usize = 64 << 10;
/// How far every fencing counter jumps after a reboot (the table is not fsynced on every
/// change, so a power cut can lose its newest updates; fewer than this many tokens can be
/// issued between two commits of the file system journal).
pub(crate) const REBOOT_TOKEN_JUMP: u64 = 1 << 32;

/// Refuses a record whose purpose or metadata exceeds [`RECORD_TEXT_LIMIT`].
pub(crate) fn check_record_text(
    resource: &ResourceName,
    purpose: &str,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let meta: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    for (what, size) in [("purpose", purpose.len()), ("metadata", meta)] {
        if size > RECORD_TEXT_LIMIT {
            return Err(Error::TooLarge {
                resource: resource.clone(),
                what,
                size: size as u64,
                limit: RECORD_TEXT_LIMIT as u64,
            });
        }
    }
    Ok(())
}

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// One holder; conflicts with every overlapping lock.
    #[default]
    Exclusive,
    /// Many holders; conflicts only with overlapping exclusive locks.
    Shared,
}

/// One held lock: the record every reader sees, published whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Unique id of this holding (the ticket it was granted under).
    pub id: u64,
    /// The resource (path or pattern).
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The owning agent.
    pub owner: AgentId,
    /// The process that took it (for humans and `lock list`; liveness uses `live`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
    /// The liveness file (`live/<name>`) of the holding process; `None` for a lease held by
    /// the agent alone (only its expiry ends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// When it was granted (ms since the Unix epoch).
    pub acquired_at: u64,
    /// When the lease ends unless renewed (ms since the Unix epoch).
    pub expires_at: u64,
    /// Lease length used by renewals, in ms.
    pub ttl_ms: u64,
    /// Why it is held.
    pub purpose: String,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The fencing token issued with it.
    pub token: FencingToken,
}

impl LockInfo {
    pub(crate) fn summary(&self) -> HolderSummary {
        HolderSummary {
            owner: self.owner.clone(),
            resource: self.resource.clone(),
            purpose: self.purpose.clone(),
            expires_at: self.expires_at,
            pid: self.live.as_ref().and(self.process.as_ref()).map(|p| p.pid),
            token: self.token,
        }
    }
}

/// One queued waiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterInfo {
    /// Its ticket: the arrival order (smaller is earlier).
    pub ticket: u64,
    /// The resource it waits for.
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The waiting agent.
    pub agent: AgentId,
    /// The waiting process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
    /// Its liveness file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// When it started waiting (ms since the Unix epoch).
    pub since: u64,
    /// Why it wants the lock.
    pub purpose: String,
    /// Set by deadlock resolution: the wait must end with a `Deadlock` error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<Vec<AgentId>>,
}

/// The lock table (the body of the `table.0` / `table.1` slots).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TableState {
    pub(crate) version: u32,
    /// Incremented by every write; the slot written is `generation % 2` (written by
    /// [`Locked::save_table`]).
    #[serde(default, skip_serializing)]
    pub(crate) generation: u64,
    #[serde(default)]
    pub(crate) boot_id: String,
    #[serde(default)]
    pub(crate) next_ticket: u64,
    /// Newest fencing token issued per resource; never reset, never decreased.
    #[serde(default)]
    pub(crate) tokens: BTreeMap<String, u64>,
    #[serde(default)]
    pub(crate) holders: Vec<LockInfo>,
    #[serde(default)]
    pub(crate) waiters: Vec<WaiterInfo>,
}

/// The table as written: its generation overrides the one it was loaded with.
#[derive(Serialize)]
struct TableWithGeneration<'a> {
    generation: u64,
    #[serde(flatten)]
    table: &'a TableState,
}

impl TableState {
    pub(crate) fn take_ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    pub(crate) fn current_token(&self, resource: &ResourceName) -> FencingToken {
        FencingToken(self.tokens.get(resource.as_str()).copied().unwrap_or(0))
    }

    pub(crate) fn issue_token(&mut self, resource: &ResourceName) -> FencingToken {
        let t = self.tokens.entry(resource.as_str().to_owned()).or_insert(0);
        *t += 1;
        FencingToken(*t)
    }
}

/// Per-process, per-workspace state: the guard handle and this process's liveness file.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    files: Mutex<Option<Files>>,
    live: OnceLock<(String, File)>,
    watch: OnceLock<Arc<DirWatch>>,
    pub(crate) identity: ProcessIdentity,
}

static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Arc<Shared>>>> = OnceLock::new();
static LIVE_COUNTER: AtomicU64 = AtomicU64::new(0);

fn lock_poisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the mutex leaves no broken invariant in the guarded value (the
    // kernel lock is released on unwind by `UnlockOnUnwind`), so recover it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The shared state for `ws`'s lock directory (created on first use).
    pub(crate) fn of(ws: &Workspace) -> Result<Arc<Shared>> {
        Self::of_dir(&ws.locks_dir())
    }

    pub(crate) fn of_dir(dir: &Path) -> Result<Arc<Shared>> {
        let reg = REGISTRY.get_or_init(Default::default);
        let mut map = lock_poisoned(reg);
        if let Some(s) = map.get(dir) {
            return Ok(s.clone());
        }
        fsx::create_dir_private(dir)?;
        fsx::create_dir_private(&dir.join(LIVE_DIR))?;
        fsx::create_dir_private(&dir.join(WAKE_DIR))?;
        let s = Arc::new(Shared {
            dir: dir.to_path_buf(),
            files: Mutex::new(None),
            live: OnceLock::new(),
            watch: OnceLock::new(),
            identity: ProcessIdentity::current(),
        });
        map.insert(dir.to_path_buf(), s.clone());
        Ok(s)
    }

    pub(crate) fn table_path(&self) -> PathBuf {
        self.dir.join(TABLE_SLOTS[0])
    }

    pub(crate) fn watch(&self) -> Arc<DirWatch> {
        self.watch
            .get_or_init(|| Arc::new(DirWatch::new(&self.dir)))
            .clone()
    }

    /// Runs `f` while holding the guard (the process mutex, then the kernel lock).
    pub(crate) fn locked<R>(&self, f: impl FnOnce(&mut Locked<'_>) -> Result<R>) -> Result<R> {
        let mut slot = lock_poisoned(&self.files);
        if slot.is_none() {
            *slot = Some(Files {
                guard: fsx::open_lock_file(&self.dir.join(GUARD))?,
                slots: [
                    fsx::open_lock_file(&self.dir.join(TABLE_SLOTS[0]))?,
                    fsx::open_lock_file(&self.dir.join(TABLE_SLOTS[1]))?,
                ],
            });
        }
        let files = slot.as_ref().expect("the files were opened just above");
        files
            .guard
            .lock()
            .map_err(|e| Error::io("lock", self.dir.join(GUARD), e))?;
        // Unlocks on unwind: a panic under the guard must not leave the table-wide kernel
        // lock held for the rest of this process's life (every other process would hang).
        let mut held = UnlockOnUnwind(Some(&files.guard));
        let mut l = Locked {
            shared: self,
            files,
            generation: std::cell::Cell::new(0),
            alive_cache: HashMap::new(),
        };
        let r = f(&mut l);
        held.0 = None;
        let unlocked = files.guard.unlock();
        drop(l);
        drop(held);
        drop(slot);
        let r = r?;
        unlocked.map_err(|e| Error::io("unlock", self.dir.join(GUARD), e))?;
        Ok(r)
    }

    /// This process's liveness file name, creating and locking it on first use. Must be
    /// called under the guard (a sweeper never removes a file between its creation and its
    /// kernel lock).
    fn live_name(&self, _proof: &Locked<'_>) -> Result<String> {
        if let Some((name, _)) = self.live.get() {
            return Ok(name.clone());
        }
        let n = LIVE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.{}.{}.{n}",
            std::process::id(),
            self.identity.start_time,
            now_ms()
        );
        let path = self.dir.join(LIVE_DIR).join(&name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        f.lock().map_err(|e| Error::io("lock", &path, e))?;
        let _ = self.live.set((name, f));
        let (name, _) = self.live.get().expect("set just above");
        Ok(name.clone())
    }

    /// The liveness file handle of this process, if created.
    pub(crate) fn live_file(&self) -> Option<&File> {
        self.live.get().map(|(_, f)| f)
    }
}

/// Unlocks the guard when dropped while still armed (only on unwind).
struct UnlockOnUnwind<'a>(Option<&'a File>);

impl Drop for UnlockOnUnwind<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0 {
            let _ = f.unlock();
        }
    }
}

/// Descriptors kept open by a process: the guard and the two table slots.
#[derive(Debug)]
struct Files {
    guard: File,
    slots: [File; 2],
}

/// The state of a guarded operation.
pub(crate) struct Locked<'a> {
    pub(crate) shared: &'a Shared,
    files: &'a Files,
    /// Generation of the table as loaded.
    generation: std::cell::Cell<u64>,
    alive_cache: HashMap<String, bool>,
}

/// A complete slot (checksum valid) whose body does not parse: its generation, if readable,
/// and why.
type SlotProblem = (Option<u64>, String);

/// Parses one table slot: `<crc32 hex> <length>\n<JSON>`; `None` when empty or torn.
fn parse_slot(bytes: &[u8]) -> Option<std::result::Result<TableState, SlotProblem>> {
    if bytes.is_empty() {
        return None;
    }
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..nl]).ok()?;
    let (crc, len) = head.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    let len: usize = len.parse().ok()?;
    let body = bytes.get(nl + 1..(nl + 1).checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some(serde_json::from_slice(body).map_err(|e| {
        let generation = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("generation")?.as_u64());
        (generation, e.to_string())
    }))
}

fn read_all_at(f: &File, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = f.read_at(&mut chunk, buf.len() as u64)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() as u64 > STATE_LIMIT {
            return Err(std::io::Error::other("lock table too large"));
        }
    }
}

impl Locked<'_> {
    pub(crate) fn live_name(&mut self) -> Result<String> {
        if let Some((name, _)) = self.shared.live.get() {
            return Ok(name.clone());
        }
        self.sweep_live();
        self.shared.live_name(self)
    }

    fn read_state<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        let path = self.shared.dir.join(name);
        match fsx::read_bounded(&path, STATE_LIMIT) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.is_not_found() => Ok(T::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes a state file whole: temporary file, then `rename` over the old one. Not
    /// fsynced: lock state matters only while processes run (see [`REBOOT_TOKEN_JUMP`]).
    fn write_state<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.shared.dir.join(name);
        let mut bytes = serde_json::to_vec(value).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        let tmp =
            self.shared
                .dir
                .join(format!("{}{}.{name}", fsx::TEMP_PREFIX, std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32,
            )
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(&bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("rename", &path, e)
        })
    }

    /// Loads the lock table, applying the reboot rule.
    pub(crate) fn load_table(&self) -> Result<(TableState, bool)> {
        let mut best: Option<TableState> = None;
        let mut problems = Vec::new();
        let mut torn = Vec::new();
        let mut buf = Vec::with_capacity(4096);
        for (i, f) in self.files.slots.iter().enumerate() {
            let path = self.shared.dir.join(TABLE_SLOTS[i]);
            read_all_at(f, &mut buf).map_err(|e| Error::io("read", &path, e))?;
            match parse_slot(&buf) {
                Some(Ok(t)) if best.as_ref().is_none_or(|b| t.generation > b.generation) => {
                    best = Some(t);
                }
                Some(Ok(_)) => {}
                Some(Err((generation, e))) => {
                    problems.push((generation, format!("{}: {e}", path.display())));
                }
                None if !buf.is_empty() => {
                    tracing::warn!(path = %path.display(), "torn lock table slot ignored (a writer died mid-write)");
                    torn.push(path.display().to_string());
                }
                None => {}
            }
        }
        // A complete slot that does not parse and is not older than the best valid one was
        // written whole by someone (a newer format, or damage): falling back to the older
        // slot would undo the newest change, and the next write would overwrite it.
        let best_generation = best.as_ref().map(|b| b.generation);
        problems.retain(|(g, _)| match (g, best_generation) {
            (Some(g), Some(b)) => *g > b,
            _ => true,
        });
        let problems: Vec<String> = problems.into_iter().map(|(_, p)| p).collect();
        if best.is_some() && !problems.is_empty() {
            return Err(Error::Corrupt {
                path: self.shared.table_path(),
                reason: problems.join("; "),
            });
        }
        let mut t = match best {
            Some(t) => t,
            // Only one write is ever in flight, so at most one slot can be torn: two torn
            // slots (a power cut losing both, or damage) leave the state unknown. An empty
            // table would forget live holders (two holders) and restart fencing counters.
            None if torn.len() == TABLE_SLOTS.len() => {
                return Err(Error::Corrupt {
                    path: self.shared.table_path(),
                    reason: format!(
                        "both lock table slots are torn ({}): the lock state is unknown; \
                         once no maos process runs, remove both slots to start an empty \
                         table (fencing tokens then restart)",
                        torn.join(", ")
                    ),
                });
            }
            None if problems.is_empty() => TableState::default(),
            None => {
                return Err(Error::Corrupt {
                    path: self.shared.table_path(),
                    reason: problems.join("; "),
                });
            }
        };
        self.generation.set(t.generation);
        let mut dirty = false;
        if t.version > STATE_VERSION {
            return Err(Error::Corrupt {
                path: self.shared.table_path(),
                reason: format!(
                    "written by a newer maos (version {}, this one understands {STATE_VERSION})",
                    t.version
                ),
            });
        }
        t.version = STATE_VERSION;
        let boot = boot_id();
        if t.boot_id != boot {
            if !t.boot_id.is_empty() {
                tracing::info!(
                    "host rebooted since the lock table was written: fencing counters jump"
                );
                for v in t.tokens.values_mut() {
                    *v = v.saturating_add(REBOOT_TOKEN_JUMP);
                }
            }
            t.boot_id = boot.to_owned();
            dirty = true;
        }
        // No honest table comes near 2^63 (one increment per change, 2^32 per reboot): such
        // a counter is damage, and incrementing it could wrap a fencing token to zero.
        const COUNTER_LIMIT: u64 = 1 << 63;
        let huge = [("generation", t.generation), ("next_ticket", t.next_ticket)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .chain(
                t.tokens
                    .iter()
                    .map(|(r, &v)| (format!("fencing counter of {r}"), v)),
            )
            .find(|(_, v)| *v >= COUNTER_LIMIT);
        if let Some((what, v)) = huge {
            return Err(Error::Corrupt {
                path: self.shared.table_path(),
                reason: format!("{what} is {v}, beyond any reachable value"),
            });
        }
        Ok((t, dirty))
    }

    /// Publishes the table, then signals every queued waiter that nothing blocks any more.
    pub(crate) fn save_table(&self, t: &TableState) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let generation = self.generation.get() + 1;
        let slot = (generation % 2) as usize;
        let path = self.shared.dir.join(TABLE_SLOTS[slot]);
        let body = serde_json::to_vec(&TableWithGeneration {
            generation,
            table: t,
        })
        .map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if body.len() as u64 + 32 > STATE_LIMIT {
            // Writing it would make the table unreadable for every process.
            return Err(Error::io(
                "write",
                &path,
                std::io::Error::other(format!(
                    "lock table would exceed {STATE_LIMIT} bytes; change refused"
                )),
            ));
        }
        let mut bytes = format!("{:08x} {}\n", crc32fast::hash(&body), body.len()).into_bytes();
        bytes.extend_from_slice(&body);
        bytes.push(b'\n');
        let f = &self.files.slots[slot];
        f.write_all_at(&bytes, 0)
            .and_then(|()| f.set_len(bytes.len() as u64))
            .map_err(|e| Error::io("write", &path, e))?;
        self.generation.set(generation);
        self.signal_unblocked(t);
        Ok(())
    }

    /// Writes (opens for writing and closes) `wake/<ticket>` of each waiter that no holder
    /// and no earlier waiter blocks: inotify reports it to that waiter's process only.
    pub(crate) fn signal_unblocked(&self, t: &TableState) {
        if t.waiters.is_empty() {
            return;
        }
        let mut ws: Vec<&WaiterInfo> = t.waiters.iter().collect();
        ws.sort_by_key(|w| w.ticket);
        for (k, w) in ws.iter().enumerate() {
            let blocked = t
                .holders
                .iter()
                .any(|h| crate::lock::conflicts(&h.resource, h.mode, &w.resource, w.mode))
                || ws[..k]
                    .iter()
                    .any(|e| crate::lock::conflicts(&e.resource, e.mode, &w.resource, w.mode));
            if !blocked {
                self.signal(w.ticket);
            }
        }
    }

    /// Signals the waiter with `ticket`.
    pub(crate) fn signal(&self, ticket: u64) {
        let path = self.wake_path(ticket);
        // Opening for writing and closing is the event; a missing file (a waiter that does
        // not use wake files) is fine.
        let _ = OpenOptions::new()
            .write(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32,
            )
            .open(&path);
    }

    pub(crate) fn wake_path(&self, ticket: u64) -> PathBuf {
        self.shared.dir.join(WAKE_DIR).join(ticket.to_string())
    }

    /// Creates the wake-up file of a new waiter.
    pub(crate) fn create_wake(&self, ticket: u64) {
        let path = self.wake_path(ticket);
        if let Err(e) = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32,
            )
            .open(&path)
        {
            tracing::warn!(path = %path.display(), error = &e as &dyn std::error::Error, "cannot create wake-up file; relying on the fallback timer");
        }
    }

    /// Removes the wake-up file of a waiter that left the queue.
    pub(crate) fn remove_wake(&self, ticket: u64) {
        let _ = fsx::remove_if_exists(&self.wake_path(ticket));
    }

    pub(crate) fn load<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        self.read_state(name)
    }

    pub(crate) fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        self.write_state(name, value)
    }

    /// Whether the process behind a liveness file still runs. `None` (an agent lease) and
    /// other hosts count as alive: only the lease can end those.
    pub(crate) fn alive(&mut self, live: Option<&str>, process: Option<&ProcessIdentity>) -> bool {
        let Some(live) = live else { return true };
        if process.is_some_and(|p| p.host != hostname()) {
            return true;
        }
        if self.shared.live.get().is_some_and(|(n, _)| n == live) {
            return true;
        }
        if let Some(&v) = self.alive_cache.get(live) {
            return v;
        }
        let v = self.probe(live);
        self.alive_cache.insert(live.to_owned(), v);
        v
    }

    fn probe(&self, live: &str) -> bool {
        if live.contains('/') || live.starts_with('.') {
            return false;
        }
        let path = self.shared.dir.join(LIVE_DIR).join(live);
        let f = match fsx::open_read(&path) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return false,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = &e as &dyn std::error::Error, "cannot probe liveness file; assuming alive");
                return true;
            }
        };
        match f.try_lock() {
            Ok(()) => {
                tracing::debug!(live, "holder process is gone");
                // Nobody holds it: the process and all its heirs are gone. Remove it while we
                // hold its lock (a new process never reuses a name).
                let _ = fsx::remove_if_exists(&path);
                false
            }
            Err(TryLockError::WouldBlock) => true,
            Err(TryLockError::Error(e)) => {
                tracing::warn!(path = %path.display(), error = &e as &dyn std::error::Error, "cannot probe liveness file; assuming alive");
                true
            }
        }
    }

    /// Whether a holder record still holds: not expired, and its process (if any) alive.
    pub(crate) fn holds(&mut self, h: &LockInfo, now: u64) -> bool {
        h.expires_at > now
            && self.alive(h.live.as_deref(), h.process.as_ref())
            && (h.live.is_some() || self.agent_alive(&h.owner))
    }

    /// Whether the agent holding a lease without a process is still around: not when the
    /// registry says it is dead (its session ended, or no anchor runs and its lease ran out).
    /// An unregistered agent's lease ends only by expiry.
    fn agent_alive(&mut self, agent: &AgentId) -> bool {
        let key = format!("agent:{agent}");
        if let Some(&v) = self.alive_cache.get(&key) {
            return v;
        }
        let path = self
            .shared
            .dir
            .parent()
            .map(|m| m.join("agents").join(format!("{agent}.json")));
        let v = match path.map(|p| fsx::read_json::<maos_core::AgentRecord>(&p, 64 << 10)) {
            Some(Ok(rec)) => !rec.liveness().is_dead(),
            Some(Err(e)) if e.is_not_found() => true,
            Some(Err(e)) => {
                tracing::warn!(agent = %agent, error = %e, "cannot read the agent's record; assuming alive");
                true
            }
            None => true,
        };
        self.alive_cache.insert(key, v);
        v
    }

    /// Whether a waiter still waits.
    pub(crate) fn waits(&mut self, w: &WaiterInfo) -> bool {
        self.alive(w.live.as_deref(), w.process.as_ref())
    }

    /// Removes every holder that no longer holds and every dead waiter. Returns whether
    /// anything was removed.
    pub(crate) fn reap_all(&mut self, t: &mut TableState) -> bool {
        let now = now_ms();
        let before = (t.holders.len(), t.waiters.len());
        let mut holders = std::mem::take(&mut t.holders);
        holders.retain(|h| {
            let keep = self.holds(h, now);
            if !keep {
                tracing::debug!(resource = %h.resource, owner = %h.owner, token = h.token.0, "stale lock reclaimed");
            }
            keep
        });
        t.holders = holders;
        let mut waiters = std::mem::take(&mut t.waiters);
        waiters.retain(|w| {
            let keep = self.waits(w);
            if !keep {
                self.remove_wake(w.ticket);
            }
            keep
        });
        t.waiters = waiters;
        before != (t.holders.len(), t.waiters.len())
    }

    /// Removes liveness files nobody holds (their processes are gone) and stale temporary
    /// files. Runs when a process creates its own liveness file, so the directory stays
    /// about as large as the number of live processes.
    pub(crate) fn sweep_live(&mut self) {
        let dir = self.shared.dir.join(LIVE_DIR);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            // probe removes the file when nobody holds its lock.
            let _ = self.alive(Some(name), None);
        }
        let _ = fsx::sweep_temp_files(&self.shared.dir, std::time::Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_reboot_every_fencing_counter_jumps_ahead() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let shared = Shared::of(&ws).unwrap();
        let res = ResourceName::new("r").unwrap();
        shared
            .locked(|l| {
                let (mut t, _) = l.load_table()?;
                t.issue_token(&res);
                t.boot_id = "an-earlier-boot".into(); // as written before a reboot
                l.save_table(&t)
            })
            .unwrap();
        let t = shared.locked(|l| Ok(l.load_table()?.0)).unwrap();
        assert_eq!(t.current_token(&res).0, 1 + REBOOT_TOKEN_JUMP);
        assert_eq!(t.boot_id, boot_id());
    }

    #[test]
    fn slots_round_trip_and_torn_slots_are_rejected() {
        let body = br#"{"version":1,"generation":3}"#;
        let mut bytes = format!("{:08x} {}\n", crc32fast::hash(body), body.len()).into_bytes();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b"\nstale tail");
        let t = parse_slot(&bytes).unwrap().unwrap();
        assert_eq!(t.generation, 3);
        assert!(parse_slot(&bytes[..bytes.len() - 20]).is_none());
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 16] ^= 1;
        assert!(parse_slot(&flipped).is_none());
        assert!(parse_slot(b"").is_none());
    }

    #[test]
    fn two_torn_slots_are_a_corruption_error_not_an_empty_table() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let shared = Shared::of(&ws).unwrap();
        let res = ResourceName::new("r").unwrap();
        for _ in 0..2 {
            shared
                .locked(|l| {
                    let (mut t, _) = l.load_table()?;
                    t.issue_token(&res);
                    l.save_table(&t)
                })
                .unwrap();
        }
        for slot in TABLE_SLOTS {
            let p = ws.locks_dir().join(slot);
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        }
        // Forgetting the table would forget live holders (two holders) and reset the fencing
        // counters (tokens going backwards).
        let err = shared.locked(|l| Ok(l.load_table()?.0)).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { path, .. } if path.ends_with("table.0")),
            "{err}"
        );
        assert!(err.to_string().contains("table.1"), "{err}");
    }

    #[test]
    fn a_panic_under_the_guard_releases_the_kernel_lock() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let shared = Shared::of(&ws).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shared.locked(|_| -> Result<()> { panic!("a bug while holding the guard") })
        }));
        assert!(r.is_err());
        // Another process (here: another open file description) must not hang forever.
        let other = fsx::open_lock_file(&ws.locks_dir().join(GUARD)).unwrap();
        assert!(
            other.try_lock().is_ok(),
            "the table-wide guard stays locked after a panic under it"
        );
    }

    #[test]
    fn hostile_slot_headers_and_counters_are_errors_not_panics() {
        // A length that overflows the offset arithmetic is a torn (ignored) slot.
        assert!(parse_slot(b"deadbeef 18446744073709551615\n{}").is_none());
        // Counters at their maximum cannot be incremented: a clear error naming the table,
        // never a panic or a token that wraps to zero.
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let body = format!(
            r#"{{"version":1,"generation":{},"boot_id":"{}","next_ticket":{},"tokens":{{"r":{}}}}}"#,
            u64::MAX,
            boot_id(),
            u64::MAX,
            u64::MAX
        );
        let mut bytes =
            format!("{:08x} {}\n", crc32fast::hash(body.as_bytes()), body.len()).into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        std::fs::write(ws.locks_dir().join(TABLE_SLOTS[1]), &bytes).unwrap();
        let r = std::panic::catch_unwind(|| {
            crate::FileLock::new(&ws, ResourceName::new("r").unwrap())
                .agent(maos_core::AgentId::new("a").unwrap())
                .try_acquire("p")
                .map(|g| g.map(|g| g.token()))
        });
        let r = r.expect("no panic on a hostile table");
        let err = r.expect_err("no lock granted from exhausted counters");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_write_torn_at_any_byte_never_yields_a_state_that_was_not_written() {
        fn slot(t: &TableState, generation: u64) -> Vec<u8> {
            let body = serde_json::to_vec(&TableWithGeneration {
                generation,
                table: t,
            })
            .unwrap();
            let mut b = format!("{:08x} {}\n", crc32fast::hash(&body), body.len()).into_bytes();
            b.extend_from_slice(&body);
            b.push(b'\n');
            b
        }
        let res = ResourceName::new("r").unwrap();
        let mut older = TableState::default();
        for _ in 0..40 {
            older.issue_token(&res);
        }
        let mut newer = older.clone();
        newer.issue_token(&res);
        newer.next_ticket = 7;
        // Both shorter and longer rewrites of the slot being overwritten in place.
        for (old, new) in [
            (slot(&older, 1), slot(&newer, 3)),
            (slot(&newer, 3), slot(&older, 5)),
        ] {
            for k in 0..new.len() {
                let mut torn = new[..k].to_vec();
                if old.len() > k {
                    torn.extend_from_slice(&old[k..]);
                }
                match parse_slot(&torn) {
                    None => {}
                    // The bytes still to be written may equal the old ones: then the torn
                    // slot is the whole new (or old) state, which was written.
                    Some(Ok(t)) => {
                        let whole = |b: &[u8]| torn.starts_with(b) || b.starts_with(&torn);
                        let expect = if whole(&new) { &new } else { &old };
                        let want = parse_slot(expect).unwrap().unwrap();
                        assert_eq!(
                            (t.generation, &t.tokens, t.next_ticket),
                            (want.generation, &want.tokens, want.next_ticket),
                            "torn at {k}: a state that was never written parsed as valid"
                        );
                    }
                    Some(Err(e)) => panic!("torn at {k}: a valid checksum over bad JSON: {e:?}"),
                }
            }
            let t = parse_slot(&new).unwrap().unwrap();
            assert!(t.generation == 3 || t.generation == 5);
        }
    }

    #[test]
    fn a_complete_newer_slot_that_does_not_parse_is_an_error_not_a_step_back() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let shared = Shared::of(&ws).unwrap();
        let res = ResourceName::new("r").unwrap();
        // generation 1 -> table.1: token 1 issued.
        shared
            .locked(|l| {
                let (mut t, _) = l.load_table()?;
                t.issue_token(&res);
                l.save_table(&t)
            })
            .unwrap();
        // generation 2 -> table.0, complete (checksum valid) but not understood (a newer
        // writer's format, or damage): falling back to generation 1 would silently undo it.
        let body = format!(
            r#"{{"version":1,"generation":2,"boot_id":"{}","holders":"?"}}"#,
            boot_id()
        );
        let mut bytes =
            format!("{:08x} {}\n", crc32fast::hash(body.as_bytes()), body.len()).into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        std::fs::write(ws.locks_dir().join(TABLE_SLOTS[0]), &bytes).unwrap();
        let err = shared.locked(|l| Ok(l.load_table()?.0)).unwrap_err();
        assert!(matches!(&err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("table.0"), "{err}");
    }
}
