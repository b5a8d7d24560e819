//! `maos lock ...` and `maos deadlock check`, run for real.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use maos_tests::{maos_at, output, stderr, stdout};

fn maos(ws: &Path, agent: &str) -> Command {
    maos_at(Path::new(env!("CARGO_BIN_EXE_maos")), ws, agent)
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", stdout(out)))
}

#[test]
fn an_agent_lease_outlives_the_cli_and_only_its_agent_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let out = output(maos(ws, "alice").args([
        "lock",
        "acquire",
        "src/api/**",
        "--purpose",
        "api rework",
        "--ttl",
        "10m",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let token: u64 = stdout(&out).trim().parse().unwrap();

    // Still held after the CLI exited, by the agent.
    let list = json(&output(maos(ws, "x").args(["lock", "list", "--json"])));
    assert_eq!(list["holders"][0]["owner"], "alice");
    assert_eq!(list["holders"][0]["token"], token);

    let busy = output(maos(ws, "bob").args(["lock", "acquire", "src/api/user.rs", "--wait", "0s"]));
    assert_eq!(busy.status.code(), Some(3), "{}", stderr(&busy));
    let msg = stderr(&busy);
    assert!(
        msg.contains("alice") && msg.contains("api rework") && msg.contains("lease"),
        "{msg}"
    );

    let check = output(maos(ws, "bob").args(["lock", "check", "src/api/user.rs"]));
    assert_eq!(check.status.code(), Some(3));
    assert!(stderr(&check).contains("alice"), "{}", stderr(&check));
    let mine = output(maos(ws, "alice").args(["lock", "check", "src/api/user.rs"]));
    assert_eq!(mine.status.code(), Some(0), "{}", stderr(&mine));
    let free = output(maos(ws, "bob").args(["lock", "check", "docs/x.md"]));
    assert_eq!(free.status.code(), Some(0));

    let theft = output(maos(ws, "bob").args(["lock", "release", "src/api/**"]));
    assert!(!theft.status.success());
    assert!(
        stderr(&theft).contains("does not hold"),
        "{}",
        stderr(&theft)
    );
    let renew = output(maos(ws, "alice").args(["lock", "renew", "src/api/**"]));
    assert!(renew.status.success(), "{}", stderr(&renew));
    let beat = output(maos(ws, "alice").args(["lock", "renew", "--json"]));
    assert!(beat.status.success(), "{}", stderr(&beat));
    assert_eq!(
        json(&beat).as_array().unwrap().len(),
        1,
        "the heartbeat renews every lease"
    );
    let rel = output(maos(ws, "alice").args([
        "lock",
        "release",
        "src/api/**",
        "--token",
        &token.to_string(),
    ]));
    assert!(rel.status.success(), "{}", stderr(&rel));

    let again =
        output(maos(ws, "bob").args(["lock", "acquire", "src/api/user.rs", "--wait", "0s"]));
    assert!(again.status.success(), "{}", stderr(&again));
    let t2: u64 = stdout(&again).trim().parse().unwrap();
    assert!(t2 >= 1);
}

#[test]
fn lock_run_exits_with_the_commands_status_and_survives_the_cli_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let out = output(maos(ws, "a").args([
        "lock",
        "run",
        "r",
        "--",
        "sh",
        "-c",
        "test -n \"$MAOS_LOCK_TOKEN\" && exit 7",
    ]));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));

    // The child holds the lock even after the CLI is SIGKILLed.
    let mut cli = maos(ws, "a")
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
    let held = output(maos(ws, "b").args(["lock", "check", "r"]));
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
    let free = output(maos(ws, "b").args(["lock", "acquire", "r", "--wait", "10s"]));
    assert!(free.status.success(), "{}", stderr(&free));
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
                    let out = output(maos(&ws, &format!("p{p}")).args([
                        "lock", "run", "counter", "--wait", "2m", "--", "sh", "-c", &script,
                    ]));
                    assert!(out.status.success(), "{}", stderr(&out));
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
        let out = output(maos(ws, agent).args(["lock", "acquire", res]));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let none = output(maos(ws, "m").args(["deadlock", "check"]));
    assert_eq!(none.status.code(), Some(0));
    let mut wa = maos(ws, "a")
        .args(["lock", "acquire", "y", "--wait", "2m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Make sure a queued first, so the victim (youngest wait) is b.
    while json(&output(maos(ws, "m").args(["lock", "list", "--json"])))["waiters"]
        .as_array()
        .unwrap()
        .is_empty()
    {}
    let mut wb = maos(ws, "b")
        .args(["lock", "acquire", "x", "--wait", "2m"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while json(&output(maos(ws, "m").args(["lock", "list", "--json"])))["waiters"]
        .as_array()
        .unwrap()
        .len()
        < 2
    {}

    let found = output(maos(ws, "m").args(["deadlock", "check", "--json"]));
    assert_eq!(found.status.code(), Some(5), "{}", stderr(&found));
    let v = json(&found);
    assert_eq!(v["cycles"][0]["agents"], serde_json::json!(["a", "b"]));
    assert_eq!(v["cycles"][0]["victim"], "b");

    let resolved = output(maos(ws, "m").args(["deadlock", "check", "--resolve", "--broadcast"]));
    assert_eq!(resolved.status.code(), Some(5));
    assert_eq!(
        wb.wait().unwrap().code(),
        Some(5),
        "the victim's wait ends with exit 5"
    );
    let rel = output(maos(ws, "b").args(["lock", "release", "y"]));
    assert!(rel.status.success(), "{}", stderr(&rel));
    assert!(wa.wait().unwrap().success(), "a gets y once b gives it up");
}
