//! Kernel studies: every op of the engine measured against what the hardware allows (its roofline).
//!
//! The same machinery serves `cargo bench` (criterion, `benches/<family>.rs`) and `infermeter
//! kernels` (a quick table and a results file):
//!
//! - [`ops`]: the ops ([`Op`], named as the kernels in `kernels/*.cu`), their shape parameters
//!   ([`Shape`]) and, per call, the bytes moved and FLOPs done ([`Cost`]; what is counted is
//!   documented there).
//! - [`sweep`]: the shapes that matter, taken from model configs (`models/*/config.json`): hidden
//!   sizes, head counts, GQA ratios, context lengths, batch sizes.
//! - [`runner`]: buffers and metadata for one case, and a closure that runs the op once. Ops of the
//!   `Backend` trait are built generically over the backend; the sampler and the whole decode step
//!   go through their own code paths.
//! - [`timing`]: the quick timing loop of `infermeter kernels` (warmup, then median and min of N
//!   runs); criterion does its own.
//! - [`ceiling`]: ceilings measured on the machine at hand (CPU: streaming read bandwidth and the
//!   CPU GEMM's FLOP/s), and [`hardware`]: vendor peak figures of the GPUs the engine targets.
//! - [`roofline`]: achieved GB/s and GFLOP/s, the bound that applies (arithmetic intensity against
//!   the ridge point), % of the measured ceiling and % of the spec peak; and the printed table.
//!
//! Devices: a study case runs on a [`Device`]. The CPU backend always exists. The studies have no
//! CUDA path yet, so [`Device::Cuda`] cases are reported as skipped with that reason (a CUDA arm in
//! [`runner::prepare`], GPU timing with CUDA events and the device-to-device copy ceiling arrive
//! with the CUDA backend).

pub mod ceiling;
pub mod hardware;
pub mod ops;
pub mod roofline;
pub mod runner;
pub mod sweep;
pub mod timing;

pub use ops::{Case, Cost, Family, Op, Shape};

use crate::error::{Error, Result};

/// Where a study runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU backend (f32 reference), on rayon's global pool.
    Cpu,
    /// A CUDA device through the CUDA backend.
    Cuda,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }

    /// Every device a study may target, in the order benches visit them.
    pub const ALL: [Device; 2] = [Device::Cpu, Device::Cuda];

    /// The compute dtype of this device's backend.
    pub fn dtype(self) -> Dtype {
        match self {
            Device::Cpu => Dtype::F32,
            // the CUDA backend computes in bf16 by default (DESIGN.md, engine decisions)
            Device::Cuda => Dtype::Bf16,
        }
    }

    /// `Ok` when studies can run on this device here; otherwise the reason they cannot.
    pub fn availability(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda => Err(Error::Backend {
                backend: "cuda",
                msg: NO_CUDA.into(),
            }),
        }
    }
}

/// Why CUDA studies do not run in this build.
pub const NO_CUDA: &str = "no CUDA backend for the kernel studies in this build: GPU kernels \
cannot be measured yet (CUDA-event timing and the GPU ceilings are not implemented), so CUDA \
studies are skipped";

/// Element type of a study's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}
