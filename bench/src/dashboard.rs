//! maos-dashboard at 100 agents, 10,000 tasks and 10,000 locks: the snapshot (cold and after
//! one change) beside the raw library reads it is made of, the page's JSON, and in a real
//! headless Chromium the first paint and the update latency beside the same on an empty
//! workspace.

use std::time::{Duration, Instant};

use maos_coordination::core::{ProcessIdentity, Registration};
use maos_coordination::dashboard::{Changed, Collector, Options, Server, ViewQuery};
use maos_coordination::lock::{FileLock, LockTable};
// The bench sets up state as an operator: it moves tasks assigned to agents (`force`).
use maos_coordination::track::{Options as TrackOptions, Task, TaskStatus, TaskTracker, Update};
use maos_coordination::{AgentId, AgentRegistry, ResourceName, Workspace};
use maos_tests::chromium::Chromium;

use crate::table::{Row, Table, median_us};

const AGENTS: usize = 100;
const TASKS: usize = 10_000;
const LOCKS: usize = 10_000;
const WAITERS: usize = 10;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn agent(i: usize) -> AgentId {
    AgentId::new(format!("agent-{i:03}")).expect("a valid name")
}

/// 100 registered agents (alive: this process stands for them), 10,000 tasks in a random DAG
/// assigned to them with mixed statuses, 10,000 locks held by them (agent leases) and a few
/// queued waiters (threads, returned so they can be ended).
fn populate(ws: &Workspace) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let reg = AgentRegistry::new(ws);
    for i in 0..AGENTS {
        reg.register(
            Registration::new(agent(i))
                .role(maos_coordination::AgentRole::new(
                    ["backend", "frontend", "reviewer"][i % 3],
                )?)
                .branch(format!("agent/{i:03}"))
                .process(ProcessIdentity::current()),
        )?;
    }
    let tasks = task_graph();
    let tracker = TaskTracker::open_with(
        ws,
        TrackOptions::default()
            .publish(false)
            .release_dead_claims(false),
    )?;
    tracker.create_tasks_blocking(&tasks)?;
    // A tenth of the roots done, a few in progress.
    for (k, id) in roots(&tasks)
        .iter()
        .enumerate()
        .take(roots(&tasks).len() / 10 + 20)
    {
        tracker.update_blocking(id, &Update::status(TaskStatus::InProgress).force())?;
        if k >= 20 {
            tracker.update_blocking(id, &Update::status(TaskStatus::Completed).force())?;
        }
    }
    tracker.compact_blocking()?;
    seed_locks(ws)?;
    let mut waiters = Vec::new();
    for w in 0..WAITERS {
        let ws = ws.clone();
        waiters.push(std::thread::spawn(move || {
            let r = FileLock::new(&ws, ResourceName::new(lock_resource(w)).expect("valid"))
                .agent(agent(AGENTS - 1 - w))
                .wait(Duration::from_secs(600))
                .acquire_blocking("bench waiter");
            drop(r);
        }));
    }
    // Wait until every waiter is queued.
    let table = LockTable::open(ws)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while table.snapshot()?.waiters.len() < WAITERS {
        anyhow::ensure!(Instant::now() < deadline, "the bench waiters did not queue");
        std::thread::yield_now();
    }
    Ok(waiters)
}

/// The ids of the tasks without dependencies.
fn roots(tasks: &[Task]) -> Vec<maos_coordination::TaskId> {
    tasks
        .iter()
        .filter(|t| t.dependencies.is_empty())
        .map(|t| t.id.clone())
        .collect()
}

/// 10,000 tasks in a random DAG, assigned to the agents (deterministic).
fn task_graph() -> Vec<Task> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tasks: Vec<Task> = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let mut t = Task::new(format!("task {i}: implement part {i}"));
        t.estimated_duration = Some(Duration::from_secs(60 * (1 + rng.below(120))));
        t.assigned_to = Some(agent(rng.below(AGENTS as u64) as usize));
        if i > 0 {
            for _ in 0..rng.below(4) {
                let lo = i.saturating_sub(50);
                let dep = tasks[lo + rng.below((i - lo) as u64) as usize].id.clone();
                if !t.dependencies.contains(&dep) {
                    t.dependencies.push(dep);
                }
            }
        }
        tasks.push(t);
    }
    tasks
}

