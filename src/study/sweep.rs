//! The shapes studied, taken from model configs.
//!
//! [`model_cases`] turns one model's config into cases for the chosen ops (norms, activations and
//! RoPE at the model's hidden and intermediate sizes and head layout, attention with its head count
//! and GQA ratio, matmuls at its projection shapes, sampling over its vocabulary, a whole decode
//! step of it) at the token counts, batch sizes and context lengths of a [`SweepSpec`]. Ops of the
//! other architecture are left out (`layernorm`, `add_inplace` and `gelu_new` are GPT-2's;
//! `rmsnorm`, `add_rmsnorm`, `silu_mul` and `rope` Llama's), and so are the ops the model does not
//! run (`gelu_erf` is GPT-NeoX's and Falcon's MLP activation, `relu` OPT's, `gelu_new` the other
//! GPT-2-block models'). Context lengths are capped at the
//! model's context.
//!
//! [`Sweep`] names the sets of shapes a run can take: `default` and `attention-acceptance` (issue 5's
//! attention shapes, [`attention_acceptance_cases`]).
//!
//! [`default_cases`] is the curated sweep of `cargo bench` and of `infermeter kernels` without
//! `--shapes`: a few shapes per op from the configs in `models/`, chosen to span what matters
//! (GPT-2 small against Llama widths, MHA against GQA 4 and 8, head_dim 64 against 128, decode
//! batches against prefill chunks) while a full `cargo bench` stays within minutes on a 2-core
//! machine.

use crate::error::{Error, Result};
use crate::model::config::MlpActivation;
use crate::model::{Arch, ModelConfig};

use super::ops::{Case, Op, Shape};

/// Tokens per KV-cache block in every study (the engine's default).
pub const BLOCK_SIZE: usize = 16;

/// Sampling parameters of the `sample` study: a typical chat setting.
pub const SAMPLE_TEMPERATURE: f64 = 0.8;
pub const SAMPLE_TOP_K: usize = 50;
pub const SAMPLE_TOP_P: f64 = 0.95;

/// The sizes a sweep visits.
#[derive(Debug, Clone, Default)]
pub struct SweepSpec {
    /// Rows of the token-wise ops (norms, activations, RoPE, embedding, KV write): a decode batch
    /// or a prefill chunk.
    pub tokens: Vec<usize>,
    /// (batch, context) of decode attention.
    pub decode: Vec<(usize, usize)>,
    /// Prompt lengths of prefill attention (one sequence each).
    pub prefill: Vec<usize>,
    /// Rows of the matmuls.
    pub gemm_m: Vec<usize>,
    /// Which linear layers: `qkv`, `o`, `gate_up` (Llama) or `up` (GPT-2), `down`, `lm_head`.
    pub projections: Vec<&'static str>,
    /// Rows (sequences) of argmax and sample.
    pub sampling_rows: Vec<usize>,
    /// (batch, context) of the whole decode step.
    pub step: Vec<(usize, usize)>,
}

impl SweepSpec {
    /// The sweep of `infermeter kernels --shapes MODEL`: decode and prefill sizes of one model.
    pub fn for_one_model() -> Self {
        Self {
            tokens: vec![1, 64, 1024],
            decode: vec![(1, 2048), (16, 1024)],
            prefill: vec![512],
            gemm_m: vec![1, 16, 256],
            projections: vec!["qkv", "o", "gate_up", "up", "down", "lm_head"],
            sampling_rows: vec![1, 16],
            step: vec![(1, 512), (16, 512)],
        }
    }

    fn tokens(t: &[usize]) -> Self {
        Self {
            tokens: t.to_vec(),
            ..Self::default()
        }
    }
}

/// (n, k) of a linear layer of `cfg`, by projection name; `None` when the model has no such layer.
pub fn projection(cfg: &ModelConfig, proj: &str) -> Option<(usize, usize)> {
    let h = cfg.hidden_size;
    match (proj, cfg.arch) {
        ("qkv", _) => Some((cfg.q_size() + 2 * cfg.kv_size(), h)),
        ("o", _) => Some((h, cfg.q_size())),
        ("gate_up", Arch::Llama) => Some((2 * cfg.intermediate_size, h)),
        ("up", Arch::Gpt2) => Some((cfg.intermediate_size, h)),
        ("down", _) => Some((h, cfg.intermediate_size)),
        ("lm_head", _) => Some((cfg.vocab_size, h)),
        _ => None,
    }
}

