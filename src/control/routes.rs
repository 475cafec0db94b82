//! Users and where their bytes go: the route table and the changes the controller makes
//! to it.
//!
//! The controller owns the authoritative [`RouteTable`], built of immutable shards that
//! every worker shares; each worker has its own [`RouteView`], an array of handles to
//! those shards, which the data path reads without a lock or an atomic operation. Each
//! change is one [`RouteChange`], applied to the controller's table, which returns it as a
//! [`RouteUpdate`] (the new versions of the shards it touched), sent in slices to every
//! worker (see [`crate::control::broadcast`]). A user costs its route block and a slot in
//! one shard, whatever the number of workers. This module knows nothing of threads,
//! sockets or HTTP.
//!
//! A user with limits (issue 13) carries its shared [`UserPolicy`] in its route block: a
//! flag bit in the header says the block has one more word, an `Arc<UserPolicy>`, before
//! the text. Blocks of users without limits are exactly as before: no larger, no lookup.

use std::alloc::{self, Layout};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::atomic::{self, AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

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
#[repr(transparent)]
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

    /// The block, with this handle's count, for a shard slot to hold.
    fn into_raw(self) -> NonNull<Header> {
        ManuallyDrop::new(self).block
    }

    /// A handle from a block taken out of a shard slot, with the count the slot held.
    ///
    /// # Safety
    /// `block` came from [`Route::into_raw`] and its count is handed over once.
    unsafe fn from_raw(block: NonNull<Header>) -> Self {
        Self { block }
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

// The table: immutable shards shared by the controller and every worker.
//
// Each worker used to keep its own hash set of every user (an 8-byte pointer and a control
// byte per user at about half load: 19 bytes per user per worker, 371 B per user with 16
// workers). Now the controller builds the table as shards (by the top bits of the path's
// hash), each a small open-addressing array that is never written once it is shared; a
// change builds new versions of the shards it touches and sends them to the workers, which
// swap them into their own array of shard pointers. What a worker owns is that array: a
// few bytes per user (see `USERS_PER_SHARD`), whatever the number of users per shard.
//
// Who owns a route (its one count for "being in the table")? Copying a shard must not touch
// every route block in it: that is a cache miss per route, seconds for a million users. So
// slots hold plain pointers, and the count belongs to the newest version of the shard that
// holds the route. When the controller builds a successor it marks the old version
// `disowned`: the routes it carries into the successor are the successor's now, and those
// it displaces (removed, or replaced by a new destination) go to the update's `retired`
// list, which the message carries to every worker and which is dropped with it.
//
// Why a worker may still read a disowned version: a worker swaps shard versions only by
// installing updates, in the order the controller made them. While it holds version V of a
// shard, every update after V is still queued for it (or being installed), and each
// holds, alive, either the shard's next version (owning what it carried over) or, in its
// `retired` list, what it displaced. So every route V points to is owned by something alive
// until the worker has moved past V. (The controller is the only builder: a `RouteView`
// cannot build versions, only install them, so no two tables ever own one route.)

/// Fewest and most shards, as powers of two. The fewest keeps an empty table small (64
/// shards, 1.5 KiB per worker); the most bounds a worker's array at 1.5 MiB.
const MIN_SHARD_BITS: u32 = 6;
const MAX_SHARD_BITS: u32 = 16;

/// Users per shard above which the table doubles its shard count: a worker's array then
/// costs 24 / 64 to 24 / 128 bytes per user (0.2 to 0.4 B), and a one-user change copies
/// a shard of 64 to 128 users (1 to 4 KiB).
/// (Unit tests use small figures so that a few hundred users grow and slice the table.)
const USERS_PER_SHARD: usize = if cfg!(test) { 4 } else { 128 };

/// How many shards, and how many upserted users, a worker installs in one step of a large
/// update before it lets its tunnels run again (see [`RouteUpdate::into_slices`]).
const SHARDS_PER_SLICE: usize = if cfg!(test) { 8 } else { 256 };
const ROUTES_PER_SLICE: usize = if cfg!(test) { 16 } else { 2048 };

/// One entry of a shard: the full hash of the path (so probing and rehashing never touch
/// the route block), and the route, or `None` for an empty slot.
#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    route: Option<NonNull<Header>>,
}

/// One version of one shard: a power-of-two array of slots, at most three quarters full,
/// with linear probing. Written only while one table holds it alone; shared, it is
/// immutable but for `disowned`.
struct Shard {
    /// Set when a later version (or an update's `retired` list) took over this version's
    /// routes: dropping it then frees only the slots, not the routes.
    disowned: AtomicBool,
    /// Routes in the slots.
    len: u32,
    /// Slots, a power of two (1 for an empty shard: a probe always finds an empty slot).
    cap: u32,
    /// `cap` slots, zeroed (empty) where no route is.
    slots: NonNull<Slot>,
}

// SAFETY: a shard is written only through `&mut` (while one table holds it alone, checked
// by `Arc::get_mut`); shared, its slots are read-only and `disowned` is atomic. The routes
// it points to are themselves `Send + Sync`.
unsafe impl Send for Shard {}
// SAFETY: as above.
unsafe impl Sync for Shard {}

/// The slot count that keeps `len` routes at most three quarters full.
fn capacity_for(len: usize) -> usize {
    if len == 0 {
        return 1;
    }
    let cap = (len * 4).div_ceil(3).next_power_of_two();
    cap.max(2)
}

impl Shard {
    fn with_capacity(cap: usize) -> Self {
        Self::allocate(cap, true)
    }

    /// A shard of `cap` slots, empty when `zeroed`; else the slots are uninitialised and
    /// the caller must write them all before anything reads them.
    fn allocate(cap: usize, zeroed: bool) -> Self {
        debug_assert!(cap.is_power_of_two());
        let layout = Layout::array::<Slot>(cap).expect("shard size");
        // SAFETY: `cap >= 1` and `Slot` is not zero-sized: a non-zero size. All-zero bytes
        // are a valid `Slot` (hash 0, `None`): an empty slot.
        let raw = unsafe {
            if zeroed {
                alloc::alloc_zeroed(layout)
            } else {
                alloc::alloc(layout)
            }
        };
        let Some(slots) = NonNull::new(raw.cast::<Slot>()) else {
            alloc::handle_alloc_error(layout);
        };
        Self {
            disowned: AtomicBool::new(false),
            len: 0,
            cap: u32::try_from(cap).expect("shard under 2^32 slots"),
            slots,
        }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: `slots` holds `cap` initialised slots for the shard's life; shared, they
        // are not written (see the type).
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), self.cap as usize) }
    }

    fn slots_mut(&mut self) -> &mut [Slot] {
        // SAFETY: as in `slots`; `&mut self` means no one else reads them now.
        unsafe { std::slice::from_raw_parts_mut(self.slots.as_ptr(), self.cap as usize) }
    }

    fn mask(&self) -> usize {
        self.cap as usize - 1
    }

    /// Where the route for `path` is, if this shard has it.
    fn find(&self, hash: u64, path: &str) -> Option<usize> {
        let slots = self.slots();
        let mask = self.mask();
        let mut i = hash as usize & mask;
        loop {
            let slot = &slots[i];
            let route = slot.route.as_ref()?;
            if slot.hash == hash && as_route(route).path() == path {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// A new version with the same slots (the routes are not counted again: see above).
    fn copy(&self) -> Self {
        // Not zeroed first: every slot is written at once (a third of a load's time went
        // to zeroing and copying shards).
        let mut copy = Self::allocate(self.cap as usize, false);
        // SAFETY: both hold `cap` slots; the copy's are all written here, before any read.
        unsafe {
            ptr::copy_nonoverlapping(self.slots.as_ptr(), copy.slots.as_ptr(), self.cap as usize)
        };
        copy.len = self.len;
        copy
    }

    /// Puts a slot whose path is not in the shard into the first free place, growing
    /// first if it would be more than three quarters full.
    fn place(&mut self, slot: Slot) {
        if capacity_for(self.len as usize + 1) > self.cap as usize {
            let mut bigger = Self::with_capacity(capacity_for(self.len as usize + 1));
            for &old in self.slots().iter().filter(|s| s.route.is_some()) {
                bigger.place(old);
            }
            // The routes moved with their slots; this copy must not free them.
            *self.disowned.get_mut() = true;
            *self = bigger;
        }
        let mask = self.mask();
        let mut i = slot.hash as usize & mask;
        let slots = self.slots_mut();
        while slots[i].route.is_some() {
            i = (i + 1) & mask;
        }
        slots[i] = slot;
        self.len += 1;
    }

    /// Adds `route`, or replaces the route with its path (which goes to `retired`).
    fn upsert(&mut self, hash: u64, route: Route, retired: &mut Vec<Route>) {
        let slot = Slot {
            hash,
            route: Some(route.into_raw()),
        };
        match self.find(hash, as_route(&slot.route.unwrap()).path()) {
            Some(i) => {
                let old = std::mem::replace(&mut self.slots_mut()[i], slot);
                // SAFETY: the slot's count belonged to this shard version (it is not
                // disowned while a table builds it); it moves to `retired`.
                retired.extend(old.route.map(|r| unsafe { Route::from_raw(r) }));
            }
            None => self.place(slot),
        }
    }

    /// Takes the route for `path` out (to `retired`), if the shard has it, closing the gap
    /// by moving later entries of the probe run back (no tombstones).
    fn remove(&mut self, hash: u64, path: &str, retired: &mut Vec<Route>) {
        let Some(found) = self.find(hash, path) else {
            return;
        };
        let mask = self.mask();
        let slots = self.slots_mut();
        let old = std::mem::replace(
            &mut slots[found],
            Slot {
                hash: 0,
                route: None,
            },
        );
        // SAFETY: as in `upsert`: this version owned the count; it moves to `retired`.
        retired.extend(old.route.map(|r| unsafe { Route::from_raw(r) }));
        let mut hole = found;
        let mut i = found;
        loop {
            i = (i + 1) & mask;
            let slot = slots[i];
            if slot.route.is_none() {
                break;
            }
            let home = slot.hash as usize & mask;
            // The entry may fill the hole if the hole lies on its probe path, between its
            // home slot and where it sits.
            if i.wrapping_sub(home) & mask >= i.wrapping_sub(hole) & mask {
                slots[hole] = slot;
                slots[i] = Slot {
                    hash: 0,
                    route: None,
                };
                hole = i;
            }
        }
        self.len -= 1;
    }

    /// This shard's slots rebuilt at the size its routes need (after removals).
    fn fitted(&mut self) {
        let want = capacity_for(self.len as usize);
        if want * 4 > self.cap as usize {
            return;
        }
        let mut smaller = Self::with_capacity(want);
        for &slot in self.slots().iter().filter(|s| s.route.is_some()) {
            smaller.place(slot);
        }
        *self.disowned.get_mut() = true;
        *self = smaller;
    }

    /// The routes, taken out of this version (which no longer owns them).
    fn disown_into(&self, retired: &mut Vec<Route>) {
        let was = self.disowned.swap(true, Ordering::AcqRel);
        assert!(!was, "a shard version is disowned once");
        for slot in self.slots() {
            // SAFETY: this version owned the counts until the swap above; they move to
            // `retired`, once (the assertion).
            retired.extend(slot.route.map(|r| unsafe { Route::from_raw(r) }));
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if !*self.disowned.get_mut() {
            for slot in self.slots() {
                // SAFETY: not disowned: this is the newest version, which owns one count
                // of each of its routes; its last handle is going.
                drop(slot.route.map(|r| unsafe { Route::from_raw(r) }));
            }
        }
        let layout = Layout::array::<Slot>(self.cap as usize).expect("shard size");
        // SAFETY: `slots` came from `alloc_zeroed` with this layout.
        unsafe { alloc::dealloc(self.slots.as_ptr().cast(), layout) };
    }
}

/// A slot's route as a [`Route`] (without taking a count: it borrows the slot).
fn as_route(block: &NonNull<Header>) -> &Route {
    // SAFETY: `Route` is `repr(transparent)` over `NonNull<Header>`, and every slot's
    // pointer is a live route block (see the ownership notes above).
    unsafe { &*(block as *const NonNull<Header>).cast::<Route>() }
}

/// A table's handle on one shard version: the version, and where its slots are, so that
/// a lookup reads the slot it probes without first reading the shard's header.
struct ShardRef {
    slots: NonNull<Slot>,
    mask: usize,
    /// The version, counted; `None` only in a view in the middle of a split, for a new
    /// index that still reads its parent's slots (the view's `parked` keeps it alive).
    shard: Option<Arc<Shard>>,
}

// SAFETY: `slots` points into a shard the handle (or, while a view splits, the view)
// keeps alive; see `Shard`.
unsafe impl Send for ShardRef {}
// SAFETY: as above.
unsafe impl Sync for ShardRef {}

impl ShardRef {
    fn new(shard: Arc<Shard>) -> Self {
        Self {
            slots: shard.slots,
            mask: shard.mask(),
            shard: Some(shard),
        }
    }

    /// The version this handle counts. A table's handles always count theirs.
    fn owner(&self) -> &Arc<Shard> {
        self.shard
            .as_ref()
            .expect("a table's shard handles own their shards")
    }

    fn owner_mut(&mut self) -> &mut Arc<Shard> {
        self.shard
            .as_mut()
            .expect("a table's shard handles own their shards")
    }

    /// The slots this handle reads.
    fn slots(&self) -> &[Slot] {
        // SAFETY: `mask + 1` slots of a shard kept alive by this handle or its view,
        // never written while shared.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), self.mask + 1) }
    }
}

/// The one hash key of the process: the controller's shards and the workers' lookups must
/// hash alike. Random per process, as `HashMap`'s, so that paths cannot be chosen to
/// collide.
fn process_hasher() -> RandomState {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    HASHER.get_or_init(RandomState::new).clone()
}

/// What the owning table and the workers' views share: the array of shard handles and
/// the lookup.
struct Shards {
    /// `1 << bits` handles; a path's shard is the top `bits` bits of its hash.
    refs: Vec<ShardRef>,
    bits: u32,
    len: usize,
    hasher: RandomState,
}

impl fmt::Debug for Shards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.refs.len())
            .field("len", &self.len)
            .finish()
    }
}

