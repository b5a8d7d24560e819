//! The dashboard against real stores: the snapshot of locks with waiters and a real deadlock,
//! the actions through the libraries, the live updates, and the HTTP server's access rules.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use maos_core::{
    AgentId, AgentRegistry, Anchor, ProcessIdentity, Registration, ResourceName, Workspace,
};
use maos_dashboard::{Changed, Collector, Live, Options, Server, actions};
use maos_lock::FileLock;
use maos_track::{Task, TaskStatus, TaskTracker};

fn ws() -> (tempfile::TempDir, Workspace) {
    let d = tempfile::tempdir().unwrap();
    let ws = Workspace::init(d.path()).unwrap();
    (d, ws)
}

fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn res(s: &str) -> ResourceName {
    ResourceName::new(s).unwrap()
}

/// Waits (without sleeping) until the collector's snapshot satisfies `ok`, re-reading the
/// locks on every file event of the live view.
async fn until(live: &Live, what: &str, ok: impl Fn(&maos_dashboard::Snapshot) -> bool) {
    let mut rx = live.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ok(&live.snapshot()) {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(r) => r.unwrap(),
            Err(_) => panic!(
                "timed out waiting for {what}; last snapshot: {}",
                serde_json::to_string_pretty(&*live.snapshot()).unwrap()
            ),
        }
    }
}

