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
