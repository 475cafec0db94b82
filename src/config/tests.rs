//! Tests of the command line: every Go spelling of every kind of flag, the errors and their
//! order, the usage text, Go durations and listen addresses.

use super::duration::parse_signed_duration;
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
fn translation_keeps_last_value_and_spelling() {
    let Ok(Translation::Flags(given)) = flags::translate(&args(&[
        "-b=:0",
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
    let value = |name| given.get(name).map(|s| s.value.as_str());
    assert_eq!(value("bind"), Some(":1"));
    assert_eq!(value("b"), Some(":1"));
    assert_eq!(value("controller"), Some(":2"));
    assert_eq!(value("mux"), Some("false"));
    assert_eq!(value("verbose"), Some("true"));
    assert_eq!(value("name"), Some("x"));
    assert_eq!(value("timeout"), None);
    let spelled = |name| {
        let (flag, setting) = given
            .iter()
            .find(|(flag, _)| flag.names.contains(&name))
            .expect("a flag of the table");
        flag.spelled(setting)
    };
    assert_eq!(spelled("controller"), "-c");
    assert_eq!(spelled("bind"), "-b");
    assert_eq!(spelled("timeout"), "-timeout");
}

#[test]
fn flag_table_is_consistent() {
    let mut seen = std::collections::HashSet::new();
    for flag in flags::FLAGS {
        for name in flag.names {
            assert!(seen.insert(*name), "-{name} is in the table twice");
            assert!(!["h", "help"].contains(name), "-{name} is the help flag");
        }
        if let flags::Kind::Value {
            default, required, ..
        } = &flag.kind
        {
            let unless = required.as_ref().and_then(|r| r.unless);
            if let Some(other) = unless {
                let known = flags::FLAGS.iter().any(|f| f.names.contains(&other));
                assert!(known, "-{}: unless -{other} is no flag", flag.names[0]);
            }
            assert_eq!(
                flag.help.contains("{default}"),
                default.text().is_some(),
                "-{}: the help shows the default exactly when there is one",
                flag.names[0]
            );
        } else {
            assert!(!flag.help.contains("{default}"), "-{}", flag.names[0]);
        }
    }
}

#[test]
fn usage_states_the_worker_limit() {
    let text = usage::usage("mtt-mu-server");
    assert!(
        text.contains(&format!("1 to {MAX_WORKERS} (default ")),
        "{text}"
    );
    let workers = format!("(default {}: the CPUs", default_workers());
    assert!(text.contains(&workers), "{text}");
}

/// The Go-syntax pass alone (what tests/it/goflag.rs compares with Go's `flag` package): the
/// arguments after the flags are returned, not refused; values are not checked.
#[test]
fn go_syntax_pass_returns_the_rest_and_checks_no_values() {
    let row = |name: &str| {
        flag_syntax()
            .iter()
            .position(|(names, _)| names.contains(&name))
            .unwrap()
    };
    let read = |list: &[&str]| read_go_syntax(&args(list));
    let ok = read(&["-bind", ":1", "--b=:2", "-mux", "x", "-c", ":3"]).unwrap();
    assert_eq!(ok.values[row("b")].as_deref(), Some(":2"));
    assert_eq!(ok.values[row("mux")].as_deref(), Some("true"));
    assert_eq!(ok.values[row("c")], None, "flags end at the first non-flag");
    assert_eq!(ok.rest, args(&["x", "-c", ":3"]));
    let ok = read(&["-mux=0", "--", "-b", ":1"]).unwrap();
    assert_eq!(ok.values[row("mux")].as_deref(), Some("false"));
    assert_eq!(ok.rest, args(&["-b", ":1"]));
    // Values are taken as written: -timeout and -workers are checked by parse_args only.
    let ok = read(&["-timeout", "soon", "-workers=many"]).unwrap();
    assert_eq!(ok.values[row("timeout")].as_deref(), Some("soon"));
    assert_eq!(ok.values[row("workers")].as_deref(), Some("many"));
    assert_usage(&with_bc(&["-timeout", "soon"]), &["-timeout", "soon"]);
    // Booleans still must be Go booleans: that is a bool flag's syntax.
    assert!(matches!(
        read(&["-mux=yes"]),
        Err(GoSyntaxError::Invalid(_))
    ));
    assert!(matches!(
        read(&["-x", "-h"]),
        Err(GoSyntaxError::Invalid(_))
    ));
    assert_eq!(
        read(&["-b", ":1", "--help", "-x"]),
        Err(GoSyntaxError::Help)
    );
    assert!(flag_syntax()
        .iter()
        .any(|&(names, is_bool)| names == ["mux"] && is_bool));
    assert!(flag_syntax()
        .iter()
        .any(|&(names, is_bool)| names == ["b", "bind"] && !is_bool));
}

#[test]
fn panel_flags() {
    assert_eq!(ok(&with_bc(&[])).panel, None);
    let c = ok(&with_bc(&[
        "-panel",
        "https://panel.example/api/",
        "-panel-token",
        "t",
    ]));
    let panel = c.panel.unwrap();
    assert_eq!(panel.url, "https://panel.example/api");
    assert_eq!(panel.kind, PanelKind::Mtt);
    assert_eq!(panel.token, Some(Secret::Value("t".into())));
    assert_eq!(panel.interval, Duration::from_secs(60));
    assert_eq!(panel.node_type, "shadowsocks");
    assert_eq!(panel.path_template, "/{uuid}");
    assert_eq!(panel.max_remove_permille, 500);
    let c = ok(&with_bc(&[
        "-panel=http://127.0.0.1:9/",
        "-panel-kind=uniproxy",
        "-panel-token-file=/etc/token",
        "-node-id=12",
        "-panel-dst=127.0.0.1:8388",
        "-panel-interval=500ms",
        "-panel-max-remove=1",
        "-panel-path=/ws/{id}",
    ]));
    let panel = c.panel.unwrap();
    assert_eq!(panel.kind, PanelKind::UniProxy);
    assert_eq!(panel.token, Some(Secret::File("/etc/token".into())));
    assert_eq!(panel.node_id.as_deref(), Some("12"));
    assert_eq!(panel.interval, Duration::from_millis(500));
    assert_eq!(panel.max_remove_permille, 1000);
}

#[test]
fn panel_flag_errors() {
    assert_usage(&with_bc(&["-panel", "ftp://x"]), &["-panel", "http://"]);
    assert_usage(
        &with_bc(&["-panel-token", "t"]),
        &["-panel-token needs -panel"],
    );
    assert_usage(&with_bc(&["-node-id", "3"]), &["-node-id needs -panel"]);
    assert_usage(
        &with_bc(&["-panel", "http://p", "-panel-kind", "uniproxy"]),
        &["uniproxy needs", "-panel-token"],
    );
    assert_usage(
        &with_bc(&[
            "-panel",
            "http://p",
            "-panel-kind",
            "uniproxy",
            "-panel-token",
            "t",
            "-node-id",
            "1",
        ]),
        &["-panel-dst"],
    );
    assert_usage(
        &with_bc(&[
            "-panel",
            "http://p",
            "-panel-kind",
            "uniproxy",
            "-panel-token",
            "t",
            "-node-id",
            "1",
            "-panel-dst",
            "h:1",
            "-panel-path",
            "/fixed",
        ]),
        &["-panel-path", "{uuid}"],
    );
    assert_usage(
        &with_bc(&["-panel", "http://p", "-panel-kind", "xboard"]),
        &["mtt or uniproxy"],
    );
    assert_usage(
        &with_bc(&["-panel", "http://p", "-panel-max-remove", "1.5"]),
        &["share"],
    );
    assert_usage(
        &with_bc(&["-panel", "http://p", "-panel-interval", "10ms"]),
        &["100ms"],
    );
    assert_usage(
        &with_bc(&[
            "-panel",
            "http://p",
            "-panel-token",
            "a",
            "-panel-token-file",
            "f",
        ]),
        &["cannot be given together"],
    );
}
