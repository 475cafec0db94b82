//! One data-port connection from accept to tunnel: the TLS handshake, request heads (with
//! keep-alive for ordinary web requests), the route lookup, the upgrade checks of RFC 6455,
//! the choice of mode, and the `101` that hands the connection to a tunnel.
//!
//! Strangers get what an nginx would give them (a 404 page), and so does a user over one
//! of its limits (connections, devices, quota, expiry: a probe learns nothing; the reason
//! is logged and counted); only a known path with a valid upgrade, admitted, reaches
//! [`crate::tunnel::plain`] or [`crate::tunnel::mux`]. Nothing here reads frames.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::time::Instant;

use crate::control::policy::Admission;
use crate::control::registry::{Kind, Refusal};
use crate::control::routes::Route;
use crate::net::dial;
use crate::net::heads;
use crate::net::tls_stream::{self, Accepted};
use crate::net::transport::{Peer, PlainStream, Readiness, Transport};
use crate::proto::http::{self, HeadError, RequestHead};
use crate::tunnel::client_side::{ClientReader, ClientWriter};
use crate::tunnel::fallback;
use crate::tunnel::plain;
use crate::tunnel::Context;

/// Most requests served on one keep-alive connection before it is closed.
const MAX_REQUESTS: usize = 100;
/// How long ending a connection we answered may take (a client that does not read).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The tunnel mode a client asked for (or got by default): the first of `smux_on`,
/// `smux_off` that it offered, else the `-mux` default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One byte stream to `dst` (`smux_off`).
    Plain,
    /// smux v1 streams, each to its own `dst` connection (`smux_on`).
    Mux,
}

/// The subprotocol to select and echo, and the mode: the server prefers `smux_on`, then
/// `smux_off`; a client that offers neither gets `mux_default` and no echo.
pub(crate) fn choose_mode(offered: &[String], mux_default: bool) -> (Mode, Option<&'static str>) {
    if offered.iter().any(|p| p == "smux_on") {
        (Mode::Mux, Some("smux_on"))
    } else if offered.iter().any(|p| p == "smux_off") {
        (Mode::Plain, Some("smux_off"))
    } else if mux_default {
        (Mode::Mux, None)
    } else {
        (Mode::Plain, None)
    }
}

/// Why a request to a known path is not a valid upgrade: the status and extra headers.
pub(crate) fn check_upgrade(head: &RequestHead) -> Result<(), (u16, &'static str)> {
    if head.method != "GET" {
        return Err((405, "Allow: GET\r\n"));
    }
    if !(head.connection_upgrade && head.upgrade_websocket) {
        return Err((426, "Upgrade: websocket\r\n"));
    }
    if head.minor_version != 1 {
        return Err((400, ""));
    }
    if head.ws_version.as_deref() != Some("13") {
        return Err((426, "Sec-WebSocket-Version: 13\r\n"));
    }
    if head.ws_key.as_deref().is_none_or(str::is_empty) {
        return Err((400, ""));
    }
    if head.transfer_encoding || head.content_length.is_some_and(|n| n > 0) {
        return Err((400, ""));
    }
    Ok(())
}

/// A tunnel that is set up (the `101` is sent, `dst` dialed) and has only to run.
type Tunnel = Pin<Box<dyn Future<Output = ()>>>;

/// Serves one accepted connection until it is done.
///
/// Setting up (PROXY header, TLS handshake, heads, upgrade) runs in one boxed future that
/// is freed before the tunnel starts, and the tunnel is a boxed future of its own, made
/// by a plain function: while a tunnel runs, this task holds two pointers, not the
/// stages' moved-from values (an async fn keeps room for every local that lives across an
/// await, moved or not: the request head and the upgrade's result were 800 bytes of an
/// idle tunnel's task).
pub(crate) async fn handle(transport: Transport, peer: Peer, ctx: Rc<Context>) {
    if let Some(tunnel) = Box::pin(set_up(transport, peer, ctx)).await {
        tunnel.await;
    }
}

