//! The controller's commands (the upstream controller's opts 1, 2, 3 and 9, and those this
//! server adds): parsing a request body and validating it whole, so that a command either
//! applies entirely or not at all. Pure: no state, no IO.
//!
//! | opt | command | args_bunch |
//! |---|---|---|
//! | 1 | add | required, each `path` and `dst`, optional limits |
//! | 2 | del; `"kick": true` also closes their tunnels | required, each `path` |
//! | 3 | reset | ignored |
//! | 4 | sync: the whole desired user set (may be empty); `"kick"` as del | required, each `path` and `dst`, optional limits |
//! | 5 | stats: per-user counters; `"reset": true` restarts them | optional, each `path` |
//! | 6 | kick: close the open tunnels of these users | required, each `path` |
//! | 7 | billing report: counts since the last acknowledged report | ignored |
//! | 8 | acknowledge a billing report: `"report_id"` | ignored |
//! | 9 | ping | ignored |
//!
//! The limits of an add or sync entry (`speed_limit`, `device_limit`, `conn_limit`,
//! `quota`, `expire`) are integers, 0 or absent for none; a negative one is a command error.

use std::borrow::Cow;

use serde::Deserialize;

use crate::control::policy::Limits;
use crate::control::routes::Route;

/// What the panel sends. Every field optional so that a missing field is a command error
/// (res 2, HTTP 200), while a field of the wrong JSON type is a request error (400).
#[derive(Debug, Deserialize)]
struct CommandBody<'a> {
    opt: Option<i64>,
    #[serde(borrow)]
    args_bunch: Option<Vec<UserArg<'a>>>,
    /// For stats: reset what was returned.
    reset: Option<bool>,
    /// For del and sync: also close the open tunnels of the users removed.
    kick: Option<bool>,
    /// For the billing acknowledgement: the report acknowledged.
    report_id: Option<String>,
}

/// One entry of `args_bunch`. Deserialized by hand so that only a JSON object is one:
/// serde's derived code would also take `["/a","h:1"]` field by field. The strings borrow
/// from the body unless they hold escapes: a user's only allocation is then its
/// [`Route`], which keeps a million users' blocks from being spread among freed strings.
#[derive(Debug, Default)]
struct UserArg<'a> {
    path: Option<Cow<'a, str>>,
    dst: Option<Cow<'a, str>>,
    /// The limits, as sent (validated as non-negative with the rest of the command).
    limits: [Option<i64>; LIMIT_FIELDS.len()],
}

/// The limit fields of an entry, in the order of [`UserArg::limits`].
const LIMIT_FIELDS: [&str; 5] = [
    "speed_limit",
    "device_limit",
    "conn_limit",
    "quota",
    "expire",
];

/// A JSON string borrowed from the body where it can be (no escapes), owned where it must
/// be. (serde's own `Cow<str>` always allocates.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<Text<'a>>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visit(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for UserArg<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry<'a>(std::marker::PhantomData<UserArg<'a>>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Entry<'a> {
            type Value = UserArg<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object with \"path\" and \"dst\"")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UserArg<'a>, A::Error> {
                let mut entry = UserArg::default();
                while let Some(Text(key)) = map.next_key::<Text<'a>>()? {
                    if let Some(i) = LIMIT_FIELDS.iter().position(|f| *f == key) {
                        if entry.limits[i].is_some() {
                            return Err(serde::de::Error::custom(format!(
                                "duplicate field `{key}`"
                            )));
                        }
                        entry.limits[i] = map.next_value::<Option<i64>>()?;
                        continue;
                    }
                    let slot = match &*key {
                        "path" => &mut entry.path,
                        "dst" => &mut entry.dst,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    *slot = map.next_value::<Option<Text<'a>>>()?.map(|text| text.0);
                }
                Ok(entry)
            }
        }
        deserializer.deserialize_map(Entry(std::marker::PhantomData))
    }
}

/// One user of an add or sync: its route (without a policy yet: the controller attaches
/// the shared one) and its limits.
#[derive(Debug, PartialEq)]
pub struct NewUser {
    pub route: Route,
    pub limits: Limits,
}

