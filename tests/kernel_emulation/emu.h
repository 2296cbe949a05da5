// emu.h — run CUDA kernel sources on the CPU, for checking kernels on machines without a GPU.
//
// The model: one fiber (its own stack) per CUDA thread, all on one OS thread, one thread
// block at a time (blocks in x-fastest order over a 3-D grid). A fiber runs until it waits at a
// barrier (__syncthreads, a warp shuffle, a warp-wide mma) or returns; the scheduler then runs the
// next one, round robin, so a barrier costs two context switches per thread and no OS scheduling
// (the std::thread version this replaces spent minutes in futex wake-ups on two cores). Execution is
// deterministic and sequentially consistent.
//   __syncthreads: a barrier over the block's threads still running (a returned thread leaves it,
//     as with arrive_and_drop).
//   __shfl_sync / __shfl_xor_sync: every lane publishes its value in a per-warp slot table and
//     meets the warp at a barrier, then reads lane `src`'s slot. Two tables used alternately (by
//     parity of the lane's exchange count) make one barrier per shuffle enough: a lane cannot
//     reach exchange k + 2, which reuses exchange k's table, before every lane of the warp has
//     arrived at exchange k + 1, and so has read exchange k.
//   ldmatrix .x4 (emu_ldmatrix_x4): the same exchange with the lanes' row addresses.
//   mma.sync m16n8k16 (emu_mma_m16n8k16): the same exchange with the lanes' A, B and C fragments;
//     each lane then computes its own four outputs from the fragment layouts as the PTX ISA
//     (9.7.14.5.8) defines them — written from the ISA, not from the kernel, so a kernel that
//     packs its fragments differently fails.
//   A kernel whose threads do not all reach a barrier (lanes skipping a shuffle, a __syncthreads
//     under divergent control flow) is reported as a deadlock and aborts; on a GPU it is undefined.
//   cp.async (emu_cp_async_16, _commit, _wait): a thread's copies are queued, grouped at commit and
//     performed when a wait retires their group — the latest moment the PTX memory model allows — so
//     a kernel that reads a tile before waiting for it reads stale shared memory and fails its
//     reference check. A thread that returns with copies never waited for is reported (aborts).
//     Performing them late cannot show the opposite mistake (a copy issued into a buffer other warps
//     still read, a barrier missing before the issue): the warps run in near lockstep here.
// __shared__ becomes `static`: one copy per kernel function, shared by the block's threads, which is
// right because blocks run one after another. What this cannot check: timing, the memory model
// between blocks, other inline PTX, register pressure.
// Used by tests/kernel_emulation/*.cpp through scripts/emulate-kernels.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <memory>
#include <ucontext.h>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"

// Kernel sources test this to swap inline PTX for the emulated instruction (attention_prefill.cu's
// mma); the architecture is the oldest the engine supports.
#define IM_CPU_EMULATION 1
#define __CUDA_ARCH__ 800

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
inline dim3 threadIdx, blockIdx, blockDim, gridDim;  // threadIdx: the running fiber's, set on switch

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace emu {

struct Barrier {
    unsigned expected = 0, arrived = 0, generation = 0;
};

// Context switches. On x86-64 a hand-written switch saves the callee-saved registers on the
// fiber's own stack and swaps stack pointers (glibc's swapcontext makes a sigprocmask system call
// on every switch, which was half the run time); elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .hidden emu_switch_stack
    .globl emu_switch_stack
    .type emu_switch_stack, @function
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stack, .-emu_switch_stack
)");
struct Context {
    void* sp = nullptr;
};
inline void switch_context(Context& from, Context& to) { emu_switch_stack(&from.sp, to.sp); }
// A fresh context that starts in entry() on the given stack (entry must never return).
inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                            // entry's return address (never used)
    *--sp = reinterpret_cast<void*>(entry);     // where the first switch's `ret` goes
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp, rbx, r12-r15
    c.sp = sp;
}
#else
struct Context {
    ucontext_t uc;
};
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

