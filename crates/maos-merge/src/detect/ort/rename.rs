//! Rename detection between the merge base and one side, as git's `diffcore-rename.c` does
//! it for merge-ort: exact renames first (same blob; an unused source with the same
//! basename preferred), then files whose basename is unique among the remaining sources and
//! destinations (at a higher similarity bar: halfway between the threshold and 100%), then
//! the similarity matrix over what is left, best pairs first (four candidates kept per
//! destination). Empty files are never paired. Sources the merge does not need (unchanged
//! on the other side, outside directories whose rename matters) take part in exact matching
//! only, as in merge-ort.

use std::collections::HashMap;

use git2::Oid;

use super::similarity::{MAX_SCORE, Signature, score, sizes_may_match};
use super::{Engine, Ent, is_regular};
use crate::error::Result;

/// The candidates kept per destination (`NUM_CANDIDATE_PER_DST`).
const CANDIDATES_PER_DST: usize = 4;
/// git's `merge.renameLimit` default: above limit² source x destination pairs the
/// similarity matrix is skipped.
pub(crate) const RENAME_LIMIT: usize = 7000;
/// The empty blob: never a rename source or destination (`rename_empty = 0` in merge-ort).
const EMPTY_BLOB: &str = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391";

/// A path deleted on the side (a possible rename source).
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) path: Vec<u8>,
    pub(crate) ent: Ent,
    /// The merge needs to know where it went (merge-ort's `relevant_sources`).
    pub(crate) relevant: bool,
}

/// A path added on the side (a possible rename destination).
#[derive(Debug, Clone)]
pub(crate) struct Dest {
    pub(crate) path: Vec<u8>,
    pub(crate) ent: Ent,
}

/// One detected rename.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rename {
    pub(crate) src: Vec<u8>,
    pub(crate) dst: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    dst: usize,
    src: usize,
    score: u64,
    name_score: u8,
}

/// `score_compare`: better first; unused slots last.
fn worse(a: &Option<Candidate>, b: &Option<Candidate>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (None, None) => Equal,
        (None, Some(_)) => Greater,
        (Some(_), None) => Less,
        (Some(a), Some(b)) => b
            .score
            .cmp(&a.score)
            .then_with(|| b.name_score.cmp(&a.name_score)),
    }
}

pub(crate) fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|c| *c == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

