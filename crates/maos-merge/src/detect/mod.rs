//! Conflict prediction: an in-memory three-way merge modelled on git's merge-ort
//! (`ort/`), public result types (`types.rs`), line ranges of content conflicts
//! (`regions.rs`) and worktree snapshots (`snapshot.rs`).

mod ort;
mod regions;
mod snapshot;
mod types;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use git2::{Commit, Oid, Repository};

pub(crate) use ort::{Engine, EngineOptions, TreeMerge, write_tree};
pub use types::{
    Conflict, ConflictEntry, ConflictKind, ConflictRegion, DetectOptions, LineRange, MergeCheck,
    PairResult, Prediction, Relation,
};

use crate::error::{Error, Result};

/// Predicts merge conflicts with an in-memory three-way merge. Never touches an index or a
/// working tree and writes nothing (except [`ConflictDetector::snapshot_worktree`], which
/// writes unreferenced blob, tree and commit objects).
#[derive(Clone)]
pub struct ConflictDetector {
    repo_path: PathBuf,
    options: DetectOptions,
    /// The handle opened by discovery, handed to the first call that needs one (a CLI
    /// check opens the repository once, not twice).
    opened: Arc<Mutex<Option<Repository>>>,
}

impl std::fmt::Debug for ConflictDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConflictDetector")
            .field("repo_path", &self.repo_path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ConflictDetector {
    /// A detector for the repository at or above `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let repo = Repository::discover(path).map_err(|source| Error::NoRepository {
            path: path.to_path_buf(),
            source,
        })?;
        let repo_path = repo.path().to_path_buf();
        Ok(Self {
            repo_path,
            options: DetectOptions::default(),
            opened: Arc::new(Mutex::new(Some(repo))),
        })
    }

    /// Replaces the options.
    #[must_use = "with_options returns the changed detector"]
    pub fn with_options(mut self, options: DetectOptions) -> Self {
        self.options = options;
        self
    }

    /// The `.git` directory of the repository.
    pub fn repo_path(&self) -> &Path {
        &self.repo_path
    }

    /// Opens the repository (cheap; one handle per call keeps the detector `Send + Sync`).
    pub fn repository(&self) -> Result<Repository> {
        if let Some(repo) = self.opened.lock().ok().and_then(|mut r| r.take()) {
            return Ok(repo);
        }
        Repository::open(&self.repo_path).map_err(|source| Error::NoRepository {
            path: self.repo_path.clone(),
            source,
        })
    }

    /// Predicts merging `source` into `target` (any revisions).
    pub fn check(&self, source: &str, target: &str) -> Result<MergeCheck> {
        let _span = tracing::debug_span!("merge_check", source, target).entered();
        let repo = self.repository()?;
        let engine = Engine::new(&repo, engine_options(&self.options));
        check_with(&engine, &self.options, source, target)
    }

    /// The design's name: [`ConflictDetector::check`] off the async runtime, conflicts only.
    pub async fn detect_conflicts(&self, source: &str, target: &str) -> Result<Vec<Conflict>> {
        let this = self.clone();
        let (s, t) = (source.to_owned(), target.to_owned());
        crate::asyncify(move || this.check(&s, &t))
            .await
            .map(|c| c.conflicts)
    }

    /// Checks many branches at once: each against `target`, and every pair of them against
    /// each other (merging the later one into the earlier one). One engine serves every
    /// pair: each tree is read once, merge bases, similarity signatures and file merges
    /// are computed once and shared.
    pub fn predict(&self, branches: &[String], target: &str) -> Result<Prediction> {
        let _span =
            tracing::info_span!("merge_predict", branches = branches.len(), target).entered();
        let repo = self.repository()?;
        let engine = Engine::new(&repo, engine_options(&self.options));
        let p = self.predict_with(&engine, branches, target)?;
        tracing::debug!(stats = ?engine.stats(), "merge prediction done");
        Ok(p)
    }

    /// [`ConflictDetector::predict`] on a given engine (its caches shared by every pair).
    fn predict_with(
        &self,
        engine: &Engine<'_>,
        branches: &[String],
        target: &str,
    ) -> Result<Prediction> {
        let mut vs_target = Vec::with_capacity(branches.len());
        for b in branches {
            vs_target.push(PairResult::from_check(check_with(
                engine,
                &self.options,
                b,
                target,
            )?));
        }
        let mut pairwise = Vec::new();
        for (i, a) in branches.iter().enumerate() {
            for b in &branches[i + 1..] {
                pairwise.push(PairResult::from_check(check_with(
                    engine,
                    &self.options,
                    b,
                    a,
                )?));
            }
        }
        Ok(Prediction {
            target: target.to_owned(),
            vs_target,
            pairwise,
        })
    }

    /// Builds a commit (not referenced by any ref) holding the working tree of `worktree`:
    /// its `HEAD` plus every uncommitted change to tracked files and every untracked,
    /// non-ignored file. Returns the commit id (hex), usable as a revision in
    /// [`ConflictDetector::check`]. Writes blob, tree and commit objects to the object
    /// database (garbage-collected by git later), never the index or the files.
    pub fn snapshot_worktree(&self, worktree: &Path) -> Result<String> {
        let _span =
            tracing::debug_span!("snapshot_worktree", worktree = %worktree.display()).entered();
        let repo = Repository::open(worktree).map_err(|source| Error::NoRepository {
            path: worktree.to_path_buf(),
            source,
        })?;
        snapshot::snapshot_in(&repo).map(|o| o.to_string())
    }
}

