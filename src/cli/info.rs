use clap::Args;

use crate::model::registry;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What this machine offers the CPU backend.
#[derive(Debug, serde::Serialize)]
pub struct HostInfo {
    pub cpu_model: Option<String>,
    pub logical_cpus: usize,
    pub worker_threads: usize,
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub os: String,
    pub arch: String,
    pub simd: Vec<&'static str>,
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
            simd: simd_features(),
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

fn gib(b: Option<u64>) -> String {
    b.map_or("unknown".into(), |b| {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    })
}

pub fn run(a: InfoArgs) -> anyhow::Result<()> {
    let host = HostInfo::collect();
    if a.json {
        let j = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "host": host,
            "models": registry::names(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("infermeter {}", env!("CARGO_PKG_VERSION"));
    println!(
        "CPU:      {}",
        host.cpu_model.as_deref().unwrap_or("unknown")
    );
    println!(
        "cores:    {} logical, {} worker threads; SIMD: {}",
        host.logical_cpus,
        host.worker_threads,
        if host.simd.is_empty() {
            "baseline".into()
        } else {
            host.simd.join(", ")
        }
    );
    println!(
        "memory:   {} total, {} available",
        gib(host.memory_total_bytes),
        gib(host.memory_available_bytes)
    );
    println!("OS:       {} {}", host.os, host.arch);
    println!("backends: cpu (f32 reference)");
    println!("embedded models: {}", registry::names().join(", "));
    Ok(())
}
