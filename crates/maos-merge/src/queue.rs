//! The merge queue: `.maos/merge/queue.json`.

use std::path::PathBuf;
use std::time::Duration;

use maos_core::{AgentId, fsx, now_ms};
use serde::{Deserialize, Serialize};

use crate::coordinator::{MergeCoordinator, MergeOutcome, Resolution};
use crate::error::{CoreContext as _, Error, Result};

/// The queue file inside `.maos/merge/`.
pub const QUEUE_FILE: &str = "queue.json";
/// The kernel-lock file guarding every read-modify-write of the queue file.
pub const QUEUE_LOCK_FILE: &str = "queue.lock";
/// The kernel-lock file held while a process runs the queue.
pub const QUEUE_RUN_LOCK_FILE: &str = "queue.run.lock";
/// The largest queue file read (16 MiB).
pub(crate) const QUEUE_LIMIT: u64 = 16 << 20;

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    /// Waiting for its turn.
    Queued,
    /// It conflicted; resolution tasks exist; retried on every run.
    Blocked,
    /// Merged (or already contained in the target).
    Merged,
    /// An error other than a conflict (dirty checkout, unknown revision, ...); `add` it
    /// again to retry.
    Failed,
}

impl EntryStatus {
    /// Queued or blocked: still to merge.
    pub fn is_active(self) -> bool {
        matches!(self, EntryStatus::Queued | EntryStatus::Blocked)
    }
}

/// One merge request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Queue-unique id, increasing.
    pub id: u64,
    /// The source revision.
    pub source: String,
    /// The target branch.
    pub target: String,
    /// Who asked.
    pub requested_by: AgentId,
    /// When (ms since the epoch).
    pub added_at: u64,
    /// Last change (ms since the epoch).
    pub updated_at: u64,
    /// Where it is.
    pub status: EntryStatus,
    /// Merge attempts so far.
    pub attempts: u32,
    /// What the last successful attempt did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<MergeOutcome>,
    /// The conflicted paths of the last attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicted_paths: Vec<String>,
    /// The resolution tasks created for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The queue file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Format version (1).
    pub version: u32,
    /// The id the next entry gets.
    pub next_id: u64,
    /// Every entry, in queue order.
    pub entries: Vec<QueueEntry>,
}

/// What one run of the queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRun {
    /// Entries merged in this run.
    pub merged: Vec<u64>,
    /// Entries that conflict (resolution tasks exist).
    pub blocked: Vec<u64>,
    /// Entries that failed.
    pub failed: Vec<u64>,
    /// The processed entries as they are now.
    pub entries: Vec<QueueEntry>,
}

/// A merge queue over a [`MergeCoordinator`]: entries merge in order, each re-checked
/// against the target as the entries before it left it; a conflicting entry turns into
/// resolution tasks and is skipped (retried on later runs), never blocking those behind it.
#[derive(Debug, Clone)]
pub struct MergeQueue {
    coord: MergeCoordinator,
    dir: PathBuf,
    lock_timeout: Duration,
}

impl MergeQueue {
    /// The queue of the coordinator's workspace.
    pub fn new(coord: MergeCoordinator) -> Self {
        let dir = coord.workspace().merge_dir();
        Self {
            coord,
            dir,
            lock_timeout: fsx::DEFAULT_GUARD_TIMEOUT,
        }
    }

    /// How long a read or change of the queue waits for the queue file's kernel lock (held
    /// for microseconds by each process; a stopped one can keep it) before failing with a
    /// timeout that names the holder. Default [`fsx::DEFAULT_GUARD_TIMEOUT`].
    #[must_use = "the builder returns the queue with the timeout set"]
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    fn file(&self) -> PathBuf {
        self.dir.join(QUEUE_FILE)
    }

