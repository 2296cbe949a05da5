//! NVML: one [`GpuSource`] per selected GPU.
//!
//! Channels of device `gpuN`: `energy` (the total-energy counter, mJ since driver load, Volta and
//! newer; unwrapped into joules since the source opened), `power_instant` and `power_average` (NVML
//! field values `NVML_FI_DEV_POWER_INSTANT` / `_AVERAGE`, where the driver supports them),
//! `power_usage` (`nvmlDeviceGetPowerUsage`: a one-second average on Ampere and newer except
//! GA100), `power_limit` (enforced), `memory_used`, `memory_total`, `utilization`,
//! `memory_utilization`, `sm_clock`, `memory_clock`, `temperature`, `throttle_reasons`.
//!
//! Every field is probed once when the source opens: a field the GPU or driver does not support is
//! never read again and stays null, its reason listed in the source's status. The integrated power
//! channel (for energy by power integration) is `power_instant` where supported, else `power_usage`.
//! Static fields (`power_limit`, `memory_total`) are re-read about once a second.
//!
//! The reads go through the [`GpuReader`] trait, so the source logic is tested with a fake GPU.

use std::sync::Arc;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{NVML_FI_DEV_POWER_AVERAGE, NVML_FI_DEV_POWER_INSTANT};
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use super::source::{ChannelKind, ChannelSpec, CounterEvents, EnergyCounter, Quantity, Source};
use super::{EngineGpu, GpuSelection, SourceStatus};

/// A field of a GPU, in NVML's own units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuField {
    /// Total energy since driver load (mJ).
    EnergyMj,
    PowerInstantMw,
    PowerAverageMw,
    PowerUsageMw,
    PowerLimitMw,
    MemoryUsedBytes,
    MemoryTotalBytes,
    GpuUtilPct,
    MemUtilPct,
    SmClockMhz,
    MemClockMhz,
    TemperatureC,
    ThrottleReasons,
}

impl GpuField {
    pub const ALL: [GpuField; 13] = [
        GpuField::EnergyMj,
        GpuField::PowerInstantMw,
        GpuField::PowerAverageMw,
        GpuField::PowerUsageMw,
        GpuField::PowerLimitMw,
        GpuField::MemoryUsedBytes,
        GpuField::MemoryTotalBytes,
        GpuField::GpuUtilPct,
        GpuField::MemUtilPct,
        GpuField::SmClockMhz,
        GpuField::MemClockMhz,
        GpuField::TemperatureC,
        GpuField::ThrottleReasons,
    ];

    /// The channel this field feeds.
    pub fn quantity(self) -> Quantity {
        use GpuField::*;
        match self {
            EnergyMj => Quantity::Energy,
            PowerInstantMw => Quantity::PowerInstant,
            PowerAverageMw => Quantity::PowerAverage,
            PowerUsageMw => Quantity::PowerUsage,
            PowerLimitMw => Quantity::PowerLimit,
            MemoryUsedBytes => Quantity::MemoryUsed,
            MemoryTotalBytes => Quantity::MemoryTotal,
            GpuUtilPct => Quantity::Utilization,
            MemUtilPct => Quantity::MemoryUtilization,
            SmClockMhz => Quantity::SmClock,
            MemClockMhz => Quantity::MemoryClock,
            TemperatureC => Quantity::Temperature,
            ThrottleReasons => Quantity::ThrottleReasons,
        }
    }

    /// Factor from the NVML unit to the channel's unit (mW → W, mJ stays raw for the counter).
    fn scale(self) -> f64 {
        use GpuField::*;
        match self {
            PowerInstantMw | PowerAverageMw | PowerUsageMw | PowerLimitMw => 1e-3,
            _ => 1.0,
        }
    }

    /// Read about once a second rather than every sample.
    fn is_static(self) -> bool {
        matches!(self, GpuField::PowerLimitMw | GpuField::MemoryTotalBytes)
    }
}

/// Why a field has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    /// The GPU or driver does not have it; it is not read again.
    Unsupported(String),
    /// This read failed; it is tried again at the next sample.
    Failed(String),
}

