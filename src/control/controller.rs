//! The controller on its own thread: it owns the authoritative [`RouteTable`], answers the
//! panel's commands ([`crate::control::command`]) and `GET /metrics`, makes each change durable
//! first when there is a state file, applies it, sends it to every worker and replies
//! only once every worker routes by the new table.
//!
//! It also owns the per-user limits (one shared [`UserPolicy`] per limited user, carried
//! in its route and changed in place by later commands) and two accumulators of the
//! counts it collects from the workers: the view of opt 5 (restarted by its `reset`) and
//! the billing ledger of opt 7 and 8 ([`crate::control::billing`]). Every collection
//! feeds both, so neither can take a byte from the other.
//!
//! It speaks just enough HTTP/1.1 for panels: keep-alive, `Content-Length` bodies of at
//! most [`MAX_BODY`] bytes, the head limits of [`crate::proto::http`], and, when a secret is
//! set, `Authorization: Bearer` on every request. It never touches the data path; workers
//! learn of changes only through [`crate::control::broadcast`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;
use serde::{Deserialize, Serialize};

use crate::control::billing::{BillLine, Counts, Ledger};
use crate::control::broadcast::{self, Reply as WorkerReply, Request, WorkerLink};
pub use crate::control::command::{parse_command, valid_dst, Command, CommandError, NewUser};
use crate::control::panel::{self, Answer, Ask};
pub use crate::control::policy::Limits;
use crate::control::policy::UserPolicy;
use crate::control::registry::UserTotals;
use crate::control::routes::{Route, RouteChange, RouteTable};
use crate::control::state::{StateFile, StoredUser};
use crate::control::status::{self, ServerFacts, Throughput};
use crate::net::heads;
use crate::proto::http::{self, HeadError, RequestHead};

/// Largest body accepted: 2 MiB exactly (the Go server wrongly refuses this size).
pub const MAX_BODY: u64 = 2 * 1024 * 1024;
/// How long a keep-alive connection may sit between requests.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// Users a change removes or replaces past which the controller gives the memory they
/// held back to the kernel at once, not at its next periodic check.
const TRIM_AFTER_DISPLACED: usize = 100_000;
/// How long a body may take to arrive once its head has.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Every reply, errors included, carries `res`, `err_string` and `current_users`
/// (the upstream controller's contract); the commands
/// this server adds fill their own extra keys, which old panels ignore.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub res: u8,
    pub err_string: String,
    pub current_users: usize,
    /// sync: users that were new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<usize>,
    /// sync: users whose destination changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<usize>,
    /// sync: users that were removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<usize>,
    /// stats: per-user counters, summed over the workers; report: per-user counts since
    /// the last acknowledged report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Users>,
    /// kick, and del or sync with `"kick": true`: open tunnels (plain tunnels and mux
    /// sessions) told to close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kicked: Option<usize>,
    /// report: the id that acknowledges it (opt 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_id: Option<String>,
}

/// The `users` of a reply: counters (opt 5) or a billing report (opt 7).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Users {
    Stats(Vec<UserTotals>),
    Report(Vec<BillLine>),
}

/// How the controller is set up, beyond its workers.
#[derive(Default)]
pub struct Options {
    /// Required as `Authorization: Bearer SECRET` on every request, when set.
    pub secret: Option<String>,
    /// Where applied changes are made durable.
    pub state: Option<StateFile>,
    /// Users to start with (from the state file).
    pub initial_users: Vec<StoredUser>,
    /// Per-user series on `/metrics`.
    pub per_user_metrics: bool,
    /// What start-up knows (driver, workers, certificate expiry), for `/status` and
    /// `/metrics`.
    pub facts: Option<Arc<ServerFacts>>,
    /// Requests from the other threads of the process (the panel sync, and start-up's
    /// last collection at shutdown) arrive here.
    pub(crate) inbox: Option<panel::Inbox>,
    /// With `-panel`: the sync health for `/metrics`. The panel then owns the users: the
    /// controller refuses changes to them.
    pub(crate) panel_health: Option<Arc<panel::Health>>,
}

