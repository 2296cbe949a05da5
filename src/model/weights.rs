//! The model's weights in one canonical layout for both families, so the forward pass and every
//! backend see the same thing:
//! - every linear weight is `[out_features, in_features]` row-major (HF `nn.Linear`); GPT-2's Conv1D
//!   weights (`[in, out]` on disk) are transposed at load;
//! - Q, K and V are fused into one `[q_size + 2 * kv_size, hidden]` projection (rows: all Q heads, then
//!   K heads, then V heads), so attention input is one GEMM;
//! - Llama's gate and up projections are fused into `[2 * intermediate, hidden]` (gate rows first),
//!   the layout `silu_mul` expects.
//!
//! `ModelWeights<T>` is generic over the tensor type: `HostTensor` after loading, a backend buffer after
//! upload.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use super::config::{Arch, ModelConfig, MoeConfig};
use super::tensor_store::{HostTensor, TensorStore};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Linear<T> {
    /// [out_features, in_features]
    pub weight: T,
    /// [out_features]
    pub bias: Option<T>,
}

#[derive(Debug, Clone)]
pub struct Norm<T> {
    /// [hidden]
    pub weight: T,
    /// [hidden]; LayerNorm only
    pub bias: Option<T>,
}

/// Qwen3's per-head RMSNorm weights of the query and key heads (`q_norm`, `k_norm`).
#[derive(Debug, Clone)]
pub struct QkNorm<T> {
    /// [head_dim] (`qk_norm`: per head) or [q_size] (`qk_norm_whole`: the whole Q)
    pub q: T,
    /// [head_dim] or [kv_size]
    pub k: T,
}

#[derive(Debug, Clone)]
pub struct LayerWeights<T> {
    /// The norm before attention (input_layernorm, GPT-2's ln_1); None under `post_norms_only`
    /// (OLMo 2, whose attention reads the residual stream as it is).
    pub attn_norm: Option<Norm<T>>,
    /// [q_size + 2 * kv_size, hidden]
    pub qkv: Linear<T>,
    /// Present when the config has `qk_norm` or `qk_norm_whole` (applied to Q and K before RoPE).
    pub qk_norm: Option<QkNorm<T>>,
    /// [hidden, q_size]
    pub o: Linear<T>,
    /// The norm before the MLP; None under `post_norms_only`.
    pub mlp_norm: Option<Norm<T>>,
    /// Gemma 3's norms of the attention and MLP outputs before the residual add (`sandwich_norms`).
    pub post_attn_norm: Option<Norm<T>>,
    pub post_mlp_norm: Option<Norm<T>>,
    /// The MLP: dense, or (MoE layers) routed experts.
    pub mlp: Mlp<T>,
}

/// A layer's MLP.
#[derive(Debug, Clone)]
pub enum Mlp<T> {
    Dense {
        /// GPT-2: c_fc [intermediate, hidden]; Llama: gate||up [2 * intermediate, hidden]
        up: Linear<T>,
        /// [hidden, intermediate]
        down: Linear<T>,
    },
    /// A mixture of experts (`ModelConfig::moe`).
    Experts(Experts<T>),
}

/// A mixture-of-experts layer's router and experts, each expert a Llama MLP without biases.
/// Every expert's tensors sit in one stacked tensor, expert e's at offset e · (its size), so a
/// backend holds one buffer per kind and addresses each expert inside it.
#[derive(Debug, Clone)]
pub struct Experts<T> {
    /// [num_experts, hidden]: the router (`gate`), router logits = x · routerᵀ
    pub router: T,
    /// [num_experts, 2 * expert_intermediate, hidden]: each expert's gate rows, then its up rows
    pub gate_up: T,
    /// [num_experts, hidden, expert_intermediate]
    pub down: T,
}

#[derive(Debug, Clone)]
pub struct ModelWeights<T> {
    /// [vocab, hidden]
    pub embed: T,
    /// GPT-2 only: [max_context, hidden]
    pub positions: Option<T>,
    /// BLOOM's LayerNorm of the embedding output (`embed_norm`)
    pub embed_norm: Option<Norm<T>>,
    pub layers: Vec<LayerWeights<T>>,
    pub final_norm: Norm<T>,
    /// [vocab, hidden]; `None` when tied to `embed`
    pub lm_head: Option<T>,
    /// [vocab]: Phi's LM head bias (`lm_head_bias`)
    pub lm_head_bias: Option<T>,
}

impl<T> ModelWeights<T> {
    /// Convert every tensor (e.g. upload to a backend), keeping the structure.
    pub fn try_map<U, E>(self, mut f: impl FnMut(T) -> Result<U, E>) -> Result<ModelWeights<U>, E> {
        let lin = |l: Linear<T>, f: &mut dyn FnMut(T) -> Result<U, E>| -> Result<Linear<U>, E> {
            Ok(Linear {
                weight: f(l.weight)?,
                bias: l.bias.map(&mut *f).transpose()?,
            })
        };
        let norm = |n: Norm<T>, f: &mut dyn FnMut(T) -> Result<U, E>| -> Result<Norm<U>, E> {
            Ok(Norm {
                weight: f(n.weight)?,
                bias: n.bias.map(&mut *f).transpose()?,
            })
        };
        let embed = f(self.embed)?;
        let positions = self.positions.map(&mut f).transpose()?;
        let embed_norm = self.embed_norm.map(|n| norm(n, &mut f)).transpose()?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in self.layers {
            layers.push(LayerWeights {
                attn_norm: l.attn_norm.map(|n| norm(n, &mut f)).transpose()?,
                qkv: lin(l.qkv, &mut f)?,
                qk_norm: match l.qk_norm {
                    Some(n) => Some(QkNorm {
                        q: f(n.q)?,
                        k: f(n.k)?,
                    }),
                    None => None,
                },
                o: lin(l.o, &mut f)?,
                mlp_norm: l.mlp_norm.map(|n| norm(n, &mut f)).transpose()?,
                post_attn_norm: l.post_attn_norm.map(|n| norm(n, &mut f)).transpose()?,
                post_mlp_norm: l.post_mlp_norm.map(|n| norm(n, &mut f)).transpose()?,
                mlp: match l.mlp {
                    Mlp::Dense { up, down } => Mlp::Dense {
                        up: lin(up, &mut f)?,
                        down: lin(down, &mut f)?,
                    },
                    Mlp::Experts(e) => Mlp::Experts(Experts {
                        router: f(e.router)?,
                        gate_up: f(e.gate_up)?,
                        down: f(e.down)?,
                    }),
                },
            });
        }
        Ok(ModelWeights {
            embed,
            positions,
            embed_norm,
            layers,
            final_norm: norm(self.final_norm, &mut f)?,
            lm_head: self.lm_head.map(&mut f).transpose()?,
            lm_head_bias: self.lm_head_bias.map(&mut f).transpose()?,
        })
    }
}

