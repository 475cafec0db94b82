//! The tunnels: plain (`smux_off`) tunnels and mux (`smux_on`) sessions of several streams,
//! each sending its own deterministic byte stream and checking every echoed byte.
//!
//! A worker thread owns a group of units and runs them in rounds: first every unit writes
//! one chunk per tunnel (connecting first if it has to), then every unit reads until the
//! echo of that chunk is back, byte for byte. So every tunnel of the group has data in
//! flight at once, and at most one chunk per tunnel is in flight, which the socket buffers
//! along the path always hold: no deadlock, however the server schedules.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use testkit::rng::{mismatches, mix, ByteStream, Rng};
use testkit::smux::{self, SmuxDecoder, SmuxEvent};
use testkit::tls::Transport;
use testkit::ws::{self, Event, WsReader};

use crate::backend;

/// Read and write timeout of a tunnel's socket: a tunnel with data in flight that moves
/// nothing for this long is reported as stalled.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The SNI name the soak's TLS clients send.
const SERVER_NAME: &str = "www.example.com";

/// What every tunnel needs to know.
pub struct TunnelConfig {
    pub data: SocketAddr,
    pub tls: Option<Arc<ClientConfig>>,
    /// The soak users' paths (all to the echo backend); each tunnel picks one.
    pub paths: Vec<String>,
    /// A plain tunnel moves between 1 KiB and this many bytes, then closes.
    pub max_plain_bytes: u64,
    /// A mux stream moves between 1 KiB and this many bytes, then closes.
    pub max_stream_bytes: u64,
    pub streams_per_session: usize,
    /// A mux session lives this long (a random time in the range), then closes.
    pub session_life: (Duration, Duration),
    /// One data message in this many carries a ping (0: no pings).
    pub ping_one_in: u64,
    /// One tunnel in this many is closed by the backend rather than by the client.
    pub backend_close_one_in: u64,
    /// A worker sleeps up to this long between rounds (0: never).
    pub pace: Duration,
    pub seed: u64,
}

/// How a tunnel failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect, TLS handshake or upgrade failed.
    Connect,
    /// The connection ended, or the server closed the tunnel or a stream, before we did.
    Drop,
    /// Nothing moved for [`IO_TIMEOUT`] while data was in flight.
    Stall,
    /// Echoed bytes differed from those sent, or more came back than was sent.
    Corrupt,
    /// The server broke RFC 6455 or smux (masked frame, unexpected pong, SYN, ...).
    Protocol,
}

/// Counters shared by all workers.
#[derive(Default)]
pub struct Stats {
    pub plain_opened: AtomicU64,
    pub plain_completed: AtomicU64,
    pub plain_backend_closed: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_completed: AtomicU64,
    pub streams_opened: AtomicU64,
    pub streams_completed: AtomicU64,
    pub streams_backend_closed: AtomicU64,
    pub active_plain: AtomicU64,
    pub active_sessions: AtomicU64,
    pub active_streams: AtomicU64,
    /// Tunnel bytes written (headers and payload, not framing).
    pub bytes_sent: AtomicU64,
    /// Echoed tunnel bytes received and compared.
    pub bytes_echoed: AtomicU64,
    pub corrupted_bytes: AtomicU64,
    pub pings: AtomicU64,
    pub pongs: AtomicU64,
    pub nops: AtomicU64,
    pub connect_failures: AtomicU64,
    pub drops: AtomicU64,
    pub stalls: AtomicU64,
    pub corruptions: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// FINs for streams we had already closed (tolerated).
    pub stray_fins: AtomicU64,
    /// Worker threads of this tool that panicked (a bug here, reported as a failure).
    pub worker_panics: AtomicU64,
    /// The first failures, described.
    pub messages: Mutex<Vec<String>>,
}

impl Stats {
    pub fn failures(&self) -> u64 {
        self.connect_failures.load(Relaxed)
            + self.drops.load(Relaxed)
            + self.stalls.load(Relaxed)
            + self.corruptions.load(Relaxed)
            + self.protocol_errors.load(Relaxed)
            + self.worker_panics.load(Relaxed)
    }

