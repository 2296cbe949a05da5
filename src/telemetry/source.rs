//! The [`Source`] trait every telemetry source implements, the channels a source declares, and the
//! energy-counter unwrapping (wraparound and reset) shared by the NVML and RAPL sources.

use serde::{Deserialize, Serialize};

/// What a channel measures. Units are fixed per quantity (see [`Quantity::unit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Energy consumed since the source started (J), from a hardware counter, unwrapped.
    Energy,
    /// Energy since the sampler started (J): the trapezoid integral of the device's integrated power
    /// channel, computed by the timeline at full sampling resolution.
    EnergyIntegrated,
    /// Instantaneous power (W): NVML field `NVML_FI_DEV_POWER_INSTANT`.
    PowerInstant,
    /// Averaged power (W): NVML field `NVML_FI_DEV_POWER_AVERAGE`.
    PowerAverage,
    /// `nvmlDeviceGetPowerUsage` (W): a one-second average on Ampere and newer (except GA100).
    PowerUsage,
    /// Power (W) derived from consecutive energy-counter readings (RAPL).
    Power,
    /// Enforced power limit (W).
    PowerLimit,
    /// Device memory in use (bytes).
    MemoryUsed,
    /// Device memory installed (bytes).
    MemoryTotal,
    /// Percent of time a kernel ran (GPU).
    Utilization,
    /// Percent of time device memory was read or written.
    MemoryUtilization,
    /// SM clock (MHz).
    SmClock,
    /// Memory clock (MHz).
    MemoryClock,
    /// Die temperature (°C).
    Temperature,
    /// NVML clock-throttle reasons (a bit mask; a bucket ORs its samples).
    ThrottleReasons,
    /// Resident set size of this process (bytes).
    ProcessRss,
    /// CPU time this process used per second of wall time (percent of one core).
    ProcessCpu,
}

impl Quantity {
    pub fn unit(self) -> &'static str {
        use Quantity::*;
        match self {
            Energy | EnergyIntegrated => "J",
            PowerInstant | PowerAverage | PowerUsage | Power | PowerLimit => "W",
            MemoryUsed | MemoryTotal | ProcessRss => "B",
            Utilization | MemoryUtilization | ProcessCpu => "%",
            SmClock | MemoryClock => "MHz",
            Temperature => "C",
            ThrottleReasons => "bits",
        }
    }

    pub fn name(self) -> &'static str {
        use Quantity::*;
        match self {
            Energy => "energy",
            EnergyIntegrated => "energy_integrated",
            PowerInstant => "power_instant",
            PowerAverage => "power_average",
            PowerUsage => "power_usage",
            Power => "power",
            PowerLimit => "power_limit",
            MemoryUsed => "memory_used",
            MemoryTotal => "memory_total",
            Utilization => "utilization",
            MemoryUtilization => "memory_utilization",
            SmClock => "sm_clock",
            MemoryClock => "memory_clock",
            Temperature => "temperature",
            ThrottleReasons => "throttle_reasons",
            ProcessRss => "process_rss",
            ProcessCpu => "process_cpu",
        }
    }
}

/// How a channel's samples combine when the timeline merges them into one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// An instantaneous reading: a point keeps min, max and mean.
    Gauge,
    /// A cumulative value (energy in J since start): a point keeps the last value.
    Counter,
    /// A bit mask: a point keeps the OR of its samples.
    Flags,
}

/// One channel a source produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelSpec {
    /// The measured device: `gpu0`, `cpu-package0`, `cpu-dram0`, `host`.
    pub device: String,
    pub quantity: Quantity,
    pub kind: ChannelKind,
    /// Whether the timeline integrates this power gauge into an
    /// [`Quantity::EnergyIntegrated`] counter of the same device (at most one per device).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub integrate: bool,
}

impl ChannelSpec {
    pub fn new(device: &str, quantity: Quantity, kind: ChannelKind) -> Self {
        Self {
            device: device.to_string(),
            quantity,
            kind,
            integrate: false,
        }
    }

    pub fn gauge(device: &str, quantity: Quantity) -> Self {
        Self::new(device, quantity, ChannelKind::Gauge)
    }

    pub fn counter(device: &str, quantity: Quantity) -> Self {
        Self::new(device, quantity, ChannelKind::Counter)
    }

    /// `device.quantity`, e.g. `gpu0.power_instant`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.device, self.quantity.name())
    }
}

/// A telemetry source: a fixed set of channels read together, once per sampling tick.
///
/// `read` must not block for long and must not panic: a value that cannot be read this time is
/// `None` (recorded as null). Counters are reported in joules since the source was opened, already
/// unwrapped (see [`EnergyCounter`]).
pub trait Source: Send {
    /// The source's kind: `nvml`, `rapl`, `host`, `synthetic`.
    fn kind(&self) -> &str;
    /// The channels, in the order `read` fills them. Fixed for the source's lifetime.
    fn channels(&self) -> Vec<ChannelSpec>;
    /// Read every channel into `out` (`out.len() == channels().len()`, all `None` on entry).
    /// `t_s` is the sample's time on the run's clock.
    fn read(&mut self, t_s: f64, out: &mut [Option<f64>]);
    /// Counter resets or wraps seen so far, per device (recorded in the results).
    fn counter_events(&self) -> Vec<CounterEvents> {
        Vec::new()
    }
}

/// How often a device's energy counter wrapped or reset during the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterEvents {
    pub device: String,
    pub wraps: u64,
    pub resets: u64,
}

