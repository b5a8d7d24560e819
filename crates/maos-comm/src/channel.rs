//! [`FileChannel`]: one named, totally ordered, durable message log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use maos_core::fsx::{self, LockFile};
use maos_core::{
    AgentId, AgentRegistry, AgentRole, ChannelName, Message, MessageId, Name, Recipients, Workspace,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::envelope::{self, Envelope};
use crate::log::{
    Ahead, CONSUMERS_DIR, Cursor, Gap, Log, LogConfig, MAX_MESSAGE_LIMIT, Problem, RawRecord,
};
use crate::{Error, Result, Retention};

/// Default limit of a serialised message: 1 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Default size at which a segment is closed and a new one started: 8 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 8 << 20;
/// Default number of positions a writer reserves durably at a time (a restart skips at most
/// this many).
pub const DEFAULT_RESERVE: u64 = 1024;
/// Name of the per-channel directory inside `channels/<channel>/` (it starts with a dot, so it
/// can never clash with a child channel's directory).
pub const CHANNEL_DATA_DIR: &str = ".chan";

/// Settings of a channel handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// Largest serialised message accepted by `send` (default [`DEFAULT_MAX_MESSAGE`], at
    /// most [`MAX_MESSAGE_LIMIT`]).
    pub max_message: usize,
    /// Segment size at which writers start a new segment (default [`DEFAULT_SEGMENT_SIZE`]).
    pub segment_size: u64,
    /// Most messages one `receive` returns (default 10,000).
    pub max_batch: usize,
    /// How long a watcher sleeps without a file event before it looks anyway (default 2 s).
    pub fallback_interval: Duration,
    /// Whether watchers use file events (default: yes, unless the workspace is on a network
    /// filesystem, where events from other hosts never arrive). Without them a watcher polls
    /// every `fallback_interval`.
    pub file_events: bool,
    /// How long a writer (or an acknowledgement) waits for the channel's kernel lock before
    /// it fails, naming the holder (default [`fsx::DEFAULT_GUARD_TIMEOUT`], 10 s).
    pub lock_timeout: Duration,
    /// Positions a writer reserves durably at a time (default [`DEFAULT_RESERVE`]).
    pub reserve: u64,
    /// Pruning applied by writers whenever they start a new segment (default: none; the
    /// broadcast feed keeps its newest segments, see [`crate::BroadcastChannel`]).
    pub retain: Option<Retention>,
    /// The boot this handle runs in (default: the kernel's boot id). Positions reserved in
    /// another boot are skipped; simulators set it to act as "after a restart".
    pub boot_id: String,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            max_message: DEFAULT_MAX_MESSAGE,
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_batch: 10_000,
            fallback_interval: Duration::from_secs(2),
            file_events: true,
            lock_timeout: fsx::DEFAULT_GUARD_TIMEOUT,
            reserve: DEFAULT_RESERVE,
            retain: None,
            boot_id: maos_core::process::boot_id().to_string(),
        }
    }
}

impl ChannelOptions {
    /// Sets [`ChannelOptions::max_message`] (at most [`MAX_MESSAGE_LIMIT`]).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes.min(MAX_MESSAGE_LIMIT);
        self
    }
    /// Sets [`ChannelOptions::segment_size`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes.max(1);
        self
    }
    /// Sets [`ChannelOptions::max_batch`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }
    /// Sets [`ChannelOptions::file_events`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn file_events(mut self, on: bool) -> Self {
        self.file_events = on;
        self
    }
    /// Sets [`ChannelOptions::fallback_interval`] (clamped to 10 ms .. 60 s).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn fallback_interval(mut self, d: Duration) -> Self {
        self.fallback_interval = d.clamp(Duration::from_millis(10), Duration::from_secs(60));
        self
    }
    /// Sets [`ChannelOptions::lock_timeout`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }
    /// Sets [`ChannelOptions::reserve`] (at least 1).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn reserve(mut self, n: u64) -> Self {
        self.reserve = n.max(1);
        self
    }
    /// Sets [`ChannelOptions::retain`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn retain(mut self, r: Option<Retention>) -> Self {
        self.retain = r;
        self
    }
    /// Sets [`ChannelOptions::boot_id`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn boot_id(mut self, id: impl Into<String>) -> Self {
        self.boot_id = id.into();
        self
    }

    pub(crate) fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_size: self.segment_size.max(1),
            lock_timeout: self.lock_timeout,
            reserve: self.reserve.max(1),
            retain: self.retain,
            boot_id: self.boot_id.clone(),
        }
    }
}

/// What `send` returns once the message is durable and visible: its position in the channel
/// (in the one order every reader sees) and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Receipt {
    /// The message's position in the channel.
    pub position: u64,
    /// The message's id.
    pub id: MessageId,
}

/// One message delivered to a reader, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered<T> {
    /// The message's position in the channel.
    pub position: u64,
    /// The message.
    pub message: Message<T>,
}

