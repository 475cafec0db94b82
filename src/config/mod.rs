//! Command line of the server: turns argv into a validated [`Config`].
//!
//! Operators run this binary from units and scripts written for the Go server, so every
//! spelling that Go's `flag` package accepts works here unchanged (`-b :443`, `-b=:443`,
//! `--b :443`, `-mux`, `-mux=false`, `-timeout 1m0s`), beside conventional long names
//! (`--bind`, `--controller`, ...). Every flag is described once, in the table in
//! `flags.rs`; parsing walks it twice: reading argv with Go's rules (first error wins, the
//! last repeat of a flag wins, `-h` asks for help), then storing each flag's value or
//! default in table order into a draft, which the rules that tie flags together (-cert
//! with -key, -secret against -secret-file) turn into a [`Config`]. The first pass alone is
//! public ([`read_go_syntax`], with [`flag_syntax`]) so that `tests/it/goflag.rs` can compare
//! it with Go's own `flag` package. The folder also owns
//! the usage text (`usage.rs`), Go's duration syntax ([`parse_go_duration`]) and Go's
//! listen address syntax ([`listen_addr`]). It does not read certificate, key or secret
//! files, generate certificates, or bind sockets: it only says which files or which mode,
//! and where.

mod addr;
mod duration;
mod flags;
mod usage;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use addr::listen_addr;
pub use duration::parse_go_duration;
use flags::Translation;
use usage::usage;

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
    /// -log-format text|json: how log lines are written (default text).
    pub log_format: LogFormat,
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
    /// -panel URL and its companions: keep the users in sync with a panel.
    pub panel: Option<PanelConfig>,
    /// -workers N (default: the number of CPUs this process may run on:
    /// std::thread::available_parallelism, at least 1); 1..=1024
    pub workers: usize,
}

/// How log lines are written (-log-format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text a record (the default).
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

/// The panel this node keeps itself in sync with (`-panel` and the `-panel-*`, `-node-*`
/// flags): where, which protocol, and the rules of the sync loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelConfig {
    /// -panel: the base URL (`http://` or `https://`), without a trailing slash.
    pub url: String,
    /// -panel-kind: which protocol the panel speaks.
    pub kind: PanelKind,
    /// -panel-token / -panel-token-file: the node's credential (a file is read at start-up).
    pub token: Option<Secret>,
    /// -node-id: this node's id in the panel (UniProxy requires it).
    pub node_id: Option<String>,
    /// -node-type: UniProxy's `node_type` (default `shadowsocks`: mtt-client is a
    /// shadowsocks plugin).
    pub node_type: String,
    /// -panel-interval: how often to pull users and push traffic (default 60 s); a
    /// UniProxy panel's `config` overrides it.
    pub interval: Duration,
    /// -panel-path: a UniProxy user's path, `{uuid}` and `{id}` replaced (default `/{uuid}`).
    pub path_template: String,
    /// -panel-dst: every UniProxy user's destination.
    pub dst: Option<String>,
    /// -panel-max-remove: the largest share of users one pull may remove, in thousandths
    /// (default 500; 1000 allows anything).
    pub max_remove_permille: u32,
}

/// The protocol of a panel (-panel-kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelKind {
    /// Ours: `GET /users` as full sync takes it, `POST /traffic` billing reports,
    /// `POST /alive` client addresses.
    Mtt,
    /// V2board/Xboard's node API, `/api/v1/server/UniProxy/*`.
    UniProxy,
}

/// Where the controller's secret comes from; a file is read at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Value(String),
    File(std::path::PathBuf),
}

/// TLS mode of the data listener.
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

/// Default of `-workers`: the CPUs this process may run on, within 1..=MAX_WORKERS.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_WORKERS)
}

