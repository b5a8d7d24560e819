//! The soak's checker: the agents' journals read as they grow (every incarnation's), and the
//! invariants that need them: each task completed once (journal against tracker), claims and
//! lock records of killed incarnations gone once somebody wanted them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use maos_coordination::lock::Snapshot;
use maos_coordination::{Task, TaskStatus};

/// How long past its deadline a dead incarnation's claim or lock record may linger (the
/// checker samples every second; a loaded 2-core machine delays everything).
pub(crate) const SLACK_MS: u64 = 5_000;

/// One incarnation of an agent (a process; a restarted agent keeps its id and gets a new one).
#[derive(Debug, Clone)]
pub(crate) struct Incarnation {
    pub(crate) id: String,
    pub(crate) inc: u32,
    pub(crate) pid: u32,
    /// When the checker started it (ms since the epoch).
    pub(crate) spawned_at: u64,
    /// When the checker killed it (SIGKILL, ms since the epoch), if it did.
    pub(crate) killed_at: Option<u64>,
}

/// What one incarnation journaled.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    pub(crate) claimed: BTreeSet<String>,
    pub(crate) resumed: BTreeSet<String>,
    pub(crate) completing: BTreeSet<String>,
    pub(crate) done: Vec<String>,
    /// `(incarnation, seq)` of every acknowledged send.
    pub(crate) sent: Vec<(u32, u64)>,
}

/// Every journal, read incrementally (only complete lines; a line is one `write(2)`, so a
/// SIGKILL never tears one).
#[derive(Debug, Default)]
pub(crate) struct Journals {
    offsets: HashMap<PathBuf, u64>,
    pub(crate) by_inc: BTreeMap<(String, u32), Journal>,
}

/// The most read from one journal in one go.
const READ_LIMIT: u64 = 64 << 20;

impl Journals {
    /// Reads what was appended to every journal in `dir` since the last call.
    pub(crate) fn read_new(&mut self, dir: &Path) -> anyhow::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let Some((id, inc)) = name.split_once('.') else {
                anyhow::bail!("journal {} is not named ID.INC", path.display());
            };
            let inc: u32 = inc
                .parse()
                .map_err(|_| anyhow::anyhow!("journal {} is not named ID.INC", path.display()))?;
            let at = self.offsets.get(&path).copied().unwrap_or(0);
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(at))?;
            let mut buf = Vec::new();
            f.take(READ_LIMIT).read_to_end(&mut buf)?;
            let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            self.offsets.insert(path.clone(), at + end as u64 + 1);
            let j = self.by_inc.entry((id.to_owned(), inc)).or_default();
            for line in String::from_utf8_lossy(&buf[..end]).lines() {
                let parts: Vec<&str> = line.split(' ').collect();
                match parts[..] {
                    ["claim", t] => {
                        j.claimed.insert(t.to_owned());
                    }
                    ["resume", t] => {
                        j.resumed.insert(t.to_owned());
                    }
                    ["completing", t] => {
                        j.completing.insert(t.to_owned());
                    }
                    ["done", t] => j.done.push(t.to_owned()),
                    ["sent", i, seq] => j.sent.push((i.parse()?, seq.parse()?)),
                    _ => anyhow::bail!("journal {}: unknown line {line:?}", path.display()),
                }
            }
        }
        Ok(())
    }
}

/// What the final accounting found besides violations (shown in the report).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Accounting {
    /// Tasks the tracker has completed.
    pub(crate) completed: usize,
    /// Of those, completed by an incarnation killed between the tracker's commit and its
    /// `done` line.
    pub(crate) done_line_lost: usize,
    /// Tasks an incarnation took over from a killed one.
    pub(crate) resumed: usize,
}

