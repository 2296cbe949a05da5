// rope.cu — rotary position embedding, rotate-half form (HF Llama / GPT-NeoX), in place on the Q and
// K heads of the fused QKV rows.
//
// What it computes (CPU reference: src/backend/cpu/rope.rs). For token t at position p = positions[t],
// each of the first num_rot_heads heads (the num_heads Q heads then the num_kv_heads K heads; the V
// heads after them are untouched) and each i < head_dim / 2, with half = head_dim / 2:
//     x1 = head[i], x2 = head[i + half], c = cos_sin[p][i], s = cos_sin[p][half + i]
//     head[i]        = x1 * c - x2 * s
//     head[i + half] = x2 * c + x1 * s
//
// Layouts (row-major, T = compute dtype):
//   qkv:       [num_tokens, qkv_stride], heads of head_dim from column 0: Q heads, K heads, V heads
//   cos_sin:   [max_positions, head_dim]: cos(p * inv_freq[i]) in columns 0..half, sin in half..head_dim
//   positions: uint32 [num_tokens]
//
// Algorithm: one block per token (grid-stride over tokens), IM_ROW_THREADS threads over the
// (head, chunk of i) work items of the row: a thread loads W consecutive x1, the W matching x2, cos
// and sin, rotates them in f32 and stores both halves. W = IM_VEC (16-byte vectors) when half is a
// multiple of IM_VEC and the pointers and row stride are 16-byte aligned, else W = 1. The cos/sin row
// is re-read per head from L1 (it is head_dim elements); no shared memory. Tokens whose position is
// outside the table are left unrotated (the host validates positions beforehand).
//
// Roofline (s = sizeof(T), R = num_rot_heads): per call 2 num_tokens R head_dim s bytes of qkv
// (read + write) plus num_tokens head_dim s of cos/sin; 3 num_tokens R head_dim FLOPs (6 per pair).
// Memory-bound; a few microseconds for a decode batch.
#include "common.cuh"

namespace {

template <int W>
__device__ __forceinline__ void rope_row(T* __restrict__ row, const T* __restrict__ cs,
                                         uint32_t num_rot_heads, uint32_t head_dim) {
    const uint32_t half = head_dim / 2;
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

}  // namespace

extern "C" __global__ void rope(T* __restrict__ qkv,                     // [num_tokens, qkv_stride], updated
                                const T* __restrict__ cos_sin,           // [max_positions, head_dim]
                                const uint32_t* __restrict__ positions,  // [num_tokens]
                                RopeParams p) {
    const uint32_t half = p.head_dim / 2;
    const bool vec = half % im::VEC == 0 && p.qkv_stride % im::VEC == 0 && im::aligned16(qkv) &&
                     im::aligned16(cos_sin);
    for (uint32_t t = blockIdx.x; t < p.num_tokens; t += gridDim.x) {
        const uint32_t pos = positions[t];
        if (pos >= p.max_positions) continue;  // uniform across the block
        T* row = qkv + uint64_t(t) * p.qkv_stride;
        const T* cs = cos_sin + uint64_t(pos) * p.head_dim;
        if (vec)
            rope_row<im::VEC>(row, cs, p.num_rot_heads, p.head_dim);
        else
            rope_row<1>(row, cs, p.num_rot_heads, p.head_dim);
    }
}