impl Shards {
    fn empty(bits: u32, hasher: RandomState) -> Self {
        let empty = Arc::new(Shard::with_capacity(1));
        Self {
            refs: (0..1usize << bits)
                .map(|_| ShardRef::new(Arc::clone(&empty)))
                .collect(),
            bits,
            len: 0,
            hasher,
        }
    }

    fn hash(&self, path: &str) -> u64 {
        self.hasher.hash_one(path)
    }

    fn index(&self, hash: u64) -> usize {
        // `bits` is at least MIN_SHARD_BITS: the shift is below 64.
        (hash >> (64 - self.bits)) as usize
    }

    fn lookup(&self, path: &str) -> Option<&Route> {
        let hash = self.hash(path);
        let shard = &self.refs[self.index(hash)];
        let mut i = hash as usize & shard.mask;
        loop {
            // SAFETY: `i <= mask`, within the `mask + 1` slots of the version `shard`
            // keeps alive; shared versions are never written.
            let slot = unsafe { &*shard.slots.as_ptr().add(i) };
            let route = as_route(slot.route.as_ref()?);
            if slot.hash == hash && route.path() == path {
                return Some(route);
            }
            i = (i + 1) & shard.mask;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Route> {
        self.refs.iter().flat_map(|r| {
            r.slots()
                .iter()
                .filter_map(|slot| slot.route.as_ref().map(as_route))
        })
    }
}

/// The users, looked up by path: the controller's authoritative table, which builds every
/// change as new shard versions ([`RouteTable::apply`]) for the workers' [`RouteView`]s.
#[derive(Debug)]
pub struct RouteTable {
    shards: Shards,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    pub fn new() -> Self {
        Self {
            shards: Shards::empty(MIN_SHARD_BITS, process_hasher()),
        }
    }

    /// Every route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.shards.iter()
    }

    /// The route for `path`, if a user has it.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        self.shards.lookup(path)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.shards.len
    }

