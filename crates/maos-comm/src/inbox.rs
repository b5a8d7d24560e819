//! [`Inbox`]: everything addressed to one agent, from every channel, in one stream with one
//! durable cursor per channel.
//!
//! What counts as addressed to agent `A` (role `R`):
//! - on every ordinary channel, the messages whose recipients include `A` (`all`, `agent A`,
//!   a group with `A`, `role R`) and that `A` did not send itself; on another agent's direct
//!   channel `direct/B`, only those naming `A` explicitly (not `all`);
//! - on the broadcast feed, the broadcasts whose topic matches one of `A`'s stored
//!   subscriptions ([`Inbox::subscribe`]), from the moment it subscribed.
//!
//! State: `.maos/inbox/<agent>.json` (subscriptions and acknowledged cursors, published whole
//! and fsynced under `.maos/inbox/<agent>.lock`), and `.maos/inbox/<agent>.count`, a cache of
//! the unread count (written in place, never fsynced: losing it costs a recount).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use maos_core::fsx::{self, DataFile, LockFile};
use maos_core::{AgentId, AgentRegistry, AgentRole, ChannelName, Message, Recipients, Workspace};
use serde::{Deserialize, Serialize};

use crate::broadcast::{GLOBAL_FEED, feed_options};
use crate::envelope::{Envelope, RawPayload};
use crate::log::RawRecord;
use crate::pubsub::TopicPattern;
use crate::watch::Notice;
use crate::{ChannelOptions, Cursor, Error, FileChannel, Result, list_channels};

/// Largest inbox state file a reader accepts.
const STATE_LIMIT: u64 = 4 << 20;
/// The default bound of [`Inbox::read`] callers that have none.
pub const DEFAULT_INBOX_BATCH: usize = 100;

/// The durable state of an inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// Topic patterns.
    #[serde(default)]
    subscriptions: Vec<String>,
    /// Acknowledged cursor per channel (the feed's under its own name).
    #[serde(default)]
    cursors: BTreeMap<String, Cursor>,
}

/// The unread-count cache: per channel, the acknowledged position it was counted from, how
/// far it was scanned and what it found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CountCache {
    #[serde(default)]
    subscriptions: Vec<String>,
    #[serde(default)]
    channels: BTreeMap<String, CountEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct CountEntry {
    acked: u64,
    scanned: Cursor,
    unread: u64,
}

/// One message in an inbox.
#[derive(Debug, Clone, Serialize)]
pub struct InboxItem {
    /// The channel it was sent on (`broadcast/<topic>` for a broadcast).
    pub channel: ChannelName,
    /// Its position there (on the broadcast feed, for a broadcast).
    pub position: u64,
    /// The topic, for a broadcast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The message, its payload exactly as sent.
    pub message: Message<RawPayload>,
}

/// What [`Inbox::read`] returns: new items (oldest first by the senders' clocks, each
/// channel's in its own order), what readers must know, and what acknowledging them stores.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct InboxBatch {
    /// The items.
    pub items: Vec<InboxItem>,
    /// Pruned history, skipped positions, damaged records, per channel.
    pub notices: Vec<(ChannelName, Notice)>,
    /// True when more unread items are waiting (the batch hit its bound).
    pub more: bool,
    /// Where each channel's cursor goes when this batch is acknowledged.
    advance: BTreeMap<String, Cursor>,
}

impl InboxBatch {
    /// True when there is nothing to show or acknowledge.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.notices.is_empty()
    }

    /// A batch read by another storage backend ([`crate::InboxStore`]): `advance` says, per
    /// channel, the position its acknowledged cursor moves to when the batch is acknowledged.
    pub fn from_parts(
        items: Vec<InboxItem>,
        notices: Vec<(ChannelName, Notice)>,
        more: bool,
        advance: BTreeMap<String, u64>,
    ) -> Self {
        Self {
            items,
            notices,
            more,
            advance: advance
                .into_iter()
                .map(|(c, p)| (c, Cursor::after(p)))
                .collect(),
        }
    }

    /// Per channel, the position acknowledging this batch moves its cursor to.
    pub fn advances(&self) -> impl Iterator<Item = (&str, u64)> {
        self.advance
            .iter()
            .map(|(c, cur)| (c.as_str(), cur.position))
    }
}