    fn record(&self, kind: Failure, msg: String) {
        let counter = match kind {
            Failure::Connect => &self.connect_failures,
            Failure::Drop => &self.drops,
            Failure::Stall => &self.stalls,
            Failure::Corrupt => &self.corruptions,
            Failure::Protocol => &self.protocol_errors,
        };
        counter.fetch_add(1, Relaxed);
        let mut m = self.messages.lock().unwrap();
        if m.len() < 30 {
            m.push(format!("{kind:?}: {msg}"));
        }
    }
}

pub struct Shared {
    pub cfg: TunnelConfig,
    pub stop: AtomicBool,
    pub stats: Stats,
}

/// An IO error while data was in flight: a stall if it was a timeout, else a drop.
fn io_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Stall,
        io::ErrorKind::InvalidData => Failure::Protocol,
        _ => Failure::Drop,
    }
}

struct Conn {
    t: Transport,
    rd: WsReader,
    opened: Instant,
}

impl Conn {
    fn open(sh: &Shared, rng: &mut Rng, protocol: &str) -> Result<Conn, String> {
        let cfg = &sh.cfg;
        let mut t = testkit::tls::connect(
            cfg.data,
            cfg.tls.as_ref().map(|c| (c, SERVER_NAME)),
            IO_TIMEOUT,
        )
        .map_err(|e| format!("connect: {e}"))?;
        let mut path = cfg.paths[rng.below(cfg.paths.len() as u64) as usize].clone();
        if rng.chance(1, 4) {
            // The query string is not part of the route key.
            path.push_str(&format!("?t={}", rng.below(1_000_000)));
        }
        let early = ws::upgrade(&mut t, &path, protocol, rng)
            .map_err(|e| format!("upgrade {path}: {e}"))?;
        Ok(Conn {
            t,
            rd: WsReader::new(&early),
            opened: Instant::now(),
        })
    }

    fn send(&mut self, out: &[u8]) -> io::Result<()> {
        self.t.write_all(out)?;
        self.t.flush()
    }

    /// After the close handshake: the server must close the connection, and send nothing
    /// more.
    fn drain(&mut self) -> Result<(), (Failure, String)> {
        self.t.set_read_timeout(Duration::from_secs(10));
        match self.rd.next(&mut self.t) {
            Ok(Event::Eof) => Ok(()),
            Ok(e) => Err((
                Failure::Protocol,
                format!("{e:?} after the close handshake"),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err((
                    Failure::Stall,
                    "connection still open 10 s after the close handshake".into(),
                ))
            }
            // A reset after the close handshake loses nothing.
            Err(e) if e.kind() != io::ErrorKind::InvalidData => Ok(()),
            Err(e) => Err((Failure::Protocol, format!("after the close handshake: {e}"))),
        }
    }
}

/// Size of the next chunk: mostly small and medium writes, some large ones.
fn chunk_size(rng: &mut Rng, max: u64) -> u64 {
    match rng.below(10) {
        0..=2 => rng.range(1, 256),
        3..=5 => rng.range(256, 4096),
        _ => rng.range(4096, max.max(4096)),
    }
    .min(max)
}

/// One direction-checked byte stream: a plain tunnel or a mux stream.
struct Flow {
    seed: u64,
    /// Payload bytes to send (after the header).
    budget: u64,
    sent: u64,
    backend_closes: bool,
    tx: ByteStream,
    header_sent: bool,
    /// What this round sent, to be echoed.
    expect: Vec<u8>,
    got: usize,
    /// Offset in the tunnel's byte stream (header included) of `expect[0]`.
    expect_at: u64,
}

impl Flow {
    fn new(sh: &Shared, rng: &mut Rng, seed: u64, max_bytes: u64) -> Flow {
        let bc = sh.cfg.backend_close_one_in;
        Flow {
            seed,
            budget: rng.log_range(1024, max_bytes.max(1024)),
            sent: 0,
            backend_closes: bc > 0 && rng.chance(1, bc),
            tx: ByteStream::new(seed),
            header_sent: false,
            expect: Vec::new(),
            got: 0,
            expect_at: 0,
        }
    }

