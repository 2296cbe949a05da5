//! Energy, cost and emissions of a measured window, from a telemetry [`Timeline`] and the work done.
//!
//! # Energy (DESIGN.md, "Energy")
//!
//! Per device in the scope (the GPUs, or the CPU packages and DRAM when no GPU is measured; see
//! [`crate::telemetry::EnergyScope`]):
//! - **counter** where the device has an energy counter (NVML `total_energy_consumption`, RAPL
//!   `energy_uj`): the counter's increase over the window. Counters are unwrapped by the sources
//!   (RAPL wraparound at `max_energy_range_uj`; an NVML counter that goes backwards was reset and
//!   counts from zero again).
//! - else **power_integration**: the trapezoid integral of the sampled power (NVML
//!   `power_instant` where supported, else `power_usage`), taken by the timeline at full sampling
//!   resolution.
//!
//! Both are cumulative series sampled every `interval`; the value at a window edge is interpolated
//! linearly between the samples around it (the `run` command samples at phase edges, so phases need
//! no interpolation). Every result carries its `method` (`counter`, `power_integration`, or `mixed`
//! when devices differ), its `scope` (devices), the sampling interval, the samples inside the window
//! and the `coverage` (fraction of the window the samples span). Where a device has both, the two
//! estimates are reported side by side (`counter_energy_j`, `integrated_energy_j`).
//!
//! Derived: `avg_power_w` = energy ÷ the part of the window the samples cover, per device, summed
//! over the scope (a window the samples cover only partly is not diluted by the uncovered time;
//! `coverage` says how much was covered); `peak_power_w` = largest sum over the scope's devices of
//! a point's maximum power; `peak_memory_bytes` = the scope's GPUs' peak `memory_used` summed (host
//! process RSS when the scope has no GPU); `j_per_request`, `j_per_token` (input + output),
//! `tokens_per_j`, `output_tokens_per_j` over all the window's energy.
//!
//! A report's `steady_state` is the same computed over the steady-state window (all concurrency
//! slots busy: the load step's users or `--max-concurrency`, a grid cell's batch, a stream's
//! `--max-num-seqs`), with the work the steady-state throughput attributes to that window
//! ([`Work::from_throughput`]): ramp-up and drain, where slots idle, are left out.
//!
//! # Prefill and decode (the attribution rule)
//!
//! The busy time of a window is a list of [`WorkSegment`]s, each with a prefill fraction:
//! - reference engine: one segment per step, `prefill_fraction` = prefill tokens ÷ (prefill +
//!   decode tokens) of the step ([`StepRecord::prefill_fraction`], the rule `EngineSummary` uses for
//!   time);
//! - any other target: from request records, every instant is split in proportion to the in-flight
//!   requests awaiting their first token (prefill) and those streaming (decode)
//!   ([`segments_from_requests`]); with one request at a time this is TTFT vs the rest, as
//!   inference_benchmarking measures it.
//!
//! A segment's energy (the energy series' increase over it) goes to prefill and decode in proportion
//! to its prefill fraction, its time likewise. Energy and time of the window outside every segment
//! (between steps: scheduling, sampling, host work; no request in flight) is **idle**, reported
//! separately: `prefill_j + decode_j + idle_j = energy_j`. Then `j_per_input_token` = prefill J ÷
//! input (prompt) tokens and `j_per_output_token` = decode J ÷ output tokens.
//!
//! # Cost and emissions
//!
//! With a price `P` $/GPU-hour and `G` GPUs (as huggingface-style inference_benchmarking):
//! `usd_per_1m_input_tokens = P·G·prefill_s/3600 ÷ input_tokens × 10⁶`,
//! `usd_per_1m_output_tokens = P·G·decode_s/3600 ÷ output_tokens × 10⁶` (prefill and decode time
//! separated; idle time is in neither), and `usd_per_1m_tokens = P·G·window_s/3600 ÷ all tokens × 10⁶`
//! (all in). With a grid intensity `I` gCO2e/kWh: `g_co2e = I × energy_j / 3.6·10⁶`, per 1M tokens
//! over all tokens, and per 1M input / output tokens from the prefill / decode energy.

use serde::{Deserialize, Serialize};

use super::requests::{RequestRecord, ThroughputSummary};
use crate::engine::StepRecord;
use crate::telemetry::source::Quantity;
use crate::telemetry::timeline::{Cumulative, Timeline};

/// The work a window did, divided into its energy and cost. Token counts may be fractional (a
/// window's share of a request's output tokens, as in the steady-state throughput).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Work {
    pub requests: f64,
    pub input_tokens: f64,
    pub output_tokens: f64,
}

impl Work {
    /// The successful requests of `records`.
    pub fn of_records(records: &[RequestRecord]) -> Work {
        let ok = records.iter().filter(|r| r.is_ok());
        ok.fold(Work::default(), |w, r| Work {
            requests: w.requests + 1.0,
            input_tokens: w.input_tokens + r.prompt_tokens as f64,
            output_tokens: w.output_tokens + r.output_tokens as f64,
        })
    }

    /// The work behind a throughput over its duration (e.g. the steady-state window's).
    pub fn from_throughput(t: &ThroughputSummary) -> Work {
        Work {
            requests: t.requests_per_s * t.duration_s,
            input_tokens: t.input_tokens_per_s * t.duration_s,
            output_tokens: t.output_tokens_per_s * t.duration_s,
        }
    }

