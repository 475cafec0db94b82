//! How the upload side of `loadgen bulk` writes: the old fixed shape, or mtt-client's.
//!
//! mtt-client (Go 1.19) copies from a local TCP socket with a 16 KiB buffer and sends what
//! each read returned as one masked WebSocket binary message (gorilla writes header and
//! payload in one `Write`), or, with `-mux`, as one smux frame per read, each frame one
//! message. Go's crypto/tls cuts each `Write` into records: at most 16 KiB of plaintext,
//! and, until 128 KiB went out on the connection, "dynamic record sizing"
//! (`maxPayloadSizeForWrite` in Go 1.19's `crypto/tls/conn.go`): the n-th application data
//! record (from 0) carries at most `1186 * (n + 1)` bytes under TLS 1.3 with AES-GCM
//! (`tcpMSSEstimate` 1208 minus the 5-byte header, the 16-byte tag and the content type
//! byte). Each record is its own `Write` on the socket (TCP_NODELAY, as Go sets it), so a
//! full 16 KiB message (16,392 bytes with its header) leaves as a 16,384-byte record and
//! an 8-byte one.
//!
//! [`GoRecords`] reproduces that cutting over rustls (one `writer().write()` of at most
//! 16 KiB makes exactly one record; each is sent to the socket before the next is made);
//! [`local_source`] is the local socket the client reads from, fed by a thread as fast as
//! the socket takes it, so read sizes are whatever the kernel hands out.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;

use crate::client::Transport;

/// The upload shape of `loadgen bulk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Fixed 16 KiB frames, masked once and written in 256 KiB blocks (rustls cuts 16 KiB
    /// records): the shape of every figure before issue 14.
    Bulk16k,
    /// mtt-client's shape: reads from a local socket, one message per read, Go's records.
    Real,
}

impl Shape {
    pub fn parse(s: &str) -> Result<Shape, String> {
        match s {
            "bulk16k" => Ok(Shape::Bulk16k),
            "real" => Ok(Shape::Real),
            _ => Err(format!("unknown shape {s:?} (bulk16k, real)")),
        }
    }
}

/// Go's `maxPlaintext`.
pub const MAX_PLAINTEXT: usize = 16384;
/// Go's `recordSizeBoostThreshold`: bytes on the wire after which records are full size.
const BOOST_THRESHOLD: u64 = 128 * 1024;
/// Go's payload estimate for TLS 1.3 AES-GCM: 1208 - 5 (header) - 16 (tag) - 1 (type).
const MSS_PAYLOAD: usize = 1208 - 5 - 16 - 1;
/// Wire bytes a TLS 1.3 AES-GCM record adds to its payload.
const RECORD_OVERHEAD: u64 = 5 + 16 + 1;

/// The state of Go's record sizing for one connection.
#[derive(Debug)]
pub struct GoRecords {
    /// Go's `bytesSent`: every byte written to the socket so far, handshake included.
    bytes_sent: u64,
    /// Go's `packetsSent`: application data records sized while still below the threshold.
    packets_sent: u64,
}

impl GoRecords {
    /// After the handshake and the upgrade request: Go has sent about 600 bytes by then
    /// (ClientHello, ChangeCipherSpec, Finished, the request) and one application data
    /// record (the request). A few hundred bytes either way move no boundary by more than
    /// one record in the first 128 KiB.
    pub fn after_upgrade() -> GoRecords {
        GoRecords {
            bytes_sent: 600,
            packets_sent: 1,
        }
    }

    /// The most plaintext the next record may carry (and counts it, as Go does).
    pub fn next_max(&mut self) -> usize {
        if self.bytes_sent >= BOOST_THRESHOLD {
            return MAX_PLAINTEXT;
        }
        let pkt = self.packets_sent;
        self.packets_sent += 1;
        if pkt > 1000 {
            return MAX_PLAINTEXT;
        }
        (MSS_PAYLOAD * (pkt as usize + 1)).min(MAX_PLAINTEXT)
    }

    /// Cuts `data` (one Go `Write`) into records as Go does and sends each as it is made.
    /// Plain TCP: one write, as Go's net.Conn does.
    pub fn write(&mut self, t: &mut Transport, data: &[u8]) -> io::Result<()> {
        let s = match t {
            Transport::Tcp(s) => return s.write_all(data),
            Transport::Tls(s) => s,
        };
        let mut rest = data;
        while !rest.is_empty() {
            let m = rest.len().min(self.next_max());
            let n = s.conn.writer().write(&rest[..m])?;
            debug_assert_eq!(n, m, "rustls takes a record's worth at once");
            rest = &rest[n..];
            self.bytes_sent += n as u64 + RECORD_OVERHEAD;
            while s.conn.wants_write() {
                s.conn.write_tls(&mut s.sock)?;
            }
        }
        Ok(())
    }
}

/// Sizes of the messages (reads) an upload sent.
#[derive(Debug, Default)]
pub struct Sizes {
    pub count: u64,
    pub bytes: u64,
    /// Reads that filled the 16 KiB buffer.
    pub full: u64,
}

impl Sizes {
    pub fn add(&mut self, n: usize) {
        self.count += 1;
        self.bytes += n as u64;
        if n == MAX_PLAINTEXT {
            self.full += 1;
        }
    }
    pub fn merge(&mut self, o: &Sizes) {
        self.count += o.count;
        self.bytes += o.bytes;
        self.full += o.full;
    }
    pub fn mean(&self) -> f64 {
        self.bytes as f64 / self.count.max(1) as f64
    }
}

/// A loopback TCP connection whose far end a thread fills with `bytes` bytes (in 128 KiB
/// writes, as iperf3 sends) and then closes: what mtt-client reads from. Returns the
/// near end and the feeding thread.
pub fn local_source(bytes: u64) -> io::Result<(TcpStream, JoinHandle<io::Result<()>>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let feed = TcpStream::connect(listener.local_addr()?)?;
    let (near, _) = listener.accept()?;
    near.set_nodelay(true)?;
    let feeder = std::thread::spawn(move || {
        let mut feed = feed;
        let block = vec![0x5au8; 128 * 1024];
        let mut left = bytes;
        while left > 0 {
            let k = (left as usize).min(block.len());
            feed.write_all(&block[..k])?;
            left -= k as u64;
        }
        feed.shutdown(std::net::Shutdown::Write)
    });
    Ok((near, feeder))
}

/// One read of at most 16 KiB from the local source, retried on EINTR.
pub fn read_chunk(src: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match src.read(&mut buf[..MAX_PLAINTEXT]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_grow_by_one_mss_then_jump_to_full_size_after_128k() {
        let mut g = GoRecords {
            bytes_sent: 0,
            packets_sent: 0,
        };
        let sizes: Vec<usize> = (0..15).map(|_| g.next_max()).collect();
        assert_eq!(&sizes[..3], &[1186, 2372, 3558]);
        assert_eq!(sizes[13], MAX_PLAINTEXT, "1186 * 14 > 16384");
        let mut g = GoRecords {
            bytes_sent: BOOST_THRESHOLD,
            packets_sent: 0,
        };
        assert_eq!(g.next_max(), MAX_PLAINTEXT);
    }
}