/// The authoritative table and the workers that copy it.
pub struct Controller {
    /// The users as the panel last set them.
    table: RouteTable,
    /// One link per worker, to send requests on.
    workers: Vec<WorkerLink>,
    secret: Option<String>,
    state: Option<StateFile>,
    per_user_metrics: bool,
    /// Route changes applied on every worker, for `handle_body` to time.
    changes: u64,
    /// From a whole command to every worker having its change.
    change_latency: crate::control::metrics::Histogram,
    /// Start-up's facts, for `/status` and `/metrics`.
    facts: Option<Arc<ServerFacts>>,
    /// The last minutes of throughput, for the chart of `/status`.
    throughput: Throughput,
    /// Counts collected from the workers for opt 5, until its `reset` hands them out.
    totals: HashMap<String, Counts>,
    /// Counts collected for billing, until a panel acknowledges a report of them.
    ledger: Ledger,
    /// With `-panel`: the sync thread's requests, until [`run`] starts serving them.
    panel_inbox: Option<panel::Inbox>,
    /// With `-panel`: the sync health for `/metrics`; its presence also means the panel
    /// owns the users.
    panel_health: Option<Arc<panel::Health>>,
}

/// A user's shared limits, for its route: `None` for a user without limits.
fn new_policy(limits: &Limits) -> Option<Arc<UserPolicy>> {
    (!limits.is_unlimited()).then(|| Arc::new(UserPolicy::new(limits)))
}

fn boxed(paths: Vec<String>) -> Vec<Box<str>> {
    paths.into_iter().map(String::into_boxed_str).collect()
}

impl Controller {
    /// A controller over `workers`. Initial users are queued to every worker before it
    /// starts, so they route from the first connection.
    pub fn new(workers: Vec<WorkerLink>, mut options: Options) -> Self {
        let ledger = options
            .state
            .as_mut()
            .map(StateFile::take_ledger)
            .unwrap_or_default();
        let (panel_inbox, panel_health) = (options.inbox, options.panel_health);
        let mut controller = Self {
            table: RouteTable::new(),
            workers,
            secret: options.secret.filter(|s| !s.is_empty()),
            state: options.state,
            per_user_metrics: options.per_user_metrics,
            changes: 0,
            change_latency: Default::default(),
            facts: options.facts,
            throughput: Throughput::default(),
            totals: HashMap::new(),
            ledger,
            panel_inbox,
            panel_health,
        };
        if !options.initial_users.is_empty() {
            let change = RouteChange::Upsert(
                options
                    .initial_users
                    .into_iter()
                    .map(|u| {
                        let policy = new_policy(&u.limits);
                        if let (Some(policy), Some(left)) = (&policy, u.quota_left) {
                            policy.restore_quota_left(left);
                        }
                        Route::with_policy(&u.path, &u.dst, policy)
                    })
                    .collect(),
            );
            let update = controller.table.apply(&change);
            for slice in update.into_slices() {
                broadcast::tell_all(&controller.workers, Request::Routes(slice));
            }
        }
        controller
    }

    /// Makes `change` durable (if there is a state file) with the limits of the users it
    /// upserts, gives existing policies their new limits in place (`updates`: open tunnels
    /// see them at their next read), applies the change here and on every worker, and
    /// returns once all have it.
    fn change(&mut self, change: RouteChange, update: Update) -> Result<(), String> {
        if let Some(state) = &mut self.state {
            let limits: Vec<(&str, Limits)> = update
                .limits
                .iter()
                .map(|(path, limits)| (path.as_str(), *limits))
                .collect();
            state
                .append(&change, &limits)
                .map_err(|e| format!("internal: state file: {e}: nothing was changed"))?;
        }
        for (policy, limits) in &update.in_place {
            policy.set(limits);
        }
        let update = self.table.apply(&change);
        let displaced = update.displaced();
        // A large change goes in slices, each a bounded step for a worker, its tunnels
        // running between them; all are queued at once and answered before this returns.
        let slices = update.into_slices().into_iter().map(Request::Routes);
        broadcast::ask_all_in_turn(&self.workers, slices.collect());
        // The displaced routes and old shard versions were freed just now, here.
        if displaced >= TRIM_AFTER_DISPLACED {
            crate::runtime::trim::trim_if_mostly_free();
        }
        self.changes += 1;
        if let Some(state) = &mut self.state {
            if let Err(e) = state.compact_if_large(&self.table, &self.ledger) {
                log::error!("internal: compacting the state file: {e}");
            }
        }
        Ok(())
    }

    /// The route a user gets for these limits: a user that had a policy keeps the same
    /// one (changed in place, recorded in `update`), a newly limited user gets a new one,
    /// a user without limits gets the route the parser made, with no policy.
    fn limited_route(&self, user: NewUser, update: &mut Update) -> Route {
        let NewUser { route, limits } = user;
        let existing = self
            .table
            .lookup(route.path())
            .and_then(Route::policy)
            .cloned();
        if !limits.is_unlimited() || existing.is_some() {
            update.limits.push((route.path().to_string(), limits));
        }
        if let Some(policy) = &existing {
            // Limits removed included: open tunnels holding it become unlimited.
            update.in_place.push((Arc::clone(policy), limits));
        }
        if limits.is_unlimited() {
            return route;
        }
        let policy = existing.unwrap_or_else(|| Arc::new(UserPolicy::new(&limits)));
        Route::with_policy(route.path(), route.dst(), Some(policy))
    }

