//! Waiting for new messages: a directory watch (notify 8, inotify on Linux) whose events are
//! only hints, plus a fallback timer, over a cursor that reads forward.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use maos_core::{AgentId, Message};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::envelope::RawPayload;
use crate::{
    Ahead, Batch, Cursor, Delivered, Error, FileChannel, Filter, Gap, Problem, Pruned, Result,
};

/// Wakes waiters when anything changes in one directory. The notify callback runs on notify's
/// own thread and only stores a permit in a [`tokio::sync::Notify`]: a change between a
/// reader's look and its wait is never lost, and no runtime thread ever blocks.
pub(crate) struct DirWaker {
    _watcher: Option<notify::RecommendedWatcher>,
    notify: Arc<Notify>,
}

impl std::fmt::Debug for DirWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWaker").finish_non_exhaustive()
    }
}

impl DirWaker {
    /// A waker for `dir`; with `events` false, only the fallback timer wakes.
    pub(crate) fn new(channel: &str, dir: &Path, events: bool) -> Result<Self> {
        let notify = Arc::new(Notify::new());
        if !events {
            return Ok(Self {
                _watcher: None,
                notify,
            });
        }
        let n = Arc::clone(&notify);
        let err = |source| Error::Watch {
            channel: channel.to_string(),
            path: dir.to_path_buf(),
            source,
        };
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            match res {
                // Opens and closes (our own readers) are not news; everything else, including
                // an overflow (rescan) or an error, is a hint to look.
                Ok(ev) if matches!(ev.kind, EventKind::Access(_)) && !ev.need_rescan() => {}
                _ => n.notify_one(),
            }
        })
        .map_err(err)?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(err)?;
        Ok(Self {
            _watcher: Some(watcher),
            notify,
        })
    }

    /// Returns on the next event (or one stored since the last wait) or after `fallback`.
    pub(crate) async fn wait(&self, fallback: Duration) {
        tokio::select! {
            () = self.notify.notified() => {}
            () = tokio::time::sleep(fallback) => {
                tracing::trace!("fallback timer fired");
            }
        }
    }
}

/// Something a watcher's reader must know besides messages.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Notice {
    /// Messages were pruned before the watcher got to them.
    Pruned(Pruned),
    /// A record or file could not be used (reported and quarantined).
    Problem(Problem),
    /// Positions the writers skipped (after a restart, or because the log lost records).
    Gap(Gap),
    /// The cursor is ahead of the log (it lost messages already read).
    Ahead(Ahead),
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Pruned(p) => p.fmt(f),
            Notice::Problem(p) => p.fmt(f),
            Notice::Gap(g) => g.fmt(f),
            Notice::Ahead(a) => a.fmt(f),
        }
    }
}

/// Waits for new messages on one channel.
///
/// ```no_run
/// # async fn f(ch: maos_comm::FileChannel) -> maos_comm::Result<()> {
/// let mut w = maos_comm::ChannelWatcher::new(ch)?;   // from the current end, for $MAOS_AGENT_ID
/// let msg: maos_core::Message<serde_json::Value> = w.wait_for_message().await?;
/// # Ok(()) }
/// ```
///
/// A file event is only a hint: on every wake-up the watcher reads forward from its cursor,
/// so messages that arrive together are all delivered, in order, and a lost event (or a
/// filesystem without events) costs at most [`crate::ChannelOptions::fallback_interval`] of
/// latency, never a message.
#[derive(Debug)]
pub struct ChannelWatcher {
    channel: FileChannel,
    filter: Filter,
    cursor: Cursor,
    waker: DirWaker,
    pending: VecDeque<Delivered<RawPayload>>,
    notices: Vec<Notice>,
    reported_ahead: Option<Ahead>,
}

impl ChannelWatcher {
    /// Watches `channel` from its current end, for the agent `$MAOS_AGENT_ID` (recipients are
    /// applied, its role looked up in the registry).
    pub fn new(channel: FileChannel) -> Result<Self> {
        let agent = AgentId::current().map_err(|e| Error::core(channel.name().as_str(), e))?;
        let filter = Filter::for_agent(channel.workspace(), agent)?;
        channel.ensure_dir()?;
        let waker = DirWaker::new(
            channel.name().as_str(),
            channel.dir(),
            channel.options().file_events,
        )?;
        let cursor = channel.end_cursor()?;
        Ok(Self::with_parts(channel, filter, cursor, waker))
    }

    /// Watches `channel` from `cursor` (for instance `Cursor::after(receipt.position)` to see
    /// the replies to a message just sent), delivering what `filter` accepts.
    pub fn from_cursor(channel: FileChannel, cursor: Cursor, filter: Filter) -> Result<Self> {
        channel.ensure_dir()?;
        let waker = DirWaker::new(
            channel.name().as_str(),
            channel.dir(),
            channel.options().file_events,
        )?;
        Ok(Self::with_parts(channel, filter, cursor, waker))
    }

