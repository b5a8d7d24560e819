//! `maos hook install`: merges maos's hooks into `.claude/settings.json`, adds the maos MCP
//! server to `.mcp.json`, installs the git hooks. Keeps every existing setting and hook, adds its
//! own once, prints exactly what it changed; a malformed file is reported, never overwritten.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use maos_coordination::core::fsx;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::ctx::Ctx;
use crate::exit::Exit;

/// Suffix of a git hook that `install` moved aside to run after maos's.
pub(super) const CHAINED_SUFFIX: &str = ".maos-chained";

/// The Claude Code events maos hooks, with the tool matcher of each.
const CLAUDE_EVENTS: &[(&str, Option<&str>)] = &[
    ("SessionStart", None),
    ("PreToolUse", Some("Edit|Write|MultiEdit|NotebookEdit")),
    ("PostToolUse", Some("*")),
    ("Stop", None),
    ("SessionEnd", None),
];

/// The git hooks maos installs.
const GIT_HOOKS: &[(&str, &str)] = &[
    ("pre-commit", "git pre-commit"),
    ("prepare-commit-msg", "git prepare-commit-msg"),
];

/// Marker line in the git hook scripts maos writes.
const GIT_MARKER: &str = "# installed by `maos hook install`";

#[derive(Debug, Args)]
pub(crate) struct InstallArgs {
    /// Claude Code hooks in .claude/settings.json.
    #[arg(long)]
    claude: bool,
    /// The git guard (pre-commit) and the Maos-Agent trailer (prepare-commit-msg).
    #[arg(long)]
    git: bool,
    /// The maos MCP server in .mcp.json.
    #[arg(long)]
    mcp: bool,
    /// Say what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove what maos installed (and put back a git hook it had moved aside).
    #[arg(long)]
    uninstall: bool,
    /// The command that runs maos in the hooks (default: `maos` when that is this binary on
    /// PATH, else this binary's absolute path).
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
}

/// One change made (or that would be made).
#[derive(Debug, Serialize)]
struct Change {
    file: PathBuf,
    what: String,
}

pub(crate) fn run(args: InstallArgs, ctx: &Ctx) -> anyhow::Result<Exit> {
    let all = !(args.claude || args.git || args.mcp);
    let root = ctx.root.clone();
    // The hooks, the MCP server and the git guard work on both backends (the files, or a
    // PostgreSQL server through the storage traits).
    let maos = match &args.command {
        Some(c) => c.clone(),
        None => maos_command()?,
    };
    let mut changes = Vec::new();
    if all || args.claude {
        changes.extend(claude(&root, &maos, &args)?);
    }
    if all || args.mcp {
        changes.extend(mcp(&root, &maos, &args)?);
    }
    if all || args.git {
        changes.extend(git_hooks(&root, &maos, &args)?);
    }
    let verb = if args.dry_run {
        "would change"
    } else {
        "changed"
    };
    ctx.emit(
        &json!({ "dry_run": args.dry_run, "changes": changes }),
        || {
            if changes.is_empty() {
                return "nothing to change: maos hooks are installed as asked".into();
            }
            let mut s = format!("{verb}:\n");
            for c in &changes {
                s.push_str(&format!("  {}: {}\n", c.file.display(), c.what));
            }
            s
        },
    )?;
    Ok(Exit::Ok)
}

/// `maos` if that resolves on PATH to this very binary, else this binary's absolute path.
fn maos_command() -> anyhow::Result<String> {
    let me = std::env::current_exe().context("finding this binary")?;
    let me = std::fs::canonicalize(&me).unwrap_or(me);
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("maos"))
            .find(|c| c.is_file())
    });
    if on_path.and_then(|p| std::fs::canonicalize(p).ok()).as_ref() == Some(&me) {
        return Ok("maos".into());
    }
    Ok(shell_quote(&me.display().to_string()))
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Reads a JSON object file (`{}` when missing); a malformed one is an error naming it.
fn read_object(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let bytes = match fsx::read_bounded(path, 16 << 20) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(Map::new()),
        Err(e) => return Err(e.into()),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => anyhow::bail!(
            "{} is not a JSON object; fix it by hand (maos leaves it unchanged)",
            path.display()
        ),
        Err(e) => anyhow::bail!(
            "{} is not valid JSON ({e}); fix it by hand (maos leaves it unchanged)",
            path.display()
        ),
    }
}

fn write_object(path: &Path, m: &Map<String, Value>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut bytes = serde_json::to_vec_pretty(m)?;
    bytes.push(b'\n');
    fsx::write_replace(path, &bytes)?;
    Ok(())
}

fn is_ours(hook: &Value) -> bool {
    hook.get("command")
        .and_then(Value::as_str)
        .is_some_and(|c| c.contains(" hook claude "))
}

