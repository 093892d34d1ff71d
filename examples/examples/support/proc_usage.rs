//! A process's CPU time and resident memory from `/proc` (Linux), for the
//! load examples that measure another process.

use std::time::Duration;

/// (CPU time, resident bytes) of process `pid` (`/proc/PID/stat` in ticks
/// of 10 ms, `/proc/PID/status` VmRSS); zeros when it cannot be read.
pub(crate) fn usage_of(pid: u32) -> (Duration, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (Duration::from_millis(ticks * 10), rss_kb * 1024)
}
