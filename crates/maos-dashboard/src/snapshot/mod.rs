//! The snapshot of a workspace that the web page and the terminal view render, and the
//! [`Collector`] that builds it from the libraries' own read calls.
//!
//! Everything that knows the stores' APIs lives in this module: when a store changes its
//! API, this is the one place to adapt. The collector keeps the stores open and caches each
//! section, so a refresh re-reads only what [`Changed`] names: the task store reads its log's
//! new tail, each changed channel is read from its cursor, the lock table is read once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use maos_core::{AgentId, Liveness};
use maos_lock::{LockMode, WaitEdge};
use maos_merge::Prediction;
use maos_track::{StatusCounts, Task, TaskStatus};
use serde::Serialize;

mod collect;
mod merges;

pub use collect::{Collector, MergeInputs};
pub use merges::{predict, predict_with};

/// Recent messages kept per channel.
pub const RECENT_MESSAGES: usize = 20;
/// Branches above which branches are checked against the target only, not pairwise (the
/// pairwise check costs n(n-1)/2 merges).
pub const MAX_PAIRWISE_BRANCHES: usize = 16;
/// Characters of a message payload or a note shown.
const SUMMARY_CHARS: usize = 200;

/// What changed since the last refresh (what a [`Collector::refresh`] re-reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// The agent registry (or the liveness of its processes).
    pub agents: bool,
    /// The lock table.
    pub locks: bool,
    /// The task store.
    pub tasks: bool,
    /// The merge queue.
    pub queue: bool,
    /// Git refs (the merge prediction must be recomputed).
    pub refs: bool,
    /// Channels with new messages.
    pub channels: ChannelSet,
}

/// Which channels changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ChannelSet {
    /// None.
    #[default]
    None,
    /// These (by name).
    Some(BTreeSet<String>),
    /// Any (re-list the channels and read every one that grew).
    All,
}

impl ChannelSet {
    pub(crate) fn merge_in(&mut self, other: ChannelSet) {
        *self = match (std::mem::take(self), other) {
            (ChannelSet::All, _) | (_, ChannelSet::All) => ChannelSet::All,
            (ChannelSet::None, x) | (x, ChannelSet::None) => x,
            (ChannelSet::Some(mut a), ChannelSet::Some(b)) => {
                a.extend(b);
                ChannelSet::Some(a)
            }
        };
    }

    fn is_none(&self) -> bool {
        matches!(self, ChannelSet::None)
    }
}

impl Changed {
    /// Everything (the first refresh, a lost event).
    pub fn all() -> Self {
        Self {
            agents: true,
            locks: true,
            tasks: true,
            queue: true,
            refs: true,
            channels: ChannelSet::All,
        }
    }

    /// What time alone changes: liveness of agents (processes end without a file event) and
    /// lock leases that run out.
    pub fn time() -> Self {
        Self {
            agents: true,
            locks: true,
            ..Self::default()
        }
    }

    /// Adds `other` to this set.
    pub fn merge(&mut self, other: Changed) {
        self.agents |= other.agents;
        self.locks |= other.locks;
        self.tasks |= other.tasks;
        self.queue |= other.queue;
        self.refs |= other.refs;
        self.channels.merge_in(other.channels);
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        !(self.agents || self.locks || self.tasks || self.queue || self.refs)
            && self.channels.is_none()
    }
}

// ---------------------------------------------------------------------------------------------
// The snapshot

/// Everything the dashboard shows, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Increases with every change of content (0 before the first publication).
    pub version: u64,
    /// The version at which the tasks last changed (the pictures are redrawn then).
    pub tasks_version: u64,
    /// When it was taken (ms since the Unix epoch, this host's clock).
    pub taken_at: u64,
    /// The workspace root.
    pub workspace: PathBuf,
    /// Registered agents, by id.
    pub agents: Vec<AgentView>,
    /// Locks, waiters and deadlocks.
    pub locks: LocksView,
    /// Tasks: counts, critical path, ETA, rows.
    pub tasks: TasksView,
    /// Recent messages per channel and topic, most recently active first.
    pub messages: Vec<ChannelView>,
    /// Merge prediction and queue.
    pub merges: MergesView,
    /// Sections that could not be read (their previous content is kept).
    pub problems: Vec<Problem>,
    /// The tasks themselves, for the pictures.
    #[serde(skip)]
    pub task_list: Arc<Vec<Task>>,
}

impl Snapshot {
    /// True when `self` and `other` show the same thing (ignoring version and time taken).
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.agents == other.agents
            && self.locks == other.locks
            && self.tasks == other.tasks
            && self.messages == other.messages
            && self.merges == other.merges
            && self.problems == other.problems
    }
}

