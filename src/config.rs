//! Command line of the server: turns argv into a validated [`Config`].
//!
//! Operators run this binary from units and scripts written for the Go server, so every
//! spelling that Go's `flag` package accepts works here unchanged (`-b :443`, `-b=:443`,
//! `--b :443`, `-mux`, `-mux=false`, `-timeout 1m0s`), beside conventional long names
//! (`--bind`, `--controller`, ...). Parsing runs in three steps: a translation pass that
//! walks the arguments with Go's rules (first error wins, last repeat of a flag wins, `-h`
//! asks for help) and rewrites them into argh's canonical `--long value` form; argh itself
//! ([`argh::FromArgs`]) reading that into a raw struct; and validation into [`Config`].
//! This module also owns Go's duration syntax ([`parse_go_duration`]) and Go's listen
//! address syntax ([`listen_addr`]). It does not read certificate or key files, generate
//! certificates, or bind sockets: it only says which files or which mode, and where.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

/// Idle timeout of a tunnel when `-timeout` is not given (Go's `1m0s`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Server name of the self-signed certificate when `-n` is not given.
pub const DEFAULT_SERVER_NAME: &str = "www.example.com";
/// Largest accepted `-workers`.
pub const MAX_WORKERS: usize = 1024;

/// The validated command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// -b / --bind: data listener, as given (`HOST:PORT`, `:443`, `[::1]:443`, `localhost:443`);
    /// empty only when `-bind-unix` is given instead.
    pub bind: String,
    /// -c / --controller: controller listener, as given (same syntax as `bind`)
    pub controller: String,
    /// -mux: default to smux multiplexing for clients that do not say
    pub mux: bool,
    /// How the data listener speaks TLS (from -cert, -key, -force-tls, -n)
    pub tls: TlsMode,
    /// -timeout, Go duration syntax, default 60 s; must be > 0
    pub timeout: Duration,
    /// -verbose: debug logging
    pub verbose: bool,
    /// -max-conns N: most concurrent data-port connections; further ones are accepted and
    /// closed at once. 0 (the default) derives it from the file descriptor limit.
    pub max_conns: usize,
    /// -head-timeout: time from accept to a complete request head, TLS handshake included
    /// (default 10 s).
    pub head_timeout: Duration,
    /// -grace: after SIGTERM/SIGINT, how long open tunnels may finish (default 30 s).
    pub grace: Duration,
    /// -secret / -secret-file: the controller requires `Authorization: Bearer SECRET`.
    pub secret: Option<Secret>,
    /// -state FILE: users survive restarts.
    pub state: Option<std::path::PathBuf>,
    /// -metrics-per-user: per-user series on `/metrics`.
    pub metrics_per_user: bool,
    /// -fallback HOST:PORT: connections that are not a valid upgrade to a known path are
    /// handed to this web server, with the bytes already read.
    pub fallback: Option<String>,
    /// -cert-check: how often the cert and key files are checked for changes (default
    /// 10 s; 0 turns polling off, SIGHUP still reloads).
    pub cert_check: Duration,
    /// -proxy-protocol: every data connection starts with a PROXY v1 or v2 header.
    pub proxy_protocol: bool,
    /// -bind-unix PATH: a data listener on a unix socket (`@name`: abstract namespace).
    pub bind_unix: Option<String>,
    /// -fast-open: TCP Fast Open on the data listener.
    pub fast_open: bool,
    /// -driver io_uring|epoll: the workers' I/O driver (default io_uring).
    pub io_uring: bool,
    /// -controller-conns N: most concurrent controller connections (default 256).
    pub controller_conns: usize,
    /// -workers N (default: the number of CPUs this process may run on:
    /// std::thread::available_parallelism, at least 1); 1..=1024
    pub workers: usize,
}

/// TLS mode of the data listener.
/// Where the controller's secret comes from; a file is read at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Value(String),
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// -cert and -key both given
    Files {
        /// PEM certificate chain (-cert)
        cert: PathBuf,
        /// PEM private key (-key)
        key: PathBuf,
    },
    /// neither given, -force-tls: generate a self-signed cert for `name` (-n NAME, default
    /// "www.example.com")
    SelfSigned {
        /// DNS name put in the generated certificate
        name: String,
    },
    /// neither given, no -force-tls: plain HTTP behind a TLS proxy
    Plain,
}

/// Why [`parse_args`] did not produce a [`Config`].
#[derive(Debug)]
pub enum ArgsError {
    /// -h / -help / --help: the usage text, print to stdout, exit 0
    Help(String),
    /// anything wrong: message plus usage text, print to stderr, exit 2
    Usage(String),
}

impl ArgsError {
    /// The exit status Go's `flag` package uses for this outcome: 0 for help, 2 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ArgsError::Help(_) => 0,
            ArgsError::Usage(_) => 2,
        }
    }
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgsError::Help(text) | ArgsError::Usage(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for ArgsError {}

/// What argh reads after translation: every flag under its canonical long name, each at
/// most once (the translation keeps only the last occurrence), booleans only when true.
#[derive(FromArgs, Debug)]
/// Multi-user WSS tunnel server of mos-tls-tunnel.
struct RawArgs {
    /// data listener, HOST:PORT
    #[argh(option)]
    bind: Option<String>,
    /// controller listener, HOST:PORT
    #[argh(option)]
    controller: Option<String>,
    /// default to smux multiplexing
    #[argh(switch)]
    mux: bool,
    /// PEM certificate chain
    #[argh(option)]
    cert: Option<String>,
    /// PEM private key
    #[argh(option)]
    key: Option<String>,
    /// generate a self-signed certificate when no cert/key is given
    #[argh(switch)]
    force_tls: bool,
    /// idle timeout, Go duration syntax
    #[argh(option)]
    timeout: Option<String>,
    /// debug logging
    #[argh(switch)]
    verbose: bool,
    /// server name of the self-signed certificate
    #[argh(option)]
    name: Option<String>,
    /// number of worker threads
    #[argh(option)]
    workers: Option<String>,
    /// most concurrent data-port connections
    #[argh(option)]
    max_conns: Option<String>,
    /// time for a request head to arrive, TLS handshake included
    #[argh(option)]
    head_timeout: Option<String>,
    /// time open tunnels get to finish after SIGTERM/SIGINT
    #[argh(option)]
    grace: Option<String>,
    /// controller secret (Authorization: Bearer)
    #[argh(option)]
    secret: Option<String>,
    /// file holding the controller secret
    #[argh(option)]
    secret_file: Option<String>,
    /// file where users are kept across restarts
    #[argh(option)]
    state: Option<String>,
    /// per-user series on /metrics
    #[argh(switch)]
    metrics_per_user: bool,
    /// web server for everything that is not a tunnel
    #[argh(option)]
    fallback: Option<String>,
    /// how often to check the cert/key files for changes
    #[argh(option)]
    cert_check: Option<String>,
    /// require a PROXY protocol header on data connections
    #[argh(switch)]
    proxy_protocol: bool,
    /// data listener on a unix socket
    #[argh(option)]
    bind_unix: Option<String>,
    /// TCP Fast Open on the data listener
    #[argh(switch)]
    fast_open: bool,
    /// the workers' I/O driver: epoll or io_uring
    #[argh(option)]
    driver: Option<String>,
    /// most concurrent controller connections
    #[argh(option)]
    controller_conns: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Takes a value: `-f v`, `-f=v`.
    Value,
    /// Boolean: `-f`, `-f=BOOL`; never takes the next argument.
    Bool,
}

/// One flag as Go's `flag` package would define it.
struct FlagSpec {
    /// Names accepted after one or two dashes.
    names: &'static [&'static str],
    /// The option argh knows it by.
    long: &'static str,
    kind: Kind,
    /// Syntax check run when the flag is set, as Go's `flag.Value.Set` does.
    check: Option<Check>,
}

