//! [`FileChannel`]: one named, totally ordered, durable message log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use maos_core::{
    AgentId, AgentRegistry, AgentRole, ChannelName, Message, MessageId, Name, Workspace, fsx,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::log::{CONSUMERS_DIR, Cursor, Log, Problem};
use crate::{Error, Result};

/// Default limit of a serialised message: 1 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Default size at which a segment is closed and a new one started: 8 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 8 << 20;
/// Name of the per-channel directory inside `channels/<channel>/` (it starts with a dot, so it
/// can never clash with a child channel's directory).
pub const CHANNEL_DATA_DIR: &str = ".chan";

/// Settings of a channel handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelOptions {
    /// Largest serialised message accepted by `send` (default [`DEFAULT_MAX_MESSAGE`]).
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
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            max_message: DEFAULT_MAX_MESSAGE,
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_batch: 10_000,
            fallback_interval: Duration::from_secs(2),
            file_events: true,
        }
    }
}

impl ChannelOptions {
    /// Sets [`ChannelOptions::max_message`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
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
}

/// What `send` returns once the message is durable and visible: its position in the channel
/// (1, 2, 3, ... in the one order every reader sees) and its id.
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
/// and anything the reader must know about (a pruned gap, damaged records).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Batch<T> {
    /// New messages addressed to the reader, in channel order.
    pub messages: Vec<Delivered<T>>,
    /// Where the next `receive` continues (past every record read, delivered or not).
    pub cursor: Cursor,
    /// Positions `from..=to` were pruned before the reader got to them: they are lost to it.
    pub pruned: Option<Pruned>,
    /// Records and files that could not be used (each reported once per reader).
    pub problems: Vec<Problem>,
    /// Records skipped because they were not addressed to the reader.
    pub skipped: usize,
}

impl<T> Batch<T> {
    /// True when nothing new was found (no messages, no gap, no problem).
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.pruned.is_none() && self.problems.is_empty()
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
    pub fn accepts(&self, recipients: &maos_core::Recipients) -> bool {
        match self {
            Filter::Everything => true,
            Filter::Agent { agent, role } => recipients.includes(agent, role.as_ref()),
        }
    }
}

#[derive(Deserialize)]
struct Head {
    recipients: maos_core::Recipients,
}

pub(crate) struct Inner {
    pub(crate) ws: Workspace,
    pub(crate) name: ChannelName,
    pub(crate) log: Log,
    pub(crate) options: ChannelOptions,
}

