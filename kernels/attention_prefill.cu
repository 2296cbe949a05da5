// attention_prefill.cu — flash-style causal prefill attention over the paged KV cache, on tensor cores
// (mma.sync m16n8k16, bf16/f16 inputs, f32 accumulation): the prefill half of the `auto` attention
// variant (src/backend/cuda/attention.rs launches it for sequences with two or more new tokens;
// docs/attention.md has the design and what a GPU session still has to validate).
//
// What it computes (the same as paged_attention_naive and src/backend/cpu/attention.rs, restricted to
// prefill sequences). Sequence s owns batch rows q0 = query_start_loc[s] .. query_start_loc[s + 1]
// (q_len rows), the last q_len tokens of its context of ctx = seq_lens[s] tokens, so local row r is at
// position ctx - q_len + r. For each row and query head h of KV head kvh = h / G:
//     score_j = scale * dot(q[q0 + r, h], K[s, j, kvh])     for keys j = lo ..= ctx - q_len + r (causal)
//     out[q0 + r, h] = sum_j softmax(score)_j V[s, j, kvh]
// lo = 0, or under a sliding window (p.window > 0) lo = max(0, ctx - q_len + r + 1 - window).
// With p.softcap > 0 (Gemma 2) each score becomes softcap * tanh(score / softcap) before the softmax;
// with p.alibi_max_bias > 0 (BLOOM, MPT) it then gains alibi_scale * slope(h) * (j - position) (ALiBi,
// params.h).
// Every key, the earlier context's and the new tokens' alike, is read through the block table from the
// paged cache (write_kv runs before attention in the forward pass), so chunked prefill and prefix-cache
// hits need nothing special: a chunk is q_len new rows over a longer context.
//
// Layouts (row-major, T = bf16 or f16; cache layout and its reasons in params.h):
//   out:             [num_tokens, out_stride], head h at columns h * head_dim ..
//   qkv:             [num_tokens, q_stride], Q head h at columns h * head_dim ..
//   k_cache/v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
//   query_start_loc: uint32 [num_seqs + 1];  seq_lens: uint32 [num_seqs]
//   block_tables:    uint32 [num_seqs, max_blocks_per_seq]
//   tiles:           uint32 [num_tiles, 2]  (sequence, query tile index), built by the host
//
// Algorithm, flash_prefill_d{64,128} (one exported kernel per head_dim D): grid (num_tiles, num_heads),
// IM_PREFILL_THREADS = 128 threads (4 warps); block (i, h) computes IM_PREFILL_BLOCK_M = 64 query rows
// of one head, warp w rows 16 w .. 16 w + 15 of them (FlashAttention-2's split of Q over warps).
//  - Q: each warp loads its 16 x D query fragment once into registers in the m16n8k16 A-operand
//    layout (D / 16 fragments of 4 registers).
//  - K/V: tiles of BN keys (64 for D = 64, 32 for D = 128) are copied 16 bytes at a time through the
//    block table into shared memory, [BN][D + 8] each (the 8-element pad makes the fragment reads
//    below bank-conflict free); keys past the tile's last causal key are zero-filled. The copies
//    are cp.async, pipelined: V of tile t loads while S = Q Kᵀ and the softmax of tile t run, K of
//    tile t + 1 while O += P V of tile t runs (FlashAttention-2's order), so the warps wait for
//    memory only where a tile's compute is shorter than its load, with one K and one V buffer.
//    flash_prefill_sync_d* loads both tiles through registers between two barriers instead (the
//    `auto-sync` study variant, the step before the pipeline).
//  - Causal skipping: a warp skips the n-tiles of S and the k-steps of P V whose keys all lie after
//    its last row's position (on the tiles along the diagonal: 37.5 % of their mma work).
//  - Sliding window: the block's key loop starts at its first row's first visible key, so a tile
//    reads at most window + BM - 1 keys whatever the context; a warp also skips the n-tiles and
//    k-steps whose keys all lie before its first row's window (the mirror of causal skipping).
//  - S = Q Kᵀ with mma.sync (B fragments of two k-steps per ldmatrix.x4 from the K tile), scaled by
//    scale * log2(e), causal and context masks applied; online softmax per row in f32 (running max
//    and sum; the 4 lanes sharing a row reduce with two xor shuffles); the f32 probabilities are
//    rounded to T and reused in registers as the A operand of O += P V (FlashAttention-2's register
//    reuse: the C layout of two adjacent n-tiles is the A layout of one k-step); V's B fragments of
//    two n-tiles per ldmatrix.x4.trans from the V tile (key-major, so transposed on the way).
//  - ALiBi: a uniform branch adds each score's slope * (j - position) before the scaling (the bias
//    pre-divided by it), so a model without ALiBi pays one predicate per tile.
//  - At the end O / l is rounded to T and stored as 4-byte pairs.
// Shared memory (static): 2 * BN * (D + 8) * sizeof(T) = 18 KiB at D = 64, 17 KiB at D = 128.
// The f32 build compiles these kernels to an empty body (no f32 tensor-core path); the host runs
// paged_attention_naive for f32 prefill instead.
// Numerics: the probabilities P are rounded to T before P V (as FlashAttention does), so the result
// differs from the f32 reference by up to about eps_T * max|V| absolute, besides the final rounding.
// Requirements (checked by the host; the kernel returns without writing when they fail): head_dim
// == the kernel's D, num_heads % num_kv_heads == 0, blockDim.x == IM_PREFILL_THREADS, sm_80 or newer.
// Keys whose block id is >= num_blocks are read as zeros.
//
// Roofline (per sequence, n = q_len, c = ctx, H heads, Hkv KV heads, D, s = sizeof(T); without a
// window — under one, each row's c is at most the window):
//   FLOPs ≈ 4 H D (n c - n^2 / 2)  (causal);  bytes ≈ 2 n H D s (q, out) + ceil(n / 64) H 2 c D s
//   (K/V re-read per query tile and head, mostly from L2; DRAM sees about 2 Hkv c D s).
//   A 4096-token prefill of Llama-3-8B (H 32, D 128): ~137 GFLOP per layer, 4.4 TFLOP for 32 layers,
//   compute-bound: the target is a useful fraction of the dense bf16 tensor peak (H100 SXM ~990
//   TFLOP/s; FlashAttention-2 reaches ~35-50 % of it on Hopper without its wgmma path; this
//   version's share is for a GPU session to measure, against SDPA flash on the same shapes).
#include "common.cuh"

