//! Kernel study: rotary position embedding on the Q and K heads of the fused QKV rows.
//!
//! CUDA source: `kernels/rope.cu` (CUDA studies run on a usable GPU; without one they print
//! `skipped: no CUDA device: <reason>`). CPU reference: `src/backend/cpu/rope.rs`. Shapes, bytes
//! and FLOPs: `src/study` (`cargo bench --bench rope`; the same cases: `infermeter kernels --op
//! rope`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Rope);
}
