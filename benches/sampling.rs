//! Kernel study: argmax and temperature / top-k / top-p sampling over the logits.
//!
//! CUDA source: `kernels/sampling.cu` (CUDA studies run when the CUDA backend exists; until then
//! they are skipped with the reason printed). CPU reference: `src/engine/sampling.rs`. Shapes,
//! bytes and FLOPs: `src/study` (`cargo bench --bench sampling`; the same cases: `infermeter
//! kernels --op sampling`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Sampling);
}
