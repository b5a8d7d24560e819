//! The merge itself: under the merge lock, a fast-forward or a merge commit written from
//! the engine's merged tree, the target moved by compare-and-swap, then checked-out
//! worktrees brought along (`checkout.rs`), then the pair's tasks closed.

use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

use super::checkout::{
    Intent, intent_path, read_intent, remove_intent, update_worktree, write_intent,
};
use super::resolution::complete_pair_tasks;
use super::{MergeCoordinator, MergeOutcome, MergeStep};
use crate::detect::{
    DetectOptions, Engine, Relation, check_with, engine_options, history, merge_commits,
    resolve_commit, write_tree,
};
use crate::error::{Error, GitContext as _, Result};
use crate::touch::{AGENT_TRAILER, short_branch};

impl MergeCoordinator {
    /// Finishes (or drops) a merge into `target` that a killed process left half done: the
    /// ref moved but a checked-out worktree was not brought along. Runs by itself at the
    /// start of every merge into `target`; returns the paths left alone because they hold
    /// local edits (empty when there was nothing to finish).
    pub fn recover(&self, target: &str) -> Result<Vec<String>> {
        let refname = branch_ref(target);
        let guard = self.lock(target, &format!("recover a merge into {target}"))?;
        let repo = self.detector.repository()?;
        let result = self.finish_interrupted(&repo, &refname);
        Self::release(guard);
        result
    }

