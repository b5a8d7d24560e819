//! A throwaway PostgreSQL cluster for tests, benchmarks and demos: `initdb` in a temporary
//! directory (as the `postgres` user when running as root, since `initdb` refuses root),
//! trust authentication, a free port on 127.0.0.1 and a unix socket directory; stopped with
//! `pg_ctl stop -m immediate` and removed when dropped, or when the process that started it
//! exits (a watchdog process stops it then, even after SIGKILL).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use crate::{Error, Result};

/// Environment variable naming the directory of the PostgreSQL binaries (`initdb`,
/// `pg_ctl`, `postgres`); default: the newest `/usr/lib/postgresql/<v>/bin`, else the
/// directory `pg_config --bindir` names.
pub const PG_BIN_ENV: &str = "MAOS_PG_BIN";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct TestServer {
    dir: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    bin: PathBuf,
    port: u16,
    listen: String,
    extra: Vec<String>,
    as_postgres: bool,
    netns: Option<String>,
    watchdog: Mutex<Option<Child>>,
}

fn server_error(reason: impl Into<String>) -> Error {
    Error::Server {
        reason: reason.into(),
    }
}

/// The directory of the PostgreSQL server binaries.
///
/// # Errors
/// [`Error::Server`] saying how to install them when none is found.
pub fn find_binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
        return Err(server_error(format!(
            "{PG_BIN_ENV}={} has no initdb",
            dir.display()
        )));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    Err(server_error(
        "no PostgreSQL server binaries found (initdb, pg_ctl): install them (Debian: apt-get install -y postgresql) or set MAOS_PG_BIN to their directory",
    ))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| server_error(format!("cannot find a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| server_error(format!("cannot find a free port: {e}")))
}

/// How to start a [`TestServer`].
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until started"]
pub struct ServerBuilder {
    listen: Option<String>,
    settings: Vec<String>,
    netns: Option<String>,
    trust: Vec<String>,
}

impl ServerBuilder {
    /// Listens on `addresses` (PostgreSQL's `listen_addresses`) instead of `127.0.0.1`.
    pub fn listen(mut self, addresses: impl Into<String>) -> Self {
        self.listen = Some(addresses.into());
        self
    }

    /// Runs the server inside network namespace `name` (`ip netns exec`; needs root).
    pub fn netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Lets clients from `cidr` (e.g. `10.0.0.0/24`) connect without a password (the
    /// cluster trusts loopback and the unix socket only, by default).
    pub fn trust(mut self, cidr: impl Into<String>) -> Self {
        self.trust.push(cidr.into());
        self
    }

    /// Adds a server setting (`name=value`, passed as `-c name=value`).
    pub fn setting(mut self, s: impl Into<String>) -> Self {
        self.settings.push(s.into());
        self
    }

    /// Creates and starts the cluster.
    ///
    /// # Errors
    /// [`Error::Server`] naming what failed (with the server log's tail).
    pub fn start(self) -> Result<TestServer> {
        let bin = find_binaries()?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "maos-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| server_error(format!("cannot create {}: {e}", dir.display())))?;
        let data = dir.join("data");
        let socket_dir = dir.join("sock");
        for d in [&data, &socket_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| server_error(format!("cannot create {}: {e}", d.display())))?;
        }
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700));
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .arg(&socket_dir)
                .status()
                .map_err(|e| server_error(format!("chown: {e}")))?;
            if !status.success() {
                return Err(server_error(
                    "cannot give the data directory to the postgres user (is there one? the Debian package creates it)",
                ));
            }
        }
        let server = TestServer {
            dir,
            data,
            socket_dir,
            bin,
            port: free_port()?,
            listen: self.listen.unwrap_or_else(|| "127.0.0.1".into()),
            extra: self.settings,
            as_postgres,
            netns: self.netns,
            watchdog: Mutex::new(None),
        };
        let out = server
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&server.data)
            .output()
            .map_err(|e| server_error(format!("initdb: {e}")))?;
        if !out.status.success() {
            return Err(server_error(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        if !self.trust.is_empty() {
            let hba = server.data.join("pg_hba.conf");
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&hba)
                .map_err(|e| server_error(format!("{}: {e}", hba.display())))?;
            for cidr in &self.trust {
                writeln!(f, "host all all {cidr} trust")
                    .map_err(|e| server_error(format!("{}: {e}", hba.display())))?;
            }
        }
        server.start_watchdog()?;
        server.pg_start()?;
        Ok(server)
    }
}

impl TestServer {
    /// Starts a cluster listening on 127.0.0.1 (see [`ServerBuilder`] for more).
    ///
    /// # Errors
    /// [`Error::Server`] when the binaries are missing or the server does not start.
    pub fn start() -> Result<Self> {
        ServerBuilder::default().start()
    }

