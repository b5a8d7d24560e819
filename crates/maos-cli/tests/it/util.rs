//! The harness every CLI test uses: the real `maos` binary, bound to a workspace and an
//! agent, with a clean environment; its result checked against the exit-code table.
//!
//! ```ignore
//! Maos::new(ws).agent("bob").run(["lock", "acquire", "x", "--wait", "0s"]).assert_code(Exit::Busy);
//! ```

use std::ffi::OsStr;
use std::io::Write as _;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub(crate) use maos_cli::Exit;

/// The path of the `maos` binary under test.
pub(crate) fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_maos"))
}

/// `maos` bound to a workspace (`--workspace`) and an agent (`MAOS_AGENT_ID`).
#[derive(Debug, Clone)]
pub(crate) struct Maos {
    workspace: Option<PathBuf>,
    agent: String,
    cwd: Option<PathBuf>,
}

impl Maos {
    /// `maos --workspace WS`, acting as agent `a`; runs `maos init` there first when WS has
    /// no `.maos/` yet (only `init` creates a workspace). [`Maos::uninitialised`] does not.
    #[track_caller]
    pub(crate) fn new(workspace: impl AsRef<Path>) -> Self {
        let m = Self::uninitialised(workspace);
        if let Some(ws) = &m.workspace
            && !ws.join(".maos/format").exists()
        {
            m.run(["init"]).ok();
        }
        m
    }

    /// `maos --workspace WS`, acting as agent `a`, without initialising WS.
    pub(crate) fn uninitialised(workspace: impl AsRef<Path>) -> Self {
        Self {
            workspace: Some(workspace.as_ref().to_path_buf()),
            agent: "a".into(),
            cwd: None,
        }
    }

    /// `maos` without `--workspace` (found from the current directory), acting as `a`.
    pub(crate) fn discovered() -> Self {
        Self {
            workspace: None,
            agent: "a".into(),
            cwd: None,
        }
    }

    /// The same, acting as `agent`.
    #[must_use]
    pub(crate) fn agent(&self, agent: &str) -> Self {
        Self {
            agent: agent.into(),
            ..self.clone()
        }
    }

    /// The same, run in `dir`.
    #[must_use]
    pub(crate) fn current_dir(&self, dir: impl AsRef<Path>) -> Self {
        Self {
            cwd: Some(dir.as_ref().to_path_buf()),
            ..self.clone()
        }
    }

    /// The command, for tests that spawn it and talk to it (stdin, streams, kill).
    pub(crate) fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env_remove("MAOS_WORKSPACE")
            .env_remove("MAOS_BACKEND")
            .env_remove("MAOS_NAMESPACE")
            .env_remove("RUST_LOG")
            .env("MAOS_AGENT_ID", &self.agent);
        if let Some(ws) = &self.workspace {
            c.arg("--workspace").arg(ws);
        }
        if let Some(dir) = &self.cwd {
            c.current_dir(dir);
        }
        c
    }

    /// Runs `maos ARGS` to the end.
    #[track_caller]
    pub(crate) fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cmd();
        cmd.args(args);
        Run::of(&mut cmd)
    }

    /// Runs `maos ARGS` with `input` on stdin.
    #[track_caller]
    pub(crate) fn run_stdin<I, S>(&self, args: I, input: &[u8]) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cmd();
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // The command may stop reading early (a refused line): that is its answer, not ours.
        let _ = stdin.write_all(input);
        drop(stdin);
        let out = child.wait_with_output().expect("wait for maos");
        Run {
            what: format!("{cmd:?}"),
            out,
        }
    }
}

/// A finished run of any command: its output and exit status, with checks that report the
/// command and its stderr when they fail.
#[derive(Debug)]
pub(crate) struct Run {
    what: String,
    out: Output,
}

impl Deref for Run {
    type Target = Output;
    fn deref(&self) -> &Output {
        &self.out
    }
}

impl Run {
    /// Runs `cmd` (any program) to the end.
    #[track_caller]
    pub(crate) fn of(cmd: &mut Command) -> Self {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        Self {
            what: format!("{cmd:?}"),
            out,
        }
    }

    /// Waits for a spawned `child` (stdout and stderr piped, or not) to end.
    #[track_caller]
    pub(crate) fn wait(child: std::process::Child) -> Self {
        let what = format!("process {}", child.id());
        let out = child.wait_with_output().expect("wait for the child");
        Self { what, out }
    }

    /// Waits for a spawned `child` to end, at most `limit`: `None` when it was still running
    /// then (it and the processes it started are killed, and their output is dropped). A
    /// thread collects the output meanwhile, so a chatty child never blocks on a full pipe.
    #[track_caller]
    pub(crate) fn within(child: std::process::Child, limit: std::time::Duration) -> Option<Self> {
        Self::within_or_stopped(child, limit).ok()
    }

    /// [`Run::within`], keeping what a child that was still running had printed (`Err`).
    #[track_caller]
    pub(crate) fn within_or_stopped(
        child: std::process::Child,
        limit: std::time::Duration,
    ) -> Result<Self, Self> {
        let pid = child.id().to_string();
        let what = format!("process {pid}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let (out, finished) = match rx.recv_timeout(limit) {
            Ok(out) => (out, true),
            Err(_) => {
                // Its children first (a shell's), then itself.
                let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                (rx.recv().expect("the waiting thread answers"), false)
            }
        };
        let run = Self {
            what,
            out: out.expect("wait for the child"),
        };
        if finished { Ok(run) } else { Err(run) }
    }

    /// The process's output.
    pub(crate) fn into_output(self) -> Output {
        self.out
    }

    /// The exit code (None if killed by a signal).
    pub(crate) fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    /// Asserts the exit code is `code`.
    #[track_caller]
    pub(crate) fn assert_code(&self, code: Exit) -> &Self {
        assert_eq!(
            self.code(),
            Some(code as i32),
            "{} exited with {:?}, expected {code:?}\nstdout: {}\nstderr: {}",
            self.what,
            self.out.status,
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Asserts success (exit 0).
    #[track_caller]
    pub(crate) fn ok(&self) -> &Self {
        self.assert_code(Exit::Ok)
    }

    /// Asserts any failure (a non-zero exit).
    #[track_caller]
    pub(crate) fn failed(&self) -> &Self {
        assert!(
            !self.out.status.success(),
            "{} succeeded, expected a failure\nstdout: {}",
            self.what,
            self.stdout()
        );
        self
    }

    /// Asserts stderr contains `needle`.
    #[track_caller]
    pub(crate) fn stderr_has(&self, needle: &str) -> &Self {
        let err = self.stderr();
        assert!(
            err.contains(needle),
            "{}: stderr lacks {needle:?}: {err}",
            self.what
        );
        self
    }

    /// Asserts stdout contains `needle`.
    #[track_caller]
    pub(crate) fn stdout_has(&self, needle: &str) -> &Self {
        let out = self.stdout();
        assert!(
            out.contains(needle),
            "{}: stdout lacks {needle:?}: {out}",
            self.what
        );
        self
    }

    /// stdout as text.
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    /// stderr as text.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// stdout as one JSON document.
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("{}: bad JSON ({e}): {}", self.what, self.stdout()))
    }

    /// stdout as JSON Lines.
    #[track_caller]
    pub(crate) fn lines(&self) -> Vec<serde_json::Value> {
        json_lines(&self.stdout())
    }
}

/// Parses JSON Lines.
#[track_caller]
pub(crate) fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect()
}
