//! The plain tunnel (`smux_off`): the payloads of the client's data frames are
//! the byte stream to the user's `dst`, and bytes from `dst` go back as binary frames.
//!
//! Two directions run in one task and stop together: client-to-dst decodes frames in place
//! (unmasking into the read buffer and writing the payload slice straight to `dst`),
//! dst-to-client reads into a buffer with room for the frame header in front. Each direction
//! has one buffer that it reuses; it grows while reads fill it and is bounded, and while a
//! write waits no more is read, so a slow side slows the other instead of growing memory.
//! The idle timeout counts bytes in either direction. Dialing `dst` is [`dial`], shared with
//! mux mode. This module does not parse HTTP or choose the mode.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::os::fd::RawFd;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::control::policy::Direction;
use crate::control::registry::{Closing, Ticket};
use crate::net::dial::{reset_on_close, split_dst};
use crate::net::transport::{read_appending, Readiness};
use crate::proto::ws::{self, close_code, OpCode};
use crate::runtime::task::Budget;
use crate::tunnel::client_side::{
    ClientReader, ClientWriter, Incoming, ReadEnd, HEADER_ROOM, INITIAL_BUFFER, READ_SIZES,
};

/// How long to wait for the client's close frame after ours, or for a frame being
/// written to finish before ours.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// After the client has gone: how long dst may be silent before its connection is closed
/// anyway (see [`linger`]).
const LINGER: Duration = Duration::from_secs(5);
/// After the client has gone: how long dst may go on sending (dropped) in all.
const LINGER_MAX: Duration = Duration::from_secs(60);
/// How often the linger looks at dst's last activity.
const LINGER_TICK: Duration = Duration::from_secs(1);

/// How a tunnel ended, for logs and tests; the side that ended it is in the name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// The client sent a close frame.
    ClientClosed,
    /// The client's connection ended cleanly without a close frame.
    ClientGone,
    /// The client's connection broke (see [`ReadEnd::Aborted`]): `dst` was reset.
    ClientAborted,
    /// The client broke the protocol; we sent this close code.
    ClientProtocol(ws::ProtocolError),
    /// `dst` closed its side; we sent a close frame.
    BackendClosed,
    /// Reading from or writing to `dst` failed.
    BackendError,
    /// No bytes in either direction for the idle timeout.
    Idle,
    /// The controller kicked the user.
    Kicked,
}

