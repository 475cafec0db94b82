//! Log lines on standard error, as text (the default) or as one JSON object a line
//! (`-log-format json`) for log shippers.
//!
//! A JSON line holds `time` (RFC 3339, UTC, milliseconds), `level`, `side` (who the event is
//! about: `client`, `backend`, `controller`, `panel` (panel sync) or `internal`, as pingora tags errors), `user`
//! (the user's path) and `client` (the client's address) when the event names them, the
//! `thread`, and `event`, the message itself. The call sites are not rewritten for it: the
//! messages already name the side first ("client 203.0.113.7:5123 path /u: ...",
//! "backend 10.0.0.2:80 for path /u: ...", "internal: ..."), so the fields are read from
//! the message, with the module as the fallback for the side.
//!
//! Under systemd (which sets `JOURNAL_STREAM` for a service whose output goes to the
//! journal) text lines carry no timestamp of their own, since the journal stamps every line,
//! and start with the syslog priority (`<3>` error ... `<7>` debug), which the journal
//! reads as the entry's level, so `journalctl -p warning` works. This module does not
//! decide what is logged, only how.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// The process's logger: level, format and whether the journal takes the lines.
pub struct StderrLog {
    level: log::LevelFilter,
    format: LogFormat,
    /// Standard error goes to the journal: no timestamp in text lines, a priority prefix.
    journal: bool,
}

/// Installs the logger for the process: debug with `verbose`, else warnings and errors.
pub fn install(verbose: bool, format: LogFormat) {
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    let journal = std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty());
    let logger = StderrLog {
        level,
        format,
        journal,
    };
    // Only fails if a logger is already set, which nothing else does.
    let _ = log::set_logger(Box::leak(Box::new(logger)));
    log::set_max_level(level);
}

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("mtt_mu_server")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("main");
        let message = record.args().to_string();
        let now = SystemTime::now();
        let line = match self.format {
            LogFormat::Json => json_line(now, record.level(), record.target(), thread, &message),
            LogFormat::Text if self.journal => format!(
                "<{}>{:<5} [{thread}] {message}\n",
                syslog_priority(record.level()),
                record.level()
            ),
            LogFormat::Text => {
                let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
                format!(
                    "{}.{:03} {:<5} [{thread}] {message}\n",
                    since.as_secs(),
                    since.subsec_millis(),
                    record.level()
                )
            }
        };
        // A failed write to stderr has nowhere to be reported.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Writes the ready line (which tests and scripts wait for) to standard error: as it is,
/// or under `-log-format json` as a JSON line whose `event` is that text.
pub fn ready_line(format: LogFormat, text: &str) {
    let line = match format {
        LogFormat::Text => format!("{text}\n"),
        LogFormat::Json => json_line(
            SystemTime::now(),
            log::Level::Info,
            "mtt_mu_server::server",
            "main",
            text,
        ),
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The syslog priority the journal reads from a `<N>` line prefix.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Who an event is about, and the user and client it names.
#[derive(Debug, PartialEq, Eq)]
pub struct Subject<'a> {
    pub side: &'static str,
    pub user: Option<&'a str>,
    pub client: Option<&'a str>,
}

/// Reads the side, user path and client address from a message, by the words the
/// messages use; `target` (the module) decides the side when the message does not.
pub fn subject<'a>(target: &str, message: &'a str) -> Subject<'a> {
    let side = if message.starts_with("internal:") {
        "internal"
    } else if message.starts_with("backend ") || message.starts_with("fallback site ") {
        "backend"
    } else if message.starts_with("client ") {
        "client"
    } else if message.starts_with("controller ") {
        "controller"
    } else if message.starts_with("panel ") {
        "panel"
    } else if target.contains("::tunnel") || target.contains("::net") {
        "client"
    } else if target.contains("::control") {
        "controller"
    } else {
        "internal"
    };
    // "client ADDR" (an IP:port, [v6]:port, or "unix"); not "client path" (mux.rs).
    let client = word_after(message, "client ").filter(|w| *w != "path");
    let client = client.map(|w| w.trim_end_matches([':', ')', ';', ',']));
    // "path P: ..." or "path P (...)" or "path P" at the end; a path may hold spaces.
    let user = message.find("path /").map(|at| {
        let rest = &message[at + "path ".len()..];
        let end = [rest.find(": "), rest.find(" ("), rest.find(", ")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(rest.len());
        rest[..end].trim_end_matches(':')
    });
    Subject { side, user, client }
}

