//! Every shell recipe in README.md and docs/cli.md runs as written (issue 13): the ```sh blocks
//! are extracted and run with bash, in order, in one fresh repository with the `maos` under
//! test first on PATH, as a user following the document would. Exported variables carry from
//! one block to the next, as in one terminal.
//!
//! A block must exit 0 unless a line right before its fence says otherwise (several such lines
//! may stack):
//! - `<!-- snippet: exit N -->`: it must exit N;
//! - `<!-- snippet: stdout has "TEXT" -->`: its output must contain TEXT (what the document
//!   says it prints);
//! - `<!-- snippet: runs until stopped -->`: a follower; it must still be running after a
//!   moment (not failed), and is then stopped;
//! - `<!-- snippet: not run: REASON -->`: not run (it installs, builds or starts an agent).
//!
//! The commands a recipe stands for (`do_the_work`, `handle`, `edit-schema`,
//! `./regenerate-routes.sh`, the build in a `lock run`) are the user's own; they are provided
//! as small stand-ins that succeed (or, for `handle`, record what they were given).

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use maos_tests::git;

use crate::util::{Maos, Run, bin};

#[derive(Debug, PartialEq)]
enum Expect {
    Exit(i32),
    RunsUntilStopped,
    NotRun,
}

#[derive(Debug)]
struct Snippet {
    file: &'static str,
    line: usize,
    code: String,
    expect: Expect,
    /// Texts its stdout must contain.
    prints: Vec<String>,
}

/// The ```sh blocks of `doc` (a path under the workspace root).
fn snippets(file: &'static str) -> Vec<Snippet> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim();
        if fence.starts_with("```") && ["sh", "bash", "shell", "console"].contains(&&fence[3..]) {
            let start = i;
            let mut j = i + 1;
            while lines.get(j).is_some_and(|l| l.trim() != "```") {
                j += 1;
            }
            assert!(
                j < lines.len(),
                "{file}:{}: an unclosed code block",
                start + 1
            );
            let mut expect = Expect::Exit(0);
            let mut prints = Vec::new();
            let mut k = start;
            while k > 0 && lines[k - 1].trim().starts_with("<!-- snippet:") {
                k -= 1;
                match annotation(file, k + 1, lines[k].trim()) {
                    Note::Prints(t) => prints.push(t),
                    Note::Expect(e) => expect = e,
                }
            }
            out.push(Snippet {
                file,
                line: start + 1,
                code: lines[start + 1..j].join("\n"),
                expect,
                prints,
            });
            i = j;
        }
        i += 1;
    }
    out
}

enum Note {
    Expect(Expect),
    Prints(String),
}

