//! The JSON control API (SPEC section 5) on its own thread: it owns the authoritative
//! [`RouteTable`], validates each command whole, applies it, broadcasts the change to every
//! worker and replies only once every worker routes by the new table.
//!
//! It speaks just enough HTTP/1.1 for panels: keep-alive, `Content-Length` bodies of at most
//! [`MAX_BODY`] bytes, and the head limits of [`crate::http`]. It never touches the data
//! path; workers learn of changes only through [`crate::routes::broadcast`].

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;
use serde::{Deserialize, Serialize};

use crate::http::{self, HeadError};
use crate::routes::{self, Route, RouteChange, RouteTable, WorkerLink};

/// Largest body accepted: 2 MiB exactly (the Go server wrongly refuses this size).
pub const MAX_BODY: u64 = 2 * 1024 * 1024;
/// How long a keep-alive connection may sit between requests.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// How long a body may take to arrive once its head has.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most controller connections open at once; more are closed at once. A panel needs one.
const MAX_CONNECTIONS: usize = 256;

/// What the panel sends. Every field optional so that a missing field is a command error
/// (res 2, HTTP 200), while a field of the wrong JSON type is a request error (400).
#[derive(Debug, Deserialize)]
struct CommandBody {
    opt: Option<i64>,
    args_bunch: Option<Vec<UserArg>>,
}

#[derive(Debug, Deserialize)]
struct UserArg {
    path: Option<String>,
    dst: Option<String>,
}

/// Every reply, errors included, carries all three keys.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub res: u8,
    pub err_string: String,
    pub current_users: usize,
}

/// A command that passed validation, ready to apply as one batch.
#[derive(Debug, PartialEq)]
pub enum Command {
    Add(Vec<(String, String)>),
    Del(Vec<String>),
    Reset,
    Ping,
}

/// Why a request produced no command.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The body is not one JSON object of the right shape: HTTP 400.
    BadRequest(String),
    /// The JSON is fine but the command is not: HTTP 200, res 2.
    Invalid(String),
}

/// Parses and validates a request body into a command, all or nothing.
pub fn parse_command(body: &[u8]) -> Result<Command, CommandError> {
    // serde would read a JSON array into a struct field by field: insist on an object.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(CommandError::BadRequest(
            "body is not a JSON object".to_string(),
        ));
    }
    let parsed: CommandBody = serde_json::from_slice(body)
        .map_err(|e| CommandError::BadRequest(format!("bad json: {e}")))?;
    let invalid = |s: String| Err(CommandError::Invalid(s));
    match parsed.opt {
        Some(1) => {
            let args = match parsed.args_bunch {
                Some(args) if !args.is_empty() => args,
                _ => return invalid("add: args_bunch is missing or empty".into()),
            };
            let mut users = Vec::with_capacity(args.len());
            for (i, arg) in args.into_iter().enumerate() {
                let path = check_path(i, arg.path).map_err(CommandError::Invalid)?;
                let Some(dst) = arg.dst else {
                    return invalid(format!("add: args_bunch[{i}] ({path}): dst is missing"));
                };
                if !valid_dst(&dst) {
                    return invalid(format!(
                        "add: args_bunch[{i}] ({path}): dst {dst:?} is not HOST:PORT"
                    ));
                }
                users.push((path, dst));
            }
            Ok(Command::Add(users))
        }
        Some(2) => {
            let args = match parsed.args_bunch {
                Some(args) if !args.is_empty() => args,
                _ => return invalid("del: args_bunch is missing or empty".into()),
            };
            let paths = args
                .into_iter()
                .enumerate()
                .map(|(i, arg)| check_path(i, arg.path))
                .collect::<Result<Vec<_>, _>>()
                .map_err(CommandError::Invalid)?;
            Ok(Command::Del(paths))
        }
        Some(3) => Ok(Command::Reset),
        Some(9) => Ok(Command::Ping),
        _ => invalid("invalid opt".into()),
    }
}

fn check_path(i: usize, path: Option<String>) -> Result<String, String> {
    match path {
        None => Err(format!("args_bunch[{i}]: path is missing")),
        Some(p) if !p.starts_with('/') => {
            Err(format!("args_bunch[{i}]: path {p:?} does not start with /"))
        }
        Some(p) => Ok(p),
    }
}

