//! Our argv reader against Go's own `flag` package (the Go server's flag syntax must work
//! unchanged), over about 190,000 generated command lines.
//!
//! `tests/goflag/main.go` defines every name of the flag table
//! ([`config::flag_syntax`]) as a Go flag of its own, `BoolVar` or `StringVar`, and parses
//! each argv with `FlagSet.Parse`; [`config::read_go_syntax`] is the same pass of ours. What
//! is compared, for every argv:
//!
//! - the outcome: help (`flag.ErrHelp`: `-h`, `-help` first), an error (unknown flag,
//!   missing value, a boolean that is not a Go boolean, bad syntax), or parsed; messages
//!   are not compared (ours name `--x` as written, Go always says `-x`);
//! - when parsed: for every row of the table that was set, the last value given to any of
//!   its names (`"true"`/`"false"` for booleans, the raw string for values), and nothing
//!   set beyond; and the arguments after the flags (Go's `FlagSet.Args()`).
//!
//! Not compared: the values' own checks (`-timeout` as a duration, `-workers` as a count),
//! which the server runs at the same point as Go's `Value.Set` but which are not Go's
//! string flags; the required flags and the rules between flags; that the server refuses
//! positional arguments (it does so from what this pass returns as `rest`). Those have
//! their unit tests in `src/config/tests.rs`.
//!
//! The Go program is built with `go build` (GOPATH mode, standard library only) into a
//! temporary folder and run once; the command lines stream through it one JSON line each.
//! Without a `go` command the test passes as skipped, loudly, except under CI, where it
//! fails ([`testkit::programs::tool`]).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Instant;

use mtt_mu_server::config::{self, GoSyntaxError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use testkit::programs::{run, tool};

/// Random command lines, after the exhaustive ones, up to this many inputs in all.
const INPUTS: usize = 190_000;
/// Longest random command line, in tokens.
const MAX_TOKENS: usize = 10;
/// Mismatches printed before failing.
const SHOWN: usize = 10;

// ---------------------------------------------------------------------------------------
// Building and running the Go side

/// Builds `tests/goflag` into a fresh folder under `dir`; `None` when there is no `go`.
fn build_goflag(dir: &Path) -> Option<PathBuf> {
    let go = tool("go", "the Go flag cross-check")?;
    std::fs::create_dir_all(dir).expect("create the Go build folder");
    let bin = dir.join("goflag");
    // As tests/gopeer/build.sh: the build cache must be writable even where HOME is not.
    let cache = std::env::var_os("GOCACHE")
        .map(PathBuf::from)
        .or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
            Some(base.join("go-build"))
        })
        .filter(|c| std::fs::create_dir_all(c).is_ok())
        .unwrap_or_else(|| dir.join("gocache"));
    let (ok, text) = run(Command::new(go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goflag"))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", cache));
    assert!(ok, "building tests/goflag failed:\n{text}");
    Some(bin)
}

/// One answer, of the Go program or ours: `{"help": true}`, `{"err": true}`, or
/// `{"set": {...}, "rest": [...]}`.
#[derive(Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    #[serde(default, skip_serializing_if = "is_false")]
    help: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    err: bool,
    /// The first name of each row set, and its last value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set: Option<BTreeMap<String, String>>,
    /// The arguments after the flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rest: Option<Vec<String>>,
}

fn is_false(b: &bool) -> bool {
    !b
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(self).unwrap())
    }
}

