//! Every CUDA kernel against its CPU reference (`backend::cpu`), on random inputs over several shapes:
//! odd sizes (scalar and 16-byte vector paths), GQA ratios 1/4/8, head_dim 64 and 128, paged
//! attention over mixed prefill/decode/chunk lengths with block sizes 16 and 32, and the sampling
//! kernels against the engine's host sampler. For bf16, f16 and f32. Both attention variants
//! (`naive`; `auto` = flash prefill + split-KV decode, docs/attention.md) over contexts of 1, 15, 17,
//! 1000 and 8192 keys, prefill, decode and chunked prefill over a cached prefix in one batch.
//!
//! Inputs are rounded to the compute dtype first, so both sides see the same values; the CPU then
//! computes in f32 and the GPU computes in f32 and rounds its output to the dtype once. Tolerances
//! (eps = 2^-7 bf16, 2^-10 f16, 2^-23 f32; "one rounding" is at most eps/2 relative):
//! - copies (embedding rows, gather, KV write): exact;
//! - one rounding of an f32 result (add, activations, RoPE, attention, embedding + positions):
//!   rel eps, abs 1e-5 (f32 transcendental functions and FMA contraction differ by a few f32 ulps);
//! - reductions (norms): rel eps + 1e-5 (summation order), abs eps;
//! - flash prefill attention (bf16/f16): rel eps, abs eps · max|V| (it rounds the softmax weights to
//!   the dtype before P·V, as FlashAttention does: at most eps/2 · max|V| absolute);
//! - GEMMs: rel eps + abs 1e-5 · Σ|x||w| (f32 accumulation in another order);
//! - the mixture-of-experts MLP (two GEMMs, an activation, a weighted sum): against the reference
//!   rounded where the GPU rounds, rel 2 eps, abs 2 eps · max |want|.
//!
//! Without a GPU every test prints `skipped: no CUDA device: <reason>` and passes.

#[macro_use]
mod cuda_support;

use cuda_support::*;
use infermeter::backend::cpu;
use infermeter::backend::cuda::{
    sampling_row_params, AttentionVariant, AutoTuning, CudaBackend, CudaDtype, PrefillLoads,
};
use infermeter::backend::{
    Alibi, AttentionSpec, Backend, BatchMeta, KvGeometry, MoeRouting, MoeScratch,
};
use infermeter::engine::batch::{build_batch, LogitsWanted, SeqChunk};
use infermeter::engine::sampling::{kept_weights, TokenDraw};
use infermeter::engine::{Sampler, SamplingParams};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type B<T> = CudaBackend<T>;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// (rel, abs) for results rounded once from an f32 computation.
fn one_rounding<T: CudaDtype>() -> (f32, f32) {
    (eps::<T>().max(4.0 * f32::EPSILON), 1e-5)
}

fn download<T: CudaDtype>(b: &B<T>, buf: &<B<T> as Backend>::Buffer, len: usize) -> Vec<f32> {
    b.download(buf, len).expect("download")
}

/// A batch of sequences given as (tokens already cached, new tokens), with block tables drawn from a
/// shuffled pool so that no sequence's blocks are contiguous. Returns the meta and the geometry.
fn paged_batch(
    seqs: &[(usize, usize)],
    block_size: usize,
    num_kv_heads: usize,
    head_dim: usize,
    vocab: u32,
    r: &mut ChaCha8Rng,
) -> (BatchMeta, KvGeometry) {
    let need: usize = seqs
        .iter()
        .map(|&(c, n)| (c + n).div_ceil(block_size))
        .sum();
    let num_blocks = need + 5; // spare blocks hold garbage that attention must not read
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    pool.shuffle(r);
    let mut tables = Vec::new();
    let mut next = 0;
    for &(c, n) in seqs {
        let k = (c + n).div_ceil(block_size);
        tables.push(pool[next..next + k].to_vec());
        next += k;
    }
    let tokens: Vec<Vec<u32>> = seqs
        .iter()
        .map(|&(_, n)| (0..n).map(|_| r.random_range(0..vocab)).collect())
        .collect();
    let chunks: Vec<SeqChunk> = seqs
        .iter()
        .zip(&tokens)
        .zip(&tables)
        .map(|((&(c, _), t), table)| SeqChunk {
            tokens: t,
            start_pos: c,
            block_tables: vec![table],
            logits: LogitsWanted::Last,
        })
        .collect();
    let meta = build_batch(&chunks, block_size);
    let geom = KvGeometry {
        num_blocks,
        block_size,
        num_kv_heads,
        head_dim,
    };
    meta.validate(&geom).expect("valid test batch");
    (meta, geom)
}

// ---- norms and elementwise ------------------------------------------------------------------------

/// `meta` (one KV group) as group 1 of a two-group step whose group 0 is a decoy: other blocks
/// of the same pool for every sequence, so a kernel reading group 0's slots or tables instead of
/// group 1's reads (or writes) other memory than the CPU reference.
fn behind_a_decoy_group(meta: &BatchMeta, geom: &KvGeometry, r: &mut ChaCha8Rng) -> BatchMeta {
    let bs = geom.block_size;
    let mut pool: Vec<u32> = (0..geom.num_blocks as u32).collect();
    pool.shuffle(r);
    let decoy: Vec<u32> = (0..meta.block_tables.len())
        .map(|i| pool[i % pool.len()])
        .collect();
    let mut slots = Vec::with_capacity(2 * meta.num_tokens());
    for s in 0..meta.num_seqs() {
        let row = &decoy[s * meta.max_blocks_per_seq..(s + 1) * meta.max_blocks_per_seq];
        let (q0, q1) = (meta.query_start_loc[s], meta.query_start_loc[s + 1]);
        for t in q0 as usize..q1 as usize {
            let pos = meta.positions[t] as usize;
            slots.push(row[pos / bs] * bs as u32 + (pos % bs) as u32);
        }
    }
    slots.extend_from_slice(&meta.slot_mapping);
    BatchMeta {
        slot_mapping: slots,
        block_tables: [decoy, meta.block_tables.clone()].concat(),
        num_kv_groups: 2,
        ..meta.clone()
    }
}

