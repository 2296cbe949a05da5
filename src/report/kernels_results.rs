//! The results file of `infermeter kernels` (`kind: "kernels"`, `$defs/kernels_file` in
//! `schemas/results.schema.json`): one row per op and shape with its time, bytes, FLOPs, achieved
//! bandwidth and compute, the bound that applies and how close it came to the measured ceilings and
//! the spec peak — what a roofline chart is drawn from. The file carries the ceilings, the hardware
//! and the tool version and commit, and is rewritten atomically after every row (`complete` is
//! false until the last one).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::study::ceiling::Ceilings;
use crate::study::roofline::Bound;
use crate::telemetry::host::HostInfo;

use super::results::ToolInfo;

pub const KIND: &str = "kernels";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelsHardware {
    pub host: HostInfo,
    /// The GPU a CUDA run measured (name, compute capability, memory, driver, L2 size, how the
    /// kernels were compiled); empty for CPU runs.
    pub gpus: Vec<serde_json::Value>,
}

/// The vendor peak the `pct_of_spec_peak` column divides by.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecPeak {
    pub name: String,
    pub memory_gb_s: f64,
    /// Dense peak for the rows' dtype.
    pub compute_gflop_s: f64,
    pub source: String,
}

/// How the times were taken.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimingInfo {
    pub method: String,
    pub warmup_runs: usize,
    pub runs: usize,
    pub min_run_s: f64,
}

/// One op at one shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelRow {
    pub op: String,
    /// The op family: the kernel file and bench target (`norm` ↔ `kernels/norm.cu`,
    /// `benches/norm.rs`).
    pub family: String,
    /// The model config the shape comes from.
    pub model: Option<String>,
    /// Shape parameters (rows, cols, heads, context, ...).
    pub shape: serde_json::Value,
    /// The implementation studied where the device has several (CUDA attention: `naive`, `auto`,
    /// `auto-sync`, `auto-<N>split`; the CUDA decode step: `eager`, `graphs`; `study::variant`).
    /// Absent where it has one: every CPU row (the reference) and every other CUDA op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// CUDA attention_decode rows of the split-KV kernel (`auto`, `auto-<N>split`): the number of
    /// splits of the context it launched (the heuristic's for `auto`). Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_splits: Option<u32>,
    pub backend: String,
    pub dtype: String,
    pub time_median_s: f64,
    pub time_min_s: f64,
    pub runs: usize,
    pub calls_per_run: u64,
    /// Bytes moved per call (compulsory traffic; see `study::ops`).
    pub bytes: u64,
    /// FLOPs per call.
    pub flops: u64,
    /// FLOPs per byte.
    pub arithmetic_intensity: f64,
    /// From the median time.
    pub achieved_gb_s: f64,
    pub achieved_gflop_s: f64,
    pub bound: Bound,
    pub pct_of_measured_ceiling: Option<f64>,
    /// Null where the device has no spec entry (every CPU).
    pub pct_of_spec_peak: Option<f64>,
    /// Rows with a `variant`: the baseline variant's median time (naive attention, the eager
    /// decode step) at the same op, model and shape divided by this row's (1 for the baseline row
    /// itself). Absent on rows without a variant and where the baseline did not run (not chosen,
    /// or skipped). Files written before the decode-step variants call it `speedup_over_naive`.
    #[serde(
        default,
        alias = "speedup_over_naive",
        skip_serializing_if = "Option::is_none"
    )]
    pub speedup_over_baseline: Option<f64>,
}

/// A case that did not run, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SkippedCase {
    pub op: String,
    pub model: Option<String>,
    pub shape: serde_json::Value,
    /// As in [`KernelRow::variant`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelsResults {
    pub schema_version: u32,
    /// "kernels"
    pub kind: String,
    pub tool: ToolInfo,
    pub command: Vec<String>,
    pub config: serde_json::Value,
    pub started_at: String,
    pub complete: bool,
    pub hardware: KernelsHardware,
    pub backend: String,
    pub dtype: String,
    pub ceilings: Ceilings,
    /// Null for CPUs and GPUs missing from the spec table; `spec_note` says why.
    pub spec: Option<SpecPeak>,
    pub spec_note: Option<String>,
    pub timing: TimingInfo,
    pub rows: Vec<KernelRow>,
    pub skipped: Vec<SkippedCase>,
}

/// Keeps a kernels results document and rewrites it atomically.
pub struct KernelsWriter {
    path: PathBuf,
    pub results: KernelsResults,
}

impl KernelsWriter {
    pub fn new(path: &Path, results: KernelsResults) -> Result<Self> {
        let w = Self {
            path: path.to_path_buf(),
            results,
        };
        w.save()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.results).map_err(|e| Error::Json {
            file: self.path.display().to_string(),
            cause: e,
        })?;
        crate::util::write_atomic(&self.path, &bytes)
    }
}

/// Read a kernels results file.
pub fn read_kernels_results(path: &Path) -> Result<KernelsResults> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let r: KernelsResults = serde_json::from_str(&text).map_err(|source| Error::Json {
        file: path.display().to_string(),
        cause: source,
    })?;
    if r.kind != KIND || r.schema_version != super::results::SCHEMA_VERSION {
        return Err(Error::Invalid(format!(
            "{}: not a kernels results file of schema version {} (kind `{}`, version {})",
            path.display(),
            super::results::SCHEMA_VERSION,
            r.kind,
            r.schema_version
        )));
    }
    Ok(r)
}
