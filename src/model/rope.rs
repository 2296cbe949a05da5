//! RoPE frequency tables, computed in f32 as transformers computes them on load (`inv_freq`), including
//! the `linear`, `llama3`, `yarn` and Phi-3's `longrope` scalings. `dim` is the rotary dimension:
//! the head's, or its leading part under a partial rotary factor.

use super::config::{RopeConfig, RopeScaling};

/// The factor set LongRoPE takes for an engine serving sequences of up to `max_positions`.
struct LongRopeChoice<'a> {
    factors: &'a [f32],
    /// `long_factor` (the context served passes the original one), else `short_factor`.
    long: bool,
    original: usize,
}

/// LongRoPE's choice for an engine serving up to `max_positions`: `long_factor` when that passes
/// the original context, else `short_factor` (transformers chooses per sequence length, see
/// [`RopeScaling::LongRope`]). None for other scalings.
fn longrope_choice(rope: &RopeConfig, max_positions: usize) -> Option<LongRopeChoice<'_>> {
    let RopeScaling::LongRope {
        short_factor,
        long_factor,
        original_max_position_embeddings: original,
        ..
    } = &rope.scaling
    else {
        return None;
    };
    let long = max_positions > *original;
    Some(LongRopeChoice {
        factors: if long { long_factor } else { short_factor },
        long,
        original: *original,
    })
}

/// LongRoPE's per-dimension factors for an engine serving sequences of up to `max_positions`
/// (see `longrope_choice`). None for other scalings.
pub fn longrope_factors(rope: &RopeConfig, max_positions: usize) -> Option<&[f32]> {
    longrope_choice(rope, max_positions).map(|c| c.factors)
}

/// What a start line says of a LongRoPE model's factors at the context it serves ("" for other
/// RoPEs): which set the engine uses, and why.
pub fn longrope_note(config: &crate::model::ModelConfig) -> String {
    let context = config.max_context;
    match config
        .rope
        .as_ref()
        .and_then(|r| longrope_choice(r, context))
    {
        Some(LongRopeChoice {
            long: true,
            original,
            ..
        }) => format!(
            "; LongRoPE long factors: context {context} > original {original} (--max-model-len \
             {original} for the short ones)"
        ),
        Some(LongRopeChoice { original, .. }) => {
            format!("; LongRoPE short factors: context {context} within the original {original}")
        }
        None => String::new(),
    }
}

/// inv_freq[i] = 1 / theta^(2i / dim), i < dim / 2, then scaled (`max_positions`: the longest
/// sequence the table serves, which picks LongRoPE's factors).
pub fn inv_freq(rope: &RopeConfig, dim: usize, max_positions: usize) -> Vec<f32> {
    let powers = (0..dim / 2).map(|i| rope.theta.powf((2 * i) as f32 / dim as f32));
    if let Some(ext) = longrope_factors(rope, max_positions) {
        // 1 / (ext · theta^x), both f32 as transformers' tensors
        return powers.zip(ext).map(|(p, &e)| 1.0 / (e * p)).collect();
    }
    let base: Vec<f32> = powers.map(|p| 1.0 / p).collect();
    match rope.scaling {
        // dynamic NTK is theta itself within max_position_embeddings, all the engine serves;
        // LongRoPE returned above with its own factors
        RopeScaling::Default | RopeScaling::LongRope { .. } | RopeScaling::DynamicNtk { .. } => {
            base
        }
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
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            // the dimension at which a wavelength makes `rotations` turns over the original
            // context (f64, as transformers' Python floats)
            let d = dim as f64;
            let ln_theta = f64::from(rope.theta).ln();
            let ctx = original_max_position_embeddings as f64;
            let dim_of = |rotations: f32| {
                d * (ctx / (f64::from(rotations) * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * ln_theta)
            };
            let (mut low, mut high) = (dim_of(beta_fast), dim_of(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0) as f32, high.min(d - 1.0) as f32);
            if low == high {
                high += 0.001; // transformers' guard against a zero-width ramp
            }
            base.iter()
                .enumerate()
                .map(|(i, &f)| {
                    // 1 below the ramp (extrapolate: keep f), 0 above it (interpolate: f / factor)
                    let keep = 1.0 - ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    f / factor * (1.0 - keep) + f * keep
                })
                .collect()
        }
    }
}

/// What cos and sin are multiplied by (YaRN's and LongRoPE's attention factor; 1 otherwise).
pub fn attention_factor(rope: &RopeConfig) -> f32 {
    match rope.scaling {
        RopeScaling::Yarn {
            attention_factor, ..
        }
        | RopeScaling::LongRope {
            attention_factor, ..
        } => attention_factor,
        _ => 1.0,
    }
}