fn check_norms<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(1);
    let e = eps::<T>();
    // abs: at least 1e-5 — in f32 the two sides differ by their reductions' rounding, not by the
    // dtype: the CPU sums mean and variance element by element (off by up to ~3e-6 from f64 at 4100
    // columns of |x| <= 2), the GPU in a tree; where the bias cancels the normalised value the
    // result is near 0 and a relative bound alone says nothing.
    let (rel, abs) = (e + 1e-5, e.max(1e-5));
    for &rows in &[1usize, 3, 17] {
        for &cols in &[1usize, 7, 64, 100, 1000, 4096, 4100] {
            let what = format!("{} rows={rows} cols={cols}", T::NAME);
            let x = rand_t::<T>(&mut r, rows * cols, 2.0);
            let w = rand_t::<T>(&mut r, cols, 1.5);
            let bias = rand_t::<T>(&mut r, cols, 0.5);
            let (dx, dw, db) = (upload(b, &x), upload(b, &w), upload(b, &bias));
            let mut dout = b.zeros(rows * cols).unwrap();
            let mut want = vec![0.0; rows * cols];

            b.layernorm(&mut dout, &dx, &dw, &db, rows, cols, 1e-5)
                .unwrap();
            cpu::norm::layernorm(&mut want, &x, &w, &bias, rows, cols, 1e-5);
            assert_close(
                &format!("layernorm {what}"),
                &download(b, &dout, rows * cols),
                &want,
                rel,
                abs,
            );

            b.rmsnorm(&mut dout, &dx, &dw, rows, cols, 1e-6).unwrap();
            cpu::norm::rmsnorm(&mut want, &x, &w, rows, cols, 1e-6);
            assert_close(
                &format!("rmsnorm {what}"),
                &download(b, &dout, rows * cols),
                &want,
                rel,
                abs,
            );

            // residual += delta is rounded to T once (bit-exact); out = rmsnorm(stored residual)
            let delta = rand_t::<T>(&mut r, rows * cols, 1.0);
            let mut dres = upload(b, &x);
            b.add_rmsnorm(
                &mut dres,
                &upload(b, &delta),
                &mut dout,
                &dw,
                rows,
                cols,
                1e-6,
            )
            .unwrap();
            let res: Vec<f32> =
                round::<T>(&x.iter().zip(&delta).map(|(a, d)| a + d).collect::<Vec<_>>());
            assert_eq!(
                download(b, &dres, rows * cols),
                res,
                "add_rmsnorm residual {what}"
            );
            cpu::norm::rmsnorm(&mut want, &res, &w, rows, cols, 1e-6);
            assert_close(
                &format!("add_rmsnorm {what}"),
                &download(b, &dout, rows * cols),
                &want,
                rel,
                abs,
            );
        }
    }
}

#[test]
fn norms_match_cpu() {
    for_each_dtype!(check_norms);
}

/// OLMo 2's qk_rmsnorm: each row's whole Q and whole K normalised in place inside the fused QKV
/// rows, V left bit-exact; Q/K widths of OLMo 2 1B (2048 / 2048) and 7B-like GQA (4096 / 1024),
/// and odd widths (the scalar path, unaligned K).
fn check_qk_rmsnorm<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(11);
    let e = eps::<T>();
    let (rel, abs) = (e + 1e-5, e.max(1e-5));
    for &rows in &[1usize, 3, 17] {
        for &(q_cols, k_cols) in &[
            (2048usize, 2048usize),
            (4096, 1024),
            (128, 64),
            (100, 21),
            (7, 3),
        ] {
            let what = format!("qk_rmsnorm {} rows={rows} q={q_cols} k={k_cols}", T::NAME);
            let width = q_cols + 2 * k_cols;
            let qkv = rand_t::<T>(&mut r, rows * width, 2.0);
            let qw = rand_t::<T>(&mut r, q_cols, 1.5);
            let kw = rand_t::<T>(&mut r, k_cols, 1.5);
            let mut dqkv = upload(b, &qkv);
            b.qk_rmsnorm(
                &mut dqkv,
                &upload(b, &qw),
                &upload(b, &kw),
                rows,
                q_cols,
                k_cols,
                1e-5,
            )
            .unwrap();
            let got = download(b, &dqkv, rows * width);
            let mut want = qkv.clone();
            cpu::norm::qk_rmsnorm(&mut want, &qw, &kw, rows, q_cols, k_cols, 1e-5);
            assert_close(&what, &got, &want, rel, abs);
            for row in 0..rows {
                let v = row * width + q_cols + k_cols..(row + 1) * width;
                assert_eq!(got[v.clone()], qkv[v], "{what}: V of row {row} changed");
            }
        }
    }
}

#[test]
fn qk_rmsnorm_matches_cpu() {
    for_each_dtype!(check_qk_rmsnorm);
}

fn check_elementwise<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(2);
    let (rel, abs) = one_rounding::<T>();
    for &len in &[1usize, 7, 8, 1000, 4099, 65_537] {
        let what = format!("{} len={len}", T::NAME);
        let x = rand_t::<T>(&mut r, len, 4.0);
        let y = rand_t::<T>(&mut r, len, 4.0);
        let mut dx = upload(b, &x);
        b.add_inplace(&mut dx, &upload(b, &y), len).unwrap();
        let mut want = x.clone();
        cpu::norm::add_inplace(&mut want, &y);
        assert_close(
            &format!("add_inplace {what}"),
            &download(b, &dx, len),
            &want,
            rel,
            abs,
        );

        let mut dx = upload(b, &x);
        b.scale_inplace(&mut dx, 33.941_124, len).unwrap();
        // the scale is held in T (Backend::scale_inplace): 34.0 in bf16
        let scale = T::from_f32(33.941_124).to_f32();
        let want: Vec<f32> = x.iter().map(|v| v * scale).collect();
        assert_close(
            &format!("scale_inplace {what}"),
            &download(b, &dx, len),
            &want,
            rel,
            abs,
        );

        let mut dx = upload(b, &x);
        b.softcap_inplace(&mut dx, 0.7, len).unwrap();
        let mut want = x.clone();
        cpu::activation::softcap(&mut want, 0.7);
        assert_close(
            &format!("softcap_inplace {what}"),
            &download(b, &dx, len),
            &want,
            rel,
            abs,
        );

        let mut dx = upload(b, &x);
        b.gelu_new(&mut dx, len).unwrap();
        let mut want = x.clone();
        cpu::activation::gelu_new(&mut want);
        assert_close(
            &format!("gelu_new {what}"),
            &download(b, &dx, len),
            &want,
            rel,
            abs,
        );

        let mut dx = upload(b, &x);
        b.gelu_erf(&mut dx, len).unwrap();
        let mut want = x.clone();
        cpu::activation::gelu_erf(&mut want);
        assert_close(
            &format!("gelu_erf {what}"),
            &download(b, &dx, len),
            &want,
            rel,
            abs,
        );

        let mut dx = upload(b, &x);
        b.relu(&mut dx, len).unwrap();
        let mut want = x.clone();
        cpu::activation::relu(&mut want);
        assert_close(
            &format!("relu {what}"),
            &download(b, &dx, len),
            &want,
            rel,
            abs,
        );
    }
    for &rows in &[1usize, 5, 33] {
        for &inter in &[1usize, 7, 172, 256, 1000] {
            let x = rand_t::<T>(&mut r, rows * 2 * inter, 6.0);
            let mut dout = b.zeros(rows * inter).unwrap();
            b.silu_mul(&mut dout, &upload(b, &x), rows, inter).unwrap();
            let mut want = vec![0.0; rows * inter];
            cpu::activation::silu_mul(&mut want, &x, rows, inter);
            assert_close(
                &format!("silu_mul {} rows={rows} inter={inter}", T::NAME),
                &download(b, &dout, rows * inter),
                &want,
                rel,
                abs,
            );
            let mut dout = b.zeros(rows * inter).unwrap();
            b.gelu_tanh_mul(&mut dout, &upload(b, &x), rows, inter)
                .unwrap();
            cpu::activation::gelu_tanh_mul(&mut want, &x, rows, inter);
            assert_close(
                &format!("gelu_tanh_mul {} rows={rows} inter={inter}", T::NAME),
                &download(b, &dout, rows * inter),
                &want,
                rel,
                abs,
            );
        }
    }
}

