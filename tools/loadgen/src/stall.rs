//! `loadgen stall`: how long an open tunnel waits while its worker applies large route
//! changes. One WSS tunnel to an echo backend sends a 16-byte message every 100 µs and
//! times each echo, first on an idle server, then while users are loaded in POSTs of up
//! to 2 MiB (46,000 users each, the largest command a panel can send). A worker that
//! applies a change in one step holds every echo sent meanwhile: the slowest echo during
//! the load bounds the stall (give or take the 100 µs between messages and the noise of a
//! shared machine, which the idle figures show).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend;
use crate::client::{self, Chunk, Proto, Reader};
use crate::record::Recorder;
use crate::users::{add_bodies, Controller};

pub struct Stall {
    pub addr: SocketAddr,
    pub controller: SocketAddr,
    /// The echo backend the tunnel's user goes to.
    pub sink: SocketAddr,
    pub count: usize,
    pub max_bytes: usize,
}

/// Echo round trips in µs, until `stop`.
fn ping(
    t: &mut client::Transport,
    reader: &mut Reader,
    stop: &AtomicBool,
) -> Result<Vec<f64>, String> {
    let mut times = Vec::new();
    let mut frame = Vec::new();
    client::ws_frame(b"0123456789abcdef", &mut frame);
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        t.write_all(&frame).map_err(|e| e.to_string())?;
        t.flush().map_err(|e| e.to_string())?;
        let mut got = 0;
        while got < 16 {
            match reader.next(t).map_err(|e| e.to_string())? {
                Chunk::Data(r) => got += r.len(),
                other => return Err(format!("echo failed: {other:?}")),
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1e6);
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(times)
}

fn record(rec: &Recorder, name: &str, mut times: Vec<f64>) {
    if times.is_empty() {
        return;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    rec.record(&format!("{name}: echoes"), times.len() as f64, "");
    rec.record(&format!("{name}: p50"), pick(0.5), "us");
    rec.record(&format!("{name}: p99"), pick(0.99), "us");
    rec.record(&format!("{name}: max"), pick(1.0), "us");
}

pub fn run(cfg: Stall, rec: &Recorder) -> Result<(), String> {
    let mut c = Controller::connect(cfg.controller).map_err(|e| e.to_string())?;
    c.post(br#"{"opt":3}"#).map_err(|e| e.to_string())?;
    let user = format!(
        r#"{{"opt":1,"args_bunch":[{{"path":"/stall","dst":"{}"}}]}}"#,
        cfg.sink
    );
    c.post(user.as_bytes()).map_err(|e| e.to_string())?;
    let bodies = add_bodies(cfg.count, 0, cfg.max_bytes, "127.0.0.1:9");

    let tls = client::tls_config(false);
    let mut t = client::connect(cfg.addr, Proto::Wss, &tls, None).map_err(|e| e.to_string())?;
    let early = client::upgrade(&mut t, "/stall", "smux_off").map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    client::ws_frame(&backend::request(b'E', 0), &mut out);
    t.write_all(&out).map_err(|e| e.to_string())?;
    let reader = Reader::new(true, early);

    let stop = Arc::new(AtomicBool::new(false));
    let pinger = |stop: Arc<AtomicBool>, mut t: client::Transport, mut reader: Reader| {
        std::thread::spawn(move || {
            let times = ping(&mut t, &mut reader, &stop);
            (times, t, reader)
        })
    };
    // Idle first: the machine's own noise.
    let idle = pinger(Arc::clone(&stop), t, reader);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (idle_times, t, reader) = idle.join().map_err(|_| "pinger panicked")?;
    let idle_times = idle_times?;

    stop.store(false, Ordering::Relaxed);
    let loading = pinger(Arc::clone(&stop), t, reader);
    let started = Instant::now();
    for body in &bodies {
        c.post(body).map_err(|e| e.to_string())?;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (load_times, _, _) = loading.join().map_err(|_| "pinger panicked")?;
    let load_times = load_times?;

    let largest = bodies.iter().map(Vec::len).max().unwrap_or(0);
    let how = format!(
        "{} users in {} POSTs of <= {} KiB",
        cfg.count,
        bodies.len(),
        largest.div_ceil(1024)
    );
    rec.record(&format!("stall: load {how}: time"), secs, "s");
    record(rec, "stall: tunnel echo, idle", idle_times);
    record(
        rec,
        &format!("stall: tunnel echo, loading {how}"),
        load_times,
    );
    Ok(())
}
