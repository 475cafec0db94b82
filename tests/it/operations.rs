//! What operators run for real users: an authenticated controller, per-user counters,
//! Prometheus metrics, full sync, kicking, and state that survives a crash.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::prelude::*;
use testkit::programs::run_with_input;

fn post_with(server: &Server, body: &str, auth: Option<&str>) -> (u16, Value) {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let (status, _, raw) = http_request(
        server.controller,
        &format!(
            "POST / HTTP/1.1\r\nHost: c\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    (status, serde_json::from_slice(&raw).expect("JSON reply"))
}

#[test]
fn secret_is_required_when_set_and_nothing_applies_without_it() {
    let server = Server::start(&["-secret", "s3cret"]);
    let add = r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"127.0.0.1:1"}]}"#;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Basic s3cret"),
    ] {
        let (status, reply) = post_with(&server, add, auth);
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(reply["res"], 2);
        assert_eq!(reply["current_users"], 0);
    }
    let (status, reply) = post_with(&server, add, Some("Bearer s3cret"));
    assert_eq!((status, reply["current_users"].as_u64()), (200, Some(1)));
    // /metrics is behind the secret too.
    let (status, _, _) = http_request(
        server.controller,
        "GET /metrics HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 401);

    // The same from a file, white space around it ignored.
    let dir = temp_dir("secret");
    let file = dir.join("secret");
    std::fs::write(&file, "  from-a-file\n").unwrap();
    let server = Server::start(&["-secret-file", file.to_str().unwrap()]);
    assert_eq!(post_with(&server, r#"{"opt":9}"#, None).0, 401);
    assert_eq!(
        post_with(&server, r#"{"opt":9}"#, Some("Bearer from-a-file")).0,
        200
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn controller_beyond_loopback_without_secret_warns() {
    let server = Server::start(&["-c", "0.0.0.0:0"]);
    assert!(server.log.lock().unwrap().contains("without a secret"));
    let server = Server::start(&["-c", "0.0.0.0:0", "-secret", "x"]);
    assert!(!server.log.lock().unwrap().contains("without a secret"));
}

/// Counters summed from a stats reply, for one path.
fn stats(server: &Server, reset: bool) -> HashMap<String, Value> {
    let body = json!({"opt":5,"reset":reset}).to_string();
    let (status, reply) = server.post(&body);
    assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
    reply["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["path"].as_str().unwrap().to_string(), u.clone()))
        .collect()
}

#[test]
fn counters_match_the_bytes_a_client_moved() {
    let server = Server::tls();
    let (addr, accepted) = capture_backend();
    let path = unique_path("count");
    server.add(&[(&path, addr)]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let mut backend = accepted.recv_timeout(WAIT).unwrap();
    backend.set_read_timeout(Some(WAIT)).unwrap();
    let up = pattern(123_457, 1);
    conn.write_all(&masked_frame(true, 0x2, &up)).unwrap();
    let mut got = vec![0u8; up.len()];
    backend.read_exact(&mut got).unwrap();
    let down = pattern(54_321, 2);
    backend.write_all(&down).unwrap();
    assert!(read_data(&mut conn, down.len()) == down);

    let user = &stats(&server, true)[&path];
    // Where the user connects from: the open tunnel's client address.
    let client = conn.tcp().local_addr().unwrap().to_string();
    assert_eq!(user["clients"], json!([client]));
    assert_eq!(user["bytes_up"], 123_457);
    assert_eq!(user["bytes_down"], 54_321);
    assert_eq!(user["tunnels_opened"], 1);
    assert_eq!(user["tunnels_open"], 1);
    // Reset: the next collection starts from zero; the open tunnel still counts as open.
    let user = &stats(&server, false)[&path];
    assert_eq!(
        (user["bytes_up"].as_u64(), user["tunnels_open"].as_u64()),
        (Some(0), Some(1))
    );
    // Only the users asked for.
    let (_, reply) = server.post(&json!({"opt":5,"args_bunch":[{"path":"/nobody"}]}).to_string());
    assert_eq!(reply["users"], json!([]));
}

#[test]
fn collecting_with_reset_under_traffic_loses_and_repeats_nothing() {
    let server = Server::plain();
    let received = Arc::new(AtomicU64::new(0));
    let sink = {
        let received = Arc::clone(&received);
        backend(move |mut stream| {
            let mut buf = [0u8; 65536];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let path = unique_path("billing");
    server.add(&[(&path, sink)]);
    let senders: Vec<_> = (0..4)
        .map(|i| {
            let mut conn = server.connect();
            assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
            std::thread::spawn(move || {
                let chunk = pattern(7_777 + i, i as u64);
                let mut sent = 0u64;
                for _ in 0..400 {
                    conn.write_all(&masked_frame(true, 0x2, &chunk)).unwrap();
                    sent += chunk.len() as u64;
                }
                (sent, conn)
            })
        })
        .collect();
    let mut billed = 0u64;
    let mut collections = 0;
    while !senders.iter().all(|s| s.is_finished()) || collections < 3 {
        billed += stats(&server, true)
            .get(&path)
            .map_or(0, |u| u["bytes_up"].as_u64().unwrap());
        collections += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut total = 0;
    let mut conns = Vec::new();
    for s in senders {
        let (sent, conn) = s.join().unwrap();
        total += sent;
        conns.push(conn);
    }
    // Wait for every byte to reach the backend, then collect the rest.
    let deadline = std::time::Instant::now() + WAIT;
    while received.load(Ordering::Relaxed) < total {
        assert!(std::time::Instant::now() < deadline, "bytes did not arrive");
        std::thread::sleep(Duration::from_millis(10));
    }
    billed += stats(&server, true)
        .get(&path)
        .map_or(0, |u| u["bytes_up"].as_u64().unwrap());
    assert!(collections >= 3);
    assert_eq!(billed, total, "billed over {collections} collections");
}

/// Sample name -> every (labels, value) of that name.
type Samples = HashMap<String, Vec<(HashMap<String, String>, f64)>>;

/// Parses a metrics page with the official Python client's parser; returns
/// sample name -> [(labels, value)].
fn parse_metrics(page: &str) -> Samples {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;
    let output = run_with_input(
        Command::new("python3").args(["-c", script]),
        page.as_bytes(),
    );
    assert!(
        output.status.success(),
        "the Prometheus parser refused the page (is prometheus_client installed?):\n{page}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn sum(samples: &Samples, name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .get(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .iter()
        .filter(|(labels, _)| {
            label.is_none_or(|(k, v)| labels.get(k).map(String::as_str) == Some(v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_parse_and_count_what_happened() {
    let server = Server::start(&["-force-tls", "-metrics-per-user"]);
    let path = unique_path("metrics");
    server.add(&[(&path, echo_backend()), ("/dead", dead_addr())]);
    // A ping and a refused command are not route changes; a del is one (it is broadcast
    // even when it finds nobody).
    assert_eq!(server.post(r#"{"opt":9}"#).1["res"], 1);
    assert_eq!(
        server.post(r#"{"opt":1,"args_bunch":[{"path":"x"}]}"#).1["res"],
        2
    );
    server.del(&["/never-added"]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, &path, "").0, 101);
    let data = pattern(10_000, 3);
    conn.write_all(&masked_frame(true, 0x2, &data)).unwrap();
    assert!(read_data(&mut conn, data.len()) == data);
    let mut probe = server.connect();
    assert_eq!(raw_upgrade(&mut probe, "/nobody", "").0, 404);
    let mut dead = server.connect();
    assert_eq!(raw_upgrade(&mut dead, "/dead", "").0, 502);

    let (status, head, body) = http_request(
        server.controller,
        "GET /metrics HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/plain"));
    let samples = parse_metrics(std::str::from_utf8(&body).unwrap());
    assert_eq!(sum(&samples, "mtt_users", None), 2.0);
    assert_eq!(
        sum(&samples, "mtt_tunnels_open", Some(("kind", "plain"))),
        1.0
    );
    assert_eq!(
        sum(&samples, "mtt_tunnels_total", Some(("kind", "plain"))),
        1.0
    );
    assert_eq!(
        sum(&samples, "mtt_bytes_total", Some(("direction", "up"))),
        10_000.0
    );
    assert_eq!(
        sum(&samples, "mtt_bytes_total", Some(("direction", "down"))),
        10_000.0
    );
    assert!(
        sum(
            &samples,
            "mtt_refused_total",
            Some(("reason", "unknown_path"))
        ) >= 1.0
    );
    assert_eq!(sum(&samples, "mtt_backend_dial_failures_total", None), 1.0);
    // The add and the del were timed, each into exactly one bucket.
    assert_eq!(sum(&samples, "mtt_route_change_seconds_count", None), 2.0);
    let buckets = &samples["mtt_route_change_seconds_bucket"];
    let inf = buckets.iter().find(|(l, _)| l["le"] == "+Inf").unwrap().1;
    assert_eq!(inf, 2.0);
    assert!(sum(&samples, "mtt_route_change_seconds_sum", None) > 0.0);
    assert_eq!(
        sum(&samples, "mtt_user_bytes_total", Some(("path", &path))),
        20_000.0
    );
    assert_eq!(
        sum(&samples, "mtt_user_tunnels_open", Some(("path", &path))),
        1.0
    );

    // Without the flag there are no per-user series.
    let server = Server::plain();
    let (_, _, body) = http_request(
        server.controller,
        "GET /metrics HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    );
    let samples = parse_metrics(std::str::from_utf8(&body).unwrap());
    assert!(!samples.contains_key("mtt_user_bytes_total"));
    assert_eq!(sum(&samples, "mtt_tunnels_open", None), 0.0);
    assert_eq!(sum(&samples, "mtt_route_change_seconds_count", None), 0.0);
}

#[test]
fn sync_applies_the_difference_as_one_batch() {
    let server = Server::plain();
    let (one, two, three, four) = (
        echo_backend(),
        echo_backend(),
        echo_backend(),
        echo_backend(),
    );
    server.add(&[("/a", one), ("/b", two), ("/c", three)]);
    let body = json!({"opt":4,"args_bunch":[
        {"path":"/a","dst":one.to_string()},
        {"path":"/b","dst":four.to_string()},
        {"path":"/d","dst":four.to_string()}]})
    .to_string();
    let (status, reply) = server.post(&body);
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        json!({"res":1,"err_string":"","current_users":3,"added":1,"changed":1,"removed":1})
    );
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, "/c", "").0, 404);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, "/d", "").0, 101);
    // The same sync again changes nothing; an empty one removes everyone.
    let (_, reply) = server.post(&body);
    assert_eq!(
        (
            reply["added"].as_u64(),
            reply["changed"].as_u64(),
            reply["removed"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    let (_, reply) = server.post(r#"{"opt":4,"args_bunch":[]}"#);
    assert_eq!(
        (reply["removed"].as_u64(), reply["current_users"].as_u64()),
        (Some(3), Some(0))
    );
    // A bad entry refuses the whole sync.
    server.add(&[("/keep", one)]);
    let (_, reply) = server.post(r#"{"opt":4,"args_bunch":[{"path":"/x","dst":"nope"}]}"#);
    assert_eq!(
        (reply["res"].as_u64(), reply["current_users"].as_u64()),
        (Some(2), Some(1))
    );
}

#[test]
fn kick_closes_the_open_tunnels_of_a_user_only() {
    let server = Server::tls();
    let kicked_path = unique_path("kicked");
    let kept_path = unique_path("kept");
    server.add(&[(&kicked_path, echo_backend()), (&kept_path, echo_backend())]);
    let mut kicked: Vec<_> = (0..2)
        .map(|_| {
            let mut conn = server.connect();
            assert_eq!(raw_upgrade(&mut conn, &kicked_path, "").0, 101);
            conn
        })
        .collect();
    let mut kept = server.connect();
    assert_eq!(raw_upgrade(&mut kept, &kept_path, "").0, 101);
    let (status, reply) =
        server.post(&json!({"opt":6,"args_bunch":[{"path":kicked_path}]}).to_string());
    assert_eq!(status, 200);
    assert_eq!(reply["kicked"], 2);
    for conn in &mut kicked {
        assert_eq!(read_until_close(conn).1, Some(1008));
    }
    kept.write_all(&masked_frame(true, 0x2, b"still here"))
        .unwrap();
    assert_eq!(read_data(&mut kept, 10), b"still here");
    // Kicking is not deleting: the user can connect again.
    assert_eq!(reply["current_users"], 2);
    let mut again = server.connect();
    assert_eq!(raw_upgrade(&mut again, &kicked_path, "").0, 101);
}

#[test]
fn state_survives_kill_9_with_every_acknowledged_change() {
    let dir = temp_dir("state");
    let state = dir.join("users.state");
    let state_arg = state.to_str().unwrap().to_string();
    let server = Server::start(&["-state", &state_arg]);
    server.add(&[("/first", dead_addr())]);
    // A stream of changes from another thread, killed in the middle.
    let controller = server.controller;
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writer = {
        let acknowledged = Arc::clone(&acknowledged);
        std::thread::spawn(move || {
            for i in 0u64.. {
                let body =
                    json!({"opt":1,"args_bunch":[{"path":format!("/u{i}"),"dst":"127.0.0.1:9"}]})
                        .to_string();
                let Ok(mut stream) = TcpStream::connect(controller) else {
                    return;
                };
                let request = format!(
                    "POST / HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(request.as_bytes()).is_err() {
                    return;
                }
                let mut response = Vec::new();
                let _ = stream.read_to_end(&mut response);
                if !response.starts_with(b"HTTP/1.1 200") {
                    return;
                }
                acknowledged.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    while acknowledged.load(Ordering::SeqCst) < 50 {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(server); // SIGKILL
    writer.join().unwrap();
    let acked = acknowledged.load(Ordering::SeqCst);

    let server = Server::start(&["-state", &state_arg]);
    let (_, reply) = server.post(r#"{"opt":9}"#);
    let users = reply["current_users"].as_u64().unwrap();
    // Every acknowledged add is there; at most the one in flight at the kill is too.
    assert!(
        users == acked + 1 || users == acked + 2,
        "{users} users, {acked} acknowledged adds"
    );
    for i in [0, acked / 2, acked - 1] {
        let mut conn = server.connect();
        assert_eq!(
            raw_upgrade(&mut conn, &format!("/u{i}"), "").0,
            502,
            "/u{i}"
        );
    }
    drop(server);

    // A corrupt state file stops the start, naming the file.
    std::fs::write(&state, b"{\"upsert\":[[\"/a\",\"h:1\"]]}\nnot json\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mtt-mu-server"))
        .args([
            "-b",
            "127.0.0.1:0",
            "-c",
            "127.0.0.1:0",
            "-state",
            &state_arg,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&state_arg) && stderr.contains("line 2"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn controller_connections_beyond_the_cap_are_closed() {
    let server = Server::start(&["-controller-conns", "2"]);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.controller).unwrap())
        .collect();
    // Both held connections are accepted (a ping on each proves it), then a third is
    // closed without an answer.
    let mut held = held;
    for stream in &mut held {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let ping = r#"{"opt":9}"#;
        stream
            .write_all(
                format!(
                    "POST / HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{ping}",
                    ping.len()
                )
                .as_bytes(),
            )
            .unwrap();
        assert_eq!(read_response(stream).0, 200);
    }
    let mut third = TcpStream::connect(server.controller).unwrap();
    third.set_read_timeout(Some(WAIT)).unwrap();
    let _ = third.write_all(b"POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 9\r\n\r\n{\"opt\":9}");
    let mut buf = [0u8; 16];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)));
    drop(held);
    // With the held ones gone, the controller answers again.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, _, _) = http_request(
            server.controller,
            "POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"opt\":9}",
        );
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
    }
}
