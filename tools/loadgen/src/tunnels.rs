//! `loadgen tunnels` (new tunnels per second and the server's CPU per new tunnel) and
//! `loadgen idle` (the server's memory per open idle tunnel).
//!
//! A tunnel here is what a client does before its first useful byte: TCP connect, TLS
//! handshake (full or resumed), the WebSocket upgrade (not for the TLS or TCP references),
//! and one echo through the backend, which proves the relay has dialed it. The tunnels test
//! then closes it (TLS close_notify, TCP close); the idle test keeps it open.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use crate::backend;
use crate::client::{self, Chunk, Proto, Reader, Transport};
use crate::procfs::{self, CpuMeter};
use crate::record::Recorder;

const ECHO: &[u8; 16] = b"tunnel-is-open!!";

/// Where tunnels go and how they are opened.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub proto: Proto,
    /// Tunnel `i` uses path `{path}{i % paths}` when `paths > 1`, else `path` itself, so
    /// their destinations can be spread over several backend ports.
    pub path: String,
    pub paths: usize,
    /// Source addresses to spread connections over (none: the kernel's choice).
    pub sources: Vec<IpAddr>,
}

impl Target {
    fn path(&self, i: usize) -> String {
        if self.paths > 1 {
            format!("{}{}", self.path, i % self.paths)
        } else {
            self.path.clone()
        }
    }
    fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }
}

/// Opens tunnel number `i` and proves it carries bytes.
pub fn open(target: &Target, tls: &Arc<ClientConfig>, i: usize) -> io::Result<Transport> {
    let mut t = client::connect(target.addr, target.proto, tls, target.source(i))?;
    let early = if target.proto.websocket() {
        client::upgrade(&mut t, &target.path(i), "smux_off")?
    } else {
        Vec::new()
    };
    if target.proto.websocket() {
        let mut out = Vec::new();
        client::ws_frame(&backend::request(b'E', 0), &mut out);
        client::ws_frame(ECHO, &mut out);
        t.write_all(&out)?;
    } else {
        let mut out = backend::request(b'E', 0).to_vec();
        out.extend_from_slice(ECHO);
        t.write_all(&out)?;
    }
    t.flush()?;
    let mut reader = Reader::new(target.proto.websocket(), early);
    let mut got = 0;
    while got < ECHO.len() {
        match reader.next(&mut t)? {
            Chunk::Data(r) => got += r.len(),
            other => return Err(io::Error::other(format!("echo failed: {other:?}"))),
        }
    }
    Ok(t)
}

pub struct Tunnels {
    pub target: Target,
    pub count: usize,
    pub concurrency: usize,
    pub resume: bool,
    pub server_pid: Option<u32>,
}

