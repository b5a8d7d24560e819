//! The storage seam of the comm commands: what `maos send`, `recv`, `broadcast` and
//! `subscribe` need ([`ChannelStore`]) and what `maos inbox`, `subscribe --durable` and the
//! hooks' mail need ([`InboxStore`]), implemented here on the files ([`FileComm`],
//! [`FileInboxes`]) and by `maos-postgres` on a server. The backend is chosen once, by whoever opens the workspace
//! (`maos_coordination::backend::open`); a command is written once, over [`ChannelStore`].

use std::time::Duration;

use maos_core::{AgentId, ChannelName, Message, Name, Workspace};

use crate::{
    BroadcastChannel, ChannelOptions, ChannelWatcher, Cursor, Delivered, FileChannel, Filter,
    Inbox, InboxBatch, InboxWatcher, Notice, PruneReport, RawPayload, Receipt, Result, Retention,
    Subscription, TopicMessage, Unread, feed_options,
};

/// Where a channel reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Start {
    /// After this position (0: from the first message).
    After(u64),
    /// After the acknowledged position of this durable consumer; the reader acknowledges
    /// through it.
    Consumer(Name),
}

/// What one read of a channel returns.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ChannelRead {
    /// The messages for the reader, in channel order.
    pub messages: Vec<Delivered<RawPayload>>,
    /// What the reader should be told (pruned or damaged messages, gaps).
    pub notices: Vec<Notice>,
    /// Warnings of a backend without [`Notice`]s of its own (one line each).
    pub warnings: Vec<String>,
    /// Messages addressed to a role the reader does not have.
    pub skipped_for_role: usize,
    /// The position read through (delivered or skipped).
    pub cursor: u64,
    /// True when the read moved the cursor.
    pub progressed: bool,
}

/// What one read of a subscription returns.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct TopicRead {
    /// The matching messages, in feed order.
    pub messages: Vec<TopicMessage<RawPayload>>,
    /// What the reader should be told.
    pub notices: Vec<Notice>,
    /// Warnings of a backend without [`Notice`]s of its own.
    pub warnings: Vec<String>,
    /// The feed position read through.
    pub cursor: u64,
}

/// A reader of one channel, positioned by a [`Start`].
pub trait ChannelReader: Send {
    /// What is there after the cursor now (one batch); moves the cursor past it.
    fn read(&mut self) -> Result<ChannelRead>;
    /// Waits up to `timeout` for something new after the cursor, then reads it (an empty
    /// read at the timeout).
    fn wait(&mut self, timeout: Duration) -> Result<ChannelRead>;
    /// Acknowledges through `position` for a durable consumer (nothing otherwise).
    fn ack(&mut self, position: u64) -> Result<()>;
}

/// A reader of the broadcasts on some topic patterns.
pub trait TopicReader: Send {
    /// What is new now, in feed order.
    fn read(&mut self) -> Result<TopicRead>;
    /// Waits up to `timeout` for a new matching message (an empty read at the timeout).
    fn wait(&mut self, timeout: Duration) -> Result<TopicRead>;
    /// Acknowledges through feed position `position` for a durable reader.
    fn ack(&mut self, position: u64) -> Result<()>;
}