    /// Fills `expect` with the next chunk (the header first) and returns it.
    fn next_chunk(&mut self, rng: &mut Rng, max: u64) -> &[u8] {
        self.expect_at += self.expect.len() as u64;
        self.expect.clear();
        self.got = 0;
        if !self.header_sent {
            self.header_sent = true;
            let after = self.backend_closes.then_some(self.budget);
            self.expect
                .extend_from_slice(&backend::header(self.seed, after));
        }
        let n = chunk_size(rng, max).min(self.budget - self.sent) as usize;
        let at = self.expect.len();
        self.expect.resize(at + n, 0);
        self.tx.fill(&mut self.expect[at..]);
        self.sent += n as u64;
        &self.expect
    }

    fn echo_done(&self) -> bool {
        self.got == self.expect.len()
    }

    /// All bytes sent and echoed, and the backend will now close.
    fn awaiting_backend_close(&self) -> bool {
        self.backend_closes && self.sent >= self.budget && self.echo_done()
    }

    /// Checks echoed bytes against what was sent.
    fn check(&mut self, data: &[u8], stats: &Stats) -> Result<(), String> {
        let room = self.expect.len() - self.got;
        let n = data.len().min(room);
        let bad = mismatches(&data[..n], &self.expect[self.got..self.got + n]);
        let at = self.expect_at + self.got as u64;
        self.got += n;
        stats.bytes_echoed.fetch_add(n as u64, Relaxed);
        if data.len() > room {
            stats
                .corrupted_bytes
                .fetch_add((data.len() - room) as u64, Relaxed);
            return Err(format!(
                "{} bytes more than were sent came back",
                data.len() - room
            ));
        }
        if bad > 0 {
            let first = data
                .iter()
                .zip(&self.expect[self.got - n..])
                .position(|(a, b)| a != b);
            let at = at + first.unwrap_or(0) as u64;
            stats.corrupted_bytes.fetch_add(bad, Relaxed);
            return Err(format!(
                "{bad} of {n} echoed bytes differ (first at stream offset {at})"
            ));
        }
        Ok(())
    }
}

/// A plain tunnel slot: one tunnel at a time, a new one when the last completed.
pub struct Plain {
    id: u64,
    generation: u64,
    rng: Rng,
    conn: Option<Conn>,
    flow: Option<Flow>,
    pings: VecDeque<Vec<u8>>,
    closing: bool,
}

impl Plain {
    pub fn new(id: u64, seed: u64) -> Plain {
        Plain {
            id,
            generation: 0,
            rng: Rng::new(mix(&[seed, 1, id])),
            conn: None,
            flow: None,
            pings: VecDeque::new(),
            closing: false,
        }
    }

    fn fail(&mut self, sh: &Shared, kind: Failure, msg: String) {
        let age = self
            .conn
            .as_ref()
            .map(|c| c.opened.elapsed())
            .unwrap_or_default();
        sh.stats.record(
            kind,
            format!(
                "plain tunnel {}#{} (age {age:.1?}): {msg}",
                self.id, self.generation
            ),
        );
        self.end(sh);
    }

    fn end(&mut self, sh: &Shared) {
        if self.conn.take().is_some() {
            sh.stats.active_plain.fetch_sub(1, Relaxed);
        }
        self.flow = None;
        self.pings.clear();
        self.closing = false;
        self.generation += 1;
    }

    fn complete(&mut self, sh: &Shared) {
        let conn = self.conn.as_mut().expect("open");
        if let Err((kind, msg)) = conn.drain() {
            return self.fail(sh, kind, msg);
        }
        sh.stats.plain_completed.fetch_add(1, Relaxed);
        self.end(sh);
    }

