//! Lock tools: acquire (held by this server until released or the session ends), release,
//! renew, list, check, deadlock check.
//!
//! A lock taken here is held by this server's process on the files (a kernel lock, freed
//! when the process ends) and by its database session on PostgreSQL (freed when the session
//! ends: the process killed, the connection lost); everything else goes through the
//! backend's [`LockStore`].

use std::time::{Duration, Instant};

use maos_coordination::lock::{LockInfo, LockStore, Snapshot, VICTIM_RULE};
use maos_coordination::postgres::lock::{PgGuard, PgLock};
use maos_coordination::{FileLock, LockGuard, LockMode, ResourceName};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Reply, Server, ToolError, ToolResult};
use crate::exit::Exit;

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

/// A lock this server holds for its agent, on either backend.
pub(crate) enum Held {
    /// A kernel-backed lock of this process, renewed by its own heartbeat.
    File(LockGuard),
    /// A lock of this process's database session, renewed by [`renew_held`].
    Pg {
        guard: PgGuard,
        /// The lease length (renewed every third of it).
        ttl: Duration,
        /// When the next renewal is due.
        next: Instant,
    },
}

impl Held {
    fn pg(guard: PgGuard, ttl: Duration) -> Self {
        Self::Pg {
            guard,
            ttl,
            next: Instant::now() + ttl / 3,
        }
    }

    /// The lock record, as the lock table shows it.
    pub(crate) fn info(&self) -> LockInfo {
        match self {
            Self::File(g) => g.info().clone(),
            Self::Pg { guard, .. } => {
                maos_coordination::postgres::stores::lock_info(guard.info().clone())
            }
        }
    }

    /// Releases it (blocking: a PostgreSQL lock is released on the server).
    pub(crate) fn release(self) -> Result<(), ToolError> {
        match self {
            Self::File(g) => Ok(g.release()?),
            Self::Pg { guard, .. } => Ok(guard.release()?),
        }
    }

    /// Extends its lease (blocking).
    fn renew(&mut self) -> Result<(), ToolError> {
        match self {
            Self::File(g) => Ok(g.renew()?),
            Self::Pg { guard, ttl, next } => {
                guard.renew()?;
                *next = Instant::now() + *ttl / 3;
                Ok(())
            }
        }
    }
}

