//! One launch wrapper per kernel: arguments in the exact order of the kernel's signature
//! (`kernels/*.cu`), launch geometry as the kernel files and `kernels/params.h` document.
//!
//! | kernel                  | grid                                         | block                    |
//! |-------------------------|----------------------------------------------|--------------------------|
//! | embedding, gather_logit_rows, layernorm, rmsnorm, add_rmsnorm, rope, write_kv | one block per row (the kernels grid-stride, so the grid is capped at [`MAX_ROW_BLOCKS`]) | `IM_ROW_THREADS` |
//! | qk_rmsnorm              | one block per row's Q and one per its K (2 × rows, capped as rows) | `IM_ROW_THREADS` |
//! | moe_combine             | one block per token (capped as rows)         | `IM_ROW_THREADS`         |
//! | add_inplace, gelu_new, gelu_erf, relu, silu_mul, softcap_inplace, scale_inplace | min(ceil(16-byte vectors / threads), SMs × `IM_ELEMENTWISE_BLOCKS_PER_SM`) | `IM_ELEMENTWISE_THREADS` |
//! | paged_attention_naive   | (num_tokens, num_heads)                      | `IM_ATTN_THREADS`        |
//! | paged_decode_d*, paged_decode_reduce, flash_prefill{,_sync}_d* | see [`super::attention`] | |
//! | argmax_rows, sample_rows| one block per row (capped as rows)           | `IM_SAMPLING_THREADS`    |
//! | ban_tokens              | elementwise over the bans                    | `IM_ELEMENTWISE_THREADS` |
//!
//! The wrappers check what the kernels rely on the host for (sizes fit in u32, attention's head_dim
//! and GQA requirements) and return typed errors; they do not check buffer lengths (the `Backend`
//! impl does, against the shapes of the op).

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig,
    PushKernelArg,
};

use super::params::{
    KvWriteParams, PagedAttentionParams, QkNormRopeParams, RopeParams, SamplingRowParams,
    IM_ATTN_MAX_HEAD_DIM, IM_ATTN_THREADS, IM_ELEMENTWISE_BLOCKS_PER_SM, IM_ELEMENTWISE_THREADS,
    IM_ROW_THREADS, IM_SAMPLING_THREADS,
};
use super::CudaDtype;
use crate::error::{Error, Result};
use crate::model::config::MlpActivation;

// SAFETY: the parameter structs are #[repr(C)] plain data of 4-byte fields (params.h; bindgen's
// layout tests in params.rs check size and alignment), passed to kernels by value.
unsafe impl DeviceRepr for KvWriteParams {}
unsafe impl DeviceRepr for RopeParams {}
unsafe impl DeviceRepr for QkNormRopeParams {}
unsafe impl DeviceRepr for PagedAttentionParams {}
unsafe impl DeviceRepr for SamplingRowParams {}

/// Grid cap of the grid-stride row kernels (any grid size is correct; past this, blocks loop).
pub const MAX_ROW_BLOCKS: u32 = 65_535;

fn err(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: msg.into(),
    }
}

/// `v` as u32, or an error naming it.
pub fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        err(format!(
            "{what} = {v} does not fit the kernels' 32-bit sizes"
        ))
    })
}

fn launched(name: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |e| err(format!("launching {name}: {e}"))
}

