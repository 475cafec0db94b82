//! Counters: per user (bytes each way, connections opened and open) and per worker (the
//! totals `/metrics` reports), kept in plain `Cell`s on the worker that owns the
//! connection, so the data path never writes memory another core reads. The controller
//! gathers them by asking every worker (see [`crate::control::broadcast`]); a worker reads and
//! resets its counters in one step, so a panel that collects with reset never counts a
//! byte twice or loses one.
//!
//! Kicking lives here too: every open connection of a user holds a [`Ticket`] in that
//! user's entry, and a kick wakes them all. So do the per-user limits as a worker applies
//! them (see [`crate::control::policy`]): a limited user's entry holds its shared policy,
//! each of its connections its [`Admission`] (open count and device, released when the
//! ticket drops), the relays charge the policy through the ticket, and the idle sweep
//! closes the tunnels of users out of quota or past their expiry. A user without limits
//! costs one branch per read. This module knows nothing of sockets.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use monoio::time::Instant;

use crate::control::policy::{self, Admission, Denied, Direction, UserPolicy};

/// What kind of connection a [`Ticket`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Plain,
    MuxSession,
}

/// One user's counters on one worker.
#[derive(Default)]
pub(crate) struct UserStats {
    /// Bytes from the client to `dst` (payload, not framing).
    bytes_up: Cell<u64>,
    /// Bytes from `dst` to the client.
    bytes_down: Cell<u64>,
    /// Connections (plain tunnels and mux sessions) opened since the last reset.
    opened: Cell<u64>,
    /// The user's open connections, by ticket id, to kick them.
    open: RefCell<HashMap<u64, Rc<KickFlag>>>,
    /// The user's limits, shared with every worker, if it has any (`Rc` so that a relay
    /// takes it per read without an atomic).
    policy: RefCell<Option<Rc<SharedPolicy>>>,
}

/// A worker's handle on a limited user's shared policy. The relays take it once per read
/// as an `Rc` (a plain increment) rather than cloning the `Arc` (an atomic on a line every
/// worker charging this user writes).
pub(crate) struct SharedPolicy(Arc<UserPolicy>);

impl std::ops::Deref for SharedPolicy {
    type Target = Arc<UserPolicy>;

    fn deref(&self) -> &Arc<UserPolicy> {
        &self.0
    }
}

/// One open connection as the counters see it: whether it must close (kicked, or idle
/// past `-timeout`), and when a byte last moved.
pub(crate) struct KickFlag {
    kicked: Cell<bool>,
    idle: Cell<bool>,
    /// When a byte last moved either way. Plain tunnels are checked against it by the
    /// worker's sweeper, so a tunnel needs no timer of its own (a timer entry is 640
    /// bytes, more than half an idle tunnel's state).
    activity: Cell<Instant>,
    /// Whether the sweeper checks this connection (mux sessions time out per stream).
    swept: bool,
    /// The client's address, if it has one (not a unix-socket peer without PROXY).
    client: Option<std::net::SocketAddr>,
    waker: RefCell<Option<Waker>>,
    /// The connection's place in its user's limits (open count, device), if it has any.
    /// Boxed: most connections have none, and this is all they pay.
    admission: RefCell<Option<Box<Admission>>>,
}

impl KickFlag {
    fn new(swept: bool, client: Option<std::net::SocketAddr>) -> Self {
        Self {
            kicked: Cell::new(false),
            idle: Cell::new(false),
            activity: Cell::new(Instant::now()),
            swept,
            client,
            waker: RefCell::new(None),
            admission: RefCell::new(None),
        }
    }

    fn kick(&self) {
        self.kicked.set(true);
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// Why a connection was told to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closing {
    Kicked,
    Idle,
}

/// One user's totals, as a worker reports them (plain data: it crosses threads).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserTotals {
    pub path: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub tunnels_opened: u64,
    pub tunnels_open: u64,
    /// The client addresses of the open tunnels (the real ones, behind a PROXY-protocol
    /// balancer), so a panel can see where a user connects from.
    #[serde(default)]
    pub clients: Vec<String>,
    /// The user's limits, where it has any (filled by the controller, not the workers).
    #[serde(flatten, default)]
    pub limits: crate::control::policy::Limits,
    /// Bytes left of the user's quota, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_left: Option<u64>,
}

