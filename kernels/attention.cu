// attention.cu — paged causal attention over a flattened variable-length batch: the plain reference
// variant (prefill and decode alike), the CUDA backend's `naive` attention variant. The optimised
// kernels of the `auto` variant are attention_prefill.cu (flash-style, tensor cores) and
// attention_decode.cu (split-KV); tests/cuda_kernels.rs checks all of them against the CPU reference,
// and docs/attention.md describes the variants.
//
// What it computes (CPU reference: src/backend/cpu/attention.rs). Sequence s owns batch rows
// query_start_loc[s] .. query_start_loc[s + 1]. For each such token t, at position p = positions[t],
// and each query head h, with KV head kvh = h / (num_heads / num_kv_heads) (GQA; MHA when equal):
//     score_j = scale * dot(q[t, h], K[s, j, kvh])          for keys j = lo ..= p (causal; at most
//                                                           seq_lens[s] keys)
//     out[t, h] = sum_j softmax(score)_j V[s, j, kvh]
// with lo = 0, or under a sliding window (p.window > 0) lo = max(0, p + 1 - window): the last
// `window` positions, the token's own included. With p.softcap > 0 (Gemma 2) each score becomes
// softcap * tanh(score / softcap) before the softmax; with p.alibi_max_bias > 0 (BLOOM, MPT) it then
// gains alibi_scale * slope(h) * (j - p) (ALiBi, params.h).
// where key j of sequence s is read through its block table: block = block_tables[s][j / block_size],
// offset j % block_size. The new tokens' K/V must already be in the cache (write_kv runs first).
//
// Layouts (row-major, T = compute dtype; cache layout and its reasons in params.h):
//   out:             [num_tokens, out_stride], head h at columns h * head_dim ..
//   qkv:             [num_tokens, q_stride], Q head h at columns h * head_dim .. (the fused QKV row)
//   k_cache/v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
//   query_start_loc: uint32 [num_seqs + 1];  seq_lens: uint32 [num_seqs];  positions: uint32 [num_tokens]
//   block_tables:    uint32 [num_seqs, max_blocks_per_seq]
//
// Algorithm: grid (num_tokens, num_heads), one block of IM_ATTN_THREADS threads per (token, head).
//  - The block finds its sequence by binary search in query_start_loc (no token->sequence array).
//  - Threads form groups of tpk = min(32, next_pow2(head_dim / IM_VEC)) lanes; a group handles one key
//    at a time, each lane a 16-byte vector (or two, for f32 with head_dim > 128) of the key's
//    head_dim contiguous elements — one head row is a few full cache lines in the NHD layout. The
//    query head sits in registers, as f32.
//  - Group g takes keys g, g + G, g + 2G, ... (G = blockDim / tpk groups). Dot products reduce inside
//    the group with xor shuffles; every group keeps an online softmax in f32 (running max m, running
//    sum l, accumulator acc[head_dim] spread over its lanes, rescaled by exp(m_old - m_new)).
//  - At the end the groups merge: block max of m, block sum of l * exp(m_g - M), and the rescaled
//    accumulators are summed through shared memory (IM_ATTN_THREADS * IM_ATTN_MAX_HEAD_DIM / 32
//    floats = 4 KiB; plus 256 bytes for the block max and sum). out = sum / L, rounded to T once.
//  Requirements (checked by the host; the kernel returns without writing when they fail):
//  head_dim % IM_VEC == 0, head_dim <= IM_ATTN_MAX_HEAD_DIM, num_heads % num_kv_heads == 0,
//  blockDim.x a multiple of 32 and <= IM_ATTN_THREADS. Keys whose block id is >= num_blocks are
//  skipped rather than read (the host validates block tables; this only prevents faults).
//
// Roofline (s = sizeof(T), d = head_dim, H = num_heads, L_t = keys of token t: its position + 1,
// at most the window):
//   bytes ≈ sum_t 2 H L_t d s (K and V, read once per query head: the GQA group re-reads its KV head,
//           mostly from L2) + 2 num_tokens H d s (q, out); FLOPs ≈ sum_t 4 H L_t d.
//   Decode (one token per sequence): about 1 FLOP per byte, memory-bound; the ideal reads each KV head
//   once (num_kv_heads instead of H), which the split-KV decode kernel is for. Prefill: O(L^2) work
//   per sequence on CUDA cores, far from tensor-core peak — the flash prefill kernel's job.
#include "common.cuh"

