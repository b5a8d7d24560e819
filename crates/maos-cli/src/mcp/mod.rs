//! `maos mcp`: a stdio MCP server, one process per agent session. It is that agent's liveness
//! anchor: locks taken through it are held by this process (freed at once when it ends, killed
//! or not), and its end ends the agent's session (claims released by liveness).
//!
//! Every tool is a thin adapter over library calls: arguments are a struct deriving its JSON
//! schema; a result is structured JSON plus one short human line; a failure is a tool error
//! carrying the same message and exit-code meaning as the CLI (`busy` 3, `conflicts` 4,
//! `deadlock` 5, `usage` 2, `error` 1). A bad argument is a tool error, never a crash.

/// Declares a group of tools: `"name" => handler(Args): "description"`. Generates `tools()`
/// (name, description, schema of `Args`) and `call()` (parse the arguments, run the handler;
/// `None` for a name not in the group).
macro_rules! tool_group {
    ($( $name:literal => $handler:ident($args:ty): $desc:expr ),* $(,)?) => {
        pub(super) fn tools() -> Vec<rmcp::model::Tool> {
            vec![ $( super::tool::<$args>($name, $desc) ),* ]
        }

        pub(super) async fn call(
            s: &super::Server,
            name: &str,
            args: &rmcp::model::JsonObject,
        ) -> Option<super::ToolResult> {
            match name {
                $( $name => Some(match super::parse::<$args>($name, args.clone()) {
                    Ok(a) => $handler(s, a).await,
                    Err(e) => Err(e),
                }), )*
                _ => None,
            }
        }
    };
}

mod agents;
mod comm;
mod locks;
mod merge;
mod tasks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use clap::{Args, ValueEnum};
use maos_coordination::backend::Backends;
use maos_coordination::core::{AGENT_ENV, AgentView, ProcessIdentity};
use maos_coordination::session::{AgentName, NamedFrom, name_agent};
use maos_coordination::{AgentId, Registration, Workspace, core::Anchor};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::ctx::Ctx;
use crate::exit::Exit;

#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    /// Print the configuration snippet a client needs to start this server, and exit.
    #[arg(long, value_name = "CLIENT")]
    print_config: Option<Client>,
}

/// MCP clients with a known configuration format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Client {
    /// Claude Code (`.mcp.json` in the repository).
    Claude,
    /// OpenAI Codex CLI (`~/.codex/config.toml`).
    Codex,
    /// Gemini CLI (`.gemini/settings.json`).
    Gemini,
    /// Cursor (`.cursor/mcp.json`).
    Cursor,
}

pub(crate) fn run(args: McpArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    if let Some(client) = args.print_config {
        out!("{}", config_snippet(client)?)?;
        return Ok(Exit::Ok);
    }
    // Files or a PostgreSQL server: every tool works through the backend's storage traits.
    // On PostgreSQL this process's database session is the agent's liveness anchor (its
    // advisory lock), as the process itself is on the files.
    let backends = ctx.backends()?;
    let server = Server::new(backends, ctx);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let serving = server.clone();
    let served = rt.block_on(async move {
        if !serving.backends().is_file() {
            tokio::spawn(locks::renew_held(serving.clone()));
        }
        let running = serving
            .clone()
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| anyhow::anyhow!("starting the MCP session: {e}"))?;
        let reason = running.waiting().await;
        tracing::info!(?reason, "MCP session over");
        anyhow::Ok(())
    });
    // A tool still waiting on the blocking pool (a lock wait) is not waited for: the process
    // ends, and with it what it holds.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    // Outside the runtime: the PostgreSQL client blocks on a runtime of its own.
    server.shutdown();
    served?;
    Ok(Exit::Ok)
}