/// The worker-wide counters behind `/metrics`.
#[derive(Default)]
pub(crate) struct WorkerMetrics {
    pub plain_open: Cell<u64>,
    pub plain_total: Cell<u64>,
    pub mux_sessions_open: Cell<u64>,
    pub mux_sessions_total: Cell<u64>,
    pub mux_streams_open: Cell<u64>,
    pub mux_streams_total: Cell<u64>,
    pub bytes_up: Cell<u64>,
    pub bytes_down: Cell<u64>,
    /// Connections refused before a tunnel, by [`Refusal`].
    pub refused: [Cell<u64>; Refusal::ALL.len()],
    pub dial_failures: Cell<u64>,
}

/// Why a data-port connection got no tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    UnknownPath,
    BadUpgrade,
    BadRequest,
    TlsError,
    Timeout,
    OverCapacity,
    /// The user has `conn_limit` tunnels open.
    ConnLimit,
    /// The user has tunnels open from `device_limit` other addresses.
    DeviceLimit,
    /// The user's quota is used up.
    Quota,
    /// The user is past its `expire` time.
    Expired,
}

impl From<Denied> for Refusal {
    fn from(denied: Denied) -> Refusal {
        match denied {
            Denied::ConnLimit => Refusal::ConnLimit,
            Denied::DeviceLimit => Refusal::DeviceLimit,
            Denied::Quota => Refusal::Quota,
            Denied::Expired => Refusal::Expired,
        }
    }
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 10] = [
        Refusal::UnknownPath,
        Refusal::BadUpgrade,
        Refusal::BadRequest,
        Refusal::TlsError,
        Refusal::Timeout,
        Refusal::OverCapacity,
        Refusal::ConnLimit,
        Refusal::DeviceLimit,
        Refusal::Quota,
        Refusal::Expired,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::UnknownPath => "unknown_path",
            Refusal::BadUpgrade => "bad_upgrade",
            Refusal::BadRequest => "bad_request",
            Refusal::TlsError => "tls_error",
            Refusal::Timeout => "timeout",
            Refusal::OverCapacity => "over_capacity",
            Refusal::ConnLimit => "conn_limit",
            Refusal::DeviceLimit => "device_limit",
            Refusal::Quota => "quota",
            Refusal::Expired => "expired",
        }
    }
}

/// A snapshot of [`WorkerMetrics`] that can cross threads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub plain_open: u64,
    pub plain_total: u64,
    pub mux_sessions_open: u64,
    pub mux_sessions_total: u64,
    pub mux_streams_open: u64,
    pub mux_streams_total: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub refused: [u64; Refusal::ALL.len()],
    pub dial_failures: u64,
}

impl WorkerMetrics {
    pub(crate) fn refuse(&self, why: Refusal) {
        bump(&self.refused[why as usize], 1);
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            plain_open: self.plain_open.get(),
            plain_total: self.plain_total.get(),
            mux_sessions_open: self.mux_sessions_open.get(),
            mux_sessions_total: self.mux_sessions_total.get(),
            mux_streams_open: self.mux_streams_open.get(),
            mux_streams_total: self.mux_streams_total.get(),
            bytes_up: self.bytes_up.get(),
            bytes_down: self.bytes_down.get(),
            refused: std::array::from_fn(|i| self.refused[i].get()),
            dial_failures: self.dial_failures.get(),
        }
    }
}

