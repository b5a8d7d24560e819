//! One soak agent: a separate process doing what an agent does, in a loop, until its deadline:
//! claim a task, lock 1-3 files, check that it alone holds them, work on them (think time,
//! holding the locks), commit on its branch, message a role, broadcast its status, now and then
//! predict conflicts, release, complete the task, think before the next one. It records the
//! latency of each operation (think time excluded) and any violation of an invariant it can see.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use maos_coordination::comm::BroadcastChannel;
use maos_coordination::core::{AgentRole, now_ms};
use maos_coordination::merge::ConflictDetector;
use maos_coordination::track::{Options, Update};
use maos_coordination::{
    AgentId, AgentRegistry, ChannelName, FileChannel, FileLock, Message, Recipients, Registration,
    ResourceName, TaskId, TaskStatus, TaskTracker, Workspace,
};
use serde_json::json;

use super::{FILES, Rng, Setup};

/// Pauses for a random time in `0..2 * think` (a model turn: the agent reads, edits, thinks),
/// ending no later than `deadline` (ms since the epoch).
fn think(rng: &mut Rng, think: Duration, deadline: u64) {
    let ms = u64::try_from(think.as_millis()).unwrap_or(u64::MAX / 2);
    if ms == 0 {
        return;
    }
    let pause = rng.below(2 * ms).min(deadline.saturating_sub(now_ms()));
    std::thread::sleep(Duration::from_millis(pause));
}

