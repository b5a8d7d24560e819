//! One demo agent: a separate OS process that claims ready tasks, locks the files it edits,
//! messages the others and commits on its own branch.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use maos_coordination::comm::{ChannelWatcher, Cursor, FileChannel, Filter};
use maos_coordination::core::ProcessIdentity;
use maos_coordination::lock::FileLock;
use maos_coordination::merge::{CONFLICT_TASK_LABEL, MergeCoordinator, TASK_LABEL};
use maos_coordination::track::{Task, TaskStatus, TaskTracker};
use maos_coordination::{
    AgentId, AgentRegistry, AgentRole, ChannelName, Message, Recipients, Registration,
    ResourceName, Workspace,
};
use serde_json::json;

use super::{API_CHANNEL, AgentEvent, EventKind, SYNC_CHANNEL, repo};
use crate::ctx::Ctx;
use crate::exit::Exit;

/// How long an agent waits for a lock or an answer before it gives up on the task.
const WAIT: Duration = Duration::from_secs(20);

struct Agent {
    ws: Workspace,
    me: AgentId,
    branch: String,
    repo: git2::Repository,
    tracker: TaskTracker,
    api: FileChannel,
    api_cursor: Cursor,
    api_filter: Filter,
}

fn emit(agent: &AgentId, event: EventKind, task: Option<&Task>, detail: impl Into<String>) {
    let ev = AgentEvent {
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

pub(crate) async fn run(ctx: &Ctx, role: &str) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let me = ctx.agent.clone();
    let branch = format!("agent/{me}");
    AgentRegistry::new(&ws).register(
        Registration::new(me.clone())
            .role(AgentRole::new(role)?)
            .branch(branch.clone())
            .process(ProcessIdentity::current()),
    )?;
    let api = FileChannel::open(&ws, ChannelName::new(API_CHANNEL)?)?;
    let mut agent = Agent {
        repo: git2::Repository::open(ws.root()).context("opening the demo repository")?,
        tracker: TaskTracker::open(&ws)?,
        api_cursor: Cursor::start(),
        api_filter: Filter::for_agent(&ws, me.clone())?,
        api,
        ws,
        me,
        branch,
    };
    let mut tasks_changed = agent.tracker.watch()?;
    // Wakes this agent when a message addressed to it arrives on the API channel (its
    // content is read by `serve_api_requests`, which keeps its own cursor).
    let mut api_watch = ChannelWatcher::from_cursor(
        agent.api.clone(),
        agent.api.end_cursor()?,
        agent.api_filter.clone(),
    )?;
    emit(&agent.me, EventKind::Ready, None, role);
    loop {
        if role == "backend" {
            agent.serve_api_requests()?;
        }
        match agent.tracker.claim_blocking(&agent.me)? {
            Some(task) => {
                emit(
                    &agent.me,
                    EventKind::Claimed,
                    Some(&task),
                    task.name.clone(),
                );
                // `complete` is idempotent: a merge task may already have been completed by
                // the merge that this agent just ran.
                let (kind, recorded) = match agent.perform(&task).await {
                    Ok(note) => (
                        EventKind::Completed,
                        agent
                            .tracker
                            .complete_blocking(&task.id, Some(&note))
                            .map(|_| note),
                    ),
                    Err(e) => {
                        let note = format!("{e:#}");
                        (
                            EventKind::Failed,
                            agent
                                .tracker
                                .update_status_blocking(&task.id, TaskStatus::Failed, Some(&note))
                                .map(|_| note),
                        )
                    }
                };
                match recorded {
                    Ok(note) => emit(&agent.me, kind, Some(&task), note),
                    // Reported, not fatal: the orchestrator's checks will show it.
                    Err(e) => emit(
                        &agent.me,
                        EventKind::Failed,
                        Some(&task),
                        format!("cannot record the outcome: {:#}", anyhow::Error::new(e)),
                    ),
                }
            }
            None => {
                let tasks = agent.tracker.list_blocking()?;
                if !tasks.is_empty() && tasks.iter().all(|t| t.status == TaskStatus::Completed) {
                    break;
                }
                // Sleep until the tasks change or a message arrives (file events; the
                // fallback timers only bound the cost of a lost event).
                tokio::select! {
                    r = tasks_changed.changed(Duration::from_secs(2)) => { r?; }
                    r = api_watch.next_timeout::<serde_json::Value>(Duration::from_secs(2)) => { r?; }
                }
            }
        }
    }
    emit(
        &agent.me,
        EventKind::Exiting,
        None,
        "every task is completed",
    );
    Ok(Exit::Ok)
}

impl Agent {
    /// Answers every API request addressed to this agent (or its role) on the API channel.
    fn serve_api_requests(&mut self) -> anyhow::Result<()> {
        let batch = self
            .api
            .receive_blocking::<serde_json::Value>(&self.api_cursor, &self.api_filter)?;
        self.api_cursor = batch.cursor;
        for d in batch.messages {
            let m = d.message;
            if m.payload["type"] != "implement_api" {
                continue;
            }
            emit(
                &self.me,
                EventKind::ApiReceived,
                None,
                format!("from {}", m.sender),
            );
            let endpoints = m.payload["spec"]["endpoints"].clone();
            let mut reply = Message::new(
                self.me.clone(),
                Recipients::Agent(m.sender.clone()),
                json!({ "type": "api_implemented", "endpoints": endpoints }),
            );
            reply.metadata.reply_to = Some(m.id);
            reply.metadata.correlation_id = Some(m.id);
            self.api.send_blocking(&reply)?;
            emit(
                &self.me,
                EventKind::ApiAnswered,
                None,
                format!("to {}", m.sender),
            );
        }
        Ok(())
    }

    async fn perform(&mut self, task: &Task) -> anyhow::Result<String> {
        let kind = task
            .metadata
            .get("demo.kind")
            .map(String::as_str)
            .unwrap_or("");
        if task.labels.iter().any(|l| l == CONFLICT_TASK_LABEL) {
            return self.resolve_conflict(task);
        }
        if task.labels.iter().any(|l| l == TASK_LABEL) {
            return self.run_merge(task);
        }
        match kind {
            "edit" => self.edit_files(task),
            "frontend" => self.implement_frontend(task).await,
            "deadlock" => self.sync_in_order(task).await,
            "review" => self.review(),
            other => bail!("unknown demo task kind {other:?} for task {}", task.name),
        }
    }

    /// Locks each file of the task (metadata `demo.files`, comma separated), applies the
    /// edit and commits it on this agent's branch.
    fn edit_files(&mut self, task: &Task) -> anyhow::Result<String> {
        let mut guards = Vec::new();
        for f in files_of(task) {
            let lock = FileLock::new(&self.ws, ResourceName::new(&f)?)
                .agent(self.me.clone())
                .wait(WAIT);
            guards.push(lock.acquire_blocking(&task.name)?);
        }
        let note = self.commit_files(task);
        for g in guards {
            g.release()?;
        }
        note
    }

    /// Applies the task's edit to its files and commits it on this agent's branch; the
    /// caller holds the files' locks.
    fn commit_files(&mut self, task: &Task) -> anyhow::Result<String> {
        let files = files_of(task);
        let mut edits = Vec::new();
        for f in &files {
            let old = match repo::read(&self.repo, &self.branch, f)? {
                Some(c) => c,
                None => repo::read(&self.repo, "main", f)?.unwrap_or_default(),
            };
            edits.push((f.clone(), edit(&old, f, task, &self.me)));
        }
        let id = repo::commit(
            &self.repo,
            &self.branch,
            self.me.as_str(),
            &task.name,
            &edits,
        )?;
        emit(&self.me, EventKind::Committed, Some(task), files.join(","));
        Ok(format!(
            "committed {} on {}",
            &id.to_string()[..10],
            self.branch
        ))
    }

    /// The design's `coordinate_with_backend`: ask the backend role for the API on the
    /// shared channel, wait for the answer addressed to us, then build the UI against it.
    async fn implement_frontend(&mut self, task: &Task) -> anyhow::Result<String> {
        let request = Message::new(
            self.me.clone(),
            Recipients::Role(AgentRole::backend()),
            json!({
                "type": "implement_api",
                "spec": { "endpoints": ["GET /users/{id}", "PUT /users/{id}"] },
                "priority": "high",
            }),
        );
        // Read from the end: the answer comes after the request.
        let mut replies = ChannelWatcher::from_cursor(
            self.api.clone(),
            self.api.end_cursor()?,
            self.api_filter.clone(),
        )?;
        self.api.send_blocking(&request)?;
        emit(
            &self.me,
            EventKind::ApiRequested,
            Some(task),
            "implement_api to role backend",
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        let endpoints = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match replies.next_timeout::<serde_json::Value>(left).await? {
                Some(d) if d.message.metadata.reply_to == Some(request.id) => {
                    break d.message.payload["endpoints"].clone();
                }
                Some(_) => continue,
                None => bail!("the backend did not answer the API request within {WAIT:?}"),
            }
        };
        let n = endpoints.as_array().map_or(0, Vec::len);
        emit(
            &self.me,
            EventKind::ApiReceived,
            Some(task),
            format!("{n} endpoints"),
        );
        let note = self.edit_files(task)?;
        Ok(format!("backend implemented {n} endpoints; {note}"))
    }

    /// Takes two locks in the order the task says. Two agents doing this in opposite
    /// orders deadlock; the detector ends the victim's wait with a deadlock error, the
    /// victim backs off (releasing what it holds) and retries once the other is through.
    async fn sync_in_order(&mut self, task: &Task) -> anyhow::Result<String> {
        let files = files_of(task);
        let [first, second] = files.as_slice() else {
            bail!("a deadlock task names two files");
        };
        let sync = FileChannel::open(&self.ws, ChannelName::new(SYNC_CHANNEL)?)?;
        let mut partner =
            ChannelWatcher::from_cursor(sync.clone(), Cursor::start(), Filter::Everything)?;
        let lock = |f: &str| -> anyhow::Result<FileLock> {
            Ok(FileLock::new(&self.ws, ResourceName::new(f)?)
                .agent(self.me.clone())
                .wait(WAIT))
        };
        let g1 = lock(first)?.acquire_blocking(&task.name)?;
        // Barrier: say we hold our first lock, and wait until the partner says so too, so
        // both really wait for each other.
        sync.send_blocking(&Message::new(
            self.me.clone(),
            Recipients::All,
            json!({ "holding": first }),
        ))?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match partner.next_timeout::<serde_json::Value>(left).await? {
                Some(d)
                    if d.message.sender != self.me
                        && d.message.payload["holding"] == second.as_str() =>
                {
                    break;
                }
                Some(_) => continue,
                None => bail!("the partner never took {second}"),
            }
        }
        match lock(second)?.acquire_blocking(&task.name) {
            Ok(g2) => {
                let note = self.commit_files(task);
                g2.release()?;
                g1.release()?;
                note.map(|n| format!("took {first} then {second}; {n}"))
            }
            Err(maos_coordination::lock::Error::Deadlock { .. }) => {
                emit(
                    &self.me,
                    EventKind::DeadlockVictim,
                    Some(task),
                    format!("waiting for {second}"),
                );
                g1.release()?;
                // Retry in the same order, now that the partner can finish.
                let g1 = lock(first)?.acquire_blocking(&task.name)?;
                let g2 = lock(second)?.acquire_blocking(&task.name)?;
                let note = self.commit_files(task);
                g2.release()?;
                g1.release()?;
                note.map(|n| format!("deadlock victim, backed off and retried; {n}"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A resolution task created by the merge coordinator: merge the target into the
    /// source branch, keeping both sides of each conflicting hunk, and commit.
    fn resolve_conflict(&mut self, task: &Task) -> anyhow::Result<String> {
        let source = meta(task, "merge.source")?;
        let target = meta(task, "merge.target")?;
        let source = source.strip_prefix("refs/heads/").unwrap_or(source);
        let target = target.strip_prefix("refs/heads/").unwrap_or(target);
        let path = meta(task, "merge.path")?;
        let guard = FileLock::new(&self.ws, ResourceName::new(path)?)
            .agent(self.me.clone())
            .wait(WAIT)
            .acquire_blocking(&task.name)?;
        let resolved = repo::merge_in_resolving(&self.repo, source, target, self.me.as_str())?;
        guard.release()?;
        let detail = if resolved.is_empty() {
            format!("{path} (already resolved by an earlier merge)")
        } else {
            resolved.join(", ")
        };
        emit(&self.me, EventKind::Resolved, Some(task), detail);
        Ok(format!(
            "merged {target} into {source}, resolved {}",
            if resolved.is_empty() {
                "nothing (already resolved)".to_string()
            } else {
                resolved.join(", ")
            }
        ))
    }

    /// The merge task of a resolution: merge under the merge lock.
    fn run_merge(&mut self, task: &Task) -> anyhow::Result<String> {
        let source = meta(task, "merge.source")?;
        let target = meta(task, "merge.target")?;
        let coord = MergeCoordinator::new(&self.ws, self.me.clone())?;
        let outcome = coord.merge_blocking(source, target)?;
        emit(
            &self.me,
            EventKind::Merged,
            Some(task),
            format!("{source} into {target}"),
        );
        Ok(serde_json::to_string(&outcome)?)
    }

    /// The reviewer checks that main holds both agents' routes.
    fn review(&self) -> anyhow::Result<String> {
        let routes = repo::read(&self.repo, "main", "src/shared/routes.rs")?.unwrap_or_default();
        for needed in ["\"/users\"", "\"/profile\""] {
            if !routes.contains(needed) {
                bail!("main's src/shared/routes.rs lacks route {needed}:\n{routes}");
            }
        }
        Ok("main holds the backend's and the frontend's routes".into())
    }
}

fn meta<'a>(task: &'a Task, key: &str) -> anyhow::Result<&'a str> {
    task.metadata
        .get(key)
        .map(String::as_str)
        .with_context(|| format!("task {} has no {key}", task.id))
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