#[test]
fn elementwise_kernels_match_cpu() {
    for_each_dtype!(check_elementwise);
}

// ---- GEMM -----------------------------------------------------------------------------------------

fn check_linear<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(3);
    let e = eps::<T>();
    for &(m, n, k) in &[
        (1usize, 1usize, 1usize),
        (1, 64, 64),
        (3, 17, 33),
        (7, 172, 64),
        (33, 128, 256),
        (130, 96, 300),
        (1, 512, 128),
    ] {
        for with_bias in [false, true] {
            let x = rand_t::<T>(&mut r, m * k, 1.0);
            let w = rand_t::<T>(&mut r, n * k, 0.5);
            let bias = rand_t::<T>(&mut r, n, 1.0);
            let mut dout = b.zeros(m * n).unwrap();
            // garbage in out must not leak through (beta = 0 without bias; overwritten with bias)
            let garbage = rand_t::<T>(&mut r, m * n, 100.0);
            let mut dout_g = upload(b, &garbage);
            let db = upload(b, &bias);
            let bias_arg = with_bias.then_some(&db);
            b.linear(&mut dout, &upload(b, &x), &upload(b, &w), bias_arg, m, n, k)
                .unwrap();
            b.linear(
                &mut dout_g,
                &upload(b, &x),
                &upload(b, &w),
                bias_arg,
                m,
                n,
                k,
            )
            .unwrap();
            let mut want = vec![0.0; m * n];
            cpu::matmul::linear(&mut want, &x, &w, with_bias.then_some(&bias[..]), m, n, k);
            let got = download(b, &dout, m * n);
            assert_eq!(
                got,
                download(b, &dout_g, m * n),
                "linear ignores out's old contents"
            );
            // per-element bound: rel eps on the result + 1e-5 of the sum of |terms|
            for i in 0..m {
                for j in 0..n {
                    let mag: f32 = (0..k)
                        .map(|t| (x[i * k + t] * w[j * k + t]).abs())
                        .sum::<f32>()
                        + if with_bias { bias[j].abs() } else { 0.0 };
                    let (g, wv) = (got[i * n + j], want[i * n + j]);
                    assert!(
                        (g - wv).abs() <= e * wv.abs() + 1e-5 * mag + 1e-7,
                        "linear {} m={m} n={n} k={k} bias={with_bias} [{i},{j}]: got {g} want {wv}",
                        T::NAME
                    );
                }
            }
        }
    }
}

#[test]
fn linear_matches_cpu() {
    for_each_dtype!(check_linear);
}

// ---- mixture of experts -----------------------------------------------------------------------

/// `moe_experts` (gather, one GEMM pair per expert with tokens on views into the stacked weights,
/// silu_mul, `moe_combine`) against the CPU reference with the same routing, rounded to the dtype
/// where the GPU stores (`cpu::moe::moe_experts`' hook): experts without tokens, one token, odd
/// widths (the combine kernel's scalar path), renormalised and raw weights. Tolerance: rel 2 eps,
/// abs 2 eps · max |want| (a GEMM's f32 sum in another order can round an intermediate one ulp
/// the other way, which the next GEMM carries).
fn check_moe_experts<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(17);
    let e = eps::<T>();
    for &(tokens, hidden, inter, experts, top_k, renormalize) in &[
        (1usize, 64usize, 32usize, 8usize, 2usize, true),
        (5, 64, 48, 8, 2, false),
        (37, 72, 40, 16, 4, true),
        (3, 13, 7, 4, 3, true),
        (130, 128, 96, 64, 8, false),
    ] {
        let x = rand_t::<T>(&mut r, tokens * hidden, 1.0);
        let gate_up = rand_t::<T>(&mut r, experts * 2 * inter * hidden, 0.2);
        let down = rand_t::<T>(&mut r, experts * hidden * inter, 0.2);
        let logits = rand_t::<T>(&mut r, tokens * experts, 2.0);
        let routing = MoeRouting::route(&logits, tokens, experts, top_k, renormalize).unwrap();
        let c = tokens * top_k;
        let sizes = [c * hidden, c * 2 * inter, c * inter, c * hidden];
        let mut dscratch = MoeScratch {
            rows: b.zeros(sizes[0]).unwrap(),
            gate_up: b.zeros(sizes[1]).unwrap(),
            act: b.zeros(sizes[2]).unwrap(),
            out: b.zeros(sizes[3]).unwrap(),
        };
        let mut dout = upload(b, &rand_t::<T>(&mut r, tokens * hidden, 100.0));
        let (dgu, ddown) = (upload(b, &gate_up), upload(b, &down));
        b.moe_experts(
            &mut dout,
            &upload(b, &x),
            &dgu,
            &ddown,
            &routing,
            &mut dscratch,
            hidden,
            inter,
        )
        .unwrap();
        let mut scratch = MoeScratch {
            rows: vec![0.0; sizes[0]],
            gate_up: vec![0.0; sizes[1]],
            act: vec![0.0; sizes[2]],
            out: vec![0.0; sizes[3]],
        };
        let mut want = vec![0.0; tokens * hidden];
        let rounding = |v: &mut [f32]| v.copy_from_slice(&round::<T>(v));
        cpu::moe::moe_experts(
            &mut want,
            &x,
            &gate_up,
            &down,
            &routing,
            &mut scratch,
            hidden,
            inter,
            &rounding,
        );
        let max = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_close(
            &format!(
                "moe_experts {} tokens={tokens} hidden={hidden} inter={inter} top {top_k} of \
                 {experts}",
                T::NAME
            ),
            &download(b, &dout, tokens * hidden),
            &want,
            2.0 * e,
            2.0 * e * max + 1e-6,
        );
    }
    // a plan that does not group its choices is refused before anything runs
    let mut routing = MoeRouting::route(&[0.0, 1.0, 2.0, 3.0], 1, 4, 2, true).unwrap();
    routing.by_expert.swap(0, 1);
    let mut scratch = MoeScratch {
        rows: b.zeros(16).unwrap(),
        gate_up: b.zeros(16).unwrap(),
        act: b.zeros(8).unwrap(),
        out: b.zeros(16).unwrap(),
    };
    let (x, w) = (b.zeros(8).unwrap(), b.zeros(64).unwrap());
    let mut out = b.zeros(8).unwrap();
    let err = b
        .moe_experts(&mut out, &x, &w, &w, &routing, &mut scratch, 8, 2)
        .unwrap_err();
    assert!(err.to_string().contains("group"), "{err}");
}

