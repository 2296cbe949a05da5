// norm.cu — LayerNorm, RMSNorm, fused residual-add + RMSNorm, OLMo 2's QK RMSNorm, and in-place add.
//
// What it computes (per row r, f32 math; CPU reference: src/backend/cpu/norm.rs):
//   layernorm:    out[r] = (x[r] - mean) / sqrt(var + eps) * weight + bias    (var: biased, two-pass)
//   rmsnorm:      out[r] = weight * (x[r] / sqrt(mean(x[r]^2) + eps))
//   add_rmsnorm:  residual[r] += delta[r] (rounded to T and stored); out[r] = rmsnorm(residual[r])
//   qk_rmsnorm:   in place, per row r of qkv: q[r] = rmsnorm(q[r]) with q_weight, k[r] = rmsnorm(k[r])
//                 with k_weight, where q[r] = qkv[r, 0:q_cols] and k[r] = qkv[r, q_cols:q_cols+k_cols]
//                 (OLMo 2 normalises the whole Q and the whole K projection, not each head)
//   add_inplace:  x[i] += y[i] over a flat array of len elements
//
// Layouts (row-major, T = compute dtype):
//   x, out, residual, delta: [rows, cols];  weight, bias: [cols];  add_inplace x, y: [len]
//   qk_rmsnorm: qkv [rows, q_cols + 2 k_cols] (V untouched);  q_weight [q_cols];  k_weight [k_cols]
//
// Algorithm: one block per row (grid-stride over rows, so any grid size works), IM_ROW_THREADS
// threads. Each thread walks the row in 16-byte vectors (IM_VEC elements) when cols % IM_VEC == 0 and
// the pointers are 16-byte aligned, else element by element. Statistics are f32 block reductions
// (warp shuffles, one float per warp in shared memory — 128 bytes of shared memory, nothing else). The
// row is read again after the reduction instead of being kept in shared memory: the second read hits
// L1/L2 (a 4096-wide bf16 row is 8 KiB), so DRAM still sees each byte once and the kernel needs no
// dynamic shared memory sized by cols. layernorm centres before squaring (two passes, as the CPU
// reference), so a large mean costs no precision. add_rmsnorm accumulates the square of the value it
// stores (rounded to T), so out is exactly rmsnorm of the stored residual; each thread later re-reads
// only elements it wrote itself, so no barrier is needed between the two.
// qk_rmsnorm: one block per (row, Q or K) vector, grid-stride over the 2 rows of them; in place, each
// thread scales only the elements it read, so the only barrier is the reduction's.
// add_inplace: grid-stride over 16-byte vectors, scalar tail (IM_ELEMENTWISE_THREADS per block).
//
// Roofline (s = sizeof(T), N = rows * cols), all memory-bound (≈ 0.5–1.5 FLOP/byte for bf16):
//   layernorm:   DRAM ≈ 2 N s + 2 cols s bytes;  ≈ 8 N FLOPs
//   rmsnorm:     DRAM ≈ 2 N s + cols s bytes;    ≈ 4 N FLOPs
//   add_rmsnorm: DRAM ≈ 4 N s + cols s bytes (read residual, delta; write residual, out); ≈ 5 N FLOPs
//   qk_rmsnorm:  DRAM ≈ 2 rows (q_cols + k_cols) s + (q_cols + k_cols) s bytes; ≈ 4 rows (q_cols + k_cols) FLOPs
//   add_inplace: DRAM = 3 len s bytes; len FLOPs
// Large batches should reach most of DRAM bandwidth; a decode step (rows = batch size, a handful) is
// bound by launch latency and one SM per row, a few microseconds.
#include "common.cuh"

namespace {

template <int W>
__device__ __forceinline__ void layernorm_row(T* __restrict__ out, const T* __restrict__ x,
                                              const T* __restrict__ weight,
                                              const T* __restrict__ bias, uint32_t cols, float eps) {
    const uint32_t n = cols / W;
    float sum = 0.f;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v[W];
        im::load<W>(x + i * W, v);
#pragma unroll
        for (int e = 0; e < W; ++e) sum += v[e];
    }
    const float mean = im::block_sum(sum) / float(cols);

