//! The `Backend` trait: every op of the forward pass, over buffers the backend owns.
//!
//! The forward pass (`model::forward`) is written once against this trait. The CPU backend is the f32
//! reference of every op; the CUDA backend implements the same ops with the same layouts and is tested
//! against it. All ops work on a flattened variable-length batch described by [`BatchMeta`], and
//! attention reads K/V through block tables from the paged cache (layout in `kernels/params.h`):
//!
//! ```text
//! k_cache, v_cache (per layer): [num_blocks, block_size, num_kv_heads, head_dim]
//! ```

pub mod cpu;
pub mod cuda;
pub mod moe;

use crate::engine::sampling::{TokenBan, TokenDraw};
use crate::error::Result;
use crate::model::tensor_store::HostTensor;
pub use moe::MoeRouting;

/// The slot of a padding token: it writes no K/V (`kernels/params.h`: `IM_PAD_SLOT`). Padded
/// decode steps (the rows a CUDA graph bucket has beyond the real batch) use it.
pub const PAD_SLOT: u32 = u32::MAX;

/// Shape of the paged KV cache of one layer (K and V each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KvGeometry {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvGeometry {
    /// Elements of one layer's K (or V) cache.
    pub fn layer_len(&self) -> usize {
        self.num_blocks * self.block_size * self.num_kv_heads * self.head_dim
    }

    /// Elements per token slot: [num_kv_heads, head_dim].
    pub fn slot_len(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// ALiBi, attention with linear biases (Press et al. 2022; BLOOM, MPT, Falcon-RW): the score of a
/// query at position p against key j gains `scale` · slope(h) · (j − p), a penalty growing with
/// the distance, instead of any position embedding. Query head h of n has the slope of BLOOM's
/// and MPT's construction ([`slope`](Self::slope)); BLOOM and MPT add slope · j instead, which
/// gives the same softmax (a row's constant slope · p cancels in it). The kernels compute the same
/// slopes (kernels/common.cuh `im::alibi_slope`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alibi {
    /// The slopes' exponent scale: 8 in BLOOM and Falcon, MPT's `alibi_bias_max` (8 by default).
    pub max_bias: f32,
    /// Every slope times this: 1, or Falcon-RW's 1 / √head_dim (it adds the biases to q · k
    /// before scaling the sum).
    pub scale: f32,
}

impl Alibi {
    /// ALiBi as BLOOM and MPT apply it: exponent scale 8, slopes as they are.
    pub const STANDARD: Alibi = Alibi {
        max_bias: 8.0,
        scale: 1.0,
    };

    /// Query head `head`'s slope of `num_heads` (`scale` included): with c = 2^⌊log₂ n⌋, heads
    /// h < c take 2^(−max_bias (h + 1) / c) and the rest (n not a power of two) the odd steps
    /// between them, 2^(−max_bias (2 (h − c) + 1) / 2c): BLOOM's `build_alibi_tensor` at
    /// max_bias 8, MPT's `gen_slopes` at any `alibi_bias_max` (its interleaving of the next power
    /// of two's sequence is the same list).
    pub fn slope(&self, head: usize, num_heads: usize) -> f32 {
        let c = 1usize << num_heads.max(1).ilog2();
        let e = if head < c {
            (head + 1) as f32 / c as f32
        } else {
            (2 * (head - c) + 1) as f32 / (2 * c) as f32
        };
        self.scale * (-self.max_bias * e).exp2()
    }
}

