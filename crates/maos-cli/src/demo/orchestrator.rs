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
use maos_coordination::backend::{self, Backends};
use maos_coordination::comm::{Cursor, FileChannel, Filter, TopicReader, topic_channel};
use maos_coordination::core::{Anchor, Config, ProcessIdentity};
use maos_coordination::lock::DeadlockDetector;
use maos_coordination::merge::{ConflictDetector, EntryStatus, MergeCoordinator, MergeQueue};
use maos_coordination::postgres::lock::PgDeadlockDetector;
use maos_coordination::track::{Task, TaskStatus};
use maos_coordination::{AgentId, AgentRole, MergeOutcome, Registration, TaskId, Workspace};

use super::agent::demo_meta;
use super::coord::{Stats, Via};
use super::shared::{Keep, Tasks, sync};
use super::view::View;
use super::{AgentEvent, DemoArgs, EventKind, ORCHESTRATOR, PACED_WORK, ROLES, repo};
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

pub(crate) async fn run(args: DemoArgs, paced: bool, keep: &Keep) -> anyhow::Result<Exit> {
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
            std::fs::canonicalize(tmp.path())?
        }
    };
    let git = repo::init(&root)?;
    let ws = Workspace::init(&root)?;
    let backends = sync(|| choose_backend(&ws, &args))?;
    keep.hold(&backends);
    let me = AgentId::new(ORCHESTRATOR)?;
    let registry = backends.agents();
    sync(|| {
        registry.register(
            Registration::new(me.clone())
                .role(AgentRole::orchestrator())
                .process(ProcessIdentity::current()),
        )
    })?;
    let mode = if paced { "paced" } else { "fast" };
    eprintln!(
        "maos demo: workspace {} on the {} backend ({}; {} agents via {}, {} extra tasks, seed {}, {mode})",
        root.display(),
        backends.name(),
        backends.location(),
        args.agents,
        args.via.name(),
        args.tasks,
        args.seed
    );

    // Agents: the four roles first, then more of each; each works in its own worktree.
    let agents: Vec<(String, &str)> = (0..args.agents as usize)
        .map(|i| {
            let role = ROLES[i % ROLES.len()];
            (format!("{role}-{}", i / ROLES.len() + 1), role)
        })
        .collect();
    for (id, role) in &agents {
        let branch = format!("agent/{id}");
        let wt = repo::add_worktree(&git, &root, id, &branch)?;
        if args.via == Via::Mcp {
            // Neither MCP nor the hooks let an agent state its role: the lead registers the
            // team up front (as `maos agents register --role R --branch B` would), anchored
            // on itself as an ancestor, so a session's end still ends the agent.
            let reg = Registration::new(AgentId::new(id)?)
                .role(AgentRole::new(*role)?)
                .branch(branch)
                .worktree(wt)
                .anchor(Anchor::ancestor(ProcessIdentity::current()));
            sync(|| registry.register(reg))?;
        }
    }
    let tracker = sync(|| Tasks::open(&backends, &me))?;
    let (graph, planned) = sync(|| build_graph(&tracker, &args))?;
    let pace = if paced {
        pace_for(&planned, agents.len())
    } else {
        Duration::ZERO
    };

    // The deadlock monitor: detects cycles in the on-disk wait-for graph, broadcasts them
    // on the `deadlock` topic and ends the victim's wait.
    let monitor = sync(|| Monitor::start(&backends, &me))?;
    let mut deadlocks = sync(|| Deadlocks::open(&backends))?;

    let exe = std::env::current_exe().context("locating the maos binary")?;
    let (tx, rx) = mpsc::channel::<FromAgent>();
    let mut children: Vec<(String, Child)> = Vec::new();
    // Reader threads whose pipe is still open.
    let mut open = 0_usize;
    for (id, role) in &agents {
        let mut child = Command::new(&exe)
            .arg("--workspace")
            .arg(ws.root())
            .args(["--agent", id, "-q", "demo", "--as-agent", role])
            .args(["--via", args.via.name()])
            .arg(format!("--pace-ms={}", pace.as_millis()))
            .env_remove("MAOS_WORKSPACE")
            .env_remove("MAOS_AGENT_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting agent {id}"))?;
        let out = child.stdout.take().context("agent stdout")?;
        let err = child.stderr.take().context("agent stderr")?;
        let (tx2, agent) = (tx.clone(), id.clone());
        open += 1;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let ev = serde_json::from_str(&line).unwrap_or_else(|e| AgentEvent {
                    at: 0,
                    agent: agent.clone(),
                    event: EventKind::Failed,
                    task: None,
                    detail: format!("unreadable agent output ({e}): {line}"),
                });
                if tx2.send(FromAgent::Event(ev)).is_err() {
                    break;
                }
            }
            let _ = tx2.send(FromAgent::Closed);
        });
        // What an agent (or its MCP server, or a hook) logs goes into the event log.
        let (tx2, agent) = (tx.clone(), id.clone());
        open += 1;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx2.send(FromAgent::Log(agent.clone(), line)).is_err() {
                    break;
                }
            }
            let _ = tx2.send(FromAgent::Closed);
        });
        children.push((id.clone(), child));
    }
    drop(tx);

    let header = format!(
        "maos demo: {} agents via {}, {mode}",
        agents.len(),
        args.via.name()
    );
    let mut view = View::new(
        backends.locks(),
        header,
        agents.iter().map(|(a, _)| a.clone()).collect(),
        &planned,
    );
    super::log::catch();
    let mut events: Vec<AgentEvent> = Vec::new();
    let mut logged: Vec<String> = Vec::new();
    let mut watch = sync(|| tracker.watch())?;
    let mut merge_phase: Option<MergePhase> = None;
    let deadline = Instant::now() + args.timeout;
    let mut stopped: Option<String> = None;
    let tick = if pace.is_zero() {
        Duration::from_millis(250)
    } else {
        Duration::from_millis(100)
    };
    loop {
        let tasks = sync(|| tracker.list())?;
        view.learn(&tasks);
        let incoming: Vec<FromAgent> = rx.try_iter().collect();
        open -= incoming
            .iter()
            .filter(|m| matches!(m, FromAgent::Closed))
            .count();
        sync(|| {
            intake(
                &mut view,
                &mut events,
                &mut logged,
                incoming,
                &mut deadlocks,
            )
        })?;
        sync(|| view.render(&tasks))?;
        let status = |id: &TaskId| tasks.iter().find(|t| t.id == *id).map(|t| t.status);
        // The merge task: when its dependencies are done, merge every agent branch.
        if merge_phase.is_none() && status(&graph.merge) == Some(TaskStatus::Pending) {
            let mut phase = sync(|| -> anyhow::Result<_> {
                tracker.update_status(&graph.merge, TaskStatus::InProgress, None)?;
                MergePhase::start(&backends, &me, &agents)
            })?;
            for line in phase.take_notes() {
                view.note(line);
            }
            merge_phase = Some(phase);
        }
        if let Some(phase) = &mut merge_phase
            && !phase.done
        {
            let done = sync(|| phase.advance(&tracker))?;
            for line in phase.take_notes() {
                view.note(line);
            }
            if done {
                sync(|| {
                    tracker.update_status(
                        &graph.merge,
                        TaskStatus::Completed,
                        Some("every agent branch is merged into main"),
                    )
                })?;
                view.note("every agent branch is merged into main".into());
            }
        }
        if status(&graph.feature) == Some(TaskStatus::Pending) {
            sync(|| -> anyhow::Result<()> {
                tracker.update_status(&graph.feature, TaskStatus::InProgress, None)?;
                tracker.update_status(
                    &graph.feature,
                    TaskStatus::Completed,
                    Some("feature done: merged and reviewed"),
                )
            })?;
        }
        let all_done = tasks.iter().all(|t| t.status == TaskStatus::Completed);
        match children_state(&mut children)? {
            Children::Running => {}
            Children::AllExited if all_done => break,
            Children::AllExited => {
                stopped = Some("every agent exited with work left".into());
            }
            Children::Failed(who, status) => {
                stopped = Some(format!("agent {who} exited with {status}"));
            }
        }
        if stopped.is_none() && tasks.iter().any(|t| t.status == TaskStatus::Failed) {
            stopped = Some("a task failed".into());
        }
        if stopped.is_none() && Instant::now() >= deadline {
            stopped = Some(format!(
                "the session did not finish within {}",
                crate::duration::format(args.timeout)
            ));
        }
        if let Some(why) = &stopped {
            view.note(format!("stopping: {why}"));
            break;
        }
        // Wake on the next task change (file events), or soon enough to show agent
        // events and the clock.
        watch.changed(tick).await?;
    }
    for (_, child) in &mut children {
        if stopped.is_some() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
    // The agents' last lines (their exit event) may still be in the pipes: read them to the
    // end (bounded: a stray grandchild could hold a pipe open).
    let mut last = Vec::new();
    let drained = Instant::now() + Duration::from_secs(3);
    while open > 0 {
        match rx.recv_timeout(drained.saturating_duration_since(Instant::now())) {
            Ok(FromAgent::Closed) => open -= 1,
            Ok(m) => last.push(m),
            Err(_) => break,
        }
    }
    last.extend(rx.try_iter());
    sync(|| intake(&mut view, &mut events, &mut logged, last, &mut deadlocks))?;
    drop(monitor);
    for line in super::log::release() {
        view.note(format!("log: {line}"));
        logged.push(line);
    }
    let tasks = sync(|| tracker.list())?;
    sync(|| view.finish(&tasks))?;
    let elapsed = view.elapsed();

    // The verdict.
    let checks = sync(|| {
        verify(&Session {
            ws: &ws,
            backends: &backends,
            git: &git,
            tasks: &tasks,
            graph: &graph,
            events: &events,
            merge: merge_phase.as_ref(),
            stopped: stopped.as_deref(),
            agents: &agents,
            via: args.via,
        })
    })?;
    let report = sync(|| tracker.report())?;
    outln!(
        "\n## Report\n\n{}",
        maos_coordination::track::summary(&report)
    )?;
    outln!("{}", maos_coordination::track::table(&tasks))?;
    outln!("## Critical path\n")?;
    let maos_coordination::track::CriticalPath {
        tasks: path,
        total: length,
    } = sync(|| tracker.critical_path())?;
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
        sync(|| tracker.gantt())?
    )?;
    if !logged.is_empty() {
        outln!("## Log lines\n")?;
        for l in &logged {
            outln!("    {l}")?;
        }
        outln!("")?;
    }
    outln!("## Checks\n")?;
    let mut all_ok = true;
    for c in &checks {
        all_ok &= c.ok;
        outln!("- [{}] {}", if c.ok { "x" } else { " " }, c.what)?;
    }
    outln!(
        "\n{} in {:.1?} ({mode}, via {}); workspace {}{}",
        if all_ok {
            "every step held"
        } else {
            "SOME STEPS FAILED"
        },
        started.elapsed().max(elapsed),
        args.via.name(),
        root.display(),
        if args.keep.is_some() {
            " (kept)"
        } else {
            " (temporary, removed; use --keep DIR to keep it)"
        }
    )?;
    Ok(if all_ok { Exit::Ok } else { Exit::Error })
}

