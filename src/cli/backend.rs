//! `--backend auto|cpu|cuda`, `--dtype` and `--cuda-device`: opening the chosen backend, and running
//! a command's generic body on it.
//!
//! `Engine<B>` and `Model<B>` are generic over the backend, so a command writes its body once as
//! `fn run_on<B: EngineBackend>(args, backend: B)` and [`dispatch!`] calls it with whichever backend
//! [`open`] returned (one instantiation per backend and dtype).

use clap::{Args, ValueEnum};

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{self, AttentionVariant, CudaBackend, CudaDtype, CudaOptions};
use crate::backend::Backend;
use crate::model::{kv_block_bytes, Model};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA when a GPU, NVRTC and cuBLAS are usable; otherwise the CPU.
    Auto,
    /// The f32 CPU reference.
    Cpu,
    /// The CUDA backend; fails with the reason when no GPU is usable.
    Cuda,
}

/// Compute dtype of the CUDA backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    Bf16,
    F16,
    F32,
}

/// Which backend to run on.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct BackendArgs {
    /// Backend: auto (CUDA when a GPU is usable, else the CPU), cpu or cuda.
    #[arg(long, value_enum, env = "INFERMETER_BACKEND", default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Compute dtype on CUDA (weights are converted on upload; GEMMs accumulate in f32). The CPU
    /// backend always computes in f32.
    #[arg(long, value_enum, default_value_t = DtypeChoice::Bf16)]
    pub dtype: DtypeChoice,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub cuda_device: usize,
    /// CUDA attention kernels: `naive` (the reference kernel; the default until a GPU session has
    /// validated the others) or `auto` (flash prefill on tensor cores, split-KV paged decode).
    /// docs/attention.md.
    #[arg(long, env = "INFERMETER_ATTENTION", default_value = "naive", value_parser = parse_attention)]
    pub attention: AttentionVariant,
}

fn parse_attention(s: &str) -> Result<AttentionVariant, String> {
    s.parse()
}

impl Default for BackendArgs {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            dtype: DtypeChoice::Bf16,
            cuda_device: 0,
            attention: AttentionVariant::default(),
        }
    }
}

/// An opened backend.
pub enum Opened {
    Cpu(CpuBackend),
    CudaBf16(CudaBackend<half::bf16>),
    CudaF16(CudaBackend<half::f16>),
    CudaF32(CudaBackend<f32>),
}

/// Run `$body` with `$b` bound to the backend inside an [`Opened`] (each arm its own type).
macro_rules! dispatch {
    ($opened:expr, $b:ident => $body:expr) => {
        match $opened {
            $crate::cli::backend::Opened::Cpu($b) => $body,
            $crate::cli::backend::Opened::CudaBf16($b) => $body,
            $crate::cli::backend::Opened::CudaF16($b) => $body,
            $crate::cli::backend::Opened::CudaF32($b) => $body,
        }
    };
}
pub(crate) use dispatch;

fn open_cuda(a: &BackendArgs) -> crate::Result<Opened> {
    let opts = CudaOptions {
        ordinal: a.cuda_device,
        ..CudaOptions::default()
    };
    let v = a.attention;
    Ok(match a.dtype {
        DtypeChoice::Bf16 => {
            Opened::CudaBf16(CudaBackend::with_options(&opts)?.with_attention_variant(v))
        }
        DtypeChoice::F16 => {
            Opened::CudaF16(CudaBackend::with_options(&opts)?.with_attention_variant(v))
        }
        DtypeChoice::F32 => {
            Opened::CudaF32(CudaBackend::with_options(&opts)?.with_attention_variant(v))
        }
    })
}

/// Open the backend `a` asks for. `cuda` without a usable GPU is an error ("no CUDA device: ...");
/// `auto` then falls back to the CPU (saying why on stderr when an NVIDIA driver is present, i.e.
/// when the fallback may surprise).
pub fn open(a: &BackendArgs) -> crate::Result<Opened> {
    match a.backend {
        BackendChoice::Cpu => Ok(Opened::Cpu(CpuBackend)),
        BackendChoice::Cuda => open_cuda(a),
        BackendChoice::Auto => {
            let probe = cuda::probe(false);
            match probe.error {
                None => open_cuda(a),
                Some(reason) => {
                    if probe.driver_version.is_some() || probe.driver_cuda_version.is_some() {
                        eprintln!("note: --backend auto: using the CPU ({reason})");
                    }
                    Ok(Opened::Cpu(CpuBackend))
                }
            }
        }
    }
}

