//! Iteration-level (continuous batching) scheduler, as vLLM v1 does it.
//!
//! Each step has a token budget (`max_num_batched_tokens`). Requests are either *running* (own KV
//! blocks, in admission order) or *waiting* (FCFS queue). A step:
//! 1. Running requests first, in order: each gets the tokens it still needs (the rest of its prompt,
//!    or the one token sampled last step), cut to the remaining budget — a long prompt is therefore
//!    prefilled in chunks over several steps. If the KV pool cannot hold them, the most recently
//!    admitted running request is preempted (its blocks freed, its progress reset: it will be
//!    recomputed, prompt and outputs so far, when re-admitted) until the request fits, or until it is
//!    itself the one preempted.
//! 2. If nothing was preempted, waiting requests are admitted FCFS while budget, `max_num_seqs` and
//!    KV blocks allow, starting from their longest prefix-cache hit. The queue is never reordered:
//!    a head that does not fit blocks the ones behind it (no starvation by smaller requests).
//!
//! Under an attention window (the KV manager's `with_window`) a running request gives back, after
//! each step, the blocks its next query can no longer see; allocation grows tables at the end as
//! always, so a long sequence needs about window / block_size + 2 blocks at a time.
//!
//! The scheduler owns each request's tokens and progress; the engine runs the planned step, then
//! reports sampled tokens (`complete_step`) and finished requests (`finish`).

use std::collections::VecDeque;

use crate::kv::{BlockId, KvCacheManager, KvStats, RequestId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SchedulerConfig {
    /// Most requests running at once.
    pub max_num_seqs: usize,
    /// Most tokens (prefill chunks + decode tokens) in one step.
    pub max_num_batched_tokens: usize,
}

/// A request as the scheduler sees it: tokens and progress.
#[derive(Debug, Clone)]
pub struct SeqState {
    pub id: RequestId,
    pub prompt_len: usize,
    /// Prompt followed by the outputs sampled so far.
    pub tokens: Vec<u32>,
    /// Leading tokens whose K/V are in the cache.
    pub num_computed: usize,
    pub num_preemptions: usize,
    /// Prompt tokens served from the prefix cache at the first admission. A recompute after a
    /// preemption that finds the request's own blocks still cached is not a prefix hit: counting
    /// it (over prompt and outputs) pushed the engine's hit rate past 100%.
    pub prefix_hit_tokens: usize,
}

impl SeqState {
    pub fn new(id: RequestId, prompt: Vec<u32>) -> Self {
        Self {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            num_preemptions: 0,
            prefix_hit_tokens: 0,
        }
    }

    pub fn num_outputs(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn remaining(&self) -> usize {
        self.tokens.len() - self.num_computed
    }
}

/// The tokens of one request in a step: positions `start..start + len` of its token list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledChunk {
    pub id: RequestId,
    pub start: usize,
    pub len: usize,
    /// The chunk reaches the end of the known tokens: the step samples the request's next token.
    pub samples: bool,
    /// A decode token (the one sampled last step), not prefill or recompute.
    pub is_decode: bool,
}

/// What one step runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub chunks: Vec<ScheduledChunk>,
    /// Requests preempted (by recompute) while planning this step.
    pub preempted: Vec<RequestId>,
    /// Requests admitted from the waiting queue in this step.
    pub admitted: Vec<RequestId>,
}

