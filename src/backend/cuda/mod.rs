//! The CUDA backend: every op of the forward pass on one GPU, through cudarc.
//!
//! - [`device`]: probing before use (cudarc panics when a library is missing) and describing GPUs;
//! - [`compile`]: the `kernels/*.cu` sources, embedded at build time, compiled by NVRTC at run time
//!   for the device's own `sm_XX` (CUBIN) and cached on disk;
//! - [`ops`]: one launch wrapper per kernel;
//! - [`attention`]: the attention variants (naive; flash prefill + split-KV decode), the split
//!   heuristic and their launches (docs/attention.md);
//! - [`gemm`]: `linear` through cuBLAS (bf16/f16 with f32 accumulation, f32 in f32);
//! - [`graph`]: recording a step into a CUDA graph and replaying it (`model::graphs` decides when);
//! - [`memory`]: the device memory plan (weights, activations, KV pool from
//!   `--gpu-memory-utilization`);
//! - [`params`]: bindgen's output for `kernels/params.h` (committed; `scripts/check-bindings`).
//!
//! [`CudaBackend<T>`] is generic over the compute dtype `T` ([`half::bf16`], [`half::f16`], `f32`):
//! buffers are `CudaSlice<T>`, kernels come from the modules compiled with `-DIM_DTYPE` of `T`.
//! Layouts are the CPU reference's (`backend::cpu`), element for element; tests/cuda_*.rs compare the
//! two. Everything runs on one stream; host reads (`download`) synchronise it, which is also where a
//! kernel fault would surface, as a typed error.

pub mod attention;
pub mod compile;
pub mod device;
pub mod gemm;
pub mod graph;
pub mod memory;
pub mod ops;
#[rustfmt::skip]
#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all,
    clippy::pedantic
)]
pub mod params;

use std::marker::PhantomData;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, DeviceRepr, ValidAsZeroBits};

use super::{AttentionSpec, Backend, BatchMeta, KvGeometry, MoeRouting, MoeScratch};
use crate::engine::sampling::{TokenBan, TokenDraw};
use crate::engine::SamplingParams;
use crate::error::{Error, Result};
use crate::model::config::MlpActivation;
use crate::model::tensor_store::HostTensor;

pub use attention::{AttentionVariant, AutoTuning, PrefillLoads};
pub use device::{probe, CudaProbe, GpuInfo, LibraryStatus};
pub use memory::{MemoryPlan, PlanInputs};
pub use params::SamplingRowParams;

/// A CUDA backend error with `msg`.
pub(crate) fn err(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: msg.into(),
    }
}

/// A driver error, prefixed with what was being done.
pub(crate) fn drv(what: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |e| err(format!("{what}: {e}"))
}

/// A compute dtype of the CUDA backend.
pub trait CudaDtype:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + Unpin + std::fmt::Debug + 'static
{
    /// "bf16", "f16", "f32"
    const NAME: &'static str;
    /// The `-DIM_DTYPE` id (params.h).
    const DTYPE_ID: u32;
    /// cuBLAS's name for it.
    const CUDA_DATA_TYPE: cudarc::cublas::sys::cudaDataType;
    /// Round-to-nearest-even from f32 (as the kernels' `from_float`).
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl CudaDtype for half::bf16 {
    const NAME: &'static str = "bf16";
    const DTYPE_ID: u32 = params::IM_DTYPE_BF16;
    const CUDA_DATA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_16BF;
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl CudaDtype for half::f16 {
    const NAME: &'static str = "f16";
    const DTYPE_ID: u32 = params::IM_DTYPE_F16;
    const CUDA_DATA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_16F;
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl CudaDtype for f32 {
    const NAME: &'static str = "f32";
    const DTYPE_ID: u32 = params::IM_DTYPE_F32;
    const CUDA_DATA_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_32F;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

/// How to open the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaOptions {
    /// Device ordinal (as the driver numbers them, after CUDA_VISIBLE_DEVICES).
    pub ordinal: usize,
    /// Compiled-kernel cache folder; None compiles every time.
    pub cache_dir: Option<PathBuf>,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            ordinal: 0,
            cache_dir: compile::default_cache_dir(),
        }
    }
}

/// How the kernels were obtained when the backend opened.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CompileReport {
    pub nvrtc_version: String,
    /// "sm_90" (CUBIN) or "compute_90" (PTX, JIT-compiled by the driver)
    pub target: String,
    pub modules_compiled: usize,
    pub modules_from_cache: usize,
    pub seconds: f64,
    pub cache_dir: Option<PathBuf>,
    pub include_dirs: Vec<PathBuf>,
    /// NVRTC warnings (file: log), empty for clean compiles.
    pub warnings: Vec<String>,
}

/// One opened device with the kernels of one dtype; shared by clones of a backend.
struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    gemm: gemm::Gemm,
    kernels: ops::Kernels,
    info: GpuInfo,
    free_at_open: usize,
    compile: CompileReport,
    /// All-zero u32 row indices for the bias broadcast in `linear`, grown on demand.
    zero_rows: Mutex<Option<CudaSlice<u32>>>,
    /// The split-KV decode's partial results (acc, (m, l)), grown on demand, never shrunk. Ops run
    /// in order on the one stream, so successive attention calls can share it.
    decode_scratch: Mutex<Option<(CudaSlice<f32>, CudaSlice<f32>)>>,
    /// A mixture-of-experts plan on the device: the gather rows and slot_of (u32, 2 × choices)
    /// and the weights (f32), grown on demand, never shrunk.
    moe_plan: Mutex<Option<(CudaSlice<u32>, CudaSlice<f32>)>>,
    /// Bumped whenever `zero_rows`, `decode_scratch` or `moe_plan` is reallocated: a graph recorded before
    /// points at freed memory ([`Backend::graph_epoch`]).
    epoch: AtomicU64,
}

/// The CUDA backend for compute dtype `T`. Cloning shares the device, stream and kernels; the
/// attention settings are per clone.
pub struct CudaBackend<T: CudaDtype> {
    dev: Arc<Device>,
    attention: AttentionVariant,
    /// The `Auto` variant's study settings (forced decode splits, prefill loads).
    auto_tuning: AutoTuning,
    _dtype: PhantomData<T>,
}

impl<T: CudaDtype> Clone for CudaBackend<T> {
    fn clone(&self) -> Self {
        Self {
            dev: self.dev.clone(),
            attention: self.attention,
            auto_tuning: self.auto_tuning,
            _dtype: PhantomData,
        }
    }
}

impl<T: CudaDtype> std::fmt::Debug for CudaBackend<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("dtype", &T::NAME)
            .field("device", &self.dev.info)
            .field("attention", &self.attention)
            .finish()
    }
}