/// A named message channel: `.maos/channels/<name>/.chan/`, a segmented append-only log.
///
/// Every message gets a position (1, 2, 3, ...) assigned under the channel's kernel lock, so
/// all readers see one total order and each sender's messages keep their send order. `send`
/// returns only when the message is on disk (`fdatasync`) and readable whole. Readers read
/// forward from a [`Cursor`]; the cost is proportional to what is new, not to history.
///
/// Direct messages: send a [`maos_core::Recipients::Agent`] message on a shared channel, or
/// use the inbox convention `direct/<agent>` ([`FileChannel::inbox`]).
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
    /// Opens (creating its directory if needed) the channel `name` with default options.
    pub fn open(ws: &Workspace, name: ChannelName) -> Result<Self> {
        Self::open_with(ws, name, ChannelOptions::default())
    }

    /// The inbox of `agent`: the channel `direct/<agent>`.
    pub fn inbox(ws: &Workspace, agent: &AgentId) -> Result<Self> {
        let name = ChannelName::new(format!("direct/{agent}"))
            .map_err(|e| Error::core(format!("direct/{agent}"), e))?;
        Self::open(ws, name)
    }

    /// Opens the channel `name` with `options`.
    pub fn open_with(
        ws: &Workspace,
        name: ChannelName,
        mut options: ChannelOptions,
    ) -> Result<Self> {
        if options.file_events && ws.is_network_filesystem() {
            tracing::debug!(channel = %name, "network filesystem: watchers poll");
            options.file_events = false;
        }
        let dir = ws
            .channel_dir(&name)
            .map_err(|e| Error::core(name.as_str(), e))?
            .join(CHANNEL_DATA_DIR);
        if std::fs::symlink_metadata(&dir).is_err() {
            fsx::create_dir_private(&dir).map_err(|e| Error::core(name.as_str(), e))?;
            // Make the new directories' names durable, up to `.maos/channels`.
            let top = ws.channels_dir();
            let mut d = dir.parent();
            while let Some(p) = d {
                fsx::sync_dir(p).map_err(|e| Error::core(name.as_str(), e))?;
                if p == top || !p.starts_with(&top) {
                    break;
                }
                d = p.parent();
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                ws: ws.clone(),
                log: Log::new(name.as_str().to_string(), dir),
                name,
                options,
            }),
        })
    }

    /// The channel's name.
    pub fn name(&self) -> &ChannelName {
        &self.inner.name
    }

    /// The channel's data directory (`.maos/channels/<name>/.chan/`), which watchers watch.
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

    fn encode<T: Serialize>(&self, msg: &Message<T>) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(msg).map_err(|source| Error::Serialize {
            channel: self.inner.name.to_string(),
            source,
        })?;
        if bytes.len() > self.inner.options.max_message {
            return Err(Error::PayloadTooLarge {
                channel: self.inner.name.to_string(),
                id: msg.id,
                size: bytes.len(),
                limit: self.inner.options.max_message,
            });
        }
        Ok(bytes)
    }

    /// Appends `msg`; returns once it is durable and visible, with its position.
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`] (nothing written) when the serialised message is over the
    /// limit; I/O errors.
    pub async fn send<T: Serialize>(&self, msg: &Message<T>) -> Result<Receipt> {
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
        let bytes = self.encode(msg)?;
        self.append_bytes(&[&bytes], msg.id)
    }

    /// Appends several messages under one lock and one flush: consecutive positions, in order.
    /// Either all are written or (on a size error) none.
    pub fn send_many_blocking<T: Serialize>(&self, msgs: &[Message<T>]) -> Result<Vec<Receipt>> {
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
        let first = self
            .inner
            .log
            .append(&refs, self.inner.options.segment_size)?;
        Ok(msgs
            .iter()
            .enumerate()
            .map(|(i, m)| Receipt {
                position: first + i as u64,
                id: m.id,
            })
            .collect())
    }

    fn append_bytes(&self, msgs: &[&[u8]], id: MessageId) -> Result<Receipt> {
        let _span = tracing::trace_span!("send", channel = %self.inner.name, %id).entered();
        let position = self
            .inner
            .log
            .append(msgs, self.inner.options.segment_size)?;
        tracing::trace!(position, "sent");
        Ok(Receipt { position, id })
    }

    /// Reads forward from `cursor`: the messages addressed to the reader (`filter`), at most
    /// [`ChannelOptions::max_batch`] records per call.
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
            pruned: raw.pruned.map(|(from, to)| Pruned { from, to }),
            problems: raw.problems,
            skipped: 0,
        };
        if let Some(p) = batch.pruned {
            tracing::info!(channel = %self.inner.name, from = p.from, to = p.to,
                "reader's cursor was in pruned history");
        }
        for (position, bytes) in raw.records {
            if !matches!(filter, Filter::Everything) {
                match serde_json::from_slice::<Head>(&bytes) {
                    Ok(h) if filter.accepts(&h.recipients) => {}
                    Ok(_) => {
                        batch.skipped += 1;
                        continue;
                    }
                    Err(e) => {
                        batch.problems.push(self.undecodable(position, &e));
                        continue;
                    }
                }
            }
            match serde_json::from_slice::<Message<T>>(&bytes) {
                Ok(message) => batch.messages.push(Delivered { position, message }),
                Err(e) => batch.problems.push(self.undecodable(position, &e)),
            }
        }
        Ok(batch)
    }

    fn undecodable(&self, position: u64, e: &serde_json::Error) -> Problem {
        tracing::warn!(channel = %self.inner.name, position, error = %e,
            "message cannot be decoded as the requested type");
        Problem {
            path: self.inner.log.dir.clone(),
            offset: None,
            position: Some(position),
            reason: format!("message does not decode as the requested type: {e}"),
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
        Ok(Cursor::after(self.stats()?.newest))
    }

    /// Counts and bounds of the channel.
    pub fn stats(&self) -> Result<ChannelStats> {
        let (newest, first_seg, segments, bytes) = self.inner.log.bounds()?;
        let oldest = first_seg.max(1);
        Ok(ChannelStats {
            name: self.inner.name.clone(),
            newest,
            oldest: if newest >= oldest {
                oldest
            } else {
                newest.saturating_add(1)
            },
            count: (newest - oldest.min(newest)) + u64::from(newest >= oldest),
            segments,
            bytes,
        })
    }

    /// The durable consumer `name` of this channel, reading what `filter` accepts.
    pub fn consumer(&self, name: Name, filter: Filter) -> Result<Consumer> {
        Consumer::new(self.clone(), name, filter)
    }
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
    /// Messages kept (`newest - oldest + 1`; damaged records included).
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
/// restart (at-least-once delivery).
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
        let dir = channel.inner.log.dir.join(CONSUMERS_DIR);
        let path = dir.join(format!("{name}.json"));
        let ch = channel.inner.name.to_string();
        let cursor = match fsx::read_json::<Cursor>(&path, 4096) {
            Ok(c) => c,
            Err(e) if e.is_not_found() => Cursor::start(),
            Err(maos_core::Error::Corrupt { path, reason }) => {
                return Err(Error::CorruptState {
                    channel: ch,
                    path,
                    reason,
                });
            }
            Err(e) => return Err(Error::core(ch, e)),
        };
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
    /// [`Cursor::after`]): stored durably before this returns. Never moves backwards.
    pub fn ack(&mut self, cursor: Cursor) -> Result<()> {
        if cursor.position < self.cursor.position {
            return Ok(());
        }
        let ch = self.channel.inner.name.to_string();
        if let Some(dir) = self.path.parent() {
            fsx::create_dir_private(dir).map_err(|e| Error::core(ch.clone(), e))?;
        }
        // Read-compare-replace under the channel's lock, so that another handle of the same
        // consumer (another process, a stale one) cannot move the stored cursor backwards.
        let lock_path = self.channel.inner.log.dir.join(crate::log::LOCK_FILE);
        let lock = fsx::open_lock_file(&lock_path).map_err(|e| Error::core(ch.clone(), e))?;
        lock.lock()
            .map_err(|e| Error::io(ch.clone(), "lock", &lock_path, e))?;
        let res = (|| {
            let stored = match fsx::read_json::<Cursor>(&self.path, 4096) {
                Ok(c) => Some(c),
                Err(e) if e.is_not_found() => None,
                Err(maos_core::Error::Corrupt { path, reason }) => {
                    return Err(Error::CorruptState {
                        channel: ch.clone(),
                        path,
                        reason,
                    });
                }
                Err(e) => return Err(Error::core(ch.clone(), e)),
            };
            match stored {
                Some(s) if s.position > cursor.position => Ok(s),
                _ => {
                    fsx::write_json_replace(&self.path, &cursor)
                        .map_err(|e| Error::core(ch.clone(), e))?;
                    Ok(cursor)
                }
            }
        })();
        let _ = lock.unlock();
        let now = res?;
        tracing::debug!(channel = %self.channel.inner.name, consumer = %self.name,
            position = now.position, "acknowledged");
        self.cursor = now;
        Ok(())
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
        // A foreign notification naming an impossible topic is reported, not fatal.
        let feed = FileChannel::open(&ws, ChannelName::new(crate::GLOBAL_FEED).unwrap()).unwrap();
        let bogus = serde_json::json!({"topic": "build/.hidden", "position": 1,
            "id": maos_core::MessageId::new()});
        feed.send_blocking(&Message::new(agent("evil"), Recipients::All, bogus))
            .unwrap();
        b.broadcast_blocking("build/after", &"still here").unwrap();
        let got = sub.poll_blocking::<String>().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.payload, "still here");
        assert_eq!(sub.take_notices().len(), 1);
        let topic = FileChannel::open(&ws, crate::topic_channel("test/done").unwrap()).unwrap();
        let b2 = topic
            .receive_blocking::<String>(&Cursor::start(), &Filter::Everything)
            .unwrap();
        assert_eq!(b2.messages[0].message.payload, "skip");
        assert!(crate::topic_channel("global").is_err());
        // A durable subscription resumes after its acknowledged position.
        let name = Name::new("s1").unwrap();
        let mut d = Subscription::durable(&ws, &["**"], name.clone()).unwrap();
        let all = d.poll_blocking::<String>().unwrap();
        assert_eq!(all.len(), 4);
        d.ack_through(all[0].feed_position).unwrap();
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