/// Every kernel, loaded from the modules compiled for one dtype.
#[derive(Debug, Clone)]
pub struct Kernels {
    pub embedding: CudaFunction,
    pub gather_logit_rows: CudaFunction,
    pub layernorm: CudaFunction,
    pub rmsnorm: CudaFunction,
    pub add_rmsnorm: CudaFunction,
    pub qk_rmsnorm: CudaFunction,
    pub add_inplace: CudaFunction,
    pub scale_inplace: CudaFunction,
    pub rope: CudaFunction,
    pub qk_norm_rope: CudaFunction,
    pub write_kv: CudaFunction,
    pub paged_attention_naive: CudaFunction,
    /// `paged_decode_d64`, `_d128`, `_d256` (attention_decode.cu; see [`super::attention`]).
    pub paged_decode: [CudaFunction; 3],
    pub paged_decode_reduce: CudaFunction,
    /// `flash_prefill_d64`, `_d128` (attention_prefill.cu, the cp.async pipeline; empty in the f32
    /// module).
    pub flash_prefill: [CudaFunction; 2],
    /// `flash_prefill_sync_d64`, `_d128`: the same with synchronous K/V loads (studies).
    pub flash_prefill_sync: [CudaFunction; 2],
    pub gelu_new: CudaFunction,
    pub gelu_erf: CudaFunction,
    pub relu: CudaFunction,
    pub softcap_inplace: CudaFunction,
    pub moe_combine: CudaFunction,
    pub silu_mul: CudaFunction,
    pub gelu_tanh_mul: CudaFunction,
    pub argmax_rows: CudaFunction,
    pub sample_rows: CudaFunction,
    pub ban_tokens: CudaFunction,
    /// Multiprocessors of the device (elementwise grid cap).
    pub sms: u32,
}

