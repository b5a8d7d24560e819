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
  dist            build the release `maos` as it is shipped (on Linux with glibc: statically
                  linked, not position-independent) into target/release/maos
  install [--root DIR]
                  `dist`, then copy the binary to DIR/bin (default: $CARGO_HOME, else
                  ~/.cargo)
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
        Some("dist") => dist().map(|bin| println!("{}", bin.display())),
        Some("install") => install(&args[1..]),
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
        // The shipped binary builds, installs and runs (the README's install command).
        let root = project_root().join("target").join("xtask-install");
        install(&["--root".into(), root.display().to_string()])?;
        let installed = root.join("bin").join("maos");
        let status = Command::new(&installed)
            .arg("--version")
            .status()
            .with_context(|| format!("running {}", installed.display()))?;
        if !status.success() {
            bail!("{} --version failed ({status})", installed.display());
        }
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
    // Some benchmarks time the real `maos` binary: build it first, as it is shipped.
    dist()?;
    let mut cmd = cargo();
    cmd.args(["run", "--release", "--locked", "-p", "maos-bench", "--"])
        .args(args);
    run("bench", cmd)
}

/// Builds `target/release/maos` as it is shipped and returns its path.
///
/// On Linux with glibc the binary is linked statically and is not position-independent: it
/// starts with no dynamic loader, no shared libraries to map and no relocations to apply.
/// A maos command is a short process (an agent runs hundreds, every hook call is one), and
/// this start costs about 0.7 ms of CPU against about 1.5 ms for the default dynamic PIE
/// build, whose 23,000 relocations touch and copy a hundred pages at every start (figures in
/// docs/benchmarks.md). The price: the executable's own code is not placed at a random
/// address (the stack, heap and mappings still are). `cargo install --path crates/maos-cli`
/// builds the default PIE binary instead.
///
/// Only the final link changes (`cargo rustc` passes the flags to the `maos` crate alone):
/// set for the whole build, `crt-static` would also apply to proc-macro crates, which must
/// be dynamic libraries.
fn dist() -> anyhow::Result<PathBuf> {
    let mut build = cargo();
    build.args([
        "rustc",
        "--release",
        "--locked",
        "-p",
        "maos-cli",
        "--bin",
        "maos",
    ]);
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        build.args([
            "--",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "relocation-model=static",
        ]);
    }
    run("build maos (release, as shipped)", build).context(
        "the static link needs glibc's static libraries (Debian: libc6-dev); \
         `cargo install --locked --path crates/maos-cli` builds the default dynamic binary",
    )?;
    let bin = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| project_root().join("target"), PathBuf::from)
        .join("release")
        .join("maos");
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bin)
}

/// `dist`, then copies the binary to `<root>/bin/maos` (through a temporary name and a
/// rename: a `maos` running from there keeps its old file).
fn install(args: &[String]) -> anyhow::Result<()> {
    let root = match args {
        [] => std::env::var_os("CARGO_HOME").map_or_else(
            || {
                std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".cargo"))
                    .context("neither CARGO_HOME nor HOME is set: give --root DIR")
            },
            |h| Ok(PathBuf::from(h)),
        )?,
        [flag, dir] if flag == "--root" => PathBuf::from(dir),
        _ => bail!("usage: cargo xtask install [--root DIR]"),
    };
    let bin = dist()?;
    let dir = root.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(".maos.install");
    std::fs::copy(&bin, &tmp)
        .with_context(|| format!("copying {} to {}", bin.display(), tmp.display()))?;
    let dest = dir.join("maos");
    std::fs::rename(&tmp, &dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    eprintln!("installed {}", dest.display());
    Ok(())
}
