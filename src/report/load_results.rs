//! The results file of `infermeter load` (`kind: "load"`): one JSON document per invocation, validated
//! by `schemas/results.schema.json` (`$defs/load_file`). It carries the command and resolved options,
//! the tool version, the host, the target (URL, endpoint, the model the server reported), the
//! workload, the client's own timing error (a check against the in-process mock server), and one
//! step per executor run (a plain run has one; a sweep has its probe and its rates), each with the
//! per-request records, the warmup records kept apart, the summary from [`crate::metrics::summarize`],
//! error counts and the token-count check (server usage against the local tokenizer).
//!
//! Written incrementally and atomically ([`LoadResultsWriter`]): the file on disk is always a complete
//! JSON document; `complete` stays false until the run ends normally (an interrupted run keeps what
//! it measured).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::results::{Hardware, ToolInfo, SCHEMA_VERSION};
use crate::error::{Error, Result};
use crate::metrics::{RequestRecord, RunSummary, Summary};

/// Where the token counts of a request came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// The server's `usage`.
    Usage,
    /// The local tokenizer (`--tokenizer`).
    Tokenizer,
    /// The workload's own exact count (token-id prompts, random prompts built with the tokenizer).
    Workload,
    /// The number of content chunks (no usage, no tokenizer): a lower bound when a chunk carries
    /// several tokens.
    Chunks,
    /// Nothing known.
    None,
}

/// One request of a load run: the common record plus what the HTTP exchange said.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LoadRequestRecord {
    #[serde(flatten)]
    pub record: RequestRecord,
    /// The session (conversation) it belongs to and its 0-based turn.
    pub session: u64,
    pub turn: usize,
    /// Class of the error (`http_500`, `io`, `timeout`, ...), when it failed.
    pub error_kind: Option<String>,
    pub http_status: Option<u16>,
    pub finish_reason: Option<String>,
    pub prompt_tokens_source: TokenSource,
    pub output_tokens_source: TokenSource,
    /// The server's `usage` counts, when given.
    pub usage_prompt_tokens: Option<usize>,
    pub usage_output_tokens: Option<usize>,
    /// The local tokenizer's counts, when `--tokenizer` was given.
    pub tokenizer_prompt_tokens: Option<usize>,
    pub tokenizer_output_tokens: Option<usize>,
    /// The generated text (`--save-text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Calibration against the in-process mock: when the mock wrote each content chunk (same clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock_emit_s: Option<Vec<f64>>,
}

/// Server usage against the local tokenizer over the requests that have both.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CountCheck {
    pub requests: usize,
    pub usage_total: usize,
    pub tokenizer_total: usize,
    /// Mean of |usage − tokenizer| per request.
    pub mean_abs_diff: f64,
    pub max_abs_diff: usize,
    /// (tokenizer_total − usage_total) / usage_total; 0 when usage_total is 0.
    pub relative_diff: f64,
}

impl CountCheck {
    pub fn of(pairs: &[(usize, usize)]) -> Option<CountCheck> {
        if pairs.is_empty() {
            return None;
        }
        let usage_total: usize = pairs.iter().map(|p| p.0).sum();
        let tokenizer_total: usize = pairs.iter().map(|p| p.1).sum();
        let diffs: Vec<usize> = pairs.iter().map(|&(u, t)| u.abs_diff(t)).collect();
        Some(CountCheck {
            requests: pairs.len(),
            usage_total,
            tokenizer_total,
            mean_abs_diff: diffs.iter().sum::<usize>() as f64 / pairs.len() as f64,
            max_abs_diff: diffs.iter().copied().max().unwrap_or(0),
            relative_diff: if usage_total > 0 {
                (tokenizer_total as f64 - usage_total as f64) / usage_total as f64
            } else {
                0.0
            },
        })
    }
}

/// Where a step's token counts came from and how the two sources agree.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct TokenAccounting {
    /// Requests per source of their output count (`usage`, `tokenizer`, `chunks`, ...).
    pub output_sources: BTreeMap<String, usize>,
    pub prompt_sources: BTreeMap<String, usize>,
    /// Usage against tokenizer, prompts (`None` without both).
    pub prompt_mismatch: Option<CountCheck>,
    pub output_mismatch: Option<CountCheck>,
}

