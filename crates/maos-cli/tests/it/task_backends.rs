//! `maos task edit`, `comment`, `unassign`, `show` (history) and `watch`: the same test
//! bodies on the files and on the throwaway PostgreSQL server of this test process.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::BufRead as _;
use std::process::Stdio;

use crate::backend_cli::pg_workspace;
use crate::util::{Exit, Maos};

/// The file workspace and the PostgreSQL workspace of one test, with their names.
fn both(file: &tempfile::TempDir, pg: &tempfile::TempDir) -> [(&'static str, Maos); 2] {
    [
        ("file", Maos::new(file.path())),
        ("postgresql", pg_workspace(pg.path()).0),
    ]
}

fn add(who: &Maos, args: &[&str]) -> String {
    let mut all = vec!["task", "add"];
    all.extend_from_slice(args);
    let r = who.run(all);
    r.ok();
    r.stdout().trim().to_string()
}

fn show(who: &Maos, id: &str) -> serde_json::Value {
    let r = who.run(["--json", "task", "show", id]);
    r.ok();
    r.json()
}

/// The kinds of a task's history events, in order, with who caused each and whether forced.
fn kinds(d: &serde_json::Value) -> Vec<String> {
    d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} by {}{}",
                e["event"].as_str().unwrap(),
                e["by"].as_str().unwrap_or("-"),
                if e["forced"] == true { " forced" } else { "" }
            )
        })
        .collect()
}

