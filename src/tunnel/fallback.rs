//! The fallback site (`-fallback HOST:PORT`): a connection that is not a valid upgrade to
//! a known path is handed, with the bytes already read from it, to a real web server, and
//! relayed both ways unchanged until either side is done; keep-alive and everything else
//! is that server's business. A prober sees that site, not us. If the fallback cannot be
//! reached, the caller answers with its own 404 page. A client connection that breaks
//! (reset, or over TLS a cut without close_notify or a forged record) resets the site's
//! connection, so the site cannot take a cut request for a whole one.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use monoio::time::Instant;

/// Each direction's buffer: web pages, not bulk tunnels.
const BUFFER: usize = 16 * 1024;

/// Relays `client` (after writing `already_read` to the site) and `site` until both
/// directions have ended or nothing has moved for `idle_timeout`.
pub(crate) async fn relay<S>(
    client: S,
    mut site: TcpStream,
    already_read: Vec<u8>,
    idle_timeout: Duration,
) where
    S: AsyncReadRent + AsyncWriteRent + Splitable,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    if site.write_all(already_read).await.0.is_err() {
        return;
    }
    // Valid while either half lives (to the end of this function).
    let site_fd = site.as_raw_fd();
    let (client_read, mut client_write) = client.into_split();
    let (site_read, site_write) = site.into_split();
    let activity = Cell::new(Instant::now());
    let mut client_broke = false;
    // The site's side ended and the client's write side is shut.
    let mut client_shut = false;
    {
        let mut up = pin!(copy(client_read, site_write, &activity));
        let mut down = pin!(copy(site_read, &mut client_write, &activity));
        let mut up_done = false;
        let mut down_done = false;
        let idle = async {
            loop {
                let deadline = activity.get() + idle_timeout;
                if Instant::now() >= deadline {
                    return;
                }
                monoio::time::sleep_until(deadline).await;
            }
        };
        let mut idle = pin!(idle);
        poll_fn(|cx| {
            if !up_done {
                if let Poll::Ready(result) = up.as_mut().poll(cx) {
                    up_done = true;
                    client_broke = result.is_err();
                }
            }
            if !down_done {
                if let Poll::Ready(result) = down.as_mut().poll(cx) {
                    down_done = true;
                    client_shut = result.is_ok();
                }
            }
            // The site closing ends the exchange: an HTTP server closes after its answer.
            if client_broke || down_done || idle.as_mut().poll(cx).is_ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        if client_broke {
            crate::net::dial::reset_on_close(site_fd);
        }
    }
    if !client_shut {
        // The client broke (the alert its TLS layer owes goes out now), the site did, or
        // the exchange idled out. A write cut short above makes this a no-op.
        let _ = monoio::time::timeout(SHUTDOWN_WAIT, client_write.shutdown()).await;
    }
}

/// How long ending the client's side may take when the site did not end it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Copies until EOF, then shuts the writer's side down; a write error ends it the same
/// way. A read error is returned, with the writer left as it is: the caller resets.
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(
    mut from: R,
    mut to: W,
    activity: &Cell<Instant>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(BUFFER);
    loop {
        buf.clear();
        let (result, slice) = from.read(buf.slice_mut(0..BUFFER)).await;
        buf = slice.into_inner();
        match result {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        activity.set(Instant::now());
        let (result, back) = to.write_all(buf).await;
        buf = back;
        if result.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    Ok(())
}
