//! The host: CPU, memory, threads — recorded in every results file and shown by `info`.

/// What this machine offers the CPU backend.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostInfo {
    pub cpu_model: Option<String>,
    pub logical_cpus: usize,
    pub worker_threads: usize,
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub os: String,
    pub arch: String,
    pub simd: Vec<String>,
}

/// `MemAvailable` of /proc/meminfo in bytes (None where Linux does not tell it).
pub fn memory_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Refuse to allocate `bytes` of host memory for `what` when the host says it has less available:
/// the allocation would otherwise abort the process or wake the OOM killer, after minutes of
/// loading. A host that does not tell is not checked.
pub fn check_host_memory(bytes: u64, what: &str) -> crate::error::Result<()> {
    match memory_available_bytes() {
        Some(avail) if bytes > avail => Err(crate::error::Error::Invalid(format!(
            "{what} needs {:.2} GiB of host memory; {:.2} GiB is available",
            bytes as f64 / (1u64 << 30) as f64,
            avail as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

impl HostInfo {
    pub fn collect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = |key: &str| {
            meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        };
        Self {
            cpu_model,
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            worker_threads: rayon::current_num_threads(),
            memory_total_bytes: mem("MemTotal:"),
            memory_available_bytes: mem("MemAvailable:"),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            simd: simd_features().into_iter().map(String::from).collect(),
        }
    }
}

fn simd_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            v.push("avx2");
        }
        if std::is_x86_feature_detected!("fma") {
            v.push("fma");
        }
        if std::is_x86_feature_detected!("avx512f") {
            v.push("avx512f");
        }
    }
    v
}

/// This process as a telemetry source (device `host`): `process_rss` (bytes resident, from
/// /proc/self/statm) and `process_cpu` (percent of one core this process used since the previous
/// sample, from utime + stime of /proc/self/stat; 100 Hz ticks, so single points are coarse and
/// the mean over points is what counts). On the CPU backend this is the memory and compute the run
/// costs. Both files are cheap to read (no per-CPU or interrupt tables).
pub struct HostSource {
    page_bytes: f64,
    last_cpu: Option<(f64, u64)>,
    statm: super::source::PolledFile,
    stat: super::source::PolledFile,
}

impl HostSource {
    /// `None` where /proc is not readable (not Linux).
    pub fn open() -> Option<Self> {
        let mut statm = super::source::PolledFile::open("/proc/self/statm").ok()?;
        let stat = super::source::PolledFile::open("/proc/self/stat").ok()?;
        let pages = statm_resident_pages(&mut statm)?;
        // the page size without libc: VmRSS (kB) over statm's resident pages, rounded to a power
        // of two; 4 KiB when that is not possible
        let vm_rss_kb = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            });
        let page_bytes = match vm_rss_kb {
            Some(kb) if pages > 0 => {
                let raw = kb * 1024.0 / pages as f64;
                2f64.powi(raw.log2().round() as i32)
                    .clamp(4096.0, 1048576.0)
            }
            _ => 4096.0,
        };
        Some(Self {
            page_bytes,
            last_cpu: None,
            statm,
            stat,
        })
    }
}

fn statm_resident_pages(statm: &mut super::source::PolledFile) -> Option<u64> {
    let s = statm.read().ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of this process, in clock ticks (100 Hz).
fn process_ticks(stat: &mut super::source::PolledFile) -> Option<u64> {
    let s = stat.read().ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

impl super::source::Source for HostSource {
    fn kind(&self) -> &str {
        "host"
    }

    fn channels(&self) -> Vec<super::source::ChannelSpec> {
        use super::source::{ChannelSpec, Quantity};
        vec![
            ChannelSpec::gauge("host", Quantity::ProcessRss),
            ChannelSpec::gauge("host", Quantity::ProcessCpu),
        ]
    }

    fn read(&mut self, t_s: f64, out: &mut [Option<f64>]) {
        if let Some(slot) = out.get_mut(0) {
            *slot = statm_resident_pages(&mut self.statm).map(|p| p as f64 * self.page_bytes);
        }
        // /proc/self/stat sums every thread of the process: read it only when a value is due
        if self.last_cpu.is_some_and(|(t0, _)| t_s - t0 < 0.05) {
            return;
        }
        let Some(ticks) = process_ticks(&mut self.stat) else {
            return;
        };
        match self.last_cpu {
            // at least 50 ms between values, or 100 Hz ticks are all noise
            Some((t0, k0)) if t_s - t0 >= 0.05 => {
                if let Some(slot) = out.get_mut(1) {
                    *slot = Some(100.0 * ticks.saturating_sub(k0) as f64 / 100.0 / (t_s - t0));
                }
                self.last_cpu = Some((t_s, ticks));
            }
            None => self.last_cpu = Some((t_s, ticks)),
            _ => {}
        }
    }
}
