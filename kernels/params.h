/*
 * params.h — the host/device ABI of infermeter's CUDA kernels.
 *
 * This header is read by three compilers: NVRTC (every kernel file includes it through common.cuh), a
 * C compiler, and bindgen (the Rust side's bindings are generated from it and committed). So it holds
 * only what all three understand: plain C structs of fixed-width fields, and integer constants as
 * `#define NAME <integer>` (bindgen turns each into a Rust `const`). No C++ features, no templates,
 * no function-like macros, no pointers inside structs (device pointers are separate kernel arguments,
 * each with a shape comment in the kernel's signature).
 *
 * Every struct below consists of 4-byte fields only, so it has no padding and the same layout on the
 * host and the device; kernels receive them by value.
 *
 * ---------------------------------------------------------------------------------------------------
 * The paged KV cache layout (per layer; K and V are separate buffers of the same shape)
 * ---------------------------------------------------------------------------------------------------
 *
 *     k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]      ("NHD", row-major)
 *
 *     slot s = block * block_size + offset          (offset = position % block_size)
 *     element (slot, kv_head, d) lives at ((slot * num_kv_heads) + kv_head) * head_dim + d
 *
 * A sequence's token at position p lives in block `block_tables[seq][p / block_size]`, offset
 * `p % block_size`; the host also gives each new token its slot directly (`slot_mapping`).
 *
 * Why this layout (the one vLLM's flash-attention backend uses):
 *  - KV write: one token's K (or V) for all its KV heads is `num_kv_heads * head_dim` contiguous
 *    elements, exactly as it sits in the fused QKV row, so writing a token is one contiguous copy
 *    (16-byte vector stores, fully coalesced), whatever the block size.
 *  - Attention: a thread group reads one key's head as `head_dim` contiguous elements with 16-byte
 *    loads (head_dim * sizeof(T) bytes, 128 or 256 for head_dim 64/128 in bf16: whole cache lines).
 *  - One layout for every backend: the CPU reference (src/backend/cpu/attention.rs, kv_write.rs)
 *    indexes the same [num_blocks, block_size, num_kv_heads, head_dim] buffer, so a cache can be
 *    compared element by element between backends, and the block pool / prefix cache logic is shared.
 *  - The price: one head's keys of a block are strided by num_kv_heads * head_dim, not contiguous
 *    ("HND" would make a block's keys of one head contiguous, which a tiled tensor-core kernel
 *    prefers). The split-KV decode and flash prefill kernels load keys row by row, each
 *    row a contiguous head_dim run, which keeps full-line loads with NHD.
 *
 * Slot numbers are uint32 (slots = num_blocks * block_size < 2^32); kernels form element offsets in
 * 64-bit arithmetic, since a layer's cache may exceed 2^31 elements.
 * ---------------------------------------------------------------------------------------------------
 *
 * Dtype selection: each kernel file is compiled once per compute dtype with -DIM_DTYPE=<id> (the ids
 * below); exported kernel names carry no dtype (see common.cuh).
 */
#ifndef INFERMETER_KERNELS_PARAMS_H
#define INFERMETER_KERNELS_PARAMS_H

#if defined(__CUDACC_RTC__)
/* NVRTC ships no <stdint.h>; these are the LP64 definitions the host side uses. */
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#else
#include <stdint.h>
#endif

/* ---- compute dtype ids: pass as -DIM_DTYPE=<id> when compiling a kernel file ---------------------- */
#define IM_DTYPE_BF16 1 /* __nv_bfloat16 */
#define IM_DTYPE_F16 2  /* __half */
#define IM_DTYPE_F32 3  /* float */

/* ---- launch configuration (threads per block; every one a multiple of 32) ------------------------ */

/* Row kernels (layernorm, rmsnorm, add_rmsnorm, embedding, gather_logit_rows, rope, write_kv): one
 * block per row (grid-stride over rows). 256 threads = 8 warps: a 4096-wide bf16 row is 512 16-byte
 * vectors, 2 per thread; small enough that several blocks share an SM when there are many rows. */
#define IM_ROW_THREADS 256

/* Elementwise kernels (add_inplace, gelu_new, silu_mul): grid-stride loops, 16-byte vectors per
 * thread. Grid: min(ceil(vectors / IM_ELEMENTWISE_THREADS), num_SMs * IM_ELEMENTWISE_BLOCKS_PER_SM). */
#define IM_ELEMENTWISE_THREADS 256
#define IM_ELEMENTWISE_BLOCKS_PER_SM 8

/* paged_attention_naive: grid (num_tokens, num_heads), this many threads per block (at most; the
 * kernel accepts any multiple of 32 up to it). 4 warps: enough key-parallelism for decode without
 * leaving most threads idle on short contexts; its shared scratch is sized for exactly this. */
#define IM_ATTN_THREADS 128
/* Largest head_dim paged_attention_naive supports; head_dim must also be a multiple of
 * 16 / sizeof(T) (8 for bf16/f16, 4 for f32) so that each head row is whole 16-byte vectors. */
