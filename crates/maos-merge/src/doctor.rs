//! `maos doctor` for the merge store (`.maos/merge/`): the queue file and the records of
//! interrupted merges. With `repair`, what can be fixed without losing a queued merge is
//! fixed; what is unreadable is moved to `.maos/quarantine/merge/`, never deleted.

use std::collections::BTreeMap;
use std::path::Path;

use maos_core::doctor::{Finding, Severity, quarantine};
use maos_core::{Workspace, fsx};

use crate::coordinator::{Intent, read_intent};
use crate::error::{CoreContext as _, Result};
use crate::queue::{QUEUE_FILE, QUEUE_LIMIT, QUEUE_LOCK_FILE, QueueState};

const STORE: &str = "merge";

/// The most interrupted-merge records looked at (one per branch; more is not a merge store).
const MAX_INTENTS: usize = 10_000;

/// Checks `.maos/merge/` of `ws`:
/// - `queue.json` (read bounded, under the queue's lock): parses, has version 1, every id
///   unique, `next_id` above the largest id. With `repair`: duplicate ids get fresh ones,
///   `next_id` is raised, and a file that cannot be parsed is quarantined (the queue starts
///   empty; its merges must be added again);
/// - every interrupted-merge record under `pending/`: parses, and where its branch stands
///   (at `from`: the merge never happened; at `to`: the branch's worktrees still need
///   bringing along, which the next merge into it or `MergeCoordinator::recover` does;
///   elsewhere: the branch moved since). With `repair`, an unreadable record is quarantined
///   and one whose merge never happened is removed.
///
/// # Errors
/// Only when the check cannot run (the queue's lock cannot be had, a directory cannot be
/// listed); problems in the files are findings.
pub fn doctor(ws: &Workspace, repair: bool) -> Result<Vec<Finding>> {
    let dir = ws.merge_dir();
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    queue(ws, &dir, repair, &mut out)?;
    intents(ws, &dir, repair, &mut out)?;
    Ok(out)
}