fn claude(root: &Path, maos: &str, args: &InstallArgs) -> anyhow::Result<Vec<Change>> {
    let path = root.join(".claude").join("settings.json");
    let mut settings = read_object(&path)?;
    let mut changes = Vec::new();
    let hooks = settings
        .entry("hooks")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(hooks) = hooks else {
        anyhow::bail!(
            "{}: \"hooks\" is not an object; fix it by hand (maos leaves it unchanged)",
            path.display()
        );
    };
    for (event, matcher) in CLAUDE_EVENTS {
        let list = hooks
            .entry(event.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = list else {
            anyhow::bail!(
                "{}: hooks.{event} is not a list; fix it by hand (maos leaves it unchanged)",
                path.display()
            );
        };
        let present = list.iter().any(|entry| {
            entry
                .get("hooks")
                .and_then(Value::as_array)
                .is_some_and(|hs| hs.iter().any(is_ours))
        });
        if args.uninstall {
            if present {
                for entry in list.iter_mut() {
                    if let Some(Value::Array(hs)) = entry.get_mut("hooks") {
                        hs.retain(|h| !is_ours(h));
                    }
                }
                list.retain(|entry| {
                    entry
                        .get("hooks")
                        .and_then(Value::as_array)
                        .is_none_or(|hs| !hs.is_empty())
                });
                changes.push(Change {
                    file: path.clone(),
                    what: format!("removed the maos {event} hook"),
                });
            }
            continue;
        }
        if present {
            continue;
        }
        let mut entry = Map::new();
        if let Some(m) = matcher {
            entry.insert("matcher".into(), json!(m));
        }
        entry.insert(
            "hooks".into(),
            json!([{ "type": "command", "command": format!("{maos} hook claude {event}"), "timeout": 30 }]),
        );
        list.push(Value::Object(entry));
        changes.push(Change {
            file: path.clone(),
            what: format!("added the maos {event} hook"),
        });
    }
    hooks.retain(|_, v| !v.as_array().is_some_and(Vec::is_empty));
    if !changes.is_empty() && !args.dry_run {
        write_object(&path, &settings)?;
    }
    Ok(changes)
}

fn mcp(root: &Path, maos: &str, args: &InstallArgs) -> anyhow::Result<Vec<Change>> {
    let path = root.join(".mcp.json");
    let mut doc = read_object(&path)?;
    let servers = doc
        .entry("mcpServers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(servers) = servers else {
        anyhow::bail!(
            "{}: \"mcpServers\" is not an object; fix it by hand (maos leaves it unchanged)",
            path.display()
        );
    };
    let mut changes = Vec::new();
    if args.uninstall {
        if servers.remove("maos").is_some() {
            changes.push(Change {
                file: path.clone(),
                what: "removed the maos MCP server".into(),
            });
        }
    } else if !servers.contains_key("maos") {
        servers.insert("maos".into(), mcp_entry(maos));
        changes.push(Change {
            file: path.clone(),
            what: "added the maos MCP server".into(),
        });
    }
    if !changes.is_empty() && !args.dry_run {
        write_object(&path, &doc)?;
    }
    Ok(changes)
}

/// The `.mcp.json` entry for the maos server.
pub(crate) fn mcp_entry(maos: &str) -> Value {
    let (command, mut args) = split_command(maos);
    args.push("mcp".into());
    json!({ "command": command, "args": args })
}

fn split_command(maos: &str) -> (String, Vec<String>) {
    let unquoted = maos.trim_matches('\'').to_owned();
    (unquoted, Vec::new())
}

fn git_hooks(root: &Path, maos: &str, args: &InstallArgs) -> anyhow::Result<Vec<Change>> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--git-path", "hooks"])
        .current_dir(root)
        .output()
        .context("running git rev-parse --git-path hooks")?;
    anyhow::ensure!(
        out.status.success(),
        "{} is not in a git repository: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let dir = root.join(String::from_utf8(out.stdout)?.trim());
    let mut changes = Vec::new();
    for (name, sub) in GIT_HOOKS {
        let path = dir.join(name);
        let chained = dir.join(format!("{name}{CHAINED_SUFFIX}"));
        let existing = match fsx::read_bounded(&path, 1 << 20) {
            Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let ours = existing.as_deref().is_some_and(|t| t.contains(GIT_MARKER));
        if args.uninstall {
            if ours {
                if !args.dry_run {
                    fsx::remove_if_exists(&path)?;
                    if chained.exists() {
                        fsx::rename(&chained, &path)?;
                    }
                }
                changes.push(Change {
                    file: path.clone(),
                    what: if chained.exists() {
                        format!("removed the maos {name} hook, put back the one it ran after it")
                    } else {
                        format!("removed the maos {name} hook")
                    },
                });
            }
            continue;
        }
        if ours {
            continue;
        }
        let script = format!(
            "#!/bin/sh\n{GIT_MARKER}: it runs {name}{CHAINED_SUFFIX} (your previous hook), if \
             any, afterwards.\nexec {maos} hook {sub} \"$@\"\n"
        );
        if !args.dry_run {
            fsx::create_dir_private(&dir)?;
            if existing.is_some() {
                fsx::rename(&path, &chained)?;
            }
            fsx::write_replace(&path, script.as_bytes())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", path.display()))?;
        }
        changes.push(Change {
            file: path.clone(),
            what: if existing.is_some() {
                format!("installed the maos {name} hook; your previous one runs after it (moved to {name}{CHAINED_SUFFIX})")
            } else {
                format!("installed the maos {name} hook")
            },
        });
    }
    Ok(changes)
}