/// Runs a plain tunnel between a client (its frame reader and writer) and a connected
/// `dst`, until either side ends it, it idles out (the worker's sweeper decides, from the
/// ticket's activity), or the user is kicked. Bytes are counted on `ticket`.
pub(crate) async fn run<R, W>(
    client: ClientReader<R>,
    writer: ClientWriter<W>,
    dst: TcpStream,
    ticket: Ticket,
) -> TunnelEnd
where
    R: AsyncReadRent + Readiness,
    W: AsyncWriteRent,
{
    let (writer, ticket) = (&writer, &ticket);
    // The descriptor is valid while either half lives: both end with the block below.
    let (dst_fd, dst_read, dst_write) = split_dst(dst);
    // The worker's sweeper watches this for `-timeout`: no timer per tunnel.
    let activity = ticket.activity();
    activity.set(Instant::now());
    let wind = Wind::default();
    let end = {
        // The reader moves into its direction: kept here too, it would take room twice.
        let mut up = pin!(client_to_dst(
            client, dst_write, writer, activity, ticket, &wind
        ));
        let mut down = pin!(dst_to_client(
            dst_read, dst_fd, writer, activity, ticket, &wind
        ));
        let mut closing = pin!(ticket.closing());
        let end = poll_fn(|cx| {
            if let Poll::Ready(end) = up.as_mut().poll(cx) {
                return Poll::Ready(end);
            }
            if let Poll::Ready(end) = down.as_mut().poll(cx) {
                return Poll::Ready(end);
            }
            match closing.as_mut().poll(cx) {
                Poll::Ready(Closing::Idle) => Poll::Ready(TunnelEnd::Idle),
                Poll::Ready(Closing::Kicked) => Poll::Ready(TunnelEnd::Kicked),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match end {
            TunnelEnd::BackendClosed => {
                // Our close frame is out: give the client a moment to answer it, then go.
                let _ = Box::pin(monoio::time::timeout(CLOSE_WAIT, up)).await;
            }
            TunnelEnd::ClientClosed | TunnelEnd::ClientGone | TunnelEnd::ClientProtocol(_) => {
                // Our write side to dst is shut after the client's last byte. Closing the
                // socket while dst still sends would reset it and could throw away what dst
                // has not yet read of ours: read and drop until dst closes (bounded).
                // The client is done: end its connection now, then linger on dst.
                wind.discard.set(true);
                Box::pin(writer.shutdown()).await;
                Box::pin(linger(down, activity)).await;
            }
            TunnelEnd::Idle | TunnelEnd::Kicked => {
                // A frame half-written to the client must be finished before a close frame
                // can follow it; wait for that (bounded: the client may not be reading).
                wind.stop.set(true);
                if writer.busy() {
                    let _ = Box::pin(monoio::time::timeout(CLOSE_WAIT, down)).await;
                }
                let (code, reason) = match end {
                    TunnelEnd::Idle => (close_code::GOING_AWAY, "idle"),
                    _ => (close_code::POLICY, ""),
                };
                Box::pin(writer.send_close(code, reason)).await.ok();
                // Then the client's answer, its data dropped (bounded): closing with its
                // bytes unread would reset the connection, and a client still sending
                // could lose our close frame, and with it the reason, to the reset.
                wind.drop_client.set(true);
                let _ = Box::pin(monoio::time::timeout(CLOSE_WAIT, up)).await;
            }
            TunnelEnd::ClientAborted => reset_on_close(dst_fd),
            TunnelEnd::BackendError => {}
        }
        end
    };
    // Both directions are dropped by now: the writer is ours alone. The closing steps
    // are boxed: inline, the tunnel's future would keep room for them all its life.
    Box::pin(writer.shutdown()).await;
    end
}

/// Reads and drops what `dst` sends (the dst-to-client direction, told to discard) until
/// it closes, while it keeps sending: after [`LINGER`] of silence, or [`LINGER_MAX`] in
/// all, the caller closes it anyway. A dst that is still sending is taken to be still
/// reading what the client sent; closing on it then would reset the connection and throw
/// away what it has not yet read (a busy or slow backend needs more than a fixed 5 s).
async fn linger<F: Future<Output = TunnelEnd>>(down: Pin<&mut F>, activity: &Cell<Instant>) {
    let started = Instant::now();
    let mut down = down;
    loop {
        match monoio::time::timeout(LINGER_TICK, down.as_mut()).await {
            Ok(_) => return,
            Err(_) if activity.get().elapsed() >= LINGER => return,
            Err(_) if started.elapsed() >= LINGER_MAX => return,
            Err(_) => {}
        }
    }
}

/// How the dst-to-client direction behaves once the tunnel is ending.
#[derive(Default)]
struct Wind {
    /// Stop before reading (or sending) anything more.
    stop: Cell<bool>,
    /// Keep reading dst, but drop what comes: the client has gone.
    discard: Cell<bool>,
    /// Our close frame is out: read the client only for its answer, dropping its data.
    drop_client: Cell<bool>,
}

/// Client frames to `dst`: each payload slice is written from the read buffer as it comes.
///
/// A plain function returning an `async move` block, not an `async fn`: an `async fn`
/// keeps a `mut` argument twice in its future (the argument, and the binding it is moved
/// into), and this future lives as long as the tunnel. Rare steps (close frames, pongs)
/// are boxed for the same reason.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold the reader twice"
)]
fn client_to_dst<'a, R, D, W>(
    mut client: ClientReader<R>,
    mut dst: D,
    writer: &'a ClientWriter<W>,
    activity: &'a Cell<Instant>,
    ticket: &'a Ticket,
    wind: &'a Wind,
) -> impl Future<Output = TunnelEnd> + 'a
where
    R: AsyncReadRent + Readiness + 'a,
    D: AsyncWriteRent + 'a,
    W: AsyncWriteRent,
{
    async move {
        let budget = Budget::default();
        loop {
            match client.next(activity).await {
                Ok(Incoming::Data(range)) => {
                    // The data frames that came in the same read go out in one write.
                    let range = client.coalesce(range);
                    if wind.drop_client.get() {
                        continue;
                    }
                    let len = range.len();
                    ticket.up(len);
                    let buf = std::mem::take(client.buf_mut());
                    let (result, slice) = dst.write_all(buf.slice(range)).await;
                    *client.buf_mut() = slice.into_inner();
                    if result.is_err() {
                        Box::pin(writer.send_close(close_code::INTERNAL_ERROR, ""))
                            .await
                            .ok();
                        return TunnelEnd::BackendError;
                    }
                    budget.spend(len).await;
                    // A limited user's hook (speed, quota); one branch for the others.
                    if let Some(policy) = ticket.policy() {
                        ticket.charge(&policy, Direction::Up, len).await;
                    }
                }
                Ok(Incoming::Ping) => {
                    let pong = client.control_payload().to_vec();
                    if Box::pin(writer.send_small(OpCode::Pong, &pong))
                        .await
                        .is_err()
                    {
                        return TunnelEnd::ClientGone;
                    }
                }
                Ok(Incoming::Close(code)) => {
                    // Everything before the close frame is written to dst already.
                    Box::pin(writer.send_close(code.unwrap_or(close_code::NORMAL), ""))
                        .await
                        .ok();
                    let _ = dst.shutdown().await;
                    return TunnelEnd::ClientClosed;
                }
                Err(ReadEnd::Protocol(e)) => {
                    Box::pin(writer.send_close(e.close_code(), "")).await.ok();
                    let _ = dst.shutdown().await;
                    return TunnelEnd::ClientProtocol(e);
                }
                Err(ReadEnd::Gone) => {
                    let _ = dst.shutdown().await;
                    return TunnelEnd::ClientGone;
                }
                // No FIN to dst: the caller resets it.
                Err(ReadEnd::Aborted) => return TunnelEnd::ClientAborted,
            }
        }
    }
}

