//! The forward pass of both families, written once against the `Backend` trait.
//!
//! One call processes a flattened variable-length batch (prefill chunks and decode tokens mixed),
//! writes the new tokens' K/V into the paged cache, and returns logits for the requested rows.
//! Decode steps are replayed from recorded graphs where the backend can record them
//! (`model::graphs`); every other step runs its ops one by one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::config::{Arch, MlpActivation, ModelConfig, RopeConfig};
use super::graphs::{self, GraphKey, GraphStats, StepGraphs};
use super::rope::cos_sin_table;
use super::tensor_store::HostTensor;
use super::weights::{Mlp, ModelWeights};
use crate::backend::{AttentionSpec, Backend, BatchMeta, KvGeometry, MoeRouting, MoeScratch};
use crate::engine::sampling::{self, TokenBan, TokenDraw};
use crate::error::{Error, Result};
use crate::kv::KvLayout;

/// The paged KV cache of every layer, in backend memory: one K and one V tensor per slot of its
/// [`KvLayout`], layer l in slot `layout.slot_of(l)` through its group's block tables.
pub struct KvCache<B: Backend> {
    /// Unique per allocation: recorded graphs are bound to the cache they write.
    pub id: u64,
    pub geom: KvGeometry,
    pub layout: KvLayout,
    /// per slot: [num_blocks, block_size, num_kv_heads, head_dim]
    pub k: Vec<B::Buffer>,
    /// per slot: [num_blocks, block_size, num_kv_heads, head_dim]
    pub v: Vec<B::Buffer>,
}

/// Bytes of one KV block, K and V, across the `slots` layers a block spans (`KvLayout::slots`:
/// every layer in the plain layout), at `elem_bytes` per element. Every pool sizing uses it
/// (`--kv-memory`, serve, the CUDA memory plan).
pub fn kv_block_bytes(
    cfg: &ModelConfig,
    slots: usize,
    block_size: usize,
    elem_bytes: usize,
) -> usize {
    2 * slots * block_size * cfg.kv_size() * elem_bytes
}

/// Ids of KV caches and workspaces (recorded graphs are bound to both).
static NEXT_ALLOCATION_ID: AtomicU64 = AtomicU64::new(1);

fn next_allocation_id() -> u64 {
    NEXT_ALLOCATION_ID.fetch_add(1, Ordering::Relaxed)
}

/// Activation buffers, grown to the largest batch seen and reused.
struct Workspace<B: Backend> {
    /// Unique per allocation (a grown workspace is a new one).
    id: u64,
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
    /// [tokens, hidden] `delta` normalised again (sandwich norms only; one element otherwise)
    normed: B::Buffer,
    /// [tokens, up_rows]
    up: B::Buffer,
    /// [tokens, intermediate] (Llama: silu(gate) * up)
    act: B::Buffer,
    /// Mixture-of-experts models: the router's logits and the experts' rows
    moe: Option<MoeWorkspace<B>>,
    /// [logits_rows, hidden]
    last: B::Buffer,
    /// [logits_rows, vocab]
    logits: B::Buffer,
}

/// A MoE layer's buffers, for steps of up to `tokens` tokens.
struct MoeWorkspace<B: Backend> {
    /// [tokens, num_experts]
    router_logits: B::Buffer,
    /// [tokens · top_k, …]: see [`MoeScratch`]
    scratch: MoeScratch<B::Buffer>,
}

pub struct Model<B: Backend> {
    /// One step at a time: the workspace and the graphs that point into it. First, so it drops
    /// first: the graphs go before the weights and the backend (its modules, its cuBLAS
    /// workspace) they point into.
    state: Mutex<StepState<B>>,
    pub config: ModelConfig,
    pub backend: B,
    weights: ModelWeights<B::Buffer>,
    /// [max_context, rotary_dim] (Llama only; rotary_dim = head_dim but for a partial rotary)
    cos_sin: Option<B::Buffer>,
    /// [max_context, rotary_dim]: the sliding-window layers' own table (Gemma 3)
    cos_sin_local: Option<B::Buffer>,
}

struct StepState<B: Backend> {
    workspace: Option<Workspace<B>>,
    graphs: StepGraphs<B>,
}