    /// A builder.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if let Some(ns) = self.netns.as_ref().filter(|_| tool == "pg_ctl") {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]);
            if self.as_postgres {
                c.args(["runuser", "-u", "postgres", "--"]);
            }
            c.arg(exe);
            return c;
        }
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// The URL of the `postgres` database over TCP.
    pub fn url(&self) -> String {
        let host = self.listen.split(',').next().unwrap_or("127.0.0.1").trim();
        let host = if host == "*" || host == "0.0.0.0" {
            "127.0.0.1"
        } else {
            host
        };
        format!("postgres://postgres@{host}:{}/postgres", self.port)
    }

    /// The URL of the `postgres` database over the unix socket.
    pub fn socket_url(&self) -> String {
        format!(
            "postgres://postgres@%2F{}:{}/postgres",
            self.socket_dir
                .display()
                .to_string()
                .trim_start_matches('/')
                .replace('/', "%2F"),
            self.port
        )
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    fn pg_start(&self) -> Result<()> {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses='{}' -c max_connections=300 -c shared_buffers=32MB",
            self.port,
            self.socket_dir.display(),
            self.listen
        );
        for s in &self.extra {
            opts.push_str(" -c ");
            opts.push_str(s);
        }
        let log = self.log_path();
        let out = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| server_error(format!("pg_ctl start: {e}")))?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(server_error(format!(
                "pg_ctl start failed: {}{}\nserver log:\n{tail}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.socket_dir.join("server.log")
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`: like a crash; the next
    /// start replays the write-ahead log).
    ///
    /// # Errors
    /// [`Error::Server`].
    pub fn stop(&self) -> Result<()> {
        let out = self
            .command("pg_ctl")
            .args(["-w", "-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output()
            .map_err(|e| server_error(format!("pg_ctl stop: {e}")))?;
        if !out.status.success() {
            return Err(server_error(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Starts the server again after [`TestServer::stop`] (same port, same data).
    ///
    /// # Errors
    /// [`Error::Server`].
    pub fn restart(&self) -> Result<()> {
        self.pg_start()
    }

    /// A watchdog process that stops the server and removes its directory when this
    /// process exits, however it exits: it waits for end-of-file on a pipe whose only writer
    /// is this process.
    fn start_watchdog(&self) -> Result<()> {
        let script = format!(
            "cat >/dev/null; {ctl} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            ctl = if self.as_postgres {
                format!(
                    "runuser -u postgres -- '{}'",
                    self.bin.join("pg_ctl").display()
                )
            } else {
                format!("'{}'", self.bin.join("pg_ctl").display())
            },
            data = self.data.display(),
            dir = self.dir.display(),
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| server_error(format!("cannot start the watchdog: {e}")))?;
        if let Ok(mut w) = self.watchdog.lock() {
            *w = Some(child);
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(mut w) = self.watchdog.lock()
            && let Some(mut child) = w.take()
        {
            // Closing the pipe makes the watchdog stop the server and clean up.
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.flush();
            }
            let _ = child.wait();
        }
    }
}

/// Environment variable naming a server the tests use instead of starting their own.
pub const TEST_URL_ENV: &str = "MAOS_TEST_PG_URL";

static SHARED: std::sync::OnceLock<std::result::Result<(Option<TestServer>, String), String>> =
    std::sync::OnceLock::new();

/// The URL of the one throwaway server of this process (started on first use and stopped
/// when the process exits), or of `MAOS_TEST_PG_URL` when set. Tests give every case a
/// namespace of its own ([`unique_namespace`]), so they run in parallel on one server.
///
/// # Errors
/// [`Error::Server`] when no server can be started: PostgreSQL tests fail, never skip.
pub fn shared_url() -> Result<String> {
    let r = SHARED.get_or_init(|| {
        if let Ok(url) = std::env::var(TEST_URL_ENV) {
            return Ok((None, url));
        }
        TestServer::start()
            .map(|s| {
                let url = s.url();
                (Some(s), url)
            })
            .map_err(|e| match e {
                Error::Server { reason } => reason,
                other => other.to_string(),
            })
    });
    match r {
        Ok((_, url)) => Ok(url.clone()),
        Err(e) => Err(server_error(e.clone())),
    }
}

/// A namespace name no other test uses: `test-<prefix>-<random>`.
pub fn unique_namespace(prefix: &str) -> String {
    format!(
        "test-{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A backend on the shared test server ([`shared_url`]) in a namespace of its own.
///
/// # Errors
/// [`Error::Server`] when no server can be started; connection errors.
pub fn test_backend(prefix: &str) -> Result<crate::Pg> {
    let url = crate::BackendUrl::parse(&shared_url()?)?;
    crate::Pg::connect(&url, &unique_namespace(prefix))
}

/// Polls `cond` (yielding between polls) until it holds; panics naming the timeout
/// otherwise. For tests that wait for the server to notice something (a session ending).
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached within {timeout:?}"
        );
        std::thread::yield_now();
    }
}
