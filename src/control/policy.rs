//! Per-user limits (issue 13): speed, devices, open connections, quota and expiry, and the
//! state one limited user shares across every worker. A user without limits has no
//! [`UserPolicy`] at all (its route block has no pointer to one, see
//! [`crate::control::routes::Route::policy`]), so it pays nothing here.
//!
//! The controller creates one `Arc<UserPolicy>` per limited user and sends it to every
//! worker inside the user's route; a later add or sync changes the same block in place
//! (atomics), so open tunnels see new limits without reconnecting. What is shared:
//!
//! - open connections: one atomic, taken by compare-and-swap, so that opens racing on
//!   different workers never pass the limit together;
//! - devices: a small mutex-protected map of client IP to open connections, touched on open
//!   and close only, never per byte;
//! - speed: two lock-free token buckets (up and down), each one `AtomicU64` holding the
//!   time at which the bucket is in balance; a relay charges it once per read and sleeps
//!   (monoio timer) while it is in debt, so shaping stops reading instead of buffering;
//! - quota: an atomic count of the bytes left; crossing zero marks the user cut, which each
//!   worker's idle sweep turns into kicks within a second;
//! - expiry: checked on open and by the same sweep.
//!
//! This module knows nothing of sockets, routes or workers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// The limits a panel sets for one user; 0 (or absent) means unlimited for each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes per second, each direction, over all the user's tunnels.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub speed_limit: u64,
    /// Most distinct client IP addresses with open tunnels at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device_limit: u64,
    /// Most open tunnels (plain tunnels and mux sessions) at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub conn_limit: u64,
    /// Bytes (up and down) the user may still move, from when the limits apply.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quota: u64,
    /// Unix time (seconds) after which the user is refused and its tunnels closed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expire: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Limits {
    /// Whether no limit is set: such a user gets no [`UserPolicy`].
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }
}

/// Why a limited user's new connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    ConnLimit,
    DeviceLimit,
    Quota,
    Expired,
}

/// A direction of a tunnel, for the speed limit (each has its own bucket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to `dst`.
    Up,
    /// `dst` to client.
    Down,
}

/// One limited user's limits and shared state, on every worker at once.
#[derive(Debug, Default)]
pub struct UserPolicy {
    speed_limit: AtomicU64,
    device_limit: AtomicU64,
    conn_limit: AtomicU64,
    expire: AtomicU64,
    /// The quota as last set (0: none); `quota_left` counts down from it.
    quota: AtomicU64,
    /// Bytes the user may still move; meaningful only when `quota` is set.
    quota_left: AtomicI64,
    /// The quota ran out or the user expired: its tunnels are being closed everywhere.
    cut: AtomicBool,
    /// Open tunnels (plain tunnels and mux sessions).
    open: AtomicU64,
    /// Open tunnels by client IP; its length is the number of devices.
    devices: Mutex<HashMap<IpAddr, u32>>,
    /// Devices the user has on other nodes, as a UniProxy panel's `alivelist` last said
    /// (0 without a panel): they count against `device_limit` here too.
    remote_devices: AtomicU64,
    /// Per direction: when the bucket is in balance, in nanoseconds since [`epoch`]. Later
    /// than now: in debt by the difference; earlier: credit, at most one second's worth.
    buckets: [AtomicU64; 2],
}

/// The process's clock origin for the buckets (a `u64` of nanoseconds fits 584 years).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    // Offset by one second so that "one second ago" never underflows.
    epoch().elapsed().as_nanos() as u64 + 1_000_000_000
}

