//! The [`Collector`]: keeps the stores open and builds snapshots, re-reading only what
//! changed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use maos_comm::{Cursor, FileChannel, Filter};
use maos_core::{AgentId, AgentRegistry, Liveness, Recipients, Workspace, excerpt, now_ms};
use maos_lock::{DeadlockDetector, LockMode, LockTable};
use maos_merge::{ConflictDetector, MergeCoordinator, MergeQueue};
use maos_track::{StatusCounts, Task, TaskStatus, TaskTracker};

use crate::stores::Stores;

use super::{
    AgentView, AnchorView, Changed, ChannelKind, ChannelSet, ChannelView, DeadlockView, LockView,
    LocksView, MergesView, MessageView, Problem, QueueView, RECENT_MESSAGES, SUMMARY_CHARS,
    Snapshot, TaskRef, TaskRow, TasksView, WaiterView,
};

struct ChannelState {
    channel: FileChannel,
    cursor: Cursor,
    newest: u64,
    recent: VecDeque<MessageView>,
}

/// The broadcast feed, read once for every topic: each broadcast is one record on the feed
/// carrying its topic, shown under `broadcast/<topic>`.
struct FeedState {
    subscription: maos_comm::Subscription,
    /// Per topic: broadcasts seen (since the recent history the dashboard started from) and
    /// the newest of them.
    topics: BTreeMap<String, (u64, VecDeque<MessageView>)>,
}

/// How far back in the feed a starting dashboard reads (every topic's recent messages).
const FEED_BACKLOG: u64 = 1_000;

/// The view of a channel whose newest position is `newest`, with its recent messages.
fn channel_view(name: &str, newest: u64, recent: &VecDeque<MessageView>) -> ChannelView {
    let (kind, topic) = channel_kind(name);
    ChannelView {
        name: name.to_owned(),
        kind,
        topic,
        total: newest,
        recent: recent.iter().cloned().collect(),
    }
}

/// A channel read through [`ChannelStore`](maos_comm::ChannelStore) (a backend other than
/// the files): where the dashboard is in it and its latest messages.
#[derive(Default)]
struct StoreChannel {
    cursor: u64,
    newest: u64,
    recent: VecDeque<MessageView>,
}

/// Batches read from one channel per refresh; a channel that has more is read from its
/// newest messages on the next one.
const MAX_BATCHES: usize = 16;

/// Agents as last read, before joining with tasks and locks.
struct AgentBase {
    id: AgentId,
    role: Option<String>,
    liveness: Liveness,
    anchor: Option<AnchorView>,
    lease_until: u64,
    last_seen: u64,
    branch: Option<String>,
    worktree: Option<PathBuf>,
}

/// What the merge prediction needs, read from the registry and the repository: compare it
/// with the previous one to know whether to predict again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeInputs {
    /// The target branch (the branch checked out at the workspace root).
    pub target: Option<String>,
    /// Agents' branches: (agent, branch).
    pub branches: Vec<(String, String)>,
}

/// Builds [`Snapshot`]s of one workspace, re-reading only what changed. Blocking: run it on a
/// blocking thread.
pub struct Collector {
    ws: Workspace,
    actor: AgentId,
    /// The stores of a backend that is not the files (read through the traits), if any.
    stores: Option<Stores>,
    store_channels: BTreeMap<String, StoreChannel>,
    /// A channel could not be read to its end: list every channel again on the next read.
    relist: bool,
    tracker: Option<TaskTracker>,
    locks: Option<LockTable>,
    coordinator: Option<MergeCoordinator>,
    channels: BTreeMap<String, ChannelState>,
    feed: Option<FeedState>,
    agents: Vec<AgentBase>,
    locks_view: LocksView,
    tasks_view: TasksView,
    task_list: Arc<Vec<Task>>,
    current: HashMap<String, TaskRef>,
    queue: Vec<QueueView>,
    merges: MergesView,
    problems: BTreeMap<&'static str, String>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("workspace", &self.ws.root())
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// A collector for `ws`; `actor` is the agent it reads as (recorded nowhere: reading
    /// changes nothing but what the stores themselves tidy, such as dead lock holders).
    pub fn new(ws: &Workspace, actor: AgentId) -> Self {
        Self {
            ws: ws.clone(),
            actor,
            stores: None,
            store_channels: BTreeMap::new(),
            relist: false,
            tracker: None,
            locks: None,
            coordinator: None,
            channels: BTreeMap::new(),
            feed: None,
            agents: Vec::new(),
            locks_view: LocksView::default(),
            tasks_view: TasksView::default(),
            task_list: Arc::new(Vec::new()),
            current: HashMap::new(),
            queue: Vec::new(),
            merges: MergesView {
                state: "pending".into(),
                ..MergesView::default()
            },
            problems: BTreeMap::new(),
        }
    }

