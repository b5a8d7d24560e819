//! The one error type of maos-lock.

use std::path::PathBuf;
use std::time::Duration;

use maos_core::{AgentId, ResourceName, human_duration, human_ms};

use crate::{FencingToken, LockMode};

/// Who holds a lock, as reported in errors: enough to go and ask them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderSummary {
    /// The owning agent.
    pub owner: AgentId,
    /// The resource it holds (may be a pattern overlapping the one asked for).
    pub resource: ResourceName,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// Why it holds it.
    pub purpose: String,
    /// When its lease ends (ms since the Unix epoch).
    pub expires_at: u64,
    /// Its process id, if the lock is held by a process (not only by the agent's lease).
    pub pid: Option<u32>,
    /// Its fencing token.
    pub token: FencingToken,
}

impl std::fmt::Display for HolderSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let now = maos_core::now_ms();
        write!(f, "agent {}", self.owner)?;
        match self.pid {
            Some(pid) => write!(f, " (pid {pid})")?,
            None => write!(f, " (lease)")?,
        }
        write!(f, " holds {}", self.resource)?;
        if self.mode == LockMode::Shared {
            write!(f, " (shared)")?;
        }
        if !self.purpose.is_empty() {
            write!(f, " for \"{}\"", maos_core::excerpt(&self.purpose, 200))?;
        }
        if self.expires_at > now {
            write!(f, ", lease ends in {}", human_ms(self.expires_at - now))
        } else {
            write!(f, ", lease ended {} ago", human_ms(now - self.expires_at))
        }
    }
}

/// Who is ahead in the queue, as reported while waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaiterSummary {
    /// The waiting agent.
    pub agent: AgentId,
    /// The resource it waits for.
    pub resource: ResourceName,
    /// Its process id.
    pub pid: Option<u32>,
    /// Its ticket.
    pub ticket: u64,
    /// Why it waits.
    pub purpose: String,
}

impl std::fmt::Display for WaiterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "agent {}", self.agent)?;
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        write!(f, " is ahead in line for {}", self.resource)?;
        if !self.purpose.is_empty() {
            write!(f, " for \"{}\"", maos_core::excerpt(&self.purpose, 200))?;
        }
        write!(f, " (ticket {})", self.ticket)
    }
}

/// "timed out after 2s waiting for the lock on R", or, when the caller did not wait at all,
/// "R is taken (not waiting: the wait is 0)".
fn timeout_words(resource: &ResourceName, waited: Duration, allowed: Duration) -> String {
    if allowed.is_zero() {
        format!("{resource} is taken (not waiting: the wait is 0)")
    } else {
        format!(
            "timed out after {} waiting for the lock on {resource}",
            human_duration(waited)
        )
    }
}

fn blocked_by(holder: &Option<Box<HolderSummary>>, ahead: &Option<Box<WaiterSummary>>) -> String {
    match (holder, ahead) {
        (Some(h), _) => h.to_string(),
        (None, Some(w)) => format!("{w} (first come, first served)"),
        (None, None) => "blocked by earlier waiters (first come, first served)".to_owned(),
    }
}