/// Simulated time per estimated hour, so that the plan's work takes about [`PACED_WORK`]:
/// the plan lasts as long as its critical path or its work shared by the agents, whichever is
/// longer, plus the merge's resolution work (about an hour).
fn pace_for(planned: &[Task], agents: usize) -> Duration {
    let (_, critical) = maos_coordination::track::critical_path_of(planned);
    let work: Duration = planned
        .iter()
        .filter_map(|t| t.estimated_duration)
        .sum::<Duration>()
        / u32::try_from(agents.max(1)).unwrap_or(u32::MAX);
    let hours = critical.max(work).as_secs_f64() / 3600.0 + 1.0;
    PACED_WORK.div_f64(hours)
}

/// What an agent process says: an event on stdout, a log line on stderr.
enum FromAgent {
    Event(AgentEvent),
    Log(String, String),
    /// One of its pipes reached its end.
    Closed,
}

/// Takes in what happened since the last call (agent events, their log lines, deadlock
/// reports, this process's log lines) and hands it to the view in the order it happened.
fn intake(
    view: &mut View,
    events: &mut Vec<AgentEvent>,
    logged: &mut Vec<String>,
    incoming: impl IntoIterator<Item = FromAgent>,
    deadlocks: &mut Deadlocks,
) -> anyhow::Result<()> {
    enum Item {
        Event(AgentEvent),
        Note(String),
    }
    let now = maos_coordination::core::now_ms();
    let mut items: Vec<(u64, Item)> = Vec::new();
    for (timestamp, payload) in deadlocks.read()? {
        let at = payload["detected_at"].as_u64().unwrap_or(timestamp);
        items.push((at, Item::Note(describe_deadlock(&payload))));
    }
    for m in incoming {
        match m {
            FromAgent::Closed => {}
            FromAgent::Event(ev) => {
                items.push((if ev.at == 0 { now } else { ev.at }, Item::Event(ev)))
            }
            FromAgent::Log(agent, line) => {
                logged.push(format!("{agent}: {line}"));
                items.push((now, Item::Note(format!("{agent} log: {}", line.trim()))));
            }
        }
    }
    for line in super::log::take() {
        items.push((now, Item::Note(format!("log: {line}"))));
        logged.push(line);
    }
    items.sort_by_key(|(at, _)| *at);
    for (at, item) in items {
        match item {
            Item::Event(ev) => {
                view.event(&ev);
                events.push(ev);
            }
            Item::Note(text) => view.note_at(text, at),
        }
    }
    Ok(())
}

