//! Merge preparation, resolution coordination and automated merging.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Oid, Repository};
use maos_comm::FileChannel;
use maos_core::{AgentId, Message, Recipients, ResourceName, TaskId, Workspace};
use maos_lock::{FileLock, LockGuard};
use maos_track::{Task, TaskStatus, TaskTracker};
use serde::{Deserialize, Serialize};

use crate::detect::{
    Conflict, ConflictDetector, ConflictKind, DetectOptions, Engine, LineRange, MergeCheck,
    PairResult, Prediction, Relation, check_with, engine_options, history, merge_commits,
    resolve_commit, write_tree,
};
use crate::error::{Error, GitContext as _, Result};
use crate::touch::{AGENT_TRAILER, Actor, blame, branch_agents, short_branch, touches};

/// Label carried by every task maos-merge creates.
pub const TASK_LABEL: &str = "merge";
/// Label of the per-conflict resolution tasks.
pub const CONFLICT_TASK_LABEL: &str = "merge-conflict";
/// How long a merge waits for the merge lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(120);

/// The lock resource that serialises merges into `target`: `.maos/merge/<target>`.
pub fn merge_lock_resource(target: &str) -> Result<ResourceName> {
    let name = format!(".maos/merge/{}", short_branch(target));
    ResourceName::new(&name).map_err(|source| Error::Core {
        context: format!("merge lock name {name}"),
        source,
    })
}

/// Which side of a merge a file changed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Only the source changed it since the merge base.
    Source,
    /// Only the target changed it.
    Target,
    /// Both did.
    Both,
}

/// A file the merge involves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffectedFile {
    /// The path.
    pub path: String,
    /// Who changed it since the merge base.
    pub side: Side,
    /// Whether it is part of a conflict.
    pub conflicted: bool,
    /// The source side's actors, most recent first.
    pub source_actors: Vec<Actor>,
    /// The target side's actors, most recent first.
    pub target_actors: Vec<Actor>,
}

/// A conflict with the people behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedConflict {
    /// The conflict.
    #[serde(flatten)]
    pub conflict: Conflict,
    /// Source side: who last changed the conflicting lines (content conflicts), else who
    /// changed the file since the merge base.
    pub source_actors: Vec<Actor>,
    /// Target side, likewise.
    pub target_actors: Vec<Actor>,
    /// Who should resolve it (see [`MergeStrategy::Manual`] for the rule).
    pub suggested_resolver: Option<AgentId>,
}

/// How to carry out a merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum MergeStrategy {
    /// The target already contains the source: nothing to do.
    UpToDate,
    /// The target is an ancestor of the source: move the target to the source.
    FastForward,
    /// Diverged, no conflicts: a merge commit, automatically.
    CleanMerge,
    /// Conflicts: a human or agent resolves each one first. The suggested resolver of a
    /// conflict is (1) the agent who last changed the conflicting lines on the source side
    /// (blame; for conflicts without line ranges, the most recent agent who changed the file
    /// on the source side), else (2) the same on the target side, else (3) the agent the
    /// registry maps the source branch to, then the target branch's, else nobody (the task is
    /// left for anyone to claim). The source goes first because its agent is the one
    /// integrating: it merges the target into its branch, resolves, and the merge then runs
    /// clean, while the shared target stays untouched.
    Manual {
        /// Per conflicted path, the suggested resolver.
        resolvers: BTreeMap<String, Option<AgentId>>,
    },
}

impl MergeStrategy {
    /// A short name: `up_to_date`, `fast_forward`, `clean_merge`, `manual`.
    pub fn name(&self) -> &'static str {
        match self {
            MergeStrategy::UpToDate => "up_to_date",
            MergeStrategy::FastForward => "fast_forward",
            MergeStrategy::CleanMerge => "clean_merge",
            MergeStrategy::Manual { .. } => "manual",
        }
    }
}

/// Everything known about a merge before doing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergePreparation {
    /// The source revision.
    pub source: String,
    /// The target branch.
    pub target: String,
    /// The source commit (hex).
    pub source_commit: String,
    /// The target commit (hex).
    pub target_commit: String,
    /// The merge base (hex).
    pub merge_base: Option<String>,
    /// The conflicts, with who is behind each side.
    pub conflicts: Vec<PreparedConflict>,
    /// Every file changed on either side since the merge base.
    pub affected_files: Vec<AffectedFile>,
    /// Per agent (or author, when no agent is known), the affected files they changed.
    pub agent_modifications: BTreeMap<String, Vec<String>>,
    /// What to do.
    pub suggested_strategy: MergeStrategy,
}

