//! Telemetry options and glue shared by the commands that measure (`run`; `load` can flatten the
//! same [`TelemetryArgs`]): start the sampler on the run's epoch, mark phase edges, compute each
//! phase's energy and cost, and print the energy table. See docs/telemetry.md.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::metrics::energy::{self, CostParams, EnergyOptions, EnergyReport, Work};
use crate::report::results::{Phase, RunResults};
use crate::telemetry::nvml::GpuDescription;
use crate::telemetry::{
    open_sources, rapl, resolve_scope, EnergyScope, EngineGpu, GpuSelection, SamplerHandle,
    TelemetryConfig, TelemetrySampler, TelemetrySection,
};

#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct TelemetryArgs {
    /// Do not sample telemetry (no energy; cost per token is still computed from time).
    #[arg(long)]
    pub no_telemetry: bool,
    /// Telemetry sampling interval: 20ms, 0.1s, or milliseconds.
    #[arg(long, default_value = "20ms")]
    pub sample_interval: String,
    /// GPUs to sample (and price) through NVML: all, or NVML indices (0,1). Default: for `run` on
    /// the CUDA backend, the engine's GPU only; otherwise all.
    #[arg(long)]
    pub gpus: Option<String>,
    /// Devices whose energy is summed: auto (the GPUs when measured, else CPU packages and DRAM
    /// through RAPL), gpu, cpu or all.
    #[arg(long, default_value = "auto")]
    pub energy_scope: String,
    /// Most points the telemetry timeline keeps (beyond, pairs merge keeping min/max/mean).
    #[arg(long, default_value_t = crate::telemetry::timeline::DEFAULT_MAX_POINTS)]
    pub timeline_points: usize,
    /// Price of one GPU-hour in USD: gives $ per 1M input and per 1M output tokens.
    #[arg(long, value_name = "USD_PER_HOUR")]
    pub gpu_price: Option<f64>,
    /// GPUs the price is paid for (default: the GPUs measured, at least 1).
    #[arg(long)]
    pub num_gpus: Option<u32>,
    /// Carbon intensity of the electricity, gCO2e per kWh: gives emissions per 1M tokens.
    #[arg(long, value_name = "G_CO2E_PER_KWH")]
    pub grid_intensity: Option<f64>,
    /// Where RAPL's powercap tree is (for tests and containers that mount it elsewhere).
    #[arg(long, hide = true, default_value = rapl::POWERCAP_ROOT)]
    pub powercap_root: PathBuf,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            no_telemetry: false,
            sample_interval: "20ms".into(),
            gpus: None,
            energy_scope: "auto".into(),
            timeline_points: crate::telemetry::timeline::DEFAULT_MAX_POINTS,
            gpu_price: None,
            num_gpus: None,
            grid_intensity: None,
            powercap_root: PathBuf::from(rapl::POWERCAP_ROOT),
        }
    }
}

/// Parse `20ms`, `0.5s`, `1500us`, or a bare number of milliseconds.
pub fn parse_interval(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let (num, mult) = if let Some(v) = t.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = t.strip_suffix("us") {
        (v, 1e-6)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1.0)
    } else {
        (t, 1e-3)
    };
    let v: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .with_context(|| {
            format!("--sample-interval: `{text}` is not a duration (e.g. 20ms, 0.1s)")
        })?;
    let d = Duration::from_secs_f64(v * mult);
    if d < crate::telemetry::sampler::MIN_INTERVAL {
        bail!("--sample-interval: `{text}` is below the 1 ms minimum");
    }
    Ok(d)
}

impl TelemetryArgs {
    /// Check every option (before any work starts).
    /// `--gpus` is checked here; without it the selection is `All` (see [`gpu_selection`]).
    pub fn validate(&self) -> anyhow::Result<(Duration, GpuSelection, EnergyScope)> {
        let interval = parse_interval(&self.sample_interval)?;
        let gpus = match &self.gpus {
            Some(g) => GpuSelection::from_str(g)?,
            None => GpuSelection::All,
        };
        let scope = EnergyScope::from_str(&self.energy_scope)?;
        if let Some(p) = self.gpu_price {
            if !(p.is_finite() && p >= 0.0) {
                bail!("--gpu-price: {p} is not a price (USD per GPU-hour, at least 0)");
            }
        }
        if self.num_gpus == Some(0) {
            bail!("--num-gpus must be at least 1");
        }
        if let Some(g) = self.grid_intensity {
            if !(g.is_finite() && g >= 0.0) {
                bail!(
                    "--grid-intensity: {g} is not a carbon intensity (gCO2e per kWh, at least 0)"
                );
            }
        }
        Ok((interval, gpus, scope))
    }
}

