//! Power cuts in the middle of channel traffic (issue 11): a workload of senders, a durable
//! consumer and broadcasts runs in this process under `fsx::sim`, then hundreds of cut points
//! (thousands with `MAOS_SLOW_TESTS=1`) rebuild what the disk could hold after a power loss
//! and check, on a restarted workspace:
//! - every acknowledged message is present once, at its position, in send order;
//! - a consumer's stored cursor is never ahead of its log, and never behind what it
//!   acknowledged;
//! - no position that was ever visible is handed out again;
//! - every acknowledged broadcast reaches topic readers and wildcard subscribers.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use maos_coordination::comm::{
    BroadcastChannel, ChannelOptions, Cursor, FileChannel, Filter, GapCause, Inbox, Notice,
    Retention, Subscription, topic_channel,
};
use maos_coordination::core::fsx::sim::{Cut, Recording};
use maos_coordination::core::{MessageId, Name};
use maos_coordination::{AgentId, ChannelName, Message, Recipients, Workspace};

const CHANNEL: &str = "work";

/// A scratch directory in memory when the machine has one (`fsync` costs nothing there; the
/// simulation, not the disk, decides what survives).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

fn options(boot: &str) -> ChannelOptions {
    ChannelOptions::default()
        .boot_id(boot)
        .reserve(8)
        .segment_size(900)
        .file_events(false)
}

fn feed_options(boot: &str) -> ChannelOptions {
    options(boot).retain(Some(Retention::Segments(4)))
}

/// What the workload saw acknowledged, with the recording length right after each
/// acknowledgement (a cut at or after it must keep it).
#[derive(Default)]
struct Acks {
    /// (ops recorded, position, id, sender, seq)
    sends: Vec<(usize, u64, MessageId, String, u64)>,
    /// (ops recorded, acknowledged position)
    consumer: Vec<(usize, u64)>,
    /// (ops recorded, feed position, id, topic)
    broadcasts: Vec<(usize, u64, MessageId, String)>,
    /// (ops recorded, channel, position of the last item acknowledged there) by an inbox
    inbox: Vec<(usize, String, u64)>,
}

fn workload(root: &Path, rec: &Recording, per_sender: u64) -> Acks {
    let ws = Workspace::open(root).unwrap();
    Inbox::open_with(&ws, AgentId::new("me").unwrap(), options("before"))
        .unwrap()
        .subscribe(&["build/*"])
        .unwrap();
    let acks = Mutex::new(Acks::default());
    let done = AtomicBool::new(false);
    // Senders wait for the consumer every few messages, so that it acknowledges along the way
    // however fast the disk is.
    let consumed = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in ["a", "b"] {
            let (ws, acks, consumed) = (&ws, &acks, &consumed);
            s.spawn(move || {
                let ch = FileChannel::open_with(
                    ws,
                    ChannelName::new(CHANNEL).unwrap(),
                    options("before"),
                )
                .unwrap();
                let me = AgentId::new(w).unwrap();
                for i in 0..per_sender {
                    let m = Message::new(
                        me.clone(),
                        Recipients::All,
                        serde_json::json!({"w": w, "i": i}),
                    );
                    let r = ch.send_blocking(&m).unwrap();
                    acks.lock()
                        .unwrap()
                        .sends
                        .push((rec.len(), r.position, r.id, w.into(), i));
                    if i % 5 == 4 {
                        while consumed.load(Ordering::SeqCst) < r.position {
                            std::thread::yield_now();
                        }
                    }
                }
            });
        }
        {
            let (ws, acks) = (&ws, &acks);
            s.spawn(move || {
                let b = BroadcastChannel::with_options(
                    ws,
                    AgentId::new("ci").unwrap(),
                    feed_options("before"),
                );
                for i in 0..per_sender {
                    let topic = if i % 2 == 0 { "build/done" } else { "test/ran" };
                    let r = b.broadcast_blocking(topic, &i).unwrap();
                    acks.lock().unwrap().broadcasts.push((
                        rec.len(),
                        r.position,
                        r.id,
                        topic.into(),
                    ));
                }
            });
        }
        let (ws, acks, done, consumed) = (&ws, &acks, &done, &consumed);
        s.spawn(move || {
            let ch =
                FileChannel::open_with(ws, ChannelName::new(CHANNEL).unwrap(), options("before"))
                    .unwrap();
            let mut c = ch
                .consumer(Name::new("worker").unwrap(), Filter::Everything)
                .unwrap();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let b = c.receive_blocking::<serde_json::Value>().unwrap();
                if b.messages.is_empty() && finished {
                    break;
                }
                if b.cursor.position > c.cursor().position {
                    c.ack(b.cursor).unwrap();
                    acks.lock()
                        .unwrap()
                        .consumer
                        .push((rec.len(), b.cursor.position));
                    consumed.store(b.cursor.position, Ordering::SeqCst);
                }
                std::thread::yield_now();
            }
        });
        // The senders end on their own; then let the consumer drain and stop.
        while acks.lock().unwrap().sends.len() < 2 * per_sender as usize
            || acks.lock().unwrap().broadcasts.len() < per_sender as usize
        {
            std::thread::yield_now();
        }
        done.store(true, Ordering::SeqCst);
    });
    acks.into_inner().unwrap()
}

