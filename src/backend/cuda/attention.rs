//! Attention variants of the CUDA backend: which kernels run, the split-KV heuristic, the work lists
//! the kernels read, and their launch wrappers (docs/attention.md has the design).
//!
//! | variant | prefill sequences (≥ 2 new tokens) | decode sequences (1 new token) |
//! |---------|------------------------------------|--------------------------------|
//! | [`AttentionVariant::Naive`] (default) | `paged_attention_naive` | `paged_attention_naive` |
//! | [`AttentionVariant::Auto`] | `flash_prefill_d{64,128}` (bf16/f16, sm_80+) | `paged_decode_d{64,128,256}` + `paged_decode_reduce` |
//!
//! [`AutoTuning`] changes two things of `Auto` for studies and tests: the decode's split count
//! (forced instead of the heuristic's) and the prefill's K/V loads (`flash_prefill_sync_d*`, without
//! the cp.async pipeline).
//!
//! `Auto` falls back to the naive kernel for the whole step when a sequence kind has no optimised
//! kernel for the shape or dtype (f32 prefill, head_dim outside the lists above, a pre-Ampere GPU).
//! The default stays `Naive` until a GPU session has validated `Auto` (tests/cuda_kernels.rs) and
//! flipped it; `INFERMETER_ATTENTION=naive|auto` selects the variant when a backend opens, and
//! [`super::CudaBackend::set_attention_variant`] afterwards.
//!
//! | kernel | grid | block |
//! |--------|------|-------|
//! | `paged_decode_d*` | (decode sequences, num_kv_heads × head chunks, num_splits) | `IM_DECODE_THREADS` |
//! | `paged_decode_reduce` (only when num_splits > 1) | (decode sequences, num_heads) | `IM_DECODE_REDUCE_THREADS` |
//! | `flash_prefill_d*` | (query tiles of `IM_PREFILL_BLOCK_M` rows, num_heads) | `IM_PREFILL_THREADS` |

use std::str::FromStr;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};

use super::ops::Kernels;
use super::params::{
    DecodeAttentionParams, PrefillAttentionParams, IM_DECODE_HEADS, IM_DECODE_KEYS_PER_ITER,
    IM_DECODE_MAX_SPLITS, IM_DECODE_REDUCE_THREADS, IM_DECODE_THREADS, IM_PREFILL_BLOCK_M,
    IM_PREFILL_THREADS,
};
use crate::error::{Error, Result};

// SAFETY: #[repr(C)] plain data of 4-byte fields (params.h; bindgen's layout tests in params.rs).
unsafe impl DeviceRepr for DecodeAttentionParams {}
unsafe impl DeviceRepr for PrefillAttentionParams {}

fn err(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: msg.into(),
    }
}

fn launched(name: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |e| err(format!("launching {name}: {e}"))
}

/// The environment variable that selects the attention variant when a backend opens.
pub const ATTENTION_ENV: &str = "INFERMETER_ATTENTION";

/// Which attention kernels the CUDA backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionVariant {
    /// `paged_attention_naive` for every row: the reference variant (and, until a GPU session has
    /// validated `Auto`, the default).
    #[default]
    Naive,
    /// Flash prefill (tensor cores) for prefill sequences, split-KV decode for decode sequences;
    /// the naive kernel where neither applies.
    Auto,
}

impl AttentionVariant {
    pub fn name(self) -> &'static str {
        match self {
            Self::Naive => "naive",
            Self::Auto => "auto",
        }
    }

    /// From [`ATTENTION_ENV`]: unset or empty is the default; anything but `naive`/`auto` is an
    /// error naming the variable.
    pub fn from_env() -> Result<Self> {
        match std::env::var(ATTENTION_ENV) {
            Ok(v) if !v.trim().is_empty() => v
                .parse()
                .map_err(|e: String| Error::Invalid(format!("{ATTENTION_ENV}: {e}"))),
            _ => Ok(Self::default()),
        }
    }
}

impl FromStr for AttentionVariant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "naive" => Ok(Self::Naive),
            "auto" | "flash" | "split-kv" | "splitkv" => Ok(Self::Auto),
            other => Err(format!(
                "unknown attention variant `{other}` (naive or auto)"
            )),
        }
    }
}

