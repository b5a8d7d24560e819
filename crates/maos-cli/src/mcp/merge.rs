//! Merge tools: check one pair, check every agent branch, resolve into tasks.

use maos_coordination::MergeCoordinator;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Reply, Server, ToolResult};
use crate::exit::Exit;

tool_group! {
    "merge_check" => check(Check):
        "Predict whether branch `source` merges cleanly into `target` (in memory; nothing is \
         touched): the conflicting files with their kind and line ranges. exit_code 4 when \
         conflicts are found.",
    "merge_check_all" => check_all(All):
        "Predict conflicts between every registered agent's branch and `target`, and between \
         the agent branches pairwise.",
    "merge_resolve" => resolve(Check):
        "Turn the conflicts of merging `source` into `target` into resolution tasks (one per \
         conflict, assigned to the agent best placed to resolve it) plus the merge task, and \
         message the agents involved.",
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Check {
    /// The branch (or commit) to merge.
    source: String,
    /// The branch to merge into.
    target: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct All {
    /// The branch everything merges into (e.g. `main`).
    target: String,
}

/// The coordinator: git in this clone; on PostgreSQL its shared state (merge lock, queue,
/// resolution tasks, notices, registry) on the server, as `maos merge`.
fn coordinator(s: &Server) -> Result<MergeCoordinator, super::ToolError> {
    let me = s.agent()?;
    let mut c = MergeCoordinator::new(s.ws(), me.clone())?;
    if let Some(shared) = s.backends().merge(&me) {
        c = c.with_backend(shared);
    }
    Ok(c)
}

async fn check(s: &Server, a: Check) -> ToolResult {
    let c = coordinator(s)?;
    let (src, tgt) = (a.source.clone(), a.target.clone());
    let check = s
        .blocking(move |_| Ok(c.detector().check(&src, &tgt)?))
        .await?;
    let code = if check.is_clean() {
        Exit::Ok
    } else {
        Exit::Conflicts
    };
    let paths = check.conflicted_paths();
    let text = if paths.is_empty() {
        format!("{} merges cleanly into {}", a.source, a.target)
    } else {
        format!(
            "{} conflicts with {} in {}",
            a.source,
            a.target,
            paths.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    Ok(Reply::new(&check, text)?.with_code(code))
}

async fn check_all(s: &Server, a: All) -> ToolResult {
    let c = coordinator(s)?;
    let target = a.target.clone();
    let prediction = s
        .blocking(move |_| Ok(c.predict_agents(&target, false)?))
        .await?;
    let code = if prediction.is_clean() {
        Exit::Ok
    } else {
        Exit::Conflicts
    };
    let text = if prediction.is_clean() {
        format!("every agent branch merges cleanly into {}", a.target)
    } else {
        "conflicts predicted (see the result)".to_owned()
    };
    Ok(Reply::new(&prediction, text)?.with_code(code))
}

async fn resolve(s: &Server, a: Check) -> ToolResult {
    let c = coordinator(s)?;
    let (src, tgt) = (a.source.clone(), a.target.clone());
    let res = s
        .blocking(move |_| {
            let prep = c.prepare_merge_blocking(&src, &tgt)?;
            if prep.is_clean() {
                return Ok(None);
            }
            Ok(Some(c.coordinate_resolution_blocking(&prep)?))
        })
        .await?;
    match res {
        None => Reply::new(
            &json!({ "clean": true }),
            format!(
                "{} merges cleanly into {}: nothing to resolve",
                a.source, a.target
            ),
        ),
        Some(r) => {
            Ok(Reply::new(&r, "resolution tasks created (see the result)")?
                .with_code(Exit::Conflicts))
        }
    }
}
