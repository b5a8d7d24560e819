//! The `maos` binary, run for real: workspace discovery, init, the agent registry, exit codes.

use std::path::Path;
use std::process::Command;

use maos_tests::git;

use crate::util::{Exit, Maos, Run};

#[test]
fn init_creates_an_owner_only_layout_and_status_reports_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = Maos::new(dir.path()).agent("a").run(["init"]);
    out.ok();
    let mode = std::fs::metadata(dir.path().join(".maos"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let st = Maos::new(dir.path())
        .agent("a")
        .run(["status", "--json"])
        .ok()
        .json();
    assert_eq!(st["format"], 1);
    assert_eq!(st["agent"], "a");
    assert_eq!(st["discovery"], "explicit");
    // Issue 13: one `agents` row (it was printed twice), and the disk usage on one line.
    Maos::new(dir.path())
        .agent("b")
        .run(["agents", "register"])
        .ok();
    let text = Maos::new(dir.path())
        .agent("a")
        .run(["status"])
        .ok()
        .stdout();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("agents")).collect();
    assert_eq!(rows, ["agents     1 registered, 1 alive"], "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("on disk")).count(),
        1,
        "{text}"
    );
}

#[test]
fn registered_agents_are_listed_with_their_liveness() {
    let dir = tempfile::tempdir().unwrap();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let out = Maos::new(dir.path()).agent("backend-1").run([
        "agents",
        "register",
        "--role",
        "backend",
        "--branch",
        "agent/backend",
        "--pid",
        &pid,
    ]);
    out.ok();
    let list = Maos::new(dir.path())
        .agent("x")
        .run(["agents", "list", "--json"])
        .ok()
        .json();
    assert_eq!(list[0]["id"], "backend-1");
    assert_eq!(list[0]["role"], "backend");
    assert_eq!(list[0]["branch"], "agent/backend");
    assert_eq!(list[0]["liveness"], "alive");

    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let list = Maos::new(dir.path())
        .agent("x")
        .run(["agents", "list", "--json"])
        .ok()
        .json();
    assert_eq!(list[0]["liveness"], "dead");

    let human = Maos::new(dir.path()).agent("x").run(["agents", "list"]);
    human.stdout_has("backend-1");
}

#[test]
fn exit_codes_distinguish_usage_from_errors() {
    let dir = tempfile::tempdir().unwrap();
    let usage = Maos::new(dir.path())
        .agent("a")
        .run(["agents", "frobnicate"]);
    usage.assert_code(Exit::Usage);

    let bad_agent = Maos::new(dir.path()).agent("../etc/passwd").run(["status"]);
    bad_agent.assert_code(Exit::Error);
    bad_agent.stderr_has("../etc/passwd");

    let ghost = Maos::new(dir.path())
        .agent("ghost")
        .run(["agents", "heartbeat"]);
    ghost.assert_code(Exit::Error);
    ghost.stderr_has("ghost");
}

#[test]
fn a_workspace_of_an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        Maos::new(dir.path())
            .agent("a")
            .run(["init"])
            .status
            .success()
    );
    std::fs::write(dir.path().join(".maos/format"), "99\n").unwrap();
    let out = Maos::new(dir.path()).agent("a").run(["status"]);
    out.assert_code(Exit::Error);
    out.stderr_has("format");
}

#[test]
fn two_git_worktrees_share_one_maos_directory() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "hi\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "init"]);
    let wt1 = dir.path().join("wt-backend");
    let wt2 = dir.path().join("wt-frontend");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "backend",
            wt1.to_str().unwrap(),
        ],
    );
    git(
        &repo,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "frontend",
            wt2.to_str().unwrap(),
        ],
    );
    let sub = wt2.join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();

    let status_in = |cwd: &Path| {
        Maos::discovered()
            .current_dir(cwd)
            .run(["status", "--json"])
            .ok()
            .json()
    };
    // Before `maos init`, a command says where the workspace would be and creates nothing.
    Maos::discovered()
        .current_dir(&sub)
        .run(["status"])
        .failed()
        .stderr_has("run `maos init` there first")
        .stderr_has("root of the main git worktree");
    assert!(!repo.join(".maos").exists());
    Maos::discovered().current_dir(&wt1).run(["init"]).ok();
    let canonical = std::fs::canonicalize(&repo).unwrap();
    for cwd in [&wt1, &sub, &repo] {
        let st = status_in(cwd);
        assert_eq!(
            Path::new(st["workspace"].as_str().unwrap()),
            canonical.as_path(),
            "from {}",
            cwd.display()
        );
    }
    // Once .maos/ exists in the main worktree, the worktrees still resolve to it.
    assert!(canonical.join(".maos/format").exists());
    assert!(!wt1.join(".maos").exists() && !wt2.join(".maos").exists());
}

