//! Pruning: removing whole segments, oldest first, under the writers' lock.

use std::time::SystemTime;

use maos_core::fsx;

use super::Log;
use super::write::WriterState;
use crate::{PruneReport, Result, Retention};

impl Log {
    /// Removes old segments as `retention` says.
    pub(crate) fn prune(&self, retention: Retention) -> Result<PruneReport> {
        self.locked(|st| self.prune_locked(retention, st))
    }

    /// [`Log::prune`] for a caller that holds the lock.
    pub(crate) fn prune_locked(
        &self,
        retention: Retention,
        st: &mut WriterState,
    ) -> Result<PruneReport> {
        let newest = self.newest_locked(st)?;
        let segs = self.list(&mut Vec::new())?.segments;
        let now = SystemTime::now();
        // Decide per segment (oldest first) whether all of it goes.
        let mut remove = Vec::new();
        for (i, &first) in segs.iter().enumerate() {
            let goes = match retention {
                Retention::Keep(n) => {
                    let last = self.segment_last(first)?;
                    last < first || newest.saturating_sub(last) >= n
                }
                Retention::OlderThan(age) => std::fs::symlink_metadata(self.segment_path(first))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d >= age)),
                Retention::Segments(n) => segs.len() - i > n.max(1),
            };
            if !goes {
                break; // keep this one and everything after it
            }
            remove.push(first);
        }
        if !remove.is_empty() && remove.len() == segs.len() {
            if self.active_is_empty(st) {
                remove.pop(); // the active segment is already empty: keep it
            } else {
                // The active segment must go too: start a fresh one after `newest` first.
                self.roll_locked(st)?;
            }
        }
        for &first in &remove {
            fsx::remove_if_exists(&self.segment_path(first)).map_err(|e| self.core(e))?;
        }
        let remaining = self.list(&mut Vec::new())?.segments;
        let oldest = remaining
            .first()
            .copied()
            .unwrap_or(newest.saturating_add(1));
        if !remove.is_empty() {
            fsx::sync_dir(&self.dir).map_err(|e| self.core(e))?;
            tracing::info!(channel = %self.channel, segments = remove.len(),
                through = oldest - 1, "pruned");
        }
        Ok(PruneReport {
            segments_removed: remove.len(),
            pruned_through: if remove.is_empty() { 0 } else { oldest - 1 },
            oldest: oldest.min(newest.saturating_add(1)),
            newest,
        })
    }
}
