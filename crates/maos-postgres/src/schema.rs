//! The maos schema: numbered migrations embedded in the binary, applied in order under an
//! advisory lock, the version kept in `maos.schema_version`; and namespaces.

use crate::conn::{Conn, Exec};
use crate::{Error, Result};

/// The migrations, in order: `(version, name, sql)`. Version `n` is `migrations/000n_*.sql`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_init.sql",
        include_str!("../migrations/0001_init.sql"),
    ),
    (
        2,
        "0002_inbox.sql",
        include_str!("../migrations/0002_inbox.sql"),
    ),
    (
        3,
        "0003_task_history.sql",
        include_str!("../migrations/0003_task_history.sql"),
    ),
];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The advisory lock key migrations run under (the maos tag, low word 0, which no session
/// key uses): concurrent first connections from several machines migrate once.
const MIGRATION_KEY: i64 = crate::conn::KEY_TAG << 32;

/// The mechanisms that have a guard row per namespace.
pub(crate) const GUARDS: &[&str] = &["locks", "tasks", "queue", "agents"];

/// Creates the schema or brings it to [`SCHEMA_VERSION`]; refuses a newer one.
pub(crate) fn migrate(c: &mut Conn) -> Result<()> {
    // Fast path: already current (no lock, no DDL).
    if let Some(v) = read_version(c)?
        && v >= SCHEMA_VERSION
    {
        return check_version(v);
    }
    c.tx("migrate the maos schema", |t| {
        t.exec(
            "lock the migration",
            "SELECT pg_advisory_xact_lock($1)",
            &[&MIGRATION_KEY],
        )?;
        t.exec(
            "create the maos schema",
            "CREATE SCHEMA IF NOT EXISTS maos",
            &[],
        )?;
        t.exec(
            "create the version table",
            "CREATE TABLE IF NOT EXISTS maos.schema_version (
                 one boolean PRIMARY KEY DEFAULT true CHECK (one),
                 version bigint NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT clock_timestamp())",
            &[],
        )?;
        let current = t
            .opt(
                "read the schema version",
                "SELECT version FROM maos.schema_version",
                &[],
            )?
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        check_version(current)?;
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tracing::info!(version, name, "applying migration");
            apply_sql(t, sql)?;
            t.exec(
                "record the schema version",
                "INSERT INTO maos.schema_version (one, version) VALUES (true, $1)
                 ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version, applied_at = clock_timestamp()",
                &[version],
            )?;
        }
        Ok(())
    })
}

/// Runs every statement of a migration file (statements end with `;` at the end of a line;
/// `$$` bodies may contain `;`).
fn apply_sql(t: &mut crate::conn::Tx<'_>, sql: &'static str) -> Result<()> {
    t.batch(sql)
}

fn check_version(v: i64) -> Result<()> {
    if v > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            server: v,
            known: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The server's schema version, if the schema exists.
pub(crate) fn read_version(c: &mut Conn) -> Result<Option<i64>> {
    let exists: bool = c
        .one(
            "look for the maos schema",
            "SELECT to_regclass('maos.schema_version') IS NOT NULL",
            &[],
        )?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(c.opt(
        "read the schema version",
        "SELECT version FROM maos.schema_version",
        &[],
    )?
    .map(|r| r.get(0)))
}

/// The id of namespace `name`, created (with its guard rows) if new.
pub(crate) fn namespace(c: &mut Conn, name: &str) -> Result<i64> {
    c.tx("open the namespace", |t| {
        t.exec(
            "create the namespace",
            "INSERT INTO maos.namespaces (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&name],
        )?;
        let id: i64 = t
            .one(
                "find the namespace",
                "SELECT id FROM maos.namespaces WHERE name = $1",
                &[&name],
            )?
            .get(0);
        for g in GUARDS {
            t.exec(
                "create a guard row",
                "INSERT INTO maos.guards (ns, what) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&id, g],
            )?;
        }
        Ok(id)
    })
}

/// The namespaces on the server (name, id), sorted by name.
pub(crate) fn namespaces(c: &mut Conn) -> Result<Vec<(String, i64)>> {
    Ok(c.query(
        "list namespaces",
        "SELECT name, id FROM maos.namespaces ORDER BY name",
        &[],
    )?
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendUrl, Pg, server};

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let url = BackendUrl::parse(&server::shared_url().unwrap()).unwrap();
        let ns = server::unique_namespace("schema");
        let pg = Pg::connect(&url, &ns).unwrap();
        // Connecting again (another machine) migrates nothing and finds the namespace.
        let again = Pg::connect(&url, &ns).unwrap();
        assert_eq!(pg.inner.ns, again.inner.ns);
        pg.run(|c| {
            assert_eq!(read_version(c)?, Some(SCHEMA_VERSION));
            assert!(namespaces(c)?.iter().any(|(n, _)| n == &ns));
            Ok(())
        })
        .unwrap();
        // A server whose schema is newer than this binary is refused with a clear error,
        // and nothing is changed. (A server of its own: the version is server-wide.)
        let own = server::TestServer::start().unwrap();
        let url2 = BackendUrl::parse(&own.url()).unwrap();
        let pg2 = Pg::connect(&url2, "x").unwrap();
        pg2.run(|c| {
            c.exec(
                "bump",
                "UPDATE maos.schema_version SET version = version + 1",
                &[],
            )
        })
        .unwrap();
        let err = Pg::connect(&url2, "x").unwrap_err();
        assert!(
            matches!(err, Error::SchemaTooNew { server, known } if server == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade maos"), "{err}");
    }
}