/// Everything that can go wrong in maos-lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A workspace, name or file-system error from maos-core (including a timeout waiting
    /// for the table's guard, which names the process holding it and says when it is
    /// stopped).
    #[error(transparent)]
    Core(#[from] maos_core::Error),

    /// An operating-system call on `path` failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file of the lock table is damaged, or holds what no writer could have written.
    #[error(
        "the lock table file {path} is damaged: {reason} (run `maos doctor` to see every problem, `maos doctor --repair` to fix what can be fixed)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Waiting for a lock took longer than the caller allowed (with no wait allowed: the
    /// lock was taken).
    #[error("{}: {}", timeout_words(resource, *waited, *allowed), blocked_by(holder, ahead))]
    Timeout {
        /// The resource asked for.
        resource: ResourceName,
        /// How long the caller waited.
        waited: Duration,
        /// How long the caller allowed (zero: it asked not to wait).
        allowed: Duration,
        /// The holder that blocked it last (None when only queued waiters were ahead).
        holder: Option<Box<HolderSummary>>,
        /// The first waiter ahead, when no holder blocked it.
        ahead: Option<Box<WaiterSummary>>,
    },

    /// The agent asked for a lock that overlaps a lease it holds itself: waiting would only
    /// wait for itself.
    #[error("agent {agent} already holds {} as a lease (token {}); release it first (`maos lock release {}`), or work under the lease you hold", holder.resource, holder.token, holder.resource)]
    AlreadyHeld {
        /// The resource asked for.
        resource: ResourceName,
        /// The agent.
        agent: AgentId,
        /// The lease it holds.
        holder: Box<HolderSummary>,
    },

    /// A fencing token is not (or no longer) the one of a current holder.
    #[error("stale fencing token {token} for {resource}: {}", match current {
        Some(c) => format!("the lock is now held with token {c}"),
        None => "no lock on it is held with that token now".to_owned(),
    })]
    StaleToken {
        /// The resource.
        resource: ResourceName,
        /// The token presented.
        token: FencingToken,
        /// The token of the lock that holds the resource now, if any.
        current: Option<FencingToken>,
    },

    /// The lock was lost (lease expired and broken, the holder presumed dead, or released by
    /// its agent) before it was released or renewed: nothing was deleted.
    #[error("the lock on {resource} with token {token} was lost (its lease ended, or it was broken or released){}", match now_held_by {
        Some(h) => format!("; now {h}"),
        None => String::new(),
    })]
    LockLost {
        /// The resource.
        resource: ResourceName,
        /// The token the caller held.
        token: FencingToken,
        /// Who holds it now, if anyone.
        now_held_by: Option<Box<HolderSummary>>,
    },

    /// A release or renewal by someone who does not hold the lock.
    #[error("agent {agent} does not hold a lock on {resource}{}", match holder {
        Some(h) => format!("; {h}"),
        None => String::new(),
    })]
    NotOwner {
        /// The resource.
        resource: ResourceName,
        /// Who asked.
        agent: AgentId,
        /// Who holds it instead, if anyone.
        holder: Option<Box<HolderSummary>>,
    },

    /// The wait was ended by deadlock resolution: this waiter was chosen as the victim.
    #[error("deadlock: the wait of agent {agent} for {resource} was aborted to break the cycle {}{}",
        cycle.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(" -> "),
        if release.is_empty() {
            String::new()
        } else {
            format!("; release {} (others in the cycle wait for it), then try again",
                release.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))
        })]
    Deadlock {
        /// The resource the victim waited for.
        resource: ResourceName,
        /// The victim.
        agent: AgentId,
        /// The agents in the cycle.
        cycle: Vec<AgentId>,
        /// What the victim holds that others in the cycle wait for.
        release: Vec<ResourceName>,
    },

    /// Waiting for an advisory turn took longer than the caller allowed.
    #[error(
        "timed out after {} waiting for the advisory turn on {resource}: agent {ahead} is ahead{}", human_duration(*waited),
        if purpose.is_empty() { String::new() } else { format!(" (\"{}\")", maos_core::excerpt(purpose, 200)) }
    )]
    AdvisoryTimeout {
        /// The resource.
        resource: ResourceName,
        /// How long the caller waited.
        waited: Duration,
        /// The first agent ahead.
        ahead: AgentId,
        /// Its purpose.
        purpose: String,
    },

    /// A record's text (purpose, metadata) or a table document is larger than allowed.
    #[error("{what} for {resource} is too large: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// The resource (or file) concerned.
        resource: String,
        /// Which part (`purpose`, `metadata`, `lock table document`, ...).
        what: &'static str,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// The id counter reached its limit: no new ticket or fencing token can be handed out
    /// without repeating one.
    #[error(
        "the fencing-token counter in {path} has reached 2^63: no new lock can be granted without repeating a token (the table is intact: held locks can still be released and listed)"
    )]
    Exhausted {
        /// The reservation file.
        path: PathBuf,
    },

    /// A broadcast on the `deadlock` topic failed.
    #[error("cannot broadcast on the deadlock topic")]
    Broadcast(#[source] maos_comm::Error),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the operation ran out of time (waiting for the lock or for the table's
    /// guard): the CLI's "busy" exit code.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::Core(maos_core::Error::LockTimeout { .. })
        )
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
