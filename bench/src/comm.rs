//! maos-comm: durable send throughput beside SQLite, receive cost beside the design's
//! list-and-parse-everything, cross-process wake latency.
//!
//! Multi-process parts re-exec this binary with `--comm-child MODE ...` ([`child`]).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use maos_coordination::comm::{ChannelOptions, ChannelWatcher, Cursor, FileChannel, Filter, Inbox};
use maos_coordination::{AgentId, ChannelName, Message, Recipients, Workspace};

use crate::table::{Row, Table, percentile_us};

const CHANNEL: &str = "bench";

fn payload(i: u64) -> serde_json::Value {
    serde_json::json!({ "i": i, "text": "implement GET /users/{id} with pagination and tests" })
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn open_channel(ws: &Path) -> anyhow::Result<FileChannel> {
    let ws = Workspace::open_or_init(ws)?;
    Ok(FileChannel::open(&ws, ChannelName::new(CHANNEL)?)?)
}

fn sqlite(db: &Path) -> anyhow::Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(db)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
         channel TEXT NOT NULL, body TEXT NOT NULL)",
    )?;
    Ok(c)
}

/// Sends `n` messages durably, one at a time; returns the elapsed time.
fn send_maos(ws: &Path, n: u64, me: &str) -> anyhow::Result<Duration> {
    let ch = open_channel(ws)?;
    let me = AgentId::new(me)?;
    let t = Instant::now();
    for i in 0..n {
        ch.send_blocking(&Message::new(me.clone(), Recipients::All, payload(i)))?;
    }
    Ok(t.elapsed())
}

/// Inserts the same messages into SQLite, one commit per message.
fn send_sqlite(db: &Path, n: u64, me: &str) -> anyhow::Result<Duration> {
    let c = sqlite(db)?;
    let me = AgentId::new(me)?;
    let mut stmt = c.prepare("INSERT INTO queue (channel, body) VALUES (?1, ?2)")?;
    let t = Instant::now();
    for i in 0..n {
        let body = serde_json::to_string(&Message::new(me.clone(), Recipients::All, payload(i)))?;
        stmt.execute((CHANNEL, body))?; // autocommit: one transaction per message
    }
    Ok(t.elapsed())
}

/// The child side: `--comm-child send|sqlite PATH N` (waits for a line on stdin, then sends)
/// and `--comm-child wait|poll WS N` (prints the wake latency of N messages; `poll` without
/// file events, looking every 100 ms).
pub(crate) fn child(args: &[String]) -> anyhow::Result<()> {
    let [mode, path, n] = args else {
        anyhow::bail!("usage: --comm-child send|lat|sqlite|wait|poll PATH N");
    };
    let n: u64 = n.parse()?;
    let path = Path::new(path);
    let me = format!("child-{}", std::process::id());
    let go = || -> anyhow::Result<()> {
        println!("ready");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(())
    };
    match mode.as_str() {
        "send" => {
            let ch = open_channel(path)?;
            let me = AgentId::new(me)?;
            go()?;
            for i in 0..n {
                ch.send_blocking(&Message::new(me.clone(), Recipients::All, payload(i)))?;
            }
        }
        "lat" => {
            // Like "send", then print each send's latency in microseconds, one per line.
            let ch = open_channel(path)?;
            let me = AgentId::new(me)?;
            go()?;
            let mut lat = Vec::with_capacity(n as usize);
            for i in 0..n {
                let t = Instant::now();
                ch.send_blocking(&Message::new(me.clone(), Recipients::All, payload(i)))?;
                lat.push(t.elapsed().as_micros());
            }
            for l in lat {
                println!("{l}");
            }
        }
        "sqlite" => {
            let c = sqlite(path)?;
            let me = AgentId::new(me)?;
            let mut stmt = c.prepare("INSERT INTO queue (channel, body) VALUES (?1, ?2)")?;
            go()?;
            for i in 0..n {
                let body =
                    serde_json::to_string(&Message::new(me.clone(), Recipients::All, payload(i)))?;
                stmt.execute((CHANNEL, body))?;
            }
        }
        "wait" | "poll" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut ch = open_channel(path)?;
                if mode == "poll" {
                    // The baseline: no file events, a look every 100 ms (the design's
                    // debounce interval).
                    let ws = Workspace::open(path)?;
                    let opts = ChannelOptions::default()
                        .file_events(false)
                        .fallback_interval(Duration::from_millis(100));
                    ch = FileChannel::open_with(&ws, ChannelName::new(CHANNEL)?, opts)?;
                }
                let end = ch.end_cursor()?;
                let mut w = ChannelWatcher::from_cursor(ch, end, Filter::Everything)?;
                println!("ready");
                std::io::stdout().flush()?;
                for _ in 0..n {
                    let m = w.wait_for_message::<serde_json::Value>().await?;
                    let got = now_ns();
                    let sent = m.payload["t"].as_str().unwrap_or("0").parse::<u128>()?;
                    println!("{}", got.saturating_sub(sent));
                    std::io::stdout().flush()?;
                }
                anyhow::Ok(())
            })?;
        }
        other => anyhow::bail!("unknown child mode {other}"),
    }
    Ok(())
}

