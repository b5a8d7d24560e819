//! `maos send`, `recv`, `broadcast`, `subscribe`, `channels`: the comm commands.

use std::io::BufRead as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use maos_coordination::comm::{
    BroadcastChannel, ChannelWatcher, Cursor, Delivered, FileChannel, Filter, Notice, Problem,
    Pruned, Retention, Subscription, TopicMessage, channel_stats,
};
use maos_coordination::core::Name;
use maos_coordination::{AgentId, AgentRole, ChannelName, Message, Recipients, Workspace};
use serde::Serialize;
use serde_json::Value;

use crate::ctx::Ctx;
use crate::duration;
use crate::exit::{Exit, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum CommCommand {
    /// Send a message to a channel; prints its position and id once it is durable.
    Send(SendArgs),
    /// Read the messages of a channel addressed to you (JSON Lines with --json).
    Recv(RecvArgs),
    /// Publish a message on a topic (and a notification on broadcast/global).
    Broadcast(BroadcastArgs),
    /// Read the messages of the topics matching the patterns (`build/*`, `deploy/**`).
    Subscribe(SubscribeArgs),
    /// List channels (names, counts, newest position), or prune one.
    Channels(ChannelsArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("to_whom").multiple(false))]
#[command(group = clap::ArgGroup::new("input").required(true).multiple(false))]
pub(crate) struct SendArgs {
    /// The channel, e.g. `backend-frontend` or `direct/b1`.
    channel: String,
    /// Address one agent.
    #[arg(long, group = "to_whom", value_name = "AGENT")]
    to: Option<String>,
    /// Address several agents.
    #[arg(long, group = "to_whom", value_name = "A,B", value_delimiter = ',')]
    group: Option<Vec<String>>,
    /// Address every agent with a role.
    #[arg(long, group = "to_whom", value_name = "ROLE")]
    role: Option<String>,
    /// Address everyone (the default).
    #[arg(long, group = "to_whom")]
    all: bool,
    /// The payload, a JSON value.
    #[arg(long, group = "input", value_name = "JSON")]
    data: Option<String>,
    /// Read payloads from stdin, one JSON value per line; one line is printed per message
    /// once it is durable.
    #[arg(long, group = "input")]
    stdin: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RecvArgs {
    /// The channel.
    channel: String,
    /// Start after this position (default: from the start, or the consumer's cursor).
    #[arg(long, value_name = "POS", conflicts_with = "consumer")]
    after: Option<u64>,
    /// A durable consumer: continue after its acknowledged position, acknowledge what is
    /// printed.
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    #[command(flatten)]
    stream: StreamArgs,
    /// Print every message, whoever it is addressed to.
    #[arg(long)]
    everything: bool,
}

/// How long a reading command goes on: shared by `recv` and `subscribe`.
#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    /// Keep waiting for new messages.
    #[arg(long)]
    follow: bool,
    /// With --follow: give up after this long without a new message (exit 3).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, requires = "follow")]
    timeout: Option<Duration>,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct BroadcastArgs {
    /// The topic, e.g. `build/done`.
    topic: String,
    /// The payload, a JSON value.
    #[arg(long, value_name = "JSON")]
    data: String,
}

#[derive(Debug, Args)]
pub(crate) struct SubscribeArgs {
    /// Topic patterns: `*` matches one segment, `**` any number.
    #[arg(required = true, value_name = "TOPIC")]
    topics: Vec<String>,
    /// A durable subscription: continue after its acknowledged position.
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    #[command(flatten)]
    stream: StreamArgs,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ChannelsArgs {
    #[command(subcommand)]
    command: Option<ChannelsCommand>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ChannelsCommand {
    /// List channels with their message counts and newest positions (the default).
    List,
    /// Remove old messages (whole segments) from a channel.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).multiple(false))]
pub(crate) struct PruneArgs {
    /// The channel.
    channel: String,
    /// Keep (at least) the newest N messages.
    #[arg(long, group = "what", value_name = "N")]
    keep: Option<u64>,
    /// Remove messages older than this (e.g. 7d).
    #[arg(long, group = "what", value_name = "DURATION", value_parser = duration::parse)]
    older_than: Option<Duration>,
}

pub(crate) fn run(cmd: CommCommand, ctx: &Ctx) -> anyhow::Result<Exit> {
    match cmd {
        CommCommand::Send(a) => send(a, ctx),
        CommCommand::Recv(a) => recv(a, ctx),
        CommCommand::Broadcast(a) => broadcast(a, ctx),
        CommCommand::Subscribe(a) => subscribe(a, ctx),
        CommCommand::Channels(a) => match a.command.unwrap_or(ChannelsCommand::List) {
            ChannelsCommand::List => channels(ctx),
            ChannelsCommand::Prune(p) => prune(p, ctx),
        },
    }
}

fn channel_name(s: &str) -> anyhow::Result<ChannelName> {
    ChannelName::new(s).with_context(|| format!("channel {s:?}"))
}

fn open(ws: &Workspace, s: &str) -> anyhow::Result<FileChannel> {
    Ok(FileChannel::open(ws, channel_name(s)?)?)
}

fn parse_json(s: &str, what: &str) -> anyhow::Result<Value> {
    serde_json::from_str(s).with_context(|| format!("{what} is not valid JSON: {s:?}"))
}

#[derive(Serialize)]
struct SentLine<'a> {
    channel: &'a str,
    position: u64,
    id: String,
}

fn send(a: SendArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let ch = open(&ws, &a.channel)?;
    let recipients = if let Some(to) = &a.to {
        Recipients::Agent(AgentId::new(to.as_str()).context("--to")?)
    } else if let Some(g) = &a.group {
        Recipients::Group(
            g.iter()
                .map(|s| AgentId::new(s.as_str()))
                .collect::<Result<_, _>>()
                .context("--group")?,
        )
    } else if let Some(r) = &a.role {
        Recipients::Role(AgentRole::new(r.as_str()).context("--role")?)
    } else {
        Recipients::All
    };
    let send_one = |payload: Value| -> anyhow::Result<()> {
        let msg = Message::new(ctx.agent.clone(), recipients.clone(), payload);
        let r = ch.send_blocking(&msg)?;
        let line = SentLine {
            channel: &a.channel,
            position: r.position,
            id: r.id.to_string(),
        };
        ctx.emit_line(&line, || format!("{} {}", r.position, r.id))
    };
    if let Some(d) = &a.data {
        send_one(parse_json(d, "--data")?)?;
    } else {
        for (i, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("reading stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            send_one(parse_json(&line, &format!("stdin line {}", i + 1))?)?;
        }
    }
    Ok(Exit::Ok)
}

#[derive(Serialize)]
struct MessageLine<'a> {
    channel: &'a str,
    position: u64,
    #[serde(flatten)]
    message: &'a Message<Value>,
}

fn print_message(ctx: &Ctx, channel: &str, d: &Delivered<Value>) -> anyhow::Result<()> {
    let line = MessageLine {
        channel,
        position: d.position,
        message: &d.message,
    };
    ctx.emit_line(&line, || {
        format!(
            "#{} {} from {}: {}",
            d.position, d.message.id, d.message.sender, d.message.payload
        )
    })
}

fn print_pruned(ctx: &Ctx, p: &Pruned) -> anyhow::Result<()> {
    eprintln!("maos: warning: {p}");
    ctx.emit_line(&serde_json::json!({ "pruned": p }), || format!("! {p}"))
}

fn print_problem(p: &Problem) {
    eprintln!("maos: warning: {p}");
}

fn print_notices(ctx: &Ctx, notices: Vec<Notice>) -> anyhow::Result<()> {
    for n in notices {
        match n {
            Notice::Pruned(p) => print_pruned(ctx, &p)?,
            Notice::Problem(p) => print_problem(&p),
            _ => {}
        }
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn timed_out(what: &str, d: Duration) -> anyhow::Error {
    Failure::error(Exit::Busy, format!("no new {what} within {}", humanize(d)))
}

fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn recv(a: RecvArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let ch = open(&ws, &a.channel)?;
    let filter = if a.everything {
        Filter::Everything
    } else {
        Filter::for_agent(&ws, ctx.agent.clone())?
    };
    let mut consumer = match &a.consumer {
        Some(n) => Some(ch.consumer(Name::new(n.as_str()).context("--consumer")?, filter.clone())?),
        None => None,
    };
    let mut cursor = match (&consumer, a.after) {
        (Some(c), _) => c.cursor(),
        (None, Some(p)) => Cursor::after(p),
        (None, None) => Cursor::start(),
    };
    let limit = a.stream.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    // Drain what is there.
    loop {
        let batch = ch.receive_blocking::<Value>(&cursor, &filter)?;
        if let Some(p) = &batch.pruned {
            print_pruned(ctx, p)?;
        }
        batch.problems.iter().for_each(print_problem);
        let progressed = batch.cursor.position != cursor.position;
        for d in &batch.messages {
            if printed >= limit {
                break;
            }
            print_message(ctx, &a.channel, d)?;
            printed += 1;
            cursor = Cursor::after(d.position);
        }
        if printed >= limit {
            // Acknowledge through the last message printed, not the rest of the batch.
            if let Some(c) = consumer.as_mut() {
                c.ack(cursor)?;
            }
            return Ok(Exit::Ok);
        }
        cursor = batch.cursor;
        // One acknowledgement per batch, after printing it (at-least-once).
        if let Some(c) = consumer.as_mut().filter(|_| progressed) {
            c.ack(cursor)?;
        }
        if !progressed {
            break;
        }
    }
    if !a.stream.follow {
        return Ok(Exit::Ok);
    }
    let rt = runtime()?;
    rt.block_on(async {
        let mut w = ChannelWatcher::from_cursor(ch.clone(), cursor, filter)?;
        loop {
            let next = match a.stream.timeout {
                Some(t) => match w.next_timeout::<Value>(t).await? {
                    Some(d) => d,
                    None => return Err(timed_out("message", t)),
                },
                None => w.next::<Value>().await?,
            };
            print_notices(ctx, w.take_notices())?;
            print_message(ctx, &a.channel, &next)?;
            if let Some(c) = consumer.as_mut() {
                c.ack(Cursor::after(next.position))?;
            }
            printed += 1;
            if printed >= limit {
                return Ok(Exit::Ok);
            }
        }
    })
}

#[derive(Serialize)]
struct BroadcastLine<'a> {
    topic: &'a str,
    position: u64,
    id: String,
}

fn broadcast(a: BroadcastArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let payload = parse_json(&a.data, "--data")?;
    let b = BroadcastChannel::new(&ws, ctx.agent.clone());
    let r = b.broadcast_blocking(&a.topic, &payload)?;
    let line = BroadcastLine {
        topic: &a.topic,
        position: r.position,
        id: r.id.to_string(),
    };
    ctx.emit_line(&line, || format!("{} {} {}", a.topic, r.position, r.id))?;
    Ok(Exit::Ok)
}

#[derive(Serialize)]
struct TopicLine<'a> {
    topic: &'a str,
    position: u64,
    feed_position: u64,
    #[serde(flatten)]
    message: &'a Message<Value>,
}

fn print_topic(ctx: &Ctx, m: &TopicMessage<Value>) -> anyhow::Result<()> {
    let line = TopicLine {
        topic: &m.topic,
        position: m.position,
        feed_position: m.position,
        message: &m.message,
    };
    ctx.emit_line(&line, || {
        format!(
            "{} #{} from {}: {}",
            m.topic, m.position, m.message.sender, m.message.payload
        )
    })
}

fn subscribe(a: SubscribeArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let patterns: Vec<&str> = a.topics.iter().map(String::as_str).collect();
    let durable = a.consumer.is_some();
    let mut sub = match &a.consumer {
        Some(n) => {
            Subscription::durable(&ws, &patterns, Name::new(n.as_str()).context("--consumer")?)?
        }
        None => Subscription::new(&ws, &patterns, Cursor::start())?,
    };
    let limit = a.stream.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut handle = |sub: &mut Subscription, m: &TopicMessage<Value>| -> anyhow::Result<bool> {
        print_topic(ctx, m)?;
        if durable {
            sub.ack_through(m.position)?;
        }
        printed += 1;
        Ok(printed >= limit)
    };
    for m in sub.poll_blocking::<Value>()? {
        if handle(&mut sub, &m)? {
            return Ok(Exit::Ok);
        }
    }
    print_notices(ctx, sub.take_notices())?;
    if durable {
        let c = sub.cursor();
        sub.ack_through(c.position)?;
    }
    if !a.stream.follow {
        return Ok(Exit::Ok);
    }
    let rt = runtime()?;
    rt.block_on(async {
        loop {
            let m = match a.stream.timeout {
                Some(t) => match sub.next_timeout::<Value>(t).await? {
                    Some(m) => m,
                    None => return Err(timed_out("message on the subscribed topics", t)),
                },
                None => sub.next::<Value>().await?,
            };
            print_notices(ctx, sub.take_notices())?;
            if handle(&mut sub, &m)? {
                return Ok(Exit::Ok);
            }
        }
    })
}

fn channels(ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let stats = channel_stats(&ws)?;
    ctx.emit(&stats, || {
        let mut s = format!(
            "{:<40} {:>10} {:>10} {:>10}\n",
            "CHANNEL", "MESSAGES", "NEWEST", "BYTES"
        );
        for c in &stats {
            s.push_str(&format!(
                "{:<40} {:>10} {:>10} {:>10}\n",
                c.name.as_str(),
                c.count,
                c.newest,
                c.bytes
            ));
        }
        s
    })?;
    Ok(Exit::Ok)
}

fn prune(a: PruneArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let ws = ctx.workspace()?;
    let ch = open(&ws, &a.channel)?;
    let retention = match (a.keep, a.older_than) {
        (Some(n), _) => Retention::Keep(n),
        (None, Some(d)) => Retention::OlderThan(d),
        (None, None) => anyhow::bail!("give --keep N or --older-than D"),
    };
    let rep = ch.prune_blocking(retention)?;
    ctx.emit(&rep, || {
        let kept = if rep.oldest > rep.newest {
            "no message kept".to_string()
        } else {
            format!("positions {}..{} kept", rep.oldest, rep.newest)
        };
        if rep.segments_removed == 0 {
            format!("{}: nothing to prune ({kept})", a.channel)
        } else {
            format!(
                "{}: removed {} segment(s), positions up to {} pruned; {kept}",
                a.channel, rep.segments_removed, rep.pruned_through
            )
        }
    })?;
    Ok(Exit::Ok)
}
