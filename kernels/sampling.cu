// sampling.cu — next-token selection from the LM head's logits: greedy argmax, and temperature /
// top-k / top-p sampling driven by one uniform random number per row from the host. The engine picks
// every token here (Backend::pick_tokens): only the picked ids travel back to the host.
//
// What it computes (CPU reference: src/engine/sampling.rs, `argmax`, `pick` and `pick_rows`):
//   ban_tokens:   logits[row, token] = -inf for each (row, token) pair of bans, in place (the
//                 end-of-sequence tokens of requests below their min_tokens); pairs out of range are
//                 ignored.
//   argmax_rows:  out[r] = the index of the largest logit of row r, the first one on ties (as
//                 torch.argmax). NaNs never win; a row of -inf/NaN only gives 0.
//   sample_rows:  with P = params[r]:
//     temperature <= 0 (or NaN): argmax, as above.
//     Otherwise, c_i = logits[r, i] / temperature; order the tokens by c descending, ties by index
//     ascending ("rank order"); keep the first top_k (when 0 < top_k < vocab); weight each kept token
//     by w_i = exp(c_i - c_max); if top_p < 1, keep the shortest rank-order prefix whose weight
//     reaches top_p * (total kept weight); finally return the first token of the kept prefix at which
//     the running weight exceeds uniform * (total kept weight) — inverse-CDF sampling in rank order.
//     This is the CPU sampler's algorithm step for step, with exact weights: for the same uniform
//     draw both pick the same token unless the draw (or top_p) falls within the f32 rounding of
//     the CPU's running sum (about 1e-6 at a 50k vocabulary) of a boundary between two tokens.
//     Degenerate rows differ on purpose: where c_max is not finite (a +inf or positive NaN logit,
//     an all -inf row, or l / temperature overflowing) there is no distribution and the kernel
//     returns the argmax, where the CPU's NaN weights give an arbitrary token; a NaN below the
//     maximum (a negative NaN sorts below -inf) weighs 0 here.
//
// Layouts: logits T [num_rows, vocab] (the lm_head output in the compute dtype, each element read as
//   f32, so the CPU reference sees the same values after a download); out uint32 [num_rows]; params
//   SamplingRowParams [num_rows] (params.h); bans uint32 [num_bans, 2] (row, token).
//
// Algorithm: one block of IM_SAMPLING_THREADS threads per row (grid-stride over rows). No sort and no
// copy of the row. Every cut above is "the largest rank key tau such that the weight of the kept
// tokens with key >= tau passes a target", over the 64-bit rank key
//     key_i = ord(c_i) << 32 | (0xFFFFFFFF - i)       (ord: order-preserving float -> uint32 map)
// which is unique per token and orders tokens exactly in rank order (larger key = earlier). The kept
// set after each cut is {i : key_i >= cut}. Weights are fixed-point integers, exp(c - c_max) * 2^40
// truncated, so every sum is exact whatever the order: cuts are exact for these weights, and results
// are bit-identical across runs and launch configurations (tokens lighter than 2^-40 of the top one
// weigh 0 and are never drawn). A cut is found by a 16-ary search over the 32 value bits: each pass
// streams the row and each thread accumulates, for 15 thresholds that split the current range into
// 16, the weight of the kept tokens at or above each threshold; one block reduction of the 15 u64
// sums (shared memory: 15 x 32 x 8 bytes) picks the sub-range. At most 8 passes cover 32 bits, and
// only tokens inside the current range pay for an exp (the weight above it is carried over). Tokens
// tied at the boundary value weigh the same, so the number of them needed follows from one more pass
// (tie count, lowest and highest index, weight above); only when some but not all of several tied
// tokens are needed does a second search, over their indices, run. The top-k cut is the same search
// with weight 1 per token (a count).
//
// Roofline: every pass reads the row (sizeof(T) vocab bytes, from L2 after the first) and does one IEEE
// division per element (the same c_i as the CPU, so ties and order agree); exps only for tokens in
// range. Passes per row: 2 (max/min, total) + per cut <= 8 search passes + 1 tie pass: about 11 for
// plain temperature sampling, up to ~30 with top-k and top-p. For a 128k vocabulary that is tens to a
// few hundred microseconds per row on one SM, rows in parallel across SMs: fine next to a decode step
// of a small batch, not a tuned sampler (a sorting-free rejection sampler, FlashInfer style, is the
// later, faster variant). 124 registers per thread at 512 threads (see REGISTERS.md), no spills.
// argmax_rows is one pass: sizeof(T) vocab bytes per row, memory-bound. ban_tokens: a few bytes.
#include "common.cuh"

