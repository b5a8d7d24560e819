//! `maos hook claude EVENT`: Claude Code's hook protocol. Input: one JSON object on stdin
//! (`session_id`, `cwd`, `hook_event_name`, `tool_name`, `tool_input`, ...). Output: JSON on
//! stdout (`hookSpecificOutput` with `permissionDecision` / `additionalContext`, or
//! `systemMessage`), exit 0. PreToolUse fails closed: an internal error denies the edit with the
//! error text (unless `MAOS_HOOK_FAIL_OPEN=1`); every other event never blocks the agent.
//!
//! A hook runs on every tool call, so it reads only what its decision needs: no async runtime,
//! no git process.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use maos_coordination::core::{ProcessIdentity, excerpt};
use maos_coordination::session::{
    self, AgentName, EditDecision, EditGuard, Mail, Stores, name_agent,
};
use maos_coordination::{AgentId, Workspace};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ctx::Ctx;
use crate::exit::Exit;

/// Largest hook input accepted (a Write's input carries the whole new file).
const INPUT_LIMIT: u64 = 64 << 20;

/// Tools whose input names a file that is written.
const EDIT_TOOLS: &[&str] = &["Edit", "Write", "MultiEdit", "NotebookEdit"];

/// Tools after which the session's view of a file is recorded.
const SEEN_TOOLS: &[&str] = &["Read", "Edit", "Write", "MultiEdit", "NotebookEdit"];

#[derive(Debug, Deserialize)]
struct Input {
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    hook_event_name: Option<String>,
    #[serde(default)]
    tool_name: Option<String>,
    #[serde(default)]
    tool_input: Value,
}

impl Input {
    /// The file a tool call reads or writes, absolute.
    fn file(&self) -> Option<PathBuf> {
        let p = self
            .tool_input
            .get("file_path")
            .or_else(|| self.tool_input.get("notebook_path"))?
            .as_str()?;
        let p = Path::new(p);
        Some(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.cwd.clone().unwrap_or_default().join(p)
        })
    }
}

pub(crate) fn run(event: &str, ctx: &Ctx) -> anyhow::Result<Exit> {
    let (out, mail) = match read_input().and_then(|input| handle(event, &input, ctx)) {
        Ok(answer) => (answer.out, answer.mail),
        Err(e) => (failed(event, &e), None),
    };
    if let Some(out) = out {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, &out)?;
        writeln!(stdout)?;
        stdout.flush()?;
    }
    // Only once the answer carrying them is written: a hook killed before this point brings
    // the same messages again with the next tool call.
    if let Some(mail) = mail
        && let Err(e) = mail.delivered()
    {
        tracing::warn!(
            error = &e as &dyn std::error::Error,
            "delivered messages not acknowledged (they will come again)"
        );
    }
    Ok(Exit::Ok)
}

/// A hook's answer, and the messages it carries (acknowledged after it is written).
#[derive(Default)]
struct Answer {
    out: Option<Value>,
    mail: Option<Mail>,
}

impl From<Option<Value>> for Answer {
    fn from(out: Option<Value>) -> Self {
        Self { out, mail: None }
    }
}

fn read_input() -> anyhow::Result<Input> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(INPUT_LIMIT + 1)
        .read_to_end(&mut buf)
        .context("reading the hook input on stdin")?;
    anyhow::ensure!(
        buf.len() as u64 <= INPUT_LIMIT,
        "the hook input is over {} MiB",
        INPUT_LIMIT >> 20
    );
    serde_json::from_slice(&buf).with_context(|| {
        format!(
            "the hook input is not the JSON object Claude Code sends: {}",
            excerpt(&String::from_utf8_lossy(&buf), 120)
        )
    })
}

/// What to answer when handling failed: PreToolUse denies (fail closed) unless
/// `MAOS_HOOK_FAIL_OPEN=1`; other events only tell the user.
fn failed(event: &str, e: &anyhow::Error) -> Option<Value> {
    let text = format!("maos hook {event} failed: {e:#}");
    tracing::warn!("{text}");
    let fail_open = std::env::var("MAOS_HOOK_FAIL_OPEN").is_ok_and(|v| v == "1");
    if event == "PreToolUse" && !fail_open {
        return Some(deny(format!(
            "{text}. The coordination state could not be checked, so the edit is refused \
             (run `maos doctor`; set MAOS_HOOK_FAIL_OPEN=1 to let edits through regardless)"
        )));
    }
    Some(json!({ "systemMessage": text }))
}

