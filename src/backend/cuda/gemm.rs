//! `linear` through cuBLAS: out[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n]).
//!
//! ## Row-major ↔ column-major
//!
//! cuBLAS is column-major; every buffer here is row-major. A row-major [r, c] buffer is, read
//! column-major, the transposed matrix [c, r] with leading dimension c. So:
//!
//! - `out` row-major [m, n] is column-major C = outᵀ, an n × m matrix with ldc = n;
//! - `w` row-major [n, k] is column-major wᵀ (k × n, lda = k); we need op(A) = w (n × k), so
//!   transa = T;
//! - `x` row-major [m, k] is column-major xᵀ (k × m, ldb = k), which is op(B) as is: transb = N.
//!
//! outᵀ = w · xᵀ, i.e. `gemm(transa = T, transb = N, m' = n, n' = m, k' = k, A = w, lda = k,
//! B = x, ldb = k, C = out, ldc = n)`: "TN", the layout cuBLAS runs fastest for weights stored as
//! nn.Linear stores them.
//!
//! ## Precision
//!
//! bf16 and f16 use `cublasGemmEx` with CUBLAS_COMPUTE_32F (f32 accumulation, one rounding to the
//! output dtype); f32 uses CUBLAS_COMPUTE_32F as well, which is IEEE f32 (no TF32: that would need
//! CUBLAS_COMPUTE_32F_FAST_TF32 or the TF32 math mode, neither of which is set).
//!
//! ## Bias
//!
//! The beta = 1 trick: the bias row is first broadcast into every row of `out` (the
//! `gather_logit_rows` kernel with all-zero indices, one launch), then the GEMM runs with beta = 1,
//! so out = x·wᵀ + bias is accumulated in f32 and rounded once, as the f32 CPU reference computes it.
//! (A cuBLASLt epilogue would fuse the bias into the GEMM; this keeps to the plain GEMM for now.)

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::CudaDtype;
use crate::error::{Error, Result};

fn err(msg: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: msg.into(),
    }
}

/// cuBLAS's workspace: NVIDIA recommends 32 MiB on Hopper (4 MiB before); one size for all.
const WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLAS handle bound to the backend's stream, with a workspace of its own.
#[derive(Debug)]
pub struct Gemm {
    blas: CudaBlas,
    /// Set with cublasSetWorkspace: without it cuBLAS allocates its workspace itself, which is
    /// illegal while a step is being recorded into a CUDA graph (`graph.rs`). Kept alive as long
    /// as the handle.
    _workspace: CudaSlice<u8>,
}

impl Gemm {
    /// Create the handle (cuBLAS must have been probed present: cudarc panics otherwise).
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        // SAFETY: dlopen of the candidates only.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(err("cuBLAS (libcublas) did not load"));
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err(format!("cublasCreate: {e}")))?;
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| err(format!("allocating the cuBLAS workspace: {e}")))?;
        {
            let (ptr, _sync) = workspace.device_ptr(&stream);
            // SAFETY: a live handle and a device buffer of WORKSPACE_BYTES that outlives it (both
            // owned by Self; fields drop in declaration order, the handle first).
            let status = unsafe {
                blas_sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut c_void, WORKSPACE_BYTES)
            };
            if status != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(err(format!("cublasSetWorkspace: {status:?}")));
            }
        }
        Ok(Self {
            blas,
            _workspace: workspace,
        })
    }

    /// out[m, n] = x[m, k] · w[n, k]ᵀ + (beta = 1: out, else 0) — see the module docs for the
    /// mapping onto column-major cuBLAS. Any of the three may be a view into a larger buffer (a
    /// mixture-of-experts layer's expert inside its stacked weights, its rows inside the step's).
    #[allow(clippy::too_many_arguments)]
    pub fn linear<T, O, X, W>(
        &self,
        stream: &Arc<CudaStream>,
        out: &mut O,
        x: &X,
        w: &W,
        accumulate: bool,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()>
    where
        T: CudaDtype,
        O: DevicePtrMut<T>,
        X: DevicePtr<T>,
        W: DevicePtr<T>,
    {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let int = |v: usize, what: &str| {
            i32::try_from(v).map_err(|_| err(format!("linear: {what} = {v} exceeds cuBLAS's int")))
        };
        let (mi, ni, ki) = (int(m, "m")?, int(n, "n")?, int(k, "k")?);
        let alpha = 1.0f32;
        let beta = if accumulate { 1.0f32 } else { 0.0 };
        let (w_ptr, _w_sync) = w.device_ptr(stream);
        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (out_ptr, _out_sync) = out.device_ptr_mut(stream);
        // SAFETY: the pointers are live device buffers of at least n*k, m*k and m*n elements (the
        // Backend impl checked), of the dtype named; alpha and beta are f32 as COMPUTE_32F requires.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                &alpha as *const f32 as *const c_void,
                w_ptr as *const c_void,
                T::CUDA_DATA_TYPE,
                ki,
                x_ptr as *const c_void,
                T::CUDA_DATA_TYPE,
                ki,
                &beta as *const f32 as *const c_void,
                out_ptr as *mut c_void,
                T::CUDA_DATA_TYPE,
                ni,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| err(format!("cublasGemmEx (m={m}, n={n}, k={k}): {e}")))
    }
}