    fn write_phase(&mut self, sh: &Shared) {
        let stopping = sh.stop.load(Relaxed);
        if self.conn.is_none() {
            if stopping {
                return;
            }
            match Conn::open(sh, &mut self.rng, "smux_off") {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    sh.stats.record(
                        Failure::Connect,
                        format!("plain tunnel {}#{}: {e}", self.id, self.generation),
                    );
                    self.generation += 1;
                    return;
                }
            }
            sh.stats.plain_opened.fetch_add(1, Relaxed);
            sh.stats.active_plain.fetch_add(1, Relaxed);
            let seed = mix(&[sh.cfg.seed, 2, self.id, self.generation]);
            self.flow = Some(Flow::new(sh, &mut self.rng, seed, sh.cfg.max_plain_bytes));
        }
        let flow = self.flow.as_mut().expect("open");
        let mut out = Vec::new();
        if stopping || flow.sent >= flow.budget {
            ws::push_close(&mut out, 1000, &mut self.rng);
            self.closing = true;
        } else {
            let chunk = flow.next_chunk(&mut self.rng, 32 * 1024);
            sh.stats.bytes_sent.fetch_add(chunk.len() as u64, Relaxed);
            let pings = ws::push_message(&mut out, chunk, &mut self.rng, sh.cfg.ping_one_in);
            sh.stats.pings.fetch_add(pings.len() as u64, Relaxed);
            self.pings.extend(pings);
        }
        if let Err(e) = self.conn.as_mut().unwrap().send(&out) {
            self.fail(sh, io_failure(&e), format!("write: {e}"));
        }
    }

    fn read_phase(&mut self, sh: &Shared) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let flow = self.flow.as_mut().expect("open");
            if flow.echo_done()
                && self.pings.is_empty()
                && !self.closing
                && !flow.awaiting_backend_close()
            {
                return;
            }
            let event = match conn.rd.next(&mut conn.t) {
                Ok(e) => e,
                Err(e) => {
                    let what = if self.closing {
                        "waiting for the close frame"
                    } else {
                        "read"
                    };
                    return self.fail(sh, io_failure(&e), format!("{what}: {e}"));
                }
            };
            match event {
                Event::Data(range) => {
                    if let Err(msg) = flow.check(&conn.rd.buf[range], &sh.stats) {
                        return self.fail(sh, Failure::Corrupt, msg);
                    }
                }
                Event::Pong(p) => {
                    if self.pings.front() != Some(&p) {
                        return self.fail(
                            sh,
                            Failure::Protocol,
                            format!("pong {p:?} for no ping sent"),
                        );
                    }
                    self.pings.pop_front();
                    sh.stats.pongs.fetch_add(1, Relaxed);
                }
                Event::Ping(p) => {
                    let mut out = Vec::new();
                    ws::push_frame(&mut out, true, ws::OP_PONG, &p, self.rng.mask());
                    if let Err(e) = conn.send(&out) {
                        return self.fail(sh, io_failure(&e), format!("write pong: {e}"));
                    }
                }
                Event::Close(code) => {
                    if self.closing {
                        return self.complete(sh);
                    }
                    if flow.awaiting_backend_close() && self.pings.is_empty() {
                        if code != Some(1000) {
                            return self.fail(
                                sh,
                                Failure::Protocol,
                                format!("backend closed, close code {code:?}"),
                            );
                        }
                        let mut out = Vec::new();
                        ws::push_close(&mut out, 1000, &mut self.rng);
                        // The server may already be gone: nothing is lost then.
                        let _ = conn.send(&out);
                        sh.stats.plain_backend_closed.fetch_add(1, Relaxed);
                        return self.complete(sh);
                    }
                    let (sent, got, want) = (flow.sent, flow.got, flow.expect.len());
                    return self.fail(
                        sh,
                        Failure::Drop,
                        format!("server closed (code {code:?}) at {sent} bytes sent, echo {got}/{want} of this round"),
                    );
                }
                Event::Eof => {
                    let (sent, got, want) = (flow.sent, flow.got, flow.expect.len());
                    return self.fail(
                        sh,
                        Failure::Drop,
                        format!("connection closed at {sent} bytes sent, echo {got}/{want} of this round"),
                    );
                }
            }
        }
    }
}

