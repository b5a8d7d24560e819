use super::*;
use maos_core::now_ms;

fn ws() -> (tempfile::TempDir, Workspace) {
    let d = tempfile::tempdir().unwrap();
    let ws = Workspace::init(d.path()).unwrap();
    (d, ws)
}

fn r(s: &str) -> ResourceName {
    ResourceName::new(s).unwrap()
}

fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

#[test]
fn tokens_increase_and_release_frees() {
    let (_d, ws) = ws();
    let l = FileLock::new(&ws, r("a.txt")).agent(agent("x"));
    let g1 = l.try_acquire("one").unwrap().unwrap();
    assert!(l.try_acquire("two").unwrap().is_none());
    let t1 = g1.token();
    check_fencing_token(&ws, &r("a.txt"), t1).unwrap();
    g1.release().unwrap();
    let err = check_fencing_token(&ws, &r("a.txt"), t1).unwrap_err();
    assert!(
        matches!(err, Error::StaleToken { current: None, .. }),
        "{err}"
    );
    let g2 = l.try_acquire("three").unwrap().unwrap();
    assert!(g2.token() > t1);
    drop(g2); // released synchronously, no runtime
    assert!(l.try_acquire("four").unwrap().is_some());
}

#[test]
fn patterns_and_shared_modes_conflict_as_documented() {
    let (_d, ws) = ws();
    let g = FileLock::new(&ws, r("src/api/**"))
        .try_acquire("p")
        .unwrap()
        .unwrap();
    assert!(
        FileLock::new(&ws, r("src/api/user.rs"))
            .try_acquire("u")
            .unwrap()
            .is_none()
    );
    assert!(
        FileLock::new(&ws, r("src/lib.rs"))
            .try_acquire("l")
            .unwrap()
            .is_some()
    );
    drop(g);
    let s1 = FileLock::new(&ws, r("doc"))
        .shared()
        .try_acquire("r1")
        .unwrap()
        .unwrap();
    let s2 = FileLock::new(&ws, r("doc/x.md"))
        .shared()
        .try_acquire("r2")
        .unwrap()
        .unwrap();
    assert!(
        FileLock::new(&ws, r("doc/x.md"))
            .try_acquire("w")
            .unwrap()
            .is_none()
    );
    drop((s1, s2));
    assert!(
        FileLock::new(&ws, r("doc/x.md"))
            .try_acquire("w")
            .unwrap()
            .is_some()
    );
}

#[test]
fn an_expired_holder_is_told_and_deletes_nothing() {
    let (_d, ws) = ws();
    let old = FileLock::new(&ws, r("f"))
        .agent(agent("old"))
        .ttl(Duration::from_millis(1))
        .try_acquire("slow")
        .unwrap()
        .unwrap();
    // Wait for the lease to end by observing the clock, not by sleeping a guess.
    let end = old.info().expires_at;
    while now_ms() <= end {
        std::thread::yield_now();
    }
    let new = FileLock::new(&ws, r("f"))
        .agent(agent("new"))
        .try_acquire("fresh")
        .unwrap()
        .unwrap();
    assert!(new.token() > old.token());
    let err = old.release().unwrap_err();
    match &err {
        Error::LockLost {
            now_held_by: Some(h),
            ..
        } => assert_eq!(h.owner.as_str(), "new"),
        other => panic!("{other}"),
    }
    check_fencing_token(&ws, &r("f"), new.token()).unwrap();
}

#[test]
fn no_wait_on_a_taken_lock_says_taken_not_timed_out() {
    let (_d, ws) = ws();
    let _g = FileLock::new(&ws, r("busy"))
        .agent(agent("holder"))
        .try_acquire("long migration")
        .unwrap()
        .unwrap();
    let err = FileLock::new(&ws, r("busy"))
        .wait(Duration::ZERO)
        .acquire_blocking("me")
        .unwrap_err();
    let s = err.to_string();
    assert!(matches!(err, Error::Timeout { .. }), "{s}");
    assert!(
        s.starts_with("busy is taken (not waiting: the wait is 0): agent holder"),
        "{s}"
    );
    assert!(!s.contains("timed out"), "{s}");
}