    pub fn is_empty(&self) -> bool {
        self.shards.len == 0
    }

    /// A view of this table as it is now, for a worker that starts after changes were made
    /// (tests; workers start with an empty view and get every change).
    pub fn view(&self) -> RouteView {
        RouteView {
            parked: Default::default(),
            first_parked: 0,
            split_bits: 0,
            shards: Shards {
                refs: self
                    .shards
                    .refs
                    .iter()
                    .map(|r| ShardRef::new(Arc::clone(r.owner())))
                    .collect(),
                bits: self.shards.bits,
                len: self.shards.len,
                hasher: self.shards.hasher.clone(),
            },
        }
    }

    /// Applies one change, and returns it as the new shard versions that bring a
    /// [`RouteView`] of the table before the change to the table after it. Applying the
    /// same sequence of changes gives the same routes; installing the updates in order
    /// gives every view the table's shards.
    pub fn apply(&mut self, change: &RouteChange) -> RouteUpdate {
        let mut draft = Draft {
            touched: vec![false; self.shards.refs.len()],
            replaced: Vec::new(),
            retired: Vec::new(),
        };
        let (upsert, remove): (&[Route], &[Box<str>]) = match change {
            RouteChange::Upsert(routes) => (routes, &[]),
            RouteChange::Remove(paths) => (&[], paths),
            RouteChange::Sync { upsert, remove } => (upsert, remove),
            RouteChange::Clear => {
                // Every shard becomes the one empty shard (in slices, on the workers), then
                // the table goes back to its fewest shards: a view's array of 65,536
                // shards is 1.5 MiB, for every worker.
                let empty = Arc::new(Shard::with_capacity(1));
                let mut shards = Vec::with_capacity(self.shards.refs.len());
                for (index, r) in self.shards.refs.iter().enumerate() {
                    // The shared empty shard owns nothing.
                    if r.owner().len > 0 {
                        r.owner().disown_into(&mut draft.retired);
                    }
                    draft.replaced.push(Arc::clone(r.owner()));
                    shards.push((index as u32, Arc::clone(&empty)));
                }
                self.shards.refs = (0..1usize << MIN_SHARD_BITS)
                    .map(|_| ShardRef::new(Arc::clone(&empty)))
                    .collect();
                self.shards.bits = MIN_SHARD_BITS;
                self.shards.len = 0;
                return RouteUpdate {
                    split: None,
                    shards,
                    shrink: Some(MIN_SHARD_BITS),
                    replaced: draft.replaced,
                    retired: draft.retired,
                    upserted: Vec::new(),
                    len: 0,
                };
            }
        };
        let mut upserted = Vec::with_capacity(upsert.len());
        for route in upsert {
            let hash = self.shards.hash(route.path());
            let index = self.shards.index(hash);
            let shard = self.writable(index, &mut draft);
            let before = shard.len;
            shard.upsert(hash, route.clone(), &mut draft.retired);
            let added = shard.len > before;
            self.shards.len += usize::from(added);
            upserted.push((hash, route.clone()));
        }
        for path in remove {
            let hash = self.shards.hash(path);
            let index = self.shards.index(hash);
            // Unknown paths copy no shard.
            if self.shards.refs[index].owner().find(hash, path).is_none() {
                continue;
            }
            let shard = self.writable(index, &mut draft);
            shard.remove(hash, path, &mut draft.retired);
            self.shards.len -= 1;
        }
        // Past `USERS_PER_SHARD` users a shard on average, split every shard (rare: once
        // per doubling of the users).
        let bits = shard_bits_for(self.shards.len);
        let split = (bits > self.shards.bits).then(|| {
            self.grow(bits, &mut draft.replaced);
            bits
        });
        let Draft {
            touched,
            replaced,
            retired,
        } = draft;
        let mut shards = Vec::new();
        // (After a split `touched` counts the old shards; every shard is new then.)
        for index in (0..self.shards.refs.len()).filter(|&i| split.is_some() || touched[i]) {
            let r = &mut self.shards.refs[index];
            if let Some(shard) = Arc::get_mut(r.owner_mut()) {
                shard.fitted();
            }
            // Writing may have moved the slots: refresh the handle.
            *r = ShardRef::new(Arc::clone(r.owner()));
            shards.push((index as u32, Arc::clone(r.owner())));
        }
        // Per shard in order, keeping the change's order within a shard (a later
        // duplicate is attached last, as it is the one that stays).
        let mut upserted: Vec<(u32, Route)> = upserted
            .into_iter()
            .map(|(hash, route)| (self.shards.index(hash) as u32, route))
            .collect();
        upserted.sort_by_key(|&(index, _)| index);
        RouteUpdate {
            split,
            shards,
            shrink: None,
            replaced,
            retired,
            upserted,
            len: self.shards.len,
        }
    }