/// `HOST:PORT` with a non-zero numeric port and a host that is a name, an IPv4 address or
/// a bracketed IPv6 address.
pub fn valid_dst(dst: &str) -> bool {
    let Some((host, port)) = dst.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && matches!(port.parse::<u16>(), Ok(p) if p != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    port_ok && host_ok
}

/// The authoritative table and the workers that copy it.
pub struct Controller {
    /// The users as the panel last set them.
    table: RouteTable,
    /// One link per worker, to broadcast changes on.
    workers: Vec<WorkerLink>,
}

impl Controller {
    pub fn new(workers: Vec<WorkerLink>) -> Self {
        Self {
            table: RouteTable::new(),
            workers,
        }
    }

    /// Applies one command everywhere and returns once every worker has it.
    pub fn execute(&mut self, command: Command) {
        let change = match command {
            Command::Ping => return,
            Command::Reset => RouteChange::Clear,
            Command::Del(paths) => {
                RouteChange::Remove(paths.into_iter().map(String::into_boxed_str).collect())
            }
            Command::Add(users) => RouteChange::Upsert(
                users
                    .into_iter()
                    .map(|(path, dst)| {
                        Arc::new(Route {
                            path: path.into_boxed_str(),
                            dst: dst.into_boxed_str(),
                        })
                    })
                    .collect(),
            ),
        };
        self.table.apply(&change);
        routes::broadcast(&self.workers, change);
    }

    pub fn users(&self) -> usize {
        self.table.len()
    }

    /// Answers one request body: the HTTP status and the reply.
    pub fn handle_body(&mut self, body: &[u8]) -> (u16, Reply) {
        match parse_command(body) {
            Ok(command) => {
                self.execute(command);
                (200, self.reply(1, String::new()))
            }
            Err(CommandError::Invalid(why)) => (200, self.reply(2, why)),
            Err(CommandError::BadRequest(why)) => (400, self.reply(2, why)),
        }
    }

    fn reply(&self, res: u8, err_string: String) -> Reply {
        Reply {
            res,
            err_string,
            current_users: self.table.len(),
        }
    }
}

/// Runs the controller on the calling thread until the process ends.
pub fn run(
    listener: std::net::TcpListener,
    workers: Vec<WorkerLink>,
    head_timeout: Duration,
) -> std::io::Result<()> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let controller = Rc::new(RefCell::new(Controller::new(workers)));
        let open = Rc::new(std::cell::Cell::new(0usize));
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if open.get() >= MAX_CONNECTIONS {
                        log::warn!(
                            "controller {peer}: refused, {MAX_CONNECTIONS} connections open"
                        );
                        continue;
                    }
                    open.set(open.get() + 1);
                    let controller = Rc::clone(&controller);
                    let open = Rc::clone(&open);
                    crate::task::spawn_contained(async move {
                        serve(stream, peer, controller, head_timeout).await;
                        open.set(open.get() - 1);
                    });
                }
                Err(e) => {
                    log::error!("internal: controller accept: {e}");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    controller: Rc<RefCell<Controller>>,
    head_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut deadline = Instant::now() + head_timeout;
    loop {
        let (result, rest) = http::read_head(&mut stream, buf, deadline).await;
        buf = rest;
        let (head, head_len) = match result {
            Ok(parsed) => parsed,
            Err(HeadError::Closed { .. }) | Err(HeadError::Timeout) => return,
            Err(e) => {
                let status = if e == HeadError::TooLarge { 431 } else { 400 };
                let reply = controller
                    .borrow()
                    .reply(2, format!("bad request head: {e:?}"));
                respond(&mut stream, status, &reply, false).await;
                return;
            }
        };
        buf.drain(..head_len);
        if head.method != "POST" {
            let reply = controller
                .borrow()
                .reply(2, format!("method {} not allowed: use POST", head.method));
            respond(&mut stream, 405, &reply, false).await;
            return;
        }
        if head.transfer_encoding {
            let reply = controller.borrow().reply(
                2,
                "chunked bodies are not accepted: send Content-Length".into(),
            );
            respond(&mut stream, 411, &reply, false).await;
            return;
        }
        if head.bad_content_length {
            let reply = controller.borrow().reply(2, "bad Content-Length".into());
            respond(&mut stream, 400, &reply, false).await;
            return;
        }
        let length = head.content_length.unwrap_or(0);
        if length > MAX_BODY {
            let reply = controller
                .borrow()
                .reply(2, format!("body of {length} bytes is over {MAX_BODY}"));
            respond(&mut stream, 413, &reply, false).await;
            return;
        }
        let length = length as usize;
        let body_deadline = Instant::now() + BODY_TIMEOUT;
        while buf.len() < length {
            if buf.capacity() < length {
                buf.reserve_exact(length - buf.len());
            }
            let start = buf.len();
            let read = buf.slice_mut(start..length);
            match monoio::time::timeout_at(body_deadline, stream.read(read)).await {
                Ok((Ok(n), slice)) if n > 0 => buf = slice.into_inner(),
                _ => return,
            }
        }
        let (status, reply) = controller.borrow_mut().handle_body(&buf[..length]);
        if reply.res != 1 {
            log::debug!("controller {peer}: refused: {}", reply.err_string);
        }
        buf.drain(..length);
        let keep_alive = head.keep_alive();
        if !respond(&mut stream, status, &reply, keep_alive).await || !keep_alive {
            return;
        }
        if buf.capacity() > 64 * 1024 {
            buf.shrink_to(4096);
        }
        deadline = Instant::now() + KEEP_ALIVE_IDLE;
    }
}

