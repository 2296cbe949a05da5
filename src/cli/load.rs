//! `infermeter load`: drive an OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp, the mock) with
//! a workload and measure it the way `run` measures the engine: the same records, the same
//! `metrics::summarize`, one results file (`kind: "load"`).
//!
//! Shapes: one step (`--rate` open loop or `--concurrency` closed loop), a `--sweep` (a closed-loop
//! probe for the maximum throughput, then open-loop steps at rates up to it, stopping once
//! saturated), or `--calibrate` (the client's timing error against the in-process mock). See
//! docs/load.md.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::json;
use tokio::sync::watch;

use super::telemetry_opts::{RunTelemetry, TelemetryArgs};
use crate::client::calibrate::{self, CheckSpec};
use crate::client::executor::{LiveRecords, Progress, StepOutcome};
use crate::client::sweep;
use crate::client::{
    parse_duration, ClientOptions, Endpoint, Mode, OpenAiClient, Runner, StepPlan, Warmup,
};
use crate::metrics::energy::{self, EnergyReport, Work};
use crate::metrics::{steady_window, summarize, RequestRecord, Slo};
use crate::model::Tokenizer;
use crate::report::load_results::{
    LoadResults, LoadResultsWriter, LoadStep, SweepInfo, TargetInfo, TimingCheck, TokenAccounting,
};
use crate::report::results::Hardware;
use crate::telemetry::host::HostInfo;
use crate::telemetry::TelemetrySection;
use crate::workload::profile::Profile;
use crate::workload::session::{self, Prefix, SessionSpec, Source};
use crate::workload::{Arrival, LengthDist};

#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct LoadArgs {
    // --- target ---
    /// The server: http://HOST:PORT (optionally with /v1 or the full endpoint path).
    #[arg(long)]
    pub url: Option<String>,
    /// Which endpoint: completions (/v1/completions) or chat (/v1/chat/completions). Default: the
    /// one the --url path names, else completions.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The `model` field (default: the first id of GET /v1/models; left out if that fails).
    #[arg(long)]
    pub model: Option<String>,
    /// Bearer token (default: the OPENAI_API_KEY environment variable). Never written to results.
    #[arg(long)]
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Do not stream: one JSON response per request. TTFT and E2EL are then both the time to the
    /// whole response; TPOT, ITL and the prefill/decode split are not observed (and `--slo ttft`
    /// and `--slo tpot` are refused).
    #[arg(long)]
    pub no_stream: bool,
    /// Do not ask for usage in the stream (stream_options.include_usage).
    #[arg(long)]
    pub no_usage: bool,
    /// Send ignore_eos (true/false; a profile may default it to true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub ignore_eos: Option<bool>,
    /// Send min_tokens.
    #[arg(long)]
    pub min_tokens: Option<usize>,
    /// A JSON object merged into every request body, e.g. '{"temperature":0,"top_p":1}'.
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Longest time for one request, send to end of the body.
    #[arg(long, default_value = "600s")]
    pub timeout: String,
    /// Longest silence while waiting for the next bytes of a response.
    #[arg(long, default_value = "120s")]
    pub idle_timeout: String,

    // --- load shape ---
    /// Open loop: arrivals per second (sessions per second for multi-turn workloads).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: arrival process: poisson, constant, gamma:BURSTINESS or burst.
    #[arg(long, default_value = "poisson")]
    pub arrival: String,
    /// Open loop: most requests in flight (later arrivals wait; the wait shows as client_queue).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Closed loop: virtual users, each sending its next request when the previous one ends.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Closed loop: spread the users' first requests evenly over this time (e.g. 10s).
    #[arg(long)]
    pub ramp_up: Option<String>,
    /// Measured requests to send (per step). Default 100 when --duration is not given.
    #[arg(long)]
    pub num_requests: Option<usize>,
    /// Keep sending for this long after the warmup (per step), e.g. 60s.
    #[arg(long)]
    pub duration: Option<String>,
    /// Warmup excluded from metrics: a request count (20) or a time (10s).
    #[arg(long)]
    pub warmup: Option<String>,
    /// Seed of prompts, lengths and arrivals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    // --- sweep ---
    /// Probe the maximum throughput (closed loop), then run --sweep-steps rates up to it.
    #[arg(long)]
    pub sweep: bool,
    /// Rates in a sweep.
    #[arg(long, default_value_t = 5)]
    pub sweep_steps: usize,
    /// Virtual users of the sweep's probe.
    #[arg(long, default_value_t = 64)]
    pub sweep_concurrency: usize,

    // --- workload ---
    /// Prompt source: random, sharegpt, prompts (one per line) or jsonl (a workload file).
    #[arg(long, default_value = "random")]
    pub dataset: String,
    /// The dataset file (sharegpt, prompts, jsonl).
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// A JSONL workload file (same as --dataset jsonl --dataset-path FILE).
    #[arg(long)]
    pub workload: Option<PathBuf>,
    /// Profile: chat, code-generation, classification, fixed-length (defaults that options override).
    #[arg(long)]
    pub profile: Option<String>,
    /// Prompt tokens per user turn (random prompts): 128, uniform:MIN:MAX, normal:..., exp:...
    #[arg(long)]
    pub input_len: Option<String>,
    /// Output tokens (max_tokens) per request; overrides the dataset's.
    #[arg(long)]
    pub output_len: Option<String>,
    /// User turns per conversation (multi-turn, replies fed back), a length distribution.
    #[arg(long)]
    pub turns: Option<String>,
    /// A text put in front of every conversation's first prompt (prefix caching).
    #[arg(long, conflicts_with = "prefix_len")]
    pub prefix_text: Option<String>,
    /// A random prefix of this many tokens shared by every conversation.
    #[arg(long)]
    pub prefix_len: Option<usize>,
    /// A system message for every conversation.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// A tokenizer (model directory, tokenizer.json, or embedded model name): exact random prompts,
    /// token counts where the server gives no usage, and the usage check.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Send random prompts as token ids (completions endpoint only).
    #[arg(long)]
    pub prompt_ids: bool,
    /// Vocabulary of token-id prompts without a tokenizer.
    #[arg(long, default_value_t = 32000)]
    pub vocab_size: usize,
    /// Distinct sessions to build (default: as many as requests, at most 1000).
    #[arg(long)]
    pub num_prompts: Option<usize>,

    // --- metrics and output ---
    /// Goodput SLOs, e.g. ttft=200ms,tpot=50ms,e2el=10s.
    #[arg(long)]
    pub slo: Option<String>,
    /// Keep every response's text in the results.
    #[arg(long)]
    pub save_text: bool,
    /// Results file (default: infermeter-results/load-<UTC time>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Skip the automatic client timing check against the in-process mock.
    #[arg(long)]
    pub no_self_check: bool,

    // --- calibration ---
    /// Measure the client's timing error against the in-process mock (no --url needed).
    #[arg(long)]
    pub calibrate: bool,
    /// Calibration: open-loop rate of the dispatch check.
    #[arg(long, default_value_t = 5000.0)]
    pub calibrate_rate: f64,
    /// Calibration: concurrent streams of the streaming check.
    #[arg(long, default_value_t = 1000)]
    pub calibrate_concurrency: usize,
    /// Calibration: the mock's time to first token in the streaming check.
    #[arg(long, default_value = "50ms")]
    pub calibrate_ttft: String,
    /// Calibration: the mock's inter-token latency in the streaming check.
    #[arg(long, default_value = "50ms")]
    pub calibrate_itl: String,
    /// Calibration: output tokens per request in the streaming check.
    #[arg(long, default_value_t = 16)]
    pub calibrate_output_len: usize,
    /// Calibration: spread the streams' starts over this time (default: one request's duration,
    /// so the streams' tokens are not in lockstep; 0s: all at once, tokens in lockstep).
    #[arg(long)]
    pub calibrate_ramp_up: Option<String>,
    /// Calibration: how long each check runs after its warmup.
    #[arg(long, default_value = "10s")]
    pub calibrate_duration: String,
    /// Calibration: runtime threads of the in-process mock.
    #[arg(long, default_value_t = 1)]
    pub mock_workers: usize,
    /// Runtime threads of the client (default: the number of CPUs).
    #[arg(long)]
    pub client_workers: Option<usize>,

    // --- telemetry, energy and cost (as `run`) ---
    #[command(flatten)]
    #[serde(flatten)]
    pub telemetry: TelemetryArgs,
}