// mma.sync m16n8k16 with bf16/f16 needs sm_80; older targets (and f32) get empty kernels.
#if IM_DTYPE != IM_DTYPE_F32 && __CUDA_ARCH__ >= 800
#define IM_PREFILL_MMA 1
#else
#define IM_PREFILL_MMA 0
#endif

#if IM_PREFILL_MMA

namespace {

constexpr int WARPS = IM_PREFILL_THREADS / im::WARP;
constexpr int BM = IM_PREFILL_BLOCK_M;
static_assert(BM == WARPS * 16, "one 16-row m-tile per warp");
constexpr float LOG2E = 1.4426950408889634f;

// The first key a row at position `pos` sees: 0, or pos + 1 - window under a window.
__device__ __forceinline__ uint32_t window_start(uint32_t pos, uint32_t window) {
    return window != 0 && pos + 1 > window ? pos + 1 - window : 0;
}

template <int D>
struct Tile {
    static constexpr int BN = D <= 64 ? 64 : 32;  // keys per K/V tile
    static constexpr int LD = D + 8;              // shared row stride in elements (16-byte pad)
    static constexpr int SMEM = 2 * BN * LD;      // elements of T: K tile then V tile
};

// Two f32 values rounded to T and packed into 32 bits (lower half = a, as the mma operands expect).
__device__ __forceinline__ uint32_t pack2(float a, float b) {
#if IM_DTYPE == IM_DTYPE_BF16
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
#else
    const __half2 v = __floats2half2_rn(a, b);
#endif
    return *reinterpret_cast<const uint32_t*>(&v);
}

// D(16x8, f32) += A(16x16, T, row-major) * B(16x8, T, column-major).
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
#if defined(IM_CPU_EMULATION)
    // scripts/emulate-kernels: the instruction computed on the CPU from the PTX ISA's fragment
    // layouts (tests/kernel_emulation/emu.h)
    emu_mma_m16n8k16<T>(c, a, b0, b1);
#elif IM_DTYPE == IM_DTYPE_BF16
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// ldmatrix.x4 from shared memory: four 8x8 matrices of 16-bit elements, lane l giving the address
// of row l % 8 of matrix l / 8 (16-byte aligned); r[i] gets matrix i's elements (l / 4, 2 (l % 4)
// and + 1) — exactly an mma B fragment register when the rows are B's columns (K: rows of keys).
// TRANS loads each matrix transposed — (2 (l % 4) and + 1, l / 4) — the B fragment of a matrix
// stored with B's rows as its rows (V: rows of keys, B = V[keys][d] in k x n).
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const T* row) {
#if defined(IM_CPU_EMULATION)
    emu_ldmatrix_x4(r, row, TRANS);
#else
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
#endif
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes (sm_80+): 16 bytes from global to shared
// memory without passing through registers, so a thread issues its copies and goes on computing;
// src_bytes 0 reads nothing and writes 16 zero bytes. The copies become visible to this thread after
// cp_async_wait_all, to the block after a __syncthreads that follows it.
__device__ __forceinline__ void cp_async_16(T* dst, const T* src, bool valid) {
#if defined(IM_CPU_EMULATION)
    emu_cp_async_16(dst, src, valid ? 16u : 0u);
#else
    const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
                 "r"(valid ? 16u : 0u));
#endif
}