/// Every field of `task edit`, a cycle through `--add-after` refused, ownership refused without
/// `--force`, comments and unassigning in the history: each backend says the same.
#[test]
fn edit_comment_unassign_and_history_say_the_same_on_both_backends() {
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut histories = Vec::new();
    for (name, maos) in both(&f, &p) {
        let alice = maos.agent("alice");
        let bob = maos.agent("bob");
        let a = add(&alice, &["schema"]);
        let b = add(&alice, &["api", "--after", &a]);
        let c = add(&alice, &["docs"]);

        // Each descriptive field, in one atomic edit; the revision moves once.
        let before = show(&alice, &b)["revision"].as_u64().unwrap();
        let r = alice.run([
            "--json",
            "task",
            "edit",
            &b,
            "--name",
            "api v2",
            "-d",
            "REST",
            "--estimate",
            "2h",
            "--priority",
            "high",
            "--label",
            "x",
            "--label",
            "y",
        ]);
        r.ok();
        let t = r.json();
        assert_eq!(t["name"], "api v2", "{name}: {t}");
        assert_eq!(t["description"], "REST", "{name}");
        assert_eq!(t["estimate_ms"], 7_200_000, "{name}: {t}");
        assert_eq!(t["priority"], "high", "{name}: {t}");
        assert_eq!(t["labels"], serde_json::json!(["x", "y"]), "{name}");
        assert_eq!(t["revision"].as_u64().unwrap(), before + 1, "{name}");
        let t = alice.run(["--json", "task", "edit", &b, "--no-estimate", "--no-labels"]);
        t.ok();
        let t = t.json();
        assert!(t.get("estimate_ms").is_none(), "{name}: {t}");
        assert!(t.get("labels").is_none(), "{name}: {t}");
        // Nothing to change is a usage error.
        alice.run(["task", "edit", &b]).assert_code(Exit::Usage);

        // A dependency that closes a cycle is refused, naming it; nothing changes.
        let out = alice.run(["task", "edit", &a, "--add-after", &b]);
        out.assert_code(Exit::Error);
        out.stderr_has("cycle");
        assert!(show(&alice, &a).get("dependencies").is_none(), "{name}");
        // Dependencies added and removed in one edit: b now waits for c instead of a.
        let t = alice.run([
            "--json",
            "task",
            "edit",
            &b,
            "--add-after",
            &c,
            "--remove-after",
            &a,
        ]);
        t.ok();
        assert_eq!(t.json()["dependencies"], serde_json::json!([c]), "{name}");
        assert_eq!(t.json()["status"], "blocked", "{name}");
        // An unknown dependency is refused.
        alice
            .run(["task", "edit", &b, "--add-after", "tzzzzzzzzzzzz"])
            .assert_code(Exit::Error);

        // Bob starts the docs task: it is assigned to him, his to move.
        let started = bob.run(["--json", "task", "start", &c]);
        started.ok();
        assert_eq!(started.json()["assigned_to"], "bob", "{name}");
        let claimed = c.clone();
        let out = alice.run(["task", "edit", &claimed, "--assignee", "alice"]);
        out.assert_code(Exit::Error);
        out.stderr_has("assigned to bob");
        let out = alice.run(["task", "unassign", &claimed]);
        out.assert_code(Exit::Error);
        out.stderr_has("assigned to bob");
        assert_eq!(show(&alice, &claimed)["assigned_to"], "bob", "{name}");
        // With --force it is handed over, recorded as forced.
        let t = alice.run([
            "--json",
            "task",
            "edit",
            &claimed,
            "--assignee",
            "carol",
            "--force",
        ]);
        t.ok();
        assert_eq!(t.json()["assigned_to"], "carol", "{name}");
        assert_eq!(t.json()["status"], "in_progress", "{name}");
        // Carol gives it up: it goes back to the queue.
        let t = maos
            .agent("carol")
            .run(["--json", "task", "unassign", &claimed]);
        t.ok();
        assert!(t.json()["assigned_to"].is_null(), "{name}: {}", t.stdout());
        assert_eq!(t.json()["status"], "pending", "{name}");

        // Comments: anyone may; they show in the history and change nothing else.
        let rev = show(&alice, &a)["revision"].clone();
        let d = bob.run(["--json", "task", "comment", &a, "looks fine"]);
        d.ok();
        let d = d.json();
        let last = d["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["event"], "comment", "{name}: {d}");
        assert_eq!(last["text"], "looks fine", "{name}");
        assert_eq!(last["by"], "bob", "{name}");
        assert_eq!(d["revision"], rev, "{name}");
        alice
            .run(["task", "comment", &a, "  "])
            .assert_code(Exit::Error);
        alice
            .run(["task", "show", &a])
            .ok()
            .stdout_has("bob: comment: looks fine");
        // Status changes with notes are in the history too; a completion unblocks.
        alice.run(["task", "edit", &b, "--remove-after", &c]).ok();
        let hist = show(&alice, &b);
        assert_eq!(hist["status"], "pending", "{name}: {hist}");
        let text = alice.run(["task", "show", &claimed]);
        text.ok();
        text.stdout_has("(forced)");
        text.stdout_has("unassigned (back to pending)");

        histories.push(
            [&a, &b, &c]
                .iter()
                .map(|id| kinds(&show(&alice, id)))
                .collect::<Vec<_>>(),
        );
        // The JSON of `task show` has the same fields on both backends.
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        histories.push(vec![keys(&show(&alice, &a))]);
    }
    assert_eq!(histories[0], histories[2], "the histories differ");
    assert_eq!(
        histories[1], histories[3],
        "the JSON of `task show` differs"
    );
    assert!(
        histories[0][0].iter().any(|e| e.starts_with("created")),
        "{:?}",
        histories[0]
    );
}

/// `task watch --until-done` is woken by a write from another process and exits 0; with
/// `--timeout` and work left it exits 3 after the time.
#[test]
fn watch_wakes_on_another_process_write_and_honours_its_timeout_on_both_backends() {
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (name, maos) in both(&f, &p) {
        let lead = maos.agent("lead");
        let id = add(&lead, &["only"]);
        let mut watch = lead
            .cmd()
            .args([
                "--json",
                "task",
                "watch",
                "--until-done",
                "--timeout",
                "120s",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Its first report (one task pending) is out: it is waiting now.
        let mut out = std::io::BufReader::new(watch.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let r: serde_json::Value = serde_json::from_str(&first).unwrap();
        assert_eq!(r["pending_tasks"], 1, "{name}: {first}");
        // Another process claims and completes the task.
        let w = maos.agent("w");
        w.run(["task", "claim"]).ok();
        w.run(["task", "done", &id]).ok();
        let status = watch.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert!(status.success(), "{name}: {status:?} {rest}");
        let last: serde_json::Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
        assert_eq!(last["completed_tasks"], 1, "{name}: {rest}");

        // Work left and a timeout: exit 3, saying so.
        add(&lead, &["more"]);
        let out = lead.run(["task", "watch", "--until-done", "--timeout", "1s"]);
        out.assert_code(Exit::Busy);
        out.stderr_has("timed out");
    }
}

/// Two processes at a time edit and comment on one task: every comment is in the history,
/// every edit moved the revision once, nothing lost.
#[test]
fn concurrent_edits_and_comments_lose_nothing_on_both_backends() {
    const WRITERS: usize = 2;
    const ROUNDS: usize = 5;
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (name, maos) in both(&f, &p) {
        let id = add(&maos.agent("lead"), &["shared"]);
        let start = show(&maos, &id)["revision"].as_u64().unwrap();
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let me = maos.agent(&format!("w{w}"));
                let id = &id;
                s.spawn(move || {
                    for r in 0..ROUNDS {
                        me.run(["task", "comment", id, &format!("w{w} round {r}")])
                            .ok();
                        me.run(["task", "edit", id, "--label", &format!("w{w}-{r}")])
                            .ok();
                    }
                });
            }
        });
        let d = show(&maos, &id);
        let history = d["history"].as_array().unwrap();
        let mut comments: Vec<&str> = history
            .iter()
            .filter(|e| e["event"] == "comment")
            .map(|e| e["text"].as_str().unwrap())
            .collect();
        comments.sort_unstable();
        let mut want: Vec<String> = (0..WRITERS)
            .flat_map(|w| (0..ROUNDS).map(move |r| format!("w{w} round {r}")))
            .collect();
        want.sort();
        assert_eq!(comments, want, "{name}");
        let edits = history.iter().filter(|e| e["event"] == "edited").count();
        assert_eq!(edits, WRITERS * ROUNDS, "{name}");
        assert_eq!(
            d["revision"].as_u64().unwrap(),
            start + (WRITERS * ROUNDS) as u64,
            "{name}: {d}"
        );
        // The history is in write order: sequence numbers only grow.
        let seqs: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}: {seqs:?}");
    }
}

