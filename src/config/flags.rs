//! Every flag of the server, described once in [`FLAGS`], and the pass that reads argv with
//! the rules of Go's `flag` package.
//!
//! One [`Flag`] gives a flag's names, whether it takes a value, its default, its help text,
//! the syntax check Go would run when the flag is set, and the function that puts its value
//! into the [`Draft`] of the [`Config`](super::Config). The Go-syntax reader ([`translate`]),
//! the usage text (`usage.rs`) and the construction of the config (`mod.rs`) all walk this
//! table; nothing else lists flags. A new flag is one more row here, in the place the usage
//! should show it (plus the [`Config`](super::Config) field it fills, if that is new). Rules
//! that tie several flags together (-cert with -key, -secret against -secret-file) are not
//! here but in `Draft::finish`.

use std::path::PathBuf;
use std::time::Duration;

use super::addr::{parse_port, split_host_port};
use super::duration::parse_signed_duration;
use super::{default_workers, Draft, LogFormat, PanelKind, DEFAULT_SERVER_NAME, MAX_WORKERS};

/// One flag as Go's `flag` package would define it, with everything the server does with it.
pub(super) struct Flag {
    /// Names accepted after one or two dashes; the first is the one messages use when the
    /// user did not write the flag.
    pub(super) names: &'static [&'static str],
    pub(super) kind: Kind,
    /// Help text under the flag's line in the usage, lines split by `\n`; `{default}` is
    /// replaced with the default, so the text cannot drift from what the flag does.
    pub(super) help: &'static str,
}

/// A value's syntax check, run when the flag is set as Go's `flag.Value.Set` does, so that
/// the first bad argument is the one reported; the error is the reason, without the flag.
type Check = fn(&str) -> Result<(), String>;

/// Stores a value into the draft config; the error is the reason, without the flag.
type Store = fn(&mut Draft, &str) -> Result<(), String>;

pub(super) enum Kind {
    /// Boolean: `-f`, `-f=BOOL`; never takes the next argument. Off unless given.
    Bool { store: fn(&mut Draft, bool) },
    /// Takes a value: `-f v`, `-f=v`, `--f v`, `--f=v`.
    Value {
        /// What the value is, in the usage line (`HOST:PORT`, `DURATION`).
        placeholder: &'static str,
        default: DefaultValue,
        /// Must be given, and not empty.
        required: Option<Required>,
        check: Option<Check>,
        /// Runs once per flag, in table order, on the value given or else the default, after
        /// all of argv has been read: errors left to it come out in this order.
        store: Store,
    },
}

