//! maos-track: the shared task graph of a maos workspace: tasks with dependencies, atomic
//! claims, progress reports, critical paths and Gantt charts.
//!
//! Start at [`TaskTracker`]: every process that opens the same workspace sees the same tasks.
//! [`ProgressVisualizer`] renders them.
//!
//! # Limitations
//! - Single host (kernel locks).
//! - Tasks are never deleted.

mod error;
mod fence;
mod graph;
mod notify;
mod store;
mod task;
mod tracker;
mod visual;

pub use error::Error;
pub use fence::FencingToken;
pub use graph::{DEFAULT_ESTIMATE, critical_path_of};
pub use notify::{FALLBACK_INTERVAL, TOPIC, TaskEvent, TaskWatch};
pub use store::Change;
pub use task::{Task, TaskStatus};
pub use tracker::{Options, TaskTracker, Update};
pub use visual::{
    ProgressReport, ProgressVisualizer, StatusCounts, dot, gantt, mermaid_escape,
    mermaid_flowchart, report, summary, table,
};

#[cfg(test)]
mod tests;