struct Fiber {
    Context context;
    std::unique_ptr<char[]> stack;
    unsigned tid = 0;
    bool done = false;
    // The barrier this fiber waits at and its generation then: the scheduler does not switch into
    // a fiber whose barrier has not been released since (most of a barrier-heavy kernel's passes).
    const Barrier* waiting = nullptr;
    unsigned wait_generation = 0;
};

constexpr size_t STACK_BYTES = 256 * 1024;  // per CUDA thread; untouched pages are never committed

inline Context scheduler;
inline std::vector<Fiber> fibers;  // the block's threads (stacks reused across launches)
inline Fiber* current = nullptr;
inline Barrier block_barrier;
inline Barrier warp_barriers[32];
inline uint64_t progress = 0;      // arrivals, releases and returns; a pass without any is a deadlock
inline void (*invoke)(void*) = nullptr;
inline void* kernel_call = nullptr;

inline void yield() { switch_context(current->context, scheduler); }

inline void release(Barrier& b) {
    b.arrived = 0;
    ++b.generation;
}

inline void arrive_and_wait(Barrier& b) {
    ++progress;
    if (++b.arrived == b.expected) {
        release(b);
        return;
    }
    const unsigned generation = b.generation;
    Fiber* self = current;
    self->waiting = &b;
    self->wait_generation = generation;
    while (b.generation == generation) yield();
    self->waiting = nullptr;
}

// A returned thread leaves the barrier; if everyone else is already waiting, that releases them.
inline void leave(Barrier& b) {
    --b.expected;
    if (b.arrived != 0 && b.arrived == b.expected) release(b);
}

// One thread's cp.async copies: those not yet committed, then the committed groups, oldest first.
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned src_bytes;  // the rest of the 16 bytes is zero-filled
};
struct AsyncQueue {
    std::vector<AsyncCopy> open;
    std::vector<std::vector<AsyncCopy>> groups;
    bool pending() const {
        if (!open.empty()) return true;
        for (auto& g : groups)
            if (!g.empty()) return true;
        return false;
    }
};
inline AsyncQueue async_queues[1024];

inline void fiber_main() {
    Fiber* self = current;
    invoke(kernel_call);
    if (async_queues[self->tid].pending()) {
        std::fprintf(stderr, "emu: thread %u of block (%u, %u, %u) returned with cp.async copies it never waited for\n",
                     self->tid, blockIdx.x, blockIdx.y, blockIdx.z);
        std::abort();
    }
    self->done = true;
    ++progress;
    leave(warp_barriers[self->tid / 32]);
    leave(block_barrier);
    switch_context(self->context, scheduler);  // never resumed
}

// Per-lane exchange parity and the two slot tables (see the header comment).
inline uint8_t parity[1024];
inline uint64_t exchange[2][32][32];  // [parity][warp][lane]

template <class V>
V warp_exchange(V v, unsigned src) {
    static_assert(sizeof(V) <= sizeof(uint64_t), "shuffles move at most 8 bytes here");
    const unsigned tid = threadIdx.x, lane = tid % 32, warp = tid / 32, par = parity[tid];
    parity[tid] ^= 1;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(V));
    exchange[par][warp][lane] = bits;
    arrive_and_wait(warp_barriers[warp]);
    const uint64_t got = exchange[par][warp][src % 32];
    V r;
    std::memcpy(&r, &got, sizeof(V));
    return r;
}

// One lane's operands of mma.m16n8k16 (f16/bf16 inputs, f32 accumulators).
struct MmaFragments {
    uint32_t a[4], b[2];
};
inline MmaFragments mma_slots[2][32][32];  // [parity][warp][lane]

inline float as_float(__half h) { return __half2float(h); }
inline float as_float(__nv_bfloat16 h) { return __bfloat162float(h); }

// Element `half` (0: low 16 bits) of a register holding two E.
template <class E>
float element(uint32_t reg, unsigned half) {
    const unsigned short bits = (unsigned short)(reg >> (16 * half));
    E e;
    std::memcpy(&e, &bits, 2);
    return as_float(e);
}

}  // namespace emu