impl<B: Backend> Model<B> {
    /// Upload host weights to the backend.
    pub fn new(backend: B, config: ModelConfig, weights: ModelWeights<HostTensor>) -> Result<Self> {
        let weights = weights.try_map(|t| backend.upload(&t))?;
        let backend_records = backend.can_capture();
        let table = |rope: &Option<RopeConfig>| -> Result<Option<B::Buffer>> {
            match rope {
                Some(rope) => {
                    let dim = config.rotary_dim();
                    let table = cos_sin_table(rope, dim, config.max_context);
                    Ok(Some(backend.upload(&HostTensor::new(
                        vec![config.max_context, dim],
                        table,
                    ))?))
                }
                None => Ok(None),
            }
        };
        let cos_sin = table(&config.rope)?;
        let cos_sin_local = table(&config.local_rope)?;
        let graphs = if backend_records && config.moe.is_some() {
            StepGraphs::unavailable(
                "mixture-of-experts layers route each step on the host (the experts' GEMM \
                 shapes depend on it), which a recorded graph cannot replay"
                    .into(),
            )
        } else {
            StepGraphs::new(backend_records)
        };
        Ok(Self {
            config,
            backend,
            weights,
            cos_sin,
            cos_sin_local,
            state: Mutex::new(StepState {
                workspace: None,
                graphs,
            }),
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

    /// Allocate a zeroed paged KV cache of `num_blocks` blocks of `block_size` tokens, every layer
    /// reading one block table (the plain layout: steps with one KV group).
    pub fn alloc_kv(&self, num_blocks: usize, block_size: usize) -> Result<KvCache<B>> {
        let layout = KvLayout::single(self.config.num_layers, None);
        self.alloc_kv_in(layout, num_blocks, block_size)
    }

    /// Allocate a zeroed paged KV cache of `num_blocks` blocks of `block_size` tokens laid out in
    /// `layout`'s groups (steps then carry a block table per group).
    pub fn alloc_kv_in(
        &self,
        layout: KvLayout,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<KvCache<B>> {
        if num_blocks == 0 || block_size == 0 {
            return Err(Error::Invalid(
                "the KV cache needs at least one block of at least one token".into(),
            ));
        }
        if layout.num_layers() != self.config.num_layers {
            return Err(Error::Invalid(format!(
                "a KV layout of {} layers for a model of {}",
                layout.num_layers(),
                self.config.num_layers
            )));
        }
        let geom = self.kv_geometry(num_blocks, block_size);
        let mut k = Vec::with_capacity(layout.slots());
        let mut v = Vec::with_capacity(layout.slots());
        for _ in 0..layout.slots() {
            k.push(self.backend.zeros(geom.layer_len())?);
            v.push(self.backend.zeros(geom.layer_len())?);
        }
        Ok(KvCache {
            id: next_allocation_id(),
            geom,
            layout,
            k,
            v,
        })
    }

    fn workspace_for(&self, tokens: usize, logits_rows: usize) -> Result<Workspace<B>> {
        let c = &self.config;
        let up_rows = match c.arch {
            Arch::Gpt2 => c.intermediate_size,
            Arch::Llama => 2 * c.intermediate_size,
        };
        let b = &self.backend;
        Ok(Workspace {
            id: next_allocation_id(),
            tokens,
            logits_rows,
            x: b.zeros(tokens * c.hidden_size)?,
            xn: b.zeros(tokens * c.hidden_size)?,
            qkv: b.zeros(tokens * (c.q_size() + 2 * c.kv_size()))?,
            attn: b.zeros(tokens * c.q_size())?,
            delta: b.zeros(tokens * c.hidden_size)?,
            normed: b.zeros(if c.sandwich_norms {
                tokens * c.hidden_size
            } else {
                1
            })?,
            // (a model whose every MLP is experts needs no dense rows: one element each)
            up: b.zeros(if c.has_dense_mlp() {
                tokens * up_rows
            } else {
                1
            })?,
            act: b.zeros(if c.has_dense_mlp() {
                tokens * c.intermediate_size
            } else {
                1
            })?,
            moe: match &c.moe {
                Some(m) => {
                    let choices = tokens * m.top_k;
                    let inter = m.expert_intermediate;
                    Some(MoeWorkspace {
                        router_logits: b.zeros(tokens * m.num_experts)?,
                        scratch: MoeScratch {
                            rows: b.zeros(choices * c.hidden_size)?,
                            gate_up: b.zeros(choices * 2 * inter)?,
                            act: b.zeros(choices * inter)?,
                            out: b.zeros(choices * c.hidden_size)?,
                        },
                    })
                }
                None => None,
            },
            last: b.zeros(logits_rows * c.hidden_size)?,
            logits: b.zeros(logits_rows * c.vocab_size)?,
        })
    }

    /// Replay decode steps from recorded graphs (CUDA graphs; on by default where the backend
    /// records). Off: every step runs its ops one by one (`--no-cuda-graphs`). A backend that
    /// cannot record ignores `true`.
    pub fn set_graphs(&self, on: bool) {
        let on = on && self.backend.can_capture() && self.config.moe.is_none();
        self.lock_state().graphs.set_enabled(on);
    }

    /// What the graphs did so far.
    pub fn graph_stats(&self) -> GraphStats {
        self.lock_state().graphs.stats().clone()
    }

    /// The keys recorded now (tests, logs).
    pub fn graph_keys(&self) -> Vec<GraphKey> {
        self.lock_state().graphs.keys()
    }

    /// Grow the activation workspace to `tokens` rows and `logits_rows` logits rows now, and the
    /// backend's own per-row buffers with it ([`Backend::reserve_rows`]), so that neither grows
    /// (and drops the recorded graphs) in the middle of a run. The engine reserves its step limits
    /// when it starts.
    pub fn reserve(&self, tokens: usize, logits_rows: usize) -> Result<()> {
        let mut st = self.lock_state();
        self.ensure_workspace(&mut st, tokens, logits_rows)?;
        self.backend.reserve_rows(tokens)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, StepState<B>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure_workspace(&self, st: &mut StepState<B>, t: usize, l: usize) -> Result<()> {
        if st
            .workspace
            .as_ref()
            .is_none_or(|w| w.tokens < t || w.logits_rows < l)
        {
            let (old_t, old_l) = st
                .workspace
                .as_ref()
                .map_or((0, 0), |w| (w.tokens, w.logits_rows));
            // free the old one first: both at once may not fit on a GPU
            st.workspace = None;
            st.workspace = Some(self.workspace_for(t.max(old_t), l.max(old_l).max(1))?);
        }
        Ok(())
    }

    /// Run one step. Returns logits `[meta.num_logits(), vocab]` on the host, row i for batch row
    /// `meta.logits_indices[i]`.
    pub fn forward(&self, meta: &BatchMeta, kv: &mut KvCache<B>) -> Result<Vec<f32>> {
        if meta.num_tokens() == 0 {
            return Ok(Vec::new());
        }
        let vocab = self.config.vocab_size;
        self.step(meta, kv, |b, logits, rows| b.download(logits, rows * vocab))
    }

    /// Run one step and pick one token per logits row: `draws[i]` for row i (row i of
    /// [`Model::forward`]'s logits), the `bans` counting as -inf. Picked on the device where the
    /// backend can ([`Backend::pick_tokens`]: only the tokens are copied back), else from the
    /// downloaded logits with [`sampling::pick_rows`]: the same tokens either way, up to the
    /// rounding noted in `kernels/sampling.cu`.
    pub fn forward_pick(
        &self,
        meta: &BatchMeta,
        kv: &mut KvCache<B>,
        draws: &[TokenDraw],
        bans: &[TokenBan],
    ) -> Result<Vec<u32>> {
        let l = meta.num_logits();
        if draws.len() != l {
            return Err(Error::Invalid(format!(
                "{} draws for a step with {l} logits rows",
                draws.len()
            )));
        }
        if let Some(ban) = bans.iter().find(|b| b.row as usize >= l) {
            return Err(Error::Invalid(format!(
                "a banned token for row {} of a step with {l} logits rows",
                ban.row
            )));
        }
        if meta.num_tokens() == 0 {
            return Ok(Vec::new());
        }
        let vocab = self.config.vocab_size;
        // a step without logits rows (prefill chunks that end short of their prompt) still runs:
        // it writes their K/V. It waits for the device like any other step, so that the step
        // ends when its work is done (its record's end time; an asynchronous error surfaces here)
        self.step(meta, kv, |b, logits, rows| {
            if rows == 0 {
                b.synchronize()?;
                return Ok(Vec::new());
            }
            if let Some(tokens) = b.pick_tokens(logits, vocab, &draws[..rows], bans)? {
                return Ok(tokens);
            }
            let mut host = b.download(logits, rows * vocab)?;
            Ok(sampling::pick_rows(&mut host, vocab, &draws[..rows], bans))
        })
    }

    /// Run one step (`meta` has tokens) and read its result with `finish(backend, logits,
    /// rows)`, where `logits` holds `[rows, vocab]` for `meta`'s logits rows (`finish` may
    /// change them: the next step rewrites them).
    fn step<R>(
        &self,
        meta: &BatchMeta,
        kv: &mut KvCache<B>,
        finish: impl FnOnce(&B, &mut B::Buffer, usize) -> Result<R>,
    ) -> Result<R> {
        let c = &self.config;
        if meta.num_kv_groups != kv.layout.num_groups() {
            return Err(Error::Invalid(format!(
                "a step with block tables for {} KV groups on a cache of {}",
                meta.num_kv_groups,
                kv.layout.num_groups()
            )));
        }
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
        let mut guard = self.lock_state();
        let st = &mut *guard;
        if st.graphs.enabled() {
            if let Some(key) = graphs::graph_key(meta) {
                return self.step_recorded(st, meta, key, kv, finish);
            }
        }
        st.graphs.count_eager();
        let dev_meta = self.backend.prepare(meta, &kv.geom)?;
        self.ensure_workspace(st, t, l)?;
        let ws = st
            .workspace
            .as_mut()
            .ok_or_else(|| Error::Invalid("no workspace".into()))?;
        self.run_step(ws, &dev_meta, t, l, kv)?;
        finish(&self.backend, &mut ws.logits, l)
    }

    /// A decode step through the graph of its key: replayed when recorded, else run eagerly,
    /// recorded and checked (`model::graphs`). A recording that fails, or whose check replay
    /// fails or differs from the eager run, turns graphs off: the step's result is the eager
    /// run's either way.
    fn step_recorded<R>(
        &self,
        st: &mut StepState<B>,
        meta: &BatchMeta,
        key: GraphKey,
        kv: &mut KvCache<B>,
        finish: impl FnOnce(&B, &mut B::Buffer, usize) -> Result<R>,
    ) -> Result<R> {
        let b = &self.backend;
        let vocab = self.config.vocab_size;
        let n = meta.num_seqs();
        // the embedding op checks token ids when it runs; a replay runs no op on the host
        if let Some(&bad) = meta.token_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let padded = graphs::pad_to_key(meta, key, kv.geom.block_size);
        self.ensure_workspace(st, key.batch, key.batch)?;
        let StepState { workspace, graphs } = st;
        let ws = workspace
            .as_mut()
            .ok_or_else(|| Error::Invalid("no workspace".into()))?;
        graphs.bind(kv.id, ws.id, b.graph_epoch());
        if let Some((dev_meta, graph)) = graphs.get_mut(key) {
            b.refill(dev_meta, &padded, &kv.geom)?;
            b.replay(graph)?;
            graphs.count_replay();
            return finish(b, &mut ws.logits, n);
        }
        // the key's first step: its eager run is the result; then record it and check the
        // recording by replaying the same step (idempotent: it rewrites the same K/V)
        graphs.count_eager();
        let dev_meta = b.prepare(&padded, &kv.geom)?;
        self.run_step(ws, &dev_meta, key.batch, key.batch, kv)?;
        // the check's reference, before `finish` (picking tokens bans some logits in place)
        let eager = b.download(&ws.logits, n * vocab)?;
        let result = finish(b, &mut ws.logits, n)?;
        // the eager run (and the finish) may have grown the backend's scratch buffers: record
        // against the new ones
        let epoch = b.graph_epoch();
        graphs.bind(kv.id, ws.id, epoch);
        let recorded = b.capture(&mut || self.run_step(ws, &dev_meta, key.batch, key.batch, kv));
        let what = format!(
            "a decode step of {} sequences (context bucket {})",
            key.batch, key.ctx
        );
        let graph = match recorded {
            Ok(g) => g,
            Err(e) => {
                graphs.disable(format!("recording {what} failed: {e}"));
                return Ok(result);
            }
        };
        // checked before the replay: a graph recorded against buffers reallocated meanwhile
        // would launch on freed memory
        if b.graph_epoch() != epoch {
            graphs.disable(format!(
                "the backend reallocated a buffer while recording {what}"
            ));
            return Ok(result);
        }
        let replayed = b
            .replay(&graph)
            .and_then(|()| b.download(&ws.logits, n * vocab));
        let replayed = match replayed {
            Ok(v) => v,
            Err(e) => {
                graphs.disable(format!("replaying the recording of {what} failed: {e}"));
                return Ok(result);
            }
        };
        let difference = graphs::relative_difference(&replayed, &eager);
        if difference > graphs::CHECK_TOLERANCE {
            graphs.disable(format!(
                "the recording of {what} replayed logits {difference:e} (relative) away from \
                 its eager run"
            ));
            return Ok(result);
        }
        graphs.insert(key, dev_meta, graph, difference);
        Ok(result)
    }

    /// Embedding, every layer, the final norm and the LM head for the rows in `meta`'s logits
    /// indices; leaves logits `[l, vocab]` in `ws.logits`.
    fn run_step(
        &self,
        ws: &mut Workspace<B>,
        meta: &B::Meta,
        t: usize,
        l: usize,
        kv: &mut KvCache<B>,
    ) -> Result<()> {
        let c = &self.config;
        self.run_layers(ws, meta, t, kv)?;
        let b = &self.backend;
        let h = c.hidden_size;
        b.gather_logit_rows(&mut ws.last, &ws.xn, meta, h)?;
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        let head_bias = self.weights.lm_head_bias.as_ref();
        b.linear(
            &mut ws.logits,
            &ws.last,
            head,
            head_bias,
            l,
            c.vocab_size,
            h,
        )?;
        match c.final_softcap {
            Some(cap) => b.softcap_inplace(&mut ws.logits, cap, l * c.vocab_size),
            None => Ok(()),
        }
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
        match &w.embed_norm {
            // BLOOM: the embedding normalised before the first layer (via ws.delta, free here)
            Some(norm) => {
                b.embedding(&mut ws.delta, &w.embed, w.positions.as_ref(), meta, h)?;
                let (weight, bias) = layernorm_weights(Some(norm))?;
                b.layernorm(&mut ws.x, &ws.delta, weight, bias, t, h, eps)?;
            }
            None => b.embedding(&mut ws.x, &w.embed, w.positions.as_ref(), meta, h)?,
        }
        if let Some(scale) = c.embed_scale {
            b.scale_inplace(&mut ws.x, scale, t * h)?;
        }
        for (i, layer) in w.layers.iter().enumerate() {
            // the RoPE table of this layer (Gemma 3: sliding-window layers have their own;
            // SmolLM3's NoPE layers have none)
            let cos_sin = match &self.cos_sin_local {
                _ if c.nope_layers.contains(&i) => None,
                Some(local) if c.sliding_layers.contains(&i) => Some(local),
                _ => self.cos_sin.as_ref(),
            };
            // --- attention sub-layer ---
            let prev_post_norm = i
                .checked_sub(1)
                .and_then(|p| w.layers[p].post_mlp_norm.as_ref());
            match (c.arch, &layer.attn_norm) {
                (Arch::Gpt2, norm) => {
                    let (weight, bias) = layernorm_weights(norm.as_ref())?;
                    b.layernorm(&mut ws.xn, &ws.x, weight, bias, t, h, eps)?;
                }
                (Arch::Llama, Some(norm)) if i == 0 => {
                    b.rmsnorm(&mut ws.xn, &ws.x, &norm.weight, t, h, eps)?;
                }
                // OLMo 2: the attention reads the residual stream itself
                (Arch::Llama, None) if i == 0 => {}
                // the previous layer's MLP output is added (and normalised, in one fused op)
                (Arch::Llama, norm) => {
                    let weight = norm.as_ref().map(|n| &n.weight);
                    self.add_output(ws, prev_post_norm, weight, t)?
                }
            }
            let attn_in = if layer.attn_norm.is_some() {
                &ws.xn
            } else {
                &ws.x
            };
            b.linear(
                &mut ws.qkv,
                attn_in,
                &layer.qkv.weight,
                layer.qkv.bias.as_ref(),
                t,
                qkv_n,
                h,
            )?;
            // OLMo 2 normalises the whole Q and the whole K, then ropes them as any Llama
            let per_head_qk_norm = match &layer.qk_norm {
                Some(qk) if c.qk_norm_whole => {
                    let (q, kv) = (c.q_size(), c.kv_size());
                    b.qk_rmsnorm(&mut ws.qkv, &qk.q, &qk.k, t, q, kv, eps)?;
                    None
                }
                other => other.as_ref(),
            };
            match (cos_sin, per_head_qk_norm) {
                (Some(cos_sin), Some(qk)) => b.qk_norm_rope(
                    &mut ws.qkv,
                    cos_sin,
                    &qk.q,
                    &qk.k,
                    meta,
                    c.num_heads,
                    c.num_kv_heads,
                    c.head_dim,
                    eps,
                )?,
                (Some(cos_sin), None) => b.rope(
                    &mut ws.qkv,
                    cos_sin,
                    meta,
                    c.num_heads,
                    c.num_kv_heads,
                    c.head_dim,
                    c.rotary_dim(),
                )?,
                (None, _) => {}
            }
            // this layer's tensors and block tables (one group of every layer in the plain layout)
            let (slot, kv_group) = (kv.layout.slot_of(i), kv.layout.group_of(i));
            b.write_kv(
                &mut kv.k[slot],
                &mut kv.v[slot],
                &ws.qkv,
                meta,
                &kv.geom,
                c.num_heads,
                kv_group,
            )?;
            let scale = if c.scale_attn_by_inverse_layer_idx {
                c.attn_scale / (i + 1) as f32
            } else {
                c.attn_scale
            };
            let spec = AttentionSpec {
                num_heads: c.num_heads,
                scale,
                window: c.layer_window(i),
                softcap: c.attn_softcap,
                alibi: c.alibi,
                kv_group,
            };
            b.attention(
                &mut ws.attn,
                &ws.qkv,
                &kv.k[slot],
                &kv.v[slot],
                meta,
                &kv.geom,
                &spec,
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
                    // GPT-2's MLP reads the normalised sum x + attn; a parallel block's MLP the
                    // layer's input x: GPT-NeoX's and Falcon 40B's through a norm of their own
                    // (taken before the attention's output joins x), Phi's and Falcon 7B's
                    // through the attention's, still in ws.xn
                    match (c.parallel_residual, &layer.mlp_norm) {
                        (true, None) => b.add_inplace(&mut ws.x, &ws.delta, t * h)?,
                        (true, norm) => {
                            let (weight, bias) = layernorm_weights(norm.as_ref())?;
                            b.layernorm(&mut ws.xn, &ws.x, weight, bias, t, h, eps)?;
                            b.add_inplace(&mut ws.x, &ws.delta, t * h)?;
                        }
                        (false, norm) => {
                            b.add_inplace(&mut ws.x, &ws.delta, t * h)?;
                            let (weight, bias) = layernorm_weights(norm.as_ref())?;
                            b.layernorm(&mut ws.xn, &ws.x, weight, bias, t, h, eps)?;
                        }
                    }
                    let Mlp::Dense { up, down } = &layer.mlp else {
                        return Err(Error::Invalid(
                            "GPT-2's block with a mixture of experts is not supported".into(),
                        ));
                    };
                    b.linear(
                        &mut ws.up,
                        &ws.xn,
                        &up.weight,
                        up.bias.as_ref(),
                        t,
                        inter,
                        h,
                    )?;
                    match c.mlp_activation {
                        MlpActivation::GeluErf => b.gelu_erf(&mut ws.up, t * inter)?,
                        MlpActivation::Relu => b.relu(&mut ws.up, t * inter)?,
                        MlpActivation::GeluTanh => b.gelu_new(&mut ws.up, t * inter)?,
                        // (ModelConfig::validate refuses it for GPT-2's block)
                        MlpActivation::Silu => {
                            return Err(Error::Invalid(
                                "GPT-2's block with a SiLU MLP is not supported".into(),
                            ))
                        }
                    }
                    b.linear(
                        &mut ws.delta,
                        &ws.up,
                        &down.weight,
                        down.bias.as_ref(),
                        t,
                        h,
                        inter,
                    )?;
                    b.add_inplace(&mut ws.x, &ws.delta, t * h)?;
                }
                Arch::Llama => {
                    let post = layer.post_attn_norm.as_ref();
                    let weight = layer.mlp_norm.as_ref().map(|n| &n.weight);
                    self.add_output(ws, post, weight, t)?;
                    let mlp_in = if layer.mlp_norm.is_some() {
                        &ws.xn
                    } else {
                        &ws.x
                    };
                    let (up, down) = match &layer.mlp {
                        Mlp::Dense { up, down } => (up, down),
                        Mlp::Experts(experts) => {
                            let (m, moe) =
                                c.layer_moe(i).zip(ws.moe.as_mut()).ok_or_else(|| {
                                    Error::Invalid(format!(
                                        "layer {i} has experts the config does not route"
                                    ))
                                })?;
                            let (e, n) = (experts, m.num_experts);
                            b.linear(&mut moe.router_logits, mlp_in, &e.router, None, t, n, h)?;
                            // routed on the host: the experts' GEMM shapes follow from it
                            let logits = b.download(&moe.router_logits, t * n)?;
                            let routing = MoeRouting::route(&logits, t, n, m.top_k, m.renormalize)?;
                            b.moe_experts(
                                &mut ws.delta,
                                mlp_in,
                                &e.gate_up,
                                &e.down,
                                &routing,
                                &mut moe.scratch,
                                h,
                                m.expert_intermediate,
                            )?;
                            // the MLP's output is in ws.delta, as the dense MLP leaves it: the
                            // next layer (or the final norm) adds it
                            continue;
                        }
                    };
                    b.linear(
                        &mut ws.up,
                        mlp_in,
                        &up.weight,
                        up.bias.as_ref(),
                        t,
                        2 * inter,
                        h,
                    )?;
                    match c.mlp_activation {
                        MlpActivation::Silu => b.silu_mul(&mut ws.act, &ws.up, t, inter)?,
                        MlpActivation::GeluTanh => {
                            b.gelu_tanh_mul(&mut ws.act, &ws.up, t, inter)?
                        }
                        // (ModelConfig::validate refuses them for a gated MLP)
                        MlpActivation::GeluErf | MlpActivation::Relu => {
                            return Err(Error::Invalid(format!(
                                "a gated MLP with {:?} is not supported",
                                c.mlp_activation
                            )))
                        }
                    }
                    b.linear(
                        &mut ws.delta,
                        &ws.act,
                        &down.weight,
                        down.bias.as_ref(),
                        t,
                        h,
                        inter,
                    )?;
                }
            }
        }
        match c.arch {
            Arch::Gpt2 => {
                let (weight, bias) = layernorm_weights(Some(&w.final_norm))?;
                b.layernorm(&mut ws.xn, &ws.x, weight, bias, t, h, eps)?;
            }
            Arch::Llama => {
                let last = w.layers.last().and_then(|l| l.post_mlp_norm.as_ref());
                self.add_output(ws, last, Some(&w.final_norm.weight), t)?
            }
        }
        Ok(())
    }

    /// Add a sub-layer's output (`ws.delta`) to the residual stream `ws.x`, normalised first
    /// where the model has a `post_norm` (Gemma 2/3, OLMo 2: into `ws.normed`). With `next_norm`
    /// (the next sub-layer's or the final norm's weight) the sum is normalised into `ws.xn` in
    /// the same fused op; without (OLMo 2, whose next sub-layer reads `ws.x` itself) it is only
    /// added.
    fn add_output(
        &self,
        ws: &mut Workspace<B>,
        post_norm: Option<&super::weights::Norm<B::Buffer>>,
        next_norm: Option<&B::Buffer>,
        t: usize,
    ) -> Result<()> {
        let (b, h, eps) = (&self.backend, self.config.hidden_size, self.config.norm_eps);
        let output = match post_norm {
            Some(n) => {
                b.rmsnorm(&mut ws.normed, &ws.delta, &n.weight, t, h, eps)?;
                &ws.normed
            }
            None => &ws.delta,
        };
        match next_norm {
            Some(weight) => b.add_rmsnorm(&mut ws.x, output, &mut ws.xn, weight, t, h, eps),
            None => b.add_inplace(&mut ws.x, output, t * h),
        }
    }
}

/// A GPT-2 LayerNorm's weight and bias (the loader gives every GPT-2 norm both).
fn layernorm_weights<T>(norm: Option<&super::weights::Norm<T>>) -> Result<(&T, &T)> {
    match norm {
        Some(super::weights::Norm {
            weight,
            bias: Some(bias),
        }) => Ok((weight, bias)),
        _ => Err(Error::Invalid(
            "a GPT-2 LayerNorm without its weight and bias".into(),
        )),
    }
}