impl MergePreparation {
    /// True when the merge needs no resolution.
    pub fn is_clean(&self) -> bool {
        self.conflicts.is_empty()
    }
}

/// One resolution task of a [`Resolution`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionTask {
    /// The task.
    pub task: TaskId,
    /// The conflicted path.
    pub path: String,
    /// Its kind.
    pub kind: ConflictKind,
    /// Who it is assigned to.
    pub assigned_to: Option<AgentId>,
}

/// The tasks and messages created for a conflicted merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The source revision.
    pub source: String,
    /// The target branch.
    pub target: String,
    /// One task per conflict.
    pub conflict_tasks: Vec<ResolutionTask>,
    /// The merge itself, depending on every conflict task.
    pub merge_task: TaskId,
    /// The agents that were sent a message.
    pub notified: Vec<AgentId>,
}

/// How far a [`Resolution`] has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolutionProgress {
    /// Conflict tasks completed.
    pub resolved: usize,
    /// Conflict tasks in all.
    pub total: usize,
    /// Conflict tasks that failed.
    pub failed: usize,
    /// The merge task's status.
    pub merge_task: TaskStatus,
}

impl ResolutionProgress {
    /// Every conflict task is completed.
    pub fn is_resolved(&self) -> bool {
        self.resolved == self.total
    }
}

/// One file of a [`ConflictNotice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeFile {
    /// The conflicted path.
    pub path: String,
    /// The conflict kind.
    pub kind: ConflictKind,
    /// The conflicting line ranges in the recipient's side's version (source side if the
    /// recipient changed it there, else target side).
    pub lines: Vec<LineRange>,
    /// The resolution task.
    pub task: TaskId,
    /// Whether the recipient is the suggested resolver.
    pub you_resolve: bool,
}

/// The payload of the direct message an affected agent receives
/// (`"type": "merge_conflicts"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictNotice {
    /// Always `merge_conflicts`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The source revision.
    pub source: String,
    /// The target branch.
    pub target: String,
    /// The recipient's conflicted files.
    pub files: Vec<NoticeFile>,
    /// The merge task.
    pub merge_task: TaskId,
}

/// What an automated merge did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MergeOutcome {
    /// Nothing to merge.
    UpToDate {
        /// The target commit.
        commit: String,
    },
    /// The target moved forward to the source.
    FastForward {
        /// The old target commit.
        from: String,
        /// The new one (the source).
        to: String,
    },
    /// A merge commit was created and the target moved to it.
    Merged {
        /// The old target commit.
        from: String,
        /// The merge commit.
        commit: String,
    },
    /// The merge conflicts; nothing changed.
    Conflicts(MergeCheck),
}

/// Options of a [`MergeCoordinator`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoordinatorOptions {
    /// How long to wait for the merge lock.
    pub lock_wait: Duration,
    /// Compute blame for content conflicts (default true).
    pub blame: bool,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            lock_wait: DEFAULT_LOCK_WAIT,
            blame: true,
        }
    }
}

/// Prepares, coordinates and performs merges in one repository shared by many agents.
#[derive(Debug, Clone)]
pub struct MergeCoordinator {
    ws: Workspace,
    agent: AgentId,
    detector: ConflictDetector,
    options: CoordinatorOptions,
}

impl MergeCoordinator {
    /// A coordinator acting as `agent`, on the git repository at or above the workspace root.
    pub fn new(ws: &Workspace, agent: AgentId) -> Result<Self> {
        Self::with_repository(ws, agent, ws.root())
    }

    /// A coordinator on the repository at or above `repo`.
    pub fn with_repository(ws: &Workspace, agent: AgentId, repo: &Path) -> Result<Self> {
        Ok(Self {
            ws: ws.clone(),
            agent,
            detector: ConflictDetector::open(repo)?,
            options: CoordinatorOptions::default(),
        })
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: CoordinatorOptions) -> Self {
        self.options = options;
        self
    }

    /// The detector.
    pub fn detector(&self) -> &ConflictDetector {
        &self.detector
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// The acting agent.
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }

