//! `maos task gantt --format ...` and `maos task graph --format svg|html`: the pictures of the
//! plan drawn by maos-track (SVG, or a self-contained HTML page around it).

use clap::ValueEnum;
use maos_coordination::core::now_ms;
use maos_coordination::track::{self, Task};

use crate::task::GraphFormat;

/// The formats of `maos task gantt`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum GanttFormat {
    /// Mermaid source.
    Mermaid,
    /// A picture (SVG), drawn natively.
    Svg,
    /// A self-contained HTML page with the SVG picture.
    Html,
}

fn title(what: &str, tasks: &[Task]) -> String {
    let done = tasks
        .iter()
        .filter(|t| t.status == track::TaskStatus::Completed)
        .count();
    format!("maos {what}: {done}/{} tasks completed", tasks.len())
}

/// Prints the Gantt chart of `tasks` in `format`.
pub(crate) fn gantt(tasks: &[Task], format: GanttFormat) -> anyhow::Result<()> {
    let now = now_ms();
    match format {
        GanttFormat::Mermaid => out!("{}", track::gantt(tasks, now)),
        GanttFormat::Svg => out!("{}", track::gantt_svg(tasks, now)),
        GanttFormat::Html => out!(
            "{}",
            track::html_page(&title("Gantt chart", tasks), &track::gantt_svg(tasks, now))
        ),
    }
}

/// Prints the dependency graph of `tasks` as a picture (the text formats are in `task.rs`).
pub(crate) fn graph(tasks: &[Task], format: GraphFormat) -> anyhow::Result<()> {
    match format {
        GraphFormat::Html => out!(
            "{}",
            track::html_page(&title("task graph", tasks), &track::graph_svg(tasks))
        ),
        _ => out!("{}", track::graph_svg(tasks)),
    }
}
