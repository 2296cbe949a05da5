//! The forward pass of both families, written once against the `Backend` trait.
//!
//! One call processes a flattened variable-length batch (prefill chunks and decode tokens mixed),
//! writes the new tokens' K/V into the paged cache, and returns logits for the requested rows.

use std::sync::Mutex;

use super::config::{Arch, ModelConfig};
use super::rope::cos_sin_table;
use super::tensor_store::HostTensor;
use super::weights::ModelWeights;
use crate::backend::{Backend, BatchMeta, KvGeometry};
use crate::error::{Error, Result};

/// The paged KV cache of every layer, in backend memory.
pub struct KvCache<B: Backend> {
    pub geom: KvGeometry,
    /// per layer: [num_blocks, block_size, num_kv_heads, head_dim]
    pub k: Vec<B::Buffer>,
    /// per layer: [num_blocks, block_size, num_kv_heads, head_dim]
    pub v: Vec<B::Buffer>,
}

impl<B: Backend> KvCache<B> {
    /// Bytes of one block across all layers, K and V, at `elem_bytes` per element.
    pub fn block_bytes(cfg: &ModelConfig, block_size: usize, elem_bytes: usize) -> usize {
        2 * cfg.num_layers * block_size * cfg.kv_size() * elem_bytes
    }
}

/// Activation buffers, grown to the largest batch seen and reused.
struct Workspace<B: Backend> {
    tokens: usize,
    logits_rows: usize,
    /// [tokens, hidden] residual stream
    x: B::Buffer,
    /// [tokens, hidden] normalised input of the current sub-layer
    xn: B::Buffer,
    /// [tokens, q_size + 2 * kv_size]
    qkv: B::Buffer,
    /// [tokens, q_size]
    attn: B::Buffer,
    /// [tokens, hidden] output of o_proj / down_proj
    delta: B::Buffer,
    /// [tokens, up_rows]
    up: B::Buffer,
    /// [tokens, intermediate] (Llama: silu(gate) * up)
    act: B::Buffer,
    /// [logits_rows, hidden]
    last: B::Buffer,
    /// [logits_rows, vocab]
    logits: B::Buffer,
}

pub struct Model<B: Backend> {
    pub config: ModelConfig,
    pub backend: B,
    weights: ModelWeights<B::Buffer>,
    /// [max_context, head_dim] (Llama only)
    cos_sin: Option<B::Buffer>,
    workspace: Mutex<Option<Workspace<B>>>,
}

impl<B: Backend> Model<B> {
    /// Upload host weights to the backend.
    pub fn new(backend: B, config: ModelConfig, weights: ModelWeights<HostTensor>) -> Result<Self> {
        let weights = weights.try_map(|t| backend.upload(&t))?;
        let cos_sin = match &config.rope {
            Some(rope) => {
                let table = cos_sin_table(rope, config.head_dim, config.max_context);
                Some(backend.upload(&HostTensor::new(
                    vec![config.max_context, config.head_dim],
                    table,
                ))?)
            }
            None => None,
        };
        Ok(Self {
            config,
            backend,
            weights,
            cos_sin,
            workspace: Mutex::new(None),
        })
    }

