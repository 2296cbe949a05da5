//! `infermeter report` from results files the tool itself produced (tests/fixtures/results, made by
//! its regenerate.sh): the tables carry the files' numbers, every plot is drawn, mismatched
//! workloads, models and hardware are called out, and the edge cases (a run where every request
//! failed, one request, no telemetry, a sweep with a saturated step, a kernel study, an interrupted
//! run, energy from a telemetry timeline) report what they have and say why the rest is absent.
//! Bad input gets an error naming the file and the field, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use infermeter::metrics::energy::{self, CostParams, EnergyOptions, Work};
use infermeter::report::build::{build, Options};
use infermeter::report::format;
use infermeter::report::model::{Figure, PlotData, Report, Row};
use infermeter::report::output::{self, Format};
use infermeter::report::results::{read_results, EngineSummary, ResultsFile, RunResults};
use infermeter::telemetry::source::Source as _;
use infermeter::telemetry::synthetic::SyntheticSource;
use infermeter::telemetry::{SourceStatus, TelemetrySection, TimelineBuilder};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    repo()
        .join("tests/fixtures/results")
        .join(format!("{name}.json"))
}

fn raw(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn read(name: &str) -> (PathBuf, ResultsFile) {
    let p = fixture(name);
    let f = read_results(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
    (p, f)
}

fn run_file(name: &str) -> RunResults {
    match read(name).1 {
        ResultsFile::Run(r) => *r,
        other => panic!("{name} is a {} file", other.kind()),
    }
}

fn report_of(names: &[&str]) -> Report {
    let files: Vec<_> = names.iter().map(|n| read(n)).collect();
    build(&files, &Options::default())
}

/// `infermeter report` on fixtures into a temporary directory: (dir, report.json, md, html).
fn report_cli(names: &[&str], extra: &[&str]) -> (tempfile::TempDir, Value, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_infermeter"))
        .arg("report")
        .args(names.iter().map(|n| fixture(n)))
        .args(["--format", "md,html,json", "--out"])
        .arg(dir.path())
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let text = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let json: Value = serde_json::from_str(&text("report.json")).unwrap();
    let (md, html) = (text("report.md"), text("report.html"));
    (dir, json, md, html)
}

fn row<'a>(r: &'a Report, label: &str) -> &'a Row {
    r.rows.iter().find(|x| x.label == label).unwrap_or_else(|| {
        panic!(
            "no row {label}: {:?}",
            r.rows.iter().map(|x| &x.label).collect::<Vec<_>>()
        )
    })
}

fn absent(f: &Figure) -> &str {
    assert_eq!(f.value, None, "{f:?}");
    f.absent.as_deref().expect("absent figures say why")
}

/// Every plot of the report is drawn: an SVG file beside report.md and an inline SVG in
/// report.html, each with drawn shapes.
fn assert_plots_drawn(dir: &Path, json: &Value, html: &str) -> Vec<String> {
    let ids: Vec<String> = json["plots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        let svg = std::fs::read_to_string(dir.join("plots").join(format!("{id}.svg")))
            .unwrap_or_else(|e| panic!("plot {id}: {e}"));
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{id}"
        );
        let shapes = ["<path", "<polyline", "<rect", "<circle"]
            .iter()
            .map(|s| svg.matches(s).count())
            .sum::<usize>();
        assert!(shapes > 5, "plot {id} draws {shapes} shapes");
        let at = html
            .find(&format!("id=\"plot-{id}\""))
            .unwrap_or_else(|| panic!("plot {id} not in the html"));
        let figure = &html[at..at + html[at..].find("</figure>").unwrap()];
        assert!(
            figure.contains("<svg") && (figure.contains("<polyline") || figure.contains("<rect")),
            "{id}"
        );
    }
    ids
}