/// A failed or cancelled dependency keeps its dependents blocked with the same reason, a reset
/// clears it, and every status change is in the histories: the same on both backends.
#[test]
fn given_up_dependencies_and_their_histories_are_the_same_on_both_backends() {
    let (f, p) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut seen = Vec::new();
    for (name, maos) in both(&f, &p) {
        let lead = maos.agent("lead");
        let a = add(&lead, &["a"]);
        let b = add(&lead, &["b"]);
        let c = add(&lead, &["c", "--after", &a, "--after", &b]);
        lead.run(["task", "cancel", &a, "--note", "not needed"])
            .ok();
        let t = show(&lead, &c);
        assert_eq!(t["status"], "blocked", "{name}");
        assert_eq!(
            t["blocked_reason"],
            format!("dependency {a} was cancelled: not needed"),
            "{name}: {t}"
        );
        lead.run(["task", "start", &b]).ok();
        lead.run(["task", "fail", &b, "--note", "red"]).ok();
        // The first reason stays; reopening `a` hands over to `b`'s.
        lead.run(["task", "reset", &a]).ok();
        lead.run(["task", "edit", &c, "--remove-after", &a]).ok();
        let t = show(&lead, &c);
        assert_eq!(
            t["blocked_reason"],
            format!("dependency {b} failed: red"),
            "{name}: {t}"
        );
        lead.run(["task", "reset", &b]).ok();
        lead.run(["task", "start", &b]).ok();
        lead.run(["task", "done", &b]).ok();
        let t = show(&lead, &c);
        assert_eq!(t["status"], "pending", "{name}: {t}");
        assert!(t.get("blocked_reason").is_none(), "{name}: {t}");
        let events = |id: &str| -> Vec<String> {
            show(&lead, id)["history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    let o = e.as_object_mut().unwrap();
                    for k in ["seq", "at", "dependency", "task"] {
                        o.remove(k);
                    }
                    e.to_string().replace(&a, "<a>").replace(&b, "<b>")
                })
                .collect()
        };
        seen.push([events(&a), events(&b), events(&c)]);
        let text = lead.run(["task", "show", &c]);
        text.ok();
        text.stdout_has("ready: ");
    }
    assert_eq!(seen[0], seen[1], "the histories differ");
}
