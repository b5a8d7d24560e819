//! One demo agent: a separate OS process that claims ready tasks, locks the files it edits in
//! its own worktree, messages the others and commits on its own branch. How it reaches maos
//! (the library, or only an MCP server and Claude Code hooks) is [`Coord`]'s business.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use maos_coordination::merge::{CONFLICT_TASK_LABEL, TASK_LABEL};
use maos_coordination::{AgentId, AgentRole, Task, TaskStatus};
use serde_json::{Value, json};

use super::coord::{Coord, Finish, Held, LockFailure, Messenger, Start, To, Via, reply_to};
use super::repo::{self, Worktree};
use super::shared::Keep;
use super::{API_CHANNEL, AgentEvent, EventKind, SYNC_CHANNEL};
use crate::ctx::Ctx;
use crate::exit::Exit;

/// How long an agent waits for a lock, an answer or the merge queue before it gives up.
const WAIT: Duration = Duration::from_secs(30);

/// The estimate of a task that has none (the merge queue's resolution tasks).
const DEFAULT_ESTIMATE: Duration = Duration::from_secs(15 * 60);

fn emit(agent: &AgentId, event: EventKind, task: Option<&Task>, detail: impl Into<String>) {
    let ev = AgentEvent {
        at: maos_coordination::core::now_ms(),
        agent: agent.to_string(),
        event,
        task: task.map(|t| t.id.to_string()),
        detail: detail.into(),
    };
    let mut out = std::io::stdout().lock();
    // The orchestrator reads these lines; if it is gone there is nobody to tell.
    if let Ok(line) = serde_json::to_string(&ev) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Simulated time: how long an hour of estimated work takes (zero: no waiting at all).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) per_hour: Duration,
}

impl Pace {
    fn work(&self, task: &Task) -> Duration {
        let est = task.estimated_duration.unwrap_or(DEFAULT_ESTIMATE);
        self.per_hour.mul_f64(est.as_secs_f64() / 3600.0)
    }