/// What one `receive` returns: the new messages addressed to the reader, where to read on,
/// and anything the reader must know about (a pruned gap, skipped positions, a cursor ahead
/// of the log, damaged records).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Batch<T> {
    /// New messages addressed to the reader, in channel order.
    pub messages: Vec<Delivered<T>>,
    /// Where the next `receive` continues (past every record read, delivered or not).
    pub cursor: Cursor,
    /// Positions `from..=to` were pruned before the reader got to them: they are lost to it.
    pub pruned: Option<Pruned>,
    /// Positions the writers skipped (after a restart, or because the log lost records).
    pub gaps: Vec<Gap>,
    /// The reader's cursor is after the newest message (the log lost messages it had read).
    pub ahead: Option<Ahead>,
    /// Records and files that could not be used (each reported once per reader).
    pub problems: Vec<Problem>,
    /// Records skipped because they were not addressed to the reader.
    pub skipped: usize,
    /// Of those, the ones addressed to a role while the reader has none (an unregistered
    /// agent): worth a hint to register.
    pub skipped_for_role: usize,
}

impl<T> Batch<T> {
    /// True when nothing new was found (no messages, no gap, no problem).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.pruned.is_none()
            && self.gaps.is_empty()
            && self.ahead.is_none()
            && self.problems.is_empty()
    }
}

/// "Messages `from..=to` were pruned": the explicit result for a reader whose cursor pointed
/// into history that retention has removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// First lost position.
    pub from: u64,
    /// Last lost position.
    pub to: u64,
}

impl std::fmt::Display for Pruned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "messages {}..{} were pruned", self.from, self.to)
    }
}

/// Which messages a reader gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Filter {
    /// Every message, whoever it is addressed to (tools, auditors).
    #[default]
    Everything,
    /// The messages addressed to `agent` (holding `role`): [`maos_core::Recipients::includes`].
    Agent {
        /// The reading agent.
        agent: AgentId,
        /// Its role, for messages addressed to a role.
        role: Option<AgentRole>,
    },
}

impl Filter {
    /// The messages addressed to `agent`, its role looked up in the agent registry (an
    /// unregistered agent has no role).
    pub fn for_agent(ws: &Workspace, agent: AgentId) -> Result<Self> {
        let role = AgentRegistry::new(ws)
            .role_of(&agent)
            .map_err(|e| Error::core(format!("agent {agent}"), e))?;
        Ok(Filter::Agent { agent, role })
    }

    /// True when a message to `recipients` passes.
    pub fn accepts(&self, recipients: &Recipients) -> bool {
        match self {
            Filter::Everything => true,
            Filter::Agent { agent, role } => recipients.includes(agent, role.as_ref()),
        }
    }

    fn roleless(&self) -> bool {
        matches!(self, Filter::Agent { role: None, .. })
    }
}

/// What kind of channel a name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An ordinary channel: anyone sends, anyone reads.
    Plain,
    /// `broadcast/global`: every broadcast, written only by [`crate::BroadcastChannel`].
    Feed,
    /// `broadcast/<topic>`: the feed's messages on one topic (read-only view).
    Topic(String),
    /// `broadcast` itself: reserved, nothing is ever written there.
    Reserved,
}

impl Kind {
    fn of(name: &ChannelName) -> Self {
        match name.as_str().strip_prefix(crate::TOPIC_PREFIX) {
            Some("global") => Kind::Feed,
            Some(topic) => Kind::Topic(topic.to_string()),
            None if name.as_str() == "broadcast" => Kind::Reserved,
            None => Kind::Plain,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) ws: Workspace,
    pub(crate) name: ChannelName,
    pub(crate) log: Log,
    pub(crate) options: ChannelOptions,
    pub(crate) kind: Kind,
}

/// A named message channel: `.maos/channels/<name>/.chan/`, a segmented append-only log.
///
/// Every message gets a position assigned under the channel's kernel lock, so all readers see
/// one total order and each sender's messages keep their send order. Positions increase and
/// are never used twice; they may skip (after a power loss, see [`Gap`]). `send` returns only
/// when the message is on disk (`fdatasync`) and readable whole, and only accepts what every
/// reader can decode. Readers read forward from a [`Cursor`]; the cost is proportional to what
/// is new, not to history.
///
/// Direct messages: send a [`maos_core::Recipients::Agent`] message on a shared channel, or
/// use the convention `direct/<agent>` ([`FileChannel::inbox`]). The names under `broadcast/`
/// are reserved: `broadcast/global` is the broadcast feed and `broadcast/<topic>` a read-only
/// view of one topic; only [`crate::BroadcastChannel`] writes them.
///
/// Cheap to clone (the clones share one writer state).
#[derive(Clone)]
pub struct FileChannel {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for FileChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileChannel")
            .field("name", &self.inner.name)
            .field("dir", &self.inner.log.dir)
            .finish_non_exhaustive()
    }
}

impl FileChannel {
    /// Opens the channel `name` with default options. Nothing is created until the first
    /// message is sent (or a watcher needs the directory to watch).
    pub fn open(ws: &Workspace, name: ChannelName) -> Result<Self> {
        Self::open_with(ws, name, ChannelOptions::default())
    }

    /// Opens the channel `name` only if it exists (readers: a typo must not create state).
    ///
    /// # Errors
    /// [`Error::NoSuchChannel`].
    pub fn open_existing(ws: &Workspace, name: ChannelName) -> Result<Self> {
        Self::open_existing_with(ws, name, ChannelOptions::default())
    }

