//! Telemetry: what the machine is ([`host::HostInfo`]) and what it draws while it works.
//!
//! # Pieces
//! - [`source::Source`]: a set of channels read together (NVML per GPU in [`nvml`], RAPL CPU
//!   package and DRAM in [`rapl`], this process's memory and the CPUs' load in [`host`], a known
//!   power curve in [`synthetic`]).
//! - [`sampler`]: a thread reading every source each interval (default 20 ms) onto one
//!   [`timeline::Timeline`], on the run's clock (seconds from an `Instant` epoch shared with the
//!   request and step records).
//! - [`timeline`]: the samples in bounded memory (pairs of points merged once full, min/max/mean
//!   kept; counters and power integrals exact at point ends).
//! - energy, cost and emissions over any window: [`crate::metrics::energy`].
//!
//! Nothing here fails a run: a missing library, driver, GPU or permission makes that source
//! unavailable, with the reason recorded in [`SourceStatus`]; an unsupported field is null.
//!
//! # Using it around any run (the load generator, a bench)
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use infermeter::metrics::energy::{self, EnergyOptions, Work};
//! use infermeter::telemetry::{open_sources, TelemetryConfig, TelemetrySampler};
//!
//! let epoch = Instant::now(); // the same epoch as the request records
//! let opened = open_sources(&TelemetryConfig::default());
//! let scope = opened.energy_scope(Default::default());
//! let sampler = TelemetrySampler::start(opened.sources, Duration::from_millis(20), epoch, 4096)
//!     .expect("sampler thread");
//! let start = sampler.sample_now().unwrap_or(0.0);
//! // ... run the workload, recording requests on `epoch` ...
//! let end = sampler.sample_now().unwrap_or(start);
//! let timeline = sampler.stop();
//! let work = Work { requests: 10.0, input_tokens: 5000.0, output_tokens: 1280.0 };
//! let segments = energy::segments_from_requests(&[/* RequestRecord ... */]);
//! let report = energy::summarize(
//!     Some(&timeline),
//!     (start, end), // or metrics::steady_window(&records, concurrency)
//!     &work,
//!     Some(&segments),
//!     &EnergyOptions { scope, cost: None, grid_intensity_g_per_kwh: None },
//! );
//! ```

pub mod host;
pub mod nvml;
pub mod rapl;
pub mod sampler;
pub mod source;
pub mod synthetic;
pub mod timeline;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use sampler::{SamplerHandle, TelemetrySampler};
pub use source::{ChannelKind, ChannelSpec, CounterEvents, Quantity, Source};
pub use timeline::{Timeline, TimelineBuilder};

use crate::error::{Error, Result};
use crate::metrics::energy::EnergyReport;

/// Which GPUs to sample: `all`, a list of NVML indices (`0,1`), or the engine's GPU (found when
/// NVML opens, [`nvml::open`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GpuSelection {
    #[default]
    All,
    List(Vec<u32>),
    Engine(EngineGpu),
}

/// The GPU a CUDA engine runs on, as NVML is to find it: by `uuid` when NVML knows it (exact
/// whatever CUDA's enumeration order and `CUDA_VISIBLE_DEVICES`), else at `ordinal_index`; when
/// neither works, every GPU, with a warning ([`nvml::engine_gpu_index`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineGpu {
    /// cuDeviceGetUuid's, in NVML's spelling (`GPU-8-4-4-4-12` hex digits).
    pub uuid: Option<String>,
    /// The NVML index the CUDA ordinal maps to through `CUDA_VISIBLE_DEVICES`, assuming PCI-bus
    /// order; `None` where it does not map (UUID or MIG entries).
    pub ordinal_index: Option<u32>,
}

impl FromStr for GpuSelection {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(GpuSelection::All);
        }
        let mut v = Vec::new();
        for part in t.split(',') {
            let i = part.trim().parse::<u32>().map_err(|_| {
                Error::Invalid(format!(
                    "--gpus: `{part}` is not a GPU index (use `all` or e.g. `0,1`)"
                ))
            })?;
            if !v.contains(&i) {
                v.push(i);
            }
        }
        Ok(GpuSelection::List(v))
    }
}

impl fmt::Display for GpuSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuSelection::All => f.write_str("all"),
            GpuSelection::List(v) => {
                let s: Vec<String> = v.iter().map(u32::to_string).collect();
                f.write_str(&s.join(","))
            }
            GpuSelection::Engine(e) => match (&e.uuid, e.ordinal_index) {
                (Some(u), _) => write!(f, "engine ({u})"),
                (None, Some(i)) => write!(f, "engine ({i})"),
                (None, None) => f.write_str("engine"),
            },
        }
    }
}

impl Serialize for GpuSelection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which devices' energy is summed into a run's energy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnergyScope {
    /// The GPUs when any is measured, else the CPU packages and DRAM.
    #[default]
    Auto,
    Gpu,
    Cpu,
    /// GPUs, CPU packages and DRAM.
    All,
}

impl FromStr for EnergyScope {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(EnergyScope::Auto),
            "gpu" => Ok(EnergyScope::Gpu),
            "cpu" => Ok(EnergyScope::Cpu),
            "all" => Ok(EnergyScope::All),
            other => Err(Error::Invalid(format!(
                "--energy-scope: `{other}` (expected auto, gpu, cpu or all)"
            ))),
        }
    }
}

