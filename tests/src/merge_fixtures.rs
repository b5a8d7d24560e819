//! Git fixtures for the maos-merge tests: small repositories built with the real `git`,
//! a seeded generator of branch pairs (written with `git fast-import`), and a wrapper around
//! `git merge-tree --write-tree --name-only`, the reference the detector is compared with.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::git;

/// A temporary git repository on branch `main` with one initial commit.
pub struct Repo {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl Repo {
    /// `git init -b main`, one commit holding `README`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["config", "user.name", "maos test"]);
        git(dir.path(), &["config", "user.email", "test@maos.invalid"]);
        git(dir.path(), &["config", "commit.gpgsign", "false"]);
        // A maos workspace may live in the repository: keep `.maos/` out of commits.
        std::fs::write(dir.path().join(".git/info/exclude"), ".maos/\n").expect("exclude");
        let r = Self { dir };
        r.write("README", "fixture\n");
        r.commit_all("initial");
        r
    }

    /// The working tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git here.
    pub fn git(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&git(self.path(), args).stdout)
            .trim()
            .to_owned()
    }

    /// Writes a file (creating directories).
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, content).expect("write");
    }

    /// Reads a file of the working tree.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).expect("read")
    }

    /// `git add -A && git commit -m msg`; returns the new commit id.
    pub fn commit_all(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// `git checkout -q [-b] branch`.
    pub fn checkout(&self, branch: &str, create: bool) {
        if create {
            self.git(&["checkout", "-q", "-b", branch]);
        } else {
            self.git(&["checkout", "-q", branch]);
        }
    }
}

impl Default for Repo {
    fn default() -> Self {
        Self::new()
    }
}

/// What `git merge-tree --write-tree --name-only` said about a pair.
#[derive(Debug, Clone)]
pub struct GitMergeTree {
    /// The conflicted paths.
    pub paths: BTreeSet<String>,
    /// The informational messages (`CONFLICT (content): ...`, `Auto-merging ...`).
    pub messages: Vec<String>,
}

/// Runs `git merge-tree --write-tree --name-only ours theirs` in `dir`.
pub fn git_merge_tree(dir: &Path, ours: &str, theirs: &str) -> GitMergeTree {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["merge-tree", "--write-tree", "--name-only", ours, theirs])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git merge-tree runs");
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "git merge-tree {ours} {theirs} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().skip(1); // tree id
    let mut paths = BTreeSet::new();
    for l in lines.by_ref() {
        if l.is_empty() {
            break;
        }
        paths.insert(l.to_owned());
    }
    let messages = lines.map(str::to_owned).collect();
    GitMergeTree { paths, messages }
}

/// A deterministic pseudo-random generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p` percent.
    pub fn chance(&mut self, p: u64) -> bool {
        self.next_u64() % 100 < p
    }
}

/// A tree: path -> (mode, content).
pub type Tree = BTreeMap<String, (u32, Vec<u8>)>;

/// Writes commits with `git fast-import`, one full tree per commit.
pub struct FastImport {
    buf: Vec<u8>,
    mark: u64,
    time: u64,
}

impl Default for FastImport {
    fn default() -> Self {
        Self::new()
    }
}

