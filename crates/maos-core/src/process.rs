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

    /// Checks whether this process still runs.
    pub fn state(&self) -> ProcessState {
        if self.host != hostname() {
            return ProcessState::OtherHost;
        }
        if !self.boot_id.is_empty() && self.boot_id != boot_id() {
            return ProcessState::Gone;
        }
        match start_time(self.pid) {
            Some(t) if self.start_time == 0 || t == self.start_time => ProcessState::Running,
            _ => ProcessState::Gone,
        }
    }
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts with field 3 (state); field 22 is the 20th of these.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
