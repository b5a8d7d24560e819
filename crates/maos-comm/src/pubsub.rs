//! Pub/sub: subscriptions to topics (with `*` and `**` wildcards) over the global feed.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use maos_core::{ChannelName, Message, Name, Workspace};
use serde::de::DeserializeOwned;

use crate::broadcast::{BroadcastNotification, GLOBAL_FEED, topic_channel};
use crate::watch::{DirWaker, Notice};
use crate::{Consumer, Cursor, Error, FileChannel, Filter, Result};

/// A topic pattern: segments separated by `/`; `*` matches one segment, `**` any number
/// (including none). `build/*` matches `build/done` but not `build/a/b`; `build/**` matches
/// both and `build` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    segments: Vec<String>,
}

impl TopicPattern {
    /// Parses and validates a pattern.
    pub fn new(pattern: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidTopic {
            topic: pattern.to_string(),
            reason: reason.to_string(),
        };
        if pattern.is_empty() {
            return Err(invalid("it is empty"));
        }
        let mut segments = Vec::new();
        for seg in pattern.split('/') {
            if seg != "*" && seg != "**" {
                // Validate the literal segment like a channel segment.
                ChannelName::new(seg).map_err(|e| invalid(&e.to_string()))?;
            }
            segments.push(seg.to_string());
        }
        Ok(Self {
            text: pattern.to_string(),
            segments,
        })
    }

    /// True when `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        let t: Vec<&str> = topic.split('/').collect();
        let p: Vec<&str> = self.segments.iter().map(String::as_str).collect();
        match_segs(&p, &t)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn match_segs(p: &[&str], t: &[&str]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(&"**"), _) => match_segs(&p[1..], t) || (!t.is_empty() && match_segs(p, &t[1..])),
        (Some(&"*"), Some(_)) => match_segs(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a == b => match_segs(&p[1..], &t[1..]),
        _ => false,
    }
}

/// One message received through a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicMessage<T> {
    /// The topic it was published on.
    pub topic: String,
    /// Its position in the topic channel (`broadcast/<topic>`).
    pub position: u64,
    /// Its position in the global feed (what a durable subscription acknowledges).
    pub feed_position: u64,
    /// The message.
    pub message: Message<T>,
}

/// A subscription to topics. It reads the global feed ([`GLOBAL_FEED`]) from its cursor and,
/// for each notification whose topic matches, fetches the message from the topic channel:
/// publishers never know who listens, and a subscriber needs one watch for any number of
/// topics.
///
/// A durable subscription ([`Subscription::durable`]) keeps its feed cursor as a consumer of
/// the global feed; [`Subscription::ack_through`] stores it (at-least-once delivery).
#[derive(Debug)]
pub struct Subscription {
    ws: Workspace,
    patterns: Vec<TopicPattern>,
    feed: FileChannel,
    cursor: Cursor,
    consumer: Option<Consumer>,
    topics: HashMap<String, (FileChannel, Cursor)>,
    pending: VecDeque<TopicMessage<serde_json::Value>>,
    notices: Vec<Notice>,
    waker: Option<DirWaker>,
}

impl Subscription {
    fn build(ws: &Workspace, patterns: &[&str]) -> Result<(Vec<TopicPattern>, FileChannel)> {
        let patterns = patterns
            .iter()
            .map(|p| TopicPattern::new(p))
            .collect::<Result<Vec<_>>>()?;
        let feed = FileChannel::open(
            ws,
            ChannelName::new(GLOBAL_FEED).map_err(|e| Error::core(GLOBAL_FEED, e))?,
        )?;
        Ok((patterns, feed))
    }

    /// Subscribes to `patterns`, from the feed position after `cursor` (use
    /// [`Cursor::start`] for all history, [`FileChannel::end_cursor`] of the feed for "from
    /// now on").
    pub fn new(ws: &Workspace, patterns: &[&str], cursor: Cursor) -> Result<Self> {
        let (patterns, feed) = Self::build(ws, patterns)?;
        Ok(Self {
            ws: ws.clone(),
            patterns,
            feed,
            cursor,
            consumer: None,
            topics: HashMap::new(),
            pending: VecDeque::new(),
            notices: Vec::new(),
            waker: None,
        })
    }

    /// Subscribes to `patterns` from now on (messages published after this call).
    pub fn from_now(ws: &Workspace, patterns: &[&str]) -> Result<Self> {
        let (_, feed) = Self::build(ws, patterns)?;
        let end = feed.end_cursor()?;
        Self::new(ws, patterns, end)
    }

