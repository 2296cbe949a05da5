//! Kernel study: paged causal attention, prefill (a whole prompt) and decode (one new token over
//! its cached context), MHA against GQA 4 and 8.
//!
//! CUDA source: `kernels/attention.cu` (CUDA studies run when the CUDA backend exists; until then
//! they are skipped with the reason printed). CPU reference: `src/backend/cpu/attention.rs`.
//! Shapes, bytes and FLOPs: `src/study` (`cargo bench --bench attention`; the same cases:
//! `infermeter kernels --op attention`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Attention);
}
