//! Kernel study: the linear layer's GEMM, `out[m, n] = x[m, k] · w[n, k]ᵀ`, from GEMV (decode, m =
//! 1, bound by weight bytes) to a prefill chunk (compute-bound), at Llama 3.1 8B's projection
//! shapes.
//!
//! CPU: the batch-invariant AVX2/FMA register-tiled kernel `src/backend/cpu/matmul.rs` (the same
//! kernel, at a large square shape, is the measured compute ceiling). GPU: cuBLAS through the CUDA
//! backend (skipped with the reason printed without a GPU; its square GEMM is the GPU compute
//! ceiling). Shapes, bytes and FLOPs: `src/study` (`cargo bench --bench matmul`; the same cases:
//! `infermeter kernels --op matmul`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Matmul);
}