pub fn run(a: LoadArgs) -> anyhow::Result<()> {
    let workers = a
        .client_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("infermeter-load")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        if a.calibrate {
            run_calibration(a).await
        } else {
            run_load(a).await
        }
    })
}

fn dur(text: &str, option: &str) -> anyhow::Result<Duration> {
    parse_duration(text).map_err(|e| anyhow!("{option}: {e}"))
}

fn dist(text: &str, option: &str) -> anyhow::Result<LengthDist> {
    LengthDist::from_str(text).map_err(|e| anyhow!("{option}: {e}"))
}

fn load_tokenizer(spec: &str) -> anyhow::Result<Tokenizer> {
    let p = std::path::Path::new(spec);
    if p.is_file() {
        return Ok(Tokenizer::from_file(p)?);
    }
    if p.is_dir() {
        return Tokenizer::from_dir(p)?.ok_or_else(|| {
            anyhow!(
                "--tokenizer {spec}: no tokenizer.json (nor vocab.json and merges.txt) in that \
                 directory"
            )
        });
    }
    let src = crate::model::open(spec).with_context(|| format!("--tokenizer {spec}"))?;
    src.tokenizer
        .ok_or_else(|| anyhow!("--tokenizer {spec}: that model has no tokenizer (tokenizer.json, or vocab.json and merges.txt)"))
}

/// Ctrl-C sets the returned flag.
fn cancel_on_ctrl_c() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: stopping, writing partial results (Ctrl-C again to abort)");
            let _ = tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
        // Keep the sender alive so receivers never see a closed channel.
        std::future::pending::<()>().await;
    });
    rx
}

