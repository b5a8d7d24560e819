//! [`Live`]: the current [`Snapshot`] of a workspace, refreshed when files change.
//!
//! One background task owns the [`Collector`]: it sleeps until a file event (through
//! [`crate::watch`]), the next moment a lease runs out, or the fallback interval (process
//! deaths leave no file event), coalesces the burst of events one write causes for
//! [`DEBOUNCE`], re-reads what changed on a blocking thread, and publishes a new version only
//! when the content differs. The merge prediction (git, possibly slow) runs on its own
//! blocking task, started when the agents' branches or the repository's refs change, so it
//! never delays the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use maos_core::{AgentId, Workspace, now_ms};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use maos_merge::backend::MergeBackend;

use crate::Result;
use crate::snapshot::{Changed, Collector, MergeInputs, MergesView, Snapshot};
use crate::stores::{Remote, Stores, Wakes};

/// How long a burst of file events is gathered before re-reading (one write of a store makes
/// several events).
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// How often time alone is checked when nothing happens: agents whose process ended, lock
/// holders that died (their leases end by a timer of their own).
pub const FALLBACK: Duration = Duration::from_secs(5);
/// How often everything is re-read when file events are not available.
pub const NO_EVENTS_INTERVAL: Duration = Duration::from_secs(2);

/// Which picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Picture {
    /// The dependency graph ([`maos_track::graph_svg`]).
    Graph,
    /// The Gantt chart ([`maos_track::gantt_svg`]).
    Gantt,
}

/// Pictures drawn, by (kind, task limit): the snapshot version drawn and the SVG.
type PictureCache = HashMap<(Picture, usize), (u64, Arc<String>)>;

struct Inner {
    ws: Workspace,
    stores: Option<Stores>,
    current: Mutex<Arc<Snapshot>>,
    version: watch::Sender<u64>,
    hints: mpsc::UnboundedSender<Changed>,
    pictures: Mutex<PictureCache>,
    _watches: Option<crate::watch::Watches>,
    /// Why the connection to the backend is down, while it is (shown as a problem).
    connection: Mutex<Option<String>>,
}

/// The live snapshot of one workspace. Cheap to clone; the background refresh stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("workspace", &self.inner.ws.root())
            .field("version", &*self.inner.version.borrow())
            .finish_non_exhaustive()
    }
}

fn relock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn git_dirs(ws: &Workspace) -> Option<crate::watch::GitDirs> {
    let repo = maos_merge::ConflictDetector::open(ws.root())
        .ok()?
        .repository()
        .ok()?;
    Some(crate::watch::GitDirs {
        git_dir: repo.path().to_path_buf(),
        common_dir: repo.commondir().to_path_buf(),
    })
}

impl Live {
    /// Reads the whole workspace once (the first snapshot is ready when this returns) and
    /// starts the background refresh on the current tokio runtime. `actor` is the agent the
    /// dashboard reads as.
    pub async fn start(ws: &Workspace, actor: AgentId) -> Result<Self> {
        Self::start_with(ws, actor, None).await
    }

    /// [`Live::start`] for a workspace whose state is on a server: read through
    /// `remote`'s stores, woken by its notifications (and every `remote.poll` for what sends
    /// none); git (the merge prediction) stays local. Blocking store calls run on tokio's
    /// blocking pool. Keep a handle of the stores' connection alive until the runtime is gone
    /// when the backend requires its last handle to be dropped outside it (PostgreSQL).
    pub async fn start_remote(ws: &Workspace, actor: AgentId, remote: Remote) -> Result<Self> {
        Self::start_with(ws, actor, Some(remote)).await
    }