    /// A collector for `ws` whose state is in `stores` (a backend other than the files),
    /// read through the mechanisms' traits. Git (the merge prediction) stays local.
    pub fn with_stores(ws: &Workspace, actor: AgentId, stores: Stores) -> Self {
        let mut c = Self::new(ws, actor);
        c.stores = Some(stores);
        c
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// The stores read through the traits, when not the files.
    pub fn stores(&self) -> Option<&Stores> {
        self.stores.as_ref()
    }

    /// The sections that could not be read at the last refresh, as a set to read again.
    pub fn failed(&self) -> Changed {
        let mut c = Changed::default();
        for s in self.problems.keys() {
            match *s {
                "agents" => c.agents = true,
                "locks" | "deadlocks" => c.locks = true,
                "tasks" => c.tasks = true,
                "queue" => c.queue = true,
                "messages" => c.channels = ChannelSet::All,
                _ => {}
            }
        }
        c
    }

    fn note<T, E: std::fmt::Display>(
        &mut self,
        section: &'static str,
        r: Result<T, E>,
    ) -> Option<T> {
        match r {
            Ok(v) => {
                self.problems.remove(section);
                Some(v)
            }
            Err(e) => {
                tracing::warn!(section, error = %e, "dashboard: cannot read this section");
                self.problems.insert(section, e.to_string());
                None
            }
        }
    }

    /// Re-reads what `changed` names and returns the new snapshot (version 0: the caller
    /// numbers publications).
    pub fn refresh(&mut self, changed: &Changed) -> Snapshot {
        let now = now_ms();
        if let Some(stores) = self.stores.clone() {
            return self.refresh_stores(&stores, changed, now);
        }
        if changed.agents {
            self.read_agents(now);
        }
        if changed.tasks {
            self.read_tasks(now);
        }
        if changed.locks || changed.agents {
            self.read_locks();
        }
        if !changed.channels.is_none() {
            self.read_messages(&changed.channels);
        }
        if changed.queue {
            self.read_queue();
        }
        self.assemble(now)
    }

    fn assemble(&self, now: u64) -> Snapshot {
        let mut held: HashMap<&str, usize> = HashMap::new();
        for l in &self.locks_view.holders {
            *held.entry(l.owner.as_str()).or_default() += 1;
        }
        let mut waiting: HashMap<&str, usize> = HashMap::new();
        for w in &self.locks_view.waiters {
            *waiting.entry(w.agent.as_str()).or_default() += 1;
        }
        let agents = self
            .agents
            .iter()
            .map(|a| AgentView {
                id: a.id.clone(),
                role: a.role.clone(),
                liveness: a.liveness,
                anchor: a.anchor.clone(),
                lease_until: a.lease_until,
                last_seen: a.last_seen,
                branch: a.branch.clone(),
                worktree: a.worktree.clone(),
                current_task: self.current.get(a.id.as_str()).cloned(),
                locks_held: held.get(a.id.as_str()).copied().unwrap_or(0),
                waiting: waiting.get(a.id.as_str()).copied().unwrap_or(0),
            })
            .collect();
        let mut messages: Vec<ChannelView> = self
            .channels
            .iter()
            .filter(|(_, c)| c.newest > 0)
            .map(|(name, c)| channel_view(name, c.newest, &c.recent))
            .chain(
                self.store_channels
                    .iter()
                    .filter(|(_, c)| c.newest > 0)
                    .map(|(name, c)| channel_view(name, c.newest, &c.recent)),
            )
            .chain(self.feed.iter().flat_map(|f| {
                f.topics.iter().map(|(topic, (seen, recent))| ChannelView {
                    name: format!("{}{topic}", maos_comm::TOPIC_PREFIX),
                    kind: ChannelKind::Topic,
                    topic: Some(topic.clone()),
                    total: *seen,
                    recent: recent.iter().cloned().collect(),
                })
            }))
            .collect();
        let latest = |c: &ChannelView| c.recent.last().map_or(0, |m| m.timestamp);
        messages.sort_by(|a, b| latest(b).cmp(&latest(a)).then(a.name.cmp(&b.name)));
        let mut merges = self.merges.clone();
        merges.queue = self.queue.clone();
        Snapshot {
            version: 0,
            tasks_version: 0,
            taken_at: now,
            workspace: self.ws.root().to_path_buf(),
            agents,
            locks: self.locks_view.clone(),
            tasks: self.tasks_view.clone(),
            messages,
            merges,
            problems: self
                .problems
                .iter()
                .map(|(s, m)| Problem {
                    section: (*s).to_string(),
                    message: m.clone(),
                })
                .collect(),
            task_list: self.task_list.clone(),
        }
    }

    fn read_agents(&mut self, now: u64) {
        let list = AgentRegistry::new(&self.ws).list();
        let Some(list) = self.note("agents", list) else {
            return;
        };
        if let Some(p) = list.problems.first() {
            self.problems.insert(
                "agents",
                format!(
                    "{} unreadable agent record(s), first: {p}",
                    list.problems.len()
                ),
            );
        }
        self.agents = list
            .agents
            .into_iter()
            .map(|r| {
                let anchor = r.live_anchor().map(|a| anchor_view(&a));
                let liveness = if anchor.is_some() {
                    Liveness::Alive
                } else {
                    r.liveness_at(now)
                };
                agent_base(r, liveness, anchor)
            })
            .collect();
    }

    fn read_locks(&mut self) {
        if self.locks.is_none() {
            let t = LockTable::open(&self.ws);
            self.locks = self.note("locks", t);
        }
        let Some(table) = self.locks.clone() else {
            return;
        };
        let snap = table.snapshot();
        let Some(snap) = self.note("locks", snap) else {
            return;
        };
        // A cycle needs waits: without waiters there is nothing to detect (and no second read
        // of the table).
        let deadlocks = if snap.waiters.is_empty() {
            self.problems.remove("deadlocks");
            Vec::new()
        } else {
            let found = DeadlockDetector::new(&self.ws).broadcast(false).detect();
            self.note("deadlocks", found).unwrap_or_default()
        };
        self.show_locks(&snap, &deadlocks);
    }

    fn show_locks(&mut self, snap: &maos_lock::Snapshot, deadlocks: &[maos_lock::Deadlock]) {
        let dead: HashSet<&str> = self
            .agents
            .iter()
            .filter(|a| a.liveness.is_dead())
            .map(|a| a.id.as_str())
            .collect();
        self.locks_view = locks_view(snap, deadlocks, &dead);
    }

    fn read_tasks(&mut self, now: u64) {
        if self.tracker.is_none() {
            let opts = maos_track::Options::default()
                .agent(self.actor.clone())
                .publish(false)
                .release_dead_claims(false);
            let t = TaskTracker::open_with(&self.ws, opts);
            self.tracker = self.note("tasks", t);
        }
        let Some(tracker) = self.tracker.clone() else {
            return;
        };
        let list = tracker.list_blocking();
        let Some(tasks) = self.note("tasks", list) else {
            return;
        };
        self.show_tasks(tasks, now);
    }

    fn show_tasks(&mut self, tasks: Vec<Task>, now: u64) {
        let r = maos_track::report(&tasks, now);
        let crit: HashSet<&maos_core::TaskId> = r.critical_path.iter().collect();
        let index: HashMap<&maos_core::TaskId, &Task> = tasks.iter().map(|t| (&t.id, t)).collect();
        let mut rows: Vec<TaskRow> = tasks
            .iter()
            .map(|t| TaskRow {
                id: t.id.to_string(),
                name: t.name.clone(),
                status: t.status,
                assigned_to: t.assigned_to.as_ref().map(ToString::to_string),
                priority: t.priority,
                estimate_ms: t
                    .estimated_duration
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                started_at: t.started_at,
                completed_at: t.completed_at,
                dependencies: t.dependencies.len(),
                critical: crit.contains(&t.id),
                note: t.note.as_deref().map(|n| excerpt(n, SUMMARY_CHARS)),
                blocked_reason: t
                    .blocked_reason
                    .as_deref()
                    .map(|n| excerpt(n, SUMMARY_CHARS)),
            })
            .collect();
        rows.sort_by(|a, b| {
            status_rank(a.status)
                .cmp(&status_rank(b.status))
                .then(b.priority.cmp(&a.priority))
                .then(a.id.cmp(&b.id))
        });
        let mut current: HashMap<String, &Task> = HashMap::new();
        for t in tasks.iter().filter(|t| t.status.is_active()) {
            if let Some(a) = &t.assigned_to {
                let e = current.entry(a.to_string()).or_insert(t);
                if t.started_at > e.started_at {
                    *e = t;
                }
            }
        }
        self.current = current
            .into_iter()
            .map(|(a, t)| (a, TaskRef::of(t)))
            .collect();
        self.tasks_view = TasksView {
            percentage: r.completion_percentage,
            counts: StatusCounts {
                total: r.total_tasks,
                pending: r.pending_tasks,
                blocked: r.blocked_tasks,
                in_progress: r.in_progress_tasks,
                review: r.review_tasks,
                completed: r.completed_tasks,
                failed: r.failed_tasks,
                cancelled: r.cancelled_tasks,
            },
            by_agent: r.task_breakdown,
            critical_path: r
                .critical_path
                .iter()
                .filter_map(|id| index.get(id).map(|t| TaskRef::of(t)))
                .collect(),
            critical_path_ms: r.critical_path_ms,
            remaining_ms: r.remaining_ms,
            eta: r.eta,
            rows,
        };
        self.task_list = Arc::new(tasks);
    }

    fn read_messages(&mut self, which: &ChannelSet) {
        let names: Vec<String> = match which {
            ChannelSet::None => return,
            ChannelSet::Some(set) => set.iter().cloned().collect(),
            ChannelSet::All => {
                let list = maos_comm::list_channels(&self.ws);
                let Some(list) = self.note("messages", list) else {
                    return;
                };
                let names: Vec<String> = list.iter().map(ToString::to_string).collect();
                let keep: HashSet<&String> = names.iter().collect();
                self.channels.retain(|n, _| keep.contains(n));
                names
            }
        };
        let mut first_error = None;
        for name in names {
            let read = if name == maos_comm::GLOBAL_FEED {
                self.read_feed() // every broadcast is shown on its topic
            } else {
                self.read_channel(&name)
            };
            if let Err(e) = read {
                tracing::debug!(channel = %name, error = %e, "dashboard: cannot read channel");
                first_error.get_or_insert(format!("channel {name}: {e}"));
            }
        }
        match first_error {
            Some(e) => {
                self.problems.insert("messages", e);
            }
            None => {
                self.problems.remove("messages");
            }
        }
    }

    fn read_channel(&mut self, name: &str) -> Result<(), maos_comm::Error> {
        if !self.channels.contains_key(name) {
            let Ok(cn) = maos_core::ChannelName::new(name) else {
                return Ok(());
            };
            // Only channels that exist: opening one creates its directory.
            if !self
                .ws
                .channels_dir()
                .join(name)
                .join(maos_comm::CHANNEL_DATA_DIR)
                .is_dir()
            {
                return Ok(());
            }
            let channel = FileChannel::open(&self.ws, cn)?;
            self.channels.insert(
                name.to_string(),
                ChannelState {
                    channel,
                    cursor: Cursor::start(),
                    newest: 0,
                    recent: VecDeque::new(),
                },
            );
        }
        let Some(st) = self.channels.get_mut(name) else {
            return Ok(());
        };
        let stats = st.channel.stats()?;
        if stats.newest < st.newest {
            // Recreated: start over.
            st.cursor = Cursor::start();
            st.recent.clear();
        }
        st.newest = stats.newest;
        if stats.newest <= st.cursor.position {
            return Ok(());
        }
        let skip_to = stats.newest.saturating_sub(RECENT_MESSAGES as u64);
        if skip_to > st.cursor.position {
            st.cursor = Cursor::after(skip_to);
            st.recent.clear();
        }
        // Bounded: a channel flooded while we read is caught up on the next refresh.
        for _ in 0..16 {
            let batch = st
                .channel
                .receive_blocking::<serde_json::Value>(&st.cursor, &Filter::Everything)?;
            let progressed = batch.cursor != st.cursor;
            st.cursor = batch.cursor;
            for d in batch.messages {
                st.recent.push_back(message_view(d.position, &d.message));
                while st.recent.len() > RECENT_MESSAGES {
                    st.recent.pop_front();
                }
            }
            if !progressed || st.cursor.position >= stats.newest {
                break;
            }
        }
        Ok(())
    }

    fn read_feed(&mut self) -> Result<(), maos_comm::Error> {
        if self.feed.is_none() {
            let newest = maos_comm::Subscription::from_now(&self.ws, &["**"])?
                .cursor()
                .position;
            let from = Cursor::after(newest.saturating_sub(FEED_BACKLOG));
            self.feed = Some(FeedState {
                subscription: maos_comm::Subscription::new(&self.ws, &["**"], from)?,
                topics: BTreeMap::new(),
            });
        }
        let Some(feed) = self.feed.as_mut() else {
            return Ok(());
        };
        for m in feed.subscription.poll_blocking::<serde_json::Value>()? {
            let (seen, recent) = feed.topics.entry(m.topic).or_default();
            *seen += 1;
            recent.push_back(message_view(m.position, &m.message));
            while recent.len() > RECENT_MESSAGES {
                recent.pop_front();
            }
        }
        Ok(())
    }

    fn read_queue(&mut self) {
        if self.coordinator.is_none() {
            match MergeCoordinator::new(&self.ws, self.actor.clone()) {
                Ok(c) => self.coordinator = Some(c),
                Err(e) => {
                    // No repository: no queue, and no prediction either.
                    tracing::debug!(error = %e, "dashboard: no merge coordinator");
                    self.merges.state = "no_repository".into();
                    self.merges.error = Some(e.to_string());
                    return;
                }
            }
        }
        let Some(coord) = self.coordinator.clone() else {
            return;
        };
        let list = MergeQueue::new(coord).list();
        if let Some(entries) = self.note("queue", list) {
            self.queue = entries.into_iter().map(queue_view).collect();
        }
    }

    /// What the merge prediction depends on now (cheap: the registry as last read and the
    /// repository's `HEAD`). `None` when the workspace is not in a git repository.
    pub fn merge_inputs(&self) -> Option<MergeInputs> {
        let det = ConflictDetector::open(self.ws.root()).ok()?;
        let repo = det.repository().ok()?;
        let target = repo
            .head()
            .ok()
            .and_then(|h| h.shorthand().ok().map(str::to_owned));
        let mut branches: Vec<(String, String)> = self
            .agents
            .iter()
            .filter_map(|a| Some((a.id.to_string(), a.branch.clone()?)))
            .collect();
        branches.sort();
        Some(MergeInputs { target, branches })
    }

    /// Stores a prediction made by [`predict`](super::predict).
    pub fn set_merges(&mut self, merges: MergesView) {
        self.merges = merges;
    }

    /// The snapshot as it stands, without reading anything.
    pub fn current(&self) -> Snapshot {
        self.assemble(now_ms())
    }
}

/// Reading through the traits (a backend other than the files).
impl Collector {
    fn refresh_stores(&mut self, stores: &Stores, changed: &Changed, now: u64) -> Snapshot {
        if changed.agents {
            let list = stores.agents.list();
            if let Some((agents, problems)) = self.note("agents", list) {
                if let Some(p) = problems.first() {
                    self.problems.insert(
                        "agents",
                        format!("{} unreadable agent record(s), first: {p}", problems.len()),
                    );
                }
                self.agents = agents
                    .into_iter()
                    .map(|v| {
                        let anchor = v.live_anchor.as_ref().map(anchor_view);
                        agent_base(v.record, v.liveness, anchor)
                    })
                    .collect();
            }
        }
        if changed.tasks {
            let list = stores.tasks.list();
            if let Some(tasks) = self.note("tasks", list) {
                self.show_tasks(tasks, now);
            }
        }
        if changed.locks || changed.agents {
            let snap = stores.locks.snapshot();
            if let Some(snap) = self.note("locks", snap) {
                let deadlocks = if snap.waiters.is_empty() {
                    self.problems.remove("deadlocks");
                    Vec::new()
                } else {
                    // Neither broadcast nor resolved: looking changes nothing.
                    let found = stores.locks.deadlocks(&self.actor, false, false);
                    self.note("deadlocks", found)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(d, _)| d)
                        .collect()
                };
                self.show_locks(&snap, &deadlocks);
            }
        }
        if !changed.channels.is_none() {
            let which = if self.relist {
                ChannelSet::All
            } else {
                changed.channels.clone()
            };
            self.read_store_messages(stores, &which);
        }
        if changed.queue {
            match &stores.merge {
                Some(m) => {
                    let list = m.queue_list();
                    if let Some(entries) = self.note("queue", list) {
                        self.queue = entries.into_iter().map(queue_view).collect();
                    }
                }
                None => self.read_queue(),
            }
        }
        self.assemble(now)
    }