struct Parsed {
    endpoint: Endpoint,
    arrival: Arrival,
    warmup: Warmup,
    duration: Option<Duration>,
    num_requests: Option<usize>,
    slo: Option<Slo>,
    spec: SessionSpec,
    profile: Option<Profile>,
    ignore_eos: bool,
    /// How the single step is driven; `None` for `--sweep`.
    mode: Option<Mode>,
}

/// `--endpoint` if given, else the endpoint the `--url` path names, else completions; an
/// `--endpoint` that contradicts the URL's path is an error (the path decides where requests go,
/// `--endpoint` what their bodies look like).
fn resolve_endpoint(flag: Option<&str>, url: Option<&str>) -> anyhow::Result<Endpoint> {
    let from_url = url.and_then(crate::client::openai::endpoint_of_url);
    let Some(flag) = flag else {
        return Ok(from_url.unwrap_or(Endpoint::Completions));
    };
    let chosen = Endpoint::from_str(flag).map_err(|e| anyhow!("--endpoint: {e}"))?;
    match from_url {
        Some(u) if u != chosen => bail!(
            "--endpoint {chosen} contradicts --url {}, whose path is the {u} endpoint ({}): \
             drop one of them",
            url.unwrap_or_default().trim(),
            u.path()
        ),
        _ => Ok(chosen),
    }
}

/// Under `--no-stream` a response arrives in one piece: its "first token" comes with the whole
/// response (TTFT = E2EL) and no per-token time is observed (TPOT undefined). A ttft or tpot
/// objective would be checked against a figure that is not what it names, so both are refused,
/// together when both are given.
fn refuse_unstreamed_slo(slo: &Slo) -> anyhow::Result<()> {
    let mut names = Vec::new();
    let mut why = Vec::new();
    if slo.ttft_s.is_some() {
        names.push("ttft");
        why.push(
            "its TTFT is the time to the whole response (= E2EL, which an e2el objective checks)",
        );
    }
    if slo.tpot_s.is_some() {
        names.push("tpot");
        why.push("no per-token time is observed (TPOT is undefined, not 0)");
    }
    if names.is_empty() {
        return Ok(());
    }
    let names = names.join(" and ");
    bail!(
        "--slo {names} cannot be checked with --no-stream: a non-streamed response arrives in one \
         piece, so {}. Stream, or drop {names} from --slo",
        why.join(", and ")
    )
}

fn parse(a: &LoadArgs) -> anyhow::Result<Parsed> {
    let endpoint = resolve_endpoint(a.endpoint.as_deref(), a.url.as_deref())?;
    let arrival = Arrival::from_str(&a.arrival).map_err(|e| anyhow!("--arrival: {e}"))?;
    let warmup = match &a.warmup {
        Some(w) => Warmup::parse(w)?,
        None => Warmup::None,
    };
    let duration = a
        .duration
        .as_deref()
        .map(|d| dur(d, "--duration"))
        .transpose()?;
    if duration.is_some_and(|d| d.is_zero()) {
        bail!("--duration must be positive");
    }
    let num_requests = match (a.num_requests, duration) {
        (None, None) => Some(100),
        (n, _) => n,
    };
    let slo = a
        .slo
        .as_deref()
        .map(|s| Slo::from_str(s).map_err(|e| anyhow!("--slo: {e}")))
        .transpose()?;
    if let (true, Some(s)) = (a.no_stream, &slo) {
        refuse_unstreamed_slo(s)?;
    }
    let profile = a
        .profile
        .as_deref()
        .map(|p| Profile::from_str(p).map_err(|e| anyhow!("--profile: {e}")))
        .transpose()?;
    let defaults = profile.map(Profile::defaults);
    let source = match (a.workload.as_ref(), a.dataset.to_ascii_lowercase().as_str()) {
        (Some(w), _) => Source::Jsonl(w.clone()),
        (None, "random") => Source::Random,
        (None, kind @ ("sharegpt" | "prompts" | "jsonl")) => {
            let Some(p) = a.dataset_path.clone() else {
                bail!("--dataset {kind} needs --dataset-path FILE");
            };
            match kind {
                "sharegpt" => Source::ShareGpt(p),
                "prompts" => Source::Prompts(p),
                _ => Source::Jsonl(p),
            }
        }
        (None, other) => {
            bail!("--dataset `{other}` is not one of: random, sharegpt, prompts, jsonl")
        }
    };
    let input_len = match (&a.input_len, &defaults) {
        (Some(t), _) => dist(t, "--input-len")?,
        (None, Some(d)) => d.input_len,
        (None, None) => LengthDist::Fixed(128),
    };
    let output_len = a
        .output_len
        .as_deref()
        .map(|t| dist(t, "--output-len"))
        .transpose()?;
    let default_output_len = defaults
        .as_ref()
        .map_or(LengthDist::Fixed(128), |d| d.output_len);
    let turns = match (&a.turns, &defaults) {
        (Some(t), _) => Some(dist(t, "--turns")?),
        (None, Some(d)) => d.turns,
        (None, None) => None,
    };
    let prefix = match (&a.prefix_text, a.prefix_len, &defaults) {
        (Some(t), _, _) => Prefix::Text(t.clone()),
        (None, Some(n), _) => Prefix::Tokens(n),
        (None, None, Some(d)) => d.prefix_len.map_or(Prefix::None, Prefix::Tokens),
        _ => Prefix::None,
    };
    let system_prompt = a.system_prompt.clone().or_else(|| {
        defaults
            .as_ref()
            .and_then(|d| d.system_prompt.map(String::from))
    });
    let total = num_requests.unwrap_or(1000)
        + match warmup {
            Warmup::Requests(k) => k,
            _ => 0,
        };
    let num_sessions = a.num_prompts.unwrap_or(total.min(1000)).max(1);
    // the load mode, decided before the client self-check and the server probe run
    let open = |rate: f64| Mode::Open {
        rate,
        arrival,
        max_concurrency: a.max_concurrency,
    };
    let mode = if a.sweep {
        if arrival == Arrival::Burst {
            bail!(
                "--sweep runs rates: the burst arrival has none (use poisson, constant or gamma)"
            );
        }
        None
    } else {
        Some(match (a.rate, a.concurrency) {
            (Some(_), Some(_)) => {
                bail!("give --rate (open loop) or --concurrency (closed loop), not both")
            }
            (Some(r), None) => open(r),
            (None, Some(c)) => Mode::Closed { concurrency: c },
            (None, None) if arrival == Arrival::Burst => open(0.0),
            (None, None) => {
                bail!("give --rate R (open loop), --concurrency N (closed loop) or --sweep")
            }
        })
    };
    if a.prompt_ids && endpoint == Endpoint::Chat {
        bail!("--prompt-ids: the chat endpoint cannot take token-id prompts");
    }
    let ignore_eos = a
        .ignore_eos
        .unwrap_or(defaults.as_ref().is_some_and(|d| d.ignore_eos));
    Ok(Parsed {
        endpoint,
        arrival,
        warmup,
        duration,
        num_requests,
        slo,
        profile,
        ignore_eos,
        mode,
        spec: SessionSpec {
            source,
            input_len,
            output_len,
            default_output_len,
            turns,
            prefix,
            system_prompt,
            num_sessions,
            seed: a.seed,
            prompt_ids: a.prompt_ids,
            vocab_size: a.vocab_size,
        },
    })
}