#[test]
fn timeout_names_the_holder_purpose_and_lease() {
    let (_d, ws) = ws();
    let _g = FileLock::new(&ws, r("busy"))
        .agent(agent("holder"))
        .try_acquire("long migration")
        .unwrap()
        .unwrap();
    let err = FileLock::new(&ws, r("busy"))
        .wait(Duration::from_millis(20))
        .acquire_blocking("me")
        .unwrap_err();
    let s = err.to_string();
    assert!(matches!(err, Error::Timeout { .. }), "{s}");
    assert!(
        s.contains("holder") && s.contains("long migration") && s.contains("lease ends"),
        "{s}"
    );
    // The timed-out waiter left the queue.
    assert!(
        LockTable::open(&ws)
            .unwrap()
            .snapshot()
            .unwrap()
            .waiters
            .is_empty()
    );
}

#[test]
fn a_waiter_wakes_on_release() {
    let (_d, ws) = ws();
    let g = FileLock::new(&ws, r("h"))
        .try_acquire("first")
        .unwrap()
        .unwrap();
    let ws2 = ws.clone();
    let t = std::thread::spawn(move || {
        FileLock::new(&ws2, r("h"))
            .wait(Duration::from_secs(60))
            .acquire_blocking("second")
            .map(|g| g.token())
    });
    // Release once the waiter is queued.
    let table = LockTable::open(&ws).unwrap();
    while table.snapshot().unwrap().waiters.is_empty() {
        std::thread::yield_now();
    }
    let first = g.token();
    g.release().unwrap();
    assert!(t.join().unwrap().unwrap() > first);
}

#[tokio::test]
async fn async_acquire_and_renew() {
    let (_d, ws) = ws();
    let mut g = FileLock::new(&ws, r("x")).acquire("a").await.unwrap();
    let before = g.info().expires_at;
    g.renew().unwrap();
    assert!(g.info().expires_at >= before);
    assert!(!g.is_lost());
    let t = LockTable::open(&ws).unwrap();
    assert_eq!(t.snapshot().unwrap().holders.len(), 1);
    drop(g);
    assert!(t.snapshot().unwrap().holders.is_empty());
}

#[test]
fn agent_leases_survive_detach_and_are_released_by_the_agent_only() {
    let (_d, ws) = ws();
    let g = FileLock::new(&ws, r("lease"))
        .agent(agent("a"))
        .try_acquire("cli")
        .unwrap()
        .unwrap();
    let info = g.detach().unwrap();
    assert!(info.live.is_none());
    let table = LockTable::open(&ws).unwrap();
    let err = table.release(&r("lease"), &agent("b"), None).unwrap_err();
    assert!(matches!(err, Error::NotOwner { .. }), "{err}");
    assert!(err.to_string().contains("agent a"), "{err}");
    table.renew(&r("lease"), &agent("a"), None).unwrap();
    let done = table
        .release(&r("lease"), &agent("a"), Some(info.token))
        .unwrap();
    assert_eq!(done.len(), 1);
}

#[test]
fn a_writer_killed_at_any_byte_of_a_change_leaves_the_state_before_or_after_it() {
    use maos_core::fsx::sim::{Cut, Recording};
    let (_d, ws) = ws();
    let l = FileLock::new(&ws, r("t")).agent(agent("a"));
    let g = l.try_acquire("one").unwrap().unwrap();
    let token = g.token();
    let keep = FileLock::new(&ws, r("u"))
        .agent(agent("b"))
        .try_acquire("other")
        .unwrap()
        .unwrap();
    let rec = Recording::start(ws.root()).unwrap();
    g.release().unwrap();
    let end = rec.len();
    let mut saw = [false; 2];
    // A SIGKILL keeps every write made before it (the page cache), and may cut the last
    // one short: every prefix of the change, torn at any byte.
    for at in 0..=end {
        for tear in [None, Some(0), Some(7), Some(31), Some(100)] {
            let img = tempfile::tempdir().unwrap();
            let cut = Cut {
                at,
                keep_unsynced: rec.unsynced_before(at),
                tear,
            };
            rec.image(&cut, img.path()).unwrap();
            let ws2 = Workspace::open(img.path()).unwrap();
            let shared = Shared::of_dir(&ws2.locks_dir(), maos_core::process::boot_id()).unwrap();
            let dump = crate::store::ops::dump(&shared)
                .unwrap_or_else(|e| panic!("cut {at} {tear:?}: {e}"));
            let t: Vec<_> = dump
                .holders
                .iter()
                .filter(|h| h.resource.as_str() == "t")
                .collect();
            assert!(t.len() <= 1, "cut {at}: {t:?}");
            if let Some(h) = t.first() {
                assert_eq!(h.token, token, "cut {at}: a state that was never written");
                saw[0] = true;
            } else {
                saw[1] = true;
            }
            assert!(
                dump.holders
                    .iter()
                    .any(|h| h.resource.as_str() == "u" && h.token == keep.token()),
                "cut {at} {tear:?}: an unrelated lock was lost"
            );
        }
    }
    assert_eq!(
        saw,
        [true, true],
        "both the state before and after the release occur"
    );
    drop(keep);
}