/// A command that passed validation, ready to apply as one batch.
#[derive(Debug, PartialEq)]
pub enum Command {
    Add(Vec<NewUser>),
    /// Delete these users; with `kick`, close their open tunnels in the same step.
    Del {
        paths: Vec<String>,
        kick: bool,
    },
    Reset,
    Ping,
    /// Make the user set exactly this; with `kick`, close the removed users' tunnels.
    Sync {
        users: Vec<NewUser>,
        kick: bool,
    },
    /// Report counters of these users (all when `None`), resetting them if asked.
    Stats {
        paths: Option<Vec<String>>,
        reset: bool,
    },
    /// Close the open tunnels of these users.
    Kick(Vec<String>),
    /// The billing report: counts since the last acknowledged report.
    Report,
    /// Acknowledge the billing report with this id (and every one before it).
    Ack(String),
}

/// Why a request produced no command.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The body is not one JSON object of the right shape: HTTP 400.
    BadRequest(String),
    /// The JSON is fine but the command is not: HTTP 200, res 2.
    Invalid(String),
}

/// Parses and validates a request body into a command, all or nothing.
pub fn parse_command(body: &[u8]) -> Result<Command, CommandError> {
    // serde would read a JSON array into a struct field by field: insist on an object.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(CommandError::BadRequest(
            "body is not a JSON object".to_string(),
        ));
    }
    let parsed: CommandBody = serde_json::from_slice(body)
        .map_err(|e| CommandError::BadRequest(format!("bad json: {e}")))?;
    let invalid = |s: String| Err(CommandError::Invalid(s));
    match parsed.opt {
        Some(1) => match parsed.args_bunch {
            Some(args) if !args.is_empty() => Ok(Command::Add(users("add", args)?)),
            _ => invalid("add: args_bunch is missing or empty".into()),
        },
        Some(2) => match parsed.args_bunch {
            Some(args) if !args.is_empty() => Ok(Command::Del {
                paths: paths(args)?,
                kick: parsed.kick.unwrap_or(false),
            }),
            _ => invalid("del: args_bunch is missing or empty".into()),
        },
        Some(3) => Ok(Command::Reset),
        Some(4) => match parsed.args_bunch {
            // An empty set is a valid sync: the panel has no users.
            Some(args) => Ok(Command::Sync {
                users: users("sync", args)?,
                kick: parsed.kick.unwrap_or(false),
            }),
            None => invalid("sync: args_bunch is missing".into()),
        },
        Some(5) => Ok(Command::Stats {
            paths: parsed.args_bunch.map(paths).transpose()?,
            reset: parsed.reset.unwrap_or(false),
        }),
        Some(6) => match parsed.args_bunch {
            Some(args) if !args.is_empty() => Ok(Command::Kick(paths(args)?)),
            _ => invalid("kick: args_bunch is missing or empty".into()),
        },
        Some(7) => Ok(Command::Report),
        Some(8) => match parsed.report_id {
            Some(id) if !id.is_empty() => Ok(Command::Ack(id)),
            _ => invalid("ack: report_id is missing".into()),
        },
        Some(9) => Ok(Command::Ping),
        _ => invalid("invalid opt".into()),
    }
}

/// A panel's user list, `{"args_bunch":[...]}` (a full sync's body without `opt`),
/// validated whole as a full sync is: any bad entry refuses the whole list.
pub(crate) fn parse_user_list(body: &[u8]) -> Result<Vec<NewUser>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err("the user list is not a JSON object".to_string());
    }
    let parsed: CommandBody = serde_json::from_slice(body).map_err(|e| format!("bad json: {e}"))?;
    let args = parsed.args_bunch.ok_or("args_bunch is missing")?;
    users("users", args).map_err(|e| match e {
        CommandError::Invalid(why) | CommandError::BadRequest(why) => why,
    })
}

/// One user made from parts (a UniProxy user: a path from the template, the node's
/// destination), held to the rules of an add entry.
pub(crate) fn new_user(path: &str, dst: &str, limits: Limits) -> Result<NewUser, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with /"));
    }
    if !valid_dst(dst) {
        return Err(format!("dst {dst:?} is not HOST:PORT"));
    }
    Ok(NewUser {
        route: Route::new(path, dst),
        limits,
    })
}

