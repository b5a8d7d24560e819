//! The pictures: the escaping and the helpers, then well-formed XML whatever the task names,
//! every task drawn and the critical path marked, at 10 and at 1,000 tasks (parsed with
//! roxmltree).

use std::collections::HashSet;
use std::time::Duration;

use maos_core::{AgentId, TaskId};

use super::*;
use crate::critical_path_of;

#[test]
fn escape_covers_markup_quotes_and_controls() {
    assert_eq!(
        xml_escape("<script>&\"'\u{7}\n"),
        "&lt;script&gt;&amp;&quot;&#39;\\u{7}\\n"
    );
    assert_eq!(xml_escape("plain é"), "plain é");
}

#[test]
fn civil_dates_and_ticks() {
    assert_eq!(civil(0), (1970, 1, 1));
    assert_eq!(civil(19_723), (2024, 1, 1));
    assert_eq!(civil(-1), (1969, 12, 31));
    assert_eq!(tick_label(3_661_000, 1_000), "01:01:01");
    assert_eq!(tick_label(86_400_000 * 365, 86_400_000), "1971-01-01");
    assert_eq!(tick_step(60_000), 5_000);
    assert!(tick_step(u64::MAX) > 0);
}

#[test]
fn window_keeps_the_critical_path() {
    let mut tasks: Vec<Task> = Vec::new();
    for i in 0..50 {
        let mut t = Task::new(format!("t{i}")).estimate(Duration::from_secs(60));
        if i > 0 && i % 5 != 0 {
            t.dependencies.push(tasks[i - 1].id.clone());
        }
        tasks.push(t);
    }
    // A long chain: 0 <- 1 <- ... as the critical path.
    let mut chain: Vec<Task> = Vec::new();
    for i in 0..20 {
        let mut t = Task::new(format!("c{i}")).estimate(Duration::from_secs(600));
        if let Some(p) = chain.last() {
            t.dependencies.push(p.id.clone());
        }
        chain.push(t);
    }
    tasks.extend(chain.iter().cloned());
    let w = critical_window(&tasks, 30);
    assert_eq!(w.len(), 30);
    for c in &chain {
        assert!(w.iter().any(|t| t.id == c.id), "{} missing", c.name);
    }
    let w = critical_window(&tasks, 10);
    assert_eq!(w.len(), 10);
    assert!(w.iter().all(|t| t.name.starts_with('c')));
    assert_eq!(critical_window(&tasks, 1000).len(), tasks.len());
}

#[test]
fn cyclic_input_is_still_drawn() {
    let mut a = Task::new("a");
    let mut b = Task::new("b");
    a.dependencies.push(b.id.clone());
    b.dependencies.push(a.id.clone());
    let tasks = vec![a, b];
    let g = graph_svg(&tasks);
    assert_eq!(g.matches("class=\"task").count(), 2);
    let g = gantt_svg(&tasks, 0);
    assert_eq!(g.matches("class=\"task").count(), 2);
}

const HOSTILE: [&str; 8] = [
    "<script>alert(1)</script>",
    "a & b && c; &amp;",
    "\"double\" and 'single' quotes",
    "bell \u{7} nul \u{0} esc \u{1b}[31m del \u{7f} c1 \u{85}",
    "line\nbreak\r\ttab",
    "]]> <![CDATA[ x ]]>",
    "<!-- comment --> <?pi?>",
    "\u{FFFE}\u{FFFF} non-characters",
];

/// `n` tasks over 4 agents (and some unassigned), each depending on up to two of the 30
/// before it, with mixed statuses; the first names and every eighth are hostile.
fn tasks(n: usize) -> Vec<Task> {
    let mut out: Vec<Task> = Vec::with_capacity(n);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m.max(1)
    };
    let now = 1_700_000_000_000u64;
    for i in 0..n {
        let name = if i < HOSTILE.len() || i % 8 == 0 {
            format!("{} #{i}", HOSTILE[i % HOSTILE.len()])
        } else {
            format!("task {i}: implement part {i}")
        };
        let mut t = Task::new(name).estimate(Duration::from_secs(60 * (1 + rnd(90))));
        if rnd(5) > 0 {
            t.assigned_to = Some(AgentId::new(format!("agent-{}", rnd(4))).unwrap());
        }
        if i > 0 {
            for _ in 0..rnd(3) {
                let lo = i.saturating_sub(30);
                let j = lo + rnd((i - lo) as u64) as usize;
                let dep = out[j].id.clone();
                if !t.dependencies.contains(&dep) {
                    t.dependencies.push(dep);
                }
            }
        }
        // Earlier tasks are done, some are running, the rest wait.
        t.status = if i < n / 3 {
            t.started_at = Some(now - 3_600_000 + i as u64 * 1000);
            t.completed_at = Some(now - 1_800_000 + i as u64 * 1000);
            TaskStatus::Completed
        } else if i < n / 3 + 3 {
            t.started_at = Some(now - 60_000);
            TaskStatus::InProgress
        } else if i == n / 3 + 3 {
            t.updated_at = now - 5_000;
            TaskStatus::Failed
        } else if t.dependencies.is_empty() {
            TaskStatus::Pending
        } else {
            TaskStatus::Blocked
        };
        out.push(t);
    }
    out
}