#[test]
fn the_heartbeat_keeps_a_short_lease_alive() {
    let (_d, ws) = ws();
    let g = FileLock::new(&ws, r("hb"))
        .ttl(Duration::from_millis(150))
        .heartbeat(true)
        .try_acquire("long job")
        .unwrap()
        .unwrap();
    // Watch the clock (no sleeping guess) until well past the first lease end.
    let first_end = g.info().expires_at;
    while now_ms() <= first_end + 300 {
        std::thread::yield_now();
    }
    check_fencing_token(&ws, &r("hb"), g.token()).unwrap();
    assert!(!g.is_lost());
    assert!(
        FileLock::new(&ws, r("hb"))
            .try_acquire("x")
            .unwrap()
            .is_none()
    );
    g.release().unwrap();
}

#[tokio::test]
async fn a_dropped_async_wait_leaves_the_queue() {
    let (_d, ws) = ws();
    let g = FileLock::new(&ws, r("q"))
        .try_acquire("hold")
        .unwrap()
        .unwrap();
    let table = LockTable::open(&ws).unwrap();
    {
        let lock = FileLock::new(&ws, r("q")).wait(Duration::from_secs(60));
        let fut = lock.acquire("wait");
        tokio::pin!(fut);
        // Poll until it has queued, then drop it.
        loop {
            tokio::select! {
                r = &mut fut => panic!("acquired while held: {:?}", r.map(|g| g.token())),
                () = tokio::task::yield_now() => {}
            }
            if !table.snapshot().unwrap().waiters.is_empty() {
                break;
            }
        }
    }
    // The withdrawal runs when the blocking step finishes: wait for it by observation.
    while !table.snapshot().unwrap().waiters.is_empty() {
        tokio::task::yield_now().await;
    }
    g.release().unwrap();
    assert!(
        FileLock::new(&ws, r("q"))
            .try_acquire("next")
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_dropped_async_acquire_that_was_granted_meanwhile_releases_the_lock() {
    use std::future::Future as _;
    let (_d, ws) = ws();
    // Hold the guard on a descriptor of our own, so the acquisition's step blocks on the
    // blocking pool until we let it go.
    let guard = maos_core::fsx::open_lock_file(&ws.locks_dir().join("guard")).unwrap();
    guard.lock().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    {
        let _enter = rt.enter();
        let lock = FileLock::new(&ws, r("cancel")).agent(agent("a"));
        let mut fut = Box::pin(lock.acquire("then cancelled"));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        drop(fut); // the caller gives up (a timeout, a select)
    }
    guard.unlock().unwrap();
    drop(rt); // waits for the blocking step, which grants the lock
    let snap = LockTable::open(&ws).unwrap().snapshot().unwrap();
    assert!(
        snap.holders.is_empty(),
        "a lock granted to a dropped acquisition stays held: {:?}",
        snap.holders
    );
}

#[test]
fn huge_ttl_and_wait_are_clamped_not_a_panic() {
    let (_d, ws) = ws();
    let g = FileLock::new(&ws, r("huge"))
        .agent(agent("a"))
        .ttl(Duration::MAX)
        .wait(Duration::MAX)
        .acquire_blocking("forever")
        .unwrap();
    assert!(g.info().expires_at > now_ms());
    let mut g2 = g;
    g2.renew().unwrap();
    assert!(g2.info().expires_at > now_ms());
    let renewed = LockTable::open(&ws)
        .unwrap()
        .renew(&r("huge"), &agent("a"), Some(Duration::MAX))
        .unwrap();
    assert!(renewed[0].expires_at > now_ms());
    g2.release().unwrap();
}

#[test]
fn an_oversized_purpose_or_metadata_is_refused_and_the_table_keeps_working() {
    let (_d, ws) = ws();
    let huge = "x".repeat(crate::store::RECORD_TEXT_LIMIT + 1);
    let err = FileLock::new(&ws, r("big"))
        .agent(agent("a"))
        .try_acquire(&huge)
        .expect_err("a purpose larger than the limit is an error");
    assert!(
        matches!(&err, Error::TooLarge { resource, what, .. } if resource.as_str() == "big" && *what == "purpose"),
        "{err}"
    );
    let err = FileLock::new(&ws, r("big"))
        .agent(agent("a"))
        .metadata("k", huge.clone())
        .try_acquire("ok")
        .expect_err("metadata larger than the limit is an error");
    assert!(
        matches!(&err, Error::TooLarge { what, .. } if *what == "metadata"),
        "{err}"
    );
    let err = crate::AdvisoryLock::new(&ws)
        .agent(agent("a"))
        .request(r("big"), &huge, maos_core::Priority::Normal)
        .expect_err("an advisory purpose larger than the limit is an error");
    assert!(matches!(&err, Error::TooLarge { .. }), "{err}");
    assert!(
        FileLock::new(&ws, r("small"))
            .try_acquire("fine")
            .unwrap()
            .is_some()
    );
}

/// Issue 11, item 3: a flipped byte in any table file (the header, a bucket, a document, a
/// reservation slot) while A holds W2 must never grant W2 to B, nor hand out a token already
/// issued: the operation either works on the intact state, rebuilds from the documents, or
/// refuses with an error that points at `maos doctor`.
#[test]
fn a_flipped_byte_anywhere_never_grants_a_held_lock_nor_repeats_a_token() {
    use crate::store::layout::{BUCKET, BUCKETS_AT, CELL};
    let (_d, ws) = ws();
    let long = Duration::from_secs(86_400);
    // A holds W2 as a process lock and L as a lease, and a pattern lock.
    let hold = |s: &str| FileLock::new(&ws, r(s)).agent(agent("A")).ttl(long);
    let w2 = hold("w2").try_acquire("edit").unwrap().unwrap();
    let lease = hold("lease/x").acquire_lease("l").unwrap();
    let pat = hold("p/**").try_acquire("p").unwrap().unwrap();
    let top = w2.token().max(lease.info.token).max(pat.token());
    let live_name = w2.info().live.clone().unwrap();
    let locks = ws.locks_dir();
    let index = std::fs::read(locks.join("index")).unwrap();
    let cells = std::fs::read(locks.join("cells")).unwrap();
    let tokens = std::fs::read(locks.join("tokens")).unwrap();
    // The bytes that matter: the header, every bucket in use, every cell, both slots.
    let mut targets: Vec<(&str, usize)> = (0..160).map(|i| ("index", i)).collect();
    for b in 0..((index.len() as u64 - BUCKETS_AT) / BUCKET) {
        let at = (BUCKETS_AT + b * BUCKET) as usize;
        if index[at..at + BUCKET as usize].iter().any(|&x| x != 0) {
            targets.extend((at..at + BUCKET as usize).map(|i| ("index", i)));
        }
    }
    // Every byte of every extent header and of every document.
    targets.extend(
        (0..cells.len())
            .filter(|i| (*i as u64) % CELL < 32 || cells[*i] != 0)
            .map(|i| ("cells", i)),
    );
    targets.extend(
        (0..32)
            .chain(512..544)
            .filter(|i| *i < tokens.len())
            .map(|i| ("tokens", i)),
    );
    let mut outcomes = [0usize; 3]; // blocked, refused, rebuilt-and-blocked
    let copy = crate::store::test_dir();
    let root = copy.path();
    Workspace::init(root).unwrap();
    let copy_ws = Workspace::open(root).unwrap();
    let dst = copy_ws.locks_dir();
    std::fs::create_dir_all(dst.join("live")).unwrap();
    // A's process is alive in the copy too: hold its liveness file.
    let f = std::fs::File::create(dst.join("live").join(&live_name)).unwrap();
    f.try_lock().unwrap();
    for (file, at) in targets {
        // The same directory each time (its files rewritten in place).
        for (name, bytes) in [("index", &index), ("cells", &cells), ("tokens", &tokens)] {
            let mut b = bytes.clone();
            if name == file {
                b[at] ^= 0x10;
            }
            std::fs::write(dst.join(name), b).unwrap();
        }
        let b = FileLock::new(&copy_ws, r("w2")).agent(agent("B"));
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.try_acquire("steal")))
            .unwrap_or_else(|_| panic!("{file}[{at}]: panicked"));
        match got {
            Ok(Some(g)) => panic!(
                "{file}[{at}]: B was granted W2 (token {}) while A holds it",
                g.token()
            ),
            Ok(None) => outcomes[0] += 1,
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("maos doctor") || matches!(e, Error::Core(_) | Error::Io { .. }),
                    "{file}[{at}]: {text}"
                );
                outcomes[1] += 1;
            }
        }
        for res in ["lease/x", "p/q"] {
            let c = FileLock::new(&copy_ws, r(res)).agent(agent("C"));
            if let Ok(Some(g)) = c.try_acquire("steal") {
                panic!("{file}[{at}]: C was granted {res} (token {})", g.token());
            }
        }
        // A fresh resource, if the table works at all, gets a token above every one issued.
        if let Ok(Some(g)) = FileLock::new(&copy_ws, r("fresh"))
            .agent(agent("D"))
            .try_acquire("new")
        {
            assert!(
                g.token() > top,
                "{file}[{at}]: token {} repeats (top {top})",
                g.token()
            );
            outcomes[2] += 1;
            std::mem::forget(g); // its table copy is rewritten next
        }
    }
    drop(f);
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    drop((w2, pat));
}

