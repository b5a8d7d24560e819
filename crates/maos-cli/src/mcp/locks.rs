//! Lock tools: acquire (held by this server until released or the session ends), release,
//! renew, list, check, deadlock check.

use std::time::Duration;

use maos_coordination::lock::{DeadlockDetector, Snapshot, VICTIM_RULE};
use maos_coordination::{FileLock, LockMode, LockTable, ResourceName};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Reply, Server, ToolError, ToolResult};

tool_group! {
    "lock_acquire" => acquire(Acquire):
        "Lock a file or path pattern (relative to the repository root, e.g. `src/api/user.rs` or \
         `src/api/**`) before editing it, so no other agent edits it meanwhile. Exclusive by \
         default; `shared` for read-only use. Waits up to `wait_seconds` (default 0: try once) \
         for other holders; fails with kind `busy` naming the holder otherwise. The lock is \
         held by this session until lock_release or the session ends, renewed automatically; \
         `token` is the fencing token to pass to writes that check it.",
    "lock_release" => release(Release):
        "Release a lock you hold (taken with lock_acquire, or by `maos lock acquire`).",
    "lock_renew" => renew(Renew):
        "Extend the lease of your locks (one resource, or all of them). Locks held by this \
         session are renewed automatically; this is for leases taken elsewhere.",
    "lock_list" => list(Empty):
        "List every lock held in the repository (holder, mode, purpose, lease end, token) and \
         the agents waiting for one.",
    "lock_check" => check(Check):
        "Check whether a file or pattern could be locked now (in the given mode) without \
         waiting: returns `free` and the conflicting holders.",
    "deadlock_check" => deadlock(Deadlock):
        "Look for deadlocks between agents waiting for each other's locks. With `resolve`, \
         the youngest wait of each cycle is aborted (that agent's lock_acquire fails with kind \
         `deadlock`; it should release what it holds and retry).",
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Acquire {
    /// Repository-relative path or pattern (`*` within a segment, `**` across segments).
    resource: String,
    /// Why you need it (shown to other agents who want it).
    purpose: String,
    /// Take a shared (read) lock instead of an exclusive one.
    #[serde(default)]
    shared: bool,
    /// Lease length in seconds (renewed automatically while this session lives; default 600).
    #[serde(default)]
    ttl_seconds: Option<u64>,
    /// How long to wait for other holders, in seconds (default 0, at most 3600).
    #[serde(default)]
    wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Release {
    /// The resource you locked.
    resource: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Renew {
    /// The resource (default: every lock you hold).
    #[serde(default)]
    resource: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Empty {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Check {
    /// Repository-relative path or pattern.
    resource: String,
    /// Check for a shared lock instead of an exclusive one.
    #[serde(default)]
    shared: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Deadlock {
    /// Abort the youngest wait of each cycle found.
    #[serde(default)]
    resolve: bool,
}

fn resource(s: &Server, r: &str) -> Result<ResourceName, ToolError> {
    ResourceName::in_workspace(s.ws().root(), r)
        .map_err(|e| ToolError::usage(format!("resource {r:?}: {e}")))
}

fn mode(shared: bool) -> LockMode {
    if shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    }
}

fn seconds(what: &str, v: f64, max: f64) -> Result<Duration, ToolError> {
    if !v.is_finite() || v < 0.0 || v > max {
        return Err(ToolError::usage(format!(
            "{what} must be between 0 and {max} seconds, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

async fn acquire(s: &Server, a: Acquire) -> ToolResult {
    let me = s.agent()?;
    let res = resource(s, &a.resource)?;
    let ttl = seconds(
        "ttl_seconds",
        a.ttl_seconds.unwrap_or(600) as f64,
        30.0 * 86_400.0,
    )?;
    let wait = seconds("wait_seconds", a.wait_seconds.unwrap_or(0.0), 3600.0)?;
    if let Some(g) = s.locks().get(res.as_str()) {
        let info = g.info().clone();
        return Reply::new(
            &info,
            format!("you already hold {res} (token {})", info.token),
        );
    }
    let lock = FileLock::new(s.ws(), res.clone())
        .agent(me)
        .mode(mode(a.shared))
        .ttl(ttl)
        .wait(wait)
        .heartbeat(true);
    // No wait: one look, without joining the queue (a queued instant could be taken for a
    // deadlock).
    let guard = if wait.is_zero() {
        let l = lock.clone();
        let purpose = a.purpose.clone();
        let got = s.blocking(move |_| Ok(l.try_acquire(&purpose)?)).await?;
        match got {
            Some(g) => g,
            None => {
                let ws = s.ws().clone();
                let r = res.clone();
                let holders = s
                    .blocking(move |_| Ok(LockTable::open(&ws)?.conflicting(&r, mode(a.shared))?))
                    .await?;
                let who = holders
                    .first()
                    .map(|h| {
                        format!(
                            "held by agent {} (purpose \"{}\", token {})",
                            h.owner, h.purpose, h.token
                        )
                    })
                    .unwrap_or_else(|| "busy".into());
                return Err(ToolError::new(
                    crate::exit::Exit::Busy,
                    format!("{res} is {who}; wait for it with wait_seconds, or message the holder"),
                ));
            }
        }
    } else {
        lock.acquire(&a.purpose).await?
    };
    let info = guard.info().clone();
    s.locks().insert(res.as_str().to_owned(), guard);
    Reply::new(
        &info,
        format!(
            "locked {res} (token {}); release it with lock_release",
            info.token
        ),
    )
}

async fn release(s: &Server, a: Release) -> ToolResult {
    let me = s.agent()?;
    let res = resource(s, &a.resource)?;
    let held = s.locks().remove(res.as_str());
    match held {
        Some(g) => {
            let info = g.info().clone();
            g.release()?;
            Reply::new(&json!({ "released": [info] }), format!("released {res}"))
        }
        None => {
            let ws = s.ws().clone();
            let released = s
                .blocking(move |_| Ok(LockTable::open(&ws)?.release(&res, &me, None)?))
                .await?;
            Reply::new(
                &json!({ "released": released }),
                format!("released {} lock(s) on {}", released.len(), a.resource),
            )
        }
    }
}

async fn renew(s: &Server, a: Renew) -> ToolResult {
    let me = s.agent()?;
    let mut renewed = Vec::new();
    {
        let mut held = s.locks();
        for (r, g) in held.iter_mut() {
            if a.resource.as_deref().is_none_or(|x| x == r) {
                g.renew()?;
                renewed.push(g.info().clone());
            }
        }
    }
    let ws = s.ws().clone();
    let target = a.resource.as_deref().map(|r| resource(s, r)).transpose()?;
    let leases = s
        .blocking(move |_| {
            let t = LockTable::open(&ws)?;
            Ok(match target {
                Some(r) => match t.renew(&r, &me, None) {
                    Ok(v) => v,
                    Err(maos_coordination::lock::Error::NotOwner { .. }) => Vec::new(),
                    Err(e) => return Err(e.into()),
                },
                None => t.renew_all(&me)?,
            })
        })
        .await?;
    renewed.extend(leases);
    if renewed.is_empty() {
        return Err(ToolError::new(
            crate::exit::Exit::Error,
            "you hold no lock to renew".to_owned(),
        ));
    }
    let n = renewed.len();
    Reply::new(
        &json!({ "renewed": renewed }),
        format!("renewed {n} lock(s)"),
    )
}

async fn list(s: &Server, _: Empty) -> ToolResult {
    let ws = s.ws().clone();
    let snap: Snapshot = s
        .blocking(move |_| Ok(LockTable::open(&ws)?.snapshot()?))
        .await?;
    let text = format!(
        "{} lock(s) held, {} waiter(s)",
        snap.holders.len(),
        snap.waiters.len()
    );
    Reply::new(&snap, text)
}

async fn check(s: &Server, a: Check) -> ToolResult {
    let res = resource(s, &a.resource)?;
    let ws = s.ws().clone();
    let m = mode(a.shared);
    let r2 = res.clone();
    let holders = s
        .blocking(move |_| Ok(LockTable::open(&ws)?.conflicting(&r2, m)?))
        .await?;
    let text = match holders.first() {
        None => format!("{res} is free"),
        Some(h) => format!("{res} is held by {} ({:?})", h.owner, h.mode),
    };
    Reply::new(
        &json!({ "free": holders.is_empty(), "holders": holders }),
        text,
    )
}

async fn deadlock(s: &Server, a: Deadlock) -> ToolResult {
    let me = s.agent()?;
    let ws = s.ws().clone();
    let found = s
        .blocking(move |_| {
            Ok(DeadlockDetector::new(&ws)
                .sender(me)
                .resolve(a.resolve)
                .check()?)
        })
        .await?;
    let text = if found.is_empty() {
        "no deadlock".to_owned()
    } else {
        format!("{} deadlock(s) found", found.len())
    };
    let code = if found.is_empty() {
        crate::exit::Exit::Ok
    } else {
        crate::exit::Exit::Deadlock
    };
    Ok(Reply::new(
        &json!({ "deadlock": !found.is_empty(), "cycles": found, "victim_rule": VICTIM_RULE }),
        text,
    )?
    .with_code(code))
}
