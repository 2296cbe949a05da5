//! `kind: "run"` — the offline benchmark of the reference engine: one row per measured phase (grid
//! cells and repeats, the stream, the workload), an engine table from the step totals, and a step
//! timeline (batch size and KV blocks in use, prefill/decode shaded).

use serde_json::{json, Value};

use super::telemetry::{self, shade};
use super::{
    hardware_key, hardware_text, measurement, params_text, request_figures, samples, sig,
    timing_text, window_text, Context,
};
use crate::engine::StepRecord;
use crate::metrics::energy::WorkSegment;
use crate::metrics::RequestRecord;
use crate::report::compare::fingerprint;
use crate::report::model::{MatchKeys, Panel, Part, Plot, PlotData, Row, Series, Source, Table};
use crate::report::results::{EngineSummary, Phase, RunResults};

/// Most points a step timeline keeps (longer runs are merged).
const TIMELINE_POINTS: usize = 1500;

pub fn part(ctx: &Context, r: &RunResults) -> Part {
    let mut notes = Vec::new();
    if !r.complete {
        notes.push(format!(
            "{}: the run did not complete; the report covers the phases and requests it recorded.",
            ctx.label
        ));
    }
    if let Some(w) = r.engine.kv_window {
        notes.push(format!(
            "{}: the model slides on every layer, and the engine released the KV blocks that left \
             its {w}-token window: KV blocks in use count the window's blocks, not whole \
             sequences (`run --keep-all-kv-blocks` measures the full footprint).",
            ctx.label
        ));
    }
    if r.engine.kv_groups.len() > 1 {
        let sliding = r
            .engine
            .kv_groups
            .iter()
            .filter(|g| g.window.is_some())
            .count();
        let mut windows: Vec<usize> = r.engine.kv_groups.iter().filter_map(|g| g.window).collect();
        windows.sort_unstable();
        windows.dedup();
        let slots = r
            .engine
            .kv_groups
            .iter()
            .map(|g| g.layers.len())
            .max()
            .unwrap_or(0);
        notes.push(format!(
            "{}: a hybrid model: its layers shared {} KV block tables (blocks of {slots} layers), \
             and the {} sliding ones released the blocks that left their window ({} tokens): KV \
             blocks in use count the full layers' whole sequences and the sliding layers' windows \
             (`run --keep-all-kv-blocks` measures the footprint with one table for every layer).",
            ctx.label,
            r.engine.kv_groups.len(),
            sliding,
            windows
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let framework = format!("infermeter engine ({}, {})", r.model.backend, r.model.dtype);
    let mode = r
        .workload
        .get("mode")
        .and_then(Value::as_str)
        .unwrap_or("run")
        .to_string();
    let measured: Vec<&Phase> = r.phases.iter().filter(|p| !p.warmup).collect();
    if measured.is_empty() {
        notes.push(format!(
            "{}: no measured phase (warmups only, or none).",
            ctx.label
        ));
    }

    // The run's own SLO, for summaries recomputed from the records (an interrupted phase's).
    let run_slo = super::config_slo(&r.config);

    let mut rows = Vec::new();
    let mut engine_rows = Vec::new();
    for p in &measured {
        let records: Vec<RequestRecord> = p.requests.iter().map(|q| q.record.clone()).collect();
        // The steady state's slots, as `run` uses them: a grid cell's batch, else max_num_seqs.
        let concurrency = p
            .params
            .get("batch_size")
            .and_then(Value::as_u64)
            .map(|b| b as usize)
            .unwrap_or(r.engine.config.max_num_seqs);
        let summary = super::summary_or_recomputed(
            p.summary.as_ref(),
            &records,
            run_slo.as_ref(),
            Some(concurrency),
            "phase",
            &format!("{} · {}", ctx.label, p.name),
            &mut notes,
        );
        let engine = p
            .engine_summary
            .clone()
            .unwrap_or_else(|| EngineSummary::of(&p.steps, &p.requests));
        let mut figures = request_figures(&summary, &records, ctx.opts);
        let mut m = measurement(
            timing_text(
                "in-process: engine events on the run's monotonic clock",
                &summary,
            ),
            window_text(&summary, ctx.opts),
        );
        let end = p
            .ended_s
            .or_else(|| p.steps.last().map(|st| st.end_s))
            .unwrap_or(p.started_s);
        let window = telemetry::Window {
            span: (p.started_s, end),
            report: p.energy.as_ref(),
            input_tokens: summary.total_input_tokens,
            output_tokens: summary.total_output_tokens,
            fallback_split: Some((engine.prefill_time_s, engine.decode_time_s)),
            no_split_reason: None,
            gpus: Some(r.hardware.gpus.len()),
        };
        telemetry::fill(
            &mut figures,
            &mut m,
            r.telemetry.as_ref(),
            &window,
            ctx.opts,
        );
        let mut s = samples(&records);
        s.rate = p.params.get("rate").and_then(Value::as_f64);
        s.batch_size = p.params.get("batch_size").and_then(Value::as_f64);
        s.series = if mode == "grid" {
            format!(
                "{} {}",
                ctx.label,
                params_text(&p.params, &["batch_size", "repeat"])
            )
        } else {
            format!("{framework} · {}", r.model.source)
        };
        let label = format!("{} · {}", ctx.label, p.name);
        engine_rows.push(vec![
            label.clone(),
            engine.steps.to_string(),
            sig(engine.prefill_tokens_per_s),
            sig(engine.decode_tokens_per_s),
            sig(engine.prefill_time_s),
            sig(engine.decode_time_s),
            sig(engine.mean_batch_size),
            engine.max_batch_size.to_string(),
            engine.preemptions.to_string(),
            format!(
                "{} / {}",
                engine.peak_kv_blocks_used, r.engine.config.num_blocks
            ),
            // absent when no prompt token was looked up (nothing admitted)
            engine
                .prefix_hit_rate
                .map_or("—".into(), |r| format!("{}%", sig(r * 100.0))),
        ]);
        rows.push(Row {
            source: ctx.index,
            label,
            phase: p.name.clone(),
            framework: framework.clone(),
            match_key: params_text(&p.params, &["repeat"]),
            workload_group: String::new(),
            completed: summary.completed,
            failed: summary.failed,
            figures,
            measurement: m,
            samples: s,
        });
    }

    let tables = vec![Table {
        id: "engine".into(),
        title: "Reference engine: step totals".into(),
        caption: "Step time is split between prefill and decode in proportion to each step's \
                  prefill and decode tokens; tokens/s are over that attributed time. Prefix \
                  hits: prompt tokens served from the prefix cache ÷ prompt tokens of admitted \
                  requests, — when none was admitted."
            .into(),
        header: [
            "run",
            "steps",
            "prefill tok/s",
            "decode tok/s",
            "prefill s",
            "decode s",
            "mean batch",
            "max batch",
            "preemptions",
            "peak KV blocks",
            "prefix hits",
        ]
        .map(String::from)
        .to_vec(),
        rows: engine_rows,
    }];

    let steps: Vec<&StepRecord> = measured.iter().flat_map(|p| &p.steps).collect();
    let mut plots: Vec<Plot> = step_timeline(ctx.label, &steps).into_iter().collect();
    let timeline = r.telemetry.as_ref().and_then(|t| t.timeline.as_ref());
    if let (Some(tl), Some(first), Some(last)) = (timeline, measured.first(), measured.last()) {
        let t0 = steps.first().map_or(first.started_s, |s| s.start_s);
        let t1 = last
            .ended_s
            .unwrap_or_else(|| tl.t_end_s.last().copied().unwrap_or(t0));
        let spans = match steps.last() {
            Some(s) if s.end_s > t0 => shade(&segments(&steps), t0, s.end_s),
            _ => Vec::new(),
        };
        plots.extend(telemetry::timeline_plot(
            ctx.label,
            tl,
            (first.started_s, t1),
            t0,
            spans,
        ));
    }

    let mut phase_params: Vec<Value> = Vec::new();
    for p in &measured {
        let mut v = p.params.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("repeat");
        }
        if !phase_params.contains(&v) {
            phase_params.push(v);
        }
    }
    let prompt_lengths = fingerprint(
        measured
            .iter()
            .flat_map(|p| &p.requests)
            .map(|q| q.record.prompt_tokens as u64),
    );
    let mut model_key = json!({
        "config": r.model.config,
        "weights": r.model.weights,
        "dtype": r.model.dtype,
    });
    if r.model.weights == "dummy" {
        model_key["dummy_seed"] = r.config.get("dummy_seed").cloned().unwrap_or(Value::Null);
    }
    let workload_text = {
        let shown: Vec<String> = phase_params
            .iter()
            .take(4)
            .map(|v| params_text(v, &[]))
            .collect();
        let more = phase_params.len().saturating_sub(shown.len());
        format!(
            "{mode}: {}{}; seed {}",
            shown.join(" | "),
            if more > 0 {
                format!(" | and {more} more")
            } else {
                String::new()
            },
            r.workload.get("seed").unwrap_or(&Value::Null)
        )
    };
    let source = Source {
        path: ctx.path.to_string(),
        label: ctx.label.to_string(),
        kind: r.kind.clone(),
        started_at: r.started_at.clone(),
        complete: r.complete,
        tool: format!("{} {} ({})", r.tool.name, r.tool.version, r.tool.git_commit),
        command: r.command.join(" "),
        model: format!(
            "{} ({}, {} parameters, {} weights, {})",
            r.model.source,
            serde_json::to_value(r.model.config.arch)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            crate::report::format::count(r.model.num_parameters as f64),
            r.model.weights,
            r.model.dtype
        ),
        framework,
        hardware: hardware_text(&r.hardware),
        workload: workload_text,
        matched_on: MatchKeys {
            workload: json!({
                "workload": r.workload,
                "phases": phase_params,
                "requests": { "prompt_lengths": { "fingerprint": prompt_lengths } },
            }),
            model: model_key,
            hardware: hardware_key(&r.hardware),
            request_lengths: prompt_lengths.clone(),
            model_name: r.model.source.clone(),
        },
        groups: Default::default(),
    };
    Part {
        source,
        rows,
        tables,
        plots,
        notes,
    }
}

/// Batch size and KV blocks in use over time, with prefill and decode time shaded.
fn step_timeline(label: &str, steps: &[&StepRecord]) -> Option<Plot> {
    let t0 = steps
        .iter()
        .map(|s| s.start_s)
        .fold(f64::INFINITY, f64::min);
    let t1 = steps
        .iter()
        .map(|s| s.end_s)
        .fold(f64::NEG_INFINITY, f64::max);
    if steps.is_empty() || !matches!(t1.partial_cmp(&t0), Some(std::cmp::Ordering::Greater)) {
        return None;
    }
    let spans = shade(&segments(steps), t0, t1);
    let (batch, kv) = step_lines(steps, t0);
    let series = |name: &str, points: Vec<(f64, f64)>| Series {
        name: name.into(),
        points,
        markers: false,
    };
    Some(Plot {
        id: format!("steps-{label}"),
        title: format!("Engine steps: {label}"),
        caption: format!(
            "{label}: sequences in each step's batch and KV-cache blocks in use, over the measured \
             phases' {} steps; shading: time mostly in prefill (orange) or decode (blue) steps, \
             unshaded: idle (no step running).",
            steps.len()
        ),
        data: PlotData::Timeline {
            x: "time since the first measured step (s)".into(),
            panels: vec![
                Panel {
                    y: "batch size".into(),
                    series: vec![series("batch size", batch)],
                },
                Panel {
                    y: "KV blocks used".into(),
                    series: vec![series("KV blocks used", kv)],
                },
            ],
            spans,
        },
    })
}

/// Each step as a work segment split by its prefill fraction (the energy attribution's rule).
fn segments(steps: &[&StepRecord]) -> Vec<WorkSegment> {
    steps
        .iter()
        .map(|s| WorkSegment {
            start_s: s.start_s,
            end_s: s.end_s,
            prefill_fraction: s.prefill_fraction(),
        })
        .collect()
}

type Line = Vec<(f64, f64)>;

/// Batch size and KV blocks as step functions over time (each step's value held from its start
/// to its end), broken (a NaN point) where the engine idled longer than 5 median steps. Runs of
/// more than [`TIMELINE_POINTS`] / 2 steps are merged into groups keeping their largest values.
fn step_lines(steps: &[&StepRecord], t0: f64) -> (Line, Line) {
    let mut durations: Vec<f64> = steps.iter().map(|s| s.duration_s()).collect();
    durations.sort_by(f64::total_cmp);
    let gap = 5.0 * durations.get(durations.len() / 2).copied().unwrap_or(0.0);
    let per = steps.len().div_ceil(TIMELINE_POINTS / 2).max(1);
    let (mut batch, mut kv) = (Vec::new(), Vec::new());
    let mut last_end: Option<f64> = None;
    for group in steps.chunks(per) {
        let start = group[0].start_s - t0;
        let end = group[group.len() - 1].end_s - t0;
        let b = group.iter().map(|s| s.batch_size).max().unwrap_or(0) as f64;
        let k = group.iter().map(|s| s.kv_blocks_used).max().unwrap_or(0) as f64;
        if last_end.is_some_and(|e| start - e > gap) {
            batch.push((start, f64::NAN));
            kv.push((start, f64::NAN));
        }
        batch.extend([(start, b), (end, b)]);
        kv.extend([(start, k), (end, k)]);
        last_end = Some(end);
    }
    (batch, kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(start_s: f64, end_s: f64, prefill: usize, decode: usize) -> StepRecord {
        StepRecord {
            index: 0,
            start_s,
            end_s,
            batch_size: 1,
            prefill_tokens: prefill,
            decode_tokens: decode,
            kv_blocks_used: 1,
            preemptions: 0,
            running: 1,
            waiting: 0,
        }
    }

    #[test]
    fn step_lines_hold_values_and_break_at_idle_gaps() {
        let s = [
            step(1.0, 2.0, 1, 0),
            step(2.0, 3.0, 0, 1),
            step(13.0, 14.0, 0, 1),
        ];
        let refs: Vec<&StepRecord> = s.iter().collect();
        let (batch, _) = step_lines(&refs, 1.0);
        assert_eq!(
            &batch[..4],
            &[(0.0, 1.0), (1.0, 1.0), (1.0, 1.0), (2.0, 1.0)]
        );
        assert!(batch[4].1.is_nan(), "{batch:?}");
        assert_eq!(batch.len(), 7);
    }
}
