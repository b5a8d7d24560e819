//! The comm reproductions of issues 11, 12 and 13, each through the real binary: bad input
//! refused before anything is written (with the file, the reason and what to do), payloads
//! passed through byte for byte, reserved channels, a missing channel, a lock held by another
//! process, a log that lost records, the inbox.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::util::{Exit, Maos};

/// Input -> exit code and words that must (and must not) appear on stderr; nothing may be
/// created by a refused command.
#[test]
fn bad_input_is_refused_clearly_and_writes_nothing() {
    let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
    let huge_bad = format!("{{{}", "x".repeat(100 << 10));
    let cases: Vec<(&str, Vec<&str>, Exit, &[&str])> = vec![
        // Issue 11.5: acknowledged, then skipped by every reader. Now refused.
        (
            "deep",
            vec!["send", "deep", "--data", &deep],
            Exit::Error,
            &[
                "would not be readable by receivers",
                "recursion limit",
                "nothing was written",
            ],
        ),
        // A lone surrogate escape decodes for no reader either.
        (
            "surrogate",
            vec!["send", "surrogate", "--data", r#""\ud800""#],
            Exit::Error,
            &["would not be readable by receivers"],
        ),
        // Issue 12: a forged notification on the feed, and a write to a topic.
        (
            "forged",
            vec![
                "send",
                "broadcast/global",
                "--data",
                r#"{"topic":"build/x"}"#,
            ],
            Exit::Error,
            &["reserved", "broadcast feed"],
        ),
        (
            "topic",
            vec!["send", "broadcast/build/x", "--data", "1"],
            Exit::Error,
            &["reserved", "maos broadcast build/x"],
        ),
        // Issue 12: the topics maos's own mechanisms publish on (readers act on them).
        (
            "tasks",
            vec!["broadcast", "tasks", "--data", r#"{"changes":[]}"#],
            Exit::Error,
            &["topic \"tasks\" is published by maos itself"],
        ),
        (
            "deadlock",
            vec!["broadcast", "deadlock/x", "--data", "{}"],
            Exit::Error,
            &["topic \"deadlock\" is published by maos itself"],
        ),
        (
            "dashboard",
            vec!["broadcast", "dashboard/actions", "--data", "{}"],
            Exit::Error,
            &["published by maos itself"],
        ),
        // A number no reader can hold.
        (
            "inf",
            vec!["send", "inf", "--data", "[1e400]"],
            Exit::Error,
            &["would not be readable by receivers", "out of range"],
        ),
        // Issue 12: 5 MB of invalid JSON was echoed whole; now a short excerpt (the OS limits
        // one argument to 128 KiB).
        (
            "badjson",
            vec!["send", "badjson", "--data", &huge_bad],
            Exit::Error,
            &["--data is not valid JSON", "xxxx…"],
        ),
        // Issue 12: reading a channel that does not exist creates nothing.
        (
            "nosuch",
            vec!["recv", "nosuch"],
            Exit::Error,
            &[
                "no channel nosuch",
                "created by its first `send`",
                "maos channels",
            ],
        ),
        (
            "nosuch",
            vec!["channels", "prune", "nosuch", "--keep", "1"],
            Exit::Error,
            &["no channel nosuch"],
        ),
    ];
    for (channel, args, code, words) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = Maos::new(dir.path()).run(&args);
        out.assert_code(code);
        for w in words {
            out.stderr_has(w);
        }
        assert!(
            out.stderr().len() < 2000,
            "{args:?}: a long error: {}",
            out.stderr().len()
        );
        let chan = dir.path().join(".maos/channels").join(channel);
        assert!(!chan.exists(), "{args:?} created {}", chan.display());
    }
}

#[test]
fn an_overlong_stdin_line_is_refused_without_holding_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = b"{\"ok\":1}\n".to_vec();
    input.extend(std::iter::repeat_n(b'7', 3 << 20));
    let out = Maos::new(dir.path()).run_stdin(["send", "q", "--stdin"], &input);
    out.assert_code(Exit::Error);
    out.stderr_has("stdin line 2");
    out.stderr_has("longer than");
    // The good line before it was sent.
    assert_eq!(
        Maos::new(dir.path())
            .run(["recv", "q", "--json"])
            .ok()
            .lines()
            .len(),
        1
    );
}

