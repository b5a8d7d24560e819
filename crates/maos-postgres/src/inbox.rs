//! Agents' inboxes on PostgreSQL: [`maos_comm::InboxStore`] with the file backend's
//! semantics (`maos_comm::Inbox`'s module docs say what is addressed to agent `A`, role `R`).
//!
//! State (migration 2, `docs/protocol.md` section 10): `maos.inbox_subscriptions` (an
//! agent's topic patterns, each with `since`, the feed's newest position when it was stored:
//! a broadcast comes when its topic matches and its feed position is after `since`) and
//! `maos.inbox_cursors` (the acknowledged position per channel, the feed's under
//! `broadcast/global`). A read asks once for every channel's newest position next to the
//! agent's cursor there, then reads forward only where something is new: on an ordinary
//! channel the addressing is decided by the server over the stored `sender` and
//! `recipients` columns, at most `max` rows; on the feed, pages of notices are matched
//! against the patterns here and the matching broadcasts fetched from their topic channels in
//! one query per page. An undecodable message, or a broadcast whose message is gone, is a
//! [`Notice::Problem`]: reported, and passed by the cursor as the file backend does.
//! Acknowledging a batch is one transaction moving every cursor forward (`GREATEST`): two
//! processes of one agent never move a cursor back, and a reader killed before it committed
//! gets the same items again. Waiting uses the process's LISTEN connection (the channels'
//! notifications) as a hint, and a fallback timer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use maos_comm::{
    AgentInbox, InboxBatch, InboxItem, InboxStore, InboxWait, Notice, Problem, RawPayload,
    TopicPattern, Unread,
};
use maos_core::{AgentId, AgentRole, ChannelName, Message};

use crate::comm::{FeedNotice, GLOBAL_FEED, TOPIC_PREFIX, notify_channel, topic_channel};
use crate::conn::Exec;
use crate::registry::PgRegistry;
use crate::stores::core_error;
use crate::{Error, Pg, Result};

/// Feed notices read per query.
const FEED_PAGE: i64 = 1_000;

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The inboxes of a namespace.
#[derive(Debug, Clone)]
pub struct PgInboxes {
    pg: Pg,
}

impl PgInboxes {
    /// The inboxes of `pg`'s namespace.
    pub fn new(pg: &Pg) -> Self {
        Self { pg: pg.clone() }
    }
}

impl InboxStore for PgInboxes {
    fn open(&self, agent: AgentId) -> maos_comm::Result<Box<dyn AgentInbox>> {
        let label = format!("inbox {agent}");
        PgInbox::open(&self.pg, agent)
            .map(|i| Box::new(i) as Box<dyn AgentInbox>)
            .map_err(|e| comm_error(&label, e))
    }
}

fn comm_error(what: &str, e: Error) -> maos_comm::Error {
    maos_comm::Error::Core {
        channel: what.to_string(),
        source: core_error(e),
    }
}

/// One channel's newest position and the agent's acknowledged position there.
struct Head {
    channel: String,
    last: u64,
    oldest: u64,
    acked: u64,
}

/// One channel's unread items as read for a batch.
struct Pending {
    channel: String,
    /// Each item with the position before it.
    items: Vec<(InboxItem, u64)>,
    /// The position read through.
    end: u64,
    /// True when the read stopped at its bound (more may follow `end`).
    truncated: bool,
}

/// The inbox of one agent on the server.
#[derive(Debug)]
pub struct PgInbox {
    pg: Pg,
    agent: AgentId,
    role: Option<AgentRole>,
    /// The stored patterns (in the order they were stored) and their `since`.
    subs: Vec<(String, u64)>,
    names: Vec<String>,
}

impl PgInbox {
    /// The inbox of `agent` (its role from the agent registry).
    ///
    /// # Errors
    /// Server errors.
    pub fn open(pg: &Pg, agent: AgentId) -> Result<Self> {
        let role = PgRegistry::new(pg).get(&agent)?.and_then(|a| a.record.role);
        let mut inbox = Self {
            pg: pg.clone(),
            agent,
            role,
            subs: Vec::new(),
            names: Vec::new(),
        };
        inbox.load_subscriptions()?;
        Ok(inbox)
    }

    fn label(&self) -> String {
        format!("inbox {}", self.agent)
    }

    fn where_(&self) -> String {
        format!(
            "{} namespace {} (inbox of {})",
            self.pg.target(),
            self.pg.namespace(),
            self.agent
        )
    }

    fn set_subscriptions(&mut self, subs: Vec<(String, u64)>) {
        self.names = subs.iter().map(|(p, _)| p.clone()).collect();
        self.subs = subs;
    }

    fn load_subscriptions(&mut self) -> Result<()> {
        let ns = self.pg.inner.ns;
        let agent = self.agent.as_str();
        let subs = self.pg.run(|c| subscriptions(c, ns, agent))?;
        self.set_subscriptions(subs);
        Ok(())
    }

