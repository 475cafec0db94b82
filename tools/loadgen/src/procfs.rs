//! What the measured server costs, read from `/proc`: CPU time (utime + stime of every
//! thread, from `/proc/PID/stat`) and resident memory (`VmRSS` of `/proc/PID/status`); and
//! raising this process's own open-file limit.

use std::io;

/// CPU seconds (user + system) the process has used so far, all threads included.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after its end.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unexpected /proc/PID/stat"))?;
    // After ")" come field 3 (state) onwards; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let parse = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unexpected /proc/PID/stat"))
    };
    let ticks = parse(14 - 3)? + parse(15 - 3)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    soak::procfs::rss_kib(pid).map(|kib| kib * 1024)
}

/// A CPU meter over an optional process: `None` when no `--server-pid` was given (the
/// loopback baseline has no server).
#[derive(Clone, Copy)]
pub struct CpuMeter {
    pid: Option<u32>,
    start: f64,
}

impl CpuMeter {
    pub fn start(pid: Option<u32>) -> CpuMeter {
        let start = pid.and_then(|p| cpu_seconds(p).ok()).unwrap_or(0.0);
        CpuMeter { pid, start }
    }

    /// CPU seconds used since `start`.
    pub fn used(&self) -> Option<f64> {
        let pid = self.pid?;
        cpu_seconds(pid).ok().map(|now| now - self.start)
    }
}

pub use soak::procfs::raise_nofile;
