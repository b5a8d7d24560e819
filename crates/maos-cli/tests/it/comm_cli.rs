//! `maos send`, `recv`, `broadcast`, `subscribe`, `channels`: the real binary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::util::{Exit, Maos, Run, json_lines as lines};

fn ok(cmd: &mut Command) -> String {
    Run::of(cmd).ok().stdout()
}

#[test]
fn send_and_recv_apply_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(Maos::new(ws)
        .agent("b1")
        .cmd()
        .args(["agents", "register", "--role", "backend"]));
    let sent = lines(&ok(Maos::new(ws).agent("f1").cmd().args([
        "send",
        "api",
        "--json",
        "--data",
        r#"{"n":1}"#,
    ])));
    assert_eq!(sent[0]["position"], 1);
    ok(Maos::new(ws)
        .agent("f1")
        .cmd()
        .args(["send", "api", "--to", "x9", "--data", "2"]));
    ok(Maos::new(ws)
        .agent("f1")
        .cmd()
        .args(["send", "api", "--role", "backend", "--data", "3"]));
    ok(Maos::new(ws)
        .agent("f1")
        .cmd()
        .args(["send", "api", "--group", "x9,b1", "--data", "4"]));
    let b1 = lines(&ok(Maos::new(ws)
        .agent("b1")
        .cmd()
        .args(["recv", "api", "--json"])));
    let got: Vec<_> = b1.iter().map(|m| m["payload"].clone()).collect();
    assert_eq!(got, [serde_json::json!({"n":1}), 3.into(), 4.into()]);
    assert_eq!(b1[1]["position"], 3);
    assert_eq!(b1[1]["sender"], "f1");
    let x9 = lines(&ok(Maos::new(ws)
        .agent("x9")
        .cmd()
        .args(["recv", "api", "--json", "--after", "1"])));
    let pos: Vec<_> = x9.iter().map(|m| m["position"].as_u64().unwrap()).collect();
    assert_eq!(pos, [2, 4]);
    let all = lines(&ok(Maos::new(ws).agent("z").cmd().args([
        "recv",
        "api",
        "--json",
        "--everything",
    ])));
    assert_eq!(all.len(), 4);
}

#[test]
fn send_stdin_acknowledges_each_message_when_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Maos::new(dir.path())
        .agent("a")
        .cmd()
        .args(["send", "q", "--stdin", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // One line in, one acknowledgement out, before the next line is even written.
    for i in 1..=3 {
        writeln!(input, "{{\"i\":{i}}}").unwrap();
        input.flush().unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["position"], i);
        assert!(v["id"].as_str().unwrap().len() == 36);
    }
    drop(input);
    assert!(child.wait().unwrap().success());
    // A bad line stops the stream with an error after what was acknowledged.
    let out = Maos::new(dir.path()).run_stdin(["send", "q", "--stdin"], b"1\nnot json\n2\n");
    out.assert_code(Exit::Error);
    assert_eq!(out.stdout().lines().count(), 1);
    out.stderr_has("stdin line 2");
}

#[test]
fn consumers_resume_and_follow_times_out_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    for i in 0..3 {
        ok(Maos::new(ws)
            .agent("a")
            .cmd()
            .args(["send", "jobs", "--data", &i.to_string()]));
    }
    let first = lines(&ok(Maos::new(ws).agent("w").cmd().args([
        "recv",
        "jobs",
        "--json",
        "--consumer",
        "w1",
        "--count",
        "2",
    ])));
    assert_eq!(first.len(), 2);
    let rest = lines(&ok(Maos::new(ws).agent("w").cmd().args([
        "recv",
        "jobs",
        "--json",
        "--consumer",
        "w1",
    ])));
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["position"], 3);
    let out = Maos::new(ws).agent("w").run([
        "recv",
        "jobs",
        "--consumer",
        "w1",
        "--follow",
        "--timeout",
        "200ms",
    ]);
    out.assert_code(Exit::Busy);
    assert!(out.stdout().is_empty());
}

#[test]
fn recv_follow_wakes_for_a_message_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["send", "live", "--data", "0"]));
    let follower = Maos::new(ws)
        .agent("b")
        .cmd()
        .args([
            "recv", "live", "--json", "--after", "1", "--follow", "--count", "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ok(Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["send", "live", "--data", "1"]));
    ok(Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["send", "live", "--data", "2"]));
    let out = Run::wait(follower);
    out.ok();
    let got = out.lines();
    let payloads: Vec<_> = got.iter().map(|m| m["payload"].clone()).collect();
    assert_eq!(payloads, [1, 2]);
}