/// Issue 12: `123456789012345678901234567890123456789` arrived as `1.2345678901234568e+38`.
#[test]
fn payloads_pass_through_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    let payload = r#"{"big":123456789012345678901234567890123456789,"f":1.50,"z":-0.0,"k":[1E+2]}"#;
    maos.run(["send", "n", "--data", payload]).ok();
    maos.run_stdin(["send", "n", "--stdin"], format!("{payload}\n").as_bytes())
        .ok();
    maos.run(["broadcast", "t/x", "--data", payload]).ok();
    let recv = maos.run(["recv", "n", "--json"]).ok().stdout();
    assert_eq!(
        recv.matches(&format!("\"payload\":{payload}")).count(),
        2,
        "{recv}"
    );
    let sub = maos.run(["subscribe", "t/*", "--json"]).ok().stdout();
    assert!(sub.contains(&format!("\"payload\":{payload}")), "{sub}");
    let human = maos.run(["recv", "n"]).ok().stdout();
    assert!(
        human.contains("123456789012345678901234567890123456789"),
        "{human}"
    );
}

/// Issue 12: a forged notification made a `build/*` subscriber get one message twice. Now a
/// broadcast is one record, each subscriber sees it once, on every path.
#[test]
fn a_broadcast_reaches_each_reader_once() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    maos.run([
        "send",
        "broadcast/global",
        "--data",
        r#"{"topic":"build/x"}"#,
    ])
    .assert_code(Exit::Error);
    maos.agent("ci")
        .run(["broadcast", "build/x", "--data", "1"])
        .ok();
    assert_eq!(
        maos.run(["subscribe", "build/*", "--json"])
            .ok()
            .lines()
            .len(),
        1
    );
    assert_eq!(
        maos.run(["recv", "broadcast/build/x", "--json"])
            .ok()
            .lines()
            .len(),
        1
    );
    assert_eq!(
        maos.run(["recv", "broadcast/global", "--json"])
            .ok()
            .lines()
            .len(),
        1
    );
    maos.run(["subscribe", "--durable", "build/**"]).ok();
    maos.agent("ci")
        .run(["broadcast", "build/y", "--data", "2"])
        .ok();
    let inbox = maos.run(["inbox", "--json"]).ok().lines();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0]["topic"], "build/y");
    assert!(maos.run(["inbox", "--json"]).ok().lines().is_empty());
}

/// Issue 12: segment files were created 0644 (first, rolled, after prune).
#[test]
fn channel_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    maos.run(["send", "p", "--data", "1"]).ok();
    maos.run(["channels", "prune", "p", "--keep", "0"]).ok();
    maos.run(["send", "p", "--data", "2"]).ok();
    let chan = dir.path().join(".maos/channels/p/.chan");
    for e in std::fs::read_dir(&chan).unwrap().flatten() {
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        let want = if e.file_type().unwrap().is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(mode, want, "{}", e.path().display());
    }
}

/// Issue 11.6: a process holding the channel's lock makes `send` wait at most `--wait`, then
/// exit 3 naming it.
#[test]
fn send_gives_up_at_its_wait_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    maos.run(["send", "busy", "--data", "1"]).ok();
    let lock = maos_coordination::core::fsx::LockFile::open(
        &dir.path().join(".maos/channels/busy/.chan/lock"),
    )
    .unwrap();
    let _held = lock.exclusive(Duration::from_secs(1)).unwrap();
    let out = maos.run(["send", "busy", "--data", "2", "--wait", "200ms"]);
    out.assert_code(Exit::Busy);
    out.stderr_has(&format!("held by pid {}", std::process::id()));
    let out = maos.run(["broadcast", "x", "--data", "2", "--wait", "0s"]);
    out.ok();
}

