//! One fixture per conflict kind, built with the real git; each compared with
//! `git merge-tree --write-tree --name-only`.

// Fixture helpers outside #[test] functions: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use maos_coordination::merge::{ConflictDetector, ConflictKind, LineRange, Relation};
use maos_tests::merge_fixtures::{Repo, diverged, git_conflicted_paths, numbered, numbered_with};

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| (*p).to_owned()).collect()
}

/// Checks `source` into `main`, asserts one conflict of `kind` on `paths`, same as git.
fn expect(r: &Repo, kind: ConflictKind, paths: &[&str]) -> maos_coordination::merge::MergeCheck {
    let det = ConflictDetector::open(r.path()).unwrap();
    let check = det.check("source", "main").unwrap();
    assert_eq!(check.relation, Relation::Diverged);
    assert_eq!(check.conflicts.len(), 1, "{check:#?}");
    assert_eq!(check.conflicts[0].kind, kind, "{check:#?}");
    assert_eq!(check.conflicted_paths(), set(paths), "{check:#?}");
    assert_eq!(git_conflicted_paths(r.path(), "main", "source"), set(paths));
    check
}

#[test]
fn content_conflict_has_line_ranges() {
    let r = diverged(
        |r| r.write("f.txt", numbered(20)),
        |r| r.write("f.txt", numbered_with(20, 5, "target five")),
        |r| r.write("f.txt", numbered_with(20, 5, "source five")),
    );
    let check = expect(&r, ConflictKind::Content, &["f.txt"]);
    let c = &check.conflicts[0];
    assert_eq!(c.regions.len(), 1, "{c:#?}");
    let reg = c.regions[0];
    assert_eq!(reg.ancestor, LineRange { start: 5, count: 1 });
    assert_eq!(reg.target, LineRange { start: 5, count: 1 });
    assert_eq!(reg.source, LineRange { start: 5, count: 1 });
    assert!(c.description.contains("line 5"), "{}", c.description);
}

#[test]
fn content_regions_are_in_each_sides_coordinates() {
    // The source inserts three lines at the top (clean) and changes line 10; the target
    // changes lines 10-11: the region is line 13 in the source, lines 10-11 in the target.
    let mut src = String::from("new a\nnew b\nnew c\n");
    src.push_str(&numbered_with(20, 10, "source ten"));
    let mut tgt = numbered_with(20, 10, "target ten");
    tgt = tgt.replace("line 11\n", "target eleven\n");
    let r = diverged(
        |r| r.write("f.txt", numbered(20)),
        |r| r.write("f.txt", &tgt),
        |r| r.write("f.txt", &src),
    );
    let check = expect(&r, ConflictKind::Content, &["f.txt"]);
    let reg = check.conflicts[0].regions[0];
    assert_eq!(
        reg.ancestor,
        LineRange {
            start: 10,
            count: 2
        },
        "{reg:?}"
    );
    assert_eq!(
        reg.target,
        LineRange {
            start: 10,
            count: 2
        },
        "{reg:?}"
    );
    assert_eq!(
        reg.source,
        LineRange {
            start: 13,
            count: 2
        },
        "{reg:?}"
    );
}

#[test]
fn both_sides_changing_a_file_is_not_a_conflict_by_itself() {
    // The seed design's defect: both changed f.txt, but in different places.
    let r = diverged(
        |r| r.write("f.txt", numbered(20)),
        |r| r.write("f.txt", numbered_with(20, 2, "target two")),
        |r| r.write("f.txt", numbered_with(20, 18, "source eighteen")),
    );
    let det = ConflictDetector::open(r.path()).unwrap();
    let check = det.check("source", "main").unwrap();
    assert!(check.is_clean(), "{check:#?}");
    assert!(git_conflicted_paths(r.path(), "main", "source").is_empty());
}

#[test]
fn binary_conflict() {
    let r = diverged(
        |r| r.write("img.bin", [0u8, 1, 2, 3, 0, 9]),
        |r| r.write("img.bin", [0u8, 1, 2, 4, 0, 9]),
        |r| r.write("img.bin", [0u8, 1, 2, 5, 0, 9]),
    );
    let check = expect(&r, ConflictKind::Binary, &["img.bin"]);
    assert!(check.conflicts[0].regions.is_empty());
}

