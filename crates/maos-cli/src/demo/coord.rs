//! How a demo agent drives maos: through the library (`--via library`), or only as a coding
//! agent can (`--via mcp`): its own `maos mcp` server, spoken to with the official Rust MCP
//! client over the child's stdio, and the Claude Code hooks (`maos hook claude EVENT` with
//! Claude Code's JSON payloads) around every file it reads and edits.
//!
//! [`Coord`] is the one surface the agent's logic uses; each operation says in its body what
//! it is in both worlds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use maos_coordination::backend::Backends;
use maos_coordination::comm::{ChannelReader, Start as ReadFrom};
use maos_coordination::core::ProcessIdentity;
use maos_coordination::lock::{FileLock, LockMode};
use maos_coordination::merge::MergeCoordinator;
use maos_coordination::postgres::lock::PgLock;
use maos_coordination::{
    AgentId, AgentRole, ChannelName, MergeOutcome, Message, Recipients, Registration, ResourceName,
    Task, TaskId, TaskStatus, Workspace,
};
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{Peer, RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

use super::shared::{Guard, Keep, Tasks, Watch, sync};

/// Which way the agents reach maos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Via {
    /// The Rust library (maos-coordination), called in the agent's process.
    Library,
    /// Only an MCP server per agent (`maos mcp`) and Claude Code hooks (`maos hook claude`).
    Mcp,
}

impl Via {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Via::Library => "library",
            Via::Mcp => "mcp",
        }
    }
}

/// Who a message is for.
#[derive(Debug, Clone)]
pub(crate) enum To {
    All,
    Agent(AgentId),
    Role(AgentRole),
}

/// A lock the agent holds: a guard in its process (library), or a lock its MCP server holds.
pub(crate) struct Held {
    pub(crate) resource: String,
    guard: Option<Guard>,
}

/// Why a lock was not had.
#[derive(Debug)]
pub(crate) enum LockFailure {
    /// The wait was aborted by the deadlock detector: this agent is the victim.
    Deadlock(String),
    Error(anyhow::Error),
}

impl From<anyhow::Error> for LockFailure {
    fn from(e: anyhow::Error) -> Self {
        LockFailure::Error(e)
    }
}

/// What the agent got when it asked to finish a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// This call completed it.
    Completed,
    /// Someone else (the merge queue) completed it first.
    AlreadyCompleted,
}

/// Counters reported at the end (how much went through which surface).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stats {
    pub(crate) mcp_calls: u64,
    pub(crate) hook_calls: u64,
    pub(crate) edits_allowed: u64,
    pub(crate) edits_denied: u64,
}

/// An agent's connection to maos.
pub(crate) struct Coord {
    me: AgentId,
    ws: Workspace,
    kind: Kind,
    pub(crate) stats: Stats,
}

enum Kind {
    Library(Box<Library>),
    Mcp(Box<Mcp>),
}

struct Library {
    backends: Backends,
    tasks: Tasks,
    watch: Watch,
}

struct Mcp {
    client: RunningService<RoleClient, ()>,
    server_pid: Option<u32>,
    hooks: Hooks,
}

/// What the agent says of itself when it starts.
pub(crate) struct Start {
    pub(crate) role: AgentRole,
    pub(crate) branch: String,
    pub(crate) worktree: PathBuf,
}