    fn lock(&self, target: &str, purpose: &str) -> Result<LockGuard> {
        let resource = merge_lock_resource(target)?;
        let err = |source| Error::Lock {
            resource: resource.to_string(),
            source: Box::new(source),
        };
        FileLock::new(&self.ws, resource.clone())
            .agent(self.agent.clone())
            .wait(self.options.lock_wait)
            .acquire_blocking(purpose)
            .map_err(err)
    }

    fn release(guard: LockGuard) {
        if let Err(e) = guard.release() {
            tracing::warn!(error = %e, "releasing the merge lock failed");
        }
    }

    /// Which registered agents' branches would conflict, with `target` and with each other:
    /// every agent whose registry record names a branch. With `include_worktrees`, an agent
    /// whose record also names a worktree is checked with that worktree's uncommitted
    /// changes ([`ConflictDetector::snapshot_worktree`]). Results name branches
    /// (`<branch> (<agent>)`), not snapshot commits.
    pub fn predict_agents(&self, target: &str, include_worktrees: bool) -> Result<Prediction> {
        let span = tracing::info_span!("predict_agents", target, include_worktrees);
        let _enter = span.enter();
        let list = maos_core::AgentRegistry::new(&self.ws)
            .list()
            .map_err(|source| Error::Core {
                context: "read the agent registry".into(),
                source,
            })?;
        let mut revs = Vec::new();
        let mut labels = Vec::new();
        for rec in list.agents {
            let Some(branch) = rec.branch.clone() else {
                continue;
            };
            let rev = match (&rec.worktree, include_worktrees) {
                (Some(wt), true) => self.detector.snapshot_worktree(wt)?,
                _ => branch.clone(),
            };
            revs.push(rev);
            labels.push(format!("{} ({})", short_branch(&branch), rec.id));
        }
        let mut p = self.detector.predict(&revs, target)?;
        let rename = |r: &mut PairResult| {
            for (rev, label) in revs.iter().zip(&labels) {
                if &r.source == rev {
                    r.source = label.clone();
                }
                if &r.target == rev {
                    r.target = label.clone();
                }
            }
        };
        p.vs_target.iter_mut().for_each(rename);
        p.pairwise.iter_mut().for_each(rename);
        Ok(p)
    }

    /// Predicts the merge of `source` into `target` under the merge lock, with who touched
    /// what and the suggested strategy.
    pub async fn prepare_merge(&self, source: &str, target: &str) -> Result<MergePreparation> {
        let this = self.clone();
        let (s, t) = (source.to_owned(), target.to_owned());
        join(tokio::task::spawn_blocking(move || this.prepare_merge_blocking(&s, &t)).await)
    }

    /// [`MergeCoordinator::prepare_merge`] for synchronous callers.
    pub fn prepare_merge_blocking(&self, source: &str, target: &str) -> Result<MergePreparation> {
        let span = tracing::info_span!("prepare_merge", source, target, agent = %self.agent);
        let _enter = span.enter();
        let guard = self.lock(target, &format!("prepare merge of {source} into {target}"))?;
        let result = self.prepare_unlocked(source, target);
        Self::release(guard);
        result
    }

