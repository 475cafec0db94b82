//! The multiplexed tunnel (SPEC 4.2-4.4) end to end: the real server against a real
//! xtaci/smux peer, the Go program in `tests/gopeer` (gorilla/websocket + xtaci/smux with
//! mtt-client's settings), over TLS and plain TCP, with real backends that record what
//! reached them.
//!
//! The Go peer is built once per test process with `tests/gopeer/build.sh`. Without a Go
//! toolchain (or Debian's Go packages) the tests print a loud note and pass as skipped,
//! unless the `CI` environment variable is set: then they fail.
//!
//! The data the peer sends on its stream (or connection) `i` is a window of a
//! pseudo-random pattern (`window(i, off)` in main.go); [`go_stream_hash`] recomputes its
//! checksum, so backends can prove which stream's bytes reached them, whole and in order.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// The Go peer

/// The Go peer's binary, built once per test process; `None`: skip the test (no Go here).
fn gopeer() -> Option<&'static Path> {
    static PEER: OnceLock<Option<PathBuf>> = OnceLock::new();
    PEER.get_or_init(build_gopeer).as_deref()
}

fn build_gopeer() -> Option<PathBuf> {
    let go = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success());
    let missing = if !go {
        Some("the Go toolchain (`go`)".to_string())
    } else {
        ["github.com/xtaci/smux", "github.com/gorilla/websocket"]
            .into_iter()
            .find(|pkg| !Path::new("/usr/share/gocode/src").join(pkg).is_dir())
            .map(|pkg| format!("the Go package {pkg}"))
    };
    if let Some(what) = missing {
        let msg = format!(
            "{what} is missing (apt-get install -y golang-go golang-github-xtaci-smux-dev \
             golang-github-gorilla-websocket-dev)"
        );
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!("CI is set and the mux tests need the Go peer, but {msg}");
        }
        eprintln!(
            "\n################################################################\n\
             ## SKIPPED: the mux tests need the Go peer, but {msg}\n\
             ################################################################\n"
        );
        return None;
    }
    // Build under a name of our own, then rename: concurrent test processes each get a
    // whole binary.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let tmp = dir.join(format!("gopeer.{}.tmp", std::process::id()));
    let out = Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/gopeer/build.sh"
        ))
        .arg(&tmp)
        .output()
        .expect("run tests/gopeer/build.sh");
    assert!(
        out.status.success(),
        "building the Go peer failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = dir.join("gopeer");
    std::fs::rename(&tmp, &bin).expect("rename the Go peer");
    Some(bin)
}

