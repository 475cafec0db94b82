//! What an operator without a panel or Grafana looks at: `GET /status` (an HTML page with a
//! little inline script, no external assets: the host may have no internet) and
//! `GET /status.json` (the same figures, which the page polls), both behind `-secret` like
//! the rest of the controller; a browser may give the secret as the password of HTTP Basic
//! authentication, since it cannot send a Bearer header from its address bar. Also the
//! process facts `/metrics` adds for operators' alerts: descriptors in use and allowed, the
//! certificate's expiry, build and driver.
//!
//! Bounded on purpose: throughput is one [`Throughput`] ring of [`SAMPLES`] points that the
//! controller fills every [`SAMPLE_EVERY`], and the user table is a page of [`PAGE_SIZE`]
//! rows (busiest first, with a search), never one row per user: the page stays usable with
//! 10,000 users. The figures come from the controller (which asks the workers); this
//! module only shapes and renders them.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::control::registry::{MetricsSnapshot, UserTotals};
use crate::control::routes::RouteTable;
use crate::proto::http::{self, RequestHead};

/// How often the controller samples the workers' byte counters for the chart.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Points kept: ten minutes at [`SAMPLE_EVERY`] (under 8 KiB).
pub(crate) const SAMPLES: usize = 300;
/// Rows of the user table in one page.
pub(crate) const PAGE_SIZE: usize = 50;
/// Client addresses shown per user; the rest are counted.
const CLIENTS_SHOWN: usize = 4;

/// The page, with `/*STATUS_JSON*/` where the first figures go (so it draws at once).
const PAGE: &str = include_str!("status.html");

/// Facts about the running server that start-up knows and the controller reports.
#[derive(Debug)]
pub struct ServerFacts {
    /// The I/O driver that actually runs (`io_uring`, or `epoll` and why).
    pub driver: String,
    pub workers: usize,
    /// `tls`, `tls-self-signed` or `plain`.
    pub mode: &'static str,
    pub started: SystemTime,
    /// The certificate's notAfter in Unix seconds, [`NO_CERTIFICATE`] without TLS; updated
    /// by the main thread when the certificate is reloaded.
    pub certificate_expiry: AtomicI64,
}

/// [`ServerFacts::certificate_expiry`] when there is no certificate (or it is unreadable).
pub(crate) const NO_CERTIFICATE: i64 = i64::MIN;

impl ServerFacts {
    pub fn certificate_expiry(&self) -> Option<i64> {
        Some(self.certificate_expiry.load(Ordering::Relaxed)).filter(|&t| t != NO_CERTIFICATE)
    }

    pub fn set_certificate_expiry(&self, expiry: Option<i64>) {
        self.certificate_expiry
            .store(expiry.unwrap_or(NO_CERTIFICATE), Ordering::Relaxed);
    }
}

/// Throughput over the last minutes: the workers' byte totals sampled at a steady pace,
/// kept as rates.
#[derive(Debug, Default)]
pub(crate) struct Throughput {
    /// (Unix milliseconds, bytes/s up, bytes/s down), oldest first, at most [`SAMPLES`].
    points: VecDeque<(u64, f64, f64)>,
    /// The last sample's time and totals, to turn the next into rates.
    last: Option<(u64, u64, u64)>,
}

impl Throughput {
    /// Records the totals (bytes up, down) summed over the workers at `unix_ms`.
    pub(crate) fn record(&mut self, unix_ms: u64, up: u64, down: u64) {
        if let Some((at, last_up, last_down)) = self.last {
            let seconds = unix_ms.saturating_sub(at) as f64 / 1000.0;
            if seconds > 0.0 {
                if self.points.len() == SAMPLES {
                    self.points.pop_front();
                }
                // A worker's totals never go down; saturate in case one died.
                let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
                self.points
                    .push_back((unix_ms, rate(up, last_up), rate(down, last_down)));
            }
        }
        self.last = Some((unix_ms, up, down));
    }

    /// The totals of the last sample.
    fn totals(&self) -> (u64, u64) {
        self.last.map(|(_, up, down)| (up, down)).unwrap_or((0, 0))
    }
}

