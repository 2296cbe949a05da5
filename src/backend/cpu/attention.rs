//! Causal attention over the paged KV cache: the reference every GPU attention kernel is tested against.
//!
//! For each new token of sequence s (position p = seq_len − num_new + i) and each query head h: scores
//! against keys 0..=p of KV head h / group, read through the block table (key j lives in block
//! `block_table[j / block_size]`, offset `j % block_size`); softmax in f32 with the max subtracted;
//! weighted sum of V. No contiguous per-sequence copy of K/V is made. Parallel over tokens.

use rayon::prelude::*;

use crate::backend::{BatchMeta, KvGeometry};

/// out: [num_tokens, num_heads * head_dim];
/// qkv: [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim] (Q in the first num_heads * head_dim columns);
/// k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    out: &mut [f32],
    qkv: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    meta: &BatchMeta,
    geom: &KvGeometry,
    num_heads: usize,
    scale: f32,
) {
    let d = geom.head_dim;
    let nkv = geom.num_kv_heads;
    let group = num_heads / nkv;
    let q_size = num_heads * d;
    let row_len = q_size + 2 * nkv * d;
    let bs = geom.block_size;
    // token row -> its sequence
    let mut seq_of = vec![0usize; meta.num_tokens()];
    for s in 0..meta.num_seqs() {
        let (a, b) = (meta.query_start_loc[s], meta.query_start_loc[s + 1]);
        seq_of[a as usize..b as usize].fill(s);
    }
    out[..meta.num_tokens() * q_size]
        .par_chunks_mut(q_size)
        .enumerate()
        .for_each(|(t, out_row)| {
            let s = seq_of[t];
            let table = meta.block_table(s);
            let pos = meta.positions[t] as usize;
            let ctx = pos + 1;
            let q_row = &qkv[t * row_len..t * row_len + q_size];
            let mut scores = vec![0.0f32; ctx];
            for h in 0..num_heads {
                let kvh = h / group;
                let q = &q_row[h * d..(h + 1) * d];
                let slot_offset = |j: usize| {
                    let slot = table[j / bs] as usize * bs + j % bs;
                    (slot * nkv + kvh) * d
                };
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    let o = slot_offset(j);
                    let k = &k_cache[o..o + d];
                    let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
                    *sc = dot * scale;
                    max = max.max(*sc);
                }
                let mut sum = 0.0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let o_head = &mut out_row[h * d..(h + 1) * d];
                o_head.fill(0.0);
                for (j, &p) in scores.iter().enumerate() {
                    let o = slot_offset(j);
                    let v = &v_cache[o..o + d];
                    for (acc, &vv) in o_head.iter_mut().zip(v) {
                        *acc += p * vv;
                    }
                }
                let inv = 1.0 / sum;
                for acc in o_head.iter_mut() {
                    *acc *= inv;
                }
            }
        });
}
