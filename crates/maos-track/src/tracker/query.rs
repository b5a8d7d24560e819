//! Reads: tasks by id or prefix, pages, history, counts, the critical path.

use std::time::Duration;

use maos_core::{AgentId, TaskId};
use serde::{Deserialize, Serialize};

use super::TaskTracker;
use crate::graph::{self, Adjacency, weight_ms};
use crate::history::TaskDetails;
use crate::store::graph::Graph;
use crate::store::snapshot::corrupt;
use crate::{Error, StatusCounts, Task, TaskStatus};

/// Which tasks [`TaskTracker::list_page_blocking`] returns: every filter set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Query {
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks assigned to this agent.
    pub assignee: Option<AgentId>,
    /// Only tasks assigned to nobody.
    pub unassigned: bool,
    /// Only tasks with this label.
    pub label: Option<String>,
    /// Skip this many matching tasks (creation order).
    pub offset: usize,
    /// Return at most this many (`None`: all).
    pub limit: Option<usize>,
}

impl Query {
    /// Every task.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only tasks in `status`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn status(mut self, status: TaskStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only tasks assigned to `agent`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn assignee(mut self, agent: AgentId) -> Self {
        self.assignee = Some(agent);
        self
    }

    /// Only unassigned tasks.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn unassigned(mut self) -> Self {
        self.unassigned = true;
        self
    }

    /// Only tasks labelled `label`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Skips `offset` matches and returns at most `limit`.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn page(mut self, offset: usize, limit: usize) -> Self {
        self.offset = offset;
        self.limit = Some(limit);
        self
    }
}

/// A page of tasks in creation order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The matching tasks of the page.
    pub tasks: Vec<Task>,
    /// More matching tasks follow the page.
    pub more: bool,
    /// Tasks in the store (all of them, matching or not).
    pub total: u64,
}

/// The first tasks of the ready queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyPage {
    /// Ready tasks in claim order.
    pub tasks: Vec<Task>,
    /// How many tasks are ready in all.
    pub total: u64,
}

/// The critical path: the chain of dependent tasks with the largest total estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriticalPath {
    /// The chain, dependencies first.
    pub tasks: Vec<Task>,
    /// Its total estimated duration.
    pub total: Duration,
}

impl TaskTracker {
    /// The task `id`, if it exists.
    pub fn get_blocking(&self, id: &TaskId) -> Result<Option<Task>, Error> {
        self.read(|g| match g.lookup(id)? {
            Some(o) => g.task(o).map(Some),
            None => Ok(None),
        })
    }

    /// The task `id` with its full history (who did what, when), if it exists.
    pub fn show_blocking(&self, id: &TaskId) -> Result<Option<TaskDetails>, Error> {
        self.read(|g| match g.lookup(id)? {
            Some(o) => {
                let (task, history) = g.details(o)?;
                Ok(Some(TaskDetails {
                    task,
                    history,
                    omitted: 0,
                }))
            }
            None => Ok(None),
        })
    }

    /// Every task, in creation order (reads the whole store). The graph is checked on the
    /// way: a dependency cycle in the files is an error, never a silently empty critical path.
    pub fn list_blocking(&self) -> Result<Vec<Task>, Error> {
        let dir = self.dir().to_path_buf();
        self.read(|g| {
            let tasks = g.all_tasks()?;
            check_acyclic(&dir, &tasks)?;
            Ok(tasks)
        })
    }

    /// The tasks matching `query`, in creation order. Status and assignee filters read the
    /// fixed-width entries only; the cost is what the page scans, not the store's size.
    pub fn list_page_blocking(&self, query: &Query) -> Result<Page, Error> {
        self.read(|g| page(g, query))
    }

    /// Tasks per status, without reading the tasks.
    pub fn counts_blocking(&self) -> Result<StatusCounts, Error> {
        self.read(|g| Ok(counts_of(g)))
    }