namespace {

// Accumulator floats per thread: a group of at most 32 lanes covers head_dim <= IM_ATTN_MAX_HEAD_DIM.
constexpr int ACC = IM_ATTN_MAX_HEAD_DIM / im::WARP;
// 16-byte vectors per lane per key (1 for bf16/f16; 2 for f32, whose vectors hold 4 elements).
constexpr int MAX_CHUNKS = ACC / im::VEC;
static_assert(MAX_CHUNKS >= 1 && ACC % im::VEC == 0, "IM_ATTN_MAX_HEAD_DIM too small for IM_VEC");

// Smallest power of two >= x, for 1 <= x <= 32.
__device__ __forceinline__ uint32_t next_pow2(uint32_t x) {
    return x <= 1 ? 1u : 1u << (32 - __clz(x - 1));
}

// The sequence that batch row t belongs to: the last s with query_start_loc[s] <= t (sequences with
// no new tokens have equal consecutive entries and are skipped over).
__device__ __forceinline__ uint32_t seq_of_token(const uint32_t* __restrict__ query_start_loc,
                                                 uint32_t num_seqs, uint32_t t) {
    uint32_t lo = 0, hi = num_seqs;  // query_start_loc[lo] <= t; treat query_start_loc[num_seqs] as > t
    while (hi - lo > 1) {
        const uint32_t mid = (lo + hi) / 2;
        if (query_start_loc[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(IM_ATTN_THREADS) paged_attention_naive(
    T* __restrict__ out,                           // [num_tokens, out_stride]
    const T* __restrict__ qkv,                     // [num_tokens, q_stride]
    const T* __restrict__ k_cache,                 // [num_blocks, block_size, num_kv_heads, head_dim]
    const T* __restrict__ v_cache,                 // [num_blocks, block_size, num_kv_heads, head_dim]
    const uint32_t* __restrict__ query_start_loc,  // [num_seqs + 1]
    const uint32_t* __restrict__ seq_lens,         // [num_seqs]
    const uint32_t* __restrict__ positions,        // [num_tokens]
    const uint32_t* __restrict__ block_tables,     // [num_seqs, max_blocks_per_seq]
    PagedAttentionParams p) {
    // Group g's rescaled accumulator at [g * head_dim, (g + 1) * head_dim); G * head_dim <= blockDim * ACC.
    __shared__ float partial[IM_ATTN_THREADS * ACC];

    const uint32_t t = blockIdx.x, h = blockIdx.y;
    const uint32_t d = p.kv.head_dim, nkv = p.kv.num_kv_heads, bs = p.kv.block_size;
    // Uniform per block: bad launch parameters write nothing rather than fault.
    if (t >= p.num_tokens || h >= p.num_heads || p.num_seqs == 0 || nkv == 0 || bs == 0 ||
        p.num_heads % nkv != 0 || d == 0 || d % im::VEC != 0 || d > IM_ATTN_MAX_HEAD_DIM ||
        blockDim.x > IM_ATTN_THREADS)
        return;
    const uint32_t kvh = h / (p.num_heads / nkv);

    const uint32_t s = seq_of_token(query_start_loc, p.num_seqs, t);
    const uint32_t* table = block_tables + uint64_t(s) * p.max_blocks_per_seq;
    const uint64_t pos = positions[t];
    uint64_t ctx = min(pos + 1, uint64_t(seq_lens[s]));  // keys lo .. ctx - 1
    ctx = min(ctx, uint64_t(p.max_blocks_per_seq) * bs);
    const uint64_t lo = p.window != 0 && pos + 1 > p.window ? pos + 1 - p.window : 0;
    const bool alibi = p.alibi_max_bias > 0.f;
    const float slope = alibi ? p.alibi_scale * im::alibi_slope(h, p.num_heads, p.alibi_max_bias) : 0.f;

    // Thread groups: tpk lanes per key, each lane owning vectors gl, gl + tpk, ... of the head row.
    const uint32_t vecs = d / im::VEC;
    const uint32_t tpk = vecs >= 32 ? 32 : next_pow2(vecs);
    const uint32_t groups = blockDim.x / tpk;
    const uint32_t g = threadIdx.x / tpk, gl = threadIdx.x % tpk;

    float q[MAX_CHUNKS][im::VEC];
    const T* q_head = qkv + uint64_t(t) * p.q_stride + uint64_t(h) * d;
#pragma unroll
    for (int c = 0; c < MAX_CHUNKS; ++c) {
        const uint32_t v = gl + c * tpk;
        if (v < vecs) {
            im::load<im::VEC>(q_head + v * im::VEC, q[c]);
        } else {
#pragma unroll
            for (int e = 0; e < im::VEC; ++e) q[c][e] = 0.f;
        }
    }

    float m = im::neg_inf(), l = 0.f;
    float acc[MAX_CHUNKS][im::VEC];
#pragma unroll
    for (int c = 0; c < MAX_CHUNKS; ++c)
#pragma unroll
        for (int e = 0; e < im::VEC; ++e) acc[c][e] = 0.f;

    // Every thread runs the same number of rounds, so the group shuffles see full warps.
    for (uint64_t base = lo; base < ctx; base += groups) {
        const uint64_t j = base + g;
        bool valid = false;
        uint64_t off = 0;  // element offset of (slot of key j, kvh, 0)
        if (j < ctx) {
            const uint32_t block = table[j / bs];
            valid = block < p.kv.num_blocks;
            off = ((uint64_t(block) * bs + j % bs) * nkv + kvh) * d;
        }
        float dot = 0.f;
        if (valid) {
#pragma unroll
            for (int c = 0; c < MAX_CHUNKS; ++c) {
                const uint32_t v = gl + c * tpk;
                if (v < vecs) {
                    float k[im::VEC];
                    im::load<im::VEC>(k_cache + off + v * im::VEC, k);
#pragma unroll
                    for (int e = 0; e < im::VEC; ++e) dot += q[c][e] * k[e];
                }
            }
        }
        dot = im::group_sum(dot, tpk);
        if (valid) {
            float score = dot * p.scale;
            if (p.softcap > 0.f) score = p.softcap * tanhf(score / p.softcap);
            if (alibi) score += slope * float(int64_t(j) - int64_t(pos));
            const float m_new = fmaxf(m, score);
            const float corr = expf(m - m_new);  // exp(-inf) = 0 on the group's first key
            const float w = expf(score - m_new);
            l = l * corr + w;
#pragma unroll
            for (int c = 0; c < MAX_CHUNKS; ++c) {
                const uint32_t v = gl + c * tpk;
                if (v < vecs) {
                    float vv[im::VEC];
                    im::load<im::VEC>(v_cache + off + v * im::VEC, vv);
#pragma unroll
                    for (int e = 0; e < im::VEC; ++e) acc[c][e] = acc[c][e] * corr + w * vv[e];
                }
            }
            m = m_new;
        }
    }

    // Merge the groups' softmax states (all lanes of a group hold the same m and l).
    const float m_all = im::block_max(m);
    const float f = m == im::neg_inf() ? 0.f : expf(m - m_all);
    const float l_all = im::block_sum(gl == 0 ? l * f : 0.f);
#pragma unroll
    for (int c = 0; c < MAX_CHUNKS; ++c) {
        const uint32_t v = gl + c * tpk;
        if (v < vecs) {
#pragma unroll
            for (int e = 0; e < im::VEC; ++e) partial[g * d + v * im::VEC + e] = acc[c][e] * f;
        }
    }
    __syncthreads();

    // l_all >= 1 whenever a key was read (the top key adds exp(0)); 0 keys give a zero row.
    const float inv = l_all > 0.f ? 1.f / l_all : 0.f;
    T* o = out + uint64_t(t) * p.out_stride + uint64_t(h) * d;
    for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
        float sum = 0.f;
        for (uint32_t gg = 0; gg < groups; ++gg) sum += partial[gg * d + i];
        o[i] = im::from_float(sum * inv);
    }
}
