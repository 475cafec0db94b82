//! The controller over real HTTP: every command, every error, the limits,
//! keep-alive, and that each reply is seen by the data port at once.

use std::io::Write;
use std::net::TcpStream;

use serde_json::{json, Value};
use testkit::prelude::*;

/// POSTs `body` and checks the reply's shape: JSON content type, all three keys.
fn post(server: &Server, body: &str) -> (u16, Value) {
    let (status, head, raw) = http_request(
        server.controller,
        &format!(
            "POST /any/path HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    check_reply(&head, &raw);
    (status, serde_json::from_slice(&raw).unwrap())
}

fn check_reply(head: &str, raw: &[u8]) {
    assert_eq!(
        header(head, "content-type").as_deref(),
        Some("application/json")
    );
    let reply: Value = serde_json::from_slice(raw).expect("JSON body");
    let object = reply.as_object().expect("object");
    assert_eq!(object.len(), 3, "{reply}");
    assert!(object["res"].is_u64());
    assert!(object["err_string"].is_string());
    assert!(object["current_users"].is_u64());
}

fn users(server: &Server) -> u64 {
    let (status, reply) = post(server, r#"{"opt":9}"#);
    assert_eq!((status, reply["res"].as_u64()), (200, Some(1)));
    assert_eq!(reply["err_string"], "");
    reply["current_users"].as_u64().unwrap()
}

#[test]
fn ping_add_del_reset() {
    let server = Server::plain();
    assert_eq!(users(&server), 0);
    let (status, reply) = post(
        &server,
        r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"127.0.0.1:1"},{"path":"/b","dst":"localhost:2"},{"path":"/c","dst":"[::1]:3"}]}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(reply, json!({"res":1,"err_string":"","current_users":3}));
    // Overwriting an existing path does not add a user.
    let (_, reply) = post(
        &server,
        r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"127.0.0.1:9"}]}"#,
    );
    assert_eq!(reply["current_users"], 3);
    // Unknown paths in a delete are ignored.
    let (_, reply) = post(
        &server,
        r#"{"opt":2,"args_bunch":[{"path":"/a"},{"path":"/zzz"}]}"#,
    );
    assert_eq!(reply, json!({"res":1,"err_string":"","current_users":2}));
    let (_, reply) = post(&server, r#"{"opt":3}"#);
    assert_eq!(reply, json!({"res":1,"err_string":"","current_users":0}));
    assert_eq!(users(&server), 0);
}

#[test]
fn reset_and_ping_ignore_args_bunch() {
    let server = Server::plain();
    server.add(&[("/x", dead_addr())]);
    let (_, reply) = post(&server, r#"{"opt":9,"args_bunch":[{"dst":"nonsense"}]}"#);
    assert_eq!(reply["res"], 1);
    assert_eq!(reply["current_users"], 1);
    let (_, reply) = post(&server, r#"{"opt":3,"args_bunch":[{}]}"#);
    assert_eq!(reply["res"], 1);
    assert_eq!(reply["current_users"], 0);
}

#[test]
fn overwrite_and_later_duplicate_route_to_the_last_dst() {
    let server = Server::plain();
    let (first, first_rx) = capture_backend();
    let (second, second_rx) = capture_backend();
    let path = "/dup";
    let body = json!({"opt":1,"args_bunch":[
        {"path":path,"dst":first.to_string()},
        {"path":path,"dst":second.to_string()}]})
    .to_string();
    assert_eq!(post(&server, &body).1["current_users"], 1);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, path, "").0, 101);
    assert!(second_rx.recv_timeout(WAIT).is_ok());
    assert!(first_rx.try_recv().is_err());
    // Overwrite back to the first backend: new tunnels go there.
    server.add(&[(path, first)]);
    let mut conn = server.connect();
    assert_eq!(raw_upgrade(&mut conn, path, "").0, 101);
    assert!(first_rx.recv_timeout(WAIT).is_ok());
}

