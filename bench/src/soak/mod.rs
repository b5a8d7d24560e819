//! `cargo xtask soak --agents N --minutes M [--think MS] [--flat-out]`: N agent processes doing
//! a realistic mix of work in one repository for M minutes (some killed and restarted), while a
//! checker verifies the invariants: a lock never has two holders and its tokens only grow, a
//! task claimed by a live agent stays its own and every task is completed once, every
//! acknowledged message is delivered once and in order, and nothing of the dead is left behind.
//! Prints throughput and p50/p99/max latency per operation; exits non-zero on any violation.
//!
//! Pace: an agent pauses a random `0..2 * MS` (default [`DEFAULT_THINK_MS`]) while it holds its
//! locks (editing) and again after each task (its next model turn), as an AI agent spends
//! seconds between tool calls. `--think 0` runs the agents flat out; `--flat-out` adds a flat-out
//! run per agent count, reported as the machine's capacity and not held to the thresholds.

pub(crate) mod agent;
mod check;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use maos_coordination::core::{ProcessIdentity, ProcessState, now_ms};
use maos_coordination::{
    ChannelName, FileChannel, Filter, LockTable, Task, TaskTracker, Workspace,
};
use serde::{Deserialize, Serialize};

/// Files agents lock (a pool large enough that most acquires are uncontended).
pub(crate) const FILES: usize = 400;