impl<T: CudaDtype> CudaBackend<T> {
    /// silu_mul and gelu_tanh_mul (`act` picks the kernel): out [rows, inter], x [rows, 2 inter].
    fn gated_mul(
        &self,
        act: MlpActivation,
        out: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        rows: usize,
        inter: usize,
    ) -> Result<()> {
        need(out, rows * inter, "out")?;
        need(x, rows * 2 * inter, "x")?;
        let (rows, inter) = (u(rows, "rows")?, u(inter, "inter")?);
        ops::gated_mul(self.k(), self.s(), act, out, x, rows, inter)
    }

    /// Open device 0 with the default kernel cache.
    pub fn new() -> Result<Self> {
        Self::with_options(&CudaOptions::default())
    }

    /// Probe, create the context and stream, compile (or load from the cache) and load every kernel
    /// for this dtype, create the cuBLAS handle. Without a usable GPU: `Error::Backend` "no CUDA
    /// device: <reason>", never a panic. The attention variant comes from `INFERMETER_ATTENTION`
    /// (`naive`, the default, or `auto`; see [`attention`]).
    pub fn with_options(opts: &CudaOptions) -> Result<Self> {
        let attention = AttentionVariant::from_env()?;
        let info = device::require(opts.ordinal)?;
        let ctx = CudaContext::new(opts.ordinal).map_err(drv("creating the CUDA context"))?;
        // One stream, no cross-stream hazards: cudarc's per-buffer event tracking would only add
        // two event records per kernel argument.
        // SAFETY: called before any buffer or stream of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("creating a stream"))?;

        let t0 = Instant::now();
        let compiler = compile::Compiler::new(opts.cache_dir.clone())?;
        let target = compiler.target_for(info.compute_capability)?;
        let mut modules = Vec::with_capacity(compile::KERNEL_FILES.len());
        let (mut compiled, mut cached, mut warnings) = (0, 0, Vec::new());
        // the driver's refusal, with the likely cause when NVRTC is newer than the driver
        let load_error = |file: &compile::KernelFile, e: cudarc::driver::DriverError| {
            let hint = device::driver_cuda_version()
                .and_then(|d| device::nvrtc_driver_mismatch(compiler.version, d))
                .map_or(String::new(), |why| format!(" ({why})"));
            err(format!(
                "loading kernels/{} ({}, NVRTC {}): {e}{hint}",
                file.name,
                target.arch_name(),
                compiler.version_string()
            ))
        };
        for file in compile::KERNEL_FILES {
            let mut c = compiler.compile(file, T::NAME, T::DTYPE_ID, target)?;
            let module = match ctx.load_module(c.image.clone().into_module_source()) {
                Ok(m) => m,
                Err(e) if c.from_cache => {
                    // a stale or foreign cache entry: drop it and compile afresh
                    if let Some(p) = compiler.cache_path(file, T::NAME, T::DTYPE_ID, target) {
                        compile::evict(&p);
                    }
                    eprintln!(
                        "warning: cached kernels/{} did not load ({e}); recompiling",
                        file.name
                    );
                    c = compiler.compile(file, T::NAME, T::DTYPE_ID, target)?;
                    ctx.load_module(c.image.clone().into_module_source())
                        .map_err(|e| load_error(file, e))?
                }
                Err(e) => return Err(load_error(file, e)),
            };
            if c.from_cache {
                cached += 1;
            } else {
                compiled += 1;
            }
            if !c.log.is_empty() {
                warnings.push(format!("{}: {}", file.name, c.log));
            }
            modules.push((file.name, module));
        }
        let kernels = ops::Kernels::load(&modules, info.multiprocessors)?;
        let gemm = gemm::Gemm::new(stream.clone())?;
        let (free_at_open, _) = ctx.mem_get_info().map_err(drv("cuMemGetInfo"))?;
        let mut info = info;
        info.free_memory_bytes = Some(free_at_open);
        let compile = CompileReport {
            nvrtc_version: compiler.version_string(),
            target: target.arch_name(),
            modules_compiled: compiled,
            modules_from_cache: cached,
            seconds: t0.elapsed().as_secs_f64(),
            cache_dir: compiler.cache_dir.clone(),
            include_dirs: compiler.include_dirs.clone(),
            warnings,
        };
        Ok(Self {
            dev: Arc::new(Device {
                ctx,
                stream,
                gemm,
                kernels,
                info,
                free_at_open,
                compile,
                zero_rows: Mutex::new(None),
                decode_scratch: Mutex::new(None),
                moe_plan: Mutex::new(None),
                epoch: AtomicU64::new(0),
            }),
            attention,
            auto_tuning: AutoTuning::default(),
            _dtype: PhantomData,
        })
    }

    /// The attention variant [`Backend::attention`] runs.
    pub fn attention_variant(&self) -> AttentionVariant {
        self.attention
    }

    pub fn set_attention_variant(&mut self, v: AttentionVariant) {
        self.attention = v;
    }

    /// This backend (sharing the device) with another attention variant.
    pub fn with_attention_variant(mut self, v: AttentionVariant) -> Self {
        self.attention = v;
        self
    }

    /// What the `Auto` variant runs besides its defaults (tests and studies): a forced split count
    /// of the split-KV decode (clamped to 1..=64 and to the context; `None`: the heuristic,
    /// [`attention::plan_decode_splits`]), the flash prefill's K/V loads.
    pub fn set_auto_tuning(&mut self, tuning: AutoTuning) {
        self.auto_tuning = tuning;
    }