// Close this thread's open cp.async copies into a group (cp.async.commit_group).
__device__ __forceinline__ void cp_async_commit() {
#if defined(IM_CPU_EMULATION)
    emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait for every committed group of this thread (cp.async.wait_group 0).
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(IM_CPU_EMULATION)
    emu_cp_async_wait(0);
#else
    asm volatile("cp.async.wait_group 0;\n" ::);
#endif
}

// Keys kb .. kb + BN - 1 of one KV head from `cache` through the block table into the shared tile
// dst [BN][LD], 16 bytes per copy; keys at or past kmax and keys in unmapped blocks (id >=
// num_blocks) become zeros. ASYNC: cp.async (the caller commits and waits); otherwise loads through
// registers that the block waits for right here.
template <int D, bool ASYNC>
__device__ __forceinline__ void load_kv_tile(T* __restrict__ dst, const T* __restrict__ cache,
                                             const uint32_t* __restrict__ table, uint32_t kb,
                                             uint32_t kmax, uint32_t kvh,
                                             const PrefillAttentionParams& p) {
    constexpr int BN = Tile<D>::BN, LD = Tile<D>::LD, R = D / im::VEC;  // R: 16-byte vectors a row
    constexpr int PER_THREAD = BN * R / IM_PREFILL_THREADS;             // 4 at D = 64 and 128
    static_assert(BN * R % IM_PREFILL_THREADS == 0, "whole copies per thread");
    const uint32_t nkv = p.kv.num_kv_heads, bs = p.kv.block_size;
#pragma unroll
    for (int i = 0; i < PER_THREAD; ++i) {
        const uint32_t x = threadIdx.x + i * IM_PREFILL_THREADS;
        const uint32_t n = x / R, v = x % R, j = kb + n;
        const T* src = cache;  // a valid address for the zero-fill copy, which reads nothing
        bool valid = false;
        if (j < kmax) {
            const uint32_t block = table[j / bs];
            if (block < p.kv.num_blocks) {
                src = cache + ((uint64_t(block) * bs + j % bs) * nkv + kvh) * D + v * im::VEC;
                valid = true;
            }
        }
        T* d = dst + n * LD + v * im::VEC;
        if (ASYNC) {
            cp_async_16(d, src, valid);
        } else {
            *reinterpret_cast<uint4*>(d) =
                valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
        }
    }
}