/// Parses the command line into a [`Config`].
///
/// `args` excludes argv\[0\]; `program` is argv\[0\]'s file name for messages.
/// Accepts Go's `flag` syntax for every flag; see the module documentation.
pub fn parse_args(program: &str, args: &[String]) -> Result<Config, ArgsError> {
    let usage_error = |msg: &str| ArgsError::Usage(format!("{msg}\n{}", usage(program)));
    let given = match flags::translate(args) {
        Ok(Translation::Help) => return Err(ArgsError::Help(usage(program))),
        Ok(Translation::Flags(given)) => given,
        Err(msg) => return Err(usage_error(&msg)),
    };
    let mut draft = Draft::new();
    for (flag, setting) in given.iter() {
        flag.store(setting, &given, &mut draft)
            .map_err(|msg| usage_error(&msg))?;
    }
    draft.finish().map_err(|msg| usage_error(&msg))
}

/// Each flag's names (the first is the flag's own) and whether it is boolean, in the order
/// of the flag table: what a Go `flag.FlagSet` needs to read argv as the server does.
pub fn flag_syntax() -> Vec<(&'static [&'static str], bool)> {
    flags::FLAGS
        .iter()
        .map(|f| (f.names, matches!(f.kind, flags::Kind::Bool { .. })))
        .collect()
}

/// What [`read_go_syntax`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoSyntax {
    /// The last value given to each flag, by position in [`flag_syntax`]; "true" or
    /// "false" for a boolean.
    pub values: Vec<Option<String>>,
    /// The arguments after the flags (Go's `FlagSet.Args()`), which the server refuses.
    pub rest: Vec<String>,
}

/// Why [`read_go_syntax`] stopped, as Go's `FlagSet.Parse` would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoSyntaxError {
    /// `-h` / `-help` / `--help` came before any error (Go's `flag.ErrHelp`).
    Help,
    /// The first syntax error: unknown flag, missing value, bad boolean, bad syntax.
    Invalid(String),
}

/// Reads `args` (without argv\[0\]) with Go's `flag` syntax alone, the first pass of
/// [`parse_args`] without its value checks and everything after: for comparing it with Go.
pub fn read_go_syntax(args: &[String]) -> Result<GoSyntax, GoSyntaxError> {
    match flags::read(args, false) {
        Ok(reading) => Ok(GoSyntax {
            values: reading
                .settings
                .into_iter()
                .map(|s| s.map(|s| s.value))
                .collect(),
            rest: reading.rest.to_vec(),
        }),
        Err(flags::Stop::Help) => Err(GoSyntaxError::Help),
        Err(flags::Stop::Error(msg)) => Err(GoSyntaxError::Invalid(msg)),
    }
}

/// A [`Config`] while the flags are stored into it. Every field of `config` that has a
/// default gets it from the flag table; `tls` and `secret` are decided in [`Draft::finish`]
/// from the flags kept apart here, which only make sense together.
struct Draft {
    config: Config,
    /// -cert, unless empty.
    cert: Option<String>,
    /// -key, unless empty.
    key: Option<String>,
    /// -force-tls.
    force_tls: bool,
    /// -n: the self-signed certificate's name, used only with -force-tls.
    name: String,
    /// -secret as given, even empty (an error, but only once we know -secret-file).
    secret: Option<String>,
    /// -secret-file as given, even empty.
    secret_file: Option<String>,
    /// -panel and its companions as given; [`Draft::finish`] decides whether they make a
    /// [`PanelConfig`].
    panel: PanelDraft,
}

/// The panel flags while they are stored: those without a default are `None` unless
/// given, so that one given without -panel is an error.
#[derive(Default)]
struct PanelDraft {
    url: Option<String>,
    kind: Option<PanelKind>,
    token: Option<String>,
    token_file: Option<String>,
    node_id: Option<String>,
    node_type: String,
    interval: Duration,
    path_template: String,
    dst: Option<String>,
    max_remove_permille: u32,
}

