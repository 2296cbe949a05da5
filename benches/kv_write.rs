//! Kernel study: writing the new tokens' K and V into the paged cache.
//!
//! CUDA source: `kernels/kv_write.cu` (CUDA studies run when the CUDA backend exists; until then
//! they are skipped with the reason printed). CPU reference: `src/backend/cpu/kv_write.rs`. Shapes,
//! bytes and FLOPs: `src/study` (`cargo bench --bench kv_write`; the same cases: `infermeter
//! kernels --op kv_write`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::KvWrite);
}
