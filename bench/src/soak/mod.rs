//! `cargo xtask soak --agents N --minutes M`: N agent processes doing a realistic mix of work
//! in one repository for M minutes (some killed and restarted), while a checker verifies the
//! invariants: a lock never has two holders and its tokens only grow, a task claimed by a live
//! agent stays its own and every task is completed once, every acknowledged message is delivered
//! once and in order, and nothing of the dead is left behind. Prints throughput and p50/p99/max
//! latency per operation; exits non-zero on any violation.

pub(crate) mod agent;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use maos_coordination::core::{ProcessIdentity, ProcessState, now_ms};
use maos_coordination::{
    ChannelName, FileChannel, Filter, LockTable, Task, TaskStatus, TaskTracker, Workspace,
};
use serde::{Deserialize, Serialize};

/// Files agents lock (a pool large enough that most acquires are uncontended).
pub(crate) const FILES: usize = 400;

/// Raw latency samples of one operation, in microseconds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Samples(pub(crate) Vec<u64>);

/// A tiny deterministic generator (SplitMix64).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The soak's own bookkeeping beside the workspace (`<root>/.soak/`).
pub(crate) struct Setup {
    dir: PathBuf,
}

impl Setup {
    pub(crate) fn at(root: &Path) -> Self {
        Self {
            dir: root.join(".soak"),
        }
    }

    fn create(root: &Path) -> anyhow::Result<Self> {
        let s = Self::at(root);
        for d in ["occ", "tokens", "journal", "results"] {
            std::fs::create_dir_all(s.dir.join(d))?;
        }
        Ok(s)
    }

    pub(crate) fn journal(&self, id: &str, inc: u32) -> anyhow::Result<agent::Journal> {
        agent::Journal::open(&self.dir.join("journal").join(format!("{id}.{inc}")))
    }

    /// Records a violation (the checker fails the run on any).
    pub(crate) fn violation(&self, what: &str) -> anyhow::Result<()> {
        eprintln!("VIOLATION: {what}");
        agent::Journal::open(&self.dir.join("violations"))?.line(what)
    }

