//! Build one case on a device: its buffers, its batch metadata, and a closure that runs the op
//! once.
//!
//! Ops of the `Backend` trait are set up generically over the backend ([`prepare_on`]): inputs are
//! uploaded with `Backend::upload`, metadata goes through `Backend::prepare` (validated once), and
//! the closure calls the trait method, so the CPU and CUDA backends get the same studies. Argmax and
//! sampling are not backend ops: on the CPU they run the engine's host sampler
//! (`engine::sampling`), on a GPU the CUDA backend's sampling kernels ([`super::gpu`]). Inputs are
//! deterministic pseudo-random values; KV blocks are handed out in a shuffled order, as a paged
//! cache's pool would after some churn.
//!
//! On the CPU the closure runs the op synchronously; on a GPU ([`Target::Cuda`], see
//! [`super::gpu`]) it queues the op on the backend's stream, and CUDA events time it. Calls repeat
//! on the same buffers, so in-place ops see their own output again: `gelu_new` and `gelu_erf` start
//! from values in [6, 7), where tanh (and erf of u / √2) rounds to exactly 1 in f32 and each value
//! is a fixed point (the tanh or erf is still computed; in bf16 and f16 too, since the kernels compute in f32 and the inputs are
//! representable), so every call sees the same data instead of decaying towards zero and
//! denormals.

use rayon::prelude::*;

use crate::backend::cpu::CpuBackend;
use crate::backend::{Alibi, AttentionSpec, Backend, BatchMeta, KvGeometry};
use crate::engine::sampling::{argmax, Sampler, SamplingParams, TokenDraw};
use crate::error::{Error, Result};
use crate::model::tensor_store::HostTensor;
use crate::model::Model;

use super::ops::{Case, Op, Shape};
use super::timing::{Clock, HostClock};
use super::variant::Variant;
use super::{Device, Dtype};

/// Runs the op once.
pub type RunFn = Box<dyn FnMut() -> Result<()>>;

/// Fraction of the available memory a case may allocate.
const MEMORY_SHARE: f64 = 0.8;

/// Where cases run: the CPU backend, or a CUDA device opened once for the whole run.
#[derive(Debug, Clone)]
pub enum Target {
    Cpu,
    Cuda(Box<super::gpu::CudaSession>),
}

impl Target {
    /// Open `device` with compute dtype `dtype` (the CPU computes in f32 only) on CUDA device
    /// `ordinal`. Without a usable GPU: "no CUDA device: <reason>".
    pub fn open(device: Device, dtype: Dtype, ordinal: usize) -> Result<Self> {
        match device {
            Device::Cpu if dtype != Dtype::F32 => Err(Error::Invalid(format!(
                "the CPU backend computes in f32, not {}",
                dtype.name()
            ))),
            Device::Cpu => Ok(Target::Cpu),
            Device::Cuda => Ok(Target::Cuda(Box::new(super::gpu::CudaSession::open(
                dtype, ordinal,
            )?))),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Target::Cpu => Device::Cpu,
            Target::Cuda(_) => Device::Cuda,
        }
    }

    /// The compute dtype: what the bytes of every case are counted in.
    pub fn dtype(&self) -> Dtype {
        match self {
            Target::Cpu => Dtype::F32,
            Target::Cuda(s) => s.dtype(),
        }
    }

    /// `Err` with the reason when the case does not fit in this target's memory.
    pub fn check_memory(&self, case: &Case) -> Result<()> {
        match self {
            Target::Cpu => check_memory(case),
            Target::Cuda(s) => s.check_memory(case),
        }
    }

    /// The clock that times this target's calls: the host clock on the CPU, CUDA events on a GPU
    /// (with an L2 flush before every call when `cold_l2`).
    pub fn clock(&self, cold_l2: bool) -> Result<Box<dyn Clock>> {
        match self {
            Target::Cpu if cold_l2 => Err(Error::Invalid(
                "the cold-L2 flush applies to CUDA studies only".into(),
            )),
            Target::Cpu => Ok(Box::new(HostClock)),
            Target::Cuda(s) => Ok(Box::new(s.clock(cold_l2)?)),
        }
    }
}

