//! Native SVG (and self-contained HTML) pictures of the task graph: the Gantt chart and the
//! dependency graph, drawn in Rust with no JavaScript and no Mermaid runtime.
//!
//! Both pictures group tasks by agent (one lane per assignee, `unassigned` last), colour them
//! by status, and draw the critical path in a distinct colour (red outlines and edges). Every
//! task is one `<g class="task" data-id="...">` element with a `<title>` (its full name, id
//! and status) that browsers show on hover. Every piece of text is escaped for XML, and
//! control characters are shown as escapes (`\u{7}`), so any task name gives well-formed XML.
//!
//! [`critical_window`] picks the part of a very large graph worth drawing: the critical path and its
//! neighbourhood.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write as _;

use crate::graph::{self, Adjacency, Rows as _, weight_ms};
use crate::visual::status_colour;
use crate::{Task, TaskStatus};

/// The colour of the critical path (outlines, edges, labels).
pub const CRITICAL_COLOUR: &str = "#d62728";
/// The colour of the "now" line of the Gantt chart.
const NOW_COLOUR: &str = "#1f77b4";
const FONT: &str = "font-family=\"ui-sans-serif, system-ui, sans-serif\"";

/// Escapes `s` for XML text and attribute values: `&`, `<`, `>`, `"`, `'` become entities;
/// control characters (which XML 1.0 forbids or normalises away) become visible escapes.
pub fn xml_escape(s: &str) -> String {
    let s = maos_core::escape_controls(s);
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Not characters in XML 1.0 (never produced by escape_controls, but a name may
            // hold them).
            '\u{FFFE}' | '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// At most `n` characters of `s` (control characters escaped), with `…` when cut.
fn clip(s: &str, n: usize) -> String {
    maos_core::excerpt(s, n.saturating_sub(1).max(1))
}

const UNASSIGNED: &str = "unassigned";

/// Lanes: agents sorted by name, `unassigned` last, each with its task indexes.
fn lanes(tasks: &[Task]) -> Vec<(String, Vec<usize>)> {
    let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut unassigned = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        match &t.assigned_to {
            Some(a) => by.entry(a.to_string()).or_default().push(i),
            None => unassigned.push(i),
        }
    }
    let mut out: Vec<(String, Vec<usize>)> = by.into_iter().collect();
    if !unassigned.is_empty() {
        out.push((UNASSIGNED.to_string(), unassigned));
    }
    out
}

/// The critical path of `tasks` as a set of indexes and the set of its consecutive edges.
fn critical(adj: &Adjacency, tasks: &[Task]) -> (HashSet<usize>, HashSet<(usize, usize)>) {
    let (path, _) = graph::critical_path(&adj.deps, &adj.dependents, |i| weight_ms(&tasks[i]));
    let nodes = path.iter().map(|&i| i as usize).collect();
    let edges = path
        .windows(2)
        .map(|w| (w[0] as usize, w[1] as usize))
        .collect();
    (nodes, edges)
}

/// A topological order that never fails: nodes on or behind a cycle come last, in index
/// order (the store refuses cycles; this only keeps a damaged graph drawable).
fn order(adj: &Adjacency, n: usize) -> Vec<usize> {
    match graph::topo_order(&adj.deps, &adj.dependents) {
        Ok(o) => o.into_iter().map(|i| i as usize).collect(),
        Err(()) => {
            let mut indeg: Vec<usize> = (0..n).map(|i| adj.deps.row(i).len()).collect();
            let mut out: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
            let mut head = 0;
            while head < out.len() {
                let v = out[head];
                head += 1;
                for &w in adj.dependents.row(v) {
                    indeg[w as usize] -= 1;
                    if indeg[w as usize] == 0 {
                        out.push(w as usize);
                    }
                }
            }
            let seen: HashSet<usize> = out.iter().copied().collect();
            out.extend((0..n).filter(|i| !seen.contains(i)));
            out
        }
    }
}

fn legend(s: &mut String, x: f64, y: f64) {
    let items: [(&str, &str); 6] = [
        ("pending", status_colour(TaskStatus::Pending)),
        ("blocked", status_colour(TaskStatus::Blocked)),
        ("in progress", status_colour(TaskStatus::InProgress)),
        ("review", status_colour(TaskStatus::Review)),
        ("completed", status_colour(TaskStatus::Completed)),
        ("failed", status_colour(TaskStatus::Failed)),
    ];
    let mut cx = x;
    for (label, colour) in items {
        let _ = write!(
            s,
            "<rect x=\"{cx}\" y=\"{}\" width=\"14\" height=\"14\" rx=\"3\" fill=\"{colour}\" stroke=\"#888\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{label}</text>",
            y - 11.0,
            cx + 18.0,
            y
        );
        cx += 30.0 + 7.0 * label.len() as f64;
    }
    let _ = write!(
        s,
        "<rect x=\"{cx}\" y=\"{}\" width=\"14\" height=\"14\" rx=\"3\" fill=\"#fff\" stroke=\"{CRITICAL_COLOUR}\" stroke-width=\"2.5\"/>\
         <text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{CRITICAL_COLOUR}\">critical path</text>",
        y - 11.0,
        cx + 18.0,
        y
    );
}

fn svg_open(s: &mut String, w: f64, h: f64, class: &str, title: &str) {
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"{class}\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" {FONT} font-size=\"12\" role=\"img\">\
         <title>{}</title>\
         <rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>",
        xml_escape(title)
    );
}

