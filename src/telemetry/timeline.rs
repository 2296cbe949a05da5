//! The telemetry timeline: every source's channels on one clock, kept in bounded memory.
//!
//! [`TimelineBuilder`] receives raw samples (time + one value per source channel). It keeps at most
//! `max_points` points: once full, adjacent pairs of points are merged (halving the count) and every
//! later point gathers twice as many raw samples, so a run of any length keeps between
//! `max_points / 2` and `max_points + 1` points spread evenly over the whole run. A point keeps, per
//! channel: for gauges min, max and mean (mean over the raw samples that had a value); for counters
//! the last value (so counter differences between point ends stay exact); for flags the OR.
//!
//! Before a raw sample is merged, the builder integrates each power gauge marked `integrate`
//! (trapezoid rule between consecutive samples that have a value) into a derived
//! [`Quantity::EnergyIntegrated`] counter of the same device: the integral is taken at full sampling
//! resolution, and compaction does not degrade it.
//!
//! [`Timeline`] is the materialised, serialisable form (columns per channel), written to results
//! files; energy over any window is computed from it alone ([`crate::metrics::energy`]).

use serde::{Deserialize, Serialize};

use super::source::{ChannelKind, ChannelSpec, Quantity};

/// Default bound on the points a timeline keeps.
pub const DEFAULT_MAX_POINTS: usize = 2048;

#[derive(Debug, Clone, Copy)]
struct Acc {
    min: f64,
    max: f64,
    sum: f64,
    count: u32,
    first: Option<f64>,
    last: Option<f64>,
    bits: u64,
}

impl Acc {
    const EMPTY: Acc = Acc {
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        sum: 0.0,
        count: 0,
        first: None,
        last: None,
        bits: 0,
    };

    fn of(v: Option<f64>) -> Acc {
        match v {
            Some(x) if x.is_finite() => Acc {
                min: x,
                max: x,
                sum: x,
                count: 1,
                first: Some(x),
                last: Some(x),
                bits: if x >= 0.0 && x < u64::MAX as f64 {
                    x as u64
                } else {
                    0
                },
            },
            _ => Acc::EMPTY,
        }
    }

    fn merge(&mut self, later: &Acc) {
        self.min = self.min.min(later.min);
        self.max = self.max.max(later.max);
        self.sum += later.sum;
        self.count += later.count;
        // `first` stays the value of the earliest raw sample (None if it had none), so it is
        // exact at the point's start time
        if later.last.is_some() {
            self.last = later.last;
        }
        self.bits |= later.bits;
    }
}

#[derive(Debug, Clone)]
struct Point {
    t0: f64,
    t1: f64,
    n: u64,
    acc: Vec<Acc>,
}

impl Point {
    fn merge(&mut self, later: &Point) {
        self.t1 = later.t1;
        self.n += later.n;
        for (a, b) in self.acc.iter_mut().zip(&later.acc) {
            a.merge(b);
        }
    }
}

#[derive(Debug, Clone)]
struct Integrator {
    src: usize,
    dst: usize,
    last: Option<(f64, f64)>,
    total: f64,
}

/// Builds a bounded [`Timeline`] from raw samples (see the module docs).
#[derive(Debug, Clone)]
pub struct TimelineBuilder {
    interval_s: f64,
    max_points: usize,
    channels: Vec<ChannelSpec>,
    n_source: usize,
    integrators: Vec<Integrator>,
    points: Vec<Point>,
    pending: Option<Point>,
    stride: u64,
    samples: u64,
    last_t: Option<f64>,
    scratch: Vec<Option<f64>>,
}