/// Set a case up on `target`. Fails with the reason when the case does not fit in memory.
pub fn prepare(target: &Target, case: &Case) -> Result<RunFn> {
    match (target, case.op) {
        (Target::Cpu, Op::Argmax | Op::Sample) => {
            check_memory(case)?;
            prepare_host_sampling(case)
        }
        (Target::Cpu, _) => {
            check_memory(case)?;
            prepare_on(CpuBackend, case)
        }
        (Target::Cuda(session), _) => session.prepare(case),
    }
}

/// `Err` with the reason when the case needs more memory than this machine has available.
pub fn check_memory(case: &Case) -> Result<()> {
    let need = case.alloc_bytes();
    let host = crate::telemetry::host::HostInfo::collect();
    if let Some(avail) = host.memory_available_bytes {
        if need as f64 > avail as f64 * MEMORY_SHARE {
            return Err(Error::Invalid(format!(
                "too large for this machine: needs about {:.1} GiB, more than {:.0}% of the \
                 {:.1} GiB available",
                need as f64 / GIB,
                MEMORY_SHARE * 100.0,
                avail as f64 / GIB
            )));
        }
    }
    Ok(())
}

const GIB: f64 = (1u64 << 30) as f64;

/// Deterministic pseudo-random values in [lo, hi) (SplitMix64 of the index), filled in parallel.
pub fn fill(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; len];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(chunk, out)| {
            let base = (chunk as u64) << 16;
            for (i, x) in out.iter_mut().enumerate() {
                let r = splitmix(seed ^ (base + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let unit = (r >> 40) as f32 / (1u64 << 24) as f32;
                *x = lo + (hi - lo) * unit;
            }
        });
    v
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Metadata of `seqs` sequences, each with `query_len` new tokens ending a context of
/// `context_len`, over a cache of exactly the blocks they need, handed out in a shuffled order.
/// Token ids are pseudo-random below `vocab`; logits are wanted for each sequence's last token.
pub fn paged_meta(
    seqs: usize,
    query_len: usize,
    context_len: usize,
    block_size: usize,
    vocab: usize,
) -> Result<(BatchMeta, usize)> {
    if seqs == 0 || query_len == 0 || query_len > context_len || block_size == 0 || vocab == 0 {
        return Err(Error::Invalid(format!(
            "bad study batch: {seqs} sequences of {query_len} new tokens in a context of \
             {context_len}, blocks of {block_size}, vocabulary {vocab}"
        )));
    }
    let per_seq = context_len.div_ceil(block_size);
    let num_blocks = seqs * per_seq;
    // Fisher-Yates with SplitMix64: a fixed, scattered block order
    let mut order: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..num_blocks).rev() {
        let j = (splitmix(i as u64) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut m = BatchMeta {
        max_blocks_per_seq: per_seq,
        block_tables: order,
        ..BatchMeta::default()
    };
    m.query_start_loc.push(0);
    for s in 0..seqs {
        for p in context_len - query_len..context_len {
            let block = m.block_tables[s * per_seq + p / block_size] as usize;
            m.token_ids
                .push((splitmix((s * context_len + p) as u64) % vocab as u64) as u32);
            m.positions.push(p as u32);
            m.slot_mapping
                .push((block * block_size + p % block_size) as u32);
        }
        m.query_start_loc.push(m.token_ids.len() as u32);
        m.seq_lens.push(context_len as u32);
        m.logits_indices.push(m.token_ids.len() as u32 - 1);
    }
    Ok((m, num_blocks))
}

/// Set a case of a `Backend` op (or a decode step) up on `backend`.
pub fn prepare_on<B>(backend: B, case: &Case) -> Result<RunFn>
where
    B: Backend + 'static,
    B::Buffer: 'static,
    B::Meta: 'static,
{
    let b = backend;
    let up = |len: usize, seed: u64, lo: f32, hi: f32| -> Result<B::Buffer> {
        b.upload(&HostTensor::new(vec![len], fill(len, seed, lo, hi)))
    };
    let eps = 1e-5;
    let run: RunFn = match (&case.shape, case.op) {
        (&Shape::Rows { rows, cols }, op) => {
            let n = rows * cols;
            let x = up(n, 1, -1.0, 1.0)?;
            let w = up(cols, 2, 0.5, 1.5)?;
            let bias = up(cols, 3, -0.1, 0.1)?;
            let mut out = b.zeros(n)?;
            match op {
                Op::Layernorm => {
                    Box::new(move || b.layernorm(&mut out, &x, &w, &bias, rows, cols, eps))
                }
                Op::AddRmsnorm => {
                    let (mut residual, delta) = (x, up(n, 4, -1.0, 1.0)?);
                    Box::new(move || {
                        b.add_rmsnorm(&mut residual, &delta, &mut out, &w, rows, cols, eps)
                    })
                }
                _ => Box::new(move || b.rmsnorm(&mut out, &x, &w, rows, cols, eps)),
            }
        }
        (
            &Shape::QkRows {
                rows,
                q_cols,
                k_cols,
            },
            _,
        ) => {
            let mut qkv = up(rows * (q_cols + 2 * k_cols), 1, -1.0, 1.0)?;
            let q_norm = up(q_cols, 2, 0.5, 1.5)?;
            let k_norm = up(k_cols, 3, 0.5, 1.5)?;
            Box::new(move || b.qk_rmsnorm(&mut qkv, &q_norm, &k_norm, rows, q_cols, k_cols, eps))
        }
        (&Shape::Elementwise { len }, Op::AddInplace) => {
            let (mut x, y) = (up(len, 1, -1.0, 1.0)?, up(len, 2, -1.0, 1.0)?);
            Box::new(move || b.add_inplace(&mut x, &y, len))
        }
        (&Shape::Elementwise { len }, op) => {
            // [6, 7): fixed points of f32 gelu_new and gelu_erf (see the module docs)
            let mut x = up(len, 1, 6.0, 7.0)?;
            match op {
                Op::GeluErf => Box::new(move || b.gelu_erf(&mut x, len)),
                // (positive inputs are fixed points of relu too)
                Op::Relu => Box::new(move || b.relu(&mut x, len)),
                _ => Box::new(move || b.gelu_new(&mut x, len)),
            }
        }
        (&Shape::SiluMul { rows, inter }, op) => {
            let x = up(rows * 2 * inter, 1, -4.0, 4.0)?;
            let mut out = b.zeros(rows * inter)?;
            if op == Op::GeluTanhMul {
                Box::new(move || b.gelu_tanh_mul(&mut out, &x, rows, inter))
            } else {
                Box::new(move || b.silu_mul(&mut out, &x, rows, inter))
            }
        }
        (
            &Shape::Rope {
                tokens,
                num_heads,
                num_kv_heads,
                head_dim,
                rotary_dim,
            },
            op,
        ) => {
            let (meta, num_blocks) = paged_meta(1, tokens, tokens, super::sweep::BLOCK_SIZE, 1)?;
            let geom = geometry(num_blocks, num_kv_heads, head_dim);
            let meta = b.prepare(&meta, &geom)?;
            let rope = crate::model::config::RopeConfig {
                theta: 500_000.0,
                scaling: crate::model::config::RopeScaling::Default,
            };
            let table = crate::model::rope::cos_sin_table(&rope, rotary_dim, tokens);
            let cos_sin = b.upload(&HostTensor::new(vec![tokens, rotary_dim], table))?;
            let mut qkv = up(
                tokens * (num_heads + 2 * num_kv_heads) * head_dim,
                1,
                -1.0,
                1.0,
            )?;
            if op == Op::QkNormRope {
                // norm weights near 1, as trained ones are
                let q_norm = up(head_dim, 2, 0.5, 1.5)?;
                let k_norm = up(head_dim, 3, 0.5, 1.5)?;
                Box::new(move || {
                    b.qk_norm_rope(
                        &mut qkv,
                        &cos_sin,
                        &q_norm,
                        &k_norm,
                        &meta,
                        num_heads,
                        num_kv_heads,
                        head_dim,
                        1e-6,
                    )
                })
            } else {
                Box::new(move || {
                    b.rope(
                        &mut qkv,
                        &cos_sin,
                        &meta,
                        num_heads,
                        num_kv_heads,
                        head_dim,
                        rotary_dim,
                    )
                })
            }
        }
        (
            &Shape::Embedding {
                tokens,
                hidden,
                vocab,
                learned_positions,
            },
            _,
        ) => {
            let (meta, num_blocks) =
                paged_meta(1, tokens, tokens, super::sweep::BLOCK_SIZE, vocab)?;
            let meta = b.prepare(&meta, &geometry(num_blocks, 1, 1))?;
            let table = up(vocab * hidden, 1, -0.1, 0.1)?;
            let pos = if learned_positions {
                Some(up(tokens * hidden, 2, -0.1, 0.1)?)
            } else {
                None
            };
            let mut out = b.zeros(tokens * hidden)?;
            Box::new(move || b.embedding(&mut out, &table, pos.as_ref(), &meta, hidden))
        }
        (&Shape::Gather { rows, tokens, cols }, _) => {
            if rows == 0 || tokens % rows != 0 {
                return Err(Error::Invalid(format!(
                    "gather of {rows} rows from {tokens} tokens: tokens must be a multiple of rows"
                )));
            }
            let q = tokens / rows;
            let (meta, num_blocks) = paged_meta(rows, q, q, super::sweep::BLOCK_SIZE, 1)?;
            let meta = b.prepare(&meta, &geometry(num_blocks, 1, 1))?;
            let x = up(tokens * cols, 1, -1.0, 1.0)?;
            let mut out = b.zeros(rows * cols)?;
            Box::new(move || b.gather_logit_rows(&mut out, &x, &meta, cols))
        }
        (
            &Shape::WriteKv {
                tokens,
                num_heads,
                num_kv_heads,
                head_dim,
                block_size,
            },
            _,
        ) => {
            let (meta, num_blocks) = paged_meta(1, tokens, tokens, block_size, 1)?;
            let geom = KvGeometry {
                num_blocks,
                block_size,
                num_kv_heads,
                head_dim,
            };
            let meta = b.prepare(&meta, &geom)?;
            let qkv = up(
                tokens * (num_heads + 2 * num_kv_heads) * head_dim,
                1,
                -1.0,
                1.0,
            )?;
            let (mut k, mut v) = (b.zeros(geom.layer_len())?, b.zeros(geom.layer_len())?);
            Box::new(move || b.write_kv(&mut k, &mut v, &qkv, &meta, &geom, num_heads, 0))
        }
        (
            &Shape::Attention {
                seqs,
                query_len,
                context_len,
                num_heads,
                num_kv_heads,
                head_dim,
                block_size,
                window,
                softcap,
                alibi,
            },
            _,
        ) => {
            let (meta, num_blocks) = paged_meta(seqs, query_len, context_len, block_size, 1)?;
            let geom = KvGeometry {
                num_blocks,
                block_size,
                num_kv_heads,
                head_dim,
            };
            let meta = b.prepare(&meta, &geom)?;
            let t = seqs * query_len;
            let qkv = up(t * (num_heads + 2 * num_kv_heads) * head_dim, 1, -1.0, 1.0)?;
            let k = up(geom.layer_len(), 2, -1.0, 1.0)?;
            let v = up(geom.layer_len(), 3, -1.0, 1.0)?;
            let mut out = b.zeros(t * num_heads * head_dim)?;
            let scale = 1.0 / (head_dim as f32).sqrt();
            let spec = AttentionSpec {
                window,
                softcap,
                alibi: alibi.map(|max_bias| Alibi {
                    max_bias,
                    scale: 1.0,
                }),
                ..AttentionSpec::causal(num_heads, scale)
            };
            Box::new(move || b.attention(&mut out, &qkv, &k, &v, &meta, &geom, &spec))
        }
        (&Shape::Matmul { m, n, k, .. }, _) => {
            let x = up(m * k, 1, -1.0, 1.0)?;
            let w = up(n * k, 2, -0.05, 0.05)?;
            let mut out = b.zeros(m * n)?;
            Box::new(move || b.linear(&mut out, &x, &w, None, m, n, k))
        }
        (
            Shape::DecodeStep {
                batch,
                context,
                block_size,
                config,
            },
            _,
        ) => {
            let weights = crate::model::weights::dummy_weights(config, 0);
            // the engine's path: on CUDA the warm-up call records the step into a CUDA graph and
            // the timed calls replay it (model::graphs); the `eager` variant launches every
            // kernel from the host instead (`run --no-cuda-graphs`)
            let model = Model::new(b, (**config).clone(), weights)?;
            model.set_graphs(case.variant != Some(Variant::Eager));
            let graphs = case.variant == Some(Variant::Graphs);
            let (meta, num_blocks) =
                paged_meta(*batch, 1, *context, *block_size, config.vocab_size)?;
            let mut kv = model.alloc_kv(num_blocks, *block_size)?;
            // greedy picks as the engine makes them: on the device where the backend can
            let draws = vec![TokenDraw::greedy(); meta.num_logits()];
            Box::new(move || {
                let tokens = model.forward_pick(&meta, &mut kv, &draws, &[])?;
                std::hint::black_box(tokens);
                // a failed recording turns graphs off (the step still runs, eagerly): timing
                // that as `graphs` would mislabel the eager step
                if graphs && !model.graph_stats().enabled {
                    let why = model.graph_stats().disabled_reason.unwrap_or_default();
                    return Err(Error::Invalid(format!(
                        "CUDA graphs were turned off, the step would run eagerly: {why}"
                    )));
                }
                Ok(())
            })
        }
        (Shape::Logits { .. } | Shape::Sampling { .. }, _) => {
            return Err(Error::Invalid(
                "sampling is not a backend op: it runs on the host (`prepare`)".into(),
            ))
        }
    };
    Ok(run)
}

/// The rows, vocabulary and sampling parameters of an argmax (`None`) or sampling case, on any
/// backend.
pub(crate) fn sampling_shape(case: &Case) -> Result<(usize, usize, Option<SamplingParams>)> {
    let (rows, vocab, params) = match case.shape {
        Shape::Logits { rows, vocab } => (rows, vocab, None),
        Shape::Sampling {
            rows,
            vocab,
            temperature,
            top_k,
            top_p,
        } => (
            rows,
            vocab,
            Some(SamplingParams {
                temperature: temperature as f32,
                top_k,
                top_p: top_p as f32,
                seed: 0,
            }),
        ),
        _ => {
            return Err(Error::Invalid(format!(
                "{} needs a logits shape",
                case.op.name()
            )))
        }
    };
    if vocab == 0 {
        return Err(Error::Invalid("sampling over an empty vocabulary".into()));
    }
    Ok((rows, vocab, params))
}

/// Argmax or sampling over logits rows with the engine's CPU sampler.
fn prepare_host_sampling(case: &Case) -> Result<RunFn> {
    let (rows, vocab, params) = sampling_shape(case)?;
    // logits spread like a model's: most far below the top few
    let logits = fill(rows * vocab, 7, -12.0, 12.0);
    match params {
        None => Ok(Box::new(move || {
            for row in logits.chunks(vocab) {
                std::hint::black_box(argmax(row));
            }
            Ok(())
        })),
        Some(params) => {
            params.validate()?;
            let mut samplers: Vec<Sampler> = (0..rows)
                .map(|r| {
                    Sampler::new(SamplingParams {
                        seed: r as u64,
                        ..params
                    })
                })
                .collect();
            Ok(Box::new(move || {
                for (row, s) in logits.chunks(vocab).zip(samplers.iter_mut()) {
                    std::hint::black_box(s.sample(row));
                }
                Ok(())
            }))
        }
    }
}

fn geometry(num_blocks: usize, num_kv_heads: usize, head_dim: usize) -> KvGeometry {
    KvGeometry {
        num_blocks,
        block_size: super::sweep::BLOCK_SIZE,
        num_kv_heads,
        head_dim,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::study::sweep::{model_cases, SweepSpec};

    #[test]
    fn paged_meta_is_valid_and_scattered() {
        let (m, blocks) = paged_meta(3, 2, 40, 16, 100).unwrap();
        assert_eq!(blocks, 9);
        let geom = KvGeometry {
            num_blocks: blocks,
            block_size: 16,
            num_kv_heads: 1,
            head_dim: 1,
        };
        m.validate(&geom).unwrap();
        assert_eq!(m.num_tokens(), 6);
        assert_ne!(m.block_tables, (0..9).collect::<Vec<u32>>());
        assert!(paged_meta(1, 5, 4, 16, 10).is_err());
    }

    #[test]
    fn every_op_of_the_tiny_models_runs_on_the_cpu() {
        let small = SweepSpec {
            tokens: vec![3],
            decode: vec![(2, 20)],
            prefill: vec![9],
            gemm_m: vec![2],
            projections: vec!["qkv", "lm_head"],
            sampling_rows: vec![2],
            step: vec![(2, 20)],
        };
        // tiny-gemma2: soft-capped attention with and without its window; tiny-bloom: ALiBi
        let gemma2 = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gemma2");
        let bloom = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-bloom");
        for name in ["tiny-gpt2", "tiny-llama", gemma2, bloom] {
            let cfg = crate::model::open(name).unwrap().config;
            for case in model_cases(name, &cfg, &Op::ALL, &small) {
                let mut run =
                    prepare(&Target::Cpu, &case).unwrap_or_else(|e| panic!("{}: {e}", case.id()));
                run().unwrap_or_else(|e| panic!("{}: {e}", case.id()));
                run().unwrap();
            }
        }
        // the shape's soft-cap reaches the kernel: one it must refuse is refused
        let cfg = crate::model::open(gemma2).unwrap().config;
        let mut case = model_cases(gemma2, &cfg, &[Op::AttentionDecode], &small).remove(0);
        let Shape::Attention { softcap, .. } = &mut case.shape else {
            unreachable!()
        };
        assert_eq!(*softcap, cfg.attn_softcap);
        *softcap = Some(-1.0);
        let err = prepare(&Target::Cpu, &case).and_then(|mut run| run());
        assert!(
            err.as_ref()
                .is_err_and(|e| e.to_string().contains("soft-cap -1")),
            "{:?}",
            err.map(|_| ())
        );
        // and ALiBi's max bias
        let cfg = crate::model::open(bloom).unwrap().config;
        let mut case = model_cases(bloom, &cfg, &[Op::AttentionDecode], &small).remove(0);
        let Shape::Attention { alibi, .. } = &mut case.shape else {
            unreachable!()
        };
        assert_eq!(*alibi, Some(8.0));
        *alibi = Some(-1.0);
        let err = prepare(&Target::Cpu, &case).and_then(|mut run| run());
        assert!(
            err.as_ref()
                .is_err_and(|e| e.to_string().contains("ALiBi max bias -1")),
            "{:?}",
            err.map(|_| ())
        );
    }

    #[test]
    fn gelu_input_is_a_fixed_point() {
        let mut x = fill(1000, 1, 6.0, 7.0);
        let before = x.clone();
        crate::backend::cpu::activation::gelu_new(&mut x);
        assert_eq!(x, before);
        crate::backend::cpu::activation::gelu_erf(&mut x);
        assert_eq!(x, before);
    }

    #[test]
    fn targets_open_or_say_why() {
        let cpu = Target::open(Device::Cpu, Dtype::F32, 0).unwrap();
        assert_eq!((cpu.device(), cpu.dtype()), (Device::Cpu, Dtype::F32));
        assert!(cpu.clock(false).is_ok());
        assert!(cpu.clock(true).is_err());
        let e = Target::open(Device::Cpu, Dtype::Bf16, 0).unwrap_err();
        assert!(e.to_string().contains("computes in f32"), "{e}");
        if crate::backend::cuda::probe(false).usable() {
            return; // a GPU machine: the GPU studies run (benches, `infermeter kernels`)
        }
        for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
            let e = Target::open(Device::Cuda, dtype, 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains("no CUDA device: "), "{e}");
        }
    }
}
