//! The demo's live view on stderr. On a terminal: a frame redrawn in place, with one row per
//! agent (what it does and the locks it holds), the progress bar and the latest events. When
//! stderr is a file or a pipe: one line per event and per change of the progress.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use maos_coordination::lock::{LockStore, Snapshot};
use maos_coordination::track::{Task, TaskStatus};

use super::{AgentEvent, EventKind};

/// How the frame is laid out.
const AGENT_WIDTH: usize = 12;

pub(crate) struct View {
    tty: bool,
    started: Instant,
    /// `started` in ms since the Unix epoch.
    started_ms: u64,
    header: String,
    planned: HashSet<String>,
    names: HashMap<String, String>,
    order: Vec<String>,
    rows: HashMap<String, String>,
    /// Tasks whose outcome an event already told.
    told: HashSet<String>,
    /// The event log: (ms since the Unix epoch, line).
    log: Vec<(u64, String)>,
    locks: Box<dyn LockStore>,
    drawn_lines: usize,
    last_progress: String,
}

/// Progress counted against the plan: resolution tasks the merge adds later are shown as
/// added work beside it, so the percentage never goes backwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) planned: usize,
    pub(crate) planned_done: usize,
    pub(crate) added: usize,
    pub(crate) added_done: usize,
    pub(crate) active: usize,
    pub(crate) failed: usize,
}

impl Progress {
    pub(crate) fn of(tasks: &[Task], planned: &HashSet<String>) -> Self {
        let mut p = Progress {
            planned: 0,
            planned_done: 0,
            added: 0,
            added_done: 0,
            active: 0,
            failed: 0,
        };
        for t in tasks {
            let done = t.status == TaskStatus::Completed;
            if planned.contains(t.id.as_str()) {
                p.planned += 1;
                p.planned_done += usize::from(done);
            } else {
                p.added += 1;
                p.added_done += usize::from(done);
            }
            p.active += usize::from(t.status.is_active());
            p.failed += usize::from(t.status == TaskStatus::Failed);
        }
        p
    }

    /// The share of the plan done, in percent.
    pub(crate) fn percent(&self) -> f64 {
        if self.planned == 0 {
            0.0
        } else {
            self.planned_done as f64 * 100.0 / self.planned as f64
        }
    }

    /// `[#########-------]  56% of the plan (9/16) +3 added for the merge (1 done), 2 active`
    pub(crate) fn line(&self, width: usize) -> String {
        let filled = (self.percent() / 100.0 * width as f64).round() as usize;
        let mut s = format!(
            "[{}{}] {:3.0}% of the plan ({}/{})",
            "#".repeat(filled.min(width)),
            "-".repeat(width - filled.min(width)),
            self.percent(),
            self.planned_done,
            self.planned
        );
        if self.added > 0 {
            s.push_str(&format!(
                "  +{} added by the merge ({} done)",
                self.added, self.added_done
            ));
        }
        s.push_str(&format!(", {} active", self.active));
        if self.failed > 0 {
            s.push_str(&format!(", {} FAILED", self.failed));
        }
        s
    }
}

impl View {
    pub(crate) fn new(
        locks: Box<dyn LockStore>,
        header: String,
        agents: Vec<String>,
        planned: &[Task],
    ) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            started_ms: maos_coordination::core::now_ms(),
            header,
            planned: planned.iter().map(|t| t.id.to_string()).collect(),
            names: planned
                .iter()
                .map(|t| (t.id.to_string(), t.name.clone()))
                .collect(),
            rows: agents
                .iter()
                .map(|a| (a.clone(), "starting".to_string()))
                .collect(),
            order: agents,
            told: HashSet::new(),
            log: Vec::new(),
            locks,
            drawn_lines: 0,
            last_progress: String::new(),
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Learns the names of tasks added later (resolution tasks).
    pub(crate) fn learn(&mut self, tasks: &[Task]) {
        for t in tasks {
            if !self.names.contains_key(t.id.as_str()) {
                self.names.insert(t.id.to_string(), t.name.clone());
            }
        }
    }

