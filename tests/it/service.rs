//! Running as a Linux system service, checked with the real tools: the Debian package
//! (`cargo deb`, built once by run-tests.sh and named by `MTT_DEB`), its systemd unit
//! (`systemd-analyze verify` and `security`), the packaged binary run with the packaged flags
//! and a tunnel through it, `promtool` on `/metrics` and on the alert rules, the JSON and
//! journal log formats, the man page, and the `/status` page in headless Chromium.
//!
//! A tool that is missing fails the test under CI and skips it elsewhere, loudly
//! ([`testkit::programs::tool`]). Installing the package on this machine (`dpkg -i`,
//! remove, purge) happens only under CI or with `MTT_DPKG_INSTALL=1`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::prelude::*;
use testkit::programs::{outcome, run, run_with_input, skip, tool, under_ci};
use testkit::server::{server_bin, TempDir};
use tungstenite::Message;

const SECRET: &str = "ops-test-secret";
const BEARER: &str = "Authorization: Bearer ops-test-secret\r\n";

/// The controller's answer to `GET target` with these header lines, parsed as JSON.
fn get_json(server: &Server, target: &str, headers: &str) -> Value {
    let (status, head, body) = server.request("GET", target, headers, "");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {status} {head} {}", String::from_utf8_lossy(&body)))
}

/// The controller's answer to `GET target` with these header lines, as text.
fn get_text(server: &Server, target: &str, headers: &str) -> String {
    let (_, _, body) = server.request("GET", target, headers, "");
    String::from_utf8_lossy(&body).into_owned()
}

/// A destination that sends every chunk back twice, so "down" is twice "up" and the two
/// lines of the throughput chart do not cover each other.
fn doubling_echo() -> SocketAddr {
    backend(|mut stream| {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n) = stream.read(&mut buf) {
            let chunk = &buf[..n];
            if n == 0 || stream.write_all(chunk).is_err() || stream.write_all(chunk).is_err() {
                return;
            }
        }
    })
}