/// Each entry's `path`, `dst` and limits, validated.
fn users(what: &str, args: Vec<UserArg>) -> Result<Vec<NewUser>, CommandError> {
    let mut users = Vec::with_capacity(args.len());
    for (i, arg) in args.into_iter().enumerate() {
        let path = check_path(i, arg.path).map_err(CommandError::Invalid)?;
        let Some(dst) = arg.dst else {
            return Err(CommandError::Invalid(format!(
                "{what}: args_bunch[{i}] ({path}): dst is missing"
            )));
        };
        if !valid_dst(&dst) {
            return Err(CommandError::Invalid(format!(
                "{what}: args_bunch[{i}] ({path}): dst {dst:?} is not HOST:PORT"
            )));
        }
        let mut values = [0u64; LIMIT_FIELDS.len()];
        for (field, (value, name)) in values.iter_mut().zip(arg.limits.iter().zip(LIMIT_FIELDS)) {
            let given = value.unwrap_or(0);
            match u64::try_from(given) {
                Ok(v) => *field = v,
                Err(_) => {
                    return Err(CommandError::Invalid(format!(
                        "{what}: args_bunch[{i}] ({path}): {name} {given} is negative"
                    )))
                }
            }
        }
        let [speed_limit, device_limit, conn_limit, quota, expire] = values;
        users.push(NewUser {
            route: Route::new(&path, &dst),
            limits: Limits {
                speed_limit,
                device_limit,
                conn_limit,
                quota,
                expire,
            },
        });
    }
    Ok(users)
}

/// Each entry's `path`, validated.
fn paths(args: Vec<UserArg>) -> Result<Vec<String>, CommandError> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| check_path(i, arg.path).map(Cow::into_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CommandError::Invalid)
}

fn check_path(i: usize, path: Option<Cow<str>>) -> Result<Cow<str>, String> {
    match path {
        None => Err(format!("args_bunch[{i}]: path is missing")),
        Some(p) if !p.starts_with('/') => {
            Err(format!("args_bunch[{i}]: path {p:?} does not start with /"))
        }
        Some(p) => Ok(p),
    }
}

