//! `maos send`, `recv`, `broadcast`, `subscribe`, `unsubscribe`, `inbox`, `channels`: the comm
//! commands.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use maos_coordination::comm::Error as CommError;
use maos_coordination::comm::{
    AgentInbox, Delivered, Filter, Gap, GapCause, InboxItem, Notice, Problem, Pruned, RawPayload,
    Retention, Start, TopicMessage, TopicReader,
};
use maos_coordination::core::{AgentStore, Name, escape_controls, excerpt};
use maos_coordination::{AgentId, AgentRole, ChannelName, Message, Recipients};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::duration;
use crate::exit::{Exit, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum CommCommand {
    /// Send a message to a channel; prints its position and id once it is durable.
    Send(SendArgs),
    /// Read the messages of a channel addressed to you (JSON Lines with --json).
    Recv(RecvArgs),
    /// Publish a message on a topic (one record on the broadcast feed, broadcast/global).
    Broadcast(BroadcastArgs),
    /// Read the broadcasts on the topics matching the patterns (`build/*`, `deploy/**`), or
    /// store them for your inbox with --durable.
    Subscribe(SubscribeArgs),
    /// Remove topic patterns stored with `subscribe --durable`.
    Unsubscribe(UnsubscribeArgs),
    /// Everything addressed to you, from every channel and your stored subscriptions; shown
    /// messages are acknowledged (never shown again).
    Inbox(InboxArgs),
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
    /// The payload, a JSON value (passed through byte for byte).
    #[arg(long, group = "input", value_name = "JSON")]
    data: Option<String>,
    /// Read payloads from stdin, one JSON value per line; one line is printed per message
    /// once it is durable.
    #[arg(long, group = "input")]
    stdin: bool,
    /// How long to wait for the channel's lock when another process holds it (exit 3 after,
    /// naming the holder).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "10s")]
    wait: Duration,
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

/// How long a reading command goes on: shared by `recv`, `subscribe` and `inbox`.
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
    /// The payload, a JSON value (passed through byte for byte).
    #[arg(long, value_name = "JSON")]
    data: String,
    /// How long to wait for the broadcast feed's lock when another process holds it (exit 3
    /// after, naming the holder).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "10s")]
    wait: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct SubscribeArgs {
    /// Topic patterns: `*` matches one segment, `**` any number.
    #[arg(required = true, value_name = "TOPIC")]
    topics: Vec<String>,
    /// Store the patterns as your subscriptions: `maos inbox` then brings the matching
    /// broadcasts published from now on. Prints the stored list and exits.
    #[arg(long, conflicts_with_all = ["consumer", "follow", "count", "timeout"])]
    durable: bool,
    /// A durable reader: continue after its acknowledged position.
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    #[command(flatten)]
    stream: StreamArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UnsubscribeArgs {
    /// The patterns to remove, as they were stored.
    #[arg(required = true, value_name = "TOPIC")]
    topics: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    /// Print the number of unread messages (per channel) instead of the messages; nothing is
    /// acknowledged.
    #[arg(long, conflicts_with_all = ["follow", "count", "timeout", "peek", "subscriptions"])]
    unread: bool,
    /// Print the messages without acknowledging them.
    #[arg(long, conflicts_with = "follow")]
    peek: bool,
    /// Print your stored topic subscriptions.
    #[arg(long, conflicts_with_all = ["follow", "count", "timeout", "peek"])]
    subscriptions: bool,
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
        CommCommand::Unsubscribe(a) => unsubscribe(a, ctx),
        CommCommand::Inbox(a) => inbox(a, ctx),
        CommCommand::Channels(a) => match a.command.unwrap_or(ChannelsCommand::List) {
            ChannelsCommand::List => channels(ctx),
            ChannelsCommand::Prune(p) => prune(p, ctx),
        },
    }
}

fn channel_name(s: &str) -> anyhow::Result<ChannelName> {
    ChannelName::new(s).with_context(|| format!("channel {:?}", excerpt(s, 80)))
}

/// The largest input line `--stdin` accepts: a message's limit plus room for the envelope.
const MAX_STDIN_LINE: usize = maos_coordination::comm::DEFAULT_MAX_MESSAGE + 4096;

/// Parses a JSON payload, keeping its text exactly; the error quotes a short excerpt.
fn parse_json(s: &str, what: &str) -> anyhow::Result<RawPayload> {
    serde_json::from_str::<RawPayload>(s).map_err(|e| {
        anyhow::anyhow!(
            "{what} is not valid JSON ({e}): {:?} (a JSON value is needed, e.g. '\"text\"', '42' \
             or '{{\"k\":1}}')",
            excerpt(s, 60)
        )
    })
}

#[derive(Serialize)]
struct SentLine<'a> {
    channel: &'a str,
    position: u64,
    id: String,
}

fn recipients(a: &SendArgs) -> anyhow::Result<Recipients> {
    Ok(if let Some(to) = &a.to {
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
    })
}

fn send(a: SendArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let name = channel_name(&a.channel)?;
    let recipients = recipients(&a)?;
    // Check the input before touching the workspace.
    let first = a
        .data
        .as_deref()
        .map(|d| parse_json(d, "--data"))
        .transpose()?;
    let store = ctx.backends()?.channels();
    let send_one = |payload: RawPayload| -> anyhow::Result<()> {
        let msg = Message::new(ctx.agent.clone(), recipients.clone(), payload);
        let r = store.send(&name, &msg, a.wait)?;
        let line = SentLine {
            channel: &a.channel,
            position: r.position,
            id: r.id.to_string(),
        };
        ctx.emit_line(&line, || format!("{} {}", r.position, r.id))
    };
    if let Some(p) = first {
        send_one(p)?;
        return Ok(Exit::Ok);
    }
    let mut input = std::io::stdin().lock();
    let mut n = 0u64;
    while let Some(line) = read_bounded_line(&mut input, MAX_STDIN_LINE)
        .with_context(|| format!("stdin line {}", n + 1))?
    {
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        send_one(parse_json(&line, &format!("stdin line {n}"))?)?;
    }
    Ok(Exit::Ok)
}

/// Reads one line (without its `\n`) of at most `limit` bytes; `None` at the end of input.
fn read_bounded_line(
    r: &mut impl std::io::BufRead,
    limit: usize,
) -> anyhow::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().context("reading stdin")?;
        if buf.is_empty() {
            break;
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > limit + 1 {
            anyhow::bail!(
                "longer than {limit} bytes, more than any message can be (one JSON value per line)"
            );
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            break;
        }
    }
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| anyhow::anyhow!("not UTF-8 text"))
}