    /// Runs `f` on the queue state under the queue's kernel lock, saving it if `f` says so.
    fn with_state<R>(&self, f: impl FnOnce(&mut QueueState) -> Result<(R, bool)>) -> Result<R> {
        fsx::create_dir_private(&self.dir).core(|| format!("create {}", self.dir.display()))?;
        let lock_path = self.dir.join(QUEUE_LOCK_FILE);
        let lock =
            fsx::LockFile::open(&lock_path).core(|| format!("open {}", lock_path.display()))?;
        // A stopped or hung holder makes this fail at the deadline, naming it.
        let _guard = lock
            .exclusive(self.lock_timeout)
            .core(|| "lock the merge queue".to_owned())?;
        let path = self.file();
        let mut state = match fsx::read_json::<QueueState>(&path, QUEUE_LIMIT) {
            Ok(s) => s,
            Err(e) if e.is_not_found() => QueueState {
                version: 1,
                next_id: 1,
                entries: Vec::new(),
            },
            Err(e) => {
                return Err(Error::Core {
                    context: format!("read {}", path.display()),
                    source: e,
                });
            }
        };
        let (r, save) = f(&mut state)?;
        if save {
            fsx::write_json_replace(&path, &state).core(|| format!("write {}", path.display()))?;
        }
        Ok(r)
        // `_guard` drops here: the kernel lock is released (also on unwind).
    }

    /// Appends a merge of `source` into `target`. An active entry for the same pair is
    /// returned instead of adding a duplicate.
    pub fn add(&self, source: &str, target: &str) -> Result<QueueEntry> {
        let span = tracing::info_span!("queue_add", source, target);
        let _enter = span.enter();
        let agent = self.coord.agent().clone();
        if let Some(b) = self.coord.backend() {
            return b
                .queue_add(source, target, &agent)
                .map_err(|e| self.coord.backend_err("add to the merge queue", e));
        }
        let path = self.file();
        self.with_state(|st| {
            if let Some(e) = st
                .entries
                .iter()
                .find(|e| e.status.is_active() && e.source == source && e.target == target)
            {
                return Ok((e.clone(), false));
            }
            let now = now_ms();
            let e = QueueEntry {
                id: st.next_id,
                source: source.to_owned(),
                target: target.to_owned(),
                requested_by: agent,
                added_at: now,
                updated_at: now,
                status: EntryStatus::Queued,
                attempts: 0,
                outcome: None,
                conflicted_paths: Vec::new(),
                resolution: None,
                error: None,
            };
            st.next_id = st.next_id.checked_add(1).ok_or_else(|| Error::Core {
                context: format!("add to the merge queue {}", path.display()),
                source: maos_core::Error::Corrupt {
                    path: path.clone(),
                    reason: format!("next_id {} cannot grow", st.next_id),
                },
            })?;
            st.entries.push(e.clone());
            Ok((e, true))
        })
    }

    /// Every entry, in queue order.
    pub fn list(&self) -> Result<Vec<QueueEntry>> {
        if let Some(b) = self.coord.backend() {
            return b
                .queue_list()
                .map_err(|e| self.coord.backend_err("read the merge queue", e));
        }
        self.with_state(|st| Ok((st.entries.clone(), false)))
    }

    /// Removes an entry.
    pub fn remove(&self, id: u64) -> Result<QueueEntry> {
        if let Some(b) = self.coord.backend() {
            return b
                .queue_remove(id)
                .map_err(|e| self.coord.backend_err("remove from the merge queue", e))?
                .ok_or(Error::NoQueueEntry { id });
        }
        self.with_state(|st| {
            let i = st
                .entries
                .iter()
                .position(|e| e.id == id)
                .ok_or(Error::NoQueueEntry { id })?;
            Ok((st.entries.remove(i), true))
        })
    }

    fn update(&self, entry: &QueueEntry) -> Result<()> {
        if let Some(b) = self.coord.backend() {
            return b
                .queue_update(entry)
                .map_err(|e| self.coord.backend_err("update the merge queue", e));
        }
        self.with_state(|st| {
            if let Some(e) = st.entries.iter_mut().find(|e| e.id == entry.id) {
                *e = entry.clone();
                Ok(((), true))
            } else {
                Ok(((), false)) // removed meanwhile
            }
        })
    }

    /// Runs the queue once: every active entry in order. Fails with [`Error::QueueBusy`] when
    /// another process is running it.
    pub async fn run(&self) -> Result<QueueRun> {
        let this = self.clone();
        crate::asyncify(move || this.run_blocking()).await
    }