impl Draft {
    fn new() -> Self {
        Draft {
            config: Config {
                bind: String::new(),
                controller: String::new(),
                mux: false,
                tls: TlsMode::Plain,
                timeout: Duration::ZERO,
                verbose: false,
                log_format: LogFormat::Text,
                max_conns: 0,
                head_timeout: Duration::ZERO,
                grace: Duration::ZERO,
                secret: None,
                state: None,
                metrics_per_user: false,
                fallback: None,
                cert_check: Duration::ZERO,
                proxy_protocol: false,
                bind_unix: None,
                fast_open: false,
                io_uring: false,
                controller_conns: 0,
                panel: None,
                workers: 0,
            },
            cert: None,
            key: None,
            force_tls: false,
            name: String::new(),
            secret: None,
            secret_file: None,
            panel: PanelDraft::default(),
        }
    }

    /// The rules between flags, checked after every flag on its own.
    fn finish(self) -> Result<Config, String> {
        let mut config = self.config;
        config.secret = match (self.secret, self.secret_file) {
            (Some(_), Some(_)) => {
                return Err("flags -secret and -secret-file cannot be given together".into())
            }
            (Some(s), None) if s.is_empty() => return Err("flag -secret must not be empty".into()),
            (Some(s), None) => Some(Secret::Value(s)),
            (None, Some(f)) if f.is_empty() => {
                return Err("flag -secret-file must not be empty".into())
            }
            (None, Some(f)) => Some(Secret::File(f.into())),
            (None, None) => None,
        };
        config.tls = match (self.cert, self.key) {
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
            (None, None) if self.force_tls => {
                if self.name.is_empty() {
                    return Err("flag -n must not be empty with -force-tls".into());
                }
                TlsMode::SelfSigned { name: self.name }
            }
            (None, None) => TlsMode::Plain,
        };
        config.panel = self.panel.finish()?;
        Ok(config)
    }
}

impl PanelDraft {
    /// The panel configuration, if -panel is given; the rules between the panel flags.
    fn finish(self) -> Result<Option<PanelConfig>, String> {
        let Some(url) = self.url else {
            let stray = [
                ("-panel-kind", self.kind.is_some()),
                ("-panel-token", self.token.is_some()),
                ("-panel-token-file", self.token_file.is_some()),
                ("-node-id", self.node_id.is_some()),
                ("-panel-dst", self.dst.is_some()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, given)| *given) {
                return Err(format!("flag {flag} needs -panel URL"));
            }
            return Ok(None);
        };
        let token = match (self.token, self.token_file) {
            (Some(_), Some(_)) => {
                return Err(
                    "flags -panel-token and -panel-token-file cannot be given together".into(),
                )
            }
            (Some(t), None) if t.is_empty() => {
                return Err("flag -panel-token must not be empty".into())
            }
            (Some(t), None) => Some(Secret::Value(t)),
            (None, Some(f)) if f.is_empty() => {
                return Err("flag -panel-token-file must not be empty".into())
            }
            (None, Some(f)) => Some(Secret::File(f.into())),
            (None, None) => None,
        };
        let kind = self.kind.unwrap_or(PanelKind::Mtt);
        if kind == PanelKind::UniProxy {
            let missing = [
                ("-panel-token (or -panel-token-file)", token.is_none()),
                ("-node-id", self.node_id.is_none()),
                ("-panel-dst", self.dst.is_none()),
            ];
            if let Some((flag, _)) = missing.iter().find(|(_, missing)| *missing) {
                return Err(format!("-panel-kind uniproxy needs flag {flag}"));
            }
            let template = &self.path_template;
            if !template.contains("{uuid}") && !template.contains("{id}") {
                return Err(format!(
                    "flag -panel-path {template:?} has neither {{uuid}} nor {{id}}: every user would get the same path"
                ));
            }
        }
        Ok(Some(PanelConfig {
            url,
            kind,
            token,
            node_id: self.node_id,
            node_type: self.node_type,
            interval: self.interval,
            path_template: self.path_template,
            dst: self.dst,
            max_remove_permille: self.max_remove_permille,
        }))
    }
}

#[cfg(test)]
mod tests;