#[derive(Serialize)]
struct MessageLine<'a> {
    channel: &'a str,
    position: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(flatten)]
    message: &'a Message<RawPayload>,
}

fn human_message(position: u64, m: &Message<RawPayload>) -> String {
    format!(
        "#{position} {} from {}: {}",
        m.id,
        m.sender,
        escape_controls(m.payload.get())
    )
}

fn print_message(ctx: &Ctx, channel: &str, d: &Delivered<RawPayload>) -> anyhow::Result<()> {
    let line = MessageLine {
        channel,
        position: d.position,
        topic: None,
        message: &d.message,
    };
    ctx.emit_line(&line, || human_message(d.position, &d.message))
}

fn print_pruned(ctx: &Ctx, p: &Pruned) -> anyhow::Result<()> {
    eprintln!("maos: warning: {p}");
    ctx.emit_line(&serde_json::json!({ "pruned": p }), || format!("! {p}"))
}

fn print_gap(ctx: &Ctx, g: &Gap) -> anyhow::Result<()> {
    let level = if g.cause == GapCause::Restart {
        "note"
    } else {
        "warning"
    };
    eprintln!("maos: {level}: {g}");
    ctx.emit_line(&serde_json::json!({ "gap": g }), || format!("! {g}"))
}

fn print_ahead(ctx: &Ctx, a: &maos_coordination::comm::Ahead) -> anyhow::Result<()> {
    eprintln!("maos: warning: {a}");
    ctx.emit_line(&serde_json::json!({ "ahead": a }), || format!("! {a}"))
}

fn print_problem(p: &Problem) {
    eprintln!("maos: warning: {}", escape_controls(&p.to_string()));
}