    /// A durable subscription named `consumer`: continues where the last acknowledged read of
    /// that name stopped (from the start of the feed the first time).
    pub fn durable(ws: &Workspace, patterns: &[&str], consumer: Name) -> Result<Self> {
        let (patterns, feed) = Self::build(ws, patterns)?;
        let consumer = feed.consumer(consumer, Filter::Everything)?;
        Ok(Self {
            ws: ws.clone(),
            patterns,
            cursor: consumer.cursor(),
            feed,
            consumer: Some(consumer),
            topics: HashMap::new(),
            pending: VecDeque::new(),
            notices: Vec::new(),
            waker: None,
        })
    }

    /// The feed cursor (past everything returned or buffered).
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Pruned gaps and damaged records met so far; drains them.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Stores the cursor of a durable subscription up to and including the feed position of
    /// a message returned earlier (its `feed_position`). No-op for a non-durable one.
    pub fn ack_through(&mut self, feed_position: u64) -> Result<()> {
        if let Some(c) = self.consumer.as_mut() {
            c.ack(Cursor::after(feed_position))?;
        }
        Ok(())
    }

    /// Reads what is new (without waiting): the matching messages, in feed order.
    pub fn poll_blocking<T: DeserializeOwned>(&mut self) -> Result<Vec<TopicMessage<T>>> {
        self.fill_blocking()?;
        let mut out = Vec::new();
        while let Some(m) = self.pending.pop_front() {
            if let Some(t) = self.decode(m) {
                out.push(t);
            }
        }
        Ok(out)
    }

    fn decode<T: DeserializeOwned>(
        &mut self,
        m: TopicMessage<serde_json::Value>,
    ) -> Option<TopicMessage<T>> {
        let value = serde_json::to_value(&m.message).ok()?;
        match serde_json::from_value::<Message<T>>(value) {
            Ok(message) => Some(TopicMessage {
                topic: m.topic,
                position: m.position,
                feed_position: m.feed_position,
                message,
            }),
            Err(e) => {
                self.notices.push(Notice::Problem(crate::Problem {
                    path: self.feed.dir().to_path_buf(),
                    offset: None,
                    position: Some(m.position),
                    reason: format!(
                        "message on topic {} does not decode as the requested type: {e}",
                        m.topic
                    ),
                    quarantined: None,
                }));
                None
            }
        }
    }

    /// Reads the feed forward once; returns whether the cursor moved.
    fn fill_blocking(&mut self) -> Result<bool> {
        let batch = self
            .feed
            .receive_blocking::<BroadcastNotification>(&self.cursor, &Filter::Everything)?;
        let moved = batch.cursor.position != self.cursor.position;
        self.cursor = batch.cursor;
        if let Some(p) = batch.pruned {
            self.notices.push(Notice::Pruned(p));
        }
        self.notices
            .extend(batch.problems.into_iter().map(Notice::Problem));
        for d in batch.messages {
            let note = d.message.payload;
            if !self.patterns.iter().any(|p| p.matches(&note.topic)) {
                continue;
            }
            match self.fetch(&note) {
                Ok(Some(message)) => self.pending.push_back(TopicMessage {
                    topic: note.topic,
                    position: note.position,
                    feed_position: d.position,
                    message,
                }),
                Ok(None) => self.notices.push(Notice::Problem(crate::Problem {
                    path: self.feed.dir().to_path_buf(),
                    offset: None,
                    position: Some(d.position),
                    reason: format!(
                        "notification names message {} at position {} of topic {}, which \
                         is not there (pruned or damaged)",
                        note.id, note.position, note.topic
                    ),
                    quarantined: None,
                })),
                // A foreign or damaged notification (say, an invalid topic) is reported and
                // skipped; it must not stop the subscription.
                Err(e) => self.notices.push(Notice::Problem(crate::Problem {
                    path: self.feed.dir().to_path_buf(),
                    offset: None,
                    position: Some(d.position),
                    reason: format!("unusable notification: {e}"),
                    quarantined: None,
                })),
            }
        }
        Ok(moved)
    }

