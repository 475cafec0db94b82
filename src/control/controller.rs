//! The controller on its own thread: it owns the authoritative [`RouteTable`], answers the
//! panel's commands ([`crate::control::command`]) and `GET /metrics`, makes each change durable
//! first when there is a state file, applies it, sends it to every worker and replies
//! only once every worker routes by the new table.
//!
//! It speaks just enough HTTP/1.1 for panels: keep-alive, `Content-Length` bodies of at
//! most [`MAX_BODY`] bytes, the head limits of [`crate::proto::http`], and, when a secret is
//! set, `Authorization: Bearer` on every request. It never touches the data path; workers
//! learn of changes only through [`crate::control::broadcast`].

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;
use serde::{Deserialize, Serialize};

use crate::control::broadcast::{self, Reply as WorkerReply, Request, WorkerLink};
pub use crate::control::command::{parse_command, valid_dst, Command, CommandError};
use crate::control::registry::UserTotals;
use crate::control::routes::{Route, RouteChange, RouteTable};
use crate::control::state::StateFile;
use crate::control::status::{self, ServerFacts, Throughput};
use crate::net::heads;
use crate::proto::http::{self, HeadError, RequestHead};

/// Largest body accepted: 2 MiB exactly (the Go server wrongly refuses this size).
pub const MAX_BODY: u64 = 2 * 1024 * 1024;
/// How long a keep-alive connection may sit between requests.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
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
    /// stats: per-user counters, summed over the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserTotals>>,
    /// kick: open tunnels (plain tunnels and mux sessions) told to close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kicked: Option<usize>,
}

/// How the controller is set up, beyond its workers.
#[derive(Default)]
pub struct Options {
    /// Required as `Authorization: Bearer SECRET` on every request, when set.
    pub secret: Option<String>,
    /// Where applied changes are made durable.
    pub state: Option<StateFile>,
    /// Users to start with (from the state file).
    pub initial_users: Vec<(String, String)>,
    /// Per-user series on `/metrics`.
    pub per_user_metrics: bool,
    /// What start-up knows (driver, workers, certificate expiry), for `/status` and
    /// `/metrics`.
    pub facts: Option<Arc<ServerFacts>>,
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
}

fn boxed(paths: Vec<String>) -> Vec<Box<str>> {
    paths.into_iter().map(String::into_boxed_str).collect()
}

impl Controller {
    /// A controller over `workers`. Initial users are queued to every worker before it
    /// starts, so they route from the first connection.
    pub fn new(workers: Vec<WorkerLink>, options: Options) -> Self {
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
        };
        if !options.initial_users.is_empty() {
            let change = RouteChange::Upsert(
                options
                    .initial_users
                    .into_iter()
                    .map(|(p, d)| Route::new(&p, &d))
                    .collect(),
            );
            controller.table.apply(&change);
            broadcast::tell_all(&controller.workers, Request::Routes(change));
        }
        controller
    }

    /// Makes `change` durable (if there is a state file), applies it here and on every
    /// worker, and returns once all have it.
    fn change(&mut self, change: RouteChange) -> Result<(), String> {
        if let Some(state) = &mut self.state {
            state
                .append(&change)
                .map_err(|e| format!("internal: state file: {e}: nothing was changed"))?;
        }
        self.table.apply(&change);
        broadcast::ask_all(&self.workers, Request::Routes(change));
        self.changes += 1;
        if let Some(state) = &mut self.state {
            if let Err(e) = state.compact_if_large(&self.table) {
                log::error!("internal: compacting the state file: {e}");
            }
        }
        Ok(())
    }

    /// Runs one validated command; the reply's extra fields are filled where it has them.
    pub fn execute(&mut self, command: Command) -> Result<Reply, String> {
        let mut reply = Reply::default();
        match command {
            Command::Ping => {}
            Command::Reset => self.change(RouteChange::Clear)?,
            Command::Del(paths) => self.change(RouteChange::Remove(boxed(paths)))?,
            Command::Add(users) => self.change(RouteChange::Upsert(users))?,
            Command::Sync(users) => {
                let mut wanted = HashSet::with_capacity(users.len());
                let (mut added, mut changed) = (0, 0);
                let mut upsert = Vec::new();
                for user in &users {
                    let path = user.path();
                    match self.table.lookup(path) {
                        Some(existing) if existing.dst() == user.dst() => {}
                        Some(_) => {
                            changed += 1;
                            upsert.push(user.clone());
                        }
                        None if wanted.contains(path) => {
                            // A duplicate inside the sync: the later one wins, counted once.
                            upsert.push(user.clone());
                        }
                        None => {
                            added += 1;
                            upsert.push(user.clone());
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
                if !upsert.is_empty() || !remove.is_empty() {
                    self.change(RouteChange::Sync { upsert, remove })?;
                }
            }
            Command::Stats { paths, reset } => {
                let request = Request::Stats {
                    paths: paths.map(boxed),
                    reset,
                };
                reply.users = Some(sum_totals(broadcast::ask_all(&self.workers, request)));
            }
            Command::Kick(paths) => {
                let kicked = broadcast::ask_all(&self.workers, Request::Kick(boxed(paths)))
                    .into_iter()
                    .map(|r| match r {
                        Some(WorkerReply::Kicked(n)) => n,
                        _ => 0,
                    })
                    .sum();
                reply.kicked = Some(kicked);
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
    pub fn metrics(&self) -> String {
        let snapshots: Vec<_> = broadcast::ask_all(&self.workers, Request::Metrics)
            .into_iter()
            .map(|r| match r {
                Some(WorkerReply::Metrics(m)) => m,
                _ => Default::default(),
            })
            .collect();
        let per_user = self.per_user_metrics.then(|| {
            let request = Request::Stats {
                paths: None,
                reset: false,
            };
            sum_totals(broadcast::ask_all(&self.workers, request))
        });
        let mut page = crate::control::metrics::render(
            self.table.len(),
            &self.change_latency,
            &snapshots,
            per_user.as_deref(),
        );
        if let Some(facts) = &self.facts {
            page.push_str(&status::process_metrics(facts));
        }
        page
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
    fn status_response(&self, resource: status::Resource, head: &RequestHead) -> (Vec<u8>, bool) {
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
        let request = Request::Stats {
            paths: None,
            reset: false,
        };
        let totals = sum_totals(broadcast::ask_all(&self.workers, request));
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
        let controller = Rc::new(RefCell::new(controller));
        let open = Rc::new(Cell::new(0usize));
        let sampled = Rc::clone(&controller);
        crate::runtime::task::spawn_contained(async move {
            loop {
                sampled.borrow_mut().sample_throughput();
                monoio::time::sleep(status::SAMPLE_EVERY).await;
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
            let (response, keep_alive) = controller.borrow().status_response(resource, &head);
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
            let page = controller.borrow().metrics();
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