    /// Sleeps `share` of the task's simulated work.
    async fn spend(&self, task: &Task, share: f64) {
        let d = self.work(task).mul_f64(share);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

struct Agent {
    me: AgentId,
    coord: Coord,
    msg: Messenger,
    wt: Worktree,
    pace: Pace,
    root: std::path::PathBuf,
}

pub(crate) async fn run(
    ctx: &Ctx,
    role: &str,
    via: Via,
    pace: Pace,
    keep: &Keep,
) -> anyhow::Result<Exit> {
    let me = ctx.agent.clone();
    let branch = format!("agent/{me}");
    // Through MCP the agent opens nothing of maos itself: the workspace is its directory.
    let ws = match via {
        Via::Library => ctx.open_workspace()?,
        Via::Mcp => maos_coordination::Workspace::open(&ctx.root)
            .with_context(|| format!("no maos workspace at {}", ctx.root.display()))?,
    };
    let worktree = repo::worktree_path(ws.root(), me.as_str());
    let start = Start {
        role: AgentRole::new(role)?,
        branch: branch.clone(),
        worktree: worktree.clone(),
    };
    let (coord, who) = Coord::start(&ws, &me, via, &start, keep).await?;
    let wt = Worktree::open(&worktree, &branch)?;
    emit(&me, EventKind::Ready, None, who);
    // The backend answers API requests as they come, while it works on its tasks.
    let stop = Arc::new(AtomicBool::new(false));
    let server = (role == "backend").then(|| {
        let (me, msg, stop) = (me.clone(), coord.messenger(), stop.clone());
        tokio::spawn(serve_api(me, msg, stop))
    });
    let mut agent = Agent {
        msg: coord.messenger(),
        me: me.clone(),
        coord,
        wt,
        pace,
        root: ws.root().to_path_buf(),
    };
    let result = agent.work().await;
    stop.store(true, Ordering::Relaxed);
    let mut extra_calls = agent.msg.calls();
    if let Some(s) = server {
        extra_calls += s.await.context("the API server task")??;
    }
    result?;
    let Agent { coord, .. } = agent;
    let (mut stats, stop_said) = coord.end().await?;
    stats.mcp_calls += extra_calls;
    if let Some(s) = stop_said {
        bail!("the Stop hook says the session still holds something: {s}");
    }
    emit(
        &me,
        EventKind::Exiting,
        None,
        serde_json::to_string(&stats)?,
    );
    Ok(Exit::Ok)
}

/// Answers every `implement_api` request addressed to this agent or its role.
async fn serve_api(me: AgentId, mut msg: Messenger, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    while !stop.load(Ordering::Relaxed) {
        for m in msg.receive(API_CHANNEL, Duration::from_millis(300)).await? {
            if m.payload["type"] != "implement_api" {
                continue;
            }
            emit(
                &me,
                EventKind::ApiReceived,
                None,
                format!("from {}", m.sender),
            );
            let endpoints = m.payload["spec"]["endpoints"].clone();
            msg.send(
                API_CHANNEL,
                To::Agent(m.sender.clone()),
                json!({ "type": "api_implemented", "endpoints": endpoints }),
                Some(&m.id.to_string()),
            )
            .await?;
            emit(
                &me,
                EventKind::ApiAnswered,
                None,
                format!("{}'s API request", m.sender),
            );
        }
    }
    Ok(msg.calls())
}

impl Agent {
    async fn work(&mut self) -> anyhow::Result<()> {
        loop {
            match self.coord.claim().await? {
                Some(task) => {
                    emit(
                        &self.me,
                        EventKind::Claimed,
                        Some(&task),
                        format!(
                            "{} ({})",
                            task.name,
                            crate::duration::format(
                                task.estimated_duration.unwrap_or(DEFAULT_ESTIMATE)
                            )
                        ),
                    );
                    match self.perform(&task).await {
                        Ok(note) => match self.coord.complete(&task.id, &note).await {
                            Ok(Finish::Completed) => {
                                emit(&self.me, EventKind::Completed, Some(&task), note);
                            }
                            Ok(Finish::AlreadyCompleted) => {
                                emit(&self.me, EventKind::Closed, Some(&task), note);
                            }
                            // Reported, not fatal: the orchestrator's checks will show it.
                            Err(e) => emit(
                                &self.me,
                                EventKind::Failed,
                                Some(&task),
                                format!("cannot record the outcome: {e:#}"),
                            ),
                        },
                        Err(e) => {
                            let note = format!("{e:#}");
                            if let Err(e2) = self.coord.fail(&task.id, &note).await {
                                emit(
                                    &self.me,
                                    EventKind::Failed,
                                    Some(&task),
                                    format!("{note}; cannot record the failure: {e2:#}"),
                                );
                            } else {
                                emit(&self.me, EventKind::Failed, Some(&task), note);
                            }
                        }
                    }
                }
                None => {
                    let tasks = self.coord.list().await?;
                    if !tasks.is_empty() && tasks.iter().all(|t| t.status == TaskStatus::Completed)
                    {
                        return Ok(());
                    }
                    if tasks.iter().any(|t| t.status == TaskStatus::Failed) {
                        bail!("a task failed: stopping");
                    }
                    emit(&self.me, EventKind::Doing, None, "idle: nothing ready");
                    // Sleep until the tasks change (the fallback only bounds a lost event).
                    self.coord.wait_for_tasks(Duration::from_secs(1)).await?;
                }
            }
        }
    }

    async fn perform(&mut self, task: &Task) -> anyhow::Result<String> {
        if task.labels.iter().any(|l| l == CONFLICT_TASK_LABEL) {
            return self.resolve_conflict(task).await;
        }
        if task.labels.iter().any(|l| l == TASK_LABEL) {
            return self.run_merge(task).await;
        }
        let kind = task
            .metadata
            .get("demo.kind")
            .map(String::as_str)
            .unwrap_or("");
        match kind {
            "edit" => {
                self.doing(task, "thinking");
                self.pace.spend(task, 0.6).await;
                self.edit_and_commit(task).await
            }
            "frontend" => self.implement_frontend(task).await,
            "deadlock" => self.sync_in_order(task).await,
            "review" => self.review(task).await,
            other => bail!("unknown demo task kind {other:?} for task {}", task.name),
        }
    }

    fn doing(&self, task: &Task, what: &str) {
        emit(&self.me, EventKind::Doing, Some(task), what);
    }

    async fn lock(&mut self, task: &Task, path: &str) -> Result<Held, LockFailure> {
        let me = self.me.clone();
        let t = task.clone();
        self.coord
            .lock(path, &task.name, WAIT, |holder| {
                emit(
                    &me,
                    EventKind::LockWaiting,
                    Some(&t),
                    format!("{path} ({holder})"),
                );
            })
            .await
    }

    async fn lock_all(&mut self, task: &Task, paths: &[String]) -> anyhow::Result<Vec<Held>> {
        let mut held = Vec::new();
        for p in paths {
            match self.lock(task, p).await {
                Ok(h) => held.push(h),
                Err(LockFailure::Deadlock(e)) => bail!("{e}"),
                Err(LockFailure::Error(e)) => return Err(e),
            }
        }
        Ok(held)
    }

    async fn unlock_all(&mut self, held: Vec<Held>) -> anyhow::Result<()> {
        for h in held {
            self.coord.unlock(h).await?;
        }
        Ok(())
    }

    /// Locks each file of the task (metadata `demo.files`), edits it in the worktree and
    /// commits on this agent's branch.
    async fn edit_and_commit(&mut self, task: &Task) -> anyhow::Result<String> {
        let files = files_of(task);
        let held = self.lock_all(task, &files).await?;
        let note = self.edit_files(task, &files, 0.4).await;
        self.unlock_all(held).await?;
        note
    }

    /// Edits `files` (locked by the caller) as a coding agent does, spending `share` of the
    /// task's work, and commits them.
    async fn edit_files(
        &mut self,
        task: &Task,
        files: &[String],
        share: f64,
    ) -> anyhow::Result<String> {
        self.doing(task, &format!("editing {}", files.join(", ")));
        self.pace.spend(task, share).await;
        for f in files {
            let old = self.wt.read(f)?;
            let new = edit(old.as_deref().unwrap_or(""), f, task, &self.me);
            self.write(f, old.as_deref(), &new).await?;
        }
        let id = self.wt.commit(self.me.as_str(), &task.name, files)?;
        emit(&self.me, EventKind::Committed, Some(task), files.join(", "));
        Ok(format!("commit {}", &id.to_string()[..8]))
    }

    /// Writes one file in the worktree the way Claude Code's tools do, with its hooks: Read
    /// first (PostToolUse records what was seen), then Edit (or Write for a new file) between
    /// PreToolUse and PostToolUse.
    async fn write(&mut self, rel: &str, old: Option<&str>, new: &str) -> anyhow::Result<()> {
        let file = self.wt.file(rel);
        let input = match old {
            Some(old) => {
                self.coord.read_hook(&file, old).await?;
                edit_input(&file, old, new)
            }
            None => json!({ "file_path": file, "content": new }),
        };
        self.coord.before_edit(&file, &input).await?;
        self.wt.write(rel, new)?;
        self.coord.after_edit(&file, &input).await
    }

    /// The design's `coordinate_with_backend`: ask the backend role for the API on the
    /// shared channel, wait for the answer addressed to us, then build the UI against it.
    async fn implement_frontend(&mut self, task: &Task) -> anyhow::Result<String> {
        // Told before it is sent: the answer can come back before this line is written.
        emit(
            &self.me,
            EventKind::ApiRequested,
            Some(task),
            "asks role backend for the user API (implement_api)",
        );
        let request = self
            .msg
            .send(
                API_CHANNEL,
                To::Role(AgentRole::backend()),
                json!({
                    "type": "implement_api",
                    "spec": { "endpoints": ["GET /users/{id}", "PUT /users/{id}"] },
                    "priority": "high",
                }),
                None,
            )
            .await?;
        self.doing(task, "waiting for the backend's answer");
        let deadline = tokio::time::Instant::now() + WAIT;
        let endpoints = 'wait: loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("the backend did not answer the API request within {WAIT:?}");
            }
            for m in self.msg.receive(API_CHANNEL, left).await? {
                if reply_to(&m).as_deref() == Some(request.as_str()) {
                    break 'wait m.payload["endpoints"].clone();
                }
            }
        };
        let n = endpoints.as_array().map_or(0, Vec::len);
        emit(
            &self.me,
            EventKind::ApiReceived,
            Some(task),
            format!("{n} endpoints"),
        );
        self.doing(task, "building the UI");
        self.pace.spend(task, 0.6).await;
        let note = self.edit_and_commit(task).await?;
        Ok(format!("{n} endpoints from the backend; {note}"))
    }

