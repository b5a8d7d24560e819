//! Choosing the backend (`maos init --backend`, `MAOS_BACKEND`) and its errors: against the
//! throwaway PostgreSQL server of this test process.

use maos_coordination::postgres::server;

use crate::util::{Exit, Maos};

/// A workspace initialised on the test server in a namespace of its own.
pub(crate) fn pg_workspace(dir: &std::path::Path) -> (Maos, String, String) {
    let url = server::shared_url().expect("a PostgreSQL server for the tests");
    let ns = server::unique_namespace("cli");
    let maos = Maos::uninitialised(dir);
    maos.run(["init", "--backend", &url, "--namespace", &ns])
        .ok();
    (maos, url, ns)
}

#[test]
fn init_records_the_backend_and_status_and_doctor_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let (maos, url, ns) = pg_workspace(dir.path());
    let config = std::fs::read_to_string(dir.path().join(".maos/config.json")).unwrap();
    let c: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(c["backend"], url.as_str(), "{config}");
    assert_eq!(c["namespace"], ns.as_str(), "{config}");

    let st = maos.run(["status", "--json"]);
    st.ok();
    let st = st.json();
    assert_eq!(st["backend"], "postgresql");
    assert!(st["location"].as_str().unwrap().contains(&ns), "{st}");
    maos.run(["status"])
        .ok()
        .stdout_has("backend    postgresql");
    maos.run(["doctor"]).ok().stdout_has("backend postgresql");

    // MAOS_BACKEND overrides the recorded backend.
    let mut cmd = maos.cmd();
    cmd.env("MAOS_BACKEND", "file").args(["status", "--json"]);
    let out = crate::util::Run::of(&mut cmd);
    out.ok();
    assert_eq!(out.json()["backend"], "file");

    // `init --backend file` goes back to the files; a plain `init` keeps the choice.
    maos.run(["init"]).ok();
    assert_eq!(
        maos.run(["status", "--json"]).json()["backend"],
        "postgresql"
    );
    maos.run(["init", "--backend", "file"]).ok();
    assert_eq!(maos.run(["status", "--json"]).json()["backend"], "file");
    let config = std::fs::read_to_string(dir.path().join(".maos/config.json")).unwrap();
    assert!(!config.contains("postgres"), "{config}");
}

#[test]
fn a_password_in_the_url_is_refused_and_never_printed_or_stored() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::uninitialised(dir.path());
    let out = maos.run([
        "init",
        "--backend",
        "postgres://u:hunter2@127.0.0.1/db",
        "--namespace",
        "x",
    ]);
    out.assert_code(Exit::Error);
    out.stderr_has("PGPASSWORD");
    assert!(!out.stderr().contains("hunter2"), "{}", out.stderr());
    let config = std::fs::read_to_string(dir.path().join(".maos/config.json")).unwrap_or_default();
    assert!(!config.contains("hunter2"), "{config}");
}

#[test]
fn an_unreachable_server_or_a_bad_backend_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::uninitialised(dir.path());
    // Port 1 on loopback: nothing listens there.
    let out = maos.run([
        "init",
        "--backend",
        "postgres://maos@127.0.0.1:1/maos",
        "--namespace",
        "x",
    ]);
    out.assert_code(Exit::Error);
    out.stderr_has("postgres://maos@127.0.0.1:1/maos");
    out.stderr_has("check that the server runs");
    let config = std::fs::read_to_string(dir.path().join(".maos/config.json")).unwrap_or_default();
    assert!(
        !config.contains("127.0.0.1"),
        "recorded although unreachable: {config}"
    );

    // A backend that is neither `file` nor a URL, from the environment.
    let mut cmd = maos.cmd();
    cmd.env("MAOS_BACKEND", "mysql://x").args(["task", "list"]);
    let out = crate::util::Run::of(&mut cmd);
    out.assert_code(Exit::Error);
    out.stderr_has("MAOS_BACKEND");
    out.stderr_has("postgres://");

    // A hostile namespace: refused before any connection, naming the rule and the way out.
    let out = maos.run([
        "init",
        "--backend",
        "postgres://maos@127.0.0.1:1/maos",
        "--namespace",
        "a'; DROP TABLE x; --",
    ]);
    out.assert_code(Exit::Error);
    out.stderr_has("the namespace given for the PostgreSQL backend");
    out.stderr_has("only letters, digits");
    out.stderr_has("--namespace NAME");
}

