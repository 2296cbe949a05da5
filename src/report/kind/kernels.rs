//! `kind: "kernels"` — kernel studies: a table of every op and shape (time, achieved bandwidth and
//! compute, the bound and how close it came to the ceilings) and a roofline chart (achieved GFLOP/s
//! against arithmetic intensity under the measured ceilings and, where known, the spec peak).
//! Kernel rows are not request runs: they add no row to the side-by-side table.

use serde_json::json;

use super::{hardware_key, hardware_text, Context};
use crate::report::format::{duration, number};
use crate::report::kernels_results::KernelsResults;
use crate::report::model::{MatchKeys, Part, Plot, PlotData, Roof, RoofPoint, Source, Table};
use crate::report::results::Hardware;

pub fn part(ctx: &Context, r: &KernelsResults) -> Part {
    let mut notes = Vec::new();
    if !r.complete {
        notes.push(format!(
            "{}: the kernel study did not complete; the report covers the rows it recorded.",
            ctx.label
        ));
    }
    if !r.skipped.is_empty() {
        let shown: Vec<String> = r
            .skipped
            .iter()
            .take(5)
            .map(|s| format!("{} ({})", op_label(&s.op, s.variant.as_deref()), s.reason))
            .collect();
        notes.push(format!(
            "{}: {} cases skipped: {}{}",
            ctx.label,
            r.skipped.len(),
            shown.join("; "),
            if r.skipped.len() > shown.len() {
                "; …"
            } else {
                ""
            }
        ));
    }
    let hardware = Hardware {
        host: r.hardware.host.clone(),
        gpus: r.hardware.gpus.clone(),
    };
    let pct = |v: Option<f64>| v.map_or("—".into(), |x| format!("{}%", number(x)));
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|k| {
            vec![
                ctx.label.to_string(),
                op_label(&k.op, k.variant.as_deref()),
                k.model.clone().unwrap_or_default(),
                super::params_text(&k.shape, &[]),
                duration(k.time_median_s),
                number(k.achieved_gb_s),
                number(k.achieved_gflop_s),
                number(k.arithmetic_intensity),
                serde_json::to_value(k.bound)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                pct(k.pct_of_measured_ceiling),
                pct(k.pct_of_spec_peak),
            ]
        })
        .collect();
    let c = &r.ceilings;
    let spec = match (&r.spec, &r.spec_note) {
        (Some(s), _) => format!(
            "spec peak {}: {} GB/s, {} GFLOP/s ({})",
            s.name,
            number(s.memory_gb_s),
            number(s.compute_gflop_s),
            s.source
        ),
        (None, Some(n)) => format!("no spec peak: {n}"),
        (None, None) => "no spec peak".into(),
    };
    let table = Table {
        id: "kernels".into(),
        title: "Kernel studies".into(),
        caption: format!(
            "{}: {} {} on {}; measured ceilings {} GB/s ({}) and {} GFLOP/s ({}), {}; {}. \
             Times: {}, median of {} runs after {} warmups.",
            ctx.label,
            r.backend,
            r.dtype,
            hardware_text(&hardware),
            number(c.memory_gb_s),
            c.memory_method,
            number(c.compute_gflop_s),
            c.compute_method,
            match (r.backend.as_str(), c.threads) {
                ("cpu", 1) => "1 CPU thread".to_string(),
                ("cpu", n) => format!("{n} CPU threads"),
                // one host thread drives the GPU's stream: the count says nothing about the GPU
                (_, _) => "one host thread driving the stream".to_string(),
            },
            spec,
            r.timing.method,
            r.timing.runs,
            r.timing.warmup_runs
        ),
        header: [
            "file",
            "op",
            "model",
            "shape",
            "median time",
            "GB/s",
            "GFLOP/s",
            "FLOP/byte",
            "bound",
            "% of measured",
            "% of spec",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    };

    let mut roofs = vec![Roof {
        name: format!(
            "measured: {} GB/s, {} GFLOP/s",
            number(c.memory_gb_s),
            number(c.compute_gflop_s)
        ),
        memory_gb_s: c.memory_gb_s,
        compute_gflop_s: c.compute_gflop_s,
    }];
    if let Some(one) = c.memory_gb_s_one_thread {
        roofs.push(Roof {
            name: format!("measured, one thread: {} GB/s", number(one)),
            memory_gb_s: one,
            compute_gflop_s: c.compute_gflop_s,
        });
    }
    if let Some(s) = &r.spec {
        roofs.push(Roof {
            name: format!("spec {}", s.name),
            memory_gb_s: s.memory_gb_s,
            compute_gflop_s: s.compute_gflop_s,
        });
    }
    let points: Vec<RoofPoint> = r
        .rows
        .iter()
        .filter(|k| k.arithmetic_intensity > 0.0 && k.achieved_gflop_s > 0.0)
        .map(|k| RoofPoint {
            series: k.family.clone(),
            name: format!(
                "{} {}",
                op_label(&k.op, k.variant.as_deref()),
                super::params_text(&k.shape, &[])
            ),
            intensity: k.arithmetic_intensity,
            achieved_gflop_s: k.achieved_gflop_s,
        })
        .collect();
    let off = r.rows.len() - points.len();
    if off > 0 {
        notes.push(format!(
            "{}: {off} kernel rows with no FLOPs (pure data movement) are left off the roofline; \
             their bandwidth is in the kernel table.",
            ctx.label
        ));
    }
    let mut plots = Vec::new();
    if !points.is_empty() {
        plots.push(Plot {
            id: format!("roofline-{}", ctx.label),
            title: format!("Roofline: {}", ctx.label),
            caption: format!(
                "{}: each op and shape at its arithmetic intensity and achieved GFLOP/s (log-log), \
                 coloured by op family, under the roofs (bandwidth × intensity, capped by compute); \
                 points near a roof use that resource fully.",
                ctx.label
            ),
            data: PlotData::Roofline { roofs, points },
        });
    }

    let cases: Vec<_> = r
        .rows
        .iter()
        .map(|k| json!([k.op, k.model, k.shape, k.dtype, k.variant]))
        .collect();
    let models: Vec<String> = {
        let mut m: Vec<String> = r.rows.iter().filter_map(|k| k.model.clone()).collect();
        m.sort();
        m.dedup();
        m
    };
    let source = Source {
        path: ctx.path.to_string(),
        label: ctx.label.to_string(),
        kind: r.kind.clone(),
        started_at: r.started_at.clone(),
        complete: r.complete,
        tool: format!("{} {} ({})", r.tool.name, r.tool.version, r.tool.git_commit),
        command: r.command.join(" "),
        model: if models.is_empty() {
            "—".into()
        } else {
            format!("shapes of {}", models.join(", "))
        },
        framework: format!("kernel study ({}, {})", r.backend, r.dtype),
        hardware: hardware_text(&hardware),
        workload: format!("{} cases ({} skipped)", r.rows.len(), r.skipped.len()),
        matched_on: MatchKeys {
            workload: json!({ "cases": cases }),
            model: json!({ "models": models.clone(), "dtype": r.dtype }),
            hardware: hardware_key(&hardware),
            request_lengths: String::new(),
            model_name: models.join(","),
        },
        groups: Default::default(),
    };
    Part {
        source,
        rows: Vec::new(),
        tables: vec![table],
        plots,
        notes,
    }
}

/// The op as the report names it: with its variant where the device has several implementations
/// (`attention_decode [auto]`), so rows of one shape stay apart.
fn op_label(op: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{op} [{v}]"),
        None => op.to_string(),
    }
}
