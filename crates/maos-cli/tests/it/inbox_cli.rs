//! `maos inbox`, `subscribe --durable`, `unsubscribe` and `channels prune`: the same test
//! bodies on the files and on the test PostgreSQL server (`backend_cli::both`).

use std::io::BufRead as _;
use std::process::Stdio;

use crate::backend_cli::both;
use crate::util::Exit;

fn payloads(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["payload"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// What counts as addressed to an agent, its stored subscriptions from the moment it
/// subscribed, each item once, the unread count and the `--json` shapes.
#[test]
fn the_inbox_follows_the_addressing_rules_on_both_backends() {
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut shapes = Vec::new();
    for (name, maos) in both(&f, &p) {
        let b1 = maos.agent("b1");
        let f1 = maos.agent("f1");
        let ci = maos.agent("ci");
        b1.run(["agents", "register", "--role", "backend"]).ok();
        ci.run([
            "broadcast",
            "build/early",
            "--data",
            "\"before subscribing\"",
        ])
        .ok();
        let subs = b1
            .run(["--json", "subscribe", "--durable", "build/*", "deploy/**"])
            .ok()
            .json();
        assert_eq!(
            subs["subscriptions"],
            serde_json::json!(["build/*", "deploy/**"]),
            "{name}"
        );
        let send = |to: &[&str], ch: &str, text: &str| {
            let mut args = vec!["send", ch];
            args.extend_from_slice(to);
            let data = format!("\"{text}\"");
            args.extend(["--data", &data]);
            f1.run(args).ok();
        };
        send(&[], "direct/b1", "direct to me");
        send(&[], "direct/b2", "b2's own");
        send(&["--to", "b1"], "direct/b2", "cc me on b2's");
        send(&["--role", "backend"], "api", "to my role");
        send(&["--role", "frontend"], "api", "to frontend");
        send(&["--group", "x,b1"], "api", "to my group");
        send(&[], "team/chat", "to all");
        b1.run(["send", "api", "--data", "\"my own\""]).ok();
        ci.run(["broadcast", "build/linux", "--data", "\"green\""])
            .ok();
        ci.run(["broadcast", "lint", "--data", "\"not subscribed\""])
            .ok();
        b1.run(["broadcast", "deploy/x", "--data", "\"mine\""]).ok();
        let unread = b1.run(["inbox", "--unread", "--json"]).ok().json();
        assert_eq!(unread["total"], 6, "{name}: {unread}");
        assert_eq!(unread["channels"]["api"], 2, "{name}: {unread}");
        assert_eq!(
            unread["channels"]["broadcast/global"], 1,
            "{name}: {unread}"
        );
        let peek = b1.run(["inbox", "--peek", "--json"]).ok().lines();
        assert_eq!(peek.len(), 6, "{name}");
        let got = b1.run(["inbox", "--json"]).ok().lines();
        let mut texts = payloads(&got);
        texts.sort();
        assert_eq!(
            texts,
            [
                "cc me on b2's",
                "direct to me",
                "green",
                "to all",
                "to my group",
                "to my role"
            ],
            "{name}"
        );
        let bcast = got.iter().find(|l| l["payload"] == "green").unwrap();
        assert_eq!(bcast["channel"], "broadcast/build/linux", "{name}");
        assert_eq!(bcast["topic"], "build/linux", "{name}");
        let mut keys: Vec<String> = bcast.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        shapes.push(keys);
        // Each once; a new process agrees.
        assert!(b1.run(["inbox"]).ok().stdout().is_empty(), "{name}");
        b1.run(["inbox", "--unread"]).ok().stdout_has("0 unread");
        b1.run(["inbox", "--follow", "--timeout", "100ms"])
            .assert_code(Exit::Busy);
        // Unsubscribed: no longer delivered; the list says what is left.
        b1.run(["unsubscribe", "build/*", "nope"])
            .ok()
            .stdout_has("deploy/**")
            .stderr_has("nope was not among");
        ci.run([
            "broadcast",
            "build/linux",
            "--data",
            "\"after unsubscribing\"",
        ])
        .ok();
        ci.run(["broadcast", "deploy/prod/eu", "--data", "\"live\""])
            .ok();
        let got = b1.run(["inbox", "--json"]).ok().lines();
        assert_eq!(payloads(&got), ["live"], "{name}");
        let listed = b1.run(["inbox", "--subscriptions", "--json"]).ok().json();
        assert_eq!(
            listed,
            serde_json::json!({ "agent": "b1", "subscriptions": ["deploy/**"] }),
            "{name}"
        );
        // Another agent's inbox is its own.
        let x = maos.agent("x").run(["inbox", "--json"]).ok().lines();
        let mut texts = payloads(&x);
        texts.sort();
        // (`all` on another agent's direct channel is not for x.)
        assert_eq!(texts, ["my own", "to all", "to my group"], "{name}: {x:?}");
    }
    assert_eq!(
        shapes[0], shapes[1],
        "the same --json shape on both backends"
    );
}

/// `inbox --follow` is woken by a send from another process, delivers each item once and
/// acknowledges it as printed.
#[test]
fn inbox_follow_wakes_for_other_processes_on_both_backends() {
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (name, maos) in both(&f, &p) {
        let b = maos.agent("b");
        b.run(["agents", "register", "--role", "dev"]).ok();
        b.run(["subscribe", "--durable", "ci/*"]).ok();
        let mut follower = b
            .cmd()
            .args([
                "--json",
                "inbox",
                "--follow",
                "--count",
                "3",
                "--timeout",
                "120s",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
        let mut next = || -> serde_json::Value {
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap()
        };
        let a = maos.agent("a");
        a.run(["send", "api", "--to", "b", "--data", "\"direct\""])
            .ok();
        assert_eq!(next()["payload"], "direct", "{name}");
        a.run([
            "send",
            "other",
            "--role",
            "dev",
            "--data",
            "\"to the role\"",
        ])
        .ok();
        assert_eq!(next()["payload"], "to the role", "{name}");
        a.run(["broadcast", "ci/done", "--data", "\"built\""]).ok();
        let third = next();
        assert_eq!(third["payload"], "built", "{name}");
        assert_eq!(third["topic"], "ci/done", "{name}");
        assert!(follower.wait().unwrap().success(), "{name}");
        let unread = b.run(["--json", "inbox", "--unread"]).ok().json();
        assert_eq!(
            unread["total"], 0,
            "{name}: acknowledged as printed: {unread}"
        );
    }
}

/// A reader SIGKILLed in the middle of reading loses nothing: everything it did not
/// acknowledge comes to the next reader, and what it acknowledged does not come again
/// (at most the one batch it was printing is given twice).
#[test]
fn a_killed_inbox_reader_loses_nothing_on_both_backends() {
    const N: usize = 300;
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (name, maos) in both(&f, &p) {
        // Long enough that the reader blocks on a full pipe mid-batch.
        let pad = "x".repeat(1000);
        let input: String = (0..N).map(|i| format!("\"{i} {pad}\"\n")).collect();
        maos.agent("a")
            .run_stdin(["send", "flood", "--to", "b", "--stdin"], input.as_bytes())
            .ok();
        let b = maos.agent("b");
        let mut reader = b
            .cmd()
            .args(["--json", "inbox", "--follow", "--timeout", "120s"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(reader.stdout.take().unwrap()).lines();
        let mut first = Vec::new();
        // Kill it in the middle of the second batch (the first was acknowledged).
        while first.len() < 150 {
            let l: serde_json::Value =
                serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            first.push(l["position"].as_u64().unwrap());
        }
        reader.kill().unwrap();
        reader.wait().unwrap();
        // What it printed before it died is all in the pipe: what it acknowledged is there.
        for l in lines {
            let Ok(l) = l else { break };
            // (A line cut by the kill was not acknowledged: it comes again below.)
            if let Ok(l) = serde_json::from_str::<serde_json::Value>(&l) {
                first.push(l["position"].as_u64().unwrap());
            }
        }
        assert!(
            first.len() < N,
            "{name}: the reader was killed after it read everything"
        );
        let rest: Vec<u64> = b
            .run(["--json", "inbox"])
            .ok()
            .lines()
            .iter()
            .map(|l| l["position"].as_u64().unwrap())
            .collect();
        let mut all: Vec<u64> = first.iter().chain(&rest).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(
            all,
            (1..=N as u64).collect::<Vec<_>>(),
            "{name}: nothing lost"
        );
        let again = rest.iter().filter(|p| first.contains(p)).count();
        assert!(
            again <= maos_coordination::comm::DEFAULT_INBOX_BATCH,
            "{name}: {again} acknowledged items came again"
        );
        assert!(
            !rest.contains(&1),
            "{name}: the acknowledged first batch came again"
        );
        assert!(b.run(["inbox"]).ok().stdout().is_empty(), "{name}");
    }
}

/// `channels prune` on both backends: by count, readers told what was pruned, topic views
/// refused, a missing channel named.
#[test]
fn channels_prune_works_on_both_backends() {
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (name, maos) in both(&f, &p) {
        let a = maos.agent("a");
        let input: String = (0..5).map(|i| format!("{i}\n")).collect();
        a.run_stdin(["send", "log", "--stdin"], input.as_bytes())
            .ok();
        let rep = a
            .run(["channels", "prune", "log", "--keep", "0", "--json"])
            .ok()
            .json();
        assert_eq!(rep["pruned_through"], 5, "{name}: {rep}");
        assert_eq!(rep["newest"], 5, "{name}: {rep}");
        assert_eq!(rep["oldest"], 6, "{name}: {rep}");
        let out = a.run(["recv", "log", "--json"]);
        out.ok();
        let got = out.lines();
        assert_eq!(got[0]["pruned"]["from"], 1, "{name}");
        assert_eq!(got[0]["pruned"]["to"], 5, "{name}");
        out.stderr_has("messages 1..5 were pruned");
        // Positions go on after the pruned ones.
        let r = a.run(["--json", "send", "log", "--data", "6"]).ok().json();
        assert_eq!(r["position"], 6, "{name}");
        a.run(["channels", "prune", "log", "--older-than", "1d"])
            .ok();
        assert_eq!(
            a.run(["recv", "log", "--after", "5", "--json"])
                .ok()
                .lines()
                .len(),
            1,
            "{name}: a young message stays"
        );
        a.run(["broadcast", "t/x", "--data", "1"]).ok();
        a.run(["channels", "prune", "broadcast/t/x", "--keep", "0"])
            .assert_code(Exit::Error)
            .stderr_has("prune broadcast/global instead");
        a.run(["channels", "prune", "nope", "--keep", "0"])
            .assert_code(Exit::Error)
            .stderr_has("nope");
    }
}

/// Pruning the broadcast feed takes the broadcasts with it (the topic views are of the
/// feed); subscribers are told, and later broadcasts come as before.
#[test]
fn pruning_the_broadcast_feed_on_both_backends() {
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (name, maos) in both(&f, &p) {
        let a = maos.agent("a");
        for i in 0..3 {
            a.run(["broadcast", "t/x", "--data", &i.to_string()]).ok();
        }
        a.run(["channels", "prune", "broadcast/global", "--keep", "0"])
            .ok();
        let out = a.run(["recv", "broadcast/t/x", "--json"]);
        out.ok();
        assert!(
            out.lines().iter().all(|l| l.get("payload").is_none()),
            "{name}: a pruned broadcast is still readable: {}",
            out.stdout()
        );
        a.run(["broadcast", "t/x", "--data", "9"]).ok();
        let got = a.run(["subscribe", "t/*", "--json"]).ok().lines();
        let payloads: Vec<_> = got.iter().filter_map(|l| l.get("payload")).collect();
        assert_eq!(payloads, [&serde_json::json!(9)], "{name}: {got:?}");
    }
}