    fn add(&mut self, o: &Work) {
        self.requests += o.requests;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
    }
}

/// A span of busy time; `prefill_fraction` of it (and of its energy) is prefill, the rest decode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorkSegment {
    pub start_s: f64,
    pub end_s: f64,
    pub prefill_fraction: f64,
}

/// One segment per engine step, split by the step's prefill and decode tokens.
pub fn segments_from_steps(steps: &[StepRecord]) -> Vec<WorkSegment> {
    steps
        .iter()
        .filter(|s| s.end_s > s.start_s)
        .map(|s| WorkSegment {
            start_s: s.start_s,
            end_s: s.end_s,
            prefill_fraction: s.prefill_fraction(),
        })
        .collect()
}

/// Segments from request records: at each instant, prefill's share is the in-flight requests
/// awaiting their first token ÷ all in-flight requests (awaiting or streaming). A request awaits
/// from its send to its first content chunk and streams from then to its finish; a request with no
/// content awaits until it finishes. Adjacent segments with the same share are merged.
pub fn segments_from_requests(records: &[RequestRecord]) -> Vec<WorkSegment> {
    // (time, d_prefill, d_decode)
    let mut ev: Vec<(f64, i64, i64)> = Vec::with_capacity(records.len() * 3);
    for r in records {
        let end = r.finish_s();
        match r.first_content_s() {
            Some(first) if first >= r.send_s && first <= end => {
                ev.push((r.send_s, 1, 0));
                ev.push((first, -1, 1));
                ev.push((end, 0, -1));
            }
            _ => {
                ev.push((r.send_s, 1, 0));
                ev.push((end, -1, 0));
            }
        }
    }
    ev.retain(|e| e.0.is_finite());
    ev.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<WorkSegment> = Vec::new();
    let (mut p, mut d) = (0i64, 0i64);
    let mut i = 0;
    while i < ev.len() {
        let t = ev[i].0;
        while i < ev.len() && ev[i].0 == t {
            p += ev[i].1;
            d += ev[i].2;
            i += 1;
        }
        let Some(&(next, _, _)) = ev.get(i) else {
            break;
        };
        if p + d <= 0 || next <= t {
            continue;
        }
        let f = p.max(0) as f64 / (p.max(0) + d.max(0)) as f64;
        match out.last_mut() {
            Some(last) if last.end_s == t && last.prefill_fraction == f => last.end_s = next,
            _ => out.push(WorkSegment {
                start_s: t,
                end_s: next,
                prefill_fraction: f,
            }),
        }
    }
    out
}

/// Price of the hardware, for cost per token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostParams {
    pub usd_per_gpu_hour: f64,
    pub num_gpus: f64,
}

/// What to measure energy over and what to derive from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnergyOptions {
    /// Devices whose energy is summed (`gpu0`, `cpu-package0`, ...).
    pub scope: Vec<String>,
    pub cost: Option<CostParams>,
    /// gCO2e per kWh.
    pub grid_intensity_g_per_kwh: Option<f64>,
}

/// How energy was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyMethod {
    Counter,
    PowerIntegration,
    /// Devices of the scope differ.
    Mixed,
}

/// Time of a window split by the attribution rule (module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeSplit {
    pub prefill_s: f64,
    pub decode_s: f64,
    pub idle_s: f64,
}

/// One device's energy over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEnergy {
    pub device: String,
    pub method: EnergyMethod,
    /// Which counter or which power channel (`NVML total_energy_consumption counter`, `RAPL
    /// energy_uj counter`, `trapezoid integral of power_instant`).
    pub measured_by: String,
    pub energy_j: f64,
    /// From the hardware counter, where the device has one.
    pub counter_energy_j: Option<f64>,
    /// From power integration, where the device reports power.
    pub integrated_energy_j: Option<f64>,
    /// Fraction of the window the chosen series spans.
    pub coverage: f64,
    pub avg_power_w: f64,
    pub peak_power_w: Option<f64>,
    pub peak_memory_bytes: Option<f64>,
}

/// Energy over a window (or several, combined) and what it buys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyMeasure {
    pub method: EnergyMethod,
    /// Devices summed.
    pub scope: Vec<String>,
    pub sampling_interval_s: f64,
    /// Raw samples inside the window(s).
    pub samples: u64,
    /// Fraction of the window(s) the energy series span (1 when fully covered).
    pub coverage: f64,
    pub energy_j: f64,
    /// Sum of the devices' counter energies, when every device in scope has a counter.
    pub counter_energy_j: Option<f64>,
    /// Sum of the devices' integrated power, when every device in scope reports power.
    pub integrated_energy_j: Option<f64>,
    pub avg_power_w: f64,
    pub peak_power_w: Option<f64>,
    pub peak_memory_bytes: Option<f64>,
    /// `gpu memory_used` or `host process_rss`.
    pub peak_memory_of: Option<String>,
    pub j_per_request: Option<f64>,
    pub j_per_token: Option<f64>,
    pub tokens_per_j: Option<f64>,
    pub output_tokens_per_j: Option<f64>,
    /// Prefill energy ÷ input tokens (needs the prefill/decode split).
    pub j_per_input_token: Option<f64>,
    /// Decode energy ÷ output tokens (needs the prefill/decode split).
    pub j_per_output_token: Option<f64>,
    pub prefill_j: Option<f64>,
    pub decode_j: Option<f64>,
    pub idle_j: Option<f64>,
    pub devices: Vec<DeviceEnergy>,
}