    /// Shard `index`, ready to be written: the version itself if this table holds it
    /// alone (fresh in this change, or no view holds it any more), else a copy that
    /// takes over its routes.
    fn writable(&mut self, index: usize, draft: &mut Draft) -> &mut Shard {
        draft.touched[index] = true;
        let r = &mut self.shards.refs[index];
        if Arc::get_mut(r.owner_mut()).is_none() {
            let copy = r.owner().copy();
            // Never set twice: a version is copied once, then replaced here. (The shared
            // empty shard owns nothing; marking it changes nothing.)
            r.owner().disowned.store(true, Ordering::Release);
            let old = std::mem::replace(r, ShardRef::new(Arc::new(copy)));
            draft.replaced.extend(old.shard);
        }
        Arc::get_mut(r.owner_mut()).expect("a fresh copy is held by this table alone")
    }

    /// Splits every shard into `1 << (bits - self.bits)` new ones.
    fn grow(&mut self, bits: u32, replaced: &mut Vec<Arc<Shard>>) {
        let split = bits - self.shards.bits;
        let mut refs = Vec::with_capacity(1 << bits);
        for r in std::mem::take(&mut self.shards.refs) {
            let old = r.owner();
            let mut counts = vec![0usize; 1 << split];
            let child = |hash: u64| ((hash >> (64 - bits)) as usize) & ((1 << split) - 1);
            for slot in old.slots().iter().filter(|s| s.route.is_some()) {
                counts[child(slot.hash)] += 1;
            }
            let mut children: Vec<Shard> = counts
                .iter()
                .map(|&n| Shard::with_capacity(capacity_for(n)))
                .collect();
            for &slot in old.slots().iter().filter(|s| s.route.is_some()) {
                children[child(slot.hash)].place(slot);
            }
            // The children own the routes now. (The shared empty shard owns none.)
            old.disowned.store(true, Ordering::Release);
            refs.extend(children.into_iter().map(|c| ShardRef::new(Arc::new(c))));
            replaced.extend(r.shard);
        }
        self.shards.refs = refs;
        self.shards.bits = bits;
    }
}