fn default_out(prefix: &str) -> PathBuf {
    let stamp = crate::util::utc_timestamp().replace(':', "");
    PathBuf::from("infermeter-results").join(format!("{prefix}-{stamp}.json"))
}

fn hardware() -> Hardware {
    Hardware {
        host: HostInfo::collect(),
        gpus: Vec::new(),
    }
}

/// Build the results step of a finished executor run.
fn finish_step(name: &str, plan: &StepPlan, out: StepOutcome, slo: Option<&Slo>) -> LoadStep {
    let records: Vec<_> = out.measured.iter().map(|r| r.record.clone()).collect();
    let summary = summarize(&records, slo, plan.steady_concurrency());
    let mut errors = std::collections::BTreeMap::new();
    for r in &out.measured {
        if let Some(k) = &r.error_kind {
            *errors.entry(k.clone()).or_insert(0usize) += 1;
        }
    }
    let tokens = TokenAccounting::of(&out.measured);
    LoadStep {
        name: name.to_string(),
        params: plan.params(),
        started_s: out.started_s,
        ended_s: Some(out.ended_s),
        sent: out.sent,
        cancelled: out.cancelled,
        interrupted: out.interrupted,
        warmup_requests: out.warmup,
        requests: out.measured,
        summary: Some(summary),
        errors,
        tokens: Some(tokens),
        saturated: None,
        saturation_reason: None,
        energy: None,
    }
}

fn empty_step(name: &str, plan: &StepPlan, started_s: f64) -> LoadStep {
    LoadStep {
        name: name.to_string(),
        params: plan.params(),
        started_s,
        ended_s: None,
        sent: 0,
        cancelled: 0,
        interrupted: false,
        warmup_requests: Vec::new(),
        requests: Vec::new(),
        summary: None,
        errors: Default::default(),
        tokens: None,
        saturated: None,
        saturation_reason: None,
        energy: None,
    }
}

fn chunk_warning(n: usize) -> String {
    format!(
        "output tokens of {n} request(s) are counted as stream chunks: the server sent no usage \
         and no --tokenizer was given. A chunk may carry several tokens, so output tokens/s, TPOT, \
         J and $ per output token are per chunk, not per token. Give --tokenizer (or let the \
         server send usage) for real token counts."
    )
}