/// Cost per token from a price per GPU-hour (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub usd_per_gpu_hour: f64,
    pub num_gpus: f64,
    /// Price of the whole window.
    pub total_usd: f64,
    pub usd_per_1m_tokens: Option<f64>,
    pub usd_per_1m_input_tokens: Option<f64>,
    pub usd_per_1m_output_tokens: Option<f64>,
}

/// Emissions from a grid carbon intensity (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emissions {
    pub grid_intensity_g_per_kwh: f64,
    pub energy_kwh: f64,
    pub g_co2e: f64,
    pub g_per_1m_tokens: Option<f64>,
    pub g_per_1m_input_tokens: Option<f64>,
    pub g_per_1m_output_tokens: Option<f64>,
}

/// Everything energy and cost say about a window (or several windows combined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyReport {
    /// First start and last end of the window(s).
    pub start_s: f64,
    pub end_s: f64,
    /// Total length of the window(s).
    pub duration_s: f64,
    /// How many windows were combined.
    pub windows: usize,
    pub work: Work,
    /// Null without segments (no step or request records).
    pub time_split: Option<TimeSplit>,
    /// Null when no device in scope has an energy series (telemetry off or unavailable).
    pub energy: Option<EnergyMeasure>,
    pub cost: Option<Cost>,
    pub emissions: Option<Emissions>,
    /// The same over the steady-state window (all concurrency slots busy, see
    /// [`crate::metrics::steady_window`]) with the work the steady-state throughput attributes to
    /// it; null when the window was not reached (or for files written before it existed).
    #[serde(default)]
    pub steady_state: Option<Box<EnergyReport>>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Preferred power channels for a device's peak power.
const POWER_QUANTITIES: [Quantity; 4] = [
    Quantity::PowerInstant,
    Quantity::PowerUsage,
    Quantity::Power,
    Quantity::PowerAverage,
];

/// Energy, cost and emissions of the window `[start_s, end_s]` that did `work`, with its busy time
/// split by `segments` (see the module docs). `timeline` is `None` when telemetry was off.
pub fn summarize(
    timeline: Option<&Timeline>,
    (start_s, end_s): (f64, f64),
    work: &Work,
    segments: Option<&[WorkSegment]>,
    opts: &EnergyOptions,
) -> EnergyReport {
    let duration_s = if end_s > start_s {
        end_s - start_s
    } else {
        0.0
    };
    let clipped: Option<Vec<WorkSegment>> = segments.map(|segs| {
        segs.iter()
            .filter_map(|s| {
                let (a, b) = (s.start_s.max(start_s), s.end_s.min(end_s));
                (b > a).then_some(WorkSegment {
                    start_s: a,
                    end_s: b,
                    prefill_fraction: s.prefill_fraction.clamp(0.0, 1.0),
                })
            })
            .collect()
    });
    let time_split = clipped.as_ref().map(|segs| {
        let mut t = TimeSplit::default();
        for s in segs {
            let d = s.end_s - s.start_s;
            t.prefill_s += d * s.prefill_fraction;
            t.decode_s += d * (1.0 - s.prefill_fraction);
        }
        t.idle_s = (duration_s - t.prefill_s - t.decode_s).max(0.0);
        t
    });
    let energy = timeline
        .filter(|_| duration_s > 0.0)
        .and_then(|tl| measure(tl, (start_s, end_s), work, clipped.as_deref(), &opts.scope));
    let mut r = EnergyReport {
        start_s,
        end_s,
        duration_s,
        windows: 1,
        work: *work,
        time_split,
        energy,
        cost: None,
        emissions: None,
        steady_state: None,
    };
    r.derive(opts);
    r
}

/// [`summarize`] over the whole window, and over its steady-state `window` (when reached) with the
/// work of the steady-state throughput `steady` ([`Work::from_throughput`]) in `steady_state`.
pub fn summarize_with_steady_state(
    timeline: Option<&Timeline>,
    whole: (f64, f64),
    work: &Work,
    steady: Option<((f64, f64), &ThroughputSummary)>,
    segments: Option<&[WorkSegment]>,
    opts: &EnergyOptions,
) -> EnergyReport {
    let mut r = summarize(timeline, whole, work, segments, opts);
    r.steady_state = steady.map(|(window, t)| {
        Box::new(summarize(
            timeline,
            window,
            &Work::from_throughput(t),
            segments,
            opts,
        ))
    });
    r
}

