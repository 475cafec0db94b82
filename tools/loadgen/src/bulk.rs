//! `loadgen bulk`: throughput up (client to backend) or down with 1 or more streams, and
//! the server's CPU seconds per GiB relayed.
//!
//! Plain modes open one connection per stream, each in its own thread. Mux mode opens one
//! WebSocket session and runs every stream inside it as smux v1 streams from one thread.
//! Upload frames are built and masked once and then written again and again, so the
//! client spends its CPU on TLS and syscalls, not on masking; the relay unmasks each byte
//! as it must. Each stream announces its byte count to the sink, which acknowledges an
//! upload once every byte arrived, so the clock stops only when the relay delivered all.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use crate::backend::{self, ACK};
use crate::client::{self, Chunk, Proto, Reader, SmuxDecoder, SmuxEvent, Transport};
use crate::procfs::CpuMeter;
use crate::record::Recorder;

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
    pub server_pid: Option<u32>,
}

/// One stream's result.
struct Done {
    bytes: u64,
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
    let send = |t: &mut Transport, bytes: &[u8]| -> io::Result<()> {
        if b.proto.websocket() {
            let mut frame = Vec::new();
            client::ws_frame(bytes, &mut frame);
            t.write_all(&frame)
        } else {
            t.write_all(bytes)
        }
    };
    if b.upload {
        let (block, per_block) = upload_block(b.proto, &[], b.frame);
        let blocks = b.bytes.div_ceil(per_block);
        let total = blocks * per_block;
        go.wait();
        send(&mut t, &backend::request(b'U', total))?;
        for _ in 0..blocks {
            t.write_all(&block)?;
        }
        t.flush()?;
        loop {
            match reader.next(&mut t)? {
                Chunk::Data(r) if reader.buf[r.start] == ACK => break,
                Chunk::Data(_) => {}
                other => return Err(io::Error::other(format!("no acknowledgement: {other:?}"))),
            }
        }
        t.close();
        Ok(Done { bytes: total })
    } else {
        go.wait();
        send(&mut t, &backend::request(b'D', b.bytes))?;
        t.flush()?;
        let mut got = 0u64;
        while got < b.bytes {
            match reader.next(&mut t)? {
                Chunk::Data(r) => got += r.len() as u64,
                other => {
                    return Err(io::Error::other(format!(
                        "download ended at {got} of {} bytes: {other:?}",
                        b.bytes
                    )))
                }
            }
        }
        t.close();
        Ok(Done { bytes: got })
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
    let (block, per_block) = upload_block(b.proto, &sids, b.frame);
    let blocks = if b.upload {
        (b.bytes * b.streams as u64).div_ceil(per_block)
    } else {
        0
    };
    // Blocks interleave the streams evenly; each stream's share of the total.
    let per_stream = if b.upload {
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
    go.wait();
    t.write_all(&opening)?;
    for _ in 0..blocks {
        t.write_all(&block)?;
    }
    t.flush()?;
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
    while !finished(&got, acked) {
        match reader.next(&mut t)? {
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
    for h in handles {
        match h.join() {
            Ok(Ok(done)) => bytes += done.bytes,
            Ok(Err(e)) => return Err(format!("stream failed: {e}")),
            Err(_) => return Err("stream thread panicked".into()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let dir = if b.upload { "up" } else { "down" };
    let name = format!(
        "bulk {dir} {} stream{}",
        b.streams,
        if b.streams == 1 { "" } else { "s" }
    );
    rec.record(
        &format!("{name}: throughput"),
        bytes as f64 * 8.0 / secs / 1e9,
        "Gbit/s",
    );
    if let Some(used) = cpu.used() {
        let gib = bytes as f64 / (1u64 << 30) as f64;
        rec.record(&format!("{name}: server CPU"), used / gib, "s/GiB");
    }
    Ok(())
}