    fn finish_interrupted(&self, repo: &Repository, refname: &str) -> Result<Vec<String>> {
        let file = intent_path(&self.ws.merge_dir(), refname);
        let Some(intent) = read_intent(&file)? else {
            return Ok(Vec::new());
        };
        let current = repo
            .find_reference(refname)
            .ok()
            .and_then(|r| r.target())
            .map(|o| o.to_string());
        let mut kept = Vec::new();
        if current.as_deref() == Some(intent.to.as_str()) {
            let (from, to) = (
                Oid::from_str(&intent.from).git("parse oid")?,
                Oid::from_str(&intent.to).git("parse oid")?,
            );
            for dir in &intent.worktrees {
                let Ok(wt) = Repository::open(dir) else {
                    tracing::warn!(worktree = %dir.display(), "worktree of an interrupted merge is gone");
                    continue;
                };
                let head = wt
                    .find_reference("HEAD")
                    .ok()
                    .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_owned));
                if head.as_deref() != Some(refname) {
                    continue; // another branch is checked out there now
                }
                kept.extend(update_worktree(&wt, from, to, &|s| self.step(s))?.kept);
            }
            tracing::info!(branch = refname, from = %intent.from, to = %intent.to,
                "finished bringing worktrees along after an interrupted merge");
        } else if current.as_deref() == Some(intent.from.as_str()) {
            tracing::info!(
                branch = refname,
                "an interrupted merge never moved the branch"
            );
        } else {
            tracing::warn!(branch = refname, expected = %intent.to,
                "the branch moved since an interrupted merge; its worktrees were left as they are");
        }
        remove_intent(&file)?;
        Ok(kept)
    }

    /// Merges `source` into the branch `target` if it merges cleanly: a fast-forward or a
    /// merge commit, under the merge lock, moving the target by compare-and-swap. Returns
    /// [`MergeOutcome::Conflicts`] (changing nothing) when it does not.
    pub async fn merge(&self, source: &str, target: &str) -> Result<MergeOutcome> {
        let this = self.clone();
        let (s, t) = (source.to_owned(), target.to_owned());
        crate::asyncify(move || this.merge_blocking(&s, &t)).await
    }

    /// [`MergeCoordinator::merge`] for synchronous callers.
    pub fn merge_blocking(&self, source: &str, target: &str) -> Result<MergeOutcome> {
        let span = tracing::info_span!("merge", source, target, agent = %self.agent);
        let _enter = span.enter();
        let guard = self.lock(target, &format!("merge {source} into {target}"))?;
        let result = self.merge_locked(source, target, None);
        Self::release(guard);
        self.after_merge(source, target, &result);
        result
    }

    /// Like [`MergeCoordinator::merge_blocking`], but moves the target only if it still
    /// points at `expected` (the commit the caller checked): the ref update is a
    /// compare-and-swap against it, so any move since fails with
    /// [`Error::ConcurrentUpdate`].
    pub fn merge_expecting(
        &self,
        source: &str,
        target: &str,
        expected: &str,
    ) -> Result<MergeOutcome> {
        let span = tracing::info_span!("merge", source, target, expected, agent = %self.agent);
        let _enter = span.enter();
        let expected = Oid::from_str(expected).map_err(|source| Error::UnknownRevision {
            rev: expected.to_owned(),
            source,
        })?;
        let guard = self.lock(target, &format!("merge {source} into {target}"))?;
        let result = self.merge_locked(source, target, Some(expected));
        Self::release(guard);
        self.after_merge(source, target, &result);
        result
    }

    /// After a successful merge, completes the open resolution tasks of the pair (tasks
    /// labelled `merge` whose `merge.source` / `merge.target` metadata name it): conflict
    /// tasks first (their conflicts are gone), then the merge task. Failures only log: the
    /// merge itself is done.
    fn after_merge(&self, source: &str, target: &str, result: &Result<MergeOutcome>) {
        let note = match result {
            Ok(MergeOutcome::Merged { commit, .. }) => format!("merged as {commit}"),
            Ok(MergeOutcome::FastForward { to, .. }) => format!("fast-forwarded to {to}"),
            Ok(MergeOutcome::UpToDate { commit }) => format!("already contained in {commit}"),
            Ok(MergeOutcome::Conflicts(_)) | Err(_) => return,
        };
        let Ok(tracker) = self.tracker() else { return };
        let Ok(tasks) = tracker.list() else {
            return;
        };
        for (task, e) in complete_pair_tasks(&tracker, &tasks, source, target, &note) {
            tracing::warn!(task = %task, error = %e, "cannot complete a merge task");
        }
    }

    fn merge_locked(
        &self,
        source: &str,
        target: &str,
        expected: Option<Oid>,
    ) -> Result<MergeOutcome> {
        let repo = self.detector.repository()?;
        let refname = branch_ref(target);
        self.finish_interrupted(&repo, &refname)?;
        let reference = repo
            .find_reference(&refname)
            .map_err(|_| Error::TargetNotBranch {
                target: target.to_owned(),
            })?;
        let current = reference.target().ok_or_else(|| Error::TargetNotBranch {
            target: target.to_owned(),
        })?;
        // The commit the merge is computed against and the CAS expects.
        let old = expected.unwrap_or(current);
        let src = resolve_commit(&repo, source)?;
        let options = DetectOptions::default();
        let engine = Engine::new(&repo, engine_options(&options));
        let relation = history(&engine, src.id(), old)?.relation;
        if relation == Relation::UpToDate {
            return Ok(MergeOutcome::UpToDate {
                commit: old.to_string(),
            });
        }
        if relation == Relation::Unrelated {
            return Err(Error::UnrelatedHistories {
                source_rev: source.to_owned(),
                target: target.to_owned(),
            });
        }
        let checkouts = checked_out(&repo, &refname)?;
        for wt in &checkouts {
            ensure_clean(wt, &refname)?;
        }
        let new = match relation {
            Relation::FastForward => src.id(),
            _ => {
                let tgt = repo.find_commit(old).git("read commit")?;
                let merged = merge_commits(&engine, old, src.id())?;
                if !merged.conflicts.is_empty() {
                    let check = check_with(&engine, &options, source, target)?;
                    return Ok(MergeOutcome::Conflicts(check));
                }
                let tree_id = write_tree(&engine, &merged.entries)?;
                let tree = repo.find_tree(tree_id).git("read tree")?;
                let sig = repo
                    .signature()
                    .or_else(|_| git2::Signature::now("maos", "maos@localhost"))
                    .git("signature")?;
                let msg = format!(
                    "Merge {} into {}\n\nMerged by maos for {}: {} into {}.\n\n{}: {}\n",
                    describe_rev(source),
                    short_branch(target),
                    self.agent,
                    src.id(),
                    old,
                    AGENT_TRAILER,
                    self.agent
                );
                repo.commit(None, &sig, &sig, &msg, &tree, &[&tgt, &src])
                    .git("write merge commit")?
            }
        };
        let log = format!(
            "maos merge: {} into {}",
            describe_rev(source),
            short_branch(target)
        );
        let cas_error = |source_err| Error::ConcurrentUpdate {
            branch: refname.clone(),
            expected: old.to_string(),
            source: source_err,
        };
        if current != old {
            return Err(cas_error(git2::Error::from_str(&format!(
                "{refname} is at {current}"
            ))));
        }
        // Crash-safe order (checkout.rs): intent, ref, worktrees, intent removed.
        let intent_file = intent_path(&self.ws.merge_dir(), &refname);
        if !checkouts.is_empty() {
            let intent = Intent {
                branch: refname.clone(),
                from: old.to_string(),
                to: new.to_string(),
                worktrees: checkouts
                    .iter()
                    .filter_map(|w| w.workdir().map(Path::to_path_buf))
                    .collect(),
            };
            write_intent(&intent_file, &intent)?;
            self.step(MergeStep::IntentWritten);
        }
        if let Err(e) = repo.reference_matching(&refname, new, true, old, &log) {
            // Someone moved the target since the check: nothing was touched.
            remove_intent(&intent_file)?;
            return Err(cas_error(e));
        }
        self.step(MergeStep::RefMoved);
        for wt in &checkouts {
            let done = update_worktree(wt, old, new, &|s| self.step(s))?;
            if !done.kept.is_empty() {
                tracing::warn!(worktree = ?wt.workdir(), kept = ?done.kept, "local edits kept");
            }
        }
        if !checkouts.is_empty() {
            remove_intent(&intent_file)?;
            self.step(MergeStep::WorktreesUpdated);
        }
        tracing::info!(from = %old, to = %new, "target moved");
        Ok(match relation {
            Relation::FastForward => MergeOutcome::FastForward {
                from: old.to_string(),
                to: new.to_string(),
            },
            _ => MergeOutcome::Merged {
                from: old.to_string(),
                commit: new.to_string(),
            },
        })
    }
}