    fn read_store_messages(&mut self, stores: &Stores, which: &ChannelSet) {
        // (channel, newest when known)
        let names: Vec<(String, Option<u64>)> = match which {
            ChannelSet::None => return,
            ChannelSet::Some(set)
                if set.iter().all(|n| {
                    n == maos_comm::GLOBAL_FEED || self.store_channels.contains_key(n)
                }) =>
            {
                set.iter().map(|n| (n.clone(), None)).collect()
            }
            // A channel seen for the first time: list them all (with their newest).
            ChannelSet::Some(_) | ChannelSet::All => {
                let list = stores.channels.list();
                let Some(list) = self.note("messages", list) else {
                    return;
                };
                self.relist = false;
                let keep: HashSet<String> = list.iter().map(|c| c.name.to_string()).collect();
                self.store_channels.retain(|n, _| keep.contains(n));
                list.into_iter()
                    .map(|c| (c.name.to_string(), Some(c.newest)))
                    .collect()
            }
        };
        let mut first_error = None;
        for (name, newest) in names {
            // The feed holds notices only: each broadcast is shown on its topic's channel.
            if name == maos_comm::GLOBAL_FEED {
                continue;
            }
            if let Err(e) = self.read_store_channel(stores, &name, newest) {
                tracing::debug!(channel = %name, error = %e, "dashboard: cannot read channel");
                first_error.get_or_insert(format!("channel {name}: {e}"));
            }
        }
        match first_error {
            Some(e) => {
                self.problems.insert("messages", e);
            }
            None => {
                self.problems.remove("messages");
            }
        }
    }

