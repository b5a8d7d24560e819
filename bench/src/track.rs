//! maos-track: the ready queue, the `maos task ready` command end to end, the critical path,
//! the cost of completing a task in a small and a large graph, claims by 8 and 32 processes
//! at once among 100 registered agents, and how every task command
//! scales from 1,000 to 100,000 tasks (library and CLI, same run), creating 10,000 tasks one
//! `maos task add` at a time, and the size of the task notifications beside the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maos_coordination::track::{self, Options, Query, Task, TaskStatus, TaskTracker};
use maos_coordination::{AgentId, Priority, TaskId, Workspace};

use crate::table::{Row, Table, median_us};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `n` tasks of a random DAG: each task depends on up to 3 of the 50 tasks created just
/// before it, with estimates and priorities.
fn random_dag(n: usize, seed: u64) -> Vec<Task> {
    let mut rng = Rng(seed | 1);
    let mut tasks: Vec<Task> = Vec::with_capacity(n);
    for i in 0..n {
        let mut t = Task::new(format!("task {i}: implement part {i}"));
        t.estimated_duration = Some(Duration::from_secs(60 * (1 + rng.below(120))));
        t.priority = match rng.below(10) {
            0 => Priority::High,
            1 => Priority::Low,
            _ => Priority::Normal,
        };
        if i > 0 {
            let k = rng.below(4);
            for _ in 0..k {
                let lo = i.saturating_sub(50);
                let j = lo + rng.below((i - lo) as u64) as usize;
                let dep = tasks[j].id.clone();
                if !t.dependencies.contains(&dep) {
                    t.dependencies.push(dep);
                }
            }
        }
        tasks.push(t);
    }
    tasks
}

fn tracker(dir: &Path) -> anyhow::Result<TaskTracker> {
    let ws = Workspace::open_or_init(dir)?;
    Ok(TaskTracker::open_with(
        &ws,
        Options::default()
            .publish(false)
            .release_dead_claims(false)
            .agent(maos_coordination::AgentId::new("bench")?),
    )?)
}

/// A store of `n` tasks where a fifth of the roots are completed, compacted, plus a short log
/// tail of recent changes.
fn populated(dir: &Path, n: usize) -> anyhow::Result<TaskTracker> {
    let t = tracker(dir)?;
    let tasks = random_dag(n, 7);
    t.create_tasks_blocking(&tasks)?;
    t.compact_blocking()?;
    let roots: Vec<TaskId> = tasks
        .iter()
        .filter(|x| x.dependencies.is_empty())
        .map(|x| x.id.clone())
        .collect();
    for id in roots.iter().take(roots.len() / 5) {
        t.update_status_blocking(id, TaskStatus::InProgress, None)?;
        t.update_status_blocking(id, TaskStatus::Completed, None)?;
    }
    Ok(t)
}

/// The naive ready scan: every task, every dependency looked up.
fn naive_ready(tasks: &[Task]) -> Vec<Task> {
    let by_id: HashMap<&TaskId, &Task> = tasks.iter().map(|t| (&t.id, t)).collect();
    let mut ready: Vec<&Task> = tasks
        .iter()
        .filter(|t| matches!(t.status, TaskStatus::Pending | TaskStatus::Blocked))
        .filter(|t| {
            t.dependencies.iter().all(|d| {
                by_id
                    .get(d)
                    .is_some_and(|x| x.status == TaskStatus::Completed)
            })
        })
        .collect();
    ready.sort_by_key(|t| std::cmp::Reverse(t.priority));
    ready.into_iter().cloned().collect()
}

/// The naive critical path: memoised recursion over a map from id to task.
fn naive_critical_path(tasks: &[Task]) -> u64 {
    let by_id: HashMap<&TaskId, &Task> = tasks.iter().map(|t| (&t.id, t)).collect();
    let mut memo: HashMap<&TaskId, u64> = HashMap::new();
    fn longest<'a>(
        id: &'a TaskId,
        by_id: &HashMap<&'a TaskId, &'a Task>,
        memo: &mut HashMap<&'a TaskId, u64>,
    ) -> u64 {
        if let Some(&v) = memo.get(id) {
            return v;
        }
        let t = by_id[id];
        let mut best = 0;
        for d in &t.dependencies {
            best = best.max(longest(d, by_id, memo));
        }
        let v = best
            + t.estimated_duration
                .unwrap_or(track::DEFAULT_ESTIMATE)
                .as_millis() as u64;
        memo.insert(id, v);
        v
    }
    // Tasks are in creation order, so dependencies come first: the recursion stays shallow.
    tasks
        .iter()
        .map(|t| longest(&t.id, &by_id, &mut memo))
        .max()
        .unwrap_or(0)
}

