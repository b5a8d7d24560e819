//! What changed: a notify (inotify) watch on `.maos/` and on the repository's refs, turning
//! file events into [`Changed`] hints. Events are hints only: the collector re-reads the
//! stores; a lost event (queue overflow) asks for a full refresh.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc::UnboundedSender;

use crate::snapshot::{Changed, ChannelSet};

/// The file watches of one dashboard; dropping it stops them.
pub(crate) struct Watches {
    _watchers: Vec<notify::RecommendedWatcher>,
}

/// Where the repository keeps what the merge prediction depends on.
#[derive(Debug, Clone)]
pub(crate) struct GitDirs {
    /// The repository's own directory (`HEAD` of this worktree).
    pub(crate) git_dir: PathBuf,
    /// The common directory (`refs/`, `packed-refs`).
    pub(crate) common_dir: PathBuf,
}

/// Starts watching; returns `None` when no watch could be set up (the caller then refreshes
/// on a timer).
pub(crate) fn start(
    maos_dir: Option<&Path>,
    git: Option<&GitDirs>,
    tx: UnboundedSender<Changed>,
) -> Option<Watches> {
    let mut watchers = Vec::new();
    if let Some(maos_dir) = maos_dir {
        watchers.push(watch_maos(maos_dir, tx.clone())?);
    }
    if let Some(g) = git {
        let dirs = g.clone();
        let sink = tx;
        let w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let refs = match res {
                Ok(ev) => {
                    ev.need_rescan()
                        || (wanted(&ev.kind) && ev.paths.iter().any(|p| is_ref(&dirs, p)))
                }
                Err(_) => true,
            };
            if refs {
                let _ = sink.send(Changed {
                    refs: true,
                    ..Changed::default()
                });
            }
        })
        .and_then(|mut w| {
            w.watch(&g.common_dir, RecursiveMode::NonRecursive)?;
            let refs = g.common_dir.join("refs");
            if refs.is_dir() {
                w.watch(&refs, RecursiveMode::Recursive)?;
            }
            if g.git_dir != g.common_dir {
                w.watch(&g.git_dir, RecursiveMode::NonRecursive)?;
            }
            Ok(w)
        });
        match w {
            Ok(w) => watchers.push(w),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: cannot watch the repository's refs; merge predictions follow the registry only")
            }
        }
    }
    Some(Watches {
        _watchers: watchers,
    })
}

/// The watch on `.maos/`; `None` (after a warning) when it cannot be set up.
fn watch_maos(
    maos_dir: &Path,
    sink: UnboundedSender<Changed>,
) -> Option<notify::RecommendedWatcher> {
    let maos = maos_dir.to_path_buf();
    let w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let c = match res {
            Ok(ev) => classify_maos(&maos, &ev),
            Err(_) => Changed::all(),
        };
        if !c.is_empty() {
            let _ = sink.send(c);
        }
    })
    .and_then(|mut w| {
        w.watch(maos_dir, RecursiveMode::Recursive)?;
        Ok(w)
    });
    match w {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %maos_dir.display(), error = %e, "dashboard: cannot watch the workspace; refreshing on a timer");
            None
        }
    }
}

/// Events that can mean new content: creations, writes, removals, renames and the close of a
/// file written to (a lock holder's liveness file closes when its process ends). Opening and
/// reading (what the collector itself does) are not.
fn wanted(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Names of kernel-lock files and temporaries: touched by every reader, never content.
fn noise(name: &str) -> bool {
    name == "lock"
        || name == "guard"
        || name.ends_with(".lock")
        || maos_core::fsx::is_temp_name(name)
}

fn is_ref(g: &GitDirs, p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".lock") {
        return false;
    }
    p.starts_with(g.common_dir.join("refs"))
        || p == g.common_dir.join("packed-refs")
        || p == g.common_dir.join("HEAD")
        || p == g.git_dir.join("HEAD")
}

/// The sections an event under `.maos/` touches.
pub(crate) fn classify_maos(maos: &Path, ev: &notify::Event) -> Changed {
    if ev.need_rescan() {
        return Changed::all();
    }
    let mut out = Changed::default();
    if !wanted(&ev.kind) {
        return out;
    }
    for p in &ev.paths {
        let Ok(rel) = p.strip_prefix(maos) else {
            continue;
        };
        let parts: Vec<&str> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        let Some((&top, rest)) = parts.split_first() else {
            continue;
        };
        let name = parts.last().copied().unwrap_or("");
        match top {
            "agents" if !noise(name) => out.agents = true,
            "locks" if name != "guard" => out.locks = true,
            "tasks" if !noise(name) => out.tasks = true,
            "merge" if !noise(name) => out.queue = true,
            "channels" => {
                // channels/<name...>/.chan/<file>
                match rest.iter().position(|s| *s == maos_comm::CHANNEL_DATA_DIR) {
                    Some(k) if k > 0 => {
                        let file = rest.get(k + 1).copied().unwrap_or("");
                        let deeper = rest.len() > k + 2; // consumers/, quarantine/
                        if !deeper && !noise(file) {
                            let ch: BTreeSet<String> = [rest[..k].join("/")].into();
                            out.channels.merge_in(ChannelSet::Some(ch));
                        }
                    }
                    // A new channel directory (its `.chan/` comes next).
                    _ => out.channels.merge_in(ChannelSet::All),
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, ModifyKind};

    fn ev(kind: EventKind, p: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(p))
    }

    #[test]
    fn events_map_to_sections() {
        let m = Path::new("/w/.maos");
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let c = classify_maos(m, &ev(write, "/w/.maos/tasks/log.0.jsonl"));
        assert!(c.tasks && !c.locks);
        let c = classify_maos(m, &ev(write, "/w/.maos/tasks/lock"));
        assert!(c.is_empty());
        let c = classify_maos(
            m,
            &ev(
                write,
                "/w/.maos/channels/direct/a/.chan/00000000000000000001.jsonl",
            ),
        );
        assert_eq!(
            c.channels,
            ChannelSet::Some(["direct/a".to_string()].into())
        );
        let c = classify_maos(m, &ev(write, "/w/.maos/channels/x/.chan/lock"));
        assert!(c.is_empty());
        let c = classify_maos(
            m,
            &ev(
                EventKind::Create(CreateKind::Folder),
                "/w/.maos/channels/new",
            ),
        );
        assert_eq!(c.channels, ChannelSet::All);
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(classify_maos(m, &ev(read, "/w/.maos/locks/table.0")).is_empty());
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(classify_maos(m, &ev(closed, "/w/.maos/locks/live/1.2.3.0")).locks);
        assert!(classify_maos(m, &ev(write, "/w/.maos/locks/guard")).is_empty());
        assert!(classify_maos(m, &ev(write, "/w/.maos/merge/queue.json")).queue);
        assert!(classify_maos(m, &ev(write, "/w/.maos/agents/a.json")).agents);
        assert!(classify_maos(m, &ev(write, "/w/.maos/progress.json")).is_empty());
    }
}