#[test]
fn broadcast_reaches_wildcard_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(Maos::new(ws)
        .agent("ci")
        .cmd()
        .args(["broadcast", "build/done", "--data", r#""green""#]));
    ok(Maos::new(ws)
        .agent("ci")
        .cmd()
        .args(["broadcast", "test/done", "--data", "1"]));
    ok(Maos::new(ws)
        .agent("ci")
        .cmd()
        .args(["broadcast", "build/failed", "--data", r#""red""#]));
    let got = lines(&ok(Maos::new(ws).agent("s").cmd().args([
        "subscribe",
        "build/*",
        "--json",
    ])));
    let topics: Vec<_> = got
        .iter()
        .map(|m| m["topic"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(topics, ["build/done", "build/failed"]);
    // Durable: the second run sees only what is new.
    let first = lines(&ok(Maos::new(ws).agent("s").cmd().args([
        "subscribe",
        "**",
        "--json",
        "--consumer",
        "s1",
    ])));
    assert_eq!(first.len(), 3);
    ok(Maos::new(ws)
        .agent("ci")
        .cmd()
        .args(["broadcast", "deploy", "--data", "{}"]));
    let second = lines(&ok(Maos::new(ws).agent("s").cmd().args([
        "subscribe",
        "**",
        "--json",
        "--consumer",
        "s1",
    ])));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["topic"], "deploy");
    let out = Maos::new(ws)
        .agent("ci")
        .run(["broadcast", "global", "--data", "1"]);
    out.assert_code(Exit::Error);
}

#[test]
fn channels_lists_counts_and_prune_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    for i in 0..5 {
        ok(Maos::new(ws)
            .agent("a")
            .cmd()
            .args(["send", "log", "--data", &i.to_string()]));
    }
    ok(Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["send", "other/x", "--data", "1"]));
    let list: serde_json::Value = serde_json::from_str(&ok(Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["channels", "--json"])))
    .unwrap();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, ["log", "other/x"]);
    assert_eq!(list[0]["count"], 5);
    assert_eq!(list[0]["newest"], 5);
    let human = ok(Maos::new(ws).agent("a").cmd().args(["channels", "list"]));
    assert!(human.contains("log"), "{human}");
    let rep: serde_json::Value = serde_json::from_str(&ok(Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["channels", "prune", "log", "--keep", "0", "--json"])))
    .unwrap();
    assert_eq!(rep["pruned_through"], 5);
    let out = Maos::new(ws).agent("a").run(["recv", "log", "--json"]);
    out.ok();
    let got = out.lines();
    assert_eq!(got[0]["pruned"]["from"], 1);
    assert_eq!(got[0]["pruned"]["to"], 5);
    out.stderr_has("messages 1..5 were pruned");
    let out = Maos::new(ws)
        .agent("a")
        .run(["channels", "prune", "log", "--older-than", "1d"]);
    out.ok();
}

#[test]
fn oversized_payloads_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let big = format!("\"{}\"\n", "x".repeat(1 << 20));
    let out = Maos::new(ws).run_stdin(["send", "big", "--stdin"], big.as_bytes());
    out.assert_code(Exit::Error);
    out.stderr_has("limit of 1048576 bytes");
    let list: serde_json::Value = serde_json::from_str(&ok(Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["channels", "--json"])))
    .unwrap();
    // Not even the channel's directory: a refused send leaves no state.
    assert_eq!(list, serde_json::json!([]));
}

/// A follower started before a channel's first message waits for it (saying so), instead
/// of failing because the channel does not exist yet.
#[test]
fn recv_follow_waits_for_a_channel_that_does_not_exist_yet() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    Maos::new(ws).run(["channels"]).ok();
    let mut follower = Maos::new(ws)
        .agent("b")
        .cmd()
        .args([
            "recv",
            "later",
            "--json",
            "--follow",
            "--count",
            "1",
            "--timeout",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut note = String::new();
    std::io::BufReader::new(follower.stderr.take().unwrap())
        .read_line(&mut note)
        .unwrap();
    assert!(note.contains("channel later has no messages yet"), "{note}");
    ok(Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["send", "later", "--data", "\"first\""]));
    let out = Run::wait(follower);
    out.ok();
    assert_eq!(out.lines()[0]["payload"], "first");
    // Without --follow a missing channel is still an error naming it.
    Maos::new(ws)
        .agent("b")
        .run(["recv", "typo"])
        .failed()
        .stderr_has("no channel typo");
}
