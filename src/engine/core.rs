//! The engine's step loop: scheduler plans a step, the model runs it over the paged KV cache, the
//! samplers pick tokens, finished requests leave and free their blocks. Every step is recorded.

use std::collections::HashMap;
use std::time::Instant;

use super::batch::{build_batch, LogitsWanted, SeqChunk};
use super::generate::{check_prompt, FinishReason};
use super::sampling::{Sampler, SamplingParams, TokenBan};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::{KvCacheManager, KvLayout, KvStats, RequestId};
use crate::model::{KvCache, Model, ModelConfig};
use crate::sched::{Scheduler, SchedulerConfig, SeqState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub enable_prefix_caching: bool,
    /// Keep every KV block until its request ends, even for a model with sliding-window layers
    /// (`--keep-all-kv-blocks`: one block table for every layer, as if none slid): the
    /// full-footprint baseline to measure what releasing the blocks that left a window saves.
    /// Tokens are the same either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_all_kv_blocks: bool,
}

impl EngineConfig {
    /// How this engine lays out `model`'s KV cache ([`KvLayout::for_model`]): its layers grouped by
    /// attention window, or one group of full attention under `keep_all_kv_blocks`.
    pub fn kv_layout(&self, model: &ModelConfig) -> KvLayout {
        KvLayout::for_model(model, self.keep_all_kv_blocks)
    }

    /// The attention window outside of which this engine releases KV blocks for `model` when
    /// every layer slides within it (one KV group of [`kv_layout`](Self::kv_layout), with a
    /// window), unless `keep_all_kv_blocks`. A hybrid model's windows are its layout's groups'.
    pub fn kv_window(&self, model: &ModelConfig) -> Option<usize> {
        match self.kv_layout(model).windows()[..] {
            [w] => w,
            _ => None,
        }
    }

    /// The longest request (prompt + outputs) this engine admits for `model`
    /// ([`crate::kv::max_request_tokens`] over its pool, its KV groups' windows and the step
    /// budget).
    pub fn max_request_tokens(&self, model: &ModelConfig) -> usize {
        crate::kv::max_request_tokens(
            self.num_blocks,
            self.block_size,
            &self.kv_layout(model).windows(),
            self.max_num_batched_tokens,
        )
    }
}

/// Per-request options beyond `EngineRequest` (kept apart so existing callers stay unchanged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// EOS tokens cannot be sampled before the request has this many output tokens (the OpenAI /
    /// vLLM `min_tokens`): their logits are masked. Ignored with `ignore_eos`.
    pub min_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub ignore_eos: bool,
}

/// One engine step, as recorded. Times are seconds from the engine's epoch.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub index: u64,
    pub start_s: f64,
    pub end_s: f64,
    /// Sequences in the step's batch.
    pub batch_size: usize,
    pub prefill_tokens: usize,
    pub decode_tokens: usize,
    pub kv_blocks_used: usize,
    /// Requests preempted while planning this step.
    pub preemptions: usize,
    pub running: usize,
    pub waiting: usize,
}

impl StepRecord {
    pub fn duration_s(&self) -> f64 {
        self.end_s - self.start_s
    }

    /// The share of this step's time attributed to prefill: a step's time is split between prefill
    /// and decode in proportion to its prefill and decode token counts.
    pub fn prefill_fraction(&self) -> f64 {
        let total = self.prefill_tokens + self.decode_tokens;
        if total == 0 {
            0.0
        } else {
            self.prefill_tokens as f64 / total as f64
        }
    }
}

/// A token produced by a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenEvent {
    pub id: RequestId,
    pub token: u32,
    pub time_s: f64,
}

/// A request that left the engine, with its timeline (seconds from the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedRequest {
    pub id: RequestId,
    pub prompt_len: usize,
    pub output_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// When `add_request` was called.
    pub added_s: f64,
    /// When it was first scheduled into a step.
    pub admitted_s: Option<f64>,
    /// When each output token was produced.
    pub token_times_s: Vec<f64>,
    pub num_preemptions: usize,
    /// Prompt tokens served from the prefix cache at its (last) admission.
    pub prefix_hit_tokens: usize,
}

#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    pub tokens: Vec<TokenEvent>,
    pub finished: Vec<FinishedRequest>,
    pub record: Option<StepRecord>,
}

struct Runtime {
    sampler: Sampler,
    max_tokens: usize,
    min_tokens: usize,
    ignore_eos: bool,
    added_s: f64,
    admitted_s: Option<f64>,
    token_times_s: Vec<f64>,
}