/// `doc` against `schemas/results.schema.json`: every error, with where it is.
fn schema_errors(doc: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/results.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

#[test]
fn fixtures_are_valid_results_files() {
    let dir = repo().join("tests/fixtures/results");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            let errors = schema_errors(&doc);
            assert!(errors.is_empty(), "{}: {errors:#?}", p.display());
            read_results(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 9, "{n} fixtures");
}

#[test]
fn grid_and_stream_tables_carry_the_files_numbers() {
    let (dir, json, md, html) = report_cli(&["grid", "stream"], &[]);
    let report = report_of(&["grid", "stream"]);
    for (file, label) in [("grid", "grid"), ("stream", "stream")] {
        let doc = raw(file);
        for p in doc["phases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["warmup"] == false)
        {
            let name = p["name"].as_str().unwrap();
            let r = row(&report, &format!("{label} · {name}"));
            let s = &p["summary"];
            let t = &s["throughput"];
            let l = &s["latency"];
            let want = [
                (&r.figures.requests_per_s, &t["requests_per_s"]),
                (&r.figures.input_tokens_per_s, &t["input_tokens_per_s"]),
                (&r.figures.output_tokens_per_s, &t["output_tokens_per_s"]),
                (&r.figures.ttft_p50_s, &l["ttft"]["p50"]),
                (&r.figures.ttft_p99_s, &l["ttft"]["p99"]),
                (&r.figures.tpot_p50_s, &l["tpot"]["p50"]),
                (&r.figures.itl_p99_s, &l["itl"]["p99"]),
                (&r.figures.e2el_p50_s, &l["e2el"]["p50"]),
                (&r.figures.e2el_p99_s, &l["e2el"]["p99"]),
            ];
            for (fig, v) in want {
                assert_eq!(fig.value, v.as_f64(), "{label} · {name}");
            }
            assert_eq!(r.completed as u64, s["completed"].as_u64().unwrap());
            // The tables show the same numbers (ms for latencies).
            let ttft_ms = format::number(l["ttft"]["p50"].as_f64().unwrap() * 1e3);
            let tok_s = format::number(t["output_tokens_per_s"].as_f64().unwrap());
            for text in [&md, &html] {
                assert!(
                    text.contains(&ttft_ms) && text.contains(&tok_s),
                    "{label} · {name}: {ttft_ms} {tok_s}"
                );
                assert!(text.contains(name));
            }
        }
    }
    // The report's JSON is the same comparison as data.
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), report.rows.len());
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[0]["figures"]["output_tokens_per_s"]["value"].as_f64(),
        report.rows[0].figures.output_tokens_per_s.value
    );
    assert!(rows[0]["figures"]["joules_per_output_token"]["absent"].is_string());

    let ids = assert_plots_drawn(dir.path(), &json, &html);
    for id in [
        "e2el-cdf",
        "ttft-cdf",
        "tokens-vs-batch",
        "steps-grid",
        "steps-stream",
        "itl-hist-1",
    ] {
        assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
    }
    // Tokens/s against batch size: the grid's two cells.
    let plot = report
        .plots
        .iter()
        .find(|p| p.id == "tokens-vs-batch")
        .unwrap();
    let PlotData::Lines { series, .. } = &plot.data else {
        panic!("lines")
    };
    let xs: Vec<f64> = series[0].points.iter().map(|p| p.0).collect();
    assert_eq!(xs, [1.0, 4.0]);
    assert_eq!(
        series[0].points[1].1,
        row(&report, "grid · bs=4 in=16 out=8 rep0")
            .figures
            .output_tokens_per_s
            .value
            .unwrap()
    );
    // Grid and stream are different workloads, and the report says so.
    assert!(!report.comparability.same_workload);
    assert!(md.contains("Not like for like") && html.contains("Not like for like"));
}

