//! Kernel study: token embedding lookup (plus GPT-2's learned positions) and the gather of the
//! logit rows.
//!
//! CUDA source: `kernels/embedding.cu` (CUDA studies run on a usable GPU; without one they print
//! `skipped: no CUDA device: <reason>`). CPU reference: `src/backend/cpu/embedding.rs`. Shapes,
//! bytes and FLOPs: `src/study` (`cargo bench --bench embedding`; the same cases: `infermeter
//! kernels --op embedding`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Embedding);
}