fn maos_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("maos");
    p.exists().then_some(p)
}

fn time_command(bin: &Path, args: &[&str], runs: usize) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let st = Command::new(bin)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        samples.push(t.elapsed());
        anyhow::ensure!(st.success(), "{bin:?} {args:?} failed");
    }
    Ok(median_us(&mut samples))
}

/// A store of `n` tasks, compacted, kept open by a long-lived tracker.
fn completion_store(n: usize) -> anyhow::Result<(tempfile::TempDir, TaskTracker)> {
    let dir = tempfile::tempdir()?;
    let t = tracker(dir.path())?;
    t.create_tasks_blocking(&random_dag(n, 11))?;
    t.compact_blocking()?;
    Ok((dir, t))
}

/// Claims one task and times its completion.
fn complete_one(t: &TaskTracker) -> anyhow::Result<Option<Duration>> {
    let Some(c) = t.claim_blocking(&maos_coordination::AgentId::new("bench")?)? else {
        return Ok(None);
    };
    let start = Instant::now();
    t.update_status_blocking(&c.id, TaskStatus::Completed, None)?;
    Ok(Some(start.elapsed()))
}

pub(crate) fn run(table: &mut Table) -> anyhow::Result<()> {
    // ready() on 10,000 tasks, warm (a long-lived process re-reading only the log tail).
    let dir = tempfile::tempdir()?;
    let t = populated(dir.path(), 10_000)?;
    let ready_n = t.ready_blocking()?.len();
    let mut fast = Vec::new();
    for _ in 0..50 {
        let s = Instant::now();
        let r = t.ready_blocking()?;
        fast.push(s.elapsed());
        std::hint::black_box(r);
    }
    let tasks = t.list_blocking()?;
    let mut naive = Vec::new();
    for _ in 0..50 {
        let s = Instant::now();
        let r = naive_ready(&tasks);
        naive.push(s.elapsed());
        assert_eq!(r.len(), ready_n, "naive and tracker agree on the ready set");
    }
    let v = median_us(&mut fast) / 1000.0;
    let b = median_us(&mut naive) / 1000.0;
    table.push(Row {
        group: "track",
        name: format!("ready() on 10,000 tasks ({ready_n} ready), p50"),
        value: v,
        baseline_name: "naive scan: every dependency of every task by lookup".into(),
        baseline: b,
        unit: "ms",
        higher_is_better: false,
        target: "<= 3 ms (a Go + SQLite tracker: 30 ms)".into(),
        met: v <= 3.0,
    });

    // `maos task ready` end to end.
    if let Some(bin) = maos_binary() {
        let ws = dir.path().to_string_lossy().into_owned();
        let v = time_command(&bin, &["--workspace", &ws, "task", "ready"], 15)? / 1000.0;
        let b = time_command(&bin, &["--version"], 15)? / 1000.0;
        table.push(Row {
            group: "track",
            name: "`maos task ready` on 10,000 tasks, process start to exit (p50)".into(),
            value: v,
            baseline_name: "process start: `maos --version`".into(),
            baseline: b,
            unit: "ms",
            higher_is_better: false,
            target: "<= 50 ms".into(),
            met: v <= 50.0,
        });
    } else {
        eprintln!("[track] no maos binary next to the bench binary: build it with --release");
    }
    drop(t);

    // Critical path on 100,000 tasks.
    let big = random_dag(100_000, 3);
    let mut cp = Vec::new();
    let mut total = Duration::ZERO;
    for _ in 0..5 {
        let s = Instant::now();
        let (_, tot) = track::critical_path_of(&big);
        cp.push(s.elapsed());
        total = tot;
    }
    let mut naive_cp = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        let tot = naive_critical_path(&big);
        naive_cp.push(s.elapsed());
        assert_eq!(
            tot,
            total.as_millis() as u64,
            "naive and fast critical paths agree"
        );
    }
    let v = median_us(&mut cp) / 1000.0;
    let b = median_us(&mut naive_cp) / 1000.0;
    table.push(Row {
        group: "track",
        name: "critical path on 100,000 tasks (p50)".into(),
        value: v,
        baseline_name: "memoised recursion over an id map".into(),
        baseline: b,
        unit: "ms",
        higher_is_better: false,
        target: "<= 100 ms".into(),
        met: v <= 100.0,
    });

    // Completing a task: 1,000 vs 100,000 tasks, interleaved so that both see the same
    // machine load and the same disk.
    let (_d1, small_t) = completion_store(1_000)?;
    let (_d2, large_t) = completion_store(100_000)?;
    let (mut small, mut large) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        if let (Some(a), Some(b)) = (complete_one(&small_t)?, complete_one(&large_t)?) {
            small.push(a);
            large.push(b);
        }
    }
    let small = median_us(&mut small);
    let large = median_us(&mut large);
    table.push(Row {
        group: "track",
        name: "complete one task among 100,000 (p50, fsynced)".into(),
        value: large,
        baseline_name: "the same among 1,000 tasks".into(),
        baseline: small,
        unit: "us",
        higher_is_better: false,
        target: "proportional to dependents: within 2x of 1,000".into(),
        met: large <= 2.0 * small,
    });
    claims(table)?;
    scaling(table)?;
    one_add_at_a_time(table)?;
    Ok(())
}

