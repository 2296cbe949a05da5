//! The ops under study, their shapes, and the bytes and FLOPs of one call.
//!
//! Op names are the kernel names of `kernels/*.cu` (and the functions of `src/backend/cpu/*.rs`);
//! families are the kernel files and the bench targets: `kernels/norm.cu` ↔ `benches/norm.rs`.
//!
//! # What is counted
//!
//! `s` is the element size of the compute dtype (4 for the CPU's f32), logits included (the LM
//! head's output, which the sampling kernels read as it is).
//!
//! - **Bytes** are the compulsory memory traffic of one call: every input element read once, every
//!   output element written once, weights and KV cache included. Integer metadata counts 4 bytes
//!   per element read (token ids, positions, slot mappings, block-table entries). Re-reads an
//!   implementation makes (the GQA group re-reading its KV head, a second pass over a norm row,
//!   attention re-reading keys per query) are not counted: they are what separates an
//!   implementation from the roofline, so they show up as a lower achieved bandwidth, not as more
//!   bytes.
//! - **FLOPs** count each add, subtract, multiply and divide as 1, a fused multiply-add as 2, and a
//!   transcendental (exp, tanh) as 1. Comparisons, max and the softmax of attention (its exps and
//!   sums are O(keys), not O(keys · head_dim)) are not counted; a matmul is `2 m n k`.
//!
//! The formulas match the roofline notes at the top of each kernel file; attention counts K/V once
//! per KV head (the compulsory traffic), where `kernels/attention.cu` states the naive kernel's own
//! traffic (once per query head).

use crate::error::{Error, Result};
use crate::model::config::MoeConfig;
use crate::model::{Arch, ModelConfig};

use super::Dtype;

/// An op family: one kernel file, one bench target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Norm,
    Rope,
    Activation,
    Embedding,
    KvWrite,
    Attention,
    Matmul,
    Sampling,
    DecodeStep,
}

impl Family {
    pub const ALL: [Family; 9] = [
        Family::Norm,
        Family::Rope,
        Family::Activation,
        Family::Embedding,
        Family::KvWrite,
        Family::Attention,
        Family::Matmul,
        Family::Sampling,
        Family::DecodeStep,
    ];

    /// The bench target's name (`benches/<name>.rs`), also the kernel file's stem where one exists.
    pub fn name(self) -> &'static str {
        match self {
            Family::Norm => "norm",
            Family::Rope => "rope",
            Family::Activation => "activation",
            Family::Embedding => "embedding",
            Family::KvWrite => "kv_write",
            Family::Attention => "attention",
            Family::Matmul => "matmul",
            Family::Sampling => "sampling",
            Family::DecodeStep => "decode_step",
        }
    }

    /// The CUDA source of this family, where one exists (GEMMs go through cuBLAS; a decode step is
    /// every kernel in turn).
    pub fn kernel_file(self) -> Option<&'static str> {
        match self {
            Family::Norm => Some("kernels/norm.cu"),
            Family::Rope => Some("kernels/rope.cu"),
            Family::Activation => Some("kernels/activation.cu"),
            Family::Embedding => Some("kernels/embedding.cu"),
            Family::KvWrite => Some("kernels/kv_write.cu"),
            Family::Attention => Some("kernels/attention.cu"),
            Family::Sampling => Some("kernels/sampling.cu"),
            Family::Matmul | Family::DecodeStep => None,
        }
    }

    pub fn ops(self) -> Vec<Op> {
        Op::ALL.into_iter().filter(|o| o.family() == self).collect()
    }
}

/// One op under study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Layernorm,
    Rmsnorm,
    AddRmsnorm,
    /// OLMo 2's RMSNorm of each token's whole Q and whole K projection.
    QkRmsnorm,
    AddInplace,
    Rope,
    /// Qwen3's per-head RMSNorm of Q and K fused into RoPE.
    QkNormRope,
    GeluNew,
    /// GPT-NeoX's exact GELU, 0.5 u (1 + erf(u / √2)).
    GeluErf,
    /// OPT's ReLU.
    Relu,
    SiluMul,
    /// Gemma's GeGLU: gelu_new(gate) * up.
    GeluTanhMul,
    Embedding,
    GatherLogitRows,
    WriteKv,
    /// Attention of a whole prompt (every token of a fresh sequence), causal.
    AttentionPrefill,
    /// One new token per sequence over its cached context.
    AttentionDecode,
    /// `out = x · wᵀ`, the linear layer (CPU: the register-tiled GEMM; GPU: cuBLAS).
    Matmul,
    Argmax,
    /// Temperature / top-k / top-p sampling.
    Sample,
    /// A whole decode step of a model with dummy weights: forward pass and greedy pick.
    DecodeStep,
}

