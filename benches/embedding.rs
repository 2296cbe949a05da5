//! Kernel study: token embedding lookup (plus GPT-2's learned positions) and the gather of the
//! logit rows.
//!
//! CUDA source: `kernels/embedding.cu` (CUDA studies run when the CUDA backend exists; until then
//! they are skipped with the reason printed). CPU reference: `src/backend/cpu/embedding.rs`.
//! Shapes, bytes and FLOPs: `src/study` (`cargo bench --bench embedding`; the same cases:
//! `infermeter kernels --op embedding`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Embedding);
}