/// A source's availability, as recorded in the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// `nvml`, `rapl`, `host`, `synthetic`.
    pub source: String,
    pub available: bool,
    /// Why it is unavailable.
    pub reason: Option<String>,
    /// Devices it measures (`gpu0`, `cpu-package0`, ...).
    pub devices: Vec<String>,
    /// `field: reason` for fields recorded as null.
    #[serde(default)]
    pub unsupported: Vec<String>,
}

impl SourceStatus {
    pub fn unavailable(source: &str, reason: String) -> Self {
        Self {
            source: source.into(),
            available: false,
            reason: Some(reason),
            devices: Vec::new(),
            unsupported: Vec::new(),
        }
    }

    pub fn available(source: &str, devices: impl IntoIterator<Item = String>) -> Self {
        Self {
            source: source.into(),
            available: true,
            reason: None,
            devices: devices.into_iter().collect(),
            unsupported: Vec::new(),
        }
    }

    pub fn of_gpu(d: &nvml::GpuDescription) -> Self {
        let mut s = Self::available("nvml", [d.device.clone()]);
        s.unsupported = d.unsupported.clone();
        s
    }
}

/// What to sample.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub gpus: GpuSelection,
    pub nvml: bool,
    pub rapl: bool,
    pub host: bool,
    /// Normally [`rapl::POWERCAP_ROOT`].
    pub powercap_root: PathBuf,
    /// The sampling interval (static NVML fields are re-read about once a second).
    pub interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            gpus: GpuSelection::All,
            nvml: true,
            rapl: true,
            host: true,
            powercap_root: PathBuf::from(rapl::POWERCAP_ROOT),
            interval: Duration::from_millis(20),
        }
    }
}

/// The sources that could be opened, and the status of every source asked for.
pub struct OpenedSources {
    pub sources: Vec<Box<dyn Source>>,
    /// What the caller should tell the user (e.g. the engine's GPU not found: all GPUs measured).
    pub warnings: Vec<String>,
    pub statuses: Vec<SourceStatus>,
    pub gpus: Vec<nvml::GpuDescription>,
    pub rapl_zones: Vec<rapl::RaplZoneInfo>,
}

/// Open every source `cfg` asks for. Never fails (see the module docs).
pub fn open_sources(cfg: &TelemetryConfig) -> OpenedSources {
    let mut out = OpenedSources {
        sources: Vec::new(),
        warnings: Vec::new(),
        statuses: Vec::new(),
        gpus: Vec::new(),
        rapl_zones: Vec::new(),
    };
    if cfg.nvml {
        let per_second = (1.0 / cfg.interval.as_secs_f64().max(1e-3)).ceil() as u64;
        let n = nvml::open(&cfg.gpus, per_second);
        out.statuses.extend(n.statuses);
        out.warnings.extend(n.warning);
        out.gpus = n.gpus;
        for s in n.sources {
            out.sources.push(Box::new(s));
        }
    }
    if cfg.rapl {
        let r = rapl::open(&cfg.powercap_root);
        out.statuses.push(r.status);
        out.rapl_zones = r.zones;
        if let Some(s) = r.source {
            out.sources.push(Box::new(s));
        }
    }
    if cfg.host {
        match host::HostSource::open() {
            Some(s) => {
                out.statuses
                    .push(SourceStatus::available("host", ["host".to_string()]));
                out.sources.push(Box::new(s));
            }
            None => out.statuses.push(SourceStatus::unavailable(
                "host",
                "/proc is not readable".into(),
            )),
        }
    }
    out
}

impl OpenedSources {
    /// The devices energy is summed over for `scope`.
    pub fn energy_scope(&self, scope: EnergyScope) -> Vec<String> {
        resolve_scope(&self.statuses, scope)
    }
}

/// The devices of the available sources that `scope` selects.
pub fn resolve_scope(statuses: &[SourceStatus], scope: EnergyScope) -> Vec<String> {
    let devices: Vec<&String> = statuses
        .iter()
        .filter(|s| s.available)
        .flat_map(|s| &s.devices)
        .collect();
    let gpus: Vec<String> = devices
        .iter()
        .filter(|d| d.starts_with("gpu"))
        .map(|d| d.to_string())
        .collect();
    let cpus: Vec<String> = devices
        .iter()
        .filter(|d| d.starts_with("cpu-"))
        .map(|d| d.to_string())
        .collect();
    match scope {
        EnergyScope::Gpu => gpus,
        EnergyScope::Cpu => cpus,
        EnergyScope::All => gpus.into_iter().chain(cpus).collect(),
        EnergyScope::Auto if !gpus.is_empty() => gpus,
        EnergyScope::Auto => cpus,
    }
}

/// The `telemetry` section of a results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySection {
    /// The sampling interval (s).
    pub interval_s: f64,
    /// The scope asked for (`auto`, `gpu`, `cpu`, `all`).
    pub energy_scope: EnergyScope,
    /// The devices energy is summed over (empty: no energy measured).
    pub energy_devices: Vec<String>,
    /// Every source asked for: available or why not.
    pub sources: Vec<SourceStatus>,
    /// The GPUs NVML measures: power limit, energy counter, power fields, unsupported fields.
    pub gpus: Vec<nvml::GpuDescription>,
    /// The RAPL zones found (readable or why not).
    pub rapl_zones: Vec<rapl::RaplZoneInfo>,
    /// Energy-counter wraps and resets seen.
    pub counter_events: Vec<CounterEvents>,
    /// The timeline (compacted; see `max_points`).
    pub timeline: Option<Timeline>,
    /// Energy and cost of the measured (non-warmup) phases together.
    pub energy: Option<EnergyReport>,
}
