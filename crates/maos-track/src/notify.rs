//! Publishing status changes on the `tasks` topic.

use maos_core::{AgentId, Workspace};

use crate::Change;

/// The broadcast topic status changes are published on.
pub const TOPIC: &str = "tasks";

/// Publishes `changes` (best effort: the task log is the truth, a lost notification only
/// delays a watcher until its fallback timer).
pub(crate) fn publish(_ws: &Workspace, _agent: Option<&AgentId>, changes: &[Change]) {
    tracing::trace!(
        count = changes.len(),
        "task changes (maos-comm publishing pending)"
    );
}