    /// Closes the open tunnels of these users on every worker; how many there were.
    fn kick(&self, paths: Vec<Box<str>>) -> usize {
        broadcast::ask_all(&self.workers, Request::Kick(paths))
            .into_iter()
            .map(|r| match r {
                Some(WorkerReply::Kicked(n)) => n,
                _ => 0,
            })
            .sum()
    }

    /// Collects every worker's counters (each hands them over and restarts from zero) into
    /// both accumulators, makes the ledger durable if it grew, and returns the collection
    /// (with the live parts: tunnels open, client addresses).
    fn collect(&mut self) -> Vec<UserTotals> {
        let request = Request::Stats {
            paths: None,
            reset: true,
        };
        let live = sum_totals(broadcast::ask_all(&self.workers, request));
        let mut quota_left = BTreeMap::new();
        let mut grew = false;
        for user in &live {
            let counts = Counts {
                bytes_up: user.bytes_up,
                bytes_down: user.bytes_down,
                tunnels_opened: user.tunnels_opened,
            };
            if counts.is_zero() {
                continue;
            }
            grew = true;
            let total = self.totals.entry(user.path.clone()).or_default();
            total.bytes_up += counts.bytes_up;
            total.bytes_down += counts.bytes_down;
            total.tunnels_opened += counts.tunnels_opened;
            self.ledger.record(&user.path, &counts);
            // Only a user that moved bytes has less quota left than last written.
            let left = self
                .table
                .lookup(&user.path)
                .and_then(Route::policy)
                .and_then(|p| p.quota_left());
            if let Some(left) = left {
                quota_left.insert(user.path.clone(), left);
            }
        }
        if grew {
            self.save_ledger(quota_left);
        }
        live
    }

    /// Writes the ledger to the state file, if there is one. A failure is logged: the
    /// counts stay in memory (they were already taken from the workers).
    fn save_ledger(&mut self, quota_left: BTreeMap<String, u64>) -> bool {
        let Some(state) = &mut self.state else {
            return true;
        };
        match state.save_ledger(&self.ledger, quota_left) {
            Ok(()) => {
                if let Err(e) = state.compact_if_large(&self.table, &self.ledger) {
                    log::error!("internal: compacting the state file: {e}");
                }
                true
            }
            Err(e) => {
                log::error!("internal: state file: writing the billing ledger: {e}");
                false
            }
        }
    }

    /// The opt-5 entries: the users asked for (every known one, with zeros where nothing
    /// was counted) or all with counts or open tunnels, each with its limits.
    fn stats(&mut self, paths: Option<Vec<String>>, reset: bool) -> Vec<UserTotals> {
        let live: HashMap<String, UserTotals> = self
            .collect()
            .into_iter()
            .map(|u| (u.path.clone(), u))
            .collect();
        let wanted: Vec<String> = match paths {
            Some(paths) => {
                let mut seen = HashSet::new();
                paths
                    .into_iter()
                    .filter(|p| {
                        (self.table.lookup(p).is_some()
                            || self.totals.contains_key(p)
                            || live.contains_key(p))
                            && seen.insert(p.clone())
                    })
                    .collect()
            }
            None => {
                let mut all: Vec<String> = self
                    .totals
                    .keys()
                    .chain(live.keys().filter(|p| !self.totals.contains_key(*p)))
                    .cloned()
                    .collect();
                all.sort();
                all
            }
        };
        let mut out = Vec::with_capacity(wanted.len());
        for path in wanted {
            let counts = if reset {
                self.totals.remove(&path)
            } else {
                self.totals.get(&path).copied()
            }
            .unwrap_or_default();
            let (tunnels_open, clients) = live
                .get(&path)
                .map(|u| (u.tunnels_open, u.clients.clone()))
                .unwrap_or_default();
            let policy = self.table.lookup(&path).and_then(Route::policy);
            out.push(UserTotals {
                bytes_up: counts.bytes_up,
                bytes_down: counts.bytes_down,
                tunnels_opened: counts.tunnels_opened,
                tunnels_open,
                clients,
                limits: policy.map(|p| p.limits()).unwrap_or_default(),
                quota_left: policy.and_then(|p| p.quota_left()),
                path,
            });
        }
        out
    }