/// The step's energy over its measured window (first measured send to last measured end), its
/// busy time split between prefill and decode by the requests in flight. Not `streaming`, a
/// response's first token is not observed, so there is no split (no prefill/decode energy or cost):
/// it would put the whole request in prefill and price decode at $0.
fn step_energy(tel: &RunTelemetry, step: &LoadStep, streaming: bool) -> Option<EnergyReport> {
    let timeline = tel.snapshot()?;
    let records: Vec<RequestRecord> = step.requests.iter().map(|r| r.record.clone()).collect();
    let window = match (
        records.iter().map(|r| r.send_s).reduce(f64::min),
        records.iter().map(RequestRecord::finish_s).reduce(f64::max),
    ) {
        (Some(a), Some(b)) if b > a => (a, b),
        _ => (step.started_s, step.ended_s?),
    };
    let work = match &step.summary {
        Some(s) => Work {
            requests: s.completed as f64,
            input_tokens: s.total_input_tokens as f64,
            output_tokens: s.total_output_tokens as f64,
        },
        None => Work::of_records(&records),
    };
    let ok: Vec<RequestRecord> = records.iter().filter(|r| r.is_ok()).cloned().collect();
    let segments = streaming.then(|| energy::segments_from_requests(&ok));
    // The steady state: the same slots `finish_step` found it with (StepPlan::steady_concurrency).
    let steady = step
        .params
        .concurrency
        .or(step.params.max_concurrency)
        .and_then(|c| steady_window(&records, c))
        .zip(step.summary.as_ref().and_then(|s| s.steady_state.as_ref()));
    Some(energy::summarize_with_steady_state(
        Some(&timeline),
        window,
        &work,
        steady,
        segments.as_deref(),
        tel.energy_options(),
    ))
}

/// The telemetry section with the steps' energy combined (with `stop`, the final timeline).
fn load_section(
    tel: &mut RunTelemetry,
    steps: &[LoadStep],
    stop: bool,
) -> Option<TelemetrySection> {
    let reports: Vec<EnergyReport> = steps.iter().filter_map(|s| s.energy.clone()).collect();
    let energy = EnergyReport::combine(&reports, tel.energy_options());
    tel.section_with(energy, stop)
}

/// The progress line.
struct ProgressLine {
    bar: indicatif::ProgressBar,
    history: std::collections::VecDeque<(Instant, u64)>,
}

impl ProgressLine {
    fn new(hidden: bool) -> Self {
        let bar = if hidden {
            indicatif::ProgressBar::hidden()
        } else {
            let b = indicatif::ProgressBar::new_spinner();
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            {
                b.set_style(style);
            }
            b
        };
        ProgressLine {
            bar,
            history: Default::default(),
        }
    }

    fn update(&mut self, step: &str, p: &Progress) {
        use std::sync::atomic::Ordering::Relaxed;
        let (sent, done, failed) = (
            p.sent.load(Relaxed),
            p.completed.load(Relaxed),
            p.failed.load(Relaxed),
        );
        let now = Instant::now();
        self.history.push_back((now, done + failed));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(2))
        {
            self.history.pop_front();
        }
        let rate = match (self.history.front(), self.history.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let ttft = p
            .rolling_ttft_p50()
            .map_or("-".into(), |t| format!("{:.1} ms", t * 1e3));
        self.bar.set_message(format!(
            "{step} | sent {sent} completed {done} failed {failed} | {rate:.1} req/s | TTFT p50 {ttft}"
        ));
        self.bar.tick();
    }
}

/// Run one step with the progress line and incremental saves.
async fn run_step(
    runner: &Arc<Runner>,
    plan: &StepPlan,
    name: &str,
    writer: &mut LoadResultsWriter,
    line: &mut ProgressLine,
    slo: Option<&Slo>,
    tel: &mut RunTelemetry,
) -> anyhow::Result<usize> {
    let idx = writer.results.steps.len();
    tel.mark();
    let started = runner.epoch.elapsed().as_secs_f64();
    writer.results.steps.push(empty_step(name, plan, started));
    writer.save(true)?;
    let live = Arc::new(Mutex::new(LiveRecords::default()));
    let fut = runner.run_step(plan, Arc::clone(&live));
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let outcome = loop {
        tokio::select! {
            r = &mut fut => break r?,
            _ = tick.tick() => {
                line.update(name, &runner.progress);
                if writer.due() {
                    // Move the new records out (no copy under the lock the requests push to).
                    let (warm, measured) = {
                        let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
                        (std::mem::take(&mut l.warmup), std::mem::take(&mut l.measured))
                    };
                    let s = &mut writer.results.steps[idx];
                    s.requests.extend(measured);
                    s.warmup_requests.extend(warm);
                    // Recorded so far; the final count of sent requests comes with the outcome.
                    s.sent = s.requests.len() + s.warmup_requests.len();
                    writer.save(false)?;
                }
            }
        }
    };
    line.update(name, &runner.progress);
    let mut outcome = outcome;
    let saved = &mut writer.results.steps[idx];
    outcome.measured.append(&mut saved.requests);
    outcome.warmup.append(&mut saved.warmup_requests);
    outcome.measured.sort_by_key(|r| r.record.id);
    outcome.warmup.sort_by_key(|r| r.record.id);
    tel.mark();
    let mut step = finish_step(name, plan, outcome, slo);
    if let Some(n) = step.chunk_counted_outputs() {
        line.bar
            .suspend(|| eprintln!("warning: {name}: {}", chunk_warning(n)));
    }
    step.energy = step_energy(tel, &step, writer.results.target.streaming);
    writer.results.steps[idx] = step;
    writer.results.telemetry = load_section(tel, &writer.results.steps, false);
    if writer.results.target.server_model.is_none() {
        writer.results.target.server_model = runner
            .server_model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
    }
    writer.save(true)?;
    Ok(idx)
}