    pub fn dtype(&self) -> &'static str {
        T::NAME
    }

    /// Bytes per element of the compute dtype.
    pub fn elem_bytes(&self) -> usize {
        std::mem::size_of::<T>()
    }

    /// The GPU (free memory as of opening).
    pub fn gpu(&self) -> &GpuInfo {
        &self.dev.info
    }

    pub fn compile_report(&self) -> &CompileReport {
        &self.dev.compile
    }

    /// Free device memory when the backend opened (after its context and kernels).
    pub fn free_at_open(&self) -> usize {
        self.dev.free_at_open
    }

    /// (free, total) device memory now.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.dev.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
    }

    /// The stream every op is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.dev.stream
    }

    /// The memory plan for a model already uploaded through this backend (see [`memory`]).
    pub fn plan_memory(
        &self,
        cfg: &crate::model::ModelConfig,
        layout: &crate::kv::KvLayout,
        utilization: f64,
        block_size: usize,
        max_num_batched_tokens: usize,
        max_num_seqs: usize,
    ) -> Result<MemoryPlan> {
        self.synchronize()?;
        let (free_now, total) = self.mem_info()?;
        memory::plan(
            cfg,
            layout,
            PlanInputs {
                total_bytes: total,
                free_at_open_bytes: self.dev.free_at_open,
                free_after_weights_bytes: free_now,
                utilization,
                elem_bytes: self.elem_bytes(),
                block_size,
                max_num_batched_tokens,
                max_num_seqs,
            },
        )
    }

    fn s(&self) -> &CudaStream {
        &self.dev.stream
    }

    fn k(&self) -> &ops::Kernels {
        &self.dev.kernels
    }

    // ---- picking tokens on the GPU (the engine's path: `Backend::pick_tokens`) ----

    /// Greedy tokens of `rows` rows of logits [rows, vocab] (argmax, first index on ties).
    pub fn argmax_rows(
        &self,
        logits: &CudaSlice<T>,
        rows: usize,
        vocab: usize,
    ) -> Result<Vec<u32>> {
        check_len(logits.len(), rows * vocab, "logits")?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let mut out = self.alloc_u32(rows)?;
        ops::argmax_rows(
            self.k(),
            self.s(),
            &mut out,
            logits,
            ops::u32_of(rows, "rows")?,
            ops::u32_of(vocab, "vocab")?,
        )?;
        self.read_u32(&out)
    }

    /// Sampled tokens: row r of logits [rows, vocab] with `params[r]` (temperature, top-k, top-p
    /// and the row's uniform draw; see sampling.cu). `rows = params.len()`.
    pub fn sample_rows(
        &self,
        logits: &CudaSlice<T>,
        params: &[SamplingRowParams],
        vocab: usize,
    ) -> Result<Vec<u32>> {
        let rows = params.len();
        check_len(logits.len(), rows * vocab, "logits")?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        if vocab == 0 {
            return Err(Error::Invalid("sampling from an empty vocabulary".into()));
        }
        let p = self
            .dev
            .stream
            .clone_htod(params)
            .map_err(drv("copying to the device"))?;
        let mut out = self.alloc_u32(rows)?;
        ops::sample_rows(
            self.k(),
            self.s(),
            &mut out,
            logits,
            &p,
            ops::u32_of(rows, "rows")?,
            ops::u32_of(vocab, "vocab")?,
        )?;
        self.read_u32(&out)
    }

    /// Set `logits[row, token]` to -inf in place for each ban (the first `rows` rows of `[rows,
    /// vocab]`); bans outside them are ignored.
    pub fn ban_tokens(
        &self,
        logits: &mut CudaSlice<T>,
        rows: usize,
        vocab: usize,
        bans: &[TokenBan],
    ) -> Result<()> {
        check_len(logits.len(), rows * vocab, "logits")?;
        if bans.is_empty() || rows == 0 {
            return Ok(());
        }
        let pairs: Vec<u32> = bans.iter().flat_map(|b| [b.row, b.token]).collect();
        let pairs = self
            .dev
            .stream
            .clone_htod(&pairs)
            .map_err(drv("copying to the device"))?;
        ops::ban_tokens(
            self.k(),
            self.s(),
            logits,
            &pairs,
            ops::u32_of(bans.len(), "bans")?,
            ops::u32_of(rows, "rows")?,
            ops::u32_of(vocab, "vocab")?,
        )
    }

    fn alloc_u32(&self, len: usize) -> Result<CudaSlice<u32>> {
        self.dev
            .stream
            .alloc_zeros::<u32>(len)
            .map_err(drv("cuMemAlloc"))
    }

    fn read_u32(&self, buf: &CudaSlice<u32>) -> Result<Vec<u32>> {
        let v = self
            .dev
            .stream
            .clone_dtoh(buf)
            .map_err(drv("copying to the host"))?;
        self.synchronize()?;
        Ok(v)
    }

    /// Whether the `Auto` attention variant has kernels for this step: flash prefill needs bf16/f16,
    /// sm_80+ and head_dim 64/128; split-KV decode head_dim 64/128/256. Otherwise the whole step
    /// runs the naive kernel.
    fn auto_attention_applies(&self, meta: &CudaMeta, geom: &KvGeometry) -> bool {
        attention::auto_supported(
            std::mem::size_of::<T>(),
            self.dev.info.compute_capability,
            geom.head_dim,
            meta.num_prefill_tiles > 0,
            meta.num_decode > 0,
        )
    }

    /// The `Auto` variant: flash prefill over the prefill sequences' query tiles, split-KV decode
    /// (and its reduce) over the decode sequences. Together they cover every row of the batch.
    #[allow(clippy::too_many_arguments)]
    fn attention_auto(
        &self,
        out: &mut CudaSlice<T>,
        qkv: &CudaSlice<T>,
        k_cache: &CudaSlice<T>,
        v_cache: &CudaSlice<T>,
        meta: &CudaMeta,
        kv: params::KvGeometry,
        num_heads: u32,
        q_stride: u32,
        out_stride: u32,
        scale: f32,
        window: u32,
        softcap: f32,
        (alibi_max_bias, alibi_scale): (f32, f32),
        kv_group: usize,
    ) -> Result<()> {
        let x = attention::AttnInputs {
            qkv,
            k_cache,
            v_cache,
            query_start_loc: meta.view(&meta.query_start_loc),
            seq_lens: meta.view(&meta.seq_lens),
            block_tables: meta.block_tables_of(kv_group),
        };
        let num_seqs = u(meta.num_seqs, "num_seqs")?;
        let max_blocks_per_seq = u(meta.max_blocks_per_seq, "max_blocks_per_seq")?;
        if meta.num_prefill_tiles > 0 {
            attention::flash_prefill(
                self.k(),
                self.s(),
                out,
                &x,
                &meta.view(&meta.prefill_tiles),
                params::PrefillAttentionParams {
                    kv,
                    num_tiles: u(meta.num_prefill_tiles, "prefill tiles")?,
                    num_seqs,
                    num_heads,
                    max_blocks_per_seq,
                    q_stride,
                    out_stride,
                    scale,
                    window,
                    softcap,
                    alibi_max_bias,
                    alibi_scale,
                },
                self.auto_tuning.prefill_loads,
            )?;
        }
        if meta.num_decode == 0 {
            return Ok(());
        }
        let group = num_heads / kv.num_kv_heads.max(1);
        // the keys a decode row reads: its context, at most the window
        let max_ctx = attention::window_keys(meta.max_decode_ctx, window) as usize;
        let plan = attention::decode_split_plan(
            self.auto_tuning.decode_splits,
            attention::SplitInputs {
                num_decode: meta.num_decode,
                kv_units: (kv.num_kv_heads * attention::decode_head_chunks(group)) as usize,
                max_ctx,
                block_size: kv.block_size as usize,
                sms: self.k().sms as usize,
            },
        );
        let (acc_len, ml_len) = attention::scratch_lens(
            meta.num_decode,
            num_heads as usize,
            plan.num_splits as usize,
            kv.head_dim as usize,
        );
        // with one split the kernel writes `out` directly and never touches the scratch
        let (acc_len, ml_len) = if plan.num_splits > 1 {
            (acc_len, ml_len)
        } else {
            (1, 1)
        };
        let mut guard = self
            .dev
            .decode_scratch
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if guard
            .as_ref()
            .is_none_or(|(a, m)| a.len() < acc_len || m.len() < ml_len)
        {
            let (have_a, have_m) = guard.as_ref().map_or((0, 0), |(a, m)| (a.len(), m.len()));
            // powers of two: few reallocations, each of which invalidates recorded graphs
            let alloc = |n: usize| {
                self.dev
                    .stream
                    .alloc_zeros::<f32>(n.max(1).next_power_of_two())
                    .map_err(drv("cuMemAlloc (decode scratch)"))
            };
            *guard = Some((alloc(acc_len.max(have_a))?, alloc(ml_len.max(have_m))?));
            self.dev.epoch.fetch_add(1, Ordering::Relaxed);
        }
        let (part_acc, part_ml) = guard
            .as_mut()
            .ok_or_else(|| err("decode scratch missing"))?;
        attention::paged_decode(
            self.k(),
            self.s(),
            out,
            part_acc,
            part_ml,
            &x,
            &meta.view(&meta.decode_seqs),
            params::DecodeAttentionParams {
                kv,
                num_decode: u(meta.num_decode, "decode sequences")?,
                num_seqs,
                num_heads,
                max_blocks_per_seq,
                q_stride,
                out_stride,
                num_splits: plan.num_splits,
                partition_len: plan.partition_len,
                scale,
                window,
                softcap,
                alibi_max_bias,
                alibi_scale,
            },
        )
    }

    /// `routing`'s gather rows, slot_of and weights copied to the device (buffers grown, never
    /// shrunk), for `f`: (gather rows [c], slot_of [c], weights [c]).
    fn with_moe_plan<R>(
        &self,
        routing: &MoeRouting,
        f: impl FnOnce(&CudaView<u32>, &CudaView<u32>, &CudaView<f32>) -> Result<R>,
    ) -> Result<R> {
        let c = routing.num_choices();
        let mut guard = self.dev.moe_plan.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|(idx, _)| idx.len() < 2 * c) {
            let n = c.max(1024).next_power_of_two();
            let s = &self.dev.stream;
            let idx = s.alloc_zeros::<u32>(2 * n).map_err(drv("cuMemAlloc"))?;
            let w = s.alloc_zeros::<f32>(n).map_err(drv("cuMemAlloc"))?;
            *guard = Some((idx, w));
            self.dev.epoch.fetch_add(1, Ordering::Relaxed);
        }
        let (idx, w) = guard
            .as_mut()
            .ok_or_else(|| err("the MoE plan buffers are missing"))?;
        let mut host = routing.gather_rows();
        host.extend_from_slice(&routing.slot_of);
        let s = &self.dev.stream;
        s.memcpy_htod(&host, &mut idx.slice_mut(..2 * c))
            .map_err(drv("copying a MoE plan"))?;
        s.memcpy_htod(&routing.weights, &mut w.slice_mut(..c))
            .map_err(drv("copying a MoE plan"))?;
        f(&idx.slice(..c), &idx.slice(c..2 * c), &w.slice(..c))
    }

    /// For each expert e with choices (its run r of the grouped rows): out[r] = x[r] ·
    /// weights[e]ᵀ, one cuBLAS GEMM on views. out: [choices, n]; x: [choices, k];
    /// weights: [num_experts, n, k]
    fn expert_gemms(
        &self,
        routing: &MoeRouting,
        out: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        weights: &CudaSlice<T>,
        n: usize,
        k: usize,
    ) -> Result<()> {
        for e in 0..routing.num_experts {
            let r = routing.expert_range(e);
            if r.is_empty() {
                continue;
            }
            self.dev.gemm.linear(
                &self.dev.stream,
                &mut out.slice_mut(r.start * n..r.end * n),
                &x.slice(r.start * k..r.end * k),
                &weights.slice(e * n * k..(e + 1) * n * k),
                false,
                r.len(),
                n,
                k,
            )?;
        }
        Ok(())
    }

    /// `len` zero row indices on the device (grown, never shrunk).
    fn with_zero_rows<R>(
        &self,
        len: usize,
        f: impl FnOnce(&CudaView<u32>) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.dev.zero_rows.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|b| b.len() < len) {
            let n = len.max(4096).next_power_of_two();
            *guard = Some(
                self.dev
                    .stream
                    .alloc_zeros::<u32>(n)
                    .map_err(drv("cuMemAlloc"))?,
            );
            self.dev.epoch.fetch_add(1, Ordering::Relaxed);
        }
        let buf = guard
            .as_ref()
            .ok_or_else(|| err("zero row indices missing"))?;
        let view = buf.slice(..len);
        f(&view)
    }
}