    float sq = 0.f;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v[W];
        im::load<W>(x + i * W, v);
#pragma unroll
        for (int e = 0; e < W; ++e) {
            const float d = v[e] - mean;
            sq += d * d;
        }
    }
    const float inv = rsqrtf(im::block_sum(sq) / float(cols) + eps);

    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v[W], w[W], b[W];
        im::load<W>(x + i * W, v);
        im::load<W>(weight + i * W, w);
        im::load<W>(bias + i * W, b);
#pragma unroll
        for (int e = 0; e < W; ++e) v[e] = (v[e] - mean) * inv * w[e] + b[e];
        im::store<W>(out + i * W, v);
    }
}

// out = weight * (x * inv_rms), given the row's sum of squares.
template <int W>
__device__ __forceinline__ void rms_scale_row(T* __restrict__ out, const T* __restrict__ x,
                                              const T* __restrict__ weight, uint32_t cols,
                                              float sum_sq, float eps) {
    const uint32_t n = cols / W;
    const float inv = rsqrtf(im::block_sum(sum_sq) / float(cols) + eps);
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v[W], w[W];
        im::load<W>(x + i * W, v);
        im::load<W>(weight + i * W, w);
#pragma unroll
        for (int e = 0; e < W; ++e) v[e] = w[e] * (v[e] * inv);
        im::store<W>(out + i * W, v);
    }
}

// This thread's share of the row's sum of squares (its vectors i = threadIdx.x, + blockDim.x, ...).
template <int W>
__device__ __forceinline__ float thread_sum_squares(const T* x, uint32_t cols) {
    float sq = 0.f;
    for (uint32_t i = threadIdx.x; i < cols / W; i += blockDim.x) {
        float v[W];
        im::load<W>(x + i * W, v);
#pragma unroll
        for (int e = 0; e < W; ++e) sq += v[e] * v[e];
    }
    return sq;
}

template <int W>
__device__ __forceinline__ void rmsnorm_row(T* __restrict__ out, const T* __restrict__ x,
                                            const T* __restrict__ weight, uint32_t cols,
                                            float eps) {
    rms_scale_row<W>(out, x, weight, cols, thread_sum_squares<W>(x, cols), eps);
}

template <int W>
__device__ __forceinline__ void add_rmsnorm_row(T* __restrict__ residual,
                                                const T* __restrict__ delta, T* __restrict__ out,
                                                const T* __restrict__ weight, uint32_t cols,
                                                float eps) {
    const uint32_t n = cols / W;
    float sq = 0.f;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        float r[W], d[W];
        im::load<W>(residual + i * W, r);
        im::load<W>(delta + i * W, d);
#pragma unroll
        for (int e = 0; e < W; ++e) {
            // Square what is stored (rounded to T), so out = rmsnorm(stored residual) exactly.
            r[e] = im::to_float(im::from_float(r[e] + d[e]));
            sq += r[e] * r[e];
        }
        im::store<W>(residual + i * W, r);
    }
    // The same thread re-reads the same elements of residual: no barrier needed.
    rms_scale_row<W>(out, residual, weight, cols, sq, eps);
}

// x = weight * (x * inv_rms), in place over one vector of cols elements (qk_rmsnorm).
// (rms_scale_row's loop without its __restrict__ out / x, which alias here)
template <int W>
__device__ __forceinline__ void rmsnorm_inplace(T* x, const T* __restrict__ weight, uint32_t cols,
                                                float eps) {
    const uint32_t n = cols / W;
    const float inv = rsqrtf(im::block_sum(thread_sum_squares<W>(x, cols)) / float(cols) + eps);
    // each thread rewrites only the vectors it read above
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v[W], w[W];
        im::load<W>(x + i * W, v);
        im::load<W>(weight + i * W, w);
#pragma unroll
        for (int e = 0; e < W; ++e) v[e] = w[e] * (v[e] * inv);
        im::store<W>(x + i * W, v);
    }
}

}  // namespace