/// How the flash prefill kernel brings its K/V tiles into shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefillLoads {
    /// `flash_prefill_d*`: cp.async copies, V of a tile in flight during S = Q Kᵀ and the softmax,
    /// K of the next tile during P V (what the engine runs).
    #[default]
    Pipelined,
    /// `flash_prefill_sync_d*`: loads through registers between two barriers, the warps idle
    /// for each tile's memory latency (the `auto-sync` study variant: what the pipeline buys).
    Sync,
}

/// Settings of the `Auto` variant that studies and tests change; the default is what the engine
/// runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AutoTuning {
    /// Forced split count of the split-KV decode (clamped as in [`split_plan_for`]); `None`: the
    /// heuristic ([`plan_decode_splits`]).
    pub decode_splits: Option<u32>,
    pub prefill_loads: PrefillLoads,
}

impl std::fmt::Display for AttentionVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---- work lists (built on the host in `prepare`) ---------------------------------------------------

/// Sequences with exactly one new token (the decode kernel's rows), in batch order.
pub fn decode_seqs(query_start_loc: &[u32]) -> Vec<u32> {
    query_start_loc
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1].wrapping_sub(w[0]) == 1)
        .map(|(s, _)| s as u32)
        .collect()
}

/// The prefill kernel's work items, flattened `[num_tiles, 2]` = (sequence, query tile), for
/// sequences with two or more new tokens, `IM_PREFILL_BLOCK_M` rows per tile. Within a sequence the
/// last tile (the most keys under the causal mask) comes first, so long tiles start early.
pub fn prefill_tiles(query_start_loc: &[u32]) -> Vec<u32> {
    let bm = IM_PREFILL_BLOCK_M;
    let mut tiles = Vec::new();
    for (s, w) in query_start_loc.windows(2).enumerate() {
        let n = w[1].saturating_sub(w[0]);
        if n >= 2 {
            for m in (0..n.div_ceil(bm)).rev() {
                tiles.extend_from_slice(&[s as u32, m]);
            }
        }
    }
    tiles
}

// ---- sliding windows ---------------------------------------------------------------------------------

/// The kernels' `window` parameter (params.h): the window in keys, 0 for none (a window of 0 keys
/// is refused before, by `AttentionSpec::check`); one of 2^32 keys or more cuts nothing a u32
/// position can reach, so it is none.
pub fn window_param(window: Option<usize>) -> u32 {
    window.map_or(0, |w| u32::try_from(w).unwrap_or(0))
}

/// The kernels' ALiBi parameters (params.h `alibi_max_bias`, `alibi_scale`): (0, 1) for none.
pub fn alibi_params(alibi: Option<crate::backend::Alibi>) -> (f32, f32) {
    alibi.map_or((0.0, 1.0), |a| (a.max_bias, a.scale))
}

/// Keys a decode token with a context of `ctx` reads under the kernels' `window` (0: none).
pub fn window_keys(ctx: u32, window: u32) -> u32 {
    if window == 0 {
        ctx
    } else {
        ctx.min(window)
    }
}

// ---- the split-KV heuristic -------------------------------------------------------------------------

/// Waves of decode blocks over the SMs the heuristic aims for (below it, the context is split).
pub const TARGET_WAVES: usize = 2;
/// Least keys per split: two kernel iterations, and a few KV blocks of any usual block size.
pub const MIN_SPLIT_KEYS: usize = 2 * IM_DECODE_KEYS_PER_ITER as usize;
/// Least KV blocks per split.
pub const MIN_SPLIT_BLOCKS: usize = 4;

/// What the split heuristic looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitInputs {
    /// Decode sequences of the step.
    pub num_decode: usize,
    /// Blocks per sequence and split: num_kv_heads × head chunks ([`decode_head_chunks`]).
    pub kv_units: usize,
    /// Longest context among the decode sequences (keys).
    pub max_ctx: usize,
    pub block_size: usize,
    /// Multiprocessors of the GPU.
    pub sms: usize,
}

/// The decode launch's split: `num_splits` blocks per (sequence, KV unit), each covering
/// `partition_len` keys (a multiple of `IM_DECODE_KEYS_PER_ITER`); shorter sequences use fewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPlan {
    pub num_splits: u32,
    pub partition_len: u32,
}

/// The partition for exactly `splits` splits (clamped to 1..=IM_DECODE_MAX_SPLITS and to what the
/// context allows) of a context of `max_ctx` keys.
pub fn split_plan_for(splits: usize, max_ctx: usize) -> SplitPlan {
    let iter = IM_DECODE_KEYS_PER_ITER as usize;
    let max_ctx = max_ctx.max(1);
    let splits = splits.clamp(1, IM_DECODE_MAX_SPLITS as usize);
    let partition = max_ctx.div_ceil(splits).div_ceil(iter) * iter;
    SplitPlan {
        num_splits: max_ctx.div_ceil(partition) as u32,
        partition_len: partition.min(u32::MAX as usize / 2) as u32,
    }
}