/// What a change in the making has done so far.
struct Draft {
    /// Shards it wrote, by index.
    touched: Vec<bool>,
    /// The shard versions it superseded (see [`RouteUpdate`]).
    replaced: Vec<Arc<Shard>>,
    /// The routes it displaced.
    retired: Vec<Route>,
}

/// How many shards (as a power of two) `len` users need.
fn shard_bits_for(len: usize) -> u32 {
    let shards = len.div_ceil(USERS_PER_SHARD).next_power_of_two();
    shards
        .trailing_zeros()
        .clamp(MIN_SHARD_BITS, MAX_SHARD_BITS)
}

/// A worker's view of the routes: its own array of shard handles, changed only by
/// installing the controller's [`RouteUpdate`]s in order. Lookups read it without a lock
/// or an atomic operation.
pub struct RouteView {
    shards: Shards,
    /// During a split: the shards split, in order, each kept alive until every new index
    /// that reads its slots has its own shard (see `install`).
    parked: std::collections::VecDeque<Arc<Shard>>,
    /// The index of the first parked shard, in the table before the split.
    first_parked: usize,
    /// How many bits the split added: parent `p` covers new indexes `p << split_bits ..`.
    split_bits: u32,
}

impl fmt::Debug for RouteView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteView")
            .field("shards", &self.shards)
            .field("parked", &self.parked.len())
            .finish()
    }
}

impl Default for RouteView {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteView {
    /// The view of an empty table.
    pub fn new() -> Self {
        Self {
            shards: Shards::empty(MIN_SHARD_BITS, process_hasher()),
            parked: Default::default(),
            first_parked: 0,
            split_bits: 0,
        }
    }

    /// The route for `path`, if a user has it.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        self.shards.lookup(path)
    }

    /// Every route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.shards.iter()
    }

    /// How many users there are (as of the last slice installed).
    pub fn len(&self) -> usize {
        self.shards.len
    }

    pub fn is_empty(&self) -> bool {
        self.shards.len == 0
    }

    /// Swaps in the shard versions of `update`: one handle exchanged per shard, however
    /// many users it holds.
    pub fn install(&mut self, update: &RouteUpdate) {
        if let Some(bits) = update.split {
            // The table split its shards: each new index reads, for now, the slots of the
            // shard it came from, which holds all of its users (the probe uses the hash's
            // low bits, the index its top ones); the slices that follow bring the new
            // shards. No count is taken here, so this step costs the same whatever the
            // shards' counts are doing on other cores: the parents are parked instead.
            debug_assert!(self.parked.is_empty(), "a split completes before the next");
            let split_bits = bits - self.shards.bits;
            let copies = 1usize << split_bits;
            let mut refs = Vec::with_capacity(self.shards.refs.len() * copies);
            for r in std::mem::take(&mut self.shards.refs) {
                refs.extend((0..copies).map(|_| ShardRef {
                    slots: r.slots,
                    mask: r.mask,
                    shard: None,
                }));
                self.parked.extend(r.shard);
            }
            self.shards.refs = refs;
            self.shards.bits = bits;
            self.first_parked = 0;
            self.split_bits = split_bits;
        }
        for (index, shard) in &update.shards {
            self.shards.refs[*index as usize] = ShardRef::new(Arc::clone(shard));
        }
        // Parents whose new indexes all have their own shards now are read no more.
        while !self.parked.is_empty() {
            let from = self.first_parked << self.split_bits;
            let children = &self.shards.refs[from..from + (1 << self.split_bits)];
            if children.iter().any(|r| r.shard.is_none()) {
                break;
            }
            self.parked.pop_front();
            self.first_parked += 1;
        }
        if let Some(bits) = update.shrink {
            // After a clear, every handle is to the one empty shard: keep the first few.
            self.shards.refs.truncate(1 << bits);
            self.shards.refs.shrink_to_fit();
            self.shards.bits = bits;
        }
        self.shards.len = update.len;
    }
}