/// Cases of `ops` for one model. `model` labels the cases (and names the model to load for a decode
/// step's dummy weights).
pub fn model_cases(model: &str, cfg: &ModelConfig, ops: &[Op], spec: &SweepSpec) -> Vec<Case> {
    let llama = cfg.arch == Arch::Llama;
    let gpt2 = cfg.arch == Arch::Gpt2;
    let ctx = |c: usize| c.clamp(1, cfg.max_context);
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let mut out: Vec<Case> = Vec::new();
    let mut push = |op: Op, shape: Shape| {
        let case = Case {
            op,
            model: Some(model.to_string()),
            shape,
            variant: None,
        };
        if !out.contains(&case) {
            out.push(case);
        }
    };
    // the attention each layer runs: without a window on full-attention layers, with the model's
    // window on sliding ones (Mistral v0.1: the window only; Gemma 2/3: both)
    let mut windows: Vec<Option<usize>> =
        (0..cfg.num_layers).map(|l| cfg.layer_window(l)).collect();
    windows.sort_unstable();
    windows.dedup();
    // attention of `seqs` sequences of `q` new tokens ending `context`, once per window the
    // layers use (a window no shorter than the context is full attention: the same case, which
    // `push` keeps once)
    let attention = |seqs: usize, q: usize, context: usize| {
        windows.iter().map(move |&window| Shape::Attention {
            seqs,
            query_len: q,
            context_len: context,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            block_size: BLOCK_SIZE,
            window: window.filter(|&w| w < context),
            softcap: cfg.attn_softcap,
            alibi: cfg.alibi.map(|a| a.max_bias),
        })
    };
    for &op in ops {
        match op {
            Op::Layernorm if gpt2 => {
                for &t in &spec.tokens {
                    push(op, Shape::Rows { rows: t, cols: h });
                }
            }
            Op::Rmsnorm | Op::AddRmsnorm if llama => {
                for &t in &spec.tokens {
                    push(op, Shape::Rows { rows: t, cols: h });
                }
            }
            // OLMo 2's norm of the whole Q and K projections
            Op::QkRmsnorm if llama && cfg.qk_norm_whole => {
                for &t in &spec.tokens {
                    push(
                        op,
                        Shape::QkRows {
                            rows: t,
                            q_cols: cfg.q_size(),
                            k_cols: cfg.kv_size(),
                        },
                    );
                }
            }
            Op::AddInplace if gpt2 => {
                for &t in &spec.tokens {
                    push(op, Shape::Elementwise { len: t * h });
                }
            }
            // the model's own GELU
            Op::GeluNew | Op::GeluErf | Op::Relu
                if gpt2
                    && op
                        == match cfg.mlp_activation {
                            MlpActivation::GeluErf => Op::GeluErf,
                            MlpActivation::Relu => Op::Relu,
                            _ => Op::GeluNew,
                        } =>
            {
                for &t in &spec.tokens {
                    push(op, Shape::Elementwise { len: t * inter });
                }
            }
            // the model's own gated activation
            Op::SiluMul | Op::GeluTanhMul
                if llama
                    && (op == Op::GeluTanhMul)
                        == (cfg.mlp_activation == MlpActivation::GeluTanh) =>
            {
                for &t in &spec.tokens {
                    push(op, Shape::SiluMul { rows: t, inter });
                }
            }
            // the model's own rotary op: Qwen3 normalises q and k in the same kernel
            Op::Rope | Op::QkNormRope
                if cfg.rope.is_some() && (op == Op::QkNormRope) == cfg.qk_norm =>
            {
                for &t in &spec.tokens {
                    push(
                        op,
                        Shape::Rope {
                            tokens: ctx(t),
                            num_heads: cfg.num_heads,
                            num_kv_heads: cfg.num_kv_heads,
                            head_dim: cfg.head_dim,
                            rotary_dim: cfg.rotary_dim(),
                        },
                    );
                }
            }
            Op::Embedding => {
                for &t in &spec.tokens {
                    push(
                        op,
                        Shape::Embedding {
                            // learned positions: one prompt of t tokens, within the position table
                            tokens: if cfg.learned_positions() { ctx(t) } else { t },
                            hidden: h,
                            vocab: cfg.vocab_size,
                            learned_positions: cfg.learned_positions(),
                        },
                    );
                }
            }
            Op::GatherLogitRows => {
                for &(b, _) in &spec.decode {
                    push(
                        op,
                        Shape::Gather {
                            rows: b,
                            tokens: b,
                            cols: h,
                        },
                    );
                }
            }
            Op::WriteKv => {
                for &t in &spec.tokens {
                    push(
                        op,
                        Shape::WriteKv {
                            tokens: ctx(t),
                            num_heads: cfg.num_heads,
                            num_kv_heads: cfg.num_kv_heads,
                            head_dim: cfg.head_dim,
                            block_size: BLOCK_SIZE,
                        },
                    );
                }
            }
            Op::AttentionPrefill => {
                for &l in &spec.prefill {
                    let l = ctx(l);
                    for shape in attention(1, l, l) {
                        push(op, shape);
                    }
                }
            }
            Op::AttentionDecode => {
                for &(b, c) in &spec.decode {
                    for shape in attention(b, 1, ctx(c)) {
                        push(op, shape);
                    }
                }
            }
            Op::Matmul => {
                for &proj in &spec.projections {
                    if let Some((n, k)) = projection(cfg, proj) {
                        for &m in &spec.gemm_m {
                            push(op, Shape::Matmul { m, n, k, proj });
                        }
                    }
                }
            }
            Op::Argmax => {
                for &rows in &spec.sampling_rows {
                    push(
                        op,
                        Shape::Logits {
                            rows,
                            vocab: cfg.vocab_size,
                        },
                    );
                }
            }
            Op::Sample => {
                for &rows in &spec.sampling_rows {
                    push(
                        op,
                        Shape::Sampling {
                            rows,
                            vocab: cfg.vocab_size,
                            temperature: SAMPLE_TEMPERATURE,
                            top_k: SAMPLE_TOP_K,
                            top_p: SAMPLE_TOP_P,
                        },
                    );
                }
            }
            Op::DecodeStep => {
                for &(b, c) in &spec.step {
                    push(
                        op,
                        Shape::DecodeStep {
                            batch: b,
                            context: ctx(c),
                            block_size: BLOCK_SIZE,
                            config: Box::new(cfg.clone()),
                        },
                    );
                }
            }
            // an op of the other architecture
            _ => {}
        }
    }
    out.retain(|c| !has_zero(&c.shape));
    out
}