/// Load weights from a checkpoint into the canonical layout, checking every shape.
pub fn load_weights(cfg: &ModelConfig, store: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let weights = match cfg.arch {
        Arch::Gpt2 if cfg.model_type == "gpt_neox" => load_gpt_neox(cfg, store)?,
        Arch::Gpt2 if cfg.model_type == "falcon" => load_falcon(cfg, store)?,
        Arch::Gpt2 if cfg.model_type == "opt" => load_opt(cfg, store)?,
        Arch::Gpt2 if cfg.model_type == "gptj" => load_gptj(cfg, store)?,
        Arch::Gpt2 if cfg.model_type == "bloom" => load_bloom(cfg, store)?,
        Arch::Gpt2 if cfg.model_type == "mpt" => load_mpt(cfg, store)?,
        // GPT-2's block with RoPE: Phi, StarCoder2
        Arch::Gpt2 if cfg.rope.is_some() => load_dense_rope(cfg, store)?,
        Arch::Gpt2 => load_gpt2(cfg, store)?,
        Arch::Llama => load_llama(cfg, store)?,
    };
    check_all_used(cfg, store)?;
    Ok(weights)
}

/// Refuse a checkpoint with weights the config does not use: the forward pass would run without
/// them and give wrong numbers silently (q/k/v biases under `attention_bias: false`, a layer past
/// `num_hidden_layers`). Buffers transformers itself ignores are allowed: RoPE's `inv_freq`,
/// GPT-2's causal-mask `attn.bias` / `attn.masked_bias` (GPT-NeoX's `attention.bias` /
/// `attention.masked_bias`, in Pythia's checkpoints), and a tied model's `lm_head.weight`
/// (GPT-NeoX's `embed_out.weight`).
fn check_all_used(cfg: &ModelConfig, store: &TensorStore) -> Result<()> {
    let neox = cfg.model_type == "gpt_neox";
    let ignorable = |n: &str| {
        n.ends_with("rotary_emb.inv_freq")
            || (cfg.arch == Arch::Gpt2
                && (n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias")))
            || (neox && (n.ends_with(".attention.bias") || n.ends_with(".attention.masked_bias")))
            || (cfg.tie_word_embeddings
                && (n == "lm_head.weight" || (neox && n == "embed_out.weight")))
    };
    let unused: Vec<String> = store
        .unread()
        .into_iter()
        .filter(|n| !ignorable(n))
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    let layer_of = |n: &str| -> Option<usize> {
        let rest = n.split_once("layers.").or_else(|| n.split_once("h."))?.1;
        rest.split('.').next()?.parse().ok()
    };
    let mut hints = Vec::new();
    if unused
        .iter()
        .any(|n| layer_of(n).is_some_and(|l| l >= cfg.num_layers))
    {
        hints.push(format!(
            "layers past num_hidden_layers ({}) are present",
            cfg.num_layers
        ));
    }
    if !cfg.attention_bias
        && unused.iter().any(|n| {
            (n.contains("self_attn.")
                || n.contains(".attention.")
                || n.contains(".self_attention."))
                && n.ends_with(".bias")
        })
    {
        hints.push(format!(
            "attention biases are present but {} is false or absent",
            bias_field(cfg, "attention_bias")
        ));
    } else if !cfg.o_proj_bias && unused.iter().any(|n| n.ends_with("o_proj.bias")) {
        hints.push(format!(
            "an o_proj bias is present, which model_type `{}` does not have",
            cfg.model_type
        ));
    }
    if qk_norm_widths(cfg).is_none() && unused.iter().any(|n| n.ends_with("q_norm.weight")) {
        hints.push(format!(
            "q_norm/k_norm weights are present, which model_type `{}` does not have (qwen3 has)",
            cfg.model_type
        ));
    }
    if !cfg.mlp_bias
        && unused
            .iter()
            .any(|n| n.contains(".mlp.") && n.ends_with(".bias"))
    {
        hints.push(format!(
            "MLP biases are present but {} is false or absent",
            bias_field(cfg, "mlp_bias")
        ));
    }
    let shown: Vec<&str> = unused.iter().take(4).map(String::as_str).collect();
    Err(crate::error::Error::Invalid(format!(
        "{}: {} tensor{} the config does not use ({}{}){}: the model would run without {}; \
         check config.json",
        store.file_of(&unused[0]).unwrap_or(store.location()),
        unused.len(),
        if unused.len() == 1 { "" } else { "s" },
        shown.join(", "),
        if unused.len() > shown.len() {
            ", …"
        } else {
            ""
        },
        if hints.is_empty() {
            String::new()
        } else {
            format!(" — {}", hints.join("; "))
        },
        if unused.len() == 1 { "it" } else { "them" },
    )))
}

fn load_llama(cfg: &ModelConfig, st: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let h = cfg.hidden_size;
    let (q, kv, inter) = (cfg.q_size(), cfg.kv_size(), cfg.intermediate_size);
    let read = |name: &str, shape: &[usize]| st.read_f32(name, shape);
    let opt_bias = |name: &str, n: usize, present: bool| -> Result<Option<HostTensor>> {
        if present {
            read(name, &[n]).map(Some)
        } else {
            Ok(None)
        }
    };
    // Gemma's RMSNorm scales by (1 + weight): the 1 is folded in here, once, in f32 as
    // transformers adds it, so every backend's rmsnorm serves
    let gemma = cfg.is_gemma();
    let norm_weight = |name: &str, n: usize| -> Result<HostTensor> {
        let mut w = read(name, &[n])?;
        if gemma {
            for x in &mut w.data {
                *x += 1.0;
            }
        }
        Ok(w)
    };
    let rms = |name: &str| -> Result<Norm<HostTensor>> {
        Ok(Norm {
            weight: norm_weight(name, h)?,
            bias: None,
        })
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let ab = cfg.attention_bias;
        // Phi-3 stores the fused layouts themselves: qkv_proj [q + 2 kv, h] (Q, K, V rows) and
        // gate_up_proj [2 inter, h] (gate rows first)
        let fused = cfg.model_type == "phi3";
        let qkv_w = if fused {
            read(&format!("{p}.self_attn.qkv_proj.weight"), &[q + 2 * kv, h])?
        } else {
            concat_rows(&[
                read(&format!("{p}.self_attn.q_proj.weight"), &[q, h])?,
                read(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?,
                read(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?,
            ])
        };
        let qkv_b = if ab {
            Some(concat_rows(&[
                read(&format!("{p}.self_attn.q_proj.bias"), &[q])?,
                read(&format!("{p}.self_attn.k_proj.bias"), &[kv])?,
                read(&format!("{p}.self_attn.v_proj.bias"), &[kv])?,
            ]))
        } else {
            None
        };
        let mb = cfg.mlp_bias;
        let mlp = match cfg.layer_moe(i) {
            Some(moe) => Mlp::Experts(read_experts(cfg, st, &p, moe)?),
            None => read_llama_mlp(&read, &p, fused, inter, h, mb)?,
        };
        let qk_norm = match qk_norm_widths(cfg) {
            Some((q, k)) => Some(QkNorm {
                q: norm_weight(&format!("{p}.self_attn.q_norm.weight"), q)?,
                k: norm_weight(&format!("{p}.self_attn.k_norm.weight"), k)?,
            }),
            None => None,
        };
        // OLMo 2 has no norm before its sub-layers, only after them (the sandwich's second half)
        let pre_norm = |name: &str| -> Result<Option<Norm<HostTensor>>> {
            if cfg.post_norms_only {
                Ok(None)
            } else {
                rms(&format!("{p}.{name}.weight")).map(Some)
            }
        };
        layers.push(LayerWeights {
            attn_norm: pre_norm("input_layernorm")?,
            qkv: Linear {
                weight: qkv_w,
                bias: qkv_b,
            },
            qk_norm,
            o: Linear {
                weight: read(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?,
                bias: opt_bias(&format!("{p}.self_attn.o_proj.bias"), h, cfg.o_proj_bias)?,
            },
            // Llama's post_attention_layernorm is the MLP's input norm; with sandwich norms
            // (Gemma 2/3, OLMo 2) that one is pre_feedforward_layernorm, and
            // post_attention_layernorm normalises the attention output
            mlp_norm: if cfg.sandwich_norms {
                pre_norm("pre_feedforward_layernorm")?
            } else {
                pre_norm("post_attention_layernorm")?
            },
            post_attn_norm: if cfg.sandwich_norms {
                Some(rms(&format!("{p}.post_attention_layernorm.weight"))?)
            } else {
                None
            },
            post_mlp_norm: if cfg.sandwich_norms {
                Some(rms(&format!("{p}.post_feedforward_layernorm.weight"))?)
            } else {
                None
            },
            mlp,
        });
    }
    let lm_head = untied_head(cfg, &read, "lm_head.weight")?;
    let mut weights = ModelWeights {
        embed: read("model.embed_tokens.weight", &[cfg.vocab_size, h])?,
        positions: None,
        embed_norm: None,
        layers,
        final_norm: rms("model.norm.weight")?,
        lm_head,
        lm_head_bias: None,
    };
    fold_output_scales(cfg, &mut weights);
    Ok(weights)
}

/// A Llama MLP of layer prefix `p` through `read`: `mlp.gate_proj` and `mlp.up_proj` fused into
/// the gate||up rows (Phi-3's `fused` checkpoints store `mlp.gate_up_proj` so), `mlp.down_proj`,
/// biases under `bias`.
fn read_llama_mlp(
    read: &dyn Fn(&str, &[usize]) -> Result<HostTensor>,
    p: &str,
    fused: bool,
    inter: usize,
    h: usize,
    bias: bool,
) -> Result<Mlp<HostTensor>> {
    let up = if fused {
        read_linear(read, &format!("{p}.mlp.gate_up_proj"), 2 * inter, h, bias)?
    } else {
        let gate = read_linear(read, &format!("{p}.mlp.gate_proj"), inter, h, bias)?;
        let up = read_linear(read, &format!("{p}.mlp.up_proj"), inter, h, bias)?;
        Linear {
            weight: concat_rows(&[gate.weight, up.weight]),
            bias: gate.bias.zip(up.bias).map(|(g, u)| concat_rows(&[g, u])),
        }
    };
    Ok(Mlp::Dense {
        up,
        down: read_linear(read, &format!("{p}.mlp.down_proj"), h, inter, bias)?,
    })
}

/// Where one mixture-of-experts layer's tensors are: under `moe` (the layer's MoE module), the
/// router `{moe}.gate.weight` [num_experts, hidden]; expert e's gate, up and down projections
/// `{moe}.experts.{e}.{part}.weight`; or the stacked form transformers 5 holds in memory,
/// `{moe}.experts.gate_up_proj` [num_experts, 2 · inter, hidden] and `{moe}.experts.down_proj`
/// [num_experts, hidden, inter].
struct ExpertNames {
    moe: String,
    /// the gate, up and down projections' names
    parts: [&'static str; 3],
}

impl ExpertNames {
    /// Layer prefix `p`'s: Mixtral's published `block_sparse_moe` with `w1` (gate) / `w3` (up) /
    /// `w2` (down); else (Qwen3-MoE, OLMoE, and Mixtral as transformers 5 names it in memory)
    /// `mlp` with `gate_proj` / `up_proj` / `down_proj`.
    fn of(cfg: &ModelConfig, st: &TensorStore, p: &str) -> Self {
        let block_sparse = format!("{p}.block_sparse_moe");
        if cfg.model_type == "mixtral" && st.contains(&format!("{block_sparse}.gate.weight")) {
            return Self {
                moe: block_sparse,
                parts: ["w1", "w3", "w2"],
            };
        }
        Self {
            moe: format!("{p}.mlp"),
            parts: ["gate_proj", "up_proj", "down_proj"],
        }
    }

    fn router(&self) -> String {
        format!("{}.gate.weight", self.moe)
    }

    fn per_expert(&self, e: usize) -> [String; 3] {
        self.parts
            .map(|w| format!("{}.experts.{e}.{w}.weight", self.moe))
    }

    fn stacked(&self) -> [String; 2] {
        ["gate_up_proj", "down_proj"].map(|w| format!("{}.experts.{w}", self.moe))
    }
}

/// Layer prefix `p`'s router and experts, stacked ([`Experts`]): from one tensor per expert and
/// projection as published checkpoints store them, or from the stacked pair where a checkpoint
/// holds that (checked by shape either way).
fn read_experts(
    cfg: &ModelConfig,
    st: &TensorStore,
    p: &str,
    moe: &MoeConfig,
) -> Result<Experts<HostTensor>> {
    let (h, inter, n) = (cfg.hidden_size, moe.expert_intermediate, moe.num_experts);
    let names = ExpertNames::of(cfg, st, p);
    let router = st.read_f32(&names.router(), &[n, h])?;
    let [stacked_gate_up, stacked_down] = &names.stacked();
    if st.contains(stacked_gate_up) {
        return Ok(Experts {
            router,
            gate_up: st.read_f32(stacked_gate_up, &[n, 2 * inter, h])?,
            down: st.read_f32(stacked_down, &[n, h, inter])?,
        });
    }
    let mut gate_up = Vec::with_capacity(2 * n);
    let mut down = Vec::with_capacity(n);
    for e in 0..n {
        let [g, u, d] = names.per_expert(e);
        gate_up.push(st.read_f32(&g, &[inter, h])?);
        gate_up.push(st.read_f32(&u, &[inter, h])?);
        down.push(st.read_f32(&d, &[h, inter])?);
    }
    let stack =
        |parts: &[HostTensor], shape: Vec<usize>| HostTensor::new(shape, concat_rows(parts).data);
    Ok(Experts {
        router,
        gate_up: stack(&gate_up, vec![n, 2 * inter, h]),
        down: stack(&down, vec![n, h, inter]),
    })
}

/// The config field that turns a model type's biases on: StarCoder2's one `use_bias`, Falcon's one
/// `bias`, else `field`.
fn bias_field<'a>(cfg: &ModelConfig, field: &'a str) -> &'a str {
    match cfg.model_type.as_str() {
        "starcoder2" => "use_bias",
        "falcon" => "bias",
        _ => field,
    }
}

/// The widths of the q_norm and k_norm weights: a head's (`qk_norm`: Qwen3, Gemma 3) or the whole
/// projection's (`qk_norm_whole`: OLMo 2); None without q/k norms.
fn qk_norm_widths(cfg: &ModelConfig) -> Option<(usize, usize)> {
    if cfg.qk_norm_whole {
        Some((cfg.q_size(), cfg.kv_size()))
    } else {
        cfg.qk_norm.then_some((cfg.head_dim, cfg.head_dim))
    }
}

/// Granite's `residual_multiplier` and `logits_scaling`, folded in f32 into the weights they
/// follow: a sub-layer's output m·(W x + b) is (mW) x + mb, and logits W_head (norm(x) ⊙ g) / s
/// are W_head (norm(x) ⊙ g/s), so every backend runs them as a plain Llama. (transformers scales
/// after each GEMM, in the model's dtype: a bf16 run differs from it by the rounding of mW.)
fn fold_output_scales(cfg: &ModelConfig, weights: &mut ModelWeights<HostTensor>) {
    let scale = |t: &mut HostTensor, by: f32| t.data.iter_mut().for_each(|x| *x *= by);
    if let Some(m) = cfg.residual_scale {
        for l in &mut weights.layers {
            let mut outputs = vec![&mut l.o];
            match &mut l.mlp {
                Mlp::Dense { down, .. } => outputs.push(down),
                Mlp::Experts(e) => scale(&mut e.down, m),
            }
            for out in outputs {
                scale(&mut out.weight, m);
                if let Some(b) = &mut out.bias {
                    scale(b, m);
                }
            }
        }
    }
    if let Some(s) = cfg.logits_divisor {
        weights
            .final_norm
            .weight
            .data
            .iter_mut()
            .for_each(|g| *g /= s);
    }
}

/// GPT-2 (`GPT2LMHeadModel`, with or without the `transformer.` prefix) and GPT-BigCode
/// (`GPTBigCodeForCausalLM`: StarCoder 1, SantaCoder): `wte`, `wpe`, per layer `ln_1`,
/// `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, then `ln_f`. GPT-2's
/// projections are Conv1D ([in, out], transposed here to the canonical [out, in]) and its `c_attn`
/// is Q, K, V rows already; GPT-BigCode's are `nn.Linear` and its `c_attn` holds q_size + 2 ·
/// kv_size rows, all Q heads then the one K and V head under multi-query (the canonical order),
/// interleaved per head ([heads, 3, head_dim]) without. GPT2LMHeadModel always ties `lm_head`
/// (an untied GPT-2 checkpoint carries its own); GPT-BigCode's is read unless tied.
fn load_gpt2(cfg: &ModelConfig, st: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let bigcode = cfg.model_type == "gpt_bigcode";
    let h = cfg.hidden_size;
    let (q, kv, inter) = (cfg.q_size(), cfg.kv_size(), cfg.intermediate_size);
    // The hub's `gpt2` stores names without the `transformer.` prefix; GPT2LMHeadModel checkpoints have it.
    let prefix = if bigcode || st.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let read = |name: &str, shape: &[usize]| st.read_f32(&format!("{prefix}{name}"), shape);
    // a projection of n_in to n_out features, with its bias, in the canonical [out, in] layout
    let proj = |name: &str, n_in: usize, n_out: usize| -> Result<Linear<HostTensor>> {
        if bigcode {
            return read_linear(&read, name, n_out, n_in, true);
        }
        Ok(Linear {
            weight: read(&format!("{name}.weight"), &[n_in, n_out])?.transposed(),
            bias: Some(read(&format!("{name}.bias"), &[n_out])?),
        })
    };
    let ln = |name: &str| layernorm(&read, name, h);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("h.{i}");
        let mut qkv = proj(&format!("{p}.attn.c_attn"), h, q + 2 * kv)?;
        if bigcode {
            qkv = ungroup_qkv(qkv, cfg.num_kv_heads, cfg.gqa_group(), cfg.head_dim);
        }
        layers.push(LayerWeights {
            attn_norm: Some(ln(&format!("{p}.ln_1"))?),
            qkv,
            qk_norm: None,
            o: proj(&format!("{p}.attn.c_proj"), q, h)?,
            mlp_norm: Some(ln(&format!("{p}.ln_2"))?),
            post_attn_norm: None,
            post_mlp_norm: None,
            mlp: Mlp::Dense {
                up: proj(&format!("{p}.mlp.c_fc"), h, inter)?,
                down: proj(&format!("{p}.mlp.c_proj"), inter, h)?,
            },
        });
    }
    let root = |n: &str, shape: &[usize]| st.read_f32(n, shape);
    let lm_head = if bigcode || st.contains("lm_head.weight") {
        untied_head(cfg, &root, "lm_head.weight")?
    } else {
        None
    };
    Ok(ModelWeights {
        embed: read("wte.weight", &[cfg.vocab_size, h])?,
        positions: Some(read("wpe.weight", &[cfg.max_context, h])?),
        embed_norm: None,
        layers,
        final_norm: ln("ln_f")?,
        lm_head,
        lm_head_bias: None,
    })
}

/// GPT-J (`GPTJForCausalLM`): `transformer.wte`, per layer `ln_1` (the one norm of its parallel
/// block), `attn.{q,k,v}_proj` (no biases; Q and K rows permuted by [`rotate_every_two_rows`]),
/// `attn.out_proj`, `mlp.fc_in` / `fc_out`; then `transformer.ln_f` and `lm_head` with its bias.
/// The causal-mask buffers of older checkpoints (`attn.bias`, `attn.masked_bias`) are ignored.
fn load_gptj(cfg: &ModelConfig, st: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let h = cfg.hidden_size;
    let (q, kv, inter) = (cfg.q_size(), cfg.kv_size(), cfg.intermediate_size);
    let read = |name: &str, shape: &[usize]| st.read_f32(&format!("transformer.{name}"), shape);
    let linear =
        |name: &str, out: usize, inp: usize, bias: bool| read_linear(&read, name, out, inp, bias);
    let ln = |name: &str| layernorm(&read, name, h);
    let permute = |t: HostTensor| rotate_every_two_rows(t, cfg.head_dim, cfg.rotary_dim());
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("h.{i}");
        let mut qkv = read_separate_qkv(&read, &format!("{p}.attn"), q, kv, h, false)?;
        // Q and K rows (every head of both), V's after them untouched
        let (qk_rows, v_rows) = qkv.weight.data.split_at((q + kv) * h);
        let mut data = permute(HostTensor::new(vec![q + kv, h], qk_rows.to_vec())).data;
        data.extend_from_slice(v_rows);
        qkv.weight = HostTensor::new(qkv.weight.shape, data);
        layers.push(LayerWeights {
            attn_norm: Some(ln(&format!("{p}.ln_1"))?),
            qkv,
            qk_norm: None,
            o: linear(&format!("{p}.attn.out_proj"), h, q, false)?,
            mlp_norm: None,
            post_attn_norm: None,
            post_mlp_norm: None,
            mlp: Mlp::Dense {
                up: linear(&format!("{p}.mlp.fc_in"), inter, h, cfg.mlp_bias)?,
                down: linear(&format!("{p}.mlp.fc_out"), h, inter, cfg.mlp_bias)?,
            },
        });
    }
    let lm_head = untied_head(cfg, &|n, shape| st.read_f32(n, shape), "lm_head.weight")?;
    Ok(ModelWeights {
        embed: read("wte.weight", &[cfg.vocab_size, h])?,
        positions: None,
        embed_norm: None,
        layers,
        final_norm: ln("ln_f")?,
        lm_head,
        lm_head_bias: Some(st.read_f32("lm_head.bias", &[cfg.vocab_size])?),
    })
}

/// The rows of heads of `head_dim` rows each (a [heads · head_dim, cols] weight or a
/// [heads · head_dim] bias), each head's first `rotary_dim` rows reordered from rotate-every-two's
/// pairs (2i, 2i + 1) to rotate-half's (i, i + rotary_dim / 2): new row i is old row 2i, new row
/// i + rotary_dim / 2 old row 2i + 1. The rows past rotary_dim stay.
fn rotate_every_two_rows(t: HostTensor, head_dim: usize, rotary_dim: usize) -> HostTensor {
    let cols: usize = t.shape[1..].iter().product();
    let half = rotary_dim / 2;
    let mut data = t.data.clone();
    for head in 0..t.shape[0] / head_dim {
        let base = head * head_dim * cols;
        for i in 0..half {
            for (new, old) in [(i, 2 * i), (half + i, 2 * i + 1)] {
                let (to, from) = (base + new * cols, base + old * cols);
                data[to..to + cols].copy_from_slice(&t.data[from..from + cols]);
            }
        }
    }
    HostTensor::new(t.shape, data)
}

/// A LayerNorm's `{name}.weight` and `{name}.bias`, `[h]` each, through `read` (which may prefix
/// the names).
fn layernorm(
    read: &dyn Fn(&str, &[usize]) -> Result<HostTensor>,
    name: &str,
    h: usize,
) -> Result<Norm<HostTensor>> {
    Ok(Norm {
        weight: read(&format!("{name}.weight"), &[h])?,
        bias: Some(read(&format!("{name}.bias"), &[h])?),
    })
}

/// The LM head `name` ([vocab, hidden]) through `read`, or None when the config ties it to the
/// embedding (a tied checkpoint's copy, if any, is then left unread).
fn untied_head(
    cfg: &ModelConfig,
    read: &dyn Fn(&str, &[usize]) -> Result<HostTensor>,
    name: &str,
) -> Result<Option<HostTensor>> {
    if cfg.tie_word_embeddings {
        return Ok(None);
    }
    read(name, &[cfg.vocab_size, cfg.hidden_size]).map(Some)
}

/// A linear layer's `{name}.weight` ([out, inp]) and, with `bias`, its `{name}.bias` ([out]),
/// through `read` (which may prefix the names).
fn read_linear(
    read: &dyn Fn(&str, &[usize]) -> Result<HostTensor>,
    name: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Linear<HostTensor>> {
    Ok(Linear {
        weight: read(&format!("{name}.weight"), &[out, inp])?,
        bias: if bias {
            Some(read(&format!("{name}.bias"), &[out])?)
        } else {
            None
        },
    })
}

/// Separate `{attn}.q_proj`, `k_proj` and `v_proj` layers ([q, h], [kv, h], [kv, h]; biases under
/// `bias`) fused into the canonical QKV, through `read`.
fn read_separate_qkv(
    read: &dyn Fn(&str, &[usize]) -> Result<HostTensor>,
    attn: &str,
    q: usize,
    kv: usize,
    h: usize,
    bias: bool,
) -> Result<Linear<HostTensor>> {
    let (mut weights, mut biases) = (Vec::with_capacity(3), Vec::with_capacity(3));
    for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
        let part = read_linear(read, &format!("{attn}.{name}"), rows, h, bias)?;
        weights.push(part.weight);
        biases.extend(part.bias);
    }
    Ok(Linear {
        weight: concat_rows(&weights),
        bias: bias.then(|| concat_rows(&biases)),
    })
}

/// The checkpoint names of GPT-2's block with RoPE (`Arch::Gpt2` with a rope), per model type.
struct DenseRopeNames {
    /// the attention output projection
    o: &'static str,
    /// the MLP's first and second dense layers
    up: &'static str,
    down: &'static str,
    /// the MLP's input norm; None: the attention's (`parallel_residual`)
    mlp_norm: Option<&'static str>,
    final_norm: &'static str,
}

/// Phi-1/1.5/2 (`PhiForCausalLM`: `dense`, `fc1` / `fc2`, one `input_layernorm` per layer feeding
/// both sub-layers, `final_layernorm`, an LM head with a bias) and StarCoder2
/// (`Starcoder2ForCausalLM`: `o_proj`, `c_fc` / `c_proj`, `post_attention_layernorm` before the
/// MLP, `norm`): separate q/k/v projections fused here into the canonical QKV; every LayerNorm has a
/// bias, the linear layers have theirs as the config says.
fn load_dense_rope(cfg: &ModelConfig, st: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let names = if cfg.model_type == "phi" {
        DenseRopeNames {
            o: "self_attn.dense",
            up: "mlp.fc1",
            down: "mlp.fc2",
            mlp_norm: None,
            final_norm: "model.final_layernorm",
        }
    } else {
        DenseRopeNames {
            o: "self_attn.o_proj",
            up: "mlp.c_fc",
            down: "mlp.c_proj",
            mlp_norm: Some("post_attention_layernorm"),
            final_norm: "model.norm",
        }
    };
    let h = cfg.hidden_size;
    let (q, kv, inter) = (cfg.q_size(), cfg.kv_size(), cfg.intermediate_size);
    let read = |name: &str, shape: &[usize]| st.read_f32(name, shape);
    let linear =
        |name: &str, out: usize, inp: usize, bias: bool| read_linear(&read, name, out, inp, bias);
    let ln = |name: &str| layernorm(&read, name, h);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        let attn = format!("{p}.self_attn");
        layers.push(LayerWeights {
            attn_norm: Some(ln(&format!("{p}.input_layernorm"))?),
            qkv: read_separate_qkv(&read, &attn, q, kv, h, cfg.attention_bias)?,
            qk_norm: None,
            o: linear(&format!("{p}.{}", names.o), h, q, cfg.o_proj_bias)?,
            mlp_norm: match names.mlp_norm {
                Some(n) => Some(ln(&format!("{p}.{n}"))?),
                None => None,
            },
            post_attn_norm: None,
            post_mlp_norm: None,
            mlp: Mlp::Dense {
                up: linear(&format!("{p}.{}", names.up), inter, h, cfg.mlp_bias)?,
                down: linear(&format!("{p}.{}", names.down), h, inter, cfg.mlp_bias)?,
            },
        });
    }
    let lm_head = untied_head(cfg, &read, "lm_head.weight")?;
    let lm_head_bias = if cfg.lm_head_bias {
        Some(read("lm_head.bias", &[cfg.vocab_size])?)
    } else {
        None
    };
    Ok(ModelWeights {
        embed: read("model.embed_tokens.weight", &[cfg.vocab_size, h])?,
        positions: None,
        embed_norm: None,
        layers,
        final_norm: ln(names.final_norm)?,
        lm_head,
        lm_head_bias,
    })
}

/// GPT-NeoX (`GPTNeoXForCausalLM`: Pythia, GPT-NeoX-20B): `gpt_neox.embed_in`, per layer
/// `input_layernorm` and `post_attention_layernorm` (the MLP's own, in the parallel block too),
/// one `attention.query_key_value` projection, `attention.dense`, `mlp.dense_h_to_4h` /
/// `dense_4h_to_h`, then `gpt_neox.final_layer_norm` and `embed_out` (absent when tied). The QKV
/// projection's rows are interleaved per head (head 0's q, k, v, then head 1's, ...: transformers
/// views its output as [tokens, heads, 3 · head_dim]); they are reordered here into the canonical
/// all-Q, all-K, all-V rows, biases alike.
fn load_gpt_neox(cfg: &ModelConfig, st: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let h = cfg.hidden_size;
    let (q, inter) = (cfg.q_size(), cfg.intermediate_size);
    let read = |name: &str, shape: &[usize]| st.read_f32(name, shape);
    let linear =
        |name: &str, out: usize, inp: usize, bias: bool| read_linear(&read, name, out, inp, bias);
    let ln = |name: &str| layernorm(&read, name, h);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("gpt_neox.layers.{i}");
        let fused = linear(
            &format!("{p}.attention.query_key_value"),
            3 * q,
            h,
            cfg.attention_bias,
        )?;
        layers.push(LayerWeights {
            attn_norm: Some(ln(&format!("{p}.input_layernorm"))?),
            // [heads, 3, head_dim] rows: the grouped layout with groups of one query
            qkv: ungroup_qkv(fused, cfg.num_heads, 1, cfg.head_dim),
            qk_norm: None,
            o: linear(&format!("{p}.attention.dense"), h, q, cfg.o_proj_bias)?,
            mlp_norm: Some(ln(&format!("{p}.post_attention_layernorm"))?),
            post_attn_norm: None,
            post_mlp_norm: None,
            mlp: Mlp::Dense {
                up: linear(&format!("{p}.mlp.dense_h_to_4h"), inter, h, cfg.mlp_bias)?,
                down: linear(&format!("{p}.mlp.dense_4h_to_h"), h, inter, cfg.mlp_bias)?,
            },
        });
    }
    let lm_head = untied_head(cfg, &read, "embed_out.weight")?;
    Ok(ModelWeights {
        embed: read("gpt_neox.embed_in.weight", &[cfg.vocab_size, h])?,
        positions: None,
        embed_norm: None,
        layers,
        final_norm: ln("gpt_neox.final_layer_norm")?,
        lm_head,
        lm_head_bias: None,
    })
}

