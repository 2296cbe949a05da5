// attention_decode.cu — paged decode attention, split-KV ("flash-decoding"), GQA-aware: the decode half
// of the `auto` attention variant (src/backend/cuda/attention.rs picks it for sequences with exactly
// one new token; docs/attention.md has the design and what a GPU session still has to validate).
//
// What it computes (the same as paged_attention_naive and src/backend/cpu/attention.rs, restricted to
// decode sequences). Decode sequence i is sequence s = decode_seqs[i], whose one new token is batch row
// t = query_start_loc[s], at position seq_lens[s] - 1. For each query head h of KV head
// kvh = h / G (G = num_heads / num_kv_heads):
//     score_j = scale * dot(q[t, h], K[s, j, kvh])          j = lo .. seq_lens[s] - 1
//     out[t, h] = sum_j softmax(score)_j V[s, j, kvh]
// lo = 0, or under a sliding window (p.window > 0) lo = max(0, seq_lens[s] - window): the splits
// then cover the window only, so a windowed layer reads at most `window` keys per sequence. With
// p.softcap > 0 (Gemma 2) each score becomes softcap * tanh(score / softcap) before the softmax;
// with p.alibi_max_bias > 0 (BLOOM, MPT) it then gains alibi_scale * slope(h) * (j - (seq_lens[s] - 1))
// (ALiBi, params.h: the decode token is the sequence's last).
// Key j of sequence s sits in block block_tables[s][j / block_size], offset j % block_size.
//
// Layouts (row-major, T = compute dtype; cache layout and its reasons in params.h):
//   out:             [num_tokens, out_stride], head h at columns h * head_dim ..
//   qkv:             [num_tokens, q_stride], Q head h at columns h * head_dim ..
//   k_cache/v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
//   query_start_loc: uint32 [num_seqs + 1];  seq_lens: uint32 [num_seqs]
//   block_tables:    uint32 [num_seqs, max_blocks_per_seq];  decode_seqs: uint32 [num_decode]
//   part_acc:        f32 [num_decode, num_heads, num_splits, head_dim]  unnormalised partial outputs
//   part_ml:         f32 [num_decode, num_heads, num_splits, 2]         (running max m in log2 units,
//                                                                         running sum l) per split
//
// Algorithm, paged_decode_d{64,128,256} (one exported kernel per head_dim D, so each gets the
// registers it needs): grid (num_decode, num_kv_heads * chunks, num_splits), IM_DECODE_THREADS = 128
// threads (4 warps). Block (i, kvh * chunks + c, z) serves the query heads kvh * G + c * GC ..
// (GC = 1, 2, 4 or 8 for G = 1, 2, 3..4, >= 5: a template parameter; chunks = ceil(G / GC))
// over the keys of split z: lo + z * partition_len .. min(ctx, lo + (z + 1) * partition_len). So each KV head's
// keys are read once per (chunk of) GQA group, not once per query head as in the naive kernel.
//  - The GC query heads are staged in shared memory as f32, pre-multiplied by scale * log2(e)
//    (softmax with exp2); under a soft-cap by scale / softcap, the score then being
//    softcap * log2(e) * tanh(q · k). Under ALiBi each head's slope, times log2(e), is staged beside
//    them, and a lane adds slope * (j - (ctx - 1)) to its key j's score.
//  - Each iteration covers 128 keys, one per thread: a lane reads its key's head row of K with
//    16-byte loads (D / IM_VEC of them) and forms its GC scores against the staged queries (broadcast
//    shared-memory reads; no shuffles). Each warp keeps an online softmax per head (running max m,
//    running sum l, all lanes alike) and an accumulator acc[GC][D] spread over its lanes.
//  - P·V: the lanes split a V head row into 16-byte vectors (D / IM_VEC lanes per row, several rows
//    per warp step); the weight of each key comes from its lane by a shuffle. The V loads of
//    V_AHEAD steps are issued together before any is used (memory-level parallelism: the P·V half
//    of an iteration would otherwise wait out one load latency per step). After the loop the
//    row-groups of a warp are summed with xor shuffles.
//  - The 4 warps merge through shared memory (m, l per warp and head; acc [4][GC][D] f32).
//  - num_splits == 1: out = acc / l, rounded to T. Otherwise the block writes (acc, m, l) of its
//    split and paged_decode_reduce (grid (num_decode, num_heads), IM_DECODE_REDUCE_THREADS threads)
//    combines the splits used by each sequence: M = max m_z, L = sum l_z 2^(m_z - M),
//    out = sum acc_z 2^(m_z - M) / L.
// Shared memory (static): (1 + 4) * 8 * D floats + 288 bytes: 20.3 KiB at D = 128, 40.3 KiB at 256.
// Registers: __launch_bounds__(128, 3) (at most 170 per thread); D = 256: (128, 2).
// Requirements (checked by the host; the kernel returns without writing when they fail):
// head_dim == the kernel's D, num_heads % num_kv_heads == 0, num_splits <= IM_DECODE_MAX_SPLITS,
// partition_len a multiple of IM_DECODE_KEYS_PER_ITER, blockDim.x == IM_DECODE_THREADS. Keys whose
// block id is >= num_blocks are skipped rather than read.
//
// Roofline (s = sizeof(T), D = head_dim, L_i = keys of decode sequence i (its context, at most the
// window), Hkv = num_kv_heads):
//   bytes ≈ sum_i 2 Hkv L_i D s (each KV head read once per group chunk; once when G <= 8)
//           + 2 num_decode H D s (q, out) + with splits 2 * num_decode H splits (D + 2) 4 (partials);
//   FLOPs ≈ sum_i 4 H L_i D. Arithmetic intensity ≈ 2 G / s FLOP/byte (8 for Llama-3-8B in bf16):
//   memory-bound on every GPU; the target is the HBM bandwidth (H100 SXM 3.35 TB/s: 8 GiB of KV
//   per step in about 2.6 ms). Splits exist so that small batches still put >= 2 waves of blocks on
//   the SMs (heuristic in src/backend/cuda/attention.rs).
#include "common.cuh"

