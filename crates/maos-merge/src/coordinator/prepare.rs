//! Preparing a merge: the check, who touched what on each side, blame of conflicting
//! lines, the suggested resolver of each conflict and the strategy.

use std::collections::{BTreeMap, BTreeSet};

use git2::Oid;

use super::{
    AffectedFile, MergeCoordinator, MergePreparation, MergeStrategy, PreparedConflict, Side,
};
use crate::detect::{ConflictKind, DetectOptions, Engine, Relation, check_with, engine_options};
use crate::error::{GitContext as _, Result};
use crate::touch::{Actor, blame, short_branch, touches};

impl MergeCoordinator {
    /// Predicts the merge of `source` into `target` under the merge lock, with who touched
    /// what and the suggested strategy.
    pub async fn prepare_merge(&self, source: &str, target: &str) -> Result<MergePreparation> {
        let this = self.clone();
        let (s, t) = (source.to_owned(), target.to_owned());
        crate::asyncify(move || this.prepare_merge_blocking(&s, &t)).await
    }

    /// [`MergeCoordinator::prepare_merge`] for synchronous callers.
    pub fn prepare_merge_blocking(&self, source: &str, target: &str) -> Result<MergePreparation> {
        let span = tracing::info_span!("prepare_merge", source, target, agent = %self.agent);
        let _enter = span.enter();
        let guard = self.lock(target, &format!("prepare merge of {source} into {target}"))?;
        let result = self.prepare_unlocked(source, target);
        Self::release(guard);
        result
    }

    /// The preparation without taking the lock (the caller holds it, or accepts a snapshot).
    pub fn prepare_unlocked(&self, source: &str, target: &str) -> Result<MergePreparation> {
        let repo = self.detector.repository()?;
        let options = DetectOptions::default();
        let engine = Engine::new(&repo, engine_options(&options));
        let check = check_with(&engine, &options, source, target)?;
        let agents = self.branch_agents();
        let source_agent = agents.get(short_branch(source));
        let target_agent = agents.get(short_branch(target));
        let s_oid = Oid::from_str(&check.source_commit).git("parse oid")?;
        let t_oid = Oid::from_str(&check.target_commit).git("parse oid")?;
        let base = check
            .merge_base
            .as_deref()
            .map(Oid::from_str)
            .transpose()
            .git("parse oid")?;
        let source_touch = touches(&repo, base, s_oid, source_agent, None)?;
        let target_touch = match check.relation {
            Relation::UpToDate => BTreeMap::new(),
            _ => touches(&repo, base, t_oid, target_agent, None)?,
        };
        let conflicted: BTreeSet<String> = check
            .conflicts
            .iter()
            .flat_map(|c| {
                let mut p = c.paths();
                p.extend(c.ancestor.iter().map(|a| a.path.clone()));
                p
            })
            .collect();
        let mut affected = Vec::new();
        let all: BTreeSet<&String> = source_touch.keys().chain(target_touch.keys()).collect();
        for p in all {
            let s = source_touch.get(p).cloned().unwrap_or_default();
            let t = target_touch.get(p).cloned().unwrap_or_default();
            let side = match (s.is_empty(), t.is_empty()) {
                (false, false) => Side::Both,
                (false, true) => Side::Source,
                _ => Side::Target,
            };
            affected.push(AffectedFile {
                path: p.clone(),
                side,
                conflicted: conflicted.contains(p),
                source_actors: s,
                target_actors: t,
            });
        }
        let mut agent_modifications: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in &affected {
            let mut seen = BTreeSet::new();
            for a in f.source_actors.iter().chain(&f.target_actors) {
                if seen.insert(a.label()) {
                    agent_modifications
                        .entry(a.label())
                        .or_default()
                        .push(f.path.clone());
                }
            }
        }
        let mut conflicts = Vec::with_capacity(check.conflicts.len());
        for c in &check.conflicts {
            let file_actors = |touch: &BTreeMap<String, Vec<Actor>>, e: &Option<_>| {
                let mut v: Vec<Actor> = Vec::new();
                let paths = [
                    e.as_ref().map(|e: &crate::ConflictEntry| e.path.clone()),
                    c.ancestor.as_ref().map(|a| a.path.clone()),
                ];
                for p in paths.into_iter().flatten() {
                    for a in touch.get(&p).into_iter().flatten() {
                        if !v.contains(a) {
                            v.push(a.clone());
                        }
                    }
                }
                v
            };
            let (mut s_actors, mut t_actors) = (Vec::new(), Vec::new());
            if c.kind == ConflictKind::Content && self.options.blame {
                for r in &c.regions {
                    if let Some(e) = &c.source {
                        for a in blame(&repo, e, s_oid, base, r.source, source_agent)? {
                            if !s_actors.contains(&a) {
                                s_actors.push(a);
                            }
                        }
                    }
                    if let Some(e) = &c.target {
                        for a in blame(&repo, e, t_oid, base, r.target, target_agent)? {
                            if !t_actors.contains(&a) {
                                t_actors.push(a);
                            }
                        }
                    }
                }
            }
            if s_actors.is_empty() {
                s_actors = file_actors(&source_touch, &c.source);
            }
            if t_actors.is_empty() {
                t_actors = file_actors(&target_touch, &c.target);
            }
            let suggested_resolver = s_actors
                .iter()
                .chain(&t_actors)
                .find_map(|a| a.agent.clone())
                .or_else(|| source_agent.cloned())
                .or_else(|| target_agent.cloned());
            conflicts.push(PreparedConflict {
                conflict: c.clone(),
                source_actors: s_actors,
                target_actors: t_actors,
                suggested_resolver,
            });
        }
        let suggested_strategy = match check.relation {
            Relation::UpToDate => MergeStrategy::UpToDate,
            Relation::FastForward => MergeStrategy::FastForward,
            _ if conflicts.is_empty() => MergeStrategy::CleanMerge,
            _ => MergeStrategy::Manual {
                resolvers: conflicts
                    .iter()
                    .map(|c| (c.conflict.path.clone(), c.suggested_resolver.clone()))
                    .collect(),
            },
        };
        tracing::info!(
            conflicts = conflicts.len(),
            affected = affected.len(),
            strategy = suggested_strategy.name(),
            "merge prepared"
        );
        Ok(MergePreparation {
            source: source.to_owned(),
            target: target.to_owned(),
            source_commit: check.source_commit,
            target_commit: check.target_commit,
            merge_base: check.merge_base,
            conflicts,
            affected_files: affected,
            agent_modifications,
            suggested_strategy,
        })
    }
}