/// A value's syntax check; the error is the reason, without the flag's name.
type Check = fn(&str) -> Result<(), String>;

impl FlagSpec {
    const fn value(
        names: &'static [&'static str],
        long: &'static str,
        check: Option<Check>,
    ) -> Self {
        FlagSpec {
            names,
            long,
            kind: Kind::Value,
            check,
        }
    }

    const fn switch(names: &'static [&'static str], long: &'static str) -> Self {
        FlagSpec {
            names,
            long,
            kind: Kind::Bool,
            check: None,
        }
    }
}

const BIND: usize = 0;
const CONTROLLER: usize = 1;
const TIMEOUT: usize = 6;
const WORKERS: usize = 9;
const MAX_CONNS: usize = 10;
const HEAD_TIMEOUT: usize = 11;
const GRACE: usize = 12;

const FALLBACK: usize = 17;
const CERT_CHECK: usize = 18;

const DRIVER: usize = 22;

const CONTROLLER_CONNS: usize = 23;

const FLAGS: [FlagSpec; 24] = [
    FlagSpec::value(&["b", "bind"], "--bind", None),
    FlagSpec::value(&["c", "controller"], "--controller", None),
    FlagSpec::switch(&["mux"], "--mux"),
    FlagSpec::value(&["cert"], "--cert", None),
    FlagSpec::value(&["key"], "--key", None),
    FlagSpec::switch(&["force-tls"], "--force-tls"),
    FlagSpec::value(&["timeout"], "--timeout", Some(check_duration)),
    FlagSpec::switch(&["verbose"], "--verbose"),
    FlagSpec::value(&["n", "name"], "--name", None),
    FlagSpec::value(&["workers"], "--workers", Some(check_count)),
    FlagSpec::value(&["max-conns"], "--max-conns", Some(check_count)),
    FlagSpec::value(&["head-timeout"], "--head-timeout", Some(check_duration)),
    FlagSpec::value(&["grace"], "--grace", Some(check_duration)),
    FlagSpec::value(&["secret"], "--secret", None),
    FlagSpec::value(&["secret-file"], "--secret-file", None),
    FlagSpec::value(&["state"], "--state", None),
    FlagSpec::switch(&["metrics-per-user"], "--metrics-per-user"),
    FlagSpec::value(&["fallback"], "--fallback", None),
    FlagSpec::value(&["cert-check"], "--cert-check", Some(check_duration)),
    FlagSpec::switch(&["proxy-protocol"], "--proxy-protocol"),
    FlagSpec::value(&["bind-unix"], "--bind-unix", None),
    FlagSpec::switch(&["fast-open"], "--fast-open"),
    FlagSpec::value(&["driver"], "--driver", None),
    FlagSpec::value(
        &["controller-conns"],
        "--controller-conns",
        Some(check_count),
    ),
];

fn check_duration(s: &str) -> Result<(), String> {
    parse_signed_duration(s).map(|_| ())
}

/// A whole number (workers, connection caps): its range is checked in `validate`.
fn check_count(s: &str) -> Result<(), String> {
    s.parse::<usize>()
        .map(|_| ())
        .map_err(|_| "parse error".to_string())
}

/// The last setting of one flag.
#[derive(Clone)]
struct Setting {
    /// The value; for booleans "true" or "false".
    value: String,
    /// How the user wrote the flag, Go style (`-bind`), for messages.
    spelled: String,
}

/// Outcome of the translation pass.
enum Translation {
    /// `-h` / `-help` came before any error.
    Help,
    /// Every flag that was set, by index into [`FLAGS`].
    Flags(Vec<Option<Setting>>),
}

/// Go's strconv.ParseBool.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Walks the arguments with the rules of Go's `flag.FlagSet.Parse`.
fn translate(args: &[String]) -> Result<Translation, String> {
    let mut settings: Vec<Option<Setting>> = vec![None; FLAGS.len()];
    // A boolean flag written bare just before, for the `-mux true` hint.
    let mut bare_bool: Option<String> = None;
    let mut rest = args;
    while let Some((arg, tail)) = rest.split_first() {
        rest = tail;
        if arg.len() < 2 || !arg.starts_with('-') {
            let hint = match &bare_bool {
                Some(flag) if parse_go_bool(arg).is_some() => {
                    format!(" (a boolean flag takes its value after '=': write {flag}={arg})")
                }
                _ => String::new(),
            };
            return Err(format!(
                "unexpected argument {arg:?}: no positional arguments are accepted{hint}"
            ));
        }
        bare_bool = None;
        let (dashes, body) = match arg.strip_prefix("--") {
            Some("") => {
                // "--" ends the flags; Go would hand what follows to the program, which
                // takes nothing.
                if let Some(extra) = rest.first() {
                    return Err(format!(
                        "unexpected argument {extra:?} after \"--\": no positional arguments \
                         are accepted"
                    ));
                }
                break;
            }
            Some(body) => ("--", body),
            None => ("-", &arg[1..]),
        };
        if body.starts_with('-') || body.starts_with('=') {
            return Err(format!("bad flag syntax: {arg}"));
        }
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let spelled = format!("-{name}");
        let Some(index) = FLAGS.iter().position(|f| f.names.contains(&name)) else {
            if name == "h" || name == "help" {
                return Ok(Translation::Help);
            }
            return Err(format!("flag provided but not defined: {dashes}{name}"));
        };
        let spec = &FLAGS[index];
        let value = match spec.kind {
            Kind::Bool => {
                let on = match inline {
                    Some(v) => parse_go_bool(v).ok_or_else(|| {
                        format!("invalid boolean value {v:?} for {spelled}: parse error")
                    })?,
                    None => {
                        bare_bool = Some(spelled.clone());
                        true
                    }
                };
                on.to_string()
            }
            Kind::Value => match inline {
                Some(v) => v.to_string(),
                None => {
                    // Go takes the next argument whatever it looks like.
                    let (next, tail) = rest
                        .split_first()
                        .ok_or_else(|| format!("flag needs an argument: {spelled}"))?;
                    rest = tail;
                    next.clone()
                }
            },
        };
        if let Some(check) = spec.check {
            check(&value)
                .map_err(|e| format!("invalid value {value:?} for flag {spelled}: {e}"))?;
        }
        settings[index] = Some(Setting { value, spelled });
    }
    Ok(Translation::Flags(settings))
}