/// Parses `xml` (an HTML page's `<!DOCTYPE html>` allowed), failing on any error.
fn parse(xml: &str) -> roxmltree::Document<'_> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(xml, opts)
        .unwrap_or_else(|e| panic!("not well-formed XML: {e}"))
}

/// Parses `xml` and returns the ids of every drawn task and of those marked critical.
fn drawn(xml: &str) -> (Vec<String>, HashSet<String>) {
    let doc = parse(xml);
    let mut ids = Vec::new();
    let mut crit = HashSet::new();
    for node in doc.descendants().filter(|n| n.is_element()) {
        let name = node.tag_name().name();
        assert!(
            !matches!(name, "script" | "foreignObject" | "iframe" | "object"),
            "unexpected <{name}> element: a name was not escaped"
        );
        for a in node.attributes() {
            assert!(
                !a.name().starts_with("on"),
                "event handler attribute {} found",
                a.name()
            );
        }
        if let Some(id) = node.attribute("data-id") {
            let classes: Vec<&str> = node.attribute("class").unwrap_or("").split(' ').collect();
            assert!(classes.contains(&"task"), "{classes:?}");
            if classes.contains(&"crit") {
                crit.insert(id.to_string());
            }
            ids.push(id.to_string());
        }
    }
    (ids, crit)
}

fn check(n: usize) {
    let tasks = tasks(n);
    let want: HashSet<String> = tasks.iter().map(|t| t.id.to_string()).collect();
    let (path, _) = critical_path_of(&tasks);
    let path: HashSet<String> = path.iter().map(TaskId::to_string).collect();
    assert!(!path.is_empty());
    let now = 1_700_000_000_000u64;
    for (kind, svg) in [
        ("graph", graph_svg(&tasks)),
        ("gantt", gantt_svg(&tasks, now)),
    ] {
        let (ids, crit) = drawn(&svg);
        assert_eq!(ids.len(), n, "{kind}: every task drawn once");
        assert_eq!(
            ids.iter().cloned().collect::<HashSet<_>>(),
            want,
            "{kind}: the drawn ids are the tasks' ids"
        );
        assert_eq!(crit, path, "{kind}: the critical path is marked");
        // Hostile names survive as text: the parsed text holds them (controls escaped).
        let doc = parse(&svg);
        let text: String = doc
            .descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .collect();
        assert!(text.contains("<script>alert(1)</script>"), "{kind}");
        assert!(text.contains("\"double\" and 'single' quotes"), "{kind}");
        assert!(text.contains("bell \\u{7} nul \\u{0}"), "{kind}");
        assert!(!text.contains('\u{7}') && !text.contains('\u{0}') && !text.contains('\u{1b}'));
        // Lanes: one per agent plus unassigned.
        let lanes = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("lane"))
            .count();
        let agents: HashSet<String> = tasks
            .iter()
            .map(|t| {
                t.assigned_to
                    .as_ref()
                    .map_or("unassigned".into(), |a| a.to_string())
            })
            .collect();
        assert_eq!(lanes, agents.len(), "{kind}: one lane per agent");
        // The HTML page around it is self-contained and well-formed too.
        let page = html_page(&format!("<{kind}> & \"plan\""), &svg);
        assert!(!page.contains("<script"), "{kind}: no script");
        assert!(
            !page.contains(" src=") && !page.contains("href="),
            "{kind}: nothing fetched"
        );
        let (ids, _) = drawn(&page);
        assert_eq!(ids.len(), n);
    }
}

#[test]
fn ten_tasks() {
    check(10);
}

#[test]
fn a_thousand_tasks() {
    check(1000);
}

#[test]
fn no_tasks_is_still_a_picture() {
    for svg in [graph_svg(&[]), gantt_svg(&[], 0)] {
        let (ids, _) = drawn(&svg);
        assert!(ids.is_empty());
    }
}