impl TimelineBuilder {
    /// A builder for samples of `channels` taken every `interval_s` (recorded, not enforced), keeping
    /// at most `max_points` points (rounded up to an even number, at least 4).
    pub fn new(channels: Vec<ChannelSpec>, interval_s: f64, max_points: usize) -> Self {
        let n_source = channels.len();
        let mut all = channels;
        let mut integrators = Vec::new();
        for src in 0..n_source {
            let c = &all[src];
            let already = integrators
                .iter()
                .any(|i: &Integrator| all[i.src].device == c.device);
            if c.integrate && c.kind == ChannelKind::Gauge && !already {
                let derived = ChannelSpec::counter(&c.device, Quantity::EnergyIntegrated);
                all.push(derived);
                integrators.push(Integrator {
                    src,
                    dst: all.len() - 1,
                    last: None,
                    total: 0.0,
                });
            }
        }
        let max_points = max_points.max(4).next_multiple_of(2);
        Self {
            interval_s,
            max_points,
            scratch: vec![None; all.len()],
            channels: all,
            n_source,
            integrators,
            points: Vec::new(),
            pending: None,
            stride: 1,
            samples: 0,
            last_t: None,
        }
    }

    /// The channels of the timeline: the sources' ones, then the derived integrals.
    pub fn channels(&self) -> &[ChannelSpec] {
        &self.channels
    }

    /// Number of source channels `push` expects.
    pub fn num_source_channels(&self) -> usize {
        self.n_source
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Time of the latest sample.
    pub fn last_time(&self) -> Option<f64> {
        self.last_t
    }

    /// Points held now (bounded by `max_points + 1`).
    pub fn len(&self) -> usize {
        self.points.len() + usize::from(self.pending.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add a raw sample taken at `t_s` (non-decreasing; an earlier time is moved up to the last one).
    /// `values` holds one entry per source channel; missing entries count as `None`, extra ones are
    /// ignored.
    pub fn push(&mut self, t_s: f64, values: &[Option<f64>]) {
        let t = match self.last_t {
            Some(last)
                if !matches!(
                    t_s.partial_cmp(&last),
                    Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                ) =>
            {
                last
            }
            _ if !t_s.is_finite() => self.last_t.unwrap_or(0.0),
            _ => t_s,
        };
        self.last_t = Some(t);
        self.samples += 1;
        self.scratch.iter_mut().for_each(|v| *v = None);
        for (dst, v) in self
            .scratch
            .iter_mut()
            .zip(values.iter().take(self.n_source))
        {
            *dst = v.filter(|x| x.is_finite());
        }
        for ig in &mut self.integrators {
            if let Some(p) = self.scratch[ig.src] {
                if let Some((t0, p0)) = ig.last {
                    ig.total += 0.5 * (p0 + p) * (t - t0);
                }
                ig.last = Some((t, p));
                self.scratch[ig.dst] = Some(ig.total);
            }
        }
        let raw = Point {
            t0: t,
            t1: t,
            n: 1,
            acc: self.scratch.iter().map(|&v| Acc::of(v)).collect(),
        };
        match &mut self.pending {
            Some(p) => p.merge(&raw),
            None => self.pending = Some(raw),
        }
        if self.pending.as_ref().is_some_and(|p| p.n >= self.stride) {
            if let Some(p) = self.pending.take() {
                self.points.push(p);
            }
            if self.points.len() >= self.max_points {
                self.compact();
            }
        }
    }

    /// Merge adjacent pairs of points; later points gather twice as many samples.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.points);
        let mut it = old.into_iter();
        while let Some(mut a) = it.next() {
            if let Some(b) = it.next() {
                a.merge(&b);
            }
            self.points.push(a);
        }
        self.stride *= 2;
    }

    /// The timeline so far (the partly filled last point included).
    pub fn snapshot(&self) -> Timeline {
        let points: Vec<&Point> = self.points.iter().chain(self.pending.as_ref()).collect();
        let channels = self
            .channels
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let col = |f: &dyn Fn(&Acc) -> Option<f64>| -> Vec<Option<f64>> {
                    points.iter().map(|p| f(&p.acc[i])).collect()
                };
                let present = |a: &Acc| a.count > 0;
                let mut ch = TimelineChannel {
                    name: spec.name(),
                    unit: spec.quantity.unit().to_string(),
                    spec: spec.clone(),
                    min: Vec::new(),
                    max: Vec::new(),
                    mean: Vec::new(),
                    first: Vec::new(),
                    last: Vec::new(),
                    bits: Vec::new(),
                };
                match spec.kind {
                    ChannelKind::Gauge => {
                        ch.min = col(&|a| present(a).then_some(a.min));
                        ch.max = col(&|a| present(a).then_some(a.max));
                        ch.mean = col(&|a| present(a).then(|| a.sum / f64::from(a.count)));
                    }
                    ChannelKind::Counter => {
                        ch.first = col(&|a| a.first);
                        ch.last = col(&|a| a.last);
                    }
                    ChannelKind::Flags => {
                        ch.bits = points
                            .iter()
                            .map(|p| present(&p.acc[i]).then_some(p.acc[i].bits))
                            .collect()
                    }
                }
                ch
            })
            .collect();
        Timeline {
            interval_s: self.interval_s,
            max_points: self.max_points,
            samples: self.samples,
            samples_per_point: self.stride,
            t_start_s: points.iter().map(|p| p.t0).collect(),
            t_end_s: points.iter().map(|p| p.t1).collect(),
            n: points.iter().map(|p| p.n).collect(),
            channels,
            sampler: None,
        }
    }
}