/// A running Go peer.
struct Peer {
    child: Child,
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
    fn spawn(bin: &Path, server: &Server, path: &str, args: &[&str]) -> Peer {
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
    fn wait_line(&self, prefix: &str, within: Duration) -> String {
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
    fn release(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits for the peer to exit; returns its JSON line.
    fn finish(mut self) -> Value {
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
fn run_peer(bin: &Path, server: &Server, path: &str, args: &[&str]) -> Value {
    Peer::spawn(bin, server, path, args).finish()
}

/// "120s" -> 120 s (the only form these tests pass).
fn parse_go_seconds(s: &str) -> Duration {
    Duration::from_secs(s.trim_end_matches('s').parse().expect("-timeout NNs"))
}

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

fn assert_ok(v: &Value) {
    assert_eq!(v["ok"], Value::Bool(true), "peer failed: {v}");
    assert_eq!(text(v, "error"), "", "{v}");
}

// ---------------------------------------------------------------------------------------
// The peer's data, recomputed

/// `pattern` of main.go for seed 1 (one copy; main.go keeps two for slicing).
fn go_pattern() -> &'static [u8] {
    const PAT_LEN: usize = (1 << 20) - 3;
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 | 1; // seed 1
        (0..PAT_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// FNV-1a of the first `n` bytes the peer sends on stream (or connection) `id`.
fn go_stream_hash(id: u64, n: u64) -> u64 {
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

// ---------------------------------------------------------------------------------------
// Backends

/// What one backend connection saw.
#[derive(Clone, Debug)]
struct ConnRecord {
    /// Bytes received from the server.
    received: u64,
    /// FNV-1a of those bytes.
    hash: u64,
    /// The server closed its side (read returned 0).
    eof: bool,
    /// The server reset the connection (a socket closed with unread bytes does that).
    reset: bool,
    /// A read failed otherwise.
    error: Option<String>,
}

impl ConnRecord {
    fn closed(&self) -> bool {
        self.eof || self.reset || self.error.is_some()
    }
}

/// An echo backend that records every connection; with `close_first_after`, the first
/// connection echoes that many bytes, then closes its sending side (and keeps reading).
struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<ConnRecord>>>,
}

impl Recorder {
    fn new(close_first_after: Option<u64>) -> Recorder {
        let conns = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&conns);
        let addr = backend(move |mut stream| {
            let idx = {
                let mut conns = shared.lock().unwrap();
                conns.push(ConnRecord {
                    received: 0,
                    hash: FNV_OFFSET,
                    eof: false,
                    reset: false,
                    error: None,
                });
                conns.len() - 1
            };
            let limit = if idx == 0 { close_first_after } else { None };
            let mut echoed = 0u64;
            let mut sending = true;
            let mut buf = vec![0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        shared.lock().unwrap()[idx].eof = true;
                        break;
                    }
                    Ok(n) => {
                        {
                            let mut conns = shared.lock().unwrap();
                            let rec = &mut conns[idx];
                            rec.received += n as u64;
                            rec.hash = fnv(rec.hash, &buf[..n]);
                        }
                        if !sending {
                            continue;
                        }
                        let k = limit.map_or(n as u64, |l| (l - echoed).min(n as u64));
                        // The server may close (a stream the client ended) while we echo:
                        // then keep reading, to record all that arrived.
                        if stream.write_all(&buf[..k as usize]).is_err() {
                            sending = false;
                            continue;
                        }
                        echoed += k;
                        if limit == Some(echoed) {
                            let _ = stream.shutdown(Shutdown::Write);
                            sending = false;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        shared.lock().unwrap()[idx].reset = true;
                        break;
                    }
                    Err(e) => {
                        shared.lock().unwrap()[idx].error = Some(format!("read: {e}"));
                        break;
                    }
                }
            }
            if sending {
                let _ = stream.shutdown(Shutdown::Write);
            }
        });
        Recorder { addr, conns }
    }

    /// A backend that sends all the time (junk, as fast as it can) and reads slowly,
    /// recording what it reads; it closes once it has read EOF. When the client's FIN
    /// comes, bytes still wait in the server's socket, and unread bytes from dst wait in
    /// it too: a server that closed then would reset the connection and lose the former.
    fn flooding() -> Recorder {
        let conns = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&conns);
        let addr = backend(move |mut stream| {
            let idx = {
                let mut conns = shared.lock().unwrap();
                conns.push(ConnRecord {
                    received: 0,
                    hash: FNV_OFFSET,
                    eof: false,
                    reset: false,
                    error: None,
                });
                conns.len() - 1
            };
            let done = Arc::new(AtomicBool::new(false));
            let flood = {
                let mut out = stream.try_clone().unwrap();
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let junk = vec![0x5au8; 65536];
                    while !done.load(Ordering::Relaxed) && out.write_all(&junk).is_ok() {}
                })
            };
            let mut buf = vec![0u8; 16384];
            loop {
                std::thread::sleep(Duration::from_millis(1));
                match stream.read(&mut buf) {
                    Ok(0) => {
                        shared.lock().unwrap()[idx].eof = true;
                        break;
                    }
                    Ok(n) => {
                        let mut conns = shared.lock().unwrap();
                        let rec = &mut conns[idx];
                        rec.received += n as u64;
                        rec.hash = fnv(rec.hash, &buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        shared.lock().unwrap()[idx].reset = true;
                        break;
                    }
                    Err(e) => {
                        shared.lock().unwrap()[idx].error = Some(format!("read: {e}"));
                        break;
                    }
                }
            }
            done.store(true, Ordering::Relaxed);
            let _ = stream.shutdown(Shutdown::Both);
            let _ = flood.join();
        });
        Recorder { addr, conns }
    }

    fn snapshot(&self) -> Vec<ConnRecord> {
        self.conns.lock().unwrap().clone()
    }

    /// Waits until exactly `n` connections came and the server closed every one of them
    /// (each dst is closed when its stream ends); returns them.
    fn wait_all_closed(&self, n: usize) -> Vec<ConnRecord> {
        let conns = wait_until("every dst connection closed by the server", || {
            let conns = self.snapshot();
            let done = conns.len() >= n && conns.iter().all(ConnRecord::closed);
            done.then_some(conns)
        });
        assert_eq!(conns.len(), n, "dst connections: {conns:?}");
        for c in &conns {
            assert!(c.error.is_none(), "dst connection failed: {c:?}");
        }
        conns
    }
}

/// Asserts that the connections received exactly the peer's streams `(id, bytes)`, in
/// any order, each whole and in order.
fn assert_streams_received(conns: &[ConnRecord], expected: &[(u64, u64)]) {
    let mut got: Vec<(u64, u64)> = conns.iter().map(|c| (c.received, c.hash)).collect();
    let mut want: Vec<(u64, u64)> = expected
        .iter()
        .map(|&(id, n)| (n, go_stream_hash(id, n)))
        .collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "(bytes, checksum) per dst connection");
}

/// Polls `f` every 10 ms until it gives a value, for at most [`WAIT`].
fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback TCP socket that is bound but not listening: connections to it are refused
/// until [`listen`] turns it into a listener, on the same port.
fn bound_not_listening() -> (OwnedFd, SocketAddr) {
    // SAFETY: plain socket calls on a socket we own, with a zeroed sockaddr_in of the
    // right size.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(raw);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let sa_ptr = &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr;
        assert_eq!(libc::bind(fd.as_raw_fd(), sa_ptr, len), 0, "bind");
        assert_eq!(libc::getsockname(fd.as_raw_fd(), sa_ptr, &mut len), 0);
        let port = u16::from_be(sa.sin_port);
        (fd, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }
}

fn listen(fd: OwnedFd) -> TcpListener {
    // SAFETY: listen(2) on a bound socket we own.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), 128) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    TcpListener::from(fd)
}

// ---------------------------------------------------------------------------------------
// The server's memory

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Samples a process's RSS every 20 ms until stopped; [`RssWatch::stop`] gives the most.
struct RssWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut most = rss_kib(pid);
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                most = most.max(rss_kib(pid));
            }
            most
        });
        RssWatch { stop, handle }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// The tests