/// A section that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `agents`, `locks`, `deadlocks`, `tasks`, `messages`, `queue` or `merges`.
    pub section: String,
    /// The error, for a person.
    pub message: String,
}

/// One agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentView {
    /// The agent.
    pub id: AgentId,
    /// Its role.
    pub role: Option<String>,
    /// Alive, leased or dead.
    pub liveness: Liveness,
    /// The process keeping it alive, if one runs.
    pub anchor: Option<AnchorView>,
    /// End of its lease (ms since the Unix epoch).
    pub lease_until: u64,
    /// Its latest call (ms since the Unix epoch).
    pub last_seen: u64,
    /// Its git branch.
    pub branch: Option<String>,
    /// Its worktree.
    pub worktree: Option<PathBuf>,
    /// The task it works on (the most recently started active one).
    pub current_task: Option<TaskRef>,
    /// Locks it holds.
    pub locks_held: usize,
    /// Lock waits it has queued.
    pub waiting: usize,
}

/// The process standing for an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorView {
    /// `session` or `ancestor`.
    pub kind: String,
    /// Its pid.
    pub pid: u32,
    /// Its host.
    pub host: String,
}

/// A task named somewhere else (an agent's current task, the critical path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRef {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: TaskStatus,
    /// Assignee.
    pub assigned_to: Option<String>,
}

impl TaskRef {
    fn of(t: &Task) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            status: t.status,
            assigned_to: t.assigned_to.as_ref().map(ToString::to_string),
        }
    }
}

/// The lock table as shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocksView {
    /// Held locks, by resource.
    pub holders: Vec<LockView>,
    /// Queued waiters, in ticket (arrival) order.
    pub waiters: Vec<WaiterView>,
    /// Cycles of waits.
    pub deadlocks: Vec<DeadlockView>,
}

/// One held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockView {
    /// The resource (path or pattern).
    pub resource: String,
    /// `exclusive` or `shared`.
    pub mode: LockMode,
    /// The holder.
    pub owner: String,
    /// Why it is held.
    pub purpose: String,
    /// When it was granted (ms since the Unix epoch).
    pub acquired_at: u64,
    /// When the lease ends unless renewed (ms since the Unix epoch).
    pub expires_at: u64,
    /// The fencing token.
    pub token: u64,
    /// The holding process, when a process (not an agent's lease) holds it.
    pub pid: Option<u32>,
    /// Tickets of the waiters it blocks, in arrival order.
    pub waiters: Vec<u64>,
    /// Whether its owner is registered and dead (its locks may be released).
    pub owner_dead: bool,
}

/// One queued waiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaiterView {
    /// Arrival order.
    pub ticket: u64,
    /// The resource wanted.
    pub resource: String,
    /// `exclusive` or `shared`.
    pub mode: LockMode,
    /// The waiting agent.
    pub agent: String,
    /// When it started waiting (ms since the Unix epoch).
    pub since: u64,
    /// Why it wants the lock.
    pub purpose: String,
    /// The agents holding a conflicting lock.
    pub blocked_by: Vec<String>,
    /// Its wait was aborted to break a deadlock.
    pub aborted: bool,
}

/// One deadlock: a cycle of agents waiting for each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadlockView {
    /// The cycle, named: `a -> b -> a`.
    pub name: String,
    /// The agents in it, sorted.
    pub agents: Vec<String>,
    /// The waits forming it.
    pub waits: Vec<WaitEdge>,
    /// The wait to abort (youngest in the cycle).
    pub victim: String,
    /// Its ticket.
    pub victim_ticket: u64,
    /// The resource it waits for.
    pub victim_resource: String,
}

/// The task graph as shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TasksView {
    /// Counts per status.
    pub counts: StatusCounts,
    /// Completed share in percent.
    pub percentage: f64,
    /// Counts per agent (`unassigned` for tasks without one).
    pub by_agent: BTreeMap<String, StatusCounts>,
    /// The critical path, dependencies first.
    pub critical_path: Vec<TaskRef>,
    /// Its total estimate (ms).
    pub critical_path_ms: u64,
    /// Work left along the longest chain of unfinished tasks (ms).
    pub remaining_ms: u64,
    /// Estimated completion (ms since the Unix epoch); none when nothing is left.
    pub eta: Option<u64>,
    /// Every task, active ones first.
    pub rows: Vec<TaskRow>,
}

/// One task in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: TaskStatus,
    /// Assignee.
    pub assigned_to: Option<String>,
    /// Priority.
    pub priority: maos_core::Priority,
    /// Estimate (ms), if any.
    pub estimate_ms: Option<u64>,
    /// When work started (ms since the Unix epoch).
    pub started_at: Option<u64>,
    /// When it was completed.
    pub completed_at: Option<u64>,
    /// Number of dependencies.
    pub dependencies: usize,
    /// On the critical path.
    pub critical: bool,
    /// Its latest note (excerpt).
    pub note: Option<String>,
    /// Why it is blocked beyond its dependencies.
    pub blocked_reason: Option<String>,
}

