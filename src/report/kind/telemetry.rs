//! The `telemetry` section of a results file (sources, timeline, per-window energy reports) turned
//! into a row's energy, power, memory and cost figures, and into a power and memory timeline.
//! Every absent figure says why: no telemetry in the file, telemetry off, no energy source on the
//! machine (and which sources were missing), or no price.

use crate::metrics::energy::{EnergyMethod, EnergyReport, WorkSegment};
use crate::report::build::Options;
use crate::report::format::{bytes, duration, number};
use crate::report::model::{Figure, Figures, Measurement, Panel, Plot, PlotData, Series, Span};
use crate::telemetry::source::Quantity;
use crate::telemetry::timeline::{Timeline, TimelineChannel};
use crate::telemetry::TelemetrySection;

use super::NO_TELEMETRY;

/// Most shaded spans a timeline gets (longer runs are bucketed).
const SHADE_BUCKETS: usize = 600;

/// What a row's window did, for cost and the fallback split.
pub struct Window<'a> {
    /// `[start, end]` on the file's clock.
    pub span: (f64, f64),
    /// The window's energy report (a phase's or step's `energy`).
    pub report: Option<&'a EnergyReport>,
    pub input_tokens: usize,
    pub output_tokens: usize,
    /// Prefill and decode time when the report has no split (engine step attribution).
    pub fallback_split: Option<(f64, f64)>,
    /// Why there is no prefill/decode split at all (e.g. a non-streamed load step), when known.
    pub no_split_reason: Option<String>,
    /// GPUs the work ran on (the file's hardware section); `None` when unknown (an HTTP server's).
    pub gpus: Option<usize>,
}

/// Why energy is absent, from the section: off, no source (which ones were missing), or none.
fn no_energy_reason(section: Option<&TelemetrySection>) -> (String, String) {
    let Some(s) = section else {
        return (NO_TELEMETRY.into(), format!("— {NO_TELEMETRY}"));
    };
    if s.sources.is_empty() {
        let r = "telemetry off (--no-telemetry)".to_string();
        return (r.clone(), format!("— {r}"));
    }
    if s.energy_devices.is_empty() {
        let missing: Vec<&str> = s
            .sources
            .iter()
            .filter(|x| !x.available)
            .map(|x| x.source.as_str())
            .collect();
        let details: Vec<String> = s
            .sources
            .iter()
            .filter(|x| !x.available)
            .map(|x| {
                format!(
                    "{}: {}",
                    x.source,
                    x.reason.as_deref().unwrap_or("unavailable")
                )
            })
            .collect();
        let short = format!(
            "no energy source on this machine ({} unavailable)",
            missing.join(", ")
        );
        return (short, format!("— no energy source: {}", details.join("; ")));
    }
    let r = "no energy samples in this window".to_string();
    (r.clone(), format!("— {r}"))
}

fn method_name(m: EnergyMethod) -> &'static str {
    match m {
        EnergyMethod::Counter => "energy counter",
        EnergyMethod::PowerIntegration => "integrated sampled power",
        EnergyMethod::Mixed => "energy counters and integrated power (mixed)",
    }
}

