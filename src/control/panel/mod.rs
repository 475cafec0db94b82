//! Panel sync (`-panel URL`): the node keeps itself in sync with a panel instead of
//! waiting to be called. On its own thread, with a blocking HTTP client, it pulls the
//! user list every interval (with `If-None-Match`, so an unchanged list costs one 304),
//! pushes traffic from the billing ledger (acknowledged only on a 2xx, so a byte is never
//! lost) and pushes the client addresses online. The two protocols are in [`mtt`] (ours)
//! and [`uniproxy`] (V2board / Xboard).
//!
//! The thread never touches the route table: it asks the controller thread by message
//! ([`Ask`], through a channel and a [`Doorbell`], as the controller asks the workers),
//! and the controller answers through the same code a full sync (opt 4), a report (opt 7)
//! and an acknowledgement (opt 8) take, so the state file, limits, billing and kicks behave
//! exactly as they do for a panel that calls the controller.
//!
//! When the panel misbehaves (unreachable, slow, 5xx, a body that is not what it should
//! be, a list that would remove too many users at once) nothing changes here: the users
//! stay as last pulled (and, with `-state`, across a restart), the attempt is retried with
//! exponential backoff and jitter from 1 s up to the interval, and [`Health`] says what is
//! wrong on `/metrics` and in the log.
//!
//! It does not parse controller commands or own any user state itself; [`mtt`] and
//! [`uniproxy`] only translate between the panel's JSON and [`Ask`]s.

pub(crate) mod mtt;
pub(crate) mod uniproxy;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::config::{PanelConfig, PanelKind};
use crate::control::billing::BillLine;
use crate::control::command::NewUser;
use crate::runtime::doorbell::Doorbell;

/// Largest response body read from a panel: a list of a million users fits.
pub(crate) const MAX_RESPONSE: u64 = 64 * 1024 * 1024;
/// A pulled list may always remove this many users, whatever the share: on a node with
/// few users, one removal is already a large share.
pub(crate) const ALWAYS_REMOVABLE: usize = 10;
/// The first retry after a failure; each further one waits twice as long, up to the
/// interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Bounds of the timeout of one whole request (connect, send, read): the interval, kept
/// within these.
const REQUEST_TIMEOUT_MIN: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(30);
/// Bound on connecting to the panel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the sync thread asks of the controller.
#[derive(Debug)]
pub(crate) enum Ask {
    /// Make the users exactly these (a full sync, kicking the users it removes), unless
    /// it would remove more than `max_remove_permille` thousandths of them (and more than
    /// [`ALWAYS_REMOVABLE`]).
    Sync {
        users: Vec<NewUser>,
        max_remove_permille: u32,
    },
    /// A billing report (opt 7).
    Report,
    /// Acknowledge the report with this id (opt 8).
    Ack(String),
    /// The client addresses of every user with open tunnels.
    Clients,
    /// Devices each user has on other nodes, by path (users not listed: none).
    RemoteDevices(HashMap<String, u64>),
    /// Collect every worker's counters into the billing ledger now (at shutdown, after
    /// the workers drained, before they exit).
    Collect,
}

/// The controller's answer to an [`Ask`].
#[derive(Debug)]
pub(crate) enum Answer {
    Synced {
        added: usize,
        changed: usize,
        removed: usize,
        users: usize,
    },
    /// The list would remove `removed` of the `current` users: refused, nothing changed.
    Refused {
        removed: usize,
        current: usize,
    },
    Report {
        id: String,
        lines: Vec<BillLine>,
    },
    Clients(Vec<(String, Vec<IpAddr>)>),
    Done,
    /// The controller could not do it (the state file could not be written, say).
    Failed(String),
}

/// An [`Ask`] on its way, with the channel for its answer.
pub(crate) struct Envelope {
    pub(crate) ask: Ask,
    pub(crate) reply: Sender<Answer>,
}

