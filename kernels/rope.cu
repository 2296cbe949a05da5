// rope.cu — rotary position embedding, rotate-half form (HF Llama / GPT-NeoX), in place on the Q and
// K heads of the fused QKV rows; qk_norm_rope fuses Qwen3's per-head RMSNorm of Q and K into it.
//
// What it computes (CPU reference: src/backend/cpu/rope.rs). For token t at position p = positions[t],
// each of the first num_rot_heads heads (the num_heads Q heads then the num_kv_heads K heads; the V
// heads after them are untouched) and each i < rotary_dim / 2, with half = rotary_dim / 2:
//     x1 = head[i], x2 = head[i + half], c = cos_sin[p][i], s = cos_sin[p][half + i]
//     head[i]        = x1 * c - x2 * s
//     head[i + half] = x2 * c + x1 * s
// rotary_dim = head_dim rotates the whole head; a smaller one (Phi-3's partial_rotary_factor,
// Phi-4-mini's 96 of 128) leaves head[rotary_dim ..] as it is.
//
// Layouts (row-major, T = compute dtype):
//   qkv:       [num_tokens, qkv_stride], heads of head_dim from column 0: Q heads, K heads, V heads
//   cos_sin:   [max_positions, rotary_dim]: cos(p * inv_freq[i]) in columns 0..half, sin in half..rotary_dim
//   positions: uint32 [num_tokens]
//
// Algorithm: one block per token (grid-stride over tokens), IM_ROW_THREADS threads over the
// (head, chunk of i) work items of the row: a thread loads W consecutive x1, the W matching x2, cos
// and sin, rotates them in f32 and stores both halves. W = IM_VEC (16-byte vectors) when half and
// head_dim are multiples of IM_VEC and the pointers and row stride are 16-byte aligned, else W = 1.
// The cos/sin row is re-read per head from L1 (it is rotary_dim elements); no shared memory. Tokens whose position is
// outside the table are left unrotated (the host validates positions beforehand).
//
// Roofline (s = sizeof(T), R = num_rot_heads, r = rotary_dim): per call 2 num_tokens R r s bytes of
// qkv (read + write; the unrotated dimensions are not touched) plus num_tokens r s of cos/sin;
// 3 num_tokens R r FLOPs (6 per pair).
// Memory-bound; a few microseconds for a decode batch.
//
// qk_norm_rope (Qwen3: q_norm / k_norm, then RoPE over the whole head: rotary_dim = head_dim, which
// the host checks; CPU reference: qk_norm_rope in src/backend/cpu/rope.rs). Per head h < num_rot_heads
// of token t, w = q_norm for the first
// num_q_heads heads, k_norm for the K heads after them:
//     inv = 1 / sqrt(mean_i(head[i]^2) + eps)         (f32, over the head's head_dim elements)
//     x1 = w[i] * (head[i] * inv), x2 = w[i + half] * (head[i + half] * inv), then rotated as above
//   q_norm, k_norm: [head_dim]
// Algorithm: one block per token (grid-stride), one warp per head (the block's warps stride over the
// row's heads). Pass 1: each lane sums the squares of its W-element vectors of the head, a warp
// shuffle reduction gives the head's sum (no shared memory, no barrier). Pass 2: the lanes re-read
// the head (an L1 hit: head_dim elements), normalise, scale, rotate and store each (i, i + half)
// pair once, so the normalised value is rounded to T only once, after the rotation (HF rounds it
// before the weight and again after RoPE: bf16 differences of an ulp, inside the stated tolerances).
// W = IM_VEC under rope's conditions plus 16-byte aligned norm weights, else 1. Fusing saves a pass
// over Q and K and a launch per layer against a separate per-head norm kernel.
// Roofline: rope's bytes plus 2 head_dim s of weights; about 3 more FLOPs per element. A decode step
// runs one block per token with at most (head_dim / 2W) active lanes per warp in pass 2: launch-bound,
// a few microseconds, as rope.
#include "common.cuh"

