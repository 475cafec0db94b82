//! `soak`: the command line of the soak test (see the library for what it does).
//!
//!     soak --server target/release/mtt-mu-server --tls --plain 2000 --mux 200 \
//!          --streams-per-session 4 --duration 10m --churn-ops 20

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use soak::{Config, Target};

/// Soak test for mtt-mu-server: many checksummed tunnels (plain and mux) through an echo
/// backend, controller churn, and the server's RSS and fds before, during and after.
#[derive(FromArgs)]
struct Args {
    /// server binary to start on ephemeral loopback ports (else give --data and --controller)
    #[argh(option)]
    server: Option<PathBuf>,
    /// worker threads of the started server (its -workers)
    #[argh(option)]
    workers: Option<usize>,
    /// one more flag for the started server (repeatable), e.g. --server-arg=-timeout --server-arg=2m
    #[argh(option)]
    server_arg: Vec<String>,
    /// data address of a running server to attach to
    #[argh(option)]
    data: Option<SocketAddr>,
    /// controller address of a running server to attach to
    #[argh(option)]
    controller: Option<SocketAddr>,
    /// pid of the running server (for RSS and fd figures)
    #[argh(option)]
    pid: Option<u32>,
    /// TLS to the data port (a started server gets -force-tls)
    #[argh(switch)]
    tls: bool,
    /// concurrent plain (smux_off) tunnels (default 300)
    #[argh(option, default = "300")]
    plain: usize,
    /// concurrent mux (smux_on) sessions (default 50)
    #[argh(option, default = "50")]
    mux: usize,
    /// streams open in each mux session, 1 to 16 (default 4)
    #[argh(option, default = "4")]
    streams_per_session: usize,
    /// how long to run tunnels, e.g. 90s, 10m (default 60s)
    #[argh(
        option,
        from_str_fn(parse_duration),
        default = "Duration::from_secs(60)"
    )]
    duration: Duration,
    /// warm-up phase of the same load before the soak; the RSS after it is the baseline
    /// (default: a fifth of --duration, at most 60s; 0 = none, compare with the cold RSS)
    #[argh(option, from_str_fn(parse_duration))]
    warmup: Option<Duration>,
    /// after the soak, call malloc_trim(0) in the server through gdb and check its RSS
    /// against the cold baseline (tells a leak from memory the allocator keeps)
    #[argh(switch)]
    gdb_trim: bool,
    /// controller commands per second (default 20)
    #[argh(option, default = "20.0")]
    churn_ops: f64,
    /// most churn users at once (default 1000)
    #[argh(option, default = "1000")]
    churn_users: usize,
    /// tunnel worker threads (default: one per 32 tunnels or sessions, 4 to 128)
    #[argh(option, default = "0")]
    threads: usize,
    /// most bytes one plain tunnel moves before it closes, e.g. 4M (default 4M)
    #[argh(option, from_str_fn(parse_size), default = "4 << 20")]
    max_plain_bytes: u64,
    /// most bytes one mux stream moves before it closes (default 1M)
    #[argh(option, from_str_fn(parse_size), default = "1 << 20")]
    max_stream_bytes: u64,
    /// shortest mux session life (default 5s)
    #[argh(
        option,
        from_str_fn(parse_duration),
        default = "Duration::from_secs(5)"
    )]
    session_min: Duration,
    /// longest mux session life (default 30s)
    #[argh(
        option,
        from_str_fn(parse_duration),
        default = "Duration::from_secs(30)"
    )]
    session_max: Duration,
    /// one data message in N carries a ping, 0 = none (default 16)
    #[argh(option, default = "16")]
    ping_one_in: u64,
    /// one tunnel in N is closed by the backend, 0 = none (default 4)
    #[argh(option, default = "4")]
    backend_close_one_in: u64,
    /// each worker sleeps up to this long between rounds, e.g. 20ms (default 0)
    #[argh(option, from_str_fn(parse_duration), default = "Duration::ZERO")]
    pace: Duration,
    /// allowed RSS over the baseline after every tunnel closed, MiB (default 16)
    #[argh(option, default = "16")]
    rss_slack_mib: u64,
    /// time allowed for fds and RSS to come back after the last tunnel (default 10s)
    #[argh(
        option,
        from_str_fn(parse_duration),
        default = "Duration::from_secs(10)"
    )]
    settle: Duration,
    /// progress line interval, 0 = none (default 10s)
    #[argh(
        option,
        from_str_fn(parse_duration),
        default = "Duration::from_secs(10)"
    )]
    report_every: Duration,
    /// seed of every random choice (default: from the clock)
    #[argh(option)]
    seed: Option<u64>,
    /// soak users, all to the echo backend (default 8)
    #[argh(option, default = "8")]
    paths: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("bad size {s:?}"))
}

fn main() {
    let a: Args = argh::from_env();
    let target = match (a.server, a.data, a.controller) {
        (Some(bin), None, None) => Target::Spawn {
            bin,
            workers: a.workers,
            extra: a.server_arg,
        },
        (None, Some(data), Some(controller)) => Target::Attach {
            data,
            controller,
            pid: a.pid,
        },
        _ => {
            eprintln!("give either --server PATH, or --data ADDR and --controller ADDR");
            std::process::exit(2);
        }
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let cfg = Config {
        target,
        tls: a.tls,
        plain: a.plain,
        mux: a.mux,
        streams_per_session: a.streams_per_session.clamp(1, 16),
        duration: a.duration,
        warmup: a
            .warmup
            .unwrap_or_else(|| (a.duration / 5).min(Duration::from_secs(60))),
        gdb_trim: a.gdb_trim,
        churn_ops: a.churn_ops,
        churn_users: a.churn_users,
        threads: a.threads,
        max_plain_bytes: a.max_plain_bytes,
        max_stream_bytes: a.max_stream_bytes,
        session_life: (a.session_min, a.session_max.max(a.session_min)),
        ping_one_in: a.ping_one_in,
        backend_close_one_in: a.backend_close_one_in,
        pace: a.pace,
        rss_slack_kib: a.rss_slack_mib * 1024,
        settle: a.settle,
        report_every: a.report_every,
        seed,
        paths: a.paths,
    };
    let log = |line: &str| eprintln!("{line}");
    match soak::run(&cfg, &log) {
        Ok(report) => {
            println!("{}", report.text);
            std::process::exit(if report.passed() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(1);
        }
    }
}
