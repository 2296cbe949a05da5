// common.cuh — what every kernel file shares: the compute dtype, conversions, 16-byte vector access,
// warp and block reductions.
//
// ---- Dtype scheme --------------------------------------------------------------------------------
// Each kernel file is compiled once per compute dtype, by NVRTC at run time, with
//
//     -DIM_DTYPE=1   bf16   (T = __nv_bfloat16)        ids defined in params.h:
//     -DIM_DTYPE=2   f16    (T = __half)                 IM_DTYPE_BF16 / IM_DTYPE_F16 / IM_DTYPE_F32
//     -DIM_DTYPE=3   f32    (T = float)
//
// and exports `extern "C" __global__` kernels whose names carry no dtype (`rmsnorm`, not
// `rmsnorm_bf16`): the module compiled for a dtype is the namespace. The engine runs one dtype at a
// time, so it compiles (and caches) only the modules of that dtype; kernel code is written once
// against the typedef `T`. Tensors of the compute dtype are `T*`; everything that is not (token ids,
// positions, slot mappings, block tables: uint32; sampling logits: f32) has its own fixed type.
//
// ---- Numerics -------------------------------------------------------------------------------------
// Every kernel loads T, computes and accumulates in f32, and rounds to T once when it stores (as the
// f32 CPU reference in src/backend/cpu does throughout). Reductions use a fixed order (butterfly
// shuffles, then a fixed tree over warps), so a result does not change from run to run for a given
// launch configuration.
//
// ---- Vector access --------------------------------------------------------------------------------
// IM_VEC = 16 / sizeof(T) elements (8 for bf16/f16, 4 for f32) make one 16-byte load or store
// (ld.global.v4.b32). A kernel takes its vector path when the row length and pointers allow it (a
// uniform runtime test) and a scalar path otherwise, both from one template over the width W.
//
// ---- Requirements on launches ---------------------------------------------------------------------
// Block sizes are multiples of 32 (the reductions shuffle with full-warp masks), at most 1024; the
// recommended ones are in params.h.
//
// No host code and no standard headers: NVRTC compiles this with -I <CUDA include dir> for
// cuda_fp16.h / cuda_bf16.h and -I kernels.
#pragma once

#include "params.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifndef IM_DTYPE
#error "compile with -DIM_DTYPE=1 (bf16), 2 (f16) or 3 (f32); see params.h"
#endif

#if IM_DTYPE == IM_DTYPE_BF16
typedef __nv_bfloat16 T;
#elif IM_DTYPE == IM_DTYPE_F16
typedef __half T;
#elif IM_DTYPE == IM_DTYPE_F32
typedef float T;
#else
#error "unknown IM_DTYPE; see params.h"
#endif