/// Starts the Go program on the command lines: its answers come out of the returned
/// reader, one line each, in order, while a thread writes the input.
fn run_go(
    bin: &Path,
    vocab: &[String],
    inputs: &[Vec<u16>],
) -> (Child, impl BufRead, JoinHandle<std::io::Result<()>>) {
    let flags: Vec<Value> = config::flag_syntax()
        .into_iter()
        .map(|(names, is_bool)| json!({ "names": names, "bool": is_bool }))
        .collect();
    let mut payload = json!({ "name": "mtt-mu-server", "flags": flags }).to_string();
    payload.push('\n');
    let encoded: Vec<String> = vocab
        .iter()
        .map(|t| serde_json::to_string(t).unwrap())
        .collect();
    for argv in inputs {
        payload.push('[');
        for (i, &t) in argv.iter().enumerate() {
            if i > 0 {
                payload.push(',');
            }
            payload.push_str(&encoded[t as usize]);
        }
        payload.push_str("]\n");
    }
    let mut child = Command::new(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the Go program");
    let mut stdin = BufWriter::new(child.stdin.take().unwrap());
    let writer = std::thread::spawn(move || {
        stdin.write_all(payload.as_bytes())?;
        stdin.flush()
    });
    let answers = BufReader::new(child.stdout.take().unwrap());
    (child, answers, writer)
}

/// Our answer; `rows` names each row of the table by its first name.
fn our_answer(rows: &[&str], argv: &[String]) -> Answer {
    match config::read_go_syntax(argv) {
        Err(GoSyntaxError::Help) => Answer {
            help: true,
            ..Answer::default()
        },
        Err(GoSyntaxError::Invalid(_)) => Answer {
            err: true,
            ..Answer::default()
        },
        Ok(read) => Answer {
            set: Some(
                rows.iter()
                    .zip(read.values)
                    .filter_map(|(&row, value)| Some((row.to_string(), value?)))
                    .collect(),
            ),
            rest: Some(read.rest),
            ..Answer::default()
        },
    }
}

// ---------------------------------------------------------------------------------------
// The command lines

/// splitmix64: a fixed seed gives the same command lines on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values given to value flags (inline after `=`, or as the next argument).
const VALUES: &[&str] = &[
    "",
    "v",
    ":443",
    "x=y",
    "=",
    "-",
    "--",
    "-b",
    "-mux",
    "--mux=true",
    "true",
    "1m0s",
    " ",
    "é",
    "a\nb",
    "-h",
];

/// Values given to boolean flags after `=`: Go's booleans and near misses.
const BOOLS: &[&str] = &[
    "true", "false", "1", "0", "t", "f", "T", "F", "TRUE", "FALSE", "True", "False", "yes", "",
    "no", "tRUE", "2", "-1", "on", " true", "true ", "=true",
];

/// Arguments that are no spelling of a known flag: syntax errors, help, unknown flags,
/// positional arguments, lone values.
const ODD: &[&str] = &[
    "",
    "-",
    "--",
    "---",
    "---x",
    "---mux",
    "---b=1",
    "-=x",
    "--=x",
    "-=",
    "--=",
    "-==",
    "=",
    "=x",
    "x",
    "a b",
    ":443",
    "-1",
    "-1s",
    "true",
    "false",
    "yes",
    "-h",
    "--h",
    "-help",
    "--help",
    "-h=1",
    "--help=",
    "-x",
    "--x",
    "-x=1",
    "-unknown",
    "-B",
    "-Mux",
    "-MUX",
    "-b ",
    "- b",
    " -b",
    "-é",
    "é",
    "-\t",
    "-=-",
    "-b==",
    "--b==:443",
    "-mux==true",
    "-bind-",
    "-binds",
    "-mu",
];

/// Every spelling of `name` in every form: `-x`, `--x`, `-x=v`, `--x=v`.
fn spellings(name: &str, is_bool: bool) -> Vec<String> {
    let values = if is_bool { BOOLS } else { VALUES };
    let mut out = vec![format!("-{name}"), format!("--{name}")];
    for v in values {
        out.push(format!("-{name}={v}"));
        out.push(format!("--{name}={v}"));
    }
    out
}

/// The vocabulary, and the command lines as indices into it.
fn inputs() -> (Vec<String>, Vec<Vec<u16>>) {
    let mut vocab: Vec<String> = Vec::new();
    let mut known: HashMap<String, u16> = HashMap::new();
    let mut add = |token: &str, vocab: &mut Vec<String>| -> u16 {
        *known.entry(token.to_string()).or_insert_with(|| {
            vocab.push(token.to_string());
            u16::try_from(vocab.len() - 1).unwrap()
        })
    };
    let table = config::flag_syntax();
    // Every token: every spelling of every name, the odd ones, the bare values.
    let mut all = Vec::new();
    for (names, is_bool) in &table {
        for name in names.iter() {
            for token in spellings(name, *is_bool) {
                all.push(add(&token, &mut vocab));
            }
        }
    }
    for token in ODD.iter().chain(VALUES).chain(BOOLS) {
        all.push(add(token, &mut vocab));
    }
    all.sort_unstable();
    all.dedup();

    // Pairs run over fewer tokens: a value flag with an alias, a boolean, another value
    // flag, in a few forms each, and everything odd.
    let mut small = Vec::new();
    for (name, is_bool) in [
        ("b", false),
        ("bind", false),
        ("mux", true),
        ("timeout", false),
        ("force-tls", true),
    ] {
        let values: &[&str] = if is_bool {
            &["true", "false", "0", "yes", ""]
        } else {
            &["", "v", "-", "-mux", "x=y"]
        };
        small.push(add(&format!("-{name}"), &mut vocab));
        small.push(add(&format!("--{name}"), &mut vocab));
        for v in values {
            small.push(add(&format!("-{name}={v}"), &mut vocab));
            small.push(add(&format!("--{name}={v}"), &mut vocab));
        }
    }
    for token in ODD.iter().chain(["v", "1", "0", "T", "-b=v"].iter()) {
        small.push(add(token, &mut vocab));
    }
    small.sort_unstable();
    small.dedup();
    // Triples over fewer still: one of each kind of argument.
    let tiny: Vec<u16> = [
        "-b",
        "--bind",
        "-b=v",
        "-mux",
        "-mux=false",
        "--mux=yes",
        "-force-tls",
        "-timeout",
        "-h",
        "-x",
        "--",
        "-",
        "---x",
        "-=x",
        "",
        "x",
        "true",
        "v",
        "-bind=",
    ]
    .iter()
    .map(|t| add(t, &mut vocab))
    .collect();

    let mut inputs: Vec<Vec<u16>> = vec![Vec::new()];
    inputs.extend(all.iter().map(|&t| vec![t]));
    for &a in &small {
        for &b in &small {
            inputs.push(vec![a, b]);
        }
    }
    for &a in &tiny {
        for &b in &tiny {
            for &c in &tiny {
                inputs.push(vec![a, b, c]);
            }
        }
    }
    eprintln!(
        "command lines: the empty one, {} single tokens, {} pairs, {} triples, {} random",
        all.len(),
        small.len().pow(2),
        tiny.len().pow(3),
        INPUTS.saturating_sub(inputs.len())
    );
    // Random command lines: mostly tokens from the small set (repeats, aliases, values
    // taken as the next argument), some from everything.
    let mut rng = Rng(0x676f_666c_6167);
    while inputs.len() < INPUTS {
        let len = 1 + rng.below(MAX_TOKENS);
        let argv = (0..len)
            .map(|_| match rng.below(4) {
                0 => all[rng.below(all.len())],
                1 => tiny[rng.below(tiny.len())],
                _ => small[rng.below(small.len())],
            })
            .collect();
        inputs.push(argv);
    }
    (vocab, inputs)
}

// ---------------------------------------------------------------------------------------

#[test]
fn argv_is_read_as_gos_flag_package_reads_it() {
    let start = Instant::now();
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("goflag.{}", std::process::id()));
    let Some(bin) = build_goflag(&dir) else {
        return;
    };
    let built = start.elapsed();
    let (vocab, inputs) = inputs();
    let rows: Vec<&str> = config::flag_syntax()
        .into_iter()
        .map(|(names, _)| names[0])
        .collect();
    // Compared as Go answers: our reading runs beside Go's.
    let (mut child, go_lines, writer) = run_go(&bin, &vocab, &inputs);
    let mut go_lines = go_lines.lines();
    let mut mismatches = 0;
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for argv in &inputs {
        let line = go_lines
            .next()
            .expect("an answer from Go for every command line")
            .expect("read Go's answer");
        let go: Answer =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("Go's answer {line:?}: {e}"));
        let argv: Vec<String> = argv.iter().map(|&t| vocab[t as usize].clone()).collect();
        let ours = our_answer(&rows, &argv);
        let outcome = match &ours.rest {
            _ if ours.help => "help",
            _ if ours.err => "error",
            Some(rest) if !rest.is_empty() => "parsed, with rest",
            _ => "parsed",
        };
        *outcomes.entry(outcome).or_default() += 1;
        if ours != go {
            mismatches += 1;
            if mismatches <= SHOWN {
                eprintln!("argv {argv:?}\n  Go:   {go}\n  ours: {ours}");
            }
        }
    }
    assert!(go_lines.next().is_none(), "Go answered more than was asked");
    writer.join().unwrap().expect("write to the Go program");
    assert!(child.wait().unwrap().success(), "the Go program failed");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{} command lines compared with Go's flag package in {:.1?} (Go build {:.1?}): {outcomes:?}",
        inputs.len(),
        start.elapsed(),
        built
    );
    assert_eq!(
        mismatches, 0,
        "{mismatches} command lines read differently from Go's flag package (first {SHOWN} above)"
    );
    // Every outcome is well represented, or the comparison says little.
    for outcome in ["help", "error", "parsed", "parsed, with rest"] {
        let n = outcomes.get(outcome).copied().unwrap_or(0);
        assert!(n >= inputs.len() / 50, "only {n} inputs {outcome}");
    }
}