/// Split-KV heuristic (flash-decoding): one split when the grid of (decode sequences × KV units)
/// blocks already makes [`TARGET_WAVES`] waves over the SMs; otherwise enough splits to reach that,
/// but each split at least [`MIN_SPLIT_KEYS`] keys and [`MIN_SPLIT_BLOCKS`] KV blocks, and at most
/// `IM_DECODE_MAX_SPLITS`. A first guess for a GPU session to tune (docs/attention.md).
pub fn plan_decode_splits(i: SplitInputs) -> SplitPlan {
    let max_ctx = i.max_ctx.max(1);
    let base = i.num_decode.max(1) * i.kv_units.max(1);
    let target = TARGET_WAVES * i.sms.max(1);
    let want = if base >= target {
        1
    } else {
        target.div_ceil(base)
    };
    let min_len = MIN_SPLIT_KEYS.max(MIN_SPLIT_BLOCKS * i.block_size.max(1));
    let most = (max_ctx / min_len).max(1);
    split_plan_for(want.min(most), max_ctx)
}

/// The split the decode launch uses: `forced` splits when given (the backend's
/// `AutoTuning::decode_splits`, clamped as in [`split_plan_for`]), else the heuristic's
/// ([`plan_decode_splits`]).
pub fn decode_split_plan(forced: Option<u32>, i: SplitInputs) -> SplitPlan {
    match forced {
        Some(n) => split_plan_for(n as usize, i.max_ctx),
        None => plan_decode_splits(i),
    }
}

/// Query heads per decode block for a GQA group of `group` heads (the kernel's template parameter:
/// the same rule as `decode_dispatch` in attention_decode.cu).
pub fn decode_heads_per_block(group: u32) -> u32 {
    match group {
        0 | 1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => IM_DECODE_HEADS,
    }
}

/// Decode blocks per KV head: ceil(group / heads per block).
pub fn decode_head_chunks(group: u32) -> u32 {
    group.max(1).div_ceil(decode_heads_per_block(group))
}

/// head_dims with a decode kernel (any dtype).
pub const DECODE_HEAD_DIMS: [u32; 3] = [64, 128, 256];
/// head_dims with a flash prefill kernel (bf16/f16 on sm_80+).
pub const PREFILL_HEAD_DIMS: [u32; 2] = [64, 128];

/// Whether the `Auto` variant has kernels for a step: flash prefill (when the step has prefill
/// sequences) needs a 2-byte dtype, compute capability 8.0+ and head_dim 64/128; split-KV decode
/// (when it has decode sequences) head_dim 64/128/256. Otherwise the step runs the naive kernel.
pub fn auto_supported(
    elem_bytes: usize,
    compute_capability: (i32, i32),
    head_dim: usize,
    has_prefill: bool,
    has_decode: bool,
) -> bool {
    let d = u32::try_from(head_dim).unwrap_or(0);
    let prefill_ok = !has_prefill
        || (elem_bytes == 2 && compute_capability >= (8, 0) && PREFILL_HEAD_DIMS.contains(&d));
    let decode_ok = !has_decode || DECODE_HEAD_DIMS.contains(&d);
    prefill_ok && decode_ok
}

/// f32 elements of the decode partials: (acc, (m, l)) for `num_decode` sequences.
pub fn scratch_lens(
    num_decode: usize,
    num_heads: usize,
    splits: usize,
    head_dim: usize,
) -> (usize, usize) {
    let slots = num_decode * num_heads * splits;
    (slots * head_dim, slots * 2)
}

// ---- launches ---------------------------------------------------------------------------------------

/// Device pointers every attention launch reads (views into the step's metadata buffer).
pub struct AttnInputs<'a, T> {
    pub qkv: &'a CudaSlice<T>,
    pub k_cache: &'a CudaSlice<T>,
    pub v_cache: &'a CudaSlice<T>,
    pub query_start_loc: CudaView<'a, u32>,
    pub seq_lens: CudaView<'a, u32>,
    pub block_tables: CudaView<'a, u32>,
}