/// Channels and broadcasts of one workspace, on whichever backend they live.
pub trait ChannelStore: Send + Sync + std::fmt::Debug {
    /// Sends `msg` on `channel`, waiting at most `lock_wait` for the channel's lock; returns
    /// once the message is durable.
    fn send(
        &self,
        channel: &ChannelName,
        msg: &Message<RawPayload>,
        lock_wait: Duration,
    ) -> Result<Receipt>;
    /// The filter of what is addressed to `agent` (with its registered role).
    fn filter_for(&self, agent: AgentId) -> Result<Filter>;
    /// A reader of an existing channel ([`crate::Error::NoSuchChannel`] otherwise), or with
    /// `even_empty` of a channel that may have no message yet (a follower waiting for the
    /// first one).
    fn reader(
        &self,
        channel: &ChannelName,
        start: Start,
        filter: Filter,
        even_empty: bool,
    ) -> Result<Box<dyn ChannelReader>>;
    /// Every channel with its counts, by name (`maos channels`).
    fn list(&self) -> Result<Vec<crate::ChannelStats>>;
    /// Publishes `payload` on `topic` as `sender`.
    fn broadcast(
        &self,
        sender: &AgentId,
        topic: &str,
        payload: &RawPayload,
        lock_wait: Duration,
    ) -> Result<Receipt>;
    /// A reader of the topics matching `patterns`: from the start of the feed, or durable
    /// (continuing after `consumer`'s acknowledged position).
    fn topic_reader(
        &self,
        patterns: &[&str],
        consumer: Option<Name>,
    ) -> Result<Box<dyn TopicReader>>;
    /// Removes old messages of an existing channel (`maos channels prune`): the newest `n`
    /// are kept with [`Retention::Keep`] (at least `n`: the files remove whole segments),
    /// those older than a duration go with [`Retention::OlderThan`]. Readers whose cursor
    /// pointed into the removed history are told ([`crate::Pruned`]); a durable consumer's
    /// cursor does not hold pruning back. Topic views are refused ([`crate::Error::Reserved`]):
    /// prune the broadcast feed instead.
    fn prune(&self, channel: &ChannelName, retention: Retention) -> Result<PruneReport>;
}

/// Agents' inboxes ([`crate::Inbox`]'s semantics: see its module docs for what is addressed
/// to an agent), on whichever backend the workspace uses.
pub trait InboxStore: Send + Sync + std::fmt::Debug {
    /// The inbox of `agent` (its role from the agent registry).
    fn open(&self, agent: AgentId) -> Result<Box<dyn AgentInbox>>;
}

/// One agent's inbox: everything addressed to it, read forward from durable per-channel
/// cursors, and its stored topic subscriptions.
pub trait AgentInbox: Send + std::fmt::Debug {
    /// The agent.
    fn agent(&self) -> &AgentId;
    /// The stored topic subscriptions (as of the last call that read or changed them).
    fn subscriptions(&self) -> &[String];
    /// Stores topic subscriptions: broadcasts on matching topics published from now on come
    /// to this inbox. Returns the patterns that were new.
    fn subscribe(&mut self, patterns: &[&str]) -> Result<Vec<String>>;
    /// Removes stored subscriptions; returns the ones that were there.
    fn unsubscribe(&mut self, patterns: &[&str]) -> Result<Vec<String>>;
    /// The unread items, at most `max`, without acknowledging them.
    fn read(&mut self, max: usize) -> Result<InboxBatch>;
    /// Acknowledges a batch this inbox returned: its items never come again. Cursors only
    /// move forward, whoever else acknowledged meanwhile.
    fn ack(&mut self, batch: &InboxBatch) -> Result<()>;
    /// How many items are unread, per channel.
    fn unread(&mut self) -> Result<Unread>;
    /// A wake-up for a reader waiting for new items: make it before reading, so nothing that
    /// arrives between the read and the wait is missed.
    fn watcher(&self) -> Result<Box<dyn InboxWait>>;
}

/// Wakes an inbox reader when something may have arrived (a hint: read again after it).
pub trait InboxWait: Send {
    /// Blocks until a change may have happened since the last wait (or the watcher was made),
    /// or `timeout` passes (or a backend's fallback interval, whichever is shorter).
    fn wait(&self, timeout: Duration);
}

/// The file backend's inboxes: [`crate::Inbox`], state under `.maos/inbox/`.
#[derive(Debug, Clone)]
pub struct FileInboxes {
    ws: Workspace,
}

impl FileInboxes {
    /// The inboxes of `ws`.
    pub fn new(ws: &Workspace) -> Self {
        Self { ws: ws.clone() }
    }
}

impl InboxStore for FileInboxes {
    fn open(&self, agent: AgentId) -> Result<Box<dyn AgentInbox>> {
        Ok(Box::new(Inbox::open(&self.ws, agent)?))
    }
}