    /// The tasks in progress or in review.
    pub fn active_blocking(&self) -> Result<Vec<Task>, Error> {
        self.read(|g| {
            g.active()?
                .into_iter()
                .map(|o| g.task(o))
                .collect::<Result<Vec<_>, _>>()
        })
    }

    /// Resolves a full id or a unique id prefix.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::AmbiguousPrefix`].
    pub fn resolve_blocking(&self, prefix: &str) -> Result<TaskId, Error> {
        self.read(|g| {
            if let Ok(id) = TaskId::parse(prefix)
                && g.lookup(&id)?.is_some()
            {
                return Ok(id);
            }
            let matches = if prefix.is_empty() {
                Vec::new()
            } else {
                g.with_prefix(prefix, 5)?
            };
            match matches.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(Error::NotFound {
                    task: prefix.to_string(),
                }),
                many => Err(Error::AmbiguousPrefix {
                    prefix: prefix.to_string(),
                    matches: many.iter().map(|m| m.to_string()).collect(),
                }),
            }
        })
    }

    /// The critical path over all tasks, weighted by estimates (dependencies first), and its
    /// total estimated duration.
    pub fn critical_path_blocking(&self) -> Result<CriticalPath, Error> {
        let tasks = self.list_blocking()?;
        let adj = Adjacency::of(&tasks);
        let (path, total) =
            graph::critical_path(&adj.deps, &adj.dependents, |i| weight_ms(&tasks[i]));
        Ok(CriticalPath {
            tasks: path
                .into_iter()
                .map(|i| tasks[i as usize].clone())
                .collect(),
            total: Duration::from_millis(total),
        })
    }
}

pub(crate) fn counts_of(g: &Graph) -> StatusCounts {
    StatusCounts::from_codes(&g.counts())
}

/// Refuses a graph whose dependencies form a cycle (no writer creates one: replay and the
/// writers refuse the edge that would close it; a cycle means the files were altered).
fn check_acyclic(dir: &std::path::Path, tasks: &[Task]) -> Result<(), Error> {
    let adj = Adjacency::of(tasks);
    if graph::topo_order(&adj.deps, &adj.dependents).is_ok() {
        return Ok(());
    }
    let cyc = graph::find_cycle(&adj.deps).unwrap_or_default();
    let names: Vec<&str> = cyc.iter().map(|&i| tasks[i as usize].id.as_str()).collect();
    Err(corrupt(
        dir,
        format!(
            "the dependencies form a cycle ({}), which no writer creates",
            names.join(" -> ")
        ),
    ))
}

fn page(g: &mut Graph, q: &Query) -> Result<Page, Error> {
    const BATCH: usize = 1024;
    let limit = q.limit.unwrap_or(usize::MAX);
    let mut hits: Vec<u32> = Vec::new();
    let mut skipped = 0usize;
    let mut more = false;
    let mut from = 0u32;
    // Batches of candidates that pass the cheap filters (status, assignee: the entries
    // only); labels need the task itself.
    while from < g.count() && !more {
        let mut candidates: Vec<u32> = Vec::new();
        let mut last = from;
        g.scan_light(from, |ord, status, assignee| {
            last = ord;
            if q.status.is_some_and(|s| s != status)
                || q.assignee.as_ref().is_some_and(|a| assignee != Some(a))
                || (q.unassigned && assignee.is_some())
            {
                return Ok(true);
            }
            candidates.push(ord);
            Ok(candidates.len() < BATCH)
        })?;
        for ord in candidates {
            if let Some(label) = &q.label
                && !g.task(ord)?.labels.iter().any(|l| l == label)
            {
                continue;
            }
            if skipped < q.offset {
                skipped += 1;
                continue;
            }
            if hits.len() >= limit {
                more = true;
                break;
            }
            hits.push(ord);
        }
        from = last + 1;
    }
    let tasks = hits
        .into_iter()
        .map(|o| g.task(o))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page {
        tasks,
        more,
        total: u64::from(g.count()),
    })
}