/// Everything before the tunnel: `None` when the connection ended without one.
async fn set_up(mut transport: Transport, peer: Peer, ctx: Rc<Context>) -> Option<Tunnel> {
    let deadline = Instant::now() + ctx.settings.head_timeout;
    let (peer, early) = if ctx.settings.proxy_protocol {
        match Box::pin(heads::read_header(&mut transport, deadline)).await {
            Ok((source, early)) => (source.map_or(peer, Peer::Ip), early),
            Err(e) => {
                ctx.stats.metrics.refuse(Refusal::BadRequest);
                log::debug!("client {peer}: no valid PROXY header: {e:?}");
                return None;
            }
        }
    } else {
        (peer, Vec::new())
    };
    let tls = ctx.tls.borrow().clone();
    // Each stage is boxed: a connection task holds only the stage it is in, not the
    // largest of all of them (the task of a tunnel would otherwise carry the TLS
    // handshake's and the mux session's state too).
    let Some(config) = tls else {
        let stream = PlainStream::new(transport, early);
        return serve_connection(stream, peer, &ctx, deadline).await;
    };
    let accepted = tls_stream::accept(&config, transport, early);
    let accepted = match Box::pin(monoio::time::timeout_at(deadline, accepted)).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            ctx.stats.metrics.refuse(Refusal::TlsError);
            log::debug!("client {peer}: TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            ctx.stats.metrics.refuse(Refusal::Timeout);
            log::debug!("client {peer}: TLS handshake timed out");
            return None;
        }
    };
    match accepted {
        Accepted::V13(tls) => serve_connection(tls, peer, &ctx, deadline).await,
        // TLS 1.2 goes through rustls's own stream, whose stage is 3.4 KiB: boxed, so that
        // the common TLS 1.3 connection does not carry room for it.
        Accepted::V12(tls) => Box::pin(serve_connection(*tls, peer, &ctx, deadline)).await,
    }
}

/// Hands the connection to the fallback site, if there is one and it answers; `Err` gives
/// the stream back to answer ourselves.
async fn try_fallback<S>(
    stream: S,
    peer: Peer,
    ctx: &Context,
    already_read: Vec<u8>,
) -> Result<(), S>
where
    S: AsyncReadRent + AsyncWriteRent + Splitable,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    let Some(site) = &ctx.settings.fallback else {
        return Err(stream);
    };
    match dial::dial(site).await {
        Ok(conn) => {
            log::debug!("client {peer}: handed to the fallback site {site}");
            Box::pin(fallback::relay(
                stream,
                conn,
                already_read,
                ctx.settings.idle_timeout,
            ))
            .await;
            Ok(())
        }
        Err(e) => {
            log::error!(
                "fallback site {site}: dial failed: {e} (client {peer}); answering 404 instead"
            );
            Err(stream)
        }
    }
}

/// A valid upgrade to a known path, with the connection it came on.
struct UpgradeRequest<S> {
    stream: S,
    head: RequestHead,
    route: Route,
    /// The connection's place in the user's limits, if the user has any.
    admission: Option<Admission>,
    /// Bytes that came after the head (the client's first frames, if it did not wait).
    early: Vec<u8>,
}

/// A tunnel ready to run: the `101` is sent.
enum Ready<S: Splitable> {
    Plain {
        reader: ClientReader<S::OwnedRead>,
        writer: ClientWriter<S::OwnedWrite>,
        dst: monoio::net::TcpStream,
    },
    Mux {
        reader: ClientReader<S::OwnedRead>,
        writer: ClientWriter<S::OwnedWrite>,
    },
}

/// Serves a connection from its first request head to its upgrade, and returns the
/// tunnel to run. Each stage is boxed and dropped before the next begins.
async fn serve_connection<S>(
    stream: S,
    peer: Peer,
    ctx: &Context,
    deadline: Instant,
) -> Option<Tunnel>
where
    S: AsyncReadRent + AsyncWriteRent + Splitable + 'static,
    S::OwnedRead: AsyncReadRent + Readiness + 'static,
    S::OwnedWrite: AsyncWriteRent + 'static,
{
    let request = Box::pin(serve(stream, peer, ctx, deadline)).await?;
    let route = request.route.clone();
    let (ready, admission) = Box::pin(upgrade(request, peer, ctx)).await?;
    Some(tunnel(ready, route, admission, peer, ctx))
}