namespace {

constexpr int WARPS = IM_DECODE_THREADS / im::WARP;
static_assert(IM_DECODE_THREADS == WARPS * im::WARP, "IM_DECODE_THREADS must be whole warps");
static_assert(IM_DECODE_KEYS_PER_ITER == IM_DECODE_THREADS, "one key per thread per iteration");
constexpr float LOG2E = 1.4426950408889634f;
// P·V steps whose V loads are issued together (16-byte loads in flight per lane, times CH).
constexpr int V_AHEAD = 4;

// The first key a decode token at position ctx - 1 sees: 0, or ctx - window under a window shorter
// than the context.
__device__ __forceinline__ uint32_t window_start(uint32_t ctx, uint32_t window) {
    return window != 0 && ctx > window ? ctx - window : 0;
}

// Shared floats of paged_decode_d<D>: staged queries [8][D], warp accumulators [WARPS][8][D],
// warp (m, l) [WARPS][8][2], ALiBi slopes [8] and the query's position (one uint32).
constexpr int decode_smem_floats(int d) {
    return IM_DECODE_HEADS * d * (1 + WARPS) + WARPS * IM_DECODE_HEADS * 2 + IM_DECODE_HEADS + 1;
}

template <int D, int GC>
__device__ __forceinline__ void decode_block(float* __restrict__ smem, T* __restrict__ out,
                                             float* __restrict__ part_acc, float* __restrict__ part_ml,
                                             const T* __restrict__ qkv, const T* __restrict__ k_cache,
                                             const T* __restrict__ v_cache,
                                             const uint32_t* __restrict__ query_start_loc,
                                             const uint32_t* __restrict__ seq_lens,
                                             const uint32_t* __restrict__ block_tables,
                                             const uint32_t* __restrict__ decode_seqs,
                                             const DecodeAttentionParams& p) {
    constexpr int R = D / im::VEC;               // 16-byte vectors per head row
    constexpr int RL = R < im::WARP ? R : im::WARP;  // lanes per row in P·V
    constexpr int CH = R / RL;                   // vectors per lane per row in P·V
    constexpr int KPW = im::WARP / RL;           // rows per warp step in P·V
    constexpr int V_STEPS = im::WARP / KPW;      // warp steps of P·V per iteration
    constexpr int AHEAD = V_STEPS < V_AHEAD ? V_STEPS : V_AHEAD;  // steps per round of V loads
    static_assert(R * im::VEC == D && CH * RL == R && KPW * RL == im::WARP, "unsupported head_dim");
    static_assert(V_STEPS % AHEAD == 0, "rounds must cover the P·V steps");

    float* q_s = smem;                                // [GC][D]
    float* red = smem + IM_DECODE_HEADS * D;          // [WARPS][GC][D]
    float* ml = red + WARPS * IM_DECODE_HEADS * D;    // [WARPS][GC][2]
    float* slope_s = ml + WARPS * IM_DECODE_HEADS * 2;  // [GC]: ALiBi slopes times log2(e)
    uint32_t* qpos_s = reinterpret_cast<uint32_t*>(slope_s + IM_DECODE_HEADS);  // ALiBi: ctx - 1

    const uint32_t nkv = p.kv.num_kv_heads, bs = p.kv.block_size;
    const uint32_t group = p.num_heads / nkv;
    const uint32_t chunks = (group + GC - 1) / GC;
    const uint32_t i = blockIdx.x, kvh = blockIdx.y / chunks, c = blockIdx.y % chunks;
    const uint32_t split = blockIdx.z;
    const uint32_t h0 = kvh * group + c * GC;
    const uint32_t ng = min(uint32_t(GC), group - c * GC);  // heads of this block (>= 1)

    const uint32_t s = decode_seqs[i];
    const uint32_t t = query_start_loc[s];
    const uint32_t* table = block_tables + uint64_t(s) * p.max_blocks_per_seq;
    const uint32_t ctx = uint32_t(min(uint64_t(seq_lens[s]), uint64_t(p.max_blocks_per_seq) * bs));
    // keys lo .. ctx - 1; this split's share of them (32-bit: every bound is below ctx)
    const uint32_t lo = window_start(ctx, p.window);
    if (uint64_t(split) * p.partition_len >= ctx - lo) return;  // a split past the keys (uniform)
    const uint32_t k_begin = lo + split * p.partition_len;
    const uint32_t k_end = k_begin + min(p.partition_len, ctx - k_begin);

    const unsigned tid = threadIdx.x, lane = tid % im::WARP, warp = tid / im::WARP;

    // Stage the queries as f32, scaled for exp2 (or for the soft-cap's tanh); heads past ng are zero.
    const bool capped = p.softcap > 0.f;
    const float qscale = capped ? p.scale / p.softcap : p.scale * LOG2E;
    const float cap_log2e = p.softcap * LOG2E;
    for (uint32_t v = tid; v < GC * R; v += IM_DECODE_THREADS) {
        const uint32_t g = v / R, e0 = (v % R) * im::VEC;
        float f[im::VEC];
        if (g < ng) {
            im::load<im::VEC>(qkv + uint64_t(t) * p.q_stride + uint64_t(h0 + g) * D + e0, f);
        } else {
#pragma unroll
            for (int e = 0; e < im::VEC; ++e) f[e] = 0.f;
        }
#pragma unroll
        for (int e = 0; e < im::VEC; ++e) q_s[g * D + e0 + e] = f[e] * qscale;
    }
    const bool alibi = p.alibi_max_bias > 0.f;
    if (alibi && tid < GC)
        slope_s[tid] = p.alibi_scale * LOG2E * im::alibi_slope(h0 + tid, p.num_heads, p.alibi_max_bias);
    if (alibi && tid == 0) *qpos_s = ctx - 1;
    __syncthreads();

    float m[GC], l[GC], acc[GC][CH][im::VEC];
#pragma unroll
    for (int g = 0; g < GC; ++g) {
        m[g] = im::neg_inf();
        l[g] = 0.f;
#pragma unroll
        for (int ch = 0; ch < CH; ++ch)
#pragma unroll
            for (int e = 0; e < im::VEC; ++e) acc[g][ch][e] = 0.f;
    }
    const uint32_t row_lane = lane % RL, row_sub = lane / RL;

    for (uint32_t base = k_begin; base < k_end; base += IM_DECODE_KEYS_PER_ITER) {
        // ---- scores: this lane's key against the GC staged queries
        const uint32_t j = base + warp * im::WARP + lane;
        bool valid = false;
        uint64_t off = 0;  // element offset of (slot of key j, kvh, 0)
        if (j < k_end) {
            const uint32_t block = table[j / bs];
            valid = block < p.kv.num_blocks;
            off = ((uint64_t(block) * bs + j % bs) * nkv + kvh) * D;
        }
        float sc[GC];
#pragma unroll
        for (int g = 0; g < GC; ++g) sc[g] = 0.f;
        if (valid) {
#pragma unroll 4
            for (int v = 0; v < R; ++v) {
                float k[im::VEC];
                im::load<im::VEC>(k_cache + off + v * im::VEC, k);
#pragma unroll
                for (int g = 0; g < GC; ++g) {
                    // (scalar reads: ptxas still merges them into 16-byte ones; an explicit float4
                    // version made NVRTC's PTX differ from run to run)
                    const float* qg = q_s + g * D + v * im::VEC;
#pragma unroll
                    for (int e = 0; e < im::VEC; ++e) sc[g] += qg[e] * k[e];
                }
            }
        }
        if (capped) {
#pragma unroll
            for (int g = 0; g < GC; ++g) sc[g] = cap_log2e * tanhf(sc[g]);
        }
        if (alibi) {  // uniform; (j - (ctx - 1)) wraps to the negative distance as int32
            // (volatile: the slopes and the query position are read from shared memory here
            // rather than held in registers across the loop, which made the f16 build spill at its
            // 168-register budget)
            const volatile float* slopes = slope_s;
            const float dist = float(int32_t(j - *static_cast<const volatile uint32_t*>(qpos_s)));
#pragma unroll
            for (int g = 0; g < GC; ++g) sc[g] += slopes[g] * dist;
        }
        // ---- online softmax per head, warp-wide (every lane ends with the same m and l)
        float w[GC];
#pragma unroll
        for (int g = 0; g < GC; ++g) {
            const float mx = im::warp_max(valid ? sc[g] : im::neg_inf());
            const float m_new = fmaxf(m[g], mx);
            // m_new == -inf: no key of this warp so far; keep everything (all zero) as is
            const float corr = m_new == im::neg_inf() ? 1.f : exp2f(m[g] - m_new);
            w[g] = valid ? exp2f(sc[g] - m_new) : 0.f;
            l[g] = l[g] * corr + im::warp_sum(w[g]);
            m[g] = m_new;
#pragma unroll
            for (int ch = 0; ch < CH; ++ch)
#pragma unroll
                for (int e = 0; e < im::VEC; ++e) acc[g][ch][e] *= corr;
        }
        // ---- P·V over the warp's 32 keys, KPW rows per step, V_AHEAD steps per round: a round
        // issues all its 16-byte V loads back to back and only then converts and accumulates, so
        // each lane has V_AHEAD * CH loads in flight. (A load guarded per step by `if (valid)`
        // made ptxas branch around each one, leaving one 16-byte load in flight per lane: the
        // P·V phase ran latency-bound.) A skipped key (past the split's end, or a block id the
        // kernel may not read) loads a stand-in row at element 0 of the cache, which always
        // exists; its weight is 0 and its values are zeroed, so a non-finite stand-in cannot
        // leak into acc.
        const uint64_t v_src = valid ? off : 0;
        const uint32_t off_lo = uint32_t(v_src), off_hi = uint32_t(v_src >> 32);
#pragma unroll 1
        for (int st0 = 0; st0 < V_STEPS; st0 += AHEAD) {
            im::Pack<im::VEC> raw[AHEAD][CH];
            bool ok[AHEAD];
#pragma unroll
            for (int a = 0; a < AHEAD; ++a) {
                const int src = (st0 + a) * KPW + int(row_sub);  // the lane (key) this row-group reads
                ok[a] = __shfl_sync(im::FULL_MASK, valid, src);
                const uint64_t v_off = (uint64_t(__shfl_sync(im::FULL_MASK, off_hi, src)) << 32) |
                                       __shfl_sync(im::FULL_MASK, off_lo, src);
#pragma unroll
                for (int ch = 0; ch < CH; ++ch)
                    raw[a][ch] = *reinterpret_cast<const im::Pack<im::VEC>*>(
                        v_cache + v_off + (row_lane + ch * RL) * im::VEC);
            }
#pragma unroll
            for (int a = 0; a < AHEAD; ++a) {
                const int src = (st0 + a) * KPW + int(row_sub);
                float pw[GC];
#pragma unroll
                for (int g = 0; g < GC; ++g) pw[g] = __shfl_sync(im::FULL_MASK, w[g], src);
#pragma unroll
                for (int ch = 0; ch < CH; ++ch) {
                    float vv[im::VEC];
#pragma unroll
                    for (int e = 0; e < im::VEC; ++e) vv[e] = ok[a] ? im::to_float(raw[a][ch].v[e]) : 0.f;
#pragma unroll
                    for (int g = 0; g < GC; ++g)
#pragma unroll
                        for (int e = 0; e < im::VEC; ++e) acc[g][ch][e] += pw[g] * vv[e];
                }
            }
        }
    }

    // ---- sum the row-groups of each warp (lanes with equal row_lane)
#pragma unroll
    for (int o = RL; o < im::WARP; o <<= 1)
#pragma unroll
        for (int g = 0; g < GC; ++g)
#pragma unroll
            for (int ch = 0; ch < CH; ++ch)
#pragma unroll
                for (int e = 0; e < im::VEC; ++e)
                    acc[g][ch][e] += __shfl_xor_sync(im::FULL_MASK, acc[g][ch][e], o);

    // ---- merge the warps through shared memory
    if (row_sub == 0) {
#pragma unroll
        for (int g = 0; g < GC; ++g)
#pragma unroll
            for (int ch = 0; ch < CH; ++ch)
#pragma unroll
                for (int e = 0; e < im::VEC; ++e)
                    red[(warp * GC + g) * D + (row_lane + ch * RL) * im::VEC + e] = acc[g][ch][e];
    }
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < GC; ++g) {
            ml[(warp * GC + g) * 2] = m[g];
            ml[(warp * GC + g) * 2 + 1] = l[g];
        }
    }
    __syncthreads();

    const bool direct = p.num_splits == 1;
    for (uint32_t x = tid; x < ng * D; x += IM_DECODE_THREADS) {
        const uint32_t g = x / D, d = x % D;
        float mm = im::neg_inf();
#pragma unroll
        for (int wi = 0; wi < WARPS; ++wi) mm = fmaxf(mm, ml[(wi * GC + g) * 2]);
        float ll = 0.f, sum = 0.f;
#pragma unroll
        for (int wi = 0; wi < WARPS; ++wi) {
            const float mw = ml[(wi * GC + g) * 2];
            const float f = mw == im::neg_inf() ? 0.f : exp2f(mw - mm);
            ll += ml[(wi * GC + g) * 2 + 1] * f;
            sum += red[(wi * GC + g) * D + d] * f;
        }
        const uint32_t h = h0 + g;
        if (direct) {
            const float inv = ll > 0.f ? 1.f / ll : 0.f;
            out[uint64_t(t) * p.out_stride + uint64_t(h) * D + d] = im::from_float(sum * inv);
        } else {
            const uint64_t slot = (uint64_t(i) * p.num_heads + h) * p.num_splits + split;
            part_acc[slot * D + d] = sum;
            if (d == 0) {
                part_ml[slot * 2] = mm;
                part_ml[slot * 2 + 1] = ll;
            }
        }
    }
}