/// The sizes every command is measured at.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// A store of `n` tasks (one batch, compacted) plus a tail of 100 claims and completions:
/// the same shape at every size.
struct Scaled {
    n: usize,
    dir: tempfile::TempDir,
    ids: Vec<TaskId>,
}

fn scaled(n: usize) -> anyhow::Result<Scaled> {
    let dir = tempfile::tempdir()?;
    let ws = Workspace::open_or_init(dir.path())?;
    let t = TaskTracker::open_with(
        &ws,
        Options::default()
            .publish(false)
            .release_dead_claims(false)
            .agent(AgentId::new("setup")?),
    )?;
    let tasks = random_dag(n, 17);
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id.clone()).collect();
    t.create_tasks_blocking(&tasks)?;
    t.compact_blocking()?;
    let me = AgentId::new("setup")?;
    for _ in 0..100 {
        if let Some(c) = t.claim_blocking(&me)? {
            t.update_status_blocking(&c.id, TaskStatus::Completed, None)?;
        }
    }
    Ok(Scaled { n, dir, ids })
}

/// A tracker as a fresh process opens it (nothing cached).
fn fresh(s: &Scaled, agent: &str) -> anyhow::Result<TaskTracker> {
    let ws = Workspace::open(s.dir.path())?;
    Ok(TaskTracker::open_with(
        &ws,
        Options::default()
            .publish(false)
            .release_dead_claims(false)
            .agent(AgentId::new(agent)?),
    )?)
}

/// One command, as a function of the store and the round.
type Op = fn(&Scaled, usize) -> anyhow::Result<()>;

fn lib_ops() -> Vec<(&'static str, Op)> {
    vec![
        ("add (one dependency)", |s, i| {
            let t = fresh(s, "bench")?;
            let dep = s.ids[(i * 7919) % s.ids.len()].clone();
            t.create_task_blocking(&Task::new(format!("bench {i}")).after(dep))?;
            Ok(())
        }),
        ("ready (first 100)", |s, _| {
            std::hint::black_box(fresh(s, "bench")?.ready_page_blocking(100)?);
            Ok(())
        }),
        ("claim + done", |s, _| {
            let t = fresh(s, "bench")?;
            let c = t
                .claim_blocking(&AgentId::new("bench")?)?
                .ok_or_else(|| anyhow::anyhow!("nothing to claim"))?;
            t.update_status_blocking(&c.id, TaskStatus::Completed, None)?;
            Ok(())
        }),
        ("show", |s, i| {
            let id = &s.ids[(i * 104_729) % s.ids.len()];
            std::hint::black_box(fresh(s, "bench")?.show_blocking(id)?);
            Ok(())
        }),
        ("list page (50)", |s, _| {
            std::hint::black_box(fresh(s, "bench")?.list_page_blocking(&Query::all().page(0, 50))?);
            Ok(())
        }),
    ]
}