/// A fused QKV projection whose rows are grouped per KV head — [kv_heads, group + 2, head_dim]:
/// the group's `group` query heads, then its key head, then its value head — reordered into the
/// canonical rows (every query head, then every key head, then every value head), weight
/// ([(group + 2) · kv_heads · head_dim, hidden]) and bias alike. Falcon's three layouts, GPT-NeoX's
/// and GPT-BigCode's two are all this one: grouped (Falcon 40B), one group of every query head
/// (multi-query: Falcon 7B, StarCoder; already canonical), groups of one query head (interleaved
/// per head: GPT-NeoX, MHA Falcon and GPT-BigCode).
fn ungroup_qkv(
    fused: Linear<HostTensor>,
    kv_heads: usize,
    group: usize,
    head_dim: usize,
) -> Linear<HostTensor> {
    let reorder = |t: HostTensor| -> HostTensor {
        let cols: usize = t.shape[1..].iter().product();
        let head = head_dim * cols; // one head's rows
        let q_heads = kv_heads * group;
        let mut data = vec![0.0f32; t.data.len()];
        for g in 0..kv_heads {
            let from = g * (group + 2) * head;
            // the group's query heads, contiguous in both layouts
            let q_to = g * group * head;
            data[q_to..q_to + group * head].copy_from_slice(&t.data[from..from + group * head]);
            for (part, first) in [(group, q_heads), (group + 1, q_heads + kv_heads)] {
                let src = from + part * head;
                let to = (first + g) * head;
                data[to..to + head].copy_from_slice(&t.data[src..src + head]);
            }
        }
        HostTensor::new(t.shape, data)
    };
    Linear {
        weight: reorder(fused.weight),
        bias: fused.bias.map(reorder),
    }
}

