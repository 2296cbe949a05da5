//! The results file: one JSON document per run, versioned (`schema_version`), validated by
//! `schemas/results.schema.json`. It carries the exact command and resolved config, the tool version
//! and git commit, the hardware, the model and engine settings, the workload, and per phase the
//! per-request and per-step records and their summaries. Reports are built from these files only.
//!
//! Written incrementally and atomically ([`ResultsWriter`]): the file on disk is always a complete
//! JSON document, and an interrupted run keeps every phase and request it finished (`complete` stays
//! false until the end).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::engine::{EngineConfig, FinishReason, StepRecord};
use crate::error::{Error, Result};
use crate::metrics::{RequestRecord, RunSummary};
use crate::model::ModelConfig;
use crate::telemetry::host::HostInfo;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
    pub git_commit: String,
}

impl ToolInfo {
    pub fn current() -> Self {
        Self {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("INFERMETER_GIT_COMMIT").into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hardware {
    pub host: HostInfo,
    /// GPUs seen (filled once the CUDA backend and NVML telemetry land).
    pub gpus: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// Directory or embedded name.
    pub source: String,
    /// "safetensors" or "dummy".
    pub weights: String,
    pub backend: String,
    /// Compute dtype of the backend.
    pub dtype: String,
    pub num_parameters: usize,
    #[serde(deserialize_with = "model_config_of_any_version")]
    pub config: ModelConfig,
}

/// A results file's model config, whichever version wrote it: files from before a field of
/// [`ModelConfig`] existed lack it, and get what those versions did (`model_type`: the arch, which
/// was the model type; `o_proj_bias`: `attention_bias`, which covered o_proj too).
fn model_config_of_any_version<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<ModelConfig, D::Error> {
    use serde::Deserialize;
    let mut v = serde_json::Value::deserialize(d)?;
    if let Some(obj) = v.as_object_mut() {
        for (missing, from) in [("model_type", "arch"), ("o_proj_bias", "attention_bias")] {
            if !obj.contains_key(missing) {
                if let Some(value) = obj.get(from).cloned() {
                    obj.insert(missing.to_string(), value);
                }
            }
        }
    }
    serde_json::from_value(v).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineInfo {
    #[serde(flatten)]
    pub config: EngineConfig,
    /// Bytes of the KV pool (K and V, all layers).
    pub kv_pool_bytes: usize,
    /// Whether decode steps were replayed from CUDA graphs (`--no-cuda-graphs` turns them off;
    /// the CPU backend has none).
    #[serde(default)]
    pub cuda_graphs: bool,
    /// The attention window outside of which KV blocks were released (a model sliding on every
    /// layer, without `--keep-all-kv-blocks`); absent where every block was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_window: Option<usize>,
    /// A hybrid model's KV groups (layers sharing a block table, each with its window; a block
    /// spans as many layers as a group holds, so `kv_pool_bytes` / `num_blocks` is one block of
    /// that many layers); absent where one table served every layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv_groups: Vec<crate::kv::KvGroup>,
}

/// A request as the engine served it: the common record plus engine-side facts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineRequestRecord {
    #[serde(flatten)]
    pub record: RequestRecord,
    /// When the scheduler first put it in a step.
    pub admitted_s: Option<f64>,
    pub num_preemptions: usize,
    pub prefix_hit_tokens: usize,
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_ids: Option<Vec<u32>>,
}

/// Engine-side totals of a phase, from its step records.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineSummary {
    pub steps: usize,
    /// Step time attributed to prefill: each step's time split in proportion to its prefill and
    /// decode token counts.
    pub prefill_time_s: f64,
    pub decode_time_s: f64,
    pub prefill_tokens: usize,
    pub decode_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub mean_batch_size: f64,
    pub max_batch_size: usize,
    pub preemptions: usize,
    pub peak_kv_blocks_used: usize,
    /// Prompt tokens served from the prefix cache ÷ prompt tokens of admitted requests; `None`
    /// (null) when no request was admitted, so no prompt token was looked up.
    pub prefix_hit_rate: Option<f64>,
}

impl EngineSummary {
    pub fn of(steps: &[StepRecord], requests: &[EngineRequestRecord]) -> Self {
        let mut s = EngineSummary {
            steps: steps.len(),
            prefill_time_s: 0.0,
            decode_time_s: 0.0,
            prefill_tokens: 0,
            decode_tokens: 0,
            prefill_tokens_per_s: 0.0,
            decode_tokens_per_s: 0.0,
            mean_batch_size: 0.0,
            max_batch_size: 0,
            preemptions: 0,
            peak_kv_blocks_used: 0,
            prefix_hit_rate: None,
        };
        for st in steps {
            let f = st.prefill_fraction();
            s.prefill_time_s += st.duration_s() * f;
            s.decode_time_s += st.duration_s() * (1.0 - f);
            s.prefill_tokens += st.prefill_tokens;
            s.decode_tokens += st.decode_tokens;
            s.mean_batch_size += st.batch_size as f64;
            s.max_batch_size = s.max_batch_size.max(st.batch_size);
            s.preemptions += st.preemptions;
            s.peak_kv_blocks_used = s.peak_kv_blocks_used.max(st.kv_blocks_used);
        }
        let rate = |tokens: usize, t: f64| if t > 0.0 { tokens as f64 / t } else { 0.0 };
        s.prefill_tokens_per_s = rate(s.prefill_tokens, s.prefill_time_s);
        s.decode_tokens_per_s = rate(s.decode_tokens, s.decode_time_s);
        if !steps.is_empty() {
            s.mean_batch_size /= steps.len() as f64;
        }
        // Only admitted requests looked the prefix cache up: a rejected one (never admitted) has no
        // hits and its prompt must not dilute the rate.
        let admitted = || requests.iter().filter(|r| r.admitted_s.is_some());
        let prompt: usize = admitted().map(|r| r.record.prompt_tokens).sum();
        let hits: usize = admitted().map(|r| r.prefix_hit_tokens).sum();
        s.prefix_hit_rate = (prompt > 0).then(|| hits as f64 / prompt as f64);
        s
    }
}

/// One phase of a run: a grid cell repeat, a warmup, or the whole stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Phase {
    pub name: String,
    pub warmup: bool,
    /// What defines the phase (grid: batch_size, input_len, output_len, repeat; stream: rate, ...).
    pub params: serde_json::Value,
    pub started_s: f64,
    pub ended_s: Option<f64>,
    pub requests: Vec<EngineRequestRecord>,
    pub steps: Vec<StepRecord>,
    pub summary: Option<RunSummary>,
    pub engine_summary: Option<EngineSummary>,
    /// Energy (from the telemetry timeline), prefill/decode split, cost and emissions of the
    /// phase's window.
    #[serde(default)]
    pub energy: Option<crate::metrics::energy::EnergyReport>,
    /// Decode steps replayed from CUDA graphs in this phase (backends that record graphs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphs: Option<crate::model::graphs::GraphStats>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunResults {
    pub schema_version: u32,
    /// "run" (the offline engine benchmark).
    pub kind: String,
    pub tool: ToolInfo,
    /// The command line, as given.
    pub command: Vec<String>,
    /// Every option after defaults, config file and command line were merged.
    pub config: serde_json::Value,
    pub started_at: String,
    /// False until the run ended normally.
    pub complete: bool,
    pub hardware: Hardware,
    pub model: ModelInfo,
    pub engine: EngineInfo,
    pub workload: serde_json::Value,
    /// Times in phases, requests and steps are seconds from this run's epoch (monotonic clock).
    pub phases: Vec<Phase>,
    /// Telemetry sources, timeline and the run's energy and cost (same clock as the phases).
    #[serde(default)]
    pub telemetry: Option<crate::telemetry::TelemetrySection>,
}

/// Keeps a results document and writes it atomically, at most every `interval` unless forced.
pub struct ResultsWriter {
    path: PathBuf,
    pub results: RunResults,
    last_write: Option<Instant>,
    interval: Duration,
}

impl ResultsWriter {
    pub fn new(path: &Path, results: RunResults) -> Result<Self> {
        let mut w = Self {
            path: path.to_path_buf(),
            results,
            last_write: None,
            interval: Duration::from_secs(1),
        };
        w.save(true)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write the document if forced or if the interval has passed since the last write.
    pub fn save(&mut self, force: bool) -> Result<()> {
        if !force && self.last_write.is_some_and(|t| t.elapsed() < self.interval) {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&self.results).map_err(|e| Error::Json {
            file: self.path.display().to_string(),
            cause: e,
        })?;
        crate::util::write_atomic(&self.path, &bytes)?;
        self.last_write = Some(Instant::now());
        Ok(())
    }
}

/// A results file of any kind this version reads, as told by its `kind` field.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultsFile {
    /// `kind: "run"`: the offline benchmark of the reference engine.
    Run(Box<RunResults>),
    /// `kind: "load"`: the load generator against an HTTP server.
    Load(Box<super::load_results::LoadResults>),
    /// `kind: "kernels"`: kernel studies (roofline).
    Kernels(Box<super::kernels_results::KernelsResults>),
}

/// The kinds [`read_results`] understands.
pub const KINDS: &[&str] = &["run", "load", "kernels"];

impl ResultsFile {
    pub fn kind(&self) -> &'static str {
        match self {
            ResultsFile::Run(_) => "run",
            ResultsFile::Load(_) => "load",
            ResultsFile::Kernels(_) => "kernels",
        }
    }
}