pub(crate) fn dirname(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|c| *c == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

impl Engine<'_> {
    /// Detects the renames among `sources` and `dests` (both in path order).
    pub(crate) fn detect_renames(
        &self,
        sources: &[Source],
        dests: &[Dest],
        threshold_percent: u32,
    ) -> Result<Vec<Rename>> {
        let empty = Oid::from_str(EMPTY_BLOB).ok();
        let sources: Vec<&Source> = sources
            .iter()
            .filter(|s| Some(s.ent.oid) != empty)
            .collect();
        let dests: Vec<&Dest> = dests.iter().filter(|d| Some(d.ent.oid) != empty).collect();
        if sources.is_empty() || dests.is_empty() {
            return Ok(Vec::new());
        }
        let mut out: Vec<(usize, usize)> = Vec::new();
        let mut src_used = vec![false; sources.len()];
        let mut dst_done = vec![false; dests.len()];
        fn record(
            out: &mut Vec<(usize, usize)>,
            (s, d): (usize, usize),
            src_used: &mut [bool],
            dst_done: &mut [bool],
        ) {
            src_used[s] = true;
            dst_done[d] = true;
            out.push((s, d));
        }

        // 1. Exact renames.
        let mut by_oid: HashMap<Oid, Vec<usize>> = HashMap::new();
        for (i, s) in sources.iter().enumerate() {
            by_oid.entry(s.ent.oid).or_default().push(i);
        }
        for (d, dst) in dests.iter().enumerate() {
            let Some(cands) = by_oid.get(&dst.ent.oid) else {
                continue;
            };
            let mut best: Option<(usize, u8)> = None;
            let mut budget = 100;
            for &s in cands {
                let src = sources[s];
                if (!is_regular(src.ent.mode) || !is_regular(dst.ent.mode))
                    && src.ent.mode != dst.ent.mode
                {
                    continue;
                }
                if src_used[s] {
                    continue;
                }
                let score = 1 + u8::from(basename(&src.path) == basename(&dst.path));
                if best.is_none_or(|(_, b)| score > b) {
                    best = Some((s, score));
                    if score == 2 {
                        break;
                    }
                }
                budget -= 1;
                if budget == 0 {
                    break;
                }
            }
            if let Some((s, _)) = best {
                record(&mut out, (s, d), &mut src_used, &mut dst_done);
            }
        }
        let minimum = u64::from(threshold_percent.min(100)) * MAX_SCORE / 100;
        if minimum >= MAX_SCORE {
            return Ok(self.named(&sources, &dests, out));
        }

        // 2. Unique basenames (sources: every one left; only relevant ones are tried).
        let min_basename = minimum + (MAX_SCORE - minimum) / 2;
        let mut src_base: HashMap<&[u8], Option<usize>> = HashMap::new();
        for (i, s) in sources.iter().enumerate() {
            if src_used[i] {
                continue;
            }
            src_base
                .entry(basename(&s.path))
                .and_modify(|v| *v = None)
                .or_insert(Some(i));
        }
        let mut dst_base: HashMap<&[u8], Option<usize>> = HashMap::new();
        let mut dst_index: HashMap<&[u8], usize> = HashMap::new();
        for (i, d) in dests.iter().enumerate() {
            if dst_done[i] {
                continue;
            }
            dst_index.insert(&d.path, i);
            dst_base
                .entry(basename(&d.path))
                .and_modify(|v| *v = None)
                .or_insert(Some(i));
        }
        // Where the exact renames moved each directory (`dir_rename_guess`), for basenames
        // that are not unique.
        let guess = self.dir_rename_guess(&sources, &dests, &out);
        for i in 0..sources.len() {
            if src_used[i] || !sources[i].relevant {
                continue;
            }
            let base = basename(&sources[i].path);
            let Some(unique_dst) = dst_base.get(base) else {
                continue;
            };
            let unique_src = src_base.get(base).copied().flatten() == Some(i);
            let d = match (unique_src, unique_dst) {
                (true, Some(d)) => Some(*d),
                _ => guess.get(dirname(&sources[i].path)).and_then(|new_dir| {
                    let mut p = new_dir.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(base);
                    dst_index.get(p.as_slice()).copied()
                }),
            };
            let Some(d) = d else { continue };
            if dst_done[d] {
                continue;
            }
            let s = self.similarity(sources[i].ent, dests[d].ent, minimum)?;
            if s < min_basename {
                continue;
            }
            record(&mut out, (i, d), &mut src_used, &mut dst_done);
        }

        // 3. The similarity matrix over the relevant sources and destinations left.
        let srcs: Vec<usize> = (0..sources.len())
            .filter(|&i| !src_used[i] && sources[i].relevant)
            .collect();
        let dsts: Vec<usize> = (0..dests.len()).filter(|&d| !dst_done[d]).collect();
        if srcs.is_empty() || dsts.is_empty() {
            return Ok(self.named(&sources, &dests, out));
        }
        if srcs.len().saturating_mul(dsts.len()) > RENAME_LIMIT * RENAME_LIMIT {
            tracing::debug!(
                sources = srcs.len(),
                destinations = dsts.len(),
                "too many rename candidates: inexact rename detection skipped (as git)"
            );
            return Ok(self.named(&sources, &dests, out));
        }
        let mut matrix: Vec<Option<Candidate>> = Vec::with_capacity(dsts.len() * 4);
        for &d in &dsts {
            let mut slots: [Option<Candidate>; CANDIDATES_PER_DST] = [None; CANDIDATES_PER_DST];
            for &s in &srcs {
                let c = Candidate {
                    dst: d,
                    src: s,
                    score: self.similarity(sources[s].ent, dests[d].ent, minimum)?,
                    name_score: u8::from(basename(&sources[s].path) == basename(&dests[d].path)),
                };
                // `record_if_better`: replace the worst slot if the candidate beats it.
                let mut worst = 0;
                for k in 1..CANDIDATES_PER_DST {
                    if worse(&slots[k], &slots[worst]) == std::cmp::Ordering::Greater {
                        worst = k;
                    }
                }
                if worse(&slots[worst], &Some(c)) == std::cmp::Ordering::Greater {
                    slots[worst] = Some(c);
                }
            }
            matrix.extend(slots);
        }
        matrix.sort_by(worse); // stable, as git's STABLE_QSORT
        for c in matrix.into_iter().flatten() {
            if c.score < minimum {
                break;
            }
            if dst_done[c.dst] || src_used[c.src] {
                continue;
            }
            record(&mut out, (c.src, c.dst), &mut src_used, &mut dst_done);
        }
        Ok(self.named(&sources, &dests, out))
    }

    fn named(
        &self,
        sources: &[&Source],
        dests: &[&Dest],
        pairs: Vec<(usize, usize)>,
    ) -> Vec<Rename> {
        pairs
            .into_iter()
            .map(|(s, d)| Rename {
                src: sources[s].path.clone(),
                dst: dests[d].path.clone(),
            })
            .collect()
    }

    /// For each directory of a relevant source, the directory the exact renames out of it
    /// went to most often (first such directory in path order on a tie).
    fn dir_rename_guess(
        &self,
        sources: &[&Source],
        dests: &[&Dest],
        exact: &[(usize, usize)],
    ) -> HashMap<Vec<u8>, Vec<u8>> {
        let relevant_dirs: std::collections::HashSet<&[u8]> = sources
            .iter()
            .filter(|s| s.relevant)
            .map(|s| dirname(&s.path))
            .collect();
        let mut counts: std::collections::BTreeMap<&[u8], std::collections::BTreeMap<&[u8], u32>> =
            Default::default();
        for &(s, d) in exact {
            let old_dir = dirname(&sources[s].path);
            if !relevant_dirs.contains(old_dir) {
                continue;
            }
            *counts
                .entry(old_dir)
                .or_default()
                .entry(dirname(&dests[d].path))
                .or_default() += 1;
        }
        counts
            .into_iter()
            .filter_map(|(old, news)| {
                let mut best: Option<(&[u8], u32)> = None;
                for (new, n) in news {
                    if best.is_none_or(|(_, b)| n > b) {
                        best = Some((new, n));
                    }
                }
                best.map(|(new, _)| (old.to_vec(), new.to_vec()))
            })
            .collect()
    }

    /// `estimate_similarity` of two entries (0 unless both are regular files).
    fn similarity(&self, src: Ent, dst: Ent, minimum: u64) -> Result<u64> {
        if !is_regular(src.mode) || !is_regular(dst.mode) {
            return Ok(0);
        }
        let (ssize, dsize) = (self.blob_size(src.oid)?, self.blob_size(dst.oid)?);
        if !sizes_may_match(ssize, dsize, minimum) {
            return Ok(0);
        }
        let (ss, ds) = (self.signature(src.oid)?, self.signature(dst.oid)?);
        Ok(score((&ss, ssize), (&ds, dsize), minimum))
    }
}

pub(crate) type SignatureRef = std::rc::Rc<Signature>;