    /// Takes two locks in the order the task says. Two agents doing this in opposite orders
    /// deadlock; the detector ends the victim's wait with a deadlock error, the victim backs
    /// off (releasing what it holds) and retries in the other's order, so it gets through
    /// once the other is.
    async fn sync_in_order(&mut self, task: &Task) -> anyhow::Result<String> {
        let files = files_of(task);
        let [first, second] = files.as_slice() else {
            bail!("a deadlock task names two files");
        };
        self.pace.spend(task, 0.3).await;
        let g1 = self.lock_all(task, std::slice::from_ref(first)).await?;
        // Barrier: say we hold our first lock, and wait until the partner says so too, so
        // both really wait for each other.
        self.msg
            .send(SYNC_CHANNEL, To::All, json!({ "holding": first }), None)
            .await?;
        self.doing(task, &format!("holding {first}, waiting for the partner"));
        let deadline = tokio::time::Instant::now() + WAIT;
        'barrier: loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("the partner never took {second}");
            }
            for m in self.msg.receive(SYNC_CHANNEL, left).await? {
                if m.sender != self.me && m.payload["holding"] == second.as_str() {
                    break 'barrier;
                }
            }
        }
        self.pace.spend(task, 0.1).await;
        match self.lock(task, second).await {
            Ok(g2) => {
                let note = self.edit_files(task, &files, 0.6).await;
                self.coord.unlock(g2).await?;
                self.unlock_all(g1).await?;
                note.map(|n| format!("took both locks; {n}"))
            }
            Err(LockFailure::Deadlock(_)) => {
                emit(
                    &self.me,
                    EventKind::DeadlockVictim,
                    Some(task),
                    format!("releases {first}, retries in the other's order"),
                );
                self.unlock_all(g1).await?;
                // Retry in the partner's order: wait, holding nothing, for what the partner
                // holds (it gets ours now and finishes), then take ours back. In the same order
                // as the partner no new cycle can form.
                let held = self
                    .lock_all(task, &[second.clone(), first.clone()])
                    .await?;
                let note = self.edit_files(task, &files, 0.6).await;
                self.unlock_all(held).await?;
                note.map(|n| format!("deadlock victim, retried; {n}"))
            }
            Err(LockFailure::Error(e)) => Err(e),
        }
    }

    /// A resolution task created by the merge coordinator: merge the target into this agent's
    /// branch, keeping both sides of each conflicting hunk, and commit. One merge resolves
    /// every conflicting file of the pair, so the pair's other resolution tasks assigned to
    /// this agent are completed with it (one event, not one per file).
    async fn resolve_conflict(&mut self, task: &Task) -> anyhow::Result<String> {
        let source = strip(meta(task, "merge.source")?);
        let target = strip(meta(task, "merge.target")?).to_owned();
        anyhow::ensure!(
            source == self.wt.branch(),
            "the resolution task is for {source}, and this agent works on {}",
            self.wt.branch()
        );
        let siblings: Vec<Task> = self
            .coord
            .list()
            .await?
            .into_iter()
            .filter(|t| {
                t.id != task.id
                    && t.labels.iter().any(|l| l == CONFLICT_TASK_LABEL)
                    && t.metadata.get("merge.source") == task.metadata.get("merge.source")
                    && t.metadata.get("merge.target") == task.metadata.get("merge.target")
                    && matches!(t.status, TaskStatus::Pending | TaskStatus::Blocked)
                    && t.assigned_to.as_ref().is_none_or(|a| *a == self.me)
            })
            .collect();
        let paths: Vec<String> = std::iter::once(task)
            .chain(&siblings)
            .filter_map(|t| t.metadata.get("merge.path").cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.doing(task, &format!("resolving {}", paths.join(", ")));
        self.pace.spend(task, 0.5).await;
        let held = self.lock_all(task, &paths).await?;
        let outcome = self.merge_resolving(task, &target).await;
        self.unlock_all(held).await?;
        let Some((resolved, commit)) = outcome? else {
            return Ok(format!(
                "nothing to resolve: {source} already merges cleanly into {target}"
            ));
        };
        emit(
            &self.me,
            EventKind::Resolved,
            Some(task),
            format!(
                "{} in one merge of {target} ({commit}){}",
                resolved.join(", "),
                if siblings.is_empty() {
                    String::new()
                } else {
                    format!(", closing {} more task(s)", siblings.len())
                }
            ),
        );
        for s in &siblings {
            let note = format!("resolved together with {} in {commit}", task.id);
            self.coord.complete(&s.id, &note).await?;
        }
        Ok(format!(
            "merged {target} into {source} as {commit}, resolving {}",
            resolved.join(", ")
        ))
    }

    /// The merge with its resolved files written through the edit hooks; `None` when nothing
    /// conflicts any more.
    async fn merge_resolving(
        &mut self,
        task: &Task,
        target: &str,
    ) -> anyhow::Result<Option<(Vec<String>, String)>> {
        let pending = self.wt.prepare_merge(target)?;
        if pending.resolved.is_empty() {
            return Ok(None);
        }
        let files: Vec<(String, String)> = pending.resolved.clone();
        for (path, content) in &files {
            let old = self.wt.read(path)?;
            self.write(path, old.as_deref(), content).await?;
        }
        self.pace.spend(task, 0.5).await;
        let id = self.wt.commit_merge(pending, self.me.as_str())?;
        Ok(Some((
            files.into_iter().map(|(p, _)| p).collect(),
            id.to_string()[..8].to_owned(),
        )))
    }

    /// The merge task of a resolution: merge the pair (library), or check it and leave it to
    /// the merge queue (MCP), which completes this task when it merges.
    async fn run_merge(&mut self, task: &Task) -> anyhow::Result<String> {
        let source = meta(task, "merge.source")?.to_owned();
        let target = meta(task, "merge.target")?.to_owned();
        self.pace.spend(task, 1.0).await;
        let (what, moved) = self.coord.merge(&source, &target).await?;
        if moved {
            emit(&self.me, EventKind::Merged, Some(task), what.clone());
        }
        if self.coord.is_mcp() {
            emit(&self.me, EventKind::MergeChecked, Some(task), what.clone());
            self.doing(task, "waiting for the merge queue");
            let deadline = tokio::time::Instant::now() + WAIT;
            while self.coord.get(&task.id).await?.status != TaskStatus::Completed {
                if tokio::time::Instant::now() >= deadline {
                    bail!("the merge queue did not merge {source} within {WAIT:?}");
                }
                self.coord.wait_for_tasks(Duration::from_secs(1)).await?;
            }
        }
        Ok(what)
    }

    /// The reviewer checks that main holds both agents' routes.
    async fn review(&mut self, task: &Task) -> anyhow::Result<String> {
        self.doing(task, "reviewing main");
        self.pace.spend(task, 1.0).await;
        let git = git2::Repository::open(&self.root)?;
        let routes = repo::read(&git, "main", "src/shared/routes.rs")?.unwrap_or_default();
        for needed in ["\"/users\"", "\"/profile\""] {
            if !routes.contains(needed) {
                bail!("main's src/shared/routes.rs lacks route {needed}:\n{routes}");
            }
        }
        Ok("main has both routes".into())
    }
}

