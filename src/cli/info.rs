use clap::Args;

use crate::model::registry;
use crate::telemetry::host::HostInfo;

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
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