async fn self_check(cancel: &watch::Receiver<bool>) -> Option<TimingCheck> {
    match calibrate::run_check(&calibrate::self_check_spec(), cancel.clone()).await {
        Ok((check, _)) => {
            eprintln!("client timing: {}", calibrate::describe(&check));
            Some(check)
        }
        Err(e) => {
            eprintln!("warning: client timing self-check failed: {e}");
            None
        }
    }
}

async fn run_load(a: LoadArgs) -> anyhow::Result<()> {
    let Some(url) = a.url.clone() else {
        bail!("--url is required (or use --calibrate to measure the client against the mock)");
    };
    let p = parse(&a)?;
    let tokenizer = a
        .tokenizer
        .as_deref()
        .map(load_tokenizer)
        .transpose()?
        .map(Arc::new);
    let sessions =
        session::build_sessions(&p.spec, tokenizer.as_deref()).context("building the workload")?;
    let multi_turn = sessions.iter().any(|s| s.turns.len() > 1);
    let extra_body = match &a.extra_body {
        None => serde_json::Map::new(),
        Some(t) => match serde_json::from_str::<serde_json::Value>(t) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => bail!("--extra-body must be a JSON object, e.g. '{{\"temperature\":0}}'"),
            Err(e) => bail!("--extra-body is not JSON: {e}"),
        },
    };
    let mut opts = ClientOptions::new(&url, p.endpoint);
    opts.model = a.model.clone();
    opts.api_key = a.api_key.clone().or_else(|| {
        std::env::var("OPENAI_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
    });
    opts.stream = !a.no_stream;
    opts.include_usage = !a.no_usage;
    opts.ignore_eos = p.ignore_eos;
    opts.min_tokens = a.min_tokens;
    opts.extra_body = extra_body;
    opts.request_timeout = dur(&a.timeout, "--timeout")?;
    opts.idle_timeout = dur(&a.idle_timeout, "--idle-timeout")?;
    opts.keep_text = a.save_text || tokenizer.is_some() || multi_turn;
    let mut client = OpenAiClient::new(opts).map_err(|e| anyhow!("{e}"))?;
    let listed = match client.list_models().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("warning: {e} (sending without a model field unless --model is given)");
            Vec::new()
        }
    };
    if client.options().model.is_none() {
        client.set_model(listed.first().cloned());
    }
    let cancel = cancel_on_ctrl_c();
    let timing = if a.no_self_check {
        None
    } else {
        self_check(&cancel).await
    };

    let prompt_format = match (
        sessions.iter().flat_map(|s| &s.turns).next(),
        tokenizer.is_some(),
    ) {
        (Some(t), _) if matches!(t.input, session::TurnInput::Ids(_)) => "token ids (exact)",
        _ if !matches!(p.spec.source, Source::Random) => "dataset text",
        (_, true) => "text, exact length by the tokenizer",
        (_, false) => "random words, approximate length (usage gives the real count)",
    };
    let workload = json!({
        "source": match &p.spec.source {
            Source::Random => "random".to_string(),
            Source::ShareGpt(f) => format!("sharegpt:{}", f.display()),
            Source::Prompts(f) => format!("prompts:{}", f.display()),
            Source::Jsonl(f) => format!("jsonl:{}", f.display()),
        },
        "profile": p.profile.map(|x| x.to_string()),
        "input_len": p.spec.input_len.to_string(),
        "output_len": p.spec.output_len.map(|d| d.to_string()),
        "default_output_len": p.spec.default_output_len.to_string(),
        "turns": p.spec.turns.map(|d| d.to_string()),
        "prefix": match &p.spec.prefix {
            Prefix::None => json!(null),
            Prefix::Text(t) => json!({"text": t}),
            Prefix::Tokens(n) => json!({"tokens": n}),
        },
        "system_prompt": p.spec.system_prompt,
        "tokenizer": a.tokenizer,
        "prompt_format": prompt_format,
        "ignore_eos": p.ignore_eos,
        "min_tokens": a.min_tokens,
        "seed": a.seed,
        "sessions": session::describe(&sessions),
    });
    let target = TargetInfo {
        url: client.url().to_string(),
        endpoint: p.endpoint.to_string(),
        streaming: !a.no_stream,
        requested_model: client.options().model.clone(),
        listed_models: listed,
        server_model: None,
    };
    let mut results = LoadResults::new(serde_json::to_value(&a)?, target, workload, hardware());
    results.client_timing.extend(timing);
    let out_path = a.out.clone().unwrap_or_else(|| default_out("load"));
    let epoch = Instant::now();
    // the server's GPUs are not ours to know: --gpus, else all
    let mut tel = RunTelemetry::start(&a.telemetry, epoch, None)?;
    results.telemetry = load_section(&mut tel, &[], false);
    results.hardware.gpus = tel
        .gpus()
        .iter()
        .filter_map(|g| serde_json::to_value(g).ok())
        .collect();
    let mut writer = LoadResultsWriter::new(&out_path, results)
        .with_context(|| format!("writing {}", out_path.display()))?;
    eprintln!(
        "load: {} ({}), {} sessions; results -> {}",
        client.url(),
        client
            .options()
            .model
            .as_deref()
            .unwrap_or("no model field"),
        sessions.len(),
        out_path.display()
    );
    eprintln!("{}", tel.describe());
    let runner = Arc::new(Runner::new(
        client,
        sessions,
        epoch,
        cancel.clone(),
        tokenizer,
        a.save_text,
    )?);
    let mut line = ProgressLine::new(a.no_progress);
    let ramp_up = a
        .ramp_up
        .as_deref()
        .map(|r| dur(r, "--ramp-up"))
        .transpose()?;
    let base = |mode: Mode| StepPlan {
        mode,
        num_requests: p.num_requests,
        duration: p.duration,
        warmup: p.warmup,
        seed: a.seed,
        ramp_up,
    };
    let open = |rate: f64| Mode::Open {
        rate,
        arrival: p.arrival,
        max_concurrency: a.max_concurrency,
    };
    if let Some(mode) = p.mode {
        run_step(
            &runner,
            &base(mode),
            "load",
            &mut writer,
            &mut line,
            p.slo.as_ref(),
            &mut tel,
        )
        .await?;
    } else {
        let probe = base(Mode::Closed {
            concurrency: a.sweep_concurrency,
        });
        let idx = run_step(
            &runner,
            &probe,
            "probe",
            &mut writer,
            &mut line,
            p.slo.as_ref(),
            &mut tel,
        )
        .await?;
        let max = writer.results.steps[idx]
            .summary
            .as_ref()
            .map_or(0.0, sweep::max_throughput);
        let rates = sweep::sweep_rates(max, a.sweep_steps.max(1));
        writer.results.sweep = Some(SweepInfo {
            probe_concurrency: a.sweep_concurrency,
            max_throughput_rps: max,
            rates: rates.clone(),
            criterion: sweep::CRITERION.into(),
            saturated_at_rps: None,
        });
        if rates.is_empty() {
            eprintln!("sweep: the probe completed no request; no rates to run");
        }
        for rate in rates {
            if *cancel.borrow() {
                break;
            }
            let name = format!("rate={rate:.3}");
            let idx = run_step(
                &runner,
                &base(open(rate)),
                &name,
                &mut writer,
                &mut line,
                p.slo.as_ref(),
                &mut tel,
            )
            .await?;
            let step = &mut writer.results.steps[idx];
            let (sat, why) = sweep::saturation(&step.requests);
            step.saturated = Some(sat);
            step.saturation_reason = Some(why.clone());
            eprintln!("{name}: {}{why}", if sat { "saturated: " } else { "" });
            if sat {
                if let Some(s) = writer.results.sweep.as_mut() {
                    s.saturated_at_rps = Some(rate);
                }
                writer.save(true)?;
                break;
            }
            writer.save(true)?;
        }
    }
    line.bar.finish_and_clear();
    writer.results.telemetry = load_section(&mut tel, &writer.results.steps, true);
    let interrupted = *cancel.borrow();
    writer.results.complete = !interrupted;
    writer.save(true)?;
    print_summary(&writer.results);
    if interrupted {
        bail!("interrupted: partial results in {}", out_path.display());
    }
    eprintln!("results: {}", out_path.display());
    Ok(())
}