impl Coord {
    /// Library: registers the agent (role, branch, worktree), anchored on this process.
    /// MCP: the SessionStart hook registers the session (named from the worktree's branch),
    /// then the MCP server starts and `whoami` must name the same agent. Returns a line saying
    /// who the agent is and how it was named.
    pub(crate) async fn start(
        ws: &Workspace,
        me: &AgentId,
        via: Via,
        start: &Start,
        keep: &Keep,
    ) -> anyhow::Result<(Self, String)> {
        match via {
            Via::Library => {
                // Every mechanism on the workspace's backend (files or PostgreSQL).
                let (backends, tasks, watch) = sync(|| -> anyhow::Result<_> {
                    let backends = maos_coordination::backend::open(ws)?;
                    keep.hold(&backends);
                    backends.agents().register(
                        Registration::new(me.clone())
                            .role(start.role.clone())
                            .branch(start.branch.clone())
                            .worktree(start.worktree.clone())
                            .process(ProcessIdentity::current()),
                    )?;
                    let tasks = Tasks::open(&backends, me)?;
                    let watch = tasks.watch()?;
                    Ok((backends, tasks, watch))
                })?;
                let said = format!(
                    "library on the {} backend, role {}",
                    backends.name(),
                    start.role
                );
                let coord = Self {
                    me: me.clone(),
                    ws: ws.clone(),
                    kind: Kind::Library(Box::new(Library {
                        backends,
                        tasks,
                        watch,
                    })),
                    stats: Stats::default(),
                };
                Ok((coord, said))
            }
            Via::Mcp => {
                let mut hooks = Hooks::new(&start.worktree, me)?;
                let briefing = hooks.session_start().await?;
                anyhow::ensure!(
                    briefing.contains(&format!("`{me}`")),
                    "the SessionStart hook named someone else: {briefing}"
                );
                let exe = std::env::current_exe().context("locating the maos binary")?;
                let mut cmd = tokio::process::Command::new(exe);
                // Started as a client starts it: `maos mcp` in the agent's worktree, nothing
                // else; the server finds the workspace and the agent (the one the session's
                // hook registered under this process) by itself.
                cmd.arg("mcp")
                    .current_dir(&start.worktree)
                    .env_remove("MAOS_AGENT_ID")
                    .env_remove("MAOS_WORKSPACE")
                    .env_remove("RUST_LOG");
                let (transport, _) = TokioChildProcess::builder(cmd)
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("starting `maos mcp`")?;
                let server_pid = transport.id();
                let client = ()
                    .serve(transport)
                    .await
                    .map_err(|e| anyhow::anyhow!("initialising the MCP session: {e}"))?;
                let mut coord = Self {
                    me: me.clone(),
                    ws: ws.clone(),
                    kind: Kind::Mcp(Box::new(Mcp {
                        client,
                        server_pid,
                        hooks,
                    })),
                    stats: Stats::default(),
                };
                let who = coord.tool("whoami", json!({})).await?;
                let named = who["agent"].as_str().unwrap_or_default();
                anyhow::ensure!(
                    named == me.as_str(),
                    "the MCP server acts for {named:?}, not {me}: {who}"
                );
                Ok((
                    coord,
                    format!(
                        "own MCP server (pid {}), named by its {}",
                        server_pid.unwrap_or_default(),
                        who["named_from"].as_str().unwrap_or("?")
                    ),
                ))
            }
        }
    }

    pub(crate) fn is_mcp(&self) -> bool {
        matches!(self.kind, Kind::Mcp(_))
    }

    /// A handle for sending and receiving messages from another task of this process (the
    /// backend answers API requests while it works).
    pub(crate) fn messenger(&self) -> Messenger {
        match &self.kind {
            Kind::Library(l) => Messenger::Library {
                backends: l.backends.clone(),
                me: self.me.clone(),
                channels: Readers::default(),
            },
            Kind::Mcp(m) => Messenger::Mcp {
                peer: m.client.peer().clone(),
                calls: 0,
            },
        }
    }

    /// Calls an MCP tool; a tool error becomes an error carrying its kind.
    async fn tool(&mut self, name: &str, args: Value) -> anyhow::Result<Value> {
        let Kind::Mcp(m) = &self.kind else {
            bail!("tool {name} called without an MCP server");
        };
        self.stats.mcp_calls += 1;
        call_tool(m.client.peer(), name, args).await
    }

    // ---- tasks ----