struct MuxStream {
    sid: u32,
    flow: Flow,
}

/// A mux session slot: one session at a time, each with up to `streams_per_session`
/// streams open, each stream replaced by a new one when it completes.
pub struct Mux {
    id: u64,
    generation: u64,
    rng: Rng,
    conn: Option<Conn>,
    streams: Vec<Option<MuxStream>>,
    next_sid: u32,
    stream_count: u64,
    retire_at: Instant,
    decoder: SmuxDecoder,
    pings: VecDeque<Vec<u8>>,
    closing: bool,
}

impl Mux {
    pub fn new(id: u64, seed: u64) -> Mux {
        Mux {
            id,
            generation: 0,
            rng: Rng::new(mix(&[seed, 3, id])),
            conn: None,
            streams: Vec::new(),
            next_sid: 1,
            stream_count: 0,
            retire_at: Instant::now(),
            decoder: SmuxDecoder::default(),
            pings: VecDeque::new(),
            closing: false,
        }
    }

    fn fail(&mut self, sh: &Shared, kind: Failure, msg: String) {
        let age = self
            .conn
            .as_ref()
            .map(|c| c.opened.elapsed())
            .unwrap_or_default();
        let open = self.streams.iter().flatten().count();
        sh.stats.record(
            kind,
            format!(
                "mux session {}#{} (age {age:.1?}, {open} streams open): {msg}",
                self.id, self.generation
            ),
        );
        self.end(sh);
    }

    fn end(&mut self, sh: &Shared) {
        if self.conn.take().is_some() {
            sh.stats.active_sessions.fetch_sub(1, Relaxed);
        }
        let open = self.streams.iter().flatten().count() as u64;
        sh.stats.active_streams.fetch_sub(open, Relaxed);
        self.streams.clear();
        self.pings.clear();
        self.decoder = SmuxDecoder::default();
        self.closing = false;
        self.generation += 1;
    }

    fn open_stream(&mut self, sh: &Shared) -> MuxStream {
        let sid = self.next_sid;
        self.next_sid += 2;
        self.stream_count += 1;
        sh.stats.streams_opened.fetch_add(1, Relaxed);
        sh.stats.active_streams.fetch_add(1, Relaxed);
        let seed = mix(&[sh.cfg.seed, 4, self.id, self.generation, u64::from(sid)]);
        MuxStream {
            sid,
            flow: Flow::new(sh, &mut self.rng, seed, sh.cfg.max_stream_bytes),
        }
    }

