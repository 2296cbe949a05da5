//! One module per kind of results file: each turns its file into a [`Part`] of the report (a
//! source description with its match keys, rows of the side-by-side table, its own tables and
//! plots). Helpers shared by the kinds live here.

pub mod kernels;
pub mod load;
pub mod run;
pub mod telemetry;

use serde_json::{json, Value};

use super::build::Options;
use super::model::{Figure, Figures, Measurement, Samples};
use crate::metrics::{RequestRecord, RunSummary};
use crate::report::results::Hardware;

/// What a kind's module gets besides its file.
pub struct Context<'a> {
    /// Index of the file among the report's sources.
    pub index: usize,
    /// The file's label (unique file stem).
    pub label: &'a str,
    pub path: &'a str,
    pub opts: &'a Options,
}

/// Why energy, power and GPU memory are absent from a file without telemetry.
pub const NO_TELEMETRY: &str = "no telemetry in this file";

/// A phase's or step's records and summary; an interrupted one has no stored summary, so it is
/// computed from the records it kept, with the run's SLO (goodput) and steady-state concurrency,
/// and a note says so (`what`: "phase" or "step").
/// The `--slo` a run or load file's stored command config holds, for summaries recomputed from
/// its records (an interrupted phase's or step's); `None` without one.
pub fn config_slo(config: &serde_json::Value) -> Option<crate::metrics::Slo> {
    config.get("slo")?.as_str()?.parse().ok()
}

pub fn summary_or_recomputed(
    stored: Option<&RunSummary>,
    records: &[RequestRecord],
    slo: Option<&crate::metrics::Slo>,
    concurrency: Option<usize>,
    what: &str,
    label: &str,
    notes: &mut Vec<String>,
) -> RunSummary {
    match stored {
        Some(s) => s.clone(),
        None => {
            notes.push(format!(
                "{label}: the {what} has no summary (interrupted); it was computed from its {} recorded requests.",
                records.len()
            ));
            crate::metrics::summarize(records, slo, concurrency)
        }
    }
}

/// The latency, throughput and goodput figures of a summary; energy, power, memory and cost absent
/// (the kind fills them when its file has them). With a report SLO, goodput is recomputed from
/// `records` with it.
pub fn request_figures(summary: &RunSummary, records: &[RequestRecord], opts: &Options) -> Figures {
    let none_ok = summary.completed == 0;
    let rate = |v: f64| {
        if none_ok {
            Figure::absent("no successful request")
        } else {
            Figure::of(v)
        }
    };
    let t = &summary.throughput;
    let l = &summary.latency;
    let pick = |s: &Option<crate::metrics::Summary>,
                p: fn(&crate::metrics::Summary) -> f64,
                why| {
        match s {
            Some(s) => Figure::of(p(s)),
            None if none_ok => Figure::absent("no successful request"),
            None => Figure::absent(why),
        }
    };
    let goodput = match (&opts.slo, summary.goodput_requests_per_s) {
        (Some(slo), _) => Figure::or(
            crate::metrics::summarize(records, Some(slo), None).goodput_requests_per_s,
            "no SLO",
        ),
        (None, Some(g)) => Figure::of(g),
        (None, None) => Figure::absent("no SLO given (report --slo)"),
    };
    let telemetry = Figure::absent(NO_TELEMETRY);
    let ok = || records.iter().filter(|r| r.is_ok());
    let no_tpot = if ok().any(|r| r.output_tokens >= 2) {
        "no per-token timing observed (single-chunk responses: not streamed)"
    } else {
        "no request of 2+ output tokens"
    };
    let no_itl = if ok().any(|r| r.output_tokens >= 2) {
        "no request of 2+ chunks (not streamed)"
    } else {
        "no request of 2+ chunks"
    };
    Figures {
        requests_per_s: rate(t.requests_per_s),
        input_tokens_per_s: rate(t.input_tokens_per_s),
        output_tokens_per_s: rate(t.output_tokens_per_s),
        ttft_p50_s: pick(&l.ttft, |s| s.p50, "no content"),
        ttft_p99_s: pick(&l.ttft, |s| s.p99, "no content"),
        tpot_p50_s: pick(&l.tpot, |s| s.p50, no_tpot),
        tpot_p99_s: pick(&l.tpot, |s| s.p99, no_tpot),
        itl_p50_s: pick(&l.itl, |s| s.p50, no_itl),
        itl_p99_s: pick(&l.itl, |s| s.p99, no_itl),
        e2el_p50_s: pick(&l.e2el, |s| s.p50, "no content"),
        e2el_p99_s: pick(&l.e2el, |s| s.p99, "no content"),
        goodput_requests_per_s: goodput,
        joules_per_output_token: telemetry.clone(),
        tokens_per_joule: telemetry.clone(),
        steady_tokens_per_joule: telemetry.clone(),
        avg_power_w: telemetry.clone(),
        peak_power_w: telemetry.clone(),
        peak_gpu_memory_bytes: telemetry,
        usd_per_m_input_tokens: Figure::absent("no price given (report --usd-per-gpu-hour)"),
        usd_per_m_output_tokens: Figure::absent("no price given (report --usd-per-gpu-hour)"),
    }
}