/// What a value flag holds when it is not given.
pub(super) enum DefaultValue {
    /// Nothing: `store` is not called.
    None,
    /// This value, in the flag's own syntax, as if given.
    Text(&'static str),
    /// A value worked out at run time (it depends on the machine).
    Computed(fn() -> String),
}

/// A flag the server cannot start without.
pub(super) struct Required {
    /// What it is, for the message ("data listener").
    pub(super) what: &'static str,
    /// Another flag that makes this one optional when this one is not written at all.
    pub(super) unless: Option<&'static str>,
}

impl DefaultValue {
    /// The default in the flag's syntax, if it has one.
    pub(super) fn text(&self) -> Option<String> {
        match self {
            DefaultValue::None => None,
            DefaultValue::Text(text) => Some(text.to_string()),
            DefaultValue::Computed(compute) => Some(compute()),
        }
    }
}

/// The flags, in the order the usage lists them and their values are validated.
pub(super) const FLAGS: &[Flag] = &[
    Flag {
        names: &["b", "bind"],
        kind: Kind::Value {
            placeholder: "HOST:PORT",
            default: DefaultValue::None,
            required: Some(Required {
                what: "data listener",
                unless: Some("bind-unix"),
            }),
            check: None,
            store: |d, v| {
                listen_address(v)?;
                d.config.bind = v.to_string();
                Ok(())
            },
        },
        help: "data listener; \":443\" listens on all interfaces (required)",
    },
    Flag {
        names: &["c", "controller"],
        kind: Kind::Value {
            placeholder: "HOST:PORT",
            default: DefaultValue::None,
            required: Some(Required {
                what: "controller listener",
                unless: None,
            }),
            check: None,
            store: |d, v| {
                listen_address(v)?;
                d.config.controller = v.to_string();
                Ok(())
            },
        },
        help: "controller listener: the panel POSTs JSON commands here (required)",
    },
    Flag {
        names: &["cert"],
        kind: Kind::Value {
            placeholder: "PATH",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                d.cert = non_empty(v);
                Ok(())
            },
        },
        help: "PEM certificate chain: listen TLS with it (needs -key)",
    },
    Flag {
        names: &["key"],
        kind: Kind::Value {
            placeholder: "PATH",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                d.key = non_empty(v);
                Ok(())
            },
        },
        help: "PEM private key of -cert (needs -cert)",
    },
    Flag {
        names: &["force-tls"],
        kind: Kind::Bool {
            store: |d, on| d.force_tls = on,
        },
        help: "without -cert/-key: listen TLS with a generated self-signed certificate",
    },
    Flag {
        names: &["n", "name"],
        kind: Kind::Value {
            placeholder: "NAME",
            default: DefaultValue::Text(DEFAULT_SERVER_NAME),
            required: None,
            check: None,
            store: |d, v| {
                d.name = v.to_string();
                Ok(())
            },
        },
        help: "server name in the self-signed certificate (default \"{default}\")",
    },
    Flag {
        names: &["mux"],
        kind: Kind::Bool {
            store: |d, on| d.config.mux = on,
        },
        help: "default to smux multiplexing for clients that do not say",
    },
    Flag {
        names: &["timeout"],
        kind: Kind::Value {
            placeholder: "DURATION",
            default: DefaultValue::Text("1m0s"),
            required: None,
            check: Some(check_duration),
            store: |d, v| {
                d.config.timeout = positive_duration(v)?;
                Ok(())
            },
        },
        help: "idle timeout of a tunnel, Go duration: 90s, 1m0s, 1h30m, 250ms (default {default})",
    },
    Flag {
        names: &["verbose"],
        kind: Kind::Bool {
            store: |d, on| d.config.verbose = on,
        },
        help: "debug logging",
    },
    Flag {
        names: &["log-format"],
        kind: Kind::Value {
            placeholder: "text|json",
            default: DefaultValue::Text("text"),
            required: None,
            check: None,
            store: |d, v| {
                d.config.log_format = match v {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err("text or json".to_string()),
                };
                Ok(())
            },
        },
        help: "log lines as text, or one JSON object a line (time, level, side, user,\n\
               client, event) for log shippers (default {default}); under systemd the\n\
               text has no timestamp of its own: the journal adds one",
    },
    Flag {
        names: &["workers"],
        kind: Kind::Value {
            placeholder: "N",
            default: DefaultValue::Computed(|| default_workers().to_string()),
            required: None,
            check: Some(check_count),
            store: |d, v| {
                let n = count(v)?;
                if !(1..=MAX_WORKERS).contains(&n) {
                    return Err(format!("must be between 1 and {MAX_WORKERS}"));
                }
                d.config.workers = n;
                Ok(())
            },
        },
        // tests::usage_states_the_worker_limit keeps "1024" equal to MAX_WORKERS.
        help: "worker threads, one per core, 1 to 1024 (default {default}: the CPUs this process \
               may run on)",
    },
    Flag {
        names: &["max-conns"],
        kind: Kind::Value {
            placeholder: "N",
            default: DefaultValue::Text("0"),
            required: None,
            check: Some(check_count),
            store: |d, v| {
                d.config.max_conns = count(v)?;
                Ok(())
            },
        },
        help: "most concurrent data-port connections; more are closed at once\n\
               (default {default}: derived from the open-file limit)",
    },
    Flag {
        names: &["head-timeout"],
        kind: Kind::Value {
            placeholder: "DURATION",
            default: DefaultValue::Text("10s"),
            required: None,
            check: Some(check_duration),
            store: |d, v| {
                d.config.head_timeout = positive_duration(v)?;
                Ok(())
            },
        },
        help: "time for a request head to arrive, TLS handshake included (default {default})",
    },
    Flag {
        names: &["secret"],
        kind: Kind::Value {
            placeholder: "SECRET",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                d.secret = Some(v.to_string());
                Ok(())
            },
        },
        help: "the controller requires \"Authorization: Bearer SECRET\" on every request",
    },
    Flag {
        names: &["secret-file"],
        kind: Kind::Value {
            placeholder: "PATH",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                d.secret_file = Some(v.to_string());
                Ok(())
            },
        },
        help: "as -secret, read from a file (surrounding white space ignored)",
    },
    Flag {
        names: &["state"],
        kind: Kind::Value {
            placeholder: "PATH",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                d.config.state = non_empty(v).map(PathBuf::from);
                Ok(())
            },
        },
        help: "keep users in this file across restarts (every change is on disk\n\
               before the controller replies)",
    },
    Flag {
        names: &["metrics-per-user"],
        kind: Kind::Bool {
            store: |d, on| d.config.metrics_per_user = on,
        },
        help: "per-user series on the controller's GET /metrics",
    },
    Flag {
        names: &["fallback"],
        kind: Kind::Value {
            placeholder: "HOST:PORT",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                if !v.is_empty() {
                    let (host, port) = split_host_port(v)?;
                    if host.is_empty() {
                        return Err("missing host".to_string());
                    }
                    parse_port(port)?;
                }
                d.config.fallback = non_empty(v);
                Ok(())
            },
        },
        help: "hand every connection that is not a valid upgrade to a known path, with\n\
               the bytes already read, to this web server (nginx, Caddy, a static site)",
    },
    Flag {
        names: &["cert-check"],
        kind: Kind::Value {
            placeholder: "DURATION",
            default: DefaultValue::Text("10s"),
            required: None,
            check: Some(check_duration),
            store: |d, v| {
                d.config.cert_check = nonnegative_duration(v)?;
                Ok(())
            },
        },
        help: "how often to check -cert/-key for changes and reload them; 0 = only on\n\
               SIGHUP (default {default})",
    },
    Flag {
        names: &["proxy-protocol"],
        kind: Kind::Bool {
            store: |d, on| d.config.proxy_protocol = on,
        },
        help: "every data connection starts with a PROXY protocol v1 or v2 header (behind\n\
               HAProxy or a cloud load balancer); connections without one are closed",
    },
    Flag {
        names: &["bind-unix"],
        kind: Kind::Value {
            placeholder: "PATH",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                d.config.bind_unix = non_empty(v);
                Ok(())
            },
        },
        help: "also listen on this unix socket (@name: abstract namespace); with it, -b\n\
               may be left out",
    },
    Flag {
        names: &["fast-open"],
        kind: Kind::Bool {
            store: |d, on| d.config.fast_open = on,
        },
        help: "TCP Fast Open on the data listener",
    },
    Flag {
        names: &["controller-conns"],
        kind: Kind::Value {
            placeholder: "N",
            default: DefaultValue::Text("256"),
            required: None,
            check: Some(check_count),
            store: |d, v| {
                d.config.controller_conns = match v.parse::<usize>() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err("at least 1".to_string()),
                };
                Ok(())
            },
        },
        help: "most concurrent controller connections; more are closed at once (default {default})",
    },
    Flag {
        names: &["driver"],
        kind: Kind::Value {
            placeholder: "io_uring|epoll",
            default: DefaultValue::Text("io_uring"),
            required: None,
            check: None,
            store: |d, v| {
                d.config.io_uring = match v {
                    "epoll" => false,
                    "io_uring" | "uring" => true,
                    _ => return Err("epoll or io_uring".to_string()),
                };
                Ok(())
            },
        },
        help: "the workers' I/O driver; io_uring falls back to epoll where the kernel\n\
               forbids it (default {default}: far lower latency beside heavy traffic,\n\
               epoll a little less CPU per byte; see BENCHMARKS.md)",
    },
    Flag {
        names: &["grace"],
        kind: Kind::Value {
            placeholder: "DURATION",
            default: DefaultValue::Text("30s"),
            required: None,
            check: Some(check_duration),
            store: |d, v| {
                d.config.grace = nonnegative_duration(v)?;
                Ok(())
            },
        },
        help: "after SIGTERM or SIGINT, how long open tunnels may finish (default {default});\n\
               a second signal exits at once",
    },
    Flag {
        names: &["panel"],
        kind: Kind::Value {
            placeholder: "URL",
            default: DefaultValue::None,
            required: None,
            check: Some(check_panel_url),
            store: |d, v| {
                check_panel_url(v)?;
                d.panel.url = Some(v.trim_end_matches('/').to_string());
                Ok(())
            },
        },
        help: "keep the users in sync with this panel (http:// or https://): pull users,\n\
               push traffic and client addresses every -panel-interval; the panel is then\n\
               the source of truth and the controller refuses changes to users",
    },
    Flag {
        names: &["panel-kind"],
        kind: Kind::Value {
            placeholder: "mtt|uniproxy",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                d.panel.kind = Some(match v {
                    "mtt" => PanelKind::Mtt,
                    "uniproxy" => PanelKind::UniProxy,
                    _ => return Err("mtt or uniproxy".to_string()),
                });
                Ok(())
            },
        },
        help: "the panel's protocol: mtt (ours, see README) or uniproxy (V2board,\n\
               Xboard and their forks) (default mtt)",
    },
    Flag {
        names: &["panel-token"],
        kind: Kind::Value {
            placeholder: "TOKEN",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                d.panel.token = Some(v.to_string());
                Ok(())
            },
        },
        help: "the node's credential: mtt sends \"Authorization: Bearer TOKEN\", uniproxy\n\
               the query parameter token (the panel's server token)",
    },
    Flag {
        names: &["panel-token-file"],
        kind: Kind::Value {
            placeholder: "PATH",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                d.panel.token_file = Some(v.to_string());
                Ok(())
            },
        },
        help: "as -panel-token, read from a file (surrounding white space ignored)",
    },
    Flag {
        names: &["node-id"],
        kind: Kind::Value {
            placeholder: "ID",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                check_token(v)?;
                d.panel.node_id = Some(v.to_string());
                Ok(())
            },
        },
        help: "this node's id in the panel (required by uniproxy)",
    },
    Flag {
        names: &["node-type"],
        kind: Kind::Value {
            placeholder: "TYPE",
            default: DefaultValue::Text("shadowsocks"),
            required: None,
            check: None,
            store: |d, v| {
                check_token(v)?;
                d.panel.node_type = v.to_string();
                Ok(())
            },
        },
        help: "uniproxy's node_type: the kind of node the panel lists this one as\n\
               (default {default}: mtt-client is a shadowsocks plugin)",
    },
    Flag {
        names: &["panel-interval"],
        kind: Kind::Value {
            placeholder: "DURATION",
            default: DefaultValue::Text("60s"),
            required: None,
            check: Some(check_duration),
            store: |d, v| {
                let interval = positive_duration(v)?;
                if interval < Duration::from_millis(100) {
                    return Err("at least 100ms".to_string());
                }
                d.panel.interval = interval;
                Ok(())
            },
        },
        help: "how often to pull users and push traffic; failures retry sooner, with\n\
               backoff from 1s (default {default}; a uniproxy panel's config overrides it)",
    },
    Flag {
        names: &["panel-path"],
        kind: Kind::Value {
            placeholder: "TEMPLATE",
            default: DefaultValue::Text("/{uuid}"),
            required: None,
            check: None,
            store: |d, v| {
                if !v.starts_with('/') {
                    return Err("must start with /".to_string());
                }
                d.panel.path_template = v.to_string();
                Ok(())
            },
        },
        help: "uniproxy: a user's path, {uuid} and {id} replaced (default {default})",
    },
    Flag {
        names: &["panel-dst"],
        kind: Kind::Value {
            placeholder: "HOST:PORT",
            default: DefaultValue::None,
            required: None,
            check: None,
            store: |d, v| {
                let (host, port) = split_host_port(v)?;
                if host.is_empty() {
                    return Err("missing host".to_string());
                }
                parse_port(port)?;
                d.panel.dst = Some(v.to_string());
                Ok(())
            },
        },
        help: "uniproxy: the destination of every user (required by uniproxy)",
    },
    Flag {
        names: &["panel-max-remove"],
        kind: Kind::Value {
            placeholder: "SHARE",
            default: DefaultValue::Text("0.5"),
            required: None,
            check: Some(|v| share_permille(v).map(|_| ())),
            store: |d, v| {
                d.panel.max_remove_permille = share_permille(v)?;
                Ok(())
            },
        },
        help: "refuse a pulled user list that would remove more than this share of the\n\
               users at once (more than 10 users); 1 allows anything (default {default})",
    },
];