/// Facts about a GPU, recorded in the results' hardware section and shown by `info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuDescription {
    pub index: u32,
    /// `gpuN`, the device name used by the timeline.
    pub device: String,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<String>,
    pub memory_total_bytes: Option<u64>,
    /// Enforced power limit (W).
    pub power_limit_w: Option<f64>,
    /// Whether the GPU has the total-energy counter (Volta and newer).
    pub energy_counter: bool,
    /// Whether the driver serves the instantaneous / averaged power field values.
    pub power_instant_field: bool,
    pub power_average_field: bool,
    /// The power channel integrated into energy (`power_instant` or `power_usage`).
    pub integrated_power: Option<String>,
    /// `field: reason` for every field that is not supported.
    pub unsupported: Vec<String>,
}

/// Access to one GPU: NVML in production, a fake in tests.
pub trait GpuReader: Send {
    /// Name, UUID, driver versions (best effort; fields filled by the source are overwritten).
    fn describe(&self) -> GpuDescription;
    /// Read `fields` into `out` (cleared first, then one entry per field, in order).
    fn read(&mut self, fields: &[GpuField], out: &mut Vec<Result<f64, FieldError>>);
}

/// One GPU as a telemetry [`Source`].
pub struct GpuSource<R: GpuReader> {
    reader: R,
    desc: GpuDescription,
    /// Per field of [`GpuField::ALL`]: whether it is read at all.
    supported: [bool; 13],
    integrate: Option<GpuField>,
    energy: EnergyCounter,
    cache: [Option<f64>; 13],
    reads: u64,
    static_every: u64,
    fields: Vec<GpuField>,
    out: Vec<Result<f64, FieldError>>,
}

impl<R: GpuReader> GpuSource<R> {
    /// Probe every field once; `static_every`: re-read static fields every this many samples.
    pub fn open(mut reader: R, index: u32, static_every: u64) -> Self {
        let mut desc = reader.describe();
        desc.index = index;
        desc.device = format!("gpu{index}");
        let mut out = Vec::new();
        reader.read(&GpuField::ALL, &mut out);
        let mut supported = [true; 13];
        let mut cache = [None; 13];
        let mut energy = EnergyCounter::new(1e-3, None);
        desc.unsupported.clear();
        for (i, f) in GpuField::ALL.iter().enumerate() {
            match out.get(i) {
                Some(Err(FieldError::Unsupported(why))) => {
                    supported[i] = false;
                    desc.unsupported
                        .push(format!("{}: {why}", f.quantity().name()));
                }
                Some(Ok(v)) => {
                    cache[i] = Some(v * f.scale());
                    if *f == GpuField::EnergyMj {
                        energy.update(*v as u64);
                    }
                }
                _ => {}
            }
        }
        let sup = |f: GpuField| supported[GpuField::ALL.iter().position(|&g| g == f).unwrap_or(0)];
        desc.energy_counter = sup(GpuField::EnergyMj);
        desc.power_instant_field = sup(GpuField::PowerInstantMw);
        desc.power_average_field = sup(GpuField::PowerAverageMw);
        let integrate = if desc.power_instant_field {
            Some(GpuField::PowerInstantMw)
        } else if sup(GpuField::PowerUsageMw) {
            Some(GpuField::PowerUsageMw)
        } else {
            None
        };
        desc.integrated_power = integrate.map(|f| f.quantity().name().to_string());
        desc.power_limit_w = cache[4];
        desc.memory_total_bytes = cache[6].map(|v| v as u64);
        Self {
            reader,
            desc,
            supported,
            integrate,
            energy,
            cache,
            reads: 0,
            static_every: static_every.max(1),
            fields: Vec::with_capacity(13),
            out,
        }
    }

    pub fn description(&self) -> &GpuDescription {
        &self.desc
    }
}

impl<R: GpuReader> Source for GpuSource<R> {
    fn kind(&self) -> &str {
        "nvml"
    }