    fn read_store_channel(
        &mut self,
        stores: &Stores,
        name: &str,
        newest: Option<u64>,
    ) -> Result<(), maos_comm::Error> {
        let Ok(cn) = maos_core::ChannelName::new(name) else {
            return Ok(());
        };
        let st = self.store_channels.entry(name.to_string()).or_default();
        if let Some(newest) = newest {
            if newest < st.newest {
                // Recreated: start over.
                *st = StoreChannel::default();
            }
            if newest <= st.cursor {
                st.newest = newest;
                return Ok(());
            }
            let skip_to = newest.saturating_sub(RECENT_MESSAGES as u64);
            if skip_to > st.cursor {
                st.cursor = skip_to;
                st.recent.clear();
            }
        }
        let mut reader = stores.channels.reader(
            &cn,
            maos_comm::Start::After(st.cursor),
            Filter::Everything,
            true,
        )?;
        let mut done = false;
        for _ in 0..MAX_BATCHES {
            let batch = reader.read()?;
            for d in batch.messages {
                st.newest = st.newest.max(d.position);
                let m = d.message.map(|p| {
                    serde_json::from_str::<serde_json::Value>(p.get())
                        .unwrap_or(serde_json::Value::Null)
                });
                st.recent.push_back(message_view(d.position, &m));
                while st.recent.len() > RECENT_MESSAGES {
                    st.recent.pop_front();
                }
            }
            st.cursor = st.cursor.max(batch.cursor);
            st.newest = st.newest.max(batch.cursor);
            if !batch.progressed {
                done = true;
                break;
            }
        }
        if !done {
            // More than a refresh reads: jump to the newest ones next time.
            self.relist = true;
        }
        Ok(())
    }
}

