//! A real headless Chromium driven over the DevTools protocol (a websocket): open a page,
//! evaluate JavaScript (awaiting promises), take screenshots. For the dashboard's end-to-end
//! test and its first-paint benchmark.
//!
//! Chromium is Debian's `chromium` package (`apt-get install chromium`; `.ci/run` installs
//! it). Set `MAOS_CHROMIUM` to use another binary.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// What to install when Chromium is missing.
pub const INSTALL_HINT: &str = "install it with `apt-get install chromium` (Debian package \
`chromium`; .ci/run does this), or point MAOS_CHROMIUM at a Chromium binary";

/// The Chromium binary: `$MAOS_CHROMIUM`, else the first of `/usr/bin/chromium`, `chromium`,
/// `chromium-browser`, `google-chrome` found.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MAOS_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let fixed = Path::new("/usr/bin/chromium");
    if fixed.is_file() {
        return Ok(fixed.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!("Chromium is not installed: {INSTALL_HINT}"))
}

/// A headless Chromium with one page attached.
pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: Option<String>,
    events: std::collections::VecDeque<Value>,
}

impl std::fmt::Debug for Chromium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chromium")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chromium {
    /// Starts a headless Chromium with a fresh profile and connects to it.
    pub fn launch() -> Result<Self, String> {
        let bin = binary()?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start Chromium ({}): {e}; {INSTALL_HINT}",
                    bin.display()
                )
            })?;
        // Chromium announces its endpoint on stderr: "DevTools listening on ws://...".
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(url) = line.strip_prefix("DevTools listening on ") {
                    sent = tx.send(url.trim().to_string()).is_ok();
                }
                // Keep draining so Chromium never blocks on a full pipe.
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "Chromium ({}) did not announce its DevTools endpoint within 60 s",
                    bin.display()
                ));
            }
        };
        let (socket, _) =
            tungstenite::connect(url.as_str()).map_err(|e| format!("DevTools {url}: {e}"))?;
        Ok(Self {
            child,
            _profile: profile,
            socket,
            next_id: 0,
            session: None,
            events: std::collections::VecDeque::new(),
        })
    }

    fn stream(&mut self) -> &TcpStream {
        match self.socket.get_ref() {
            MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("DevTools speaks plain websocket on loopback"),
        }
    }

    /// Reads the next message (at most until `deadline`).
    fn read(&mut self, what: &str, deadline: Instant) -> Result<Value, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{what}: nothing within the time allowed"));
            }
            self.stream()
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let m = match self.socket.read() {
                // A signal (another test's child ending) interrupted the read: the websocket's
                // state is kept across calls, so reading again resumes it.
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                    continue;
                }
                other => other.map_err(|e| format!("{what}: {e}"))?,
            };
            if let Message::Text(text) = m {
                return serde_json::from_str(text.as_str()).map_err(|e| e.to_string());
            }
        }
    }

    /// Waits (at most `timeout`) for the event `method` of the attached page, including one
    /// that arrived while a command was answered.
    pub fn wait_event(&mut self, method: &str, timeout: Duration) -> Result<Value, String> {
        if let Some(i) = self
            .events
            .iter()
            .position(|e| e["method"] == json!(method))
        {
            return Ok(self.events.remove(i).unwrap_or_default()["params"].clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.read(method, deadline)?;
            if v["method"] == json!(method) {
                return Ok(v["params"].clone());
            }
            if v.get("method").is_some() {
                self.events.push_back(v);
            }
        }
    }

    /// Sends one DevTools command and waits (at most `timeout`) for its result.
    pub fn call(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut sent = self.socket.send(Message::text(msg.to_string()));
        // Interrupted by a signal: the frame is queued, flushing writes the rest.
        while let Err(tungstenite::Error::Io(e)) = &sent
            && e.kind() == std::io::ErrorKind::Interrupted
        {
            sent = self.socket.flush();
        }
        sent.map_err(|e| format!("{method}: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.read(method, deadline)?;
            if v["id"] != json!(id) {
                if v.get("method").is_some() && self.events.len() < 1000 {
                    self.events.push_back(v); // an event: kept for wait_event
                }
                continue;
            }
            if let Some(err) = v.get("error") {
                return Err(format!("{method}: {err}"));
            }
            return Ok(v["result"].clone());
        }
    }

    /// Opens `url` in a new page, attaches to it (later calls act on that page) and waits
    /// until it has loaded.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Result<(), String> {
        let t = Duration::from_secs(30);
        self.session = None;
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }), t)?;
        let id = target["targetId"].clone();
        let att = self.call(
            "Target.attachToTarget",
            json!({ "targetId": id, "flatten": true }),
            t,
        )?;
        self.session = att["sessionId"].as_str().map(str::to_owned);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            t,
        )?;
        self.call("Page.enable", json!({}), t)?;
        self.events.clear();
        let nav = self.call("Page.navigate", json!({ "url": url }), t)?;
        if let Some(e) = nav.get("errorText") {
            return Err(format!("cannot open {url}: {e}"));
        }
        self.wait_event("Page.loadEventFired", t)?;
        Ok(())
    }

    /// Evaluates `expr` in the page, awaiting a promise, and returns its value (JSON).
    pub fn eval(&mut self, expr: &str, timeout: Duration) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
            timeout,
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("JavaScript failed: {text}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// A PNG of the whole page (beyond the viewport) at `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), String> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
            Duration::from_secs(60),
        )?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        let png = base64_decode(data)?;
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Standard base64 (with padding), as DevTools sends binary data.
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    }
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = if c == b'=' {
                0
            } else {
                val(c).ok_or_else(|| format!("bad base64 character {c:#x}"))?
            };
            n |= v << (18 - 6 * i);
        }
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad.min(2)]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("aA==").unwrap(), b"h");
        assert!(base64_decode("a$==").is_err());
    }
}