impl Op {
    pub const ALL: [Op; 21] = [
        Op::Layernorm,
        Op::Rmsnorm,
        Op::AddRmsnorm,
        Op::QkRmsnorm,
        Op::AddInplace,
        Op::Rope,
        Op::QkNormRope,
        Op::GeluNew,
        Op::GeluErf,
        Op::Relu,
        Op::SiluMul,
        Op::GeluTanhMul,
        Op::Embedding,
        Op::GatherLogitRows,
        Op::WriteKv,
        Op::AttentionPrefill,
        Op::AttentionDecode,
        Op::Matmul,
        Op::Argmax,
        Op::Sample,
        Op::DecodeStep,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Layernorm => "layernorm",
            Op::Rmsnorm => "rmsnorm",
            Op::AddRmsnorm => "add_rmsnorm",
            Op::QkRmsnorm => "qk_rmsnorm",
            Op::AddInplace => "add_inplace",
            Op::Rope => "rope",
            Op::QkNormRope => "qk_norm_rope",
            Op::GeluNew => "gelu_new",
            Op::GeluErf => "gelu_erf",
            Op::Relu => "relu",
            Op::SiluMul => "silu_mul",
            Op::GeluTanhMul => "gelu_tanh_mul",
            Op::Embedding => "embedding",
            Op::GatherLogitRows => "gather_logit_rows",
            Op::WriteKv => "write_kv",
            Op::AttentionPrefill => "attention_prefill",
            Op::AttentionDecode => "attention_decode",
            Op::Matmul => "matmul",
            Op::Argmax => "argmax",
            Op::Sample => "sample",
            Op::DecodeStep => "decode_step",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Op::Layernorm | Op::Rmsnorm | Op::AddRmsnorm | Op::QkRmsnorm | Op::AddInplace => {
                Family::Norm
            }
            Op::Rope | Op::QkNormRope => Family::Rope,
            Op::GeluNew | Op::GeluErf | Op::Relu | Op::SiluMul | Op::GeluTanhMul => {
                Family::Activation
            }
            Op::Embedding | Op::GatherLogitRows => Family::Embedding,
            Op::WriteKv => Family::KvWrite,
            Op::AttentionPrefill | Op::AttentionDecode => Family::Attention,
            Op::Matmul => Family::Matmul,
            Op::Argmax | Op::Sample => Family::Sampling,
            Op::DecodeStep => Family::DecodeStep,
        }
    }

    /// The CPU reference this op runs on the CPU backend.
    pub fn cpu_reference(self) -> &'static str {
        match self {
            Op::Layernorm => "backend/cpu/norm.rs: layernorm",
            Op::Rmsnorm => "backend/cpu/norm.rs: rmsnorm",
            Op::AddRmsnorm => "backend/cpu/norm.rs: add_rmsnorm",
            Op::QkRmsnorm => "backend/cpu/norm.rs: qk_rmsnorm",
            Op::AddInplace => "backend/cpu/norm.rs: add_inplace",
            Op::Rope => "backend/cpu/rope.rs: rope",
            Op::QkNormRope => "backend/cpu/rope.rs: qk_norm_rope",
            Op::GeluNew => "backend/cpu/activation.rs: gelu_new",
            Op::GeluErf => "backend/cpu/activation.rs: gelu_erf",
            Op::Relu => "backend/cpu/activation.rs: relu",
            Op::SiluMul => "backend/cpu/activation.rs: silu_mul",
            Op::GeluTanhMul => "backend/cpu/activation.rs: gelu_tanh_mul",
            Op::Embedding => "backend/cpu/embedding.rs: embedding",
            Op::GatherLogitRows => "backend/cpu/embedding.rs: gather_rows",
            Op::WriteKv => "backend/cpu/kv_write.rs: write_kv",
            Op::AttentionPrefill | Op::AttentionDecode => {
                "backend/cpu/attention.rs: paged_attention"
            }
            Op::Matmul => "backend/cpu/matmul.rs: linear",
            Op::Argmax => "engine/sampling.rs: argmax",
            Op::Sample => "engine/sampling.rs: Sampler::sample",
            Op::DecodeStep => "model/forward.rs: Model::forward_pick (greedy)",
        }
    }
}

/// Resolve `--op` values: op names or family names (a family selects all its ops). Order follows
/// [`Op::ALL`]; duplicates collapse.
pub fn parse_selection(names: &[String]) -> Result<Vec<Op>> {
    let mut picked = Vec::new();
    for raw in names {
        let name = raw.trim();
        if name.is_empty() {
            continue;
        }
        // a family first: where an op shares its family's name (rope, matmul, decode_step) the
        // family holds it, and `rope` then also selects the fused qk_norm_rope that Qwen3 and
        // Gemma 3 run instead
        let ops: Vec<Op> = if let Some(f) = Family::ALL.into_iter().find(|f| f.name() == name) {
            f.ops()
        } else if let Some(op) = Op::ALL.into_iter().find(|o| o.name() == name) {
            vec![op]
        } else {
            let ops: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
            let fams: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
            return Err(Error::Invalid(format!(
                "unknown op `{name}` (ops: {}; families: {})",
                ops.join(", "),
                fams.join(", ")
            )));
        };
        picked.extend(ops);
    }
    if picked.is_empty() {
        return Ok(Op::ALL.to_vec());
    }
    Ok(Op::ALL.into_iter().filter(|o| picked.contains(o)).collect())
}

/// Shape parameters of one call. Serialized (untagged) as the `shape` object of a results row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Shape {
    /// layernorm, rmsnorm, add_rmsnorm: x, out: [rows, cols]
    Rows { rows: usize, cols: usize },
    /// qk_rmsnorm: in each of `rows` fused QKV rows [q_cols + 2 k_cols], the Q part and the K
    /// part normalised in place (V untouched)
    QkRows {
        rows: usize,
        q_cols: usize,
        k_cols: usize,
    },
    /// add_inplace, gelu_new, gelu_erf, relu: [len]
    Elementwise { len: usize },
    /// silu_mul, gelu_tanh_mul: out [rows, inter]; x [rows, 2 inter]
    SiluMul { rows: usize, inter: usize },
    /// rope (and qk_norm_rope) over the Q and K heads of the fused QKV rows, one position per token;
    /// the first `rotary_dim` dimensions of each head rotate (head_dim but for a partial rotary)
    Rope {
        tokens: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        rotary_dim: usize,
    },
    /// embedding: out [tokens, hidden] from table [vocab, hidden] (+ learned positions)
    Embedding {
        tokens: usize,
        hidden: usize,
        vocab: usize,
        learned_positions: bool,
    },
    /// gather_logit_rows: out [rows, cols] = x [tokens, cols] at `rows` indices
    Gather {
        rows: usize,
        tokens: usize,
        cols: usize,
    },
    /// write_kv: the K and V of `tokens` tokens into the paged cache
    WriteKv {
        tokens: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
    },
    /// attention: `seqs` sequences, each with `query_len` new tokens at the end of a context of
    /// `context_len` tokens (prefill: query_len = context_len; decode: query_len = 1); under a
    /// sliding `window` a token at position p attends to keys p + 1 − window ..= p only; under
    /// Gemma 2's `softcap` every scaled score s becomes softcap · tanh(s / softcap) before the
    /// softmax (3 FLOPs per score: a divide, a tanh, a multiply); under ALiBi (`alibi`: its max
    /// bias, BLOOM's and MPT's 8) each score gains its head's slope times the key's distance
    /// (2 FLOPs per score: the distance's conversion and a multiply-add)
    Attention {
        seqs: usize,
        query_len: usize,
        context_len: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        window: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        softcap: Option<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alibi: Option<f32>,
    },
    /// matmul: out [m, n] = x [m, k] · w [n, k]ᵀ; `proj` names the layer it comes from
    Matmul {
        m: usize,
        n: usize,
        k: usize,
        proj: &'static str,
    },
    /// argmax over logits [rows, vocab] (the compute dtype: f32 on the CPU)
    Logits { rows: usize, vocab: usize },
    /// sample over logits [rows, vocab] (the compute dtype) with temperature, top-k and top-p
    Sampling {
        rows: usize,
        vocab: usize,
        temperature: f64,
        top_k: usize,
        top_p: f64,
    },
    /// a decode step: `batch` sequences, each adding one token to a context of `context` tokens
    DecodeStep {
        batch: usize,
        context: usize,
        block_size: usize,
        #[serde(skip)]
        config: Box<ModelConfig>,
    },
}