#[test]
fn moe_experts_match_cpu() {
    for_each_dtype!(check_moe_experts);
}

// ---- embedding and row gathers ------------------------------------------------------------------

fn check_embedding<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(4);
    let vocab = 50;
    for &hidden in &[8usize, 64, 100, 7] {
        let (meta, geom) = paged_batch(&[(0, 5), (3, 1), (10, 9)], 16, 1, 8, vocab, &mut r);
        let t = meta.num_tokens();
        let table = rand_t::<T>(&mut r, vocab as usize * hidden, 1.0);
        let pos = rand_t::<T>(&mut r, 40 * hidden, 1.0);
        let dm = b.prepare(&meta, &geom).unwrap();
        let mut dout = b.zeros(t * hidden).unwrap();
        let mut want = vec![0.0; t * hidden];

        b.embedding(&mut dout, &upload(b, &table), None, &dm, hidden)
            .unwrap();
        cpu::embedding::embedding(
            &mut want,
            &table,
            None,
            &meta.token_ids,
            &meta.positions,
            hidden,
        );
        assert_eq!(
            download(b, &dout, t * hidden),
            want,
            "embedding {} hidden={hidden}",
            T::NAME
        );

        b.embedding(
            &mut dout,
            &upload(b, &table),
            Some(&upload(b, &pos)),
            &dm,
            hidden,
        )
        .unwrap();
        cpu::embedding::embedding(
            &mut want,
            &table,
            Some(&pos),
            &meta.token_ids,
            &meta.positions,
            hidden,
        );
        let (rel, abs) = one_rounding::<T>();
        assert_close(
            &format!("embedding+positions {} hidden={hidden}", T::NAME),
            &download(b, &dout, t * hidden),
            &want,
            rel,
            abs,
        );

        // gather_logit_rows: the rows the sequences want logits for
        let cols = hidden * 3;
        let x = rand_t::<T>(&mut r, t * cols, 1.0);
        let l = meta.num_logits();
        let mut dg = b.zeros(l * cols).unwrap();
        b.gather_logit_rows(&mut dg, &upload(b, &x), &dm, cols)
            .unwrap();
        let mut want = vec![0.0; l * cols];
        cpu::embedding::gather_rows(&mut want, &x, &meta.logits_indices, cols);
        assert_eq!(
            download(b, &dg, l * cols),
            want,
            "gather {} cols={cols}",
            T::NAME
        );

        // a token id outside the table is a typed error, not a fault
        let mut bad = meta.clone();
        bad.token_ids[0] = vocab + 3;
        let dbad = b.prepare(&bad, &geom).unwrap();
        assert!(b
            .embedding(&mut dout, &upload(b, &table), None, &dbad, hidden)
            .is_err());
    }
}

#[test]
fn embedding_and_gather_match_cpu() {
    for_each_dtype!(check_embedding);
}

// ---- RoPE, KV write, attention ---------------------------------------------------------------------

/// A cos/sin table [max_pos, dim] (theta 1e4, computed in f64).
fn cos_sin(max_pos: usize, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let mut t = vec![0.0f32; max_pos * dim];
    for p in 0..max_pos {
        for i in 0..half {
            let a = p as f64 * 10000f64.powf(-2.0 * i as f64 / dim as f64);
            t[p * dim + i] = a.cos() as f32;
            t[p * dim + half + i] = a.sin() as f32;
        }
    }
    t
}

/// RoPE over whole heads and over a leading part of them (a partial rotary: Phi-4-mini's 96 of
/// 128, halves that are and are not a multiple of the 16-byte vector), whose other dimensions must
/// come back untouched.
fn check_rope<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(5);
    let (rel, abs) = one_rounding::<T>();
    for &(heads, kv_heads) in &[(8usize, 8usize), (8, 2), (8, 1)] {
        for &(head_dim, rotary_dim) in &[
            (64usize, 64usize),
            (128, 128),
            (16, 16),
            (6, 6),
            (128, 96),
            (64, 32),
            (16, 12),
        ] {
            let (meta, geom) = paged_batch(
                &[(0, 13), (200, 1), (57, 4)],
                16,
                kv_heads,
                head_dim,
                100,
                &mut r,
            );
            let t = meta.num_tokens();
            let row = (heads + 2 * kv_heads) * head_dim;
            let qkv = rand_t::<T>(&mut r, t * row, 2.0);
            let table = round::<T>(&cos_sin(256, rotary_dim));
            let dm = b.prepare(&meta, &geom).unwrap();
            let mut d = upload(b, &qkv);
            let table_d = upload(b, &table);
            b.rope(&mut d, &table_d, &dm, heads, kv_heads, head_dim, rotary_dim)
                .unwrap();
            let mut want = qkv.clone();
            cpu::rope::rope(
                &mut want,
                row,
                &table,
                &meta.positions,
                heads + kv_heads,
                head_dim,
                rotary_dim,
            );
            assert_close(
                &format!(
                    "rope {} heads={heads}/{kv_heads} d={head_dim} rot={rotary_dim}",
                    T::NAME
                ),
                &download(b, &d, t * row),
                &want,
                rel,
                abs,
            );
        }
    }
}

#[test]
fn rope_matches_cpu() {
    for_each_dtype!(check_rope);
}