/// 16 streams on one session, 4 MiB each way per stream, verified by the peer (echo) and
/// by the backend (the checksum of what each dst connection received).
fn sixteen_streams_bulk(server: Server) {
    let Some(bin) = gopeer() else { return };
    let dst = Recorder::new(None);
    let path = unique_path("bulk16");
    server.add(&[(&path, dst.addr)]);
    let r = run_peer(
        bin,
        &server,
        &path,
        &[
            "-proto", "smux_on", "-mode", "echo", "-streams", "16", "-bytes", "4194304",
        ],
    );
    assert_ok(&r);
    assert_eq!(text(&r, "tunnel"), "mux");
    assert_eq!(text(&r, "selected_proto"), "smux_on");
    assert_eq!(int(&r, "streams_ok"), 16);
    assert_eq!(int(&r, "streams_failed"), 0);
    assert_eq!(int(&r, "bytes_verified"), 16 * 4 * MIB as i64);
    let frame = int(&r, "max_frame_received");
    assert!((1..=65535).contains(&frame), "PSH payload of {frame} bytes");
    let conns = dst.wait_all_closed(16);
    let expected: Vec<(u64, u64)> = (0..16).map(|id| (id, 4 * MIB)).collect();
    assert_streams_received(&conns, &expected);
}

#[test]
fn sixteen_streams_bulk_echo_over_tls() {
    sixteen_streams_bulk(Server::tls());
}

#[test]
fn sixteen_streams_bulk_echo_over_plain_tcp() {
    sixteen_streams_bulk(Server::plain());
}

/// Stream 0 sends half its bytes and closes (a client FIN with echo data in flight) while
/// seven others run; then a fresh stream works. Its dst gets exactly those bytes, then EOF.
fn client_closes_one_stream_half_way(server: Server) {
    let Some(bin) = gopeer() else { return };
    let dst = Recorder::new(None);
    let path = unique_path("halfclose");
    server.add(&[(&path, dst.addr)]);
    let r = run_peer(
        bin,
        &server,
        &path,
        &[
            "-proto",
            "smux_on",
            "-mode",
            "halfclose",
            "-streams",
            "8",
            "-bytes",
            "4194304",
        ],
    );
    assert_ok(&r);
    assert_eq!(int(&r, "streams_closed_early"), 1);
    assert_eq!(int(&r, "streams_ok"), 8, "7 that ran on, and the fresh one");
    assert_eq!(int(&r, "streams_failed"), 0);
    let conns = dst.wait_all_closed(9);
    // Stream 0's dst got exactly the half written before the FIN; the fresh stream is id 8.
    let mut expected = vec![(0, 2 * MIB)];
    expected.extend((1..=8).map(|id| (id, 4 * MIB)));
    assert_streams_received(&conns, &expected);
}

