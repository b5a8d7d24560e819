//! Helper for the PostgreSQL tests (tests/tests/it/pg_faults.rs, pg_netns.rs): an agent on
//! the PostgreSQL backend, driven line by line on stdin.
//!
//! `pg_agent URL NAMESPACE AGENT` connects (retrying across restarts as the library does),
//! registers AGENT anchored on its session, prints `ready <session key>` and then runs one
//! command per line, answering `ok ...` or `err ...` (one line each):
//!
//! - `send CH N`: sends N messages `[AGENT, i]` to channel CH, printing `ack i POS` after
//!   each acknowledgement; then `ok sent N`.
//! - `recv CH AFTER`: `ok` and the positions and payloads after AFTER, as JSON.
//! - `lock RES`: takes an exclusive lock (waiting up to 120 s) in the background; prints
//!   `granted RES TOKEN` or `failed RES REASON` when done (`ok queued` at once).
//! - `try RES`: `ok TOKEN` or `ok busy`.
//! - `release RES`: releases a held lock.
//! - `count RES N`: N critical sections on RES, each a non-atomic read-modify-write of the
//!   test's counter row under the lock, printing `inc` after each; then `ok counted`.
//! - `create N`: creates N tasks; `claim`: claims until nothing is ready, completing each
//!   and printing `claimed ID` (then `ok claimed N`); `hold-claim`: claims one and keeps it.
//! - `detect`: runs the deadlock detector with resolution; `ok CYCLES`.
//! - `hold-guard WHAT`: on a connection configured as maos's own, begins a transaction that
//!   takes the namespace's guard row of WHAT (`locks`, `tasks`) and leaves it open (as a
//!   process stopped in the middle of a change would); `ok holding`.
//!
//! `PG_AGENT_STUCK_AFTER_MS` sets the backend's `Options::stuck_after`.
//! When its liveness session is lost it prints `lost EPOCH`.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maos_coordination::{AgentId, ChannelName, Message, Recipients, Registration, ResourceName};
use maos_postgres::comm::{Filter, PgChannel};
use maos_postgres::lock::{PgDeadlockDetector, PgGuard, PgLock};
use maos_postgres::registry::PgRegistry;
use maos_postgres::track::PgTracker;
use maos_postgres::{BackendUrl, Pg};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(a.len() == 3, "usage: pg_agent URL NAMESPACE AGENT");
    let url = BackendUrl::parse(&a[0])?;
    let mut options = maos_postgres::Options::default()
        .heartbeat(Duration::from_millis(200))
        .reconnect_for(Duration::from_secs(120));
    if let Ok(ms) = std::env::var("PG_AGENT_STUCK_AFTER_MS") {
        options = options.stuck_after(Duration::from_millis(ms.parse()?));
    }
    let pg = Pg::connect_with(&url, &a[1], options)?;
    let me = AgentId::new(&a[2])?;
    PgRegistry::new(&pg).register(Registration::new(me.clone()))?;
    pg.on_session_lost(|epoch| say(&format!("lost {epoch}")))?;
    say(&format!("ready {}", pg.session_key()?));
    let guards: Arc<Mutex<HashMap<String, PgGuard>>> = Arc::default();
    let tracker = PgTracker::new(&pg).agent(me.clone());
    let mut stuck: Option<postgres::Client> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        let r: anyhow::Result<String> = (|| match parts.as_slice() {
            ["send", ch, n] => {
                let ch = PgChannel::open(&pg, ChannelName::new(*ch)?);
                let n: u64 = n.parse()?;
                for i in 0..n {
                    let r = ch.send(&Message::new(
                        me.clone(),
                        Recipients::All,
                        (me.to_string(), i),
                    ))?;
                    say(&format!("ack {i} {}", r.position));
                }
                Ok(format!("sent {n}"))
            }
            ["recv", ch, after] => {
                let ch = PgChannel::open(&pg, ChannelName::new(*ch)?);
                let b = ch.receive::<serde_json::Value>(after.parse()?, &Filter::Everything)?;
                let v: Vec<_> = b
                    .messages
                    .iter()
                    .map(|d| serde_json::json!([d.position, d.message.payload]))
                    .collect();
                Ok(serde_json::to_string(&v)?)
            }
            ["lock", res] => {
                let res = ResourceName::new(*res)?;
                let pg = pg.clone();
                let me = me.clone();
                let guards = guards.clone();
                std::thread::spawn(move || {
                    match PgLock::new(&pg, res.clone())
                        .agent(me)
                        .wait(Duration::from_secs(120))
                        .acquire("test")
                    {
                        Ok(g) => {
                            let t = g.token();
                            if let Ok(mut m) = guards.lock() {
                                m.insert(res.to_string(), g);
                            }
                            say(&format!("granted {res} {t}"));
                        }
                        Err(e) => say(&format!("failed {res} {e}")),
                    }
                });
                Ok("queued".into())
            }
            ["try", res] => {
                let res = ResourceName::new(*res)?;
                match PgLock::new(&pg, res.clone())
                    .agent(me.clone())
                    .try_acquire("test")?
                {
                    Some(g) => {
                        let t = g.token();
                        guards
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .insert(res.to_string(), g);
                        Ok(t.to_string())
                    }
                    None => Ok("busy".into()),
                }
            }
            ["release", res] => {
                let g = guards
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .remove(*res)
                    .ok_or_else(|| anyhow::anyhow!("not held"))?;
                g.release()?;
                Ok("released".into())
            }
            ["count", res, n] => {
                let res = ResourceName::new(*res)?;
                let n: u64 = n.parse()?;
                let mut client = maos_postgres_client(&a[0])?;
                for _ in 0..n {
                    let g = PgLock::new(&pg, res.clone())
                        .agent(me.clone())
                        .wait(Duration::from_secs(120))
                        .acquire("count")?;
                    // Not atomic on purpose: only the lock keeps two of these apart.
                    let v: i64 = client
                        .query_one("SELECT v FROM test_counter WHERE ns = $1", &[&a[1]])?
                        .get(0);
                    client.execute(
                        "UPDATE test_counter SET v = $2 WHERE ns = $1",
                        &[&a[1], &(v + 1)],
                    )?;
                    g.release()?;
                    say("inc");
                }
                Ok("counted".into())
            }
            ["create", n] => {
                let n: usize = n.parse()?;
                let tasks: Vec<_> = (0..n)
                    .map(|i| maos_coordination::Task::new(format!("t{i}")))
                    .collect();
                tracker.create_tasks(&tasks)?;
                Ok(format!("created {n}"))
            }
            ["claim"] => {
                let mut n = 0;
                while let Some(t) = tracker.claim(&me)? {
                    say(&format!("claimed {}", t.id));
                    tracker.complete(&t.id, None)?;
                    n += 1;
                }
                Ok(format!("claimed {n}"))
            }
            ["hold-claim"] => match tracker.claim(&me)? {
                Some(t) => Ok(format!("holding {}", t.id)),
                None => Ok("none".into()),
            },
            ["detect"] => {
                let found = PgDeadlockDetector::new(&pg)
                    .resolve(true)
                    .broadcast(me.clone())
                    .check()?;
                Ok(serde_json::to_string(&found)?)
            }
            ["hold-guard", what @ ("locks" | "tasks")] => {
                let mut c = pg.client_config().connect(postgres::NoTls)?;
                c.batch_execute(&format!(
                    "BEGIN; SELECT counter FROM maos.guards WHERE what = '{what}' AND ns =
                         (SELECT id FROM maos.namespaces WHERE name = '{}') FOR UPDATE",
                    a[1].replace('\'', "''")
                ))?;
                stuck = Some(c);
                Ok("holding".into())
            }
            _ => anyhow::bail!("unknown command {line:?}"),
        })();
        match r {
            Ok(s) => say(&format!("ok {s}")),
            Err(e) => say(&format!("err {e:#}")),
        }
    }
    Ok(())
}

/// A plain client for the test's own counter row (outside maos's tables).
fn maos_postgres_client(url: &str) -> anyhow::Result<postgres::Client> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)?;
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS test_counter (ns text PRIMARY KEY, v bigint NOT NULL)",
    )?;
    Ok(c)
}
