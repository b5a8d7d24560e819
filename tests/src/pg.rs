//! Driving `pg_agent` helper processes (tests/src/bin/pg_agent.rs) from the PostgreSQL tests.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a test waits for any one answer of an agent.
pub const ANSWER_WAIT: Duration = Duration::from_secs(180);

/// A `pg_agent` process.
pub struct PgAgent {
    /// Its name.
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Lines printed so far that were not answers (acks, grants, `lost`).
    pub events: Vec<String>,
    /// Its liveness session key.
    pub key: i64,
}

impl PgAgent {
    /// Starts `bin URL NS NAME`, optionally wrapped (`ip netns exec X`), and waits for
    /// `ready`.
    pub fn start(bin: &str, wrap: &[&str], url: &str, ns: &str, name: &str) -> Self {
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args([url, ns, name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut a = Self {
            name: name.to_string(),
            child,
            stdin,
            lines: rx,
            events: Vec::new(),
            key: 0,
        };
        let ready = a.wait_for("ready ");
        a.key = ready["ready ".len()..]
            .trim()
            .parse()
            .expect("a session key");
        a
    }

    fn next_line(&mut self, deadline: Instant) -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => l,
            Err(e) => panic!(
                "agent {} said nothing more ({e}); events so far: {:?}",
                self.name, self.events
            ),
        }
    }

    /// Sends a command without waiting for its answer.
    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("the agent reads its stdin");
        self.stdin.flush().expect("flush");
    }

    /// Waits for the answer (`ok ...`) to the last command; other lines go to `events`.
    /// Panics on `err ...`.
    pub fn answer(&mut self) -> String {
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            let l = self.next_line(deadline);
            if let Some(rest) = l.strip_prefix("ok ") {
                return rest.to_string();
            }
            assert!(!l.starts_with("err "), "agent {}: {l}", self.name);
            self.events.push(l);
        }
    }

    /// Runs `cmd` and returns its answer.
    pub fn cmd(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.answer()
    }

    /// Waits until a line starting with `prefix` was printed (looking at `events` first).
    pub fn wait_for(&mut self, prefix: &str) -> String {
        if let Some(i) = self.events.iter().position(|e| e.starts_with(prefix)) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            let l = self.next_line(deadline);
            if l.starts_with(prefix) {
                return l;
            }
            self.events.push(l);
        }
    }

    /// Waits until `n` lines starting with `prefix` were printed in total (kept in `events`).
    pub fn wait_count(&mut self, prefix: &str, n: usize) {
        let deadline = Instant::now() + ANSWER_WAIT;
        while self.events.iter().filter(|e| e.starts_with(prefix)).count() < n {
            let l = self.next_line(deadline);
            self.events.push(l);
        }
    }

    /// Takes the lines printed until now without blocking.
    pub fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.events.push(l);
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {}", self.child.id());
    }

    /// SIGKILL, then reaps it and keeps what it printed before dying.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader thread ends at end-of-file; take what it read.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.events.push(l);
        }
    }
}

impl Drop for PgAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Network namespaces for the two-machine test: a server namespace with a bridge, and
/// machines joined to it by veth pairs, in 10.213.N.0/24. Removed on drop.
pub struct Netns {
    /// Suffix of every name.
    pub tag: String,
    /// Third octet of the subnet.
    pub net: u8,
    machines: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// The server namespace's name.
    pub fn server(&self) -> String {
        format!("maos-s-{}", self.tag)
    }

    /// The server's address.
    pub fn server_addr(&self) -> String {
        format!("10.213.{}.1", self.net)
    }

    /// Creates the server namespace and `machines` machine namespaces (named
    /// `maos-<name>-<tag>`), each on the bridge.
    pub fn create(machines: &[&str]) -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "the two-machine test needs root (network namespaces): run it as root (CI does)"
        );
        let raw = uuid_like();
        let n = Self {
            tag: raw[..4].to_string(),
            net: (u8::from_str_radix(&raw[4..6], 16).unwrap_or(1) % 250) + 1,
            machines: Vec::new(),
        };
        let s = n.server();
        let br = format!("mbr{}", n.tag);
        ip(&["netns", "add", &s]);
        let mut n = n;
        n.machines.push(s.clone());
        ip(&["-n", &s, "link", "set", "lo", "up"]);
        ip(&["-n", &s, "link", "add", &br, "type", "bridge"]);
        ip(&["-n", &s, "link", "set", &br, "up"]);
        ip(&[
            "-n",
            &s,
            "addr",
            "add",
            &format!("{}/24", n.server_addr()),
            "dev",
            &br,
        ]);
        for (i, m) in machines.iter().enumerate() {
            let ns = format!("maos-{m}-{}", n.tag);
            ip(&["netns", "add", &ns]);
            n.machines.push(ns.clone());
            let inner = format!("mv{m}{}", n.tag);
            let outer = format!("mv{m}{}s", n.tag);
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &outer, "netns", &s]);
            ip(&["-n", &s, "link", "set", &outer, "master", &br]);
            ip(&["-n", &s, "link", "set", &outer, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.213.{}.{}/24", n.net, i + 2),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
        }
        n
    }

    /// The namespace of machine `m`.
    pub fn machine(&self, m: &str) -> String {
        format!("maos-{m}-{}", self.tag)
    }

    /// Cuts machine `m`'s link (its end on the bridge goes down): its packets are lost.
    pub fn cut(&self, m: &str) {
        ip(&[
            "-n",
            &self.server(),
            "link",
            "set",
            &format!("mv{m}{}s", self.tag),
            "down",
        ]);
    }
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:08x}",
        (t as u64 ^ u64::from(std::process::id()).rotate_left(17)) & 0xffff_ffff
    )
}

impl Drop for Netns {
    fn drop(&mut self) {
        for m in self.machines.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &m]).status();
        }
    }
}