/// Issue 12: counters near their limits never make the table unusable: granting stops with
/// a clear error once no token is left, while releasing and listing go on working.
#[test]
fn exhausted_counters_are_a_clear_error_and_the_table_stays_usable() {
    let (_d, ws) = ws();
    let g = FileLock::new(&ws, r("a"))
        .agent(agent("x"))
        .try_acquire("one")
        .unwrap()
        .unwrap();
    let shared = Shared::of(&ws).unwrap();
    shared
        .inspect(true, |files| {
            crate::store::table::write_reservation_both(files, crate::store::table::ID_LIMIT - 1)
        })
        .unwrap();
    // A restart: the counter continues above the reservation.
    shared
        .rebuild_now(crate::store::table::Cause::Reboot)
        .unwrap();
    let last = FileLock::new(&ws, r("b"))
        .agent(agent("x"))
        .try_acquire("last")
        .unwrap()
        .unwrap();
    assert_eq!(last.token().0, crate::store::table::ID_LIMIT);
    let err = FileLock::new(&ws, r("c"))
        .agent(agent("x"))
        .try_acquire("none left")
        .unwrap_err();
    assert!(matches!(err, Error::Exhausted { .. }), "{err}");
    assert!(
        err.to_string().contains("2^63") && err.to_string().contains("released"),
        "{err}"
    );
    // Still readable and releasable.
    assert_eq!(
        LockTable::open(&ws)
            .unwrap()
            .snapshot()
            .unwrap()
            .holders
            .len(),
        2
    );
    g.release().unwrap();
    last.release().unwrap();
    assert!(
        LockTable::open(&ws)
            .unwrap()
            .snapshot()
            .unwrap()
            .holders
            .is_empty()
    );
}