/// A size of zero makes no case (an empty sweep list entry, a zero batch).
fn has_zero(shape: &Shape) -> bool {
    serde_json::to_value(shape)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .is_some_and(|m| {
            m.iter()
                .any(|(k, v)| v.as_u64() == Some(0) && !matches!(k.as_str(), "top_k"))
        })
}

/// The curated default sweep, restricted to `ops`: (model, ops, sizes) entries.
fn default_plan() -> Vec<(&'static str, Vec<Op>, SweepSpec)> {
    let decode = vec![(1, 2048), (16, 1024)];
    vec![
        // norms: GPT-2's LayerNorm at 768, Llama 3.1 8B's RMSNorm at 4096; decode to prefill rows
        (
            "gpt2",
            vec![Op::Layernorm],
            SweepSpec::tokens(&[1, 64, 1024]),
        ),
        (
            "llama-3.1-8b",
            vec![Op::Rmsnorm],
            SweepSpec::tokens(&[1, 64, 1024]),
        ),
        (
            "llama-3.1-8b",
            vec![Op::AddRmsnorm, Op::SiluMul, Op::Rope, Op::WriteKv],
            SweepSpec::tokens(&[64, 1024]),
        ),
        (
            "gpt2",
            vec![Op::AddInplace, Op::GeluNew, Op::Embedding],
            SweepSpec::tokens(&[64, 1024]),
        ),
        // GPT-NeoX's exact GELU at Pythia 1B's width (8192) beside GPT-2's tanh one
        (
            "pythia-1b",
            vec![Op::GeluErf],
            SweepSpec::tokens(&[64, 1024]),
        ),
        // OPT's ReLU at OPT 6.7B's width (16384)
        ("opt-6.7b", vec![Op::Relu], SweepSpec::tokens(&[64, 1024])),
        // RoPE at head_dim 64 (Llama 3.2 1B) beside 128 (8B)
        (
            "llama-3.2-1b",
            vec![Op::Rope],
            SweepSpec::tokens(&[64, 1024]),
        ),
        // Gemma 3 1B's GeGLU (6912 wide) beside the 8B's SiLU gate
        (
            "gemma-3-1b",
            vec![Op::GeluTanhMul],
            SweepSpec::tokens(&[64, 1024]),
        ),
        // Qwen3 8B has Llama 3.1 8B's heads (32/8 of 128): what the fused q/k norm costs over rope
        (
            "qwen3-8b",
            vec![Op::QkNormRope],
            SweepSpec::tokens(&[64, 1024]),
        ),
        // OLMo 2 7B's norm of the whole Q and K (4096 each) before RoPE
        (
            "olmo-2-7b",
            vec![Op::QkRmsnorm],
            SweepSpec::tokens(&[64, 1024]),
        ),
        // a Llama embedding table (32000 × 2048) beside GPT-2's learned positions
        (
            "tinyllama-1.1b",
            vec![Op::Embedding],
            SweepSpec::tokens(&[64, 1024]),
        ),
        // MHA (40 KV heads) writes 5× the bytes of GQA-4 8B
        (
            "llama-2-13b",
            vec![Op::WriteKv],
            SweepSpec::tokens(&[64, 1024]),
        ),
        (
            "llama-3.1-8b",
            vec![Op::GatherLogitRows],
            SweepSpec {
                decode: vec![(64, 0)],
                ..SweepSpec::default()
            },
        ),
        // attention: MHA (13B, GPT-2), GQA 4 (8B), GQA 8 (TinyLlama)
        (
            "gpt2",
            vec![Op::AttentionPrefill],
            SweepSpec {
                prefill: vec![512],
                ..SweepSpec::default()
            },
        ),
        (
            "llama-3.1-8b",
            vec![Op::AttentionPrefill, Op::AttentionDecode],
            SweepSpec {
                prefill: vec![512],
                decode: decode.clone(),
                ..SweepSpec::default()
            },
        ),
        (
            "llama-2-13b",
            vec![Op::AttentionDecode],
            SweepSpec {
                decode: decode.clone(),
                ..SweepSpec::default()
            },
        ),
        (
            "tinyllama-1.1b",
            vec![Op::AttentionDecode],
            SweepSpec {
                decode,
                ..SweepSpec::default()
            },
        ),
        // ALiBi (MPT-7B: 32 MHA heads of 128): the distance bias in the prefill and decode
        // kernels, beside the plain heads above
        (
            "mpt-7b",
            vec![Op::AttentionPrefill, Op::AttentionDecode],
            SweepSpec {
                prefill: vec![512],
                decode: vec![(1, 2048), (16, 1024)],
                ..SweepSpec::default()
            },
        ),
        // Llama 3.1 8B's head layout under Mistral 7B v0.1's 4096-key window on every layer: a
        // decode token reads the window only, whatever the context
        (
            "mistral-7b-v0.1",
            vec![Op::AttentionDecode],
            SweepSpec {
                decode: vec![(1, 16384), (16, 8192)],
                ..SweepSpec::default()
            },
        ),
        // GEMM: 8B's QKV (6144 × 4096) and down (4096 × 14336) from GEMV (decode) to a prefill
        // chunk
        (
            "llama-3.1-8b",
            vec![Op::Matmul],
            SweepSpec {
                gemm_m: vec![1, 16, 128],
                projections: vec!["qkv"],
                ..SweepSpec::default()
            },
        ),
        (
            "llama-3.1-8b",
            vec![Op::Matmul],
            SweepSpec {
                gemm_m: vec![1, 128],
                projections: vec!["down"],
                ..SweepSpec::default()
            },
        ),
        // sampling over GPT-2's 50257 and Llama 3's 128256 logits
        (
            "gpt2",
            vec![Op::Argmax],
            SweepSpec {
                sampling_rows: vec![1, 64],
                ..SweepSpec::default()
            },
        ),
        (
            "llama-3.1-8b",
            vec![Op::Argmax, Op::Sample],
            SweepSpec {
                sampling_rows: vec![1, 16],
                ..SweepSpec::default()
            },
        ),
        // whole decode steps: GPT-2 small at batch 1 and 16, TinyLlama 1.1B at batch 1
        (
            "gpt2",
            vec![Op::DecodeStep],
            SweepSpec {
                step: vec![(1, 512), (16, 512)],
                ..SweepSpec::default()
            },
        ),
        (
            "tinyllama-1.1b",
            vec![Op::DecodeStep],
            SweepSpec {
                step: vec![(1, 1024)],
                ..SweepSpec::default()
            },
        ),
    ]
}