fn lock_resource(i: usize) -> String {
    format!("src/mod{:02}/file{i:05}.rs", i % 50)
}

/// Adds 10,000 held locks (leases of the registered agents) to the lock table in one write,
/// following the table format of docs/protocol.md (lock section: the two checksummed slots,
/// under the guard's kernel lock). Taking them one by one through `FileLock` costs one table
/// rewrite each, quadratic in the table size (about 17 minutes on the loaded 2-core machine).
/// The result is checked through `LockTable::snapshot`, so a format change fails loudly here.
fn seed_locks(ws: &Workspace) -> anyhow::Result<()> {
    // Real leases through the library (the table is an index over documents: no shortcut),
    // held by the agents for an hour, as `maos lock acquire` leaves them.
    for i in 0..LOCKS {
        FileLock::new(ws, ResourceName::new(lock_resource(i))?)
            .agent(agent(i % AGENTS))
            .ttl(Duration::from_secs(3600))
            .try_acquire(&format!("bench lock {i}"))?
            .ok_or_else(|| anyhow::anyhow!("bench lock {i} is busy"))?
            .detach()?;
    }
    let held = LockTable::open(ws)?.snapshot()?.holders.len();
    anyhow::ensure!(
        held == LOCKS,
        "the seeded table holds {held} locks, not {LOCKS}"
    );
    Ok(())
}

/// The raw reads the snapshot is made of, as a fresh process does them.
fn raw_reads(ws: &Workspace) -> anyhow::Result<()> {
    let agents = AgentRegistry::new(ws).list()?;
    let tracker = TaskTracker::open_with(
        ws,
        TrackOptions::default()
            .publish(false)
            .release_dead_claims(false),
    )?;
    let tasks = tracker.list_blocking()?;
    let locks = LockTable::open(ws)?.snapshot()?;
    std::hint::black_box((agents.agents.len(), tasks.len(), locks.holders.len()));
    Ok(())
}

/// First paint and one update in Chromium, for the workspace `ws`: (first render ms after
/// navigation start, ms from the start of the change's write to the page showing it).
fn browser(
    ws: &Workspace,
    change: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut opts = Options::new(AgentId::new("bench-viewer")?);
    opts.listen = "127.0.0.1:0".parse()?;
    let server = rt.block_on(Server::bind(ws, opts))?;
    let url = server.url();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = rt.spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let mut page = Chromium::launch().map_err(anyhow::Error::msg)?;
    page.open(&url, 1440, 1000).map_err(anyhow::Error::msg)?;
    let first = page
        .eval(
            "new Promise(r => { const f = () => window.maosFirstRender !== undefined ? r(window.maosFirstRender) : document.addEventListener('maos:render', f, { once: true }); f(); })",
            Duration::from_secs(60),
        )
        .map_err(anyhow::Error::msg)?;
    let first = first.as_f64().unwrap_or(f64::NAN);
    let version = page
        .eval(
            "Number(document.body.dataset.version)",
            Duration::from_secs(10),
        )
        .map_err(anyhow::Error::msg)?
        .as_u64()
        .unwrap_or(0);
    page.eval(
        &format!("window.__p = new Promise(r => {{ const f = () => Number(document.body.dataset.version) > {version} ? r(Date.now()) : document.addEventListener('maos:render', f, {{ once: true }}); f(); }}); true"),
        Duration::from_secs(10),
    )
    .map_err(anyhow::Error::msg)?;
    let written = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as f64;
    change()?;
    let shown = page
        .eval("window.__p", Duration::from_secs(60))
        .map_err(anyhow::Error::msg)?
        .as_f64()
        .unwrap_or(f64::NAN);
    drop(page);
    let _ = stop.send(());
    let _ = rt.block_on(handle);
    Ok((first, (shown - written).max(0.0)))
}