/// Issue 13: taking a lock the agent already holds as a lease returns at once (the same
/// lease, renewed) or fails at once saying so; it never waits out the wait.
#[test]
fn reacquiring_an_own_lease_returns_or_fails_at_once() {
    let (_d, ws) = ws();
    let (tx, rx) = std::sync::mpsc::channel();
    let ws2 = ws.clone();
    std::thread::spawn(move || {
        let long = Duration::from_secs(3600);
        let l = |s: &str| {
            FileLock::new(&ws2, r(s))
                .agent(agent("a"))
                .wait(long)
                .ttl(long)
        };
        let first = l("x").acquire_lease("one").unwrap();
        let again = l("x").acquire_lease("two").unwrap();
        let shared = l("x").shared().acquire_lease("read");
        let process = l("x").acquire_blocking("process");
        let below = l("x/y").acquire_lease("below");
        let _ = tx.send((
            first,
            again,
            shared.map(|_| ()),
            process.map(|_| ()),
            below.map(|_| ()),
        ));
    });
    let (first, again, shared, process, below) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("re-acquiring an own lease waited instead of answering at once");
    assert!(!first.reentered);
    assert!(again.reentered);
    assert_eq!(again.info.token, first.info.token);
    assert_eq!(again.info.purpose, "two");
    for (what, r) in [("shared", shared), ("process", process), ("below", below)] {
        let err = r.expect_err(what);
        assert!(matches!(err, Error::AlreadyHeld { .. }), "{what}: {err}");
        assert!(
            err.to_string().contains("already holds x as a lease"),
            "{what}: {err}"
        );
    }
    // Another agent waits as usual (and times out naming the lease).
    let err = FileLock::new(&ws, r("x"))
        .agent(agent("b"))
        .wait(Duration::from_millis(10))
        .acquire_blocking("other")
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("agent a (lease) holds x"), "{err}");
}

