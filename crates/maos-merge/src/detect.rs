//! Conflict prediction: an in-memory three-way merge with libgit2.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use git2::{Commit, Index, IndexConflict, IndexEntry, Oid, Repository};
use serde::{Deserialize, Serialize};

use crate::error::{Error, GitContext as _, Result};

const MODE_LINK: u32 = 0o120000;
const MODE_SUBMODULE: u32 = 0o160000;
const MODE_TREE: u32 = 0o040000;

/// What kind of conflict a path has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConflictKind {
    /// Both sides changed the same lines of a text file (regions list them).
    Content,
    /// Both sides changed a binary file differently (no line merge is possible).
    Binary,
    /// Both sides added a file at the same path with different contents.
    AddAdd,
    /// One side modified a file the other deleted.
    ModifyDelete,
    /// Both sides renamed the same file to different paths.
    RenameRename,
    /// One side renamed a file the other deleted.
    RenameDelete,
    /// Both sides changed the type or mode of a path differently (file vs symlink vs
    /// executable, or a submodule).
    Mode,
    /// One side has a file where the other has a directory.
    FileDirectory,
    /// Any other shape of conflict libgit2 reports.
    Other,
}

impl ConflictKind {
    /// A short human name: `content`, `add/add`, `modify/delete`, ...
    pub fn label(self) -> &'static str {
        match self {
            ConflictKind::Content => "content",
            ConflictKind::Binary => "binary",
            ConflictKind::AddAdd => "add/add",
            ConflictKind::ModifyDelete => "modify/delete",
            ConflictKind::RenameRename => "rename/rename",
            ConflictKind::RenameDelete => "rename/delete",
            ConflictKind::Mode => "mode",
            ConflictKind::FileDirectory => "file/directory",
            ConflictKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One side of a conflicted path: where the file is on that side and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictEntry {
    /// The path on this side.
    pub path: String,
    /// The blob id (hex).
    pub oid: String,
    /// The git file mode (`0o100644`, `0o100755`, `0o120000`, ...).
    pub mode: u32,
}

/// A range of lines of one version of a file, 1-based. `count == 0` is an empty range that
/// sits just after line `start - 1` (lines deleted on that side, or inserted on the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRange {
    /// First line (1-based).
    pub start: u32,
    /// Number of lines.
    pub count: u32,
}

impl LineRange {
    /// The last line of the range (equal to `start - 1` when empty).
    pub fn end(&self) -> u32 {
        (self.start + self.count).saturating_sub(1)
    }
}

impl std::fmt::Display for LineRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.count {
            0 => write!(f, "after line {}", self.start.saturating_sub(1)),
            1 => write!(f, "line {}", self.start),
            _ => write!(f, "lines {}-{}", self.start, self.end()),
        }
    }
}

/// One conflicting region of a content conflict, in the coordinates of each version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRegion {
    /// The lines of the merge base both sides changed.
    pub ancestor: LineRange,
    /// The lines of the target's version in the region.
    pub target: LineRange,
    /// The lines of the source's version in the region.
    pub source: LineRange,
}

/// One conflicted path (or group of paths, for renames) of a predicted merge.
///
/// The target is "ours" (the branch merged into), the source is "theirs".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The path the conflict is reported under: the source's path if it has one, else the
    /// target's, else the ancestor's.
    pub path: String,
    /// What kind of conflict.
    pub kind: ConflictKind,
    /// The merge base's version, if the path existed there.
    pub ancestor: Option<ConflictEntry>,
    /// The target's version, if it has one.
    pub target: Option<ConflictEntry>,
    /// The source's version, if it has one.
    pub source: Option<ConflictEntry>,
    /// For [`ConflictKind::Content`]: the conflicting line ranges.
    pub regions: Vec<ConflictRegion>,
    /// One line for humans.
    pub description: String,
}

impl Conflict {
    /// Every path this conflict leaves conflicted in the merged index (the set git reports
    /// with `git merge-tree --name-only`).
    pub fn paths(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let a = self.ancestor.as_ref().map(|a| a.path.as_str());
        let sides: Vec<&str> = [&self.target, &self.source]
            .into_iter()
            .flatten()
            .map(|e| e.path.as_str())
            .collect();
        let renamed: Vec<&str> = sides.iter().copied().filter(|p| Some(*p) != a).collect();
        if self.kind == ConflictKind::RenameRename && renamed.len() == 2 && renamed[0] != renamed[1]
        {
            // git leaves the original path and both destinations conflicted.
            out.extend(a.map(str::to_owned));
            out.extend(renamed.iter().map(|p| (*p).to_owned()));
        } else if a.is_some() && !renamed.is_empty() {
            // Renamed on one side: git reports the conflict at the new path only.
            out.extend(renamed.iter().map(|p| (*p).to_owned()));
        } else {
            out.extend(sides.iter().map(|p| (*p).to_owned()));
        }
        if out.is_empty() {
            out.extend(a.map(str::to_owned));
        }
        out
    }
}

