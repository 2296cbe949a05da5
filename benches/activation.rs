//! Kernel study: GPT-2's gelu_new and Llama's SiLU-gated product.
//!
//! CUDA source: `kernels/activation.cu` (CUDA studies run on a usable GPU; without one they print
//! `skipped: no CUDA device: <reason>`). CPU reference: `src/backend/cpu/activation.rs`. Shapes,
//! bytes and FLOPs: `src/study` (`cargo bench --bench activation`; the same cases: `infermeter
//! kernels --op activation`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Activation);
}
