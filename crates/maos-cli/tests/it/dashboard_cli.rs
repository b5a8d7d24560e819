//! `maos dashboard` in a real headless Chromium on a real demo workspace, `maos status
//! --watch` on a pseudo-terminal, and the pictures of `maos task gantt|graph --format
//! svg|html`.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use maos_tests::chromium::{self, Chromium};
use maos_tests::git;
use serde_json::Value;

use crate::util::{Exit, Maos, Run};

/// `maos` on `ws` as `agent` (initialising `ws` first when it has no `.maos/`).
fn maos(ws: &Path, agent: &str) -> Command {
    Maos::new(ws).agent(agent).cmd()
}

/// Runs a command that must succeed; returns its stdout.
#[track_caller]
fn ok(cmd: &mut Command) -> String {
    Run::of(cmd).ok().stdout()
}

#[track_caller]
fn json(cmd: &mut Command) -> Value {
    Run::of(cmd.arg("--json")).ok().json()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A child process killed (and reaped) when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `maos dashboard` on `ws` listening on `listen`; returns the process and its URL.
fn dashboard(ws: &Path, listen: &str) -> (Kill, String) {
    let mut child = maos(ws, "viewer")
        .args(["--json", "dashboard", "--listen", listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("dashboard did not print its URL ({e}): {line:?}"));
    (Kill(child), v["url"].as_str().unwrap().to_string())
}

/// Helpers injected into the page: what the page shows, read from its DOM, and a promise
/// that resolves when a condition on it holds (checked after every render and picture).
const PROBE: &str = r#"
window.__t = {
  read: () => ({
    version: Number(document.body.dataset.version || 0),
    agents: [...document.querySelectorAll('#agents-table tr[data-agent]')].map(r => r.dataset.agent),
    locks: [...document.querySelectorAll('#locks-table tr[data-resource]')].map(r => ({
      resource: r.dataset.resource, owner: r.dataset.owner,
      waiters: [...r.querySelectorAll('.waiter')].map(w => w.textContent) })),
    counts: Object.fromEntries([...document.querySelectorAll('#status-counts [data-status]')]
      .map(c => [c.dataset.status, Number(c.querySelector('.count').textContent)])),
    critical: [...document.querySelectorAll('#critical-path li.crit-task')].map(li => li.textContent),
    conflicts: [...document.querySelectorAll('#merge-matrix td.conflict')].map(td => td.textContent),
    graphTasks: document.querySelectorAll('#graph svg g.task').length,
    graphCritical: document.querySelectorAll('#graph svg g.task.crit').length,
    messages: [...document.querySelectorAll('#channels .msg')].map(m => m.textContent),
    conn: document.getElementById('conn').textContent,
    eta: document.getElementById('eta').textContent,
    ganttShown: !document.getElementById('gantt').hidden,
    ganttTasks: document.querySelectorAll('#gantt svg g.task').length,
    queue: [...document.querySelectorAll('#queue-table tbody tr')].map(r => r.textContent),
    channels: [...document.querySelectorAll('#channels .channel')].map(c => c.dataset.channel),
    senders: [...document.querySelectorAll('#channels .msg .who')].map(w => w.textContent),
    firstRender: window.maosFirstRender, firstPicture: window.maosFirstPicture,
  }),
  until: (cond, ms) => new Promise((resolve) => {
    let finished = false, timer;
    const done = (ok) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      document.removeEventListener('maos:render', check);
      document.removeEventListener('maos:picture', check);
      resolve({ ok, at: Date.now(), state: window.__t.read() });
    };
    const deadline = Date.now() + ms;
    function check() {
      let s; try { s = window.__t.read(); } catch (e) { return; }
      if (cond(s)) done(true); else if (Date.now() >= deadline) done(false);
    }
    document.addEventListener('maos:render', check);
    document.addEventListener('maos:picture', check);
    timer = setTimeout(() => done(cond(window.__t.read())), ms);
    check();
  }),
};
true
"#;

/// Waits in the page for `cond` (a JS function of the state) to hold; returns the state.
fn until(page: &mut Chromium, cond: &str, ms: u64) -> Value {
    let r = page
        .eval(
            &format!("window.__t.until({cond}, {ms})"),
            Duration::from_millis(ms + 10_000),
        )
        .unwrap();
    assert_eq!(
        r["ok"], true,
        "the page did not show `{cond}` within {ms} ms; it shows {:#}",
        r["state"]
    );
    r["state"].clone()
}

/// Starts waiting in the page for `cond`; `finish` then returns when it held (ms epoch).
fn arm(page: &mut Chromium, cond: &str) {
    page.eval(
        &format!("window.__p = window.__t.until({cond}, 15000); true"),
        Duration::from_secs(10),
    )
    .unwrap();
}

fn finish(page: &mut Chromium, what: &str) -> u64 {
    let r = page.eval("window.__p", Duration::from_secs(30)).unwrap();
    assert_eq!(
        r["ok"], true,
        "{what}: the page did not update; it shows {:#}",
        r["state"]
    );
    r["at"].as_u64().unwrap()
}

/// Runs `cmd` (a change through the CLI) and returns how long the page took to show it
/// after the command finished, in ms (the page's clock and ours are the same machine's).
fn latency(page: &mut Chromium, what: &str, cond: &str, cmd: &mut Command) -> (u64, u64) {
    arm(page, cond);
    let start = now_ms();
    ok(cmd);
    let done = now_ms();
    let at = finish(page, what);
    let after_exit = at.saturating_sub(done);
    let after_start = at.saturating_sub(start);
    eprintln!(
        "update latency, {what}: {after_exit} ms after the command exited ({after_start} ms after it started)"
    );
    (after_exit, after_start)
}

#[test]
fn dashboard_in_a_real_browser_shows_the_swarm_and_follows_changes() {
    // Chromium is required: a missing browser fails the test, it is never skipped.
    if let Err(e) = chromium::binary() {
        panic!("{e}");
    }
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-e2e");
    std::fs::create_dir_all(&shots).unwrap();
    eprintln!("screenshots: {}", shots.display());

    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("demo");
    // The demo creates its workspace itself (`--keep` wants an empty directory).
    let out = Run::of(
        Command::new(crate::util::bin())
            .env_remove("MAOS_WORKSPACE")
            .env("MAOS_AGENT_ID", "orchestrator")
            .args(["demo", "--fast", "--keep"])
            .arg(&ws),
    );
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        out.stdout(),
        out.stderr()
    );

    // Two more agents, alive while these sleepers run, on branches that edit the same line.
    let alice_pid = Kill(Command::new("sleep").arg("600").spawn().unwrap());
    let bob_pid = Kill(Command::new("sleep").arg("600").spawn().unwrap());
    for (who, title) in [("alice", "# Alice's title"), ("bob", "# Bob's title")] {
        git(
            &ws,
            &["checkout", "-q", "-b", &format!("agent/{who}"), "main"],
        );
        let readme = ws.join("README.md");
        let text = std::fs::read_to_string(&readme).unwrap();
        let rest = text.split_once('\n').map_or("", |(_, r)| r);
        std::fs::write(&readme, format!("{title}\n{rest}")).unwrap();
        git(
            &ws,
            &["commit", "-q", "-am", &format!("{who} retitles the README")],
        );
        git(&ws, &["checkout", "-q", "main"]);
    }
    for (who, role, pid) in [
        ("alice", "backend", &alice_pid),
        ("bob", "frontend", &bob_pid),
    ] {
        ok(maos(&ws, who).args([
            "agents",
            "register",
            "--role",
            role,
            "--branch",
            &format!("agent/{who}"),
            "--pid",
            &pid.0.id().to_string(),
        ]));
    }
    ok(maos(&ws, "alice").args([
        "lock",
        "acquire",
        "src/api/users.rs",
        "--ttl",
        "10m",
        "--purpose",
        "add the /users endpoint",
    ]));
    // bob waits for it (a real waiting process).
    let _bob_waits = Kill(
        maos(&ws, "bob")
            .args([
                "lock",
                "acquire",
                "src/api/users.rs",
                "--wait",
                "10m",
                "--purpose",
                "wire the users page",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let polish = ok(maos(&ws, "alice").args([
        "task",
        "add",
        "Polish the dashboard",
        "--estimate",
        "45m",
        "--assign",
        "alice",
    ]))
    .trim()
    .to_string();
    let flaky = ok(maos(&ws, "bob").args([
        "task",
        "add",
        "Flaky migration",
        "--estimate",
        "20m",
        "--assign",
        "bob",
    ]))
    .trim()
    .to_string();
    ok(maos(&ws, "alice").args(["task", "claim"]));
    ok(maos(&ws, "bob").args(["task", "claim"]));
    ok(maos(&ws, "bob").args(["task", "fail", &flaky, "--note", "database locked"]));

    let tasks = json(maos(&ws, "x").args(["task", "list"]));
    let count = |s: &str| {
        tasks
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"] == s)
            .count()
    };
    let report = json(maos(&ws, "x").args(["task", "report"]));
    let critical: Vec<String> = report["critical_path_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert!(!critical.is_empty());

    let (dash, url) = dashboard(&ws, "127.0.0.1:0");
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let mut page = Chromium::launch().unwrap_or_else(|e| panic!("{e}"));
    page.open(&url, 1440, 1000).unwrap();
    page.eval(PROBE, Duration::from_secs(10)).unwrap();

    // The page shows the agents, the held lock with its waiter, the counts, the critical path
    // and the predicted conflict.
    let s = until(
        &mut page,
        "s => s.agents.includes('bob') && s.locks.some(l => l.waiters.length > 0) \
         && s.conflicts.length > 0 && s.graphTasks > 0 && s.counts.failed === 1",
        20_000,
    );
    eprintln!(
        "first render {} ms after navigation start, first picture {} ms",
        s["firstRender"], s["firstPicture"]
    );
    let agents: Vec<&str> = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for a in [
        "alice",
        "bob",
        "architect-1",
        "backend-1",
        "frontend-1",
        "reviewer-1",
    ] {
        assert!(agents.contains(&a), "agent {a} shown: {agents:?}");
    }
    let lock = s["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["resource"] == "src/api/users.rs")
        .unwrap_or_else(|| panic!("the held lock is shown: {:#}", s["locks"]));
    assert_eq!(lock["owner"], "alice");
    assert_eq!(lock["waiters"][0], "1. bob", "bob waits for it");
    for st in [
        "completed",
        "in_progress",
        "failed",
        "pending",
        "blocked",
        "review",
    ] {
        assert_eq!(s["counts"][st], count(st) as u64, "count of {st} tasks");
    }
    let shown: Vec<&str> = s["critical"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(shown, critical, "the critical path, in order");
    assert!(
        s["graphCritical"].as_u64().unwrap() > 0,
        "the graph marks the critical path"
    );
    let conflicts: Vec<&str> = s["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        conflicts.iter().any(|c| c.contains("README.md")),
        "the predicted conflict names the file: {conflicts:?}"
    );
    assert!(
        s["eta"].as_str().unwrap().starts_with("ETA "),
        "the ETA is shown: {}",
        s["eta"]
    );
    page.screenshot(&shots.join("dashboard.png")).unwrap();

    // The Gantt tab draws the tasks.
    page.eval(
        "document.querySelector('[data-tab=gantt]').click(); true",
        Duration::from_secs(10),
    )
    .unwrap();
    until(&mut page, "s => s.ganttShown && s.ganttTasks > 0", 20_000);
    // The message filter keeps only what an agent sent or was sent.
    let set_filter = |page: &mut Chromium, who: &str| {
        page.eval(
            &format!(
                "(() => {{ const f = document.getElementById('msg-agent'); f.value = '{who}'; \
                 f.dispatchEvent(new Event('change')); return true; }})()"
            ),
            Duration::from_secs(10),
        )
        .unwrap();
    };
    let all = s["messages"].as_array().unwrap().len();
    set_filter(&mut page, "backend-1");
    let filtered = until(
        &mut page,
        &format!("s => s.messages.length > 0 && s.messages.length < {all}"),
        10_000,
    );
    for m in filtered["messages"].as_array().unwrap() {
        assert!(
            m.as_str().unwrap().contains("backend-1"),
            "a message neither from nor to backend-1 shown: {m}"
        );
    }
    set_filter(&mut page, "");
    until(
        &mut page,
        &format!("s => s.messages.length === {all}"),
        10_000,
    );
    // A merge queued through the CLI appears in the queue table.
    latency(
        &mut page,
        "a merge queued",
        "s => s.queue.some(r => r.includes('agent/alice'))",
        maos(&ws, "alice").args(["merge", "queue", "add", "agent/alice", "main"]),
    );

    // Changes through the CLI reach the page.
    let mut latencies = Vec::new();
    latencies.push(latency(
        &mut page,
        "a lock taken",
        "s => s.locks.some(l => l.resource === 'docs/guide.md' && l.owner === 'alice')",
        maos(&ws, "alice").args([
            "lock",
            "acquire",
            "docs/guide.md",
            "--purpose",
            "write the guide",
        ]),
    ));
    let completed = count("completed");
    latencies.push(latency(
        &mut page,
        "a task completed",
        &format!("s => s.counts.completed === {}", completed + 1),
        maos(&ws, "alice").args(["task", "done", &polish, "--note", "shipped"]),
    ));
    latencies.push(latency(
        &mut page,
        "a message sent",
        "s => s.messages.some(m => m.includes('ready for review'))",
        maos(&ws, "alice").args([
            "send",
            "backend-frontend",
            "--to",
            "bob",
            "--data",
            "\"users page ready for review\"",
        ]),
    ));
    for (after_exit, _) in &latencies {
        assert!(
            *after_exit < 1000,
            "the page updated within 1 s: {latencies:?}"
        );
    }

    // The server restarts (killed, started again on the same port): the page reconnects.
    drop(dash);
    let (_dash, url2) = dashboard(&ws, &format!("127.0.0.1:{port}"));
    assert_eq!(url2, url);
    let (after_exit, _) = latency(
        &mut page,
        "a lock taken after the server restarted",
        "s => s.locks.some(l => l.resource === 'docs/after-restart.md')",
        maos(&ws, "bob").args(["lock", "acquire", "docs/after-restart.md"]),
    );
    eprintln!(
        "after the restart the page reconnected and showed the change {after_exit} ms after the command"
    );
    page.screenshot(&shots.join("dashboard-after-changes.png"))
        .unwrap();
    eprintln!("screenshots written to {}", shots.display());
}

// ---------------------------------------------------------------------------------------------
// maos status --watch on a pseudo-terminal

struct Pty {
    master: std::fs::File,
    slave: std::fs::File,
}

fn pty(rows: u16, cols: u16) -> Pty {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    rustix::termios::tcsetwinsize(
        &slave,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
    Pty {
        master: std::fs::File::from(master),
        slave,
    }
}

fn cooked(slave: &std::fs::File) -> bool {
    use rustix::termios::LocalModes;
    let t = rustix::termios::tcgetattr(slave).unwrap();
    t.local_modes
        .contains(LocalModes::ICANON | LocalModes::ECHO)
}

/// The output of a child on a pty, read on a thread; `wait_for` blocks (without sleeping)
/// until a text shows up.
struct Screen {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Screen {
    fn new(master: &std::fs::File) -> Self {
        let mut r = master.try_clone().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    fn contains(&self, text: &str) -> bool {
        self.seen.windows(text.len()).any(|w| w == text.as_bytes())
    }

    fn wait_for(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.contains(text) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.seen.extend(b),
                Err(_) => panic!(
                    "{text:?} never appeared on the terminal; it shows:\n{}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    fn mark(&mut self) -> usize {
        while let Ok(b) = self.rx.try_recv() {
            self.seen.extend(b);
        }
        self.seen.len()
    }
}

/// Waits for `child` to exit (at most 30 s).
fn exit_of(child: Child) -> std::process::ExitStatus {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut c = child;
        let _ = tx.send(c.wait());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the view exits")
        .unwrap()
}

#[test]
fn status_watch_draws_live_and_restores_the_terminal_on_q_and_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    status_watch_on(dir.path());
}

/// The same on a PostgreSQL workspace: the view reads the server and follows a lock taken by
/// another process.
#[test]
fn status_watch_on_postgresql_draws_live_and_restores_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    crate::backend_cli::pg_workspace(dir.path());
    status_watch_on(dir.path());
}

fn status_watch_on(ws: &Path) {
    let sleeper = Kill(Command::new("sleep").arg("600").spawn().unwrap());
    ok(maos(ws, "alice").args([
        "agents",
        "register",
        "--role",
        "backend",
        "--pid",
        &sleeper.0.id().to_string(),
    ]));
    ok(maos(ws, "alice").args(["lock", "acquire", "src/a.rs", "--purpose", "edit a"]));
    ok(maos(ws, "alice").args(["task", "add", "Write-the-view", "--estimate", "30m"]));

    // Each run adds a lock sorted after the others: a new row, drawn whole (the terminal
    // only gets the cells that changed, so a text replacing a similar one is not contiguous).
    for (key, name, lock) in [
        (&b"q"[..], "q", "src/y1.rs"),
        (&b"\x03"[..], "Ctrl-C", "src/y2.rs"),
    ] {
        let mut p = pty(40, 160);
        assert!(cooked(&p.slave), "a fresh pty starts in cooked mode");
        let child = maos(ws, "viewer")
            .args(["status", "--watch"])
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(p.slave.try_clone().unwrap()))
            .stdout(Stdio::from(p.slave.try_clone().unwrap()))
            .stderr(Stdio::from(p.slave.try_clone().unwrap()))
            .spawn()
            .unwrap();
        let mut screen = Screen::new(&p.master);
        screen.wait_for("alice");
        screen.wait_for("src/a.rs");
        screen.wait_for("Write-the-view");
        assert!(!cooked(&p.slave), "raw mode while the view runs");
        // A change is drawn without a key press.
        ok(maos(ws, "alice").args(["lock", "acquire", lock]));
        screen.wait_for(lock);
        let before_quit = screen.mark();
        p.master.write_all(key).unwrap();
        let status = exit_of(child);
        assert!(status.success(), "{name} ends the view cleanly: {status}");
        screen.wait_for("\x1b[?1049l"); // left the alternate screen
        let tail = &screen.seen[before_quit..];
        assert!(
            tail.windows(6).any(|w| w == b"\x1b[?25h"),
            "{name}: the cursor is shown again"
        );
        assert!(
            cooked(&p.slave),
            "{name}: the terminal is back in cooked mode with echo"
        );
    }

    // Without a terminal it says what to use instead.
    Run::of(
        maos(ws, "viewer")
            .args(["status", "--watch"])
            .stdin(Stdio::null()),
    )
    .assert_code(Exit::Usage)
    .stderr_has("maos dashboard");
}

// ---------------------------------------------------------------------------------------------
// Pictures

#[test]
fn task_pictures_as_svg_and_html() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    let a = ok(maos(ws, "a").args([
        "task",
        "add",
        "Design <the> \"API\" & more",
        "--estimate",
        "30m",
    ]))
    .trim()
    .to_string();
    ok(maos(ws, "a").args(["task", "add", "Build it", "--after", &a, "--assign", "b"]));
    ok(maos(ws, "a").args(["task", "add", "Unrelated"]));
    for (cmd, format) in [
        ("gantt", "svg"),
        ("gantt", "html"),
        ("graph", "svg"),
        ("graph", "html"),
    ] {
        let text = ok(maos(ws, "a").args(["task", cmd, "--format", format]));
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(&text, opts)
            .unwrap_or_else(|e| panic!("{cmd} --format {format}: not well-formed: {e}"));
        let tasks = doc
            .descendants()
            .filter(|n| n.attribute("data-id").is_some())
            .count();
        assert_eq!(tasks, 3, "{cmd} --format {format} draws every task");
        assert!(
            doc.descendants().any(|n| n.is_text()
                && n.text()
                    .is_some_and(|t| t.contains("Design <the> \"API\" & more"))),
            "{cmd} --format {format}: the name is escaped, not lost"
        );
        assert!(
            doc.descendants().any(|n| n
                .attribute("class")
                .is_some_and(|c| c.split(' ').any(|x| x == "crit"))),
            "{cmd} --format {format}: the critical path is marked"
        );
        if format == "html" {
            assert!(text.starts_with("<!DOCTYPE html>"));
            assert!(!text.contains("<script"), "no JavaScript");
        }
    }
    // The Mermaid and DOT outputs stay.
    assert!(ok(maos(ws, "a").args(["task", "gantt"])).starts_with("gantt"));
    assert!(ok(maos(ws, "a").args(["task", "graph"])).starts_with("digraph"));
    assert!(
        ok(maos(ws, "a").args(["task", "graph", "--format", "mermaid"])).starts_with("flowchart")
    );
}

/// One raw HTTP/1.1 request to `addr`; returns the status code and the body.
fn http(addr: &str, req: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Off loopback the dashboard needs --allow-remote (exit 2 without), warns on stderr, and
/// every request needs the token printed once; with --allow-actions an action sent with the
/// token succeeds and changes the workspace through the library.
#[test]
fn off_loopback_it_warns_needs_the_token_and_actions_work_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    ok(maos(ws, "lead").arg("init"));
    let refused = maos(ws, "viewer")
        .args(["dashboard", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--allow-remote"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A failed task to reset.
    let id = ok(maos(ws, "w").args(["task", "add", "flaky"]))
        .trim()
        .to_owned();
    ok(maos(ws, "w").args(["task", "start", &id]));
    ok(maos(ws, "w").args(["task", "fail", &id, "--note", "boom"]));

    let mut child = maos(ws, "viewer")
        .args([
            "--json",
            "dashboard",
            "--listen",
            "0.0.0.0:0",
            "--allow-remote",
            "--allow-actions",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err_line = String::new();
    // Both pipes stay open until the end: the server may write more.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr.read_line(&mut err_line).unwrap();
    assert!(
        err_line.contains("WARNING") && err_line.contains("and act on it"),
        "{err_line}"
    );
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let _server = Kill(child);
    let v: Value = serde_json::from_str(&line).unwrap();
    let token = v["token"].as_str().expect("a token").to_owned();
    let port = v["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let addr = format!("127.0.0.1:{port}");
    let host = format!("Host: {addr}\r\n");

    let (status, _) = http(
        &addr,
        &format!("GET /api/view HTTP/1.1\r\n{host}Connection: close\r\n\r\n"),
    );
    assert_eq!(status, 401, "no token, no answer");
    let (status, body) = http(
        &addr,
        &format!(
            "GET /api/view HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{body}");

    let payload = serde_json::json!({ "id": id }).to_string();
    let (status, body) = http(
        &addr,
        &format!(
            "POST /api/actions/reset-task HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        ),
    );
    assert_eq!(status, 200, "{body}");
    let t = json(maos(ws, "x").args(["--json", "task", "show", &id]));
    assert_eq!(t["status"], "pending", "{t}");
    drop((stdout, stderr));
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// GET `path` on the dashboard at `url` (`http://addr/`); the JSON body.
fn get_json(url: &str, path: &str) -> Value {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (status, body) = http(
        &addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// POST `path` with the JSON `body`; the status and the answer.
fn post_json(url: &str, path: &str, body: &Value) -> (u16, String) {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let payload = body.to_string();
    http(
        &addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        ),
    )
}

/// The server-sent events of the dashboard at `url`: each `version` announced, as it comes.
fn versions(url: &str) -> std::sync::mpsc::Receiver<u64> {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(
        format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            if let Some(v) = line
                .strip_prefix("data: ")
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .and_then(|v| v["version"].as_u64())
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Waits for server-sent versions until the snapshot satisfies `cond` (each new version is
/// fetched); fails naming `what` with the last snapshot after `limit`.
#[track_caller]
fn until_snapshot(
    url: &str,
    events: &std::sync::mpsc::Receiver<u64>,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let snap = get_json(url, "/api/snapshot");
        if cond(&snap) {
            return snap;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "the dashboard did not show {what}; it shows {snap:#}"
        );
        // The next version (or the end of the wait: then the last look above fails).
        let _ = events.recv_timeout(left);
    }
}

fn holders(snap: &Value) -> Vec<(String, String)> {
    snap["locks"]["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["resource"].as_str().unwrap().to_owned(),
                h["owner"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn summaries(snap: &Value, channel: &str) -> Vec<String> {
    snap["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == channel)
        .flat_map(|c| c["recent"].as_array().unwrap().iter())
        .map(|m| m["summary"].as_str().unwrap().to_owned())
        .collect()
}

/// `maos dashboard` on a PostgreSQL workspace: the snapshot JSON shows what other processes
/// wrote on the server (agents, locks, tasks, messages, the merge prediction of this clone's
/// branches from the server's registry), server-sent events follow writes made by other
/// processes, the actions work through the server with the same refusals and are recorded on
/// `dashboard/actions`, and the page in a real Chromium shows the data and follows a change.
#[test]
fn dashboard_on_postgresql_shows_follows_and_acts() {
    // Chromium is required: a missing browser fails the test, it is never skipped.
    if let Err(e) = chromium::binary() {
        panic!("{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    // A repository whose two agent branches edit the same line (the merge panel).
    git(ws, &["init", "-q", "-b", "main"]);
    std::fs::write(ws.join("README.md"), "# Title\nbody\n").unwrap();
    git(ws, &["add", "README.md"]);
    git(ws, &["commit", "-q", "-m", "start"]);
    for (who, title) in [("alice", "# Alice's title"), ("bob", "# Bob's title")] {
        git(
            ws,
            &["checkout", "-q", "-b", &format!("agent/{who}"), "main"],
        );
        std::fs::write(ws.join("README.md"), format!("{title}\nbody\n")).unwrap();
        git(ws, &["commit", "-q", "-am", &format!("{who} retitles")]);
        git(ws, &["checkout", "-q", "main"]);
    }
    let (_m, _url, _ns) = crate::backend_cli::pg_workspace(ws);

    let alice_pid = Kill(Command::new("sleep").arg("600").spawn().unwrap());
    let bob_pid = Kill(Command::new("sleep").arg("600").spawn().unwrap());
    for (who, pid) in [("alice", &alice_pid), ("bob", &bob_pid)] {
        ok(maos(ws, who).args([
            "agents",
            "register",
            "--branch",
            &format!("agent/{who}"),
            "--pid",
            &pid.0.id().to_string(),
        ]));
    }
    ok(maos(ws, "alice").args(["lock", "acquire", "src/api.rs", "--purpose", "endpoint"]));
    let flaky = ok(maos(ws, "bob").args(["task", "add", "flaky"]))
        .trim()
        .to_owned();
    ok(maos(ws, "bob").args(["task", "start", &flaky]));
    ok(maos(ws, "bob").args(["task", "fail", &flaky, "--note", "boom"]));
    ok(maos(ws, "alice").args(["send", "team", "--data", "\"hello from postgres\""]));

    let (_server, url) = {
        let mut child = maos(ws, "viewer")
            .args([
                "--json",
                "dashboard",
                "--listen",
                "127.0.0.1:0",
                "--allow-actions",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("dashboard did not print its URL ({e}): {line:?}"));
        assert_eq!(v["backend"], "postgresql", "{v}");
        (Kill(child), v["url"].as_str().unwrap().to_string())
    };
    let events = versions(&url);

    // The first snapshot: what was written before it started.
    let snap = until_snapshot(&url, &events, "the merge prediction", |s| {
        s["merges"]["state"] != "pending"
    });
    assert_eq!(snap["problems"], serde_json::json!([]), "{snap:#}");
    let agents: Vec<&str> = snap["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["alice", "bob"]);
    assert_eq!(
        holders(&snap),
        [("src/api.rs".to_owned(), "alice".to_owned())]
    );
    assert_eq!(snap["tasks"]["counts"]["failed"], 1, "{snap:#}");
    assert_eq!(summaries(&snap, "team"), ["hello from postgres"]);
    // The merge panel: the branches named by the server's registry, checked in this clone.
    assert_eq!(snap["merges"]["state"], "ready", "{:#}", snap["merges"]);
    let branches = snap["merges"]["branches"].to_string();
    assert!(
        branches.contains("agent/alice (alice)") && branches.contains("agent/bob (bob)"),
        "{branches}"
    );
    assert!(
        snap["merges"]["prediction"]["pairwise"]
            .to_string()
            .contains("README.md"),
        "alice's and bob's branches conflict on README.md: {:#}",
        snap["merges"]
    );

    // Writes by other processes show up through the server's notifications (messages,
    // tasks) and its poll (an uncontended lock).
    ok(maos(ws, "bob").args(["send", "team", "--data", "\"second message\""]));
    until_snapshot(&url, &events, "a message sent by another process", |s| {
        summaries(s, "team").contains(&"second message".to_owned())
    });
    ok(maos(ws, "bob").args(["task", "add", "Write the docs"]));
    until_snapshot(&url, &events, "a task added by another process", |s| {
        s["tasks"]["counts"]["total"] == 2
    });
    ok(maos(ws, "bob").args(["lock", "acquire", "src/ui.rs"]));
    until_snapshot(&url, &events, "a lock taken by another process", |s| {
        holders(s).contains(&("src/ui.rs".to_owned(), "bob".to_owned()))
    });
    ok(maos(ws, "bob").args(["broadcast", "ci/build", "--data", "\"green\""]));
    until_snapshot(&url, &events, "a broadcast", |s| {
        summaries(s, "broadcast/ci/build") == ["green"]
    });

    // Actions, with the file backend's refusals.
    let (status, body) = post_json(
        &url,
        "/api/actions/release-lock",
        &serde_json::json!({ "resource": "src/api.rs", "owner": "alice", "token": 1 }),
    );
    assert_eq!(status, 409, "alice is alive: {body}");
    assert!(body.contains("alice is alive"), "{body}");
    let (status, body) = post_json(
        &url,
        "/api/actions/resolve-deadlock",
        &serde_json::json!({}),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no deadlock"), "{body}");
    let (status, body) = post_json(
        &url,
        "/api/actions/reset-task",
        &serde_json::json!({ "id": flaky }),
    );
    assert_eq!(status, 200, "{body}");
    let t = json(maos(ws, "x").args(["task", "show", &flaky]));
    assert_eq!(t["status"], "pending", "{t}");
    // alice's process ends: she is dead, and her lock can be released from the page.
    drop(alice_pid);
    let snap = until_snapshot(&url, &events, "alice dead", |s| {
        s["locks"]["holders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["owner"] == "alice" && h["owner_dead"] == true)
    });
    let token = snap["locks"]["holders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["owner"] == "alice")
        .unwrap()["token"]
        .clone();
    let (status, body) = post_json(
        &url,
        "/api/actions/release-lock",
        &serde_json::json!({ "resource": "src/api.rs", "owner": "alice", "token": token }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("released 1 lock(s) of dead agent alice"),
        "{body}"
    );
    let snap = until_snapshot(&url, &events, "the release and both records", |s| {
        !holders(s).iter().any(|(_, o)| o == "alice")
            && summaries(s, "broadcast/dashboard/actions").len() == 2
    });
    let records = summaries(&snap, "broadcast/dashboard/actions").join("\n");
    assert!(
        records.contains("reset_task") && records.contains("release_lock"),
        "{records}"
    );

    // The page itself, in a real browser: the server's data, then a change followed live.
    let mut page = Chromium::launch().unwrap();
    page.open(&url, 1400, 1000).unwrap();
    page.eval(PROBE, Duration::from_secs(10)).unwrap();
    let shown = until(
        &mut page,
        "s => s.agents.includes('bob') && s.locks.some(l => l.resource === 'src/ui.rs') \
         && s.messages.some(m => m.includes('second message'))",
        30_000,
    );
    assert_eq!(
        shown["conn"].as_str().map(|c| c.contains("live")),
        Some(true),
        "{shown:#}"
    );
    latency(
        &mut page,
        "a lock on PostgreSQL",
        "s => s.locks.some(l => l.resource === 'src/late.rs')",
        maos(ws, "bob").args(["lock", "acquire", "src/late.rs"]),
    );
    drop(bob_pid);
}

/// A dashboard whose PostgreSQL server goes away shows the lost connection as a problem,
/// and recovers when the server is back: the problem goes, and writes show again.
#[test]
fn dashboard_on_postgresql_shows_a_lost_connection_and_recovers() {
    use maos_coordination::postgres::server::{TestServer, unique_namespace};
    // A server of its own: this test stops it.
    let server = TestServer::start().expect("a PostgreSQL server for the tests");
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path();
    Maos::uninitialised(ws)
        .run([
            "init",
            "--backend",
            &server.url(),
            "--namespace",
            &unique_namespace("dash-lost"),
        ])
        .ok();
    ok(maos(ws, "alice").args(["send", "team", "--data", "\"before\""]));
    let (_dash, url) = dashboard(ws, "127.0.0.1:0");
    let events = versions(&url);
    until_snapshot(&url, &events, "the first message", |s| {
        summaries(s, "team") == ["before"] && s["problems"] == serde_json::json!([])
    });

    server.stop().unwrap();
    let snap = until_snapshot(&url, &events, "the lost connection", |s| {
        s["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["section"] == "connection")
    });
    // What was read stays on the page meanwhile.
    assert_eq!(summaries(&snap, "team"), ["before"]);

    server.restart().unwrap();
    until_snapshot(&url, &events, "the connection back", |s| {
        s["problems"] == serde_json::json!([])
    });
    ok(maos(ws, "alice").args(["send", "team", "--data", "\"after\""]));
    until_snapshot(&url, &events, "a message sent after the restart", |s| {
        summaries(s, "team") == ["before", "after"]
    });
}
