//! Identifying a process so that a reused pid is never mistaken for the original.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// A process, identified by host, boot, pid and start time.
///
/// A pid alone is ambiguous: the kernel reuses pids, and after a reboot every pid is new. The
/// start time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot) and the boot id
/// (`/proc/sys/kernel/random/boot_id`) make the identity unique on a host. Another host's pid
/// says nothing here: there, only leases and heartbeats count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (0 if unknown).
    pub start_time: u64,
    /// Boot id of the host (empty if unknown).
    pub boot_id: String,
}

/// Whether a [`ProcessIdentity`] still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    /// Running on this host, same start time.
    Running,
    /// Gone, or its pid now belongs to another process, or the host rebooted.
    Gone,
    /// On another host: cannot be checked from here.
    OtherHost,
}

impl ProcessIdentity {
    /// The calling process.
    pub fn current() -> Self {
        Self::of(std::process::id()).unwrap_or_else(|| Self {
            host: hostname().to_owned(),
            pid: std::process::id(),
            start_time: 0,
            boot_id: boot_id().to_owned(),
        })
    }

    /// The process `pid` on this host, if it exists.
    pub fn of(pid: u32) -> Option<Self> {
        Some(Self {
            host: hostname().to_owned(),
            pid,
            start_time: start_time(pid)?,
            boot_id: boot_id().to_owned(),
        })
    }

    /// The parent of the calling process (for a CLI, the agent's shell).
    pub fn parent() -> Self {
        let ppid = std::os::unix::process::parent_id();
        Self::of(ppid).unwrap_or_else(Self::current)
    }

    /// The process that stands for the agent running this one: the nearest ancestor that is
    /// not a shell or a wrapper. Claude Code runs each Bash tool call as `claude -> bash ->
    /// maos`, each hook as `claude -> sh -> maos hook`: both find `claude`, which lives as long
    /// as the session. A person in a terminal gets the terminal's session process. `None` when
    /// the walk reaches init (a daemonised caller): then only a lease can keep the agent alive.
    pub fn anchor() -> Option<Self> {
        let mut pid = std::os::unix::process::parent_id();
        // A bounded walk: a cycle is impossible, but /proc is read while processes come and go.
        for _ in 0..64 {
            if pid <= 1 {
                return None;
            }
            let stat = read_stat(pid)?;
            let (comm, ppid, start_time) = parse_stat(&stat)?;
            if !is_wrapper(&comm) {
                return Some(Self {
                    host: hostname().to_owned(),
                    pid,
                    start_time,
                    boot_id: boot_id().to_owned(),
                });
            }
            pid = ppid;
        }
        None
    }

    /// Checks whether this process still runs.
    pub fn state(&self) -> ProcessState {
        if self.host != hostname() {
            return ProcessState::OtherHost;
        }
        if !self.boot_id.is_empty() && self.boot_id != boot_id() {
            return ProcessState::Gone;
        }
        let Some(stat) = read_stat(self.pid) else {
            return ProcessState::Gone;
        };
        // A zombie (exited, not yet reaped by its parent) holds no file and does nothing:
        // it is gone, though /proc still lists it.
        if matches!(stat_state(&stat), Some('Z' | 'X')) {
            return ProcessState::Gone;
        }
        match parse_start_time(&stat) {
            Some(t) if self.start_time == 0 || t == self.start_time => ProcessState::Running,
            _ => ProcessState::Gone,
        }
    }
}

/// Ends `root` and every process descended from it with SIGKILL, stopping them all first
/// (SIGSTOP, scanning again until no new descendant shows up) so that none can fork a child
/// that escapes between the scan and the kill. `root` should be a child of the caller not yet
/// waited for (so that its pid cannot have been reused). A descendant whose parent had
/// already exited (reparented to init) is no longer found: that is the limit of a walk over
/// parent pids.
pub fn kill_tree(root: u32) {
    use rustix::process::{Pid, Signal, kill_process};
    let signal = |pid: u32, sig: Signal| {
        if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            // A process that is gone already is what we want anyway.
            let _ = kill_process(p, sig);
        }
    };
    let mut seen = std::collections::HashSet::new();
    let mut stopped = Vec::new();
    // Bounded: each round only stops processes not seen before.
    for _ in 0..32 {
        let new: Vec<u32> = tree_of(root)
            .into_iter()
            .filter(|p| seen.insert(*p))
            .collect();
        if new.is_empty() {
            break;
        }
        for &p in &new {
            signal(p, Signal::STOP);
        }
        stopped.extend(new);
    }
    for p in stopped {
        signal(p, Signal::KILL);
    }
}

