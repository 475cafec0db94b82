//! The server under test, from the outside: started from its binary on ephemeral
//! loopback ports (its `ready:` line says which), asked through its controller, signalled,
//! and watched (log, memory, descriptors). Also the health checks every hostile case ends
//! with: still serving, no panic, descriptors back to their baseline.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tungstenite::Message;

use crate::backend::echo_backend;
use crate::http::http_request;
use crate::procfs;
use crate::rng::pattern;
use crate::sock::raw;
use crate::tls::{tls_client, Transport};
use crate::ws::{try_ws, Ws};

/// Open descriptors the server may hold above its baseline after a case (one socket the
/// kernel or the runtime has not finished closing).
pub const FD_SLACK: usize = 2;

/// The server binary cargo built beside the running test (`target/debug/mtt-mu-server`
/// for `target/debug/deps/it-HASH`): cargo builds a package's binaries before its
/// integration tests, but only tells the test crate where (`CARGO_BIN_EXE_*`), not this
/// library.
pub fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("mtt-mu-server");
    assert!(
        bin.is_file(),
        "no server binary at {} (run the tests through cargo)",
        bin.display()
    );
    bin
}

/// Generous bound on anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running server process, killed when dropped.
pub struct Server {
    /// The server process.
    child: Child,
    /// The data port it listens on (`0.0.0.0:0` when it has no TCP data listener).
    pub data: SocketAddr,
    /// The controller's address.
    pub controller: SocketAddr,
    /// Whether the data port speaks TLS.
    pub tls: bool,
    /// Everything the server wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
    /// The controller's secret, from `-secret` or `-secret-file`: [`Server::post`] (and so
    /// [`Server::add`] and [`Server::del`]) sends it, as a panel does.
    pub secret: Option<String>,
}

impl Server {
    /// Starts the server in plain mode with two workers.
    pub fn plain() -> Server {
        Server::start(&[])
    }

    /// Starts the server with a generated certificate and two workers.
    pub fn tls() -> Server {
        Server::start(&["-force-tls"])
    }