/// Default think time (ms): each agent pauses `0..2x` this twice per task, so it finishes a
/// task (claim, 1-3 locks, commit, send, broadcast, releases, complete) about every 2 s. A
/// Claude Code session spends seconds per tool call and minutes per task: this is far busier
/// than real agents, yet leaves the machine headroom (`--flat-out` measures it).
pub(crate) const DEFAULT_THINK_MS: u64 = 1000;

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
                        // A holder SIGKILLed by the checker loses its kernel locks (so its
                        // lock is taken over) a moment before /proc stops showing it
                        // running: give a dying occupant a second to be gone.
                        Ok((oid, oinc, p, _)) if still_running(&p) => {
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
        let last = read_grant(&last_path).map_or(0, |(t, _)| t);
        if token <= last {
            self.violation(&format!(
                "token {token} of {id}/{inc} on src/f{f}.rs is not above {last}"
            ))?;
        }
        std::fs::write(&last_path, format!("{token} {}", now_ms()))?;
        Ok(())
    }

    /// Per file: the last token granted on it and when (ms), as journaled inside the critical
    /// section.
    fn grants(&self) -> anyhow::Result<HashMap<usize, (u64, u64)>> {
        let mut out = HashMap::new();
        for e in std::fs::read_dir(self.dir.join("tokens"))? {
            let path = e?.path();
            let Some(f) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            if let Some(g) = read_grant(&path) {
                out.insert(f, g);
            }
        }
        Ok(out)
    }

    pub(crate) fn leave(&self, f: usize, _id: &str, _inc: u32) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.dir.join("occ").join(f.to_string()));
        Ok(())
    }

    /// Saves an incarnation's latency samples so far (replacing what it saved before: a
    /// temporary file renamed over it, so a kill never leaves half a file).
    pub(crate) fn results(
        &self,
        id: &str,
        inc: u32,
        s: &BTreeMap<&str, Vec<u64>>,
    ) -> anyhow::Result<()> {
        let dir = self.dir.join("results");
        let tmp = dir.join(format!(".{id}.{inc}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(s)?)?;
        std::fs::rename(&tmp, dir.join(format!("{id}.{inc}.json")))?;
        Ok(())
    }
}

/// Whether `p` still runs a second from now (a process being killed is gone by then).
fn still_running(p: &ProcessIdentity) -> bool {
    let until = Instant::now() + Duration::from_secs(1);
    while p.state() == ProcessState::Running {
        if Instant::now() >= until {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// `TOKEN MS` from a grant file (`None` when missing, or caught while being rewritten).
fn read_grant(path: &Path) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let (t, at) = s.trim().split_once(' ')?;
    Some((t.parse().ok()?, at.parse().ok()?))
}

/// What a soak run measured.
pub(crate) struct Report {
    pub(crate) agents: usize,
    /// The agents' think time (zero: flat out).
    pub(crate) think: Duration,
    pub(crate) seconds: f64,
    pub(crate) kills: usize,
    /// Kills after which the agent stayed dead for [`DEAD_FOR`].
    pub(crate) left_dead: usize,
    /// Passes of the checks that run during the soak.
    pub(crate) scans: usize,
    /// Times a killed incarnation's lock record was seen in the raw table.
    pub(crate) dead_lock_records: usize,
    pub(crate) accounting: check::Accounting,
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
    think: Duration,
) -> anyhow::Result<Child> {
    Ok(Command::new(bin)
        .args([
            "--soak-agent",
            &root.display().to_string(),
            id,
            &inc.to_string(),
            &deadline.to_string(),
            &seed.to_string(),
            &think.as_millis().to_string(),
        ])
        .env_remove("RUST_LOG")
        .env_remove("MAOS_AGENT_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?)
}

/// One agent slot: its current incarnation's process, or the time it is restarted at.
struct Slot {
    id: String,
    inc: u32,
    child: Option<Child>,
    restart_at: Option<Instant>,
}

/// Every fourth kill leaves the agent dead this long before it is restarted: long enough
/// that the other agents must release its claims (`check::SLACK_MS` is shorter).
const DEAD_FOR: Duration = Duration::from_secs(8);

/// Runs a soak of `agents` agents for `duration` in a fresh repository, each agent thinking
/// `0..2 * think` twice per task.
pub(crate) fn soak(
    agents: usize,
    duration: Duration,
    think: Duration,
    seed: u64,
) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    init_repo(&root)?;
    let ws = Workspace::init(&root)?;
    let setup = Setup::create(&root)?;
    let tracker = TaskTracker::open(&ws)?;
    let table = LockTable::open(&ws)?;
    let batch: Vec<Task> = (0..agents * 4)
        .map(|i| Task::new(format!("work {i}")))
        .collect();
    tracker.create_tasks_blocking(&batch)?;
    let bin = std::env::current_exe()?;
    let start = Instant::now();
    let deadline = now_ms() + duration.as_millis() as u64;
    let mut rng = Rng(seed);
    // Every incarnation by pid (a restarted agent keeps its id: the pid and spawn time tell
    // its incarnations apart).
    let mut incarnations: HashMap<u32, check::Incarnation> = HashMap::new();
    let mut slots: Vec<Slot> = Vec::new();
    let launch = |id: &str, inc: u32, s: u64, incs: &mut HashMap<u32, check::Incarnation>| {
        let child = spawn(&bin, &root, id, inc, deadline, s, think)?;
        incs.insert(
            child.id(),
            check::Incarnation {
                id: id.to_owned(),
                inc,
                pid: child.id(),
                spawned_at: now_ms(),
                killed_at: None,
            },
        );
        anyhow::Ok(child)
    };
    for i in 0..agents {
        let id = format!("a{i:03}");
        let child = launch(&id, 0, seed + i as u64, &mut incarnations)?;
        slots.push(Slot {
            id,
            inc: 0,
            child: Some(child),
            restart_at: None,
        });
    }
    // Checker: a durable reader of the swarm channel, the journals as they grow, and raw
    // reads of the lock table and the tracker.
    let channel = FileChannel::open(&ws, ChannelName::new("swarm")?)?;
    let mut cursor = maos_coordination::Cursor::start();
    let mut seen: HashMap<(String, u32), u64> = HashMap::new();
    let mut delivered: BTreeSet<(String, u32, u64)> = BTreeSet::new();
    let mut journals = check::Journals::default();
    let mut lock_seen = check::LockSeen::default();
    let mut kills = 0u64;
    let mut left_dead = 0usize;
    let mut scans = 0usize;
    let mut next_kill = Instant::now() + Duration::from_secs(2);
    let mut next_scan = Instant::now() + Duration::from_secs(1);
    let mut violations = Vec::new();
    let read_messages = |cursor: &mut maos_coordination::Cursor,
                         seen: &mut HashMap<(String, u32), u64>,
                         delivered: &mut BTreeSet<(String, u32, u64)>,
                         violations: &mut Vec<String>|
     -> anyhow::Result<()> {
        let batch = channel.receive_blocking::<serde_json::Value>(cursor, &Filter::Everything)?;
        *cursor = batch.cursor;
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
        Ok(())
    };
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
        read_messages(&mut cursor, &mut seen, &mut delivered, &mut violations)?;
        // Kill one agent now and then (SIGKILL); start it again at once, or (every fourth
        // kill) only after `DEAD_FOR`.
        if Instant::now() >= next_kill {
            next_kill = Instant::now() + Duration::from_millis(500 + rng.below(1500));
            let i = rng.below(slots.len() as u64) as usize;
            if let Some(mut child) = slots[i].child.take() {
                let pid = child.id();
                let _ = child.kill();
                let _ = child.wait();
                if let Some(inc) = incarnations.get_mut(&pid) {
                    inc.killed_at = Some(now_ms());
                }
                kills += 1;
                if kills.is_multiple_of(4) {
                    left_dead += 1;
                    slots[i].restart_at = Some(Instant::now() + DEAD_FOR);
                } else {
                    slots[i].restart_at = Some(Instant::now());
                }
            }
        }
        // An agent that failed on its own is a violation (its error is on stderr); it is
        // reaped at once (a zombie would still look alive to the registry) and restarted
        // like a killed one.
        for slot in &mut slots {
            let Some(child) = &mut slot.child else {
                continue;
            };
            if let Some(st) = child.try_wait()?
                && !st.success()
            {
                violations.push(format!("agent {}/{} exited with {st}", slot.id, slot.inc));
                if let Some(i) = incarnations.get_mut(&child.id()) {
                    i.killed_at = Some(now_ms());
                }
                slot.child = None;
                slot.restart_at = Some(Instant::now());
            }
        }
        for slot in &mut slots {
            if slot.restart_at.is_some_and(|t| Instant::now() >= t) {
                slot.restart_at = None;
                slot.inc += 1;
                slot.child = Some(launch(
                    &slot.id,
                    slot.inc,
                    seed ^ kills ^ u64::from(slot.inc) << 32,
                    &mut incarnations,
                )?);
            }
        }
        if Instant::now() >= next_scan {
            next_scan = Instant::now() + Duration::from_secs(1);
            scans += 1;
            scan(
                &setup,
                &table,
                &tracker,
                &slots,
                &incarnations,
                &mut journals,
                &mut lock_seen,
                &mut violations,
            )?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Agents left dead start again now: they take over their claims and stop at once.
    for slot in &mut slots {
        if slot.restart_at.take().is_some() {
            slot.inc += 1;
            slot.child = Some(launch(&slot.id, slot.inc, seed ^ 7, &mut incarnations)?);
        }
    }
    for slot in &mut slots {
        if let Some(c) = &mut slot.child {
            let st = c.wait()?;
            if !st.success() {
                violations.push(format!("agent {}/{} exited with {st}", slot.id, slot.inc));
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Final checks, every agent stopped.
    read_messages(&mut cursor, &mut seen, &mut delivered, &mut violations)?;
    scan(
        &setup,
        &table,
        &tracker,
        &slots,
        &incarnations,
        &mut journals,
        &mut lock_seen,
        &mut violations,
    )?;
    for ((id, _), j) in &journals.by_inc {
        for &(inc, seq) in &j.sent {
            if !delivered.contains(&(id.clone(), inc, seq)) {
                violations.push(format!(
                    "acknowledged message {id}/{inc}/{seq} never delivered"
                ));
            }
        }
    }
    // Each task completed once.
    let killed: BTreeSet<(String, u32)> = incarnations
        .values()
        .filter(|i| i.killed_at.is_some())
        .map(|i| (i.id.clone(), i.inc))
        .collect();
    let tasks = tracker.list_blocking()?;
    let accounting = check::check_done(&journals, &killed, &tasks, &mut violations);
    // Nothing of the dead left: with every agent stopped and every killed one taken over by
    // its restart, no task is in progress, and no lock record of a process that exited
    // normally remains (raw read: nothing reaped first).
    for t in tasks.iter().filter(|t| t.status.is_active()) {
        violations.push(format!(
            "task {} still {:?} by {:?} after every agent stopped",
            t.id, t.status, t.assigned_to
        ));
    }
    let records = table.records()?;
    for h in &records.holders {
        let killed = h
            .process
            .as_ref()
            .and_then(|p| incarnations.get(&p.pid))
            .is_some_and(|i| i.killed_at.is_some());
        if !killed {
            violations.push(format!(
                "lock {} of {} (token {}) still in the table after its process exited",
                h.resource, h.owner, h.token.0
            ));
        }
    }
    if let Ok(v) = std::fs::read_to_string(setup.dir.join("violations")) {
        violations.extend(v.lines().map(str::to_owned));
    }
    // Latencies.
    let mut ops: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in std::fs::read_dir(setup.dir.join("results"))? {
        let path = e?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue; // a temporary file of a killed incarnation
        }
        let s: BTreeMap<String, Samples> = serde_json::from_slice(&std::fs::read(&path)?)?;
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
        think,
        seconds,
        kills: kills as usize,
        left_dead,
        scans,
        dead_lock_records: lock_seen.dead_records,
        accounting,
        ops,
        violations,
    })
}

/// One pass of the checks that run during the soak: journals read on, claims of killed
/// incarnations, raw lock records of killed incarnations.
#[allow(clippy::too_many_arguments)] // the checker's state, passed as it is
fn scan(
    setup: &Setup,
    table: &LockTable,
    tracker: &TaskTracker,
    slots: &[Slot],
    incarnations: &HashMap<u32, check::Incarnation>,
    journals: &mut check::Journals,
    lock_seen: &mut check::LockSeen,
    violations: &mut Vec<String>,
) -> anyhow::Result<()> {
    journals.read_new(&setup.dir.join("journal"))?;
    let current: HashMap<String, (check::Incarnation, bool)> = incarnations
        .values()
        .filter(|i| slots.iter().any(|s| s.id == i.id && s.inc == i.inc))
        .map(|i| {
            let running = slots.iter().any(|s| {
                s.id == i.id && s.inc == i.inc && s.child.is_some() && i.killed_at.is_none()
            });
            (i.id.clone(), (i.clone(), running))
        })
        .collect();
    let active = tracker.active_blocking()?;
    check::check_claims(now_ms(), &active, &current, journals, violations);
    let grants_read_at = now_ms();
    let grants = setup.grants()?;
    let records = table.records()?;
    check::check_locks(
        now_ms(),
        &records,
        &grants,
        incarnations,
        grants_read_at,
        lock_seen,
        violations,
    );
    Ok(())
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

/// How an agent paced itself, in words.
fn pace(think: Duration) -> String {
    if think.is_zero() {
        "flat out (no think time)".to_owned()
    } else {
        format!("thinking 0-{} ms twice per task", 2 * think.as_millis())
    }
}

/// What each run checked, one line per agent count.
fn checked(reports: &[Report]) -> String {
    let mut s = String::new();
    for r in reports {
        s.push_str(&format!(
            "- {} agents, {}, {:.0} s: {} kills ({} left dead for {} s before the restart), {} checker \
             passes, {} sightings of a killed incarnation's lock record, {} tasks completed ({} by an \
             incarnation killed between the commit and its journal line), {} claims taken over \
             by a restarted incarnation; {} violation(s)\n",
            r.agents,
            pace(r.think),
            r.seconds,
            r.kills,
            r.left_dead,
            DEAD_FOR.as_secs(),
            r.scans,
            r.dead_lock_records,
            r.accounting.completed,
            r.accounting.done_line_lost,
            r.accounting.resumed,
            r.violations.len()
        ));
    }
    s
}

/// The p99 limit of the operations the issue names, at every agent count run.
const P99_LIMIT_US: u64 = 50_000;
/// The operations held to [`P99_LIMIT_US`].
const P99_OPS: [&str; 3] = ["claim", "send", "lock acquire (free)"];
/// The most a median may grow from the smallest to the largest agent count of the run.
const MEDIAN_GROWTH_LIMIT: f64 = 10.0;

/// The thresholds the swarm must meet, each failure named: p99 of `claim`, `send` and
/// `lock acquire (free)` at most 50 ms at every agent count run, and no operation's median
/// growing more than 10x from the smallest to the largest agent count.
pub(crate) fn thresholds(reports: &[Report]) -> Vec<String> {
    let mut failed = Vec::new();
    for r in reports {
        for op in P99_OPS {
            match r.ops.get(op) {
                Some(&(_, _, p99, _)) if p99 > P99_LIMIT_US => failed.push(format!(
                    "p99 of {op} at {} agents is {:.1} ms, over {} ms",
                    r.agents,
                    p99 as f64 / 1000.0,
                    P99_LIMIT_US / 1000
                )),
                Some(_) => {}
                None => failed.push(format!("no {op} was measured at {} agents", r.agents)),
            }
        }
    }
    let small = reports.iter().min_by_key(|r| r.agents);
    let large = reports.iter().max_by_key(|r| r.agents);
    if let (Some(small), Some(large)) = (small, large)
        && large.agents > small.agents
    {
        for (op, &(_, p50, _, _)) in &large.ops {
            let Some(&(_, base, _, _)) = small.ops.get(op) else {
                continue;
            };
            let growth = p50 as f64 / base.max(1) as f64;
            if growth > MEDIAN_GROWTH_LIMIT {
                failed.push(format!(
                    "median of {op} grew {growth:.1}x from {} agents ({:.2} ms) to {} agents \
                     ({:.2} ms), over {MEDIAN_GROWTH_LIMIT}x",
                    small.agents,
                    base as f64 / 1000.0,
                    large.agents,
                    p50 as f64 / 1000.0
                ));
            }
        }
    }
    failed
}

/// The markers around the swarm section of docs/benchmarks.md.
pub(crate) const DOCS_BEGIN: &str = "<!-- soak:begin (cargo xtask soak --write-docs) -->";
pub(crate) const DOCS_END: &str = "<!-- soak:end -->";

/// The swarm section, markers included.
fn docs_section(
    reports: &[Report],
    flat: &[Report],
    minutes: f64,
    think: Duration,
    failed: &[String],
) -> String {
    let counts: Vec<String> = reports.iter().map(|r| r.agents.to_string()).collect();
    let verdict = if failed.is_empty() {
        "every threshold met".to_owned()
    } else {
        format!("thresholds failed: {}", failed.join("; "))
    };
    let capacity = if flat.is_empty() {
        String::new()
    } else {
        format!(
            "\n### Flat out (the machine's capacity)\n\nThe same agents with no think time: every \
             agent runs its next operation at once, so with more agents than cores the machine is \
             saturated and latency is mostly waiting for a CPU. Throughput here is what this \
             machine can do; these runs are not held to the thresholds.\n\n{}\n{}",
            markdown(flat),
            checked(flat),
        )
    };
    format!(
        "{DOCS_BEGIN}\n## Swarm (cargo xtask soak)\n\n`cargo xtask soak --agents {} --minutes {minutes} \
         --think {}{}`: agent processes claiming tasks, locking 1-3 files, committing, messaging \
         and broadcasting, some SIGKILLed and restarted, while a checker verifies the invariants. \
         Each agent {} (its model turns: editing while it holds its locks, then planning the next \
         task). Thresholds: p99 of claim, send and lock acquire (free) at most 50 ms, no median \
         growing more than 10x from the smallest to the largest agent count: {verdict}.\n\n{}\n{}{capacity}{DOCS_END}\n",
        counts.join(" --agents "),
        think.as_millis(),
        if flat.is_empty() { "" } else { " --flat-out" },
        pace(think),
        markdown(reports),
        checked(reports),
    )
}

/// Replaces the swarm section of `doc` (between [`DOCS_BEGIN`] and [`DOCS_END`]) with
/// `section`, or appends it when `doc` has none; the rest of `doc` is kept byte for byte.
pub(crate) fn splice_section(doc: &str, section: &str) -> anyhow::Result<String> {
    match (doc.find(DOCS_BEGIN), doc.find(DOCS_END)) {
        (Some(b), Some(e)) if b < e => {
            let end = e + DOCS_END.len();
            let end = end + usize::from(doc[end..].starts_with('\n'));
            Ok(format!("{}{section}{}", &doc[..b], &doc[end..]))
        }
        (None, None) => {
            let sep = if doc.is_empty() || doc.ends_with("\n\n") {
                ""
            } else if doc.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            Ok(format!("{doc}{sep}{section}"))
        }
        _ => anyhow::bail!(
            "docs/benchmarks.md has one swarm marker without the other (or in the wrong order); \
             put back both `{DOCS_BEGIN}` and `{DOCS_END}` or remove both"
        ),
    }
}

/// The swarm section kept from `doc`, if any (for the bench's `--write-docs`, which
/// rewrites the rest of the file).
pub(crate) fn kept_section(doc: &str) -> Option<&str> {
    let b = doc.find(DOCS_BEGIN)?;
    let e = doc[b..].find(DOCS_END)? + b + DOCS_END.len();
    Some(&doc[b..e])
}

fn write_docs(section: &str) -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let doc = match std::fs::read_to_string(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow::anyhow!("read {}: {e}", path.display())),
    };
    std::fs::write(&path, splice_section(&doc, section)?)?;
    eprintln!("[soak] wrote the swarm section of {}", path.display());
    Ok(())
}

/// `maos-bench --soak [--agents N]... [--minutes M] [--think MS] [--flat-out] [--write-docs]`:
/// runs one soak per agent count (and with `--flat-out` one more without think time) and
/// prints the tables; fails on any violation or failed threshold.
pub(crate) fn main(args: &[String]) -> anyhow::Result<()> {
    let mut counts = Vec::new();
    let mut minutes = 1.0f64;
    let mut think = Duration::from_millis(DEFAULT_THINK_MS);
    let mut flat_out = false;
    let mut docs = false;
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
            "--think" => {
                think = Duration::from_millis(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--think MS"))?
                        .parse()?,
                )
            }
            "--flat-out" => flat_out = true,
            "--write-docs" => docs = true,
            other => anyhow::bail!("unknown soak argument {other:?}"),
        }
    }
    if counts.is_empty() {
        counts = vec![10, 100];
    }
    let run = |n: usize, think: Duration| -> anyhow::Result<Report> {
        eprintln!(
            "[soak] {n} agents for {minutes} minute(s), {}...",
            pace(think)
        );
        let r = soak(n, Duration::from_secs_f64(minutes * 60.0), think, 42)?;
        eprintln!(
            "[soak] {n} agents: {:.1} s, {} kills, {} violation(s)",
            r.seconds,
            r.kills,
            r.violations.len()
        );
        Ok(r)
    };
    let mut reports = Vec::new();
    for &n in &counts {
        reports.push(run(n, think)?);
    }
    let mut flat = Vec::new();
    if flat_out {
        for &n in &counts {
            flat.push(run(n, Duration::ZERO)?);
        }
    }
    println!("{}", markdown(&reports));
    print!("{}", checked(&reports));
    if flat_out {
        println!("\nFlat out (capacity, not held to the thresholds):\n");
        println!("{}", markdown(&flat));
        print!("{}", checked(&flat));
    }
    let failed = thresholds(&reports);
    let violations: Vec<&String> = reports
        .iter()
        .chain(&flat)
        .flat_map(|r| &r.violations)
        .collect();
    for v in &violations {
        eprintln!("VIOLATION: {v}");
    }
    for f in &failed {
        eprintln!("THRESHOLD FAILED: {f}");
    }
    if docs {
        write_docs(&docs_section(&reports, &flat, minutes, think, &failed))?;
    }
    anyhow::ensure!(
        violations.is_empty(),
        "{} invariant violation(s)",
        violations.len()
    );
    anyhow::ensure!(
        failed.is_empty(),
        "{} threshold(s) failed: {}",
        failed.len(),
        failed.join("; ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_swarm_section_is_replaced_and_nothing_else() {
        let s1 = format!("{DOCS_BEGIN}\none\n{DOCS_END}\n");
        let s2 = format!("{DOCS_BEGIN}\ntwo\n{DOCS_END}\n");
        let head = "# Benchmarks\n\n| a | b |\n";
        let doc = splice_section(head, &s1).unwrap();
        assert_eq!(doc, format!("{head}\n{s1}"));
        let doc = format!("{doc}\n## After\nkept\n");
        let again = splice_section(&doc, &s2).unwrap();
        assert_eq!(again, format!("{head}\n{s2}\n## After\nkept\n"));
        assert_eq!(kept_section(&again), Some(s2.trim_end()));
        assert!(splice_section(&format!("x {DOCS_END} {DOCS_BEGIN}"), &s1).is_err());
        assert!(splice_section(&format!("x {DOCS_BEGIN}"), &s1).is_err());
    }

    fn report(agents: usize, ops: &[(&str, u64, u64)]) -> Report {
        Report {
            agents,
            think: Duration::from_millis(DEFAULT_THINK_MS),
            seconds: 1.0,
            kills: 0,
            left_dead: 0,
            scans: 0,
            dead_lock_records: 0,
            accounting: check::Accounting::default(),
            ops: ops
                .iter()
                .map(|&(op, p50, p99)| (op.to_owned(), (1, p50, p99, p99)))
                .collect(),
            violations: Vec::new(),
        }
    }

    #[test]
    fn thresholds_name_what_failed() {
        let ok = [
            ("claim", 1_000, 9_000),
            ("send", 500, 4_000),
            ("lock acquire (free)", 100, 900),
        ];
        assert!(thresholds(&[report(10, &ok), report(100, &ok)]).is_empty());
        let slow = [
            ("claim", 1_000, 60_000),
            ("send", 500, 4_000),
            ("lock acquire (free)", 100, 900),
        ];
        let f = thresholds(&[report(10, &ok), report(100, &slow)]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("p99 of claim at 100 agents"), "{f:?}");
        let grew = [
            ("claim", 11_000, 20_000),
            ("send", 500, 4_000),
            ("lock acquire (free)", 100, 900),
        ];
        let f = thresholds(&[report(10, &ok), report(100, &grew)]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("median of claim grew 11.0x"), "{f:?}");
        let f = thresholds(&[report(10, &ok[..2])]);
        assert!(f[0].contains("no lock acquire (free)"), "{f:?}");
    }
}
