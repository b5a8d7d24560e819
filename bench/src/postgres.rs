//! The PostgreSQL backend beside the file backend, measured in the same run on this machine
//! (a throwaway cluster on 127.0.0.1): send, receive, wake latency, an uncontended lock,
//! lock handoff, and claim throughput with 8 processes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use maos_coordination::comm::{AgentInbox, Cursor, FileChannel, Filter as FileFilter, Inbox};
use maos_coordination::lock::FileLock;
use maos_coordination::track::{Task, TaskTracker};
use maos_coordination::{AgentId, ChannelName, Message, Recipients, ResourceName, Workspace};
use maos_postgres::comm::{Filter, PgChannel};
use maos_postgres::inbox::PgInbox;
use maos_postgres::lock::PgLock;
use maos_postgres::server::{TestServer, unique_namespace};
use maos_postgres::track::PgTracker;
use maos_postgres::{BackendUrl, Pg};

use crate::table::{Row, Table, percentile_us};

const GROUP: &str = "postgres";

fn row(
    name: &str,
    value: f64,
    baseline: f64,
    unit: &'static str,
    higher: bool,
    factor: f64,
) -> Row {
    let met = if higher {
        value * factor >= baseline
    } else {
        value <= baseline * factor
    };
    Row {
        group: GROUP,
        name: name.into(),
        value,
        baseline_name: "file backend, same operation".into(),
        baseline,
        unit,
        higher_is_better: higher,
        target: if higher {
            format!(">= 1/{factor} of the file backend")
        } else {
            format!("<= {factor}x the file backend")
        },
        met,
    }
}

pub(crate) fn run(table: &mut Table) -> anyhow::Result<()> {
    let server = TestServer::start()?;
    let url = BackendUrl::parse(&server.url())?;
    send_receive(table, &url)?;
    wake(table, &url)?;
    locks(table, &url)?;
    claims(table, &url)?;
    inbox(table, &url)?;
    drop(server);
    Ok(())
}

fn pg(url: &BackendUrl, what: &str) -> anyhow::Result<Pg> {
    Ok(Pg::connect(url, &unique_namespace(what))?)
}

fn send_receive(table: &mut Table, url: &BackendUrl) -> anyhow::Result<()> {
    let n = 500;
    let me = AgentId::new("bench")?;
    let pg = pg(url, "bench-send")?;
    let ch = PgChannel::open(&pg, ChannelName::new("c")?);
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let fch = FileChannel::open(&ws, ChannelName::new("c")?)?;
    let (mut p, mut f) = (Vec::new(), Vec::new());
    for i in 0..n {
        let m = Message::new(me.clone(), Recipients::All, i);
        let t = Instant::now();
        ch.send(&m)?;
        p.push(t.elapsed());
        let t = Instant::now();
        fch.send_blocking(&m)?;
        f.push(t.elapsed());
    }
    let (pv, fv) = (percentile_us(&mut p, 50.0), percentile_us(&mut f, 50.0));
    table.push(row(
        "send one message, acknowledged durable (p50)",
        pv,
        fv,
        "us",
        false,
        5.0,
    ));
    let t = Instant::now();
    let got = ch.receive::<u64>(0, &Filter::Everything)?.messages.len();
    let pr = t.elapsed().as_secs_f64() * 1e6;
    let t = Instant::now();
    let fgot = fch
        .receive_blocking::<u64>(&Cursor::start(), &FileFilter::Everything)?
        .messages
        .len();
    let fr = t.elapsed().as_secs_f64() * 1e6;
    anyhow::ensure!(got == n && fgot == n, "received {got} / {fgot} of {n}");
    table.push(row(
        &format!("receive {n} new messages"),
        pr,
        fr,
        "us",
        false,
        10.0,
    ));
    Ok(())
}