    /// Runs one validated command; the reply's extra fields are filled where it has them.
    pub fn execute(&mut self, command: Command) -> Result<Reply, String> {
        let mut reply = Reply::default();
        match command {
            Command::Ping => {}
            Command::Reset => self.change(RouteChange::Clear, Update::default())?,
            Command::Del { paths, kick } => {
                let paths = boxed(paths);
                let kicked = kick.then(|| paths.clone());
                self.change(RouteChange::Remove(paths), Update::default())?;
                if let Some(paths) = kicked {
                    reply.kicked = Some(self.kick(paths));
                }
            }
            Command::Add(users) => {
                let mut update = Update::default();
                let routes = users
                    .into_iter()
                    .map(|user| self.limited_route(user, &mut update))
                    .collect();
                self.change(RouteChange::Upsert(routes), update)?;
            }
            Command::Sync { users, kick } => {
                let mut wanted = HashSet::with_capacity(users.len());
                let (mut added, mut changed) = (0, 0);
                let mut upsert = Vec::new();
                let mut update = Update::default();
                for user in users {
                    let path = user.route.path().to_string();
                    match self.table.lookup(&path) {
                        Some(existing)
                            if existing.dst() == user.route.dst()
                                && existing.policy().map(|p| p.limits()).unwrap_or_default()
                                    == user.limits
                                && user.limits.quota == 0 => {}
                        Some(existing) => {
                            let same_dst = existing.dst() == user.route.dst();
                            let same_limits =
                                existing.policy().map(|p| p.limits()).unwrap_or_default()
                                    == user.limits;
                            // A quota re-sent starts the count over: not a change, but it
                            // is applied (and recorded).
                            if !(wanted.contains(&path) || same_dst && same_limits) {
                                changed += 1;
                            }
                            upsert.push(self.limited_route(user, &mut update));
                        }
                        None if wanted.contains(&path) => {
                            // A duplicate inside the sync: the later one wins, counted once.
                            upsert.push(self.limited_route(user, &mut update));
                        }
                        None => {
                            added += 1;
                            upsert.push(self.limited_route(user, &mut update));
                        }
                    }
                    wanted.insert(path);
                }
                let remove: Vec<Box<str>> = self
                    .table
                    .iter()
                    .filter(|r| !wanted.contains(r.path()))
                    .map(|r| r.path().into())
                    .collect();
                reply.added = Some(added);
                reply.changed = Some(changed);
                reply.removed = Some(remove.len());
                let kicked = kick.then(|| remove.clone());
                if !upsert.is_empty() || !remove.is_empty() {
                    self.change(RouteChange::Sync { upsert, remove }, update)?;
                }
                if let Some(paths) = kicked {
                    reply.kicked = Some(if paths.is_empty() {
                        0
                    } else {
                        self.kick(paths)
                    });
                }
            }
            Command::Stats { paths, reset } => {
                reply.users = Some(Users::Stats(self.stats(paths, reset)));
            }
            Command::Kick(paths) => reply.kicked = Some(self.kick(boxed(paths))),
            Command::Report => {
                self.collect();
                let before = self.ledger.clone();
                let (id, lines) = self.ledger.report();
                if !self.save_ledger(BTreeMap::new()) {
                    self.ledger = before;
                    return Err("internal: state file: the report could not be made durable: nothing was reported".into());
                }
                reply.report_id = Some(id.to_string());
                reply.users = Some(Users::Report(lines));
            }
            Command::Ack(id) => {
                let before = self.ledger.clone();
                if let Err(e) = self.ledger.acknowledge(&id) {
                    return Ok(self.error(e.to_string()));
                }
                if !self.save_ledger(BTreeMap::new()) {
                    self.ledger = before;
                    return Err("internal: state file: the acknowledgement could not be made durable: nothing was acknowledged".into());
                }
            }
        }
        reply.res = 1;
        reply.current_users = self.table.len();
        Ok(reply)
    }

    pub fn users(&self) -> usize {
        self.table.len()
    }

