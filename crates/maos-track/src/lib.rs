//! maos-track: the shared task graph of a maos workspace: tasks with dependencies, atomic
//! claims, a ready queue, progress reports, critical paths and Gantt charts.
//!
//! Start at [`TaskTracker`]: every process that opens the same workspace sees the same tasks
//! (they live in `.maos/tasks/`, see `docs/protocol.md`). A [`Task`] starts
//! [`Blocked`](TaskStatus::Blocked) while a dependency is unfinished and becomes
//! [`Pending`](TaskStatus::Pending) when the last one completes; [`TaskTracker::claim`] hands
//! the best ready task (priority, then the longest chain of work behind it) to one agent,
//! atomically. [`ProgressVisualizer`] writes `.maos/progress.json` and renders Gantt charts;
//! [`dot`], [`mermaid_flowchart`] and [`table`] render the graph; [`gantt_svg`] and
//! [`graph_svg`] draw it as SVG (wrapped by [`html_page`] into a self-contained page).
//!
//! How it works: every write takes one tracker-wide kernel lock, catches up with the store,
//! validates, appends small fsynced records to an append-only log and applies them to the
//! in-memory graph (a reverse dependency index makes completing a task cost O(its
//! dependents)). Readers load a snapshot once and then read only the log's new tail; now and
//! then a writer compacts the log into a new snapshot. Status changes are published on the
//! [`TOPIC`] broadcast topic of maos-comm; [`TaskTracker::watch`] wakes on file events.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use maos_core::{AgentId, Workspace};
//! use maos_track::{ProgressVisualizer, Task, TaskStatus, TaskTracker};
//!
//! let dir = tempfile::tempdir()?;
//! let ws = Workspace::init(dir.path())?;
//! let tracker = TaskTracker::open(&ws)?;
//!
//! let design = tracker
//!     .create_task(Task { name: "Design: API".into(), estimated_duration: Some(Duration::from_secs(1800)), ..Default::default() })
//!     .await?;
//! let backend = tracker
//!     .create_task(Task { name: "Implement backend".into(), dependencies: vec![design.clone()], ..Default::default() })
//!     .await?;
//! assert_eq!(tracker.get(&backend).await?.unwrap().status, TaskStatus::Blocked);
//!
//! let me = AgentId::new("architect")?;
//! let task = tracker.claim(&me).await?.expect("the design is ready");
//! assert_eq!(task.id, design);
//! tracker.update_status(&design, TaskStatus::Completed, Some("see docs/api.md".into())).await?;
//! assert_eq!(tracker.get(&backend).await?.unwrap().status, TaskStatus::Pending);
//!
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
//!   second), not a database.
//! - Every process keeps the whole graph in memory; a fresh process loads the full snapshot
//!   (about 15 ms for 10,000 tasks in a release build).
//! - Tasks are never deleted; names and ids are kept forever.
//! - Claims of dead agents are released only for agents registered in the agent registry
//!   with a process on this host (liveness [`Dead`](maos_core::Liveness::Dead)); an agent
//!   that never registered keeps its claims until someone resets them.
//! - Publishing on the `tasks` topic is best effort and happens after the write, outside the
//!   lock: consumers order [`TaskEvent`]s by `seq`, and the log stays the truth.

#![warn(clippy::return_self_not_must_use, clippy::await_holding_invalid_type)]

mod error;
mod fence;
mod graph;
mod notify;
mod store;
mod svg;
mod task;
mod tracker;
mod visual;

pub use error::Error;
pub use fence::FencingToken;
pub use graph::{DEFAULT_ESTIMATE, critical_path_of};
pub use notify::{FALLBACK_INTERVAL, TOPIC, TaskEvent, TaskWatch};
pub use store::Change;
pub use svg::{CRITICAL_COLOUR, critical_window, gantt_svg, graph_svg, html_page, xml_escape};
pub use task::{Task, TaskStatus};
pub use tracker::{Options, TaskTracker, Update};
pub use visual::{
    ProgressReport, ProgressVisualizer, StatusCounts, dot, gantt, mermaid_escape,
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