impl TokenAccounting {
    pub fn of(records: &[LoadRequestRecord]) -> TokenAccounting {
        let name = |s: TokenSource| {
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        };
        let mut t = TokenAccounting::default();
        let ok: Vec<&LoadRequestRecord> = records.iter().filter(|r| r.record.is_ok()).collect();
        for r in &ok {
            *t.output_sources
                .entry(name(r.output_tokens_source))
                .or_default() += 1;
            *t.prompt_sources
                .entry(name(r.prompt_tokens_source))
                .or_default() += 1;
        }
        let pairs = |u: fn(&LoadRequestRecord) -> Option<usize>,
                     k: fn(&LoadRequestRecord) -> Option<usize>| {
            ok.iter()
                .filter_map(|r| Some((u(r)?, k(r)?)))
                .collect::<Vec<_>>()
        };
        t.prompt_mismatch = CountCheck::of(&pairs(
            |r| r.usage_prompt_tokens,
            |r| r.tokenizer_prompt_tokens,
        ));
        t.output_mismatch = CountCheck::of(&pairs(
            |r| r.usage_output_tokens,
            |r| r.tokenizer_output_tokens,
        ));
        t
    }
}

/// What defines a step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StepParams {
    /// `open` (arrivals at a rate) or `closed` (virtual users).
    pub mode: String,
    pub rate: Option<f64>,
    pub arrival: Option<String>,
    pub concurrency: Option<usize>,
    pub max_concurrency: Option<usize>,
    pub num_requests: Option<usize>,
    pub duration_s: Option<f64>,
    /// `N` requests or `Ds` seconds, as given.
    pub warmup: Option<String>,
    /// Closed loop: the users' starts spread over this many seconds.
    #[serde(default)]
    pub ramp_up_s: Option<f64>,
}

/// One executor run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LoadStep {
    /// `load`, `probe`, `rate=12.5`, `calibrate-dispatch`, ...
    pub name: String,
    pub params: StepParams,
    pub started_s: f64,
    pub ended_s: Option<f64>,
    /// Requests sent (warmup included).
    pub sent: usize,
    /// Requests in flight when the run was interrupted (not recorded).
    pub cancelled: usize,
    pub interrupted: bool,
    /// Excluded from every metric.
    pub warmup_requests: Vec<LoadRequestRecord>,
    pub requests: Vec<LoadRequestRecord>,
    pub summary: Option<RunSummary>,
    /// Failed requests by class.
    pub errors: BTreeMap<String, usize>,
    pub tokens: Option<TokenAccounting>,
    /// Sweep steps: whether this step saturated the server, and why.
    pub saturated: Option<bool>,
    pub saturation_reason: Option<String>,
    /// Energy (and cost) of the step's measured window, from the telemetry timeline: from the first
    /// measured send to the last measured end; null without telemetry.
    #[serde(default)]
    pub energy: Option<crate::metrics::energy::EnergyReport>,
}

impl LoadStep {
    /// Successful requests whose output tokens are the count of stream chunks (no usage from the
    /// server, no `--tokenizer`); `None` when there is none.
    pub fn chunk_counted_outputs(&self) -> Option<usize> {
        self.tokens
            .as_ref()
            .and_then(|t| t.output_sources.get("chunks").copied())
            .filter(|&n| n > 0)
    }
}

