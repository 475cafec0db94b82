//! The multiplexed tunnel (`smux_on`, the xtaci/smux v1 wire format): an xtaci/smux v1 session carried in the
//! WebSocket byte stream, each stream relayed to its own connection to the user's `dst`.
//!
//! The session task reads the client: WebSocket payloads go through the smux decoder, SYN
//! spawns a stream task (at most [`MAX_STREAMS`] open; a further SYN gets a FIN and the
//! session goes on), PSH payloads go to their stream's `dst` (those of one stream that
//! came in one read together, handed to the kernel at once when the stream's writer is
//! idle, else queued for it), FIN closes the stream's `dst` once its queue is written. A
//! stream task dials `dst`, writes its queue there, and
//! sends what `dst` sends back as PSH frames through the connection's one
//! [`ClientWriter`]. Memory is bounded: when a stream's queue holds [`STREAM_QUEUE`]
//! bytes the session stops reading the client until it drains, so a slow `dst` pushes back
//! on the client (smux v1 has no per-stream window; the Go client's session budget stalls
//! the same way). Keepalive as mtt's Go peer expects: a NOP every 30 s, and the session
//! ends after 70 s in which nothing arrived. Each stream closes after `-timeout` idle.
//!
//! What the end-to-end tests against the Go peer (`tests/it/mux.rs`) taught:
//! - A frame being written to the client is never cut short (a stream that ends, or the
//!   session, waits for it): a cancelled write poisons the connection's writer, and every
//!   stream of the session would be dead.
//! - After the client's FIN, `dst` gets the queue, then our FIN, and we keep reading
//!   (dropping) what it sends until it closes or [`LINGER`] passes: closing a socket with
//!   unread bytes resets it and throws away what was still queued for `dst`. A FINed
//!   stream finishes this even if the session ends meanwhile.
//! - A FIN for a stream the client has not written on yet waits (see [`FIN_HOLD`]), or
//!   xtaci/smux may not know the stream yet and drop it, leaving the stream hanging.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::ops::Range;
use std::os::fd::RawFd;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Instant;

use crate::control::policy::Direction;
use crate::control::registry::Ticket;
use crate::control::routes::Route;
use crate::net::dial;
use crate::net::transport::{self, Readiness};
use crate::proto::smux::{self, Cmd, SmuxError};
use crate::proto::ws::{self, close_code, OpCode};
use crate::runtime::task::Budget;
use crate::tunnel::client_side::{
    ClientReader, ClientWriter, Incoming, ReadEnd, HEADER_ROOM, RECORD, SHORT_FRAME_HEADER,
};

/// Most streams open at once in one session (upstream's limit).
pub(crate) const MAX_STREAMS: usize = 16;
/// A NOP goes to the client this often.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A session from which nothing arrived for this long is closed.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(70);
/// Largest PSH payload we send (at most 65535). About 32 KiB cost about 15 % less server
/// CPU per GiB than upstream's 16 KiB and as little as 65535 (BENCHMARKS.md, "PSH frame
/// size"), while a frame holds the connection's one writer half as long as 65535 would
/// (other streams wait less) and a read buffer is half the size. Exactly this much makes
/// the frame, with its smux and WebSocket headers, two full TLS records: 32 KiB made a
/// third record of 12 bytes.
pub(crate) const FRAME_PAYLOAD: usize = 2 * RECORD - SHORT_FRAME_HEADER - smux::HEADER_LEN;
/// Client bytes queued for one stream before the session stops reading the client.
pub(crate) const STREAM_QUEUE: usize = 64 * 1024;
/// How long an ending session waits for frames already being written (and then for its
/// close frame and shutdown) before it drops the connection.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// After the client's FIN and our shutdown of `dst`'s sending side, how long we keep
/// reading (and dropping) what `dst` still sends before closing the socket. Closing a
/// socket with unread bytes resets the connection, and a reset throws away the bytes
/// still in our send queue: the client's last bytes would never reach `dst`.
pub(crate) const LINGER: Duration = Duration::from_secs(5);
/// A FIN for a stream on which the client has sent nothing yet (refused, or its dial
/// failed) waits until the client sends something on it, or this long after its SYN.
/// xtaci/smux registers a stream only after its SYN is written, so a FIN that comes back
/// at once can find no stream and be lost: the client's stream would hang. A PSH from the
/// client proves the stream is registered (the client writes only once `OpenStream`
/// returns).
pub(crate) const FIN_HOLD: Duration = Duration::from_secs(1);

