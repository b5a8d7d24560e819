//! Rules of the workspace kept by `cargo test`, not by convention (rust-analyzer's
//! `xtask/src/tidy.rs` does the same): the layering of the crates, no skipped or
//! panic-expecting tests and no fixed sleeps in test code, a `# Limitations` section in every
//! crate's docs, and one test binary per package. The checks of docs/cli.md against the clap
//! definition and the exit-code table live beside the CLI (`crates/maos-cli/tests/it/docs.rs`),
//! where `maos_cli::command()` can be walked.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives one level below the root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir` (recursively), skipping `target/`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The library crates, `crates/*`.
fn crates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    v.sort();
    v
}

/// The `maos-*` packages a manifest lists as normal (not dev, not build) dependencies.
fn maos_dependencies(manifest: &Path) -> Vec<String> {
    let mut section = String::new();
    let mut deps = Vec::new();
    for line in read(manifest).lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
        } else if (section == "[dependencies]"
            || (section.starts_with("[target.") && section.ends_with(".dependencies]")))
            && line.starts_with("maos-")
        {
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            deps.push(name.to_string());
        }
    }
    deps
}

#[test]
fn maos_core_depends_on_no_sibling() {
    let deps = maos_dependencies(&root().join("crates/maos-core/Cargo.toml"));
    assert!(deps.is_empty(), "maos-core must not depend on {deps:?}");
}

#[test]
fn the_cli_depends_on_the_facade_only() {
    let deps = maos_dependencies(&root().join("crates/maos-cli/Cargo.toml"));
    assert_eq!(deps, ["maos-coordination"], "maos-cli's maos dependencies");
}

/// The PostgreSQL backend implements the mechanisms' storage: it may depend on them, none of
/// them (nor the session layer) may depend on it; only the facade (and tests, benchmarks)
/// name it, and it names no crate above the mechanisms.
#[test]
fn the_postgres_backend_is_plugged_in_never_depended_on() {
    for c in crates() {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        let deps = maos_dependencies(&c.join("Cargo.toml"));
        if name != "maos-coordination" {
            assert!(
                !deps.iter().any(|d| d == "maos-postgres"),
                "{name} must not depend on maos-postgres (the backend is chosen by whoever opens the workspace)"
            );
        }
        if name == "maos-postgres" {
            for above in ["maos-session", "maos-coordination", "maos-cli"] {
                assert!(
                    !deps.iter().any(|d| d == above),
                    "maos-postgres must not depend on {above}"
                );
            }
        }
    }
}