/// The tunnel of an answered upgrade, as one boxed future (a plain function, so that
/// nothing of `ready` stays behind in the caller's future).
fn tunnel<S>(
    ready: Ready<S>,
    route: Route,
    admission: Option<Admission>,
    peer: Peer,
    ctx: &Context,
) -> Tunnel
where
    S: Splitable + 'static,
    S::OwnedRead: AsyncReadRent + Readiness + 'static,
    S::OwnedWrite: AsyncWriteRent + 'static,
{
    match ready {
        Ready::Plain {
            reader,
            writer,
            dst,
        } => {
            let ticket = ctx
                .stats
                .open(route.path(), Kind::Plain, peer.addr(), admission);
            Box::pin(async move {
                let end = plain::run(reader, writer, dst, ticket).await;
                log::debug!(
                    "client {peer} path {}: plain tunnel ended: {end:?}",
                    route.path()
                );
            })
        }
        Ready::Mux { reader, writer } => {
            let ticket = ctx
                .stats
                .open(route.path(), Kind::MuxSession, peer.addr(), admission);
            let idle_timeout = ctx.settings.idle_timeout;
            Box::pin(async move {
                let path = route.clone();
                let end =
                    crate::tunnel::mux::run(reader, writer, route, idle_timeout, ticket).await;
                log::debug!(
                    "client {peer} path {}: mux session ended: {end:?}",
                    path.path()
                );
            })
        }
    }
}

/// Ends a connection in the HTTP phase, after our answer or the client's end: over TLS
/// this sends close_notify (so the client knows the page it got is whole), or the alert
/// the record layer owes after a bad record, or nothing after the client's fatal alert;
/// then the FIN. Bounded: a client that does not read cannot hold the task.
async fn close<S: AsyncWriteRent>(mut stream: S) {
    let _ = monoio::time::timeout(CLOSE_WAIT, stream.shutdown()).await;
}

/// Reads request heads and answers those that are not upgrades (or hands the connection
/// to the fallback site); returns the first valid upgrade to a known path.
async fn serve<S>(
    mut stream: S,
    peer: Peer,
    ctx: &Context,
    mut deadline: Instant,
) -> Option<UpgradeRequest<S>>
where
    S: AsyncReadRent + AsyncWriteRent + Splitable,
    S::OwnedRead: AsyncReadRent + Readiness,
    S::OwnedWrite: AsyncWriteRent + 'static,
{
    let mut buf = Vec::new();
    for served in 1..=MAX_REQUESTS {
        let (result, rest) = Box::pin(heads::read_head(&mut stream, buf, deadline)).await;
        buf = rest;
        let (head, head_len) = match result {
            Ok(parsed) => parsed,
            Err(HeadError::Closed { .. }) => {
                close(stream).await;
                return None;
            }
            Err(HeadError::Timeout) => {
                ctx.stats.metrics.refuse(Refusal::Timeout);
                log::debug!("client {peer}: request head timed out");
                close(stream).await;
                return None;
            }
            Err(e) => {
                ctx.stats.metrics.refuse(Refusal::BadRequest);
                log::debug!("client {peer}: bad request head: {e:?}");
                let Err(mut stream) = Box::pin(try_fallback(stream, peer, ctx, buf)).await else {
                    return None;
                };
                let status = if e == HeadError::TooLarge { 431 } else { 400 };
                let _ = stream
                    .write_all(http::error_page(status, "", false, true))
                    .await;
                close(stream).await;
                return None;
            }
        };
        let route =
            http::route_key(&head.target).and_then(|key| ctx.routes.borrow().lookup(&key).cloned());
        // A body we do not read would be taken for the next request: close after answering.
        let has_body = head.transfer_encoding || head.content_length.is_some_and(|n| n > 0);
        // The last request a connection may carry is answered with `Connection: close`.
        let keep_alive = head.keep_alive() && !has_body && served < MAX_REQUESTS;
        let with_body = head.method != "HEAD";
        let mut admission = None;
        let refusal = match &route {
            None => {
                ctx.stats.metrics.refuse(Refusal::UnknownPath);
                log::debug!("client {peer}: {} {}: 404", head.method, head.target);
                Some((404, ""))
            }
            Some(route) => match check_upgrade(&head) {
                Err((status, extra)) => {
                    ctx.stats.metrics.refuse(Refusal::BadUpgrade);
                    log::debug!(
                        "client {peer} path {}: not a valid upgrade: {status}",
                        route.path()
                    );
                    Some((status, extra))
                }
                // A limited user: the same 404 as an unknown path when over a limit.
                Ok(()) => match route.policy().map(|p| p.admit(peer.addr().map(|a| a.ip()))) {
                    Some(Err(denied)) => {
                        let why = Refusal::from(denied);
                        ctx.stats.metrics.refuse(why);
                        log::debug!(
                            "client {peer} path {}: refused: {}",
                            route.path(),
                            why.label()
                        );
                        Some((404, ""))
                    }
                    Some(Ok(admitted)) => {
                        admission = Some(admitted);
                        None
                    }
                    None => None,
                },
            },
        };
        if let Some((status, extra)) = refusal {
            if ctx.settings.fallback.is_some() {
                // The whole connection goes to the site, this request first.
                match Box::pin(try_fallback(stream, peer, ctx, buf)).await {
                    Ok(()) => return None,
                    Err(back) => {
                        stream = back;
                        buf = Vec::new();
                    }
                }
            }
            let page = http::error_page(status, extra, keep_alive, with_body);
            let (result, _) = stream.write_all(page).await;
            if result.is_err() || !keep_alive || buf.len() < head_len {
                // (A short `buf`: the head went to a fallback site that could not be
                // reached; its bytes are gone.)
                close(stream).await;
                return None;
            }
            buf.drain(..head_len);
            deadline = Instant::now() + ctx.settings.head_timeout;
            continue;
        }
        // Both are Some here: a refusal was answered above.
        let route = route?;
        buf.drain(..head_len);
        return Some(UpgradeRequest {
            stream,
            head,
            route,
            admission,
            early: buf,
        });
    }
    None
}