/// What one layer's attention computes, besides its inputs: [`Backend::attention`]'s options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    /// Query heads; a multiple of the cache's KV heads (GQA: head h reads KV head
    /// h / (num_heads / num_kv_heads)).
    pub num_heads: usize,
    /// Scores are q · k times this (usually 1 / sqrt(head_dim)).
    pub scale: f32,
    /// Sliding-window attention: a token at position p sees keys max(0, p + 1 − w) ..= p only,
    /// the last w positions, its own included (transformers' `kv_idx > q_idx - sliding_window`).
    /// None: every key 0 ..= p.
    pub window: Option<usize>,
    /// Gemma 2's score soft-capping: each scaled score s becomes cap · tanh(s / cap) before the
    /// softmax. None: none.
    pub softcap: Option<f32>,
    /// ALiBi's linear distance penalty on the scores (BLOOM, MPT, Falcon-RW), added after the
    /// scale and any soft-cap. None: none.
    pub alibi: Option<Alibi>,
    /// The KV group whose block tables the layer reads ([`BatchMeta::block_table`]; 0 in a model
    /// whose layers all attend alike).
    pub kv_group: usize,
}

impl AttentionSpec {
    /// Full causal attention of `num_heads` heads with scores scaled by `scale`.
    pub fn causal(num_heads: usize, scale: f32) -> Self {
        Self {
            num_heads,
            scale,
            window: None,
            softcap: None,
            alibi: None,
            kv_group: 0,
        }
    }

    /// The error for a window of no keys or a soft-cap that is not a positive finite number
    /// (`backend` names the backend in it).
    pub fn check(&self, backend: &'static str) -> Result<()> {
        let bad = |msg: String| crate::error::Error::Backend { backend, msg };
        if self.window == Some(0) {
            return Err(bad("attention: a sliding window of 0 keys".into()));
        }
        if let Some(c) = self.softcap {
            if !(c.is_finite() && c > 0.0) {
                return Err(bad(format!(
                    "attention: soft-cap {c} (must be positive and finite)"
                )));
            }
        }
        if let Some(a) = self.alibi {
            let fine = |x: f32| x.is_finite() && x > 0.0;
            if !(fine(a.max_bias) && fine(a.scale) && fine(self.scale)) {
                return Err(bad(format!(
                    "attention: ALiBi max bias {} and slope scale {} with score scale {} (each \
                     must be positive and finite)",
                    a.max_bias, a.scale, self.scale
                )));
            }
        }
        Ok(())
    }
}

/// The error for a KV group the step has no tables for (`backend` names the backend in it).
pub fn check_kv_group(backend: &'static str, kv_group: usize, num_kv_groups: usize) -> Result<()> {
    if kv_group < num_kv_groups {
        return Ok(());
    }
    Err(crate::error::Error::Backend {
        backend,
        msg: format!("KV group {kv_group}: the step has block tables for {num_kv_groups} groups"),
    })
}

/// Rows of a RoPE cos/sin table of `table_len` elements whose rows are `rotary_dim` wide, once the
/// width is checked: even, positive and at most `head_dim` (Err: the message). Both backends'
/// `rope` check their table through it.
pub fn rope_table_rows(
    table_len: usize,
    head_dim: usize,
    rotary_dim: usize,
) -> std::result::Result<usize, String> {
    if rotary_dim == 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim {
        return Err(format!(
            "rotary_dim {rotary_dim}: must be even, positive and at most head_dim {head_dim}"
        ));
    }
    Ok(table_len / rotary_dim)
}

/// Host-side metadata of one forward step over a flattened variable-length batch.
///
/// Sequence `s` owns batch rows `query_start_loc[s]..query_start_loc[s + 1]`: its new tokens, which sit
/// at the end of its context of `seq_lens[s]` tokens (the earlier ones are already in the KV cache).
///
/// Block tables and slots come per KV group (`kv::KvLayout`: layers that attend alike share a
/// table); a model whose layers all attend alike has one group, and the arrays read as plain
/// `[num_tokens]` and `[num_seqs, max_blocks_per_seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchMeta {
    /// [num_tokens] token ids, sequences concatenated
    pub token_ids: Vec<u32>,
    /// [num_tokens] position of each token within its sequence
    pub positions: Vec<u32>,
    /// [num_kv_groups, num_tokens] KV-cache slot (block * block_size + offset) each token's K/V is
    /// written to, in each group's blocks
    pub slot_mapping: Vec<u32>,
    /// [num_seqs + 1] start row of each sequence in the batch, then the total
    pub query_start_loc: Vec<u32>,
    /// [num_seqs] context length after this step (cached tokens + new tokens)
    pub seq_lens: Vec<u32>,
    /// [num_kv_groups, num_seqs, max_blocks_per_seq] physical block ids, rows padded with 0; a
    /// leading entry may be `kv::RELEASED_BLOCK` when its block left the group's attention window
    pub block_tables: Vec<u32>,
    pub max_blocks_per_seq: usize,
    /// KV groups: tables per sequence, slots per token (at least 1)
    pub num_kv_groups: usize,
    /// [num_logits] batch rows whose logits are wanted (usually each sequence's last new token)
    pub logits_indices: Vec<u32>,
    /// The context length decode attention plans its work for (the CUDA split-KV decode's split
    /// count and partition length); at least every sequence's length. None: the step's longest
    /// decode context. Graph-replayed steps set their bucket's, so every replay of a graph has the
    /// launch plan it was recorded with.
    pub decode_plan_ctx: Option<u32>,
}