/// The sync thread's end of its channel to the controller.
#[derive(Clone)]
pub(crate) struct ControllerLink {
    asks: Sender<Envelope>,
    doorbell: Arc<Doorbell>,
}

/// The controller's end: it drains `asks` whenever `doorbell` rings.
pub(crate) struct Inbox {
    pub(crate) asks: Receiver<Envelope>,
    pub(crate) doorbell: Arc<Doorbell>,
}

/// A connected pair of ends.
pub(crate) fn link() -> (ControllerLink, Inbox) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let doorbell = Arc::new(Doorbell::default());
    (
        ControllerLink {
            asks: tx,
            doorbell: Arc::clone(&doorbell),
        },
        Inbox { asks: rx, doorbell },
    )
}

impl ControllerLink {
    /// Asks the controller and waits for its answer.
    pub(crate) fn ask(&self, ask: Ask) -> Answer {
        let (reply, answer) = crossbeam_channel::bounded(1);
        if self.asks.send(Envelope { ask, reply }).is_err() {
            return Answer::Failed("internal: the controller thread is gone".into());
        }
        self.doorbell.ring();
        answer
            .recv()
            .unwrap_or_else(|_| Answer::Failed("internal: the controller thread is gone".into()))
    }

    /// As [`ControllerLink::ask`], giving up after `within` (start-up's last collection
    /// must not hold the exit up if the controller is stuck).
    pub(crate) fn ask_within(&self, ask: Ask, within: Duration) -> Answer {
        let (reply, answer) = crossbeam_channel::bounded(1);
        if self.asks.send(Envelope { ask, reply }).is_err() {
            return Answer::Failed("internal: the controller thread is gone".into());
        }
        self.doorbell.ring();
        answer
            .recv_timeout(within)
            .unwrap_or_else(|_| Answer::Failed("the controller did not answer in time".into()))
    }