fn spawn_child(
    mode: &str,
    path: &Path,
    n: u64,
) -> anyhow::Result<(Child, BufReader<std::process::ChildStdout>)> {
    let mut c = Command::new(std::env::current_exe()?)
        .arg("--comm-child")
        .arg(mode)
        .arg(path)
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut r = BufReader::new(c.stdout.take().expect("piped"));
    let mut line = String::new();
    r.read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "child said {line:?}");
    Ok((c, r))
}

/// Runs `procs` children of `mode`, released together; returns messages per second.
fn concurrent(mode: &str, path: &Path, procs: usize, n: u64) -> anyhow::Result<f64> {
    let mut kids = (0..procs)
        .map(|_| spawn_child(mode, path, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t = Instant::now();
    for (c, _) in &mut kids {
        writeln!(c.stdin.as_mut().expect("piped"), "go")?;
    }
    for (mut c, _) in kids {
        let st = c.wait()?;
        anyhow::ensure!(st.success(), "{mode} child failed");
    }
    Ok((procs as u64 * n) as f64 / t.elapsed().as_secs_f64())
}

/// Send latencies (every send of every process) with `procs` writer processes released together.
fn swarm_latencies(path: &Path, procs: usize, n: u64) -> anyhow::Result<Vec<Duration>> {
    let mut kids = (0..procs)
        .map(|_| spawn_child("lat", path, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (c, _) in &mut kids {
        writeln!(c.stdin.as_mut().expect("piped"), "go")?;
    }
    let mut out = Vec::new();
    for (mut c, r) in kids {
        for line in r.lines() {
            out.push(Duration::from_micros(line?.trim().parse()?));
        }
        anyhow::ensure!(c.wait()?.success(), "lat child failed");
    }
    Ok(out)
}

/// Issue 14: p99 of a durable send with 100 writer processes on one channel.
fn swarm(table: &mut Table) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    Workspace::open_or_init(dir.path())?;
    let mut one = swarm_latencies(dir.path(), 1, 200)?;
    let mut many = swarm_latencies(dir.path(), 100, 20)?;
    let (p50, p99) = (
        percentile_us(&mut many, 50.0),
        percentile_us(&mut many, 99.0),
    );
    let b99 = percentile_us(&mut one, 99.0);
    table.push(Row {
        group: "comm",
        name: format!("durable send, 100 writer processes on one channel (p99; p50 {p50:.0} us)"),
        value: p99,
        baseline_name: "1 writer process (p99)".into(),
        baseline: b99,
        unit: "us",
        higher_is_better: false,
        target: "p99 <= 50 ms".into(),
        met: p99 <= 50_000.0,
    });
    Ok(())
}

fn throughput(table: &mut Table) -> anyhow::Result<()> {
    let n = 2000;
    let dir = tempfile::tempdir()?;
    // One writer, in process.
    let ws1 = dir.path().join("ws1");
    let db1 = dir.path().join("one.db");
    // Alternate the two in rounds so that load from other processes on the machine hits
    // both alike.
    let (mut t_maos, mut t_sql) = (Duration::ZERO, Duration::ZERO);
    for round in 0..8 {
        let me = format!("w{round}");
        t_maos += send_maos(&ws1, n / 8, &me)?;
        t_sql += send_sqlite(&db1, n / 8, &me)?;
    }
    let maos1 = n as f64 / t_maos.as_secs_f64();
    let sql1 = n as f64 / t_sql.as_secs_f64();
    table.push(Row {
        group: "comm",
        name: "durable send, 1 writer (msg/s)".into(),
        value: maos1,
        baseline_name: "SQLite WAL synchronous=FULL, commit per message".into(),
        baseline: sql1,
        unit: "msg/s",
        higher_is_better: true,
        target: ">= 1.0x SQLite".into(),
        met: maos1 >= sql1,
    });
    // Four writer processes.
    let ws4 = dir.path().join("ws4");
    Workspace::open_or_init(&ws4)?;
    let db4 = dir.path().join("four.db");
    sqlite(&db4)?;
    let per = n / 8;
    let (mut maos4, mut sql4) = (0.0, 0.0);
    for _ in 0..2 {
        maos4 += concurrent("send", &ws4, 4, per)? / 2.0;
        sql4 += concurrent("sqlite", &db4, 4, per)? / 2.0;
    }
    table.push(Row {
        group: "comm",
        name: "durable send, 4 writer processes (msg/s)".into(),
        value: maos4,
        baseline_name: "SQLite WAL synchronous=FULL, 4 processes".into(),
        baseline: sql4,
        unit: "msg/s",
        higher_is_better: true,
        target: ">= 1.0x SQLite".into(),
        met: maos4 >= sql4,
    });
    Ok(())
}

/// Median time to receive one new message from a live cursor with `history` messages before.
fn receive_one(history: u64) -> anyhow::Result<(f64, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let ch = open_channel(dir.path())?;
    let me = AgentId::new("w")?;
    let mut i = 0;
    while i < history {
        let k = (history - i).min(1000);
        let batch: Vec<_> = (i..i + k)
            .map(|j| Message::new(me.clone(), Recipients::All, payload(j)))
            .collect();
        ch.send_many_blocking(&batch)?;
        i += k;
    }
    // A live reader: catch up once.
    let mut cur = Cursor::start();
    loop {
        let b = ch.receive_blocking::<serde_json::Value>(&cur, &Filter::Everything)?;
        if b.messages.is_empty() {
            break;
        }
        cur = b.cursor;
    }
    let reader = Filter::Agent {
        agent: AgentId::new("r")?,
        role: None,
    };
    let mut samples = Vec::new();
    for j in 0..300 {
        ch.send_blocking(&Message::new(me.clone(), Recipients::All, payload(j)))?;
        let t = Instant::now();
        let b = ch.receive_blocking::<serde_json::Value>(&cur, &reader)?;
        samples.push(t.elapsed());
        anyhow::ensure!(b.messages.len() == 1, "expected one new message");
        cur = b.cursor;
    }
    Ok((percentile_us(&mut samples, 50.0), dir))
}

/// The design's receive: list the directory, parse every file, keep those newer than `after`.
fn design_receive(dir: &Path, after: u64) -> anyhow::Result<usize> {
    let mut out: Vec<Message<serde_json::Value>> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension() != Some("json".as_ref()) {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some(ts) = name.split('_').next().and_then(|t| t.parse::<u64>().ok()) else {
            continue;
        };
        if ts > after {
            let text = std::fs::read_to_string(&path)?;
            if let Ok(m) = serde_json::from_str(&text) {
                out.push(m);
            }
        }
    }
    out.sort_by_key(|m| m.timestamp);
    Ok(out.len())
}

fn receive(table: &mut Table) -> anyhow::Result<()> {
    let (small, _d1) = receive_one(100)?;
    let (large, _d2) = receive_one(100_000)?;
    table.push(Row {
        group: "comm",
        name: "receive 1 new message, 100k history (p50)".into(),
        value: large,
        baseline_name: "same, 100 history".into(),
        baseline: small,
        unit: "us",
        higher_is_better: false,
        target: "<= 2x apart".into(),
        met: large <= 2.0 * small && small <= 2.0 * large,
    });
    // The design's file-per-message directory with 100k messages.
    let dir = tempfile::tempdir()?;
    let me = AgentId::new("w")?;
    let base = maos_coordination::core::now_ms();
    for i in 0..100_000u64 {
        let mut m = Message::new(me.clone(), Recipients::All, payload(i));
        m.timestamp = base + i;
        let p = dir
            .path()
            .join(format!("{:020}_{}.json", m.timestamp, m.id));
        std::fs::write(p, serde_json::to_string_pretty(&m)?)?;
    }
    let mut samples = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let n = design_receive(dir.path(), base + 99_998)?;
        samples.push(t.elapsed());
        anyhow::ensure!(n == 1, "design receive found {n}");
    }
    let design = percentile_us(&mut samples, 50.0);
    table.push(Row {
        group: "comm",
        name: "receive 1 new message, 100k history (p50)".into(),
        value: large,
        baseline_name: "design: list + parse every file, 100k".into(),
        baseline: design,
        unit: "us",
        higher_is_better: false,
        target: ">= 100x faster".into(),
        met: design >= 100.0 * large,
    });
    Ok(())
}

/// Latencies (send start -> the other process's wait returns) of `rounds` messages.
fn wake_latencies(mode: &str, rounds: u64) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let ch = open_channel(dir.path())?;
    let me = AgentId::new("sender")?;
    let (mut kid, mut r) = spawn_child(mode, dir.path(), rounds)?;
    let mut lat = Vec::with_capacity(rounds as usize);
    let mut line = String::new();
    for _ in 0..rounds {
        let t = now_ns().to_string();
        ch.send_blocking(&Message::new(
            me.clone(),
            Recipients::All,
            serde_json::json!({ "t": t }),
        ))?;
        line.clear();
        r.read_line(&mut line)?;
        let ns: u64 = line.trim().parse()?;
        lat.push(Duration::from_nanos(ns));
        // Idle a little, so each wake-up starts from a sleeping watcher.
        std::thread::sleep(Duration::from_millis(2));
    }
    kid.wait()?;
    Ok(lat)
}

fn wake(table: &mut Table) -> anyhow::Result<()> {
    let mut lat = wake_latencies("wait", 500)?;
    let mut poll = wake_latencies("poll", 40)?;
    let p50 = percentile_us(&mut lat, 50.0);
    let p99 = percentile_us(&mut lat, 99.0);
    let b50 = percentile_us(&mut poll, 50.0);
    let b99 = percentile_us(&mut poll, 99.0);
    table.push(Row {
        group: "comm",
        name: "wake latency send -> wait_for_message, other process (p50)".into(),
        value: p50,
        baseline_name: "polling every 100 ms (design's debounce), p50".into(),
        baseline: b50,
        unit: "us",
        higher_is_better: false,
        target: "p50 <= 1000 us".into(),
        met: p50 <= 1000.0,
    });
    table.push(Row {
        group: "comm",
        name: "wake latency send -> wait_for_message, other process (p99)".into(),
        value: p99,
        baseline_name: "polling every 100 ms (design's debounce), p99".into(),
        baseline: b99,
        unit: "us",
        higher_is_better: false,
        target: "p99 <= 10000 us".into(),
        met: p99 <= 10_000.0,
    });
    Ok(())
}

/// Median time of `Inbox::unread` (a fresh handle, as a hook makes on every tool call) after
/// one new message, with `channels` channels of `history` messages each already counted.
fn inbox_unread(channels: usize, history: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let ws = Workspace::open_or_init(dir.path())?;
    let me = AgentId::new("w")?;
    let mut chans = Vec::new();
    for c in 0..channels {
        let ch = FileChannel::open(&ws, ChannelName::new(format!("team/c{c}"))?)?;
        let batch: Vec<_> = (0..history)
            .map(|j| Message::new(me.clone(), Recipients::All, payload(j)))
            .collect();
        if !batch.is_empty() {
            ch.send_many_blocking(&batch)?;
        }
        chans.push(ch);
    }
    let reader = AgentId::new("reader")?;
    Inbox::open(&ws, reader.clone())?.unread()?; // the first count reads the history once
    let mut samples = Vec::new();
    for j in 0..100 {
        chans[j % channels].send_blocking(&Message::new(
            me.clone(),
            Recipients::All,
            payload(0),
        ))?;
        let t = Instant::now();
        let n = Inbox::open(&ws, reader.clone())?.unread()?.total;
        samples.push(t.elapsed());
        anyhow::ensure!(
            n == channels as u64 * history + j as u64 + 1,
            "unread count {n}"
        );
    }
    Ok(percentile_us(&mut samples, 50.0))
}

fn inbox(table: &mut Table) -> anyhow::Result<()> {
    let small = inbox_unread(100, 10)?;
    let large = inbox_unread(100, 1000)?;
    table.push(Row {
        group: "comm",
        name: "inbox unread after 1 new message, 100 channels x 1,000 history (p50)".into(),
        value: large,
        baseline_name: "same, 100 channels x 10 history".into(),
        baseline: small,
        unit: "us",
        higher_is_better: false,
        target: "<= 2x apart (cost follows channels and what is new, not history)".into(),
        met: large <= 2.0 * small,
    });
    Ok(())
}

pub(crate) fn run(table: &mut Table) -> anyhow::Result<()> {
    throughput(table)?;
    receive(table)?;
    wake(table)?;
    swarm(table)?;
    inbox(table)?;
    Ok(())
}
