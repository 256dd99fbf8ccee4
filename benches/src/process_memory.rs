//! What this process uses, read from `/proc/self` (Linux): resident memory now and at its
//! peak, and the CPU time spent so far. The memory benches print figures relative to a
//! baseline read before the work under test starts.

use std::time::Duration;

/// Resident memory now (`VmRSS`), in bytes; 0 where `/proc` is not readable.
pub fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// Peak resident memory since the process started or since [`reset_peak_rss`]
/// (`VmHWM`), in bytes; 0 where `/proc` is not readable.
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Resets the peak (`VmHWM`) to the current resident memory (writes `5` to
/// `/proc/self/clear_refs`). Returns whether the kernel accepted it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time (user + system) of the whole process so far, at the kernel's tick resolution
/// (10 ms on most systems).
pub fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let Some(after_name) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Asks glibc to give the free memory of its heaps back to the kernel (`malloc_trim(0)`),
/// which it otherwise keeps for the process's next allocations. Returns whether some was
/// given back. glibc only: elsewhere it does nothing and returns `false`.
pub fn give_back_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes a padding size and touches only the allocator's own
        // free lists; any value is valid.
        #[allow(unsafe_code)]
        let released = unsafe { libc::malloc_trim(0) };
        released == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Bytes in mebibytes, for printing.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}