fn measure(
    tl: &Timeline,
    (a, b): (f64, f64),
    work: &Work,
    segments: Option<&[WorkSegment]>,
    scope: &[String],
) -> Option<EnergyMeasure> {
    let duration = b - a;
    let idx = tl.points_in(a, b);
    let mut devices = Vec::new();
    // the chosen cumulative series of each device, for the segments
    let mut series: Vec<Cumulative> = Vec::new();
    let mut power_channels = Vec::new();
    for dev in scope {
        let counter = tl
            .channel(dev, Quantity::Energy)
            .and_then(|c| tl.cumulative(c))
            .and_then(|c| c.delta(a, b).map(|d| (c, d)));
        let integ = tl
            .channel(dev, Quantity::EnergyIntegrated)
            .and_then(|c| tl.cumulative(c))
            .and_then(|c| c.delta(a, b).map(|d| (c, d)));
        let counter_j = counter.as_ref().map(|(_, d)| d.delta);
        let integrated_j = integ.as_ref().map(|(_, d)| d.delta);
        let (method, (cum, delta)) = match (counter, integ) {
            (Some(c), _) => (EnergyMethod::Counter, c),
            (None, Some(i)) => (EnergyMethod::PowerIntegration, i),
            (None, None) => continue,
        };
        let measured_by = match method {
            EnergyMethod::PowerIntegration => format!(
                "trapezoid integral of {}",
                tl.channels
                    .iter()
                    .find(|c| &c.spec.device == dev && c.spec.integrate)
                    .map_or("power", |c| c.spec.quantity.name())
            ),
            _ if dev.starts_with("gpu") => "NVML total_energy_consumption counter".into(),
            _ if dev.starts_with("cpu-") => "RAPL energy_uj counter".into(),
            _ => "energy counter".into(),
        };
        let power = POWER_QUANTITIES.iter().find_map(|&q| {
            tl.channel(dev, q)
                .filter(|c| c.max.iter().any(|v| v.is_some()))
        });
        let peak_power_w = power.and_then(|c| tl.gauge_max(c, &idx));
        let peak_memory_bytes = tl
            .channel(dev, Quantity::MemoryUsed)
            .and_then(|c| tl.gauge_max(c, &idx));
        power_channels.extend(power);
        devices.push(DeviceEnergy {
            device: dev.clone(),
            method,
            measured_by,
            energy_j: delta.delta,
            counter_energy_j: counter_j,
            integrated_energy_j: integrated_j,
            coverage: (delta.covered_s / duration).min(1.0),
            // the delta is over the covered part of the window only: average over that part
            avg_power_w: delta.delta / delta.covered_s,
            peak_power_w,
            peak_memory_bytes,
        });
        series.push(cum);
    }
    if devices.is_empty() {
        return None;
    }
    let energy_j: f64 = devices.iter().map(|d| d.energy_j).sum();
    let method = if devices.iter().all(|d| d.method == devices[0].method) {
        devices[0].method
    } else {
        EnergyMethod::Mixed
    };
    let all = |f: fn(&DeviceEnergy) -> Option<f64>| -> Option<f64> {
        devices.iter().map(f).sum::<Option<f64>>()
    };
    // peak of the devices' summed power: per point, the sum of each device's maximum
    let peak_power_w = idx
        .iter()
        .filter_map(|&k| {
            power_channels
                .iter()
                .map(|c| c.max.get(k).copied().flatten())
                .sum::<Option<f64>>()
        })
        .reduce(f64::max);
    let gpu_memory = devices
        .iter()
        .filter_map(|d| d.peak_memory_bytes)
        .reduce(|x, y| x + y);
    let (peak_memory_bytes, peak_memory_of) = match gpu_memory {
        Some(m) => (Some(m), Some("gpu memory_used".to_string())),
        None => {
            let rss = tl
                .channel("host", Quantity::ProcessRss)
                .and_then(|c| tl.gauge_max(c, &idx));
            (rss, rss.map(|_| "host process_rss".to_string()))
        }
    };
    let split = segments.map(|segs| {
        let (mut pre, mut dec) = (0.0, 0.0);
        for s in segs {
            let e: f64 = series
                .iter()
                .filter_map(|c| c.delta(s.start_s, s.end_s))
                .map(|d| d.delta)
                .sum();
            pre += e * s.prefill_fraction;
            dec += e * (1.0 - s.prefill_fraction);
        }
        (pre, dec, (energy_j - pre - dec).max(0.0))
    });
    let coverage = devices.iter().map(|d| d.coverage).fold(1.0, f64::min);
    let mut m = EnergyMeasure {
        method,
        scope: devices.iter().map(|d| d.device.clone()).collect(),
        sampling_interval_s: tl.interval_s,
        samples: tl.samples_in(a, b),
        coverage,
        energy_j,
        counter_energy_j: all(|d| d.counter_energy_j),
        integrated_energy_j: all(|d| d.integrated_energy_j),
        // each device's average over the time its series covers, summed over the scope
        avg_power_w: devices.iter().map(|d| d.avg_power_w).sum(),
        peak_power_w,
        peak_memory_bytes,
        peak_memory_of,
        j_per_request: None,
        j_per_token: None,
        tokens_per_j: None,
        output_tokens_per_j: None,
        j_per_input_token: None,
        j_per_output_token: None,
        prefill_j: split.map(|s| s.0),
        decode_j: split.map(|s| s.1),
        idle_j: split.map(|s| s.2),
        devices,
    };
    m.derive(work);
    Some(m)
}