#[test]
fn client_closes_one_stream_half_way_while_others_run_over_tls() {
    client_closes_one_stream_half_way(Server::tls());
}

#[test]
fn client_closes_one_stream_half_way_while_others_run_over_plain_tcp() {
    client_closes_one_stream_half_way(Server::plain());
}

/// Streams that write and close at once (a client FIN right behind their bytes) to a dst
/// that reads slowly and sends all the time: every byte still reaches dst, then EOF.
/// (Closing the dst socket with unread bytes in it would reset the connection and throw
/// away the bytes still queued for dst.)
fn client_fin_delivers_every_byte(server: Server) {
    let Some(bin) = gopeer() else { return };
    let dst = Recorder::flooding();
    let path = unique_path("upload");
    server.add(&[(&path, dst.addr)]);
    let peer = Peer::spawn(
        bin,
        &server,
        &path,
        &[
            "-proto",
            "smux_on",
            "-mode",
            "upload",
            "-streams",
            "4",
            "-bytes",
            "2097152",
            "-hold",
            "50s",
            "-hold-stdin",
        ],
    );
    peer.wait_line("uploaded", WAIT);
    // The peer holds the session open until dst has it all.
    let conns = dst.wait_all_closed(4);
    let r = peer.finish();
    assert_ok(&r);
    assert_eq!(int(&r, "streams_ok"), 4);
    for c in &conns {
        assert!(c.eof && !c.reset, "dst connection was reset: {c:?}");
    }
    let expected: Vec<(u64, u64)> = (0..4).map(|id| (id, 2 * MIB)).collect();
    assert_streams_received(&conns, &expected);
}

#[test]
fn client_fin_delivers_every_byte_to_a_dst_that_is_sending_over_tls() {
    client_fin_delivers_every_byte(Server::tls());
}

#[test]
fn client_fin_delivers_every_byte_to_a_dst_that_is_sending_over_plain_tcp() {
    client_fin_delivers_every_byte(Server::plain());
}

/// The first dst connection echoes 256 KiB and closes: its stream gets those bytes, then a
/// FIN (EOF); the other streams and the session go on, and a fresh stream works.
#[test]
fn dst_closing_one_stream_gives_fin_and_the_session_goes_on() {
    let Some(bin) = gopeer() else { return };
    let server = Server::plain();
    let dst = Recorder::new(Some(256 * 1024));
    let path = unique_path("dstclose");
    server.add(&[(&path, dst.addr)]);
    let r = run_peer(
        bin,
        &server,
        &path,
        &[
            "-proto",
            "smux_on",
            "-mode",
            "serverclose",
            "-streams",
            "4",
            "-bytes",
            "4194304",
        ],
    );
    assert_ok(&r);
    assert_eq!(int(&r, "streams_closed_by_server"), 1);
    assert_eq!(int(&r, "streams_ok"), 4, "3 that ran on, and the fresh one");
    assert!(int(&r, "fins_received") >= 1, "{r}");
    // Every byte dst sent before closing reached the client, then the FIN.
    assert_eq!(int(&r, "bytes_verified"), (4 * 4 * MIB + 256 * 1024) as i64);
    // The session outlived the closed stream: the fresh stream above ran on it. (The
    // peer may or may not have read the server's answer to its own final close frame
    // before it reported, so ws_close_code is 0 or 1000 and says nothing here.)
    // And the server closed that dst connection (as all others) once the stream ended.
    let conns = dst.wait_all_closed(5);
    assert!(conns[0].received <= 4 * MIB, "{:?}", conns[0]);
}

