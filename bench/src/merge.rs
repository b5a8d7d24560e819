//! maos-merge, each figure beside git in the same run:
//! - `maos merge check A B` (the real binary, process start to exit) against `git merge-tree
//!   --write-tree A B` on the merges of two real histories (`shared/fixtures`), paired runs;
//! - `maos merge check --all` over 8 and 16 agent branches taken from the real history
//!   against one `git merge-tree --stdin` process given the same pairs;
//! - the library's check beside `git merge-tree` in a generated repository of 5,000 files
//!   and 1,100 commits (built once with `git fast-import`, cached under the target
//!   directory).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;
use maos_coordination::merge::ConflictDetector;

use crate::table::{Row, Table, median_us};

const DIRS: usize = 50;
const FILES_PER_DIR: usize = 100;
const MAIN_COMMITS: usize = 1000;
const FORK_AT: usize = 950;
const FEATURE_COMMITS: usize = 100;
const CACHE_VERSION: &str = "v1";

pub(crate) fn run(table: &mut Table) -> anyhow::Result<()> {
    match maos_binary() {
        Some(bin) => {
            for name in ["click", "requests"] {
                real_history(table, &bin, name)?;
            }
            check_all(table, &bin)?;
        }
        None => eprintln!("[merge] no release `maos` binary beside the bench: CLI rows skipped"),
    }
    synthetic(table)
}

fn maos_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("maos");
    p.exists().then_some(p)
}

/// A bare clone of a fixture history and its merges (first parent, second parent).
fn clone_history(name: &str) -> anyhow::Result<(tempfile::TempDir, Vec<(String, String)>)> {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(format!("{name}.bundle"));
    anyhow::ensure!(
        bundle.is_file(),
        "fixture {} is missing (shared/fixtures beside the checkout)",
        bundle.display()
    );
    let dir = tempfile::tempdir()?;
    let st = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&bundle)
        .arg(dir.path())
        .status()?;
    anyhow::ensure!(st.success(), "git clone {} failed", bundle.display());
    let out = Command::new("git")
        .current_dir(dir.path())
        .args(["rev-list", "--merges", "--parents", "main"])
        .output()?;
    let merges = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().skip(1);
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect();
    Ok((dir, merges))
}

fn time_process(cmd: &mut Command) -> anyhow::Result<(std::time::Duration, i32)> {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("RUST_LOG")
        .status()?;
    Ok((t.elapsed(), st.code().unwrap_or(-1)))
}

/// `maos merge check` against `git merge-tree --write-tree` on every third merge of a real
/// history, each pair run back to back; both must give the same verdict.
fn real_history(table: &mut Table, bin: &Path, name: &str) -> anyhow::Result<()> {
    let (dir, merges) = clone_history(name)?;
    let repo = dir.path();
    let mut ours = Vec::new();
    let mut git = Vec::new();
    for (i, (p1, p2)) in merges.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let (m, mc) = time_process(
            Command::new(bin)
                .arg("--workspace")
                .arg(repo)
                .args(["merge", "check", p2, p1]),
        )?;
        let (g, gc) = time_process(Command::new("git").current_dir(repo).args([
            "merge-tree",
            "--write-tree",
            p1,
            p2,
        ]))?;
        anyhow::ensure!(
            (mc == 4) == (gc == 1) && matches!(mc, 0 | 4),
            "merge {i} of {name}: maos exit {mc}, git exit {gc}"
        );
        ours.push(m);
        git.push(g);
    }
    let n = ours.len();
    let v = median_us(&mut ours) / 1000.0;
    let b = median_us(&mut git) / 1000.0;
    table.push(Row {
        group: "merge",
        name: format!("`maos merge check`, {n} merges of {name} (process, p50)"),
        value: v,
        baseline_name: "git merge-tree --write-tree (process)".into(),
        baseline: b,
        unit: "ms",
        higher_is_better: false,
        target: "<= 1.0x git".into(),
        met: v <= b,
    });
    Ok(())
}