    fn channels(&self) -> Vec<ChannelSpec> {
        GpuField::ALL
            .iter()
            .map(|&f| {
                let kind = match f {
                    GpuField::EnergyMj => ChannelKind::Counter,
                    GpuField::ThrottleReasons => ChannelKind::Flags,
                    _ => ChannelKind::Gauge,
                };
                let mut c = ChannelSpec::new(&self.desc.device, f.quantity(), kind);
                c.integrate = self.integrate == Some(f);
                c
            })
            .collect()
    }

    fn read(&mut self, _t_s: f64, out: &mut [Option<f64>]) {
        let refresh_static = self.reads % self.static_every == 0;
        self.reads += 1;
        self.fields.clear();
        for (i, &f) in GpuField::ALL.iter().enumerate() {
            if self.supported[i] && (!f.is_static() || refresh_static || self.cache[i].is_none()) {
                self.fields.push(f);
            }
        }
        self.reader.read(&self.fields, &mut self.out);
        for (f, r) in self.fields.iter().zip(&self.out) {
            let Some(i) = GpuField::ALL.iter().position(|g| g == f) else {
                continue;
            };
            match r {
                Ok(v) if *f == GpuField::EnergyMj => {
                    self.cache[i] = Some(self.energy.update(*v as u64));
                }
                Ok(v) => self.cache[i] = Some(v * f.scale()),
                Err(_) if f.is_static() => {}
                Err(_) => self.cache[i] = None,
            }
        }
        for (i, f) in GpuField::ALL.iter().enumerate() {
            let fresh = self.fields.contains(f);
            let value = if fresh || f.is_static() {
                self.cache[i]
            } else {
                None
            };
            if let Some(slot) = out.get_mut(i) {
                *slot = if *f == GpuField::EnergyMj && !self.energy.has_reading() {
                    None
                } else {
                    value
                };
            }
        }
    }

    fn counter_events(&self) -> Vec<CounterEvents> {
        vec![CounterEvents {
            device: self.desc.device.clone(),
            wraps: self.energy.wraps,
            resets: self.energy.resets,
        }]
    }
}

fn classify(e: NvmlError) -> FieldError {
    match e {
        NvmlError::NotSupported
        | NvmlError::FunctionNotFound
        | NvmlError::FailedToLoadSymbol(_)
        | NvmlError::NoPermission
        | NvmlError::InvalidArg => FieldError::Unsupported(e.to_string()),
        other => FieldError::Failed(other.to_string()),
    }
}

/// A GPU read through NVML.
pub struct NvmlReader {
    nvml: Arc<Nvml>,
    index: u32,
}

impl NvmlReader {
    pub fn new(nvml: Arc<Nvml>, index: u32) -> Self {
        Self { nvml, index }
    }
}

impl GpuReader for NvmlReader {
    fn describe(&self) -> GpuDescription {
        let dev = self.nvml.device_by_index(self.index).ok();
        let cuda = self.nvml.sys_cuda_driver_version().ok().map(|v| {
            format!(
                "{}.{}",
                nvml_wrapper::cuda_driver_version_major(v),
                nvml_wrapper::cuda_driver_version_minor(v)
            )
        });
        GpuDescription {
            name: dev.as_ref().and_then(|d| d.name().ok()),
            uuid: dev.as_ref().and_then(|d| d.uuid().ok()),
            driver_version: self.nvml.sys_driver_version().ok(),
            cuda_driver_version: cuda,
            ..GpuDescription::default()
        }
    }