namespace im {

// Elements of T in one 16-byte vector.
constexpr int VEC = 16 / int(sizeof(T));
constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int WARP = 32;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// ALiBi slope of query head h of n (params.h): c = 2^floor(log2 n) heads take 2^(-max_bias (h + 1) / c),
// the rest (n not a power of two) the odd steps between them, 2^(-max_bias (2 (h - c) + 1) / (2 c)).
__device__ __forceinline__ float alibi_slope(uint32_t h, uint32_t n, float max_bias) {
    const uint32_t c = 1u << (31 - __clz(n));
    const float e = h < c ? float(h + 1) / float(c) : float(2 * (h - c) + 1) / float(2 * c);
    return exp2f(-max_bias * e);
}

// ---- conversions -----------------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round-to-nearest-even conversion to the compute dtype.
__device__ __forceinline__ T from_float(float x) {
#if IM_DTYPE == IM_DTYPE_BF16
    return __float2bfloat16_rn(x);
#elif IM_DTYPE == IM_DTYPE_F16
    return __float2half_rn(x);
#else
    return x;
#endif
}

// ---- W-wide access: W == VEC is one 16-byte transaction, W == 1 is scalar -------------------------

template <int W>
struct alignas(W * sizeof(T)) Pack {
    T v[W];
};

// f[0..W) = p[0..W) as f32. p must be aligned to W * sizeof(T) bytes.
template <int W>
__device__ __forceinline__ void load(const T* __restrict__ p, float (&f)[W]) {
    const Pack<W> pk = *reinterpret_cast<const Pack<W>*>(p);
#pragma unroll
    for (int i = 0; i < W; ++i) f[i] = to_float(pk.v[i]);
}

// p[0..W) = f[0..W) rounded to T. p must be aligned to W * sizeof(T) bytes.
template <int W>
__device__ __forceinline__ void store(T* __restrict__ p, const float (&f)[W]) {
    Pack<W> pk;
#pragma unroll
    for (int i = 0; i < W; ++i) pk.v[i] = from_float(f[i]);
    *reinterpret_cast<Pack<W>*>(p) = pk;
}

// Copy W elements without conversion.
template <int W>
__device__ __forceinline__ void copy(T* __restrict__ dst, const T* __restrict__ src) {
    *reinterpret_cast<Pack<W>*>(dst) = *reinterpret_cast<const Pack<W>*>(src);
}

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

// ---- warp reductions (every lane gets the result) --------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ unsigned warp_max_u32(unsigned v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ unsigned warp_min_u32(unsigned v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum within aligned groups of `width` lanes (a power of two <= 32). All 32 lanes must call it.
__device__ __forceinline__ float group_sum(float v, unsigned width) {
    for (unsigned o = width / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// ---- block reductions (every thread gets the result; all threads of the block must call) ----------
// Each warp reduces by shuffles, lane 0 parks the warp's value in shared memory, then every warp
// reduces the parked values itself, so no third barrier and no broadcast slot are needed. The leading
// barrier lets the same function be called back to back.

__device__ __forceinline__ float block_sum(float v) {
    __shared__ float parked[WARP];
    const unsigned lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const unsigned num_warps = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) parked[warp] = v;
    __syncthreads();
    return warp_sum(lane < num_warps ? parked[lane] : 0.f);
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float parked[WARP];
    const unsigned lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const unsigned num_warps = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) parked[warp] = v;
    __syncthreads();
    return warp_max(lane < num_warps ? parked[lane] : neg_inf());
}

__device__ __forceinline__ unsigned block_max_u32(unsigned v) {
    __shared__ unsigned parked[WARP];
    const unsigned lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const unsigned num_warps = blockDim.x / WARP;
    v = warp_max_u32(v);
    __syncthreads();
    if (lane == 0) parked[warp] = v;
    __syncthreads();
    return warp_max_u32(lane < num_warps ? parked[lane] : 0u);
}

__device__ __forceinline__ unsigned block_min_u32(unsigned v) {
    __shared__ unsigned parked[WARP];
    const unsigned lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const unsigned num_warps = blockDim.x / WARP;
    v = warp_min_u32(v);
    __syncthreads();
    if (lane == 0) parked[warp] = v;
    __syncthreads();
    return warp_min_u32(lane < num_warps ? parked[lane] : 0xffffffffu);
}

// N independent sums at once (one barrier pair for all of them); V is float or an integer type
// (integer sums are exact, so their result does not depend on the reduction order at all).
template <int N, typename V>
__device__ __forceinline__ void block_sum_n(V (&v)[N]) {
    __shared__ V parked[N][WARP];
    const unsigned lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const unsigned num_warps = blockDim.x / WARP;
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int o = WARP / 2; o > 0; o >>= 1) v[i] += __shfl_xor_sync(FULL_MASK, v[i], o);
    __syncthreads();
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < N; ++i) parked[i][warp] = v[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; ++i) {
        v[i] = lane < num_warps ? parked[i][lane] : V(0);
#pragma unroll
        for (int o = WARP / 2; o > 0; o >>= 1) v[i] += __shfl_xor_sync(FULL_MASK, v[i], o);
    }
}

// ---- index helpers ---------------------------------------------------------------------------------

// First index and stride of a grid-stride loop over work items.
__device__ __forceinline__ unsigned long long grid_thread() {
    return (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ unsigned long long grid_threads() {
    return (unsigned long long)gridDim.x * blockDim.x;
}

}  // namespace im