/// Seconds since the Unix epoch, for `expire`.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl UserPolicy {
    pub fn new(limits: &Limits) -> Self {
        let policy = UserPolicy::default();
        policy.set(limits);
        policy
    }

    /// Takes new limits in place. A quota given restarts the count from it; the open
    /// connections and devices stay counted. Seen by open tunnels at their next read, and
    /// by the sweep (expiry, quota) within a second.
    pub fn set(&self, limits: &Limits) {
        self.speed_limit
            .store(limits.speed_limit, Ordering::Relaxed);
        self.device_limit
            .store(limits.device_limit, Ordering::Relaxed);
        self.conn_limit.store(limits.conn_limit, Ordering::Relaxed);
        self.expire.store(limits.expire, Ordering::Relaxed);
        self.quota.store(limits.quota, Ordering::Relaxed);
        self.quota_left.store(
            i64::try_from(limits.quota).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        self.cut.store(false, Ordering::Release);
    }

    /// Takes the number of devices the user has on other nodes (from the panel).
    pub fn set_remote_devices(&self, devices: u64) {
        self.remote_devices.store(devices, Ordering::Relaxed);
    }

    /// Restores the bytes left of the quota (from the state file, after a restart).
    pub fn restore_quota_left(&self, left: u64) {
        if self.quota.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.quota_left
            .store(i64::try_from(left).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.cut.store(left == 0, Ordering::Release);
    }

    /// The limits as last set.
    pub fn limits(&self) -> Limits {
        Limits {
            speed_limit: self.speed_limit.load(Ordering::Relaxed),
            device_limit: self.device_limit.load(Ordering::Relaxed),
            conn_limit: self.conn_limit.load(Ordering::Relaxed),
            quota: self.quota.load(Ordering::Relaxed),
            expire: self.expire.load(Ordering::Relaxed),
        }
    }

    /// Bytes left of the quota, when one is set.
    pub fn quota_left(&self) -> Option<u64> {
        (self.quota.load(Ordering::Relaxed) > 0)
            .then(|| self.quota_left.load(Ordering::Relaxed).max(0) as u64)
    }

    /// Whether the user's tunnels must close: the quota ran out or it expired.
    pub fn must_close(&self, unix_now: u64) -> bool {
        if self.cut.load(Ordering::Acquire) {
            return true;
        }
        let expire = self.expire.load(Ordering::Relaxed);
        expire > 0 && unix_now >= expire
    }

    /// Admits one more connection from `ip` (none for a unix-socket peer), or says why
    /// not. Exact across workers: the count is taken by compare-and-swap and the devices
    /// under their lock, so two opens racing for the last place never both get it.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Admission, Denied> {
        let expire = self.expire.load(Ordering::Relaxed);
        if expire > 0 && unix_now() >= expire {
            return Err(Denied::Expired);
        }
        if self.cut.load(Ordering::Acquire) || self.quota_left().is_some_and(|left| left == 0) {
            return Err(Denied::Quota);
        }
        let limit = self.conn_limit.load(Ordering::Relaxed);
        let mut open = self.open.load(Ordering::Relaxed);
        loop {
            if limit > 0 && open >= limit {
                return Err(Denied::ConnLimit);
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => open = now,
            }
        }
        if let Some(ip) = ip {
            let limit = self.device_limit.load(Ordering::Relaxed);
            let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            let known = devices.contains_key(&ip);
            let elsewhere = self.remote_devices.load(Ordering::Relaxed);
            if !known && limit > 0 && devices.len() as u64 + elsewhere >= limit {
                drop(devices);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Denied::DeviceLimit);
            }
            *devices.entry(ip).or_insert(0) += 1;
        }
        Ok(Admission {
            policy: Arc::clone(self),
            ip,
        })
    }

    /// Counts a connection that is already open (its user has just been given limits):
    /// never refused, so the counts are right from now on.
    pub fn count_open(self: &Arc<Self>, ip: Option<IpAddr>) -> Admission {
        self.open.fetch_add(1, Ordering::AcqRel);
        if let Some(ip) = ip {
            let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            *devices.entry(ip).or_insert(0) += 1;
        }
        Admission {
            policy: Arc::clone(self),
            ip,
        }
    }

    /// Open tunnels and devices now (for tests and reports).
    pub fn open_counts(&self) -> (u64, usize) {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner()).len();
        (self.open.load(Ordering::Relaxed), devices)
    }

    /// Takes `n` bytes moved in `direction` off the quota and through the speed limit.
    /// Returns how long the relay must stop reading (the bucket is in debt), and whether
    /// this charge used up the quota (the caller closes the user's tunnels).
    pub fn charge(&self, direction: Direction, n: usize) -> Charge {
        let mut exhausted = false;
        if self.quota.load(Ordering::Relaxed) > 0 {
            let before = self.quota_left.fetch_sub(n as i64, Ordering::AcqRel);
            if before > 0 && before <= n as i64 {
                self.cut.store(true, Ordering::Release);
                exhausted = true;
            }
        }
        let rate = self.speed_limit.load(Ordering::Relaxed);
        let wait = if rate == 0 {
            Duration::ZERO
        } else {
            self.take_tokens(direction, n as u64, rate)
        };
        Charge { wait, exhausted }
    }

    /// The bucket: "in balance at" moves forward by the time `n` bytes take at `rate`,
    /// from no earlier than one second ago (the most credit a bucket keeps: a burst is at
    /// most one second's worth). One compare-and-swap per read.
    fn take_tokens(&self, direction: Direction, n: u64, rate: u64) -> Duration {
        let bucket = &self.buckets[direction as usize];
        let cost = ((n as u128 * 1_000_000_000) / rate as u128).min(u64::MAX as u128) as u64;
        let now = now_nanos();
        let mut balance = bucket.load(Ordering::Relaxed);
        loop {
            let after = balance.max(now - 1_000_000_000).saturating_add(cost);
            match bucket.compare_exchange_weak(balance, after, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Duration::from_nanos(after.saturating_sub(now)),
                Err(seen) => balance = seen,
            }
        }
    }
}

