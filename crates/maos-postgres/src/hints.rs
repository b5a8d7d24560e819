//! [`Hints`]: what the namespace's notifications say changed, for a reader that follows
//! everything at once (the dashboard). Messages, task writes and lock releases NOTIFY (see
//! docs/protocol.md, section 10); an uncontended lock grant, the agent registry and the merge
//! queue do not, so a follower also looks on a timer of its own. Notifications are hints:
//! after one, read the stores again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::hub::Hub;
use crate::{Pg, Result};

/// What one wait saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// Channels with new messages (by name; a broadcast names its `broadcast/<topic>`
    /// channel and the global feed).
    pub channels: BTreeSet<String>,
    /// The task graph was written.
    pub tasks: bool,
    /// A lock was released or a waiter was told to look.
    pub locks: bool,
    /// The notification connection was reset or notifications were dropped: anything may
    /// have changed.
    pub everything: bool,
}

impl Changes {
    /// True when nothing was notified.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && !self.tasks && !self.locks && !self.everything
    }
}

/// Follows the notifications of one namespace (through the process's one LISTEN
/// connection, which reconnects by itself).
pub struct Hints {
    hub: Arc<Hub>,
    seen: u64,
    comm: String,
    tasks: String,
    locks: String,
}

impl std::fmt::Debug for Hints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hints")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Hints {
    /// Starts following (returns once the LISTEN is in place: nothing committed after this
    /// returns is missed).
    ///
    /// # Errors
    /// The notification connection cannot be opened.
    pub fn new(pg: &Pg) -> Result<Self> {
        let hub = pg.hub()?;
        let seen = hub.seen();
        let ns = pg.inner.ns;
        Ok(Self {
            hub,
            seen,
            comm: crate::comm::notify_channel(ns),
            tasks: crate::track::notify_channel(ns),
            locks: crate::lock::notify_channel(ns),
        })
    }

    /// Why the connection to the server is down, while it is (notifications are lost
    /// meanwhile: after it comes back, [`Changes::everything`] says to look at everything).
    pub fn lost(&self) -> Option<String> {
        self.hub.lost()
    }

    /// Blocks up to `timeout` for notifications; returns what they name (empty at the
    /// timeout).
    pub fn wait(&mut self, timeout: Duration) -> Changes {
        let (seen, events) = self.hub.take(self.seen, timeout);
        self.seen = seen;
        let mut out = Changes::default();
        for (ch, payload) in events {
            if ch.is_empty() {
                out.everything = true;
            } else if ch == self.comm {
                out.channels.insert(payload);
            } else if ch == self.tasks {
                out.tasks = true;
            } else if ch == self.locks {
                out.locks = true;
            }
        }
        out
    }
}
