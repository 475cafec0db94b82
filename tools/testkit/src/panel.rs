//! A panel simulator for the panel sync (`-panel`): a small threaded HTTP/1.1 server that
//! speaks both protocols a node pulls from, and keeps state like a panel does:
//!
//! - ours (`mtt`): `GET /users` (`{"args_bunch":[...]}` with an ETag, 304 on
//!   `If-None-Match`), `POST /traffic` (billing reports, summed per path), `POST /alive`;
//!   `Authorization: Bearer TOKEN` required.
//! - UniProxy (V2board / Xboard): `/api/v1/server/UniProxy/{config,user,push,alive,alivelist}`
//!   with the query parameters `token`, `node_id` and `node_type` required on every
//!   request, as Xboard's `UniProxyController` answers them.
//!
//! It counts what nodes push (per user), remembers every request (route, node, status,
//! and which version of the user list it was given), and can be told to fail: down,
//! slow, an error status, a body that is not JSON, an empty user list.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How the simulator misbehaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Accept the connection and close it without a word.
    Down,
    /// Wait this long before answering (normally).
    Slow(Duration),
    /// Answer with this status and a text body.
    Status(u16),
    /// Answer GETs with 200 and a body that is not JSON.
    Garbage,
    /// Answer user list GETs with an empty list (a new ETag).
    EmptyList,
}

/// One request the simulator answered.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The route's last segment: `users`, `traffic`, `alive` (mtt); `config`, `user`,
    /// `push`, `alive`, `alivelist` (UniProxy).
    pub route: String,
    /// The `node_id` query parameter, if any.
    pub node_id: Option<String>,
    /// The status answered (0: the connection was dropped).
    pub status: u16,
    /// For a user list answered with 200: the version of the list given.
    pub version: Option<u64>,
    /// When the answer was sent.
    pub at: Instant,
}

#[derive(Default)]
struct State {
    /// Our protocol's users: `args_bunch` entries.
    mtt_users: Vec<Value>,
    /// UniProxy's users: `{"id","uuid","speed_limit","device_limit"}`.
    uniproxy_users: Vec<Value>,
    /// Bumped on every change of either list; the ETag is `"v{version}"`.
    version: u64,
    /// The node token the panel expects.
    token: String,
    /// The failure in force, and the routes it applies to (`None`: all).
    failure: Option<(Failure, Option<Vec<String>>)>,
    /// Bytes pushed and taken, `[up, down]`, by path (mtt) or user id (UniProxy).
    traffic: HashMap<String, [u64; 2]>,
    /// The `report_id`s of the mtt reports taken, in order.
    report_ids: Vec<String>,
    /// The last alive report: client IPs by path (mtt) or user id (UniProxy).
    alive: HashMap<String, Vec<String>>,
    /// What `alivelist` answers: devices elsewhere by user id.
    alive_list: HashMap<String, u64>,
    /// What UniProxy's `config` answers: pull and push intervals in seconds.
    intervals: (u64, u64),
    requests: Vec<Seen>,
}

/// The simulator, serving until dropped.
pub struct Panel {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Panel {
    /// Starts a panel that expects `token` from nodes, with no users.
    pub fn start(token: &str) -> Panel {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            version: 1,
            intervals: (60, 60),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopped) = (Arc::clone(&state), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Panel { addr, state, stop }
    }

    /// The base URL nodes are given (`-panel`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Replaces our protocol's user list (`args_bunch` entries): a new version.
    pub fn set_mtt_users(&self, users: Vec<Value>) {
        self.with(|s| {
            s.mtt_users = users;
            s.version += 1;
        });
    }

    /// Replaces UniProxy's user list: a new version.
    pub fn set_uniproxy_users(&self, users: Vec<Value>) {
        self.with(|s| {
            s.uniproxy_users = users;
            s.version += 1;
        });
    }

    /// The version the user lists are at now.
    pub fn version(&self) -> u64 {
        self.with(|s| s.version)
    }

    /// Fails every request this way from now on (`None`: behave).
    pub fn fail(&self, failure: Option<Failure>) {
        self.with(|s| s.failure = failure.map(|f| (f, None)));
    }

    /// Fails only requests to these routes (see [`Seen::route`]).
    pub fn fail_only(&self, routes: &[&str], failure: Failure) {
        let routes = routes.iter().map(|r| r.to_string()).collect();
        self.with(|s| s.failure = Some((failure, Some(routes))));
    }

    /// Bytes taken for a path (mtt) or user id (UniProxy): `[up, down]`.
    pub fn traffic(&self, user: &str) -> [u64; 2] {
        self.with(|s| s.traffic.get(user).copied().unwrap_or_default())
    }

    /// The `report_id`s of the mtt reports taken.
    pub fn report_ids(&self) -> Vec<String> {
        self.with(|s| s.report_ids.clone())
    }

    /// The last alive report: client IPs by path (mtt) or user id (UniProxy).
    pub fn alive(&self) -> HashMap<String, Vec<String>> {
        self.with(|s| s.alive.clone())
    }

    /// What `alivelist` answers from now on: devices on other nodes by user id.
    pub fn set_alive_list(&self, alive: &[(&str, u64)]) {
        let alive = alive.iter().map(|(id, n)| (id.to_string(), *n)).collect();
        self.with(|s| s.alive_list = alive);
    }

    /// What UniProxy's `config` answers: pull and push intervals, in seconds.
    pub fn set_intervals(&self, pull: u64, push: u64) {
        self.with(|s| s.intervals = (pull, push));
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.with(|s| s.requests.clone())
    }