/// What the sampler thread cost and how well it kept time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerStats {
    /// Wall time the sampler ran (s).
    pub wall_s: f64,
    /// CPU time of the sampler thread (s), from /proc/thread-self/schedstat; null where unreadable.
    pub cpu_s: Option<f64>,
    /// `cpu_s / wall_s`: the fraction of one core the sampling cost.
    pub cpu_fraction_of_one_core: Option<f64>,
    /// Raw samples taken (forced ones included).
    pub samples: u64,
    /// Samples taken on request (phase boundaries), outside the regular ticks.
    pub forced_samples: u64,
    /// Ticks skipped because a sample overran its interval.
    pub missed_ticks: u64,
    /// Mean time to read every source once (µs).
    pub mean_read_us: f64,
    /// Longest time to read every source once (µs).
    pub max_read_us: f64,
}

/// One channel's columns (one entry per point; null where no sample of the point had a value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineChannel {
    /// `device.quantity`.
    pub name: String,
    pub unit: String,
    #[serde(flatten)]
    pub spec: ChannelSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub min: Vec<Option<f64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub max: Vec<Option<f64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mean: Vec<Option<f64>>,
    /// Counters: the value at the point's start time (null if its first sample had none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first: Vec<Option<f64>>,
    /// Counters: the value at the point's end time (its last sample with a value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last: Vec<Option<f64>>,
    /// Flags: the OR of the point's samples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bits: Vec<Option<u64>>,
}

/// The materialised timeline (see the module docs). Times are seconds from the run's epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// The sampling interval asked for (s).
    pub interval_s: f64,
    /// The bound on points.
    pub max_points: usize,
    /// Raw samples taken.
    pub samples: u64,
    /// Raw samples per point now (doubles at each compaction).
    pub samples_per_point: u64,
    /// Time of each point's first and last raw sample.
    pub t_start_s: Vec<f64>,
    pub t_end_s: Vec<f64>,
    /// Raw samples in each point.
    pub n: Vec<u64>,
    pub channels: Vec<TimelineChannel>,
    /// Cost of the sampler (filled when it stops).
    #[serde(default)]
    pub sampler: Option<SamplerStats>,
}

impl Timeline {
    pub fn len(&self) -> usize {
        self.t_end_s.len()
    }

    pub fn is_empty(&self) -> bool {
        self.t_end_s.is_empty()
    }

    /// The channel measuring `quantity` on `device`.
    pub fn channel(&self, device: &str, quantity: Quantity) -> Option<&TimelineChannel> {
        self.channels
            .iter()
            .find(|c| c.spec.device == device && c.spec.quantity == quantity)
    }

    /// Devices with at least one channel, in first-seen order.
    pub fn devices(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.channels {
            if !out.contains(&c.spec.device) {
                out.push(c.spec.device.clone());
            }
        }
        out
    }

