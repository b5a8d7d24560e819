//! The backend URL, the password (never stored: from the environment or a pgpass file) and
//! the namespace a workspace lives in.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// Environment variable that overrides the backend recorded in `.maos/config.json`.
pub const BACKEND_ENV: &str = "MAOS_BACKEND";
/// Environment variable that overrides the namespace.
pub const NAMESPACE_ENV: &str = "MAOS_NAMESPACE";

/// Longest namespace name.
pub const MAX_NAMESPACE_LEN: usize = 128;

/// A `postgres://` URL as maos stores it: without a password.
#[derive(Debug, Clone)]
pub struct BackendUrl {
    url: String,
    config: postgres::Config,
}

impl BackendUrl {
    /// Parses a `postgres://` (or `postgresql://`) URL. A password in it is refused: it would
    /// end up in `.maos/config.json` and in process listings; give it in `PGPASSWORD` or a
    /// pgpass file instead.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad(
                "expected a postgres://user@host:port/database URL (or `file` for the file backend)",
            ));
        }
        let config = postgres::Config::from_str(url).map_err(|e| bad(&e.to_string()))?;
        if config.get_password().is_some() {
            return Err(bad(
                "it contains a password; maos never stores one: remove it from the URL and set PGPASSWORD or add it to ~/.pgpass",
            ));
        }
        if config.get_hosts().is_empty() {
            return Err(bad("it names no host"));
        }
        Ok(Self {
            url: url.to_string(),
            config,
        })
    }

    /// The URL as given (it has no password).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// A client configuration with the password filled in (from `PGPASSWORD`, else the
    /// pgpass file), maos's application name (`maos pid <pid> on <host>`), timeouts (the
    /// session options: [`ROW_WAIT`], [`IDLE_IN_TRANSACTION`]) and TCP keepalives: what
    /// maos's own connections use, for tools that must look like one to the server.
    pub fn client_config(&self) -> postgres::Config {
        let mut c = self.config.clone();
        if c.get_user().is_none() {
            c.user(&std::env::var("PGUSER").unwrap_or_else(|_| "postgres".to_string()));
        }
        if c.get_dbname().is_none() {
            c.dbname(&std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".to_string()));
        }
        if let Some(pw) = password_for(&c) {
            c.password(pw);
        }
        c.application_name(&application_name())
            .options(&session_options(IDLE_IN_TRANSACTION))
            .connect_timeout(Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(5);
        c
    }

    /// `host:port/database`, for messages.
    pub fn target(&self) -> String {
        let c = self.client_config();
        let host = match c.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "?".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}/{}", c.get_dbname().unwrap_or("postgres"))
    }
}

impl std::fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// How long one of maos's sessions may sit idle inside a transaction before the server ends
/// it (`idle_in_transaction_session_timeout`; the default of [`crate::Options::stuck_after`]):
/// maos's transactions never wait on anything but the server between statements, so one
/// idle this long belongs to a process that was stopped (SIGSTOP, Ctrl-Z, a suspended
/// laptop) while it held rows everyone else needs.
pub const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);

/// The startup options of maos's sessions: [`ROW_WAIT`], and `stuck_after` (see
/// [`IDLE_IN_TRANSACTION`]).
pub(crate) fn session_options(stuck_after: Duration) -> String {
    format!(
        "-c idle_in_transaction_session_timeout={} -c lock_timeout={}",
        stuck_after.as_millis().max(1),
        ROW_WAIT.as_millis()
    )
}

/// The longest any statement waits for a row another session holds (`lock_timeout`), unless
/// the operation sets a shorter one from its own wait.
pub const ROW_WAIT: Duration = Duration::from_secs(30);

/// `maos pid <pid> on <host>` (at most 63 bytes, the server's limit): what
/// `pg_stat_activity` shows, so that a session holding rows can be traced to its process.
pub(crate) fn application_name() -> String {
    let id = maos_core::ProcessIdentity::current();
    let mut name = format!("maos pid {} on {}", id.pid, id.host);
    if name.len() > 63 {
        let mut end = 63;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match auth.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}{tail}")
        }
        _ => url.to_string(),
    }
}

/// The password for `c`: `PGPASSWORD`, else the first matching line of the pgpass file
/// (`PGPASSFILE`, else `~/.pgpass`, used only when not readable by group or others, as libpq
/// does).
fn password_for(c: &postgres::Config) -> Option<String> {
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        return Some(pw);
    }
    let path = match std::env::var_os("PGPASSFILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    let host = match c.get_hosts().first()? {
        postgres::config::Host::Tcp(h) => h.clone(),
        postgres::config::Host::Unix(_) => "localhost".to_string(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432).to_string();
    let db = c.get_dbname().unwrap_or("postgres");
    let user = c.get_user().unwrap_or("postgres");
    pgpass_lookup(&path, &[&host, &port, db, user])
}