    /// [`FileChannel::open_existing`] with `options`.
    pub fn open_existing_with(
        ws: &Workspace,
        name: ChannelName,
        options: ChannelOptions,
    ) -> Result<Self> {
        let ch = Self::build(ws, name, options)?;
        if !ch.inner.log.exists() {
            return Err(Error::NoSuchChannel {
                channel: ch.inner.name.to_string(),
                path: ch.inner.log.dir.clone(),
            });
        }
        Ok(ch)
    }

    /// The inbox of `agent`: the channel `direct/<agent>`.
    pub fn inbox(ws: &Workspace, agent: &AgentId) -> Result<Self> {
        Self::open(ws, direct_channel(agent)?)
    }

    /// Opens the channel `name` with `options` (nothing is created yet).
    pub fn open_with(ws: &Workspace, name: ChannelName, options: ChannelOptions) -> Result<Self> {
        Self::build(ws, name, options)
    }

    /// Creates the channel's directory if it does not exist (watchers need one to watch).
    pub(crate) fn ensure_dir(&self) -> Result<()> {
        if self.inner.log.exists() {
            return Ok(());
        }
        fsx::create_dir_private(&self.inner.log.dir)
            .map_err(|e| Error::core(self.inner.name.as_str(), e))
    }

    fn build(ws: &Workspace, name: ChannelName, mut options: ChannelOptions) -> Result<Self> {
        if options.file_events && ws.is_network_filesystem() {
            tracing::debug!(channel = %name, "network filesystem: watchers poll");
            options.file_events = false;
        }
        options.max_message = options.max_message.min(MAX_MESSAGE_LIMIT);
        let kind = Kind::of(&name);
        let data_name = match &kind {
            Kind::Topic(_) => {
                ChannelName::new(crate::GLOBAL_FEED).map_err(|e| Error::core(name.as_str(), e))?
            }
            _ => name.clone(),
        };
        let dir = ws
            .channel_dir(&data_name)
            .map_err(|e| Error::core(name.as_str(), e))?
            .join(CHANNEL_DATA_DIR);
        Ok(Self {
            inner: Arc::new(Inner {
                ws: ws.clone(),
                log: Log::new(name.as_str().to_string(), dir, options.log_config()),
                name,
                options,
                kind,
            }),
        })
    }

    /// The channel's name.
    pub fn name(&self) -> &ChannelName {
        &self.inner.name
    }