/// argh's form of the settings: `--long value` for values, `--long` for true booleans.
fn argh_argv(settings: &[Option<Setting>]) -> Vec<&str> {
    let mut argv = Vec::new();
    for (spec, setting) in FLAGS.iter().zip(settings) {
        let Some(setting) = setting else { continue };
        match spec.kind {
            Kind::Value => {
                argv.push(spec.long);
                argv.push(setting.value.as_str());
            }
            Kind::Bool => {
                if setting.value == "true" {
                    argv.push(spec.long);
                }
            }
        }
    }
    argv
}

/// Default of `-workers`: the CPUs this process may run on, within 1..=MAX_WORKERS.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_WORKERS)
}

/// The text `-h` prints, in the manner of a Go server's usage.
fn usage(program: &str) -> String {
    let workers = default_workers();
    format!(
        "Usage of {program}:
  {program} -b HOST:PORT -c HOST:PORT [-cert PATH -key PATH | -force-tls] [flags]

Flags are written as in Go: -flag value, -flag=value, --flag value, --flag=value;
a boolean flag is -flag alone, or -flag=true / -flag=false.

  -b, -bind HOST:PORT
        data listener; \":443\" listens on all interfaces (required)
  -c, -controller HOST:PORT
        controller listener: the panel POSTs JSON commands here (required)
  -cert PATH
        PEM certificate chain: listen TLS with it (needs -key)
  -key PATH
        PEM private key of -cert (needs -cert)
  -force-tls
        without -cert/-key: listen TLS with a generated self-signed certificate
  -n, -name NAME
        server name in the self-signed certificate (default \"{DEFAULT_SERVER_NAME}\")
  -mux
        default to smux multiplexing for clients that do not say
  -timeout DURATION
        idle timeout of a tunnel, Go duration: 90s, 1m0s, 1h30m, 250ms (default 1m0s)
  -verbose
        debug logging
  -workers N
        worker threads, one per core, 1 to {MAX_WORKERS} (default {workers}: the CPUs \
         this process may run on)
  -max-conns N
        most concurrent data-port connections; more are closed at once
        (default 0: derived from the open-file limit)
  -head-timeout DURATION
        time for a request head to arrive, TLS handshake included (default 10s)
  -secret SECRET
        the controller requires \"Authorization: Bearer SECRET\" on every request
  -secret-file PATH
        as -secret, read from a file (surrounding white space ignored)
  -state PATH
        keep users in this file across restarts (every change is on disk
        before the controller replies)
  -metrics-per-user
        per-user series on the controller's GET /metrics
  -fallback HOST:PORT
        hand every connection that is not a valid upgrade to a known path, with
        the bytes already read, to this web server (nginx, Caddy, a static site)
  -cert-check DURATION
        how often to check -cert/-key for changes and reload them; 0 = only on
        SIGHUP (default 10s)
  -proxy-protocol
        every data connection starts with a PROXY protocol v1 or v2 header (behind
        HAProxy or a cloud load balancer); connections without one are closed
  -bind-unix PATH
        also listen on this unix socket (@name: abstract namespace); with it, -b
        may be left out
  -fast-open
        TCP Fast Open on the data listener
  -controller-conns N
        most concurrent controller connections; more are closed at once (default 256)
  -driver io_uring|epoll
        the workers' I/O driver; io_uring falls back to epoll where the kernel
        forbids it (default io_uring: far lower latency beside heavy traffic,
        epoll a little less CPU per byte; see BENCHMARKS.md)
  -grace DURATION
        after SIGTERM or SIGINT, how long open tunnels may finish (default 30s);
        a second signal exits at once
  -h, -help
        print this help and exit

Without -cert/-key and without -force-tls the server speaks plain HTTP, for running
behind a TLS reverse proxy.
"
    )
}

/// Parses the command line into a [`Config`].
///
/// `args` excludes argv\[0\]; `program` is argv\[0\]'s file name for messages.
/// Accepts Go's `flag` syntax for every flag; see the module documentation.
pub fn parse_args(program: &str, args: &[String]) -> Result<Config, ArgsError> {
    let usage_error = |msg: &str| ArgsError::Usage(format!("{msg}\n{}", usage(program)));
    let (help, settings) = match translate(args) {
        Ok(Translation::Help) => (true, Vec::new()),
        Ok(Translation::Flags(settings)) => (false, settings),
        Err(msg) => return Err(usage_error(&msg)),
    };
    // argh decides help too: it answers "--help" with an early exit of status Ok.
    let argv = if help {
        vec!["--help"]
    } else {
        argh_argv(&settings)
    };
    let raw = match RawArgs::from_args(&[program], &argv) {
        Ok(raw) => raw,
        Err(exit) => {
            return Err(match exit.status {
                Ok(()) => ArgsError::Help(usage(program)),
                Err(()) => usage_error(exit.output.trim_end()),
            })
        }
    };
    validate(raw, &settings).map_err(|msg| usage_error(&msg))
}

/// How the user spelled flag `index`, or its Go name.
fn spelled(settings: &[Option<Setting>], index: usize) -> String {
    match settings.get(index).and_then(Option::as_ref) {
        Some(setting) => setting.spelled.clone(),
        None => format!("-{}", FLAGS[index].names[0]),
    }
}

fn required_addr(
    value: Option<String>,
    settings: &[Option<Setting>],
    index: usize,
    what: &str,
) -> Result<String, String> {
    let flag = spelled(settings, index);
    match value {
        Some(v) if !v.is_empty() => {
            split_host_port(&v)
                .and_then(|(_, port)| parse_port(port))
                .map_err(|e| format!("invalid value {v:?} for flag {flag}: {e}"))?;
            Ok(v)
        }
        _ => Err(format!("flag {flag} is required ({what}, HOST:PORT)")),
    }
}

fn validate(raw: RawArgs, settings: &[Option<Setting>]) -> Result<Config, String> {
    let bind = match (&raw.bind, &raw.bind_unix) {
        (None, Some(unix)) if !unix.is_empty() => String::new(),
        _ => required_addr(raw.bind.clone(), settings, BIND, "data listener")?,
    };
    let controller = required_addr(raw.controller, settings, CONTROLLER, "controller listener")?;

    let timeout = positive_duration(raw.timeout, settings, TIMEOUT)?.unwrap_or(DEFAULT_TIMEOUT);

    let workers = match raw.workers {
        None => default_workers(),
        Some(s) => {
            let flag = spelled(settings, WORKERS);
            let n: usize = s
                .parse()
                .map_err(|_| format!("invalid value {s:?} for flag {flag}: parse error"))?;
            if !(1..=MAX_WORKERS).contains(&n) {
                return Err(format!(
                    "invalid value {s:?} for flag {flag}: must be between 1 and {MAX_WORKERS}"
                ));
            }
            n
        }
    };

    let max_conns = match raw.max_conns {
        None => 0,
        Some(s) => s.parse().map_err(|_| {
            format!(
                "invalid value {s:?} for flag {}: parse error",
                spelled(settings, MAX_CONNS)
            )
        })?,
    };
    let head_timeout = positive_duration(raw.head_timeout, settings, HEAD_TIMEOUT)?
        .unwrap_or(Duration::from_secs(10));
    let grace =
        nonnegative_duration(raw.grace, settings, GRACE)?.unwrap_or(Duration::from_secs(30));

    let fallback = match raw.fallback.filter(|s| !s.is_empty()) {
        None => None,
        Some(f) => {
            let flag = spelled(settings, FALLBACK);
            split_host_port(&f)
                .and_then(|(host, port)| {
                    if host.is_empty() {
                        return Err("missing host".to_string());
                    }
                    parse_port(port)
                })
                .map_err(|e| format!("invalid value {f:?} for flag {flag}: {e}"))?;
            Some(f)
        }
    };
    let cert_check = nonnegative_duration(raw.cert_check, settings, CERT_CHECK)?
        .unwrap_or(Duration::from_secs(10));
    let bind_unix = raw.bind_unix.filter(|s| !s.is_empty());
    let controller_conns = match raw.controller_conns {
        None => 256,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(format!(
                    "invalid value {s:?} for flag {}: at least 1",
                    spelled(settings, CONTROLLER_CONNS)
                ))
            }
        },
    };
    let io_uring = match raw.driver.as_deref() {
        Some("epoll") => false,
        None | Some("io_uring") | Some("uring") => true,
        Some(other) => {
            return Err(format!(
                "invalid value {other:?} for flag {}: epoll or io_uring",
                spelled(settings, DRIVER)
            ))
        }
    };

    let secret = match (raw.secret, raw.secret_file) {
        (Some(_), Some(_)) => {
            return Err("flags -secret and -secret-file cannot be given together".into())
        }
        (Some(s), None) if s.is_empty() => return Err("flag -secret must not be empty".into()),
        (Some(s), None) => Some(Secret::Value(s)),
        (None, Some(f)) if f.is_empty() => return Err("flag -secret-file must not be empty".into()),
        (None, Some(f)) => Some(Secret::File(f.into())),
        (None, None) => None,
    };

    let cert = raw.cert.filter(|s| !s.is_empty());
    let key = raw.key.filter(|s| !s.is_empty());
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => TlsMode::Files {
            cert: cert.into(),
            key: key.into(),
        },
        (Some(_), None) => {
            return Err("flag -key is missing: -cert and -key must be given together".into())
        }
        (None, Some(_)) => {
            return Err("flag -cert is missing: -cert and -key must be given together".into())
        }
        (None, None) if raw.force_tls => {
            let name = raw.name.unwrap_or_else(|| DEFAULT_SERVER_NAME.to_string());
            if name.is_empty() {
                return Err("flag -n must not be empty with -force-tls".into());
            }
            TlsMode::SelfSigned { name }
        }
        (None, None) => TlsMode::Plain,
    };

    Ok(Config {
        bind,
        controller,
        mux: raw.mux,
        tls,
        timeout,
        verbose: raw.verbose,
        workers,
        max_conns,
        head_timeout,
        grace,
        secret,
        state: raw.state.filter(|s| !s.is_empty()).map(Into::into),
        metrics_per_user: raw.metrics_per_user,
        fallback,
        cert_check,
        proxy_protocol: raw.proxy_protocol,
        bind_unix,
        fast_open: raw.fast_open,
        io_uring,
        controller_conns,
    })
}

