//! `config.json` of a Hugging Face model directory, parsed into one architecture-neutral [`ModelConfig`].
//!
//! Supported families: `gpt2` and `llama`. Both config styles found in the wild are read:
//! transformers 4.x (`rope_theta` + `rope_scaling`) and 5.x (`rope_parameters`). Fields are read one by
//! one from a JSON value (not a derived struct) so that every error names the field at fault.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2", "llama"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Learned positions, LayerNorm, fused QKV with bias, gelu_new MLP, tied LM head.
    Gpt2,
    /// RoPE, RMSNorm, grouped-query attention, SiLU-gated MLP.
    Llama,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RopeConfig {
    pub theta: f32,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    /// Longest sequence (prompt + output) the model supports.
    pub max_context: usize,
    pub norm_eps: f32,
    /// `None` for GPT-2 (learned absolute positions).
    pub rope: Option<RopeConfig>,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// Attention scores are multiplied by this (1/sqrt(head_dim) unless GPT-2's `scale_attn_weights` is off).
    pub attn_scale: f32,
    /// GPT-2's `scale_attn_by_inverse_layer_idx`: layer i additionally divides scores by i + 1.
    pub scale_attn_by_inverse_layer_idx: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written in the config, informational.
    pub stored_dtype: Option<String>,
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
            "gpt2" => parse_gpt2(&f)?,
            "llama" => parse_llama(&f)?,
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
        let (mlp, norms, biases) = match self.arch {
            Arch::Gpt2 => (
                2 * h * self.intermediate_size,
                4 * h,
                self.q_size() + 2 * self.kv_size() + h + self.intermediate_size + h,
            ),
            Arch::Llama => (
                3 * h * self.intermediate_size,
                2 * h,
                usize::from(self.attention_bias) * (self.q_size() + 2 * self.kv_size() + h)
                    + usize::from(self.mlp_bias) * (2 * self.intermediate_size + h),
            ),
        };
        let per_layer = qkv + o + mlp + norms + biases;
        let embed = self.vocab_size * h;
        let positions = if self.arch == Arch::Gpt2 {
            self.max_context * h
        } else {
            0
        };
        let head = if self.tie_word_embeddings { 0 } else { embed };
        let final_norm = if self.arch == Arch::Gpt2 { 2 * h } else { h };
        embed + positions + self.num_layers * per_layer + final_norm + head
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

fn parse_gpt2(f: &Fields) -> Result<ModelConfig> {
    let hidden = f.req_usize("n_embd")?;
    let heads = f.req_usize("n_head")?;
    if heads == 0 || hidden % heads != 0 {
        return Err(Error::config(
            f.file,
            "n_head",
            format!("{heads} does not divide n_embd {hidden}"),
        ));
    }
    let act = f
        .opt_str("activation_function")?
        .unwrap_or_else(|| "gelu_new".into());
    if !matches!(act.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
        return Err(Error::config(
            f.file,
            "activation_function",
            format!("`{act}` is not supported (supported: gelu_new, gelu_pytorch_tanh)"),
        ));
    }
    if f.opt_bool("add_cross_attention")?.unwrap_or(false) {
        return Err(Error::config(
            f.file,
            "add_cross_attention",
            "cross-attention (encoder-decoder GPT-2) is not supported",
        ));
    }
    let head_dim = hidden / heads;
    let scale_weights = f.opt_bool("scale_attn_weights")?.unwrap_or(true);
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: f.req_usize("n_layer")?,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim,
        intermediate_size: f.opt_usize("n_inner")?.unwrap_or(4 * hidden),
        max_context: f.req_usize("n_positions")?,
        norm_eps: f.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5),
        rope: None,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(true),
        attention_bias: true,
        mlp_bias: true,
        attn_scale: if scale_weights {
            1.0 / (head_dim as f32).sqrt()
        } else {
            1.0
        },
        scale_attn_by_inverse_layer_idx: f
            .opt_bool("scale_attn_by_inverse_layer_idx")?
            .unwrap_or(false),
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

fn parse_llama(f: &Fields) -> Result<ModelConfig> {
    let hidden = f.req_usize("hidden_size")?;
    let heads = f.req_usize("num_attention_heads")?;
    let kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(heads);
    let head_dim = match f.opt_usize("head_dim")? {
        Some(d) => d,
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
            format!("`{act}` is not supported for llama (supported: silu)"),
        ));
    }
    if f.opt_usize("pretraining_tp")?.unwrap_or(1) != 1 {
        return Err(Error::config(
            f.file,
            "pretraining_tp",
            "only 1 is supported (as transformers does at inference)",
        ));
    }
    Ok(ModelConfig {
        arch: Arch::Llama,
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size: hidden,
        num_layers: f.req_usize("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        intermediate_size: f.req_usize("intermediate_size")?,
        max_context: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        norm_eps: f.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
        rope: Some(parse_rope(f)?),
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias: f.opt_bool("attention_bias")?.unwrap_or(false),
        mlp_bias: f.opt_bool("mlp_bias")?.unwrap_or(false),
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        scale_attn_by_inverse_layer_idx: false,
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_ids: f.token_list("eos_token_id")?,
        stored_dtype: f.stored_dtype()?,
    })
}

/// RoPE from either style: 5.x `rope_parameters` {rope_type, rope_theta, ...}, or 4.x top-level
/// `rope_theta` with an optional `rope_scaling` {rope_type | type, factor, ...}.
fn parse_rope(f: &Fields) -> Result<RopeConfig> {
    let (params, field) = match f.obj.get("rope_parameters") {
        Some(Value::Object(p)) => (Some(p), "rope_parameters"),
        Some(Value::Null) | None => match f.obj.get("rope_scaling") {
            Some(Value::Object(p)) => (Some(p), "rope_scaling"),
            Some(Value::Null) | None => (None, "rope_scaling"),
            Some(_) => return Err(Error::config(f.file, "rope_scaling", "expected an object")),
        },
        Some(_) => {
            return Err(Error::config(
                f.file,
                "rope_parameters",
                "expected an object",
            ))
        }
    };
    let top_theta = f.opt_f32("rope_theta")?;
    let Some(p) = params else {
        return Ok(RopeConfig {
            theta: top_theta.unwrap_or(10_000.0),
            scaling: RopeScaling::Default,
        });
    };
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
        None => top_theta.unwrap_or(10_000.0),
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
                format!("`{other}` is not supported (supported: default, linear, llama3)"),
            ))
        }
    };
    Ok(RopeConfig { theta, scaling })
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
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
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
