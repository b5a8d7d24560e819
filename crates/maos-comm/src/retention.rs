//! Retention: pruning whole segments by count or by age, and listing channels.

use std::path::Path;
use std::time::{Duration, SystemTime};

use maos_core::{ChannelName, Workspace};
use serde::Serialize;

use crate::channel::CHANNEL_DATA_DIR;
use crate::{ChannelStats, Error, FileChannel, Result};

/// What to keep when pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retention {
    /// Keep (at least) the newest `n` messages.
    Keep(u64),
    /// Remove messages older than this (by the time their segment was last written).
    OlderThan(Duration),
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Segments removed.
    pub segments_removed: usize,
    /// Positions `..=pruned_through` are gone (0: nothing pruned).
    pub pruned_through: u64,
    /// The oldest position still kept (`newest + 1` when nothing is kept).
    pub oldest: u64,
    /// The newest position.
    pub newest: u64,
}

impl FileChannel {
    /// Removes old messages, a whole segment at a time, under the writers' lock. Readers
    /// whose cursor pointed into the removed history get an explicit [`crate::Pruned`].
    ///
    /// Granularity: a segment is removed only when all its messages are outside what is kept,
    /// so [`Retention::Keep`] keeps at least `n` (at most `n` plus one segment). When every
    /// message is to go, the newest segment is closed first so that it can go too.
    pub fn prune_blocking(&self, retention: Retention) -> Result<PruneReport> {
        let _span = tracing::info_span!("prune", channel = %self.name(), ?retention).entered();
        let now = SystemTime::now();
        self.inner.log.with_lock(|log, listing, newest| {
            let segs = &listing.segments;
            // Decide per segment (oldest first) whether all of it goes.
            let mut remove = Vec::new();
            for (i, &first) in segs.iter().enumerate() {
                let (last, mtime) = log.segment_info(first)?;
                let goes = match retention {
                    Retention::Keep(n) => last < first || newest.saturating_sub(last) >= n,
                    Retention::OlderThan(age) => now.duration_since(mtime).is_ok_and(|d| d >= age),
                };
                if !goes {
                    break; // keep this one and everything after it
                }
                remove.push((i, first, last));
            }
            let all_go = remove.len() == segs.len() && !segs.is_empty();
            if all_go && newest >= *segs.last().unwrap_or(&1) {
                // The active segment must go too: start a fresh one after `newest` first.
                log.roll_locked(newest)?;
            } else if all_go {
                // The active segment is already empty: keep it.
                remove.pop();
            }
            let mut through = 0;
            for &(_, first, last) in &remove {
                log.remove_segment_locked(first)?;
                through = through.max(last).max(first - 1);
            }
            if !remove.is_empty() {
                log.sync_dir()?;
                tracing::info!(segments = remove.len(), through, "pruned");
            }
            let oldest = match remove.len() {
                n if n < segs.len() => segs[n],
                _ => newest + 1,
            };
            Ok(PruneReport {
                segments_removed: remove.len(),
                pruned_through: through,
                oldest: oldest.min(newest + 1),
                newest,
            })
        })
    }

    /// [`FileChannel::prune_blocking`] on a blocking thread.
    pub async fn prune(&self, retention: Retention) -> Result<PruneReport> {
        let this = self.clone();
        crate::asyncify(self.name().as_str(), "prune", move || {
            this.prune_blocking(retention)
        })
        .await
    }
}

/// Every channel of the workspace (directories holding a `.chan/`), sorted by name.
pub fn list_channels(ws: &Workspace) -> Result<Vec<ChannelName>> {
    let root = ws.channels_dir();
    let mut out = Vec::new();
    walk(&root, &root, 0, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<ChannelName>) -> Result<()> {
    if depth > maos_core::MAX_CHANNEL_SEGMENTS {
        return Ok(());
    }
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("*", "read directory", dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("*", "read directory", dir, e))?;
        let Ok(ft) = entry.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let path = entry.path();
        if entry.file_name() == CHANNEL_DATA_DIR {
            if let Some(name) = path
                .parent()
                .and_then(|p| p.strip_prefix(root).ok())
                .and_then(|p| p.to_str())
                .and_then(|s| ChannelName::new(s).ok())
            {
                out.push(name);
            }
            continue;
        }
        walk(root, &path, depth + 1, out)?;
    }
    Ok(())
}

/// Stats of every channel of the workspace.
pub fn channel_stats(ws: &Workspace) -> Result<Vec<ChannelStats>> {
    list_channels(ws)?
        .into_iter()
        .map(|n| FileChannel::open(ws, n)?.stats())
        .collect()
}
