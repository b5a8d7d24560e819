//! Choosing the backend (`maos init --backend`, `MAOS_BACKEND`) and its errors: against the
//! throwaway PostgreSQL server of this test process.

use maos_coordination::postgres::server;

use crate::util::{Exit, Maos};

/// A workspace initialised on the test server in a namespace of its own.
pub(crate) fn pg_workspace(dir: &std::path::Path) -> (Maos, String, String) {
    let url = server::shared_url().expect("a PostgreSQL server for the tests");
    let ns = server::unique_namespace("cli");
    let maos = Maos::uninitialised(dir);
    maos.run(["init", "--backend", &url, "--namespace", &ns])
        .ok();
    (maos, url, ns)
}

#[test]
fn init_records_the_backend_and_status_and_doctor_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let (maos, url, ns) = pg_workspace(dir.path());
    let config = std::fs::read_to_string(dir.path().join(".maos/config.json")).unwrap();
    let c: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(c["backend"], url.as_str(), "{config}");
    assert_eq!(c["namespace"], ns.as_str(), "{config}");

    let st = maos.run(["status", "--json"]);
    st.ok();
    let st = st.json();
    assert_eq!(st["backend"], "postgresql");
    assert!(st["location"].as_str().unwrap().contains(&ns), "{st}");
    maos.run(["status"])
        .ok()
        .stdout_has("backend    postgresql");
    maos.run(["doctor"]).ok().stdout_has("backend postgresql");

    // MAOS_BACKEND overrides the recorded backend.
    let mut cmd = maos.cmd();
    cmd.env("MAOS_BACKEND", "file").args(["status", "--json"]);
    let out = crate::util::Run::of(&mut cmd);
    out.ok();
    assert_eq!(out.json()["backend"], "file");

    // `init --backend file` goes back to the files; a plain `init` keeps the choice.
    maos.run(["init"]).ok();
    assert_eq!(
        maos.run(["status", "--json"]).json()["backend"],
        "postgresql"
    );
    maos.run(["init", "--backend", "file"]).ok();
    assert_eq!(maos.run(["status", "--json"]).json()["backend"], "file");
    let config = std::fs::read_to_string(dir.path().join(".maos/config.json")).unwrap();
    assert!(!config.contains("postgres"), "{config}");
}

#[test]
fn a_password_in_the_url_is_refused_and_never_printed_or_stored() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::uninitialised(dir.path());
    let out = maos.run([
        "init",
        "--backend",
        "postgres://u:hunter2@127.0.0.1/db",
        "--namespace",
        "x",
    ]);
    out.assert_code(Exit::Error);
    out.stderr_has("PGPASSWORD");
    assert!(!out.stderr().contains("hunter2"), "{}", out.stderr());
    let config = std::fs::read_to_string(dir.path().join(".maos/config.json")).unwrap_or_default();
    assert!(!config.contains("hunter2"), "{config}");
}

#[test]
fn an_unreachable_server_or_a_bad_backend_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::uninitialised(dir.path());
    // Port 1 on loopback: nothing listens there.
    let out = maos.run([
        "init",
        "--backend",
        "postgres://maos@127.0.0.1:1/maos",
        "--namespace",
        "x",
    ]);
    out.assert_code(Exit::Error);
    out.stderr_has("postgres://maos@127.0.0.1:1/maos");
    out.stderr_has("check that the server runs");
    let config = std::fs::read_to_string(dir.path().join(".maos/config.json")).unwrap_or_default();
    assert!(
        !config.contains("127.0.0.1"),
        "recorded although unreachable: {config}"
    );

    // A backend that is neither `file` nor a URL, from the environment.
    let mut cmd = maos.cmd();
    cmd.env("MAOS_BACKEND", "mysql://x").args(["task", "list"]);
    let out = crate::util::Run::of(&mut cmd);
    out.assert_code(Exit::Error);
    out.stderr_has("MAOS_BACKEND");
    out.stderr_has("postgres://");
}

#[test]
fn a_server_schema_newer_than_this_maos_is_refused() {
    // A database of its own: the schema version is per database.
    let url = server::shared_url().unwrap();
    let db = format!(
        "newer_{}",
        &server::unique_namespace("s")[5..].replace('-', "_")
    );
    let psql = server::find_binaries().unwrap().join("psql");
    // The same server, another database (the URL ends with `/postgres`).
    let base = url
        .strip_suffix("/postgres")
        .expect("the test server's URL")
        .to_owned();
    let sql = |db: &str, q: &str| {
        let out = std::process::Command::new(&psql)
            .arg(format!("{base}/{db}"))
            .args(["-v", "ON_ERROR_STOP=1", "-qc", q])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sql("postgres", &format!("CREATE DATABASE {db}"));
    let db_url = format!("{base}/{db}");
    let dir = tempfile::tempdir().unwrap();
    let maos = Maos::uninitialised(dir.path());
    maos.run(["init", "--backend", &db_url, "--namespace", "n"])
        .ok();
    sql(&db, "UPDATE maos.schema_version SET version = version + 1");
    let out = maos.run(["status"]);
    out.assert_code(Exit::Error);
    out.stderr_has(&db_url);
    out.stderr_has("upgrade maos");
}