/// What the commands need from a backend beyond the ops.
pub trait EngineBackend: Backend + Sized + 'static {
    /// "f32", "bf16", "f16"
    fn dtype_name(&self) -> &'static str;
    /// Bytes per element of the compute dtype (KV cache, activations).
    fn elem_bytes(&self) -> usize;
    /// One line for logs: "cpu (f32)", "cuda:0 NVIDIA H100 80GB HBM3 (sm_90, bf16)".
    fn describe(&self) -> String;
    /// The GPUs the backend runs on, for results files (none for the CPU).
    fn gpus(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// The CUDA device the engine runs on, its ordinal and UUID (`None` for the CPU): telemetry
    /// measures and prices that GPU by default.
    fn cuda_device(&self) -> Option<(usize, Option<String>)> {
        None
    }
    /// KV-pool blocks when `--kv-blocks` is not given: `--kv-memory` on the CPU, the memory plan
    /// from `--gpu-memory-utilization` on CUDA (reported on stderr).
    fn auto_kv_blocks(&self, model: &Model<Self>, s: &KvSizing) -> anyhow::Result<usize>;
}

/// The engine's options, shared by `run` and `serve`.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct EngineArgs {
    /// CUDA: the fraction of the GPU memory free at start that weights, activations and the KV pool
    /// may use; the pool gets what is left (--kv-blocks overrides it; --kv-memory is for the CPU).
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Tokens per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV-cache blocks in the pool (overrides --kv-memory and the CUDA memory plan). A block holds
    /// block_size tokens of every layer, or of one KV group's layers for a hybrid model (the start
    /// line says how many).
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// CPU: memory for the KV pool, e.g. 512MiB, 2GiB, 1.5GB.
    #[arg(long, default_value = "1GiB")]
    pub kv_memory: String,
    /// Most sequences in one step.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Most tokens in one step (prefill chunks are cut to fit).
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Turn prefix caching off.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Keep every KV block until its request ends, even for a model that slides on every layer
    /// (which otherwise releases the blocks that left its window): the baseline for what that saves.
    #[arg(long)]
    pub keep_all_kv_blocks: bool,
    /// CUDA: run every decode step kernel by kernel instead of replaying recorded CUDA graphs
    /// (to measure what the graphs save).
    #[arg(long)]
    pub no_cuda_graphs: bool,
}

impl EngineArgs {
    /// `--gpu-memory-utilization` in (0, 1], `--kv-memory` parsed: how the pool is sized when
    /// `--kv-blocks` is not given.
    pub fn kv_sizing(&self) -> anyhow::Result<KvSizing> {
        use anyhow::Context;
        let u = self.gpu_memory_utilization;
        if !(u > 0.0 && u <= 1.0) {
            anyhow::bail!("--gpu-memory-utilization must be in (0, 1], got {u}");
        }
        Ok(KvSizing {
            block_size: self.block_size,
            cpu_kv_bytes: super::run::parse_bytes(&self.kv_memory).context("--kv-memory")?,
            gpu_memory_utilization: u,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            keep_all_kv_blocks: self.keep_all_kv_blocks,
        })
    }
}

/// What sizes the KV pool when no block count is given (`run` and `serve` share it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvSizing {
    pub block_size: usize,
    /// CPU: bytes of KV memory (`--kv-memory`).
    pub cpu_kv_bytes: usize,
    /// CUDA: fraction of the free GPU memory for weights, activations and the pool.
    pub gpu_memory_utilization: f64,
    /// CUDA: the activation workspace is sized for these.
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    /// One block table for every layer (`--keep-all-kv-blocks`): blocks span every layer.
    pub keep_all_kv_blocks: bool,
}

impl KvSizing {
    /// The KV layout the engine will run `model` in (what a block spans).
    pub fn kv_layout(&self, model: &crate::model::ModelConfig) -> crate::kv::KvLayout {
        crate::kv::KvLayout::for_model(model, self.keep_all_kv_blocks)
    }
}

impl EngineBackend for CpuBackend {
    fn dtype_name(&self) -> &'static str {
        "f32"
    }
    fn elem_bytes(&self) -> usize {
        4
    }
    fn describe(&self) -> String {
        "cpu (f32)".into()
    }
    fn auto_kv_blocks(&self, model: &Model<Self>, s: &KvSizing) -> anyhow::Result<usize> {
        let slots = s.kv_layout(&model.config).slots();
        let block_bytes = kv_block_bytes(&model.config, slots, s.block_size.max(1), 4);
        Ok(s.cpu_kv_bytes / block_bytes.max(1))
    }
}