/// Fill the energy, power, memory and cost figures and their measurement notes.
pub fn fill(
    f: &mut Figures,
    m: &mut Measurement,
    section: Option<&TelemetrySection>,
    w: &Window,
    opts: &Options,
) {
    match w.report.and_then(|r| r.energy.as_ref()) {
        Some(e) => {
            // One definition in every row: decode energy ÷ output tokens (never all energy ÷
            // output tokens, which would also charge prefill and idle energy to output tokens).
            f.joules_per_output_token = match (&w.no_split_reason, e.decode_j) {
                (Some(why), _) => Figure::absent(why.clone()),
                (None, None) => Figure::absent("no prefill/decode split: decode energy unknown"),
                (None, Some(_)) => Figure::or(e.j_per_output_token, "no output tokens"),
            };
            f.tokens_per_joule = Figure::or(e.tokens_per_j, "no energy measured");
            let steady = w.report.and_then(|r| r.steady_state.as_deref());
            f.steady_tokens_per_joule = match steady {
                Some(st) => Figure::or(
                    st.energy.as_ref().and_then(|x| x.tokens_per_j),
                    "no energy or no tokens in the steady state",
                ),
                None => Figure::absent(
                    "no steady state (all slots never busy at once, or not recorded in this file)",
                ),
            };
            f.avg_power_w = Figure::of(e.avg_power_w);
            f.peak_power_w = Figure::or(e.peak_power_w, "no power samples in this window");
            m.energy = format!(
                "{} over {} (every {}, {} samples, {}% of the window covered); decode J/out tok = \
                 decode energy ÷ output tokens; tok/J = all tokens ÷ all energy; steady tok/J = the \
                 same over the steady state ({})",
                method_name(e.method),
                e.scope.join(" + "),
                duration(e.sampling_interval_s),
                e.samples,
                number(e.coverage * 100.0),
                match steady {
                    Some(st) => duration(st.duration_s),
                    None => "none".into(),
                }
            );
        }
        None => {
            let (short, long) = no_energy_reason(section);
            for fig in [
                &mut f.joules_per_output_token,
                &mut f.tokens_per_joule,
                &mut f.steady_tokens_per_joule,
                &mut f.avg_power_w,
                &mut f.peak_power_w,
            ] {
                *fig = Figure::absent(short.clone());
            }
            m.energy = long;
        }
    }
    let (memory, host_rss) = gpu_memory(section, w);
    f.peak_gpu_memory_bytes = memory;
    if let Some(rss) = host_rss {
        m.energy.push_str(&format!(
            "; no GPU memory: host process peak RSS {}",
            bytes(rss)
        ));
    }
    cost(f, m, w, opts);
}

/// Peak GPU memory: the energy report's when it measured GPUs, else the timeline's GPU
/// `memory_used` (per-device peaks summed); else absent, with the host process's peak RSS when
/// the timeline has it.
fn gpu_memory(section: Option<&TelemetrySection>, w: &Window) -> (Figure, Option<f64>) {
    if let Some(e) = w.report.and_then(|r| r.energy.as_ref()) {
        if let (Some(b), Some(of)) = (e.peak_memory_bytes, &e.peak_memory_of) {
            if of.starts_with("gpu") {
                return (Figure::of(b), None);
            }
        }
    }
    let Some(s) = section else {
        return (Figure::absent(NO_TELEMETRY), None);
    };
    let Some(tl) = &s.timeline else {
        return (Figure::absent(no_energy_reason(section).0), None);
    };
    let (a, b) = w.span;
    let idx = tl.points_in(a, b);
    let peak = |c: &TimelineChannel| tl.gauge_max(c, &idx);
    let gpu: Vec<f64> = tl
        .channels
        .iter()
        .filter(|c| c.spec.device.starts_with("gpu") && c.spec.quantity == Quantity::MemoryUsed)
        .filter_map(peak)
        .collect();
    if !gpu.is_empty() {
        return (Figure::of(gpu.iter().sum()), None);
    }
    let rss = tl
        .channels
        .iter()
        .find(|c| c.spec.quantity == Quantity::ProcessRss)
        .and_then(peak);
    (Figure::absent("no GPU measured"), rss)
}