    /// Answers one request body, just received whole: the HTTP status and the reply.
    /// A command that changed users is timed from here to every worker having the change
    /// (`mtt_route_change_seconds` on `/metrics`).
    pub fn handle_body(&mut self, body: &[u8]) -> (u16, Reply) {
        let received = std::time::Instant::now();
        let changes = self.changes;
        let answer = match parse_command(body) {
            Ok(command) if self.panel_health.is_some() && owned_by_panel(&command) => (
                200,
                self.error(
                    "users come from the panel (-panel): change them there; this controller \
                     answers ping, stats, kick and /metrics"
                        .into(),
                ),
            ),
            Ok(command) => match self.execute(command) {
                Ok(reply) => (200, reply),
                Err(why) => (500, self.error(why)),
            },
            Err(CommandError::Invalid(why)) => (200, self.error(why)),
            Err(CommandError::BadRequest(why)) => (400, self.error(why)),
        };
        if self.changes != changes {
            self.change_latency.observe(received.elapsed());
        }
        answer
    }

    /// The `/metrics` page.
    pub fn metrics(&mut self) -> String {
        let snapshots: Vec<_> = broadcast::ask_all(&self.workers, Request::Metrics)
            .into_iter()
            .map(|r| match r {
                Some(WorkerReply::Metrics(m)) => m,
                _ => Default::default(),
            })
            .collect();
        let per_user = self.per_user_metrics.then(|| self.stats(None, false));
        let mut page = crate::control::metrics::render(
            self.table.len(),
            &self.change_latency,
            &snapshots,
            per_user.as_deref(),
        );
        if let Some(facts) = &self.facts {
            page.push_str(&status::process_metrics(facts));
        }
        if let Some(health) = &self.panel_health {
            health.render(&mut page);
        }
        page
    }

    /// Answers the panel sync thread ([`crate::control::panel`]) through the same commands
    /// a panel calling the controller would send: full sync (kicking the users removed),
    /// report, acknowledge, stats.
    pub(crate) fn serve_panel(&mut self, ask: Ask) -> Answer {
        let failed = |why: String| Answer::Failed(why);
        match ask {
            Ask::Collect => {
                // Everything the workers counted joins the ledger (made durable there), so
                // a restart loses no billed byte.
                let users = self.collect().len();
                log::debug!("final collection: counts of {users} users kept for billing");
                Answer::Done
            }
            Ask::Sync {
                users,
                max_remove_permille,
            } => {
                let current = self.table.len();
                let wanted: HashSet<&str> = users.iter().map(|u| u.route.path()).collect();
                let removed = self
                    .table
                    .iter()
                    .filter(|r| !wanted.contains(r.path()))
                    .count();
                if removed > panel::ALWAYS_REMOVABLE
                    && removed as u64 * 1000 > current as u64 * u64::from(max_remove_permille)
                {
                    return Answer::Refused { removed, current };
                }
                match self.execute(Command::Sync { users, kick: true }) {
                    Ok(reply) => Answer::Synced {
                        added: reply.added.unwrap_or(0),
                        changed: reply.changed.unwrap_or(0),
                        removed: reply.removed.unwrap_or(0),
                        users: reply.current_users,
                    },
                    Err(why) => failed(why),
                }
            }
            Ask::Report => match self.execute(Command::Report) {
                Ok(Reply {
                    report_id: Some(id),
                    users: Some(Users::Report(lines)),
                    ..
                }) => Answer::Report { id, lines },
                Ok(reply) => failed(reply.err_string),
                Err(why) => failed(why),
            },
            Ask::Ack(id) => match self.execute(Command::Ack(id)) {
                Ok(reply) if reply.res == 1 => Answer::Done,
                Ok(reply) => failed(reply.err_string),
                Err(why) => failed(why),
            },
            Ask::Clients => Answer::Clients(
                self.stats(None, false)
                    .into_iter()
                    .filter(|u| !u.clients.is_empty())
                    .map(|u| {
                        let ips = panel::client_ips(&u.clients);
                        (u.path, ips)
                    })
                    .collect(),
            ),
            Ask::RemoteDevices(devices) => {
                for route in self.table.iter() {
                    if let Some(policy) = route.policy() {
                        policy.set_remote_devices(devices.get(route.path()).copied().unwrap_or(0));
                    }
                }
                Answer::Done
            }
        }
    }

    /// Samples the workers' byte totals for the throughput chart of `/status`.
    pub fn sample_throughput(&mut self) {
        let snapshots: Vec<_> = broadcast::ask_all(&self.workers, Request::Metrics)
            .into_iter()
            .filter_map(|r| match r {
                Some(WorkerReply::Metrics(m)) => Some(m),
                _ => None,
            })
            .collect();
        let (up, down) = status::byte_totals(&snapshots);
        let now = status::unix_ms(std::time::SystemTime::now());
        self.throughput.record(now, up, down);
    }