/// How a session ended, tagged with the side that ended it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The client sent a WebSocket close frame.
    ClientClosed,
    /// The client's connection ended cleanly (without a close frame).
    ClientGone,
    /// The client's connection broke (see [`ReadEnd::Aborted`]): every stream's `dst`
    /// is reset.
    ClientAborted,
    /// The client broke RFC 6455.
    ClientWebSocket(ws::ProtocolError),
    /// The client broke smux (bad version or command).
    ClientSmux(SmuxError),
    /// Nothing arrived for [`KEEPALIVE_TIMEOUT`].
    KeepaliveTimeout,
    /// The controller kicked the user.
    Kicked,
}

/// One stream, shared by the session task (which fills its queue) and its stream task.
struct Stream {
    sid: u32,
    /// Client bytes not yet written to `dst`.
    queue: RefCell<Vec<u8>>,
    /// The client sent FIN: write the queue, then close `dst`.
    fin: Cell<bool>,
    /// The stream is over: the session drops its data.
    closed: Cell<bool>,
    /// When a byte last moved either way, for `-timeout`.
    activity: Cell<Instant>,
    /// When its SYN arrived.
    opened: Instant,
    /// The client has sent a PSH or FIN for it: it knows the stream (see [`FIN_HOLD`]).
    heard: Cell<bool>,
    /// A PSH frame of this stream is being written to the client: it must not be cut
    /// short, or the client's framing (every stream's) breaks.
    sending: Cell<bool>,
    /// The relay is ending: `download` sends no further frame.
    ending: Cell<bool>,
    /// The stream task, to wake when the queue, `fin` or the session changes.
    task: RefCell<Option<Waker>>,
    /// `dst`'s descriptor while `upload` waits with nothing to write: the session task
    /// may then hand a PSH payload to the kernel itself (see [`transport::send_now`]), with no
    /// copy into the queue and no wake-up of the stream task. Set and cleared by
    /// [`IdleWriter`], so never set while a write to `dst` is in progress or after the
    /// socket may have been closed.
    idle_dst: Cell<Option<RawFd>>,
}

/// Marks a stream's `dst` as idle for as long as it lives (see [`Stream::idle_dst`]).
struct IdleWriter<'a>(&'a Stream);

impl<'a> IdleWriter<'a> {
    fn new(stream: &'a Stream, fd: RawFd) -> Self {
        stream.idle_dst.set(Some(fd));
        IdleWriter(stream)
    }
}

impl Drop for IdleWriter<'_> {
    fn drop(&mut self) {
        self.0.idle_dst.set(None);
    }
}

impl Stream {
    fn new(sid: u32) -> Stream {
        let now = Instant::now();
        Stream {
            sid,
            queue: RefCell::new(Vec::new()),
            fin: Cell::new(false),
            closed: Cell::new(false),
            activity: Cell::new(now),
            opened: now,
            heard: Cell::new(false),
            sending: Cell::new(false),
            ending: Cell::new(false),
            task: RefCell::new(None),
            idle_dst: Cell::new(None),
        }
    }

    /// Notes that the client sent something for this stream.
    fn hear(&self) {
        if !self.heard.replace(true) {
            self.wake_task();
        }
    }

    fn wake_task(&self) {
        if let Some(waker) = self.task.borrow_mut().take() {
            waker.wake();
        }
    }