fn task_title(t: &Task, crit: bool) -> String {
    let mut s = format!("{} · {}", t.id, t.status);
    if let Some(a) = &t.assigned_to {
        let _ = write!(s, " · @{a}");
    }
    let _ = write!(s, " · est. {}", maos_core::human_ms(weight_ms(t)));
    if crit {
        s.push_str(" · critical path");
    }
    format!("{}&#10;{}", xml_escape(&t.name), xml_escape(&s))
}

// ---------------------------------------------------------------------------------------------
// Dependency graph

const NODE_W: f64 = 168.0;
const NODE_H: f64 = 36.0;
const GAP_X: f64 = 48.0;
const GAP_Y: f64 = 10.0;
const LANE_LABEL_W: f64 = 150.0;
const LANE_PAD: f64 = 10.0;
const TOP: f64 = 44.0;

/// The dependency graph of `tasks` as SVG: one column per dependency depth, one horizontal
/// lane per agent, an arrow from each dependency to its dependent, nodes coloured by status,
/// the critical path outlined and its edges drawn in [`CRITICAL_COLOUR`]. Dependencies on
/// tasks outside `tasks` are not drawn.
pub fn graph_svg(tasks: &[Task]) -> String {
    let n = tasks.len();
    let adj = Adjacency::of(tasks);
    let (crit, crit_edges) = critical(&adj, tasks);
    let ord = order(&adj, n);
    // Depth: the longest chain of dependencies before a task.
    let mut depth = vec![0usize; n];
    for &v in &ord {
        depth[v] = adj
            .deps
            .row(v)
            .iter()
            .map(|&d| depth[d as usize] + 1)
            .max()
            .unwrap_or(0);
    }
    let columns = depth.iter().max().map_or(0, |d| d + 1);
    let lanes = lanes(tasks);
    // Rows: inside a lane, each column's tasks are stacked; tasks are ordered by the mean row
    // of their dependencies (fewer crossings), column by column.
    let mut lane_of = vec![0usize; n];
    for (l, (_, idxs)) in lanes.iter().enumerate() {
        for &i in idxs {
            lane_of[i] = l;
        }
    }
    let mut buckets: Vec<Vec<Vec<usize>>> = vec![vec![Vec::new(); columns]; lanes.len()];
    for &v in &ord {
        buckets[lane_of[v]][depth[v]].push(v);
    }
    let lane_rows: Vec<usize> = buckets
        .iter()
        .map(|cols| cols.iter().map(Vec::len).max().unwrap_or(0).max(1))
        .collect();
    let mut lane_top = Vec::with_capacity(lanes.len());
    let mut y = TOP;
    for &rows in &lane_rows {
        lane_top.push(y);
        y += LANE_PAD * 2.0 + rows as f64 * (NODE_H + GAP_Y) - GAP_Y;
    }
    let height = y + 10.0;
    let width = LANE_LABEL_W + columns.max(1) as f64 * (NODE_W + GAP_X) + 10.0;
    let mut pos = vec![(0.0f64, 0.0f64); n];
    let mut placed = vec![false; n];
    for c in 0..columns {
        for (l, cols) in buckets.iter_mut().enumerate() {
            let col = &mut cols[c];
            let key = |v: usize| -> f64 {
                let ys: Vec<f64> = adj
                    .deps
                    .row(v)
                    .iter()
                    .filter(|&&d| placed[d as usize])
                    .map(|&d| pos[d as usize].1)
                    .collect();
                if ys.is_empty() {
                    f64::MAX
                } else {
                    ys.iter().sum::<f64>() / ys.len() as f64
                }
            };
            let mut keyed: Vec<(f64, usize)> = col.iter().map(|&v| (key(v), v)).collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (row, &(_, v)) in keyed.iter().enumerate() {
                pos[v] = (
                    LANE_LABEL_W + c as f64 * (NODE_W + GAP_X),
                    lane_top[l] + LANE_PAD + row as f64 * (NODE_H + GAP_Y),
                );
                placed[v] = true;
            }
        }
    }

    let mut s = String::with_capacity(512 + n * 600);
    svg_open(
        &mut s,
        width,
        height,
        "maos-graph",
        &format!("task dependency graph ({n} tasks)"),
    );
    s.push_str(
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
         <path d=\"M0,0 L10,5 L0,10 z\" fill=\"#8a8a8a\"/></marker>\
         <marker id=\"arrow-crit\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">",
    );
    let _ = write!(
        s,
        "<path d=\"M0,0 L10,5 L0,10 z\" fill=\"{CRITICAL_COLOUR}\"/></marker></defs>"
    );
    legend(&mut s, 10.0, 24.0);
    // Lanes.
    for (l, (agent, idxs)) in lanes.iter().enumerate() {
        let top = lane_top[l];
        let h = LANE_PAD * 2.0 + lane_rows[l] as f64 * (NODE_H + GAP_Y) - GAP_Y;
        let fill = if l % 2 == 0 { "#f6f8fa" } else { "#eef1f4" };
        let _ = write!(
            s,
            "<g class=\"lane\" data-agent=\"{a}\"><rect x=\"0\" y=\"{top}\" width=\"{width}\" height=\"{h}\" fill=\"{fill}\"/>\
             <text x=\"8\" y=\"{}\" font-weight=\"bold\">{}</text>\
             <text x=\"8\" y=\"{}\" fill=\"#555\" font-size=\"11\">{} task{}</text></g>",
            top + 20.0,
            xml_escape(&clip(agent, 20)),
            top + 35.0,
            idxs.len(),
            if idxs.len() == 1 { "" } else { "s" },
            a = xml_escape(agent),
        );
    }
    // Edges: ordinary ones first, the critical path on top.
    let edge = |s: &mut String, d: usize, v: usize, is_crit: bool| {
        let (x1, y1) = (pos[d].0 + NODE_W, pos[d].1 + NODE_H / 2.0);
        let (x2, y2) = (pos[v].0, pos[v].1 + NODE_H / 2.0);
        let mid = (x1 + x2) / 2.0;
        let (colour, w, marker, class) = if is_crit {
            (CRITICAL_COLOUR, 2.5, "arrow-crit", "edge crit")
        } else {
            ("#9a9a9a", 1.0, "arrow", "edge")
        };
        let _ = write!(
            s,
            "<path class=\"{class}\" d=\"M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}\" \
             fill=\"none\" stroke=\"{colour}\" stroke-width=\"{w}\" marker-end=\"url(#{marker})\"/>"
        );
    };
    for v in 0..n {
        for &d in adj.deps.row(v) {
            if !crit_edges.contains(&(d as usize, v)) {
                edge(&mut s, d as usize, v, false);
            }
        }
    }
    for &(d, v) in &crit_edges {
        edge(&mut s, d, v, true);
    }
    // Nodes.
    for (i, t) in tasks.iter().enumerate() {
        let (x, y) = pos[i];
        let is_crit = crit.contains(&i);
        let (stroke, sw) = if is_crit {
            (CRITICAL_COLOUR, 2.5)
        } else {
            ("#777", 1.0)
        };
        let _ = write!(
            s,
            "<g class=\"task{}\" data-id=\"{}\" data-status=\"{}\"><title>{}</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"6\" fill=\"{}\" stroke=\"{stroke}\" stroke-width=\"{sw}\"/>\
             <text x=\"{}\" y=\"{}\"{}>{}</text>\
             <text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#555\">{} · {}</text></g>",
            if is_crit { " crit" } else { "" },
            xml_escape(t.id.as_str()),
            t.status,
            task_title(t, is_crit),
            status_colour(t.status),
            x + 7.0,
            y + 15.0,
            if is_crit { " font-weight=\"bold\"" } else { "" },
            xml_escape(&clip(&t.name, 24)),
            x + 7.0,
            y + 29.0,
            t.status,
            maos_core::human_ms(weight_ms(t)),
        );
    }
    s.push_str("</svg>\n");
    s
}

