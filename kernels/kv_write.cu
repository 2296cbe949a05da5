// kv_write.cu — write the new tokens' K and V from the fused QKV rows into the paged KV cache.
//
// What it computes (CPU reference: src/backend/cpu/kv_write.rs). For each token t with
// slot = slot_mapping[t] (slot = block * block_size + offset):
//     k_cache[slot] = qkv[t, q_size           .. q_size + kv_size]
//     v_cache[slot] = qkv[t, q_size + kv_size .. q_size + 2 kv_size]
// with q_size = num_heads * head_dim, kv_size = num_kv_heads * head_dim. A slot >= num_blocks *
// block_size (e.g. IM_PAD_SLOT) marks a padding token and writes nothing.
//
// Layouts (row-major, T = compute dtype; see params.h for the cache layout and why):
//   qkv:          [num_tokens, qkv_stride]  (Q | K | V heads, each head_dim wide)
//   k_cache:      [num_blocks, block_size, num_kv_heads, head_dim]  (a slot is [num_kv_heads, head_dim])
//   v_cache:      same as k_cache
//   slot_mapping: uint32 [num_tokens]
//
// Algorithm: one block per token (grid-stride over tokens), IM_ROW_THREADS threads. In the NHD layout
// a token's K for all KV heads is kv_size contiguous elements, as it sits in the QKV row, so the write
// is a straight copy of 2 kv_size elements: 16-byte vectors when head_dim and qkv_stride are
// multiples of IM_VEC and the pointers are aligned, else element by element. No conversion, no
// shared memory.
//
// Roofline (s = sizeof(T)): 4 num_tokens kv_size s bytes (read K, V; write K, V), no FLOPs. A decode
// step of 64 tokens with 8 KV heads of 128 in bf16 moves 0.5 MiB per layer: launch-latency bound.
#include "common.cuh"

namespace {

template <int W>
__device__ __forceinline__ void write_kv_token(T* __restrict__ k_dst, T* __restrict__ v_dst,
                                               const T* __restrict__ k_src,
                                               const T* __restrict__ v_src, uint32_t kv_size) {
    const uint32_t n = kv_size / W;
    // Items 0..n copy K, n..2n copy V: one loop keeps all threads busy when kv_size is small.
    for (uint32_t i = threadIdx.x; i < 2 * n; i += blockDim.x) {
        if (i < n)
            im::copy<W>(k_dst + i * W, k_src + i * W);
        else
            im::copy<W>(v_dst + (i - n) * W, v_src + (i - n) * W);
    }
}

}  // namespace

extern "C" __global__ void write_kv(
    T* __restrict__ k_cache,                    // [num_blocks, block_size, num_kv_heads, head_dim]
    T* __restrict__ v_cache,                    // [num_blocks, block_size, num_kv_heads, head_dim]
    const T* __restrict__ qkv,                  // [num_tokens, qkv_stride]
    const uint32_t* __restrict__ slot_mapping,  // [num_tokens]
    KvWriteParams p) {
    const uint32_t kv_size = p.kv.num_kv_heads * p.kv.head_dim;
    const uint32_t q_size = p.num_heads * p.kv.head_dim;
    const uint64_t num_slots = uint64_t(p.kv.num_blocks) * p.kv.block_size;
    const bool vec = p.kv.head_dim % im::VEC == 0 && p.qkv_stride % im::VEC == 0 &&
                     im::aligned16(k_cache) && im::aligned16(v_cache) && im::aligned16(qkv);
    for (uint32_t t = blockIdx.x; t < p.num_tokens; t += gridDim.x) {
        const uint32_t slot = slot_mapping[t];
        if (slot >= num_slots) continue;  // padding token (uniform across the block)
        const T* k_src = qkv + uint64_t(t) * p.qkv_stride + q_size;
        const T* v_src = k_src + kv_size;
        const uint64_t dst = uint64_t(slot) * kv_size;
        if (vec)
            write_kv_token<im::VEC>(k_cache + dst, v_cache + dst, k_src, v_src, kv_size);
        else
            write_kv_token<1>(k_cache + dst, v_cache + dst, k_src, v_src, kv_size);
    }
}