pub struct Engine<B: Backend> {
    model: Model<B>,
    cache: KvCache<B>,
    sched: Scheduler,
    reqs: HashMap<RequestId, Runtime>,
    next_id: RequestId,
    epoch: Instant,
    steps: u64,
}

/// What the engine does with KV blocks that left an attention window under `layout` (from
/// [`EngineConfig::kv_layout`]), for the start-up line: empty where every block is kept while its
/// request runs.
pub fn window_release_note(layout: &KvLayout) -> String {
    match layout.windows()[..] {
        [None] => String::new(),
        [Some(w)] => format!(" (blocks that leave the {w}-token window are released)"),
        _ => format!(
            " ({}; a sliding group releases the blocks that leave its window)",
            layout.describe()
        ),
    }
}

impl<B: Backend> Engine<B> {
    /// An engine over `model` with a KV pool of `cfg.num_blocks` blocks; times are measured from
    /// `epoch`.
    pub fn new(model: Model<B>, cfg: EngineConfig, epoch: Instant) -> Result<Self> {
        if cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 {
            return Err(Error::Invalid(
                "--max-num-seqs and --max-num-batched-tokens must be positive".into(),
            ));
        }
        if cfg.num_blocks == 0 || cfg.block_size == 0 || cfg.num_blocks >= u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "the KV pool needs 1..2^32 blocks of at least one token (got {} blocks of {})",
                cfg.num_blocks, cfg.block_size
            )));
        }
        let layout = cfg.kv_layout(&model.config);
        let windows = layout.windows();
        let cache = model.alloc_kv_in(layout, cfg.num_blocks, cfg.block_size)?;
        if model.graph_stats().enabled {
            // recorded decode graphs point into the workspace: grow it to the step limits now, not
            // in the middle of the run (which would drop every recording)
            let rows = crate::model::graphs::padded_rows(cfg.max_num_seqs);
            model.reserve(cfg.max_num_batched_tokens.max(rows), rows)?;
        }
        let kv = KvCacheManager::new(cfg.num_blocks, cfg.block_size, cfg.enable_prefix_caching)
            .with_groups(&windows);
        let sched = Scheduler::new(
            SchedulerConfig {
                max_num_seqs: cfg.max_num_seqs,
                max_num_batched_tokens: cfg.max_num_batched_tokens,
            },
            kv,
        );
        Ok(Self {
            model,
            cache,
            sched,
            reqs: HashMap::new(),
            next_id: 0,
            epoch,
            steps: 0,
        })
    }

    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    pub fn now_s(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    pub fn has_unfinished(&self) -> bool {
        self.sched.has_work()
    }

    pub fn num_running(&self) -> usize {
        self.sched.num_running()
    }

    pub fn num_waiting(&self) -> usize {
        self.sched.num_waiting()
    }

    pub fn kv_blocks_used(&self) -> usize {
        self.sched.kv().num_used_blocks()
    }

    pub fn kv_blocks_total(&self) -> usize {
        self.sched.kv().num_blocks()
    }

    pub fn kv_stats(&self) -> KvStats {
        self.sched.kv_stats()
    }

    pub fn total_preemptions(&self) -> u64 {
        self.sched.total_preemptions()
    }

    /// Validate and queue a request.
    pub fn add_request(&mut self, req: EngineRequest) -> Result<RequestId> {
        self.add_request_with(req, RequestOptions::default())
    }

    /// Validate and queue a request with extra options (`min_tokens`).
    pub fn add_request_with(
        &mut self,
        req: EngineRequest,
        opts: RequestOptions,
    ) -> Result<RequestId> {
        req.sampling.validate()?;
        if opts.min_tokens > req.max_tokens {
            return Err(Error::Invalid(format!(
                "min_tokens ({}) must not exceed max_tokens ({})",
                opts.min_tokens, req.max_tokens
            )));
        }
        check_prompt(&req.prompt_ids, req.max_tokens, &self.model.config)?;
        if req.max_tokens == 0 {
            return Err(Error::Invalid("max_tokens must be at least 1".into()));
        }
        let need = req.prompt_ids.len() + req.max_tokens;
        let capacity = self.sched.capacity_tokens();
        if need > capacity {
            return Err(Error::Invalid(format!(
                "a request of {} prompt + {} output tokens cannot fit the KV pool of {capacity} tokens (raise --kv-blocks or --kv-memory)",
                req.prompt_ids.len(),
                req.max_tokens
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.reqs.insert(
            id,
            Runtime {
                sampler: Sampler::new(req.sampling),
                max_tokens: req.max_tokens,
                min_tokens: if req.ignore_eos { 0 } else { opts.min_tokens },
                ignore_eos: req.ignore_eos,
                added_s: self.now_s(),
                admitted_s: None,
                token_times_s: Vec::with_capacity(req.max_tokens),
            },
        );
        self.sched.add(SeqState::new(id, req.prompt_ids));
        Ok(id)
    }

    /// Drop a request wherever it is and free its blocks at once.
    pub fn abort(&mut self, id: RequestId) {
        self.sched.finish(id);
        self.reqs.remove(&id);
    }

    /// Run one step. Returns the tokens produced and the requests that finished.
    pub fn step(&mut self) -> Result<StepOutput> {
        let plan = self.sched.schedule();
        if plan.chunks.is_empty() {
            return Ok(StepOutput::default());
        }
        let start_s = self.now_s();
        for id in &plan.admitted {
            if let Some(r) = self.reqs.get_mut(id) {
                r.admitted_s.get_or_insert(start_s);
            }
        }
        let block_size = self.cache.geom.block_size;
        // one pick per sampling chunk, in logits-row order: its draw (the request's RNG advances
        // here, wherever the token is picked) and, below min_tokens, its end-of-sequence bans
        let eos_ids = &self.model.config.eos_token_ids;
        let vocab = self.model.config.vocab_size;
        let mut draws = Vec::new();
        let mut bans = Vec::new();
        for (row, c) in plan.chunks.iter().filter(|c| c.samples).enumerate() {
            let r = self
                .reqs
                .get_mut(&c.id)
                .expect("runtime of a running request");
            draws.push(r.sampler.draw());
            if r.token_times_s.len() < r.min_tokens && eos_ids.len() < vocab {
                bans.extend(eos_ids.iter().map(|&token| TokenBan {
                    row: row as u32,
                    token,
                }));
            }
        }
        let picked = {
            let chunks: Vec<SeqChunk> = plan
                .chunks
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let seq = self
                        .sched
                        .planned_seq(i, c.id)
                        .expect("planned requests are running");
                    SeqChunk {
                        tokens: &seq.tokens[c.start..c.start + c.len],
                        start_pos: c.start,
                        block_tables: self.sched.block_tables(c.id).collect(),
                        logits: if c.samples {
                            LogitsWanted::Last
                        } else {
                            LogitsWanted::None
                        },
                    }
                })
                .collect();
            let meta = build_batch(&chunks, block_size);
            self.model
                .forward_pick(&meta, &mut self.cache, &draws, &bans)?
        };
        let sampled: Vec<(RequestId, u32)> = plan
            .chunks
            .iter()
            .filter(|c| c.samples)
            .map(|c| c.id)
            .zip(picked)
            .collect();
        let end_s = self.now_s();
        self.sched.complete_step(&plan, &sampled);
        let kv_blocks_used = self.sched.kv().num_used_blocks();

        let mut out = StepOutput::default();
        let eos = &self.model.config.eos_token_ids;
        for &(id, tok) in &sampled {
            let r = self.reqs.get_mut(&id).expect("runtime");
            r.token_times_s.push(end_s);
            out.tokens.push(TokenEvent {
                id,
                token: tok,
                time_s: end_s,
            });
            let reason = if !r.ignore_eos && eos.contains(&tok) {
                Some(FinishReason::Stop)
            } else if r.token_times_s.len() >= r.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                let seq = self.sched.finish(id).expect("finished request was running");
                let r = self.reqs.remove(&id).expect("runtime");
                out.finished.push(FinishedRequest {
                    id,
                    prompt_len: seq.prompt_len,
                    output_ids: seq.tokens[seq.prompt_len..].to_vec(),
                    finish_reason: reason,
                    added_s: r.added_s,
                    admitted_s: r.admitted_s,
                    token_times_s: r.token_times_s,
                    num_preemptions: seq.num_preemptions,
                    prefix_hit_tokens: seq.prefix_hit_tokens,
                });
            }
        }
        out.record = Some(StepRecord {
            index: self.steps,
            start_s,
            end_s,
            batch_size: plan.chunks.len(),
            prefill_tokens: plan.prefill_tokens(),
            decode_tokens: plan.decode_tokens(),
            kv_blocks_used,
            preemptions: plan.preempted.len(),
            running: self.sched.num_running(),
            waiting: self.sched.num_waiting(),
        });
        self.steps += 1;
        Ok(out)
    }
}
