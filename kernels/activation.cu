// activation.cu — GPT-2's gelu_new, GPT-NeoX's exact GELU and OPT's ReLU (in place), Llama's
// SiLU-gated product, Gemma's GELU(tanh)-gated product (GeGLU), and Gemma's in-place maps: the
// embedding scale and Gemma 2's logit soft-capping.
//
// What it computes (CPU reference: src/backend/cpu/activation.rs), in f32:
//   gelu_new:  x[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))      over len elements, in place
//   gelu_erf:  x[i] = 0.5 x (1 + erf(x / sqrt(2)))    (transformers' `gelu`) over len elements, in place
//   relu:      x[i] = x < 0 ? 0 : x                    (NaN stays NaN)       over len elements, in place
//   silu_mul:  out[r, j] = silu(x[r, j]) * x[r, inter + j],  silu(g) = g / (1 + exp(-g))
//   gelu_tanh_mul: out[r, j] = gelu_new(x[r, j]) * x[r, inter + j]   (gelu_pytorch_tanh is gelu_new)
//   softcap_inplace: x[i] = cap * tanh(x[i] / cap)                      over len elements, in place
//   scale_inplace:   x[i] = x[i] * scale                                over len elements, in place
//
// Layouts (row-major, T = compute dtype):
//   gelu_new, gelu_erf, relu, softcap_inplace, scale_inplace:  x [len]
//   silu_mul, gelu_tanh_mul:  out [rows, inter];  x [rows, 2 * inter] (gate columns 0..inter, then up)
//
// Algorithm: grid-stride loops (IM_ELEMENTWISE_THREADS per block, grid capped at a few blocks per SM)
// over 16-byte vectors of IM_VEC elements, converted to f32 and back. gelu_new, gelu_erf, relu,
// softcap_inplace and scale_inplace (one in-place loop, map_inplace) handle a ragged tail
// (len % IM_VEC) element by element; silu_mul takes the vector path when inter is a multiple of
// IM_VEC (then every gate/up/out vector is aligned), else works element by element (e.g. a tiny
// test model with inter = 172). tanhf, expf and erff are the accurate (non --use_fast_math)
// versions, so the f32 build agrees with the CPU reference to a few ulp. No shared memory.
//
// Roofline (s = sizeof(T)), memory-bound:
//   gelu_new:  2 len s bytes; ≈ 8 len FLOPs plus one tanh per element
//   gelu_erf:  2 len s bytes; ≈ 4 len FLOPs plus one erf per element
//   relu:      2 len s bytes; len comparisons
//   silu_mul:  3 rows inter s bytes; ≈ 3 rows inter FLOPs plus one exp per element
//   gelu_tanh_mul: 3 rows inter s bytes; ≈ 9 rows inter FLOPs plus one tanh per element
//   softcap_inplace: 2 len s bytes; 2 len FLOPs plus one tanh per element (the logits: a few MB)
//   scale_inplace:   2 len s bytes; len FLOPs
// Decode-sized calls are launch-latency bound; prefill-sized ones should run near DRAM bandwidth.
#include "common.cuh"