impl EnergyMeasure {
    fn derive(&mut self, w: &Work) {
        let tokens = w.input_tokens + w.output_tokens;
        self.j_per_request = ratio(self.energy_j, w.requests);
        self.j_per_token = ratio(self.energy_j, tokens);
        self.tokens_per_j = ratio(tokens, self.energy_j);
        self.output_tokens_per_j = ratio(w.output_tokens, self.energy_j);
        self.j_per_input_token = self.prefill_j.and_then(|e| ratio(e, w.input_tokens));
        self.j_per_output_token = self.decode_j.and_then(|e| ratio(e, w.output_tokens));
    }

    fn combine(&mut self, o: &EnergyMeasure, dur_self: f64, dur_o: f64) {
        if self.method != o.method {
            self.method = EnergyMethod::Mixed;
        }
        for d in &o.scope {
            if !self.scope.contains(d) {
                self.scope.push(d.clone());
            }
        }
        self.samples += o.samples;
        let total = dur_self + dur_o;
        if total > 0.0 {
            self.coverage = ((self.coverage * dur_self + o.coverage * dur_o) / total).min(1.0);
        }
        self.energy_j += o.energy_j;
        let add = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(x, y)| x + y);
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        self.counter_energy_j = add(self.counter_energy_j, o.counter_energy_j);
        self.integrated_energy_j = add(self.integrated_energy_j, o.integrated_energy_j);
        self.peak_power_w = max(self.peak_power_w, o.peak_power_w);
        self.peak_memory_bytes = max(self.peak_memory_bytes, o.peak_memory_bytes);
        self.peak_memory_of = self.peak_memory_of.take().or(o.peak_memory_of.clone());
        self.prefill_j = add(self.prefill_j, o.prefill_j);
        self.decode_j = add(self.decode_j, o.decode_j);
        self.idle_j = add(self.idle_j, o.idle_j);
        for od in &o.devices {
            match self.devices.iter_mut().find(|d| d.device == od.device) {
                Some(d) => {
                    let dt = total.max(f64::MIN_POSITIVE);
                    if d.method != od.method {
                        d.method = EnergyMethod::Mixed;
                        d.measured_by = format!("{}; {}", d.measured_by, od.measured_by);
                    }
                    let covered = d.coverage * dur_self + od.coverage * dur_o;
                    d.coverage = (covered / dt).min(1.0);
                    d.energy_j += od.energy_j;
                    d.counter_energy_j = add(d.counter_energy_j, od.counter_energy_j);
                    d.integrated_energy_j = add(d.integrated_energy_j, od.integrated_energy_j);
                    if covered > 0.0 {
                        d.avg_power_w = d.energy_j / covered;
                    }
                    d.peak_power_w = max(d.peak_power_w, od.peak_power_w);
                    d.peak_memory_bytes = max(d.peak_memory_bytes, od.peak_memory_bytes);
                }
                None => self.devices.push(od.clone()),
            }
        }
        self.avg_power_w = self.devices.iter().map(|d| d.avg_power_w).sum();
    }
}

impl EnergyReport {
    /// Fill `cost` and `emissions` from the measured quantities.
    fn derive(&mut self, opts: &EnergyOptions) {
        let w = self.work;
        let tokens = w.input_tokens + w.output_tokens;
        self.cost = opts
            .cost
            .filter(|c| c.usd_per_gpu_hour.is_finite() && c.num_gpus > 0.0)
            .map(|c| {
                let usd = |seconds: f64| c.usd_per_gpu_hour * c.num_gpus * seconds / 3600.0;
                let total_usd = usd(self.duration_s);
                Cost {
                    usd_per_gpu_hour: c.usd_per_gpu_hour,
                    num_gpus: c.num_gpus,
                    total_usd,
                    usd_per_1m_tokens: ratio(total_usd * 1e6, tokens),
                    usd_per_1m_input_tokens: self
                        .time_split
                        .and_then(|t| ratio(usd(t.prefill_s) * 1e6, w.input_tokens)),
                    usd_per_1m_output_tokens: self
                        .time_split
                        .and_then(|t| ratio(usd(t.decode_s) * 1e6, w.output_tokens)),
                }
            });
        self.emissions = match (opts.grid_intensity_g_per_kwh, &self.energy) {
            (Some(i), Some(e)) if i.is_finite() && i >= 0.0 => {
                let g = |joules: f64| i * joules / 3.6e6;
                Some(Emissions {
                    grid_intensity_g_per_kwh: i,
                    energy_kwh: e.energy_j / 3.6e6,
                    g_co2e: g(e.energy_j),
                    g_per_1m_tokens: ratio(g(e.energy_j) * 1e6, tokens),
                    g_per_1m_input_tokens: e
                        .prefill_j
                        .and_then(|p| ratio(g(p) * 1e6, w.input_tokens)),
                    g_per_1m_output_tokens: e
                        .decode_j
                        .and_then(|d| ratio(g(d) * 1e6, w.output_tokens)),
                })
            }
            _ => None,
        };
    }

