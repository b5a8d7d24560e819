//! The dashboard's actions (only with `allow_actions`): each is the same storage-trait call
//! the CLI makes, on whichever backend the workspace uses ([`Stores`]: the files, or a
//! server), refused unless the state allows it, and recorded with the actor on the
//! [`ACTIONS_TOPIC`] broadcast topic (and in the log).
//!
//! - release a dead agent's lock: [`LockStore::release`](maos_lock::LockStore::release) with
//!   the lock's fencing token, only when the registry says the owner is dead (`maos lock
//!   release` as that agent);
//! - reset a failed task: [`TaskStore::update`](maos_track::TaskStore::update) to pending
//!   (`maos task reset`);
//! - resolve a deadlock: [`LockStore::deadlocks`](maos_lock::LockStore::deadlocks) with
//!   resolution on (`maos deadlock check --resolve --broadcast`): the youngest wait of each
//!   cycle ends with a deadlock error.
//!
//! The functions taking a [`Workspace`] act on its files; the `_in` ones on any [`Stores`].

use maos_core::{AgentId, Liveness, ResourceName, Workspace, now_ms};
use maos_lock::FencingToken;
use maos_track::{TaskStatus, Update};
use serde::{Deserialize, Serialize};

use crate::stores::Stores;
use crate::{Error, Result};

/// The broadcast topic every action is recorded on.
pub const ACTIONS_TOPIC: &str = "dashboard/actions";

/// What an action did, as recorded on [`ACTIONS_TOPIC`] and returned to the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// `release_lock`, `reset_task` or `resolve_deadlock`.
    pub action: String,
    /// The agent the dashboard acts as.
    pub actor: String,
    /// Who asked (the peer address of the request), when known.
    pub requested_from: Option<String>,
    /// What it did, for a person.
    pub detail: String,
    /// When (ms since the Unix epoch).
    pub at: u64,
}

/// Releases `owner`'s lock on `resource` granted with `token`, if `owner` is a registered
/// agent the registry reports dead (the workspace's files).
pub fn release_lock(
    ws: &Workspace,
    actor: &AgentId,
    resource: &str,
    owner: &str,
    token: u64,
    requested_from: Option<String>,
) -> Result<ActionRecord> {
    let stores = Stores::files(ws, actor)?;
    release_lock_in(&stores, actor, resource, owner, token, requested_from)
}

/// [`release_lock`] on `stores`.
pub fn release_lock_in(
    stores: &Stores,
    actor: &AgentId,
    resource: &str,
    owner: &str,
    token: u64,
    requested_from: Option<String>,
) -> Result<ActionRecord> {
    const ACTION: &str = "release_lock";
    let refuse = |reason: String| Error::Refused {
        action: ACTION,
        reason,
    };
    let owner = AgentId::new(owner).map_err(|e| refuse(e.to_string()))?;
    let resource = ResourceName::new(resource).map_err(|e| refuse(e.to_string()))?;
    let (agents, _) = stores.agents.list()?;
    let liveness = agents
        .iter()
        .find(|a| a.record.id == owner)
        .map(|a| a.liveness);
    match liveness {
        Some(Liveness::Dead) => {}
        Some(l) => {
            return Err(refuse(format!(
                "agent {owner} is {}: only a dead agent's locks are released from the dashboard \
                 (the agent releases its own with `maos lock release`)",
                match l {
                    Liveness::Alive => "alive",
                    _ => "still leased",
                }
            )));
        }
        None => {
            return Err(refuse(format!(
                "agent {owner} is not registered, so its liveness is unknown; its lease ends by \
                 itself, or it can release the lock with `maos lock release`"
            )));
        }
    }
    let gone = stores
        .locks
        .release(&resource, &owner, Some(FencingToken(token)))?;
    record(
        stores,
        actor,
        ACTION,
        requested_from,
        format!(
            "released {} lock(s) of dead agent {owner} on {resource} (token {token})",
            gone.len()
        ),
    )
}

/// Puts the failed task `id` back in the queue (the workspace's files).
pub fn reset_task(
    ws: &Workspace,
    actor: &AgentId,
    id: &str,
    requested_from: Option<String>,
) -> Result<ActionRecord> {
    reset_task_in(&Stores::files(ws, actor)?, actor, id, requested_from)
}

/// [`reset_task`] on `stores` (whose task store acts as `actor`).
pub fn reset_task_in(
    stores: &Stores,
    actor: &AgentId,
    id: &str,
    requested_from: Option<String>,
) -> Result<ActionRecord> {
    const ACTION: &str = "reset_task";
    let tracker = &stores.tasks;
    let id = tracker.resolve(id)?;
    let task = tracker.get(&id)?.ok_or_else(|| Error::Refused {
        action: ACTION,
        reason: format!("task {id} does not exist"),
    })?;
    if task.status != TaskStatus::Failed {
        return Err(Error::Refused {
            action: ACTION,
            reason: format!(
                "task {id} is {}, not failed: only failed tasks are reset from the dashboard",
                task.status
            ),
        });
    }
    // An operator's explicit action: it may move a task assigned to another agent (the
    // record says it was forced).
    let u = Update::status(TaskStatus::Pending)
        .note(format!("reset from the dashboard by {actor}"))
        .expect_revision(task.revision)
        .force();
    let t = tracker.update(&id, &u)?;
    record(
        stores,
        actor,
        ACTION,
        requested_from,
        format!("reset failed task {id} ({}) to {}", t.name, t.status),
    )
}

/// Resolves every current deadlock: the youngest wait of each cycle is aborted, and the
/// cycle is broadcast on the `deadlock` topic (the workspace's files).
pub fn resolve_deadlock(
    ws: &Workspace,
    actor: &AgentId,
    requested_from: Option<String>,
) -> Result<ActionRecord> {
    resolve_deadlock_in(&Stores::files(ws, actor)?, actor, requested_from)
}

/// [`resolve_deadlock`] on `stores`.
pub fn resolve_deadlock_in(
    stores: &Stores,
    actor: &AgentId,
    requested_from: Option<String>,
) -> Result<ActionRecord> {
    const ACTION: &str = "resolve_deadlock";
    let found: Vec<maos_lock::Deadlock> = stores
        .locks
        .deadlocks(actor, true, true)?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    if found.is_empty() {
        return Err(Error::Refused {
            action: ACTION,
            reason: "there is no deadlock now".into(),
        });
    }
    let victims: Vec<String> = found
        .iter()
        .map(|d| format!("{} on {}", d.victim, d.victim_resource))
        .collect();
    record(
        stores,
        actor,
        ACTION,
        requested_from,
        format!(
            "resolved {} deadlock(s) by aborting the wait of {}",
            found.len(),
            victims.join(", ")
        ),
    )
}

fn record(
    stores: &Stores,
    actor: &AgentId,
    action: &str,
    requested_from: Option<String>,
    detail: String,
) -> Result<ActionRecord> {
    let rec = ActionRecord {
        action: action.to_string(),
        actor: actor.to_string(),
        requested_from,
        detail,
        at: now_ms(),
    };
    tracing::info!(action, actor = %actor, from = ?rec.requested_from, "{}", rec.detail);
    // The change is made; the record follows it (a failure to record is reported, not undone).
    let payload = serde_json::to_value(&rec).unwrap_or(serde_json::Value::Null);
    if let Err(e) = (stores.system)(actor, ACTIONS_TOPIC, &payload) {
        tracing::warn!(error = %e, "dashboard: the action was done but could not be recorded on {ACTIONS_TOPIC}");
    }
    Ok(rec)
}