/// 16 streams open and busy: a 17th SYN gets a FIN (and its data is dropped, never
/// dialed), the 16 complete, and once they are closed a new stream is accepted.
fn seventeenth_stream_refused(server: Server) {
    let Some(bin) = gopeer() else { return };
    let dst = Recorder::new(None);
    let path = unique_path("refuse");
    server.add(&[(&path, dst.addr)]);
    let r = run_peer(
        bin,
        &server,
        &path,
        &[
            "-proto", "smux_on", "-mode", "refuse", "-streams", "16", "-bytes", "2097152",
        ],
    );
    assert_ok(&r);
    assert_eq!(int(&r, "streams_refused"), 1);
    assert_eq!(int(&r, "streams_ok"), 17, "the 16, then a fresh one");
    assert_eq!(int(&r, "streams_failed"), 0);
    assert!(int(&r, "fins_received") >= 1, "{r}");
    // No dst connection for the refused stream: 16 + the fresh one (id 16), each with
    // exactly its own stream's bytes.
    let conns = dst.wait_all_closed(17);
    let expected: Vec<(u64, u64)> = (0..17).map(|id| (id, 2 * MIB)).collect();
    assert_streams_received(&conns, &expected);
}

#[test]
fn seventeenth_stream_is_refused_while_sixteen_keep_working_over_tls() {
    seventeenth_stream_refused(Server::tls());
}

#[test]
fn seventeenth_stream_is_refused_while_sixteen_keep_working_over_plain_tcp() {
    seventeenth_stream_refused(Server::plain());
}

/// A dst that never reads: the client pushes 128 MiB at it and is pushed back (its writes
/// block) while the server's RSS stays bounded, and another session keeps working.
#[test]
fn stalled_dst_pushes_back_with_bounded_memory_and_other_sessions_go_on() {
    let Some(bin) = gopeer() else { return };
    let server = Server::tls();
    let (stalled, accepted) = capture_backend();
    let other = Recorder::new(None);
    let path_a = unique_path("stalled");
    let path_b = unique_path("other");
    server.add(&[(&path_a, stalled), (&path_b, other.addr)]);
    let baseline = rss_kib(server.pid());
    let watch = RssWatch::start(server.pid());

    let pushed = 128 * MIB;
    let mut pusher = Peer::spawn(
        bin,
        &server,
        &path_a,
        &[
            "-proto",
            "smux_on",
            "-mode",
            "push",
            "-streams",
            "1",
            "-bytes",
            &pushed.to_string(),
            "-hold",
            "100s",
            "-hold-stdin",
        ],
    );
    let blocked = pusher.wait_line("blocked", Duration::from_secs(60));
    let held = accepted.recv_timeout(WAIT).expect("dst connection"); // never read
                                                                     // Meanwhile another session (on either worker) works.
    let r = run_peer(
        bin,
        &server,
        &path_b,
        &[
            "-proto", "smux_on", "-mode", "echo", "-streams", "4", "-bytes", "4194304",
        ],
    );
    assert_ok(&r);
    assert_eq!(int(&r, "streams_ok"), 4);
    let most = watch.stop();
    pusher.release();
    let p = pusher.finish();
    assert_ok(&p);
    assert_eq!(p["write_blocked"], Value::Bool(true), "{p}");
    let written = int(&p, "stall_bytes_written") as u64;
    assert!(written < pushed, "{blocked}: {p}");
    let growth = most.saturating_sub(baseline);
    eprintln!(
        "server RSS {baseline} KiB at start, at most {most} KiB (+{growth} KiB) while the \
         client was blocked after {written} bytes"
    );
    assert!(growth < 64 * 1024, "server RSS grew by {growth} KiB");
    drop(held);
}

/// The client stops reading one stream while it and another keep sending: everything
/// stalls (smux v1 has no per-stream window), the server's RSS stays bounded, and once
/// the client reads again all of it arrives intact.
#[test]
fn client_that_stops_reading_is_pushed_back_with_bounded_memory() {
    let Some(bin) = gopeer() else { return };
    let server = Server::tls();
    let dst = Recorder::new(None);
    let path = unique_path("stall");
    server.add(&[(&path, dst.addr)]);
    let baseline = rss_kib(server.pid());
    let watch = RssWatch::start(server.pid());
    let n = 32 * MIB;
    let r = run_peer(
        bin,
        &server,
        &path,
        &[
            "-proto",
            "smux_on",
            "-mode",
            "stall",
            "-streams",
            "2",
            "-bytes",
            &n.to_string(),
            "-hold",
            "2s",
        ],
    );
    let most = watch.stop();
    assert_ok(&r);
    assert_eq!(r["write_blocked"], Value::Bool(true), "{r}");
    assert!((int(&r, "stall_bytes_written") as u64) < n, "{r}");
    assert_eq!(int(&r, "streams_ok"), 2);
    assert_eq!(int(&r, "bytes_verified") as u64, 2 * n);
    let growth = most.saturating_sub(baseline);
    eprintln!("server RSS {baseline} KiB at start, at most {most} KiB (+{growth} KiB)");
    assert!(growth < 64 * 1024, "server RSS grew by {growth} KiB");
    let conns = dst.wait_all_closed(2);
    assert_streams_received(&conns, &[(0, n), (1, n)]);
}