/// $/1M input and output tokens: with the report's price, from the window's prefill and decode
/// time (the energy report's split, else the engine's); else the run's own cost section.
fn cost(f: &mut Figures, m: &mut Measurement, w: &Window, opts: &Options) {
    let per_m = |usd: f64, tokens: usize| {
        if tokens == 0 {
            Figure::absent("no tokens")
        } else {
            Figure::of(usd / tokens as f64 * 1e6)
        }
    };
    let run_cost = w.report.and_then(|r| r.cost.as_ref());
    let absent = |f: &mut Figures, m: &mut Measurement, why: &str| {
        f.usd_per_m_input_tokens = Figure::absent(why);
        f.usd_per_m_output_tokens = Figure::absent(why);
        m.cost = format!("— {why}");
    };
    if let Some(price) = opts.usd_per_gpu_hour {
        let gpus = run_cost
            .map(|c| c.num_gpus)
            .unwrap_or(w.gpus.unwrap_or(1).max(1) as f64);
        // With a reason for no split, a split stored in the file (by an older infermeter) is not
        // trusted either.
        let split = w
            .report
            .and_then(|r| r.time_split)
            .map(|t| (t.prefill_s, t.decode_s))
            .or(w.fallback_split)
            .filter(|_| w.no_split_reason.is_none());
        let Some((prefill_s, decode_s)) = split else {
            let why = w
                .no_split_reason
                .as_deref()
                .unwrap_or("no prefill/decode time split in this file");
            absent(f, m, why);
            return;
        };
        let usd_per_s = price * gpus / 3600.0;
        f.usd_per_m_input_tokens = per_m(usd_per_s * prefill_s, w.input_tokens);
        f.usd_per_m_output_tokens = per_m(usd_per_s * decode_s, w.output_tokens);
        m.cost = format!(
            "report price ${}/GPU-hour × {} {}; prefill time ÷ input tokens, decode time ÷ output tokens",
            number(price),
            number(gpus),
            match (w.gpus, run_cost) {
                (_, Some(_)) => "GPU(s) (the run's count)",
                (Some(0), None) => "(the host: no GPU)",
                (Some(_), None) => "GPU(s)",
                (None, None) => "(the server's GPUs are unknown: priced per server-hour)",
            }
        );
        return;
    }
    match (run_cost, &w.no_split_reason) {
        (Some(_), Some(why)) => absent(f, m, why),
        (Some(c), None) => {
            f.usd_per_m_input_tokens = Figure::or(c.usd_per_1m_input_tokens, "no input tokens");
            f.usd_per_m_output_tokens = Figure::or(c.usd_per_1m_output_tokens, "no output tokens");
            m.cost = format!(
                "run price ${}/GPU-hour × {} GPU(s); prefill time ÷ input tokens, decode time ÷ output tokens",
                number(c.usd_per_gpu_hour),
                number(c.num_gpus)
            );
        }
        (None, _) => absent(
            f,
            m,
            "no price given (run --gpu-price or report --usd-per-gpu-hour)",
        ),
    }
}

/// Prefill/decode spans over `[t0, t1]`, times relative to `t0`: the axis cut into
/// [`SHADE_BUCKETS`] buckets, each labelled by the busy time it holds (split by each segment's
/// prefill fraction), idle buckets left out, equal neighbours merged.
pub fn shade(segments: &[WorkSegment], t0: f64, t1: f64) -> Vec<Span> {
    // An empty or reversed (or NaN) axis has nothing to shade.
    if t1.partial_cmp(&t0) != Some(std::cmp::Ordering::Greater) {
        return Vec::new();
    }
    let n = SHADE_BUCKETS;
    let w = (t1 - t0) / n as f64;
    let mut acc = vec![(0.0f64, 0.0f64); n];
    for s in segments {
        let f = s.prefill_fraction;
        let (a, b) = (s.start_s - t0, s.end_s - t0);
        let first = ((a / w).floor().max(0.0) as usize).min(n - 1);
        let last = ((b / w).floor().max(0.0) as usize).min(n - 1);
        for (i, slot) in acc.iter_mut().enumerate().take(last + 1).skip(first) {
            let lo = i as f64 * w;
            let overlap = (b.min(lo + w) - a.max(lo)).max(0.0);
            slot.0 += overlap * f;
            slot.1 += overlap * (1.0 - f);
        }
    }
    let mut spans: Vec<Span> = Vec::new();
    for (i, &(p, d)) in acc.iter().enumerate() {
        // Rounding at bucket edges leaves slivers (~1e-16 of a bucket) that are not busy time.
        if p + d <= w * 1e-9 {
            continue;
        }
        let label = if p >= d { "prefill" } else { "decode" };
        let (lo, hi) = (i as f64 * w, (i + 1) as f64 * w);
        match spans.last_mut() {
            Some(s) if s.label == label && (s.end - lo).abs() < w * 1e-6 => s.end = hi,
            _ => spans.push(Span {
                start: lo,
                end: hi,
                label: label.into(),
            }),
        }
    }
    spans
}

