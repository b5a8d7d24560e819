//! Power cuts (maos_core::fsx::sim) at hundreds of points of a concurrent workload
//! (thousands with `MAOS_SLOW_TESTS=1`): after every cut and restart, every token issued
//! later is above every token issued before (acknowledged or not), no lock has two holders,
//! and every acknowledged lease that was not being released is still held.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maos_core::fsx::sim::{Cut, Recording};
use maos_core::{AgentId, ResourceName, Workspace};

use super::Shared;
use super::ops::{self, Hold, Request, Step, conflicts};
use crate::{FencingToken, FileLock, LockTable};

fn slow() -> bool {
    std::env::var("MAOS_SLOW_TESTS").is_ok_and(|v| v == "1")
}

const RESOURCES: [&str; 7] = ["a", "a/b", "a/b/c", "d", "p/**", "a/*.rs", "e/f"];

#[derive(Debug, Clone)]
struct Grant {
    /// Recording length when the operation started (it may have issued its token from then
    /// on).
    start: usize,
    token: u64,
}

#[derive(Debug, Clone)]
struct Lease {
    /// Recording length when the grant was acknowledged.
    acked: usize,
    /// Recording length when its release started (`usize::MAX`: never).
    released: usize,
    resource: String,
    agent: String,
    token: u64,
}

#[derive(Default)]
struct Log {
    grants: Vec<Grant>,
    leases: Vec<Lease>,
}

/// A tiny deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[(self.next() % v.len() as u64) as usize]
    }
}