async fn run_calibration(a: LoadArgs) -> anyhow::Result<()> {
    let duration = dur(&a.calibrate_duration, "--calibrate-duration")?;
    let stream_ttft = dur(&a.calibrate_ttft, "--calibrate-ttft")?;
    let stream_itl = dur(&a.calibrate_itl, "--calibrate-itl")?;
    let stream_ramp = match &a.calibrate_ramp_up {
        Some(r) => dur(r, "--calibrate-ramp-up")?,
        None => stream_ttft + stream_itl * (a.calibrate_output_len.max(1) as u32 - 1),
    };
    let specs = vec![
        CheckSpec {
            name: "calibrate-dispatch".into(),
            plan: StepPlan {
                mode: Mode::Open {
                    rate: a.calibrate_rate,
                    arrival: Arrival::Constant,
                    max_concurrency: None,
                },
                num_requests: None,
                duration: Some(duration),
                warmup: Warmup::Time(Duration::from_secs(1)),
                seed: a.seed,
                ramp_up: None,
            },
            ttft: Duration::from_millis(1),
            itl: Duration::from_millis(1),
            output_tokens: 2,
            mock_workers: a.mock_workers,
        },
        CheckSpec {
            name: "calibrate-streams".into(),
            plan: StepPlan {
                mode: Mode::Closed {
                    concurrency: a.calibrate_concurrency,
                },
                num_requests: None,
                duration: Some(duration),
                warmup: Warmup::Time(Duration::from_secs(2).max(stream_ramp)),
                seed: a.seed,
                ramp_up: Some(stream_ramp),
            },
            ttft: stream_ttft,
            itl: stream_itl,
            output_tokens: a.calibrate_output_len.max(1),
            mock_workers: a.mock_workers,
        },
    ];
    let cancel = cancel_on_ctrl_c();
    let out_path = a.out.clone().unwrap_or_else(|| default_out("calibrate"));
    let target = TargetInfo {
        url: "in-process mock on 127.0.0.1".into(),
        endpoint: "completions".into(),
        streaming: true,
        requested_model: None,
        listed_models: vec!["infermeter-mock".into()],
        server_model: Some("infermeter-mock".into()),
    };
    let workload = json!({"source": "calibration", "prompt_format": "token ids (exact)"});
    let results = LoadResults::new(serde_json::to_value(&a)?, target, workload, hardware());
    let mut writer = LoadResultsWriter::new(&out_path, results)?;
    for spec in &specs {
        if *cancel.borrow() {
            break;
        }
        eprintln!("{}: running ...", spec.name);
        let (check, outcome) = calibrate::run_check(spec, cancel.clone()).await?;
        println!("{}", calibrate::describe(&check));
        let within = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!(
            "  p99 within 1 ms: dispatch {}, TTFT {}, ITL {}",
            within(check.dispatch_within_bound),
            within(check.ttft_within_bound),
            within(check.itl_within_bound)
        );
        let step = finish_step(&spec.name, &spec.plan, outcome, None);
        if let Some(s) = &step.summary {
            println!(
                "  {} requests completed at {:.0} req/s, {} failed",
                s.completed, s.throughput.requests_per_s, s.failed
            );
        }
        writer.results.steps.push(step);
        writer.results.client_timing.push(check);
        writer.save(true)?;
    }
    let interrupted = *cancel.borrow();
    writer.results.complete = !interrupted;
    writer.save(true)?;
    eprintln!("results: {}", out_path.display());
    if interrupted {
        bail!("interrupted: partial results in {}", out_path.display());
    }
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.1}", s * 1e3))
}

