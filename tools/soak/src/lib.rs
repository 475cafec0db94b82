//! `soak`: a soak test for mtt-mu-server.
//!
//! Runs N tunnels at once, a mix of plain (`smux_off`) tunnels and mux (`smux_on`)
//! sessions of several streams, each streaming its own deterministic byte stream through
//! an echo backend that this tool runs; every byte is checked twice, by the backend on
//! the way up and by the client on the way back. Tunnels end and are replaced all along
//! (by the client's close, by the backend's close, by a mux stream's FIN), while the
//! controller adds, deletes and overwrites other users at a steady rate and pings. The
//! server's RSS and open file descriptors are sampled every second; after the last tunnel
//! closes they must come back to the baseline taken before the first one opened: the fd
//! count exactly, the RSS within a slack.
//!
//! The binary (`src/main.rs`) is a command line over [`run`]; `tests/it/soak.rs` of the
//! server calls [`run`] directly for the short soak of CI. RELIABILITY.md ("Soak") says
//! what it checks and what it found.
//!
//! Layout:
//! - this file: [`Config`], [`run`] (the phases, the baseline checks, the verdict), [`Report`].
//! - [`tunnel`]: plain tunnels and mux sessions, the worker threads that drive them.
//! - [`backend`]: the echo backend that also checks the upload.
//! - [`controller`]: the controller client and the user churn.
//! - [`server`]: starting the server under test, or attaching to one.
//!
//! The client side (TLS, WebSocket and smux framing, the upgrade), the /proc readers and
//! the seeded generators are the `testkit` crate's, shared with the tests and loadgen.

pub mod backend;
pub mod controller;
pub mod server;
pub mod tunnel;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::procfs;
use testkit::rng;

use crate::controller::{ChurnConfig, ChurnStats, Controller};
use crate::tunnel::{Mux, Plain, Shared, TunnelConfig, Unit};

/// Which server to soak.
#[derive(Clone, Debug)]
pub enum Target {
    /// Start this binary on ephemeral loopback ports (stopped at the end).
    Spawn {
        bin: PathBuf,
        workers: Option<usize>,
        /// More flags for the server.
        extra: Vec<String>,
    },
    /// A server that is already running.
    Attach {
        data: SocketAddr,
        controller: SocketAddr,
        /// Its pid, for RSS and fd figures (none: not measured).
        pid: Option<u32>,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    /// TLS to the data port (with `Spawn`: the server is started with `-force-tls`).
    pub tls: bool,
    /// Concurrent plain tunnels.
    pub plain: usize,
    /// Concurrent mux sessions.
    pub mux: usize,
    pub streams_per_session: usize,
    /// How long tunnels are opened and run in the main phase; then every tunnel closes.
    pub duration: Duration,
    /// A first phase of the same load, after which the warm RSS baseline is taken (zero:
    /// none, RSS is compared with the cold baseline).
    pub warmup: Duration,
    /// After the soak, call `malloc_trim(0)` in the server through gdb and check that the
    /// RSS is then within the slack of the cold baseline.
    pub gdb_trim: bool,
    /// Controller commands per second (adds, deletes, overwrites, pings).
    pub churn_ops: f64,
    /// Most churn users at once.
    pub churn_users: usize,
    /// Worker threads for the tunnels (0: one per 32 units, at least 4, at most 128).
    pub threads: usize,
    pub max_plain_bytes: u64,
    pub max_stream_bytes: u64,
    pub session_life: (Duration, Duration),
    pub ping_one_in: u64,
    pub backend_close_one_in: u64,
    pub pace: Duration,
    /// Allowed RSS growth over the baseline once every tunnel is closed, in KiB.
    pub rss_slack_kib: u64,
    /// How long after the last tunnel the fd count and RSS may take to come back.
    pub settle: Duration,
    /// Progress line interval (zero: none).
    pub report_every: Duration,
    pub seed: u64,
    /// Soak users (paths to the echo backend).
    pub paths: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            target: Target::Attach {
                data: "127.0.0.1:8443".parse().unwrap(),
                controller: "127.0.0.1:8080".parse().unwrap(),
                pid: None,
            },
            tls: false,
            plain: 300,
            mux: 50,
            streams_per_session: 4,
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(10),
            gdb_trim: false,
            churn_ops: 20.0,
            churn_users: 1000,
            threads: 0,
            max_plain_bytes: 4 << 20,
            max_stream_bytes: 1 << 20,
            session_life: (Duration::from_secs(5), Duration::from_secs(30)),
            ping_one_in: 16,
            backend_close_one_in: 4,
            pace: Duration::ZERO,
            rss_slack_kib: 16 * 1024,
            settle: Duration::from_secs(10),
            report_every: Duration::from_secs(10),
            seed: 1,
            paths: 8,
        }
    }
}

