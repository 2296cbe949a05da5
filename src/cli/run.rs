//! `infermeter run`: the offline benchmark of the reference engine.
//!
//! Three ways to say what to run: a grid (`--batch-size 1,8 --input-len 128,512 --output-len 128`:
//! each cell submits its batch at once), a stream (`--num-requests N` with length distributions and an
//! arrival process), or a workload file (`--workload FILE.jsonl`). Every mode writes one results file.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::{ModelArgs, SamplingArgs};
use crate::engine::offline::{run_phase, PhaseEvent, PhaseOptions, PlannedRequest};
use crate::engine::{Engine, EngineConfig};
use crate::metrics::{summarize, Slo};
use crate::model::kv_block_bytes;
use crate::report::results::{
    EngineInfo, EngineSummary, Hardware, ModelInfo, Phase, ResultsWriter, RunResults, ToolInfo,
    SCHEMA_VERSION,
};
use crate::telemetry::host::HostInfo;
use crate::workload::{self, Arrival, LengthDist, WorkloadRequest};

pub use super::backend::BackendChoice;
use super::backend::EngineBackend;
use super::telemetry_opts::{print_energy, RunTelemetry, TelemetryArgs};

#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct RunArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub backend: super::backend::BackendArgs,
    /// Read options from a TOML or JSON file (keys are option names); the command line wins.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub engine: super::backend::EngineArgs,

    // --- grid mode ---
    /// Grid: batch sizes, comma-separated (default 1,8).
    #[arg(long, value_delimiter = ',')]
    pub batch_size: Option<Vec<usize>>,
    /// Grid: prompt lengths, comma-separated (default 64). Stream: a length distribution
    /// (128, uniform:1:512, normal:MEAN:STD[:MIN:MAX], exp:MEAN[:MAX]).
    #[arg(long)]
    pub input_len: Option<String>,
    /// Grid: output lengths, comma-separated (default 32). Stream: a length distribution.
    #[arg(long)]
    pub output_len: Option<String>,
    /// Grid: warmup runs of each cell, excluded from the results' summaries.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Grid: measured runs of each cell.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,

    // --- stream mode ---
    /// Stream: number of requests (selects stream mode).
    #[arg(long)]
    pub num_requests: Option<usize>,
    /// Stream / workload: arrival rate in requests/s (default: all at once).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stream / workload: arrival process: poisson, constant, gamma:BURSTINESS or burst.
    #[arg(long, default_value = "poisson")]
    pub arrival: String,

    // --- workload file ---
    /// A JSONL workload: one request a line, {"prompt_ids": [...], "max_tokens": N} or
    /// {"prompt": "...", "max_tokens": N}.
    #[arg(long)]
    pub workload: Option<PathBuf>,
    /// Write the requests this run generated as a JSONL workload, to replay them anywhere.
    #[arg(long)]
    pub save_workload: Option<PathBuf>,

    // --- sampling ---
    #[command(flatten)]
    #[serde(flatten)]
    pub sampling: SamplingArgs,
    /// Workload mode: do not stop at EOS (grid and stream always ignore EOS: exact lengths).
    #[arg(long)]
    pub ignore_eos: bool,

    // --- metrics and output ---
    /// Goodput SLOs, e.g. ttft=200ms,tpot=50ms,e2el=10s.
    #[arg(long)]
    pub slo: Option<String>,
    /// Keep every request's output token ids in the results file.
    #[arg(long)]
    pub save_output_ids: bool,
    /// Results file (default: infermeter-results/run-<UTC time>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,

    // --- telemetry, energy and cost ---
    #[command(flatten)]
    #[serde(flatten)]
    pub telemetry: TelemetryArgs,
}

/// A phase to run: its name, parameters and requests.
struct PhasePlan {
    name: String,
    warmup: bool,
    /// Slots whose all-busy time is the phase's steady state: the batch size of a grid cell,
    /// `--max-num-seqs` for a stream or workload.
    concurrency: usize,
    params: serde_json::Value,
    requests: Vec<PlannedRequest>,
}