/// Each task completed once: at most one `done` line per task over every incarnation, every
/// `done` task completed in the tracker, and every task the tracker completed has one `done`
/// line, or none when an incarnation journaled `completing` for it, never `done`, and was
/// killed (the kill fell between the tracker's commit and the journal write).
pub(crate) fn check_done(
    journals: &Journals,
    killed: &BTreeSet<(String, u32)>,
    tasks: &[Task],
    violations: &mut Vec<String>,
) -> Accounting {
    let mut done_by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut lost: BTreeSet<&str> = BTreeSet::new();
    let mut resumed = 0;
    for ((id, inc), j) in &journals.by_inc {
        resumed += j.resumed.len();
        for t in &j.done {
            done_by.entry(t).or_default().push(format!("{id}/{inc}"));
        }
        if killed.contains(&(id.clone(), *inc)) {
            for t in &j.completing {
                if !j.done.contains(t) {
                    lost.insert(t);
                }
            }
        }
    }
    let status: HashMap<String, TaskStatus> =
        tasks.iter().map(|t| (t.id.to_string(), t.status)).collect();
    for (t, who) in &done_by {
        if who.len() > 1 {
            violations.push(format!(
                "task {t} completed {} times: by {}",
                who.len(),
                who.join(", ")
            ));
        }
        match status.get(*t) {
            Some(TaskStatus::Completed) => {}
            other => violations.push(format!(
                "task {t}: {} journaled done but the tracker has it {other:?}",
                who.join(", ")
            )),
        }
    }
    let mut acc = Accounting {
        resumed,
        ..Accounting::default()
    };
    for t in tasks.iter().filter(|t| t.status == TaskStatus::Completed) {
        acc.completed += 1;
        let id = t.id.to_string();
        if done_by.contains_key(id.as_str()) {
            continue;
        }
        if lost.contains(id.as_str()) {
            acc.done_line_lost += 1;
        } else {
            violations.push(format!(
                "task {id} is completed in the tracker, but no agent journaled done for it \
                 and none was killed while completing it"
            ));
        }
    }
    acc
}

/// Claims of killed incarnations, while the run goes on (`tasks` = the active ones now):
/// - an agent killed and not restarted yet: the registry calls it dead at once (its anchor is
///   a session process that is gone), so the next claim by anyone releases its claims in the
///   same write; once a claim started after the death (`last_claim` is the latest start of
///   an active task) and `SLACK_MS` passed, none may still be its;
/// - an agent restarted: its new incarnation takes over what the dead one claimed (it lists
///   its active tasks at start); `SLACK_MS` after the restart, a task claimed before it must be
///   journaled as resumed.
pub(crate) fn check_claims(
    now: u64,
    active: &[Task],
    current: &HashMap<String, (Incarnation, bool)>,
    journals: &Journals,
    violations: &mut Vec<String>,
) {
    let last_claim = active
        .iter()
        .filter_map(|t| t.started_at)
        .max()
        .unwrap_or(0);
    for t in active {
        let Some(a) = &t.assigned_to else { continue };
        let Some((cur, running)) = current.get(a.as_str()) else {
            continue;
        };
        let started = t.started_at.unwrap_or(0);
        if !running {
            // Killed, waiting to be restarted.
            let k = cur.killed_at.unwrap_or(0);
            if last_claim > k + 1_000 && now > k + SLACK_MS {
                violations.push(format!(
                    "task {} is still claimed by {a}, killed {} ms ago and not restarted, \
                     though others claimed since",
                    t.id,
                    now - k
                ));
            }
        } else if started < cur.spawned_at && now > cur.spawned_at + SLACK_MS {
            let resumed = journals
                .by_inc
                .get(&(cur.id.clone(), cur.inc))
                .is_some_and(|j| j.resumed.contains(&t.id.to_string()));
            if !resumed {
                violations.push(format!(
                    "task {} claimed by a killed incarnation of {a} was not taken over by \
                     {a}/{} ({} ms after its start)",
                    t.id,
                    cur.inc,
                    now - cur.spawned_at
                ));
            }
        }
    }
}

/// What the lock-record check saw (shown in the report, so a check that never met a dead
/// record says so).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LockSeen {
    /// Times a killed incarnation's holder or waiter record was found in the table.
    pub(crate) dead_records: usize,
}