    fn read(&mut self, fields: &[GpuField], out: &mut Vec<Result<f64, FieldError>>) {
        out.clear();
        let dev = match self.nvml.device_by_index(self.index) {
            Ok(d) => d,
            Err(e) => {
                let e = FieldError::Failed(format!("GPU {}: {e}", self.index));
                out.extend(fields.iter().map(|_| Err(e.clone())));
                return;
            }
        };
        // grouped calls, made only when one of their fields is asked for
        let has = |f: GpuField| fields.contains(&f);
        let power_fields = if has(GpuField::PowerInstantMw) || has(GpuField::PowerAverageMw) {
            let ids = [
                FieldId(NVML_FI_DEV_POWER_INSTANT),
                FieldId(NVML_FI_DEV_POWER_AVERAGE),
            ];
            Some(dev.field_values_for(&ids).map_err(classify))
        } else {
            None
        };
        let memory = (has(GpuField::MemoryUsedBytes) || has(GpuField::MemoryTotalBytes))
            .then(|| dev.memory_info().map_err(classify));
        let util = (has(GpuField::GpuUtilPct) || has(GpuField::MemUtilPct))
            .then(|| dev.utilization_rates().map_err(classify));
        let field_value = |k: usize| -> Result<f64, FieldError> {
            match &power_fields {
                Some(Ok(v)) => match v.get(k) {
                    Some(Ok(s)) => match &s.value {
                        Ok(SampleValue::F64(x)) => Ok(*x),
                        Ok(SampleValue::U32(x)) => Ok(f64::from(*x)),
                        Ok(SampleValue::U64(x)) => Ok(*x as f64),
                        Ok(SampleValue::I64(x)) => Ok(*x as f64),
                        Err(e) => Err(classify_ref(e)),
                    },
                    Some(Err(e)) => Err(classify_ref(e)),
                    None => Err(FieldError::Unsupported("no value returned".into())),
                },
                Some(Err(e)) => Err(e.clone()),
                None => Err(FieldError::Failed("not requested".into())),
            }
        };
        for &f in fields {
            let r = match f {
                GpuField::EnergyMj => dev
                    .total_energy_consumption()
                    .map(|v| v as f64)
                    .map_err(classify),
                GpuField::PowerInstantMw => field_value(0),
                GpuField::PowerAverageMw => field_value(1),
                GpuField::PowerUsageMw => dev.power_usage().map(f64::from).map_err(classify),
                GpuField::PowerLimitMw => {
                    dev.enforced_power_limit().map(f64::from).map_err(classify)
                }
                GpuField::MemoryUsedBytes | GpuField::MemoryTotalBytes => match &memory {
                    Some(Ok(m)) if f == GpuField::MemoryUsedBytes => Ok(m.used as f64),
                    Some(Ok(m)) => Ok(m.total as f64),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(FieldError::Failed("not requested".into())),
                },
                GpuField::GpuUtilPct | GpuField::MemUtilPct => match &util {
                    Some(Ok(u)) if f == GpuField::GpuUtilPct => Ok(f64::from(u.gpu)),
                    Some(Ok(u)) => Ok(f64::from(u.memory)),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err(FieldError::Failed("not requested".into())),
                },
                GpuField::SmClockMhz => dev.clock_info(Clock::SM).map(f64::from).map_err(classify),
                GpuField::MemClockMhz => dev
                    .clock_info(Clock::Memory)
                    .map(f64::from)
                    .map_err(classify),
                GpuField::TemperatureC => dev
                    .temperature(TemperatureSensor::Gpu)
                    .map(f64::from)
                    .map_err(classify),
                GpuField::ThrottleReasons => dev
                    .current_throttle_reasons()
                    .map(|r| r.bits() as f64)
                    .map_err(classify),
            };
            out.push(r);
        }
    }
}

fn classify_ref(e: &NvmlError) -> FieldError {
    match e {
        NvmlError::NotSupported
        | NvmlError::FunctionNotFound
        | NvmlError::NoPermission
        | NvmlError::InvalidArg => FieldError::Unsupported(e.to_string()),
        other => FieldError::Failed(other.to_string()),
    }
}

/// The GPUs NVML offers for `selection`: their sources, descriptions and statuses. Never fails: a
/// missing library, driver or GPU becomes a status with `available: false` and the reason.
pub struct NvmlOpen {
    pub sources: Vec<GpuSource<NvmlReader>>,
    pub gpus: Vec<GpuDescription>,
    pub statuses: Vec<SourceStatus>,
    /// Set when the engine's GPU ([`GpuSelection::Engine`]) was not found and every GPU is opened.
    pub warning: Option<String>,
}

