//! maos-lock: uncontended acquire+release beside a bare O_EXCL create+unlink, handoff latency
//! beside the seed design's 100 ms polling loop, deadlock detection on a large wait-for graph
//! beside Tarjan on a prebuilt graph.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use maos_coordination::lock::{FileLock, LockTable, Node, WaitForGraph};
use maos_coordination::{AgentId, ResourceName, Workspace};

use crate::table::{Row, Table, percentile_us};

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

pub(crate) fn run(table: &mut Table) -> anyhow::Result<()> {
    uncontended(table)?;
    handoff(table)?;
    deadlock(table)?;
    Ok(())
}

fn uncontended(table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let lock = FileLock::new(&ws, ResourceName::new("src/lib.rs")?);
    let n = 3000;
    // Warm up (creates this process's liveness file).
    for _ in 0..100 {
        lock.try_acquire("bench")?
            .ok_or_else(|| anyhow::anyhow!("busy"))?
            .release()?;
    }
    let mut ours = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let g = lock
            .try_acquire("bench")?
            .ok_or_else(|| anyhow::anyhow!("busy"))?;
        g.release()?;
        ours.push(t.elapsed());
    }
    // In a directory of its own: `.maos/locks/` is watched by this process's lock waker, and
    // the baseline should time the bare syscalls only.
    let bare_dir = tempfile::tempdir()?;
    let p = bare_dir.path().join("bare.lock");
    let mut bare = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)?;
        drop(f);
        std::fs::remove_file(&p)?;
        bare.push(t.elapsed());
    }
    let v = percentile_us(&mut ours, 50.0);
    let b = percentile_us(&mut bare, 50.0);
    table.push(Row {
        group: "lock",
        name: "uncontended acquire+release (p50)".into(),
        value: v,
        baseline_name: "bare O_EXCL create + unlink (no record, no safety)".into(),
        baseline: b,
        unit: "us",
        higher_is_better: false,
        target: "<= 3x baseline".into(),
        met: v <= 3.0 * b,
    });
    Ok(())
}

/// The child side of the multi-process benchmarks: `--lock-child handoff|poll WS ROUNDS`.
pub(crate) fn child(args: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.len() == 3,
        "usage: --lock-child handoff|poll WS ROUNDS"
    );
    let ws = Workspace::open(&args[1])?;
    let rounds: usize = args[2].parse()?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut line = String::new();
    match args[0].as_str() {
        "handoff" => {
            let lock = FileLock::new(&ws, ResourceName::new("handoff")?)
                .agent(AgentId::new("child")?)
                .wait(Duration::from_secs(60));
            for _ in 0..rounds {
                let g = lock.acquire_blocking("bench")?;
                let t1 = wall_ns();
                writeln!(out, "{t1}")?;
                out.flush()?;
                g.release()?;
                line.clear();
                stdin.lock().read_line(&mut line)?;
            }
        }
        "poll" => {
            let path = ws.locks_dir().join("seed.lock");
            for _ in 0..rounds {
                seed_acquire(&path)?;
                let t1 = wall_ns();
                writeln!(out, "{t1}")?;
                out.flush()?;
                std::fs::remove_file(&path)?;
                line.clear();
                stdin.lock().read_line(&mut line)?;
            }
        }
        other => anyhow::bail!("unknown child mode {other}"),
    }
    Ok(())
}