/// Parse "512MiB", "2GiB", "1.5GB", "4096" (bytes).
pub fn parse_bytes(text: &str) -> anyhow::Result<usize> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("`{text}` is not a size (e.g. 512MiB, 2GiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("`{text}`: unknown unit `{other}` (B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    Ok((value * mult) as usize)
}

fn parse_list(text: &str, option: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|&v| v > 0)
                .with_context(|| format!("{option}: `{s}` is not a positive integer"))
        })
        .collect()
}

fn grid_plans(a: &RunArgs, vocab: usize) -> anyhow::Result<Vec<PhasePlan>> {
    let batches = a.batch_size.clone().unwrap_or_else(|| vec![1, 8]);
    if batches.contains(&0) {
        bail!("--batch-size: batch sizes must be positive");
    }
    let inputs = parse_list(a.input_len.as_deref().unwrap_or("64"), "--input-len")?;
    let outputs = parse_list(a.output_len.as_deref().unwrap_or("32"), "--output-len")?;
    if a.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let mut plans = Vec::new();
    let mut cell = 0u64;
    for &b in &batches {
        for &i in &inputs {
            for &o in &outputs {
                let runs = (0..a.warmup)
                    .map(|r| (true, r))
                    .chain((0..a.repeats).map(|r| (false, r)));
                for (warmup, rep) in runs {
                    let seed =
                        a.sampling.seed ^ (cell << 32) ^ ((rep as u64) << 16) ^ u64::from(warmup);
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    let requests = (0..b)
                        .map(|_| PlannedRequest {
                            prompt_ids: workload::random_prompt_ids(i, vocab, &mut rng),
                            max_tokens: o,
                            arrival_s: 0.0,
                        })
                        .collect();
                    plans.push(PhasePlan {
                        concurrency: b,
                        name: format!(
                            "bs={b} in={i} out={o} {}{rep}",
                            if warmup { "warmup" } else { "rep" }
                        ),
                        warmup,
                        params: json!({"batch_size": b, "input_len": i, "output_len": o, "repeat": rep}),
                        requests,
                    });
                }
                cell += 1;
            }
        }
    }
    Ok(plans)
}

fn arrivals(a: &RunArgs, n: usize) -> anyhow::Result<Vec<f64>> {
    match a.rate {
        None => Ok(vec![0.0; n]),
        Some(rate) => {
            let arrival =
                Arrival::from_str(&a.arrival).map_err(|e| anyhow::anyhow!("--arrival: {e}"))?;
            Ok(workload::send_offsets(n, rate, arrival, a.sampling.seed)
                .context("--rate / --arrival")?)
        }
    }
}

