//! Channels on PostgreSQL: one total order per channel with no gaps ever visible, durable
//! consumers, recipients, broadcast with the global feed, and LISTEN/NOTIFY wake-ups.
//!
//! Sending is one transaction: `UPDATE maos.channels SET last = last + n` (its row lock
//! serialises senders of the channel until they commit, so positions commit in order and a
//! reader can never see position N+1 before N), the rows into `maos.messages`, and
//! `pg_notify('maos_c<ns>', <channel>)`, delivered at commit. A message is acknowledged
//! once its transaction committed (the write-ahead log is flushed: it survives a crash of
//! the server). Reading is `SELECT ... WHERE pos > cursor ORDER BY pos`; notifications are
//! hints only: a watcher reads forward from its cursor on each one and on a fallback timer.

use std::time::{Duration, Instant};

use maos_core::{AgentId, AgentRole, ChannelName, Message, MessageId, Name, Recipients};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::conn::{Exec, Tx};
use crate::{Error, Pg, Result};

/// Default limit of a serialised message: 1 MiB (as the file backend).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Most messages one read returns.
pub const DEFAULT_MAX_BATCH: i64 = 10_000;
/// The topic channels' prefix.
pub const TOPIC_PREFIX: &str = "broadcast/";
/// The global feed: one notification per broadcast.
pub const GLOBAL_FEED: &str = "broadcast/global";

/// What `send` returns once the message is durable and visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Receipt {
    /// Its position in the channel.
    pub position: u64,
    /// Its id.
    pub id: MessageId,
}

/// A message with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered<T> {
    /// Its position.
    pub position: u64,
    /// The message.
    pub message: Message<T>,
}

/// Positions `from..=to` were pruned before the reader got to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// First lost position.
    pub from: u64,
    /// Last lost position.
    pub to: u64,
}

/// What one read returns.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Batch<T> {
    /// New messages addressed to the reader, in channel order.
    pub messages: Vec<Delivered<T>>,
    /// The last position read (delivered or not): where the next read continues.
    pub cursor: u64,
    /// A pruned gap before the messages.
    pub pruned: Option<Pruned>,
    /// Messages skipped because they were not addressed to the reader.
    pub skipped: usize,
    /// Messages that did not decode as the requested type (position, reason).
    pub problems: Vec<(u64, String)>,
    /// The channel's newest position, when the cursor read from is beyond it (a hand-made
    /// `--after`): positions up to the cursor, when sent, are never shown to this reader.
    pub ahead_of: Option<u64>,
}

impl<T> Batch<T> {
    /// True when nothing new was found.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.pruned.is_none() && self.problems.is_empty()
    }
}

/// Which messages a reader gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Filter {
    /// Everything.
    #[default]
    Everything,
    /// What is addressed to `agent` holding `role`.
    Agent {
        /// The reader.
        agent: AgentId,
        /// Its role.
        role: Option<AgentRole>,
    },
}

impl Filter {
    /// True when a message to `r` passes.
    pub fn accepts(&self, r: &Recipients) -> bool {
        match self {
            Filter::Everything => true,
            Filter::Agent { agent, role } => r.includes(agent, role.as_ref()),
        }
    }
}

/// Counts and bounds of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// Newest position (0: none yet).
    pub newest: u64,
    /// Oldest position kept (`newest + 1` when none is kept).
    pub oldest: u64,
    /// Messages kept.
    pub count: u64,
}

/// What [`PgChannel::prune_by`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prune {
    /// All but the newest `n` messages.
    Keep(u64),
    /// The messages sent longer ago than this (by the server's clock).
    OlderThan(Duration),
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneOutcome {
    /// Messages removed.
    pub removed: u64,
    /// Positions `..=pruned_through` are gone (0: nothing was removed).
    pub pruned_through: u64,
    /// The oldest position kept (`newest + 1` when none is).
    pub oldest: u64,
    /// The newest position.
    pub newest: u64,
}