    /// The channel's data directory (`.maos/channels/<name>/.chan/`; for a topic, the
    /// feed's), which watchers watch.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.log.dir
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.inner.ws
    }

    /// The handle's options.
    pub fn options(&self) -> &ChannelOptions {
        &self.inner.options
    }

    /// True when messages are sent to it with `send` (not a reserved broadcast name).
    pub fn is_writable(&self) -> bool {
        self.inner.kind == Kind::Plain
    }

    fn check_writable(&self) -> Result<()> {
        let reason = match &self.inner.kind {
            Kind::Plain => return Ok(()),
            Kind::Feed => "it is the broadcast feed, written only by broadcasts (`maos broadcast \
                           TOPIC`, `BroadcastChannel`)"
                .to_string(),
            Kind::Topic(t) => format!(
                "it shows the broadcasts on topic {t}; publish with `maos broadcast {t}` \
                 (`BroadcastChannel`)"
            ),
            Kind::Reserved => {
                "names under broadcast/ are the broadcast feed and its topics".to_string()
            }
        };
        Err(Error::Reserved {
            channel: self.inner.name.to_string(),
            reason,
        })
    }

    /// Appends `msg`; returns once it is durable and visible, with its position.
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`] or [`Error::Unreadable`] (nothing written) when the message
    /// is over the limit or would not decode for receivers; [`Error::Reserved`] for the
    /// broadcast names; a lock timeout ([`Error::is_timeout`]) naming the process that holds
    /// the channel; I/O errors.
    pub async fn send<T: Serialize>(&self, msg: &Message<T>) -> Result<Receipt> {
        self.check_writable()?;
        let bytes = self.encode(msg)?;
        let id = msg.id;
        let this = self.clone();
        crate::asyncify(self.inner.name.as_str(), "send", move || {
            this.append_bytes(&[&bytes], id)
        })
        .await
    }

    /// [`FileChannel::send`] for synchronous callers (never call it on a runtime thread).
    pub fn send_blocking<T: Serialize>(&self, msg: &Message<T>) -> Result<Receipt> {
        self.check_writable()?;
        let bytes = self.encode(msg)?;
        self.append_bytes(&[&bytes], msg.id)
    }

    /// Appends several messages under one lock and one flush: consecutive positions, in order.
    /// Either all are accepted or (on a size or decoding error) none is written.
    pub fn send_many_blocking<T: Serialize>(&self, msgs: &[Message<T>]) -> Result<Vec<Receipt>> {
        self.check_writable()?;
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = msgs
            .iter()
            .map(|m| self.encode(m))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let _span =
            tracing::debug_span!("send_many", channel = %self.inner.name, n = msgs.len()).entered();
        let first = self.inner.log.append(&refs)?;
        Ok(msgs
            .iter()
            .enumerate()
            .map(|(i, m)| Receipt {
                position: first + i as u64,
                id: m.id,
            })
            .collect())
    }

    fn encode<T: Serialize>(&self, msg: &Message<T>) -> Result<Vec<u8>> {
        envelope::encode(
            self.inner.name.as_str(),
            msg,
            None,
            self.inner.options.max_message,
        )
    }

    /// Appends already checked message bytes (the broadcast path bypasses the reservation
    /// check of `send`).
    pub(crate) fn append_bytes(&self, msgs: &[&[u8]], id: MessageId) -> Result<Receipt> {
        let _span = tracing::trace_span!("send", channel = %self.inner.name, %id).entered();
        let position = self.inner.log.append(msgs)?;
        tracing::trace!(position, "sent");
        Ok(Receipt { position, id })
    }

    /// Reads forward from `cursor`: the messages addressed to the reader (`filter`), at most
    /// [`ChannelOptions::max_batch`] records per call.
    ///
    /// A record whose message does not decode at all (its checksum is right but it is not a
    /// message envelope) is reported in [`Batch::problems`] and copied to `quarantine/`; one
    /// whose payload does not decode as `T` is reported. Neither stops the reader.
    pub fn receive_blocking<T: DeserializeOwned>(
        &self,
        cursor: &Cursor,
        filter: &Filter,
    ) -> Result<Batch<T>> {
        let _span = tracing::trace_span!("receive", channel = %self.inner.name,
            after = cursor.position)
        .entered();
        let raw = self.inner.log.read(*cursor, self.inner.options.max_batch)?;
        let mut batch = Batch {
            messages: Vec::with_capacity(raw.records.len()),
            cursor: raw.cursor,
            pruned: raw.pruned,
            gaps: raw.gaps,
            ahead: raw.ahead,
            problems: raw.problems,
            skipped: 0,
            skipped_for_role: 0,
        };
        if let Some(p) = batch.pruned {
            tracing::info!(channel = %self.inner.name, from = p.from, to = p.to,
                "reader's cursor was in pruned history");
        }
        for rec in raw.records {
            match self.decode::<T>(rec, filter) {
                Decoded::Message(d) => batch.messages.push(d),
                Decoded::NotForReader { role } => {
                    batch.skipped += 1;
                    batch.skipped_for_role += usize::from(role);
                }
                Decoded::Problem(p) => batch.problems.push(p),
            }
        }
        Ok(batch)
    }

    /// Decodes one record for a reader with `filter`.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        rec: RawRecord,
        filter: &Filter,
    ) -> Decoded<T> {
        let env = match Envelope::decode(&rec.bytes) {
            Ok(env) => env,
            Err(e) => return Decoded::Problem(self.undecodable(&rec, &e)),
        };
        if let Kind::Topic(t) = &self.inner.kind
            && env.topic.as_deref() != Some(t.as_str())
        {
            return Decoded::NotForReader { role: false };
        }
        if !filter.accepts(env.recipients()) {
            let role = filter.roleless() && matches!(env.recipients(), Recipients::Role(_));
            return Decoded::NotForReader { role };
        }
        match env.into_message::<T>() {
            Ok(message) => Decoded::Message(Delivered {
                position: rec.position,
                message,
            }),
            Err(e) => Decoded::Problem(self.mistyped(&rec, &e)),
        }
    }

    /// A record whose message is not a message envelope: reported and copied aside.
    pub(crate) fn undecodable(&self, rec: &RawRecord, e: &serde_json::Error) -> Problem {
        let q = self.inner.log.quarantine_bytes(
            rec.segment,
            rec.offset,
            "undecodable",
            &rec.bytes,
            rec.bytes.len() as u64,
        );
        tracing::debug!(channel = %self.inner.name, position = rec.position,
            error = e as &dyn std::error::Error, "a record that is not a message skipped (returned to the reader)");
        Problem {
            path: self.inner.log.segment_path(rec.segment),
            offset: Some(rec.offset),
            position: Some(rec.position),
            reason: format!(
                "the record's checksum is right but it is not a maos message ({e}); readers skip \
                 it"
            ),
            quarantined: q,
        }
    }

    fn mistyped(&self, rec: &RawRecord, e: &serde_json::Error) -> Problem {
        tracing::debug!(channel = %self.inner.name, position = rec.position,
            error = e as &dyn std::error::Error, "payload does not decode as the requested type (returned to the reader)");
        Problem {
            path: self.inner.log.segment_path(rec.segment),
            offset: Some(rec.offset),
            position: Some(rec.position),
            reason: format!("the message's payload does not decode as the requested type: {e}"),
            quarantined: None,
        }
    }

    /// [`FileChannel::receive_blocking`] on a blocking thread.
    pub async fn receive<T: DeserializeOwned + Send + 'static>(
        &self,
        cursor: &Cursor,
        filter: &Filter,
    ) -> Result<Batch<T>> {
        let this = self.clone();
        let (cursor, filter) = (*cursor, filter.clone());
        crate::asyncify(self.inner.name.as_str(), "receive", move || {
            this.receive_blocking(&cursor, &filter)
        })
        .await
    }

    /// A cursor after the newest message: a reader starting there sees only what comes next.
    pub fn end_cursor(&self) -> Result<Cursor> {
        Ok(Cursor::after(self.inner.log.bounds()?.newest))
    }

    /// Counts and bounds of the channel (for a topic view: of the broadcast feed).
    pub fn stats(&self) -> Result<ChannelStats> {
        let b = self.inner.log.bounds()?;
        let newest = b.newest;
        let oldest = b.first_segment.max(1);
        Ok(ChannelStats {
            name: self.inner.name.clone(),
            newest,
            oldest: if newest >= oldest {
                oldest
            } else {
                newest.saturating_add(1)
            },
            count: (newest - oldest.min(newest)) + u64::from(newest >= oldest),
            segments: b.segments,
            bytes: b.bytes,
        })
    }

    /// The durable consumer `name` of this channel, reading what `filter` accepts.
    pub fn consumer(&self, name: Name, filter: Filter) -> Result<Consumer> {
        Consumer::new(self.clone(), name, filter)
    }

    /// Makes everything up to `position` durable, so a reader may store an acknowledgement of
    /// it (see [`Consumer::ack`]).
    ///
    /// # Errors
    /// [`Error::AheadOfLog`] when the channel holds no such position.
    pub fn make_durable_through(&self, position: u64) -> Result<()> {
        self.inner.log.make_durable_through(position)
    }
}

/// The channel name of an agent's direct channel (`direct/<agent>`).
pub fn direct_channel(agent: &AgentId) -> Result<ChannelName> {
    ChannelName::new(format!("direct/{agent}"))
        .map_err(|e| Error::core(format!("direct/{agent}"), e))
}

/// One record as a reader sees it.
pub(crate) enum Decoded<T> {
    Message(Delivered<T>),
    /// Not addressed to the reader; `role`: addressed to a role while the reader has none.
    NotForReader {
        role: bool,
    },
    Problem(Problem),
}

/// Counts and bounds of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// The channel.
    pub name: ChannelName,
    /// Position of the newest message (0: none yet).
    pub newest: u64,
    /// Position of the oldest message still kept (`newest + 1` when none is kept).
    pub oldest: u64,
    /// Positions from `oldest` to `newest` (messages kept, plus skipped positions and damaged
    /// records among them).
    pub count: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes on disk in segments.
    pub bytes: u64,
}

/// A durable named consumer: its cursor is stored in
/// `.maos/channels/<channel>/.chan/consumers/<name>.json`, so a restarted agent continues
/// where it stopped. [`Consumer::receive_blocking`] does not move the stored cursor;
/// [`Consumer::ack`] does: what was received but not acknowledged is received again after a
/// restart (at-least-once delivery). An acknowledgement is stored only once the messages it
/// covers are durable, so after a power loss a stored cursor is never ahead of the log.
///
/// One consumer name is meant for one reader at a time; two readers sharing a name each see
/// every message (acknowledgements never move the cursor backwards).
#[derive(Debug, Clone)]
pub struct Consumer {
    channel: FileChannel,
    name: Name,
    filter: Filter,
    path: PathBuf,
    cursor: Cursor,
}

impl Consumer {
    fn new(channel: FileChannel, name: Name, filter: Filter) -> Result<Self> {
        let mut dir = channel.inner.log.dir.join(CONSUMERS_DIR);
        if let Kind::Topic(t) = &channel.inner.kind {
            // Topic views share the feed's directory: their consumers get their own corner.
            dir = dir.join("topic").join(t);
        }
        let path = dir.join(format!("{name}.json"));
        let cursor = read_cursor(channel.inner.name.as_str(), &path)?.unwrap_or_default();
        Ok(Self {
            channel,
            name,
            filter,
            path,
            cursor,
        })
    }

    /// The consumer's name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The channel.
    pub fn channel(&self) -> &FileChannel {
        &self.channel
    }

    /// The acknowledged cursor.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The messages after the acknowledged cursor (the same ones again until acknowledged).
    pub fn receive_blocking<T: DeserializeOwned>(&self) -> Result<Batch<T>> {
        self.channel.receive_blocking(&self.cursor, &self.filter)
    }

    /// [`Consumer::receive_blocking`] on a blocking thread.
    pub async fn receive<T: DeserializeOwned + Send + 'static>(&self) -> Result<Batch<T>> {
        self.channel.receive(&self.cursor, &self.filter).await
    }

    /// Acknowledges everything up to `cursor` (usually a batch's cursor, or a position with
    /// [`Cursor::after`]): the messages it covers are made durable first, then the cursor is
    /// stored durably. Never moves backwards.
    ///
    /// # Errors
    /// [`Error::AheadOfLog`] for a position the channel does not hold.
    pub fn ack(&mut self, cursor: Cursor) -> Result<()> {
        if cursor.position <= self.cursor.position {
            return Ok(()); // nothing new (and a cursor ahead of the log stays as it is)
        }
        let ch = self.channel.inner.name.to_string();
        self.channel.make_durable_through(cursor.position)?;
        let dir = self.path.parent().unwrap_or(&self.path).to_path_buf();
        fsx::create_dir_private(&dir).map_err(|e| Error::core(ch.clone(), e))?;
        // Read-compare-replace under the consumers' lock, so that another handle of the same
        // consumer (another process, a stale one) cannot move the stored cursor backwards.
        let lock = LockFile::open(&self.channel.inner.log.dir.join(CONSUMERS_DIR).join(".lock"))
            .map_err(|e| Error::core(ch.clone(), e))?;
        let _guard = lock
            .exclusive(self.channel.inner.options.lock_timeout)
            .map_err(|e| Error::core(ch.clone(), e))?;
        let now = match read_cursor(&ch, &self.path)? {
            Some(s) if s.position > cursor.position => s,
            _ => {
                fsx::write_json_replace(&self.path, &cursor)
                    .map_err(|e| Error::core(ch.clone(), e))?;
                cursor
            }
        };
        tracing::debug!(channel = %ch, consumer = %self.name, position = now.position,
            "acknowledged");
        self.cursor = now;
        Ok(())
    }
}

/// Reads a stored cursor (`None`: none stored yet).
pub(crate) fn read_cursor(channel: &str, path: &std::path::Path) -> Result<Option<Cursor>> {
    match fsx::read_json::<Cursor>(path, 4096) {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(maos_core::Error::Corrupt { path, reason }) => Err(Error::CorruptState {
            channel: channel.to_string(),
            path,
            reason,
        }),
        Err(e) => Err(Error::core(channel, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Retention, Subscription};
    use maos_core::{Recipients, Registration};

    fn ws() -> (tempfile::TempDir, Workspace) {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        (d, ws)
    }

    fn agent(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    #[test]
    fn recipients_are_applied_for_the_reading_agent() {
        let (_d, ws) = ws();
        let reg = AgentRegistry::new(&ws);
        reg.register(Registration::new(agent("b1")).role(AgentRole::backend()))
            .unwrap();
        let ch = FileChannel::open(&ws, ChannelName::new("c").unwrap()).unwrap();
        let s = agent("s");
        let sends = [
            Recipients::All,
            Recipients::Agent(agent("b1")),
            Recipients::Agent(agent("x")),
            Recipients::Group(vec![agent("x"), agent("b1")]),
            Recipients::Role(AgentRole::backend()),
            Recipients::Role(AgentRole::frontend()),
        ];
        for (i, r) in sends.iter().enumerate() {
            let rc = ch
                .send_blocking(&Message::new(s.clone(), r.clone(), i))
                .unwrap();
            assert_eq!(rc.position, i as u64 + 1);
        }
        let f = Filter::for_agent(&ws, agent("b1")).unwrap();
        let b = ch.receive_blocking::<usize>(&Cursor::start(), &f).unwrap();
        let got: Vec<usize> = b.messages.iter().map(|d| d.message.payload).collect();
        assert_eq!(got, [0, 1, 3, 4]);
        assert_eq!(b.skipped, 2);
        assert_eq!(b.cursor.position, 6);
        let x = Filter::for_agent(&ws, agent("x")).unwrap();
        let b = ch.receive_blocking::<usize>(&Cursor::start(), &x).unwrap();
        let got: Vec<usize> = b.messages.iter().map(|d| d.message.payload).collect();
        assert_eq!(got, [0, 2, 3]);
    }

    #[test]
    fn oversized_messages_are_refused_before_anything_is_written() {
        let (_d, ws) = ws();
        let opts = ChannelOptions::default().max_message(100);
        let ch = FileChannel::open_with(&ws, ChannelName::new("c").unwrap(), opts).unwrap();
        let big = "x".repeat(200);
        let err = ch
            .send_blocking(&Message::new(agent("a"), Recipients::All, big))
            .unwrap_err();
        assert!(
            matches!(err, Error::PayloadTooLarge { limit: 100, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("nothing was written"), "{err}");
        assert_eq!(ch.stats().unwrap().newest, 0);
        // The default limit is 1 MiB.
        let ch = FileChannel::open(&ws, ChannelName::new("d").unwrap()).unwrap();
        let err = ch
            .send_blocking(&Message::new(
                agent("a"),
                Recipients::All,
                "y".repeat(1 << 20),
            ))
            .unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    }

    #[test]
    fn consumers_persist_their_cursor_and_redeliver_until_acked() {
        let (_d, ws) = ws();
        let ch = FileChannel::open(&ws, ChannelName::new("jobs").unwrap()).unwrap();
        for i in 0..5 {
            ch.send_blocking(&Message::new(agent("a"), Recipients::All, i))
                .unwrap();
        }
        let name = Name::new("worker").unwrap();
        let mut c = ch.consumer(name.clone(), Filter::Everything).unwrap();
        let b = c.receive_blocking::<i32>().unwrap();
        assert_eq!(b.messages.len(), 5);
        // Not acknowledged: a restarted consumer gets the same messages again.
        let c2 = ch.consumer(name.clone(), Filter::Everything).unwrap();
        assert_eq!(c2.receive_blocking::<i32>().unwrap().messages.len(), 5);
        c.ack(Cursor::after(3)).unwrap();
        let c3 = ch.consumer(name.clone(), Filter::Everything).unwrap();
        let again = c3.receive_blocking::<i32>().unwrap();
        assert_eq!(again.messages[0].position, 4);
        c.ack(b.cursor).unwrap();
        let c4 = ch.consumer(name, Filter::Everything).unwrap();
        assert!(c4.receive_blocking::<i32>().unwrap().messages.is_empty());
    }

    /// protocol-comm.md: "A stored cursor never moves backwards", also when two handles (two
    /// processes, or a restarted agent beside a stale one) acknowledge under one name.
    #[test]
    fn a_stale_consumer_handle_never_moves_the_stored_cursor_backwards() {
        let (_d, ws) = ws();
        let ch = FileChannel::open(&ws, ChannelName::new("jobs").unwrap()).unwrap();
        for i in 0..5 {
            ch.send_blocking(&Message::new(agent("a"), Recipients::All, i))
                .unwrap();
        }
        let name = Name::new("worker").unwrap();
        let mut fresh = ch.consumer(name.clone(), Filter::Everything).unwrap();
        let mut stale = ch.consumer(name.clone(), Filter::Everything).unwrap();
        let b = fresh.receive_blocking::<i32>().unwrap();
        fresh.ack(b.cursor).unwrap();
        stale.ack(Cursor::after(2)).unwrap();
        let reopened = ch.consumer(name, Filter::Everything).unwrap();
        assert_eq!(reopened.cursor().position, 5);
        assert!(
            reopened
                .receive_blocking::<i32>()
                .unwrap()
                .messages
                .is_empty()
        );
        assert_eq!(stale.cursor().position, 5, "the stale handle catches up");
    }

    #[test]
    fn a_reader_in_pruned_history_is_told_exactly_what_it_lost() {
        let (_d, ws) = ws();
        let opts = ChannelOptions::default().segment_size(400);
        let ch = FileChannel::open_with(&ws, ChannelName::new("c").unwrap(), opts).unwrap();
        for i in 0..40 {
            ch.send_blocking(&Message::new(agent("a"), Recipients::All, i))
                .unwrap();
        }
        let before = ch.stats().unwrap();
        assert!(before.segments > 3, "{before:?}");
        let rep = ch.prune_blocking(Retention::Keep(10)).unwrap();
        assert!(rep.segments_removed > 0);
        let after = ch.stats().unwrap();
        assert!(after.count >= 10 && after.count < 40, "{after:?}");
        let b = ch
            .receive_blocking::<i32>(&Cursor::after(2), &Filter::Everything)
            .unwrap();
        let p = b.pruned.expect("a pruned gap is reported");
        assert_eq!((p.from, p.to), (3, after.oldest - 1));
        assert_eq!(b.messages[0].position, after.oldest);
        assert_eq!(b.messages.last().unwrap().position, 40);
        // Everything goes; positions continue after the newest.
        ch.prune_blocking(Retention::Keep(0)).unwrap();
        assert_eq!(ch.stats().unwrap().count, 0);
        let r = ch
            .send_blocking(&Message::new(agent("a"), Recipients::All, 41))
            .unwrap();
        assert_eq!(r.position, 41);
        let b = ch
            .receive_blocking::<i32>(&Cursor::start(), &Filter::Everything)
            .unwrap();
        assert_eq!(b.pruned, Some(Pruned { from: 1, to: 40 }));
        assert_eq!(b.messages.len(), 1);
        // Age-based pruning of old segments.
        let rep = ch
            .prune_blocking(Retention::OlderThan(Duration::from_secs(3600)))
            .unwrap();
        assert_eq!(rep.segments_removed, 0);
    }

    #[test]
    fn broadcasts_reach_topic_readers_and_wildcard_subscribers() {
        let (_d, ws) = ws();
        let mut sub = Subscription::new(&ws, &["build/*"], Cursor::start()).unwrap();
        let b = crate::BroadcastChannel::new(&ws, agent("ci"));
        b.broadcast_blocking("build/done", &"ok").unwrap();
        b.broadcast_blocking("test/done", &"skip").unwrap();
        b.broadcast_blocking("build/failed", &"no").unwrap();
        let got = sub.poll_blocking::<String>().unwrap();
        let topics: Vec<_> = got.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["build/done", "build/failed"]);
        assert_eq!(got[1].message.payload, "no");
        assert!(sub.poll_blocking::<String>().unwrap().is_empty());
        // The feed and the topics are written by broadcasts only: a forged notification
        // (issue 12) is refused, so a subscriber can never get a message twice.
        let feed = FileChannel::open(&ws, ChannelName::new(crate::GLOBAL_FEED).unwrap()).unwrap();
        let forged = serde_json::json!({"topic": "build/x", "position": 1});
        let err = feed
            .send_blocking(&Message::new(agent("evil"), Recipients::All, forged))
            .unwrap_err();
        assert!(matches!(err, Error::Reserved { .. }), "{err}");
        let topic = FileChannel::open(&ws, crate::topic_channel("test/done").unwrap()).unwrap();
        let err = topic
            .send_blocking(&Message::new(agent("evil"), Recipients::All, 1))
            .unwrap_err();
        assert!(
            err.to_string().contains("maos broadcast test/done"),
            "{err}"
        );
        b.broadcast_blocking("build/after", &"still here").unwrap();
        let got = sub.poll_blocking::<String>().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.payload, "still here");
        assert!(sub.take_notices().is_empty());
        // A topic reads as a channel of its own (a view of the feed).
        let b2 = topic
            .receive_blocking::<String>(&Cursor::start(), &Filter::Everything)
            .unwrap();
        assert_eq!(b2.messages.len(), 1);
        assert_eq!(b2.messages[0].message.payload, "skip");
        assert!(crate::topic_channel("global").is_err());
        // A durable subscription resumes after its acknowledged position.
        let name = Name::new("s1").unwrap();
        let mut d = Subscription::durable(&ws, &["**"], name.clone()).unwrap();
        let all = d.poll_blocking::<String>().unwrap();
        assert_eq!(all.len(), 4);
        d.ack_through(all[0].position).unwrap();
        let mut d2 = Subscription::durable(&ws, &["**"], name).unwrap();
        assert_eq!(d2.poll_blocking::<String>().unwrap().len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_gets_every_message_of_a_burst_in_order() {
        let (_d, ws) = ws();
        let ch = FileChannel::open(&ws, ChannelName::new("c").unwrap()).unwrap();
        let mut w =
            crate::ChannelWatcher::from_cursor(ch.clone(), Cursor::start(), Filter::Everything)
                .unwrap();
        let writer = ch.clone();
        let t = tokio::task::spawn_blocking(move || {
            let msgs: Vec<_> = (0..50)
                .map(|i| Message::new(agent("a"), Recipients::All, i))
                .collect();
            writer.send_many_blocking(&msgs).unwrap();
            for i in 50..100 {
                writer
                    .send_blocking(&Message::new(agent("a"), Recipients::All, i))
                    .unwrap();
            }
        });
        for i in 0..100 {
            let d = w.next::<i32>().await.unwrap();
            assert_eq!(d.message.payload, i);
            assert_eq!(d.position, i as u64 + 1);
        }
        t.await.unwrap();
        let none = w
            .next_timeout::<i32>(Duration::from_millis(20))
            .await
            .unwrap();
        assert!(none.is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_file_events_the_fallback_timer_still_delivers() {
        let (_d, ws) = ws();
        let opts = ChannelOptions::default()
            .file_events(false)
            .fallback_interval(Duration::from_millis(20));
        let ch = FileChannel::open_with(&ws, ChannelName::new("c").unwrap(), opts).unwrap();
        let mut w =
            crate::ChannelWatcher::from_cursor(ch.clone(), Cursor::start(), Filter::Everything)
                .unwrap();
        let writer = ch.clone();
        let t = std::thread::spawn(move || {
            for i in 0..5 {
                writer
                    .send_blocking(&Message::new(agent("a"), Recipients::All, i))
                    .unwrap();
            }
        });
        for i in 0..5 {
            assert_eq!(w.wait_for_message::<i32>().await.unwrap().payload, i);
        }
        t.join().unwrap();
    }

    #[test]
    fn threads_and_handles_in_one_process_never_share_a_position() {
        let (_d, ws) = ws();
        let name = ChannelName::new("c").unwrap();
        let shared = FileChannel::open(&ws, name.clone()).unwrap();
        let mut threads = Vec::new();
        for t in 0..4 {
            // Two threads share a handle, two open their own.
            let ch = if t % 2 == 0 {
                shared.clone()
            } else {
                FileChannel::open(&ws, name.clone()).unwrap()
            };
            threads.push(std::thread::spawn(move || {
                (0..100)
                    .map(|i| {
                        ch.send_blocking(&Message::new(agent("a"), Recipients::All, (t, i)))
                            .unwrap()
                            .position
                    })
                    .collect::<Vec<_>>()
            }));
        }
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=400).collect::<Vec<_>>());
        let b = shared
            .receive_blocking::<(i32, i32)>(&Cursor::start(), &Filter::Everything)
            .unwrap();
        for t in 0..4 {
            let mine: Vec<i32> = b
                .messages
                .iter()
                .filter(|d| d.message.payload.0 == t)
                .map(|d| d.message.payload.1)
                .collect();
            assert_eq!(mine, (0..100).collect::<Vec<_>>());
        }
    }

    #[test]
    fn wait_blocking_wakes_for_another_thread_and_times_out_empty() {
        let (_d, ws) = ws();
        let ch = FileChannel::open(&ws, ChannelName::new("c").unwrap()).unwrap();
        let writer = ch.clone();
        let t = std::thread::spawn(move || {
            writer
                .send_blocking(&Message::new(agent("a"), Recipients::All, 7))
                .unwrap();
        });
        let mut cur = Cursor::start();
        let mut got = Vec::new();
        while got.is_empty() {
            let b = ch
                .wait_blocking::<i32>(&cur, &Filter::Everything, Duration::from_secs(30))
                .unwrap();
            got.extend(b.messages.into_iter().map(|d| d.message.payload));
            cur = b.cursor;
        }
        assert_eq!(got, [7]);
        t.join().unwrap();
        let b = ch
            .wait_blocking::<i32>(&cur, &Filter::Everything, Duration::from_millis(10))
            .unwrap();
        assert!(b.is_empty());
    }
}
