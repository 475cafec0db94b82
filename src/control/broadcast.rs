//! Requests from the controller thread to every worker, and their replies: route changes,
//! counter collection, kicks and metrics. Each request goes to every worker over its own
//! crossbeam channel, and a [`Doorbell`] wakes the worker's request task, so there is no
//! polling; [`ask_all`] returns once every worker has answered (or is gone, which only
//! happens when its thread died). That is what lets the controller reply to the panel only
//! when every worker routes by the new table.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::control::registry::{MetricsSnapshot, UserTotals};
use crate::control::routes::RouteUpdate;
use crate::runtime::doorbell::Doorbell;

/// What the controller asks of a worker.
#[derive(Debug)]
pub enum Request {
    /// Install these shard versions in the worker's view of the routes (one change, or
    /// one slice of a large one).
    Routes(RouteUpdate),
    /// Report the counters of these users (all when `None`), resetting them if asked.
    Stats {
        paths: Option<Vec<Box<str>>>,
        reset: bool,
    },
    /// Close the open connections of these users.
    Kick(Vec<Box<str>>),
    /// Report the worker's totals for `/metrics`.
    Metrics,
    /// Use this TLS configuration for new handshakes (a reloaded certificate).
    Tls(Arc<rustls::ServerConfig>),
}

/// A worker's answer to a [`Request`].
#[derive(Debug)]
pub enum Reply {
    Applied,
    Stats(Vec<UserTotals>),
    Kicked(usize),
    Metrics(MetricsSnapshot),
}

/// A request on its way to one worker, with the channel for its answer.
pub struct Envelope {
    /// The request, shared by all workers.
    pub request: Arc<Request>,
    /// Where the worker answers; the controller waits for every worker's answer.
    pub reply: Sender<(usize, Reply)>,
}

/// The controller's end of one worker's request channel (the main thread holds a copy,
/// for certificate reloads).
#[derive(Clone)]
pub struct WorkerLink {
    pub requests: Sender<Envelope>,
    pub doorbell: Arc<Doorbell>,
}

/// The worker's end of its request channel.
pub(crate) struct WorkerInbox {
    pub requests: Receiver<Envelope>,
    pub doorbell: Arc<Doorbell>,
}

/// A connected pair of ends for one worker.
pub(crate) fn worker_link() -> (WorkerLink, WorkerInbox) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let doorbell = Arc::new(Doorbell::default());
    (
        WorkerLink {
            requests: tx,
            doorbell: Arc::clone(&doorbell),
        },
        WorkerInbox {
            requests: rx,
            doorbell,
        },
    )
}

/// Sends `request` to every worker and returns their answers, indexed by worker, once all
/// have answered; a worker that is gone has no answer.
pub(crate) fn ask_all(workers: &[WorkerLink], request: Request) -> Vec<Option<Reply>> {
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(workers.len());
    let request = send_all(workers, request, &reply_tx);
    // With our own sender gone, `recv` fails once every worker has answered or dropped
    // its envelope.
    drop(reply_tx);
    let mut replies: Vec<Option<Reply>> = (0..workers.len()).map(|_| None).collect();
    while let Ok((index, reply)) = reply_rx.recv() {
        if let Some(slot) = replies.get_mut(index) {
            *slot = Some(reply);
        }
    }
    // Every envelope is gone (each drops its request before its reply sender): the last
    // handle is this one, so what the request holds (the routes a change displaced) is
    // freed here, on the controller's thread, not in a worker between its tunnels.
    drop(request);
    replies
}

/// Sends every request of `requests` to every worker at once, to be answered in order
/// (a large route change in slices), and returns once every worker answered them all.
pub(crate) fn ask_all_in_turn(workers: &[WorkerLink], requests: Vec<Request>) {
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(workers.len() * requests.len());
    let sent: Vec<Arc<Request>> = requests
        .into_iter()
        .map(|request| send_all(workers, request, &reply_tx))
        .collect();
    drop(reply_tx);
    while reply_rx.recv().is_ok() {}
    // As in `ask_all`: the last handles are these.
    drop(sent);
}