fn deny(reason: String) -> Value {
    json!({
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": reason,
        }
    })
}

fn context(event: &str, text: String) -> Value {
    json!({
        "hookSpecificOutput": {
            "hookEventName": event,
            "additionalContext": text,
        }
    })
}

/// The stores of the workspace for the session's directory, on its backend (the files, or a
/// PostgreSQL server); `None` when maos was never initialised there (nothing to coordinate).
fn workspace(input: &Input, ctx: &Ctx) -> anyhow::Result<Option<Stores>> {
    let cwd = input.cwd.clone().unwrap_or_else(|| ctx.root.clone());
    let (root, _) = Workspace::locate(ctx.explicit_workspace.as_deref(), &cwd)?;
    let ws = match Workspace::open(&root) {
        Ok(ws) => ws,
        Err(maos_coordination::core::Error::NotInitialized { .. }) => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("opening the maos workspace at {}", root.display()));
        }
    };
    let b = maos_coordination::backend::open(&ws)?;
    if b.is_file() {
        return Ok(Some(Stores::files(&ws)));
    }
    let (agents, locks, inboxes) = (b.agents(), b.locks(), b.inboxes());
    Ok(Some(Stores::on(&ws, agents, locks, inboxes, move |a| {
        b.tasks(a, None)
    })))
}

/// How a session's agent is named when it is not bound yet: `--agent` / `MAOS_AGENT_ID`, else
/// the worktree or branch, else the session id.
fn naming(input: &Input, ctx: &Ctx) -> session::Result<AgentName> {
    let cwd = input.cwd.clone().unwrap_or_else(|| ctx.root.clone());
    name_agent(
        ctx.explicit_agent.as_deref(),
        &cwd,
        input.session_id.as_deref(),
        &format!("agent-{}", std::process::id()),
    )
}

fn agent(ws: &Stores, input: &Input, ctx: &Ctx) -> anyhow::Result<AgentId> {
    let ws = ws.workspace();
    Ok(match &input.session_id {
        Some(s) => session::agent_of_session(ws, s, || naming(input, ctx))?.0,
        None => naming(input, ctx)?.agent,
    })
}

fn handle(event: &str, input: &Input, ctx: &Ctx) -> anyhow::Result<Answer> {
    if let Some(name) = &input.hook_event_name
        && name != event
    {
        anyhow::bail!("the hook is installed for {event} but Claude Code sent {name}");
    }
    let Some(ws) = workspace(input, ctx)? else {
        return Ok(Answer::default());
    };
    match event {
        "SessionStart" => session_start(&ws, input, ctx),
        "PreToolUse" => pre_tool_use(&ws, input, ctx).map(Answer::from),
        "PostToolUse" => post_tool_use(&ws, input, ctx),
        "Stop" => stop(&ws, input, ctx).map(Answer::from),
        "SessionEnd" => session_end(&ws, input).map(Answer::from),
        other => anyhow::bail!(
            "unknown hook event {other:?} (maos handles SessionStart, PreToolUse, PostToolUse, \
             Stop, SessionEnd)"
        ),
    }
}

fn session_id(input: &Input) -> anyhow::Result<&str> {
    input
        .session_id
        .as_deref()
        .context("the hook input has no session_id")
}

fn start(ws: &Stores, input: &Input, ctx: &Ctx) -> anyhow::Result<AgentName> {
    let sid = session_id(input)?;
    let bound = maos_coordination::AgentRegistry::new(ws.workspace()).session(sid)?;
    let name = match bound {
        Some(b) => AgentName {
            agent: b.agent,
            named_from: naming(input, ctx)?.named_from,
        },
        None => naming(input, ctx)?,
    };
    let cwd = input.cwd.clone().unwrap_or_else(|| ctx.root.clone());
    // The hook runs as `claude -> sh -> maos`: the anchor is the Claude Code process.
    let role = match std::env::var(super::ROLE_ENV) {
        Ok(r) if !r.is_empty() => Some(
            maos_coordination::AgentRole::new(r)
                .with_context(|| format!("{} in the environment", super::ROLE_ENV))?,
        ),
        _ => None,
    };
    let started = session::start_in(ws, sid, name, role, &cwd, ProcessIdentity::anchor())?;
    Ok(started.name)
}