/// Qwen3's QK norm fused into RoPE: the kernel normalises, scales and rotates in f32 and rounds
/// once, the CPU reference does the same on the rounded inputs.
fn check_qk_norm_rope<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(6);
    let (rel, abs) = one_rounding::<T>();
    for &(heads, kv_heads) in &[(8usize, 8usize), (8, 2), (16, 8), (8, 1)] {
        for &head_dim in &[64usize, 128, 16, 6] {
            let (meta, geom) = paged_batch(
                &[(0, 13), (200, 1), (57, 4)],
                16,
                kv_heads,
                head_dim,
                100,
                &mut r,
            );
            let t = meta.num_tokens();
            let row = (heads + 2 * kv_heads) * head_dim;
            let qkv = rand_t::<T>(&mut r, t * row, 4.0);
            let q_norm = rand_t::<T>(&mut r, head_dim, 1.0);
            let k_norm = rand_t::<T>(&mut r, head_dim, 1.0);
            let table = round::<T>(&cos_sin(256, head_dim));
            let dm = b.prepare(&meta, &geom).unwrap();
            let mut d = upload(b, &qkv);
            b.qk_norm_rope(
                &mut d,
                &upload(b, &table),
                &upload(b, &q_norm),
                &upload(b, &k_norm),
                &dm,
                heads,
                kv_heads,
                head_dim,
                1e-6,
            )
            .unwrap();
            let mut want = qkv.clone();
            cpu::rope::qk_norm_rope(
                &mut want,
                row,
                &table,
                &meta.positions,
                &q_norm,
                &k_norm,
                heads,
                heads + kv_heads,
                head_dim,
                1e-6,
            );
            assert_close(
                &format!(
                    "qk_norm_rope {} heads={heads}/{kv_heads} d={head_dim}",
                    T::NAME
                ),
                &download(b, &d, t * row),
                &want,
                rel,
                abs,
            );
        }
    }
}

#[test]
fn qk_norm_rope_matches_cpu() {
    for_each_dtype!(check_qk_norm_rope);
}

/// Mixed batches: decode steps (1 new token after a context), a prefill from 0, a chunked prefill in
/// the middle of a sequence, sequences shorter than a block and spanning many.
const SEQS: &[(usize, usize)] = &[
    (0, 1),
    (0, 19),
    (45, 1),
    (30, 7),
    (70, 1),
    (1, 1),
    (100, 33),
];

fn check_kv_write_and_attention<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(6);
    let (rel, abs) = one_rounding::<T>();
    for &block_size in &[16usize, 32] {
        for &(heads, kv_heads) in &[(8usize, 8usize), (8, 2), (8, 1)] {
            for &head_dim in &[64usize, 128] {
                let what = format!(
                    "{} block={block_size} heads={heads}/{kv_heads} (GQA {}) d={head_dim}",
                    T::NAME,
                    heads / kv_heads
                );
                let (meta, geom) = paged_batch(SEQS, block_size, kv_heads, head_dim, 100, &mut r);
                let t = meta.num_tokens();
                let q_size = heads * head_dim;
                let row = q_size + 2 * geom.slot_len();
                let qkv = rand_t::<T>(&mut r, t * row, 1.0);
                // caches full of garbage: slots of the context hold "earlier" tokens' K/V, the rest
                // must never be read
                let mut kc = rand_t::<T>(&mut r, geom.layer_len(), 1.0);
                let mut vc = rand_t::<T>(&mut r, geom.layer_len(), 1.0);
                let dm = b.prepare(&meta, &geom).unwrap();
                let mut dk = upload(b, &kc);
                let mut dv = upload(b, &vc);
                let dqkv = upload(b, &qkv);
                b.write_kv(&mut dk, &mut dv, &dqkv, &dm, &geom, heads, 0)
                    .unwrap();
                cpu::kv_write::write_kv(&mut kc, &mut vc, &qkv, &meta.slot_mapping, &geom, q_size);
                assert_eq!(download(b, &dk, geom.layer_len()), kc, "write_kv K {what}");
                assert_eq!(download(b, &dv, geom.layer_len()), vc, "write_kv V {what}");

                let scale = 1.0 / (head_dim as f32).sqrt();
                // full causal, a sliding window shorter than most contexts here, and a soft-cap
                // small enough to bend these scores (|s| up to ~1.5)
                let causal = AttentionSpec::causal(heads, scale);
                let specs = [
                    causal,
                    AttentionSpec {
                        window: Some(37),
                        ..causal
                    },
                    AttentionSpec {
                        softcap: Some(0.3),
                        ..causal
                    },
                    AttentionSpec {
                        alibi: ALIBI_SCALED,
                        ..causal
                    },
                ];
                for spec in specs {
                    let mut dout = b.zeros(t * q_size).unwrap();
                    b.attention(&mut dout, &dqkv, &dk, &dv, &dm, &geom, &spec)
                        .unwrap();
                    let mut want = vec![0.0; t * q_size];
                    cpu::attention::paged_attention(&mut want, &qkv, &kc, &vc, &meta, &geom, &spec);
                    assert_close(
                        &format!(
                            "attention {what} window {:?} softcap {:?} alibi {:?}",
                            spec.window, spec.softcap, spec.alibi
                        ),
                        &download(b, &dout, t * q_size),
                        &want,
                        rel,
                        abs,
                    );
                }
            }
        }
    }
    // head_dim the naive kernel cannot take: a typed error
    let (meta, geom) = paged_batch(&[(0, 2)], 16, 1, 264, 10, &mut r);
    let dm = b.prepare(&meta, &geom).unwrap();
    let row = 2 * 264 + 2 * 264;
    let mut out = b.zeros(2 * 2 * 264).unwrap();
    let qkv = b.zeros(2 * row).unwrap();
    let kc = b.zeros(geom.layer_len()).unwrap();
    let e = b
        .attention(
            &mut out,
            &qkv,
            &kc,
            &kc,
            &dm,
            &geom,
            &AttentionSpec::causal(2, 1.0),
        )
        .unwrap_err();
    assert!(e.to_string().contains("head_dim 264"), "{e}");
    // a window of no keys, a soft-cap of 0: typed errors, not an empty softmax or NaN
    let (meta, geom) = paged_batch(&[(0, 2)], 16, 1, 64, 10, &mut r);
    let dm = b.prepare(&meta, &geom).unwrap();
    let (mut out, qkv, kc) = (
        b.zeros(2 * 2 * 64).unwrap(),
        b.zeros(2 * 4 * 64).unwrap(),
        b.zeros(geom.layer_len()).unwrap(),
    );
    for (spec, says) in [
        (
            AttentionSpec {
                window: Some(0),
                ..AttentionSpec::causal(2, 1.0)
            },
            "window of 0",
        ),
        (
            AttentionSpec {
                softcap: Some(0.0),
                ..AttentionSpec::causal(2, 1.0)
            },
            "soft-cap 0",
        ),
        (
            AttentionSpec {
                alibi: Some(Alibi {
                    max_bias: 0.0,
                    scale: 1.0,
                }),
                ..AttentionSpec::causal(2, 1.0)
            },
            "ALiBi max bias 0",
        ),
    ] {
        let e = b
            .attention(&mut out, &qkv, &kc, &kc, &dm, &geom, &spec)
            .unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn kv_write_and_paged_attention_match_cpu() {
    for_each_dtype!(check_kv_write_and_attention);
}

// ---- attention variants ------------------------------------------------------------------------

/// Mixed batch for the variants: decode at contexts 1, 2, 15, 17, 1000 and 8192 (none a multiple of
/// the block size but the last), prefills of 15, 17 and 130 tokens (three query tiles), and chunked
/// prefill over cached prefixes (2 tokens after 17, 100 after 900, 64 up to 8192).
const VARIANT_MIXED: &[(usize, usize)] = &[
    (0, 1),
    (14, 1),
    (0, 15),
    (16, 1),
    (999, 1),
    (0, 17),
    (8191, 1),
    (0, 130),
    (1, 1),
    (900, 100),
    (17, 2),
    (8128, 64),
];

/// Decode only (f32's `auto` runs the split-KV kernel only on such steps).
const VARIANT_DECODE: &[(usize, usize)] = &[
    (0, 1),
    (14, 1),
    (16, 1),
    (31, 1),
    (999, 1),
    (4095, 1),
    (8191, 1),
];

/// Per batch row: does it belong to a sequence with two or more new tokens (a prefill row)?
fn prefill_rows(meta: &BatchMeta) -> Vec<bool> {
    let mut rows = vec![false; meta.num_tokens()];
    for w in meta.query_start_loc.windows(2) {
        let (a, b) = (w[0] as usize, w[1] as usize);
        rows[a..b].fill(b - a >= 2);
    }
    rows
}

/// The rows of `v` ([rows, width]) where `keep[row] == want`, concatenated.
fn pick_rows(v: &[f32], width: usize, keep: &[bool], want: bool) -> Vec<f32> {
    v.chunks(width)
        .zip(keep)
        .filter(|(_, &k)| k == want)
        .flat_map(|(row, _)| row.iter().copied())
        .collect()
}

/// A batch for the attention variants: (name, (cached, new) per sequence, window, soft-cap,
/// ALiBi).
type VariantBatch<'a> = (
    &'a str,
    &'a [(usize, usize)],
    Option<usize>,
    Option<f32>,
    Option<Alibi>,
);