fn bump(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

fn drop_one(cell: &Cell<u64>) {
    cell.set(cell.get().saturating_sub(1));
}

/// One worker's counters, per user and in total.
#[derive(Default)]
pub(crate) struct StatsTable {
    /// Users seen on this worker since their counters were last collected with reset.
    users: RefCell<HashMap<Box<str>, Rc<UserStats>>>,
    pub metrics: Rc<WorkerMetrics>,
    /// Numbers tickets.
    next_ticket: Cell<u64>,
    /// Entries of `users` that hold a policy: while there are none, a route change for
    /// users without limits has nothing to look up here.
    limited: Cell<usize>,
}

impl StatsTable {
    /// Whether the table of users is borrowed at this moment.
    pub(crate) fn in_use(&self) -> bool {
        self.users.try_borrow_mut().is_err()
    }

    /// Counts a new connection of `path`; it is counted as open until the ticket drops.
    /// `admission` is its place in the user's limits, taken before the upgrade was
    /// answered (see [`UserPolicy::admit`]); `None` for a user without limits.
    pub(crate) fn open(
        &self,
        path: &str,
        kind: Kind,
        client: Option<std::net::SocketAddr>,
        admission: Option<Admission>,
    ) -> Ticket {
        let user = {
            let mut users = self.users.borrow_mut();
            match users.get(path) {
                Some(user) => Rc::clone(user),
                None => {
                    let user = Rc::new(UserStats::default());
                    users.insert(path.into(), Rc::clone(&user));
                    user
                }
            }
        };
        let id = self.next_ticket.get();
        self.next_ticket.set(id + 1);
        let flag = Rc::new(KickFlag::new(kind == Kind::Plain, client));
        let held = user.policy.borrow().clone();
        match (admission, held) {
            (Some(admission), None) => {
                // The first connection of a limited user here: its route brought the policy.
                self.set_policy(
                    &user,
                    Some(Rc::new(SharedPolicy(Arc::clone(admission.policy())))),
                );
                *flag.admission.borrow_mut() = Some(Box::new(admission));
            }
            (Some(admission), Some(_)) => {
                *flag.admission.borrow_mut() = Some(Box::new(admission));
            }
            (None, Some(policy)) => {
                // Routed just before the user was given limits: counted, never refused.
                let admission = policy.count_open(client.map(|a| a.ip()));
                *flag.admission.borrow_mut() = Some(Box::new(admission));
            }
            (None, None) => {}
        }
        user.open.borrow_mut().insert(id, Rc::clone(&flag));
        bump(&user.opened, 1);
        match kind {
            Kind::Plain => {
                bump(&self.metrics.plain_open, 1);
                bump(&self.metrics.plain_total, 1);
            }
            Kind::MuxSession => {
                bump(&self.metrics.mux_sessions_open, 1);
                bump(&self.metrics.mux_sessions_total, 1);
            }
        }
        Ticket {
            user,
            metrics: Rc::clone(&self.metrics),
            id,
            kind,
            flag,
        }
    }

    /// The totals of the given users (all when `None`); with `reset`, their byte and
    /// opened counters restart from zero in the same step. Users with nothing to report
    /// are left out and forgotten.
    pub(crate) fn collect(&self, paths: Option<&[Box<str>]>, reset: bool) -> Vec<UserTotals> {
        let mut users = self.users.borrow_mut();
        let mut out = Vec::new();
        let mut report = |path: &str, user: &UserStats| {
            let totals = UserTotals {
                path: path.to_string(),
                bytes_up: user.bytes_up.get(),
                bytes_down: user.bytes_down.get(),
                tunnels_opened: user.opened.get(),
                tunnels_open: user.open.borrow().len() as u64,
                clients: user
                    .open
                    .borrow()
                    .values()
                    .filter_map(|flag| flag.client.map(|a| a.to_string()))
                    .collect(),
                ..Default::default()
            };
            if reset {
                user.bytes_up.set(0);
                user.bytes_down.set(0);
                user.opened.set(0);
            }
            if totals
                != (UserTotals {
                    path: totals.path.clone(),
                    ..Default::default()
                })
            {
                out.push(totals);
            }
        };
        match paths {
            Some(paths) => {
                for path in paths {
                    if let Some(user) = users.get(&**path) {
                        report(path, user);
                    }
                }
            }
            None => {
                for (path, user) in users.iter() {
                    report(path, user);
                }
            }
        }
        let mut forgotten_limited = 0;
        users.retain(|_, user| {
            let keep = !(user.open.borrow().is_empty()
                && user.bytes_up.get() == 0
                && user.bytes_down.get() == 0
                && user.opened.get() == 0);
            if !keep && user.policy.borrow().is_some() {
                forgotten_limited += 1;
            }
            keep
        });
        self.limited.set(self.limited.get() - forgotten_limited);
        out
    }

    /// Tells every open connection of these users to close; returns how many there were.
    pub(crate) fn kick(&self, paths: &[Box<str>]) -> usize {
        let users = self.users.borrow();
        let mut kicked = 0;
        for path in paths {
            if let Some(user) = users.get(&**path) {
                for flag in user.open.borrow().values() {
                    flag.kick();
                    kicked += 1;
                }
            }
        }
        kicked
    }
}

impl StatsTable {
    /// Gives the user of `path` these limits (a route change): its open connections here
    /// are charged to them from their next read, and counted in them (open connections,
    /// devices) if they were not. For a user without limits on a worker where no user has
    /// any, this looks nothing up.
    pub(crate) fn attach(&self, path: &str, policy: Option<&Arc<UserPolicy>>) {
        if policy.is_none() && self.limited.get() == 0 {
            return;
        }
        let users = self.users.borrow();
        let Some(user) = users.get(path) else {
            return;
        };
        let held = user.policy.borrow().clone();
        let same = match (&held, policy) {
            (Some(held), Some(policy)) => Arc::ptr_eq(held, policy),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.set_policy(user, policy.map(|p| Rc::new(SharedPolicy(Arc::clone(p)))));
        let Some(policy) = policy else {
            return;
        };
        for flag in user.open.borrow().values() {
            let counted = flag
                .admission
                .borrow()
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(a.policy(), policy));
            if !counted {
                let admission = policy.count_open(flag.client.map(|a| a.ip()));
                *flag.admission.borrow_mut() = Some(Box::new(admission));
            }
        }
    }

    /// Sets a user's policy here, keeping `limited` right.
    fn set_policy(&self, user: &UserStats, policy: Option<Rc<SharedPolicy>>) {
        let had = user.policy.borrow().is_some();
        let has = policy.is_some();
        *user.policy.borrow_mut() = policy;
        match (had, has) {
            (false, true) => self.limited.set(self.limited.get() + 1),
            (true, false) => self.limited.set(self.limited.get() - 1),
            _ => {}
        }
    }

    /// Tells every plain tunnel with no bytes either way for `timeout` to close, and every
    /// tunnel of a user whose quota ran out or who expired.
    pub(crate) fn sweep(&self, now: Instant, timeout: std::time::Duration) {
        let unix_now = policy::unix_now();
        for user in self.users.borrow().values() {
            if let Some(policy) = &*user.policy.borrow() {
                if policy.must_close(unix_now) {
                    for flag in user.open.borrow().values() {
                        if !flag.kicked.get() {
                            flag.kick();
                        }
                    }
                }
            }
            for flag in user.open.borrow().values() {
                if flag.swept
                    && !flag.idle.get()
                    && now.duration_since(flag.activity.get()) >= timeout
                {
                    flag.idle.set(true);
                    flag.wake();
                }
            }
        }
    }
}

/// One open connection's place in the counters: bytes are added through it, and dropping
/// it counts the connection as closed.
pub(crate) struct Ticket {
    user: Rc<UserStats>,
    metrics: Rc<WorkerMetrics>,
    id: u64,
    kind: Kind,
    flag: Rc<KickFlag>,
}

impl Ticket {
    /// `n` payload bytes went from the client to `dst`.
    pub(crate) fn up(&self, n: usize) {
        bump(&self.user.bytes_up, n as u64);
        bump(&self.metrics.bytes_up, n as u64);
    }

    /// `n` payload bytes went from `dst` to the client.
    pub(crate) fn down(&self, n: usize) {
        bump(&self.user.bytes_down, n as u64);
        bump(&self.metrics.bytes_down, n as u64);
    }

    /// A mux stream opened; it counts until the returned guard drops.
    pub(crate) fn stream(&self) -> StreamGuard {
        bump(&self.metrics.mux_streams_open, 1);
        bump(&self.metrics.mux_streams_total, 1);
        StreamGuard(Rc::clone(&self.metrics))
    }

    /// The user's limits, if it has any: the relays' one branch per read. Seen anew at
    /// every read, so limits changed by the panel apply to open tunnels.
    pub(crate) fn policy(&self) -> Option<Rc<SharedPolicy>> {
        self.user.policy.borrow().clone()
    }

    /// Charges `n` bytes moved in `direction` to the user's limits: takes them off the
    /// quota (closing the user's tunnels here at once when it runs out; the other workers'
    /// sweeps follow within a second) and waits while the speed limit is in debt, so the
    /// relay stops reading meanwhile.
    pub(crate) async fn charge(&self, policy: &UserPolicy, direction: Direction, n: usize) {
        let charge = policy.charge(direction, n);
        if charge.exhausted {
            for flag in self.user.open.borrow().values() {
                flag.kick();
            }
        }
        if !charge.wait.is_zero() {
            // Boxed: a timer is several hundred bytes (and 128-byte aligned), and inline
            // it would take room in every tunnel's future, limited or not.
            Box::pin(monoio::time::sleep(charge.wait)).await;
        }
    }

    /// When a byte last moved; set it whenever one does.
    pub(crate) fn activity(&self) -> &Cell<Instant> {
        &self.flag.activity
    }

    /// Completes when the connection is kicked.
    pub(crate) async fn kicked(&self) {
        self.closing().await;
    }

    /// Completes when the connection must close: kicked, or (plain tunnels) idle.
    pub(crate) async fn closing(&self) -> Closing {
        poll_fn(|cx| {
            if self.flag.kicked.get() {
                Poll::Ready(Closing::Kicked)
            } else if self.flag.idle.get() {
                Poll::Ready(Closing::Idle)
            } else {
                *self.flag.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.user.open.borrow_mut().remove(&self.id);
        match self.kind {
            Kind::Plain => drop_one(&self.metrics.plain_open),
            Kind::MuxSession => drop_one(&self.metrics.mux_sessions_open),
        }
    }
}

/// Counts one open mux stream.
pub(crate) struct StreamGuard(Rc<WorkerMetrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        drop_one(&self.0.mux_streams_open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_with_reset_hands_out_each_byte_once() {
        let table = StatsTable::default();
        let ticket = table.open("/a", Kind::Plain, None, None);
        ticket.up(10);
        ticket.down(7);
        let first = table.collect(None, true);
        assert_eq!(
            first,
            vec![UserTotals {
                path: "/a".into(),
                bytes_up: 10,
                bytes_down: 7,
                tunnels_opened: 1,
                tunnels_open: 1,
                clients: Vec::new(),
                ..Default::default()
            }]
        );
        ticket.up(5);
        let second = table.collect(Some(&["/a".into(), "/b".into()]), false);
        assert_eq!(second[0].bytes_up, 5);
        assert_eq!(second[0].tunnels_opened, 0);
        assert_eq!(table.metrics.snapshot().bytes_up, 15);
        drop(ticket);
        assert_eq!(table.metrics.snapshot().plain_open, 0);
        assert_eq!(table.collect(None, true)[0].tunnels_open, 0);
        // Nothing left to report: the entry is forgotten.
        assert!(table.collect(None, true).is_empty());
        assert!(table.users.borrow().is_empty());
    }

    #[test]
    fn sweep_marks_only_idle_plain_tunnels() {
        let table = StatsTable::default();
        let quiet = table.open("/a", Kind::Plain, None, None);
        let busy = table.open("/a", Kind::Plain, None, None);
        let session = table.open("/a", Kind::MuxSession, None, None);
        let later = Instant::now() + std::time::Duration::from_secs(5);
        busy.activity().set(later);
        table.sweep(later, std::time::Duration::from_secs(1));
        assert!(quiet.flag.idle.get());
        assert!(!busy.flag.idle.get());
        assert!(!session.flag.idle.get());
    }

    #[test]
    fn limits_given_to_a_user_count_its_open_connections_and_release_them() {
        use crate::control::policy::Limits;
        let table = StatsTable::default();
        let client = Some(std::net::SocketAddr::from(([127, 0, 0, 2], 1)));
        let before = table.open("/a", Kind::Plain, client, None);
        assert!(before.policy().is_none());
        let policy = Arc::new(UserPolicy::new(&Limits {
            conn_limit: 2,
            quota: 10,
            ..Limits::default()
        }));
        table.attach("/a", Some(&policy));
        assert!(before.policy().is_some());
        assert_eq!(policy.open_counts(), (1, 1));
        let admitted = policy.admit(None).unwrap();
        let after = table.open("/a", Kind::MuxSession, None, Some(admitted));
        assert_eq!(policy.open_counts(), (2, 1));
        assert!(policy.admit(None).is_err());
        // The quota runs out: the sweep closes every tunnel of the user.
        policy.charge(Direction::Up, 20);
        table.sweep(Instant::now(), std::time::Duration::from_secs(3600));
        assert!(before.flag.kicked.get() && after.flag.kicked.get());
        drop((before, after));
        assert_eq!(policy.open_counts(), (0, 0));
        table.attach("/a", None);
        assert_eq!(table.limited.get(), 0);
    }

    #[test]
    fn kick_reaches_every_open_connection_of_the_user() {
        let table = StatsTable::default();
        let a1 = table.open("/a", Kind::Plain, None, None);
        let a2 = table.open("/a", Kind::MuxSession, None, None);
        let b = table.open("/b", Kind::Plain, None, None);
        assert_eq!(table.kick(&["/a".into(), "/zzz".into()]), 2);
        assert!(a1.flag.kicked.get() && a2.flag.kicked.get());
        assert!(!b.flag.kicked.get());
    }
}
