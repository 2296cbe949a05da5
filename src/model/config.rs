//! `config.json` of a Hugging Face model directory, parsed into one architecture-neutral [`ModelConfig`].
//!
//! Supported families: `gpt2`, `phi` (GPT-2's block with partial RoPE, in parallel),
//! `starcoder2` (GPT-2's block with RoPE and a window), `gpt_neox`, `falcon`, `opt`,
//! `gpt_bigcode`, `gptj`, `bloom` and `mpt` (GPT-2's block with ALiBi), and
//! `llama` with the Llama-architecture model types `mistral`,
//! `qwen2` (Qwen2 / Qwen2.5: biases on q, k and v but not on o_proj), `qwen3` (an RMSNorm of
//! each q and k head before RoPE), `phi3` (Phi-3: fused qkv_proj and gate_up_proj, LongRoPE,
//! partial rotary), `granite` (four scalars: embedding, residual, attention, logits), `smollm3`
//! (NoPE layers), `gemma` (Gemma 1: a scaled embedding, (1 + w) norms, GeGLU), `gemma2` (Gemma's
//! plus sandwich norms, soft-capping, alternating sliding windows) and `gemma3_text` (Gemma 2's
//! plus q/k norms and per-layer-type RoPE). Both config styles found in the wild are read:
//! transformers 4.x (`rope_theta` + `rope_scaling`) and 5.x (`rope_parameters`). Fields are read one by
//! one from a JSON value (not a derived struct) so that every error names the field at fault.

use serde_json::{Map, Value};

use crate::backend::Alibi;
use crate::error::{Error, Result};

pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "bloom",
    "gemma",
    "gemma2",
    "falcon",
    "gemma3_text",
    "gpt2",
    "gpt_bigcode",
    "gpt_neox",
    "gptj",
    "granite",
    "llama",
    "mistral",
    "mixtral",
    "mpt",
    "olmo2",
    "olmoe",
    "opt",
    "phi",
    "phi3",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "smollm3",
    "starcoder2",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// LayerNorm, a gelu_new MLP of two dense layers: GPT-2 (learned positions, fused QKV,
    /// biases everywhere, tied LM head), Phi-1/1.5/2 (`phi`: partial RoPE, the attention and the
    /// MLP in parallel, an LM head with a bias) and StarCoder2 (`starcoder2`: RoPE, GQA, a
    /// sliding window, biases under `use_bias`).
    Gpt2,
    /// RoPE, RMSNorm, grouped-query attention, SiLU-gated MLP.
    Llama,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    Default,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.1's frequency-dependent scaling (transformers `_compute_llama3_parameters`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// YaRN (transformers `_compute_yarn_parameters`): frequencies blended between interpolated
    /// (÷ factor) and extrapolated (unchanged) over a ramp of dimensions set by beta_fast /
    /// beta_slow, and cos/sin multiplied by `attention_factor`.
    Yarn {
        factor: f32,
        original_max_position_embeddings: usize,
        beta_fast: f32,
        beta_slow: f32,
        /// Whether the ramp's ends are rounded to whole dimensions (transformers' `truncate`).
        truncate: bool,
        /// cos and sin are multiplied by it (so attention scores by its square): given, or
        /// from `mscale` / `mscale_all_dim`, or 0.1 ln(factor) + 1.
        attention_factor: f32,
    },
    /// Dynamic NTK scaling (transformers `_compute_dynamic_ntk_parameters`): theta grows as
    /// theta · (factor · L / max_position_embeddings − (factor − 1))^(d / (d − 2)) once a
    /// sequence's length L passes max_position_embeddings, and is theta itself up to there. The
    /// engine never serves past max_position_embeddings (the context is at most that), so its
    /// tables are plain RoPE's: transformers' numbers for every sequence it can hold.
    #[serde(rename = "dynamic")]
    DynamicNtk {
        factor: f32,
    },
    /// Phi-3's LongRoPE (transformers `_compute_longrope_parameters`): inv_freq[i] =
    /// 1 / (ext[i] · theta^(2i / rotary_dim)) with per-dimension factors `ext`, cos and sin times
    /// `attention_factor`. transformers takes `long_factor` for a sequence longer than
    /// `original_max_position_embeddings` and `short_factor` otherwise (recomputing the whole
    /// sequence when generation crosses that length); the engine fixes one set for its context:
    /// `long_factor` when it serves sequences past the original length
    /// ([`ModelConfig::max_context`] > original, llama.cpp's rule), else `short_factor`
    /// (see [`crate::model::rope::longrope_factors`]).
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position_embeddings: usize,
        /// Given, else sqrt(1 + ln(factor) / ln(original)) for factor > 1 (factor: given, else
        /// max_position_embeddings / original), else 1.
        attention_factor: f32,
    },
}

/// The MLP's activation: of the gate in a Llama-family (gated) MLP, of the first dense layer's
/// output in GPT-2's block ([`Arch::Gpt2`]: `GeluTanh` or `GeluErf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpActivation {
    /// silu(gate) * up (Llama, Mistral, Qwen, Phi-3)
    #[default]
    Silu,
    /// The tanh approximation of GELU: transformers' `gelu_new`, `gelu_fast` and
    /// `gelu_pytorch_tanh` (GPT-2, Phi, StarCoder2; gated: Gemma)
    GeluTanh,
    /// The exact GELU, 0.5 u (1 + erf(u / √2)): transformers' `gelu` (GPT-NeoX / Pythia; GPT-2's
    /// block only)
    GeluErf,
    /// max(u, 0): transformers' `relu` (OPT; GPT-2's block only)
    Relu,
}

impl MlpActivation {
    fn is_silu(&self) -> bool {
        *self == MlpActivation::Silu
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RopeConfig {
    pub theta: f32,
    pub scaling: RopeScaling,
}

/// A mixture-of-experts MLP: on the layers in `layers` each token's MLP output is the weighted
/// sum of `top_k` of `num_experts` SwiGLU experts (each a Llama MLP of `expert_intermediate`),
/// chosen per token by a linear router (`[num_experts, hidden]`, no bias): softmax over the
/// router's logits in f32, the `top_k` largest probabilities, divided by their sum under
/// `renormalize` (`model::moe::route`). Mixtral, Qwen3-MoE and OLMoE all route so.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoeConfig {
    /// Experts per MoE layer (Mixtral's `num_local_experts`, else `num_experts`).
    pub num_experts: usize,
    /// Experts each token is sent to (`num_experts_per_tok`).
    pub top_k: usize,
    /// Each expert's intermediate size (Qwen3-MoE's `moe_intermediate_size`, else
    /// `intermediate_size`).
    pub expert_intermediate: usize,
    /// The chosen probabilities are divided by their sum (Mixtral always; `norm_topk_prob`
    /// elsewhere).
    pub renormalize: bool,
    /// The layers whose MLP is the experts, ascending; the others keep a dense MLP of
    /// `intermediate_size` (Qwen3-MoE's `mlp_only_layers` and `decoder_sparse_step`).
    pub layers: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    /// `model_type` as written in the config (`llama`, `mistral`, `qwen2` and `qwen3` share
    /// [`Arch::Llama`]).
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    /// Longest sequence (prompt + output) the model supports: `max_position_embeddings`.
    pub max_context: usize,
    pub norm_eps: f32,
    /// `None` for GPT-2 and OPT (learned absolute positions).
    pub rope: Option<RopeConfig>,
    /// OPT: its learned position table has this many rows before position 0's (2: a fairseq
    /// padding convention). The loader drops them, so the table the backends see starts at
    /// position 0 as GPT-2's does; parameter counts include them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub position_offset: usize,
    /// Phi-3's `partial_rotary_factor` < 1 (Phi-4-mini's 0.75): RoPE rotates only the first
    /// int(head_dim · factor) dimensions of each Q and K head (pairs (i, i + rotary_dim / 2)) and
    /// leaves the rest as they are; None: the whole head ([`rotary_dim`](Self::rotary_dim)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_dim: Option<usize>,
    /// GPT-J: RoPE rotates the pairs (2i, 2i + 1) of each head's first rotary_dim dimensions
    /// (rotate-every-two) instead of (i, i + rotary_dim / 2). The loader permutes those rows of
    /// every Q and K head (pair i's two rows to i and i + rotary_dim / 2) so the backends'
    /// rotate-half RoPE computes it: q·k is the same under one permutation of both, and V is not
    /// touched. The KV cache holds the permuted keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rope_interleaved: bool,
    pub tie_word_embeddings: bool,
    /// The q, k and v projections carry biases.
    pub attention_bias: bool,
    /// The attention output projection (o_proj, GPT-2's c_proj) carries a bias: with q/k/v for
    /// GPT-2 and Llama's `attention_bias`, never for Qwen2.
    pub o_proj_bias: bool,
    pub mlp_bias: bool,
    /// Qwen3's `q_norm` / `k_norm`: each query and key head is RMS-normalised over `head_dim`
    /// (weights `[head_dim]`, eps `norm_eps`) after the projection and before RoPE.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// OLMo 2's `q_norm` / `k_norm`: the whole Q projection (`[q_size]` weights) and the whole K
    /// projection (`[kv_size]`) of each token are RMS-normalised, each as one vector, after the
    /// projection and before RoPE.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm_whole: bool,
    /// Gemma: the embedding output is multiplied by this (sqrt(hidden_size)); Granite's
    /// `embedding_multiplier` (12 in Granite 3, exact in every dtype: the backends hold the scale
    /// in their compute dtype, as transformers holds Gemma's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_scale: Option<f32>,
    /// Granite's `residual_multiplier`: each sub-layer's output (o_proj's, down_proj's) is
    /// multiplied by this before it joins the residual stream. Folded into those projections'
    /// weights and biases at load, so no backend op sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_scale: Option<f32>,
    /// Granite's `logits_scaling`: the logits are divided by this. Folded into the final norm's
    /// weight at load (the LM head is linear and bias-free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits_divisor: Option<f32>,
    /// Gemma 2 and 3, OLMo 2: each sub-layer's output is RMS-normalised before it joins the
    /// residual stream (post_attention_layernorm, post_feedforward_layernorm); Gemma's norm the
    /// sub-layers' inputs too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandwich_norms: bool,
    /// OLMo 2: the sub-layers read the residual stream as it is (no input_layernorm, no norm
    /// before the MLP); only their outputs are normalised (`sandwich_norms`' post norms).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_norms_only: bool,
    #[serde(default, skip_serializing_if = "MlpActivation::is_silu")]
    pub mlp_activation: MlpActivation,
    /// SmolLM3's NoPE layers (`no_rope_layers` 0, by default every 4th): no rotary embedding on
    /// their queries and keys; empty for every other model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nope_layers: Vec<usize>,
    /// Gemma 3: the RoPE of the sliding-window layers (`sliding_layers`); `rope` is the others'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope: Option<RopeConfig>,
    /// The layers with sliding-window attention of `sliding_window` keys (Gemma 3's also use
    /// `local_rope`); empty without a window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sliding_layers: Vec<usize>,
    /// Sliding-window attention (Mistral's and Phi-3's `sliding_window`, Qwen2's with
    /// `use_sliding_window`, Gemma 3's local layers): on the `sliding_layers`, a token at position
    /// p attends to keys max(0, p + 1 - w) ..= p only (`Backend::attention`'s `window`). When every
    /// layer slides ([`kv_window`](Self::kv_window)), the engine releases KV blocks that left the
    /// window; with any full-attention layer (Gemma 2/3, Qwen2 below max_window_layers) it keeps
    /// every position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Attention scores are multiplied by this (1/sqrt(head_dim) unless GPT-2's `scale_attn_weights` is off).
    pub attn_scale: f32,
    /// Gemma 2's `attn_logit_softcapping`: each scaled attention score s becomes
    /// cap · tanh(s / cap) before the softmax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_softcap: Option<f32>,
    /// ALiBi (BLOOM, MPT, Falcon-RW): a per-head linear penalty on each score by the key's
    /// distance from the query, the model's only position information (`rope` is None and no
    /// learned positions are read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alibi: Option<Alibi>,
    /// Gemma 2's `final_logit_softcapping`: each logit x becomes cap · tanh(x / cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_softcap: Option<f32>,
    /// Mixture-of-experts models (Mixtral, Qwen3-MoE, OLMoE): the MLP of the layers it lists is
    /// a routed set of SwiGLU experts. None: every MLP is dense.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeConfig>,
    /// GPT-2's `scale_attn_by_inverse_layer_idx`: layer i additionally divides scores by i + 1.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Phi, GPT-NeoX (`use_parallel_residual`), Falcon (`parallel_attn`,
    /// `new_decoder_architecture`): the attention and the MLP both read the layer's input and both
    /// outputs join the residual stream: x + attn(ln₁(x)) + mlp(ln₂(x)), ln₂ a LayerNorm of its own
    /// (GPT-NeoX, Falcon 40B's `ln_mlp`) or ln₁ itself (`parallel_shared_norm`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel_residual: bool,
    /// Phi, Falcon 7B: in the parallel block the MLP reads the attention's own normalised input
    /// (one LayerNorm per layer; see [`has_mlp_norm`](Self::has_mlp_norm)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel_shared_norm: bool,
    /// BLOOM: a LayerNorm of the embedding output (`word_embeddings_layernorm`) before the first
    /// layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embed_norm: bool,
    /// MPT: LayerNorms with a weight and no bias (transformers' `norm.bias = None`); the loader
    /// gives them zero biases, which the parameter count leaves out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub norms_without_bias: bool,
    /// Phi: the LM head carries a bias (`lm_head.bias`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lm_head_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written in the config, informational.
    pub stored_dtype: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The JSON object `text` holds (`file` names it in errors: malformed, or not an object).
fn json_object(text: &str, file: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(Error::config(file, "<root>", "expected a JSON object")),
        Err(cause) => Err(Error::Json {
            file: file.to_string(),
            cause,
        }),
    }
}

impl ModelConfig {
    /// Parse the text of a `config.json`; `file` names it in errors.
    pub fn from_json_str(text: &str, file: &str) -> Result<Self> {
        let obj = json_object(text, file)?;
        let obj = &obj;
        let f = Fields { obj, file };
        let model_type = f.req_str("model_type")?;
        let config = match model_type.as_str() {
            "gpt2" | "gpt_bigcode" => parse_gpt2(&f, &model_type)?,
            "gpt_neox" => parse_gpt_neox(&f)?,
            "falcon" => parse_falcon(&f)?,
            "bloom" => parse_bloom(&f)?,
            "mpt" => parse_mpt(&f)?,
            "opt" => parse_opt(&f)?,
            "gptj" => parse_gptj(&f)?,
            "phi" | "starcoder2" => parse_dense_rope(&f, &model_type)?,
            "llama" | "mistral" | "qwen2" | "qwen3" | "phi3" | "granite" | "smollm3" | "olmo2"
            | "mixtral" | "qwen3_moe" | "olmoe" => parse_llama(&f, &model_type)?,
            "gemma" | "gemma2" | "gemma3_text" => parse_gemma(&f, &model_type)?,
            other => {
                return Err(Error::UnsupportedModelType {
                    file: file.to_string(),
                    found: other.to_string(),
                    supported: SUPPORTED_MODEL_TYPES.to_vec(),
                })
            }
        };
        config.validate(file)?;
        Ok(config)
    }

    /// Add the `eos_token_id`s of a `generation_config.json` (text `text`, named `file` in errors)
    /// to the config's: transformers' `generate` stops on those, and some models list an
    /// end-of-turn token only there (Llama 3 Instruct's `<|eot_id|>`). A file without the field
    /// changes nothing.
    pub fn merge_generation_config(&mut self, text: &str, file: &str) -> Result<()> {
        let obj = json_object(text, file)?;
        let obj = &obj;
        for tok in (Fields { obj, file }).token_list("eos_token_id")? {
            if tok as usize >= self.vocab_size {
                return Err(Error::config(
                    file,
                    "eos_token_id",
                    format!("{tok} is outside the vocabulary of {}", self.vocab_size),
                ));
            }
            if !self.eos_token_ids.contains(&tok) {
                self.eos_token_ids.push(tok);
            }
        }
        Ok(())
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// GPT-2's learned position embeddings (`wpe`), which a model without RoPE or ALiBi has.
    pub fn learned_positions(&self) -> bool {
        self.rope.is_none() && self.alibi.is_none()
    }

    /// The `config.json` field that gives the context ([`max_context`](Self::max_context)), for
    /// messages: GPT-2's, GPT-BigCode's and GPT-J's `n_positions`, BLOOM's `seq_length`, MPT's
    /// `max_seq_len`, else `max_position_embeddings`.
    pub fn context_field(&self) -> &'static str {
        match self.model_type.as_str() {
            "gpt2" | "gpt_bigcode" | "gptj" => "n_positions",
            "bloom" => "seq_length",
            "mpt" => "max_seq_len",
            _ => "max_position_embeddings",
        }
    }

    /// Whether each layer has a norm of its own before the MLP: not under `post_norms_only`
    /// (OLMo 2), nor under `parallel_shared_norm` (Phi, Falcon 7B: the MLP reads the attention's
    /// normalised input).
    pub fn has_mlp_norm(&self) -> bool {
        !self.post_norms_only && !self.parallel_shared_norm
    }

    /// Gemma 1, 2 and 3, whose RMSNorm weights are stored as w and applied as (1 + w).
    pub fn is_gemma(&self) -> bool {
        matches!(self.model_type.as_str(), "gemma" | "gemma2" | "gemma3_text")
    }

    /// The sliding window of layer `layer`'s attention, if it has one.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        self.sliding_window
            .filter(|_| self.sliding_layers.contains(&layer))
    }

    /// The attention window of the whole model: Some(w) when every layer attends to at most the
    /// last w positions, so KV older than that is never read again; None when some layer attends to
    /// the whole context.
    pub fn kv_window(&self) -> Option<usize> {
        let w = self.sliding_window?;
        (0..self.num_layers)
            .all(|l| self.sliding_layers.contains(&l))
            .then_some(w)
    }

    /// The leading dimensions of each head that RoPE rotates (the cos/sin tables' width).
    pub fn rotary_dim(&self) -> usize {
        self.partial_rotary_dim.unwrap_or(self.head_dim)
    }