fn check_common(num_heads: u32, num_kv_heads: u32, what: &str) -> Result<()> {
    if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(err(format!(
            "{what}: {num_heads} heads not divisible by {num_kv_heads} KV heads"
        )));
    }
    if num_heads > 65_535 {
        return Err(err(format!(
            "{what}: {num_heads} heads exceed the grid's y limit"
        )));
    }
    Ok(())
}

/// `paged_decode_d{D}` over the decode sequences, then `paged_decode_reduce` when the plan has
/// more than one split. `part_acc`/`part_ml` hold at least [`scratch_lens`] elements.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode<T>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<T>,
    part_acc: &mut CudaSlice<f32>,
    part_ml: &mut CudaSlice<f32>,
    x: &AttnInputs<'_, T>,
    decode_seqs: &CudaView<u32>,
    p: DecodeAttentionParams,
) -> Result<()> {
    check_common(p.num_heads, p.kv.num_kv_heads, "decode attention")?;
    let f = match p.kv.head_dim {
        64 => &k.paged_decode[0],
        128 => &k.paged_decode[1],
        256 => &k.paged_decode[2],
        d => {
            return Err(err(format!(
                "decode attention: no split-KV kernel for head_dim {d} (64, 128, 256)"
            )))
        }
    };
    if p.num_splits == 0
        || p.num_splits > IM_DECODE_MAX_SPLITS
        || p.partition_len == 0
        || p.partition_len % IM_DECODE_KEYS_PER_ITER != 0
    {
        return Err(err(format!(
            "decode attention: bad split plan ({} splits of {} keys)",
            p.num_splits, p.partition_len
        )));
    }
    if p.num_decode == 0 {
        return Ok(());
    }
    let group = p.num_heads / p.kv.num_kv_heads;
    let y = p.kv.num_kv_heads * decode_head_chunks(group);
    if y > 65_535 {
        return Err(err(format!(
            "decode attention: {y} KV head chunks exceed the grid's y limit"
        )));
    }
    let (acc_len, ml_len) = scratch_lens(
        p.num_decode as usize,
        p.num_heads as usize,
        p.num_splits as usize,
        p.kv.head_dim as usize,
    );
    if p.num_splits > 1 && (part_acc.len() < acc_len || part_ml.len() < ml_len) {
        return Err(err("decode attention: partial-result scratch too small"));
    }
    let cfg = LaunchConfig {
        grid_dim: (p.num_decode, y, p.num_splits),
        block_dim: (IM_DECODE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = s.launch_builder(f);
    b.arg(&mut *out)
        .arg(&mut *part_acc)
        .arg(&mut *part_ml)
        .arg(x.qkv)
        .arg(x.k_cache)
        .arg(x.v_cache)
        .arg(&x.query_start_loc)
        .arg(&x.seq_lens)
        .arg(&x.block_tables)
        .arg(decode_seqs)
        .arg(&p);
    // SAFETY: argument order and types follow attention_decode.cu; the checks above and the
    // Backend impl (buffer lengths, validated metadata) cover its host-side requirements.
    unsafe { b.launch(cfg) }
        .map(drop)
        .map_err(launched("paged_decode"))?;
    if p.num_splits == 1 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (p.num_decode, p.num_heads, 1),
        block_dim: (IM_DECODE_REDUCE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = s.launch_builder(&k.paged_decode_reduce);
    b.arg(out)
        .arg(&*part_acc)
        .arg(&*part_ml)
        .arg(&x.query_start_loc)
        .arg(&x.seq_lens)
        .arg(decode_seqs)
        .arg(&p);
    // SAFETY: as attention_decode.cu's paged_decode_reduce declares.
    unsafe { b.launch(cfg) }
        .map(drop)
        .map_err(launched("paged_decode_reduce"))
}

/// `flash_prefill_d{D}` (or `flash_prefill_sync_d{D}`, as `loads` says) over the prefill tiles
/// (bf16/f16 only: the f32 module's kernels are empty).
pub fn flash_prefill<T>(
    k: &Kernels,
    s: &CudaStream,
    out: &mut CudaSlice<T>,
    x: &AttnInputs<'_, T>,
    tiles: &CudaView<u32>,
    p: PrefillAttentionParams,
    loads: PrefillLoads,
) -> Result<()> {
    check_common(p.num_heads, p.kv.num_kv_heads, "prefill attention")?;
    if std::mem::size_of::<T>() != 2 {
        return Err(err(
            "prefill attention: the flash kernel needs bf16 or f16 (f32 runs the naive kernel)",
        ));
    }
    let kernels = match loads {
        PrefillLoads::Pipelined => &k.flash_prefill,
        PrefillLoads::Sync => &k.flash_prefill_sync,
    };
    let f = match p.kv.head_dim {
        64 => &kernels[0],
        128 => &kernels[1],
        d => {
            return Err(err(format!(
                "prefill attention: no flash kernel for head_dim {d} (64, 128)"
            )))
        }
    };
    if p.num_tiles == 0 {
        return Ok(());
    }
    // what the kernel reads without checking: the tile list, and 4-byte Q loads / output stores
    if tiles.len() < 2 * p.num_tiles as usize {
        return Err(err(format!(
            "prefill attention: {} tile entries for {} tiles",
            tiles.len() / 2,
            p.num_tiles
        )));
    }
    if p.q_stride % 2 != 0 || p.out_stride % 2 != 0 {
        return Err(err(format!(
            "prefill attention: row strides {} / {} must be even (4-byte accesses)",
            p.q_stride, p.out_stride
        )));
    }
    let cfg = LaunchConfig {
        grid_dim: (p.num_tiles, p.num_heads, 1),
        block_dim: (IM_PREFILL_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = s.launch_builder(f);
    b.arg(out)
        .arg(x.qkv)
        .arg(x.k_cache)
        .arg(x.v_cache)
        .arg(&x.query_start_loc)
        .arg(&x.seq_lens)
        .arg(&x.block_tables)
        .arg(tiles)
        .arg(&p);
    // SAFETY: argument order and types follow attention_prefill.cu; checks as above.
    unsafe { b.launch(cfg) }
        .map(drop)
        .map_err(launched("flash_prefill"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(num_decode: usize, kv_units: usize, max_ctx: usize, sms: usize) -> SplitPlan {
        plan_decode_splits(SplitInputs {
            num_decode,
            kv_units,
            max_ctx,
            block_size: 16,
            sms,
        })
    }

    /// Every key 0..max_ctx is covered exactly once by splits 0..num_splits.
    fn covers(p: SplitPlan, max_ctx: usize) {
        let (n, len) = (p.num_splits as usize, p.partition_len as usize);
        assert!(n >= 1 && n <= IM_DECODE_MAX_SPLITS as usize, "{p:?}");
        assert_eq!(len % IM_DECODE_KEYS_PER_ITER as usize, 0, "{p:?}");
        assert!((n - 1) * len < max_ctx.max(1), "last split empty: {p:?}");
        assert!(n * len >= max_ctx, "keys left over: {p:?}");
    }

    #[test]
    fn a_full_grid_gets_one_split() {
        // 64 sequences x 8 KV heads = 512 blocks >= 2 waves on 132 SMs
        let p = plan(64, 8, 8192, 132);
        assert_eq!(p.num_splits, 1);
        covers(p, 8192);
        // exactly two waves
        assert_eq!(plan(33, 8, 4096, 132).num_splits, 1);
    }

    #[test]
    fn small_batches_split_long_contexts() {
        // batch 1, 8 KV heads, 132 SMs: 33 splits wanted, 8192 / 256 = 32 allowed
        let p = plan(1, 8, 8192, 132);
        assert_eq!(
            p,
            SplitPlan {
                num_splits: 32,
                partition_len: 256
            }
        );
        covers(p, 8192);
        // the grid then makes >= ~2 waves
        assert!(8 * p.num_splits as usize >= 2 * 132 - 8);
        // batch 8: 64 blocks -> 5 splits
        let p = plan(8, 8, 8192, 132);
        assert_eq!(p.num_splits, 5);
        covers(p, 8192);
        // MHA with 32 heads, batch 2: 64 blocks, 5 splits
        assert_eq!(plan(2, 32, 4000, 132).num_splits, 5);
    }

    #[test]
    fn splits_are_at_least_a_few_blocks() {
        for ctx in [1, 15, 17, 255, 256, 511, 1000, 8192, 100_000] {
            for bs in [16, 32, 128] {
                let p = plan_decode_splits(SplitInputs {
                    num_decode: 1,
                    kv_units: 1,
                    max_ctx: ctx,
                    block_size: bs,
                    sms: 132,
                });
                covers(p, ctx);
                if p.num_splits > 1 {
                    let len = p.partition_len as usize;
                    assert!(
                        len >= MIN_SPLIT_KEYS && len >= MIN_SPLIT_BLOCKS * bs,
                        "{ctx} {bs} {p:?}"
                    );
                }
            }
        }
        // short contexts never split
        assert_eq!(plan(1, 1, 15, 132).num_splits, 1);
        assert_eq!(plan(1, 1, 511, 132).num_splits, 1);
        assert_eq!(plan(1, 1, 512, 132).num_splits, 2);
        // the cap
        assert_eq!(plan(1, 1, 1_000_000, 132).num_splits, IM_DECODE_MAX_SPLITS);
    }

    #[test]
    fn forced_split_counts_are_clamped_and_cover_the_context() {
        for ctx in [1usize, 17, 1000, 8192] {
            for n in [0usize, 1, 2, 3, 7, 64, 1000] {
                covers(split_plan_for(n, ctx), ctx);
            }
        }
        assert_eq!(split_plan_for(7, 1000).num_splits, 4); // 143 -> 256 keys per split
        assert_eq!(split_plan_for(3, 17).num_splits, 1);
        assert_eq!(
            split_plan_for(0, 0),
            SplitPlan {
                num_splits: 1,
                partition_len: 128
            }
        );
    }

    #[test]
    fn window_parameters() {
        assert_eq!(window_param(None), 0);
        assert_eq!(window_param(Some(4096)), 4096);
        assert_eq!(window_param(Some(1 << 40)), 0);
        assert_eq!(window_keys(10_000, 0), 10_000);
        assert_eq!(window_keys(10_000, 4096), 4096);
        assert_eq!(window_keys(100, 4096), 100);
    }

    #[test]
    fn heads_per_block_and_chunks() {
        let cases = [
            (1, 1, 1),
            (2, 2, 1),
            (3, 4, 1),
            (4, 4, 1),
            (5, 8, 1),
            (7, 8, 1),
            (8, 8, 1),
            (12, 8, 2),
            (16, 8, 2),
        ];
        for (g, per, chunks) in cases {
            assert_eq!(decode_heads_per_block(g), per, "group {g}");
            assert_eq!(decode_head_chunks(g), chunks, "group {g}");
        }
    }

    #[test]
    fn auto_falls_back_where_kernels_are_missing() {
        let (ampere, turing) = ((8, 0), (7, 5));
        // bf16/f16 on sm_80+: both kernels for head_dim 64/128
        assert!(auto_supported(2, (9, 0), 128, true, true));
        assert!(auto_supported(2, ampere, 64, true, false));
        // f32 prefill, pre-Ampere prefill, head_dim 96 or 256 prefill: naive
        assert!(!auto_supported(4, (9, 0), 128, true, false));
        assert!(!auto_supported(2, turing, 128, true, true));
        assert!(!auto_supported(2, ampere, 96, true, false));
        assert!(!auto_supported(2, ampere, 256, true, false));
        // decode: any dtype and GPU, head_dim 64/128/256
        assert!(auto_supported(4, turing, 256, false, true));
        assert!(!auto_supported(2, ampere, 96, false, true));
        // nothing to do: trivially supported
        assert!(auto_supported(4, turing, 96, false, false));
    }

    #[test]
    fn work_lists() {
        // rows: seq0 1 token, seq1 0 tokens, seq2 130 tokens, seq3 1 token, seq4 2 tokens
        let qsl = [0u32, 1, 1, 131, 132, 134];
        assert_eq!(decode_seqs(&qsl), vec![0, 3]);
        assert_eq!(prefill_tiles(&qsl), vec![2, 2, 2, 1, 2, 0, 4, 0]);
        assert!(decode_seqs(&[0]).is_empty() && prefill_tiles(&[0]).is_empty());
    }

    #[test]
    fn variants_parse() {
        assert_eq!(
            "naive".parse::<AttentionVariant>(),
            Ok(AttentionVariant::Naive)
        );
        assert_eq!(
            " AUTO ".parse::<AttentionVariant>(),
            Ok(AttentionVariant::Auto)
        );
        assert_eq!(
            "flash".parse::<AttentionVariant>(),
            Ok(AttentionVariant::Auto)
        );
        assert!("fast"
            .parse::<AttentionVariant>()
            .unwrap_err()
            .contains("naive or auto"));
        assert_eq!(AttentionVariant::default(), AttentionVariant::Naive);
        assert_eq!(AttentionVariant::Auto.to_string(), "auto");
        let (acc, ml) = scratch_lens(3, 32, 4, 128);
        assert_eq!((acc, ml), (3 * 32 * 4 * 128, 3 * 32 * 4 * 2));
    }
}