    /// Answers `GET /status` or `/status.json` (see [`status`]): behind the secret, which
    /// a browser may give as the password of HTTP Basic authentication.
    /// Returns the response and whether the connection stays open.
    fn status_response(
        &mut self,
        resource: status::Resource,
        head: &RequestHead,
    ) -> (Vec<u8>, bool) {
        // A GET with a body: the body is unread, so the connection cannot go on.
        let keep_alive = head.keep_alive() && head.content_length.unwrap_or(0) == 0;
        let with_body = head.method != "HEAD";
        let basic = status::basic_password(head.authorization.as_deref());
        let basic_ok = basic.is_some_and(|given| Some(given.as_str()) == self.secret.as_deref());
        if !basic_ok && !self.authorized(head) {
            let body = "unauthorized: the password is the controller's -secret\n";
            let response =
                status::response(401, "text/plain; charset=utf-8", body, false, with_body);
            return (response, false);
        }
        let query = match &resource {
            status::Resource::Page(q) | status::Resource::Json(q) => q,
        };
        // Totals since the last opt 5 reset, as a panel's counters show them (collecting
        // also feeds the billing ledger, so nothing is lost by looking).
        let totals = self.stats(None, false);
        let snapshot = status::snapshot(
            self.facts.as_deref(),
            &self.table,
            &totals,
            &self.throughput,
            query,
            std::time::SystemTime::now(),
        );
        let (content_type, body) = match resource {
            status::Resource::Page(_) => ("text/html; charset=utf-8", status::page(&snapshot)),
            status::Resource::Json(_) => ("application/json", snapshot.to_string()),
        };
        let response = status::response(200, content_type, &body, keep_alive, with_body);
        (response, keep_alive)
    }

