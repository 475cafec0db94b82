//! Users and where their bytes go: the route table and the changes the controller makes
//! to it.
//!
//! The controller owns the authoritative [`RouteTable`]; each worker has its own copy,
//! which the data path reads without a lock. Each change is one [`RouteChange`], applied
//! to the controller's table and sent, shared by `Arc`, to every worker (see
//! [`crate::control::broadcast`]). This module knows nothing of threads, sockets or HTTP.
//!
//! A user with limits (issue 13) carries its shared [`UserPolicy`] in its route block: a
//! flag bit in the header says the block has one more word, an `Arc<UserPolicy>`, before
//! the text. Blocks of users without limits are exactly as before: no larger, no lookup.

use std::alloc::{self, Layout};
use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ptr::{self, NonNull};
use std::sync::atomic::{self, AtomicU32, Ordering};
use std::sync::Arc;

use crate::control::policy::UserPolicy;

/// One user: the request path that selects it and the `HOST:PORT` its tunnels go to, and
/// its limits if it has any.
///
/// A thin, reference-counted handle: one pointer to one heap block holding a small
/// header and the path followed by the destination. Cloning it shares the block, so a
/// user costs the same whatever the number of workers, and a table of routes is a table
/// of 8-byte pointers. With panels' usual 16-character paths and `IP:PORT` destinations a
/// block is 40 bytes, one 48-byte malloc chunk; `Route` over two `Box<str>`s cost two
/// chunks, 96 bytes, and a user a third more memory (BENCHMARKS.md, R6).
pub struct Route {
    block: NonNull<Header>,
}

/// The start of a route's block; the text follows it directly.
#[repr(C)]
struct Header {
    /// Handles sharing the block. Every table and every tunnel holds one; far fewer than
    /// `MAX_REFS` can exist (each needs memory or a file descriptor).
    refs: AtomicU32,
    /// Bytes of path at the start of the text; the top bit ([`HAS_POLICY`]) says the
    /// block holds an `Arc<UserPolicy>` after the header.
    path_len: u32,
    /// Bytes of text: path then destination.
    text_len: u32,
}

/// Above this many handles [`Route::clone`] aborts, as `Arc` does near `isize::MAX`: a
/// count that wraps would free a block still in use.
const MAX_REFS: u32 = i32::MAX as u32;

/// The flag bit in `path_len`: the block carries a policy. Paths are far shorter than 2 GiB
/// (a request head is at most 16 KiB, a controller body 2 MiB).
const HAS_POLICY: u32 = 1 << 31;

/// Where a block's parts are: its layout, the offset of the policy (if it has one) and of
/// the text.
struct Parts {
    layout: Layout,
    policy: Option<usize>,
    text: usize,
}

// SAFETY: the block is immutable once built but for `refs`, which is atomic; the handle
// is as shareable across threads as an `Arc<str>`.
unsafe impl Send for Route {}
// SAFETY: as above.
unsafe impl Sync for Route {}

impl Route {
    /// A route for `path` (compared exactly with the percent-decoded path of a request)
    /// to `dst` (`HOST:PORT`, validated by the controller).
    ///
    /// # Panics
    /// If path and destination together exceed `u32::MAX` bytes: the controller takes
    /// bodies of at most 2 MiB, and a request head is at most 16 KiB.
    pub fn new(path: &str, dst: &str) -> Self {
        Self::with_policy(path, dst, None)
    }

    /// A route as [`Route::new`], carrying the user's shared limits if it has any.
    ///
    /// # Panics
    /// As [`Route::new`], and if the path is 2 GiB or longer.
    pub fn with_policy(path: &str, dst: &str, policy: Option<Arc<UserPolicy>>) -> Self {
        let path_len = u32::try_from(path.len())
            .ok()
            .filter(|&n| n < HAS_POLICY)
            .expect("route path under 2 GiB");
        let text_len = path
            .len()
            .checked_add(dst.len())
            .and_then(|n| u32::try_from(n).ok())
            .expect("route text under 4 GiB");
        let parts = Self::parts(text_len, policy.is_some());
        // SAFETY: the layout has a non-zero size (the header); a null result is handled.
        let raw = unsafe { alloc::alloc(parts.layout) }.cast::<Header>();
        let Some(block) = NonNull::new(raw) else {
            alloc::handle_alloc_error(parts.layout);
        };
        let flag = if policy.is_some() { HAS_POLICY } else { 0 };
        // SAFETY: `block` is a fresh allocation of `parts.layout`: a header, the policy
        // slot (when flagged, at an offset `Layout::extend` aligned for an `Arc`), then
        // `text_len` bytes, which the two copies fill exactly.
        unsafe {
            block.as_ptr().write(Header {
                refs: AtomicU32::new(1),
                path_len: path_len | flag,
                text_len,
            });
            if let (Some(offset), Some(policy)) = (parts.policy, policy) {
                let slot = block
                    .as_ptr()
                    .cast::<u8>()
                    .add(offset)
                    .cast::<Arc<UserPolicy>>();
                slot.write(policy);
            }
            let text = block.as_ptr().cast::<u8>().add(parts.text);
            ptr::copy_nonoverlapping(path.as_ptr(), text, path.len());
            ptr::copy_nonoverlapping(dst.as_ptr(), text.add(path.len()), dst.len());
        }
        Self { block }
    }