    /// `dst`'s descriptor if the session may write to it now: the stream's writer is idle
    /// and nothing waits in the queue (bytes sent past a queued remainder would overtake
    /// it; the stream task may not have run since the remainder was queued).
    fn direct_dst(&self) -> Option<RawFd> {
        self.idle_dst
            .get()
            .filter(|_| self.queue.borrow().is_empty())
    }
}

/// State shared by the session task and its stream tasks.
struct Session<W> {
    /// The one writer of the client connection.
    writer: ClientWriter<W>,
    /// The streams the client has open, by id (those it has not FINed).
    streams: RefCell<HashMap<u32, Rc<Stream>>>,
    /// Every stream task still running (FINed ones flush after leaving `streams`), so that
    /// ending the session can wake them all.
    tasks: RefCell<HashMap<u64, Rc<Stream>>>,
    /// Numbers the entries of `tasks`.
    next_task: Cell<u64>,
    /// Streams refused (over [`MAX_STREAMS`]) whose FIN waits for [`FIN_HOLD`].
    refused: RefCell<HashMap<u32, Rc<Stream>>>,
    /// The session is over: stream tasks finish a frame they are writing, then return
    /// and close their `dst`.
    ended: Cell<bool>,
    /// The session's grace for frames in flight is over too: stream tasks return at once.
    aborted: Cell<bool>,
    /// The client's connection broke: streams that end with the session reset their
    /// `dst` instead of closing it cleanly.
    reset: Cell<bool>,
    /// The keepalive task is writing a NOP (which must not be cut short either).
    nop_sending: Cell<bool>,
    /// The session task while it waits for room in a stream's queue.
    reader: RefCell<Option<Waker>>,
    /// The session task is waiting for a queue to drain: not reading the client is then our
    /// doing, not the client's silence.
    stalled: Cell<bool>,
    route: Route,
    /// Close a stream after this long with no bytes either way (`-timeout`).
    idle_timeout: Duration,
    /// The session's place in the counters: bytes, streams, kicks.
    ticket: Ticket,
}

impl<W: AsyncWriteRent> Session<W> {
    fn wake_tasks(&self) {
        let mut tasks: Vec<Rc<Stream>> = self.tasks.borrow().values().cloned().collect();
        tasks.extend(self.refused.borrow().values().cloned());
        for stream in tasks {
            stream.wake_task();
        }
    }

    fn wake_reader(&self) {
        if let Some(waker) = self.reader.borrow_mut().take() {
            waker.wake();
        }
    }

    async fn send_frame(&self, cmd: Cmd, sid: u32) {
        let mut frame = [0u8; smux::HEADER_LEN];
        smux::encode_header(cmd, sid, 0, &mut frame);
        let _ = self.writer.send_small(OpCode::Binary, &frame).await;
    }

    /// Ends a stream: it leaves the session's tables and, if asked, the client gets a FIN.
    async fn finish(&self, task: u64, stream: &Stream, send_fin: bool) {
        stream.closed.set(true);
        self.tasks.borrow_mut().remove(&task);
        {
            let mut streams = self.streams.borrow_mut();
            if streams
                .get(&stream.sid)
                .is_some_and(|s| std::ptr::eq(&**s, stream))
            {
                streams.remove(&stream.sid);
            }
        }
        self.wake_reader();
        if send_fin && !self.ended.get() {
            self.send_frame(Cmd::Fin, stream.sid).await;
        }
    }
}

