//! The process's own metrics in Prometheus's conventional names and types, read from `/proc`
//! when `/metrics` is scraped (as Prometheus's own process collectors do), so they are as
//! current as the scrape. Elsewhere than on Linux there are none.

use std::fmt::Write as _;

/// Appends the process metrics to a rendered exposition.
pub(crate) fn render(out: &mut String) {
    #[cfg(target_os = "linux")]
    if let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| Stat::parse(&s)) {
        // SAFETY: sysconf only reads system constants.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let (ticks, page) = (ticks.max(1) as f64, page.max(1) as f64);
        let metrics = [
            (
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent, in seconds.",
                stat.cpu_ticks / ticks,
            ),
            ("process_resident_memory_bytes", "gauge", "Resident memory size, in bytes.", stat.rss_pages * page),
            ("process_virtual_memory_bytes", "gauge", "Virtual memory size, in bytes.", stat.virtual_bytes),
            ("process_threads", "gauge", "Threads of the process.", stat.threads),
        ];
        for (name, kind, help, value) in metrics {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n");
        }
    }
}

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, PartialEq)]
struct Stat {
    /// User plus system time, in clock ticks.
    cpu_ticks: f64,
    threads: f64,
    virtual_bytes: f64,
    rss_pages: f64,
}

impl Stat {
    /// Reads the fields after the command name (field 2, in parentheses, which may hold spaces
    /// and parentheses: it ends at the last `)`): utime and stime are fields 14 and 15,
    /// num_threads 20, vsize 23, rss 24.
    fn parse(stat: &str) -> Option<Self> {
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
        // fields[0] is field 3 (the state).
        let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
        Some(Self {
            cpu_ticks: field(14)? + field(15)?,
            threads: field(20)?,
            virtual_bytes: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Stat;

    #[test]
    fn stat_is_read_after_the_command_name() {
        let stat = "4242 (weir (up) x) S 1 4242 4242 0 -1 4194560 2163 0 0 0 1500 301 0 0 20 0 9 0 \
                    123456 104857600 5120 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let parsed = Stat::parse(stat).unwrap();
        assert_eq!(parsed, Stat { cpu_ticks: 1801.0, threads: 9.0, virtual_bytes: 104_857_600.0, rss_pages: 5120.0 });
        assert_eq!(Stat::parse("garbage"), None);
        assert_eq!(Stat::parse("1 (short) S 1 2"), None);
    }

    #[test]
    fn the_metrics_are_typed_as_prometheus_names_them() {
        let mut out = String::new();
        super::render(&mut out);
        if cfg!(target_os = "linux") {
            assert!(out.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "), "{out}");
            assert!(out.contains("# TYPE process_resident_memory_bytes gauge\n"), "{out}");
        }
    }
}