    /// The user's shared limits, if it has any: one bit test for a user without.
    pub fn policy(&self) -> Option<&Arc<UserPolicy>> {
        let header = self.header();
        if header.path_len & HAS_POLICY == 0 {
            return None;
        }
        let offset = Self::parts(header.text_len, true).policy?;
        // SAFETY: a flagged block was written with an `Arc<UserPolicy>` at this offset by
        // `with_policy`, never written again, and dropped only with the block.
        Some(unsafe {
            &*self
                .block
                .as_ptr()
                .cast::<u8>()
                .add(offset)
                .cast::<Arc<UserPolicy>>()
        })
    }

    pub fn path(&self) -> &str {
        let len = self.path_len();
        &self.text()[..len]
    }

    pub fn dst(&self) -> &str {
        let len = self.path_len();
        &self.text()[len..]
    }

    fn path_len(&self) -> usize {
        (self.header().path_len & !HAS_POLICY) as usize
    }

    fn has_policy(&self) -> bool {
        self.header().path_len & HAS_POLICY != 0
    }

    fn header(&self) -> &Header {
        // SAFETY: the block lives while any handle does, and its header is never written
        // after `new` but for the atomic count.
        unsafe { self.block.as_ref() }
    }

    /// Path and destination, one after the other.
    fn text(&self) -> &str {
        let header = self.header();
        let len = header.text_len as usize;
        let offset = Self::parts(header.text_len, self.has_policy()).text;
        // SAFETY: `new` copied `len` bytes of two `&str`s at this offset, split at a `&str`
        // boundary, and they are never written again: valid UTF-8 for the block's life.
        unsafe {
            let start = self.block.as_ptr().cast::<u8>().add(offset);
            let bytes = std::slice::from_raw_parts(start, len);
            std::str::from_utf8_unchecked(bytes)
        }
    }

    /// The layout of a block and where its parts start. Without a policy: the header, then
    /// the text (as before policies existed). With one: the header, the `Arc`, the text.
    fn parts(text_len: u32, with_policy: bool) -> Parts {
        let header = Layout::new::<Header>();
        // Checked: on a 32-bit target the sum could wrap and under-allocate.
        let text = Layout::array::<u8>(text_len as usize).expect("route block size");
        if !with_policy {
            let (layout, text) = header.extend(text).expect("route block layout");
            return Parts {
                layout,
                policy: None,
                text,
            };
        }
        let (layout, policy) = header
            .extend(Layout::new::<Arc<UserPolicy>>())
            .expect("route block layout");
        let (layout, text) = layout.extend(text).expect("route block layout");
        Parts {
            layout,
            policy: Some(policy),
            text,
        }
    }

    #[cfg(test)]
    fn layout(text_len: u32) -> Layout {
        Self::parts(text_len, false).layout
    }
}

impl Clone for Route {
    fn clone(&self) -> Self {
        // Relaxed, as in `Arc::clone`: a new handle is made from an existing one, which
        // keeps the block alive; nothing else is ordered by the increment.
        let before = self.header().refs.fetch_add(1, Ordering::Relaxed);
        if before > MAX_REFS {
            std::process::abort();
        }
        Self { block: self.block }
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        // Release then Acquire before freeing, as in `Arc::drop`: every use of the block
        // through other handles happens before it is freed. (As in `Arc`, the `&Header`
        // of this call outlives the decrement while another thread may free the block;
        // it is not used after, rust-lang/rust#55005.)
        if self.header().refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        atomic::fence(Ordering::Acquire);
        let parts = Self::parts(self.header().text_len, self.has_policy());
        // SAFETY: this was the last handle. A flagged block holds an `Arc<UserPolicy>` at
        // `parts.policy`, written once by `with_policy`: it is dropped exactly once, here.
        // The block came from `alloc` with this layout.
        unsafe {
            if let Some(offset) = parts.policy {
                let slot = self.block.as_ptr().cast::<u8>().add(offset);
                ptr::drop_in_place(slot.cast::<Arc<UserPolicy>>());
            }
            alloc::dealloc(self.block.as_ptr().cast(), parts.layout);
        }
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
            && self.header().path_len == other.header().path_len
            && self.policy().map(Arc::as_ptr) == other.policy().map(Arc::as_ptr)
    }
}
impl Eq for Route {}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("path", &self.path())
            .field("dst", &self.dst())
            .field("policy", &self.policy().map(|p| p.limits()))
            .finish()
    }
}

