//! The fallback site (`-fallback HOST:PORT`): a connection that is not a valid upgrade to
//! a known path is handed, with the bytes already read from it, to a real web server, and
//! relayed both ways unchanged until either side is done; keep-alive and everything else
//! is that server's business. A prober sees that site, not us. If the fallback cannot be
//! reached, the caller answers with its own 404 page.

use std::cell::Cell;
use std::future::{poll_fn, Future};
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
pub async fn relay<S>(client: S, mut site: TcpStream, already_read: Vec<u8>, idle_timeout: Duration)
where
    S: AsyncReadRent + AsyncWriteRent + Splitable,
    S::OwnedRead: AsyncReadRent,
    S::OwnedWrite: AsyncWriteRent,
{
    if site.write_all(already_read).await.0.is_err() {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (site_read, site_write) = site.into_split();
    let activity = Cell::new(Instant::now());
    let mut up = pin!(copy(client_read, site_write, &activity));
    let mut down = pin!(copy(site_read, client_write, &activity));
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
        if !up_done && up.as_mut().poll(cx).is_ready() {
            up_done = true;
        }
        if !down_done && down.as_mut().poll(cx).is_ready() {
            down_done = true;
        }
        // The site closing ends the exchange: an HTTP server closes after its answer.
        if down_done || idle.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// Copies until EOF or an error, then shuts the writer's side down.
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(
    mut from: R,
    mut to: W,
    activity: &Cell<Instant>,
) {
    let mut buf = Vec::with_capacity(BUFFER);
    loop {
        buf.clear();
        let (result, slice) = from.read(buf.slice_mut(0..BUFFER)).await;
        buf = slice.into_inner();
        match result {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        activity.set(Instant::now());
        let (result, back) = to.write_all(buf).await;
        buf = back;
        if result.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