/// How the source relates to the target in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The source is already contained in the target: nothing to merge.
    UpToDate,
    /// The target is an ancestor of the source: the target can simply move forward.
    FastForward,
    /// Both have commits the other lacks: a real three-way merge.
    Diverged,
    /// No common ancestor.
    Unrelated,
}

/// The predicted result of merging `source` into `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCheck {
    /// The source revision as given.
    pub source: String,
    /// The target revision as given.
    pub target: String,
    /// The source commit (hex).
    pub source_commit: String,
    /// The target commit (hex).
    pub target_commit: String,
    /// The merge base (hex), if any (the first one, for criss-cross histories).
    pub merge_base: Option<String>,
    /// How the two relate.
    pub relation: Relation,
    /// The conflicts, sorted by path. Empty when the merge is clean.
    pub conflicts: Vec<Conflict>,
}

impl MergeCheck {
    /// True when merging needs no human.
    pub fn is_clean(&self) -> bool {
        self.conflicts.is_empty()
    }

    /// Every conflicted path (as `git merge-tree --write-tree --name-only` lists them).
    pub fn conflicted_paths(&self) -> BTreeSet<String> {
        self.conflicts.iter().flat_map(Conflict::paths).collect()
    }
}

/// Options of the detector.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DetectOptions {
    /// Detect renames (default true, like git).
    pub find_renames: bool,
    /// Rename similarity threshold in percent (default 50, like git).
    pub rename_threshold: u32,
    /// Compute the line ranges of content conflicts (default true).
    pub line_ranges: bool,
}

impl Default for DetectOptions {
    fn default() -> Self {
        Self {
            find_renames: true,
            rename_threshold: 50,
            line_ranges: true,
        }
    }
}

/// Predicts merge conflicts with an in-memory three-way merge. Never touches an index or a
/// working tree; only reads objects (except [`ConflictDetector::snapshot_worktree`], which
/// writes unreferenced blob, tree and commit objects).
#[derive(Debug, Clone)]
pub struct ConflictDetector {
    repo_path: PathBuf,
    options: DetectOptions,
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
        })
    }

    /// Replaces the options.
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
        Repository::open(&self.repo_path).map_err(|source| Error::NoRepository {
            path: self.repo_path.clone(),
            source,
        })
    }

    /// Predicts merging `source` into `target` (any revisions).
    pub fn check(&self, source: &str, target: &str) -> Result<MergeCheck> {
        let span = tracing::debug_span!("merge_check", source, target);
        let _enter = span.enter();
        let repo = self.repository()?;
        check_in(&repo, &self.options, source, target)
    }

    /// The design's name: [`ConflictDetector::check`] off the async runtime, conflicts only.
    pub async fn detect_conflicts(&self, source: &str, target: &str) -> Result<Vec<Conflict>> {
        let this = self.clone();
        let (s, t) = (source.to_owned(), target.to_owned());
        tokio::task::spawn_blocking(move || this.check(&s, &t))
            .await
            .map_err(|e| Error::Join(e.to_string()))?
            .map(|c| c.conflicts)
    }

    /// Checks many branches at once: each against `target`, and every pair of them against
    /// each other (merging the later one into the earlier one).
    pub fn predict(&self, branches: &[String], target: &str) -> Result<Prediction> {
        let span = tracing::info_span!("merge_predict", branches = branches.len(), target);
        let _enter = span.enter();
        let repo = self.repository()?;
        let mut vs_target = Vec::new();
        for b in branches {
            vs_target.push(PairResult::from_check(check_in(
                &repo,
                &self.options,
                b,
                target,
            )?));
        }
        let mut pairwise = Vec::new();
        for (i, a) in branches.iter().enumerate() {
            for b in &branches[i + 1..] {
                pairwise.push(PairResult::from_check(check_in(
                    &repo,
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
        let span = tracing::debug_span!("snapshot_worktree", worktree = %worktree.display());
        let _enter = span.enter();
        let repo = Repository::open(worktree).map_err(|source| Error::NoRepository {
            path: worktree.to_path_buf(),
            source,
        })?;
        snapshot_in(&repo).map(|o| o.to_string())
    }
}

/// One pair of a [`Prediction`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairResult {
    /// The source revision.
    pub source: String,
    /// The target revision.
    pub target: String,
    /// How they relate.
    pub relation: Relation,
    /// The conflicted paths with their kinds.
    pub conflicts: Vec<(String, ConflictKind)>,
}

impl PairResult {
    fn from_check(c: MergeCheck) -> Self {
        Self {
            conflicts: c
                .conflicts
                .iter()
                .map(|x| (x.path.clone(), x.kind))
                .collect(),
            source: c.source,
            target: c.target,
            relation: c.relation,
        }
    }

    /// True when the pair merges without conflicts.
    pub fn is_clean(&self) -> bool {
        self.conflicts.is_empty()
    }
}

/// Which branches would conflict: with the target and with each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    /// The target every branch was checked against.
    pub target: String,
    /// Each branch merged into the target.
    pub vs_target: Vec<PairResult>,
    /// Each pair of branches (later merged into earlier).
    pub pairwise: Vec<PairResult>,
}

impl Prediction {
    /// True when no pair conflicts.
    pub fn is_clean(&self) -> bool {
        self.vs_target
            .iter()
            .chain(&self.pairwise)
            .all(PairResult::is_clean)
    }
}

pub(crate) fn resolve_commit<'r>(repo: &'r Repository, rev: &str) -> Result<Commit<'r>> {
    let err = |source| Error::UnknownRevision {
        rev: rev.to_owned(),
        source,
    };
    let obj = repo.revparse_single(rev).map_err(err)?;
    obj.peel_to_commit().map_err(err)
}