    /// [`MergeQueue::run`] for synchronous callers.
    pub fn run_blocking(&self) -> Result<QueueRun> {
        let span = tracing::info_span!("queue_run");
        let _enter = span.enter();
        // One runner at a time: the backend's runner hold, or the runner file's kernel lock.
        let backend_hold = match self.coord.backend() {
            Some(b) => Some(
                b.queue_try_run()
                    .map_err(|e| self.coord.backend_err("take the merge queue runner", e))?
                    .ok_or(Error::QueueBusy)?,
            ),
            None => None,
        };
        let run_lock = match backend_hold {
            Some(_) => None,
            None => {
                fsx::create_dir_private(&self.dir)
                    .core(|| format!("create {}", self.dir.display()))?;
                let run_path = self.dir.join(QUEUE_RUN_LOCK_FILE);
                Some(
                    fsx::LockFile::open(&run_path)
                        .core(|| format!("open {}", run_path.display()))?,
                )
            }
        };
        let run_guard = match &run_lock {
            Some(lock) => Some(
                lock.try_exclusive()
                    .core(|| "lock the merge queue runner".to_owned())?
                    .ok_or(Error::QueueBusy)?,
            ),
            None => None,
        };
        let active: Vec<u64> = self
            .list()?
            .into_iter()
            .filter(|e| e.status.is_active())
            .map(|e| e.id)
            .collect();
        let mut report = QueueRun::default();
        for id in active {
            let Some(mut entry) = self.list()?.into_iter().find(|e| e.id == id) else {
                continue;
            };
            if !entry.status.is_active() {
                continue;
            }
            self.process(&mut entry);
            entry.updated_at = now_ms();
            self.update(&entry)?;
            match entry.status {
                EntryStatus::Merged => report.merged.push(id),
                EntryStatus::Blocked => report.blocked.push(id),
                EntryStatus::Failed => report.failed.push(id),
                EntryStatus::Queued => {}
            }
            report.entries.push(entry);
        }
        drop(run_guard);
        drop(backend_hold);
        tracing::info!(
            merged = report.merged.len(),
            blocked = report.blocked.len(),
            failed = report.failed.len(),
            "queue run done"
        );
        Ok(report)
    }

    fn process(&self, entry: &mut QueueEntry) {
        let span = tracing::info_span!("queue_entry", id = entry.id, source = %entry.source,
            target = %entry.target);
        let _enter = span.enter();
        entry.attempts = entry.attempts.saturating_add(1);
        let mut outcome = self.coord.merge_blocking(&entry.source, &entry.target);
        if matches!(outcome, Err(Error::ConcurrentUpdate { .. })) {
            tracing::debug!("target moved concurrently; re-checking once");
            outcome = self.coord.merge_blocking(&entry.source, &entry.target);
        }
        if matches!(outcome, Ok(ref o) if !matches!(o, MergeOutcome::Conflicts(_))) {
            self.coord
                .step(crate::coordinator::MergeStep::QueueEntryMerged);
        }
        match outcome {
            Ok(MergeOutcome::Conflicts(check)) => {
                let paths: Vec<String> = check.conflicted_paths().into_iter().collect();
                if entry.resolution.is_none() {
                    // Adopt tasks created earlier for this pair (`maos merge resolve`).
                    match self.coord.open_resolution(&entry.source, &entry.target) {
                        Ok(Some(res)) => {
                            entry.resolution = Some(res);
                            entry.conflicted_paths = paths.clone();
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot look for open resolution tasks")
                        }
                    }
                }
                let still_open = entry.resolution.as_ref().is_some_and(|r| {
                    self.coord
                        .resolution_progress(r)
                        .map(|p| !p.is_resolved() && p.failed == 0)
                        .unwrap_or(false)
                });
                if !(still_open && paths == entry.conflicted_paths) {
                    if let Some(old) = &entry.resolution {
                        self.supersede(old);
                    }
                    match self
                        .coord
                        .prepare_merge_blocking(&entry.source, &entry.target)
                        .and_then(|prep| self.coord.coordinate_resolution_blocking(&prep))
                    {
                        Ok(res) => entry.resolution = Some(res),
                        Err(e) => {
                            entry.status = EntryStatus::Failed;
                            entry.error = Some(format!("conflicts, and coordinating failed: {e}"));
                            return;
                        }
                    }
                }
                entry.conflicted_paths = paths;
                entry.status = EntryStatus::Blocked;
                entry.error = None;
            }
            Ok(o) => {
                // The coordinator completed the pair's open merge tasks.
                entry.outcome = Some(o);
                entry.status = EntryStatus::Merged;
                entry.conflicted_paths.clear();
                entry.error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue entry failed");
                entry.status = EntryStatus::Failed;
                entry.error = Some(e.to_string());
            }
        }
    }