/// Turns raw readings of a hardware energy counter into energy since the first reading.
///
/// - A counter with a known range (`wrap_at`: RAPL's `max_energy_range_uj`) that goes backwards has
///   wrapped: the delta is `wrap_at - previous + current`.
/// - A counter without a range (NVML's `total_energy_consumption`, mJ since driver load) that goes
///   backwards was reset (driver reload): the delta is `current`, the energy counted since the reset,
///   a lower bound of the interval's energy. Such resets are counted.
/// - A previous reading above the declared range cannot precede a wrap: treated as a reset.
///
/// A counter read less often than once per wrap period loses whole periods; RAPL's period is
/// minutes to hours at full package power, the sampler reads every few ms.
#[derive(Debug, Clone)]
pub struct EnergyCounter {
    /// Joules per raw unit (1e-3 for mJ, 1e-6 for µJ).
    scale: f64,
    wrap_at: Option<u64>,
    last_raw: Option<u64>,
    total_raw: u128,
    pub wraps: u64,
    pub resets: u64,
}

impl EnergyCounter {
    pub fn new(scale_j_per_unit: f64, wrap_at: Option<u64>) -> Self {
        Self {
            scale: scale_j_per_unit,
            wrap_at: wrap_at.filter(|&w| w > 0),
            last_raw: None,
            total_raw: 0,
            wraps: 0,
            resets: 0,
        }
    }

    /// Feed a raw reading; returns joules since the first reading.
    pub fn update(&mut self, raw: u64) -> f64 {
        if let Some(prev) = self.last_raw {
            let delta = if raw >= prev {
                u128::from(raw - prev)
            } else if let Some(w) = self.wrap_at.filter(|&w| prev <= w) {
                self.wraps += 1;
                u128::from(w - prev) + u128::from(raw)
            } else {
                self.resets += 1;
                u128::from(raw)
            };
            self.total_raw += delta;
        }
        self.last_raw = Some(raw);
        self.joules()
    }

    /// Joules counted so far (0 before the second reading).
    pub fn joules(&self) -> f64 {
        self.total_raw as f64 * self.scale
    }

    pub fn has_reading(&self) -> bool {
        self.last_raw.is_some()
    }
}

/// A small file (procfs, sysfs) re-read in place: the handle stays open and each read is a
/// `pread` at offset 0, which makes the kernel regenerate the content. On the VM this was measured
/// on, that is 1–5 µs against 10+ µs for open + read + close.
pub struct PolledFile {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    buf: Vec<u8>,
}

impl PolledFile {
    /// Open `path` and read it once (so an unreadable file fails here, with its error).
    pub fn open(path: impl Into<std::path::PathBuf>) -> std::io::Result<Self> {
        let mut f = Self {
            path: path.into(),
            file: None,
            buf: vec![0; 256],
        };
        f.read()?;
        Ok(f)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The file's current content.
    pub fn read(&mut self) -> std::io::Result<&str> {
        use std::os::unix::fs::FileExt;
        if self.file.is_none() {
            self.file = Some(std::fs::File::open(&self.path)?);
        }
        let Some(file) = &self.file else {
            return Err(std::io::ErrorKind::NotFound.into());
        };
        let n = loop {
            match file.read_at(&mut self.buf, 0) {
                Ok(n) if n == self.buf.len() && n < (1 << 20) => {
                    let len = self.buf.len() * 2;
                    self.buf.resize(len, 0);
                }
                Ok(n) => break n,
                Err(e) => {
                    // reopen next time (the file may have been replaced)
                    self.file = None;
                    return Err(e);
                }
            }
        };
        std::str::from_utf8(&self.buf[..n]).map_err(|_| std::io::ErrorKind::InvalidData.into())
    }

    /// The file's content as one unsigned integer.
    pub fn read_u64(&mut self) -> std::io::Result<u64> {
        let text = self.read()?;
        text.trim()
            .parse::<u64>()
            .map_err(|_| std::io::ErrorKind::InvalidData.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_without_range_that_goes_backwards_was_reset() {
        // NVML: mJ since driver load; driver reloaded between the 2nd and 3rd reading
        let mut c = EnergyCounter::new(1e-3, None);
        assert_eq!(c.update(1_000_000), 0.0);
        assert!((c.update(1_500_000) - 500.0).abs() < 1e-9);
        // reset: counted from 0 again, 200 J since the reset
        assert!((c.update(200_000) - 700.0).abs() < 1e-9);
        assert!((c.update(300_000) - 800.0).abs() < 1e-9);
        assert_eq!((c.wraps, c.resets), (0, 1));
    }

    #[test]
    fn a_counter_with_range_wraps_around() {
        // RAPL: µJ in [0, max_energy_range_uj]
        let max = 262_143_328_850u64;
        let mut c = EnergyCounter::new(1e-6, Some(max));
        c.update(max - 1_000_000); // 1 J before the wrap
        let j = c.update(2_000_000); // 2 J after it
        assert!((j - 3.0).abs() < 1e-9, "{j}");
        assert_eq!((c.wraps, c.resets), (1, 0));
        // a reading above the range cannot be a wrap: reset
        let mut c = EnergyCounter::new(1e-6, Some(10));
        c.update(50);
        c.update(5);
        assert_eq!((c.wraps, c.resets), (0, 1));
    }

    #[test]
    fn counter_totals_do_not_lose_precision_over_long_runs() {
        let mut c = EnergyCounter::new(1e-3, None);
        let mut raw = u64::MAX - 10_000_000_000;
        c.update(raw);
        for _ in 0..1000 {
            raw += 7_000_001;
            c.update(raw);
        }
        assert!((c.joules() - 7_000_001.0).abs() < 1e-6);
    }
}