/// Sums the workers' byte totals.
pub(crate) fn byte_totals(snapshots: &[MetricsSnapshot]) -> (u64, u64) {
    snapshots.iter().fold((0, 0), |(up, down), m| {
        (up + m.bytes_up, down + m.bytes_down)
    })
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Which status resource a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resource {
    Page(Query),
    Json(Query),
}

/// The user table's view: a search and a page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Query {
    /// Only users whose path contains this (case-insensitive); empty for all.
    pub search: String,
    /// 1-based.
    pub page: usize,
}

impl Resource {
    /// The status resource a `GET` (or `HEAD`) asks for, if any.
    pub(crate) fn of(head: &RequestHead) -> Option<Resource> {
        if head.method != "GET" && head.method != "HEAD" {
            return None;
        }
        let path = http::route_key(&head.target)?;
        let query = Query::parse(head.target.split_once('?').map_or("", |(_, q)| q));
        match path.as_str() {
            "/status" | "/status/" => Some(Resource::Page(query)),
            "/status.json" => Some(Resource::Json(query)),
            _ => None,
        }
    }
}

impl Query {
    /// `q=...&page=N` of a URL query (form encoding: `+` is a space).
    pub(crate) fn parse(query: &str) -> Query {
        let mut out = Query {
            search: String::new(),
            page: 1,
        };
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = form_decode(value);
            match key {
                "q" => out.search = value.trim().chars().take(200).collect(),
                "page" => out.page = value.parse().unwrap_or(1).max(1),
                _ => {}
            }
        }
        out
    }
}

/// Decodes `application/x-www-form-urlencoded`; bad escapes are kept as they are.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The password of an `Authorization: Basic` header (any user name).
pub(crate) fn basic_password(authorization: Option<&str>) -> Option<String> {
    use base64::Engine;
    let encoded = authorization?.trim().strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.1.to_string())
}

/// Everything the page shows, as JSON: server facts, totals, the throughput points and one
/// page of the user table. `totals` are the workers' per-user counters, summed per user.
pub(crate) fn snapshot(
    facts: Option<&ServerFacts>,
    table: &RouteTable,
    totals: &[UserTotals],
    throughput: &Throughput,
    query: &Query,
    now: SystemTime,
) -> Value {
    let by_path: BTreeMap<&str, &UserTotals> =
        totals.iter().map(|t| (t.path.as_str(), t)).collect();
    // Every user in the table, and users deleted while their tunnels are still open.
    let mut rows: Vec<(&str, Option<&str>, Option<&UserTotals>)> = table
        .iter()
        .map(|r| (r.path(), Some(r.dst()), by_path.get(r.path()).copied()))
        .collect();
    rows.extend(
        totals
            .iter()
            .filter(|t| table.lookup(&t.path).is_none())
            .map(|t| (t.path.as_str(), None, Some(t))),
    );
    let tunnels_open: u64 = totals.iter().map(|t| t.tunnels_open).sum();
    let client_ips: HashSet<&str> = totals
        .iter()
        .flat_map(|t| t.clients.iter())
        .map(|c| c.rsplit_once(':').map_or(c.as_str(), |(ip, _)| ip))
        .collect();
    let needle = query.search.to_lowercase();
    if !needle.is_empty() {
        rows.retain(|(path, _, _)| path.to_lowercase().contains(&needle));
    }
    let bytes = |t: Option<&UserTotals>| t.map_or(0, |t| t.bytes_up + t.bytes_down);
    let open = |t: Option<&UserTotals>| t.map_or(0, |t| t.tunnels_open);
    rows.sort_unstable_by(|a, b| {
        (bytes(b.2), open(b.2))
            .cmp(&(bytes(a.2), open(a.2)))
            .then_with(|| a.0.cmp(b.0))
    });
    let pages = rows.len().div_ceil(PAGE_SIZE).max(1);
    let page = query.page.clamp(1, pages);
    let shown: Vec<Value> = rows
        .iter()
        .skip((page - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .map(|(path, dst, t)| {
            let clients = t.map_or(&[][..], |t| &t.clients[..]);
            json!({
                "path": path,
                "dst": dst,
                "bytes_up": t.map_or(0, |t| t.bytes_up),
                "bytes_down": t.map_or(0, |t| t.bytes_down),
                "tunnels_open": open(*t),
                "tunnels_opened": t.map_or(0, |t| t.tunnels_opened),
                "clients": &clients[..clients.len().min(CLIENTS_SHOWN)],
                "clients_more": clients.len().saturating_sub(CLIENTS_SHOWN),
            })
        })
        .collect();
    let (bytes_up, bytes_down) = throughput.totals();
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": seconds(now),
        "started": facts.map(|f| seconds(f.started)),
        "driver": facts.map(|f| f.driver.as_str()),
        "workers": facts.map(|f| f.workers),
        "mode": facts.map(|f| f.mode),
        "certificate_expiry": facts.and_then(ServerFacts::certificate_expiry),
        "users": table.len(),
        "users_active": totals.len(),
        "tunnels_open": tunnels_open,
        "client_ips_online": client_ips.len(),
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "throughput": {
            "interval_seconds": SAMPLE_EVERY.as_secs(),
            "points": throughput.points.iter().map(|&(t, up, down)| json!([t, up.round(), down.round()])).collect::<Vec<_>>(),
        },
        "table": {
            "search": query.search,
            "page": page,
            "pages": pages,
            "page_size": PAGE_SIZE,
            "matched": rows.len(),
            "rows": shown,
        },
    })
}

