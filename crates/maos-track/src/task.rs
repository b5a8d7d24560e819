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

/// Longest task name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest description, note or comment, in bytes.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Most labels on one task.
pub const MAX_LABELS: usize = 64;
/// Longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;
/// Most dependencies of one task.
pub const MAX_DEPENDENCIES: usize = 1024;
/// Most metadata entries on one task.
pub const MAX_METADATA: usize = 64;
/// Longest metadata value, in bytes (keys follow [`MAX_LABEL_BYTES`]).
pub const MAX_METADATA_VALUE_BYTES: usize = 4096;

fn invalid(what: &'static str, reason: String) -> crate::Error {
    crate::Error::Invalid { what, reason }
}

/// Checks a task name: not blank, at most [`MAX_NAME_BYTES`].
pub(crate) fn check_name(name: &str) -> Result<(), crate::Error> {
    if name.trim().is_empty() {
        return Err(invalid("task name", "it is empty".into()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(
            "task name",
            format!("it is {} bytes, the limit is {MAX_NAME_BYTES}", name.len()),
        ));
    }
    Ok(())
}

/// Checks a free text (description, note, comment): at most [`MAX_TEXT_BYTES`]; `what`
/// names it in the error ([`Error::Invalid`](crate::Error::Invalid)).
///
/// # Errors
/// [`Error::Invalid`](crate::Error::Invalid) when it is over the limit.
pub fn check_text(what: &'static str, text: &str) -> Result<(), crate::Error> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(invalid(
            what,
            format!("it is {} bytes, the limit is {MAX_TEXT_BYTES}", text.len()),
        ));
    }
    Ok(())
}

/// Checks a label list: at most [`MAX_LABELS`] non-blank labels of [`MAX_LABEL_BYTES`].
pub(crate) fn check_labels(labels: &[String]) -> Result<(), crate::Error> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(
            "labels",
            format!("{} labels, the limit is {MAX_LABELS}", labels.len()),
        ));
    }
    for l in labels {
        if l.trim().is_empty() || l.len() > MAX_LABEL_BYTES || l.chars().any(char::is_control) {
            return Err(invalid(
                "label",
                format!(
                    "\"{}\": a label is 1 to {MAX_LABEL_BYTES} bytes without control characters",
                    maos_core::excerpt(l, 40)
                ),
            ));
        }
    }
    Ok(())
}