fn config_snippet(client: Client) -> anyhow::Result<String> {
    let exe = std::env::current_exe()?;
    let exe = exe.display().to_string();
    Ok(match client {
        Client::Claude => format!(
            "# .mcp.json in the repository root (or run `maos hook install --mcp`)\n{}\n",
            serde_json::to_string_pretty(&json!({ "mcpServers": { "maos": {
                "command": exe, "args": ["mcp"] } } }))?
        ),
        Client::Cursor => format!(
            "# .cursor/mcp.json in the repository root\n{}\n",
            serde_json::to_string_pretty(&json!({ "mcpServers": { "maos": {
                "command": exe, "args": ["mcp"] } } }))?
        ),
        Client::Gemini => format!(
            "# .gemini/settings.json in the repository root (merge into an existing file)\n{}\n",
            serde_json::to_string_pretty(&json!({ "mcpServers": { "maos": {
                "command": exe, "args": ["mcp"], "timeout": 600000 } } }))?
        ),
        Client::Codex => format!(
            "# ~/.codex/config.toml\n[mcp_servers.maos]\ncommand = \"{}\"\nargs = [\"mcp\"]\n\
             # Each agent: set its name, e.g. env = {{ MAOS_AGENT_ID = \"backend-1\" }}\n",
            exe.replace('\\', "\\\\").replace('"', "\\\"")
        ),
    })
}

/// A tool's failure: the CLI's exit-code meaning and a message.
#[derive(Debug)]
pub(crate) struct ToolError {
    code: Exit,
    message: String,
}

impl ToolError {
    pub(crate) fn new(code: Exit, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }
}

/// Any library error becomes a tool error with the CLI's exit-code meaning.
impl<E: Into<anyhow::Error>> From<E> for ToolError {
    fn from(e: E) -> Self {
        let e: anyhow::Error = e.into();
        Self {
            code: crate::exit::code_of(&e),
            message: format!("{e:#}"),
        }
    }
}

/// A successful tool result: structured JSON and one human line.
pub(crate) struct Reply {
    value: Value,
    text: String,
    /// What the CLI would exit with (4 when conflicts were found, 5 a deadlock; 0 otherwise).
    code: Exit,
}

impl Reply {
    pub(crate) fn new<T: Serialize>(value: &T, text: impl Into<String>) -> Result<Self, ToolError> {
        Ok(Self {
            value: serde_json::to_value(value).map_err(|e| {
                ToolError::new(Exit::Error, format!("cannot encode the result: {e}"))
            })?,
            text: text.into(),
            code: Exit::Ok,
        })
    }

    /// Marks a successful call whose finding the CLI reports with `code` (conflicts,
    /// deadlock).
    pub(crate) fn with_code(mut self, code: Exit) -> Self {
        self.code = code;
        self
    }
}

pub(crate) type ToolResult = Result<Reply, ToolError>;

/// One tool: name, description, input schema.
pub(crate) fn tool<A: schemars::JsonSchema>(name: &'static str, description: &'static str) -> Tool {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<A>();
    let mut object = match serde_json::to_value(schema) {
        Ok(Value::Object(o)) => o,
        _ => JsonObject::new(),
    };
    // Clients want an object schema; a struct with no fields has no "properties".
    object.entry("type").or_insert(json!("object"));
    object.entry("properties").or_insert(json!({}));
    object.remove("$schema");
    Tool::new(name, description, Arc::new(object))
}

/// Parses a tool's arguments, naming the tool and the field in the error.
pub(crate) fn parse<A: DeserializeOwned>(tool: &str, args: JsonObject) -> Result<A, ToolError> {
    serde_json::from_value(Value::Object(args)).map_err(|e| {
        ToolError::usage(format!(
            "bad arguments for {tool}: {e} (see the tool's input schema)"
        ))
    })
}

/// The state of one server: the workspace and its backend, the agent it acts for, the locks
/// it holds.
#[derive(Clone)]
pub(crate) struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    backends: Backends,
    explicit_agent: Option<String>,
    cwd: std::path::PathBuf,
    me: OnceLock<AgentName>,
    /// Locks held by this process for the agent, by resource.
    locks: Mutex<HashMap<String, locks::Held>>,
    /// What the last `receive` / `read_topics` of each source returned, acknowledged when the
    /// next call comes (the client had the answer then): a call whose answer is lost
    /// (cancelled, timed out, the server killed) gives the same messages again.
    pending: Mutex<HashMap<String, PendingAck>>,
}

/// An acknowledgement held back until the next call on the same source.
#[derive(Debug, Clone)]
pub(crate) enum PendingAck {
    /// A channel consumer's position.
    Channel(u64),
    /// A durable subscription's feed position.
    Feed(u64),
    /// The inbox batch last returned.
    Inbox(Box<maos_coordination::comm::InboxBatch>),
}