/// How many items are unread, per channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Unread {
    /// The total.
    pub total: u64,
    /// Per channel (the feed's broadcasts under `broadcast/global`), only those with some.
    pub channels: BTreeMap<String, u64>,
}

/// Everything addressed to one agent (see the module docs for what that is), with durable
/// cursors: an acknowledged item is never returned again.
///
/// A read costs a look at each channel (a directory walk, one `stat`-like check per channel)
/// plus what is new; counting unread items costs only what arrived since the last count.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use maos_comm::{FileChannel, Inbox};
/// use maos_core::{AgentId, ChannelName, Message, Recipients, Workspace};
/// let dir = tempfile::tempdir()?;
/// let ws = Workspace::init(dir.path())?;
/// let b1 = AgentId::new("b1")?;
/// let api = FileChannel::open(&ws, ChannelName::new("api")?)?;
/// api.send_blocking(&Message::new(AgentId::new("f1")?, Recipients::Agent(b1.clone()), "need /users"))?;
/// let mut inbox = Inbox::open(&ws, b1)?;
/// assert_eq!(inbox.unread()?.total, 1);
/// let batch = inbox.read(100)?;
/// assert_eq!(batch.items[0].message.payload.get(), "\"need /users\"");
/// inbox.ack(&batch)?;
/// assert_eq!(inbox.unread()?.total, 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Inbox {
    ws: Workspace,
    agent: AgentId,
    role: Option<AgentRole>,
    options: ChannelOptions,
    state: State,
    patterns: Vec<TopicPattern>,
    channels: HashMap<String, FileChannel>,
}

/// One channel's unread records as read for a batch.
struct Pending {
    items: Vec<(InboxItem, Cursor)>,
    /// Where the channel's cursor stands after everything read (items and skipped records).
    end: Cursor,
    /// The cursor before each item (parallel to `items`).
    before: Vec<Cursor>,
}

impl Inbox {
    /// The inbox of `agent` (its role from the agent registry).
    pub fn open(ws: &Workspace, agent: AgentId) -> Result<Self> {
        Self::open_with(ws, agent, ChannelOptions::default())
    }

    /// [`Inbox::open`] whose channel handles use `options`.
    pub fn open_with(ws: &Workspace, agent: AgentId, options: ChannelOptions) -> Result<Self> {
        let role = AgentRegistry::new(ws)
            .role_of(&agent)
            .map_err(|e| Error::core(format!("inbox {agent}"), e))?;
        let mut inbox = Self {
            ws: ws.clone(),
            agent,
            role,
            options,
            state: State::default(),
            patterns: Vec::new(),
            channels: HashMap::new(),
        };
        inbox.state = inbox.load()?;
        inbox.patterns = inbox.parse_patterns();
        Ok(inbox)
    }

