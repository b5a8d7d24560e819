//! Resolution: one task per conflict and the merge task depending on them (maos-track),
//! a notice to each affected agent (maos-comm), progress, and closing the pair's tasks.

use std::collections::BTreeMap;
use std::time::Duration;

use maos_comm::FileChannel;
use maos_core::{AgentId, Message, Recipients, TaskId};
use maos_track::{Task, TaskStatus, TaskTracker};
use tracing::Instrument as _;

use super::{
    CONFLICT_TASK_LABEL, ConflictNotice, MergeCoordinator, MergePreparation, NoticeFile,
    PreparedConflict, Resolution, ResolutionProgress, ResolutionTask, TASK_LABEL,
};
use crate::detect::{ConflictKind, LineRange};
use crate::error::{Error, Result};

impl MergeCoordinator {
    /// Creates one resolution task per conflict (assigned to its suggested resolver), the merge
    /// itself as a task depending on them, and sends each affected agent a direct message
    /// ([`ConflictNotice`]) naming its conflicting files and line ranges.
    pub async fn coordinate_resolution(&self, prep: &MergePreparation) -> Result<Resolution> {
        let this = self.clone();
        let prep = prep.clone();
        crate::asyncify(move || this.coordinate_resolution_blocking(&prep)).await
    }

    /// [`MergeCoordinator::coordinate_resolution`] for synchronous callers.
    pub fn coordinate_resolution_blocking(&self, prep: &MergePreparation) -> Result<Resolution> {
        let span = tracing::info_span!("coordinate_resolution", source = %prep.source,
            target = %prep.target, conflicts = prep.conflicts.len());
        let _enter = span.enter();
        let tracker = self.tracker()?;
        let mut tasks = Vec::with_capacity(prep.conflicts.len() + 1);
        let mut conflict_tasks = Vec::with_capacity(prep.conflicts.len());
        for c in &prep.conflicts {
            let mut t = Task::new(format!(
                "Resolve {} conflict in {} ({} into {})",
                c.conflict.kind, c.conflict.path, prep.source, prep.target
            ));
            t.description = format!(
                "{}.\nMerge {} into {} on the source branch (git merge {}), fix {}, commit, then \
                 complete this task.",
                c.conflict.description, prep.target, prep.source, prep.target, c.conflict.path
            );
            t.assigned_to = c.suggested_resolver.clone();
            t.labels = vec![TASK_LABEL.into(), CONFLICT_TASK_LABEL.into()];
            t.metadata = meta(prep, Some(c));
            conflict_tasks.push(ResolutionTask {
                task: t.id.clone(),
                path: c.conflict.path.clone(),
                kind: c.conflict.kind,
                assigned_to: t.assigned_to.clone(),
            });
            tasks.push(t);
        }
        let mut merge = Task::new(format!("Merge {} into {}", prep.source, prep.target));
        merge.description = format!(
            "Run `maos merge run {} {}` (or the merge queue) once every conflict task is done.",
            prep.source, prep.target
        );
        merge.dependencies = conflict_tasks.iter().map(|t| t.task.clone()).collect();
        merge.labels = vec![TASK_LABEL.into()];
        merge.metadata = meta(prep, None);
        let merge_task = merge.id.clone();
        tasks.push(merge);
        tracker.create_all(&tasks, &prep.source)?;
        // One message per affected agent: the suggested resolvers and every agent behind a
        // side of a conflict.
        let mut per_agent: BTreeMap<AgentId, Vec<NoticeFile>> = BTreeMap::new();
        for (c, t) in prep.conflicts.iter().zip(&conflict_tasks) {
            let mut recipients: BTreeMap<AgentId, Vec<LineRange>> = BTreeMap::new();
            for a in c.source_actors.iter().filter_map(|a| a.agent.clone()) {
                recipients
                    .entry(a)
                    .or_insert_with(|| c.conflict.regions.iter().map(|r| r.source).collect());
            }
            for a in c.target_actors.iter().filter_map(|a| a.agent.clone()) {
                recipients
                    .entry(a)
                    .or_insert_with(|| c.conflict.regions.iter().map(|r| r.target).collect());
            }
            if let Some(r) = &c.suggested_resolver {
                recipients
                    .entry(r.clone())
                    .or_insert_with(|| c.conflict.regions.iter().map(|r| r.source).collect());
            }
            for (agent, lines) in recipients {
                let you_resolve = c.suggested_resolver.as_ref() == Some(&agent);
                per_agent.entry(agent).or_default().push(NoticeFile {
                    path: c.conflict.path.clone(),
                    kind: c.conflict.kind,
                    lines,
                    task: t.task.clone(),
                    you_resolve,
                });
            }
        }
        let mut notified = Vec::new();
        for (agent, files) in per_agent {
            let notice = ConflictNotice {
                kind: "merge_conflicts".into(),
                source: prep.source.clone(),
                target: prep.target.clone(),
                files,
                merge_task: merge_task.clone(),
            };
            let err = |source| Error::Comm {
                recipient: agent.to_string(),
                source: Box::new(source),
            };
            match &self.backend {
                Some(b) => {
                    let payload = serde_json::to_value(&notice).map_err(|e| {
                        self.backend_err(format!("encode the notice to {agent}"), Box::new(e))
                    })?;
                    let msg = Message::new(
                        self.agent.clone(),
                        Recipients::Agent(agent.clone()),
                        payload,
                    );
                    b.notify(&agent, &msg)
                        .map_err(|e| self.backend_err(format!("message {agent}"), e))?;
                }
                None => {
                    let inbox = FileChannel::inbox(&self.ws, &agent).map_err(err)?;
                    let msg =
                        Message::new(self.agent.clone(), Recipients::Agent(agent.clone()), notice);
                    inbox.send_blocking(&msg).map_err(err)?;
                }
            }
            tracing::debug!(%agent, "conflict notice sent");
            notified.push(agent);
        }
        tracing::info!(
            tasks = conflict_tasks.len(),
            notified = notified.len(),
            "resolution coordinated"
        );
        Ok(Resolution {
            source: prep.source.clone(),
            target: prep.target.clone(),
            conflict_tasks,
            merge_task,
            notified,
        })
    }

