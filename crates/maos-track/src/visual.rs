//! [`ProgressVisualizer`]: progress reports, Mermaid Gantt charts, dependency graphs (DOT and
//! Mermaid) and text tables, all computed from a list of tasks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use maos_core::{TaskId, escape_controls, fsx, human_ms, now_ms};
use serde::{Deserialize, Serialize};

use crate::graph::{self, Adjacency, weight_ms};
use crate::{Error, Task, TaskStatus, TaskTracker};

/// Counts of tasks per status, for the whole graph or one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// All tasks.
    pub total: usize,
    /// Pending (ready).
    pub pending: usize,
    /// Blocked by dependencies.
    pub blocked: usize,
    /// In progress.
    pub in_progress: usize,
    /// In review.
    pub review: usize,
    /// Completed.
    pub completed: usize,
    /// Failed.
    pub failed: usize,
    /// Cancelled.
    #[serde(default)]
    pub cancelled: usize,
}

impl StatusCounts {
    fn add(&mut self, s: TaskStatus) {
        self.total += 1;
        match s {
            TaskStatus::Pending => self.pending += 1,
            TaskStatus::Blocked => self.blocked += 1,
            TaskStatus::InProgress => self.in_progress += 1,
            TaskStatus::Review => self.review += 1,
            TaskStatus::Completed => self.completed += 1,
            TaskStatus::Failed => self.failed += 1,
            TaskStatus::Cancelled => self.cancelled += 1,
        }
    }

    /// The counts of `tasks`.
    pub fn of(tasks: &[Task]) -> Self {
        let mut c = Self::default();
        tasks.iter().for_each(|t| c.add(t.status));
        c
    }

    /// Counts from the snapshot's per-status-code array.
    pub(crate) fn from_codes(codes: &[u64; 7]) -> Self {
        let n = |s: TaskStatus| usize::try_from(codes[usize::from(s.code())]).unwrap_or(usize::MAX);
        Self {
            total: codes
                .iter()
                .map(|&c| usize::try_from(c).unwrap_or(usize::MAX))
                .sum(),
            pending: n(TaskStatus::Pending),
            blocked: n(TaskStatus::Blocked),
            in_progress: n(TaskStatus::InProgress),
            review: n(TaskStatus::Review),
            completed: n(TaskStatus::Completed),
            failed: n(TaskStatus::Failed),
            cancelled: n(TaskStatus::Cancelled),
        }
    }

    /// Completed share in percent of the tasks that are not cancelled; 0 when there are
    /// none (never NaN).
    pub fn percentage(&self) -> f64 {
        let wanted = self.total - self.cancelled;
        if wanted == 0 {
            0.0
        } else {
            self.completed as f64 * 100.0 / wanted as f64
        }
    }

    /// Tasks still to be done: pending, blocked, in progress or in review.
    pub fn open(&self) -> usize {
        self.pending + self.blocked + self.in_progress + self.review
    }
}

/// The progress report of the design, written to `.maos/progress.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressReport {
    /// When it was made (ms since the Unix epoch).
    pub timestamp: u64,
    /// All tasks.
    pub total_tasks: usize,
    /// Completed tasks.
    pub completed_tasks: usize,
    /// Tasks in progress.
    pub in_progress_tasks: usize,
    /// Blocked tasks.
    pub blocked_tasks: usize,
    /// Pending (ready) tasks.
    pub pending_tasks: usize,
    /// Tasks in review.
    pub review_tasks: usize,
    /// Failed tasks.
    pub failed_tasks: usize,
    /// Cancelled tasks.
    #[serde(default)]
    pub cancelled_tasks: usize,
    /// Completed share in percent of the tasks not cancelled; 0 with none.
    pub completion_percentage: f64,
    /// Counts per agent (`unassigned` for tasks without an assignee).
    pub task_breakdown: BTreeMap<String, StatusCounts>,
    /// The critical path over all tasks by estimated duration, dependencies first.
    pub critical_path: Vec<TaskId>,
    /// The names along the critical path.
    pub critical_path_names: Vec<String>,
    /// Its total estimated duration in ms.
    pub critical_path_ms: u64,
    /// The estimated work left along the longest chain of unfinished tasks, in ms (completed
    /// and cancelled tasks count 0, active ones their estimate minus the time spent, at
    /// least 0).
    pub remaining_ms: u64,
    /// The unfinished tasks of that chain, dependencies first: where `remaining_ms` comes
    /// from (it may differ from the critical path once some of its tasks are done).
    #[serde(default)]
    pub remaining_path: Vec<TaskId>,
    /// Their names.
    #[serde(default)]
    pub remaining_path_names: Vec<String>,
    /// Estimated completion time (ms since the Unix epoch); `None` when nothing is left.
    pub eta: Option<u64>,
}