/// BLOOM's and MPT's ALiBi: over these contexts head 0 of 8 (slope 1/2) sees a few keys, head 7
/// (1/256) a few thousand.
const ALIBI: Option<Alibi> = Some(Alibi::STANDARD);
/// Falcon-RW's form (slopes times the score scale), steeper: with max bias 4, head 0 of 12 has
/// slope 2^-0.5 / 8 at head_dim 64.
const ALIBI_SCALED: Option<Alibi> = Some(Alibi {
    max_bias: 4.0,
    scale: 0.125,
});

fn check_attention_variants<T: CudaDtype>(b: &B<T>) {
    // (block_size, heads, kv_heads, head_dim): GQA 1/4/8 x head_dim 64/128 x block 16/32, and a
    // head_dim without optimised kernels (auto falls back to the naive kernel)
    let mut configs = Vec::new();
    for &block_size in &[16usize, 32] {
        for &(heads, kv_heads) in &[(8usize, 8usize), (8, 2), (8, 1)] {
            for &head_dim in &[64usize, 128] {
                configs.push((block_size, heads, kv_heads, head_dim));
            }
        }
    }
    configs.push((16, 8, 2, 96));
    // 32 query heads over 2 KV heads: a GQA group of 16 = two decode head chunks
    configs.push((16, 32, 2, 64));
    // Sliding windows: 100 keys (shorter than the 130-token prefill and the chunk of 100 after
    // 900, not a multiple of the block size or of a K/V tile), 1000 (the 999-token decode's
    // context exactly; cuts the 4096 and 8192 ones, over which the splits then run); with them a
    // soft-cap of 0.3, which bends these scores (|s| up to ~1.5); ALiBi alone.
    let batches = [
        ("mixed", VARIANT_MIXED, None, None, None),
        ("mixed", VARIANT_MIXED, Some(100), Some(0.3), None),
        ("mixed", VARIANT_MIXED, None, None, ALIBI),
        ("decode", VARIANT_DECODE, None, None, None),
        ("decode", VARIANT_DECODE, Some(1000), Some(0.3), None),
        ("decode", VARIANT_DECODE, None, None, ALIBI),
    ];
    check_attention_variants_over(b, &batches, &configs);
}