namespace {

__device__ __forceinline__ float gelu_new_f(float u) {
    const float k_sqrt_2_over_pi = 0.7978845608028654f;
    return 0.5f * u * (1.f + tanhf(k_sqrt_2_over_pi * (u + 0.044715f * u * u * u)));
}

__device__ __forceinline__ float silu_f(float g) { return g / (1.f + expf(-g)); }

// The gate's activation of a gated MLP, a template argument of gated_mul_items.
struct Silu {
    static __device__ __forceinline__ float f(float g) { return silu_f(g); }
};
struct GeluTanh {
    static __device__ __forceinline__ float f(float g) { return gelu_new_f(g); }
};

template <int W, class Act>
__device__ __forceinline__ void gated_mul_items(T* __restrict__ out, const T* __restrict__ x,
                                                uint32_t rows, uint32_t inter) {
    const uint32_t per_row = inter / W;
    const uint64_t items = uint64_t(rows) * per_row;
    for (uint64_t k = im::grid_thread(); k < items; k += im::grid_threads()) {
        const uint64_t r = k / per_row;
        const uint32_t j = uint32_t(k % per_row) * W;
        const T* gate = x + r * (2ull * inter) + j;
        float g[W], u[W];
        im::load<W>(gate, g);
        im::load<W>(gate + inter, u);
#pragma unroll
        for (int e = 0; e < W; ++e) g[e] = Act::f(g[e]) * u[e];
        im::store<W>(out + r * inter + j, g);
    }
}

// x[i] = op(x[i]) over len elements in place: 16-byte vectors when x is aligned, then the tail.
template <class Op>
__device__ __forceinline__ void map_inplace(T* __restrict__ x, uint64_t len, const Op& op) {
    const uint64_t start = im::grid_thread(), stride = im::grid_threads();
    uint64_t done = 0;  // elements covered by the vector loop
    if (im::aligned16(x)) {
        const uint64_t nvec = len / im::VEC;
        for (uint64_t i = start; i < nvec; i += stride) {
            float v[im::VEC];
            im::load<im::VEC>(x + i * im::VEC, v);
#pragma unroll
            for (int e = 0; e < im::VEC; ++e) v[e] = op(v[e]);
            im::store<im::VEC>(x + i * im::VEC, v);
        }
        done = nvec * im::VEC;
    }
    for (uint64_t i = done + start; i < len; i += stride) x[i] = im::from_float(op(im::to_float(x[i])));
}

struct GeluNewOp {
    __device__ __forceinline__ float operator()(float u) const { return gelu_new_f(u); }
};

struct ReluOp {
    __device__ __forceinline__ float operator()(float u) const { return u < 0.f ? 0.f : u; }
};

struct GeluErfOp {
    __device__ __forceinline__ float operator()(float u) const {
        const float k_sqrt_half = 0.7071067811865476f;
        return 0.5f * u * (1.f + erff(u * k_sqrt_half));
    }
};

// cap * tanh(u / cap), with 1 / cap computed once
struct SoftcapOp {
    float cap, inv_cap;
    __device__ __forceinline__ float operator()(float u) const { return cap * tanhf(u * inv_cap); }
};

struct ScaleOp {
    float scale;
    __device__ __forceinline__ float operator()(float u) const { return u * scale; }
};

}  // namespace

extern "C" __global__ void gelu_new(T* __restrict__ x,  // [len], updated
                                    uint64_t len) {
    map_inplace(x, len, GeluNewOp{});
}

// GPT-NeoX's (Pythia's) MLP activation.
extern "C" __global__ void gelu_erf(T* __restrict__ x,  // [len], updated
                                    uint64_t len) {
    map_inplace(x, len, GeluErfOp{});
}

// OPT's MLP activation.
extern "C" __global__ void relu(T* __restrict__ x,  // [len], updated
                                uint64_t len) {
    map_inplace(x, len, ReluOp{});
}

// Gemma 2's final_logit_softcapping over the logits.
extern "C" __global__ void softcap_inplace(T* __restrict__ x,  // [len], updated
                                           uint64_t len, float cap) {
    map_inplace(x, len, SoftcapOp{cap, 1.f / cap});
}

// Gemma's embedding scale (sqrt(hidden)) over the embedded rows.
extern "C" __global__ void scale_inplace(T* __restrict__ x,  // [len], updated
                                         uint64_t len, float scale) {
    map_inplace(x, len, ScaleOp{scale});
}

extern "C" __global__ void silu_mul(T* __restrict__ out,      // [rows, inter]
                                    const T* __restrict__ x,  // [rows, 2 * inter]
                                    uint32_t rows, uint32_t inter) {
    if (inter % im::VEC == 0 && im::aligned16(out) && im::aligned16(x))
        gated_mul_items<im::VEC, Silu>(out, x, rows, inter);
    else
        gated_mul_items<1, Silu>(out, x, rows, inter);
}

extern "C" __global__ void gelu_tanh_mul(T* __restrict__ out,      // [rows, inter]
                                         const T* __restrict__ x,  // [rows, 2 * inter]
                                         uint32_t rows, uint32_t inter) {
    if (inter % im::VEC == 0 && im::aligned16(out) && im::aligned16(x))
        gated_mul_items<im::VEC, GeluTanh>(out, x, rows, inter);
    else
        gated_mul_items<1, GeluTanh>(out, x, rows, inter);
}