/// Renders the tasks of a [`TaskTracker`]: the design's report, Gantt chart, dependency
/// graphs and a text table.
#[derive(Debug, Clone)]
pub struct ProgressVisualizer {
    tracker: TaskTracker,
    output_path: PathBuf,
}

impl ProgressVisualizer {
    /// A visualizer writing its report to `.maos/progress.json`.
    pub fn new(tracker: TaskTracker) -> Self {
        let output_path = tracker.workspace().maos_dir().join("progress.json");
        Self {
            tracker,
            output_path,
        }
    }

    /// Writes the report to `path` instead.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn output_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.output_path = path.into();
        self
    }

    /// Builds the report and writes it atomically to the output path (blocking).
    pub fn generate_progress_report_blocking(&self) -> Result<ProgressReport, Error> {
        let _span = tracing::debug_span!("progress_report").entered();
        let tasks = self.tracker.list_blocking()?;
        let report = report(&tasks, now_ms());
        fsx::write_json_replace(&self.output_path, &report)?;
        Ok(report)
    }

    /// Builds the report and writes it atomically to the output path.
    pub async fn generate_progress_report(&self) -> Result<ProgressReport, Error> {
        let this = self.clone();
        crate::asyncify(move || this.generate_progress_report_blocking()).await
    }

    /// The Mermaid Gantt chart (blocking).
    pub fn generate_gantt_chart_blocking(&self) -> Result<String, Error> {
        Ok(gantt(&self.tracker.list_blocking()?, now_ms()))
    }

    /// The Mermaid Gantt chart.
    pub async fn generate_gantt_chart(&self) -> Result<String, Error> {
        let this = self.clone();
        crate::asyncify(move || this.generate_gantt_chart_blocking()).await
    }
}

/// The progress report of `tasks` at time `now` (ms since the Unix epoch).
pub fn report(tasks: &[Task], now: u64) -> ProgressReport {
    let mut all = StatusCounts::default();
    let mut by_agent: BTreeMap<String, StatusCounts> = BTreeMap::new();
    for t in tasks {
        all.add(t.status);
        let key = t
            .assigned_to
            .as_ref()
            .map_or_else(|| "unassigned".to_string(), |a| a.to_string());
        by_agent.entry(key).or_default().add(t.status);
    }
    let adj = Adjacency::of(tasks);
    let (path, total) = graph::critical_path(&adj.deps, &adj.dependents, |i| weight_ms(&tasks[i]));
    let (rpath, remaining) =
        graph::critical_path(&adj.deps, &adj.dependents, |i| remaining_ms(&tasks[i], now));
    let rpath: Vec<usize> = rpath
        .into_iter()
        .map(|i| i as usize)
        .filter(|&i| !tasks[i].status.is_closed())
        .collect();
    let left = all.open() + all.failed;
    ProgressReport {
        timestamp: now,
        total_tasks: all.total,
        completed_tasks: all.completed,
        in_progress_tasks: all.in_progress,
        blocked_tasks: all.blocked,
        pending_tasks: all.pending,
        review_tasks: all.review,
        failed_tasks: all.failed,
        cancelled_tasks: all.cancelled,
        completion_percentage: all.percentage(),
        task_breakdown: by_agent,
        critical_path: path.iter().map(|&i| tasks[i as usize].id.clone()).collect(),
        critical_path_names: path
            .iter()
            .map(|&i| tasks[i as usize].name.clone())
            .collect(),
        critical_path_ms: total,
        remaining_ms: remaining,
        remaining_path: rpath.iter().map(|&i| tasks[i].id.clone()).collect(),
        remaining_path_names: rpath.iter().map(|&i| tasks[i].name.clone()).collect(),
        eta: (left > 0).then_some(now.saturating_add(remaining)),
    }
}

fn remaining_ms(t: &Task, now: u64) -> u64 {
    match t.status {
        TaskStatus::Completed | TaskStatus::Cancelled => 0,
        TaskStatus::InProgress | TaskStatus::Review => {
            let spent = t.started_at.map_or(0, |s| now.saturating_sub(s));
            weight_ms(t).saturating_sub(spent)
        }
        _ => weight_ms(t),
    }
}

/// Makes `s` safe as Mermaid text: `:`, `#` and `;` (which Mermaid reads as syntax) become
/// entity codes (`#58;`, `#35;`, `#59;`) that Mermaid renders as the characters; line breaks
/// become spaces.
pub fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ':' => out.push_str("#58;"),
            '#' => out.push_str("#35;"),
            ';' => out.push_str("#59;"),
            '"' => out.push_str("#quot;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    if out.trim().is_empty() {
        out = "(unnamed)".into();
    }
    out
}