fn print_notice(ctx: &Ctx, n: &Notice) -> anyhow::Result<()> {
    match n {
        Notice::Pruned(p) => print_pruned(ctx, p)?,
        Notice::Problem(p) => print_problem(p),
        Notice::Gap(g) => print_gap(ctx, g)?,
        Notice::Ahead(a) => print_ahead(ctx, a)?,
        _ => {}
    }
    Ok(())
}

fn timed_out(what: &str, d: Duration) -> anyhow::Error {
    Failure::error(
        Exit::Busy,
        format!(
            "no new {what} within {}",
            maos_coordination::core::human_duration(d)
        ),
    )
}

/// Says why messages addressed to a role were not shown to a reader without one.
fn role_hint(agents: &dyn AgentStore, agent: &AgentId, channel: &str, skipped: usize) {
    if skipped == 0 {
        return;
    }
    let who = if agent.as_str() == AgentId::DEFAULT {
        "you act as the anonymous agent (set MAOS_AGENT_ID or --agent, then `maos agents \
         register --role ROLE`)"
            .to_string()
    } else {
        let registered = agents
            .list()
            .is_ok_and(|(all, _)| all.iter().any(|a| &a.record.id == agent));
        if registered {
            format!(
                "agent {agent} is registered without a role (`maos agents register --role ROLE`)"
            )
        } else {
            format!("agent {agent} is not registered (`maos agents register --role ROLE`)")
        }
    };
    eprintln!(
        "maos: note: {skipped} message(s) on {channel} addressed to a role were not shown: {who}; \
         --everything shows every message"
    );
}

/// Prints what a read says besides its messages.
fn print_read_notices(ctx: &Ctx, notices: &[Notice], warnings: &[String]) -> anyhow::Result<()> {
    notices.iter().try_for_each(|n| print_notice(ctx, n))?;
    for w in warnings {
        eprintln!("maos: warning: {}", escape_controls(w));
    }
    Ok(())
}

fn recv(a: RecvArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let name = channel_name(&a.channel)?;
    let backends = ctx.backends()?;
    let store = backends.channels();
    let filter = if a.everything {
        Filter::Everything
    } else {
        store.filter_for(ctx.agent.clone())?
    };
    let start = match (&a.consumer, a.after) {
        (Some(n), _) => Start::Consumer(Name::new(n.as_str()).context("--consumer")?),
        (None, Some(p)) => Start::After(p),
        (None, None) => Start::After(0),
    };
    let durable = a.consumer.is_some();
    let mut reader = match store.reader(&name, start.clone(), filter.clone(), false) {
        // A follower may start before the channel's first message: it waits for it.
        Err(CommError::NoSuchChannel { .. }) if a.stream.follow => {
            eprintln!(
                "maos: note: channel {name} has no messages yet; waiting for the first \
                 (`maos channels` lists the existing ones)"
            );
            store.reader(&name, start, filter, true)?
        }
        other => other?,
    };
    let limit = a.stream.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut role_skipped = 0usize;
    let agents = backends.agents();
    // Drain what is there.
    loop {
        let batch = reader.read()?;
        print_read_notices(ctx, &batch.notices, &batch.warnings)?;
        role_skipped += batch.skipped_for_role;
        for d in &batch.messages {
            if printed >= limit {
                break;
            }
            print_message(ctx, &a.channel, d)?;
            printed += 1;
            if printed >= limit {
                // Acknowledge through the last message printed, not the rest of the batch.
                if durable {
                    reader.ack(d.position)?;
                }
                role_hint(agents.as_ref(), &ctx.agent, &a.channel, role_skipped);
                return Ok(Exit::Ok);
            }
        }
        // One acknowledgement per batch, after printing it (at-least-once).
        if durable && batch.progressed {
            reader.ack(batch.cursor)?;
        }
        if !batch.progressed {
            break;
        }
    }
    role_hint(agents.as_ref(), &ctx.agent, &a.channel, role_skipped);
    if !a.stream.follow {
        return Ok(Exit::Ok);
    }
    let mut idle = Idle::new(a.stream.timeout);
    loop {
        let wait = idle.next_wait("message")?;
        let batch = reader.wait(wait)?;
        print_read_notices(ctx, &batch.notices, &batch.warnings)?;
        if !batch.messages.is_empty() {
            idle.saw_one();
        }
        for d in &batch.messages {
            print_message(ctx, &a.channel, d)?;
            if durable {
                reader.ack(d.position)?;
            }
            printed += 1;
            if printed >= limit {
                return Ok(Exit::Ok);
            }
        }
        if durable && batch.progressed && batch.messages.is_empty() {
            reader.ack(batch.cursor)?;
        }
    }
}