fn print_summary(r: &LoadResults) {
    println!(
        "{:<16} {:>6} {:>6} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "step",
        "ok",
        "fail",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "ITL p50",
        "E2EL p50",
        "queue p99",
        "goodput"
    );
    for s in &r.steps {
        let Some(sum) = &s.summary else { continue };
        let l = &sum.latency;
        let p = |x: &Option<crate::metrics::Summary>, f: fn(&crate::metrics::Summary) -> f64| {
            ms(x.as_ref().map(f))
        };
        println!(
            "{:<16} {:>6} {:>6} {:>9.2} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
            s.name,
            sum.completed,
            sum.failed,
            sum.throughput.requests_per_s,
            sum.throughput.output_tokens_per_s,
            p(&l.ttft, |x| x.p50),
            p(&l.ttft, |x| x.p99),
            p(&l.tpot, |x| x.p50),
            p(&l.itl, |x| x.p50),
            p(&l.e2el, |x| x.p50),
            p(&l.client_queue, |x| x.p99),
            sum.goodput_requests_per_s
                .map_or("-".into(), |g| format!("{g:.2}")),
        );
        if !s.errors.is_empty() {
            let e: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            println!("  errors: {}", e.join(", "));
        }
        if let Some(n) = s.chunk_counted_outputs() {
            println!("  WARNING: {}", chunk_warning(n));
        }
        if let Some(report) = &s.energy {
            if let Some(e) = &report.energy {
                let num = |v: Option<f64>, d: usize| v.map_or("-".into(), |x| format!("{x:.d$}"));
                println!(
                    "  energy: {:.2} J of {} ({:?}, sampled every {} ms, {:.0}% covered), {:.1} W \
                     average; whole step: {} J/token, {} tokens/J",
                    e.energy_j,
                    e.scope.join("+"),
                    e.method,
                    e.sampling_interval_s * 1e3,
                    e.coverage * 100.0,
                    e.avg_power_w,
                    num(e.j_per_token, 4),
                    num(e.tokens_per_j, 2),
                );
                match report
                    .steady_state
                    .as_ref()
                    .and_then(|st| st.energy.as_ref())
                {
                    Some(st) => println!(
                        "  energy, steady state ({:.3} s, all slots busy): {} J/token, {} tokens/J",
                        report.steady_state.as_ref().map_or(0.0, |x| x.duration_s),
                        num(st.j_per_token, 4),
                        num(st.tokens_per_j, 2),
                    ),
                    None => println!(
                        "  energy, steady state: - (no steady-state window: the step never had \
                         all its slots busy, or no concurrency to fill: give --max-concurrency)"
                    ),
                }
            }
        }
        if let Some(t) = &s.tokens {
            for (what, m) in [
                ("prompt", &t.prompt_mismatch),
                ("output", &t.output_mismatch),
            ] {
                if let Some(m) = m {
                    println!(
                        "  {what} tokens: usage {} vs tokenizer {} ({:+.1}%, mean |diff| {:.1}, max {}) over {} requests",
                        m.usage_total,
                        m.tokenizer_total,
                        m.relative_diff * 100.0,
                        m.mean_abs_diff,
                        m.max_abs_diff,
                        m.requests
                    );
                }
            }
        }
    }
    println!("(times in ms; queue = client_queue, send - scheduled)");
    if !r.target.streaming {
        println!(
            "(not streamed: TTFT and E2EL are both the time to the whole response; TPOT and ITL \
             are not observed, and no prefill/decode split, so no $/1M input or output tokens)"
        );
    }
}
