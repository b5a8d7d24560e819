//! Graph algorithms on the task graph: topological order, cycles, critical paths. All are
//! O(tasks + dependencies) over index arrays.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use maos_core::TaskId;

use crate::Task;

/// A fast, non-cryptographic hasher (the Fx hash of rustc) for maps keyed by task ids: the
/// ids come from the workspace's own agents, so hash flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The weight of a task without an estimate, for critical paths, Gantt charts and ETAs.
pub const DEFAULT_ESTIMATE: Duration = Duration::from_secs(3600);

/// The estimate of `t` in milliseconds ([`DEFAULT_ESTIMATE`] when it has none).
pub(crate) fn weight_ms(t: &Task) -> u64 {
    saturating_ms(t.estimated_duration.unwrap_or(DEFAULT_ESTIMATE))
}

/// `d` in milliseconds, `u64::MAX` for a longer duration (an estimate is user input).
pub(crate) fn saturating_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Rows of node indexes: an adjacency list.
pub(crate) trait Rows {
    /// Number of nodes.
    fn len(&self) -> usize;
    /// The neighbours of node `i`.
    fn row(&self, i: usize) -> &[u32];
}

impl Rows for [Vec<u32>] {
    fn len(&self) -> usize {
        <[Vec<u32>]>::len(self)
    }
    fn row(&self, i: usize) -> &[u32] {
        &self[i]
    }
}

impl Rows for Vec<Vec<u32>> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn row(&self, i: usize) -> &[u32] {
        &self[i]
    }
}

/// A compressed adjacency list: row `i` is `flat[off[i]..off[i + 1]]`.
pub(crate) struct Csr {
    off: Vec<u32>,
    flat: Vec<u32>,
}

impl Rows for Csr {
    fn len(&self) -> usize {
        self.off.len() - 1
    }
    fn row(&self, i: usize) -> &[u32] {
        &self.flat[self.off[i] as usize..self.off[i + 1] as usize]
    }
}

impl Csr {
    /// The reverse graph.
    fn reversed(&self) -> Csr {
        let n = self.len();
        let mut off = vec![0u32; n + 1];
        for &j in &self.flat {
            off[j as usize + 1] += 1;
        }
        for i in 0..n {
            off[i + 1] += off[i];
        }
        let mut fill = off.clone();
        let mut flat = vec![0u32; self.flat.len()];
        for i in 0..n {
            for &j in self.row(i) {
                flat[fill[j as usize] as usize] = i as u32;
                fill[j as usize] += 1;
            }
        }
        Csr { off, flat }
    }
}

/// Index-based adjacency of a set of tasks: `deps` row `i` are the indexes `i` depends on.
pub(crate) struct Adjacency {
    pub(crate) deps: Csr,
    pub(crate) dependents: Csr,
}

impl Adjacency {
    /// Builds the adjacency of `tasks`; dependencies outside the set are ignored.
    pub(crate) fn of(tasks: &[Task]) -> Self {
        let mut index: FxMap<&TaskId, u32> = FxMap::default();
        index.reserve(tasks.len());
        for (i, t) in tasks.iter().enumerate() {
            index.insert(&t.id, i as u32);
        }
        let mut off = Vec::with_capacity(tasks.len() + 1);
        let mut flat = Vec::with_capacity(tasks.len() * 2);
        off.push(0u32);
        for t in tasks {
            for dep in &t.dependencies {
                if let Some(&j) = index.get(dep) {
                    flat.push(j);
                }
            }
            off.push(flat.len() as u32);
        }
        let deps = Csr { off, flat };
        let dependents = deps.reversed();
        Self { deps, dependents }
    }
}

/// Kahn's algorithm: a topological order (dependencies first), or `Err(nodes left)` when
/// some nodes sit on or behind a cycle.
pub(crate) fn topo_order(
    deps: &(impl Rows + ?Sized),
    dependents: &(impl Rows + ?Sized),
) -> Result<Vec<u32>, ()> {
    let n = deps.len();
    let mut indeg: Vec<u32> = (0..n).map(|i| deps.row(i).len() as u32).collect();
    let mut order: Vec<u32> = (0..n as u32).filter(|&i| indeg[i as usize] == 0).collect();
    let mut head = 0;
    while head < order.len() {
        let v = order[head] as usize;
        head += 1;
        for &w in dependents.row(v) {
            indeg[w as usize] -= 1;
            if indeg[w as usize] == 0 {
                order.push(w);
            }
        }
    }
    if order.len() == n { Ok(order) } else { Err(()) }
}

