//! The merge queue under power cuts: a workload of adds, a removal and a run that merges, with
//! every file operation under `.maos/` recorded; each cut drops what no `fsync` covered (and a
//! random prefix of the unsynced tail), and the queue read back from the image must be whole,
//! hold every acknowledged entry (none acknowledged as removed), keep an entry acknowledged as
//! merged merged (never queued again, so never merged twice), and never hand out an id again.
//!
//! Git's own files (refs, objects, the worktree) are outside the simulator: they stay as the
//! workload left them; the queue's crash safety against them is `merge_crash.rs`'s subject.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use maos_coordination::core::fsx::sim::{Cut, Recording};
use maos_coordination::merge::{EntryStatus, MergeCoordinator, MergeQueue};
use maos_coordination::{AgentId, Workspace};
use maos_tests::merge_fixtures::Repo;

fn queue(ws: &Workspace) -> MergeQueue {
    MergeQueue::new(
        MergeCoordinator::new(ws, AgentId::new("merger").expect("a valid name"))
            .expect("a merge coordinator"),
    )
}

/// What the workload acknowledged: per entry, (operation index when the change began, when
/// it was acknowledged, the state it left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Want {
    Present,
    Absent,
    Merged,
}

#[derive(Default)]
struct Acks {
    changes: BTreeMap<u64, Vec<(usize, usize, Want)>>,
}

impl Acks {
    fn note(&mut self, id: u64, began: usize, acked: usize, want: Want) {
        self.changes
            .entry(id)
            .or_default()
            .push((began, acked, want));
    }

    /// The states entry `id` may be in after a cut at `at`: as its latest acknowledged change
    /// left it, or as any change in flight at the cut left it.
    fn allowed(&self, id: u64, at: usize) -> BTreeSet<Want> {
        let list = &self.changes[&id];
        let mut out = BTreeSet::new();
        match list.iter().rfind(|(_, acked, _)| *acked <= at) {
            Some((_, _, w)) => out.insert(*w),
            None => out.insert(Want::Absent),
        };
        for (began, acked, w) in list {
            if *began < at && *acked > at {
                out.insert(*w);
            }
        }
        out
    }

    /// The largest id acknowledged by the cut at `at`.
    fn max_acked_id(&self, at: usize) -> u64 {
        self.changes
            .iter()
            .filter(|(_, l)| l.iter().any(|(_, acked, _)| *acked <= at))
            .map(|(id, _)| *id)
            .max()
            .unwrap_or(0)
    }
}

/// Checks the image of `cut` in `repo`, a copy of the workload's repository (the recording
/// goes on under the original: the check's own writes must not be recorded).
fn check(repo: &Path, rec: &Recording, acks: &Acks, cut: &Cut) {
    let maos = repo.join(".maos");
    let kept = repo.join(".maos-kept");
    let image = tempfile::tempdir().expect("a temporary directory");
    rec.image(cut, image.path()).expect("the image of the cut");
    std::fs::rename(&maos, &kept).expect("set the workload's .maos aside");
    std::fs::rename(image.path(), &maos).expect("put the image in place");
    let result = std::panic::catch_unwind(|| {
        let ws = Workspace::open(repo).expect("the image opens as a workspace");
        let q = queue(&ws);
        let entries = q
            .list()
            .unwrap_or_else(|e| panic!("cut {cut:?}: the queue reads back whole: {e}"));
        let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
        let unique: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "cut {cut:?}: ids unique: {ids:?}");
        for id in acks.changes.keys() {
            let allowed = acks.allowed(*id, cut.at);
            let now = match entries.iter().find(|e| e.id == *id) {
                None => Want::Absent,
                Some(e) if e.status == EntryStatus::Merged => Want::Merged,
                Some(_) => Want::Present,
            };
            assert!(
                allowed.contains(&now),
                "cut {cut:?}: entry #{id} is {now:?}, allowed {allowed:?}\n{}",
                rec.describe()
            );
        }
        // An id is never handed out again.
        // (agent/f6 is never queued by the workload: a new entry, not an existing one.)
        let next = q.add("agent/f6", "main").expect("an add after the cut").id;
        assert!(
            next > acks.max_acked_id(cut.at),
            "cut {cut:?}: id {next} handed out again; the queue held {ids:?}"
        );
    });
    std::fs::remove_dir_all(&maos).expect("drop the image");
    std::fs::rename(&kept, &maos).expect("restore the workload's .maos");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn queue_entries_are_neither_lost_nor_merged_twice_by_a_power_cut() {
    let repo = Repo::new();
    repo.write("base.txt", "base\n");
    repo.commit_all("base");
    for i in 1..=6 {
        repo.checkout(&format!("agent/f{i}"), true);
        repo.write(&format!("f{i}.txt"), format!("work {i}\n"));
        repo.commit_all(&format!("f{i}"));
        repo.checkout("main", false);
    }
    let ws = Workspace::init(repo.path()).expect("a workspace");
    let q = queue(&ws);
    let rec = Recording::start(ws.maos_dir()).expect("recording starts");
    let mut acks = Acks::default();
    let mut ids = Vec::new();
    for i in 1..=4 {
        let began = rec.len();
        let e = q.add(&format!("agent/f{i}"), "main").expect("add");
        acks.note(e.id, began, rec.len(), Want::Present);
        ids.push(e.id);
    }
    let began = rec.len();
    q.remove(ids[3]).expect("remove");
    acks.note(ids[3], began, rec.len(), Want::Absent);
    let began = rec.len();
    let run = q.run_blocking().expect("the run");
    let acked = rec.len();
    assert_eq!(run.merged, ids[..3].to_vec(), "{run:?}");
    for id in &run.merged {
        acks.note(*id, began, acked, Want::Merged);
    }
    let began = rec.len();
    let e = q.add("agent/f5", "main").expect("add");
    acks.note(e.id, began, rec.len(), Want::Present);

    // A copy of the repository as the workload left it, where each cut's image is checked.
    let copy = tempfile::tempdir().expect("a temporary directory");
    let twin = copy.path().join("repo");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo.path())
        .arg(&twin)
        .output()
        .expect("cp runs");
    assert!(
        out.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cuts = if std::env::var_os("MAOS_SLOW_TESTS").is_some_and(|v| v == "1") {
        2000
    } else {
        200
    };
    for seed in 0..cuts {
        check(&twin, &rec, &acks, &rec.random_cut(seed));
    }
    // Every acknowledged change survives the cut right after the last one.
    check(&twin, &rec, &acks, &Cut::durable_only(rec.len()));
}