    /// The subscriptions, each channel's head and the agent's cursor there: what a read or a
    /// count starts from.
    fn heads(&mut self) -> Result<Vec<Head>> {
        let ns = self.pg.inner.ns;
        let agent = self.agent.as_str();
        let (subs, rows) = self.pg.run(|c| {
            let subs = subscriptions(c, ns, agent)?;
            let rows = c.query(
                "read the inbox's channels",
                "SELECT c.name, c.last, c.oldest, COALESCE(ic.position, 0)
                 FROM maos.channels c
                 LEFT JOIN maos.inbox_cursors ic
                     ON ic.ns = c.ns AND ic.agent = $2 AND ic.channel = c.name
                 WHERE c.ns = $1
                   AND (c.name = 'broadcast/global'
                        OR (c.name <> 'broadcast' AND c.name NOT LIKE 'broadcast/%'))
                 ORDER BY c.name",
                &[&ns, &agent],
            )?;
            Ok((subs, rows))
        })?;
        self.set_subscriptions(subs);
        let subscribed = !self.subs.is_empty();
        Ok(rows
            .into_iter()
            .map(|r| Head {
                channel: r.get(0),
                last: u(r.get(1)),
                oldest: u(r.get(2)),
                acked: u(r.get(3)),
            })
            .filter(|h| h.channel != GLOBAL_FEED || subscribed)
            .collect())
    }

    fn patterns(&self) -> Vec<(TopicPattern, u64)> {
        self.subs
            .iter()
            .filter_map(|(p, since)| TopicPattern::new(p).ok().map(|t| (t, *since)))
            .collect()
    }

    fn problem(&self, channel: &str, position: u64, reason: String) -> Notice {
        Notice::Problem(Problem {
            path: format!(
                "{} namespace {} channel {channel}",
                self.pg.target(),
                self.pg.namespace()
            )
            .into(),
            offset: None,
            position: Some(position),
            reason,
            quarantined: None,
        })
    }

    /// Reads one ordinary channel's items after the cursor (at most `max`).
    fn pending(
        &self,
        h: &Head,
        max: usize,
        notices: &mut Vec<(ChannelName, Notice)>,
    ) -> Result<Pending> {
        let ns = self.pg.inner.ns;
        let agent = self.agent.as_str();
        let direct = format!("direct/{}", self.agent);
        let role = self.role.as_ref().map(ToString::to_string);
        let (chan, after, last) = (h.channel.as_str(), i(h.acked), i(h.last));
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self.pg.run(|c| {
            c.query(
                "read an inbox channel",
                "SELECT pos, body FROM maos.messages
                 WHERE ns = $1 AND channel = $2 AND pos > $3 AND pos <= $4 AND sender <> $5
                   AND CASE recipients->>'kind'
                         WHEN 'all' THEN NOT (channel LIKE 'direct/%' AND channel <> $6)
                         WHEN 'agent' THEN recipients->>'value' = $5
                         WHEN 'group' THEN recipients->'value' ? $5
                         WHEN 'role' THEN recipients->>'value' = $7
                         ELSE true END
                 ORDER BY pos LIMIT $8",
                &[&ns, &chan, &after, &last, &agent, &direct, &role, &limit],
            )
        })?;
        let name = channel_name(chan)?;
        let full = rows.len() >= max;
        let mut p = Pending {
            channel: h.channel.clone(),
            items: Vec::with_capacity(rows.len()),
            end: h.last,
            truncated: full,
        };
        let mut prev = h.acked;
        for row in rows {
            let pos = u(row.get(0));
            let body: String = row.get(1);
            match serde_json::from_str::<Message<RawPayload>>(&body) {
                Ok(message) => p.items.push((
                    InboxItem {
                        channel: name.clone(),
                        position: pos,
                        topic: None,
                        message,
                    },
                    prev,
                )),
                Err(e) => notices.push((
                    name.clone(),
                    self.problem(
                        chan,
                        pos,
                        format!("the message does not decode ({e}); skipped"),
                    ),
                )),
            }
            prev = pos;
            if full {
                p.end = pos;
            }
        }
        Ok(p)
    }

