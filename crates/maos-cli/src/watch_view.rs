//! `maos status --watch`: the dashboard's panels in the terminal (ratatui), redrawn when the
//! workspace changes (maos-dashboard's live snapshot, driven by file events), until q, Esc or
//! Ctrl-C. The terminal is restored on every way out: normal exit, error and panic (a guard
//! restores it on drop).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use maos_coordination::core::{human_ms, now_ms};
use maos_coordination::dashboard::{Live, Snapshot};
use maos_coordination::track::TaskStatus;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Gauge, Paragraph, Row, Table, Wrap};

use crate::ctx::Ctx;
use crate::exit::{Exit, Failure};

/// Raw mode and the alternate screen while alive; the normal terminal back on drop.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<Self> {
        terminal::enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = execute!(out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
        let _ = out.flush();
    }
}

enum Input {
    Quit,
    Scroll(isize),
    Redraw,
}

fn key_to_input(ev: Event) -> Option<Input> {
    match ev {
        Event::Key(k) if k.kind != KeyEventKind::Release => match k.code {
            KeyCode::Char('q') | KeyCode::Esc => Some(Input::Quit),
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Some(Input::Quit),
            KeyCode::Down | KeyCode::Char('j') => Some(Input::Scroll(1)),
            KeyCode::Up | KeyCode::Char('k') => Some(Input::Scroll(-1)),
            KeyCode::PageDown => Some(Input::Scroll(10)),
            KeyCode::PageUp => Some(Input::Scroll(-10)),
            _ => None,
        },
        Event::Resize(..) => Some(Input::Redraw),
        _ => None,
    }
}

pub(crate) fn run(ctx: &Ctx) -> anyhow::Result<Exit> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Failure::error(
            Exit::Usage,
            "maos status --watch draws in a terminal; without one use `maos status --json`, \
             `maos task watch` or `maos dashboard`",
        ));
    }
    // Declared before the runtime: dropped after it (the server connection's last handle).
    let (backends, remote) = crate::dashboard::source(ctx)?;
    let ws = backends.workspace().clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let live = match remote {
        Some(r) => rt.block_on(Live::start_remote(&ws, ctx.agent.clone(), r))?,
        None => rt.block_on(Live::start(&ws, ctx.agent.clone()))?,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Input>();
    // Terminal input: blocking reads on their own thread (left behind at exit).
    std::thread::spawn(move || {
        loop {
            match event::read() {
                Ok(ev) => {
                    if let Some(i) = key_to_input(ev)
                        && tx.send(i).is_err()
                    {
                        return;
                    }
                }
                Err(_) => {
                    let _ = tx.send(Input::Quit);
                    return;
                }
            }
        }
    });
    let guard = TerminalGuard::enter()?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    let result: anyhow::Result<()> = rt.block_on(async {
        let mut versions = live.subscribe();
        let mut scroll: usize = 0;
        // Countdowns (lease left) move with time: redraw once a second as well.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let snap = live.snapshot();
            term.draw(|f| draw(f, &snap, scroll))?;
            tokio::select! {
                r = versions.changed() => r?,
                _ = tick.tick() => {}
                i = rx.recv() => match i {
                    None | Some(Input::Quit) => return Ok(()),
                    Some(Input::Scroll(d)) => scroll = scroll.saturating_add_signed(d),
                    Some(Input::Redraw) => term.autoresize()?,
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    });
    drop(term);
    drop(guard);
    result?;
    Ok(Exit::Ok)
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

fn status_style(s: TaskStatus) -> Style {
    match s {
        TaskStatus::InProgress => Style::new().fg(Color::Cyan),
        TaskStatus::Review => Style::new().fg(Color::Yellow),
        TaskStatus::Completed => Style::new().fg(Color::Green),
        TaskStatus::Failed => Style::new().fg(Color::Red),
        TaskStatus::Blocked | TaskStatus::Cancelled => dim(),
        _ => Style::new(),
    }
}

fn left(until: u64, now: u64) -> String {
    if until > now {
        human_ms(until - now)
    } else {
        "expired".into()
    }
}

fn draw(f: &mut ratatui::Frame<'_>, s: &Snapshot, scroll: usize) {
    let area = f.area();
    let rows = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(34),
        Constraint::Percentage(33),
        Constraint::Fill(1),
    ])
    .split(area);
    let now = now_ms();
    let header = Line::from(vec![
        Span::styled("maos status --watch ", bold()),
        Span::raw(s.workspace.display().to_string()),
        Span::styled(
            format!("  version {}  ·  q quit, ↑↓ scroll", s.version),
            dim(),
        ),
    ]);
    f.render_widget(Paragraph::new(header), rows[0]);
    let top =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).split(rows[1]);
    agents(f, top[0], s, now);
    tasks(f, top[1], s);
    let mid =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).split(rows[2]);
    locks(f, mid[0], s, now, scroll);
    messages(f, mid[1], s);
    let bottom =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).split(rows[3]);
    task_rows(f, bottom[0], s, scroll);
    merges(f, bottom[1], s);
}

