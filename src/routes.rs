//! Users and where their bytes go: the route table and the changes the controller makes
//! to it.
//!
//! The controller owns the authoritative [`RouteTable`]; each worker has its own copy,
//! which the data path reads without a lock. Each change is one [`RouteChange`], applied
//! to the controller's table and sent, shared by `Arc`, to every worker (see
//! [`crate::broadcast`]). This module knows nothing of threads, sockets or HTTP.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// One user: the request path that selects it and the `HOST:PORT` its tunnels go to.
/// Shared by `Arc` between the controller's table and every worker's copy, so a user costs
/// the same whatever the number of workers; path and destination share one allocation.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    /// The path followed by the destination.
    text: Box<str>,
    /// Where the path ends in `text`.
    path_len: u32,
}

impl Route {
    /// A route for `path` (compared exactly with the percent-decoded path of a request)
    /// to `dst` (`HOST:PORT`, validated by the controller).
    pub fn new(path: &str, dst: &str) -> Self {
        let mut text = String::with_capacity(path.len() + dst.len());
        text.push_str(path);
        text.push_str(dst);
        Self {
            text: text.into_boxed_str(),
            // Paths come from request heads of at most 16 KiB or controller bodies of
            // at most 2 MiB: always far below 4 GiB.
            path_len: path.len() as u32,
        }
    }

    pub fn path(&self) -> &str {
        &self.text[..self.path_len as usize]
    }

    pub fn dst(&self) -> &str {
        &self.text[self.path_len as usize..]
    }
}

/// A set entry keyed by the route's path, so a set of routes is looked up by `&str`.
#[derive(Clone, Debug)]
struct ByPath(Arc<Route>);

impl PartialEq for ByPath {
    fn eq(&self, other: &Self) -> bool {
        self.0.path() == other.0.path()
    }
}
impl Eq for ByPath {}
impl Hash for ByPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.path().hash(state)
    }
}
impl Borrow<str> for ByPath {
    fn borrow(&self) -> &str {
        self.0.path()
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

    /// Every route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter().map(|entry| &entry.0)
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
            RouteChange::Sync { upsert, remove } => {
                for route in upsert {
                    self.routes.replace(ByPath(Arc::clone(route)));
                }
                for path in remove {
                    self.routes.remove(&**path);
                }
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
    /// A full sync: upsert these, then remove those, as one change.
    Sync {
        upsert: Vec<Arc<Route>>,
        remove: Vec<Box<str>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, dst: &str) -> Arc<Route> {
        Arc::new(Route::new(path, dst))
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
        assert_eq!(table.lookup("/a").unwrap().dst(), "127.0.0.1:3");
        table.apply(&RouteChange::Upsert(vec![route("/b", "127.0.0.1:4")]));
        assert_eq!(table.lookup("/b").unwrap().dst(), "127.0.0.1:4");
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
}
