//! maos-track: the shared task graph of a maos workspace: tasks with dependencies and owners,
//! atomic claims, a ready queue, the history of every task, progress reports, critical paths
//! and Gantt charts.
//!
//! Start at [`TaskTracker`]: every process that opens the same workspace sees the same tasks
//! (they live in `.maos/tasks/`, see `docs/protocol.md`). A [`Task`] starts
//! [`Blocked`](TaskStatus::Blocked) while a dependency is unfinished and becomes
//! [`Pending`](TaskStatus::Pending) when the last one completes; [`TaskTracker::claim`] hands
//! the best ready task (priority, then the longest chain of work behind it) to one agent,
//! atomically. A task assigned to an agent is that agent's: only it moves the task, unless
//! another acts with [`Ownership::Override`] (recorded). [`TaskTracker::show`] gives a task
//! with its [`Event`] history; [`TaskTracker::amend`], [`TaskTracker::cancel`] and
//! [`TaskTracker::comment`] change, give up and annotate tasks. [`ProgressVisualizer`] writes
//! `.maos/progress.json` and renders Gantt charts; [`dot`], [`mermaid_flowchart`] and
//! [`table`] render the graph; [`gantt_svg`] and [`graph_svg`] draw it as SVG (wrapped by
//! [`html_page`] into a self-contained page). [`doctor`] checks (and repairs) the store's files.
//!
//! How it works: every write takes one tracker-wide kernel lock (with a timeout), catches up
//! with the store, validates and applies its records, appends them to a log, releases the
//! lock and fsyncs (group commit: writers waiting for the lock share flushes; a write is
//! returned only once durable). A
//! reader reads a snapshot by position (an indexed file: ids sorted for lookups, the ready
//! list in claim order, fixed-width entries) and replays the few records since it, so a
//! command costs what it touches, not what the store holds; a writer compacts every 512
//! records. Replay validates each record as the writer did and refuses what no writer could
//! have written. What changed is published on the [`TOPIC`] broadcast topic of maos-comm (ids
//! and statuses, sent as the acting agent); [`TaskTracker::watch`] wakes on file events.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use maos_core::{AgentId, Workspace};
//! use maos_track::{EventKind, Options, Ownership, ProgressVisualizer, Task, TaskStatus, TaskTracker};
//!
//! let dir = tempfile::tempdir()?;
//! let ws = Workspace::init(dir.path())?;
//! let me = AgentId::new("architect")?;
//! // Acting as `architect`: the tasks it claims are its own to move.
//! let tracker = TaskTracker::open_with(&ws, Options::default().agent(me.clone()))?;
//!
//! let design = tracker
//!     .create_task(Task { name: "Design: API".into(), estimated_duration: Some(Duration::from_secs(1800)), ..Default::default() })
//!     .await?;
//! let backend = tracker
//!     .create_task(Task { name: "Implement backend".into(), dependencies: vec![design.clone()], ..Default::default() })
//!     .await?;
//! assert_eq!(tracker.get(&backend).await?.unwrap().status, TaskStatus::Blocked);
//!
//! let task = tracker.claim(&me).await?.expect("the design is ready");
//! assert_eq!(task.id, design);
//! tracker.comment(&design, "REST, JSON".into()).await?;
//! tracker.update_status(&design, TaskStatus::Completed, Some("see docs/api.md".into())).await?;
//! assert_eq!(tracker.get(&backend).await?.unwrap().status, TaskStatus::Pending);
//!
//! // Another agent may not move the architect's task without forcing it.
//! let other = TaskTracker::open_with(&ws, Options::default().agent(AgentId::new("intruder")?))?;
//! assert!(other.cancel(&design, None, Ownership::Respect).await.is_err());
//!
//! let shown = tracker.show(&design).await?.unwrap();
//! assert!(matches!(shown.history[1].what, EventKind::Claimed { .. }));
//! let report = ProgressVisualizer::new(tracker.clone()).generate_progress_report().await?;
//! assert_eq!(report.completion_percentage, 50.0);
//! assert!(ws.maos_dir().join("progress.json").exists());
//! # Ok(()) }
//! ```
//!
//! # Limitations
//! - Single host: writers serialise on a kernel lock (`flock`), which NFS does not provide
//!   reliably, and watchers rely on inotify.
//! - All writes are serialised on one lock: fine at agent scale (hundreds of writes per
//!   second), not a database. A process stopped while holding it (for microseconds) makes
//!   writers fail at their timeout, naming it.
//! - A compaction (every 512 writes) rewrites the snapshot: one pass over the graph, paid by
//!   the writer that crosses the threshold. The previous generation is kept for readers, so
//!   the store holds about two snapshots.
//! - Between compactions the ready order's tie-breaker (the chain of work behind a task) sees
//!   new tasks one level up only; each compaction makes it exact again.
//! - Tasks are never deleted; names, ids and histories are kept forever.
//! - Claims of dead agents are released only for agents registered in the agent registry
//!   with a process on this host (liveness [`Dead`](maos_core::Liveness::Dead)); an agent
//!   that never registered keeps its claims until its owner or a forcing agent resets them.
//!   Claims look for dead agents at most once a second across all processes (each look reads
//!   every agent's record), and always when nothing else is ready: a dead agent's task may
//!   wait up to that second (or the next claim) while other tasks are handed out.
//! - Ownership is checked against the agent a process says it is: agents of the same user
//!   are trusted (an agent can claim another's name); the log records who acted.
//! - Publishing on the `tasks` topic is best effort and happens after the write, outside the
//!   lock: consumers order [`TaskEvent`]s by `seq`, and the log stays the truth.
//! - A store written by an older maos (format 1, `snapshot.json`) is refused, not migrated.

mod error;
mod fence;
mod graph;
mod history;
mod notify;
mod storage;
mod store;
mod svg;
mod task;
mod tracker;
mod visual;

pub use error::Error;
pub use fence::FencingToken;
pub use graph::{DEFAULT_ESTIMATE, critical_path_of};
pub use history::{Event, EventKind, TaskDetails};
pub use notify::{Change, FALLBACK_INTERVAL, TOPIC, TaskEvent, TaskWatch};
pub use storage::{FileTasks, MAX_HISTORY, TaskStore, page_of};
pub use store::doctor::doctor;
pub use svg::{CRITICAL_COLOUR, critical_window, gantt_svg, graph_svg, html_page, xml_escape};
pub use task::{
    Edit, MAX_DEPENDENCIES, MAX_LABEL_BYTES, MAX_LABELS, MAX_METADATA, MAX_METADATA_VALUE_BYTES,
    MAX_NAME_BYTES, MAX_TEXT_BYTES, Task, TaskStatus, check_text,
};
pub use tracker::{
    Amendment, CriticalPath, Options, Ownership, Page, Query, ReadyPage, TaskTracker, Update,
};
pub use visual::{
    ProgressReport, ProgressVisualizer, StatusCounts, counts_line, dot, gantt, mermaid_escape,
    mermaid_flowchart, report, summary, table,
};

#[cfg(test)]
mod tests;

/// Runs a blocking store operation on tokio's blocking pool: the one way this crate's async
/// methods call their `_blocking` twins, and the one place where a background task that
/// panicked or was cancelled becomes an [`Error`] (as `tokio::fs` does with `asyncify`).
pub(crate) async fn asyncify<F, T>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(Error::Join(e)),
    }
}