/// Falcon (`FalconForCausalLM`): `transformer.word_embeddings`, per layer
/// `self_attention.query_key_value` (grouped per KV head: see [`ungroup_qkv`]),
/// `self_attention.dense`, `mlp.dense_h_to_4h` / `dense_4h_to_h`, and the norms of its block:
/// `ln_attn` and `ln_mlp` (the new architecture's two), or `input_layernorm` alone (the parallel
/// block's one), or `input_layernorm` and `post_attention_layernorm` (sequential); then
/// `transformer.ln_f` and `lm_head` (absent or ignored when tied).
fn load_falcon(cfg: &ModelConfig, st: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let h = cfg.hidden_size;
    let (q, kv, inter) = (cfg.q_size(), cfg.kv_size(), cfg.intermediate_size);
    let read = |name: &str, shape: &[usize]| st.read_f32(name, shape);
    let linear =
        |name: &str, out: usize, inp: usize, bias: bool| read_linear(&read, name, out, inp, bias);
    let ln = |name: &str| layernorm(&read, name, h);
    // the attention's and the MLP's norm names (None: the MLP reads the attention's)
    let (attn_norm, mlp_norm) = if cfg.parallel_residual && cfg.has_mlp_norm() {
        ("ln_attn", Some("ln_mlp"))
    } else if cfg.parallel_residual {
        ("input_layernorm", None)
    } else {
        ("input_layernorm", Some("post_attention_layernorm"))
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("transformer.h.{i}");
        let fused = linear(
            &format!("{p}.self_attention.query_key_value"),
            q + 2 * kv,
            h,
            cfg.attention_bias,
        )?;
        layers.push(LayerWeights {
            attn_norm: Some(ln(&format!("{p}.{attn_norm}"))?),
            qkv: ungroup_qkv(fused, cfg.num_kv_heads, cfg.gqa_group(), cfg.head_dim),
            qk_norm: None,
            o: linear(&format!("{p}.self_attention.dense"), h, q, cfg.o_proj_bias)?,
            mlp_norm: match mlp_norm {
                Some(n) => Some(ln(&format!("{p}.{n}"))?),
                None => None,
            },
            post_attn_norm: None,
            post_mlp_norm: None,
            mlp: Mlp::Dense {
                up: linear(&format!("{p}.mlp.dense_h_to_4h"), inter, h, cfg.mlp_bias)?,
                down: linear(&format!("{p}.mlp.dense_4h_to_h"), h, inter, cfg.mlp_bias)?,
            },
        });
    }
    let lm_head = untied_head(cfg, &read, "lm_head.weight")?;
    Ok(ModelWeights {
        embed: read("transformer.word_embeddings.weight", &[cfg.vocab_size, h])?,
        positions: None,
        embed_norm: None,
        layers,
        final_norm: ln("transformer.ln_f")?,
        lm_head,
        lm_head_bias: None,
    })
}