/// A deadlock report from the `deadlock` topic, in one line.
fn describe_deadlock(v: &serde_json::Value) -> String {
    let waits: Vec<String> = v["waits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            format!(
                "{} waits for {} ({})",
                w["waiter"].as_str().unwrap_or("?"),
                w["resource"].as_str().unwrap_or("?"),
                w["holder"].as_str().unwrap_or("?")
            )
        })
        .collect();
    // The file backend's report names the victim in `suggested_resolution`; the server's
    // report has its wait as `victim`.
    let r = &v["suggested_resolution"];
    let victim = r["victim"]
        .as_str()
        .or_else(|| v["victim"]["waiter"].as_str())
        .unwrap_or("?");
    format!(
        "DEADLOCK: {}; victim {victim}{}",
        waits.join(", "),
        if r["applied"] == true || v["applied"] == true {
            " (its wait is aborted)"
        } else {
            ""
        }
    )
}

enum Children {
    Running,
    AllExited,
    Failed(String, std::process::ExitStatus),
}

fn children_state(children: &mut [(String, Child)]) -> anyhow::Result<Children> {
    let mut running = false;
    for (id, c) in children.iter_mut() {
        match c.try_wait()? {
            None => running = true,
            Some(st) if !st.success() => return Ok(Children::Failed(id.clone(), st)),
            Some(_) => {}
        }
    }
    Ok(if running {
        Children::Running
    } else {
        Children::AllExited
    })
}