/// The same Go client in plain mode: `smux_off`, and no subprotocol on a server without
/// `-mux`; `smux_off` also wins over the server's `-mux` default.
#[test]
fn go_client_plain_mode_with_smux_off_and_with_no_subprotocol() {
    let Some(bin) = gopeer() else { return };
    for (server, proto, selected) in [
        (Server::plain(), "smux_off", "smux_off"),
        (Server::plain(), "none", ""),
        (
            Server::start(&["-force-tls", "-mux"]),
            "smux_off",
            "smux_off",
        ),
    ] {
        let dst = Recorder::new(None);
        let path = unique_path("plain");
        server.add(&[(&path, dst.addr)]);
        let r = run_peer(
            bin,
            &server,
            &path,
            &[
                "-proto", proto, "-mode", "echo", "-streams", "4", "-bytes", "4194304",
            ],
        );
        assert_ok(&r);
        assert_eq!(text(&r, "tunnel"), "plain", "{proto}");
        assert_eq!(text(&r, "selected_proto"), selected, "{proto}");
        assert_eq!(int(&r, "streams_ok"), 4);
        assert_eq!(int(&r, "ws_close_code"), 1000, "{r}");
        let conns = dst.wait_all_closed(4);
        let expected: Vec<(u64, u64)> = (0..4).map(|id| (id, 4 * MIB)).collect();
        assert_streams_received(&conns, &expected);
    }
}

/// With `-mux`, a client offering no subprotocol gets smux (and no subprotocol echoed);
/// a client offering both gets `smux_on`.
#[test]
fn server_mux_flag_makes_smux_the_default() {
    let Some(bin) = gopeer() else { return };
    let server = Server::start(&["-force-tls", "-mux"]);
    for (proto, selected) in [("none", ""), ("smux_off,smux_on", "smux_on")] {
        let dst = Recorder::new(None);
        let path = unique_path("muxdefault");
        server.add(&[(&path, dst.addr)]);
        let r = run_peer(
            bin,
            &server,
            &path,
            &[
                "-proto", proto, "-mux", "-mode", "echo", "-streams", "4", "-bytes", "2097152",
            ],
        );
        assert_ok(&r);
        assert_eq!(text(&r, "tunnel"), "mux", "{proto}");
        assert_eq!(text(&r, "selected_proto"), selected, "{proto}");
        assert_eq!(int(&r, "streams_ok"), 4);
        let conns = dst.wait_all_closed(4);
        let expected: Vec<(u64, u64)> = (0..4).map(|id| (id, 2 * MIB)).collect();
        assert_streams_received(&conns, &expected);
    }
}

/// A frame with version 2, or a cmd other than SYN/FIN/PSH/NOP (4 = UPD is v2 only), ends
/// the session with a close frame 1002; the stream it had opened is closed; the server
/// serves on.
#[test]
fn bad_smux_version_or_cmd_ends_the_session() {
    let Some(bin) = gopeer() else { return };
    let server = Server::tls();
    let dst = Recorder::new(None);
    let path = unique_path("badsmux");
    server.add(&[(&path, dst.addr)]);
    for args in [
        &["-mode", "badver"][..],
        &["-mode", "badcmd", "-badcmd", "4"],
        &["-mode", "badcmd", "-badcmd", "200"],
    ] {
        let mut all = vec!["-proto", "smux_on", "-timeout", "30s"];
        all.extend_from_slice(args);
        let r = run_peer(bin, &server, &path, &all);
        assert_ok(&r);
        assert_eq!(int(&r, "ws_close_code"), 1002, "{args:?}: {r}");
    }
    // Whatever dst connections the SYNs opened were closed with their sessions.
    wait_until("dst connections of ended sessions closed", || {
        let conns = dst.snapshot();
        conns.iter().all(ConnRecord::closed).then_some(())
    });
    let r = run_peer(
        bin,
        &server,
        &path,
        &[
            "-proto", "smux_on", "-mode", "echo", "-streams", "2", "-bytes", "65536",
        ],
    );
    assert_ok(&r);
    assert_eq!(int(&r, "streams_ok"), 2);
}