    /// A counter channel's values as a function of time (see [`Cumulative`]); `None` when the
    /// channel has no value at all.
    pub fn cumulative(&self, ch: &TimelineChannel) -> Option<Cumulative> {
        let mut pts: Vec<(f64, f64)> = Vec::with_capacity(2 * self.len());
        for k in 0..self.len() {
            if let Some(v) = ch.first.get(k).copied().flatten() {
                pts.push((self.t_start_s[k], v));
            }
            if let Some(v) = ch.last.get(k).copied().flatten() {
                pts.push((self.t_end_s[k], v));
            }
        }
        pts.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1);
        (!pts.is_empty()).then_some(Cumulative { pts })
    }

    /// A counter's increase over `[a, b]` (see [`Cumulative::delta`]).
    pub fn counter_delta(&self, ch: &TimelineChannel, a: f64, b: f64) -> Option<CounterDelta> {
        self.cumulative(ch)?.delta(a, b)
    }

    /// Indices of the points overlapping `[a, b]`; when none does (a window inside one sampling
    /// interval), the points just before and just after it.
    pub fn points_in(&self, a: f64, b: f64) -> Vec<usize> {
        let inside: Vec<usize> = (0..self.len())
            .filter(|&k| self.t_end_s[k] >= a && self.t_start_s[k] <= b)
            .collect();
        if !inside.is_empty() {
            return inside;
        }
        let before = (0..self.len()).rev().find(|&k| self.t_end_s[k] < a);
        let after = (0..self.len()).find(|&k| self.t_start_s[k] > b);
        before.into_iter().chain(after).collect()
    }

    /// Raw samples taken within `[a, b]` (points wholly inside).
    pub fn samples_in(&self, a: f64, b: f64) -> u64 {
        (0..self.len())
            .filter(|&k| self.t_start_s[k] >= a && self.t_end_s[k] <= b)
            .map(|k| self.n[k])
            .sum()
    }

    /// The largest value of a gauge over the points `idx`.
    pub fn gauge_max(&self, ch: &TimelineChannel, idx: &[usize]) -> Option<f64> {
        idx.iter()
            .filter_map(|&k| ch.max.get(k).copied().flatten())
            .reduce(f64::max)
    }
}

/// A counter's values at the points' end times; linear in time between them.
#[derive(Debug, Clone, PartialEq)]
pub struct Cumulative {
    pts: Vec<(f64, f64)>,
}

impl Cumulative {
    /// First and last time with a value.
    pub fn span(&self) -> (f64, f64) {
        (self.pts[0].0, self.pts[self.pts.len() - 1].0)
    }

    /// The value at `t`, interpolated linearly between points, held constant outside them.
    pub fn at(&self, t: f64) -> f64 {
        let pts = &self.pts;
        let k = pts.partition_point(|p| p.0 < t);
        if k == 0 {
            return pts[0].1;
        }
        if k >= pts.len() {
            return pts[pts.len() - 1].1;
        }
        let (t0, v0) = pts[k - 1];
        let (t1, v1) = pts[k];
        if t1 > t0 {
            v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        } else {
            v1
        }
    }

    /// The increase over `[a, b]` clamped to the span with values; `None` when the clamped window
    /// is empty.
    pub fn delta(&self, a: f64, b: f64) -> Option<CounterDelta> {
        let (tf, tl) = self.span();
        let (lo, hi) = (a.max(tf), b.min(tl));
        if !matches!(hi.partial_cmp(&lo), Some(std::cmp::Ordering::Greater)) {
            return None;
        }
        Some(CounterDelta {
            delta: self.at(hi) - self.at(lo),
            covered_s: hi - lo,
        })
    }
}