/// The sampling kernel's parameters of one row, from the engine's parameters and the row's uniform
/// draw (the engine's seeded RNG draws it on the host).
pub fn sampling_row_params(p: &SamplingParams, uniform: f32) -> SamplingRowParams {
    draw_params(&TokenDraw {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        uniform,
    })
}

/// The sampling kernel's parameters of one row's draw (a top-k beyond u32 is no cut, as any
/// top-k of at least the vocabulary).
pub fn draw_params(d: &TokenDraw) -> SamplingRowParams {
    SamplingRowParams {
        temperature: d.temperature,
        top_k: u32::try_from(d.top_k).unwrap_or(u32::MAX),
        top_p: d.top_p,
        uniform: d.uniform,
    }
}

fn check_len(have: usize, need: usize, name: &str) -> Result<()> {
    super::check_len("cuda", have, need, name)
}

fn need<T>(buf: &CudaSlice<T>, len: usize, name: &str) -> Result<()> {
    check_len(buf.len(), len, name)
}

/// One step's metadata on the device: every u32 array of [`BatchMeta`] in one buffer (one upload),
/// plus the host-side facts the launches need ([`MetaLayout`], reached through `Deref`).
pub struct CudaMeta {
    buf: CudaSlice<u32>,
    layout: MetaLayout,
}

