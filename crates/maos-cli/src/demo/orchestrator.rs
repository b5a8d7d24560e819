//! The demo's orchestrator: sets up the repository and workspace, builds the task graph,
//! starts the agents, drives the merges, watches for deadlocks, shows live progress and
//! checks every step at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use maos_coordination::comm::{Cursor, FileChannel, Filter, topic_channel};
use maos_coordination::core::ProcessIdentity;
use maos_coordination::lock::{DeadlockDetector, LockTable};
use maos_coordination::merge::{ConflictDetector, EntryStatus, MergeCoordinator, MergeQueue};
use maos_coordination::track::{ProgressVisualizer, Task, TaskStatus, TaskTracker};
use maos_coordination::{AgentId, AgentRegistry, AgentRole, Registration, TaskId, Workspace};

use super::agent::demo_meta;
use super::view::View;
use super::{AgentEvent, DemoArgs, EventKind, ORCHESTRATOR, ROLES, repo};
use crate::exit::Exit;

/// The ids of the tasks the orchestrator itself drives or checks.
struct Graph {
    feature: TaskId,
    merge: TaskId,
    all: Vec<TaskId>,
}

/// One check of the final verdict.
struct Check {
    what: String,
    ok: bool,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let tmp;
    let root: PathBuf = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            anyhow::ensure!(
                std::fs::read_dir(dir)?.next().is_none(),
                "--keep {}: the directory must be empty",
                dir.display()
            );
            std::fs::canonicalize(dir)?
        }
        None => {
            tmp = tempfile::Builder::new().prefix("maos-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let git = repo::init(&root)?;
    let ws = Workspace::init(&root)?;
    let me = AgentId::new(ORCHESTRATOR)?;
    let registry = AgentRegistry::new(&ws);
    registry.register(
        Registration::new(me.clone())
            .role(AgentRole::orchestrator())
            .process(ProcessIdentity::current()),
    )?;
    eprintln!(
        "maos demo: workspace {} ({} agents, {} extra tasks, seed {})",
        root.display(),
        args.agents,
        args.tasks,
        args.seed
    );

    // Agents: the four roles first, then more of each.
    let agents: Vec<(String, &str)> = (0..args.agents as usize)
        .map(|i| {
            let role = ROLES[i % ROLES.len()];
            (format!("{role}-{}", i / ROLES.len() + 1), role)
        })
        .collect();
    let tracker = TaskTracker::open(&ws)?;
    let graph = build_graph(&tracker, &args).await?;

    // The deadlock monitor: detects cycles in the on-disk wait-for graph, broadcasts them
    // on the `deadlock` topic and ends the victim's wait.
    let monitor = DeadlockDetector::new(&ws)
        .resolve(true)
        .sender(me.clone())
        .spawn_monitor(Duration::from_secs(1))?;

    let exe = std::env::current_exe().context("locating the maos binary")?;
    let (tx, rx) = mpsc::channel::<AgentEvent>();
    let mut children: Vec<(String, Child)> = Vec::new();
    for (id, role) in &agents {
        let mut child = Command::new(&exe)
            .arg("--workspace")
            .arg(ws.root())
            .args(["--agent", id, "-q", "demo", "--as-agent", role])
            .env_remove("MAOS_WORKSPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting agent {id}"))?;
        let out = child.stdout.take().context("agent stdout")?;
        let tx = tx.clone();
        let agent = id.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let ev = serde_json::from_str(&line).unwrap_or_else(|e| AgentEvent {
                    agent: agent.clone(),
                    event: EventKind::Failed,
                    task: None,
                    detail: format!("unreadable agent output ({e}): {line}"),
                });
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
        children.push((id.clone(), child));
    }
    drop(tx);

    let mut view = View::new(&ws, agents.iter().map(|(a, _)| a.clone()).collect());
    let mut events: Vec<AgentEvent> = Vec::new();
    let mut watch = tracker.watch()?;
    let mut merge_phase: Option<MergePhase> = None;
    let deadline = Instant::now() + args.timeout;
    let mut timed_out = false;
    loop {
        while let Ok(ev) = rx.try_recv() {
            view.event(&ev);
            events.push(ev);
        }
        let tasks = tracker.list_blocking()?;
        view.render(&tasks, started.elapsed())?;
        let status = |id: &TaskId| tasks.iter().find(|t| t.id == *id).map(|t| t.status);
        // The merge task: when its dependencies are done, merge every agent branch.
        if merge_phase.is_none() && status(&graph.merge) == Some(TaskStatus::Pending) {
            tracker.update_status_blocking(&graph.merge, TaskStatus::InProgress, None)?;
            merge_phase = Some(MergePhase::start(&ws, &me, &agents)?);
            view.note(
                merge_phase
                    .as_ref()
                    .map(MergePhase::summary)
                    .unwrap_or_default(),
            );
        }
        if let Some(phase) = &mut merge_phase
            && !phase.done
            && phase.advance(&tracker)?
        {
            tracker.update_status_blocking(
                &graph.merge,
                TaskStatus::Completed,
                Some("every agent branch is merged into main"),
            )?;
            view.note("every agent branch is merged into main".into());
        }
        if status(&graph.feature) == Some(TaskStatus::Pending) {
            tracker.update_status_blocking(&graph.feature, TaskStatus::InProgress, None)?;
            tracker.update_status_blocking(
                &graph.feature,
                TaskStatus::Completed,
                Some("feature done: merged and reviewed"),
            )?;
        }
        if tasks.iter().all(|t| t.status == TaskStatus::Completed) && children_done(&mut children)?
        {
            break;
        }
        if tasks.iter().any(|t| t.status == TaskStatus::Failed) {
            view.note("a task failed: stopping".into());
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        // Wake on the next task change (file events), or soon enough to show agent
        // events and the clock.
        watch.changed(Duration::from_millis(250)).await?;
    }
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }
    for (_, child) in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(monitor);
    let tasks = tracker.list_blocking()?;
    view.finish(&tasks, started.elapsed())?;

    // The verdict.
    let checks = verify(
        &ws,
        &git,
        &tasks,
        &graph,
        &events,
        merge_phase.as_ref(),
        timed_out,
    )?;
    let visual = ProgressVisualizer::new(tracker.clone());
    let report = visual.generate_progress_report_blocking()?;
    outln!(
        "\n## Report\n\n{}",
        maos_coordination::track::summary(&report)
    )?;
    outln!("{}", maos_coordination::track::table(&tasks))?;
    outln!("## Critical path\n")?;
    let (path, length) = tracker.critical_path_blocking()?;
    for t in &path {
        outln!(
            "- {} ({})",
            t.name,
            crate::duration::format(t.estimated_duration.unwrap_or_default())
        )?;
    }
    outln!("total estimate: {}\n", crate::duration::format(length))?;
    outln!(
        "## Gantt (Mermaid)\n\n```mermaid\n{}```\n",
        visual.generate_gantt_chart_blocking()?
    )?;
    outln!("## Checks\n")?;
    let mut all_ok = true;
    for c in &checks {
        all_ok &= c.ok;
        outln!("- [{}] {}", if c.ok { "x" } else { " " }, c.what)?;
    }
    outln!(
        "\n{} in {:.1?}; workspace {}{}",
        if all_ok {
            "every step held"
        } else {
            "SOME STEPS FAILED"
        },
        started.elapsed(),
        root.display(),
        if args.keep.is_some() {
            " (kept)"
        } else {
            " (temporary, removed; use --keep DIR to keep it)"
        }
    )?;
    Ok(if all_ok { Exit::Ok } else { Exit::Error })
}