/// Kinds of channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A shared channel.
    Channel,
    /// A broadcast topic (`broadcast/<topic>`).
    Topic,
    /// An agent's inbox (`direct/<agent>`).
    Inbox,
}

/// One channel's recent traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelView {
    /// The channel's name (`broadcast/<topic>` for a topic).
    pub name: String,
    /// What it is.
    pub kind: ChannelKind,
    /// The topic, for a topic channel.
    pub topic: Option<String>,
    /// Position of its newest message (how many were ever sent); for a topic, the broadcasts
    /// on it in the feed's recent history (the last 1,000 broadcasts when the dashboard
    /// started, and every one since).
    pub total: u64,
    /// The newest messages, oldest first.
    pub recent: Vec<MessageView>,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    /// Its position in the channel.
    pub position: u64,
    /// Sent at (sender's clock, ms since the Unix epoch).
    pub timestamp: u64,
    /// The sender.
    pub sender: String,
    /// The addressees, for a person: `all`, `@a`, `@a @b`, `role backend`.
    pub to: String,
    /// The agents it is addressed to by name (for filtering).
    pub to_agents: Vec<String>,
    /// The payload, shortened.
    pub summary: String,
}

/// Merges: which agent branches would conflict, and the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MergesView {
    /// `no_repository`, `pending` (being computed), `ready` or `error`.
    pub state: String,
    /// The target branch.
    pub target: Option<String>,
    /// Agents' branches, as labelled in the pairs (`<branch> (<agent>)`).
    pub branches: Vec<String>,
    /// Each branch merged into the target, and (up to [`MAX_PAIRWISE_BRANCHES`] branches)
    /// each pair of branches.
    pub prediction: Option<Prediction>,
    /// Pairs were not checked (too many branches).
    pub pairwise_skipped: bool,
    /// Why the prediction failed.
    pub error: Option<String>,
    /// When it was computed (ms since the Unix epoch).
    pub computed_at: u64,
    /// The merge queue, oldest first.
    pub queue: Vec<QueueView>,
}

/// One merge queue entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueView {
    /// Its id.
    pub id: u64,
    /// What is merged.
    pub source: String,
    /// Into what.
    pub target: String,
    /// `queued`, `blocked`, `merged` or `failed`.
    pub status: maos_merge::EntryStatus,
    /// Who asked.
    pub requested_by: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Paths that conflicted.
    pub conflicted_paths: Vec<String>,
    /// The error, for a failed entry.
    pub error: Option<String>,
    /// Last change (ms since the Unix epoch).
    pub updated_at: u64,
}

// ---------------------------------------------------------------------------------------------
// Pages of the snapshot (what the web page fetches)

/// Which rows of the big tables a client wants, and filters.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct ViewQuery {
    /// First task row.
    pub tasks_offset: usize,
    /// Task rows (default 100, at most 1,000).
    pub tasks_limit: Option<usize>,
    /// Only tasks in this status.
    pub tasks_status: Option<String>,
    /// Only tasks of this agent (`unassigned` for none).
    pub tasks_agent: Option<String>,
    /// Only tasks whose name or id contains this (case-insensitive).
    pub tasks_q: Option<String>,
    /// First lock row.
    pub locks_offset: usize,
    /// Lock rows (default 100, at most 1,000).
    pub locks_limit: Option<usize>,
    /// Only locks whose resource or owner contains this (case-insensitive).
    pub locks_q: Option<String>,
}

/// A page of rows.
#[derive(Debug, Clone, Serialize)]
pub struct Page<'a, T> {
    /// Index of the first row.
    pub offset: usize,
    /// Rows matching the filter.
    pub total: usize,
    /// The rows.
    pub rows: Vec<&'a T>,
}

/// What the page renders: the snapshot with its big tables cut into pages.
#[derive(Debug, Clone, Serialize)]
pub struct View<'a> {
    /// Snapshot version.
    pub version: u64,
    /// The version at which the tasks last changed.
    pub tasks_version: u64,
    /// When the snapshot was taken.
    pub taken_at: u64,
    /// The workspace root.
    pub workspace: &'a std::path::Path,
    /// Every agent.
    pub agents: &'a [AgentView],
    /// Locks.
    pub locks: LocksPage<'a>,
    /// Tasks.
    pub tasks: TasksPage<'a>,
    /// Messages (the most recently active channels, at most 200).
    pub messages: &'a [ChannelView],
    /// Merges.
    pub merges: &'a MergesView,
    /// Problems.
    pub problems: &'a [Problem],
}