fn agents(f: &mut ratatui::Frame<'_>, area: Rect, s: &Snapshot, now: u64) {
    let alive = s
        .agents
        .iter()
        .filter(|a| a.liveness == maos_coordination::Liveness::Alive)
        .count();
    let rows = s.agents.iter().map(|a| {
        let (dot, style) = match a.liveness {
            maos_coordination::Liveness::Alive => ("●", Style::new().fg(Color::Green)),
            maos_coordination::Liveness::Leased => ("◐", Style::new().fg(Color::Yellow)),
            _ => ("○", dim()),
        };
        Row::new(vec![
            Cell::from(Line::from(vec![
                Span::styled(format!("{dot} "), style),
                Span::styled(a.id.to_string(), bold()),
            ])),
            Cell::from(a.role.clone().unwrap_or_default()),
            Cell::from(
                a.anchor
                    .as_ref()
                    .map(|x| format!("pid {}", x.pid))
                    .unwrap_or_else(|| "-".into()),
            ),
            Cell::from(if a.liveness == maos_coordination::Liveness::Dead {
                "–".to_string()
            } else {
                left(a.lease_until, now)
            }),
            Cell::from(a.branch.clone().unwrap_or_default()),
            Cell::from(
                a.current_task
                    .as_ref()
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
            ),
            Cell::from(a.locks_held.to_string()),
        ])
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(18),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(18),
            Constraint::Fill(1),
            Constraint::Length(5),
        ],
    )
    .header(
        Row::new([
            "agent",
            "role",
            "anchor",
            "lease",
            "branch",
            "current task",
            "locks",
        ])
        .style(dim()),
    )
    .block(Block::bordered().title(format!(" Agents {alive}/{} alive ", s.agents.len())));
    f.render_widget(t, area);
}

fn tasks(f: &mut ratatui::Frame<'_>, area: Rect, s: &Snapshot) {
    let t = &s.tasks;
    let c = &t.counts;
    let block = Block::bordered().title(format!(" Tasks: {} ", c.total));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let parts = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).split(inner);
    let ratio = (t.percentage / 100.0).clamp(0.0, 1.0);
    f.render_widget(
        Gauge::default()
            .gauge_style(Style::new().fg(Color::Green).bg(Color::Black))
            .ratio(ratio)
            .label(format!(
                "{:.1}% completed ({}/{})",
                t.percentage, c.completed, c.total
            )),
        parts[0],
    );
    let mut lines = vec![Line::from(vec![
        Span::styled(
            format!("{} in progress  ", c.in_progress),
            status_style(TaskStatus::InProgress),
        ),
        Span::styled(
            format!("{} review  ", c.review),
            status_style(TaskStatus::Review),
        ),
        Span::raw(format!("{} pending  ", c.pending)),
        Span::styled(
            format!("{} blocked  ", c.blocked),
            status_style(TaskStatus::Blocked),
        ),
        Span::styled(
            format!("{} completed  ", c.completed),
            status_style(TaskStatus::Completed),
        ),
        Span::styled(
            format!("{} failed", c.failed),
            status_style(TaskStatus::Failed),
        ),
    ])];
    lines.push(Line::from(match t.eta {
        Some(_) => format!(
            "ETA in {} (work left along the longest chain)",
            human_ms(t.remaining_ms)
        ),
        None if c.total > 0 => "nothing left to do".into(),
        None => "no tasks".into(),
    }));
    lines.push(Line::from(Span::styled(
        format!(
            "critical path ({} tasks, {} estimated):",
            t.critical_path.len(),
            human_ms(t.critical_path_ms)
        ),
        Style::new().fg(Color::Red),
    )));
    let chain: Vec<String> = t.critical_path.iter().map(|x| x.name.clone()).collect();
    lines.push(Line::from(Span::styled(
        chain.join(" → "),
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
    )));
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), parts[1]);
}