fn cli(bin: &Path, s: &Scaled, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--workspace")
        .arg(s.dir.path())
        .args(["--agent", "bench"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{bin:?} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// One command run through the CLI.
type CliOp = fn(&Path, &Scaled, usize) -> anyhow::Result<()>;

fn cli_ops() -> Vec<(&'static str, CliOp)> {
    vec![
        ("add (one dependency)", |b, s, i| {
            let dep = s.ids[(i * 7919) % s.ids.len()].to_string();
            cli(
                b,
                s,
                &["task", "add", &format!("bench {i}"), "--after", &dep],
            )
            .map(drop)
        }),
        ("ready (first page)", |b, s, _| {
            cli(b, s, &["task", "ready"]).map(drop)
        }),
        ("claim + done", |b, s, _| {
            let out = cli(b, s, &["--json", "task", "claim"])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let id = v["id"].as_str().ok_or_else(|| anyhow::anyhow!("no id"))?;
            cli(b, s, &["task", "done", id]).map(drop)
        }),
        ("show", |b, s, i| {
            let id = s.ids[(i * 104_729) % s.ids.len()].to_string();
            cli(b, s, &["task", "show", &id]).map(drop)
        }),
        ("list page (50)", |b, s, _| {
            cli(b, s, &["task", "list", "--limit", "50"]).map(drop)
        }),
    ]
}

/// Every command at 1,000, 10,000 and 100,000 tasks, samples interleaved across the sizes so
/// that all see the same machine load. Rows: 10,000 and 100,000 beside 1,000.
fn scaling(table: &mut Table) -> anyhow::Result<()> {
    let stores: Vec<Scaled> = SIZES.iter().map(|&n| scaled(n)).collect::<Result<_, _>>()?;
    let mut push = |what: String, samples: &mut [Vec<Duration>], unit_ms: bool| {
        let med: Vec<f64> = samples
            .iter_mut()
            .map(|s| median_us(s) / if unit_ms { 1000.0 } else { 1.0 })
            .collect();
        eprintln!("[track] {what}: {med:?}");
        for (k, &n) in SIZES.iter().enumerate().skip(1) {
            table.push(Row {
                group: "track",
                name: format!("{what} at {n} tasks (p50)"),
                value: med[k],
                baseline_name: "the same at 1,000 tasks".into(),
                baseline: med[0],
                unit: if unit_ms { "ms" } else { "us" },
                higher_is_better: false,
                target: "within 2x of 1,000".into(),
                met: med[k] <= 2.0 * med[0],
            });
        }
    };
    for (name, op) in lib_ops() {
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); SIZES.len()];
        for round in 0..41 {
            // Interleaved, in a rotating order, so every size sees the same machine load.
            for j in 0..stores.len() {
                let k = (round + j) % stores.len();
                let t = Instant::now();
                op(&stores[k], round)?;
                samples[k].push(t.elapsed());
            }
        }
        push(
            format!("library, fresh tracker: {name}"),
            &mut samples,
            false,
        );
    }
    let Some(bin) = maos_binary() else {
        eprintln!("[track] no maos binary next to the bench binary: build it with --release");
        return Ok(());
    };
    for (name, op) in cli_ops() {
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); SIZES.len()];
        for round in 0..31 {
            for j in 0..stores.len() {
                let k = (round + j) % stores.len();
                let t = Instant::now();
                op(&bin, &stores[k], round)?;
                samples[k].push(t.elapsed());
            }
        }
        push(format!("`maos task` {name}"), &mut samples, true);
    }
    for s in &stores {
        eprintln!(
            "[track] store of {} tasks: {} bytes",
            s.n,
            dir_bytes(&s.dir.path().join(".maos/tasks"))
        );
    }
    Ok(())
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let m = e.metadata().ok();
                    if m.as_ref().is_some_and(std::fs::Metadata::is_dir) {
                        dir_bytes(&e.path())
                    } else {
                        m.map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Creates `n` tasks in `root` one `maos task add` at a time (two in three after the task
/// added before them); returns the time each add took.
fn add_one_at_a_time(
    bin: &Path,
    root: &Path,
    n: usize,
    from: usize,
) -> anyhow::Result<Vec<Duration>> {
    let root = root.to_string_lossy().into_owned();
    let mut per_add = Vec::with_capacity(n);
    let mut prev: Option<String> = None;
    for i in from..from + n {
        let name = format!("task {i}: implement part {i}");
        let mut args = vec![
            "--workspace",
            &root,
            "--agent",
            "lead",
            "task",
            "add",
            &name,
        ];
        if i % 3 != 0
            && let Some(p) = &prev
        {
            args.extend(["--after", p.as_str()]);
        }
        let t = Instant::now();
        let out = Command::new(bin)
            .args(&args)
            .env_remove("RUST_LOG")
            .stderr(Stdio::inherit())
            .output()?;
        per_add.push(t.elapsed());
        anyhow::ensure!(out.status.success(), "task add {i} failed");
        prev = Some(String::from_utf8(out.stdout)?.trim().to_string());
    }
    Ok(per_add)
}

/// 10,000 tasks created one `maos task add` at a time (the issue measured 107 s, quadratic):
/// the whole run, then adds into this 10,000-task store interleaved with adds into a
/// 1,000-task store built the same way (same moment, same machine load). Then the size of
/// the task notifications those adds published beside the store's.
fn one_add_at_a_time(table: &mut Table) -> anyhow::Result<()> {
    let Some(bin) = maos_binary() else {
        return Ok(());
    };
    const N: usize = 10_000;
    let big = tempfile::tempdir()?;
    let small = tempfile::tempdir()?;
    // Only `maos init` creates a workspace.
    Workspace::init(big.path())?;
    Workspace::init(small.path())?;
    let started = Instant::now();
    let per_add = add_one_at_a_time(&bin, big.path(), N, 0)?;
    let total = started.elapsed();
    let mut first: Vec<Duration> = per_add[..1000].to_vec();
    let mut last: Vec<Duration> = per_add[N - 1000..].to_vec();
    eprintln!(
        "[track] {N} adds one at a time: {:.1} s in all; first 1,000 p50 {:.2} ms, last 1,000 p50 {:.2} ms (minutes apart: machine load differs)",
        total.as_secs_f64(),
        median_us(&mut first) / 1000.0,
        median_us(&mut last) / 1000.0
    );
    // Notifications of those 10,000 adds (one per add) beside the store.
    let ws = Workspace::open(big.path())?;
    let store = dir_bytes(&ws.tasks_dir());
    let chans = ws.maos_dir().join("channels").join("broadcast");
    let notes = dir_bytes(&chans.join("tasks")) + dir_bytes(&chans.join("global"));
    eprintln!(
        "[track] {N} tasks added one at a time: notifications {notes} bytes (broadcast/tasks + broadcast/global), store {store} bytes"
    );
    table.push(Row {
        group: "track",
        name: format!(
            "task notifications of {N} `maos task add` (broadcast/tasks + broadcast/global)"
        ),
        value: notes as f64 / 1e6,
        baseline_name: "the task store (both kept generations: snapshots, logs, history)".into(),
        baseline: store as f64 / 1e6,
        unit: "MB",
        higher_is_better: false,
        target: "compact (the issue: 6.1 MB vs 2.0 MB)".into(),
        met: notes <= store,
    });

    add_one_at_a_time(&bin, small.path(), 1_000, 0)?;
    let (mut at_small, mut at_big) = (Vec::new(), Vec::new());
    for round in 0..25 {
        at_small.extend(add_one_at_a_time(&bin, small.path(), 1, 1_000 + round)?);
        at_big.extend(add_one_at_a_time(&bin, big.path(), 1, N + round)?);
    }
    let (s, b) = (
        median_us(&mut at_small) / 1000.0,
        median_us(&mut at_big) / 1000.0,
    );
    table.push(Row {
        group: "track",
        name: format!(
            "`maos task add` into a store built by 10,000 single adds (p50; building it took {:.0} s)",
            total.as_secs_f64()
        ),
        value: b,
        baseline_name: "the same into a store built by 1,000 single adds, interleaved".into(),
        baseline: s,
        unit: "ms",
        higher_is_better: false,
        target: "not quadratic: within 2x (the issue: 107 s for 10,000)".into(),
        met: b <= 2.0 * s,
    });
    Ok(())
}

/// The child of the contended claim benchmark, `--track-claim-child WS ID N`: registers as
/// agent ID (this process), says `ready`, waits for a line on stdin, then claims and completes
/// up to N tasks and prints each claim's latency in microseconds, one per line.
pub(crate) fn claim_child(args: &[String]) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let [ws, id, n] = args else {
        anyhow::bail!("usage: --track-claim-child WS ID N");
    };
    let n: usize = n.parse()?;
    let ws = Workspace::open(ws)?;
    let me = AgentId::new(id.as_str())?;
    maos_coordination::AgentRegistry::new(&ws)
        .register(maos_coordination::Registration::new(me.clone()))?;
    let t = TaskTracker::open_with(&ws, Options::default().agent(me.clone()).publish(false))?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        let s = Instant::now();
        let Some(task) = t.claim_blocking(&me)? else {
            break;
        };
        lat.push(s.elapsed().as_micros());
        t.update_status_blocking(&task.id, TaskStatus::Completed, None)?;
    }
    let mut out = std::io::stdout().lock();
    for l in lat {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

/// Claim latencies of `procs` processes claiming and completing `per` tasks each at once,
/// with `agents` agents registered in all (the claimers among them).
fn contended_claims(procs: usize, agents: usize, per: usize) -> anyhow::Result<Vec<Duration>> {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let tasks: Vec<Task> = (0..procs * per)
        .map(|i| Task::new(format!("t{i}")))
        .collect();
    tracker(dir.path())?.create_tasks_blocking(&tasks)?;
    // Idle agents (alive: this process), as in a swarm where most agents are busy elsewhere.
    let reg = maos_coordination::AgentRegistry::new(&ws);
    for i in procs..agents {
        reg.register(maos_coordination::Registration::new(AgentId::new(
            format!("idle{i}"),
        )?))?;
    }
    let exe = std::env::current_exe()?;
    let mut kids = Vec::new();
    for i in 0..procs {
        let mut c = Command::new(&exe)
            .arg("--track-claim-child")
            .arg(dir.path())
            .arg(format!("c{i}"))
            .arg(per.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut r = BufReader::new(c.stdout.take().expect("piped"));
        let mut line = String::new();
        r.read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "claim child said {line:?}");
        kids.push((c, r));
    }
    for (c, _) in &mut kids {
        writeln!(c.stdin.as_mut().expect("piped"))?;
    }
    let mut lat = Vec::new();
    for (mut c, r) in kids {
        for line in r.lines() {
            lat.push(Duration::from_micros(line?.trim().parse()?));
        }
        anyhow::ensure!(c.wait()?.success(), "a claim child failed");
    }
    anyhow::ensure!(
        lat.len() == procs * per,
        "{} claims for {} tasks",
        lat.len(),
        procs * per
    );
    Ok(lat)
}

/// Contended claims: p50 and p99 of a claim with 8 and 32 processes claiming at once among
/// 100 registered agents, beside one process alone.
fn claims(table: &mut Table) -> anyhow::Result<()> {
    use crate::table::percentile_us;
    let mut alone = contended_claims(1, 100, 200)?;
    let a99 = percentile_us(&mut alone, 99.0) / 1000.0;
    for procs in [8, 32] {
        let mut lat = contended_claims(procs, 100, 40)?;
        let p50 = percentile_us(&mut lat, 50.0) / 1000.0;
        let p99 = percentile_us(&mut lat, 99.0) / 1000.0;
        table.push(Row {
            group: "track",
            name: format!(
                "claim, {procs} processes claiming + completing at once, 100 agents registered \
                 (p99; p50 {p50:.2} ms)"
            ),
            value: p99,
            baseline_name: "1 process, same store and agents (p99)".into(),
            baseline: a99,
            unit: "ms",
            higher_is_better: false,
            target: "p99 <= 50 ms".into(),
            met: p99 <= 50.0,
        });
    }
    Ok(())
}
