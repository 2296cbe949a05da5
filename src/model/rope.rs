//! RoPE frequency tables, computed in f32 as transformers computes them on load (`inv_freq`), including
//! the `linear` and `llama3` scalings.

use super::config::{RopeConfig, RopeScaling};

/// inv_freq[i] = 1 / theta^(2i / head_dim), i < head_dim / 2, then scaled.
pub fn inv_freq(rope: &RopeConfig, head_dim: usize) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / rope.theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match rope.scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old_ctx = original_max_position_embeddings as f32;
            let low_freq_wavelen = old_ctx / low_freq_factor;
            let high_freq_wavelen = old_ctx / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen > low_freq_wavelen {
                        // long wavelengths: interpolate fully
                        f / factor
                    } else if wavelen < high_freq_wavelen {
                        // short wavelengths: untouched
                        f
                    } else {
                        // in between: blend smoothly
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// cos/sin table: [max_positions, head_dim], cos(pos · inv_freq[i]) in columns i < head_dim/2 and
/// sin(pos · inv_freq[i]) in columns head_dim/2 + i. The angle is an f32 product, as in transformers.
pub fn cos_sin_table(rope: &RopeConfig, head_dim: usize, max_positions: usize) -> Vec<f32> {
    let inv = inv_freq(rope, head_dim);
    let half = head_dim / 2;
    let mut table = vec![0.0f32; max_positions * head_dim];
    for pos in 0..max_positions {
        let row = &mut table[pos * head_dim..(pos + 1) * head_dim];
        for (i, &f) in inv.iter().enumerate() {
            let angle = pos as f32 * f;
            row[i] = angle.cos();
            row[half + i] = angle.sin();
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama32() -> RopeConfig {
        RopeConfig {
            theta: 500_000.0,
            scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        }
    }

    #[test]
    fn default_frequencies_follow_theta() {
        let r = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::Default,
        };
        let f = inv_freq(&r, 64);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 10_000f32.powf(-2.0 / 64.0)).abs() < 1e-7);
        assert!((f[31] - 10_000f32.powf(-62.0 / 64.0)).abs() < 1e-9);
    }

    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_blends_between() {
        // Values from transformers' _compute_llama3_parameters for Llama 3.2 1B (head_dim 64).
        let base = inv_freq(
            &RopeConfig {
                theta: 500_000.0,
                scaling: RopeScaling::Default,
            },
            64,
        );
        let scaled = inv_freq(&llama32(), 64);
        // wavelength < 8192/4 = 2048: unchanged
        assert_eq!(scaled[0], base[0]);
        assert_eq!(scaled[10], base[10]);
        // wavelength > 8192: divided by the factor
        assert!((scaled[31] - base[31] / 32.0).abs() <= base[31] * 1e-6);
        // the medium band is strictly between the two
        let medium: Vec<usize> = (0..32)
            .filter(|&i| {
                let w = 2.0 * std::f32::consts::PI / base[i];
                (2048.0..=8192.0).contains(&w)
            })
            .collect();
        assert!(!medium.is_empty());
        for i in medium {
            assert!(
                scaled[i] < base[i] && scaled[i] > base[i] / 32.0,
                "index {i}"
            );
        }
        // spot value: index 16, wavelength 2π·500000^(32/64) ≈ 4442.9 (medium band):
        // smooth = (8192/4442.9 − 1)/3 ≈ 0.2813, scaled ≈ (0.7187/32 + 0.2813)·base ≈ 0.303743·base
        let w = 2.0 * std::f32::consts::PI / base[16];
        assert!((w - 4442.883).abs() < 0.05, "{w}");
        assert!((scaled[16] / base[16] - 0.303_743).abs() < 1e-5);
    }

    #[test]
    fn linear_scaling_divides_every_frequency() {
        let r = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::Linear { factor: 4.0 },
        };
        let base = inv_freq(
            &RopeConfig {
                theta: 10_000.0,
                scaling: RopeScaling::Default,
            },
            16,
        );
        for (a, b) in inv_freq(&r, 16).iter().zip(base) {
            assert_eq!(*a, b / 4.0);
        }
    }

    #[test]
    fn table_rows_are_cos_then_sin() {
        let r = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::Default,
        };
        let t = cos_sin_table(&r, 8, 3);
        assert_eq!(&t[0..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!((t[8] - 1f32.cos()).abs() < 1e-7 && (t[12] - 1f32.sin()).abs() < 1e-7);
    }
}