    /// Marks the merge task of a resolution that a new one replaces as failed.
    fn supersede(&self, res: &Resolution) {
        let Ok(tracker) = self.coord.tracker() else {
            return;
        };
        let note = "superseded: the merge still conflicts; new resolution tasks were created";
        if let Err(e) = tracker.fail(&res.merge_task, note) {
            tracing::debug!(task = %res.merge_task, error = %e, "cannot retire the old merge task");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};
    use std::time::Instant;

    use maos_core::Workspace;
    use maos_core::fsx::LockFile;

    use super::*;

    fn repo() -> (tempfile::TempDir, Workspace) {
        crate::test_repo()
    }

    /// `flock(1)` takes the kernel lock on `path` and runs a command that stops flock(1)
    /// itself (SIGSTOP): a real, suspended holder. Returns once it holds the lock and is
    /// stopped (bounded wait).
    fn stopped_holder(path: &std::path::Path) -> (Child, u32) {
        let mut child = Command::new("flock")
            .arg(path)
            .args(["-c", "kill -STOP $PPID"])
            .spawn()
            .expect("flock(1) from util-linux");
        let lock = LockFile::open(path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(h) = fsx::holders_of(lock.file())
                .into_iter()
                .find(|h| h.is_stopped())
            {
                break h.pid;
            }
            if Instant::now() >= deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("the holder never stopped");
            }
            std::thread::yield_now();
        };
        (child, pid)
    }

    #[test]
    fn a_stopped_holder_of_the_queue_lock_makes_add_time_out_naming_it() {
        let (_d, ws) = repo();
        let coord = MergeCoordinator::new(&ws, AgentId::new("m").unwrap()).unwrap();
        let queue = MergeQueue::new(coord).lock_timeout(Duration::from_millis(200));
        queue.add("main", "main").unwrap();
        let (mut child, pid) = stopped_holder(&ws.merge_dir().join(QUEUE_LOCK_FILE));
        let err = queue.add("other", "main").unwrap_err();
        let text = anyhow_like(&err);
        assert!(
            matches!(
                &err,
                Error::Core {
                    source: maos_core::Error::LockTimeout { .. },
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("merge queue"), "{text}");
        assert!(text.contains(&format!("pid {pid}")), "{text}");
        assert!(text.contains(&format!("kill -CONT {pid}")), "{text}");
        child.kill().unwrap();
        child.wait().unwrap();
        // Free again: the add goes through, nothing was lost.
        queue.add("other", "main").unwrap();
        assert_eq!(queue.list().unwrap().len(), 2);
    }

    #[test]
    fn a_runner_lock_held_elsewhere_makes_run_busy_at_once() {
        let (_d, ws) = repo();
        let coord = MergeCoordinator::new(&ws, AgentId::new("m").unwrap()).unwrap();
        let queue = MergeQueue::new(coord);
        fsx::create_dir_private(&ws.merge_dir()).unwrap();
        let (mut child, _) = stopped_holder(&ws.merge_dir().join(QUEUE_RUN_LOCK_FILE));
        assert!(matches!(queue.run_blocking(), Err(Error::QueueBusy)));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(queue.run_blocking().unwrap().entries.is_empty());
    }

    /// The error and its sources, as the CLI prints them.
    fn anyhow_like(e: &Error) -> String {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(c) = src {
            s.push_str(": ");
            s.push_str(&c.to_string());
            src = c.source();
        }
        s
    }
}