/// A panel's base URL: http or https, with a host.
fn check_panel_url(v: &str) -> Result<(), String> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("missing host".to_string());
    }
    Ok(())
}

/// A share from 0 to 1 (`0.5`, `1`), in thousandths.
/// A node's id or type as panels spell them: letters, digits, `-` and `_`, not empty.
fn check_token(v: &str) -> Result<(), String> {
    if v.is_empty()
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("letters, digits, - and _ only".to_string());
    }
    Ok(())
}

fn share_permille(v: &str) -> Result<u32, String> {
    match v.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok((share * 1000.0).round() as u32),
        _ => Err("a share from 0 to 1, e.g. 0.5".to_string()),
    }
}

fn check_duration(s: &str) -> Result<(), String> {
    parse_signed_duration(s).map(|_| ())
}

/// A whole number (workers, connection caps): its range is checked when it is stored.
fn check_count(s: &str) -> Result<(), String> {
    count(s).map(|_| ())
}

fn count(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| "parse error".to_string())
}

/// An empty value means "not set", as in the Go server.
fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

/// `HOST:PORT` as Go's `net.Listen` takes it; the host is resolved only when binding.
fn listen_address(v: &str) -> Result<(), String> {
    split_host_port(v).and_then(|(_, port)| parse_port(port).map(|_| ()))
}