// Uniform launch checks shared by the exported kernels.
__device__ __forceinline__ bool decode_params_ok(const DecodeAttentionParams& p, uint32_t d) {
    return blockIdx.x < p.num_decode && p.kv.head_dim == d && p.kv.num_kv_heads != 0 &&
           p.num_heads != 0 &&
           p.kv.block_size != 0 && p.num_heads % p.kv.num_kv_heads == 0 && p.num_splits >= 1 &&
           p.num_splits <= IM_DECODE_MAX_SPLITS && p.partition_len != 0 &&
           p.partition_len % IM_DECODE_KEYS_PER_ITER == 0 && blockDim.x == IM_DECODE_THREADS &&
           gridDim.z == p.num_splits;
}

template <int D>
__device__ __forceinline__ void decode_dispatch(float* smem, T* out, float* part_acc, float* part_ml,
                                                const T* qkv, const T* k_cache, const T* v_cache,
                                                const uint32_t* query_start_loc,
                                                const uint32_t* seq_lens,
                                                const uint32_t* block_tables,
                                                const uint32_t* decode_seqs,
                                                const DecodeAttentionParams& p) {
    if (!decode_params_ok(p, D)) return;
    const uint32_t group = p.num_heads / p.kv.num_kv_heads;
    // The same rule as the host's (attention.rs: decode_heads_per_block).
    if (group > 4)
        decode_block<D, 8>(smem, out, part_acc, part_ml, qkv, k_cache, v_cache, query_start_loc,
                           seq_lens, block_tables, decode_seqs, p);
    else if (group > 2)
        decode_block<D, 4>(smem, out, part_acc, part_ml, qkv, k_cache, v_cache, query_start_loc,
                           seq_lens, block_tables, decode_seqs, p);
    else if (group == 2)
        decode_block<D, 2>(smem, out, part_acc, part_ml, qkv, k_cache, v_cache, query_start_loc,
                           seq_lens, block_tables, decode_seqs, p);
    else
        decode_block<D, 1>(smem, out, part_acc, part_ml, qkv, k_cache, v_cache, query_start_loc,
                           seq_lens, block_tables, decode_seqs, p);
}

}  // namespace