pub(crate) fn merge_options(options: &DetectOptions) -> git2::MergeOptions {
    let mut mo = git2::MergeOptions::new();
    mo.find_renames(options.find_renames)
        .rename_threshold(options.rename_threshold)
        .fail_on_conflict(false);
    mo
}

/// Relation and merge base of two commits.
pub(crate) fn relation_of(
    repo: &Repository,
    source: Oid,
    target: Oid,
) -> Result<(Relation, Option<Oid>)> {
    if source == target {
        return Ok((Relation::UpToDate, Some(source)));
    }
    let base = match repo.merge_base(source, target) {
        Ok(b) => b,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok((Relation::Unrelated, None)),
        Err(e) => {
            return Err(Error::Git {
                op: "merge-base",
                source: e,
            });
        }
    };
    let relation = if base == source {
        Relation::UpToDate
    } else if base == target {
        Relation::FastForward
    } else {
        Relation::Diverged
    };
    Ok((relation, Some(base)))
}

pub(crate) fn check_in(
    repo: &Repository,
    options: &DetectOptions,
    source: &str,
    target: &str,
) -> Result<MergeCheck> {
    let s = resolve_commit(repo, source)?;
    let t = resolve_commit(repo, target)?;
    let (relation, base) = relation_of(repo, s.id(), t.id())?;
    let conflicts = match relation {
        Relation::UpToDate | Relation::FastForward => Vec::new(),
        Relation::Diverged => {
            let index = repo
                .merge_commits(&t, &s, Some(&merge_options(options)))
                .git("merge")?;
            conflicts_of(repo, &index, options)?
        }
        Relation::Unrelated => {
            // No common history: what `git merge-tree --allow-unrelated-histories` does, a
            // merge against the empty tree (the well-known empty tree object is written).
            let empty = repo
                .find_tree(repo.treebuilder(None).git("tree")?.write().git("tree")?)
                .git("tree")?;
            let index = repo
                .merge_trees(
                    &empty,
                    &t.tree().git("read tree")?,
                    &s.tree().git("read tree")?,
                    Some(&merge_options(options)),
                )
                .git("merge")?;
            conflicts_of(repo, &index, options)?
        }
    };
    Ok(MergeCheck {
        source: source.to_owned(),
        target: target.to_owned(),
        source_commit: s.id().to_string(),
        target_commit: t.id().to_string(),
        merge_base: base.map(|b| b.to_string()),
        relation,
        conflicts,
    })
}

fn entry(e: &Option<IndexEntry>) -> Option<ConflictEntry> {
    e.as_ref().map(|e| ConflictEntry {
        path: String::from_utf8_lossy(&e.path).into_owned(),
        oid: e.id.to_string(),
        mode: e.mode,
    })
}

/// A conflict libgit2 reports but git resolves by itself: one side changed only the content,
/// the other only the mode or the path (libgit2 cannot merge a binary file's content and mode
/// separately, git can). Applied to the index before writing a merged tree.
#[derive(Debug, Clone)]
pub(crate) struct TrivialResolution {
    /// Conflicted paths to clear.
    pub(crate) remove: Vec<String>,
    /// The merged entry to stage.
    pub(crate) add: ConflictEntry,
}

/// The classified conflicts of a merged index.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    pub(crate) conflicts: Vec<Conflict>,
    pub(crate) resolved: Vec<TrivialResolution>,
}

type Triple = (
    Option<ConflictEntry>,
    Option<ConflictEntry>,
    Option<ConflictEntry>,
);

/// Turns the conflict entries of a merged index into classified conflicts.
pub(crate) fn conflicts_of(
    repo: &Repository,
    index: &Index,
    options: &DetectOptions,
) -> Result<Vec<Conflict>> {
    analyse(repo, index, options).map(|a| a.conflicts)
}

