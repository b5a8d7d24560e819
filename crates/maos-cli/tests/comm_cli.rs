//! `maos send`, `recv`, `broadcast`, `subscribe`, `channels`: the real binary.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use maos_tests::{maos_at, output, stderr, stdout};

fn maos(ws: &Path, agent: &str) -> Command {
    maos_at(Path::new(env!("CARGO_BIN_EXE_maos")), ws, agent)
}

fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", stderr(&out));
    stdout(&out)
}

fn lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect()
}

#[test]
fn send_and_recv_apply_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(maos(ws, "b1").args(["agents", "register", "--role", "backend"]));
    let sent = lines(&ok(maos(ws, "f1").args([
        "send",
        "api",
        "--json",
        "--data",
        r#"{"n":1}"#,
    ])));
    assert_eq!(sent[0]["position"], 1);
    ok(maos(ws, "f1").args(["send", "api", "--to", "x9", "--data", "2"]));
    ok(maos(ws, "f1").args(["send", "api", "--role", "backend", "--data", "3"]));
    ok(maos(ws, "f1").args(["send", "api", "--group", "x9,b1", "--data", "4"]));
    let b1 = lines(&ok(maos(ws, "b1").args(["recv", "api", "--json"])));
    let got: Vec<_> = b1.iter().map(|m| m["payload"].clone()).collect();
    assert_eq!(got, [serde_json::json!({"n":1}), 3.into(), 4.into()]);
    assert_eq!(b1[1]["position"], 3);
    assert_eq!(b1[1]["sender"], "f1");
    let x9 = lines(&ok(
        maos(ws, "x9").args(["recv", "api", "--json", "--after", "1"])
    ));
    let pos: Vec<_> = x9.iter().map(|m| m["position"].as_u64().unwrap()).collect();
    assert_eq!(pos, [2, 4]);
    let all = lines(&ok(maos(ws, "z").args([
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
    let mut child = maos(dir.path(), "a")
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
    let mut child = maos(dir.path(), "a")
        .args(["send", "q", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"1\nnot json\n2\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).lines().count(), 1);
    assert!(stderr(&out).contains("stdin line 2"), "{}", stderr(&out));
}

#[test]
fn consumers_resume_and_follow_times_out_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    for i in 0..3 {
        ok(maos(ws, "a").args(["send", "jobs", "--data", &i.to_string()]));
    }
    let first = lines(&ok(maos(ws, "w").args([
        "recv",
        "jobs",
        "--json",
        "--consumer",
        "w1",
        "--count",
        "2",
    ])));
    assert_eq!(first.len(), 2);
    let rest = lines(&ok(maos(ws, "w").args([
        "recv",
        "jobs",
        "--json",
        "--consumer",
        "w1",
    ])));
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["position"], 3);
    let out = output(maos(ws, "w").args([
        "recv",
        "jobs",
        "--consumer",
        "w1",
        "--follow",
        "--timeout",
        "200ms",
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn recv_follow_wakes_for_a_message_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(maos(ws, "a").args(["send", "live", "--data", "0"]));
    let follower = maos(ws, "b")
        .args([
            "recv", "live", "--json", "--after", "1", "--follow", "--count", "2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ok(maos(ws, "a").args(["send", "live", "--data", "1"]));
    ok(maos(ws, "a").args(["send", "live", "--data", "2"]));
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success());
    let got = lines(&stdout(&out));
    let payloads: Vec<_> = got.iter().map(|m| m["payload"].clone()).collect();
    assert_eq!(payloads, [1, 2]);
}

#[test]
fn broadcast_reaches_wildcard_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(maos(ws, "ci").args(["broadcast", "build/done", "--data", r#""green""#]));
    ok(maos(ws, "ci").args(["broadcast", "test/done", "--data", "1"]));
    ok(maos(ws, "ci").args(["broadcast", "build/failed", "--data", r#""red""#]));
    let got = lines(&ok(maos(ws, "s").args(["subscribe", "build/*", "--json"])));
    let topics: Vec<_> = got
        .iter()
        .map(|m| m["topic"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(topics, ["build/done", "build/failed"]);
    // Durable: the second run sees only what is new.
    let first = lines(&ok(maos(ws, "s").args([
        "subscribe",
        "**",
        "--json",
        "--consumer",
        "s1",
    ])));
    assert_eq!(first.len(), 3);
    ok(maos(ws, "ci").args(["broadcast", "deploy", "--data", "{}"]));
    let second = lines(&ok(maos(ws, "s").args([
        "subscribe",
        "**",
        "--json",
        "--consumer",
        "s1",
    ])));
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["topic"], "deploy");
    let out = output(maos(ws, "ci").args(["broadcast", "global", "--data", "1"]));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn channels_lists_counts_and_prune_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    for i in 0..5 {
        ok(maos(ws, "a").args(["send", "log", "--data", &i.to_string()]));
    }
    ok(maos(ws, "a").args(["send", "other/x", "--data", "1"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(maos(ws, "a").args(["channels", "--json"]))).unwrap();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, ["log", "other/x"]);
    assert_eq!(list[0]["count"], 5);
    assert_eq!(list[0]["newest"], 5);
    let human = ok(maos(ws, "a").args(["channels", "list"]));
    assert!(human.contains("log"), "{human}");
    let rep: serde_json::Value = serde_json::from_str(&ok(
        maos(ws, "a").args(["channels", "prune", "log", "--keep", "0", "--json"])
    ))
    .unwrap();
    assert_eq!(rep["pruned_through"], 5);
    let out = output(maos(ws, "a").args(["recv", "log", "--json"]));
    assert!(out.status.success());
    let got = lines(&stdout(&out));
    assert_eq!(got[0]["pruned"]["from"], 1);
    assert_eq!(got[0]["pruned"]["to"], 5);
    assert!(
        stderr(&out).contains("messages 1..5 were pruned"),
        "{}",
        stderr(&out)
    );
    let out = output(maos(ws, "a").args(["channels", "prune", "log", "--older-than", "1d"]));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn oversized_payloads_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let big = format!("\"{}\"\n", "x".repeat(1 << 20));
    let mut child = maos(ws, "a")
        .args(["send", "big", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(big.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("limit of 1048576 bytes"),
        "{}",
        stderr(&out)
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(maos(ws, "a").args(["channels", "--json"]))).unwrap();
    assert_eq!(list[0]["count"], 0);
}