/// `maos merge check --all` over N agent branches of click (the second parents of recent
/// merges, against the main line just before them) beside one `git merge-tree --stdin`
/// given the same N + N(N-1)/2 pairs.
fn check_all(table: &mut Table, bin: &Path) -> anyhow::Result<()> {
    use maos_coordination::core::{AgentId, AgentRegistry, Registration, Workspace};
    let (dir, merges) = clone_history("click")?;
    let repo = dir.path();
    // The workspace is the bare clone itself.
    let ws = Workspace::init(repo)?;
    for n in [8usize, 16] {
        let chosen = &merges[..n];
        let target = chosen[n - 1].0.clone(); // main just before the oldest of them
        let registry = AgentRegistry::new(&ws);
        for (i, (_, p2)) in chosen.iter().enumerate() {
            registry.register(
                Registration::new(AgentId::new(format!("a{i:02}"))?).branch(p2.clone()),
            )?;
        }
        // The pairs in the order `predict` checks them (registry order).
        let branches: Vec<String> = registry
            .list()?
            .agents
            .into_iter()
            .filter_map(|r| r.branch)
            .collect();
        let mut pairs = String::new();
        for b in &branches {
            pairs.push_str(&format!("{target} {b}\n"));
        }
        for (i, a) in branches.iter().enumerate() {
            for b in &branches[i + 1..] {
                pairs.push_str(&format!("{a} {b}\n"));
            }
        }
        let pair_count = pairs.lines().count();
        let mut ours = Vec::new();
        let mut git = Vec::new();
        for _ in 0..15 {
            let (m, mc) = time_process(
                Command::new(bin)
                    .arg("--workspace")
                    .arg(repo)
                    .args(["merge", "check", "--all", "--target", &target]),
            )?;
            anyhow::ensure!(matches!(mc, 0 | 4), "maos merge check --all exited {mc}");
            ours.push(m);
            let t = Instant::now();
            let mut child = Command::new("git")
                .current_dir(repo)
                .args(["merge-tree", "--stdin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(pairs.as_bytes())?;
            anyhow::ensure!(child.wait()?.success(), "git merge-tree --stdin failed");
            git.push(t.elapsed());
        }
        let v = median_us(&mut ours) / 1000.0;
        let b = median_us(&mut git) / 1000.0;
        table.push(Row {
            group: "merge",
            name: format!(
                "`maos merge check --all`, {n} branches of click ({pair_count} pairs, p50)"
            ),
            value: v,
            baseline_name: "one git merge-tree --stdin, same pairs".into(),
            baseline: b,
            unit: "ms",
            higher_is_better: false,
            target: "<= 1.0x git".into(),
            met: v <= b,
        });
    }
    Ok(())
}

fn synthetic(table: &mut Table) -> anyhow::Result<()> {
    let repo = ensure_repo()?;
    let det = ConflictDetector::open(&repo)?;
    // Warm both (page cache, pack index).
    let check = det.check("feature", "main")?;
    git_merge_tree(&repo)?;
    let n = 21;
    let mut ours = Vec::with_capacity(n);
    let mut git = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let c = det.check("feature", "main")?;
        ours.push(t.elapsed());
        anyhow::ensure!(
            c.conflicts.len() == check.conflicts.len(),
            "unstable result"
        );
        let t = Instant::now();
        git_merge_tree(&repo)?;
        git.push(t.elapsed());
    }
    let v = median_us(&mut ours) / 1000.0;
    let b = median_us(&mut git) / 1000.0;
    eprintln!(
        "[merge] {} conflicts found (git agrees: {})",
        check.conflicts.len(),
        check.conflicted_paths() == git_paths(&repo)?
    );
    table.push(Row {
        group: "merge",
        name: format!(
            "conflict check, {} files, {} commits (p50)",
            DIRS * FILES_PER_DIR,
            MAIN_COMMITS + FEATURE_COMMITS + 1
        ),
        value: v,
        baseline_name: "git merge-tree --write-tree (process)".into(),
        baseline: b,
        unit: "ms",
        higher_is_better: false,
        target: "<= 1.0x git".into(),
        met: v <= b,
    });
    Ok(())
}

fn git_merge_tree(repo: &Path) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("git")
        .current_dir(repo)
        .args([
            "merge-tree",
            "--write-tree",
            "--name-only",
            "main",
            "feature",
        ])
        .output()
        .context("running git merge-tree")?;
    anyhow::ensure!(
        matches!(out.status.code(), Some(0 | 1)),
        "git merge-tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn git_paths(repo: &Path) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let out = git_merge_tree(repo)?;
    let text = String::from_utf8_lossy(&out);
    Ok(text
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join(format!("maos-bench-merge-{CACHE_VERSION}"))
}

/// Builds (once) the benchmark repository: 5,000 files of 30 lines; `main` has 1,000
/// commits each editing 5 files; `feature` forks at commit 950 and has 100 commits of its
/// own; both sides edit some common files, a few on the same lines (conflicts).
fn ensure_repo() -> anyhow::Result<PathBuf> {
    let dir = cache_dir();
    if dir.join("READY").exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    let status = Command::new("git")
        .current_dir(&dir)
        .args(["init", "-q", "--bare", "-b", "main"])
        .status()?;
    anyhow::ensure!(status.success(), "git init failed");
    let mut rng = 0x5eed_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let path = |i: usize| format!("src/d{:02}/f{:03}.rs", i / FILES_PER_DIR, i % FILES_PER_DIR);
    let n_files = DIRS * FILES_PER_DIR;
    let mut files: BTreeMap<String, Vec<String>> = (0..n_files)
        .map(|i| {
            (
                path(i),
                (0..30)
                    .map(|l| format!("fn f{i}_{l}() {{}} // {l}"))
                    .collect(),
            )
        })
        .collect();
    let mut s: Vec<u8> = Vec::with_capacity(64 << 20);
    let mut mark = 0usize;
    let mut time = 1_700_000_000u64;
    let mut commit = |s: &mut Vec<u8>,
                      branch: &str,
                      from: Option<usize>,
                      changed: &[(String, Vec<String>)]|
     -> anyhow::Result<usize> {
        mark += 1;
        time += 60;
        writeln!(s, "commit refs/heads/{branch}\nmark :{mark}")?;
        writeln!(
            s,
            "author bench <b@x> {time} +0000\ncommitter bench <b@x> {time} +0000"
        )?;
        let msg = format!("commit {mark}\n\nMaos-Agent: bench-{branch}\n");
        write!(s, "data {}\n{msg}", msg.len())?;
        if let Some(f) = from {
            writeln!(s, "from :{f}")?;
        }
        for (p, lines) in changed {
            let body = lines.join("\n") + "\n";
            write!(s, "M 100644 inline {p}\ndata {}\n{body}\n", body.len())?;
        }
        writeln!(s)?;
        Ok(mark)
    };
    let all: Vec<(String, Vec<String>)> = files.clone().into_iter().collect();
    let mut head = commit(&mut s, "main", None, &all)?;
    let mut fork = head;
    let mut fork_files = files.clone();
    for c in 0..MAIN_COMMITS - 1 {
        let mut changed = Vec::new();
        for _ in 0..5 {
            let i = (next() as usize) % n_files;
            let p = path(i);
            let lines = files.get_mut(&p).context("file")?;
            let l = (next() as usize) % lines.len();
            lines[l] = format!("fn main_{c}() {{}} // {l}");
            changed.push((p, lines.clone()));
        }
        head = commit(&mut s, "main", Some(head), &changed)?;
        if c + 2 == FORK_AT {
            fork = head;
            fork_files = files.clone();
        }
    }
    // The feature branch: edits spread over the tree, a few files also edited on main after
    // the fork (same lines: conflicts), several of them on other lines (clean).
    let mut fhead = fork; // the feature branch's tip
    let mut ffiles = fork_files;
    for c in 0..FEATURE_COMMITS {
        let mut changed = Vec::new();
        for _ in 0..5 {
            let i = (next() as usize) % n_files;
            let p = path(i);
            let lines = ffiles.get_mut(&p).context("file")?;
            let l = (next() as usize) % lines.len();
            lines[l] = format!("fn feature_{c}() {{}} // {l}");
            changed.push((p, lines.clone()));
        }
        fhead = commit(&mut s, "feature", Some(fhead), &changed)?;
    }
    let mut s_out = Command::new("git")
        .current_dir(&dir)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()?;
    s_out.stdin.take().context("stdin")?.write_all(&s)?;
    anyhow::ensure!(s_out.wait()?.success(), "git fast-import failed");
    std::fs::write(dir.join("READY"), b"")?;
    eprintln!(
        "[merge] built the benchmark repository in {:.1} s at {}",
        t.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}
