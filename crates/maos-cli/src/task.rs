//! `maos task ...`: the shared task graph from the shell.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use maos_coordination::core::{escape_controls, human_duration, now_ms};
use maos_coordination::track::{
    self, Amendment, Edit, Event, EventKind, Ownership, Query, Task, TaskDetails, TaskStatus,
    TaskStore, Update,
};
use maos_coordination::{AgentId, Priority, ResourceName, TaskId};

use crate::ctx::Ctx;
use crate::duration;
use crate::exit::{self, Exit};

/// How many ready tasks `task ready` lists unless told otherwise.
const READY_PAGE: usize = 100;

#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// Create a task; prints its id.
    Add {
        /// Short name.
        name: String,
        /// Longer description.
        #[arg(long, short = 'd', value_name = "TEXT")]
        description: Option<String>,
        /// A task this one depends on (repeatable; id or unique id prefix).
        #[arg(long, value_name = "ID")]
        after: Vec<String>,
        /// Assign it to an agent (only that agent's claims take it).
        #[arg(long, value_name = "AGENT")]
        assign: Option<String>,
        /// Estimated duration (`90m`, `2h`, `1h30m`).
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        estimate: Option<Duration>,
        /// Priority: 0 low, 1 normal (default), 2 high, 3 critical (or the names).
        #[arg(long, value_name = "N", value_parser = parse_priority)]
        priority: Option<Priority>,
        /// A label (repeatable).
        #[arg(long, value_name = "LABEL")]
        label: Vec<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// List tasks in creation order (filters combine).
    List {
        /// Only tasks with this status (pending, blocked, in_progress, review, completed,
        /// failed, cancelled).
        #[arg(long, value_name = "STATUS", value_parser = parse_status)]
        status: Option<TaskStatus>,
        /// Only tasks assigned to this agent.
        #[arg(long, value_name = "AGENT", conflicts_with = "unassigned")]
        assignee: Option<String>,
        /// Only tasks assigned to nobody.
        #[arg(long)]
        unassigned: bool,
        /// Only tasks with this label.
        #[arg(long, value_name = "LABEL")]
        label: Option<String>,
        /// At most this many tasks (default: all).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Skip this many matching tasks first.
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: usize,
    },
    /// Show one task with its timestamps and full history.
    Show {
        /// Id or unique id prefix.
        id: String,
    },
    /// Tasks ready to be claimed, in claim order (the first 100 unless --limit or --all).
    Ready {
        /// At most this many.
        #[arg(long, value_name = "N", conflicts_with = "all")]
        limit: Option<usize>,
        /// Every ready task.
        #[arg(long)]
        all: bool,
    },
    /// Claim the next ready task for this agent and start it (exit 3 when nothing is ready).
    Claim {
        #[command(flatten)]
        wait: Wait,
    },
    /// Start work on a task (in progress).
    Start(Transition),
    /// Hand a task in for review.
    Review(Transition),
    /// Complete a task.
    Done(Transition),
    /// Mark a task failed (its dependents stay blocked with the reason).
    Fail(Transition),
    /// Put a task back in the queue (from in progress, review, failed or cancelled).
    Reset(Transition),
    /// Cancel a task: given up on purpose (its dependents stay blocked, told why).
    Cancel(Transition),
    /// Change a task's name, description, estimate, priority, labels, assignee or
    /// dependencies (one atomic change).
    Edit {
        /// Id or unique id prefix.
        id: String,
        /// A new name.
        #[arg(long, value_name = "TEXT")]
        name: Option<String>,
        /// A new description.
        #[arg(long, short = 'd', value_name = "TEXT")]
        description: Option<String>,
        /// A new estimate.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse, conflicts_with = "no_estimate")]
        estimate: Option<Duration>,
        /// Remove the estimate.
        #[arg(long)]
        no_estimate: bool,
        /// A new priority (0-3 or low, normal, high, critical).
        #[arg(long, value_name = "N", value_parser = parse_priority)]
        priority: Option<Priority>,
        /// Replace the labels with these (repeatable).
        #[arg(long, value_name = "LABEL", conflicts_with = "no_labels")]
        label: Vec<String>,
        /// Remove every label.
        #[arg(long)]
        no_labels: bool,
        /// Hand the task to this agent (the current assignee's call, or --force).
        #[arg(long, value_name = "AGENT")]
        assignee: Option<String>,
        /// Add a dependency (repeatable; id or unique prefix).
        #[arg(long, value_name = "ID")]
        add_after: Vec<String>,
        /// Remove a dependency (repeatable; id or unique prefix).
        #[arg(long, value_name = "ID")]
        remove_after: Vec<String>,
        /// Act on a task assigned to another agent (recorded).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Add a comment to a task's history.
    Comment {
        /// Id or unique id prefix.
        id: String,
        /// The comment.
        text: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Give a task up: clear its assignee (an active task goes back to the queue).
    Unassign {
        /// Id or unique id prefix.
        id: String,
        /// Act on a task assigned to another agent (recorded).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Progress report (also written to .maos/progress.json).
    Report,
    /// Gantt chart: Mermaid source, or a picture (SVG, self-contained HTML).
    Gantt {
        /// Output format.
        #[arg(long, value_enum, default_value_t = crate::picture::GanttFormat::Mermaid)]
        format: crate::picture::GanttFormat,
    },
    /// Dependency graph.
    Graph {
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Live progress view, refreshed when tasks change (Ctrl-C to stop).
    Watch {
        /// Stop once no task is pending, blocked or active.
        #[arg(long)]
        until_done: bool,
        /// Stop after this long.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        timeout: Option<Duration>,
    },
}

/// How long a write waits for the task store's lock.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct Wait {
    /// Wait at most this long for the task store's lock (held for microseconds by each
    /// writer; a stopped process can hold it): exit 3 naming the holder after that.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "10s")]
    wait: Duration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Transition {
    /// Id or unique id prefix.
    id: String,
    /// Result (done), reason (fail, cancel) or any note.
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
    /// Refuse unless the task is still at this revision.
    #[arg(long, value_name = "N")]
    revision: Option<u64>,
    /// Refuse unless TOKEN is the current fencing token of the lock on RESOURCE.
    #[arg(long, value_name = "RESOURCE", requires = "token")]
    fence: Option<String>,
    /// The fencing token (with --fence).
    #[arg(long, value_name = "TOKEN", requires = "fence")]
    token: Option<u64>,
    /// Act on a task assigned to another agent (recorded with your name).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    wait: Wait,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum GraphFormat {
    Dot,
    Mermaid,
    /// A picture (SVG), drawn natively.
    Svg,
    /// A self-contained HTML page with the SVG picture.
    Html,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "0" | "low" => Ok(Priority::Low),
        "1" | "normal" => Ok(Priority::Normal),
        "2" | "high" => Ok(Priority::High),
        "3" | "critical" => Ok(Priority::Critical),
        _ => Err(format!(
            "invalid priority {s:?}: use 0-3 or low, normal, high, critical"
        )),
    }
}

fn parse_status(s: &str) -> Result<TaskStatus, String> {
    s.parse::<TaskStatus>().map_err(|e| e.to_string())
}

/// The task store of the workspace's backend (files or a server), acting as the agent.
fn store(ctx: &Ctx, wait: Option<Wait>) -> anyhow::Result<Box<dyn TaskStore>> {
    ctx.backends()?
        .tasks(&ctx.agent, wait.map(|w| w.wait))
        .context("opening the task store")
}

/// A tracker error, with exit 3 when the store's lock could not be had in time.
fn busy(e: track::Error) -> anyhow::Error {
    if e.is_lock_timeout() || maos_coordination::backend::is_timeout(&e) {
        let msg = format!("{:#}", anyhow::Error::new(e));
        return exit::Failure::error(Exit::Busy, msg);
    }
    e.into()
}

fn resolve(t: &dyn TaskStore, id: &str) -> anyhow::Result<TaskId> {
    Ok(t.resolve(id)?)
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(s)
}

fn one_line(t: &Task) -> String {
    let agent = t
        .assigned_to
        .as_ref()
        .map(|a| format!(" @{a}"))
        .unwrap_or_default();
    format!("{}  {:<11} {}{agent}", t.id, t.status, esc(&t.name))
}

/// `2026-11-30 12:00:01 UTC` for ms since the Unix epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn when(ms: u64, now: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let ago = now.saturating_sub(ms);
    format!(
        "{} ({} ago)",
        utc(ms),
        human_duration(Duration::from_millis(ago))
    )
}

fn event_text(e: &Event) -> String {
    let note = |n: &Option<String>| {
        n.as_deref()
            .map(|n| format!(": {}", esc(n)))
            .unwrap_or_default()
    };
    match &e.what {
        EventKind::Created => "created".into(),
        EventKind::Status { from, to, note: n } => {
            let verb = match to {
                TaskStatus::InProgress if *from == TaskStatus::Review => "back to work".to_string(),
                TaskStatus::InProgress => "started".into(),
                TaskStatus::Review => "handed in for review".into(),
                TaskStatus::Completed => "completed".into(),
                TaskStatus::Failed => "failed".into(),
                TaskStatus::Cancelled => "cancelled".into(),
                TaskStatus::Pending => format!("reset ({from} -> pending)"),
                other => format!("{from} -> {other}"),
            };
            format!("{verb}{}", note(n))
        }
        EventKind::Claimed { agent } => format!("claimed by {agent}"),
        EventKind::Released { reason } => format!("released: {}", esc(reason)),
        EventKind::Assigned { agent, requeued } => {
            let who = agent
                .as_ref()
                .map_or_else(|| "unassigned".to_string(), |a| format!("assigned to {a}"));
            match requeued {
                Some(s) => format!("{who} (back to {s})"),
                None => who,
            }
        }
        EventKind::Edited { set } => {
            let mut parts = Vec::new();
            if let Some(n) = &set.name {
                parts.push(format!("name \"{}\"", esc(n)));
            }
            if set.description.is_some() {
                parts.push("description".into());
            }
            if let Some(e) = set.estimate {
                parts.push(match e {
                    Some(d) => format!("estimate {}", human_duration(d)),
                    None => "estimate removed".into(),
                });
            }
            if let Some(p) = set.priority {
                parts.push(format!("priority {}", format!("{p:?}").to_lowercase()));
            }
            if let Some(l) = &set.labels {
                parts.push(format!("labels [{}]", esc(&l.join(", "))));
            }
            format!("edited: {}", parts.join(", "))
        }
        EventKind::Comment { text } => format!("comment: {}", esc(text)),
        EventKind::DependencyAdded { task } => format!("now after {task}"),
        EventKind::DependencyRemoved { task } => format!("no longer after {task}"),
        EventKind::Unblocked { dependency } => format!("ready: {dependency} completed"),
        EventKind::DependencyGaveUp { reason, .. } => format!("blocked: {}", esc(reason)),
        EventKind::DependencyReopened { dependency } => format!("{dependency} reopened"),
        _ => "changed".into(),
    }
}

fn details(d: &TaskDetails, now: u64) -> String {
    let t = &d.task;
    let mut s = format!("{}  {}\n", t.id, esc(&t.name));
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(s, "{k:<13}{v}");
    };
    line("status:", t.status.as_str());
    line("priority:", &format!("{:?}", t.priority).to_lowercase());
    line("revision:", &t.revision.to_string());
    if let Some(a) = &t.assigned_to {
        line("assigned to:", a.as_str());
    }
    line("created:", &when(t.created_at, now));
    line("updated:", &when(t.updated_at, now));
    if let Some(st) = t.started_at {
        line("started:", &when(st, now));
    }
    if let Some(c) = t.completed_at {
        line("completed:", &when(c, now));
    }
    if !t.description.is_empty() {
        line("description:", &esc(&t.description));
    }
    if !t.dependencies.is_empty() {
        line(
            "after:",
            &t.dependencies
                .iter()
                .map(TaskId::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if !t.labels.is_empty() {
        line("labels:", &esc(&t.labels.join(", ")));
    }
    if let Some(e) = t.estimated_duration {
        line("estimate:", &human_duration(e));
    }
    if t.attempts > 0 {
        line("attempts:", &t.attempts.to_string());
    }
    if let Some(n) = &t.note {
        line("note:", &esc(n));
    }
    if let Some(r) = &t.blocked_reason {
        line("blocked by:", &esc(r));
    }
    for (k, v) in &t.metadata {
        line(&format!("{}:", esc(k)), &esc(v));
    }
    if !d.history.is_empty() {
        if d.omitted > 0 {
            let _ = writeln!(
                s,
                "history (the latest {}; {} earlier not shown):",
                d.history.len(),
                d.omitted
            );
        } else {
            s.push_str("history:\n");
        }
        for e in &d.history {
            let by = e.by.as_ref().map_or("-", |a| a.as_str());
            let forced = if e.forced { " (forced)" } else { "" };
            let _ = writeln!(
                s,
                "  {}  #{:<6} {by}{forced}: {}",
                utc(e.at),
                e.seq,
                event_text(e)
            );
        }
    }
    s
}

fn ownership(force: bool) -> Ownership {
    if force {
        Ownership::Override
    } else {
        Ownership::Respect
    }
}

pub(crate) fn run(cmd: TaskCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    match cmd {
        TaskCommand::Add {
            name,
            description,
            after,
            assign,
            estimate,
            priority,
            label,
            wait,
        } => {
            let tracker = store(ctx, Some(wait))?;
            let dependencies = after
                .iter()
                .map(|a| resolve(tracker.as_ref(), a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let task = Task {
                name,
                description: description.unwrap_or_default(),
                dependencies,
                assigned_to: assign.map(AgentId::new).transpose().context("--assign")?,
                estimated_duration: estimate,
                priority: priority.unwrap_or_default(),
                labels: label,
                ..Task::default()
            };
            let t = tracker.create(&task).map_err(busy)?;
            ctx.emit(&t, || t.id.to_string())?;
        }
        TaskCommand::List {
            status,
            assignee,
            unassigned,
            label,
            limit,
            offset,
        } => {
            let tracker = store(ctx, None)?;
            let mut q = Query::all();
            q.status = status;
            q.assignee = assignee
                .map(AgentId::new)
                .transpose()
                .context("--assignee")?;
            q.unassigned = unassigned;
            q.label = label;
            q.offset = offset;
            q.limit = limit;
            let page = tracker.list_page(&q)?;
            if ctx.json {
                ctx.emit(&page.tasks, String::new)?;
            } else {
                let counts = tracker.counts()?;
                let mut text = track::table(&page.tasks);
                // The table's own summary counts the page; say what the store holds.
                if let Some(pos) = text.trim_end().rfind('\n') {
                    text.truncate(pos + 1);
                }
                text.push_str(&track::counts_line(&counts));
                if page.more {
                    let _ = write!(
                        text,
                        "\n(showing {} from offset {offset}; more match: --offset {})",
                        page.tasks.len(),
                        offset + page.tasks.len()
                    );
                }
                ctx.emit(&(), || text)?;
            }
        }
        TaskCommand::Show { id } => {
            let tracker = store(ctx, None)?;
            let id = resolve(tracker.as_ref(), &id)?;
            let d = tracker
                .show(&id)?
                .with_context(|| format!("task {id} not found"))?;
            ctx.emit(&d, || details(&d, now_ms()))?;
        }
        TaskCommand::Ready { limit, all } => {
            let tracker = store(ctx, None)?;
            let limit = if all {
                usize::MAX
            } else {
                limit.unwrap_or(READY_PAGE)
            };
            let page = tracker.ready_page(limit)?;
            if ctx.json {
                ctx.emit(&page.tasks, String::new)?;
            } else {
                use std::io::Write as _;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                page.tasks
                    .iter()
                    .try_for_each(|t| writeln!(out, "{}", one_line(t)))
                    .and_then(|()| out.flush())
                    .map_err(exit::stdout_error)?;
            }
            let shown = page.tasks.len() as u64;
            if page.total > shown {
                eprintln!(
                    "maos: {} more ready task(s) not shown (--limit N or --all)",
                    page.total - shown
                );
            }
        }
        TaskCommand::Claim { wait } => {
            let tracker = store(ctx, Some(wait))?;
            match tracker.claim(&ctx.agent).map_err(busy)? {
                Some(t) => ctx.emit(&t, || one_line(&t))?,
                None => {
                    // Scripts reading JSON get a document either way: `null` means nothing.
                    if ctx.json {
                        outln!("null")?;
                    }
                    return Err(exit::Failure::error(
                        Exit::Busy,
                        "no task is ready to be claimed",
                    ));
                }
            }
        }
        TaskCommand::Start(tr) => transition(ctx, tr, TaskStatus::InProgress)?,
        TaskCommand::Review(tr) => transition(ctx, tr, TaskStatus::Review)?,
        TaskCommand::Done(tr) => transition(ctx, tr, TaskStatus::Completed)?,
        TaskCommand::Fail(tr) => transition(ctx, tr, TaskStatus::Failed)?,
        TaskCommand::Reset(tr) => transition(ctx, tr, TaskStatus::Pending)?,
        TaskCommand::Cancel(tr) => transition(ctx, tr, TaskStatus::Cancelled)?,
        TaskCommand::Edit {
            id,
            name,
            description,
            estimate,
            no_estimate,
            priority,
            label,
            no_labels,
            assignee,
            add_after,
            remove_after,
            force,
            wait,
        } => {
            let tracker = store(ctx, Some(wait))?;
            let id = resolve(tracker.as_ref(), &id)?;
            let mut a = Amendment::new();
            let mut e = Edit::new();
            e.name = name;
            e.description = description;
            if no_estimate {
                e.estimate = Some(None);
            } else if let Some(d) = estimate {
                e.estimate = Some(Some(d));
            }
            e.priority = priority;
            if no_labels {
                e.labels = Some(Vec::new());
            } else if !label.is_empty() {
                e.labels = Some(label);
            }
            a.edit = e;
            a.assignee = assignee
                .map(AgentId::new)
                .transpose()
                .context("--assignee")?
                .map(Some);
            a.add_dependencies = add_after
                .iter()
                .map(|x| resolve(tracker.as_ref(), x))
                .collect::<anyhow::Result<_>>()?;
            a.remove_dependencies = remove_after
                .iter()
                .map(|x| resolve(tracker.as_ref(), x))
                .collect::<anyhow::Result<_>>()?;
            a.ownership = ownership(force);
            if a.is_empty() {
                return Err(exit::Failure::error(
                    Exit::Usage,
                    "task edit: nothing to change (give --name, --description, --estimate, \
                     --no-estimate, --priority, --label, --no-labels, --assignee, --add-after \
                     or --remove-after)",
                ));
            }
            let t = tracker.amend(&id, &a).map_err(busy)?;
            ctx.emit(&t, || one_line(&t))?;
        }
        TaskCommand::Comment { id, text, wait } => {
            let tracker = store(ctx, Some(wait))?;
            let id = resolve(tracker.as_ref(), &id)?;
            tracker.comment(&id, &text).map_err(busy)?;
            let d = tracker
                .show(&id)?
                .with_context(|| format!("task {id} not found"))?;
            ctx.emit(&d, || format!("{}  commented", d.task.id))?;
        }
        TaskCommand::Unassign { id, force, wait } => {
            let tracker = store(ctx, Some(wait))?;
            let id = resolve(tracker.as_ref(), &id)?;
            let t = tracker.assign(&id, None, ownership(force)).map_err(busy)?;
            ctx.emit(&t, || one_line(&t))?;
        }
        TaskCommand::Report => {
            let r = store(ctx, None)?.report()?;
            ctx.emit(&r, || track::summary(&r))?;
        }
        TaskCommand::Gantt { format } => {
            let tasks = store(ctx, None)?.list()?;
            crate::picture::gantt(&tasks, format)?;
        }
        TaskCommand::Graph { format } => {
            let tasks = store(ctx, None)?.list()?;
            match format {
                GraphFormat::Dot => out!("{}", track::dot(&tasks))?,
                GraphFormat::Mermaid => out!("{}", track::mermaid_flowchart(&tasks))?,
                GraphFormat::Svg | GraphFormat::Html => crate::picture::graph(&tasks, format)?,
            }
        }
        TaskCommand::Watch {
            until_done,
            timeout,
        } => return watch(ctx, store(ctx, None)?.as_ref(), until_done, timeout),
    }
    Ok(Exit::Ok)
}

fn transition(ctx: &Ctx, tr: Transition, status: TaskStatus) -> anyhow::Result<()> {
    let tracker = store(ctx, Some(tr.wait))?;
    let id = resolve(tracker.as_ref(), &tr.id)?;
    let mut u = Update::status(status);
    u.note = tr.note;
    u.expected_revision = tr.revision;
    u.ownership = ownership(tr.force);
    if let (Some(resource), Some(token)) = (tr.fence, tr.token) {
        let resource = ResourceName::in_workspace(&ctx.root, &resource).context("--fence")?;
        u = u.fenced(resource, track::FencingToken(token));
    }
    let t = tracker.update(&id, &u).map_err(busy)?;
    ctx.emit(&t, || one_line(&t))
}

/// The live view: a report (and, on a terminal, the table) after every change, woken by the
/// backend's change events (file events, or the server's notifications).
fn watch(
    ctx: &Ctx,
    tracker: &dyn TaskStore,
    until_done: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<Exit> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let tty = !ctx.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        // The version before the report: a change while reporting is not missed.
        let seen = tracker.version()?;
        let r = tracker.report()?;
        let tasks = if tty { tracker.list()? } else { Vec::new() };
        ctx.emit_line(&r, || {
            let clear = if tty { "\x1b[2J\x1b[H" } else { "" };
            format!(
                "{clear}{}\n{}",
                track::summary(&r).trim_end(),
                if tty {
                    track::table(&tasks)
                } else {
                    String::new()
                }
            )
        })?;
        let left = r.pending_tasks + r.blocked_tasks + r.in_progress_tasks + r.review_tasks;
        if until_done && left == 0 {
            return Ok(Exit::Ok);
        }
        // Wait for the next change; a timeout ends the watch (exit 3) without another,
        // unchanged refresh.
        loop {
            let wait = match deadline {
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return Err(exit::Failure::error(
                            Exit::Busy,
                            format!(
                                "watch timed out after {} with {left} task(s) not completed",
                                duration::format(timeout.unwrap_or_default())
                            ),
                        ));
                    }
                    d - now
                }
                None => Duration::from_secs(3600),
            };
            if tracker.wait_changed(seen, wait).map_err(busy)? != seen {
                break;
            }
        }
    }
}
