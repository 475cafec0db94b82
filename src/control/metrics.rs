//! The Prometheus text exposition format (version 0.0.4) for `GET /metrics` on the
//! controller: rendering only; the figures come from the workers' [`MetricsSnapshot`]s
//! and, when per-user series are asked for (`-metrics-per-user`, which can be many
//! series), from their [`UserTotals`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::control::registry::{MetricsSnapshot, Refusal, UserTotals};

/// Upper bounds, in seconds, of the route-change latency buckets: around the 1 ms that
/// a change may take to reach every worker.
pub(crate) const ROUTE_CHANGE_BOUNDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.002, 0.003, 0.005, 0.01,
    0.025, 0.1, 1.0,
];

/// A Prometheus histogram over [`ROUTE_CHANGE_BOUNDS`], kept by the controller thread.
#[derive(Debug, Default, Clone)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    counts: [u64; ROUTE_CHANGE_BOUNDS.len() + 1],
    sum: Duration,
}

impl Histogram {
    pub(crate) fn observe(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = ROUTE_CHANGE_BOUNDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(ROUTE_CHANGE_BOUNDS.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }

    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (bound, count) in ROUTE_CHANGE_BOUNDS.iter().zip(self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count());
        let _ = writeln!(out, "{name}_sum {}", self.sum.as_secs_f64());
        let _ = writeln!(out, "{name}_count {}", self.count());
    }
}

/// Renders the metrics page.
pub(crate) fn render(
    users: usize,
    route_changes: &Histogram,
    workers: &[MetricsSnapshot],
    per_user: Option<&[UserTotals]>,
) -> String {
    let mut out = String::with_capacity(4096);
    family(&mut out, "mtt_users", "gauge", "Users in the route table.");
    let _ = writeln!(out, "mtt_users {users}");
    family(
        &mut out,
        "mtt_route_change_seconds",
        "histogram",
        "From the controller holding a whole command that changes users to every worker \
         routing by the change (parse, state file and broadcast included).",
    );
    route_changes.render(&mut out, "mtt_route_change_seconds");

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

pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
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
        let page = render(
            1,
            &Histogram::default(),
            &[MetricsSnapshot::default()],
            Some(&totals),
        );
        assert!(page.contains(r#"mtt_user_bytes_total{path="/a\"b\\c\nd",direction="up"} 1"#));
        assert!(page.lines().all(|l| !l.is_empty()));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        for us in [50, 100, 900, 1000, 1001, 3_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut out = String::new();
        h.render(&mut out, "x");
        for line in [
            r#"x_bucket{le="0.00005"} 1"#,
            r#"x_bucket{le="0.0001"} 2"#,
            r#"x_bucket{le="0.0005"} 2"#,
            r#"x_bucket{le="0.001"} 4"#,
            r#"x_bucket{le="0.002"} 5"#,
            r#"x_bucket{le="1"} 5"#,
            r#"x_bucket{le="+Inf"} 6"#,
            "x_sum 3.003051",
            "x_count 6",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
    }
}