    /// The preparation without taking the lock (the caller holds it, or accepts a snapshot).
    pub fn prepare_unlocked(&self, source: &str, target: &str) -> Result<MergePreparation> {
        let repo = self.detector.repository()?;
        let options = DetectOptions::default();
        let engine = Engine::new(&repo, engine_options(&options));
        let check = check_with(&engine, &options, source, target)?;
        let agents = branch_agents(&self.ws);
        let source_agent = agents.get(short_branch(source));
        let target_agent = agents.get(short_branch(target));
        let s_oid = Oid::from_str(&check.source_commit).git("parse oid")?;
        let t_oid = Oid::from_str(&check.target_commit).git("parse oid")?;
        let base = check
            .merge_base
            .as_deref()
            .map(Oid::from_str)
            .transpose()
            .git("parse oid")?;
        let source_touch = touches(&repo, base, s_oid, source_agent, None)?;
        let target_touch = match check.relation {
            Relation::UpToDate => BTreeMap::new(),
            _ => touches(&repo, base, t_oid, target_agent, None)?,
        };
        let conflicted: BTreeSet<String> = check
            .conflicts
            .iter()
            .flat_map(|c| {
                let mut p = c.paths();
                p.extend(c.ancestor.iter().map(|a| a.path.clone()));
                p
            })
            .collect();
        let mut affected = Vec::new();
        let all: BTreeSet<&String> = source_touch.keys().chain(target_touch.keys()).collect();
        for p in all {
            let s = source_touch.get(p).cloned().unwrap_or_default();
            let t = target_touch.get(p).cloned().unwrap_or_default();
            let side = match (s.is_empty(), t.is_empty()) {
                (false, false) => Side::Both,
                (false, true) => Side::Source,
                _ => Side::Target,
            };
            affected.push(AffectedFile {
                path: p.clone(),
                side,
                conflicted: conflicted.contains(p),
                source_actors: s,
                target_actors: t,
            });
        }
        let mut agent_modifications: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in &affected {
            let mut seen = BTreeSet::new();
            for a in f.source_actors.iter().chain(&f.target_actors) {
                if seen.insert(a.label()) {
                    agent_modifications
                        .entry(a.label())
                        .or_default()
                        .push(f.path.clone());
                }
            }
        }
        let mut conflicts = Vec::with_capacity(check.conflicts.len());
        for c in &check.conflicts {
            let file_actors = |touch: &BTreeMap<String, Vec<Actor>>, e: &Option<_>| {
                let mut v: Vec<Actor> = Vec::new();
                let paths = [
                    e.as_ref().map(|e: &crate::ConflictEntry| e.path.clone()),
                    c.ancestor.as_ref().map(|a| a.path.clone()),
                ];
                for p in paths.into_iter().flatten() {
                    for a in touch.get(&p).into_iter().flatten() {
                        if !v.contains(a) {
                            v.push(a.clone());
                        }
                    }
                }
                v
            };
            let (mut s_actors, mut t_actors) = (Vec::new(), Vec::new());
            if c.kind == ConflictKind::Content && self.options.blame {
                for r in &c.regions {
                    if let Some(e) = &c.source {
                        for a in blame(&repo, e, s_oid, base, r.source, source_agent)? {
                            if !s_actors.contains(&a) {
                                s_actors.push(a);
                            }
                        }
                    }
                    if let Some(e) = &c.target {
                        for a in blame(&repo, e, t_oid, base, r.target, target_agent)? {
                            if !t_actors.contains(&a) {
                                t_actors.push(a);
                            }
                        }
                    }
                }
            }
            if s_actors.is_empty() {
                s_actors = file_actors(&source_touch, &c.source);
            }
            if t_actors.is_empty() {
                t_actors = file_actors(&target_touch, &c.target);
            }
            let suggested_resolver = s_actors
                .iter()
                .chain(&t_actors)
                .find_map(|a| a.agent.clone())
                .or_else(|| source_agent.cloned())
                .or_else(|| target_agent.cloned());
            conflicts.push(PreparedConflict {
                conflict: c.clone(),
                source_actors: s_actors,
                target_actors: t_actors,
                suggested_resolver,
            });
        }
        let suggested_strategy = match check.relation {
            Relation::UpToDate => MergeStrategy::UpToDate,
            Relation::FastForward => MergeStrategy::FastForward,
            _ if conflicts.is_empty() => MergeStrategy::CleanMerge,
            _ => MergeStrategy::Manual {
                resolvers: conflicts
                    .iter()
                    .map(|c| (c.conflict.path.clone(), c.suggested_resolver.clone()))
                    .collect(),
            },
        };
        tracing::info!(
            conflicts = conflicts.len(),
            affected = affected.len(),
            strategy = suggested_strategy.name(),
            "merge prepared"
        );
        Ok(MergePreparation {
            source: source.to_owned(),
            target: target.to_owned(),
            source_commit: check.source_commit,
            target_commit: check.target_commit,
            merge_base: check.merge_base,
            conflicts,
            affected_files: affected,
            agent_modifications,
            suggested_strategy,
        })
    }