impl StepPlan {
    pub fn num_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }

    pub fn prefill_tokens(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| !c.is_decode)
            .map(|c| c.len)
            .sum()
    }

    pub fn decode_tokens(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| c.is_decode)
            .map(|c| c.len)
            .sum()
    }
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvCacheManager,
    waiting: VecDeque<SeqState>,
    /// In admission order: the last one is the first to be preempted.
    running: Vec<SeqState>,
    total_preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, kv: KvCacheManager) -> Self {
        assert!(cfg.max_num_seqs > 0 && cfg.max_num_batched_tokens > 0);
        Self {
            cfg,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            total_preemptions: 0,
        }
    }

    pub fn config(&self) -> SchedulerConfig {
        self.cfg
    }

    /// The longest request (prompt + outputs) that can run alone: the whole pool, or any length
    /// under an attention window when the pool holds a window and a step's chunk
    /// ([`crate::kv::max_request_tokens`]). A request within it always runs in the end: alone,
    /// it gets every block it asks for.
    pub fn capacity_tokens(&self) -> usize {
        self.kv.max_request_tokens(self.cfg.max_num_batched_tokens)
    }

    /// Queue a new request (FCFS). The caller checks it fits the pool (`capacity_tokens`).
    pub fn add(&mut self, seq: SeqState) {
        self.waiting.push_back(seq);
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    pub fn kv_stats(&self) -> KvStats {
        self.kv.stats()
    }

    pub fn total_preemptions(&self) -> u64 {
        self.total_preemptions
    }

    /// Request `id`'s blocks in KV group `group`.
    pub fn block_table(&self, id: RequestId, group: usize) -> &[BlockId] {
        self.kv.block_table(id, group)
    }

    /// Request `id`'s blocks in every KV group, in group order.
    pub fn block_tables(&self, id: RequestId) -> impl Iterator<Item = &[BlockId]> + '_ {
        self.kv.block_tables(id)
    }

    /// A running request's state.
    pub fn running_seq(&self, id: RequestId) -> Option<&SeqState> {
        self.running.iter().find(|s| s.id == id)
    }

    /// The state of the request of a plan's `index`-th chunk, `id`: found in O(1) while the
    /// running requests are as `schedule` left them (its chunks follow the running order: running
    /// requests first, then those it admitted, which it appended), else searched. A step of 256
    /// requests would otherwise walk half the running list per chunk.
    pub fn planned_seq(&self, index: usize, id: RequestId) -> Option<&SeqState> {
        self.running_index(index, id).map(|i| &self.running[i])
    }

    fn running_index(&self, hint: usize, id: RequestId) -> Option<usize> {
        match self.running.get(hint) {
            Some(s) if s.id == id => Some(hint),
            _ => self.running.iter().position(|s| s.id == id),
        }
    }

    /// Plan the next step.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_num_batched_tokens;

        // 1. running requests, in admission order
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let len = seq.remaining().min(budget);
            debug_assert!(len > 0, "a running request always has a token to compute");
            let total = seq.num_computed + len;
            let mut scheduled = false;
            loop {
                let seq = &self.running[i];
                if self.kv.allocate(seq.id, &seq.tokens, 0, total).is_ok() {
                    scheduled = true;
                    break;
                }
                // Out of blocks: preempt the most recently admitted request (maybe this one).
                let victim = self.running.pop().expect("running is not empty");
                let victim_is_current = self.running.len() == i;
                self.preempt(victim, &mut plan);
                if victim_is_current {
                    break;
                }
            }
            if !scheduled {
                break;
            }
            let seq = &self.running[i];
            plan.chunks.push(ScheduledChunk {
                id: seq.id,
                start: seq.num_computed,
                len,
                samples: total == seq.tokens.len(),
                is_decode: len == 1 && seq.num_outputs() > 0 && total == seq.tokens.len(),
            });
            budget -= len;
            i += 1;
        }

        // 2. admit waiting requests, FCFS, unless this step had to preempt
        if plan.preempted.is_empty() {
            while budget > 0 && self.running.len() < self.cfg.max_num_seqs {
                let Some(mut seq) = self.waiting.pop_front() else {
                    break;
                };
                let hit = self.kv.lookup_prefix_for(seq.id, &seq.tokens);
                let len = (seq.tokens.len() - hit).min(budget);
                let total = hit + len;
                // all or nothing: on Err the cache is as it was and the request keeps its place
                // (allocate checks the room itself: the prefix is walked once more, not twice)
                if self.kv.allocate(seq.id, &seq.tokens, hit, total).is_err() {
                    self.waiting.push_front(seq);
                    break;
                }
                seq.num_computed = hit;
                if seq.num_preemptions == 0 {
                    seq.prefix_hit_tokens = hit.min(seq.prompt_len);
                }
                plan.chunks.push(ScheduledChunk {
                    id: seq.id,
                    start: hit,
                    len,
                    samples: total == seq.tokens.len(),
                    // a recomputed request re-enters through prefill, never as decode
                    is_decode: false,
                });
                plan.admitted.push(seq.id);
                budget -= len;
                self.running.push(seq);
            }
        }
        plan
    }

    fn preempt(&mut self, mut victim: SeqState, plan: &mut StepPlan) {
        self.kv.preempt(victim.id);
        victim.num_computed = 0;
        victim.num_preemptions += 1;
        self.total_preemptions += 1;
        plan.preempted.push(victim.id);
        // An already-planned chunk of the victim cannot exist: victims come from the unplanned tail.
        self.waiting.push_front(victim);
    }

    /// Record a finished step: every chunk's tokens are computed, and requests that sampled got
    /// `sampled` (one token per chunk with `samples`, in plan order). Newly full blocks are offered
    /// to the prefix cache; under an attention window, blocks that left it are released.
    pub fn complete_step(&mut self, plan: &StepPlan, sampled: &[(RequestId, u32)]) {
        let mut sampled = sampled.iter();
        for (index, chunk) in plan.chunks.iter().enumerate() {
            // a sampling chunk's token is taken whether or not its request is still here
            let token = if chunk.samples { sampled.next() } else { None };
            let Some(i) = self.running_index(index, chunk.id) else {
                continue; // aborted meanwhile
            };
            let seq = &mut self.running[i];
            seq.num_computed = chunk.start + chunk.len;
            self.kv
                .cache_computed(seq.id, &seq.tokens, seq.num_computed);
            self.kv.release_outside_window(seq.id, seq.num_computed);
            if let Some(&(id, tok)) = token {
                debug_assert_eq!(id, seq.id);
                seq.tokens.push(tok);
            }
        }
    }

    /// Remove a finished (or aborted) request and free its blocks. Returns its final state.
    pub fn finish(&mut self, id: RequestId) -> Option<SeqState> {
        self.kv.free(id);
        if let Some(pos) = self.running.iter().position(|s| s.id == id) {
            return Some(self.running.remove(pos));
        }
        let pos = self.waiting.iter().position(|s| s.id == id)?;
        self.waiting.remove(pos)
    }
}

#[cfg(test)]
mod tests;
