//! `loadgen bulk`: throughput up (client to backend) or down with 1 or more streams, and
//! the server's CPU seconds per GiB relayed.
//!
//! Plain modes open one connection per stream, each in its own thread. Mux mode opens one
//! WebSocket session and runs every stream inside it as smux v1 streams from one thread.
//! Upload frames are built and masked once and then written again and again, so the
//! client spends its CPU on TLS and syscalls, not on masking; the relay unmasks each byte
//! as it must. Each stream announces its byte count to the sink, which acknowledges an
//! upload once every byte arrived, so the clock stops only when the relay delivered all.
//!
//! With `--shape real` uploads take mtt-client's shape instead (see [`crate::shape`]): each
//! stream reads from a local socket fed by a thread, sends one masked message (or smux
//! frame) per read of at most 16 KiB, cut into records as Go's crypto/tls cuts them.
//! Downloads differ only in how the request is written: the client only reads.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use crate::backend::{self, ACK};
use crate::client::{self, Chunk, Proto, Reader, SmuxDecoder, SmuxEvent, Transport};
use crate::procfs::CpuMeter;
use crate::record::Recorder;
use crate::shape::{self, GoRecords, Shape, Sizes};

pub struct Bulk {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub mux: bool,
    pub path: String,
    pub streams: usize,
    pub upload: bool,
    /// Bytes per stream.
    pub bytes: u64,
    /// Payload bytes per WebSocket (and smux) frame.
    pub frame: usize,
    pub shape: Shape,
    /// Downloads: the client reads at most this many Mbit/s (per connection), as a
    /// client on a slower link would; 0 reads as fast as it can.
    pub pace_mbps: u64,
    pub server_pid: Option<u32>,
}

/// Holds a reader to a rate: after each read, sleeps while it is more than a millisecond
/// ahead of the rate.
struct Pacer {
    start: Instant,
    bytes: u64,
    bytes_per_sec: f64,
}

impl Pacer {
    fn new(mbps: u64) -> Option<Self> {
        (mbps > 0).then(|| Pacer {
            start: Instant::now(),
            bytes: 0,
            bytes_per_sec: mbps as f64 * 1e6 / 8.0,
        })
    }

    fn took(&mut self, n: usize) {
        self.bytes += n as u64;
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec);
        let ahead = due.saturating_sub(self.start.elapsed());
        if ahead > std::time::Duration::from_millis(1) {
            std::thread::sleep(ahead);
        }
    }
}

/// One stream's result.
struct Done {
    bytes: u64,
    /// The upload's message sizes (`--shape real`).
    sizes: Sizes,
}

/// The bytes a writer sends again and again: about 256 KiB of whole frames, and the
/// payload it carries. For raw protocols, raw bytes.
fn upload_block(proto: Proto, mux_sids: &[u32], frame: usize) -> (Vec<u8>, u64) {
    let payload = vec![0x5au8; frame];
    if !proto.websocket() {
        return (vec![0x5a; 256 * 1024], 256 * 1024);
    }
    let mut block = Vec::new();
    let mut carried = 0;
    let mut i = 0;
    while block.len() < 256 * 1024 {
        if mux_sids.is_empty() {
            client::ws_frame(&payload, &mut block);
        } else {
            let sid = mux_sids[i % mux_sids.len()];
            client::smux_in_ws(client::PSH, sid, &payload, &mut block);
        }
        carried += frame as u64;
        i += 1;
    }
    (block, carried)
}

fn open(b: &Bulk, protocol: &str) -> io::Result<(Transport, Vec<u8>)> {
    let tls = client::tls_config(true);
    let mut t = client::connect(b.addr, b.proto, &tls, None)?;
    let early = if b.proto.websocket() {
        client::upgrade(&mut t, &b.path, protocol)?
    } else {
        Vec::new()
    };
    Ok((t, early))
}