/// Answers a valid upgrade: dials `dst` for a plain tunnel (a 502 if it cannot be
/// reached), sends the `101`, and hands back the tunnel's two ends with its admission.
async fn upgrade<S>(
    request: UpgradeRequest<S>,
    peer: Peer,
    ctx: &Context,
) -> Option<(Ready<S>, Option<Admission>)>
where
    S: AsyncReadRent + AsyncWriteRent + Splitable,
    S::OwnedRead: AsyncReadRent + Readiness,
    S::OwnedWrite: AsyncWriteRent + 'static,
{
    let UpgradeRequest {
        mut stream,
        head,
        route,
        admission,
        early,
    } = request;
    let (mode, protocol) = choose_mode(&head.ws_protocols, ctx.settings.mux_default);
    let accept = http::websocket_accept(head.ws_key.as_deref().unwrap_or_default());
    drop(head);
    let dst = match mode {
        Mode::Mux => None,
        Mode::Plain => match dial::dial(route.dst()).await {
            Ok(dst) => Some(dst),
            Err(e) => {
                let failures = &ctx.stats.metrics.dial_failures;
                failures.set(failures.get() + 1);
                log::error!(
                    "backend {} for path {}: dial failed: {e} (client {peer})",
                    route.dst(),
                    route.path()
                );
                let page = http::error_page(502, "", false, true);
                let _ = stream.write_all(page).await;
                close(stream).await;
                return None;
            }
        },
    };
    let response = http::switching_protocols(&accept, protocol);
    if stream.write_all(response).await.0.is_err() {
        return None;
    }
    let (reader, writer) = plain::split_client(stream, early);
    match dst {
        Some(dst) => {
            log::debug!(
                "client {peer} path {}: plain tunnel to {} open",
                route.path(),
                route.dst()
            );
            Some((
                Ready::Plain {
                    reader,
                    writer,
                    dst,
                },
                admission,
            ))
        }
        None => {
            log::debug!("client {peer} path {}: mux session open", route.path());
            Some((Ready::Mux { reader, writer }, admission))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mode_preference() {
        assert_eq!(
            choose_mode(&offered(&["smux_off", "smux_on"]), false),
            (Mode::Mux, Some("smux_on"))
        );
        assert_eq!(
            choose_mode(&offered(&["x", "smux_off"]), true),
            (Mode::Plain, Some("smux_off"))
        );
        assert_eq!(choose_mode(&offered(&["x"]), true), (Mode::Mux, None));
        assert_eq!(choose_mode(&[], false), (Mode::Plain, None));
    }
}