/// A duration that must be greater than zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match parse_signed_duration(s)? {
        (false, d) if !d.is_zero() => Ok(d),
        _ => Err("must be greater than zero".to_string()),
    }
}

/// A duration where a negative value means zero (off).
fn nonnegative_duration(s: &str) -> Result<Duration, String> {
    let (negative, d) = parse_signed_duration(s)?;
    Ok(if negative { Duration::ZERO } else { d })
}

/// The last setting of one flag.
#[derive(Clone, Debug)]
pub(super) struct Setting {
    /// The value; for booleans "true" or "false".
    pub(super) value: String,
    /// How the user wrote the flag, Go style (`-bind`), for messages.
    pub(super) spelled: String,
}

/// What argv set: the last setting of each flag, by position in [`FLAGS`].
#[derive(Debug)]
pub(super) struct Given(Vec<Option<Setting>>);

impl Given {
    /// The setting of the flag named `name`, if the user gave it.
    pub(super) fn get(&self, name: &str) -> Option<&Setting> {
        let index = FLAGS.iter().position(|f| f.names.contains(&name))?;
        self.0[index].as_ref()
    }

    /// Each flag with its setting, in table order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&'static Flag, Option<&Setting>)> {
        FLAGS.iter().zip(self.0.iter().map(Option::as_ref))
    }
}

