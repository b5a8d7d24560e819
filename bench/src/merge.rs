//! maos-merge: a conflict check beside `git merge-tree --write-tree` on the same pair, in a
//! generated repository of 5,000 files and 1,100 commits (built once with `git fast-import`
//! and cached under the target directory).

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
        target: "<= 1.5x git".into(),
        met: v <= 1.5 * b,
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
