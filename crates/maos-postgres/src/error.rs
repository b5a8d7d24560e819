//! The one error type of maos-postgres.

use maos_core::{AgentId, ResourceName, TaskId};

/// Who holds a lock, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The owning agent.
    pub owner: AgentId,
    /// The resource it holds.
    pub resource: ResourceName,
    /// Why.
    pub purpose: String,
    /// Its lease end (ms since the Unix epoch, on the server's clock).
    pub expires_at: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} holds {} ({}; lease ends at {} ms on the server's clock)",
            self.owner,
            self.resource,
            maos_core::excerpt(&self.purpose, 80),
            self.expires_at
        )
    }
}

/// Everything that can go wrong in the PostgreSQL backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend URL cannot be used.
    #[error("backend {url:?} is not usable: {reason}")]
    BadUrl {
        /// The URL (its password, if any, removed).
        url: String,
        /// Why.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot connect to the maos server at {target}")]
    Connect {
        /// Host and database.
        target: String,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
    /// A statement failed.
    #[error("{what} failed on the maos server")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
    /// The connection was lost (server restart, network cut, session terminated).
    #[error(
        "the connection to the maos server was lost while {what}; locks held through it may be gone (fencing tokens tell)"
    )]
    ConnectionLost {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
    /// The server's schema is newer than this binary knows.
    #[error(
        "the maos schema on the server is version {server}, newer than this maos knows ({known}): upgrade maos on this machine; nothing was changed"
    )]
    SchemaTooNew {
        /// The server's version.
        server: i64,
        /// The newest version this binary has.
        known: i64,
    },
    /// A record read from the server does not decode.
    #[error("corrupt {what} on the server: {reason}")]
    Corrupt {
        /// What was read.
        what: String,
        /// Why it does not decode.
        reason: String,
    },
    /// Bad input.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was given.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A lock could not be had in time (with no wait allowed: it was taken).
    #[error("{}{}", if *allowed_ms == 0 { format!("{resource} is taken (not waiting: the wait is 0)") } else { format!("timed out after {waited_ms} ms waiting for {resource}") }, blocker.as_ref().map(|h| format!(": {h}")).unwrap_or_default())]
    Timeout {
        /// The resource.
        resource: ResourceName,
        /// How long it waited.
        waited_ms: u64,
        /// How long the caller allowed (zero: it asked not to wait).
        allowed_ms: u64,
        /// Who blocked it last.
        blocker: Option<Box<Holder>>,
    },
    /// Another session held the rows this operation needs longer than it may wait: a
    /// process stopped in the middle of a change (SIGSTOP, Ctrl-Z, a suspended laptop) holds
    /// them until it resumes or the server ends its transaction.
    #[error(
        "{what}: gave up after {waited_ms} ms waiting for rows another session holds{suspects}; a process stopped in the middle of a change (SIGSTOP, Ctrl-Z, a suspended laptop) keeps them until it resumes or the server ends its transaction ({idle_s} s idle): resume or end that process, or retry"
    )]
    Busy {
        /// The operation.
        what: &'static str,
        /// How long it waited.
        waited_ms: u64,
        /// The sessions idle in a transaction now, in words (empty when none was found).
        suspects: String,
        /// After how many seconds idle in a transaction the server ends one of maos's.
        idle_s: u64,
    },
    /// Deadlock resolution ended this wait.
    #[error("deadlock: the wait for {resource} was chosen as the victim of a cycle between {}", agents.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Deadlock {
        /// The resource waited for.
        resource: ResourceName,
        /// The agents of the cycle.
        agents: Vec<AgentId>,
    },
    /// The lock was lost (lease ended, session ended, released by someone else).
    #[error("the lock on {resource} (token {token}) was lost{}", now.as_ref().map(|h| format!("; now {h}")).unwrap_or_default())]
    LockLost {
        /// The resource.
        resource: ResourceName,
        /// The token it was granted with.
        token: u64,
        /// Who holds it now.
        now: Option<Box<Holder>>,
    },
    /// A fencing token is not current.
    #[error("fencing token {token} for {resource} is stale (newest issued: {current})")]
    StaleToken {
        /// The resource.
        resource: ResourceName,
        /// The token presented.
        token: u64,
        /// The newest token issued for the resource.
        current: u64,
    },
    /// The agent holds no such lock.
    #[error("{agent} holds no lock on {resource}{}", holder.as_ref().map(|h| format!("; {h}")).unwrap_or_default())]
    NotOwner {
        /// The resource.
        resource: ResourceName,
        /// The agent.
        agent: AgentId,
        /// Who holds it instead.
        holder: Option<Box<Holder>>,
    },
    /// A message is larger than the limit.
    #[error(
        "message {id} for {channel} is {size} bytes, over the {limit}-byte limit; nothing was written"
    )]
    PayloadTooLarge {
        /// The channel.
        channel: String,
        /// The message id.
        id: maos_core::MessageId,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A message that receivers could not decode (nested deeper than serde_json's limit,
    /// an invalid escape): refused before anything is written, as on the files.
    #[error(
        "channel {channel}: message {id} would not be readable by receivers ({reason}); nothing \
         was written"
    )]
    Unreadable {
        /// The channel.
        channel: String,
        /// The refused message.
        id: maos_core::MessageId,
        /// What a receiver would fail on.
        reason: String,
    },
    /// A consumer acknowledging a position its channel does not hold yet.
    #[error(
        "channel {channel}: cannot acknowledge position {position}, the newest message is at {newest}"
    )]
    AheadOfLog {
        /// The channel.
        channel: String,
        /// The position to acknowledge.
        position: u64,
        /// The channel's newest position.
        newest: u64,
    },
    /// A message does not serialise or decode.
    #[error("message on {channel} does not (de)serialise")]
    Json {
        /// The channel.
        channel: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// No such task.
    #[error("no task {task}")]
    TaskNotFound {
        /// The id.
        task: String,
    },
    /// A task id is taken.
    #[error("task {task} exists already")]
    DuplicateTask {
        /// The id.
        task: TaskId,
    },
    /// A dependency does not exist.
    #[error("task {task} depends on {dependency}, which does not exist")]
    UnknownDependency {
        /// The task.
        task: TaskId,
        /// The missing dependency.
        dependency: TaskId,
    },
    /// Dependencies would form a cycle.
    #[error("dependency cycle: {}", cycle.iter().map(ToString::to_string).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// The cycle.
        cycle: Vec<TaskId>,
    },
    /// A status change that is not allowed.
    #[error("task {task} cannot go from {from} to {to}: {reason}")]
    InvalidTransition {
        /// The task.
        task: TaskId,
        /// Its status.
        from: maos_track::TaskStatus,
        /// The requested one.
        to: maos_track::TaskStatus,
        /// Why not.
        reason: String,
    },
    /// An agent acted on a task assigned to another agent without forcing it.
    #[error("task {task} is assigned to {assignee}, not {actor}: only {assignee} moves it")]
    NotAssignee {
        /// The task.
        task: TaskId,
        /// Its assignee.
        assignee: AgentId,
        /// Who tried.
        actor: AgentId,
    },
    /// The task changed since the caller read it.
    #[error("task {task} is at revision {actual}, not {expected}: read it again")]
    RevisionMismatch {
        /// The task.
        task: TaskId,
        /// The revision the caller expected.
        expected: u64,
        /// The current one.
        actual: u64,
    },
    /// The throwaway test server could not be run.
    #[error("cannot run a throwaway PostgreSQL server: {reason}")]
    Server {
        /// What went wrong and what to do.
        reason: String,
    },
    /// The vocabulary crate refused something (a name, a workspace file).
    #[error(transparent)]
    Core(#[from] maos_core::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a client error of `what`: a lost connection becomes [`Error::ConnectionLost`].
    pub(crate) fn pg(what: &'static str, source: postgres::Error) -> Self {
        if is_connection_error(&source) {
            Error::ConnectionLost { what, source }
        } else {
            Error::Query { what, source }
        }
    }

    /// True when the connection was lost (the operation may be retried on a new one).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::ConnectionLost { .. })
    }
}

/// True when `e` means the connection is gone rather than the statement failed.
pub(crate) fn is_connection_error(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            // Class 08 (connection exception), 57P01 admin shutdown / terminated,
            // 57P02 crash shutdown, 57P03 cannot connect now.
            let c = code.code();
            c.starts_with("08") || c == "57P01" || c == "57P02" || c == "57P03"
        }
        None => {
            // An I/O error without a server code: the socket broke.
            let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
            while let Some(s) = src {
                if s.is::<std::io::Error>() {
                    return true;
                }
                src = s.source();
            }
            false
        }
    }
}