// The exported kernels, one per head_dim (D = 64, 128, 256). D = 64/128: at least 3 blocks per SM
// (12 warps), which caps the registers at 170 and fits every dtype and architecture without spills
// (kernels/REGISTERS.md; without a bound ptxas settles on 128 for some and spills). D = 256: at least
// 2 blocks (its 40 KiB of shared memory limits residency anyway).
extern "C" __global__ void __launch_bounds__(IM_DECODE_THREADS, 3) paged_decode_d64(
    T* __restrict__ out,                           // [num_tokens, out_stride]
    float* __restrict__ part_acc,                  // [num_decode, num_heads, num_splits, 64]
    float* __restrict__ part_ml,                   // [num_decode, num_heads, num_splits, 2]
    const T* __restrict__ qkv,                     // [num_tokens, q_stride]
    const T* __restrict__ k_cache,                 // [num_blocks, block_size, num_kv_heads, 64]
    const T* __restrict__ v_cache,                 // [num_blocks, block_size, num_kv_heads, 64]
    const uint32_t* __restrict__ query_start_loc,  // [num_seqs + 1]
    const uint32_t* __restrict__ seq_lens,         // [num_seqs]
    const uint32_t* __restrict__ block_tables,     // [num_seqs, max_blocks_per_seq]
    const uint32_t* __restrict__ decode_seqs,      // [num_decode]
    DecodeAttentionParams p) {
    __shared__ __align__(16) float smem[decode_smem_floats(64)];
    decode_dispatch<64>(smem, out, part_acc, part_ml, qkv, k_cache, v_cache, query_start_loc, seq_lens,
                         block_tables, decode_seqs, p);
}