namespace {

template <int W>
__device__ __forceinline__ void rope_row(T* __restrict__ row, const T* __restrict__ cs,
                                         uint32_t num_rot_heads, uint32_t head_dim,
                                         uint32_t rotary_dim) {
    const uint32_t half = rotary_dim / 2;
    const uint32_t chunks = half / W;  // work items per head
    const uint32_t items = num_rot_heads * chunks;
    for (uint32_t k = threadIdx.x; k < items; k += blockDim.x) {
        const uint32_t h = k / chunks, i = (k % chunks) * W;
        T* head = row + h * head_dim;
        float x1[W], x2[W], c[W], s[W];
        im::load<W>(head + i, x1);
        im::load<W>(head + half + i, x2);
        im::load<W>(cs + i, c);
        im::load<W>(cs + half + i, s);
        float o1[W], o2[W];
#pragma unroll
        for (int e = 0; e < W; ++e) {
            o1[e] = x1[e] * c[e] - x2[e] * s[e];
            o2[e] = x2[e] * c[e] + x1[e] * s[e];
        }
        im::store<W>(head + i, o1);
        im::store<W>(head + half + i, o2);
    }
}

template <int W>
__device__ __forceinline__ void qk_norm_rope_head(T* __restrict__ head, const T* __restrict__ cs,
                                                  const T* __restrict__ weight, uint32_t head_dim,
                                                  float eps, uint32_t lane) {
    const uint32_t half = head_dim / 2;
    float sq = 0.f;
    for (uint32_t i = lane * W; i < head_dim; i += im::WARP * W) {
        float x[W];
        im::load<W>(head + i, x);
#pragma unroll
        for (int e = 0; e < W; ++e) sq += x[e] * x[e];
    }
    // every lane's reads are done before the shuffle returns, so pass 2 may overwrite the head
    const float inv = rsqrtf(im::warp_sum(sq) / float(head_dim) + eps);
    for (uint32_t i = lane * W; i < half; i += im::WARP * W) {
        float x1[W], x2[W], w1[W], w2[W], c[W], s[W];
        im::load<W>(head + i, x1);
        im::load<W>(head + half + i, x2);
        im::load<W>(weight + i, w1);
        im::load<W>(weight + half + i, w2);
        im::load<W>(cs + i, c);
        im::load<W>(cs + half + i, s);
        float o1[W], o2[W];
#pragma unroll
        for (int e = 0; e < W; ++e) {
            const float a = w1[e] * (x1[e] * inv), b = w2[e] * (x2[e] * inv);
            o1[e] = a * c[e] - b * s[e];
            o2[e] = b * c[e] + a * s[e];
        }
        im::store<W>(head + i, o1);
        im::store<W>(head + half + i, o2);
    }
}

}  // namespace

extern "C" __global__ void rope(T* __restrict__ qkv,                     // [num_tokens, qkv_stride], updated
                                const T* __restrict__ cos_sin,           // [max_positions, rotary_dim]
                                const uint32_t* __restrict__ positions,  // [num_tokens]
                                RopeParams p) {
    const uint32_t half = p.rotary_dim / 2;
    const bool vec = half % im::VEC == 0 && p.head_dim % im::VEC == 0 &&
                     p.qkv_stride % im::VEC == 0 && im::aligned16(qkv) && im::aligned16(cos_sin);
    for (uint32_t t = blockIdx.x; t < p.num_tokens; t += gridDim.x) {
        const uint32_t pos = positions[t];
        if (pos >= p.max_positions) continue;  // uniform across the block
        T* row = qkv + uint64_t(t) * p.qkv_stride;
        const T* cs = cos_sin + uint64_t(pos) * p.rotary_dim;
        if (vec)
            rope_row<im::VEC>(row, cs, p.num_rot_heads, p.head_dim, p.rotary_dim);
        else
            rope_row<1>(row, cs, p.num_rot_heads, p.head_dim, p.rotary_dim);
    }
}

extern "C" __global__ void qk_norm_rope(T* __restrict__ qkv,                     // [num_tokens, qkv_stride], updated
                                        const T* __restrict__ cos_sin,           // [max_positions, head_dim]
                                        const uint32_t* __restrict__ positions,  // [num_tokens]
                                        const T* __restrict__ q_norm,            // [head_dim]
                                        const T* __restrict__ k_norm,            // [head_dim]
                                        QkNormRopeParams p) {
    const RopeParams& r = p.rope;
    const uint32_t half = r.head_dim / 2;
    const bool vec = half % im::VEC == 0 && r.qkv_stride % im::VEC == 0 && im::aligned16(qkv) &&
                     im::aligned16(cos_sin) && im::aligned16(q_norm) && im::aligned16(k_norm);
    const uint32_t lane = threadIdx.x % im::WARP, warp = threadIdx.x / im::WARP;
    const uint32_t warps = blockDim.x / im::WARP;
    for (uint32_t t = blockIdx.x; t < r.num_tokens; t += gridDim.x) {
        const uint32_t pos = positions[t];
        if (pos >= r.max_positions) continue;  // uniform across the block
        T* row = qkv + uint64_t(t) * r.qkv_stride;
        const T* cs = cos_sin + uint64_t(pos) * r.head_dim;
        for (uint32_t h = warp; h < r.num_rot_heads; h += warps) {  // uniform across the warp
            T* head = row + uint64_t(h) * r.head_dim;
            const T* w = h < p.num_q_heads ? q_norm : k_norm;
            if (vec)
                qk_norm_rope_head<im::VEC>(head, cs, w, r.head_dim, p.eps, lane);
            else
                qk_norm_rope_head<1>(head, cs, w, r.head_dim, p.eps, lane);
        }
    }
}