    /// How many requests to `route` were answered with `status`.
    pub fn count(&self, route: &str, status: u16) -> usize {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.route == route && r.status == status)
                .count()
        })
    }
}

impl Drop for Panel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// One request as read off the wire.
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if raw.len() > 65536 || stream.read(&mut byte).ok()? != 1 {
            return None;
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What to answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>);

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    let route = request.path.rsplit('/').next().unwrap_or("").to_string();
    let node_id = request.query.get("node_id").cloned();
    let failure = {
        let s = state.lock().unwrap();
        s.failure.clone().and_then(|(failure, routes)| {
            routes.is_none_or(|r| r.contains(&route)).then_some(failure)
        })
    };
    let mut version = None;
    let answer: Option<Answer> = match failure {
        Some(Failure::Down) => None,
        Some(Failure::Status(status)) => Some((status, vec![], b"panel error".to_vec())),
        Some(Failure::Garbage) if request.method == "GET" => {
            Some((200, vec![], b"<html>Bad Gateway</html>".to_vec()))
        }
        other => {
            if let Some(Failure::Slow(wait)) = other {
                std::thread::sleep(wait);
            }
            let empty = other == Some(Failure::EmptyList);
            Some(answer(&request, &route, empty, state, &mut version))
        }
    };
    let status = answer.as_ref().map_or(0, |a| a.0);
    if let Some((status, headers, body)) = answer {
        let mut response = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (name, value) in headers {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        let mut bytes = response.into_bytes();
        bytes.extend_from_slice(&body);
        let _ = stream.write_all(&bytes);
    }
    state.lock().unwrap().requests.push(Seen {
        route,
        node_id,
        status,
        version,
        at: Instant::now(),
    });
}

fn json_answer(status: u16, value: Value) -> Answer {
    (status, vec![], value.to_string().into_bytes())
}

/// Answers a request the panel is not failing.
fn answer(
    request: &Request,
    route: &str,
    empty: bool,
    state: &Mutex<State>,
    version: &mut Option<u64>,
) -> Answer {
    let mut s = state.lock().unwrap();
    let uniproxy = request.path.starts_with("/api/v1/server/UniProxy/");
    if uniproxy {
        let token_ok = request.query.get("token") == Some(&s.token);
        if !token_ok {
            return json_answer(403, json!({"message": "token is error"}));
        }
        if !request.query.contains_key("node_id") || !request.query.contains_key("node_type") {
            return json_answer(
                400,
                json!({"message": "node_id and node_type are required"}),
            );
        }
    } else {
        let bearer = format!("Bearer {}", s.token);
        if request.headers.get("authorization") != Some(&bearer) {
            return json_answer(401, json!({"message": "unauthorized"}));
        }
    }
    let body: Option<Value> = serde_json::from_slice(&request.body).ok();
    match (request.method.as_str(), uniproxy, route) {
        ("GET", false, "users") | ("GET", true, "user") => {
            let etag = if empty {
                "\"empty\"".to_string()
            } else {
                format!("\"v{}\"", s.version)
            };
            if request.headers.get("if-none-match") == Some(&etag) {
                return (304, vec![], Vec::new());
            }
            *version = Some(s.version);
            let list = match (uniproxy, empty) {
                (_, true) => Vec::new(),
                (false, false) => s.mtt_users.clone(),
                (true, false) => s.uniproxy_users.clone(),
            };
            let value = if uniproxy {
                json!({ "users": list })
            } else {
                json!({ "args_bunch": list })
            };
            (200, vec![("ETag", etag)], value.to_string().into_bytes())
        }
        ("GET", true, "config") => {
            let (pull, push) = s.intervals;
            json_answer(
                200,
                json!({"server_port": 443, "base_config": {"push_interval": push, "pull_interval": pull}}),
            )
        }
        ("GET", true, "alivelist") => json_answer(200, json!({ "alive": s.alive_list })),
        ("POST", false, "traffic") => {
            let Some(report) = body else {
                return json_answer(400, json!({"message": "bad json"}));
            };
            for user in report["users"].as_array().cloned().unwrap_or_default() {
                let path = user["path"].as_str().unwrap_or_default().to_string();
                let entry = s.traffic.entry(path).or_default();
                entry[0] += user["bytes_up"].as_u64().unwrap_or(0);
                entry[1] += user["bytes_down"].as_u64().unwrap_or(0);
            }
            let id = report["report_id"].as_str().unwrap_or_default().to_string();
            s.report_ids.push(id);
            json_answer(200, json!({"ok": true}))
        }
        ("POST", true, "push") => {
            let Some(Value::Object(pushed)) = body else {
                return json_answer(400, json!({"message": "bad json"}));
            };
            for (id, counts) in pushed {
                let entry = s.traffic.entry(id).or_default();
                entry[0] += counts[0].as_u64().unwrap_or(0);
                entry[1] += counts[1].as_u64().unwrap_or(0);
            }
            json_answer(200, json!({"data": true}))
        }
        ("POST", _, "alive") => {
            let alive = match (uniproxy, body) {
                (false, Some(v)) => v["alive"].clone(),
                (true, Some(v)) => v,
                (_, None) => return json_answer(400, json!({"message": "bad json"})),
            };
            s.alive = alive
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            let ips = v
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|ip| ip.as_str().map(str::to_string))
                                        .collect()
                                })
                                .unwrap_or_default();
                            (k.clone(), ips)
                        })
                        .collect()
                })
                .unwrap_or_default();
            json_answer(200, json!({"data": true}))
        }
        _ => json_answer(404, json!({"message": "not found"})),
    }
}
