//! Merge bases (`git merge-base --all`) and the virtual base of a criss-cross merge, as
//! merge-ort builds it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;

use git2::Oid;

use super::{CommitInfo, Engine, TreeRef};
use crate::error::{GitContext as _, Result};

const P1: u8 = 1;
const P2: u8 = 2;
const STALE: u8 = 4;
const RESULT: u8 = 8;

impl Engine<'_> {
    /// All merge bases of two commits, newest first (as `git merge-base --all`).
    pub(crate) fn merge_bases(&self, a: Oid, b: Oid) -> Result<Rc<[Oid]>> {
        let key = if a < b { (a, b) } else { (b, a) };
        if let Some(v) = self.bases.borrow().get(&key) {
            return Ok(v.clone());
        }
        let v: Rc<[Oid]> = self.merge_bases_many(a, &[b])?.into();
        self.count(|s| s.bases_computed += 1);
        self.bases.borrow_mut().insert(key, v.clone());
        Ok(v)
    }

    /// A commit's parents and committer time, parsed once per engine.
    fn commit_info(&self, oid: Oid) -> Result<Rc<CommitInfo>> {
        if let Some(c) = self.commits.borrow().get(&oid) {
            return Ok(c.clone());
        }
        let c = self.repo.find_commit(oid).git("read commit")?;
        let info = Rc::new(CommitInfo {
            parents: c.parent_ids().collect(),
            time: c.committer().when().seconds(),
            tree: c.tree_id(),
        });
        self.commits.borrow_mut().insert(oid, info.clone());
        Ok(info)
    }

    /// git's `get_merge_bases_many`: the best common ancestors of `one` and any of `twos`
    /// (`paint_down_to_common`, then redundant ones removed), newest first.
    fn merge_bases_many(&self, one: Oid, twos: &[Oid]) -> Result<Vec<Oid>> {
        if twos.contains(&one) {
            return Ok(vec![one]);
        }
        let (result, flags) = self.paint_down_to_common(one, twos)?;
        let mut bases: Vec<Oid> = result
            .into_iter()
            .filter(|c| flags.get(c).copied().unwrap_or(0) & STALE == 0)
            .collect();
        if bases.len() > 1 {
            // remove_redundant: a base that is an ancestor of another goes.
            let mut redundant = vec![false; bases.len()];
            for i in 0..bases.len() {
                if redundant[i] {
                    continue;
                }
                let others: Vec<(usize, Oid)> = (0..bases.len())
                    .filter(|&j| j != i && !redundant[j])
                    .map(|j| (j, bases[j]))
                    .collect();
                let work: Vec<Oid> = others.iter().map(|(_, o)| *o).collect();
                let (_, f) = self.paint_down_to_common(bases[i], &work)?;
                if f.get(&bases[i]).copied().unwrap_or(0) & P2 != 0 {
                    redundant[i] = true;
                }
                for (j, o) in others {
                    if f.get(&o).copied().unwrap_or(0) & P1 != 0 {
                        redundant[j] = true;
                    }
                }
            }
            bases = bases
                .into_iter()
                .zip(redundant)
                .filter_map(|(b, r)| (!r).then_some(b))
                .collect();
        }
        // commit_list_insert_by_date: newest first, equal times in found order.
        let mut dated = Vec::with_capacity(bases.len());
        for b in bases {
            dated.push((self.commit_info(b)?.time, b));
        }
        dated.sort_by_key(|x| Reverse(x.0));
        Ok(dated.into_iter().map(|(_, b)| b).collect())
    }

    /// git's `paint_down_to_common`: walks back from `one` (flag P1) and `twos` (P2),
    /// newest commits first, until every commit still queued is below a common one.
    fn paint_down_to_common(&self, one: Oid, twos: &[Oid]) -> Result<(Vec<Oid>, HashMap<Oid, u8>)> {
        let mut flags: HashMap<Oid, u8> = HashMap::new();
        // Newest first; among equal times, first queued first (git's prio_queue).
        let mut queue: BinaryHeap<(i64, Reverse<u64>, Oid)> = BinaryHeap::new();
        let mut counter = 0u64;
        let mut push = |queue: &mut BinaryHeap<(i64, Reverse<u64>, Oid)>, oid: Oid, time: i64| {
            counter += 1;
            queue.push((time, Reverse(counter), oid));
        };
        flags.insert(one, P1);
        push(&mut queue, one, self.commit_info(one)?.time);
        for &t in twos {
            *flags.entry(t).or_default() |= P2;
            push(&mut queue, t, self.commit_info(t)?.time);
        }
        let mut result = Vec::new();
        while queue
            .iter()
            .any(|(_, _, o)| flags.get(o).copied().unwrap_or(0) & STALE == 0)
        {
            let Some((_, _, commit)) = queue.pop() else {
                break;
            };
            let f0 = flags.get(&commit).copied().unwrap_or(0);
            let mut f = f0 & (P1 | P2 | STALE);
            if f == (P1 | P2) {
                if f0 & RESULT == 0 {
                    flags.insert(commit, f0 | RESULT);
                    result.push(commit);
                }
                f |= STALE;
            }
            let info = self.commit_info(commit)?;
            for &p in &info.parents {
                let pf = flags.entry(p).or_default();
                if *pf & f == f {
                    continue;
                }
                *pf |= f;
                let time = self.commit_info(p)?.time;
                push(&mut queue, p, time);
            }
        }
        Ok((result, flags))
    }

    /// The tree to use as the merge base of `ours` and `theirs`: the merge base's, or the
    /// virtual merge of several (git's recursive rule), or the empty tree.
    pub(crate) fn base_tree(&self, ours: Oid, theirs: Oid) -> Result<TreeRef> {
        let bases = self.merge_bases(ours, theirs)?;
        self.virtual_base(&bases, 1)
    }

    /// Merges `bases` (newest first) into one tree, oldest first, as merge-ort does.
    fn virtual_base(&self, bases: &[Oid], depth: u32) -> Result<TreeRef> {
        let mut order: Vec<Oid> = bases.to_vec();
        order.reverse();
        let Some((&first, rest)) = order.split_first() else {
            return Ok(TreeRef::Empty);
        };
        if let Some(t) = self.base_trees.borrow().get(&order) {
            return Ok(t.clone());
        }
        let mut merged = TreeRef::Real(self.commit_tree(first)?);
        let mut parents = vec![first];
        for &next in rest {
            // The merge bases of the virtual commit (whose parents are `parents`) and `next`.
            let mut input = vec![next];
            input.extend(&parents);
            let inner = self.merge_bases_many(next, &input[1..])?;
            let base = self.virtual_base(&inner, depth + 1)?;
            let next_tree = TreeRef::Real(self.commit_tree(next)?);
            let m = self.merge_trees(&base, &merged, &next_tree, depth)?;
            merged = TreeRef::Virtual(Rc::new(m.entries));
            parents.push(next);
        }
        self.base_trees.borrow_mut().insert(order, merged.clone());
        Ok(merged)
    }

    pub(crate) fn commit_tree(&self, commit: Oid) -> Result<Oid> {
        Ok(self.commit_info(commit)?.tree)
    }
}
