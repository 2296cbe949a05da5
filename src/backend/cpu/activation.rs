//! Activations: GPT-2's gelu_new and Llama's SiLU-gated product.

/// gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³))), in place.
pub fn gelu_new(x: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + (SQRT_2_OVER_PI * (u + 0.044715 * u * u * u)).tanh());
    }
}

/// out[r, j] = silu(x[r, j]) * x[r, inter + j], silu(g) = g / (1 + e^-g).
/// out: [rows, inter]; x: [rows, 2 * inter] (gate columns first, then up)
pub fn silu_mul(out: &mut [f32], x: &[f32], rows: usize, inter: usize) {
    for r in 0..rows {
        let (gate, up) = x[r * 2 * inter..(r + 1) * 2 * inter].split_at(inter);
        let o = &mut out[r * inter..(r + 1) * inter];
        for j in 0..inter {
            let g = gate[j];
            o[j] = g / (1.0 + (-g).exp()) * up[j];
        }
    }
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
    fn silu_mul_multiplies_gate_by_up() {
        let x = [0.0f32, 2.0, 5.0, 7.0];
        let mut out = [0.0f32; 2];
        silu_mul(&mut out, &x, 1, 2);
        assert_eq!(out[0], 0.0);
        let silu2 = 2.0 / (1.0 + (-2.0f32).exp());
        assert!((out[1] - silu2 * 7.0).abs() < 1e-6);
    }
}