    /// Queries per KV head (the GQA group size).
    pub fn gqa_group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    pub fn q_size(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_size(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameter count, embeddings included once when tied.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let qkv = h * (self.q_size() + 2 * self.kv_size());
        let o = self.q_size() * h;
        // a LayerNorm's weight and bias, or its weight alone (MPT)
        let ln = if self.norms_without_bias { h } else { 2 * h };
        let (mlp, norms, biases) = match self.arch {
            // (Phi's parallel block has one LayerNorm per layer)
            Arch::Gpt2 => (
                2 * h * self.intermediate_size,
                if self.has_mlp_norm() { 2 * ln } else { ln },
                usize::from(self.attention_bias) * (self.q_size() + 2 * self.kv_size())
                    + usize::from(self.o_proj_bias) * h
                    + usize::from(self.mlp_bias) * (self.intermediate_size + h),
            ),
            Arch::Llama => (
                3 * h * self.intermediate_size,
                (2 * usize::from(!self.post_norms_only) + 2 * usize::from(self.sandwich_norms)) * h
                    + usize::from(self.qk_norm) * 2 * self.head_dim
                    + usize::from(self.qk_norm_whole) * (self.q_size() + self.kv_size()),
                usize::from(self.attention_bias) * (self.q_size() + 2 * self.kv_size())
                    + usize::from(self.o_proj_bias) * h
                    + usize::from(self.mlp_bias) * (2 * self.intermediate_size + h),
            ),
        };
        // MoE layers: a router and the experts in place of the dense MLP (no MoE model type has
        // MLP biases)
        let (moe_layers, experts) = self.moe.as_ref().map_or((0, 0), |m| {
            let experts = m.num_experts * (h + 3 * h * m.expert_intermediate);
            (m.layers.len(), experts)
        });
        let layers = self.num_layers * (qkv + o + norms + biases)
            + (self.num_layers - moe_layers) * mlp
            + moe_layers * experts;
        let embed = self.vocab_size * h;
        let positions = if self.learned_positions() {
            (self.max_context + self.position_offset) * h
        } else {
            0
        };
        let head = if self.tie_word_embeddings { 0 } else { embed }
            + usize::from(self.lm_head_bias) * self.vocab_size;
        let final_norm = if self.arch == Arch::Gpt2 { ln } else { h };
        let embed_norm = if self.embed_norm { ln } else { 0 };
        embed + embed_norm + positions + layers + final_norm + head
    }

    /// Parameters a token's forward pass reads: all of them but, in each MoE layer, the experts it
    /// is not routed to (`top_k` of `num_experts` run). The weight bytes of a batch-1 decode step.
    pub fn active_parameters(&self) -> usize {
        let all = self.num_parameters();
        match &self.moe {
            Some(m) => {
                let expert = 3 * self.hidden_size * m.expert_intermediate;
                all - m.layers.len() * (m.num_experts - m.top_k) * expert
            }
            None => all,
        }
    }

    /// Whether some layer has a dense MLP (every layer but in a model whose MLPs are all experts).
    pub fn has_dense_mlp(&self) -> bool {
        self.moe
            .as_ref()
            .is_none_or(|m| m.layers.len() < self.num_layers)
    }

    /// The routed experts of layer `layer`, if its MLP is a mixture of experts.
    pub fn layer_moe(&self, layer: usize) -> Option<&MoeConfig> {
        self.moe
            .as_ref()
            .filter(|m| m.layers.binary_search(&layer).is_ok())
    }

    fn validate(&self, file: &str) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_context),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(file, field, "must be positive"));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(Error::config(
                file,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        let activation_fits = match self.arch {
            Arch::Gpt2 => self.mlp_activation != MlpActivation::Silu,
            Arch::Llama => matches!(
                self.mlp_activation,
                MlpActivation::Silu | MlpActivation::GeluTanh
            ),
        };
        if !activation_fits {
            return Err(Error::config(
                file,
                "hidden_act",
                format!(
                    "{:?} is not an activation of {}'s MLP",
                    self.mlp_activation, self.model_type
                ),
            ));
        }
        if self.rope.is_some() && self.head_dim % 2 != 0 {
            return Err(Error::config(
                file,
                "head_dim",
                format!("RoPE needs an even head_dim, found {}", self.head_dim),
            ));
        }
        if let Some(tok) = self
            .eos_token_ids
            .iter()
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return Err(Error::config(
                file,
                "eos_token_id",
                format!("{tok} is outside the vocabulary of {}", self.vocab_size),
            ));
        }
        Ok(())
    }
}