/// Sends `message` through the tunnel and reads the doubled echo back.
fn round_trip(ws: &mut Ws, message: &[u8]) {
    ws.send(Message::binary(message.to_vec())).unwrap();
    let mut got = 0;
    while got < 2 * message.len() {
        match ws.read().unwrap() {
            Message::Binary(b) => got += b.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, 2 * message.len());
}

// ---------------------------------------------------------------------------------------
// Logs

#[test]
fn json_logs_are_one_object_a_line_with_side_user_and_client() {
    let server = Server::start(&[
        "-workers",
        "1",
        "-log-format",
        "json",
        "-verbose",
        "-secret",
        SECRET,
    ]);
    server.add(&[("/json user", doubling_echo())]);
    let mut ws = server.ws("/json%20user", &[]);
    round_trip(&mut ws, b"hello");
    let client = ws.get_ref().tcp().local_addr().unwrap().to_string();
    drop(ws);
    // A refused controller request, for a controller-side line.
    assert_eq!(server.request("GET", "/metrics", "", "").0, 401);
    let deadline = Instant::now() + WAIT;
    let lines: Vec<Value> = loop {
        let log = server.log_text();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let ended = lines
            .iter()
            .any(|l| l["event"].as_str().unwrap().contains("tunnel ended"));
        if ended && log.contains("wrong secret") || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for line in &lines {
        let time = line["time"].as_str().unwrap();
        // 2024-05-01T12:34:56.789Z
        assert_eq!(time.len(), 24, "{line}");
        assert!(time.ends_with('Z') && &time[10..11] == "T", "{line}");
        assert!(
            ["error", "warn", "info", "debug"].contains(&line["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(
            line["thread"].is_string() && line["event"].is_string(),
            "{line}"
        );
    }
    let opened = lines
        .iter()
        .find(|l| l["event"].as_str().unwrap().contains("plain tunnel to"))
        .unwrap_or_else(|| panic!("no tunnel line in {lines:?}"));
    assert_eq!(opened["side"], "client");
    assert_eq!(opened["user"], "/json user");
    assert_eq!(opened["client"], client.as_str());
    let refused = lines
        .iter()
        .find(|l| l["event"].as_str().unwrap().contains("wrong secret"))
        .unwrap();
    assert_eq!(
        (&refused["side"], &refused["level"]),
        (&"controller".into(), &"warn".into())
    );
    let ready = lines
        .iter()
        .find(|l| l["event"].as_str().unwrap().contains("ready:"))
        .unwrap();
    assert_eq!(ready["side"], "internal");
}

#[test]
fn under_the_journal_text_lines_have_a_priority_and_no_timestamp() {
    let args = ["-b", "127.0.0.1:0", "-c", "127.0.0.1:0", "-force-tls"];
    let binary = server_bin();
    let server = Server::start_binary(&binary, &args, &[("JOURNAL_STREAM", "8:12345")]);
    let log = server.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("self-signed"))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    // "<4>WARN  [main] no -cert/-key given: ..."
    assert!(warning.starts_with("<4>WARN "), "{warning}");
    drop(server);
    // Outside the journal: the server's own timestamp first.
    let server = Server::start_binary(&binary, &args, &[]);
    let log = server.log_text();
    let warning = log.lines().find(|l| l.contains("self-signed")).unwrap();
    assert!(
        warning.split(' ').next().unwrap().parse::<f64>().is_ok(),
        "{warning}"
    );
}

// ---------------------------------------------------------------------------------------
// Man page

/// The man page: the `-h` text under a roff head. The `-workers` default depends on the
/// machine, so it is written as what it means.
fn man_page(usage: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let usage = usage.replace(&format!("(default {cpus}: the CPUs"), "(default: the CPUs");
    let escape = |line: &str| {
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        if line.starts_with('.') || line.starts_with('\'') {
            format!("\\&{line}")
        } else {
            line
        }
    };
    let body: Vec<String> = usage.lines().map(escape).collect();
    format!(
        r#".\" Generated from `mtt-mu-server -h` by tests/it/service.rs (UPDATE_MAN=1 cargo test --test it service::man_page); do not edit.
.TH MTT\-MU\-SERVER 8 "" "mtt\-mu\-server {version}" "System Administration"
.SH NAME
mtt\-mu\-server \- multi\-user WebSocket\-over\-TLS tunnel server of mos\-tls\-tunnel
.SH SYNOPSIS
.B mtt\-mu\-server
\-b HOST:PORT \-c HOST:PORT [\-cert PATH \-key PATH | \-force\-tls] [flags]
.SH DESCRIPTION
Many users share one port; each user's client opens a WebSocket (usually over TLS), the
HTTP path of the upgrade picks the user, and the bytes inside are relayed to that user's
TCP destination. A panel adds and removes users through the JSON controller (\-c), which
also serves GET /metrics and the GET /status page.
.SH OPTIONS
.nf
{body}
.fi
.SH SIGNALS
SIGTERM or SIGINT: stop accepting, let open tunnels finish for up to \-grace, exit 0.
SIGHUP: reload the certificate (systemctl reload mtt\-mu\-server).
.SH FILES
.TP
/etc/default/mtt\-mu\-server
the flags the systemd unit passes (MTT_ARGS)
.TP
/etc/mtt\-mu\-server/secret
the controller's secret, generated when the package is installed
.TP
/var/lib/mtt\-mu\-server
the state directory (\-state), kept when the package is removed, deleted when purged
.SH SEE ALSO
/usr/share/doc/mtt\-mu\-server/README.md
"#,
        version = env!("CARGO_PKG_VERSION"),
        body = body.join("\n"),
    )
}

#[test]
fn man_page_is_the_usage_text() {
    let output = Command::new(server_bin()).arg("-h").output().unwrap();
    assert!(output.status.success());
    let page = man_page(&String::from_utf8(output.stdout).unwrap());
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/mtt-mu-server.8");
    if std::env::var_os("UPDATE_MAN").is_some() {
        std::fs::write(&file, &page).unwrap();
    }
    let shipped = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        shipped == page,
        "debian/mtt-mu-server.8 differs from `-h`; regenerate it with\n    \
         UPDATE_MAN=1 cargo test --test it service::man_page"
    );
    if let Some(man) = tool("man", "man_page_is_the_usage_text") {
        let (ok, text) = run(Command::new(man)
            .args(["--warnings", "-l", "-Tutf8"])
            .arg(&file)
            .env("MANWIDTH", "100"));
        assert!(ok && text.contains("-log-format"), "{text}");
    }
}

// ---------------------------------------------------------------------------------------
// Metrics and alert rules

/// `promtool check metrics` on a page: the problems it lists (none is success).
fn promtool_check_metrics(promtool: &Path, page: &str) -> (bool, String) {
    let mut check = Command::new(promtool);
    check.args(["check", "metrics"]);
    let (ok, text) = outcome(&run_with_input(&mut check, page.as_bytes()));
    (ok && text.trim().is_empty(), text)
}

#[test]
fn metrics_pass_promtool_and_export_the_certificate_expiry() {
    let Some(promtool) = tool("promtool", "metrics_pass_promtool") else {
        return;
    };
    let server = Server::start(&["-force-tls", "-metrics-per-user", "-secret", SECRET]);
    server.add(&[("/metered \"user\"", doubling_echo())]);
    let mut ws = server.ws("/metered%20%22user%22", &[]);
    round_trip(&mut ws, &[7; 5000]);
    // A refusal, so a reason has a count.
    assert_eq!(server.request("GET", "/nobody", "", "").0, 401);
    let page = get_text(&server, "/metrics", BEARER);
    let (ok, problems) = promtool_check_metrics(&promtool, &page);
    assert!(ok, "promtool check metrics:\n{problems}\n{page}");
    let value = |name: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{page}"))
            .parse::<f64>()
            .unwrap()
    };
    // rcgen's self-signed certificate is valid until 4096-01-01.
    assert_eq!(
        value("mtt_certificate_expiry_timestamp_seconds"),
        67_090_118_400.0
    );
    assert!(value("process_open_fds") >= 4.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(page.contains("mtt_build_info{version=\""));
    // The doubling echo sent 10000 bytes down for 5000 up.
    assert!(
        page.contains(r#"mtt_user_bytes_total{path="/metered \"user\"",direction="down"} 10000"#)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = tool("promtool", "alert_rules_pass_promtool") else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    let (ok, text) = run(Command::new(&promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    assert!(ok && text.contains("SUCCESS"), "{text}");
    let (ok, text) = run(Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir));
    assert!(ok && text.contains("SUCCESS"), "{text}");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    for metric in [
        "mtt_panel_consecutive_failures",
        "mtt_panel_last_success_timestamp_seconds",
        "mtt_refused_total",
        "process_open_fds",
        "process_max_fds",
        "mtt_certificate_expiry_timestamp_seconds",
    ] {
        assert!(rules.contains(metric), "no rule uses {metric}");
    }
}

// ---------------------------------------------------------------------------------------
// The status page

/// Headless Chromium on `url`, with `args` (`--dump-dom`, `--screenshot=...`); its stdout.
fn chromium(chromium: &Path, scratch: &Path, args: &[String], url: &str) -> String {
    let profile = scratch.join(format!("profile-{}", args.join("").len()));
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `data-NAME` on the dumped `<body>`.
fn body_data(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let key = format!("data-{name}=\"");
    let rest = &body[body.find(&key)? + key.len()..];
    Some(rest[..rest.find('"')?].to_string())
}

/// RGBA pixels of a PNG: (width, height, bytes).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let rgba: Vec<u8> = buf[..info.buffer_size()]
        .chunks(channels)
        .flat_map(|p| [p[0], p[1], p[2], if channels == 4 { p[3] } else { 255 }])
        .collect();
    (info.width, info.height, rgba)
}

/// Pixels within a small distance of `color`.
fn count_color(rgba: &[u8], color: [u8; 3]) -> usize {
    rgba.chunks(4)
        .filter(|p| {
            (0..3)
                .map(|i| (i32::from(p[i]) - i32::from(color[i])).abs())
                .sum::<i32>()
                < 40
        })
        .count()
}

/// The chart's lines and the table's header, as the page's stylesheet colours them.
const DOWN_LINE: [u8; 3] = [0x1f, 0x6f, 0xeb];
const UP_LINE: [u8; 3] = [0xe8, 0x59, 0x0c];
const TABLE_HEAD: [u8; 3] = [0xee, 0xf2, 0xf8];

#[test]
fn status_page_draws_the_chart_and_the_table_in_chromium() {
    let Some(browser) = tool("chromium", "status_page_in_chromium") else {
        return;
    };
    let scratch = temp_dir("status");
    let server = Server::start(&["-force-tls", "-workers", "2", "-secret", SECRET]);
    // Behind the secret: a browser is asked for it (Basic), a panel sends it (Bearer).
    let (status, head, _) = server.request("GET", "/status", "", "");
    assert_eq!(status, 401);
    assert!(head.contains("WWW-Authenticate: Basic"), "{head}");
    let wrong = "Authorization: Basic b3A6d3Jvbmc=\r\n"; // op:wrong
    assert_eq!(server.request("GET", "/status.json", wrong, "").0, 401);
    let dst = doubling_echo();
    let paths: Vec<String> = (0..3).map(|i| format!("/phone-user-{i}")).collect();
    for path in &paths {
        server.add(&[(path, dst)]);
    }
    // Traffic over a few sampling periods (2 s each), rising, so the chart has a shape.
    let mut tunnels: Vec<_> = paths.iter().map(|p| server.ws(p, &[])).collect();
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(7) {
        round += 1;
        for (i, ws) in tunnels.iter_mut().enumerate() {
            round_trip(ws, &vec![1; 2000 * (i + 1) * round.min(40)]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let basic = "Authorization: Basic b3A6b3BzLXRlc3Qtc2VjcmV0\r\n"; // op:ops-test-secret
    let json = get_json(&server, "/status.json", basic);
    assert_eq!(json["users"], 3);
    assert_eq!(json["tunnels_open"], 3);
    assert_eq!(json["client_ips_online"], 1);
    assert_eq!(json["driver"], "io_uring");
    assert_eq!(json["workers"], 2);
    assert_eq!(json["certificate_expiry"], 67_090_118_400i64);
    let rows = json["table"]["rows"].as_array().unwrap();
    assert_eq!(rows[0]["path"], "/phone-user-2", "busiest first: {json}");
    assert_eq!(rows[0]["clients"].as_array().unwrap().len(), 1);
    assert_eq!(
        rows[0]["bytes_down"],
        rows[0]["bytes_up"].as_u64().unwrap() * 2
    );
    let points = json["throughput"]["points"].as_array().unwrap();
    assert!(points.len() >= 2, "{json}");
    assert!(
        points.iter().any(|p| p[2].as_f64().unwrap() > 0.0),
        "{json}"
    );
    let (status, head, html) = server.request("GET", "/status", BEARER, "");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/html"));
    let html = String::from_utf8_lossy(&html);
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "fetch(\"http",
    ] {
        assert!(
            !html.contains(external),
            "the page loads nothing from elsewhere"
        );
    }

    let url = format!("http://op:{SECRET}@{}/status", server.controller);
    let dom = chromium(&browser, &scratch, &["--dump-dom".into()], &url);
    assert_eq!(body_data(&dom, "ready").as_deref(), Some("1"), "{dom}");
    assert_eq!(body_data(&dom, "rows").as_deref(), Some("3"));
    assert!(body_data(&dom, "points").unwrap().parse::<u32>().unwrap() >= 2);
    assert!(dom.contains("<td>/phone-user-2</td>"), "{dom}");
    assert!(dom.contains("<polyline"), "{dom}");

    for (name, size) in [("desktop", "1280,1000"), ("phone", "390,1100")] {
        let shot = scratch.join(format!("{name}.png"));
        chromium(
            &browser,
            &scratch,
            &[
                format!("--screenshot={}", shot.display()),
                format!("--window-size={size}"),
            ],
            &url,
        );
        if let Some(keep) = std::env::var_os("MTT_SCREENSHOTS") {
            let _ = std::fs::copy(&shot, Path::new(&keep).join(format!("status-{name}.png")));
        }
        let (width, height, rgba) = decode_png(&shot);
        let expected: Vec<u32> = size.split(',').map(|n| n.parse().unwrap()).collect();
        assert_eq!((width, height), (expected[0], expected[1]));
        // Beyond the legend's swatches (12x4 pixels each): the lines themselves. How long
        // they are depends on how the 7 s of traffic fall between the 2 s samples (3 or 4
        // rising points): on the phone's narrow chart the up line measured 266 to 390
        // pixels, so the bound is well above a swatch and below the shortest line.
        let (down, up) = (count_color(&rgba, DOWN_LINE), count_color(&rgba, UP_LINE));
        assert!(
            down > 200 && up > 200,
            "{name}: chart lines down {down} up {up} pixels"
        );
        let head = count_color(&rgba, TABLE_HEAD);
        assert!(head > 2000, "{name}: table header {head} pixels");
    }
}

#[test]
fn status_page_with_ten_thousand_users_shows_one_page_and_a_search() {
    let server = Server::start(&["-secret", SECRET]);
    let paths: Vec<String> = (0..10_000).map(|i| format!("/u{i:05}")).collect();
    let discard: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let users: Vec<(&str, SocketAddr)> = paths.iter().map(|p| (p.as_str(), discard)).collect();
    server.add(&users);
    let started = Instant::now();
    let json = get_json(&server, "/status.json?page=7", BEARER);
    assert_eq!(json["users"], 10_000);
    assert_eq!(json["table"]["pages"], 200);
    assert_eq!(json["table"]["page"], 7);
    let rows = json["table"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0]["path"], "/u00300");
    let json = get_json(&server, "/status.json?q=u0999", BEARER);
    assert_eq!(json["table"]["matched"], 10);
    let (_, _, page) = server.request("GET", "/status?q=u09", BEARER, "");
    assert!(page.len() < 64 * 1024, "{} bytes", page.len());
    eprintln!(
        "status of 10,000 users: three requests in {:?}",
        started.elapsed()
    );

    let Some(browser) = tool("chromium", "status_page_with_ten_thousand_users") else {
        return;
    };
    let scratch = temp_dir("status-10k");
    let url = format!("http://op:{SECRET}@{}/status", server.controller);
    let dom = chromium(&browser, &scratch, &["--dump-dom".into()], &url);
    assert_eq!(body_data(&dom, "users").as_deref(), Some("10000"), "{dom}");
    assert_eq!(body_data(&dom, "rows").as_deref(), Some("50"));
    assert!(dom.contains("page 1 of 200"), "{dom}");
    let dom = chromium(
        &browser,
        &scratch,
        &["--dump-dom".into()],
        &format!("{url}?q=u0999"),
    );
    assert_eq!(body_data(&dom, "rows").as_deref(), Some("10"));
    assert!(dom.contains("10 of 10000 users match"), "{dom}");
}

// ---------------------------------------------------------------------------------------
// The Debian package

/// The package run-tests.sh built (`MTT_DEB`), unpacked into a scratch root.
fn unpacked_package(test: &str) -> Option<(TempDir, PathBuf)> {
    let Some(deb) = std::env::var_os("MTT_DEB")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
    else {
        skip(
            test,
            "MTT_DEB names no package; build it with `cargo deb --strip` and set \
             MTT_DEB=target/debian/mtt-mu-server_*.deb (run-tests.sh does)",
        );
        return None;
    };
    tool("dpkg-deb", test)?;
    let scratch = temp_dir(test);
    let root = scratch.join("root");
    let (ok, text) = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    assert!(ok, "dpkg-deb -x {}: {text}", deb.display());
    Some((scratch, root))
}

/// MTT_ARGS of the packaged /etc/default file, split as systemd splits `$MTT_ARGS`.
fn packaged_flags(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("etc/default/mtt-mu-server")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("MTT_ARGS="))
        .expect("MTT_ARGS in /etc/default/mtt-mu-server");
    line.trim_matches('"')
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The unit's `Key=value` lines for `key`.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn package_holds_a_hardened_unit_that_systemd_analyze_verifies() {
    let Some((scratch, root)) = unpacked_package("package_unit") else {
        return;
    };
    for file in [
        "usr/bin/mtt-mu-server",
        "etc/default/mtt-mu-server",
        "usr/share/man/man8/mtt-mu-server.8.gz",
        "usr/share/doc/mtt-mu-server/README.md",
        "usr/share/mtt-mu-server/prometheus/alerts.yml",
        "usr/share/mtt-mu-server/certbot-deploy-hook",
    ] {
        assert!(root.join(file).is_file(), "{file} is not in the package");
    }
    let unit_path = ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join("mtt-mu-server.service"))
        .find(|p| p.is_file())
        .expect("the unit in the package");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for (key, value) in [
        ("User", "mtt-mu-server"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "mtt-mu-server"),
        ("KillSignal", "SIGTERM"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("EnvironmentFile", "-/etc/default/mtt-mu-server"),
        ("ExecStart", "/usr/bin/mtt-mu-server $MTT_ARGS"),
    ] {
        assert_eq!(unit_values(&unit, key), [value], "{key}= in the unit");
    }
    let nofile: u64 = unit_values(&unit, "LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 1 << 20, "LimitNOFILE={nofile}");
    // The stop timeout outlasts the drain the packaged flags allow (-grace, plus 2 s).
    let flags = packaged_flags(&root);
    let grace = flags[flags.iter().position(|f| f == "-grace").unwrap() + 1].clone();
    let grace = mtt_mu_server::config::parse_go_duration(&grace).unwrap();
    let stop: u64 = unit_values(&unit, "TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(Duration::from_secs(stop) > grace + Duration::from_secs(2));

    let Some(analyze) = tool("systemd-analyze", "package_unit") else {
        return;
    };
    // verify resolves ExecStart: point it at the unpacked binary (a real install is
    // verified in place by dpkg_install_remove_purge).
    let binary = root.join("usr/bin/mtt-mu-server");
    let local = scratch.join("mtt-mu-server.service");
    std::fs::write(
        &local,
        unit.replace(
            "ExecStart=/usr/bin/mtt-mu-server",
            &format!("ExecStart={}", binary.display()),
        ),
    )
    .unwrap();
    let (ok, text) = run(Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&local));
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    let (_, text) = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&local));
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("mtt-mu-server.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no score in\n{text}"))
        .parse()
        .unwrap();
    eprintln!("systemd-analyze security: exposure {score} (README states 1.5)");
    assert!(score <= 2.0, "exposure {score} (README says 1.5):\n{text}");
}

#[test]
fn packaged_binary_runs_with_the_packaged_flags_and_tunnels() {
    let Some((scratch, root)) = unpacked_package("packaged_binary") else {
        return;
    };
    // The packaged flags, made local: loopback ports, the secret and state in scratch.
    std::fs::write(scratch.join("secret"), format!("{SECRET}\n")).unwrap();
    let state = scratch.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let flags: Vec<String> = packaged_flags(&root)
        .into_iter()
        .map(|f| match f.as_str() {
            ":443" => "127.0.0.1:0".to_string(),
            "127.0.0.1:8080" => "127.0.0.1:0".to_string(),
            "/etc/mtt-mu-server/secret" => scratch.join("secret").display().to_string(),
            f if f.starts_with("/var/lib/mtt-mu-server/") => {
                f.replace("/var/lib/mtt-mu-server", &state.display().to_string())
            }
            _ => f,
        })
        .collect();
    assert!(
        !flags
            .iter()
            .any(|f| f.starts_with('/') && !f.starts_with(&*scratch.to_string_lossy())),
        "a packaged path was not made local: {flags:?}"
    );
    let server = Server::start_binary(&root.join("usr/bin/mtt-mu-server"), &flags, &[]);
    assert!(server.tls, "the packaged flags listen TLS");
    // The kit's controller calls send the secret the -secret-file holds.
    server.add(&[("/packaged", doubling_echo())]);
    let mut ws = server.ws("/packaged", &[]);
    round_trip(&mut ws, &[42; 3000]);
    let (status, stats) = server.post(r#"{"opt":5}"#);
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["users"][0]["bytes_up"], 3000);
    // -state keeps the user in the state directory.
    let kept: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
    assert!(!kept.is_empty(), "nothing in the state directory");
    if let Some(promtool) = tool("promtool", "packaged_binary") {
        let page = get_text(&server, "/metrics", BEARER);
        let (ok, problems) = promtool_check_metrics(&promtool, &page);
        assert!(ok, "promtool check metrics:\n{problems}");
    }
    let status = get_json(&server, "/status.json", BEARER);
    assert_eq!(status["users"], 1);
    assert!(
        server.log_text().lines().any(|l| l.contains("ready:")
            && (l.contains("driver=io_uring") || l.contains("driver=epoll"))),
        "the ready line names the driver"
    );
}

/// Installs the package on this machine with dpkg, then removes and purges it: only under
/// CI (a throwaway machine) or when asked with MTT_DPKG_INSTALL=1.
#[test]
fn dpkg_install_remove_purge() {
    let test = "dpkg_install_remove_purge";
    let asked = std::env::var_os("MTT_DPKG_INSTALL").is_some_and(|v| v == "1");
    if !(under_ci() || asked) {
        skip(
            test,
            "it installs on this machine: only under CI or with MTT_DPKG_INSTALL=1",
        );
        return;
    }
    let Some(deb) = std::env::var_os("MTT_DEB") else {
        panic!("{test}: MTT_DEB is not set");
    };
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "{test}: dpkg needs root");
    let (ok, text) = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(ok, "dpkg -i:\n{text}");
    let (ok, text) = run(Command::new("getent").args(["passwd", "mtt-mu-server"]));
    assert!(ok, "no system user: {text}");
    assert!(Path::new("/var/lib/mtt-mu-server").is_dir());
    let secret = std::fs::read_to_string("/etc/mtt-mu-server/secret").unwrap();
    assert!(secret.trim().len() >= 32);
    let (ok, text) = run(Command::new("/usr/bin/mtt-mu-server").arg("-h"));
    assert!(ok && text.contains("-log-format"), "{text}");
    if let Some(analyze) = tool("systemd-analyze", test) {
        // In place: ExecStart, /bin/kill and the man page all resolve.
        let (ok, text) = run(Command::new(&analyze).args(["verify", "mtt-mu-server.service"]));
        assert!(
            ok && text.trim().is_empty(),
            "systemd-analyze verify:\n{text}"
        );
    }
    std::fs::write("/var/lib/mtt-mu-server/users.state", "kept\n").unwrap();
    let (ok, text) = run(Command::new("dpkg").args(["-r", "mtt-mu-server"]));
    assert!(ok, "dpkg -r:\n{text}");
    assert!(!Path::new("/usr/bin/mtt-mu-server").exists());
    assert!(
        Path::new("/var/lib/mtt-mu-server/users.state").is_file(),
        "removing the package must keep the state"
    );
    assert!(Path::new("/etc/mtt-mu-server/secret").is_file());
    let (ok, text) = run(Command::new("dpkg").args(["-P", "mtt-mu-server"]));
    assert!(ok, "dpkg -P:\n{text}");
    assert!(
        !Path::new("/var/lib/mtt-mu-server").exists(),
        "purge deletes the state"
    );
    assert!(!Path::new("/etc/mtt-mu-server").exists());
    assert!(!Path::new("/etc/default/mtt-mu-server").exists());
}