/// Lock records of killed incarnations, read raw (nothing reaped): `records` was read after
/// `grants` (per file: the last fencing token granted on it and when, from the soak's own
/// bookkeeping inside the critical section). A dead holder must be gone once a later token
/// was granted on its file (the grant had to remove it: the locks are exclusive), and once a
/// live waiter has queued behind it for longer than its lease plus `SLACK_MS`. A dead waiter
/// must be gone once the file was granted `SLACK_MS` after its death.
pub(crate) fn check_locks(
    now: u64,
    records: &Snapshot,
    grants: &HashMap<usize, (u64, u64)>,
    incarnations: &HashMap<u32, Incarnation>,
    grants_read_at: u64,
    seen: &mut LockSeen,
    violations: &mut Vec<String>,
) {
    let dead = |owner: &str, p: Option<&maos_coordination::core::ProcessIdentity>| {
        let i = incarnations.get(&p?.pid)?;
        (i.id == owner && i.killed_at.is_some_and(|k| k < grants_read_at)).then_some(i)
    };
    let file =
        |r: &str| -> Option<usize> { r.strip_prefix("src/f")?.strip_suffix(".rs")?.parse().ok() };
    for h in &records.holders {
        let Some(i) = dead(h.owner.as_str(), h.process.as_ref()) else {
            continue;
        };
        seen.dead_records += 1;
        let Some(f) = file(h.resource.as_str()) else {
            continue;
        };
        if let Some(&(token, _)) = grants.get(&f)
            && token > h.token.0
        {
            violations.push(format!(
                "lock {} of killed {}/{} (pid {}, token {}) still in the table after token {token} \
                 was granted on it",
                h.resource, i.id, i.inc, i.pid, h.token.0
            ));
        }
        for w in records.waiters.iter().filter(|w| w.resource == h.resource) {
            let alive = w
                .process
                .as_ref()
                .and_then(|p| incarnations.get(&p.pid))
                .is_some_and(|wi| wi.killed_at.is_none());
            if alive && now > w.since + h.ttl_ms + SLACK_MS {
                violations.push(format!(
                    "lock {} of killed {}/{} still in the table while {} waited {} ms for it",
                    h.resource,
                    i.id,
                    i.inc,
                    w.agent,
                    now - w.since
                ));
            }
        }
    }
    for w in &records.waiters {
        let Some(i) = dead(w.agent.as_str(), w.process.as_ref()) else {
            continue;
        };
        seen.dead_records += 1;
        let Some(f) = file(w.resource.as_str()) else {
            continue;
        };
        let k = i.killed_at.unwrap_or(0);
        if let Some(&(_, at)) = grants.get(&f)
            && at > k + SLACK_MS
        {
            violations.push(format!(
                "wait of killed {}/{} (pid {}) for {} still queued after the file was granted \
                 {} ms after its death",
                i.id,
                i.inc,
                i.pid,
                w.resource,
                at - k
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use maos_coordination::AgentId;
    use maos_coordination::lock::{LockInfo, WaiterInfo};
    use serde_json::json;

    use super::*;

    fn journals(lines: &[(&str, u32, &str)]) -> (tempfile::TempDir, Journals) {
        let dir = tempfile::tempdir().unwrap();
        for (id, inc, text) in lines {
            let path = dir.path().join(format!("{id}.{inc}"));
            let mut old = std::fs::read_to_string(&path).unwrap_or_default();
            old.push_str(text);
            old.push('\n');
            std::fs::write(&path, old).unwrap();
        }
        let mut j = Journals::default();
        j.read_new(dir.path()).unwrap();
        (dir, j)
    }

    fn task(status: TaskStatus, agent: Option<&str>, started: u64) -> Task {
        let mut t = Task::new("t");
        t.status = status;
        t.assigned_to = agent.map(|a| AgentId::new(a).unwrap());
        t.started_at = Some(started);
        t
    }

    #[test]
    fn journals_are_read_on_from_where_they_stopped_and_only_whole_lines() {
        let (dir, mut j) = journals(&[("a", 0, "claim x")]);
        let path = dir.path().join("a.0");
        std::fs::write(&path, "claim x\ndone x\ncomple").unwrap();
        j.read_new(dir.path()).unwrap();
        let a = &j.by_inc[&("a".to_owned(), 0)];
        assert_eq!(a.claimed.len(), 1);
        assert_eq!(a.done, ["x"]);
        assert!(a.completing.is_empty());
        std::fs::write(&path, "claim x\ndone x\ncompleting y\n").unwrap();
        j.read_new(dir.path()).unwrap();
        assert!(j.by_inc[&("a".to_owned(), 0)].completing.contains("y"));
        std::fs::write(dir.path().join("b.0"), "what\n").unwrap();
        assert!(j.read_new(dir.path()).is_err());
    }

    #[test]
    fn a_task_done_twice_or_completed_without_a_done_line_is_a_violation() {
        let t1 = task(TaskStatus::Completed, Some("a"), 1);
        let t2 = task(TaskStatus::Completed, Some("b"), 1);
        let t3 = task(TaskStatus::InProgress, Some("c"), 1);
        let tasks = [t1.clone(), t2.clone(), t3.clone()];
        let (id1, id2, id3) = (t1.id.to_string(), t2.id.to_string(), t3.id.to_string());
        // Each once: fine.
        let (_d, j) = journals(&[
            ("a", 0, &format!("completing {id1}")),
            ("a", 0, &format!("done {id1}")),
            ("b", 0, &format!("done {id2}")),
        ]);
        let mut v = Vec::new();
        let acc = check_done(&j, &BTreeSet::new(), &tasks, &mut v);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(acc.completed, 2);
        // Twice, and a done line for a task the tracker has in progress.
        let (_d, j) = journals(&[
            ("a", 0, &format!("done {id1}")),
            ("a", 1, &format!("done {id1}")),
            ("b", 0, &format!("done {id2}")),
            ("c", 0, &format!("done {id3}")),
        ]);
        let mut v = Vec::new();
        check_done(&j, &BTreeSet::new(), &tasks, &mut v);
        assert_eq!(v.len(), 2, "{v:?}");
        // (In the order of the tasks' ids, which are random.)
        assert!(v.iter().any(|x| x.contains("completed 2 times")), "{v:?}");
        assert!(v.iter().any(|x| x.contains("InProgress")), "{v:?}");
        // No done line: allowed only for a killed incarnation that journaled completing.
        let (_d, j) = journals(&[
            ("a", 0, &format!("completing {id1}")),
            ("b", 0, &format!("completing {id2}")),
        ]);
        let killed: BTreeSet<(String, u32)> = [("a".to_owned(), 0)].into();
        let mut v = Vec::new();
        let acc = check_done(&j, &killed, &tasks, &mut v);
        assert_eq!(acc.done_line_lost, 1);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains(&id2), "{v:?}");
    }

    fn inc(id: &str, inc: u32, pid: u32, spawned_at: u64, killed_at: Option<u64>) -> Incarnation {
        Incarnation {
            id: id.into(),
            inc,
            pid,
            spawned_at,
            killed_at,
        }
    }

    #[test]
    fn claims_of_killed_incarnations_must_be_released_or_taken_over() {
        let now = 100_000;
        let (_d, j) = journals(&[("a", 1, "claim z")]);
        // `a` killed at 50 s, not restarted; others claimed since (task of b at 60 s).
        let dead = task(TaskStatus::InProgress, Some("a"), 40_000);
        let other = task(TaskStatus::InProgress, Some("b"), 60_000);
        let mut current = HashMap::new();
        current.insert("a".to_owned(), (inc("a", 0, 1, 0, Some(50_000)), false));
        current.insert("b".to_owned(), (inc("b", 0, 2, 0, None), true));
        let mut v = Vec::new();
        check_claims(now, &[dead.clone(), other.clone()], &current, &j, &mut v);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("not restarted"), "{v:?}");
        // Nobody claimed since the death: nothing wanted it yet.
        let early = task(TaskStatus::InProgress, Some("b"), 30_000);
        let mut v = Vec::new();
        check_claims(now, &[dead.clone(), early], &current, &j, &mut v);
        assert!(v.is_empty(), "{v:?}");
        // `a` restarted at 60 s as a/1: it must take over the claim within the slack.
        current.insert("a".to_owned(), (inc("a", 1, 3, 60_000, None), true));
        let mut v = Vec::new();
        check_claims(now, &[dead.clone(), other.clone()], &current, &j, &mut v);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("not taken over"), "{v:?}");
        let mut v = Vec::new();
        check_claims(61_000, std::slice::from_ref(&dead), &current, &j, &mut v);
        assert!(v.is_empty(), "within the slack: {v:?}");
        let (_d, j) = journals(&[("a", 1, &format!("resume {}", dead.id))]);
        let mut v = Vec::new();
        check_claims(now, &[dead, other], &current, &j, &mut v);
        assert!(v.is_empty(), "{v:?}");
    }

    fn holder(owner: &str, pid: u32, f: usize, token: u64) -> LockInfo {
        serde_json::from_value(json!({
            "id": token, "resource": format!("src/f{f}.rs"), "mode": "exclusive",
            "owner": owner, "process": {"host": "h", "pid": pid, "start_time": 1, "boot_id": "b"},
            "live": "l", "acquired_at": 1, "expires_at": 30_001, "ttl_ms": 30_000,
            "purpose": "soak", "token": token
        }))
        .unwrap()
    }

    fn waiter(agent: &str, pid: u32, f: usize, since: u64) -> WaiterInfo {
        serde_json::from_value(json!({
            "ticket": pid, "resource": format!("src/f{f}.rs"), "mode": "exclusive",
            "agent": agent, "process": {"host": "h", "pid": pid, "start_time": 1, "boot_id": "b"},
            "live": "w", "since": since, "purpose": "soak"
        }))
        .unwrap()
    }

    #[test]
    fn dead_lock_records_must_go_once_the_file_is_wanted() {
        let incs: HashMap<u32, Incarnation> = [
            (10, inc("a", 0, 10, 0, Some(50_000))),
            (11, inc("b", 0, 11, 0, None)),
            (12, inc("c", 0, 12, 0, Some(50_000))),
        ]
        .into();
        let now = 100_000;
        let check = |snap: &Snapshot, grants: &HashMap<usize, (u64, u64)>| {
            let (mut seen, mut v) = (LockSeen::default(), Vec::new());
            check_locks(now, snap, grants, &incs, now, &mut seen, &mut v);
            (seen.dead_records, v)
        };
        // A dead holder nobody wanted: seen, allowed.
        let snap = Snapshot {
            holders: vec![holder("a", 10, 1, 5), holder("b", 11, 2, 6)],
            waiters: vec![],
        };
        let (n, v) = check(&snap, &[(1, (5, 40_000)), (2, (6, 40_000))].into());
        assert_eq!((n, v.len()), (1, 0), "{v:?}");
        // A later token granted on its file: it had to go.
        let (_, v) = check(&snap, &[(1, (7, 60_000))].into());
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("after token 7"), "{v:?}");
        // A live waiter queued behind it for longer than its lease plus the slack.
        let mut snap2 = snap.clone();
        snap2.waiters = vec![waiter("b", 11, 1, 60_000)];
        let (_, v) = check(&snap2, &HashMap::new());
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("waited"), "{v:?}");
        snap2.waiters = vec![waiter("b", 11, 1, 90_000)];
        assert!(check(&snap2, &HashMap::new()).1.is_empty());
        // A dead waiter still queued after a grant well after its death.
        let snap3 = Snapshot {
            holders: vec![],
            waiters: vec![waiter("c", 12, 3, 45_000)],
        };
        let (n, v) = check(&snap3, &[(3, (9, 80_000))].into());
        assert_eq!((n, v.len()), (1, 1), "{v:?}");
        assert!(check(&snap3, &[(3, (9, 52_000))].into()).1.is_empty());
        // A pid that is another incarnation's (reused) is not the dead one's record.
        let snap4 = Snapshot {
            holders: vec![holder("b", 10, 1, 5)],
            waiters: vec![],
        };
        assert_eq!(check(&snap4, &[(1, (7, 60_000))].into()).0, 0);
    }
}
