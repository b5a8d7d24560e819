//! Line ranges of content conflicts: two zero-context diffs grouped as xdiff groups hunks.

use super::types::{ConflictRegion, LineRange};
use crate::error::{GitContext as _, Result};

#[derive(Debug, Clone, Copy)]
struct Hunk {
    base_start: u32,
    base_count: u32,
    new_start: u32,
    new_count: u32,
}

fn hunks(old: &[u8], new: &[u8]) -> Result<Vec<Hunk>> {
    let mut opts = git2::DiffOptions::new();
    opts.context_lines(0).interhunk_lines(0);
    let patch =
        git2::Patch::from_buffers(old, None, new, None, Some(&mut opts)).git("diff blobs")?;
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
pub(crate) fn regions_of(a: &[u8], t: &[u8], s: &[u8]) -> Result<Vec<ConflictRegion>> {
    let th = hunks(a, t)?;
    let sh = hunks(a, s)?;
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
            && same_lines(t, s, t_range, s_range)?
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

fn same_lines(t: &[u8], s: &[u8], tr: LineRange, sr: LineRange) -> Result<bool> {
    if tr.count != sr.count {
        return Ok(false);
    }
    let lines = |b: &[u8], r: LineRange| -> Vec<Vec<u8>> {
        b.split(|c| *c == b'\n')
            .skip(r.start.saturating_sub(1) as usize)
            .take(r.count as usize)
            .map(<[u8]>::to_vec)
            .collect()
    };
    Ok(lines(t, tr) == lines(s, sr))
}