#define IM_ATTN_MAX_HEAD_DIM 256

/* paged_decode_d{64,128,256} (kernels/attention_decode.cu, split-KV / flash-decoding): grid
 * (decode sequences, num_kv_heads * head chunks, num_splits), 4 warps per block, one key per thread per
 * iteration. A block serves up to IM_DECODE_HEADS query heads of one GQA group (a larger group is
 * split into chunks of that many heads, one chunk per block). */
#define IM_DECODE_THREADS 128
#define IM_DECODE_HEADS 8
/* Keys a decode block covers per iteration (one per thread); a split's length is a multiple of it. */
#define IM_DECODE_KEYS_PER_ITER 128
/* Most splits of one sequence (sizes the host's partial-result scratch). */
#define IM_DECODE_MAX_SPLITS 64
/* paged_decode_reduce: grid (decode sequences, num_heads), this many threads. */
#define IM_DECODE_REDUCE_THREADS 128

/* flash_prefill_d{64,128} (kernels/attention_prefill.cu, bf16/f16 tensor cores): grid (query tiles,
 * num_heads), 4 warps per block, each warp 16 query rows of the tile's IM_PREFILL_BLOCK_M. */
#define IM_PREFILL_THREADS 128
#define IM_PREFILL_BLOCK_M 64

/* argmax_rows and sample_rows: one block per row (grid-stride over rows). A block per row is the
 * unit of the row-wide reductions; 512 threads keeps the per-thread register budget at 128. */
#define IM_SAMPLING_THREADS 512

/* A slot_mapping entry >= num_slots (e.g. this value) means "padding token: write nothing". */
#define IM_PAD_SLOT 0xFFFFFFFFu

/* ---- structs ------------------------------------------------------------------------------------
 * Doc comments use the forms bindgen copies into Rust docs: a comment block before a struct,
 * and a trailing comment block marked "<" after a field. */

/** Shape of one layer's paged K (or V) cache: [num_blocks, block_size, num_kv_heads, head_dim]. */
typedef struct KvGeometry {
    uint32_t num_blocks;
    uint32_t block_size; /**< tokens per block */
    uint32_t num_kv_heads;
    uint32_t head_dim;
} KvGeometry;

/** write_kv: copy each token's K and V out of its fused QKV row into its cache slot. A QKV row is
 * [ Q: num_heads * head_dim | K: num_kv_heads * head_dim | V: num_kv_heads * head_dim | padding ]. */
typedef struct KvWriteParams {
    KvGeometry kv;
    uint32_t num_tokens;
    uint32_t num_heads;  /**< query heads: K starts at column num_heads * head_dim */
    uint32_t qkv_stride; /**< elements between tokens' QKV rows, >= (num_heads + 2 num_kv_heads) head_dim */
} KvWriteParams;

/** rope: rotate-half rotary embedding in place on the first rotary_dim dimensions of the first
 * num_rot_heads heads of each row. */
typedef struct RopeParams {
    uint32_t num_tokens;
    uint32_t num_rot_heads; /**< num_heads + num_kv_heads: the Q and K heads of a fused QKV row */
    uint32_t head_dim;      /**< elements per head */
    uint32_t rotary_dim;    /**< even, <= head_dim; the rotated pairs are (i, i + rotary_dim / 2) */
    uint32_t qkv_stride;    /**< elements between consecutive tokens' rows */
    uint32_t max_positions; /**< rows of the cos_sin table (rotary_dim wide); a token beyond it is
                                 left unrotated */
} RopeParams;

/** qk_norm_rope: Qwen3's per-head RMSNorm of the Q and K heads (q_norm for the first num_q_heads
 * heads, k_norm for the rest of the num_rot_heads), then rope over the whole head (rope.rotary_dim
 * == rope.head_dim), in place. */
typedef struct QkNormRopeParams {
    RopeParams rope;
    uint32_t num_q_heads; /**< heads 0 .. num_q_heads - 1 use q_norm; the K heads after them k_norm */
    float eps;            /**< added to the mean square, as rms_norm_eps */
} QkNormRopeParams;

/* Sliding-window attention (the `window` field of the three attention structs below): a token at
 * position p attends to keys max(0, p - window + 1) ..= p, the last `window` positions including its
 * own (transformers' mask: key j is visible when j > p - window); window 0: no window, keys 0 ..= p.
 * Score soft-capping (the `softcap` field, Gemma 2): each scaled score s becomes
 * softcap * tanh(s / softcap) before the softmax; softcap 0: none.
 * ALiBi (the `alibi_max_bias` and `alibi_scale` fields; BLOOM, MPT, Falcon-RW): the score of a
 * query at position p against key j (after the scale and any soft-cap) gains
 * alibi_scale * slope(h) * (j - p), a linear penalty on distance, where query head h of n has the
 * slope of BLOOM's and MPT's construction with c = 2^floor(log2 n):
 *     h < c:   2^(-alibi_max_bias * (h + 1) / c)
 *     h >= c:  2^(-alibi_max_bias * (2 (h - c) + 1) / (2 c))    (n not a power of two)
 * (common.cuh's im::alibi_slope). BLOOM and MPT add slope * j: the same softmax, since a row's
 * constant slope * p cancels in it. alibi_max_bias 0: none. */