/// `root` and its descendants now, by a scan of `/proc` (parent pids).
fn tree_of(root: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        // Bounded: at most the kernel's pid limit of entries (4 million).
        for e in dir.flatten().take(1 << 22) {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((_, ppid, _)) = read_stat(pid).as_deref().and_then(parse_stat) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied().filter(|p| *p != root));
        }
        i += 1;
    }
    out
}

/// This host's name.
pub fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    })
}

/// This boot's id (empty where the kernel does not provide one).
pub fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

/// Start time of `pid` in clock ticks since boot, or `None` if there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&read_stat(pid)?)
}

fn read_stat(pid: u32) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .take(4096)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// Command names skipped when looking for an agent's anchor: shells, and programs that only
/// run another program (their lifetime says nothing about the agent's).
const WRAPPERS: &[&str] = &[
    "sh",
    "bash",
    "zsh",
    "dash",
    "fish",
    "ksh",
    "mksh",
    "tcsh",
    "csh",
    "busybox",
    "env",
    "timeout",
    "nohup",
    "xargs",
    "sudo",
    "su",
    "doas",
    "setsid",
    "stdbuf",
    "nice",
    "ionice",
    "time",
    "script",
    "flock",
    "chronic",
    "maos",
    "unbuffer",
    "tini",
    "dumb-init",
];

fn is_wrapper(comm: &str) -> bool {
    WRAPPERS.contains(&comm)
}

/// `(command name, parent pid, start time)` from a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat[close + 1..].split_whitespace();
    let ppid = rest.nth(1)?.parse().ok()?;
    let start = parse_start_time(stat)?;
    Some((comm, ppid, start))
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
/// The state letter of a `/proc/<pid>/stat` line (field 3, after the command's `)`).
fn stat_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts with field 3 (state); field 22 is the 20th of these.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell whose child sleeps: both are ended, and neither lingers (not even as a
    /// running orphan of init).
    #[test]
    fn kill_tree_ends_a_process_and_its_descendants() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let mut sh = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep 300 & echo $! > {0}.tmp; mv {0}.tmp {0}; wait",
                pids.display()
            ))
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let grandchild: u32 = loop {
            if let Ok(s) = std::fs::read_to_string(&pids) {
                break s.trim().parse().unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the shell did not start"
            );
            std::thread::yield_now();
        };
        let g = ProcessIdentity::of(grandchild).unwrap();
        assert_eq!(g.state(), ProcessState::Running);
        kill_tree(sh.id());
        let status = sh.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        // The grandchild was killed too (gone, or a zombie until init reaps it).
        while g.state() == ProcessState::Running {
            assert!(
                std::time::Instant::now() < deadline,
                "the grandchild survived"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
    }

    #[test]
    fn the_current_process_runs_and_a_reused_pid_does_not_count() {
        let me = ProcessIdentity::current();
        assert_eq!(me.state(), ProcessState::Running);
        let impostor = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert_eq!(impostor.state(), ProcessState::Gone);
        let elsewhere = ProcessIdentity {
            host: format!("{}-other", me.host),
            ..me
        };
        assert_eq!(elsewhere.state(), ProcessState::OtherHost);
    }

    /// A child that exited but is not reaped yet (a zombie) is gone, not running.
    #[test]
    fn an_unreaped_exited_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let stat = |pid| read_stat(pid).unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stat_state(&stat(pid)) != Some('Z') {
            if std::time::Instant::now() >= deadline {
                child.wait().unwrap();
                panic!("the child never became a zombie: {}", stat(pid));
            }
            std::thread::yield_now();
        }
        let p = ProcessIdentity {
            host: hostname().to_owned(),
            pid,
            start_time: parse_start_time(&stat(pid)).unwrap(),
            boot_id: boot_id().to_owned(),
        };
        assert_eq!(p.state(), ProcessState::Gone);
        child.wait().unwrap();
        assert_eq!(p.state(), ProcessState::Gone);
        assert_eq!(ProcessIdentity::current().state(), ProcessState::Running);
    }

    #[test]
    fn stat_lines_give_name_parent_and_start() {
        let stat = "42 (ba sh) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some(("ba sh".into(), 7, 987654)));
    }

    #[test]
    fn the_anchor_skips_shells() {
        // The test runner (cargo, or whatever started this binary) is not a wrapper.
        let a = ProcessIdentity::anchor().expect("a test binary has a non-shell ancestor");
        let (comm, _, _) = parse_stat(&read_stat(a.pid).unwrap()).unwrap();
        assert!(!is_wrapper(&comm), "{comm}");
        assert_eq!(a.state(), ProcessState::Running);
    }

    #[test]
    fn an_exited_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessIdentity::of(child.id());
        child.wait().unwrap();
        if let Some(id) = id {
            assert_eq!(id.state(), ProcessState::Gone);
        }
    }
}