inline void __syncthreads() { emu::arrive_and_wait(emu::block_barrier); }

template <class V>
V __shfl_sync(unsigned, V v, int src) {
    return emu::warp_exchange(v, unsigned(src));
}
template <class V>
V __shfl_xor_sync(unsigned, V v, int mask) {
    return emu::warp_exchange(v, (threadIdx.x % 32) ^ unsigned(mask));
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 c, a, {b0, b1}, c for the warp:
// D (16x8) = A (16x16) B (16x8) + C. Fragment layouts from the PTX ISA, with groupID = lane >> 2 and
// threadID_in_group = lane % 4:
//   A: register i / 2 holds a_i (low half even i): row groupID (+8 for a2, a3, a6, a7),
//      column threadID_in_group * 2 + (i & 1) (+8 for i >= 4)
//   B: b_i: row (k) threadID_in_group * 2 + (i & 1) (+8 for i >= 2), column (n) groupID
//   C/D: c_i: row groupID (+8 for i >= 2), column threadID_in_group * 2 + (i & 1)
// E is the element type (__nv_bfloat16 or __half). Products are summed in f32 in k order.
template <class E>
void emu_mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    using namespace emu;
    const unsigned tid = threadIdx.x, lane = tid % 32, warp = tid / 32, par = parity[tid];
    parity[tid] ^= 1;
    mma_slots[par][warp][lane] = {{a[0], a[1], a[2], a[3]}, {b0, b1}};
    arrive_and_wait(warp_barriers[warp]);
    const MmaFragments* f = mma_slots[par][warp];
    auto A = [&](unsigned row, unsigned k) {
        const unsigned owner = (row % 8) * 4 + (k % 8) / 2;
        const unsigned reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return element<E>(f[owner].a[reg], k % 2);
    };
    auto B = [&](unsigned k, unsigned n) {
        const unsigned owner = n * 4 + (k % 8) / 2;
        return element<E>(f[owner].b[k >= 8 ? 1 : 0], k % 2);
    };
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = lane / 4 + (i >= 2 ? 8 : 0), n = (lane % 4) * 2 + (i % 2);
        float acc = c[i];
        for (unsigned k = 0; k < 16; ++k) acc += A(row, k) * B(k, n);
        c[i] = acc;
    }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 {r0, r1, r2, r3}, [row] for the warp: four 8x8
// matrices of 16-bit elements; lane l gives the address of row l % 8 of matrix l / 8 (8 contiguous
// elements, 16-byte aligned). From the PTX ISA (ldmatrix): register ri of lane l holds matrix i's
// elements at row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 (low half first); with .trans the
// matrix is read transposed: rows 2 (l % 4) and 2 (l % 4) + 1 of column l / 4.
inline void emu_ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
    using namespace emu;
    const unsigned tid = threadIdx.x, lane = tid % 32, warp = tid / 32, par = parity[tid];
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
        std::fprintf(stderr, "emu: ldmatrix row address %p of thread %u is not 16-byte aligned\n",
                     row, tid);
        std::abort();
    }
    parity[tid] ^= 1;
    exchange[par][warp][lane] = reinterpret_cast<uintptr_t>(row);
    arrive_and_wait(warp_barriers[warp]);
    // element (i, j) of matrix m as stored: row i's address is lane 8 m + i's
    auto at = [&](unsigned m, unsigned i, unsigned j) -> uint32_t {
        return reinterpret_cast<const uint16_t*>(exchange[par][warp][m * 8 + i])[j];
    };
    const unsigned g = lane / 4, t2 = 2 * (lane % 4);
    for (unsigned m = 0; m < 4; ++m)
        r[m] = trans ? at(m, t2, g) | at(m, t2 + 1, g) << 16 : at(m, g, t2) | at(m, g, t2 + 1) << 16;
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: queued (see the header comment); both
// addresses must be 16-byte aligned.
inline void emu_cp_async_16(void* dst, const void* src, unsigned src_bytes) {
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0 || src_bytes > 16) {
        std::fprintf(stderr, "emu: cp.async of thread %u: %p <- %p (%u bytes) is not 16-byte aligned or too long\n",
                     threadIdx.x, dst, src, src_bytes);
        std::abort();
    }
    emu::async_queues[threadIdx.x].open.push_back({dst, src, src_bytes});
}