template <int D, bool ASYNC>
__device__ __forceinline__ void prefill_block(T* __restrict__ smem, T* __restrict__ out,
                                              const T* __restrict__ qkv, const T* __restrict__ k_cache,
                                              const T* __restrict__ v_cache,
                                              const uint32_t* __restrict__ query_start_loc,
                                              const uint32_t* __restrict__ seq_lens,
                                              const uint32_t* __restrict__ block_tables,
                                              const uint32_t* __restrict__ tiles,
                                              const PrefillAttentionParams& p) {
    constexpr int BN = Tile<D>::BN, LD = Tile<D>::LD;
    constexpr int KD = D / 16;  // k-steps of Q Kᵀ
    constexpr int NT = BN / 8;  // n-tiles of S
    constexpr int DT = D / 8;   // n-tiles of O
    T* ks = smem;
    T* vs = smem + BN * LD;

    const uint32_t bs = p.kv.block_size;
    const uint32_t h = blockIdx.y, kvh = h / (p.num_heads / p.kv.num_kv_heads);
    const uint32_t s = tiles[2 * blockIdx.x], mt = tiles[2 * blockIdx.x + 1];
    const uint32_t q0 = query_start_loc[s], q_len = query_start_loc[s + 1] - q0;
    const uint32_t ctx = uint32_t(min(uint64_t(seq_lens[s]), uint64_t(p.max_blocks_per_seq) * bs));
    if (q_len == 0 || q_len > ctx || mt * BM >= q_len) return;  // uniform per block
    const uint32_t* table = block_tables + uint64_t(s) * p.max_blocks_per_seq;
    const uint32_t first_pos = ctx - q_len;                        // position of local row 0
    const uint32_t row0 = mt * BM;                                 // the tile's first local row
    const uint32_t rows = min(uint32_t(BM), q_len - row0);
    const uint32_t kmax = min(ctx, first_pos + row0 + rows);       // keys kmin .. kmax - 1
    const uint32_t kmin = window_start(first_pos + row0, p.window);  // the first row's first key

    const unsigned tid = threadIdx.x, lane = tid % im::WARP, warp = tid / im::WARP;
    const unsigned gid = lane >> 2, tig = lane & 3;
    const unsigned lm = lane / 8, lr = lane % 8;  // the ldmatrix row this lane addresses
    const uint32_t ra = row0 + warp * 16 + gid, rb = ra + 8;  // this lane's two local rows
    const uint32_t pos_a = first_pos + ra, pos_b = first_pos + rb;
    // The position of the warp's last row: every key after it is masked for the whole warp, so on
    // the tiles along the diagonal the warp skips those keys' n-tiles (S) and k-steps (P V) —
    // 37.5 % of the diagonal tiles' work. Warp-uniform, as the collective ldmatrix/mma need.
    const uint32_t warp_last_pos = first_pos + row0 + warp * 16 + 15;
    // The first key the warp's first row sees: keys before it are masked for the whole warp.
    const uint32_t warp_first_key = window_start(first_pos + row0 + warp * 16, p.window);
    const uint32_t lo_a = window_start(pos_a, p.window), lo_b = window_start(pos_b, p.window);

    // Q fragments (A operand), rows past q_len are zero.
    uint32_t qf[KD][4];
    {
        const T* qa = qkv + uint64_t(q0 + ra) * p.q_stride + uint64_t(h) * D;
        const T* qb = qkv + uint64_t(q0 + rb) * p.q_stride + uint64_t(h) * D;
        const bool va = ra < q_len, vb = rb < q_len;
#pragma unroll
        for (int kc = 0; kc < KD; ++kc) {
            const int c0 = kc * 16 + tig * 2;
            qf[kc][0] = va ? *reinterpret_cast<const uint32_t*>(qa + c0) : 0u;
            qf[kc][1] = vb ? *reinterpret_cast<const uint32_t*>(qb + c0) : 0u;
            qf[kc][2] = va ? *reinterpret_cast<const uint32_t*>(qa + c0 + 8) : 0u;
            qf[kc][3] = vb ? *reinterpret_cast<const uint32_t*>(qb + c0 + 8) : 0u;
        }
    }

    // scores in log2 units for exp2; under a soft-cap, softcap * log2(e) * tanh(q · k * scale / softcap)
    const bool capped = p.softcap > 0.f;
    const float qk_scale = capped ? p.scale / p.softcap : p.scale * LOG2E;
    const float cap_log2e = p.softcap * LOG2E;
    // ALiBi: slope * (j - pos) in log2 units, added before the scaling below multiplies the scores by
    // score_scale, so divided by it here (1 under a soft-cap, whose tanh is taken first)
    const bool alibi = p.alibi_max_bias > 0.f;
    const float alibi_pre = alibi ? p.alibi_scale * LOG2E *
                                        im::alibi_slope(h, p.num_heads, p.alibi_max_bias) /
                                        (capped ? 1.f : qk_scale)
                                  : 0.f;
    float m_a = im::neg_inf(), m_b = im::neg_inf(), l_a = 0.f, l_b = 0.f;  // l: this lane's share
    float o[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dt][e] = 0.f;

    // The K/V pipeline (ASYNC): K of the first tile is in flight before the loop; in each iteration
    // V of this tile loads while S = Q Kᵀ and the softmax run, and K of the next tile while O += P V
    // runs, each into its single buffer once every warp is done reading the tile it replaces (the
    // two barriers below), so shared memory stays one K and one V tile (FlashAttention-2's order).
    // Without ASYNC both tiles are loaded through registers between two barriers, and the warps
    // wait out the memory latency of every tile: the instructive step before the pipeline.
    if (ASYNC) {
        load_kv_tile<D, true>(ks, k_cache, table, kmin, kmax, kvh, p);
        cp_async_commit();
    }
    for (uint32_t kb = kmin; kb < kmax; kb += BN) {
        if (ASYNC) {
            cp_async_wait_all();  // this thread's copies of K(kb)
            __syncthreads();      // everyone's K(kb) landed; everyone's P V of the last tile is done
            load_kv_tile<D, true>(vs, v_cache, table, kb, kmax, kvh, p);
            cp_async_commit();
        } else {
            __syncthreads();  // the previous tile is consumed
            load_kv_tile<D, false>(ks, k_cache, table, kb, kmax, kvh, p);
            load_kv_tile<D, false>(vs, v_cache, table, kb, kmax, kvh, p);
            __syncthreads();
        }

        // S = Q Kᵀ for this warp's 16 rows and the tile's BN keys. B (k = head dim, n = key) of
        // k-steps kc, kc + 1 from one ldmatrix.x4: matrix m = lane / 8 is keys nt * 8 .. + 7 by
        // dims (kc + m / 2) * 16 + (m % 2) * 8 .. + 7, lane giving key row lane % 8.
        float sc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) sc[nt][e] = 0.f;
            // masked below (exp2 gives exactly 0): after the warp's last row, before its window
            if (kb + nt * 8 > warp_last_pos || kb + nt * 8 + 8 <= warp_first_key) continue;
            const T* krow = ks + (nt * 8 + lr) * LD + (lm / 2) * 16 + (lm % 2) * 8;
#pragma unroll
            for (int kc = 0; kc < KD; kc += 2) {
                uint32_t b[4];  // b0, b1 of k-step kc, then of kc + 1
                ldmatrix_x4<false>(b, krow + kc * 16);
                mma16816(sc[nt], qf[kc], b[0], b[1]);
                mma16816(sc[nt], qf[kc + 1], b[2], b[3]);
            }
        }
        // scale (and soft-cap), mask (causal, window and context), row max
        if (capped) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) sc[nt][e] = cap_log2e * tanhf(sc[nt][e] * qk_scale);
        }
        const float score_scale = capped ? 1.f : qk_scale;
        if (alibi) {  // uniform; the distances wrap to negative int32
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const uint32_t j = kb + nt * 8 + tig * 2 + e;
                    sc[nt][e] += alibi_pre * float(int32_t(j - pos_a));
                    sc[nt][2 + e] += alibi_pre * float(int32_t(j - pos_b));
                }
        }
        float mx_a = im::neg_inf(), mx_b = im::neg_inf();
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const uint32_t j = kb + nt * 8 + tig * 2 + e;
                sc[nt][e] = (j < kmax && j <= pos_a && j >= lo_a) ? sc[nt][e] * score_scale : im::neg_inf();
                sc[nt][2 + e] =
                    (j < kmax && j <= pos_b && j >= lo_b) ? sc[nt][2 + e] * score_scale : im::neg_inf();
                mx_a = fmaxf(mx_a, sc[nt][e]);
                mx_b = fmaxf(mx_b, sc[nt][2 + e]);
            }
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(im::FULL_MASK, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(im::FULL_MASK, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(im::FULL_MASK, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(im::FULL_MASK, mx_b, 2));
        // Without a window key 0 is in the first tile and visible to every row, so m is finite from
        // then on; a row with no visible key in a later tile keeps its max (mx = -inf). Under a
        // window a row may see nothing of the first tiles (its window starts later): the
        // subtrahend is 0 while m is still -inf (FlashAttention-2's guard), since exp2(-inf - -inf)
        // would be NaN; its l and o stay 0 until its first visible key.
        const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        const float sub_a = mn_a == im::neg_inf() ? 0.f : mn_a;
        const float sub_b = mn_b == im::neg_inf() ? 0.f : mn_b;
        const float corr_a = exp2f(m_a - sub_a), corr_b = exp2f(m_b - sub_b);  // 0 on the first tile
        m_a = mn_a;
        m_b = mn_b;
        float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            sc[nt][0] = exp2f(sc[nt][0] - sub_a);
            sc[nt][1] = exp2f(sc[nt][1] - sub_a);
            sc[nt][2] = exp2f(sc[nt][2] - sub_b);
            sc[nt][3] = exp2f(sc[nt][3] - sub_b);
            sum_a += sc[nt][0] + sc[nt][1];
            sum_b += sc[nt][2] + sc[nt][3];
        }
        l_a = l_a * corr_a + sum_a;
        l_b = l_b * corr_b + sum_b;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            o[dt][0] *= corr_a;
            o[dt][1] *= corr_a;
            o[dt][2] *= corr_b;
            o[dt][3] *= corr_b;
        }
        if (ASYNC) {
            cp_async_wait_all();  // this thread's copies of V(kb)
            __syncthreads();      // everyone's V(kb) landed; every warp is done with K(kb)
            if (kb + BN < kmax) load_kv_tile<D, true>(ks, k_cache, table, kb + BN, kmax, kvh, p);
            cp_async_commit();
        }
        // O += P V: the C fragments of n-tiles 2kk, 2kk + 1 are the A fragment of k-step kk
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            // P is 0 for all 16 keys
            if (kb + kk * 16 > warp_last_pos || kb + kk * 16 + 16 <= warp_first_key) continue;
            const uint32_t a[4] = {pack2(sc[2 * kk][0], sc[2 * kk][1]),
                                   pack2(sc[2 * kk][2], sc[2 * kk][3]),
                                   pack2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                                   pack2(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
            // B (k = key, n = head dim) of n-tiles dt, dt + 1 from one ldmatrix.x4.trans: matrix
            // m = lane / 8 is keys kk * 16 + (m % 2) * 8 .. + 7 by dims (dt + m / 2) * 8 .. + 7
            const T* vrow = vs + (kk * 16 + (lm % 2) * 8 + lr) * LD + (lm / 2) * 8;
#pragma unroll
            for (int dt = 0; dt < DT; dt += 2) {
                uint32_t b[4];  // b0, b1 of n-tile dt, then of dt + 1
                ldmatrix_x4<true>(b, vrow + dt * 8);
                mma16816(o[dt], a, b[0], b[1]);
                mma16816(o[dt + 1], a, b[2], b[3]);
            }
        }
    }

    // full row sums over the 4 lanes of each row, then store
    l_a += __shfl_xor_sync(im::FULL_MASK, l_a, 1);
    l_a += __shfl_xor_sync(im::FULL_MASK, l_a, 2);
    l_b += __shfl_xor_sync(im::FULL_MASK, l_b, 1);
    l_b += __shfl_xor_sync(im::FULL_MASK, l_b, 2);
    const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
    T* oa = out + uint64_t(q0 + ra) * p.out_stride + uint64_t(h) * D + tig * 2;
    T* ob = out + uint64_t(q0 + rb) * p.out_stride + uint64_t(h) * D + tig * 2;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
        if (ra < q_len)
            *reinterpret_cast<uint32_t*>(oa + dt * 8) = pack2(o[dt][0] * inv_a, o[dt][1] * inv_a);
        if (rb < q_len)
            *reinterpret_cast<uint32_t*>(ob + dt * 8) = pack2(o[dt][2] * inv_b, o[dt][3] * inv_b);
    }
}