/// The password of the first line of the pgpass file at `path` matching `fields` (host,
/// port, database, user; `*` matches anything).
pub(crate) fn pgpass_lookup(path: &Path, fields: &[&str; 4]) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 || meta.len() > 1 << 20 {
        if meta.is_file() {
            tracing::warn!(path = %path.display(), "pgpass file ignored: it must be a regular file of mode 0600 (and under 1 MiB)");
        }
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let parts = split_pgpass(line);
        if parts.len() != 5 {
            continue;
        }
        if parts[..4]
            .iter()
            .zip(fields.iter())
            .all(|(p, f)| p == "*" || p == f)
        {
            return Some(parts[4].clone());
        }
    }
    None
}

/// Splits a pgpass line on unescaped `:` and removes `\` escapes.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => {
                if let (Some(n), Some(s)) = (chars.next(), out.last_mut()) {
                    s.push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            _ => {
                if let Some(s) = out.last_mut() {
                    s.push(ch);
                }
            }
        }
    }
    out
}

/// Checks a namespace name: 1-128 bytes of `A-Z a-z 0-9 . _ - @ + /`, not starting with `.`,
/// `-` or `/`.
pub fn check_namespace(name: &str) -> Result<()> {
    let bad = |reason: &str| Error::Invalid {
        what: "namespace",
        reason: format!("{:?}: {reason}", maos_core::excerpt(name, 40)),
    };
    if name.is_empty() || name.len() > MAX_NAMESPACE_LEN {
        return Err(bad("must be 1 to 128 bytes"));
    }
    if name.starts_with(['.', '-', '/']) {
        return Err(bad("must not start with '.', '-' or '/'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-@+/".contains(&b))
    {
        return Err(bad("only letters, digits and . _ - @ + / are allowed"));
    }
    Ok(())
}

/// The default namespace of the repository at or above `root`: `repo-` and the id of its
/// root commit (the smallest, if it has several), so every clone of the repository on every
/// machine names the same namespace.
///
/// # Errors
/// [`Error::Invalid`] when `root` is in no git repository or it has no commit yet (give a
/// namespace explicitly then).
pub fn default_namespace(root: &Path) -> Result<String> {
    let bad = |reason: String| Error::Invalid {
        what: "namespace",
        reason,
    };
    let repo = git2::Repository::discover(root).map_err(|e| {
        bad(format!(
            "{} is in no git repository ({}): name a namespace explicitly",
            root.display(),
            e.message()
        ))
    })?;
    let mut walk = repo.revwalk().map_err(|e| bad(e.message().to_string()))?;
    walk.push_head().map_err(|e| {
        bad(format!(
            "the repository at {} has no commit yet ({}): commit first or name a namespace explicitly",
            root.display(),
            e.message()
        ))
    })?;
    let mut roots = Vec::new();
    for oid in walk {
        let oid = oid.map_err(|e| bad(e.message().to_string()))?;
        let commit = repo
            .find_commit(oid)
            .map_err(|e| bad(e.message().to_string()))?;
        if commit.parent_count() == 0 {
            roots.push(oid.to_string());
        }
    }
    roots.sort();
    roots
        .into_iter()
        .next()
        .map(|r| format!("repo-{r}"))
        .ok_or_else(|| bad("the repository has no root commit".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_refused_and_redacted() {
        let err = BackendUrl::parse("postgres://u:secret@h:5/db").unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("secret"), "{msg}");
        assert!(msg.contains("PGPASSWORD"), "{msg}");
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert!(BackendUrl::parse("mysql://x").is_err());
        let ok = BackendUrl::parse("postgres://u@h:5433/db").unwrap();
        assert_eq!(ok.target(), "h:5433/db");
    }

    #[test]
    fn pgpass_lines_match_with_wildcards_and_escapes() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pgpass");
        std::fs::write(
            &p,
            "# comment\nother:5432:db:u:no\n*:5432:db:u:a\\:b\\\\c\nh:*:*:*:later\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            pgpass_lookup(&p, &["h", "5432", "db", "u"]).as_deref(),
            Some("a:b\\c")
        );
        assert_eq!(
            pgpass_lookup(&p, &["h", "1", "x", "y"]).as_deref(),
            Some("later")
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(pgpass_lookup(&p, &["h", "5432", "db", "u"]), None);
    }

    #[test]
    fn namespaces_are_checked() {
        check_namespace("repo-0123abcd").unwrap();
        check_namespace("team/app").unwrap();
        for bad in ["", ".x", "-x", "/x", "a b", "a;b", &"x".repeat(129)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