impl Task {
    /// Checks the caller-supplied fields against the limits above (names, texts, labels,
    /// dependency and metadata counts). Writers call it before a task is created; replay
    /// refuses a `create` record that fails it (and so does every other backend).
    ///
    /// # Errors
    /// [`Error::Invalid`](crate::Error::Invalid) naming the field and its limit.
    pub fn check(&self) -> Result<(), crate::Error> {
        check_name(&self.name)?;
        check_text("task description", &self.description)?;
        if let Some(n) = &self.note {
            check_text("task note", n)?;
        }
        check_labels(&self.labels)?;
        if self.dependencies.len() > MAX_DEPENDENCIES {
            return Err(invalid(
                "dependencies",
                format!(
                    "task {} has {} dependencies, the limit is {MAX_DEPENDENCIES}",
                    self.id,
                    self.dependencies.len()
                ),
            ));
        }
        if self.metadata.len() > MAX_METADATA {
            return Err(invalid(
                "metadata",
                format!(
                    "{} entries, the limit is {MAX_METADATA}",
                    self.metadata.len()
                ),
            ));
        }
        for (k, v) in &self.metadata {
            if k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_METADATA_VALUE_BYTES {
                return Err(invalid(
                    "metadata",
                    format!(
                        "key \"{}\": keys are 1 to {MAX_LABEL_BYTES} bytes, values at most \
                         {MAX_METADATA_VALUE_BYTES}",
                        maos_core::excerpt(k, 40)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Changes to a task's descriptive fields ([`TaskTracker::edit`](crate::TaskTracker::edit));
/// `None` leaves a field as it is. Anyone may edit these; the assignee changes through
/// [`TaskTracker::assign`](crate::TaskTracker::assign), which has an owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Edit {
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A new estimate (`Some(None)` removes it; JSON: `estimate_ms`, `null` removes).
    #[serde(
        default,
        rename = "estimate_ms",
        with = "opt_opt_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub estimate: Option<Option<Duration>>,
    /// A new priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// New labels (replacing the old ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

impl Edit {
    /// Nothing changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the name.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the description.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// Sets (`Some`) or removes (`None`) the estimate.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn estimate(mut self, d: Option<Duration>) -> Self {
        self.estimate = Some(d);
        self
    }

    /// Sets the priority.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = Some(p);
        self
    }

    /// Replaces the labels.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn labels(mut self, labels: Vec<String>) -> Self {
        self.labels = Some(labels);
        self
    }

    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.estimate.is_none()
            && self.priority.is_none()
            && self.labels.is_none()
    }

    /// The names of the fields it sets (JSON names).
    pub fn fields(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.name.is_some() {
            f.push("name");
        }
        if self.description.is_some() {
            f.push("description");
        }
        if self.estimate.is_some() {
            f.push("estimate_ms");
        }
        if self.priority.is_some() {
            f.push("priority");
        }
        if self.labels.is_some() {
            f.push("labels");
        }
        f
    }

    /// Checks the edit: not empty, each field within its limit.
    ///
    /// # Errors
    /// [`Error::Invalid`](crate::Error::Invalid) naming the field.
    pub fn check(&self) -> Result<(), crate::Error> {
        if self.is_empty() {
            return Err(invalid("edit", "it changes nothing".into()));
        }
        if let Some(n) = &self.name {
            check_name(n)?;
        }
        if let Some(d) = &self.description {
            check_text("task description", d)?;
        }
        if let Some(l) = &self.labels {
            check_labels(l)?;
        }
        Ok(())
    }

    /// Applies the edit to `t`.
    pub fn apply_to(&self, t: &mut Task) {
        if let Some(n) = &self.name {
            t.name.clone_from(n);
        }
        if let Some(d) = &self.description {
            t.description.clone_from(d);
        }
        if let Some(e) = self.estimate {
            t.estimated_duration = e;
        }
        if let Some(p) = self.priority {
            t.priority = p;
        }
        if let Some(l) = &self.labels {
            t.labels.clone_from(l);
        }
    }
}

mod opt_opt_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        d: &Option<Option<Duration>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(Some(d)) => s.serialize_u64(crate::graph::saturating_ms(*d)),
            _ => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<Duration>>, D::Error> {
        // Present (a number or null): Some; absent: the field's default, None.
        Ok(Some(
            Option::<u64>::deserialize(d)?.map(Duration::from_millis),
        ))
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
/// Any status but Completed can go to Cancelled (work given up on purpose); a reset (to
/// Pending) reopens a cancelled or failed task.
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
    /// Given up on purpose; its dependents stay blocked until they drop the dependency or
    /// it is reopened (reset to pending).
    Cancelled,
}

impl TaskStatus {
    /// All statuses, in display order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::Blocked,
        TaskStatus::InProgress,
        TaskStatus::Review,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
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
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// The one-byte code of the snapshot's entry table (`docs/protocol.md`).
    pub(crate) fn code(self) -> u8 {
        match self {
            TaskStatus::Pending => 0,
            TaskStatus::Blocked => 1,
            TaskStatus::InProgress => 2,
            TaskStatus::Review => 3,
            TaskStatus::Completed => 4,
            TaskStatus::Failed => 5,
            TaskStatus::Cancelled => 6,
        }
    }

    /// The status of a code written by [`code`](Self::code).
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        TaskStatus::ALL.into_iter().find(|s| s.code() == c)
    }

    /// Failed or cancelled: a dependency in this status keeps its dependents blocked with a
    /// reason.
    pub fn is_given_up(self) -> bool {
        matches!(self, TaskStatus::Failed | TaskStatus::Cancelled)
    }

    /// No more work is expected: completed or cancelled.
    pub fn is_closed(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Cancelled)
    }

    /// Whether someone is working on the task (in progress or in review).
    pub fn is_active(self) -> bool {
        matches!(self, TaskStatus::InProgress | TaskStatus::Review)
    }

    /// Why `self -> to` is not allowed, or `None` when it is (for a task whose dependencies
    /// are all completed; the tracker checks dependencies separately). Every backend uses
    /// this one state machine.
    pub fn refuse(self, to: TaskStatus) -> Option<&'static str> {
        use TaskStatus::*;
        match (self, to) {
            (Completed, _) => Some("a completed task is final"),
            (a, b) if a == b => Some("it is already in that status"),
            (_, Blocked) => Some("blocked is set by the tracker, from dependencies"),
            (Blocked, Failed | Cancelled) => None,
            (Blocked, _) => Some("its dependencies are not all completed"),
            (Pending, InProgress | Failed | Cancelled) => None,
            (Pending, _) => Some("a pending task must be started first"),
            (InProgress, Review | Completed | Failed | Pending | Cancelled) => None,
            (Review, Completed | Failed | InProgress | Pending | Cancelled) => None,
            (Failed, Pending | Cancelled) => None,
            (Failed, _) => Some("a failed task must be retried (set to pending) first"),
            (Cancelled, Pending) => None,
            (Cancelled, _) => Some("a cancelled task must be reopened (reset to pending) first"),
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
            "canceled" => "cancelled",
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
                    "\"{s}\" is not one of pending, blocked, in_progress, review, completed, failed, cancelled"
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
            (Pending, Cancelled),
            (Blocked, Cancelled),
            (InProgress, Cancelled),
            (Review, Cancelled),
            (Failed, Cancelled),
            (Cancelled, Pending),
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