    async fn start_with(ws: &Workspace, actor: AgentId, remote: Option<Remote>) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let ws2 = ws.clone();
        let actor2 = actor.clone();
        let (stores, wakes) = match remote {
            Some(r) => (Some(r.stores), Some((r.wakes, r.poll.max(DEBOUNCE)))),
            None => (None, None),
        };
        let merge = stores.as_ref().and_then(|s| s.merge.clone());
        let stores2 = stores.clone();
        let merge2 = merge.clone();
        let (collector, first, inputs, git) = crate::asyncify("the first snapshot", move || {
            let mut c = match stores2 {
                Some(s) => Collector::with_stores(&ws2, actor2.clone(), s),
                None => Collector::new(&ws2, actor2.clone()),
            };
            let mut snap = c.refresh(&Changed::all());
            let inputs = c.merge_inputs();
            if inputs.is_none() {
                // Not in a repository: say so at once instead of "pending".
                c.set_merges(crate::snapshot::predict_with(
                    &ws2,
                    &actor2,
                    None,
                    merge2.as_ref(),
                ));
                snap = c.current();
            }
            let git = git_dirs(&ws2);
            (c, snap, inputs, git)
        })
        .await?;
        let (watches, events) = match &wakes {
            None => {
                let w = crate::watch::start(Some(ws.maos_dir()), git.as_ref(), tx.clone());
                let events = w.is_some();
                (w, events)
            }
            Some(_) => {
                // The state is not in files: only the repository's refs are watched.
                (crate::watch::start(None, git.as_ref(), tx.clone()), true)
            }
        };
        let mut first = first;
        first.version = 1;
        first.tasks_version = 1;
        let (version, _) = watch::channel(1);
        let inner = Arc::new(Inner {
            ws: ws.clone(),
            stores,
            current: Mutex::new(Arc::new(first)),
            version,
            hints: tx,
            pictures: Mutex::new(HashMap::new()),
            _watches: watches,
            connection: Mutex::new(None),
        });
        if let Some((wakes, poll)) = wakes {
            follow(wakes, poll, inner.hints.clone(), Arc::downgrade(&inner))?;
        }
        let collector = Arc::new(Mutex::new(collector));
        tokio::spawn(run(
            Arc::downgrade(&inner),
            rx,
            collector,
            inputs,
            actor,
            events,
            merge,
        ));
        Ok(Self { inner })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        relock(&self.inner.current).clone()
    }

    /// Receives the version of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Asks for a refresh of `changed` now (after an action; file events would also do).
    pub fn hint(&self, changed: Changed) {
        let _ = self.inner.hints.send(changed);
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.inner.ws
    }

    /// The stores read through the traits, for a workspace on a server.
    pub fn stores(&self) -> Option<&Stores> {
        self.inner.stores.as_ref()
    }

    /// A picture of the current tasks: all of them up to `limit`, else the window around the
    /// critical path ([`maos_track::critical_window`]). Cached per snapshot version.
    pub async fn picture(&self, kind: Picture, limit: usize) -> Result<Arc<String>> {
        let snap = self.snapshot();
        if let Some((v, svg)) = relock(&self.inner.pictures).get(&(kind, limit))
            && *v == snap.version
        {
            return Ok(svg.clone());
        }
        let tasks = snap.task_list.clone();
        let svg = crate::asyncify("a picture", move || {
            let shown = maos_track::critical_window(&tasks, limit);
            Arc::new(match kind {
                Picture::Graph => maos_track::graph_svg(&shown),
                Picture::Gantt => maos_track::gantt_svg(&shown, now_ms()),
            })
        })
        .await?;
        let mut cache = relock(&self.inner.pictures);
        cache.retain(|_, (v, _)| *v == snap.version);
        cache.insert((kind, limit), (snap.version, svg.clone()));
        Ok(svg)
    }
}

/// Publishes `snap` as the next version unless it shows the same as the current one.
fn publish(inner: &Inner, mut snap: Snapshot) {
    snap.problems.retain(|p| p.section != CONNECTION);
    if let Some(why) = relock(&inner.connection).clone() {
        snap.problems.insert(
            0,
            crate::snapshot::Problem {
                section: CONNECTION.into(),
                message: why,
            },
        );
    }
    let mut cur = relock(&inner.current);
    if cur.same_content(&snap) {
        return;
    }
    snap.version = cur.version + 1;
    let v = snap.version;
    snap.tasks_version = if cur.tasks == snap.tasks {
        cur.tasks_version
    } else {
        v
    };
    *cur = Arc::new(snap);
    drop(cur);
    inner.version.send_replace(v);
    tracing::debug!(version = v, "dashboard: new snapshot");
}

/// The section of the problem a lost connection to the backend shows as.
const CONNECTION: &str = "connection";