#[test]
fn command_errors_are_res_2_and_change_nothing() {
    let server = Server::plain();
    server.add(&[("/keep", dead_addr())]);
    let cases = [
        (r#"{}"#, "invalid opt"),
        (r#"{"opt":0}"#, "invalid opt"),
        (r#"{"opt":10}"#, "invalid opt"),
        (r#"{"opt":-1}"#, "invalid opt"),
        (
            r#"{"args_bunch":[{"path":"/a","dst":"h:1"}]}"#,
            "invalid opt",
        ),
        (r#"{"opt":1}"#, "args_bunch"),
        (r#"{"opt":1,"args_bunch":null}"#, "args_bunch"),
        (r#"{"opt":1,"args_bunch":[]}"#, "args_bunch"),
        (r#"{"opt":2}"#, "args_bunch"),
        (r#"{"opt":2,"args_bunch":[]}"#, "args_bunch"),
        (r#"{"opt":1,"args_bunch":[{"dst":"h:1"}]}"#, "path"),
        (r#"{"opt":1,"args_bunch":[{"path":"/new"}]}"#, "dst"),
        (
            r#"{"opt":1,"args_bunch":[{"path":"/new","dst":"nohostport"}]}"#,
            "HOST:PORT",
        ),
        (
            r#"{"opt":1,"args_bunch":[{"path":"/new","dst":"h:99999"}]}"#,
            "HOST:PORT",
        ),
        (
            r#"{"opt":1,"args_bunch":[{"path":"/new","dst":":80"}]}"#,
            "HOST:PORT",
        ),
        (
            r#"{"opt":1,"args_bunch":[{"path":"new","dst":"h:1"}]}"#,
            "/",
        ),
        (r#"{"opt":1,"args_bunch":[{"path":"","dst":"h:1"}]}"#, "/"),
        (r#"{"opt":2,"args_bunch":[{}]}"#, "path"),
        (r#"{"opt":2,"args_bunch":[{"path":"keep"}]}"#, "/"),
        // One bad entry spoils the batch: /ok must not be added, /keep not deleted.
        (
            r#"{"opt":1,"args_bunch":[{"path":"/ok","dst":"h:1"},{"path":"/bad","dst":"h"}]}"#,
            "args_bunch[1]",
        ),
        (
            r#"{"opt":2,"args_bunch":[{"path":"/keep"},{"path":"nope"}]}"#,
            "args_bunch[1]",
        ),
    ];
    for (body, needle) in cases {
        let (status, reply) = post(&server, body);
        assert_eq!(status, 200, "{body}");
        assert_eq!(reply["res"], 2, "{body}");
        let why = reply["err_string"].as_str().unwrap();
        assert!(why.contains(needle), "{body}: {why}");
        assert_eq!(reply["current_users"], 1, "{body}");
    }
    // /keep still routes.
    let mut conn = server.connect();
    assert_ne!(raw_upgrade(&mut conn, "/keep", "").0, 404);
}

#[test]
fn request_errors_get_http_status_and_json() {
    let server = Server::plain();
    server.add(&[("/keep", dead_addr())]);
    for body in [
        "",
        "null",
        "[]",
        r#"[{"opt":9}]"#,
        "{",
        r#"{"opt":9} {"opt":9}"#,
        r#"{"opt":9}x"#,
        r#"{"opt":"1"}"#,
        r#"{"opt":1.5}"#,
        r#"{"opt":true}"#,
        r#"{"opt":18446744073709551616}"#,
        r#"{"opt":1,"args_bunch":{"path":"/a","dst":"h:1"}}"#,
        r#"{"opt":1,"args_bunch":[{"path":["/a"],"dst":"h:1"}]}"#,
        r#"{"opt":1,"args_bunch":[{"path":"/a","dst":1}]}"#,
        r#"{"opt":3,"opt":3}"#,
        "\u{feff}{\"opt\":9}",
    ] {
        let (status, reply) = post(&server, body);
        assert_eq!(status, 400, "{body:?}");
        assert_eq!(reply["res"], 2, "{body:?}");
        assert!(!reply["err_string"].as_str().unwrap().is_empty());
        assert_eq!(reply["current_users"], 1);
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(
        post(&server, &format!(r#"{{"opt":1,"args_bunch":{deep}}}"#)).0,
        400
    );
    // Deep nesting in an unknown field is skipped or refused, never a crash.
    let status = post(&server, &format!(r#"{{"opt":9,"x":{deep}}}"#)).0;
    assert!(status == 200 || status == 400, "{status}");

    for method in ["GET", "PUT", "DELETE"] {
        let (status, head, raw) = http_request(
            server.controller,
            &format!("{method} / HTTP/1.1\r\nHost: c\r\nContent-Length: 0\r\n\r\n"),
        );
        assert_eq!(status, 405, "{method}");
        assert_eq!(header(&head, "allow").as_deref(), Some("POST"));
        check_reply(&head, &raw);
    }
    assert_eq!(users(&server), 1);
}

/// An add command padded with spaces to exactly `size` bytes.
fn padded_add(size: usize) -> String {
    let body = r#"{"opt":1,"args_bunch":[{"path":"/big","dst":"127.0.0.1:1"}]}"#;
    format!("{body}{}", " ".repeat(size - body.len()))
}

#[test]
fn body_limit_is_exactly_2_mib() {
    let server = Server::plain();
    let (status, reply) = post(&server, &padded_add(2 * 1024 * 1024));
    assert_eq!((status, reply["res"].as_u64()), (200, Some(1)), "{reply}");
    assert_eq!(reply["current_users"], 1);

    // One byte more is refused from the header alone, before the body is sent.
    let mut stream = TcpStream::connect(server.controller).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 2097153\r\n\r\n")
        .unwrap();
    let (status, head, raw) = read_response(&mut stream);
    assert_eq!(status, 413);
    check_reply(&head, &raw);
    assert_eq!(users(&server), 1);
}

#[test]
fn keep_alive_carries_many_commands_on_one_connection() {
    let server = Server::plain();
    let mut stream = TcpStream::connect(server.controller).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..20 {
        let body = json!({"opt":1,"args_bunch":[{"path":format!("/k{i}"),"dst":"127.0.0.1:1"}]})
            .to_string();
        stream
            .write_all(
                format!(
                    "POST / HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        let (status, head, raw) = read_response(&mut stream);
        assert_eq!(status, 200);
        check_reply(&head, &raw);
        let reply: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(reply["current_users"], i + 1);
    }
    // Two requests in one write (pipelined) are answered in order.
    let ping = r#"{"opt":9}"#;
    let one = format!(
        "POST / HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\n\r\n{ping}",
        ping.len()
    );
    stream.write_all(format!("{one}{one}").as_bytes()).unwrap();
    for _ in 0..2 {
        let (status, _, raw) = read_response(&mut stream);
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_slice::<Value>(&raw).unwrap()["current_users"],
            20
        );
    }
}

#[test]
fn large_batches_apply_whole() {
    let server = Server::plain();
    let args: Vec<Value> = (0..20_000)
        .map(|i| json!({"path": format!("/u{i}"), "dst": "127.0.0.1:9"}))
        .collect();
    let (status, reply) = post(&server, &json!({"opt":1,"args_bunch":args}).to_string());
    assert_eq!(
        (status, reply["current_users"].as_u64()),
        (200, Some(20_000))
    );
    let args: Vec<Value> = (0..10_000)
        .map(|i| json!({"path": format!("/u{i}")}))
        .collect();
    let (_, reply) = post(&server, &json!({"opt":2,"args_bunch":args}).to_string());
    assert_eq!(reply["current_users"], 10_000);
    // Every worker has the same table: the deleted are 404, the kept are routed.
    for _ in 0..8 {
        let mut conn = server.connect();
        assert_eq!(raw_upgrade(&mut conn, "/u5", "").0, 404);
        let mut conn = server.connect();
        assert_eq!(raw_upgrade(&mut conn, "/u15000", "").0, 502);
    }
}

#[test]
fn many_concurrent_posts_all_apply() {
    let server = Server::plain();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let controller = server.controller;
            std::thread::spawn(move || {
                for i in 0..25 {
                    let body = json!({"opt":1,"args_bunch":[{"path":format!("/c{t}-{i}"),"dst":"127.0.0.1:1"}]}).to_string();
                    let (status, _, raw) = http_request(
                        controller,
                        &format!("POST / HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
                    );
                    assert_eq!(status, 200);
                    assert_eq!(serde_json::from_slice::<Value>(&raw).unwrap()["res"], 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(users(&server), 200);
}
