//! `maos lock ...` and `maos deadlock check`, run for real.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use crate::util::{Exit, Maos, Run};

fn json(out: &Run) -> serde_json::Value {
    out.json()
}

#[test]
fn an_agent_lease_outlives_the_cli_and_only_its_agent_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let out = Maos::new(ws).agent("alice").run([
        "lock",
        "acquire",
        "src/api/**",
        "--purpose",
        "api rework",
        "--ttl",
        "10m",
    ]);
    out.ok();
    let token: u64 = out.stdout().trim().parse().unwrap();

    // Still held after the CLI exited, by the agent.
    let list = json(&Maos::new(ws).agent("x").run(["lock", "list", "--json"]));
    assert_eq!(list["holders"][0]["owner"], "alice");
    assert_eq!(list["holders"][0]["token"], token);

    let busy =
        Maos::new(ws)
            .agent("bob")
            .run(["lock", "acquire", "src/api/user.rs", "--wait", "0s"]);
    busy.assert_code(Exit::Busy);
    let msg = busy.stderr();
    assert!(
        msg.contains("alice") && msg.contains("api rework") && msg.contains("lease"),
        "{msg}"
    );

    let check = Maos::new(ws)
        .agent("bob")
        .run(["lock", "check", "src/api/user.rs"]);
    check.assert_code(Exit::Busy);
    check.stderr_has("alice");
    let mine = Maos::new(ws)
        .agent("alice")
        .run(["lock", "check", "src/api/user.rs"]);
    mine.assert_code(Exit::Ok);
    let free = Maos::new(ws)
        .agent("bob")
        .run(["lock", "check", "docs/x.md"]);
    free.assert_code(Exit::Ok);

    let theft = Maos::new(ws)
        .agent("bob")
        .run(["lock", "release", "src/api/**"]);
    theft.failed();
    theft.stderr_has("does not hold");
    let renew = Maos::new(ws)
        .agent("alice")
        .run(["lock", "renew", "src/api/**"]);
    renew.ok();
    let beat = Maos::new(ws)
        .agent("alice")
        .run(["lock", "renew", "--json"]);
    beat.ok();
    assert_eq!(
        json(&beat).as_array().unwrap().len(),
        1,
        "the heartbeat renews every lease"
    );
    let rel = Maos::new(ws).agent("alice").run([
        "lock",
        "release",
        "src/api/**",
        "--token",
        &token.to_string(),
    ]);
    rel.ok();

    let again =
        Maos::new(ws)
            .agent("bob")
            .run(["lock", "acquire", "src/api/user.rs", "--wait", "0s"]);
    again.ok();
    let t2: u64 = again.stdout().trim().parse().unwrap();
    assert!(t2 >= 1);
}

#[test]
fn lock_run_exits_with_the_commands_status_and_survives_the_cli_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let out = Maos::new(ws).agent("a").run([
        "lock",
        "run",
        "r",
        "--",
        "sh",
        "-c",
        "test -n \"$MAOS_LOCK_TOKEN\" && exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", out.stderr());

    // The child holds the lock even after the CLI is SIGKILLed.
    let mut cli = Maos::new(ws)
        .agent("a")
        .cmd()
        .args([
            "lock",
            "run",
            "r",
            "--",
            "sh",
            "-c",
            "echo started; read x; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child_out = BufReader::new(cli.stdout.take().unwrap());
    let mut line = String::new();
    child_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    let mut child_in = cli.stdin.take().unwrap();
    cli.kill().unwrap();
    cli.wait().unwrap();
    let held = Maos::new(ws).agent("b").run(["lock", "check", "r"]);
    assert_eq!(
        held.status.code(),
        Some(3),
        "lock freed while the command still runs"
    );
    child_in.write_all(b"go\n").unwrap();
    line.clear();
    child_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done");
    drop(child_in);
    // Wait for the command to exit (its stdout closes), then the lock is free.
    line.clear();
    while child_out.read_line(&mut line).unwrap() > 0 {}
    let free = Maos::new(ws)
        .agent("b")
        .run(["lock", "acquire", "r", "--wait", "10s"]);
    free.ok();
}

#[test]
fn concurrent_lock_run_commands_do_not_lose_increments() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let counter = ws.join("counter");
    std::fs::write(&counter, "0\n").unwrap();
    let script = format!("n=$(cat {0}); echo $((n+1)) > {0}", counter.display());
    let procs: Vec<_> = (0..4)
        .map(|p| {
            let ws = ws.to_path_buf();
            let script = script.clone();
            std::thread::spawn(move || {
                for _ in 0..8 {
                    let out = Maos::new(&ws).agent(&format!("p{p}")).run([
                        "lock", "run", "counter", "--wait", "2m", "--", "sh", "-c", &script,
                    ]);
                    out.ok();
                }
            })
        })
        .collect();
    for p in procs {
        p.join().unwrap();
    }
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "32");
}

#[test]
fn deadlock_check_finds_a_two_agent_cycle_and_resolves_it() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    for (agent, res) in [("a", "x"), ("b", "y")] {
        let out = Maos::new(ws).agent(agent).run(["lock", "acquire", res]);
        out.ok();
    }
    let none = Maos::new(ws).agent("m").run(["deadlock", "check"]);
    none.assert_code(Exit::Ok);
    let mut wa = Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["lock", "acquire", "y", "--wait", "2m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Make sure a queued first, so the victim (youngest wait) is b.
    while json(&Maos::new(ws).agent("m").run(["lock", "list", "--json"]))["waiters"]
        .as_array()
        .unwrap()
        .is_empty()
    {}
    let mut wb = Maos::new(ws)
        .agent("b")
        .cmd()
        .args(["lock", "acquire", "x", "--wait", "2m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while json(&Maos::new(ws).agent("m").run(["lock", "list", "--json"]))["waiters"]
        .as_array()
        .unwrap()
        .len()
        < 2
    {}

    let found = Maos::new(ws)
        .agent("m")
        .run(["deadlock", "check", "--json"]);
    found.assert_code(Exit::Deadlock);
    let v = json(&found);
    assert_eq!(v["cycles"][0]["agents"], serde_json::json!(["a", "b"]));
    assert_eq!(v["cycles"][0]["victim"], "b");

    let resolved = Maos::new(ws)
        .agent("m")
        .run(["deadlock", "check", "--resolve", "--broadcast"]);
    resolved.assert_code(Exit::Deadlock);
    assert_eq!(
        wb.wait().unwrap().code(),
        Some(5),
        "the victim's wait ends with exit 5"
    );
    let rel = Maos::new(ws).agent("b").run(["lock", "release", "y"]);
    rel.ok();
    assert!(wa.wait().unwrap().success(), "a gets y once b gives it up");
}