namespace {

constexpr int R = 15;  // thresholds per search pass: each pass narrows the range 16-fold

// Order-preserving map f32 -> uint32 (the total order of f32::total_cmp): a < b <=> ord(a) < ord(b).
__device__ __forceinline__ uint32_t ord(float f) {
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float unord(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
__device__ __forceinline__ uint64_t rank_key(uint32_t value_key, uint32_t i) {
    return (uint64_t(value_key) << 32) | uint64_t(~i);
}

// ---- argmax ----------------------------------------------------------------------------------------

// (value, index) a beats b: larger value, or equal value and smaller index. NaN never beats anything.
__device__ __forceinline__ bool beats(float av, uint32_t ai, float bv, uint32_t bi) {
    return av > bv || (av == bv && ai < bi);
}

__device__ uint32_t argmax_row(const T* __restrict__ row, uint32_t vocab) {
    __shared__ float parked_v[im::WARP];
    __shared__ uint32_t parked_i[im::WARP];
    float bv = im::neg_inf();
    uint32_t bi = 0xffffffffu;  // "none": loses every tie
    for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = im::to_float(row[i]);
        if (v > bv) {  // strict: a thread keeps its first maximum
            bv = v;
            bi = i;
        }
    }
    for (int o = im::WARP / 2; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(im::FULL_MASK, bv, o);
        const uint32_t oi = __shfl_xor_sync(im::FULL_MASK, bi, o);
        if (beats(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    const uint32_t lane = threadIdx.x % im::WARP, warp = threadIdx.x / im::WARP;
    __syncthreads();
    if (lane == 0) {
        parked_v[warp] = bv;
        parked_i[warp] = bi;
    }
    __syncthreads();
    const bool have = lane < blockDim.x / im::WARP;
    bv = have ? parked_v[lane] : im::neg_inf();
    bi = have ? parked_i[lane] : 0xffffffffu;
    for (int o = im::WARP / 2; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(im::FULL_MASK, bv, o);
        const uint32_t oi = __shfl_xor_sync(im::FULL_MASK, bi, o);
        if (beats(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    return bi == 0xffffffffu ? 0u : bi;
}

// ---- rank-order cuts -------------------------------------------------------------------------------

// Token weights are fixed-point: exp(c - cmax) * 2^40, truncated (the top token weighs 2^40). Sums of
// them are exact integers (< 2^64 for vocabularies below 2^24), so every weight below is exact and
// independent of summation order. A token lighter than 2^-40 of the top one weighs 0: it is never
// drawn (its probability is below 1e-12).
constexpr float FIX_ONE = 1099511627776.f;  // 2^40
constexpr float TWO_POW_64 = 18446744073709551616.f;

struct Row {
    const T* __restrict__ logits;  // [vocab]
    uint32_t vocab;
    float temperature;
    float cmax;  // largest scaled logit
    __device__ __forceinline__ float scaled(uint32_t i) const {
        return im::to_float(logits[i]) / temperature;
    }
    // A NaN (which sorts below -inf when its sign bit is set) weighs nothing.
    __device__ __forceinline__ uint64_t weight(float c) const {
        return c == c ? __float2ull_rz(expf(c - cmax) * FIX_ONE) : 0ull;
    }
};

// floor(total * f) for f in [0, 1), exactly enough: f carries 24 significant bits.
__device__ __forceinline__ uint64_t scale_fraction(uint64_t total, float f) {
    return __umul64hi(total, __float2ull_rz(f * TWO_POW_64));
}

__device__ __forceinline__ bool passes(uint64_t weight, uint64_t target, bool strict) {
    return strict ? weight > target : weight >= target;
}

// Total weight of the kept tokens (rank key >= cut).
__device__ uint64_t kept_weight(const Row& row, uint64_t cut) {
    uint64_t sum[1] = {0};
    for (uint32_t i = threadIdx.x; i < row.vocab; i += blockDim.x) {
        const float c = row.scaled(i);
        if (rank_key(ord(c), i) >= cut) sum[0] += row.weight(c);
    }
    im::block_sum_n<1>(sum);
    return sum[0];
}

// The 16-ary search. Finds the largest x in [lo, hi] with passes(W(x)), given passes(W(lo)), where
// W(x) is non-increasing in x:
//   value mode:  x ranges over value keys; W(x) = weight of the kept tokens with ord(c) >= x,
//                the fixed-point weight (use_weight) or 1 per token (a count);
//   index mode:  only kept tokens with ord(c) == tie_value; x ranges over their low key words
//                (0xFFFFFFFF - i); W(x) = how many have a low word >= x.
// Since W only drops just above a token's x, the answer is always some kept token's x. `above`
// carries W(hi + 1) (0 at the start: hi is the largest x there is), so tokens above the current range
// are skipped without an exp.
__device__ uint32_t search(const Row& row, uint64_t cut, bool index_mode, uint32_t tie_value,
                           bool use_weight, uint64_t target, bool strict, uint32_t lo, uint32_t hi) {
    uint64_t above = 0;
    while (lo < hi) {
        const uint64_t width = uint64_t(hi) - lo;
        const uint64_t step = width / (R + 1) + 1;  // thresholds lo + step, lo + 2 step, ... <= hi
        uint32_t th[R];
#pragma unroll
        for (int j = 0; j < R; ++j) th[j] = uint32_t(min(uint64_t(lo) + (j + 1) * step, uint64_t(hi)));

        uint64_t acc[R];
#pragma unroll
        for (int j = 0; j < R; ++j) acc[j] = 0;
        for (uint32_t i = threadIdx.x; i < row.vocab; i += blockDim.x) {
            const float c = row.scaled(i);
            const uint32_t v = ord(c);
            uint32_t x;
            if (index_mode) {
                if (v != tie_value) continue;
                x = ~i;
            } else {
                x = v;
            }
            if (x < th[0] || x > hi) continue;  // below every threshold, or counted in `above`
            if (rank_key(v, i) < cut) continue;  // not kept
            const uint64_t w = use_weight ? row.weight(c) : 1;
#pragma unroll
            for (int j = 0; j < R; ++j) acc[j] += x >= th[j] ? w : 0;
        }
        im::block_sum_n<R>(acc);

        // W(th[j]) passes for j below some point and fails from there on (thresholds past hi are
        // ignored). Fully unrolled, without an early exit, so acc and th stay in registers.
        uint32_t new_lo = lo, new_hi = hi;
        uint64_t new_above = above;
        bool failed = false;
#pragma unroll
        for (int j = 0; j < R; ++j) {
            const uint64_t wj = acc[j] + above;
            if (!failed && uint64_t(j + 1) * step <= width) {
                if (passes(wj, target, strict)) {
                    new_lo = th[j];
                } else {
                    new_hi = th[j] - 1;
                    new_above = wj;  // W(new_hi + 1)
                    failed = true;
                }
            }
        }
        lo = new_lo;
        hi = new_hi;
        above = new_above;
    }
    return lo;
}

// The cut (a rank key) at which the kept tokens' weight, summed in rank order, first passes `target`
// (>= or >): the largest key tau >= cut with passes(W(tau)). passes(W(cut)) must hold (it does for
// every caller: top-k k < vocab, top-p target <= total, draw target < total). vmin, vmax: the
// smallest and largest value keys of the row.
__device__ uint64_t select_cut(const Row& row, uint64_t cut, uint32_t vmin, uint32_t vmax,
                               bool use_weight, uint64_t target, bool strict) {
    // 1. The boundary value v: the largest value key with passes(weight of kept tokens >= v). The
    //    search starts from the smallest kept value (cut's own, or the row minimum when every token
    //    is kept).
    const uint32_t lo = max(uint32_t(cut >> 32), vmin);
    const uint32_t v = search(row, cut, false, 0, use_weight, target, strict, lo, vmax);

    // 2. Tokens tied at v: how many are kept, lowest and highest low word; weight strictly above v.
    uint64_t sums[2] = {0, 0};  // ties, above
    uint32_t low_min = 0xffffffffu, low_max = 0u;
    for (uint32_t i = threadIdx.x; i < row.vocab; i += blockDim.x) {
        const float c = row.scaled(i);
        const uint32_t x = ord(c);
        if (x < v || rank_key(x, i) < cut) continue;
        if (x > v) {
            sums[1] += use_weight ? row.weight(c) : 1;
        } else {
            sums[0] += 1;
            low_min = min(low_min, ~i);
            low_max = max(low_max, ~i);
        }
    }
    im::block_sum_n<2>(sums);
    const uint64_t ties = sums[0], above = sums[1];
    low_min = im::block_min_u32(low_min);
    low_max = im::block_max_u32(low_max);
    if (ties <= 1) return (uint64_t(v) << 32) | low_max;

    // 3. Tied tokens weigh the same w, so n of them (in index order) are needed: the smallest n with
    //    passes(above + n w). Then find the n-th smallest index among the ties.
    const uint64_t w = use_weight ? row.weight(unord(v)) : 1;
    uint64_t n = 1;
    if (w > 0 && target >= above) n = strict ? (target - above) / w + 1 : (target - above + w - 1) / w;
    n = min(max(n, uint64_t(1)), ties);
    if (n == ties) return (uint64_t(v) << 32) | low_min;
    const uint32_t low = search(row, cut, true, v, false, n, false, low_min, low_max);
    return (uint64_t(v) << 32) | low;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(IM_SAMPLING_THREADS)
    argmax_rows(uint32_t* __restrict__ out,         // [num_rows]
                const T* __restrict__ logits,       // [num_rows, vocab]
                uint32_t num_rows, uint32_t vocab) {
    for (uint32_t r = blockIdx.x; r < num_rows; r += gridDim.x) {
        const uint32_t best = argmax_row(logits + uint64_t(r) * vocab, vocab);
        if (threadIdx.x == 0) out[r] = best;
    }
}

extern "C" __global__ void __launch_bounds__(IM_SAMPLING_THREADS)
    sample_rows(uint32_t* __restrict__ out,                     // [num_rows]
                const T* __restrict__ logits,                   // [num_rows, vocab]
                const SamplingRowParams* __restrict__ params,   // [num_rows]
                uint32_t num_rows, uint32_t vocab) {
    for (uint32_t r = blockIdx.x; r < num_rows; r += gridDim.x) {
        const T* row_logits = logits + uint64_t(r) * vocab;
        const SamplingRowParams sp = params[r];
        uint32_t token;
        if (!(sp.temperature > 0.f) || vocab == 0) {
            token = argmax_row(row_logits, vocab);
        } else {
            Row row{row_logits, vocab, sp.temperature, 0.f};
            uint32_t vmin = 0xffffffffu, vmax = 0u;
            for (uint32_t i = threadIdx.x; i < vocab; i += blockDim.x) {
                const uint32_t v = ord(row.scaled(i));
                vmin = min(vmin, v);
                vmax = max(vmax, v);
            }
            vmin = im::block_min_u32(vmin);
            vmax = im::block_max_u32(vmax);
            row.cmax = unord(vmax);
            if (!isfinite(row.cmax)) {
                token = argmax_row(row_logits, vocab);  // inf/NaN logits: no distribution to sample
            } else {
                uint64_t cut = 0;  // every token kept
                if (sp.top_k > 0 && sp.top_k < vocab)
                    cut = select_cut(row, cut, vmin, vmax, false, sp.top_k, false);
                if (sp.top_p < 1.f) {
                    const uint64_t total = kept_weight(row, cut);
                    cut = select_cut(row, cut, vmin, vmax, true,
                                     scale_fraction(total, fmaxf(sp.top_p, 0.f)), false);
                }
                // Inverse CDF: the first token whose running weight exceeds u * total (< total).
                const uint64_t total = kept_weight(row, cut);
                const float u = fminf(fmaxf(sp.uniform, 0.f), 0x1.fffffep-1f);  // [0, 1)
                cut = select_cut(row, cut, vmin, vmax, true, scale_fraction(total, u), true);
                token = ~uint32_t(cut);
            }
        }
        if (threadIdx.x == 0) out[r] = min(token, vocab - 1);
    }
}

extern "C" __global__ void __launch_bounds__(IM_ELEMENTWISE_THREADS)
    ban_tokens(T* __restrict__ logits,             // [num_rows, vocab]
               const uint32_t* __restrict__ bans,  // [num_bans, 2]: (row, token)
               uint32_t num_bans, uint32_t num_rows, uint32_t vocab) {
    for (unsigned long long b = im::grid_thread(); b < num_bans; b += im::grid_threads()) {
        const uint32_t row = bans[2 * b], token = bans[2 * b + 1];
        if (row < num_rows && token < vocab) logits[uint64_t(row) * vocab + token] = im::from_float(im::neg_inf());
    }
}