/// The warning when NVML cannot tell which GPU the engine runs on.
const ENGINE_GPU_UNKNOWN: &str = "warning: the engine's GPU has no known NVML index (NVML does \
    not know its UUID and CUDA_VISIBLE_DEVICES names GPUs by UUID or MIG): measuring and pricing \
    every GPU; give --gpus N to measure the engine's only";

/// The NVML index of the engine's GPU: the one `by_uuid` (NVML's lookup) finds for its UUID, else
/// its ordinal's index; `None` when neither is known.
pub fn engine_gpu_index(e: &EngineGpu, by_uuid: impl Fn(&str) -> Option<u32>) -> Option<u32> {
    e.uuid.as_deref().and_then(by_uuid).or(e.ordinal_index)
}

/// Open NVML (once) and one source per selected GPU, the engine's found by UUID there;
/// `static_every` as in [`GpuSource::open`].
pub fn open(selection: &GpuSelection, static_every: u64) -> NvmlOpen {
    let mut res = NvmlOpen {
        sources: Vec::new(),
        gpus: Vec::new(),
        statuses: Vec::new(),
        warning: None,
    };
    let nvml = match Nvml::init() {
        Ok(n) => Arc::new(n),
        Err(e) => {
            res.statuses.push(SourceStatus::unavailable(
                "nvml",
                format!("NVML unavailable: {e}"),
            ));
            return res;
        }
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            res.statuses.push(SourceStatus::unavailable(
                "nvml",
                format!("NVML cannot count GPUs: {e}"),
            ));
            return res;
        }
    };
    if count == 0 {
        res.statuses.push(SourceStatus::unavailable(
            "nvml",
            "NVML found no GPU".into(),
        ));
        return res;
    }
    let indices: Vec<u32> = match selection {
        GpuSelection::All => (0..count).collect(),
        GpuSelection::List(v) => v.clone(),
        GpuSelection::Engine(e) => {
            let by_uuid = |u: &str| nvml.device_by_uuid(u).and_then(|d| d.index()).ok();
            match engine_gpu_index(e, by_uuid) {
                Some(i) => vec![i],
                None => {
                    res.warning = Some(ENGINE_GPU_UNKNOWN.to_string());
                    (0..count).collect()
                }
            }
        }
    };
    for i in indices {
        if i >= count {
            let mut s = SourceStatus::unavailable(
                "nvml",
                format!("GPU {i} is not present (NVML sees {count})"),
            );
            s.devices = vec![format!("gpu{i}")];
            res.statuses.push(s);
            continue;
        }
        let src = GpuSource::open(NvmlReader::new(nvml.clone(), i), i, static_every);
        res.statuses.push(SourceStatus::of_gpu(src.description()));
        res.gpus.push(src.description().clone());
        res.sources.push(src);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPU whose fields come from a table; unsupported fields are listed.
    struct FakeGpu {
        unsupported: Vec<GpuField>,
        energy_mj: Vec<u64>,
        reads: usize,
    }

    impl GpuReader for FakeGpu {
        fn describe(&self) -> GpuDescription {
            GpuDescription {
                name: Some("Fake GPU".into()),
                ..Default::default()
            }
        }
        fn read(&mut self, fields: &[GpuField], out: &mut Vec<Result<f64, FieldError>>) {
            out.clear();
            let e = self.energy_mj[self.reads.min(self.energy_mj.len() - 1)];
            self.reads += 1;
            for f in fields {
                out.push(if self.unsupported.contains(f) {
                    Err(FieldError::Unsupported("not supported".into()))
                } else {
                    Ok(match f {
                        GpuField::EnergyMj => e as f64,
                        GpuField::PowerUsageMw => 250_000.0,
                        GpuField::PowerInstantMw => 260_000.0,
                        GpuField::PowerLimitMw => 700_000.0,
                        GpuField::MemoryTotalBytes => 80e9,
                        _ => 1.0,
                    })
                });
            }
        }
    }

    fn read_once(s: &mut GpuSource<FakeGpu>) -> Vec<Option<f64>> {
        let mut v = vec![None; s.channels().len()];
        s.read(0.0, &mut v);
        v
    }

    #[test]
    fn unsupported_fields_are_null_and_listed_and_not_read_again() {
        let gpu = FakeGpu {
            unsupported: vec![
                GpuField::PowerInstantMw,
                GpuField::PowerAverageMw,
                GpuField::EnergyMj,
            ],
            energy_mj: vec![0],
            reads: 0,
        };
        let mut s = GpuSource::open(gpu, 1, 50);
        let d = s.description().clone();
        assert_eq!(d.device, "gpu1");
        assert!(!d.energy_counter && !d.power_instant_field && !d.power_average_field);
        assert_eq!(d.integrated_power.as_deref(), Some("power_usage"));
        assert_eq!(d.unsupported.len(), 3, "{:?}", d.unsupported);
        assert!(d.unsupported[0].starts_with("energy: "));
        assert_eq!(d.power_limit_w, Some(700.0));
        let chans = s.channels();
        let v = read_once(&mut s);
        for (c, v) in chans.iter().zip(&v) {
            let unsupported = matches!(
                c.quantity,
                Quantity::Energy | Quantity::PowerInstant | Quantity::PowerAverage
            );
            assert_eq!(v.is_none(), unsupported, "{}", c.name());
            assert_eq!(c.integrate, c.quantity == Quantity::PowerUsage);
        }
        assert!(!s.fields.contains(&GpuField::EnergyMj));
        // the timeline records them as null
        let mut b = super::super::timeline::TimelineBuilder::new(chans, 0.02, 8);
        b.push(0.0, &v);
        let json = serde_json::to_value(b.snapshot()).unwrap();
        let ch = json["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "gpu1.power_instant")
            .unwrap();
        assert!(ch["mean"][0].is_null());
    }

    #[test]
    fn the_nvml_counter_going_backwards_counts_as_a_reset() {
        let gpu = FakeGpu {
            unsupported: vec![],
            // probe, then samples: +1000 J, driver reload (counter restarts), +50 J since
            energy_mj: vec![5_000_000, 5_000_000, 6_000_000, 50_000, 80_000],
            reads: 0,
        };
        let mut s = GpuSource::open(gpu, 0, 50);
        assert_eq!(
            s.description().integrated_power.as_deref(),
            Some("power_instant")
        );
        let e: Vec<f64> = (0..4).map(|_| read_once(&mut s)[0].unwrap()).collect();
        assert_eq!(e, vec![0.0, 1000.0, 1050.0, 1080.0]);
        assert_eq!(s.counter_events()[0].resets, 1);
    }

    #[test]
    fn static_fields_are_refreshed_rarely_and_carried_between() {
        let gpu = FakeGpu {
            unsupported: vec![],
            energy_mj: vec![0],
            reads: 0,
        };
        let mut s = GpuSource::open(gpu, 0, 10);
        let limit = GpuField::ALL
            .iter()
            .position(|&f| f == GpuField::PowerLimitMw)
            .unwrap();
        let mut asked = 0;
        for _ in 0..20 {
            let v = read_once(&mut s);
            assert_eq!(v[limit], Some(700.0));
            asked += usize::from(s.fields.contains(&GpuField::PowerLimitMw));
        }
        assert_eq!(asked, 2);
    }

    #[test]
    fn missing_nvml_is_recorded_with_its_reason() {
        // This machine (and CI) has no libnvidia-ml: opening must not fail, and say why.
        if std::path::Path::new("/dev/nvidiactl").exists() {
            eprintln!("skipped: an NVIDIA driver is present");
            return;
        }
        let r = open(&GpuSelection::All, 50);
        assert!(r.sources.is_empty());
        assert_eq!(r.statuses.len(), 1);
        let s = &r.statuses[0];
        assert!(!s.available);
        let why = s.reason.as_deref().unwrap();
        assert!(why.starts_with("NVML unavailable"), "{why}");
        assert!(why.contains("libnvidia-ml"), "{why}");
    }
}
