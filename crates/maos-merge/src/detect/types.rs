//! The public result types of a conflict check.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub(crate) const MODE_LINK: u32 = 0o120000;
pub(crate) const MODE_SUBMODULE: u32 = 0o160000;
pub(crate) const MODE_TREE: u32 = 0o040000;

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
    /// One side added (or renamed) a file into a directory the other side renamed: git
    /// moves it along with the directory and asks for confirmation (`CONFLICT (file
    /// location)`).
    FileLocation,
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
            ConflictKind::FileLocation => "file location",
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

/// One pair of a [`Prediction`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairResult {
    /// The source revision.
    pub source: String,
    /// The target revision.
    pub target: String,
    /// How they relate.
    pub relation: Relation,
    /// The conflicts, the same objects as [`MergeCheck::conflicts`].
    pub conflicts: Vec<Conflict>,
}

impl PairResult {
    pub(crate) fn from_check(c: MergeCheck) -> Self {
        Self {
            conflicts: c.conflicts,
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

pub(crate) fn describe(
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
        ConflictKind::FileLocation => format!(
            "{} was added in a directory the other side renamed; git moves it to {}",
            if a.is_some() {
                p(a)
            } else {
                "a file".to_owned()
            },
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