/// OPT (`OPTForCausalLM`, or an `OPTModel` checkpoint without the `model.` prefix, as the hub's
/// original OPT checkpoints are): `decoder.embed_tokens`, `decoder.embed_positions` (the
/// config's `position_offset` rows before position 0's, dropped here), per layer
/// `self_attn_layer_norm`, `self_attn.{q,k,v}_proj` fused into the canonical QKV,
/// `self_attn.out_proj`, `final_layer_norm` (the MLP's norm), `fc1` / `fc2`; then
/// `decoder.final_layer_norm` and `lm_head` (absent or ignored when tied).
fn load_opt(cfg: &ModelConfig, st: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let h = cfg.hidden_size;
    let (q, kv, inter) = (cfg.q_size(), cfg.kv_size(), cfg.intermediate_size);
    let prefix = if st.contains("decoder.embed_tokens.weight") {
        "decoder."
    } else {
        "model.decoder."
    };
    let read = |name: &str, shape: &[usize]| st.read_f32(&format!("{prefix}{name}"), shape);
    let linear =
        |name: &str, out: usize, inp: usize, bias: bool| read_linear(&read, name, out, inp, bias);
    let ln = |name: &str| layernorm(&read, name, h);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("layers.{i}");
        let attn = format!("{p}.self_attn");
        layers.push(LayerWeights {
            attn_norm: Some(ln(&format!("{p}.self_attn_layer_norm"))?),
            qkv: read_separate_qkv(&read, &attn, q, kv, h, cfg.attention_bias)?,
            qk_norm: None,
            o: linear(&format!("{p}.self_attn.out_proj"), h, q, cfg.o_proj_bias)?,
            mlp_norm: Some(ln(&format!("{p}.final_layer_norm"))?),
            post_attn_norm: None,
            post_mlp_norm: None,
            mlp: Mlp::Dense {
                up: linear(&format!("{p}.fc1"), inter, h, cfg.mlp_bias)?,
                down: linear(&format!("{p}.fc2"), h, inter, cfg.mlp_bias)?,
            },
        });
    }
    let offset = cfg.position_offset;
    let table = read("embed_positions.weight", &[cfg.max_context + offset, h])?;
    let positions = HostTensor::new(vec![cfg.max_context, h], table.data[offset * h..].to_vec());
    let lm_head = untied_head(cfg, &|n, shape| st.read_f32(n, shape), "lm_head.weight")?;
    Ok(ModelWeights {
        embed: read("embed_tokens.weight", &[cfg.vocab_size, h])?,
        positions: Some(positions),
        embed_norm: None,
        layers,
        final_norm: ln("final_layer_norm")?,
        lm_head,
        lm_head_bias: None,
    })
}