    fn write_phase(&mut self, sh: &Shared) {
        let stopping = sh.stop.load(Relaxed);
        if self.conn.is_none() {
            if stopping {
                return;
            }
            match Conn::open(sh, &mut self.rng, "smux_on") {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    sh.stats.record(
                        Failure::Connect,
                        format!("mux session {}#{}: {e}", self.id, self.generation),
                    );
                    self.generation += 1;
                    return;
                }
            }
            sh.stats.sessions_opened.fetch_add(1, Relaxed);
            sh.stats.active_sessions.fetch_add(1, Relaxed);
            self.streams = (0..sh.cfg.streams_per_session).map(|_| None).collect();
            self.next_sid = 1;
            let (lo, hi) = sh.cfg.session_life;
            let ms = self.rng.range(lo.as_millis() as u64, hi.as_millis() as u64);
            self.retire_at = Instant::now() + Duration::from_millis(ms);
        }
        let retiring = stopping || Instant::now() >= self.retire_at;
        // Per-stream chunks are smaller, so that a round's whole session stays in the buffers.
        let max_chunk = (64 * 1024 / self.streams.len().max(1) as u64).clamp(1024, 32 * 1024);
        let mut smux = Vec::new();
        for i in 0..self.streams.len() {
            if let Some(s) = &mut self.streams[i] {
                if retiring || s.flow.sent >= s.flow.budget {
                    smux::push_smux(&mut smux, smux::FIN, s.sid, &[]);
                    self.streams[i] = None;
                    sh.stats.streams_completed.fetch_add(1, Relaxed);
                    sh.stats.active_streams.fetch_sub(1, Relaxed);
                }
            }
            let fresh = self.streams[i].is_none() && !retiring;
            if fresh {
                let s = self.open_stream(sh);
                smux::push_smux(&mut smux, smux::SYN, s.sid, &[]);
                self.streams[i] = Some(s);
            }
            if let Some(s) = &mut self.streams[i] {
                let chunk = s.flow.next_chunk(&mut self.rng, max_chunk);
                sh.stats.bytes_sent.fetch_add(chunk.len() as u64, Relaxed);
                // One to three PSH frames.
                let mut at = 0;
                while at < chunk.len() {
                    let left = (chunk.len() - at) as u64;
                    let n = if self.rng.chance(1, 2) {
                        left
                    } else {
                        self.rng.range(1, left)
                    } as usize;
                    smux::push_smux(&mut smux, smux::PSH, s.sid, &chunk[at..at + n]);
                    at += n;
                }
            }
        }
        if self.rng.chance(1, 20) {
            smux::push_smux(&mut smux, smux::NOP, 0, &[]);
        }
        let mut out = Vec::new();
        if !smux.is_empty() {
            let pings = ws::push_message(&mut out, &smux, &mut self.rng, sh.cfg.ping_one_in);
            sh.stats.pings.fetch_add(pings.len() as u64, Relaxed);
            self.pings.extend(pings);
        }
        if retiring && self.streams.iter().all(Option::is_none) {
            ws::push_close(&mut out, 1000, &mut self.rng);
            self.closing = true;
        }
        if let Err(e) = self.conn.as_mut().unwrap().send(&out) {
            self.fail(sh, io_failure(&e), format!("write: {e}"));
        }
    }

    fn round_done(&self) -> bool {
        !self.closing
            && self.pings.is_empty()
            && self
                .streams
                .iter()
                .flatten()
                .all(|s| s.flow.echo_done() && !s.flow.awaiting_backend_close())
    }

    fn read_phase(&mut self, sh: &Shared) {
        loop {
            if self.conn.is_none() || self.round_done() {
                return;
            }
            let conn = self.conn.as_mut().unwrap();
            let event = match conn.rd.next(&mut conn.t) {
                Ok(e) => e,
                Err(e) => {
                    let what = if self.closing {
                        "waiting for the close frame"
                    } else {
                        "read"
                    };
                    return self.fail(sh, io_failure(&e), format!("{what}: {e}"));
                }
            };
            match event {
                Event::Data(range) => {
                    let mut failure: Option<(Failure, String)> = None;
                    let streams = &mut self.streams;
                    let stats = &sh.stats;
                    let fed = self.decoder.feed(&conn.rd.buf[range], |e| {
                        if failure.is_some() {
                            return;
                        }
                        match e {
                            SmuxEvent::Data(sid, bytes) => {
                                match streams.iter_mut().flatten().find(|s| s.sid == sid) {
                                    Some(s) => {
                                        if let Err(msg) = s.flow.check(bytes, stats) {
                                            failure = Some((Failure::Corrupt, format!("stream {sid}: {msg}")));
                                        }
                                    }
                                    None => {
                                        failure = Some((Failure::Protocol, format!("data for stream {sid}, not open")))
                                    }
                                }
                            }
                            SmuxEvent::Fin(sid) => {
                                let Some(slot) = streams.iter_mut().find(|s| s.as_ref().is_some_and(|s| s.sid == sid))
                                else {
                                    stats.stray_fins.fetch_add(1, Relaxed);
                                    return;
                                };
                                let s = slot.take().unwrap();
                                stats.active_streams.fetch_sub(1, Relaxed);
                                if s.flow.awaiting_backend_close() {
                                    stats.streams_completed.fetch_add(1, Relaxed);
                                    stats.streams_backend_closed.fetch_add(1, Relaxed);
                                } else {
                                    // The session lives on: the stream alone is lost.
                                    stats.record(
                                        Failure::Drop,
                                        format!(
                                            "stream {sid} got a FIN at {} bytes sent, echo {}/{} of this round",
                                            s.flow.sent,
                                            s.flow.got,
                                            s.flow.expect.len()
                                        ),
                                    );
                                }
                            }
                            SmuxEvent::Syn(sid) => failure = Some((Failure::Protocol, format!("server sent SYN {sid}"))),
                            SmuxEvent::Nop => {
                                stats.nops.fetch_add(1, Relaxed);
                            }
                        }
                    });
                    if let Err(e) = fed {
                        return self.fail(sh, Failure::Protocol, e.to_string());
                    }
                    if let Some((kind, msg)) = failure {
                        return self.fail(sh, kind, msg);
                    }
                }
                Event::Pong(p) => {
                    if self.pings.front() != Some(&p) {
                        return self.fail(
                            sh,
                            Failure::Protocol,
                            format!("pong {p:?} for no ping sent"),
                        );
                    }
                    self.pings.pop_front();
                    sh.stats.pongs.fetch_add(1, Relaxed);
                }
                Event::Ping(p) => {
                    let mut out = Vec::new();
                    ws::push_frame(&mut out, true, ws::OP_PONG, &p, self.rng.mask());
                    if let Err(e) = conn.send(&out) {
                        return self.fail(sh, io_failure(&e), format!("write pong: {e}"));
                    }
                }
                Event::Close(code) => {
                    if self.closing {
                        if let Err((kind, msg)) = conn.drain() {
                            return self.fail(sh, kind, msg);
                        }
                        sh.stats.sessions_completed.fetch_add(1, Relaxed);
                        return self.end(sh);
                    }
                    return self.fail(
                        sh,
                        Failure::Drop,
                        format!("server closed the session (code {code:?})"),
                    );
                }
                Event::Eof => return self.fail(sh, Failure::Drop, "connection closed".into()),
            }
        }
    }
}