/// The word after the first `prefix` at the start of the message or after a space or `(`.
fn word_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(found) = message[from..].find(prefix) {
        let at = from + found;
        let boundary = at == 0 || matches!(message.as_bytes()[at - 1], b' ' | b'(');
        if boundary {
            let rest = &message[at + prefix.len()..];
            let end = rest.find(' ').unwrap_or(rest.len());
            return Some(&rest[..end]).filter(|w| !w.is_empty());
        }
        from = at + prefix.len();
    }
    None
}

/// One JSON log line, newline included.
pub fn json_line(
    now: SystemTime,
    level: log::Level,
    target: &str,
    thread: &str,
    message: &str,
) -> String {
    let subject = subject(target, message);
    // Written by hand to keep the keys in reading order; serde_json escapes each value.
    let text = |s: &str| serde_json::Value::from(s).to_string();
    let optional = |s: Option<&str>| s.map_or_else(|| "null".to_string(), text);
    format!(
        "{{\"time\":\"{}\",\"level\":\"{}\",\"side\":\"{}\",\"user\":{},\"client\":{},\"thread\":{},\"event\":{}}}\n",
        rfc3339(now),
        level.as_str().to_ascii_lowercase(),
        subject.side,
        optional(subject.user),
        optional(subject.client),
        text(thread),
        text(message),
    )
}

/// `2024-05-01T12:34:56.789Z`: RFC 3339 in UTC with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        let at = |secs: u64, ms: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // date -u -d @951782400: the leap day of a century divisible by 400.
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_735_689_599, 999), "2024-12-31T23:59:59.999Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
    }

    #[test]
    fn subjects_come_from_the_words_of_the_messages() {
        let s = subject(
            "mtt_mu_server::tunnel::connection",
            "client 203.0.113.7:5123 path /u 1: plain tunnel to 10.0.0.2:80 open",
        );
        assert_eq!(
            s,
            Subject {
                side: "client",
                user: Some("/u 1"),
                client: Some("203.0.113.7:5123")
            }
        );
        let s = subject(
            "mtt_mu_server::tunnel::connection",
            "backend 10.0.0.2:80 for path /u: dial failed: refused (client [::1]:80)",
        );
        assert_eq!(
            (s.side, s.user, s.client),
            ("backend", Some("/u"), Some("[::1]:80"))
        );
        let s = subject(
            "mtt_mu_server::tunnel::mux",
            "client path /m: stream 3 refused",
        );
        assert_eq!((s.side, s.user, s.client), ("client", Some("/m"), None));
        let s = subject("mtt_mu_server::worker", "internal: worker 1: accept: x");
        assert_eq!((s.side, s.user, s.client), ("internal", None, None));
        let s = subject(
            "mtt_mu_server::control::controller",
            "controller 127.0.0.1:9: refused: missing or wrong secret",
        );
        assert_eq!(
            (s.side, s.client),
            ("controller", None),
            "a controller peer is not a data client"
        );
        assert_eq!(
            subject("mtt_mu_server::server", "signal 15: draining").side,
            "internal"
        );
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let line = json_line(
            UNIX_EPOCH,
            log::Level::Warn,
            "mtt_mu_server::tunnel::connection",
            "worker-0",
            "client 1.2.3.4:5 path /a\"b\n: ended",
        );
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["side"], "client");
        assert_eq!(v["user"], "/a\"b\n");
        assert_eq!(v["client"], "1.2.3.4:5");
        assert_eq!(v["event"], "client 1.2.3.4:5 path /a\"b\n: ended");
    }
}