/// The model whose head layout the attention acceptance sweep uses: Llama 3.1 8B (32 query heads
/// over 8 KV heads of 128; Llama 3 8B has the same).
pub const ACCEPTANCE_MODEL: &str = "llama-3.1-8b";
/// Decode batches of the attention acceptance sweep.
pub const ACCEPTANCE_DECODE_BATCHES: [usize; 3] = [1, 16, 64];
/// Decode contexts (keys per sequence) of the attention acceptance sweep: 1k, 4k, 16k.
pub const ACCEPTANCE_DECODE_CONTEXTS: [usize; 3] = [1024, 4096, 16384];
/// Prompt lengths of the attention acceptance sweep's prefills: 512, 2k, 8k.
pub const ACCEPTANCE_PREFILL: [usize; 3] = [512, 2048, 8192];

/// A named set of shapes for `infermeter kernels --sweep` and `INFERMETER_BENCH_SWEEP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sweep {
    /// The curated sweep over several models ([`default_cases`]).
    Default,
    /// Attention only, at the shapes of issue 5's acceptance ([`attention_acceptance_cases`]):
    /// decode at contexts 1k/4k/16k for batches 1/16/64 and prefill of 512/2k/8k tokens, Llama 3
    /// 8B's head layout, blocks of 16. Sized for a GPU: on the CPU reference an 8k prefill takes
    /// minutes per call.
    AttentionAcceptance,
}