/// What a charge asks of the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    /// Stop reading this long (zero: go on).
    pub wait: Duration,
    /// This charge used up the quota.
    pub exhausted: bool,
}

/// One open connection counted in a user's policy (open tunnels and its device); dropping
/// it counts the connection closed.
#[derive(Debug)]
pub struct Admission {
    policy: Arc<UserPolicy>,
    ip: Option<IpAddr>,
}

impl Admission {
    pub fn policy(&self) -> &Arc<UserPolicy> {
        &self.policy
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.policy.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut devices = self
                .policy
                .devices
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = devices.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    devices.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_on_other_nodes_count_against_the_device_limit() {
        let policy = Arc::new(UserPolicy::new(&Limits {
            device_limit: 2,
            ..Limits::default()
        }));
        policy.set_remote_devices(1);
        let first = policy.admit(ip(1)).unwrap();
        // One here and one elsewhere: a second address is refused, the same one is not.
        assert_eq!(policy.admit(ip(2)).unwrap_err(), Denied::DeviceLimit);
        let again = policy.admit(ip(1)).unwrap();
        // The device elsewhere left; new limits from the panel keep the remote count.
        policy.set_remote_devices(0);
        let second = policy.admit(ip(2)).unwrap();
        drop((first, again, second));
        policy.set_remote_devices(2);
        policy.set(&Limits {
            device_limit: 2,
            speed_limit: 1,
            ..Limits::default()
        });
        assert_eq!(policy.admit(ip(3)).unwrap_err(), Denied::DeviceLimit);
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn connection_and_device_limits_are_exact_and_released_on_drop() {
        let policy = Arc::new(UserPolicy::new(&Limits {
            conn_limit: 3,
            device_limit: 2,
            ..Limits::default()
        }));
        let a1 = policy.admit(ip(1)).unwrap();
        let _a2 = policy.admit(ip(1)).unwrap();
        let b = policy.admit(ip(2)).unwrap();
        assert_eq!(policy.admit(ip(2)).unwrap_err(), Denied::ConnLimit);
        drop(a1);
        assert_eq!(policy.admit(ip(3)).unwrap_err(), Denied::DeviceLimit);
        assert_eq!(policy.open_counts(), (2, 2));
        drop(b);
        let _c = policy.admit(ip(3)).unwrap();
        assert_eq!(policy.open_counts(), (2, 2));
    }

    #[test]
    fn racing_opens_never_pass_the_limit() {
        let policy = Arc::new(UserPolicy::new(&Limits {
            conn_limit: 5,
            ..Limits::default()
        }));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let policy = Arc::clone(&policy);
                std::thread::spawn(move || {
                    let held: Vec<_> = (0..100).filter_map(|_| policy.admit(None).ok()).collect();
                    // Hold them until every thread has tried.
                    std::thread::sleep(Duration::from_millis(50));
                    held.len()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 5);
        assert_eq!(policy.open_counts().0, 0);
    }

    #[test]
    fn quota_crossing_zero_cuts_once_and_refuses_new_connections() {
        let policy = Arc::new(UserPolicy::new(&Limits {
            quota: 100,
            ..Limits::default()
        }));
        assert!(!policy.charge(Direction::Up, 60).exhausted);
        assert!(policy.charge(Direction::Down, 60).exhausted);
        assert!(!policy.charge(Direction::Down, 60).exhausted);
        assert!(policy.must_close(unix_now()));
        assert_eq!(policy.admit(None).unwrap_err(), Denied::Quota);
        assert_eq!(policy.quota_left(), Some(0));
        // Re-sending the quota starts the count over.
        policy.set(&Limits {
            quota: 100,
            ..Limits::default()
        });
        assert!(!policy.must_close(unix_now()));
        assert!(policy.admit(None).is_ok());
    }

    #[test]
    fn expired_users_are_refused_and_closed() {
        let policy = Arc::new(UserPolicy::new(&Limits {
            expire: unix_now() - 1,
            ..Limits::default()
        }));
        assert_eq!(policy.admit(None).unwrap_err(), Denied::Expired);
        assert!(policy.must_close(unix_now()));
    }

    #[test]
    fn the_bucket_gives_one_second_of_credit_then_charges_time() {
        let policy = UserPolicy::new(&Limits {
            speed_limit: 1_000_000,
            ..Limits::default()
        });
        // A fresh bucket has a second's credit: the first megabyte passes at once.
        assert_eq!(policy.charge(Direction::Up, 500_000).wait, Duration::ZERO);
        assert_eq!(policy.charge(Direction::Up, 400_000).wait, Duration::ZERO);
        let wait = policy.charge(Direction::Up, 600_000).wait;
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // The other direction has its own bucket.
        assert_eq!(policy.charge(Direction::Down, 900_000).wait, Duration::ZERO);
    }
}
