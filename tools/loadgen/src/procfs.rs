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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
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

/// Raises RLIMIT_NOFILE to at least `want` (the hard limit too: we run as root), or as
/// far as allowed. Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on a stack struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur >= want {
            return limit.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}
