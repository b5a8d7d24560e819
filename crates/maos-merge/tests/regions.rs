//! Property: every content conflict libgit2 reports gets at least one conflicting region, and
//! every region lies inside the version of the file it describes.

// Test fixtures: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use git2::{Oid, Repository, Signature};
use maos_merge::{ConflictDetector, ConflictKind, LineRange};
use proptest::prelude::*;

fn commit(repo: &Repository, parent: Option<Oid>, text: &str) -> Oid {
    let sig = Signature::new("t", "t@x", &git2::Time::new(1_700_000_000, 0)).unwrap();
    let blob = repo.blob(text.as_bytes()).unwrap();
    let mut tb = repo.treebuilder(None).unwrap();
    tb.insert("f.txt", blob, 0o100644).unwrap();
    let tree = repo.find_tree(tb.write().unwrap()).unwrap();
    let parents: Vec<git2::Commit<'_>> = parent
        .iter()
        .map(|p| repo.find_commit(*p).unwrap())
        .collect();
    let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
    repo.commit(None, &sig, &sig, text, &tree, &refs).unwrap()
}

/// A file of `lines` lines drawn from a tiny alphabet (so edits collide and repeat).
fn file() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0u8..4, 0..12)
}

fn render(lines: &[u8]) -> String {
    lines.iter().map(|l| format!("l{l}\n")).collect()
}

fn inside(r: LineRange, len: usize) -> bool {
    r.start >= 1 && (r.end() as usize) <= len && (r.start as usize) <= len + 1
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn regions_are_present_and_in_bounds(base in file(), target in file(), source in file()) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let b = commit(&repo, None, &render(&base));
        let t = commit(&repo, Some(b), &render(&target));
        let s = commit(&repo, Some(b), &render(&source));
        let check = ConflictDetector::open(dir.path())
            .unwrap()
            .check(&s.to_string(), &t.to_string())
            .unwrap();
        for c in check.conflicts.iter().filter(|c| c.kind == ConflictKind::Content) {
            prop_assert!(!c.regions.is_empty(), "{c:#?}");
            for r in &c.regions {
                prop_assert!(inside(r.ancestor, base.len()), "{r:?} base {}", base.len());
                prop_assert!(inside(r.target, target.len()), "{r:?} target {}", target.len());
                prop_assert!(inside(r.source, source.len()), "{r:?} source {}", source.len());
            }
        }
    }
}