pub(crate) fn engine_options(options: &DetectOptions) -> EngineOptions {
    EngineOptions {
        find_renames: options.find_renames,
        rename_threshold: options.rename_threshold,
    }
}

pub(crate) fn resolve_commit<'r>(repo: &'r Repository, rev: &str) -> Result<Commit<'r>> {
    let err = |source| Error::UnknownRevision {
        rev: rev.to_owned(),
        source,
    };
    // A full commit id needs no revision parsing.
    if rev.len() == 40
        && let Ok(oid) = Oid::from_str(rev)
        && let Ok(c) = repo.find_commit(oid)
    {
        return Ok(c);
    }
    let obj = repo.revparse_single(rev).map_err(err)?;
    obj.peel_to_commit().map_err(err)
}

/// A revision's commit id; a full commit id is read once, into the engine's cache.
pub(crate) fn resolve_oid(engine: &Engine<'_>, rev: &str) -> Result<Oid> {
    if rev.len() == 40
        && let Ok(oid) = Oid::from_str(rev)
        && engine.commit_tree(oid).is_ok()
    {
        return Ok(oid);
    }
    Ok(resolve_commit(engine.repo(), rev)?.id())
}

/// How two commits relate, and their merge base (the newest, when there are several).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct History {
    pub(crate) relation: Relation,
    pub(crate) merge_base: Option<Oid>,
}

pub(crate) fn history(engine: &Engine<'_>, source: Oid, target: Oid) -> Result<History> {
    if source == target {
        return Ok(History {
            relation: Relation::UpToDate,
            merge_base: Some(source),
        });
    }
    let bases = engine.merge_bases(source, target)?;
    let relation = if bases.is_empty() {
        Relation::Unrelated
    } else if bases.contains(&source) {
        Relation::UpToDate
    } else if bases.contains(&target) {
        Relation::FastForward
    } else {
        Relation::Diverged
    };
    Ok(History {
        relation,
        merge_base: bases.first().copied(),
    })
}

/// Merges commit `theirs` into `ours` in memory (git's roles: `ours` is the target).
pub(crate) fn merge_commits(engine: &Engine<'_>, ours: Oid, theirs: Oid) -> Result<TreeMerge> {
    let base = engine.base_tree(ours, theirs)?;
    let tree = |c: Oid| -> Result<ort::TreeRef> {
        let commit = engine.repo().find_commit(c).map_err(|source| Error::Git {
            op: "read commit",
            source,
        })?;
        Ok(ort::TreeRef::Real(commit.tree_id()))
    };
    engine.merge_trees(&base, &tree(ours)?, &tree(theirs)?, 0)
}