/// One change as the workers receive it: the new versions of the shards it touched (for
/// [`RouteView::install`]), the users it added or changed (whose open tunnels take their
/// new limits), and what the change replaced: the routes it displaced, kept alive until
/// every worker is past the shard versions that point to them, and those versions. The
/// controller holds the update until every worker has let go of it (see
/// `broadcast::ask_all`), so both are freed on its thread, not by a worker between its
/// tunnels.
pub struct RouteUpdate {
    /// The table split every shard into `1 << (split - bits before)`: a view first
    /// points each new index at the shard it came from; `shards` then holds every new one.
    split: Option<u32>,
    /// New shard versions by index, in index order.
    shards: Vec<(u32, Arc<Shard>)>,
    /// After a clear, once `shards` has made every shard the empty one: the table's new,
    /// smaller shard count, as a power of two.
    shrink: Option<u32>,
    /// The shard versions the change superseded.
    replaced: Vec<Arc<Shard>>,
    /// Routes removed or replaced by the change (see the ownership notes above).
    retired: Vec<Route>,
    /// The routes the change upserted, by shard index, in index order.
    upserted: Vec<(u32, Route)>,
    /// Users in the table after the change.
    len: usize,
}

impl fmt::Debug for RouteUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteUpdate")
            .field("split", &self.split)
            .field("shrink", &self.shrink)
            .field("shards", &self.shards.len())
            .field("retired", &self.retired.len())
            .field("upserted", &self.upserted.len())
            .field("len", &self.len)
            .finish()
    }
}

impl RouteUpdate {
    /// How many routes the change removed or replaced.
    pub fn displaced(&self) -> usize {
        self.retired.len()
    }

    /// The routes the change added or replaced, in shard order.
    pub fn upserted(&self) -> impl Iterator<Item = &Route> {
        self.upserted.iter().map(|(_, route)| route)
    }