fn describe_rev(rev: &str) -> String {
    if Oid::from_str(rev).is_ok() && rev.len() >= 7 {
        format!("commit {rev}")
    } else {
        format!("branch '{}'", short_branch(rev))
    }
}

/// The worktrees (main and linked) whose HEAD is the branch `refname`.
fn checked_out(repo: &Repository, refname: &str) -> Result<Vec<Repository>> {
    let mut out = Vec::new();
    let head_is = |r: &Repository| {
        r.find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(|t| t == refname))
            .unwrap_or(false)
    };
    // The main worktree (the repository itself, unless bare).
    let main_dir: PathBuf = repo.commondir().to_path_buf();
    if let Ok(main) = Repository::open(&main_dir)
        && !main.is_bare()
        && head_is(&main)
    {
        out.push(main);
    }
    if let Ok(names) = repo.worktrees() {
        for name in names.iter().filter_map(|n| n.ok().flatten()) {
            if let Ok(wt) = repo.find_worktree(name)
                && let Ok(r) = Repository::open_from_worktree(&wt)
                && head_is(&r)
            {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Fails with [`Error::DirtyCheckout`] when `wt` has uncommitted changes to tracked files.
fn ensure_clean(wt: &Repository, refname: &str) -> Result<()> {
    let mut so = git2::StatusOptions::new();
    so.include_untracked(false).include_ignored(false);
    let statuses = wt.statuses(Some(&mut so)).git("status")?;
    let changed: Vec<String> = statuses
        .iter()
        .filter(|s| s.status() != git2::Status::CURRENT)
        .filter_map(|s| s.path().ok().map(str::to_owned))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let mut list: Vec<String> = changed.iter().take(5).cloned().collect();
    if changed.len() > 5 {
        list.push(format!("and {} more", changed.len() - 5));
    }
    Err(Error::DirtyCheckout {
        branch: short_branch(refname).to_owned(),
        worktree: wt.workdir().map(Path::to_path_buf).unwrap_or_default(),
        changes: list.join(", "),
    })
}

fn branch_ref(target: &str) -> String {
    if target.starts_with("refs/heads/") {
        target.to_owned()
    } else {
        format!("refs/heads/{target}")
    }
}
