//! Kernel study: writing the new tokens' K and V into the paged cache.
//!
//! CUDA source: `kernels/kv_write.cu` (CUDA studies run on a usable GPU; without one they print
//! `skipped: no CUDA device: <reason>`). CPU reference: `src/backend/cpu/kv_write.rs`. Shapes,
//! bytes and FLOPs: `src/study` (`cargo bench --bench kv_write`; the same cases: `infermeter
//! kernels --op kv_write`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::KvWrite);
}