    /// Reads the feed's matching broadcasts after the cursor (at most `max`).
    fn pending_feed(
        &self,
        h: &Head,
        max: usize,
        notices: &mut Vec<(ChannelName, Notice)>,
    ) -> Result<Pending> {
        let ns = self.pg.inner.ns;
        let patterns = self.patterns();
        let feed = channel_name(GLOBAL_FEED)?;
        let mut p = Pending {
            channel: GLOBAL_FEED.to_string(),
            items: Vec::new(),
            end: h.acked,
            truncated: false,
        };
        let mut prev = h.acked;
        loop {
            let (after, last) = (i(p.end), i(h.last));
            let rows = self.pg.run(|c| {
                c.query(
                    "read the broadcast feed",
                    "SELECT pos, sender, body FROM maos.messages
                     WHERE ns = $1 AND channel = 'broadcast/global' AND pos > $2 AND pos <= $3
                     ORDER BY pos LIMIT $4",
                    &[&ns, &after, &last, &FEED_PAGE],
                )
            })?;
            let page_full = rows.len() as i64 >= FEED_PAGE;
            // The matching notices of this page, then their messages in one query.
            let mut wanted: Vec<(u64, FeedNotice)> = Vec::new();
            let mut end = h.last;
            for row in &rows {
                let pos = u(row.get(0));
                end = pos;
                let sender: String = row.get(1);
                if sender == self.agent.as_str() {
                    continue;
                }
                let body: String = row.get(2);
                let notice = match serde_json::from_str::<Message<FeedNotice>>(&body) {
                    Ok(m) => m.payload,
                    Err(e) => {
                        notices.push((
                            feed.clone(),
                            self.problem(
                                GLOBAL_FEED,
                                pos,
                                format!("the feed entry does not decode ({e}); skipped"),
                            ),
                        ));
                        continue;
                    }
                };
                if patterns
                    .iter()
                    .any(|(pat, since)| pos > *since && pat.matches(&notice.topic))
                {
                    wanted.push((pos, notice));
                }
            }
            if !page_full {
                end = h.last;
            }
            let bodies = self.topic_messages(&wanted)?;
            for (pos, n) in wanted {
                let channel = topic_channel(&n.topic).map(|c| c.to_string());
                let got = channel
                    .as_ref()
                    .ok()
                    .and_then(|c| bodies.get(&(c.clone(), n.position)));
                let item = match (channel, got) {
                    (Ok(c), Some(body)) => {
                        match serde_json::from_str::<Message<RawPayload>>(body) {
                            Ok(m) if m.id == n.id => Ok(InboxItem {
                                channel: channel_name(&c)?,
                                position: pos,
                                topic: Some(n.topic.clone()),
                                message: m,
                            }),
                            Ok(m) => Err(format!(
                                "the broadcast on topic {} is message {} at {c}#{}, which holds {} \
                             instead; skipped",
                                n.topic, n.id, n.position, m.id
                            )),
                            Err(e) => Err(format!(
                                "the broadcast on topic {} ({c}#{}) does not decode ({e}); skipped",
                                n.topic, n.position
                            )),
                        }
                    }
                    (Ok(c), None) => Err(format!(
                        "the broadcast on topic {} ({c}#{}) is gone (pruned); skipped",
                        n.topic, n.position
                    )),
                    (Err(e), _) => Err(format!(
                        "the feed entry names topic {:?}, which is not a topic ({e}); skipped",
                        n.topic
                    )),
                };
                match item {
                    Ok(it) => {
                        p.items.push((it, prev));
                        if p.items.len() >= max {
                            p.end = pos;
                            p.truncated = true;
                            return Ok(p);
                        }
                    }
                    Err(reason) => {
                        notices.push((feed.clone(), self.problem(GLOBAL_FEED, pos, reason)))
                    }
                }
                prev = pos;
            }
            p.end = end;
            // Items before `prev` were taken; the rest of the page had nothing for us.
            if !page_full {
                return Ok(p);
            }
        }
    }