fn queue(ws: &Workspace, dir: &Path, repair: bool, out: &mut Vec<Finding>) -> Result<()> {
    let path = dir.join(QUEUE_FILE);
    if !path.exists() {
        return Ok(());
    }
    let lock_path = dir.join(QUEUE_LOCK_FILE);
    let lock = fsx::LockFile::open(&lock_path).core(|| format!("open {}", lock_path.display()))?;
    let _guard = lock
        .exclusive(fsx::DEFAULT_GUARD_TIMEOUT)
        .core(|| "lock the merge queue".to_owned())?;
    let mut state = match fsx::read_json::<QueueState>(&path, QUEUE_LIMIT) {
        Ok(s) => s,
        Err(e) => {
            let f = Finding::new(
                Severity::Error,
                STORE,
                &path,
                format!("the merge queue cannot be read: {e}"),
                "--repair moves it to .maos/quarantine/merge/ (the queue starts empty: add \
                 its merges again with `maos merge queue add`)",
            );
            out.push(if repair {
                quarantine(ws, STORE, &path).core(|| format!("quarantine {}", path.display()))?;
                f.repaired()
            } else {
                f
            });
            return Ok(());
        }
    };
    if state.version != 1 {
        out.push(Finding::new(
            Severity::Error,
            STORE,
            &path,
            format!(
                "format version {} is not one this maos knows (1)",
                state.version
            ),
            "written by another maos version: use that version, or move the file aside",
        ));
        return Ok(());
    }
    let mut changed = false;
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for e in &state.entries {
        *seen.entry(e.id).or_default() += 1;
    }
    let dups: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let largest = state.entries.iter().map(|e| e.id).max();
    if let Some(max) = largest
        && state.next_id <= max
    {
        let f = Finding::new(
            Severity::Error,
            STORE,
            &path,
            format!(
                "next_id {} is not above the largest entry id {max}: the next entry would \
                 reuse an id",
                state.next_id
            ),
            "--repair sets next_id above the largest id",
        );
        match max.checked_add(1) {
            Some(n) if repair => {
                state.next_id = n;
                changed = true;
                out.push(f.repaired());
            }
            Some(_) => out.push(f),
            None => out.push(Finding {
                remedy: "an id is at the largest number: remove that entry \
                         (`maos merge queue remove`) by hand"
                    .into(),
                ..f
            }),
        }
    }
    if !dups.is_empty() {
        let f = Finding::new(
            Severity::Error,
            STORE,
            &path,
            format!("entry ids used more than once: {dups:?}"),
            "--repair gives every later entry with a used id a fresh id",
        );
        if repair {
            let mut used = std::collections::BTreeSet::new();
            let mut ok = true;
            for e in &mut state.entries {
                if !used.insert(e.id) {
                    let Some(next) = state.next_id.checked_add(1) else {
                        ok = false;
                        break;
                    };
                    e.id = state.next_id;
                    used.insert(e.id);
                    state.next_id = next;
                }
            }
            changed |= ok;
            out.push(if ok { f.repaired() } else { f });
        } else {
            out.push(f);
        }
    }
    if changed {
        fsx::write_json_replace(&path, &state).core(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn intents(ws: &Workspace, dir: &Path, repair: bool, out: &mut Vec<Finding>) -> Result<()> {
    let pending = dir.join("pending");
    let rd = match std::fs::read_dir(&pending) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(maos_core::Error::io("read directory", &pending, e))
                .core(|| "check the interrupted merges".to_owned());
        }
    };
    let repo = git2::Repository::open(ws.root()).ok();
    for e in rd.take(MAX_INTENTS) {
        let path = e
            .map_err(|e| maos_core::Error::io("read directory", &pending, e))
            .core(|| "check the interrupted merges".to_owned())?
            .path();
        match read_intent(&path) {
            Err(e) => {
                let f = Finding::new(
                    Severity::Error,
                    STORE,
                    &path,
                    format!("an interrupted-merge record cannot be read: {}", cause(&e)),
                    "check the branch's worktrees by hand; --repair moves the record to \
                     .maos/quarantine/merge/",
                );
                out.push(if repair {
                    quarantine(ws, STORE, &path)
                        .core(|| format!("quarantine {}", path.display()))?;
                    f.repaired()
                } else {
                    f
                });
            }
            Ok(None) => {}
            Ok(Some(intent)) => intent_finding(&path, &intent, repo.as_ref(), repair, out)?,
        }
    }
    Ok(())
}

/// The causes of `e` (its own message is this module's context, not the cause).
fn cause(e: &crate::Error) -> String {
    let mut parts = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        parts.push(c.to_string());
        src = c.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

fn intent_finding(
    path: &Path,
    intent: &Intent,
    repo: Option<&git2::Repository>,
    repair: bool,
    out: &mut Vec<Finding>,
) -> Result<()> {
    let at = repo.and_then(|r| {
        r.find_reference(&intent.branch)
            .ok()
            .and_then(|r| r.target())
            .map(|o| o.to_string())
    });
    let b = &intent.branch;
    if at.as_deref() == Some(intent.from.as_str()) {
        let f = Finding::new(
            Severity::Note,
            STORE,
            path,
            format!("a merge into {b} was interrupted before it moved the branch"),
            "nothing happened; --repair removes the record",
        );
        if repair {
            fsx::remove_if_exists(path).core(|| format!("remove {}", path.display()))?;
            out.push(f.repaired());
        } else {
            out.push(f);
        }
    } else if at.as_deref() == Some(intent.to.as_str()) {
        out.push(Finding::new(
            Severity::Warning,
            STORE,
            path,
            format!(
                "a merge into {b} moved the branch to {} but was interrupted before its \
                 checked-out worktrees were brought along",
                intent.to
            ),
            "the next merge into the branch finishes it (local edits are kept)",
        ));
    } else {
        out.push(Finding::new(
            Severity::Warning,
            STORE,
            path,
            format!(
                "a merge into {b} was interrupted, and the branch has moved since (it is at \
                 {}, the merge went from {} to {})",
                at.as_deref().unwrap_or("no commit"),
                intent.from,
                intent.to
            ),
            "the next merge into the branch drops the record and leaves the worktrees as \
             they are: check them by hand",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use maos_core::AgentId;

    use super::*;
    use crate::{MergeCoordinator, MergeQueue};

    fn ws() -> (tempfile::TempDir, Workspace) {
        crate::test_repo()
    }

    fn queue(ws: &Workspace) -> MergeQueue {
        MergeQueue::new(MergeCoordinator::new(ws, AgentId::new("m").unwrap()).unwrap())
    }

    #[test]
    fn a_garbled_queue_file_is_reported_and_quarantined_by_repair() {
        let (_d, ws) = ws();
        assert!(doctor(&ws, false).unwrap().is_empty());
        queue(&ws).add("main", "main").unwrap();
        assert!(doctor(&ws, false).unwrap().is_empty());
        let path = ws.merge_dir().join(QUEUE_FILE);
        std::fs::write(&path, b"{\"version\":1,\"next_id\":").unwrap();
        let f = doctor(&ws, false).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(f[0].path, path);
        assert!(f[0].problem.contains("merge queue cannot be read"), "{f:?}");
        assert!(!f[0].repaired);
        let f = doctor(&ws, true).unwrap();
        assert!(f[0].repaired, "{f:?}");
        assert!(!path.exists());
        let kept = std::fs::read_dir(ws.maos_dir().join("quarantine/merge"))
            .unwrap()
            .count();
        assert_eq!(kept, 1);
        assert!(doctor(&ws, false).unwrap().is_empty());
        assert_eq!(queue(&ws).add("main", "main").unwrap().id, 1);
    }

    #[test]
    fn reused_ids_and_a_low_next_id_are_repaired_without_losing_an_entry() {
        let (_d, ws) = ws();
        let q = queue(&ws);
        q.add("main", "main").unwrap();
        q.add("main", "other").unwrap();
        let path = ws.merge_dir().join(QUEUE_FILE);
        let mut state: QueueState = fsx::read_json(&path, QUEUE_LIMIT).unwrap();
        state.entries[1].id = 1;
        state.next_id = 1;
        fsx::write_json_replace(&path, &state).unwrap();
        let f = doctor(&ws, false).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().any(|f| f.problem.contains("next_id 1")), "{f:?}");
        assert!(
            f.iter().any(|f| f.problem.contains("more than once")),
            "{f:?}"
        );
        let f = doctor(&ws, true).unwrap();
        assert!(f.iter().all(|f| f.repaired), "{f:?}");
        assert!(doctor(&ws, false).unwrap().is_empty());
        let ids: Vec<u64> = q.list().unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(q.add("other", "main").unwrap().id, 3);
    }

    #[test]
    fn interrupted_merge_records_are_explained() {
        let (_d, ws) = ws();
        let pending = ws.merge_dir().join("pending");
        fsx::create_dir_private(&pending).unwrap();
        let head = git2::Repository::open(ws.root())
            .unwrap()
            .refname_to_id("refs/heads/main")
            .unwrap()
            .to_string();
        let never = pending.join("main.json");
        let intent = Intent {
            branch: "refs/heads/main".into(),
            from: head,
            to: "0".repeat(40),
            worktrees: vec![],
        };
        fsx::write_json_replace(&never, &intent).unwrap();
        let garbled = pending.join("x.json");
        std::fs::write(&garbled, b"[").unwrap();
        let f = doctor(&ws, false).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        let bad = f.iter().find(|f| f.path == garbled).unwrap();
        assert_eq!(bad.severity, Severity::Error);
        let note = f.iter().find(|f| f.path == never).unwrap();
        assert!(note.problem.contains("before it moved the branch"), "{f:?}");
        let f = doctor(&ws, true).unwrap();
        assert!(f.iter().all(|f| f.repaired), "{f:?}");
        assert!(!never.exists() && !garbled.exists());
        assert!(doctor(&ws, false).unwrap().is_empty());
    }
}