extern "C" __global__ void __launch_bounds__(IM_DECODE_THREADS, 3) paged_decode_d128(
    T* __restrict__ out,                           // [num_tokens, out_stride]
    float* __restrict__ part_acc,                  // [num_decode, num_heads, num_splits, 128]
    float* __restrict__ part_ml,                   // [num_decode, num_heads, num_splits, 2]
    const T* __restrict__ qkv,                     // [num_tokens, q_stride]
    const T* __restrict__ k_cache,                 // [num_blocks, block_size, num_kv_heads, 128]
    const T* __restrict__ v_cache,                 // [num_blocks, block_size, num_kv_heads, 128]
    const uint32_t* __restrict__ query_start_loc,  // [num_seqs + 1]
    const uint32_t* __restrict__ seq_lens,         // [num_seqs]
    const uint32_t* __restrict__ block_tables,     // [num_seqs, max_blocks_per_seq]
    const uint32_t* __restrict__ decode_seqs,      // [num_decode]
    DecodeAttentionParams p) {
    __shared__ __align__(16) float smem[decode_smem_floats(128)];
    decode_dispatch<128>(smem, out, part_acc, part_ml, qkv, k_cache, v_cache, query_start_loc, seq_lens,
                         block_tables, decode_seqs, p);
}

extern "C" __global__ void __launch_bounds__(IM_DECODE_THREADS, 2) paged_decode_d256(
    T* __restrict__ out,                           // [num_tokens, out_stride]
    float* __restrict__ part_acc,                  // [num_decode, num_heads, num_splits, 256]
    float* __restrict__ part_ml,                   // [num_decode, num_heads, num_splits, 2]
    const T* __restrict__ qkv,                     // [num_tokens, q_stride]
    const T* __restrict__ k_cache,                 // [num_blocks, block_size, num_kv_heads, 256]
    const T* __restrict__ v_cache,                 // [num_blocks, block_size, num_kv_heads, 256]
    const uint32_t* __restrict__ query_start_loc,  // [num_seqs + 1]
    const uint32_t* __restrict__ seq_lens,         // [num_seqs]
    const uint32_t* __restrict__ block_tables,     // [num_seqs, max_blocks_per_seq]
    const uint32_t* __restrict__ decode_seqs,      // [num_decode]
    DecodeAttentionParams p) {
    __shared__ __align__(16) float smem[decode_smem_floats(256)];
    decode_dispatch<256>(smem, out, part_acc, part_ml, qkv, k_cache, v_cache, query_start_loc, seq_lens,
                         block_tables, decode_seqs, p);
}