impl Sweep {
    pub const ALL: [Sweep; 2] = [Sweep::Default, Sweep::AttentionAcceptance];

    pub fn name(self) -> &'static str {
        match self {
            Sweep::Default => "default",
            Sweep::AttentionAcceptance => "attention-acceptance",
        }
    }

    /// By name; the error lists the names.
    pub fn parse(name: &str) -> Result<Self> {
        let name = name.trim();
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
                Error::Invalid(format!(
                    "unknown sweep `{name}` (sweeps: {})",
                    names.join(", ")
                ))
            })
    }

    /// This sweep's cases of `ops`, in [`Op::ALL`] order (possibly none: the acceptance sweep has
    /// attention cases only).
    pub fn cases(self, ops: &[Op]) -> Result<Vec<Case>> {
        match self {
            Sweep::Default => default_cases(ops),
            Sweep::AttentionAcceptance => attention_acceptance_cases(ops),
        }
    }
}

/// The attention acceptance sweep's cases of `ops` ([`Sweep::AttentionAcceptance`]): prefill of
/// each of [`ACCEPTANCE_PREFILL`] (one sequence), then decode for every (batch, context) of
/// [`ACCEPTANCE_DECODE_BATCHES`] × [`ACCEPTANCE_DECODE_CONTEXTS`], batch by batch.
pub fn attention_acceptance_cases(ops: &[Op]) -> Result<Vec<Case>> {
    let cfg = crate::model::open(ACCEPTANCE_MODEL)?.config;
    let spec = SweepSpec {
        decode: ACCEPTANCE_DECODE_BATCHES
            .iter()
            .flat_map(|&b| ACCEPTANCE_DECODE_CONTEXTS.iter().map(move |&c| (b, c)))
            .collect(),
        prefill: ACCEPTANCE_PREFILL.to_vec(),
        ..SweepSpec::default()
    };
    let attention: Vec<Op> = [Op::AttentionPrefill, Op::AttentionDecode]
        .into_iter()
        .filter(|o| ops.contains(o))
        .collect();
    Ok(model_cases(ACCEPTANCE_MODEL, &cfg, &attention, &spec))
}