#[test]
fn mismatched_workload_model_and_hardware_are_called_out() {
    let same = report_of(&["stream", "stream"]);
    assert!(same.comparability.all_same(), "{:?}", same.comparability);
    assert!(same.comparability.differences.is_empty());
    assert_eq!(same.sources[1].label, "stream (2)");

    let seed = report_of(&["stream", "stream-seed1"]);
    let c = &seed.comparability;
    assert!(!c.same_workload && c.same_model && c.same_hardware, "{c:?}");
    assert!(
        c.differences[0].contains("workload differs") && c.differences[0].contains("seed: 1 vs 0"),
        "{c:?}"
    );
    assert_eq!(seed.rows[1].workload_group, "W2");

    let model = report_of(&["stream", "stream-gpt2"]);
    let c = &model.comparability;
    assert!(c.same_workload && !c.same_model && c.same_hardware, "{c:?}");
    assert!(
        c.differences[0].contains("model differs") && c.differences[0].contains("gpt2"),
        "{c:?}"
    );

    let mut other = run_file("stream");
    other.hardware.host.cpu_model = Some("Another CPU".into());
    let files = vec![
        read("stream"),
        (fixture("other"), ResultsFile::Run(Box::new(other))),
    ];
    let hw = build(&files, &Options::default());
    let c = &hw.comparability;
    assert!(c.same_workload && c.same_model && !c.same_hardware, "{c:?}");
    assert!(
        c.differences[0].contains("cpu_model: \"Another CPU\""),
        "{c:?}"
    );
    assert_eq!(hw.sources[1].groups.hardware, "H2");

    // Across kinds: an engine run and a load sweep are different workloads, said in words.
    let kinds = report_of(&["stream", "sweep-saturated"]);
    assert!(kinds.comparability.differences[0].contains("a load file and a run file"));
}

#[test]
fn a_run_where_every_request_failed_reports_reasons() {
    let (dir, json, md, html) = report_cli(&["failed"], &[]);
    let doc = raw("failed");
    let failed = doc["steps"][0]["summary"]["failed"].as_u64().unwrap();
    assert!(failed > 0 && doc["steps"][0]["summary"]["completed"] == 0);
    let report = report_of(&["failed"]);
    let r = &report.rows[0];
    assert_eq!((r.completed, r.failed as u64), (0, failed));
    for f in [
        &r.figures.requests_per_s,
        &r.figures.ttft_p50_s,
        &r.figures.e2el_p99_s,
    ] {
        assert_eq!(absent(f), "no successful request");
    }
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("E2EL CDF not drawn")),
        "{:?}",
        report.notes
    );
    assert!(md.contains("no successful request") && html.contains("no successful request"));
    assert!(
        md.contains("http_500"),
        "errors by class in the steps table"
    );
    assert_plots_drawn(dir.path(), &json, &html);
}

#[test]
fn one_request() {
    let report = report_of(&["one-request"]);
    let doc = raw("one-request");
    let l = &doc["phases"][0]["summary"]["latency"];
    let r = &report.rows[0];
    assert_eq!(r.completed, 1);
    assert_eq!(r.figures.ttft_p50_s.value, l["ttft"]["p50"].as_f64());
    assert_eq!(r.figures.ttft_p50_s, r.figures.ttft_p99_s);
    assert_eq!(r.figures.tpot_p50_s.value, l["tpot"]["p50"].as_f64());
    let cdf = report.plots.iter().find(|p| p.id == "e2el-cdf").unwrap();
    let PlotData::Lines { series, .. } = &cdf.data else {
        panic!("lines")
    };
    assert_eq!(
        series[0].points.len(),
        2,
        "one request: a vertical step from 0 to 1"
    );
    let dir = tempfile::tempdir().unwrap();
    output::write(&report, dir.path(), &[Format::Html]).unwrap();
    assert!(std::fs::read_to_string(dir.path().join("report.html"))
        .unwrap()
        .contains("plot-e2el-cdf"));
}