impl Server {
    fn new(backends: Backends, ctx: &Ctx) -> Self {
        Self {
            inner: Arc::new(Inner {
                backends,
                explicit_agent: ctx
                    .explicit_agent
                    .clone()
                    .or_else(|| std::env::var(AGENT_ENV).ok().filter(|a| !a.is_empty())),
                cwd: std::env::current_dir().unwrap_or_else(|_| ctx.root.clone()),
                me: OnceLock::new(),
                locks: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub(crate) fn ws(&self) -> &Workspace {
        self.inner.backends.workspace()
    }

    /// The workspace's storage (files or a PostgreSQL server).
    pub(crate) fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// The registered agent `id`, if any.
    pub(crate) fn registered(&self, id: &AgentId) -> Result<Option<AgentView>, ToolError> {
        let (list, _) = self.backends().agents().list()?;
        Ok(list.into_iter().find(|a| &a.record.id == id))
    }

    /// The agent this server acts for, named and registered on first use (the client's
    /// SessionStart hook has run by then, so an agent it registered under the client process is
    /// found): `MAOS_AGENT_ID`, else the agent anchored on this server's client process, else
    /// the worktree's branch or directory, else `mcp-<pid>`. The server registers itself as a
    /// session anchor of that agent.
    pub(crate) fn me(&self) -> Result<&AgentName, ToolError> {
        if let Some(n) = self.inner.me.get() {
            return Ok(n);
        }
        // The registry may be a server: called where blocking is allowed.
        let name = blocking_here(|| {
            let name = self.name()?;
            // Keep role, branch, worktree; add this server as an anchor.
            let old = self.registered(&name.agent)?.map(|v| v.record);
            let mut r = self.anchored(Registration::new(name.agent.clone()));
            r.role = role_from_env()?.or(old.as_ref().and_then(|o| o.role.clone()));
            r.branch = old.as_ref().and_then(|o| o.branch.clone());
            r.worktree = old.and_then(|o| o.worktree);
            self.backends().agents().register(r)?;
            Ok::<_, ToolError>(name)
        })?;
        tracing::info!(agent = %name.agent, backend = self.backends().name(), "MCP server acting for agent");
        Ok(self.inner.me.get_or_init(|| name))
    }

    /// `r` anchored on this server: its process on the files; on PostgreSQL its database
    /// session (a registration without an anchor is anchored there), which ends with the
    /// process, killed or not, and for every machine.
    pub(crate) fn anchored(&self, r: Registration) -> Registration {
        if self.backends().is_file() {
            r.anchor(
                Anchor::session(ProcessIdentity::current())
                    .in_session(format!("mcp-{}", std::process::id())),
            )
        } else {
            r
        }
    }

    fn name(&self) -> Result<AgentName, ToolError> {
        let inner = &self.inner;
        if inner.explicit_agent.is_none()
            && let Some(client) = ProcessIdentity::anchor()
        {
            // The agent its client's hooks registered: anchored on the same client process.
            // Several sessions can share one client process: then the one whose worktree holds
            // this server's directory, and no guess when that does not decide.
            let (list, _) = self.backends().agents().list()?;
            let mut candidates: Vec<_> = list
                .into_iter()
                .map(|v| v.record)
                .filter(|a| a.anchor_list().iter().any(|x| x.process == client))
                .collect();
            if candidates.len() > 1 {
                candidates.retain(|a| {
                    a.worktree
                        .as_deref()
                        .is_some_and(|w| inner.cwd.starts_with(w))
                });
            }
            if let [only] = &candidates[..] {
                return Ok(AgentName {
                    agent: only.id.clone(),
                    named_from: NamedFrom::Session,
                });
            }
        }
        Ok(name_agent(
            inner.explicit_agent.as_deref(),
            &inner.cwd,
            None,
            &format!("mcp-{}", std::process::id()),
        )?)
    }

    pub(crate) fn agent(&self) -> Result<AgentId, ToolError> {
        Ok(self.me()?.agent.clone())
    }

    pub(crate) fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, locks::Held>> {
        self.inner.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the acknowledgement held back for `source`, if any.
    pub(crate) fn take_pending(&self, source: &str) -> Option<PendingAck> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(source)
    }

    /// Holds back the acknowledgement of what is being returned for `source`.
    pub(crate) fn set_pending(&self, source: &str, ack: PendingAck) {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(source.to_owned(), ack);
    }

    /// Releases what this server holds (the session is over). Called outside the runtime.
    fn shutdown(&self) {
        let held: Vec<locks::Held> = self.locks().drain().map(|(_, g)| g).collect();
        for g in held {
            if let Err(e) = g.release() {
                tracing::warn!("releasing a lock at shutdown: {}", e.message);
            }
        }
    }

    /// Runs a blocking library call on the blocking pool.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Server) -> Result<T, ToolError> + Send + 'static,
    ) -> Result<T, ToolError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(s))
            .await
            .map_err(|e| ToolError::new(Exit::Error, format!("the tool's worker failed: {e}")))?
    }

    async fn dispatch(&self, name: &str, args: JsonObject) -> ToolResult {
        if let Some(r) = comm::call(self, name, &args).await {
            return r;
        }
        if let Some(r) = locks::call(self, name, &args).await {
            return r;
        }
        if let Some(r) = tasks::call(self, name, &args).await {
            return r;
        }
        if let Some(r) = merge::call(self, name, &args).await {
            return r;
        }
        if let Some(r) = agents::call(self, name, &args).await {
            return r;
        }
        Err(ToolError::usage(format!(
            "unknown tool {name:?}; tools/list names them all"
        )))
    }
}

/// Runs `f`, which may block (a call to the PostgreSQL server), from wherever this server
/// is: on a runtime worker it moves the worker's other tasks away first; on the blocking
/// pool or outside the runtime it just runs.
pub(crate) fn blocking_here<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// `MAOS_AGENT_ROLE`: the role an agent registered by this server (or a hook) takes.
pub(crate) fn role_from_env() -> Result<Option<maos_coordination::AgentRole>, ToolError> {
    match std::env::var(crate::hook::ROLE_ENV) {
        Ok(r) if !r.is_empty() => {
            Ok(Some(maos_coordination::AgentRole::new(r).map_err(|e| {
                ToolError::usage(format!("{}: {e}", crate::hook::ROLE_ENV))
            })?))
        }
        _ => Ok(None),
    }
}

/// Every tool.
pub(crate) fn all_tools() -> Vec<Tool> {
    let mut v = comm::tools();
    v.extend(locks::tools());
    v.extend(tasks::tools());
    v.extend(merge::tools());
    v.extend(agents::tools());
    v
}

/// The result of a tool call as MCP content.
fn to_result(r: ToolResult) -> CallToolResult {
    match r {
        Ok(reply) => {
            let mut out = CallToolResult::success(vec![ContentBlock::text(reply.text)]);
            out.structured_content =
                Some(json!({ "result": reply.value, "exit_code": reply.code as u8 }));
            out
        }
        Err(e) => {
            let kind = match e.code {
                Exit::Busy => "busy",
                Exit::Conflicts => "conflicts",
                Exit::Deadlock => "deadlock",
                Exit::Usage => "usage",
                _ => "error",
            };
            let mut out =
                CallToolResult::error(vec![ContentBlock::text(format!("{kind}: {}", e.message))]);
            out.structured_content = Some(json!({
                "error": e.message, "kind": kind, "exit_code": e.code as u8,
            }));
            out
        }
    }
}

const INSTRUCTIONS: &str = "maos coordinates you with the other agents working in this \
repository: message them (send, receive, broadcast, inbox), lock files before editing ones others \
may touch (lock_acquire, lock_release; held until you release them or this session ends), share \
one task list (task_claim takes the next ready task; task_done finishes it), and predict merge \
conflicts between agent branches (merge_check, merge_check_all). Call whoami first.";

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("maos", env!("CARGO_PKG_VERSION"))
            .with_title("maos: coordination for many agents in one repository");
        info.instructions = Some(INSTRUCTIONS.into());
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(all_tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        let span = tracing::info_span!("tool", name = %request.name);
        let r = tracing::Instrument::instrument(self.dispatch(&request.name, args), span).await;
        if let Err(e) = &r {
            tracing::debug!(tool = %request.name, code = ?e.code, "{}", e.message);
        }
        Ok(CallToolResponse::Complete(to_result(r)))
    }
}