/// Bytes moved and FLOPs done by one call (see the module docs for what is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub bytes: u64,
    pub flops: u64,
}

impl Cost {
    /// FLOPs per byte.
    pub fn intensity(&self) -> f64 {
        if self.bytes == 0 {
            0.0
        } else {
            self.flops as f64 / self.bytes as f64
        }
    }
}

/// One study case: an op at one shape, the model its shape comes from, and, for an op with several
/// implementations on the device, which one runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub op: Op,
    /// The model config the shape was taken from.
    pub model: Option<String>,
    pub shape: Shape,
    /// The implementation studied (CUDA attention: `naive`, `auto`, `auto-sync`, `auto-<N>split`); `None` where
    /// the device has one (every CPU op: the reference). Set by [`super::variant::expand`].
    pub variant: Option<super::variant::Variant>,
}

const IDX: u64 = 4; // bytes of an integer metadata element (u32)

fn u(v: usize) -> u64 {
    v as u64
}

impl Case {
    /// A short, unique description of the shape, e.g. `rows=64,cols=4096`; `heads=32/8` is query
    /// heads / KV heads.
    pub fn shape_label(&self) -> String {
        match &self.shape {
            Shape::Rows { rows, cols } => format!("rows={rows},cols={cols}"),
            Shape::QkRows {
                rows,
                q_cols,
                k_cols,
            } => format!("rows={rows},q={q_cols},k={k_cols}"),
            Shape::Elementwise { len } => format!("len={len}"),
            Shape::SiluMul { rows, inter } => format!("rows={rows},inter={inter}"),
            Shape::Rope {
                tokens,
                num_heads,
                num_kv_heads,
                head_dim,
                rotary_dim,
            } => format!(
                "tokens={tokens},heads={num_heads}/{num_kv_heads},d={head_dim}{}",
                if rotary_dim < head_dim {
                    format!(",rot={rotary_dim}")
                } else {
                    String::new()
                }
            ),
            Shape::Embedding {
                tokens,
                hidden,
                vocab,
                learned_positions,
            } => format!(
                "tokens={tokens},hidden={hidden},vocab={vocab}{}",
                if *learned_positions { ",+pos" } else { "" }
            ),
            Shape::Gather { rows, tokens, cols } => {
                format!("rows={rows},tokens={tokens},cols={cols}")
            }
            Shape::WriteKv {
                tokens,
                num_kv_heads,
                head_dim,
                block_size,
                ..
            } => format!("tokens={tokens},kv_heads={num_kv_heads},d={head_dim},bs={block_size}"),
            Shape::Attention {
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
            } => format!(
                "seqs={seqs},q={query_len},ctx={context_len},heads={num_heads}/{num_kv_heads},\
                 d={head_dim},bs={block_size}{}{}{}",
                window.map_or(String::new(), |w| format!(",w={w}")),
                softcap.map_or(String::new(), |c| format!(",cap={c}")),
                alibi.map_or(String::new(), |m| format!(",alibi={m}"))
            ),
            Shape::Matmul { m, n, k, proj } => format!("{proj}:m={m},n={n},k={k}"),
            Shape::Logits { rows, vocab } => format!("rows={rows},vocab={vocab}"),
            Shape::Sampling {
                rows,
                vocab,
                temperature,
                top_k,
                top_p,
            } => format!("rows={rows},vocab={vocab},t={temperature},k={top_k},p={top_p}"),
            Shape::DecodeStep {
                batch,
                context,
                block_size,
                ..
            } => format!("batch={batch},ctx={context},bs={block_size}"),
        }
    }

    /// `op/model/shape` (`/variant` where there is one): the criterion benchmark id and the
    /// table's row name.
    pub fn id(&self) -> String {
        let mut id = match &self.model {
            Some(m) => format!("{}/{m}/{}", self.op.name(), self.shape_label()),
            None => format!("{}/{}", self.op.name(), self.shape_label()),
        };
        if let Some(v) = self.variant {
            id.push('/');
            id.push_str(&v.name());
        }
        id
    }