/// GPT-2 (`GPT2Config`) and GPT-BigCode (`GPTBigCodeConfig`: StarCoder 1, SantaCoder,
/// tiny_starcoder): learned positions, LayerNorms, biases everywhere, an MLP of `n_inner` (4 ×
/// hidden) with `activation_function` (gelu_new; GPT-BigCode's gelu_pytorch_tanh), tied unless
/// `tie_word_embeddings` says otherwise. GPT-BigCode adds multi-query attention (`multi_query`,
/// true: one KV head) and has no `scale_attn_by_inverse_layer_idx`.
fn parse_gpt2(f: &Fields, model_type: &str) -> Result<ModelConfig> {
    let bigcode = model_type == "gpt_bigcode";
    let hidden = f.req_usize("n_embd")?;
    let heads = f.req_usize("n_head")?;
    let head_dim = head_dim_of(f, hidden, heads, "n_head", "n_embd")?;
    let default_act = if bigcode {
        "gelu_pytorch_tanh"
    } else {
        "gelu_new"
    };
    let act = f
        .opt_str("activation_function")?
        .unwrap_or_else(|| default_act.into());
    let mlp_activation = dense_gelu(f, "activation_function", &act, model_type)?;
    if f.opt_bool("add_cross_attention")?.unwrap_or(false) {
        return Err(Error::config(
            f.file,
            "add_cross_attention",
            format!("cross-attention (encoder-decoder {model_type}) is not supported"),
        ));
    }
    let scale_weights = f.opt_bool("scale_attn_weights")?.unwrap_or(true);
    let multi_query = bigcode && f.opt_bool("multi_query")?.unwrap_or(true);
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        model_type: model_type.into(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: f.req_usize("n_layer")?,
        num_heads: heads,
        num_kv_heads: if multi_query { 1 } else { heads },
        head_dim,
        intermediate_size: f.opt_usize("n_inner")?.unwrap_or(4 * hidden),
        max_context: f.req_usize("n_positions")?,
        norm_eps: f.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5),
        rope: None,
        partial_rotary_dim: None,
        position_offset: 0,
        rope_interleaved: false,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        attention_bias: true,
        o_proj_bias: true,
        mlp_bias: true,
        qk_norm: false,
        qk_norm_whole: false,
        nope_layers: Vec::new(),
        embed_scale: None,
        residual_scale: None,
        logits_divisor: None,
        sandwich_norms: false,
        post_norms_only: false,
        mlp_activation,
        local_rope: None,
        sliding_layers: Vec::new(),
        sliding_window: None,
        attn_scale: if scale_weights {
            1.0 / (head_dim as f32).sqrt()
        } else {
            1.0
        },
        // (GPTBigCodeConfig has no such field: transformers ignores it there)
        scale_attn_by_inverse_layer_idx: !bigcode
            && f.opt_bool("scale_attn_by_inverse_layer_idx")?
                .unwrap_or(false),
        parallel_residual: false,
        parallel_shared_norm: false,
        lm_head_bias: false,
        embed_norm: false,
        norms_without_bias: false,
        bos_token_id: f.opt_token("bos_token_id")?,
        attn_softcap: None,
        alibi: None,
        final_softcap: None,
        moe: None,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// GPT-2's block (LayerNorm with biases, a gelu_new MLP of two dense layers) with RoPE, separate
/// q/k/v projections and grouped-query attention (`num_key_value_heads`):
/// - Phi-1, Phi-1.5 and Phi-2 (`PhiConfig`): biases everywhere, RoPE over the first
///   `partial_rotary_factor` (0.5 when absent; Phi-2's 0.4) of each head, one norm
///   (`layer_norm_eps`, 1e-5) feeding the attention and the MLP in parallel, an LM head with a
///   bias; `qk_layernorm` is refused.
/// - StarCoder2 (`Starcoder2Config`): biases under `use_bias` (true), full RoPE, the usual
///   sequential block (`norm_epsilon`, 1e-5), `sliding_window` on every layer (null: none), tied
///   embeddings unless `tie_word_embeddings` says otherwise.
fn parse_dense_rope(f: &Fields, model_type: &str) -> Result<ModelConfig> {
    let phi = model_type == "phi";
    let hidden = f.req_usize("hidden_size")?;
    let heads = f.req_usize("num_attention_heads")?;
    let head_dim = head_dim_of(f, hidden, heads, "num_attention_heads", "hidden_size")?;
    let act = f
        .opt_str("hidden_act")?
        .unwrap_or_else(|| "gelu_new".into());
    let mlp_activation = dense_gelu(f, "hidden_act", &act, model_type)?;
    if f.opt_bool("qk_layernorm")?.unwrap_or(false) {
        return Err(Error::config(
            f.file,
            "qk_layernorm",
            "LayerNorms of the query and key heads are not supported",
        ));
    }
    let layers = f.req_usize("num_hidden_layers")?;
    let default_positions = if phi { 2048 } else { 4096 };
    let max_position = f
        .opt_usize("max_position_embeddings")?
        .unwrap_or(default_positions);
    let (rope, partial_rotary_dim) = if phi {
        parse_phi3_rope(f, head_dim, max_position, 0.5)?
    } else {
        check_full_rotary(f)?;
        (parse_rope(f)?, None)
    };
    let (sliding_window, sliding_layers) = parse_sliding_window(f, model_type, layers, &[])?;
    let bias = phi || f.opt_bool("use_bias")?.unwrap_or(true);
    let eps_field = if phi {
        "layer_norm_eps"
    } else {
        "norm_epsilon"
    };
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        model_type: model_type.into(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        intermediate_size: f.req_usize("intermediate_size")?,
        max_context: max_position,
        norm_eps: f.opt_f32(eps_field)?.unwrap_or(1e-5),
        rope: Some(rope),
        partial_rotary_dim,
        position_offset: 0,
        rope_interleaved: false,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(!phi),
        attention_bias: bias,
        o_proj_bias: bias,
        mlp_bias: bias,
        qk_norm: false,
        qk_norm_whole: false,
        nope_layers: Vec::new(),
        embed_scale: None,
        residual_scale: None,
        logits_divisor: None,
        sandwich_norms: false,
        post_norms_only: false,
        mlp_activation,
        local_rope: None,
        sliding_layers,
        sliding_window,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        scale_attn_by_inverse_layer_idx: false,
        parallel_residual: phi,
        parallel_shared_norm: phi,
        lm_head_bias: phi,
        embed_norm: false,
        norms_without_bias: false,
        attn_softcap: None,
        alibi: None,
        final_softcap: None,
        moe: None,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// hidden / heads, the head width of a model without a `head_dim` field; `heads_field` and
/// `hidden_field` name the two in the error when heads do not divide hidden.
fn head_dim_of(
    f: &Fields,
    hidden: usize,
    heads: usize,
    heads_field: &str,
    hidden_field: &str,
) -> Result<usize> {
    if heads == 0 || hidden % heads != 0 {
        return Err(Error::config(
            f.file,
            heads_field,
            format!("{heads} does not divide {hidden_field} {hidden}"),
        ));
    }
    Ok(hidden / heads)
}

/// The GELU of GPT-2's block named `act` in `field` (`model_type`'s): transformers' `gelu` is the
/// exact one; `gelu_new`, `gelu_fast` and `gelu_pytorch_tanh` are the tanh approximation.
fn dense_gelu(f: &Fields, field: &str, act: &str, model_type: &str) -> Result<MlpActivation> {
    match act {
        "gelu" => Ok(MlpActivation::GeluErf),
        "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Ok(MlpActivation::GeluTanh),
        _ => Err(Error::config(
            f.file,
            field,
            format!(
                "`{act}` is not supported for {model_type} (supported: gelu, gelu_new, \
                 gelu_fast, gelu_pytorch_tanh)"
            ),
        )),
    }
}

/// GPT-NeoX (`GPTNeoXConfig`: Pythia, GPT-NeoX-20B, and their fine-tunes): GPT-2's block
/// (LayerNorms with biases, a two-layer MLP with biases) with one fused `query_key_value`
/// projection (interleaved per head; the loader splits it), RoPE over the first `rotary_pct`
/// (4.x; `rope_parameters.partial_rotary_factor` in 5.x; 0.25 when absent) of each head with base
/// `rotary_emb_base` (4.x; `rope_parameters.rope_theta`; 1e4), `rope_scaling` / `rope_parameters`'
/// linear, dynamic and the other RoPE types, `hidden_act` `gelu` (exact, the default) or a tanh
/// GELU, `use_parallel_residual` (true: x + attn(ln₁(x)) + mlp(ln₂(x))), `attention_bias` (true)
/// on the QKV and output projections, an untied `embed_out` unless `tie_word_embeddings`.
fn parse_gpt_neox(f: &Fields) -> Result<ModelConfig> {
    let hidden = f.req_usize("hidden_size")?;
    let heads = f.req_usize("num_attention_heads")?;
    let head_dim = head_dim_of(f, hidden, heads, "num_attention_heads", "hidden_size")?;
    let act = f.opt_str("hidden_act")?.unwrap_or_else(|| "gelu".into());
    let mlp_activation = dense_gelu(f, "hidden_act", &act, "gpt_neox")?;
    let (rope, partial_rotary_dim) = parse_neox_rope(f, head_dim)?;
    let attention_bias = f.opt_bool("attention_bias")?.unwrap_or(true);
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        model_type: "gpt_neox".into(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: f.req_usize("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim,
        intermediate_size: f.req_usize("intermediate_size")?,
        max_context: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        norm_eps: f.opt_f32("layer_norm_eps")?.unwrap_or(1e-5),
        rope: Some(rope),
        partial_rotary_dim,
        position_offset: 0,
        rope_interleaved: false,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        o_proj_bias: attention_bias,
        mlp_bias: true,
        qk_norm: false,
        qk_norm_whole: false,
        nope_layers: Vec::new(),
        embed_scale: None,
        residual_scale: None,
        logits_divisor: None,
        sandwich_norms: false,
        post_norms_only: false,
        mlp_activation,
        local_rope: None,
        sliding_layers: Vec::new(),
        sliding_window: None,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        scale_attn_by_inverse_layer_idx: false,
        parallel_residual: f.opt_bool("use_parallel_residual")?.unwrap_or(true),
        parallel_shared_norm: false,
        lm_head_bias: false,
        embed_norm: false,
        norms_without_bias: false,
        attn_softcap: None,
        alibi: None,
        final_softcap: None,
        moe: None,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// Falcon (`FalconConfig`: Falcon 7B, 40B, 180B, Falcon 2 11B): GPT-2's block with RoPE and one
/// fused `query_key_value` projection in one of three layouts (the loader reorders it): grouped per
/// KV head under `new_decoder_architecture` (`num_kv_heads` KV heads), multi-query under
/// `multi_query` (true: one KV head), else interleaved per head (MHA). The attention and the MLP
/// run in parallel under `parallel_attn` (true) or `new_decoder_architecture`, the MLP off the
/// attention's `input_layernorm` or, with `num_ln_in_parallel_attn` 2 (the new architecture's
/// default), a LayerNorm of its own (`ln_attn`, `ln_mlp`); else in sequence
/// (`post_attention_layernorm`). `bias` (false) on every linear layer, `activation` (`gelu`,
/// exact), `ffn_hidden_size` (4 × hidden), `layer_norm_epsilon` (1e-5), RoPE from `rope_theta`
/// (1e4) and `rope_scaling` / `rope_parameters`, tied unless `tie_word_embeddings` says otherwise.
/// Under `alibi` (Falcon-RW) ALiBi replaces RoPE, its biases added to q · k before the scale (so
/// the slopes are scaled too: [`Alibi::scale`]).
fn parse_falcon(f: &Fields) -> Result<ModelConfig> {
    let alibi = f.opt_bool("alibi")?.unwrap_or(false);
    let hidden = match f.opt_usize("hidden_size")? {
        Some(h) => h,
        None => f.req_usize("n_embed")?,
    };
    let heads = f.req_usize("num_attention_heads")?;
    let head_dim = head_dim_of(f, hidden, heads, "num_attention_heads", "hidden_size")?;
    let new_arch = f.opt_bool("new_decoder_architecture")?.unwrap_or(false);
    let multi_query = f.opt_bool("multi_query")?.unwrap_or(true);
    let parallel_attn = f.opt_bool("parallel_attn")?.unwrap_or(true);
    let num_kv_heads = if new_arch {
        f.opt_usize("num_kv_heads")?.unwrap_or(heads)
    } else if multi_query {
        1
    } else {
        heads
    };
    // FalconDecoderLayer builds the new architecture's norms only for the parallel block
    if new_arch && !parallel_attn {
        return Err(Error::config(
            f.file,
            "parallel_attn",
            "false with new_decoder_architecture: transformers' Falcon has no such block",
        ));
    }
    let parallel = new_arch || parallel_attn;
    let norms_in_parallel = match f.opt_usize("num_ln_in_parallel_attn")? {
        Some(n @ (1 | 2)) => n,
        Some(n) => {
            return Err(Error::config(
                f.file,
                "num_ln_in_parallel_attn",
                format!("{n}: must be 1 or 2"),
            ))
        }
        None if new_arch => 2,
        None => 1,
    };
    // only the new architecture reads num_ln_in_parallel_attn; the old parallel block has one norm
    let shared_norm = parallel && !(new_arch && norms_in_parallel == 2);
    let act = f.opt_str("activation")?.unwrap_or_else(|| "gelu".into());
    let mlp_activation = dense_gelu(f, "activation", &act, "falcon")?;
    let attn_scale = 1.0 / (head_dim as f32).sqrt();
    let (rope, alibi) = if alibi {
        let alibi = Alibi {
            scale: attn_scale,
            ..Alibi::STANDARD
        };
        (None, Some(alibi))
    } else {
        check_full_rotary(f)?;
        (Some(parse_rope(f)?), None)
    };
    let bias = f.opt_bool("bias")?.unwrap_or(false);
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        model_type: "falcon".into(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: f.req_usize("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads,
        head_dim,
        intermediate_size: f.opt_usize("ffn_hidden_size")?.unwrap_or(4 * hidden),
        max_context: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        norm_eps: f.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5),
        rope,
        partial_rotary_dim: None,
        position_offset: 0,
        rope_interleaved: false,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        attention_bias: bias,
        o_proj_bias: bias,
        mlp_bias: bias,
        qk_norm: false,
        qk_norm_whole: false,
        nope_layers: Vec::new(),
        embed_scale: None,
        residual_scale: None,
        logits_divisor: None,
        sandwich_norms: false,
        post_norms_only: false,
        mlp_activation,
        local_rope: None,
        sliding_layers: Vec::new(),
        sliding_window: None,
        attn_scale,
        scale_attn_by_inverse_layer_idx: false,
        parallel_residual: parallel,
        parallel_shared_norm: shared_norm,
        lm_head_bias: false,
        embed_norm: false,
        norms_without_bias: false,
        attn_softcap: None,
        alibi,
        final_softcap: None,
        moe: None,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// BLOOM (`BloomConfig`: BLOOM 560M to 176B, BLOOMZ): GPT-2's pre-norm block with ALiBi instead of
/// any position embedding, a LayerNorm of the embeddings (`word_embeddings_layernorm`), one fused
/// `query_key_value` interleaved per head (the loader reorders it), biases everywhere, an MLP of 4 ×
/// hidden with the tanh GELU, LayerNorms with eps `layer_norm_epsilon` (1e-5), tied unless
/// `tie_word_embeddings` says otherwise. Sizes under either name: `hidden_size` / `n_embed`,
/// `n_head` / `num_attention_heads`, `n_layer` / `num_hidden_layers`. ALiBi needs no position
/// table, so the config names no context length: `seq_length` when given, else 2048 (BLOOM's
/// training length). `apply_residual_connection_post_layernorm` (the residual taken after the norm)
/// is refused by name; `pretraining_tp` / `slow_but_exact` only reorder transformers' sums.
fn parse_bloom(f: &Fields) -> Result<ModelConfig> {
    let either = |a: &str, b: &str| -> Result<usize> {
        match f.opt_usize(a)? {
            Some(v) => Ok(v),
            None => f.req_usize(b),
        }
    };
    let hidden = either("hidden_size", "n_embed")?;
    let heads = either("n_head", "num_attention_heads")?;
    let head_dim = head_dim_of(f, hidden, heads, "n_head", "hidden_size")?;
    if f.opt_bool("apply_residual_connection_post_layernorm")?
        .unwrap_or(false)
    {
        return Err(Error::config(
            f.file,
            "apply_residual_connection_post_layernorm",
            "true (the residual taken after the LayerNorm) is not supported",
        ));
    }
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        model_type: "bloom".into(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: either("n_layer", "num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim,
        intermediate_size: 4 * hidden,
        max_context: f.opt_usize("seq_length")?.unwrap_or(2048),
        norm_eps: f.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5),
        rope: None,
        partial_rotary_dim: None,
        position_offset: 0,
        rope_interleaved: false,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        attention_bias: true,
        o_proj_bias: true,
        mlp_bias: true,
        qk_norm: false,
        qk_norm_whole: false,
        nope_layers: Vec::new(),
        embed_scale: None,
        residual_scale: None,
        logits_divisor: None,
        sandwich_norms: false,
        post_norms_only: false,
        mlp_activation: MlpActivation::GeluTanh,
        local_rope: None,
        sliding_layers: Vec::new(),
        sliding_window: None,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        scale_attn_by_inverse_layer_idx: false,
        parallel_residual: false,
        parallel_shared_norm: false,
        lm_head_bias: false,
        embed_norm: true,
        norms_without_bias: false,
        attn_softcap: None,
        alibi: Some(Alibi::STANDARD),
        final_softcap: None,
        moe: None,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// MPT (`MptConfig`: MPT-7B, MPT-30B and their fine-tunes): GPT-2's pre-norm block with ALiBi
/// (`attn_config.alibi`, slopes of max bias `attn_config.alibi_bias_max`, 8), no biases anywhere
/// (`no_bias`: the LayerNorms too), a fused `Wqkv` ([q; k; v]), an MLP of `expansion_ratio` (4) ×
/// `d_model` with the exact GELU, `max_seq_len` (2048) positions, scores scaled by
/// `attn_config.softmax_scale` (1 / √head_dim), tied. transformers' MptModel reads neither
/// `alibi_bias_max` (it always builds slopes of 8) nor `expansion_ratio` (its MLP is always 4 ×
/// d_model), which are read here as MosaicML's own code reads them (every published MPT has 8 and
/// 4), nor `no_bias`, `clip_qkv`, `qk_ln`, `logit_scale` or `attn_type`: what it would run
/// differently from MosaicML's code is refused
/// by name (`no_bias: false`, `alibi: false`, `clip_qkv`, `qk_ln`, `prefix_lm`, `logit_scale`, a
/// multi-query or grouped `attn_type`, a `norm_type` other than LayerNorm).
fn parse_mpt(f: &Fields) -> Result<ModelConfig> {
    let hidden = f.req_usize("d_model")?;
    let heads = f.req_usize("n_heads")?;
    let head_dim = head_dim_of(f, hidden, heads, "n_heads", "d_model")?;
    let refuse = |field: &str, msg: &str| Err(Error::config(f.file, field, msg.to_string()));
    if !f.opt_bool("no_bias")?.unwrap_or(true) {
        return refuse(
            "no_bias",
            "false (biases) is not supported: transformers' MPT has none",
        );
    }
    if f.get("logit_scale").is_some() {
        return refuse("logit_scale", "scaled logits are not supported");
    }
    let norm_type = f
        .opt_str("norm_type")?
        .unwrap_or_else(|| "low_precision_layernorm".into());
    if !matches!(norm_type.as_str(), "low_precision_layernorm" | "layernorm") {
        return Err(Error::config(
            f.file,
            "norm_type",
            format!("`{norm_type}` is not supported (low_precision_layernorm, layernorm are)"),
        ));
    }
    // attn_config: an object; its errors name `attn_config.<field>`
    let empty = Map::new();
    let attn = match f.get("attn_config") {
        None => &empty,
        Some(Value::Object(o)) => o,
        Some(v) => {
            return Err(Error::config(
                f.file,
                "attn_config",
                format!("expected an object, found {v}"),
            ))
        }
    };
    let sub = Fields {
        obj: attn,
        file: f.file,
    };
    let nested = |e: Error| match e {
        Error::Config { file, field, msg } => Error::Config {
            file,
            field: format!("attn_config.{field}"),
            msg,
        },
        other => other,
    };
    let attn_type = sub
        .opt_str("attn_type")
        .map_err(nested)?
        .unwrap_or_else(|| "multihead_attention".into());
    if attn_type != "multihead_attention" {
        return refuse(
            "attn_config.attn_type",
            &format!("`{attn_type}` is not supported (multihead_attention is)"),
        );
    }
    if !sub.opt_bool("alibi").map_err(nested)?.unwrap_or(true) {
        return refuse(
            "attn_config.alibi",
            "false (learned positions) is not supported: transformers' MPT always uses ALiBi",
        );
    }
    for (field, what) in [
        ("qk_ln", "a LayerNorm of q and k"),
        ("prefix_lm", "a bidirectional prefix"),
    ] {
        if sub.opt_bool(field).map_err(nested)?.unwrap_or(false) {
            return refuse(
                &format!("attn_config.{field}"),
                &format!("true ({what}) is not supported"),
            );
        }
    }
    if sub.get("clip_qkv").is_some() {
        return refuse(
            "attn_config.clip_qkv",
            "clipping q, k and v is not supported",
        );
    }
    let max_bias = sub
        .opt_f32("alibi_bias_max")
        .map_err(nested)?
        .unwrap_or(8.0);
    if !(max_bias.is_finite() && max_bias > 0.0) {
        return refuse("attn_config.alibi_bias_max", "must be positive");
    }
    let attn_scale = match sub.opt_f32("softmax_scale").map_err(nested)? {
        Some(s) if s.is_finite() && s > 0.0 => s,
        Some(_) => return refuse("attn_config.softmax_scale", "must be positive"),
        None => 1.0 / (head_dim as f32).sqrt(),
    };
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        model_type: "mpt".into(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: f.req_usize("n_layers")?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim,
        intermediate_size: f.opt_usize("expansion_ratio")?.unwrap_or(4) * hidden,
        max_context: f.opt_usize("max_seq_len")?.unwrap_or(2048),
        norm_eps: f.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5),
        rope: None,
        partial_rotary_dim: None,
        position_offset: 0,
        rope_interleaved: false,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        attention_bias: false,
        o_proj_bias: false,
        mlp_bias: false,
        qk_norm: false,
        qk_norm_whole: false,
        nope_layers: Vec::new(),
        embed_scale: None,
        residual_scale: None,
        logits_divisor: None,
        sandwich_norms: false,
        post_norms_only: false,
        mlp_activation: MlpActivation::GeluErf,
        local_rope: None,
        sliding_layers: Vec::new(),
        sliding_window: None,
        attn_scale,
        scale_attn_by_inverse_layer_idx: false,
        parallel_residual: false,
        parallel_shared_norm: false,
        lm_head_bias: false,
        embed_norm: false,
        norms_without_bias: true,
        attn_softcap: None,
        alibi: Some(Alibi {
            max_bias,
            scale: 1.0,
        }),
        final_softcap: None,
        moe: None,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// OPT (`OPTConfig`: OPT 125M to 66B): GPT-2's pre-norm block with learned positions (a table of
/// `max_position_embeddings` + 2 rows, position p at row p + 2), separate q/k/v/out projections,
/// `fc1` / `fc2` with `activation_function` (`relu`), biases under `enable_bias` (true), LayerNorms
/// with eps 1e-5, tied unless `tie_word_embeddings` says otherwise. OPT-350M's post-norm block
/// (`do_layer_norm_before: false`) and its embedding projections (`word_embed_proj_dim` ≠
/// hidden), and LayerNorms without weights (`layer_norm_elementwise_affine: false`), are refused by
/// name.
fn parse_opt(f: &Fields) -> Result<ModelConfig> {
    let hidden = f.req_usize("hidden_size")?;
    let heads = f.req_usize("num_attention_heads")?;
    let head_dim = head_dim_of(f, hidden, heads, "num_attention_heads", "hidden_size")?;
    if !f.opt_bool("do_layer_norm_before")?.unwrap_or(true) {
        return Err(Error::config(
            f.file,
            "do_layer_norm_before",
            "false (OPT-350M's post-norm block) is not supported",
        ));
    }
    if let Some(proj) = f.opt_usize("word_embed_proj_dim")? {
        if proj != hidden {
            return Err(Error::config(
                f.file,
                "word_embed_proj_dim",
                format!(
                    "{proj} ≠ hidden_size {hidden}: OPT-350M's embedding projections are not \
                     supported"
                ),
            ));
        }
    }
    if !f.opt_bool("layer_norm_elementwise_affine")?.unwrap_or(true) {
        return Err(Error::config(
            f.file,
            "layer_norm_elementwise_affine",
            "LayerNorms without weights are not supported",
        ));
    }
    if f.opt_bool("_remove_final_layer_norm")?.unwrap_or(false) {
        return Err(Error::config(
            f.file,
            "_remove_final_layer_norm",
            "a model without its final LayerNorm is not supported",
        ));
    }
    let act = f
        .opt_str("activation_function")?
        .unwrap_or_else(|| "relu".into());
    let mlp_activation = match act.as_str() {
        "relu" => MlpActivation::Relu,
        other => dense_gelu(f, "activation_function", other, "opt")?,
    };
    let bias = f.opt_bool("enable_bias")?.unwrap_or(true);
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        model_type: "opt".into(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: f.req_usize("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim,
        intermediate_size: f.req_usize("ffn_dim")?,
        max_context: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        norm_eps: 1e-5,
        rope: None,
        position_offset: 2,
        rope_interleaved: false,
        partial_rotary_dim: None,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        attention_bias: bias,
        o_proj_bias: bias,
        mlp_bias: bias,
        qk_norm: false,
        qk_norm_whole: false,
        nope_layers: Vec::new(),
        embed_scale: None,
        residual_scale: None,
        logits_divisor: None,
        sandwich_norms: false,
        post_norms_only: false,
        mlp_activation,
        local_rope: None,
        sliding_layers: Vec::new(),
        sliding_window: None,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        scale_attn_by_inverse_layer_idx: false,
        parallel_residual: false,
        parallel_shared_norm: false,
        lm_head_bias: false,
        embed_norm: false,
        norms_without_bias: false,
        attn_softcap: None,
        alibi: None,
        final_softcap: None,
        moe: None,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// GPT-J (`GPTJConfig`: GPT-J 6B and its fine-tunes): GPT-2's names (`n_embd`, `n_head`, ...)
/// for a parallel block off one LayerNorm, attention without biases, a `gelu_new` MLP (`fc_in`,
/// `fc_out`, of `n_inner`: 4 × hidden) with biases, an LM head with a bias, untied; RoPE with base
/// 1e4 (GPT-J's fixed one) on pairs (2i, 2i + 1) of each head's first `rotary_dim` (64; null:
/// the whole head) dimensions ([`ModelConfig::rope_interleaved`]).
fn parse_gptj(f: &Fields) -> Result<ModelConfig> {
    let hidden = f.req_usize("n_embd")?;
    let heads = f.req_usize("n_head")?;
    let head_dim = head_dim_of(f, hidden, heads, "n_head", "n_embd")?;
    let act = f
        .opt_str("activation_function")?
        .unwrap_or_else(|| "gelu_new".into());
    let mlp_activation = dense_gelu(f, "activation_function", &act, "gptj")?;
    // absent: GPTJConfig's 64; null: the whole head
    let rotary_dim = match f.obj.get("rotary_dim") {
        Some(Value::Null) => head_dim,
        _ => f.opt_usize("rotary_dim")?.unwrap_or(64),
    };
    if rotary_dim < 2 || rotary_dim % 2 != 0 || rotary_dim > head_dim {
        return Err(Error::config(
            f.file,
            "rotary_dim",
            format!("{rotary_dim}: must be even, at least 2 and at most head_dim {head_dim}"),
        ));
    }
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        model_type: "gptj".into(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: f.req_usize("n_layer")?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim,
        intermediate_size: f.opt_usize("n_inner")?.unwrap_or(4 * hidden),
        max_context: f.opt_usize("n_positions")?.unwrap_or(2048),
        norm_eps: f.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5),
        rope: Some(RopeConfig {
            theta: 10_000.0,
            scaling: RopeScaling::Default,
        }),
        partial_rotary_dim: (rotary_dim != head_dim).then_some(rotary_dim),
        position_offset: 0,
        rope_interleaved: true,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias: false,
        o_proj_bias: false,
        mlp_bias: true,
        qk_norm: false,
        qk_norm_whole: false,
        nope_layers: Vec::new(),
        embed_scale: None,
        residual_scale: None,
        logits_divisor: None,
        sandwich_norms: false,
        post_norms_only: false,
        mlp_activation,
        local_rope: None,
        sliding_layers: Vec::new(),
        sliding_window: None,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        scale_attn_by_inverse_layer_idx: false,
        parallel_residual: true,
        parallel_shared_norm: true,
        lm_head_bias: true,
        embed_norm: false,
        norms_without_bias: false,
        attn_softcap: None,
        alibi: None,
        final_softcap: None,
        moe: None,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// GPT-NeoX's RoPE as GPTNeoXConfig reads it: the settings object `rope_parameters` (5.x) or
/// `rope_scaling` (4.x) with its own `rope_theta` and `partial_rotary_factor` where set, else
/// the top level's `rotary_emb_base` (1e4) and `rotary_pct` (0.25). Rotates the first
/// int(head_dim · factor) dimensions, an even number, of each head. Returns the RoPE and the
/// partial rotary width (None: the whole head).
fn parse_neox_rope(f: &Fields, head_dim: usize) -> Result<(RopeConfig, Option<usize>)> {
    let (settings, obj) = rope_settings(f)?;
    let base = f.opt_f32("rotary_emb_base")?.unwrap_or(10_000.0);
    let rope = match settings {
        Some(p) => rope_from_object(f, p, obj, base)?,
        None => RopeConfig {
            theta: base,
            scaling: RopeScaling::Default,
        },
    };
    let own_factor = settings
        .and_then(|p| p.get("partial_rotary_factor"))
        .filter(|v| !v.is_null());
    let (factor, field) = match own_factor {
        Some(v) => (
            v.as_f64().ok_or_else(|| {
                Error::config(
                    f.file,
                    &format!("{obj}.partial_rotary_factor"),
                    "expected a number",
                )
            })?,
            format!("{obj}.partial_rotary_factor"),
        ),
        None => (
            f.opt_f64("rotary_pct")?.unwrap_or(0.25),
            "rotary_pct".to_string(),
        ),
    };
    // transformers: int(head_dim * partial_rotary_factor)
    let rotary = head_dim as f64 * factor;
    if !(factor > 0.0 && factor <= 1.0) || rotary < 2.0 || rotary as usize % 2 != 0 {
        return Err(Error::config(
            f.file,
            &field,
            format!(
                "{factor}: must be in (0, 1] and rotate an even number of dimensions of the \
                 {head_dim}-dimension heads (gives {rotary})"
            ),
        ));
    }
    let rotary_dim = rotary as usize;
    Ok((rope, (rotary_dim != head_dim).then_some(rotary_dim)))
}

/// `llama` and the model types of the same architecture (`mistral`, `qwen2`, `qwen3`): `model_type`
/// decides the defaults and the fields each one's transformers config class has.
fn parse_llama(f: &Fields, model_type: &str) -> Result<ModelConfig> {
    // the mixture-of-experts types: their dense sibling's attention and norms, with routed experts
    // for the MLP (parse_moe); `model_type` stays as written, `base` picks the layout
    let base = match model_type {
        "mixtral" => "mistral",
        "qwen3_moe" => "qwen3",
        // OLMoE: Llama's pre-norm block with OLMo 2's whole-projection q/k norms
        "olmoe" => "llama",
        other => other,
    };
    let olmoe = model_type == "olmoe";
    let hidden = f.req_usize("hidden_size")?;
    let heads = f.req_usize("num_attention_heads")?;
    let kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(heads);
    let head_dim = match f.opt_usize("head_dim")? {
        Some(d) => d,
        // Qwen3Config's own default, whatever hidden_size / num_attention_heads is
        None if base == "qwen3" => 128,
        None => {
            if heads == 0 || hidden % heads != 0 {
                return Err(Error::config(
                    f.file,
                    "head_dim",
                    format!(
                        "absent, and num_attention_heads {heads} does not divide hidden_size {hidden}"
                    ),
                ));
            }
            hidden / heads
        }
    };
    let act = f.opt_str("hidden_act")?.unwrap_or_else(|| "silu".into());
    if act != "silu" {
        return Err(Error::config(
            f.file,
            "hidden_act",
            format!("`{act}` is not supported for {model_type} (supported: silu)"),
        ));
    }
    // `pretraining_tp` (2 in SmolLM3-3B's config) needs nothing: transformers 5 ignores it, and
    // 4.x's LlamaMLP split each projection into that many slices and summed them, the same product
    // Qwen2Attention has biases on q, k and v and none on o_proj, whatever the config says
    // (Qwen2Config has no attention_bias); MistralConfig has no bias fields (none anywhere);
    // Qwen3's attention_bias covers q, k, v and o_proj, and its MLP has none
    let (attention_bias, o_proj_bias, mlp_bias) = match base {
        "qwen2" => (true, false, false),
        // Phi3Config has no bias fields: none anywhere
        "mistral" | "phi3" => (false, false, false),
        // and so do OLMo 2's (Olmo2MLP has no biases)
        "qwen3" | "olmo2" => {
            let ab = f.opt_bool("attention_bias")?.unwrap_or(false);
            (ab, ab, false)
        }
        _ => {
            let ab = f.opt_bool("attention_bias")?.unwrap_or(false);
            (ab, ab, f.opt_bool("mlp_bias")?.unwrap_or(false))
        }
    };
    let granite = if base == "granite" {
        Some(GraniteMultipliers::parse(f)?)
    } else {
        None
    };
    let smollm3 = base == "smollm3";
    let olmo2 = base == "olmo2";
    // SmolLM3Config's defaults where they differ from the Llama family's
    let max_position = f
        .opt_usize("max_position_embeddings")?
        .unwrap_or(if smollm3 { 32_768 } else { 2048 });
    let layers = f.req_usize("num_hidden_layers")?;
    let nope_layers = if smollm3 {
        parse_nope_layers(f, layers)?
    } else {
        Vec::new()
    };
    let (sliding_window, sliding_layers) = parse_sliding_window(f, base, layers, &nope_layers)?;
    let (rope, partial_rotary_dim) = if base == "phi3" {
        parse_phi3_rope(f, head_dim, max_position, 1.0)?
    } else {
        check_full_rotary(f)?;
        let default_theta = if smollm3 { 2_000_000.0 } else { 10_000.0 };
        (parse_rope_with_default(f, default_theta)?, None)
    };
    let intermediate = f.req_usize("intermediate_size")?;
    Ok(ModelConfig {
        arch: Arch::Llama,
        model_type: model_type.to_string(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        intermediate_size: intermediate,
        max_context: max_position,
        // (Olmo2Config's default 1e-5)
        norm_eps: f
            .opt_f32("rms_norm_eps")?
            .unwrap_or(if olmo2 || olmoe { 1e-5 } else { 1e-6 }),
        rope: Some(rope),
        partial_rotary_dim,
        position_offset: 0,
        rope_interleaved: false,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(smollm3),
        attention_bias,
        o_proj_bias,
        mlp_bias,
        qk_norm: base == "qwen3",
        qk_norm_whole: olmo2 || olmoe,
        nope_layers,
        embed_scale: granite.and_then(|g| g.embedding),
        residual_scale: granite.and_then(|g| g.residual),
        logits_divisor: granite.and_then(|g| g.logits_divisor),
        sandwich_norms: olmo2,
        post_norms_only: olmo2,
        mlp_activation: MlpActivation::Silu,
        local_rope: None,
        sliding_layers,
        sliding_window,
        attn_scale: granite.map_or(1.0 / (head_dim as f32).sqrt(), |g| g.attention),
        scale_attn_by_inverse_layer_idx: false,
        parallel_residual: false,
        parallel_shared_norm: false,
        lm_head_bias: false,
        embed_norm: false,
        norms_without_bias: false,
        attn_softcap: None,
        alibi: None,
        final_softcap: None,
        moe: parse_moe(f, model_type, layers, intermediate)?,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// The routed experts of a mixture-of-experts model type (None for the dense ones):
/// - `mixtral` (`MixtralConfig`): `num_local_experts` (8) experts of `intermediate_size` on every
///   layer, `num_experts_per_tok` (2), always renormalised;
/// - `qwen3_moe` (`Qwen3MoeConfig`): `num_experts` (128) of `moe_intermediate_size` (768),
///   `num_experts_per_tok` (8), `norm_topk_prob` (false), on layer i when i is not in
///   `mlp_only_layers` and (i + 1) is a multiple of `decoder_sparse_step` (1); the other layers
///   keep a dense MLP of `intermediate_size`;
/// - `olmoe` (`OlmoeConfig`): `num_experts` (64) of `intermediate_size` on every layer,
///   `num_experts_per_tok` (8), `norm_topk_prob` (false).
///
/// The expert count is read from `num_local_experts` where present (transformers 5 writes it so
/// for every type), else `num_experts`. Training-only fields (router jitter, auxiliary losses)
/// change nothing at inference.
fn parse_moe(
    f: &Fields,
    model_type: &str,
    layers: usize,
    intermediate: usize,
) -> Result<Option<MoeConfig>> {
    let (default_experts, default_top_k) = match model_type {
        "mixtral" => (8, 2),
        "qwen3_moe" => (128, 8),
        "olmoe" => (64, 8),
        _ => return Ok(None),
    };
    // transformers 5 writes every type's count as `num_local_experts` (Mixtral's name); the
    // published Qwen3-MoE and OLMoE configs say `num_experts`
    let (experts_field, num_experts) = match f.opt_usize("num_local_experts")? {
        Some(n) => ("num_local_experts", n),
        None => (
            "num_experts",
            f.opt_usize("num_experts")?.unwrap_or(default_experts),
        ),
    };
    let top_k = f.opt_usize("num_experts_per_tok")?.unwrap_or(default_top_k);
    if num_experts == 0 {
        return Err(Error::config(f.file, experts_field, "must be positive"));
    }
    if top_k == 0 || top_k > num_experts {
        return Err(Error::config(
            f.file,
            "num_experts_per_tok",
            format!("{top_k}: must be between 1 and the {num_experts} experts ({experts_field})"),
        ));
    }
    let (expert_intermediate, moe_layers) = if model_type == "qwen3_moe" {
        let size = f.opt_usize("moe_intermediate_size")?.unwrap_or(768);
        let step = f.opt_usize("decoder_sparse_step")?.unwrap_or(1);
        if step == 0 {
            return Err(Error::config(
                f.file,
                "decoder_sparse_step",
                "must be positive",
            ));
        }
        let dense = match f.obj.get("mlp_only_layers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_u64() {
                    Some(l) if (l as usize) < layers => Ok(l as usize),
                    _ => Err(Error::config(
                        f.file,
                        &format!("mlp_only_layers[{i}]"),
                        format!("{v}: expected a layer index below num_hidden_layers {layers}"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => {
                return Err(Error::config(
                    f.file,
                    "mlp_only_layers",
                    "expected an array",
                ))
            }
        };
        let sparse = (0..layers)
            .filter(|i| !dense.contains(i) && (i + 1) % step == 0)
            .collect();
        (size, sparse)
    } else {
        (intermediate, (0..layers).collect())
    };
    if expert_intermediate == 0 {
        return Err(Error::config(
            f.file,
            "moe_intermediate_size",
            "must be positive",
        ));
    }
    let renormalize = match model_type {
        "mixtral" => true,
        _ => f.opt_bool("norm_topk_prob")?.unwrap_or(false),
    };
    // OLMoE's optional clamp of q, k and v, which no published checkpoint sets
    if model_type == "olmoe" && f.get("clip_qkv").is_some() {
        return Err(Error::config(
            f.file,
            "clip_qkv",
            "not supported (OLMoE's checkpoints set null)",
        ));
    }
    Ok(Some(MoeConfig {
        num_experts,
        top_k,
        expert_intermediate,
        renormalize,
        layers: moe_layers,
    }))
}

/// Granite's (`GraniteConfig`) four scalars on the Llama layout, each 1 when absent; None where
/// a factor is 1 (nothing to apply).
#[derive(Clone, Copy)]
struct GraniteMultipliers {
    /// `embedding_multiplier`: the embedding output is multiplied by it.
    embedding: Option<f32>,
    /// `residual_multiplier`: each sub-layer's output is, before the residual add.
    residual: Option<f32>,
    /// `attention_multiplier`: the attention scores' scale, in place of head_dim^-1/2.
    attention: f32,
    /// `logits_scaling`: the logits are divided by it.
    logits_divisor: Option<f32>,
}

impl GraniteMultipliers {
    fn parse(f: &Fields) -> Result<Self> {
        let factor = |field: &str| -> Result<f32> {
            match f.opt_f32(field)? {
                None => Ok(1.0),
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                Some(x) => Err(Error::config(
                    f.file,
                    field,
                    format!("{x} is not a positive finite number"),
                )),
            }
        };
        let unless_one = |x: f32| (x != 1.0).then_some(x);
        Ok(Self {
            embedding: unless_one(factor("embedding_multiplier")?),
            residual: unless_one(factor("residual_multiplier")?),
            attention: factor("attention_multiplier")?,
            logits_divisor: unless_one(factor("logits_scaling")?),
        })
    }
}

/// Gemma (`GemmaConfig`, Gemma 1 and CodeGemma): the Llama layout with a scaled embedding
/// (sqrt(hidden)), RMSNorm weights applied as (1 + w), GeGLU (`hidden_act`, whose legacy value
/// `gelu` means the tanh approximation, as GemmaConfig rewrites it), one RoPE (`rope_theta`, 1e4),
/// scores scaled by head_dim^-1/2, biases on q, k, v and o under `attention_bias`.
///
/// Gemma 2 (`Gemma2Config`) and Gemma 3 text (`Gemma3TextConfig`): Gemma's layout plus sandwich
/// norms, scores scaled by query_pre_attn_scalar^-1/2 and a sliding window on some layers
/// (`layer_types`, else Gemma 2's even layers and all but each `sliding_window_pattern`-th (6) of
/// Gemma 3's), and:
/// - Gemma 2: one RoPE (`rope_theta`, 1e4), soft-capping of the attention scores
///   (`attn_logit_softcapping`, 50) and of the logits (`final_logit_softcapping`, 30); null turns
///   either off.
/// - Gemma 3: q/k norms and two RoPEs, the full-attention layers' (`rope_theta`, 1e6, with
///   `rope_scaling`) and the sliding-window layers' (`rope_local_base_freq`, 1e4), or in 5.x style
///   `rope_parameters` keyed by layer type; soft-capping only where the config sets it.
///
/// Bidirectional attention (EmbeddingGemma) is refused.
fn parse_gemma(f: &Fields, model_type: &str) -> Result<ModelConfig> {
    let gemma1 = model_type == "gemma";
    let gemma2 = model_type == "gemma2";
    // absent: the config class's default; null: off
    let softcap = |field: &str, default: Option<f32>| -> Result<Option<f32>> {
        let cap = match f.obj.get(field) {
            None => default,
            Some(Value::Null) => None,
            Some(_) => f.opt_f32(field)?,
        };
        match cap {
            Some(c) if !(c.is_finite() && c > 0.0) => {
                Err(Error::config(f.file, field, "must be positive"))
            }
            c => Ok(c),
        }
    };
    // (GemmaConfig has neither cap, window nor query_pre_attn_scalar: GemmaModel ignores them)
    let (attn_softcap, final_softcap) = if gemma1 {
        (None, None)
    } else {
        (
            softcap("attn_logit_softcapping", gemma2.then_some(50.0))?,
            softcap("final_logit_softcapping", gemma2.then_some(30.0))?,
        )
    };
    if f.opt_bool("use_bidirectional_attention")?.unwrap_or(false) {
        return Err(Error::config(
            f.file,
            "use_bidirectional_attention",
            "only causal attention is supported",
        ));
    }
    // GemmaConfig reads `hidden_act` (its official configs' legacy `gelu` means the tanh
    // approximation), Gemma2Config and Gemma3TextConfig `hidden_activation`
    let act_field = if gemma1 {
        "hidden_act"
    } else {
        "hidden_activation"
    };
    let act = f
        .opt_str(act_field)?
        .unwrap_or_else(|| "gelu_pytorch_tanh".into());
    if act != "gelu_pytorch_tanh" && !(gemma1 && act == "gelu") {
        return Err(Error::config(
            f.file,
            act_field,
            format!(
                "`{act}` is not supported for {model_type} (supported: gelu_pytorch_tanh{})",
                if gemma1 {
                    ", and gelu, its legacy name"
                } else {
                    ""
                }
            ),
        ));
    }
    check_full_rotary(f)?;
    let hidden = f.req_usize("hidden_size")?;
    let layers = f.req_usize("num_hidden_layers")?;
    let heads = f.req_usize("num_attention_heads")?;
    let head_dim = f.opt_usize("head_dim")?.unwrap_or(256);
    let sliding: Vec<usize> = if gemma1 {
        Vec::new()
    } else {
        match sliding_layer_types(f, layers)? {
            Some(listed) => listed,
            // Gemma2Config: layers 0, 2, 4, ... slide
            None if gemma2 => (0..layers).step_by(2).collect(),
            None => {
                let pattern = f.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1);
                (0..layers).filter(|i| (i + 1) % pattern != 0).collect()
            }
        }
    };
    // absent: the config classes' 4096; null: no window (the sliding layers attend to everything)
    let window = match f.opt_usize("sliding_window")? {
        _ if gemma1 => None,
        Some(0) => return Err(Error::config(f.file, "sliding_window", "must be positive")),
        Some(w) => Some(w),
        None if f.obj.contains_key("sliding_window") => None,
        None => Some(4096),
    };
    // (the sliding layers stay listed even without a window: Gemma 3 gives them their own RoPE)
    let sliding_window = window.filter(|_| !sliding.is_empty());
    let (rope, local_rope) = if gemma1 || gemma2 {
        (parse_rope(f)?, None)
    } else {
        let (global, local) = parse_gemma3_rope(f)?;
        (global, Some(local))
    };
    let default_positions = if gemma1 || gemma2 { 8192 } else { 131_072 };
    let max_position = f
        .opt_usize("max_position_embeddings")?
        .unwrap_or(default_positions);
    let bias = f.opt_bool("attention_bias")?.unwrap_or(false);
    let scalar = if gemma1 {
        head_dim as f32
    } else {
        f.opt_f32("query_pre_attn_scalar")?.unwrap_or(256.0)
    };
    if scalar.is_nan() || scalar <= 0.0 {
        return Err(Error::config(
            f.file,
            "query_pre_attn_scalar",
            "must be positive",
        ));
    }
    Ok(ModelConfig {
        arch: Arch::Llama,
        model_type: model_type.into(),
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        intermediate_size: f.req_usize("intermediate_size")?,
        max_context: max_position,
        norm_eps: f.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
        rope: Some(rope),
        partial_rotary_dim: None,
        position_offset: 0,
        rope_interleaved: false,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        attention_bias: bias,
        o_proj_bias: bias,
        mlp_bias: false,
        qk_norm: model_type == "gemma3_text",
        qk_norm_whole: false,
        nope_layers: Vec::new(),
        // transformers keeps sqrt(hidden) as an f32 buffer (cast to the weights' dtype)
        embed_scale: Some((hidden as f32).sqrt()),
        residual_scale: None,
        logits_divisor: None,
        sandwich_norms: !gemma1,
        post_norms_only: false,
        mlp_activation: MlpActivation::GeluTanh,
        local_rope,
        sliding_layers: sliding,
        sliding_window,
        attn_scale: 1.0 / scalar.sqrt(),
        scale_attn_by_inverse_layer_idx: false,
        parallel_residual: false,
        parallel_shared_norm: false,
        lm_head_bias: false,
        embed_norm: false,
        norms_without_bias: false,
        attn_softcap,
        alibi: None,
        final_softcap,
        moe: None,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// Gemma 3's two RoPEs, (full-attention layers', sliding-window layers'): 5.x `rope_parameters`
/// {"full_attention": {...}, "sliding_attention": {...}}, or 4.x `rope_theta` (1e6) with
/// `rope_scaling` for the full layers and `rope_local_base_freq` (1e4) for the sliding ones.
fn parse_gemma3_rope(f: &Fields) -> Result<(RopeConfig, RopeConfig)> {
    if let Some(Value::Object(p)) = f.obj.get("rope_parameters") {
        if p.contains_key("full_attention") || p.contains_key("sliding_attention") {
            let one = |key: &str, default_theta: f32| -> Result<RopeConfig> {
                let field = format!("rope_parameters.{key}");
                match p.get(key) {
                    Some(Value::Object(o)) => rope_from_object(f, o, &field, default_theta),
                    Some(Value::Null) | None => Ok(RopeConfig {
                        theta: default_theta,
                        scaling: RopeScaling::Default,
                    }),
                    Some(_) => Err(Error::config(f.file, &field, "expected an object")),
                }
            };
            return Ok((
                one("full_attention", 1_000_000.0)?,
                one("sliding_attention", 10_000.0)?,
            ));
        }
    }
    let global_theta = f.opt_f32("rope_theta")?.unwrap_or(1_000_000.0);
    let (settings, field) = match f.get("rope_parameters") {
        Some(v) => (Some(v), "rope_parameters"),
        None => (f.get("rope_scaling"), "rope_scaling"),
    };
    let global = match settings {
        Some(Value::Object(p)) => rope_from_object(f, p, field, global_theta)?,
        None => RopeConfig {
            theta: global_theta,
            scaling: RopeScaling::Default,
        },
        Some(_) => return Err(Error::config(f.file, field, "expected an object")),
    };
    let local = RopeConfig {
        theta: f.opt_f32("rope_local_base_freq")?.unwrap_or(10_000.0),
        scaling: RopeScaling::Default,
    };
    Ok((global, local))
}

/// The sliding window a `mistral`, `phi3`, `starcoder2`, `qwen2`, `qwen3` or `smollm3` config
/// turns on, if any,
/// and the layers it applies to, as transformers 5.x reads these configs:
/// - Mistral, Phi-3 and StarCoder2: `sliding_window` (null or absent: none) on every layer
///   (MistralConfig warns about `layer_types` and its model ignores them; the others have none).
/// - Qwen2 and Qwen3: `sliding_window` only under `use_sliding_window: true`; then on the layers
///   that `layer_types` lists as `sliding_attention`, or without `layer_types` on layers
///   `max_window_layers` (default 28, both classes') and up.
/// - SmolLM3: `sliding_window` only under `use_sliding_window: true`, on the layers `layer_types`
///   lists as `sliding_attention`, else on its NoPE layers (`nope_layers`, already parsed).
///
/// `llama` has no window.
fn parse_sliding_window(
    f: &Fields,
    model_type: &str,
    layers: usize,
    nope_layers: &[usize],
) -> Result<(Option<usize>, Vec<usize>)> {
    let window = match f.opt_usize("sliding_window")? {
        Some(0) => return Err(Error::config(f.file, "sliding_window", "must be positive")),
        w => w,
    };
    let sliding = match model_type {
        "mistral" | "phi3" | "starcoder2" => match window {
            Some(_) => (0..layers).collect(),
            None => Vec::new(),
        },
        "qwen2" | "qwen3" => {
            let listed = sliding_layer_types(f, layers)?;
            if !f.opt_bool("use_sliding_window")?.unwrap_or(false) {
                return Ok((None, Vec::new()));
            }
            match (listed, window) {
                (Some(listed), Some(_)) => listed,
                // transformers would run these layers with full attention: ambiguous, refused
                (Some(listed), None) if !listed.is_empty() => {
                    return Err(Error::config(
                        f.file,
                        "sliding_window",
                        "required: use_sliding_window is true and layer_types lists \
                         sliding_attention layers",
                    ))
                }
                (_, None) => Vec::new(),
                (None, Some(_)) => {
                    let first = f.opt_usize("max_window_layers")?.unwrap_or(28);
                    (first.min(layers)..layers).collect()
                }
            }
        }
        // SmolLM3Config: under use_sliding_window with a window, the layers `layer_types` lists
        // as sliding_attention, by default the NoPE layers
        "smollm3" => {
            let listed = sliding_layer_types(f, layers)?;
            if !f.opt_bool("use_sliding_window")?.unwrap_or(false) || window.is_none() {
                return Ok((None, Vec::new()));
            }
            match listed {
                Some(listed) => listed,
                None => nope_layers.to_vec(),
            }
        }
        _ => Vec::new(),
    };
    Ok(((!sliding.is_empty()).then_some(window).flatten(), sliding))
}

/// The layers `layer_types` (transformers 5.x) lists as `sliding_attention`; None when the field is
/// absent or null. Errors name the field: not an array, an entry count other than `layers`, an
/// entry other than `sliding_attention` / `full_attention`.
fn sliding_layer_types(f: &Fields, layers: usize) -> Result<Option<Vec<usize>>> {
    let types = match f.obj.get("layer_types") {
        Some(Value::Array(types)) => types,
        Some(Value::Null) | None => return Ok(None),
        Some(_) => return Err(Error::config(f.file, "layer_types", "expected an array")),
    };
    if types.len() != layers {
        return Err(Error::config(
            f.file,
            "layer_types",
            format!("{} entries for {layers} layers", types.len()),
        ));
    }
    let mut out = Vec::new();
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            Some("sliding_attention") => out.push(i),
            Some("full_attention") => {}
            _ => {
                return Err(Error::config(
                    f.file,
                    &format!("layer_types[{i}]"),
                    format!("{t}: expected sliding_attention or full_attention"),
                ))
            }
        }
    }
    Ok(Some(out))
}

/// SmolLM3's layers without RoPE: those whose `no_rope_layers` entry is 0 (1: RoPE), or without
/// that list every `no_rope_layer_interval`-th (4) layer, layers 3, 7, 11, … (SmolLM3Config).
fn parse_nope_layers(f: &Fields, layers: usize) -> Result<Vec<usize>> {
    match f.obj.get("no_rope_layers") {
        Some(Value::Array(flags)) => {
            if flags.len() != layers {
                return Err(Error::config(
                    f.file,
                    "no_rope_layers",
                    format!("{} entries for {layers} layers", flags.len()),
                ));
            }
            let mut nope = Vec::new();
            for (i, flag) in flags.iter().enumerate() {
                match flag.as_u64() {
                    Some(0) => nope.push(i),
                    Some(1) => {}
                    _ => {
                        return Err(Error::config(
                            f.file,
                            &format!("no_rope_layers[{i}]"),
                            format!("{flag}: expected 0 (no RoPE) or 1 (RoPE)"),
                        ))
                    }
                }
            }
            Ok(nope)
        }
        Some(Value::Null) | None => {
            let interval = f.opt_usize("no_rope_layer_interval")?.unwrap_or(4);
            if interval == 0 {
                return Err(Error::config(
                    f.file,
                    "no_rope_layer_interval",
                    "must be positive",
                ));
            }
            Ok((0..layers).filter(|i| (i + 1) % interval == 0).collect())
        }
        Some(_) => Err(Error::config(f.file, "no_rope_layers", "expected an array")),
    }
}

/// The rotary embedding covers the whole head: `partial_rotary_factor` (top level, or in the
/// RoPE object) other than 1 is refused rather than rotating dimensions the model leaves alone.
fn check_full_rotary(f: &Fields) -> Result<()> {
    let mut places = vec![(
        "partial_rotary_factor".to_string(),
        f.get("partial_rotary_factor"),
    )];
    for obj in ["rope_parameters", "rope_scaling"] {
        if let Some(Value::Object(p)) = f.obj.get(obj) {
            places.push((
                format!("{obj}.partial_rotary_factor"),
                p.get("partial_rotary_factor").filter(|v| !v.is_null()),
            ));
        }
    }
    for (field, value) in places {
        match value.map(|v| (v, v.as_f64())) {
            None | Some((_, Some(1.0))) => {}
            Some((v, _)) => {
                return Err(Error::config(
                    f.file,
                    &field,
                    format!("{v}: only full rotary embeddings (1.0) are supported"),
                ))
            }
        }
    }
    Ok(())
}

/// Phi-3's RoPE as Phi3Config reads it (and Phi's, whose factor defaults to 0.5): the settings
/// object is `rope_parameters` (5.x) or `rope_scaling` (4.x); `rope_theta` there or at the top
/// level (1e4); `partial_rotary_factor` there or at the top level (`default_partial`), rotating the first int(head_dim · factor) dimensions, an even
/// number, of each head; the type `default` or `longrope` (also under its old names `su` and
/// `yarn`, which Phi3Config renames). LongRoPE's `original_max_position_embeddings` is the top
/// level's (Phi3Config's 4096 when absent, as transformers gives it priority), its `factor` the
/// object's or max_position_embeddings / original, and `short_factor` / `long_factor` must hold
/// rotary_dim / 2 numbers each. Returns the RoPE and the partial rotary width (None: whole head).
fn parse_phi3_rope(
    f: &Fields,
    head_dim: usize,
    max_position: usize,
    default_partial: f64,
) -> Result<(RopeConfig, Option<usize>)> {
    let (p, obj) = rope_settings(f)?;
    let empty = Map::new();
    let p = p.unwrap_or(&empty);
    let field = |name: &str| format!("{obj}.{name}");
    // a number of the settings object
    let own = |name: &str| -> Result<Option<f64>> {
        match p.get(name).filter(|v| !v.is_null()) {
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::config(f.file, &field(name), "expected a number")),
            None => Ok(None),
        }
    };
    // ... else of the top level (Phi3Config's setdefault order)
    let number = |name: &str| -> Result<Option<f64>> {
        match own(name)? {
            Some(x) => Ok(Some(x)),
            None => f.opt_f64(name),
        }
    };
    let theta = number("rope_theta")?.unwrap_or(10_000.0) as f32;
    let partial = number("partial_rotary_factor")?.unwrap_or(default_partial);
    let partial_field = if p.get("partial_rotary_factor").is_some_and(|v| !v.is_null()) {
        field("partial_rotary_factor")
    } else {
        "partial_rotary_factor".to_string()
    };
    // transformers: int(head_dim * partial_rotary_factor)
    let rotary = head_dim as f64 * partial;
    if !(partial > 0.0 && partial <= 1.0) || rotary < 2.0 || rotary as usize % 2 != 0 {
        return Err(Error::config(
            f.file,
            &partial_field,
            format!(
                "{partial}: must be in (0, 1] and rotate an even number of dimensions of the \
                 {head_dim}-dimension heads (gives {rotary})"
            ),
        ));
    }
    let rotary_dim = rotary as usize;
    let kind = match p.get("rope_type").or_else(|| p.get("type")) {
        None | Some(Value::Null) => "default".to_string(),
        Some(Value::String(k)) => k.clone(),
        Some(_) => {
            return Err(Error::config(
                f.file,
                &field("rope_type"),
                "expected a string",
            ))
        }
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::Default,
        "longrope" | "su" | "yarn" => {
            let original = f
                .opt_usize("original_max_position_embeddings")?
                .unwrap_or(4096);
            if original < 2 {
                return Err(Error::config(
                    f.file,
                    "original_max_position_embeddings",
                    format!("{original}: must be at least 2"),
                ));
            }
            let factors = |name: &str| -> Result<Vec<f32>> {
                let list = match p.get(name) {
                    Some(Value::Array(list)) => list,
                    Some(_) => return Err(Error::config(f.file, &field(name), "expected a list")),
                    None => {
                        return Err(Error::config(
                            f.file,
                            &field(name),
                            format!("required for rope_type `{kind}`"),
                        ))
                    }
                };
                if list.len() != rotary_dim / 2 {
                    return Err(Error::config(
                        f.file,
                        &field(name),
                        format!(
                            "{} numbers: expected one per rotated pair, {} (rotary dimension {rotary_dim})",
                            list.len(),
                            rotary_dim / 2
                        ),
                    ));
                }
                list.iter()
                    .enumerate()
                    .map(|(i, v)| match v.as_f64() {
                        Some(x) if x.is_finite() && x > 0.0 => Ok(x as f32),
                        _ => Err(Error::config(
                            f.file,
                            &format!("{}[{i}]", field(name)),
                            format!("{v}: expected a positive number"),
                        )),
                    })
                    .collect()
            };
            let factor = own("factor")?.unwrap_or(max_position as f64 / original as f64);
            let attention_factor = match own("attention_factor")? {
                Some(a) if a.is_finite() && a > 0.0 => a,
                Some(a) => {
                    return Err(Error::config(
                        f.file,
                        &field("attention_factor"),
                        format!("{a}: must be positive"),
                    ))
                }
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor: attention_factor as f32,
            }
        }
        other => {
            return Err(Error::config(
                f.file,
                &field("rope_type"),
                format!(
                    "`{other}` is not supported for phi3 (Phi3Config takes default and longrope, \
                     also named su or yarn)"
                ),
            ))
        }
    };
    let partial_rotary_dim = (rotary_dim != head_dim).then_some(rotary_dim);
    Ok((RopeConfig { theta, scaling }, partial_rotary_dim))
}

/// The RoPE settings object and its name: 5.x `rope_parameters`, else 4.x `rope_scaling` (None
/// when neither is set; null counts as absent).
fn rope_settings<'a>(f: &Fields<'a>) -> Result<(Option<&'a Map<String, Value>>, &'static str)> {
    match f.obj.get("rope_parameters") {
        Some(Value::Object(p)) => Ok((Some(p), "rope_parameters")),
        Some(Value::Null) | None => match f.obj.get("rope_scaling") {
            Some(Value::Object(p)) => Ok((Some(p), "rope_scaling")),
            Some(Value::Null) | None => Ok((None, "rope_scaling")),
            Some(_) => Err(Error::config(f.file, "rope_scaling", "expected an object")),
        },
        Some(_) => Err(Error::config(
            f.file,
            "rope_parameters",
            "expected an object",
        )),
    }
}

/// RoPE from either style: 5.x `rope_parameters` {rope_type, rope_theta, ...}, or 4.x top-level
/// `rope_theta` with an optional `rope_scaling` {rope_type | type, factor, ...}.
fn parse_rope(f: &Fields) -> Result<RopeConfig> {
    parse_rope_with_default(f, 10_000.0)
}

/// [`parse_rope`] for a config class whose `rope_theta` defaults to `default_theta`
/// (SmolLM3Config's 2e6).
fn parse_rope_with_default(f: &Fields, default_theta: f32) -> Result<RopeConfig> {
    let (params, field) = rope_settings(f)?;
    let theta = f.opt_f32("rope_theta")?.unwrap_or(default_theta);
    match params {
        Some(p) => rope_from_object(f, p, field, theta),
        None => Ok(RopeConfig {
            theta,
            scaling: RopeScaling::Default,
        }),
    }
}

/// RoPE from one settings object (`field` names it in errors): {rope_type | type, rope_theta,
/// factor, ...}; `default_theta` where it has no rope_theta.
fn rope_from_object(
    f: &Fields,
    p: &Map<String, Value>,
    field: &str,
    default_theta: f32,
) -> Result<RopeConfig> {
    let sub = Fields {
        obj: p,
        file: f.file,
    };
    let sub_field = |name: &str| format!("{field}.{name}");
    let theta = match sub
        .opt_f32("rope_theta")
        .map_err(|_| Error::config(f.file, &sub_field("rope_theta"), "expected a number"))?
    {
        Some(t) => t,
        None => default_theta,
    };
    let kind = match (p.get("rope_type"), p.get("type")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s.clone(),
        (None, None) => "default".to_string(),
        _ => {
            return Err(Error::config(
                f.file,
                &sub_field("rope_type"),
                "expected a string",
            ))
        }
    };
    let num = |name: &str| -> Result<f32> {
        match p.get(name) {
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| Error::config(f.file, &sub_field(name), "expected a number")),
            None => Err(Error::config(
                f.file,
                &sub_field(name),
                format!("required for rope_type `{kind}`"),
            )),
        }
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "yarn" => parse_yarn(f, p, &sub_field)?,
        "dynamic" => {
            let factor = num("factor")?;
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(Error::config(
                    f.file,
                    &sub_field("factor"),
                    format!("{factor}: must be at least 1"),
                ));
            }
            RopeScaling::DynamicNtk { factor }
        }
        "llama3" => {
            let scaling = RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            };
            if let RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            } = scaling
            {
                if high_freq_factor <= low_freq_factor {
                    return Err(Error::config(
                        f.file,
                        &sub_field("high_freq_factor"),
                        "must exceed low_freq_factor",
                    ));
                }
            }
            scaling
        }
        other => {
            return Err(Error::config(
                f.file,
                &sub_field("rope_type"),
                format!(
                    "`{other}` is not supported (supported: default, linear, llama3, yarn, dynamic)"
                ),
            ))
        }
    };
    Ok(RopeConfig { theta, scaling })
}

/// YaRN's settings as transformers reads them (`_compute_yarn_parameters`, `standardize_rope_params`):
/// `original_max_position_embeddings` from the top level of the config first (Phi-3 style), then
/// the scaling object, then `max_position_embeddings`; `factor` absent: max_position_embeddings /
/// original; beta_fast, beta_slow 32 and 1 when absent (or 0); `truncate` true; the attention
/// factor as given, else mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are set
/// (and non-zero), else mscale(factor, 1), with mscale(s, m) = 0.1 m ln(s) + 1 for s > 1, else 1.
fn parse_yarn(
    f: &Fields,
    p: &Map<String, Value>,
    sub_field: &dyn Fn(&str) -> String,
) -> Result<RopeScaling> {
    let num = |name: &str| -> Result<Option<f64>> {
        match p.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::config(f.file, &sub_field(name), "expected a number")),
        }
    };
    let max_position = f.opt_usize("max_position_embeddings")?.unwrap_or(2048);
    let original = match f.opt_usize("original_max_position_embeddings")? {
        Some(o) => o,
        None => match num("original_max_position_embeddings")? {
            Some(o) if o >= 1.0 && o.fract() == 0.0 => o as usize,
            Some(_) => {
                return Err(Error::config(
                    f.file,
                    &sub_field("original_max_position_embeddings"),
                    "expected a positive integer",
                ))
            }
            None => max_position,
        },
    };
    let factor = num("factor")?.unwrap_or(max_position as f64 / original as f64);
    if !(factor.is_finite() && factor > 0.0) {
        return Err(Error::config(
            f.file,
            &sub_field("factor"),
            "must be a positive number",
        ));
    }
    let mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let attention_factor = match num("attention_factor")? {
        Some(a) => a,
        None => match (num("mscale")?, num("mscale_all_dim")?) {
            (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                mscale(factor, m) / mscale(factor, all)
            }
            _ => mscale(factor, 1.0),
        },
    };
    let beta = |name: &str, default: f64| -> Result<f64> {
        Ok(num(name)?.filter(|&b| b != 0.0).unwrap_or(default))
    };
    let truncate = match p.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Error::config(
                f.file,
                &sub_field("truncate"),
                "expected true or false",
            ))
        }
    };
    Ok(RopeScaling::Yarn {
        factor: factor as f32,
        original_max_position_embeddings: original,
        beta_fast: beta("beta_fast", 32.0)? as f32,
        beta_slow: beta("beta_slow", 1.0)? as f32,
        truncate,
        attention_factor: attention_factor as f32,
    })
}

/// Typed accessors over a JSON object whose errors name the file and field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    file: &'a str,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn req_str(&self, name: &str) -> Result<String> {
        self.opt_str(name)?
            .ok_or_else(|| Error::config(self.file, name, "missing"))
    }

    fn opt_str(&self, name: &str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(Error::config(
                self.file,
                name,
                format!("expected a string, found {v}"),
            )),
        }
    }

    fn req_usize(&self, name: &str) -> Result<usize> {
        self.opt_usize(name)?
            .ok_or_else(|| Error::config(self.file, name, "missing"))
    }

    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                Error::config(
                    self.file,
                    name,
                    format!("expected a non-negative integer, found {v}"),
                )
            }),
        }
    }

    fn opt_f32(&self, name: &str) -> Result<Option<f32>> {
        Ok(self.opt_f64(name)?.map(|x| x as f32))
    }

    fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                Error::config(self.file, name, format!("expected a number, found {v}"))
            }),
        }
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Error::config(
                self.file,
                name,
                format!("expected true or false, found {v}"),
            )),
        }
    }

    fn opt_token(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.opt_usize(name)?.map(|t| t as u32))
    }

    /// `eos_token_id` may be one id or a list (Llama 3.1 lists several).
    fn token_list(&self, name: &str) -> Result<Vec<u32>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64().map(|x| x as u32).ok_or_else(|| {
                        Error::config(self.file, name, format!("expected token ids, found {v}"))
                    })
                })
                .collect(),
            Some(v) => v.as_u64().map(|x| vec![x as u32]).ok_or_else(|| {
                Error::config(
                    self.file,
                    name,
                    format!("expected a token id or a list, found {v}"),
                )
            }),
        }
    }

    fn stored_dtype(&self) -> Result<Option<String>> {
        match self.opt_str("dtype")? {
            Some(d) => Ok(Some(d)),
            None => self.opt_str("torch_dtype"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 100,
        "max_position_embeddings": 32768"#;

    fn parse(model_type: &str, extra: &str) -> Result<ModelConfig> {
        let sep = if extra.is_empty() { "" } else { "," };
        let text = format!(r#"{{"model_type": "{model_type}", {BASE}{sep} {extra}}}"#);
        ModelConfig::from_json_str(&text, "config.json")
    }

    #[test]
    fn qwen2_has_qkv_biases_and_no_o_proj_bias_whatever_the_config_says() {
        let c = parse("qwen2", r#""attention_bias": false"#).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.model_type, "qwen2");
        assert!(c.attention_bias && !c.o_proj_bias && !c.mlp_bias);
        // q, k, v biases: 64 + 2 * 32 per layer; no o_proj bias
        let no_bias = ModelConfig {
            attention_bias: false,
            ..c.clone()
        };
        assert_eq!(c.num_parameters() - no_bias.num_parameters(), 4 * 128);
        let llama = parse("llama", r#""attention_bias": true"#).unwrap();
        assert!(llama.attention_bias && llama.o_proj_bias);
        assert!(!parse("mistral", "").unwrap().attention_bias);
    }

    #[test]
    fn qwen3_normalises_q_and_k_and_its_attention_bias_covers_o_proj() {
        let c = parse("qwen3", r#""head_dim": 32"#).unwrap();
        assert_eq!((c.arch, c.model_type.as_str()), (Arch::Llama, "qwen3"));
        assert!(c.qk_norm && !c.attention_bias && !c.o_proj_bias && !c.mlp_bias);
        // q_norm + k_norm: 2 * head_dim per layer
        let plain = ModelConfig {
            qk_norm: false,
            ..c.clone()
        };
        assert_eq!(c.num_parameters() - plain.num_parameters(), 4 * 2 * 32);
        let b = parse("qwen3", r#""attention_bias": true, "mlp_bias": true"#).unwrap();
        assert!(b.attention_bias && b.o_proj_bias && !b.mlp_bias);
        // head_dim absent: Qwen3Config's 128, not hidden / heads
        assert_eq!(b.head_dim, 128);
        assert_eq!(parse("llama", "").unwrap().head_dim, 16);
        assert!(!parse("llama", "").unwrap().qk_norm && !parse("qwen2", "").unwrap().qk_norm);
    }

    #[test]
    fn embedded_qwen3_configs_have_the_published_parameter_counts() {
        let count = |name: &str| {
            let m = crate::model::registry::find(name).unwrap();
            ModelConfig::from_json_str(m.config, name)
                .unwrap()
                .num_parameters()
        };
        // Qwen3-0.6B: 0.6 B (0.44 B non-embedding), tied; Qwen3-8B: 8.2 B (6.95 B non-embedding)
        assert_eq!(count("qwen3-0.6b"), 596_049_920);
        assert_eq!(count("qwen3-8b"), 8_190_735_360);
    }

    #[test]
    fn phi3_has_no_biases_and_a_window_on_every_layer() {
        let c = parse("phi3", r#""sliding_window": 2047"#).unwrap();
        assert_eq!((c.arch, c.model_type.as_str()), (Arch::Llama, "phi3"));
        assert!(!c.attention_bias && !c.o_proj_bias && !c.mlp_bias && !c.qk_norm);
        assert_eq!((c.sliding_window, c.max_context), (Some(2047), 32768));
        assert_eq!(c.sliding_layers, (0..4).collect::<Vec<_>>());
        assert_eq!(parse("phi3", "").unwrap().sliding_window, None);
        assert!(parse("phi3", r#""rope_scaling": {"rope_type": "default"}"#).is_ok());
        // the embedded Phi-3 mini: 3.8 B parameters, as published; a 2047-key window on every
        // layer of its 4096 positions
        let m = crate::model::registry::find("phi-3-mini-4k").unwrap();
        let c = ModelConfig::from_json_str(m.config, "phi-3-mini-4k").unwrap();
        assert_eq!(c.num_parameters(), 3_821_079_552);
        assert_eq!((c.sliding_window, c.max_context), (Some(2047), 4096));
        assert_eq!(c.sliding_layers.len(), c.num_layers);
    }

    #[test]
    fn the_embedded_phi_4_mini_rotates_96_of_128_dimensions_with_longrope() {
        // 3.84 B parameters as published (tied embeddings); 24 query heads over 8 KV heads of 128,
        // of which the first 96 dimensions rotate; LongRoPE over an original context of 4096
        let m = crate::model::registry::find("phi-4-mini").unwrap();
        let c = ModelConfig::from_json_str(m.config, "phi-4-mini").unwrap();
        assert_eq!(c.num_parameters(), 3_836_021_760);
        assert_eq!(
            (c.head_dim, c.rotary_dim(), c.max_context),
            (128, 96, 131_072)
        );
        let rope = c.rope.clone().unwrap();
        let RopeScaling::LongRope {
            ref short_factor,
            ref long_factor,
            original_max_position_embeddings,
            attention_factor,
        } = rope.scaling
        else {
            panic!("{:?}", rope.scaling)
        };
        assert_eq!((short_factor.len(), long_factor.len()), (48, 48));
        assert_eq!((long_factor[0], long_factor[47]), (1.0, 47.77));
        assert_eq!(original_max_position_embeddings, 4096);
        // factor 131072 / 4096 = 32: sqrt(1 + ln 32 / ln 4096) = sqrt(1 + 5/12)
        assert!((attention_factor - (17.0f32 / 12.0).sqrt()).abs() < 1e-6);
        // the long factors at the whole context, the short ones within 4096
        let long = crate::model::rope::longrope_factors(&rope, c.max_context).unwrap();
        assert_eq!(long[47], 47.77);
        let short = crate::model::rope::longrope_factors(&rope, 4096).unwrap();
        assert_eq!(short[47], 1.0);
        // its 262144-key window is longer than the context: attention over everything
        assert_eq!(c.sliding_window, Some(262_144));
    }

    #[test]
    fn the_embedded_mistral_7b_v0_1_slides_on_every_layer() {
        // 7.24 B parameters as published; a 4096-key window on all 32 layers over a 32k context
        let m = crate::model::registry::find("mistral-7b-v0.1").unwrap();
        let c = ModelConfig::from_json_str(m.config, "mistral-7b-v0.1").unwrap();
        assert_eq!(c.num_parameters(), 7_241_732_096);
        assert_eq!((c.kv_window(), c.max_context), (Some(4096), 32768));
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 128));
    }

    #[test]
    fn gemma3_text_in_both_config_styles() {
        // the embedded configs: 4.x style (rope_theta, rope_local_base_freq), the sliding layers
        // from layer_types (270m) or sliding_window_pattern (1b); published parameter counts
        for (name, params, layers) in [
            ("gemma-3-270m", 268_098_176usize, 18usize),
            ("gemma-3-1b", 999_885_952, 26),
        ] {
            let m = crate::model::registry::find(name).unwrap();
            let c = ModelConfig::from_json_str(m.config, name).unwrap();
            assert_eq!(c.num_parameters(), params, "{name}");
            assert!(c.qk_norm && c.sandwich_norms && c.tie_word_embeddings);
            assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
            assert_eq!(c.embed_scale, Some((c.hidden_size as f32).sqrt()));
            assert_eq!(c.attn_scale, 1.0 / 16.0); // query_pre_attn_scalar 256
                                                  // every sixth layer (5, 11, 17, 23) is a full-attention one
            let sliding: Vec<usize> = (0..layers).filter(|i| (i + 1) % 6 != 0).collect();
            assert_eq!(c.sliding_layers, sliding, "{name}");
            assert_eq!((c.sliding_window, c.max_context), (Some(512), 32768));
            assert_eq!(
                (c.layer_window(0), c.layer_window(5)),
                (Some(512), None),
                "{name}"
            );
            assert_eq!(c.rope.unwrap().theta, 1e6);
            assert_eq!(c.local_rope.unwrap().theta, 1e4);
        }
        // 5.x style: rope_parameters keyed by layer type
        let c = parse(
            "gemma3_text",
            r#""rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0,
                "rope_theta": 1e6}, "sliding_attention": {"rope_type": "default",
                "rope_theta": 1e4}}, "layer_types": ["sliding_attention", "full_attention",
                "sliding_attention", "full_attention"], "sliding_window": 65536"#,
        )
        .unwrap();
        assert_eq!(c.rope.unwrap().scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(c.local_rope.unwrap().scaling, RopeScaling::Default);
        assert_eq!((c.sliding_layers, c.max_context), (vec![0, 2], 32768));
        // 4.x rope_scaling applies to the full-attention layers only
        let c = parse(
            "gemma3_text",
            r#""rope_scaling": {"rope_type": "linear", "factor": 8.0}"#,
        )
        .unwrap();
        assert_eq!(c.rope.unwrap().scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(c.local_rope.unwrap().theta, 1e4);
        // Gemma 3 has no soft-caps unless its config sets them
        assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
        let c = parse("gemma3_text", r#""final_logit_softcapping": 30.0"#).unwrap();
        assert_eq!((c.attn_softcap, c.final_softcap), (None, Some(30.0)));
        // what it does not have, or bad values, are refused by name
        for (extra, field) in [
            (r#""final_logit_softcapping": 0"#, "final_logit_softcapping"),
            (
                r#""attn_logit_softcapping": -50.0"#,
                "attn_logit_softcapping",
            ),
            (
                r#""use_bidirectional_attention": true"#,
                "use_bidirectional_attention",
            ),
            (r#""hidden_activation": "gelu""#, "hidden_activation"),
            (r#""layer_types": ["sliding_attention"]"#, "layer_types"),
        ] {
            let err = parse("gemma3_text", extra).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn gemma2_defaults_and_the_published_2b() {
        // Gemma2Config's defaults: soft-caps 50 / 30, even layers slide over 4096 keys, one RoPE
        // (theta 1e4), no q/k norms, 8192 positions
        let c = parse("gemma2", "").unwrap();
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(
            (c.sliding_window, &c.sliding_layers[..]),
            (Some(4096), &[0, 2][..])
        );
        assert_eq!(
            (0..4).map(|i| c.layer_window(i)).collect::<Vec<_>>(),
            vec![Some(4096), None, Some(4096), None]
        );
        assert!(c.local_rope.is_none() && !c.qk_norm && c.sandwich_norms && c.is_gemma());
        assert_eq!(c.rope.unwrap().theta, 10_000.0);
        assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
        // null turns a soft-cap or the window off
        let c = parse(
            "gemma2",
            r#""attn_logit_softcapping": null, "final_logit_softcapping": null,
            "sliding_window": null"#,
        )
        .unwrap();
        assert_eq!(
            (c.attn_softcap, c.final_softcap, c.sliding_window),
            (None, None, None)
        );
        assert_eq!(c.layer_window(0), None);
        // the embedded Gemma 2 2B: 2.61 B parameters as published (tied head)
        let m = crate::model::registry::find("gemma-2-2b").unwrap();
        let c = ModelConfig::from_json_str(m.config, "gemma-2-2b").unwrap();
        assert_eq!(c.num_parameters(), 2_614_341_888);
        assert_eq!(c.sliding_layers.len(), 13);
        assert_eq!((c.max_context, c.attn_scale), (8192, 1.0 / 16.0));
        assert_eq!(c.eos_token_ids, vec![1, 107]);
    }

    #[test]
    fn gemma1_is_gemmas_layout_without_gemma2s_additions() {
        let c = parse("gemma", r#""head_dim": 32"#).unwrap();
        assert!(c.is_gemma() && !c.sandwich_norms && !c.qk_norm);
        assert_eq!(
            (c.attn_softcap, c.final_softcap, c.sliding_window),
            (None, None, None)
        );
        assert!(c.sliding_layers.is_empty() && c.local_rope.is_none());
        assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
        assert_eq!(c.attn_scale, 1.0 / 32f32.sqrt());
        assert_eq!(c.embed_scale, Some(8.0));
        assert_eq!(c.rope.unwrap().theta, 10_000.0);
        // GemmaModel ignores Gemma 2's fields: no cap, window or query_pre_attn_scalar
        let c = parse(
            "gemma",
            r#""head_dim": 32, "attn_logit_softcapping": 50, "sliding_window": 16,
            "query_pre_attn_scalar": 24, "layer_types": ["x"]"#,
        )
        .unwrap();
        assert_eq!((c.attn_softcap, c.sliding_window), (None, None));
        assert_eq!(c.attn_scale, 1.0 / 32f32.sqrt());
        // `hidden_act` is GemmaConfig's field; its legacy `gelu` is the tanh approximation
        let c = parse("gemma", r#""hidden_act": "gelu""#).unwrap();
        assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
        let err = parse("gemma", r#""hidden_act": "silu""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_act") && err.contains("silu"), "{err}");
        // the embedded Gemma 2B and 7B: 2.51 B and 8.54 B parameters as published (tied heads)
        for (name, params, kv_heads) in [
            ("gemma-2b", 2_506_172_416, 1),
            ("gemma-7b", 8_537_680_896, 16),
        ] {
            let m = crate::model::registry::find(name).unwrap();
            let c = ModelConfig::from_json_str(m.config, name).unwrap();
            assert_eq!(c.num_parameters(), params, "{name}");
            assert_eq!((c.num_kv_heads, c.head_dim), (kv_heads, 256), "{name}");
            assert_eq!(
                (c.attn_scale, c.eos_token_ids.clone()),
                (1.0 / 16.0, vec![1])
            );
        }
    }

    #[test]
    fn smollm3_nope_layers_and_defaults() {
        // SmolLM3Config's defaults: every 4th layer without RoPE, theta 2e6, tied, 32768 positions
        // (pretraining_tp 2, as SmolLM3-3B's config has it, changes nothing)
        const SMOL: &str = r#""model_type": "smollm3", "hidden_size": 64, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 8,
            "vocab_size": 100, "pretraining_tp": 2"#;
        let with = |extra: &str| {
            let sep = if extra.is_empty() { "" } else { ", " };
            ModelConfig::from_json_str(&format!("{{{SMOL}{sep}{extra}}}"), "config.json")
        };
        let c = with("").unwrap();
        assert_eq!(c.nope_layers, vec![3, 7]);
        assert_eq!(c.rope.as_ref().unwrap().theta, 2_000_000.0);
        assert!(c.tie_word_embeddings && c.sliding_window.is_none());
        assert_eq!(c.max_context, 32_768);
        assert_eq!(
            with(r#""no_rope_layer_interval": 3"#).unwrap().nope_layers,
            vec![2, 5]
        );
        let listed = with(r#""no_rope_layers": [1, 0, 1, 1, 1, 1, 0, 0]"#).unwrap();
        assert_eq!(listed.nope_layers, vec![1, 6, 7]);
        // a window only under use_sliding_window, on the NoPE layers unless layer_types says
        let w = r#""use_sliding_window": true, "sliding_window": 64"#;
        let c = with(w).unwrap();
        assert_eq!(
            (c.sliding_window, &c.sliding_layers[..]),
            (Some(64), &[3, 7][..])
        );
        let typed = r#", "layer_types": ["sliding_attention", "full_attention",
            "full_attention", "full_attention", "full_attention", "full_attention",
            "full_attention", "full_attention"]"#;
        assert_eq!(
            with(&format!("{w}{typed}")).unwrap().sliding_layers,
            vec![0]
        );
        assert!(with(r#""sliding_window": 64"#)
            .unwrap()
            .sliding_window
            .is_none());
        for (extra, field) in [
            (r#""no_rope_layers": [1, 0]"#, "no_rope_layers"),
            (
                r#""no_rope_layers": [1, 2, 1, 1, 1, 1, 1, 1]"#,
                "no_rope_layers[1]",
            ),
            (r#""no_rope_layer_interval": 0"#, "no_rope_layer_interval"),
        ] {
            let err = with(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        // the Llama family has no NoPE layers, whatever the config says
        assert!(parse("llama", r#""no_rope_layers": [0, 0, 0, 0]"#)
            .unwrap()
            .nope_layers
            .is_empty());
        // the embedded SmolLM3 3B: 3.08 B parameters as published (tied head)
        let m = crate::model::registry::find("smollm3-3b").unwrap();
        let c = ModelConfig::from_json_str(m.config, "smollm3-3b").unwrap();
        assert_eq!(c.num_parameters(), 3_075_098_624);
        assert_eq!(c.nope_layers.len(), 9);
    }

    #[test]
    fn olmo2_normalises_after_its_sub_layers_and_over_whole_projections() {
        let c = parse("olmo2", r#""head_dim": 32"#).unwrap();
        assert!(c.post_norms_only && c.sandwich_norms && c.qk_norm_whole && !c.qk_norm);
        // Olmo2Config's default eps; attention_bias covers o_proj, the MLP has no biases
        assert_eq!(c.norm_eps, 1e-5);
        let b = parse("olmo2", r#""attention_bias": true, "mlp_bias": true"#).unwrap();
        assert!(b.attention_bias && b.o_proj_bias && !b.mlp_bias);
        // per layer: two post norms (no pre norms) and the q/k norms' q_size + kv_size weights
        let llama = ModelConfig {
            post_norms_only: false,
            sandwich_norms: false,
            qk_norm_whole: false,
            ..c.clone()
        };
        assert_eq!(
            c.num_parameters() - llama.num_parameters(),
            4 * (4 * 32 + 2 * 32)
        );
        assert!(!parse("llama", "").unwrap().qk_norm_whole);
        // the embedded OLMo 2 1B and 7B: 1.48 B and 7.30 B parameters as published (untied)
        for (name, params) in [("olmo-2-1b", 1_484_916_736), ("olmo-2-7b", 7_298_617_344)] {
            let m = crate::model::registry::find(name).unwrap();
            let c = ModelConfig::from_json_str(m.config, name).unwrap();
            assert_eq!(c.num_parameters(), params, "{name}");
            assert!(c.post_norms_only && !c.tie_word_embeddings);
        }
    }

    #[test]
    fn phi_is_gpt2s_block_with_partial_rope_in_parallel() {
        let c = parse("phi", "").unwrap();
        assert_eq!((c.arch, c.model_type.as_str()), (Arch::Gpt2, "phi"));
        assert!(c.parallel_residual && c.lm_head_bias && !c.learned_positions());
        assert!(c.attention_bias && c.o_proj_bias && c.mlp_bias && !c.tie_word_embeddings);
        // PhiConfig's partial_rotary_factor defaults to 0.5: 8 of 16 dimensions; eps 1e-5
        assert_eq!((c.rotary_dim(), c.norm_eps), (8, 1e-5));
        let c = parse("phi", r#""partial_rotary_factor": 0.4, "head_dim": 99"#).unwrap();
        // int(16 · 0.4) = 6; head_dim is hidden / heads whatever the config says
        assert_eq!((c.head_dim, c.rotary_dim()), (16, 6));
        assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
        // transformers' `gelu` is the exact one, in any model of GPT-2's block
        let c = parse("phi", r#""hidden_act": "gelu""#).unwrap();
        assert_eq!(c.mlp_activation, MlpActivation::GeluErf);
        for (extra, field) in [
            (r#""qk_layernorm": true"#, "qk_layernorm"),
            (r#""hidden_act": "relu""#, "hidden_act"),
            (r#""partial_rotary_factor": 0.05"#, "partial_rotary_factor"),
        ] {
            let err = parse("phi", extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        // the embedded Phi-2: 2.78 B parameters as published (untied head with a bias)
        let m = crate::model::registry::find("phi-2").unwrap();
        let c = ModelConfig::from_json_str(m.config, "phi-2").unwrap();
        assert_eq!(c.num_parameters(), 2_779_683_840);
        assert_eq!((c.head_dim, c.rotary_dim()), (80, 32));
    }

    #[test]
    fn gpt_neox_reads_both_rope_styles_and_its_own_defaults() {
        // GPTNeoXConfig's defaults: rotary_pct 0.25, base 1e4, exact GELU, parallel block with
        // a norm per sub-layer, biases on every projection, untied, MHA whatever the config says
        let c = parse("gpt_neox", "").unwrap();
        assert_eq!((c.arch, c.model_type.as_str()), (Arch::Gpt2, "gpt_neox"));
        assert_eq!((c.head_dim, c.rotary_dim(), c.num_kv_heads), (16, 4, 4));
        assert_eq!(c.rope.as_ref().map(|r| r.theta), Some(10_000.0));
        assert_eq!(c.mlp_activation, MlpActivation::GeluErf);
        assert!(c.parallel_residual && c.has_mlp_norm() && !c.learned_positions());
        assert!(c.attention_bias && c.o_proj_bias && c.mlp_bias && !c.tie_word_embeddings);
        assert!(!c.lm_head_bias);
        // 4.x fields (Pythia's config.json) and 5.x's rope_parameters say the same
        let legacy = parse(
            "gpt_neox",
            r#""rotary_pct": 0.5, "rotary_emb_base": 500000, "use_parallel_residual": false,
               "hidden_act": "gelu_fast", "attention_bias": false"#,
        )
        .unwrap();
        let new = parse(
            "gpt_neox",
            r#""rope_parameters": {"rope_type": "default", "rope_theta": 500000,
                "partial_rotary_factor": 0.5}, "use_parallel_residual": false,
               "hidden_act": "gelu_fast", "attention_bias": false"#,
        )
        .unwrap();
        assert_eq!(legacy, new);
        assert_eq!(
            (new.rotary_dim(), new.rope.as_ref().map(|r| r.theta)),
            (8, Some(5e5))
        );
        assert!(!new.parallel_residual && !new.attention_bias && !new.o_proj_bias && new.mlp_bias);
        assert_eq!(new.mlp_activation, MlpActivation::GeluTanh);
        // 4.x rope_scaling (linear) with the top-level base
        let c = parse(
            "gpt_neox",
            r#""rotary_emb_base": 20000, "rope_scaling": {"type": "linear", "factor": 2.0}"#,
        )
        .unwrap();
        let rope = c.rope.unwrap();
        assert_eq!(rope.theta, 20_000.0);
        assert_eq!(rope.scaling, RopeScaling::Linear { factor: 2.0 });
        for (extra, field) in [
            (r#""rotary_pct": 0.1"#, "rotary_pct"),
            (
                r#""rope_parameters": {"partial_rotary_factor": 1.5}"#,
                "rope_parameters.partial_rotary_factor",
            ),
            (r#""hidden_act": "silu""#, "hidden_act"),
            (
                r#""rope_scaling": {"type": "su"}"#,
                "rope_scaling.rope_type",
            ),
        ] {
            let err = parse("gpt_neox", extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        // the embedded Pythia configs: parameter counts as published
        for (name, params, head_dim, rotary) in [
            ("pythia-160m", 162_322_944, 64, 16),
            ("pythia-1b", 1_011_781_632, 256, 64),
            ("pythia-6.9b", 6_857_302_016, 128, 32),
        ] {
            let m = crate::model::registry::find(name).unwrap();
            let c = ModelConfig::from_json_str(m.config, name).unwrap();
            assert_eq!(c.num_parameters(), params, "{name}");
            assert_eq!((c.head_dim, c.rotary_dim()), (head_dim, rotary), "{name}");
        }
    }

    #[test]
    fn falcon_reads_its_three_blocks_and_alibi() {
        // FalconConfig's defaults: multi-query, parallel off one norm, no biases, exact GELU,
        // MLP 4 × hidden, tied
        let c = parse("falcon", "").unwrap();
        assert_eq!((c.arch, c.model_type.as_str()), (Arch::Gpt2, "falcon"));
        assert_eq!(
            (c.num_kv_heads, c.intermediate_size, c.rotary_dim()),
            (1, 256, 16)
        );
        assert!(c.parallel_residual && c.parallel_shared_norm && !c.has_mlp_norm());
        assert!(!c.attention_bias && !c.o_proj_bias && !c.mlp_bias && c.tie_word_embeddings);
        assert_eq!(c.mlp_activation, MlpActivation::GeluErf);
        // the new architecture: num_kv_heads KV heads, two norms unless num_ln_in_parallel_attn 1
        let c = parse(
            "falcon",
            r#""new_decoder_architecture": true, "num_kv_heads": 2, "bias": true,
               "ffn_hidden_size": 160"#,
        )
        .unwrap();
        assert_eq!((c.num_kv_heads, c.intermediate_size), (2, 160));
        assert!(c.parallel_residual && c.has_mlp_norm() && c.attention_bias && c.mlp_bias);
        let c = parse(
            "falcon",
            r#""new_decoder_architecture": true, "num_ln_in_parallel_attn": 1"#,
        )
        .unwrap();
        assert_eq!(c.num_kv_heads, 4);
        assert!(c.parallel_residual && !c.has_mlp_norm());
        // the old architecture without multi-query is MHA; without parallel_attn, sequential
        let c = parse("falcon", r#""multi_query": false, "parallel_attn": false"#).unwrap();
        assert_eq!(c.num_kv_heads, 4);
        assert!(!c.parallel_residual && c.has_mlp_norm());
        // Falcon-RW: ALiBi instead of RoPE, its slopes scaled as its scores (1 / √16)
        let c = parse("falcon", r#""alibi": true, "parallel_attn": false"#).unwrap();
        assert!(c.rope.is_none() && !c.learned_positions());
        let alibi = Alibi {
            max_bias: 8.0,
            scale: 0.25,
        };
        assert_eq!((c.alibi, c.attn_scale), (Some(alibi), 0.25));
        for (extra, field) in [
            (
                r#""new_decoder_architecture": true, "parallel_attn": false"#,
                "parallel_attn",
            ),
            (r#""num_ln_in_parallel_attn": 3"#, "num_ln_in_parallel_attn"),
            (r#""activation": "relu""#, "activation"),
            (r#""partial_rotary_factor": 0.5"#, "partial_rotary_factor"),
        ] {
            let err = parse("falcon", extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        // the embedded Falcon 7B: 6.92 B parameters as published (multi-query, tied)
        let m = crate::model::registry::find("falcon-7b").unwrap();
        let c = ModelConfig::from_json_str(m.config, "falcon-7b").unwrap();
        assert_eq!(c.num_parameters(), 6_921_720_704);
        assert_eq!((c.head_dim, c.num_heads, c.num_kv_heads), (64, 71, 1));
        // the embedded Falcon-RW 1B: transformers counts 1,311,625,216 on the meta device
        let m = crate::model::registry::find("falcon-rw-1b").unwrap();
        let c = ModelConfig::from_json_str(m.config, "falcon-rw-1b").unwrap();
        assert_eq!(c.num_parameters(), 1_311_625_216);
        assert_eq!(c.alibi.map(|a| a.scale), Some(0.125));
    }

    #[test]
    fn bloom_is_gpt2_with_alibi_and_an_embedding_norm() {
        // BloomConfig's names and defaults: 4 × hidden MLP, tanh GELU, biases, tied, 2048 tokens
        let c = ModelConfig::from_json_str(
            r#"{"model_type": "bloom", "n_embed": 64, "n_head": 4, "n_layer": 2,
                "vocab_size": 100}"#,
            "config.json",
        )
        .unwrap();
        assert_eq!((c.arch, c.hidden_size, c.head_dim), (Arch::Gpt2, 64, 16));
        assert_eq!((c.intermediate_size, c.max_context), (256, 2048));
        assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
        assert_eq!(c.alibi, Some(Alibi::STANDARD));
        assert!(c.embed_norm && c.rope.is_none() && !c.learned_positions());
        assert!(c.attention_bias && c.o_proj_bias && c.mlp_bias && c.tie_word_embeddings);
        assert!(!c.parallel_residual && c.has_mlp_norm());
        // 5.x-style names, a training length
        let c = parse("bloom", r#""seq_length": 4096"#).unwrap();
        assert_eq!((c.num_heads, c.num_layers, c.max_context), (4, 4, 4096));
        let err = parse(
            "bloom",
            r#""apply_residual_connection_post_layernorm": true"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("apply_residual_connection_post_layernorm"),
            "{err}"
        );
        // the embedded BLOOMs: transformers counts these on the meta device
        for (name, params) in [("bloom-560m", 559_214_592), ("bloom-7b1", 7_069_016_064)] {
            let m = crate::model::registry::find(name).unwrap();
            let c = ModelConfig::from_json_str(m.config, name).unwrap();
            assert_eq!(c.num_parameters(), params, "{name}");
        }
    }

    #[test]
    fn mixture_of_experts_types_parse_their_routing() {
        let moe = |model_type: &str, extra: &str| {
            ModelConfig::from_json_str(
                &format!(
                    r#"{{"model_type": "{model_type}", "vocab_size": 64, "hidden_size": 32,
                    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "intermediate_size": 48{extra}}}"#
                ),
                "config.json",
            )
        };
        // Mixtral: 8 experts of intermediate_size on every layer, top 2, always renormalised
        let c = moe("mixtral", "").unwrap();
        let m = c.moe.clone().unwrap();
        assert_eq!((m.num_experts, m.top_k, m.expert_intermediate), (8, 2, 48));
        assert!(m.renormalize);
        assert_eq!(m.layers, vec![0, 1, 2, 3]);
        assert!(!c.qk_norm && !c.qk_norm_whole && !c.attention_bias);
        // Qwen3-MoE: dense layers from mlp_only_layers and decoder_sparse_step; per-head q/k
        // norms; transformers 5's `num_local_experts` read first
        let c = moe(
            "qwen3_moe",
            r#", "num_experts": 16, "num_local_experts": 12, "num_experts_per_tok": 4,
            "moe_intermediate_size": 24, "norm_topk_prob": true, "decoder_sparse_step": 2,
            "mlp_only_layers": [3], "head_dim": 16"#,
        )
        .unwrap();
        let m = c.moe.clone().unwrap();
        assert_eq!((m.num_experts, m.top_k, m.expert_intermediate), (12, 4, 24));
        assert_eq!(m.layers, vec![1]);
        assert!(m.renormalize && c.qk_norm);
        assert!(c.layer_moe(1).is_some() && c.layer_moe(3).is_none());
        // OLMoE: whole-projection q/k norms on a pre-norm block, raw top-k weights
        let c = moe("olmoe", "").unwrap();
        let m = c.moe.clone().unwrap();
        assert_eq!((m.num_experts, m.top_k), (64, 8));
        assert!(!m.renormalize && c.qk_norm_whole && !c.post_norms_only);
        // refusals name the field
        for (t, extra, field) in [
            (
                "mixtral",
                r#", "num_experts_per_tok": 9"#,
                "num_experts_per_tok",
            ),
            (
                "mixtral",
                r#", "num_local_experts": 0"#,
                "num_local_experts",
            ),
            (
                "qwen3_moe",
                r#", "decoder_sparse_step": 0"#,
                "decoder_sparse_step",
            ),
            (
                "qwen3_moe",
                r#", "mlp_only_layers": [7]"#,
                "mlp_only_layers[0]",
            ),
            ("olmoe", r#", "clip_qkv": 8.0"#, "clip_qkv"),
        ] {
            let err = moe(t, extra).unwrap_err().to_string();
            assert!(err.contains(field), "{t} {extra}: {err}");
        }
        // parameter counts: the dense counts plus routers and experts, less the dense MLPs
        let c = moe("mixtral", "").unwrap();
        let dense = moe("mistral", "").unwrap();
        let expert = 3 * 32 * 48;
        assert_eq!(
            c.num_parameters(),
            dense.num_parameters() + 4 * (8 * (32 + expert) - expert)
        );
        assert_eq!(c.active_parameters(), c.num_parameters() - 4 * 6 * expert);
        // the embedded MoE configs: transformers counts these on the meta device
        for (name, params) in [
            ("mixtral-8x7b", 46_702_792_704),
            ("qwen3-30b-a3b", 30_532_122_624),
            ("olmoe-1b-7b", 6_919_161_856),
        ] {
            let m = crate::model::registry::find(name).unwrap();
            let c = ModelConfig::from_json_str(m.config, name).unwrap();
            assert_eq!(c.num_parameters(), params, "{name}");
        }
    }

    #[test]
    fn mpt_is_bias_free_gpt2_with_alibi() {
        let mpt = |extra: &str| {
            let sep = if extra.is_empty() { "" } else { "," };
            ModelConfig::from_json_str(
                &format!(
                    r#"{{"model_type": "mpt", "d_model": 64, "n_heads": 4, "n_layers": 2,
                        "vocab_size": 100{sep} {extra}}}"#
                ),
                "config.json",
            )
        };
        // MptConfig's defaults: ALiBi of max bias 8, no biases anywhere, exact GELU, 4 × d_model
        let c = mpt("").unwrap();
        assert_eq!(
            (c.arch, c.head_dim, c.intermediate_size),
            (Arch::Gpt2, 16, 256)
        );
        assert_eq!((c.max_context, c.attn_scale), (2048, 0.25));
        assert_eq!(c.alibi, Some(Alibi::STANDARD));
        assert_eq!(c.mlp_activation, MlpActivation::GeluErf);
        assert!(!c.attention_bias && !c.o_proj_bias && !c.mlp_bias && c.norms_without_bias);
        assert!(c.tie_word_embeddings && !c.learned_positions() && !c.embed_norm);
        let c = mpt(r#""expansion_ratio": 2, "max_seq_len": 4096,
               "attn_config": {"alibi_bias_max": 16, "softmax_scale": 0.1, "clip_qkv": null}"#)
        .unwrap();
        assert_eq!((c.intermediate_size, c.max_context), (128, 4096));
        assert_eq!(
            (c.alibi.map(|a| a.max_bias), c.attn_scale),
            (Some(16.0), 0.1)
        );
        for (extra, field) in [
            (r#""no_bias": false"#, "no_bias"),
            (r#""logit_scale": 0.5"#, "logit_scale"),
            (r#""norm_type": "rmsnorm""#, "norm_type"),
            (r#""attn_config": 3"#, "attn_config"),
            (r#""attn_config": {"alibi": false}"#, "attn_config.alibi"),
            (r#""attn_config": {"clip_qkv": 6}"#, "attn_config.clip_qkv"),
            (r#""attn_config": {"qk_ln": true}"#, "attn_config.qk_ln"),
            (
                r#""attn_config": {"prefix_lm": true}"#,
                "attn_config.prefix_lm",
            ),
            (
                r#""attn_config": {"attn_type": "multiquery_attention"}"#,
                "attn_config.attn_type",
            ),
            (
                r#""attn_config": {"alibi_bias_max": "8"}"#,
                "attn_config.alibi_bias_max",
            ),
            (
                r#""attn_config": {"alibi_bias_max": 0}"#,
                "attn_config.alibi_bias_max",
            ),
        ] {
            let err = mpt(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        // the embedded MPT-7B: transformers counts 6,649,286,656 (its LayerNorms have no bias)
        let m = crate::model::registry::find("mpt-7b").unwrap();
        let c = ModelConfig::from_json_str(m.config, "mpt-7b").unwrap();
        assert_eq!(c.num_parameters(), 6_649_286_656);
    }

    #[test]
    fn opt_has_learned_positions_after_an_offset_and_refuses_350ms_block() {
        // OPTConfig's defaults: ReLU, biases, tied, LayerNorm eps 1e-5, MHA
        let c = parse("opt", r#""ffn_dim": 160"#).unwrap();
        assert_eq!((c.arch, c.model_type.as_str()), (Arch::Gpt2, "opt"));
        assert!(c.learned_positions() && c.rope.is_none());
        assert_eq!(
            (c.position_offset, c.num_kv_heads, c.intermediate_size),
            (2, 4, 160)
        );
        assert_eq!(c.mlp_activation, MlpActivation::Relu);
        assert!(c.attention_bias && c.o_proj_bias && c.mlp_bias && c.tie_word_embeddings);
        assert!(!c.parallel_residual && c.has_mlp_norm());
        let c = parse(
            "opt",
            r#""ffn_dim": 160, "enable_bias": false, "activation_function": "gelu""#,
        )
        .unwrap();
        assert!(!c.attention_bias && !c.o_proj_bias && !c.mlp_bias);
        assert_eq!(c.mlp_activation, MlpActivation::GeluErf);
        for (extra, field) in [
            (r#""do_layer_norm_before": false"#, "do_layer_norm_before"),
            (r#""word_embed_proj_dim": 32"#, "word_embed_proj_dim"),
            (
                r#""layer_norm_elementwise_affine": false"#,
                "layer_norm_elementwise_affine",
            ),
            (r#""activation_function": "silu""#, "activation_function"),
        ] {
            let err = parse("opt", &format!(r#""ffn_dim": 160, {extra}"#))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
        let err = parse("opt", "").unwrap_err().to_string();
        assert!(err.contains("ffn_dim"), "{err}");
        // the embedded OPT configs: parameter counts as published (the position table's two
        // offset rows included)
        for (name, params) in [("opt-125m", 125_239_296), ("opt-6.7b", 6_658_473_984)] {
            let m = crate::model::registry::find(name).unwrap();
            let c = ModelConfig::from_json_str(m.config, name).unwrap();
            assert_eq!(c.num_parameters(), params, "{name}");
        }
    }

    #[test]
    fn gpt_bigcode_is_gpt2_with_multi_query_attention() {
        let bigcode = |extra: &str| {
            let sep = if extra.is_empty() { "" } else { "," };
            let text = format!(
                r#"{{"model_type": "gpt_bigcode", "n_embd": 64, "n_head": 4, "n_layer": 2,
                    "n_positions": 128, "vocab_size": 100{sep} {extra}}}"#
            );
            ModelConfig::from_json_str(&text, "config.json")
        };
        // GPTBigCodeConfig's defaults: multi-query, gelu_pytorch_tanh, MLP 4 × hidden, tied
        let c = bigcode("").unwrap();
        assert_eq!((c.arch, c.model_type.as_str()), (Arch::Gpt2, "gpt_bigcode"));
        assert_eq!(
            (c.num_kv_heads, c.intermediate_size, c.head_dim),
            (1, 256, 16)
        );
        assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
        assert!(c.learned_positions() && c.tie_word_embeddings && c.attention_bias);
        // transformers reads no scale_attn_by_inverse_layer_idx for GPT-BigCode
        let c =
            bigcode(r#""multi_query": false, "scale_attn_by_inverse_layer_idx": true"#).unwrap();
        assert_eq!(c.num_kv_heads, 4);
        assert!(!c.scale_attn_by_inverse_layer_idx);
        let err = bigcode(r#""add_cross_attention": true"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("add_cross_attention") && err.contains("gpt_bigcode"),
            "{err}"
        );
        // the embedded StarCoder: 15.5 B parameters (multi-query over 48 heads, 8192 positions)
        let m = crate::model::registry::find("starcoder").unwrap();
        let c = ModelConfig::from_json_str(m.config, "starcoder").unwrap();
        assert_eq!(c.num_parameters(), 15_517_456_384);
        assert_eq!((c.head_dim, c.num_kv_heads, c.max_context), (128, 1, 8192));
    }

    #[test]
    fn gptj_rotates_every_two_of_its_rotary_dims_in_a_parallel_block() {
        let gptj = |extra: &str| {
            let sep = if extra.is_empty() { "" } else { "," };
            let text = format!(
                r#"{{"model_type": "gptj", "n_embd": 64, "n_head": 4, "n_layer": 2,
                    "vocab_size": 100{sep} {extra}}}"#
            );
            ModelConfig::from_json_str(&text, "config.json")
        };
        // GPTJConfig's defaults: rotary_dim 64 (here the whole 16-wide head is too small: refused),
        // 2048 positions, gelu_new, untied, LM head bias, no attention biases
        let err = gptj("").unwrap_err().to_string();
        assert!(err.contains("rotary_dim"), "{err}");
        let c = gptj(r#""rotary_dim": 8"#).unwrap();
        assert_eq!((c.arch, c.model_type.as_str()), (Arch::Gpt2, "gptj"));
        assert_eq!(
            (c.rotary_dim(), c.max_context, c.intermediate_size),
            (8, 2048, 256)
        );
        assert!(c.rope_interleaved && c.parallel_residual && !c.has_mlp_norm());
        assert!(!c.attention_bias && !c.o_proj_bias && c.mlp_bias && c.lm_head_bias);
        assert!(!c.tie_word_embeddings && !c.learned_positions());
        assert_eq!(c.mlp_activation, MlpActivation::GeluTanh);
        // null: the whole head
        let c = gptj(r#""rotary_dim": null"#).unwrap();
        assert_eq!(c.rotary_dim(), 16);
        let err = gptj(r#""rotary_dim": 7"#).unwrap_err().to_string();
        assert!(err.contains("rotary_dim"), "{err}");
        // the embedded GPT-J 6B: 6.05 B parameters as transformers counts them
        let m = crate::model::registry::find("gpt-j-6b").unwrap();
        let c = ModelConfig::from_json_str(m.config, "gpt-j-6b").unwrap();
        assert_eq!(c.num_parameters(), 6_050_882_784);
        assert_eq!((c.head_dim, c.rotary_dim()), (256, 64));
    }

    #[test]
    fn starcoder2_is_gpt2s_block_with_rope_and_a_window() {
        let c = parse("starcoder2", r#""sliding_window": 64"#).unwrap();
        assert_eq!((c.arch, c.model_type.as_str()), (Arch::Gpt2, "starcoder2"));
        assert!(!c.parallel_residual && !c.lm_head_bias && !c.learned_positions());
        // Starcoder2Config's defaults: biases (use_bias), tied, full rotary, eps 1e-5
        assert!(c.attention_bias && c.o_proj_bias && c.mlp_bias && c.tie_word_embeddings);
        assert_eq!((c.rotary_dim(), c.head_dim, c.norm_eps), (16, 16, 1e-5));
        assert_eq!((c.sliding_window, c.sliding_layers.len()), (Some(64), 4));
        let c = parse("starcoder2", r#""use_bias": false, "sliding_window": null"#).unwrap();
        assert!(!c.attention_bias && !c.o_proj_bias && !c.mlp_bias);
        assert_eq!(c.sliding_window, None);
        // without biases, a layer has the four LayerNorm vectors and nothing else besides weights
        let with = parse("starcoder2", "").unwrap();
        assert_eq!(
            with.num_parameters() - c.num_parameters(),
            4 * (64 + 2 * 32 + 64 + 128 + 64)
        );
        let err = parse("starcoder2", r#""partial_rotary_factor": 0.5"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("partial_rotary_factor"), "{err}");
        // the embedded StarCoder2 3B: 3.03 B parameters as published (tied)
        let m = crate::model::registry::find("starcoder2-3b").unwrap();
        let c = ModelConfig::from_json_str(m.config, "starcoder2-3b").unwrap();
        assert_eq!(c.num_parameters(), 3_030_371_328);
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.sliding_window),
            (128, 2, Some(4096))
        );
    }

    #[test]
    fn granite_scalars_default_to_one_and_are_read_only_for_granite() {
        let c = parse("granite", "").unwrap();
        assert_eq!(
            (c.embed_scale, c.residual_scale, c.logits_divisor),
            (None, None, None)
        );
        // GraniteConfig's attention_multiplier defaults to 1, not head_dim^-1/2
        assert_eq!(c.attn_scale, 1.0);
        let scalars = r#""embedding_multiplier": 12, "residual_multiplier": 0.22,
            "attention_multiplier": 0.0078125, "logits_scaling": 16"#;
        let c = parse("granite", scalars).unwrap();
        assert_eq!(
            (c.embed_scale, c.residual_scale, c.logits_divisor),
            (Some(12.0), Some(0.22), Some(16.0))
        );
        assert_eq!(c.attn_scale, 0.0078125);
        // LlamaConfig has none of them
        let c = parse("llama", scalars).unwrap();
        assert_eq!(
            (c.embed_scale, c.residual_scale, c.logits_divisor),
            (None, None, None)
        );
        assert_eq!(c.attn_scale, 1.0 / 4.0);
        for field in ["embedding_multiplier", "logits_scaling"] {
            for bad in ["0", "-2", "\"2\""] {
                let err = parse("granite", &format!(r#""{field}": {bad}"#))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(field), "{field} {bad}: {err}");
            }
        }
        // the embedded Granite 3.1 2B and 8B: 2.53 B and 8.17 B parameters as published
        for (name, params, divisor) in [
            ("granite-3.1-2b", 2_533_531_648, 8.0),
            ("granite-3.1-8b", 8_170_848_256, 16.0),
        ] {
            let m = crate::model::registry::find(name).unwrap();
            let c = ModelConfig::from_json_str(m.config, name).unwrap();
            assert_eq!(c.num_parameters(), params, "{name}");
            assert_eq!(
                (c.embed_scale, c.logits_divisor),
                (Some(12.0), Some(divisor))
            );
            assert!(c.tie_word_embeddings && !c.attention_bias && c.sliding_window.is_none());
        }
    }

    #[test]
    fn partial_rotary_embeddings_are_refused_but_for_phi3() {
        for (model_type, extra, field) in [
            (
                "llama",
                r#""partial_rotary_factor": 0.75"#,
                "partial_rotary_factor",
            ),
            (
                "llama",
                r#""rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}"#,
                "rope_parameters.partial_rotary_factor",
            ),
            (
                "gemma3_text",
                r#""partial_rotary_factor": 0.5"#,
                "partial_rotary_factor",
            ),
        ] {
            let err = parse(model_type, extra).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("full rotary"), "{err}");
        }
        assert!(parse("llama", r#""partial_rotary_factor": 1.0"#).is_ok());
    }

    /// Phi-3's RoPE as transformers 5.25's Phi3Config and `_compute_longrope_parameters` resolve
    /// it (head_dim 16 here): longrope under its three names, the original context from the top
    /// level (4096 when absent), the attention factor, the partial rotary width, and errors that
    /// name the field.
    #[test]
    fn phi3_longrope_and_partial_rotary_resolve_as_transformers() {
        let ones = |n: usize| format!("[{}]", vec!["1.0"; n].join(", "));
        let longrope = |extra: &str| -> (Vec<f32>, Vec<f32>, usize, f32, Option<usize>) {
            let c = parse("phi3", extra).unwrap();
            match c.rope.unwrap().scaling {
                RopeScaling::LongRope {
                    short_factor,
                    long_factor,
                    original_max_position_embeddings,
                    attention_factor,
                } => (
                    short_factor,
                    long_factor,
                    original_max_position_embeddings,
                    attention_factor,
                    c.partial_rotary_dim,
                ),
                other => panic!("{other:?}"),
            }
        };
        let eight: Vec<f32> = (1..=8).map(|i| i as f32).collect();
        for (field, kind) in [
            ("rope_scaling", "longrope"),
            ("rope_scaling", "su"),
            ("rope_parameters", "yarn"),
        ] {
            let (short, long, original, attention, partial) = longrope(&format!(
                r#""{field}": {{"type": "{kind}", "short_factor": [1, 2, 3, 4, 5, 6, 7, 8],
                    "long_factor": {}}}"#,
                ones(8)
            ));
            assert_eq!((short, long), (eight.clone(), vec![1.0; 8]));
            // Phi3Config's original 4096; factor 32768 / 4096 = 8: sqrt(1 + ln 8 / ln 4096)
            assert_eq!((original, partial), (4096, None));
            assert!((attention - 1.25f32.sqrt()).abs() < 1e-7, "{attention}");
        }
        // the top level's original context; the object's factor wins over the ratio
        let (_, _, original, attention, _) = longrope(&format!(
            r#""original_max_position_embeddings": 1024, "rope_scaling": {{"type": "longrope",
                "factor": 2.0, "short_factor": {0}, "long_factor": {0}}}"#,
            ones(8)
        ));
        assert_eq!(original, 1024);
        assert!((attention - 1.1f32.sqrt()).abs() < 1e-7, "{attention}");
        let (.., attention, _) = longrope(&format!(
            r#""rope_scaling": {{"type": "longrope", "attention_factor": 1.5,
                "short_factor": {0}, "long_factor": {0}}}"#,
            ones(8)
        ));
        assert_eq!(attention, 1.5);
        // Phi-4-mini style: 5.x rope_parameters with a partial rotary: factors per rotated pair
        let (short, .., partial) = longrope(&format!(
            r#""rope_parameters": {{"rope_type": "longrope", "partial_rotary_factor": 0.5,
                "rope_theta": 250000.0, "short_factor": {0}, "long_factor": {0}}}"#,
            ones(4)
        ));
        assert_eq!((short.len(), partial), (4, Some(8)));
        let c = parse("phi3", r#""partial_rotary_factor": 0.75"#).unwrap();
        assert_eq!((c.partial_rotary_dim, c.rotary_dim()), (Some(12), 12));
        assert_eq!(c.rope.unwrap().scaling, RopeScaling::Default);
        // int(16 · 0.3) = 4, as transformers truncates
        let c = parse("phi3", r#""partial_rotary_factor": 0.3"#).unwrap();
        assert_eq!(c.rotary_dim(), 4);
        assert_eq!(parse("phi3", "").unwrap().rotary_dim(), 16);
        // errors name the field
        let err = |extra: &str| parse("phi3", extra).unwrap_err().to_string();
        for (extra, field, says) in [
            (
                r#""partial_rotary_factor": 0.1875"#.to_string(),
                "partial_rotary_factor",
                "even",
            ),
            (
                r#""rope_parameters": {"partial_rotary_factor": 1.5}"#.to_string(),
                "rope_parameters.partial_rotary_factor",
                "(0, 1]",
            ),
            (
                format!(
                    r#""rope_scaling": {{"type": "longrope", "short_factor": {}, "long_factor": {}}}"#,
                    ones(8),
                    ones(7)
                ),
                "rope_scaling.long_factor",
                "7 numbers",
            ),
            (
                format!(
                    r#""rope_scaling": {{"type": "longrope", "short_factor": {}}}"#,
                    ones(8)
                ),
                "rope_scaling.long_factor",
                "required",
            ),
            (
                format!(
                    r#""rope_scaling": {{"type": "longrope", "short_factor": [1, 1, 1, -2, 1, 1, 1, 1],
                        "long_factor": {}}}"#,
                    ones(8)
                ),
                "rope_scaling.short_factor[3]",
                "positive",
            ),
            (
                r#""rope_scaling": {"type": "dynamic", "factor": 2.0}"#.to_string(),
                "rope_scaling.rope_type",
                "`dynamic` is not supported for phi3",
            ),
        ] {
            let e = err(&extra);
            assert!(e.contains(field) && e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn yarn_fields_resolve_as_transformers_resolves_them() {
        let yarn = |extra: &str| match parse("qwen3", extra).unwrap().rope.unwrap().scaling {
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            } => (
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            ),
            other => panic!("{other:?}"),
        };
        // defaults: betas 32/1, truncate, 0.1 ln(4) + 1
        let (f, o, bf, bs, t, a) = yarn(
            r#""rope_scaling": {"type": "yarn", "factor": 4.0,
                "original_max_position_embeddings": 8192}"#,
        );
        assert_eq!((f, o, bf, bs, t), (4.0, 8192, 32.0, 1.0, true));
        assert!((a - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        // a top-level original_max_position_embeddings wins; factor absent: the ratio
        let (f, o, ..) = yarn(
            r#""original_max_position_embeddings": 4096,
                "rope_scaling": {"rope_type": "yarn", "original_max_position_embeddings": 8192}"#,
        );
        assert_eq!((f, o), (8.0, 4096));
        // original absent everywhere: max_position_embeddings (factor 1: no attention factor)
        let (f, o, .., a) = yarn(r#""rope_parameters": {"rope_type": "yarn"}"#);
        assert_eq!((f, o, a), (1.0, 32768, 1.0));
        // an attention factor given wins over mscale; betas of 0 mean the defaults
        let (.., bf, bs, _, a) = yarn(
            r#""rope_parameters": {"rope_type": "yarn", "factor": 4, "attention_factor": 0.7,
                "mscale": 1, "mscale_all_dim": 1, "beta_fast": 0, "beta_slow": 0}"#,
        );
        assert_eq!((bf, bs, a), (32.0, 1.0, 0.7));
        // mscale / mscale_all_dim (DeepSeek style): equal ones cancel
        let (.., a) = yarn(
            r#""rope_parameters": {"rope_type": "yarn", "factor": 40, "mscale": 1,
                "mscale_all_dim": 1}"#,
        );
        assert_eq!(a, 1.0);
        let err = parse(
            "qwen3",
            r#""rope_scaling": {"rope_type": "yarn", "factor": -2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rope_scaling.factor"), "{err}");
    }

    #[test]
    fn sliding_windows_apply_to_the_layers_transformers_gives_them() {
        // (window, layers with it, max_context) of a 4-layer config
        let w = |model_type: &str, extra: &str| {
            let c = parse(model_type, extra).unwrap();
            let per_layer: Vec<Option<usize>> = (0..4).map(|i| c.layer_window(i)).collect();
            assert_eq!(c.max_context, 32768, "the window never caps the context");
            (c.sliding_window, c.sliding_layers, per_layer)
        };
        let all = vec![0, 1, 2, 3];
        // Mistral and Phi-3: sliding_window on every layer; null or absent: none; layer_types
        // ignored (as MistralModel does)
        for t in ["mistral", "phi3"] {
            let (win, layers, per) = w(t, r#""sliding_window": 4096"#);
            assert_eq!((win, &layers), (Some(4096), &all), "{t}");
            assert_eq!(per, vec![Some(4096); 4]);
            for extra in [r#""sliding_window": null"#, ""] {
                assert_eq!(w(t, extra), (None, vec![], vec![None; 4]), "{t} {extra}");
            }
            let (win, layers, _) = w(
                t,
                r#""sliding_window": 64, "layer_types": ["full_attention", "full_attention",
                    "full_attention", "full_attention"]"#,
            );
            assert_eq!((win, layers), (Some(64), all.clone()), "{t}");
        }
        // Qwen2 and Qwen3 (transformers 4.x style): only under use_sliding_window, on the layers
        // from max_window_layers (default 28) on
        for t in ["qwen2", "qwen3"] {
            let off = (None, vec![], vec![None; 4]);
            assert_eq!(
                w(t, r#""sliding_window": 4096, "use_sliding_window": false"#),
                off
            );
            assert_eq!(w(t, r#""sliding_window": 4096"#), off);
            assert_eq!(
                w(t, r#""sliding_window": 4096, "use_sliding_window": true"#),
                off
            );
            assert_eq!(
                w(
                    t,
                    r#""sliding_window": 4096, "use_sliding_window": true, "max_window_layers": 4"#
                ),
                off
            );
            assert_eq!(
                w(
                    t,
                    r#""sliding_window": 4096, "use_sliding_window": true, "max_window_layers": 2"#
                ),
                (
                    Some(4096),
                    vec![2, 3],
                    vec![None, None, Some(4096), Some(4096)]
                )
            );
            // transformers 5.x: layer_types decide which layers, use_sliding_window whether
            assert_eq!(
                w(
                    t,
                    r#""sliding_window": 2048, "use_sliding_window": true, "max_window_layers": 0,
                    "layer_types": ["full_attention", "sliding_attention", "full_attention",
                    "sliding_attention"]"#
                ),
                (
                    Some(2048),
                    vec![1, 3],
                    vec![None, Some(2048), None, Some(2048)]
                )
            );
            assert_eq!(
                w(
                    t,
                    r#""sliding_window": 2048,
                    "layer_types": ["full_attention", "sliding_attention", "full_attention",
                    "sliding_attention"]"#
                ),
                off
            );
        }
        // bad layer_types name the field
        let e = parse(
            "qwen2",
            r#""sliding_window": 8, "use_sliding_window": true, "layer_types": ["full_attention"]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("layer_types") && e.contains("1 entries for 4 layers"),
            "{e}"
        );
        let e = parse(
            "qwen3",
            r#""sliding_window": 8, "use_sliding_window": true,
            "layer_types": ["full_attention", "local", "full_attention", "full_attention"]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("layer_types[1]"), "{e}");
        assert!(parse("mistral", r#""sliding_window": 0"#).is_err());
        // llama has no window
        assert_eq!(
            w("llama", r#""sliding_window": 4096"#),
            (None, vec![], vec![None; 4])
        );
    }

    #[test]
    fn the_kv_window_is_set_only_when_every_layer_slides() {
        let kv = |model_type: &str, extra: &str| parse(model_type, extra).unwrap().kv_window();
        assert_eq!(kv("mistral", r#""sliding_window": 4096"#), Some(4096));
        assert_eq!(kv("phi3", r#""sliding_window": 2047"#), Some(2047));
        assert_eq!(kv("mistral", r#""sliding_window": null"#), None);
        assert_eq!(kv("llama", r#""sliding_window": 4096"#), None);
        let qwen = r#""sliding_window": 512, "use_sliding_window": true, "max_window_layers": "#;
        assert_eq!(kv("qwen2", &format!("{qwen}0")), Some(512));
        assert_eq!(
            kv("qwen2", &format!("{qwen}1")),
            None,
            "layer 0 attends to all"
        );
        // Gemma 2 and 3 keep full-attention layers: Gemma 2's odd ones, Gemma 3's every
        // sliding_window_pattern-th (of 4 layers, the pattern 6 leaves none: all four slide)
        assert_eq!(kv("gemma2", r#""sliding_window": 4096"#), None);
        let gemma3 = r#""sliding_window": 512, "sliding_window_pattern": "#;
        assert_eq!(kv("gemma3_text", &format!("{gemma3}2")), None);
        assert_eq!(kv("gemma3_text", &format!("{gemma3}6")), Some(512));
        // unless every layer slides
        let all_sliding = r#""sliding_window": 64, "layer_types": ["sliding_attention",
            "sliding_attention", "sliding_attention", "sliding_attention"]"#;
        assert_eq!(kv("gemma3_text", all_sliding), Some(64));
    }

    #[test]
    fn bad_sliding_window_fields_name_the_field() {
        let err = |model_type: &str, extra: &str| parse(model_type, extra).unwrap_err().to_string();
        let e = err("mistral", r#""sliding_window": 0"#);
        assert!(
            e.contains("sliding_window") && e.contains("positive"),
            "{e}"
        );
        let e = err("mistral", r#""sliding_window": "big""#);
        assert!(e.contains("sliding_window"), "{e}");
        let e = err("qwen2", r#""layer_types": "sliding_attention""#);
        assert!(e.contains("layer_types") && e.contains("array"), "{e}");
        let e = err(
            "qwen2",
            r#""use_sliding_window": true, "sliding_window": null, "layer_types":
            ["sliding_attention", "full_attention", "full_attention", "full_attention"]"#,
        );
        assert!(
            e.contains("sliding_window") && e.contains("required"),
            "{e}"
        );
        let e = err("qwen2", r#""use_sliding_window": 1"#);
        assert!(e.contains("use_sliding_window"), "{e}");
        let e = err("mamba", "");
        assert!(e.contains("qwen2") && e.contains("mistral"), "{e}");
    }
}
