//! The device memory plan: weights, activations and the paged KV pool, sized from
//! `--gpu-memory-utilization` (a fraction of the memory that was free when the backend opened).
//!
//! ```text
//! budget      = utilization × free memory at open (after the CUDA context and the kernels loaded)
//! weights     = measured: free at open − free after the model's upload (includes the RoPE table)
//! activations = the forward pass's workspace for a step of max_num_batched_tokens tokens and
//!               max_num_seqs logits rows (model::forward's Workspace, same formula), plus one step's
//!               metadata
//! reserve     = cuBLAS workspace and allocator slack (RESERVE_BYTES)
//! kv pool     = budget − weights − activations − reserve, in whole blocks of
//!               2 × slots × block_size × num_kv_heads × head_dim × sizeof(dtype) bytes
//!               (slots: the layers a block spans, `kv::KvLayout::slots`: every layer unless the
//!               model is hybrid), capped at what max_num_seqs sequences of the full context can
//!               ever hold (a sliding group holds at most its window's blocks per sequence)
//! ```
//!
//! Everything here is plain arithmetic over numbers the backend measured, so it is tested without a
//! GPU.

use crate::error::{Error, Result};
use crate::kv::KvLayout;
use crate::model::{kv_block_bytes as block_bytes, Arch, ModelConfig};

/// Held back for cuBLAS's workspace (it allocates up to 32 MiB per handle on Hopper) and the
/// allocator's rounding.
pub const RESERVE_BYTES: usize = 256 << 20;

/// Bytes of the forward pass's activation buffers for a step of `tokens` tokens and `logits_rows`
/// logits rows, at `elem_bytes` per element (mirrors `model::forward::Workspace`), plus the step's
/// metadata for a KV cache of `kv_groups` tables of `block_size`-token blocks.
pub fn activation_bytes(
    cfg: &ModelConfig,
    elem_bytes: usize,
    tokens: usize,
    logits_rows: usize,
    kv_groups: usize,
    block_size: usize,
) -> usize {
    let up_rows = match cfg.arch {
        Arch::Gpt2 => cfg.intermediate_size,
        Arch::Llama => 2 * cfg.intermediate_size,
    };
    let h = cfg.hidden_size;
    let dense_mlp = if cfg.has_dense_mlp() {
        up_rows + cfg.intermediate_size
    } else {
        0
    };
    let per_token = 3 * h + (cfg.q_size() + 2 * cfg.kv_size()) + cfg.q_size() + dense_mlp;
    // MoE models: the router's logits and the experts' rows (`MoeScratch`) per token
    let per_token = per_token
        + cfg.moe.as_ref().map_or(0, |m| {
            m.num_experts + m.top_k * (2 * h + 3 * m.expert_intermediate)
        });
    let per_logit_row = h + cfg.vocab_size;
    // One step's metadata (u32, one upload): ids and positions per token, a slot per token in
    // each KV group; logits indices, query_start_loc and seq_lens per sequence (at most
    // logits_rows of them); block tables, [kv_groups, seqs, ⌈max_context / block_size⌉] at most.
    // Plus the all-zero row indices of the bias broadcast.
    let groups = kv_groups.max(1);
    let table_entries = logits_rows * groups * cfg.max_context.div_ceil(block_size.max(1));
    let meta_u32 = (2 + groups) * tokens + 3 * (logits_rows + 1) + table_entries + tokens;
    // and the routing plan on the device: gather rows and slots (u32) and weights (f32) per
    // choice, grown in powers of two (`CudaBackend::with_moe_plan`)
    let plan_words = cfg
        .moe
        .as_ref()
        .map_or(0, |m| 3 * (tokens * m.top_k).max(1024).next_power_of_two());
    elem_bytes * (tokens * per_token + logits_rows * per_logit_row) + 4 * (meta_u32 + plan_words)
}

/// Inputs of the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanInputs {
    pub total_bytes: usize,
    /// Free device memory when the backend opened.
    pub free_at_open_bytes: usize,
    /// Free device memory after the weights were uploaded.
    pub free_after_weights_bytes: usize,
    pub utilization: f64,
    pub elem_bytes: usize,
    pub block_size: usize,
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
}

/// The plan, as reported at start and recorded in results.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryPlan {
    pub total_bytes: usize,
    pub free_at_open_bytes: usize,
    pub utilization: f64,
    pub budget_bytes: usize,
    pub weights_bytes: usize,
    pub activation_bytes: usize,
    pub reserve_bytes: usize,
    pub block_bytes: usize,
    pub num_blocks: usize,
    /// num_blocks × block_bytes
    pub kv_bytes: usize,
    /// The pool was capped at max_num_seqs full-context sequences (more would never be used).
    pub capped: bool,
}