/// Power per device and memory (GPU `memory_used`, else host RSS) over `[a, b]` of the timeline,
/// times relative to `t0`, with `spans` shaded; `None` without such channels.
pub fn timeline_plot(
    label: &str,
    tl: &Timeline,
    (a, b): (f64, f64),
    t0: f64,
    spans: Vec<Span>,
) -> Option<Plot> {
    let idx: Vec<usize> = (0..tl.len())
        .filter(|&k| tl.t_end_s[k] >= a && tl.t_start_s[k] <= b)
        .collect();
    let curve = |c: &TimelineChannel, scale: f64| Series {
        name: c.name.clone(),
        points: idx
            .iter()
            .map(|&k| {
                let t = 0.5 * (tl.t_start_s[k] + tl.t_end_s[k]) - t0;
                let v = c
                    .mean
                    .get(k)
                    .copied()
                    .flatten()
                    .map_or(f64::NAN, |v| v * scale);
                (t, v)
            })
            .collect(),
        markers: false,
    };
    let has_values = |s: &Series| s.points.iter().any(|p| p.1.is_finite());
    let power_q = [
        Quantity::PowerInstant,
        Quantity::PowerUsage,
        Quantity::Power,
        Quantity::PowerAverage,
    ];
    let mut power: Vec<Series> = Vec::new();
    for dev in tl.devices() {
        // One power curve per device: its preferred power channel.
        if let Some(c) = power_q.iter().find_map(|q| tl.channel(&dev, *q)) {
            let s = curve(c, 1.0);
            if has_values(&s) {
                power.push(s);
            }
        }
    }
    let gpu_mem: Vec<&TimelineChannel> = tl
        .channels
        .iter()
        .filter(|c| c.spec.device.starts_with("gpu") && c.spec.quantity == Quantity::MemoryUsed)
        .collect();
    let mem_channels = if gpu_mem.is_empty() {
        tl.channels
            .iter()
            .filter(|c| c.spec.quantity == Quantity::ProcessRss)
            .collect()
    } else {
        gpu_mem
    };
    // GiB, or MiB when every value is under 1 GiB.
    let peak = mem_channels
        .iter()
        .flat_map(|c| c.max.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let (scale, unit) = if peak < (1u64 << 30) as f64 {
        (1.0 / (1u64 << 20) as f64, "MiB")
    } else {
        (1.0 / (1u64 << 30) as f64, "GiB")
    };
    let memory: Vec<Series> = mem_channels
        .iter()
        .map(|c| curve(c, scale))
        .filter(has_values)
        .collect();
    let mut panels = Vec::new();
    let mut what = Vec::new();
    if !power.is_empty() {
        panels.push(Panel {
            y: "power (W)".into(),
            series: power,
        });
        what.push("power per device");
    }
    if !memory.is_empty() {
        let host = memory.iter().all(|s| s.name.starts_with("host"));
        panels.push(Panel {
            y: format!("{} ({unit})", if host { "host RSS" } else { "GPU memory" }),
            series: memory,
        });
        what.push(if host {
            "this process's resident memory (no GPU measured)"
        } else {
            "GPU memory in use"
        });
    }
    if panels.is_empty() {
        return None;
    }
    Some(Plot {
        id: format!("telemetry-{label}"),
        title: format!("Power and memory: {label}"),
        caption: format!(
            "{label}: {} over the measured phases or steps (means of the telemetry timeline's \
             points, sampled every {}); shading: time mostly in prefill (orange) or decode (blue).",
            what.join(" and "),
            duration(tl.interval_s)
        ),
        data: PlotData::Timeline {
            x: "time since the first measured step (s)".into(),
            panels,
            spans,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start_s: f64, end_s: f64, prefill_fraction: f64) -> WorkSegment {
        WorkSegment {
            start_s,
            end_s,
            prefill_fraction,
        }
    }

    #[test]
    fn shading_merges_and_labels_by_majority() {
        let s = [seg(1.0, 2.0, 1.0), seg(2.0, 4.0, 0.0), seg(4.0, 5.0, 0.25)];
        let spans = shade(&s, 1.0, 5.0);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].label, "prefill");
        assert!(spans[0].start.abs() < 1e-9 && (spans[0].end - 1.0).abs() < 1e-9);
        assert_eq!(spans[1].label, "decode");
        assert!((spans[1].end - 4.0).abs() < 1e-9);
        assert!(shade(&s, 1.0, 1.0).is_empty());
    }

    #[test]
    fn idle_time_is_not_shaded() {
        let spans = shade(&[seg(0.0, 1.0, 0.0), seg(3.0, 4.0, 0.0)], 0.0, 4.0);
        assert_eq!(spans.len(), 2);
        assert!((spans[0].end - 1.0).abs() < 1e-9 && (spans[1].start - 3.0).abs() < 1e-9);
    }
}
