//! Task tools: add (with dependencies), claim, start, review, done, fail, list, ready, show,
//! edit, comment, unassign, report, gantt.

use maos_coordination::core::Priority;
use maos_coordination::track::{self, Ownership, TaskStore, Update};
use maos_coordination::{AgentId, Task, TaskStatus};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::locks::Empty;
use super::{Reply, Server, ToolError, ToolResult};
use crate::exit::Exit;

tool_group! {
    "task_add" => add(Add):
        "Add a task to the shared task list. `after` lists task ids (or unique prefixes) it \
         depends on: it becomes ready only when they are completed. Returns the new task.",
    "task_claim" => claim(Empty):
        "Claim the best ready task for yourself (highest priority, then longest chain after it) \
         and start it. Fails with kind `busy` when no task is ready.",
    "task_start" => start(Id):
        "Mark a task assigned to you as in progress (task_claim already does this for the task \
         it claims).",
    "task_review" => review(Id):
        "Mark a task as done and waiting for review: another agent (or a person) checks it, \
         then task_done completes it or task_fail sends it back.",
    "task_done" => done(Done):
        "Mark a task completed (with an optional note: the result). Tasks depending on it may \
         become ready.",
    "task_fail" => fail(Fail):
        "Mark a task failed, with the reason. Tasks depending on it stay blocked.",
    "task_list" => list(List):
        "List tasks, optionally only those with a status or assigned to an agent.",
    "task_ready" => ready(Ready):
        "List the tasks ready to be claimed, best first.",
    "task_show" => show(Id):
        "Show one task: status, assignee, dependencies, estimate, and its history (who did \
         what, when: created, claimed, status changes with notes, comments, edits).",
    "task_edit" => edit(EditArgs):
        "Change a task in one atomic step (all or nothing): name, description, estimate, \
         priority, labels (replaced), dependencies (`add_after`, `remove_after`: a dependency \
         that would close a cycle is refused) and assignee (handing it over is the \
         assignee's call, or `force`). Give at least one change.",
    "task_comment" => comment(Comment):
        "Add a comment to a task's history (anyone may; the task itself does not change): \
         findings, decisions, hand-over notes for the next agent.",
    "task_unassign" => unassign(Unassign):
        "Give a task up: clear its assignee. A task in progress or in review goes back to the \
         queue for someone else to claim. Only the assignee may, unless `force` is true \
         (recorded in the history).",
    "task_report" => report(Empty):
        "Progress report: counts per status, per agent, the critical path and the estimated \
         time left.",
    "task_gantt" => gantt(Empty):
        "The task plan as a Mermaid Gantt chart (text).",
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Add {
    /// A short name.
    name: String,
    /// What to do, in detail.
    #[serde(default)]
    description: Option<String>,
    /// Ids (or unique prefixes) of tasks that must be completed first.
    #[serde(default)]
    after: Vec<String>,
    /// Estimated duration in minutes.
    #[serde(default)]
    estimate_minutes: Option<u64>,
    /// low, normal (default), high or critical.
    #[serde(default)]
    priority: Option<String>,
    /// Assign it to this agent right away.
    #[serde(default)]
    assign: Option<String>,
    /// Labels.
    #[serde(default)]
    labels: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Id {
    /// The task id (or a unique prefix of it).
    id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EditArgs {
    /// The task id (or a unique prefix of it).
    id: String,
    /// A new name.
    #[serde(default)]
    name: Option<String>,
    /// A new description.
    #[serde(default)]
    description: Option<String>,
    /// A new estimate in minutes.
    #[serde(default)]
    estimate_minutes: Option<u64>,
    /// Remove the estimate.
    #[serde(default)]
    no_estimate: bool,
    /// low, normal, high or critical.
    #[serde(default)]
    priority: Option<String>,
    /// New labels, replacing the old ones (an empty list removes them).
    #[serde(default)]
    labels: Option<Vec<String>>,
    /// Hand the task to this agent.
    #[serde(default)]
    assignee: Option<String>,
    /// Ids (or unique prefixes) of tasks it should also wait for.
    #[serde(default)]
    add_after: Vec<String>,
    /// Ids (or unique prefixes) of tasks it should no longer wait for.
    #[serde(default)]
    remove_after: Vec<String>,
    /// Act on a task assigned to another agent (recorded with your name).
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Comment {
    /// The task id (or a unique prefix of it).
    id: String,
    /// The comment.
    text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Unassign {
    /// The task id (or a unique prefix of it).
    id: String,
    /// Act on a task assigned to another agent (recorded with your name).
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Done {
    /// The task id (or a unique prefix of it).
    id: String,
    /// The result, for people reading the task later.
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Fail {
    /// The task id (or a unique prefix of it).
    id: String,
    /// Why it failed.
    reason: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct List {
    /// Only tasks with this status (pending, blocked, in_progress, review, completed, failed).
    #[serde(default)]
    status: Option<String>,
    /// Only tasks assigned to this agent.
    #[serde(default)]
    assignee: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Ready {
    /// At most this many (default 20).
    #[serde(default)]
    limit: Option<usize>,
}

/// The task store of the workspace's backend, acting as this server's agent.
fn tracker(s: &Server) -> Result<Box<dyn TaskStore>, ToolError> {
    Ok(s.backends().tasks(&s.agent()?, None)?)
}

/// Parses an enum spelled as in the JSON of tasks (`in_progress`, `high`).
fn named<T: serde::de::DeserializeOwned>(what: &str, v: &str) -> Result<T, ToolError> {
    serde_json::from_value(json!(v)).map_err(|_| ToolError::usage(format!("unknown {what} {v:?}")))
}

fn one_line(t: &Task) -> String {
    format!(
        "{} {} \"{}\"{}",
        t.id,
        t.status,
        maos_coordination::core::escape_controls(&t.name),
        t.assigned_to
            .as_ref()
            .map(|a| format!(" @{a}"))
            .unwrap_or_default()
    )
}

async fn add(s: &Server, a: Add) -> ToolResult {
    let tr = tracker(s)?;
    let priority: Priority = a
        .priority
        .as_deref()
        .map(|p| named("priority", p))
        .transpose()?
        .unwrap_or_default();
    let t = s
        .blocking(move |_| {
            let dependencies = a
                .after
                .iter()
                .map(|d| tr.resolve(d))
                .collect::<Result<Vec<_>, _>>()?;
            let assigned_to = a
                .assign
                .map(AgentId::new)
                .transpose()
                .map_err(|e| ToolError::usage(format!("assign: {e}")))?;
            let task = Task {
                name: a.name,
                description: a.description.unwrap_or_default(),
                dependencies,
                assigned_to,
                estimated_duration: a
                    .estimate_minutes
                    .map(|m| std::time::Duration::from_secs(m.saturating_mul(60))),
                priority,
                labels: a.labels,
                ..Task::default()
            };
            Ok(tr.create(&task)?)
        })
        .await?;
    let text = format!("added {}", one_line(&t));
    Reply::new(&t, text)
}

async fn claim(s: &Server, _: Empty) -> ToolResult {
    let tr = tracker(s)?;
    let me = s.agent()?;
    let t = s.blocking(move |_| Ok(tr.claim(&me)?)).await?;
    match t {
        Some(t) => {
            let text = format!("claimed {}", one_line(&t));
            Reply::new(&t, text)
        }
        None => Err(ToolError::new(Exit::Busy, "no task is ready to be claimed")),
    }
}

async fn transition(
    s: &Server,
    id: String,
    status: TaskStatus,
    note: Option<String>,
) -> ToolResult {
    let tr = tracker(s)?;
    let t = s
        .blocking(move |_| {
            let id = tr.resolve(&id)?;
            let mut u = Update::status(status);
            u.note = note;
            Ok(tr.update(&id, &u)?)
        })
        .await?;
    let text = one_line(&t);
    Reply::new(&t, text)
}

async fn start(s: &Server, a: Id) -> ToolResult {
    transition(s, a.id, TaskStatus::InProgress, None).await
}

async fn review(s: &Server, a: Id) -> ToolResult {
    transition(s, a.id, TaskStatus::Review, None).await
}

async fn done(s: &Server, a: Done) -> ToolResult {
    transition(s, a.id, TaskStatus::Completed, a.note).await
}

async fn fail(s: &Server, a: Fail) -> ToolResult {
    transition(s, a.id, TaskStatus::Failed, Some(a.reason)).await
}

async fn list(s: &Server, a: List) -> ToolResult {
    let tr = tracker(s)?;
    let status: Option<TaskStatus> = a
        .status
        .as_deref()
        .map(|v| named("status", v))
        .transpose()?;
    let tasks = s.blocking(move |_| Ok(tr.list()?)).await?;
    let tasks: Vec<Task> = tasks
        .into_iter()
        .filter(|t| status.is_none_or(|st| t.status == st))
        .filter(|t| {
            a.assignee
                .as_deref()
                .is_none_or(|who| t.assigned_to.as_ref().is_some_and(|x| x.as_str() == who))
        })
        .collect();
    let text = format!("{} task(s)", tasks.len());
    Reply::new(&tasks, text)
}

async fn ready(s: &Server, a: Ready) -> ToolResult {
    let tr = tracker(s)?;
    let limit = a.limit.unwrap_or(20);
    let page = s.blocking(move |_| Ok(tr.ready_page(limit)?)).await?;
    let (total, tasks) = (page.total, page.tasks);
    let text = format!("{total} ready task(s)");
    Reply::new(&json!({ "total": total, "tasks": tasks }), text)
}

async fn show(s: &Server, a: Id) -> ToolResult {
    let tr = tracker(s)?;
    let d = s
        .blocking(move |_| {
            let id = tr.resolve(&a.id)?;
            tr.show(&id)?
                .ok_or_else(|| ToolError::new(Exit::Error, format!("task {id} not found")))
        })
        .await?;
    let text = format!(
        "{} ({} event(s) in its history)",
        one_line(&d.task),
        d.history.len()
    );
    Reply::new(&d, text)
}

async fn edit(s: &Server, a: EditArgs) -> ToolResult {
    let tr = tracker(s)?;
    let mut e = track::Edit::new();
    e.name = a.name;
    e.description = a.description;
    if a.no_estimate {
        e.estimate = Some(None);
    } else if let Some(m) = a.estimate_minutes {
        e.estimate = Some(Some(std::time::Duration::from_secs(m.saturating_mul(60))));
    }
    e.priority = a
        .priority
        .as_deref()
        .map(|p| named::<Priority>("priority", p))
        .transpose()?;
    e.labels = a.labels;
    let assignee = a
        .assignee
        .map(AgentId::new)
        .transpose()
        .map_err(|e| ToolError::usage(format!("assignee: {e}")))?;
    let t = s
        .blocking(move |_| {
            let id = tr.resolve(&a.id)?;
            let mut am = track::Amendment::new();
            am.edit = e;
            am.assignee = assignee.map(Some);
            am.add_dependencies = a
                .add_after
                .iter()
                .map(|d| tr.resolve(d))
                .collect::<Result<_, _>>()?;
            am.remove_dependencies = a
                .remove_after
                .iter()
                .map(|d| tr.resolve(d))
                .collect::<Result<_, _>>()?;
            am.ownership = if a.force {
                Ownership::Override
            } else {
                Ownership::Respect
            };
            if am.is_empty() {
                return Err(ToolError::usage(
                    "nothing to change: give name, description, estimate_minutes, \
                     no_estimate, priority, labels, assignee, add_after or remove_after",
                ));
            }
            Ok(tr.amend(&id, &am)?)
        })
        .await?;
    let text = format!("edited {}", one_line(&t));
    Reply::new(&t, text)
}

async fn comment(s: &Server, a: Comment) -> ToolResult {
    let tr = tracker(s)?;
    let d = s
        .blocking(move |_| {
            let id = tr.resolve(&a.id)?;
            tr.comment(&id, &a.text)?;
            tr.show(&id)?
                .ok_or_else(|| ToolError::new(Exit::Error, format!("task {id} not found")))
        })
        .await?;
    let text = format!("commented on {}", one_line(&d.task));
    Reply::new(&d, text)
}

async fn unassign(s: &Server, a: Unassign) -> ToolResult {
    let tr = tracker(s)?;
    let ownership = if a.force {
        Ownership::Override
    } else {
        Ownership::Respect
    };
    let t = s
        .blocking(move |_| {
            let id = tr.resolve(&a.id)?;
            Ok(tr.assign(&id, None, ownership)?)
        })
        .await?;
    let text = format!("unassigned {}", one_line(&t));
    Reply::new(&t, text)
}

async fn report(s: &Server, _: Empty) -> ToolResult {
    let tr = tracker(s)?;
    let r = s.blocking(move |_| Ok(tr.report()?)).await?;
    let text = track::summary(&r);
    Reply::new(&r, text)
}

async fn gantt(s: &Server, _: Empty) -> ToolResult {
    let tr = tracker(s)?;
    let tasks = s.blocking(move |_| Ok(tr.list()?)).await?;
    let chart = track::gantt(&tasks, maos_coordination::core::now_ms());
    Reply::new(&json!({ "mermaid": chart }), chart.clone())
}
