//! Causal attention over the paged KV cache: the reference every GPU attention kernel is tested against.
//!
//! For each new token of sequence s (position p = seq_len − num_new + i) and each query head h: scores
//! against keys lo..=p of KV head h / group, read through the block table (key j lives in block
//! `block_table[j / block_size]`, offset `j % block_size`); softmax in f32 with the max subtracted;
//! weighted sum of V. lo is 0, or under a sliding window of w keys max(0, p + 1 − w): the last w
//! positions, the token's own included (transformers' mask `kv_idx > q_idx - sliding_window`).
//! Under Gemma 2's soft-cap c each scaled score s becomes c · tanh(s / c) before the softmax;
//! under ALiBi it then gains slope(h) · (j − p) ([`crate::backend::Alibi`]).
//! No contiguous per-sequence copy of K/V is made. Parallel over tokens.

use rayon::prelude::*;

use crate::backend::{AttentionSpec, BatchMeta, KvGeometry};

/// out: [num_tokens, num_heads * head_dim];
/// qkv: [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim] (Q in the first num_heads * head_dim columns);
/// k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]; `spec`: heads, scale,
/// sliding window, soft-cap and ALiBi ([`AttentionSpec`])
pub fn paged_attention(
    out: &mut [f32],
    qkv: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    meta: &BatchMeta,
    geom: &KvGeometry,
    spec: &AttentionSpec,
) {
    let AttentionSpec {
        num_heads,
        scale,
        window,
        softcap,
        alibi,
        kv_group,
    } = *spec;
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
            let table = meta.block_table(kv_group, s);
            let pos = meta.positions[t] as usize;
            // keys lo..=pos
            let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let q_row = &qkv[t * row_len..t * row_len + q_size];
            let mut scores = vec![0.0f32; pos + 1 - lo];
            for h in 0..num_heads {
                let kvh = h / group;
                let slope = alibi.map(|a| a.slope(h, num_heads));
                let q = &q_row[h * d..(h + 1) * d];
                // offset of the i-th key of the window, key lo + i
                let slot_offset = |i: usize| {
                    let j = lo + i;
                    debug_assert_ne!(
                        table[j / bs],
                        crate::kv::RELEASED_BLOCK,
                        "key {j} is in a block released as outside the window"
                    );
                    let slot = table[j / bs] as usize * bs + j % bs;
                    (slot * nkv + kvh) * d
                };
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    let o = slot_offset(j);
                    let k = &k_cache[o..o + d];
                    let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
                    *sc = match softcap {
                        Some(c) => c * (dot * scale / c).tanh(),
                        None => dot * scale,
                    };
                    if let Some(slope) = slope {
                        // key lo + j at distance pos - (lo + j) before the query
                        *sc -= slope * (pos - lo - j) as f32;
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Alibi;
    use proptest::prelude::*;

    /// One sequence of `ctx` cached tokens (K/V already in the cache, blocks in reverse order) whose
    /// last `new` tokens are the queries; returns (meta, geom).
    fn one_seq(ctx: usize, new: usize, bs: usize, nkv: usize, d: usize) -> (BatchMeta, KvGeometry) {
        let blocks = ctx.div_ceil(bs);
        let geom = KvGeometry {
            num_blocks: blocks,
            block_size: bs,
            num_kv_heads: nkv,
            head_dim: d,
        };
        let table: Vec<u32> = (0..blocks as u32).rev().collect();
        let positions: Vec<u32> = (ctx - new..ctx).map(|p| p as u32).collect();
        let slot = |p: usize| table[p / bs] * bs as u32 + (p % bs) as u32;
        let meta = BatchMeta {
            token_ids: vec![0; new],
            slot_mapping: positions.iter().map(|&p| slot(p as usize)).collect(),
            positions,
            query_start_loc: vec![0, new as u32],
            seq_lens: vec![ctx as u32],
            block_tables: table,
            max_blocks_per_seq: blocks,
            num_kv_groups: 1,
            logits_indices: vec![],
            decode_plan_ctx: None,
        };
        (meta, geom)
    }

    /// Values in [-1, 1) from a seed (a fixed LCG: the property is about indexing, not the data).
    fn fill(len: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Soft-capping bends the scaled scores before the softmax: one query over two keys with
    /// scores +2 and −2 under a cap of 1 weighs them as softmax(tanh(2), tanh(−2)).
    #[test]
    fn softcap_bends_the_scores() {
        let (meta, geom) = one_seq(2, 1, 16, 1, 4);
        // q = e0; K rows: +e0, −e0; V rows: e1, 0
        let mut qkv = vec![0.0f32; 3 * 4];
        qkv[0] = 1.0;
        let (mut k, mut v) = (
            vec![0.0f32; geom.layer_len()],
            vec![0.0f32; geom.layer_len()],
        );
        let slot = |j: usize| meta.block_tables[0] as usize * 16 + j;
        k[slot(0) * 4] = 1.0;
        k[slot(1) * 4] = -1.0;
        v[slot(0) * 4 + 1] = 1.0;
        let weight_of_key0 = |softcap| {
            let mut out = vec![0.0f32; 4];
            let spec = AttentionSpec {
                softcap,
                ..AttentionSpec::causal(1, 2.0)
            };
            paged_attention(&mut out, &qkv, &k, &v, &meta, &geom, &spec);
            out[1]
        };
        let (a, b) = (2f32.tanh(), (-2f32).tanh());
        let want = a.exp() / (a.exp() + b.exp());
        assert!((weight_of_key0(Some(1.0)) - want).abs() < 1e-6);
        let plain = 2f32.exp() / (2f32.exp() + (-2f32).exp());
        assert!((weight_of_key0(None) - plain).abs() < 1e-6);
        // a cap far above the scores changes nothing measurable
        assert!((weight_of_key0(Some(1e4)) - plain).abs() < 1e-5);
    }

    /// ALiBi's slopes are BLOOM's (`build_alibi_tensor`, written out for 8 and 12 heads) and
    /// MPT's (`gen_slopes` at alibi_bias_max 16 for 6 heads: the next power of two's sequence,
    /// odd entries first).
    #[test]
    fn alibi_slopes_are_bloom_and_mpt() {
        let slopes = |a: Alibi, n: usize| (0..n).map(|h| a.slope(h, n)).collect::<Vec<f32>>();
        let pow2 = |e: f32| 2f32.powf(e);
        let eight: Vec<f32> = (1..=8).map(|i| pow2(-(i as f32))).collect();
        assert_eq!(slopes(Alibi::STANDARD, 8), eight);
        // 12 heads: 2^-1 .. 2^-8, then 2^-0.5 .. 2^-3.5 in steps of 1
        let mut twelve = eight.clone();
        twelve.extend([-0.5, -1.5, -2.5, -3.5].map(pow2));
        assert_eq!(slopes(Alibi::STANDARD, 12), twelve);
        // MPT, 6 heads, bias max 16: 8 slopes 2^-2, 2^-4, .., 2^-16, then [1::2] + [::2]
        let mpt8: Vec<f32> = (1..=8).map(|i| pow2(-2.0 * i as f32)).collect();
        let mut mpt: Vec<f32> = mpt8.iter().skip(1).step_by(2).copied().collect();
        mpt.extend(mpt8.iter().step_by(2));
        mpt.truncate(6);
        let a = Alibi {
            max_bias: 16.0,
            scale: 1.0,
        };
        assert_eq!(slopes(a, 6), mpt);
        // the scale multiplies every slope
        let scaled = Alibi { scale: 0.25, ..a };
        assert_eq!(scaled.slope(3, 6), 0.25 * a.slope(3, 6));
    }

    /// ALiBi weighs equal scores by distance: a query at position 2 whose q·k is 0 for all three
    /// keys puts softmax(−2m, −m, 0) on them (one head: slope m = 2^−max_bias).
    #[test]
    fn alibi_penalises_distance() {
        let (meta, geom) = one_seq(3, 1, 2, 1, 4);
        let qkv = vec![0.0f32; 3 * 4];
        let k = vec![0.0f32; geom.layer_len()];
        // V row of key j: e_j
        let mut v = vec![0.0f32; geom.layer_len()];
        for j in 0..3 {
            let slot = meta.block_tables[j / 2] as usize * 2 + j % 2;
            v[slot * 4 + j] = 1.0;
        }
        let alibi = Alibi {
            max_bias: 1.0,
            scale: 1.0,
        };
        let mut out = vec![0.0f32; 4];
        let spec = AttentionSpec {
            alibi: Some(alibi),
            ..AttentionSpec::causal(1, 0.5)
        };
        paged_attention(&mut out, &qkv, &k, &v, &meta, &geom, &spec);
        let m = 0.5f32;
        let e = [(-2.0 * m).exp(), (-m).exp(), 1.0];
        let sum: f32 = e.iter().sum();
        for j in 0..3 {
            assert!((out[j] - e[j] / sum).abs() < 1e-6, "{out:?}");
        }
    }

    proptest! {
        /// A windowed query sees exactly its last `window` keys: its output equals full causal
        /// attention over a cache holding only those keys (copied to the front of a fresh cache,
        /// as if the context started at the window). A window at least as long as the context
        /// changes nothing.
        #[test]
        fn a_window_is_full_attention_over_the_last_keys(
            ctx in 1usize..70,
            new_frac in 0.0f64..1.0,
            window in 1usize..80,
            bs in prop::sample::select(vec![1usize, 3, 16]),
            (heads, nkv) in prop::sample::select(vec![(2usize, 2usize), (4, 1), (6, 2)]),
            seed in 0u64..1000,
        ) {
            let d = 8;
            let new = 1 + ((ctx - 1) as f64 * new_frac) as usize;
            let (meta, geom) = one_seq(ctx, new, bs, nkv, d);
            let row = (heads + 2 * nkv) * d;
            let qkv = fill(new * row, seed);
            let k = fill(geom.layer_len(), seed + 1);
            let v = fill(geom.layer_len(), seed + 2);
            let q_size = heads * d;
            let mut got = vec![0.0; new * q_size];
            let spec = AttentionSpec { window: Some(window), ..AttentionSpec::causal(heads, 0.3) };
            paged_attention(&mut got, &qkv, &k, &v, &meta, &geom, &spec);
            if window >= ctx {
                let mut full = vec![0.0; new * q_size];
                paged_attention(&mut full, &qkv, &k, &v, &meta, &geom, &AttentionSpec::causal(heads, 0.3));
                prop_assert_eq!(&got, &full);
            }
            for t in 0..new {
                let p = ctx - new + t;
                let lo = (p + 1).saturating_sub(window);
                // the keys lo..=p of the original cache, as a context of their own
                let keys = p + 1 - lo;
                let (m2, g2) = one_seq(keys, 1, bs, nkv, d);
                let mut k2 = vec![0.0; g2.layer_len()];
                let mut v2 = vec![0.0; g2.layer_len()];
                let slot = |m: &BatchMeta, j: usize| {
                    (m.block_tables[j / bs] as usize * bs + j % bs) * nkv * d
                };
                for j in 0..keys {
                    let (a, b) = (slot(&meta, lo + j), slot(&m2, j));
                    k2[b..b + nkv * d].copy_from_slice(&k[a..a + nkv * d]);
                    v2[b..b + nkv * d].copy_from_slice(&v[a..a + nkv * d]);
                }
                let mut want = vec![0.0; q_size];
                paged_attention(
                    &mut want, &qkv[t * row..(t + 1) * row], &k2, &v2, &m2, &g2,
                    &AttentionSpec::causal(heads, 0.3),
                );
                prop_assert_eq!(&got[t * q_size..(t + 1) * q_size], &want[..]);
            }
        }
    }
}