    /// The task tracker, acting as this coordinator's agent (changes and notifications carry
    /// it).
    pub(crate) fn tracker(&self) -> Result<Tasks<'_>> {
        if let Some(b) = &self.backend {
            return Ok(Tasks::Backend(self, b.as_ref()));
        }
        let options = maos_track::Options::default().agent(self.agent.clone());
        TaskTracker::open_with(&self.ws, options)
            .map(Tasks::File)
            .map_err(|source| Error::Track {
                context: "open tracker".into(),
                source: Box::new(source),
            })
    }

    /// How far the resolution tasks have come.
    pub fn resolution_progress(&self, res: &Resolution) -> Result<ResolutionProgress> {
        let tracker = self.tracker()?;
        let status = |id: &TaskId| -> Result<TaskStatus> {
            Ok(tracker.get(id)?.map_or(TaskStatus::Failed, |t| t.status))
        };
        let mut p = ResolutionProgress {
            resolved: 0,
            total: res.conflict_tasks.len(),
            failed: 0,
            merge_task: status(&res.merge_task)?,
        };
        for t in &res.conflict_tasks {
            match status(&t.task)? {
                TaskStatus::Completed => p.resolved += 1,
                TaskStatus::Failed => p.failed += 1,
                _ => {}
            }
        }
        Ok(p)
    }

    /// Tracks a resolution until every conflict task is completed (or one failed), waking on
    /// task changes; gives up after `timeout` and returns the progress so far.
    pub async fn wait_for_resolution(
        &self,
        res: &Resolution,
        timeout: Duration,
    ) -> Result<ResolutionProgress> {
        let span =
            tracing::info_span!("wait_for_resolution", source = %res.source, target = %res.target);
        self.wait_for_resolution_inner(res, timeout)
            .instrument(span)
            .await
    }

    async fn wait_for_resolution_inner(
        &self,
        res: &Resolution,
        timeout: Duration,
    ) -> Result<ResolutionProgress> {
        let tracker = self.tracker()?;
        // The files wake on each change; a backend is asked again every quarter second.
        let mut watch = match &tracker {
            Tasks::File(t) => Some(t.watch().map_err(|source| Error::Track {
                context: "watch".into(),
                source: Box::new(source),
            })?),
            Tasks::Backend(..) => None,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let p = self.resolution_progress(res)?;
            if p.is_resolved() || p.failed > 0 {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(p);
            }
            match &mut watch {
                Some(w) => {
                    w.changed(left).await.map_err(|source| Error::Track {
                        context: "watch".into(),
                        source: Box::new(source),
                    })?;
                }
                None => tokio::time::sleep(left.min(Duration::from_millis(250))).await,
            }
        }
    }

    /// The open resolution of the pair, rebuilt from the task tracker: the newest merge task
    /// (label `merge`, `merge.source` / `merge.target` metadata, no `merge.path`) that is
    /// neither completed nor failed, with its conflict tasks. `notified` is left empty.
    pub fn open_resolution(&self, source: &str, target: &str) -> Result<Option<Resolution>> {
        let tasks = self.tracker()?.list()?;
        let of_pair = |t: &&Task| {
            t.labels.iter().any(|l| l == TASK_LABEL)
                && t.metadata.get("merge.source").map(String::as_str) == Some(source)
                && t.metadata.get("merge.target").map(String::as_str) == Some(target)
        };
        let Some(merge) = tasks
            .iter()
            .filter(of_pair)
            .filter(|t| !t.metadata.contains_key("merge.path"))
            .filter(|t| !matches!(t.status, TaskStatus::Completed | TaskStatus::Failed))
            .max_by_key(|t| t.created_at)
        else {
            return Ok(None);
        };
        let conflict_tasks = merge
            .dependencies
            .iter()
            .filter_map(|id| tasks.iter().find(|t| &t.id == id))
            .map(|t| ResolutionTask {
                task: t.id.clone(),
                path: t.metadata.get("merge.path").cloned().unwrap_or_default(),
                kind: t
                    .metadata
                    .get("merge.kind")
                    .and_then(|k| {
                        serde_json::from_value(serde_json::Value::String(k.replace('/', "_"))).ok()
                    })
                    .unwrap_or(ConflictKind::Other),
                assigned_to: t.assigned_to.clone(),
            })
            .collect();
        Ok(Some(Resolution {
            source: source.to_owned(),
            target: target.to_owned(),
            conflict_tasks,
            merge_task: merge.id.clone(),
            notified: Vec::new(),
        }))
    }
}

