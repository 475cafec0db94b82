//! What the measured server costs, in the units loadgen reports: CPU time over a run and
//! resident memory in bytes. The `/proc` readers themselves are the kit's
//! (`testkit::procfs`).

use std::io;

use testkit::procfs::cpu_seconds;

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    testkit::procfs::rss_kib(pid).map(|kib| kib * 1024)
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

pub use testkit::procfs::raise_nofile;