/// Sends `request` to every worker without waiting for answers (for workers that have not
/// started yet: they answer queued requests before accepting connections).
pub(crate) fn tell_all(workers: &[WorkerLink], request: Request) {
    let (reply_tx, _) = crossbeam_channel::bounded(workers.len());
    send_all(workers, request, &reply_tx);
}

/// Queues `request` for every worker, with `reply` for its answer, and rings its bell.
/// Returns the controller's own handle on the request.
fn send_all(
    workers: &[WorkerLink],
    request: Request,
    reply: &Sender<(usize, Reply)>,
) -> Arc<Request> {
    let request = Arc::new(request);
    for worker in workers {
        let envelope = Envelope {
            request: Arc::clone(&request),
            reply: reply.clone(),
        };
        if worker.requests.send(envelope).is_ok() {
            worker.doorbell.ring();
        }
    }
    request
}

/// A worker's task: answers requests as they arrive, with `handle`, one at a time with
/// the worker's other tasks running between them (a large route change comes as many
/// requests, each a bounded step).
pub(crate) async fn serve_requests(
    inbox: &WorkerInbox,
    index: usize,
    mut handle: impl FnMut(&Request) -> Reply,
) {
    loop {
        if answer_one(inbox, index, &mut handle) {
            crate::runtime::task::step_aside().await;
        } else {
            inbox.doorbell.wait().await;
        }
    }
}

/// Answers every request already queued, without waiting (before the worker starts).
pub(crate) fn drain(inbox: &WorkerInbox, index: usize, handle: &mut impl FnMut(&Request) -> Reply) {
    while answer_one(inbox, index, handle) {}
}

/// Answers the oldest queued request, if there is one; whether there was.
///
/// A panic while answering ends the process: the worker may have applied part of a route
/// change, and a worker whose table differs from the controller's would route wrongly
/// from then on, silently. (Answering is plain map and counter work; nothing the network
/// or the panel sends reaches it unvalidated.)
pub(crate) fn answer_one(
    inbox: &WorkerInbox,
    index: usize,
    handle: &mut impl FnMut(&Request) -> Reply,
) -> bool {
    let Ok(envelope) = inbox.requests.try_recv() else {
        return false;
    };
    let answered =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(&envelope.request)));
    let Ok(reply) = answered else {
        log::error!("internal: worker {index} panicked answering the controller; exiting");
        std::process::abort();
    };
    // The controller may have stopped waiting (it never does today); an unread answer is
    // harmless.
    let _ = envelope.reply.send((index, reply));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::routes::{Route, RouteChange, RouteTable, RouteView};

    #[test]
    fn ask_all_returns_after_every_worker_answered() {
        let mut links = Vec::new();
        let mut threads = Vec::new();
        for index in 0..3 {
            let (link, inbox) = worker_link();
            links.push(link);
            threads.push(std::thread::spawn(move || {
                let mut view = RouteView::new();
                // A plain thread stands in for a worker: block on the channel.
                while let Ok(envelope) = inbox.requests.recv() {
                    std::thread::sleep(std::time::Duration::from_millis(20 * index as u64));
                    if let Request::Routes(update) = &*envelope.request {
                        view.install(update);
                    }
                    envelope.reply.send((index, Reply::Applied)).unwrap();
                    if view.is_empty() {
                        return;
                    }
                }
            }));
        }
        let mut table = RouteTable::new();
        let route = Route::new("/x", "h:1");
        let update = table.apply(&RouteChange::Upsert(vec![route]));
        let replies = ask_all(&links, Request::Routes(update));
        assert!(replies.iter().all(|r| matches!(r, Some(Reply::Applied))));
        ask_all(&links, Request::Routes(table.apply(&RouteChange::Clear)));
        for t in threads {
            t.join().unwrap();
        }
        // Workers that are gone give no answer, and asking does not hang.
        let replies = ask_all(&links, Request::Metrics);
        assert!(replies.iter().all(Option::is_none));
    }
}
