//! The demo's live view on stderr: a table of agents, tasks and locks redrawn in place on a
//! terminal, or one line per change when stderr is a file or a pipe.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use maos_coordination::Workspace;
use maos_coordination::lock::LockTable;
use maos_coordination::track::{Task, TaskStatus};

use super::{AgentEvent, EventKind};

pub(crate) struct View {
    locks: Option<LockTable>,
    agents: BTreeMap<String, String>,
    notes: Vec<String>,
    tty: bool,
    drawn_lines: usize,
    last_line: String,
}

impl View {
    pub(crate) fn new(ws: &Workspace, agents: Vec<String>) -> Self {
        Self {
            locks: LockTable::open(ws).ok(),
            agents: agents
                .into_iter()
                .map(|a| (a, "starting".to_string()))
                .collect(),
            notes: Vec::new(),
            tty: std::io::stderr().is_terminal(),
            drawn_lines: 0,
            last_line: String::new(),
        }
    }

    pub(crate) fn event(&mut self, ev: &AgentEvent) {
        let text = match ev.event {
            EventKind::Ready => "idle".to_string(),
            EventKind::Claimed => format!("working: {}", ev.detail),
            EventKind::Completed => "idle (completed a task)".to_string(),
            EventKind::Failed => format!("FAILED: {}", ev.detail),
            EventKind::Committed => format!("committed {}", ev.detail),
            EventKind::ApiRequested => "asked backend for the API, waiting".to_string(),
            EventKind::ApiAnswered => format!("answered API request {}", ev.detail),
            EventKind::ApiReceived => format!("API: {}", ev.detail),
            EventKind::DeadlockVictim => format!("deadlock victim ({}), backing off", ev.detail),
            EventKind::Resolved => format!("resolved conflict in {}", ev.detail),
            EventKind::Merged => format!("merged {}", ev.detail),
            EventKind::Exiting => "done".to_string(),
        };
        if matches!(
            ev.event,
            EventKind::DeadlockVictim | EventKind::Resolved | EventKind::ApiAnswered
        ) {
            self.note(format!("{}: {text}", ev.agent));
        }
        self.agents.insert(ev.agent.clone(), text);
    }

    pub(crate) fn note(&mut self, note: String) {
        if !self.tty && !note.is_empty() {
            eprintln!("  * {note}");
        }
        self.notes.push(note);
        if self.notes.len() > 4 {
            self.notes.remove(0);
        }
    }

    fn counts(tasks: &[Task]) -> String {
        let n = |s: TaskStatus| tasks.iter().filter(|t| t.status == s).count();
        let done = n(TaskStatus::Completed);
        let pct = if tasks.is_empty() {
            0.0
        } else {
            done as f64 * 100.0 / tasks.len() as f64
        };
        let width = 24;
        let filled = (pct / 100.0 * width as f64).round() as usize;
        format!(
            "[{}{}] {pct:5.1}%  {done}/{} done, {} in progress, {} pending, {} blocked, {} failed",
            "#".repeat(filled),
            "-".repeat(width - filled),
            tasks.len(),
            n(TaskStatus::InProgress) + n(TaskStatus::Review),
            n(TaskStatus::Pending),
            n(TaskStatus::Blocked),
            n(TaskStatus::Failed),
        )
    }

    pub(crate) fn render(&mut self, tasks: &[Task], elapsed: Duration) -> anyhow::Result<()> {
        let locks: Vec<String> = self
            .locks
            .as_ref()
            .and_then(|t| t.snapshot().ok())
            .map(|s| {
                s.holders
                    .iter()
                    .map(|l| format!("{} ({})", l.resource, l.owner))
                    .collect()
            })
            .unwrap_or_default();
        let counts = Self::counts(tasks);
        if !self.tty {
            let line = format!(
                "{counts}; locks: {}",
                if locks.is_empty() {
                    "none".into()
                } else {
                    locks.join(", ")
                }
            );
            if line != self.last_line {
                eprintln!("[{:>5.1}s] {line}", elapsed.as_secs_f64());
                self.last_line = line;
            }
            return Ok(());
        }
        let mut out = String::new();
        out.push_str(&format!(
            "maos demo  {:>5.1}s  {counts}\n",
            elapsed.as_secs_f64()
        ));
        for (agent, state) in &self.agents {
            out.push_str(&format!("  {agent:<14} {}\n", truncate(state, 70)));
        }
        out.push_str(&format!(
            "  locks: {}\n",
            if locks.is_empty() {
                "none".to_string()
            } else {
                truncate(&locks.join(", "), 80)
            }
        ));
        for n in &self.notes {
            out.push_str(&format!("  * {}\n", truncate(n, 90)));
        }
        let mut err = std::io::stderr().lock();
        if self.drawn_lines > 0 {
            write!(err, "\x1b[{}A\x1b[J", self.drawn_lines)?;
        }
        err.write_all(out.as_bytes())?;
        err.flush()?;
        self.drawn_lines = out.lines().count();
        Ok(())
    }

    pub(crate) fn finish(&mut self, tasks: &[Task], elapsed: Duration) -> anyhow::Result<()> {
        self.render(tasks, elapsed)?;
        if !self.tty {
            eprintln!("[{:>5.1}s] finished", elapsed.as_secs_f64());
        }
        Ok(())
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