pub(crate) fn check_with(
    engine: &Engine<'_>,
    options: &DetectOptions,
    source: &str,
    target: &str,
) -> Result<MergeCheck> {
    let s = resolve_oid(engine, source)?;
    let t = resolve_oid(engine, target)?;
    let h = history(engine, s, t)?;
    let conflicts = match h.relation {
        Relation::UpToDate | Relation::FastForward => Vec::new(),
        // No common history: what `git merge-tree --allow-unrelated-histories` does, a
        // merge against the empty tree.
        Relation::Diverged | Relation::Unrelated => {
            let mut c = merge_commits(engine, t, s)?.conflicts;
            if !options.line_ranges {
                c.iter_mut().for_each(|c| c.regions.clear());
            }
            c
        }
    };
    Ok(MergeCheck {
        source: source.to_owned(),
        target: target.to_owned(),
        source_commit: s.to_string(),
        target_commit: t.to_string(),
        merge_base: h.merge_base.map(|b| b.to_string()),
        relation: h.relation,
        conflicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `merge check --all` shares its work: one engine reads each tree and blob once and
    /// computes each pair's merge bases once, so a second prediction on it reads nothing, and
    /// the whole prediction costs less than the same pairs on engines of their own.
    #[test]
    fn a_prediction_reads_each_object_once_and_shares_merge_bases() {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path();
        git(repo_dir, &["init", "-q", "-b", "main"]);
        for i in 0..20 {
            std::fs::create_dir_all(repo_dir.join(format!("d{i}"))).unwrap();
            std::fs::write(repo_dir.join(format!("d{i}/f.txt")), format!("{i}\n")).unwrap();
        }
        std::fs::write(repo_dir.join("shared.txt"), "a\nb\nc\n").unwrap();
        git(repo_dir, &["add", "."]);
        git(repo_dir, &["commit", "-qm", "base"]);
        let branches: Vec<String> = (0..4).map(|i| format!("b{i}")).collect();
        for (i, b) in branches.iter().enumerate() {
            git(repo_dir, &["checkout", "-q", "-b", b, "main"]);
            std::fs::write(
                repo_dir.join(format!("d{i}/f.txt")),
                format!("changed {i}\n"),
            )
            .unwrap();
            std::fs::write(repo_dir.join("shared.txt"), format!("a\n{b}\nc\n")).unwrap();
            git(repo_dir, &["commit", "-qam", b]);
        }
        git(repo_dir, &["checkout", "-q", "main"]);
        std::fs::write(repo_dir.join("d19/f.txt"), "main moved\n").unwrap();
        git(repo_dir, &["commit", "-qam", "main"]);

        let det = ConflictDetector::open(repo_dir).unwrap();
        let repo = det.repository().unwrap();
        let shared = Engine::new(&repo, engine_options(&det.options));
        let p = det.predict_with(&shared, &branches, "main").unwrap();
        assert_eq!(p.vs_target.len(), 4);
        assert_eq!(p.pairwise.len(), 6);
        assert!(
            p.pairwise.iter().all(|r| !r.is_clean()),
            "shared.txt conflicts pairwise"
        );
        let once = shared.stats();
        // 4 branches against main and 6 pairs: at most one merge-base walk per pair.
        assert!(once.bases_computed <= 10, "{once:?}");
        det.predict_with(&shared, &branches, "main").unwrap();
        assert_eq!(
            shared.stats(),
            once,
            "a second prediction is served from the caches"
        );

        // The same ten merges, each on an engine of its own, read more.
        let mut alone = ort::EngineStats::default();
        let mut run = |src: &str, dst: &str| {
            let e = Engine::new(&repo, engine_options(&det.options));
            check_with(&e, &det.options, src, dst).unwrap();
            let s = e.stats();
            alone.trees_read += s.trees_read;
            alone.blobs_read += s.blobs_read;
            alone.bases_computed += s.bases_computed;
        };
        for (i, a) in branches.iter().enumerate() {
            run(a, "main");
            for b in &branches[i + 1..] {
                run(b, a);
            }
        }
        assert!(alone.trees_read > once.trees_read, "{alone:?} vs {once:?}");
        assert!(alone.blobs_read > once.blobs_read, "{alone:?} vs {once:?}");
    }
}
