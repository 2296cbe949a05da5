//! Kernel study: rotary position embedding on the Q and K heads of the fused QKV rows.
//!
//! CUDA source: `kernels/rope.cu` (CUDA studies run when the CUDA backend exists; until then they
//! are skipped with the reason printed). CPU reference: `src/backend/cpu/rope.rs`. Shapes, bytes
//! and FLOPs: `src/study` (`cargo bench --bench rope`; the same cases: `infermeter kernels --op
//! rope`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Rope);
}