fn mermaid_duration(ms: u64) -> String {
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}ms", ms.max(1))
    }
}

/// A Mermaid Gantt chart of `tasks`: one section per agent, `done`/`active`/`crit` markers
/// (crit = on the critical path or failed), unstarted tasks placed `after` their dependencies,
/// bars sized by the actual time spent (finished tasks) or the estimate.
pub fn gantt(tasks: &[Task], now: u64) -> String {
    let adj = Adjacency::of(tasks);
    let (path, left) = graph::critical_path(&adj.deps, &adj.dependents, |i| weight_ms(&tasks[i]));
    let crit: HashSet<u32> = path.into_iter().collect();
    let known: HashSet<&TaskId> = tasks.iter().map(|t| &t.id).collect();
    let axis = axis_format(gantt_span_ms(tasks, now, left));
    let mut sections: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        let key = t
            .assigned_to
            .as_ref()
            .map_or_else(|| "unassigned".to_string(), |a| a.to_string());
        sections.entry(key).or_default().push(i);
    }
    let mut s =
        format!("gantt\n    title Task Progress\n    dateFormat x\n    axisFormat {axis}\n");
    for (agent, idxs) in sections {
        let _ = writeln!(s, "    section {}", mermaid_escape(&agent));
        for i in idxs {
            let t = &tasks[i];
            let mut tags: Vec<&str> = Vec::new();
            match t.status {
                TaskStatus::Completed => tags.push("done"),
                TaskStatus::InProgress | TaskStatus::Review => tags.push("active"),
                _ => {}
            }
            if crit.contains(&(i as u32)) || t.status == TaskStatus::Failed {
                tags.push("crit");
            }
            let (start, dur) = match (t.status, t.started_at) {
                (TaskStatus::Completed, Some(st)) => (
                    st.to_string(),
                    t.completed_at.unwrap_or(st).saturating_sub(st),
                ),
                (_, Some(st)) => (st.to_string(), weight_ms(t)),
                _ => {
                    let deps: Vec<&str> = t
                        .dependencies
                        .iter()
                        .filter(|d| known.contains(d))
                        .map(TaskId::as_str)
                        .collect();
                    if deps.is_empty() {
                        (now.to_string(), weight_ms(t))
                    } else {
                        (format!("after {}", deps.join(" ")), weight_ms(t))
                    }
                }
            };
            let mut data = tags.join(", ");
            if !data.is_empty() {
                data.push_str(", ");
            }
            let _ = writeln!(
                s,
                "    {} :{}{}, {}, {}",
                mermaid_escape(&t.name),
                data,
                t.id,
                start,
                mermaid_duration(dur)
            );
        }
    }
    s
}

/// How long the chart spans, in ms: from the first start to the last end (actual for
/// finished tasks; estimated for the others, with `left`, the critical path's length, as the
/// bound for what has not started).
fn gantt_span_ms(tasks: &[Task], now: u64, left: u64) -> u64 {
    let first = tasks
        .iter()
        .filter_map(|t| t.started_at)
        .min()
        .unwrap_or(now);
    let mut last = first;
    for t in tasks {
        let end = match (t.status, t.started_at) {
            (TaskStatus::Completed, Some(st)) => t.completed_at.unwrap_or(st),
            (_, Some(st)) => st.saturating_add(weight_ms(t)),
            _ => now.saturating_add(left),
        };
        last = last.max(end);
    }
    last.saturating_sub(first)
}

/// The axis labels for a chart spanning `span_ms`: milliseconds for a sub-second run (bars of
/// a few ms are otherwise drawn on an axis whose every tick reads the same minute), seconds,
/// hours and minutes, or days.
fn axis_format(span_ms: u64) -> &'static str {
    match span_ms {
        0..2_000 => "%S.%L",
        2_000..120_000 => "%M:%S",
        120_000..172_800_000 => "%H:%M",
        _ => "%m-%d",
    }
}

pub(crate) fn status_colour(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Pending => "#ffffff",
        TaskStatus::Blocked => "#dddddd",
        TaskStatus::InProgress => "#aee3ff",
        TaskStatus::Review => "#ffe9a8",
        TaskStatus::Completed => "#b8f0b8",
        TaskStatus::Failed => "#ffb3b3",
        TaskStatus::Cancelled => "#eeeeee",
    }
}

fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// The dependency graph in Graphviz DOT: an edge `dependency -> task`, nodes coloured by
/// status.
pub fn dot(tasks: &[Task]) -> String {
    let known: HashSet<&TaskId> = tasks.iter().map(|t| &t.id).collect();
    let mut s = String::from(
        "digraph tasks {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\"];\n",
    );
    for t in tasks {
        let _ = writeln!(
            s,
            "  \"{}\" [label=\"{}\\n{}\", fillcolor=\"{}\"];",
            t.id,
            dot_escape(&t.name),
            t.status,
            status_colour(t.status)
        );
    }
    for t in tasks {
        for d in t.dependencies.iter().filter(|d| known.contains(d)) {
            let _ = writeln!(s, "  \"{d}\" -> \"{}\";", t.id);
        }
    }
    s.push_str("}\n");
    s
}

/// The dependency graph as a Mermaid flowchart: an arrow from each dependency to its
/// dependent, one class per status.
pub fn mermaid_flowchart(tasks: &[Task]) -> String {
    let index: HashMap<&TaskId, usize> =
        tasks.iter().enumerate().map(|(i, t)| (&t.id, i)).collect();
    let mut s = String::from("flowchart LR\n");
    for (i, t) in tasks.iter().enumerate() {
        let _ = writeln!(
            s,
            "    n{i}[\"{} ({})\"]:::{}",
            mermaid_escape(&t.name),
            t.status,
            t.status
        );
    }
    for (i, t) in tasks.iter().enumerate() {
        for d in &t.dependencies {
            if let Some(j) = index.get(d) {
                let _ = writeln!(s, "    n{j} --> n{i}");
            }
        }
    }
    for st in TaskStatus::ALL {
        let _ = writeln!(s, "    classDef {st} fill:{}", status_colour(st));
    }
    s
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// A table for terminals: one row per task, then a summary line.
pub fn table(tasks: &[Task]) -> String {
    let mut s = format!(
        "{:<14} {:<11} {:<8} {:<16} {:>6} {:>4}  {}\n",
        "ID", "STATUS", "PRIO", "AGENT", "EST", "DEPS", "NAME"
    );
    let mut counts = StatusCounts::default();
    for t in tasks {
        counts.add(t.status);
        let prio = format!("{:?}", t.priority).to_lowercase();
        let _ = writeln!(
            s,
            "{:<14} {:<11} {:<8} {:<16} {:>6} {:>4}  {}",
            t.id.as_str(),
            t.status,
            prio,
            short(t.assigned_to.as_ref().map_or("-", |a| a.as_str()), 16),
            t.estimated_duration
                .map_or_else(|| "-".into(), |d| human_ms(graph::saturating_ms(d))),
            t.dependencies.len(),
            short(&escape_controls(&t.name), 60)
        );
    }
    let _ = writeln!(s, "{}", counts_line(&counts));
    s
}

/// `N tasks: C completed (P%), ...`: the summary line under a table.
pub fn counts_line(counts: &StatusCounts) -> String {
    let mut s = format!(
        "{} tasks: {} completed ({:.1}%), {} in progress, {} review, {} pending, {} blocked, {} failed",
        counts.total,
        counts.completed,
        counts.percentage(),
        counts.in_progress,
        counts.review,
        counts.pending,
        counts.blocked,
        counts.failed
    );
    if counts.cancelled > 0 {
        let _ = write!(s, ", {} cancelled", counts.cancelled);
    }
    s
}

/// A short human summary of a report (for `maos task report` and `watch`).
pub fn summary(r: &ProgressReport) -> String {
    let mut s = format!(
        "{}/{} tasks completed ({:.1}%): {} in progress, {} review, {} pending, {} blocked, {} failed",
        r.completed_tasks,
        r.total_tasks,
        r.completion_percentage,
        r.in_progress_tasks,
        r.review_tasks,
        r.pending_tasks,
        r.blocked_tasks,
        r.failed_tasks
    );
    if r.cancelled_tasks > 0 {
        let _ = write!(s, ", {} cancelled", r.cancelled_tasks);
    }
    s.push('\n');
    let chain = |names: &[String]| {
        names
            .iter()
            .map(|n| escape_controls(n).into_owned())
            .collect::<Vec<_>>()
            .join(" -> ")
    };
    if !r.critical_path_names.is_empty() {
        let _ = writeln!(
            s,
            "critical path ({}): {}",
            human_ms(r.critical_path_ms),
            chain(&r.critical_path_names)
        );
    }
    if r.eta.is_some() {
        if r.remaining_path_names.is_empty() {
            let _ = writeln!(s, "remaining: {}", human_ms(r.remaining_ms));
        } else {
            let _ = writeln!(
                s,
                "remaining: {} along {}",
                human_ms(r.remaining_ms),
                chain(&r.remaining_path_names)
            );
        }
    }
    for (agent, c) in &r.task_breakdown {
        let _ = writeln!(
            s,
            "  {:<16} {}/{} completed, {} active, {} pending/blocked, {} failed",
            escape_controls(agent),
            c.completed,
            c.total,
            c.in_progress + c.review,
            c.pending + c.blocked,
            c.failed
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tasks() -> Vec<Task> {
        let a = Task::new("Design: API #1").estimate(Duration::from_secs(1800));
        let mut b = Task::new("Backend; part \"2\"").after(a.id.clone());
        b.assigned_to = Some(maos_core::AgentId::new("be").unwrap());
        let mut a = a;
        a.status = TaskStatus::Completed;
        a.started_at = Some(1_000);
        a.completed_at = Some(61_000);
        vec![a, b]
    }

    #[test]
    fn zero_tasks_report_is_not_nan() {
        let r = report(&[], 5);
        assert_eq!(r.completion_percentage, 0.0);
        assert_eq!(r.eta, None);
        assert!(serde_json::to_string(&r).is_ok());
    }

    #[test]
    fn report_counts_and_eta() {
        let t = tasks();
        let r = report(&t, 100_000);
        assert_eq!(r.total_tasks, 2);
        assert_eq!(r.completed_tasks, 1);
        assert_eq!(r.completion_percentage, 50.0);
        assert_eq!(r.critical_path, vec![t[0].id.clone(), t[1].id.clone()]);
        assert_eq!(r.critical_path_ms, 1_800_000 + 3_600_000);
        assert_eq!(r.remaining_ms, 3_600_000);
        assert_eq!(r.eta, Some(3_700_000));
        assert_eq!(r.task_breakdown["be"].total, 1);
    }

    /// Issue 13: when the critical path is all done, the remaining estimate comes from another
    /// chain, and the report names that chain.
    #[test]
    fn the_remaining_estimate_names_its_chain() {
        let h = Duration::from_secs(3600);
        let mut a = Task::new("Long done").estimate(h * 5);
        a.status = TaskStatus::Completed;
        a.started_at = Some(0);
        a.completed_at = Some(1);
        let c = Task::new("C").estimate(h);
        let d = Task::new("D").estimate(h).after(c.id.clone());
        let r = report(&[a, c, d], 10);
        assert_eq!(r.critical_path_names, ["Long done"]);
        assert_eq!(r.remaining_ms, 2 * 3_600_000);
        assert_eq!(r.remaining_path_names, ["C", "D"]);
        let text = summary(&r);
        assert!(text.contains("remaining: 2h00m along C -> D"), "{text}");
    }

    #[test]
    fn gantt_escapes_and_uses_after() {
        let t = tasks();
        let g = gantt(&t, 0);
        assert!(g.contains("Design#58; API #35;1 :done, crit,"), "{g}");
        assert!(g.contains(&format!("after {}", t[0].id)), "{g}");
        assert!(g.contains("section be"));
        assert!(g.contains("Backend#59; part #quot;2#quot;"), "{g}");
        for line in g.lines().skip(4) {
            if line.trim_start().starts_with("section") {
                continue;
            }
            assert_eq!(line.matches(':').count(), 1, "{line}");
        }
    }

    #[test]
    fn the_gantt_axis_follows_the_span() {
        assert_eq!(axis_format(450), "%S.%L");
        assert_eq!(axis_format(15_000), "%M:%S");
        assert_eq!(axis_format(3 * 3_600_000), "%H:%M");
        assert_eq!(axis_format(10 * 86_400_000), "%m-%d");
        // A run of a few hundred ms: every task done, bars of a few ms.
        let mut t = tasks();
        for (i, task) in t.iter_mut().enumerate() {
            task.status = TaskStatus::Completed;
            task.started_at = Some(1_000 + 100 * i as u64);
            task.completed_at = Some(1_050 + 100 * i as u64);
        }
        let g = gantt(&t, 2_000);
        assert!(g.contains("axisFormat %S.%L"), "{g}");
        assert!(g.contains(", 50ms"), "{g}");
    }

    #[test]
    fn graphs_render() {
        let t = tasks();
        let d = dot(&t);
        assert!(d.contains(&format!("\"{}\" -> \"{}\"", t[0].id, t[1].id)));
        assert!(d.contains("\\\"2\\\""));
        let m = mermaid_flowchart(&t);
        assert!(m.contains("n0 --> n1"));
        assert!(table(&t).contains("50.0%"));
    }
}