/// A duration flag that must be greater than zero, if given.
fn positive_duration(
    value: Option<String>,
    settings: &[Option<Setting>],
    index: usize,
) -> Result<Option<Duration>, String> {
    let Some((s, negative, d)) = signed_duration(value, settings, index)? else {
        return Ok(None);
    };
    if negative || d.is_zero() {
        return Err(format!(
            "invalid value {s:?} for flag {}: must be greater than zero",
            spelled(settings, index)
        ));
    }
    Ok(Some(d))
}

/// A duration flag where a negative value means zero (off), if given.
fn nonnegative_duration(
    value: Option<String>,
    settings: &[Option<Setting>],
    index: usize,
) -> Result<Option<Duration>, String> {
    Ok(signed_duration(value, settings, index)?
        .map(|(_, negative, d)| if negative { Duration::ZERO } else { d }))
}

/// A duration flag's value, its sign and magnitude, if given; errors name the flag.
fn signed_duration(
    value: Option<String>,
    settings: &[Option<Setting>],
    index: usize,
) -> Result<Option<(String, bool, Duration)>, String> {
    let Some(s) = value else { return Ok(None) };
    let (negative, d) = parse_signed_duration(&s).map_err(|e| {
        format!(
            "invalid value {s:?} for flag {}: {e}",
            spelled(settings, index)
        )
    })?;
    Ok(Some((s, negative, d)))
}

/// Go's time.ParseDuration: "90s", "1m0s", "1h30m", "250ms", "1.5h", "2h45m30.5s", "300us",
/// "300µs", "10ns", "0".
///
/// A leading sign is allowed; "-0s" is zero, but any other negative duration is an error,
/// since [`Duration`] cannot hold it. Rejects the empty string, a number without a unit
/// (except "0"), unknown units and values over Go's limit (about 292 years). Error messages
/// are Go's (`time: unknown unit "x" in duration "1x"`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    match parse_signed_duration(s)? {
        (true, d) if !d.is_zero() => Err(format!(
            "time: negative duration {} is not allowed",
            go_quote(s)
        )),
        (_, d) => Ok(d),
    }
}

/// Go's time.quote: double quotes, `"` and `\` escaped, bytes that are not printable ASCII
/// as `\xNN`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for &b in s.as_bytes() {
        if !(b' '..0x80).contains(&b) {
            out.push_str(&format!("\\x{b:02x}"));
        } else {
            if b == b'"' || b == b'\\' {
                out.push('\\');
            }
            out.push(b as char);
        }
    }
    out.push('"');
    out
}

