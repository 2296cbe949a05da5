//! Kernel study: GPT-2's gelu_new and Llama's SiLU-gated product.
//!
//! CUDA source: `kernels/activation.cu` (CUDA studies run when the CUDA backend exists; until then
//! they are skipped with the reason printed). CPU reference: `src/backend/cpu/activation.rs`.
//! Shapes, bytes and FLOPs: `src/study` (`cargo bench --bench activation`; the same cases:
//! `infermeter kernels --op activation`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Activation);
}