impl Default for BatchMeta {
    /// An empty step of one KV group.
    fn default() -> Self {
        BatchMeta {
            token_ids: Vec::new(),
            positions: Vec::new(),
            slot_mapping: Vec::new(),
            query_start_loc: Vec::new(),
            seq_lens: Vec::new(),
            block_tables: Vec::new(),
            max_blocks_per_seq: 0,
            num_kv_groups: 1,
            logits_indices: Vec::new(),
            decode_plan_ctx: None,
        }
    }
}

impl BatchMeta {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.seq_lens.len()
    }

    pub fn num_logits(&self) -> usize {
        self.logits_indices.len()
    }

    /// The block table row of sequence `s` in KV group `g`.
    pub fn block_table(&self, g: usize, s: usize) -> &[u32] {
        let row = (g * self.num_seqs() + s) * self.max_blocks_per_seq;
        &self.block_tables[row..row + self.max_blocks_per_seq]
    }

    /// KV group `g`'s block tables: [num_seqs, max_blocks_per_seq].
    pub fn block_tables_of(&self, g: usize) -> &[u32] {
        let len = self.num_seqs() * self.max_blocks_per_seq;
        &self.block_tables[g * len..(g + 1) * len]
    }

    /// KV group `g`'s slots: [num_tokens].
    pub fn slot_mapping_of(&self, g: usize) -> &[u32] {
        let t = self.num_tokens();
        &self.slot_mapping[g * t..(g + 1) * t]
    }

    /// Check internal consistency against a cache geometry: every index in range, positions matching
    /// the sequence layout. Backends call this before trusting the metadata.
    pub fn validate(&self, geom: &KvGeometry) -> std::result::Result<(), String> {
        let t = self.num_tokens();
        let s = self.num_seqs();
        let groups = self.num_kv_groups;
        if groups == 0 {
            return Err("num_kv_groups must be at least 1".into());
        }
        if self.positions.len() != t || self.slot_mapping.len() != groups * t {
            return Err(format!(
                "positions ({}) and slot_mapping ({}) must have one entry per token ({t}), \
                 slot_mapping one per token in each of {groups} KV groups",
                self.positions.len(),
                self.slot_mapping.len()
            ));
        }
        if self.query_start_loc.len() != s + 1 || self.query_start_loc[s] as usize != t {
            return Err(
                "query_start_loc must have num_seqs + 1 entries ending at num_tokens".into(),
            );
        }
        if self.block_tables.len() != groups * s * self.max_blocks_per_seq {
            return Err(
                "block_tables must be [num_kv_groups, num_seqs, max_blocks_per_seq]".into(),
            );
        }
        for g in 0..groups {
            self.validate_group(geom, g)?;
        }
        if let Some(&i) = self.logits_indices.iter().find(|&&i| i as usize >= t) {
            return Err(format!("logits index {i} outside the batch of {t} tokens"));
        }
        if let (Some(plan), Some(&longest)) = (self.decode_plan_ctx, self.seq_lens.iter().max()) {
            if plan < longest {
                return Err(format!(
                    "decode_plan_ctx {plan} is shorter than the longest sequence ({longest})"
                ));
            }
        }
        Ok(())
    }

    /// `validate`'s checks of KV group `g`'s block tables and slots (the sizes checked already),
    /// and with group 0 those of the sequences and positions, which every group shares (checked
    /// once, not per group: `validate` runs on every step).
    fn validate_group(&self, geom: &KvGeometry, g: usize) -> std::result::Result<(), String> {
        let slots = geom.num_blocks * geom.block_size;
        let slot_mapping = self.slot_mapping_of(g);
        // name the group only where there are several
        let group = if self.num_kv_groups > 1 {
            format!("KV group {g}, ")
        } else {
            String::new()
        };
        for seq in 0..self.num_seqs() {
            let (q0, q1) = (
                self.query_start_loc[seq] as usize,
                self.query_start_loc[seq + 1] as usize,
            );
            let len = self.seq_lens[seq] as usize;
            if g == 0 && (q1 < q0 || q1 - q0 > len) {
                return Err(format!(
                    "{group}sequence {seq}: more new tokens than its length {len}"
                ));
            }
            if g == 0 && len.div_ceil(geom.block_size) > self.max_blocks_per_seq {
                return Err(format!(
                    "{group}sequence {seq}: block table too short for {len} tokens"
                ));
            }
            let table = self.block_table(g, seq);
            // a released entry (the block left the attention window) is allowed; writing into it
            // is not (the slot check below), and attention never reads before a query's window
            if let Some(b) = table[..len.div_ceil(geom.block_size)]
                .iter()
                .find(|&&b| b as usize >= geom.num_blocks && b != crate::kv::RELEASED_BLOCK)
            {
                return Err(format!("{group}sequence {seq}: block {b} outside the pool"));
            }
            for (i, row) in (q0..q1).enumerate() {
                let pos = len - (q1 - q0) + i;
                if g == 0 && self.positions[row] as usize != pos {
                    return Err(format!(
                        "row {row}: position {} != {pos}",
                        self.positions[row]
                    ));
                }
                if slot_mapping[row] == PAD_SLOT {
                    continue; // a padding token: writes nothing
                }
                let slot = slot_mapping[row] as usize;
                let expect =
                    table[pos / geom.block_size] as usize * geom.block_size + pos % geom.block_size;
                if slot >= slots || slot != expect {
                    return Err(format!(
                        "{group}row {row}: slot {slot} != block table slot {expect}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The ops of the forward pass. Layouts are row-major; shapes are given per argument.
pub trait Backend: Send + Sync {
    /// A device (or host) buffer of elements in the backend's compute dtype.
    type Buffer: Send + Sync;
    /// Step metadata in the form the backend's kernels read (e.g. device arrays).
    type Meta;

    fn name(&self) -> &'static str;

    /// Copy a host tensor into a new buffer (converting to the backend's dtype).
    fn upload(&self, t: &HostTensor) -> Result<Self::Buffer>;
    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Buffer>;
    /// Copy the first `len` elements back to the host as f32.
    fn download(&self, buf: &Self::Buffer, len: usize) -> Result<Vec<f32>>;
    /// Wait until the device has done every op issued so far (and surface an asynchronous error).
    /// A backend that computes on the calling thread is done already.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Prepare one step's metadata (validated against the cache geometry).
    fn prepare(&self, meta: &BatchMeta, geom: &KvGeometry) -> Result<Self::Meta>;

    // ---- recorded steps (CUDA graphs); backends without them keep the defaults ----

    /// A recorded sequence of ops that [`Backend::replay`] runs again, reading and writing the
    /// same buffers (`()` where the backend records nothing).
    type Graph: Send;

    /// Whether [`Backend::capture`] works on this backend.
    fn can_capture(&self) -> bool {
        false
    }

    /// Record the ops `record` queues, without running them. The buffers they use (and the
    /// metadata, refilled in place by [`Backend::refill`]) must outlive the graph and stay where
    /// they are: nothing may be allocated or freed while recording.
    fn capture(&self, record: &mut dyn FnMut() -> Result<()>) -> Result<Self::Graph> {
        let _ = record;
        Err(crate::error::Error::Invalid(format!(
            "the {} backend cannot record steps",
            self.name()
        )))
    }

    /// Run a recorded graph again (queued like any op).
    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        let _ = graph;
        Err(crate::error::Error::Invalid(format!(
            "the {} backend cannot replay steps",
            self.name()
        )))
    }

    /// Put another step's metadata into `dst`, which [`Backend::prepare`] made from a step of the
    /// same shape (tokens, sequences, logits rows, block-table width, decode plan): backends with
    /// graphs overwrite `dst`'s device arrays in place, so a graph recorded with `dst` reads it.
    fn refill(&self, dst: &mut Self::Meta, meta: &BatchMeta, geom: &KvGeometry) -> Result<()> {
        *dst = self.prepare(meta, geom)?;
        Ok(())
    }

    /// Changes whenever the backend reallocates a buffer of its own (scratch space) that a
    /// recorded graph may point to: graphs recorded under another epoch must not be replayed.
    fn graph_epoch(&self) -> u64 {
        0
    }

    /// Grow the backend's own per-row buffers (scratch it keeps between ops) for steps of up to
    /// `rows` tokens now, so that a later step does not reallocate them and drop recorded graphs.
    fn reserve_rows(&self, rows: usize) -> Result<()> {
        let _ = rows;
        Ok(())
    }

    // ---- picking tokens on the device ----

    /// Pick one token per row of `logits` [draws.len(), vocab] on the device, with `draws[r]` for
    /// row r and the `bans` (row, token) set to -inf in place, and copy only the tokens back: what
    /// [`crate::engine::sampling::pick`] picks from the same logits, up to the rounding noted in
    /// `kernels/sampling.cu`. `None` where the backend has no device sampler (the caller
    /// downloads the logits and picks on the host).
    fn pick_tokens(
        &self,
        logits: &mut Self::Buffer,
        vocab: usize,
        draws: &[TokenDraw],
        bans: &[TokenBan],
    ) -> Result<Option<Vec<u32>>> {
        let _ = (logits, vocab, draws, bans);
        Ok(None)
    }

    /// out[t] = table[token_ids[t]] (+ pos_table[positions[t]] for GPT-2).
    /// out: [num_tokens, hidden]; table: [vocab, hidden]; pos_table: [max_context, hidden]
    fn embedding(
        &self,
        out: &mut Self::Buffer,
        table: &Self::Buffer,
        pos_table: Option<&Self::Buffer>,
        meta: &Self::Meta,
        hidden: usize,
    ) -> Result<()>;

    /// LayerNorm over rows. out, x: [rows, cols]; weight, bias: [cols]
    #[allow(clippy::too_many_arguments)]
    fn layernorm(
        &self,
        out: &mut Self::Buffer,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        bias: &Self::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()>;

    /// RMSNorm over rows. out, x: [rows, cols]; weight: [cols]
    fn rmsnorm(
        &self,
        out: &mut Self::Buffer,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()>;

    /// Fused residual add + RMSNorm: residual += delta; out = rmsnorm(residual).
    /// residual, delta, out: [rows, cols]; weight: [cols]
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm(
        &self,
        residual: &mut Self::Buffer,
        delta: &Self::Buffer,
        out: &mut Self::Buffer,
        weight: &Self::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()>;

    /// x += y, elementwise over `len` elements.
    fn add_inplace(&self, x: &mut Self::Buffer, y: &Self::Buffer, len: usize) -> Result<()>;

    /// out = x · weightᵀ + bias. out: [m, n]; x: [m, k]; weight: [n, k]; bias: [n]
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        out: &mut Self::Buffer,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()>;

    /// Rotary embedding (rotate-half form) in place on the Q and K heads of the fused QKV rows,
    /// over the first `rotary_dim` dimensions of each head (pairs (i, i + rotary_dim / 2)); the
    /// dimensions after them are left as they are (a partial rotary; `rotary_dim == head_dim`
    /// rotates the whole head). qkv: [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim];
    /// cos_sin: [max_context, rotary_dim] (cos in the first half of each row, sin in the second)
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        qkv: &mut Self::Buffer,
        cos_sin: &Self::Buffer,
        meta: &Self::Meta,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        rotary_dim: usize,
    ) -> Result<()>;

    /// Qwen3's QK norm and RoPE in one pass, in place: each of the `num_heads` Q heads and
    /// `num_kv_heads` K heads of a row is RMS-normalised over `head_dim` (f32, `eps`), scaled by
    /// `q_norm` (Q heads) or `k_norm` (K heads), then rotated as by [`Backend::rope`] over the
    /// whole head (no model with q/k norms has a partial rotary).
    /// qkv: [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim]; q_norm, k_norm: [head_dim];
    /// cos_sin: [max_context, head_dim]
    #[allow(clippy::too_many_arguments)]
    fn qk_norm_rope(
        &self,
        qkv: &mut Self::Buffer,
        cos_sin: &Self::Buffer,
        q_norm: &Self::Buffer,
        k_norm: &Self::Buffer,
        meta: &Self::Meta,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<()>;

    /// OLMo 2's QK norm, in place: in each row of `qkv` the Q part (`q_cols` wide) and the K
    /// part (`k_cols`, after it) are each RMS-normalised as one vector (f32, `eps`) and scaled
    /// by `q_norm` / `k_norm`; V is untouched. RoPE follows as a separate [`Backend::rope`].
    /// qkv: [rows, q_cols + 2 * k_cols]; q_norm: [q_cols]; k_norm: [k_cols]
    #[allow(clippy::too_many_arguments)]
    fn qk_rmsnorm(
        &self,
        qkv: &mut Self::Buffer,
        q_norm: &Self::Buffer,
        k_norm: &Self::Buffer,
        rows: usize,
        q_cols: usize,
        k_cols: usize,
        eps: f32,
    ) -> Result<()>;

    /// Write each token's K and V (from the fused QKV rows) to its cache slot in KV group
    /// `kv_group`'s blocks ([`BatchMeta::slot_mapping_of`]).
    /// qkv: [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim];
    /// k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    #[allow(clippy::too_many_arguments)]
    fn write_kv(
        &self,
        k_cache: &mut Self::Buffer,
        v_cache: &mut Self::Buffer,
        qkv: &Self::Buffer,
        meta: &Self::Meta,
        geom: &KvGeometry,
        num_heads: usize,
        kv_group: usize,
    ) -> Result<()>;

    /// Causal attention of each new token over its sequence's context, read from the paged cache
    /// (the new tokens' K/V must already be written), as `spec` says (heads, scale, sliding window,
    /// soft-cap). out: [num_tokens, num_heads * head_dim];
    /// qkv: [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim] (Q read from the first columns);
    /// k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        out: &mut Self::Buffer,
        qkv: &Self::Buffer,
        k_cache: &Self::Buffer,
        v_cache: &Self::Buffer,
        meta: &Self::Meta,
        geom: &KvGeometry,
        spec: &AttentionSpec,
    ) -> Result<()>;

    /// A mixture-of-experts MLP as `routing` plans it: out[t] = Σ_j weights[t, j] ·
    /// expert_e(x[t]) over token t's choices (e = experts[t, j], j in order), each expert a Llama
    /// MLP without biases, down_e · (silu(gate_e · x) ⊙ (up_e · x)). Each expert runs once over
    /// the tokens routed to it; `scratch` holds the grouped rows (see [`MoeScratch`]).
    /// out, x: [num_tokens, hidden]; gate_up: [num_experts, 2 · inter, hidden] (each expert's gate
    /// rows, then its up rows); down: [num_experts, hidden, inter]
    #[allow(clippy::too_many_arguments)]
    fn moe_experts(
        &self,
        out: &mut Self::Buffer,
        x: &Self::Buffer,
        gate_up: &Self::Buffer,
        down: &Self::Buffer,
        routing: &MoeRouting,
        scratch: &mut MoeScratch<Self::Buffer>,
        hidden: usize,
        inter: usize,
    ) -> Result<()>;

    /// GPT-2's tanh-approximated GELU, in place over `len` elements.
    fn gelu_new(&self, x: &mut Self::Buffer, len: usize) -> Result<()>;

    /// The exact GELU, 0.5 x (1 + erf(x / √2)) (transformers' `gelu`: GPT-NeoX, Pythia), in place
    /// over `len` elements.
    fn gelu_erf(&self, x: &mut Self::Buffer, len: usize) -> Result<()>;

    /// max(x, 0) (OPT's `relu`; NaN stays NaN, as torch's), in place over `len` elements.
    fn relu(&self, x: &mut Self::Buffer, len: usize) -> Result<()>;

    /// out[r, j] = silu(x[r, j]) * x[r, inter + j]. out: [rows, inter]; x: [rows, 2 * inter]
    fn silu_mul(
        &self,
        out: &mut Self::Buffer,
        x: &Self::Buffer,
        rows: usize,
        inter: usize,
    ) -> Result<()>;

    /// Gemma's GeGLU: out[r, j] = gelu_new(x[r, j]) * x[r, inter + j] (transformers'
    /// `gelu_pytorch_tanh` is the same tanh approximation). out: [rows, inter]; x: [rows, 2 * inter]
    fn gelu_tanh_mul(
        &self,
        out: &mut Self::Buffer,
        x: &Self::Buffer,
        rows: usize,
        inter: usize,
    ) -> Result<()>;

    /// Gemma 2's logit soft-capping: x[i] = cap · tanh(x[i] / cap) over `len` elements, in place
    /// (cap > 0).
    fn softcap_inplace(&self, x: &mut Self::Buffer, cap: f32, len: usize) -> Result<()>;

    /// x[i] *= scale over `len` elements (Gemma's embedding scale), the scale itself held in the
    /// backend's compute dtype: transformers, vLLM and Google's gemma_pytorch all keep Gemma's
    /// normalizer sqrt(hidden) in the model's dtype, so a bf16 model multiplies by
    /// sqrt(1152) = 33.94 rounded to 34.0 (the f32 CPU reference by 33.94, as transformers in f32).
    fn scale_inplace(&self, x: &mut Self::Buffer, scale: f32, len: usize) -> Result<()>;

    /// out[i] = x[logits_indices[i]]. out: [num_logits, cols]; x: [num_tokens, cols]
    fn gather_logit_rows(
        &self,
        out: &mut Self::Buffer,
        x: &Self::Buffer,
        meta: &Self::Meta,
        cols: usize,
    ) -> Result<()>;
}

/// [`Backend::moe_experts`]'s working rows, in expert order (c = num_tokens · top_k choices):
/// the caller owns them (the forward pass's workspace) and sizes them for its largest step.
pub struct MoeScratch<B> {
    /// [c, hidden] each choice's input row
    pub rows: B,
    /// [c, 2 · inter] gate||up projections
    pub gate_up: B,
    /// [c, inter] silu(gate) ⊙ up
    pub act: B,
    /// [c, hidden] each choice's expert output
    pub out: B,
}

impl<B> MoeScratch<B> {
    /// `f` of each buffer: rows, gate_up, act, out.
    pub fn each<U>(&self, f: impl Fn(&B) -> U) -> [U; 4] {
        [&self.rows, &self.gate_up, &self.act, &self.out].map(f)
    }
}

/// The error every backend gives when a buffer is shorter than an op needs (`name` is the op's
/// argument).
pub(crate) fn check_len(
    backend: &'static str,
    have: usize,
    need: usize,
    name: &str,
) -> crate::error::Result<()> {
    if have >= need {
        Ok(())
    } else {
        Err(crate::error::Error::Backend {
            backend,
            msg: format!("buffer `{name}` holds {have} elements, op needs {need}"),
        })
    }
}