fn meta<'a>(task: &'a Task, key: &str) -> anyhow::Result<&'a str> {
    task.metadata
        .get(key)
        .map(String::as_str)
        .with_context(|| format!("task {} has no {key}", task.id))
}

fn strip(branch: &str) -> &str {
    branch.strip_prefix("refs/heads/").unwrap_or(branch)
}

fn files_of(task: &Task) -> Vec<String> {
    task.metadata
        .get("demo.files")
        .map(|s| {
            s.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The edit an agent makes to a file: routes get a route line right after `/health` (so
/// two agents adding routes conflict for real); other files get a line naming the task.
fn edit(old: &str, path: &str, task: &Task, me: &AgentId) -> String {
    if path == "src/shared/routes.rs"
        && let Some(route) = task.metadata.get("demo.route")
    {
        let mut out = String::new();
        for line in old.lines() {
            out.push_str(line);
            out.push('\n');
            if line.trim() == "\"/health\"," {
                out.push_str(&format!("    \"{route}\",\n"));
            }
        }
        return out;
    }
    format!("{old}// {} ({me})\n", task.name)
}

/// Claude Code's Edit input for changing `old` into `new`: the lines that differ (with one
/// line of context for an insertion: `old_string` is never empty).
fn edit_input(file: &Path, old: &str, new: &str) -> Value {
    let o: Vec<&str> = old.split_inclusive('\n').collect();
    let n: Vec<&str> = new.split_inclusive('\n').collect();
    let pre = o.iter().zip(&n).take_while(|(a, b)| a == b).count();
    let room = o.len().min(n.len()) - pre;
    let suf = o
        .iter()
        .rev()
        .zip(n.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    let (mut from, mut old_to, mut new_to) = (pre, o.len() - suf, n.len() - suf);
    if from == old_to {
        if from > 0 {
            from -= 1;
        } else if old_to < o.len() {
            old_to += 1;
            new_to += 1;
        }
    }
    json!({
        "file_path": file,
        "old_string": o[from..old_to].concat(),
        "new_string": n[from..new_to].concat(),
    })
}

/// Metadata helper for the orchestrator: the demo keys of a task.
pub(crate) fn demo_meta(
    kind: &str,
    files: &[&str],
    route: Option<&str>,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("demo.kind".into(), kind.into());
    m.insert("demo.files".into(), files.join(","));
    if let Some(r) = route {
        m.insert("demo.route".into(), r.into());
    }
    m
}
