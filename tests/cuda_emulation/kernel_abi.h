// kernel_abi.h — what a kernel module built by the emulated NVRTC (fake_cuda.cpp) exports: each
// `extern "C" __global__` kernel of the source, callable through cuLaunchKernel's `void** params`.
//
// fake_cuda_bind(name, params) copies the kernel's arguments out of `params` (one pointer per
// argument, as cuLaunchKernel passes them) into a closure, so a launch recorded during stream capture
// keeps the values it was recorded with, as a CUDA graph's kernel node does; fake_cuda_run launches
// the closure over a grid through emu.h. The argument types come from the kernel's own signature
// (template deduction), so nothing is written per kernel.
#pragma once
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

struct FakeCudaClosure {
    virtual ~FakeCudaClosure() = default;
    virtual void run(dim3 grid, dim3 block) = 0;
};

template <class... A>
struct FakeCudaKernelCall final : FakeCudaClosure {
    void (*kernel)(A...);
    std::tuple<std::decay_t<A>...> args;
    FakeCudaKernelCall(void (*k)(A...), std::tuple<std::decay_t<A>...> a) : kernel(k), args(std::move(a)) {}
    void run(dim3 grid, dim3 block) override {
        launch(grid, block, [this] { std::apply(kernel, args); });
    }
};

template <class... A, size_t... I>
FakeCudaClosure* fake_cuda_bind_args(void (*k)(A...), void** params, std::index_sequence<I...>) {
    return new FakeCudaKernelCall<A...>(k, std::tuple<std::decay_t<A>...>(*static_cast<std::decay_t<A>*>(params[I])...));
}

template <class... A>
FakeCudaClosure* fake_cuda_bind_kernel(void (*k)(A...), void** params) {
    return fake_cuda_bind_args(k, params, std::index_sequence_for<A...>{});
}

// The module's exports; FAKE_CUDA_KERNEL(name) lines (generated from the source) fill the table.
#define FAKE_CUDA_KERNEL(name) \
    if (std::strcmp(kernel_name, #name) == 0) return params ? fake_cuda_bind_kernel(name, params) : reinterpret_cast<FakeCudaClosure*>(1);
