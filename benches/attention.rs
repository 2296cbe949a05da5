//! Kernel study: paged causal attention, prefill (a whole prompt) and decode (one new token over
//! its cached context), MHA against GQA 4 and 8.
//!
//! CUDA source: `kernels/attention.cu` (CUDA studies run on a usable GPU; without one they print
//! `skipped: no CUDA device: <reason>`). CPU reference: `src/backend/cpu/attention.rs`. Shapes,
//! bytes and FLOPs: `src/study` (`cargo bench --bench attention`; the same cases: `infermeter
//! kernels --op attention`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Attention);
}
