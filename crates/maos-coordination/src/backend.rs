//! Choosing a workspace's storage backend, once: the files under `.maos/` (the default) or a
//! PostgreSQL server (`maos init --backend postgres://user@host/db`, recorded in
//! `.maos/config.json`; `MAOS_BACKEND` / `MAOS_NAMESPACE` override it). [`open`] returns
//! [`Backends`]: one implementation of each mechanism's storage trait ([`ChannelStore`],
//! [`InboxStore`], [`LockStore`], [`TaskStore`], [`AgentStore`]), so a command is written once over the
//! traits.
//!
//! The only module of this crate with code: the choice itself, nothing of a mechanism.

use std::sync::Arc;
use std::time::Duration;

use maos_comm::{ChannelStore, FileComm, FileInboxes, InboxStore};
use maos_core::{AgentId, AgentStore, Config, FileAgents, Workspace};
use maos_lock::{FileLocks, LockStore};
use maos_merge::backend::MergeBackend;
use maos_postgres::inbox::PgInboxes;
use maos_postgres::merge::PgMerge;
use maos_postgres::stores::{PgAgents, PgComm, PgLocks, PgTasks};
use maos_postgres::{BACKEND_ENV, BackendUrl, NAMESPACE_ENV, Pg};
use maos_track::{FileTasks, TaskStore, TaskTracker};

/// What can go wrong choosing or opening a backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The workspace's config could not be read.
    #[error("cannot read the backend setting of {}", ws.display())]
    Config {
        /// The workspace root.
        ws: std::path::PathBuf,
        /// Why.
        #[source]
        source: maos_core::Error,
    },
    /// The backend named by the config or the environment is not a usable URL.
    #[error(
        "the backend named by {origin} is not usable: give `file` or a postgres://user@host[:port]/database URL (`maos init --backend URL`, or set {BACKEND_ENV})"
    )]
    BadBackend {
        /// `MAOS_BACKEND` or `.maos/config.json`.
        origin: String,
        /// Why (naming the URL, its password removed).
        #[source]
        source: Box<maos_postgres::Error>,
    },
    /// The namespace could not be chosen.
    #[error(
        "no namespace for the PostgreSQL backend {url}: give one with `maos init --backend URL --namespace NAME` or {NAMESPACE_ENV}"
    )]
    Namespace {
        /// The URL (no password).
        url: String,
        /// Why.
        #[source]
        source: Box<maos_postgres::Error>,
    },
    /// The namespace given (`--namespace`, MAOS_NAMESPACE or the config) is not a valid name.
    #[error(
        "the namespace given for the PostgreSQL backend {url} cannot be used: name another with `maos init --backend URL --namespace NAME` or {NAMESPACE_ENV}"
    )]
    BadNamespace {
        /// The URL (no password).
        url: String,
        /// Why.
        #[source]
        source: Box<maos_postgres::Error>,
    },
    /// The server could not be used.
    #[error(
        "cannot use the PostgreSQL backend {url} (namespace {namespace}, named by {origin}): check that the server runs and is reachable from here and that the user may connect (its password in PGPASSWORD or ~/.pgpass), or go back to the files with `maos init --backend file`"
    )]
    Open {
        /// The URL (no password).
        url: String,
        /// The namespace.
        namespace: String,
        /// `MAOS_BACKEND` or `.maos/config.json`.
        origin: String,
        /// Why.
        #[source]
        source: Box<maos_postgres::Error>,
    },
    /// A command the PostgreSQL backend does not offer yet.
    #[error(
        "not available on the PostgreSQL backend yet: {what} (this workspace uses {url}; the file backend has it)"
    )]
    NotYet {
        /// The command or option.
        what: String,
        /// The backend URL.
        url: String,
    },
}