#[test]
fn absent_telemetry_says_why() {
    let off = report_of(&["no-telemetry"]);
    let f = &off.rows[0].figures;
    assert_eq!(
        absent(&f.joules_per_output_token),
        "telemetry off (--no-telemetry)"
    );
    assert_eq!(absent(&f.peak_power_w), "telemetry off (--no-telemetry)");
    assert!(absent(&f.usd_per_m_output_tokens).starts_with("no price given"));

    // Telemetry on, on a machine with no energy source: what was missing, and the host's memory.
    let doc = raw("stream");
    let tel = &doc["telemetry"];
    assert!(
        tel["energy_devices"].as_array().unwrap().is_empty(),
        "fixture made without energy source"
    );
    let on = report_of(&["stream"]);
    let f = &on.rows[0].figures;
    assert!(
        absent(&f.avg_power_w).starts_with("no energy source on this machine"),
        "{f:?}"
    );
    assert!(
        on.rows[0].measurement.energy.contains("unavailable"),
        "{:?}",
        on.rows[0].measurement
    );
    assert_eq!(absent(&f.peak_gpu_memory_bytes), "no GPU measured");
    assert!(on.rows[0]
        .measurement
        .energy
        .contains("host process peak RSS"));
    assert!(
        on.plots.iter().any(|p| p.id == "telemetry-stream"),
        "host memory timeline"
    );

    // A report price gives $/1M tokens from the engine's prefill and decode time.
    let files = vec![read("no-telemetry")];
    let priced = build(
        &files,
        &Options {
            usd_per_gpu_hour: Some(3.6),
            ..Options::default()
        },
    );
    let r = &priced.rows[0];
    let e = &run_file("no-telemetry").phases[0];
    let split = e.energy.as_ref().and_then(|x| x.time_split).unwrap();
    let s = e.summary.as_ref().unwrap();
    let want = 3.6 / 3600.0 * split.decode_s / s.total_output_tokens as f64 * 1e6;
    assert!((r.figures.usd_per_m_output_tokens.value.unwrap() - want).abs() <= 1e-9 * want);
    assert!(r.measurement.cost.contains("$3.6/GPU-hour"));
}

#[test]
fn sweep_with_a_saturated_step() {
    let (dir, json, md, html) = report_cli(&["sweep-saturated"], &["--slo", "ttft=50ms"]);
    let doc = raw("sweep-saturated");
    let steps = doc["steps"].as_array().unwrap();
    let open: Vec<&Value> = steps
        .iter()
        .filter(|s| s["params"]["mode"] == "open")
        .collect();
    assert!(open.len() >= 2);
    assert!(
        steps.iter().any(|s| s["saturated"] == true),
        "the fixture has a saturated step"
    );
    let report = report_of(&["sweep-saturated"]);
    assert_eq!(report.rows.len(), steps.len());
    assert!(report.rows.iter().any(|r| r.label.ends_with("(saturated)")));
    let ids = assert_plots_drawn(dir.path(), &json, &html);
    for id in ["throughput-vs-rate", "ttft-vs-rate", "tpot-vs-rate"] {
        assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
    }
    let plot = report
        .plots
        .iter()
        .find(|p| p.id == "throughput-vs-rate")
        .unwrap();
    let PlotData::Lines { series, .. } = &plot.data else {
        panic!("lines")
    };
    let rates: Vec<f64> = open
        .iter()
        .map(|s| s["params"]["rate"].as_f64().unwrap())
        .collect();
    assert_eq!(
        series[0].points.iter().map(|p| p.0).collect::<Vec<_>>(),
        rates
    );
    // The report's SLO gives goodput; the steps table says which step saturated and why.
    assert!(json["rows"][0]["figures"]["goodput_requests_per_s"]["value"].is_number());
    assert!(
        md.contains("yes: completion rate"),
        "saturation reason in the steps table"
    );
    assert!(
        md.contains("timing error vs the in-process mock"),
        "client timing error"
    );
}