/// Go's leadingInt: the leading digits of `s`, or None on overflow past 1<<63.
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let mut x: u64 = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        if x > (1 << 63) / 10 {
            return None;
        }
        x = x * 10 + u64::from(bytes[i] - b'0');
        if x > 1 << 63 {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

/// Go's leadingFraction: the leading digits of `s` as (value, scale), silently dropping
/// precision once the value would overflow.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let mut x: u64 = 0;
    let mut scale = 1.0f64;
    let mut overflow = false;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        if !overflow {
            if x > ((1 << 63) - 1) / 10 {
                overflow = true;
            } else {
                let y = x * 10 + u64::from(bytes[i] - b'0');
                if y > 1 << 63 {
                    overflow = true;
                } else {
                    x = y;
                    scale *= 10.0;
                }
            }
        }
        i += 1;
    }
    (x, scale, &s[i..])
}

/// Nanoseconds per unit, as Go's unitMap.
fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Go's time.ParseDuration, returning (negative, magnitude).
fn parse_signed_duration(orig: &str) -> Result<(bool, Duration), String> {
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut s = orig;
    let mut negative = false;
    if let Some(c) = s.chars().next() {
        if c == '-' || c == '+' {
            negative = c == '-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Ok((negative, Duration::ZERO));
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let before = s.len();
        let (mut v, after_int) = leading_int(s).ok_or_else(invalid)?;
        s = after_int;
        let pre = before != s.len();

        let mut f = 0u64;
        let mut scale = 1.0f64;
        let mut post = false;
        if let Some(after_dot) = s.strip_prefix('.') {
            let (frac, sc, after_frac) = leading_fraction(after_dot);
            post = after_dot.len() != after_frac.len();
            f = frac;
            scale = sc;
            s = after_frac;
        }
        if !pre && !post {
            return Err(invalid());
        }

        let unit_len = s
            .bytes()
            .position(|c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let (unit_str, after_unit) = s.split_at(unit_len);
        s = after_unit;
        let unit = unit_nanos(unit_str).ok_or_else(|| {
            format!(
                "time: unknown unit {} in duration {}",
                go_quote(unit_str),
                go_quote(orig)
            )
        })?;
        if v > (1 << 63) / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // Go computes the fraction in float64, nanosecond exact up to hours.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > 1 << 63 {
                return Err(invalid());
            }
        }
        total += v;
        if total > 1 << 63 {
            return Err(invalid());
        }
    }
    if !negative && total > (1 << 63) - 1 {
        return Err(invalid());
    }
    Ok((negative, Duration::from_nanos(total)))
}

/// Go's net.SplitHostPort.
fn split_host_port(hostport: &str) -> Result<(&str, &str), String> {
    let Some(i) = hostport.rfind(':') else {
        return Err("missing port in address".into());
    };
    let (host, j, k);
    if hostport.starts_with('[') {
        let Some(end) = hostport.find(']') else {
            return Err("missing ']' in address".into());
        };
        if end + 1 == hostport.len() {
            return Err("missing port in address".into());
        } else if end + 1 != i {
            if hostport.as_bytes()[end + 1] == b':' {
                return Err("too many colons in address".into());
            }
            return Err("missing port in address".into());
        }
        host = &hostport[1..end];
        j = 1;
        k = end + 1;
    } else {
        host = &hostport[..i];
        if host.contains(':') {
            return Err("too many colons in address".into());
        }
        j = 0;
        k = 0;
    }
    if hostport[j..].contains('[') {
        return Err("unexpected '[' in address".into());
    }
    if hostport[k..].contains(']') {
        return Err("unexpected ']' in address".into());
    }
    Ok((host, &hostport[i + 1..]))
}

/// A decimal port 0..=65535; empty means 0, as in Go.
fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Ok(0);
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {port:?}: a number is needed"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("invalid port {port:?}: above 65535"))
}