    /// The bodies of broadcasts named by feed notices, by (topic channel, position).
    fn topic_messages(
        &self,
        wanted: &[(u64, FeedNotice)],
    ) -> Result<BTreeMap<(String, u64), String>> {
        if wanted.is_empty() {
            return Ok(BTreeMap::new());
        }
        let ns = self.pg.inner.ns;
        let chans: Vec<String> = wanted
            .iter()
            .map(|(_, n)| format!("{TOPIC_PREFIX}{}", n.topic))
            .collect();
        let poss: Vec<i64> = wanted.iter().map(|(_, n)| i(n.position)).collect();
        let rows = self.pg.run(|c| {
            c.query(
                "read broadcasts",
                "SELECT m.channel, m.pos, m.body FROM maos.messages m
                 JOIN unnest($2::text[], $3::bigint[]) AS w(channel, pos)
                     ON m.channel = w.channel AND m.pos = w.pos
                 WHERE m.ns = $1",
                &[&ns, &chans, &poss],
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|r| ((r.get::<_, String>(0), u(r.get(1))), r.get(2)))
            .collect())
    }

    /// The unread items, at most `max` (oldest first by their senders' clocks; each
    /// channel's items in channel order); nothing is acknowledged.
    ///
    /// # Errors
    /// Server errors.
    pub fn read_batch(&mut self, max: usize) -> Result<InboxBatch> {
        let max = max.max(1);
        let mut notices = Vec::new();
        let mut pending = Vec::new();
        let mut acked = BTreeMap::new();
        for h in self.heads()? {
            acked.insert(h.channel.clone(), h.acked);
            if h.oldest > h.acked + 1 && h.last > h.acked {
                notices.push((
                    channel_name(&h.channel)?,
                    Notice::Pruned(maos_comm::Pruned {
                        from: h.acked + 1,
                        to: (h.oldest - 1).min(h.last),
                    }),
                ));
            }
            if h.last <= h.acked {
                continue;
            }
            let p = if h.channel == GLOBAL_FEED {
                self.pending_feed(&h, max, &mut notices)?
            } else {
                self.pending(&h, max, &mut notices)?
            };
            pending.push(p);
        }
        Ok(merge(pending, notices, max, &acked))
    }

    /// Acknowledges a batch: one transaction moving each channel's cursor forward.
    ///
    /// # Errors
    /// Server errors (nothing is acknowledged then).
    pub fn ack_batch(&mut self, batch: &InboxBatch) -> Result<()> {
        let ns = self.pg.inner.ns;
        let agent = self.agent.as_str();
        let advance: Vec<(String, i64)> = batch
            .advances()
            .map(|(c, p)| (c.to_string(), i(p)))
            .collect();
        if advance.is_empty() {
            return Ok(());
        }
        self.pg.run(|c| {
            c.tx("acknowledge inbox items", |t| {
                for (chan, pos) in &advance {
                    t.exec(
                        "store an inbox cursor",
                        "INSERT INTO maos.inbox_cursors (ns, agent, channel, position)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (ns, agent, channel) DO UPDATE
                             SET position = GREATEST(maos.inbox_cursors.position, EXCLUDED.position),
                                 updated_at = clock_timestamp()",
                        &[&ns, &agent, chan, pos],
                    )?;
                }
                Ok(())
            })
        })
    }

    /// Stores topic subscriptions from now on; returns the new ones.
    ///
    /// # Errors
    /// An invalid pattern; server errors.
    pub fn subscribe_patterns(&mut self, patterns: &[&str]) -> Result<Vec<String>> {
        let ns = self.pg.inner.ns;
        let agent = self.agent.as_str();
        let (added, subs) = self.pg.run(|c| {
            c.tx("subscribe", |t| {
                let had: i64 = t
                    .one(
                        "count subscriptions",
                        "SELECT count(*) FROM maos.inbox_subscriptions WHERE ns = $1 AND agent = $2",
                        &[&ns, &agent],
                    )?
                    .get(0);
                let last: i64 = t
                    .opt(
                        "read the feed's end",
                        "SELECT last FROM maos.channels WHERE ns = $1 AND name = 'broadcast/global'",
                        &[&ns],
                    )?
                    .map_or(0, |r| r.get(0));
                let mut added = Vec::new();
                for p in patterns {
                    let n = t.exec(
                        "store a subscription",
                        "INSERT INTO maos.inbox_subscriptions (ns, agent, pattern, since)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[&ns, &agent, p, &last],
                    )?;
                    if n > 0 {
                        added.push((*p).to_string());
                    }
                }
                // The first subscription starts the feed cursor at the feed's end: nothing
                // published before it can match, so no read goes over it.
                if had == 0 {
                    t.exec(
                        "start the feed cursor",
                        "INSERT INTO maos.inbox_cursors (ns, agent, channel, position)
                         VALUES ($1, $2, 'broadcast/global', $3)
                         ON CONFLICT (ns, agent, channel) DO UPDATE
                             SET position = GREATEST(maos.inbox_cursors.position, EXCLUDED.position),
                                 updated_at = clock_timestamp()",
                        &[&ns, &agent, &last],
                    )?;
                }
                Ok((added, subscriptions(t, ns, agent)?))
            })
        })?;
        self.set_subscriptions(subs);
        Ok(added)
    }

    /// Removes stored subscriptions; returns those that were there.
    ///
    /// # Errors
    /// Server errors.
    pub fn unsubscribe_patterns(&mut self, patterns: &[&str]) -> Result<Vec<String>> {
        let ns = self.pg.inner.ns;
        let agent = self.agent.as_str();
        let list: Vec<String> = patterns.iter().map(|p| (*p).to_string()).collect();
        let (removed, subs) = self.pg.run(|c| {
            c.tx("unsubscribe", |t| {
                let before = subscriptions(t, ns, agent)?;
                t.exec(
                    "remove subscriptions",
                    "DELETE FROM maos.inbox_subscriptions
                     WHERE ns = $1 AND agent = $2 AND pattern = ANY($3)",
                    &[&ns, &agent, &list],
                )?;
                let removed: Vec<String> = before
                    .into_iter()
                    .map(|(p, _)| p)
                    .filter(|p| list.contains(p))
                    .collect();
                Ok((removed, subscriptions(t, ns, agent)?))
            })
        })?;
        self.set_subscriptions(subs);
        Ok(removed)
    }

    /// How many items are unread, per channel: counted by the server on ordinary channels,
    /// over the topics of the feed's new entries here.
    ///
    /// # Errors
    /// Server errors.
    pub fn count_unread(&mut self) -> Result<Unread> {
        let heads = self.heads()?;
        let ns = self.pg.inner.ns;
        let agent = self.agent.as_str();
        let direct = format!("direct/{}", self.agent);
        let role = self.role.as_ref().map(ToString::to_string);
        let mut out = Unread::default();
        let mut add = |channel: &str, n: u64| {
            if n > 0 {
                out.channels.insert(channel.to_string(), n);
                out.total += n;
            }
        };
        let new: Vec<&Head> = heads.iter().filter(|h| h.last > h.acked).collect();
        let chans: Vec<&str> = new
            .iter()
            .filter(|h| h.channel != GLOBAL_FEED)
            .map(|h| h.channel.as_str())
            .collect();
        let afters: Vec<i64> = new
            .iter()
            .filter(|h| h.channel != GLOBAL_FEED)
            .map(|h| i(h.acked))
            .collect();
        if !chans.is_empty() {
            let rows = self.pg.run(|c| {
                c.query(
                    "count unread messages",
                    "SELECT w.channel, (SELECT count(*) FROM maos.messages m
                         WHERE m.ns = $1 AND m.channel = w.channel AND m.pos > w.after
                           AND m.sender <> $4
                           AND CASE m.recipients->>'kind'
                                 WHEN 'all' THEN NOT (m.channel LIKE 'direct/%' AND m.channel <> $5)
                                 WHEN 'agent' THEN m.recipients->>'value' = $4
                                 WHEN 'group' THEN m.recipients->'value' ? $4
                                 WHEN 'role' THEN m.recipients->>'value' = $6
                                 ELSE true END)
                     FROM unnest($2::text[], $3::bigint[]) AS w(channel, after)",
                    &[&ns, &chans, &afters, &agent, &direct, &role],
                )
            })?;
            for r in rows {
                add(r.get::<_, &str>(0), u(r.get(1)));
            }
        }
        if let Some(h) = new.iter().find(|h| h.channel == GLOBAL_FEED) {
            let patterns = self.patterns();
            let mut after = i(h.acked);
            let last = i(h.last);
            let mut n = 0u64;
            loop {
                let rows = self.pg.run(|c| {
                    c.query(
                        "count unread broadcasts",
                        "SELECT pos, (body::jsonb)->'payload'->>'topic' FROM maos.messages
                         WHERE ns = $1 AND channel = 'broadcast/global' AND pos > $2 AND pos <= $3
                           AND sender <> $4
                         ORDER BY pos LIMIT $5",
                        &[&ns, &after, &last, &agent, &FEED_PAGE],
                    )
                })?;
                for r in &rows {
                    let pos = u(r.get(0));
                    let topic: Option<String> = r.get(1);
                    if topic.is_some_and(|t| {
                        patterns
                            .iter()
                            .any(|(p, since)| pos > *since && p.matches(&t))
                    }) {
                        n += 1;
                    }
                }
                match rows.last() {
                    Some(r) if rows.len() as i64 >= FEED_PAGE => after = r.get(0),
                    _ => break,
                }
            }
            add(GLOBAL_FEED, n);
        }
        Ok(out)
    }
}