fn meta(prep: &MergePreparation, c: Option<&PreparedConflict>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("merge.source".into(), prep.source.clone());
    m.insert("merge.target".into(), prep.target.clone());
    m.insert("merge.source_commit".into(), prep.source_commit.clone());
    m.insert("merge.target_commit".into(), prep.target_commit.clone());
    if let Some(c) = c {
        m.insert("merge.path".into(), c.conflict.path.clone());
        m.insert("merge.kind".into(), c.conflict.kind.to_string());
        let lines: Vec<String> = c
            .conflict
            .regions
            .iter()
            .map(|r| format!("source {} / target {}", r.source, r.target))
            .collect();
        if !lines.is_empty() {
            m.insert("merge.lines".into(), lines.join("; "));
        }
    }
    m
}

/// Completes the open merge tasks of the pair `source` -> `target` found in `tasks` (a list
/// that may be stale): conflict tasks first, then merge tasks. Returns the tasks that could
/// not be completed.
///
/// The rule: completion is idempotent ([`TaskTracker::complete_blocking`], decided under the
/// tracker lock on the task's current status). A task that someone else started meanwhile
/// (an agent that claimed it) is completed; one already completed (by that agent, or by an
/// earlier or concurrent merge) is left as it is, quietly. An agent completing its own
/// merge task after the merge did should use `complete` too, which then succeeds without a
/// change; a strict `update_status(Completed)` reports that the task is completed already.
/// Only a task that genuinely cannot complete (blocked by a failed conflict task, failed,
/// deleted) is reported.
pub(crate) fn complete_pair_tasks(
    tracker: &Tasks<'_>,
    tasks: &[Task],
    source: &str,
    target: &str,
    note: &str,
) -> Vec<(TaskId, Error)> {
    let open: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.labels.iter().any(|l| l == TASK_LABEL))
        .filter(|t| {
            t.metadata.get("merge.source").map(String::as_str) == Some(source)
                && t.metadata.get("merge.target").map(String::as_str) == Some(target)
        })
        .filter(|t| !matches!(t.status, TaskStatus::Completed | TaskStatus::Failed))
        .collect();
    let (conflicts, merges): (Vec<&Task>, Vec<&Task>) = open
        .into_iter()
        .partition(|t| t.metadata.contains_key("merge.path"));
    let mut failed = Vec::new();
    for t in conflicts.into_iter().chain(merges) {
        if let Err(e) = tracker.complete(&t.id, note) {
            failed.push((t.id.clone(), e));
        }
    }
    failed
}

/// The task graph of the coordinator: the workspace's files, or its backend.
pub(crate) enum Tasks<'a> {
    File(TaskTracker),
    Backend(&'a MergeCoordinator, &'a dyn crate::backend::MergeBackend),
}

