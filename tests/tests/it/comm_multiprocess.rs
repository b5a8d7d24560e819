//! maos-comm across real processes: the design's example, many writers and followers on one
//! channel, and a writer killed with SIGKILL mid-stream.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use maos_coordination::comm::{Cursor, FileChannel, Filter};
use maos_coordination::{AgentId, ChannelName, Message, Recipients, Workspace};

const CHANNEL: &str = "load";

/// Starts the test helper in `role` with `args`.
fn spawn(role: &str, args: &[&str]) -> Child {
    crate::helper(role)
        .args(args)
        .env_remove("MAOS_WORKSPACE")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {role} helper: {e}"))
}

/// Waits for the first line of a child's stdout and checks it.
fn expect_line(child: &mut Child, want: &str) -> BufReader<std::process::ChildStdout> {
    let mut r = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    r.read_line(&mut line).expect("read a line");
    assert_eq!(line.trim(), want, "unexpected first line");
    r
}

fn finish(child: Child, reader: Option<BufReader<std::process::ChildStdout>>) -> String {
    let mut rest = String::new();
    let mut child = child;
    if let Some(mut r) = reader {
        std::io::Read::read_to_string(&mut r, &mut rest).expect("read stdout");
        let st = child.wait().expect("wait");
        assert!(st.success(), "child failed: {st}");
        return rest;
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "child failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn coordinate_with_backend_across_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().to_str().unwrap();
    Workspace::init(dir.path()).unwrap();
    let bin = "comm_agent";
    let mut backend = spawn(bin, &[ws, "backend"]);
    let br = expect_line(&mut backend, "ready");
    let frontend = spawn(bin, &[ws, "frontend"]);
    let out = finish(frontend, None);
    assert_eq!(out.trim(), "Backend implemented 3 endpoints");
    let b = finish(backend, Some(br));
    assert_eq!(b.trim(), "replied at 2");
}

fn send_end(ws: &Path) {
    let ws = Workspace::open(ws).unwrap();
    let ch = FileChannel::open(&ws, ChannelName::new(CHANNEL).unwrap()).unwrap();
    let end = Message::new(
        AgentId::new("test").unwrap(),
        Recipients::All,
        serde_json::json!({ "end": true }),
    );
    ch.send_blocking(&end).unwrap();
}

/// Parses a follower's output: (position, writer, seq) per message.
fn parse_follower(out: &str) -> Vec<(u64, String, u64)> {
    out.lines()
        .map(|l| {
            assert!(!l.starts_with("notice"), "follower reported: {l}");
            let mut it = l.split(' ');
            let pos = it.next().unwrap().parse().unwrap();
            let w = it.next().unwrap().to_string();
            let seq = it
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|_| panic!("bad line {l}"));
            (pos, w, seq)
        })
        .collect()
}

fn per_writer(msgs: &[(u64, String, u64)]) -> HashMap<String, Vec<u64>> {
    let mut m: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, w, s) in msgs {
        m.entry(w.clone()).or_default().push(*s);
    }
    m
}