    /// This update as a sequence of smaller ones, each a bounded amount of work for a
    /// worker (at most [`SHARDS_PER_SLICE`] shard handles and about [`ROUTES_PER_SLICE`]
    /// upserted users, or a split alone), to be installed in order with the worker's
    /// tunnels running between them. A lookup between slices finds each user either as
    /// before the change or as after it; the controller still replies only once every
    /// worker installed the last slice.
    pub fn into_slices(self) -> Vec<RouteUpdate> {
        let RouteUpdate {
            split,
            shards,
            shrink,
            replaced,
            retired,
            upserted,
            len,
        } = self;
        let mut slices: Vec<RouteUpdate> = Vec::new();
        let slice = |shards: Vec<(u32, Arc<Shard>)>, upserted: Vec<(u32, Route)>| RouteUpdate {
            split: None,
            shards,
            shrink: None,
            replaced: Vec::new(),
            retired: Vec::new(),
            upserted,
            len,
        };
        if split.is_some() {
            slices.push(RouteUpdate {
                split,
                ..slice(Vec::new(), Vec::new())
            });
        }
        let mut upserted = upserted.into_iter().peekable();
        let mut shards = shards.into_iter().peekable();
        while shards.peek().is_some() {
            let mut these = Vec::new();
            let mut routes = Vec::new();
            while let Some((index, _)) = shards.peek() {
                let index = *index;
                if these.len() == SHARDS_PER_SLICE || routes.len() >= ROUTES_PER_SLICE {
                    break;
                }
                these.extend(shards.next());
                while let Some((_, route)) = upserted.next_if(|(i, _)| *i == index) {
                    routes.push((index, route));
                }
            }
            slices.push(slice(these, routes));
        }
        // Every upserted route's shard was touched, so none is left; were one left, it
        // would still be attached, last.
        let left: Vec<_> = upserted.collect();
        if !left.is_empty() {
            slices.push(slice(Vec::new(), left));
        }
        match slices.last_mut() {
            // What the change replaced goes with the last slice: every earlier slice is
            // installed before it, on every worker.
            Some(last) => {
                last.retired = retired;
                last.replaced = replaced;
                last.shrink = shrink;
            }
            None => slices.push(RouteUpdate {
                retired,
                replaced,
                shrink,
                ..slice(Vec::new(), Vec::new())
            }),
        }
        slices
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

    /// A deterministic generator (xorshift), so a failure repeats.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Checks a table (or view) against the model: same users, same destinations, and
    /// paths the model lacks are not found.
    fn assert_same(
        what: &str,
        lookup: impl Fn(&str) -> Option<String>,
        iter: Vec<(String, String)>,
        len: usize,
        model: &std::collections::HashMap<String, String>,
    ) {
        assert_eq!(len, model.len(), "{what}: len");
        assert_eq!(iter.len(), model.len(), "{what}: iter");
        let listed: std::collections::HashMap<_, _> = iter.into_iter().collect();
        assert_eq!(&listed, model, "{what}: iter");
        for (path, dst) in model {
            assert_eq!(
                lookup(path).as_deref(),
                Some(dst.as_str()),
                "{what}: {path}"
            );
        }
        for absent in ["/never", "", "/p-1"] {
            assert_eq!(lookup(absent), None, "{what}: {absent}");
        }
    }

    /// The property test: random batches of upserts (with duplicates), removes (with
    /// unknown paths), syncs and clears, applied to a table and installed, slice by
    /// slice, in two views (one kept up to date, one that catches up only now and then,
    /// as a busy worker would), all compared with a `HashMap` after every step. Under
    /// Miri this also checks that no route is freed twice, used after it is freed or
    /// leaked, whatever order the shard versions are dropped in.
    #[test]
    fn table_and_views_match_a_hashmap_model() {
        // Under Miri, enough users for the table to split its shards.
        let steps = if cfg!(miri) { 24 } else { 400 };
        let users = if cfg!(miri) { 600 } else { 3000 };
        let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
        let mut table = RouteTable::new();
        let mut view = RouteView::new();
        let mut lagging = RouteView::new();
        let mut queued: Vec<RouteUpdate> = Vec::new();
        let mut model = std::collections::HashMap::new();
        let path = |i: u64| format!("/p{i}");
        for step in 0..steps {
            let batch = 1 + gen.below(if step % 50 == 7 || step < 3 {
                users
            } else {
                40
            });
            let before = model.clone();
            let change = match gen.below(20) {
                0 => RouteChange::Clear,
                1..=4 => RouteChange::Remove(
                    (0..batch)
                        .map(|_| path(gen.below(users + 10)).into_boxed_str())
                        .collect(),
                ),
                5..=7 => RouteChange::Sync {
                    upsert: (0..batch)
                        .map(|_| route(&path(gen.below(users)), &format!("h:{step}")))
                        .collect(),
                    remove: (0..batch / 2)
                        .map(|_| path(gen.below(users)).into_boxed_str())
                        .collect(),
                },
                _ => RouteChange::Upsert(
                    (0..batch)
                        .map(|i| route(&path(gen.below(users)), &format!("h:{step}.{i}")))
                        .collect(),
                ),
            };
            match &change {
                RouteChange::Clear => model.clear(),
                RouteChange::Remove(paths) => paths.iter().for_each(|p| {
                    model.remove(&**p);
                }),
                RouteChange::Upsert(routes) => routes.iter().for_each(|r| {
                    model.insert(r.path().to_string(), r.dst().to_string());
                }),
                RouteChange::Sync { upsert, remove } => {
                    for r in upsert {
                        model.insert(r.path().to_string(), r.dst().to_string());
                    }
                    for p in remove {
                        model.remove(&**p);
                    }
                }
            }
            let update = table.apply(&change);
            drop(change);
            for slice in update.into_slices() {
                view.install(&slice);
                // Between slices each user is as before the change or as after it.
                for _ in 0..8 {
                    let p = path(gen.below(users));
                    let found = view.lookup(&p).map(|r| r.dst().to_string());
                    assert!(
                        found == before.get(&p).cloned() || found == model.get(&p).cloned(),
                        "{p}: {found:?} between slices"
                    );
                }
                queued.push(slice);
            }
            if gen.below(4) == 0 {
                for slice in queued.drain(..) {
                    lagging.install(&slice);
                }
                let pairs = |t: &RouteView| {
                    let v: Vec<_> = t
                        .iter()
                        .map(|r| (r.path().to_string(), r.dst().to_string()))
                        .collect();
                    v
                };
                assert_same(
                    "lagging view",
                    |p| lagging.lookup(p).map(|r| r.dst().to_string()),
                    pairs(&lagging),
                    lagging.len(),
                    &model,
                );
            }
            if cfg!(miri) && step % 5 != 0 {
                continue;
            }
            let pairs: Vec<_> = table
                .iter()
                .map(|r| (r.path().to_string(), r.dst().to_string()))
                .collect();
            assert_same(
                "table",
                |p| table.lookup(p).map(|r| r.dst().to_string()),
                pairs,
                table.len(),
                &model,
            );
            let pairs: Vec<_> = view
                .iter()
                .map(|r| (r.path().to_string(), r.dst().to_string()))
                .collect();
            assert_same(
                "view",
                |p| view.lookup(p).map(|r| r.dst().to_string()),
                pairs,
                view.len(),
                &model,
            );
        }
        // The controller goes first (as at exit); a worker still catching up must find
        // the routes alive: the queued updates hold what the table no longer does.
        drop(table);
        for slice in queued.drain(..) {
            lagging.install(&slice);
        }
        for (path, dst) in &model {
            assert_eq!(lagging.lookup(path).map(Route::dst), Some(dst.as_str()));
        }
    }

    #[test]
    fn the_table_grows_its_shards_and_views_share_them() {
        let mut table = RouteTable::new();
        let mut view = RouteView::new();
        let n = 64 * USERS_PER_SHARD * 4 + 1;
        let update = table.apply(&RouteChange::Upsert(
            (0..n).map(|i| route(&format!("/u{i}"), "h:1")).collect(),
        ));
        assert!(
            update.split.is_some(),
            "a load past its users per shard splits them"
        );
        let bits = table.shards.bits;
        assert!(bits > MIN_SHARD_BITS);
        let slices = update.into_slices();
        assert!(slices.len() > 2, "a split, then the new shards in slices");
        assert!(slices[0].split.is_some() && slices[0].shards.is_empty());
        let before = view.shards.refs.len();
        view.install(&slices[0]);
        // The split step takes no counts: it parks the old shards, and the new indexes
        // read their slots until their own shards come.
        assert_eq!(view.parked.len(), before);
        assert!(view.shards.refs.iter().all(|r| r.shard.is_none()));
        assert!(
            view.is_empty() || view.lookup("/u7").is_none(),
            "new users are not in yet"
        );
        let mut parked = view.parked.len();
        for slice in &slices[1..] {
            view.install(slice);
            assert!(
                view.parked.len() <= parked,
                "parents go as their children come"
            );
            parked = view.parked.len();
            assert!(matches!(
                view.lookup("/u7").map(Route::dst),
                None | Some("h:1")
            ));
        }
        assert!(view.parked.is_empty());
        assert_eq!(view.lookup("/u7").map(Route::dst), Some("h:1"));
        // The view holds the table's shard versions, not copies.
        for (mine, theirs) in view.shards.refs.iter().zip(&table.shards.refs) {
            assert!(Arc::ptr_eq(mine.owner(), theirs.owner()));
        }
        // No shard is more than three quarters full, none far emptier than it need be.
        for r in &table.shards.refs {
            assert!(r.owner().len as usize * 4 <= r.owner().cap as usize * 3);
        }
        // A one-user change copies one shard.
        let update = table.apply(&RouteChange::Upsert(vec![route("/u1", "h:2")]));
        assert_eq!(update.shards.len(), 1);
        assert_eq!(update.retired.len(), 1, "the replaced route is retired");
        view.install(&update);
        assert_eq!(view.lookup("/u1").unwrap().dst(), "h:2");
        assert_eq!(view.len(), n);
        // Removing every user leaves small shards, and the routes go with the update.
        let update = table.apply(&RouteChange::Remove(
            (0..n).map(|i| format!("/u{i}").into_boxed_str()).collect(),
        ));
        assert_eq!(update.retired.len(), n);
        assert!(table.shards.refs.iter().all(|r| r.owner().cap <= 2));
        for slice in update.into_slices() {
            view.install(&slice);
        }
        assert!(view.is_empty() && view.lookup("/u1").is_none());
        // A clear takes the table, and each view, back to the fewest shards.
        view.install(&table.apply(&RouteChange::Upsert(
            (0..n).map(|i| route(&format!("/u{i}"), "h:3")).collect(),
        )));
        assert!(view.shards.refs.len() > 1 << MIN_SHARD_BITS);
        let slices = table.apply(&RouteChange::Clear).into_slices();
        assert!(slices.len() > 1, "a clear goes in slices too");
        for slice in &slices {
            view.install(slice);
        }
        assert_eq!(table.shards.refs.len(), 1 << MIN_SHARD_BITS);
        assert_eq!(view.shards.refs.len(), 1 << MIN_SHARD_BITS);
        assert!(view.is_empty() && view.lookup("/u2").is_none());
    }

    #[test]
    fn slices_are_bounded_and_keep_the_displaced_routes_to_the_end() {
        let mut table = RouteTable::new();
        // Grow first, so the next change is sliced by shard rather than replaced whole.
        drop(table.apply(&RouteChange::Upsert(
            (0..2000).map(|i| route(&format!("/s{i}"), "h:1")).collect(),
        )));
        let update = table.apply(&RouteChange::Upsert(
            (0..1000).map(|i| route(&format!("/s{i}"), "h:2")).collect(),
        ));
        assert!(update.split.is_none());
        let slices = update.into_slices();
        assert!(slices.len() > 1);
        let (last, rest) = slices.split_last().unwrap();
        for slice in rest {
            assert!(slice.shards.len() <= SHARDS_PER_SLICE);
            assert!(slice.retired.is_empty());
        }
        assert_eq!(last.retired.len(), 1000);
        let upserted: usize = slices.iter().map(|s| s.upserted.len()).sum();
        assert_eq!(upserted, 1000);
        // Each slice attaches only users of its own shards.
        for slice in &slices {
            let mine: std::collections::HashSet<u32> =
                slice.shards.iter().map(|(i, _)| *i).collect();
            assert!(slice.upserted.iter().all(|(i, _)| mine.contains(i)));
        }
    }

    #[test]
    fn a_route_outlives_the_table_while_a_tunnel_holds_it() {
        let mut table = RouteTable::new();
        let mut view = RouteView::new();
        view.install(&table.apply(&RouteChange::Upsert(vec![route("/t", "h:1")])));
        let held = view.lookup("/t").unwrap().clone();
        view.install(&table.apply(&RouteChange::Remove(vec!["/t".into()])));
        drop((table, view));
        assert_eq!((held.path(), held.dst()), ("/t", "h:1"));
        assert_eq!(held.header().refs.load(Ordering::Relaxed), 1);
    }
}