/// A dst that refuses connections: each stream gets a FIN, the session goes on; once dst
/// listens, the next stream of the same session completes its echo.
#[test]
fn unreachable_dst_gets_fin_and_the_session_goes_on() {
    let Some(bin) = gopeer() else { return };
    let server = Server::plain();
    let (socket, addr) = bound_not_listening();
    let path = unique_path("refused");
    server.add(&[(&path, addr)]);
    let peer = Peer::spawn(
        bin,
        &server,
        &path,
        &[
            "-proto", "smux_on", "-mode", "retry", "-bytes", "1048576", "-timeout", "60s",
        ],
    );
    let failed = format!("for path {path}: dial failed");
    wait_until("the server's dial failure", || {
        server.log.lock().unwrap().contains(&failed).then_some(())
    });
    let listener = listen(socket);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let r = peer.finish();
    assert_ok(&r);
    let refused = int(&r, "streams_refused");
    assert!(refused >= 1, "{r}");
    assert_eq!(int(&r, "streams_ok"), 1);
    assert!(int(&r, "fins_received") >= refused, "{r}");
    assert_eq!(int(&r, "bytes_verified"), MIB as i64);
}

/// `-timeout` applies per stream: streams idle past it get a FIN (and their dst is
/// closed), but the session lives on and a fresh stream works.
#[test]
fn idle_streams_time_out_with_fin_but_the_session_lives_on() {
    let Some(bin) = gopeer() else { return };
    let server = Server::start(&["-timeout", "2s"]);
    let dst = Recorder::new(None);
    let path = unique_path("idlestream");
    server.add(&[(&path, dst.addr)]);
    let r = run_peer(
        bin,
        &server,
        &path,
        &[
            "-proto",
            "smux_on",
            "-mode",
            "serverclose",
            "-streams",
            "3",
            "-bytes",
            "1048576",
            "-idle",
            "5s",
        ],
    );
    assert_ok(&r);
    assert_eq!(int(&r, "streams_closed_by_server"), 3);
    assert_eq!(int(&r, "streams_ok"), 1);
    assert!(int(&r, "fins_received") >= 3, "{r}");
    let conns = dst.wait_all_closed(4);
    // The three timed-out streams' dst got nothing (their data came after the FIN).
    assert_streams_received(&conns, &[(0, 0), (0, 0), (0, 0), (3, MIB)]);
}

/// The client stops reading for 5 s while its streams send 32 MiB each: everything stalls,
/// with frames to the client half-written, and the streams' 2 s `-timeout` passes. Each
/// stream then gets the rest of the frame being written and a FIN (cutting the frame short
/// would break the framing of the whole connection), and the session goes on.
#[test]
fn streams_timing_out_while_the_client_is_not_reading_leave_the_session_intact() {
    let Some(bin) = gopeer() else { return };
    let server = Server::start(&["-timeout", "2s"]);
    let dst = Recorder::new(None);
    let path = unique_path("stalltimeout");
    server.add(&[(&path, dst.addr)]);
    let r = run_peer(
        bin,
        &server,
        &path,
        &[
            "-proto",
            "smux_on",
            "-mode",
            "serverclose",
            "-streams",
            "2",
            "-bytes",
            "33554432",
            "-read-delay",
            "5s",
        ],
    );
    assert_ok(&r);
    assert_eq!(int(&r, "streams_closed_by_server"), 2, "{r}");
    assert_eq!(int(&r, "streams_ok"), 1, "the fresh stream");
    assert!(int(&r, "fins_received") >= 2, "{r}");
    // The session outlived the closed stream: the fresh stream above ran on it. (The
    // peer may or may not have read the server's answer to its own final close frame
    // before it reported, so ws_close_code is 0 or 1000 and says nothing here.)
}

/// The server sends a NOP every 30 s: a session idle for 32 s receives at least one and
/// still works afterwards.
#[test]
fn server_sends_keepalive_nop_every_30s() {
    let Some(bin) = gopeer() else { return };
    let server = Server::plain();
    let path = unique_path("nop");
    server.add(&[(&path, echo_backend())]);
    let r = run_peer(
        bin,
        &server,
        &path,
        &[
            "-proto", "smux_on", "-mode", "echo", "-streams", "1", "-bytes", "65536", "-idle",
            "32s",
        ],
    );
    assert_ok(&r);
    assert!(int(&r, "nops_received") >= 1, "{r}");
    assert_eq!(int(&r, "streams_ok"), 1);
}