fn session_start(ws: &Stores, input: &Input, ctx: &Ctx) -> anyhow::Result<Answer> {
    let name = start(ws, input, ctx)?;
    let mut text = session::briefing_in(ws, &name)?;
    if !ws.is_files() {
        text.push_str(
            "This workspace coordinates through a PostgreSQL server shared by agents on several \
             machines.\n",
        );
    }
    let mail = mail_or_note(ws, &name.agent, &mut text);
    Ok(Answer {
        out: Some(context("SessionStart", text)),
        mail,
    })
}

fn pre_tool_use(ws: &Stores, input: &Input, ctx: &Ctx) -> anyhow::Result<Option<Value>> {
    let tool = input.tool_name.as_deref().unwrap_or_default();
    if !EDIT_TOOLS.contains(&tool) {
        return Ok(None);
    }
    let Some(file) = input.file() else {
        anyhow::bail!("{tool} input has no file_path");
    };
    let me = agent(ws, input, ctx)?;
    let guard = EditGuard::in_stores(ws, me, input.session_id.as_deref())?;
    Ok(match guard.check(&file)? {
        EditDecision::Deny { reason } => Some(deny(reason)),
        EditDecision::Allow { note: Some(n), .. } => Some(context("PreToolUse", n)),
        EditDecision::Allow { note: None, .. } => None,
    })
}

/// Records what the session saw, renews the agent's leases and delivers its new messages.
fn post_tool_use(ws: &Stores, input: &Input, ctx: &Ctx) -> anyhow::Result<Answer> {
    let reg = maos_coordination::AgentRegistry::new(ws.workspace());
    let me = match input
        .session_id
        .as_deref()
        .map(|s| reg.session(s))
        .transpose()?
    {
        Some(Some(b)) => b.agent,
        // Hooks installed mid-session: start it now.
        Some(None) => start(ws, input, ctx)?.agent,
        None => naming(input, ctx)?.agent,
    };
    ws.agents().touch(&me, &|| None)?;
    let tool = input.tool_name.as_deref().unwrap_or_default();
    if SEEN_TOOLS.contains(&tool)
        && let Some(file) = input.file()
    {
        let guard = EditGuard::in_stores(ws, me.clone(), input.session_id.as_deref())?;
        guard.record(&file)?;
        if EDIT_TOOLS.contains(&tool) {
            guard.renew(&file)?;
        }
    }
    let mut text = String::new();
    let mail = mail_or_note(ws, &me, &mut text);
    Ok(Answer {
        out: (!text.is_empty()).then(|| context("PostToolUse", text)),
        mail,
    })
}

/// Appends the agent's new messages (from its inbox on the workspace's backend) to `text`; an
/// inbox that cannot be read is said there instead (the rest of the answer still matters more
/// than the mail).
fn mail_or_note(ws: &Stores, agent: &AgentId, text: &mut String) -> Option<Mail> {
    match Mail::collect_in(ws, agent) {
        Ok(Some(m)) => {
            text.push_str(&m.text);
            Some(m)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot read the inbox"
            );
            text.push_str(&format!(
                "maos: your inbox could not be read ({e}); run `maos doctor`.\n"
            ));
            None
        }
    }
}

fn stop(ws: &Stores, input: &Input, ctx: &Ctx) -> anyhow::Result<Option<Value>> {
    let me = agent(ws, input, ctx)?;
    let held = session::Holdings::in_stores(ws, &me)?;
    if held.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({
        "systemMessage": format!(
            "maos: agent {me} still holds:\n{}Release what you are done with (`maos lock release \
             PATH`, `maos task done ID`); everything is released when the session ends.",
            held.describe()
        )
    })))
}

fn session_end(ws: &Stores, input: &Input) -> anyhow::Result<Option<Value>> {
    let ended = session::end_in(ws, session_id(input)?)?;
    tracing::info!(
        agent = ?ended.agent,
        locks = ended.locks.len(),
        tasks = ended.tasks.len(),
        "session ended"
    );
    Ok(None)
}
