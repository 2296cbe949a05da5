// emu.h — run CUDA kernel sources on the CPU, for checking kernels on machines without a GPU.
//
// The model: one std::thread per CUDA thread, one thread block at a time (blocks in x-fastest
// order over a 3-D grid). __syncthreads is a barrier over the block's threads; the warp shuffles
// (__shfl_sync, __shfl_xor_sync) exchange values through a per-warp slot table between two
// barriers of the warp's 32 threads, so a kernel whose lanes do not all reach a shuffle deadlocks
// here (on a GPU it is undefined behaviour with the full mask). __shared__ becomes `static`: one
// copy per kernel function, shared by the block's threads, which is right because blocks run one
// after another. What this cannot check: timing, the memory model between blocks, inline PTX
// (mma.sync, ldmatrix, cp.async: attention_prefill.cu is not emulated), register pressure.
// Used by tests/kernel_emulation/*.cpp through scripts/emulate-kernels.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx;
inline dim3 blockIdx, blockDim, gridDim;

inline std::barrier<>* g_block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_barriers;
inline uint64_t g_exchange[32][32];  // [warp][lane]: up to 1024 threads

inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }

// Publish v in this lane's slot, wait for the warp, read lane `src`'s slot, wait again (so no lane
// overwrites a slot another lane has not read yet).
template <class V>
V warp_exchange(V v, unsigned src) {
    static_assert(sizeof(V) <= sizeof(uint64_t), "shuffles move at most 8 bytes here");
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(V));
    g_exchange[warp][lane] = bits;
    g_warp_barriers[warp]->arrive_and_wait();
    const uint64_t got = g_exchange[warp][src % 32];
    g_warp_barriers[warp]->arrive_and_wait();
    V r;
    std::memcpy(&r, &got, sizeof(V));
    return r;
}
template <class V>
V __shfl_sync(unsigned, V v, int src) {
    return warp_exchange(v, unsigned(src));
}
template <class V>
V __shfl_xor_sync(unsigned, V v, int mask) {
    return warp_exchange(v, (threadIdx.x % 32) ^ unsigned(mask));
}

inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
// f32 -> u64 rounding toward zero (negative and NaN give 0, as the hardware conversion does)
inline unsigned long long __float2ull_rz(float f) { return f > 0.f ? (unsigned long long)f : 0ull; }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
using std::isfinite;
template <class A>
A min(A a, A b) { return b < a ? b : a; }
template <class A>
A max(A a, A b) { return a < b ? b : a; }

// Run f (a call of the kernel with its arguments) as grid × block threads. The block's threads
// are made once per launch and run the blocks one after another; each block gets fresh barriers,
// since a thread that returns early leaves them for good (arrive_and_drop).
template <class F>
void launch(dim3 grid, dim3 block, F f) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x, warps = (block.x + 31) / 32;
    std::barrier<> start(n + 1), done(n + 1);  // main thread + the block's threads
    std::unique_ptr<std::barrier<>> block_barrier;
    bool finished = false;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < n; ++t)
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (;;) {
                start.arrive_and_wait();
                if (finished) return;
                f();
                g_warp_barriers[t / 32]->arrive_and_drop();
                block_barrier->arrive_and_drop();
                done.arrive_and_wait();
            }
        });
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = {bx, by, bz};
                block_barrier = std::make_unique<std::barrier<>>(n);
                g_block_barrier = block_barrier.get();
                g_warp_barriers.clear();
                for (unsigned w = 0; w < warps; ++w)
                    g_warp_barriers.emplace_back(new std::barrier<>(std::min(32u, n - w * 32)));
                start.arrive_and_wait();
                done.arrive_and_wait();
            }
    finished = true;
    start.arrive_and_wait();
    for (auto& th : threads) th.join();
}
