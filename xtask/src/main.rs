//! Project automation. `cargo xtask ci` is what CI runs; `cargo xtask bench` prints the
//! benchmark table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci [--slow]     fmt check, clippy -D warnings, tests (doctests included), rustdoc -D warnings,
                  layering check; --slow also runs the heavy multi-process and crash variants
  bench [NAME..]  run the benchmarks (release build) and print one markdown table;
                  --write-docs also stores it in docs/benchmarks.md
  layering        only the layering check
";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(args[1..].iter().any(|a| a == "--slow")),
        Some("bench") => bench(&args[1..]),
        Some("layering") => layering(),
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
    test.args(["test", "--workspace", "--locked"]);
    if slow {
        test.env("MAOS_SLOW_TESTS", "1");
    }
    run("test", test)?;

    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run("doc", doc)?;

    layering()?;
    eprintln!(
        "\nci passed in {:.1?}{}",
        t.elapsed(),
        if slow { " (with --slow)" } else { "" }
    );
    Ok(())
}

/// maos-core depends on no sibling; no feature crate depends on maos-dashboard; the facade
/// has no logic of its own; the CLI depends on the facade only.
fn layering() -> anyhow::Result<()> {
    eprintln!("\n==> layering");
    let out = cargo()
        .args([
            "tree",
            "-p",
            "maos-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--locked",
        ])
        .output()
        .context("cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8(out.stdout)?;
    let siblings: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("maos-") && !l.starts_with("maos-core "))
        .collect();
    if !siblings.is_empty() {
        bail!("maos-core must not depend on its siblings, found: {siblings:?}");
    }

    let facade = std::fs::read_to_string("crates/maos-coordination/src/lib.rs")?;
    for (n, line) in facade.lines().enumerate() {
        let code = line.trim();
        if code.is_empty()
            || code.starts_with("//")
            || code.starts_with("#[doc")
            || code.starts_with("#![doc")
        {
            continue;
        }
        let allowed = code.starts_with("pub use ")
            || code.starts_with("pub use{")
            || !code.contains(['(', '{', '=', ';']) // continuation lines of a `pub use` list
            || code == "};"
            || code.ends_with("::{");
        if !allowed {
            bail!(
                "crates/maos-coordination/src/lib.rs:{}: the facade may only re-export, found {code:?}",
                n + 1
            );
        }
    }

    // The dashboard sits on top of every feature crate, beside the facade: no feature crate
    // may depend on it (its web server and its dependencies stay out of the libraries).
    let out = cargo()
        .args([
            "tree",
            "-i",
            "maos-dashboard",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--workspace",
            "--locked",
        ])
        .output()
        .context("cargo tree -i maos-dashboard")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let users = String::from_utf8(out.stdout)?;
    let wrong: Vec<&str> = users
        .lines()
        .filter(|l| {
            [
                "maos-core ",
                "maos-comm ",
                "maos-lock ",
                "maos-track ",
                "maos-merge ",
                "maos-session ",
            ]
            .iter()
            .any(|c| l.starts_with(c))
        })
        .collect();
    if !wrong.is_empty() {
        bail!("feature crates must not depend on maos-dashboard, found: {wrong:?}");
    }

    let cli = std::fs::read_to_string("crates/maos-cli/Cargo.toml")?;
    for c in [
        "maos-core",
        "maos-comm",
        "maos-lock",
        "maos-track",
        "maos-merge",
        "maos-session",
        "maos-dashboard",
    ] {
        if cli.lines().any(|l| l.trim_start().starts_with(c)) {
            bail!("maos-cli must depend on the facade only, found {c} in its Cargo.toml");
        }
    }
    eprintln!("<== layering ok");
    Ok(())
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
