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
//!   runs) over a clock (host clock or CUDA events); criterion does its own loop with the same
//!   clocks.
//! - [`ceiling`]: ceilings measured on the machine at hand (CPU: streaming read bandwidth and the
//!   CPU GEMM's FLOP/s), and [`hardware`]: vendor peak figures of the GPUs the engine targets.
//! - [`gpu`]: the CUDA side: the backend opened once per run ([`gpu::CudaSession`]), CUDA-event
//!   timing with an optional cold-L2 flush, the device-to-device copy and cuBLAS GEMM ceilings,
//!   and the spec peak of the device by name.
//! - [`variant`]: the implementations of an op studied side by side (CUDA attention: the naive
//!   kernel as the baseline, split-KV decode and flash prefill), and each one's speed-up over the
//!   baseline.
//! - [`roofline`]: achieved GB/s and GFLOP/s, the bound that applies (arithmetic intensity against
//!   the ridge point), % of the measured ceiling and % of the spec peak; and the printed table.
//!
//! Devices: a study case runs on a [`Device`], opened as a [`runner::Target`]. The CPU backend
//! always exists (f32). CUDA runs in bf16, f16 or f32; without a usable GPU, opening it fails with
//! "no CUDA device: <reason>" (`backend::cuda::probe`), and benches print that as the reason the
//! CUDA studies were skipped.

pub mod ceiling;
pub mod gpu;
pub mod hardware;
pub mod ops;
pub mod roofline;
pub mod runner;
pub mod sweep;
pub mod timing;
pub mod variant;

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

    /// The default compute dtype of this device's backend (CUDA also runs f16 and f32).
    pub fn dtype(self) -> Dtype {
        match self {
            Device::Cpu => Dtype::F32,
            // the CUDA backend computes in bf16 by default (DESIGN.md, engine decisions)
            Device::Cuda => Dtype::Bf16,
        }
    }

    /// `Ok` when studies can run on this device here; otherwise the reason they cannot ("no CUDA
    /// device: ..."). Probes only; opening the backend ([`runner::Target::open`]) may still fail.
    pub fn availability(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda => match crate::backend::cuda::probe(false).error {
                None => Ok(()),
                Some(msg) => Err(Error::Backend {
                    backend: "cuda",
                    msg,
                }),
            },
        }
    }
}

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

    /// "f32", "f16" or "bf16" (what [`Dtype::name`] gives).
    pub fn parse(name: &str) -> Option<Self> {
        [Dtype::F32, Dtype::F16, Dtype::Bf16]
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name.trim()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_parse_by_name() {
        for d in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            assert_eq!(Dtype::parse(d.name()), Some(d));
        }
        assert_eq!(Dtype::parse(" BF16 "), Some(Dtype::Bf16));
        assert_eq!(Dtype::parse("fp8"), None);
    }

    #[test]
    fn cuda_availability_is_the_probe() {
        assert!(Device::Cpu.availability().is_ok());
        let probe = crate::backend::cuda::probe(false);
        match Device::Cuda.availability() {
            Ok(()) => assert!(probe.usable()),
            Err(e) => assert!(e.to_string().contains("no CUDA device: "), "{e}"),
        }
    }
}
