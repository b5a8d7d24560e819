//! `maos task ...`: the shared task graph from the shell.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use maos_coordination::track::{self, Task, TaskStatus, TaskTracker, Update};
use maos_coordination::{AgentId, Priority, ResourceName, TaskId};

use crate::ctx::Ctx;
use crate::duration;
use crate::exit::{self, Exit};

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
    },
    /// List tasks.
    List {
        /// Only tasks with this status (pending, blocked, in_progress, review, completed,
        /// failed).
        #[arg(long, value_name = "STATUS", value_parser = parse_status)]
        status: Option<TaskStatus>,
    },
    /// Show one task.
    Show {
        /// Id or unique id prefix.
        id: String,
    },
    /// Tasks ready to be claimed, in claim order.
    Ready,
    /// Claim the next ready task for this agent and start it (exit 3 when nothing is ready).
    Claim,
    /// Start work on a task (in progress).
    Start(Transition),
    /// Hand a task in for review.
    Review(Transition),
    /// Complete a task.
    Done(Transition),
    /// Mark a task failed (its dependents stay blocked with the reason).
    Fail(Transition),
    /// Put a task back in the queue (from in progress, review or failed).
    Reset(Transition),
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

#[derive(Debug, clap::Args)]
pub(crate) struct Transition {
    /// Id or unique id prefix.
    id: String,
    /// Result (done), reason (fail) or any note.
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

fn open(ctx: &Ctx) -> anyhow::Result<TaskTracker> {
    let ws = ctx.workspace()?;
    let opts = track::Options::default().agent(ctx.agent.clone());
    TaskTracker::open_with(&ws, opts).context("opening the task store")
}

fn resolve(t: &TaskTracker, id: &str) -> anyhow::Result<TaskId> {
    Ok(t.resolve_blocking(id)?)
}

fn one_line(t: &Task) -> String {
    let agent = t
        .assigned_to
        .as_ref()
        .map(|a| format!(" @{a}"))
        .unwrap_or_default();
    format!("{}  {:<11} {}{agent}", t.id, t.status, t.name)
}

fn details(t: &Task) -> String {
    let mut s = format!(
        "{}  {}\nstatus:      {}\npriority:    {}\nrevision:    {}\n",
        t.id,
        t.name,
        t.status,
        format!("{:?}", t.priority).to_lowercase(),
        t.revision
    );
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<12} {v}\n"));
    if !t.description.is_empty() {
        line("description:", t.description.clone());
    }
    if let Some(a) = &t.assigned_to {
        line("assigned to:", a.to_string());
    }
    if !t.dependencies.is_empty() {
        line(
            "after:",
            t.dependencies
                .iter()
                .map(TaskId::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if !t.labels.is_empty() {
        line("labels:", t.labels.join(", "));
    }
    if let Some(d) = t.estimated_duration {
        line("estimate:", duration::format(d));
    }
    if t.attempts > 0 {
        line("attempts:", t.attempts.to_string());
    }
    if let Some(n) = &t.note {
        line("note:", n.clone());
    }
    if let Some(r) = &t.blocked_reason {
        line("blocked by:", r.clone());
    }
    s
}

pub(crate) fn run(cmd: TaskCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    let tracker = open(ctx)?;
    match cmd {
        TaskCommand::Add {
            name,
            description,
            after,
            assign,
            estimate,
            priority,
            label,
        } => {
            let dependencies = after
                .iter()
                .map(|a| resolve(&tracker, a))
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
            let id = tracker.create_task_blocking(&task)?;
            let t = tracker.get_blocking(&id)?;
            ctx.emit(&t, || id.to_string())?;
        }
        TaskCommand::List { status } => {
            let tasks: Vec<Task> = tracker
                .list_blocking()?
                .into_iter()
                .filter(|t| status.is_none_or(|s| t.status == s))
                .collect();
            ctx.emit(&tasks, || track::table(&tasks))?;
        }
        TaskCommand::Show { id } => {
            let id = resolve(&tracker, &id)?;
            let t = tracker
                .get_blocking(&id)?
                .with_context(|| format!("task {id} not found"))?;
            ctx.emit(&t, || details(&t))?;
        }
        TaskCommand::Ready => {
            let ready = tracker.ready_blocking()?;
            if ctx.json {
                ctx.emit(&ready, String::new)?;
            } else {
                use std::io::Write as _;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for t in &ready {
                    writeln!(out, "{}", one_line(t))?;
                }
                out.flush()?;
            }
        }
        TaskCommand::Claim => match tracker.claim_blocking(&ctx.agent)? {
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
        },
        TaskCommand::Start(tr) => transition(ctx, &tracker, tr, TaskStatus::InProgress)?,
        TaskCommand::Review(tr) => transition(ctx, &tracker, tr, TaskStatus::Review)?,
        TaskCommand::Done(tr) => transition(ctx, &tracker, tr, TaskStatus::Completed)?,
        TaskCommand::Fail(tr) => transition(ctx, &tracker, tr, TaskStatus::Failed)?,
        TaskCommand::Reset(tr) => transition(ctx, &tracker, tr, TaskStatus::Pending)?,
        TaskCommand::Report => {
            let r = track::ProgressVisualizer::new(tracker).generate_progress_report_blocking()?;
            ctx.emit(&r, || track::summary(&r))?;
        }
        TaskCommand::Gantt { format } => {
            crate::picture::gantt(&tracker.list_blocking()?, format)?;
        }
        TaskCommand::Graph { format } => {
            let tasks = tracker.list_blocking()?;
            match format {
                GraphFormat::Dot => out!("{}", track::dot(&tasks))?,
                GraphFormat::Mermaid => out!("{}", track::mermaid_flowchart(&tasks))?,
                GraphFormat::Svg | GraphFormat::Html => crate::picture::graph(&tasks, format)?,
            }
        }
        TaskCommand::Watch {
            until_done,
            timeout,
        } => return watch(ctx, tracker, until_done, timeout),
    }
    Ok(Exit::Ok)
}

fn transition(
    ctx: &Ctx,
    tracker: &TaskTracker,
    tr: Transition,
    status: TaskStatus,
) -> anyhow::Result<()> {
    let id = resolve(tracker, &tr.id)?;
    let mut u = Update::status(status);
    u.note = tr.note;
    u.expected_revision = tr.revision;
    if let (Some(resource), Some(token)) = (tr.fence, tr.token) {
        let resource =
            ResourceName::in_workspace(tracker.workspace().root(), &resource).context("--fence")?;
        u = u.fenced(resource, track::FencingToken(token));
    }
    let t = tracker.update_blocking(&id, &u)?;
    ctx.emit(&t, || one_line(&t))
}

fn watch(
    ctx: &Ctx,
    tracker: TaskTracker,
    until_done: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<Exit> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let vis = track::ProgressVisualizer::new(tracker.clone());
        let mut w = tracker.watch()?;
        let tty = !ctx.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
        loop {
            let r = vis.generate_progress_report().await?;
            let tasks = tracker.list().await?;
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
            let seen = w.seen();
            loop {
                let wait = match deadline {
                    Some(d) => {
                        let now = tokio::time::Instant::now();
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
                if w.changed(wait).await? != seen {
                    break;
                }
            }
        }
    })
}

fn parse_status(s: &str) -> Result<TaskStatus, String> {
    s.parse::<TaskStatus>().map_err(|e| e.to_string())
}