    fn with_parts(channel: FileChannel, filter: Filter, cursor: Cursor, waker: DirWaker) -> Self {
        Self {
            channel,
            filter,
            cursor,
            waker,
            pending: VecDeque::new(),
            notices: Vec::new(),
            reported_ahead: None,
        }
    }

    /// Where the watcher's reader stands (past every message already returned or buffered).
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The channel.
    pub fn channel(&self) -> &FileChannel {
        &self.channel
    }

    /// Pruned gaps and damaged records met so far (also logged); drains them.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Reads forward once; returns whether the cursor moved.
    async fn fill(&mut self) -> Result<bool> {
        let batch: Batch<RawPayload> = self.channel.receive(&self.cursor, &self.filter).await?;
        let moved = batch.cursor.position != self.cursor.position || !batch.problems.is_empty();
        self.cursor = batch.cursor;
        if let Some(p) = batch.pruned {
            self.notices.push(Notice::Pruned(p));
        }
        self.notices.extend(batch.gaps.into_iter().map(Notice::Gap));
        if batch.ahead != self.reported_ahead {
            self.reported_ahead = batch.ahead;
            self.notices.extend(batch.ahead.map(Notice::Ahead));
        }
        self.notices
            .extend(batch.problems.into_iter().map(Notice::Problem));
        self.pending.extend(batch.messages);
        Ok(moved)
    }

    /// The next message addressed to the reader, waiting as long as it takes.
    pub async fn wait_for_message<T: DeserializeOwned>(&mut self) -> Result<Message<T>> {
        Ok(self.next::<T>().await?.message)
    }

    /// The next message with its position, waiting as long as it takes. A message that does
    /// not decode as `T` is reported in [`ChannelWatcher::take_notices`] and skipped.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Delivered<T>> {
        let fallback = self.channel.options().fallback_interval;
        loop {
            while let Some(d) = self.pending.pop_front() {
                match serde_json::from_str::<T>(d.message.payload.get()) {
                    Ok(payload) => {
                        return Ok(Delivered {
                            position: d.position,
                            message: d.message.map(|_| payload),
                        });
                    }
                    Err(e) => self.notices.push(Notice::Problem(Problem {
                        path: self.channel.dir().to_path_buf(),
                        offset: None,
                        position: Some(d.position),
                        reason: format!(
                            "the message's payload does not decode as the requested type: {e}"
                        ),
                        quarantined: None,
                    })),
                }
            }
            if self.fill().await? {
                continue;
            }
            self.waker.wait(fallback).await;
        }
    }

    /// [`ChannelWatcher::next`] with a deadline: `Ok(None)` when nothing came in time.
    pub async fn next_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Delivered<T>>> {
        match tokio::time::timeout(timeout, self.next::<T>()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }
}

impl FileChannel {
    /// Waits (blocking the calling thread, for synchronous callers) until something new is
    /// readable after `cursor` for `filter`, or `timeout` passes; returns what a
    /// [`FileChannel::receive_blocking`] returns then (an empty batch on timeout). Uses the
    /// same directory watch and fallback timer as [`ChannelWatcher`]. Never call it on a
    /// runtime thread.
    pub fn wait_blocking<T: DeserializeOwned>(
        &self,
        cursor: &Cursor,
        filter: &Filter,
        timeout: Duration,
    ) -> Result<Batch<T>> {
        let deadline = std::time::Instant::now() + timeout;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let _watcher = if self.options().file_events {
            self.ensure_dir()?;
            let err = |source| Error::Watch {
                channel: self.name().to_string(),
                path: self.dir().to_path_buf(),
                source,
            };
            let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if !matches!(&res, Ok(ev) if matches!(ev.kind, EventKind::Access(_)) && !ev.need_rescan())
                {
                    let _ = tx.send(());
                }
            })
            .map_err(err)?;
            w.watch(self.dir(), RecursiveMode::NonRecursive)
                .map_err(err)?;
            Some(w)
        } else {
            None
        };
        let mut cursor = *cursor;
        loop {
            let batch = self.receive_blocking::<T>(&cursor, filter)?;
            let now = std::time::Instant::now();
            if !batch.is_empty() || now >= deadline {
                return Ok(batch);
            }
            cursor = batch.cursor;
            let wait = (deadline - now).min(self.options().fallback_interval);
            // An event, a lost event's fallback, or the deadline: look again either way.
            let _ = rx.recv_timeout(wait);
            while rx.try_recv().is_ok() {}
        }
    }
}