/// Every attention variant against the CPU reference over `batches` × `configs` ((block_size,
/// heads, kv_heads, head_dim)). A windowed batch runs as KV group 1 of a two-group step behind a
/// decoy group ([`behind_a_decoy_group`]), as a hybrid model's sliding layers do.
fn check_attention_variants_over<T: CudaDtype>(
    b: &B<T>,
    batches: &[VariantBatch],
    configs: &[(usize, usize, usize, usize)],
) {
    let mut r = rng(11);
    let (rel, abs) = one_rounding::<T>();
    // V is uniform in [-1, 1), so eps * max|V| = eps
    let (flash_rel, flash_abs) = if T::NAME == "f32" {
        (rel, abs)
    } else {
        (eps::<T>(), eps::<T>())
    };
    for &(batch_name, batch, window, softcap, alibi) in batches {
        for &(block_size, heads, kv_heads, head_dim) in configs {
            let what = format!(
                "{} {batch_name} block={block_size} heads={heads}/{kv_heads} (GQA {}) d={head_dim} \
                 window {window:?} softcap {softcap:?} alibi {alibi:?}",
                T::NAME,
                heads / kv_heads
            );
            let (meta, geom) = paged_batch(batch, block_size, kv_heads, head_dim, 100, &mut r);
            // the windowed batches run as a sliding group (group 1) of a hybrid model's step
            let (meta, kv_group) = match window {
                Some(_) => (behind_a_decoy_group(&meta, &geom, &mut r), 1),
                None => (meta, 0),
            };
            let t = meta.num_tokens();
            let q_size = heads * head_dim;
            let row = q_size + 2 * geom.slot_len();
            let qkv = rand_t::<T>(&mut r, t * row, 1.0);
            let mut kc = rand_t::<T>(&mut r, geom.layer_len(), 1.0);
            let mut vc = rand_t::<T>(&mut r, geom.layer_len(), 1.0);
            let dm = b.prepare(&meta, &geom).unwrap();
            let mut dk = upload(b, &kc);
            let mut dv = upload(b, &vc);
            let dqkv = upload(b, &qkv);
            b.write_kv(&mut dk, &mut dv, &dqkv, &dm, &geom, heads, kv_group)
                .unwrap();
            let slots = meta.slot_mapping_of(kv_group);
            cpu::kv_write::write_kv(&mut kc, &mut vc, &qkv, slots, &geom, q_size);
            assert_eq!(download(b, &dk, geom.layer_len()), kc, "write_kv K {what}");
            let spec = AttentionSpec {
                num_heads: heads,
                scale: 1.0 / (head_dim as f32).sqrt(),
                window,
                softcap,
                alibi,
                kv_group,
            };
            let mut want = vec![0.0; t * q_size];
            cpu::attention::paged_attention(&mut want, &qkv, &kc, &vc, &meta, &geom, &spec);
            let is_prefill = prefill_rows(&meta);

            let tuned = |decode_splits, prefill_loads| AutoTuning {
                decode_splits,
                prefill_loads,
            };
            let runs = [
                ("naive", AttentionVariant::Naive, AutoTuning::default()),
                ("auto", AttentionVariant::Auto, AutoTuning::default()),
                (
                    "auto sync prefill loads",
                    AttentionVariant::Auto,
                    tuned(None, PrefillLoads::Sync),
                ),
                (
                    "auto splits=1",
                    AttentionVariant::Auto,
                    tuned(Some(1), PrefillLoads::Pipelined),
                ),
                (
                    "auto splits=7",
                    AttentionVariant::Auto,
                    tuned(Some(7), PrefillLoads::Pipelined),
                ),
            ];
            for (label, variant, tuning) in runs {
                let mut bv = b.clone().with_attention_variant(variant);
                bv.set_auto_tuning(tuning);
                let mut dout = bv.zeros(t * q_size).unwrap();
                bv.attention(&mut dout, &dqkv, &dk, &dv, &dm, &geom, &spec)
                    .unwrap_or_else(|e| panic!("{label} {what}: {e}"));
                let got = download(&bv, &dout, t * q_size);
                for (rows_name, prefill) in [("decode rows", false), ("prefill rows", true)] {
                    let (tr, ta) = if prefill && variant == AttentionVariant::Auto {
                        (flash_rel, flash_abs)
                    } else {
                        (rel, abs)
                    };
                    assert_close(
                        &format!("attention {label} {what} {rows_name}"),
                        &pick_rows(&got, q_size, &is_prefill, prefill),
                        &pick_rows(&want, q_size, &is_prefill, prefill),
                        tr,
                        ta,
                    );
                }
            }
        }
    }
}

#[test]
fn attention_variants_match_cpu() {
    for_each_dtype!(check_attention_variants);
}

/// Short sequences: decodes, prefills from scratch and a chunk over a cached prefix.
const VARIANT_SHORT: &[(usize, usize)] = &[(0, 1), (14, 1), (0, 15), (40, 1), (33, 20), (130, 1)];

fn check_attention_kv_groups<T: CudaDtype>(b: &B<T>) {
    // a 24-key window (a sliding group, behind a decoy group 0) with a soft-cap, and full attention
    // for comparison; head_dim 64 and 128 with GQA 4 and 1, so the optimised kernels run
    let batches = [
        ("short", VARIANT_SHORT, None, None, None),
        ("short", VARIANT_SHORT, Some(24), Some(0.3), None),
        ("short", VARIANT_SHORT, None, None, ALIBI),
    ];
    check_attention_variants_over(b, &batches, &[(16, 8, 2, 64), (32, 8, 8, 128)]);
    // ALiBi over 12 heads (not a power of two: the slopes' second series) in Falcon-RW's form,
    // with a window: every score modifier but the soft-cap at once
    let batches = [("short", VARIANT_SHORT, Some(24), None, ALIBI_SCALED)];
    check_attention_variants_over(b, &batches, &[(16, 12, 3, 64)]);
}

/// The attention variants read the KV group their layer names: a sliding group's step (group 1
/// behind a decoy group 0) through the naive kernel, the flash prefill and the split-KV decode,
/// on short sequences (the whole sweep is `attention_variants_match_cpu`).
#[test]
fn attention_variants_read_their_kv_group() {
    for_each_dtype!(check_attention_kv_groups);
}

/// The variant comes from INFERMETER_ATTENTION when the backend opens (default naive) and can be
/// changed per clone.
#[test]
fn attention_variant_selection() {
    if !gpu_or_skip() {
        return;
    }
    let b = open::<half::bf16>();
    let from_env = std::env::var("INFERMETER_ATTENTION").ok();
    if from_env.as_deref().is_none_or(|v| v.trim().is_empty()) {
        assert_eq!(b.attention_variant(), AttentionVariant::Naive);
    }
    let auto = b.clone().with_attention_variant(AttentionVariant::Auto);
    assert_eq!(auto.attention_variant(), AttentionVariant::Auto);
    assert_eq!(
        b.clone()
            .with_attention_variant(AttentionVariant::Naive)
            .attention_variant(),
        AttentionVariant::Naive
    );
}

// ---- sampling ----------------------------------------------------------------------------------

fn check_argmax<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(7);
    for &vocab in &[1usize, 7, 1000, 50_257] {
        let rows = 5;
        let mut logits: Vec<f32> = (0..rows * vocab)
            .map(|_| r.random_range(-10.0..10.0))
            .collect();
        if vocab > 3 {
            // a tie (the first index wins) and a row of -inf (0)
            let m = logits[vocab..2 * vocab]
                .iter()
                .cloned()
                .fold(f32::MIN, f32::max)
                + 1.0;
            logits[vocab + 1] = m;
            logits[vocab + vocab - 1] = m;
            logits[2 * vocab..3 * vocab].fill(f32::NEG_INFINITY);
        }
        // the kernels read the LM head's output in the compute dtype: both sides see T's values
        let logits = round::<T>(&logits);
        let d = upload(b, &logits);
        let got = b.argmax_rows(&d, rows, vocab).unwrap();
        let want: Vec<u32> = logits
            .chunks(vocab)
            .map(infermeter::engine::sampling::argmax)
            .collect();
        assert_eq!(got, want, "argmax_rows vocab={vocab}");
    }
}