/// Runs agent `id` (incarnation `inc`) until `deadline` (ms since the epoch), pausing a random
/// `0..2 * pace` twice per round (`Duration::ZERO`: flat out).
pub(crate) fn run(
    root: &Path,
    id: &str,
    inc: u32,
    deadline: u64,
    seed: u64,
    pace: Duration,
) -> anyhow::Result<()> {
    let ws = Workspace::open(root)?;
    let me = AgentId::new(id)?;
    AgentRegistry::new(&ws).register(
        Registration::new(me.clone())
            .role(AgentRole::new("worker")?)
            .branch(format!("agent/{id}")),
    )?;
    let setup = Setup::at(root);
    // An earlier incarnation killed while moving this agent's branch left git's ref lock
    // behind; only this agent writes its branch and that incarnation is gone (the checker
    // killed and reaped it before starting this one), so the lock is stale: git would refuse
    // every later commit on the branch. Crash recovery, as after any killed git command.
    let stale = root
        .join(".git/refs/heads/agent")
        .join(format!("{id}.lock"));
    match std::fs::remove_file(&stale) {
        Ok(()) => eprintln!("[soak] {id}/{inc}: removed the stale {}", stale.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let tracker = TaskTracker::open_with(&ws, Options::default().agent(me.clone()))?;
    let channel = FileChannel::open(&ws, ChannelName::new("swarm")?)?;
    let news = BroadcastChannel::new(&ws, me.clone());
    let repo = git2::Repository::open(root)?;
    let detector = ConflictDetector::open(root)?;
    let mut rng = Rng(seed ^ u64::from(inc).wrapping_mul(0x9E37_79B9));
    let mut samples: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    let mut seq = 0u64;
    let mut round = 0u64;
    let journal = setup.journal(id, inc)?;
    // Take over what an earlier incarnation of this agent claimed and left unfinished (it
    // was killed): the claim is the agent's, not the process's. Listed from the tracker, so
    // a claim made just before a kill and never journaled is found too.
    for task in tracker.active_blocking()? {
        if task.assigned_to.as_ref() == Some(&me) {
            journal.line(&format!("resume {}", task.id))?;
            let done = complete(&tracker, &journal, &task.id, &mut samples)?;
            if let Err(e) = done {
                // Listed (a read without the store's lock) just before another agent's
                // claim, which had found this agent dead before it registered again,
                // released and took it: it is no longer ours, and refusing is right.
                match tracker.get_blocking(&task.id)? {
                    Some(t) if t.assigned_to.as_ref() == Some(&me) => setup.violation(&format!(
                        "{id}/{inc}: completing task {} it took over failed: {e}",
                        task.id
                    ))?,
                    _ => {}
                }
            }
        }
    }
    let time = |samples: &mut BTreeMap<&'static str, Vec<u64>>, op: &'static str, t: Instant| {
        samples
            .entry(op)
            .or_default()
            .push(t.elapsed().as_micros() as u64);
    };
    let mut saved = Instant::now();
    while now_ms() < deadline {
        round += 1;
        let t = Instant::now();
        let task = tracker.claim_blocking(&me)?;
        time(&mut samples, "claim", t);
        let Some(task) = task else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        journal.line(&format!("claim {}", task.id))?;
        // Lock 1-3 distinct files, in a global order (no deadlock between agents).
        let mut files: Vec<usize> = (0..1 + rng.below(3))
            .map(|_| rng.below(FILES as u64) as usize)
            .collect();
        files.sort_unstable();
        files.dedup();
        let mut guards = Vec::new();
        for f in &files {
            let res = ResourceName::new(format!("src/f{f}.rs"))?;
            let lock = FileLock::new(&ws, res.clone())
                .agent(me.clone())
                .ttl(Duration::from_secs(30))
                .wait(Duration::from_secs(60));
            let t = Instant::now();
            let tried = match lock.try_acquire("soak") {
                // The table's guard was not had within try_acquire's short floor (a loaded
                // machine): not an answer about the lock; wait for it instead.
                Err(maos_coordination::lock::Error::Core(
                    maos_coordination::core::Error::LockTimeout { .. },
                )) => {
                    time(&mut samples, "lock try: guard busy", t);
                    None
                }
                other => other?,
            };
            let g = match tried {
                Some(g) => {
                    time(&mut samples, "lock acquire (free)", t);
                    g
                }
                None => {
                    let g = lock.acquire_blocking("soak")?;
                    time(&mut samples, "lock acquire (after waiting)", t);
                    g
                }
            };
            setup.enter(*f, id, inc, g.token().0)?;
            guards.push((*f, g));
        }
        // Work on the files (holding their locks), then one commit on this agent's branch.
        think(&mut rng, pace, deadline);
        let t = Instant::now();
        commit(&repo, id, &files, round)?;
        time(&mut samples, "commit", t);
        // Message the workers and broadcast a status.
        seq += 1;
        let msg = Message::new(
            me.clone(),
            Recipients::Role(AgentRole::new("worker")?),
            json!({ "sender": id, "inc": inc, "seq": seq }),
        );
        let t = Instant::now();
        channel.send_blocking(&msg)?;
        time(&mut samples, "send", t);
        journal.line(&format!("sent {inc} {seq}"))?;
        let t = Instant::now();
        news.broadcast_blocking(&format!("status/{id}"), &json!({ "round": round }))?;
        time(&mut samples, "broadcast", t);
        if round.is_multiple_of(10) {
            let t = Instant::now();
            detector.check(&format!("agent/{id}"), "main")?;
            time(&mut samples, "predict conflicts", t);
        }
        for (f, g) in guards {
            setup.leave(f, id, inc)?;
            let t = Instant::now();
            g.release()?;
            time(&mut samples, "lock release", t);
        }
        // The task is still ours: nobody took it over while this agent was alive.
        match tracker.get_blocking(&task.id)? {
            Some(t) if t.assigned_to.as_ref() == Some(&me) && t.status.is_active() => {}
            other => setup.violation(&format!(
                "{id}/{inc}: task {} it claimed is now {:?} while it is alive",
                task.id,
                other.map(|t| (t.status, t.assigned_to))
            ))?,
        }
        if let Err(e) = complete(&tracker, &journal, &task.id, &mut samples)? {
            setup.violation(&format!(
                "{id}/{inc}: completing task {} it claimed failed while alive: {e}",
                task.id
            ))?;
        }
        // The samples so far, now and then: a killed incarnation's samples count too (only
        // the last second's are lost), or the runs with the most kills would report least.
        if saved.elapsed() >= Duration::from_secs(1) {
            setup.results(id, inc, &samples)?;
            saved = Instant::now();
        }
        // Report, read, plan: the next model turn.
        think(&mut rng, pace, deadline);
    }
    setup.results(id, inc, &samples)?;
    Ok(())
}

/// Completes `task`, journaling `completing` before the tracker's write and `done` after it:
/// a kill between the two leaves a completed task whose `done` line is missing, and the
/// `completing` line tells the checker so. The tracker's refusal is returned as a value.
fn complete(
    tracker: &TaskTracker,
    journal: &Journal,
    task: &TaskId,
    samples: &mut BTreeMap<&'static str, Vec<u64>>,
) -> anyhow::Result<Result<(), maos_coordination::track::Error>> {
    journal.line(&format!("completing {task}"))?;
    let t = Instant::now();
    match tracker.update_blocking(task, &Update::status(TaskStatus::Completed)) {
        Ok(_) => {
            samples
                .entry("complete")
                .or_default()
                .push(t.elapsed().as_micros() as u64);
            journal.line(&format!("done {task}"))?;
            Ok(Ok(()))
        }
        Err(e) => Ok(Err(e)),
    }
}

/// One commit on `agent/<id>` changing `files` (created from main when missing).
fn commit(repo: &git2::Repository, id: &str, files: &[usize], round: u64) -> anyhow::Result<()> {
    let branch = format!("refs/heads/agent/{id}");
    let parent = match repo.find_reference(&branch) {
        Ok(r) => r.peel_to_commit()?,
        Err(_) => repo.find_reference("refs/heads/main")?.peel_to_commit()?,
    };
    let mut index = git2::Index::new()?;
    index.read_tree(&parent.tree()?)?;
    for f in files {
        let path = format!("src/f{f}.rs");
        let blob = repo.blob(format!("// {id} round {round}\nfn f{f}() {{}}\n").as_bytes())?;
        let entry = git2::IndexEntry {
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
            path: path.into_bytes(),
        };
        index.add(&entry)?;
    }
    let tree = repo.find_tree(index.write_tree_to(repo)?)?;
    let sig = git2::Signature::now(id, &format!("{id}@soak.invalid"))?;
    let msg = format!("round {round}\n\nMaos-Agent: {id}\n");
    let oid = repo.commit(None, &sig, &sig, &msg, &tree, &[&parent])?;
    repo.reference(&branch, oid, true, "soak")?;
    Ok(())
}

/// An append-only journal of what this incarnation did (read by the checker).
pub(crate) struct Journal {
    file: std::fs::File,
}

impl Journal {
    pub(crate) fn open(path: &PathBuf) -> anyhow::Result<Self> {
        Ok(Self {
            file: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        })
    }

    pub(crate) fn line(&self, s: &str) -> anyhow::Result<()> {
        (&self.file).write_all(format!("{s}\n").as_bytes())?;
        Ok(())
    }
}
