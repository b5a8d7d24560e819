//! Fuzzing the stores through their files: a workspace after a realistic workload has one of
//! its files damaged (bytes flipped, cut short, grown with garbage, replaced by huge or deeply
//! nested JSON or binary noise), then every store is read and written through its public API
//! and `doctor` runs. Whatever the damage: no panic, no hang (each operation under a deadline),
//! and every failure is an error whose message names a path or says what to do. Bounded by
//! proptest's case count (64 by default, 2,000 with MAOS_SLOW_TESTS=1).

// Fixture helpers outside #[test] functions: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use maos_coordination::core::doctor;
use maos_coordination::track::Options;
use maos_coordination::{
    AgentId, AgentRegistry, ChannelName, Cursor, FileChannel, FileLock, Filter, LockTable, Message,
    Recipients, Registration, ResourceName, Task, TaskTracker, Workspace,
};
use proptest::prelude::*;

/// A workspace after a little of everything, and the files it holds.
fn workload() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let a = AgentId::new("a").unwrap();
    AgentRegistry::new(&ws)
        .register(Registration::new(a.clone()))
        .unwrap();
    let ch = FileChannel::open(&ws, ChannelName::new("api").unwrap()).unwrap();
    for i in 0..5 {
        ch.send_blocking(&Message::new(a.clone(), Recipients::All, i))
            .unwrap();
    }
    let t = TaskTracker::open_with(&ws, Options::default().agent(a.clone())).unwrap();
    let ids = t
        .create_tasks_blocking(&[Task::new("one"), Task::new("two")])
        .unwrap();
    t.claim_blocking(&a).unwrap();
    let _ = ids;
    FileLock::new(&ws, ResourceName::new("src/x.rs").unwrap())
        .agent(a)
        .try_acquire("fuzz")
        .unwrap()
        .unwrap()
        .detach()
        .unwrap();
    let mut files = Vec::new();
    collect(ws.maos_dir(), &mut files);
    files.sort();
    (dir, files)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            collect(&p, out);
        } else if ft.is_file() && !p.ends_with("guard") && !p.starts_with(dir.join("live")) {
            out.push(p);
        }
    }
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, mask: u8 },
    Cut { keep: usize },
    Append(Vec<u8>),
    Replace(Vec<u8>),
    DeepJson(usize),
    HugeLine(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        any::<usize>().prop_map(|keep| Damage::Cut { keep }),
        proptest::collection::vec(any::<u8>(), 1..200).prop_map(Damage::Append),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Damage::Replace),
        (100usize..5000).prop_map(Damage::DeepJson),
        (1usize..4).prop_map(|mb| Damage::HugeLine(mb << 20)),
    ]
}

fn apply(path: &Path, d: &Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    match d {
        Damage::Flip { at, mask } => {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= mask;
            }
        }
        Damage::Cut { keep } => {
            let n = if bytes.is_empty() {
                0
            } else {
                keep % bytes.len()
            };
            bytes.truncate(n);
        }
        Damage::Append(extra) => bytes.extend_from_slice(extra),
        Damage::Replace(b) => bytes = b.clone(),
        Damage::DeepJson(n) => {
            bytes = format!("{}{}\n", "[".repeat(*n), "]".repeat(*n)).into_bytes();
        }
        Damage::HugeLine(n) => {
            bytes.extend(std::iter::repeat_n(b'x', *n));
            bytes.push(b'\n');
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Runs `f` on a thread with a deadline: a hang is a failure, a panic is a failure, an error
/// must say where or what to do.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> Result<T, String> + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r.map(|r| r.map(drop)));
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Err(_) => panic!("{what}: no answer within 30 s (a hang)"),
        Ok(Err(_)) => panic!("{what}: panicked"),
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(msg))) => assert!(
            msg.contains('/') || msg.contains("maos doctor") || msg.len() > 20,
            "{what}: an unclear error: {msg:?}"
        ),
    }
}

fn exercise(root: &Path) {
    let root = root.to_path_buf();
    let err = |e: &dyn std::error::Error| {
        let mut s = e.to_string();
        let mut src = e.source();
        while let Some(c) = src {
            s.push_str(&format!(": {c}"));
            src = c.source();
        }
        s
    };
    let r = root.clone();
    bounded("open", move || {
        Workspace::open(&r).map(drop).map_err(|e| err(&e))
    });
    let Ok(ws) = Workspace::open(&root) else {
        return;
    };
    let w = ws.clone();
    bounded("agents", move || {
        AgentRegistry::new(&w).list().map(drop).map_err(|e| err(&e))
    });
    let w = ws.clone();
    bounded("receive", move || {
        let ch = FileChannel::open(&w, ChannelName::new("api").unwrap()).map_err(|e| err(&e))?;
        ch.receive_blocking::<serde_json::Value>(&Cursor::start(), &Filter::Everything)
            .map(drop)
            .map_err(|e| err(&e))
    });
    let w = ws.clone();
    bounded("send", move || {
        let ch = FileChannel::open(&w, ChannelName::new("api").unwrap()).map_err(|e| err(&e))?;
        ch.send_blocking(&Message::new(
            AgentId::new("b").unwrap(),
            Recipients::All,
            1,
        ))
        .map(drop)
        .map_err(|e| err(&e))
    });
    let w = ws.clone();
    bounded("locks", move || {
        LockTable::open(&w)
            .and_then(|t| t.snapshot())
            .map(drop)
            .map_err(|e| err(&e))?;
        FileLock::new(&w, ResourceName::new("src/y.rs").unwrap())
            .try_acquire("after damage")
            .map(drop)
            .map_err(|e| err(&e))
    });
    let w = ws.clone();
    bounded("tasks", move || {
        let t = TaskTracker::open(&w).map_err(|e| err(&e))?;
        t.list_blocking().map_err(|e| err(&e))?;
        t.claim_blocking(&AgentId::new("b").unwrap())
            .map(drop)
            .map_err(|e| err(&e))
    });
    let w = ws.clone();
    bounded("doctor", move || {
        doctor::check(&w, false).map(drop).map_err(|e| err(&e))
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if maos_tests::slow_tests() { 2000 } else { 64 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_damaged_file_gives_clear_errors_never_a_panic_or_hang(
        which in any::<usize>(),
        d in damage(),
    ) {
        let (dir, files) = workload();
        let path = &files[which % files.len()];
        apply(path, &d);
        exercise(dir.path());
    }
}
