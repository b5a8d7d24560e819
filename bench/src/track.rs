//! maos-track: the ready queue, the `maos task ready` command end to end, the critical path
//! and the cost of completing a task in a small and a large graph.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maos_coordination::track::{self, Options, Task, TaskStatus, TaskTracker};
use maos_coordination::{Priority, TaskId, Workspace};

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
        Options::default().publish(false).release_dead_claims(false),
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
            .stderr(Stdio::inherit())
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
    Ok(())
}
