//! Connections: a small pool of clients with cached statements, retries across a lost
//! connection or a server restart, and the liveness session of this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement, Transaction};

use crate::config::BackendUrl;
use crate::{Error, Result, schema};

/// The high 32 bits of every liveness key: `maos` in ASCII. Advisory locks of other
/// applications with a different high word never collide with maos's.
pub const KEY_TAG: i64 = 0x6D61_6F73;

/// Settings of a [`Pg`] backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// How long an operation keeps retrying across a lost connection or a restarting server
    /// before it fails with [`Error::ConnectionLost`] (default 30 s).
    pub reconnect_for: Duration,
    /// How often the liveness session checks its connection (default 1 s): the longest a
    /// process goes without noticing that its session, and so its locks, are gone.
    pub heartbeat: Duration,
    /// How often a lock waiter looks again without a notification (default 500 ms): the
    /// longest it takes to notice a holder whose session ended (a killed process).
    pub lock_fallback: Duration,
    /// How often a channel watcher reads without a notification (default 2 s).
    pub channel_fallback: Duration,
    /// How long an agent anchored on a session must have had no session before it counts
    /// as dead (default 10 s): a server restart or a network blip, after which the agent's
    /// process reconnects and re-anchors it, is not a death.
    pub dead_grace: Duration,
    /// How long one of this process's sessions may sit idle inside a transaction before the
    /// server ends it (default [`crate::IDLE_IN_TRANSACTION`], 10 s): the longest a process
    /// stopped in the middle of a change (SIGSTOP, a suspended laptop) holds rows that
    /// everyone else needs. Its next statement then finds the connection gone and retries.
    pub stuck_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reconnect_for: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            lock_fallback: Duration::from_millis(500),
            channel_fallback: Duration::from_secs(2),
            dead_grace: Duration::from_secs(10),
            stuck_after: crate::config::IDLE_IN_TRANSACTION,
        }
    }
}

impl Options {
    /// Sets [`Options::reconnect_for`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn reconnect_for(mut self, d: Duration) -> Self {
        self.reconnect_for = d;
        self
    }
    /// Sets [`Options::heartbeat`] (at least 10 ms).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d.max(Duration::from_millis(10));
        self
    }
    /// Sets [`Options::stuck_after`] (at least 100 ms).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn stuck_after(mut self, d: Duration) -> Self {
        self.stuck_after = d.max(Duration::from_millis(100));
        self
    }
    /// Sets [`Options::dead_grace`].
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn dead_grace(mut self, d: Duration) -> Self {
        self.dead_grace = d;
        self
    }
    /// Sets [`Options::lock_fallback`] (at least 10 ms).
    #[must_use = "returns the changed value; the original is consumed"]
    pub fn lock_fallback(mut self, d: Duration) -> Self {
        self.lock_fallback = d.max(Duration::from_millis(10));
        self
    }
}

/// A client and its prepared statements.
pub(crate) struct Conn {
    client: Client,
    stmts: HashMap<&'static str, Statement>,
    used: Instant,
}

fn prep(
    stmts: &mut HashMap<&'static str, Statement>,
    client: &mut impl postgres::GenericClient,
    what: &'static str,
    sql: &'static str,
) -> Result<Statement> {
    if let Some(s) = stmts.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(sql).map_err(|e| Error::pg(what, e))?;
    stmts.insert(sql, s.clone());
    Ok(s)
}

/// Runs statements with cached preparation.
pub(crate) trait Exec {
    /// Rows of `sql`.
    fn query(
        &mut self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>>;

    /// The one row of `sql`.
    fn one(
        &mut self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        let mut rows = self.query(what, sql, params)?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            n => Err(Error::Corrupt {
                what: what.to_string(),
                reason: format!("expected one row, got {n}"),
            }),
        }
    }

    /// At most one row of `sql`.
    fn opt(
        &mut self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let mut rows = self.query(what, sql, params)?;
        Ok(if rows.is_empty() {
            None
        } else {
            Some(rows.remove(0))
        })
    }

    /// Runs `sql`; the number of rows it changed.
    fn exec(
        &mut self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64>;
}

impl Exec for Conn {
    fn query(
        &mut self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let s = prep(&mut self.stmts, &mut self.client, what, sql)?;
        self.client
            .query(&s, params)
            .map_err(|e| Error::pg(what, e))
    }

    fn exec(
        &mut self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let s = prep(&mut self.stmts, &mut self.client, what, sql)?;
        self.client
            .execute(&s, params)
            .map_err(|e| Error::pg(what, e))
    }
}

/// A transaction on a [`Conn`].
pub(crate) struct Tx<'a> {
    t: Transaction<'a>,
    stmts: &'a mut HashMap<&'static str, Statement>,
}