fn anchor_view(a: &maos_core::Anchor) -> AnchorView {
    AnchorView {
        kind: match a.kind {
            maos_core::AnchorKind::Session => "session".into(),
            maos_core::AnchorKind::Ancestor => "ancestor".into(),
        },
        pid: a.process.pid,
        host: a.process.host.clone(),
    }
}

fn agent_base(
    r: maos_core::AgentRecord,
    liveness: Liveness,
    anchor: Option<AnchorView>,
) -> AgentBase {
    AgentBase {
        liveness,
        anchor,
        role: r.role.as_ref().map(ToString::to_string),
        lease_until: r.lease_until,
        last_seen: r.last_seen,
        branch: r.branch,
        worktree: r.worktree,
        id: r.id,
    }
}

fn queue_view(e: maos_merge::QueueEntry) -> QueueView {
    QueueView {
        id: e.id,
        source: e.source,
        target: e.target,
        status: e.status,
        requested_by: e.requested_by.to_string(),
        attempts: e.attempts,
        conflicted_paths: e.conflicted_paths,
        error: e.error,
        updated_at: e.updated_at,
    }
}

fn status_rank(s: TaskStatus) -> u8 {
    match s {
        TaskStatus::InProgress => 0,
        TaskStatus::Review => 1,
        TaskStatus::Failed => 2,
        TaskStatus::Pending => 3,
        TaskStatus::Blocked => 4,
        TaskStatus::Completed => 6,
        TaskStatus::Cancelled => 7,
        _ => 5,
    }
}