/// Every position a reader of the full image (all operations up to `at` kept) can see.
fn visible_max(rec: &Recording, at: usize) -> u64 {
    let dir = scratch();
    let all = Cut {
        at,
        keep_unsynced: rec.unsynced_before(at),
        tear: None,
    };
    rec.image(&all, dir.path()).unwrap();
    let Ok(ws) = Workspace::open(dir.path()) else {
        return 0;
    };
    let ch =
        FileChannel::open_with(&ws, ChannelName::new(CHANNEL).unwrap(), options("probe")).unwrap();
    read_everything(&ch).0.last().map_or(0, |d| d.0)
}

/// (position, id, sender, seq) of one message.
type Seen = (u64, MessageId, String, u64);

/// Every message, and the causes of the gaps reported.
fn read_everything(ch: &FileChannel) -> (Vec<Seen>, Vec<GapCause>) {
    let mut cur = Cursor::start();
    let mut out = Vec::new();
    let mut causes = Vec::new();
    loop {
        let b = ch
            .receive_blocking::<serde_json::Value>(&cur, &Filter::Everything)
            .unwrap();
        assert!(b.ahead.is_none(), "{:?}", b.ahead);
        causes.extend(b.gaps.iter().map(|g| g.cause));
        for d in &b.messages {
            let p = &d.message.payload;
            out.push((
                d.position,
                d.message.id,
                p["w"].as_str().unwrap_or_default().to_string(),
                p["i"].as_u64().unwrap_or_default(),
            ));
        }
        if b.cursor == cur {
            break;
        }
        cur = b.cursor;
    }
    (out, causes)
}