    /// Bytes and FLOPs of one call with elements of `dtype`.
    pub fn cost(&self, dtype: Dtype) -> Cost {
        let s = dtype.bytes();
        match (&self.shape, self.op) {
            (&Shape::Rows { rows, cols }, op) => {
                let (n, c) = (u(rows) * u(cols), u(cols));
                match op {
                    // read x, write out; weight and bias once
                    Op::Layernorm => Cost {
                        bytes: s * (2 * n + 2 * c),
                        flops: 8 * n,
                    },
                    // read residual, delta; write residual, out; weight once
                    Op::AddRmsnorm => Cost {
                        bytes: s * (4 * n + c),
                        flops: 5 * n,
                    },
                    // rmsnorm: read x, write out; weight once
                    _ => Cost {
                        bytes: s * (2 * n + c),
                        flops: 4 * n,
                    },
                }
            }
            // read and write Q and K in place; both weight vectors once; rmsnorm's 4 FLOPs per
            // element (square, add; scale by 1/rms and by the weight)
            (
                &Shape::QkRows {
                    rows,
                    q_cols,
                    k_cols,
                },
                _,
            ) => {
                let c = u(q_cols) + u(k_cols);
                Cost {
                    bytes: s * (2 * u(rows) * c + c),
                    flops: 4 * u(rows) * c,
                }
            }
            (&Shape::Elementwise { len }, op) => match op {
                // x += y: read x and y, write x
                Op::AddInplace => Cost {
                    bytes: 3 * s * u(len),
                    flops: u(len),
                },
                // relu in place: read, write; one comparison per element
                Op::Relu => Cost {
                    bytes: 2 * s * u(len),
                    flops: u(len),
                },
                // gelu_erf in place: read, write; 4 arithmetic ops and an erf per element
                Op::GeluErf => Cost {
                    bytes: 2 * s * u(len),
                    flops: 5 * u(len),
                },
                // gelu_new in place: read, write; 8 arithmetic ops and a tanh per element
                _ => Cost {
                    bytes: 2 * s * u(len),
                    flops: 9 * u(len),
                },
            },
            // read gate and up, write out; silu: exp, add, divide, multiply per element;
            // gelu_tanh: gelu_new's 8 arithmetic ops and a tanh, then the multiply
            (&Shape::SiluMul { rows, inter }, op) => Cost {
                bytes: 3 * s * u(rows) * u(inter),
                flops: if op == Op::GeluTanhMul { 9 } else { 4 } * u(rows) * u(inter),
            },
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
                let (t, r, d) = (u(tokens), u(num_heads + num_kv_heads), u(head_dim));
                let rot = u(rotary_dim);
                // the rotated dimensions of the Q and K heads read and written (the others are
                // not touched); one cos/sin row and one position per token; 6 FLOPs per rotated
                // pair, rotary_dim / 2 pairs per head
                let rope = Cost {
                    bytes: 2 * s * t * r * rot + s * t * rot + IDX * t,
                    flops: 3 * t * r * rot,
                };
                match op {
                    // + the two norm weight vectors; a square and an add per element for the
                    // mean square, the scale by 1/rms and by the weight
                    Op::QkNormRope => Cost {
                        bytes: rope.bytes + 2 * s * d,
                        flops: rope.flops + 4 * t * r * d,
                    },
                    _ => rope,
                }
            }
            (
                &Shape::Embedding {
                    tokens,
                    hidden,
                    learned_positions,
                    ..
                },
                _,
            ) => {
                let (t, h) = (u(tokens), u(hidden));
                // table row read, out row written (+ position row read and added); token ids and
                // positions read
                if learned_positions {
                    Cost {
                        bytes: 3 * s * t * h + 2 * IDX * t,
                        flops: t * h,
                    }
                } else {
                    Cost {
                        bytes: 2 * s * t * h + IDX * t,
                        flops: 0,
                    }
                }
            }
            (&Shape::Gather { rows, cols, .. }, _) => Cost {
                bytes: 2 * s * u(rows) * u(cols) + IDX * u(rows),
                flops: 0,
            },
            (
                &Shape::WriteKv {
                    tokens,
                    num_kv_heads,
                    head_dim,
                    ..
                },
                _,
            ) => {
                let kv = u(num_kv_heads) * u(head_dim);
                // K and V read from the QKV rows and written to their slots; one slot id per token
                Cost {
                    bytes: 4 * s * u(tokens) * kv + IDX * u(tokens),
                    flops: 0,
                }
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
            ) => attention_cost(
                s,
                u(seqs),
                u(query_len),
                u(context_len),
                u(num_heads),
                u(num_kv_heads),
                u(head_dim),
                u(block_size),
                window.map(u),
                softcap.is_some(),
                alibi.is_some(),
            ),
            (&Shape::Matmul { m, n, k, .. }, _) => {
                let (m, n, k) = (u(m), u(n), u(k));
                Cost {
                    bytes: s * (m * k + n * k + m * n),
                    flops: 2 * m * n * k,
                }
            }
            // logits (in the compute dtype: the LM head's output) read once, one token id
            // written per row; comparisons only
            (&Shape::Logits { rows, vocab }, _) => Cost {
                bytes: s * u(rows) * u(vocab) + IDX * u(rows),
                flops: 0,
            },
            // the same bytes; per logit: divide by the temperature, subtract the max, exp (the
            // minimum an exact sampler does; the CPU sampler also sorts the row, not counted)
            (&Shape::Sampling { rows, vocab, .. }, _) => Cost {
                bytes: s * u(rows) * u(vocab) + IDX * u(rows),
                flops: 3 * u(rows) * u(vocab),
            },
            (
                Shape::DecodeStep {
                    batch,
                    context,
                    config,
                    ..
                },
                _,
            ) => decode_step_cost(config, *batch, *context, dtype),
        }
    }

    /// Bytes a runner allocates for this case (buffers, weights, cache), to check memory first.
    pub fn alloc_bytes(&self) -> u64 {
        const F: u64 = 4; // the CPU backend's f32
        match &self.shape {
            &Shape::Rows { rows, cols } => F * (4 * u(rows) * u(cols) + 2 * u(cols)),
            &Shape::QkRows {
                rows,
                q_cols,
                k_cols,
            } => F * (u(rows) * u(q_cols + 2 * k_cols) + u(q_cols + k_cols)),
            &Shape::Elementwise { len } => F * 2 * u(len),
            &Shape::SiluMul { rows, inter } => F * 3 * u(rows) * u(inter),
            &Shape::Rope {
                tokens,
                num_heads,
                num_kv_heads,
                head_dim,
                rotary_dim,
            } => F * u(tokens) * (u(head_dim) * u(num_heads + 2 * num_kv_heads) + u(rotary_dim)),
            &Shape::Embedding {
                tokens,
                hidden,
                vocab,
                learned_positions,
            } => {
                let pos = if learned_positions { u(tokens) } else { 0 };
                F * u(hidden) * (u(vocab) + pos + u(tokens))
            }
            &Shape::Gather { rows, tokens, cols } => F * u(cols) * u(rows + tokens),
            &Shape::WriteKv {
                tokens,
                num_heads,
                num_kv_heads,
                head_dim,
                block_size,
            } => {
                let slots = u(tokens.div_ceil(block_size.max(1)) * block_size);
                F * u(head_dim)
                    * (u(tokens) * u(num_heads + 2 * num_kv_heads) + 2 * slots * u(num_kv_heads))
            }
            &Shape::Attention {
                seqs,
                query_len,
                context_len,
                num_heads,
                num_kv_heads,
                head_dim,
                block_size,
                ..
            } => {
                let slots = u(seqs) * u(context_len.div_ceil(block_size.max(1)) * block_size);
                let t = u(seqs) * u(query_len);
                F * u(head_dim)
                    * (2 * slots * u(num_kv_heads) + t * u(2 * num_heads + 2 * num_kv_heads))
            }
            &Shape::Matmul { m, n, k, .. } => F * (u(m) * u(k) + u(n) * u(k) + u(m) * u(n)),
            &Shape::Logits { rows, vocab } | &Shape::Sampling { rows, vocab, .. } => {
                F * 3 * u(rows) * u(vocab)
            }
            Shape::DecodeStep {
                batch,
                context,
                config,
                ..
            } => {
                let kv = 2
                    * u(config.num_layers)
                    * u(*batch)
                    * u(context.next_multiple_of(16))
                    * u(config.kv_size());
                F * (u(config.num_parameters()) + kv + u(*batch) * u(config.vocab_size))
            }
        }
    }
}