/** paged_attention_naive: causal attention of each new token over its sequence's cached context.
 * Token t of sequence s (query_start_loc[s] <= t < query_start_loc[s + 1]) attends to keys
 * lo ..= min(positions[t], seq_lens[s] - 1) of KV head h / (num_heads / num_kv_heads), where lo is
 * 0, or positions[t] + 1 - window under a sliding window. */
typedef struct PagedAttentionParams {
    KvGeometry kv;
    uint32_t num_tokens;         /**< rows of qkv and out */
    uint32_t num_seqs;
    uint32_t num_heads;          /**< query heads; a multiple of kv.num_kv_heads */
    uint32_t max_blocks_per_seq; /**< row length of block_tables */
    uint32_t q_stride;           /**< elements between tokens' Q rows (the fused QKV row length) */
    uint32_t out_stride;         /**< elements between tokens' output rows (num_heads * head_dim) */
    float scale;                 /**< softmax scale, usually 1 / sqrt(head_dim) */
    uint32_t window;             /**< sliding window in keys; 0: none */
    float softcap;               /**< score soft-cap; 0: none */
    float alibi_max_bias;        /**< ALiBi slopes' exponent scale (8 in BLOOM and MPT); 0: none */
    float alibi_scale;           /**< every ALiBi slope times this (Falcon-RW: scale; else 1) */
} PagedAttentionParams;

/** paged_decode_d*: split-KV attention of decode sequences (one new token each). Decode sequence i
 * is sequence decode_seqs[i]; its token row is query_start_loc[s] and its keys lo .. seq_lens[s] - 1
 * (lo = 0, or seq_lens[s] - window under a sliding window shorter than the context), cut into
 * splits of partition_len keys (split z covers keys lo + z * partition_len ..). With
 * num_splits == 1 the kernel writes out directly; otherwise each block writes its partial result
 * and paged_decode_reduce combines them. */
typedef struct DecodeAttentionParams {
    KvGeometry kv;
    uint32_t num_decode;         /**< rows of decode_seqs */
    uint32_t num_seqs;
    uint32_t num_heads;          /**< query heads; a multiple of kv.num_kv_heads */
    uint32_t max_blocks_per_seq; /**< row length of block_tables */
    uint32_t q_stride;           /**< elements between tokens' Q rows (the fused QKV row length) */
    uint32_t out_stride;         /**< elements between tokens' output rows */
    uint32_t num_splits;         /**< gridDim.z; 1..IM_DECODE_MAX_SPLITS */
    uint32_t partition_len;      /**< keys per split, a multiple of IM_DECODE_KEYS_PER_ITER */
    float scale;                 /**< softmax scale, usually 1 / sqrt(head_dim) */
    uint32_t window;             /**< sliding window in keys; 0: none */
    float softcap;               /**< score soft-cap; 0: none */
    float alibi_max_bias;        /**< ALiBi slopes' exponent scale (8 in BLOOM and MPT); 0: none */
    float alibi_scale;           /**< every ALiBi slope times this (Falcon-RW: scale; else 1) */
} DecodeAttentionParams;

/** flash_prefill_d*: causal attention of prefill sequences (two or more new tokens each) in query
 * tiles of IM_PREFILL_BLOCK_M rows. Tile i is (sequence tiles[2 i], tile index tiles[2 i + 1]) and
 * covers that sequence's new-token rows tiles[2 i + 1] * IM_PREFILL_BLOCK_M ... */
typedef struct PrefillAttentionParams {
    KvGeometry kv;
    uint32_t num_tiles;          /**< rows of tiles */
    uint32_t num_seqs;
    uint32_t num_heads;          /**< query heads; a multiple of kv.num_kv_heads */
    uint32_t max_blocks_per_seq; /**< row length of block_tables */
    uint32_t q_stride;           /**< elements between tokens' Q rows (the fused QKV row length) */
    uint32_t out_stride;         /**< elements between tokens' output rows */
    float scale;                 /**< softmax scale, usually 1 / sqrt(head_dim) */
    uint32_t window;             /**< sliding window in keys; 0: none */
    float softcap;               /**< score soft-cap; 0: none */
    float alibi_max_bias;        /**< ALiBi slopes' exponent scale (8 in BLOOM and MPT); 0: none */
    float alibi_scale;           /**< every ALiBi slope times this (Falcon-RW: scale; else 1) */
} PrefillAttentionParams;

/** sample_rows: one per logits row. */
typedef struct SamplingRowParams {
    float temperature; /**< <= 0 (or NaN): greedy argmax */
    uint32_t top_k;    /**< 0 or >= vocab: no top-k cut */
    float top_p;       /**< >= 1: no nucleus cut */
    float uniform;     /**< the row's random draw in [0, 1) (clamped into it) */
} SamplingRowParams;

#endif /* INFERMETER_KERNELS_PARAMS_H */
