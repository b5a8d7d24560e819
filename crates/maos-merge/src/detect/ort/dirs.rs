//! Directory renames (merge-ort, `merge.directoryRenames=conflict`): a directory that one
//! side removed while renaming its files into another directory counts as renamed there
//! (the destination most of its renamed files went to; no majority, no rename); a file the
//! other side added inside it moves to the new directory and is reported as a conflict
//! (`CONFLICT (file location)`).
//!
//! Which deleted files matter for this (merge-ort's `RELEVANT_LOCATION`): those under a
//! directory removed on their side whose other side added a file directly inside it.

use std::collections::{BTreeMap, BTreeSet};

use super::Flat;
use super::rename::{Rename, dirname};

/// A path that moves because the other side renamed its directory.
#[derive(Debug, Clone)]
pub(crate) struct Move {
    /// The side that added (or renamed) the path.
    pub(crate) side: usize,
    pub(crate) from: Vec<u8>,
    pub(crate) to: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relevance {
    NotRelevant,
    ForAncestor,
    ForSelf,
}

/// Which directories each side removed, and where directory renames matter.
#[derive(Debug, Default)]
pub(crate) struct DirInfo {
    /// Per side (1, 2): directories of the base that side no longer has but the other has.
    removed: [BTreeSet<Vec<u8>>; 3],
    /// Per side: removed directories in which the other side added a file directly.
    needs: [BTreeSet<Vec<u8>>; 3],
}

fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut d = path;
    std::iter::from_fn(move || {
        let i = d.iter().rposition(|c| *c == b'/')?;
        d = &d[..i];
        Some(d)
    })
}

fn dirs_of(map: &Flat) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    for (p, e) in map {
        if super::file_type(e.mode) == super::MODE_TREE {
            out.insert(p.clone());
        }
        for a in ancestors(p) {
            if out.contains(a) {
                break;
            }
            out.insert(a.to_vec());
        }
    }
    out
}

impl DirInfo {
    pub(crate) fn new(maps: &[Flat; 3], same: &Flat) -> Self {
        let mut dirs = [dirs_of(&maps[0]), dirs_of(&maps[1]), dirs_of(&maps[2])];
        let shared = dirs_of(same);
        for d in &mut dirs {
            d.extend(shared.iter().cloned());
        }
        let mut info = DirInfo::default();
        for side in [1usize, 2] {
            let other = 3 - side;
            info.removed[side] = dirs[0]
                .iter()
                .filter(|d| !dirs[side].contains(*d) && dirs[other].contains(*d))
                .cloned()
                .collect();
            for (p, _) in maps[other]
                .iter()
                .filter(|(p, _)| !maps[0].contains_key(*p))
            {
                let d = dirname(p);
                if info.removed[side].contains(d) {
                    info.needs[side].insert(d.to_vec());
                }
            }
        }
        info
    }

    fn relevance(&self, side: usize, dir: &[u8]) -> Relevance {
        if self.needs[side].contains(dir) {
            Relevance::ForSelf
        } else if self.removed[side].contains(dir)
            && ancestors_of_dir(dir).any(|a| self.needs[side].contains(a))
        {
            Relevance::ForAncestor
        } else {
            Relevance::NotRelevant
        }
    }

    /// Whether where the deleted `path` went matters for directory renames on `side`.
    pub(crate) fn location_relevant(&self, side: usize, path: &[u8]) -> bool {
        !self.needs[side].is_empty() && ancestors(path).any(|d| self.needs[side].contains(d))
    }

    /// The moves that the directory renames of each side cause on the other side.
    pub(crate) fn apply(
        &self,
        renames: &[Vec<Rename>; 3],
        maps: &[Flat; 3],
        same: &Flat,
    ) -> Vec<Move> {
        let mut dir_renames: [BTreeMap<Vec<u8>, Vec<u8>>; 3] = Default::default();
        for side in [1usize, 2] {
            if self.needs[side].is_empty() {
                continue;
            }
            let mut counts: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, u32>> = BTreeMap::new();
            for r in &renames[side] {
                let (mut old_dir, mut new_dir) = (dirname(&r.src), dirname(&r.dst));
                let mut first = true;
                loop {
                    let flag = self.relevance(side, old_dir);
                    if flag == Relevance::ForSelf || first {
                        *counts
                            .entry(old_dir.to_vec())
                            .or_default()
                            .entry(new_dir.to_vec())
                            .or_default() += 1;
                    }
                    first = false;
                    if flag == Relevance::NotRelevant || old_dir.is_empty() || new_dir.is_empty() {
                        break;
                    }
                    let (op, ol) = split_last(old_dir);
                    let (np, nl) = split_last(new_dir);
                    if ol != nl {
                        break;
                    }
                    old_dir = op;
                    new_dir = np;
                }
            }
            for (old, news) in counts {
                if !self.removed[side].contains(&old)
                    || self.relevance(side, &old) == Relevance::NotRelevant
                {
                    continue;
                }
                let max = news.values().copied().max().unwrap_or(0);
                let mut best = news.iter().filter(|(_, n)| **n == max);
                if let (Some((new, _)), None) = (best.next(), best.next()) {
                    dir_renames[side].insert(old, new.clone());
                }
            }
        }
        // A directory renamed on both sides is renamed on neither.
        let both: Vec<Vec<u8>> = dir_renames[1]
            .keys()
            .filter(|k| dir_renames[2].contains_key(*k))
            .cloned()
            .collect();
        for k in both {
            dir_renames[1].remove(&k);
            dir_renames[2].remove(&k);
        }
        let mut moves = Vec::new();
        for side in [1usize, 2] {
            let other = 3 - side;
            if dir_renames[other].is_empty() {
                continue;
            }
            for p in maps[side].keys().filter(|p| !maps[0].contains_key(*p)) {
                let Some((dir, new_dir)) =
                    ancestors(p).find_map(|d| dir_renames[other].get(d).map(|n| (d, n)))
                else {
                    continue;
                };
                if dir_renames[side].contains_key(new_dir.as_slice()) {
                    continue; // the side itself renamed the destination away
                }
                let mut to = new_dir.clone();
                let rest = &p[dir.len()..];
                if to.is_empty() {
                    to.extend_from_slice(rest.strip_prefix(b"/").unwrap_or(rest));
                } else {
                    to.extend_from_slice(rest);
                }
                moves.push(Move {
                    side,
                    from: p.clone(),
                    to,
                });
            }
        }
        // Paths that would collide, or land on an existing path, stay where they are
        // (git's "implicit dir rename" conflict).
        let mut count: BTreeMap<&[u8], usize> = BTreeMap::new();
        for m in &moves {
            *count.entry(&m.to).or_default() += 1;
        }
        let taken = |p: &[u8]| same.contains_key(p) || maps.iter().any(|m| m.contains_key(p));
        let keep: Vec<bool> = moves
            .iter()
            .map(|m| count[m.to.as_slice()] == 1 && !taken(&m.to))
            .collect();
        moves
            .into_iter()
            .zip(keep)
            .filter_map(|(m, k)| k.then_some(m))
            .collect()
    }
}

fn ancestors_of_dir(dir: &[u8]) -> impl Iterator<Item = &[u8]> {
    ancestors(dir).chain((!dir.is_empty()).then_some(&b""[..]))
}

fn split_last(dir: &[u8]) -> (&[u8], &[u8]) {
    match dir.iter().rposition(|c| *c == b'/') {
        Some(i) => (&dir[..i], &dir[i + 1..]),
        None => (&b""[..], dir),
    }
}