/// The client's timing error, measured against the in-process mock server on loopback.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TimingCheck {
    /// `self-check` (the short automatic check) or the calibration step's name.
    pub name: String,
    pub mode: String,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub requests: usize,
    pub failed: usize,
    /// The mock's configured time to first token, inter-token latency and output length.
    pub configured_ttft_s: f64,
    pub configured_itl_s: f64,
    pub output_tokens: usize,
    /// send − scheduled: how late the client sent against its schedule.
    pub dispatch_lag: Option<Summary>,
    /// client chunk time − mock emit time: loopback, HTTP stack and chunk handling.
    pub delivery_latency: Option<Summary>,
    /// measured ttft − configured ttft.
    pub ttft_error: Option<Summary>,
    /// measured itl − configured itl (pooled).
    pub itl_error: Option<Summary>,
    /// The bound the acceptance uses (1 ms) and whether each p99 is within it.
    pub bound_s: f64,
    pub dispatch_within_bound: Option<bool>,
    pub ttft_within_bound: Option<bool>,
    pub itl_within_bound: Option<bool>,
}

/// The server under test.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TargetInfo {
    /// The URL requests went to.
    pub url: String,
    /// `completions` or `chat`.
    pub endpoint: String,
    pub streaming: bool,
    /// The `model` field sent.
    pub requested_model: Option<String>,
    /// What `GET /v1/models` listed.
    pub listed_models: Vec<String>,
    /// The `model` field of the first response.
    pub server_model: Option<String>,
}

/// The sweep's outcome.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SweepInfo {
    /// Concurrency of the closed-loop probe.
    pub probe_concurrency: usize,
    /// Completed requests per second the probe reached.
    pub max_throughput_rps: f64,
    /// The rates planned, in order.
    pub rates: Vec<f64>,
    /// The criterion, in words.
    pub criterion: String,
    /// The first rate that saturated, if one did (later rates were skipped).
    pub saturated_at_rps: Option<f64>,
}

/// A `load` results file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LoadResults {
    pub schema_version: u32,
    /// Always "load".
    pub kind: String,
    pub tool: ToolInfo,
    pub command: Vec<String>,
    pub config: serde_json::Value,
    pub started_at: String,
    pub complete: bool,
    pub hardware: Hardware,
    pub target: TargetInfo,
    pub workload: serde_json::Value,
    /// The client's timing error against the mock (the automatic self-check, or `--calibrate`).
    pub client_timing: Vec<TimingCheck>,
    pub sweep: Option<SweepInfo>,
    /// Times in steps and requests are seconds from this run's epoch (monotonic clock).
    pub steps: Vec<LoadStep>,
    /// The telemetry sampled during the steps (sources, timeline, the steps' energy together);
    /// null when off.
    #[serde(default)]
    pub telemetry: Option<crate::telemetry::TelemetrySection>,
}

impl LoadResults {
    pub fn new(
        config: serde_json::Value,
        target: TargetInfo,
        workload: serde_json::Value,
        hardware: Hardware,
    ) -> Self {
        LoadResults {
            schema_version: SCHEMA_VERSION,
            kind: "load".into(),
            tool: ToolInfo::current(),
            command: std::env::args().collect(),
            config,
            started_at: crate::util::utc_timestamp(),
            complete: false,
            hardware,
            target,
            workload,
            client_timing: Vec::new(),
            sweep: None,
            steps: Vec::new(),
            telemetry: None,
        }
    }
}

/// Keeps a load results document and writes it atomically (compact JSON: load files hold many
/// records). Unforced saves are spaced by at least two seconds and by at least 100 times the
/// previous write's cost, so saving a large run stays about 1% of the time and of one core.
pub struct LoadResultsWriter {
    path: PathBuf,
    pub results: LoadResults,
    last_write: Option<Instant>,
    last_cost: Duration,
}

