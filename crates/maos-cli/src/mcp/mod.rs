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
use maos_coordination::core::{AGENT_ENV, ProcessIdentity};
use maos_coordination::session::{AgentName, NamedFrom, name_agent};
use maos_coordination::{AgentId, AgentRegistry, LockGuard, Registration, Workspace, core::Anchor};
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
    let ws = ctx.workspace()?;
    let server = Server::new(ws, ctx);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = server
            .clone()
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| anyhow::anyhow!("starting the MCP session: {e}"))?;
        let reason = running.waiting().await;
        tracing::info!(?reason, "MCP session over");
        server.shutdown();
        anyhow::Ok(())
    })?;
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

/// The state of one server: the workspace, the agent it acts for, the locks it holds.
#[derive(Clone)]
pub(crate) struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    ws: Workspace,
    explicit_agent: Option<String>,
    cwd: std::path::PathBuf,
    me: OnceLock<AgentName>,
    /// Locks held by this process for the agent, by resource.
    locks: Mutex<HashMap<String, LockGuard>>,
    /// What the last `receive` / `read_topics` of each source returned, acknowledged when the
    /// next call comes (the client had the answer then): a call whose answer is lost
    /// (cancelled, timed out, the server killed) gives the same messages again.
    pending: Mutex<HashMap<String, PendingAck>>,
}

/// An acknowledgement held back until the next call on the same source.
#[derive(Debug, Clone)]
pub(crate) enum PendingAck {
    /// A channel consumer's cursor.
    Channel(maos_coordination::Cursor),
    /// A durable subscription's feed position.
    Feed(u64),
    /// The inbox batch last returned.
    Inbox(Box<maos_coordination::comm::InboxBatch>),
}

impl Server {
    fn new(ws: Workspace, ctx: &Ctx) -> Self {
        Self {
            inner: Arc::new(Inner {
                ws,
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
        &self.inner.ws
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
        let name = self.name()?;
        let reg = AgentRegistry::new(self.ws());
        let anchor = Anchor::session(ProcessIdentity::current())
            .in_session(format!("mcp-{}", std::process::id()));
        match reg.get(&name.agent)? {
            // Keep role, branch, worktree; add this server as an anchor.
            Some(old) => {
                let mut r = Registration::new(name.agent.clone()).anchor(anchor);
                r.role = role_from_env()?.or(old.role);
                r.branch = old.branch;
                r.worktree = old.worktree;
                reg.register(r)?;
            }
            None => {
                let mut r = Registration::new(name.agent.clone()).anchor(anchor);
                if let Some(role) = role_from_env()? {
                    r = r.role(role);
                }
                reg.register(r)?;
            }
        }
        tracing::info!(agent = %name.agent, "MCP server acting for agent");
        Ok(self.inner.me.get_or_init(|| name))
    }

    fn name(&self) -> Result<AgentName, ToolError> {
        let inner = &self.inner;
        if inner.explicit_agent.is_none()
            && let Some(client) = ProcessIdentity::anchor()
        {
            // The agent its client's hooks registered: anchored on the same client process.
            // Several sessions can share one client process: then the one whose worktree holds
            // this server's directory, and no guess when that does not decide.
            let list = AgentRegistry::new(&inner.ws).list()?;
            let mut candidates: Vec<_> = list
                .agents
                .into_iter()
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

    pub(crate) fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<String, LockGuard>> {
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

    /// Releases what this server holds (the session is over).
    fn shutdown(&self) {
        let held: Vec<LockGuard> = self.locks().drain().map(|(_, g)| g).collect();
        for g in held {
            if let Err(e) = g.release() {
                tracing::warn!("releasing a lock at shutdown: {e}");
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
