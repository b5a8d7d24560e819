//! The task model and its state machine.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use maos_core::{AgentId, Priority, TaskId};
use serde::{Deserialize, Serialize};

/// One unit of work in the shared task graph.
///
/// Build one with `..Default::default()` and hand it to
/// [`TaskTracker::create_task`](crate::TaskTracker::create_task); the tracker decides `status`
/// (Pending or Blocked), the timestamps and the revision.
///
/// The JSON form (snapshot and log records) is specified in `docs/protocol.md`; optional fields
/// are omitted when empty, and fields a newer writer adds are ignored by this reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id.
    pub id: TaskId,
    /// Short human name (may contain any character; renderers escape it).
    pub name: String,
    /// Longer description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Where the task is in its life.
    #[serde(default)]
    pub status: TaskStatus,
    /// The agent working on it (set by a claim) or meant to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<AgentId>,
    /// Tasks that must be completed before this one can start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<TaskId>,
    /// Free-form labels (`backend`, `merge-conflict`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Scheduling priority: higher first.
    #[serde(default, skip_serializing_if = "is_normal")]
    pub priority: Priority,
    /// How long the work should take (drives the critical path, the Gantt chart and the ETA).
    #[serde(
        default,
        rename = "estimate_ms",
        with = "opt_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub estimated_duration: Option<Duration>,
    /// When it was created (ms since the Unix epoch).
    #[serde(default)]
    pub created_at: u64,
    /// When it last changed (ms since the Unix epoch).
    #[serde(default)]
    pub updated_at: u64,
    /// When work last started on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// When it was completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
    /// How many times work started on it (claims and starts).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// The result (on completion) or the failure reason (on failure), or the latest note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why the task is blocked beyond "waiting for dependencies" (a dependency failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reason: Option<String>,
    /// Incremented on every change; the compare-and-swap handle of
    /// [`Update::expect_revision`](crate::Update::expect_revision).
    #[serde(default)]
    pub revision: u64,
    /// Free-form key/value metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn is_normal(p: &Priority) -> bool {
    *p == Priority::Normal
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

mod opt_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(crate::graph::saturating_ms(*d)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl Default for Task {
    fn default() -> Self {
        Self {
            id: TaskId::new(),
            name: String::new(),
            description: String::new(),
            status: TaskStatus::Pending,
            assigned_to: None,
            dependencies: Vec::new(),
            labels: Vec::new(),
            priority: Priority::Normal,
            estimated_duration: None,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            completed_at: None,
            attempts: 0,
            note: None,
            blocked_reason: None,
            revision: 0,
            metadata: BTreeMap::new(),
        }
    }
}

impl Task {
    /// A task named `name` with a fresh id and defaults for everything else.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Adds a dependency.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn after(mut self, dep: TaskId) -> Self {
        self.dependencies.push(dep);
        self
    }

    /// Sets the estimate.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn estimate(mut self, d: Duration) -> Self {
        self.estimated_duration = Some(d);
        self
    }

    /// Sets the priority.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }
}

/// Where a task is in its life.
///
/// ```text
///            deps done                claim/start           review
///  Blocked ------------> Pending -----------------> InProgress ----> Review
///     ^                    ^  ^                      |  |  ^           |  |
///     | dep incomplete     |  +---- release ---------+  |  +- rework --+  |
///     +--- retry ---- Failed <------- fail -------------+-----------------+
///                                                       |                 |
///                                                       +--> Completed <--+
/// ```
/// Completed is final. Blocked -> Pending happens only when the last dependency completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskStatus {
    /// Ready to be claimed: every dependency is completed.
    #[default]
    Pending,
    /// Waiting for dependencies (or one of them failed).
    Blocked,
    /// Someone works on it.
    InProgress,
    /// Done, awaiting review.
    Review,
    /// Done and accepted. Final.
    Completed,
    /// Gave up; may be retried (back to Pending or Blocked).
    Failed,
}

impl TaskStatus {
    /// All statuses, in display order.
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Pending,
        TaskStatus::Blocked,
        TaskStatus::InProgress,
        TaskStatus::Review,
        TaskStatus::Completed,
        TaskStatus::Failed,
    ];

    /// The snake_case name used on disk and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Blocked => "blocked",
            TaskStatus::InProgress => "in_progress",
            TaskStatus::Review => "review",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }

    /// Whether someone is working on the task (in progress or in review).
    pub fn is_active(self) -> bool {
        matches!(self, TaskStatus::InProgress | TaskStatus::Review)
    }

    /// Why `self -> to` is not allowed, or `None` when it is (for a task whose dependencies
    /// are all completed; the tracker checks dependencies separately).
    pub(crate) fn refuse(self, to: TaskStatus) -> Option<&'static str> {
        use TaskStatus::*;
        match (self, to) {
            (Completed, _) => Some("a completed task is final"),
            (a, b) if a == b => Some("it is already in that status"),
            (_, Blocked) => Some("blocked is set by the tracker, from dependencies"),
            (Blocked, Failed) => None,
            (Blocked, _) => Some("its dependencies are not all completed"),
            (Pending, InProgress | Failed) => None,
            (Pending, _) => Some("a pending task must be started first"),
            (InProgress, Review | Completed | Failed | Pending) => None,
            (Review, Completed | Failed | InProgress | Pending) => None,
            (Failed, Pending) => None,
            (Failed, _) => Some("a failed task must be retried (set to pending) first"),
            _ => Some("not a valid transition"),
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let norm = match norm.as_str() {
            "done" => "completed",
            "active" | "started" | "inprogress" => "in_progress",
            other => other,
        }
        .to_string();
        TaskStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == norm)
            .ok_or_else(|| crate::Error::Invalid {
                what: "task status",
                reason: format!(
                    "\"{s}\" is not one of pending, blocked, in_progress, review, completed, failed"
                ),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_table() {
        use TaskStatus::*;
        let allowed = [
            (Pending, InProgress),
            (Pending, Failed),
            (Blocked, Failed),
            (InProgress, Review),
            (InProgress, Completed),
            (InProgress, Failed),
            (InProgress, Pending),
            (Review, Completed),
            (Review, InProgress),
            (Review, Failed),
            (Review, Pending),
            (Failed, Pending),
        ];
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                assert_eq!(
                    from.refuse(to).is_none(),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn status_parses_aliases() {
        assert_eq!("done".parse::<TaskStatus>().unwrap(), TaskStatus::Completed);
        assert_eq!(
            "in-progress".parse::<TaskStatus>().unwrap(),
            TaskStatus::InProgress
        );
        assert!("nope".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn json_omits_empty_fields() {
        let t = Task::new("x");
        let v = serde_json::to_value(&t).unwrap();
        assert!(v.get("description").is_none());
        assert!(v.get("estimate_ms").is_none());
        let t = t.estimate(Duration::from_secs(90));
        let back: Task = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }
}