pub(crate) fn analyse(
    repo: &Repository,
    index: &Index,
    options: &DetectOptions,
) -> Result<Analysis> {
    // Every path of the merged index (all stages), to spot file/directory collisions.
    let all_paths: BTreeSet<String> = index
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    let is_dir = |p: &str| {
        let prefix = format!("{p}/");
        all_paths
            .range(prefix.clone()..)
            .next()
            .is_some_and(|x| x.starts_with(&prefix))
    };
    let raw: Vec<IndexConflict> = if index.has_conflicts() {
        index
            .conflicts()
            .git("read conflicts")?
            .collect::<std::result::Result<_, _>>()
            .git("read conflicts")?
    } else {
        Vec::new()
    };
    // Normalise libgit2's shapes to git's: one conflict per conflicted destination.
    let mut triples: Vec<Triple> = Vec::with_capacity(raw.len());
    let mut orphan_ancestors = Vec::new();
    let mut file_dir: Vec<Triple> = Vec::new();
    for c in &raw {
        let (a, t, s) = (entry(&c.ancestor), entry(&c.our), entry(&c.their));
        let unchanged = |x: &ConflictEntry, a: &ConflictEntry| {
            x.path == a.path && x.oid == a.oid && x.mode == a.mode
        };
        match (&a, &t, &s) {
            // The source path of a rename/rename(2-to-1) or rename/add, unchanged on one side
            // and renamed away on the other: git resolves it as a deletion.
            (Some(a), Some(x), None) | (Some(a), None, Some(x)) if unchanged(x, a) => {}
            // (ancestor, -, -): the origin of a rename/delete or rename/rename(1-to-2).
            (Some(_), None, None) => orphan_ancestors.push(a),
            (None, Some(x), None) | (None, None, Some(x)) if is_dir(&x.path) => {
                file_dir.push((a, t, s));
            }
            _ => triples.push((a, t, s)),
        }
    }
    let lonely = |x: &Triple, target_side: bool| {
        x.0.is_none()
            && if target_side {
                x.1.is_some() && x.2.is_none()
            } else {
                x.1.is_none() && x.2.is_some()
            }
    };
    let find = |triples: &[Triple], target_side: bool, oid: &str| {
        let entry_of = |x: &Triple| {
            if target_side {
                x.1.clone()
            } else {
                x.2.clone()
            }
        };
        triples
            .iter()
            .position(|x| lonely(x, target_side) && entry_of(x).is_some_and(|e| e.oid == oid))
            .or_else(|| triples.iter().position(|x| lonely(x, target_side)))
    };
    for a in orphan_ancestors.into_iter().flatten() {
        // rename/rename(1-to-2): (ancestor, -, -) + (-, target's, -) + (-, -, source's);
        // rename/delete: (ancestor, -, -) + one of them. Paired by blob first, else any.
        let ti = find(&triples, true, &a.oid);
        let si = find(&triples, false, &a.oid);
        match (ti, si) {
            (Some(ti), Some(si)) => {
                let s_entry = triples[si].2.take();
                triples[ti].0 = Some(a);
                triples[ti].2 = s_entry;
                triples.remove(si);
            }
            (Some(i), None) | (None, Some(i)) => triples[i].0 = Some(a),
            (None, None) => triples.push((Some(a), None, None)),
        }
    }
    // A rename on one side with a modification on the other whose content merge failed
    // arrives as (ancestor, -, modified) + (-, renamed, -): one content conflict at the
    // renamed path.
    let mut i = 0;
    while i < triples.len() {
        let shape = match &triples[i] {
            (Some(a), None, Some(s)) if a.path == s.path => Some(true),
            (Some(a), Some(t), None) if a.path == t.path => Some(false),
            _ => None,
        };
        if let Some(target_renamed) = shape
            && let Some(j) = triples.iter().position(|x| lonely(x, target_renamed))
        {
            let moved = triples.remove(j);
            let k = if j < i { i - 1 } else { i };
            if target_renamed {
                triples[k].1 = moved.1;
            } else {
                triples[k].2 = moved.2;
            }
            i = k;
        }
        i += 1;
    }
    // A pure rename onto a path the other side added (rename/add) arrives as a modify/delete
    // of the rename's source plus the add/add: git reports only the add/add.
    let renamed_onto_add = |x: &Triple, triples: &[Triple]| match x {
        (Some(a), Some(t), None) if t.path == a.path => triples.iter().any(
            |y| matches!(y, (None, Some(_), Some(s2)) if s2.oid == a.oid && s2.path != a.path),
        ),
        (Some(a), None, Some(s)) if s.path == a.path => triples.iter().any(
            |y| matches!(y, (None, Some(t2), Some(_)) if t2.oid == a.oid && t2.path != a.path),
        ),
        _ => false,
    };
    let snapshot = triples.clone();
    triples.retain(|x| !renamed_onto_add(x, &snapshot));
    let mut out = Analysis::default();
    for (a, t, s) in &triples {
        if let (Some(a), Some(t), Some(s)) = (a, t, s)
            && let Some(add) = trivial_merge(a, t, s)
        {
            let mut remove: Vec<String> =
                [&a.path, &t.path, &s.path].into_iter().cloned().collect();
            remove.dedup();
            out.resolved.push(TrivialResolution { remove, add });
            continue;
        }
    }
    triples.retain(|(a, t, s)| match (a, t, s) {
        (Some(a), Some(t), Some(s)) => trivial_merge(a, t, s).is_none(),
        _ => true,
    });
    triples.extend(file_dir);
    // A file on one side where the other has a directory that libgit2 left unreported.
    let reported: BTreeSet<String> = triples
        .iter()
        .flat_map(|(a, t, s)| [a, t, s])
        .flatten()
        .map(|e| e.path.clone())
        .collect();
    for e in index.iter() {
        let p = String::from_utf8_lossy(&e.path).into_owned();
        if e.flags & 0x3000 == 0 && is_dir(&p) && !reported.contains(&p) {
            triples.push((
                None,
                None,
                Some(ConflictEntry {
                    path: p,
                    oid: e.id.to_string(),
                    mode: e.mode,
                }),
            ));
        }
    }
    for (ancestor, target, source) in triples {
        let kind = classify(repo, &ancestor, &target, &source, &is_dir)?;
        let regions = if kind == ConflictKind::Content && options.line_ranges {
            match (&ancestor, &target, &source) {
                (Some(a), Some(t), Some(s)) => regions_of(repo, a, t, s)?,
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        // Report under the renamed path when one side renamed.
        fn renamed<'e>(
            e: &'e Option<ConflictEntry>,
            a: &Option<ConflictEntry>,
        ) -> Option<&'e ConflictEntry> {
            e.as_ref()
                .filter(|e| a.as_ref().is_some_and(|a| a.path != e.path))
        }
        let path = renamed(&source, &ancestor)
            .or(renamed(&target, &ancestor))
            .or(source.as_ref())
            .or(target.as_ref())
            .or(ancestor.as_ref())
            .map(|e| e.path.clone())
            .unwrap_or_default();
        let description = describe(kind, &ancestor, &target, &source, &regions);
        out.conflicts.push(Conflict {
            path,
            kind,
            ancestor,
            target,
            source,
            regions,
            description,
        });
    }
    out.conflicts.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The merged entry when each of content, mode and path changed on at most one side and the
/// file type did not change.
fn trivial_merge(a: &ConflictEntry, t: &ConflictEntry, s: &ConflictEntry) -> Option<ConflictEntry> {
    fn pick<T: PartialEq + Clone>(a: &T, t: &T, s: &T) -> Option<T> {
        if t == a {
            Some(s.clone())
        } else if s == a || s == t {
            Some(t.clone())
        } else {
            None
        }
    }
    if file_type(a.mode) != file_type(t.mode) || file_type(a.mode) != file_type(s.mode) {
        return None;
    }
    Some(ConflictEntry {
        oid: pick(&a.oid, &t.oid, &s.oid)?,
        mode: pick(&a.mode, &t.mode, &s.mode)?,
        path: pick(&a.path, &t.path, &s.path)?,
    })
}

fn is_binary(repo: &Repository, e: &ConflictEntry) -> Result<bool> {
    let oid = Oid::from_str(&e.oid).git("parse oid")?;
    let blob = repo.find_blob(oid).git("read blob")?;
    Ok(blob.is_binary())
}

fn file_type(mode: u32) -> u32 {
    mode & 0o170000
}

fn classify(
    repo: &Repository,
    a: &Option<ConflictEntry>,
    t: &Option<ConflictEntry>,
    s: &Option<ConflictEntry>,
    is_dir_elsewhere: &dyn Fn(&str) -> bool,
) -> Result<ConflictKind> {
    let kind = match (a, t, s) {
        (a, Some(t), Some(s)) => {
            let renamed_both = a
                .as_ref()
                .is_some_and(|a| a.path != t.path && a.path != s.path && t.path != s.path);
            let renamed_one = a
                .as_ref()
                .is_some_and(|a| a.path != t.path || a.path != s.path);
            if renamed_both {
                ConflictKind::RenameRename
            } else if renamed_one
                && (t.oid == s.oid || a.as_ref().is_some_and(|a| a.oid == t.oid || a.oid == s.oid))
            {
                // A rename on one side against a mode or rename change on the other.
                ConflictKind::RenameRename
            } else if [t.mode, s.mode]
                .iter()
                .any(|m| file_type(*m) == MODE_SUBMODULE)
                || file_type(t.mode) != file_type(s.mode)
                || file_type(t.mode) == MODE_LINK
            {
                ConflictKind::Mode
            } else if a.is_none() {
                ConflictKind::AddAdd
            } else if t.oid == s.oid {
                // Same content, different modes (e.g. both made executable differently).
                ConflictKind::Mode
            } else if is_binary(repo, t)? || is_binary(repo, s)? {
                ConflictKind::Binary
            } else {
                ConflictKind::Content
            }
        }
        (Some(a), Some(one), None) | (Some(a), None, Some(one)) => {
            if one.path != a.path {
                ConflictKind::RenameDelete
            } else if is_dir_elsewhere(&a.path) {
                ConflictKind::FileDirectory
            } else {
                ConflictKind::ModifyDelete
            }
        }
        (None, Some(one), None) | (None, None, Some(one)) => {
            if is_dir_elsewhere(&one.path) || file_type(one.mode) == MODE_TREE {
                ConflictKind::FileDirectory
            } else {
                ConflictKind::Other
            }
        }
        (Some(_), None, None) => ConflictKind::RenameRename,
        (None, None, None) => ConflictKind::Other,
    };
    Ok(kind)
}

fn describe(
    kind: ConflictKind,
    a: &Option<ConflictEntry>,
    t: &Option<ConflictEntry>,
    s: &Option<ConflictEntry>,
    regions: &[ConflictRegion],
) -> String {
    let p =
        |e: &Option<ConflictEntry>| e.as_ref().map_or("(absent)".to_owned(), |e| e.path.clone());
    match kind {
        ConflictKind::Content => {
            let r: Vec<String> = regions
                .iter()
                .map(|r| format!("target {} / source {}", r.target, r.source))
                .collect();
            format!(
                "both sides changed the same lines of {}: {}",
                p(s),
                if r.is_empty() {
                    "(ranges unknown)".to_owned()
                } else {
                    r.join("; ")
                }
            )
        }
        ConflictKind::Binary => format!("both sides changed binary file {}", p(s)),
        ConflictKind::AddAdd => format!("both sides added {} with different contents", p(s)),
        ConflictKind::ModifyDelete => match (t, s) {
            (None, _) => format!("target deleted {}, source modified it", p(a)),
            _ => format!("source deleted {}, target modified it", p(a)),
        },
        ConflictKind::RenameRename => format!(
            "{} renamed differently: target {}, source {}",
            p(a),
            p(t),
            p(s)
        ),
        ConflictKind::RenameDelete => match (t, s) {
            (Some(t), None) => format!("target renamed {} to {}, source deleted it", p(a), t.path),
            _ => format!("source renamed {} to {}, target deleted it", p(a), p(s)),
        },
        ConflictKind::Mode => format!("both sides changed the type or mode of {}", p(s)),
        ConflictKind::FileDirectory => format!(
            "{} is a file on one side and a directory on the other",
            if s.is_some() { p(s) } else { p(t) }
        ),
        ConflictKind::Other => format!(
            "conflict: ancestor {}, target {}, source {}",
            p(a),
            p(t),
            p(s)
        ),
    }
}

/// A changed block of a two-way diff: base lines `[i, i + n)` (0-based) became `new`.
#[derive(Debug, Clone, Copy)]
struct Hunk {
    base_start: u32,
    base_count: u32,
    new_start: u32,
    new_count: u32,
}

fn hunks(repo: &Repository, old: &ConflictEntry, new: &ConflictEntry) -> Result<Vec<Hunk>> {
    let ob = repo
        .find_blob(Oid::from_str(&old.oid).git("parse oid")?)
        .git("read blob")?;
    let nb = repo
        .find_blob(Oid::from_str(&new.oid).git("parse oid")?)
        .git("read blob")?;
    let mut opts = git2::DiffOptions::new();
    opts.context_lines(0).interhunk_lines(0);
    let patch = git2::Patch::from_blobs(&ob, None, &nb, None, Some(&mut opts)).git("diff blobs")?;
    let mut out = Vec::with_capacity(patch.num_hunks());
    for i in 0..patch.num_hunks() {
        let (h, _) = patch.hunk(i).git("diff hunk")?;
        // For a pure insertion git reports old_start = the line after which it goes.
        let base_start = if h.old_lines() == 0 {
            h.old_start()
        } else {
            h.old_start() - 1
        };
        let new_start = if h.new_lines() == 0 {
            h.new_start()
        } else {
            h.new_start() - 1
        };
        out.push(Hunk {
            base_start,
            base_count: h.old_lines(),
            new_start,
            new_count: h.new_lines(),
        });
    }
    Ok(out)
}

/// The conflicting regions: groups of target and source hunks whose base ranges overlap or
/// touch (xdiff's rule), except groups where both sides made the identical change.
fn regions_of(
    repo: &Repository,
    a: &ConflictEntry,
    t: &ConflictEntry,
    s: &ConflictEntry,
) -> Result<Vec<ConflictRegion>> {
    let th = hunks(repo, a, t)?;
    let sh = hunks(repo, a, s)?;
    // Sweep both hunk lists in base order, grouping hunks that overlap or touch.
    let mut all: Vec<(bool, Hunk)> = th
        .iter()
        .map(|h| (true, *h))
        .chain(sh.iter().map(|h| (false, *h)))
        .collect();
    all.sort_by_key(|(_, h)| (h.base_start, h.base_start + h.base_count));
    let mut groups: Vec<Vec<(bool, Hunk)>> = Vec::new();
    let mut group_end = 0u32;
    for (side, h) in all {
        let touches = groups.last().is_some() && h.base_start <= group_end;
        if touches {
            if let Some(g) = groups.last_mut() {
                g.push((side, h));
            }
        } else {
            groups.push(vec![(side, h)]);
        }
        group_end = if touches {
            group_end.max(h.base_start + h.base_count)
        } else {
            h.base_start + h.base_count
        };
    }
    let span = |hs: &[Hunk], base_lo: u32, base_hi: u32, new_of: &dyn Fn(u32) -> u32| {
        // The region in a side's coordinates: its hunks' new lines, widened to cover the base
        // lines of the group that this side left unchanged.
        let lo = hs.iter().map(|h| h.new_start).min();
        let hi = hs.iter().map(|h| h.new_start + h.new_count).max();
        match (lo, hi) {
            (Some(lo), Some(hi)) => {
                let lo = lo.min(new_of(base_lo));
                let hi = hi.max(new_of(base_hi));
                LineRange {
                    start: lo + 1,
                    count: hi.saturating_sub(lo),
                }
            }
            _ => LineRange {
                start: new_of(base_lo) + 1,
                count: new_of(base_hi).saturating_sub(new_of(base_lo)),
            },
        }
    };
    // Maps a base line offset to the side's offset, using the side's hunks before it.
    let shift = |hs: &[Hunk], base: u32| -> u32 {
        let mut delta: i64 = 0;
        for h in hs {
            if h.base_start + h.base_count <= base {
                delta += i64::from(h.new_count) - i64::from(h.base_count);
            }
        }
        u32::try_from(i64::from(base) + delta).unwrap_or(0)
    };
    let mut out = Vec::new();
    for g in groups {
        let tg: Vec<Hunk> = g.iter().filter(|(s, _)| *s).map(|(_, h)| *h).collect();
        let sg: Vec<Hunk> = g.iter().filter(|(s, _)| !*s).map(|(_, h)| *h).collect();
        if tg.is_empty() || sg.is_empty() {
            continue; // only one side changed here: merges cleanly
        }
        let base_lo = g.iter().map(|(_, h)| h.base_start).min().unwrap_or(0);
        let base_hi = g
            .iter()
            .map(|(_, h)| h.base_start + h.base_count)
            .max()
            .unwrap_or(0);
        let t_range = span(&tg, base_lo, base_hi, &|b| shift(&th, b));
        let s_range = span(&sg, base_lo, base_hi, &|b| shift(&sh, b));
        if tg.len() == sg.len()
            && tg
                .iter()
                .zip(&sg)
                .all(|(x, y)| x.base_start == y.base_start && x.base_count == y.base_count)
            && same_lines(repo, t, s, t_range, s_range)?
        {
            continue; // both sides made the same change
        }
        out.push(ConflictRegion {
            ancestor: LineRange {
                start: base_lo + 1,
                count: base_hi.saturating_sub(base_lo),
            },
            target: t_range,
            source: s_range,
        });
    }
    Ok(out)
}

fn same_lines(
    repo: &Repository,
    t: &ConflictEntry,
    s: &ConflictEntry,
    tr: LineRange,
    sr: LineRange,
) -> Result<bool> {
    if tr.count != sr.count {
        return Ok(false);
    }
    let lines = |e: &ConflictEntry, r: LineRange| -> Result<Vec<Vec<u8>>> {
        let b = repo
            .find_blob(Oid::from_str(&e.oid).git("parse oid")?)
            .git("read blob")?;
        Ok(b.content()
            .split(|c| *c == b'\n')
            .skip(r.start.saturating_sub(1) as usize)
            .take(r.count as usize)
            .map(<[u8]>::to_vec)
            .collect())
    };
    Ok(lines(t, tr)? == lines(s, sr)?)
}

fn snapshot_in(repo: &Repository) -> Result<Oid> {
    let head = repo
        .head()
        .git("read HEAD")?
        .peel_to_commit()
        .git("peel HEAD")?;
    let workdir = repo
        .workdir()
        .ok_or_else(|| Error::Git {
            op: "snapshot worktree",
            source: git2::Error::from_str("bare repository has no working tree"),
        })?
        .to_path_buf();
    let mut index = Index::new().git("new index")?;
    index
        .read_tree(&head.tree().git("read tree")?)
        .git("read tree")?;
    let mut so = git2::StatusOptions::new();
    so.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .renames_head_to_index(false);
    let statuses = repo.statuses(Some(&mut so)).git("status")?;
    let mut changed = 0usize;
    for st in statuses.iter() {
        // Bytes, not `path()`: a name that is not UTF-8 is a file like any other.
        let bytes = st.path_bytes();
        if bytes.starts_with(b".maos/") {
            continue;
        }
        let path = {
            use std::os::unix::ffi::OsStrExt as _;
            Path::new(std::ffi::OsStr::from_bytes(bytes))
        };
        let full = workdir.join(path);
        match std::fs::symlink_metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = index.remove_path(path);
                changed += 1;
            }
            Err(e) => {
                return Err(Error::Git {
                    op: "snapshot worktree",
                    source: git2::Error::from_str(&format!("{}: {e}", full.display())),
                });
            }
            Ok(meta) => {
                let (oid, mode) = if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&full).map_err(|e| Error::Git {
                        op: "snapshot worktree",
                        source: git2::Error::from_str(&format!("{}: {e}", full.display())),
                    })?;
                    let bytes = target.to_string_lossy().into_owned().into_bytes();
                    (repo.blob(&bytes).git("write blob")?, MODE_LINK)
                } else if meta.is_file() {
                    let oid = repo.blob_path(&full).git("write blob")?;
                    let exec = {
                        use std::os::unix::fs::PermissionsExt as _;
                        meta.permissions().mode() & 0o111 != 0
                    };
                    (oid, if exec { 0o100755 } else { 0o100644 })
                } else {
                    continue;
                };
                index
                    .add(&IndexEntry {
                        ctime: git2::IndexTime::new(0, 0),
                        mtime: git2::IndexTime::new(0, 0),
                        dev: 0,
                        ino: 0,
                        mode,
                        uid: 0,
                        gid: 0,
                        file_size: 0,
                        id: oid,
                        flags: u16::try_from(bytes.len().min(0xfff)).unwrap_or(0xfff),
                        flags_extended: 0,
                        path: bytes.to_vec(),
                    })
                    .git("stage snapshot entry")?;
                changed += 1;
            }
        }
    }
    if changed == 0 {
        return Ok(head.id());
    }
    let tree_id = index.write_tree_to(repo).git("write tree")?;
    let tree = repo.find_tree(tree_id).git("read tree")?;
    let sig = git2::Signature::now("maos", "maos@localhost").git("signature")?;
    repo.commit(
        None,
        &sig,
        &sig,
        "maos: snapshot of uncommitted changes",
        &tree,
        &[&head],
    )
    .git("write snapshot commit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, oid: &str, mode: u32) -> ConflictEntry {
        ConflictEntry {
            path: path.into(),
            oid: oid.into(),
            mode,
        }
    }

    #[test]
    fn line_ranges_display() {
        let cases = [
            (LineRange { start: 5, count: 0 }, "after line 4"),
            (LineRange { start: 5, count: 1 }, "line 5"),
            (LineRange { start: 5, count: 3 }, "lines 5-7"),
        ];
        for (r, text) in cases {
            assert_eq!(r.to_string(), text);
        }
    }

    #[test]
    fn trivial_merges_take_each_attribute_from_the_side_that_changed_it() {
        let a = e("f", "A", 0o100644);
        // content on one side, mode on the other: clean
        let m = trivial_merge(&a, &e("f", "B", 0o100644), &e("f", "A", 0o100755)).unwrap();
        assert_eq!((m.oid.as_str(), m.mode), ("B", 0o100755));
        // rename on one side, content on the other: clean, at the new path
        let m = trivial_merge(&a, &e("g", "A", 0o100644), &e("f", "C", 0o100644)).unwrap();
        assert_eq!((m.path.as_str(), m.oid.as_str()), ("g", "C"));
        // content on both sides: not trivial
        assert!(trivial_merge(&a, &e("f", "B", 0o100644), &e("f", "C", 0o100644)).is_none());
        // a type change (file -> symlink) is never trivial
        assert!(trivial_merge(&a, &e("f", "A", 0o120000), &e("f", "C", 0o100644)).is_none());
    }

    #[test]
    fn conflict_paths_follow_git() {
        let c = |kind,
                 a: Option<ConflictEntry>,
                 t: Option<ConflictEntry>,
                 s: Option<ConflictEntry>| Conflict {
            path: String::new(),
            kind,
            ancestor: a,
            target: t,
            source: s,
            regions: Vec::new(),
            description: String::new(),
        };
        let paths = |c: Conflict| c.paths().into_iter().collect::<Vec<_>>();
        let a = || Some(e("f", "A", 0o100644));
        assert_eq!(
            paths(c(
                ConflictKind::RenameRename,
                a(),
                Some(e("t", "A", 0o100644)),
                Some(e("s", "A", 0o100644))
            )),
            ["f", "s", "t"]
        );
        assert_eq!(
            paths(c(
                ConflictKind::RenameDelete,
                a(),
                None,
                Some(e("s", "A", 0o100644))
            )),
            ["s"]
        );
        assert_eq!(
            paths(c(
                ConflictKind::Content,
                a(),
                Some(e("t", "B", 0o100644)),
                Some(e("f", "C", 0o100644))
            )),
            ["t"]
        );
        assert_eq!(
            paths(c(
                ConflictKind::ModifyDelete,
                a(),
                Some(e("f", "B", 0o100644)),
                None
            )),
            ["f"]
        );
    }
}