impl AgentInbox for Inbox {
    fn agent(&self) -> &AgentId {
        Inbox::agent(self)
    }

    fn subscriptions(&self) -> &[String] {
        Inbox::subscriptions(self)
    }

    fn subscribe(&mut self, patterns: &[&str]) -> Result<Vec<String>> {
        Inbox::subscribe(self, patterns)
    }

    fn unsubscribe(&mut self, patterns: &[&str]) -> Result<Vec<String>> {
        Inbox::unsubscribe(self, patterns)
    }

    fn read(&mut self, max: usize) -> Result<InboxBatch> {
        Inbox::read(self, max)
    }

    fn ack(&mut self, batch: &InboxBatch) -> Result<()> {
        Inbox::ack(self, batch)
    }

    fn unread(&mut self) -> Result<Unread> {
        Inbox::unread(self)
    }

    fn watcher(&self) -> Result<Box<dyn InboxWait>> {
        Ok(Box::new(Inbox::watcher(self)?))
    }
}

impl InboxWait for InboxWatcher {
    fn wait(&self, timeout: Duration) {
        InboxWatcher::wait(self, timeout);
    }
}

/// The file backend: channels under `.maos/channels/`.
#[derive(Debug, Clone)]
pub struct FileComm {
    ws: Workspace,
}

impl FileComm {
    /// The channels of `ws`.
    pub fn new(ws: &Workspace) -> Self {
        Self { ws: ws.clone() }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::Error::Io {
            channel: String::new(),
            op: "start the runtime of a waiting reader",
            path: std::path::PathBuf::new(),
            source,
        })
}

struct FileReader {
    channel: FileChannel,
    filter: Filter,
    consumer: Option<crate::Consumer>,
    cursor: Cursor,
    watch: Option<(tokio::runtime::Runtime, ChannelWatcher)>,
}

fn channel_read(b: crate::Batch<RawPayload>, before: &Cursor) -> ChannelRead {
    let mut notices = Vec::new();
    notices.extend(b.pruned.map(Notice::Pruned));
    notices.extend(b.gaps.into_iter().map(Notice::Gap));
    notices.extend(b.ahead.map(Notice::Ahead));
    notices.extend(b.problems.into_iter().map(Notice::Problem));
    ChannelRead {
        progressed: b.cursor != *before,
        cursor: b.cursor.position,
        messages: b.messages,
        notices,
        warnings: Vec::new(),
        skipped_for_role: b.skipped_for_role,
    }
}

impl ChannelReader for FileReader {
    fn read(&mut self) -> Result<ChannelRead> {
        if let Some((_, w)) = &self.watch {
            self.cursor = w.cursor();
        }
        let b = self
            .channel
            .receive_blocking::<RawPayload>(&self.cursor, &self.filter)?;
        let before = self.cursor;
        self.cursor = b.cursor;
        // A watcher made earlier continues from here.
        self.watch = None;
        Ok(channel_read(b, &before))
    }

    fn wait(&mut self, timeout: Duration) -> Result<ChannelRead> {
        if self.watch.is_none() {
            let rt = runtime()?;
            let w = {
                let _enter = rt.enter();
                ChannelWatcher::from_cursor(self.channel.clone(), self.cursor, self.filter.clone())?
            };
            self.watch = Some((rt, w));
        }
        let Some((rt, w)) = self.watch.as_mut() else {
            return Ok(ChannelRead::default());
        };
        let before = self.cursor;
        let got = rt.block_on(w.next_timeout::<RawPayload>(timeout))?;
        let notices = w.take_notices();
        self.cursor = w.cursor();
        Ok(ChannelRead {
            progressed: self.cursor != before || got.is_some(),
            cursor: got.as_ref().map_or(self.cursor.position, |d| d.position),
            messages: got.into_iter().collect(),
            notices,
            warnings: Vec::new(),
            skipped_for_role: 0,
        })
    }