__device__ __forceinline__ bool prefill_params_ok(const PrefillAttentionParams& p, uint32_t d) {
    return blockIdx.x < p.num_tiles && blockIdx.y < p.num_heads && p.kv.head_dim == d &&
           p.kv.num_kv_heads != 0 && p.kv.block_size != 0 && p.num_heads % p.kv.num_kv_heads == 0 &&
           blockDim.x == IM_PREFILL_THREADS;
}

}  // namespace

#endif  // IM_PREFILL_MMA

// The exported kernels, one per head_dim (D = 64, 128) and K/V load scheme: flash_prefill_d* with the
// cp.async pipeline (what the `auto` variant runs), flash_prefill_sync_d* with loads through registers
// (the `auto-sync` study variant: what the pipeline buys). Empty bodies where IM_PREFILL_MMA is 0:
// the host never launches them there (it runs paged_attention_naive for f32 and before sm_80).
// __launch_bounds__(IM_PREFILL_THREADS, 3): 3 blocks (12 warps) per SM, what D = 128 reaches anyway
// (~168 registers). For D = 64 (126-137 registers) it lets ptxas go past 128 rather than spill to
// fit 4 blocks, which it did on sm_80..89 without the minimum (up to 24 bytes a thread) at one
// point of this kernel's history. Whether 4 blocks beat 3 there is for a GPU session to measure
// (docs/attention.md, "Tune prefill"; kernels/REGISTERS.md has the counts).
// Arguments of every flash_prefill kernel (D = 64 or 128):
//   out             [num_tokens, out_stride]
//   qkv             [num_tokens, q_stride]
//   k_cache/v_cache [num_blocks, block_size, num_kv_heads, D]
//   query_start_loc [num_seqs + 1];  seq_lens [num_seqs]
//   block_tables    [num_seqs, max_blocks_per_seq];  tiles [num_tiles, 2]
#define IM_PREFILL_ARGS                                                                             \
    T* __restrict__ out, const T* __restrict__ qkv, const T* __restrict__ k_cache,                 \
        const T* __restrict__ v_cache, const uint32_t* __restrict__ query_start_loc,               \
        const uint32_t* __restrict__ seq_lens, const uint32_t* __restrict__ block_tables,          \
        const uint32_t* __restrict__ tiles, PrefillAttentionParams p