fn gib(b: usize) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GPU memory: {:.2} GiB total, {:.2} GiB free at start; budget {:.2} GiB ({:.0}%) = weights {:.2} GiB \
             + activations {:.2} GiB + reserve {:.2} GiB + KV pool {:.2} GiB ({} blocks x {} KiB{})",
            gib(self.total_bytes),
            gib(self.free_at_open_bytes),
            gib(self.budget_bytes),
            self.utilization * 100.0,
            gib(self.weights_bytes),
            gib(self.activation_bytes),
            gib(self.reserve_bytes),
            gib(self.kv_bytes),
            self.num_blocks,
            self.block_bytes / 1024,
            if self.capped {
                ", capped at max_num_seqs full-context sequences"
            } else {
                ""
            }
        )
    }
}

fn err(msg: String) -> Error {
    Error::Backend {
        backend: "cuda",
        msg,
    }
}

/// Size the KV pool (see the module docs).
pub fn plan(cfg: &ModelConfig, layout: &KvLayout, i: PlanInputs) -> Result<MemoryPlan> {
    if !(i.utilization > 0.0 && i.utilization <= 1.0) {
        return Err(Error::Invalid(format!(
            "--gpu-memory-utilization must be in (0, 1], got {}",
            i.utilization
        )));
    }
    if i.block_size == 0 {
        return Err(Error::Invalid("--block-size must be at least 1".into()));
    }
    let budget = (i.free_at_open_bytes as f64 * i.utilization) as usize;
    let weights = i
        .free_at_open_bytes
        .saturating_sub(i.free_after_weights_bytes);
    let logits_rows = i.max_num_seqs.min(i.max_num_batched_tokens).max(1);
    let activations = activation_bytes(
        cfg,
        i.elem_bytes,
        i.max_num_batched_tokens.max(1),
        logits_rows,
        layout.num_groups(),
        i.block_size,
    );
    let block = block_bytes(cfg, layout.slots(), i.block_size, i.elem_bytes).max(1);
    let fixed = weights + activations + RESERVE_BYTES;
    // the blocks one sequence of the full context holds at most, over the KV groups
    let per_seq_blocks = crate::kv::blocks_held(
        &layout.windows(),
        i.block_size,
        i.max_num_batched_tokens.max(1),
        cfg.max_context.div_ceil(i.block_size),
    );
    let room = budget.saturating_sub(fixed) / block;
    if room < per_seq_blocks.max(1) {
        return Err(err(format!(
            "not enough GPU memory for the KV cache: budget {:.2} GiB ({:.0}% of {:.2} GiB free) leaves {:.3} GiB \
             after weights {:.2} GiB, activations {:.2} GiB and reserve {:.2} GiB; one sequence of the full \
             context ({} tokens) needs {:.3} GiB. Raise --gpu-memory-utilization, or lower \
             --max-num-batched-tokens / --max-num-seqs",
            gib(budget),
            i.utilization * 100.0,
            gib(i.free_at_open_bytes),
            gib(budget.saturating_sub(fixed)),
            gib(weights),
            gib(activations),
            gib(RESERVE_BYTES),
            cfg.max_context,
            gib(per_seq_blocks * block)
        )));
    }
    let cap = per_seq_blocks.max(1) * i.max_num_seqs.max(1);
    let num_blocks = room.min(cap);
    Ok(MemoryPlan {
        total_bytes: i.total_bytes,
        free_at_open_bytes: i.free_at_open_bytes,
        utilization: i.utilization,
        budget_bytes: budget,
        weights_bytes: weights,
        activation_bytes: activations,
        reserve_bytes: RESERVE_BYTES,
        block_bytes: block,
        num_blocks,
        kv_bytes: num_blocks * block,
        capped: num_blocks < room,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_8b() -> ModelConfig {
        let text = r#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
            "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0}"#;
        ModelConfig::from_json_str(text, "llama-8b.json").unwrap()
    }

    fn inputs(free: usize, weights: usize) -> PlanInputs {
        PlanInputs {
            total_bytes: 80 << 30,
            free_at_open_bytes: free,
            free_after_weights_bytes: free - weights,
            utilization: 0.9,
            elem_bytes: 2,
            block_size: 16,
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
        }
    }

    #[test]
    fn llama_8b_on_an_80_gib_gpu() {
        let cfg = llama_8b();
        // 32 layers x 16 tokens x 8 heads x 128 x 2 bytes x (K, V) = 2 MiB per block
        assert_eq!(block_bytes(&cfg, 32, 16, 2), 2 << 20);
        let p = plan(&cfg, &plain(&cfg), inputs(79 << 30, 15 << 30)).unwrap();
        assert_eq!(p.budget_bytes, ((79u64 << 30) as f64 * 0.9) as usize);
        let used = p.weights_bytes + p.activation_bytes + p.reserve_bytes + p.kv_bytes;
        assert!(used <= p.budget_bytes && p.budget_bytes - used < p.block_bytes);
        assert!(!p.capped);
        // about 55 GiB of KV: ~27k blocks
        assert!((26_000..29_000).contains(&p.num_blocks), "{}", p.num_blocks);
        assert!(p.to_string().contains("blocks x 2048 KiB"), "{p}");
    }

    #[test]
    fn too_little_memory_is_a_clear_error_and_bad_fractions_are_rejected() {
        let cfg = llama_8b();
        let e = plan(&cfg, &plain(&cfg), inputs(16 << 30, 15 << 30))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not enough GPU memory") && e.contains("--gpu-memory-utilization"),
            "{e}"
        );
        for bad in [0.0, 1.5, f64::NAN] {
            let e = plan(
                &cfg,
                &plain(&cfg),
                PlanInputs {
                    utilization: bad,
                    ..inputs(79 << 30, 15 << 30)
                },
            );
            assert!(matches!(e, Err(Error::Invalid(_))));
        }
    }

    #[test]
    fn tiny_models_are_capped_at_what_sequences_can_use() {
        let text = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
            "vocab_size": 512, "max_position_embeddings": 256}"#;
        let cfg = ModelConfig::from_json_str(text, "tiny.json").unwrap();
        let p = plan(&cfg, &plain(&cfg), inputs(79 << 30, 1 << 20)).unwrap();
        assert!(p.capped);
        assert_eq!(p.num_blocks, 256 * (256 / 16));
    }

    #[test]
    fn a_hybrid_model_gets_blocks_of_its_group_size_and_a_cap_of_what_its_groups_hold() {
        // Gemma-3-1B-like: 26 layers, every 6th full, window 512, context 32768
        let text = r#"{"model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912,
            "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "num_hidden_layers": 26, "vocab_size": 262144, "max_position_embeddings": 32768,
            "sliding_window": 512, "sliding_window_pattern": 6}"#;
        let cfg = ModelConfig::from_json_str(text, "gemma3.json").unwrap();
        let hybrid = KvLayout::for_model(&cfg, false);
        assert_eq!((hybrid.slots(), hybrid.num_groups()), (4, 7));
        // 4 slots x 16 tokens x 1 head x 256 x 2 bytes x (K, V) = 64 KiB a block
        assert_eq!(block_bytes(&cfg, hybrid.slots(), 16, 2), 64 << 10);
        let p = plan(&cfg, &hybrid, inputs(79 << 30, 1 << 30)).unwrap();
        // a full-context sequence: 2048 blocks in the full group, ⌈(511 + 2048) / 16⌉ + 1 = 161 in
        // each of 6 sliding groups
        assert!(p.capped);
        assert_eq!(p.num_blocks, 256 * (2048 + 6 * 161));
        // every layer in one table: blocks of 26 layers, capped at 256 whole contexts
        let plain = plan(&cfg, &plain(&cfg), inputs(79 << 30, 1 << 30)).unwrap();
        assert_eq!(plain.block_bytes, 26 * 16 * 256 * 2 * 2);
        assert!(!plain.capped);
        // a step's metadata holds a slot per token and a table per sequence in each of the 7
        // groups: 6 more of each (u32) than in one group, whatever the block size
        for block_size in [16, 1] {
            let grouped = activation_bytes(&cfg, 2, 2048, 256, 7, block_size);
            let single = activation_bytes(&cfg, 2, 2048, 256, 1, block_size);
            assert_eq!(
                grouped - single,
                4 * 6 * (2048 + 256 * 32768usize.div_ceil(block_size))
            );
        }
        assert_eq!(
            p.activation_bytes,
            activation_bytes(&cfg, 2, 2048, 256, 7, 16)
        );
    }

    /// Every layer in one KV group (the layout of a model without sliding layers).
    #[test]
    fn a_mixture_of_experts_adds_its_router_and_expert_rows() {
        let dense = r#"{"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
            "vocab_size": 32000, "max_position_embeddings": 32768}"#;
        let moe = dense.replace("mistral", "mixtral");
        let dense = ModelConfig::from_json_str(dense, "config.json").unwrap();
        let moe = ModelConfig::from_json_str(&moe, "config.json").unwrap();
        let (t, rows) = (2048, 256);
        let extra =
            activation_bytes(&moe, 2, t, rows, 1, 16) - activation_bytes(&dense, 2, t, rows, 1, 16);
        // 8 router logits and 2 experts' rows (2 · 4096 + 3 · 14336) per token, in bf16, less the
        // dense MLP's rows (3 · 14336: every layer is experts); the plan's 3 words per choice
        // (4096 choices)
        let moe_rows = 8 + 2 * (2 * 4096 + 3 * 14336) - 3 * 14336;
        assert_eq!(extra, 2 * t * moe_rows + 4 * 3 * 4096);
    }

    fn plain(cfg: &ModelConfig) -> KvLayout {
        KvLayout::for_model(cfg, true)
    }
}