// Combine the splits of each (decode sequence, head): grid (num_decode, num_heads).
extern "C" __global__ void __launch_bounds__(IM_DECODE_REDUCE_THREADS) paged_decode_reduce(
    T* __restrict__ out,                           // [num_tokens, out_stride]
    const float* __restrict__ part_acc,            // [num_decode, num_heads, num_splits, head_dim]
    const float* __restrict__ part_ml,             // [num_decode, num_heads, num_splits, 2]
    const uint32_t* __restrict__ query_start_loc,  // [num_seqs + 1]
    const uint32_t* __restrict__ seq_lens,         // [num_seqs]
    const uint32_t* __restrict__ decode_seqs,      // [num_decode]
    DecodeAttentionParams p) {
    const uint32_t i = blockIdx.x, h = blockIdx.y, d_all = p.kv.head_dim;
    if (i >= p.num_decode || h >= p.num_heads || p.partition_len == 0 || p.num_splits == 0 ||
        p.kv.block_size == 0)
        return;
    const uint32_t s = decode_seqs[i];
    const uint32_t t = query_start_loc[s];
    const uint32_t ctx =
        uint32_t(min(uint64_t(seq_lens[s]), uint64_t(p.max_blocks_per_seq) * p.kv.block_size));
    const uint32_t keys = ctx - window_start(ctx, p.window);
    const uint32_t used = min(p.num_splits, (keys + p.partition_len - 1) / p.partition_len);
    const uint64_t slot0 = (uint64_t(i) * p.num_heads + h) * p.num_splits;
    float mm = im::neg_inf();
    for (uint32_t z = 0; z < used; ++z) mm = fmaxf(mm, part_ml[(slot0 + z) * 2]);
    float ll = 0.f;
    for (uint32_t z = 0; z < used; ++z) {
        const float mz = part_ml[(slot0 + z) * 2];
        ll += mz == im::neg_inf() ? 0.f : part_ml[(slot0 + z) * 2 + 1] * exp2f(mz - mm);
    }
    const float inv = ll > 0.f ? 1.f / ll : 0.f;
    T* o = out + uint64_t(t) * p.out_stride + uint64_t(h) * d_all;
    for (uint32_t d = threadIdx.x; d < d_all; d += blockDim.x) {
        float sum = 0.f;
        for (uint32_t z = 0; z < used; ++z) {
            const float mz = part_ml[(slot0 + z) * 2];
            if (mz != im::neg_inf()) sum += part_acc[(slot0 + z) * d_all + d] * exp2f(mz - mm);
        }
        o[d] = im::from_float(sum * inv);
    }
}