pub(crate) fn run(table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let setup = Instant::now();
    let waiters = populate(&ws)?;
    eprintln!(
        "[dashboard] workspace of {AGENTS} agents, {TASKS} tasks, {LOCKS} locks built in {:.1?}",
        setup.elapsed()
    );
    let viewer = AgentId::new("bench-viewer")?;

    // Cold snapshot (a dashboard starting) beside the raw reads it is made of.
    let mut cold = Vec::new();
    let mut raw = Vec::new();
    let mut snap = None;
    for _ in 0..5 {
        let t = Instant::now();
        raw_reads(&ws)?;
        raw.push(t.elapsed());
        let t = Instant::now();
        let mut c = Collector::new(&ws, viewer.clone());
        let s = c.refresh(&Changed::all());
        cold.push(t.elapsed());
        snap = Some((c, s));
    }
    let (mut collector, s) = snap.expect("five runs");
    anyhow::ensure!(
        s.tasks.counts.total == TASKS && s.locks.holders.len() == LOCKS && s.agents.len() == AGENTS,
        "the snapshot holds everything: {} tasks, {} locks, {} agents",
        s.tasks.counts.total,
        s.locks.holders.len(),
        s.agents.len()
    );
    anyhow::ensure!(s.locks.waiters.len() == WAITERS, "waiters in the snapshot");
    let (v, b) = (median_us(&mut cold) / 1000.0, median_us(&mut raw) / 1000.0);
    table.push(Row {
        group: "dashboard",
        name: format!("snapshot, cold ({AGENTS} agents, {TASKS} tasks, {LOCKS} locks), p50"),
        value: v,
        baseline_name: "the raw library reads it is made of".into(),
        baseline: b,
        unit: "ms",
        higher_is_better: false,
        target: "< 1000 ms (first paint within 1 s)".into(),
        met: v < 1000.0,
    });

    // After one task change: only the task section is re-read.
    let tracker = TaskTracker::open_with(
        &ws,
        TrackOptions::default()
            .publish(false)
            .release_dead_claims(false),
    )?;
    let ready = tracker.ready_blocking()?;
    let mut inc = Vec::new();
    for t in ready.iter().take(10) {
        tracker.update_blocking(&t.id, &Update::status(TaskStatus::InProgress).force())?;
        let s = Instant::now();
        let snap = collector.refresh(&Changed {
            tasks: true,
            ..Changed::default()
        });
        inc.push(s.elapsed());
        std::hint::black_box(snap);
    }
    let v = median_us(&mut inc) / 1000.0;
    let (file_cold, file_inc) = (median_us(&mut cold) / 1000.0, v);
    // What a dashboard on a server reads every second (no notification for these): on the
    // files, for the comparison below.
    let mut poll = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        std::hint::black_box(collector.refresh(&poll_set()));
        poll.push(t.elapsed());
    }
    let file_poll = median_us(&mut poll) / 1000.0;
    table.push(Row {
        group: "dashboard",
        name: "refresh after one task change (10,000 tasks), p50".into(),
        value: v,
        baseline_name: "cold snapshot".into(),
        baseline: median_us(&mut cold) / 1000.0,
        unit: "ms",
        higher_is_better: false,
        target: "< 500 ms (update within 500 ms)".into(),
        met: v < 500.0,
    });

    // The page's JSON (one page of each table) beside the whole snapshot's.
    let s = collector.current();
    let mut page = Vec::new();
    let mut full = Vec::new();
    let mut page_bytes = 0;
    for _ in 0..10 {
        let t = Instant::now();
        page_bytes = serde_json::to_vec(&s.view(&ViewQuery::default()))?.len();
        page.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(serde_json::to_vec(&s)?);
        full.push(t.elapsed());
    }
    let v = median_us(&mut page) / 1000.0;
    table.push(Row {
        group: "dashboard",
        name: format!(
            "/api/view JSON at that scale ({} KiB), p50",
            page_bytes / 1024
        ),
        value: v,
        baseline_name: "the whole snapshot as JSON".into(),
        baseline: median_us(&mut full) / 1000.0,
        unit: "ms",
        higher_is_better: false,
        target: "< 100 ms".into(),
        met: v < 100.0,
    });

    // In a real browser: first paint and one update, beside an empty workspace.
    let empty_dir = tempfile::tempdir()?;
    let empty = Workspace::init(empty_dir.path())?;
    let et = TaskTracker::open(&empty)?;
    let (empty_first, empty_update) = browser(&empty, || {
        et.create_task_blocking(&Task::new("one"))?;
        Ok(())
    })?;
    let next = tracker.ready_blocking()?;
    let id = next.first().map(|t| t.id.clone());
    let (first, update) = browser(&ws, || {
        if let Some(id) = id {
            tracker.update_blocking(&id, &Update::status(TaskStatus::InProgress).force())?;
        }
        Ok(())
    })?;
    table.push(Row {
        group: "dashboard",
        name: format!("first paint in Chromium ({AGENTS} agents, {TASKS} tasks, {LOCKS} locks)"),
        value: first,
        baseline_name: "first paint, empty workspace".into(),
        baseline: empty_first,
        unit: "ms",
        higher_is_better: false,
        target: "< 1000 ms".into(),
        met: first < 1000.0,
    });
    table.push(Row {
        group: "dashboard",
        name: "page updated after a task change at that scale".into(),
        value: update,
        baseline_name: "same, empty workspace".into(),
        baseline: empty_update,
        unit: "ms",
        higher_is_better: false,
        target: "< 500 ms".into(),
        met: update < 500.0,
    });

    // End the waiters: release the locks they wait for.
    let lt = LockTable::open(&ws)?;
    for w in 0..WAITERS {
        let res = ResourceName::new(lock_resource(w))?;
        let _ = lt.release(&res, &agent(w % AGENTS), None);
    }
    for w in waiters {
        let _ = w.join();
    }
    on_postgres(table, &viewer, file_cold, file_inc, file_poll)
}

