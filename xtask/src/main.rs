//! Project automation. `cargo xtask ci` is what CI runs; `cargo xtask bench` prints the
//! benchmark table.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci [--slow]     fmt check, clippy -D warnings, tests (doctests included; the tidy tests
                  check the layering), rustdoc -D warnings; ends with `N passed, N failed`;
                  --slow also runs the heavy multi-process and crash variants
  bench [NAME..]  run the benchmarks (release build) and print one markdown table;
                  --write-docs also stores it in docs/benchmarks.md
  soak [--agents N].. [--minutes M] [--think MS] [--flat-out] [--write-docs]
                  N agent processes (default 10 then 100) doing a realistic mix of work for M
                  minutes (default 1), some killed and restarted, while a checker verifies the
                  invariants; prints throughput and latency per operation (release build);
                  fails on a violation, a p99 of claim, send or lock acquire (free) over 50 ms,
                  or a median growing over 10x from the smallest to the largest N;
                  --write-docs replaces the swarm section of docs/benchmarks.md
  layering        only the layering checks (the tidy tests of the tests package)
";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(args[1..].iter().any(|a| a == "--slow")),
        Some("bench") => bench(&args[1..]),
        Some("layering") => layering(),
        Some("soak") => soak(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(step: &str, mut cmd: Command) -> anyhow::Result<()> {
    eprintln!("\n==> {step}: {cmd:?}");
    let t = Instant::now();
    let status = cmd.status().with_context(|| format!("starting {step}"))?;
    eprintln!("<== {step}: {status} in {:.1?}", t.elapsed());
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

fn ci(slow: bool) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("fmt", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    run("clippy", clippy)?;

    let mut test = cargo();
    // --no-fail-fast: every binary runs, so the count is the whole suite's.
    test.args(["test", "--workspace", "--locked", "--no-fail-fast"]);
    if slow {
        test.env("MAOS_SLOW_TESTS", "1");
    }
    let counts = run_tests(test);

    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run("doc", doc)?;

    let (passed, failed) = counts?;
    if slow {
        // A one-minute swarm of 100 agents; fails on any invariant violation.
        soak(&[
            "--agents".into(),
            "100".into(),
            "--minutes".into(),
            "1".into(),
        ])?;
    }
    eprintln!(
        "\nci passed in {:.1?}{}\n{passed} passed, {failed} failed",
        t.elapsed(),
        if slow { " (with --slow)" } else { "" }
    );
    Ok(())
}

/// Runs `cargo test`, passing its output through, and counts the tests of every binary and
/// of the doctests from the harness's `test result:` lines. Fails (after printing the count)
/// if the tests failed.
fn run_tests(mut cmd: Command) -> anyhow::Result<(u64, u64)> {
    eprintln!("\n==> test: {cmd:?}");
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting test")?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().context("test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count(rest, "passed");
            failed += count(rest, "failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    eprintln!("<== test: {status} in {:.1?}", t.elapsed());
    if !status.success() {
        eprintln!("\n{passed} passed, {failed} failed");
        bail!("test failed ({status})");
    }
    Ok((passed, failed))
}

/// The number before `what` in a harness summary (`ok. 12 passed; 0 failed; ...`).
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split([';', '.'])
        .filter_map(|part| part.trim().strip_suffix(what)?.trim().parse::<u64>().ok())
        .sum()
}

/// The layering checks: the tidy tests of the tests package (`cargo test` runs them too).
fn layering() -> anyhow::Result<()> {
    let mut test = cargo();
    test.args([
        "test",
        "--locked",
        "-p",
        "maos-tests",
        "--test",
        "it",
        "--",
        "tidy::",
    ]);
    run("layering", test)
}

fn soak(args: &[String]) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "--locked",
        "-p",
        "maos-bench",
        "--",
        "--soak",
    ])
    .args(args);
    run("soak", cmd)
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    // Some benchmarks time the real `maos` binary: build it first, in release.
    let mut build = cargo();
    build.args(["build", "--release", "--locked", "-p", "maos-cli"]);
    run("build maos (release)", build)?;
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--locked", "-p", "maos-bench", "--"])
        .args(args);
    run("bench", cmd)
}
