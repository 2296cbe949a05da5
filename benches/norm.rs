//! Kernel study: LayerNorm, RMSNorm, fused residual-add + RMSNorm, in-place add.
//!
//! CUDA source: `kernels/norm.cu` (CUDA studies run on a usable GPU; without one they print
//! `skipped: no CUDA device: <reason>`). CPU reference: `src/backend/cpu/norm.rs`. Shapes, bytes
//! and FLOPs: `src/study` (`cargo bench --bench norm`; the same cases: `infermeter kernels --op
//! norm`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Norm);
}