/// Locks, paged.
#[derive(Debug, Clone, Serialize)]
pub struct LocksPage<'a> {
    /// Locks held in total.
    pub held: usize,
    /// The page of holders.
    pub page: Page<'a, LockView>,
    /// Every waiter (in ticket order).
    pub waiters: &'a [WaiterView],
    /// Every deadlock.
    pub deadlocks: &'a [DeadlockView],
}

/// Tasks, paged.
#[derive(Debug, Clone, Serialize)]
pub struct TasksPage<'a> {
    /// Counts per status.
    pub counts: &'a StatusCounts,
    /// Completed share in percent.
    pub percentage: f64,
    /// Counts per agent.
    pub by_agent: &'a BTreeMap<String, StatusCounts>,
    /// The critical path.
    pub critical_path: &'a [TaskRef],
    /// Its total estimate (ms).
    pub critical_path_ms: u64,
    /// Work left (ms).
    pub remaining_ms: u64,
    /// Estimated completion.
    pub eta: Option<u64>,
    /// The page of rows.
    pub page: Page<'a, TaskRow>,
}

fn page<'a, T>(
    rows: impl Iterator<Item = &'a T>,
    offset: usize,
    limit: Option<usize>,
) -> Page<'a, T> {
    let limit = limit.unwrap_or(100).clamp(1, 1000);
    let mut total = 0usize;
    let mut out = Vec::new();
    for r in rows {
        if total >= offset && out.len() < limit {
            out.push(r);
        }
        total += 1;
    }
    Page {
        offset,
        total,
        rows: out,
    }
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(needle)
}

impl Snapshot {
    /// The page a client asked for.
    pub fn view(&self, q: &ViewQuery) -> View<'_> {
        let tq = q.tasks_q.as_deref().map(str::to_lowercase);
        let tasks = self.tasks.rows.iter().filter(|t| {
            q.tasks_status
                .as_deref()
                .is_none_or(|s| t.status.as_str() == s)
                && q.tasks_agent
                    .as_deref()
                    .is_none_or(|a| t.assigned_to.as_deref().unwrap_or("unassigned") == a)
                && tq
                    .as_deref()
                    .is_none_or(|n| contains_ci(&t.name, n) || t.id.contains(n))
        });
        let lq = q.locks_q.as_deref().map(str::to_lowercase);
        let locks = self.locks.holders.iter().filter(|l| {
            lq.as_deref()
                .is_none_or(|n| contains_ci(&l.resource, n) || contains_ci(&l.owner, n))
        });
        View {
            version: self.version,
            tasks_version: self.tasks_version,
            taken_at: self.taken_at,
            workspace: &self.workspace,
            agents: &self.agents,
            locks: LocksPage {
                held: self.locks.holders.len(),
                page: page(locks, q.locks_offset, q.locks_limit),
                waiters: &self.locks.waiters,
                deadlocks: &self.locks.deadlocks,
            },
            tasks: TasksPage {
                counts: &self.tasks.counts,
                percentage: self.tasks.percentage,
                by_agent: &self.tasks.by_agent,
                critical_path: &self.tasks.critical_path,
                critical_path_ms: self.tasks.critical_path_ms,
                remaining_ms: self.tasks.remaining_ms,
                eta: self.tasks.eta,
                page: page(tasks, q.tasks_offset, q.tasks_limit),
            },
            messages: &self.messages[..self.messages.len().min(200)],
            merges: &self.merges,
            problems: &self.problems,
        }
    }

    /// The earliest moment after `now` at which time alone changes what is shown (a lock
    /// lease or an agent lease runs out), if any.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        self.locks
            .holders
            .iter()
            .map(|l| l.expires_at)
            .chain(self.agents.iter().map(|a| a.lease_until))
            .filter(|&t| t > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_sets_merge() {
        let mut c = Changed::default();
        assert!(c.is_empty());
        c.merge(Changed {
            channels: ChannelSet::Some(["a".to_string()].into()),
            ..Changed::default()
        });
        c.merge(Changed {
            channels: ChannelSet::Some(["b".to_string()].into()),
            ..Changed::default()
        });
        assert_eq!(
            c.channels,
            ChannelSet::Some(["a".to_string(), "b".to_string()].into())
        );
        c.merge(Changed::all());
        assert_eq!(c.channels, ChannelSet::All);
        assert!(!c.is_empty());
    }

    #[test]
    fn pages_are_bounded() {
        let rows: Vec<u32> = (0..2500).collect();
        let p = page(rows.iter(), 2400, Some(5000));
        assert_eq!(p.total, 2500);
        assert_eq!(p.rows.len(), 100);
        let p = page(rows.iter(), 0, None);
        assert_eq!(p.rows.len(), 100);
        let p = page(rows.iter(), 9999, Some(10));
        assert!(p.rows.is_empty());
    }
}
