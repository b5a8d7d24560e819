//! Property tests: critical paths against brute force, cycles always rejected.

use std::time::Duration;

use maos_core::{TaskId, Workspace};
use maos_track::{Error, Options, Task, TaskTracker, critical_path_of};
use proptest::prelude::*;

/// A random DAG on `n` nodes: node i may depend on any j < i.
fn dag() -> impl Strategy<Value = (Vec<u64>, Vec<(usize, usize)>)> {
    (1usize..9).prop_flat_map(|n| {
        let weights = proptest::collection::vec(1u64..100, n);
        let edges = proptest::collection::vec((0..n, 0..n), 0..(n * 2))
            .prop_map(|es| es.into_iter().filter(|(a, b)| a > b).collect::<Vec<_>>());
        (weights, edges)
    })
}

fn tasks_of(weights: &[u64], edges: &[(usize, usize)]) -> Vec<Task> {
    let mut tasks: Vec<Task> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| Task::new(format!("n{i}")).estimate(Duration::from_millis(*w)))
        .collect();
    for &(a, b) in edges {
        let dep = tasks[b].id.clone();
        if !tasks[a].dependencies.contains(&dep) {
            tasks[a].dependencies.push(dep);
        }
    }
    tasks
}

/// The heaviest path by trying every path from every node.
fn brute_force(weights: &[u64], edges: &[(usize, usize)]) -> u64 {
    fn go(v: usize, weights: &[u64], edges: &[(usize, usize)]) -> u64 {
        let mut best = 0;
        for &(a, b) in edges {
            if a == v {
                best = best.max(go(b, weights, edges));
            }
        }
        best + weights[v]
    }
    (0..weights.len())
        .map(|v| go(v, weights, edges))
        .max()
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn critical_path_equals_brute_force((weights, edges) in dag()) {
        let tasks = tasks_of(&weights, &edges);
        let (path, total) = critical_path_of(&tasks);
        prop_assert_eq!(total.as_millis() as u64, brute_force(&weights, &edges));
        // The path is a chain of dependencies whose estimates add up to the total.
        let idx = |id: &TaskId| tasks.iter().position(|t| &t.id == id).unwrap();
        let sum: u64 = path.iter().map(|id| weights[idx(id)]).sum();
        prop_assert_eq!(sum, total.as_millis() as u64);
        for w in path.windows(2) {
            prop_assert!(tasks[idx(&w[1])].dependencies.contains(&w[0]));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_cycle_is_rejected_and_named(
        (weights, edges) in dag(),
        back in (0usize..8, 0usize..8),
    ) {
        let n = weights.len();
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let t = TaskTracker::open_with(&ws, Options::default().publish(false)).unwrap();
        let (a, b) = (back.0 % n, back.1 % n);
        // Add the edge b -> a (b depends on a) with a >= b... only a cycle if a path a ~> b
        // exists along dependencies, or a == b.
        let mut tasks = tasks_of(&weights, &edges);
        let reach = {
            // Is b reachable from a following dependencies (a depends on ... on b)?
            let mut seen = vec![false; n];
            let mut stack = vec![a];
            while let Some(v) = stack.pop() {
                if seen[v] { continue; }
                seen[v] = true;
                for &(x, y) in &edges { if x == v { stack.push(y); } }
            }
            seen[b]
        };
        let dep = tasks[a].id.clone();
        if !tasks[b].dependencies.contains(&dep) {
            tasks[b].dependencies.push(dep);
        }
        let res = t.create_tasks_blocking(&tasks);
        if reach {
            let Err(Error::Cycle { cycle }) = res else { panic!("cycle accepted: {res:?}") };
            prop_assert!(cycle.len() >= 2);
            prop_assert_eq!(cycle.first(), cycle.last());
            for w in cycle.windows(2) {
                let t0 = tasks.iter().find(|t| t.id == w[0]).unwrap();
                prop_assert!(t0.dependencies.contains(&w[1]), "{} does not depend on {}", w[0], w[1]);
            }
            prop_assert!(t.list_blocking().unwrap().is_empty());
        } else {
            prop_assert!(res.is_ok(), "acyclic graph rejected: {:?}", res);
        }
    }
}
