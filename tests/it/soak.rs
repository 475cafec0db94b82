//! The short soak of CI: a few hundred tunnels, plain and mux over TLS,
//! each streaming its own checksummed bytes both ways through an echo backend while the
//! controller adds, deletes and overwrites other users at 20 commands a second. Fails on
//! any corrupted byte, unexpected disconnect, stall, failed connect or protocol error, on a
//! server fd count that does not return exactly to its baseline once every tunnel has
//! closed, and on an RSS more than 16 MiB over the warm baseline (the RSS after a first,
//! identical warm-up phase: see RELIABILITY.md, "Soak", for why).
//!
//! The debug build of the server and of the soak client run here, on 2 shared cores,
//! possibly beside other tests: the load is paced to stay far from the server's timeouts.
//! The long soak (release build, thousands of tunnels, 10 minutes) is run by hand with
//! `target/release/soak`; its figures are in RELIABILITY.md.
//!
//! It shares this test process with the other integration tests: `soak::run` raises the
//! process's open-file limit (it needs about a thousand descriptors), which only ever
//! raises it, so no other test can see a lower limit than it had; every other check is
//! on the soak's own server process.

use std::time::Duration;

#[test]
fn short_soak_corrupts_nothing_drops_nothing_and_returns_to_baseline() {
    let cfg = soak::Config {
        target: soak::Target::Spawn {
            bin: env!("CARGO_BIN_EXE_mtt-mu-server").into(),
            workers: Some(2),
            extra: Vec::new(),
        },
        tls: true,
        plain: 200,
        mux: 25,
        streams_per_session: 4,
        warmup: Duration::from_secs(8),
        duration: Duration::from_secs(20),
        churn_ops: 20.0,
        churn_users: 500,
        threads: 8,
        max_plain_bytes: 512 << 10,
        max_stream_bytes: 256 << 10,
        session_life: (Duration::from_secs(3), Duration::from_secs(10)),
        pace: Duration::from_millis(20),
        rss_slack_kib: 16 * 1024,
        settle: Duration::from_secs(10),
        report_every: Duration::from_secs(5),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
        ..soak::Config::default()
    };
    let report = soak::run(&cfg, &|line| println!("{line}")).expect("the soak starts");
    println!("{}", report.text);
    assert!(report.passed(), "soak failed:\n{}", report.text);
    assert!(report.tunnels_completed >= 200, "{}", report.text);
}
