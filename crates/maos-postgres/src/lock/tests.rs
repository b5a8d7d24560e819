//! The lock table on a real server (the shared test server).

use super::*;
use crate::server::test_backend;

fn r(s: &str) -> ResourceName {
    ResourceName::new(s).unwrap()
}
fn a(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

#[test]
fn exclusive_shared_and_pattern_conflicts_with_growing_tokens() {
    let pg = test_backend("lock-conflicts").unwrap();
    let g = PgLock::new(&pg, r("src/api/**"))
        .agent(a("x"))
        .try_acquire("refactor")
        .unwrap()
        .unwrap();
    let other = PgLock::new(&pg, r("src/api/user.rs")).agent(a("y"));
    assert!(other.try_acquire("edit").unwrap().is_none());
    assert!(
        PgLock::new(&pg, r("src/main.rs"))
            .agent(a("y"))
            .try_acquire("edit")
            .unwrap()
            .is_some()
    );
    let t1 = g.token();
    g.release().unwrap();
    let g2 = other.try_acquire("edit").unwrap().unwrap();
    assert!(g2.token() > t1, "tokens only grow");
    let table = PgLockTable::new(&pg);
    table
        .check_fencing_token(&r("src/api/user.rs"), g2.token())
        .unwrap();
    let stale = g2.token();
    drop(g2);
    let err = table
        .check_fencing_token(&r("src/api/user.rs"), stale)
        .unwrap_err();
    assert!(matches!(err, Error::StaleToken { .. }), "{err}");
    // Shared locks coexist; an exclusive one waits for them.
    let s1 = PgLock::new(&pg, r("doc"))
        .shared()
        .agent(a("p"))
        .try_acquire("read")
        .unwrap()
        .unwrap();
    let s2 = PgLock::new(&pg, r("doc/a.md"))
        .shared()
        .agent(a("q"))
        .try_acquire("read")
        .unwrap()
        .unwrap();
    assert!(
        PgLock::new(&pg, r("doc/a.md"))
            .agent(a("w"))
            .try_acquire("write")
            .unwrap()
            .is_none()
    );
    assert_eq!(table.snapshot().unwrap().holders.len(), 2);
    drop((s1, s2));
    assert!(table.snapshot().unwrap().holders.is_empty());
}

/// A lock asked for after this process's session was terminated on the server, but
/// before the session thread noticed (its heartbeat is a minute here): granted under
/// the dead session it would look free to everyone else at once. It must be granted
/// under the new session instead, and only there.
#[test]
fn a_grant_is_never_made_under_a_session_that_already_ended() {
    let raw = crate::server::shared_url().unwrap();
    let url = crate::BackendUrl::parse(&raw).unwrap();
    let ns = crate::server::unique_namespace("lock-dead-session");
    let slow = crate::Options::default().heartbeat(Duration::from_secs(60));
    let pg = Pg::connect_with(&url, &ns, slow).unwrap();
    let other = Pg::connect(&url, &ns).unwrap();
    let mut admin = postgres::Client::connect(&raw, postgres::NoTls).unwrap();
    let terminate = |admin: &mut postgres::Client, key: i64| {
        let done: bool = admin
            .query_one(
                "SELECT pg_terminate_backend(backend_pid) FROM maos.sessions WHERE key = $1",
                &[&key],
            )
            .unwrap()
            .get(0);
        assert!(done);
        crate::server::wait_until(Duration::from_secs(30), || {
            !other.session_alive(key).unwrap()
        });
    };
    for (n, waiting) in [(0, false), (1, true)] {
        let old = pg.session_key().unwrap();
        terminate(&mut admin, old);
        let res = r(&format!("f{n}"));
        let lock = PgLock::new(&pg, res.clone())
            .agent(a("x"))
            .wait(Duration::from_secs(30));
        let g = if waiting {
            lock.acquire("edit").unwrap()
        } else {
            lock.try_acquire("edit").unwrap().unwrap()
        };
        let key = g.info().session_key.unwrap();
        assert_ne!(key, old, "granted under the session that ended");
        assert!(other.session_alive(key).unwrap());
        assert!(!g.is_lost());
        // One holder: the other process sees it held.
        assert!(
            PgLock::new(&other, res)
                .agent(a("y"))
                .try_acquire("edit")
                .unwrap()
                .is_none()
        );
    }
    // A waiter whose session ends while it waits queues again under the new one and
    // gets the lock when the holder lets go.
    let held = PgLock::new(&other, r("w"))
        .agent(a("y"))
        .try_acquire("hold")
        .unwrap()
        .unwrap();
    let waiter = {
        let pg = pg.clone();
        std::thread::spawn(move || {
            PgLock::new(&pg, r("w"))
                .agent(a("x"))
                .wait(Duration::from_secs(60))
                .acquire("after y")
                .map(|g| g.info().session_key)
        })
    };
    let table = PgLockTable::new(&other);
    crate::server::wait_until(Duration::from_secs(30), || {
        !table.snapshot().unwrap().waiters.is_empty()
    });
    terminate(&mut admin, pg.session_key().unwrap());
    drop(held);
    let key = waiter.join().unwrap().unwrap().unwrap();
    assert!(other.session_alive(key).unwrap());
}

#[test]
fn waiters_are_served_first_come_first_served() {
    let pg = test_backend("lock-fifo").unwrap();
    let holder = PgLock::new(&pg, r("f"))
        .agent(a("h"))
        .try_acquire("hold")
        .unwrap()
        .unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let table = PgLockTable::new(&pg);
    let mut threads = Vec::new();
    for (n, name) in ["first", "second", "third"].iter().enumerate() {
        let pg2 = pg.clone();
        let order = order.clone();
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            let g = PgLock::new(&pg2, r("f"))
                .agent(a(&name))
                .wait(Duration::from_secs(60))
                .acquire("turn")
                .unwrap();
            order.lock().unwrap().push(name);
            drop(g);
        }));
        // The next one starts only once this one is queued.
        while table.snapshot().unwrap().waiters.len() < n + 1 {
            std::thread::yield_now();
        }
    }
    holder.release().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["first", "second", "third"]);
    // try_acquire does not jump the queue.
    let h = PgLock::new(&pg, r("g"))
        .agent(a("h"))
        .try_acquire("x")
        .unwrap()
        .unwrap();
    let pg2 = pg.clone();
    let w = std::thread::spawn(move || {
        PgLock::new(&pg2, r("g"))
            .agent(a("w"))
            .wait(Duration::from_secs(60))
            .acquire("x")
            .map(|g| g.token())
    });
    while table.snapshot().unwrap().waiters.is_empty() {
        std::thread::yield_now();
    }
    drop(h);
    w.join().unwrap().unwrap();
}

