//! `loadgen users` (time and server memory to load many users through the controller) and
//! `loadgen latency` (round-trip time of small route changes, which the controller answers
//! only once every worker has applied them).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::procfs;
use crate::record::Recorder;

/// A keep-alive HTTP/1.1 connection to the controller.
pub struct Controller {
    stream: BufReader<TcpStream>,
}

impl Controller {
    pub fn connect(addr: SocketAddr) -> io::Result<Controller> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Controller {
            stream: BufReader::new(stream),
        })
    }

    /// POSTs `body`; returns the reply's JSON after checking it says `res: 1`.
    pub fn post(&mut self, body: &[u8]) -> io::Result<serde_json::Value> {
        let (status, reply) = self.request("POST", body)?;
        let json: serde_json::Value = serde_json::from_slice(&reply)
            .map_err(|e| io::Error::other(format!("reply is not JSON: {e}")))?;
        if !status.contains(" 200 ") || json["res"] != 1 {
            return Err(io::Error::other(format!(
                "controller refused: {} {json}",
                status.trim()
            )));
        }
        Ok(json)
    }

    /// GETs `/metrics`: the server's own count of route changes by latency bucket, as
    /// (upper bound in seconds, changes at or under it), cumulative.
    pub fn route_change_buckets(&mut self) -> io::Result<Vec<(f64, u64)>> {
        let (status, page) = self.request("GET", b"")?;
        if !status.contains(" 200 ") {
            return Err(io::Error::other(format!("/metrics: {}", status.trim())));
        }
        let page = String::from_utf8_lossy(&page);
        let mut buckets = Vec::new();
        for line in page.lines() {
            let Some(rest) = line.strip_prefix("mtt_route_change_seconds_bucket{le=\"") else {
                continue;
            };
            let Some((bound, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().map_err(io::Error::other)?
            };
            buckets.push((bound, count.trim().parse().map_err(io::Error::other)?));
        }
        Ok(buckets)
    }

    /// One request on the keep-alive connection: the status line and the body.
    fn request(&mut self, method: &str, body: &[u8]) -> io::Result<(String, Vec<u8>)> {
        let head = if method == "GET" {
            "GET /metrics HTTP/1.1\r\nHost: controller\r\n\r\n".to_string()
        } else {
            format!(
                "{method} / HTTP/1.1\r\nHost: controller\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
        };
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut status = String::new();
        self.stream.read_line(&mut status)?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line)? == 0 {
                return Err(io::Error::other("controller closed the connection"));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut reply = vec![0u8; length];
        self.stream.read_exact(&mut reply)?;
        Ok((status, reply))
    }
}

/// The path of user `i`: 16 hex digits, as panels' random paths are about that long.
pub fn user_path(prefix: &str, i: usize) -> String {
    format!(
        "{prefix}{:016x}",
        (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

/// Add commands for users `0..count`: `per_post` users each, or (with `per_post` 0) as
/// many as fit in `max_bytes`.
pub fn add_bodies(count: usize, per_post: usize, max_bytes: usize, dst: &str) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let mut body = Vec::new();
    let mut in_body = 0;
    for i in 0..count {
        let entry = format!(r#"{{"path":"{}","dst":"{dst}"}}"#, user_path("/", i));
        let full = if per_post > 0 {
            in_body == per_post
        } else {
            body.len() + entry.len() + 3 > max_bytes
        };
        if full {
            body.extend_from_slice(b"]}");
            bodies.push(std::mem::take(&mut body));
            in_body = 0;
        }
        if in_body == 0 {
            body.extend_from_slice(br#"{"opt":1,"args_bunch":["#);
        } else {
            body.push(b',');
        }
        body.extend_from_slice(entry.as_bytes());
        in_body += 1;
    }
    if in_body > 0 {
        body.extend_from_slice(b"]}");
        bodies.push(body);
    }
    bodies
}

pub struct Users {
    pub controller: SocketAddr,
    pub count: usize,
    pub per_post: usize,
    pub max_bytes: usize,
    pub server_pid: u32,
}

pub fn run_users(cfg: Users, rec: &Recorder) -> Result<(), String> {
    let bodies = add_bodies(cfg.count, cfg.per_post, cfg.max_bytes, "127.0.0.1:9");
    let largest = bodies.iter().map(Vec::len).max().unwrap_or(0);
    let mut c = Controller::connect(cfg.controller).map_err(|e| e.to_string())?;
    c.post(br#"{"opt":3}"#).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let before = procfs::rss_bytes(cfg.server_pid).map_err(|e| e.to_string())?;
    let started = Instant::now();
    for body in &bodies {
        c.post(body).map_err(|e| e.to_string())?;
    }
    let secs = started.elapsed().as_secs_f64();
    let reply = c.post(br#"{"opt":9}"#).map_err(|e| e.to_string())?;
    if reply["current_users"] != cfg.count {
        return Err(format!("expected {} users, server says {reply}", cfg.count));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = procfs::rss_bytes(cfg.server_pid).map_err(|e| e.to_string())?;
    let how = format!(
        "{} users in {} POSTs of <= {} KiB",
        cfg.count,
        bodies.len(),
        largest.div_ceil(1024)
    );
    rec.record(&format!("load {how}: time"), secs, "s");
    rec.record(
        &format!("load {how}: server RSS per user"),
        after.saturating_sub(before) as f64 / cfg.count as f64,
        "B",
    );
    Ok(())
}

pub struct Latency {
    pub controller: SocketAddr,
    pub count: usize,
    pub label: String,
}

pub fn run_latency(cfg: Latency, rec: &Recorder) -> Result<(), String> {
    let mut c = Controller::connect(cfg.controller).map_err(|e| e.to_string())?;
    // The server's own timing (receipt to every worker applied) of just these changes:
    // the difference of its histogram before and after.
    let before = c.route_change_buckets().map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(cfg.count);
    for i in 0..cfg.count {
        let body = format!(
            r#"{{"opt":1,"args_bunch":[{{"path":"{}","dst":"127.0.0.1:9"}}]}}"#,
            user_path("/latency-", i)
        );
        let t0 = Instant::now();
        c.post(body.as_bytes()).map_err(|e| e.to_string())?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = c.route_change_buckets().map_err(|e| e.to_string())?;
    times.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let name = format!("route change round trip{}", cfg.label);
    rec.record(&format!("{name}: p50"), pick(0.5), "us");
    rec.record(&format!("{name}: p99"), pick(0.99), "us");
    rec.record(&format!("{name}: max"), pick(1.0), "us");
    if after.len() == before.len() && !after.is_empty() {
        let counts: Vec<(f64, u64)> = after
            .iter()
            .zip(&before)
            .map(|(&(bound, a), &(_, b))| (bound, a.saturating_sub(b)))
            .collect();
        let total = counts.last().map_or(0, |&(_, n)| n).max(1) as f64;
        let within = |limit: f64| {
            counts
                .iter()
                .filter(|&&(bound, _)| bound <= limit)
                .map(|&(_, n)| n)
                .max()
                .unwrap_or(0) as f64
                / total
        };
        // The smallest bucket bound under which a share `q` of the changes fell.
        let bound_of = |q: f64| {
            counts
                .iter()
                .find(|&&(_, n)| n as f64 >= q * total)
                .map_or(f64::INFINITY, |&(bound, _)| bound * 1e6)
        };
        let name = format!("route change in the server{}", cfg.label);
        rec.record(
            &format!("{name}: share within 1 ms"),
            within(0.001) * 100.0,
            "%",
        );
        rec.record(&format!("{name}: p50 at most"), bound_of(0.5), "us");
        rec.record(&format!("{name}: p99 at most"), bound_of(0.99), "us");
    }
    Ok(())
}