impl Flag {
    /// How the user spelled the flag, or its first name.
    pub(super) fn spelled(&self, setting: Option<&Setting>) -> String {
        match setting {
            Some(setting) => setting.spelled.clone(),
            None => format!("-{}", self.names[0]),
        }
    }

    /// Puts this flag's setting (or default) into `draft`; `given` is all of argv, for a
    /// flag whose requirement depends on another.
    pub(super) fn store(
        &self,
        setting: Option<&Setting>,
        given: &Given,
        draft: &mut Draft,
    ) -> Result<(), String> {
        match &self.kind {
            Kind::Bool { store } => {
                store(draft, setting.is_some_and(|s| s.value == "true"));
                Ok(())
            }
            Kind::Value {
                placeholder,
                default,
                required,
                store,
                ..
            } => {
                let flag = self.spelled(setting);
                if let Some(required) = required {
                    // An explicit empty value (`-b=`) is never excused.
                    let excused = setting.is_none()
                        && required
                            .unless
                            .and_then(|other| given.get(other))
                            .is_some_and(|other| !other.value.is_empty());
                    if setting.is_none_or(|s| s.value.is_empty()) && !excused {
                        return Err(format!(
                            "flag {flag} is required ({}, {placeholder})",
                            required.what
                        ));
                    }
                }
                let Some(value) = setting.map(|s| s.value.clone()).or_else(|| default.text())
                else {
                    return Ok(());
                };
                store(draft, &value)
                    .map_err(|e| format!("invalid value {value:?} for flag {flag}: {e}"))
            }
        }
    }
}

/// Outcome of reading argv.
#[derive(Debug)]
pub(super) enum Translation {
    /// `-h` / `-help` came before any error.
    Help,
    Flags(Given),
}

/// Go's strconv.ParseBool.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// How a reading of argv stopped early: `-h` / `-help`, or the first error, as Go's
/// `flag.FlagSet.Parse` would.
#[derive(Debug)]
pub(super) enum Stop {
    Help,
    Error(String),
}