/// One plain stream: its own connection, request, transfer, acknowledgement.
fn plain_stream(b: &Bulk, go: &Barrier) -> io::Result<Done> {
    let (mut t, early) = match open(b, "smux_off") {
        Ok(opened) => opened,
        Err(e) => {
            go.wait();
            return Err(e);
        }
    };
    let mut reader = Reader::new(b.proto.websocket(), early);
    let mut records = GoRecords::after_upgrade();
    let real = b.shape == Shape::Real;
    let mut send = |t: &mut Transport, bytes: &[u8]| -> io::Result<()> {
        let mut frame = Vec::new();
        let bytes = if b.proto.websocket() {
            client::ws_frame(bytes, &mut frame);
            &frame[..]
        } else {
            bytes
        };
        if real {
            records.write(t, bytes)
        } else {
            t.write_all(bytes)
        }
    };
    let mut sizes = Sizes::default();
    if b.upload && real {
        let (mut src, feeder) = shape::local_source(b.bytes)?;
        go.wait();
        send(&mut t, &backend::request(b'U', b.bytes))?;
        let mut buf = vec![0u8; shape::MAX_PLAINTEXT];
        loop {
            let n = shape::read_chunk(&mut src, &mut buf)?;
            if n == 0 {
                break;
            }
            sizes.add(n);
            send(&mut t, &buf[..n])?;
        }
        feeder
            .join()
            .map_err(|_| io::Error::other("feeder panicked"))??;
        if sizes.bytes != b.bytes {
            return Err(io::Error::other(format!(
                "local source gave {} of {} bytes",
                sizes.bytes, b.bytes
            )));
        }
        await_ack(&mut reader, &mut t)?;
        t.close();
        Ok(Done {
            bytes: b.bytes,
            sizes,
        })
    } else if b.upload {
        let (block, per_block) = upload_block(b.proto, &[], b.frame);
        let blocks = b.bytes.div_ceil(per_block);
        let total = blocks * per_block;
        go.wait();
        send(&mut t, &backend::request(b'U', total))?;
        for _ in 0..blocks {
            t.write_all(&block)?;
        }
        t.flush()?;
        await_ack(&mut reader, &mut t)?;
        t.close();
        Ok(Done {
            bytes: total,
            sizes,
        })
    } else {
        go.wait();
        send(&mut t, &backend::request(b'D', b.bytes))?;
        t.flush()?;
        let mut got = 0u64;
        let mut pacer = Pacer::new(b.pace_mbps);
        while got < b.bytes {
            match reader.next(&mut t)? {
                Chunk::Data(r) => {
                    got += r.len() as u64;
                    if let Some(p) = pacer.as_mut() {
                        p.took(r.len());
                    }
                }
                other => {
                    return Err(io::Error::other(format!(
                        "download ended at {got} of {} bytes: {other:?}",
                        b.bytes
                    )))
                }
            }
        }
        t.close();
        Ok(Done { bytes: got, sizes })
    }
}

/// Reads until the sink's acknowledgement of an upload.
fn await_ack(reader: &mut Reader, t: &mut Transport) -> io::Result<()> {
    loop {
        match reader.next(t)? {
            Chunk::Data(r) if reader.buf[r.start] == ACK => return Ok(()),
            Chunk::Data(_) => {}
            other => return Err(io::Error::other(format!("no acknowledgement: {other:?}"))),
        }
    }
}

/// mtt-client's mux upload: each stream reads its own local source; whichever has data
/// sends one smux frame per read, each frame one message (one Go `Write`).
fn mux_real_upload(
    t: &mut Transport,
    records: &mut GoRecords,
    sids: &[u32],
    sources: Vec<std::net::TcpStream>,
) -> io::Result<Sizes> {
    use std::os::fd::AsRawFd;
    let mut sources: Vec<Option<std::net::TcpStream>> = sources.into_iter().map(Some).collect();
    let mut buf = vec![0u8; shape::MAX_PLAINTEXT];
    let mut sizes = Sizes::default();
    let mut msg = Vec::with_capacity(shape::MAX_PLAINTEXT + 32);
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut which = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            if let Some(s) = s {
                fds.push(libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        if fds.is_empty() {
            return Ok(sizes);
        }
        // SAFETY: `fds` is a valid array of pollfd of the length given.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 60_000) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::other("local sources silent for 60 s"));
        }
        for (fd, &i) in fds.iter().zip(&which) {
            if fd.revents == 0 {
                continue;
            }
            let src = sources[i].as_mut().expect("polled sources are open");
            let n = shape::read_chunk(src, &mut buf)?;
            if n == 0 {
                sources[i] = None;
                continue;
            }
            sizes.add(n);
            msg.clear();
            client::smux_in_ws(client::PSH, sids[i], &buf[..n], &mut msg);
            records.write(t, &msg)?;
        }
    }
}