    fn task_name(&self, ev: &AgentEvent) -> String {
        ev.task
            .as_ref()
            .map(|t| self.names.get(t).cloned().unwrap_or_else(|| t.clone()))
            .unwrap_or_default()
    }

    /// An agent's event: its row, and a line in the event log for what others should know.
    pub(crate) fn event(&mut self, ev: &AgentEvent) {
        let task = self.task_name(ev);
        let a = &ev.agent;
        let d = &ev.detail;
        let (row, line): (Option<String>, Option<String>) = match ev.event {
            EventKind::Ready => (Some("ready".into()), Some(format!("{a} started: {d}"))),
            EventKind::Claimed => (Some(format!("> {d}")), None),
            EventKind::Doing if task.is_empty() => (Some(d.clone()), None),
            EventKind::Doing => (Some(format!("{task}: {d}")), None),
            EventKind::Committed => (Some(format!("{task}: committed {d}")), None),
            // A task whose outcome was already told (resolved, merged) is not told twice.
            EventKind::Completed if ev.task.as_ref().is_some_and(|t| self.told.contains(t)) => {
                (Some(format!("done: {task}")), None)
            }
            EventKind::Completed => (
                Some(format!("done: {task}")),
                Some(format!("{a} finished {task}: {d}")),
            ),
            EventKind::Closed => (Some(format!("done: {task}")), None),
            EventKind::Failed => (
                Some(format!("FAILED: {task}")),
                Some(format!("{a} FAILED \"{task}\": {d}")),
            ),
            EventKind::ApiRequested => (
                Some(format!("{task}: waiting for the backend's answer")),
                Some(format!("{a} {d}")),
            ),
            EventKind::ApiAnswered => (None, Some(format!("{a} answered {d}"))),
            EventKind::ApiReceived if ev.task.is_none() => (None, None),
            EventKind::ApiReceived => (Some(format!("{task}: got the API ({d})")), None),
            EventKind::LockWaiting => (
                Some(format!("{task}: waits for {d}")),
                Some(format!("{a} waits for {d}")),
            ),
            EventKind::DeadlockVictim => (
                Some(format!("{task}: deadlock victim, backs off")),
                Some(format!("{a} backs off: {d}")),
            ),
            EventKind::Resolved => (
                Some(format!("{task}: resolved")),
                Some(format!("{a} resolved {d}")),
            ),
            EventKind::Merged => (
                Some(format!("{task}: {d}")),
                Some(format!("{a} merged: {d}")),
            ),
            EventKind::MergeChecked => (Some(format!("{task}: {d}")), Some(format!("{a}: {d}"))),
            EventKind::Exiting => (Some("done: every task is completed".into()), {
                let s: Option<super::coord::Stats> = serde_json::from_str(d).ok();
                s.filter(|s| s.mcp_calls > 0 || s.hook_calls > 0).map(|s| {
                    format!(
                        "{a} ended its session: {} MCP tool calls, {} hook calls, {} edits \
                         allowed by PreToolUse",
                        s.mcp_calls, s.hook_calls, s.edits_allowed
                    )
                })
            }),
        };
        if matches!(
            ev.event,
            EventKind::Resolved | EventKind::Merged | EventKind::MergeChecked
        ) && let Some(t) = &ev.task
        {
            self.told.insert(t.clone());
        }
        if let Some(r) = row {
            self.rows.insert(a.clone(), r);
        }
        if let Some(l) = line {
            self.note_at(l, ev.at);
        }
    }

    /// A line in the event log, now.
    pub(crate) fn note(&mut self, text: String) {
        self.note_at(text, 0);
    }

