//! One LISTEN connection per process for every wait: the channels', the lock waiters' and
//! the task writers' notifications of the namespace arrive on it and wake the threads waiting for them.
//! Notifications are hints: a waiter takes [`Hub::seen`] before it reads, so nothing that
//! commits after its read can slip by, and it looks again on its fallback timer anyway.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator as _;

use crate::conn::{Conn, Inner};
use crate::{Error, Pg, Result};

/// Notifications kept for waiters that have not looked yet.
const KEEP: usize = 4096;

#[derive(Default)]
struct State {
    generation: u64,
    /// (generation, channel, payload); an empty channel means "connection was reset: look".
    events: VecDeque<(u64, String, String)>,
    /// Why the notification connection is down, while it is (it is being reopened).
    lost: Option<String>,
}

pub(crate) struct Hub {
    state: Mutex<State>,
    changed: Condvar,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn listen(pg: &Pg) -> Result<Conn> {
    let mut c = pg.dedicated()?;
    let ns = pg.inner.ns;
    c.client()
        .batch_execute(&format!(
            "LISTEN \"{}\"; LISTEN \"{}\"; LISTEN \"{}\"",
            crate::comm::notify_channel(ns),
            crate::lock::notify_channel(ns),
            crate::track::notify_channel(ns)
        ))
        .map_err(|e| Error::pg("listen", e))?;
    Ok(c)
}

impl Hub {
    /// Starts listening (returns once the LISTEN is in place) and the thread that dispatches.
    pub(crate) fn start(pg: &Pg) -> Result<Arc<Hub>> {
        let conn = listen(pg)?;
        let hub = Arc::new(Hub {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let weak_hub = Arc::downgrade(&hub);
        let weak_pg = Arc::downgrade(&pg.inner);
        std::thread::Builder::new()
            .name("maos-pg-hub".into())
            .spawn(move || run(conn, weak_hub, weak_pg))
            .map_err(|e| Error::Invalid {
                what: "notification hub",
                reason: format!("cannot start its thread: {e}"),
            })?;
        Ok(hub)
    }

    fn push(&self, channel: String, payload: String) {
        let mut st = lock(&self.state);
        st.generation += 1;
        let g = st.generation;
        st.events.push_back((g, channel, payload));
        while st.events.len() > KEEP {
            st.events.pop_front();
        }
        drop(st);
        self.changed.notify_all();
    }

    /// The generation now: take it before reading, pass it to [`Hub::wait`].
    pub(crate) fn seen(&self) -> u64 {
        lock(&self.state).generation
    }

    /// Waits up to `timeout` for a notification after `seen` that `wanted(channel, payload)`
    /// accepts (or a reset of the connection). Returns whether one came.
    pub(crate) fn wait(
        &self,
        seen: u64,
        timeout: Duration,
        wanted: impl Fn(&str, &str) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        let mut from = seen;
        loop {
            // Events were dropped past `from`: look, to be safe.
            if st.events.front().is_some_and(|(g, _, _)| *g > from + 1) {
                return true;
            }
            let start = from;
            for (g, ch, p) in st.events.iter().filter(|(g, _, _)| *g > start) {
                from = *g;
                if ch.is_empty() || wanted(ch, p) {
                    return true;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = match self.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Hub {
    /// Why the notification connection is down, while it is (it is being reopened).
    pub(crate) fn lost(&self) -> Option<String> {
        lock(&self.state).lost.clone()
    }

    fn set_lost(&self, why: Option<String>) {
        lock(&self.state).lost = why;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for notifications after `seen` and takes every one of them:
    /// returns the generation reached and the (channel, payload) pairs, an empty channel
    /// standing for "the connection was reset, or notifications were dropped: look at
    /// everything" (the dashboard's wake-ups, crate::hints).
    pub(crate) fn take(&self, seen: u64, timeout: Duration) -> (u64, Vec<(String, String)>) {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        loop {
            if st.generation > seen {
                let mut out = Vec::new();
                if st.events.front().is_some_and(|(g, _, _)| *g > seen + 1) {
                    out.push((String::new(), String::new()));
                }
                out.extend(
                    st.events
                        .iter()
                        .filter(|(g, _, _)| *g > seen)
                        .map(|(_, c, p)| (c.clone(), p.clone())),
                );
                return (st.generation, out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (st.generation, Vec::new());
            }
            st = match self.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

fn run(mut conn: Conn, hub: Weak<Hub>, pg: Weak<Inner>) {
    loop {
        if pg.strong_count() == 0 {
            return;
        }
        let got = {
            let mut n = conn.client().notifications();
            let first = n.timeout_iter(Duration::from_millis(500)).next();
            match first {
                Ok(Some(note)) => {
                    let mut batch = vec![(note.channel().to_string(), note.payload().to_string())];
                    // Take what is already buffered without waiting.
                    let mut rest = n.iter();
                    while let Ok(Some(note)) = rest.next() {
                        batch.push((note.channel().to_string(), note.payload().to_string()));
                    }
                    Ok(batch)
                }
                Ok(None) => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        };
        let Some(h) = hub.upgrade() else { return };
        match got {
            Ok(batch) => {
                for (ch, p) in batch {
                    h.push(ch, p);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "notification connection lost; reconnecting");
                h.set_lost(Some(e.to_string()));
                let mut delay = Duration::from_millis(50);
                loop {
                    let Some(inner) = pg.upgrade() else { return };
                    match listen(&Pg { inner }) {
                        Ok(c) => {
                            conn = c;
                            break;
                        }
                        Err(_) => {
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(Duration::from_secs(1));
                        }
                    }
                }
                // Whatever was notified meanwhile is lost: everyone looks.
                h.set_lost(None);
                h.push(String::new(), String::new());
            }
        }
    }
}