/// The HTML page with `snapshot` in it, so it draws without waiting for a poll.
pub(crate) fn page(snapshot: &Value) -> String {
    // `<` escaped inside the JSON so no string in it can close the script element.
    let data = snapshot.to_string().replace('<', "\\u003c");
    PAGE.replacen("/*STATUS_JSON*/", &data, 1)
}

/// A status response: `content_type` and `body`, never cached, with the page's script
/// confined to this origin.
pub(crate) fn response(
    status: u16,
    content_type: &str,
    body: &str,
    keep_alive: bool,
    with_body: bool,
) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let challenge = if status == 401 {
        // Browsers ask for a user name and password; the password is the secret.
        "WWW-Authenticate: Basic realm=\"mtt-mu-server\", charset=\"UTF-8\"\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
         style-src 'unsafe-inline'; connect-src 'self'; img-src data:\r\n\
         {challenge}Connection: {connection}\r\n\r\n{}",
        http::reason_phrase(status),
        body.len(),
        if with_body { body } else { "" },
    )
    .into_bytes()
}

/// The lines `/metrics` adds about the process: descriptors, start time, build and driver,
/// the certificate's expiry.
pub(crate) fn process_metrics(facts: &ServerFacts) -> String {
    let mut out = String::with_capacity(1024);
    let mut family = |name: &str, kind: &str, help: &str, lines: &[String]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    };
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        let open = entries.count().saturating_sub(1);
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            &[format!("process_open_fds {open}")],
        );
    }
    // SAFETY: getrlimit on a stack struct we own.
    let limit = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0).then_some(limit.rlim_cur)
    };
    if let Some(limit) = limit {
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            &[format!("process_max_fds {limit}")],
        );
    }
    let started = facts.started.duration_since(UNIX_EPOCH).unwrap_or_default();
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        &[format!(
            "process_start_time_seconds {}",
            started.as_secs_f64().floor()
        )],
    );
    family(
        "mtt_build_info",
        "gauge",
        "Always 1: the version, the I/O driver that runs and the TLS mode as labels.",
        &[format!(
            "mtt_build_info{{version=\"{}\",driver=\"{}\",mode=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            facts.driver,
            facts.mode
        )],
    );
    if let Some(expiry) = facts.certificate_expiry() {
        family(
            "mtt_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the served certificate (the leaf) expires, as Unix time; follows reloads.",
            &[format!("mtt_certificate_expiry_timestamp_seconds {expiry}")],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::routes::{Route, RouteChange};

    fn table_of(n: usize) -> RouteTable {
        let mut table = RouteTable::new();
        let routes = (0..n)
            .map(|i| Route::new(&format!("/user{i:05}"), "127.0.0.1:1"))
            .collect();
        table.apply(&RouteChange::Upsert(routes));
        table
    }

    fn totals(path: &str, bytes: u64, clients: &[&str]) -> UserTotals {
        UserTotals {
            path: path.into(),
            bytes_up: bytes,
            bytes_down: bytes * 2,
            tunnels_opened: 1,
            tunnels_open: clients.len() as u64,
            clients: clients.iter().map(|c| c.to_string()).collect(),
            limits: Default::default(),
            quota_left: None,
        }
    }

    #[test]
    fn ten_thousand_users_make_one_page_busiest_first() {
        let table = table_of(10_000);
        let active: Vec<UserTotals> = (0..3000)
            .map(|i| totals(&format!("/user{i:05}"), i, &["198.51.100.1:1"]))
            .collect();
        let s = snapshot(
            None,
            &table,
            &active,
            &Throughput::default(),
            &Query::parse(""),
            UNIX_EPOCH,
        );
        assert_eq!(s["users"], 10_000);
        assert_eq!(s["users_active"], 3000);
        assert_eq!(s["tunnels_open"], 3000);
        assert_eq!(s["client_ips_online"], 1);
        assert_eq!(s["table"]["pages"], 200);
        let rows = s["table"]["rows"].as_array().unwrap();
        assert_eq!(rows.len(), PAGE_SIZE);
        assert_eq!(rows[0]["path"], "/user02999");
        assert_eq!(rows[0]["bytes_down"], 2999 * 2);
        let s = snapshot(
            None,
            &table,
            &active,
            &Throughput::default(),
            &Query::parse("q=USER0299&page=9"),
            UNIX_EPOCH,
        );
        // /user02990../user02999, busiest first; a page past the end shows the last.
        assert_eq!(s["table"]["matched"], 10);
        assert_eq!(s["table"]["page"], 1);
        assert_eq!(s["table"]["rows"][0]["path"], "/user02999");
        assert_eq!(s["table"]["rows"][9]["path"], "/user02990");
        assert!(s.to_string().len() < 64 * 1024);
    }

    #[test]
    fn deleted_users_with_open_tunnels_still_show_and_clients_are_capped() {
        let table = table_of(1);
        let many = ["a:1", "b:2", "c:3", "d:4", "e:5", "f:6"];
        let s = snapshot(
            None,
            &table,
            &[totals("/gone", 5, &many)],
            &Throughput::default(),
            &Query::default(),
            UNIX_EPOCH,
        );
        let row = &s["table"]["rows"][0];
        assert_eq!(
            (row["path"].as_str(), row["dst"].is_null()),
            (Some("/gone"), true)
        );
        assert_eq!(row["clients"].as_array().unwrap().len(), CLIENTS_SHOWN);
        assert_eq!(row["clients_more"], 2);
        assert_eq!(s["table"]["matched"], 2);
    }

    #[test]
    fn throughput_is_rates_in_a_bounded_ring() {
        let mut t = Throughput::default();
        for i in 0..(SAMPLES as u64 + 10) {
            t.record(i * 2000, i * 1000, i * 4000);
        }
        assert_eq!(t.points.len(), SAMPLES);
        assert!(t
            .points
            .iter()
            .all(|&(_, up, down)| up == 500.0 && down == 2000.0));
        assert_eq!(t.points.back().unwrap().0, (SAMPLES as u64 + 9) * 2000);
    }

    #[test]
    fn queries_and_basic_passwords() {
        assert_eq!(
            Query::parse("q=a+b%2Fc&page=3"),
            Query {
                search: "a b/c".into(),
                page: 3
            }
        );
        assert_eq!(Query::parse("page=0&q=%zz").page, 1);
        assert_eq!(Query::parse("q=%zz").search, "%zz");
        assert_eq!(Query::parse("q=%4").search, "%4");
        // "admin:s3:cret"
        assert_eq!(
            basic_password(Some("Basic YWRtaW46czM6Y3JldA==")).as_deref(),
            Some("s3:cret")
        );
        assert_eq!(basic_password(Some("Bearer x")), None);
        assert_eq!(basic_password(Some("Basic !!")), None);
    }

    #[test]
    fn the_page_carries_its_data_without_closing_its_script() {
        let html = page(&json!({"table": {"rows": [{"path": "</script><b>"}]}}));
        assert!(!html.contains("/*STATUS_JSON*/"));
        assert!(html.contains(r#""path":"\u003c/script>\u003cb>""#));
        assert_eq!(
            html.matches("</script>").count(),
            PAGE.matches("</script>").count()
        );
    }
}