extern "C" __global__ void layernorm(T* __restrict__ out,           // [rows, cols]
                                     const T* __restrict__ x,       // [rows, cols]
                                     const T* __restrict__ weight,  // [cols]
                                     const T* __restrict__ bias,    // [cols]
                                     uint32_t rows, uint32_t cols, float eps) {
    const bool vec = cols % im::VEC == 0 && im::aligned16(out) && im::aligned16(x) &&
                     im::aligned16(weight) && im::aligned16(bias);
    for (uint32_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint64_t off = uint64_t(r) * cols;
        if (vec)
            layernorm_row<im::VEC>(out + off, x + off, weight, bias, cols, eps);
        else
            layernorm_row<1>(out + off, x + off, weight, bias, cols, eps);
    }
}

extern "C" __global__ void rmsnorm(T* __restrict__ out,           // [rows, cols]
                                   const T* __restrict__ x,       // [rows, cols]
                                   const T* __restrict__ weight,  // [cols]
                                   uint32_t rows, uint32_t cols, float eps) {
    const bool vec =
        cols % im::VEC == 0 && im::aligned16(out) && im::aligned16(x) && im::aligned16(weight);
    for (uint32_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint64_t off = uint64_t(r) * cols;
        if (vec)
            rmsnorm_row<im::VEC>(out + off, x + off, weight, cols, eps);
        else
            rmsnorm_row<1>(out + off, x + off, weight, cols, eps);
    }
}

extern "C" __global__ void add_rmsnorm(T* __restrict__ residual,      // [rows, cols], updated
                                       const T* __restrict__ delta,   // [rows, cols]
                                       T* __restrict__ out,           // [rows, cols]
                                       const T* __restrict__ weight,  // [cols]
                                       uint32_t rows, uint32_t cols, float eps) {
    const bool vec = cols % im::VEC == 0 && im::aligned16(residual) && im::aligned16(delta) &&
                     im::aligned16(out) && im::aligned16(weight);
    for (uint32_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint64_t off = uint64_t(r) * cols;
        if (vec)
            add_rmsnorm_row<im::VEC>(residual + off, delta + off, out + off, weight, cols, eps);
        else
            add_rmsnorm_row<1>(residual + off, delta + off, out + off, weight, cols, eps);
    }
}

extern "C" __global__ void qk_rmsnorm(T* qkv,                          // [rows, q_cols + 2 k_cols]
                                      const T* __restrict__ q_weight,  // [q_cols]
                                      const T* __restrict__ k_weight,  // [k_cols]
                                      uint32_t rows, uint32_t q_cols, uint32_t k_cols, float eps) {
    const uint64_t width = uint64_t(q_cols) + 2ull * k_cols;
    // block-uniform: every thread of a block takes the same branch, as block_sum requires
    for (uint32_t job = blockIdx.x; job < 2u * rows; job += gridDim.x) {
        const bool is_k = job & 1u;
        T* x = qkv + uint64_t(job >> 1) * width + (is_k ? q_cols : 0u);
        const T* w = is_k ? k_weight : q_weight;
        const uint32_t cols = is_k ? k_cols : q_cols;
        if (cols % im::VEC == 0 && im::aligned16(x) && im::aligned16(w))
            rmsnorm_inplace<im::VEC>(x, w, cols, eps);
        else
            rmsnorm_inplace<1>(x, w, cols, eps);
    }
}

extern "C" __global__ void add_inplace(T* __restrict__ x,        // [len], updated
                                       const T* __restrict__ y,  // [len]
                                       uint64_t len) {
    const uint64_t start = im::grid_thread(), stride = im::grid_threads();
    uint64_t done = 0;  // elements covered by the vector loop
    if (im::aligned16(x) && im::aligned16(y)) {
        const uint64_t nvec = len / im::VEC;
        for (uint64_t i = start; i < nvec; i += stride) {
            float a[im::VEC], b[im::VEC];
            im::load<im::VEC>(x + i * im::VEC, a);
            im::load<im::VEC>(y + i * im::VEC, b);
#pragma unroll
            for (int e = 0; e < im::VEC; ++e) a[e] += b[e];
            im::store<im::VEC>(x + i * im::VEC, a);
        }
        done = nvec * im::VEC;
    }
    for (uint64_t i = done + start; i < len; i += stride)
        x[i] = im::from_float(im::to_float(x[i]) + im::to_float(y[i]));
}
