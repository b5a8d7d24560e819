//! The detector's conflicted paths against `git merge-tree --write-tree --name-only` on
//! generated branch pairs (edits, renames, deletes, additions, mode changes, file/directory
//! swaps, binary files), built in one repository with one `git fast-import`.
//!
//! The one documented difference (see the `# Limitations` of maos-merge) is a name: where
//! a file meets a directory, git moves the file aside and lists it as `PATH~BRANCH`
//! (merge-ort's `unique_path`); maos reports `PATH`. Normalised before comparing (same
//! conflict, different name), and counted. Directory renames, rename collisions and
//! identical adds with different modes follow git (they were libgit2 differences).

// Fixture helpers outside #[test] functions: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use maos_coordination::merge::ConflictDetector;
use maos_tests::merge_fixtures::{generate_pairs, git_merge_tree};

#[derive(Debug, Default)]
struct Tally {
    pairs: usize,
    conflicted_pairs: usize,
    kinds: BTreeMap<String, usize>,
    file_directory_renamed: usize,
    undocumented: Vec<String>,
}

fn compare(seed: u64, n: usize) -> Tally {
    let pairs = generate_pairs(seed, n);
    let det = ConflictDetector::open(pairs.path()).unwrap();
    let mut t = Tally {
        pairs: n,
        ..Tally::default()
    };
    for i in 0..pairs.count {
        let (ours, theirs) = pairs.pair(i);
        let git = git_merge_tree(&pairs.path(), &ours, &theirs);
        // The target is "ours", the source "theirs": the same roles as in git merge-tree.
        let check = det.check(&theirs, &ours).unwrap();
        for c in &check.conflicts {
            *t.kinds.entry(c.kind.to_string()).or_default() += 1;
        }
        if !git.paths.is_empty() {
            t.conflicted_pairs += 1;
        }
        let mut git_paths = BTreeSet::new();
        for p in &git.paths {
            let aside = [&ours, &theirs]
                .iter()
                .find_map(|b| p.strip_suffix(&format!("~{}", b.replace('/', "_"))));
            match aside {
                Some(orig) => {
                    t.file_directory_renamed += 1;
                    git_paths.insert(orig.to_owned());
                }
                None => {
                    git_paths.insert(p.clone());
                }
            }
        }
        let mine = check.conflicted_paths();
        let only_git: Vec<&String> = git_paths.difference(&mine).collect();
        let only_mine: Vec<&String> = mine.difference(&git_paths).collect();
        for p in &only_git {
            t.undocumented.push(format!("pair {i}: only git: {p}"));
        }
        for p in &only_mine {
            t.undocumented.push(format!("pair {i}: only maos: {p}"));
        }
        if git.paths.is_empty() != check.is_clean() {
            t.undocumented.push(format!(
                "pair {i}: verdicts differ (git clean: {})",
                git.paths.is_empty()
            ));
        }
        if !only_git.is_empty() || !only_mine.is_empty() {
            t.undocumented.push(format!(
                "  pair {i} git says {:?}\n  maos {:#?}",
                git.messages, check.conflicts
            ));
        }
    }
    t
}

#[test]
fn conflicted_paths_match_git_merge_tree() {
    let n = if maos_tests::slow_tests() { 2000 } else { 240 };
    let t = compare(0x6d61_6f73, n);
    eprintln!("{t:#?}");
    let undocumented: Vec<&String> = t
        .undocumented
        .iter()
        .filter(|l| l.starts_with("pair"))
        .collect();
    assert!(
        undocumented.is_empty(),
        "undocumented differences:\n{}",
        t.undocumented.join("\n")
    );
    // The generator must really exercise the detector.
    assert_eq!(t.pairs, n);
    assert!(t.conflicted_pairs >= 40, "{t:?}");
    for kind in [
        "content",
        "binary",
        "add/add",
        "modify/delete",
        "rename/delete",
        "rename/rename",
        "file/directory",
        "file location",
    ] {
        assert!(
            t.kinds.contains_key(kind),
            "no {kind} conflict generated: {t:?}"
        );
    }
    // The naming difference really occurs (and is the only one).
    assert!(t.file_directory_renamed > 0, "{t:?}");
}