/// Issue 11, item 6: a process stopped (SIGSTOP) while it holds the table's guard does not
/// make others hang: each acquisition gives up at its wait and names the stopped process.
#[test]
fn a_stopped_guard_holder_does_not_hang_anyone() {
    let (_d, ws) = ws();
    let guard_path = ws.locks_dir().join("guard");
    std::fs::write(&guard_path, "").unwrap();
    // flock(1) takes the guard and runs a command that stops flock itself.
    let mut child = std::process::Command::new("flock")
        .arg(&guard_path)
        .args(["-c", "kill -STOP $PPID"])
        .spawn()
        .expect("flock(1) from util-linux");
    let lock = maos_core::fsx::LockFile::open(&guard_path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !maos_core::fsx::holders_of(lock.file())
        .iter()
        .any(|h| h.is_stopped())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the guard holder never stopped"
        );
        std::thread::yield_now();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let ws2 = ws.clone();
    std::thread::spawn(move || {
        let l = FileLock::new(&ws2, r("any")).agent(agent("a"));
        let waited = l
            .clone()
            .wait(Duration::from_millis(300))
            .acquire_blocking("w");
        let tried = l.try_acquire("t");
        let _ = tx.send((waited.map(|_| ()), tried.map(|_| ())));
    });
    let got = rx.recv_timeout(Duration::from_secs(60));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    child.wait().unwrap();
    let (waited, tried) = got.expect("a lock operation hung behind a stopped process");
    for (what, r) in [("acquire --wait 300ms", waited), ("try_acquire", tried)] {
        let err = r.expect_err(what);
        assert!(err.is_timeout(), "{what}: {err}");
        let text = err.to_string();
        assert!(
            text.contains("stopped") && text.contains("kill -CONT"),
            "{what}: {text}"
        );
    }
}

/// Costs follow what an operation touches: with a damaged document of an unrelated lock in
/// the table, operations on other resources (taking, releasing, checking a token, the
/// conflict query) never read it, so they keep working; a listing reads everything and says
/// where the damage is.
#[test]
fn operations_read_only_the_records_they_touch() {
    let (_d, ws) = ws();
    let far = FileLock::new(&ws, r("far/away.rs"))
        .agent(agent("x"))
        .acquire_lease("far")
        .unwrap();
    let _ = far;
    let near = FileLock::new(&ws, r("src/lib.rs"))
        .agent(agent("y"))
        .try_acquire("near")
        .unwrap()
        .unwrap();
    // Damage far/away.rs's document (its last byte).
    let cells = ws.locks_dir().join("cells");
    let mut bytes = std::fs::read(&cells).unwrap();
    let pos = bytes.windows(11).position(|w| w == b"far/away.rs").unwrap();
    let end = bytes[pos..]
        .iter()
        .position(|&b| b == b'}')
        .map(|i| pos + i)
        .unwrap();
    bytes[end - 3] ^= 0x01;
    std::fs::write(&cells, bytes).unwrap();
    let table = LockTable::open(&ws).unwrap();
    let c = table
        .conflicting(&r("src/lib.rs"), LockMode::Exclusive)
        .unwrap();
    assert_eq!(c.len(), 1);
    // A directory with locks below it is the exception: finding them reads the documents
    // (and a damaged one there is reported, never skipped).
    let err = table
        .conflicting(&r("src"), LockMode::Exclusive)
        .unwrap_err();
    assert!(err.to_string().contains("maos doctor"), "{err}");
    check_fencing_token(&ws, &r("src/lib.rs"), near.token()).unwrap();
    let other = FileLock::new(&ws, r("src/main.rs"))
        .agent(agent("z"))
        .try_acquire("m")
        .unwrap()
        .unwrap();
    other.release().unwrap();
    near.release().unwrap();
    let err = table.snapshot().unwrap_err();
    assert!(err.to_string().contains("maos doctor"), "{err}");
}

