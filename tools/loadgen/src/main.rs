//! `loadgen`: the load generator and meter of mtt-mu-server's benchmarks, and the backend
//! they relay to. See `tools/bench.sh` for how the pieces are run together, and
//! `BENCHMARKS.md` for what they measured.
//!
//! Layout:
//! - [`backend`]: `loadgen sink`, the backend, and the request that starts a connection.
//! - [`client`]: TCP, TLS, the WebSocket upgrade and framing, smux framing (client side).
//! - [`bulk`]: `loadgen bulk`, throughput and CPU per GiB.
//! - [`tunnels`]: `loadgen tunnels` (new tunnels) and `loadgen idle` (memory per tunnel).
//! - [`users`]: `loadgen users` (loading users) and `loadgen latency` (route changes).
//! - [`stall`]: `loadgen stall` (how long a tunnel waits while users are loaded).
//! - [`procfs`]: the server's CPU and RSS from `/proc`; our open-file limit.
//! - [`record`]: result lines, the results file and `loadgen report`.

mod backend;
mod bulk;
mod client;
mod procfs;
mod record;
mod shape;
mod stall;
mod tunnels;
mod users;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use client::Proto;
use record::Recorder;

/// Load generator and meter for mtt-mu-server and its reference relays.
#[derive(FromArgs)]
struct Args {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Sink(SinkArgs),
    Bulk(BulkArgs),
    Tunnels(TunnelsArgs),
    Idle(IdleArgs),
    Users(UsersArgs),
    Latency(LatencyArgs),
    Stall(StallArgs),
    Report(ReportArgs),
}

/// The backend: discards uploads (then acknowledges), serves downloads, echoes.
#[derive(FromArgs)]
#[argh(subcommand, name = "sink")]
struct SinkArgs {
    /// address to listen on (repeat for several ports)
    #[argh(option)]
    listen: Vec<SocketAddr>,
    /// event-loop threads (default 1)
    #[argh(option, default = "1")]
    threads: usize,
}

/// Bulk throughput and server CPU per GiB relayed.
#[derive(FromArgs)]
#[argh(subcommand, name = "bulk")]
struct BulkArgs {
    /// relay (or sink) address
    #[argh(option)]
    addr: SocketAddr,
    /// tcp, tls, ws or wss
    #[argh(option, from_str_fn(parse_proto))]
    proto: Proto,
    /// run the streams as smux streams of one WebSocket session
    #[argh(switch)]
    mux: bool,
    /// user path for WebSocket protocols
    #[argh(option, default = "String::from(\"/bench\")")]
    path: String,
    /// number of concurrent streams (default 1)
    #[argh(option, default = "1")]
    streams: usize,
    /// up (client to backend) or down
    #[argh(option, from_str_fn(parse_dir))]
    dir: bool,
    /// bytes per stream, e.g. 1G, 256M (default 1G)
    #[argh(option, from_str_fn(parse_size), default = "1 << 30")]
    bytes: u64,
    /// payload bytes per WebSocket frame (default 16384)
    #[argh(option, default = "16384")]
    frame: usize,
    /// upload shape: bulk16k (16 KiB frames in 256 KiB writes, the default) or real
    /// (mtt-client's: a message per read of a local socket, Go 1.19's TLS records)
    #[argh(option, from_str_fn(parse_shape), default = "shape::Shape::Bulk16k")]
    shape: shape::Shape,
    /// downloads: read at most this many Mbit/s per connection, as a client on a slower
    /// link (default 0: as fast as it can)
    #[argh(option, default = "0")]
    pace: u64,
    /// pid of the relay whose CPU is measured
    #[argh(option)]
    server_pid: Option<u32>,
    /// label of the relay in results
    #[argh(option, default = "String::from(\"server\")")]
    target: String,
    /// file to append JSON result lines to
    #[argh(option)]
    record: Option<PathBuf>,
}