/// Read a results file of any kind this version understands, dispatching on `kind`. Errors name the
/// file and the field at fault (`phases[0].summary.completed: invalid type ...`).
pub fn read_results(path: &Path) -> Result<ResultsFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file = path.display().to_string();
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        file: file.clone(),
        cause: source,
    })?;
    let Some(top) = doc.as_object() else {
        return Err(Error::config(
            &file,
            "(top level)",
            "expected a JSON object",
        ));
    };
    match top.get("schema_version") {
        Some(v) if v.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
        Some(v) => {
            return Err(Error::config(
                &file,
                "schema_version",
                format!("{v} is not supported (this build reads {SCHEMA_VERSION})"),
            ))
        }
        None => return Err(Error::config(&file, "schema_version", "missing")),
    }
    let kinds = KINDS.join(", ");
    let kind = match top.get("kind") {
        Some(serde_json::Value::String(k)) => k.clone(),
        Some(v) => {
            return Err(Error::config(
                &file,
                "kind",
                format!("{v} is not a string (kinds: {kinds})"),
            ))
        }
        None => {
            return Err(Error::config(
                &file,
                "kind",
                format!("missing (kinds: {kinds})"),
            ))
        }
    };
    match kind.as_str() {
        "run" => Ok(ResultsFile::Run(Box::new(parse_kind(&file, doc)?))),
        "load" => Ok(ResultsFile::Load(Box::new(parse_kind(&file, doc)?))),
        "kernels" => Ok(ResultsFile::Kernels(Box::new(parse_kind(&file, doc)?))),
        other => Err(Error::config(
            &file,
            "kind",
            format!("unknown kind `{other}` (this build reads: {kinds})"),
        )),
    }
}