fn locks(f: &mut ratatui::Frame<'_>, area: Rect, s: &Snapshot, now: u64, scroll: usize) {
    let l = &s.locks;
    let mut rows: Vec<Row<'_>> = l
        .deadlocks
        .iter()
        .map(|d| {
            Row::new(vec![
                Cell::from(Span::styled(
                    format!("DEADLOCK {}", d.name),
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                )),
                Cell::from(format!("victim {} on {}", d.victim, d.victim_resource)),
            ])
        })
        .collect();
    let waiter = |t: &u64| {
        l.waiters
            .iter()
            .find(|w| w.ticket == *t)
            .map_or_else(|| format!("#{t}"), |w| w.agent.clone())
    };
    rows.extend(
        l.holders
            .iter()
            .skip(scroll.min(l.holders.len().saturating_sub(1)))
            .map(|h| {
                let waiters: Vec<String> = h.waiters.iter().map(waiter).collect();
                Row::new(vec![
                    Cell::from(h.resource.clone()),
                    Cell::from(format!(
                        "{}{} · {} · token {} · {}{}",
                        h.owner,
                        if h.owner_dead { " (dead)" } else { "" },
                        match h.mode {
                            maos_coordination::LockMode::Shared => "shared",
                            _ => "exclusive",
                        },
                        h.token,
                        left(h.expires_at, now),
                        if waiters.is_empty() {
                            String::new()
                        } else {
                            format!(" · waiting: {}", waiters.join(", "))
                        }
                    )),
                ])
            }),
    );
    let t = Table::new(rows, [Constraint::Percentage(40), Constraint::Fill(1)]).block(
        Block::bordered().title(format!(
            " Locks: {} held, {} waiting, {} deadlock(s) ",
            l.holders.len(),
            l.waiters.len(),
            l.deadlocks.len()
        )),
    );
    f.render_widget(t, area);
}

fn messages(f: &mut ratatui::Frame<'_>, area: Rect, s: &Snapshot) {
    let mut all: Vec<(&str, &maos_coordination::dashboard::MessageView)> = s
        .messages
        .iter()
        .flat_map(|c| c.recent.iter().map(move |m| (c.name.as_str(), m)))
        .collect();
    all.sort_by_key(|m| std::cmp::Reverse(m.1.timestamp));
    let lines: Vec<Line<'_>> = all
        .iter()
        .take(area.height as usize)
        .map(|(ch, m)| {
            Line::from(vec![
                Span::styled(format!("{ch} "), dim()),
                Span::styled(m.sender.clone(), bold()),
                Span::raw(format!(" → {}: ", m.to)),
                Span::raw(m.summary.clone()),
            ])
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(format!(" Messages: {} channel(s) ", s.messages.len()))),
        area,
    );
}

fn task_rows(f: &mut ratatui::Frame<'_>, area: Rect, s: &Snapshot, scroll: usize) {
    let rows = s.tasks.rows.iter().skip(scroll).map(|t| {
        Row::new(vec![
            Cell::from(Span::styled(t.status.as_str(), status_style(t.status))),
            Cell::from(if t.critical {
                Span::styled(format!("● {}", t.name), Style::new().fg(Color::Red))
            } else {
                Span::raw(t.name.clone())
            }),
            Cell::from(t.assigned_to.clone().unwrap_or_else(|| "-".into())),
        ])
    });
    let t = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Fill(1),
            Constraint::Length(16),
        ],
    )
    .block(Block::bordered().title(" Task list (● critical path) "));
    f.render_widget(t, area);
}

fn merges(f: &mut ratatui::Frame<'_>, area: Rect, s: &Snapshot) {
    let m = &s.merges;
    let mut lines: Vec<Line<'_>> = Vec::new();
    match &m.prediction {
        Some(p) => {
            for r in p.vs_target.iter().chain(&p.pairwise) {
                let (text, style) = if r.conflicts.is_empty() {
                    ("clean".to_string(), Style::new().fg(Color::Green))
                } else {
                    (
                        format!(
                            "{} conflict(s): {}",
                            r.conflicts.len(),
                            r.conflicts
                                .iter()
                                .map(|c| c.path.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        Style::new().fg(Color::Red),
                    )
                };
                lines.push(Line::from(vec![
                    Span::raw(format!("{} → {}: ", r.source, r.target)),
                    Span::styled(text, style),
                ]));
            }
            if lines.is_empty() {
                lines.push(Line::from("no agent has a branch"));
            }
        }
        None => lines.push(Line::from(
            m.error.clone().unwrap_or_else(|| m.state.clone()),
        )),
    }
    let active = m.queue.iter().filter(|q| q.status.is_active()).count();
    lines.push(Line::from(Span::styled(
        format!("queue: {} entries, {active} waiting", m.queue.len()),
        dim(),
    )));
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" Merges (predicted) ")),
        area,
    );
}