#[test]
fn add_add_conflict() {
    let r = diverged(
        |_| {},
        |r| r.write("new.txt", "from target\n"),
        |r| r.write("new.txt", "from source\n"),
    );
    let check = expect(&r, ConflictKind::AddAdd, &["new.txt"]);
    assert!(check.conflicts[0].ancestor.is_none());
}

#[test]
fn modify_delete_conflict() {
    let r = diverged(
        |r| r.write("f.txt", numbered(5)),
        |r| r.write("f.txt", numbered_with(5, 1, "changed")),
        |r| {
            r.git(&["rm", "-q", "f.txt"]);
        },
    );
    let check = expect(&r, ConflictKind::ModifyDelete, &["f.txt"]);
    let c = &check.conflicts[0];
    assert!(c.target.is_some() && c.source.is_none(), "{c:#?}");
}

#[test]
fn rename_rename_conflict() {
    let r = diverged(
        |r| r.write("f.txt", numbered(10)),
        |r| {
            r.git(&["mv", "f.txt", "by-target.txt"]);
        },
        |r| {
            r.git(&["mv", "f.txt", "by-source.txt"]);
        },
    );
    let check = expect(
        &r,
        ConflictKind::RenameRename,
        &["by-source.txt", "by-target.txt", "f.txt"],
    );
    let c = &check.conflicts[0];
    assert_eq!(c.ancestor.as_ref().unwrap().path, "f.txt");
    assert_eq!(c.target.as_ref().unwrap().path, "by-target.txt");
    assert_eq!(c.source.as_ref().unwrap().path, "by-source.txt");
}

#[test]
fn rename_delete_conflict() {
    let r = diverged(
        |r| r.write("f.txt", numbered(10)),
        |r| {
            r.git(&["rm", "-q", "f.txt"]);
        },
        |r| {
            r.git(&["mv", "f.txt", "moved.txt"]);
        },
    );
    let check = expect(&r, ConflictKind::RenameDelete, &["moved.txt"]);
    assert_eq!(check.conflicts[0].ancestor.as_ref().unwrap().path, "f.txt");
}

#[test]
fn rename_with_edit_on_the_other_side_merges() {
    let r = diverged(
        |r| r.write("f.txt", numbered(20)),
        |r| r.write("f.txt", numbered_with(20, 3, "target three")),
        |r| {
            r.git(&["mv", "f.txt", "g.txt"]);
        },
    );
    let det = ConflictDetector::open(r.path()).unwrap();
    assert!(det.check("source", "main").unwrap().is_clean());
    assert!(git_conflicted_paths(r.path(), "main", "source").is_empty());
}

#[test]
fn type_conflict_file_versus_symlink() {
    let r = diverged(
        |r| r.write("f.txt", numbered(5)),
        |r| {
            r.git(&["rm", "-q", "f.txt"]);
            std::os::unix::fs::symlink("elsewhere", r.path().join("f.txt")).unwrap();
        },
        |r| r.write("f.txt", numbered_with(5, 2, "changed")),
    );
    let det = ConflictDetector::open(r.path()).unwrap();
    let check = det.check("source", "main").unwrap();
    assert_eq!(check.conflicts.len(), 1, "{check:#?}");
    assert_eq!(check.conflicts[0].kind, ConflictKind::Mode, "{check:#?}");
    // git moves one side aside (f.txt~HEAD-like names); both agree f.txt is conflicted.
    assert!(!git_conflicted_paths(r.path(), "main", "source").is_empty());
}

#[test]
fn file_directory_conflict() {
    let r = diverged(
        |r| r.write("f.txt", numbered(5)),
        |r| {
            r.git(&["rm", "-q", "f.txt"]);
            r.write("f.txt/inner.txt", "now a directory\n");
        },
        |r| r.write("f.txt", numbered_with(5, 2, "changed")),
    );
    expect(&r, ConflictKind::FileDirectory, &["f.txt"]);
}