    /// Entering the critical section of file `f` with fencing token `token`: nobody alive may be
    /// inside, and the token must be above every token used on `f` before.
    pub(crate) fn enter(&self, f: usize, id: &str, inc: u32, token: u64) -> anyhow::Result<()> {
        let occ = self.dir.join("occ").join(f.to_string());
        let me = ProcessIdentity::current();
        let mine = serde_json::to_vec(&(id, inc, &me, token))?;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&occ)
            {
                Ok(mut file) => {
                    std::io::Write::write_all(&mut file, &mine)?;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let other = std::fs::read(&occ).unwrap_or_default();
                    match serde_json::from_slice::<(String, u32, ProcessIdentity, u64)>(&other) {
                        Ok((oid, oinc, p, _)) if p.state() == ProcessState::Running => {
                            self.violation(&format!(
                                "two holders of src/f{f}.rs: {oid}/{oinc} (pid {}) and {id}/{inc}",
                                p.pid
                            ))?;
                            break;
                        }
                        // Its holder died inside (or wrote nothing yet and died): clear it.
                        _ => {
                            let _ = std::fs::remove_file(&occ);
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let last_path = self.dir.join("tokens").join(f.to_string());
        let last: u64 = std::fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if token <= last {
            self.violation(&format!(
                "token {token} of {id}/{inc} on src/f{f}.rs is not above {last}"
            ))?;
        }
        std::fs::write(&last_path, token.to_string())?;
        Ok(())
    }

    pub(crate) fn leave(&self, f: usize, _id: &str, _inc: u32) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.dir.join("occ").join(f.to_string()));
        Ok(())
    }

    pub(crate) fn results(
        &self,
        id: &str,
        inc: u32,
        s: &BTreeMap<&str, Samples>,
    ) -> anyhow::Result<()> {
        std::fs::write(
            self.dir.join("results").join(format!("{id}.{inc}.json")),
            serde_json::to_vec(s)?,
        )?;
        Ok(())
    }
}

/// What a soak run measured.
pub(crate) struct Report {
    pub(crate) agents: usize,
    pub(crate) seconds: f64,
    pub(crate) kills: usize,
    /// Per operation: count, p50, p99, max (µs).
    pub(crate) ops: BTreeMap<String, (usize, u64, u64, u64)>,
    pub(crate) violations: Vec<String>,
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn spawn(
    bin: &Path,
    root: &Path,
    id: &str,
    inc: u32,
    deadline: u64,
    seed: u64,
) -> anyhow::Result<Child> {
    Ok(Command::new(bin)
        .args([
            "--soak-agent",
            &root.display().to_string(),
            id,
            &inc.to_string(),
            &deadline.to_string(),
            &seed.to_string(),
        ])
        .env_remove("RUST_LOG")
        .env_remove("MAOS_AGENT_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// Runs a soak of `agents` agents for `duration` in a fresh repository.
pub(crate) fn soak(agents: usize, duration: Duration, seed: u64) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    init_repo(&root)?;
    let ws = Workspace::init(&root)?;
    let setup = Setup::create(&root)?;
    let tracker = TaskTracker::open(&ws)?;
    let batch: Vec<Task> = (0..agents * 4)
        .map(|i| Task::new(format!("work {i}")))
        .collect();
    tracker.create_tasks_blocking(&batch)?;
    let bin = std::env::current_exe()?;
    let start = Instant::now();
    let deadline = now_ms() + duration.as_millis() as u64;
    let mut rng = Rng(seed);
    let mut children: Vec<(String, u32, Child)> = Vec::new();
    for i in 0..agents {
        let id = format!("a{i:03}");
        children.push((
            id.clone(),
            0,
            spawn(&bin, &root, &id, 0, deadline, seed + i as u64)?,
        ));
    }
    // Checker: a durable reader of the swarm channel, and periodic checks of the table.
    let channel = FileChannel::open(&ws, ChannelName::new("swarm")?)?;
    let mut cursor = maos_coordination::Cursor::start();
    let mut seen: HashMap<(String, u32), u64> = HashMap::new();
    let mut delivered: BTreeSet<(String, u32, u64)> = BTreeSet::new();
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_secs(2);
    let mut violations = Vec::new();
    while now_ms() < deadline {
        // Keep work available.
        let ready = tracker.ready_blocking()?.len();
        if ready < agents {
            let more: Vec<Task> = (0..agents * 2)
                .map(|i| Task::new(format!("more work {i}")))
                .collect();
            tracker.create_tasks_blocking(&more)?;
        }
        // Every acknowledged message once, in order per sender incarnation.
        let batch = channel.receive_blocking::<serde_json::Value>(&cursor, &Filter::Everything)?;
        cursor = batch.cursor;
        for d in batch.messages {
            let p = &d.message.payload;
            let key = (
                p["sender"].as_str().unwrap_or_default().to_owned(),
                p["inc"].as_u64().unwrap_or_default() as u32,
            );
            let seq = p["seq"].as_u64().unwrap_or_default();
            let last = seen.insert(key.clone(), seq).unwrap_or(0);
            if seq <= last {
                violations.push(format!("{}/{}: message {seq} after {last}", key.0, key.1));
            }
            delivered.insert((key.0, key.1, seq));
        }
        // Kill one agent now and then (SIGKILL) and start it again.
        if Instant::now() >= next_kill && !children.is_empty() {
            next_kill = Instant::now() + Duration::from_millis(500 + rng.below(1500));
            let i = rng.below(children.len() as u64) as usize;
            let (id, inc, child) = &mut children[i];
            let _ = child.kill();
            let _ = child.wait();
            kills += 1;
            *inc += 1;
            *child = spawn(&bin, &root, id, *inc, deadline, seed ^ kills)?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (_, _, c) in &mut children {
        let st = c.wait()?;
        if !st.success() {
            violations.push(format!("an agent exited with {st}"));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Final checks.
    let batch = channel.receive_blocking::<serde_json::Value>(&cursor, &Filter::Everything)?;
    for d in batch.messages {
        let p = &d.message.payload;
        delivered.insert((
            p["sender"].as_str().unwrap_or_default().to_owned(),
            p["inc"].as_u64().unwrap_or_default() as u32,
            p["seq"].as_u64().unwrap_or_default(),
        ));
    }
    for e in std::fs::read_dir(setup.dir.join("journal"))? {
        let path = e?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (id, _) = name.split_once('.').unwrap_or((&name, ""));
        for line in std::fs::read_to_string(&path)?.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            if let ["sent", inc, seq] = parts[..] {
                let key = (
                    id.to_owned(),
                    inc.parse().unwrap_or(0),
                    seq.parse().unwrap_or(0),
                );
                if !delivered.contains(&key) {
                    violations.push(format!("acknowledged message {key:?} never delivered"));
                }
            }
        }
    }
    // Nothing of the dead is left: every holder in the table is alive, no dead agent's claim.
    let snap = LockTable::open(&ws)?.snapshot()?;
    if !snap.holders.is_empty() {
        violations.push(format!(
            "{} lock(s) still held after every agent stopped",
            snap.holders.len()
        ));
    }
    tracker.release_dead_claims_blocking()?;
    let stuck: Vec<_> = tracker
        .list_blocking()?
        .into_iter()
        .filter(|t| t.status == TaskStatus::InProgress)
        .collect();
    if !stuck.is_empty() {
        violations.push(format!(
            "{} task(s) still in progress after every agent stopped and dead claims were released",
            stuck.len()
        ));
    }
    if let Ok(v) = std::fs::read_to_string(setup.dir.join("violations")) {
        violations.extend(v.lines().map(str::to_owned));
    }
    // Latencies.
    let mut ops: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in std::fs::read_dir(setup.dir.join("results"))? {
        let s: BTreeMap<String, Samples> = serde_json::from_slice(&std::fs::read(e?.path())?)?;
        for (k, v) in s {
            ops.entry(k).or_default().extend(v.0);
        }
    }
    let ops = ops
        .into_iter()
        .map(|(k, mut v)| {
            let n = v.len();
            let (p50, p99) = (pct(&mut v, 50.0), pct(&mut v, 99.0));
            let max = v.last().copied().unwrap_or(0);
            (k, (n, p50, p99, max))
        })
        .collect();
    Ok(Report {
        agents,
        seconds,
        kills: kills as usize,
        ops,
        violations,
    })
}

fn init_repo(root: &Path) -> anyhow::Result<()> {
    let mut opts = git2::RepositoryInitOptions::new();
    opts.initial_head("main");
    let repo = git2::Repository::init_opts(root, &opts)?;
    let mut index = git2::Index::new()?;
    for f in 0..FILES {
        let blob = repo.blob(format!("fn f{f}() {{}}\n").as_bytes())?;
        index.add(&git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: 0,
            id: blob,
            flags: 0,
            flags_extended: 0,
            path: format!("src/f{f}.rs").into_bytes(),
        })?;
    }
    let tree = repo.find_tree(index.write_tree_to(&repo)?)?;
    let sig = git2::Signature::now("soak", "soak@soak.invalid")?;
    repo.commit(Some("refs/heads/main"), &sig, &sig, "init", &tree, &[])?;
    Ok(())
}

/// Markdown rows for a report.
pub(crate) fn markdown(reports: &[Report]) -> String {
    let mut s = String::from(
        "| agents | operation | count | per second | p50 | p99 | max |\n|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        for (op, (n, p50, p99, max)) in &r.ops {
            s.push_str(&format!(
                "| {} | {op} | {n} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
                r.agents,
                *n as f64 / r.seconds,
                *p50 as f64 / 1000.0,
                *p99 as f64 / 1000.0,
                *max as f64 / 1000.0
            ));
        }
    }
    s
}

/// `maos-bench --soak [--agents N]... [--minutes M]`: runs one soak per agent count and prints
/// the table; fails on any violation.
pub(crate) fn main(args: &[String]) -> anyhow::Result<()> {
    let mut counts = Vec::new();
    let mut minutes = 1.0f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--agents" => counts.push(
                it.next()
                    .ok_or_else(|| anyhow::anyhow!("--agents N"))?
                    .parse()?,
            ),
            "--minutes" => {
                minutes = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--minutes M"))?
                    .parse()?
            }
            other => anyhow::bail!("unknown soak argument {other:?}"),
        }
    }
    if counts.is_empty() {
        counts = vec![10, 100];
    }
    let mut reports = Vec::new();
    for n in counts {
        eprintln!("[soak] {n} agents for {minutes} minute(s)...");
        let r = soak(n, Duration::from_secs_f64(minutes * 60.0), 42)?;
        eprintln!(
            "[soak] {n} agents: {:.1} s, {} kills, {} violation(s)",
            r.seconds,
            r.kills,
            r.violations.len()
        );
        reports.push(r);
    }
    println!("{}", markdown(&reports));
    let violations: Vec<&String> = reports.iter().flat_map(|r| &r.violations).collect();
    for v in &violations {
        eprintln!("VIOLATION: {v}");
    }
    anyhow::ensure!(
        violations.is_empty(),
        "{} invariant violation(s)",
        violations.len()
    );
    Ok(())
}