fn workload(ws: &Workspace, rec: &Recording, log: &Mutex<Log>, thread: u64, ops_n: usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (thread + 1).wrapping_mul(0x2545_f491));
    let agent = AgentId::new(format!("t{thread}")).unwrap();
    let table = LockTable::open(ws).unwrap();
    let mut held: Vec<crate::LockGuard> = Vec::new();
    let mut leases: Vec<(usize, String, u64)> = Vec::new(); // (index in log, resource, token)
    for _ in 0..ops_n {
        let res = ResourceName::new(rng.pick(&RESOURCES)).unwrap();
        let lock = FileLock::new(ws, res.clone())
            .agent(agent.clone())
            .ttl(Duration::from_secs(3600));
        match rng.next() % 6 {
            0 | 1 => {
                let start = rec.len();
                match lock.try_acquire("w") {
                    Ok(Some(g)) => {
                        log.lock().unwrap().grants.push(Grant {
                            start,
                            token: g.token().0,
                        });
                        held.push(g);
                    }
                    Ok(None) | Err(crate::Error::AlreadyHeld { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            2 => {
                let start = rec.len();
                match lock.wait(Duration::ZERO).acquire_lease("lease") {
                    Ok(g) => {
                        let acked = rec.len();
                        let mut l = log.lock().unwrap();
                        if !g.reentered {
                            l.grants.push(Grant {
                                start,
                                token: g.info.token.0,
                            });
                            l.leases.push(Lease {
                                acked,
                                released: usize::MAX,
                                resource: res.to_string(),
                                agent: agent.to_string(),
                                token: g.info.token.0,
                            });
                            leases.push((l.leases.len() - 1, res.to_string(), g.info.token.0));
                        }
                    }
                    Err(e) if e.is_timeout() || matches!(e, crate::Error::AlreadyHeld { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            3 => {
                if !held.is_empty() {
                    let g = held.remove((rng.next() % held.len() as u64) as usize);
                    g.release().unwrap();
                }
            }
            4 => {
                if !leases.is_empty() {
                    let (i, r, t) = leases.remove((rng.next() % leases.len() as u64) as usize);
                    log.lock().unwrap().leases[i].released = rec.len();
                    table
                        .release(
                            &ResourceName::new(&r).unwrap(),
                            &agent,
                            Some(FencingToken(t)),
                        )
                        .unwrap();
                }
            }
            _ => {
                // A short wait in line (a queue entry, then a withdrawal or a grant).
                let start = rec.len();
                match lock
                    .wait(Duration::from_millis(2))
                    .acquire_blocking("waiter")
                {
                    Ok(g) => {
                        log.lock().unwrap().grants.push(Grant {
                            start,
                            token: g.token().0,
                        });
                        g.release().unwrap();
                    }
                    Err(e) if e.is_timeout() || matches!(e, crate::Error::AlreadyHeld { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
    drop(held);
}

#[test]
fn power_cuts_never_repeat_a_token_nor_leave_two_holders_nor_lose_a_lease() {
    let (cuts, ops_n) = if slow() { (3000, 120) } else { (300, 40) };
    let d = super::test_dir();
    let ws = Workspace::init(d.path()).unwrap();
    let rec = Arc::new(Recording::start(ws.root()).unwrap());
    let log = Arc::new(Mutex::new(Log::default()));
    // Every id the table hands out (tickets and tokens), with the recording's length at that
    // moment: issued before a cut at `at` when that length is at most `at`.
    let issued: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    {
        let (issued, rec, dir) = (issued.clone(), rec.clone(), ws.locks_dir());
        *super::table::ISSUE_HOOK.lock().unwrap() = Some(Box::new(move |d, id| {
            if d == dir {
                issued.lock().unwrap().push((rec.len(), id));
            }
        }));
    }
    std::thread::scope(|s| {
        for t in 0..4 {
            let (ws, rec, log) = (&ws, &*rec, &log);
            s.spawn(move || workload(ws, rec, log, t, ops_n));
        }
    });
    *super::table::ISSUE_HOOK.lock().unwrap() = None;
    let log = log.lock().unwrap();
    let issued = issued.lock().unwrap();
    // The hook saw every token the workload was handed, no later than the operation began.
    for g in &log.grants {
        assert!(
            issued
                .iter()
                .any(|(at, id)| *id == g.token && *at >= g.start),
            "token {} was handed out without the table issuing it",
            g.token
        );
    }
    assert!(
        log.grants.len() > 20,
        "the workload granted too little: {}",
        log.grants.len()
    );
    assert!(!log.leases.is_empty());
    let mut checked_leases = 0;
    for seed in 0..cuts {
        let cut = if seed % 10 == 0 {
            Cut::durable_only(rec.random_cut(seed).at)
        } else {
            rec.random_cut(seed)
        };
        let img = super::test_dir();
        rec.image(&cut, img.path()).unwrap();
        let ws2 = Workspace::open(img.path()).unwrap();
        // The machine restarted: a new boot id.
        let shared = Shared::of_dir(&ws2.locks_dir(), &format!("sim-boot-{seed}")).unwrap();
        let before = issued
            .iter()
            .filter(|(at, _)| *at <= cut.at)
            .map(|(_, id)| *id)
            .max()
            .unwrap_or(0);

        let snap = ops::snapshot(&shared)
            .unwrap_or_else(|e| panic!("cut {cut:?}: the table does not open: {e}"));
        // No two conflicting holders.
        for (i, a) in snap.holders.iter().enumerate() {
            for b in &snap.holders[i + 1..] {
                assert!(
                    !conflicts(&a.resource, a.mode, &b.resource, b.mode),
                    "cut {cut:?}: two holders: {a:?} and {b:?}"
                );
            }
        }
        // Every acknowledged lease not being released is there, with its token.
        for l in log
            .leases
            .iter()
            .filter(|l| l.acked <= cut.at && l.released > cut.at)
        {
            assert!(
                snap.holders
                    .iter()
                    .any(|h| h.resource.as_str() == l.resource
                        && h.owner.as_str() == l.agent
                        && h.token.0 == l.token),
                "cut {cut:?}: acknowledged lease lost: {l:?}; table: {:?}",
                snap.holders
            );
            checked_leases += 1;
        }
        // New tokens are above every token issued before the cut.
        let mut fresh = BTreeMap::new();
        for (i, r) in RESOURCES.iter().chain(["fresh/x"].iter()).enumerate() {
            let res = ResourceName::new(*r).unwrap();
            let agent = AgentId::new(format!("after-{i}")).unwrap();
            let req = Request {
                resource: &res,
                mode: crate::LockMode::Exclusive,
                agent: &agent,
                purpose: "after the cut",
                metadata: &BTreeMap::new(),
                ttl_ms: 60_000,
                hold: Hold::Lease,
            };
            let mut ticket = None;
            if let Step::Granted(g) = ops::take(
                &shared,
                &req,
                &mut ticket,
                false,
                Duration::from_secs(5),
                &mut None,
            )
            .unwrap()
            {
                assert!(
                    g.info.token.0 > before,
                    "cut {cut:?}: token {} issued after the cut, {before} before it",
                    g.info.token.0
                );
                fresh.insert(*r, g.info.token.0);
            }
        }
        assert!(fresh.contains_key("fresh/x"));
    }
    assert!(
        checked_leases > 0,
        "no cut fell after an acknowledged lease"
    );
}
