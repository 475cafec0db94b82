//! The Prometheus text exposition format (version 0.0.4) for `GET /metrics` on the
//! controller: rendering only; the figures come from the workers' [`MetricsSnapshot`]s
//! and, when per-user series are asked for (`-metrics-per-user`, which can be many
//! series), from their [`UserTotals`].

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::stats::{MetricsSnapshot, Refusal, UserTotals};

/// Renders the metrics page.
pub fn render(
    users: usize,
    workers: &[MetricsSnapshot],
    per_user: Option<&[UserTotals]>,
) -> String {
    let mut out = String::with_capacity(4096);
    family(&mut out, "mtt_users", "gauge", "Users in the route table.");
    let _ = writeln!(out, "mtt_users {users}");

    family(
        &mut out,
        "mtt_tunnels_open",
        "gauge",
        "Open plain tunnels, mux sessions and mux streams.",
    );
    for (w, m) in workers.iter().enumerate() {
        for (kind, value) in [
            ("plain", m.plain_open),
            ("mux_session", m.mux_sessions_open),
            ("mux_stream", m.mux_streams_open),
        ] {
            let _ = writeln!(
                out,
                "mtt_tunnels_open{{worker=\"{w}\",kind=\"{kind}\"}} {value}"
            );
        }
    }
    family(
        &mut out,
        "mtt_tunnels_total",
        "counter",
        "Plain tunnels, mux sessions and mux streams opened.",
    );
    for (w, m) in workers.iter().enumerate() {
        for (kind, value) in [
            ("plain", m.plain_total),
            ("mux_session", m.mux_sessions_total),
            ("mux_stream", m.mux_streams_total),
        ] {
            let _ = writeln!(
                out,
                "mtt_tunnels_total{{worker=\"{w}\",kind=\"{kind}\"}} {value}"
            );
        }
    }
    family(
        &mut out,
        "mtt_bytes_total",
        "counter",
        "Payload bytes relayed: up is client to destination, down the reverse.",
    );
    for (w, m) in workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "mtt_bytes_total{{worker=\"{w}\",direction=\"up\"}} {}",
            m.bytes_up
        );
        let _ = writeln!(
            out,
            "mtt_bytes_total{{worker=\"{w}\",direction=\"down\"}} {}",
            m.bytes_down
        );
    }
    family(
        &mut out,
        "mtt_refused_total",
        "counter",
        "Data-port connections that got no tunnel, by reason.",
    );
    for (w, m) in workers.iter().enumerate() {
        for why in Refusal::ALL {
            let _ = writeln!(
                out,
                "mtt_refused_total{{worker=\"{w}\",reason=\"{}\"}} {}",
                why.label(),
                m.refused[why as usize]
            );
        }
    }
    family(
        &mut out,
        "mtt_backend_dial_failures_total",
        "counter",
        "Destinations that could not be dialled.",
    );
    for (w, m) in workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "mtt_backend_dial_failures_total{{worker=\"{w}\"}} {}",
            m.dial_failures
        );
    }
    if let Some(totals) = per_user {
        // Sum the workers' reports per user, in a stable order.
        let mut by_user: BTreeMap<&str, (u64, u64, u64, u64)> = BTreeMap::new();
        for t in totals {
            let entry = by_user.entry(&t.path).or_default();
            entry.0 += t.bytes_up;
            entry.1 += t.bytes_down;
            entry.2 += t.tunnels_opened;
            entry.3 += t.tunnels_open;
        }
        family(
            &mut out,
            "mtt_user_bytes_total",
            "counter",
            "Payload bytes relayed per user since its counters were last reset.",
        );
        for (path, (up, down, _, _)) in &by_user {
            let path = escape(path);
            let _ = writeln!(
                out,
                "mtt_user_bytes_total{{path=\"{path}\",direction=\"up\"}} {up}"
            );
            let _ = writeln!(
                out,
                "mtt_user_bytes_total{{path=\"{path}\",direction=\"down\"}} {down}"
            );
        }
        family(
            &mut out,
            "mtt_user_tunnels_open",
            "gauge",
            "Open tunnels (plain tunnels and mux sessions) per user.",
        );
        for (path, (_, _, _, open)) in &by_user {
            let _ = writeln!(
                out,
                "mtt_user_tunnels_open{{path=\"{}\"}} {open}",
                escape(path)
            );
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let totals = vec![UserTotals {
            path: "/a\"b\\c\nd".into(),
            bytes_up: 1,
            ..Default::default()
        }];
        let page = render(1, &[MetricsSnapshot::default()], Some(&totals));
        assert!(page.contains(r#"mtt_user_bytes_total{path="/a\"b\\c\nd",direction="up"} 1"#));
        assert!(page.lines().all(|l| !l.is_empty()));
    }
}