/// New tunnels per second and server CPU per new tunnel.
#[derive(FromArgs)]
#[argh(subcommand, name = "tunnels")]
struct TunnelsArgs {
    /// relay address
    #[argh(option)]
    addr: SocketAddr,
    /// tcp, tls, ws or wss
    #[argh(option, from_str_fn(parse_proto))]
    proto: Proto,
    /// user path (a prefix when --paths > 1)
    #[argh(option, default = "String::from(\"/bench\")")]
    path: String,
    /// spread tunnels over this many paths PATH0..PATHn-1 (default 1: PATH itself)
    #[argh(option, default = "1")]
    paths: usize,
    /// tunnels to open (default 2000)
    #[argh(option, default = "2000")]
    count: usize,
    /// tunnels opened at once (default 1)
    #[argh(option, default = "1")]
    concurrency: usize,
    /// full TLS handshakes only (default: resume sessions)
    #[argh(switch)]
    full: bool,
    /// pid of the relay whose CPU is measured
    #[argh(option)]
    server_pid: Option<u32>,
    /// label of the relay in results
    #[argh(option, default = "String::from(\"server\")")]
    target: String,
    /// file to append JSON result lines to
    #[argh(option)]
    record: Option<PathBuf>,
}

/// Server RSS per open idle tunnel.
#[derive(FromArgs)]
#[argh(subcommand, name = "idle")]
struct IdleArgs {
    /// relay address
    #[argh(option)]
    addr: SocketAddr,
    /// tcp, tls, ws or wss
    #[argh(option, from_str_fn(parse_proto))]
    proto: Proto,
    /// user path (a prefix when --paths > 1)
    #[argh(option, default = "String::from(\"/bench\")")]
    path: String,
    /// spread tunnels over this many paths PATH0..PATHn-1 (default 1: PATH itself)
    #[argh(option, default = "1")]
    paths: usize,
    /// tunnels to hold open
    #[argh(option)]
    count: usize,
    /// threads opening them (default 8)
    #[argh(option, default = "8")]
    threads: usize,
    /// connect from this many source addresses 127.0.0.2... (default 0: 127.0.0.1)
    #[argh(option, default = "0")]
    sources: u8,
    /// seconds to keep them open after measuring (default 0)
    #[argh(option, default = "0")]
    hold: u64,
    /// pid of the relay whose RSS is measured
    #[argh(option)]
    server_pid: u32,
    /// label of the relay in results
    #[argh(option, default = "String::from(\"server\")")]
    target: String,
    /// file to append JSON result lines to
    #[argh(option)]
    record: Option<PathBuf>,
}

/// Time and server RSS to load users through the controller.
#[derive(FromArgs)]
#[argh(subcommand, name = "users")]
struct UsersArgs {
    /// controller address
    #[argh(option)]
    controller: SocketAddr,
    /// users to load
    #[argh(option)]
    count: usize,
    /// users per POST (default 1000; 0: as many as --max-bytes allows)
    #[argh(option, default = "1000")]
    per_post: usize,
    /// largest POST body when --per-post is 0 (default 2 MiB)
    #[argh(option, from_str_fn(parse_size), default = "2 << 20")]
    max_bytes: u64,
    /// pid of the server whose RSS is measured
    #[argh(option)]
    server_pid: u32,
    /// label of the server in results
    #[argh(option, default = "String::from(\"server\")")]
    target: String,
    /// file to append JSON result lines to
    #[argh(option)]
    record: Option<PathBuf>,
}

/// Round-trip time of one-user route changes (the reply comes once every worker has it).
#[derive(FromArgs)]
#[argh(subcommand, name = "latency")]
struct LatencyArgs {
    /// controller address
    #[argh(option)]
    controller: SocketAddr,
    /// changes to time (default 200)
    #[argh(option, default = "200")]
    count: usize,
    /// text appended to the measure's name, e.g. ", under bulk load"
    #[argh(option, default = "String::new()")]
    label: String,
    /// label of the server in results
    #[argh(option, default = "String::from(\"server\")")]
    target: String,
    /// file to append JSON result lines to
    #[argh(option)]
    record: Option<PathBuf>,
}

/// How long an open tunnel waits while its worker applies large route changes.
#[derive(FromArgs)]
#[argh(subcommand, name = "stall")]
struct StallArgs {
    /// the server's data address (WSS)
    #[argh(option)]
    addr: SocketAddr,
    /// controller address
    #[argh(option)]
    controller: SocketAddr,
    /// echo backend (a `loadgen sink` port) for the tunnel's user
    #[argh(option)]
    sink: SocketAddr,
    /// users to load while the tunnel echoes (default 1000000)
    #[argh(option, default = "1_000_000")]
    count: usize,
    /// largest POST body (default 2 MiB)
    #[argh(option, from_str_fn(parse_size), default = "2 << 20")]
    max_bytes: u64,
    /// label of the server in results
    #[argh(option, default = "String::from(\"server\")")]
    target: String,
    /// file to append JSON result lines to
    #[argh(option)]
    record: Option<PathBuf>,
}

