//! Helpers shared by the cross-crate and multi-process tests in `tests/tests/`.

pub mod chromium;
pub mod merge_fixtures;
pub mod pg;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `cmd`, returning its output; panics (with stderr) if it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// stdout of `out` as a string.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of `out` as a string.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// True when the slow, heavy variants of the multi-process tests should run
/// (`cargo xtask ci --slow` sets `MAOS_SLOW_TESTS=1`).
pub fn slow_tests() -> bool {
    std::env::var_os("MAOS_SLOW_TESTS").is_some_and(|v| v == "1")
}

/// Runs `git` in `dir` with a fixed identity, panicking with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "maos test")
        .env("GIT_AUTHOR_EMAIL", "test@maos.invalid")
        .env("GIT_COMMITTER_NAME", "maos test")
        .env("GIT_COMMITTER_EMAIL", "test@maos.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