    /// Several windows taken together (e.g. a run's measured phases): energies, times and work add
    /// up, peaks are the largest, ratios are recomputed from the sums. `None` for no report.
    pub fn combine(reports: &[EnergyReport], opts: &EnergyOptions) -> Option<EnergyReport> {
        let (first, rest) = reports.split_first()?;
        // the steady states combined too, when every window has one
        let steady: Option<Vec<EnergyReport>> = reports
            .iter()
            .map(|r| r.steady_state.as_deref().cloned())
            .collect();
        let mut r = first.clone();
        for o in rest {
            r.start_s = r.start_s.min(o.start_s);
            r.end_s = r.end_s.max(o.end_s);
            let dur_self = r.duration_s;
            r.duration_s += o.duration_s;
            r.windows += o.windows;
            r.work.add(&o.work);
            r.time_split = r.time_split.zip(o.time_split).map(|(a, b)| TimeSplit {
                prefill_s: a.prefill_s + b.prefill_s,
                decode_s: a.decode_s + b.decode_s,
                idle_s: a.idle_s + b.idle_s,
            });
            r.energy = match (r.energy.take(), &o.energy) {
                (Some(mut a), Some(b)) => {
                    a.combine(b, dur_self, o.duration_s);
                    Some(a)
                }
                // a window without energy makes the total unknown
                _ => None,
            };
        }
        if let Some(e) = &mut r.energy {
            e.derive(&r.work);
        }
        r.derive(opts);
        r.steady_state = steady
            .and_then(|s| EnergyReport::combine(&s, opts))
            .map(Box::new);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::source::{ChannelSpec, Quantity};
    use crate::telemetry::timeline::TimelineBuilder;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-12)
    }

    /// A GPU drawing `p(t)` W: power samples, and an exact counter in mJ.
    fn synthetic_timeline(
        p: impl Fn(f64) -> f64,
        e: impl Fn(f64) -> f64,
        dt: f64,
        until: f64,
        counter: bool,
    ) -> Timeline {
        let mut pw = ChannelSpec::gauge("gpu0", Quantity::PowerInstant);
        pw.integrate = true;
        let specs = vec![
            ChannelSpec::counter("gpu0", Quantity::Energy),
            pw,
            ChannelSpec::gauge("gpu0", Quantity::MemoryUsed),
        ];
        let mut b = TimelineBuilder::new(specs, dt, 1 << 16);
        let mut c = crate::telemetry::source::EnergyCounter::new(1e-3, None);
        let e0 = 123_456_789u64; // since driver load
        let n = (until / dt).round() as usize;
        for i in 0..=n {
            let t = i as f64 * dt;
            let raw = e0 + (e(t) * 1e3).round() as u64;
            let j = c.update(raw);
            b.push(t, &[counter.then_some(j), Some(p(t)), Some(1e9 + t * 1e6)]);
        }
        b.snapshot()
    }

    fn gpu_opts() -> EnergyOptions {
        EnergyOptions {
            scope: vec!["gpu0".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_known_power_curve_gives_its_energy_by_counter_and_by_integration() {
        // P(t) = 300 + 100 sin(2πt/3) W; E(t) = 300t + (300/2π)(1 - cos(2πt/3)) J
        let w = 2.0 * std::f64::consts::PI / 3.0;
        let p = move |t: f64| 300.0 + 100.0 * (w * t).sin();
        let e = move |t: f64| 300.0 * t + 100.0 / w * (1.0 - (w * t).cos());
        let tl = synthetic_timeline(p, e, 0.02, 12.0, true);
        let (a, b) = (1.234, 10.567);
        let truth = e(b) - e(a);
        let work = Work {
            requests: 10.0,
            input_tokens: 1000.0,
            output_tokens: 500.0,
        };
        let r = summarize(Some(&tl), (a, b), &work, None, &gpu_opts());
        let m = r.energy.unwrap();
        assert_eq!(m.method, EnergyMethod::Counter);
        assert_eq!(m.scope, vec!["gpu0"]);
        assert!(close(m.energy_j, truth, 1e-3), "{} vs {truth}", m.energy_j);
        let integ = m.integrated_energy_j.unwrap();
        assert!(close(integ, truth, 1e-3), "{integ} vs {truth}");
        // the trapezoid rule's error at 20 ms on this curve is ~1e-5 (a rectangle rule's ~2e-4)
        assert!(close(integ, truth, 2e-5), "{integ} vs {truth}");
        assert!(close(m.avg_power_w, truth / (b - a), 1e-3));
        assert!(m.peak_power_w.unwrap() <= 400.0 && m.peak_power_w.unwrap() > 399.0);
        assert!(close(m.j_per_token.unwrap(), truth / 1500.0, 1e-3));
        assert!(close(m.output_tokens_per_j.unwrap(), 500.0 / truth, 1e-3));
        assert!(close(m.j_per_request.unwrap(), truth / 10.0, 1e-3));
        assert_eq!(m.coverage, 1.0);
        assert_eq!(m.sampling_interval_s, 0.02);
        assert!(close(m.peak_memory_bytes.unwrap(), 1e9 + 10.56e6, 1e-3));
        assert_eq!(m.j_per_input_token, None, "no split without segments");

        // without the counter the same energy comes from integration, labelled so
        let tl = synthetic_timeline(p, e, 0.02, 12.0, false);
        let m = summarize(Some(&tl), (a, b), &work, None, &gpu_opts())
            .energy
            .unwrap();
        assert_eq!(m.method, EnergyMethod::PowerIntegration);
        assert_eq!(m.counter_energy_j, None);
        assert!(close(m.energy_j, truth, 1e-3), "{} vs {truth}", m.energy_j);
    }

    #[test]
    fn energy_survives_timeline_compaction() {
        let p = |t: f64| 200.0 + 50.0 * (t * 0.7).sin();
        let e = |t: f64| 200.0 * t + 50.0 / 0.7 * (1.0 - (t * 0.7).cos());
        let full = synthetic_timeline(p, e, 0.01, 100.0, true);
        // rebuild the same samples into a 64-point timeline
        let mut b = TimelineBuilder::new(
            full.channels
                .iter()
                .take(3)
                .map(|c| c.spec.clone())
                .collect(),
            0.01,
            64,
        );
        for k in 0..full.len() {
            let v: Vec<Option<f64>> = full.channels[..3]
                .iter()
                .map(|c| c.last.get(k).or(c.mean.get(k)).copied().flatten())
                .collect();
            b.push(full.t_end_s[k], &v);
        }
        let small = b.snapshot();
        assert!(small.len() <= 65);
        let (a, z) = (0.0, 100.0);
        let truth = e(z) - e(a);
        for tl in [&full, &small] {
            let m = summarize(Some(tl), (a, z), &Work::default(), None, &gpu_opts())
                .energy
                .unwrap();
            assert!(close(m.energy_j, truth, 1e-3), "{} vs {truth}", m.energy_j);
            assert!(close(m.integrated_energy_j.unwrap(), truth, 1e-3));
        }
    }

    #[test]
    fn prefill_and_decode_split_by_step_tokens_and_idle_is_separate() {
        // constant 100 W for 10 s
        let tl = synthetic_timeline(|_| 100.0, |t| 100.0 * t, 0.01, 10.0, true);
        let step = |i: u64, start_s: f64, end_s: f64, p: usize, d: usize| StepRecord {
            index: i,
            start_s,
            end_s,
            batch_size: 1,
            prefill_tokens: p,
            decode_tokens: d,
            kv_blocks_used: 0,
            preemptions: 0,
            running: 1,
            waiting: 0,
        };
        let steps = [
            step(0, 1.0, 3.0, 300, 100), // 200 J: 150 prefill, 50 decode
            step(1, 4.0, 5.0, 0, 8),     // 100 J decode
            step(2, 5.0, 5.5, 10, 0),    // 50 J prefill
        ];
        let segs = segments_from_steps(&steps);
        let work = Work {
            requests: 2.0,
            input_tokens: 310.0,
            output_tokens: 108.0,
        };
        let r = summarize(Some(&tl), (0.5, 6.5), &work, Some(&segs), &gpu_opts());
        let t = r.time_split.unwrap();
        assert!(close(t.prefill_s, 2.0, 1e-9) && close(t.decode_s, 1.5, 1e-9));
        assert!(close(t.idle_s, 2.5, 1e-9));
        let m = r.energy.unwrap();
        assert!(
            close(m.prefill_j.unwrap(), 200.0, 1e-6),
            "{:?}",
            m.prefill_j
        );
        assert!(close(m.decode_j.unwrap(), 150.0, 1e-6));
        assert!(close(m.idle_j.unwrap(), 250.0, 1e-6));
        assert!(close(m.energy_j, 600.0, 1e-6));
        assert!(close(m.j_per_input_token.unwrap(), 200.0 / 310.0, 1e-6));
        assert!(close(m.j_per_output_token.unwrap(), 150.0 / 108.0, 1e-6));
    }

    #[test]
    fn request_segments_split_time_by_requests_awaiting_vs_streaming() {
        let rec = |send_s: f64, first: f64, end: f64| RequestRecord {
            id: 0,
            scheduled_s: send_s,
            send_s,
            first_token_s: Some(first),
            chunk_times_s: vec![first, end],
            end_s: Some(end),
            prompt_tokens: 10,
            output_tokens: 2,
            error: None,
        };
        // A: awaits 0..1, streams 1..4; B: awaits 2..3, streams 3..4; nothing 4..5; C: 5..5.5..6
        let segs =
            segments_from_requests(&[rec(0.0, 1.0, 4.0), rec(2.0, 3.0, 4.0), rec(5.0, 5.5, 6.0)]);
        let f: Vec<(f64, f64, f64)> = segs
            .iter()
            .map(|s| (s.start_s, s.end_s, s.prefill_fraction))
            .collect();
        assert_eq!(
            f,
            vec![
                (0.0, 1.0, 1.0),
                (1.0, 2.0, 0.0),
                (2.0, 3.0, 0.5),
                (3.0, 4.0, 0.0),
                (5.0, 5.5, 1.0),
                (5.5, 6.0, 0.0)
            ]
        );
    }

    #[test]
    fn cost_separates_prefill_and_decode_time() {
        // 1 h window; prefill 0.5 h for 1M input tokens, decode 0.25 h for 250k output tokens
        let segs = [
            WorkSegment {
                start_s: 0.0,
                end_s: 1800.0,
                prefill_fraction: 1.0,
            },
            WorkSegment {
                start_s: 1800.0,
                end_s: 2700.0,
                prefill_fraction: 0.0,
            },
        ];
        let work = Work {
            requests: 100.0,
            input_tokens: 1e6,
            output_tokens: 250_000.0,
        };
        let opts = EnergyOptions {
            scope: vec![],
            cost: Some(CostParams {
                usd_per_gpu_hour: 2.0,
                num_gpus: 4.0,
            }),
            grid_intensity_g_per_kwh: Some(400.0),
        };
        let r = summarize(None, (0.0, 3600.0), &work, Some(&segs), &opts);
        let c = r.cost.unwrap();
        assert!(close(c.total_usd, 8.0, 1e-12));
        // $8/h × 0.5 h = $4 per 1M input tokens
        assert!(close(c.usd_per_1m_input_tokens.unwrap(), 4.0, 1e-12));
        // $8/h × 0.25 h = $2 for 250k output tokens = $8 per 1M
        assert!(close(c.usd_per_1m_output_tokens.unwrap(), 8.0, 1e-12));
        assert!(close(c.usd_per_1m_tokens.unwrap(), 8.0 / 1.25, 1e-12));
        assert!(r.energy.is_none() && r.emissions.is_none(), "no telemetry");

        // emissions: 1 kWh at 400 g/kWh over 1.25M tokens
        let tl = synthetic_timeline(|_| 1000.0, |t| 1000.0 * t, 1.0, 3600.0, true);
        let r = summarize(
            Some(&tl),
            (0.0, 3600.0),
            &work,
            Some(&segs),
            &EnergyOptions {
                scope: vec!["gpu0".into()],
                ..opts
            },
        );
        let em = r.emissions.unwrap();
        assert!(close(em.energy_kwh, 1.0, 1e-9));
        assert!(close(em.g_co2e, 400.0, 1e-9));
        assert!(close(em.g_per_1m_tokens.unwrap(), 320.0, 1e-9));
        // prefill got 0.5 kWh: 200 g per 1M input tokens
        assert!(close(em.g_per_1m_input_tokens.unwrap(), 200.0, 1e-9));
    }

    #[test]
    fn combined_windows_add_up() {
        let tl = synthetic_timeline(|_| 100.0, |t| 100.0 * t, 0.01, 10.0, true);
        let w = Work {
            requests: 1.0,
            input_tokens: 10.0,
            output_tokens: 10.0,
        };
        let opts = EnergyOptions {
            cost: Some(CostParams {
                usd_per_gpu_hour: 3.6,
                num_gpus: 1.0,
            }),
            ..gpu_opts()
        };
        let a = summarize(Some(&tl), (1.0, 2.0), &w, None, &opts);
        let b = summarize(Some(&tl), (5.0, 8.0), &w, None, &opts);
        let c = EnergyReport::combine(&[a, b], &opts).unwrap();
        assert_eq!(c.windows, 2);
        assert!(close(c.duration_s, 4.0, 1e-12));
        let m = c.energy.unwrap();
        assert!(close(m.energy_j, 400.0, 1e-6));
        assert!(close(m.avg_power_w, 100.0, 1e-6));
        assert!(close(m.j_per_request.unwrap(), 200.0, 1e-6));
        assert!(close(c.cost.unwrap().total_usd, 0.004, 1e-9));
    }

    #[test]
    fn average_power_is_over_the_covered_part_of_the_window() {
        // 100 W sampled over [0, 10]; the window [5, 15] is half covered: 500 J over 5 s covered.
        let tl = synthetic_timeline(|_| 100.0, |t| 100.0 * t, 0.01, 10.0, true);
        let m = summarize(Some(&tl), (5.0, 15.0), &Work::default(), None, &gpu_opts())
            .energy
            .unwrap();
        assert!(close(m.coverage, 0.5, 1e-9), "{}", m.coverage);
        assert!(close(m.energy_j, 500.0, 1e-6));
        assert!(close(m.avg_power_w, 100.0, 1e-6), "{}", m.avg_power_w);
        assert!(close(m.devices[0].avg_power_w, 100.0, 1e-6));
        // combined with a fully covered window at the same power: still 100 W
        let full = summarize(Some(&tl), (1.0, 3.0), &Work::default(), None, &gpu_opts());
        let half = summarize(Some(&tl), (5.0, 15.0), &Work::default(), None, &gpu_opts());
        let c = EnergyReport::combine(&[full, half], &gpu_opts()).unwrap();
        let m = c.energy.unwrap();
        assert!(close(m.energy_j, 700.0, 1e-6));
        assert!(close(m.avg_power_w, 100.0, 1e-6), "{}", m.avg_power_w);
        assert!(close(m.devices[0].avg_power_w, 100.0, 1e-6));
    }

    #[test]
    fn no_device_in_scope_means_no_energy_and_no_nan() {
        let tl = synthetic_timeline(|_| 100.0, |t| 100.0 * t, 0.01, 1.0, true);
        let r = summarize(
            Some(&tl),
            (0.0, 1.0),
            &Work::default(),
            Some(&[]),
            &EnergyOptions {
                scope: vec!["gpu7".into()],
                ..Default::default()
            },
        );
        assert!(r.energy.is_none());
        let r = summarize(Some(&tl), (0.2, 0.8), &Work::default(), None, &gpu_opts());
        let m = r.energy.as_ref().unwrap();
        assert_eq!(m.j_per_token, None);
        assert!(serde_json::to_string(&r)
            .unwrap()
            .contains("\"j_per_token\":null"));
    }
}