/// Medians per target of a results file, with ratios to a reference target.
#[derive(FromArgs)]
#[argh(subcommand, name = "report")]
struct ReportArgs {
    /// results file written with --record
    #[argh(positional)]
    file: PathBuf,
    /// target the others are divided by (default haproxy)
    #[argh(option, default = "String::from(\"haproxy\")")]
    reference: String,
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    Proto::parse(s)
}

fn parse_shape(s: &str) -> Result<shape::Shape, String> {
    shape::Shape::parse(s)
}

fn parse_dir(s: &str) -> Result<bool, String> {
    match s {
        "up" => Ok(true),
        "down" => Ok(false),
        _ => Err(format!("direction {s:?}: up or down")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("size {s:?}"))?;
    let scale = match unit {
        "" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(format!("size {s:?}: unit K, M or G")),
    };
    Ok(n * scale)
}

fn sources(n: u8) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
        .collect()
}

fn main() {
    let args: Args = argh::from_env();
    let result = match args.command {
        Command::Sink(a) => {
            if a.listen.is_empty() {
                Err("sink: give at least one --listen".to_string())
            } else {
                a.listen
                    .iter()
                    .map(|&addr| backend::listen(addr).map_err(|e| format!("listen {addr}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|listeners| {
                        procfs::raise_nofile(1 << 20);
                        let addrs: Vec<String> = listeners
                            .iter()
                            .filter_map(|l| l.local_addr().ok())
                            .map(|a| a.to_string())
                            .collect();
                        eprintln!("loadgen sink ready: {}", addrs.join(" "));
                        backend::run(listeners, a.threads).map_err(|e| e.to_string())
                    })
            }
        }
        Command::Bulk(a) => bulk::run(
            bulk::Bulk {
                addr: a.addr,
                proto: a.proto,
                mux: a.mux,
                path: a.path,
                streams: a.streams.max(1),
                upload: a.dir,
                bytes: a.bytes,
                frame: a.frame.clamp(1, 65535),
                shape: a.shape,
                pace_mbps: a.pace,
                server_pid: a.server_pid,
            },
            &Recorder {
                target: a.target,
                file: a.record,
            },
        ),
        Command::Tunnels(a) => tunnels::run_tunnels(
            tunnels::Tunnels {
                target: tunnels::Target {
                    addr: a.addr,
                    proto: a.proto,
                    path: a.path,
                    paths: a.paths,
                    sources: Vec::new(),
                },
                count: a.count.max(1),
                concurrency: a.concurrency.max(1),
                resume: !a.full,
                server_pid: a.server_pid,
            },
            &Recorder {
                target: a.target,
                file: a.record,
            },
        ),
        Command::Idle(a) => tunnels::run_idle(
            tunnels::Idle {
                target: tunnels::Target {
                    addr: a.addr,
                    proto: a.proto,
                    path: a.path,
                    paths: a.paths,
                    sources: sources(a.sources),
                },
                count: a.count.max(1),
                threads: a.threads.max(1),
                hold: Duration::from_secs(a.hold),
                server_pid: a.server_pid,
            },
            &Recorder {
                target: a.target,
                file: a.record,
            },
        ),
        Command::Users(a) => users::run_users(
            users::Users {
                controller: a.controller,
                count: a.count,
                per_post: a.per_post,
                max_bytes: a.max_bytes as usize,
                server_pid: a.server_pid,
            },
            &Recorder {
                target: a.target,
                file: a.record,
            },
        ),
        Command::Latency(a) => users::run_latency(
            users::Latency {
                controller: a.controller,
                count: a.count.max(1),
                label: a.label,
            },
            &Recorder {
                target: a.target,
                file: a.record,
            },
        ),
        Command::Stall(a) => stall::run(
            stall::Stall {
                addr: a.addr,
                controller: a.controller,
                sink: a.sink,
                count: a.count,
                max_bytes: a.max_bytes as usize,
            },
            &Recorder {
                target: a.target,
                file: a.record,
            },
        ),
        Command::Report(a) => record::report(&a.file, &a.reference),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