/// Where each array sits in [`CudaMeta`]'s buffer, and the host-side facts of the step.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaLayout {
    token_ids: Range<usize>,
    positions: Range<usize>,
    slot_mapping: Range<usize>,
    query_start_loc: Range<usize>,
    seq_lens: Range<usize>,
    block_tables: Range<usize>,
    logits_indices: Range<usize>,
    /// [num_decode] sequences with one new token ([`attention::decode_seqs`])
    decode_seqs: Range<usize>,
    /// [num_prefill_tiles, 2] the flash prefill's work items ([`attention::prefill_tiles`])
    prefill_tiles: Range<usize>,
    pub num_tokens: usize,
    pub num_seqs: usize,
    pub num_logits: usize,
    pub max_blocks_per_seq: usize,
    /// KV groups: `slot_mapping` is [num_kv_groups, num_tokens], `block_tables` [num_kv_groups,
    /// num_seqs, max_blocks_per_seq] ([`BatchMeta`]).
    pub num_kv_groups: usize,
    /// Largest token id and position of the step (host-side checks against table sizes).
    pub max_token_id: Option<u32>,
    pub max_position: Option<u32>,
    /// Sequences with exactly one new token (decode rows).
    pub num_decode: usize,
    /// Query tiles of the sequences with two or more new tokens.
    pub num_prefill_tiles: usize,
    /// The context the split-KV decode plans for: `BatchMeta::decode_plan_ctx`, else the longest
    /// context among the decode sequences (0 without any).
    pub max_decode_ctx: u32,
}

impl MetaLayout {
    /// Whether a step with this layout can be refilled into metadata of `other`'s: the same arrays
    /// at the same places and the same launch-relevant sizes (token ids and positions may differ).
    fn same_shape(&self, other: &MetaLayout) -> bool {
        let ranges = |l: &MetaLayout| {
            [
                l.token_ids.clone(),
                l.positions.clone(),
                l.slot_mapping.clone(),
                l.query_start_loc.clone(),
                l.seq_lens.clone(),
                l.block_tables.clone(),
                l.logits_indices.clone(),
                l.decode_seqs.clone(),
                l.prefill_tiles.clone(),
            ]
        };
        ranges(self) == ranges(other)
            && (self.num_tokens, self.num_seqs, self.num_logits)
                == (other.num_tokens, other.num_seqs, other.num_logits)
            && (self.max_blocks_per_seq, self.num_kv_groups)
                == (other.max_blocks_per_seq, other.num_kv_groups)
            && (self.num_decode, self.num_prefill_tiles, self.max_decode_ctx)
                == (
                    other.num_decode,
                    other.num_prefill_tiles,
                    other.max_decode_ctx,
                )
    }
}

impl std::ops::Deref for CudaMeta {
    type Target = MetaLayout;
    fn deref(&self) -> &MetaLayout {
        &self.layout
    }
}

impl CudaMeta {
    fn view(&self, r: &Range<usize>) -> CudaView<'_, u32> {
        self.buf.slice(r.clone())
    }

    /// KV group `g`'s slots, [num_tokens] (`g` checked by the caller).
    fn slot_mapping_of(&self, g: usize) -> CudaView<'_, u32> {
        let t = self.num_tokens;
        let start = self.slot_mapping.start + g * t;
        self.buf.slice(start..start + t)
    }

    /// KV group `g`'s block tables, [num_seqs, max_blocks_per_seq] (`g` checked by the caller).
    fn block_tables_of(&self, g: usize) -> CudaView<'_, u32> {
        let len = self.num_seqs * self.max_blocks_per_seq;
        let start = self.block_tables.start + g * len;
        self.buf.slice(start..start + len)
    }
}

/// A step's metadata validated and flattened into one u32 array (the work lists of the attention
/// variants included), with where each part sits.
fn step_arrays(meta: &BatchMeta, geom: &KvGeometry) -> Result<(Vec<u32>, MetaLayout)> {
    meta.validate(geom)
        .map_err(|msg| err(format!("bad batch metadata: {msg}")))?;
    let decode_seqs = attention::decode_seqs(&meta.query_start_loc);
    let prefill_tiles = attention::prefill_tiles(&meta.query_start_loc);
    let longest_decode = decode_seqs
        .iter()
        .map(|&s| meta.seq_lens[s as usize])
        .max()
        .unwrap_or(0);
    let parts: [&[u32]; 9] = [
        &meta.token_ids,
        &meta.positions,
        &meta.slot_mapping,
        &meta.query_start_loc,
        &meta.seq_lens,
        &meta.block_tables,
        &meta.logits_indices,
        &decode_seqs,
        &prefill_tiles,
    ];
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut host = Vec::with_capacity(total.max(1));
    let mut ranges: [Range<usize>; 9] = Default::default();
    for (r, p) in ranges.iter_mut().zip(parts) {
        *r = host.len()..host.len() + p.len();
        host.extend_from_slice(p);
    }
    if host.is_empty() {
        host.push(0);
    }
    let [token_ids, positions, slot_mapping, query_start_loc, seq_lens, block_tables, logits_indices, decode_range, tiles_range] =
        ranges;
    let layout = MetaLayout {
        token_ids,
        positions,
        slot_mapping,
        query_start_loc,
        seq_lens,
        block_tables,
        logits_indices,
        decode_seqs: decode_range,
        prefill_tiles: tiles_range,
        num_tokens: meta.num_tokens(),
        num_seqs: meta.num_seqs(),
        num_logits: meta.num_logits(),
        max_blocks_per_seq: meta.max_blocks_per_seq,
        num_kv_groups: meta.num_kv_groups,
        max_token_id: meta.token_ids.iter().copied().max(),
        max_position: meta.positions.iter().copied().max(),
        num_decode: decode_seqs.len(),
        num_prefill_tiles: prefill_tiles.len() / 2,
        max_decode_ctx: if decode_seqs.is_empty() {
            0
        } else {
            meta.decode_plan_ctx.unwrap_or(longest_decode)
        },
    };
    Ok((host, layout))
}

/// u32 size of an op argument.
fn u(v: usize, what: &str) -> Result<u32> {
    ops::u32_of(v, what)
}

fn kv_params(g: &KvGeometry) -> Result<params::KvGeometry> {
    Ok(params::KvGeometry {
        num_blocks: u(g.num_blocks, "num_blocks")?,
        block_size: u(g.block_size, "block_size")?,
        num_kv_heads: u(g.num_kv_heads, "num_kv_heads")?,
        head_dim: u(g.head_dim, "head_dim")?,
    })
}