/// A counter's increase over a window, and how much of the window the counter covered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterDelta {
    pub delta: f64,
    pub covered_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<ChannelSpec> {
        let mut p = ChannelSpec::gauge("gpu0", Quantity::PowerInstant);
        p.integrate = true;
        vec![
            p,
            ChannelSpec::counter("gpu0", Quantity::Energy),
            ChannelSpec::new("gpu0", Quantity::ThrottleReasons, ChannelKind::Flags),
        ]
    }

    #[test]
    fn compaction_keeps_memory_bounded_and_statistics_exact() {
        let cap = 64;
        let mut b = TimelineBuilder::new(specs(), 0.02, cap);
        let n = 100_000u64;
        let mut max_len = 0;
        for i in 0..n {
            let t = i as f64 * 0.02;
            let p = 100.0 + (i % 7) as f64; // 100..106
            let bits = if i == 5_000 { 4.0 } else { 1.0 };
            b.push(t, &[Some(p), Some(t * 10.0), Some(bits)]);
            max_len = max_len.max(b.len());
        }
        assert!(max_len <= cap + 1, "held {max_len} points");
        let tl = b.snapshot();
        assert!(tl.len() >= cap / 2 && tl.len() <= cap + 1, "{}", tl.len());
        assert_eq!(tl.n.iter().sum::<u64>(), n, "every sample is in one point");
        assert_eq!(tl.samples, n);
        // points tile the run in order
        for k in 1..tl.len() {
            assert!(tl.t_start_s[k] > tl.t_end_s[k - 1]);
        }
        let p = tl.channel("gpu0", Quantity::PowerInstant).unwrap();
        assert_eq!(
            p.min.iter().flatten().cloned().reduce(f64::min),
            Some(100.0)
        );
        assert_eq!(
            p.max.iter().flatten().cloned().reduce(f64::max),
            Some(106.0)
        );
        let weighted: f64 = p
            .mean
            .iter()
            .zip(&tl.n)
            .map(|(m, &n)| m.unwrap() * n as f64)
            .sum();
        let true_mean = (0..n).map(|i| 100.0 + (i % 7) as f64).sum::<f64>() / n as f64;
        assert!((weighted / n as f64 - true_mean).abs() < 1e-9);
        // counter: the last value of the last point is the last sample
        let e = tl.channel("gpu0", Quantity::Energy).unwrap();
        assert_eq!(
            e.last.last().unwrap().unwrap(),
            (n - 1) as f64 * 0.02 * 10.0
        );
        // flags: the one odd sample survives as an OR
        let f = tl.channel("gpu0", Quantity::ThrottleReasons).unwrap();
        assert_eq!(f.bits.iter().flatten().filter(|&&b| b == 5).count(), 1);
        // the derived integral at full resolution: mean power × time
        let ei = tl.channel("gpu0", Quantity::EnergyIntegrated).unwrap();
        let total = ei.last.last().unwrap().unwrap();
        let expect = {
            let mut acc = 0.0;
            for i in 1..n {
                let p0 = 100.0 + ((i - 1) % 7) as f64;
                let p1 = 100.0 + (i % 7) as f64;
                acc += 0.5 * (p0 + p1) * 0.02;
            }
            acc
        };
        assert!(
            (total - expect).abs() < 1e-6 * expect,
            "{total} vs {expect}"
        );
    }

    #[test]
    fn counter_delta_interpolates_between_points_and_clamps_to_coverage() {
        let mut b =
            TimelineBuilder::new(vec![ChannelSpec::counter("d", Quantity::Energy)], 1.0, 16);
        for i in 0..=10 {
            b.push(i as f64, &[Some(i as f64 * 50.0)]);
        }
        let tl = b.snapshot();
        let ch = tl.channel("d", Quantity::Energy).unwrap();
        let d = tl.counter_delta(ch, 2.5, 7.25).unwrap();
        assert!((d.delta - 4.75 * 50.0).abs() < 1e-9);
        assert!((d.covered_s - 4.75).abs() < 1e-12);
        let d = tl.counter_delta(ch, -5.0, 3.0).unwrap();
        assert!((d.covered_s - 3.0).abs() < 1e-12);
        assert!(tl.counter_delta(ch, 20.0, 30.0).is_none());
        // window inside one interval
        let d = tl.counter_delta(ch, 3.1, 3.2).unwrap();
        assert!((d.delta - 5.0).abs() < 1e-9);
    }

    #[test]
    fn missing_values_are_null_and_times_never_go_backwards() {
        let mut b = TimelineBuilder::new(specs(), 0.02, 8);
        b.push(1.0, &[None, None, None]);
        b.push(0.5, &[Some(f64::NAN), Some(1.0)]);
        let tl = b.snapshot();
        assert_eq!(tl.t_end_s, vec![1.0, 1.0]);
        let p = tl.channel("gpu0", Quantity::PowerInstant).unwrap();
        assert_eq!(p.mean, vec![None, None]);
        let json = serde_json::to_value(&tl).unwrap();
        assert!(json["channels"][0]["mean"][0].is_null());
    }
}
