//! Rotary position embedding, rotate-half form (HF Llama) over the first r = rotary_dim dimensions
//! of each head: for i < r/2, (x[i], x[i + r/2]) ← (x[i]·cos − x[i + r/2]·sin, x[i + r/2]·cos +
//! x[i]·sin), angle = pos · inv_freq[i]; dimensions r.. are left as they are (Phi-3's partial rotary,
//! transformers' `q_pass`). r = head_dim rotates the whole head.
//! Qwen3 normalises each Q and K head first ([`qk_norm_rope`]).

/// Rotate the first `rotary_dim` dimensions of the first `num_rot_heads` heads of each row in place.
/// qkv: [num_tokens, row_len] with heads of `head_dim` from column 0;
/// cos_sin: [max_context, rotary_dim] (cos in columns 0..r/2, sin in r/2..r); positions: [num_tokens]
pub fn rope(
    qkv: &mut [f32],
    row_len: usize,
    cos_sin: &[f32],
    positions: &[u32],
    num_rot_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
) {
    let half = rotary_dim / 2;
    for (t, &pos) in positions.iter().enumerate() {
        let cs = &cos_sin[pos as usize * rotary_dim..(pos as usize + 1) * rotary_dim];
        let (cos, sin) = cs.split_at(half);
        let row = &mut qkv[t * row_len..(t + 1) * row_len];
        for h in 0..num_rot_heads {
            let head = &mut row[h * head_dim..(h + 1) * head_dim];
            for i in 0..half {
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * cos[i] - x2 * sin[i];
                head[i + half] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

/// Qwen3's `q_norm` / `k_norm` then RoPE: each of the first `num_rot_heads` heads of each row is
/// RMS-normalised over `head_dim` as transformers' RMSNorm does (f32: `w * (x / sqrt(mean(x²) +
/// eps))`), with `q_norm` for the first `num_q_heads` heads and `k_norm` for the rest, then
/// rotated as by [`rope`]. q_norm, k_norm: [head_dim]; the other arguments as [`rope`]'s.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope(
    qkv: &mut [f32],
    row_len: usize,
    cos_sin: &[f32],
    positions: &[u32],
    q_norm: &[f32],
    k_norm: &[f32],
    num_q_heads: usize,
    num_rot_heads: usize,
    head_dim: usize,
    eps: f32,
) {
    for t in 0..positions.len() {
        let row = &mut qkv[t * row_len..(t + 1) * row_len];
        for h in 0..num_rot_heads {
            let head = &mut row[h * head_dim..(h + 1) * head_dim];
            let weight = if h < num_q_heads { q_norm } else { k_norm };
            let ms = head.iter().map(|v| v * v).sum::<f32>() / head_dim as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for (x, w) in head.iter_mut().zip(weight) {
                *x = w * (*x * inv);
            }
        }
    }
    rope(
        qkv,
        row_len,
        cos_sin,
        positions,
        num_rot_heads,
        head_dim,
        head_dim,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: one token at position 1, one head of 6 with the first 4 dimensions rotating as
    /// pairs (0, 2) and (1, 3); dimensions 4 and 5 pass through.
    #[test]
    fn a_partial_rotary_rotates_the_leading_pairs_only() {
        let (a, b) = (0.5f32, 0.25f32);
        // [1, 4]: cos a, cos b, sin a, sin b
        let table = [1.0, 1.0, 0.0, 0.0, a.cos(), b.cos(), a.sin(), b.sin()];
        let mut head = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        rope(&mut head, 6, &table, &[1], 1, 6, 4);
        let want = [
            1.0 * a.cos() - 3.0 * a.sin(),
            2.0 * b.cos() - 4.0 * b.sin(),
            3.0 * a.cos() + 1.0 * a.sin(),
            4.0 * b.cos() + 2.0 * b.sin(),
            5.0,
            6.0,
        ];
        for (g, w) in head.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{head:?} vs {want:?}");
        }
        // the whole head: pairs (i, i + 3), a 6-wide table
        let full: Vec<f32> = [[1.0; 3], [0.0; 3], [a.cos(); 3], [a.sin(); 3]].concat();
        let mut head = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        rope(&mut head, 6, &full, &[1], 1, 6, 6);
        assert!((head[0] - (a.cos() - 4.0 * a.sin())).abs() < 1e-6);
        assert!((head[5] - (6.0 * a.cos() + 3.0 * a.sin())).abs() < 1e-6);
    }

    /// The table check both backends' `rope` share: rows of `rotary_dim`, which must be even,
    /// positive and within the head.
    #[test]
    fn rope_tables_are_checked_for_their_rotary_width() {
        use crate::backend::rope_table_rows;
        assert_eq!(rope_table_rows(96 * 10, 128, 96), Ok(10));
        assert_eq!(rope_table_rows(128 * 3, 128, 128), Ok(3));
        for bad in [0, 7, 130] {
            let e = rope_table_rows(1024, 128, bad).unwrap_err();
            assert!(e.contains(&format!("rotary_dim {bad}")), "{e}");
        }
    }
}