/// The default sweep's cases for `ops`, in [`Op::ALL`] order.
pub fn default_cases(ops: &[Op]) -> Result<Vec<Case>> {
    let mut cases: Vec<Case> = Vec::new();
    for (model, plan_ops, spec) in default_plan() {
        let wanted: Vec<Op> = plan_ops.into_iter().filter(|o| ops.contains(o)).collect();
        if wanted.is_empty() {
            continue;
        }
        let cfg = crate::model::open(model)?.config;
        cases.extend(model_cases(model, &cfg, &wanted, &spec));
    }
    let mut ordered = Vec::with_capacity(cases.len());
    for op in Op::ALL {
        ordered.extend(cases.iter().filter(|c| c.op == op).cloned());
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sweep_covers_every_op_with_model_shapes() {
        let cases = default_cases(&Op::ALL).unwrap();
        for op in Op::ALL {
            assert!(cases.iter().any(|c| c.op == op), "{op:?} has no case");
        }
        let ids: Vec<String> = cases.iter().map(|c| c.id()).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "duplicate ids: {ids:#?}");
        // shapes come from the configs: Llama 3.1 8B's RMSNorm width, GQA 32/8 with head_dim 128
        assert!(ids.contains(&"rmsnorm/llama-3.1-8b/rows=64,cols=4096".to_string()));
        assert!(cases.iter().any(|c| c.op == Op::AttentionDecode
            && c.shape
                == Shape::Attention {
                    seqs: 16,
                    query_len: 1,
                    context_len: 1024,
                    num_heads: 32,
                    num_kv_heads: 8,
                    head_dim: 128,
                    block_size: BLOCK_SIZE,
                    window: None,
                    softcap: None,
                    alibi: None,
                }));
        // Mistral 7B v0.1's decode under its window, beside the 8B's full attention
        assert!(ids.contains(
            &"attention_decode/mistral-7b-v0.1/seqs=1,q=1,ctx=16384,heads=32/8,d=128,bs=16,w=4096"
                .to_string()
        ));
        let only_norm = default_cases(&[Op::Rmsnorm]).unwrap();
        assert!(only_norm.iter().all(|c| c.op == Op::Rmsnorm));
    }

    #[test]
    fn attention_is_studied_at_every_window_the_layers_use() {
        let windows = |model: &str, decode: Vec<(usize, usize)>| -> Vec<Option<usize>> {
            let cfg = crate::model::open(model).unwrap().config;
            let spec = SweepSpec {
                decode,
                ..SweepSpec::default()
            };
            model_cases(model, &cfg, &[Op::AttentionDecode], &spec)
                .into_iter()
                .map(|c| match c.shape {
                    Shape::Attention { window, .. } => window,
                    _ => unreachable!(),
                })
                .collect()
        };
        // Gemma 3 1B: full-attention layers and 512-key sliding ones
        assert_eq!(windows("gemma-3-1b", vec![(1, 2048)]), [None, Some(512)]);
        // Mistral 7B v0.1 slides everywhere; a context within the window is full attention
        assert_eq!(
            windows("mistral-7b-v0.1", vec![(1, 8192), (1, 4096)]),
            [Some(4096), None]
        );
        assert_eq!(windows("llama-3.1-8b", vec![(1, 8192)]), [None]);
    }

    /// The ids of `model`'s decode-attention cases at one sequence of `ctx` keys.
    fn decode_ids(model: &str, ctx: usize) -> Vec<String> {
        let cfg = crate::model::open(model).unwrap().config;
        let spec = SweepSpec {
            decode: vec![(1, ctx)],
            ..SweepSpec::default()
        };
        model_cases(model, &cfg, &[Op::AttentionDecode], &spec)
            .iter()
            .map(Case::id)
            .collect()
    }

    #[test]
    fn soft_capped_attention_is_studied_with_its_cap() {
        // Gemma 2 2B caps its scores at 50 on every layer, sliding or not; Llama caps none
        let ids = |model: &str| decode_ids(model, 8192);
        assert_eq!(
            ids("gemma-2-2b"),
            [
                "attention_decode/gemma-2-2b/seqs=1,q=1,ctx=8192,heads=8/4,d=256,bs=16,cap=50",
                "attention_decode/gemma-2-2b/seqs=1,q=1,ctx=8192,heads=8/4,d=256,bs=16,w=4096,cap=50"
            ]
        );
        assert!(ids("llama-3.1-8b").iter().all(|id| !id.contains("cap=")));
    }

    #[test]
    fn alibi_attention_is_studied_with_its_bias() {
        // BLOOM's and MPT's attention runs with ALiBi (max bias 8), Falcon-RW's too; Llama without
        let ids = |model: &str| decode_ids(model, 2048);
        assert_eq!(
            ids("bloom-560m"),
            ["attention_decode/bloom-560m/seqs=1,q=1,ctx=2048,heads=16/16,d=64,bs=16,alibi=8"]
        );
        assert!(ids("mpt-7b")[0].ends_with(",alibi=8"));
        assert!(ids("falcon-rw-1b")[0].ends_with(",alibi=8"));
        assert!(ids("llama-3.1-8b").iter().all(|id| !id.contains("alibi")));
    }

    #[test]
    fn acceptance_sweep_is_exactly_the_issue_shapes() {
        let cases = Sweep::AttentionAcceptance.cases(&Op::ALL).unwrap();
        let shape = |seqs, q, ctx| Shape::Attention {
            seqs,
            query_len: q,
            context_len: ctx,
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            block_size: 16,
            window: None,
            softcap: None,
            alibi: None,
        };
        let mut want: Vec<(Op, Shape)> = vec![];
        for l in [512, 2048, 8192] {
            want.push((Op::AttentionPrefill, shape(1, l, l)));
        }
        for b in [1, 16, 64] {
            for c in [1024, 4096, 16384] {
                want.push((Op::AttentionDecode, shape(b, 1, c)));
            }
        }
        let got: Vec<(Op, Shape)> = cases.iter().map(|c| (c.op, c.shape.clone())).collect();
        assert_eq!(got, want);
        assert!(cases
            .iter()
            .all(|c| c.model.as_deref() == Some(ACCEPTANCE_MODEL) && c.variant.is_none()));
        // bf16 decode at batch 64 over 16k keys: K and V of 8 KV heads of 128, 4 GiB
        let big = &cases[got.len() - 1];
        let bytes = big.cost(crate::study::Dtype::Bf16).bytes;
        assert_eq!(
            bytes,
            64 * (2 * (2 * 16384 * 8 * 128 + 2 * 32 * 128) + 4 * (1 + 1024))
        );
        // one op picks its half; non-attention ops have no case here
        let decode = Sweep::AttentionAcceptance
            .cases(&[Op::AttentionDecode])
            .unwrap();
        assert_eq!(decode.len(), 9);
        assert!(Sweep::AttentionAcceptance
            .cases(&[Op::Matmul])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn sweeps_parse_by_name() {
        for s in Sweep::ALL {
            assert_eq!(Sweep::parse(s.name()).unwrap(), s);
        }
        assert_eq!(
            Sweep::parse(" Attention-Acceptance ").unwrap(),
            Sweep::AttentionAcceptance
        );
        let e = Sweep::parse("issue5").unwrap_err().to_string();
        assert!(e.contains("unknown sweep `issue5`") && e.contains("attention-acceptance"));
        // the default sweep is the curated one
        assert_eq!(
            Sweep::Default.cases(&[Op::Rmsnorm]).unwrap(),
            default_cases(&[Op::Rmsnorm]).unwrap()
        );
    }

    #[test]
    fn model_cases_follow_the_architecture_and_context() {
        let gpt2 = crate::model::open("tiny-gpt2").unwrap().config;
        let cases = model_cases("tiny-gpt2", &gpt2, &Op::ALL, &SweepSpec::for_one_model());
        assert!(cases.iter().any(|c| c.op == Op::Layernorm));
        assert!(!cases
            .iter()
            .any(|c| matches!(c.op, Op::Rmsnorm | Op::Rope | Op::SiluMul)));
        // tiny-gpt2 has 128 positions: contexts and learned-position prompts are capped there
        for c in &cases {
            match c.shape {
                Shape::Attention { context_len, .. } => assert!(context_len <= 128),
                Shape::Embedding { tokens, .. } => assert!(tokens <= 128),
                Shape::DecodeStep { context, .. } => assert!(context <= 128),
                _ => {}
            }
        }
        let llama = crate::model::open("tiny-llama").unwrap().config;
        let cases = model_cases("tiny-llama", &llama, &Op::ALL, &SweepSpec::for_one_model());
        assert!(cases.iter().any(|c| c.op == Op::Rope));
        assert!(cases.iter().any(|c| matches!(
            c.shape,
            Shape::Matmul {
                proj: "gate_up",
                n: 344,
                k: 64,
                ..
            }
        )));
        assert!(!cases.iter().any(|c| c.op == Op::Layernorm));
    }
}