/// One sample of the server's resources.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    /// Plain tunnels plus mux streams open at the time.
    pub tunnels: u64,
    pub sessions: u64,
    pub bytes_echoed: u64,
}

/// Everything a soak run found. [`Report::passed`] is the verdict.
#[derive(Debug, Default)]
pub struct Report {
    pub text: String,
    pub failures: Vec<String>,
    pub samples: Vec<Sample>,
    /// RSS before any tunnel opened.
    pub cold_rss_kib: Option<u64>,
    /// RSS after the warm-up's tunnels all closed: the baseline of the RSS check.
    pub warm_rss_kib: Option<u64>,
    /// RSS after `malloc_trim(0)` (with `gdb_trim`).
    pub trimmed_rss_kib: Option<u64>,
    pub baseline_fds: Option<u64>,
    pub final_rss_kib: Option<u64>,
    pub final_fds: Option<u64>,
    pub peak_rss_kib: u64,
    pub peak_fds: u64,
    pub tunnels_completed: u64,
    pub bytes_echoed: u64,
    pub corrupted_bytes: u64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Runs a soak as configured; prints progress through `log`. Errors only for a soak that
/// could not start (server or backend); everything found later is in the report.
pub fn run(cfg: &Config, log: &(dyn Fn(&str) + Sync)) -> Result<Report, String> {
    let fds_needed = 2 * (cfg.plain + cfg.mux * (cfg.streams_per_session + 1)) as u64 + 1024;
    let nofile = procfs::raise_nofile(fds_needed.max(65536));
    if nofile < fds_needed {
        log(&format!(
            "warning: RLIMIT_NOFILE is {nofile}, this soak needs about {fds_needed}"
        ));
    }
    let backend = backend::Backend::start(2).map_err(|e| format!("backend: {e}"))?;
    let mut running = match &cfg.target {
        Target::Spawn {
            bin,
            workers,
            extra,
        } => server::spawn(bin, cfg.tls, *workers, extra)?,
        Target::Attach {
            data,
            controller,
            pid,
        } => server::Running {
            data: *data,
            controller: *controller,
            pid: *pid,
            tls: cfg.tls,
            spawned: None,
        },
    };
    if running.tls != cfg.tls {
        return Err(format!(
            "server TLS is {}, soak asked {}",
            running.tls, cfg.tls
        ));
    }
    let ours = running.spawned.is_some();
    let pid = running.pid;
    log(&format!(
        "soak: server data={} controller={} pid={pid:?} tls={}; backend {:?}; {} plain + {} mux x {} streams; warm-up {:?}, then {:?}; churn {}/s",
        running.data, running.controller, cfg.tls, backend.addrs, cfg.plain, cfg.mux,
        cfg.streams_per_session, cfg.warmup, cfg.duration, cfg.churn_ops
    ));

    // Soak users, then the cold baseline.
    let mut ctl = Controller::new(running.controller);
    let first_count = ctl
        .command(&json!({"opt": 9}))
        .map_err(|e| format!("first ping: {e}"))?["current_users"]
        .as_u64();
    let soak_users: Vec<(String, String)> = (0..cfg.paths.max(1))
        .map(|i| {
            (
                format!("/soak/{}/{i}", cfg.seed % 1000),
                backend.addrs[i % backend.addrs.len()].to_string(),
            )
        })
        .collect();
    let args: Vec<_> = soak_users
        .iter()
        .map(|(p, d)| json!({"path": p, "dst": d}))
        .collect();
    ctl.command(&json!({"opt": 1, "args_bunch": args}))
        .map_err(|e| format!("adding soak users: {e}"))?;
    // The count the churn starts from (checked only when the server is ours).
    let base_users = ctl
        .command(&json!({"opt": 9}))
        .map_err(|e| format!("ping: {e}"))?["current_users"]
        .as_u64()
        .filter(|n| first_count.is_some_and(|b| *n >= b));
    ctl.disconnect();
    std::thread::sleep(Duration::from_millis(500));
    let (cold_rss, base_fds) = match pid.map(settle_baseline) {
        Some(Ok((r, f))) => (Some(r), Some(f)),
        Some(Err(e)) => return Err(format!("reading /proc of the server: {e}")),
        None => (None, None),
    };
    log(&format!(
        "soak: cold baseline rss={} fds={}",
        cold_rss.map(mib).unwrap_or("-".into()),
        base_fds.map(|f| f.to_string()).unwrap_or("-".into())
    ));

    let shared = Arc::new(Shared {
        cfg: TunnelConfig {
            data: running.data,
            tls: cfg
                .tls
                .then(|| testkit::tls::tls_config(vec![b"http/1.1".to_vec()])),
            paths: soak_users.iter().map(|(p, _)| p.clone()).collect(),
            max_plain_bytes: cfg.max_plain_bytes,
            max_stream_bytes: cfg.max_stream_bytes,
            streams_per_session: cfg.streams_per_session.clamp(1, 16),
            session_life: cfg.session_life,
            ping_one_in: cfg.ping_one_in,
            backend_close_one_in: cfg.backend_close_one_in,
            pace: cfg.pace,
            seed: cfg.seed,
        },
        stop: AtomicBool::new(false),
        stats: Default::default(),
    });

    // Sampler, over the whole run.
    let start = Instant::now();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = pid.map(|pid| {
        let (samples, sampling, shared) = (
            Arc::clone(&samples),
            Arc::clone(&sampling),
            Arc::clone(&shared),
        );
        std::thread::spawn(move || {
            while sampling.load(Relaxed) {
                if let (Ok(rss_kib), Ok(fds)) = (procfs::rss_kib(pid), procfs::fd_count(pid)) {
                    let st = &shared.stats;
                    samples.lock().unwrap().push(Sample {
                        at: start.elapsed(),
                        rss_kib,
                        fds,
                        tunnels: st.active_plain.load(Relaxed) + st.active_streams.load(Relaxed),
                        sessions: st.active_sessions.load(Relaxed),
                        bytes_echoed: st.bytes_echoed.load(Relaxed),
                    });
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    });

    let churn_stats = Arc::new(ChurnStats::default());
    let churn = ChurnConfig {
        controller: running.controller,
        ops_per_sec: cfg.churn_ops,
        soak_users: soak_users.clone(),
        base_users: if ours { base_users } else { None },
        max_users: cfg.churn_users,
        seed: cfg.seed,
    };
    let mut ctx = PhaseCtx {
        cfg,
        shared: &shared,
        running: &mut running,
        backend: &backend,
        churn,
        churn_stats: &churn_stats,
        samples: &samples,
        start,
        base_fds,
        log,
    };
    let mut failures: Vec<String> = Vec::new();
    let mut phases = String::new();
    // The warm-up takes the allocator to its working size: the RSS after it is the
    // baseline the main phase must come back to (see RELIABILITY.md, "Soak").
    let mut warm_rss = None;
    if !cfg.warmup.is_zero() {
        let end = ctx.phase("warm-up", 0, cfg.warmup, &mut failures);
        let _ = writeln!(phases, "{}", end.describe("warm-up"));
        warm_rss = end.rss;
        if let (Some(r), Some(c)) = (end.rss, cold_rss) {
            log(&format!(
                "soak: warm baseline rss={} (cold {}, +{})",
                mib(r),
                mib(c),
                mib(r.saturating_sub(c))
            ));
        }
    }
    let main_end = if failures.is_empty() {
        let end = ctx.phase("soak", 1, cfg.duration, &mut failures);
        let _ = writeln!(phases, "{}", end.describe("soak"));
        Some(end)
    } else {
        None
    };
    let rss_reference = warm_rss.or(cold_rss);
    let final_rss = main_end.as_ref().and_then(|e| e.rss);
    let final_fds = main_end.as_ref().and_then(|e| e.fds);
    if let (Some(reference), Some(rss)) = (rss_reference, final_rss) {
        if rss > reference + cfg.rss_slack_kib {
            failures.push(format!(
                "RSS {} did not return within {} of the {} baseline {} in {:?}",
                mib(rss),
                mib(cfg.rss_slack_kib),
                if warm_rss.is_some() { "warm" } else { "cold" },
                mib(reference),
                cfg.settle
            ));
        }
    }
    // Optional proof that what the allocator keeps is free memory, not a leak.
    let mut trimmed_rss = None;
    if cfg.gdb_trim {
        if let (Some(p), Some(cold)) = (pid, cold_rss) {
            match gdb_malloc_trim(p) {
                Ok(()) => {
                    trimmed_rss = procfs::rss_kib(p).ok();
                    if let Some(t) = trimmed_rss {
                        if t > cold + cfg.rss_slack_kib {
                            failures.push(format!(
                                "RSS after malloc_trim(0) {} is over the cold baseline {} + {}",
                                mib(t),
                                mib(cold),
                                mib(cfg.rss_slack_kib)
                            ));
                        }
                    }
                }
                Err(e) => failures.push(format!("gdb malloc_trim: {e}")),
            }
        }
    }
    sampling.store(false, Relaxed);
    if let Some(s) = sampler {
        let _ = s.join();
    }

    // Verdict.
    let st = &shared.stats;
    let backend_stats = Arc::clone(&backend.stats);
    let bs = &*backend_stats;
    let cs = &*churn_stats;
    let count = |n: u64, what: &str, failures: &mut Vec<String>| {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    };
    count(
        st.corruptions.load(Relaxed),
        "tunnels saw corrupted echo bytes",
        &mut failures,
    );
    count(
        st.corrupted_bytes.load(Relaxed),
        "corrupted bytes (client side)",
        &mut failures,
    );
    count(
        bs.corrupt_bytes.load(Relaxed),
        "corrupted bytes on the way up (seen by the backend)",
        &mut failures,
    );
    count(
        bs.bad_headers.load(Relaxed),
        "backend connections with a corrupted header",
        &mut failures,
    );
    count(
        bs.excess_bytes.load(Relaxed),
        "bytes reached the backend past its close point",
        &mut failures,
    );
    count(
        st.drops.load(Relaxed),
        "unexpected disconnects",
        &mut failures,
    );
    count(st.stalls.load(Relaxed), "stalls", &mut failures);
    count(
        st.connect_failures.load(Relaxed),
        "failed connects or upgrades",
        &mut failures,
    );
    count(
        st.protocol_errors.load(Relaxed),
        "protocol errors from the server",
        &mut failures,
    );
    count(
        bs.errors.load(Relaxed),
        "backend connections reset",
        &mut failures,
    );
    count(cs.errors.load(Relaxed), "controller errors", &mut failures);
    let completed = st.plain_completed.load(Relaxed) + st.streams_completed.load(Relaxed);
    if completed == 0 {
        failures.push("no tunnel completed".into());
    }
    let mut log_note = String::new();
    if let Some(sp) = running.spawned.take() {
        {
            let l = sp.log.lock().unwrap();
            if !l.panics.is_empty() {
                failures.push(format!(
                    "the server logged {} panic line(s): {}",
                    l.panics.len(),
                    l.panics.join(" | ")
                ));
            }
            let _ = write!(
                log_note,
                "server log: {} lines, {} warnings/errors",
                l.lines, l.warning_count
            );
            for w in &l.warnings {
                let _ = write!(log_note, "\n    {w}");
            }
            if !failures.is_empty() {
                let _ = write!(log_note, "\n  last lines:\n    {}", l.tail.join("\n    "));
            }
        }
        let _ = write!(
            log_note,
            "\nserver stop: {}",
            sp.stop(Duration::from_secs(30))
        );
    }
    backend.stop();
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    let mut report = Report {
        cold_rss_kib: cold_rss,
        warm_rss_kib: warm_rss,
        baseline_fds: base_fds,
        final_rss_kib: final_rss,
        final_fds,
        trimmed_rss_kib: trimmed_rss,
        peak_rss_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        peak_fds: samples.iter().map(|s| s.fds).max().unwrap_or(0),
        tunnels_completed: completed,
        bytes_echoed: st.bytes_echoed.load(Relaxed),
        corrupted_bytes: st.corrupted_bytes.load(Relaxed) + bs.corrupt_bytes.load(Relaxed),
        samples,
        failures,
        text: String::new(),
    };
    let mut t = String::new();
    let _ = writeln!(t, "==== soak report ====");
    let _ = writeln!(
        t,
        "config: {} plain + {} mux sessions x {} streams, tls={}, warm-up {:?} + soak {:?}, churn {}/s, seed {}",
        cfg.plain, cfg.mux, cfg.streams_per_session, cfg.tls, cfg.warmup, cfg.duration, cfg.churn_ops, cfg.seed
    );
    let _ = write!(t, "{phases}");
    let _ = writeln!(
        t,
        "tunnels completed: {completed} (plain {} of {} opened, {} closed by the backend; mux streams {} of {} opened, {} closed by the backend; sessions {} of {} opened)",
        st.plain_completed.load(Relaxed),
        st.plain_opened.load(Relaxed),
        st.plain_backend_closed.load(Relaxed),
        st.streams_completed.load(Relaxed),
        st.streams_opened.load(Relaxed),
        st.streams_backend_closed.load(Relaxed),
        st.sessions_completed.load(Relaxed),
        st.sessions_opened.load(Relaxed)
    );
    let _ = writeln!(
        t,
        "bytes: sent {} ({}), echoed and checked {} ({}), checked by the backend on the way up {}",
        st.bytes_sent.load(Relaxed),
        gib(st.bytes_sent.load(Relaxed)),
        st.bytes_echoed.load(Relaxed),
        gib(st.bytes_echoed.load(Relaxed)),
        gib(bs.bytes.load(Relaxed))
    );
    let _ = writeln!(
        t,
        "errors: corrupted bytes {} (up {}, echo {}), unexpected disconnects {}, stalls {}, connect failures {}, protocol errors {}, backend resets {}",
        report.corrupted_bytes,
        bs.corrupt_bytes.load(Relaxed),
        st.corrupted_bytes.load(Relaxed),
        st.drops.load(Relaxed),
        st.stalls.load(Relaxed),
        st.connect_failures.load(Relaxed),
        st.protocol_errors.load(Relaxed),
        bs.errors.load(Relaxed)
    );
    let _ = writeln!(
        t,
        "websocket: pings {}, pongs {}; smux NOPs from the server {}, stray FINs {}",
        st.pings.load(Relaxed),
        st.pongs.load(Relaxed),
        st.nops.load(Relaxed),
        st.stray_fins.load(Relaxed)
    );
    let _ = writeln!(
        t,
        "controller: {} ops ({} adds, {} dels, {} overwrites, {} pings), {} errors, {} count mismatches, slowest {} ms",
        cs.ops.load(Relaxed),
        cs.adds.load(Relaxed),
        cs.dels.load(Relaxed),
        cs.overwrites.load(Relaxed),
        cs.pings.load(Relaxed),
        cs.errors.load(Relaxed),
        cs.count_mismatches.load(Relaxed),
        cs.max_latency_us.load(Relaxed) / 1000
    );
    if let (Some(cold), Some(bf)) = (cold_rss, base_fds) {
        let _ = writeln!(
            t,
            "server: cold baseline rss {} fds {}; warm baseline rss {}; peak rss {} fds {}; after the soak rss {} ({:+.1} MiB over the {} baseline, slack {}) fds {}{}",
            mib(cold),
            bf,
            warm_rss.map(mib).unwrap_or("-".into()),
            mib(report.peak_rss_kib),
            report.peak_fds,
            final_rss.map(mib).unwrap_or("-".into()),
            final_rss
                .zip(rss_reference)
                .map(|(r, b)| (r as f64 - b as f64) / 1024.0)
                .unwrap_or(0.0),
            if warm_rss.is_some() { "warm" } else { "cold" },
            mib(cfg.rss_slack_kib),
            final_fds.map(|f| f.to_string()).unwrap_or("-".into()),
            trimmed_rss
                .map(|r| format!("; after malloc_trim(0) rss {}", mib(r)))
                .unwrap_or_default()
        );
        let _ = writeln!(t, "{}", sample_table(&report.samples, 24));
    }
    if !log_note.is_empty() {
        let _ = writeln!(t, "{log_note}");
    }
    for m in st
        .messages
        .lock()
        .unwrap()
        .iter()
        .chain(cs.messages.lock().unwrap().iter())
    {
        let _ = writeln!(t, "  failure detail: {m}");
    }
    if report.failures.is_empty() {
        let _ = writeln!(t, "RESULT: PASS");
    } else {
        let _ = writeln!(t, "RESULT: FAIL");
        for f in &report.failures {
            let _ = writeln!(t, "  - {f}");
        }
    }
    report.text = t;
    Ok(report)
}

/// What a phase needs.
struct PhaseCtx<'a> {
    cfg: &'a Config,
    shared: &'a Arc<Shared>,
    running: &'a mut server::Running,
    backend: &'a backend::Backend,
    churn: ChurnConfig,
    churn_stats: &'a Arc<ChurnStats>,
    samples: &'a Arc<Mutex<Vec<Sample>>>,
    start: Instant,
    base_fds: Option<u64>,
    log: &'a (dyn Fn(&str) + Sync),
}

/// How a phase ended.
struct PhaseEnd {
    began: Duration,
    stopped: Duration,
    closed: Duration,
    settled_in: Duration,
    fds: Option<u64>,
    rss: Option<u64>,
    /// Tunnels (plain and mux streams) completed in this phase.
    completed: u64,
}

impl PhaseEnd {
    fn describe(&self, name: &str) -> String {
        format!(
            "{name}: tunnels from {:.0?} to {:.0?}, {} completed, all closed at {:.1?}, server settled {:.1?} later (fds {}, rss {})",
            self.began,
            self.stopped,
            self.completed,
            self.closed,
            self.settled_in,
            self.fds.map(|f| f.to_string()).unwrap_or("-".into()),
            self.rss.map(mib).unwrap_or("-".into()),
        )
    }
}

impl PhaseCtx<'_> {
    /// Runs every tunnel and the churn for `duration`, closes them all, and waits for the
    /// server to let go of every connection (fds back to the baseline, backend idle).
    fn phase(
        &mut self,
        name: &str,
        index: u64,
        duration: Duration,
        failures: &mut Vec<String>,
    ) -> PhaseEnd {
        let (cfg, log) = (self.cfg, self.log);
        let began = self.start.elapsed();
        let st = &self.shared.stats;
        let completed_before =
            st.plain_completed.load(Relaxed) + st.streams_completed.load(Relaxed);
        log(&format!("soak: {name} phase: {duration:?}"));
        self.shared.stop.store(false, Relaxed);
        let churn_stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let mut cc = self.churn.clone();
            cc.seed = rng::mix(&[cfg.seed, 6, index]);
            let (stats, stop) = (Arc::clone(self.churn_stats), Arc::clone(&churn_stop));
            std::thread::spawn(move || controller::churn(&cc, &stats, &stop))
        };
        let seed = rng::mix(&[cfg.seed, 7, index]);
        let units = cfg.plain + cfg.mux;
        let threads = if cfg.threads > 0 {
            cfg.threads
        } else {
            units.div_ceil(32).clamp(4, 128)
        }
        .min(units.max(1));
        let mut groups: Vec<Vec<Unit>> = (0..threads).map(|_| Vec::new()).collect();
        // Interleave plain and mux units so that each group has both.
        let (mut p, mut m, mut i) = (0, 0, 0);
        while p < cfg.plain || m < cfg.mux {
            let plain_next =
                m >= cfg.mux || (p < cfg.plain && p * cfg.mux.max(1) <= m * cfg.plain.max(1));
            let unit = if plain_next {
                p += 1;
                Unit::Plain(Plain::new(p as u64 - 1, seed))
            } else {
                m += 1;
                Unit::Mux(Mux::new(m as u64 - 1, seed))
            };
            groups[i % threads].push(unit);
            i += 1;
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let mut spawned = 0;
        for (i, group) in groups.into_iter().enumerate() {
            let (shared, done_tx) = (Arc::clone(self.shared), done_tx.clone());
            let seed = rng::mix(&[seed, i as u64]);
            let ok = std::thread::Builder::new()
                .name(format!("soak-{i}"))
                .stack_size(512 * 1024)
                .spawn(move || {
                    tunnel::worker(group, &shared, seed);
                    let _ = done_tx.send(());
                });
            match ok {
                Ok(_) => spawned += 1,
                Err(e) => failures.push(format!("spawning a worker thread: {e}")),
            }
        }
        drop(done_tx);

        let phase_start = Instant::now();
        let mut next_report = phase_start + cfg.report_every;
        while phase_start.elapsed() < duration {
            std::thread::sleep(Duration::from_millis(200));
            let died = match self.running.spawned.as_mut() {
                Some(s) => s.exited(),
                None => self
                    .running
                    .pid
                    .filter(|p| !procfs::alive(*p))
                    .map(|_| "process gone".to_string()),
            };
            if let Some(s) = died {
                failures.push(format!("the server died during the {name} phase: {s}"));
                break;
            }
            if !cfg.report_every.is_zero() && Instant::now() >= next_report {
                next_report += cfg.report_every;
                let last = self.samples.lock().unwrap().last().copied();
                log(&progress(
                    self.start,
                    self.shared,
                    self.churn_stats,
                    self.backend,
                    last.as_ref(),
                ));
            }
        }
        let stopped = self.start.elapsed();
        self.shared.stop.store(true, Relaxed);
        churn_stop.store(true, Relaxed);
        // Each worker ends within a round plus the close handshakes.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut finished = 0;
        while finished < spawned {
            match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        if finished < spawned {
            failures.push(format!(
                "{} of {spawned} worker threads still running 120 s after the {name} phase ended",
                spawned - finished
            ));
        }
        let closed = self.start.elapsed();
        if !churn.join().unwrap_or(false) {
            failures.push(format!(
                "the {name} phase's churn users could not all be deleted"
            ));
        }
        log(&format!(
            "soak: {name} phase: all tunnels closed at {closed:.1?}; waiting for the server to settle"
        ));

        // The fd count must come back exactly, and the backend must see every
        // connection closed; then RSS is read (given a moment to drop what is freed).
        let settle_start = Instant::now();
        let pid = self.running.pid;
        let mut fds = None;
        loop {
            fds = pid.and_then(|p| procfs::fd_count(p).ok()).or(fds);
            let idle = self.backend.stats.open.load(Relaxed) == 0;
            if (idle && fds == self.base_fds) || settle_start.elapsed() >= cfg.settle {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let settled_in = settle_start.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let rss = pid.and_then(|p| procfs::rss_kib(p).ok());
        if let Some(base) = self.base_fds {
            match fds {
                Some(f) if f == base => {}
                Some(f) => failures.push(format!(
                    "after the {name} phase, open fds {f} did not return to the baseline {base} within {:?}",
                    cfg.settle
                )),
                None => failures.push("could not read the server's fds".into()),
            }
        }
        let open = self.backend.stats.open.load(Relaxed);
        if open > 0 {
            failures.push(format!(
                "after the {name} phase, {open} backend connections still open (the server kept them)"
            ));
        }
        let st = &self.shared.stats;
        PhaseEnd {
            completed: st.plain_completed.load(Relaxed) + st.streams_completed.load(Relaxed)
                - completed_before,
            began,
            stopped,
            closed,
            settled_in,
            fds,
            rss,
        }
    }
}

/// Asks the server's allocator to hand every free page back to the kernel
/// (`malloc_trim(0)` called through gdb), to tell a leak from memory kept for reuse.
fn gdb_malloc_trim(pid: u32) -> Result<(), String> {
    let out = std::process::Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "call (int)malloc_trim(0)",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run gdb: {e}"))?;
    // gdb in this VM may print "Couldn't write extended state status" when it restores
    // the registers after the call; the call has run by then. The RSS read afterwards is
    // the evidence either way.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("No symbol") || text.contains("ptrace: ") {
        return Err(format!("gdb could not call malloc_trim: {}", text.trim()));
    }
    Ok(())
}

fn settle_baseline(pid: u32) -> std::io::Result<(u64, u64)> {
    let mut last = procfs::fd_count(pid)?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = procfs::fd_count(pid)?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok((procfs::rss_kib(pid)?, procfs::fd_count(pid)?))
}

fn progress(
    start: Instant,
    sh: &Shared,
    churn: &ChurnStats,
    backend: &backend::Backend,
    sample: Option<&Sample>,
) -> String {
    let st = &sh.stats;
    let mut s = format!(
        "[{:>5.0}s] open: {} plain, {} sessions/{} streams; completed {}; echoed {}; corrupt {}+{}; drops {}; stalls {}; connfail {}; proto {}; ctl ops {} err {}",
        start.elapsed().as_secs_f64(),
        st.active_plain.load(Relaxed),
        st.active_sessions.load(Relaxed),
        st.active_streams.load(Relaxed),
        st.plain_completed.load(Relaxed) + st.streams_completed.load(Relaxed),
        gib(st.bytes_echoed.load(Relaxed)),
        st.corrupted_bytes.load(Relaxed),
        backend.stats.corrupt_bytes.load(Relaxed),
        st.drops.load(Relaxed),
        st.stalls.load(Relaxed),
        st.connect_failures.load(Relaxed),
        st.protocol_errors.load(Relaxed),
        churn.ops.load(Relaxed),
        churn.errors.load(Relaxed),
    );
    if let Some(x) = sample {
        let _ = write!(s, "; server rss {} fds {}", mib(x.rss_kib), x.fds);
    }
    s
}

/// The samples as a table of at most `rows` rows (evenly spread, the last one included).
pub fn sample_table(samples: &[Sample], rows: usize) -> String {
    let mut t = String::from("| t (s) | open tunnels | mux sessions | echoed (GiB) | RSS (MiB) | fds |\n|---:|---:|---:|---:|---:|---:|");
    if samples.is_empty() {
        return t;
    }
    let step = samples.len().div_ceil(rows.max(2) - 1).max(1);
    let mut picked: Vec<&Sample> = samples.iter().step_by(step).collect();
    if !std::ptr::eq(*picked.last().unwrap(), samples.last().unwrap()) {
        picked.push(samples.last().unwrap());
    }
    for s in picked {
        let _ = write!(
            t,
            "\n| {:.0} | {} | {} | {:.2} | {:.1} | {} |",
            s.at.as_secs_f64(),
            s.tunnels,
            s.sessions,
            s.bytes_echoed as f64 / (1u64 << 30) as f64,
            s.rss_kib as f64 / 1024.0,
            s.fds
        );
    }
    t
}
