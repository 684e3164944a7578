//! What the tool reads from `/proc`: the server's RSS and CPU time, kernel TCP socket memory.

use std::process::Command;

/// `VmRSS` of `pid` in KiB.
pub fn rss_kb(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{path}: no VmRSS line"))
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
/// Voluntary context switches of the main thread (the event loop) so far (`/proc/PID/status`): how
/// often the server slept and was woken, the cost that batching wake-ups saves.
pub fn voluntary_switches(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{path}: no voluntary_ctxt_switches"))
}

pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: malformed"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field k is at index k - 3.
    let get = |k: usize| -> Result<u64, String> {
        fields
            .get(k - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: no field {k}"))
    };
    Ok(get(14)? + get(15)?)
}

/// `getconf <name>` as a number (`CLK_TCK`, `PAGESIZE`).
pub fn getconf(name: &str, fallback: u64) -> u64 {
    Command::new("getconf")
        .arg(name)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(fallback)
}

/// The `mem` field (pages) of the `TCP:` line of `/proc/net/sockstat`.
pub fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Reads a pid from a pid file.
pub fn read_pidfile(path: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{path}: not a pid: {:?}", text.trim()))
}

/// The child processes of `pid` (`/proc/<pid>/task/<tid>/children` of every thread).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// `/proc/<pid>/cmdline` with NULs as spaces, trimmed.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// For nchan: the nginx worker whose RSS and CPU are measured. A master pid (from `nginx.pid`)
/// is replaced by its one `nginx: worker process` child; a worker pid is kept as it is. A
/// master that has just started gets 2 s to fork its worker.
pub fn nginx_worker(pid: u32) -> Result<u32, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match find_nginx_worker(pid) {
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

fn find_nginx_worker(pid: u32) -> Result<u32, String> {
    if cmdline(pid).starts_with("nginx: worker process") {
        return Ok(pid);
    }
    let workers: Vec<u32> = children(pid)
        .into_iter()
        .filter(|c| cmdline(*c).starts_with("nginx: worker process"))
        .collect();
    match workers.as_slice() {
        [w] => Ok(*w),
        [] => Err(format!(
            "pid {pid} ({:?}) is neither an nginx worker nor a master with one worker",
            cmdline(pid)
        )),
        _ => Err(format!(
            "nginx master {pid} has {} workers; the peer config runs exactly one (worker_processes 1)",
            workers.len()
        )),
    }
}

/// `RssAnon` of `pid` in KiB (private memory, without file-backed and shared pages).
pub fn rss_anon_kb(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{path}: no RssAnon line"))
}

/// CPU time of `pid` in nanoseconds: the sum of the first field of
/// `/proc/<pid>/task/*/schedstat` (nanosecond resolution, every thread), or utime + stime from
/// `/proc/<pid>/stat` (clock-tick resolution) when schedstat is not there.
pub fn cpu_ns(pid: u32) -> Result<u64, String> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut sum = 0u64;
        let mut any = false;
        for t in tasks.flatten() {
            if let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                sum += ns;
                any = true;
            }
        }
        if any {
            return Ok(sum);
        }
    }
    let clk = getconf("CLK_TCK", 100);
    Ok(cpu_ticks(pid)? * (1_000_000_000 / clk.max(1)))
}

/// A reading of the machine's CPU time, the server's and push-bench's own (clock ticks), to tell
/// afterwards how much of the machine other processes took during a run: on a shared machine
/// that is what makes latency tails and wall-clock rates noisy.
pub struct HostSample {
    busy: u64,
    total: u64,
    server: u64,
    own: u64,
}

impl HostSample {
    pub fn take(server_pid: Option<u32>) -> Option<HostSample> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user already)
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some(HostSample {
            busy: total - idle,
            total,
            server: server_pid.and_then(|p| cpu_ticks(p).ok()).unwrap_or(0),
            own: cpu_ticks(std::process::id()).unwrap_or(0),
        })
    }

    /// Percent of the whole machine (all cores) busy with neither the server nor push-bench
    /// between `self` and `later`.
    pub fn others_pct(&self, later: &HostSample) -> Option<f64> {
        let total = later.total.checked_sub(self.total)?;
        if total == 0 {
            return None;
        }
        let busy = later.busy.saturating_sub(self.busy);
        let ours = later.server.saturating_sub(self.server) + later.own.saturating_sub(self.own);
        Some(busy.saturating_sub(ours) as f64 * 100.0 / total as f64)
    }
}