/// The GPUs to measure and price: `--gpus` when given; else the engine's GPU when it runs on one
/// (NVML finds it when telemetry opens: by UUID, else by its ordinal's index, else all GPUs with a
/// warning; [`crate::telemetry::nvml::open`]); else all.
pub fn gpu_selection(
    explicit: Option<&str>,
    engine_gpu: Option<EngineGpu>,
) -> anyhow::Result<GpuSelection> {
    Ok(match (explicit, engine_gpu) {
        (Some(g), _) => GpuSelection::from_str(g)?,
        (None, Some(e)) => GpuSelection::Engine(e),
        (None, None) => GpuSelection::All,
    })
}

/// How telemetry is to find the GPU of a CUDA engine on device `ordinal` with `uuid`
/// (cuDeviceGetUuid's, in NVML's spelling), `cuda_visible` being `CUDA_VISIBLE_DEVICES`.
pub fn engine_gpu(ordinal: usize, uuid: Option<String>, cuda_visible: Option<&str>) -> EngineGpu {
    EngineGpu {
        uuid,
        ordinal_index: nvml_index_of_cuda_ordinal(ordinal, cuda_visible),
    }
}

/// The NVML index of CUDA device `ordinal`: the ordinal itself, or the `ordinal`-th entry of
/// `CUDA_VISIBLE_DEVICES` when that lists indices; `None` when it lists UUIDs or MIG devices (or
/// too few entries). Assumes CUDA enumerates in NVML's (PCI bus) order, as with
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID` or GPUs of one model.
pub fn nvml_index_of_cuda_ordinal(ordinal: usize, cuda_visible: Option<&str>) -> Option<u32> {
    match cuda_visible.map(str::trim).filter(|v| !v.is_empty()) {
        None => u32::try_from(ordinal).ok(),
        Some(list) => list.split(',').nth(ordinal)?.trim().parse::<u32>().ok(),
    }
}

/// The telemetry of one `run` or `load`: the sampler (when on), what was found, and the energy
/// options. `run` measures phases with [`RunTelemetry::after_phase`]; `load` measures its steps
/// through [`RunTelemetry::snapshot`] and [`RunTelemetry::section_with`].
pub struct RunTelemetry {
    sampler: Option<SamplerHandle>,
    section: TelemetrySection,
    opts: EnergyOptions,
    enabled: bool,
}

impl RunTelemetry {
    /// Open the sources and start sampling on `epoch` (the clock of the run's records).
    /// `engine_gpu`: `Some` for an engine on a GPU, which is then the default GPU selection, see
    /// [`gpu_selection`].
    pub fn start(
        a: &TelemetryArgs,
        epoch: Instant,
        engine_gpu: Option<EngineGpu>,
    ) -> anyhow::Result<Self> {
        let (interval, _, scope) = a.validate()?;
        let gpus = gpu_selection(a.gpus.as_deref(), engine_gpu)?;
        let mut section = TelemetrySection {
            interval_s: interval.as_secs_f64(),
            energy_scope: scope,
            energy_devices: Vec::new(),
            sources: Vec::new(),
            gpus: Vec::new(),
            rapl_zones: Vec::new(),
            counter_events: Vec::new(),
            timeline: None,
            energy: None,
        };
        let mut sampler = None;
        if !a.no_telemetry {
            let opened = open_sources(&TelemetryConfig {
                gpus,
                powercap_root: a.powercap_root.clone(),
                interval,
                ..TelemetryConfig::default()
            });
            for w in &opened.warnings {
                eprintln!("{w}");
            }
            section.sources = opened.statuses.clone();
            section.gpus = opened.gpus.clone();
            section.rapl_zones = opened.rapl_zones.clone();
            section.energy_devices = resolve_scope(&opened.statuses, scope);
            match TelemetrySampler::start(opened.sources, interval, epoch, a.timeline_points) {
                Ok(s) => sampler = Some(s),
                // the run goes on without telemetry, saying why
                Err(e) => {
                    section
                        .sources
                        .push(crate::telemetry::SourceStatus::unavailable(
                            "sampler",
                            format!("the sampler could not start: {e}"),
                        ));
                    section.energy_devices.clear();
                }
            }
        }
        let gpus_in_scope = section
            .energy_devices
            .iter()
            .filter(|d| d.starts_with("gpu"))
            .count();
        let opts = EnergyOptions {
            scope: section.energy_devices.clone(),
            cost: a.gpu_price.map(|p| CostParams {
                usd_per_gpu_hour: p,
                num_gpus: f64::from(a.num_gpus.unwrap_or(gpus_in_scope.max(1) as u32)),
            }),
            grid_intensity_g_per_kwh: a.grid_intensity,
        };
        Ok(Self {
            sampler,
            section,
            opts,
            enabled: !a.no_telemetry,
        })
    }

    /// The GPUs NVML found.
    pub fn gpus(&self) -> &[GpuDescription] {
        &self.section.gpus
    }

    /// One line saying what is measured, for the run's banner.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "telemetry off".into();
        }
        let unavailable: Vec<String> = self
            .section
            .sources
            .iter()
            .filter(|s| !s.available)
            .map(|s| {
                format!(
                    "{} unavailable ({})",
                    s.source,
                    s.reason.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let energy = if self.section.energy_devices.is_empty() {
            "no energy source".to_string()
        } else {
            format!("energy of {}", self.section.energy_devices.join("+"))
        };
        let mut line = format!(
            "telemetry every {} ms: {energy}",
            self.section.interval_s * 1e3
        );
        if !unavailable.is_empty() {
            line += &format!("; {}", unavailable.join("; "));
        }
        line
    }

    /// The section as it stands (sources, the timeline so far, the measured phases' energy).
    pub fn section(&self) -> Option<TelemetrySection> {
        Some(self.section.clone())
    }

    /// The energy options (scope, price, grid intensity) phases are measured with.
    pub fn energy_options(&self) -> &EnergyOptions {
        &self.opts
    }

    /// Whether telemetry is on (`--no-telemetry` not given).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The timeline so far (`None` when nothing is sampled).
    pub fn snapshot(&self) -> Option<crate::telemetry::Timeline> {
        self.sampler.as_ref().map(|s| s.snapshot())
    }

    /// The section with the timeline so far (with `stop`: sampling stops and the final timeline,
    /// with the sampler's own cost, goes in) and `energy` as the whole-run energy; `None` when
    /// telemetry is off.
    pub fn section_with(
        &mut self,
        energy: Option<EnergyReport>,
        stop: bool,
    ) -> Option<TelemetrySection> {
        if stop {
            if let Some(s) = self.sampler.take() {
                self.section.counter_events = s.counter_events();
                self.section.timeline = Some(s.stop());
            }
        } else if let Some(s) = &self.sampler {
            self.section.counter_events = s.counter_events();
            self.section.timeline = Some(s.snapshot());
        }
        self.section.energy = energy;
        self.enabled.then(|| self.section.clone())
    }

    /// Sample now: call right before a phase starts and right after it ends, so the phase's
    /// counter difference needs no interpolation at its edges.
    pub fn mark(&self) {
        if let Some(s) = &self.sampler {
            s.sample_now();
        }
    }

    /// Energy, split and cost of a finished phase; refreshes the section's timeline and the
    /// run-level energy (over the measured phases so far) in `results`.
    pub fn after_phase(&mut self, results: &mut RunResults, idx: usize, concurrency: usize) {
        let timeline = self.sampler.as_ref().map(|s| s.snapshot());
        if let Some(s) = &self.sampler {
            self.section.counter_events = s.counter_events();
        }
        if let Some(phase) = results.phases.get_mut(idx) {
            phase.energy = phase_energy(timeline.as_ref(), phase, Some(concurrency), &self.opts);
        }
        self.section.timeline = timeline;
        self.section.energy = run_energy(&results.phases, &self.opts);
        results.telemetry = self.section();
    }

    /// Stop sampling; the final timeline (with the sampler's own cost) goes into `results`.
    pub fn finish(mut self, results: &mut RunResults) {
        if let Some(s) = self.sampler.take() {
            self.section.counter_events = s.counter_events();
            self.section.timeline = Some(s.stop());
        }
        self.section.energy = run_energy(&results.phases, &self.opts);
        results.telemetry = Some(self.section);
    }
}

/// A phase's energy report over its window `[started_s, ended_s]`, its work (successful requests)
/// and its steps as prefill/decode segments; with its steady state over `concurrency` slots (a grid
/// cell's batch, a stream's max_num_seqs) when the phase reached it.
pub fn phase_energy(
    timeline: Option<&crate::telemetry::Timeline>,
    phase: &Phase,
    concurrency: Option<usize>,
    opts: &EnergyOptions,
) -> Option<EnergyReport> {
    let end = phase.ended_s?;
    let work = match &phase.summary {
        Some(s) => Work {
            requests: s.completed as f64,
            input_tokens: s.total_input_tokens as f64,
            output_tokens: s.total_output_tokens as f64,
        },
        None => Work::of_records(
            &phase
                .requests
                .iter()
                .map(|r| r.record.clone())
                .collect::<Vec<_>>(),
        ),
    };
    let segments = energy::segments_from_steps(&phase.steps);
    let records: Vec<_> = phase.requests.iter().map(|r| r.record.clone()).collect();
    let steady = concurrency
        .and_then(|c| crate::metrics::steady_window(&records, c))
        .zip(phase.summary.as_ref().and_then(|s| s.steady_state.as_ref()));
    Some(energy::summarize_with_steady_state(
        timeline,
        (phase.started_s, end),
        &work,
        steady,
        Some(&segments),
        opts,
    ))
}

/// The measured (non-warmup) phases' reports combined.
fn run_energy(phases: &[Phase], opts: &EnergyOptions) -> Option<EnergyReport> {
    let reports: Vec<EnergyReport> = phases
        .iter()
        .filter(|p| !p.warmup)
        .filter_map(|p| p.energy.clone())
        .collect();
    EnergyReport::combine(&reports, opts)
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => {
            if x != 0.0 && x.abs() < 0.01 {
                format!("{x:.2e}")
            } else {
                format!("{x:.digits$}")
            }
        }
        _ => "-".into(),
    }
}

/// The energy and cost table, when any measured phase has energy or cost.
pub fn print_energy(r: &RunResults) {
    let phases: Vec<(&str, &EnergyReport)> = r
        .phases
        .iter()
        .filter(|p| !p.warmup)
        .filter_map(|p| p.energy.as_ref().map(|e| (p.name.as_str(), e)))
        .filter(|(_, e)| e.energy.is_some() || e.cost.is_some())
        .collect();
    if phases.is_empty() {
        return;
    }
    let total = r.telemetry.as_ref().and_then(|t| t.energy.as_ref());
    println!(
        "{:<28} {:>10} {:>8} {:>8} {:>12} {:>12} {:>9} {:>10} {:>10} {:>10} {:>11}",
        "phase",
        "energy J",
        "avg W",
        "peak W",
        "prefill J/in",
        "decode J/out",
        "tok/J",
        "steady tok/J",
        "$/1M in",
        "$/1M out",
        "gCO2e/1Mtok"
    );
    let rows = phases.iter().map(|(n, e)| (*n, *e)).chain(
        total
            .filter(|_| phases.len() > 1)
            .map(|e| ("(all measured phases)", e)),
    );
    for (name, e) in rows {
        let m = e.energy.as_ref();
        let c = e.cost.as_ref();
        let steady = e.steady_state.as_ref().and_then(|s| s.energy.as_ref());
        println!(
            "{:<28} {:>10} {:>8} {:>8} {:>12} {:>12} {:>9} {:>12} {:>10} {:>10} {:>11}",
            name,
            num(m.map(|m| m.energy_j), 2),
            num(m.map(|m| m.avg_power_w), 1),
            num(m.and_then(|m| m.peak_power_w), 1),
            num(m.and_then(|m| m.j_per_input_token), 4),
            num(m.and_then(|m| m.j_per_output_token), 4),
            num(m.and_then(|m| m.tokens_per_j), 2),
            num(steady.and_then(|m| m.tokens_per_j), 2),
            num(c.and_then(|c| c.usd_per_1m_input_tokens), 4),
            num(c.and_then(|c| c.usd_per_1m_output_tokens), 4),
            num(e.emissions.as_ref().and_then(|x| x.g_per_1m_tokens), 1),
        );
    }
    let first = phases.iter().find_map(|(_, e)| e.energy.as_ref());
    match first {
        Some(m) => println!(
            "(energy of {} by {}, sampled every {} ms; prefill J/in: prefill energy ÷ input tokens, \
             decode J/out: decode energy ÷ output tokens, split by step tokens, idle excluded; tok/J: \
             all tokens ÷ all energy of the phase; steady tok/J: the same over the steady state, all \
             slots busy, - when never reached)",
            m.scope.join("+"),
            match m.method {
                energy::EnergyMethod::Counter => "energy counter",
                energy::EnergyMethod::PowerIntegration => "power integration",
                energy::EnergyMethod::Mixed => "counter and power integration",
            },
            m.sampling_interval_s * 1e3
        ),
        None => println!("(no energy measured: see the results' telemetry.sources; cost from time only)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units() {
        assert_eq!(parse_interval("20ms").unwrap(), Duration::from_millis(20));
        assert_eq!(parse_interval("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("100").unwrap(), Duration::from_millis(100));
        assert_eq!(
            parse_interval("1500us").unwrap(),
            Duration::from_micros(1500)
        );
        assert!(parse_interval("0.1ms").is_err());
        assert!(parse_interval("fast").is_err());
        assert!(parse_interval("-5ms").is_err());
    }

    #[test]
    fn the_engines_gpu_is_the_default_selection() {
        // CPU engine or load: all GPUs unless --gpus
        assert_eq!(gpu_selection(None, None).unwrap(), GpuSelection::All);
        // a CUDA engine: its GPU, found when NVML opens
        let engine = engine_gpu(1, None, Some("2,7"));
        assert_eq!(engine.ordinal_index, Some(7));
        assert_eq!(
            gpu_selection(None, Some(engine.clone())).unwrap(),
            GpuSelection::Engine(engine.clone())
        );
        // --gpus wins either way
        assert_eq!(
            gpu_selection(Some("0,1"), Some(engine.clone())).unwrap(),
            GpuSelection::List(vec![0, 1])
        );
        assert_eq!(
            gpu_selection(Some("all"), Some(engine)).unwrap(),
            GpuSelection::All
        );
        assert!(gpu_selection(Some("x"), None).is_err());
    }

    #[test]
    fn the_engine_gpu_is_found_by_uuid_before_its_ordinal() {
        use crate::telemetry::nvml::engine_gpu_index;
        let uuid = "GPU-8f1e2c3a-aaaa-bbbb-cccc-0123456789ab";
        let nvml = |u: &str| (u == uuid).then_some(5);
        let find = |ordinal, u: Option<&str>, visible| {
            engine_gpu_index(&engine_gpu(ordinal, u.map(String::from), visible), nvml)
        };
        // CUDA's order (fastest first) differs from NVML's: the UUID wins over the ordinal
        assert_eq!(find(0, Some(uuid), None), Some(5));
        assert_eq!(find(1, Some(uuid), Some(uuid)), Some(5));
        // unknown to NVML (MIG, or no NVML): the ordinal through CUDA_VISIBLE_DEVICES
        let other = "GPU-00000000-0000-0000-0000-000000000000";
        assert_eq!(find(1, Some(other), Some("2,7")), Some(7));
        assert_eq!(find(3, None, None), Some(3));
        // neither: none (nvml::open then measures every GPU and warns)
        assert_eq!(find(0, Some(other), Some(other)), None);
    }

    #[test]
    fn cuda_ordinals_map_to_nvml_indices() {
        assert_eq!(nvml_index_of_cuda_ordinal(0, None), Some(0));
        assert_eq!(nvml_index_of_cuda_ordinal(2, Some("")), Some(2));
        assert_eq!(nvml_index_of_cuda_ordinal(0, Some("3,1")), Some(3));
        assert_eq!(nvml_index_of_cuda_ordinal(1, Some(" 3, 1 ")), Some(1));
        assert_eq!(nvml_index_of_cuda_ordinal(2, Some("3,1")), None);
        assert_eq!(
            nvml_index_of_cuda_ordinal(0, Some("GPU-8f1e2c3a-aaaa-bbbb-cccc-0123456789ab")),
            None
        );
    }

    #[test]
    fn bad_telemetry_options_are_named() {
        let a = TelemetryArgs {
            gpus: Some("0,x".into()),
            ..Default::default()
        };
        assert!(a.validate().unwrap_err().to_string().contains("--gpus"));
        let a = TelemetryArgs {
            energy_scope: "moon".into(),
            ..Default::default()
        };
        assert!(a
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--energy-scope"));
        let a = TelemetryArgs {
            gpu_price: Some(f64::NAN),
            ..Default::default()
        };
        assert!(a
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--gpu-price"));
    }
}