    /// The best ready task, claimed and started (`task_claim`); `None` when nothing is ready.
    pub(crate) async fn claim(&mut self) -> anyhow::Result<Option<Task>> {
        match &mut self.kind {
            Kind::Library(l) => sync(|| l.tasks.claim(&self.me)),
            Kind::Mcp(_) => match self.tool("task_claim", json!({})).await {
                Ok(t) => Ok(Some(task(t)?)),
                Err(e) if kind_of(&e) == Some("busy") => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    pub(crate) async fn get(&mut self, id: &TaskId) -> anyhow::Result<Task> {
        match &mut self.kind {
            Kind::Library(l) => {
                sync(|| l.tasks.get(id))?.with_context(|| format!("task {id} vanished"))
            }
            Kind::Mcp(_) => task(self.tool("task_show", json!({ "id": id })).await?),
        }
    }

    pub(crate) async fn list(&mut self) -> anyhow::Result<Vec<Task>> {
        match &mut self.kind {
            Kind::Library(l) => sync(|| l.tasks.list()),
            Kind::Mcp(_) => Ok(serde_json::from_value(
                self.tool("task_list", json!({})).await?,
            )?),
        }
    }

    /// Completes a task (library: the idempotent `complete`; MCP: `task_start` if it is
    /// pending, then `task_done`, which refuses a task that is already completed, so that
    /// case is read back with `task_show`).
    pub(crate) async fn complete(&mut self, id: &TaskId, note: &str) -> anyhow::Result<Finish> {
        match &mut self.kind {
            Kind::Library(l) => {
                let before = sync(|| -> anyhow::Result<_> {
                    let before = l.tasks.get(id)?.map(|t| t.status);
                    l.tasks.complete(id, note)?;
                    Ok(before)
                })?;
                Ok(if before == Some(TaskStatus::Completed) {
                    Finish::AlreadyCompleted
                } else {
                    Finish::Completed
                })
            }
            Kind::Mcp(_) => {
                let t = self.get(id).await?;
                match t.status {
                    TaskStatus::Completed => return Ok(Finish::AlreadyCompleted),
                    TaskStatus::Pending => {
                        self.tool("task_start", json!({ "id": id })).await?;
                    }
                    _ => {}
                }
                match self
                    .tool("task_done", json!({ "id": id, "note": note }))
                    .await
                {
                    Ok(_) => Ok(Finish::Completed),
                    Err(e) => {
                        if self.get(id).await?.status == TaskStatus::Completed {
                            Ok(Finish::AlreadyCompleted)
                        } else {
                            Err(e)
                        }
                    }
                }
            }
        }
    }

    pub(crate) async fn fail(&mut self, id: &TaskId, reason: &str) -> anyhow::Result<()> {
        match &mut self.kind {
            Kind::Library(l) => {
                sync(|| l.tasks.update_status(id, TaskStatus::Failed, Some(reason)))?;
            }
            Kind::Mcp(_) => {
                self.tool("task_fail", json!({ "id": id, "reason": reason }))
                    .await?;
            }
        }
        Ok(())
    }

    /// Sleeps until the tasks change or `timeout` passes (library: the tracker's file watch;
    /// MCP: `read_topics` on the `tasks` topic with a wait).
    pub(crate) async fn wait_for_tasks(&mut self, timeout: Duration) -> anyhow::Result<()> {
        match &mut self.kind {
            Kind::Library(l) => {
                l.watch.changed(timeout).await?;
            }
            Kind::Mcp(_) => {
                self.tool(
                    "read_topics",
                    json!({ "patterns": ["tasks"], "wait_seconds": timeout.as_secs_f64() }),
                )
                .await?;
            }
        }
        Ok(())
    }

    // ---- locks ----

    /// Takes an exclusive lock on a repository path, waiting up to `wait`. `on_busy` is
    /// called once with the holder when the lock is not free at once.
    pub(crate) async fn lock(
        &mut self,
        path: &str,
        purpose: &str,
        wait: Duration,
        on_busy: impl FnOnce(&str),
    ) -> Result<Held, LockFailure> {
        match &mut self.kind {
            Kind::Library(l) => {
                let res = ResourceName::new(path).map_err(anyhow::Error::from)?;
                let (me, ws) = (&self.me, &self.ws);
                let guard = sync(|| lock_library(l, ws, me, &res, purpose, wait, on_busy))?;
                Ok(Held {
                    resource: path.to_owned(),
                    guard: Some(guard),
                })
            }
            Kind::Mcp(_) => {
                let args = |wait: f64| json!({ "resource": path, "purpose": purpose, "wait_seconds": wait });
                match self.tool("lock_acquire", args(0.0)).await {
                    Ok(_) => {}
                    Err(e) if kind_of(&e) == Some("busy") => {
                        let check = self.tool("lock_check", json!({ "resource": path })).await?;
                        match check["holders"][0]["owner"].as_str() {
                            Some(h) => on_busy(&format!("held by {h}")),
                            None => on_busy("queued behind an earlier waiter"),
                        }
                        match self.tool("lock_acquire", args(wait.as_secs_f64())).await {
                            Ok(_) => {}
                            Err(e) if kind_of(&e) == Some("deadlock") => {
                                return Err(LockFailure::Deadlock(format!("{e:#}")));
                            }
                            Err(e) => return Err(LockFailure::Error(e)),
                        }
                    }
                    // Even a try (wait 0) queues for an instant, long enough to be picked as
                    // the victim of the cycle it would close.
                    Err(e) if kind_of(&e) == Some("deadlock") => {
                        return Err(LockFailure::Deadlock(format!("{e:#}")));
                    }
                    Err(e) => return Err(LockFailure::Error(e)),
                }
                Ok(Held {
                    resource: path.to_owned(),
                    guard: None,
                })
            }
        }
    }

    pub(crate) async fn unlock(&mut self, held: Held) -> anyhow::Result<()> {
        match held.guard {
            Some(g) => sync(|| g.release())?,
            None => {
                self.tool("lock_release", json!({ "resource": held.resource }))
                    .await?;
            }
        }
        Ok(())
    }

    // ---- merges ----

    /// Merges `source` into `target` (library: the merge coordinator, under the merge lock).
    /// Through MCP no tool merges: the agent checks the pair (`merge_check`) and leaves the
    /// merge to the merge queue, which completes the pair's tasks when it merges. Returns a
    /// line saying what happened, and whether this agent moved the target.
    pub(crate) async fn merge(
        &mut self,
        source: &str,
        target: &str,
    ) -> anyhow::Result<(String, bool)> {
        match &mut self.kind {
            Kind::Library(l) => {
                let mut coord = MergeCoordinator::new(&self.ws, self.me.clone())?;
                if let Some(shared) = l.backends.merge(&self.me) {
                    coord = coord.with_backend(shared);
                }
                let outcome = sync(|| coord.merge_blocking(source, target))?;
                Ok(match outcome {
                    MergeOutcome::FastForward { to, .. } => (
                        format!("fast-forwarded {target} to {source} ({})", short(&to)),
                        true,
                    ),
                    MergeOutcome::Merged { commit, .. } => {
                        (format!("{source} into {target} ({})", short(&commit)), true)
                    }
                    MergeOutcome::UpToDate { .. } => {
                        (format!("{target} already contains {source}"), false)
                    }
                    MergeOutcome::Conflicts(c) => bail!(
                        "{source} still conflicts with {target} in {}",
                        c.conflicted_paths()
                            .into_iter()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
            }
            Kind::Mcp(_) => {
                let check = self
                    .tool("merge_check", json!({ "source": source, "target": target }))
                    .await?;
                let clean = check["conflicts"].as_array().is_none_or(Vec::is_empty);
                anyhow::ensure!(clean, "{source} still conflicts with {target}: {check}");
                Ok((
                    if check["relation"] == "up_to_date" {
                        format!("{target} already contains {source} (the merge queue merged it)")
                    } else {
                        format!(
                            "{source} merges cleanly into {target} now; left to the merge queue \
                             (no MCP tool merges)"
                        )
                    },
                    false,
                ))
            }
        }
    }

    // ---- files (Claude Code hooks around the agent's own reads and edits) ----

    /// The agent read `file` (MCP: `PostToolUse` for Read, which records what it saw).
    pub(crate) async fn read_hook(&mut self, file: &Path, content: &str) -> anyhow::Result<()> {
        if let Kind::Mcp(m) = &mut self.kind {
            let input = json!({ "file_path": file });
            let response = json!({ "type": "text", "file": {
                "filePath": file, "content": content,
                "numLines": content.lines().count(), "startLine": 1,
                "totalLines": content.lines().count() } });
            m.hooks.post_tool_use("Read", input, response).await?;
            self.stats.hook_calls = m.hooks.calls;
        }
        Ok(())
    }

    /// May the agent write `file` (MCP: `PreToolUse` for the Edit or Write tool)? An error
    /// when the hook denies it, with the hook's reason.
    pub(crate) async fn before_edit(&mut self, file: &Path, input: &Value) -> anyhow::Result<()> {
        if let Kind::Mcp(m) = &mut self.kind {
            let tool = tool_of(input);
            let verdict = m.hooks.pre_tool_use(tool, input.clone()).await;
            self.stats.hook_calls = m.hooks.calls;
            match verdict {
                Ok(()) => self.stats.edits_allowed += 1,
                Err(e) => {
                    self.stats.edits_denied += 1;
                    return Err(e.context(format!("{tool} of {} refused", file.display())));
                }
            }
        }
        Ok(())
    }

    /// The agent wrote `file` (MCP: `PostToolUse` for the Edit or Write tool).
    pub(crate) async fn after_edit(&mut self, file: &Path, input: &Value) -> anyhow::Result<()> {
        if let Kind::Mcp(m) = &mut self.kind {
            let response = json!({ "filePath": file, "success": true });
            m.hooks
                .post_tool_use(tool_of(input), input.clone(), response)
                .await?;
            self.stats.hook_calls = m.hooks.calls;
        }
        Ok(())
    }

    /// Ends the session. MCP: the Stop hook (what is still held: must be nothing), the MCP
    /// server is shut down (stdin closed; it exits and its locks go with it), then SessionEnd
    /// releases and unregisters the agent. Returns what Stop reported, if anything.
    pub(crate) async fn end(mut self) -> anyhow::Result<(Stats, Option<String>)> {
        let mut stop_said = None;
        if let Kind::Mcp(m) = self.kind {
            let Mcp {
                client,
                server_pid,
                mut hooks,
            } = *m;
            stop_said = hooks.stop().await?;
            client
                .cancel()
                .await
                .map_err(|e| anyhow::anyhow!("closing the MCP session: {e}"))?;
            if let Some(pid) = server_pid {
                anyhow::ensure!(
                    ProcessIdentity::of(pid).is_none(),
                    "the MCP server (pid {pid}) still runs after its session was closed"
                );
            }
            hooks.session_end().await?;
            self.stats.hook_calls = hooks.calls;
        }
        Ok((self.stats, stop_said))
    }
}

/// Sending and receiving messages, usable from a second task of the agent.
pub(crate) enum Messenger {
    Library {
        backends: Backends,
        me: AgentId,
        /// A reader per channel, positioned after what was read.
        channels: Readers,
    },
    Mcp {
        peer: Peer<RoleClient>,
        calls: u64,
    },
}

impl Messenger {
    pub(crate) fn calls(&self) -> u64 {
        match self {
            Messenger::Library { .. } => 0,
            Messenger::Mcp { calls, .. } => *calls,
        }
    }

    /// Sends `payload` on `channel`; returns the message id. `in_reply_to` goes into the
    /// envelope's metadata (library) and, since the MCP `send` tool cannot set metadata, into
    /// the payload too (`"in_reply_to"`), where the asker looks for it either way.
    pub(crate) async fn send(
        &mut self,
        channel: &str,
        to: To,
        mut payload: Value,
        in_reply_to: Option<&str>,
    ) -> anyhow::Result<String> {
        if let (Some(r), Value::Object(o)) = (in_reply_to, &mut payload) {
            o.insert("in_reply_to".into(), json!(r));
        }
        match self {
            Messenger::Library { backends, me, .. } => {
                let name = ChannelName::new(channel)?;
                let recipients = match to {
                    To::All => Recipients::All,
                    To::Agent(a) => Recipients::Agent(a),
                    To::Role(r) => Recipients::Role(r),
                };
                let mut msg = Message::new(me.clone(), recipients, payload);
                if let Some(r) = in_reply_to {
                    let id = r.parse().ok();
                    msg.metadata.reply_to = id;
                    msg.metadata.correlation_id = id;
                }
                let id = msg.id;
                let msg = msg.map(|p| serde_json::value::to_raw_value(&p));
                let msg = Message {
                    payload: msg.payload?,
                    id: msg.id,
                    timestamp: msg.timestamp,
                    sender: msg.sender,
                    recipients: msg.recipients,
                    metadata: msg.metadata,
                };
                sync(|| backends.channels().send(&name, &msg, SEND_WAIT))?;
                Ok(id.to_string())
            }
            Messenger::Mcp { peer, calls } => {
                let mut args = json!({ "channel": channel, "data": payload });
                match to {
                    To::All => {}
                    To::Agent(a) => args["to"] = json!(a),
                    To::Role(r) => args["role"] = json!(r),
                }
                *calls += 1;
                let r = call_tool(peer, "send", args).await?;
                Ok(r["id"].as_str().unwrap_or_default().to_owned())
            }
        }
    }

    /// The new messages addressed to this agent on `channel`, each once, waiting up to
    /// `wait` for the first (library: a cursor per channel; MCP: `receive`, whose durable
    /// consumer acknowledges what it returns).
    pub(crate) async fn receive(
        &mut self,
        channel: &str,
        wait: Duration,
    ) -> anyhow::Result<Vec<Message<Value>>> {
        match self {
            Messenger::Library {
                backends,
                me,
                channels,
            } => {
                let mut reader = match channels.0.remove(channel) {
                    Some(r) => r,
                    None => sync(|| -> anyhow::Result<_> {
                        let store = backends.channels();
                        // What is addressed to this agent (by id, role or everyone).
                        let filter = store.filter_for(me.clone())?;
                        Ok(store.reader(
                            &ChannelName::new(channel)?,
                            ReadFrom::After(0),
                            filter,
                            true,
                        )?)
                    })?,
                };
                let (reader, read) = tokio::task::spawn_blocking(move || {
                    let read = reader.wait(wait);
                    (reader, read)
                })
                .await?;
                channels.0.insert(channel.to_owned(), reader);
                let mut out = Vec::new();
                for d in read?.messages {
                    let m = d.message;
                    let payload: Value = serde_json::from_str(m.payload.get())
                        .with_context(|| format!("a message on {channel} is not JSON"))?;
                    out.push(Message {
                        payload,
                        id: m.id,
                        timestamp: m.timestamp,
                        sender: m.sender,
                        recipients: m.recipients,
                        metadata: m.metadata,
                    });
                }
                Ok(out)
            }
            Messenger::Mcp { peer, calls } => {
                *calls += 1;
                let r = call_tool(
                    peer,
                    "receive",
                    json!({ "channel": channel, "wait_seconds": wait.as_secs_f64() }),
                )
                .await?;
                let mut out = Vec::new();
                for m in r["messages"].as_array().into_iter().flatten() {
                    out.push(
                        serde_json::from_value(m["message"].clone()).with_context(|| {
                            format!("a message from the receive tool is not an envelope: {m}")
                        })?,
                    );
                }
                Ok(out)
            }
        }
    }
}

/// The reply's correlation: the envelope's `reply_to`, else the payload's `in_reply_to`.
/// The channel readers of a messenger. A reader may own a runtime of its own (the file
/// backend's waits) or a server connection: dropped where blocking is allowed.
#[derive(Default)]
pub(crate) struct Readers(HashMap<String, Box<dyn ChannelReader>>);

impl Drop for Readers {
    fn drop(&mut self) {
        let readers = std::mem::take(&mut self.0);
        sync(|| drop(readers));
    }
}

/// How long a send waits for the channel's lock (the file backend).
const SEND_WAIT: Duration = Duration::from_secs(10);

/// Takes the lock on `res` for `me` on the workspace's backend, held by this process (a
/// guard), telling `on_busy` whom it waits for when it is taken; a deadlock victim's wait
/// ends in [`LockFailure::Deadlock`].
fn lock_library(
    l: &Library,
    ws: &Workspace,
    me: &AgentId,
    res: &ResourceName,
    purpose: &str,
    wait: Duration,
    on_busy: impl FnOnce(&str),
) -> Result<Guard, LockFailure> {
    let busy = |on_busy: &dyn Fn(&str)| -> Result<(), LockFailure> {
        let holders = l
            .backends
            .locks()
            .conflicting(res, LockMode::Exclusive)
            .map_err(anyhow::Error::from)?;
        match holders.first() {
            Some(h) => on_busy(&format!("held by {}", h.owner)),
            // Released meanwhile, and an earlier waiter has the next turn.
            None => on_busy("queued behind an earlier waiter"),
        }
        Ok(())
    };
    let once = std::cell::Cell::new(Some(on_busy));
    let tell = |what: &str| {
        if let Some(f) = once.take() {
            f(what);
        }
    };
    match l.backends.postgres() {
        None => {
            let lock = FileLock::new(ws, res.clone()).agent(me.clone()).wait(wait);
            let file = |e: maos_coordination::lock::Error| match e {
                e @ maos_coordination::lock::Error::Deadlock { .. } => {
                    LockFailure::Deadlock(e.to_string())
                }
                e => LockFailure::Error(e.into()),
            };
            if let Some(g) = lock.try_acquire(purpose).map_err(file)? {
                return Ok(Guard::File(g));
            }
            busy(&tell)?;
            lock.acquire_blocking(purpose)
                .map(Guard::File)
                .map_err(file)
        }
        Some(pg) => {
            let lock = PgLock::new(pg, res.clone()).agent(me.clone()).wait(wait);
            let server = |e: maos_coordination::postgres::Error| match e {
                e @ maos_coordination::postgres::Error::Deadlock { .. } => {
                    LockFailure::Deadlock(e.to_string())
                }
                e => LockFailure::Error(e.into()),
            };
            if let Some(g) = lock.try_acquire(purpose).map_err(server)? {
                return Ok(Guard::Pg(g));
            }
            busy(&tell)?;
            lock.acquire(purpose).map(Guard::Pg).map_err(server)
        }
    }
}

pub(crate) fn reply_to(m: &Message<Value>) -> Option<String> {
    m.metadata
        .reply_to
        .map(|id| id.to_string())
        .or_else(|| m.payload["in_reply_to"].as_str().map(str::to_owned))
}

async fn call_tool(peer: &Peer<RoleClient>, name: &str, args: Value) -> anyhow::Result<Value> {
    let Value::Object(args) = args else {
        bail!("the arguments of {name} are not an object");
    };
    let r: CallToolResult = peer
        .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args))
        .await
        .map_err(|e| anyhow::anyhow!("MCP call {name}: {e}"))?;
    let s = r.structured_content.clone().unwrap_or(Value::Null);
    if r.is_error == Some(true) {
        return Err(anyhow::Error::new(ToolFailed {
            kind: s["kind"].as_str().unwrap_or("error").to_owned(),
            message: s["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{:?}", r.content)),
        })
        .context(format!("MCP tool {name}")));
    }
    anyhow::ensure!(
        s.get("result").is_some(),
        "MCP tool {name} answered without a structured result: {:?}",
        r.content
    );
    Ok(s["result"].clone())
}

/// A tool error: its kind (`busy`, `deadlock`, `conflicts`, `usage`, `error`) and message.
#[derive(Debug)]
struct ToolFailed {
    kind: String,
    message: String,
}

impl std::fmt::Display for ToolFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ToolFailed {}

fn kind_of(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<ToolFailed>().map(|t| t.kind.as_str())
}

fn task(v: Value) -> anyhow::Result<Task> {
    serde_json::from_value(v.clone()).with_context(|| format!("not a task: {v}"))
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn tool_of(input: &Value) -> &'static str {
    if input.get("content").is_some() {
        "Write"
    } else {
        "Edit"
    }
}

/// Claude Code's hooks, run as Claude Code runs them: `maos hook claude EVENT` in the session's
/// directory, the event's JSON on stdin, the answer on stdout (exit 2: blocked, reason on
/// stderr).
struct Hooks {
    exe: PathBuf,
    cwd: PathBuf,
    session: String,
    transcript: PathBuf,
    calls: u64,
}

impl Hooks {
    fn new(cwd: &Path, me: &AgentId) -> anyhow::Result<Self> {
        let session = maos_coordination::MessageId::new().to_string();
        Ok(Self {
            exe: std::env::current_exe().context("locating the maos binary")?,
            cwd: cwd.to_path_buf(),
            transcript: std::env::temp_dir().join(format!("maos-demo-{me}-{session}.jsonl")),
            session,
            calls: 0,
        })
    }

    /// Runs the hook for `event`; returns its JSON answer (`Null` when it printed nothing).
    async fn run(&mut self, event: &str, fields: Value) -> anyhow::Result<Value> {
        let mut input = json!({
            "session_id": self.session,
            "transcript_path": self.transcript,
            "cwd": self.cwd,
            "hook_event_name": event,
        });
        if let (Value::Object(i), Value::Object(f)) = (&mut input, fields) {
            i.extend(f);
        }
        self.calls += 1;
        let (exe, cwd, event_s) = (self.exe.clone(), self.cwd.clone(), event.to_owned());
        let out = tokio::task::spawn_blocking(move || -> anyhow::Result<std::process::Output> {
            use std::io::Write as _;
            let mut child = std::process::Command::new(&exe)
                .args(["hook", "claude", &event_s])
                .current_dir(&cwd)
                .env_remove("MAOS_AGENT_ID")
                .env_remove("MAOS_WORKSPACE")
                .env_remove("RUST_LOG")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("running maos hook claude {event_s}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(input.to_string().as_bytes())?;
            }
            Ok(child.wait_with_output()?)
        })
        .await??;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        match out.status.code() {
            // Claude Code keeps a successful hook's stderr for its debug log; the demo shows it
            // in its event log (through this agent's stderr).
            Some(0) if !stderr.is_empty() => eprintln!("hook {event}: {stderr}"),
            Some(0) => {}
            Some(2) => bail!("blocked (exit 2): {stderr}"),
            _ => bail!("maos hook claude {event} failed ({}): {stderr}", out.status),
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(text.trim())
            .with_context(|| format!("the {event} hook printed something that is not JSON: {text}"))
    }

    /// SessionStart; returns the briefing injected into the session.
    async fn session_start(&mut self) -> anyhow::Result<String> {
        let out = self
            .run("SessionStart", json!({ "source": "startup" }))
            .await?;
        out["hookSpecificOutput"]["additionalContext"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("SessionStart gave no additionalContext: {out}"))
    }

    async fn pre_tool_use(&mut self, tool: &str, input: Value) -> anyhow::Result<()> {
        let out = self
            .run(
                "PreToolUse",
                json!({ "permission_mode": "default", "tool_name": tool, "tool_input": input }),
            )
            .await?;
        let decision = &out["hookSpecificOutput"];
        if decision["permissionDecision"] == "deny" {
            bail!(
                "PreToolUse denied it: {}",
                decision["permissionDecisionReason"].as_str().unwrap_or("")
            );
        }
        Ok(())
    }

    async fn post_tool_use(
        &mut self,
        tool: &str,
        input: Value,
        response: Value,
    ) -> anyhow::Result<()> {
        self.run(
            "PostToolUse",
            json!({ "tool_name": tool, "tool_input": input, "tool_response": response }),
        )
        .await?;
        Ok(())
    }

    /// Stop; returns the hook's message (what the session still holds), if any.
    async fn stop(&mut self) -> anyhow::Result<Option<String>> {
        let out = self
            .run("Stop", json!({ "stop_hook_active": false }))
            .await?;
        Ok(out["systemMessage"].as_str().map(str::to_owned))
    }

    async fn session_end(&mut self) -> anyhow::Result<()> {
        self.run("SessionEnd", json!({ "reason": "other" })).await?;
        Ok(())
    }
}