#[test]
fn the_dashboard_sits_above_every_feature_crate() {
    // maos-dashboard reads every store and serves a web page: only the facade (and through it
    // the CLI) may depend on it, so its server and its dependencies stay out of the libraries.
    let mut wrong = Vec::new();
    for c in crates() {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        if matches!(
            name.as_str(),
            "maos-coordination" | "maos-dashboard" | "maos-cli"
        ) {
            continue;
        }
        for dep in maos_dependencies(&c.join("Cargo.toml")) {
            if dep == "maos-dashboard" || dep == "maos-coordination" {
                wrong.push(format!("{name} -> {dep}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "feature crates depend on the dashboard or the facade: {wrong:?}"
    );
    let dash = maos_dependencies(&root().join("crates/maos-dashboard/Cargo.toml"));
    assert!(
        !dash
            .iter()
            .any(|d| d == "maos-coordination" || d == "maos-cli"),
        "maos-dashboard must not depend on the facade or the CLI: {dash:?}"
    );
}

#[test]
fn the_facade_only_re_exports() {
    let path = root().join("crates/maos-coordination/src/lib.rs");
    for (n, line) in read(&path).lines().enumerate() {
        let code = line.trim();
        if code.is_empty()
            || code.starts_with("//")
            || code.starts_with("#[doc")
            || code.starts_with("#![doc")
        {
            continue;
        }
        // `backend.rs` holds the one choice the facade makes: which storage to open.
        let allowed = code.starts_with("pub use ")
            || code == "pub mod backend;"
            || !code.contains(['(', '{', '=', ';']) // continuation lines of a `pub use` list
            || code == "};"
            || code.ends_with("::{");
        assert!(
            allowed,
            "{}:{}: the facade may only re-export, found {code:?}",
            path.display(),
            n + 1
        );
    }
}

/// Test code: everything in test directories and helper binaries, and the `#[cfg(test)]`
/// part of a source file (test modules come last, after the code they test).
fn test_code() -> Vec<(PathBuf, String)> {
    let root = root();
    let mut out = Vec::new();
    let mut dirs = vec![root.join("tests"), root.join("xtask")];
    for c in crates() {
        dirs.push(c.join("tests"));
        dirs.push(c.join("src"));
    }
    for dir in dirs.iter().filter(|d| d.exists()) {
        for file in rust_files(dir) {
            let text = read(&file);
            let in_src = file.starts_with(root.join("crates"))
                && file.components().any(|c| c.as_os_str() == "src");
            let tests = if in_src && file.file_name().is_some_and(|n| n != "tests.rs") {
                match text.find("#[cfg(test)]") {
                    Some(i) => text[i..].to_string(),
                    None => continue,
                }
            } else {
                text
            };
            out.push((file, tests));
        }
    }
    out
}

/// Where a test may call `sleep(`: the path (relative to the root) and why. Only where the
/// sleep is the thing under test, never to wait for something to happen.
const SLEEP_ALLOWED: &[(&str, &str)] = &[];

#[test]
fn tests_neither_skip_nor_expect_panics_nor_sleep() {
    let root = root();
    let this = Path::new(file!());
    // Spelled in pieces so that this file does not match itself.
    let should_panic = ["should", "_panic"].concat();
    let ignore = ["#[", "ignore"].concat();
    let sleep = ["sleep", "("].concat();
    let mut found = Vec::new();
    for (file, text) in test_code() {
        let rel = file.strip_prefix(&root).unwrap_or(&file);
        if rel.ends_with(this.file_name().unwrap()) && rel.starts_with("tests") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains(&should_panic) || code.contains(&ignore) {
                found.push(format!("{}: {}", rel.display(), line.trim()));
            }
            if code.contains(&sleep) && !SLEEP_ALLOWED.iter().any(|(p, _)| rel == Path::new(p)) {
                found.push(format!(
                    "{} (test part, line {}): {}",
                    rel.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "tests must not skip, expect a panic or sleep a fixed time (wait for the event):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn every_crate_documents_its_limitations() {
    let mut missing = Vec::new();
    for c in crates() {
        let lib = c.join("src/lib.rs");
        if !lib.exists() {
            continue;
        }
        let mut text = read(&lib);
        // The facade's docs are its README, included.
        if text.contains("include_str!(\"../README.md\")") {
            text.push_str(&read(&c.join("README.md")));
        }
        if !text.lines().any(|l| {
            let l = l.trim_start_matches("//!").trim();
            l == "# Limitations"
        }) {
            missing.push(lib.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "no `# Limitations` section in {missing:?}"
    );
}

#[test]
fn each_package_has_one_test_binary() {
    // Each file directly in a package's `tests/` is a test binary of its own, linked again
    // (with libgit2 and the whole workspace): one per package, a single file or `tests/it/`
    // whose `main.rs` declares every file beside it as a module.
    let root = root();
    let mut dirs = vec![root.join("tests/tests")];
    dirs.extend(crates().into_iter().map(|c| c.join("tests")));
    let mut problems = Vec::new();
    for dir in dirs.iter().filter(|d| d.exists()) {
        let mut binaries = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if (path.is_file() && path.extension().is_some_and(|e| e == "rs"))
                || path.join("main.rs").exists()
            {
                binaries.push(path);
            }
        }
        if binaries.len() > 1 {
            problems.push(format!(
                "{} test binaries in {}: {binaries:?}",
                binaries.len(),
                dir.display()
            ));
        }
        let it = dir.join("it");
        if it.join("main.rs").exists() {
            let main = read(&it.join("main.rs"));
            for file in rust_files(&it) {
                let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
                if stem != "main" && !main.contains(&format!("mod {stem};")) {
                    problems.push(format!("{} is not a `mod` of it/main.rs", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
