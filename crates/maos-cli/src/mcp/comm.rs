//! Message tools: send (to an agent, a role, a group, everyone), receive (with an optional
//! wait), broadcast on a topic, read topics, the inbox (everything addressed to the agent) and
//! its stored topic subscriptions.

use std::time::Duration;

use maos_coordination::comm::{ChannelStore, RawPayload, Start};
use maos_coordination::core::Name;
use maos_coordination::{AgentId, AgentRole, ChannelName, Message, Recipients};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{PendingAck, Reply, Server, ToolError, ToolResult};
use crate::exit::Exit;

tool_group! {
    "send" => send(Send):
        "Send a message on a channel (any name, e.g. `backend-frontend`; `direct/<agent>` for \
         one agent's inbox). Address it with exactly one of `to` (an agent), `role`, `group` \
         (agents) or nothing (everyone on the channel). `data` is any JSON value. Returns once \
         the message is on disk, with its position.",
    "receive" => receive(Receive):
        "Receive the new messages addressed to you on a channel. Each message is returned once: \
         a call acknowledges what the previous call on that channel returned (so a lost answer \
         is given again). With `wait_seconds`, waits up to that long for the first one when \
         there is none yet.",
    "broadcast" => broadcast(Broadcast):
        "Publish a message on a topic (e.g. `build/linux`, `api/changed`) for every agent \
         subscribed to a pattern matching it.",
    "read_topics" => read_topics(Topics):
        "Read the new messages published on topics matching your patterns (`build/*` one level, \
         `deploy/**` any depth), each once per pattern set. With `wait_seconds`, waits up to that \
         long for the first one.",
    "inbox" => inbox(InboxArgs):
        "Your inbox: everything addressed to you on every channel (to you, your role, a group \
         with you, everyone) plus broadcasts on the topics you subscribed to. Without `read`, \
         counts what is unread per channel. With `read: true`, returns up to `max` (default 20) \
         unread messages, oldest first; each is returned once (the next inbox call acknowledges \
         them, so a lost answer is given again). With `wait_seconds`, waits for the first one.",
    "subscribe" => subscribe(SubscribeArgs):
        "Store topic subscriptions for your inbox (`build/*` one level, `deploy/**` any depth): \
         broadcasts on matching topics published from now on come to your inbox (and to the \
         Claude Code hooks' context). With `unsubscribe: true`, removes the patterns. Returns \
         the subscriptions now stored.",
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Send {
    /// The channel name (letters, digits, `._-`, `/` between segments).
    channel: String,
    /// The message: any JSON value (an object such as {"text": "..."} reads best).
    data: Value,
    /// Address one agent.
    #[serde(default)]
    to: Option<String>,
    /// Address every agent with this role.
    #[serde(default)]
    role: Option<String>,
    /// Address these agents.
    #[serde(default)]
    group: Option<Vec<String>>,
    /// The id of the message this one answers.
    #[serde(default)]
    reply_to: Option<String>,
    /// An id grouping the messages of one conversation (e.g. the id of its first message).
    #[serde(default)]
    correlation_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Receive {
    /// The channel.
    channel: String,
    /// Wait up to this many seconds for a message when there is none (default 0, at most 300).
    #[serde(default)]
    wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    /// The topic (`/`-separated segments).
    topic: String,
    /// The message: any JSON value.
    data: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Topics {
    /// Topic patterns: `*` matches one segment, `**` any number.
    patterns: Vec<String>,
    /// Wait up to this many seconds for a message when there is none (default 0, at most 300).
    #[serde(default)]
    wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct InboxArgs {
    /// Return the unread messages (true) or only count them (false, the default).
    #[serde(default)]
    read: bool,
    /// At most this many messages (default 20, at most 100).
    #[serde(default)]
    max: Option<u32>,
    /// With `read`: wait up to this many seconds for a message when there is none (default 0,
    /// at most 300).
    #[serde(default)]
    wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SubscribeArgs {
    /// Topic patterns: `*` matches one segment, `**` any number.
    patterns: Vec<String>,
    /// Remove these patterns instead of adding them.
    #[serde(default)]
    unsubscribe: bool,
}

fn wait(v: Option<f64>) -> Result<Duration, ToolError> {
    let v = v.unwrap_or(0.0);
    if !v.is_finite() || !(0.0..=300.0).contains(&v) {
        return Err(ToolError::usage(format!(
            "wait_seconds must be between 0 and 300, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// How long a send waits for a channel's lock (the file backend's writers take turns).
const SEND_LOCK_WAIT: Duration = Duration::from_secs(10);

fn channel(name: &str) -> Result<ChannelName, ToolError> {
    ChannelName::new(name).map_err(|e| ToolError::usage(format!("channel: {e}")))
}

fn store(s: &Server) -> Box<dyn ChannelStore> {
    s.backends().channels()
}

fn raw(data: &Value) -> Result<RawPayload, ToolError> {
    serde_json::value::to_raw_value(data)
        .map_err(|e| ToolError::usage(format!("data: cannot encode it: {e}")))
}

/// A message as JSON (its payload as the JSON value it was sent as).
fn message_json(m: &Message<RawPayload>) -> Result<Value, ToolError> {
    serde_json::to_value(m)
        .map_err(|e| ToolError::new(Exit::Error, format!("cannot encode message {}: {e}", m.id)))
}

async fn send(s: &Server, a: Send) -> ToolResult {
    let me = s.agent()?;
    let bad =
        |what: &str, e: maos_coordination::core::Error| ToolError::usage(format!("{what}: {e}"));
    let recipients = match (a.to, a.role, a.group) {
        (None, None, None) => Recipients::All,
        (Some(t), None, None) => Recipients::Agent(AgentId::new(t).map_err(|e| bad("to", e))?),
        (None, Some(r), None) => Recipients::Role(AgentRole::new(r).map_err(|e| bad("role", e))?),
        (None, None, Some(g)) => Recipients::Group(
            g.into_iter()
                .map(AgentId::new)
                .collect::<Result<_, _>>()
                .map_err(|e| bad("group", e))?,
        ),
        _ => return Err(ToolError::usage("give at most one of to, role, group")),
    };
    let ch = channel(&a.channel)?;
    let id = |what: &str, v: &str| {
        v.parse::<maos_coordination::MessageId>()
            .map_err(|e| ToolError::usage(format!("{what}: {e}")))
    };
    let mut msg = Message::new(me, recipients, raw(&a.data)?);
    if let Some(r) = &a.reply_to {
        msg.metadata.reply_to = Some(id("reply_to", r)?);
    }
    if let Some(c) = &a.correlation_id {
        msg.metadata.correlation_id = Some(id("correlation_id", c)?);
    }
    let receipt = s
        .blocking(move |s| Ok(store(&s).send(&ch, &msg, SEND_LOCK_WAIT)?))
        .await?;
    Reply::new(
        &json!({ "channel": a.channel, "position": receipt.position, "id": receipt.id }),
        format!("sent to {} at position {}", a.channel, receipt.position),
    )
}

async fn receive(s: &Server, a: Receive) -> ToolResult {
    let me = s.agent()?;
    let timeout = wait(a.wait_seconds)?;
    let ch = channel(&a.channel)?;
    let source = format!("channel:{}", a.channel);
    // What the previous call returned is acknowledged now: the client had its answer.
    let previous = s.take_pending(&source);
    let (messages, problems, cursor) = s
        .blocking(move |s| {
            let store = store(&s);
            let filter = store.filter_for(me.clone())?;
            let consumer = || {
                Name::new(format!("mcp-{me}"))
                    .map(Start::Consumer)
                    .map_err(|e| ToolError::usage(format!("consumer name: {e}")))
            };
            if let Some(PendingAck::Channel(p)) = previous {
                store
                    .reader(&ch, consumer()?, filter.clone(), true)?
                    .ack(p)?;
            }
            let mut reader = store.reader(&ch, consumer()?, filter, true)?;
            let mut batch = reader.read()?;
            if batch.messages.is_empty() && !timeout.is_zero() {
                batch = reader.wait(timeout)?;
            }
            let problems: Vec<String> = batch
                .notices
                .iter()
                .map(|p| p.to_string())
                .chain(batch.warnings.iter().cloned())
                .collect();
            let messages: Vec<Value> = batch
                .messages
                .iter()
                .map(|d| {
                    Ok(json!({ "position": d.position, "message": message_json(&d.message)? }))
                })
                .collect::<Result<_, ToolError>>()?;
            Ok((messages, problems, batch.progressed.then_some(batch.cursor)))
        })
        .await?;
    if let Some(c) = cursor {
        s.set_pending(&source, PendingAck::Channel(c));
    }
    let text = format!("{} new message(s) on {}", messages.len(), a.channel);
    Reply::new(&json!({ "messages": messages, "problems": problems }), text)
}

async fn broadcast(s: &Server, a: Broadcast) -> ToolResult {
    let me = s.agent()?;
    let topic = a.topic.clone();
    let payload = raw(&a.data)?;
    let receipt = s
        .blocking(move |s| Ok(store(&s).broadcast(&me, &topic, &payload, SEND_LOCK_WAIT)?))
        .await?;
    Reply::new(
        &json!({ "topic": a.topic, "position": receipt.position, "id": receipt.id }),
        format!("published on {}", a.topic),
    )
}

async fn read_topics(s: &Server, a: Topics) -> ToolResult {
    if a.patterns.is_empty() {
        return Err(ToolError::usage("give at least one pattern"));
    }
    let me = s.agent()?;
    let timeout = wait(a.wait_seconds)?;
    // One durable subscription per agent and pattern set.
    let mut sorted = a.patterns.clone();
    sorted.sort();
    let key = sorted
        .join("\n")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let consumer = Name::new(format!("mcp-{me}-{key:016x}"))
        .map_err(|e| ToolError::usage(format!("subscription name: {e}")))?;
    let source = format!("topics:{consumer}");
    // What the previous call returned is acknowledged now: the client had its answer.
    let previous = s.take_pending(&source);
    let patterns = a.patterns.clone();
    let found = s
        .blocking(move |s| {
            let store = store(&s);
            let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
            if let Some(PendingAck::Feed(p)) = previous {
                store
                    .topic_reader(&patterns, Some(consumer.clone()))?
                    .ack(p)?;
            }
            let mut sub = store.topic_reader(&patterns, Some(consumer))?;
            let mut found = sub.read()?.messages;
            if found.is_empty() && !timeout.is_zero() {
                found.extend(sub.wait(timeout)?.messages);
                if !found.is_empty() {
                    found.extend(sub.read()?.messages);
                }
            }
            Ok(found)
        })
        .await?;
    if let Some(last) = found.last() {
        s.set_pending(&source, PendingAck::Feed(last.position));
    }
    let messages: Vec<Value> = found
        .iter()
        .map(|m| {
            Ok(json!({ "topic": m.topic, "position": m.position, "message": message_json(&m.message)? }))
        })
        .collect::<Result<_, ToolError>>()?;
    let text = format!("{} new topic message(s)", messages.len());
    Reply::new(&json!({ "messages": messages }), text)
}

async fn inbox(s: &Server, a: InboxArgs) -> ToolResult {
    let me = s.agent()?;
    let max = match a.max {
        None => 20,
        Some(n @ 1..=100) => n as usize,
        Some(n) => {
            return Err(ToolError::usage(format!(
                "max must be between 1 and 100, got {n}"
            )));
        }
    };
    let timeout = wait(a.wait_seconds)?;
    if !a.read {
        if !timeout.is_zero() {
            return Err(ToolError::usage("wait_seconds needs read: true"));
        }
        let unread = s
            .blocking(move |s| Ok(s.backends().inboxes().open(me)?.unread()?))
            .await?;
        let text = format!("{} unread message(s)", unread.total);
        return Reply::new(&json!(unread), text);
    }
    // What the previous call returned is acknowledged now: the client had its answer.
    let previous = s.take_pending(INBOX_SOURCE);
    let batch = s
        .blocking(move |s| {
            let mut inbox = s.backends().inboxes().open(me)?;
            if let Some(PendingAck::Inbox(b)) = previous {
                inbox.ack(&b)?;
            }
            let watcher = (!timeout.is_zero()).then(|| inbox.watcher()).transpose()?;
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let batch = inbox.read(max)?;
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match &watcher {
                    Some(w) if batch.is_empty() && !left.is_zero() => w.wait(left),
                    _ => return Ok(batch),
                }
            }
        })
        .await?;
    let messages: Vec<Value> = batch
        .items
        .iter()
        .map(|i| {
            json!({
                "channel": i.channel,
                "position": i.position,
                "topic": i.topic,
                "message": i.message,
            })
        })
        .collect();
    let notices: Vec<String> = batch
        .notices
        .iter()
        .map(|(c, n)| format!("{c}: {n}"))
        .collect();
    let text = format!(
        "{} message(s){}",
        messages.len(),
        if batch.more { ", more waiting" } else { "" }
    );
    let more = batch.more;
    s.set_pending(INBOX_SOURCE, PendingAck::Inbox(Box::new(batch)));
    Reply::new(
        &json!({ "messages": messages, "notices": notices, "more": more }),
        text,
    )
}

/// The pending acknowledgement of the inbox tool.
const INBOX_SOURCE: &str = "inbox";

async fn subscribe(s: &Server, a: SubscribeArgs) -> ToolResult {
    if a.patterns.is_empty() {
        return Err(ToolError::usage("give at least one pattern"));
    }
    let me = s.agent()?;
    let stored = s
        .blocking(move |s| {
            let mut inbox = s.backends().inboxes().open(me)?;
            let patterns: Vec<&str> = a.patterns.iter().map(String::as_str).collect();
            if a.unsubscribe {
                inbox.unsubscribe(&patterns)?;
            } else {
                inbox.subscribe(&patterns)?;
            }
            Ok(inbox.subscriptions().to_vec())
        })
        .await?;
    let text = format!("subscribed to {}", stored.len());
    Reply::new(&json!({ "subscriptions": stored }), text)
}