    pub fn kv_geometry(&self, num_blocks: usize, block_size: usize) -> KvGeometry {
        KvGeometry {
            num_blocks,
            block_size,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Allocate a zeroed paged KV cache of `num_blocks` blocks of `block_size` tokens.
    pub fn alloc_kv(&self, num_blocks: usize, block_size: usize) -> Result<KvCache<B>> {
        if num_blocks == 0 || block_size == 0 {
            return Err(Error::Invalid(
                "the KV cache needs at least one block of at least one token".into(),
            ));
        }
        let geom = self.kv_geometry(num_blocks, block_size);
        let mut k = Vec::with_capacity(self.config.num_layers);
        let mut v = Vec::with_capacity(self.config.num_layers);
        for _ in 0..self.config.num_layers {
            k.push(self.backend.zeros(geom.layer_len())?);
            v.push(self.backend.zeros(geom.layer_len())?);
        }
        Ok(KvCache { geom, k, v })
    }

    fn workspace_for(&self, tokens: usize, logits_rows: usize) -> Result<Workspace<B>> {
        let c = &self.config;
        let up_rows = match c.arch {
            Arch::Gpt2 => c.intermediate_size,
            Arch::Llama => 2 * c.intermediate_size,
        };
        let b = &self.backend;
        Ok(Workspace {
            tokens,
            logits_rows,
            x: b.zeros(tokens * c.hidden_size)?,
            xn: b.zeros(tokens * c.hidden_size)?,
            qkv: b.zeros(tokens * (c.q_size() + 2 * c.kv_size()))?,
            attn: b.zeros(tokens * c.q_size())?,
            delta: b.zeros(tokens * c.hidden_size)?,
            up: b.zeros(tokens * up_rows)?,
            act: b.zeros(tokens * c.intermediate_size)?,
            last: b.zeros(logits_rows * c.hidden_size)?,
            logits: b.zeros(logits_rows * c.vocab_size)?,
        })
    }

    /// Run one step. Returns logits `[meta.num_logits(), vocab]` on the host, row i for batch row
    /// `meta.logits_indices[i]`.
    pub fn forward(&self, meta: &BatchMeta, kv: &mut KvCache<B>) -> Result<Vec<f32>> {
        let c = &self.config;
        if let Some(&p) = meta.positions.iter().max() {
            if p as usize >= c.max_context {
                return Err(Error::Invalid(format!(
                    "position {p} exceeds the model context of {} tokens",
                    c.max_context
                )));
            }
        }
        let t = meta.num_tokens();
        let l = meta.num_logits();
        if t == 0 {
            return Ok(Vec::new());
        }
        let dev_meta = self.backend.prepare(meta, &kv.geom)?;
        let mut guard = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        if guard
            .as_ref()
            .is_none_or(|w| w.tokens < t || w.logits_rows < l)
        {
            let (old_t, old_l) = guard.as_ref().map_or((0, 0), |w| (w.tokens, w.logits_rows));
            *guard = Some(self.workspace_for(t.max(old_t), l.max(old_l).max(1))?);
        }
        let ws = guard.as_mut().expect("workspace allocated above");
        self.run_layers(ws, &dev_meta, t, kv)?;
        let b = &self.backend;
        let h = c.hidden_size;
        b.gather_logit_rows(&mut ws.last, &ws.xn, &dev_meta, h)?;
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        b.linear(&mut ws.logits, &ws.last, head, None, l, c.vocab_size, h)?;
        b.download(&ws.logits, l * c.vocab_size)
    }

    /// Embedding, every layer and the final norm; leaves the final-normed hidden states in `ws.xn`.
    fn run_layers(
        &self,
        ws: &mut Workspace<B>,
        meta: &B::Meta,
        t: usize,
        kv: &mut KvCache<B>,
    ) -> Result<()> {
        let c = &self.config;
        let b = &self.backend;
        let w = &self.weights;
        let h = c.hidden_size;
        let qkv_n = c.q_size() + 2 * c.kv_size();
        let inter = c.intermediate_size;
        let eps = c.norm_eps;
        b.embedding(&mut ws.x, &w.embed, w.positions.as_ref(), meta, h)?;
        for (i, layer) in w.layers.iter().enumerate() {
            // --- attention sub-layer ---
            match c.arch {
                Arch::Gpt2 => {
                    let bias = layer.attn_norm.bias.as_ref().expect("layernorm bias");
                    b.layernorm(&mut ws.xn, &ws.x, &layer.attn_norm.weight, bias, t, h, eps)?;
                }
                Arch::Llama if i == 0 => {
                    b.rmsnorm(&mut ws.xn, &ws.x, &layer.attn_norm.weight, t, h, eps)?;
                }
                // the previous layer's MLP output is added and normalised in one fused op
                Arch::Llama => b.add_rmsnorm(
                    &mut ws.x,
                    &ws.delta,
                    &mut ws.xn,
                    &layer.attn_norm.weight,
                    t,
                    h,
                    eps,
                )?,
            }
            b.linear(
                &mut ws.qkv,
                &ws.xn,
                &layer.qkv.weight,
                layer.qkv.bias.as_ref(),
                t,
                qkv_n,
                h,
            )?;
            if let Some(cos_sin) = &self.cos_sin {
                b.rope(
                    &mut ws.qkv,
                    cos_sin,
                    meta,
                    c.num_heads,
                    c.num_kv_heads,
                    c.head_dim,
                )?;
            }
            b.write_kv(
                &mut kv.k[i],
                &mut kv.v[i],
                &ws.qkv,
                meta,
                &kv.geom,
                c.num_heads,
            )?;
            let scale = if c.scale_attn_by_inverse_layer_idx {
                c.attn_scale / (i + 1) as f32
            } else {
                c.attn_scale
            };
            b.attention(
                &mut ws.attn,
                &ws.qkv,
                &kv.k[i],
                &kv.v[i],
                meta,
                &kv.geom,
                c.num_heads,
                scale,
            )?;
            b.linear(
                &mut ws.delta,
                &ws.attn,
                &layer.o.weight,
                layer.o.bias.as_ref(),
                t,
                h,
                c.q_size(),
            )?;
            // --- MLP sub-layer ---
            match c.arch {
                Arch::Gpt2 => {
                    b.add_inplace(&mut ws.x, &ws.delta, t * h)?;
                    let bias = layer.mlp_norm.bias.as_ref().expect("layernorm bias");
                    b.layernorm(&mut ws.xn, &ws.x, &layer.mlp_norm.weight, bias, t, h, eps)?;
                    b.linear(
                        &mut ws.up,
                        &ws.xn,
                        &layer.up.weight,
                        layer.up.bias.as_ref(),
                        t,
                        inter,
                        h,
                    )?;
                    b.gelu_new(&mut ws.up, t * inter)?;
                    b.linear(
                        &mut ws.delta,
                        &ws.up,
                        &layer.down.weight,
                        layer.down.bias.as_ref(),
                        t,
                        h,
                        inter,
                    )?;
                    b.add_inplace(&mut ws.x, &ws.delta, t * h)?;
                }
                Arch::Llama => {
                    b.add_rmsnorm(
                        &mut ws.x,
                        &ws.delta,
                        &mut ws.xn,
                        &layer.mlp_norm.weight,
                        t,
                        h,
                        eps,
                    )?;
                    b.linear(
                        &mut ws.up,
                        &ws.xn,
                        &layer.up.weight,
                        layer.up.bias.as_ref(),
                        t,
                        2 * inter,
                        h,
                    )?;
                    b.silu_mul(&mut ws.act, &ws.up, t, inter)?;
                    b.linear(
                        &mut ws.delta,
                        &ws.act,
                        &layer.down.weight,
                        layer.down.bias.as_ref(),
                        t,
                        h,
                        inter,
                    )?;
                }
            }
        }
        match c.arch {
            Arch::Gpt2 => {
                let bias = w.final_norm.bias.as_ref().expect("layernorm bias");
                b.layernorm(&mut ws.xn, &ws.x, &w.final_norm.weight, bias, t, h, eps)?;
            }
            Arch::Llama => b.add_rmsnorm(
                &mut ws.x,
                &ws.delta,
                &mut ws.xn,
                &w.final_norm.weight,
                t,
                h,
                eps,
            )?,
        }
        Ok(())
    }
}