/// The backend a workspace is configured for.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // made once per command; boxing buys nothing
#[non_exhaustive]
pub enum Choice {
    /// The files under `.maos/`.
    File,
    /// A PostgreSQL server.
    Postgres {
        /// The server (no password).
        url: BackendUrl,
        /// The workspace's namespace on it.
        namespace: String,
        /// Where the choice came from (`MAOS_BACKEND` or `.maos/config.json`).
        origin: String,
    },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Parses a `--backend` value: `file`, or a `postgres://` URL (a password refused).
///
/// # Errors
/// [`Error::BadBackend`] naming the URL with its password removed.
pub fn parse(value: &str, origin: &str) -> Result<Option<BackendUrl>, Error> {
    if value == "file" {
        return Ok(None);
    }
    BackendUrl::parse(value)
        .map(Some)
        .map_err(|source| Error::BadBackend {
            origin: origin.to_string(),
            source: Box::new(source),
        })
}

/// The namespace of a workspace at `root` on `url`: `given`, else the repository's identity.
///
/// # Errors
/// [`Error::Namespace`] for a bad name or a directory outside any git repository.
pub fn namespace_for(
    root: &std::path::Path,
    url: &BackendUrl,
    given: Option<&str>,
) -> Result<String, Error> {
    match given {
        Some(n) => maos_postgres::check_namespace(n)
            .map(|()| n.to_string())
            .map_err(|source| Error::BadNamespace {
                url: url.to_string(),
                source: Box::new(source),
            }),
        None => maos_postgres::default_namespace(root).map_err(|source| Error::Namespace {
            url: url.to_string(),
            source: Box::new(source),
        }),
    }
}

/// The backend `ws` is configured for (`MAOS_BACKEND` / `MAOS_NAMESPACE` first).
///
/// # Errors
/// An unreadable config, a bad URL, no namespace.
pub fn choice(ws: &Workspace) -> Result<Choice, Error> {
    let config = Config::load(ws).map_err(|source| Error::Config {
        ws: ws.root().to_path_buf(),
        source,
    })?;
    let (value, origin) = match env(BACKEND_ENV) {
        Some(v) => (Some(v), BACKEND_ENV.to_string()),
        None => (
            config.backend.clone(),
            ws.config_path().display().to_string(),
        ),
    };
    let Some(url) = value.as_deref().map(|v| parse(v, &origin)).transpose()? else {
        return Ok(Choice::File);
    };
    let Some(url) = url else {
        return Ok(Choice::File);
    };
    let given = env(NAMESPACE_ENV).or(config.namespace);
    let namespace = namespace_for(ws.root(), &url, given.as_deref())?;
    Ok(Choice::Postgres {
        url,
        namespace,
        origin,
    })
}

/// Connects to the server of `choice` (creating or migrating its schema, creating the
/// namespace): what `maos init --backend` checks before recording it.
///
/// # Errors
/// [`Error::Open`]: unreachable, refused, or a schema newer than this binary.
pub fn connect(url: &BackendUrl, namespace: &str, origin: &str) -> Result<Pg, Error> {
    Pg::connect(url, namespace).map_err(|source| Error::Open {
        url: url.to_string(),
        namespace: namespace.to_string(),
        origin: origin.to_string(),
        source: Box::new(source),
    })
}

/// Opens the backend `ws` is configured for.
///
/// # Errors
/// See [`choice`] and [`connect`].
pub fn open(ws: &Workspace) -> Result<Backends, Error> {
    let kind = match choice(ws)? {
        Choice::Postgres {
            url,
            namespace,
            origin,
        } => Kind::Pg(connect(&url, &namespace, &origin)?),
        Choice::File => Kind::File,
    };
    Ok(Backends {
        ws: ws.clone(),
        kind,
    })
}

#[derive(Debug, Clone)]
enum Kind {
    File,
    Pg(Pg),
}

/// The storage of one workspace: one implementation of each mechanism's trait.
#[derive(Debug, Clone)]
pub struct Backends {
    ws: Workspace,
    kind: Kind,
}

impl Backends {
    /// The backend's name: `file` or `postgresql`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::File => "file",
            Kind::Pg(_) => maos_postgres::stores::BACKEND_NAME,
        }
    }

    /// True for the files under `.maos/`.
    pub fn is_file(&self) -> bool {
        matches!(self.kind, Kind::File)
    }

    /// Where the state lives, in words: `.maos/ in ROOT`, or the server and namespace.
    pub fn location(&self) -> String {
        match &self.kind {
            Kind::File => format!("{}", self.ws.maos_dir().display()),
            Kind::Pg(pg) => format!("{} namespace {}", pg.target(), pg.namespace()),
        }
    }

    /// The server connection of the PostgreSQL backend.
    pub fn postgres(&self) -> Option<&Pg> {
        match &self.kind {
            Kind::Pg(pg) => Some(pg),
            Kind::File => None,
        }
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// Refuses `what` on a backend that does not offer it yet.
    ///
    /// # Errors
    /// [`Error::NotYet`] on the PostgreSQL backend.
    pub fn file_only(&self, what: &str) -> Result<(), Error> {
        match &self.kind {
            Kind::File => Ok(()),
            Kind::Pg(pg) => Err(Error::NotYet {
                what: what.to_string(),
                url: format!("{} namespace {}", pg.target(), pg.namespace()),
            }),
        }
    }

    /// Channels and broadcasts.
    pub fn channels(&self) -> Box<dyn ChannelStore> {
        match &self.kind {
            Kind::File => Box::new(FileComm::new(&self.ws)),
            Kind::Pg(pg) => Box::new(PgComm::new(pg)),
        }
    }

    /// Agents' inboxes and their stored topic subscriptions.
    pub fn inboxes(&self) -> Box<dyn InboxStore> {
        match &self.kind {
            Kind::File => Box::new(FileInboxes::new(&self.ws)),
            Kind::Pg(pg) => Box::new(PgInboxes::new(pg)),
        }
    }

    /// The lock table.
    pub fn locks(&self) -> Box<dyn LockStore> {
        match &self.kind {
            Kind::File => Box::new(FileLocks::new(&self.ws)),
            Kind::Pg(pg) => Box::new(PgLocks::new(pg)),
        }
    }

    /// The task graph, acting as `agent`; `lock_wait` bounds the wait for the store's lock
    /// (the file store's kernel lock, the server's tasks guard row).
    ///
    /// # Errors
    /// The file store cannot be opened.
    pub fn tasks(
        &self,
        agent: &AgentId,
        lock_wait: Option<Duration>,
    ) -> Result<Box<dyn TaskStore>, maos_track::Error> {
        match &self.kind {
            Kind::File => {
                let mut opts = maos_track::Options::default().agent(agent.clone());
                if let Some(w) = lock_wait {
                    opts = opts.lock_timeout(w);
                }
                Ok(Box::new(FileTasks::new(TaskTracker::open_with(
                    &self.ws, opts,
                )?)))
            }
            Kind::Pg(pg) => {
                let mut t = PgTasks::new(pg, agent.clone());
                if let Some(w) = lock_wait {
                    t = t.lock_wait(w);
                }
                Ok(Box::new(t))
            }
        }
    }

    /// The merge coordinator's shared state (merge lock, resolution tasks, notices, registry,
    /// queue) acting as `agent`: `None` on the file backend, whose coordinator uses the
    /// workspace's files ([`maos_merge::MergeCoordinator::with_backend`] otherwise). Git stays
    /// local to each clone either way.
    pub fn merge(&self, agent: &AgentId) -> Option<Arc<dyn MergeBackend>> {
        match &self.kind {
            Kind::File => None,
            Kind::Pg(pg) => Some(Arc::new(PgMerge::new(pg, agent.clone()))),
        }
    }

    /// The agent registry.
    pub fn agents(&self) -> Box<dyn AgentStore> {
        match &self.kind {
            Kind::File => Box::new(FileAgents::new(&self.ws)),
            Kind::Pg(pg) => {
                let lease = Config::load(&self.ws)
                    .map(|c| c.agent_lease())
                    .unwrap_or(maos_core::DEFAULT_AGENT_LEASE);
                Box::new(PgAgents::new(pg).lease(lease))
            }
        }
    }
}

/// True when `err` (or a cause of it) is a wait that ran out of time on a backend that is
/// not the files (exit 3 in the CLI, as a file lock's timeout).
pub fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(x) = e {
        if matches!(
            x.downcast_ref::<maos_postgres::Error>(),
            Some(maos_postgres::Error::Timeout { .. } | maos_postgres::Error::Busy { .. })
        ) {
            return true;
        }
        e = x.source();
    }
    false
}
