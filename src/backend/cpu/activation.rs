//! Activations: GPT-2's gelu_new, GPT-NeoX's exact GELU, OPT's ReLU, Llama's SiLU-gated product
//! and Gemma's GELU(tanh)-gated one.

/// gelu_new(u) = 0.5 u (1 + tanh(sqrt(2/π) (u + 0.044715 u³))).
fn gelu_new_of(u: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * u * (1.0 + (SQRT_2_OVER_PI * (u + 0.044715 * u * u * u)).tanh())
}

/// gelu_new, in place.
pub fn gelu_new(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu_new_of(*v);
    }
}

/// The exact GELU, in place: 0.5 u (1 + erf(u / √2)) in f32, as torch's `gelu` computes it.
pub fn gelu_erf(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// ReLU, in place: negatives become 0; NaN stays NaN (as torch's `relu`).
pub fn relu(x: &mut [f32]) {
    for v in x.iter_mut() {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}

/// Gemma 2's soft-capping, in place: x = cap · tanh(x / cap) (as transformers computes it).
pub fn softcap(x: &mut [f32], cap: f32) {
    for v in x {
        *v = cap * (*v / cap).tanh();
    }
}

/// out[r, j] = gelu_new(x[r, j]) * x[r, inter + j] (transformers' `gelu_pytorch_tanh` gate).
/// out: [rows, inter]; x: [rows, 2 * inter] (gate columns first, then up)
pub fn gelu_tanh_mul(out: &mut [f32], x: &[f32], rows: usize, inter: usize) {
    gated_mul(out, x, rows, inter, gelu_new_of);
}

/// out[r, j] = act(x[r, j]) * x[r, inter + j], the loop of both gated products.
fn gated_mul(out: &mut [f32], x: &[f32], rows: usize, inter: usize, act: impl Fn(f32) -> f32) {
    for r in 0..rows {
        let (gate, up) = x[r * 2 * inter..(r + 1) * 2 * inter].split_at(inter);
        for ((o, &g), &u) in out[r * inter..(r + 1) * inter].iter_mut().zip(gate).zip(up) {
            *o = act(g) * u;
        }
    }
}

/// out[r, j] = silu(x[r, j]) * x[r, inter + j], silu(g) = g / (1 + e^-g).
/// out: [rows, inter]; x: [rows, 2 * inter] (gate columns first, then up)
pub fn silu_mul(out: &mut [f32], x: &[f32], rows: usize, inter: usize) {
    gated_mul(out, x, rows, inter, |g| g / (1.0 + (-g).exp()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_new_known_values() {
        let mut x = [0.0f32, 1.0, -1.0, 3.0];
        gelu_new(&mut x);
        // torch NewGELUActivation values
        let want = [0.0f32, 0.841_192, -0.158_808, 2.996_363_4];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn gelu_erf_known_values() {
        let mut x = [0.0f32, 1.0, -1.0, 3.0, -0.5];
        gelu_erf(&mut x);
        // torch.nn.functional.gelu (approximate="none") values
        let want = [
            0.0f32,
            0.841_344_7,
            -0.158_655_26,
            2.995_950_2,
            -0.154_269_3,
        ];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn relu_zeroes_negatives_and_keeps_nan() {
        let mut x = [-2.0f32, -0.0, 0.0, 3.5, f32::NAN];
        relu(&mut x);
        assert_eq!(&x[..4], &[0.0, -0.0, 0.0, 3.5]);
        assert!(x[4].is_nan());
    }

    #[test]
    fn softcap_known_values() {
        // 30 tanh(x / 30): torch.tanh(torch.tensor([1.0, -2.0])) * 30 for x = 30, -60
        let mut x = [0.0f32, 30.0, -60.0, 1e6];
        softcap(&mut x, 30.0);
        let want = [0.0f32, 22.847_757, -28.920_83, 30.0];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn gelu_tanh_mul_multiplies_the_gelu_of_the_gate_by_up() {
        let x = [1.0f32, -1.0, 2.0, 3.0];
        let mut out = [0.0f32; 2];
        gelu_tanh_mul(&mut out, &x, 1, 2);
        // torch gelu(approximate="tanh") of 1 and -1 (see gelu_new_known_values)
        assert!((out[0] - 0.841_192 * 2.0).abs() < 1e-5);
        assert!((out[1] + 0.158_808 * 3.0).abs() < 1e-5);
    }

    #[test]
    fn silu_mul_multiplies_gate_by_up() {
        let x = [0.0f32, 2.0, 5.0, 7.0];
        let mut out = [0.0f32; 2];
        silu_mul(&mut out, &x, 1, 2);
        assert_eq!(out[0], 0.0);
        let silu2 = 2.0 / (1.0 + (-2.0f32).exp());
        assert!((out[1] - silu2 * 7.0).abs() < 1e-6);
    }
}