fn channel_name(s: &str) -> Result<ChannelName> {
    Ok(ChannelName::new(s)?)
}

/// The stored patterns of `agent` with their `since`, in the order they were stored.
fn subscriptions(c: &mut impl Exec, ns: i64, agent: &str) -> Result<Vec<(String, u64)>> {
    Ok(c.query(
        "read subscriptions",
        "SELECT pattern, since FROM maos.inbox_subscriptions WHERE ns = $1 AND agent = $2
         ORDER BY created_at, pattern",
        &[&ns, &agent],
    )?
    .into_iter()
    .map(|r| (r.get(0), u(r.get(1))))
    .collect())
}

/// Merges the channels' items by the timestamp of each one's next item (as the file
/// backend's inbox does), at most `max`, and says where each channel's cursor goes.
fn merge(
    pending: Vec<Pending>,
    notices: Vec<(ChannelName, Notice)>,
    max: usize,
    acked: &BTreeMap<String, u64>,
) -> InboxBatch {
    let mut taken = vec![0usize; pending.len()];
    let mut items = Vec::new();
    while items.len() < max {
        let next = pending
            .iter()
            .enumerate()
            .filter(|(i, p)| taken[*i] < p.items.len())
            .min_by_key(|(i, p)| {
                let it = &p.items[taken[*i]].0;
                (it.message.timestamp, p.channel.clone(), it.position)
            })
            .map(|(i, _)| i);
        let Some(i) = next else { break };
        items.push(pending[i].items[taken[i]].0.clone());
        taken[i] += 1;
    }
    let mut more = false;
    let mut advance = BTreeMap::new();
    for (i, p) in pending.iter().enumerate() {
        let to = if taken[i] == p.items.len() {
            p.end
        } else {
            more = true;
            p.items[taken[i]].1
        };
        if to > acked.get(&p.channel).copied().unwrap_or(0) {
            advance.insert(p.channel.clone(), to);
        }
        more |= p.truncated;
    }
    InboxBatch::from_parts(items, notices, more, advance)
}

impl AgentInbox for PgInbox {
    fn agent(&self) -> &AgentId {
        &self.agent
    }

    fn subscriptions(&self) -> &[String] {
        &self.names
    }

    fn subscribe(&mut self, patterns: &[&str]) -> maos_comm::Result<Vec<String>> {
        for p in patterns {
            TopicPattern::new(p)?;
        }
        self.subscribe_patterns(patterns)
            .map_err(|e| comm_error(&self.label(), e))
    }

    fn unsubscribe(&mut self, patterns: &[&str]) -> maos_comm::Result<Vec<String>> {
        self.unsubscribe_patterns(patterns)
            .map_err(|e| comm_error(&self.label(), e))
    }

    fn read(&mut self, max: usize) -> maos_comm::Result<InboxBatch> {
        self.read_batch(max)
            .map_err(|e| comm_error(&self.label(), e))
    }

    fn ack(&mut self, batch: &InboxBatch) -> maos_comm::Result<()> {
        self.ack_batch(batch)
            .map_err(|e| comm_error(&self.label(), e))
    }

    fn unread(&mut self) -> maos_comm::Result<Unread> {
        self.count_unread()
            .map_err(|e| comm_error(&self.label(), e))
    }

    fn watcher(&self) -> maos_comm::Result<Box<dyn InboxWait>> {
        let hub = self.pg.hub().map_err(|e| comm_error(&self.where_(), e))?;
        let seen = AtomicU64::new(hub.seen());
        Ok(Box::new(PgInboxWait {
            hub,
            seen,
            channel: notify_channel(self.pg.inner.ns),
            fallback: self.pg.inner.options.channel_fallback,
        }))
    }
}

/// Wakes an inbox reader on any channel notification of the namespace (every send and
/// broadcast notifies), or its fallback interval.
struct PgInboxWait {
    hub: Arc<crate::hub::Hub>,
    seen: AtomicU64,
    channel: String,
    fallback: Duration,
}

