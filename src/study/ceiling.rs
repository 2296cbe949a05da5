//! Ceilings measured on the machine at hand: what a study's "% of measured ceiling" divides by.
//!
//! CPU (measured here):
//! - **read bandwidth**: a streaming sum of u64 words over a buffer much larger than the last-level
//!   cache (at least 256 MiB and 8× the L3 size), split in one contiguous slice per worker thread
//!   of rayon's pool, best of several passes. Summing (not copying) measures pure reads, which is
//!   what the decode-time ops mostly do; the single-thread figure is kept too, because most CPU
//!   reference ops run on one thread (only matmul and attention are parallel).
//! - **GEMM FLOP/s**: the CPU matmul (`backend/cpu/matmul.rs`, the engine's own register-tiled
//!   AVX2/FMA kernel) at a large square shape, 2 n³ FLOPs per call, best of several calls. This is
//!   the engine's attainable compute, not the silicon's peak (no vendor peak is tabulated for
//!   CPUs).
//!
//! GPU (measured on the device by [`super::gpu::CudaSession::measure_ceilings`], re-exported here
//! as [`measure_gpu`]): device-to-device copy bandwidth (read + write bytes) and the cuBLAS GEMM's
//! FLOP/s in the run's dtype; the vendor peaks are in [`super::hardware`].

use std::time::Instant;

use rayon::prelude::*;

use crate::backend::cpu::matmul;
use crate::error::{Error, Result};

use super::Device;

/// Measured ceilings of one device.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ceilings {
    pub device: Device,
    /// Best read bandwidth, GB/s (10⁹ bytes per second), all worker threads.
    pub memory_gb_s: f64,
    /// How `memory_gb_s` was measured.
    pub memory_method: String,
    /// Best matmul throughput, GFLOP/s.
    pub compute_gflop_s: f64,
    /// How `compute_gflop_s` was measured.
    pub compute_method: String,
    /// CPU: read bandwidth of one thread, GB/s (most CPU reference ops are single-threaded).
    pub memory_gb_s_one_thread: Option<f64>,
    /// Worker threads the measurement used.
    pub threads: usize,
}

impl Ceilings {
    /// The ridge point: FLOPs per byte above which an op is compute-bound.
    pub fn ridge(&self) -> f64 {
        if self.memory_gb_s > 0.0 {
            self.compute_gflop_s / self.memory_gb_s
        } else {
            f64::INFINITY
        }
    }
}

/// How hard to measure.
#[derive(Debug, Clone, Copy)]
pub struct CeilingOptions {
    /// Smallest read buffer.
    pub min_read_bytes: usize,
    /// The read buffer is at least this many times the L3 cache, where its size is known.
    pub l3_multiple: usize,
    /// Passes over the read buffer (the best counts).
    pub read_passes: usize,
    /// Side of the square GEMM.
    pub gemm_n: usize,
    /// Timed GEMM calls (the best counts), after one untimed.
    pub gemm_calls: usize,
}

impl Default for CeilingOptions {
    fn default() -> Self {
        Self {
            min_read_bytes: 256 << 20,
            l3_multiple: 8,
            read_passes: 5,
            gemm_n: 1024,
            gemm_calls: 5,
        }
    }
}

pub use super::gpu::GpuCeilingOptions;

/// Measure a GPU's ceilings: the device-to-device copy and the cuBLAS GEMM (see [`super::gpu`]).
pub fn measure_gpu(
    session: &super::gpu::CudaSession,
    opts: &GpuCeilingOptions,
) -> Result<Ceilings> {
    session.measure_ceilings(opts)
}