/// Attention over `seqs` sequences of `q` new tokens ending a context of `c` tokens, under an
/// optional sliding window of `w` keys.
///
/// Bytes: each sequence's K and V of the keys its queries see read once per KV head (2 k nkv d,
/// k = c, or min(c, q − 1 + w) under a window: from the first query's window to the end), Q read
/// and out written (q H d each), one position per new token and the block-table entries of those
/// keys. FLOPs: 4 H d per (query, key) pair (q·k and p·v, 2 each per element); the token at
/// position p sees p + 1 keys, or min(p + 1, w), so a sequence has q c − q (q − 1) / 2 pairs
/// without a window. A soft-cap (`softcapped`) adds 3 H per pair: the score divided by the cap,
/// its tanh and the product with the cap; ALiBi (`alibi`) 2 H: the distance converted to a float
/// and a multiply-add of the slope.
#[allow(clippy::too_many_arguments)]
pub fn attention_cost(
    s: u64,
    seqs: u64,
    q: u64,
    c: u64,
    h: u64,
    nkv: u64,
    d: u64,
    block_size: u64,
    window: Option<u64>,
    softcapped: bool,
    alibi: bool,
) -> Cost {
    // (query, key) pairs of the queries at positions 0 .. n - 1: Σ min(p + 1, w)
    let pairs_upto = |n: u64| match window {
        Some(w) if n > w => w * (w + 1) / 2 + (n - w) * w,
        _ => n * (n + 1) / 2,
    };
    let pairs = pairs_upto(c) - pairs_upto(c.saturating_sub(q));
    let first_key = window.map_or(0, |w| (c.saturating_sub(q) + 1).saturating_sub(w));
    let keys = c - first_key.min(c);
    let bs = block_size.max(1);
    let blocks = c.div_ceil(bs) - first_key / bs;
    Cost {
        bytes: seqs * (s * (2 * keys * nkv * d + 2 * q * h * d) + IDX * (q + blocks)),
        flops: seqs
            * h
            * pairs
            * (4 * d + if softcapped { 3 } else { 0 } + if alibi { 2 } else { 0 }),
    }
}

/// Weight elements of every linear layer one token's forward pass multiplies by (the lm_head
/// included, tied or not): in a mixture-of-experts layer the router and the `top_k` experts the
/// token is routed to, not the others.
pub fn matmul_params(cfg: &ModelConfig) -> u64 {
    let h = u(cfg.hidden_size);
    let up_rows = match cfg.arch {
        Arch::Gpt2 => u(cfg.intermediate_size),
        Arch::Llama => 2 * u(cfg.intermediate_size),
    };
    let attention = h * u(cfg.q_size() + 2 * cfg.kv_size()) + u(cfg.q_size()) * h;
    let dense_mlp = up_rows * h + h * u(cfg.intermediate_size);
    let layers: u64 = (0..cfg.num_layers)
        .map(|i| {
            attention
                + match cfg.layer_moe(i) {
                    Some(m) => u(m.num_experts) * h + u(m.top_k) * 3 * h * u(m.expert_intermediate),
                    None => dense_mlp,
                }
        })
        .sum();
    layers + u(cfg.vocab_size) * h
}