impl LoadResultsWriter {
    pub fn new(path: &Path, results: LoadResults) -> Result<Self> {
        let mut w = LoadResultsWriter {
            path: path.to_path_buf(),
            results,
            last_write: None,
            last_cost: Duration::ZERO,
        };
        w.save(true)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an unforced save would write now.
    pub fn due(&self) -> bool {
        let interval = Duration::from_secs(2).max(self.last_cost * 100);
        self.last_write.is_none_or(|t| t.elapsed() >= interval)
    }

    pub fn save(&mut self, force: bool) -> Result<()> {
        if !force && !self.due() {
            return Ok(());
        }
        let t = Instant::now();
        let bytes = serde_json::to_vec(&self.results).map_err(|e| Error::Json {
            file: self.path.display().to_string(),
            cause: e,
        })?;
        crate::util::write_atomic(&self.path, &bytes)?;
        self.last_cost = t.elapsed();
        self.last_write = Some(Instant::now());
        Ok(())
    }
}

/// Read a load results file.
pub fn read_load_results(path: &Path) -> Result<LoadResults> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let r: LoadResults = serde_json::from_str(&text).map_err(|source| Error::Json {
        file: path.display().to_string(),
        cause: source,
    })?;
    if r.schema_version != SCHEMA_VERSION || r.kind != "load" {
        return Err(Error::Invalid(format!(
            "{}: not a load results file of schema_version {SCHEMA_VERSION} (kind `{}`, version {})",
            path.display(),
            r.kind,
            r.schema_version
        )));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        ok: bool,
        usage: Option<(usize, usize)>,
        tok: Option<(usize, usize)>,
    ) -> LoadRequestRecord {
        LoadRequestRecord {
            record: RequestRecord {
                id: 0,
                scheduled_s: 0.0,
                send_s: 0.0,
                first_token_s: Some(0.1),
                chunk_times_s: vec![0.1],
                end_s: Some(0.2),
                prompt_tokens: 3,
                output_tokens: 1,
                error: (!ok).then(|| "x".to_string()),
            },
            session: 0,
            turn: 0,
            error_kind: None,
            http_status: Some(200),
            finish_reason: None,
            prompt_tokens_source: TokenSource::Usage,
            output_tokens_source: if usage.is_some() {
                TokenSource::Usage
            } else {
                TokenSource::Chunks
            },
            usage_prompt_tokens: usage.map(|u| u.0),
            usage_output_tokens: usage.map(|u| u.1),
            tokenizer_prompt_tokens: tok.map(|t| t.0),
            tokenizer_output_tokens: tok.map(|t| t.1),
            text: None,
            mock_emit_s: None,
        }
    }

    #[test]
    fn token_accounting_compares_usage_and_tokenizer() {
        let rs = vec![
            rec(true, Some((10, 5)), Some((12, 5))),
            rec(true, Some((10, 5)), Some((10, 2))),
            rec(true, None, Some((1, 1))),
            rec(false, Some((100, 100)), Some((0, 0))),
        ];
        let t = TokenAccounting::of(&rs);
        assert_eq!(t.output_sources["usage"], 2);
        assert_eq!(t.output_sources["chunks"], 1);
        let p = t.prompt_mismatch.unwrap();
        assert_eq!((p.requests, p.usage_total, p.tokenizer_total), (2, 20, 22));
        assert_eq!((p.mean_abs_diff, p.max_abs_diff), (1.0, 2));
        assert!((p.relative_diff - 0.1).abs() < 1e-12);
        let o = t.output_mismatch.unwrap();
        assert_eq!(
            (o.usage_total, o.tokenizer_total, o.max_abs_diff),
            (10, 7, 3)
        );
        assert_eq!(CountCheck::of(&[]), None);
    }

    #[test]
    fn records_flatten_and_round_trip() {
        let r = rec(true, Some((1, 2)), None);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["send_s"], 0.0);
        assert_eq!(v["output_tokens_source"], "usage");
        assert!(v.get("text").is_none());
        let back: LoadRequestRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn writer_writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.json");
        let results = LoadResults::new(
            serde_json::json!({}),
            TargetInfo {
                url: "http://127.0.0.1:1/v1/completions".into(),
                endpoint: "completions".into(),
                streaming: true,
                requested_model: None,
                listed_models: vec![],
                server_model: None,
            },
            serde_json::json!({"source": "random"}),
            Hardware {
                host: crate::telemetry::host::HostInfo::collect(),
                gpus: vec![],
            },
        );
        let mut w = LoadResultsWriter::new(&path, results).unwrap();
        assert!(!w.due());
        w.results.complete = true;
        w.save(true).unwrap();
        let back = read_load_results(&path).unwrap();
        assert!(back.complete);
        assert_eq!(back.kind, "load");
    }
}
