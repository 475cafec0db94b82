//! Users and where their bytes go: the route table, the changes the controller makes to it,
//! and the per-worker copy the data path reads without a lock.
//!
//! The controller owns the authoritative [`RouteTable`]. Each change is one
//! [`RouteChange`], shared by `Arc` and sent to every worker over a crossbeam channel; the
//! worker applies it to its own [`RouteTable`] and acknowledges, and the controller replies
//! to the panel only after every worker has acknowledged. A [`Doorbell`] wakes the worker's
//! update task from the controller thread, so there is no polling tick. This module knows
//! nothing of sockets or HTTP.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::doorbell::Doorbell;

/// One user: the request path that selects it and the `HOST:PORT` its tunnels go to.
/// Shared by `Arc` between the controller's table and every worker's copy, so a user costs
/// one allocation whatever the number of workers.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    /// The request path, compared exactly with the percent-decoded path of a request.
    pub path: Box<str>,
    /// The destination, `HOST:PORT`, validated by the controller.
    pub dst: Box<str>,
}

/// A set entry keyed by the route's path, so a set of routes is looked up by `&str`.
#[derive(Clone, Debug)]
struct ByPath(Arc<Route>);

impl PartialEq for ByPath {
    fn eq(&self, other: &Self) -> bool {
        self.0.path == other.0.path
    }
}
impl Eq for ByPath {}
impl Hash for ByPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.path.hash(state)
    }
}
impl Borrow<str> for ByPath {
    fn borrow(&self) -> &str {
        &self.0.path
    }
}

/// The users, looked up by path. The controller's copy is authoritative; each worker has
/// its own, changed only by [`RouteChange`]s from the controller.
#[derive(Default, Debug)]
pub struct RouteTable {
    /// Entries keyed by path: one pointer each, the route itself is shared.
    routes: HashSet<ByPath>,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The route for `path`, if a user has it.
    pub fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.get(path).map(|entry| &entry.0)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Applies one change. Applying the same sequence of changes to two tables gives the
    /// same tables: that is what keeps the workers' copies equal to the controller's.
    pub fn apply(&mut self, change: &RouteChange) {
        match change {
            RouteChange::Upsert(routes) => {
                self.routes.reserve(routes.len());
                for route in routes.iter() {
                    // `replace`, not `insert`: an existing path takes the new destination.
                    self.routes.replace(ByPath(Arc::clone(route)));
                }
            }
            RouteChange::Remove(paths) => {
                for path in paths.iter() {
                    self.routes.remove(&**path);
                }
            }
            RouteChange::Clear => {
                self.routes = HashSet::new();
            }
        }
    }
}

/// One batch of changes, applied whole by every table that receives it.
#[derive(Debug)]
pub enum RouteChange {
    /// Add these users, replacing any with the same path; a later duplicate in the list wins.
    Upsert(Vec<Arc<Route>>),
    /// Delete the users with these paths; unknown paths are ignored.
    Remove(Vec<Box<str>>),
    /// Delete every user.
    Clear,
}

/// A change on its way to one worker, with the channel on which the worker says it has
/// applied it.
pub struct RouteUpdate {
    /// The change, shared by all workers.
    pub change: Arc<RouteChange>,
    /// Dropped or sent to once the change is applied; the controller waits for all of them.
    pub applied: Sender<()>,
}

/// The controller's end of one worker's update channel.
pub struct WorkerLink {
    pub updates: Sender<RouteUpdate>,
    pub doorbell: Arc<Doorbell>,
}

/// The worker's end of its update channel.
pub struct WorkerInbox {
    pub updates: Receiver<RouteUpdate>,
    pub doorbell: Arc<Doorbell>,
}

/// A connected pair of ends for one worker.
pub fn worker_link() -> (WorkerLink, WorkerInbox) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let doorbell = Arc::new(Doorbell::default());
    (
        WorkerLink {
            updates: tx,
            doorbell: Arc::clone(&doorbell),
        },
        WorkerInbox {
            updates: rx,
            doorbell,
        },
    )
}

/// Sends `change` to every worker and returns once each has applied it (or has gone away,
/// which only happens when its thread died).
pub fn broadcast(workers: &[WorkerLink], change: RouteChange) {
    let change = Arc::new(change);
    let (applied_tx, applied_rx) = crossbeam_channel::bounded(workers.len());
    for worker in workers {
        let update = RouteUpdate {
            change: Arc::clone(&change),
            applied: applied_tx.clone(),
        };
        if worker.updates.send(update).is_ok() {
            worker.doorbell.ring();
        }
    }
    // With our own sender gone, `recv` fails once every worker has acknowledged or dropped
    // its update.
    drop(applied_tx);
    while applied_rx.recv().is_ok() {}
}

/// A worker's task that applies route changes to its table as they arrive.
pub async fn apply_updates(inbox: WorkerInbox, table: &std::cell::RefCell<RouteTable>) {
    loop {
        inbox.doorbell.wait().await;
        loop {
            match inbox.updates.try_recv() {
                Ok(update) => {
                    table.borrow_mut().apply(&update.change);
                    // The controller may have stopped waiting (it never does today); an
                    // unread acknowledgement is harmless.
                    let _ = update.applied.send(());
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, dst: &str) -> Arc<Route> {
        Arc::new(Route {
            path: path.into(),
            dst: dst.into(),
        })
    }

    #[test]
    fn upsert_overwrites_and_later_duplicate_wins() {
        let mut table = RouteTable::new();
        table.apply(&RouteChange::Upsert(vec![
            route("/a", "127.0.0.1:1"),
            route("/b", "127.0.0.1:2"),
            route("/a", "127.0.0.1:3"),
        ]));
        assert_eq!(table.len(), 2);
        assert_eq!(&*table.lookup("/a").unwrap().dst, "127.0.0.1:3");
        table.apply(&RouteChange::Upsert(vec![route("/b", "127.0.0.1:4")]));
        assert_eq!(&*table.lookup("/b").unwrap().dst, "127.0.0.1:4");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn remove_ignores_unknown_and_clear_empties() {
        let mut table = RouteTable::new();
        table.apply(&RouteChange::Upsert(vec![
            route("/a", "h:1"),
            route("/b", "h:2"),
        ]));
        table.apply(&RouteChange::Remove(vec!["/a".into(), "/nope".into()]));
        assert!(table.lookup("/a").is_none());
        assert!(table.lookup("/b").is_some());
        table.apply(&RouteChange::Clear);
        assert!(table.is_empty());
    }

    #[test]
    fn broadcast_returns_after_every_worker_applied() {
        let mut links = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..3 {
            let (link, inbox) = worker_link();
            links.push(link);
            threads.push(std::thread::spawn(move || {
                let mut table = RouteTable::new();
                // A plain thread stands in for a worker: block on the channel.
                while let Ok(update) = inbox.updates.recv() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    table.apply(&update.change);
                    let done = table.len();
                    update.applied.send(()).unwrap();
                    if done == 0 {
                        return table.len();
                    }
                }
                usize::MAX
            }));
        }
        broadcast(&links, RouteChange::Upsert(vec![route("/x", "h:1")]));
        broadcast(&links, RouteChange::Clear);
        for t in threads {
            assert_eq!(t.join().unwrap(), 0);
        }
    }
}
