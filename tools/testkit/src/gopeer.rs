//! The Go peer (`tests/gopeer`: gorilla/websocket + xtaci/smux with mtt-client's
//! settings), the real client the mux tests need: built once per test process with
//! `tests/gopeer/build.sh`, run against a server, its JSON result read back; and the data
//! it sends, recomputed here so that backends can prove which stream's bytes reached them.
//!
//! Without a Go toolchain (or Debian's Go packages) [`gopeer`] gives `None` and the test
//! passes as skipped, loudly, except under CI, where it fails ([`crate::programs::skip`]).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::{fnv, ConnRecord, FNV_OFFSET};
use crate::programs::{run, skip, tool};
use crate::rng::XorShift64;
use crate::server::{server_bin, Server};

/// The Go peer's binary, built once per test process; `None`: skip the test (no Go here).
pub fn gopeer() -> Option<&'static Path> {
    static PEER: OnceLock<Option<PathBuf>> = OnceLock::new();
    PEER.get_or_init(build_gopeer).as_deref()
}

fn build_gopeer() -> Option<PathBuf> {
    const WHAT: &str = "the mux tests (they need the Go peer)";
    tool("go", WHAT)?;
    let missing = ["github.com/xtaci/smux", "github.com/gorilla/websocket"]
        .into_iter()
        .find(|pkg| !Path::new("/usr/share/gocode/src").join(pkg).is_dir());
    if let Some(pkg) = missing {
        skip(
            WHAT,
            &format!(
                "the Go package {pkg} is missing (apt-get install -y \
                 golang-github-xtaci-smux-dev golang-github-gorilla-websocket-dev)"
            ),
        );
        return None;
    }
    // Build under a name of our own, then rename: concurrent test processes each get a
    // whole binary. It goes beside the server binary, in cargo's target directory.
    let dir = server_bin().parent().expect("a directory").to_path_buf();
    let tmp = dir.join(format!("gopeer.{}.tmp", std::process::id()));
    let (ok, text) = run(Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/gopeer/build.sh"
        ))
        .arg(&tmp));
    assert!(ok, "building the Go peer failed:\n{text}");
    let bin = dir.join("gopeer");
    std::fs::rename(&tmp, &bin).expect("rename the Go peer");
    Some(bin)
}

/// A running Go peer.
pub struct Peer {
    /// The peer process.
    child: Child,
    /// Collects its stdout, where its JSON result line comes last.
    stdout: Option<JoinHandle<String>>,
    /// Its stderr so far.
    stderr: Arc<Mutex<String>>,
    /// Its stderr, line by line.
    lines: Receiver<String>,
    /// Past this, the peer is hung (it has its own `-timeout`): kill it and fail.
    deadline: Instant,
}

impl Peer {
    /// Starts the peer against `server`'s user `path` with these extra flags. Without
    /// `-timeout` in `args`, the peer gives itself 60 s.
    pub fn spawn(bin: &Path, server: &Server, path: &str, args: &[&str]) -> Peer {
        let mut all: Vec<String> = vec![
            "-addr".into(),
            server.data.to_string(),
            "-path".into(),
            path.into(),
        ];
        if server.tls {
            all.push("-tls".into());
        }
        let mut timeout = Duration::from_secs(60);
        match args.iter().position(|a| *a == "-timeout") {
            Some(i) => timeout = parse_go_seconds(args[i + 1]),
            None => all.extend(["-timeout".into(), "60s".into()]),
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let mut child = Command::new(bin)
            .args(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Go peer");
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        eprintln!("gopeer {}", all.join(" "));
        Peer {
            child,
            stdout: Some(stdout),
            stderr,
            lines,
            deadline: Instant::now() + timeout + Duration::from_secs(30),
        }
    }

    /// Waits for a stderr line starting with `prefix`.
    pub fn wait_line(&self, prefix: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {prefix:?} from the peer within {within:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the peer ended before {prefix:?}; stderr:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Closes the peer's stdin (ends a `-hold-stdin` hold).
    pub fn release(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for the peer to exit; returns its JSON line.
    pub fn finish(mut self) -> Value {
        self.release();
        loop {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the Go peer hung past its own timeout; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let line = stdout.lines().last().unwrap_or_default();
        let json: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "the peer printed no JSON ({e}): stdout {stdout:?}; stderr:\n{}",
                self.stderr.lock().unwrap()
            )
        });
        eprintln!("gopeer result: {json}");
        json
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the peer to the end; returns its JSON line.
pub fn run_peer(bin: &Path, server: &Server, path: &str, args: &[&str]) -> Value {
    Peer::spawn(bin, server, path, args).finish()
}

/// "120s" -> 120 s (the only form these tests pass).
pub fn parse_go_seconds(s: &str) -> Duration {
    Duration::from_secs(s.trim_end_matches('s').parse().expect("-timeout NNs"))
}

/// The integer `key` of the peer's result.
pub fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

/// The string `key` of the peer's result.
pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

/// Asserts the peer reported success and no error.
pub fn assert_ok(v: &Value) {
    assert_eq!(v["ok"], Value::Bool(true), "peer failed: {v}");
    assert_eq!(text(v, "error"), "", "{v}");
}

/// `pattern` of main.go for seed 1 (one copy; main.go keeps two for slicing).
pub fn go_pattern() -> &'static [u8] {
    const PAT_LEN: usize = (1 << 20) - 3;
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x = XorShift64::new(1);
        (0..PAT_LEN).map(|_| (x.next_u64() >> 32) as u8).collect()
    })
}

/// FNV-1a of the first `n` bytes the peer sends on stream (or connection) `id`.
pub fn go_stream_hash(id: u64, n: u64) -> u64 {
    let pattern = go_pattern();
    let len = pattern.len() as u64;
    let mut hash = FNV_OFFSET;
    let mut at = (id * 104_729) % len;
    let mut left = n;
    while left > 0 {
        let k = left.min(len - at);
        hash = fnv(hash, &pattern[at as usize..(at + k) as usize]);
        left -= k;
        at = (at + k) % len;
    }
    hash
}

/// Asserts that the connections received exactly the peer's streams `(id, bytes)`, in
/// any order, each whole and in order.
pub fn assert_streams_received(conns: &[ConnRecord], expected: &[(u64, u64)]) {
    let mut got: Vec<(u64, u64)> = conns.iter().map(|c| (c.received, c.hash)).collect();
    let mut want: Vec<(u64, u64)> = expected
        .iter()
        .map(|&(id, n)| (n, go_stream_hash(id, n)))
        .collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "(bytes, checksum) per dst connection");
}