    /// Applies a validated user list through the controller's full sync.
    pub(crate) fn sync(
        &self,
        users: Vec<NewUser>,
        max_remove_permille: u32,
    ) -> Result<(), Failure> {
        match self.ask(Ask::Sync {
            users,
            max_remove_permille,
        }) {
            Answer::Synced {
                added,
                changed,
                removed,
                users,
            } => {
                if added + changed + removed > 0 {
                    log::info!(
                        "panel pull: {users} users ({added} added, {changed} changed, {removed} removed)"
                    );
                }
                Ok(())
            }
            Answer::Refused { removed, current } => Err(Failure::Refused { removed, current }),
            Answer::Failed(why) => Err(Failure::Internal(why)),
            other => Err(Failure::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Takes a billing report from the controller: its id and lines.
    pub(crate) fn report(&self) -> Result<(String, Vec<BillLine>), Failure> {
        match self.ask(Ask::Report) {
            Answer::Report { id, lines } => Ok((id, lines)),
            Answer::Failed(why) => Err(Failure::Internal(why)),
            other => Err(Failure::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Acknowledges a report the panel took (it answered 2xx).
    pub(crate) fn acknowledge(&self, id: String) -> Result<(), Failure> {
        match self.ask(Ask::Ack(id)) {
            Answer::Done => Ok(()),
            Answer::Failed(why) => Err(Failure::Internal(why)),
            other => Err(Failure::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// Tells the controller each user's devices on other nodes.
    pub(crate) fn remote_devices(&self, devices: HashMap<String, u64>) -> Result<(), Failure> {
        match self.ask(Ask::RemoteDevices(devices)) {
            Answer::Done => Ok(()),
            Answer::Failed(why) => Err(Failure::Internal(why)),
            other => Err(Failure::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// The client IP addresses of every user with tunnels open, by path.
    pub(crate) fn clients(&self) -> Result<Vec<(String, Vec<IpAddr>)>, Failure> {
        match self.ask(Ask::Clients) {
            Answer::Clients(clients) => Ok(clients),
            Answer::Failed(why) => Err(Failure::Internal(why)),
            other => Err(Failure::Internal(format!("unexpected answer {other:?}"))),
        }
    }
}

/// The exchanges with a panel, each with its own health and schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Users from the panel.
    Pull,
    /// Traffic to the panel.
    Push,
    /// Client addresses to the panel (and, from UniProxy, devices on other nodes).
    Alive,
}

impl Op {
    const ALL: [Op; 3] = [Op::Pull, Op::Push, Op::Alive];

    fn name(self) -> &'static str {
        match self {
            Op::Pull => "pull",
            Op::Push => "push",
            Op::Alive => "alive",
        }
    }
}

/// Why an exchange with the panel failed, by the side at fault.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No answer: refused, reset, a name that does not resolve, a timeout.
    Unreachable(String),
    /// An answer with a status that is not what the exchange needs.
    Status(u16),
    /// A 2xx whose body is not what it should be; nothing was applied.
    BadBody(String),
    /// A user list that would remove too many users at once; nothing was applied.
    Refused { removed: usize, current: usize },
    /// Our side could not apply or report (the state file, say).
    Internal(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(why) => write!(f, "panel unreachable: {why}"),
            Failure::Status(status) => write!(f, "panel answered HTTP {status}"),
            Failure::BadBody(why) => write!(f, "panel sent a bad body, nothing applied: {why}"),
            Failure::Refused { removed, current } => write!(
                f,
                "refused a user list that would remove {removed} of {current} users at once \
                 (over -panel-max-remove; the old users stay; run with -panel-max-remove 1 to allow it)"
            ),
            Failure::Internal(why) => write!(f, "internal: {why}"),
        }
    }
}

/// How a pull ended, for `mtt_panel_pulls_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pulled {
    /// A new list, applied.
    Applied,
    /// 304 Not Modified.
    Unchanged,
}

/// What one protocol does for each [`Op`]. `Ok(false)` from push or alive means there was
/// nothing to do yet (no user list yet, nothing counted), which is not a failure.
pub(crate) trait Protocol: Send {
    fn pull(&mut self, http: &Http, controller: &ControllerLink) -> Result<Pulled, Failure>;
    fn push(&mut self, http: &Http, controller: &ControllerLink) -> Result<bool, Failure>;
    fn alive(&mut self, http: &Http, controller: &ControllerLink) -> Result<bool, Failure>;
    /// The pull and push intervals the panel asked for, if it did.
    fn intervals(&self) -> Option<(Duration, Duration)> {
        None
    }
}

/// The sync health that `/metrics` shows, shared by the sync thread (which writes it) and
/// the controller (which renders it).
#[derive(Debug, Default)]
pub(crate) struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// By [`Op`]: the Unix time of the last success (0: none yet) and the failures since.
    last_success: [f64; 3],
    failures: [u64; 3],
    /// Pulls by result: applied, unchanged, failed, refused.
    pulls: BTreeMap<&'static str, u64>,
}

impl Health {
    fn record(&self, op: Op, outcome: Result<(), &Failure>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let i = op as usize;
        match outcome {
            Ok(()) => {
                state.last_success[i] = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                state.failures[i] = 0;
            }
            Err(_) => state.failures[i] += 1,
        }
    }

    fn pulled(&self, result: &'static str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state.pulls.entry(result).or_default() += 1;
    }

    /// The sync series of `/metrics`.
    pub(crate) fn render(&self, out: &mut String) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        per_op(
            out,
            "mtt_panel_last_success_timestamp_seconds",
            "Unix time of the last successful exchange with the panel (0: none since start).",
            |op| format!("{:.3}", state.last_success[op as usize]),
        );
        per_op(
            out,
            "mtt_panel_consecutive_failures",
            "Exchanges with the panel that failed since the last success.",
            |op| state.failures[op as usize].to_string(),
        );
        crate::control::metrics::family(
            out,
            "mtt_panel_pulls_total",
            "counter",
            "User list pulls by result: applied, unchanged (304), failed, refused (too many removals).",
        );
        for result in ["applied", "unchanged", "failed", "refused"] {
            let n = state.pulls.get(result).copied().unwrap_or(0);
            let _ = writeln!(out, "mtt_panel_pulls_total{{result=\"{result}\"}} {n}");
        }
    }
}

/// A gauge family with one series per operation, labelled `op`.
fn per_op(out: &mut String, name: &str, help: &str, value: impl Fn(Op) -> String) {
    crate::control::metrics::family(out, name, "gauge", help);
    for op in Op::ALL {
        let _ = writeln!(out, "{name}{{op=\"{}\"}} {}", op.name(), value(op));
    }
}

/// The HTTP client of the sync thread: bounded timeouts and bodies, the node's
/// credentials on every request.
pub(crate) struct Http {
    agent: ureq::Agent,
    /// The panel's base URL, without a trailing slash.
    base: String,
    /// `Authorization: Bearer` (mtt).
    bearer: Option<String>,
    /// Query parameters every request carries (UniProxy's token, node_id, node_type).
    query: Vec<(String, String)>,
}

/// A GET's result.
pub(crate) enum Fetched {
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
    NotModified,
}

impl Http {
    pub(crate) fn new(
        base: &str,
        bearer: Option<String>,
        query: Vec<(String, String)>,
        interval: Duration,
    ) -> Http {
        // rustls with ring: the only crypto provider compiled in (ureq's "rustls" feature
        // without its defaults), and the one ureq picks when none is installed.
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .build();
        let whole = interval.clamp(REQUEST_TIMEOUT_MIN, REQUEST_TIMEOUT_MAX);
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(CONNECT_TIMEOUT.min(whole)))
            .timeout_global(Some(whole))
            .http_status_as_error(false)
            .max_redirects(3)
            .user_agent(concat!("mtt-mu-server/", env!("CARGO_PKG_VERSION")))
            .build();
        Http {
            agent: config.into(),
            base: base.trim_end_matches('/').to_string(),
            bearer,
            query,
        }
    }

    fn url(&self, path: &str) -> String {
        let mut url = format!("{}{path}", self.base);
        for (i, (key, value)) in self.query.iter().enumerate() {
            url.push(if i == 0 && !path.contains('?') {
                '?'
            } else {
                '&'
            });
            url.push_str(key);
            url.push('=');
            url.push_str(&percent_encode(value));
        }
        url
    }

    /// GETs `path`, with `If-None-Match` when there is an ETag. A 2xx body (bounded by
    /// [`MAX_RESPONSE`]) or 304; anything else is a failure.
    pub(crate) fn get(&self, path: &str, etag: Option<&str>) -> Result<Fetched, Failure> {
        let mut request = self.agent.get(self.url(path));
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        if let Some(token) = &self.bearer {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = request.call().map_err(unreachable)?;
        let status = response.status().as_u16();
        if status == 304 && etag.is_some() {
            return Ok(Fetched::NotModified);
        }
        if !(200..300).contains(&status) {
            return Err(Failure::Status(status));
        }
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => {
                    Failure::BadBody(format!("the body is over {MAX_RESPONSE} bytes"))
                }
                e => unreachable(e),
            })?;
        Ok(Fetched::Body { bytes, etag })
    }

    /// POSTs a JSON body; Ok on a 2xx (its body is not needed).
    pub(crate) fn post(&self, path: &str, body: &serde_json::Value) -> Result<(), Failure> {
        let mut request = self
            .agent
            .post(self.url(path))
            .header("Content-Type", "application/json");
        if let Some(token) = &self.bearer {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let body = serde_json::to_vec(body).unwrap_or_default();
        let mut response = request.send(&body[..]).map_err(unreachable)?;
        let status = response.status().as_u16();
        // Read (a bounded part of) the body so the connection can be reused.
        let _ = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(Failure::Status(status))
        }
    }
}

fn unreachable(e: ureq::Error) -> Failure {
    Failure::Unreachable(e.to_string())
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The IP addresses of `clients` (`IP:port` strings as the workers report them), each once.
pub(crate) fn client_ips(clients: &[String]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = clients
        .iter()
        .filter_map(|c| c.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Exponential backoff with jitter: after `failures` failures in a row (at least 1), a
/// wait between half and all of 1 s doubled each time, never over `interval`.
pub(crate) fn backoff(failures: u32, interval: Duration, random: u64) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let ceiling = doubled.min(interval);
    let half = ceiling / 2;
    half + Duration::from_nanos(random % (half.as_nanos() as u64).max(1))
}

/// A small xorshift generator for jitter (nothing here needs to be unpredictable, only
/// different on each node).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((time ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Everything the sync thread needs, ready to run.
pub(crate) struct SyncLoop {
    protocol: Box<dyn Protocol>,
    http: Http,
    controller: ControllerLink,
    health: Arc<Health>,
    /// Pull and push intervals (push also paces alive): -panel-interval, or the panel's.
    pull_every: Duration,
    push_every: Duration,
    jitter: Jitter,
}

impl SyncLoop {
    /// The sync of `config` (its token already read), talking to the controller over
    /// `controller`.
    pub(crate) fn new(
        config: &PanelConfig,
        token: Option<String>,
        controller: ControllerLink,
        health: Arc<Health>,
    ) -> SyncLoop {
        let (protocol, http): (Box<dyn Protocol>, Http) = match config.kind {
            PanelKind::Mtt => {
                let query = config
                    .node_id
                    .iter()
                    .map(|id| ("node_id".to_string(), id.clone()))
                    .collect();
                (
                    Box::new(mtt::Mtt::new(config.max_remove_permille)),
                    Http::new(&config.url, token, query, config.interval),
                )
            }
            PanelKind::UniProxy => {
                let query = vec![
                    ("token".to_string(), token.unwrap_or_default()),
                    (
                        "node_id".to_string(),
                        config.node_id.clone().unwrap_or_default(),
                    ),
                    ("node_type".to_string(), config.node_type.clone()),
                ];
                (
                    Box::new(uniproxy::UniProxy::new(config)),
                    Http::new(&config.url, None, query, config.interval),
                )
            }
        };
        SyncLoop {
            protocol,
            http,
            controller,
            health,
            pull_every: config.interval,
            push_every: config.interval,
            jitter: Jitter::new(),
        }
    }

    /// Starts the sync loop on its own thread; it runs until the process ends.
    pub(crate) fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("panel-sync".into())
            .spawn(move || self.run())
    }

    fn every(&self, op: Op) -> Duration {
        match op {
            Op::Pull => self.pull_every,
            Op::Push | Op::Alive => self.push_every,
        }
    }

    /// Pull first; then each exchange when it is due: a success waits the interval (less
    /// up to a tenth, so a fleet started together spreads out), a failure the backoff.
    fn run(mut self) {
        let start = Instant::now();
        let mut due = [start, start + self.push_every, start + self.push_every];
        let mut failures = [0u32; 3];
        loop {
            let op = Op::ALL
                .into_iter()
                .min_by_key(|op| due[*op as usize])
                .unwrap_or(Op::Pull);
            let now = Instant::now();
            if due[op as usize] > now {
                std::thread::sleep(due[op as usize] - now);
            }
            let i = op as usize;
            let outcome = match op {
                Op::Pull => self
                    .protocol
                    .pull(&self.http, &self.controller)
                    .map(|pulled| {
                        self.health.pulled(match pulled {
                            Pulled::Applied => "applied",
                            Pulled::Unchanged => "unchanged",
                        });
                        true
                    }),
                Op::Push => self.protocol.push(&self.http, &self.controller),
                Op::Alive => self.protocol.alive(&self.http, &self.controller),
            };
            if let Some((pull, push)) = self.protocol.intervals() {
                if (pull, push) != (self.pull_every, self.push_every) {
                    self.pull_every = pull;
                    self.push_every = push;
                    // Nothing waits longer than the panel's new interval.
                    let now = Instant::now();
                    for op in Op::ALL {
                        let latest = now + self.every(op);
                        due[op as usize] = due[op as usize].min(latest);
                    }
                }
            }
            let every = self.every(op);
            match outcome {
                Ok(did) => {
                    if failures[i] > 0 {
                        log::warn!(
                            "panel {}: working again after {} failures",
                            op.name(),
                            failures[i]
                        );
                    }
                    failures[i] = 0;
                    if did {
                        self.health.record(op, Ok(()));
                    }
                    let spread = every / 10;
                    let less = Duration::from_nanos(
                        self.jitter.next() % (spread.as_nanos() as u64).max(1),
                    );
                    due[i] = Instant::now() + every - less;
                }
                Err(failure) => {
                    failures[i] += 1;
                    self.health.record(op, Err(&failure));
                    if op == Op::Pull {
                        self.health.pulled(match failure {
                            Failure::Refused { .. } => "refused",
                            _ => "failed",
                        });
                    }
                    let wait = backoff(failures[i], every, self.jitter.next());
                    let message = format!(
                        "panel {}: {failure} ({} in a row; the node keeps its users and unpushed counts; next try in {:.1}s)",
                        op.name(),
                        failures[i],
                        wait.as_secs_f64()
                    );
                    // The first failures of a run are errors; the rest of an outage, warnings
                    // (one a try, and the backoff keeps tries at least half an interval apart).
                    if failures[i] <= 3 {
                        log::error!("{message}");
                    } else {
                        log::warn!("{message}");
                    }
                    due[i] = Instant::now() + wait;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_interval_with_jitter() {
        let interval = Duration::from_secs(60);
        for random in [0, 1, u64::MAX / 3, u64::MAX] {
            let first = backoff(1, interval, random);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = backoff(3, interval, random);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = backoff(30, interval, random);
            assert!(late >= Duration::from_secs(30) && late <= interval);
        }
        // A short interval (tests) caps even the first retry.
        let short = backoff(1, Duration::from_millis(200), 7);
        assert!(short <= Duration::from_millis(200));
        // Different nodes wait differently.
        assert_ne!(backoff(4, interval, 1), backoff(4, interval, 1 << 40));
    }

    #[test]
    fn client_ips_drop_ports_and_repeats() {
        let clients = vec![
            "203.0.113.7:5000".to_string(),
            "203.0.113.7:5001".to_string(),
            "[2001:db8::1]:443".to_string(),
            "unix".to_string(),
        ];
        let ips = client_ips(&clients);
        assert_eq!(ips.len(), 2);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        let http = Http::new(
            "http://panel.example/",
            None,
            vec![("token".into(), "a b&c=d".into())],
            Duration::from_secs(60),
        );
        assert_eq!(
            http.url("/users"),
            "http://panel.example/users?token=a%20b%26c%3Dd"
        );
    }

    #[test]
    fn health_renders_every_op_and_counts_pulls() {
        let health = Health::default();
        health.record(Op::Pull, Err(&Failure::Status(503)));
        health.record(Op::Pull, Err(&Failure::Status(503)));
        health.pulled("failed");
        health.record(Op::Push, Ok(()));
        let mut page = String::new();
        health.render(&mut page);
        assert!(page.contains("mtt_panel_consecutive_failures{op=\"pull\"} 2"));
        assert!(page.contains("mtt_panel_consecutive_failures{op=\"push\"} 0"));
        assert!(page.contains("mtt_panel_last_success_timestamp_seconds{op=\"pull\"} 0.000"));
        assert!(page.contains("mtt_panel_pulls_total{result=\"failed\"} 1"));
    }
}