    fn ack(&mut self, position: u64) -> Result<()> {
        let Some(c) = self.consumer.as_mut() else {
            return Ok(());
        };
        if position == self.cursor.position {
            c.ack(self.cursor)
        } else {
            c.ack(Cursor::after(position))
        }
    }
}

struct FileTopics {
    sub: Subscription,
    durable: bool,
    rt: Option<tokio::runtime::Runtime>,
}

impl TopicReader for FileTopics {
    fn read(&mut self) -> Result<TopicRead> {
        let messages = self.sub.poll_blocking::<RawPayload>()?;
        Ok(TopicRead {
            messages,
            notices: self.sub.take_notices(),
            warnings: Vec::new(),
            cursor: self.sub.cursor().position,
        })
    }

    fn wait(&mut self, timeout: Duration) -> Result<TopicRead> {
        if self.rt.is_none() {
            self.rt = Some(runtime()?);
        }
        let Some(rt) = self.rt.as_ref() else {
            return Ok(TopicRead::default());
        };
        let got = rt.block_on(self.sub.next_timeout::<RawPayload>(timeout))?;
        Ok(TopicRead {
            messages: got.into_iter().collect(),
            notices: self.sub.take_notices(),
            warnings: Vec::new(),
            cursor: self.sub.cursor().position,
        })
    }

    fn ack(&mut self, position: u64) -> Result<()> {
        if self.durable {
            self.sub.ack_through(position)?;
        }
        Ok(())
    }
}

impl ChannelStore for FileComm {
    fn send(
        &self,
        channel: &ChannelName,
        msg: &Message<RawPayload>,
        lock_wait: Duration,
    ) -> Result<Receipt> {
        FileChannel::open_with(
            &self.ws,
            channel.clone(),
            ChannelOptions::default().lock_timeout(lock_wait),
        )?
        .send_blocking(msg)
    }

    fn filter_for(&self, agent: AgentId) -> Result<Filter> {
        Filter::for_agent(&self.ws, agent)
    }

    fn reader(
        &self,
        channel: &ChannelName,
        start: Start,
        filter: Filter,
        even_empty: bool,
    ) -> Result<Box<dyn ChannelReader>> {
        let ch = if even_empty {
            FileChannel::open(&self.ws, channel.clone())?
        } else {
            FileChannel::open_existing(&self.ws, channel.clone())?
        };
        let (consumer, cursor) = match start {
            Start::After(p) => (None, Cursor::after(p)),
            Start::Consumer(name) => {
                let c = ch.consumer(name, filter.clone())?;
                let cur = c.cursor();
                (Some(c), cur)
            }
        };
        Ok(Box::new(FileReader {
            channel: ch,
            filter,
            consumer,
            cursor,
            watch: None,
        }))
    }

    fn list(&self) -> Result<Vec<crate::ChannelStats>> {
        crate::channel_stats(&self.ws)
    }

    fn broadcast(
        &self,
        sender: &AgentId,
        topic: &str,
        payload: &RawPayload,
        lock_wait: Duration,
    ) -> Result<Receipt> {
        BroadcastChannel::with_options(
            &self.ws,
            sender.clone(),
            feed_options(&self.ws).lock_timeout(lock_wait),
        )
        .broadcast_blocking(topic, payload)
    }

    fn topic_reader(
        &self,
        patterns: &[&str],
        consumer: Option<Name>,
    ) -> Result<Box<dyn TopicReader>> {
        let durable = consumer.is_some();
        let sub = match consumer {
            Some(n) => Subscription::durable(&self.ws, patterns, n)?,
            None => Subscription::new(&self.ws, patterns, Cursor::start())?,
        };
        Ok(Box::new(FileTopics {
            sub,
            durable,
            rt: None,
        }))
    }

    fn prune(&self, channel: &ChannelName, retention: Retention) -> Result<PruneReport> {
        FileChannel::open_existing(&self.ws, channel.clone())?.prune_blocking(retention)
    }
}
