// embedding.cu — token embedding lookup (plus GPT-2's learned positions), row gathers (the rows
// whose logits are wanted; a mixture-of-experts layer's rows in expert order) and the weighted sum
// of each token's expert outputs.
//
// What it computes (CPU references: src/backend/cpu/embedding.rs, src/backend/cpu/moe.rs):
//   embedding:          out[t] = table[token_ids[t]] (+ pos_table[positions[t]] when pos_table != NULL)
//   gather_logit_rows:  out[i] = x[indices[i]]
//   moe_combine:        out[t] = Σ_j weights[t·top_k + j] · rows[slot_of[t·top_k + j]], j in order,
//                       summed in f32 and rounded once
//
// Layouts (row-major, T = compute dtype):
//   embedding:          out [num_tokens, hidden]; table [vocab, hidden];
//                       pos_table [max_positions, hidden]; token_ids, positions: uint32 [num_tokens]
//   gather_logit_rows:  out [num_rows, cols]; x [num_tokens, cols]; indices: uint32 [num_rows]
//   moe_combine:        out [num_tokens, hidden]; rows [num_rows, hidden] (each choice's expert
//                       output, in expert order); slot_of: uint32, weights: f32 [num_tokens, top_k]
//
// Algorithm: one block per output row (grid-stride over rows), IM_ROW_THREADS threads copying the
// row in 16-byte vectors (when hidden/cols is a multiple of IM_VEC and the pointers are aligned) or
// element by element. The position add is done in f32 and rounded once. No shared memory.
// Bad indices cannot fault: a token id >= vocab yields a zero row (position term included), a
// position >= max_positions no position term, a gather index >= num_tokens a zero row. The host
// validates ids first (BatchMeta::validate, the CPU backend's checks); these guards only keep a bad
// batch from touching foreign memory.
//
// moe_combine's slot >= num_rows skips that choice (the host checks the plan: MoeRouting::check).
//
// Roofline (s = sizeof(T)): pure copies, memory-bound, no FLOPs to speak of.
//   embedding:          2 num_tokens hidden s bytes (3 with positions) + 8 num_tokens; hidden adds
//   gather_logit_rows:  2 num_rows cols s bytes
//   moe_combine:        (top_k + 1) num_tokens hidden s bytes + 8 top_k num_tokens; 2 top_k
//                       num_tokens hidden FLOPs
// Both are tiny next to the GEMMs (a decode step moves a few KiB per token).
#include "common.cuh"

namespace {

template <int W>
__device__ __forceinline__ void embed_row(T* __restrict__ out, const T* __restrict__ row,
                                          const T* __restrict__ pos_row, uint32_t hidden) {
    const uint32_t n = hidden / W;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        if (row == nullptr) {
            const float zero[W] = {};
            im::store<W>(out + i * W, zero);
        } else if (pos_row == nullptr) {
            im::copy<W>(out + i * W, row + i * W);
        } else {
            float a[W], b[W];
            im::load<W>(row + i * W, a);
            im::load<W>(pos_row + i * W, b);
#pragma unroll
            for (int e = 0; e < W; ++e) a[e] += b[e];
            im::store<W>(out + i * W, a);
        }
    }
}

// One token's weighted sum of its top_k expert outputs, W elements per thread and step.
template <int W>
__device__ __forceinline__ void combine_row(T* __restrict__ out, const T* __restrict__ rows,
                                            const uint32_t* __restrict__ slots,
                                            const float* __restrict__ weights, uint32_t top_k,
                                            uint32_t num_rows, uint32_t hidden) {
    const uint32_t n = hidden / W;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        float acc[W] = {};
        for (uint32_t j = 0; j < top_k; ++j) {
            const uint32_t slot = slots[j];
            if (slot >= num_rows) continue;
            float v[W];
            im::load<W>(rows + uint64_t(slot) * hidden + i * W, v);
            const float w = weights[j];
#pragma unroll
            for (int e = 0; e < W; ++e) acc[e] += w * v[e];
        }
        im::store<W>(out + i * W, acc);
    }
}

}  // namespace

extern "C" __global__ void embedding(T* __restrict__ out,                 // [num_tokens, hidden]
                                     const T* __restrict__ table,         // [vocab, hidden]
                                     const T* __restrict__ pos_table,     // [max_positions, hidden] or NULL
                                     const uint32_t* __restrict__ token_ids,  // [num_tokens]
                                     const uint32_t* __restrict__ positions,  // [num_tokens]
                                     uint32_t num_tokens, uint32_t hidden, uint32_t vocab,
                                     uint32_t max_positions) {
    const bool vec = hidden % im::VEC == 0 && im::aligned16(out) && im::aligned16(table) &&
                     (pos_table == nullptr || im::aligned16(pos_table));
    for (uint32_t t = blockIdx.x; t < num_tokens; t += gridDim.x) {
        const uint32_t id = token_ids[t];
        const T* row = id < vocab ? table + uint64_t(id) * hidden : nullptr;
        const T* pos_row = nullptr;
        if (pos_table != nullptr) {
            const uint32_t p = positions[t];
            if (p < max_positions) pos_row = pos_table + uint64_t(p) * hidden;
        }
        T* dst = out + uint64_t(t) * hidden;
        if (vec)
            embed_row<im::VEC>(dst, row, pos_row, hidden);
        else
            embed_row<1>(dst, row, pos_row, hidden);
    }
}

extern "C" __global__ void gather_logit_rows(T* __restrict__ out,                   // [num_rows, cols]
                                             const T* __restrict__ x,               // [num_tokens, cols]
                                             const uint32_t* __restrict__ indices,  // [num_rows]
                                             uint32_t num_rows, uint32_t num_tokens, uint32_t cols) {
    const bool vec = cols % im::VEC == 0 && im::aligned16(out) && im::aligned16(x);
    for (uint32_t i = blockIdx.x; i < num_rows; i += gridDim.x) {
        const uint32_t r = indices[i];
        const T* src = r < num_tokens ? x + uint64_t(r) * cols : nullptr;
        T* dst = out + uint64_t(i) * cols;
        if (vec)
            embed_row<im::VEC>(dst, src, nullptr, cols);
        else
            embed_row<1>(dst, src, nullptr, cols);
    }
}

extern "C" __global__ void moe_combine(T* __restrict__ out,                   // [num_tokens, hidden]
                                       const T* __restrict__ rows,            // [num_rows, hidden]
                                       const uint32_t* __restrict__ slot_of,  // [num_tokens, top_k]
                                       const float* __restrict__ weights,     // [num_tokens, top_k]
                                       uint32_t num_tokens, uint32_t top_k, uint32_t num_rows,
                                       uint32_t hidden) {
    const bool vec = hidden % im::VEC == 0 && im::aligned16(out) && im::aligned16(rows);
    for (uint32_t t = blockIdx.x; t < num_tokens; t += gridDim.x) {
        const uint32_t* slots = slot_of + uint64_t(t) * top_k;
        const float* w = weights + uint64_t(t) * top_k;
        T* dst = out + uint64_t(t) * hidden;
        if (vec)
            combine_row<im::VEC>(dst, rows, slots, w, top_k, num_rows, hidden);
        else
            combine_row<1>(dst, rows, slots, w, top_k, num_rows, hidden);
    }
}
