//! The engine: model + backend + KV cache + scheduler; the step loop; sampling.

pub mod batch;
pub mod core;
pub mod generate;
pub mod offline;
pub mod sampling;

pub use core::{
    window_release_note, Engine, EngineConfig, EngineRequest, FinishedRequest, RequestOptions,
    StepRecord, TokenEvent,
};
pub use generate::{generate, FinishReason, GenerateOutput, GenerateRequest};
pub use sampling::{Sampler, SamplingParams};