fn wait_for(
    ws: &Workspace,
    who: &str,
    what: &str,
) -> std::thread::JoinHandle<maos_lock::Result<maos_lock::LockGuard>> {
    let (ws, who, what) = (ws.clone(), who.to_string(), what.to_string());
    std::thread::spawn(move || {
        FileLock::new(&ws, res(&what))
            .agent(agent(&who))
            .wait(Duration::from_secs(60))
            .acquire_blocking(&format!("{who} needs {what}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_order_and_a_deadlock_named_then_resolved() {
    let (_d, ws) = ws();
    let live = Live::start(&ws, agent("viewer")).await.unwrap();
    let hold = |who: &str, what: &str| {
        FileLock::new(&ws, res(what))
            .agent(agent(who))
            .acquire_blocking(&format!("{who} edits {what}"))
            .unwrap()
    };
    // d holds z; e then f queue for it (f on a pattern covering it).
    let gz = hold("d", "src/z.rs");
    let e = wait_for(&ws, "e", "src/z.rs");
    until(&live, "e queued", |s| s.locks.waiters.len() == 1).await;
    let f = wait_for(&ws, "f", "src/*.rs");
    until(&live, "f queued", |s| s.locks.waiters.len() == 2).await;
    // a holds x, b holds y; a waits for y, then b for x: a <-> b.
    let gx = hold("a", "lib/x.rs");
    let gy = hold("b", "lib/y.rs");
    let a = wait_for(&ws, "a", "lib/y.rs");
    until(&live, "a queued", |s| s.locks.waiters.len() == 3).await;
    let b = wait_for(&ws, "b", "lib/x.rs");
    until(&live, "the deadlock", |s| !s.locks.deadlocks.is_empty()).await;
    let snap = live.snapshot();
    let z = snap
        .locks
        .holders
        .iter()
        .find(|l| l.resource == "src/z.rs")
        .unwrap();
    assert_eq!(z.owner, "d");
    let order: Vec<&str> = z
        .waiters
        .iter()
        .map(|t| {
            snap.locks
                .waiters
                .iter()
                .find(|w| w.ticket == *t)
                .unwrap()
                .agent
                .as_str()
        })
        .collect();
    assert_eq!(order, ["e", "f"], "waiters of z in arrival order");
    let fw = snap.locks.waiters.iter().find(|w| w.agent == "f").unwrap();
    assert_eq!(fw.blocked_by, ["d"]);
    let d = &snap.locks.deadlocks[0];
    assert_eq!(snap.locks.deadlocks.len(), 1);
    assert_eq!(d.agents, ["a", "b"]);
    assert_eq!(d.victim, "b", "the youngest wait is the victim");
    assert_eq!(d.name, "b -> a -> b");
    assert!(
        snap.agents.is_empty(),
        "nobody registered: the locks name their owners anyway"
    );

    let rec = actions::resolve_deadlock(&ws, &agent("viewer"), None).unwrap();
    assert!(rec.detail.contains("b on lib/x.rs"), "{}", rec.detail);
    let err = b.join().unwrap().unwrap_err();
    assert!(
        matches!(err, maos_lock::Error::Deadlock { .. }),
        "the victim's wait ends with a deadlock error: {err}"
    );
    until(&live, "no deadlock", |s| s.locks.deadlocks.is_empty()).await;
    // The action is recorded with the actor on the dashboard topic.
    until(&live, "the recorded action", |s| {
        s.messages.iter().any(|c| {
            c.name == "broadcast/dashboard/actions"
                && c.recent
                    .iter()
                    .any(|m| m.sender == "viewer" && m.summary.contains("resolve_deadlock"))
        })
    })
    .await;
    assert!(
        actions::resolve_deadlock(&ws, &agent("viewer"), None).is_err(),
        "nothing to resolve now"
    );
    gy.release().unwrap();
    a.join().unwrap().unwrap().release().unwrap();
    gx.release().unwrap();
    gz.release().unwrap();
    e.join().unwrap().unwrap().release().unwrap();
    f.join().unwrap().unwrap().release().unwrap();
    until(&live, "no locks", |s| s.locks.holders.is_empty()).await;
}

#[test]
fn release_lock_only_for_a_dead_agent_and_reset_only_a_failed_task() {
    let (_d, ws) = ws();
    let reg = AgentRegistry::new(&ws);
    // "gone" is registered with a session process that has ended: dead.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let ident = ProcessIdentity::of(child.id()).unwrap();
    reg.register(Registration::new(agent("gone")).anchor(Anchor::session(ident)))
        .unwrap();
    reg.register(Registration::new(agent("here")).process(ProcessIdentity::current()))
        .unwrap();
    // A lock held by a live process (this one) for an agent the registry will call dead:
    // what the action is for (a dead agent's lease alone is reclaimed by the lock table).
    let g = FileLock::new(&ws, res("a.txt"))
        .agent(agent("gone"))
        .acquire_blocking("x")
        .unwrap();
    let g_token = g.token().0;
    let h = FileLock::new(&ws, res("b.txt"))
        .agent(agent("here"))
        .acquire_blocking("y")
        .unwrap()
        .detach()
        .unwrap();
    let me = agent("viewer");
    let err = actions::release_lock(&ws, &me, "a.txt", "gone", g_token, None).unwrap_err();
    assert!(err.to_string().contains("alive"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    let err = actions::release_lock(&ws, &me, "b.txt", "here", h.token.0, None).unwrap_err();
    assert!(err.to_string().contains("here is alive"), "{err}");
    let err = actions::release_lock(&ws, &me, "b.txt", "nobody", h.token.0, None).unwrap_err();
    assert!(err.to_string().contains("not registered"), "{err}");
    let mut c = Collector::new(&ws, me.clone());
    let snap = c.refresh(&Changed::all());
    let a = snap
        .locks
        .holders
        .iter()
        .find(|l| l.resource == "a.txt")
        .unwrap();
    assert!(a.owner_dead, "the page offers the release");
    let rec = actions::release_lock(&ws, &me, "a.txt", "gone", g_token, None).unwrap();
    assert!(rec.detail.contains("released 1 lock"), "{}", rec.detail);
    assert!(g.release().is_err(), "the holder finds its lock gone");
    let snap = c.refresh(&Changed::all());
    let left: Vec<&str> = snap
        .locks
        .holders
        .iter()
        .map(|l| l.resource.as_str())
        .collect();
    assert_eq!(left, ["b.txt"]);

    let t = TaskTracker::open(&ws).unwrap();
    let id = t.create_task_blocking(&Task::new("flaky")).unwrap();
    let err = actions::reset_task(&ws, &me, id.as_str(), None).unwrap_err();
    assert!(err.to_string().contains("not failed"), "{err}");
    t.update_status_blocking(&id, TaskStatus::InProgress, None)
        .unwrap();
    t.update_status_blocking(&id, TaskStatus::Failed, Some("boom"))
        .unwrap();
    let rec = actions::reset_task(&ws, &me, &id.as_str()[..12], None).unwrap();
    assert!(rec.detail.contains("flaky"), "{}", rec.detail);
    let back = t.get_blocking(&id).unwrap().unwrap();
    assert_eq!(back.status, TaskStatus::Pending);
    assert_eq!(
        back.note.as_deref(),
        Some("reset from the dashboard by viewer")
    );
    let snap = c.refresh(&Changed::all());
    let row = snap
        .tasks
        .rows
        .iter()
        .find(|r| r.id == id.as_str())
        .unwrap();
    assert_eq!(row.status, TaskStatus::Pending);
    assert_eq!(snap.tasks.counts.pending, 1);
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (Connection: close), blocking.
fn http(addr: SocketAddr, req: &str) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str, host: &str, extra: &str) -> Resp {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"),
    )
}

/// Starts `server` on a runtime of its own; returns its address, URL and a stopper.
fn serve(
    server: Server,
    rt: &tokio::runtime::Runtime,
) -> (SocketAddr, String, tokio::sync::oneshot::Sender<()>) {
    let addr = server.local_addr();
    let url = server.url();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(server.serve(async move {
        let _ = rx.await;
    }));
    (addr, url, tx)
}

#[test]
fn loopback_server_serves_the_page_the_view_and_refuses_actions_and_foreign_hosts() {
    let (_d, ws) = ws();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut opts = Options::new(agent("viewer"));
    opts.listen = "127.0.0.1:0".parse().unwrap();
    let server = rt.block_on(Server::bind(&ws, opts)).unwrap();
    assert!(server.token().is_none());
    let (addr, url, stop) = serve(server, &rt);
    assert_eq!(url, format!("http://{addr}/"));
    let host = addr.to_string();

    let page = get(addr, "/", &host, "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<script src=\"/assets/app.js\""));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    for asset in ["/assets/app.js", "/assets/app.css"] {
        let r = get(addr, asset, &host, "");
        assert_eq!(r.status, 200, "{asset}");
        let body = r.body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{asset} fetches nothing from elsewhere"
        );
    }
    let v = get(addr, "/api/view?tasks_limit=5", &host, "");
    assert_eq!(v.status, 200, "{}", v.body);
    let json: serde_json::Value = serde_json::from_str(&v.body).unwrap();
    assert!(json["version"].as_u64().unwrap() >= 1);
    assert_eq!(json["actions"], false);
    assert_eq!(json["merges"]["state"], "no_repository");
    assert_eq!(json["tasks"]["counts"]["total"], 0);
    let svg = get(addr, "/api/graph.svg", &host, "");
    assert_eq!(svg.status, 200);
    assert!(
        svg.header("content-type")
            .unwrap()
            .starts_with("image/svg+xml")
    );

    // DNS rebinding: a page served as evil.example cannot read the workspace.
    assert_eq!(get(addr, "/api/view", "evil.example:80", "").status, 403);
    assert_eq!(get(addr, "/", "localhost", "").status, 200);
    // Read-only: actions are refused.
    let r = http(
        addr,
        &format!(
            "POST /api/actions/resolve-deadlock HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("--allow-actions"), "{}", r.body);
    assert_eq!(get(addr, "/nope", &host, "").status, 404);

    // The event stream sends the current version at once.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /api/events HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut seen = String::new();
    while !seen.contains("event: version") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended: {seen}");
        seen.push_str(&line);
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    stop.send(()).unwrap();
}

#[test]
fn a_remote_dashboard_needs_an_explicit_flag_and_then_its_token_everywhere() {
    let (_d, ws) = ws();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut opts = Options::new(agent("viewer"));
    opts.listen = "0.0.0.0:0".parse().unwrap();
    let err = rt.block_on(Server::bind(&ws, opts.clone())).unwrap_err();
    assert!(
        matches!(err, maos_dashboard::Error::NotLoopback { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--allow-remote"), "{err}");
    opts.allow_remote = true;
    opts.allow_actions = true;
    let server = rt.block_on(Server::bind(&ws, opts)).unwrap();
    let token = server.token().unwrap().to_string();
    let (addr, url, stop) = serve(server, &rt);
    assert!(url.ends_with(&format!("/?token={token}")), "{url}");
    let local: SocketAddr = format!("127.0.0.1:{}", addr.port()).parse().unwrap();
    let host = "dashboard.example:7420";
    for path in [
        "/",
        "/api/view",
        "/api/events",
        "/assets/app.js",
        "/api/snapshot",
    ] {
        assert_eq!(
            get(local, path, host, "").status,
            401,
            "{path} without the token"
        );
        let wrong = format!("Authorization: Bearer {}x\r\n", &token[..token.len() - 1]);
        assert_eq!(
            get(local, path, host, &wrong).status,
            401,
            "{path} with a wrong token"
        );
    }
    // ?token= on the page sets the cookie and drops the token from the address.
    let r = get(local, &format!("/?token={token}"), host, "");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/"));
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let jar = format!("Cookie: {}\r\n", cookie.split(';').next().unwrap());
    assert_eq!(get(local, "/", host, &jar).status, 200);
    assert_eq!(get(local, "/api/view", host, &jar).status, 200);
    let bearer = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(get(local, "/api/view", host, &bearer).status, 200);
    // The event stream too.
    let mut s = TcpStream::connect(local).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /api/events?token={token} HTTP/1.1\r\nHost: {host}\r\n\r\n"
    )
    .unwrap();
    let mut first = String::new();
    BufReader::new(s).read_line(&mut first).unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Actions from another origin are refused even with the token.
    let r = http(
        local,
        &format!(
            "POST /api/actions/resolve-deadlock HTTP/1.1\r\nHost: {host}\r\n{bearer}Origin: http://evil.example\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // From the page's own origin the action runs (and is refused: no deadlock).
    let r = http(
        local,
        &format!(
            "POST /api/actions/resolve-deadlock HTTP/1.1\r\nHost: {host}\r\n{bearer}Origin: http://{host}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        ),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("no deadlock"), "{}", r.body);
    stop.send(()).unwrap();
}