impl Kernels {
    /// Look every kernel up in the loaded modules (file name -> module).
    pub fn load(modules: &[(&'static str, Arc<CudaModule>)], sms: u32) -> Result<Self> {
        let get = |file: &str, name: &str| -> Result<CudaFunction> {
            let (_, m) = modules
                .iter()
                .find(|(f, _)| *f == file)
                .ok_or_else(|| err(format!("kernels/{file} was not loaded")))?;
            m.load_function(name)
                .map_err(|e| err(format!("kernel `{name}` in kernels/{file}: {e}")))
        };
        Ok(Self {
            embedding: get("embedding.cu", "embedding")?,
            gather_logit_rows: get("embedding.cu", "gather_logit_rows")?,
            layernorm: get("norm.cu", "layernorm")?,
            rmsnorm: get("norm.cu", "rmsnorm")?,
            add_rmsnorm: get("norm.cu", "add_rmsnorm")?,
            qk_rmsnorm: get("norm.cu", "qk_rmsnorm")?,
            add_inplace: get("norm.cu", "add_inplace")?,
            scale_inplace: get("activation.cu", "scale_inplace")?,
            rope: get("rope.cu", "rope")?,
            qk_norm_rope: get("rope.cu", "qk_norm_rope")?,
            write_kv: get("kv_write.cu", "write_kv")?,
            paged_attention_naive: get("attention.cu", "paged_attention_naive")?,
            paged_decode: [
                get("attention_decode.cu", "paged_decode_d64")?,
                get("attention_decode.cu", "paged_decode_d128")?,
                get("attention_decode.cu", "paged_decode_d256")?,
            ],
            paged_decode_reduce: get("attention_decode.cu", "paged_decode_reduce")?,
            flash_prefill: [
                get("attention_prefill.cu", "flash_prefill_d64")?,
                get("attention_prefill.cu", "flash_prefill_d128")?,
            ],
            flash_prefill_sync: [
                get("attention_prefill.cu", "flash_prefill_sync_d64")?,
                get("attention_prefill.cu", "flash_prefill_sync_d128")?,
            ],
            gelu_new: get("activation.cu", "gelu_new")?,
            gelu_erf: get("activation.cu", "gelu_erf")?,
            relu: get("activation.cu", "relu")?,
            softcap_inplace: get("activation.cu", "softcap_inplace")?,
            moe_combine: get("embedding.cu", "moe_combine")?,
            silu_mul: get("activation.cu", "silu_mul")?,
            gelu_tanh_mul: get("activation.cu", "gelu_tanh_mul")?,
            argmax_rows: get("sampling.cu", "argmax_rows")?,
            sample_rows: get("sampling.cu", "sample_rows")?,
            ban_tokens: get("sampling.cu", "ban_tokens")?,
            sms: sms.max(1),
        })
    }

    /// One block per row, grid-stride beyond [`MAX_ROW_BLOCKS`].
    fn rows(rows: u32, threads: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows.clamp(1, MAX_ROW_BLOCKS), 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Elementwise grid over `items` work items (16-byte vectors, or elements on the scalar path).
    fn elementwise(&self, items: u64) -> LaunchConfig {
        let threads = IM_ELEMENTWISE_THREADS;
        let cap = u64::from(self.sms) * u64::from(IM_ELEMENTWISE_BLOCKS_PER_SM);
        let blocks = items.div_ceil(u64::from(threads)).clamp(1, cap.max(1));
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// 16 / sizeof(T): elements per 16-byte vector (the kernels' IM_VEC).
pub fn vec_width<T>() -> u32 {
    (16 / std::mem::size_of::<T>()) as u32
}

/// A kernel pointer argument that is NULL (e.g. embedding's `pos_table` for Llama).
const NULL_PTR: u64 = 0;

/// `embedding(out, table, pos_table | NULL, token_ids, positions, num_tokens, hidden, vocab,
/// max_positions)`: out[t] = table[token_ids[t]] (+ pos_table[positions[t]]).
#[allow(clippy::too_many_arguments)]
pub fn embedding<T>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<T>,
    table: &CudaSlice<T>,
    pos_table: Option<&CudaSlice<T>>,
    token_ids: &CudaView<u32>,
    positions: &CudaView<u32>,
    num_tokens: u32,
    hidden: u32,
    vocab: u32,
    max_positions: u32,
) -> Result<()> {
    if num_tokens == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.embedding);
    b.arg(out).arg(table);
    match pos_table {
        Some(p) => b.arg(p),
        None => b.arg(&NULL_PTR),
    };
    b.arg(token_ids)
        .arg(positions)
        .arg(&num_tokens)
        .arg(&hidden)
        .arg(&vocab)
        .arg(&max_positions);
    // SAFETY: argument order and types follow embedding.cu; the Backend impl checked the lengths.
    unsafe { b.launch(Kernels::rows(num_tokens, IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("embedding"))
}

/// `gather_logit_rows(out, x, indices, num_rows, num_tokens, cols)`: out[i] = x[indices[i]] (a zero
/// row for an index >= num_tokens).
#[allow(clippy::too_many_arguments)]
pub fn gather_logit_rows<T>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<T>,
    x: &CudaSlice<T>,
    indices: &CudaView<u32>,
    num_rows: u32,
    num_tokens: u32,
    cols: u32,
) -> Result<()> {
    if num_rows == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.gather_logit_rows);
    b.arg(out)
        .arg(x)
        .arg(indices)
        .arg(&num_rows)
        .arg(&num_tokens)
        .arg(&cols);
    // SAFETY: as embedding.cu's gather_logit_rows declares.
    unsafe { b.launch(Kernels::rows(num_rows, IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("gather_logit_rows"))
}

/// `moe_combine(out, rows, slot_of, weights, num_tokens, top_k, num_rows, hidden)`: out[t] =
/// Σ_j weights[t, j] · rows[slot_of[t, j]] (f32 sum, one rounding).
#[allow(clippy::too_many_arguments)]
pub fn moe_combine<T>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<T>,
    rows: &CudaSlice<T>,
    slot_of: &CudaView<u32>,
    weights: &CudaView<f32>,
    num_tokens: u32,
    top_k: u32,
    num_rows: u32,
    hidden: u32,
) -> Result<()> {
    if num_tokens == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.moe_combine);
    b.arg(out)
        .arg(rows)
        .arg(slot_of)
        .arg(weights)
        .arg(&num_tokens)
        .arg(&top_k)
        .arg(&num_rows)
        .arg(&hidden);
    // SAFETY: as embedding.cu's moe_combine declares; the Backend impl checked the lengths.
    unsafe { b.launch(Kernels::rows(num_tokens, IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("moe_combine"))
}

/// `layernorm(out, x, weight, bias, rows, cols, eps)`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm<T>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<T>,
    x: &CudaSlice<T>,
    weight: &CudaSlice<T>,
    bias: &CudaSlice<T>,
    rows: u32,
    cols: u32,
    eps: f32,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.layernorm);
    b.arg(out)
        .arg(x)
        .arg(weight)
        .arg(bias)
        .arg(&rows)
        .arg(&cols)
        .arg(&eps);
    // SAFETY: as norm.cu's layernorm declares.
    unsafe { b.launch(Kernels::rows(rows, IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("layernorm"))
}

/// `rmsnorm(out, x, weight, rows, cols, eps)`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm<T>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<T>,
    x: &CudaSlice<T>,
    weight: &CudaSlice<T>,
    rows: u32,
    cols: u32,
    eps: f32,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.rmsnorm);
    b.arg(out)
        .arg(x)
        .arg(weight)
        .arg(&rows)
        .arg(&cols)
        .arg(&eps);
    // SAFETY: as norm.cu's rmsnorm declares.
    unsafe { b.launch(Kernels::rows(rows, IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("rmsnorm"))
}

/// `qk_rmsnorm(qkv, q_weight, k_weight, rows, q_cols, k_cols, eps)`: OLMo 2's norm of each row's
/// whole Q and whole K, in place.
#[allow(clippy::too_many_arguments)]
pub fn qk_rmsnorm<T>(
    k: &Kernels,
    s: &CudaStream,
    qkv: &mut CudaSlice<T>,
    q_weight: &CudaSlice<T>,
    k_weight: &CudaSlice<T>,
    rows: u32,
    q_cols: u32,
    k_cols: u32,
    eps: f32,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.qk_rmsnorm);
    b.arg(qkv)
        .arg(q_weight)
        .arg(k_weight)
        .arg(&rows)
        .arg(&q_cols)
        .arg(&k_cols)
        .arg(&eps);
    // SAFETY: as norm.cu's qk_rmsnorm declares.
    unsafe { b.launch(Kernels::rows(rows.saturating_mul(2), IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("qk_rmsnorm"))
}

/// `add_rmsnorm(residual, delta, out, weight, rows, cols, eps)`: residual += delta; out =
/// rmsnorm(residual).
#[allow(clippy::too_many_arguments)]
pub fn add_rmsnorm<T>(
    k: &Kernels,
    s: &CudaStream,
    residual: &mut CudaSlice<T>,
    delta: &CudaSlice<T>,
    out: &mut CudaSlice<T>,
    weight: &CudaSlice<T>,
    rows: u32,
    cols: u32,
    eps: f32,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.add_rmsnorm);
    b.arg(residual)
        .arg(delta)
        .arg(out)
        .arg(weight)
        .arg(&rows)
        .arg(&cols)
        .arg(&eps);
    // SAFETY: as norm.cu's add_rmsnorm declares.
    unsafe { b.launch(Kernels::rows(rows, IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("add_rmsnorm"))
}

/// `add_inplace(x, y, len)`: x += y over `len` elements (len is uint64 in the kernel).
pub fn add_inplace<T>(
    k: &Kernels,
    s: &CudaStream,
    x: &mut CudaSlice<T>,
    y: &CudaSlice<T>,
    len: u64,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let cfg = k.elementwise(len.div_ceil(u64::from(vec_width::<T>())));
    let mut b = s.launch_builder(&k.add_inplace);
    b.arg(x).arg(y).arg(&len);
    // SAFETY: as norm.cu's add_inplace declares.
    unsafe { b.launch(cfg) }
        .map(drop)
        .map_err(launched("add_inplace"))
}

/// `scale_inplace(x, len, scale)`: x *= scale.
pub fn scale_inplace<T>(
    k: &Kernels,
    s: &CudaStream,
    x: &mut CudaSlice<T>,
    len: u64,
    scale: f32,
) -> Result<()> {
    inplace_with_scalar(s, k, &k.scale_inplace, "scale_inplace", x, len, scale)
}

/// `softcap_inplace(x, len, cap)`: x = cap · tanh(x / cap), in place.
pub fn softcap_inplace<T>(
    k: &Kernels,
    s: &CudaStream,
    x: &mut CudaSlice<T>,
    len: u64,
    cap: f32,
) -> Result<()> {
    inplace_with_scalar(s, k, &k.softcap_inplace, "softcap_inplace", x, len, cap)
}

/// The in-place elementwise kernels of signature `(T* x, uint64 len, float v)` (activation.cu's
/// scale_inplace and softcap_inplace), on the elementwise grid; `name` names the kernel in errors.
fn inplace_with_scalar<T>(
    s: &CudaStream,
    k: &Kernels,
    f: &CudaFunction,
    name: &'static str,
    x: &mut CudaSlice<T>,
    len: u64,
    v: f32,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let cfg = k.elementwise(len.div_ceil(u64::from(vec_width::<T>())));
    let mut b = s.launch_builder(f);
    b.arg(x).arg(&len).arg(&v);
    // SAFETY: both kernels take (T* x, uint64_t len, float v), as declared in their files.
    unsafe { b.launch(cfg) }.map(drop).map_err(launched(name))
}

/// `gelu_new(x, len)`, in place (len is uint64 in the kernel).
pub fn gelu_new<T>(k: &Kernels, s: &CudaStream, x: &mut CudaSlice<T>, len: u64) -> Result<()> {
    map_in_place(k, s, &k.gelu_new, "gelu_new", x, len)
}

/// `gelu_erf(x, len)`, in place (len is uint64 in the kernel).
pub fn gelu_erf<T>(k: &Kernels, s: &CudaStream, x: &mut CudaSlice<T>, len: u64) -> Result<()> {
    map_in_place(k, s, &k.gelu_erf, "gelu_erf", x, len)
}

/// `relu(x, len)`, in place (len is uint64 in the kernel).
pub fn relu<T>(k: &Kernels, s: &CudaStream, x: &mut CudaSlice<T>, len: u64) -> Result<()> {
    map_in_place(k, s, &k.relu, "relu", x, len)
}

/// One of activation.cu's in-place maps without parameters (`gelu_new`, `gelu_erf`, `relu`).
fn map_in_place<T>(
    k: &Kernels,
    s: &CudaStream,
    f: &CudaFunction,
    name: &'static str,
    x: &mut CudaSlice<T>,
    len: u64,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let cfg = k.elementwise(len.div_ceil(u64::from(vec_width::<T>())));
    let mut b = s.launch_builder(f);
    b.arg(x).arg(&len);
    // SAFETY: these kernels take (T* x, uint64_t len), as activation.cu declares them.
    unsafe { b.launch(cfg) }.map(drop).map_err(launched(name))
}

/// `silu_mul(out, x, rows, inter)` or `gelu_tanh_mul(...)` (same signature and grid):
/// out[r, j] = act(x[r, j]) * x[r, inter + j].
pub fn gated_mul<T>(
    k: &Kernels,
    s: &CudaStream,
    act: MlpActivation,
    out: &mut CudaSlice<T>,
    x: &CudaSlice<T>,
    rows: u32,
    inter: u32,
) -> Result<()> {
    if rows == 0 || inter == 0 {
        return Ok(());
    }
    let (f, name) = match act {
        MlpActivation::Silu => (&k.silu_mul, "silu_mul"),
        MlpActivation::GeluTanh => (&k.gelu_tanh_mul, "gelu_tanh_mul"),
        // (ModelConfig::validate refuses them for a gated MLP)
        MlpActivation::GeluErf | MlpActivation::Relu => {
            return Err(err(format!("no gated {act:?} kernel")))
        }
    };
    let w = vec_width::<T>();
    let per_row = if inter % w == 0 { inter / w } else { inter };
    let cfg = k.elementwise(u64::from(rows) * u64::from(per_row));
    let mut b = s.launch_builder(f);
    b.arg(out).arg(x).arg(&rows).arg(&inter);
    // SAFETY: as activation.cu's silu_mul and gelu_tanh_mul declare.
    unsafe { b.launch(cfg) }.map(drop).map_err(launched(name))
}

/// `rope(qkv, cos_sin, positions, RopeParams)`, in place on the Q and K heads.
pub fn rope<T>(
    k: &Kernels,
    s: &CudaStream,
    qkv: &mut CudaSlice<T>,
    cos_sin: &CudaSlice<T>,
    positions: &CudaView<u32>,
    p: RopeParams,
) -> Result<()> {
    if p.num_tokens == 0 {
        return Ok(());
    }
    if p.head_dim % 2 != 0 {
        return Err(err(format!("rope: head_dim {} is odd", p.head_dim)));
    }
    let mut b = s.launch_builder(&k.rope);
    b.arg(qkv).arg(cos_sin).arg(positions).arg(&p);
    // SAFETY: as rope.cu declares.
    unsafe { b.launch(Kernels::rows(p.num_tokens, IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("rope"))
}

/// `qk_norm_rope(qkv, cos_sin, positions, q_norm, k_norm, QkNormRopeParams)`, in place on the Q
/// and K heads.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope<T>(
    k: &Kernels,
    s: &CudaStream,
    qkv: &mut CudaSlice<T>,
    cos_sin: &CudaSlice<T>,
    positions: &CudaView<u32>,
    q_norm: &CudaSlice<T>,
    k_norm: &CudaSlice<T>,
    p: QkNormRopeParams,
) -> Result<()> {
    if p.rope.num_tokens == 0 {
        return Ok(());
    }
    if p.rope.head_dim % 2 != 0 {
        return Err(err(format!(
            "qk_norm_rope: head_dim {} is odd",
            p.rope.head_dim
        )));
    }
    let mut b = s.launch_builder(&k.qk_norm_rope);
    b.arg(qkv)
        .arg(cos_sin)
        .arg(positions)
        .arg(q_norm)
        .arg(k_norm)
        .arg(&p);
    // SAFETY: as rope.cu declares; one warp per head, IM_ROW_THREADS a multiple of the warp.
    unsafe { b.launch(Kernels::rows(p.rope.num_tokens, IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("qk_norm_rope"))
}

/// `write_kv(k_cache, v_cache, qkv, slot_mapping, KvWriteParams)`.
pub fn write_kv<T>(
    k: &Kernels,
    s: &CudaStream,
    k_cache: &mut CudaSlice<T>,
    v_cache: &mut CudaSlice<T>,
    qkv: &CudaSlice<T>,
    slot_mapping: &CudaView<u32>,
    p: KvWriteParams,
) -> Result<()> {
    if p.num_tokens == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.write_kv);
    b.arg(k_cache)
        .arg(v_cache)
        .arg(qkv)
        .arg(slot_mapping)
        .arg(&p);
    // SAFETY: as kv_write.cu declares.
    unsafe { b.launch(Kernels::rows(p.num_tokens, IM_ROW_THREADS)) }
        .map(drop)
        .map_err(launched("write_kv"))
}

/// Check what `paged_attention_naive` needs from the host (it writes nothing when these fail).
pub fn check_attention<T>(p: &PagedAttentionParams) -> Result<()> {
    let d = p.kv.head_dim;
    let w = vec_width::<T>();
    if d == 0 || d % w != 0 || d > IM_ATTN_MAX_HEAD_DIM {
        return Err(err(format!(
            "attention: head_dim {d} unsupported by paged_attention_naive (a multiple of {w} up to \
             {IM_ATTN_MAX_HEAD_DIM} for this dtype)"
        )));
    }
    if p.kv.num_kv_heads == 0 || p.num_heads % p.kv.num_kv_heads != 0 {
        return Err(err(format!(
            "attention: {} heads not divisible by {} KV heads",
            p.num_heads, p.kv.num_kv_heads
        )));
    }
    if p.num_heads > 65_535 {
        return Err(err(format!(
            "attention: {} heads exceed the grid's y limit",
            p.num_heads
        )));
    }
    Ok(())
}

/// `paged_attention_naive(out, qkv, k_cache, v_cache, query_start_loc, seq_lens, positions,
/// block_tables, PagedAttentionParams)`; grid (num_tokens, num_heads), IM_ATTN_THREADS threads.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_naive<T>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<T>,
    qkv: &CudaSlice<T>,
    k_cache: &CudaSlice<T>,
    v_cache: &CudaSlice<T>,
    query_start_loc: &CudaView<u32>,
    seq_lens: &CudaView<u32>,
    positions: &CudaView<u32>,
    block_tables: &CudaView<u32>,
    p: PagedAttentionParams,
) -> Result<()> {
    check_attention::<T>(&p)?;
    if p.num_tokens == 0 || p.num_seqs == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (p.num_tokens, p.num_heads, 1),
        block_dim: (IM_ATTN_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = s.launch_builder(&k.paged_attention_naive);
    b.arg(out)
        .arg(qkv)
        .arg(k_cache)
        .arg(v_cache)
        .arg(query_start_loc)
        .arg(seq_lens)
        .arg(positions)
        .arg(block_tables)
        .arg(&p);
    // SAFETY: as attention.cu declares; check_attention validated its host-side requirements.
    unsafe { b.launch(cfg) }
        .map(drop)
        .map_err(launched("paged_attention_naive"))
}

/// `argmax_rows(out, logits, num_rows, vocab)`: logits in the module's compute dtype.
pub fn argmax_rows<T: CudaDtype>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<u32>,
    logits: &CudaSlice<T>,
    num_rows: u32,
    vocab: u32,
) -> Result<()> {
    if num_rows == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.argmax_rows);
    b.arg(out).arg(logits).arg(&num_rows).arg(&vocab);
    // SAFETY: as sampling.cu's argmax_rows declares.
    unsafe { b.launch(Kernels::rows(num_rows, IM_SAMPLING_THREADS)) }
        .map(drop)
        .map_err(launched("argmax_rows"))
}

/// `sample_rows(out, logits, params, num_rows, vocab)`.
pub fn sample_rows<T: CudaDtype>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<u32>,
    logits: &CudaSlice<T>,
    params: &CudaSlice<SamplingRowParams>,
    num_rows: u32,
    vocab: u32,
) -> Result<()> {
    if num_rows == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.sample_rows);
    b.arg(out)
        .arg(logits)
        .arg(params)
        .arg(&num_rows)
        .arg(&vocab);
    // SAFETY: as sampling.cu's sample_rows declares.
    unsafe { b.launch(Kernels::rows(num_rows, IM_SAMPLING_THREADS)) }
        .map(drop)
        .map_err(launched("sample_rows"))
}

/// `ban_tokens(logits, bans, num_bans, num_rows, vocab)`.
pub fn ban_tokens<T: CudaDtype>(
    k: &Kernels,
    s: &CudaStream,
    logits: &mut CudaSlice<T>,
    bans: &CudaSlice<u32>,
    num_bans: u32,
    num_rows: u32,
    vocab: u32,
) -> Result<()> {
    if num_bans == 0 {
        return Ok(());
    }
    let mut b = s.launch_builder(&k.ban_tokens);
    b.arg(logits)
        .arg(bans)
        .arg(&num_bans)
        .arg(&num_rows)
        .arg(&vocab);
    // SAFETY: as sampling.cu's ban_tokens declares.
    unsafe { b.launch(k.elementwise(u64::from(num_bans))) }
        .map(drop)
        .map_err(launched("ban_tokens"))
}