impl InboxWait for PgInboxWait {
    fn wait(&self, timeout: Duration) {
        let seen = self.seen.load(Ordering::SeqCst);
        self.hub
            .wait(seen, timeout.min(self.fallback), |ch, _| ch == self.channel);
        // The read that follows this wait sees everything notified up to here.
        self.seen.store(self.hub.seen(), Ordering::SeqCst);
    }
}

/// `maos channels prune` on the server ([`maos_comm::ChannelStore::prune`]): an existing
/// channel, its old messages removed by [`crate::comm::PgChannel::prune_by`]. The report's
/// `segments_removed` counts messages (each message is its own unit on the server).
pub(crate) fn prune(
    pg: &Pg,
    channel: &ChannelName,
    retention: maos_comm::Retention,
) -> maos_comm::Result<maos_comm::PruneReport> {
    use crate::comm::{PgChannel, Prune};
    let name = channel.as_str();
    if name.starts_with(TOPIC_PREFIX) && name != GLOBAL_FEED || name == "broadcast" {
        return Err(maos_comm::Error::Reserved {
            channel: name.to_string(),
            reason: format!("topics are views of the broadcast feed; prune {GLOBAL_FEED} instead"),
        });
    }
    let how = match retention {
        maos_comm::Retention::Keep(n) => Prune::Keep(n),
        maos_comm::Retention::OlderThan(d) => Prune::OlderThan(d),
        other => {
            return Err(comm_error(
                name,
                Error::Invalid {
                    what: "retention",
                    reason: format!(
                        "{other:?} is not offered on the server (use Keep or OlderThan)"
                    ),
                },
            ));
        }
    };
    let known = crate::comm::list_channels(pg).map_err(|e| comm_error(name, e))?;
    if !known.contains(channel) {
        return Err(maos_comm::Error::NoSuchChannel {
            channel: name.to_string(),
            path: format!("{} namespace {}", pg.target(), pg.namespace()).into(),
        });
    }
    let o = PgChannel::open(pg, channel.clone())
        .prune_by(how)
        .map_err(|e| comm_error(name, e))?;
    Ok(maos_comm::PruneReport {
        segments_removed: usize::try_from(o.removed).unwrap_or(usize::MAX),
        pruned_through: o.pruned_through,
        oldest: o.oldest,
        newest: o.newest,
    })
}