// ---------------------------------------------------------------------------------------------
// Gantt chart

const ROW_H: f64 = 22.0;
const LABEL_W: f64 = 280.0;
const CHART_W: f64 = 1100.0;

/// When each task runs on the chart: finished tasks as they ran, active ones from their start
/// for their estimate (at least until now), unstarted ones after their dependencies end (not
/// before `now`) for their estimate.
fn schedule(tasks: &[Task], adj: &Adjacency, now: u64) -> Vec<(u64, u64)> {
    let n = tasks.len();
    let mut span = vec![(0u64, 0u64); n];
    for v in order(adj, n) {
        let t = &tasks[v];
        let w = weight_ms(t);
        span[v] = match (t.status, t.started_at) {
            (TaskStatus::Completed, st) => {
                let end = t.completed_at.unwrap_or(t.updated_at);
                let start = st.unwrap_or(end.saturating_sub(w)).min(end);
                (start, end)
            }
            (TaskStatus::Failed, st) => {
                let end = t.updated_at.max(st.unwrap_or(0));
                (st.unwrap_or(end), end)
            }
            (s, Some(st)) if s.is_active() => (st, st.saturating_add(w).max(now)),
            _ => {
                let after = adj
                    .deps
                    .row(v)
                    .iter()
                    .map(|&d| span[d as usize].1)
                    .max()
                    .unwrap_or(0);
                let start = after.max(now);
                (start, start.saturating_add(w))
            }
        };
    }
    span
}