    /// Whether a request may be served: always without a secret, else only with it.
    fn authorized(&self, head: &RequestHead) -> bool {
        let Some(secret) = &self.secret else {
            return true;
        };
        let Some(given) = head
            .authorization
            .as_deref()
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Compare without an early exit so the time taken does not tell how much matched.
        let (a, b) = (given.trim().as_bytes(), secret.as_bytes());
        let mut diff = (a.len() != b.len()) as u8;
        for i in 0..a.len().max(b.len()) {
            diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }

    fn error(&self, err_string: String) -> Reply {
        Reply {
            res: 2,
            err_string,
            current_users: self.table.len(),
            ..Reply::default()
        }
    }
}

/// Whether a command changes what the panel owns with `-panel`: the users, and the
/// billing ledger that the sync pushes (a report acknowledged by hand would never reach
/// the panel).
fn owned_by_panel(command: &Command) -> bool {
    matches!(
        command,
        Command::Add(_)
            | Command::Del { .. }
            | Command::Reset
            | Command::Sync { .. }
            | Command::Report
            | Command::Ack(_)
    )
}

/// What a command does to users' limits besides its route change.
#[derive(Default)]
struct Update {
    /// Existing policies and their new limits, set in place once the change is durable.
    in_place: Vec<(Arc<UserPolicy>, Limits)>,
    /// The limits of the upserted users that have (or had) any, for the state file.
    limits: Vec<(String, Limits)>,
}

/// Sums the workers' per-user reports into one entry per user.
fn sum_totals(replies: Vec<Option<WorkerReply>>) -> Vec<UserTotals> {
    let mut by_path: std::collections::BTreeMap<String, UserTotals> = Default::default();
    for reply in replies {
        if let Some(WorkerReply::Stats(totals)) = reply {
            for t in totals {
                let entry = by_path.entry(t.path.clone()).or_insert_with(|| UserTotals {
                    path: t.path.clone(),
                    ..Default::default()
                });
                entry.bytes_up += t.bytes_up;
                entry.bytes_down += t.bytes_down;
                entry.tunnels_opened += t.tunnels_opened;
                entry.tunnels_open += t.tunnels_open;
                entry.clients.extend(t.clients);
            }
        }
    }
    by_path.into_values().collect()
}

/// Runs the controller on the calling thread until the process ends.
/// `max_connections` caps the controller connections open at once; more are closed at
/// once (a panel needs one).
pub fn run(
    listener: std::net::TcpListener,
    controller: Controller,
    head_timeout: Duration,
    max_connections: usize,
) -> std::io::Result<()> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let mut controller = controller;
        let panel_inbox = controller.panel_inbox.take();
        let controller = Rc::new(RefCell::new(controller));
        if let Some(inbox) = panel_inbox {
            let served = Rc::clone(&controller);
            crate::runtime::task::spawn_contained(async move {
                loop {
                    inbox.doorbell.wait().await;
                    while let Ok(envelope) = inbox.asks.try_recv() {
                        let answer = served.borrow_mut().serve_panel(envelope.ask);
                        let _ = envelope.reply.send(answer);
                    }
                }
            });
        }
        let open = Rc::new(Cell::new(0usize));
        let sampled = Rc::clone(&controller);
        crate::runtime::task::spawn_contained(async move {
            loop {
                sampled.borrow_mut().sample_throughput();
                monoio::time::sleep(status::SAMPLE_EVERY).await;
            }
        });
        // Memory freed after a peak goes back to the kernel (see `runtime::trim`).
        crate::runtime::task::spawn_contained(async move {
            loop {
                monoio::time::sleep(crate::runtime::trim::CHECK_EVERY).await;
                crate::runtime::trim::trim_if_mostly_free();
            }
        });
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if open.get() >= max_connections {
                        log::warn!(
                            "controller {peer}: refused, {max_connections} connections open"
                        );
                        continue;
                    }
                    open.set(open.get() + 1);
                    let controller = Rc::clone(&controller);
                    let open = Rc::clone(&open);
                    crate::runtime::task::spawn_contained(async move {
                        serve(stream, peer, controller, head_timeout).await;
                        open.set(open.get() - 1);
                    });
                }
                Err(e) => {
                    log::error!("internal: controller accept: {e}");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    controller: Rc<RefCell<Controller>>,
    head_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut deadline = Instant::now() + head_timeout;
    loop {
        let (result, rest) = heads::read_head(&mut stream, buf, deadline).await;
        buf = rest;
        let (head, head_len) = match result {
            Ok(parsed) => parsed,
            Err(HeadError::Closed { .. }) | Err(HeadError::Timeout) => return,
            Err(e) => {
                let status = if e == HeadError::TooLarge { 431 } else { 400 };
                let reply = controller
                    .borrow()
                    .error(format!("bad request head: {e:?}"));
                respond(&mut stream, status, &reply, false).await;
                return;
            }
        };
        buf.drain(..head_len);
        if let Some(resource) = status::Resource::of(&head) {
            let (response, keep_alive) = controller.borrow_mut().status_response(resource, &head);
            if stream.write_all(response).await.0.is_err() || !keep_alive {
                return;
            }
            deadline = Instant::now() + KEEP_ALIVE_IDLE;
            continue;
        }
        let refuse = |status: u16, why: String| (status, controller.borrow().error(why));
        let refusal = if !controller.borrow().authorized(&head) {
            log::warn!("controller {peer}: refused: missing or wrong secret");
            Some(refuse(
                401,
                "unauthorized: send Authorization: Bearer SECRET".into(),
            ))
        } else if head.method == "GET"
            && http::route_key(&head.target).as_deref() == Some("/metrics")
        {
            let page = controller.borrow_mut().metrics();
            let keep_alive = head.keep_alive();
            let response = http::text_response(200, &page, keep_alive);
            if stream.write_all(response).await.0.is_err() || !keep_alive {
                return;
            }
            deadline = Instant::now() + KEEP_ALIVE_IDLE;
            continue;
        } else if head.method != "POST" {
            Some(refuse(
                405,
                format!("method {} not allowed: use POST", head.method),
            ))
        } else if head.transfer_encoding {
            Some(refuse(
                411,
                "chunked bodies are not accepted: send Content-Length".into(),
            ))
        } else if head.bad_content_length {
            Some(refuse(400, "bad Content-Length".into()))
        } else if head.content_length.unwrap_or(0) > MAX_BODY {
            let length = head.content_length.unwrap_or(0);
            Some(refuse(
                413,
                format!("body of {length} bytes is over {MAX_BODY}"),
            ))
        } else {
            None
        };
        if let Some((status, reply)) = refusal {
            // The body (if any) is unread: the connection cannot carry another request.
            let body = serde_json::to_string(&reply).unwrap_or_default();
            let with_body = head.method != "HEAD";
            let response = http::json_response_for(status, &body, false, with_body);
            let _ = stream.write_all(response).await;
            return;
        }
        let length = head.content_length.unwrap_or(0) as usize;
        let body_deadline = Instant::now() + BODY_TIMEOUT;
        while buf.len() < length {
            if buf.capacity() < length {
                buf.reserve_exact(length - buf.len());
            }
            let start = buf.len();
            let read = buf.slice_mut(start..length);
            match monoio::time::timeout_at(body_deadline, stream.read(read)).await {
                Ok((Ok(n), slice)) if n > 0 => buf = slice.into_inner(),
                _ => return,
            }
        }
        let (status, reply) = controller.borrow_mut().handle_body(&buf[..length]);
        if reply.res != 1 {
            log::debug!("controller {peer}: refused: {}", reply.err_string);
        }
        buf.drain(..length);
        let keep_alive = head.keep_alive();
        if !respond(&mut stream, status, &reply, keep_alive).await || !keep_alive {
            return;
        }
        if buf.capacity() > 64 * 1024 {
            buf.shrink_to(4096);
        }
        deadline = Instant::now() + KEEP_ALIVE_IDLE;
    }
}