/// Issue 11.4: a consumer that read to the end of a segment that was then cut back printed
/// nothing, exit 0, and the next messages reused the lost positions and were skipped.
#[test]
fn a_consumer_ahead_of_a_cut_back_log_is_told_and_misses_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    for i in 1..=5 {
        maos.run(["send", "jobs", "--data", &i.to_string()]).ok();
    }
    assert_eq!(
        maos.run(["recv", "jobs", "--consumer", "w", "--json"])
            .ok()
            .lines()
            .len(),
        5
    );
    // Cut the segment back to its first three records.
    let seg = dir
        .path()
        .join(".maos/channels/jobs/.chan/00000000000000000001.jsonl");
    let text = std::fs::read_to_string(&seg).unwrap();
    let keep: usize = text.split_inclusive('\n').take(3).map(str::len).sum();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(keep as u64)
        .unwrap();
    let out = maos.run(["recv", "jobs", "--consumer", "w", "--json"]);
    out.ok();
    out.stderr_has("ahead of the channel's newest message");
    assert_eq!(out.lines()[0]["ahead"]["newest"], 3);
    let sent = maos
        .run(["send", "jobs", "--json", "--data", "6"])
        .ok()
        .lines();
    let p = sent[0]["position"].as_u64().unwrap();
    assert!(p > 5, "position {p} reused");
    let out = maos.run(["recv", "jobs", "--consumer", "w", "--json"]);
    out.ok();
    out.stderr_has("were lost");
    let got = out.lines();
    assert_eq!(got.last().unwrap()["payload"], 6);
    assert_eq!(got.last().unwrap()["position"], p);
    // `maos doctor` explains what happened.
    let doc = maos.run(["doctor"]);
    doc.stdout_has("positions 4..");
}

/// Issue 13: an unregistered or anonymous agent's `recv` silently showed nothing for
/// role-addressed messages.
#[test]
fn a_reader_without_a_role_is_told_why_role_messages_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    maos.agent("f1")
        .run(["send", "api", "--role", "backend", "--data", "1"])
        .ok();
    for (agent, words) in [
        ("b9", "agent b9 is not registered"),
        ("anonymous", "anonymous agent"),
    ] {
        let out = maos.agent(agent).run(["recv", "api"]);
        out.ok();
        assert!(out.stdout().is_empty());
        out.stderr_has("addressed to a role were not shown");
        out.stderr_has(words);
    }
    maos.agent("b1")
        .run(["agents", "register", "--role", "backend"])
        .ok();
    let out = maos.agent("b1").run(["recv", "api"]);
    assert!(out.ok().stderr().is_empty(), "{}", out.stderr());
    assert_eq!(out.stdout().lines().count(), 1);
}