/// A tick step (ms) that gives about ten ticks over `span` ms.
fn tick_step(span: u64) -> u64 {
    const STEPS: [u64; 18] = [
        1_000,
        5_000,
        10_000,
        30_000,
        60_000,
        300_000,
        600_000,
        1_800_000,
        3_600_000,
        7_200_000,
        21_600_000,
        43_200_000,
        86_400_000,
        172_800_000,
        604_800_000,
        2_592_000_000,
        7_776_000_000,
        31_536_000_000,
    ];
    STEPS
        .into_iter()
        .find(|&s| span / s <= 12)
        .unwrap_or(31_536_000_000)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A UTC time label for a tick, as precise as the step needs.
fn tick_label(ms: u64, step: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if step >= 86_400_000 {
        let (y, mo, d) = civil(days);
        format!("{y:04}-{mo:02}-{d:02}")
    } else if step >= 60_000 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// The Gantt chart of `tasks` at time `now` (ms since the Unix epoch) as SVG: one section per
/// agent, one row per task, bars coloured by status and placed by when they ran or will run: finished
/// tasks as they ran, active ones for their estimate from their start, the rest after their
/// dependencies; the critical path outlined in [`CRITICAL_COLOUR`], a line at `now`, times in
/// UTC.
pub fn gantt_svg(tasks: &[Task], now: u64) -> String {
    let n = tasks.len();
    let adj = Adjacency::of(tasks);
    let (crit, _) = critical(&adj, tasks);
    let span = schedule(tasks, &adj, now);
    let t0 = span.iter().map(|s| s.0).min().unwrap_or(now).min(now);
    let t1 = span
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(now)
        .max(now)
        .max(t0 + 1);
    let scale = CHART_W / (t1 - t0) as f64;
    let xof = |ms: u64| LABEL_W + (ms.saturating_sub(t0)) as f64 * scale;
    let lanes = lanes(tasks);
    let rows = n + lanes.len();
    let top = TOP + 22.0;
    let height = top + rows as f64 * ROW_H + 16.0;
    let width = LABEL_W + CHART_W + 20.0;

    let mut s = String::with_capacity(1024 + n * 500);
    svg_open(
        &mut s,
        width,
        height,
        "maos-gantt",
        &format!("task Gantt chart ({n} tasks)"),
    );
    legend(&mut s, 10.0, 24.0);
    // Axis: ticks and labels (UTC).
    let step = tick_step(t1 - t0);
    let mut tick = t0.div_ceil(step) * step;
    while tick <= t1 {
        let x = xof(tick);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#e2e2e2\"/>\
             <text x=\"{x:.1}\" y=\"{}\" font-size=\"10\" fill=\"#555\" text-anchor=\"middle\">{}</text>",
            top - 4.0,
            height - 12.0,
            top - 8.0,
            tick_label(tick, step)
        );
        tick += step;
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#555\">times in UTC</text>",
        LABEL_W - 70.0,
        top - 8.0
    );
    let mut row = 0usize;
    for (l, (agent, idxs)) in lanes.iter().enumerate() {
        let y = top + row as f64 * ROW_H;
        let fill = if l % 2 == 0 { "#f6f8fa" } else { "#eef1f4" };
        let _ = write!(
            s,
            "<g class=\"lane\" data-agent=\"{}\"><rect x=\"0\" y=\"{y}\" width=\"{width}\" height=\"{}\" fill=\"{fill}\"/>\
             <text x=\"6\" y=\"{}\" font-weight=\"bold\">{} <tspan fill=\"#555\" font-weight=\"normal\" font-size=\"11\">({} task{})</tspan></text></g>",
            xml_escape(agent),
            ROW_H * (idxs.len() + 1) as f64,
            y + 15.0,
            xml_escape(&clip(agent, 32)),
            idxs.len(),
            if idxs.len() == 1 { "" } else { "s" },
        );
        row += 1;
        let mut sorted = idxs.clone();
        sorted.sort_by_key(|&i| (span[i].0, span[i].1, i));
        for i in sorted {
            let t = &tasks[i];
            let y = top + row as f64 * ROW_H;
            let is_crit = crit.contains(&i);
            let (a, b) = span[i];
            let x = xof(a);
            let w = (xof(b) - x).max(2.0);
            let (stroke, sw) = if is_crit {
                (CRITICAL_COLOUR, 2.5)
            } else {
                ("#777", 0.8)
            };
            let _ = write!(
                s,
                "<g class=\"task{}\" data-id=\"{}\" data-status=\"{}\"><title>{}</title>\
                 <text x=\"14\" y=\"{}\"{}>{}</text>\
                 <rect x=\"{x:.1}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" rx=\"3\" fill=\"{}\" stroke=\"{stroke}\" stroke-width=\"{sw}\"/></g>",
                if is_crit { " crit" } else { "" },
                xml_escape(t.id.as_str()),
                t.status,
                task_title(t, is_crit),
                y + 15.0,
                if is_crit {
                    format!(" fill=\"{CRITICAL_COLOUR}\" font-weight=\"bold\"")
                } else {
                    String::new()
                },
                xml_escape(&clip(&t.name, 40)),
                y + 4.0,
                ROW_H - 8.0,
                status_colour(t.status),
            );
            row += 1;
        }
    }
    let nx = xof(now);
    let _ = write!(
        s,
        "<line class=\"now\" x1=\"{nx:.1}\" y1=\"{}\" x2=\"{nx:.1}\" y2=\"{}\" stroke=\"{NOW_COLOUR}\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>\
         <text x=\"{:.1}\" y=\"{}\" font-size=\"10\" fill=\"{NOW_COLOUR}\">now</text>",
        top - 2.0,
        height - 24.0,
        nx + 3.0,
        top + 8.0
    );
    s.push_str("</svg>\n");
    s
}

// ---------------------------------------------------------------------------------------------
// HTML and windows

/// A self-contained HTML page (no script, no external asset) showing `svg` under `title`; it
/// is also well-formed XML.
pub fn html_page(title: &str, svg: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>{t}</title>\
         <style>body{{margin:0;font-family:ui-sans-serif,system-ui,sans-serif;background:#fff;color:#1b1f23}}\
         h1{{font-size:18px;margin:12px 16px}}.scroll{{overflow:auto;padding:0 16px 16px}}\
         svg{{display:block}}</style></head>\n<body><h1>{t}</h1><div class=\"scroll\">\n{svg}</div></body></html>\n",
        t = xml_escape(title)
    )
}

/// The tasks worth drawing when there are too many: at most `limit` of them, the critical path
/// first (a run of `limit` tasks of it around its first unfinished task when the path alone
/// is longer), then the tasks nearest to it along dependencies, breadth first. Returns every
/// task when there are at most `limit`, in their original order.
pub fn critical_window(tasks: &[Task], limit: usize) -> Vec<Task> {
    if tasks.len() <= limit {
        return tasks.to_vec();
    }
    let adj = Adjacency::of(tasks);
    let (path, _) = graph::critical_path(&adj.deps, &adj.dependents, |i| weight_ms(&tasks[i]));
    let path: Vec<usize> = path.into_iter().map(|i| i as usize).collect();
    let mut keep: Vec<bool> = vec![false; tasks.len()];
    let mut count = 0usize;
    let mut queue = VecDeque::new();
    let seed: &[usize] = if path.len() > limit {
        let first_open = path
            .iter()
            .position(|&i| tasks[i].status != TaskStatus::Completed)
            .unwrap_or(path.len() - 1);
        let start = first_open.saturating_sub(limit / 2).min(path.len() - limit);
        &path[start..start + limit]
    } else {
        &path
    };
    for &i in seed {
        keep[i] = true;
        count += 1;
        queue.push_back(i);
    }
    // Breadth first from the path; when its component is exhausted, go on from other tasks:
    // active ones first, then unfinished ones, then the rest.
    let mut rest = (0..tasks.len())
        .filter(|&i| tasks[i].status.is_active())
        .chain((0..tasks.len()).filter(|&i| tasks[i].status != TaskStatus::Completed))
        .chain(0..tasks.len());
    while count < limit {
        let Some(v) = queue.pop_front().or_else(|| {
            let i = rest.by_ref().find(|&i| !keep[i])?;
            keep[i] = true;
            count += 1;
            Some(i)
        }) else {
            break;
        };
        for &w in adj.deps.row(v).iter().chain(adj.dependents.row(v)) {
            if count >= limit {
                break;
            }
            let w = w as usize;
            if !keep[w] {
                keep[w] = true;
                count += 1;
                queue.push_back(w);
            }
        }
    }
    tasks
        .iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(t, _)| t.clone())
        .collect()
}

#[cfg(test)]
mod tests;