/// The conflict query sees parents, children and overlapping patterns, nothing else.
#[test]
fn conflicting_finds_parents_children_and_patterns() {
    let (_d, ws) = ws();
    let hold = |s: &str, a: &str| {
        FileLock::new(&ws, r(s))
            .agent(agent(a))
            .acquire_lease("h")
            .unwrap()
    };
    hold("src", "parent");
    hold("docs/a/b.md", "child");
    hold("lib/*.rs", "pattern");
    hold("other/file", "unrelated");
    let t = LockTable::open(&ws).unwrap();
    let owners = |res: &str| -> Vec<String> {
        let mut v: Vec<String> = t
            .conflicting(&r(res), LockMode::Exclusive)
            .unwrap()
            .into_iter()
            .map(|h| h.owner.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(owners("src/main.rs"), ["parent"]);
    assert_eq!(owners("docs"), ["child"]);
    assert_eq!(owners("lib/x.rs"), ["pattern"]);
    assert_eq!(owners("lib/x.md"), Vec::<String>::new());
    assert_eq!(owners("**"), ["child", "parent", "pattern", "unrelated"]);
    assert_eq!(owners("nothing/here"), Vec::<String>::new());
}

/// Many locks: the index grows (a rebuild into more buckets) and everything stays found.
#[test]
fn thousands_of_locks_grow_the_index_and_stay_found() {
    let (_d, ws) = ws();
    let mut guards = Vec::new();
    for i in 0..3000 {
        guards.push(
            FileLock::new(&ws, r(&format!("d{}/f{i}", i % 7)))
                .agent(agent("x"))
                .try_acquire("many")
                .unwrap()
                .unwrap(),
        );
    }
    let t = LockTable::open(&ws).unwrap();
    assert_eq!(
        t.conflicting(&r("d3"), LockMode::Exclusive).unwrap().len(),
        3000 / 7 + 1
    );
    assert!(
        FileLock::new(&ws, r("d1/f1"))
            .agent(agent("y"))
            .try_acquire("no")
            .unwrap()
            .is_none()
    );
    for g in guards.drain(..1500) {
        g.release().unwrap();
    }
    assert_eq!(t.snapshot().unwrap().holders.len(), 1500);
    assert!(
        FileLock::new(&ws, r("d1/f1"))
            .agent(agent("y"))
            .try_acquire("yes")
            .unwrap()
            .is_some()
    );
}

/// `wait_child` renews the lease while the child runs (no heartbeat thread): a short lease
/// is never broken by a competitor meanwhile; after the child ends the lock is released.
#[test]
fn waiting_for_a_child_renews_a_short_lease() {
    let (_d, ws) = ws();
    let mut g = FileLock::new(&ws, r("child"))
        .agent(agent("a"))
        // Short, but not so short that a loaded machine (CI: two cores, tests in parallel)
        // delays a renewal past it: renewals come every third of it.
        .ttl(Duration::from_millis(400))
        .inheritable(true)
        .try_acquire("run")
        .unwrap()
        .unwrap();
    g.share_with_children().unwrap();
    let first_end = g.info().expires_at;
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 1.5"])
        .spawn()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stolen = {
        let (ws, stop) = (ws.clone(), stop.clone());
        std::thread::spawn(move || {
            let other = FileLock::new(&ws, r("child")).agent(agent("b"));
            // Keep trying past the first lease's end.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(t) = other.try_acquire("steal").unwrap() {
                    return Some(t.token());
                }
                std::thread::yield_now();
            }
            None
        })
    };
    let status = g.wait_child(&mut child).unwrap();
    assert!(status.success());
    assert!(now_ms() > first_end, "the child outlived the first lease");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        stolen.join().unwrap(),
        None,
        "the lock was taken while the child ran"
    );
    assert!(!g.is_lost());
    g.release().unwrap();
}

/// A guard whose lock is taken from it (an operator released it) learns so from its heartbeat:
/// `on_lost` is called once with the loss, and `is_lost` turns true.
#[test]
fn a_heartbeat_that_finds_its_lock_gone_tells_the_holder() {
    let (_d, ws) = ws();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx = std::sync::Mutex::new(tx);
    let g = FileLock::new(&ws, r("hb"))
        .agent(agent("a"))
        .ttl(Duration::from_millis(150))
        .heartbeat(true)
        .on_lost(move |e| {
            let _ = tx.lock().unwrap().send(e.to_string());
        })
        .try_acquire("long work")
        .unwrap()
        .unwrap();
    assert!(!g.is_lost());
    let gone = LockTable::open(&ws)
        .unwrap()
        .release(&r("hb"), &agent("a"), Some(g.token()))
        .unwrap();
    assert_eq!(gone.len(), 1);
    let why = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("on_lost called by the heartbeat");
    assert!(why.contains("hb"), "{why}");
    assert!(g.is_lost());
    assert!(g.release().is_err(), "releasing a lost lock says so");
    assert!(rx.try_recv().is_err(), "told once");
}

