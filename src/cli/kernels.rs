//! `infermeter kernels`: the kernel studies as a quick table and a results file (`kind:
//! "kernels"`).
//!
//! The same ops and shapes as `cargo bench` (`src/study`), timed with a simple loop (warmup, then
//! the median and minimum of N runs) instead of criterion, against ceilings measured at the start.
//! `--backend cuda` opens the CUDA backend once (`--dtype`, `--cuda-device`), times with CUDA
//! events (`--cold-l2` flushes the L2 before every call) and measures the GPU's copy bandwidth and
//! cuBLAS GEMM throughput as its ceilings; GPU rows also get a % of the device's spec peak.
//! Attention on CUDA runs once per implementation (`--attention`, `study::variant`), and each row
//! gets its speed-up over the naive kernel at the same shape. `--sweep attention-acceptance` takes
//! issue 5's attention shapes instead of the default sweep.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::backend::DtypeChoice;
use crate::report::kernels_results::{
    KernelRow, KernelsHardware, KernelsResults, KernelsWriter, SkippedCase, TimingInfo, KIND,
};
use crate::report::results::{ToolInfo, SCHEMA_VERSION};
use crate::study::ceiling::{self, CeilingOptions, GpuCeilingOptions};
use crate::study::gpu;
use crate::study::roofline::Columns;
use crate::study::roofline::{self, Peak};
use crate::study::runner::{self, Target};
use crate::study::sweep::{self, Sweep, SweepSpec};
use crate::study::timing::{self, TimingConfig};
use crate::study::{hardware, ops, variant, Case, Device, Dtype};
use crate::telemetry::host::HostInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelBackend {
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct KernelsArgs {
    /// Ops or op families to study, comma-separated (default: all). Ops: layernorm, rmsnorm,
    /// add_rmsnorm, qk_rmsnorm, add_inplace, rope, qk_norm_rope, gelu_new, gelu_erf, relu, silu_mul,
    /// gelu_tanh_mul, embedding, gather_logit_rows, write_kv,
    /// attention_prefill, attention_decode, matmul, argmax, sample, decode_step. Families: norm,
    /// rope, activation, embedding, kv_write, attention, matmul, sampling, decode_step.
    #[arg(long, value_delimiter = ',')]
    pub op: Vec<String>,
    /// Take the shapes from this model (an embedded name or a Hugging Face directory) instead of
    /// the default sweep over several models.
    #[arg(long, value_name = "FROM_MODEL", conflicts_with = "sweep")]
    pub shapes: Option<String>,
    /// A named set of shapes instead of the default sweep: `attention-acceptance` is issue 5's
    /// attention acceptance (decode at contexts 1k/4k/16k for batches 1/16/64, prefill of
    /// 512/2k/8k tokens; Llama 3 8B's 32/8 heads of 128, blocks of 16), sized for a GPU.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub sweep: String,
    /// CUDA attention implementations to study side by side, comma-separated: `naive` (the
    /// baseline), `auto` (split-KV decode, flash prefill), `auto-sync` (the flash prefill without
    /// its cp.async K/V pipeline; prefill only), `auto-1split` (split-KV decode forced to one
    /// split; decode only), or `all` (default: these four); `auto-<N>split` forces N
    /// splits (decode only; e.g. `auto,auto-2split,auto-8split,auto-32split` to see where the
    /// split heuristic stands). Rows get a variant column and their
    /// speed-up over naive at the same shape. The CPU has one implementation, the reference.
    /// (The decode step always runs twice on CUDA: `eager` and replayed from a CUDA `graphs`.)
    #[arg(long, value_delimiter = ',', value_name = "VARIANTS")]
    pub attention: Vec<String>,
    /// Backend to measure.
    #[arg(long, value_enum, default_value_t = KernelBackend::Cpu)]
    pub backend: KernelBackend,
    /// Compute dtype (default: bf16 on CUDA; the CPU backend computes in f32 only). Bytes per call
    /// count 2 bytes per element for bf16 and f16.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeChoice>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub cuda_device: usize,
    /// CUDA only: before every timed call, write a buffer larger than the L2 cache (outside the
    /// timed region), so each call starts with a cold L2; calls are then timed one by one.
    #[arg(long)]
    pub cold_l2: bool,
    /// Results file (default: infermeter-results/kernels-<UTC time>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Timed runs per case (the median and minimum are reported).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Untimed runs per case before timing.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Shortest run in milliseconds: fast ops are called back to back until a run lasts this long.
    #[arg(long, default_value_t = 2.0)]
    pub min_run_ms: f64,
    /// Side of the square GEMM that measures the compute ceiling (default: 8192 for bf16/f16 on
    /// CUDA, where tensor cores need a large shape to saturate; 4096 for f32; 1024 on the CPU). A
    /// smaller one is quicker and reads lower; the results file names the size.
    #[arg(long, value_name = "N")]
    pub ceiling_gemm_n: Option<usize>,
    /// List the cases (with bytes and FLOPs per call) and the GPU spec table, then exit.
    #[arg(long)]
    pub list: bool,
}

const CPU_SPEC_NOTE: &str =
    "no spec peak for CPUs: the spec table lists GPUs only (vendors publish \
no sustained bandwidth and FLOP figure per CPU SKU and VM shape); CPU rows are compared with the \
measured ceilings only";

/// The dtype `a` asks for on `device`.
fn dtype_of(a: &KernelsArgs, device: Device) -> anyhow::Result<Dtype> {
    let d = a.dtype.map(|d| match d {
        DtypeChoice::Bf16 => Dtype::Bf16,
        DtypeChoice::F16 => Dtype::F16,
        DtypeChoice::F32 => Dtype::F32,
    });
    match (device, d) {
        (Device::Cpu, Some(d)) if d != Dtype::F32 => bail!(
            "--dtype {}: the CPU backend computes in f32 only (use --backend cuda)",
            d.name()
        ),
        (_, d) => Ok(d.unwrap_or(device.dtype())),
    }
}

pub fn run(a: KernelsArgs) -> anyhow::Result<()> {
    let device = match a.backend {
        KernelBackend::Cpu => Device::Cpu,
        KernelBackend::Cuda => Device::Cuda,
    };
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !(a.min_run_ms.is_finite() && a.min_run_ms >= 0.0) {
        bail!("--min-run-ms must be a number >= 0");
    }
    if a.ceiling_gemm_n == Some(0) {
        bail!("--ceiling-gemm-n must be at least 1");
    }
    let dtype = dtype_of(&a, device)?;
    if a.cold_l2 && device == Device::Cpu {
        bail!("--cold-l2 applies to --backend cuda only");
    }
    if !a.attention.is_empty() && device == Device::Cpu {
        bail!(
            "--attention applies to --backend cuda only (the CPU has one attention \
             implementation, the reference)"
        );
    }
    let variants = variant::parse_list(&a.attention).context("--attention")?;
    let selected = ops::parse_selection(&a.op).context("--op")?;
    let cases = match &a.shapes {
        Some(spec) => {
            let src = crate::model::open(spec).with_context(|| format!("--shapes {spec}"))?;
            let cases =
                sweep::model_cases(spec, &src.config, &selected, &SweepSpec::for_one_model());
            if cases.is_empty() {
                let names: Vec<&str> = selected.iter().map(|o| o.name()).collect();
                bail!(
                    "--shapes {spec}: no case: {} do(es) not apply to a {:?} model \
                     (layernorm, add_inplace and gelu_new / gelu_erf are GPT-2's block's; rmsnorm, \
                     add_rmsnorm, silu_mul and rope Llama's; an activation or norm the model \
                     does not run has no case)",
                    names.join(", "),
                    src.config.arch
                );
            }
            cases
        }
        None => {
            let named = Sweep::parse(&a.sweep).context("--sweep")?;
            let cases = named.cases(&selected)?;
            if cases.is_empty() {
                bail!(
                    "--sweep {}: no case for the selected ops (it has attention_prefill and \
                     attention_decode cases only)",
                    named.name()
                );
            }
            cases
        }
    };
    let cases = variant::expand(&cases, device, &variants);
    if cases.is_empty() {
        bail!(
            "--attention: no case (auto-<N>split variants apply to attention_decode only, \
             auto-sync to attention_prefill only)"
        );
    }
    if a.list {
        list(&cases, dtype);
        return Ok(());
    }

    if let Err(e) = device.availability() {
        bail!("--backend {}: {}", device.name(), gpu::reason(&e));
    }
    if device == Device::Cuda {
        eprintln!(
            "opening the CUDA backend ({}, device {}; compiling or loading the kernels) ...",
            dtype.name(),
            a.cuda_device
        );
    }
    let target = Target::open(device, dtype, a.cuda_device)
        .map_err(|e| anyhow::anyhow!("--backend {}: {}", device.name(), gpu::reason(&e)))?;

    eprintln!("measuring the {} ceilings ...", device.name());
    let (ceilings, spec, spec_note, gpus) = match &target {
        Target::Cpu => (
            ceiling::measure_cpu(&CeilingOptions {
                gemm_n: a.ceiling_gemm_n.unwrap_or(CeilingOptions::default().gemm_n),
                ..CeilingOptions::default()
            })?,
            None,
            Some(CPU_SPEC_NOTE.to_string()),
            Vec::new(),
        ),
        Target::Cuda(s) => {
            let opts = GpuCeilingOptions {
                gemm_n: a.ceiling_gemm_n,
                ..GpuCeilingOptions::default()
            };
            let c = ceiling::measure_gpu(s, &opts)?;
            let (spec, note) = match s.spec() {
                Ok(p) => (Some(p), None),
                Err(why) => (None, Some(why)),
            };
            (c, spec, note, vec![s.describe()])
        }
    };
    // the SM count the split-KV decode's heuristic sees, for the rows' `decode_splits`
    let mut sms = None;
    if let Target::Cuda(s) = &target {
        let g = s.gpu();
        println!("GPU: {} ({}), {}", g.name, g.arch(), dtype.name());
        sms = Some(g.multiprocessors);
    }
    println!("{}", roofline::describe_ceilings(&ceilings));
    match (&spec, &spec_note) {
        (Some(p), _) => println!(
            "  spec peak: {} {:.0} GB/s, {:.0} GFLOP/s {} (dense) [{}]",
            p.name,
            p.memory_gb_s,
            p.compute_gflop_s,
            dtype.name(),
            p.source
        ),
        (None, Some(note)) => println!("  spec peak: {note}"),
        (None, None) => {}
    }
    let peak = Peak::from(&ceilings);
    let spec_peak = spec.as_ref().map(Peak::from);
    let columns = Columns {
        spec: spec_peak.is_some(),
        variants: cases.iter().any(|c| c.variant.is_some()),
    };

    let timing_cfg = TimingConfig {
        warmup: a.warmup,
        runs: a.runs,
        min_run_s: a.min_run_ms / 1e3,
    };
    let mut clock = target.clock(a.cold_l2)?;
    let out_path = a.out.clone().unwrap_or_else(|| {
        let stamp = crate::util::utc_timestamp().replace(':', "");
        PathBuf::from("infermeter-results").join(format!("kernels-{stamp}.json"))
    });
    let results = KernelsResults {
        schema_version: SCHEMA_VERSION,
        kind: KIND.into(),
        tool: ToolInfo::current(),
        command: std::env::args().collect(),
        config: serde_json::to_value(&a)?,
        started_at: crate::util::utc_timestamp(),
        complete: false,
        hardware: KernelsHardware {
            host: HostInfo::collect(),
            gpus,
        },
        backend: device.name().into(),
        dtype: dtype.name().into(),
        ceilings: ceilings.clone(),
        spec,
        spec_note,
        timing: TimingInfo {
            method: clock.method(),
            warmup_runs: timing_cfg.warmup,
            runs: timing_cfg.runs,
            min_run_s: timing_cfg.min_run_s,
        },
        rows: Vec::new(),
        skipped: Vec::new(),
    };
    let mut writer = KernelsWriter::new(&out_path, results)
        .with_context(|| format!("writing {}", out_path.display()))?;

    println!();
    println!("{}", roofline::table_header(columns));
    // every measured case with its median time: the naive rows the speed-ups divide
    let mut timed: Vec<(Case, f64)> = Vec::new();
    let mut assessed: Vec<roofline::Assessment> = Vec::new();
    for case in &cases {
        let shape = serde_json::to_value(&case.shape)?;
        let measured = runner::prepare(&target, case)
            .and_then(|mut run| timing::measure_with(&mut run, &timing_cfg, clock.as_mut()));
        let t = match measured {
            Ok(t) => t,
            Err(e) => {
                println!(
                    "{:<18} {:<15} {:<48} {}skipped: {e}",
                    case.op.name(),
                    model_of(case),
                    case.shape_label(),
                    case.variant
                        .map_or(String::new(), |v| format!("{:<12} ", v.name()))
                );
                writer.results.skipped.push(SkippedCase {
                    op: case.op.name().into(),
                    model: case.model.clone(),
                    shape,
                    variant: case.variant.map(String::from),
                    reason: e.to_string(),
                });
                writer.save()?;
                continue;
            }
        };
        let cost = case.cost(dtype);
        let a = roofline::assess(cost, t.median_s, peak, spec_peak);
        timed.push((case.clone(), t.median_s));
        assessed.push(a);
        let speedup = variant::speedup_over_baseline(case, t.median_s, &timed);
        println!(
            "{}",
            roofline::table_line(case, t.median_s, &a, speedup, columns)
        );
        writer.results.rows.push(KernelRow {
            op: case.op.name().into(),
            family: case.op.family().name().into(),
            model: case.model.clone(),
            shape,
            variant: case.variant.map(String::from),
            decode_splits: case
                .variant
                .zip(sms)
                .and_then(|(v, n)| v.decode_splits(case, n)),
            backend: device.name().into(),
            dtype: dtype.name().into(),
            time_median_s: t.median_s,
            time_min_s: t.min_s,
            runs: t.runs,
            calls_per_run: t.calls_per_run,
            bytes: cost.bytes,
            flops: cost.flops,
            arithmetic_intensity: a.intensity,
            achieved_gb_s: a.achieved_gb_s,
            achieved_gflop_s: a.achieved_gflop_s,
            bound: a.bound,
            pct_of_measured_ceiling: a.pct_of_ceiling,
            pct_of_spec_peak: a.pct_of_spec,
            speedup_over_baseline: speedup,
        });
        writer.save()?;
    }
    writer.results.complete = true;
    writer.save()?;
    if let Some(note) = roofline::above_ceiling_note(&assessed, device == Device::Cuda, a.cold_l2) {
        println!("\n{note}");
    }
    let summary = variant::summary(&timed);
    if !summary.is_empty() {
        println!(
            "\nvariants (median time per call; speed-up over the baseline: naive attention, eager step):"
        );
        for line in summary {
            println!("{line}");
        }
    }
    println!(
        "\n{} rows, {} skipped; results: {}",
        writer.results.rows.len(),
        writer.results.skipped.len(),
        writer.path().display()
    );
    Ok(())
}

fn model_of(case: &Case) -> &str {
    case.model.as_deref().unwrap_or("-")
}

fn list(cases: &[Case], dtype: crate::study::Dtype) {
    let with_variants = cases.iter().any(|c| c.variant.is_some());
    let variant_col = |v: &str| {
        if with_variants {
            format!(" {v:<12}")
        } else {
            String::new()
        }
    };
    println!(
        "{:<18} {:<15} {:<48}{} {:>14} {:>16} {:>8}",
        "op",
        "model",
        "shape",
        variant_col("variant"),
        "bytes",
        "FLOPs",
        "FLOP/B"
    );
    for c in cases {
        let cost = c.cost(dtype);
        println!(
            "{:<18} {:<15} {:<48}{} {:>14} {:>16} {:>8.2}",
            c.op.name(),
            model_of(c),
            c.shape_label(),
            variant_col(&c.variant.map_or("-".into(), |v| v.name())),
            cost.bytes,
            cost.flops,
            cost.intensity()
        );
    }
    println!("\n{} cases ({} elements)", cases.len(), dtype.name());
    println!(
        "\nGPU spec table (dense peaks; CUDA rows report % of the device's entry for their dtype):"
    );
    println!(
        "{:<16} {:>9} {:>10} {:>10} {:>10} {:>10}  source",
        "GPU", "GB/s", "FP32 TF", "TF32 TF", "BF16 TF", "FP16 TF"
    );
    for s in hardware::GPU_SPECS {
        println!(
            "{:<16} {:>9.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1}  {}",
            s.name,
            s.memory_gb_s,
            s.fp32_tflops,
            s.tf32_tflops,
            s.bf16_tflops,
            s.fp16_tflops,
            s.source
        );
    }
}