/// Removes from their topic channels the broadcasts named by removed feed entries (`bodies`).
fn prune_topics(t: &mut Tx<'_>, ns: i64, bodies: &[postgres::Row]) -> Result<()> {
    let mut through: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for row in bodies {
        let body: String = row.get(0);
        // An entry that does not decode names nothing we could remove.
        if let Ok(m) = serde_json::from_str::<Message<FeedNotice>>(&body)
            && let Ok(ch) = topic_channel(&m.payload.topic)
        {
            let e = through.entry(ch.to_string()).or_insert(0);
            *e = (*e).max(i(m.payload.position));
        }
    }
    for (ch, pos) in &through {
        t.exec(
            "remove pruned broadcasts",
            "DELETE FROM maos.messages WHERE ns = $1 AND channel = $2 AND pos <= $3",
            &[&ns, ch, pos],
        )?;
        t.exec(
            "move a topic's oldest position",
            "UPDATE maos.channels SET oldest = GREATEST(oldest, $3::bigint + 1) WHERE ns = $1 AND name = $2",
            &[&ns, ch, pos],
        )?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct Head {
    recipients: Recipients,
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The NOTIFY channel of a namespace's channels.
pub(crate) fn notify_channel(ns: i64) -> String {
    format!("maos_c{ns}")
}

/// Appends encoded envelopes to `channel` inside `t`: consecutive positions; a message whose
/// id is already in the channel (a retry after an unknown outcome) is not appended again and
/// keeps its position.
pub(crate) fn append_tx(
    t: &mut Tx<'_>,
    ns: i64,
    channel: &str,
    bodies: &[(Head2, String)],
) -> Result<Vec<u64>> {
    t.exec(
        "create a channel",
        "INSERT INTO maos.channels (ns, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&ns, &channel],
    )?;
    let ids: Vec<uuid::Uuid> = bodies.iter().map(|(h, _)| h.id).collect();
    // Lock the channel's counter first: from here until commit, no other sender of this
    // channel runs, so the check below and the positions are race-free.
    let last: i64 = t
        .one(
            "lock the channel",
            "SELECT last FROM maos.channels WHERE ns = $1 AND name = $2 FOR UPDATE",
            &[&ns, &channel],
        )?
        .get(0);
    let known: std::collections::HashMap<uuid::Uuid, i64> = t
        .query(
            "find resent messages",
            "SELECT id, pos FROM maos.messages WHERE ns = $1 AND channel = $2 AND id = ANY($3)",
            &[&ns, &channel, &ids],
        )?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut next = last;
    let mut out = Vec::with_capacity(bodies.len());
    for (h, body) in bodies {
        if let Some(p) = known.get(&h.id) {
            out.push(u(*p));
            continue;
        }
        next += 1;
        t.exec(
            "append a message",
            "INSERT INTO maos.messages (ns, channel, pos, id, sender, recipients, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&ns, &channel, &next, &h.id, &h.sender, &h.recipients, body],
        )?;
        out.push(u(next));
    }
    if next != last {
        t.exec(
            "advance the channel",
            "UPDATE maos.channels SET last = $3 WHERE ns = $1 AND name = $2",
            &[&ns, &channel, &next],
        )?;
        t.notify(&notify_channel(ns), channel)?;
    }
    Ok(out)
}

/// What the store keeps of an envelope besides its bytes.
pub(crate) struct Head2 {
    id: uuid::Uuid,
    sender: String,
    recipients: serde_json::Value,
}

/// A named channel in a namespace.
#[derive(Debug, Clone)]
pub struct PgChannel {
    pg: Pg,
    name: ChannelName,
    max_message: usize,
}

impl PgChannel {
    /// The channel `name` (created by its first message).
    pub fn open(pg: &Pg, name: ChannelName) -> Self {
        Self {
            pg: pg.clone(),
            name,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }

    /// The inbox of `agent`: `direct/<agent>`.
    pub fn inbox(pg: &Pg, agent: &AgentId) -> Result<Self> {
        Ok(Self::open(pg, ChannelName::new(format!("direct/{agent}"))?))
    }

    /// Sets the message size limit.
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// The channel's name.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    fn encode<T: Serialize>(&self, msg: &Message<T>) -> Result<(Head2, String)> {
        let body = serde_json::to_string(msg).map_err(|source| Error::Json {
            channel: self.name.to_string(),
            source,
        })?;
        if body.len() > self.max_message {
            return Err(Error::PayloadTooLarge {
                channel: self.name.to_string(),
                id: msg.id,
                size: body.len(),
                limit: self.max_message,
            });
        }
        // Decode it as the most demanding reader does (every value materialised, with
        // serde_json's nesting limit): what is acknowledged is readable by everyone.
        if let Err(e) = serde_json::from_str::<Message<serde_json::Value>>(&body) {
            return Err(Error::Unreadable {
                channel: self.name.to_string(),
                id: msg.id,
                reason: e.to_string(),
            });
        }
        let recipients = serde_json::to_value(&msg.recipients).map_err(|source| Error::Json {
            channel: self.name.to_string(),
            source,
        })?;
        Ok((
            Head2 {
                id: msg.id.as_uuid(),
                sender: msg.sender.to_string(),
                recipients,
            },
            body,
        ))
    }

    /// Appends `msg`; returns once it is committed (durable and visible), with its position.
    pub fn send<T: Serialize>(&self, msg: &Message<T>) -> Result<Receipt> {
        let mut r = self.send_many(std::slice::from_ref(msg))?;
        r.pop().ok_or_else(|| Error::Invalid {
            what: "send",
            reason: "nothing was sent".into(),
        })
    }

    /// Appends several messages in one transaction: consecutive positions, all or none.
    pub fn send_many<T: Serialize>(&self, msgs: &[Message<T>]) -> Result<Vec<Receipt>> {
        let bodies = msgs
            .iter()
            .map(|m| self.encode(m))
            .collect::<Result<Vec<_>>>()?;
        let ns = self.pg.inner.ns;
        let name = self.name.as_str();
        let positions = self
            .pg
            .run(|c| c.tx("send", |t| append_tx(t, ns, name, &bodies)))?;
        Ok(msgs
            .iter()
            .zip(positions)
            .map(|(m, position)| Receipt { position, id: m.id })
            .collect())
    }

    /// Reads forward from `cursor` (the last position consumed): the messages `filter`
    /// accepts, at most [`DEFAULT_MAX_BATCH`] positions.
    pub fn receive<T: DeserializeOwned>(&self, cursor: u64, filter: &Filter) -> Result<Batch<T>> {
        let ns = self.pg.inner.ns;
        let name = self.name.as_str();
        let after = i(cursor);
        let (bounds, rows) = self.pg.run(|c| {
            let bounds = c
                .opt(
                    "read the channel bounds",
                    "SELECT oldest, last FROM maos.channels WHERE ns = $1 AND name = $2",
                    &[&ns, &name],
                )?
                .map(|r| (u(r.get::<_, i64>(0)), u(r.get::<_, i64>(1))));
            let rows = c.query(
                "read messages",
                "SELECT pos, body FROM maos.messages WHERE ns = $1 AND channel = $2 AND pos > $3
                 ORDER BY pos LIMIT $4",
                &[&ns, &name, &after, &DEFAULT_MAX_BATCH],
            )?;
            Ok((bounds, rows))
        })?;
        let mut batch = Batch {
            messages: Vec::with_capacity(rows.len()),
            cursor,
            pruned: None,
            skipped: 0,
            problems: Vec::new(),
            ahead_of: None,
        };
        if let Some((oldest, last)) = bounds {
            if oldest > cursor.saturating_add(1) {
                batch.pruned = Some(Pruned {
                    from: cursor + 1,
                    to: oldest - 1,
                });
            }
            if cursor > last {
                batch.ahead_of = Some(last);
            }
        }
        for row in rows {
            let pos = u(row.get(0));
            let body: String = row.get(1);
            batch.cursor = pos;
            if !matches!(filter, Filter::Everything) {
                match serde_json::from_str::<Head>(&body) {
                    Ok(h) if filter.accepts(&h.recipients) => {}
                    Ok(_) => {
                        batch.skipped += 1;
                        continue;
                    }
                    Err(e) => {
                        batch.problems.push((pos, e.to_string()));
                        continue;
                    }
                }
            }
            match serde_json::from_str::<Message<T>>(&body) {
                Ok(message) => batch.messages.push(Delivered {
                    position: pos,
                    message,
                }),
                Err(e) => batch.problems.push((pos, e.to_string())),
            }
        }
        Ok(batch)
    }

    /// Reads forward from `cursor`, waiting up to `timeout` for something new: LISTEN for the
    /// namespace's notifications, read, and read again on each notification about this
    /// channel or every fallback interval. Returns an empty batch at the timeout.
    pub fn wait<T: DeserializeOwned>(
        &self,
        cursor: u64,
        filter: &Filter,
        timeout: Duration,
    ) -> Result<Batch<T>> {
        let deadline = Instant::now() + timeout;
        let hub = self.pg.hub()?;
        let chan = notify_channel(self.pg.inner.ns);
        let mut cur = cursor;
        loop {
            let seen = hub.seen();
            let b = self.receive::<T>(cur, filter)?;
            if !b.is_empty() {
                return Ok(b);
            }
            cur = b.cursor;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(b);
            }
            let fallback = self.pg.inner.options.channel_fallback;
            hub.wait(seen, left.min(fallback), |ch, payload| {
                ch == chan && payload == self.name.as_str()
            });
        }
    }

    /// Counts and bounds.
    pub fn stats(&self) -> Result<ChannelStats> {
        let ns = self.pg.inner.ns;
        let name = self.name.as_str();
        let row = self.pg.run(|c| {
            c.opt(
                "read the channel bounds",
                "SELECT last, oldest FROM maos.channels WHERE ns = $1 AND name = $2",
                &[&ns, &name],
            )
        })?;
        let (newest, oldest) = row.map_or((0, 1), |r| (u(r.get(0)), u(r.get(1))));
        let oldest = oldest.min(newest + 1);
        Ok(ChannelStats {
            newest,
            oldest,
            count: newest + 1 - oldest,
        })
    }

    /// Removes all but the newest `keep` messages; positions continue after the newest.
    /// Returns how many were removed.
    pub fn prune(&self, keep: u64) -> Result<u64> {
        Ok(self.prune_by(Prune::Keep(keep))?.removed)
    }

    /// Removes old messages: all but the newest `n` ([`Prune::Keep`]) or those sent longer
    /// ago than a duration on the server's clock ([`Prune::OlderThan`]). Positions continue
    /// after the newest; readers whose cursor is in the removed range are told
    /// ([`Batch::pruned`]). Pruning the global feed also removes the broadcasts its removed
    /// entries name from their topic channels, in the same transaction. Consumers do not
    /// hold pruning back (as with the files).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a topic channel (prune the global feed instead); server errors.
    pub fn prune_by(&self, how: Prune) -> Result<PruneOutcome> {
        let ns = self.pg.inner.ns;
        let name = self.name.as_str();
        if name.starts_with(TOPIC_PREFIX) && name != GLOBAL_FEED {
            return Err(Error::Invalid {
                what: "channel to prune",
                reason: format!(
                    "{name} shows the broadcasts on a topic; prune {GLOBAL_FEED} instead"
                ),
            });
        }
        let feed = name == GLOBAL_FEED;
        let (keep, age_ms) = match how {
            Prune::Keep(n) => (i(n), -1i64),
            Prune::OlderThan(d) => (-1i64, i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        };
        self.pg.run(|c| {
            c.tx("prune", |t| {
                let Some(row) = t.opt(
                    "lock the channel",
                    "SELECT last, oldest FROM maos.channels WHERE ns = $1 AND name = $2 FOR UPDATE",
                    &[&ns, &name],
                )?
                else {
                    return Ok(PruneOutcome::default());
                };
                let last: i64 = row.get(0);
                let oldest: i64 = row.get(1);
                let first_kept: i64 = if keep >= 0 {
                    (last - keep + 1).max(1)
                } else {
                    t.one(
                        "find the oldest message to keep",
                        "SELECT COALESCE(min(pos), $3::bigint + 1) FROM maos.messages
                         WHERE ns = $1 AND channel = $2
                           AND sent_at > clock_timestamp() - $4::float8 * interval '1 millisecond'",
                        &[&ns, &name, &last, &(age_ms as f64)],
                    )?
                    .get(0)
                };
                let gone = t.query(
                    "remove old messages",
                    "DELETE FROM maos.messages WHERE ns = $1 AND channel = $2 AND pos < $3
                     RETURNING body",
                    &[&ns, &name, &first_kept],
                )?;
                if feed {
                    prune_topics(t, ns, &gone)?;
                }
                t.exec(
                    "move the oldest position",
                    "UPDATE maos.channels SET oldest = GREATEST(oldest, $3) WHERE ns = $1 AND name = $2",
                    &[&ns, &name, &first_kept],
                )?;
                let now_oldest = oldest.max(first_kept);
                Ok(PruneOutcome {
                    removed: gone.len() as u64,
                    pruned_through: if gone.is_empty() { 0 } else { u(now_oldest - 1) },
                    oldest: u(now_oldest.min(last + 1)),
                    newest: u(last),
                })
            })
        })
    }

    /// The durable consumer `name` of this channel.
    pub fn consumer(&self, name: Name, filter: Filter) -> Result<PgConsumer> {
        let ns = self.pg.inner.ns;
        let ch = self.name.as_str();
        let cname = name.as_str();
        let position = self.pg.run(|c| {
            Ok(c.opt(
                "read a consumer",
                "SELECT position FROM maos.consumers WHERE ns = $1 AND channel = $2 AND name = $3",
                &[&ns, &ch, &cname],
            )?
            .map_or(0, |r| u(r.get(0))))
        })?;
        Ok(PgConsumer {
            channel: self.clone(),
            name,
            filter,
            position,
        })
    }
}

/// Every channel of the namespace, by name.
pub fn list_channels(pg: &Pg) -> Result<Vec<ChannelName>> {
    let ns = pg.inner.ns;
    let rows = pg.run(|c| {
        c.query(
            "list channels",
            "SELECT name FROM maos.channels WHERE ns = $1 ORDER BY name",
            &[&ns],
        )
    })?;
    rows.into_iter()
        .map(|r| Ok(ChannelName::new(r.get::<_, String>(0))?))
        .collect()
}

/// A durable named consumer: its position is stored on the server, so a restarted agent (on
/// any machine) continues where it stopped; what was received but not acknowledged is
/// received again (at-least-once).
#[derive(Debug, Clone)]
pub struct PgConsumer {
    channel: PgChannel,
    name: Name,
    filter: Filter,
    position: u64,
}

impl PgConsumer {
    /// The acknowledged position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The messages after the acknowledged position.
    pub fn receive<T: DeserializeOwned>(&self) -> Result<Batch<T>> {
        self.channel.receive(self.position, &self.filter)
    }

    /// Acknowledges everything up to `position`; never moves the stored position backwards
    /// (another handle of the same consumer may be ahead).
    ///
    /// # Errors
    /// [`Error::AheadOfLog`] for a position the channel does not hold yet: acknowledged, it
    /// would hide the messages sent there later.
    pub fn ack(&mut self, position: u64) -> Result<()> {
        let ns = self.channel.pg.inner.ns;
        let ch = self.channel.name.as_str();
        let name = self.name.as_str();
        let p = i(position);
        let stored = self.channel.pg.run(|c| {
            c.tx("acknowledge", |t| {
                t.exec(
                    "create a channel",
                    "INSERT INTO maos.channels (ns, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&ns, &ch],
                )?;
                let newest: i64 = t
                    .one(
                        "read the channel's newest position",
                        "SELECT last FROM maos.channels WHERE ns = $1 AND name = $2",
                        &[&ns, &ch],
                    )?
                    .get(0);
                if p > newest {
                    return Err(Error::AheadOfLog {
                        channel: ch.to_string(),
                        position,
                        newest: u(newest),
                    });
                }
                Ok(u(t
                    .one(
                        "store a consumer position",
                        "INSERT INTO maos.consumers (ns, channel, name, position) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (ns, channel, name) DO UPDATE
                             SET position = GREATEST(maos.consumers.position, EXCLUDED.position),
                                 updated_at = clock_timestamp()
                         RETURNING position",
                        &[&ns, &ch, &name, &p],
                    )?
                    .get(0)))
            })
        })?;
        self.position = stored;
        Ok(())
    }
}

/// Broadcasting on topics: the message goes to `broadcast/<topic>` and a notification
/// `{"topic","position","id"}` to the global feed, both in one transaction.
#[derive(Debug, Clone)]
pub struct PgBroadcast {
    pg: Pg,
    sender: AgentId,
}

/// A notification on the global feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedNotice {
    /// The topic.
    pub topic: String,
    /// The message's position in `broadcast/<topic>`.
    pub position: u64,
    /// The message's id.
    pub id: MessageId,
}

/// The channel of topic `topic`.
pub fn topic_channel(topic: &str) -> Result<ChannelName> {
    if topic == "global" || topic.contains('*') {
        return Err(Error::Invalid {
            what: "topic",
            reason: format!("{topic:?} is reserved or a pattern"),
        });
    }
    Ok(ChannelName::new(format!("{TOPIC_PREFIX}{topic}"))?)
}

impl PgBroadcast {
    /// Broadcasting as `sender`.
    pub fn new(pg: &Pg, sender: AgentId) -> Self {
        Self {
            pg: pg.clone(),
            sender,
        }
    }

    /// Publishes `payload` on `topic`; acknowledged when the message and its feed
    /// notification are committed (together).
    pub fn broadcast<T: Serialize>(&self, topic: &str, payload: &T) -> Result<Receipt> {
        Ok(self.broadcast_with_feed(topic, payload)?.0)
    }

    /// [`PgBroadcast::broadcast`], also returning the position of its notification in the
    /// global feed (the position subscribers see, as the file backend's receipt has it).
    pub fn broadcast_with_feed<T: Serialize>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<(Receipt, u64)> {
        let ch = topic_channel(topic)?;
        let msg = Message::new(self.sender.clone(), Recipients::All, payload);
        let topic_ch = PgChannel::open(&self.pg, ch.clone());
        let body = topic_ch.encode(&msg)?;
        let ns = self.pg.inner.ns;
        let feed = PgChannel::open(&self.pg, ChannelName::new(GLOBAL_FEED)?);
        let feed_id = MessageId::new();
        let pos = self.pg.run(|c| {
            c.tx("broadcast", |t| {
                let pos = append_tx(t, ns, ch.as_str(), std::slice::from_ref(&body))?[0];
                let mut notice = Message::new(
                    self.sender.clone(),
                    Recipients::All,
                    FeedNotice {
                        topic: topic.to_string(),
                        position: pos,
                        id: msg.id,
                    },
                );
                notice.id = feed_id;
                let nb = feed.encode(&notice)?;
                let feed_pos = append_tx(t, ns, GLOBAL_FEED, std::slice::from_ref(&nb))?[0];
                Ok((pos, feed_pos))
            })
        })?;
        Ok((
            Receipt {
                position: pos.0,
                id: msg.id,
            },
            pos.1,
        ))
    }
}

/// True when `topic` matches `pattern` (segments split on `/`; `*` one segment, `**` any
/// number, none included).
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    fn go(p: &[&str], t: &[&str]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(&"**"), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    go(&p, &t)
}

/// A message received through a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicMessage<T> {
    /// The topic.
    pub topic: String,
    /// The position of its notification in the global feed.
    pub feed_position: u64,
    /// The message.
    pub message: Message<T>,
}

/// A subscription to topic patterns: reads the global feed from a cursor and fetches each
/// matching message from its topic channel (checking its id).
#[derive(Debug, Clone)]
pub struct PgSubscription {
    feed: PgChannel,
    patterns: Vec<String>,
    cursor: u64,
}

impl PgSubscription {
    /// Subscribes to `patterns` from feed position `cursor`.
    pub fn new(pg: &Pg, patterns: &[&str], cursor: u64) -> Result<Self> {
        Ok(Self {
            feed: PgChannel::open(pg, ChannelName::new(GLOBAL_FEED)?),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            cursor,
        })
    }

    /// The feed position read so far.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The matching messages published since the last poll, in feed order.
    pub fn poll<T: DeserializeOwned>(&mut self) -> Result<Vec<TopicMessage<T>>> {
        let b = self
            .feed
            .receive::<FeedNotice>(self.cursor, &Filter::Everything)?;
        let mut out = Vec::new();
        for d in b.messages {
            let n = d.message.payload;
            if !self.patterns.iter().any(|p| topic_matches(p, &n.topic)) {
                continue;
            }
            let Ok(ch) = topic_channel(&n.topic) else {
                continue;
            };
            let topic = PgChannel::open(&self.feed.pg, ch);
            let got = topic.receive::<T>(n.position.saturating_sub(1), &Filter::Everything)?;
            if let Some(m) = got
                .messages
                .into_iter()
                .find(|m| m.position == n.position && m.message.id == n.id)
            {
                out.push(TopicMessage {
                    topic: n.topic,
                    feed_position: d.position,
                    message: m.message,
                });
            }
        }
        self.cursor = b.cursor;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::test_backend;

    fn agent(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    #[test]
    fn concurrent_senders_get_one_gapless_order_and_readers_never_see_a_gap() {
        let pg = test_backend("comm-order").unwrap();
        let ch = PgChannel::open(&pg, ChannelName::new("c").unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A reader polling all the time: every batch must continue exactly at its cursor.
        let reader = {
            let ch = ch.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut cur = 0u64;
                let mut seen = 0;
                loop {
                    let done = stop.load(std::sync::atomic::Ordering::SeqCst);
                    let b = ch.receive::<(u32, u32)>(cur, &Filter::Everything).unwrap();
                    for d in &b.messages {
                        assert_eq!(d.position, cur + 1, "a reader saw a gap");
                        cur = d.position;
                        seen += 1;
                    }
                    if done && b.messages.is_empty() {
                        return seen;
                    }
                }
            })
        };
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let ch = ch.clone();
                std::thread::spawn(move || {
                    (0..50u32)
                        .map(|i| {
                            ch.send(&Message::new(agent("a"), Recipients::All, (w, i)))
                                .unwrap()
                                .position
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = writers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(reader.join().unwrap(), 200);
        all.sort_unstable();
        assert_eq!(all, (1..=200).collect::<Vec<_>>());
        // Each sender's messages keep their order.
        let b = ch.receive::<(u32, u32)>(0, &Filter::Everything).unwrap();
        for w in 0..4 {
            let mine: Vec<u32> = b
                .messages
                .iter()
                .filter(|d| d.message.payload.0 == w)
                .map(|d| d.message.payload.1)
                .collect();
            assert_eq!(mine, (0..50).collect::<Vec<_>>());
        }
        assert_eq!(ch.stats().unwrap().newest, 200);
    }

    #[test]
    fn recipients_consumers_and_resends() {
        let pg = test_backend("comm-recipients").unwrap();
        let ch = PgChannel::open(&pg, ChannelName::new("team").unwrap());
        let sends = [
            Recipients::All,
            Recipients::Agent(agent("b1")),
            Recipients::Agent(agent("x")),
            Recipients::Group(vec![agent("x"), agent("b1")]),
            Recipients::Role(AgentRole::backend()),
            Recipients::Role(AgentRole::frontend()),
        ];
        for (n, r) in sends.iter().enumerate() {
            ch.send(&Message::new(agent("s"), r.clone(), n)).unwrap();
        }
        let f = Filter::Agent {
            agent: agent("b1"),
            role: Some(AgentRole::backend()),
        };
        let b = ch.receive::<usize>(0, &f).unwrap();
        let got: Vec<usize> = b.messages.iter().map(|d| d.message.payload).collect();
        assert_eq!(got, [0, 1, 3, 4]);
        assert_eq!((b.skipped, b.cursor), (2, 6));
        // A resend of the same message (a retry after an unknown outcome) keeps its position.
        let m = Message::new(agent("s"), Recipients::All, 99usize);
        let r1 = ch.send(&m).unwrap();
        let r2 = ch.send(&m).unwrap();
        assert_eq!(r1, r2);
        assert_eq!(ch.stats().unwrap().newest, 7);
        // Durable consumers: redelivered until acknowledged, never backwards.
        let name = Name::new("worker").unwrap();
        let mut c = ch.consumer(name.clone(), Filter::Everything).unwrap();
        assert_eq!(c.receive::<serde_json::Value>().unwrap().messages.len(), 7);
        c.ack(3).unwrap();
        let mut stale = ch.consumer(name.clone(), Filter::Everything).unwrap();
        c.ack(7).unwrap();
        stale.ack(2).unwrap();
        assert_eq!(stale.position(), 7, "the stale handle catches up");
        let again = ch.consumer(name, Filter::Everything).unwrap();
        assert!(
            again
                .receive::<serde_json::Value>()
                .unwrap()
                .messages
                .is_empty()
        );
        // Oversized messages are refused before anything is written.
        let small = PgChannel::open(&pg, ChannelName::new("small").unwrap()).max_message(50);
        let err = small
            .send(&Message::new(agent("s"), Recipients::All, "x".repeat(100)))
            .unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
        assert_eq!(small.stats().unwrap().newest, 0);
    }

    #[test]
    fn pruning_reports_the_lost_range_and_positions_continue() {
        let pg = test_backend("comm-prune").unwrap();
        let ch = PgChannel::open(&pg, ChannelName::new("c").unwrap());
        for n in 0..10 {
            ch.send(&Message::new(agent("a"), Recipients::All, n))
                .unwrap();
        }
        assert_eq!(ch.prune(3).unwrap(), 7);
        let b = ch.receive::<i32>(2, &Filter::Everything).unwrap();
        assert_eq!(b.pruned, Some(Pruned { from: 3, to: 7 }));
        assert_eq!(b.messages[0].position, 8);
        ch.prune(0).unwrap();
        let r = ch
            .send(&Message::new(agent("a"), Recipients::All, 11))
            .unwrap();
        assert_eq!(r.position, 11);
        assert_eq!(ch.stats().unwrap().count, 1);
    }

    #[test]
    fn broadcasts_reach_topic_readers_and_wildcard_subscribers() {
        let pg = test_backend("comm-bcast").unwrap();
        let mut sub = PgSubscription::new(&pg, &["build/*"], 0).unwrap();
        let b = PgBroadcast::new(&pg, agent("ci"));
        b.broadcast("build/done", &"ok").unwrap();
        b.broadcast("test/done", &"skip").unwrap();
        b.broadcast("build/failed", &"no").unwrap();
        let got = sub.poll::<String>().unwrap();
        let topics: Vec<_> = got.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["build/done", "build/failed"]);
        assert!(sub.poll::<String>().unwrap().is_empty());
        let mut all = PgSubscription::new(&pg, &["**"], 0).unwrap();
        assert_eq!(all.poll::<String>().unwrap().len(), 3);
        assert!(topic_channel("global").is_err());
        assert!(topic_matches("a/**", "a"));
        assert!(topic_matches("a/**/z", "a/b/c/z"));
        assert!(!topic_matches("a/*", "a/b/c"));
    }

    #[test]
    fn a_waiting_reader_wakes_for_a_send_from_another_connection() {
        let pg = test_backend("comm-wait").unwrap();
        let ch = PgChannel::open(&pg, ChannelName::new("c").unwrap());
        let writer = ch.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            rx.recv().unwrap();
            writer
                .send(&Message::new(agent("a"), Recipients::All, 7))
                .unwrap();
        });
        // Nothing yet: a short wait returns empty.
        let b = ch
            .wait::<i32>(0, &Filter::Everything, Duration::from_millis(20))
            .unwrap();
        assert!(b.is_empty());
        tx.send(()).unwrap();
        let mut cur = 0;
        let mut got = Vec::new();
        while got.is_empty() {
            let b = ch
                .wait::<i32>(cur, &Filter::Everything, Duration::from_secs(30))
                .unwrap();
            cur = b.cursor;
            got.extend(b.messages.into_iter().map(|d| d.message.payload));
        }
        assert_eq!(got, [7]);
        t.join().unwrap();
    }
}