async fn respond(stream: &mut TcpStream, status: u16, reply: &Reply, keep_alive: bool) -> bool {
    // Serializing three plain fields cannot fail.
    let body = serde_json::to_string(reply).unwrap_or_default();
    let response = http::json_response(status, &body, keep_alive);
    let (result, _) = stream.write_all(response).await;
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> CommandError {
        parse_command(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_each_command() {
        assert_eq!(
            parse_command(br#"{"opt":1,"args_bunch":[{"path":"/a","dst":"127.0.0.1:1"},{"path":"/b","dst":"h.example:2"}]}"#),
            Ok(Command::Add(vec![
                ("/a".into(), "127.0.0.1:1".into()),
                ("/b".into(), "h.example:2".into())
            ]))
        );
        assert_eq!(
            parse_command(br#"{"opt":2,"args_bunch":[{"path":"/a"}]}"#),
            Ok(Command::Del(vec!["/a".into()]))
        );
        assert_eq!(parse_command(br#" {"opt":3} "#), Ok(Command::Reset));
        assert_eq!(
            parse_command(br#"{"opt":9,"args_bunch":null}"#),
            Ok(Command::Ping)
        );
    }

    #[test]
    fn command_errors_are_invalid_not_bad_request() {
        for body in [
            "{}",
            r#"{"opt":4}"#,
            r#"{"opt":1}"#,
            r#"{"opt":1,"args_bunch":[]}"#,
            r#"{"opt":1,"args_bunch":[{"dst":"h:1"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/a"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"a","dst":"h:1"}]}"#,
            r#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h"}]}"#,
            r#"{"opt":2}"#,
            r#"{"opt":2,"args_bunch":[{}]}"#,
        ] {
            assert!(matches!(err(body), CommandError::Invalid(_)), "{body}");
        }
        assert_eq!(err("{}"), CommandError::Invalid("invalid opt".into()));
    }

    #[test]
    fn shape_errors_are_bad_request() {
        for body in [
            "",
            "null",
            "[1]",
            "{",
            r#"{"opt":"1"}"#,
            r#"{"opt":1.5}"#,
            r#"{"opt":1} x"#,
            r#"{"opt":1,"args_bunch":{}}"#,
            r#"{"opt":1,"args_bunch":[{"path":5,"dst":"h:1"}]}"#,
            r#"{"opt":99999999999999999999999}"#,
            r#"{"opt":1,"opt":2}"#,
        ] {
            assert!(matches!(err(body), CommandError::BadRequest(_)), "{body}");
        }
    }

    #[test]
    fn dst_forms() {
        for ok in ["127.0.0.1:80", "[::1]:443", "example.com:65535", "a_b-c:1"] {
            assert!(valid_dst(ok), "{ok}");
        }
        for bad in [
            "", "h", ":80", "h:", "h:0", "h:65536", "h:http", "::1:80", "[::1]", "[x]:1", "h h:1",
            "h:+80",
        ] {
            assert!(!valid_dst(bad), "{bad}");
        }
    }

    #[test]
    fn failed_batch_changes_nothing() {
        let mut controller = Controller::new(Vec::new());
        let (status, reply) =
            controller.handle_body(br#"{"opt":1,"args_bunch":[{"path":"/a","dst":"h:1"}]}"#);
        assert_eq!((status, reply.res, reply.current_users), (200, 1, 1));
        let (status, reply) = controller.handle_body(
            br#"{"opt":1,"args_bunch":[{"path":"/b","dst":"h:1"},{"path":"/c","dst":"bad"}]}"#,
        );
        assert_eq!((status, reply.res, reply.current_users), (200, 2, 1));
        assert!(reply.err_string.contains("args_bunch[1]"));
    }
}