impl FastImport {
    /// An empty stream.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            mark: 0,
            time: 1_700_000_000,
        }
    }

    /// Adds a commit of `tree` on `branch` with `parents` (marks); returns its mark.
    pub fn commit(&mut self, branch: &str, parents: &[u64], msg: &str, tree: &Tree) -> u64 {
        self.commit_delta(branch, parents, msg, None, tree)
    }

    /// Like [`FastImport::commit`], but only writes the paths that differ from `prev`
    /// (the first parent's tree), which keeps streams of large trees small.
    pub fn commit_delta(
        &mut self,
        branch: &str,
        parents: &[u64],
        msg: &str,
        prev: Option<&Tree>,
        tree: &Tree,
    ) -> u64 {
        self.mark += 1;
        self.time += 1;
        let m = self.mark;
        let b = &mut self.buf;
        writeln!(b, "commit refs/heads/{branch}").expect("write");
        writeln!(b, "mark :{m}").expect("write");
        writeln!(
            b,
            "author maos test <test@maos.invalid> {} +0000",
            self.time
        )
        .expect("write");
        writeln!(
            b,
            "committer maos test <test@maos.invalid> {} +0000",
            self.time
        )
        .expect("write");
        writeln!(b, "data {}\n{msg}", msg.len()).expect("write");
        for (i, p) in parents.iter().enumerate() {
            writeln!(b, "{} :{p}", if i == 0 { "from" } else { "merge" }).expect("write");
        }
        match prev {
            None => {
                writeln!(b, "deleteall").expect("write");
                for (path, (mode, content)) in tree {
                    Self::put(b, path, *mode, content);
                }
            }
            Some(prev) => {
                for path in prev.keys() {
                    if !tree.contains_key(path) {
                        writeln!(b, "D {path}").expect("write");
                    }
                }
                for (path, (mode, content)) in tree {
                    if prev.get(path) != Some(&(*mode, content.clone())) {
                        Self::put(b, path, *mode, content);
                    }
                }
            }
        }
        writeln!(b).expect("write");
        m
    }

    fn put(b: &mut Vec<u8>, path: &str, mode: u32, content: &[u8]) {
        writeln!(b, "M {mode:o} inline {path}").expect("write");
        writeln!(b, "data {}", content.len()).expect("write");
        b.extend_from_slice(content);
        b.push(b'\n');
    }

    /// Feeds the stream to `git fast-import` in `dir`.
    pub fn run(self, dir: &Path) {
        let mut child = Command::new("git")
            .current_dir(dir)
            .args(["fast-import", "--quiet", "--force"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .stdin(Stdio::piped())
            .spawn()
            .expect("git fast-import runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&self.buf)
            .expect("feed fast-import");
        let status = child.wait().expect("fast-import waits");
        assert!(status.success(), "git fast-import failed");
    }
}

fn text_file(rng: &mut Rng, lines: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..lines {
        s.push_str(&format!("line {i} value {}\n", rng.below(1000)));
    }
    s.into_bytes()
}

fn binary_file(rng: &mut Rng) -> Vec<u8> {
    let mut v = vec![0u8, 1, 2, 0];
    for _ in 0..64 {
        v.push((rng.next_u64() & 0xff) as u8);
    }
    v
}

fn edit_lines(rng: &mut Rng, content: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(content);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let edits = 1 + rng.below(2);
    for _ in 0..edits {
        // A small window makes the two sides collide often.
        let at = rng.below(lines.len().clamp(1, 8));
        match rng.below(4) {
            0 if !lines.is_empty() => {
                lines.remove(at.min(lines.len() - 1));
            }
            1 => lines.insert(at.min(lines.len()), format!("inserted {}", rng.below(100))),
            _ => {
                if lines.is_empty() {
                    lines.push(String::new());
                }
                let i = at.min(lines.len() - 1);
                lines[i] = format!("changed {} {}", i, rng.below(3));
            }
        }
    }
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    out
}

/// One side's random changes to `base`.
fn mutate(rng: &mut Rng, base: &Tree) -> Tree {
    let mut tree = base.clone();
    let ops = 1 + rng.below(3);
    for _ in 0..ops {
        let keys: Vec<String> = tree.keys().cloned().collect();
        if keys.is_empty() {
            break;
        }
        let pick = keys[rng.below(keys.len())].clone();
        match rng.below(100) {
            0..=39 => {
                let (mode, content) = tree[&pick].clone();
                let new = if content.contains(&0) {
                    binary_file(rng)
                } else {
                    edit_lines(rng, &content)
                };
                tree.insert(pick, (mode, new));
            }
            40..=51 => {
                tree.remove(&pick);
            }
            52..=69 => {
                let (mode, content) = tree.remove(&pick).expect("picked");
                let dir = ["d0", "d1", "moved"][rng.below(3)];
                let name = pick.rsplit('/').next().unwrap_or("x");
                let dest = if rng.chance(50) {
                    format!("{dir}/{name}")
                } else {
                    format!("{dir}/renamed{}.txt", rng.below(3))
                };
                let content = if rng.chance(30) && !content.contains(&0) {
                    let mut c = content;
                    c.extend_from_slice(b"tail\n");
                    c
                } else {
                    content
                };
                if !tree.keys().any(|k| k.starts_with(&format!("{dest}/"))) {
                    tree.insert(dest, (mode, content));
                }
            }
            70..=81 => {
                let dest = format!("new{}.txt", rng.below(3));
                let content = if rng.chance(30) {
                    b"same new content\n".to_vec()
                } else {
                    text_file(rng, 3)
                };
                if !tree.keys().any(|k| k.starts_with(&format!("{dest}/"))) {
                    tree.insert(dest, (0o100644, content));
                }
            }
            82..=89 => {
                if let Some(e) = tree.get_mut(&pick) {
                    e.0 = if e.0 == 0o100755 { 0o100644 } else { 0o100755 };
                }
            }
            90..=94 => {
                // Turn a file into a directory.
                tree.remove(&pick);
                tree.insert(format!("{pick}/inner.txt"), (0o100644, text_file(rng, 2)));
            }
            _ => {
                let (_, content) = tree[&pick].clone();
                if !content.contains(&0) {
                    tree.insert(pick, (0o100644, edit_lines(rng, &content)));
                    tree.insert(
                        format!("bin/extra{}.bin", rng.below(2)),
                        (0o100644, binary_file(rng)),
                    );
                }
            }
        }
    }
    tree
}

fn base_tree(rng: &mut Rng) -> Tree {
    let mut t = Tree::new();
    let files = 4 + rng.below(6);
    for j in 0..files {
        let dir = ["d0", "d1"][j % 2];
        let lines = 6 + rng.below(10);
        t.insert(format!("{dir}/f{j}.txt"), (0o100644, text_file(rng, lines)));
    }
    for j in 0..(1 + rng.below(2)) {
        t.insert(format!("bin/b{j}.bin"), (0o100644, binary_file(rng)));
    }
    t
}

/// Generated pairs: branch `p{i}/ours` and `p{i}/theirs` forked from `p{i}/base`.
#[derive(Debug)]
pub struct GeneratedPairs {
    /// The repository.
    pub dir: tempfile::TempDir,
    /// How many pairs.
    pub count: usize,
}

impl GeneratedPairs {
    /// The branch names of pair `i`: (ours, theirs).
    pub fn pair(&self, i: usize) -> (String, String) {
        (format!("p{i}/ours"), format!("p{i}/theirs"))
    }

    /// The repository path.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// Builds `count` random branch pairs (edits, renames, deletes, adds, mode changes,
/// file/directory swaps, binary files) in one bare-ish repository with one fast-import run.
/// Every fifth pair also gets a second commit on each side.
pub fn generate_pairs(seed: u64, count: usize) -> GeneratedPairs {
    let dir = tempfile::tempdir().expect("tempdir");
    git(dir.path(), &["init", "-q", "-b", "main"]);
    let mut rng = Rng::new(seed);
    let mut fi = FastImport::new();
    for i in 0..count {
        let base = base_tree(&mut rng);
        let bm = fi.commit(&format!("p{i}/base"), &[], "base", &base);
        for side in ["ours", "theirs"] {
            let t1 = mutate(&mut rng, &base);
            let m = fi.commit(&format!("p{i}/{side}"), &[bm], side, &t1);
            if i % 5 == 0 {
                let t2 = mutate(&mut rng, &t1);
                fi.commit(&format!("p{i}/{side}"), &[m], side, &t2);
            }
        }
    }
    fi.run(dir.path());
    GeneratedPairs { dir, count }
}

/// A repository where `base` is committed on `main`, then branch `source` gets `source`'s
/// changes and `main` gets `target`'s (one commit each). `main` stays checked out.
pub fn diverged(
    base: impl FnOnce(&Repo),
    target: impl FnOnce(&Repo),
    source: impl FnOnce(&Repo),
) -> Repo {
    let r = Repo::new();
    base(&r);
    r.commit_all("base");
    r.checkout("source", true);
    source(&r);
    r.commit_all("source change");
    r.checkout("main", false);
    target(&r);
    r.commit_all("target change");
    r
}

/// `git merge-tree` paths with git's file/directory renames (`PATH~BRANCH`) mapped back.
pub fn git_conflicted_paths(dir: &Path, ours: &str, theirs: &str) -> BTreeSet<String> {
    git_merge_tree(dir, ours, theirs)
        .paths
        .into_iter()
        .map(|p| match p.rsplit_once('~') {
            Some((orig, b)) if b == ours.replace('/', "_") || b == theirs.replace('/', "_") => {
                orig.to_owned()
            }
            _ => p,
        })
        .collect()
}

/// Twenty numbered lines, `line 1` .. `line 20`.
pub fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

/// `numbered(n)` with line `at` (1-based) replaced by `with`.
pub fn numbered_with(n: usize, at: usize, with: &str) -> String {
    (1..=n)
        .map(|i| {
            if i == at {
                format!("{with}\n")
            } else {
                format!("line {i}\n")
            }
        })
        .collect()
}

/// A bare clone of one of the real histories in `<repo root>/../shared/fixtures`.
pub struct History {
    /// Keeps the clone alive.
    pub dir: tempfile::TempDir,
    /// Every merge of `main`: (first parent, second parent), newest first.
    pub merges: Vec<(String, String)>,
}

impl History {
    /// The bare clone's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Where the real histories are: `<repo root>/../shared/fixtures` (CI has `shared/` beside
/// the checkout).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

/// Clones `<name>.bundle` of the fixtures into a temporary directory. A missing fixture is
/// a failure, never a skip.
pub fn clone_history(name: &str) -> History {
    let bundle = fixtures_dir().join(format!("{name}.bundle"));
    assert!(
        bundle.is_file(),
        "fixture {} is missing: the merge parity tests need the real histories of \
         shared/fixtures beside the checkout (see its README)",
        bundle.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&bundle)
        .arg(dir.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir.path())
        .output()
        .expect("git clone runs");
    assert!(
        out.status.success(),
        "git clone {} failed: {}",
        bundle.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let list = git(dir.path(), &["rev-list", "--merges", "--parents", "main"]);
    let merges = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().skip(1);
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        })
        .collect();
    History { dir, merges }
}

/// `git merge-tree --stdin --name-only` over many pairs in one process: per pair (ours,
/// theirs), the conflicted paths, or `None` when it merges cleanly.
pub fn git_merge_tree_stdin(
    dir: &Path,
    pairs: &[(String, String)],
) -> Vec<Option<BTreeSet<String>>> {
    let mut child = Command::new("git")
        .current_dir(dir)
        .args(["merge-tree", "--stdin", "--name-only", "--no-messages"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git merge-tree runs");
    let mut input = String::new();
    for (o, t) in pairs {
        input.push_str(&format!("{o} {t}\n"));
    }
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("git merge-tree runs");
    writer.join().expect("writer").expect("write pairs");
    assert!(out.status.success(), "git merge-tree --stdin failed");
    // Per pair: STATUS \0 TREE \0 (PATH \0)* \0
    let mut fields = out.stdout.split(|c| *c == 0);
    let mut result = Vec::with_capacity(pairs.len());
    for _ in pairs {
        let status = fields.next().expect("status");
        let _tree = fields.next().expect("tree");
        let mut paths = BTreeSet::new();
        for f in fields.by_ref() {
            if f.is_empty() {
                break;
            }
            paths.insert(String::from_utf8_lossy(f).into_owned());
        }
        result.push(if status == b"1" { None } else { Some(paths) });
    }
    result
}