#[test]
fn a_server_schema_newer_than_this_maos_is_refused() {
    // A database of its own: the schema version is per database.
    let url = server::shared_url().unwrap();
    let db = format!(
        "newer_{}",
        &server::unique_namespace("s")[5..].replace('-', "_")
    );
    let psql = server::find_binaries().unwrap().join("psql");
    // The same server, another database (the URL ends with `/postgres`).
    let base = url
        .strip_suffix("/postgres")
        .expect("the test server's URL")
        .to_owned();
    let sql = |db: &str, q: &str| {
        let out = std::process::Command::new(&psql)
            .arg(format!("{base}/{db}"))
            .args(["-v", "ON_ERROR_STOP=1", "-qc", q])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sql("postgres", &format!("CREATE DATABASE {db}"));
    let db_url = format!("{base}/{db}");
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::uninitialised(dir.path());
    maos.run(["init", "--backend", &db_url, "--namespace", "n"])
        .ok();
    sql(&db, "UPDATE maos.schema_version SET version = version + 1");
    let out = maos.run(["status"]);
    out.assert_code(Exit::Error);
    out.stderr_has(&db_url);
    out.stderr_has("upgrade maos");
}

/// One step of the scripted session: who, what, and what it printed.
struct Step {
    what: String,
    code: Option<i32>,
    out: String,
}

/// Replaces what differs between two runs by nature (ids, tokens, times) with placeholders
/// numbered in order of appearance, so two sessions compare line by line.
fn normalise(text: &str, ids: &mut Vec<String>) -> String {
    let mut out = String::new();
    for word in text.split_inclusive([' ', '\n', '"', ',', ':', '(', ')', '#', '@', ';']) {
        let (w, sep) = match word.char_indices().last() {
            Some((i, c)) if " \n\",:()#@;".contains(c) => (&word[..i], &word[i..]),
            _ => (word, ""),
        };
        let idish = w.len() >= 8
            && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && (w.chars().any(|c| c.is_ascii_digit())
                // a task id may happen to hold no digit: `t` and 12 lower-case characters
                || (w.len() == 13
                    && w.starts_with('t')
                    && w.chars().all(|c| c.is_ascii_lowercase())));
        if idish {
            let n = ids.iter().position(|x| x == w).unwrap_or_else(|| {
                ids.push(w.to_string());
                ids.len() - 1
            });
            out.push_str(&format!("<id{n}>"));
        } else {
            out.push_str(w);
        }
        out.push_str(sep);
    }
    out
}

/// The same session of `maos` commands by two agents, on the workspace of `maos`.
fn session(maos: &Maos) -> Vec<Step> {
    let a = maos.agent("alice");
    let b = maos.agent("bob");
    let mut steps = Vec::new();
    let mut run = |who: &Maos, name: &str, args: &[&str]| -> String {
        let r = who.run(args);
        let out = r.stdout();
        steps.push(Step {
            what: format!("{name}: maos {}", args.join(" ")),
            code: r.code(),
            out: out.clone(),
        });
        out
    };
    run(&a, "alice", &["agents", "register", "--role", "backend"]);
    run(&b, "bob", &["agents", "register", "--role", "frontend"]);
    run(
        &a,
        "alice",
        &["send", "api", "--data", "\"hello\"", "--to", "bob"],
    );
    run(
        &a,
        "alice",
        &["send", "api", "--data", "{\"k\":1}", "--role", "frontend"],
    );
    run(
        &a,
        "alice",
        &["send", "api", "--data", "3", "--to", "carol"],
    );
    // What no reader could decode is refused on both (nothing written, exit 1).
    let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
    run(&a, "alice", &["send", "api", "--data", &deep]);
    run(&a, "alice", &["send", "api", "--data", r#""\ud800""#]);
    run(&a, "alice", &["send", "api", "--data", "[1e400]"]);
    run(&a, "alice", &["broadcast", "build/deep", "--data", &deep]);
    // The same size limits on both: a purpose over 64 KiB is refused.
    let purpose = "p".repeat(100_000);
    run(
        &a,
        "alice",
        &["lock", "acquire", "big", "--purpose", &purpose],
    );
    run(&b, "bob", &["recv", "api"]);
    run(&b, "bob", &["recv", "api", "--everything", "--after", "1"]);
    run(
        &b,
        "bob",
        &["recv", "api", "--consumer", "c1", "--count", "1"],
    );
    run(&b, "bob", &["recv", "api", "--consumer", "c1"]);
    run(&b, "bob", &["recv", "api", "--consumer", "c1"]);
    run(&b, "bob", &["recv", "nosuch"]);
    run(&b, "bob", &["channels"]);
    run(
        &a,
        "alice",
        &["broadcast", "build/done", "--data", "\"green\""],
    );
    run(&a, "alice", &["broadcast", "deploy/prod", "--data", "1"]);
    run(&a, "alice", &["broadcast", "tasks/forged", "--data", "1"]);
    run(&b, "bob", &["subscribe", "build/*"]);
    run(
        &b,
        "bob",
        &[
            "subscribe",
            "build/*",
            "deploy/**",
            "--consumer",
            "s1",
            "--count",
            "1",
        ],
    );
    run(
        &b,
        "bob",
        &["subscribe", "build/*", "deploy/**", "--consumer", "s1"],
    );
    run(
        &a,
        "alice",
        &[
            "lock",
            "acquire",
            "src/api.rs",
            "--ttl",
            "10m",
            "--purpose",
            "refactor",
        ],
    );
    run(
        &a,
        "alice",
        &["lock", "acquire", "src/api.rs", "--ttl", "10m"],
    );
    run(&b, "bob", &["lock", "check", "src/api.rs"]);
    run(&b, "bob", &["lock", "acquire", "src/**", "--wait", "0s"]);
    run(&b, "bob", &["lock", "acquire", "docs/x.md", "--shared"]);
    run(&a, "alice", &["lock", "acquire", "docs/x.md", "--shared"]);
    run(&b, "bob", &["lock", "release", "src/api.rs"]);
    run(
        &a,
        "alice",
        &["lock", "renew", "src/api.rs", "--ttl", "20m"],
    );
    run(&a, "alice", &["lock", "release", "src/api.rs"]);
    run(&b, "bob", &["lock", "check", "src/api.rs"]);
    run(
        &b,
        "bob",
        &[
            "--json",
            "lock",
            "run",
            "src/api.rs",
            "--",
            "sh",
            "-c",
            "test -n \"$MAOS_LOCK_TOKEN\"",
        ],
    );
    run(&b, "bob", &["deadlock", "check"]);
    let one = run(&a, "alice", &["task", "add", "schema", "--estimate", "1h"]);
    let one = one.trim().to_string();
    let two = run(
        &a,
        "alice",
        &["task", "add", "api", "--after", &one, "--priority", "high"],
    );
    let two = two.trim().to_string();
    run(&a, "alice", &["task", "add", "docs", "--label", "doc"]);
    run(&a, "alice", &["task", "ready"]);
    run(&b, "bob", &["task", "claim"]);
    run(&a, "alice", &["task", "done", &one]);
    run(&b, "bob", &["task", "done", &one, "--note", "schema in"]);
    run(&b, "bob", &["task", "claim"]);
    run(&b, "bob", &["task", "fail", &two, "--note", "tests red"]);
    run(&b, "bob", &["task", "start", &two]);
    run(&b, "bob", &["task", "claim"]);
    run(&b, "bob", &["task", "claim"]);
    run(&a, "alice", &["task", "list"]);
    run(&a, "alice", &["task", "list", "--status", "failed"]);
    run(&a, "alice", &["task", "ready", "--all"]);
    run(&a, "alice", &["--json", "task", "report"]);
    run(&a, "alice", &["task", "gantt"]);
    run(&a, "alice", &["task", "graph"]);
    run(&a, "alice", &["agents", "heartbeat"]);
    run(&a, "alice", &["agents", "unregister", "bob"]);
    run(&a, "alice", &["agents", "list"]);
    steps
}

/// Keeps the parts of a step's output that both backends must agree on.
fn comparable(step: &Step, ids: &mut Vec<String>) -> String {
    if step.what.contains("task report") {
        // Timestamps and durations differ by nature; the counts must not.
        let v: serde_json::Value = serde_json::from_str(&step.out).unwrap_or_default();
        return [
            "total_tasks",
            "completed_tasks",
            "failed_tasks",
            "in_progress_tasks",
            "pending_tasks",
            "blocked_tasks",
        ]
        .iter()
        .map(|k| format!("{k}={}", v[k]))
        .collect::<Vec<_>>()
        .join(" ");
    }
    if step.what.contains("lock run")
        || step.what.contains("agents register")
        || step.what.contains("agents heartbeat")
        || step.what.contains("agents list")
    {
        return String::new(); // process anchors, pids and lease times
    }
    let text = if step.what.ends_with("maos channels") {
        // Bytes on disk are the file backend's own measure.
        step.out
            .lines()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    } else if step.what.contains("task gantt") {
        // How long a finished task took differs by nature.
        step.out
            .split_inclusive([' ', '\n'])
            .map(|w| {
                let t = w.trim_end();
                match t.strip_suffix("ms") {
                    Some(n) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
                        w.replace(t, "<ms>")
                    }
                    _ => w.to_string(),
                }
            })
            .collect()
    } else if step.what.contains("lock release")
        || step.what.contains("lock acquire")
        || step.what.contains("lock renew")
        || step.what.contains("lock check")
    {
        // Fencing tokens come from different counters; the shape must match.
        step.out
            .lines()
            .map(|l| {
                l.split(" token ")
                    .next()
                    .unwrap_or(l)
                    .split(", lease")
                    .next()
                    .unwrap_or(l)
                    .to_string()
            })
            .map(|l| {
                if l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty() {
                    "<token>".into()
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        step.out.clone()
    };
    normalise(&text, ids)
}

#[test]
fn one_scripted_session_says_the_same_on_both_backends() {
    let file_dir = tempfile::tempdir().unwrap();
    let file = Maos::new(file_dir.path());
    let pg_dir = tempfile::tempdir().unwrap();
    let (pg, _, _) = pg_workspace(pg_dir.path());
    let a = session(&file);
    let b = session(&pg);
    let (mut ia, mut ib) = (Vec::new(), Vec::new());
    let mut diffs = Vec::new();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            x.what.split(' ').take(4).collect::<Vec<_>>(),
            y.what.split(' ').take(4).collect::<Vec<_>>()
        );
        let (cx, cy) = (comparable(x, &mut ia), comparable(y, &mut ib));
        if x.code != y.code || cx != cy {
            diffs.push(format!(
                "{}\n  file ({:?}): {cx:?}\n  pg   ({:?}): {cy:?}",
                x.what, x.code, y.code
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "the backends disagree:\n{}",
        diffs.join("\n")
    );
    // The session did real work on the server: a failed, a completed and a claimed task.
    let report = b.iter().find(|s| s.what.contains("task report")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&report.out).unwrap();
    assert_eq!(r["total_tasks"], 3, "{r}");
    assert_eq!(r["completed_tasks"], 1, "{r}");
}

/// Claims by several real `maos` processes at once: every task is claimed exactly once,
/// on the files and on the server alike.
#[test]
fn concurrent_maos_processes_claim_each_task_once_on_both_backends() {
    const TASKS: usize = 12;
    const WORKERS: usize = 4;
    let file_dir = tempfile::tempdir().unwrap();
    let pg_dir = tempfile::tempdir().unwrap();
    let file = Maos::new(file_dir.path());
    let (pg, _, _) = pg_workspace(pg_dir.path());
    for (name, maos) in [("file", file), ("postgresql", pg)] {
        let lead = maos.agent("lead");
        let mut ids: Vec<String> = (0..TASKS)
            .map(|i| {
                let r = lead.run(["task", "add", &format!("t{i}")]);
                r.ok();
                r.stdout().trim().to_string()
            })
            .collect();
        let claimed: Vec<(String, String)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let me = maos.agent(&format!("w{w}"));
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        loop {
                            let r = me.run(["--json", "task", "claim"]);
                            if r.code() == Some(Exit::Busy as i32) {
                                return mine;
                            }
                            r.ok();
                            let t = r.json();
                            assert_eq!(t["assigned_to"], format!("w{w}"), "{t}");
                            mine.push((t["id"].as_str().unwrap().to_string(), format!("w{w}")));
                        }
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut got: Vec<String> = claimed.iter().map(|(id, _)| id.clone()).collect();
        got.sort();
        ids.sort();
        assert_eq!(got, ids, "{name}: every task claimed exactly once");
        let list = maos.run(["--json", "task", "list", "--status", "in_progress"]);
        list.ok();
        assert_eq!(list.json().as_array().unwrap().len(), TASKS, "{name}");
    }
}

#[test]
fn the_default_namespace_is_the_repository_identity_and_is_needed() {
    let url = server::shared_url().unwrap();
    // No repository: no identity to name the namespace after.
    let bare = tempfile::tempdir().unwrap();
    let out = Maos::uninitialised(bare.path()).run(["init", "--backend", &url]);
    out.assert_code(Exit::Error);
    out.stderr_has("--namespace");
    // A repository with a commit: `repo-<root commit>`, the same in every clone.
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .current_dir(repo.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["commit", "-q", "--allow-empty", "-m", "root"]);
    let root = git(&["rev-list", "--max-parents=0", "HEAD"]);
    let clone = tempfile::tempdir().unwrap();
    let cloned = std::process::Command::new("git")
        .args(["clone", "-q"])
        .arg(repo.path())
        .arg(clone.path().join("c"))
        .output()
        .unwrap();
    assert!(cloned.status.success());
    for dir in [repo.path().to_path_buf(), clone.path().join("c")] {
        let maos = Maos::uninitialised(&dir);
        maos.run(["init", "--backend", &url]).ok();
        let st = maos.run(["status", "--json"]);
        st.ok();
        assert!(
            st.json()["location"]
                .as_str()
                .unwrap()
                .ends_with(&format!("namespace repo-{root}")),
            "{}",
            st.json()
        );
    }
    // Both clones see one task graph.
    let a = Maos::new(repo.path()).agent("a");
    let b = Maos::new(clone.path().join("c")).agent("b");
    let id = a.run(["task", "add", "shared"]);
    id.ok();
    let id = id.stdout().trim().to_string();
    b.run(["task", "show", &id]).ok().stdout_has("shared");
}

/// The file workspace and the PostgreSQL workspace of one test, with their names.
pub(crate) fn both(file: &tempfile::TempDir, pg: &tempfile::TempDir) -> [(&'static str, Maos); 2] {
    [
        ("file", Maos::new(file.path())),
        ("postgresql", pg_workspace(pg.path()).0),
    ]
}

/// Waiting commands are woken by other processes on both backends: `recv --follow` (also on a
/// channel that has no message yet), `subscribe --follow` and a `lock acquire` that waits.
#[test]
fn followers_and_waiters_wake_for_other_processes_on_both_backends() {
    use std::process::Stdio;
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (name, maos) in both(&f, &p) {
        let a = maos.agent("a");
        let b = maos.agent("b");
        let follow = |args: &[&str]| {
            b.cmd()
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        // A follower that starts before the channel exists waits for its first message.
        let recv = follow(&[
            "--json",
            "recv",
            "fresh",
            "--follow",
            "--count",
            "2",
            "--timeout",
            "60s",
        ]);
        let sub = follow(&[
            "--json",
            "subscribe",
            "ci/*",
            "--follow",
            "--count",
            "1",
            "--timeout",
            "60s",
        ]);
        a.run(["lock", "acquire", "shared/x", "--ttl", "10m"]).ok();
        let waiter = b
            .cmd()
            .args(["--json", "lock", "acquire", "shared/x", "--wait", "60s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        a.run(["send", "fresh", "--data", "1"]).ok();
        a.run(["send", "fresh", "--data", "2"]).ok();
        a.run(["broadcast", "ci/done", "--data", "\"green\""]).ok();
        // The waiter is queued (lock list shows it) before the holder lets go.
        let queued = || {
            a.run(["--json", "lock", "list"]).json()["waiters"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w["agent"] == "b"))
        };
        server::wait_until(std::time::Duration::from_secs(60), queued);
        a.run(["lock", "release", "shared/x"]).ok();
        let got = crate::util::Run::wait(recv);
        got.ok();
        let payloads: Vec<_> = got.lines().iter().map(|m| m["payload"].clone()).collect();
        assert_eq!(payloads, [1, 2], "{name}");
        let got = crate::util::Run::wait(sub);
        got.ok();
        assert_eq!(got.lines()[0]["topic"], "ci/done", "{name}");
        let got = crate::util::Run::wait(waiter);
        got.ok();
        assert_eq!(got.json()["owner"], "b", "{name}: {}", got.stdout());
    }
}

/// Every command works on the server of a PostgreSQL workspace, never on the local files
/// (nobody else would see them): the last one that refused, `maos dashboard`, now serves the
/// server's state, and nothing is written under .maos/ by it.
#[test]
fn a_postgresql_workspace_keeps_its_state_on_the_server_only() {
    let dir = tempfile::tempdir().unwrap();
    let (maos, _, _) = pg_workspace(dir.path());
    // (The inbox, stored subscriptions and pruning work on PostgreSQL: inbox_cli.rs.)
    // (`task edit`, `comment`, `unassign` and `watch` work on PostgreSQL: task_backends.rs.)
    // (`maos merge` works on PostgreSQL: `merge_on_postgresql_across_two_clones`.)
    // (`maos dashboard` and `status --watch` on PostgreSQL: dashboard_cli.rs.)
    maos.run(["send", "api", "--data", "1"]).ok();
    maos.run(["task", "add", "t"]).ok();
    let mut child = maos
        .cmd()
        .args(["--json", "dashboard", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "dashboard did not start ({e}): {line:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["backend"], "postgresql", "{v}");
    // (The hooks and `maos mcp` work on PostgreSQL: hooks_cli.rs and mcp_cli.rs.)
    // Nothing was written under .maos/ by them: the stores stay empty.
    for store in ["channels", "tasks", "inboxes"] {
        let d = dir.path().join(".maos").join(store);
        let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} holds files", d.display());
    }
}

/// `maos lock run` excludes real processes from each other on both backends: a
/// read-increment-write of a shared counter file loses no update.
#[test]
fn lock_run_serialises_real_processes_on_both_backends() {
    const WORKERS: usize = 4;
    const EACH: usize = 5;
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (name, maos) in both(&f, &p) {
        let counter = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(counter.path(), "0").unwrap();
        let path = counter.path().to_str().unwrap().to_string();
        // A window between the read and the write that another holder would fall into.
        let script = format!(
            "n=$(cat '{path}'); for i in 1 2 3 4 5 6 7 8; do :; done; echo $((n+1)) > '{path}'"
        );
        std::thread::scope(|s| {
            for w in 0..WORKERS {
                let me = maos.agent(&format!("w{w}"));
                let script = &script;
                s.spawn(move || {
                    for _ in 0..EACH {
                        me.run([
                            "lock", "run", "counter", "--wait", "120s", "--", "sh", "-c", script,
                        ])
                        .ok();
                    }
                });
            }
        });
        let n: usize = std::fs::read_to_string(counter.path())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(n, WORKERS * EACH, "{name}: an update was lost");
        let left = maos.run(["--json", "lock", "list"]);
        assert!(
            left.json()["holders"].as_array().unwrap().is_empty(),
            "{name}"
        );
    }
}

/// Issue 11.1 on PostgreSQL: the lock lives in `maos`'s database session, which no child can
/// inherit. When `maos` is SIGKILLed during `lock run`, its command and every process the
/// command started are killed (the lock went with the session), so no command ever runs on
/// without its lock; the lock is then free for the others. The command's status and its lock
/// token still reach it as on the files.
#[test]
fn lock_run_on_postgresql_never_leaves_its_command_running_without_the_lock() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (maos, _, _) = pg_workspace(dir.path());
    let a = maos.agent("A");
    let done = a.run([
        "lock",
        "run",
        "res",
        "--",
        "sh",
        "-c",
        "test -n \"$MAOS_LOCK_TOKEN\" && exit 7",
    ]);
    assert_eq!(
        done.code(),
        Some(7),
        "the command's status, with its token set"
    );
    let mut cli = a
        .cmd()
        .args(["lock", "run", "--ttl", "2s", "res", "--"])
        .args(["sh", "-c", "sleep 600 & echo $$ $!; wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(cli.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let procs: Vec<_> = pids
        .iter()
        .map(|p| maos_coordination::core::ProcessIdentity::of(*p).unwrap())
        .collect();
    cli.kill().unwrap(); // SIGKILL: maos only
    cli.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for p in &procs {
        while p.state() == maos_coordination::core::ProcessState::Running {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {} still runs without the lock",
                p.pid
            );
            std::thread::yield_now();
        }
    }
    maos.agent("B")
        .run(["lock", "acquire", "res", "--wait", "1m"])
        .ok();
}

/// `git ARGS` in `dir` as a fixed author; its stdout.
fn git(dir: &std::path::Path, args: &[&str]) -> String {
    crate::util::Run::of(
        std::process::Command::new("git")
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .args(args),
    )
    .ok()
    .stdout()
}

/// Commits `text` as `routes.txt` on a new branch `branch` of the clone `dir` (from main).
fn branch_with(dir: &std::path::Path, branch: &str, text: &str) {
    git(dir, &["checkout", "-q", "-b", branch, "main"]);
    std::fs::write(dir.join("routes.txt"), text).expect("write routes.txt");
    git(dir, &["commit", "-qam", branch]);
    git(dir, &["checkout", "-q", "main"]);
}

/// Agents on two machines: two clones of one repository sharing a bare remote (their git)
/// and a PostgreSQL namespace (their maos). Each pushes its branch; the coordinator's
/// `merge check --all --fetch origin` sees both agents' pushed branches and their conflict;
/// the queue is one for both clones, and its runner (`queue run --fetch origin`) merges what
/// was pushed, turning the conflicting entry into resolution tasks that the other clone sees.
#[test]
fn merge_on_postgresql_across_two_clones() {
    let top = tempfile::tempdir().unwrap();
    let (remote, a, b) = (
        top.path().join("remote.git"),
        top.path().join("a"),
        top.path().join("b"),
    );
    git(
        top.path(),
        &["init", "-q", "--bare", "-b", "main", "remote.git"],
    );
    std::fs::create_dir(&a).unwrap();
    git(&a, &["init", "-q", "-b", "main"]);
    std::fs::write(a.join("routes.txt"), "one\ntwo\nthree\n").unwrap();
    std::fs::write(a.join(".gitignore"), ".maos/\n").unwrap();
    git(&a, &["add", "."]);
    git(&a, &["commit", "-qm", "base"]);
    git(&a, &["remote", "add", "origin", remote.to_str().unwrap()]);
    git(&a, &["push", "-q", "origin", "main"]);
    git(top.path(), &["clone", "-q", remote.to_str().unwrap(), "b"]);

    // One namespace on the server for both clones.
    let (ma, url, ns) = pg_workspace(&a);
    let mb = Maos::uninitialised(&b);
    mb.run(["init", "--backend", &url, "--namespace", &ns]).ok();
    let (alice, bob) = (ma.agent("alice"), mb.agent("bob"));
    alice.run(["agents", "register", "--branch", "feat-a"]).ok();
    bob.run(["agents", "register", "--branch", "feat-b"]).ok();

    // Both change line two: a conflict between the two machines' branches.
    branch_with(&a, "feat-a", "one\nTWO from a\nthree\n");
    branch_with(&b, "feat-b", "one\ntwo from b\nthree\n");
    git(&b, &["push", "-q", "origin", "feat-b"]);

    // Without fetching, the coordinator has no feat-b: an error naming it.
    let out = alice.run(["merge", "check", "--all", "--target", "main"]);
    out.assert_code(Exit::Error);
    out.stderr_has("feat-b");
    // Fetching, it reads origin/feat-b: both clean against main, conflicting with each other.
    let out = alice.run([
        "--json", "merge", "check", "--all", "--target", "main", "--fetch", "origin",
    ]);
    out.assert_code(Exit::Conflicts);
    let p = out.json();
    assert_eq!(p["vs_target"].as_array().unwrap().len(), 2, "{p}");
    let pairs = p["pairwise"].as_array().unwrap();
    assert_eq!(pairs.len(), 1, "{p}");
    assert_eq!(pairs[0]["conflicts"][0]["path"], "routes.txt", "{p}");
    // A remote that does not exist: git's reason, exit 1.
    let out = alice.run(["merge", "check", "--all", "--fetch", "nowhere"]);
    out.assert_code(Exit::Error);
    out.stderr_has("git fetch nowhere");

    // Bob queues his pushed branch from his clone; the queue is the namespace's.
    let e = bob.run(["--json", "merge", "queue", "add", "origin/feat-b", "main"]);
    e.ok();
    let id = e.json()["id"].as_u64().unwrap();
    let listed = alice.run(["--json", "merge", "queue", "list"]);
    assert_eq!(
        listed.json()[0]["requested_by"],
        "bob",
        "{}",
        listed.stdout()
    );
    // Alice runs the queue (she is the coordinator): it merges what bob pushed.
    let run = alice.run(["--json", "merge", "queue", "run", "--fetch", "origin"]);
    run.ok();
    assert_eq!(
        run.json()["merged"],
        serde_json::json!([id]),
        "{}",
        run.stdout()
    );
    assert_eq!(
        std::fs::read_to_string(a.join("routes.txt")).unwrap(),
        "one\ntwo from b\nthree\n"
    );
    // Her own branch now conflicts with main: blocked, with resolution tasks on the server
    // that bob's clone lists.
    alice.run(["merge", "queue", "add", "feat-a", "main"]).ok();
    let run = alice.run(["--json", "merge", "queue", "run"]);
    run.assert_code(Exit::Conflicts);
    let tasks = bob.run(["--json", "task", "list"]);
    tasks.ok();
    let names: Vec<String> = tasks
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.iter().any(|n| n.contains("routes.txt")), "{names:?}");
    assert!(
        names.iter().any(|n| n == "Merge feat-a into main"),
        "{names:?}"
    );
    // A second runner while one holds the queue is refused (exit 3): hold it from this test.
    let pg = maos_coordination::postgres::Pg::connect(
        &maos_coordination::postgres::BackendUrl::parse(&url).unwrap(),
        &ns,
    )
    .unwrap();
    let held = maos_coordination::postgres::merge::PgQueue::new(&pg)
        .try_run()
        .unwrap()
        .expect("the queue is free");
    bob.run(["merge", "queue", "run"]).assert_code(Exit::Busy);
    drop(held);
    // Removing is shared too; nothing was written to either clone's queue file.
    bob.run(["merge", "queue", "remove", &id.to_string()]).ok();
    alice
        .run(["merge", "queue", "remove", &id.to_string()])
        .assert_code(Exit::Error);
    for clone in [&a, &b] {
        assert!(!clone.join(".maos/merge/queue.json").exists());
    }
}

/// `maos demo --backend URL`: the whole session (registry, tasks, claims, messages, locks and
/// the deadlock, the merge queue and its resolution tasks) on the server, git local; its
/// checks pass, and the state it leaves is on the server, not in the workspace's files.
#[test]
fn the_demo_runs_on_postgresql_and_passes_its_checks() {
    let url = server::shared_url().expect("a PostgreSQL server for the tests");
    let ns = server::unique_namespace("demo");
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let demo = |ns: &str, extra: &[&str], keep: &std::path::Path| {
        crate::util::Run::of(
            std::process::Command::new(crate::util::bin())
                .env_remove("MAOS_WORKSPACE")
                .env_remove("MAOS_AGENT_ID")
                .env_remove("MAOS_BACKEND")
                .env_remove("MAOS_NAMESPACE")
                .env_remove("RUST_LOG")
                .args(["demo", "--agents", "4", "--tasks", "3", "--seed", "11"])
                .args(["--backend", &url, "--namespace", ns])
                .args(extra)
                .arg("--keep")
                .arg(keep),
        )
    };
    let out = demo(&ns, &[], &ws);
    let text = out.stdout();
    assert!(
        out.status.success(),
        "the demo failed on PostgreSQL:\n{text}\n{}",
        out.stderr()
    );
    assert!(text.contains("every step held"), "{text}");
    assert!(!text.contains("- [ ]"), "{text}");
    out.stderr_has("on the postgresql backend");
    // The agents said they ran on the server.
    out.stderr_has("library on the postgresql backend");

    // The workspace records the server; what the session did is there.
    let auditor = Maos::new(&ws).agent("auditor");
    let st = auditor.run(["status", "--json"]);
    st.ok();
    assert_eq!(st.json()["backend"], "postgresql");
    let tasks = auditor.run(["--json", "task", "list"]);
    tasks.ok();
    let tasks = tasks.json();
    let tasks = tasks.as_array().unwrap();
    assert!(tasks.len() >= 10, "{tasks:?}");
    assert!(
        tasks.iter().all(|t| t["status"] == "completed"),
        "{tasks:?}"
    );
    assert!(
        tasks.iter().any(|t| t["labels"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l == "merge-conflict"))),
        "no resolution task on the server: {tasks:?}"
    );
    let queue = auditor.run(["--json", "merge", "queue", "list"]);
    queue.ok();
    let queue = queue.json();
    assert!(
        !queue.as_array().unwrap().is_empty()
            && queue
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["status"] == "merged"),
        "{queue}"
    );
    // Nothing of it in the files.
    for store in ["channels", "tasks", "locks", "agents"] {
        let d = ws.join(".maos").join(store);
        let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} holds files", d.display());
    }
    assert!(!ws.join(".maos/merge/queue.json").exists());

    // Through MCP: the agents' `maos mcp` servers and Claude Code hooks on the same server
    // (a namespace of its own), the same checks.
    let mcp_ns = server::unique_namespace("demo-mcp");
    let out = demo(&mcp_ns, &["--via", "mcp"], &dir.path().join("mcp"));
    let text = out.stdout();
    assert!(
        out.status.success(),
        "the demo through MCP failed on PostgreSQL:\n{text}\n{}",
        out.stderr()
    );
    assert!(text.contains("every step held"), "{text}");
    assert!(!text.contains("- [ ]"), "{text}");
}
