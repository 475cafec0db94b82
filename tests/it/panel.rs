//! Panel sync (`-panel`) against the panel simulator of the kit (`testkit::panel`), over
//! real HTTP: users pulled with their limits and ETags, traffic pushed losslessly,
//! client addresses reported, both for our protocol and for UniProxy (V2board / Xboard);
//! a panel that fails in every way changes nothing and is reported on `/metrics`; a
//! list that would remove too many users is refused; a fleet converges within one
//! interval; a node started while the panel is down serves its persisted users.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::panel::{Failure, Panel};
use testkit::prelude::*;
use tungstenite::Message;

const TOKEN: &str = "node-token-1";

/// The users the server has now (ping's `current_users`).
fn user_count(server: &Server) -> u64 {
    let (_, reply) = server.post(r#"{"opt":9}"#);
    reply["current_users"].as_u64().unwrap()
}

/// The server's counters entry for `path` (opt 5), if the user exists.
fn stats(server: &Server, path: &str) -> Option<Value> {
    let body = json!({"opt": 5, "args_bunch": [{"path": path}]}).to_string();
    let (_, reply) = server.post(&body);
    reply["users"].as_array()?.first().cloned()
}

/// Sends `n` bytes through a plain tunnel to `path` and reads the echo; the open tunnel.
fn echo(server: &Server, path: &str, n: usize) -> Ws {
    let mut ws = server.ws(path, &["smux_off"]);
    let payload = pattern(n, 7);
    ws.send(Message::Binary(payload.clone().into())).unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < n {
        match ws.read().expect("echo") {
            Message::Binary(b) => echoed.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(echoed == payload);
    ws
}

fn close(mut ws: Ws) {
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
}

/// The status of an upgrade to `path` on a fresh connection.
fn upgrade_status(server: &Server, path: &str) -> u16 {
    let mut stream = server.connect();
    raw_upgrade(&mut stream, path, "Sec-WebSocket-Protocol: smux_off\r\n").0
}

/// A node on `panel` (our protocol), with these extra flags.
fn mtt_node(panel: &Panel, interval: &str, extra: &[&str]) -> Server {
    let url = panel.url();
    let mut args = vec![
        "-panel",
        url.as_str(),
        "-panel-token",
        TOKEN,
        "-panel-interval",
        interval,
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn mtt_user(path: &str, dst: std::net::SocketAddr) -> Value {
    json!({"path": path, "dst": dst.to_string()})
}

#[test]
fn mtt_users_are_pulled_with_limits_and_an_unchanged_list_costs_a_304() {
    let panel = Panel::start(TOKEN);
    let dst = echo_backend();
    panel.set_mtt_users(vec![
        mtt_user("/pulled-a", dst),
        json!({"path": "/pulled-b", "dst": dst.to_string(), "conn_limit": 3, "speed_limit": 1048576}),
    ]);
    let server = mtt_node(&panel, "300ms", &[]);
    eventually("the users pulled", || user_count(&server) == 2);
    let b = stats(&server, "/pulled-b").unwrap();
    assert_eq!(
        (b["conn_limit"].as_u64(), b["speed_limit"].as_u64()),
        (Some(3), Some(1048576))
    );
    close(echo(&server, "/pulled-a", 10_000));

    // Unchanged: the node asks with If-None-Match and gets 304s.
    eventually("304s", || panel.count("users", 304) >= 2);
    assert!(metric(&server, "mtt_panel_pulls_total", "result=\"unchanged\"") >= 2.0);
    assert!(
        metric(
            &server,
            "mtt_panel_last_success_timestamp_seconds",
            "op=\"pull\""
        ) > 1.0e9
    );
    assert_eq!(
        metric(&server, "mtt_panel_consecutive_failures", "op=\"pull\""),
        0.0
    );

    // The panel owns the users: the controller refuses changes, answers reads.
    let (status, reply) =
        server.post(r#"{"opt":1,"args_bunch":[{"path":"/manual","dst":"127.0.0.1:9"}]}"#);
    assert_eq!((status, reply["res"].as_u64()), (200, Some(2)), "{reply}");
    assert!(
        reply["err_string"].as_str().unwrap().contains("panel"),
        "{reply}"
    );
    let (_, reply) = server.post(r#"{"opt":7}"#);
    assert_eq!(reply["res"].as_u64(), Some(2), "{reply}");
    assert_eq!(user_count(&server), 2);

    // A change in the panel: one removed (its open tunnel is kicked), one added.
    let mut open = echo(&server, "/pulled-a", 100);
    panel.set_mtt_users(vec![
        json!({"path": "/pulled-b", "dst": dst.to_string(), "conn_limit": 5}),
        mtt_user("/pulled-c", dst),
    ]);
    eventually("the change pulled", || {
        stats(&server, "/pulled-c").is_some()
    });
    assert_eq!(user_count(&server), 2);
    assert_eq!(
        stats(&server, "/pulled-b").unwrap()["conn_limit"].as_u64(),
        Some(5)
    );
    assert_eq!(upgrade_status(&server, "/pulled-a"), 404);
    let kicked = loop {
        match open.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    assert_eq!(kicked, Some(1008), "a user removed in the panel is kicked");
}

#[test]
fn mtt_traffic_is_acknowledged_only_on_a_2xx_and_never_lost_or_doubled() {
    let panel = Panel::start(TOKEN);
    let dst = echo_backend();
    panel.set_mtt_users(vec![mtt_user("/billed", dst)]);
    let server = mtt_node(&panel, "300ms", &[]);
    eventually("the user pulled", || user_count(&server) == 1);

    // The panel refuses reports for a while: the node keeps the counts.
    panel.fail_only(&["traffic"], Failure::Status(503));
    let open = echo(&server, "/billed", 30_000);
    eventually("refused pushes", || panel.count("traffic", 503) >= 3);
    assert!(metric(&server, "mtt_panel_consecutive_failures", "op=\"push\"") >= 1.0);
    // The open tunnel's client is reported alive meanwhile.
    eventually("the client reported alive", || {
        panel.alive().get("/billed") == Some(&vec!["127.0.0.1".to_string()])
    });
    close(open);
    close(echo(&server, "/billed", 20_000));

    // Back: everything arrives, once.
    panel.fail(None);
    eventually("the traffic pushed", || {
        panel.traffic("/billed") == [50_000, 50_000]
    });
    let taken = panel.report_ids().len();
    eventually("more pushes", || panel.report_ids().len() >= taken + 3);
    assert_eq!(
        panel.traffic("/billed"),
        [50_000, 50_000],
        "nothing doubled"
    );
    assert_eq!(
        metric(&server, "mtt_panel_consecutive_failures", "op=\"push\""),
        0.0
    );
    eventually("no client alive", || !panel.alive().contains_key("/billed"));
}

#[test]
fn a_misbehaving_panel_changes_nothing_and_says_so() {
    let panel = Panel::start(TOKEN);
    let dst = echo_backend();
    panel.set_mtt_users(vec![mtt_user("/kept-a", dst), mtt_user("/kept-b", dst)]);
    let server = mtt_node(&panel, "300ms", &[]);
    eventually("the users pulled", || user_count(&server) == 2);

    for failure in [
        Failure::Status(500),
        Failure::Garbage,
        Failure::Down,
        Failure::Slow(Duration::from_secs(4)),
    ] {
        panel.fail(Some(failure.clone()));
        // A change the node must not see while the panel fails.
        panel.set_mtt_users(vec![mtt_user("/kept-a", dst)]);
        let failed = metric(&server, "mtt_panel_pulls_total", "result=\"failed\"");
        eventually(&format!("pulls failing with {failure:?}"), || {
            metric(&server, "mtt_panel_pulls_total", "result=\"failed\"") >= failed + 2.0
        });
        assert!(
            metric(&server, "mtt_panel_consecutive_failures", "op=\"pull\"") >= 2.0,
            "{failure:?}"
        );
        assert_eq!(user_count(&server), 2, "{failure:?}");
        close(echo(&server, "/kept-b", 1000));
        panel.set_mtt_users(vec![mtt_user("/kept-a", dst), mtt_user("/kept-b", dst)]);
        panel.fail(None);
        eventually("recovery", || {
            metric(&server, "mtt_panel_consecutive_failures", "op=\"pull\"") == 0.0
        });
    }
    let log = server.log.lock().unwrap().clone();
    for needle in [
        "panel pull: panel answered HTTP 500",
        "panel pull: panel sent a bad body",
        "panel pull: panel unreachable",
    ] {
        assert!(log.contains(needle), "no {needle:?} in\n{log}");
    }
}

#[test]
fn backoff_spaces_out_retries_while_the_panel_is_down() {
    let panel = Panel::start(TOKEN);
    panel.fail(Some(Failure::Status(502)));
    let server = mtt_node(&panel, "4s", &[]);
    std::thread::sleep(Duration::from_millis(3500));
    // 1 s, then 2 s, ... (with jitter: between half and all of each): at most 5 pulls
    // in 3.5 s, against 35 a retry every 100 ms would make.
    let pulls = panel.count("users", 502);
    assert!((2..=5).contains(&pulls), "{pulls} pulls");
    assert!(metric(&server, "mtt_panel_consecutive_failures", "op=\"pull\"") >= 2.0);
}

#[test]
fn a_list_removing_too_many_users_is_refused_unless_allowed() {
    let panel = Panel::start(TOKEN);
    let dst = echo_backend();
    let users: Vec<Value> = (0..30)
        .map(|i| mtt_user(&format!("/many-{i}"), dst))
        .collect();
    panel.set_mtt_users(users);
    let careful = mtt_node(&panel, "300ms", &[]);
    let allowing = mtt_node(&panel, "300ms", &["-panel-max-remove", "1"]);
    eventually("the users pulled", || {
        user_count(&careful) == 30 && user_count(&allowing) == 30
    });

    panel.fail(Some(Failure::EmptyList));
    eventually("the empty list applied where allowed", || {
        user_count(&allowing) == 0
    });
    eventually("the empty list refused", || {
        metric(&careful, "mtt_panel_pulls_total", "result=\"refused\"") >= 2.0
    });
    assert_eq!(user_count(&careful), 30);
    close(echo(&careful, "/many-3", 100));
    let log = careful.log.lock().unwrap().clone();
    assert!(log.contains("would remove 30 of 30 users"), "{log}");

    // Removing 20 of 30 (two thirds) is refused too; 10 of 30 is fine.
    panel.fail(None);
    panel.set_mtt_users(
        (0..10)
            .map(|i| mtt_user(&format!("/many-{i}"), dst))
            .collect(),
    );
    let refused = metric(&careful, "mtt_panel_pulls_total", "result=\"refused\"");
    eventually("two thirds refused", || {
        metric(&careful, "mtt_panel_pulls_total", "result=\"refused\"") > refused
    });
    assert_eq!(user_count(&careful), 30);
    panel.set_mtt_users(
        (0..20)
            .map(|i| mtt_user(&format!("/many-{i}"), dst))
            .collect(),
    );
    eventually("a third removed", || user_count(&careful) == 20);
}

#[test]
fn a_node_started_while_the_panel_is_down_serves_its_persisted_users() {
    let panel = Panel::start(TOKEN);
    let dst = echo_backend();
    panel.set_mtt_users(vec![mtt_user("/persisted", dst)]);
    let dir = temp_dir("panel-state");
    let state = dir.join("users.state");
    let state = state.to_str().unwrap();
    {
        let server = mtt_node(&panel, "300ms", &["-state", state]);
        eventually("the user pulled", || user_count(&server) == 1);
    }
    panel.fail(Some(Failure::Down));
    let server = mtt_node(&panel, "300ms", &["-state", state]);
    assert_eq!(user_count(&server), 1);
    close(echo(&server, "/persisted", 5000));
    eventually("the failures counted", || {
        metric(&server, "mtt_panel_consecutive_failures", "op=\"pull\"") >= 1.0
    });
    assert_eq!(
        metric(
            &server,
            "mtt_panel_last_success_timestamp_seconds",
            "op=\"pull\""
        ),
        0.0
    );
    // The panel returns: the node catches up.
    panel.fail(None);
    panel.set_mtt_users(vec![
        mtt_user("/persisted", dst),
        mtt_user("/returned", dst),
    ]);
    eventually("the new list pulled", || user_count(&server) == 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_fleet_converges_on_one_change_within_one_interval() {
    const INTERVAL: Duration = Duration::from_secs(2);
    let panel = Panel::start(TOKEN);
    let dst = echo_backend();
    panel.set_mtt_users(vec![mtt_user("/fleet-a", dst)]);
    let nodes: Vec<Server> = (0..3)
        .map(|i| {
            let id = format!("node{i}");
            mtt_node(&panel, "2s", &["-node-id", &id])
        })
        .collect();
    for node in &nodes {
        eventually("the first list", || user_count(node) == 1);
    }
    let changed = Instant::now();
    panel.set_mtt_users(vec![mtt_user("/fleet-a", dst), mtt_user("/fleet-b", dst)]);
    let version = panel.version();
    for node in &nodes {
        eventually("the change on every node", || {
            stats(node, "/fleet-b").is_some()
        });
    }
    // When each node was given the new list, by the panel's clock.
    for i in 0..3 {
        let id = format!("node{i}");
        let given = panel
            .requests()
            .into_iter()
            .find(|r| r.node_id.as_deref() == Some(&id) && r.version == Some(version))
            .unwrap_or_else(|| panic!("{id} never pulled version {version}"));
        let after = given.at.duration_since(changed);
        assert!(
            after <= INTERVAL + Duration::from_millis(500),
            "{id} took {after:?} for an interval of {INTERVAL:?}"
        );
    }
    close(echo(&nodes[2], "/fleet-b", 100));
}

// ---------------------------------------------------------------------------------------
// UniProxy (V2board / Xboard)

fn uniproxy_node(panel: &Panel, dst: std::net::SocketAddr, extra: &[&str]) -> Server {
    let url = panel.url();
    let dst = dst.to_string();
    let mut args = vec![
        "-panel",
        url.as_str(),
        "-panel-kind",
        "uniproxy",
        "-panel-token",
        TOKEN,
        "-node-id",
        "7",
        "-panel-dst",
        dst.as_str(),
        "-panel-interval",
        "5s",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn uniproxy_users_traffic_alive_and_devices_elsewhere() {
    let panel = Panel::start(TOKEN);
    // The panel's config asks for 1 s intervals, overriding -panel-interval 5s.
    panel.set_intervals(1, 1);
    panel.set_uniproxy_users(vec![
        json!({"id": 1, "uuid": "3b0e-uuid-1", "speed_limit": 0, "device_limit": 1}),
        json!({"id": 2, "uuid": "3b0e-uuid-2", "speed_limit": 8, "device_limit": null}),
    ]);
    let dst = echo_backend();
    let server = uniproxy_node(&panel, dst, &[]);
    eventually("the users pulled", || user_count(&server) == 2);
    assert_eq!(panel.count("user", 403) + panel.count("user", 400), 0);
    // 8 Mbit/s is 1,000,000 bytes/s; the path is the template's.
    let two = stats(&server, "/3b0e-uuid-2").unwrap();
    assert_eq!(two["speed_limit"].as_u64(), Some(1_000_000));
    assert_eq!(
        stats(&server, "/3b0e-uuid-1").unwrap()["device_limit"].as_u64(),
        Some(1)
    );
    eventually("304s", || panel.count("user", 304) >= 1);

    // Traffic under the user's id, alive with its address.
    let open = echo(&server, "/3b0e-uuid-2", 40_000);
    eventually("alive", || {
        panel.alive().get("2") == Some(&vec!["127.0.0.1".to_string()])
    });
    close(open);
    eventually("the traffic pushed", || {
        panel.traffic("2") == [40_000, 40_000]
    });

    // User 1 has its one device on another node: refused here (the unknown-path 404)...
    assert_eq!(upgrade_status(&server, "/3b0e-uuid-1"), 101);
    panel.set_alive_list(&[("1", 1)]);
    eventually("the device elsewhere counted", || {
        upgrade_status(&server, "/3b0e-uuid-1") == 404
    });
    // ...until it leaves there.
    panel.set_alive_list(&[]);
    eventually("the device elsewhere gone", || {
        upgrade_status(&server, "/3b0e-uuid-1") == 101
    });

    // A panel that drops a user: removed here too.
    panel.set_uniproxy_users(vec![
        json!({"id": 2, "uuid": "3b0e-uuid-2", "speed_limit": 8}),
    ]);
    eventually("the user removed", || user_count(&server) == 1);
}

#[test]
fn uniproxy_with_a_wrong_token_or_a_bad_list_keeps_the_users() {
    let panel = Panel::start(TOKEN);
    panel.set_intervals(1, 1);
    panel.set_uniproxy_users(vec![json!({"id": 5, "uuid": "kept", "device_limit": 0})]);
    let dst = echo_backend();
    let server = uniproxy_node(&panel, dst, &["-panel-path", "/ws/{id}/{uuid}"]);
    eventually("the user pulled", || user_count(&server) == 1);
    close(echo(&server, "/ws/5/kept", 100));

    // A user the list cannot carry (a uuid that is no path): the whole list is refused.
    panel.set_uniproxy_users(vec![
        json!({"id": 5, "uuid": "kept"}),
        json!({"id": 6, "uuid": "bad/uuid"}),
    ]);
    eventually("the bad list refused", || {
        metric(&server, "mtt_panel_pulls_total", "result=\"failed\"") >= 1.0
    });
    assert_eq!(user_count(&server), 1);

    // The wrong token: 403, counted, nothing changes.
    let wrong = uniproxy_node(&panel, dst, &["-panel-token", "wrong"]);
    eventually("403s", || panel.count("user", 403) >= 1);
    eventually("the failures counted", || {
        metric(&wrong, "mtt_panel_consecutive_failures", "op=\"pull\"") >= 1.0
    });
    assert_eq!(user_count(&wrong), 0);
}