#[test]
fn kernel_study_is_a_roofline() {
    let (dir, json, md, html) = report_cli(&["kernels"], &[]);
    let doc = raw("kernels");
    let rows = doc["rows"].as_array().unwrap();
    let report = report_of(&["kernels"]);
    assert!(report.rows.is_empty(), "kernel rows are not request runs");
    let t = report.tables.iter().find(|t| t.id == "kernels").unwrap();
    assert_eq!(t.rows.len(), rows.len());
    let plot = report
        .plots
        .iter()
        .find(|p| p.id == "roofline-kernels")
        .unwrap();
    let PlotData::Roofline { roofs, points } = &plot.data else {
        panic!("roofline")
    };
    assert_eq!(
        roofs[0].memory_gb_s,
        doc["ceilings"]["memory_gb_s"].as_f64().unwrap()
    );
    let with_flops = rows
        .iter()
        .filter(|r| r["flops"].as_u64().unwrap() > 0)
        .count();
    assert_eq!(points.len(), with_flops);
    assert!(!md.contains("## Throughput and latency"));
    assert_plots_drawn(dir.path(), &json, &html);
}

#[test]
fn interrupted_run_is_reported_from_its_records() {
    let mut r = run_file("grid");
    r.complete = false;
    let last = r.phases.last_mut().unwrap();
    last.summary = None;
    last.engine_summary = None;
    let name = last.name.clone();
    let files = vec![(fixture("grid"), ResultsFile::Run(Box::new(r)))];
    let report = build(&files, &Options::default());
    assert!(report.notes.iter().any(|n| n.contains("did not complete")));
    assert!(report
        .notes
        .iter()
        .any(|n| n.contains(&name) && n.contains("computed from")));
    let full = report_of(&["grid"]);
    let label = format!("grid · {name}");
    assert_eq!(row(&report, &label).figures, row(&full, &label).figures);
}

/// A phase in which no request was admitted looked no prompt token up: its prefix-cache hit rate
/// is absent (null in the results file, which the schema allows; "—" in the engine table), not 0%.
#[test]
fn a_phase_with_nothing_admitted_has_no_prefix_hit_rate() {
    let mut r = run_file("grid");
    for p in &mut r.phases {
        for q in &mut p.requests {
            q.admitted_s = None;
            q.prefix_hit_tokens = 0;
        }
        p.engine_summary = Some(EngineSummary::of(&p.steps, &p.requests));
    }
    let doc = serde_json::to_value(&r).unwrap();
    for p in doc["phases"].as_array().unwrap() {
        assert!(p["engine_summary"]["prefix_hit_rate"].is_null(), "{p}");
    }
    assert_eq!(schema_errors(&doc), Vec::<String>::new());

    let engine_column = |report: &Report| -> Vec<String> {
        let t = report.tables.iter().find(|t| t.id == "engine").unwrap();
        let col = t.header.iter().position(|h| h == "prefix hits").unwrap();
        t.rows.iter().map(|row| row[col].clone()).collect()
    };
    let files = vec![(fixture("grid"), ResultsFile::Run(Box::new(r)))];
    let hits = engine_column(&build(&files, &Options::default()));
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h == "—"), "{hits:?}");
    // The file as written (every request admitted, no shared prefix) keeps its 0%.
    let hits = engine_column(&report_of(&["grid"]));
    assert!(hits.iter().all(|h| h == "0%"), "{hits:?}");
}