impl Exec for Tx<'_> {
    fn query(
        &mut self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let s = prep(self.stmts, &mut self.t, what, sql)?;
        self.t.query(&s, params).map_err(|e| Error::pg(what, e))
    }

    fn exec(
        &mut self,
        what: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let s = prep(self.stmts, &mut self.t, what, sql)?;
        self.t.execute(&s, params).map_err(|e| Error::pg(what, e))
    }
}

impl Tx<'_> {
    /// Runs several statements (a migration file) without parameters.
    pub(crate) fn batch(&mut self, sql: &str) -> Result<()> {
        self.t
            .batch_execute(sql)
            .map_err(|e| Error::pg("apply a migration", e))
    }

    /// Lets this transaction commit without waiting for the write-ahead log to reach the
    /// disk (`synchronous_commit = off`): for state that matters only while sessions last.
    pub(crate) fn relaxed(&mut self) -> Result<()> {
        self.t
            .batch_execute("SET LOCAL synchronous_commit = off")
            .map_err(|e| Error::pg("relax the commit", e))
    }

    /// [`Tx::relaxed`], and statements of this transaction wait at most `wait_ms` for a row
    /// another session holds (`lock_timeout`; then [`Error::Busy`]): one round trip.
    pub(crate) fn relaxed_within(&mut self, wait_ms: u64) -> Result<()> {
        self.t
            .batch_execute(&format!(
                "SET LOCAL synchronous_commit = off; SET LOCAL lock_timeout = {wait_ms}"
            ))
            .map_err(|e| Error::pg("relax the commit", e))
    }

    /// Statements of this transaction wait at most `wait` for a row another session holds
    /// (`lock_timeout`; then [`Error::Busy`]).
    pub(crate) fn wait_at_most(&mut self, wait: Duration) -> Result<()> {
        self.t
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = {}",
                wait.as_millis().max(1)
            ))
            .map_err(|e| Error::pg("bound the wait for rows", e))
    }

    /// Sends `NOTIFY channel, payload` (delivered when the transaction commits).
    pub(crate) fn notify(&mut self, channel: &str, payload: &str) -> Result<()> {
        self.exec("notify", "SELECT pg_notify($1, $2)", &[&channel, &payload])
            .map(|_| ())
    }
}

impl Conn {
    /// Runs `f` in a transaction, committed when it returns `Ok`.
    pub(crate) fn tx<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let t = self.client.transaction().map_err(|e| Error::pg(what, e))?;
        let mut tx = Tx {
            t,
            stmts: &mut self.stmts,
        };
        let out = f(&mut tx)?;
        tx.t.commit().map_err(|e| Error::pg(what, e))?;
        Ok(out)
    }

    /// The client, for what the cached statements do not cover (LISTEN, notifications).
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// What [`Pg::on_session_lost`] registers.
type LostCallback = Arc<dyn Fn(u64) + Send + Sync>;

/// The liveness session of a process: one connection that holds the session-level advisory
/// lock of its key for as long as it lasts.
pub(crate) struct Session {
    state: Mutex<SessionState>,
    changed: Condvar,
    callbacks: Mutex<Vec<LostCallback>>,
    /// To the session thread: a message asks it to check its connection now; dropping the
    /// sender (with the session) stops it.
    wake: Mutex<mpsc::Sender<()>>,
}

#[derive(Debug, Clone, Copy)]
struct SessionState {
    key: i64,
    /// Incremented every time the session is lost: whatever was held under an older epoch
    /// may be gone.
    epoch: u64,
    up: bool,
}

impl Session {
    /// The current key and epoch, waiting up to `wait` for a lost session to come back.
    pub(crate) fn current(&self, wait: Duration) -> Result<(i64, u64)> {
        self.wait_until(wait, |_| true).map_err(|()| Error::Invalid {
            what: "session",
            reason: "the liveness session to the maos server is down and did not come back: check the server and the network".into(),
        })
    }

    /// The session after `epoch`: asks the session thread to check its connection now
    /// (the caller saw the session `key` of `epoch` dead on the server, which the thread
    /// notices only at its next heartbeat) and waits up to `wait` for the new session.
    pub(crate) fn after(&self, epoch: u64, wait: Duration) -> Result<(i64, u64)> {
        let _ = lock(&self.wake).send(());
        self.wait_until(wait, |st| st.epoch > epoch)
            .map_err(|()| Error::Invalid {
                what: "session",
                reason: "the liveness session to the maos server ended and no new one started in time: check the server and the network".into(),
            })
    }