impl<T: CudaDtype> EngineBackend for CudaBackend<T> {
    fn dtype_name(&self) -> &'static str {
        T::NAME
    }
    fn elem_bytes(&self) -> usize {
        std::mem::size_of::<T>()
    }
    fn describe(&self) -> String {
        let g = self.gpu();
        let c = self.compile_report();
        format!(
            "cuda:{} {} ({}, {}, attention {}; kernels: NVRTC {} for {}, {} compiled, {} cached)",
            g.ordinal,
            g.name,
            g.arch(),
            T::NAME,
            self.attention_variant().name(),
            c.nvrtc_version,
            c.target,
            c.modules_compiled,
            c.modules_from_cache
        )
    }
    fn gpus(&self) -> Vec<serde_json::Value> {
        serde_json::to_value(self.gpu())
            .map(|v| vec![v])
            .unwrap_or_default()
    }
    fn cuda_device(&self) -> Option<(usize, Option<String>)> {
        Some((self.gpu().ordinal, self.gpu().uuid.clone()))
    }
    fn auto_kv_blocks(&self, model: &Model<Self>, s: &KvSizing) -> anyhow::Result<usize> {
        let plan = self.plan_memory(
            &model.config,
            &s.kv_layout(&model.config),
            s.gpu_memory_utilization,
            s.block_size,
            s.max_num_batched_tokens,
            s.max_num_seqs,
        )?;
        eprintln!("{plan}");
        Ok(plan.num_blocks)
    }
}

fn gib(b: usize) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// `infermeter info`'s lines about CUDA: the GPUs (name, compute capability, memory, driver and CUDA
/// versions), whether NVRTC and cuBLAS load, and which backends can run.
pub fn cuda_info_lines(p: &cuda::CudaProbe) -> Vec<String> {
    let mut out = Vec::new();
    let driver = match (&p.driver_version, &p.driver_cuda_version) {
        (Some(d), Some(c)) => format!("NVIDIA driver {d}, CUDA {c}"),
        (None, Some(c)) => format!("CUDA {c}"),
        (Some(d), None) => format!("NVIDIA driver {d}"),
        (None, None) => "no NVIDIA driver".into(),
    };
    if p.gpus.is_empty() {
        out.push(format!("GPUs:     none ({driver})"));
    }
    for g in &p.gpus {
        out.push(format!(
            "GPU {}:    {}{}, compute capability {}.{} ({}), {} SMs, {} total{}; {driver}",
            g.ordinal,
            g.name,
            g.uuid.as_ref().map_or(String::new(), |u| format!(" ({u})")),
            g.compute_capability.0,
            g.compute_capability.1,
            g.arch(),
            g.multiprocessors,
            gib(g.total_memory_bytes),
            g.free_memory_bytes
                .map_or(String::new(), |f| format!(", {} free", gib(f)))
        ));
    }
    let lib = |name: &str, s: &cuda::LibraryStatus| match (s.loads, &s.version) {
        (true, Some(v)) => format!("{name} {v} loads"),
        (true, None) => format!("{name} loads"),
        (false, _) => format!("{name} does not load"),
    };
    out.push(format!(
        "CUDA libs: {}; {}; {} (this build: CUDA {} API, cargo feature {})",
        lib("NVRTC", &p.nvrtc),
        lib("cuBLAS", &p.cublas),
        lib("cuBLASLt", &p.cublaslt),
        p.build_api,
        cuda::device::BUILD_FEATURE
    ));
    match &p.error {
        None => out.push(
            "backends: cpu (f32 reference), cuda (bf16, f16, f32); --backend auto picks cuda"
                .into(),
        ),
        Some(e) => {
            out.push("backends: cpu (f32 reference); --backend auto picks cpu".into());
            out.push(format!("cuda:     unavailable: {e}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_opens_and_cuda_without_a_gpu_is_a_clear_error() {
        let cpu = BackendArgs {
            backend: BackendChoice::Cpu,
            ..BackendArgs::default()
        };
        assert!(matches!(open(&cpu), Ok(Opened::Cpu(_))));
        if cuda::probe(false).usable() {
            return;
        }
        let a = BackendArgs {
            backend: BackendChoice::Cuda,
            ..BackendArgs::default()
        };
        let e = open(&a).err().expect("no GPU here").to_string();
        assert!(e.starts_with("backend `cuda`: no CUDA device: "), "{e}");
        // auto falls back to the CPU
        assert!(matches!(open(&BackendArgs::default()), Ok(Opened::Cpu(_))));
    }
}