#[derive(Serialize)]
struct BroadcastLine<'a> {
    topic: &'a str,
    position: u64,
    id: String,
}

fn broadcast(a: BroadcastArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let payload = parse_json(&a.data, "--data")?;
    let store = ctx.backends()?.channels();
    let r = store.broadcast(&ctx.agent, &a.topic, &payload, a.wait)?;
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
    #[serde(flatten)]
    message: &'a Message<RawPayload>,
}

fn print_topic(ctx: &Ctx, m: &TopicMessage<RawPayload>) -> anyhow::Result<()> {
    let line = TopicLine {
        topic: &m.topic,
        position: m.position,
        message: &m.message,
    };
    ctx.emit_line(&line, || {
        format!(
            "{} #{} from {}: {}",
            m.topic,
            m.position,
            m.message.sender,
            escape_controls(m.message.payload.get())
        )
    })
}

#[derive(Serialize)]
struct SubscriptionsLine<'a> {
    agent: &'a str,
    subscriptions: &'a [String],
}

fn print_subscriptions(ctx: &Ctx, inbox: &dyn AgentInbox) -> anyhow::Result<()> {
    let line = SubscriptionsLine {
        agent: ctx.agent.as_str(),
        subscriptions: inbox.subscriptions(),
    };
    ctx.emit(&line, || {
        if inbox.subscriptions().is_empty() {
            format!("{} has no stored subscriptions", ctx.agent)
        } else {
            format!(
                "{} is subscribed to: {}",
                ctx.agent,
                inbox.subscriptions().join(" ")
            )
        }
    })
}

fn subscribe(a: SubscribeArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let patterns: Vec<&str> = a.topics.iter().map(String::as_str).collect();
    if a.durable {
        let mut inbox = ctx.backends()?.inboxes().open(ctx.agent.clone())?;
        inbox.subscribe(&patterns)?;
        print_subscriptions(ctx, inbox.as_ref())?;
        return Ok(Exit::Ok);
    }
    let store = ctx.backends()?.channels();
    let durable = a.consumer.is_some();
    let consumer = a
        .consumer
        .as_deref()
        .map(|n| Name::new(n).context("--consumer"))
        .transpose()?;
    let mut sub = store.topic_reader(&patterns, consumer)?;
    let limit = a.stream.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut handle =
        |sub: &mut dyn TopicReader, m: &TopicMessage<RawPayload>| -> anyhow::Result<bool> {
            print_topic(ctx, m)?;
            if durable {
                sub.ack(m.position)?;
            }
            printed += 1;
            Ok(printed >= limit)
        };
    let first = sub.read()?;
    for m in &first.messages {
        if handle(sub.as_mut(), m)? {
            return Ok(Exit::Ok);
        }
    }
    print_read_notices(ctx, &first.notices, &first.warnings)?;
    if durable {
        sub.ack(first.cursor)?;
    }
    if !a.stream.follow {
        return Ok(Exit::Ok);
    }
    let mut idle = Idle::new(a.stream.timeout);
    loop {
        let wait = idle.next_wait("message on the subscribed topics")?;
        let got = sub.wait(wait)?;
        print_read_notices(ctx, &got.notices, &got.warnings)?;
        if !got.messages.is_empty() {
            idle.saw_one();
        }
        for m in &got.messages {
            if handle(sub.as_mut(), m)? {
                return Ok(Exit::Ok);
            }
        }
    }
}

fn unsubscribe(a: UnsubscribeArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let mut inbox = ctx.backends()?.inboxes().open(ctx.agent.clone())?;
    let patterns: Vec<&str> = a.topics.iter().map(String::as_str).collect();
    let removed = inbox.unsubscribe(&patterns)?;
    for p in patterns.iter().filter(|p| !removed.iter().any(|r| r == *p)) {
        eprintln!(
            "maos: note: {} was not among the stored subscriptions",
            escape_controls(p)
        );
    }
    print_subscriptions(ctx, inbox.as_ref())?;
    Ok(Exit::Ok)
}