pub enum Unit {
    Plain(Plain),
    Mux(Mux),
}

impl Unit {
    fn write_phase(&mut self, sh: &Shared) {
        match self {
            Unit::Plain(p) => p.write_phase(sh),
            Unit::Mux(m) => m.write_phase(sh),
        }
    }
    fn read_phase(&mut self, sh: &Shared) {
        match self {
            Unit::Plain(p) => p.read_phase(sh),
            Unit::Mux(m) => m.read_phase(sh),
        }
    }
    fn connected(&self) -> bool {
        match self {
            Unit::Plain(p) => p.conn.is_some(),
            Unit::Mux(m) => m.conn.is_some(),
        }
    }
}

/// Runs a group of units in rounds until `stop` is set and every unit has closed cleanly.
pub fn worker(units: Vec<Unit>, sh: &Shared, seed: u64) {
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_units(units, sh, seed)));
    if let Err(panic) = result {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("?");
        sh.stats.worker_panics.fetch_add(1, Relaxed);
        sh.stats
            .messages
            .lock()
            .unwrap()
            .push(format!("soak worker panicked: {what}"));
    }
}

fn run_units(mut units: Vec<Unit>, sh: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    loop {
        for u in units.iter_mut() {
            u.write_phase(sh);
        }
        for u in units.iter_mut() {
            u.read_phase(sh);
        }
        if sh.stop.load(Relaxed) && units.iter().all(|u| !u.connected()) {
            return;
        }
        let pace = sh.cfg.pace.as_micros() as u64;
        if pace > 0 {
            std::thread::sleep(Duration::from_micros(rng.below(pace + 1)));
        }
    }
}