    /// Creates one resolution task per conflict (assigned to its suggested resolver), the merge
    /// itself as a task depending on them, and sends each affected agent a direct message
    /// ([`ConflictNotice`]) naming its conflicting files and line ranges.
    pub async fn coordinate_resolution(&self, prep: &MergePreparation) -> Result<Resolution> {
        let this = self.clone();
        let prep = prep.clone();
        join(tokio::task::spawn_blocking(move || this.coordinate_resolution_blocking(&prep)).await)
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
        tracker
            .create_tasks_blocking(&tasks)
            .map_err(|source| Error::Track {
                context: format!("create resolution tasks for {}", prep.source),
                source: Box::new(source),
            })?;
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
            let inbox = FileChannel::inbox(&self.ws, &agent).map_err(err)?;
            let msg = Message::new(self.agent.clone(), Recipients::Agent(agent.clone()), notice);
            inbox.send_blocking(&msg).map_err(err)?;
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

    fn tracker(&self) -> Result<TaskTracker> {
        TaskTracker::open(&self.ws).map_err(|source| Error::Track {
            context: "open tracker".into(),
            source: Box::new(source),
        })
    }

    /// How far the resolution tasks have come.
    pub fn resolution_progress(&self, res: &Resolution) -> Result<ResolutionProgress> {
        let tracker = self.tracker()?;
        let status = |id: &TaskId| -> Result<TaskStatus> {
            Ok(tracker
                .get_blocking(id)
                .map_err(|source| Error::Track {
                    context: id.to_string(),
                    source: Box::new(source),
                })?
                .map_or(TaskStatus::Failed, |t| t.status))
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
        let _enter = span.enter();
        let tracker = self.tracker()?;
        let mut watch = tracker.watch().map_err(|source| Error::Track {
            context: "watch".into(),
            source: Box::new(source),
        })?;
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
            watch.changed(left).await.map_err(|source| Error::Track {
                context: "watch".into(),
                source: Box::new(source),
            })?;
        }
    }

    /// Merges `source` into the branch `target` if it merges cleanly: a fast-forward or a
    /// merge commit, under the merge lock, moving the target by compare-and-swap. Returns
    /// [`MergeOutcome::Conflicts`] (changing nothing) when it does not.
    pub async fn merge(&self, source: &str, target: &str) -> Result<MergeOutcome> {
        let this = self.clone();
        let (s, t) = (source.to_owned(), target.to_owned());
        join(tokio::task::spawn_blocking(move || this.merge_blocking(&s, &t)).await)
    }

    /// [`MergeCoordinator::merge`] for synchronous callers.
    pub fn merge_blocking(&self, source: &str, target: &str) -> Result<MergeOutcome> {
        let span = tracing::info_span!("merge", source, target, agent = %self.agent);
        let _enter = span.enter();
        let guard = self.lock(target, &format!("merge {source} into {target}"))?;
        let result = self.merge_locked(source, target, None);
        Self::release(guard);
        self.after_merge(source, target, &result);
        result
    }

    /// Like [`MergeCoordinator::merge_blocking`], but moves the target only if it still
    /// points at `expected` (the commit the caller checked): the ref update is a
    /// compare-and-swap against it, so any move since fails with
    /// [`Error::ConcurrentUpdate`].
    pub fn merge_expecting(
        &self,
        source: &str,
        target: &str,
        expected: &str,
    ) -> Result<MergeOutcome> {
        let span = tracing::info_span!("merge", source, target, expected, agent = %self.agent);
        let _enter = span.enter();
        let expected = Oid::from_str(expected).map_err(|source| Error::UnknownRevision {
            rev: expected.to_owned(),
            source,
        })?;
        let guard = self.lock(target, &format!("merge {source} into {target}"))?;
        let result = self.merge_locked(source, target, Some(expected));
        Self::release(guard);
        self.after_merge(source, target, &result);
        result
    }

    /// The open resolution of the pair, rebuilt from the task tracker: the newest merge task
    /// (label `merge`, `merge.source` / `merge.target` metadata, no `merge.path`) that is
    /// neither completed nor failed, with its conflict tasks. `notified` is left empty.
    pub fn open_resolution(&self, source: &str, target: &str) -> Result<Option<Resolution>> {
        let tracker = self.tracker()?;
        let tasks = tracker.list_blocking().map_err(|source| Error::Track {
            context: "list".into(),
            source: Box::new(source),
        })?;
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

    /// After a successful merge, completes the open resolution tasks of the pair (tasks
    /// labelled `merge` whose `merge.source` / `merge.target` metadata name it): conflict
    /// tasks first (their conflicts are gone), then the merge task. Failures only log: the
    /// merge itself is done.
    fn after_merge(&self, source: &str, target: &str, result: &Result<MergeOutcome>) {
        let note = match result {
            Ok(MergeOutcome::Merged { commit, .. }) => format!("merged as {commit}"),
            Ok(MergeOutcome::FastForward { to, .. }) => format!("fast-forwarded to {to}"),
            Ok(MergeOutcome::UpToDate { commit }) => format!("already contained in {commit}"),
            Ok(MergeOutcome::Conflicts(_)) | Err(_) => return,
        };
        let Ok(tracker) = self.tracker() else { return };
        let Ok(tasks) = tracker.list_blocking() else {
            return;
        };
        for (task, e) in complete_pair_tasks(&tracker, &tasks, source, target, &note) {
            tracing::warn!(task = %task, error = %e, "cannot complete a merge task");
        }
    }

    fn merge_locked(
        &self,
        source: &str,
        target: &str,
        expected: Option<Oid>,
    ) -> Result<MergeOutcome> {
        let repo = self.detector.repository()?;
        let refname = if target.starts_with("refs/heads/") {
            target.to_owned()
        } else {
            format!("refs/heads/{target}")
        };
        let reference = repo
            .find_reference(&refname)
            .map_err(|_| Error::TargetNotBranch {
                target: target.to_owned(),
            })?;
        let current = reference.target().ok_or_else(|| Error::TargetNotBranch {
            target: target.to_owned(),
        })?;
        // The commit the merge is computed against and the CAS expects.
        let old = expected.unwrap_or(current);
        let src = resolve_commit(&repo, source)?;
        let options = DetectOptions::default();
        let engine = Engine::new(&repo, engine_options(&options));
        let relation = history(&engine, src.id(), old)?.relation;
        if relation == Relation::UpToDate {
            return Ok(MergeOutcome::UpToDate {
                commit: old.to_string(),
            });
        }
        if relation == Relation::Unrelated {
            return Err(Error::UnrelatedHistories {
                source_rev: source.to_owned(),
                target: target.to_owned(),
            });
        }
        let checkouts = checked_out(&repo, &refname)?;
        for wt in &checkouts {
            ensure_clean(wt, &refname)?;
        }
        let new = match relation {
            Relation::FastForward => src.id(),
            _ => {
                let tgt = repo.find_commit(old).git("read commit")?;
                let merged = merge_commits(&engine, old, src.id())?;
                if !merged.conflicts.is_empty() {
                    let check = check_with(&engine, &options, source, target)?;
                    return Ok(MergeOutcome::Conflicts(check));
                }
                let tree_id = write_tree(&engine, &merged.entries)?;
                let tree = repo.find_tree(tree_id).git("read tree")?;
                let sig = repo
                    .signature()
                    .or_else(|_| git2::Signature::now("maos", "maos@localhost"))
                    .git("signature")?;
                let msg = format!(
                    "Merge {} into {}\n\nMerged by maos for {}: {} into {}.\n\n{}: {}\n",
                    describe_rev(source),
                    short_branch(target),
                    self.agent,
                    src.id(),
                    old,
                    AGENT_TRAILER,
                    self.agent
                );
                repo.commit(None, &sig, &sig, &msg, &tree, &[&tgt, &src])
                    .git("write merge commit")?
            }
        };
        let log = format!(
            "maos merge: {} into {}",
            describe_rev(source),
            short_branch(target)
        );
        let cas_error = |source_err| Error::ConcurrentUpdate {
            branch: refname.clone(),
            expected: old.to_string(),
            source: source_err,
        };
        if !checkouts.is_empty() {
            // A checkout is updated before the ref moves (a safe checkout compares against
            // HEAD, the old commit, and never overwrites a file changed since): first make
            // sure the target has not moved already.
            if current != old {
                return Err(cas_error(git2::Error::from_str(&format!(
                    "{refname} is at {current}"
                ))));
            }
            for wt in &checkouts {
                let mut co = git2::build::CheckoutBuilder::new();
                co.safe();
                let c = wt.find_commit(new).git("read commit")?;
                wt.checkout_tree(c.as_object(), Some(&mut co))
                    .git("update the checked-out target")?;
            }
        }
        if let Err(e) = repo.reference_matching(&refname, new, true, old, &log) {
            // Someone moved the target in the instant since the check: put the checkouts
            // back to the old commit (they were clean there) and report.
            for wt in &checkouts {
                let mut co = git2::build::CheckoutBuilder::new();
                co.force();
                if let Ok(c) = wt.find_commit(old)
                    && let Err(e) = wt.checkout_tree(c.as_object(), Some(&mut co))
                {
                    tracing::warn!(worktree = ?wt.workdir(), error = %e, "cannot restore the checkout");
                }
            }
            return Err(cas_error(e));
        }
        tracing::info!(from = %old, to = %new, "target moved");
        Ok(match relation {
            Relation::FastForward => MergeOutcome::FastForward {
                from: old.to_string(),
                to: new.to_string(),
            },
            _ => MergeOutcome::Merged {
                from: old.to_string(),
                commit: new.to_string(),
            },
        })
    }
}

fn describe_rev(rev: &str) -> String {
    if Oid::from_str(rev).is_ok() && rev.len() >= 7 {
        format!("commit {rev}")
    } else {
        format!("branch '{}'", short_branch(rev))
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

/// The worktrees (main and linked) whose HEAD is the branch `refname`.
fn checked_out(repo: &Repository, refname: &str) -> Result<Vec<Repository>> {
    let mut out = Vec::new();
    let head_is = |r: &Repository| {
        r.find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(|t| t == refname))
            .unwrap_or(false)
    };
    // The main worktree (the repository itself, unless bare).
    let main_dir: PathBuf = repo.commondir().to_path_buf();
    if let Ok(main) = Repository::open(&main_dir)
        && !main.is_bare()
        && head_is(&main)
    {
        out.push(main);
    }
    if let Ok(names) = repo.worktrees() {
        for name in names.iter().filter_map(|n| n.ok().flatten()) {
            if let Ok(wt) = repo.find_worktree(name)
                && let Ok(r) = Repository::open_from_worktree(&wt)
                && head_is(&r)
            {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Fails with [`Error::DirtyCheckout`] when `wt` has uncommitted changes to tracked files.
fn ensure_clean(wt: &Repository, refname: &str) -> Result<()> {
    let mut so = git2::StatusOptions::new();
    so.include_untracked(false).include_ignored(false);
    let statuses = wt.statuses(Some(&mut so)).git("status")?;
    let changed: Vec<String> = statuses
        .iter()
        .filter(|s| s.status() != git2::Status::CURRENT)
        .filter_map(|s| s.path().ok().map(str::to_owned))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let mut list: Vec<String> = changed.iter().take(5).cloned().collect();
    if changed.len() > 5 {
        list.push(format!("and {} more", changed.len() - 5));
    }
    Err(Error::DirtyCheckout {
        branch: short_branch(refname).to_owned(),
        worktree: wt.workdir().map(Path::to_path_buf).unwrap_or_default(),
        changes: list.join(", "),
    })
}

fn join<T>(r: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| Error::Join(e.to_string()))?
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
fn complete_pair_tasks(
    tracker: &TaskTracker,
    tasks: &[Task],
    source: &str,
    target: &str,
    note: &str,
) -> Vec<(TaskId, maos_track::Error)> {
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
        if let Err(e) = tracker.complete_blocking(&t.id, Some(note)) {
            failed.push((t.id.clone(), e));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let failed = complete_pair_tasks(&tracker, &stale, "feat", "main", "merged");
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
        let failed = complete_pair_tasks(&tracker, &stale, "feat", "main", "merged");
        assert!(failed.is_empty(), "{failed:?}");
    }

    #[test]
    fn the_merge_lock_is_per_target_branch() {
        assert_eq!(
            merge_lock_resource("main").unwrap().as_str(),
            ".maos/merge/main"
        );
        assert_eq!(
            merge_lock_resource("refs/heads/release/1.0")
                .unwrap()
                .as_str(),
            ".maos/merge/release/1.0"
        );
        assert!(merge_lock_resource("../x").is_err());
    }

    #[test]
    fn strategy_names() {
        assert_eq!(MergeStrategy::FastForward.name(), "fast_forward");
        let m = MergeStrategy::Manual {
            resolvers: BTreeMap::new(),
        };
        assert_eq!(serde_json::to_value(&m).unwrap()["strategy"], "manual");
    }
}
