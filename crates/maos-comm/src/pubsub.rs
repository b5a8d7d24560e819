//! Pub/sub: subscriptions to topics (with `*` and `**` wildcards) over the broadcast feed.

use std::collections::VecDeque;
use std::time::Duration;

use maos_core::{ChannelName, Message, Name, Workspace};
use serde::de::DeserializeOwned;

use crate::broadcast::{GLOBAL_FEED, feed_options, open_feed};
use crate::envelope::{Envelope, RawPayload};
use crate::watch::{DirWaker, Notice};
use crate::{ChannelOptions, Consumer, Cursor, Error, FileChannel, Filter, Problem, Result};

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

impl std::fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
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
    /// Its position on the broadcast feed (what a durable subscription acknowledges).
    pub position: u64,
    /// The message.
    pub message: Message<T>,
}

/// The topic of a record on the feed, and its message with the payload undecoded.
pub(crate) fn feed_message(
    feed: &FileChannel,
    rec: crate::log::RawRecord,
) -> std::result::Result<TopicMessage<RawPayload>, Problem> {
    let env = match Envelope::decode(&rec.bytes) {
        Ok(env) => env,
        Err(e) => return Err(feed.undecodable(&rec, &e)),
    };
    let Some(topic) = env.topic.clone() else {
        return Err(Problem {
            path: feed.inner.log.segment_path(rec.segment),
            offset: Some(rec.offset),
            position: Some(rec.position),
            reason:
                "a message on the broadcast feed without a topic (not written by a broadcast); \
                     skipped"
                    .into(),
            quarantined: None,
        });
    };
    match env.into_message::<RawPayload>() {
        Ok(message) => Ok(TopicMessage {
            topic,
            position: rec.position,
            message,
        }),
        Err(e) => Err(feed.undecodable(&rec, &e)),
    }
}

/// A subscription to topics. It reads the broadcast feed ([`GLOBAL_FEED`]) from its cursor
/// and keeps the broadcasts whose topic matches: publishers never know who listens, every
/// broadcast is read from one place once, and a subscriber needs one watch for any number of
/// topics.
///
/// A durable subscription ([`Subscription::durable`]) keeps its feed cursor as a consumer of
/// the feed; [`Subscription::ack_through`] stores it (at-least-once delivery).
#[derive(Debug)]
pub struct Subscription {
    patterns: Vec<TopicPattern>,
    feed: FileChannel,
    cursor: Cursor,
    consumer: Option<Consumer>,
    pending: VecDeque<TopicMessage<RawPayload>>,
    notices: Vec<Notice>,
    /// The last "cursor ahead" reported (reported again only when it changes).
    reported_ahead: Option<crate::Ahead>,
    waker: Option<DirWaker>,
}

fn parse_patterns(patterns: &[&str]) -> Result<Vec<TopicPattern>> {
    patterns.iter().map(|p| TopicPattern::new(p)).collect()
}

impl Subscription {
    /// Subscribes to `patterns`, from the feed position after `cursor` (use
    /// [`Cursor::start`] for all history, [`FileChannel::end_cursor`] of the feed for "from
    /// now on").
    pub fn new(ws: &Workspace, patterns: &[&str], cursor: Cursor) -> Result<Self> {
        Self::new_with(ws, patterns, cursor, feed_options(ws))
    }

    /// [`Subscription::new`] with the feed handle's `options`.
    pub fn new_with(
        ws: &Workspace,
        patterns: &[&str],
        cursor: Cursor,
        options: ChannelOptions,
    ) -> Result<Self> {
        let patterns = parse_patterns(patterns)?;
        Ok(Self::build(patterns, open_feed(ws, options)?, cursor, None))
    }

    /// Subscribes to `patterns` from now on (messages published after this call).
    pub fn from_now(ws: &Workspace, patterns: &[&str]) -> Result<Self> {
        let patterns = parse_patterns(patterns)?;
        let feed = open_feed(ws, feed_options(ws))?;
        let end = feed.end_cursor()?;
        Ok(Self::build(patterns, feed, end, None))
    }