/// A set entry keyed by the route's path, so a set of routes is looked up by `&str`.
#[derive(Clone, Debug)]
struct ByPath(Route);

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
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|entry| &entry.0)
    }

    /// The route for `path`, if a user has it.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
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
                    self.routes.replace(ByPath(route.clone()));
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
                    self.routes.replace(ByPath(route.clone()));
                }
                for path in remove {
                    self.routes.remove(&**path);
                }
            }
        }
    }
}

impl RouteChange {
    /// The routes this change adds or replaces.
    pub fn upserted(&self) -> &[Route] {
        match self {
            RouteChange::Upsert(routes) | RouteChange::Sync { upsert: routes, .. } => routes,
            RouteChange::Remove(_) | RouteChange::Clear => &[],
        }
    }
}

/// One batch of changes, applied whole by every table that receives it.
#[derive(Debug)]
pub enum RouteChange {
    /// Add these users, replacing any with the same path; a later duplicate in the list wins.
    Upsert(Vec<Route>),
    /// Delete the users with these paths; unknown paths are ignored.
    Remove(Vec<Box<str>>),
    /// Delete every user.
    Clear,
    /// A full sync: upsert these, then remove those, as one change.
    Sync {
        upsert: Vec<Route>,
        remove: Vec<Box<str>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, dst: &str) -> Route {
        Route::new(path, dst)
    }

    #[test]
    fn route_keeps_path_and_destination_apart() {
        let r = route("/ü-path", "[::1]:443");
        assert_eq!(r.path(), "/ü-path");
        assert_eq!(r.dst(), "[::1]:443");
        let empty = route("", "");
        assert_eq!((empty.path(), empty.dst()), ("", ""));
        // The split is by length, not by content: a path may look like a destination.
        let odd = route("/a:1", "b:2");
        assert_eq!((odd.path(), odd.dst()), ("/a:1", "b:2"));
        assert_ne!(route("/ab", "c"), route("/a", "bc"));
        assert_eq!(route("/a", "bc"), route("/a", "bc"));
        assert_eq!(
            format!("{:?}", route("/p", "d:1")),
            r#"Route { path: "/p", dst: "d:1", policy: None }"#
        );
    }

    #[test]
    fn a_route_with_limits_carries_one_shared_policy() {
        use crate::control::policy::Limits;
        let limits = Limits {
            conn_limit: 2,
            ..Limits::default()
        };
        let policy = Arc::new(UserPolicy::new(&limits));
        let limited = Route::with_policy("/limited", "[::1]:443", Some(Arc::clone(&policy)));
        assert_eq!((limited.path(), limited.dst()), ("/limited", "[::1]:443"));
        assert!(Arc::ptr_eq(limited.policy().unwrap(), &policy));
        let copies: Vec<Route> = (0..3).map(|_| limited.clone()).collect();
        assert_eq!(Arc::strong_count(&policy), 2);
        drop(limited);
        assert_eq!(copies[2].policy().unwrap().limits(), limits);
        drop(copies);
        // The last handle dropped the block's `Arc`.
        assert_eq!(Arc::strong_count(&policy), 1);
        assert!(route("/plain", "h:1").policy().is_none());
        assert_ne!(
            Route::with_policy("/a", "h:1", Some(policy)),
            route("/a", "h:1")
        );
    }

    #[test]
    fn route_is_one_pointer_and_one_small_block() {
        assert_eq!(size_of::<Route>(), size_of::<usize>());
        assert_eq!(size_of::<Option<Route>>(), size_of::<usize>());
        // A panel's 16-hex-digit path and an IPv4 destination: 40 bytes, which glibc
        // serves from a 48-byte chunk.
        assert_eq!(Route::layout(17 + 11).size(), 40);
    }

    #[test]
    fn clones_share_the_block_across_threads_until_the_last_drop() {
        let original = route("/shared", "127.0.0.1:1");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mine = original.clone();
                std::thread::spawn(move || {
                    let copies: Vec<Route> = (0..1000).map(|_| mine.clone()).collect();
                    assert!(copies.iter().all(|c| c.path() == "/shared"));
                    mine
                })
            })
            .collect();
        let returned: Vec<Route> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(original.header().refs.load(Ordering::Relaxed), 5);
        assert!(returned.iter().all(|r| r.block == original.block));
        drop(returned);
        assert_eq!(original.header().refs.load(Ordering::Relaxed), 1);
        assert_eq!(original.dst(), "127.0.0.1:1");
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
