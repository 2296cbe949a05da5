//! infermeter: measure LLM inference — a reference engine (CPU and, later, CUDA backends over a paged
//! KV cache) and a load generator, measured the same way.
//!
//! Layout (see DESIGN.md): `model` (configs, weights, forward pass), `backend` (the op trait; `cpu` is
//! the f32 reference), `engine` (generation, sampling), `cli` (thin glue).

pub mod backend;
pub mod cli;
pub mod client;
pub mod engine;
pub mod error;
pub mod kv;
pub mod metrics;
pub mod mock;
pub mod model;
pub mod report;
pub mod sched;
pub mod server;
pub mod study;
pub mod telemetry;
pub mod util;
pub mod workload;

pub use error::{Error, Result};