    /// The agent.
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }

    /// The stored topic subscriptions.
    pub fn subscriptions(&self) -> &[String] {
        &self.state.subscriptions
    }

    fn label(&self) -> String {
        format!("inbox {}", self.agent)
    }

    fn dir(&self) -> PathBuf {
        self.ws.maos_dir().join("inbox")
    }

    fn state_path(&self) -> PathBuf {
        self.dir().join(format!("{}.json", self.agent))
    }

    fn count_path(&self) -> PathBuf {
        self.dir().join(format!("{}.count", self.agent))
    }

    fn load(&self) -> Result<State> {
        let path = self.state_path();
        match fsx::read_json::<State>(&path, STATE_LIMIT) {
            Ok(s) => Ok(s),
            Err(e) if e.is_not_found() => Ok(State::default()),
            Err(maos_core::Error::Corrupt { path, reason }) => Err(Error::CorruptState {
                channel: self.label(),
                path,
                reason,
            }),
            Err(e) => Err(Error::core(self.label(), e)),
        }
    }

    fn parse_patterns(&self) -> Vec<TopicPattern> {
        self.state
            .subscriptions
            .iter()
            .filter_map(|p| TopicPattern::new(p).ok())
            .collect()
    }

    /// Changes the stored state under the inbox lock (re-reading it first, so concurrent
    /// processes of the same agent never undo each other).
    fn update(&mut self, f: impl FnOnce(&mut State) -> Result<()>) -> Result<()> {
        let label = self.label();
        fsx::create_dir_private(&self.dir()).map_err(|e| Error::core(label.clone(), e))?;
        let lock = LockFile::open(&self.dir().join(format!("{}.lock", self.agent)))
            .map_err(|e| Error::core(label.clone(), e))?;
        let _guard = lock
            .exclusive(self.options.lock_timeout)
            .map_err(|e| Error::core(label.clone(), e))?;
        let mut state = self.load()?;
        let before = state.clone();
        f(&mut state)?;
        if state != before {
            fsx::write_json_replace(&self.state_path(), &state)
                .map_err(|e| Error::core(label, e))?;
        }
        self.state = state;
        self.patterns = self.parse_patterns();
        Ok(())
    }

    /// Stores topic subscriptions: broadcasts on matching topics published from now on come
    /// to this inbox. Returns the patterns that were new.
    pub fn subscribe(&mut self, patterns: &[&str]) -> Result<Vec<String>> {
        for p in patterns {
            TopicPattern::new(p)?;
        }
        let feed = self.feed()?;
        let end = feed.as_ref().map(FileChannel::end_cursor).transpose()?;
        let mut added = Vec::new();
        self.update(|st| {
            for p in patterns {
                if !st.subscriptions.iter().any(|s| s == p) {
                    st.subscriptions.push((*p).to_string());
                    added.push((*p).to_string());
                }
            }
            // The first subscription starts at the feed's current end: from now on.
            st.cursors
                .entry(GLOBAL_FEED.to_string())
                .or_insert_with(|| end.unwrap_or_default());
            Ok(())
        })?;
        Ok(added)
    }

    /// Removes stored subscriptions; returns the ones that were there.
    pub fn unsubscribe(&mut self, patterns: &[&str]) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        self.update(|st| {
            st.subscriptions.retain(|s| {
                let gone = patterns.contains(&s.as_str());
                if gone {
                    removed.push(s.clone());
                }
                !gone
            });
            Ok(())
        })?;
        Ok(removed)
    }

    fn channel(&mut self, name: &ChannelName) -> Result<Option<FileChannel>> {
        if let Some(c) = self.channels.get(name.as_str()) {
            return Ok(Some(c.clone()));
        }
        let opts = if name.as_str() == GLOBAL_FEED {
            let mut o = feed_options(&self.ws);
            o.boot_id.clone_from(&self.options.boot_id);
            o.lock_timeout = self.options.lock_timeout;
            o
        } else {
            self.options.clone()
        };
        match FileChannel::open_existing_with(&self.ws, name.clone(), opts) {
            Ok(c) => {
                self.channels.insert(name.to_string(), c.clone());
                Ok(Some(c))
            }
            Err(Error::NoSuchChannel { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn feed(&mut self) -> Result<Option<FileChannel>> {
        let name = ChannelName::new(GLOBAL_FEED).map_err(|e| Error::core(GLOBAL_FEED, e))?;
        self.channel(&name)
    }

    /// The channels to look at: every ordinary channel, and the feed when subscribed.
    fn sources(&mut self) -> Result<Vec<ChannelName>> {
        let mut out: Vec<ChannelName> = list_channels(&self.ws)?
            .into_iter()
            .filter(|c| {
                let s = c.as_str();
                s != "broadcast" && !s.starts_with(crate::TOPIC_PREFIX)
            })
            .collect();
        if !self.patterns.is_empty() {
            out.push(ChannelName::new(GLOBAL_FEED).map_err(|e| Error::core(GLOBAL_FEED, e))?);
        }
        Ok(out)
    }

    /// Whether a record (its envelope) on `channel` belongs in this inbox; its topic if it
    /// is a broadcast.
    fn wants(&self, channel: &str, env: &Envelope) -> Option<Option<String>> {
        if env.sender() == &self.agent {
            return None;
        }
        if channel == GLOBAL_FEED {
            let topic = env.topic.as_deref()?;
            return self
                .patterns
                .iter()
                .any(|p| p.matches(topic))
                .then(|| Some(topic.to_string()));
        }
        let r = env.recipients();
        if !r.includes(&self.agent, self.role.as_ref()) {
            return None;
        }
        let other_direct = channel
            .strip_prefix("direct/")
            .is_some_and(|a| a != self.agent.as_str());
        if other_direct && matches!(r, Recipients::All) {
            return None;
        }
        Some(None)
    }

    fn cursor_of(&self, channel: &str) -> Cursor {
        self.state.cursors.get(channel).copied().unwrap_or_default()
    }

    /// Reads one channel's unread items (at most `max`).
    fn pending(
        &mut self,
        name: &ChannelName,
        max: usize,
        notices: &mut Vec<(ChannelName, Notice)>,
    ) -> Result<Option<Pending>> {
        let Some(ch) = self.channel(name)? else {
            return Ok(None);
        };
        let start = self.cursor_of(name.as_str());
        let mut p = Pending {
            items: Vec::new(),
            end: start,
            before: Vec::new(),
        };
        loop {
            let raw = ch.inner.log.read(p.end, ch.options().max_batch)?;
            let progressed = raw.cursor != p.end;
            if let Some(p) = raw.pruned {
                notices.push((name.clone(), Notice::Pruned(p)));
            }
            notices.extend(raw.gaps.iter().map(|g| (name.clone(), Notice::Gap(*g))));
            notices.extend(raw.ahead.map(|a| (name.clone(), Notice::Ahead(a))));
            notices.extend(
                raw.problems
                    .into_iter()
                    .map(|pr| (name.clone(), Notice::Problem(pr))),
            );
            let mut prev = p.end;
            for rec in raw.records {
                let after = rec.after;
                if let Some(item) = self.item(&ch, name, rec, notices) {
                    p.before.push(prev);
                    p.items.push((item, after));
                    if p.items.len() >= max {
                        p.end = after;
                        return Ok(Some(p));
                    }
                }
                prev = after;
            }
            p.end = raw.cursor;
            if !progressed {
                return Ok(Some(p));
            }
        }
    }

    fn item(
        &self,
        ch: &FileChannel,
        name: &ChannelName,
        rec: RawRecord,
        notices: &mut Vec<(ChannelName, Notice)>,
    ) -> Option<InboxItem> {
        let env = match Envelope::decode(&rec.bytes) {
            Ok(env) => env,
            Err(e) => {
                notices.push((name.clone(), Notice::Problem(ch.undecodable(&rec, &e))));
                return None;
            }
        };
        let topic = self.wants(name.as_str(), &env)?;
        let channel = match &topic {
            Some(t) => crate::topic_channel(t).ok()?,
            None => name.clone(),
        };
        match env.into_message::<RawPayload>() {
            Ok(message) => Some(InboxItem {
                channel,
                position: rec.position,
                topic,
                message,
            }),
            Err(e) => {
                notices.push((name.clone(), Notice::Problem(ch.undecodable(&rec, &e))));
                None
            }
        }
    }

    /// The unread items, at most `max` (oldest first by their senders' clocks; each
    /// channel's items in channel order). Nothing is acknowledged: the same items come again
    /// until [`Inbox::ack`] stores the batch.
    pub fn read(&mut self, max: usize) -> Result<InboxBatch> {
        let max = max.max(1);
        let mut notices = Vec::new();
        let mut pending: Vec<(String, Pending)> = Vec::new();
        for name in self.sources()? {
            if let Some(p) = self.pending(&name, max, &mut notices)? {
                pending.push((name.to_string(), p));
            }
        }
        // Merge the channels' sequences by the timestamp of their next item.
        let mut taken = vec![0usize; pending.len()];
        let mut items = Vec::new();
        while items.len() < max {
            let next = pending
                .iter()
                .enumerate()
                .filter(|(i, (_, p))| taken[*i] < p.items.len())
                .min_by_key(|(i, (name, p))| {
                    let it = &p.items[taken[*i]].0;
                    (it.message.timestamp, name.clone(), it.position)
                })
                .map(|(i, _)| i);
            let Some(i) = next else { break };
            items.push(pending[i].1.items[taken[i]].0.clone());
            taken[i] += 1;
        }
        let mut more = false;
        let mut advance = BTreeMap::new();
        for (i, (name, p)) in pending.iter().enumerate() {
            let to = if taken[i] == p.items.len() {
                p.end
            } else {
                more = true;
                p.before[taken[i]]
            };
            if to != self.cursor_of(name) {
                advance.insert(name.clone(), to);
            }
            // A channel read only up to its bound may hold more.
            more |= p.items.len() >= max;
        }
        Ok(InboxBatch {
            items,
            notices,
            more,
            advance,
        })
    }

    /// Acknowledges a batch returned by [`Inbox::read`]: its items are never returned again.
    /// The messages are made durable first, then the cursors are stored durably.
    pub fn ack(&mut self, batch: &InboxBatch) -> Result<()> {
        for (name, cursor) in &batch.advance {
            if cursor.position <= self.cursor_of(name).position {
                continue;
            }
            let cn = ChannelName::new(name.as_str()).map_err(|e| Error::core(name.as_str(), e))?;
            if let Some(ch) = self.channel(&cn)? {
                ch.make_durable_through(cursor.position)?;
            }
        }
        let advance = batch.advance.clone();
        self.update(|st| {
            for (name, cursor) in advance {
                let cur = st.cursors.entry(name).or_default();
                if cursor.position > cur.position
                    || (cursor.position == cur.position && *cur == Cursor::after(cur.position))
                {
                    *cur = cursor;
                }
            }
            Ok(())
        })
    }

    /// How many items are unread. Costs a look at each channel plus what arrived since the
    /// last count (the count is cached in `.maos/inbox/<agent>.count`).
    pub fn unread(&mut self) -> Result<Unread> {
        let mut cache = self.read_count_cache();
        if cache.subscriptions != self.state.subscriptions {
            cache = CountCache {
                subscriptions: self.state.subscriptions.clone(),
                ..CountCache::default()
            };
        }
        let before = cache.clone();
        let mut out = Unread::default();
        let mut seen = BTreeSet::new();
        for name in self.sources()? {
            let Some(ch) = self.channel(&name)? else {
                continue;
            };
            let acked = self.cursor_of(name.as_str());
            let entry = cache
                .channels
                .get(name.as_str())
                .copied()
                .filter(|e| e.acked == acked.position && e.scanned.position >= acked.position)
                .unwrap_or(CountEntry {
                    acked: acked.position,
                    scanned: acked,
                    unread: 0,
                });
            let mut e = entry;
            loop {
                let raw = ch.inner.log.read(e.scanned, ch.options().max_batch)?;
                let progressed = raw.cursor != e.scanned;
                for rec in &raw.records {
                    if let Ok(env) = Envelope::decode(&rec.bytes)
                        && self.wants(name.as_str(), &env).is_some()
                    {
                        e.unread += 1;
                    }
                }
                e.scanned = raw.cursor;
                if !progressed {
                    break;
                }
            }
            if e.unread > 0 {
                out.channels.insert(name.to_string(), e.unread);
            }
            out.total += e.unread;
            seen.insert(name.to_string());
            cache.channels.insert(name.to_string(), e);
        }
        cache.channels.retain(|k, _| seen.contains(k));
        if cache != before {
            self.write_count_cache(&cache);
        }
        Ok(out)
    }

    fn read_count_cache(&self) -> CountCache {
        fsx::read_bounded(&self.count_path(), STATE_LIMIT)
            .ok()
            .and_then(|b| serde_json::from_slice(b.trim_ascii_end()).ok())
            .unwrap_or_default()
    }

    fn write_count_cache(&self, cache: &CountCache) {
        let res = (|| {
            fsx::create_dir_private(&self.dir())?;
            let mut bytes = serde_json::to_vec(cache).unwrap_or_default();
            bytes.push(b'\n');
            let f = DataFile::open_rw(&self.count_path())?;
            f.write_at(&bytes, 0)?;
            f.set_len(bytes.len() as u64)
        })();
        if let Err(e) = res {
            tracing::debug!(inbox = %self.agent, error = &e as &dyn std::error::Error,
                "cannot cache the unread count");
        }
    }

    /// A watch on every channel directory: [`InboxWatcher::wait`] returns when something
    /// may have arrived. Set it up before reading, so nothing that arrives between the read
    /// and the wait is missed.
    pub fn watcher(&self) -> Result<InboxWatcher> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let root = self.ws.channels_dir();
        let watcher = if self.options.file_events {
            use notify::{EventKind, RecursiveMode, Watcher};
            fsx::create_dir_private(&root).map_err(|e| Error::core(self.label(), e))?;
            let err = |source| Error::Watch {
                channel: self.label(),
                path: root.clone(),
                source,
            };
            let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if !matches!(&res, Ok(ev) if matches!(ev.kind, EventKind::Access(_)) && !ev.need_rescan())
                {
                    let _ = tx.send(());
                }
            })
            .map_err(err)?;
            w.watch(&root, RecursiveMode::Recursive).map_err(err)?;
            Some(w)
        } else {
            None
        };
        Ok(InboxWatcher {
            _watcher: watcher,
            rx,
            fallback: self.options.fallback_interval,
        })
    }
}

