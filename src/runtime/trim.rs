//! Giving memory back to the kernel after a peak.
//!
//! glibc malloc returns pages to the kernel only from the top of a heap; what a peak of
//! tunnels (or a large route change) frees stays in the free lists of the arenas, spread
//! through them, and the RSS stays near its high-water mark (RELIABILITY.md: 83 MiB after
//! a soak whose load needs 10). `malloc_trim(0)` gives back every free page of every
//! arena. It walks the free chunks and holds each arena's lock while it does (a few
//! milliseconds after a large peak, BENCHMARKS.md), so it runs only at quiet moments:
//! when more of the heap is free than in use, checked every few seconds from the
//! controller's thread and after a large route change, never on a worker's data path.
//!
//! Why not another allocator: see BENCHMARKS.md ("Memory after a peak"). On other C
//! libraries this does nothing.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How often the controller looks at the allocator's free memory.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Free bytes in the arenas below which trimming is not worth its walk.
const MIN_FREE: usize = 8 * 1024 * 1024;

/// What one trim did, for the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trimmed {
    /// Bytes free in the arenas before the trim.
    pub free: usize,
    /// Bytes in use.
    pub used: usize,
    pub took: Duration,
}

thread_local! {
    /// Free and used bytes right after this thread's last trim. Trimming returns the
    /// pages but keeps the chunks on the free lists, so the figures stay the same until
    /// the heap changes: while they do, there is nothing new to give back.
    static LAST_TRIM: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Trims when at least [`MIN_FREE`] bytes, and more than are in use, sit free in malloc's
/// arenas: after a peak, not in the middle of steady work (whose free chunks are reused),
/// and not again while nothing changed since the last trim.
pub(crate) fn trim_if_mostly_free() -> Option<Trimmed> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics (glibc 2.33 and later).
        let info = unsafe { libc::mallinfo2() };
        let (free, used) = (info.fordblks, info.uordblks);
        if free < MIN_FREE || free < used {
            return None;
        }
        let near = |a: usize, b: usize| a.abs_diff(b) < 1024 * 1024;
        if LAST_TRIM
            .get()
            .is_some_and(|(f, u)| near(f, free) && near(u, used))
        {
            return None;
        }
        let started = Instant::now();
        // SAFETY: malloc_trim frees nothing in use; it returns free pages to the kernel.
        unsafe { libc::malloc_trim(0) };
        let trimmed = Trimmed {
            free,
            used,
            took: started.elapsed(),
        };
        // SAFETY: as above.
        let after = unsafe { libc::mallinfo2() };
        LAST_TRIM.set(Some((after.fordblks, after.uordblks)));
        log::debug!(
            "returned free memory to the kernel: {} MiB free, {} MiB in use, {:?}",
            trimmed.free >> 20,
            trimmed.used >> 20,
            trimmed.took
        );
        Some(trimmed)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (MIN_FREE, Instant::now(), &LAST_TRIM);
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_freed_peak_is_given_back() {
        let rss_kib = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        // 64 MiB in small blocks (below the mmap threshold), freed but for one block
        // above them, so glibc cannot return the pages by itself from the heap's top.
        let blocks: Vec<Vec<u8>> = (0..16 * 1024).map(|_| vec![1u8; 4096]).collect();
        let keep = vec![2u8; 4096];
        drop(blocks);
        let before = rss_kib();
        let trimmed = super::trim_if_mostly_free().expect("64 MiB free is worth a trim");
        assert!(trimmed.free >= 60 * 1024 * 1024, "{trimmed:?}");
        let after = rss_kib();
        assert!(
            before.saturating_sub(after) >= 32 * 1024,
            "RSS {before} KiB before the trim, {after} after"
        );
        assert_eq!(keep[0], 2);
    }
}