/// Energy, power and GPU memory from a telemetry timeline (a synthetic GPU source through the
/// library's own timeline and energy code, as `run` does with NVML).
#[test]
fn energy_from_telemetry_fills_the_energy_columns() {
    let mut r = run_file("grid");
    let t_end = r
        .phases
        .iter()
        .filter_map(|p| p.ended_s)
        .fold(0.0, f64::max)
        + 0.01;
    let mut gpu = SyntheticSource::new(
        "gpu0",
        |t| 200.0 + 100.0 * (t * 50.0).sin(),
        |t| 200.0 * t - 2.0 * (t * 50.0).cos(),
    );
    let mut b = TimelineBuilder::new(gpu.channels(), 0.001, 4096);
    let mut values = vec![None; b.num_source_channels()];
    let mut t = 0.0;
    while t <= t_end {
        values.iter_mut().for_each(|v| *v = None);
        gpu.read(t, &mut values);
        b.push(t, &values);
        t += 0.0005;
    }
    let timeline = b.snapshot();
    let opts = EnergyOptions {
        scope: vec!["gpu0".into()],
        cost: Some(CostParams {
            usd_per_gpu_hour: 2.0,
            num_gpus: 1.0,
        }),
        grid_intensity_g_per_kwh: None,
    };
    for p in &mut r.phases {
        let s = p.summary.as_ref().unwrap();
        let work = Work {
            requests: s.completed as f64,
            input_tokens: s.total_input_tokens as f64,
            output_tokens: s.total_output_tokens as f64,
        };
        let segs = energy::segments_from_steps(&p.steps);
        // the steady state over the cell's batch, as `run` computes it
        let records: Vec<_> = p.requests.iter().map(|q| q.record.clone()).collect();
        let bs = p.params["batch_size"].as_u64().unwrap() as usize;
        let steady_t = infermeter::metrics::summarize(&records, None, Some(bs)).steady_state;
        let window = infermeter::metrics::steady_window(&records, bs);
        p.energy = Some(energy::summarize_with_steady_state(
            Some(&timeline),
            (p.started_s, p.ended_s.unwrap()),
            &work,
            window.zip(steady_t.as_ref()),
            Some(segs.as_slice()),
            &opts,
        ));
    }
    let mut section: TelemetrySection = r
        .telemetry
        .clone()
        .expect("fixture has a telemetry section");
    section.energy_devices = vec!["gpu0".into()];
    section.sources = vec![SourceStatus {
        source: "synthetic".into(),
        available: true,
        reason: None,
        devices: vec!["gpu0".into()],
        unsupported: vec![],
    }];
    section.timeline = Some(timeline);
    r.telemetry = Some(section);
    let measured: Vec<_> = r.phases.iter().filter(|p| !p.warmup).cloned().collect();
    // Without a prefill/decode split, decode J/out tok is absent: never all energy ÷ output tokens.
    let mut unsplit = r.clone();
    for p in unsplit.phases.iter_mut() {
        let e = p.energy.as_mut().unwrap();
        if let Some(m) = e.energy.as_mut() {
            (m.prefill_j, m.decode_j, m.idle_j) = (None, None, None);
            (m.j_per_input_token, m.j_per_output_token) = (None, None);
        }
        e.steady_state = None;
    }
    let unsplit = build(
        &[(fixture("grid"), ResultsFile::Run(Box::new(unsplit)))],
        &Options::default(),
    );
    for row in &unsplit.rows {
        assert_eq!(
            absent(&row.figures.joules_per_output_token),
            "no prefill/decode split: decode energy unknown"
        );
        assert!(absent(&row.figures.steady_tokens_per_joule).starts_with("no steady state"));
        assert!(row.figures.tokens_per_joule.value.is_some());
    }
    let files = vec![(fixture("grid"), ResultsFile::Run(Box::new(r)))];
    let report = build(&files, &Options::default());
    for p in &measured {
        let e = p.energy.as_ref().unwrap();
        let m = e.energy.as_ref().expect("energy measured");
        let row = row(&report, &format!("grid · {}", p.name));
        let f = &row.figures;
        assert_eq!(f.joules_per_output_token.value, m.j_per_output_token);
        assert_eq!(f.tokens_per_joule.value, m.tokens_per_j);
        let steady = e
            .steady_state
            .as_ref()
            .expect("a grid cell reaches its batch");
        let sm = steady.energy.as_ref().unwrap();
        assert!(steady.duration_s > 0.0 && steady.duration_s <= e.duration_s);
        assert_eq!(f.steady_tokens_per_joule.value, sm.tokens_per_j);
        assert!(f.steady_tokens_per_joule.value.unwrap() > 0.0);
        assert_eq!(f.avg_power_w.value, Some(m.avg_power_w));
        assert_eq!(f.peak_power_w.value, m.peak_power_w);
        assert_eq!(f.peak_gpu_memory_bytes.value, m.peak_memory_bytes);
        let cost = e.cost.as_ref().unwrap();
        assert_eq!(
            f.usd_per_m_output_tokens.value,
            cost.usd_per_1m_output_tokens
        );
        assert!(
            row.measurement.energy.contains("gpu0"),
            "{:?}",
            row.measurement
        );
        assert!(row.measurement.cost.contains("run price $2/GPU-hour"));
    }
    assert!(report.plots.iter().any(|p| p.id == "joules-vs-batch"));
    let tel = report
        .plots
        .iter()
        .find(|p| p.id == "telemetry-grid")
        .unwrap();
    let PlotData::Timeline { panels, spans, .. } = &tel.data else {
        panic!("timeline")
    };
    assert_eq!(panels[0].y, "power (W)");
    assert!(panels[1].y.starts_with("GPU memory"));
    assert!(
        spans.iter().any(|s| s.label == "prefill") && spans.iter().any(|s| s.label == "decode")
    );
    let dir = tempfile::tempdir().unwrap();
    output::write(&report, dir.path(), &[Format::Md, Format::Html]).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    let j = report.rows[0]
        .figures
        .joules_per_output_token
        .value
        .unwrap();
    assert!(
        md.contains(&format::number(j)),
        "J/out tok {j} in the table"
    );
    assert!(dir.path().join("plots/telemetry-grid.svg").is_file());
}