#[test]
fn a_reader_closing_stdout_early_is_not_a_crash() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..200 {
        let name = format!("agent-{i}");
        let pid = std::process::id().to_string();
        let out = Maos::new(dir.path())
            .agent(&name)
            .run(["agents", "register", "--pid", &pid]);
        out.ok();
    }
    let mut child = Maos::new(dir.path())
        .agent("x")
        .cmd()
        .args(["agents", "list", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then hang up, as `| head -c1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    stdout.read_exact(&mut byte).unwrap();
    drop(stdout);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_os_error_is_reported_once() {
    // A file where a directory should be: every layer of the error (CLI context, maos-comm,
    // maos-core, the OS) says its part once, so "os error" appears exactly once.
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    maos.run(["send", "foo", "--data", "1"]).ok();
    let chan = dir.path().join(".maos/channels/foo/.chan");
    std::fs::remove_dir_all(&chan).unwrap();
    std::fs::write(&chan, "not a directory").unwrap();
    let channels = dir.path().join(".maos/channels");
    let cases: [(&[&str], &dyn Fn()); 2] = [
        (&["recv", "foo"], &|| {}),
        (&["channels"], &|| {
            std::fs::remove_dir_all(&channels).unwrap();
            std::fs::write(&channels, "not a directory").unwrap();
        }),
    ];
    for (args, prepare) in cases {
        prepare();
        let out = maos.run(args);
        out.assert_code(Exit::Error);
        let err = out.stderr();
        assert_eq!(err.matches("os error").count(), 1, "{args:?}: {err}");
        assert!(err.contains(".maos/channels"), "{args:?}: {err}");
    }
}

/// Spawns `maos ARGS` with stdout piped, reads one line, then closes the pipe as `| head -1`
/// does and calls `after_close`; returns the run.
fn read_one_line_then_hang_up(cmd: &mut Command, after_close: impl FnOnce()) -> Run {
    use std::io::BufRead as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("maos starts");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the first line");
    assert!(!line.is_empty(), "no first line");
    drop(stdout);
    after_close();
    Run::wait(child)
}

#[test]
fn a_closed_pipe_ends_a_streaming_command_quietly() {
    // `maos recv CH --follow | head -1`: the next message after the reader left meets a
    // closed pipe; the command ends with 0 and says nothing.
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    maos.run(["send", "ch", "--data", "1"]).ok();
    let out = read_one_line_then_hang_up(
        maos.agent("b")
            .cmd()
            .args(["recv", "ch", "--follow", "--timeout", "2m"]),
        || {
            maos.run(["send", "ch", "--data", "2"]).ok();
        },
    );
    out.ok();
    assert_eq!(out.stderr(), "", "nothing on stderr");
}

#[test]
fn a_closed_pipe_ends_a_listing_command_quietly() {
    // `maos task list --json | head -1` with more output than a pipe holds (64 KiB): the
    // write after the reader left fails with EPIPE; the command ends with 0 and says nothing.
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::new(dir.path());
    let long = "x".repeat(100_000);
    for i in 0..3 {
        maos.run(["task", "add", &format!("t{i}"), "--description", &long])
            .ok();
    }
    let out = read_one_line_then_hang_up(maos.cmd().args(["task", "list", "--json"]), || {});
    out.ok();
    assert_eq!(out.stderr(), "", "nothing on stderr");
}

#[test]
fn only_init_creates_a_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir");
    for args in [vec!["status"], vec!["task", "list"], vec!["lock", "list"]] {
        Maos::uninitialised(&missing)
            .run(&args)
            .assert_code(Exit::Error)
            .stderr_has("run `maos init` there first");
    }
    assert!(!dir.path().join("no").exists(), "nothing was created");
    Maos::uninitialised("/")
        .run(["status"])
        .assert_code(Exit::Error)
        .stderr_has("no maos workspace at /");
    assert!(!Path::new("/.maos").exists());
    // `init` does create it, with its parents.
    Maos::uninitialised(&missing).run(["init"]).ok();
    Maos::uninitialised(&missing).run(["status"]).ok();
}

/// Issue 12: a FIFO in place of any record maos reads gives a clear error naming it (exit 1),
/// never a hang: each file below is replaced by a FIFO in turn, with no writer on it.
#[test]
fn a_fifo_in_place_of_a_record_is_named_never_waited_on() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    git(ws, &["init", "-q", "-b", "main"]);
    git(ws, &["commit", "-q", "--allow-empty", "-m", "init"]);
    let m = Maos::new(ws).agent("a");
    m.run(["send", "ch", "--data", "1"]).ok();
    m.run(["recv", "ch", "--consumer", "w"]).ok();
    m.run(["task", "add", "T"]).ok();
    let cases: &[(&str, &[&str])] = &[
        (".maos/format", &["status"]),
        (".maos/agents/b.json", &["agents", "list"]),
        (
            ".maos/channels/ch/.chan/consumers/w.json",
            &["recv", "ch", "--consumer", "w"],
        ),
        (".maos/tasks/current", &["task", "list"]),
        (".maos/tasks/log.0.jsonl", &["task", "list"]),
        (".maos/merge/queue.json", &["merge", "queue", "list"]),
    ];
    for (file, args) in cases {
        let path = ws.join(file);
        let saved = std::fs::read(&path).ok();
        let _ = std::fs::remove_file(&path);
        let made = Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success(), "mkfifo {file}");
        let child = Maos::new(ws)
            .agent("b")
            .cmd()
            .args(*args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = Run::within(child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("maos {args:?} waits on a FIFO at {file}"));
        out.assert_code(Exit::Error);
        out.stderr_has(file)
            .stderr_has("is a FIFO (named pipe), not a regular file");
        std::fs::remove_file(&path).unwrap();
        if let Some(bytes) = saved {
            std::fs::write(&path, bytes).unwrap();
        }
    }
}