    /// Waits up to `wait` until the session is up and `ok` holds; its key and epoch then.
    fn wait_until(
        &self,
        wait: Duration,
        ok: impl Fn(&SessionState) -> bool,
    ) -> std::result::Result<(i64, u64), ()> {
        let deadline = Instant::now() + wait;
        let mut st = lock(&self.state);
        while !st.up || !ok(&st) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            st = match self.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        Ok((st.key, st.epoch))
    }

    /// The current epoch (changes when the session is lost).
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.state).epoch
    }

    /// The key of the session now (whether up or not).
    pub(crate) fn key(&self) -> i64 {
        lock(&self.state).key
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

pub(crate) struct Inner {
    pub(crate) url: BackendUrl,
    config: postgres::Config,
    pub(crate) ns: i64,
    pub(crate) namespace: String,
    pool: Mutex<Vec<Conn>>,
    session: Mutex<Option<Arc<Session>>>,
    hub: Mutex<Option<Arc<crate::hub::Hub>>>,
    /// Agents anchored on this process's session: re-anchored on every new session.
    pub(crate) anchored: Mutex<Vec<String>>,
    pub(crate) options: Options,
}

/// A connection to a maos server, bound to one namespace. Cheap to clone; clones share the
/// pool and the liveness session.
///
/// Every operation runs on a pooled client; one that fails because the connection broke (a
/// server restart, a network cut) is retried on a new connection for up to
/// [`Options::reconnect_for`]. The liveness session, started by the first lock, wait or
/// agent anchor, is a separate connection holding an advisory lock: the process's locks
/// are alive while it lasts. When it is lost, [`Pg::on_session_lost`] callbacks run,
/// guards report [`PgGuard::is_lost`](crate::lock::PgGuard::is_lost), and a new session (with
/// a new key) replaces it.
#[derive(Clone)]
pub struct Pg {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("target", &self.inner.url.target())
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

impl Pg {
    /// Connects to `url`, creates or migrates the maos schema, and opens (creating if needed)
    /// `namespace`.
    ///
    /// # Errors
    /// [`Error::Connect`] (fails fast, no retry), [`Error::SchemaTooNew`],
    /// [`Error::Invalid`] for a bad namespace name.
    pub fn connect(url: &BackendUrl, namespace: &str) -> Result<Self> {
        Self::connect_with(url, namespace, Options::default())
    }

    /// [`Pg::connect`] with `options`.
    pub fn connect_with(url: &BackendUrl, namespace: &str, options: Options) -> Result<Self> {
        crate::config::check_namespace(namespace)?;
        let mut config = url.client_config();
        config.options(&crate::config::session_options(options.stuck_after));
        let mut conn = open(&config, url)?;
        schema::migrate(&mut conn)?;
        let ns = schema::namespace(&mut conn, namespace)?;
        tracing::debug!(target_db = %url.target(), namespace, ns, "connected");
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.clone(),
                config,
                ns,
                namespace: namespace.to_string(),
                pool: Mutex::new(vec![conn]),
                session: Mutex::new(None),
                anchored: Mutex::new(Vec::new()),
                hub: Mutex::new(None),
                options,
            }),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The server, as `host:port/database`.
    pub fn target(&self) -> String {
        self.inner.url.target()
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    fn checkout(&self) -> Result<Conn> {
        loop {
            let c = lock(&self.inner.pool).pop();
            match c {
                Some(c) if c.client.is_closed() => continue,
                Some(c) => return Ok(c),
                None => return open(&self.inner.config, &self.inner.url),
            }
        }
    }

    fn checkin(&self, c: Conn) {
        if !c.client.is_closed() {
            let mut pool = lock(&self.inner.pool);
            if pool.len() < 8 {
                pool.push(c);
            }
        }
    }

    /// Runs `op` on a pooled connection, retrying on a new one while the connection is lost
    /// (up to [`Options::reconnect_for`]). `op` must be safe to run again after a failure
    /// whose outcome is unknown (every operation of this crate is).
    pub(crate) fn run<T>(&self, mut op: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        let deadline = Instant::now() + self.inner.options.reconnect_for;
        let mut delay = Duration::from_millis(20);
        loop {
            let started = Instant::now();
            let res = self.checkout().and_then(|mut c| {
                // A connection idle for a while may have been cut without our noticing:
                // check it before relying on it (cheap, and only after idle time).
                if c.used.elapsed() > Duration::from_secs(5)
                    && c.client.is_valid(Duration::from_secs(5)).is_err()
                {
                    return Err(Error::Invalid {
                        what: "connection",
                        reason: "stale".into(),
                    });
                }
                let r = op(&mut c);
                c.used = Instant::now();
                self.checkin(c);
                r
            });
            match res {
                Err(Error::Query { what, source })
                    if source.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    return Err(self.busy(what, started.elapsed()));
                }
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "connection lost; retrying on a new one");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(Error::Invalid {
                    what: "connection", ..
                }) => {
                    // Stale pooled connection: retry at once.
                    continue;
                }
                other => return other,
            }
        }
    }

    /// The error of an operation that gave up waiting for rows another session holds,
    /// naming the sessions that sit idle in a transaction (the stopped processes).
    fn busy(&self, what: &'static str, waited: Duration) -> Error {
        let suspects = self
            .checkout()
            .and_then(|mut c| {
                let rows = c.query(
                    "find sessions idle in a transaction",
                    "SELECT pid, application_name, coalesce(host(client_addr), 'local socket'),
                            extract(epoch FROM clock_timestamp() - state_change)::bigint
                       FROM pg_catalog.pg_stat_activity
                      WHERE datname = current_database() AND pid <> pg_backend_pid()
                        AND state LIKE 'idle in transaction%'
                      ORDER BY state_change LIMIT 5",
                    &[],
                )?;
                self.checkin(c);
                Ok(rows)
            })
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        format!(
                            "server pid {} ({}, from {}) idle in a transaction for {} s",
                            r.get::<_, i32>(0),
                            maos_core::excerpt(&r.get::<_, String>(1), 63),
                            r.get::<_, String>(2),
                            r.get::<_, i64>(3)
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Error::Busy {
            what,
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            suspects: if suspects.is_empty() {
                String::new()
            } else {
                format!(" ({})", suspects.join("; "))
            },
            idle_s: self.inner.options.stuck_after.as_secs(),
        }
    }

    /// A connection of its own (for LISTEN), with the same retries as [`Pg::run`].
    pub(crate) fn dedicated(&self) -> Result<Conn> {
        let deadline = Instant::now() + self.inner.options.reconnect_for;
        loop {
            match open(&self.inner.config, &self.inner.url) {
                Err(e) if retryable(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// The liveness session of this process (started on first use).
    pub(crate) fn session(&self) -> Result<Arc<Session>> {
        let mut slot = lock(&self.inner.session);
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = start_session(self)?;
        *slot = Some(s.clone());
        Ok(s)
    }

    /// The notification hub of this process (started on first use).
    pub(crate) fn hub(&self) -> Result<Arc<crate::hub::Hub>> {
        let mut slot = match self.inner.hub.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        let h = crate::hub::Hub::start(self)?;
        *slot = Some(h.clone());
        Ok(h)
    }

    /// The client configuration this backend's connections use (URL, password, application
    /// name, session options, keepalives): for a tool that must look like one of them to the
    /// server (a diagnostic, a fault test).
    pub fn client_config(&self) -> postgres::Config {
        self.inner.config.clone()
    }

    /// The key of this process's liveness session (starting it if needed): whoever wants to
    /// know whether this process is alive checks `maos.session_alive(key)`.
    pub fn session_key(&self) -> Result<i64> {
        Ok(self.session()?.current(self.inner.options.reconnect_for)?.0)
    }

    /// Calls `f` (with the new epoch) every time the liveness session is lost: every lock
    /// this process held may be gone (other agents may hold them now), and every agent it
    /// anchored may count as dead. The session reconnects by itself.
    pub fn on_session_lost(&self, f: impl Fn(u64) + Send + Sync + 'static) -> Result<()> {
        let s = self.session()?;
        lock(&s.callbacks).push(Arc::new(f));
        Ok(())
    }

    /// Every namespace on the server, by name.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        Ok(self
            .run(schema::namespaces)?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// The server's clock, in ms since the Unix epoch.
    pub fn server_now_ms(&self) -> Result<u64> {
        self.run(|c| {
            let row = c.one("read the server clock", "SELECT maos.now_ms()", &[])?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
    }

    /// Whether the liveness session `key` (of any process, on any machine) is alive.
    pub fn session_alive(&self, key: i64) -> Result<bool> {
        self.run(|c| {
            let row = c.one("check a session", "SELECT maos.session_alive($1)", &[&key])?;
            Ok(row.get(0))
        })
    }
}

fn retryable(e: &Error) -> bool {
    match e {
        Error::ConnectionLost { .. } => true,
        Error::Connect { source, .. } => crate::error::is_connection_error(source),
        _ => false,
    }
}

fn open(config: &postgres::Config, url: &BackendUrl) -> Result<Conn> {
    let client = config.connect(NoTls).map_err(|source| Error::Connect {
        target: url.target(),
        source,
    })?;
    Ok(Conn {
        client,
        stmts: HashMap::new(),
        used: Instant::now(),
    })
}

/// Opens a session connection: a fresh key whose advisory lock it takes.
fn open_session(pg: &Pg) -> Result<(Conn, i64)> {
    let mut c = pg.dedicated()?;
    let host = maos_core::ProcessIdentity::current().host;
    let pid = i64::from(std::process::id());
    loop {
        let row = c.one(
            "take a session key",
            "SELECT ($1::bigint << 32) | nextval('maos.session_keys')",
            &[&KEY_TAG],
        )?;
        let key: i64 = row.get(0);
        let got: bool = c
            .one(
                "lock the session key",
                "SELECT pg_try_advisory_lock($1)",
                &[&key],
            )?
            .get(0);
        if !got {
            continue; // a key still held after the sequence wrapped: take the next one
        }
        c.exec(
            "record the session",
            "INSERT INTO maos.sessions (key, ns, host, pid, backend_pid) VALUES ($1, $2, $3, $4, pg_backend_pid())
             ON CONFLICT (key) DO UPDATE SET ns = EXCLUDED.ns, host = EXCLUDED.host, pid = EXCLUDED.pid,
                 backend_pid = EXCLUDED.backend_pid, started_at = clock_timestamp()",
            &[&key, &pg.inner.ns, &host, &pid],
        )?;
        let anchored = lock(&pg.inner.anchored).clone();
        if !anchored.is_empty() {
            c.exec(
                "re-anchor agents",
                "UPDATE maos.agents SET session_key = $2, dead_since = NULL WHERE ns = $1 AND id = ANY($3)",
                &[&pg.inner.ns, &key, &anchored],
            )?;
        }
        tracing::debug!(key, "liveness session started");
        return Ok((c, key));
    }
}

fn start_session(pg: &Pg) -> Result<Arc<Session>> {
    let (conn, key) = open_session(pg)?;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let session = Arc::new(Session {
        state: Mutex::new(SessionState {
            key,
            epoch: 1,
            up: true,
        }),
        changed: Condvar::new(),
        callbacks: Mutex::new(Vec::new()),
        wake: Mutex::new(stop_tx),
    });
    let weak = Arc::downgrade(&session);
    // The thread holds only a weak reference to the backend's state, so dropping the last
    // `Pg` ends the session (its connection closes, its advisory lock goes).
    let pg_weak = Arc::downgrade(&pg.inner);
    let every = pg.inner.options.heartbeat;
    std::thread::Builder::new()
        .name("maos-pg-session".into())
        .spawn(move || session_thread(conn, stop_rx, weak, pg_weak, every))
        .map_err(|e| Error::Invalid {
            what: "session",
            reason: format!("cannot start the session thread: {e}"),
        })?;
    Ok(session)
}

fn session_thread(
    mut conn: Conn,
    stop: mpsc::Receiver<()>,
    session: std::sync::Weak<Session>,
    pg: std::sync::Weak<Inner>,
    every: Duration,
) {
    let stopping = AtomicBool::new(false);
    loop {
        match stop.recv_timeout(every) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {} // asked to check now, or time
            // The backend is gone: closing the connection ends the session.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if conn
            .client
            .is_valid(every.max(Duration::from_secs(2)))
            .is_ok()
        {
            continue;
        }
        let Some(s) = session.upgrade() else { return };
        let epoch = {
            let mut st = lock(&s.state);
            st.up = false;
            st.epoch += 1;
            st.epoch
        };
        tracing::warn!(
            epoch,
            "liveness session to the maos server lost: locks of this process may be gone"
        );
        let callbacks: Vec<_> = lock(&s.callbacks).clone();
        for cb in callbacks {
            cb(epoch);
        }
        drop(s);
        // Reconnect with a new key until it works or the backend is dropped.
        let mut delay = Duration::from_millis(50);
        loop {
            if stopping.load(Ordering::Relaxed) {
                return;
            }
            let Some(inner) = pg.upgrade() else { return };
            let res = open_session(&Pg { inner });
            match res {
                Ok((c, key)) => {
                    conn = c;
                    let Some(s) = session.upgrade() else { return };
                    let mut st = lock(&s.state);
                    st.key = key;
                    st.up = true;
                    s.changed.notify_all();
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "session reconnect failed");
                    match stop.recv_timeout(delay) {
                        Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            stopping.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}
