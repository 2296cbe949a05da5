//! CPU matmul: out[m, n] = x[m, k] · w[n, k]ᵀ + bias[n], the layout of every linear layer.
//!
//! **Batch-invariant by construction.** Every output element is reduced in one fixed order, whatever
//! `m` is and wherever the row sits in the batch: lane l of 8 accumulates the products with
//! k ≡ l (mod 8) in increasing k (fused multiply-add where the CPU has it), the 8 lanes are summed in a
//! fixed tree, then the tail k ≥ 8⌊k/8⌋ is added in order. So a token's logits do not depend on which
//! other tokens share its step — the property that lets batched, chunked and preempted generation be
//! tested for exact equality with sequential generation (a library GEMM changes its summation order
//! with the problem shape).
//!
//! Work split: threads take blocks of output columns (weight rows), so each weight byte is read by one
//! thread; within a block, a register tile of 2 rows of x × 4 rows of w (8 accumulators of 8 lanes =
//! 8 AVX registers) walks k. The 4 weight rows (4·k·4 bytes) stay in L2 while all rows of x pass.
//! Roofline: decode (small m) is bound by weight bytes / DRAM bandwidth; prefill by FMA throughput.

use rayon::prelude::*;

const LANES: usize = 8;
/// Rows of x per register tile.
const MR: usize = 2;
/// Rows of w (output columns) per register tile.
const NR: usize = 4;

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
    let block = n.div_ceil(threads * 4).max(16).next_multiple_of(NR);
    let num_blocks = n.div_ceil(block);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let use_fma = fma_available();
    (0..num_blocks).into_par_iter().for_each(|bi| {
        let n0 = bi * block;
        let n1 = (n0 + block).min(n);
        let args = BlockArgs {
            out: out_ptr,
            x,
            w,
            bias,
            m,
            n,
            k,
            n0,
            n1,
        };
        if use_fma {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU supports AVX2 and FMA (checked by `fma_available`).
            unsafe {
                block_avx2_fma(&args)
            };
        } else {
            compute_block::<false>(&args);
        }
    });
}

fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

struct BlockArgs<'a> {
    out: OutPtr,
    x: &'a [f32],
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    m: usize,
    n: usize,
    k: usize,
    /// This task's output columns n0..n1.
    n0: usize,
    n1: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2_fma(a: &BlockArgs) {
    compute_block::<true>(a)
}

/// Columns n0..n1 of the output, every row.
#[inline(always)]
fn compute_block<const FMA: bool>(a: &BlockArgs) {
    let k = a.k;
    fn row(buf: &[f32], i: usize, k: usize) -> &[f32] {
        &buf[i * k..(i + 1) * k]
    }
    let mut j = a.n0;
    while j < a.n1 {
        let nr = (a.n1 - j).min(NR);
        let mut i = 0;
        while i < a.m {
            let mr = (a.m - i).min(MR);
            // Full tiles take the fast path; edges fall back to 1×1 tiles with the same arithmetic.
            if mr == MR && nr == NR {
                let t = tile::<MR, NR, FMA>(
                    [row(a.x, i, k), row(a.x, i + 1, k)],
                    [
                        row(a.w, j, k),
                        row(a.w, j + 1, k),
                        row(a.w, j + 2, k),
                        row(a.w, j + 3, k),
                    ],
                );
                for (r, tr) in t.iter().enumerate() {
                    for (c, &v) in tr.iter().enumerate() {
                        store(a, i + r, j + c, v);
                    }
                }
            } else {
                for r in 0..mr {
                    for c in 0..nr {
                        let t = tile::<1, 1, FMA>([row(a.x, i + r, k)], [row(a.w, j + c, k)]);
                        store(a, i + r, j + c, t[0][0]);
                    }
                }
            }
            i += mr;
        }
        j += nr;
    }
}

#[inline(always)]
fn store(a: &BlockArgs, i: usize, j: usize, v: f32) {
    let v = v + a.bias.map_or(0.0, |b| b[j]);
    debug_assert!(i < a.m && (a.n0..a.n1).contains(&j));
    // SAFETY: column j is in this task's range n0..n1, which no other task writes; i < m, j < n.
    unsafe { *a.out.get().add(i * a.n + j) = v };
}

/// R rows of x times C rows of w, each element in the fixed reduction order, dispatched to the
/// AVX2+FMA build where `FMA` (the caller runs inside a `target_feature` function then).
#[inline(always)]
fn tile<const R: usize, const C: usize, const FMA: bool>(
    xs: [&[f32]; R],
    ws: [&[f32]; C],
) -> [[f32; C]; R] {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA is only true when the CPU has AVX2 and FMA (see `linear`).
        return unsafe { avx2::tile(xs, ws) };
    }
    portable::tile(xs, ws)
}

