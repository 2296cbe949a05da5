//! Shared by tests/cuda_*.rs: open the CUDA backend or skip with the reason, per-dtype tolerances,
//! random data rounded to the compute dtype, and closeness checks that name the worst element.
#![allow(dead_code)]

use infermeter::backend::cuda::{self, CudaBackend, CudaDtype};
use infermeter::backend::Backend;
use infermeter::model::tensor_store::HostTensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// True when CUDA is usable; otherwise prints `skipped: no CUDA device: <reason>` and returns false
/// (the calling test then passes without running).
pub fn gpu_or_skip() -> bool {
    match cuda::probe(false).error {
        None => true,
        Some(reason) => {
            println!("skipped: {reason}");
            false
        }
    }
}

/// The backend of dtype `T` on device 0. Only call after [`gpu_or_skip`]: with a usable GPU, a
/// backend that fails to open (compile error, cuBLAS failure) fails the test.
pub fn open<T: CudaDtype>() -> CudaBackend<T> {
    CudaBackend::<T>::new().unwrap_or_else(|e| {
        panic!(
            "CUDA is usable but the {} backend failed to open: {e}",
            T::NAME
        )
    })
}

/// Run `$check::<T>(&backend)` for bf16, f16 and f32, or skip them all without a GPU (import with
/// `#[macro_use] mod cuda_support;`).
macro_rules! for_each_dtype {
    ($check:ident) => {{
        if $crate::cuda_support::gpu_or_skip() {
            $check::<half::bf16>(&$crate::cuda_support::open::<half::bf16>());
            $check::<half::f16>(&$crate::cuda_support::open::<half::f16>());
            $check::<f32>(&$crate::cuda_support::open::<f32>());
        }
    }};
}

/// Machine epsilon of the compute dtype (2^-7 bf16, 2^-10 f16, 2^-23 f32): one unit in the last
/// place at 1.0. A value rounded once to T is within eps/2 relative of the f32 value.
pub fn eps<T: CudaDtype>() -> f32 {
    match T::NAME {
        "bf16" => 2f32.powi(-7),
        "f16" => 2f32.powi(-10),
        _ => f32::EPSILON,
    }
}

/// Round every value to T and back: the inputs both backends then see exactly.
pub fn round<T: CudaDtype>(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| T::from_f32(x).to_f32()).collect()
}

/// `n` values uniform in [-scale, scale), rounded to T.
pub fn rand_t<T: CudaDtype>(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    round::<T>(&v)
}

pub fn upload<T: CudaDtype>(b: &CudaBackend<T>, v: &[f32]) -> <CudaBackend<T> as Backend>::Buffer {
    b.upload(&HostTensor::new(vec![v.len()], v.to_vec()))
        .expect("upload")
}

/// Assert |got - want| <= abs + rel * |want| elementwise; the message names the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (abs + rel * w.abs());
        if (excess > 0.0 || excess.is_nan())
            && worst.is_none_or(|(_, e)| excess > e || excess.is_nan())
        {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i}: got {} want {} (|diff| {} > {abs} + {rel} * |want|)",
            got[i],
            want[i],
            (got[i] - want[i]).abs()
        );
    }
}

/// The largest |a - b|.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