fn stream_plan(a: &RunArgs, n: usize, vocab: usize, context: usize) -> anyhow::Result<PhasePlan> {
    let input = LengthDist::from_str(a.input_len.as_deref().unwrap_or("64"))
        .map_err(|e| anyhow::anyhow!("--input-len: {e}"))?;
    let output = LengthDist::from_str(a.output_len.as_deref().unwrap_or("32"))
        .map_err(|e| anyhow::anyhow!("--output-len: {e}"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(a.sampling.seed);
    let offsets = arrivals(a, n)?;
    // Lengths drawn past the context are cut to fit it (output first, then the prompt), counted,
    // and said: the results' lengths are then not the distributions' alone.
    let mut clamped = 0usize;
    let mut requests = Vec::with_capacity(offsets.len());
    for arrival_s in offsets {
        let (o_drawn, i_drawn) = (output.sample(&mut rng), input.sample(&mut rng));
        let o = o_drawn.min(context - 1);
        let i = i_drawn.min(context - o);
        clamped += usize::from(o != o_drawn || i != i_drawn);
        requests.push(PlannedRequest {
            prompt_ids: workload::random_prompt_ids(i, vocab, &mut rng),
            max_tokens: o,
            arrival_s,
        });
    }
    if clamped > 0 {
        eprintln!(
            "warning: {clamped} of {n} requests drawn longer than the model's context of {context} \
             tokens were cut to fit it (output first, then prompt); recorded as clamped_to_context"
        );
    }
    Ok(PhasePlan {
        concurrency: a.engine.max_num_seqs,
        name: "stream".into(),
        warmup: false,
        params: json!({"num_requests": n, "input_len": input.to_string(),
            "output_len": output.to_string(), "rate": a.rate, "arrival": a.arrival,
            "clamped_to_context": clamped}),
        requests,
    })
}

/// Refuse, before any weight is loaded, a run with nothing to do (an empty workload) and grid
/// cells that can never run: prompt + output beyond the model's context. (The engine would reject
/// every request of such a cell, and the run would end "complete" with nothing measured.) A
/// workload file's requests are not refused here: a replayed trace keeps going, and a request the
/// engine cannot serve is recorded as failed, as a server would answer it.
fn check_lengths(
    mode: &str,
    plans: &[PhasePlan],
    cfg: &crate::model::ModelConfig,
    model: &str,
) -> anyhow::Result<()> {
    if plans.iter().all(|p| p.requests.is_empty()) {
        bail!("nothing to run: no requests (an empty workload file?)");
    }
    if mode != "grid" {
        return Ok(());
    }
    for plan in plans {
        if let Some(r) = plan.requests.first() {
            let total = r.prompt_ids.len() + r.max_tokens;
            if total > cfg.max_context {
                bail!(
                    "grid cell `{}`: --input-len {} + --output-len {} = {total} tokens exceeds \
                     {model}'s context of {}",
                    plan.name,
                    r.prompt_ids.len(),
                    r.max_tokens,
                    cfg.max_context
                );
            }
        }
    }
    Ok(())
}

/// Refuse grid cells whose requests can never fit the KV pool (after the pool is sized): longer
/// than the pool, unless the model's window lets any length run in it
/// (`EngineConfig::max_request_tokens`).
fn check_pool(
    mode: &str,
    plans: &[PhasePlan],
    engine: &EngineConfig,
    model: &crate::model::ModelConfig,
) -> anyhow::Result<()> {
    if mode != "grid" {
        return Ok(());
    }
    let (num_blocks, block_size) = (engine.num_blocks, engine.block_size);
    let capacity = engine.max_request_tokens(model);
    for plan in plans {
        if let Some(r) = plan.requests.first() {
            let need = (r.prompt_ids.len() + r.max_tokens).div_ceil(block_size.max(1));
            if r.prompt_ids.len() + r.max_tokens > capacity {
                bail!(
                    "grid cell `{}`: {} prompt + {} output tokens need {need} KV blocks of \
                     {block_size}, the pool has {num_blocks} (raise --kv-blocks or --kv-memory)",
                    plan.name,
                    r.prompt_ids.len(),
                    r.max_tokens
                );
            }
        }
    }
    Ok(())
}

fn workload_plan(
    a: &RunArgs,
    path: &std::path::Path,
    tokenizer: Option<&crate::model::Tokenizer>,
) -> anyhow::Result<PhasePlan> {
    let reqs = workload::read_jsonl(path)?;
    let offsets = arrivals(a, reqs.len())?;
    let mut requests = Vec::with_capacity(reqs.len());
    for (n, (r, arrival_s)) in reqs.iter().zip(offsets).enumerate() {
        let prompt_ids = match (&r.prompt_ids, &r.prompt, tokenizer) {
            (Some(ids), _, _) => ids.clone(),
            (None, Some(text), Some(t)) => t.encode(text)?,
            (None, Some(_), None) => bail!(
                "{}: request {} has a text prompt, but the model has no tokenizer (tokenizer.json, or vocab.json and merges.txt; use prompt_ids)",
                path.display(),
                n + 1
            ),
            (None, None, _) => bail!("{}: request {} has no prompt", path.display(), n + 1),
        };
        requests.push(PlannedRequest {
            prompt_ids,
            max_tokens: r.max_tokens,
            arrival_s,
        });
    }
    Ok(PhasePlan {
        concurrency: a.engine.max_num_seqs,
        name: "workload".into(),
        warmup: false,
        params: json!({"file": path.display().to_string(), "num_requests": requests.len(),
            "rate": a.rate, "arrival": a.arrival}),
        requests,
    })
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let backend = super::backend::open(&a.backend)?;
    super::backend::dispatch!(backend, b => run_on(a, b))
}

fn run_on<B: EngineBackend>(a: RunArgs, backend: B) -> anyhow::Result<()> {
    a.telemetry.validate()?;
    let slo = a
        .slo
        .as_deref()
        .map(|s| Slo::from_str(s).map_err(|e| anyhow::anyhow!("--slo: {e}")))
        .transpose()?;
    let source = a
        .model
        .open()
        .with_context(|| format!("opening model `{}`", a.model.model))?;
    let cfg = source.config.clone();
    let (mode, plans) = if let Some(path) = &a.workload {
        (
            "workload",
            vec![workload_plan(&a, path, source.tokenizer.as_ref())?],
        )
    } else if let Some(n) = a.num_requests {
        (
            "stream",
            vec![stream_plan(&a, n, cfg.vocab_size, cfg.max_context)?],
        )
    } else {
        ("grid", grid_plans(&a, cfg.vocab_size)?)
    };
    check_lengths(mode, &plans, &cfg, &source.name)?;
    if let Some(path) = &a.save_workload {
        let reqs: Vec<WorkloadRequest> = plans
            .iter()
            .filter(|p| !p.warmup)
            .flat_map(|p| &p.requests)
            .map(|r| WorkloadRequest {
                prompt_ids: Some(r.prompt_ids.clone()),
                prompt: None,
                max_tokens: r.max_tokens,
            })
            .collect();
        workload::write_jsonl(path, &reqs)?;
        eprintln!(
            "wrote workload {} ({} requests)",
            path.display(),
            reqs.len()
        );
    }

    let loaded = source
        .load(a.model.load_options())
        .with_context(|| format!("loading model `{}`", a.model.model))?;
    let weights_kind = loaded.weights_kind;
    let (model, _tokenizer) = loaded.into_model(backend)?;
    model.set_graphs(!a.engine.no_cuda_graphs);
    let records_graphs = model.backend.can_capture();
    // The engine's GPU (its NVML index) is what telemetry measures and prices by default.
    // NVML finds it when telemetry opens (by UUID; see telemetry_opts::gpu_selection).
    let engine_gpu = model.backend.cuda_device().map(|(ordinal, uuid)| {
        super::telemetry_opts::engine_gpu(
            ordinal,
            uuid,
            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
        )
    });
    let (backend_name, dtype, on, gpus) = (
        model.backend.name(),
        model.backend.dtype_name(),
        model.backend.describe(),
        model.backend.gpus(),
    );
    let kv_layout = crate::kv::KvLayout::for_model(&cfg, a.engine.keep_all_kv_blocks);
    let block_bytes = kv_block_bytes(
        &cfg,
        kv_layout.slots(),
        a.engine.block_size.max(1),
        model.backend.elem_bytes(),
    );
    let num_blocks = match a.engine.kv_blocks {
        Some(n) => n,
        None => model
            .backend
            .auto_kv_blocks(&model, &a.engine.kv_sizing()?)?,
    };
    let engine_cfg = EngineConfig {
        block_size: a.engine.block_size,
        num_blocks,
        max_num_seqs: a.engine.max_num_seqs,
        max_num_batched_tokens: a.engine.max_num_batched_tokens,
        enable_prefix_caching: !a.engine.no_prefix_caching,
        keep_all_kv_blocks: a.engine.keep_all_kv_blocks,
    };
    check_pool(mode, &plans, &engine_cfg, &cfg)?;
    let epoch = Instant::now();
    let mut engine = Engine::new(model, engine_cfg, epoch)?;
    let mut tel = RunTelemetry::start(&a.telemetry, epoch, engine_gpu)?;
    let out_path = a.out.clone().unwrap_or_else(|| {
        let stamp = crate::util::utc_timestamp().replace(':', "");
        PathBuf::from("infermeter-results").join(format!("run-{stamp}.json"))
    });
    let results = RunResults {
        schema_version: SCHEMA_VERSION,
        kind: "run".into(),
        tool: ToolInfo::current(),
        command: std::env::args().collect(),
        config: serde_json::to_value(&a)?,
        started_at: crate::util::utc_timestamp(),
        complete: false,
        hardware: Hardware {
            host: HostInfo::collect(),
            gpus,
        },
        model: ModelInfo {
            source: a.model.model.clone(),
            weights: weights_kind.into(),
            backend: backend_name.into(),
            dtype: dtype.into(),
            num_parameters: cfg.num_parameters(),
            config: cfg.clone(),
        },
        engine: EngineInfo {
            config: engine_cfg,
            kv_pool_bytes: num_blocks * block_bytes,
            cuda_graphs: engine.model().graph_stats().enabled,
            kv_window: engine_cfg.kv_window(&cfg),
            kv_groups: if kv_layout.num_groups() > 1 {
                kv_layout.groups().to_vec()
            } else {
                Vec::new()
            },
        },
        workload: json!({
            "mode": mode,
            "seed": a.sampling.seed,
            "sampling": {"temperature": a.sampling.temperature, "top_k": a.sampling.top_k, "top_p": a.sampling.top_p},
            "ignore_eos": mode != "workload" || a.ignore_eos,
            "num_phases": plans.len(),
            "num_requests": plans.iter().map(|p| p.requests.len()).sum::<usize>(),
        }),
        phases: Vec::new(),
        telemetry: tel.section(),
    };
    let mut writer = ResultsWriter::new(&out_path, results)
        .with_context(|| format!("writing {}", out_path.display()))?;
    eprintln!(
        "model {} ({}, {:.1}M parameters, {} weights{}) on {on}; KV pool {} blocks x {} tokens ({:.1} MiB){}; results -> {}",
        a.model.model,
        cfg.model_type,
        cfg.num_parameters() as f64 / 1e6,
        weights_kind,
        crate::model::rope::longrope_note(&cfg),
        num_blocks,
        a.engine.block_size,
        (num_blocks * block_bytes) as f64 / (1u64 << 20) as f64,
        crate::engine::window_release_note(&kv_layout),
        out_path.display()
    );
    eprintln!("{}", tel.describe());

    let total: usize = plans.iter().map(|p| p.requests.len()).sum();
    let bar = if a.no_progress {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} requests {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let opts = PhaseOptions {
        sampling: a.sampling.params(),
        ignore_eos: mode != "workload" || a.ignore_eos,
        save_output_ids: a.save_output_ids,
    };
    opts.sampling.validate()?;
    for plan in &plans {
        bar.set_message(plan.name.clone());
        let idx = writer.results.phases.len();
        writer.results.phases.push(Phase {
            name: plan.name.clone(),
            warmup: plan.warmup,
            params: plan.params.clone(),
            started_s: engine.now_s(),
            ended_s: None,
            requests: Vec::new(),
            steps: Vec::new(),
            summary: None,
            engine_summary: None,
            energy: None,
            graphs: None,
        });
        let graphs_before = engine.model().graph_stats();
        tel.mark();
        let mut save_err = None;
        let outcome = run_phase(&mut engine, &plan.requests, opts, |ev| {
            let PhaseEvent::RequestDone(so_far) = ev;
            bar.inc(1);
            let phase = &mut writer.results.phases[idx];
            phase.requests = so_far.requests.clone();
            phase.steps = so_far.steps.clone();
            if let Err(e) = writer.save(false) {
                save_err.get_or_insert(e);
            }
        })?;
        tel.mark();
        if let Some(e) = save_err {
            return Err(e).with_context(|| format!("writing {}", out_path.display()));
        }
        let records: Vec<_> = outcome.requests.iter().map(|r| r.record.clone()).collect();
        let phase = &mut writer.results.phases[idx];
        phase.started_s = outcome.started_s;
        phase.ended_s = Some(outcome.ended_s);
        phase.summary = Some(summarize(&records, slo.as_ref(), Some(plan.concurrency)));
        phase.engine_summary = Some(EngineSummary::of(&outcome.steps, &outcome.requests));
        if records_graphs {
            phase.graphs = Some(engine.model().graph_stats().since(&graphs_before));
        }
        phase.requests = outcome.requests;
        phase.steps = outcome.steps;
        tel.after_phase(&mut writer.results, idx, plan.concurrency);
        writer.save(true)?;
    }
    bar.finish_and_clear();
    tel.finish(&mut writer.results);
    writer.results.complete = true;
    writer.save(true)?;
    print_summary(&writer.results);
    if records_graphs {
        print_graphs(&engine.model().graph_stats());
    }
    print_energy(&writer.results);
    eprintln!("results: {}", out_path.display());
    Ok(())
}

fn print_graphs(g: &crate::model::graphs::GraphStats) {
    match (&g.disabled_reason, g.enabled) {
        // recording failed during the run, or the model cannot be recorded (MoE routing)
        (Some(why), _) => println!("CUDA graphs: off: {why}"),
        (None, false) => println!("CUDA graphs: off (--no-cuda-graphs)"),
        (None, true) => println!(
            "CUDA graphs: {} decode steps replayed, {} graphs recorded, {} steps eager, {} invalidations; \
             largest check difference {:.1e}",
            g.replayed, g.recorded, g.eager, g.invalidations, g.max_check_difference
        ),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.1}", s * 1e3))
}

fn print_summary(r: &RunResults) {
    println!(
        "{:<28} {:>5} {:>6} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7} {:>8}",
        "phase",
        "reqs",
        "fail",
        "out tok/s",
        "steady o/s",
        "req/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "E2EL p50",
        "prefill/s",
        "decode/s",
        "preempt",
        "goodput"
    );
    for p in r.phases.iter().filter(|p| !p.warmup) {
        let (Some(s), Some(e)) = (&p.summary, &p.engine_summary) else {
            continue;
        };
        let l = &s.latency;
        println!(
            "{:<28} {:>5} {:>6} {:>10.1} {:>10} {:>10.2} {:>9} {:>9} {:>9} {:>9} {:>10.1} {:>10.1} {:>7} {:>8}",
            p.name,
            s.completed,
            s.failed,
            s.throughput.output_tokens_per_s,
            s.steady_state
                .as_ref()
                .map_or("-".into(), |t| format!("{:.1}", t.output_tokens_per_s)),
            s.throughput.requests_per_s,
            ms(l.ttft.as_ref().map(|x| x.p50)),
            ms(l.ttft.as_ref().map(|x| x.p99)),
            ms(l.tpot.as_ref().map(|x| x.p50)),
            ms(l.e2el.as_ref().map(|x| x.p50)),
            e.prefill_tokens_per_s,
            e.decode_tokens_per_s,
            e.preemptions,
            s.goodput_requests_per_s
                .map_or("-".into(), |g| format!("{g:.2}")),
        );
    }
    println!(
        "(times in ms; prefill/s and decode/s: tokens per second of step time attributed to each; \
         steady o/s: output tokens/s while all slots were busy (grid: the batch, stream/workload: \
         --max-num-seqs), - when never reached; goodput: requests/s meeting --slo)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert!(parse_bytes("12 parsecs")
            .unwrap_err()
            .to_string()
            .contains("parsecs"));
    }
}
