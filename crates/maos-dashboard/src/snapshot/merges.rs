//! The merge prediction a snapshot shows: every agent branch against the target and, up to
//! [`MAX_PAIRWISE_BRANCHES`] branches, pairwise.

use std::sync::Arc;

use maos_core::{AgentId, Workspace, now_ms};
use maos_merge::backend::MergeBackend;
use maos_merge::{ConflictDetector, MergeCoordinator, PairResult, Prediction};

use super::{MAX_PAIRWISE_BRANCHES, MergeInputs, MergesView};

/// Predicts the merges of every agent branch into the target and, up to
/// [`MAX_PAIRWISE_BRANCHES`] branches, pairwise (maos-merge, in memory; slow on big
/// repositories: run it on a blocking thread, apart from the rest of the snapshot).
pub fn predict(ws: &Workspace, actor: &AgentId, inputs: Option<&MergeInputs>) -> MergesView {
    predict_with(ws, actor, inputs, None)
}

/// [`predict`] with the agents' branches read from `backend`'s registry (a workspace whose
/// state is on a server; git stays local: the branches are this clone's refs).
pub fn predict_with(
    ws: &Workspace,
    actor: &AgentId,
    inputs: Option<&MergeInputs>,
    backend: Option<&Arc<dyn MergeBackend>>,
) -> MergesView {
    let now = now_ms();
    let Some(inputs) = inputs else {
        return MergesView {
            state: "no_repository".into(),
            error: Some(format!(
                "{} is not inside a git repository",
                ws.root().display()
            )),
            computed_at: now,
            ..MergesView::default()
        };
    };
    let Some(target) = inputs.target.clone() else {
        return MergesView {
            state: "error".into(),
            error: Some("the repository has no HEAD branch to merge into".into()),
            computed_at: now,
            ..MergesView::default()
        };
    };
    let labels: Vec<String> = inputs
        .branches
        .iter()
        .map(|(agent, branch)| {
            format!(
                "{} ({agent})",
                branch.strip_prefix("refs/heads/").unwrap_or(branch)
            )
        })
        .collect();
    let result = if inputs.branches.len() <= MAX_PAIRWISE_BRANCHES {
        MergeCoordinator::new(ws, actor.clone()).and_then(|c| {
            let c = match backend {
                Some(b) => c.with_backend(b.clone()),
                None => c,
            };
            c.predict_agents(&target, false)
        })
    } else {
        against_target_only(ws, inputs, &labels, &target)
    };
    match result {
        Ok(prediction) => MergesView {
            state: "ready".into(),
            target: Some(target),
            branches: labels,
            pairwise_skipped: inputs.branches.len() > MAX_PAIRWISE_BRANCHES,
            prediction: Some(prediction),
            error: None,
            computed_at: now,
            queue: Vec::new(),
        },
        Err(e) => MergesView {
            state: "error".into(),
            target: Some(target),
            branches: labels,
            error: Some(e.to_string()),
            computed_at: now,
            ..MergesView::default()
        },
    }
}

fn against_target_only(
    ws: &Workspace,
    inputs: &MergeInputs,
    labels: &[String],
    target: &str,
) -> Result<Prediction, maos_merge::Error> {
    let det = ConflictDetector::open(ws.root())?;
    let mut vs_target = Vec::new();
    for ((_, branch), label) in inputs.branches.iter().zip(labels) {
        let c = det.check(branch, target)?;
        vs_target.push(PairResult {
            source: label.clone(),
            target: c.target.clone(),
            relation: c.relation,
            conflicts: c.conflicts.clone(),
        });
    }
    Ok(Prediction {
        target: target.to_owned(),
        vs_target,
        pairwise: Vec::new(),
    })
}