fn print_item(ctx: &Ctx, item: &InboxItem) -> anyhow::Result<()> {
    let line = MessageLine {
        channel: item.channel.as_str(),
        position: item.position,
        topic: item.topic.as_deref(),
        message: &item.message,
    };
    ctx.emit_line(&line, || {
        format!(
            "{} {}",
            item.channel,
            human_message(item.position, &item.message)
        )
    })
}

fn inbox(a: InboxArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let mut inbox = ctx.backends()?.inboxes().open(ctx.agent.clone())?;
    if a.subscriptions {
        print_subscriptions(ctx, inbox.as_ref())?;
        return Ok(Exit::Ok);
    }
    if a.unread {
        let u = inbox.unread()?;
        ctx.emit(&u, || {
            let per: Vec<String> = u
                .channels
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            if per.is_empty() {
                "0 unread".to_string()
            } else {
                format!("{} unread ({})", u.total, per.join(", "))
            }
        })?;
        return Ok(Exit::Ok);
    }
    let limit = a.stream.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    // Set up the watch before the first read, so nothing arriving in between is missed.
    let watcher = if a.stream.follow {
        Some(inbox.watcher()?)
    } else {
        None
    };
    let mut idle = Idle::new(a.stream.timeout);
    loop {
        let want = (limit - printed).min(maos_coordination::comm::DEFAULT_INBOX_BATCH as u64);
        let batch = inbox.read(want as usize)?;
        for (channel, n) in &batch.notices {
            if let Notice::Problem(_) = n {
                print_notice(ctx, n)?;
            } else {
                eprint!("maos: {channel}: ");
                print_notice(ctx, n)?;
            }
        }
        for item in &batch.items {
            print_item(ctx, item)?;
        }
        printed += batch.items.len() as u64;
        if !a.peek {
            inbox.ack(&batch)?;
        }
        if printed >= limit || (a.peek && !a.stream.follow) {
            return Ok(Exit::Ok);
        }
        if batch.more {
            continue;
        }
        let Some(w) = &watcher else {
            return Ok(Exit::Ok);
        };
        if !batch.items.is_empty() {
            idle.saw_one();
        }
        let wait = idle.next_wait("message in the inbox")?;
        w.wait(wait);
    }
}

fn channels(ctx: &Ctx) -> anyhow::Result<Exit> {
    let stats = ctx.backends()?.channels().list()?;
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
    let name = channel_name(&a.channel)?;
    let backends = ctx.backends()?;
    // The files remove whole segments; the server removes messages one by one.
    let unit = if backends.is_file() {
        "segment(s)"
    } else {
        "message(s)"
    };
    let store = backends.channels();
    let retention = match (a.keep, a.older_than) {
        (Some(n), _) => Retention::Keep(n),
        (None, Some(d)) => Retention::OlderThan(d),
        (None, None) => anyhow::bail!("give --keep N or --older-than D"),
    };
    let rep = store.prune(&name, retention)?;
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
                "{}: removed {} {unit}, positions up to {} pruned; {kept}",
                a.channel, rep.segments_removed, rep.pruned_through
            )
        }
    })?;
    Ok(Exit::Ok)
}

/// A follower's idle time: `--timeout` counts from the last message it printed.
struct Idle {
    since: std::time::Instant,
    limit: Option<Duration>,
}

impl Idle {
    fn new(limit: Option<Duration>) -> Self {
        Self {
            since: std::time::Instant::now(),
            limit,
        }
    }

    /// How long the next wait may last, or the timeout (exit 3) naming what was awaited.
    fn next_wait(&self, what: &str) -> anyhow::Result<Duration> {
        match self.limit {
            Some(t) => {
                let spent = self.since.elapsed();
                if spent >= t {
                    return Err(timed_out(what, t));
                }
                Ok(t - spent)
            }
            None => Ok(Duration::from_secs(3600)),
        }
    }

    /// A message was printed: the idle time starts again.
    fn saw_one(&mut self) {
        self.since = std::time::Instant::now();
    }
}
