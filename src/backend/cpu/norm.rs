//! LayerNorm and RMSNorm over the last dimension, computed in f32 as transformers does.

/// out[r] = (x[r] - mean) / sqrt(var + eps) * weight + bias. out, x: [rows, cols]; weight, bias: [cols]
pub fn layernorm(
    out: &mut [f32],
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows: usize,
    cols: usize,
    eps: f32,
) {
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let mean = xr.iter().sum::<f32>() / cols as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        let or = &mut out[r * cols..(r + 1) * cols];
        for c in 0..cols {
            or[c] = (xr[c] - mean) * inv * weight[c] + bias[c];
        }
    }
}

/// out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight. out, x: [rows, cols]; weight: [cols]
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], rows: usize, cols: usize, eps: f32) {
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / cols as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        let or = &mut out[r * cols..(r + 1) * cols];
        for c in 0..cols {
            or[c] = weight[c] * (xr[c] * inv);
        }
    }
}

/// OLMo 2's QK norm, in place: in each row of `qkv` the Q part `[0, q_cols)` and the K part
/// `[q_cols, q_cols + k_cols)` are each RMS-normalised as one vector and scaled by `q_norm` /
/// `k_norm`; V (the rest of the row) is untouched.
/// qkv: [rows, q_cols + 2 * k_cols]; q_norm: [q_cols]; k_norm: [k_cols]
pub fn qk_rmsnorm(
    qkv: &mut [f32],
    q_norm: &[f32],
    k_norm: &[f32],
    rows: usize,
    q_cols: usize,
    k_cols: usize,
    eps: f32,
) {
    let width = q_cols + 2 * k_cols;
    for row in qkv[..rows * width].chunks_exact_mut(width) {
        let (q, rest) = row.split_at_mut(q_cols);
        for (part, weight) in [(q, q_norm), (&mut rest[..k_cols], k_norm)] {
            let ms = part.iter().map(|v| v * v).sum::<f32>() / part.len() as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for (v, w) in part.iter_mut().zip(weight) {
                *v = w * (*v * inv);
            }
        }
    }
}

/// residual += delta; out = rmsnorm(residual). residual, delta, out: [rows, cols]; weight: [cols]
#[allow(clippy::too_many_arguments)]
pub fn add_rmsnorm(
    residual: &mut [f32],
    delta: &[f32],
    out: &mut [f32],
    weight: &[f32],
    rows: usize,
    cols: usize,
    eps: f32,
) {
    add_inplace(&mut residual[..rows * cols], &delta[..rows * cols]);
    rmsnorm(out, residual, weight, rows, cols, eps);
}

/// x += y elementwise.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layernorm_normalises_each_row() {
        let x = [1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0];
        let mut out = [0.0; 8];
        layernorm(&mut out, &x, &[1.0; 4], &[0.5; 4], 2, 4, 0.0);
        for r in 0..2 {
            let row = &out[r * 4..r * 4 + 4];
            let mean: f32 = row.iter().sum::<f32>() / 4.0;
            let var: f32 = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
            assert!((mean - 0.5).abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn rmsnorm_gives_unit_rms_and_fused_add_matches() {
        let x = [3.0f32, 4.0];
        let mut out = [0.0; 2];
        rmsnorm(&mut out, &x, &[1.0, 2.0], 1, 2, 0.0);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
        let mut residual = [1.0f32, 1.0];
        let mut fused = [0.0; 2];
        add_rmsnorm(
            &mut residual,
            &[2.0, 3.0],
            &mut fused,
            &[1.0, 2.0],
            1,
            2,
            0.0,
        );
        assert_eq!(residual, x);
        assert_eq!(fused, out);
    }
}
