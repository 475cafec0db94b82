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

mod addr;
mod duration;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

pub use addr::listen_addr;
use addr::{parse_port, split_host_port};
pub use duration::parse_go_duration;
use duration::parse_signed_duration;

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

#[cfg(test)]
mod tests;