/// Experts a MoE layer reads in a step of `tokens` tokens, in expectation under uniform routing:
/// each of the E experts is missed by all of them with probability (1 − k/E)^tokens, so
/// E · (1 − (1 − k/E)^tokens) are read — k at one token, all E for large batches. Real routers
/// are not uniform (fewer distinct experts); the byte count is then an upper estimate.
pub fn experts_read(moe: &MoeConfig, tokens: usize) -> f64 {
    let (e, k) = (moe.num_experts as f64, moe.top_k as f64);
    e * (1.0 - (1.0 - k / e).powi(tokens.min(i32::MAX as usize) as i32))
}

/// A decode step of `batch` sequences, each adding one token to reach `context` tokens.
///
/// Bytes: every weight the step reads once (all parameters except the unread part of the embedding
/// table and of GPT-2's position table, of which `batch` rows are read; a tied lm_head reads the
/// whole table; in a MoE layer the experts the batch is routed to, [`experts_read`]), K and V of
/// `context` tokens per sequence and layer read (at most the window on a sliding-window layer: the
/// kernels read no more), the new token's K and V written. Activations (a few KiB per token) are
/// not counted.
/// FLOPs: 2 · batch · (weights of the linear layers and the lm_head), plus attention's
/// 4 · heads · head_dim · keys per token and layer (keys: the context, or the window). Norms, RoPE
/// and activations (< 1 %) are not counted.
pub fn decode_step_cost(cfg: &ModelConfig, batch: usize, context: usize, dtype: Dtype) -> Cost {
    let s = dtype.bytes();
    let (b, l, h) = (u(batch), u(context), u(cfg.hidden_size));
    let layers = u(cfg.num_layers);
    let mut weights = u(cfg.num_parameters());
    // MoE layers: only the experts the batch is routed to are read (uniform-routing expectation)
    if let Some(m) = &cfg.moe {
        let expert = 3 * h * u(m.expert_intermediate);
        let unread = (m.num_experts as f64 - experts_read(m, batch)) * expert as f64;
        weights -= (u(m.layers.len()) as f64 * unread).round() as u64;
    }
    let mut rows_read = b * h; // embedding rows
    if cfg.learned_positions() {
        weights -= u(cfg.max_context) * h;
        rows_read += b * h; // position rows
    }
    if !cfg.tie_word_embeddings {
        weights -= u(cfg.vocab_size) * h; // the input table: only `batch` rows are read
    }
    let kv = u(cfg.kv_size());
    // keys read per sequence, summed over the layers
    let keys: u64 = (0..cfg.num_layers)
        .map(|i| cfg.layer_window(i).map_or(l, |w| l.min(u(w))))
        .sum();
    let kv_bytes = 2 * b * (keys + layers) * kv * s;
    let attn_flops = 4 * b * u(cfg.num_heads) * u(cfg.head_dim) * keys;
    Cost {
        bytes: s * (weights + rows_read) + kv_bytes + IDX * 3 * b,
        flops: 2 * b * matmul_params(cfg) + attn_flops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(op: Op, shape: Shape) -> Case {
        Case {
            op,
            model: None,
            shape,
            variant: None,
        }
    }

    #[test]
    fn norm_and_elementwise_costs_by_hand() {
        // 2 rows of 8, f32: x and out 2·16·4 = 128 B, weight 32 B
        let rms = case(Op::Rmsnorm, Shape::Rows { rows: 2, cols: 8 });
        assert_eq!(
            rms.cost(Dtype::F32),
            Cost {
                bytes: 160,
                flops: 64
            }
        );
        let ln = case(Op::Layernorm, Shape::Rows { rows: 2, cols: 8 });
        assert_eq!(
            ln.cost(Dtype::Bf16),
            Cost {
                bytes: 2 * (32 + 16),
                flops: 128
            }
        );
        let fused = case(Op::AddRmsnorm, Shape::Rows { rows: 2, cols: 8 });
        assert_eq!(fused.cost(Dtype::F32).bytes, 4 * (64 + 8));
        assert_eq!(fused.cost(Dtype::F32).flops, 80);
        let add = case(Op::AddInplace, Shape::Elementwise { len: 10 });
        assert_eq!(
            add.cost(Dtype::F32),
            Cost {
                bytes: 120,
                flops: 10
            }
        );
        let gelu = case(Op::GeluNew, Shape::Elementwise { len: 10 });
        assert_eq!(
            gelu.cost(Dtype::F16),
            Cost {
                bytes: 40,
                flops: 90
            }
        );
        let gelu_erf = case(Op::GeluErf, Shape::Elementwise { len: 10 });
        assert_eq!(
            gelu_erf.cost(Dtype::Bf16),
            Cost {
                bytes: 40,
                flops: 50
            }
        );
        let silu = case(Op::SiluMul, Shape::SiluMul { rows: 3, inter: 5 });
        assert_eq!(
            silu.cost(Dtype::F32),
            Cost {
                bytes: 180,
                flops: 60
            }
        );
    }

    #[test]
    fn rope_embedding_kv_costs_by_hand() {
        // 2 tokens, 4 Q heads + 2 K heads of 8 rotating `rotary_dim` of their dimensions
        let rope_case = |rotary_dim| {
            case(
                Op::Rope,
                Shape::Rope {
                    tokens: 2,
                    num_heads: 4,
                    num_kv_heads: 2,
                    head_dim: 8,
                    rotary_dim,
                },
            )
        };
        // the whole head: 2·2·6·8 elements read+written, 2 cos/sin rows of 8, 2 positions;
        // 3·2·6·8 FLOPs
        let rope = rope_case(8);
        assert_eq!(
            rope.cost(Dtype::F32),
            Cost {
                bytes: 4 * 192 + 4 * 16 + 8,
                flops: 288
            }
        );
        // a partial rotary of 6 of the 8 dimensions: 2·2·6·6 elements, cos/sin rows of 6
        let partial = rope_case(6);
        assert_eq!(
            partial.cost(Dtype::F32),
            Cost {
                bytes: 4 * 144 + 4 * 12 + 8,
                flops: 216
            }
        );
        assert_eq!(partial.shape_label(), "tokens=2,heads=4/2,d=8,rot=6");
        assert_eq!(rope.shape_label(), "tokens=2,heads=4/2,d=8");
        let emb = |learned| {
            case(
                Op::Embedding,
                Shape::Embedding {
                    tokens: 3,
                    hidden: 4,
                    vocab: 100,
                    learned_positions: learned,
                },
            )
            .cost(Dtype::F32)
        };
        assert_eq!(
            emb(false),
            Cost {
                bytes: 2 * 48 + 12,
                flops: 0
            }
        );
        assert_eq!(
            emb(true),
            Cost {
                bytes: 3 * 48 + 24,
                flops: 12
            }
        );
        let kv = case(
            Op::WriteKv,
            Shape::WriteKv {
                tokens: 5,
                num_heads: 8,
                num_kv_heads: 2,
                head_dim: 4,
                block_size: 16,
            },
        );
        // K and V: 5 tokens × 8 elements, each read and written
        assert_eq!(
            kv.cost(Dtype::F32),
            Cost {
                bytes: 4 * 4 * 40 + 20,
                flops: 0
            }
        );
    }

    #[test]
    fn attention_costs_by_hand() {
        // decode: 2 sequences, 1 new token over 10 keys, 4 heads sharing 2 KV heads of 8
        let dec = case(
            Op::AttentionDecode,
            Shape::Attention {
                seqs: 2,
                query_len: 1,
                context_len: 10,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 8,
                block_size: 4,
                window: None,
                softcap: None,
                alibi: None,
            },
        );
        // per seq: K,V 2·10·2·8 = 320, q + out 2·4·8 = 64 elements; 1 position + 3 blocks
        let c = dec.cost(Dtype::F32);
        assert_eq!(c.bytes, 2 * (4 * (320 + 64) + 4 * (1 + 3)));
        assert_eq!(c.flops, 2 * 4 * 4 * 8 * 10);
        // under a window of 6 the token at 9 reads keys 4..=9: K,V 2·6·2·8 = 192 elements, blocks
        // 1 and 2 of the table; 6 pairs
        let mut windowed = dec.clone();
        if let Shape::Attention { window, .. } = &mut windowed.shape {
            *window = Some(6);
        }
        assert_eq!(windowed.shape_label(), format!("{},w=6", dec.shape_label()));
        let c = windowed.cost(Dtype::F32);
        assert_eq!(c.bytes, 2 * (4 * (192 + 64) + 4 * (1 + 2)));
        assert_eq!(c.flops, 2 * 4 * 4 * 8 * 6);
        // a window as long as the context changes nothing
        if let Shape::Attention { window, .. } = &mut windowed.shape {
            *window = Some(10);
        }
        assert_eq!(windowed.cost(Dtype::F32), dec.cost(Dtype::F32));
        // a soft-cap: 3 more FLOPs per score (4 heads × 10 keys per sequence), the same bytes
        let mut capped = dec.clone();
        if let Shape::Attention { softcap, .. } = &mut capped.shape {
            *softcap = Some(50.0);
        }
        assert_eq!(
            capped.shape_label(),
            format!("{},cap=50", dec.shape_label())
        );
        let c = capped.cost(Dtype::F32);
        assert_eq!(c.bytes, dec.cost(Dtype::F32).bytes);
        assert_eq!(c.flops, 2 * 4 * 10 * (4 * 8 + 3));
        // ALiBi: 2 more FLOPs per score, the same bytes
        let mut biased = dec.clone();
        if let Shape::Attention { alibi, .. } = &mut biased.shape {
            *alibi = Some(8.0);
        }
        assert_eq!(
            biased.shape_label(),
            format!("{},alibi=8", dec.shape_label())
        );
        let c = biased.cost(Dtype::F32);
        assert_eq!(c.bytes, dec.cost(Dtype::F32).bytes);
        assert_eq!(c.flops, 2 * 4 * 10 * (4 * 8 + 2));
        // prefill of 3 tokens: 1 + 2 + 3 = 6 (query, key) pairs
        let pre = case(
            Op::AttentionPrefill,
            Shape::Attention {
                seqs: 1,
                query_len: 3,
                context_len: 3,
                num_heads: 2,
                num_kv_heads: 2,
                head_dim: 4,
                block_size: 16,
                window: None,
                softcap: None,
                alibi: None,
            },
        );
        let c = pre.cost(Dtype::F32);
        assert_eq!(c.flops, 4 * 2 * 4 * 6);
        assert_eq!(c.bytes, 4 * (2 * 3 * 2 * 4 + 2 * 3 * 2 * 4) + 4 * (3 + 1));
        // the last 3 tokens of a 7-token context under a window of 2: positions 4, 5, 6 see 2
        // keys each (6 pairs); keys 3..=6 are read (the first query's window onwards)
        let chunk = case(
            Op::AttentionPrefill,
            Shape::Attention {
                seqs: 1,
                query_len: 3,
                context_len: 7,
                num_heads: 2,
                num_kv_heads: 2,
                head_dim: 4,
                block_size: 16,
                window: Some(2),
                softcap: None,
                alibi: None,
            },
        );
        let c = chunk.cost(Dtype::F32);
        assert_eq!(c.flops, 4 * 2 * 4 * 6);
        assert_eq!(c.bytes, 4 * (2 * 4 * 2 * 4 + 2 * 3 * 2 * 4) + 4 * (3 + 1));
    }

    #[test]
    fn matmul_and_sampling_costs_by_hand() {
        let mm = case(
            Op::Matmul,
            Shape::Matmul {
                m: 2,
                n: 3,
                k: 4,
                proj: "x",
            },
        );
        assert_eq!(
            mm.cost(Dtype::F32),
            Cost {
                bytes: 4 * (8 + 12 + 6),
                flops: 48
            }
        );
        assert!((mm.cost(Dtype::F32).intensity() - 48.0 / 104.0).abs() < 1e-12);
        // logits in the compute dtype (the LM head's output), a 4-byte id per row
        let am = case(Op::Argmax, Shape::Logits { rows: 2, vocab: 10 });
        assert_eq!(
            am.cost(Dtype::Bf16),
            Cost {
                bytes: 2 * 20 + 2 * 4,
                flops: 0
            }
        );
        assert_eq!(am.cost(Dtype::F32).bytes, 4 * 20 + 2 * 4);
        let shape = Shape::Sampling {
            rows: 2,
            vocab: 10,
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
        };
        let sample = case(Op::Sample, shape);
        assert_eq!(sample.cost(Dtype::F32).flops, 60);
        assert_eq!(sample.shape_label(), "rows=2,vocab=10,t=0.8,k=0,p=1");
    }

    #[test]
    fn decode_step_cost_of_a_tiny_llama_by_hand() {
        let cfg = crate::model::config::ModelConfig::from_json_str(
            r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 4,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                "intermediate_size": 6, "max_position_embeddings": 32}"#,
            "test",
        )
        .unwrap();
        // head_dim 2, q 4, kv 2. Per layer: qkv 4·8 = 32, o 16, gate+up 12·4 = 48, down 24 → 120;
        // 2 layers + lm_head 40 = 280 matmul weights
        assert_eq!(matmul_params(&cfg), 280);
        // parameters: 2·(120 + 2 norms of 4) + embed 40 + final norm 4 + untied head 40 = 340;
        // read: 340 − 40 (embedding table) + 1 row of 4 = 304 elements
        assert_eq!(cfg.num_parameters(), 340);
        let c = decode_step_cost(&cfg, 1, 5, Dtype::F32);
        // KV: 2 (K, V) · 2 layers · (5 read + 1 written) · 2 elements
        let kv = 2 * 2 * 6 * 2;
        assert_eq!(c.bytes, 4 * (304 + kv) + 12);
        // 2·280 + attention 4 · 2 layers · 2 heads · 2 · 5
        assert_eq!(c.flops, 560 + 160);
        // a 3-key window on layer 1 (Qwen2 style): that layer reads 3 keys of the 5
        let mut windowed = cfg.clone();
        windowed.sliding_window = Some(3);
        windowed.sliding_layers = vec![1];
        let c = decode_step_cost(&windowed, 1, 5, Dtype::F32);
        let kv = 2 * (6 + 4) * 2;
        assert_eq!(c.bytes, 4 * (304 + kv) + 12);
        assert_eq!(c.flops, 560 + 4 * 2 * 2 * (5 + 3));
    }

    #[test]
    fn decode_step_cost_of_a_tiny_mixture_of_experts_by_hand() {
        let cfg = crate::model::config::ModelConfig::from_json_str(
            r#"{"model_type": "mixtral", "vocab_size": 10, "hidden_size": 4,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
                "intermediate_size": 6, "max_position_embeddings": 32,
                "num_local_experts": 4, "num_experts_per_tok": 2}"#,
            "test",
        )
        .unwrap();
        let m = cfg.moe.clone().unwrap();
        // one token reads its 2 experts; many tokens all 4
        assert!((experts_read(&m, 1) - 2.0).abs() < 1e-12);
        assert!((experts_read(&m, 2) - 4.0 * (1.0 - 0.25)).abs() < 1e-12);
        assert!((experts_read(&m, 1000) - 4.0).abs() < 1e-9);
        // per layer: attention 48, router 4·4 = 16, 2 experts of 3·4·6 = 72 → 208 per token; 2
        // layers + lm_head 40 = 456 matmul weights
        assert_eq!(matmul_params(&cfg), 456);
        // parameters: 2·(48 + 16 + 4·72 + 2 norms of 4) + embed 40 + norm 4 + head 40 = 804;
        // batch 1 reads 804 − 2 layers · 2 unread experts · 72 − 40 (table) + 4 (a row) = 480
        assert_eq!(cfg.num_parameters(), 804);
        assert_eq!(cfg.active_parameters(), 804 - 2 * 2 * 72);
        let kv = 2 * 2 * 6 * 2;
        let c = decode_step_cost(&cfg, 1, 5, Dtype::F32);
        assert_eq!(c.bytes, 4 * (480 + kv) + 12);
        assert_eq!(c.flops, 2 * 456 + 4 * 2 * 2 * 2 * 5);
        // batch 2: 3 experts per layer in expectation (1 unread), two rows of the table
        let c = decode_step_cost(&cfg, 2, 5, Dtype::F32);
        assert_eq!(c.bytes, 4 * (804 - 2 * 72 - 40 + 8 + 2 * kv) + 24);
    }

    #[test]
    fn selection_takes_ops_and_families() {
        let s = |v: &[&str]| parse_selection(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&[]).unwrap().len(), Op::ALL.len());
        assert_eq!(
            s(&["norm"]).unwrap(),
            vec![
                Op::Layernorm,
                Op::Rmsnorm,
                Op::AddRmsnorm,
                Op::QkRmsnorm,
                Op::AddInplace
            ]
        );
        assert_eq!(s(&["rope"]).unwrap(), vec![Op::Rope, Op::QkNormRope]);
        assert_eq!(s(&["qk_norm_rope"]).unwrap(), vec![Op::QkNormRope]);
        assert_eq!(
            s(&["matmul", "rmsnorm"]).unwrap(),
            vec![Op::Rmsnorm, Op::Matmul]
        );
        let err = s(&["softmax"]).unwrap_err().to_string();
        assert!(err.contains("unknown op `softmax`") && err.contains("attention_decode"));
        for f in Family::ALL {
            assert!(!f.ops().is_empty(), "{f:?}");
        }
    }
}
