//! The `process_*` metrics every Prometheus client exposes (and Pyroscope's Go runtime does),
//! read from `/proc/self` at each scrape: CPU seconds, resident and virtual memory, open and
//! maximum file descriptors, start time.
use std::fmt::Write;

/// Appends the process metrics; any figure `/proc` does not give is left out.
pub fn render(out: &mut String) {
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (in parentheses, which may hold spaces): state is field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let mut gauge = |name: &str, kind: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    };
    let cpu = field(14).zip(field(15)).map(|(u, s)| (u + s) / ticks);
    gauge("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpu);
    let page = page_size();
    gauge("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", field(24).map(|p| p * page));
    gauge("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", field(23));
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())));
    let start = boot.zip(field(22)).map(|(b, t)| b + t / ticks);
    gauge("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", start);
    let fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    gauge("process_open_fds", "gauge", "Number of open file descriptors.", fds);
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<f64>().ok()))
    });
    gauge("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds);
}

fn clock_ticks() -> f64 {
    sysconf_or(libc::_SC_CLK_TCK, 100.0)
}

fn page_size() -> f64 {
    sysconf_or(libc::_SC_PAGESIZE, 4096.0)
}

/// A system constant, or `default` where the system gives none.
fn sysconf_or(name: libc::c_int, default: f64) -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(name) };
    if v > 0 {
        v as f64
    } else {
        default
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_figures() {
        let mut out = String::new();
        super::render(&mut out);
        let value = |name: &str| -> f64 {
            let line = out.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{out}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(start <= now + 1.0 && start > now - 86400.0, "{start} vs {now}");
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }
}