/// A change found by a scan of every document (releasing an agent's leases) that removes
/// `a/b` while another agent holds `a` (shared locks: they coexist): the count kept under `a`'s bucket is updated though
/// `a` itself did not change (its bucket was never looked up by the scan; this panicked).
#[test]
fn releasing_an_agents_leases_under_another_agents_prefix_lock() {
    let (_d, ws) = ws();
    let take = |who: &str, what: &str| {
        FileLock::new(&ws, r(what))
            .agent(agent(who))
            .shared()
            .try_acquire("lease")
            .unwrap()
            .unwrap()
            .detach()
            .unwrap()
    };
    take("y", "a");
    take("x", "a/b");
    take("x", "a/c/d");
    let table = LockTable::open(&ws).unwrap();
    let gone = table.release_agent(&agent("x")).unwrap();
    assert_eq!(gone.len(), 2);
    let held: Vec<String> = table
        .snapshot()
        .unwrap()
        .holders
        .iter()
        .map(|h| h.resource.to_string())
        .collect();
    assert_eq!(held, ["a"]);
    // The index still finds what is below `a` (nothing now) and lets x lock there again.
    take("x", "a/b");
}

/// "src/f250.rs" and its parent prefix "src" share a home bucket (445 of 1024): a lock that
/// creates both index entries in one change must not put both in one bucket.
#[test]
fn a_key_and_its_prefix_with_one_home_bucket_both_stay_findable() {
    let (_d, ws) = ws();
    let l = FileLock::new(&ws, r("src/f250.rs")).agent(agent("a"));
    let g = l.try_acquire("one").unwrap().unwrap();
    let other = FileLock::new(&ws, r("src/f250.rs")).agent(agent("b"));
    assert!(other.try_acquire("two").unwrap().is_none(), "two holders");
    g.release().unwrap();
    let g = other.try_acquire("two").unwrap().unwrap();
    g.release().unwrap();
}

/// An inheritable (`lock run`) request that waits has one liveness file from its wait to its
/// end: its waiter record and then its holder record name the same file, its wake-up file
/// is a second name of it (no new inode), and once released the file is kept as a spare
/// under a name no record can hold, while its old name probes as gone.
#[test]
fn an_inheritable_wait_uses_one_liveness_file_from_queue_to_release() {
    use std::os::unix::fs::MetadataExt;
    let (_d, ws) = ws();
    let res = r("run.rs");
    let dir = ws.locks_dir();
    let holder = FileLock::new(&ws, res.clone())
        .agent(agent("h"))
        .try_acquire("hold")
        .unwrap()
        .unwrap();
    let (live, ino) = std::thread::scope(|s| {
        let w = s.spawn(|| {
            FileLock::new(&ws, res.clone())
                .agent(agent("w"))
                .inheritable(true)
                .wait(Duration::from_secs(60))
                .acquire_blocking("run")
        });
        let waiter = loop {
            let snap = LockTable::open(&ws).unwrap().records().unwrap();
            if let Some(w) = snap.waiters.into_iter().next() {
                break w;
            }
            std::thread::yield_now();
        };
        let live = waiter.live.clone().unwrap();
        assert_ne!(Some(&live), holder.info().live.as_ref());
        let ino = std::fs::metadata(dir.join("live").join(&live))
            .unwrap()
            .ino();
        let wake = dir.join("wake").join(waiter.ticket.to_string());
        assert_eq!(std::fs::metadata(&wake).unwrap().ino(), ino);
        holder.release().unwrap();
        let g = w.join().unwrap().unwrap();
        assert_eq!(g.info().live.as_deref(), Some(live.as_str()));
        assert!(!wake.exists());
        g.release().unwrap();
        (live, ino)
    });
    assert!(!dir.join("live").join(&live).exists());
    let spare = std::fs::read_dir(dir.join("live"))
        .unwrap()
        .flatten()
        .find(|e| e.metadata().unwrap().ino() == ino)
        .expect("the liveness file is kept as a spare");
    assert!(crate::store::live::is_spare(
        spare.file_name().to_str().unwrap()
    ));
}