#[test]
fn bad_input_is_an_error_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut wrong_type = raw("stream");
    wrong_type["phases"][0]["summary"]["completed"] = Value::from("many");
    let mut no_phases = raw("stream");
    no_phases.as_object_mut().unwrap().remove("phases");
    let mut bad_kind = raw("stream");
    bad_kind["kind"] = Value::from("telepathy");
    let mut bad_version = raw("stream");
    bad_version["schema_version"] = Value::from(99);
    let cases = [
        (
            write("truncated.json", "{\"schema_version\": 1, \"kind\""),
            "malformed JSON",
        ),
        (write("array.json", "[1, 2]"), "expected a JSON object"),
        (
            write("kind.json", &bad_kind.to_string()),
            "unknown kind `telepathy`",
        ),
        (
            write("version.json", &bad_version.to_string()),
            "field `schema_version`: 99 is not supported",
        ),
        (
            write("type.json", &wrong_type.to_string()),
            "field `phases[0].summary.completed`",
        ),
        (
            write("missing.json", &no_phases.to_string()),
            "missing field `phases`",
        ),
        (dir.path().join("absent.json"), "absent.json"),
    ];
    for (path, want) in cases {
        let err = read_results(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(want), "{}: {err}", path.display());
        let out = Command::new(env!("CARGO_BIN_EXE_infermeter"))
            .arg("report")
            .arg(fixture("stream"))
            .arg(&path)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
    assert!(!dir.path().join("out").exists(), "nothing written on error");
}

/// The sweep fixture's first step, rewritten: (the whole file, with only that step).
fn probe_file(edit: impl FnOnce(&mut Value)) -> (tempfile::TempDir, PathBuf, ResultsFile) {
    let mut doc = raw("sweep-saturated");
    let first = doc["steps"][0].clone();
    doc["steps"] = Value::Array(vec![first]);
    doc["sweep"] = Value::Null;
    edit(&mut doc);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("probe.json");
    std::fs::write(&p, serde_json::to_string(&doc).unwrap()).unwrap();
    let f = read_results(&p).unwrap_or_else(|e| panic!("{e}"));
    (dir, p, f)
}