/// Renews the PostgreSQL locks this server holds, each every third of its lease, for as long
/// as the server runs (the file backend's guards renew themselves). A lock found lost (its
/// session ended, the connection lost) stays in the table: lock_release and lock_renew say
/// so.
pub(crate) async fn renew_held(s: Server) {
    loop {
        let now = Instant::now();
        let due = s
            .locks()
            .values()
            .filter_map(|h| match h {
                Held::Pg { guard, next, .. } if !guard.is_lost() => Some(*next),
                _ => None,
            })
            .min();
        let sleep = due.map_or(Duration::from_secs(1), |d| {
            d.saturating_duration_since(now).min(Duration::from_secs(1))
        });
        tokio::time::sleep(sleep).await;
        let r = s
            .blocking(|s| {
                let now = Instant::now();
                for (r, h) in s.locks().iter_mut() {
                    if let Held::Pg { guard, next, .. } = h
                        && *next <= now
                        && !guard.is_lost()
                        && let Err(e) = h.renew()
                    {
                        tracing::warn!(resource = %r, "cannot renew a lock: {}", e.message);
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!("lock renewal: {}", e.message);
        }
    }
}

fn store(s: &Server) -> Box<dyn LockStore> {
    s.backends().locks()
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

/// The busy error of a lock someone else holds: names the holder.
fn busy(res: &ResourceName, holders: &[LockInfo]) -> ToolError {
    let who = holders
        .first()
        .map(|h| {
            format!(
                "held by agent {} (purpose \"{}\", token {})",
                h.owner, h.purpose, h.token
            )
        })
        .unwrap_or_else(|| "busy".into());
    ToolError::new(
        Exit::Busy,
        format!("{res} is {who}; wait for it with wait_seconds, or message the holder"),
    )
}

/// A PostgreSQL wait that ended without the lock: busy (naming the holder) or a deadlock, as
/// with the files.
fn pg_wait_error(res: &ResourceName, e: maos_coordination::postgres::Error) -> ToolError {
    use maos_coordination::postgres::Error as PgError;
    match e {
        PgError::Timeout {
            waited_ms, blocker, ..
        } => ToolError::new(
            Exit::Busy,
            format!(
                "{res} is still {} after waiting {} ms; wait longer, or message the holder",
                blocker.map_or_else(
                    || "busy".to_owned(),
                    |b| format!("held by agent {} (purpose \"{}\")", b.owner, b.purpose)
                ),
                waited_ms
            ),
        ),
        e @ PgError::Deadlock { .. } => {
            ToolError::new(Exit::Deadlock, format!("{:#}", anyhow::Error::new(e)))
        }
        other => other.into(),
    }
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
    if s.locks().contains_key(res.as_str()) {
        let r = res.clone();
        let still = s.blocking(move |s| s.still_held(&r)).await?;
        if let Some(info) = still {
            return Reply::new(
                &info,
                format!("you already hold {res} (token {})", info.token),
            );
        }
    }
    let m = mode(a.shared);
    let held = match s.backends().postgres() {
        None => {
            let lock = FileLock::new(s.ws(), res.clone())
                .agent(me)
                .mode(m)
                .ttl(ttl)
                .wait(wait)
                .heartbeat(true);
            // No wait: one look, without joining the queue (a queued instant could be taken
            // for a deadlock).
            if wait.is_zero() {
                let purpose = a.purpose.clone();
                let got = s.blocking(move |_| Ok(lock.try_acquire(&purpose)?)).await?;
                match got {
                    Some(g) => Held::File(g),
                    None => {
                        let r = res.clone();
                        let holders = s
                            .blocking(move |s| Ok(store(&s).conflicting(&r, m)?))
                            .await?;
                        return Err(busy(&res, &holders));
                    }
                }
            } else {
                Held::File(lock.acquire(&a.purpose).await?)
            }
        }
        Some(pg) => {
            let lock = PgLock::new(pg, res.clone())
                .agent(me)
                .mode(m)
                .ttl(ttl)
                .wait(wait);
            let r = res.clone();
            let purpose = a.purpose.clone();
            // The library grants only under a liveness session that is alive at the grant
            // (one that ended unnoticed is replaced first), so the guard is the lock.
            s.blocking(move |s| {
                let g = if wait.is_zero() {
                    match lock.try_acquire(&purpose) {
                        Ok(Some(g)) => g,
                        Ok(None) => return Err(busy(&r, &store(&s).conflicting(&r, m)?)),
                        Err(e) => return Err(pg_wait_error(&r, e)),
                    }
                } else {
                    lock.acquire(&purpose).map_err(|e| pg_wait_error(&r, e))?
                };
                Ok(Held::pg(g, ttl))
            })
            .await?
        }
    };
    let info = held.info();
    let replaced = s.locks().insert(res.as_str().to_owned(), held);
    if let Some(old) = replaced {
        // Two calls for the same resource at once: the later one is kept.
        forget(s, old).await;
    }
    Reply::new(
        &info,
        format!(
            "locked {res} (token {}); release it with lock_release",
            info.token
        ),
    )
}

impl Server {
    /// The lock this server holds on `res`, if it still holds it (blocking: on PostgreSQL the
    /// server is asked). A lock found lost (its session ended, its lease ran out, a renewal
    /// failed) is forgotten, so that it is taken anew.
    fn still_held(&self, res: &ResourceName) -> Result<Option<LockInfo>, ToolError> {
        let mut held = self.locks();
        let Some(g) = held.get(res.as_str()) else {
            return Ok(None);
        };
        let lost = match g {
            Held::File(g) => g.is_lost(),
            Held::Pg { guard, .. } => {
                guard.is_lost()
                    || match guard.check() {
                        Ok(()) => false,
                        Err(maos_coordination::postgres::Error::StaleToken { .. }) => true,
                        Err(e) => return Err(e.into()),
                    }
            }
        };
        if !lost {
            return Ok(Some(g.info()));
        }
        tracing::warn!(resource = %res, "a lock this server held was lost; taking it again");
        if let Some(g) = held.remove(res.as_str()) {
            drop(held);
            if let Err(e) = g.release() {
                tracing::debug!("releasing a lost lock: {}", e.message);
            }
        }
        Ok(None)
    }
}

/// Releases a lock this server no longer keeps, on the blocking pool (a PostgreSQL lock is
/// released on the server, which must not be called from async code); a failure is logged.
async fn forget(s: &Server, g: Held) {
    let r = s.blocking(move |_| g.release()).await;
    if let Err(e) = r {
        tracing::debug!("releasing a lock no longer kept: {}", e.message);
    }
}

async fn release(s: &Server, a: Release) -> ToolResult {
    let me = s.agent()?;
    let res = resource(s, &a.resource)?;
    let held = s.locks().remove(res.as_str());
    match held {
        Some(g) => {
            let info = g.info();
            s.blocking(move |_| g.release()).await?;
            Reply::new(&json!({ "released": [info] }), format!("released {res}"))
        }
        None => {
            let released = s
                .blocking(move |s| Ok(store(&s).release(&res, &me, None)?))
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
    let target = a.resource.as_deref().map(|r| resource(s, r)).transpose()?;
    let renewed = s
        .blocking(move |s| {
            let mut renewed = Vec::new();
            {
                let mut held = s.locks();
                for (r, g) in held.iter_mut() {
                    if target.as_ref().is_none_or(|x| x.as_str() == r) {
                        g.renew()?;
                        renewed.push(g.info());
                    }
                }
            }
            // Leases taken elsewhere (`maos lock acquire`).
            let leases = match store(&s).renew(target.as_ref(), &me, None) {
                Ok(v) => v,
                Err(maos_coordination::lock::Error::NotOwner { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let mine: Vec<_> = renewed.iter().map(|r| r.token).collect();
            renewed.extend(leases.into_iter().filter(|l| !mine.contains(&l.token)));
            Ok(renewed)
        })
        .await?;
    if renewed.is_empty() {
        return Err(ToolError::new(
            Exit::Error,
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
    let snap: Snapshot = s.blocking(move |s| Ok(store(&s).snapshot()?)).await?;
    let text = format!(
        "{} lock(s) held, {} waiter(s)",
        snap.holders.len(),
        snap.waiters.len()
    );
    Reply::new(&snap, text)
}

async fn check(s: &Server, a: Check) -> ToolResult {
    let res = resource(s, &a.resource)?;
    let m = mode(a.shared);
    let r2 = res.clone();
    let holders = s
        .blocking(move |s| Ok(store(&s).conflicting(&r2, m)?))
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
    let found = s
        .blocking(move |s| Ok(store(&s).deadlocks(&me, false, a.resolve)?))
        .await?;
    let text = if found.is_empty() {
        "no deadlock".to_owned()
    } else {
        format!("{} deadlock(s) found", found.len())
    };
    let code = if found.is_empty() {
        Exit::Ok
    } else {
        Exit::Deadlock
    };
    let cycles: Vec<_> = found.into_iter().map(|(d, _)| d).collect();
    Ok(Reply::new(
        &json!({ "deadlock": !cycles.is_empty(), "cycles": cycles, "victim_rule": VICTIM_RULE }),
        text,
    )?
    .with_code(code))
}