/// `HOST:PORT` with a non-zero numeric port and a host that is a name, an IPv4 address or
/// a bracketed IPv6 address.
pub fn valid_dst(dst: &str) -> bool {
    let Some((host, port)) = dst.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && matches!(port.parse::<u16>(), Ok(p) if p != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> CommandError {
        parse_command(body.as_bytes()).unwrap_err()
    }

    fn user(path: &str, dst: &str, limits: Limits) -> NewUser {
        NewUser {
            route: Route::new(path, dst),
            limits,
        }
    }

    #[test]
    fn limits_kick_report_and_ack() {
        let limits = Limits {
            speed_limit: 1,
            device_limit: 2,
            conn_limit: 3,
            quota: 4,
            expire: 5,
        };
        assert_eq!(
            parse_command(
                br#"{"opt":4,"kick":true,"args_bunch":[{"path":"/a","dst":"h:1","speed_limit":1,"device_limit":2,"conn_limit":3,"quota":4,"expire":5},{"path":"/b","dst":"h:2","quota":null,"conn_limit":0}]}"#
            ),
            Ok(Command::Sync {
                users: vec![user("/a", "h:1", limits), user("/b", "h:2", Limits::default())],
                kick: true
            })
        );
        assert_eq!(
            parse_command(br#"{"opt":2,"kick":true,"args_bunch":[{"path":"/a"}]}"#),
            Ok(Command::Del {
                paths: vec!["/a".into()],
                kick: true
            })
        );
        assert_eq!(parse_command(br#"{"opt":7}"#), Ok(Command::Report));
        assert_eq!(
            parse_command(br#"{"opt":8,"report_id":"12"}"#),
            Ok(Command::Ack("12".into()))
        );
        let invalid = [
            r#"{"opt":8}"#,
            r#"{"opt":8,"report_id":""}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h:1","quota":-1}]}"#,
            r#"{"opt":4,"args_bunch":[{"path":"/a","dst":"h:1"},{"path":"/b","dst":"h:1","expire":-5}]}"#,
        ];
        for body in invalid {
            assert!(matches!(err(body), CommandError::Invalid(_)), "{body}");
        }
        let bad = [
            r#"{"opt":8,"report_id":12}"#,
            r#"{"opt":2,"kick":"yes","args_bunch":[{"path":"/a"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h:1","speed_limit":"1"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h:1","quota":1.5}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h:1","quota":1,"quota":2}]}"#,
        ];
        for body in bad {
            assert!(matches!(err(body), CommandError::BadRequest(_)), "{body}");
        }
    }

    #[test]
    fn user_strings_borrow_from_the_body_unless_escaped() {
        let body = br#"{"opt":1,"args_bunch":[{"path":"/plain","dst":"h:1"},{"path":"/esc\u00e9\"q","dst":"h:2"}]}"#;
        let parsed: CommandBody = serde_json::from_slice(body).unwrap();
        let args = parsed.args_bunch.unwrap();
        assert!(matches!(args[0].path, Some(Cow::Borrowed("/plain"))));
        assert!(matches!(args[0].dst, Some(Cow::Borrowed("h:1"))));
        assert!(matches!(args[1].path, Some(Cow::Owned(_))));
        assert_eq!(args[1].path.as_deref(), Some("/esc\u{e9}\"q"));
    }

    #[test]
    fn parses_each_command() {
        assert_eq!(
            parse_command(br#"{"opt":1,"args_bunch":[{"path":"/a","dst":"127.0.0.1:1"},{"path":"/b","dst":"h.example:2"}]}"#),
            Ok(Command::Add(vec![
                user("/a", "127.0.0.1:1", Limits::default()),
                user("/b", "h.example:2", Limits::default())
            ]))
        );
        assert_eq!(
            parse_command(br#"{"opt":2,"args_bunch":[{"path":"/a"}]}"#),
            Ok(Command::Del {
                paths: vec!["/a".into()],
                kick: false
            })
        );
        assert_eq!(parse_command(br#" {"opt":3} "#), Ok(Command::Reset));
        assert_eq!(
            parse_command(br#"{"opt":9,"args_bunch":null}"#),
            Ok(Command::Ping)
        );
    }

    #[test]
    fn parses_the_added_commands() {
        assert_eq!(
            parse_command(br#"{"opt":4,"args_bunch":[]}"#),
            Ok(Command::Sync {
                users: vec![],
                kick: false
            })
        );
        assert_eq!(
            parse_command(br#"{"opt":5,"reset":true}"#),
            Ok(Command::Stats {
                paths: None,
                reset: true
            })
        );
        assert_eq!(
            parse_command(br#"{"opt":5,"args_bunch":[{"path":"/a"}]}"#),
            Ok(Command::Stats {
                paths: Some(vec!["/a".into()]),
                reset: false
            })
        );
        assert_eq!(
            parse_command(br#"{"opt":6,"args_bunch":[{"path":"/a"}]}"#),
            Ok(Command::Kick(vec!["/a".into()]))
        );
        assert!(matches!(
            parse_command(br#"{"opt":6,"args_bunch":[]}"#),
            Err(CommandError::Invalid(_))
        ));
        assert!(matches!(
            parse_command(br#"{"opt":4,"args_bunch":[{"path":"/a","dst":"x"}]}"#),
            Err(CommandError::Invalid(_))
        ));
        assert!(matches!(
            parse_command(br#"{"opt":5,"reset":"yes"}"#),
            Err(CommandError::BadRequest(_))
        ));
    }

    #[test]
    fn command_errors_are_invalid_not_bad_request() {
        for body in [
            "{}",
            r#"{"opt":4}"#,
            r#"{"opt":1}"#,
            r#"{"opt":1,"args_bunch":[]}"#,
            r#"{"opt":1,"args_bunch":[{"dst":"h:1"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/a"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"a","dst":"h:1"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h"}]}"#,
            r#"{"opt":2}"#,
            r#"{"opt":2,"args_bunch":[{}]}"#,
        ] {
            assert!(matches!(err(body), CommandError::Invalid(_)), "{body}");
        }
        assert_eq!(err("{}"), CommandError::Invalid("invalid opt".into()));
    }

    #[test]
    fn shape_errors_are_bad_request() {
        for body in [
            "",
            "null",
            "[1]",
            "{",
            r#"{"opt":"1"}"#,
            r#"{"opt":1.5}"#,
            r#"{"opt":1} x"#,
            r#"{"opt":1,"args_bunch":{}}"#,
            r#"{"opt":1,"args_bunch":[{"path":5,"dst":"h:1"}]}"#,
            r#"{"opt":99999999999999999999999}"#,
            r#"{"opt":1,"opt":2}"#,
            r#"{"opt":1,"args_bunch":[["/a","h:1"]]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/a","path":"/b","dst":"h:1"}]}"#,
            r#"{"opt":1,"args_bunch":[7]}"#,
        ] {
            assert!(matches!(err(body), CommandError::BadRequest(_)), "{body}");
        }
    }

    #[test]
    fn dst_forms() {
        for ok in ["127.0.0.1:80", "[::1]:443", "example.com:65535", "a_b-c:1"] {
            assert!(valid_dst(ok), "{ok}");
        }
        for bad in [
            "", "h", ":80", "h:", "h:0", "h:65536", "h:http", "::1:80", "[::1]", "[x]:1", "h h:1",
            "h:+80",
        ] {
            assert!(!valid_dst(bad), "{bad}");
        }
    }
}