// cp.async.commit_group: this thread's open copies become its newest group (possibly empty).
inline void emu_cp_async_commit() {
    auto& q = emu::async_queues[threadIdx.x];
    q.groups.push_back(std::move(q.open));
    q.open.clear();
}

// cp.async.wait_group n: every group but the newest n is performed, oldest first.
inline void emu_cp_async_wait(unsigned n) {
    auto& q = emu::async_queues[threadIdx.x];
    while (q.groups.size() > n) {
        for (const auto& c : q.groups.front()) {
            std::memcpy(c.dst, c.src, c.src_bytes);
            std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, 16 - c.src_bytes);
        }
        q.groups.erase(q.groups.begin());
    }
}

inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }

// For the attention references (not part of the emulation): ALiBi's slope of head h of n in double,
// from BLOOM's construction as transformers writes it (closest power of two c = 2^floor(log2 n), base
// 2^(-max_bias / c); the heads past c take the odd powers of 2^(-max_bias / 2c)), times `scale`.
inline double ref_alibi_slope(unsigned h, unsigned n, double max_bias, double scale) {
    unsigned c = 1;
    while (c * 2 <= n) c *= 2;
    if (h < c) return scale * std::pow(std::exp2(-max_bias / c), double(h + 1));
    return scale * std::pow(std::exp2(-max_bias / (2.0 * c)), double(2 * (h - c) + 1));
}
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

// Run f (a call of the kernel with its arguments) as grid × block threads, the blocks one after
// another; each block's threads start from the kernel's entry with fresh barriers.
template <class F>
void launch(dim3 grid, dim3 block, F f) {
    using namespace emu;
    if (block.x == 0 || block.x > 1024 || block.y != 1 || block.z != 1) {
        std::fprintf(stderr, "emu: only 1-D blocks of 1..1024 threads (got %u x %u x %u)\n", block.x, block.y, block.z);
        std::abort();
    }
    gridDim = grid;
    blockDim = block;
    invoke = [](void* call) { (*static_cast<F*>(call))(); };
    kernel_call = &f;
    const unsigned n = block.x, warps = (n + 31) / 32;
    if (fibers.size() < n) fibers.resize(n);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = {bx, by, bz};
                block_barrier = {n, 0, 0};
                for (unsigned w = 0; w < warps; ++w) warp_barriers[w] = {std::min(32u, n - w * 32), 0, 0};
                std::memset(parity, 0, sizeof parity);
                for (unsigned t = 0; t < n; ++t) async_queues[t] = {};
                for (unsigned t = 0; t < n; ++t) {
                    Fiber& fb = fibers[t];
                    if (!fb.stack) fb.stack.reset(new char[STACK_BYTES]);
                    fb.tid = t;
                    fb.done = false;
                    fb.waiting = nullptr;
                    make_context(fb.context, fb.stack.get(), STACK_BYTES, fiber_main);
                }
                for (unsigned running = n; running > 0;) {
                    const uint64_t before = progress;
                    running = 0;
                    for (unsigned t = 0; t < n; ++t) {
                        Fiber& fb = fibers[t];
                        if (fb.done) continue;
                        if (fb.waiting && fb.waiting->generation == fb.wait_generation) {
                            ++running;  // still blocked
                            continue;
                        }
                        current = &fb;
                        threadIdx = {t, 0, 0};
                        switch_context(scheduler, fb.context);
                        running += !fb.done;
                    }
                    if (running > 0 && progress == before) {
                        std::fprintf(stderr,
                                     "emu: deadlock in block (%u, %u, %u): %u threads wait at a barrier "
                                     "that the others never reach\n",
                                     bx, by, bz, running);
                        std::abort();
                    }
                }
            }
}