/// The launch parameters of RoPE over the first `rotary_dim` dimensions of each head of the fused
/// QKV rows of `meta`'s tokens, after checking the buffer, the dimensions and positions against the
/// cos/sin table (`what` names the op in errors).
#[allow(clippy::too_many_arguments)]
fn rope_params<T>(
    qkv: &CudaSlice<T>,
    cos_sin: &CudaSlice<T>,
    meta: &CudaMeta,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    what: &str,
) -> Result<params::RopeParams> {
    let row_len = (num_heads + 2 * num_kv_heads) * head_dim;
    need(qkv, meta.num_tokens * row_len, "qkv")?;
    let max = crate::backend::rope_table_rows(cos_sin.len(), head_dim, rotary_dim)
        .map_err(|msg| Error::Invalid(format!("{what}: {msg}")))?;
    if let Some(p) = meta.max_position.filter(|&p| p as usize >= max) {
        return Err(err(format!(
            "position {p} exceeds the RoPE table of {max} positions"
        )));
    }
    Ok(params::RopeParams {
        num_tokens: u(meta.num_tokens, "num_tokens")?,
        num_rot_heads: u(num_heads + num_kv_heads, "num_rot_heads")?,
        head_dim: u(head_dim, "head_dim")?,
        rotary_dim: u(rotary_dim, "rotary_dim")?,
        qkv_stride: u(row_len, "qkv_stride")?,
        max_positions: u(max, "max_positions")?,
    })
}