/// cos/sin table: [max_positions, dim], cos(pos · inv_freq[i]) in columns i < dim/2 and
/// sin(pos · inv_freq[i]) in columns dim/2 + i, both times [`attention_factor`]; `dim` is the
/// rotary dimension. The angle is an f32 product, as in transformers.
pub fn cos_sin_table(rope: &RopeConfig, dim: usize, max_positions: usize) -> Vec<f32> {
    let inv = inv_freq(rope, dim, max_positions);
    let scale = attention_factor(rope);
    let half = dim / 2;
    let mut table = vec![0.0f32; max_positions * dim];
    for pos in 0..max_positions {
        let row = &mut table[pos * dim..(pos + 1) * dim];
        for (i, &f) in inv.iter().enumerate() {
            let angle = pos as f32 * f;
            row[i] = angle.cos() * scale;
            row[half + i] = angle.sin() * scale;
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
        let f = inv_freq(&r, 64, 1);
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
            1,
        );
        let scaled = inv_freq(&llama32(), 64, 1);
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
            1,
        );
        for (a, b) in inv_freq(&r, 16, 1).iter().zip(base) {
            assert_eq!(*a, b / 4.0);
        }
    }

    #[test]
    fn yarn_matches_transformers_values() {
        // transformers 5.25 `_compute_yarn_parameters`, head_dim 32, theta 1e6 (the fixtures
        // tests/fixtures/tiny-qwen3/yarn*): inv_freq[..3] and the attention factor
        let yarn =
            |factor, original, beta_fast, beta_slow, truncate, attention_factor| RopeConfig {
                theta: 1e6,
                scaling: RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: original,
                    beta_fast,
                    beta_slow,
                    truncate,
                    attention_factor,
                },
            };
        let cases = [
            (
                yarn(4.0, 64, 32.0, 1.0, true, 1.138_629_4),
                [1.0, 0.316_272_38, 0.088_913_97],
            ),
            (
                yarn(2.5, 96, 16.0, 2.0, false, 1.043_807_5),
                [1.0, 0.314_250_17, 0.087_208_45],
            ),
        ];
        for (rope, want) in cases {
            let got = inv_freq(&rope, 32, 1);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 2e-7 * w, "{g} vs {w}");
            }
            // past the ramp: interpolated (÷ factor)
            let RopeScaling::Yarn { factor, .. } = rope.scaling else {
                unreachable!()
            };
            let plain = inv_freq(
                &RopeConfig {
                    theta: 1e6,
                    scaling: RopeScaling::Default,
                },
                32,
                1,
            );
            assert!((got[15] - plain[15] / factor).abs() <= 1e-6 * plain[15]);
            // cos and sin carry the attention factor
            let t = cos_sin_table(&rope, 32, 2);
            assert_eq!(t[0], attention_factor(&rope));
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

    #[test]
    fn longrope_picks_its_factors_by_the_context_served() {
        // transformers 5.25 `_compute_longrope_parameters`: inv_freq = 1 / (ext · theta^(2i/dim))
        let rope = RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::LongRope {
                short_factor: vec![1.0, 2.0, 4.0],
                long_factor: vec![3.0, 5.0, 9.0],
                original_max_position_embeddings: 64,
                attention_factor: 1.25,
            },
        };
        let plain: Vec<f32> = (0..3)
            .map(|i| 10_000f32.powf(-(2 * i) as f32 / 6.0))
            .collect();
        let short = inv_freq(&rope, 6, 64);
        let long = inv_freq(&rope, 6, 65);
        for i in 0..3 {
            assert!((short[i] - plain[i] / [1.0, 2.0, 4.0][i]).abs() <= 1e-7 * plain[i]);
            assert!((long[i] - plain[i] / [3.0, 5.0, 9.0][i]).abs() <= 1e-7 * plain[i]);
        }
        // the table: rotary dimension wide, cos and sin times the attention factor
        let t = cos_sin_table(&rope, 6, 65);
        assert_eq!(t.len(), 65 * 6);
        assert_eq!(&t[0..6], &[1.25, 1.25, 1.25, 0.0, 0.0, 0.0]);
        let angle = 7.0 * long[1];
        assert!((t[7 * 6 + 1] - 1.25 * angle.cos()).abs() < 1e-6);
        assert!((t[7 * 6 + 4] - 1.25 * angle.sin()).abs() < 1e-6);
    }
}
