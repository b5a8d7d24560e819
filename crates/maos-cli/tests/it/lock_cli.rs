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
    // One liveness file per run (its wait's and its lock's), retired as a spare when the run
    // ends: no run leaves a file behind, and the spares stay few.
    let (named, spares) = live_files(ws);
    assert!(named.is_empty(), "liveness files left behind: {named:?}");
    assert!(!spares.is_empty() && spares.len() <= 16, "{spares:?}");
}

/// The files of `.maos/locks/live/`: (name, inode) of those a record can name, and of the
/// spares kept for reuse.
type Files = Vec<(String, u64)>;

fn live_files(ws: &std::path::Path) -> (Files, Files) {
    use std::os::unix::fs::MetadataExt;
    let mut named = Vec::new();
    let mut spares = Vec::new();
    for e in std::fs::read_dir(ws.join(".maos/locks/live"))
        .unwrap()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        let ino = e.metadata().unwrap().ino();
        if n.starts_with(".spare.") {
            spares.push((n, ino));
        } else {
            named.push((n, ino));
        }
    }
    (named, spares)
}

/// `lock run` reuses liveness files across processes instead of creating and deleting one
/// per run; a run whose `maos` is SIGKILLed keeps its file (its command holds it) until the
/// command ends, and then its name is gone for good (the file becomes a spare): the record
/// naming it is dead, and the next run takes the lock.
#[test]
fn lock_runs_reuse_liveness_files_and_a_killed_runs_name_never_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    Maos::new(ws)
        .agent("a")
        .run(["lock", "run", "r", "--", "true"])
        .ok();
    let (named, spares) = live_files(ws);
    assert!(named.is_empty(), "{named:?}");
    assert_eq!(spares.len(), 1, "{spares:?}");
    let mut cli = Maos::new(ws)
        .agent("a")
        .cmd()
        .args(["lock", "run", "r", "--", "sh", "-c", "echo started; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(cli.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    let (named, now_spares) = live_files(ws);
    assert!(
        now_spares.is_empty(),
        "the spare was not adopted: {now_spares:?}"
    );
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(
        named[0].1, spares[0].1,
        "another process reused the same inode"
    );
    let mut cmd_in = cli.stdin.take().unwrap();
    cli.kill().unwrap(); // SIGKILL: maos only, the command holds the liveness file
    cli.wait().unwrap();
    Maos::new(ws)
        .agent("b")
        .run(["lock", "run", "r", "--wait", "0", "--", "true"])
        .assert_code(Exit::Busy);
    cmd_in.write_all(b"go\n").unwrap();
    drop(cmd_in);
    line.clear();
    while out.read_line(&mut line).unwrap() > 0 {}
    // The command ended: the next run breaks the dead record and takes the lock.
    Maos::new(ws)
        .agent("b")
        .run(["lock", "run", "r", "--wait", "1m", "--", "true"])
        .ok();
    let (after, spares) = live_files(ws);
    assert!(after.is_empty(), "{after:?}");
    assert!(
        spares.iter().any(|(_, ino)| *ino == named[0].1),
        "the dead run's file is a spare again: {spares:?}"
    );
    assert!(!ws.join(".maos/locks/live").join(&named[0].0).exists());
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
    while waiters(ws) < 1 {}
    let wb = Maos::new(ws)
        .agent("b")
        .cmd()
        .args(["lock", "acquire", "x", "--wait", "2m"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while waiters(ws) < 2 {}

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
    // The output says what the victim must do.
    resolved.stdout_has("b must release y");
    let victim = Run::wait(wb);
    victim.assert_code(Exit::Deadlock);
    victim.stderr_has("release y");
    // And the victim's agent finds it in its inbox.
    let inbox = Maos::new(ws).agent("b").run(["recv", "direct/b", "--json"]);
    inbox.ok();
    inbox.stdout_has("deadlock_victim");
    inbox.stdout_has("release y");
    let rel = Maos::new(ws).agent("b").run(["lock", "release", "y"]);
    rel.ok();
    assert!(wa.wait().unwrap().success(), "a gets y once b gives it up");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn waiters(ws: &std::path::Path) -> usize {
    json(&Maos::new(ws).agent("m").run(["lock", "list", "--json"]))["waiters"]
        .as_array()
        .unwrap()
        .len()
}

/// Issue 11, item 1: `maos lock run --ttl 300ms R -- CMD`, and `maos` is SIGKILLed: nobody
/// renews the lease any more, but CMD still runs in the critical section, so the lock stays
/// held past the lease (like flock(1)) and ends when CMD ends.
#[test]
fn lock_run_holds_past_its_lease_while_its_command_runs_after_maos_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let mut cli = Maos::new(ws)
        .agent("A")
        .cmd()
        .args(["lock", "run", "--ttl", "300ms", "res", "--"])
        .args(["sh", "-c", "echo $$; exec sleep 600"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(cli.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let cmd_pid: i32 = line.trim().parse().unwrap();
    cli.kill().unwrap(); // SIGKILL: maos only, the command runs on
    cli.wait().unwrap();
    // Wait (reading the clock) until the lease is well over.
    let list = json(&Maos::new(ws).agent("m").run(["lock", "list", "--json"]));
    let expires = list["holders"][0]["expires_at"].as_u64().unwrap();
    while now_ms() <= expires + 200 {
        std::thread::yield_now();
    }
    let busy = Maos::new(ws)
        .agent("B")
        .run(["lock", "acquire", "res", "--wait", "0"]);
    busy.assert_code(Exit::Busy);
    busy.stderr_has("res is taken (not waiting: the wait is 0): agent A");
    let listed = Maos::new(ws).agent("m").run(["lock", "list"]);
    listed.stdout_has("held while its command runs");
    // The command ends: the lock with it.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &cmd_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let got = Maos::new(ws)
        .agent("B")
        .run(["lock", "acquire", "res", "--wait", "1m"]);
    got.ok();
}

/// A `lock run` whose lock is lost while its command runs (here its agent released it from
/// another shell) exits non-zero and says so, even though the command succeeded.
#[test]
fn lock_run_fails_when_its_lock_was_lost_during_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let mut cli = Maos::new(ws)
        .agent("A")
        .cmd()
        .args(["lock", "run", "--ttl", "600ms", "r", "--"])
        .args(["sh", "-c", "echo started; read x; exit 0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(cli.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    Maos::new(ws).agent("A").run(["lock", "release", "r"]).ok();
    let mut stdin = cli.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let run = Run::wait(cli);
    run.assert_code(Exit::Error);
    run.stderr_has("was lost");
}

/// Issue 13: `lock run` says on stderr whom it waits for while it waits (holder, purpose,
/// lease left), with no `for ""` for an empty purpose.
#[test]
fn lock_run_says_whom_it_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    Maos::new(ws)
        .agent("B")
        .run(["lock", "acquire", "r", "--purpose", "schema migration"])
        .ok();
    Maos::new(ws).agent("C").run(["lock", "acquire", "q"]).ok();
    let run = Maos::new(ws)
        .agent("A")
        .run(["lock", "run", "r", "--wait", "300ms", "--", "true"]);
    run.assert_code(Exit::Busy);
    run.stderr_has(
        "waiting for r: agent B (lease) holds r for \"schema migration\", lease ends in",
    );
    let run = Maos::new(ws)
        .agent("A")
        .run(["lock", "run", "q", "--wait", "100ms", "--", "true"]);
    run.assert_code(Exit::Busy);
    run.stderr_has("waiting for q: agent C (lease) holds q, lease ends in");
    assert!(!run.stderr().contains("for \"\""), "{}", run.stderr());
}

/// Issue 13: re-acquiring a lease the agent holds answers at once: the same lease (renewed)
/// for the same lock, a clear error for an overlapping one; never a wait for itself.
#[test]
fn reacquiring_an_own_lease_answers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let first = Maos::new(ws)
        .agent("A")
        .run(["lock", "acquire", "src/api.rs"]);
    first.ok();
    let again = Maos::new(ws)
        .agent("A")
        .run(["lock", "acquire", "src/api.rs", "--wait", "10m"]);
    again.ok();
    again.stderr_has("already held this lock");
    assert_eq!(first.stdout(), again.stdout(), "the same token");
    let overlapping = Maos::new(ws)
        .agent("A")
        .run(["lock", "acquire", "src", "--wait", "10m"]);
    overlapping.assert_code(Exit::Busy);
    overlapping.stderr_has("already holds src/api.rs as a lease");
    let run =
        Maos::new(ws)
            .agent("A")
            .run(["lock", "run", "src/api.rs", "--wait", "10m", "--", "true"]);
    run.assert_code(Exit::Busy);
    run.stderr_has("already holds");
}

/// Issue 11, item 7: A runs `lock run X -- CMD`; B holds Y and waits for X; another process
/// of A waits for Y. One node per agent would call that a cycle; it is a chain that ends
/// with CMD: `deadlock check --resolve` reports nothing and aborts nothing.
#[test]
fn waits_of_two_processes_of_one_agent_are_not_a_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let mut run = Maos::new(ws)
        .agent("A")
        .cmd()
        .args(["lock", "run", "x", "--", "sh", "-c", "echo started; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(run.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    Maos::new(ws).agent("B").run(["lock", "acquire", "y"]).ok();
    let wb = Maos::new(ws)
        .agent("B")
        .cmd()
        .args(["lock", "acquire", "x", "--wait", "2m"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while waiters(ws) < 1 {}
    let wa = Maos::new(ws)
        .agent("A")
        .cmd()
        .args(["lock", "acquire", "y", "--wait", "2m"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while waiters(ws) < 2 {}
    let check = Maos::new(ws)
        .agent("m")
        .run(["deadlock", "check", "--resolve", "--json"]);
    check.assert_code(Exit::Ok);
    assert_eq!(json(&check)["deadlock"], false);
    // The chain resolves by itself: the command ends, B gets X, B lets Y go, A gets Y.
    let mut stdin = run.stdin.take().unwrap();
    stdin.write_all(b"done\n").unwrap();
    drop(stdin);
    assert!(run.wait().unwrap().success());
    Run::wait(wb).ok();
    Maos::new(ws).agent("B").run(["lock", "release", "y"]).ok();
    Run::wait(wa).ok();
}
