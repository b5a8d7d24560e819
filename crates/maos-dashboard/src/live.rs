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

use crate::Result;
use crate::snapshot::{Changed, Collector, MergeInputs, MergesView, Snapshot};

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
    current: Mutex<Arc<Snapshot>>,
    version: watch::Sender<u64>,
    hints: mpsc::UnboundedSender<Changed>,
    pictures: Mutex<PictureCache>,
    _watches: Option<crate::watch::Watches>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let ws2 = ws.clone();
        let actor2 = actor.clone();
        let (collector, first, inputs, git) = crate::asyncify("the first snapshot", move || {
            let mut c = Collector::new(&ws2, actor2.clone());
            let mut snap = c.refresh(&Changed::all());
            let inputs = c.merge_inputs();
            if inputs.is_none() {
                // Not in a repository: say so at once instead of "pending".
                c.set_merges(crate::snapshot::predict(&ws2, &actor2, None));
                snap = c.current();
            }
            let git = git_dirs(&ws2);
            (c, snap, inputs, git)
        })
        .await?;
        let watches = crate::watch::start(ws.maos_dir(), git.as_ref(), tx.clone());
        let events = watches.is_some();
        let mut first = first;
        first.version = 1;
        first.tasks_version = 1;
        let (version, _) = watch::channel(1);
        let inner = Arc::new(Inner {
            ws: ws.clone(),
            current: Mutex::new(Arc::new(first)),
            version,
            hints: tx,
            pictures: Mutex::new(HashMap::new()),
            _watches: watches,
        });
        let collector = Arc::new(Mutex::new(collector));
        tokio::spawn(run(
            Arc::downgrade(&inner),
            rx,
            collector,
            inputs,
            actor,
            events,
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

fn start_prediction(
    ws: &Workspace,
    actor: &AgentId,
    inputs: Option<MergeInputs>,
) -> tokio::task::JoinHandle<MergesView> {
    let ws = ws.clone();
    let actor = actor.clone();
    tokio::task::spawn_blocking(move || crate::snapshot::predict(&ws, &actor, inputs.as_ref()))
}

async fn run(
    weak: Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<Changed>,
    collector: Arc<Mutex<Collector>>,
    mut inputs: Option<MergeInputs>,
    actor: AgentId,
    events: bool,
) {
    let Some(ws) = weak.upgrade().map(|i| i.ws.clone()) else {
        return;
    };
    let mut job = inputs
        .is_some()
        .then(|| start_prediction(&ws, &actor, inputs.clone()));
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
            job = Some(start_prediction(&ws, &actor, inputs.clone()));
        }
    }
}
