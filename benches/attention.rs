//! Kernel study: paged causal attention, prefill (a whole prompt) and decode (one new token over
//! its cached context), MHA against GQA 4 and 8.
//!
//! CUDA sources: `kernels/attention.cu` (the naive kernel), `kernels/attention_decode.cu`
//! (split-KV decode) and `kernels/attention_prefill.cu` (flash prefill); on CUDA every case runs
//! once per variant (`naive`, `auto`, `auto-sync` for prefill and `auto-1split` for decode;
//! `INFERMETER_BENCH_ATTENTION` picks) and the table gives each one's speed-up over naive. CUDA studies run on a usable GPU;
//! without one they print `skipped: no CUDA device: <reason>`. CPU reference:
//! `src/backend/cpu/attention.rs`. Shapes, bytes and FLOPs: `src/study` (`cargo bench --bench
//! attention`; the same cases: `infermeter kernels --op attention`; issue 5's acceptance shapes:
//! `INFERMETER_BENCH_SWEEP=attention-acceptance`).

mod common;

fn main() {
    common::main_for(infermeter::study::Family::Attention);
}