    fn fetch(
        &mut self,
        note: &BroadcastNotification,
    ) -> Result<Option<Message<serde_json::Value>>> {
        let (ch, cached) = match self.topics.get(&note.topic) {
            Some((ch, c)) => (ch.clone(), *c),
            None => {
                let ch = FileChannel::open(&self.ws, topic_channel(&note.topic)?)?;
                (ch, Cursor::start())
            }
        };
        let cursor = if cached.position + 1 == note.position {
            cached
        } else {
            Cursor::after(note.position.saturating_sub(1))
        };
        let raw = ch.inner.log.read(cursor, 1)?;
        let found = raw
            .records
            .into_iter()
            .find(|(pos, _)| *pos == note.position)
            .and_then(|(_, bytes)| {
                serde_json::from_slice::<Message<serde_json::Value>>(&bytes).ok()
            })
            .filter(|m| m.id == note.id);
        self.topics.insert(note.topic.clone(), (ch, raw.cursor));
        Ok(found)
    }

    /// The next matching message, waiting as long as it takes (a directory watch on the feed
    /// plus a fallback timer, as [`crate::ChannelWatcher`]).
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<TopicMessage<T>> {
        if self.waker.is_none() {
            self.waker = Some(DirWaker::new(
                GLOBAL_FEED,
                self.feed.dir(),
                self.feed.options().file_events,
            )?);
        }
        let fallback = self.feed.options().fallback_interval;
        loop {
            while let Some(m) = self.pending.pop_front() {
                if let Some(t) = self.decode(m) {
                    return Ok(t);
                }
            }
            // Fill a detached copy on a blocking thread and adopt its result only once it is
            // back: if this future is dropped meanwhile (a timeout, a `select!`), the
            // subscription is unchanged and the next call reads the same notifications again.
            let snap = Subscription {
                ws: self.ws.clone(),
                patterns: self.patterns.clone(),
                feed: self.feed.clone(),
                cursor: self.cursor,
                consumer: None,
                topics: self.topics.clone(),
                pending: VecDeque::new(),
                notices: Vec::new(),
                waker: None,
            };
            let (snap, res) = crate::asyncify(GLOBAL_FEED, "subscribe", move || {
                let mut snap = snap;
                let r = snap.fill_blocking();
                Ok((snap, r))
            })
            .await?;
            if res.is_ok() {
                self.cursor = snap.cursor;
                self.topics = snap.topics;
                self.pending.extend(snap.pending);
                self.notices.extend(snap.notices);
            }
            if res? {
                continue;
            }
            if let Some(w) = &self.waker {
                w.wait(fallback).await;
            }
        }
    }

    /// [`Subscription::next`] with a deadline: `Ok(None)` when nothing came in time.
    pub async fn next_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<TopicMessage<T>>> {
        match tokio::time::timeout(timeout, self.next::<T>()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_globs_over_segments() {
        let cases = [
            ("build/*", "build/done", true),
            ("build/*", "build/a/b", false),
            ("build/*", "build", false),
            ("build/**", "build/a/b", true),
            ("build/**", "build", true),
            ("*/done", "test/done", true),
            ("deploy", "deploy", true),
            ("deploy", "deploy/x", false),
            ("**", "anything/at/all", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(TopicPattern::new(p).unwrap().matches(t), want, "{p} vs {t}");
        }
        assert!(TopicPattern::new("a//b").is_err());
        assert!(TopicPattern::new("../x").is_err());
    }

    /// `next_timeout` (like any future dropped mid-way, e.g. in a `select!`) may abandon a
    /// `next` while it reads on a blocking thread: the subscription must keep its patterns,
    /// topics and buffered messages, and lose nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_next_loses_neither_patterns_nor_messages() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::init(d.path()).unwrap();
        let publisher = crate::BroadcastChannel::new(&ws, maos_core::AgentId::new("p").unwrap());
        let n = 200u64;
        for i in 0..n {
            publisher.broadcast_blocking("build/done", &i).unwrap();
        }
        let mut sub = Subscription::new(&ws, &["build/*"], Cursor::start()).unwrap();
        let mut got = Vec::new();
        // Many calls that give up at once: some are abandoned mid-read.
        for _ in 0..(20 * n) {
            if let Some(m) = sub.next_timeout::<u64>(Duration::ZERO).await.unwrap() {
                got.push(m.message.payload);
            }
        }
        // Then wait for whatever is left (all of it is already published).
        while (got.len() as u64) < n {
            match sub
                .next_timeout::<u64>(Duration::from_secs(30))
                .await
                .unwrap()
            {
                Some(m) => got.push(m.message.payload),
                None => break,
            }
        }
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }
}