    /// A durable subscription named `consumer`: continues where the last acknowledged read of
    /// that name stopped (from the start of the feed the first time).
    pub fn durable(ws: &Workspace, patterns: &[&str], consumer: Name) -> Result<Self> {
        Self::durable_with(ws, patterns, consumer, feed_options(ws))
    }

    /// [`Subscription::durable`] with the feed handle's `options`.
    pub fn durable_with(
        ws: &Workspace,
        patterns: &[&str],
        consumer: Name,
        options: ChannelOptions,
    ) -> Result<Self> {
        let patterns = parse_patterns(patterns)?;
        let feed = open_feed(ws, options)?;
        let consumer = feed.consumer(consumer, Filter::Everything)?;
        let cursor = consumer.cursor();
        Ok(Self::build(patterns, feed, cursor, Some(consumer)))
    }

    fn build(
        patterns: Vec<TopicPattern>,
        feed: FileChannel,
        cursor: Cursor,
        consumer: Option<Consumer>,
    ) -> Self {
        Self {
            patterns,
            feed,
            cursor,
            consumer,
            pending: VecDeque::new(),
            notices: Vec::new(),
            reported_ahead: None,
            waker: None,
        }
    }

    /// The patterns.
    pub fn patterns(&self) -> &[TopicPattern] {
        &self.patterns
    }

    /// The feed cursor (past everything returned or buffered).
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Pruned gaps, skipped positions and damaged records met so far; drains them.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Stores the cursor of a durable subscription up to and including the feed position of
    /// a message returned earlier. No-op for a non-durable one.
    pub fn ack_through(&mut self, position: u64) -> Result<()> {
        if let Some(c) = self.consumer.as_mut() {
            c.ack(Cursor::after(position))?;
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
        m: TopicMessage<RawPayload>,
    ) -> Option<TopicMessage<T>> {
        match serde_json::from_str::<T>(m.message.payload.get()) {
            Ok(payload) => Some(TopicMessage {
                topic: m.topic,
                position: m.position,
                message: m.message.map(|_| payload),
            }),
            Err(e) => {
                self.notices.push(Notice::Problem(Problem {
                    path: self.feed.dir().to_path_buf(),
                    offset: None,
                    position: Some(m.position),
                    reason: format!(
                        "the payload of the message on topic {} does not decode as the \
                         requested type: {e}",
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
        let raw = self
            .feed
            .inner
            .log
            .read(self.cursor, self.feed.options().max_batch)?;
        let moved = raw.cursor.position != self.cursor.position;
        self.cursor = raw.cursor;
        if let Some(p) = raw.pruned {
            self.notices.push(Notice::Pruned(p));
        }
        self.notices.extend(raw.gaps.into_iter().map(Notice::Gap));
        if raw.ahead != self.reported_ahead {
            self.reported_ahead = raw.ahead;
            self.notices.extend(raw.ahead.map(Notice::Ahead));
        }
        self.notices
            .extend(raw.problems.into_iter().map(Notice::Problem));
        for rec in raw.records {
            match feed_message(&self.feed, rec) {
                Ok(m) if self.patterns.iter().any(|p| p.matches(&m.topic)) => {
                    self.pending.push_back(m);
                }
                Ok(_) => {}
                Err(p) => self.notices.push(Notice::Problem(p)),
            }
        }
        Ok(moved)
    }

    /// The next matching message, waiting as long as it takes (a directory watch on the feed
    /// plus a fallback timer, as [`crate::ChannelWatcher`]).
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<TopicMessage<T>> {
        if self.waker.is_none() {
            self.feed.ensure_dir()?;
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
            // subscription is unchanged and the next call reads the same records again.
            let mut snap =
                Subscription::build(self.patterns.clone(), self.feed.clone(), self.cursor, None);
            snap.reported_ahead = self.reported_ahead;
            let (snap, res) = crate::asyncify(GLOBAL_FEED, "subscribe", move || {
                let mut snap = snap;
                let r = snap.fill_blocking();
                Ok((snap, r))
            })
            .await?;
            if res.is_ok() {
                self.cursor = snap.cursor;
                self.pending.extend(snap.pending);
                self.notices.extend(snap.notices);
                self.reported_ahead = snap.reported_ahead;
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