impl Tasks<'_> {
    fn track(context: String) -> impl FnOnce(maos_track::Error) -> Error {
        move |source| Error::Track {
            context,
            source: Box::new(source),
        }
    }

    pub(crate) fn list(&self) -> Result<Vec<Task>> {
        match self {
            Tasks::File(t) => t.list_blocking().map_err(Self::track("list".into())),
            Tasks::Backend(c, b) => b.tasks().map_err(|e| c.backend_err("list the tasks", e)),
        }
    }

    pub(crate) fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        match self {
            Tasks::File(t) => t.get_blocking(id).map_err(Self::track(id.to_string())),
            Tasks::Backend(c, b) => b
                .task(id)
                .map_err(|e| c.backend_err(format!("read task {id}"), e)),
        }
    }

    fn create_all(&self, tasks: &[Task], source: &str) -> Result<()> {
        let context = format!("create resolution tasks for {source}");
        match self {
            Tasks::File(t) => t
                .create_tasks_blocking(tasks)
                .map(|_| ())
                .map_err(Self::track(context)),
            Tasks::Backend(c, b) => b.create_tasks(tasks).map_err(|e| c.backend_err(context, e)),
        }
    }

    pub(crate) fn complete(&self, id: &TaskId, note: &str) -> Result<()> {
        match self {
            Tasks::File(t) => t
                .complete_blocking(id, Some(note))
                .map(|_| ())
                .map_err(Self::track(id.to_string())),
            Tasks::Backend(c, b) => b
                .complete_task(id, note)
                .map_err(|e| c.backend_err(format!("complete task {id}"), e)),
        }
    }

    pub(crate) fn fail(&self, id: &TaskId, note: &str) -> Result<()> {
        match self {
            Tasks::File(t) => t
                .update_status_blocking(id, TaskStatus::Failed, Some(note))
                .map(|_| ())
                .map_err(Self::track(id.to_string())),
            Tasks::Backend(c, b) => b
                .fail_task(id, note)
                .map_err(|e| c.backend_err(format!("fail task {id}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maos_core::Workspace;

    /// The list the merge read is stale: meanwhile an agent claimed the conflict task and
    /// another completed the merge task's sibling. Completing the pair still completes every
    /// task and reports nothing.
    #[test]
    fn completing_the_pair_tasks_tolerates_concurrent_starts_and_completions() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let opts = maos_track::Options::default().publish(false);
        let tracker = TaskTracker::open_with(&ws, opts).unwrap();
        let pair = |name: &str, path: Option<&str>| {
            let mut t = Task::new(name);
            t.labels.push(TASK_LABEL.to_owned());
            t.metadata.insert("merge.source".into(), "feat".into());
            t.metadata.insert("merge.target".into(), "main".into());
            if let Some(p) = path {
                t.metadata.insert("merge.path".into(), p.into());
            }
            t
        };
        let c1 = pair("resolve a", Some("a"));
        let c2 = pair("resolve b", Some("b"));
        let m = pair("merge feat", None)
            .after(c1.id.clone())
            .after(c2.id.clone());
        let ids = (c1.id.clone(), c2.id.clone(), m.id.clone());
        tracker.create_tasks_blocking(&[c1, c2, m]).unwrap();
        let (c1, c2, m) = ids;
        let stale = tracker.list_blocking().unwrap();
        // Meanwhile: bob starts c1, alice finishes c2.
        tracker
            .update_status_blocking(&c1, TaskStatus::InProgress, None)
            .unwrap();
        tracker
            .update_status_blocking(&c2, TaskStatus::InProgress, None)
            .unwrap();
        tracker
            .update_status_blocking(&c2, TaskStatus::Completed, Some("by alice"))
            .unwrap();
        let failed = complete_pair_tasks(
            &Tasks::File(tracker.clone()),
            &stale,
            "feat",
            "main",
            "merged",
        );
        assert!(failed.is_empty(), "{failed:?}");
        for id in [&c1, &c2, &m] {
            let t = tracker.get_blocking(id).unwrap().unwrap();
            assert_eq!(t.status, TaskStatus::Completed, "{}", t.name);
        }
        assert_eq!(
            tracker.get_blocking(&c2).unwrap().unwrap().note.as_deref(),
            Some("by alice")
        );
        // A second run over the same stale list is quiet too.
        let failed = complete_pair_tasks(
            &Tasks::File(tracker.clone()),
            &stale,
            "feat",
            "main",
            "merged",
        );
        assert!(failed.is_empty(), "{failed:?}");
    }
}