fn check_cut(rec: &Recording, acks: &Acks, cut: Cut) {
    let what = format!("{cut:?}");
    let dir = scratch();
    rec.image(&cut, dir.path()).unwrap();
    let Ok(ws) = Workspace::open(dir.path()) else {
        // Before the workspace itself was made durable: nothing can have been acknowledged.
        assert!(acks.sends.iter().all(|a| a.0 > cut.at), "{what}");
        return;
    };
    let name = ChannelName::new(CHANNEL).unwrap();
    let ch = FileChannel::open_with(&ws, name.clone(), options("after")).unwrap();
    let (msgs, causes) = read_everything(&ch);
    assert!(
        !causes.contains(&GapCause::Damage),
        "{what}: a power cut is not damage: {causes:?}"
    );
    // Positions strictly increase and no message appears twice.
    assert!(msgs.windows(2).all(|w| w[0].0 < w[1].0), "{what}: {msgs:?}");
    let ids: HashSet<_> = msgs.iter().map(|m| m.1).collect();
    assert_eq!(ids.len(), msgs.len(), "{what}: a message appears twice");
    // Each sender's messages in send order.
    let mut last: HashMap<&str, u64> = HashMap::new();
    for m in &msgs {
        if let Some(prev) = last.insert(m.2.as_str(), m.3) {
            assert!(prev < m.3, "{what}: sender {} out of order", m.2);
        }
    }
    // Every acknowledged send is there, at its position.
    let by_pos: HashMap<u64, MessageId> = msgs.iter().map(|m| (m.0, m.1)).collect();
    for a in acks.sends.iter().filter(|a| a.0 <= cut.at) {
        assert_eq!(
            by_pos.get(&a.1),
            Some(&a.2),
            "{what}: acknowledged message at {} lost",
            a.1
        );
    }
    // The consumer is never ahead of its log, and keeps what it acknowledged.
    let newest = msgs.last().map_or(0, |m| m.0);
    let c = ch
        .consumer(Name::new("worker").unwrap(), Filter::Everything)
        .unwrap();
    assert!(
        c.cursor().position <= newest,
        "{what}: consumer at {} ahead of {newest}",
        c.cursor().position
    );
    let acked = acks
        .consumer
        .iter()
        .filter(|a| a.0 <= cut.at)
        .map(|a| a.1)
        .max()
        .unwrap_or(0);
    assert!(
        c.cursor().position >= acked,
        "{what}: acknowledged {acked}, stored {}",
        c.cursor().position
    );
    let b = c.receive_blocking::<serde_json::Value>().unwrap();
    assert!(b.ahead.is_none(), "{what}");
    // No position ever visible before the cut is handed out again.
    let seen = visible_max(rec, cut.at);
    let r = ch
        .send_blocking(&Message::new(
            AgentId::new("later").unwrap(),
            Recipients::All,
            0,
        ))
        .unwrap();
    assert!(
        r.position > seen,
        "{what}: position {} reused (visible before the cut: {seen})",
        r.position
    );
    // Acknowledged broadcasts: on the feed, in their topic, and to wildcard subscribers.
    let acked_b: Vec<_> = acks.broadcasts.iter().filter(|a| a.0 <= cut.at).collect();
    let mut sub =
        Subscription::new_with(&ws, &["**"], Cursor::start(), feed_options("after")).unwrap();
    let got = sub.poll_blocking::<u64>().unwrap();
    let pruned_through = sub
        .take_notices()
        .iter()
        .filter_map(|n| match n {
            Notice::Pruned(p) => Some(p.to),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let got_ids: HashSet<MessageId> = got.iter().map(|m| m.message.id).collect();
    assert_eq!(
        got_ids.len(),
        got.len(),
        "{what}: a subscriber saw a broadcast twice"
    );
    for a in &acked_b {
        if a.1 > pruned_through {
            assert!(
                got_ids.contains(&a.2),
                "{what}: acknowledged broadcast {} lost",
                a.1
            );
        }
    }
    // An inbox never shows again what it acknowledged, and is never ahead of a channel.
    let mut inbox = Inbox::open_with(&ws, AgentId::new("me").unwrap(), options("after")).unwrap();
    let mut acked_in: HashMap<String, u64> = HashMap::new();
    for a in acks.inbox.iter().filter(|a| a.0 <= cut.at) {
        let e = acked_in.entry(a.1.clone()).or_default();
        *e = (*e).max(a.2);
    }
    loop {
        let batch = inbox.read(50).unwrap();
        for (ch, n) in &batch.notices {
            assert!(
                !matches!(n, Notice::Ahead(_)),
                "{what}: inbox ahead on {ch}: {n}"
            );
        }
        for it in &batch.items {
            let ch = if it.topic.is_some() {
                "broadcast/global"
            } else {
                CHANNEL
            };
            let done = acked_in.get(ch).copied().unwrap_or(0);
            assert!(
                it.position > done,
                "{what}: the inbox showed {ch} #{} again",
                it.position
            );
        }
        if batch.items.is_empty() {
            break;
        }
        inbox.ack(&batch).unwrap();
    }
    let view = FileChannel::open_with(
        &ws,
        topic_channel("build/done").unwrap(),
        feed_options("after"),
    )
    .unwrap();
    let mut cur = Cursor::start();
    let mut in_topic = HashSet::new();
    loop {
        let b = view
            .receive_blocking::<u64>(&cur, &Filter::Everything)
            .unwrap();
        in_topic.extend(b.messages.iter().map(|d| d.message.id));
        if b.cursor == cur {
            break;
        }
        cur = b.cursor;
    }
    for a in acked_b
        .iter()
        .filter(|a| a.3 == "build/done" && a.1 > pruned_through)
    {
        assert!(
            in_topic.contains(&a.2),
            "{what}: broadcast {} missing from its topic",
            a.1
        );
    }
}

#[test]
fn acknowledged_messages_survive_any_power_cut_and_positions_are_never_reused() {
    let slow = maos_tests::slow_tests();
    let (per_sender, cuts) = if slow { (60, 3000) } else { (25, 300) };
    let dir = scratch();
    Workspace::init(dir.path()).unwrap();
    let rec = Recording::start(dir.path()).unwrap();
    let acks = workload(dir.path(), &rec, per_sender);
    let total = rec.len();
    assert!(
        acks.consumer.len() > 1,
        "the consumer acknowledged along the way"
    );
    // Right after each acknowledgement, with nothing unsynced surviving...
    for a in acks.sends.iter().step_by(5) {
        check_cut(&rec, &acks, Cut::durable_only(a.0));
    }
    // ... and anywhere, keeping a random part of the unsynced tail, sometimes torn.
    for seed in 0..cuts {
        check_cut(&rec, &acks, rec.random_cut(seed));
    }
    check_cut(&rec, &acks, Cut::durable_only(total));
}