/// Wakes an inbox reader when any channel changes (file events are hints; a fallback timer
/// covers lost ones and filesystems without events).
#[derive(Debug)]
pub struct InboxWatcher {
    _watcher: Option<notify::RecommendedWatcher>,
    rx: std::sync::mpsc::Receiver<()>,
    fallback: Duration,
}

impl InboxWatcher {
    /// Blocks until a change was seen since the last wait, or `timeout` (at most the
    /// fallback interval) passes.
    pub fn wait(&self, timeout: Duration) {
        let _ = self.rx.recv_timeout(timeout.min(self.fallback));
        while self.rx.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BroadcastChannel;
    use maos_core::{Name, Registration};

    fn ws() -> (tempfile::TempDir, Workspace) {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        (d, ws)
    }

    fn a(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn send(ws: &Workspace, ch: &str, from: &str, to: Recipients, text: &str) {
        FileChannel::open(ws, ChannelName::new(ch).unwrap())
            .unwrap()
            .send_blocking(&Message::new(a(from), to, text))
            .unwrap();
    }

    fn texts(b: &InboxBatch) -> Vec<String> {
        b.items
            .iter()
            .map(|i| serde_json::from_str::<String>(i.message.payload.get()).unwrap())
            .collect()
    }

    #[test]
    fn an_inbox_gathers_what_is_addressed_to_the_agent_from_every_channel() {
        let (_d, ws) = ws();
        AgentRegistry::new(&ws)
            .register(Registration::new(a("b1")).role(AgentRole::backend()))
            .unwrap();
        send(&ws, "direct/b1", "f1", Recipients::All, "direct to me");
        send(&ws, "direct/b2", "f1", Recipients::All, "b2's");
        send(
            &ws,
            "direct/b2",
            "f1",
            Recipients::Agent(a("b1")),
            "cc me on b2's",
        );
        send(
            &ws,
            "api",
            "f1",
            Recipients::Role(AgentRole::backend()),
            "to my role",
        );
        send(
            &ws,
            "api",
            "f1",
            Recipients::Role(AgentRole::frontend()),
            "to frontend",
        );
        send(
            &ws,
            "api",
            "f1",
            Recipients::Group(vec![a("x"), a("b1")]),
            "to my group",
        );
        send(&ws, "api", "b1", Recipients::All, "my own");
        send(&ws, "team/chat", "f2", Recipients::All, "to all");
        let mut inbox = Inbox::open(&ws, a("b1")).unwrap();
        assert_eq!(inbox.unread().unwrap().total, 5);
        let b = inbox.read(100).unwrap();
        let mut got = texts(&b);
        got.sort();
        assert_eq!(
            got,
            [
                "cc me on b2's",
                "direct to me",
                "to all",
                "to my group",
                "to my role"
            ]
        );
        assert!(!b.more);
        inbox.ack(&b).unwrap();
        assert_eq!(inbox.unread().unwrap().total, 0);
        assert!(inbox.read(100).unwrap().items.is_empty());
        // A new handle (another process) agrees: delivered once.
        let mut again = Inbox::open(&ws, a("b1")).unwrap();
        assert!(again.read(100).unwrap().items.is_empty());
        send(&ws, "api", "f1", Recipients::Agent(a("b1")), "later");
        assert_eq!(again.unread().unwrap().channels.get("api"), Some(&1));
        assert_eq!(texts(&again.read(100).unwrap()), ["later"]);
    }

    #[test]
    fn stored_subscriptions_bring_matching_broadcasts_from_then_on() {
        let (_d, ws) = ws();
        let pubr = BroadcastChannel::new(&ws, a("ci"));
        pubr.broadcast_blocking("build/done", &"before").unwrap();
        let mut inbox = Inbox::open(&ws, a("b1")).unwrap();
        assert_eq!(inbox.subscribe(&["build/*"]).unwrap(), ["build/*"]);
        assert!(inbox.subscribe(&["build/*"]).unwrap().is_empty());
        assert!(inbox.subscribe(&["bad//pattern"]).is_err());
        pubr.broadcast_blocking("build/done", &"after").unwrap();
        pubr.broadcast_blocking("test/ran", &"other topic").unwrap();
        BroadcastChannel::new(&ws, a("b1"))
            .broadcast_blocking("build/x", &"mine")
            .unwrap();
        let mut reopened = Inbox::open(&ws, a("b1")).unwrap();
        assert_eq!(reopened.subscriptions(), ["build/*"]);
        assert_eq!(reopened.unread().unwrap().total, 1);
        let b = reopened.read(10).unwrap();
        assert_eq!(texts(&b), ["after"]);
        assert_eq!(b.items[0].topic.as_deref(), Some("build/done"));
        assert_eq!(b.items[0].channel.as_str(), "broadcast/build/done");
        reopened.ack(&b).unwrap();
        assert_eq!(
            reopened.unsubscribe(&["build/*", "nope"]).unwrap(),
            ["build/*"]
        );
        pubr.broadcast_blocking("build/done", &"unsubscribed")
            .unwrap();
        assert_eq!(reopened.unread().unwrap().total, 0);
    }

    #[test]
    fn bounded_reads_deliver_everything_once_in_each_channels_order() {
        let (_d, ws) = ws();
        for i in 0..30 {
            let ch = ["c1", "c2", "direct/me"][i % 3];
            send(&ws, ch, "s", Recipients::All, &format!("{ch} {i}"));
        }
        let mut inbox = Inbox::open(&ws, a("me")).unwrap();
        let mut seen = Vec::new();
        loop {
            let b = inbox.read(4).unwrap();
            assert!(b.items.len() <= 4);
            if b.items.is_empty() {
                break;
            }
            seen.extend(texts(&b));
            // A second reader of the unacknowledged batch sees the same items.
            assert_eq!(texts(&inbox.read(4).unwrap()), texts(&b));
            inbox.ack(&b).unwrap();
        }
        assert_eq!(seen.len(), 30);
        for ch in ["c1", "c2", "direct/me"] {
            let mine: Vec<usize> = seen
                .iter()
                .filter(|t| t.starts_with(&format!("{ch} ")))
                .map(|t| t.rsplit(' ').next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(mine.len(), 10);
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{ch}: {mine:?}");
        }
    }

    #[test]
    fn two_handles_acknowledging_never_move_a_cursor_back() {
        let (_d, ws) = ws();
        for i in 0..6 {
            send(&ws, "c", "s", Recipients::All, &i.to_string());
        }
        let mut one = Inbox::open(&ws, a("me")).unwrap();
        let mut two = Inbox::open(&ws, a("me")).unwrap();
        let small = one.read(2).unwrap();
        let all = two.read(100).unwrap();
        two.ack(&all).unwrap();
        one.ack(&small).unwrap();
        assert!(
            Inbox::open(&ws, a("me"))
                .unwrap()
                .read(100)
                .unwrap()
                .items
                .is_empty()
        );
        // Subscriptions made by one handle survive the other's acknowledgement.
        one.subscribe(&["x/**"]).unwrap();
        send(&ws, "c", "s", Recipients::All, "7");
        let b = two.read(100).unwrap();
        two.ack(&b).unwrap();
        assert_eq!(Inbox::open(&ws, a("me")).unwrap().subscriptions(), ["x/**"]);
        let _ = Name::new("unused").unwrap();
    }

    #[test]
    fn a_damaged_inbox_state_is_a_clear_error() {
        let (_d, ws) = ws();
        let dir = ws.maos_dir().join("inbox");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("me.json"), "{not json").unwrap();
        let err = Inbox::open(&ws, a("me")).unwrap_err();
        assert!(matches!(err, Error::CorruptState { .. }), "{err}");
        assert!(err.to_string().contains("maos doctor --repair"), "{err}");
    }
}
