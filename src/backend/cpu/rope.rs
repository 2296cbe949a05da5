//! Rotary position embedding, rotate-half form (HF Llama): for i < d/2,
//! (x[i], x[i + d/2]) ← (x[i]·cos − x[i + d/2]·sin, x[i + d/2]·cos + x[i]·sin), angle = pos · inv_freq[i].
//! Qwen3 normalises each Q and K head first ([`qk_norm_rope`]).

/// Rotate the first `num_rot_heads` heads of each row in place.
/// qkv: [num_tokens, row_len] with heads of `head_dim` from column 0;
/// cos_sin: [max_context, head_dim] (cos in columns 0..d/2, sin in d/2..d); positions: [num_tokens]
pub fn rope(
    qkv: &mut [f32],
    row_len: usize,
    cos_sin: &[f32],
    positions: &[u32],
    num_rot_heads: usize,
    head_dim: usize,
) {
    let half = head_dim / 2;
    for (t, &pos) in positions.iter().enumerate() {
        let cs = &cos_sin[pos as usize * head_dim..(pos as usize + 1) * head_dim];
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
    rope(qkv, row_len, cos_sin, positions, num_rot_heads, head_dim);
}