/// Issue 13: `maos inbox [--follow] [--json] [--unread]`.
#[test]
fn the_inbox_shows_each_message_addressed_to_me_once() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    let b1 = maos.agent("b1");
    b1.run(["agents", "register", "--role", "backend"]).ok();
    b1.run(["subscribe", "--durable", "build/*", "deploy/**"])
        .ok()
        .stdout_has("build/*");
    maos.agent("f1")
        .run(["send", "direct/b1", "--data", "\"hi b1\""])
        .ok();
    maos.agent("f1")
        .run([
            "send",
            "api",
            "--role",
            "backend",
            "--data",
            "\"to backend\"",
        ])
        .ok();
    maos.agent("f1")
        .run([
            "send",
            "api",
            "--role",
            "frontend",
            "--data",
            "\"not mine\"",
        ])
        .ok();
    maos.agent("ci")
        .run(["broadcast", "build/linux", "--data", "\"green\""])
        .ok();
    maos.agent("ci")
        .run(["broadcast", "lint", "--data", "\"not subscribed\""])
        .ok();
    let unread = b1.run(["inbox", "--unread", "--json"]).ok().json();
    assert_eq!(unread["total"], 3, "{unread}");
    assert_eq!(unread["channels"]["api"], 1);
    let peek = b1.run(["inbox", "--peek", "--json"]).ok().lines();
    assert_eq!(peek.len(), 3);
    let got = b1.run(["inbox", "--json"]).ok().lines();
    let payloads: Vec<_> = got
        .iter()
        .map(|l| l["payload"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = payloads.clone();
    sorted.sort();
    assert_eq!(sorted, ["green", "hi b1", "to backend"]);
    assert!(b1.run(["inbox"]).ok().stdout().is_empty());
    b1.run(["inbox", "--unread"]).ok().stdout_has("0 unread");
    b1.run(["inbox", "--follow", "--timeout", "100ms"])
        .assert_code(Exit::Busy);
    b1.run(["unsubscribe", "build/*"])
        .ok()
        .stdout_has("deploy/**");
    b1.run(["inbox", "--subscriptions", "--json"]).ok();
}

/// `inbox --follow` delivers what arrives while it follows, each once, and acknowledges it.
#[test]
fn inbox_follow_delivers_new_messages_as_they_arrive() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    Maos::new(ws)
        .agent("b")
        .run(["agents", "register", "--role", "dev"])
        .ok();
    let mut follower = Maos::new(ws)
        .agent("b")
        .cmd()
        .args([
            "--json",
            "inbox",
            "--follow",
            "--count",
            "2",
            "--timeout",
            "60s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(follower.stdout.take().unwrap()).lines();
    Maos::new(ws)
        .agent("a")
        .run(["send", "api", "--to", "b", "--data", r#""direct""#])
        .ok();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["payload"], "direct", "{first}");
    // The second arrives after the follower has printed the first: it is woken for it.
    Maos::new(ws)
        .agent("a")
        .run([
            "send",
            "other",
            "--role",
            "dev",
            "--data",
            r#""to the role""#,
        ])
        .ok();
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["payload"], "to the role", "{second}");
    assert!(follower.wait().unwrap().success());
    let unread = Maos::new(ws)
        .agent("b")
        .run(["--json", "inbox", "--unread"])
        .ok()
        .json();
    assert_eq!(unread["total"], 0, "acknowledged as printed: {unread}");
}

/// Issue 11: a record whose checksum is right but which is not a maos message is never
/// skipped silently: the reader warns naming its position, a copy is kept aside, and a
/// durable consumer moves past it (the messages around it are delivered, once).
#[test]
fn an_undecodable_record_is_reported_kept_and_passed() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let m = Maos::new(ws).agent("a");
    m.run(["send", "ch", "--data", r#""first""#]).ok();
    let chan = ws.join(".maos/channels/ch/.chan");
    let seg = chan.join("00000000000000000001.jsonl");
    let msg = br#"{"not":"a maos message"}"#;
    let line = format!(
        "{{\"seq\":2,\"len\":{},\"crc\":\"{:08x}\",\"msg\":{}}}\n",
        msg.len(),
        crc32fast::hash(msg),
        String::from_utf8_lossy(msg)
    );
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
    drop(f);
    m.run(["send", "ch", "--data", r#""third""#]).ok();

    let out = Maos::new(ws)
        .agent("b")
        .run(["--json", "recv", "ch", "--consumer", "w"]);
    out.ok();
    let payloads: Vec<serde_json::Value> = out
        .lines()
        .iter()
        .filter_map(|l| l.get("payload").cloned())
        .collect();
    assert_eq!(payloads, ["first", "third"], "{}", out.stdout());
    let err = out.stderr();
    assert!(err.contains("not a maos message"), "{err}");
    assert_eq!(
        err.matches("not a maos message").count(),
        1,
        "said once: {err}"
    );
    let kept: Vec<_> = std::fs::read_dir(ws.join(".maos"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let quarantine = walk(&ws.join(".maos"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("undecodable"))
        .count();
    assert!(quarantine >= 1, "no copy kept aside under .maos ({kept:?})");
    // The consumer moved past it: nothing again.
    let again = Maos::new(ws)
        .agent("b")
        .run(["--json", "recv", "ch", "--consumer", "w"]);
    again.ok();
    assert_eq!(again.stdout().trim(), "", "each message once");
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d)
        .expect("a readable directory")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
