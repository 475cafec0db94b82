//! Starting the server under test (and reading its log), or attaching to a running one.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server wrote to stderr that matters to the soak.
#[derive(Default)]
pub struct Log {
    pub lines: u64,
    /// Lines that mention a panic.
    pub panics: Vec<String>,
    /// Warning and error lines (the first few), and how many there were.
    pub warnings: Vec<String>,
    pub warning_count: u64,
    /// The last lines, for a report when something went wrong.
    pub tail: Vec<String>,
}

pub struct Spawned {
    child: Child,
    pub log: Arc<Mutex<Log>>,
}

pub struct Running {
    pub data: SocketAddr,
    pub controller: SocketAddr,
    pub pid: Option<u32>,
    pub tls: bool,
    pub spawned: Option<Spawned>,
}

/// Starts `bin -b 127.0.0.1:0 -c 127.0.0.1:0 [-force-tls] [-workers N] EXTRA...` and
/// waits for its `ready:` line.
pub fn spawn(
    bin: &Path,
    tls: bool,
    workers: Option<usize>,
    extra: &[String],
) -> Result<Running, String> {
    let mut args: Vec<String> = vec![
        "-b".into(),
        "127.0.0.1:0".into(),
        "-c".into(),
        "127.0.0.1:0".into(),
    ];
    if tls {
        args.push("-force-tls".into());
    }
    if let Some(n) = workers {
        args.extend(["-workers".into(), n.to_string()]);
    }
    args.extend(extra.iter().cloned());
    let mut child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(Log::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("ready:") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line.clone());
                }
            }
            let mut log = sink.lock().unwrap();
            log.lines += 1;
            let lower = line.to_ascii_lowercase();
            if lower.contains("panic") {
                log.panics.push(line.clone());
            }
            if lower.contains("warn") || lower.contains("error") {
                log.warning_count += 1;
                if log.warnings.len() < 20 {
                    log.warnings.push(line.clone());
                }
            }
            log.tail.push(line);
            if log.tail.len() > 40 {
                log.tail.remove(0);
            }
        }
    });
    let ready = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = log.lock().unwrap().tail.join("\n");
            return Err(format!("server did not print its ready line:\n{tail}"));
        }
    };
    let field = |name: &str| -> Result<SocketAddr, String> {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {name}ADDR in {ready:?}"))
    };
    let (data, controller) = match (field("data="), field("controller=")) {
        (Ok(d), Ok(c)) => (d, c),
        (Err(e), _) | (_, Err(e)) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    Ok(Running {
        data,
        controller,
        pid: Some(child.id()),
        tls: ready.contains("mode=tls"),
        spawned: Some(Spawned { child, log }),
    })
}

impl Spawned {
    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("wait: {e}")),
        }
    }

    /// SIGTERM, up to `grace` for it to exit, then SIGKILL. Returns how it ended.
    pub fn stop(mut self, grace: Duration) -> String {
        if let Some(s) = self.exited() {
            return format!("had already exited: {s}");
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return format!("exited after SIGTERM: {s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        format!("did not exit within {grace:?} of SIGTERM: killed")
    }
}