pub fn run_tunnels(cfg: Tunnels, rec: &Recorder) -> Result<(), String> {
    let tls = client::tls_config(cfg.resume);
    if cfg.resume && cfg.target.proto.tls() {
        // Fill the session cache: every later handshake can resume.
        for i in 0..cfg.concurrency.max(4) {
            let t = open(&cfg.target, &tls, i).map_err(|e| format!("warm-up tunnel: {e}"))?;
            t.close();
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let resumed = Arc::new(AtomicUsize::new(0));
    let cfg = Arc::new(cfg);
    let cpu = CpuMeter::start(cfg.server_pid);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..cfg.concurrency {
        let (cfg, tls, next, resumed) = (
            Arc::clone(&cfg),
            Arc::clone(&tls),
            Arc::clone(&next),
            Arc::clone(&resumed),
        );
        handles.push(std::thread::spawn(move || -> io::Result<Vec<f64>> {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cfg.count {
                    return Ok(latencies);
                }
                let t0 = Instant::now();
                let t = open(&cfg.target, &tls, i)?;
                latencies.push(t0.elapsed().as_secs_f64() * 1e3);
                if t.resumed() == Some(true) {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
                t.close();
            }
        }));
    }
    let mut latencies = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => return Err(format!("tunnel failed: {e}")),
            Err(_) => return Err("tunnel thread panicked".into()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // Let the server finish tearing down the last tunnels before reading its CPU.
    std::thread::sleep(Duration::from_millis(200));
    let used = cpu.used();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let kind = if !cfg.target.proto.tls() {
        "no TLS"
    } else if cfg.resume {
        "resumed TLS"
    } else {
        "full TLS"
    };
    let name = format!("new tunnels, {kind}, {} at once", cfg.concurrency);
    rec.record(
        &format!("{name}: rate"),
        cfg.count as f64 / secs,
        "tunnels/s",
    );
    if let Some(used) = used {
        rec.record(
            &format!("{name}: server CPU"),
            used / cfg.count as f64 * 1e3,
            "ms/tunnel",
        );
    }
    rec.record(
        &format!("{name}: client p50 open"),
        latencies[latencies.len() / 2],
        "ms",
    );
    if cfg.target.proto.tls() {
        let fraction = resumed.load(Ordering::Relaxed) as f64 / cfg.count as f64;
        rec.record(&format!("{name}: resumed fraction"), fraction, "");
    }
    Ok(())
}

pub struct Idle {
    pub target: Target,
    pub count: usize,
    pub threads: usize,
    pub hold: Duration,
    pub server_pid: u32,
}

pub fn run_idle(cfg: Idle, rec: &Recorder) -> Result<(), String> {
    let limit = procfs::raise_nofile(cfg.count as u64 + 4096);
    if limit < cfg.count as u64 + 100 {
        return Err(format!(
            "open-file limit {limit} is too low for {} tunnels",
            cfg.count
        ));
    }
    let tls = client::tls_config(true);
    // One tunnel first, so the server's start-up allocations (TLS, buffers) are not
    // counted against the idle ones.
    let first = open(&cfg.target, &tls, 0).map_err(|e| format!("first tunnel: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    let before = procfs::rss_bytes(cfg.server_pid).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(1));
    let cfg = Arc::new(cfg);
    let mut handles = Vec::new();
    for _ in 0..cfg.threads {
        let (cfg, tls, next) = (Arc::clone(&cfg), Arc::clone(&tls), Arc::clone(&next));
        handles.push(std::thread::spawn(move || -> io::Result<Vec<Transport>> {
            let mut open_ones = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i > cfg.count {
                    return Ok(open_ones);
                }
                open_ones.push(open(&cfg.target, &tls, i)?);
            }
        }));
    }
    let mut tunnels = vec![first];
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(t)) => tunnels.extend(t),
            Ok(Err(e)) => failure = Some(format!("tunnel failed: {e}")),
            Err(_) => failure = Some("tunnel thread panicked".into()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(why) = failure {
        return Err(format!("{why} (after {} tunnels)", tunnels.len()));
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = procfs::rss_bytes(cfg.server_pid).map_err(|e| e.to_string())?;
    let n = cfg.count;
    rec.record(
        &format!("idle tunnels, {n} open: server RSS per tunnel"),
        (after.saturating_sub(before)) as f64 / n as f64 / 1024.0,
        "KiB",
    );
    rec.record(
        &format!("idle tunnels, {n} open: server RSS total"),
        after as f64 / (1u64 << 20) as f64,
        "MiB",
    );
    rec.record(
        &format!("idle tunnels, {n} open: open rate"),
        n as f64 / secs,
        "tunnels/s",
    );
    // Every tunnel still works after the wait: read nothing, check none was closed.
    let mut closed = 0;
    for t in &tunnels {
        let mut probe = [0u8; 1];
        let tcp = t.tcp();
        let _ = tcp.set_nonblocking(true);
        if let Ok(0) = (&*tcp).read(&mut probe) {
            closed += 1;
        }
        let _ = tcp.set_nonblocking(false);
    }
    if closed > 0 {
        eprintln!(
            "loadgen idle: {closed} of {} tunnels were closed by the server",
            n + 1
        );
    }
    std::thread::sleep(cfg.hold);
    drop(tunnels);
    Ok(())
}
