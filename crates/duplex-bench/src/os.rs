//! What the OS says about a process: CPU time (`/proc/PID/stat` utime + stime), resident
//! memory now and at its peak (`VmRSS`, `VmHWM` in `/proc/PID/status`).
//!
//! The peak is reset at the start of a measurement by writing `5` to `/proc/PID/clear_refs`
//! (Linux ≥ 4.0, allowed for our own processes), so the peak reported is this run's.

use std::time::Duration;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcSample {
    /// User + system CPU time so far.
    pub cpu: Duration,
    /// Resident set now, bytes.
    pub rss: u64,
    /// Peak resident set since start or since the last [`reset_peak`], bytes.
    pub peak_rss: u64,
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Reads `pid` (`None` = this process). `None` when the process is gone or /proc is missing.
pub(crate) fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = ticks_per_second();
    let cpu = Duration::from_nanos((utime + stime) * 1_000_000_000 / ticks);
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Some(ProcSample {
        cpu,
        rss: kib("VmRSS:"),
        peak_rss: kib("VmHWM:"),
    })
}

/// Resets the peak resident set of `pid` to its current one. Best effort.
pub(crate) fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// One reading of every measured server process (`--server-pid`, one or several: the nodes
/// of a cluster and their NATS servers), in the order given.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerSample {
    pub(crate) processes: Vec<(u32, ProcSample)>,
}

impl ServerSample {
    /// Reads every process in `pids`; `None` when there are none or one is gone.
    pub(crate) fn read(pids: &[u32]) -> Option<Self> {
        if pids.is_empty() {
            return None;
        }
        let processes = pids
            .iter()
            .map(|&pid| sample(Some(pid)).map(|s| (pid, s)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { processes })
    }

    /// Resets every process's peak (see [`reset_peak`]) and reads them.
    pub(crate) fn reset_and_read(pids: &[u32]) -> Option<Self> {
        pids.iter().copied().for_each(reset_peak);
        Self::read(pids)
    }

    /// The processes together: CPU, RSS and peaks summed.
    pub(crate) fn total(&self) -> ProcSample {
        self.processes
            .iter()
            .fold(ProcSample::default(), |sum, (_, s)| ProcSample {
                cpu: sum.cpu + s.cpu,
                rss: sum.rss + s.rss,
                peak_rss: sum.peak_rss + s.peak_rss,
            })
    }
}