/// The same test bodies on both backends: the file backend's stores on a fresh workspace and
/// this crate's on the test server, each in a namespace of its own.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use maos_comm::{ChannelStore, FileComm, FileInboxes};
    use maos_core::{AgentStore, FileAgents, Name, Recipients, Registration, Workspace};

    use super::*;
    use crate::server::test_backend;
    use crate::stores::{PgAgents, PgComm};

    struct Backend {
        name: &'static str,
        chan: Box<dyn ChannelStore>,
        inboxes: Box<dyn InboxStore>,
        agents: Box<dyn AgentStore>,
        pg: Option<Pg>,
        _dir: Option<tempfile::TempDir>,
    }

    fn both(prefix: &str) -> Vec<Backend> {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::init(dir.path()).unwrap();
        let pg = test_backend(prefix).unwrap();
        vec![
            Backend {
                name: "file",
                chan: Box::new(FileComm::new(&ws)),
                inboxes: Box::new(FileInboxes::new(&ws)),
                agents: Box::new(FileAgents::new(&ws)),
                pg: None,
                _dir: Some(dir),
            },
            Backend {
                name: "postgresql",
                chan: Box::new(PgComm::new(&pg)),
                inboxes: Box::new(PgInboxes::new(&pg)),
                agents: Box::new(PgAgents::new(&pg)),
                pg: Some(pg),
                _dir: None,
            },
        ]
    }

    fn a(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    fn raw(text: &str) -> RawPayload {
        serde_json::value::to_raw_value(text).unwrap()
    }

    const WAIT: Duration = Duration::from_secs(10);

    fn send(b: &Backend, ch: &str, from: &str, to: Recipients, text: &str) -> u64 {
        b.chan
            .send(
                &ChannelName::new(ch).unwrap(),
                &Message::new(a(from), to, raw(text)),
                WAIT,
            )
            .unwrap()
            .position
    }

    fn broadcast(b: &Backend, from: &str, topic: &str, text: &str) {
        b.chan.broadcast(&a(from), topic, &raw(text), WAIT).unwrap();
    }

    fn texts(batch: &InboxBatch) -> Vec<String> {
        batch
            .items
            .iter()
            .map(|i| serde_json::from_str::<String>(i.message.payload.get()).unwrap())
            .collect()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn an_inbox_gathers_what_is_addressed_to_the_agent_on_both_backends() {
        for b in both("inbox-addr") {
            let n = b.name;
            b.agents
                .register(Registration::new(a("b1")).role(AgentRole::backend()))
                .unwrap();
            send(&b, "direct/b1", "f1", Recipients::All, "direct to me");
            send(&b, "direct/b2", "f1", Recipients::All, "b2's");
            send(
                &b,
                "direct/b2",
                "f1",
                Recipients::Agent(a("b1")),
                "cc me on b2's",
            );
            send(
                &b,
                "api",
                "f1",
                Recipients::Role(AgentRole::backend()),
                "to my role",
            );
            send(
                &b,
                "api",
                "f1",
                Recipients::Role(AgentRole::frontend()),
                "to frontend",
            );
            send(
                &b,
                "api",
                "f1",
                Recipients::Group(vec![a("x"), a("b1")]),
                "to my group",
            );
            send(&b, "api", "b1", Recipients::All, "my own");
            send(&b, "team/chat", "f2", Recipients::All, "to all");
            let mut inbox = b.inboxes.open(a("b1")).unwrap();
            let unread = inbox.unread().unwrap();
            assert_eq!(unread.total, 5, "{n}: {unread:?}");
            assert_eq!(unread.channels.get("api"), Some(&2), "{n}");
            let batch = inbox.read(100).unwrap();
            assert_eq!(
                sorted(texts(&batch)),
                [
                    "cc me on b2's",
                    "direct to me",
                    "to all",
                    "to my group",
                    "to my role"
                ],
                "{n}"
            );
            assert!(!batch.more, "{n}");
            // Not acknowledged: the same items again.
            assert_eq!(texts(&inbox.read(100).unwrap()), texts(&batch), "{n}");
            inbox.ack(&batch).unwrap();
            assert_eq!(inbox.unread().unwrap().total, 0, "{n}");
            // A new handle (another process) agrees: delivered once.
            let mut again = b.inboxes.open(a("b1")).unwrap();
            assert!(again.read(100).unwrap().items.is_empty(), "{n}");
            send(&b, "api", "f1", Recipients::Agent(a("b1")), "later");
            assert_eq!(again.unread().unwrap().channels.get("api"), Some(&1), "{n}");
            assert_eq!(texts(&again.read(100).unwrap()), ["later"], "{n}");
            // Another agent's inbox is its own: `all` on b2's direct channel is b2's.
            let mut b2 = b.inboxes.open(a("b2")).unwrap();
            assert_eq!(
                sorted(texts(&b2.read(100).unwrap())),
                ["b2's", "my own", "to all"],
                "{n}"
            );
        }
    }

    #[test]
    fn stored_subscriptions_bring_matching_broadcasts_from_then_on_on_both_backends() {
        for b in both("inbox-subs") {
            let n = b.name;
            broadcast(&b, "ci", "build/done", "before");
            let mut inbox = b.inboxes.open(a("b1")).unwrap();
            assert_eq!(inbox.subscribe(&["build/*"]).unwrap(), ["build/*"], "{n}");
            assert!(inbox.subscribe(&["build/*"]).unwrap().is_empty(), "{n}");
            let err = inbox.subscribe(&["bad//pattern"]).unwrap_err();
            assert!(
                matches!(err, maos_comm::Error::InvalidTopic { .. }),
                "{n}: {err}"
            );
            broadcast(&b, "ci", "build/done", "after");
            broadcast(&b, "ci", "test/ran", "other topic");
            broadcast(&b, "b1", "build/x", "mine");
            let mut reopened = b.inboxes.open(a("b1")).unwrap();
            assert_eq!(reopened.subscriptions(), ["build/*"], "{n}");
            assert_eq!(reopened.unread().unwrap().total, 1, "{n}");
            let batch = reopened.read(10).unwrap();
            assert_eq!(texts(&batch), ["after"], "{n}");
            assert_eq!(batch.items[0].topic.as_deref(), Some("build/done"), "{n}");
            assert_eq!(
                batch.items[0].channel.as_str(),
                "broadcast/build/done",
                "{n}"
            );
            reopened.ack(&batch).unwrap();
            assert_eq!(
                reopened.unsubscribe(&["build/*", "nope"]).unwrap(),
                ["build/*"],
                "{n}"
            );
            assert!(reopened.subscriptions().is_empty(), "{n}");
            broadcast(&b, "ci", "build/done", "unsubscribed");
            assert_eq!(reopened.unread().unwrap().total, 0, "{n}");
            assert!(reopened.read(10).unwrap().items.is_empty(), "{n}");
        }
    }

    #[test]
    fn bounded_reads_deliver_everything_once_in_each_channels_order_on_both_backends() {
        for b in both("inbox-bounded") {
            let n = b.name;
            for i in 0..30 {
                let ch = ["c1", "c2", "direct/me"][i % 3];
                send(&b, ch, "s", Recipients::All, &format!("{ch} {i}"));
            }
            let mut inbox = b.inboxes.open(a("me")).unwrap();
            let mut seen = Vec::new();
            loop {
                let batch = inbox.read(4).unwrap();
                assert!(batch.items.len() <= 4, "{n}");
                if batch.items.is_empty() {
                    assert!(!batch.more, "{n}");
                    break;
                }
                seen.extend(texts(&batch));
                assert_eq!(texts(&inbox.read(4).unwrap()), texts(&batch), "{n}");
                inbox.ack(&batch).unwrap();
            }
            assert_eq!(seen.len(), 30, "{n}: {seen:?}");
            for ch in ["c1", "c2", "direct/me"] {
                let mine: Vec<usize> = seen
                    .iter()
                    .filter(|t| t.starts_with(&format!("{ch} ")))
                    .map(|t| t.rsplit(' ').next().unwrap().parse().unwrap())
                    .collect();
                assert_eq!(mine.len(), 10, "{n}");
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "{n} {ch}: {mine:?}");
            }
        }
    }

    #[test]
    fn two_handles_acknowledging_never_move_a_cursor_back_on_both_backends() {
        for b in both("inbox-twohandles") {
            let n = b.name;
            for i in 0..6 {
                send(&b, "c", "s", Recipients::All, &i.to_string());
            }
            let mut one = b.inboxes.open(a("me")).unwrap();
            let mut two = b.inboxes.open(a("me")).unwrap();
            let small = one.read(2).unwrap();
            let all = two.read(100).unwrap();
            two.ack(&all).unwrap();
            one.ack(&small).unwrap();
            let fresh = b.inboxes.open(a("me")).unwrap().read(100).unwrap();
            assert!(fresh.items.is_empty(), "{n}: {:?}", texts(&fresh));
            // Subscriptions made by one handle survive the other's acknowledgement.
            one.subscribe(&["x/**"]).unwrap();
            send(&b, "c", "s", Recipients::All, "7");
            let batch = two.read(100).unwrap();
            two.ack(&batch).unwrap();
            assert_eq!(
                b.inboxes.open(a("me")).unwrap().subscriptions(),
                ["x/**"],
                "{n}"
            );
        }
    }

    /// Pruned history is reported, never silently passed; the items after it come.
    #[test]
    fn pruned_history_is_reported_to_the_inbox_on_both_backends() {
        for b in both("inbox-pruned") {
            let n = b.name;
            for i in 0..5 {
                send(&b, "log", "s", Recipients::All, &i.to_string());
            }
            let ch = ChannelName::new("log").unwrap();
            b.chan.prune(&ch, maos_comm::Retention::Keep(0)).unwrap();
            send(&b, "log", "s", Recipients::All, "after");
            let mut inbox = b.inboxes.open(a("me")).unwrap();
            let batch = inbox.read(100).unwrap();
            assert_eq!(texts(&batch), ["after"], "{n}");
            assert!(
                batch.notices.iter().any(|(c, no)| c.as_str() == "log"
                    && matches!(no, Notice::Pruned(p) if p.from == 1 && p.to == 5)),
                "{n}: {:?}",
                batch.notices
            );
            inbox.ack(&batch).unwrap();
            assert!(inbox.read(100).unwrap().is_empty(), "{n}");
            // Consumers do not hold pruning back, on either backend.
            let mut r = b
                .chan
                .reader(
                    &ch,
                    maos_comm::Start::Consumer(Name::new("c").unwrap()),
                    maos_comm::Filter::Everything,
                    false,
                )
                .unwrap();
            r.read().unwrap();
            let rep = b.chan.prune(&ch, maos_comm::Retention::Keep(0)).unwrap();
            assert_eq!(rep.pruned_through, 6, "{n}: {rep:?}");
        }
    }

    /// A broadcast comes for a pattern only if it was published after that pattern was
    /// stored (each pattern keeps the feed position of its subscription).
    #[test]
    fn each_pattern_starts_from_its_own_subscription() {
        let pg = test_backend("inbox-since").unwrap();
        let chan = PgComm::new(&pg);
        let bc = |topic: &str, text: &str| {
            chan.broadcast(&a("ci"), topic, &raw(text), WAIT).unwrap();
        };
        let mut inbox = PgInbox::open(&pg, a("me")).unwrap();
        inbox.subscribe_patterns(&["a/*"]).unwrap();
        bc("a/1", "a1");
        bc("b/0", "before b was subscribed");
        inbox.subscribe_patterns(&["b/*"]).unwrap();
        bc("b/1", "b1");
        let batch = inbox.read_batch(100).unwrap();
        assert_eq!(texts(&batch), ["a1", "b1"]);
        assert_eq!(inbox.count_unread().unwrap().total, 2);
    }

    /// A message that does not decode is reported naming its position, and passed: the
    /// messages around it come, once, in a new process too.
    #[test]
    fn an_undecodable_message_is_reported_and_passed() {
        let pg = test_backend("inbox-bad").unwrap();
        let b = Backend {
            name: "postgresql",
            chan: Box::new(PgComm::new(&pg)),
            inboxes: Box::new(PgInboxes::new(&pg)),
            agents: Box::new(PgAgents::new(&pg)),
            pg: Some(pg.clone()),
            _dir: None,
        };
        send(&b, "ch", "s", Recipients::All, "first");
        send(&b, "ch", "s", Recipients::All, "to be damaged");
        send(&b, "ch", "s", Recipients::All, "third");
        let ns = pg.inner.ns;
        pg.run(|c| {
            c.exec(
                "damage",
                "UPDATE maos.messages SET body = '{\"not\":\"a maos message\"}'
                 WHERE ns = $1 AND channel = 'ch' AND pos = 2",
                &[&ns],
            )
        })
        .unwrap();
        let mut inbox = b.inboxes.open(a("me")).unwrap();
        let batch = inbox.read(100).unwrap();
        assert_eq!(texts(&batch), ["first", "third"]);
        let problem = batch
            .notices
            .iter()
            .find_map(|(c, n)| match n {
                Notice::Problem(p) if c.as_str() == "ch" => Some(p),
                _ => None,
            })
            .expect("the damaged message is reported");
        assert_eq!(problem.position, Some(2));
        assert!(problem.to_string().contains("channel ch"), "{problem}");
        inbox.ack(&batch).unwrap();
        let url = crate::BackendUrl::parse(&crate::server::shared_url().unwrap()).unwrap();
        let other = crate::Pg::connect(&url, pg.namespace()).unwrap();
        let mut later = PgInboxes::new(&other).open(a("me")).unwrap();
        assert!(later.read(100).unwrap().is_empty());
        let _ = (b.name, &b.agents, &b.pg);
    }
}