/// The feature's task graph: the design's `track_feature_implementation`, plus the work
/// that makes the demo's coordination real (API request, overlapping edits, a lock-order
/// deadlock, merging, review) and `--tasks` extra module tasks with random dependencies.
fn build_graph(tracker: &Tasks, args: &DemoArgs) -> anyhow::Result<(Graph, Vec<Task>)> {
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
    tracker.create_all(&tasks)?;
    Ok((
        Graph {
            feature,
            merge,
            all,
        },
        tasks,
    ))
}

/// Merging every agent branch: predict conflicts pairwise, queue every branch, run the
/// queue; conflicting entries become resolution tasks that agents work on; re-run the queue
/// as they complete. Says each thing that happens once (`take_notes`).
pub(crate) struct MergePhase {
    queue: MergeQueue,
    pub(crate) predicted: Vec<(String, String, Vec<String>)>,
    pub(crate) blocked: BTreeSet<u64>,
    pub(crate) merged: BTreeSet<u64>,
    done: bool,
    retried: Vec<u64>,
    notes: Vec<String>,
}

impl MergePhase {
    fn start(backends: &Backends, me: &AgentId, agents: &[(String, &str)]) -> anyhow::Result<Self> {
        let ws = backends.workspace();
        let git = git2::Repository::open(ws.root())?;
        let main = repo::tip(&git, "main")?.context("main has no commits")?;
        // The branches with work on them.
        let mut branches = Vec::new();
        for (a, _) in agents {
            let b = format!("agent/{a}");
            if let Some(t) = repo::tip(&git, &b)?
                && t != main
            {
                branches.push(b);
            }
        }
        let detector = ConflictDetector::open(ws.root())?;
        let prediction = detector.predict(&branches, "main")?;
        let predicted: Vec<(String, String, Vec<String>)> = prediction
            .pairwise
            .iter()
            .chain(&prediction.vs_target)
            .filter(|p| !p.is_clean())
            .map(|p| {
                let paths = p.conflicts.iter().map(|c| c.path.clone()).collect();
                (p.source.clone(), p.target.clone(), paths)
            })
            .collect();
        let short = |b: &str| b.strip_prefix("agent/").unwrap_or(b).to_owned();
        let notes = vec![format!(
            "merge: {} branches queued; predicted conflicts: {}",
            branches.len(),
            if predicted.is_empty() {
                "none".to_string()
            } else {
                predicted
                    .iter()
                    .map(|(a, b, paths)| {
                        format!("{} x {} in {}", short(a), short(b), paths.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        )];
        // The queue, the merge lock and the resolution tasks on the workspace's backend.
        let mut coord = MergeCoordinator::new(ws, me.clone())?;
        if let Some(shared) = backends.merge(me) {
            coord = coord.with_backend(shared);
        }
        let queue = MergeQueue::new(coord);
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
            notes,
        };
        phase.run_queue()?;
        Ok(phase)
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn run_queue(&mut self) -> anyhow::Result<()> {
        let run = self.queue.run_blocking()?;
        for e in &run.entries {
            match e.status {
                EntryStatus::Merged => {
                    if self.merged.insert(e.id) {
                        match &e.outcome {
                            Some(MergeOutcome::FastForward { to, .. }) => self.notes.push(format!(
                                "merge queue: main fast-forwarded to {} ({})",
                                e.source,
                                &to[..8.min(to.len())]
                            )),
                            Some(MergeOutcome::Merged { commit, .. }) => {
                                self.notes.push(format!(
                                    "merge queue: merged {} into main ({})",
                                    e.source,
                                    &commit[..8.min(commit.len())]
                                ));
                            }
                            // Merged by someone else first (an agent's merge task): said there.
                            _ => {}
                        }
                    }
                }
                EntryStatus::Blocked => {
                    if self.blocked.insert(e.id) {
                        let tasks = e.resolution.as_ref().map_or(0, |r| r.conflict_tasks.len());
                        let who: BTreeSet<String> = e
                            .resolution
                            .iter()
                            .flat_map(|r| &r.conflict_tasks)
                            .filter_map(|t| t.assigned_to.as_ref().map(|a| a.to_string()))
                            .collect();
                        self.notes.push(format!(
                            "merge queue: {} blocked by {} conflicting file(s): {tasks} \
                             resolution task(s) for {}",
                            e.source,
                            e.conflicted_paths.len(),
                            if who.is_empty() {
                                "anyone".to_string()
                            } else {
                                who.into_iter().collect::<Vec<_>>().join(", ")
                            }
                        ));
                    }
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
    fn advance(&mut self, tracker: &Tasks) -> anyhow::Result<bool> {
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
                let status = tracker.get(&t.task)?.map(|t| t.status);
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

/// What the verdict looks at.
struct Session<'a> {
    ws: &'a Workspace,
    backends: &'a Backends,
    git: &'a git2::Repository,
    tasks: &'a [Task],
    graph: &'a Graph,
    events: &'a [AgentEvent],
    merge: Option<&'a MergePhase>,
    stopped: Option<&'a str>,
    agents: &'a [(String, &'a str)],
    via: Via,
}

fn verify(session: &Session<'_>) -> anyhow::Result<Vec<Check>> {
    let Session {
        ws,
        backends,
        git,
        tasks,
        graph,
        events,
        merge,
        stopped,
        agents,
        via,
    } = *session;
    let mut checks = Vec::new();
    let mut check = |what: String, ok: bool| checks.push(Check { what, ok });
    check(
        match stopped {
            Some(why) => format!("the session finished (stopped: {why})"),
            None => "the session finished in time, every agent exiting cleanly".into(),
        },
        stopped.is_none(),
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
    let snapshot = backends.locks().snapshot()?;
    check(
        format!(
            "no lock left behind ({} held, {} waiting)",
            snapshot.holders.len(),
            snapshot.waiters.len()
        ),
        snapshot.holders.is_empty() && snapshot.waiters.is_empty(),
    );

    // The deadlock was reported on the `deadlock` topic and its victim backed off.
    let reports = Deadlocks::open(backends)?.read()?;
    let victims = events
        .iter()
        .filter(|e| e.event == EventKind::DeadlockVictim)
        .count();
    check(
        format!(
            "the deadlock was detected, reported on the deadlock topic ({} report(s)) and resolved ({victims} victim(s))",
            reports.len()
        ),
        !reports.is_empty() && victims >= 1,
    );

    // Each agent worked in its own worktree and left it clean at its branch's tip.
    let mut unclean = Vec::new();
    for (a, _) in agents {
        let branch = format!("agent/{a}");
        let wt = repo::Worktree::open(&repo::worktree_path(ws.root(), a), &branch)?;
        let dirty = wt.dirty()?;
        if !dirty.is_empty() {
            unclean.push(format!("{a}: {}", dirty.join(", ")));
        }
    }
    check(
        format!(
            "every agent edited files in its own worktree and committed them ({} worktrees \
             under {}/; left unclean: {unclean:?})",
            agents.len(),
            repo::WORKTREES
        ),
        unclean.is_empty(),
    );

    if via == Via::Mcp {
        // Only MCP and hooks: every agent ended its session through them.
        let mut total = Stats::default();
        let mut ended = BTreeSet::new();
        for e in events.iter().filter(|e| e.event == EventKind::Exiting) {
            if let Ok(s) = serde_json::from_str::<Stats>(&e.detail)
                && s.mcp_calls > 0
                && s.hook_calls > 0
            {
                ended.insert(e.agent.as_str());
                total.mcp_calls += s.mcp_calls;
                total.hook_calls += s.hook_calls;
                total.edits_allowed += s.edits_allowed;
                total.edits_denied += s.edits_denied;
            }
        }
        let missing: Vec<&str> = agents
            .iter()
            .map(|(a, _)| a.as_str())
            .filter(|a| !ended.contains(a))
            .collect();
        check(
            format!(
                "every agent drove maos only through its own MCP server and Claude Code hooks \
                 ({} tool calls, {} hook calls; PreToolUse allowed {} edits and denied {}; \
                 without a session: {missing:?})",
                total.mcp_calls, total.hook_calls, total.edits_allowed, total.edits_denied
            ),
            missing.is_empty() && total.edits_allowed > 0 && total.edits_denied == 0,
        );
        let registered: Vec<String> = backends
            .agents()
            .list()?
            .0
            .into_iter()
            .map(|a| a.record.id.to_string())
            .filter(|a| agents.iter().any(|(x, _)| x == a))
            .collect();
        check(
            format!(
                "SessionEnd released and unregistered every agent (still registered: \
                 {registered:?})"
            ),
            registered.is_empty(),
        );
    }
    Ok(checks)
}

/// The workspace's backend: `--backend URL [--namespace N]` recorded in its config first (as
/// `maos init --backend` does, reaching the server before recording it), then opened as
/// every maos command opens it (`MAOS_BACKEND` still overrides). `--via mcp` needs the
/// Claude Code hooks, which work on the files only: refused on PostgreSQL.
fn choose_backend(ws: &Workspace, args: &DemoArgs) -> anyhow::Result<Backends> {
    if let Some(value) = args.backend.as_deref()
        && let Some(url) = backend::parse(value, "--backend")?
    {
        let ns = backend::namespace_for(ws.root(), &url, args.namespace.as_deref())?;
        backend::connect(&url, &ns, "--backend")?;
        let mut config = Config::load(ws)?;
        config.backend = Some(url.as_str().to_owned());
        config.namespace = Some(ns);
        config.save(ws)?;
    }
    let backends = backend::open(ws)?;
    Ok(backends)
}

/// The deadlock monitor: finds cycles in the wait-for graph, broadcasts them on the
/// `deadlock` topic and ends the victim's wait. The file backend's watches the lock table's
/// files; the server's asks every quarter second on a thread of its own.
enum Monitor {
    File(#[allow(dead_code)] maos_coordination::lock::Monitor), // stops when dropped
    Pg {
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl Monitor {
    fn start(backends: &Backends, me: &AgentId) -> anyhow::Result<Self> {
        let Some(pg) = backends.postgres() else {
            return Ok(Monitor::File(
                DeadlockDetector::new(backends.workspace())
                    .resolve(true)
                    .sender(me.clone())
                    .spawn_monitor(Duration::from_secs(1))?,
            ));
        };
        let detector = PgDeadlockDetector::new(pg)
            .resolve(true)
            .broadcast(me.clone());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("deadlock-monitor".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(e) = detector.check() {
                        tracing::warn!("deadlock check failed: {e}");
                    }
                    std::thread::park_timeout(Duration::from_millis(250));
                }
            })?;
        Ok(Monitor::Pg {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Monitor::Pg { stop, thread } = self {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(t) = thread.take() {
                t.thread().unpark();
                let _ = t.join();
            }
        }
    }
}

/// The reports on the `deadlock` topic, read forward: the topic's channel on the files, the
/// broadcast feed on a server.
enum Deadlocks {
    File(FileChannel, Cursor),
    Store(Box<dyn TopicReader>),
}

impl Deadlocks {
    fn open(backends: &Backends) -> anyhow::Result<Self> {
        Ok(if backends.is_file() {
            Deadlocks::File(
                FileChannel::open(backends.workspace(), topic_channel("deadlock")?)?,
                Cursor::start(),
            )
        } else {
            Deadlocks::Store(backends.channels().topic_reader(&["deadlock"], None)?)
        })
    }

    /// The reports since the last read: (sent at, payload).
    fn read(&mut self) -> anyhow::Result<Vec<(u64, serde_json::Value)>> {
        match self {
            Deadlocks::File(ch, cursor) => {
                let batch =
                    ch.receive_blocking::<serde_json::Value>(cursor, &Filter::Everything)?;
                *cursor = batch.cursor;
                Ok(batch
                    .messages
                    .into_iter()
                    .map(|d| (d.message.timestamp, d.message.payload))
                    .collect())
            }
            Deadlocks::Store(r) => {
                let mut out = Vec::new();
                for m in r.read()?.messages {
                    let payload = serde_json::from_str(m.message.payload.get())
                        .context("a deadlock report is not JSON")?;
                    out.push((m.message.timestamp, payload));
                }
                Ok(out)
            }
        }
    }
}
