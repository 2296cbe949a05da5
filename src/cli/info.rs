use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use clap::Args;

use crate::model::registry;
use crate::telemetry::host::HostInfo;
use crate::telemetry::{self, nvml, rapl, GpuSelection, SourceStatus};

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// GPUs to describe through NVML: all, or indices (0,1).
    #[arg(long, default_value = "all")]
    pub gpus: String,
    /// Measure the telemetry sampler's own CPU cost: sample every source for this many seconds at
    /// --sample-interval and report the sampler thread's CPU time.
    #[arg(long, value_name = "SECONDS")]
    pub measure_sampler: Option<f64>,
    /// Sampling interval for --measure-sampler (20ms, 0.1s).
    #[arg(long, default_value = "20ms")]
    pub sample_interval: String,
    /// Where RAPL's powercap tree is.
    #[arg(long, hide = true, default_value = rapl::POWERCAP_ROOT)]
    pub powercap_root: PathBuf,
}

/// What `info` says about telemetry: NVML and each GPU's power facts, RAPL and its zones.
#[derive(Debug, serde::Serialize)]
struct TelemetryInfo {
    nvml: SourceStatus,
    gpus: Vec<nvml::GpuDescription>,
    rapl: SourceStatus,
    rapl_zones: Vec<rapl::RaplZoneInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampler: Option<serde_json::Value>,
}

fn telemetry_info(a: &InfoArgs) -> anyhow::Result<TelemetryInfo> {
    let selection = GpuSelection::from_str(&a.gpus)?;
    let n = nvml::open(&selection, 1);
    let nvml = if n.gpus.is_empty() {
        n.statuses
            .into_iter()
            .next()
            .unwrap_or_else(|| SourceStatus::unavailable("nvml", "no GPU selected".into()))
    } else {
        SourceStatus::available("nvml", n.gpus.iter().map(|g| g.device.clone()))
    };
    let r = rapl::open(&a.powercap_root);
    Ok(TelemetryInfo {
        nvml,
        gpus: n.gpus,
        rapl: r.status,
        rapl_zones: r.zones,
        sampler: None,
    })
}

/// Run every source for `seconds` and report what the sampler thread cost.
fn measure_sampler(a: &InfoArgs, seconds: f64) -> anyhow::Result<serde_json::Value> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
        anyhow::bail!("--measure-sampler: {seconds} is not a duration in seconds (0..3600]");
    }
    let interval = super::telemetry_opts::parse_interval(&a.sample_interval)?;
    let opened = telemetry::open_sources(&telemetry::TelemetryConfig {
        gpus: GpuSelection::from_str(&a.gpus)?,
        powercap_root: a.powercap_root.clone(),
        interval,
        ..Default::default()
    });
    let devices: Vec<String> = opened
        .statuses
        .iter()
        .filter(|s| s.available)
        .flat_map(|s| s.devices.iter().map(move |d| format!("{}:{d}", s.source)))
        .collect();
    let s = telemetry::TelemetrySampler::start(
        opened.sources,
        interval,
        Instant::now(),
        telemetry::timeline::DEFAULT_MAX_POINTS,
    )?;
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
    let tl = s.stop();
    Ok(serde_json::json!({
        "interval_s": interval.as_secs_f64(),
        "devices": devices,
        "channels": tl.channels.len(),
        "stats": tl.sampler,
    }))
}

fn gib(b: Option<u64>) -> String {
    b.map_or("unknown".into(), |b| {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    })
}

pub fn run(a: InfoArgs) -> anyhow::Result<()> {
    let host = HostInfo::collect();
    let cuda = crate::backend::cuda::probe(true);
    let mut tel = telemetry_info(&a)?;
    if let Some(secs) = a.measure_sampler {
        tel.sampler = Some(measure_sampler(&a, secs)?);
    }
    if a.json {
        let j = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "host": host,
            "models": registry::names(),
            "cuda": cuda,
            "telemetry": tel,
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
    for line in super::backend::cuda_info_lines(&cuda) {
        println!("{line}");
    }
    for line in telemetry_lines(&tel) {
        println!("{line}");
    }
    println!("embedded models: {}", registry::names().join(", "));
    Ok(())
}

fn telemetry_lines(t: &TelemetryInfo) -> Vec<String> {
    let mut out = Vec::new();
    let status = |s: &SourceStatus| match (&s.reason, s.available) {
        (_, true) => format!("available ({})", s.devices.join(", ")),
        (Some(r), false) => format!("unavailable: {r}"),
        (None, false) => "unavailable".into(),
    };
    out.push(format!("NVML:     {}", status(&t.nvml)));
    for g in &t.gpus {
        let fields: Vec<&str> = [
            (g.power_instant_field, "instant"),
            (g.power_average_field, "average"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        out.push(format!(
            "GPU {}:    {}: power limit {}, energy counter {}, power fields {}; energy by {}",
            g.index,
            g.name.as_deref().unwrap_or("?"),
            g.power_limit_w
                .map_or("unknown".into(), |w| format!("{w:.0} W")),
            if g.energy_counter { "yes" } else { "no" },
            if fields.is_empty() {
                "none (power_usage only)".to_string()
            } else {
                fields.join("+")
            },
            if g.energy_counter {
                "counter".to_string()
            } else {
                format!(
                    "integrating {}",
                    g.integrated_power.as_deref().unwrap_or("nothing")
                )
            }
        ));
        if !g.unsupported.is_empty() {
            out.push(format!(
                "          unsupported: {}",
                g.unsupported.join("; ")
            ));
        }
    }
    out.push(format!("RAPL:     {}", status(&t.rapl)));
    for z in &t.rapl_zones {
        out.push(format!(
            "          {} ({}): {}",
            z.device,
            z.name,
            match &z.reason {
                None => "readable".to_string(),
                Some(r) => r.clone(),
            }
        ));
    }
    if let Some(s) = &t.sampler {
        let st = &s["stats"];
        out.push(format!(
            "sampler:  {} samples of {} channels ({}) in {:.2} s at {} ms: {:.2} ms CPU = {:.3}% of one core, {:.1} us per sample (max {:.1})",
            st["samples"],
            s["channels"],
            s["devices"]
                .as_array()
                .map(|d| d.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            st["wall_s"].as_f64().unwrap_or(0.0),
            s["interval_s"].as_f64().unwrap_or(0.0) * 1e3,
            st["cpu_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
            st["cpu_fraction_of_one_core"].as_f64().unwrap_or(f64::NAN) * 100.0,
            st["mean_read_us"].as_f64().unwrap_or(0.0),
            st["max_read_us"].as_f64().unwrap_or(0.0),
        ));
    }
    out
}
