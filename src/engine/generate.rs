//! Sequential generation of one request: the plain reference that batched, scheduled generation is
//! tested against, and what `infermeter generate` and `infermeter logits` run.
//!
//! The request gets a private KV cache with blocks 0..n in order; the prompt is one prefill step,
//! then one decode step per new token.

use std::time::Instant;

use super::batch::{build_batch, LogitsWanted, SeqChunk};
use super::sampling::{Sampler, SamplingParams};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig};

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep generating past an EOS token.
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// Reached max_tokens.
    Length,
    /// Produced an EOS token.
    Stop,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateOutput {
    pub output_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Seconds of the prefill step (prompt forward + first sample).
    pub prefill_s: f64,
    /// Seconds of all decode steps.
    pub decode_s: f64,
    /// Seconds from start to each output token.
    pub token_times_s: Vec<f64>,
}

impl GenerateOutput {
    /// Decode tokens per second (tokens after the first ÷ decode time).
    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        (self.output_ids.len() > 1 && self.decode_s > 0.0)
            .then(|| (self.output_ids.len() - 1) as f64 / self.decode_s)
    }
}

/// Default block size of the private cache (the engine's default too).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Check a prompt against the model before any work: not empty, every id in the vocabulary, and
/// prompt + `max_new` tokens within the context.
pub fn check_prompt(ids: &[u32], max_new: usize, cfg: &ModelConfig) -> Result<()> {
    if ids.is_empty() {
        return Err(Error::Invalid("the prompt is empty".into()));
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        return Err(Error::Invalid(format!(
            "prompt token id {bad} is outside the vocabulary of {}",
            cfg.vocab_size
        )));
    }
    if ids.len() + max_new > cfg.max_context {
        return Err(Error::ContextOverflow {
            len: ids.len(),
            max_new,
            context: cfg.max_context,
        });
    }
    Ok(())
}

/// Generate up to `max_tokens` tokens after the prompt.
pub fn generate<B: Backend>(model: &Model<B>, req: &GenerateRequest) -> Result<GenerateOutput> {
    req.sampling.validate()?;
    let n_prompt = req.prompt_ids.len();
    check_prompt(&req.prompt_ids, req.max_tokens, &model.config)?;
    let block_size = DEFAULT_BLOCK_SIZE;
    let total = n_prompt + req.max_tokens;
    let num_blocks = total.div_ceil(block_size).max(1);
    let mut kv = model.alloc_kv(num_blocks, block_size)?;
    let table: Vec<u32> = (0..num_blocks as u32).collect();
    let mut sampler = Sampler::new(req.sampling);
    let eos = &model.config.eos_token_ids;

    let start = Instant::now();
    let mut out = GenerateOutput {
        output_ids: Vec::with_capacity(req.max_tokens),
        finish_reason: FinishReason::Length,
        prefill_s: 0.0,
        decode_s: 0.0,
        token_times_s: Vec::with_capacity(req.max_tokens),
    };
    if req.max_tokens == 0 {
        return Ok(out);
    }
    let mut pending: Vec<u32> = req.prompt_ids.clone();
    let mut pos = 0;
    while out.output_ids.len() < req.max_tokens {
        let meta = build_batch(
            &[SeqChunk {
                tokens: &pending,
                start_pos: pos,
                block_tables: vec![&table],
                logits: LogitsWanted::Last,
            }],
            block_size,
        );
        let draw = sampler.draw();
        let tok = model
            .forward_pick(&meta, &mut kv, &[draw], &[])?
            .first()
            .copied()
            .ok_or_else(|| Error::Invalid("a step of the prompt picked no token".into()))?;
        pos += pending.len();
        out.output_ids.push(tok);
        let now = start.elapsed().as_secs_f64();
        out.token_times_s.push(now);
        if out.output_ids.len() == 1 {
            out.prefill_s = now;
        }
        if !req.ignore_eos && eos.contains(&tok) {
            out.finish_reason = FinishReason::Stop;
            break;
        }
        pending.clear();
        pending.push(tok);
    }
    out.decode_s = start.elapsed().as_secs_f64() - out.prefill_s;
    Ok(out)
}

/// Logits at every position of `ids`: [ids.len(), vocab], one prefill step.
pub fn all_logits<B: Backend>(model: &Model<B>, ids: &[u32]) -> Result<Vec<f32>> {
    check_prompt(ids, 0, &model.config)?;
    let block_size = DEFAULT_BLOCK_SIZE;
    let num_blocks = ids.len().div_ceil(block_size);
    let mut kv = model.alloc_kv(num_blocks, block_size)?;
    let table: Vec<u32> = (0..num_blocks as u32).collect();
    let meta = build_batch(
        &[SeqChunk {
            tokens: ids,
            start_pos: 0,
            block_tables: vec![&table],
            logits: LogitsWanted::All,
        }],
        block_size,
    );
    model.forward(&meta, &mut kv)
}