/// Measure the CPU's ceilings.
pub fn measure_cpu(opts: &CeilingOptions) -> Result<Ceilings> {
    if opts.read_passes == 0 || opts.gemm_calls == 0 || opts.gemm_n == 0 {
        return Err(Error::Invalid(
            "ceiling measurement needs at least one pass, one call and a non-empty GEMM".into(),
        ));
    }
    let threads = rayon::current_num_threads().max(1);
    let l3 = l3_bytes().unwrap_or(0);
    let mut bytes = opts.min_read_bytes.max(opts.l3_multiple * l3);
    let avail = crate::telemetry::host::HostInfo::collect().memory_available_bytes;
    if let Some(avail) = avail {
        // leave most of the memory alone; the read needs only to overflow the caches
        bytes = bytes
            .min((avail / 4) as usize)
            .max(opts.min_read_bytes.min(64 << 20));
    }
    let words = (bytes / 8).next_multiple_of(8 * threads);
    // first touch in parallel, so pages spread as the reading threads will find them
    let mut buf = vec![0u64; words];
    buf.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(i, c)| c.iter_mut().for_each(|w| *w = i as u64 | 1));
    let all = best_read_gb_s(&buf, threads, opts.read_passes);
    let one = best_read_gb_s(&buf, 1, opts.read_passes);
    drop(buf);

    let n = opts.gemm_n;
    let x = super::runner::fill(n * n, 11, -1.0, 1.0);
    let w = super::runner::fill(n * n, 12, -1.0, 1.0);
    let mut out = vec![0.0f32; n * n];
    matmul::linear(&mut out, &x, &w, None, n, n, n);
    let mut best = f64::INFINITY;
    for _ in 0..opts.gemm_calls {
        let t = Instant::now();
        matmul::linear(&mut out, &x, &w, None, n, n, n);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&out);
    }
    let gflop_s = 2.0 * (n as f64).powi(3) / best.max(1e-12) / 1e9;
    let mib = (words * 8) as f64 / (1u64 << 20) as f64;
    Ok(Ceilings {
        device: Device::Cpu,
        memory_gb_s: all,
        memory_method: format!(
            "streaming u64 sum over {mib:.0} MiB (L3: {}), {threads} thread(s), best of {} passes",
            if l3 > 0 {
                format!("{} MiB", l3 >> 20)
            } else {
                "unknown".into()
            },
            opts.read_passes
        ),
        compute_gflop_s: gflop_s,
        compute_method: format!(
            "CPU matmul (backend/cpu/matmul.rs, {}) at m = n = k = {n}, f32, {threads} \
             thread(s), best of {} calls",
            if avx2_fma() { "AVX2/FMA" } else { "portable" },
            opts.gemm_calls
        ),
        memory_gb_s_one_thread: Some(one),
        threads,
    })
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Best GB/s of `passes` parallel sums over `buf`, one contiguous slice per thread.
fn best_read_gb_s(buf: &[u64], threads: usize, passes: usize) -> f64 {
    let per = buf.len().div_ceil(threads).max(1);
    let mut best = f64::INFINITY;
    for _ in 0..passes {
        let t = Instant::now();
        let s: u64 = if threads == 1 {
            sum(buf)
        } else {
            buf.par_chunks(per).map(sum).reduce(|| 0, u64::wrapping_add)
        };
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(s);
    }
    (buf.len() * 8) as f64 / best.max(1e-12) / 1e9
}

/// Wrapping sum with 8 independent lanes (vectorises to 256-bit adds).
fn sum(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = c.chunks_exact(8);
    for ch in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a = a.wrapping_add(v);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &v| a.wrapping_add(v));
    acc.iter().fold(tail, |a, &v| a.wrapping_add(v))
}

/// The L3 (last-level) cache size from sysfs, where Linux tells it.
fn l3_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index3/size").ok()?;
    let t = text.trim();
    let (num, mult) = match t.strip_suffix('K') {
        Some(n) => (n, 1usize << 10),
        None => match t.strip_suffix('M') {
            Some(n) => (n, 1 << 20),
            None => (t, 1),
        },
    };
    num.parse::<usize>().ok().map(|n| n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_handles_tails() {
        let v: Vec<u64> = (1..=13).collect();
        assert_eq!(sum(&v), 91);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn small_measurement_gives_positive_ceilings() {
        let c = measure_cpu(&CeilingOptions {
            min_read_bytes: 8 << 20,
            l3_multiple: 0,
            read_passes: 1,
            gemm_n: 64,
            gemm_calls: 1,
        })
        .unwrap();
        assert!(c.memory_gb_s > 0.0 && c.compute_gflop_s > 0.0, "{c:?}");
        assert!(c.ridge().is_finite());
        assert!(measure_cpu(&CeilingOptions {
            read_passes: 0,
            ..CeilingOptions::default()
        })
        .is_err());
    }
}