    /// A line in the event log for something that happened at `at` (ms since the Unix epoch;
    /// 0: now).
    pub(crate) fn note_at(&mut self, text: String, at: u64) {
        let at = if at == 0 {
            maos_coordination::core::now_ms()
        } else {
            at
        };
        let since = Duration::from_millis(at.saturating_sub(self.started_ms));
        let line = format!("[{:5.1}s] {text}", since.as_secs_f64());
        if !self.tty {
            eprintln!("{line}");
        }
        // In time order: an agent's event can reach us after what followed it.
        let i = self.log.partition_point(|(t, _)| *t <= at);
        self.log.insert(i, (at, line));
    }

    /// Redraws the frame (terminal), or prints the progress when it changed.
    pub(crate) fn render(&mut self, tasks: &[Task]) -> anyhow::Result<()> {
        self.learn(tasks);
        let progress = Progress::of(tasks, &self.planned);
        if !self.tty {
            let line = progress.line(24);
            if line != self.last_progress {
                eprintln!("[{:5.1}s] {line}", self.started.elapsed().as_secs_f64());
                self.last_progress = line;
            }
            return Ok(());
        }
        let snapshot = self.locks.snapshot().ok();
        let (cols, rows) = terminal_size();
        let frame = self.frame(&progress, snapshot.as_ref(), cols, rows);
        let mut err = std::io::stderr().lock();
        let mut out = String::new();
        if self.drawn_lines > 0 {
            out.push_str(&format!("\x1b[{}A\x1b[J", self.drawn_lines));
        }
        for l in &frame {
            out.push_str(l);
            out.push('\n');
        }
        err.write_all(out.as_bytes())?;
        err.flush()?;
        self.drawn_lines = frame.len();
        Ok(())
    }

    /// The frame: header, progress, one row per agent, the latest events; every line at
    /// most `cols` wide, at most `rows` lines.
    pub(crate) fn frame(
        &self,
        progress: &Progress,
        locks: Option<&Snapshot>,
        cols: usize,
        rows: usize,
    ) -> Vec<String> {
        let mut holds: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        if let Some(s) = locks {
            for h in &s.holders {
                holds
                    .entry(h.owner.as_str())
                    .or_default()
                    .push(h.resource.as_str());
            }
        }
        let mut out = vec![
            format!(
                "{}  {:>5.1}s",
                self.header,
                self.started.elapsed().as_secs_f64()
            ),
            progress.line(24),
            String::new(),
            format!("{:<AGENT_WIDTH$} {:<52} HOLDS", "AGENT", "DOING"),
        ];
        for a in &self.order {
            let doing = self.rows.get(a).map(String::as_str).unwrap_or("");
            let held = holds
                .get(a.as_str())
                .map(|v| v.join(", "))
                .unwrap_or_default();
            out.push(format!(
                "{:<AGENT_WIDTH$} {:<52} {}",
                truncate(a, AGENT_WIDTH),
                truncate(doing, 52),
                if held.is_empty() {
                    "-".to_string()
                } else {
                    held
                }
            ));
        }
        out.push(String::new());
        let room = rows.saturating_sub(out.len() + 2).clamp(3, 12);
        out.push("EVENTS".into());
        let mut out: Vec<String> = out.into_iter().map(|l| truncate(&l, cols)).collect();
        // The latest events, long ones wrapped under their text, as many lines as fit.
        let mut events: Vec<String> = Vec::new();
        for (_, l) in self.log.iter().rev() {
            let wrapped = wrap(l, cols, 9);
            if events.len() + wrapped.len() > room {
                break;
            }
            events.splice(0..0, wrapped);
        }
        out.extend(events);
        out
    }