fn children_done(children: &mut [(String, Child)]) -> anyhow::Result<bool> {
    for (_, c) in children.iter_mut() {
        if c.try_wait()?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The feature's task graph: the design's `track_feature_implementation`, plus the work
/// that makes the demo's coordination real (API request, overlapping edits, a lock-order
/// deadlock, merging, review) and `--tasks` extra module tasks with random dependencies.
async fn build_graph(tracker: &TaskTracker, args: &DemoArgs) -> anyhow::Result<Graph> {
    let agent = |s: &str| AgentId::new(s);
    let mut tasks: Vec<Task> = Vec::new();
    let mut mk = |name: &str,
                  who: Option<&str>,
                  deps: &[&TaskId],
                  minutes: u64,
                  meta|
     -> anyhow::Result<TaskId> {
        let mut t = Task::new(name);
        t.assigned_to = who.map(agent).transpose()?;
        t.dependencies = deps.iter().map(|d| (*d).clone()).collect();
        t.estimated_duration = Some(Duration::from_secs(minutes * 60));
        t.metadata = meta;
        let id = t.id.clone();
        tasks.push(t);
        Ok(id)
    };
    let design = mk(
        "Design architecture",
        Some("architect-1"),
        &[],
        30,
        demo_meta("edit", &["docs/design.md"], None),
    )?;
    let backend = mk(
        "Implement backend",
        Some("backend-1"),
        &[&design],
        120,
        demo_meta(
            "edit",
            &["src/api/user.rs", "src/shared/routes.rs"],
            Some("/users"),
        ),
    )?;
    let frontend = mk(
        "Implement frontend",
        Some("frontend-1"),
        &[&design],
        90,
        demo_meta(
            "frontend",
            &["src/ui/user_view.rs", "src/shared/routes.rs"],
            Some("/profile"),
        ),
    )?;
    let schema = mk(
        "Sync schema, then types",
        Some("backend-1"),
        // Both sync tasks wait for both implementations: a backend blocked in the sync
        // barrier could not answer the frontend's API request.
        &[&backend, &frontend],
        20,
        demo_meta("deadlock", &["db/schema.sql", "src/shared/types.rs"], None),
    )?;
    let types = mk(
        "Sync types, then schema",
        Some("frontend-1"),
        &[&backend, &frontend],
        20,
        demo_meta("deadlock", &["src/shared/types.rs", "db/schema.sql"], None),
    )?;
    // Extra module tasks: each depends on the design and on up to two earlier modules.
    let mut rng = args
        .seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut modules: Vec<TaskId> = Vec::new();
    for k in 0..args.tasks as usize {
        let mut deps = vec![design.clone()];
        for _ in 0..2 {
            if !modules.is_empty() && next() % 2 == 0 {
                let d = modules[(next() % modules.len() as u64) as usize].clone();
                if !deps.contains(&d) {
                    deps.push(d);
                }
            }
        }
        let path = format!("src/modules/mod_{k}.rs");
        let minutes = 10 + next() % 50;
        let deps_ref: Vec<&TaskId> = deps.iter().collect();
        let id = mk(
            &format!("Implement module {k}"),
            None,
            &deps_ref,
            minutes,
            demo_meta("edit", &[&path], None),
        )?;
        modules.push(id);
    }
    let mut before_merge = vec![&backend, &frontend, &schema, &types];
    before_merge.extend(modules.iter());
    let merge = mk(
        "Merge agent branches into main",
        Some(ORCHESTRATOR),
        &before_merge,
        15,
        BTreeMap::new(),
    )?;
    let review = mk(
        "Review merged main",
        Some("reviewer-1"),
        &[&merge],
        30,
        demo_meta("review", &[], None),
    )?;
    let feature = mk(
        "Implement user-profile feature",
        Some(ORCHESTRATOR),
        &[&review],
        5,
        BTreeMap::new(),
    )?;
    let all = tasks.iter().map(|t| t.id.clone()).collect();
    tracker.create_tasks(tasks).await?;
    Ok(Graph {
        feature,
        merge,
        all,
    })
}

/// Merging every agent branch: predict conflicts pairwise, queue every branch, run the
/// queue; conflicting entries become resolution tasks that agents work on; re-run the queue
/// as they complete.
pub(crate) struct MergePhase {
    queue: MergeQueue,
    pub(crate) predicted: Vec<(String, String, Vec<String>)>,
    pub(crate) blocked: BTreeSet<u64>,
    pub(crate) merged: BTreeSet<u64>,
    done: bool,
    retried: Vec<u64>,
}

impl MergePhase {
    fn start(ws: &Workspace, me: &AgentId, agents: &[(String, &str)]) -> anyhow::Result<Self> {
        let git = git2::Repository::open(ws.root())?;
        let branches: Vec<String> = agents
            .iter()
            .map(|(a, _)| format!("agent/{a}"))
            .filter(|b| repo::tip(&git, b).ok().flatten().is_some())
            .collect();
        let detector = ConflictDetector::open(ws.root())?;
        let prediction = detector.predict(&branches, "main")?;
        let predicted = prediction
            .pairwise
            .iter()
            .chain(&prediction.vs_target)
            .filter(|p| !p.is_clean())
            .map(|p| {
                let paths = p.conflicts.iter().map(|c| c.path.clone()).collect();
                (p.source.clone(), p.target.clone(), paths)
            })
            .collect();
        let queue = MergeQueue::new(MergeCoordinator::new(ws, me.clone())?);
        for b in &branches {
            queue.add(b, "main")?;
        }
        let mut phase = Self {
            queue,
            predicted,
            blocked: BTreeSet::new(),
            merged: BTreeSet::new(),
            done: false,
            retried: Vec::new(),
        };
        phase.run_queue()?;
        Ok(phase)
    }

    fn summary(&self) -> String {
        let pairs: Vec<String> = self
            .predicted
            .iter()
            .map(|(a, b, paths)| format!("{a} x {b}: {}", paths.join(", ")))
            .collect();
        format!(
            "merge: predicted conflicts [{}]; {} merged, {} waiting for resolution",
            pairs.join("; "),
            self.merged.len(),
            self.blocked.len()
        )
    }

    fn run_queue(&mut self) -> anyhow::Result<()> {
        let run = self.queue.run_blocking()?;
        for e in &run.entries {
            match e.status {
                EntryStatus::Merged => {
                    self.merged.insert(e.id);
                }
                EntryStatus::Blocked => {
                    self.blocked.insert(e.id);
                }
                EntryStatus::Failed => anyhow::bail!(
                    "merging {} failed: {}",
                    e.source,
                    e.error.as_deref().unwrap_or("unknown error")
                ),
                EntryStatus::Queued => {}
            }
        }
        Ok(())
    }

    /// Re-runs the queue once every resolution task of a blocked entry is completed; true
    /// once every entry is merged.
    fn advance(&mut self, tracker: &TaskTracker) -> anyhow::Result<bool> {
        let entries = self.queue.list()?;
        if entries.iter().all(|e| e.status == EntryStatus::Merged) {
            self.done = true;
            return Ok(true);
        }
        let mut resolved = Vec::new();
        for e in entries.iter().filter(|e| e.status == EntryStatus::Blocked) {
            let Some(res) = &e.resolution else { continue };
            let mut all_done = true;
            for t in &res.conflict_tasks {
                let status = tracker.get_blocking(&t.task)?.map(|t| t.status);
                all_done &= status == Some(TaskStatus::Completed);
            }
            if all_done {
                resolved.push(e.id);
            }
        }
        if !resolved.is_empty() && self.retried != resolved {
            self.retried = resolved;
            self.run_queue()?;
        }
        Ok(false)
    }
}

fn verify(
    ws: &Workspace,
    git: &git2::Repository,
    tasks: &[Task],
    graph: &Graph,
    events: &[AgentEvent],
    merge: Option<&MergePhase>,
    timed_out: bool,
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let mut check = |what: String, ok: bool| checks.push(Check { what, ok });
    check(
        if timed_out {
            "the session timed out".into()
        } else {
            "the session finished in time".into()
        },
        !timed_out,
    );

    // Every task completed exactly once.
    let mut completions: BTreeMap<String, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == EventKind::Completed) {
        if let Some(t) = &e.task {
            *completions.entry(t.clone()).or_default() += 1;
        }
    }
    let incomplete: Vec<&str> = tasks
        .iter()
        .filter(|t| t.status != TaskStatus::Completed)
        .map(|t| t.name.as_str())
        .collect();
    let twice: Vec<&String> = completions
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| t)
        .collect();
    let failures: Vec<&str> = events
        .iter()
        .filter(|e| e.event == EventKind::Failed)
        .map(|e| e.detail.as_str())
        .collect();
    let restarted: Vec<&str> = tasks
        .iter()
        .filter(|t| t.attempts > 1)
        .map(|t| t.name.as_str())
        .collect();
    check(
        format!(
            "every task completed exactly once ({} tasks, {} completed by agents, the others by \
             the orchestrator or the merge queue; incomplete: {incomplete:?}, completed twice: \
             {twice:?}, started twice: {restarted:?}, failures: {failures:?})",
            tasks.len(),
            completions.len()
        ),
        incomplete.is_empty()
            && twice.is_empty()
            && restarted.is_empty()
            && failures.is_empty()
            && graph.all.iter().all(|id| tasks.iter().any(|t| t.id == *id)),
    );

    // The frontend asked the backend for the API and got the answer.
    let asked = events.iter().any(|e| e.event == EventKind::ApiRequested);
    let answered = events.iter().any(|e| e.event == EventKind::ApiAnswered);
    check("the frontend asked the backend role for its API and got the answer (coordinate_with_backend)".into(), asked && answered);

    // The conflict was predicted, turned into a resolution task, resolved and merged.
    let predicted = merge.is_some_and(|m| {
        m.predicted
            .iter()
            .any(|(_, _, p)| p.iter().any(|p| p == "src/shared/routes.rs"))
    });
    check(
        "the merge coordinator predicted the conflict on src/shared/routes.rs".into(),
        predicted,
    );
    let resolution_tasks: Vec<&Task> = tasks
        .iter()
        .filter(|t| {
            t.labels
                .iter()
                .any(|l| l == maos_coordination::merge::CONFLICT_TASK_LABEL)
        })
        .collect();
    check(
        format!(
            "a resolution task was created and completed ({} conflict task(s))",
            resolution_tasks.len()
        ),
        !resolution_tasks.is_empty()
            && resolution_tasks
                .iter()
                .all(|t| t.status == TaskStatus::Completed),
    );

    // The merged history holds every agent's work.
    let main = repo::tip(git, "main")?.context("main vanished")?;
    let mut missing = Vec::new();
    let committers: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.event == EventKind::Committed)
        .map(|e| e.agent.as_str())
        .collect();
    for agent in &committers {
        let branch = format!("agent/{agent}");
        if let Some(t) = repo::tip(git, &branch)?
            && t != main
            && !git.graph_descendant_of(main, t)?
        {
            missing.push(branch);
        }
    }
    let routes = repo::read(git, "main", "src/shared/routes.rs")?.unwrap_or_default();
    check(
        format!(
            "main holds every agent's work ({} agents committed; not merged: {missing:?})",
            committers.len()
        ),
        missing.is_empty()
            && routes.contains("/users")
            && routes.contains("/profile")
            && !committers.is_empty(),
    );

    // No lock left behind.
    let snapshot = LockTable::open(ws)?.snapshot()?;
    check(
        format!(
            "no lock left behind ({} held, {} waiting)",
            snapshot.holders.len(),
            snapshot.waiters.len()
        ),
        snapshot.holders.is_empty() && snapshot.waiters.is_empty(),
    );

    // The deadlock was reported on the `deadlock` topic and its victim backed off.
    let topic = FileChannel::open(ws, topic_channel("deadlock")?)?;
    let reports =
        topic.receive_blocking::<serde_json::Value>(&Cursor::start(), &Filter::Everything)?;
    let victims = events
        .iter()
        .filter(|e| e.event == EventKind::DeadlockVictim)
        .count();
    check(
        format!(
            "the deadlock was detected, reported on the deadlock topic ({} report(s)) and resolved ({victims} victim(s))",
            reports.messages.len()
        ),
        !reports.messages.is_empty() && victims >= 1,
    );
    Ok(checks)
}
