//! The `maos` binary, run for real: workspace discovery, init, the agent registry, exit codes.

use std::path::Path;
use std::process::Command;

use maos_tests::{git, maos_at, output, stderr, stdout};

fn maos(ws: &Path, agent: &str) -> Command {
    maos_at(Path::new(env!("CARGO_BIN_EXE_maos")), ws, agent)
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", stdout(out)))
}

#[test]
fn init_creates_an_owner_only_layout_and_status_reports_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = output(maos(dir.path(), "a").arg("init"));
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(dir.path().join(".maos"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let st = json(&output(maos(dir.path(), "a").args(["status", "--json"])));
    assert_eq!(st["format"], 1);
    assert_eq!(st["agent"], "a");
    assert_eq!(st["discovery"], "explicit");
}

#[test]
fn registered_agents_are_listed_with_their_liveness() {
    let dir = tempfile::tempdir().unwrap();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let out = output(maos(dir.path(), "backend-1").args([
        "agents",
        "register",
        "--role",
        "backend",
        "--branch",
        "agent/backend",
        "--pid",
        &pid,
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let list = json(&output(
        maos(dir.path(), "x").args(["agents", "list", "--json"]),
    ));
    assert_eq!(list[0]["id"], "backend-1");
    assert_eq!(list[0]["role"], "backend");
    assert_eq!(list[0]["branch"], "agent/backend");
    assert_eq!(list[0]["liveness"], "alive");

    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    let list = json(&output(
        maos(dir.path(), "x").args(["agents", "list", "--json"]),
    ));
    assert_eq!(list[0]["liveness"], "dead");

    let human = output(maos(dir.path(), "x").args(["agents", "list"]));
    assert!(stdout(&human).contains("backend-1"), "{}", stdout(&human));
}

#[test]
fn exit_codes_distinguish_usage_from_errors() {
    let dir = tempfile::tempdir().unwrap();
    let usage = output(maos(dir.path(), "a").args(["agents", "frobnicate"]));
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));

    let bad_agent = output(maos(dir.path(), "../etc/passwd").arg("status"));
    assert_eq!(bad_agent.status.code(), Some(1));
    assert!(
        stderr(&bad_agent).contains("../etc/passwd"),
        "{}",
        stderr(&bad_agent)
    );

    let ghost = output(maos(dir.path(), "ghost").args(["agents", "heartbeat"]));
    assert_eq!(ghost.status.code(), Some(1));
    assert!(stderr(&ghost).contains("ghost"), "{}", stderr(&ghost));
}

#[test]
fn a_workspace_of_an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(output(maos(dir.path(), "a").arg("init")).status.success());
    std::fs::write(dir.path().join(".maos/format"), "99\n").unwrap();
    let out = output(maos(dir.path(), "a").arg("status"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("format"), "{}", stderr(&out));
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
        let out = output(
            Command::new(env!("CARGO_BIN_EXE_maos"))
                .current_dir(cwd)
                .env_remove("MAOS_WORKSPACE")
                .env("MAOS_AGENT_ID", "a")
                .args(["status", "--json"]),
        );
        json(&out)
    };
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
        let out = output(
            maos(dir.path(), &name)
                .args(["agents", "register", "--pid"])
                .arg(std::process::id().to_string()),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut child = maos(dir.path(), "x")
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