/// BLOOM (`BloomForCausalLM`, with or without the `transformer.` prefix): `word_embeddings`,
/// `word_embeddings_layernorm`, per layer `h.{i}.input_layernorm`,
/// `self_attention.query_key_value` (interleaved per head: [heads, 3, head_dim] rows, reordered by
/// [`ungroup_qkv`]), `self_attention.dense`, `post_attention_layernorm`, `mlp.dense_h_to_4h` /
/// `dense_4h_to_h`; then `ln_f` and `lm_head` (absent or ignored when tied).
fn load_bloom(cfg: &ModelConfig, st: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let h = cfg.hidden_size;
    let (q, inter) = (cfg.q_size(), cfg.intermediate_size);
    let prefix = if st.contains("transformer.word_embeddings.weight") {
        "transformer."
    } else {
        ""
    };
    let read = |name: &str, shape: &[usize]| st.read_f32(&format!("{prefix}{name}"), shape);
    let linear = |name: &str, out: usize, inp: usize| read_linear(&read, name, out, inp, true);
    let ln = |name: &str| layernorm(&read, name, h);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("h.{i}");
        let fused = linear(&format!("{p}.self_attention.query_key_value"), 3 * q, h)?;
        layers.push(LayerWeights {
            attn_norm: Some(ln(&format!("{p}.input_layernorm"))?),
            qkv: ungroup_qkv(fused, cfg.num_heads, 1, cfg.head_dim),
            qk_norm: None,
            o: linear(&format!("{p}.self_attention.dense"), h, q)?,
            mlp_norm: Some(ln(&format!("{p}.post_attention_layernorm"))?),
            post_attn_norm: None,
            post_mlp_norm: None,
            mlp: Mlp::Dense {
                up: linear(&format!("{p}.mlp.dense_h_to_4h"), inter, h)?,
                down: linear(&format!("{p}.mlp.dense_4h_to_h"), h, inter)?,
            },
        });
    }
    let root = |n: &str, shape: &[usize]| st.read_f32(n, shape);
    Ok(ModelWeights {
        embed: read("word_embeddings.weight", &[cfg.vocab_size, h])?,
        positions: None,
        embed_norm: Some(ln("word_embeddings_layernorm")?),
        layers,
        final_norm: ln("ln_f")?,
        lm_head: untied_head(cfg, &root, "lm_head.weight")?,
        lm_head_bias: None,
    })
}