/// Runs a mux session on an upgraded client connection until it ends; every stream's
/// `dst` connection is closed by then.
pub(crate) async fn run<R, W>(
    mut reader: ClientReader<R>,
    writer: ClientWriter<W>,
    route: Route,
    idle_timeout: Duration,
    ticket: Ticket,
) -> SessionEnd
where
    R: AsyncReadRent + Readiness,
    W: AsyncWriteRent + 'static,
{
    let session = Rc::new(Session {
        writer,
        streams: RefCell::new(HashMap::new()),
        tasks: RefCell::new(HashMap::new()),
        next_task: Cell::new(0),
        refused: RefCell::new(HashMap::new()),
        ended: Cell::new(false),
        aborted: Cell::new(false),
        reset: Cell::new(false),
        nop_sending: Cell::new(false),
        reader: RefCell::new(None),
        stalled: Cell::new(false),
        route,
        idle_timeout,
        ticket,
    });
    let activity = Cell::new(Instant::now());
    let end = {
        let mut read = pin!(read_client(&mut reader, &session, &activity));
        let mut keepalive = pin!(keepalive(&session, &activity));
        let mut kicked = pin!(session.ticket.kicked());
        let mut end = None;
        poll_fn(|cx| {
            if end.is_none() {
                if let Poll::Ready(e) = read.as_mut().poll(cx) {
                    end = Some(e);
                } else if kicked.as_mut().poll(cx).is_ready() {
                    end = Some(SessionEnd::Kicked);
                }
            }
            // A NOP being written is finished before the session ends (a frame cut short
            // would leave the client's framing broken under the close frame).
            if let Poll::Ready(e) = keepalive.as_mut().poll(cx) {
                return Poll::Ready(end.take().unwrap_or(e));
            }
            match end.take() {
                Some(e) if session.nop_sending.get() => {
                    end = Some(e);
                    Poll::Pending
                }
                Some(e) => Poll::Ready(e),
                None => Poll::Pending,
            }
        })
        .await
    };
    // Stream tasks stop; those writing a frame finish it first. Then the close frame, if
    // any, and the shutdown: all within CLOSE_GRACE, as a client that does not read could
    // otherwise hold the session forever.
    session.reset.set(end == SessionEnd::ClientAborted);
    session.ended.set(true);
    session.wake_tasks();
    let closing = async {
        let close = match &end {
            SessionEnd::ClientWebSocket(e) => Some((e.close_code(), "")),
            SessionEnd::ClientSmux(_) => Some((close_code::PROTOCOL_ERROR, "smux")),
            SessionEnd::KeepaliveTimeout => Some((close_code::GOING_AWAY, "keepalive timeout")),
            SessionEnd::Kicked => Some((close_code::POLICY, "")),
            SessionEnd::ClientClosed | SessionEnd::ClientGone | SessionEnd::ClientAborted => None,
        };
        if let Some((code, reason)) = close {
            let _ = session.writer.send_close(code, reason).await;
        }
        session.writer.shutdown().await;
    };
    let _ = monoio::time::timeout(CLOSE_GRACE, closing).await;
    session.aborted.set(true);
    session.wake_tasks();
    end
}