/// What the Go-syntax pass read: the flags, and where they ended.
#[derive(Debug)]
pub(super) struct Reading<'a> {
    /// The last setting of each flag, by position in [`FLAGS`].
    pub(super) settings: Vec<Option<Setting>>,
    /// The arguments after the flags, Go's `FlagSet.Args()`.
    pub(super) rest: &'a [String],
    /// The flags ended with `--` (rather than at a non-flag argument or the end).
    pub(super) after_dashes: bool,
    /// The last flag read was boolean and written bare (`-mux`), for the `-mux true` hint.
    pub(super) bare_bool: Option<String>,
}

/// Walks the arguments with the rules of Go's `flag.FlagSet.Parse`: first error wins, the
/// last repeat of a flag wins, `-h` asks for help, a value flag takes the next argument
/// whatever it looks like, a boolean flag never does, the flags end at `--` or at the
/// first argument that is not one. With `checks`, each value also passes its flag's
/// [`Check`] when it is read, as Go's `flag.Value.Set` would check it; without, only the
/// syntax is read (booleans still must be Go booleans: that is the syntax of a bool flag).
pub(super) fn read(args: &[String], checks: bool) -> Result<Reading<'_>, Stop> {
    let mut settings: Vec<Option<Setting>> = vec![None; FLAGS.len()];
    let mut bare_bool: Option<String> = None;
    let mut rest = args;
    let mut after_dashes = false;
    while let Some((arg, tail)) = rest.split_first() {
        if arg.len() < 2 || !arg.starts_with('-') {
            break;
        }
        rest = tail;
        bare_bool = None;
        let (dashes, body) = match arg.strip_prefix("--") {
            Some("") => {
                after_dashes = true;
                break;
            }
            Some(body) => ("--", body),
            None => ("-", &arg[1..]),
        };
        if body.starts_with('-') || body.starts_with('=') {
            return Err(Stop::Error(format!("bad flag syntax: {arg}")));
        }
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let spelled = format!("-{name}");
        let Some(index) = FLAGS.iter().position(|f| f.names.contains(&name)) else {
            if name == "h" || name == "help" {
                return Err(Stop::Help);
            }
            return Err(Stop::Error(format!(
                "flag provided but not defined: {dashes}{name}"
            )));
        };
        let value = match &FLAGS[index].kind {
            Kind::Bool { .. } => {
                let on = match inline {
                    Some(v) => parse_go_bool(v).ok_or_else(|| {
                        Stop::Error(format!(
                            "invalid boolean value {v:?} for {spelled}: parse error"
                        ))
                    })?,
                    None => {
                        bare_bool = Some(spelled.clone());
                        true
                    }
                };
                on.to_string()
            }
            Kind::Value { check, .. } => {
                let value = match inline {
                    Some(v) => v.to_string(),
                    None => {
                        // Go takes the next argument whatever it looks like.
                        let (next, tail) = rest.split_first().ok_or_else(|| {
                            Stop::Error(format!("flag needs an argument: {spelled}"))
                        })?;
                        rest = tail;
                        next.clone()
                    }
                };
                if let (true, Some(check)) = (checks, check) {
                    check(&value).map_err(|e| {
                        Stop::Error(format!("invalid value {value:?} for flag {spelled}: {e}"))
                    })?;
                }
                value
            }
        };
        settings[index] = Some(Setting { value, spelled });
    }
    Ok(Reading {
        settings,
        rest,
        after_dashes,
        bare_bool,
    })
}

/// Reads argv as the server takes it: [`read`] with the values' checks, and no arguments
/// after the flags (the server takes none).
pub(super) fn translate(args: &[String]) -> Result<Translation, String> {
    let reading = match read(args, true) {
        Ok(reading) => reading,
        Err(Stop::Help) => return Ok(Translation::Help),
        Err(Stop::Error(msg)) => return Err(msg),
    };
    if let Some(arg) = reading.rest.first() {
        if reading.after_dashes {
            // Go would hand what follows "--" to the program, which takes nothing.
            return Err(format!(
                "unexpected argument {arg:?} after \"--\": no positional arguments are accepted"
            ));
        }
        let hint = match &reading.bare_bool {
            Some(flag) if parse_go_bool(arg).is_some() => {
                format!(" (a boolean flag takes its value after '=': write {flag}={arg})")
            }
            _ => String::new(),
        };
        return Err(format!(
            "unexpected argument {arg:?}: no positional arguments are accepted{hint}"
        ));
    }
    Ok(Translation::Flags(Given(reading.settings)))
}