/// Finds one cycle in the graph `deps` (each node points at what it depends on), as a list of
/// nodes with the first repeated at the end.
pub(crate) fn find_cycle(deps: &(impl Rows + ?Sized)) -> Option<Vec<u32>> {
    // Iterative DFS with colours: 0 white, 1 on stack, 2 done.
    let n = deps.len();
    let mut colour = vec![0u8; n];
    let mut parent = vec![u32::MAX; n];
    for root in 0..n {
        if colour[root] != 0 {
            continue;
        }
        let mut stack: Vec<(u32, usize)> = vec![(root as u32, 0)];
        colour[root] = 1;
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            let vs = v as usize;
            if *next < deps.row(vs).len() {
                let w = deps.row(vs)[*next];
                *next += 1;
                match colour[w as usize] {
                    0 => {
                        colour[w as usize] = 1;
                        parent[w as usize] = v;
                        stack.push((w, 0));
                    }
                    1 => {
                        // v -> w closes a cycle: w -> ... -> v -> w along the stack.
                        let mut cyc = vec![v];
                        let mut x = v;
                        while x != w {
                            x = parent[x as usize];
                            cyc.push(x);
                        }
                        cyc.reverse();
                        cyc.push(w);
                        return Some(cyc);
                    }
                    _ => {}
                }
            } else {
                colour[vs] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// The longest path through the DAG by summed `weight` (dependencies first), and its length.
/// Ties are broken towards lower indexes. Cyclic parts are ignored.
pub(crate) fn critical_path(
    deps: &(impl Rows + ?Sized),
    dependents: &(impl Rows + ?Sized),
    weight: impl Fn(usize) -> u64,
) -> (Vec<u32>, u64) {
    let order = match topo_order(deps, dependents) {
        Ok(o) => o,
        Err(()) => return (Vec::new(), 0),
    };
    let n = deps.len();
    let mut dist = vec![0u64; n];
    let mut pred = vec![u32::MAX; n];
    for &v in &order {
        let v = v as usize;
        let mut best = 0u64;
        let mut bp = u32::MAX;
        for &d in deps.row(v) {
            let dd = dist[d as usize];
            if bp == u32::MAX || dd > best || (dd == best && d < bp) {
                best = dd;
                bp = d;
            }
        }
        dist[v] = best.saturating_add(weight(v));
        pred[v] = bp;
    }
    let Some(end) = (0..n).max_by(|&a, &b| dist[a].cmp(&dist[b]).then(b.cmp(&a))) else {
        return (Vec::new(), 0);
    };
    let total = dist[end];
    let mut path = vec![end as u32];
    let mut x = end;
    while pred[x] != u32::MAX {
        x = pred[x] as usize;
        path.push(x as u32);
    }
    path.reverse();
    (path, total)
}

/// For each node, the heaviest chain of work from it to the end of the graph (its own weight
/// included): the ready queue's tie-breaker.
pub(crate) fn downstream(
    deps: &(impl Rows + ?Sized),
    dependents: &(impl Rows + ?Sized),
    weight: impl Fn(usize) -> u64,
) -> Vec<u64> {
    let n = deps.len();
    let mut tail = vec![0u64; n];
    let order = match topo_order(deps, dependents) {
        Ok(o) => o,
        Err(()) => return (0..n).map(&weight).collect(),
    };
    for &v in order.iter().rev() {
        let v = v as usize;
        let best = dependents
            .row(v)
            .iter()
            .map(|&w| tail[w as usize])
            .max()
            .unwrap_or(0);
        tail[v] = best.saturating_add(weight(v));
    }
    tail
}

/// The critical path of `tasks` (any set, e.g. from [`TaskTracker::list`](crate::TaskTracker::list)),
/// weighted by estimated durations ([`DEFAULT_ESTIMATE`] for tasks without one): the chain of
/// dependent tasks with the largest total estimate, dependencies first, and that total.
pub fn critical_path_of(tasks: &[Task]) -> (Vec<TaskId>, Duration) {
    let adj = Adjacency::of(tasks);
    let (path, total) = critical_path(&adj.deps, &adj.dependents, |i| weight_ms(&tasks[i]));
    (
        path.into_iter()
            .map(|i| tasks[i as usize].id.clone())
            .collect(),
        Duration::from_millis(total),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(edges: &[(u32, u32)], n: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let mut deps = vec![Vec::new(); n];
        let mut dependents = vec![Vec::new(); n];
        for &(a, b) in edges {
            deps[a as usize].push(b);
            dependents[b as usize].push(a);
        }
        (deps, dependents)
    }

    #[test]
    fn cycle_is_found_and_named() {
        let (deps, _) = g(&[(0, 1), (1, 2), (2, 0), (3, 0)], 4);
        let c = find_cycle(&deps).unwrap();
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
        for w in c.windows(2) {
            assert!(deps[w[0] as usize].contains(&w[1]));
        }
        let (deps, _) = g(&[(0, 1), (1, 2), (0, 2)], 3);
        assert!(find_cycle(&deps).is_none());
        let (deps, _) = g(&[(0, 0)], 1);
        assert_eq!(find_cycle(&deps).unwrap(), vec![0, 0]);
    }

    #[test]
    fn critical_path_weighs_estimates() {
        // 0 <- 1 <- 3, 0 <- 2 <- 3; weights 1, 5, 2, 1
        let (deps, dependents) = g(&[(1, 0), (2, 0), (3, 1), (3, 2)], 4);
        let w = [1u64, 5, 2, 1];
        let (p, t) = critical_path(&deps, &dependents, |i| w[i]);
        assert_eq!(p, vec![0, 1, 3]);
        assert_eq!(t, 7);
        let tail = downstream(&deps, &dependents, |i| w[i]);
        assert_eq!(tail, vec![7, 6, 3, 1]);
        let empty: Vec<Vec<u32>> = Vec::new();
        let (p, t) = critical_path(&empty, &empty, |_| 1);
        assert!(p.is_empty());
        assert_eq!(t, 0);
    }
}