/// The session task's main loop: client frames, smux frames, stream queues.
async fn read_client<R, W>(
    reader: &mut ClientReader<R>,
    session: &Rc<Session<W>>,
    activity: &Cell<Instant>,
) -> SessionEnd
where
    R: AsyncReadRent + Readiness,
    W: AsyncWriteRent + 'static,
{
    let mut decoder = smux::Decoder::new();
    let budget = Budget::default();
    loop {
        let range = match reader.next(activity).await {
            // The data frames that came in the same read, joined (as in plain mode).
            Ok(Incoming::Data(range)) => reader.coalesce(range),
            Ok(Incoming::Ping) => {
                let pong = reader.control_payload().to_vec();
                if session
                    .writer
                    .send_small(OpCode::Pong, &pong)
                    .await
                    .is_err()
                {
                    return SessionEnd::ClientGone;
                }
                continue;
            }
            Ok(Incoming::Close(code)) => {
                let _ = session
                    .writer
                    .send_close(code.unwrap_or(close_code::NORMAL), "")
                    .await;
                return SessionEnd::ClientClosed;
            }
            Err(ReadEnd::Gone) => return SessionEnd::ClientGone,
            Err(ReadEnd::Aborted) => return SessionEnd::ClientAborted,
            Err(ReadEnd::Protocol(e)) => return SessionEnd::ClientWebSocket(e),
        };
        // Consecutive payloads of one stream in this read, moved together over the smux
        // headers between them, so that they reach dst in one write: a message that
        // arrives in two records (as Go's TLS sends a full one) brings the end of one PSH
        // frame and the whole next one, which were two sends.
        let mut run: Option<(Rc<Stream>, Range<usize>)> = None;
        let mut failed = None;
        let mut at = range.start;
        while at < range.end {
            let (event, used) = match decoder.decode(&reader.buf()[at..range.end]) {
                Ok(decoded) => decoded,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let base = at;
            at += used;
            if let (Some(smux::Event::Data { sid, range: data }), Some((stream, bytes))) =
                (&event, &mut run)
            {
                if stream.sid == *sid {
                    // Everything before `at` is consumed: the move overwrites only
                    // headers already decoded.
                    let data = base + data.start..base + data.end;
                    let len = data.len();
                    reader.buf_mut().copy_within(data, bytes.end);
                    bytes.end += len;
                    continue;
                }
            }
            // Anything else comes after the data before it has gone to its stream.
            if let Some((stream, bytes)) = run.take() {
                deliver(session, &stream, &reader.buf()[bytes], &budget).await;
            }
            match event {
                None | Some(smux::Event::Nop) => {}
                Some(smux::Event::Syn(sid)) => open_stream(session, sid).await,
                Some(smux::Event::Fin(sid)) => {
                    if let Some(stream) = session.streams.borrow_mut().remove(&sid) {
                        stream.heard.set(true);
                        stream.fin.set(true);
                        stream.wake_task();
                    } else if let Some(stream) = session.refused.borrow().get(&sid) {
                        stream.hear();
                    }
                }
                Some(smux::Event::Data { sid, range: data }) => {
                    let stream = session.streams.borrow().get(&sid).cloned();
                    // Data for a stream that is unknown, refused or closed is dropped.
                    let Some(stream) = stream else {
                        if let Some(refused) = session.refused.borrow().get(&sid) {
                            refused.hear();
                        }
                        continue;
                    };
                    stream.hear();
                    run = Some((stream, base + data.start..base + data.end));
                }
            }
        }
        if let Some((stream, bytes)) = run.take() {
            deliver(session, &stream, &reader.buf()[bytes], &budget).await;
        }
        if let Some(e) = failed {
            return SessionEnd::ClientSmux(e);
        }
    }
}

/// Client bytes for `stream`: to its `dst` at once when its writer is idle and nothing is
/// queued (what the kernel leaves is queued), else to its queue; counted, and charged to
/// a limited user.
async fn deliver<W>(session: &Session<W>, stream: &Stream, bytes: &[u8], budget: &Budget) {
    wait_for_room(session, stream).await;
    if stream.closed.get() {
        return;
    }
    let len = bytes.len();
    session.ticket.up(len);
    let sent = stream
        .direct_dst()
        .map_or(0, |fd| transport::send_now(fd, bytes));
    if sent > 0 {
        stream.activity.set(Instant::now());
    }
    if sent < len {
        stream.queue.borrow_mut().extend_from_slice(&bytes[sent..]);
        stream.wake_task();
    }
    budget.spend(len).await;
    // A limited user's hook (speed, quota): the session stops reading.
    if let Some(policy) = session.ticket.policy() {
        session.ticket.charge(&policy, Direction::Up, len).await;
    }
}

/// Waits until `stream` can take more bytes (or is closed).
async fn wait_for_room<W>(session: &Session<W>, stream: &Stream) {
    if stream.closed.get() || stream.queue.borrow().len() < STREAM_QUEUE {
        return;
    }
    session.stalled.set(true);
    poll_fn(|cx| {
        if stream.closed.get() || stream.queue.borrow().len() < STREAM_QUEUE {
            Poll::Ready(())
        } else {
            *session.reader.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
    session.stalled.set(false);
}

async fn open_stream<W: AsyncWriteRent + 'static>(session: &Rc<Session<W>>, sid: u32) {
    if session.streams.borrow().contains_key(&sid) {
        // A duplicate SYN: xtaci/smux ignores it too.
        return;
    }
    if session.streams.borrow().len() >= MAX_STREAMS {
        log::debug!(
            "client path {}: stream {sid} refused: {MAX_STREAMS} streams open",
            session.route.path()
        );
        if session.refused.borrow().contains_key(&sid) {
            return; // a duplicate SYN
        }
        if session.refused.borrow().len() >= MAX_STREAMS {
            // Too many refusals pending: no more held FINs (their memory is bounded).
            session.send_frame(Cmd::Fin, sid).await;
            return;
        }
        let stream = Rc::new(Stream::new(sid));
        session.refused.borrow_mut().insert(sid, Rc::clone(&stream));
        crate::runtime::task::spawn_contained(refuse_task(Rc::clone(session), stream));
        return;
    }
    let stream = Rc::new(Stream::new(sid));
    let task = session.next_task.get();
    session.next_task.set(task + 1);
    session.streams.borrow_mut().insert(sid, Rc::clone(&stream));
    session.tasks.borrow_mut().insert(task, Rc::clone(&stream));
    crate::runtime::task::spawn_contained(stream_task(Rc::clone(session), stream, task));
}

/// How a stream's relay ended; whether the client should get a FIN for it.
enum StreamEnd {
    /// The client FINed and its bytes are written: no FIN back (the client forgot it).
    ClientFin,
    /// `dst` closed, failed or went idle: the client gets a FIN.
    Backend,
    /// The session ended.
    Session,
}

async fn stream_task<W: AsyncWriteRent>(session: Rc<Session<W>>, stream: Rc<Stream>, task: u64) {
    let counted = session.ticket.stream();
    let end = relay_stream(&session, &stream).await;
    drop(counted);
    let send_fin = matches!(end, StreamEnd::Backend);
    if send_fin {
        hold_fin(&session, &stream).await;
    }
    session.finish(task, &stream, send_fin).await;
}

/// Sends the FIN that refuses a stream over [`MAX_STREAMS`], after [`hold_fin`].
async fn refuse_task<W: AsyncWriteRent>(session: Rc<Session<W>>, stream: Rc<Stream>) {
    hold_fin(&session, &stream).await;
    session.refused.borrow_mut().remove(&stream.sid);
    if !session.ended.get() {
        session.send_frame(Cmd::Fin, stream.sid).await;
    }
}

/// Waits until a FIN for `stream` can be sent safely: the client has sent something on
/// it, or [`FIN_HOLD`] has passed since its SYN (or the session ended).
async fn hold_fin<W>(session: &Session<W>, stream: &Stream) {
    let mut hold = pin!(monoio::time::sleep_until(stream.opened + FIN_HOLD));
    poll_fn(|cx| {
        if stream.heard.get() || session.ended.get() {
            return Poll::Ready(());
        }
        *stream.task.borrow_mut() = Some(cx.waker().clone());
        hold.as_mut().poll(cx)
    })
    .await;
}

async fn relay_stream<W: AsyncWriteRent>(session: &Session<W>, stream: &Stream) -> StreamEnd {
    let route = &session.route;
    let dst = {
        let mut dial = pin!(dial::dial(route.dst()));
        let dialed = poll_fn(|cx| {
            if session.ended.get() {
                return Poll::Ready(None);
            }
            *stream.task.borrow_mut() = Some(cx.waker().clone());
            dial.as_mut().poll(cx).map(Some)
        })
        .await;
        match dialed {
            None => return StreamEnd::Session,
            Some(Ok(dst)) => dst,
            Some(Err(e)) => {
                log::error!(
                    "backend {} for path {}: dial failed: {e} (mux stream {})",
                    route.dst(),
                    route.path(),
                    stream.sid
                );
                return StreamEnd::Backend;
            }
        }
    };
    stream.activity.set(Instant::now());
    // The descriptor is valid while either half lives (to the end of this function).
    let (dst_fd, mut dst_read, dst_write) = dial::split_dst(dst);
    let end = {
        let mut up = pin!(upload(stream, session, dst_write, dst_fd));
        let mut down = pin!(download(stream, session, &mut dst_read, dst_fd));
        let mut idle = pin!(idle_watch(stream, session.idle_timeout));
        // How the stream ends, once known: `down` may still be writing a frame to the
        // client, which is finished first. (Dropping it part-way would poison the
        // connection's writer: every stream of the session would be dead.)
        let mut end = None;
        let mut down_done = false;
        poll_fn(|cx| {
            // Once the client has FINed, its bytes go to dst (then the FIN) whatever
            // happens to the session or to dst's sending side; only `-timeout` stops that.
            let fin = stream.fin.get();
            if session.aborted.get() && !fin {
                return Poll::Ready(StreamEnd::Session);
            }
            *stream.task.borrow_mut() = Some(cx.waker().clone());
            if end.is_none() {
                if session.ended.get() && !fin {
                    end = Some(StreamEnd::Session);
                } else if let Poll::Ready(e) = up.as_mut().poll(cx) {
                    end = Some(e);
                } else if idle.as_mut().poll(cx).is_ready() {
                    end = Some(StreamEnd::Backend);
                }
                stream.ending.set(end.is_some());
            }
            if !down_done && down.as_mut().poll(cx).is_ready() {
                // dst closed or failed (or the client connection did): the stream ends and
                // the client gets a FIN, unless it has FINed (then `up` finishes first).
                down_done = true;
                if end.is_none() && !fin {
                    end = Some(StreamEnd::Backend);
                }
            }
            match end.take() {
                // (Once the session's grace is over, the writer is done with: a frame
                // still being written is dropped with the stream.)
                Some(e) if stream.sending.get() && !session.aborted.get() => {
                    end = Some(e);
                    Poll::Pending
                }
                Some(e) => Poll::Ready(e),
                None => Poll::Pending,
            }
        })
        .await
    };
    if matches!(end, StreamEnd::Session) && session.reset.get() {
        dial::reset_on_close(dst_fd);
    }
    if matches!(end, StreamEnd::ClientFin) {
        // dst has our FIN behind the client's bytes: close only once it has closed too
        // (or LINGER passed), so that the close does not reset the connection.
        let drain = async {
            let mut buf = vec![0u8; 4096];
            loop {
                let (result, back) = dst_read.read(buf).await;
                buf = back;
                if !matches!(result, Ok(n) if n > 0) {
                    return;
                }
            }
        };
        let _ = monoio::time::timeout(LINGER, drain).await;
    }
    end
}

/// The stream's queue to `dst`; on the client's FIN, the rest of the queue, then close.
async fn upload<W: AsyncWriteRent, D: AsyncWriteRent>(
    stream: &Stream,
    session: &Session<W>,
    mut dst: D,
    dst_fd: RawFd,
) -> StreamEnd {
    let mut spare = Vec::new();
    let budget = Budget::default();
    loop {
        // Woken by the session (more bytes, FIN) through `stream.task`. While this waits,
        // the session may write to dst itself.
        let idle = IdleWriter::new(stream, dst_fd);
        poll_fn(|_| {
            if stream.queue.borrow().is_empty() && !stream.fin.get() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        drop(idle);
        if stream.queue.borrow().is_empty() {
            let _ = dst.shutdown().await;
            return StreamEnd::ClientFin;
        }
        let data = std::mem::replace(&mut *stream.queue.borrow_mut(), spare);
        session.wake_reader();
        let (result, mut data) = dst.write_all(data).await;
        if result.is_err() {
            return StreamEnd::Backend;
        }
        budget.spend(data.len()).await;
        stream.activity.set(Instant::now());
        data.clear();
        // Keep a buffer for next time only if it is not larger than a full queue.
        spare = if data.capacity() <= STREAM_QUEUE {
            data
        } else {
            Vec::new()
        };
    }
}

/// `dst`'s bytes to the client as PSH frames, each in one binary WebSocket frame. Once a
/// read has drained the socket, the next waits for data without holding a buffer.
async fn download<W: AsyncWriteRent, D: AsyncReadRent + Readiness>(
    stream: &Stream,
    session: &Session<W>,
    dst: &mut D,
    dst_fd: RawFd,
) {
    let budget = Budget::default();
    let room = HEADER_ROOM + smux::HEADER_LEN;
    let mut drained = false;
    while !stream.ending.get() {
        if drained && dst.wait_readable().await.is_err() {
            return;
        }
        let mut buf: Vec<u8> = Vec::with_capacity(room + FRAME_PAYLOAD);
        buf.resize(room, 0);
        // As in plain mode: while dst keeps filling frames, no trip through the runtime.
        let (result, mut buf) =
            transport::read_appending(dst, dst_fd, buf, FRAME_PAYLOAD, !drained).await;
        let n = match result {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        drained = n < FRAME_PAYLOAD;
        stream.activity.set(Instant::now());
        session.ticket.down(n);
        let mut header = [0u8; smux::HEADER_LEN];
        // n <= FRAME_PAYLOAD < 65536.
        smux::encode_header(Cmd::Psh, stream.sid, n as u16, &mut header);
        buf[HEADER_ROOM..room].copy_from_slice(&header);
        stream.sending.set(true);
        let sent = session.writer.send_binary(buf).await.0;
        stream.sending.set(false);
        budget.spend(n).await;
        if sent.is_err() {
            return;
        }
        if let Some(policy) = session.ticket.policy() {
            session.ticket.charge(&policy, Direction::Down, n).await;
        }
    }
}

async fn idle_watch(stream: &Stream, timeout: Duration) {
    loop {
        let deadline = stream.activity.get() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        monoio::time::sleep_until(deadline).await;
    }
}

/// Sends a NOP every [`KEEPALIVE_INTERVAL`]; completes when nothing has arrived for
/// [`KEEPALIVE_TIMEOUT`] while we were reading.
async fn keepalive<W: AsyncWriteRent>(
    session: &Session<W>,
    activity: &Cell<Instant>,
) -> SessionEnd {
    let mut next_nop = Instant::now() + KEEPALIVE_INTERVAL;
    loop {
        let dead_at = activity.get() + KEEPALIVE_TIMEOUT;
        monoio::time::sleep_until(next_nop.min(dead_at)).await;
        let now = Instant::now();
        if now >= activity.get() + KEEPALIVE_TIMEOUT {
            if !session.stalled.get() {
                return SessionEnd::KeepaliveTimeout;
            }
            // We are the ones not reading: the client is not silent.
            activity.set(now);
        }
        if now >= next_nop {
            session.nop_sending.set(true);
            session.send_frame(Cmd::Nop, 0).await;
            session.nop_sending.set(false);
            next_nop = now + KEEPALIVE_INTERVAL;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_writes_to_dst_only_while_its_writer_is_idle_and_nothing_is_queued() {
        let stream = Stream::new(1);
        assert_eq!(stream.direct_dst(), None, "no writer waiting yet");
        {
            let _idle = IdleWriter::new(&stream, 7);
            assert_eq!(stream.direct_dst(), Some(7));
            // A remainder queued (the stream task not yet run): later bytes must queue too.
            stream.queue.borrow_mut().extend_from_slice(b"rest");
            assert_eq!(stream.direct_dst(), None);
            stream.queue.borrow_mut().clear();
            assert_eq!(stream.direct_dst(), Some(7));
        }
        // The writer is busy (or gone): the descriptor is no longer offered.
        assert_eq!(stream.direct_dst(), None);
    }
}