/// Resolves a Go-style listen address.
///
/// ":443" (empty host) means all interfaces and gives `[::]:443`, which the listener opens
/// dual stack as Go does. `HOST:PORT` with an IP literal, or `[v6]:port`, is taken as is.
/// A host name is resolved with std's [`ToSocketAddrs`]; like Go's `net.Listen` this takes
/// the first IPv4 result, or the first result if there is no IPv4 one. Port 0 (or an empty
/// port) asks for any free port. Errors name the address.
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    let fail = |why: String| format!("listen address {s:?}: {why}");
    let (host, port) = split_host_port(s).map_err(|e| fail(e.to_string()))?;
    let port = parse_port(port).map_err(fail)?;
    if host.is_empty() {
        return Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve {host:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| fail(format!("{host:?} resolves to no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn parse(list: &[&str]) -> Result<Config, ArgsError> {
        parse_args("mtt-mu-server", &args(list))
    }

    fn ok(list: &[&str]) -> Config {
        match parse(list) {
            Ok(c) => c,
            Err(e) => panic!("{list:?} should parse, got {e:?}"),
        }
    }

    /// The usage error for `list`, checked to carry the usage text too.
    fn usage_err(list: &[&str]) -> String {
        match parse(list) {
            Ok(c) => panic!("{list:?} should fail, got {c:?}"),
            Err(ArgsError::Help(h)) => panic!("{list:?} should fail, got help {h}"),
            Err(e @ ArgsError::Usage(_)) => {
                assert_eq!(e.exit_code(), 2);
                let text = e.to_string();
                assert!(text.contains("Usage of mtt-mu-server:"), "{text}");
                text.lines().next().unwrap_or_default().to_string()
            }
        }
    }

    fn assert_usage(list: &[&str], needles: &[&str]) {
        let msg = usage_err(list);
        for needle in needles {
            assert!(
                msg.contains(needle),
                "{list:?}: message {msg:?} lacks {needle:?}"
            );
        }
    }

    const BC: [&str; 4] = ["-b", ":443", "-c", "127.0.0.1:8000"];

    fn with_bc<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        BC.iter().chain(extra).copied().collect()
    }

    #[test]
    fn minimal_defaults() {
        let c = ok(&BC);
        assert_eq!(c.bind, ":443");
        assert_eq!(c.controller, "127.0.0.1:8000");
        assert!(!c.mux);
        assert!(!c.verbose);
        assert_eq!(c.tls, TlsMode::Plain);
        assert_eq!(c.timeout, Duration::from_secs(60));
        assert_eq!(c.workers, default_workers());
        assert!(c.workers >= 1 && c.workers <= MAX_WORKERS);
    }

    #[test]
    fn value_syntaxes() {
        for list in [
            &["-b", ":443", "-c", ":8000"][..],
            &["-b=:443", "-c=:8000"],
            &["--b", ":443", "--c", ":8000"],
            &["--b=:443", "--c=:8000"],
            &["-bind", ":443", "-controller", ":8000"],
            &["--bind", ":443", "--controller", ":8000"],
            &["--bind=:443", "--controller=:8000"],
            &["-bind=:443", "-controller", ":8000"],
        ] {
            let c = ok(list);
            assert_eq!(c.bind, ":443", "{list:?}");
            assert_eq!(c.controller, ":8000", "{list:?}");
        }
    }

    #[test]
    fn address_forms_kept_as_given() {
        for addr in [
            "[::1]:443",
            "localhost:443",
            "0.0.0.0:443",
            "127.0.0.1:0",
            ":0",
        ] {
            let c = ok(&["-b", addr, "-c", addr]);
            assert_eq!(c.bind, addr);
            assert_eq!(c.controller, addr);
        }
    }

    #[test]
    fn value_taken_verbatim_even_with_dashes() {
        // Go takes the next argument as the value whatever it looks like.
        let c = ok(&with_bc(&["-force-tls", "-n", "-h"]));
        assert_eq!(c.tls, TlsMode::SelfSigned { name: "-h".into() });
        let c = ok(&with_bc(&["-force-tls", "--name", "--"]));
        assert_eq!(c.tls, TlsMode::SelfSigned { name: "--".into() });
        let c = ok(&with_bc(&["-force-tls", "-n=a=b"]));
        assert_eq!(c.tls, TlsMode::SelfSigned { name: "a=b".into() });
        let c = ok(&with_bc(&["-force-tls", "-n", "--help"]));
        assert_eq!(
            c.tls,
            TlsMode::SelfSigned {
                name: "--help".into()
            }
        );
    }

    #[test]
    fn booleans() {
        let on = |extra: &[&str]| {
            let c = ok(&with_bc(extra));
            (c.mux, c.verbose)
        };
        assert_eq!(on(&[]), (false, false));
        for t in [
            "-mux",
            "--mux",
            "-mux=true",
            "-mux=1",
            "-mux=t",
            "-mux=T",
            "-mux=TRUE",
        ] {
            assert_eq!(on(&[t]), (true, false), "{t}");
        }
        for t in ["-mux=True", "--mux=true"] {
            assert_eq!(on(&[t]), (true, false), "{t}");
        }
        for f in [
            "-mux=false",
            "-mux=0",
            "-mux=f",
            "-mux=F",
            "-mux=FALSE",
            "-mux=False",
        ] {
            assert_eq!(on(&[f]), (false, false), "{f}");
        }
        assert_eq!(on(&["-verbose"]), (false, true));
        assert_eq!(on(&["--verbose=1", "-mux"]), (true, true));
        assert_eq!(on(&["-mux", "-mux=false"]), (false, false));
        assert_eq!(on(&["-mux=false", "-mux"]), (true, false));
    }

    #[test]
    fn last_wins() {
        let c = ok(&[
            "-b",
            ":1",
            "-c",
            ":2",
            "--bind=:3",
            "-c",
            ":4",
            "-timeout",
            "5s",
        ]);
        assert_eq!(c.bind, ":3");
        assert_eq!(c.controller, ":4");
        let c = ok(&with_bc(&[
            "-timeout=1s",
            "--timeout",
            "2s",
            "-workers",
            "3",
            "-workers=4",
        ]));
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.workers, 4);
    }

    #[test]
    fn timeout_and_workers() {
        let c = ok(&with_bc(&["-timeout", "1m0s"]));
        assert_eq!(c.timeout, Duration::from_secs(60));
        let c = ok(&with_bc(&["-timeout=250ms"]));
        assert_eq!(c.timeout, Duration::from_millis(250));
        let c = ok(&with_bc(&["--timeout", "1h30m"]));
        assert_eq!(c.timeout, Duration::from_secs(5400));
        let c = ok(&with_bc(&["-workers", "1"]));
        assert_eq!(c.workers, 1);
        let c = ok(&with_bc(&["--workers=1024"]));
        assert_eq!(c.workers, 1024);
    }

    #[test]
    fn tls_modes() {
        let c = ok(&with_bc(&["-cert", "/a/c.pem", "-key", "/a/k.pem"]));
        assert_eq!(
            c.tls,
            TlsMode::Files {
                cert: "/a/c.pem".into(),
                key: "/a/k.pem".into()
            }
        );
        // cert/key win over -force-tls, as in Go.
        let c = ok(&with_bc(&["-force-tls", "--cert=c", "--key=k"]));
        assert_eq!(
            c.tls,
            TlsMode::Files {
                cert: "c".into(),
                key: "k".into()
            }
        );
        let c = ok(&with_bc(&["-force-tls"]));
        assert_eq!(
            c.tls,
            TlsMode::SelfSigned {
                name: "www.example.com".into()
            }
        );
        let c = ok(&with_bc(&["--force-tls=true", "-n", "a.example"]));
        assert_eq!(
            c.tls,
            TlsMode::SelfSigned {
                name: "a.example".into()
            }
        );
        let c = ok(&with_bc(&["-force-tls", "--name=b.example"]));
        assert_eq!(
            c.tls,
            TlsMode::SelfSigned {
                name: "b.example".into()
            }
        );
        let c = ok(&with_bc(&["-force-tls=false", "-n", "x"]));
        assert_eq!(c.tls, TlsMode::Plain);
    }

    #[test]
    fn double_dash_ends_flags() {
        let c = ok(&with_bc(&["-mux", "--"]));
        assert!(c.mux);
        assert_usage(&with_bc(&["--", "-mux"]), &["\"-mux\"", "after \"--\""]);
        assert_usage(&with_bc(&["--", "x"]), &["\"x\""]);
    }

    #[test]
    fn help() {
        for list in [
            &["-h"][..],
            &["-help"],
            &["--help"],
            &["--h"],
            &["-h=1"],
            &["-b", ":1", "-h"],
            &["-h", "-nonsense"],
            &["-h", "positional"],
        ] {
            match parse(list) {
                Err(e @ ArgsError::Help(_)) => {
                    assert_eq!(e.exit_code(), 0);
                    let text = e.to_string();
                    assert!(text.starts_with("Usage of mtt-mu-server:"), "{text}");
                    for flag in [
                        "-b, -bind",
                        "-c, -controller",
                        "-cert",
                        "-key",
                        "-force-tls",
                        "-n, -name",
                        "-mux",
                        "-timeout",
                        "-verbose",
                        "-workers",
                        "(default 1m0s)",
                        "www.example.com",
                    ] {
                        assert!(text.contains(flag), "help lacks {flag}: {text}");
                    }
                }
                other => panic!("{list:?}: expected help, got {other:?}"),
            }
        }
        // An error before -h wins, as in Go.
        assert_usage(&["-nonsense", "-h"], &["-nonsense"]);
        assert_usage(&["-timeout", "x", "-h"], &["-timeout", "\"x\""]);
    }

    #[test]
    fn unknown_flag() {
        assert_usage(
            &with_bc(&["-foo"]),
            &["flag provided but not defined", "-foo"],
        );
        assert_usage(&with_bc(&["--foo=1"]), &["--foo"]);
        assert_usage(&with_bc(&["-force_tls"]), &["-force_tls"]);
        assert_usage(&with_bc(&["-B", "x"]), &["-B"]);
    }

    #[test]
    fn bad_flag_syntax() {
        assert_usage(&with_bc(&["---mux"]), &["bad flag syntax", "---mux"]);
        assert_usage(&with_bc(&["-=x"]), &["bad flag syntax", "-=x"]);
        assert_usage(&with_bc(&["--=x"]), &["bad flag syntax"]);
    }

    #[test]
    fn missing_value() {
        assert_usage(&["-c", ":1", "-b"], &["flag needs an argument", "-b"]);
        assert_usage(
            &with_bc(&["--timeout"]),
            &["flag needs an argument", "-timeout"],
        );
        assert_usage(&with_bc(&["-cert"]), &["-cert"]);
        assert_usage(&with_bc(&["-workers"]), &["-workers"]);
    }

    #[test]
    fn bad_bool() {
        assert_usage(
            &with_bc(&["-mux=yes"]),
            &["invalid boolean value \"yes\"", "-mux"],
        );
        assert_usage(
            &with_bc(&["-verbose="]),
            &["invalid boolean value \"\"", "-verbose"],
        );
        assert_usage(&with_bc(&["--force-tls=on"]), &["\"on\"", "-force-tls"]);
    }

    #[test]
    fn bad_duration() {
        assert_usage(
            &with_bc(&["-timeout", "1x"]),
            &["-timeout", "\"1x\"", "unknown unit"],
        );
        assert_usage(
            &with_bc(&["-timeout=60"]),
            &["-timeout", "\"60\"", "missing unit"],
        );
        assert_usage(&with_bc(&["-timeout="]), &["-timeout", "\"\""]);
        assert_usage(
            &with_bc(&["-timeout", "0"]),
            &["-timeout", "greater than zero"],
        );
        assert_usage(
            &with_bc(&["-timeout", "0s"]),
            &["-timeout", "greater than zero"],
        );
        assert_usage(
            &with_bc(&["-timeout", "-1s"]),
            &["-timeout", "greater than zero"],
        );
        assert_usage(
            &with_bc(&["-timeout", "-0"]),
            &["-timeout", "greater than zero"],
        );
    }

    #[test]
    fn bad_workers() {
        assert_usage(
            &with_bc(&["-workers", "0"]),
            &["-workers", "\"0\"", "between 1 and 1024"],
        );
        assert_usage(&with_bc(&["-workers=1025"]), &["-workers", "1025"]);
        assert_usage(&with_bc(&["-workers", "two"]), &["-workers", "\"two\""]);
        assert_usage(&with_bc(&["-workers", "-1"]), &["-workers", "\"-1\""]);
    }

    #[test]
    fn positional_args() {
        assert_usage(&with_bc(&["extra"]), &["unexpected argument \"extra\""]);
        assert_usage(&["serve", "-b", ":1", "-c", ":2"], &["\"serve\""]);
        assert_usage(&with_bc(&["-"]), &["\"-\""]);
        assert_usage(&with_bc(&[""]), &["\"\""]);
        // `-mux true` stops Go's parsing at "true": an error here, with a hint.
        assert_usage(&with_bc(&["-mux", "true"]), &["\"true\"", "-mux=true"]);
        assert_usage(
            &with_bc(&["--verbose", "false"]),
            &["\"false\"", "-verbose=false"],
        );
    }

    #[test]
    fn cert_key_pairing() {
        assert_usage(&with_bc(&["-cert", "c.pem"]), &["-key"]);
        assert_usage(&with_bc(&["-key", "k.pem"]), &["-cert"]);
        assert_usage(&with_bc(&["-cert", "c.pem", "-force-tls"]), &["-key"]);
        assert_usage(&with_bc(&["-cert", "c.pem", "-key="]), &["-key"]);
        assert_usage(&with_bc(&["-force-tls", "-n="]), &["-n"]);
    }

    #[test]
    fn required_flags() {
        assert_usage(&["-c", ":1"], &["-b", "required"]);
        assert_usage(&["-b", ":1"], &["-c", "required"]);
        assert_usage(&[], &["-b", "required"]);
        assert_usage(&["-b=", "-c", ":1"], &["-b", "required"]);
        // Go semantics: "-c" is taken as -b's value, and then fails as an address.
        assert_usage(&["-b", "-c"], &["-b", "\"-c\""]);
        assert_usage(&["-b", "-c", ":1"], &["unexpected argument \":1\""]);
    }

    #[test]
    fn bad_addresses() {
        assert_usage(
            &["-b", "nope", "-c", ":1"],
            &["-b", "\"nope\"", "missing port"],
        );
        assert_usage(
            &["--bind=:1", "--controller", "1.2.3.4:99999"],
            &["-controller", "99999"],
        );
        assert_usage(&["-b", "::1:80", "-c", ":1"], &["-b", "too many colons"]);
        assert_usage(&["-b", ":https", "-c", ":1"], &["-b", "\"https\""]);
    }

    fn d(nanos: u64) -> Duration {
        Duration::from_nanos(nanos)
    }

    #[test]
    fn go_durations() {
        const S: u64 = 1_000_000_000;
        let table: &[(&str, Duration)] = &[
            ("0", d(0)),
            ("-0", d(0)),
            ("+0", d(0)),
            ("0s", d(0)),
            ("5s", d(5 * S)),
            ("30s", d(30 * S)),
            ("1478s", d(1478 * S)),
            ("+5s", d(5 * S)),
            ("-0s", d(0)),
            ("90s", d(90 * S)),
            ("1m0s", d(60 * S)),
            ("1h30m", d(5400 * S)),
            ("250ms", d(250_000_000)),
            ("1.5h", d(5400 * S)),
            ("2h45m30.5s", d((2 * 3600 + 45 * 60 + 30) * S + 500_000_000)),
            ("300us", d(300_000)),
            ("300\u{b5}s", d(300_000)),
            ("300\u{3bc}s", d(300_000)),
            ("10ns", d(10)),
            ("5.0s", d(5 * S)),
            ("5.6s", d(5 * S + 600_000_000)),
            ("5.s", d(5 * S)),
            ("1.s", d(S)),
            (".5s", d(500_000_000)),
            ("1.0s", d(S)),
            ("1.00s", d(S)),
            ("1.004s", d(S + 4_000_000)),
            ("1.0040s", d(S + 4_000_000)),
            ("100.00100s", d(100 * S + 1_000_000)),
            ("11us", d(11_000)),
            ("12\u{b5}s", d(12_000)),
            ("13ms", d(13_000_000)),
            ("14s", d(14 * S)),
            ("15m", d(15 * 60 * S)),
            ("16h", d(16 * 3600 * S)),
            ("3h30m", d(12600 * S)),
            ("10.5s4m", d(4 * 60 * S + 10 * S + 500_000_000)),
            (
                "1h2m3s4ms5us6ns",
                d(3600 * S + 120 * S + 3 * S + 4_000_000 + 5_000 + 6),
            ),
            (
                "39h9m14.425s",
                d((39 * 3600 + 9 * 60 + 14) * S + 425_000_000),
            ),
            ("52763797000ns", d(52_763_797_000)),
            ("0.3333333333333333333h", d(20 * 60 * S)),
            ("9007199254740993ns", d((1 << 53) + 1)),
            ("9223372036854775807ns", d((1 << 63) - 1)),
            ("9223372036854775.807us", d((1 << 63) - 1)),
            ("9223372036s854ms775us807ns", d((1 << 63) - 1)),
            ("0.100000000000000000000h", d(6 * 60 * S)),
            ("0.830103483285477580700h", d(49 * 60 * S + 48_372_539_827)),
        ];
        for (input, want) in table {
            assert_eq!(parse_go_duration(input), Ok(*want), "{input}");
        }
    }

    #[test]
    fn go_duration_rejects() {
        let table: &[(&str, &str)] = &[
            ("", "time: invalid duration \"\""),
            ("3", "time: missing unit in duration \"3\""),
            ("1", "time: missing unit in duration \"1\""),
            ("00", "time: missing unit in duration \"00\""),
            ("1x", "time: unknown unit \"x\" in duration \"1x\""),
            ("3000000h", "time: invalid duration \"3000000h\""),
            ("s", "time: invalid duration \"s\""),
            (".", "time: invalid duration \".\""),
            (".s", "time: invalid duration \".s\""),
            ("-.s", "time: invalid duration \"-.s\""),
            ("+.s", "time: invalid duration \"+.s\""),
            ("-", "time: invalid duration \"-\""),
            ("+", "time: invalid duration \"+\""),
            ("1d", "time: unknown unit \"d\" in duration \"1d\""),
            ("1S", "time: unknown unit \"S\" in duration \"1S\""),
            ("1sec", "time: unknown unit \"sec\" in duration \"1sec\""),
            ("1s1", "time: missing unit in duration \"1s1\""),
            ("1h-1m", "time: unknown unit \"h-\" in duration \"1h-1m\""),
            ("1h.", "time: invalid duration \"1h.\""),
            (" 1s", "time: invalid duration \" 1s\""),
            ("1s ", "time: unknown unit \"s \" in duration \"1s \""),
            ("1.5", "time: missing unit in duration \"1.5\""),
            (
                "9223372036854775808ns",
                "time: invalid duration \"9223372036854775808ns\"",
            ),
            (
                "9223372036854775.808us",
                "time: invalid duration \"9223372036854775.808us\"",
            ),
            (
                "9223372036854ms775us808ns",
                "time: invalid duration \"9223372036854ms775us808ns\"",
            ),
            (
                "18446744073709551616ns",
                "time: invalid duration \"18446744073709551616ns\"",
            ),
            (
                "1\u{e9}s",
                "time: unknown unit \"\\xc3\\xa9s\" in duration \"1\\xc3\\xa9s\"",
            ),
            (
                "1\"s",
                "time: unknown unit \"\\\"s\" in duration \"1\\\"s\"",
            ),
        ];
        for (input, want) in table {
            assert_eq!(parse_go_duration(input), Err(want.to_string()), "{input:?}");
        }
        // Negative values are valid Go but not representable: an error naming the value.
        let e = parse_go_duration("-1s").unwrap_err();
        assert!(e.contains("\"-1s\"") && e.contains("negative"), "{e}");
        assert_eq!(
            parse_signed_duration("-1.5h"),
            Ok((true, Duration::from_secs(5400)))
        );
        // Go allows -1<<63 ns exactly.
        assert_eq!(
            parse_signed_duration("-9223372036854775808ns"),
            Ok((true, d(1 << 63)))
        );
    }

    #[test]
    fn listen_addrs() {
        assert_eq!(listen_addr(":443"), Ok("[::]:443".parse().unwrap()));
        assert_eq!(listen_addr(":0"), Ok("[::]:0".parse().unwrap()));
        assert_eq!(listen_addr("[]:80"), Ok("[::]:80".parse().unwrap()));
        assert_eq!(
            listen_addr("127.0.0.1:0"),
            Ok("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            listen_addr("127.0.0.1:"),
            Ok("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            listen_addr("0.0.0.0:443"),
            Ok("0.0.0.0:443".parse().unwrap())
        );
        assert_eq!(listen_addr("[::1]:8080"), Ok("[::1]:8080".parse().unwrap()));
        assert_eq!(listen_addr("[::]:443"), Ok("[::]:443".parse().unwrap()));
        assert_eq!(
            listen_addr("127.0.0.1:65535"),
            Ok("127.0.0.1:65535".parse().unwrap())
        );
        let local = listen_addr("localhost:80").expect("localhost resolves");
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 80);
    }

    #[test]
    fn listen_addr_errors() {
        for (input, why) in [
            ("nope", "missing port"),
            ("1.2.3.4:99999", "invalid port"),
            ("1.2.3.4:-1", "invalid port"),
            ("1.2.3.4:http", "invalid port"),
            ("::1:80", "too many colons"),
            ("[::1]", "missing port"),
            ("[::1]80", "missing port"),
            ("[::1]:80:1", "too many colons"),
            ("[::1:80", "missing ']'"),
            ("a[b]:80", "unexpected '['"),
            ("ab]:80", "unexpected ']'"),
            ("", "missing port"),
        ] {
            let e = listen_addr(input).unwrap_err();
            assert!(e.contains(&format!("{input:?}")), "{input}: {e}");
            assert!(e.contains(why), "{input}: {e}");
        }
    }

    #[test]
    fn argh_sees_canonical_form() {
        let Ok(Translation::Flags(settings)) = translate(&args(&[
            "-b=:1",
            "--c",
            ":2",
            "-mux=false",
            "-verbose",
            "-n",
            "x",
        ])) else {
            panic!("translation failed");
        };
        assert_eq!(
            argh_argv(&settings),
            [
                "--bind",
                ":1",
                "--controller",
                ":2",
                "--verbose",
                "--name",
                "x"
            ]
        );
        assert_eq!(spelled(&settings, CONTROLLER), "-c");
        assert_eq!(spelled(&settings, TIMEOUT), "-timeout");
    }
}