    /// Starts the server with these extra flags (and `-b`, `-c`, `-workers 2` unless given).
    pub fn start(extra: &[&str]) -> Server {
        let mut args: Vec<&str> = Vec::new();
        if !extra.contains(&"-b") {
            args.extend(["-b", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        Server::start_raw(&args)
    }

    /// Starts the server with these flags (and `-c`, `-workers 2` unless given), without
    /// adding a `-b`; `data` is 0.0.0.0:0 when the server has no TCP data listener.
    pub fn start_raw(extra: &[&str]) -> Server {
        let mut args: Vec<&str> = Vec::new();
        if !extra.contains(&"-c") {
            args.extend(["-c", "127.0.0.1:0"]);
        }
        if !extra.contains(&"-workers") {
            args.extend(["-workers", "2"]);
        }
        args.extend_from_slice(extra);
        Server::start_binary(&server_bin(), &args, &[])
    }

    /// Starts `binary` (this build's, [`server_bin`], or another: a package's) with exactly
    /// `args`, and `env` added to an environment without `JOURNAL_STREAM` (so the log is in
    /// the format the flags ask for even when the tests run under systemd); waits for its
    /// `ready:` line.
    pub fn start_binary<A: AsRef<str>>(binary: &Path, args: &[A], env: &[(&str, &str)]) -> Server {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let mut child = Command::new(binary)
            .args(&args)
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            let mut tx = Some(tx);
            while let Some(Ok(line)) = lines.next() {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                if line.contains("ready:") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let ready = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {}", log.lock().unwrap());
            }
        };
        let field = |name: &str| -> SocketAddr {
            let value = ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {ready}"));
            if value == "none" {
                return SocketAddr::from(([0, 0, 0, 0], 0));
            }
            value.parse().unwrap()
        };
        let secret = match (flag(&args, "secret"), flag(&args, "secret-file")) {
            (Some(secret), _) => Some(secret.to_string()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .unwrap_or_else(|e| panic!("-secret-file {file}: {e}"))
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        Server {
            data: field("data="),
            controller: field("controller="),
            tls: ready.contains("mode=tls"),
            secret,
            child,
            log,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`libc::SIGTERM`, ...) to the server process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits up to `timeout` for the process to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code());
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        procfs::rss_kib(self.pid()).expect("VmRSS of the server")
    }

    /// The server's open descriptors.
    pub fn fd_count(&self) -> usize {
        procfs::fd_count(self.pid()).expect("the server's /proc/PID/fd") as usize
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Everything the server wrote to stderr so far, as a copy.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A request to the controller with `Connection: close` and the `headers` given (whole
    /// lines, each ending in CRLF; no `Authorization` unless among them): status, head, body.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &str,
        body: &str,
    ) -> (u16, String, Vec<u8>) {
        http_request(
            self.controller,
            &format!(
                "{method} {target} HTTP/1.1\r\nHost: c\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    /// POSTs a JSON body to the controller, with the server's [`secret`](Server::secret)
    /// as a Bearer token when it has one; returns the status and the parsed reply.
    pub fn post(&self, body: &str) -> (u16, serde_json::Value) {
        let auth = self
            .secret
            .as_ref()
            .map(|s| format!("Authorization: Bearer {s}\r\n"))
            .unwrap_or_default();
        let headers = format!("Content-Type: application/json\r\n{auth}");
        let (status, _, body) = self.request("POST", "/", &headers, body);
        (status, serde_json::from_slice(&body).expect("JSON reply"))
    }

    /// Adds users, asserting success.
    pub fn add(&self, users: &[(&str, SocketAddr)]) {
        let args: Vec<_> = users
            .iter()
            .map(|(p, d)| serde_json::json!({"path": p, "dst": d.to_string()}))
            .collect();
        let body = serde_json::json!({"opt": 1, "args_bunch": args}).to_string();
        let (status, reply) = self.post(&body);
        assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
    }

    /// Deletes users, asserting success.
    pub fn del(&self, paths: &[&str]) {
        let args: Vec<_> = paths
            .iter()
            .map(|p| serde_json::json!({"path": p}))
            .collect();
        let body = serde_json::json!({"opt": 2, "args_bunch": args}).to_string();
        let (status, reply) = self.post(&body);
        assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
    }

    /// A client connection to the data port: TLS when the server listens TLS.
    /// (The TLS handshake happens on first use, or with [`Transport::handshake`].)
    pub fn connect(&self) -> Transport {
        let tcp = raw(self.data);
        if self.tls {
            Transport::tls(tcp, tls_client())
        } else {
            Transport::Tcp(tcp)
        }
    }

    /// A WebSocket to `path` offering these subprotocols.
    pub fn ws(&self, path: &str, protocols: &[&str]) -> Ws {
        try_ws(self.connect(), self.data, path, protocols).expect("websocket handshake")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user path no other test in this process uses: `/{name}-{n}`.
pub fn unique_path(name: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("/{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The value of the flag `name` in `args`, written as Go's flag package reads it: `-name v`,
/// `--name v`, `-name=v` or `--name=v`. The last one given wins, as in the server.
fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let mut value = None;
    for (i, arg) in args.iter().enumerate() {
        let Some(rest) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            continue;
        };
        if rest == name {
            value = args.get(i + 1).copied().or(value);
        } else if let Some(v) = rest.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            value = Some(v);
        }
    }
    value
}

/// A directory of one test's, removed with everything in it when dropped. Use it as a
/// [`Path`].
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty directory for a test: unique within this process and across
/// processes, readable by all (nginx's workers run as nobody), removed when dropped.
pub fn temp_dir(name: &str) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mtt-test-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    TempDir(dir)
}

/// A normal user is still served: a controller ping answers, and a new user's plain tunnel
/// echoes 100 KB and closes cleanly.
pub fn assert_still_serves(server: &Server) {
    let (status, reply) = server.post(r#"{"opt":9}"#);
    assert_eq!(
        (status, reply["res"].as_u64()),
        (200, Some(1)),
        "controller ping: {reply}"
    );
    let path = unique_path("still-serves");
    server.add(&[(&path, echo_backend())]);
    let mut ws = server.ws(&path, &["smux_off"]);
    let payload = pattern(100_000, 42);
    ws.send(Message::Binary(payload.clone().into())).unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < payload.len() {
        match ws.read().expect("tunnel echo") {
            Message::Binary(b) => echoed.extend_from_slice(&b),
            other => panic!("tunnel echo: unexpected {other:?}"),
        }
    }
    assert!(echoed == payload, "tunnel echo corrupted");
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    server.del(&[&path]);
}

/// The server's descriptor count at rest, after one normal user has come and gone (so that
/// anything created lazily on first use is counted in).
pub fn fd_baseline(server: &Server) -> usize {
    assert_still_serves(server);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = server.fd_count();
    let mut same = 0;
    while same < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
        let now = server.fd_count();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Waits (up to 8 s) for the server's descriptors to come back to `baseline`.
pub fn assert_fds_settle(server: &Server, baseline: usize) {
    assert_fds_settle_within(server, baseline, Duration::from_secs(8));
}

/// Waits up to `bound` for the server's descriptors to come back to `baseline`.
pub fn assert_fds_settle_within(server: &Server, baseline: usize, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let n = server.fd_count();
        if n <= baseline + FD_SLACK {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "server holds {n} fds, baseline {baseline}: {}",
                procfs::fd_listing(server.pid())
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Asserts the server's log has no panic in it.
pub fn assert_no_panic(server: &Server) {
    let log = server.log.lock().unwrap();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

/// The end of every case: still serving, no panic, descriptors back to the baseline.
pub fn finish(server: &Server, baseline: usize) {
    assert_still_serves(server);
    assert_fds_settle(server, baseline);
    assert_no_panic(server);
}

/// Runs `cases` against one fresh server, then [`finish`]es it.
pub fn with_server(tls: bool, cases: impl FnOnce(&Server)) {
    let server = if tls { Server::tls() } else { Server::plain() };
    let base = fd_baseline(&server);
    cases(&server);
    finish(&server, base);
}

/// The sum of the `/metrics` samples of `name` whose line contains `label` (for example
/// `reason="quota"`; `""` sums them all), as the server reports them now.
pub fn metric(server: &Server, name: &str, label: &str) -> f64 {
    let (_, _, body) = http_request(
        server.controller,
        "GET /metrics HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    );
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `check` holds, up to [`WAIT`]; fails the test naming `what` if it never does.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