#[test]
fn fast_forward_and_up_to_date() {
    let r = Repo::new();
    r.checkout("source", true);
    r.write("a.txt", "a\n");
    r.commit_all("a");
    let det = ConflictDetector::open(r.path()).unwrap();
    assert_eq!(
        det.check("source", "main").unwrap().relation,
        Relation::FastForward
    );
    assert_eq!(
        det.check("main", "source").unwrap().relation,
        Relation::UpToDate
    );
}

#[test]
fn uncommitted_worktree_changes_are_predicted() {
    // Branch `source` is clean against main, but its worktree has an uncommitted edit that
    // conflicts with main.
    let r = diverged(
        |r| r.write("f.txt", numbered(10)),
        |r| r.write("f.txt", numbered_with(10, 4, "target four")),
        |r| r.write("other.txt", "x\n"),
    );
    let wt = tempfile::tempdir().unwrap();
    let wt_path = wt.path().join("source-wt");
    r.git(&["worktree", "add", "-q", wt_path.to_str().unwrap(), "source"]);
    std::fs::write(
        wt_path.join("f.txt"),
        numbered_with(10, 4, "uncommitted four"),
    )
    .unwrap();
    let det = ConflictDetector::open(r.path()).unwrap();
    assert!(det.check("source", "main").unwrap().is_clean());
    let snap = det.snapshot_worktree(&wt_path).unwrap();
    let check = det.check(&snap, "main").unwrap();
    assert_eq!(check.conflicted_paths(), set(&["f.txt"]));
    // The worktree and its index are untouched.
    let status = maos_tests::git(&wt_path, &["status", "--porcelain"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout).trim(), "M f.txt");
}

#[test]
fn prediction_covers_every_pair() {
    let r = Repo::new();
    r.write("shared.txt", numbered(10));
    r.commit_all("base");
    for (b, text) in [("a1", "a"), ("a2", "b"), ("a3", "")] {
        r.checkout(b, true);
        if text.is_empty() {
            r.write("own.txt", "a3\n");
        } else {
            r.write("shared.txt", numbered_with(10, 3, text));
        }
        r.commit_all(b);
        r.checkout("main", false);
    }
    let det = ConflictDetector::open(r.path()).unwrap();
    let p = det
        .predict(&["a1".into(), "a2".into(), "a3".into()], "main")
        .unwrap();
    assert!(p.vs_target.iter().all(|x| x.is_clean()));
    assert_eq!(p.pairwise.len(), 3);
    let conflicting: Vec<(&str, &str)> = p
        .pairwise
        .iter()
        .filter(|x| !x.is_clean())
        .map(|x| (x.target.as_str(), x.source.as_str()))
        .collect();
    assert_eq!(conflicting, vec![("a1", "a2")]);
}

#[test]
fn index_and_worktree_are_never_touched() {
    let r = diverged(
        |r| r.write("f.txt", numbered(5)),
        |r| r.write("f.txt", numbered_with(5, 1, "t")),
        |r| r.write("f.txt", numbered_with(5, 1, "s")),
    );
    let before = std::fs::read(r.path().join(".git/index")).unwrap();
    let det = ConflictDetector::open(r.path()).unwrap();
    assert!(!det.check("source", "main").unwrap().is_clean());
    assert_eq!(std::fs::read(r.path().join(".git/index")).unwrap(), before);
    assert_eq!(r.git(&["status", "--porcelain"]), "");
}

