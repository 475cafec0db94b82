//! The controller client (HTTP/1.1 keep-alive POSTs of JSON commands) and the churn that
//! adds, deletes and overwrites users at a steady rate while the tunnels run.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use testkit::rng::Rng;

/// A keep-alive connection to the controller, reopened after `reuse` requests.
pub struct Controller {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    used: u32,
    reuse: u32,
}

impl Controller {
    pub fn new(addr: SocketAddr) -> Controller {
        Controller {
            addr,
            conn: None,
            used: 0,
            reuse: 50,
        }
    }

    /// Closes the connection (so it is not counted in the server's open files).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// POSTs one command; the reply's JSON if the server said `res: 1`.
    pub fn command(&mut self, body: &Value) -> Result<Value, String> {
        let reply = self
            .post(&body.to_string())
            .map_err(|e| format!("controller: {e}"))?;
        if reply["res"].as_u64() != Some(1) {
            return Err(format!("controller refused {body}: {reply}"));
        }
        Ok(reply)
    }

    pub fn post(&mut self, body: &str) -> io::Result<Value> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.set_write_timeout(Some(Duration::from_secs(20)))?;
            self.conn = Some(BufReader::new(s));
            self.used = 0;
        }
        self.used += 1;
        let last = self.used >= self.reuse;
        let conn = self.conn.as_mut().unwrap();
        let request = format!(
            "POST /soak HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if last { "Connection: close\r\n" } else { "" }
        );
        let result = (|| {
            conn.get_mut().write_all(request.as_bytes())?;
            let mut line = String::new();
            conn.read_line(&mut line)?;
            if !line.starts_with("HTTP/1.1 200") {
                return Err(io::Error::other(format!(
                    "controller answered {:?}",
                    line.trim_end()
                )));
            }
            let mut length = None;
            let mut close = false;
            loop {
                line.clear();
                if conn.read_line(&mut line)? == 0 {
                    return Err(io::Error::other("controller closed inside the head"));
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((n, v)) = l.split_once(':') {
                    if n.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse::<usize>().ok();
                    } else if n.eq_ignore_ascii_case("connection")
                        && v.trim().eq_ignore_ascii_case("close")
                    {
                        close = true;
                    }
                }
            }
            let length = length
                .ok_or_else(|| io::Error::other("controller reply without Content-Length"))?;
            let mut body = vec![0u8; length];
            conn.read_exact(&mut body)?;
            let value: Value = serde_json::from_slice(&body).map_err(io::Error::other)?;
            Ok((value, close))
        })();
        match result {
            Ok((value, close)) => {
                if close || last {
                    self.conn = None;
                }
                Ok(value)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// What the churn did.
#[derive(Default)]
pub struct ChurnStats {
    pub ops: AtomicU64,
    pub adds: AtomicU64,
    pub dels: AtomicU64,
    pub pings: AtomicU64,
    pub overwrites: AtomicU64,
    pub errors: AtomicU64,
    /// `current_users` not what it should be (only checked when the server is ours).
    pub count_mismatches: AtomicU64,
    pub max_latency_us: AtomicU64,
    /// The first few error messages.
    pub messages: Mutex<Vec<String>>,
}

impl ChurnStats {
    fn error(&self, msg: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut m = self.messages.lock().unwrap();
        if m.len() < 10 {
            m.push(msg);
        }
    }
}

#[derive(Clone)]
pub struct ChurnConfig {
    pub controller: SocketAddr,
    pub ops_per_sec: f64,
    /// Users the soak itself keeps (path, dst), overwritten now and then with the same dst.
    pub soak_users: Vec<(String, String)>,
    /// `current_users` before the churn starts; `None`: do not check counts (attached to a
    /// server someone else may change).
    pub base_users: Option<u64>,
    /// At most this many churn users exist at once.
    pub max_users: usize,
    pub seed: u64,
}

/// Runs the churn until `stop`, then deletes every user it added. Returns whether the
/// cleanup succeeded.
pub fn churn(cfg: &ChurnConfig, stats: &ChurnStats, stop: &AtomicBool) -> bool {
    let mut ctl = Controller::new(cfg.controller);
    let mut rng = Rng::new(cfg.seed);
    let mut users: Vec<String> = Vec::new();
    let mut next_id = 0u64;
    let start = Instant::now();
    let mut n = 0u64;
    let expected = |users: &Vec<String>| cfg.base_users.map(|b| b + users.len() as u64);
    while !stop.load(Relaxed) && cfg.ops_per_sec > 0.0 {
        let due = start + Duration::from_secs_f64(n as f64 / cfg.ops_per_sec);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).min(Duration::from_millis(200)));
            continue;
        }
        n += 1;
        let roll = rng.below(100);
        // The users this command adds, and those it deletes, applied to `users` on success.
        let mut added: Vec<String> = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        let body = if roll < 10 {
            stats.pings.fetch_add(1, Relaxed);
            json!({"opt": 9})
        } else if roll < 15 && !cfg.soak_users.is_empty() {
            stats.overwrites.fetch_add(1, Relaxed);
            let (path, dst) = &cfg.soak_users[rng.below(cfg.soak_users.len() as u64) as usize];
            json!({"opt": 1, "args_bunch": [{"path": path, "dst": dst}]})
        } else if (roll < 58 && users.len() < cfg.max_users) || users.is_empty() {
            stats.adds.fetch_add(1, Relaxed);
            let mut args = Vec::new();
            for _ in 0..rng.range(1, 5) {
                let path = format!("/churn/{}/{next_id}", cfg.seed % 1000);
                next_id += 1;
                let port = rng.range(1, 65535);
                args.push(json!({"path": path, "dst": format!("127.0.0.1:{port}")}));
                added.push(path);
            }
            json!({"opt": 1, "args_bunch": args})
        } else {
            stats.dels.fetch_add(1, Relaxed);
            for _ in 0..rng.range(1, 5) {
                let p = &users[rng.below(users.len() as u64) as usize];
                if !gone.contains(p) {
                    gone.push(p.clone());
                }
            }
            let mut args: Vec<Value> = gone.iter().map(|p| json!({"path": p})).collect();
            // An unknown path is ignored by the server.
            args.push(json!({"path": "/churn/never-added"}));
            json!({"opt": 2, "args_bunch": args})
        };
        let t0 = Instant::now();
        let result = ctl.command(&body);
        stats
            .max_latency_us
            .fetch_max(t0.elapsed().as_micros() as u64, Relaxed);
        stats.ops.fetch_add(1, Relaxed);
        match result {
            Ok(reply) => {
                users.retain(|u| !gone.contains(u));
                users.extend(added);
                if let Some(want) = expected(&users) {
                    let got = reply["current_users"].as_u64();
                    if got != Some(want) {
                        stats.count_mismatches.fetch_add(1, Relaxed);
                        stats.error(format!(
                            "current_users {got:?} after {body}, expected {want}"
                        ));
                    }
                }
            }
            Err(e) => stats.error(e),
        }
    }
    // Leave the table as it was before the churn.
    let mut ok = true;
    for batch in users.chunks(500) {
        let args: Vec<Value> = batch.iter().map(|p| json!({"path": p})).collect();
        if let Err(e) = ctl.command(&json!({"opt": 2, "args_bunch": args})) {
            stats.error(format!("cleanup: {e}"));
            ok = false;
        }
    }
    users.clear();
    match ctl.command(&json!({"opt": 9})) {
        Ok(reply) => {
            if let Some(want) = expected(&users) {
                if reply["current_users"].as_u64() != Some(want) {
                    stats.error(format!(
                        "after cleanup current_users {}, expected {want}",
                        reply["current_users"]
                    ));
                    ok = false;
                }
            }
        }
        Err(e) => {
            stats.error(format!("final ping: {e}"));
            ok = false;
        }
    }
    ctl.disconnect();
    ok
}