fn run_load(kill_one: bool) {
    let per = 2000;
    let dir = tempfile::tempdir().unwrap();
    Workspace::init(dir.path()).unwrap();
    let ws = dir.path().to_str().unwrap();
    let fbin = "comm_follower";
    let wbin = "comm_writer";
    let mut followers: Vec<_> = (0..2)
        .map(|_| {
            let mut c = spawn(fbin, &[ws, CHANNEL]);
            let r = expect_line(&mut c, "ready");
            (c, r)
        })
        .collect();
    let count = per.to_string();
    let mut writers: Vec<Child> = (0..4)
        .map(|i| spawn(wbin, &[ws, CHANNEL, &i.to_string(), &count]))
        .collect();
    // The victim: read its acknowledgements until a third of its messages are durable, then
    // SIGKILL it in the middle of its stream.
    let mut acked_by_victim: Vec<(u64, u64)> = Vec::new();
    if kill_one {
        let victim = &mut writers[3];
        let mut r = BufReader::new(victim.stdout.take().unwrap());
        let mut line = String::new();
        while acked_by_victim.len() < (per / 3) as usize {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "victim ended early");
            let mut it = line.split_whitespace().skip(1);
            let pos: u64 = it.next().unwrap().parse().unwrap();
            let seq: u64 = it.next().unwrap().parse().unwrap();
            acked_by_victim.push((pos, seq));
        }
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        // Acknowledgements printed before the kill landed count too.
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut r, &mut rest);
        for l in rest
            .lines()
            .filter(|l| l.ends_with(|c: char| c.is_ascii_digit()))
        {
            let mut it = l.split_whitespace().skip(1);
            if let (Some(p), Some(s)) = (it.next(), it.next())
                && let (Ok(p), Ok(s)) = (p.parse(), s.parse())
            {
                acked_by_victim.push((p, s));
            }
        }
    }
    let survivors = if kill_one { 3 } else { 4 };
    let mut acks: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for (i, w) in writers.into_iter().enumerate().take(survivors) {
        let out = finish(w, None);
        let v: Vec<(u64, u64)> = out
            .lines()
            .map(|l| {
                let mut it = l.split_whitespace().skip(1);
                (
                    it.next().unwrap().parse().unwrap(),
                    it.next().unwrap().parse().unwrap(),
                )
            })
            .collect();
        assert_eq!(v.len() as u64, per, "writer {i} acknowledged every message");
        acks.insert(i.to_string(), v);
    }
    if kill_one {
        acks.insert("3".into(), acked_by_victim);
    }
    send_end(dir.path());
    let outs: Vec<_> = followers
        .drain(..)
        .map(|(c, r)| parse_follower(&finish(c, Some(r))))
        .collect();

    // Both followers saw the same messages in the same order, each exactly once.
    assert_eq!(outs[0], outs[1], "followers disagree");
    let seen = &outs[0];
    let positions: Vec<u64> = seen.iter().map(|m| m.0).collect();
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(
        positions, expected,
        "positions are 1..n without gaps or repeats"
    );
    let by_writer = per_writer(seen);
    for w in 0..4 {
        let w = w.to_string();
        let got = by_writer.get(&w).cloned().unwrap_or_default();
        // Each writer's messages in its order, none lost, none repeated.
        let prefix: Vec<u64> = (0..got.len() as u64).collect();
        assert_eq!(got, prefix, "writer {w}'s messages in send order");
        // Every acknowledged message is there, at the acknowledged position.
        for &(pos, seq) in &acks[&w] {
            assert_eq!(
                seen[(pos - 1) as usize],
                (pos, w.clone(), seq),
                "ack of {w}"
            );
        }
        if !kill_one || w != "3" {
            assert_eq!(got.len() as u64, per);
        } else {
            eprintln!(
                "victim: {} acknowledged, {} present of {per}",
                acks[&w].len(),
                got.len()
            );
        }
    }
    // A reader of the whole channel finds nothing damaged: the killed writer's torn record
    // (if any) was never visible and was repaired by the next writer.
    let wsx = Workspace::open(dir.path()).unwrap();
    let ch = FileChannel::open(&wsx, ChannelName::new(CHANNEL).unwrap()).unwrap();
    let mut cur = Cursor::start();
    let mut total = 0;
    loop {
        let b = ch
            .receive_blocking::<serde_json::Value>(&cur, &Filter::Everything)
            .unwrap();
        assert!(b.problems.is_empty(), "{:?}", b.problems);
        if b.messages.is_empty() {
            break;
        }
        total += b.messages.len();
        cur = b.cursor;
    }
    assert_eq!(total, seen.len() + 1); // plus the end marker
}

#[test]
fn four_writers_two_followers_every_message_once_in_one_order() {
    run_load(false);
}

#[test]
fn a_writer_killed_mid_stream_leaves_no_partial_message_and_loses_no_ack() {
    // Under --slow, kill at more points of the stream.
    let rounds = if maos_tests::slow_tests() { 5 } else { 1 };
    for _ in 0..rounds {
        run_load(true);
    }
}