#[test]
fn criss_cross_history_agrees_with_git() {
    // Two merge bases: a and b each merge the other's first commit, then both edit on.
    let r = Repo::new();
    r.write("f.txt", numbered(20));
    r.write("g.txt", numbered(20));
    r.commit_all("base");
    r.checkout("a", true);
    r.write("f.txt", numbered_with(20, 2, "a two"));
    r.commit_all("a1");
    r.checkout("main", false);
    r.checkout("b", true);
    r.write("f.txt", numbered_with(20, 18, "b eighteen"));
    r.commit_all("b1");
    let b1 = r.git(&["rev-parse", "HEAD"]);
    r.checkout("a", false);
    let a1 = r.git(&["rev-parse", "HEAD"]);
    r.git(&["merge", "-q", "--no-edit", &b1]);
    r.write("g.txt", numbered_with(20, 5, "a five"));
    r.commit_all("a2");
    r.checkout("b", false);
    r.git(&["merge", "-q", "--no-edit", &a1]);
    r.write("g.txt", numbered_with(20, 5, "b five"));
    r.commit_all("b2");
    let bases = r.git(&["merge-base", "--all", "a", "b"]);
    assert_eq!(bases.lines().count(), 2, "criss-cross: two merge bases");
    let det = ConflictDetector::open(r.path()).unwrap();
    let check = det.check("b", "a").unwrap();
    assert_eq!(
        check.conflicted_paths(),
        git_conflicted_paths(r.path(), "a", "b")
    );
    assert_eq!(check.conflicted_paths(), set(&["g.txt"]));
}

#[test]
fn rename_onto_an_added_path_is_one_add_add() {
    let r = diverged(
        |r| r.write("f.txt", numbered(10)),
        |r| {
            r.write("f.txt", numbered_with(10, 2, "target edit"));
            r.write("g.txt", "added by the target\n");
        },
        |r| {
            r.git(&["mv", "f.txt", "g.txt"]);
        },
    );
    expect(&r, ConflictKind::AddAdd, &["g.txt"]);
}

#[test]
fn unrelated_histories_are_checked_against_an_empty_base() {
    let r = Repo::new();
    r.git(&["checkout", "-q", "--orphan", "other"]);
    r.git(&["rm", "-rq", "--cached", "."]);
    r.write("README", "another readme\n");
    r.write("x.txt", "x\n");
    r.commit_all("unrelated root");
    r.checkout("main", false);
    let det = ConflictDetector::open(r.path()).unwrap();
    let check = det.check("other", "main").unwrap();
    assert_eq!(check.relation, Relation::Unrelated);
    assert_eq!(check.conflicts.len(), 1, "{check:#?}");
    assert_eq!(check.conflicts[0].kind, ConflictKind::AddAdd);
    let out = std::process::Command::new("git")
        .current_dir(r.path())
        .args([
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--allow-unrelated-histories",
            "main",
            "other",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let git: BTreeSet<String> = text
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(check.conflicted_paths(), git);
}

/// The documented differences from git (maos-merge's Limitations), each shown against git:
/// attributes are not read. A `merge=union` driver makes git merge cleanly where maos reports
/// the content conflict the default driver would; a `binary` attribute makes git refuse a
/// text merge maos performs cleanly.
#[test]
fn gitattributes_are_the_documented_difference_from_git() {
    // merge=union: both sides add a line at the same place.
    let r = diverged(
        |r| {
            r.write(".gitattributes", "*.log merge=union\n");
            r.write("changes.log", numbered(5));
        },
        |r| r.write("changes.log", numbered_with(5, 3, "main's entry")),
        |r| r.write("changes.log", numbered_with(5, 3, "source's entry")),
    );
    let det = ConflictDetector::open(r.path()).unwrap();
    let check = det.check("source", "main").unwrap();
    assert_eq!(git_conflicted_paths(r.path(), "main", "source"), set(&[]));
    assert_eq!(
        check.conflicted_paths(),
        set(&["changes.log"]),
        "{check:#?}"
    );
    assert_eq!(check.conflicts[0].kind, ConflictKind::Content);

    // binary: edits of different lines, which a text merge combines.
    let r = diverged(
        |r| {
            r.write(".gitattributes", "*.dat binary\n");
            r.write("table.dat", numbered(20));
        },
        |r| r.write("table.dat", numbered_with(20, 2, "main")),
        |r| r.write("table.dat", numbered_with(20, 18, "source")),
    );
    let det = ConflictDetector::open(r.path()).unwrap();
    let check = det.check("source", "main").unwrap();
    assert_eq!(
        git_conflicted_paths(r.path(), "main", "source"),
        set(&["table.dat"])
    );
    assert!(check.is_clean(), "{check:#?}");
}
