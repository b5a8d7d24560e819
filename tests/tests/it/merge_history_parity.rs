//! Parity with git on real histories: every merge of the two public projects in
//! `shared/fixtures` (click: 1,183 merges, 121 conflicting; requests: 1,612 merges, 52
//! conflicting) is replayed through maos and through `git merge-tree --write-tree` (git's
//! defaults, merge-ort): the clean/conflicting verdict and the conflicted paths must be the
//! same for every one. A missing fixture fails the test.
//!
//! The one rule maos does not follow is a naming rule: where a file meets a directory,
//! git moves the file aside as `PATH~BRANCH` (merge-ort's `unique_path`) and lists that
//! name; maos reports `PATH`. Names of that form are mapped back before comparing (see also
//! `merge_equivalence.rs`).

// Test fixtures: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Instant;

use maos_coordination::merge::ConflictDetector;
use maos_tests::merge_fixtures::{clone_history, git_merge_tree_stdin};

#[derive(Debug, Default)]
struct Count {
    merges: usize,
    agree: usize,
    conflicting: usize,
    conflicting_agree: usize,
    differences: Vec<String>,
}

fn replay(name: &str) -> Count {
    let start = Instant::now();
    let h = clone_history(name);
    let git = git_merge_tree_stdin(h.path(), &h.merges);
    let det = ConflictDetector::open(h.path()).unwrap();
    let mut c = Count::default();
    for ((ours, theirs), git) in h.merges.iter().zip(git) {
        c.merges += 1;
        // The target is "ours" (first parent), the source "theirs": git's roles.
        let check = det.check(theirs, ours).unwrap();
        let mine = check.conflicted_paths();
        let git = git.map(|paths| {
            paths
                .into_iter()
                .map(|p| {
                    [ours, theirs]
                        .iter()
                        .find_map(|b| p.strip_suffix(&format!("~{b}")).map(str::to_owned))
                        .unwrap_or(p)
                })
                .collect::<BTreeSet<String>>()
        });
        if git.is_some() {
            c.conflicting += 1;
        }
        let same = match &git {
            None => check.is_clean(),
            Some(g) => !check.is_clean() && *g == mine,
        };
        if same {
            c.agree += 1;
            c.conflicting_agree += usize::from(git.is_some());
        } else {
            c.differences.push(format!(
                "merge of {ours} and {theirs}: git {git:?}, maos {mine:?} ({:?})",
                check.conflicts
            ));
        }
    }
    eprintln!(
        "{name}: {} / {} merges agree, {} / {} conflicting merges agree ({:.1} s)",
        c.agree,
        c.merges,
        c.conflicting_agree,
        c.conflicting,
        start.elapsed().as_secs_f64()
    );
    c
}

fn assert_parity(name: &str, merges: usize, conflicting: usize) {
    let c = replay(name);
    assert!(
        c.differences.is_empty(),
        "{name}: {} of {} merges differ from git merge-tree:\n{}",
        c.differences.len(),
        c.merges,
        c.differences.join("\n")
    );
    // The fixture is the one the README describes: every merge was replayed.
    assert_eq!((c.merges, c.conflicting), (merges, conflicting), "{c:?}");
}

#[test]
fn every_merge_of_click_matches_git() {
    assert_parity("click", 1183, 121);
}

#[test]
fn every_merge_of_requests_matches_git() {
    assert_parity("requests", 1612, 52);
}
