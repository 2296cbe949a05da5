//! `kind: "load"` — the load generator against an HTTP server: one row per step (a plain run's one
//! step, or a sweep's probe and rates), the client's measured timing error in the measurement notes,
//! and a table of the steps (offered rate, saturation and why, errors, where token counts came from).

use serde_json::{json, Value};

use super::telemetry::{self, Window};
use super::{
    hardware_key, hardware_text, measurement, params_text, request_figures, samples, Context,
};
use crate::metrics::energy::segments_from_requests;
use crate::metrics::RequestRecord;
use crate::report::compare::fingerprint;
use crate::report::format::{duration, number};
use crate::report::load_results::{LoadResults, LoadStep, TimingCheck};
use crate::report::model::{MatchKeys, Part, Row, Source, Table};

pub fn part(ctx: &Context, r: &LoadResults) -> Part {
    let mut notes = Vec::new();
    if !r.complete {
        notes.push(format!(
            "{}: the load run did not complete; the report covers the steps it recorded.",
            ctx.label
        ));
    }
    let served = r
        .target
        .server_model
        .clone()
        .or_else(|| r.target.requested_model.clone())
        .or_else(|| r.target.listed_models.first().cloned());
    let framework = format!(
        "HTTP server at {} ({}{})",
        r.target.url,
        r.target.endpoint,
        if r.target.streaming {
            ", streaming"
        } else {
            ", not streaming"
        }
    );
    let clock = client_clock(&r.client_timing);
    let steps: Vec<&LoadStep> = r
        .steps
        .iter()
        .filter(|s| !s.name.starts_with("calibrate"))
        .collect();
    if steps.is_empty() {
        notes.push(format!("{}: no measured step.", ctx.label));
    }
    if !r.target.streaming {
        notes.push(format!(
            "{}: not streamed (--no-stream): TTFT is the time to the whole response (equal to \
             E2EL); TPOT and ITL are not observed, and without a first-token time there is no \
             prefill/decode split ($/1M input and output tokens, decode J/out tok absent). A TPOT \
             SLO is met by no request of 2+ tokens (it cannot be verified).",
            ctx.label
        ));
    }

    // The run's own SLO, for summaries recomputed from the records (an interrupted step's).
    let run_slo = super::config_slo(&r.config);

    let mut rows = Vec::new();
    let mut step_rows = Vec::new();
    for st in &steps {
        let records: Vec<RequestRecord> = st.requests.iter().map(|q| q.record.clone()).collect();
        // The slots whose all-busy time is the steady state, as the load command's
        // `StepPlan::steady_concurrency`: the users of a closed loop, the cap of an open one.
        let concurrency = st.params.concurrency.or(st.params.max_concurrency);
        let mut summary = super::summary_or_recomputed(
            st.summary.as_ref(),
            &records,
            run_slo.as_ref(),
            concurrency,
            "step",
            &format!("{} · {}", ctx.label, st.name),
            &mut notes,
        );
        if !r.target.streaming && summary.latency.tpot.is_some() {
            // Written by an infermeter that took a single-chunk response's TPOT as 0.
            notes.push(format!(
                "{} · {}: the stored summary has a TPOT for non-streamed responses (an older \
                 infermeter took it as 0); latencies and goodput were recomputed from the records.",
                ctx.label, st.name
            ));
            summary = crate::metrics::summarize(&records, summary.slo.as_ref(), concurrency);
        }
        let mut figures = request_figures(&summary, &records, ctx.opts);
        let mut timing = super::timing_text(&clock, &summary);
        if !r.target.streaming {
            timing.push_str(NOT_STREAMED_TIMING);
        }
        let mut m = measurement(timing, super::window_text(&summary, ctx.opts));
        // The successful requests' busy time, as the load command's step energy (failed requests'
        // time is not priced). Not streamed, the first token is not observed: no split.
        let ok: Vec<RequestRecord> = records.iter().filter(|q| q.is_ok()).cloned().collect();
        let segments = if r.target.streaming {
            segments_from_requests(&ok)
        } else {
            Vec::new()
        };
        let split = segments.iter().fold((0.0, 0.0), |(p, d), s| {
            let t = s.end_s - s.start_s;
            (
                p + t * s.prefill_fraction,
                d + t * (1.0 - s.prefill_fraction),
            )
        });
        let window = Window {
            span: st
                .energy
                .as_ref()
                .map_or((st.started_s, st.ended_s.unwrap_or(st.started_s)), |e| {
                    (e.start_s, e.end_s)
                }),
            report: st.energy.as_ref(),
            input_tokens: summary.total_input_tokens,
            output_tokens: summary.total_output_tokens,
            fallback_split: (!segments.is_empty()).then_some(split),
            no_split_reason: (!r.target.streaming).then(|| NOT_STREAMED_SPLIT.to_string()),
            gpus: None,
        };
        telemetry::fill(
            &mut figures,
            &mut m,
            r.telemetry.as_ref(),
            &window,
            ctx.opts,
        );
        let mut s = samples(&records);
        s.rate = st.params.rate.filter(|_| st.params.mode == "open");
        s.series = ctx.label.to_string();
        let saturated = st.saturated == Some(true);
        if saturated {
            notes.push(format!(
                "{} · {}: saturated the server ({}).",
                ctx.label,
                st.name,
                st.saturation_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            ));
        }
        let chunk_counted = st.chunk_counted_outputs();
        let label = format!(
            "{} · {}{}{}",
            ctx.label,
            st.name,
            if saturated { " (saturated)" } else { "" },
            if chunk_counted.is_some() {
                CHUNKS_MARK
            } else {
                ""
            }
        );
        if let Some(n) = chunk_counted {
            notes.push(format!(
                "{label}: output tokens of {n} of {} successful requests counted as stream chunks \
                 (no usage from the server, no --tokenizer): its out tok/s, TPOT, decode J/out tok \
                 and $/1M out tok are per chunk, and a chunk may carry several tokens.",
                summary.completed
            ));
        }
        let errors: Vec<String> = st.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let sources = st
            .tokens
            .as_ref()
            .map(|t| {
                t.output_sources
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        step_rows.push(vec![
            label.clone(),
            st.params.mode.clone(),
            st.params.rate.map_or("—".into(), number),
            st.params.concurrency.map_or("—".into(), |c| c.to_string()),
            st.sent.to_string(),
            summary.completed.to_string(),
            summary.failed.to_string(),
            match st.saturated {
                Some(true) => format!(
                    "yes: {}",
                    st.saturation_reason
                        .as_deref()
                        .unwrap_or("no reason recorded")
                ),
                Some(false) => "no".into(),
                None => "—".into(),
            },
            if errors.is_empty() {
                "none".into()
            } else {
                errors.join(", ")
            },
            sources,
        ]);
        let mut params = serde_json::to_value(&st.params).unwrap_or(Value::Null);
        if let Some(o) = params.as_object_mut() {
            o.remove("warmup");
        }
        rows.push(Row {
            source: ctx.index,
            label,
            phase: st.name.clone(),
            framework: framework.clone(),
            match_key: params_text(&params, &[]),
            workload_group: String::new(),
            completed: summary.completed,
            failed: summary.failed,
            figures,
            measurement: m,
            samples: s,
        });
    }

    let mut caption = "One row per executor run: a plain run has one step; a sweep has its \
                       closed-loop probe, then open-loop steps at rising rates."
        .to_string();
    if let Some(sw) = &r.sweep {
        caption.push_str(&format!(
            " Sweep: probe of {} virtual users reached {} req/s; rates {}; {}. Criterion: {}",
            sw.probe_concurrency,
            number(sw.max_throughput_rps),
            sw.rates
                .iter()
                .map(|x| number(*x))
                .collect::<Vec<_>>()
                .join(", "),
            match sw.saturated_at_rps {
                Some(x) => format!("saturated at {} req/s", number(x)),
                None => "no rate saturated".into(),
            },
            sw.criterion
        ));
    }
    let tables = vec![Table {
        id: "load-steps".into(),
        title: "Load generator: steps".into(),
        caption,
        header: [
            "step",
            "mode",
            "offered req/s",
            "virtual users",
            "sent",
            "ok",
            "failed",
            "saturated",
            "errors",
            "output tokens from",
        ]
        .map(String::from)
        .to_vec(),
        rows: step_rows,
    }];

    // Power and memory over the steps, shaded by the requests' prefill (awaiting the first token)
    // and decode (streaming) share of each instant.
    let mut plots = Vec::new();
    let timeline = r.telemetry.as_ref().and_then(|t| t.timeline.as_ref());
    if let (Some(tl), Some(first), Some(last)) = (timeline, steps.first(), steps.last()) {
        let t0 = first.started_s;
        let t1 = last
            .ended_s
            .unwrap_or_else(|| tl.t_end_s.last().copied().unwrap_or(t0));
        let records: Vec<RequestRecord> = steps
            .iter()
            .flat_map(|s| &s.requests)
            .map(|q| q.record.clone())
            .filter(|q| q.is_ok())
            .collect();
        let spans = if r.target.streaming {
            telemetry::shade(&segments_from_requests(&records), t0, t1)
        } else {
            Vec::new()
        };
        plots.extend(telemetry::timeline_plot(ctx.label, tl, (t0, t1), t0, spans));
    }

    let step_params: Vec<Value> = steps
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(&s.params).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.remove("warmup");
            }
            v
        })
        .collect();
    let prompt_lengths = fingerprint(
        steps
            .iter()
            .flat_map(|s| &s.requests)
            .map(|q| q.record.prompt_tokens as u64),
    );
    let source = Source {
        path: ctx.path.to_string(),
        label: ctx.label.to_string(),
        kind: r.kind.clone(),
        started_at: r.started_at.clone(),
        complete: r.complete,
        tool: format!("{} {} ({})", r.tool.name, r.tool.version, r.tool.git_commit),
        command: r.command.join(" "),
        model: served
            .clone()
            .unwrap_or_else(|| "unknown (the server did not say)".into()),
        framework,
        hardware: format!("client: {}", hardware_text(&r.hardware)),
        workload: format!(
            "{}; {} steps",
            params_text(&r.workload, &["sessions"]),
            steps.len()
        ),
        matched_on: MatchKeys {
            workload: json!({
                "workload": r.workload,
                "steps": step_params,
                "requests": { "prompt_lengths": { "fingerprint": prompt_lengths } },
            }),
            model: json!({ "served_model": served }),
            hardware: hardware_key(&r.hardware),
            request_lengths: prompt_lengths.clone(),
            model_name: served.clone().unwrap_or_default(),
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

/// Marks the label of a step whose output tokens are (partly) stream-chunk counts.
const CHUNKS_MARK: &str = " [tokens = chunks]";

/// Appended to the timing text of a non-streamed step.
const NOT_STREAMED_TIMING: &str =
    "; not streamed: TTFT = time to the whole response (= E2EL), no TPOT or ITL";

/// Why a non-streamed step has no prefill/decode split.
const NOT_STREAMED_SPLIT: &str =
    "not streamed: the first token is not observed, so time is not split into prefill and decode";

/// Where the times come from, with the client's own timing error against the in-process mock.
fn client_clock(checks: &[TimingCheck]) -> String {
    let Some(c) = checks.last() else {
        return "HTTP client (timing error not measured: --no-self-check)".into();
    };
    let p99 =
        |s: &Option<crate::metrics::Summary>| s.as_ref().map_or("—".into(), |s| duration(s.p99));
    let within = |b: Option<bool>| match b {
        Some(true) => "",
        Some(false) => " (over bound)",
        None => "",
    };
    format!(
        "HTTP client; timing error vs the in-process mock ({}): dispatch lag p99 {}{}, TTFT error \
         p99 {}{}, ITL error p99 {}{} (bound {})",
        c.name,
        p99(&c.dispatch_lag),
        within(c.dispatch_within_bound),
        p99(&c.ttft_error),
        within(c.ttft_within_bound),
        p99(&c.itl_error),
        within(c.itl_within_bound),
        duration(c.bound_s)
    )
}
