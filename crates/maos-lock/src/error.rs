//! The one error type of maos-lock.

use std::path::PathBuf;
use std::time::Duration;

use maos_core::{AgentId, ResourceName};

use crate::FencingToken;

/// Who holds a lock, as reported in errors: enough to go and ask them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderSummary {
    /// The owning agent.
    pub owner: AgentId,
    /// The resource it holds (may be a pattern overlapping the one asked for).
    pub resource: ResourceName,
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
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        write!(f, " holds {} for {:?}", self.resource, self.purpose)?;
        if self.expires_at > now {
            write!(
                f,
                ", lease ends in {:.1}s (at {} ms since epoch)",
                (self.expires_at - now) as f64 / 1000.0,
                self.expires_at
            )
        } else {
            write!(f, ", lease ended at {} ms since epoch", self.expires_at)
        }
    }
}

/// Everything that can go wrong in maos-lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A workspace, name or file-system error from maos-core.
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

    /// The lock table could not be parsed.
    #[error("corrupt lock state {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Waiting for a lock took longer than the caller allowed.
    #[error("timed out after {waited:?} waiting for lock on {resource}: {}", match holder {
        Some(h) => h.to_string(),
        None => "blocked by earlier waiters (first come, first served)".to_string(),
    })]
    Timeout {
        /// The resource asked for.
        resource: ResourceName,
        /// How long the caller waited.
        waited: Duration,
        /// The holder that blocked it last (None when only queued waiters were ahead).
        holder: Option<Box<HolderSummary>>,
    },

    /// A fencing token is not (or no longer) the one of a current holder.
    #[error("stale fencing token {token} for {resource}: the newest token issued is {current}")]
    StaleToken {
        /// The resource.
        resource: ResourceName,
        /// The token presented.
        token: FencingToken,
        /// The newest token issued for the resource (0 if none).
        current: FencingToken,
    },

    /// The lock was lost (lease expired and broken, or the holder was presumed dead) before
    /// it was released or renewed: nothing was deleted.
    #[error("lock on {resource} with token {token} was lost (lease expired or broken){}", match now_held_by {
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
    #[error("deadlock: the wait of agent {agent} for {resource} was aborted to break the cycle {}",
        cycle.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(" -> "))]
    Deadlock {
        /// The resource the victim waited for.
        resource: ResourceName,
        /// The victim.
        agent: AgentId,
        /// The agents in the cycle.
        cycle: Vec<AgentId>,
    },

    /// Waiting for an advisory turn took longer than the caller allowed.
    #[error(
        "timed out after {waited:?} waiting for the advisory turn on {resource}: agent {ahead} is ahead ({purpose:?})"
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

    /// A record's text (purpose, metadata) or the whole lock state is larger than allowed.
    #[error("{what} for {resource} is too large: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// The resource of the record.
        resource: ResourceName,
        /// Which part (`purpose`, `metadata`, `lock table`).
        what: &'static str,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
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
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