/// MPT (`MptForCausalLM`): `transformer.wte`, per layer `blocks.{i}.norm_1` (a LayerNorm weight
/// without bias: the loader gives it zeros), `attn.Wqkv` ([q; k; v] rows, the canonical order),
/// `attn.out_proj`, `norm_2`, `ffn.up_proj` / `down_proj`, all without biases; then
/// `transformer.norm_f` and `lm_head` (absent or ignored when tied).
fn load_mpt(cfg: &ModelConfig, st: &TensorStore) -> Result<ModelWeights<HostTensor>> {
    let h = cfg.hidden_size;
    let (q, inter) = (cfg.q_size(), cfg.intermediate_size);
    let read = |name: &str, shape: &[usize]| st.read_f32(&format!("transformer.{name}"), shape);
    let linear = |name: &str, out: usize, inp: usize| read_linear(&read, name, out, inp, false);
    let ln = |name: &str| -> Result<Norm<HostTensor>> {
        Ok(Norm {
            weight: read(&format!("{name}.weight"), &[h])?,
            bias: Some(HostTensor::new(vec![h], vec![0.0; h])),
        })
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let p = format!("blocks.{i}");
        layers.push(LayerWeights {
            attn_norm: Some(ln(&format!("{p}.norm_1"))?),
            qkv: linear(&format!("{p}.attn.Wqkv"), 3 * q, h)?,
            qk_norm: None,
            o: linear(&format!("{p}.attn.out_proj"), h, q)?,
            mlp_norm: Some(ln(&format!("{p}.norm_2"))?),
            post_attn_norm: None,
            post_mlp_norm: None,
            mlp: Mlp::Dense {
                up: linear(&format!("{p}.ffn.up_proj"), inter, h)?,
                down: linear(&format!("{p}.ffn.down_proj"), h, inter)?,
            },
        });
    }
    let root = |n: &str, shape: &[usize]| st.read_f32(n, shape);
    Ok(ModelWeights {
        embed: read("wte.weight", &[cfg.vocab_size, h])?,
        positions: None,
        embed_norm: None,
        layers,
        final_norm: ln("norm_f")?,
        lm_head: untied_head(cfg, &root, "lm_head.weight")?,
        lm_head_bias: None,
    })
}