impl<T: CudaDtype> Backend for CudaBackend<T> {
    type Buffer = CudaSlice<T>;
    type Meta = CudaMeta;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, t: &HostTensor) -> Result<CudaSlice<T>> {
        if t.data.is_empty() {
            return self.zeros(0);
        }
        let host: Vec<T> = t.data.iter().map(|&v| T::from_f32(v)).collect();
        self.dev
            .stream
            .clone_htod(&host)
            .map_err(drv("copying to the device"))
    }

    fn zeros(&self, len: usize) -> Result<CudaSlice<T>> {
        // at least one element: a zero-byte allocation is an error in the driver
        self.dev
            .stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| err(format!("allocating {len} elements of {}: {e}", T::NAME)))
    }

    fn download(&self, buf: &CudaSlice<T>, len: usize) -> Result<Vec<f32>> {
        need(buf, len, "download")?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let host = self
            .dev
            .stream
            .clone_dtoh(&buf.slice(..len))
            .map_err(drv("copying to the host"))?;
        self.synchronize()?;
        Ok(host.into_iter().map(T::to_f32).collect())
    }

    fn prepare(&self, meta: &BatchMeta, geom: &KvGeometry) -> Result<CudaMeta> {
        let (host, layout) = step_arrays(meta, geom)?;
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the CUDA context"))?;
        let buf = self
            .dev
            .stream
            .clone_htod(&host)
            .map_err(drv("copying step metadata"))?;
        Ok(CudaMeta { buf, layout })
    }

    type Graph = graph::StepGraph;

    fn can_capture(&self) -> bool {
        true
    }

    fn capture(&self, record: &mut dyn FnMut() -> Result<()>) -> Result<graph::StepGraph> {
        graph::capture(&self.dev.stream, record)
    }

    fn replay(&self, graph: &graph::StepGraph) -> Result<()> {
        graph.launch()
    }

    /// Wait for every queued op (and surface an asynchronous kernel error).
    fn synchronize(&self) -> Result<()> {
        self.dev.stream.synchronize().map_err(drv("synchronizing"))
    }

    fn refill(&self, dst: &mut CudaMeta, meta: &BatchMeta, geom: &KvGeometry) -> Result<()> {
        let (host, layout) = step_arrays(meta, geom)?;
        if !layout.same_shape(&dst.layout) {
            return Err(err(format!(
                "refill: a step of {} tokens, {} sequences, {} block-table columns and decode plan \
                 context {} does not fit metadata prepared for {}, {}, {} and {}",
                layout.num_tokens,
                layout.num_seqs,
                layout.max_blocks_per_seq,
                layout.max_decode_ctx,
                dst.num_tokens,
                dst.num_seqs,
                dst.max_blocks_per_seq,
                dst.max_decode_ctx
            )));
        }
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the CUDA context"))?;
        self.dev
            .stream
            .memcpy_htod(&host, &mut dst.buf)
            .map_err(drv("copying step metadata"))?;
        dst.layout = layout;
        Ok(())
    }

    fn graph_epoch(&self) -> u64 {
        self.dev.epoch.load(Ordering::Relaxed)
    }

    /// The zero row indices of the biased GEMMs (`linear` with a bias broadcasts it through them).
    fn reserve_rows(&self, rows: usize) -> Result<()> {
        self.with_zero_rows(rows.max(1), |_| Ok(()))
    }

    /// Bans in place, then one block per row: `argmax_rows` when every draw is greedy (one pass),
    /// else `sample_rows` (greedy rows take its argmax path). Only the `rows` u32 ids are copied
    /// back, instead of `rows * vocab` logits.
    fn pick_tokens(
        &self,
        logits: &mut CudaSlice<T>,
        vocab: usize,
        draws: &[TokenDraw],
        bans: &[TokenBan],
    ) -> Result<Option<Vec<u32>>> {
        // each of these checks the logits' length
        let rows = draws.len();
        self.ban_tokens(logits, rows, vocab, bans)?;
        let tokens = if draws.iter().all(TokenDraw::is_greedy) {
            self.argmax_rows(logits, rows, vocab)?
        } else {
            let params: Vec<SamplingRowParams> = draws.iter().map(draw_params).collect();
            self.sample_rows(logits, &params, vocab)?
        };
        Ok(Some(tokens))
    }

    fn embedding(
        &self,
        out: &mut CudaSlice<T>,
        table: &CudaSlice<T>,
        pos_table: Option<&CudaSlice<T>>,
        meta: &CudaMeta,
        hidden: usize,
    ) -> Result<()> {
        if hidden == 0 {
            return Err(Error::Invalid("embedding: hidden size 0".into()));
        }
        need(out, meta.num_tokens * hidden, "out")?;
        let vocab = table.len() / hidden;
        if let Some(bad) = meta.max_token_id.filter(|&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let max_positions = pos_table.map_or(0, |p| p.len() / hidden);
        if pos_table.is_some() {
            if let Some(p) = meta.max_position.filter(|&p| p as usize >= max_positions) {
                return Err(err(format!(
                    "position {p} exceeds the {max_positions} learned positions"
                )));
            }
        }
        ops::embedding(
            self.k(),
            self.s(),
            out,
            table,
            pos_table,
            &meta.view(&meta.token_ids),
            &meta.view(&meta.positions),
            u(meta.num_tokens, "num_tokens")?,
            u(hidden, "hidden")?,
            u(vocab, "vocab")?,
            u(max_positions, "max_positions")?,
        )
    }

    fn layernorm(
        &self,
        out: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        bias: &CudaSlice<T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        need(out, rows * cols, "out")?;
        need(x, rows * cols, "x")?;
        need(weight, cols, "weight")?;
        need(bias, cols, "bias")?;
        ops::layernorm(
            self.k(),
            self.s(),
            out,
            x,
            weight,
            bias,
            u(rows, "rows")?,
            u(cols, "cols")?,
            eps,
        )
    }

    fn rmsnorm(
        &self,
        out: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        need(out, rows * cols, "out")?;
        need(x, rows * cols, "x")?;
        need(weight, cols, "weight")?;
        ops::rmsnorm(
            self.k(),
            self.s(),
            out,
            x,
            weight,
            u(rows, "rows")?,
            u(cols, "cols")?,
            eps,
        )
    }

    fn qk_rmsnorm(
        &self,
        qkv: &mut CudaSlice<T>,
        q_norm: &CudaSlice<T>,
        k_norm: &CudaSlice<T>,
        rows: usize,
        q_cols: usize,
        k_cols: usize,
        eps: f32,
    ) -> Result<()> {
        need(qkv, rows * (q_cols + 2 * k_cols), "qkv")?;
        need(q_norm, q_cols, "q_norm")?;
        need(k_norm, k_cols, "k_norm")?;
        ops::qk_rmsnorm(
            self.k(),
            self.s(),
            qkv,
            q_norm,
            k_norm,
            u(rows, "rows")?,
            u(q_cols, "q_cols")?,
            u(k_cols, "k_cols")?,
            eps,
        )
    }

    fn add_rmsnorm(
        &self,
        residual: &mut CudaSlice<T>,
        delta: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        weight: &CudaSlice<T>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        need(out, rows * cols, "out")?;
        need(residual, rows * cols, "residual")?;
        need(delta, rows * cols, "delta")?;
        need(weight, cols, "weight")?;
        ops::add_rmsnorm(
            self.k(),
            self.s(),
            residual,
            delta,
            out,
            weight,
            u(rows, "rows")?,
            u(cols, "cols")?,
            eps,
        )
    }

    fn add_inplace(&self, x: &mut CudaSlice<T>, y: &CudaSlice<T>, len: usize) -> Result<()> {
        need(x, len, "x")?;
        need(y, len, "y")?;
        ops::add_inplace(self.k(), self.s(), x, y, len as u64)
    }

    fn softcap_inplace(&self, x: &mut CudaSlice<T>, cap: f32, len: usize) -> Result<()> {
        need(x, len, "x")?;
        if !(cap.is_finite() && cap > 0.0) {
            return Err(err(format!("soft-cap {cap} (must be positive and finite)")));
        }
        ops::softcap_inplace(self.k(), self.s(), x, len as u64, cap)
    }

    fn scale_inplace(&self, x: &mut CudaSlice<T>, scale: f32, len: usize) -> Result<()> {
        need(x, len, "x")?;
        // the scale in T, as the Backend contract says
        let scale = T::from_f32(scale).to_f32();
        ops::scale_inplace(self.k(), self.s(), x, len as u64, scale)
    }

    fn linear(
        &self,
        out: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        weight: &CudaSlice<T>,
        bias: Option<&CudaSlice<T>>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        need(out, m * n, "out")?;
        need(x, m * k, "x")?;
        need(weight, n * k, "weight")?;
        // cuBLAS works in the calling thread's current context (kernel launches bind it themselves)
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the CUDA context"))?;
        if let Some(b) = bias {
            need(b, n, "bias")?;
            if m > 0 {
                // out[r] = bias for every row, then out += x · wᵀ (beta = 1): see gemm.rs
                self.with_zero_rows(m, |zeros| {
                    ops::gather_logit_rows(
                        self.k(),
                        self.s(),
                        out,
                        b,
                        zeros,
                        u(m, "m")?,
                        1,
                        u(n, "n")?,
                    )
                })?;
            }
        }
        self.dev
            .gemm
            .linear(&self.dev.stream, out, x, weight, bias.is_some(), m, n, k)
    }

    fn rope(
        &self,
        qkv: &mut CudaSlice<T>,
        cos_sin: &CudaSlice<T>,
        meta: &CudaMeta,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        rotary_dim: usize,
    ) -> Result<()> {
        let p = rope_params(
            qkv,
            cos_sin,
            meta,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
            "rope",
        )?;
        let positions = meta.view(&meta.positions);
        ops::rope(self.k(), self.s(), qkv, cos_sin, &positions, p)
    }

    fn qk_norm_rope(
        &self,
        qkv: &mut CudaSlice<T>,
        cos_sin: &CudaSlice<T>,
        q_norm: &CudaSlice<T>,
        k_norm: &CudaSlice<T>,
        meta: &CudaMeta,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        let what = "qk_norm_rope";
        let rope = rope_params(
            qkv,
            cos_sin,
            meta,
            num_heads,
            num_kv_heads,
            head_dim,
            head_dim,
            what,
        )?;
        need(q_norm, head_dim, "q_norm")?;
        need(k_norm, head_dim, "k_norm")?;
        let p = params::QkNormRopeParams {
            rope,
            num_q_heads: u(num_heads, "num_heads")?,
            eps,
        };
        let positions = meta.view(&meta.positions);
        ops::qk_norm_rope(
            self.k(),
            self.s(),
            qkv,
            cos_sin,
            &positions,
            q_norm,
            k_norm,
            p,
        )
    }

    fn write_kv(
        &self,
        k_cache: &mut CudaSlice<T>,
        v_cache: &mut CudaSlice<T>,
        qkv: &CudaSlice<T>,
        meta: &CudaMeta,
        geom: &KvGeometry,
        num_heads: usize,
        kv_group: usize,
    ) -> Result<()> {
        need(k_cache, geom.layer_len(), "k_cache")?;
        need(v_cache, geom.layer_len(), "v_cache")?;
        let row_len = num_heads * geom.head_dim + 2 * geom.slot_len();
        need(qkv, meta.num_tokens * row_len, "qkv")?;
        super::check_kv_group("cuda", kv_group, meta.num_kv_groups)?;
        ops::write_kv(
            self.k(),
            self.s(),
            k_cache,
            v_cache,
            qkv,
            &meta.slot_mapping_of(kv_group),
            params::KvWriteParams {
                kv: kv_params(geom)?,
                num_tokens: u(meta.num_tokens, "num_tokens")?,
                num_heads: u(num_heads, "num_heads")?,
                qkv_stride: u(row_len, "qkv_stride")?,
            },
        )
    }

    fn attention(
        &self,
        out: &mut CudaSlice<T>,
        qkv: &CudaSlice<T>,
        k_cache: &CudaSlice<T>,
        v_cache: &CudaSlice<T>,
        meta: &CudaMeta,
        geom: &KvGeometry,
        spec: &AttentionSpec,
    ) -> Result<()> {
        let (num_heads, scale) = (spec.num_heads, spec.scale);
        let q_size = num_heads * geom.head_dim;
        let row_len = q_size + 2 * geom.slot_len();
        need(out, meta.num_tokens * q_size, "out")?;
        need(qkv, meta.num_tokens * row_len, "qkv")?;
        need(k_cache, geom.layer_len(), "k_cache")?;
        need(v_cache, geom.layer_len(), "v_cache")?;
        let kv = kv_params(geom)?;
        let num_heads_u = u(num_heads, "num_heads")?;
        let q_stride = u(row_len, "q_stride")?;
        let out_stride = u(q_size, "out_stride")?;
        spec.check("cuda")?;
        super::check_kv_group("cuda", spec.kv_group, meta.num_kv_groups)?;
        let window = attention::window_param(spec.window);
        let softcap = spec.softcap.unwrap_or(0.0);
        let alibi = attention::alibi_params(spec.alibi);
        if self.attention == AttentionVariant::Auto && self.auto_attention_applies(meta, geom) {
            return self.attention_auto(
                out,
                qkv,
                k_cache,
                v_cache,
                meta,
                kv,
                num_heads_u,
                q_stride,
                out_stride,
                scale,
                window,
                softcap,
                alibi,
                spec.kv_group,
            );
        }
        ops::paged_attention_naive(
            self.k(),
            self.s(),
            out,
            qkv,
            k_cache,
            v_cache,
            &meta.view(&meta.query_start_loc),
            &meta.view(&meta.seq_lens),
            &meta.view(&meta.positions),
            &meta.block_tables_of(spec.kv_group),
            params::PagedAttentionParams {
                kv,
                num_tokens: u(meta.num_tokens, "num_tokens")?,
                num_seqs: u(meta.num_seqs, "num_seqs")?,
                num_heads: num_heads_u,
                max_blocks_per_seq: u(meta.max_blocks_per_seq, "max_blocks_per_seq")?,
                q_stride,
                out_stride,
                scale,
                window,
                softcap,
                alibi_max_bias: alibi.0,
                alibi_scale: alibi.1,
            },
        )
    }

    fn gelu_new(&self, x: &mut CudaSlice<T>, len: usize) -> Result<()> {
        need(x, len, "x")?;
        ops::gelu_new(self.k(), self.s(), x, len as u64)
    }

    fn gelu_erf(&self, x: &mut CudaSlice<T>, len: usize) -> Result<()> {
        need(x, len, "x")?;
        ops::gelu_erf(self.k(), self.s(), x, len as u64)
    }

    fn relu(&self, x: &mut CudaSlice<T>, len: usize) -> Result<()> {
        need(x, len, "x")?;
        ops::relu(self.k(), self.s(), x, len as u64)
    }

    fn silu_mul(
        &self,
        out: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        rows: usize,
        inter: usize,
    ) -> Result<()> {
        self.gated_mul(MlpActivation::Silu, out, x, rows, inter)
    }

    fn gelu_tanh_mul(
        &self,
        out: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        rows: usize,
        inter: usize,
    ) -> Result<()> {
        self.gated_mul(MlpActivation::GeluTanh, out, x, rows, inter)
    }

    /// The plan to the device, the rows gathered in expert order, one cuBLAS GEMM pair per
    /// expert with tokens (on views into the stacked weights and the scratch rows), one
    /// `silu_mul` over every choice, and `moe_combine`'s weighted sums. Host-planned shapes make
    /// the step unrecordable: the model runs MoE steps eagerly.
    fn moe_experts(
        &self,
        out: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        gate_up: &CudaSlice<T>,
        down: &CudaSlice<T>,
        routing: &MoeRouting,
        scratch: &mut MoeScratch<CudaSlice<T>>,
        hidden: usize,
        inter: usize,
    ) -> Result<()> {
        let lens = [out, x, gate_up, down].map(|b| b.len());
        let scratch_lens = scratch.each(|b| b.len());
        routing.check_buffers("cuda", lens, scratch_lens, hidden, inter)?;
        let (t, c) = (routing.num_tokens, routing.num_choices());
        if t == 0 {
            return Ok(());
        }
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("binding the CUDA context"))?;
        let (h, i2) = (hidden, 2 * inter);
        self.with_moe_plan(routing, |rows, slot_of, weights| {
            let (cu, tu, hu) = (u(c, "choices")?, u(t, "tokens")?, u(h, "hidden")?);
            ops::gather_logit_rows(self.k(), self.s(), &mut scratch.rows, x, rows, cu, tu, hu)?;
            self.expert_gemms(routing, &mut scratch.gate_up, &scratch.rows, gate_up, i2, h)?;
            self.gated_mul(
                MlpActivation::Silu,
                &mut scratch.act,
                &scratch.gate_up,
                c,
                inter,
            )?;
            self.expert_gemms(routing, &mut scratch.out, &scratch.act, down, h, inter)?;
            let k = u(routing.top_k, "top_k")?;
            ops::moe_combine(
                self.k(),
                self.s(),
                out,
                &scratch.out,
                slot_of,
                weights,
                tu,
                k,
                cu,
                hu,
            )
        })
    }

    fn gather_logit_rows(
        &self,
        out: &mut CudaSlice<T>,
        x: &CudaSlice<T>,
        meta: &CudaMeta,
        cols: usize,
    ) -> Result<()> {
        need(out, meta.num_logits * cols, "out")?;
        need(x, meta.num_tokens * cols, "x")?;
        ops::gather_logit_rows(
            self.k(),
            self.s(),
            out,
            x,
            &meta.view(&meta.logits_indices),
            u(meta.num_logits, "num_logits")?,
            u(meta.num_tokens, "num_tokens")?,
            u(cols, "cols")?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_without_a_gpu_is_a_clean_error() {
        if device::probe(false).usable() {
            return; // a GPU machine: tests/cuda_*.rs cover the backend itself
        }
        let e = CudaBackend::<half::bf16>::new().unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                Error::Backend {
                    backend: "cuda",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("no CUDA device: "), "{msg}");
    }

    #[test]
    fn dtype_round_trips_and_names() {
        assert_eq!(
            <half::bf16 as CudaDtype>::from_f32(1.0 + 1.0 / 512.0).to_f32(),
            1.0
        );
        assert_eq!(
            <half::f16 as CudaDtype>::from_f32(0.1).to_f32(),
            half::f16::from_f32(0.1).to_f32()
        );
        assert_eq!(<f32 as CudaDtype>::NAME, "f32");
        assert_eq!(ops::vec_width::<half::bf16>(), 8);
        assert_eq!(ops::vec_width::<f32>(), 4);
        let p = sampling_row_params(
            &SamplingParams {
                temperature: 0.7,
                top_k: usize::MAX,
                top_p: 0.9,
                seed: 1,
            },
            0.25,
        );
        assert_eq!((p.top_k, p.uniform), (u32::MAX, 0.25));
    }
}