/// Deserialize a whole document as one kind's type; the error names the path of the field at fault.
fn parse_kind<T: serde::de::DeserializeOwned>(file: &str, doc: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." => "(top level)".to_string(),
            p => p,
        };
        Error::config(file, &field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prompt: usize, hits: usize, admitted: bool) -> EngineRequestRecord {
        EngineRequestRecord {
            record: RequestRecord {
                id: 0,
                scheduled_s: 0.0,
                send_s: 0.0,
                first_token_s: None,
                chunk_times_s: Vec::new(),
                end_s: Some(1.0),
                prompt_tokens: prompt,
                output_tokens: 0,
                error: (!admitted).then(|| "rejected".into()),
            },
            admitted_s: admitted.then_some(0.0),
            num_preemptions: 0,
            prefix_hit_tokens: hits,
            finish_reason: None,
            output_ids: None,
        }
    }

    #[test]
    fn prefix_hit_rate_counts_only_admitted_prompts() {
        // 3 of 8 admitted prompt tokens hit; the rejected request's 312 tokens never looked up.
        let reqs = [req(4, 0, true), req(4, 3, true), req(312, 0, false)];
        let s = EngineSummary::of(&[], &reqs);
        assert_eq!(s.prefix_hit_rate, Some(3.0 / 8.0));
        // nothing admitted: no prompt looked up, so no rate (null in JSON; not 0, not NaN)
        let none = EngineSummary::of(&[], &reqs[2..]);
        assert_eq!(none.prefix_hit_rate, None);
        let json = serde_json::to_value(&none).unwrap();
        assert!(json["prefix_hit_rate"].is_null(), "{json}");
        // admitted, but an empty prompt looked nothing up: no rate either
        assert_eq!(
            EngineSummary::of(&[], &[req(0, 0, true)]).prefix_hit_rate,
            None
        );
        // a file written before the rate could be absent still reads
        let mut old = json;
        old["prefix_hit_rate"] = serde_json::json!(0.25);
        let back: EngineSummary = serde_json::from_value(old).unwrap();
        assert_eq!(back.prefix_hit_rate, Some(0.25));
    }

    /// Files written before `model_type` and `o_proj_bias` existed read as those versions ran.
    #[test]
    fn model_configs_of_older_files_read() {
        for (name, o_bias) in [("gpt2", true), ("tiny-llama", false)] {
            let config = crate::model::open(name).unwrap().config;
            let info = ModelInfo {
                source: name.into(),
                weights: "dummy".into(),
                backend: "cpu".into(),
                dtype: "f32".into(),
                num_parameters: config.num_parameters(),
                config: config.clone(),
            };
            let json = serde_json::to_value(&info).unwrap();
            let back: ModelInfo = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(back, info, "{name}");
            let mut old = json;
            let obj = old["config"].as_object_mut().unwrap();
            obj.remove("model_type");
            obj.remove("o_proj_bias");
            let back: ModelInfo = serde_json::from_value(old).unwrap();
            assert_eq!(back.config.o_proj_bias, o_bias, "{name}");
            assert_eq!(back, info, "{name}");
        }
    }
}