#[test]
fn load_cost_prices_only_the_successful_requests_time() {
    // Two requests fail after a long wait: their time must not be priced.
    let (_d, p, f) = probe_file(|doc| {
        let step = &mut doc["steps"][0];
        step["energy"] = Value::Null;
        for k in [0usize, 1] {
            let r = &mut step["requests"][k];
            r["error"] = Value::from("http 500");
            let send = r["send_s"].as_f64().unwrap();
            r["end_s"] = Value::from(send + 30.0);
            r["first_token_s"] = Value::Null;
            r["chunk_times_s"] = Value::Array(vec![]);
        }
        let records: Vec<infermeter::metrics::RequestRecord> = step["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| serde_json::from_value(r.clone()).unwrap())
            .collect();
        step["summary"] =
            serde_json::to_value(infermeter::metrics::summarize(&records, None, Some(4))).unwrap();
    });
    let ResultsFile::Load(l) = &f else {
        panic!("not a load file")
    };
    let records: Vec<_> = l.steps[0]
        .requests
        .iter()
        .map(|q| q.record.clone())
        .filter(|r| r.is_ok())
        .collect();
    let (pre, dec) =
        energy::segments_from_requests(&records)
            .iter()
            .fold((0.0, 0.0), |(p, d), s| {
                let t = s.end_s - s.start_s;
                (
                    p + t * s.prefill_fraction,
                    d + t * (1.0 - s.prefill_fraction),
                )
            });
    let s = l.steps[0].summary.as_ref().unwrap();
    let r = build(
        &[(p, f.clone())],
        &Options {
            usd_per_gpu_hour: Some(2.0),
            ..Options::default()
        },
    );
    let fig = &r.rows[0].figures;
    let want_in = 2.0 / 3600.0 * pre / s.total_input_tokens as f64 * 1e6;
    let want_out = 2.0 / 3600.0 * dec / s.total_output_tokens as f64 * 1e6;
    let got_in = fig.usd_per_m_input_tokens.value.unwrap();
    let got_out = fig.usd_per_m_output_tokens.value.unwrap();
    assert!(
        (got_in - want_in).abs() <= 1e-9 * want_in,
        "{got_in} vs {want_in}"
    );
    assert!(
        (got_out - want_out).abs() <= 1e-9 * want_out,
        "{got_out} vs {want_out}"
    );
}

#[test]
fn an_interrupted_open_loop_step_keeps_its_steady_state_and_the_runs_slo() {
    let (_d, p, f) = probe_file(|doc| {
        doc["complete"] = Value::from(false);
        doc["config"]["slo"] = Value::from("e2el=100s");
        let step = &mut doc["steps"][0];
        step["summary"] = Value::Null;
        step["ended_s"] = Value::Null;
        step["params"]["mode"] = Value::from("open");
        step["params"]["rate"] = Value::from(50.0);
        step["params"]["concurrency"] = Value::Null;
        step["params"]["max_concurrency"] = Value::from(4);
    });
    let r = build(&[(p, f)], &Options::default());
    let row = &r.rows[0];
    assert!(
        row.measurement.window.contains("steady state"),
        "{}",
        row.measurement.window
    );
    assert!(
        row.measurement
            .window
            .contains("goodput SLO e2el=100s (run)"),
        "{}",
        row.measurement.window
    );
    let g = row.figures.goodput_requests_per_s.value.unwrap();
    let t = row.figures.requests_per_s.value.unwrap();
    assert!(
        (g - t).abs() <= 1e-12 * t,
        "every request meets e2el=100s: {g} vs {t}"
    );
}

/// A hybrid model's KV groups get a note beside the KV figures: blocks span a group's layers, and
/// the sliding groups released what left their windows.
#[test]
fn a_hybrid_models_kv_groups_are_noted() {
    let mut run = run_file("one-request");
    let group =
        |window: Option<usize>, layers: Vec<usize>| infermeter::kv::KvGroup { window, layers };
    run.engine.kv_groups = vec![
        group(None, vec![5, 11]),
        group(Some(512), vec![0, 1]),
        group(Some(512), vec![2, 3]),
    ];
    let files = vec![(fixture("one-request"), ResultsFile::Run(Box::new(run)))];
    let report = build(&files, &Options::default());
    let note = report
        .notes
        .iter()
        .find(|n| n.contains("hybrid model"))
        .unwrap_or_else(|| panic!("no KV groups note in {:?}", report.notes));
    assert!(
        note.contains("3 KV block tables (blocks of 2 layers)"),
        "{note}"
    );
    assert!(
        note.contains("the 2 sliding ones") && note.contains("their window (512 tokens)"),
        "{note}"
    );
}