#[test]
fn a_lease_ends_on_the_servers_clock_and_the_holder_learns_it() {
    let pg = test_backend("lock-lease").unwrap();
    let mut g = PgLock::new(&pg, r("f"))
        .agent(a("slow"))
        .ttl(Duration::from_millis(300))
        .try_acquire("slow work")
        .unwrap()
        .unwrap();
    g.renew().unwrap();
    // A waiter gets the lock once the lease runs out (woken by its timer).
    let g2 = PgLock::new(&pg, r("f"))
        .agent(a("next"))
        .wait(Duration::from_secs(30))
        .acquire("after the lease")
        .unwrap();
    assert!(g2.token() > g.token());
    let err = g.renew().unwrap_err();
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
    assert!(err.to_string().contains("next"), "{err}");
    let err = PgLockTable::new(&pg)
        .check_fencing_token(&r("f"), g.token())
        .unwrap_err();
    assert!(matches!(err, Error::StaleToken { .. }));
    drop(g); // releasing a lost lock changes nothing
    assert_eq!(PgLockTable::new(&pg).snapshot().unwrap().holders.len(), 1);
}

#[test]
fn timeouts_name_the_holder_and_withdraw_the_wait() {
    let pg = test_backend("lock-timeout").unwrap();
    let _g = PgLock::new(&pg, r("f"))
        .agent(a("owner"))
        .try_acquire("long job")
        .unwrap()
        .unwrap();
    let err = PgLock::new(&pg, r("f"))
        .agent(a("w"))
        .wait(Duration::from_millis(50))
        .acquire("x")
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("owner") && msg.contains("long job"), "{msg}");
    assert!(PgLockTable::new(&pg).snapshot().unwrap().waiters.is_empty());
}