/// Follows `wakes` on a thread of its own (the notifications are waited for by blocking),
/// sending what they name, and every `poll` what sends no notification (agents, locks,
/// the merge queue); a connection that goes down or comes back is published at once. Ends
/// when the dashboard is gone.
fn follow(
    mut wakes: Box<dyn Wakes>,
    poll: Duration,
    tx: mpsc::UnboundedSender<Changed>,
    weak: Weak<Inner>,
) -> Result<()> {
    let spawned = std::thread::Builder::new()
        .name("maos-dashboard-wakes".into())
        .spawn(move || {
            let mut polled = std::time::Instant::now();
            let mut down: Option<String> = None;
            loop {
                let left = poll.saturating_sub(polled.elapsed());
                let mut c = wakes.wait(left);
                let now_down = wakes.problem().map(|why| {
                    format!("the connection to the server is lost ({why}); reconnecting: what is shown may be out of date")
                });
                if now_down != down {
                    down = now_down;
                    let Some(inner) = weak.upgrade() else { return };
                    *relock(&inner.connection) = down.clone();
                    let snap = (*relock(&inner.current).as_ref()).clone();
                    publish(&inner, snap);
                }
                if polled.elapsed() >= poll {
                    polled = std::time::Instant::now();
                    c.merge(Changed {
                        agents: true,
                        locks: true,
                        queue: true,
                        ..Changed::default()
                    });
                }
                if !c.is_empty() && tx.send(c).is_err() {
                    return;
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
    spawned.map(|_| ()).map_err(|source| crate::Error::Thread {
        what: "following the server's notifications",
        source,
    })
}

fn start_prediction(
    ws: &Workspace,
    actor: &AgentId,
    inputs: Option<MergeInputs>,
    merge: Option<Arc<dyn MergeBackend>>,
) -> tokio::task::JoinHandle<MergesView> {
    let ws = ws.clone();
    let actor = actor.clone();
    tokio::task::spawn_blocking(move || {
        crate::snapshot::predict_with(&ws, &actor, inputs.as_ref(), merge.as_ref())
    })
}

async fn run(
    weak: Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<Changed>,
    collector: Arc<Mutex<Collector>>,
    mut inputs: Option<MergeInputs>,
    actor: AgentId,
    events: bool,
    merge: Option<Arc<dyn MergeBackend>>,
) {
    let Some(ws) = weak.upgrade().map(|i| i.ws.clone()) else {
        return;
    };
    let mut job = inputs
        .is_some()
        .then(|| start_prediction(&ws, &actor, inputs.clone(), merge.clone()));
    let mut again = false;
    loop {
        let next = {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let snap = relock(&inner.current).clone();
            let now = now_ms();
            let idle = if events { FALLBACK } else { NO_EVENTS_INTERVAL };
            let lease = snap
                .next_deadline(now)
                .map(|t| Duration::from_millis(t - now + 50))
                .unwrap_or(idle);
            Instant::now() + lease.min(idle)
        };
        let mut changed = Changed::default();
        let mut merges: Option<MergesView> = None;
        tokio::select! {
            m = rx.recv() => match m {
                Some(c) => changed.merge(c),
                None => return,
            },
            () = tokio::time::sleep_until(next) => {
                changed.merge(if events { Changed::time() } else { Changed::all() });
            }
            done = async {
                match job.as_mut() {
                    Some(j) => j.await,
                    None => std::future::pending().await,
                }
            } => {
                job = None;
                match done {
                    Ok(m) => merges = Some(m),
                    Err(e) => tracing::warn!(error = %e, "dashboard: the merge prediction stopped"),
                }
            }
        }
        // Gather the rest of the burst.
        let until = Instant::now() + DEBOUNCE;
        loop {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(c)) => changed.merge(c),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let c = collector.clone();
        let refs = changed.refs;
        let want_inputs = changed.agents || changed.refs;
        let step = crate::asyncify("a refresh", move || {
            let mut c = relock(&c);
            if let Some(m) = merges {
                c.set_merges(m);
            }
            let mut changed = changed;
            if c.stores().is_some() {
                // On a server: what failed (a lost connection) is read again at every
                // refresh, the poll's included, until it works.
                changed.merge(c.failed());
            }
            let snap = c.refresh(&changed);
            let inputs = want_inputs.then(|| c.merge_inputs());
            (snap, inputs)
        })
        .await;
        let (snap, new_inputs) = match step {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "dashboard: a refresh stopped"
                );
                continue;
            }
        };
        let Some(inner) = weak.upgrade() else {
            return;
        };
        publish(&inner, snap);
        drop(inner);
        if let Some(n) = new_inputs
            && (refs || n != inputs)
        {
            inputs = n;
            again = true;
        }
        if again && job.is_none() {
            again = false;
            job = Some(start_prediction(&ws, &actor, inputs.clone(), merge.clone()));
        }
    }
}
