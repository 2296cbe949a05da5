//! Kernel study: argmax and temperature / top-k / top-p sampling over the logits.
//!
//! CUDA source: `kernels/sampling.cu` (CUDA studies run on a usable GPU; without one they print
//! `skipped: no CUDA device: <reason>`). CPU reference: `src/engine/sampling.rs`. Shapes, bytes and
//! FLOPs: `src/study` (`cargo bench --bench sampling`; the same cases: `infermeter kernels --op
//! sampling`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Sampling);
}