/// The throughput window and goodput SLO of a summary, in words.
pub fn window_text(summary: &RunSummary, opts: &Options) -> String {
    use crate::report::format::duration;
    let mut w = format!(
        "first send → last end of successful requests ({})",
        duration(summary.throughput.duration_s)
    );
    if let Some(s) = &summary.steady_state {
        w.push_str(&format!("; steady state {}", duration(s.duration_s)));
    }
    match (&opts.slo, &summary.slo) {
        (Some(slo), _) => w.push_str(&format!("; goodput SLO {slo} (report)")),
        (None, Some(slo)) => w.push_str(&format!("; goodput SLO {slo} (run)")),
        _ => {}
    }
    w
}

/// Per-request data of the successful requests, for plots.
pub fn samples(records: &[RequestRecord]) -> Samples {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.is_ok()).collect();
    Samples {
        ttft_s: ok.iter().filter_map(|r| r.ttft()).collect(),
        e2el_s: ok.iter().filter_map(|r| r.e2el()).collect(),
        itl_s: ok.iter().flat_map(|r| r.itls()).collect(),
        ..Samples::default()
    }
}

/// Client timing in words: where times come from and how late sends were (`client_queue` p99).
pub fn timing_text(clock: &str, summary: &RunSummary) -> String {
    match &summary.latency.client_queue {
        Some(q) => format!(
            "{clock}; send lateness (client_queue) p99 {}, max {}",
            crate::report::format::duration(q.p99),
            crate::report::format::duration(q.max)
        ),
        None => format!("{clock}; no successful request to time"),
    }
}

/// The GPUs' names, or the whole entries where they carry no name.
fn gpu_names(gpus: &[Value]) -> Vec<Value> {
    gpus.iter()
        .map(|g| g.get("name").cloned().unwrap_or_else(|| g.clone()))
        .collect()
}

/// What the hardware comparison looks at.
pub fn hardware_key(h: &Hardware) -> Value {
    json!({
        "cpu_model": h.host.cpu_model,
        "logical_cpus": h.host.logical_cpus,
        "arch": h.host.arch,
        "gpus": gpu_names(&h.gpus),
    })
}

/// The hardware in words: the GPUs, else the host CPU.
pub fn hardware_text(h: &Hardware) -> String {
    let host = format!(
        "{} ({} logical CPUs, {} threads, {})",
        h.host.cpu_model.as_deref().unwrap_or("unknown CPU"),
        h.host.logical_cpus,
        h.host.worker_threads,
        h.host.arch
    );
    let names: Vec<String> = gpu_names(&h.gpus)
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))
        .collect();
    if names.is_empty() {
        format!("{host}; no GPU")
    } else {
        format!("{} × {}; host {host}", names.len(), names.join(", "))
    }
}

/// `k=v` pairs of a JSON object, without `skip` keys and nulls ("batch_size=8 input_len=64").
pub fn params_text(params: &Value, skip: &[&str]) -> String {
    match params.as_object() {
        Some(m) => m
            .iter()
            .filter(|(k, v)| !skip.contains(&k.as_str()) && !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => params.to_string(),
    }
}

/// A number with about 4 significant digits, for prose.
pub fn sig(v: f64) -> String {
    super::format::number(v)
}

/// An empty measurement (filled by the kind).
pub fn measurement(timing: String, window: String) -> Measurement {
    Measurement {
        timing,
        window,
        energy: format!("— {NO_TELEMETRY}"),
        cost: "— no price given (report --usd-per-gpu-hour)".into(),
    }
}