fn channel_kind(name: &str) -> (ChannelKind, Option<String>) {
    if let Some(t) = name.strip_prefix(maos_comm::TOPIC_PREFIX) {
        (ChannelKind::Topic, Some(t.to_string()))
    } else if name.starts_with("direct/") {
        (ChannelKind::Inbox, None)
    } else {
        (ChannelKind::Channel, None)
    }
}

fn message_view(position: u64, m: &maos_core::Message<serde_json::Value>) -> MessageView {
    let (to, to_agents) = match &m.recipients {
        Recipients::All => ("all".to_string(), Vec::new()),
        Recipients::Agent(a) => (format!("@{a}"), vec![a.to_string()]),
        Recipients::Group(g) => (
            g.iter()
                .map(|a| format!("@{a}"))
                .collect::<Vec<_>>()
                .join(" "),
            g.iter().map(ToString::to_string).collect(),
        ),
        Recipients::Role(r) => (format!("role {r}"), Vec::new()),
        _ => ("(unknown recipients)".to_string(), Vec::new()),
    };
    let summary = match &m.payload {
        serde_json::Value::String(s) => excerpt(s, SUMMARY_CHARS),
        v => excerpt(&v.to_string(), SUMMARY_CHARS),
    };
    MessageView {
        position,
        timestamp: m.timestamp,
        sender: m.sender.to_string(),
        to,
        to_agents,
        summary,
    }
}