fn wake(table: &mut Table, url: &BackendUrl) -> anyhow::Result<()> {
    let rounds = 100;
    let me = AgentId::new("bench")?;
    let pg = pg(url, "bench-wake")?;
    let ch = PgChannel::open(&pg, ChannelName::new("w")?);
    let reader = ch.clone();
    let (tx, rx) = mpsc::channel::<Instant>();
    let (back, done) = mpsc::channel::<Duration>();
    let t = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut cur = 0;
        while cur < rounds {
            let b = reader.wait::<u64>(cur, &Filter::Everything, Duration::from_secs(30))?;
            for d in b.messages {
                cur = d.position;
                let sent = rx.recv()?;
                back.send(sent.elapsed())?;
            }
        }
        Ok(())
    });
    let mut p = Vec::new();
    for i in 0..rounds {
        tx.send(Instant::now())?;
        ch.send(&Message::new(me.clone(), Recipients::All, i))?;
        p.push(done.recv()?);
    }
    t.join().map_err(|_| anyhow::anyhow!("waiter panicked"))??;
    // The file backend, the same way.
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let fch = FileChannel::open(&ws, ChannelName::new("w")?)?;
    let freader = fch.clone();
    let (tx, rx) = mpsc::channel::<Instant>();
    let (back, done) = mpsc::channel::<Duration>();
    let t = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut cur = Cursor::start();
        while cur.position < rounds {
            let b = freader.wait_blocking::<u64>(
                &cur,
                &FileFilter::Everything,
                Duration::from_secs(30),
            )?;
            for _ in &b.messages {
                let sent = rx.recv()?;
                back.send(sent.elapsed())?;
            }
            cur = b.cursor;
        }
        Ok(())
    });
    let mut f = Vec::new();
    for i in 0..rounds {
        tx.send(Instant::now())?;
        fch.send_blocking(&Message::new(me.clone(), Recipients::All, i))?;
        f.push(done.recv()?);
    }
    t.join().map_err(|_| anyhow::anyhow!("waiter panicked"))??;
    let (pv, fv) = (percentile_us(&mut p, 50.0), percentile_us(&mut f, 50.0));
    table.push(row(
        "wake latency send -> waiting reader (p50)",
        pv,
        fv,
        "us",
        false,
        10.0,
    ));
    Ok(())
}

fn locks(table: &mut Table, url: &BackendUrl) -> anyhow::Result<()> {
    let n = 500;
    let pg = pg(url, "bench-lock")?;
    let me = AgentId::new("bench")?;
    let lock = PgLock::new(&pg, ResourceName::new("src/lib.rs")?).agent(me.clone());
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let flock = FileLock::new(&ws, ResourceName::new("src/lib.rs")?).agent(me.clone());
    for _ in 0..20 {
        lock.try_acquire("warm")?
            .ok_or_else(|| anyhow::anyhow!("busy"))?
            .release()?;
        flock
            .try_acquire("warm")?
            .ok_or_else(|| anyhow::anyhow!("busy"))?
            .release()?;
    }
    let (mut p, mut f) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        lock.try_acquire("b")?
            .ok_or_else(|| anyhow::anyhow!("busy"))?
            .release()?;
        p.push(t.elapsed());
        let t = Instant::now();
        flock
            .try_acquire("b")?
            .ok_or_else(|| anyhow::anyhow!("busy"))?
            .release()?;
        f.push(t.elapsed());
    }
    let (pv, fv) = (percentile_us(&mut p, 50.0), percentile_us(&mut f, 50.0));
    table.push(row(
        "uncontended lock acquire+release (p50)",
        pv,
        fv,
        "us",
        false,
        50.0,
    ));

    // Handoff: a waiting thread gets the lock as the holder releases it.
    let rounds = 100;
    let handoff = |take: &(
                        dyn Fn() -> anyhow::Result<Box<dyn FnOnce() -> anyhow::Result<()> + Send>>
                            + Sync
                    )|
     -> anyhow::Result<Vec<Duration>> {
        let mut out = Vec::new();
        for _ in 0..rounds {
            let release = take()?;
            let (tx, rx) = mpsc::channel::<()>();
            let (got_tx, got) = mpsc::channel::<Instant>();
            std::thread::scope(|s| -> anyhow::Result<()> {
                let h = s.spawn(move || -> anyhow::Result<()> {
                    tx.send(())?;
                    let release2 = take()?;
                    got_tx.send(Instant::now())?;
                    release2()
                });
                rx.recv()?;
                // Let the waiter queue (it blocks in acquire) before releasing.
                std::thread::sleep(Duration::from_millis(20));
                let t = Instant::now();
                release()?;
                let g = got.recv()?;
                out.push(g.saturating_duration_since(t));
                h.join().map_err(|_| anyhow::anyhow!("waiter panicked"))?
            })?;
        }
        Ok(out)
    };
    let plock = PgLock::new(&pg, ResourceName::new("handoff")?)
        .agent(me.clone())
        .wait(Duration::from_secs(30));
    let mut p = handoff(&|| {
        let g = plock.acquire("b")?;
        Ok(Box::new(move || Ok(g.release()?)))
    })?;
    let fl = FileLock::new(&ws, ResourceName::new("handoff")?)
        .agent(me.clone())
        .wait(Duration::from_secs(30));
    let mut f = handoff(&|| {
        let g = fl.acquire_blocking("b")?;
        Ok(Box::new(move || Ok(g.release()?)))
    })?;
    let (pv, fv) = (percentile_us(&mut p, 50.0), percentile_us(&mut f, 50.0));
    table.push(row(
        "lock handoff release -> waiter holds (p50)",
        pv,
        fv,
        "us",
        false,
        20.0,
    ));
    Ok(())
}