async fn respond(stream: &mut TcpStream, status: u16, reply: &Reply, keep_alive: bool) -> bool {
    // Serializing plain fields cannot fail.
    let body = serde_json::to_string(reply).unwrap_or_default();
    let response = http::json_response(status, &body, keep_alive);
    let (result, _) = stream.write_all(response).await;
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize) -> Vec<NewUser> {
        (0..n)
            .map(|i| NewUser {
                route: Route::new(&format!("/u{i}"), "h:1"),
                limits: Limits::default(),
            })
            .collect()
    }

    fn panel_sync(controller: &mut Controller, n: usize, permille: u32) -> Answer {
        controller.serve_panel(Ask::Sync {
            users: users(n),
            max_remove_permille: permille,
        })
    }

    #[test]
    fn a_pulled_list_may_remove_at_most_the_allowed_share_beyond_ten_users() {
        let mut controller = Controller::new(Vec::new(), Options::default());
        assert!(matches!(
            panel_sync(&mut controller, 30, 500),
            Answer::Synced { added: 30, .. }
        ));
        // 16 of 30 is over half: refused, nothing changed.
        assert!(matches!(
            panel_sync(&mut controller, 14, 500),
            Answer::Refused {
                removed: 16,
                current: 30
            }
        ));
        assert_eq!(controller.users(), 30);
        // 15 of 30 is half: allowed.
        assert!(matches!(
            panel_sync(&mut controller, 15, 500),
            Answer::Synced { removed: 15, .. }
        ));
        // 10 users may always go, even all of them.
        assert!(matches!(
            panel_sync(&mut controller, 5, 0),
            Answer::Synced { removed: 10, .. }
        ));
        assert!(matches!(
            panel_sync(&mut controller, 0, 0),
            Answer::Synced { removed: 5, .. }
        ));
        // A share of 1 allows anything.
        panel_sync(&mut controller, 100, 1000);
        assert!(matches!(
            panel_sync(&mut controller, 0, 1000),
            Answer::Synced { removed: 100, .. }
        ));
    }

    #[test]
    fn with_a_panel_the_controller_refuses_changes_to_users_and_billing() {
        let (_, inbox) = panel::link();
        let mut controller = Controller::new(
            Vec::new(),
            Options {
                inbox: Some(inbox),
                panel_health: Some(Arc::new(panel::Health::default())),
                ..Options::default()
            },
        );
        for body in [
            r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h:1"}]}"#,
            r#"{"opt":2,"args_bunch":[{"path":"/a"}]}"#,
            r#"{"opt":3}"#,
            r#"{"opt":4,"args_bunch":[]}"#,
            r#"{"opt":7}"#,
            r#"{"opt":8,"report_id":"1"}"#,
        ] {
            let (status, reply) = controller.handle_body(body.as_bytes());
            assert_eq!((status, reply.res), (200, 2), "{body}");
            assert!(reply.err_string.contains("panel"), "{body}");
        }
        for body in [r#"{"opt":9}"#, r#"{"opt":5}"#] {
            let (_, reply) = controller.handle_body(body.as_bytes());
            assert_eq!(reply.res, 1, "{body}");
        }
        assert!(controller
            .metrics()
            .contains("mtt_panel_consecutive_failures{op=\"pull\"} 0"));
    }

    #[test]
    fn failed_batch_changes_nothing() {
        let mut controller = Controller::new(Vec::new(), Options::default());
        let (status, reply) =
            controller.handle_body(br#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h:1"}]}"#);
        assert_eq!((status, reply.res, reply.current_users), (200, 1, 1));
        let (status, reply) = controller.handle_body(
            br#"{"opt":1,"args_bunch":[{"path":"/b","dst":"h:1"},{"path":"/c","dst":"bad"}]}"#,
        );
        assert_eq!((status, reply.res, reply.current_users), (200, 2, 1));
        assert!(reply.err_string.contains("args_bunch[1]"));
    }
}