/// Bytes from `dst` to binary frames: read behind the header room, frame in place, send.
async fn dst_to_client<D, W>(
    mut dst: D,
    dst_fd: RawFd,
    writer: &ClientWriter<W>,
    activity: &Cell<Instant>,
    ticket: &Ticket,
    wind: &Wind,
) -> TunnelEnd
where
    D: AsyncReadRent + Readiness,
    W: AsyncWriteRent,
{
    let budget = Budget::default();
    // Which of READ_SIZES the next read takes.
    let mut step = 0;
    // Set when the last read drained the socket: wait for data before taking a buffer.
    let mut drained = false;
    loop {
        if wind.stop.get() {
            return TunnelEnd::Idle;
        }
        if drained && dst.wait_readable().await.is_err() {
            Box::pin(writer.send_close(close_code::INTERNAL_ERROR, ""))
                .await
                .ok();
            return TunnelEnd::BackendError;
        }
        let size = READ_SIZES[step];
        let mut buf: Vec<u8> = Vec::with_capacity(HEADER_ROOM + size);
        buf.resize(HEADER_ROOM, 0);
        // While dst keeps filling the buffer, take what it has without a trip through
        // the runtime; the ordinary read waits (or reports the end) otherwise.
        let (result, buf) = read_appending(&mut dst, dst_fd, buf, size, !drained).await;
        let n = match result {
            Ok(0) => {
                Box::pin(writer.send_close(close_code::NORMAL, ""))
                    .await
                    .ok();
                return TunnelEnd::BackendClosed;
            }
            Ok(n) => n,
            Err(_) => {
                Box::pin(writer.send_close(close_code::INTERNAL_ERROR, ""))
                    .await
                    .ok();
                return TunnelEnd::BackendError;
            }
        };
        drained = n < size;
        // (While discarding too: dst is still alive, the linger after the client's end goes on.)
        activity.set(Instant::now());
        if wind.discard.get() {
            continue;
        }
        ticket.down(n);
        let (result, _) = writer.send_binary(buf).await;
        if result.is_err() {
            return TunnelEnd::ClientGone;
        }
        budget.spend(n).await;
        if let Some(policy) = ticket.policy() {
            ticket.charge(&policy, Direction::Down, n).await;
        }
        if n == size {
            step = (step + 1).min(READ_SIZES.len() - 1);
        } else if n < INITIAL_BUFFER / 2 {
            step = 0;
        }
    }
}

/// Splits a client stream into a frame reader (starting with the bytes that came after the
/// request head) and the shared frame writer.
pub(crate) fn split_client<S>(
    stream: S,
    early: Vec<u8>,
) -> (ClientReader<S::OwnedRead>, ClientWriter<S::OwnedWrite>)
where
    S: Splitable,
    S::OwnedRead: AsyncReadRent + Readiness,
    S::OwnedWrite: AsyncWriteRent,
{
    let (read, write) = stream.into_split();
    (ClientReader::new(read, early), ClientWriter::new(write))
}