/// The sections a dashboard on a server reads on its timer.
fn poll_set() -> Changed {
    Changed {
        agents: true,
        locks: true,
        queue: true,
        ..Changed::default()
    }
}

/// The same scale on PostgreSQL (100 agents, 10,000 tasks, 10,000 locks; no waiters), read
/// through the storage traits as `maos dashboard` does there: the cold snapshot, the refresh
/// after one task change and the once-a-second poll, each beside the files' figure of this
/// run.
fn on_postgres(
    table: &mut Table,
    viewer: &AgentId,
    file_cold: f64,
    file_inc: f64,
    file_poll: f64,
) -> anyhow::Result<()> {
    use std::sync::Arc;

    use maos_coordination::dashboard::Stores;
    use maos_coordination::postgres::lock::PgLock;
    use maos_coordination::postgres::registry::PgRegistry;
    use maos_coordination::postgres::server::{TestServer, unique_namespace};
    use maos_coordination::postgres::stores::{PgAgents, PgComm, PgLocks, PgTasks};
    use maos_coordination::postgres::track::PgTracker;
    use maos_coordination::postgres::{BackendUrl, Pg};
    use maos_coordination::track::TaskStore as _;

    let server = TestServer::start()?;
    let pg = Pg::connect(
        &BackendUrl::parse(&server.url())?,
        &unique_namespace("bench-dashboard"),
    )?;
    let setup = Instant::now();
    let reg = PgRegistry::new(&pg);
    for i in 0..AGENTS {
        reg.register(
            Registration::new(agent(i))
                .branch(format!("agent/{i:03}"))
                .process(ProcessIdentity::current()),
        )?;
    }
    let tasks = task_graph();
    let tracker = PgTracker::new(&pg);
    tracker.create_tasks(&tasks)?;
    let ops = PgTasks::new(&pg, viewer.clone());
    for (k, id) in roots(&tasks)
        .iter()
        .enumerate()
        .take(roots(&tasks).len() / 10 + 20)
    {
        ops.update(id, &Update::status(TaskStatus::InProgress).force())?;
        if k >= 20 {
            ops.update(id, &Update::status(TaskStatus::Completed).force())?;
        }
    }
    for i in 0..LOCKS {
        PgLock::new(&pg, ResourceName::new(lock_resource(i))?)
            .agent(agent(i % AGENTS))
            .ttl(Duration::from_secs(3600))
            .acquire_lease(&format!("bench lock {i}"))?;
    }
    eprintln!(
        "[dashboard] the same on PostgreSQL built in {:.1?}",
        setup.elapsed()
    );
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let system: maos_coordination::dashboard::SystemBroadcast =
        Arc::new(|_, _, _| Err("the bench records no action".into()));
    let stores = Stores::new(
        "postgresql",
        Arc::new(PgComm::new(&pg)),
        Arc::new(PgLocks::new(&pg)),
        Arc::new(PgTasks::new(&pg, viewer.clone())),
        Arc::new(PgAgents::new(&pg)),
        system,
    );
    let mut cold = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let mut c = Collector::with_stores(&ws, viewer.clone(), stores.clone());
        let s = c.refresh(&Changed::all());
        cold.push(t.elapsed());
        last = Some((c, s));
    }
    let (mut collector, s) = last.expect("five runs");
    anyhow::ensure!(
        s.tasks.counts.total == TASKS
            && s.locks.holders.len() == LOCKS
            && s.agents.len() == AGENTS
            && s.problems.is_empty(),
        "the PostgreSQL snapshot holds everything: {} tasks, {} locks, {} agents, problems {:?}",
        s.tasks.counts.total,
        s.locks.holders.len(),
        s.agents.len(),
        s.problems
    );
    let v = median_us(&mut cold) / 1000.0;
    table.push(Row {
        group: "dashboard",
        name: format!(
            "snapshot, cold, PostgreSQL ({AGENTS} agents, {TASKS} tasks, {LOCKS} locks), p50"
        ),
        value: v,
        baseline_name: "the same on the files".into(),
        baseline: file_cold,
        unit: "ms",
        higher_is_better: false,
        target: "< 1000 ms (first paint within 1 s)".into(),
        met: v < 1000.0,
    });
    let ready = ops.ready_page(10)?.tasks;
    let mut inc = Vec::new();
    for t in &ready {
        ops.update(&t.id, &Update::status(TaskStatus::InProgress).force())?;
        let s = Instant::now();
        std::hint::black_box(collector.refresh(&Changed {
            tasks: true,
            ..Changed::default()
        }));
        inc.push(s.elapsed());
    }
    let v = median_us(&mut inc) / 1000.0;
    table.push(Row {
        group: "dashboard",
        name: "refresh after one task change, PostgreSQL (10,000 tasks), p50".into(),
        value: v,
        baseline_name: "the same on the files".into(),
        baseline: file_inc,
        unit: "ms",
        higher_is_better: false,
        target: "< 500 ms (update within 500 ms)".into(),
        met: v < 500.0,
    });
    let mut poll = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        std::hint::black_box(collector.refresh(&poll_set()));
        poll.push(t.elapsed());
    }
    let v = median_us(&mut poll) / 1000.0;
    table.push(Row {
        group: "dashboard",
        name: "the 1 s poll on PostgreSQL (agents, 10,000 locks, queue), p50".into(),
        value: v,
        baseline_name: "the same reads on the files".into(),
        baseline: file_poll,
        unit: "ms",
        higher_is_better: false,
        target: "< 100 ms (a tenth of the interval)".into(),
        met: v < 100.0,
    });
    drop(collector);
    drop(stores);
    drop(pg);
    drop(server);
    Ok(())
}