/// The seed design's `FileLock::acquire`, faithfully: create-exclusive, write the record,
/// fsync; on `AlreadyExists` read the record, break it if expired, else sleep 100 ms and retry.
fn seed_acquire(path: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut f) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
                let info = serde_json::json!({
                    "owner": "child", "acquired_at": now, "expires_at": now + 60_000,
                    "purpose": "bench", "metadata": {}
                });
                f.write_all(serde_json::to_string(&info)?.as_bytes())?;
                f.sync_all()?;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Ok(content) = std::fs::read_to_string(path)
                    && let Ok(info) = serde_json::from_str::<serde_json::Value>(&content)
                {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
                    if info["expires_at"].as_u64().is_some_and(|e| now > e) {
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                }
                anyhow::ensure!(
                    start.elapsed() < Duration::from_secs(30),
                    "seed lock timeout"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn spawn_child(mode: &str, ws: &Workspace, rounds: usize) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(std::env::current_exe()?)
        .args([
            "--lock-child",
            mode,
            ws.root().to_str().unwrap_or_default(),
            &rounds.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?)
}

fn handoff(table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let res = ResourceName::new("handoff")?;
    let lock = FileLock::new(&ws, res.clone()).agent(AgentId::new("parent")?);
    let locks = LockTable::open(&ws)?;

    // maos-lock: the waiter sleeps on its wake-up file.
    let rounds = 300;
    let mut g = lock.try_acquire("bench")?;
    let mut child = spawn_child("handoff", &ws, rounds)?;
    let mut out = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?,
    );
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    let mut ours = Vec::with_capacity(rounds);
    let mut line = String::new();
    for _ in 0..rounds {
        // Release only once the child is queued.
        while locks.snapshot()?.waiters.is_empty() {
            std::thread::yield_now();
        }
        let t0 = wall_ns();
        g.take()
            .ok_or_else(|| anyhow::anyhow!("not held"))?
            .release()?;
        line.clear();
        out.read_line(&mut line)?;
        let t1: u128 = line.trim().parse()?;
        ours.push(Duration::from_nanos(t1.saturating_sub(t0) as u64));
        // Take it back once the child released it, then let the child queue again.
        g = Some(lock.acquire_blocking("bench")?);
        stdin.write_all(b"next\n")?;
    }
    drop(g);
    child.wait()?;

    // The seed design: the waiter polls every 100 ms.
    let poll_rounds = 20;
    let path = ws.locks_dir().join("seed.lock");
    std::fs::write(&path, "{}")?;
    let mut child = spawn_child("poll", &ws, poll_rounds)?;
    let mut out = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?,
    );
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    let mut seed = Vec::with_capacity(poll_rounds);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..poll_rounds {
        // Hold for a varying time so the release falls anywhere in the child's sleep.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(20 + rng % 100));
        let t0 = wall_ns();
        std::fs::remove_file(&path)?;
        line.clear();
        out.read_line(&mut line)?;
        let t1: u128 = line.trim().parse()?;
        seed.push(Duration::from_nanos(t1.saturating_sub(t0) as u64));
        // Take it back (seed-style) once the child released it.
        seed_acquire(&path)?;
        stdin.write_all(b"next\n")?;
    }
    let _ = std::fs::remove_file(&path);
    drop(stdin);
    child.wait()?;

    let v = percentile_us(&mut ours, 50.0);
    let b = percentile_us(&mut seed, 50.0);
    let p99 = percentile_us(&mut ours, 99.0);
    table.push(Row {
        group: "lock",
        name: format!("handoff release -> next waiter holds (p50; p99 {p99:.0} us)"),
        value: v,
        baseline_name: "seed design: 100 ms polling loop".into(),
        baseline: b,
        unit: "us",
        higher_is_better: false,
        target: "p50 <= 1000 us".into(),
        met: v <= 1000.0,
    });
    Ok(())
}

fn deadlock(table: &mut Table) -> anyhow::Result<()> {
    let agents = 10_000usize;
    let edges = 100_000usize;
    // One process per agent, as in a lock table of process-held locks.
    let ids: Vec<Node> = (0..agents)
        .map(|i| {
            AgentId::new(format!("agent-{i}")).map(|agent| Node::Process {
                agent,
                live: format!("{i}.1.1.0"),
                pid: None,
            })
        })
        .collect::<Result<_, _>>()?;
    let res = ResourceName::new("src/x.rs")?;
    // A wait-for graph of 10,000 agents and 100,000 edges that is acyclic (edges go from a
    // lower to a higher agent number, as in a healthy system) except for one planted 3-cycle.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut pairs: Vec<(usize, usize)> = Vec::with_capacity(edges);
    while pairs.len() < edges - 3 {
        let a = (next() % agents as u64) as usize;
        let b = (next() % agents as u64) as usize;
        if a < b {
            pairs.push((a, b));
        }
    }
    pairs.extend([(9000usize, 9500usize), (9500, 9999), (9999, 9000)]);
    // As in a lock table: each waiting agent has one wait, blocked by several holders.
    pairs.sort_unstable();
    let samples = 30;
    let mut ours = Vec::with_capacity(samples);
    let mut bare = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let mut g = WaitForGraph::with_capacity(agents, edges);
        let nodes: Vec<_> = ids.iter().map(|a| g.node(a)).collect();
        let mut current: Option<(usize, maos_coordination::lock::WaitId)> = None;
        for (ticket, &(a, b)) in pairs.iter().enumerate() {
            let wait = match current {
                Some((w, id)) if w == a => id,
                _ => {
                    let id = g.wait(nodes[a], res.clone(), ticket as u64, 0);
                    current = Some((a, id));
                    id
                }
            };
            g.blocked_by(wait, nodes[b]);
        }
        let found = g.deadlocks();
        ours.push(t.elapsed());
        anyhow::ensure!(
            found.len() == 1 && found[0].agents.len() == 3,
            "cycle not found: {:?}",
            found.iter().map(|d| d.agents.len()).collect::<Vec<_>>()
        );
        anyhow::ensure!(
            g.edge_count() == edges,
            "graph has {} edges",
            g.edge_count()
        );

        // Baseline: Tarjan on the graph already built in memory (what the seed's in-process
        // detector did, blind to other processes).
        let t = Instant::now();
        let again = g.deadlocks();
        bare.push(t.elapsed());
        anyhow::ensure!(again.len() == 1, "baseline found {} cycles", again.len());
    }
    let v = percentile_us(&mut ours, 50.0) / 1000.0;
    let b = percentile_us(&mut bare, 50.0) / 1000.0;
    table.push(Row {
        group: "lock",
        name: "deadlock detection, 10k agents / 100k edges: build graph + Tarjan + report (p50)"
            .into(),
        value: v,
        baseline_name: "Tarjan + report on the prebuilt graph (seed: in-memory, one process)"
            .into(),
        baseline: b,
        unit: "ms",
        higher_is_better: false,
        target: "<= 10 ms".into(),
        met: v <= 10.0,
    });
    Ok(())
}