/// Random weights for any config (vLLM's "dummy" load format): linear weights and embeddings drawn
/// from N(0, 0.02²), norms at weight 1 and bias 0, biases 0. Each tensor has its own seed derived from
/// `seed` and its position, so generation is parallel and reproducible.
pub fn dummy_weights(cfg: &ModelConfig, seed: u64) -> ModelWeights<HostTensor> {
    let h = cfg.hidden_size;
    let (q, kv, inter) = (cfg.q_size(), cfg.kv_size(), cfg.intermediate_size);
    let up_rows = match cfg.arch {
        Arch::Gpt2 => inter,
        Arch::Llama => 2 * inter,
    };
    let layernorm = cfg.arch == Arch::Gpt2;
    let mut next_id = 0u64;
    let mut random = |shape: Vec<usize>| {
        next_id += 1;
        random_normal(shape, seed, next_id)
    };
    let ones = |n: usize| HostTensor::new(vec![n], vec![1.0; n]);
    let zeros = |n: usize| HostTensor::new(vec![n], vec![0.0; n]);
    let norm = |n: usize| Norm {
        weight: ones(n),
        bias: layernorm.then(|| zeros(n)),
    };
    let bias = |n: usize, present: bool| present.then(|| zeros(n));
    let layers = (0..cfg.num_layers)
        .map(|i| LayerWeights {
            attn_norm: (!cfg.post_norms_only).then(|| norm(h)),
            qkv: Linear {
                weight: random(vec![q + 2 * kv, h]),
                bias: bias(q + 2 * kv, cfg.attention_bias),
            },
            qk_norm: qk_norm_widths(cfg).map(|(q, k)| QkNorm {
                q: ones(q),
                k: ones(k),
            }),
            o: Linear {
                weight: random(vec![h, q]),
                bias: bias(h, cfg.o_proj_bias),
            },
            mlp_norm: cfg.has_mlp_norm().then(|| norm(h)),
            post_attn_norm: cfg.sandwich_norms.then(|| norm(h)),
            post_mlp_norm: cfg.sandwich_norms.then(|| norm(h)),
            mlp: match cfg.layer_moe(i) {
                Some(m) => {
                    let (n, e_inter) = (m.num_experts, m.expert_intermediate);
                    Mlp::Experts(Experts {
                        router: random(vec![n, h]),
                        gate_up: random(vec![n, 2 * e_inter, h]),
                        down: random(vec![n, h, e_inter]),
                    })
                }
                None => Mlp::Dense {
                    up: Linear {
                        weight: random(vec![up_rows, h]),
                        bias: bias(up_rows, cfg.mlp_bias),
                    },
                    down: Linear {
                        weight: random(vec![h, inter]),
                        bias: bias(h, cfg.mlp_bias),
                    },
                },
            },
        })
        .collect();
    ModelWeights {
        embed: random(vec![cfg.vocab_size, h]),
        positions: cfg
            .learned_positions()
            .then(|| random(vec![cfg.max_context, h])),
        embed_norm: cfg.embed_norm.then(|| norm(h)),
        layers,
        final_norm: norm(h),
        lm_head: (!cfg.tie_word_embeddings).then(|| random(vec![cfg.vocab_size, h])),
        lm_head_bias: cfg.lm_head_bias.then(|| zeros(cfg.vocab_size)),
    }
}

/// N(0, 0.02²) values, generated in parallel chunks, each chunk seeded from (seed, tensor id, chunk).
fn random_normal(shape: Vec<usize>, seed: u64, tensor_id: u64) -> HostTensor {
    const CHUNK: usize = 1 << 16;
    let n: usize = shape.iter().product();
    let mut data = vec![0.0f32; n];
    let normal = Normal::new(0.0f32, 0.02).expect("valid std");
    data.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let mut rng = ChaCha8Rng::seed_from_u64(
                seed ^ tensor_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((chunk as u64) << 32),
            );
            for x in out.iter_mut() {
                *x = normal.sample(&mut rng);
            }
        });
    HostTensor::new(shape, data)
}

/// Stack 2-D (or 1-D) tensors along their first dimension.
fn concat_rows(parts: &[HostTensor]) -> HostTensor {
    let cols: usize = parts[0].shape[1..].iter().product();
    let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
    let mut data = Vec::with_capacity(rows * cols);
    for p in parts {
        data.extend_from_slice(&p.data);
    }
    let mut shape = parts[0].shape.clone();
    shape[0] = rows;
    HostTensor::new(shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows named by their (kind, head): q heads 1x, k heads 2x, v heads 3x; each row holds its
    /// name in every column.
    fn fused(rows: &[f32], cols: usize) -> Linear<HostTensor> {
        let data = rows.iter().flat_map(|&r| vec![r; cols]).collect();
        Linear {
            weight: HostTensor::new(vec![rows.len(), cols], data),
            bias: Some(HostTensor::new(vec![rows.len()], rows.to_vec())),
        }
    }

    #[test]
    fn rotate_every_two_rows_moves_pairs_to_halves_per_head() {
        // two heads of 6 rows, 4 rotating: per head rows (0, 1) and (2, 3) are the pairs
        let rows: Vec<f32> = (0..12).map(|r| r as f32).collect();
        let t = HostTensor::new(vec![12, 1], rows);
        let out = rotate_every_two_rows(t, 6, 4);
        assert_eq!(
            out.data,
            vec![0.0, 2.0, 1.0, 3.0, 4.0, 5.0, 6.0, 8.0, 7.0, 9.0, 10.0, 11.0]
        );
        // whole-head rotation, two columns per row: the columns move with their row
        let t = HostTensor::new(vec![4, 2], vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]);
        let out = rotate_every_two_rows(t, 4, 4);
        assert_eq!(out.data, vec![0.0, 0.5, 2.0, 2.5, 1.0, 1.5, 3.0, 3.5]);
    }

    #[test]
    fn ungroup_qkv_gives_the_canonical_rows_for_every_layout() {
        let canonical = |kv: usize, group: usize| -> Vec<f32> {
            let q = (0..kv * group).map(|h| 10.0 + h as f32);
            let k = (0..kv).map(|h| 20.0 + h as f32);
            let v = (0..kv).map(|h| 30.0 + h as f32);
            q.chain(k).chain(v).collect()
        };
        for (kv, group, stored) in [
            // Falcon 40B: per KV head, its queries, then its key and value
            (2, 2, vec![10.0, 11.0, 20.0, 30.0, 12.0, 13.0, 21.0, 31.0]),
            // GPT-NeoX, MHA Falcon and GPT-BigCode: interleaved per head
            (
                3,
                1,
                vec![10.0, 20.0, 30.0, 11.0, 21.0, 31.0, 12.0, 22.0, 32.0],
            ),
            // multi-query: already canonical
            (1, 3, vec![10.0, 11.0, 12.0, 20.0, 30.0]),
        ] {
            let head_dim = 1;
            let out = ungroup_qkv(fused(&stored, 2), kv, group, head_dim);
            let want = canonical(kv, group);
            let rows: Vec<f32> = out.weight.data.chunks(2).map(|r| r[0]).collect();
            assert_eq!(rows, want, "weight, kv {kv} group {group}");
            assert!(out.weight.data.chunks(2).all(|r| r[0] == r[1]));
            assert_eq!(out.bias.unwrap().data, want, "bias, kv {kv} group {group}");
        }
        // head_dim 2: a head's rows move together
        let out = ungroup_qkv(fused(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 1), 1, 1, 2);
        assert_eq!(out.weight.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let stored = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5];
        let out = ungroup_qkv(fused(&stored, 1), 2, 1, 2);
        assert_eq!(
            out.weight.data,
            vec![1.0, 1.5, 4.0, 4.5, 2.0, 2.5, 5.0, 5.5, 3.0, 3.5, 6.0, 6.5]
        );
    }
}