fn conflicts(a: &str, am: LockMode, b: &maos_core::ResourceName, bm: LockMode) -> bool {
    if am == LockMode::Shared && bm == LockMode::Shared {
        return false;
    }
    maos_core::ResourceName::new(a).is_ok_and(|a| maos_lock::overlaps(&a, b))
}

/// The lock table as shown: holders by resource with the tickets of the waiters they block,
/// waiters in ticket order with who blocks them, the deadlocks named.
fn locks_view(
    snap: &maos_lock::Snapshot,
    deadlocks: &[maos_lock::Deadlock],
    dead: &HashSet<&str>,
) -> LocksView {
    let mut holders: Vec<LockView> = snap
        .holders
        .iter()
        .map(|h| LockView {
            resource: h.resource.to_string(),
            mode: h.mode,
            owner: h.owner.to_string(),
            purpose: excerpt(&h.purpose, SUMMARY_CHARS),
            acquired_at: h.acquired_at,
            expires_at: h.expires_at,
            token: h.token.0,
            pid: h.live.as_ref().and(h.process.as_ref()).map(|p| p.pid),
            waiters: Vec::new(),
            owner_dead: dead.contains(h.owner.as_str()),
        })
        .collect();
    holders.sort_by(|a, b| a.resource.cmp(&b.resource).then(a.token.cmp(&b.token)));
    // Candidates for a waiter on a plain path: holders of the same path, of an ancestor
    // (a plain name covers what is below it), of a descendant, and every pattern.
    let mut plain: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut patterns: Vec<usize> = Vec::new();
    for (i, h) in holders.iter().enumerate() {
        if h.resource.contains(['*', '?', '[']) {
            patterns.push(i);
        } else {
            plain.entry(h.resource.as_str()).or_default().push(i);
        }
    }
    let mut waiters: Vec<WaiterView> = Vec::with_capacity(snap.waiters.len());
    let mut attach: Vec<(usize, u64)> = Vec::new();
    let mut sorted: Vec<&maos_lock::WaiterInfo> = snap.waiters.iter().collect();
    sorted.sort_by_key(|w| w.ticket);
    for w in sorted {
        let r = w.resource.as_str();
        let candidates: Vec<usize> = if w.resource.is_pattern() {
            (0..holders.len()).collect()
        } else {
            let mut c: Vec<usize> = patterns.clone();
            let mut prefix = String::new();
            for (k, seg) in r.split('/').enumerate() {
                if k > 0 {
                    prefix.push('/');
                }
                prefix.push_str(seg);
                if let Some(v) = plain.get(prefix.as_str()) {
                    c.extend(v);
                }
            }
            let below = format!("{r}/");
            for (_, v) in plain
                .range::<str, _>((
                    std::ops::Bound::Included(below.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(&below))
            {
                c.extend(v);
            }
            c.sort_unstable();
            c.dedup();
            c
        };
        let mut blocked_by: Vec<String> = Vec::new();
        for i in candidates {
            let h = &holders[i];
            if conflicts(&h.resource, h.mode, &w.resource, w.mode) {
                attach.push((i, w.ticket));
                if !blocked_by.contains(&h.owner) {
                    blocked_by.push(h.owner.clone());
                }
            }
        }
        waiters.push(WaiterView {
            ticket: w.ticket,
            resource: r.to_string(),
            mode: w.mode,
            agent: w.agent.to_string(),
            since: w.since,
            purpose: excerpt(&w.purpose, SUMMARY_CHARS),
            blocked_by,
            aborted: w.aborted.is_some(),
        });
    }
    for (i, ticket) in attach {
        holders[i].waiters.push(ticket);
    }
    LocksView {
        holders,
        waiters,
        deadlocks: deadlocks.iter().map(deadlock_view).collect(),
    }
}

/// Names a cycle by following waits from the victim: `a -> b -> a`.
fn deadlock_view(d: &maos_lock::Deadlock) -> DeadlockView {
    let mut path: Vec<String> = vec![d.victim.to_string()];
    let mut seen: HashSet<&str> = HashSet::new();
    let mut at = d.victim.as_str();
    seen.insert(at);
    while let Some(e) = d.waits.iter().find(|e| e.waiter.as_str() == at) {
        let next = e.holder.as_str();
        path.push(next.to_string());
        if !seen.insert(next) {
            break;
        }
        at = next;
    }
    DeadlockView {
        name: path.join(" -> "),
        agents: d.agents.iter().map(ToString::to_string).collect(),
        waits: d.waits.clone(),
        victim: d.victim.to_string(),
        victim_ticket: d.victim_ticket,
        victim_resource: d.victim_resource.to_string(),
    }
}