/// Sum 8 lanes in the fixed tree order, then add the tail products in increasing k.
#[inline(always)]
fn finish(lanes: &[f32; LANES], tail: impl Iterator<Item = (f32, f32)>, fma: bool) -> f32 {
    let s4 = [
        lanes[0] + lanes[4],
        lanes[1] + lanes[5],
        lanes[2] + lanes[6],
        lanes[3] + lanes[7],
    ];
    let mut s = (s4[0] + s4[2]) + (s4[1] + s4[3]);
    for (a, b) in tail {
        s = if fma { a.mul_add(b, s) } else { a * b + s };
    }
    s
}

mod portable {
    use super::{finish, LANES};

    /// Scalar lanes: the same order as the AVX2 kernel, without fused multiply-add.
    #[inline(always)]
    pub fn tile<const R: usize, const C: usize>(xs: [&[f32]; R], ws: [&[f32]; C]) -> [[f32; C]; R] {
        let k = xs[0].len();
        let chunks = k / LANES;
        let mut acc = [[[0.0f32; LANES]; C]; R];
        for ch in 0..chunks {
            let base = ch * LANES;
            for r in 0..R {
                for c in 0..C {
                    for l in 0..LANES {
                        acc[r][c][l] += xs[r][base + l] * ws[c][base + l];
                    }
                }
            }
        }
        let mut out = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let tail = (chunks * LANES..k).map(|kk| (xs[r][kk], ws[c][kk]));
                out[r][c] = finish(&acc[r][c], tail, false);
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{finish, LANES};

    /// One 256-bit accumulator per output element; lane l holds the k ≡ l (mod 8) products.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize, const C: usize>(
        xs: [&[f32]; R],
        ws: [&[f32]; C],
    ) -> [[f32; C]; R] {
        let k = xs[0].len();
        let chunks = k / LANES;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut xv = [_mm256_setzero_ps(); R];
        let mut wv = [_mm256_setzero_ps(); C];
        for ch in 0..chunks {
            let base = ch * LANES;
            for r in 0..R {
                // SAFETY: base + 8 <= k = xs[r].len()
                xv[r] = _mm256_loadu_ps(xs[r].as_ptr().add(base));
            }
            for c in 0..C {
                // SAFETY: base + 8 <= k <= ws[c].len()
                wv[c] = _mm256_loadu_ps(ws[c].as_ptr().add(base));
            }
            for r in 0..R {
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_ps(xv[r], wv[c], acc[r][c]);
                }
            }
        }
        let mut out = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut lanes = [0.0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][c]);
                let tail = (chunks * LANES..k).map(|kk| (xs[r][kk], ws[c][kk]));
                out[r][c] = finish(&lanes, tail, true);
            }
        }
        out
    }
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

    fn data(len: usize, mul: usize, modulo: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * mul % modulo) as f32 - (modulo / 2) as f32) / modulo as f32)
            .collect()
    }

    #[test]
    fn linear_matches_naive_on_odd_shapes() {
        for &(m, n, k) in &[
            (1, 37, 19),
            (3, 100, 64),
            (8, 33, 70),
            (29, 130, 45),
            (64, 17, 3),
            (5, 5, 8),
        ] {
            let x = data(m * k, 7, 13);
            let w = data(n * k, 5, 11);
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

    /// A row's result is bit-identical whatever the batch around it.
    #[test]
    fn rows_are_batch_invariant() {
        let (n, k) = (67, 203);
        let w = data(n * k, 5, 17);
        let x = data(9 * k, 7, 19);
        let mut full = vec![0.0; 9 * n];
        linear(&mut full, &x, &w, None, 9, n, k);
        for i in 0..9 {
            let mut alone = vec![0.0; n];
            linear(&mut alone, &x[i * k..(i + 1) * k], &w, None, 1, n, k);
            assert_eq!(alone, full[i * n..(i + 1) * n], "row {i}");
        }
        for (m0, m1) in [(1, 4), (2, 9), (3, 8)] {
            let mut part = vec![0.0; (m1 - m0) * n];
            linear(&mut part, &x[m0 * k..m1 * k], &w, None, m1 - m0, n, k);
            assert_eq!(part, full[m0 * n..m1 * n]);
        }
    }
}