fn annotation(file: &str, line: usize, text: &str) -> Note {
    let note = text
        .strip_prefix("<!-- snippet:")
        .and_then(|s| s.strip_suffix("-->"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{file}:{line}: a snippet annotation is one line: {text}"));
    if let Some(n) = note.strip_prefix("exit ") {
        return Note::Expect(Expect::Exit(n.parse().unwrap_or_else(|_| {
            panic!("{file}:{line}: `snippet: exit N` needs a number: {note}")
        })));
    }
    if note == "runs until stopped" {
        return Note::Expect(Expect::RunsUntilStopped);
    }
    if let Some(reason) = note.strip_prefix("not run:") {
        assert!(
            !reason.trim().is_empty(),
            "{file}:{line}: `snippet: not run:` needs a reason"
        );
        return Note::Expect(Expect::NotRun);
    }
    if let Some(t) = note
        .strip_prefix("stdout has \"")
        .and_then(|t| t.strip_suffix('"'))
    {
        return Note::Prints(t.to_string());
    }
    panic!("{file}:{line}: unknown snippet annotation {note:?}");
}

/// What the recipes' placeholders stand for: small commands that succeed.
const STAND_INS: &[(&str, &str)] = &[
    ("do_the_work", "#!/bin/sh\necho \"working on $1\"\n"),
    (
        "handle",
        "#!/bin/sh\nprintf '%s\\n' \"$1\" >> \"$SNIPPETS_STATE/handled\"\n",
    ),
    (
        "edit-schema",
        "#!/bin/sh\necho 'ALTER TABLE users' >> db/schema.sql\n",
    ),
    ("cargo", "#!/bin/sh\necho \"building ($*)\"\n"),
];

struct Session {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    state: PathBuf,
    path: String,
}

/// A fresh repository with maos initialised, two agent branches that merge cleanly, and the
/// stand-ins on PATH after the `maos` under test.
fn session() -> Session {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let state = dir.path().join("state");
    let stand_ins = dir.path().join("bin");
    for d in [&repo, &state, &stand_ins] {
        std::fs::create_dir(d).unwrap();
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(repo.join("src/api")).unwrap();
    std::fs::create_dir_all(repo.join("db")).unwrap();
    std::fs::write(repo.join("src/api/user.rs"), "fn user() {}\n").unwrap();
    std::fs::write(repo.join("db/schema.sql"), "CREATE TABLE users;\n").unwrap();
    std::fs::write(
        repo.join("regenerate-routes.sh"),
        "#!/bin/sh\necho routes regenerated\n",
    )
    .unwrap();
    chmod_x(&repo.join("regenerate-routes.sh"));
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "init"]);
    for (branch, file) in [("agent/frontend-1", "ui.rs"), ("agent/backend-1", "api.rs")] {
        git(&repo, &["checkout", "-q", "-b", branch, "main"]);
        std::fs::write(repo.join("src").join(file), "fn f() {}\n").unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-qm", &format!("{branch}: {file}")]);
    }
    git(&repo, &["checkout", "-q", "main"]);
    for (name, body) in STAND_INS {
        let p = stand_ins.join(name);
        std::fs::write(&p, body).unwrap();
        chmod_x(&p);
    }
    let out = Run::of(Maos::new(&repo).agent("lead").cmd().arg("init"));
    out.ok();
    let maos_dir = bin().parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        maos_dir.display(),
        stand_ins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Session {
        _dir: dir,
        repo,
        state,
        path,
    }
}

fn chmod_x(p: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Session {
    /// Runs one block; the exported environment is kept for the next.
    fn run(&self, s: &Snippet) {
        let env = self.state.join("env");
        let script = format!(
            "[ -f '{env}' ] && . '{env}'\n\
             trap 'export -p > \"{env}\"' EXIT\n\
             set -e -o pipefail\n\
             {}\n",
            s.code,
            env = env.display(),
        );
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc", "-c", &script])
            .current_dir(&self.repo)
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", self.state.join("home"))
            .env("LANG", "C.UTF-8")
            .env("SNIPPETS_STATE", &self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let limit = match s.expect {
            Expect::RunsUntilStopped => Duration::from_secs(3),
            _ => Duration::from_secs(120),
        };
        let (out, finished) = match Run::within_or_stopped(child, limit) {
            Ok(run) => (run.into_output(), true),
            Err(stopped) => (stopped.into_output(), false),
        };
        let status = finished.then_some(out.status);
        let report = || {
            format!(
                "{}:{} ({:?})\n--- block\n{}\n--- stdout\n{}\n--- stderr\n{}",
                s.file,
                s.line,
                s.expect,
                s.code,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        match (&s.expect, status) {
            (Expect::RunsUntilStopped, None) => {}
            (Expect::RunsUntilStopped, Some(st)) => {
                panic!("ended ({st}) instead of following: {}", report())
            }
            (Expect::Exit(want), Some(st)) => {
                assert_eq!(st.code(), Some(*want), "{}", report());
            }
            (Expect::Exit(_), None) => panic!("still running after {limit:?}: {}", report()),
            (Expect::NotRun, _) => unreachable!("not-run blocks are filtered out"),
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        for t in &s.prints {
            assert!(
                stdout.contains(t.as_str()),
                "does not print {t:?}: {}",
                report()
            );
        }
    }
}

/// Runs every block of `file` in one fresh session; returns how many ran.
fn run_file(file: &'static str) -> (usize, usize) {
    let all = snippets(file);
    let s = session();
    let mut ran = 0;
    for sn in all.iter().filter(|s| s.expect != Expect::NotRun) {
        s.run(sn);
        ran += 1;
    }
    (ran, all.len())
}

#[test]
fn every_readme_recipe_runs_as_written() {
    let (ran, all) = run_file("README.md");
    assert!(ran >= 6, "{ran} of {all} README blocks ran");
}

#[test]
fn every_cli_reference_recipe_runs_as_written() {
    let (ran, all) = run_file("docs/cli.md");
    assert!(ran >= 3, "{ran} of {all} docs/cli.md blocks ran");
}

/// The Python client of docs/protocol.md section 6, run as written against the binary: what
/// it sends maos reads, what maos sends it reads, the directories it makes are private, and
/// `maos doctor` finds nothing wrong with what it wrote.
#[test]
fn the_protocol_python_example_interoperates_with_maos() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/protocol.md")).unwrap();
    let start = text
        .find("### Example: sending and receiving from Python")
        .expect("the example's section");
    let code = &text[start..];
    let code = &code[code.find("```python\n").expect("its code") + 10..];
    let code = &code[..code.find("\n```").expect("its end")];

    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("repo");
    std::fs::create_dir(&ws).unwrap();
    Maos::new(&ws).run(["init"]).ok();
    let client = dir.path().join("client.py");
    std::fs::write(&client, code).unwrap();
    let driver = format!(
        "import os, sys, json\n\
         os.umask(0o022)\n\
         exec(open({client:?}).read())\n\
         ws = sys.argv[2]\n\
         if sys.argv[1] == 'send':\n\
         \x20   print(send(ws, 'py/talk', 'pyagent', {{'n': 1, 'text': 'from python'}}))\n\
         else:\n\
         \x20   msgs, cursor = receive(ws, 'py/talk')\n\
         \x20   print(json.dumps([m for _, m in msgs]))\n",
        client = client.display().to_string()
    );
    let py = |what: &str| {
        let out = Command::new("python3")
            .args(["-c", &driver, what])
            .arg(&ws)
            .output()
            .expect("python3 runs (CI installs it)");
        assert!(
            out.status.success(),
            "python {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(py("send").trim(), "1", "the first position");
    let got = Maos::new(&ws)
        .agent("reader")
        .run(["--json", "recv", "py/talk"]);
    got.ok();
    assert_eq!(got.lines()[0]["payload"]["text"], "from python");
    assert_eq!(got.lines()[0]["sender"], "pyagent");

    Maos::new(&ws)
        .agent("m")
        .run(["send", "py/talk", "--data", r#"{"text":"from maos"}"#])
        .ok();
    let read: serde_json::Value = serde_json::from_str(py("receive").trim()).unwrap();
    assert_eq!(read[0]["payload"]["text"], "from python", "{read}");
    assert_eq!(read[1]["payload"]["text"], "from maos", "{read}");
    assert_eq!(read[1]["sender"], "m", "{read}");

    // Every directory the client made is private, whatever its umask.
    use std::os::unix::fs::PermissionsExt as _;
    let mut d = ws.join(".maos/channels/py/talk/.chan");
    while d != ws.join(".maos/channels") {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        d.pop();
    }
    let doctor = Maos::new(&ws).run(["doctor"]);
    doctor.ok();
}

/// The README's Rust example is the facade's doctest (compiled and run by `cargo test`), so it
/// cannot drift from the API.
#[test]
fn the_readme_rust_example_is_the_facades_doctest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let first_rust_block = |file: &str| {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let start = text.find("```rust\n").expect("a Rust block") + 8;
        let len = text[start..].find("\n```").expect("its end");
        text[start..start + len].to_owned()
    };
    assert_eq!(
        first_rust_block("README.md"),
        first_rust_block("crates/maos-coordination/README.md"),
        "README.md's first Rust example differs from the doctest in crates/maos-coordination/README.md"
    );
}
