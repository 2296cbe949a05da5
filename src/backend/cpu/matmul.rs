//! CPU matmul: out[m, n] = x[m, k] · w[n, k]ᵀ + bias[n], the layout of every linear layer.
//!
//! Parallel over blocks of output columns (weight rows), so each weight byte is read by one thread:
//! - m < `SMALL_M` (decode): dot products, each weight row streamed once for all m rows of x. This is
//!   memory-bound: its roofline is weight bytes / DRAM bandwidth.
//! - otherwise (prefill): `matrixmultiply::sgemm` on each column block (packed, cache-blocked, with its
//!   own runtime AVX/FMA dispatch).

use rayon::prelude::*;

const SMALL_M: usize = 8;

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output; see `linear`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not the field) so closures capture the whole `Send` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// out[m, n] = x[m, k] · w[n, k]ᵀ + bias[n]
pub fn linear(
    out: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) {
    assert!(out.len() >= m * n && x.len() >= m * k && w.len() >= n * k);
    if let Some(b) = bias {
        assert!(b.len() >= n);
    }
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Enough blocks to balance the threads, none so small that per-task overhead dominates.
    let block = n.div_ceil(threads * 4).max(16);
    let num_blocks = n.div_ceil(block);
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..num_blocks).into_par_iter().for_each(|bi| {
        let n0 = bi * block;
        let n1 = (n0 + block).min(n);
        if m < SMALL_M {
            for j in n0..n1 {
                let wj = &w[j * k..(j + 1) * k];
                let b = bias.map_or(0.0, |b| b[j]);
                for i in 0..m {
                    let v = dot(&x[i * k..(i + 1) * k], wj) + b;
                    // SAFETY: column j belongs to this task only; (i, j) is inside out's m * n.
                    unsafe { *out_ptr.get().add(i * n + j) = v };
                }
            }
        } else {
            // SAFETY: sgemm reads x [m, k] and the weight rows n0..n1 (as a [k, n1 - n0] matrix with
            // row stride 1 and column stride k), and writes only columns n0..n1 of out (row stride n),
            // which no other task touches.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n1 - n0,
                    1.0,
                    x.as_ptr(),
                    k as isize,
                    1,
                    w.as_ptr().add(n0 * k),
                    1,
                    k as isize,
                    0.0,
                    out_ptr.get().add(n0),
                    n as isize,
                    1,
                );
            }
            if let Some(b) = bias {
                for i in 0..m {
                    for (j, bj) in b.iter().enumerate().take(n1).skip(n0) {
                        // SAFETY: as above, column j is this task's.
                        unsafe { *out_ptr.get().add(i * n + j) += bj };
                    }
                }
            }
        }
    });
}

/// Dot product with runtime dispatch to an AVX2+FMA build of the same loop.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features this function is compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

/// 16 independent accumulators so the compiler can vectorise without reassociating one sum.
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [0.0f32; 16];
    let chunks = len / 16;
    for c in 0..chunks {
        let (ac, bc) = (&a[c * 16..c * 16 + 16], &b[c * 16..c * 16 + 16]);
        for l in 0..16 {
            acc[l] = ac[l].mul_add(bc[l], acc[l]);
        }
    }
    let tail: f32 = a[chunks * 16..]
        .iter()
        .zip(&b[chunks * 16..])
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for kk in 0..k {
                    s += x[i * k + kk] as f64 * w[j * k + kk] as f64;
                }
                out[i * n + j] = s as f32 + bias.map_or(0.0, |b| b[j]);
            }
        }
        out
    }

    #[test]
    fn linear_matches_naive_for_small_and_large_m() {
        for &(m, n, k) in &[
            (1, 37, 19),
            (3, 100, 64),
            (8, 33, 70),
            (29, 130, 45),
            (64, 17, 3),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 / 10.0).collect();
            for bias in [None, Some(b.as_slice())] {
                let mut out = vec![0.0; m * n];
                linear(&mut out, &x, &w, bias, m, n, k);
                let want = naive(&x, &w, bias, m, n, k);
                for (a, e) in out.iter().zip(&want) {
                    assert!((a - e).abs() < 1e-4, "m={m} n={n} k={k}: {a} vs {e}");
                }
            }
        }
    }
}
