//! Kernel study: a whole decode step of a model with dummy weights (every op of the forward pass,
//! the lm_head, and the greedy pick), for GPT-2 small at batch 1 and 16 and TinyLlama 1.1B at batch
//! 1. Bytes are the weights and KV cache the step reads; FLOPs the matmuls and attention.
//!
//! CPU: `Model::forward` on the CPU backend (`src/model/forward.rs`). GPU: the same forward pass on
//! the CUDA backend (skipped with the reason printed without a GPU). Shapes, bytes and FLOPs:
//! `src/study` (`cargo bench --bench decode_step`; the same cases: `infermeter kernels --op
//! decode_step`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::DecodeStep);
}