#[test]
fn agent_leases_outlive_the_session_until_released() {
    let url = crate::BackendUrl::parse(&crate::server::shared_url().unwrap()).unwrap();
    let ns = crate::server::unique_namespace("lock-agent");
    let info = {
        let pg = Pg::connect(&url, &ns).unwrap();
        PgLock::new(&pg, r("f"))
            .agent(a("cli"))
            .acquire_lease("edit")
            .unwrap()
    };
    // The process (its backend and session) is gone; the lease stays.
    let pg = Pg::connect(&url, &ns).unwrap();
    let table = PgLockTable::new(&pg);
    assert_eq!(table.snapshot().unwrap().holders, vec![info.clone()]);
    assert_eq!(
        table
            .renew_all(&a("cli"), Some(Duration::from_secs(5)))
            .unwrap()
            .len(),
        1
    );
    let err = table.release(&r("f"), &a("other"), None).unwrap_err();
    assert!(matches!(err, Error::NotOwner { .. }), "{err}");
    assert!(err.to_string().contains("cli"), "{err}");
    assert_eq!(table.release_agent(&a("cli")).unwrap().len(), 1);
    assert!(table.snapshot().unwrap().holders.is_empty());
}

#[test]
fn a_deadlock_between_two_agents_is_found_and_resolved() {
    let pg = test_backend("lock-deadlock").unwrap();
    let gx = PgLock::new(&pg, r("x"))
        .agent(a("alice"))
        .try_acquire("x")
        .unwrap()
        .unwrap();
    let gy = PgLock::new(&pg, r("y"))
        .agent(a("bob"))
        .try_acquire("y")
        .unwrap()
        .unwrap();
    let table = PgLockTable::new(&pg);
    let pg1 = pg.clone();
    let t1 = std::thread::spawn(move || {
        PgLock::new(&pg1, r("y"))
            .agent(a("alice"))
            .wait(Duration::from_secs(60))
            .acquire("y")
            .map(|g| g.token())
    });
    while table.snapshot().unwrap().waiters.is_empty() {
        std::thread::yield_now();
    }
    let pg2 = pg.clone();
    let t2 = std::thread::spawn(move || {
        PgLock::new(&pg2, r("x"))
            .agent(a("bob"))
            .wait(Duration::from_secs(60))
            .acquire("x")
            .map(|g| g.token())
    });
    while table.snapshot().unwrap().waiters.len() < 2 {
        std::thread::yield_now();
    }
    let found = PgDeadlockDetector::new(&pg).check().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].involved_agents, [a("alice"), a("bob")]);
    assert_eq!(found[0].victim.waiter, a("bob"), "the youngest wait");
    let mut sub = crate::comm::PgSubscription::new(&pg, &[DEADLOCK_TOPIC], 0).unwrap();
    let resolved = PgDeadlockDetector::new(&pg)
        .resolve(true)
        .broadcast(a("monitor"))
        .check()
        .unwrap();
    assert!(resolved[0].applied);
    let err = t2.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::Deadlock { .. }), "{err}");
    // The victim's wait left the queue (it would block every later request for x,
    // the victim's own retry included); alice's wait is still there.
    let waiters = table.snapshot().unwrap().waiters;
    assert_eq!(waiters.len(), 1, "{waiters:?}");
    assert_eq!(waiters[0].agent, a("alice"));
    drop(gx); // bob gave up; alice still waits for y
    drop(gy);
    t1.join().unwrap().unwrap();
    // Bob retries x, now free: nothing of his aborted wait stands in the way.
    let again = PgLock::new(&pg, r("x"))
        .agent(a("bob"))
        .try_acquire("x again")
        .unwrap();
    assert!(again.is_some(), "bob's retry is blocked");
    let notes = sub.poll::<Deadlock>().unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].message.payload.victim.waiter, a("bob"));
}