/// The child of the claim benchmark: `--claim-child pg URL NS` or `--claim-child file WS`:
/// claims and completes until nothing is ready, then prints how many.
pub(crate) fn child(args: &[String]) -> anyhow::Result<()> {
    let me = AgentId::new(format!("c{}", std::process::id()))?;
    let mut n = 0u64;
    match args {
        [kind, url, ns] if kind == "pg" => {
            let pg = Pg::connect(&BackendUrl::parse(url)?, ns)?;
            let t = PgTracker::new(&pg).agent(me.clone());
            while let Some(task) = t.claim(&me)? {
                t.complete(&task.id, None)?;
                n += 1;
            }
        }
        [kind, ws] if kind == "file" => {
            let ws = Workspace::open(ws)?;
            let t = TaskTracker::open(&ws)?;
            while let Some(task) = t.claim_blocking(&me)? {
                t.complete_blocking(&task.id, None)?;
                n += 1;
            }
        }
        _ => anyhow::bail!("usage: --claim-child pg URL NS | file WS"),
    }
    println!("{n}");
    std::io::stdout().flush()?;
    Ok(())
}

fn run_children(args: &[&str], procs: usize) -> anyhow::Result<(u64, Duration)> {
    let exe = std::env::current_exe()?;
    let t = Instant::now();
    let kids: Vec<_> = (0..procs)
        .map(|_| {
            Command::new(&exe)
                .arg("--claim-child")
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut total = 0;
    for mut k in kids {
        let out = k.stdout.take().ok_or_else(|| anyhow::anyhow!("stdout"))?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        total += line.trim().parse::<u64>()?;
        anyhow::ensure!(k.wait()?.success(), "a claim child failed");
    }
    Ok((total, t.elapsed()))
}

fn claims(table: &mut Table, url: &BackendUrl) -> anyhow::Result<()> {
    let n = 800;
    let tasks: Vec<Task> = (0..n).map(|i| Task::new(format!("t{i}"))).collect();
    let ns = unique_namespace("bench-claim");
    let pg = Pg::connect(url, &ns)?;
    PgTracker::new(&pg).create_tasks(&tasks)?;
    let (pc, pt) = run_children(&["pg", url.as_str(), &ns], 8)?;
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    TaskTracker::open(&ws)?.create_tasks_blocking(&tasks)?;
    let ws_path = dir.path().to_string_lossy().into_owned();
    let (fc, ft) = run_children(&["file", &ws_path], 8)?;
    anyhow::ensure!(
        pc == n as u64 && fc == n as u64,
        "claimed {pc} / {fc} of {n}"
    );
    let pv = pc as f64 / pt.as_secs_f64();
    let fv = fc as f64 / ft.as_secs_f64();
    table.push(row(
        "claim + complete throughput, 8 processes",
        pv,
        fv,
        "tasks/s",
        true,
        5.0,
    ));
    Ok(())
}

/// An agent's inbox as its hooks use it on every tool call: a fresh handle, one new message
/// among 50 channels of history addressed to others; read and acknowledged (the mail check),
/// or counted.
fn inbox(table: &mut Table, url: &BackendUrl) -> anyhow::Result<()> {
    const CHANNELS: usize = 50;
    const ROUNDS: usize = 100;
    let other = AgentId::new("other")?;
    let me = AgentId::new("bench")?;
    let reader = AgentId::new("reader")?;
    let pg = pg(url, "bench-inbox")?;
    let dir = tempfile::tempdir()?;
    let ws = Workspace::init(dir.path())?;
    let mut pchans = Vec::new();
    let mut fchans = Vec::new();
    for c in 0..CHANNELS {
        let name = ChannelName::new(format!("team/c{c}"))?;
        let p = PgChannel::open(&pg, name.clone());
        let f = FileChannel::open(&ws, name)?;
        let history: Vec<_> = (0..20)
            .map(|i| Message::new(me.clone(), Recipients::Agent(other.clone()), i))
            .collect();
        p.send_many(&history)?;
        f.send_many_blocking(&history)?;
        pchans.push(p);
        fchans.push(f);
    }
    let check = |inbox: &mut dyn AgentInbox| -> anyhow::Result<()> {
        let b = inbox.read(20)?;
        anyhow::ensure!(b.items.len() == 1, "{} items", b.items.len());
        inbox.ack(&b)?;
        Ok(())
    };
    // The first reads pass the history once (both backends start the same way).
    PgInbox::open(&pg, reader.clone())?.read_batch(20)?;
    Inbox::open(&ws, reader.clone())?.read(20)?;
    let (mut pm, mut fm, mut pu, mut fu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for j in 0..ROUNDS {
        let m = Message::new(me.clone(), Recipients::Agent(reader.clone()), j);
        pchans[j % CHANNELS].send(&m)?;
        fchans[j % CHANNELS].send_blocking(&m)?;
        let t = Instant::now();
        let n = PgInbox::open(&pg, reader.clone())?.count_unread()?.total;
        pu.push(t.elapsed());
        let t = Instant::now();
        let fnum = Inbox::open(&ws, reader.clone())?.unread()?.total;
        fu.push(t.elapsed());
        anyhow::ensure!(n == 1 && fnum == 1, "unread {n} / {fnum}");
        let t = Instant::now();
        check(&mut PgInbox::open(&pg, reader.clone())?)?;
        pm.push(t.elapsed());
        let t = Instant::now();
        check(&mut Inbox::open(&ws, reader.clone())?)?;
        fm.push(t.elapsed());
    }
    table.push(row(
        &format!(
            "inbox mail check: open, read and acknowledge 1 new message, {CHANNELS} channels (p50)"
        ),
        percentile_us(&mut pm, 50.0),
        percentile_us(&mut fm, 50.0),
        "us",
        false,
        10.0,
    ));
    table.push(row(
        &format!("inbox unread count after 1 new message, {CHANNELS} channels (p50)"),
        percentile_us(&mut pu, 50.0),
        percentile_us(&mut fu, 50.0),
        "us",
        false,
        10.0,
    ));
    Ok(())
}