#if IM_PREFILL_MMA
#define IM_PREFILL_RUN(D, ASYNC)                                                                   \
    __shared__ __align__(16) T smem[Tile<D>::SMEM];                                                \
    if (prefill_params_ok(p, D))                                                                   \
        prefill_block<D, ASYNC>(smem, out, qkv, k_cache, v_cache, query_start_loc, seq_lens,      \
                                block_tables, tiles, p);
#else
#define IM_PREFILL_RUN(D, ASYNC)
#endif

extern "C" __global__ void __launch_bounds__(IM_PREFILL_THREADS, 3) flash_prefill_d64(IM_PREFILL_ARGS) {
    IM_PREFILL_RUN(64, true)
}
extern "C" __global__ void __launch_bounds__(IM_PREFILL_THREADS, 3) flash_prefill_d128(IM_PREFILL_ARGS) {
    IM_PREFILL_RUN(128, true)
}
extern "C" __global__ void __launch_bounds__(IM_PREFILL_THREADS, 3) flash_prefill_sync_d64(IM_PREFILL_ARGS) {
    IM_PREFILL_RUN(64, false)
}
extern "C" __global__ void __launch_bounds__(IM_PREFILL_THREADS, 3) flash_prefill_sync_d128(IM_PREFILL_ARGS) {
    IM_PREFILL_RUN(128, false)
}