#[test]
fn argmax_rows_matches_host_argmax() {
    for_each_dtype!(check_argmax);
}

/// The host sampler's kept tokens in rank order with their cumulative probabilities (to tell a
/// genuine mismatch from a draw that falls within f32 rounding of a boundary between two tokens).
fn host_cdf(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f32)> {
    let draw = TokenDraw {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        uniform: 0.0,
    };
    let kept = kept_weights(logits, &draw);
    let total: f32 = kept.iter().map(|x| x.1).sum();
    let mut acc = 0.0;
    kept.iter()
        .map(|&(id, w)| {
            acc += w / total;
            (id, acc)
        })
        .collect()
}

fn check_sampling<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(8);
    let vocab = 1000;
    let (mut total, mut near_boundary) = (0, 0);
    for &temperature in &[0.0f32, 0.7, 1.0, 1.5] {
        for &top_k in &[0usize, 1, 5, 50] {
            for &top_p in &[1.0f32, 0.9, 0.5] {
                let rows = 16;
                let mut logits: Vec<f32> = rand_t::<T>(&mut r, rows * vocab, 4.0);
                // ties in rank order
                logits[3] = logits[7];
                let mut params = Vec::new();
                let mut want = Vec::new();
                let mut cdfs = Vec::new();
                for row in 0..rows {
                    let sp = SamplingParams {
                        temperature,
                        top_k,
                        top_p,
                        seed: 1000 + row as u64,
                    };
                    // the Sampler's first draw, reproduced: one f32 from its seeded stream
                    let u: f32 = ChaCha8Rng::seed_from_u64(sp.seed).random();
                    let lr = &logits[row * vocab..(row + 1) * vocab];
                    want.push(Sampler::new(sp).sample(lr));
                    params.push(sampling_row_params(&sp, u));
                    cdfs.push((u, (temperature > 0.0).then(|| host_cdf(lr, &sp))));
                }
                let d = upload(b, &logits);
                let got = b.sample_rows(&d, &params, vocab).unwrap();
                for (row, (g, w)) in got.iter().zip(&want).enumerate() {
                    total += 1;
                    if g == w {
                        continue;
                    }
                    let (u, cdf) = &cdfs[row];
                    let what = format!(
                        "sample_rows {} t={temperature} k={top_k} p={top_p} row {row}: gpu {g} host {w}",
                        T::NAME
                    );
                    let cdf = cdf.as_ref().unwrap_or_else(|| panic!("{what} (greedy)"));
                    // allowed only when the draw sits within f32 rounding of the boundary between
                    // the two tokens, which must be neighbours in rank order
                    let pos = |t: u32| cdf.iter().position(|&(id, _)| id == t);
                    let (pg, pw) = (pos(*g), pos(*w));
                    let ok = match (pg, pw) {
                        (Some(a), Some(c)) if a.abs_diff(c) == 1 => {
                            (cdf[a.min(c)].1 - u).abs() < 1e-4
                        }
                        _ => false,
                    };
                    assert!(ok, "{what}");
                    near_boundary += 1;
                }
            }
        }
    }
    assert!(
        near_boundary * 100 <= total,
        "{near_boundary} of {total} draws differ at boundaries: more than rounding explains"
    );
}

#[test]
fn sample_rows_matches_the_host_sampler() {
    for_each_dtype!(check_sampling);
}

/// Sampling rows can be launched for many rows at once and argmax agrees with temperature 0.
fn check_sampling_shapes<T: CudaDtype>(b: &B<T>) {
    let mut r = rng(9);
    for &(rows, vocab) in &[(1usize, 1usize), (3, 2), (300, 128), (2, 128_256)] {
        let logits = rand_t::<T>(&mut r, rows * vocab, 3.0);
        let d = upload(b, &logits);
        let greedy = vec![sampling_row_params(&SamplingParams::greedy(), 0.5); rows];
        assert_eq!(
            b.sample_rows(&d, &greedy, vocab).unwrap(),
            b.argmax_rows(&d, rows, vocab).unwrap(),
            "rows={rows} vocab={vocab}"
        );
    }
}

#[test]
fn sampling_kernels_over_shapes() {
    for_each_dtype!(check_sampling_shapes);
}

/// The engine's path (`Backend::pick_tokens`): bans set in place, then argmax (all greedy) or
/// sampling, only the ids copied back. With greedy draws and uniform draws of 0 (the most likely
/// kept token) the host's `pick_rows` must agree exactly.
fn check_pick_tokens<T: CudaDtype>(b: &B<T>) {
    use infermeter::engine::sampling::{pick_rows, TokenBan};
    let mut r = rng(10);
    for &(rows, vocab) in &[(1usize, 7usize), (4, 1000), (3, 50_257)] {
        let logits = rand_t::<T>(&mut r, rows * vocab, 5.0);
        // each row's best token banned (and one pair out of range, ignored)
        let mut bans: Vec<TokenBan> = logits
            .chunks(vocab)
            .enumerate()
            .map(|(row, l)| TokenBan {
                row: row as u32,
                token: infermeter::engine::sampling::argmax(l),
            })
            .collect();
        bans.push(TokenBan {
            row: rows as u32,
            token: 0,
        });
        let sampling = TokenDraw {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            uniform: 0.0,
        };
        for draws in [
            vec![TokenDraw::greedy(); rows],
            (0..rows)
                .map(|i| {
                    if i % 2 == 0 {
                        sampling
                    } else {
                        TokenDraw::greedy()
                    }
                })
                .collect(),
        ] {
            for ban in [&bans[..], &[]] {
                let mut d = upload(b, &logits);
                let got = b.pick_tokens(&mut d, vocab, &draws, ban).unwrap();
                let want = pick_rows(&mut logits.clone(), vocab, &draws, ban);
                assert_eq!(
                    got,
                    Some(want),
                    "pick_tokens {} rows={rows} vocab={vocab} bans={}",
                    T::NAME,
                    ban.len()
                );
                let after = download(b, &d, rows * vocab);
                for t in ban.iter().filter(|t| (t.row as usize) < rows) {
                    assert_eq!(
                        after[t.row as usize * vocab + t.token as usize],
                        f32::NEG_INFINITY
                    );
                }
            }
        }
    }
}

#[test]
fn pick_tokens_matches_the_host_pick() {
    for_each_dtype!(check_pick_tokens);
}