    /// The last frame (terminal) or line; the view ends here.
    pub(crate) fn finish(&mut self, tasks: &[Task]) -> anyhow::Result<()> {
        self.render(tasks)?;
        if !self.tty {
            eprintln!("[{:5.1}s] finished", self.started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

/// The terminal's size on stderr (columns at most 120), or 100 x 40.
fn terminal_size() -> (usize, usize) {
    match rustix::termios::tcgetwinsize(std::io::stderr()) {
        Ok(w) if w.ws_col > 20 && w.ws_row > 5 => {
            (usize::from(w.ws_col).min(120) - 1, usize::from(w.ws_row))
        }
        _ => (99, 40),
    }
}

/// `s` in lines of at most `cols` characters, broken at spaces where there is one, the
/// continuation lines indented by `indent`.
fn wrap(s: &str, cols: usize, indent: usize) -> Vec<String> {
    if s.chars().count() <= cols || cols <= indent + 20 {
        return vec![truncate(s, cols)];
    }
    let mut lines = Vec::new();
    let mut rest: Vec<char> = s.chars().collect();
    let mut width = cols;
    while !rest.is_empty() {
        let mut n = rest.len().min(width);
        if n < rest.len()
            && let Some(space) = rest[..n].iter().rposition(|c| *c == ' ')
            && space > width / 2
        {
            n = space + 1;
        }
        let piece: String = rest[..n].iter().collect();
        let pad = if lines.is_empty() { 0 } else { indent };
        lines.push(format!("{}{}", " ".repeat(pad), piece.trim_end()));
        rest.drain(..n);
        width = cols - indent;
    }
    lines
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('~');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maos_coordination::Workspace;
    use maos_coordination::track::Task;

    fn task(name: &str, status: TaskStatus) -> Task {
        let mut t = Task::new(name);
        t.status = status;
        t
    }

    #[test]
    fn added_work_never_makes_the_percentage_go_backwards() {
        let mut tasks = vec![
            task("a", TaskStatus::Completed),
            task("b", TaskStatus::Completed),
            task("c", TaskStatus::InProgress),
            task("d", TaskStatus::Pending),
        ];
        let planned: HashSet<String> = tasks.iter().map(|t| t.id.to_string()).collect();
        let before = Progress::of(&tasks, &planned);
        assert_eq!(before.percent(), 50.0);
        // The merge adds four resolution tasks: the plan's share stays, the added work shows.
        for n in 0..4 {
            tasks.push(task(&format!("resolve {n}"), TaskStatus::Pending));
        }
        let after = Progress::of(&tasks, &planned);
        assert_eq!(after.percent(), 50.0);
        assert_eq!((after.added, after.added_done), (4, 0));
        let line = after.line(10);
        assert!(
            line.starts_with("[#####-----]  50% of the plan (2/4)"),
            "{line}"
        );
        assert!(line.contains("+4 added by the merge (0 done)"), "{line}");
    }

    #[test]
    fn the_frame_has_a_row_per_agent_and_fits_the_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let tasks = vec![task("Implement backend", TaskStatus::InProgress)];
        let mut v = View::new(
            Box::new(maos_coordination::lock::FileLocks::new(&ws)),
            "maos demo".into(),
            vec!["backend-1".into(), "frontend-1".into()],
            &tasks,
        );
        v.tty = true;
        v.event(&AgentEvent {
            at: 0,
            agent: "backend-1".into(),
            event: EventKind::LockWaiting,
            task: Some(tasks[0].id.to_string()),
            detail: "src/shared/routes.rs (held by frontend-1) ".repeat(5),
        });
        let p = Progress::of(&tasks, &v.planned);
        let frame = v.frame(&p, None, 60, 20);
        assert!(frame.iter().all(|l| l.chars().count() <= 60), "{frame:#?}");
        let row = frame.iter().find(|l| l.starts_with("backend-1")).unwrap();
        assert!(row.contains("Implement backend: waits for"), "{row}");
        assert!(
            frame.iter().any(|l| l.starts_with("frontend-1")),
            "{frame:#?}"
        );
        assert!(
            frame
                .iter()
                .any(|l| l.contains("backend-1 waits for src/shared/routes.rs")),
            "{frame:#?}"
        );
        // The long event is wrapped, not cut: all of it is there.
        let events: String = frame
            .iter()
            .skip_while(|l| *l != "EVENTS")
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        assert_eq!(events.matches("heldbyfrontend-1").count(), 5, "{frame:#?}");
    }
}