/// Every stream in one smux session.
fn mux_session(b: &Bulk, go: &Barrier) -> io::Result<Done> {
    let (mut t, early) = match open(b, "smux_on") {
        Ok(opened) => opened,
        Err(e) => {
            go.wait();
            return Err(e);
        }
    };
    let mut reader = Reader::new(true, early);
    let sids: Vec<u32> = (0..b.streams as u32).map(|i| 1 + 2 * i).collect();
    let real = b.shape == Shape::Real;
    let (block, per_block) = upload_block(b.proto, &sids, b.frame);
    let blocks = if b.upload && !real {
        (b.bytes * b.streams as u64).div_ceil(per_block)
    } else {
        0
    };
    // Blocks interleave the streams evenly; each stream's share of the total.
    let per_stream = if b.upload && !real {
        blocks * per_block / b.streams as u64
    } else {
        b.bytes
    };
    let mut opening = Vec::new();
    let cmd = if b.upload { b'U' } else { b'D' };
    for &sid in &sids {
        client::smux_in_ws(client::SYN, sid, &[], &mut opening);
        client::smux_in_ws(
            client::PSH,
            sid,
            &backend::request(cmd, per_stream),
            &mut opening,
        );
    }
    let mut sizes = Sizes::default();
    if real {
        let mut sources = Vec::new();
        let mut feeders = Vec::new();
        if b.upload {
            for _ in &sids {
                let (src, feeder) = shape::local_source(per_stream)?;
                sources.push(src);
                feeders.push(feeder);
            }
        }
        let mut records = GoRecords::after_upgrade();
        go.wait();
        // One message per smux frame, each its own Go `Write`.
        for &sid in &sids {
            let mut msg = Vec::new();
            client::smux_in_ws(client::SYN, sid, &[], &mut msg);
            records.write(&mut t, &msg)?;
            msg.clear();
            client::smux_in_ws(
                client::PSH,
                sid,
                &backend::request(cmd, per_stream),
                &mut msg,
            );
            records.write(&mut t, &msg)?;
        }
        if b.upload {
            sizes = mux_real_upload(&mut t, &mut records, &sids, sources)?;
            for f in feeders {
                f.join()
                    .map_err(|_| io::Error::other("feeder panicked"))??;
            }
        }
    } else {
        go.wait();
        t.write_all(&opening)?;
        for _ in 0..blocks {
            t.write_all(&block)?;
        }
        t.flush()?;
    }
    let mut decoder = SmuxDecoder::default();
    let mut got = vec![0u64; sids.len()];
    let mut acked = 0;
    let mut failure = None;
    let finished = |got: &[u64], acked: usize| {
        if b.upload {
            acked == got.len()
        } else {
            got.iter().all(|&g| g >= per_stream)
        }
    };
    let mut pacer = Pacer::new(if b.upload { 0 } else { b.pace_mbps });
    while !finished(&got, acked) {
        let chunk = reader.next(&mut t)?;
        if let (Some(p), Chunk::Data(r)) = (pacer.as_mut(), &chunk) {
            p.took(r.len());
        }
        match chunk {
            Chunk::Data(r) => decoder.feed(&reader.buf[r], |event| match event {
                SmuxEvent::Data(sid, data) => {
                    let i = (sid as usize).saturating_sub(1) / 2;
                    if let Some(g) = got.get_mut(i) {
                        if b.upload && *g == 0 && data.first() == Some(&ACK) {
                            acked += 1;
                        }
                        *g += data.len() as u64;
                    }
                }
                SmuxEvent::Fin(sid) => failure = Some(format!("server closed stream {sid}")),
                SmuxEvent::Syn(_) | SmuxEvent::Nop => {}
            })?,
            other => return Err(io::Error::other(format!("session ended: {other:?}"))),
        }
        if let Some(why) = failure.take() {
            return Err(io::Error::other(why));
        }
    }
    let mut closing = Vec::new();
    for &sid in &sids {
        client::smux_in_ws(client::FIN, sid, &[], &mut closing);
    }
    let _ = t.write_all(&closing);
    t.close();
    Ok(Done {
        bytes: per_stream * sids.len() as u64,
        sizes,
    })
}

pub fn run(b: Bulk, rec: &Recorder) -> Result<(), String> {
    if b.bytes == 0 {
        return Err("bulk: --bytes must be more than 0".into());
    }
    let b = Arc::new(b);
    let threads = if b.mux { 1 } else { b.streams };
    let go = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let b = Arc::clone(&b);
        let go = Arc::clone(&go);
        handles.push(std::thread::spawn(move || {
            if b.mux {
                mux_session(&b, &go)
            } else {
                plain_stream(&b, &go)
            }
        }));
    }
    // Every thread reaches the barrier, set up or failed: failures are reported on join.
    go.wait();
    let cpu = CpuMeter::start(b.server_pid);
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut sizes = Sizes::default();
    for h in handles {
        match h.join() {
            Ok(Ok(done)) => {
                bytes += done.bytes;
                sizes.merge(&done.sizes);
            }
            Ok(Err(e)) => return Err(format!("stream failed: {e}")),
            Err(_) => return Err("stream thread panicked".into()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let dir = if b.upload { "up" } else { "down" };
    // Real-shape rows are rows of their own, so each compares with its own shape.
    let name = format!(
        "bulk {dir} {} stream{}{}",
        b.streams,
        if b.streams == 1 { "" } else { "s" },
        if b.shape == Shape::Real {
            ", real shape"
        } else {
            ""
        }
    );
    rec.record(
        &format!("{name}: throughput"),
        bytes as f64 * 8.0 / secs / 1e9,
        "Gbit/s",
    );
    if sizes.count > 0 {
        rec.record(&format!("{name}: mean read"), sizes.mean(), "B");
        rec.record(
            &format!("{name}: full 16 KiB reads"),
            100.0 * sizes.full as f64 / sizes.count as f64,
            "%",
        );
    }
    if let Some(used) = cpu.used() {
        let gib = bytes as f64 / (1u64 << 30) as f64;
        rec.record(&format!("{name}: server CPU"), used / gib, "s/GiB");
    }
    Ok(())
}
