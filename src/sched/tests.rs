//! The scheduler driven by a simulated model whose next token depends on the whole context, over a
//! simulated paged KV store that records which (token, position) each slot holds. Every step checks
//! that each chunk reads exactly its own prefix through its block table — so chunking, preemption
//! and prefix sharing can never feed a request someone else's K/V. Under an attention window it
//! checks the window only (what attention reads), and that released blocks are not missed. With
//! several KV groups (a hybrid model) each group's tables and slots are checked on their own.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

/// Deterministic "model": the next token is a hash of the whole context.
fn next_token(context: &[u32], vocab: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in context {
        h = (h ^ t as u64).wrapping_mul(0x100_0000_01b3);
    }
    (h % vocab as u64) as u32
}

struct Sim {
    sched: Scheduler,
    block_size: usize,
    /// (KV group, slot) -> (token, position) last written there
    slots: HashMap<(usize, usize), (u32, usize)>,
    max_tokens: HashMap<RequestId, usize>,
    finished: HashMap<RequestId, Vec<u32>>,
    steps: usize,
}

impl Sim {
    fn new(num_blocks: usize, block_size: usize, caching: bool, cfg: SchedulerConfig) -> Self {
        Self::windowed(num_blocks, block_size, caching, cfg, None)
    }

    /// A simulation whose model attends to the last `window` positions on every layer.
    fn windowed(
        num_blocks: usize,
        block_size: usize,
        caching: bool,
        cfg: SchedulerConfig,
        window: Option<usize>,
    ) -> Self {
        Self::grouped(num_blocks, block_size, caching, cfg, &[window])
    }

    /// A simulation whose model has a KV group per entry of `windows`, attending within it.
    fn grouped(
        num_blocks: usize,
        block_size: usize,
        caching: bool,
        cfg: SchedulerConfig,
        windows: &[Option<usize>],
    ) -> Self {
        let kv = KvCacheManager::new(num_blocks, block_size, caching).with_groups(windows);
        Self {
            sched: Scheduler::new(cfg, kv),
            block_size,
            slots: HashMap::new(),
            max_tokens: HashMap::new(),
            finished: HashMap::new(),
            steps: 0,
        }
    }

    fn add(&mut self, id: RequestId, prompt: Vec<u32>, max_tokens: usize) {
        self.max_tokens.insert(id, max_tokens);
        self.sched.add(SeqState::new(id, prompt));
    }

    fn slot(&self, id: RequestId, group: usize, pos: usize) -> (usize, usize) {
        let table = self.sched.block_table(id, group);
        let slot = table[pos / self.block_size] as usize * self.block_size + pos % self.block_size;
        (group, slot)
    }

    fn step(&mut self, vocab: u32) {
        let plan = self.sched.schedule();
        let cfg = self.sched.config();
        assert!(plan.num_tokens() <= cfg.max_num_batched_tokens);
        assert!(self.sched.num_running() <= cfg.max_num_seqs);
        assert!(
            !plan.chunks.is_empty() || !self.sched.has_work(),
            "a step with work did nothing"
        );
        let mut sampled = Vec::new();
        for (i, c) in plan.chunks.iter().enumerate() {
            let seq = self
                .sched
                .planned_seq(i, c.id)
                .expect("chunk of a running request");
            assert_eq!(Some(seq.id), self.sched.running_seq(c.id).map(|s| s.id));
            let tokens = seq.tokens.clone();
            // in every group, the K/V this chunk attends to (its first query's window) must be
            // the request's own earlier tokens
            for (g, window) in self.sched.kv().windows().into_iter().enumerate() {
                let lo = window.map_or(0, |w| (c.start + 1).saturating_sub(w));
                for (p, &tok) in tokens.iter().enumerate().take(c.start).skip(lo) {
                    assert_eq!(
                        self.slots.get(&self.slot(c.id, g, p)),
                        Some(&(tok, p)),
                        "request {} reads a wrong K/V at position {p} in group {g}",
                        c.id
                    );
                }
                for (p, &tok) in tokens.iter().enumerate().skip(c.start).take(c.len) {
                    let s = self.slot(c.id, g, p);
                    self.slots.insert(s, (tok, p));
                }
            }
            if c.samples {
                sampled.push((c.id, next_token(&tokens, vocab)));
            }
        }
        self.sched.complete_step(&plan, &sampled);
        for &(id, _) in &sampled {
            let seq = self.sched.running_seq(id).unwrap();
            if seq.num_outputs() >= self.max_tokens[&id] {
                let s = self.sched.finish(id).unwrap();
                self.finished.insert(id, s.tokens[s.prompt_len..].to_vec());
            }
        }
        self.sched.kv().check_invariants().unwrap();
        let windows = self.sched.kv().windows();
        for (g, w) in windows.into_iter().enumerate() {
            let Some(w) = w else { continue };
            // between steps a request holds only the blocks of its next query's window
            for seq in &self.sched.running {
                let owned = self
                    .sched
                    .block_table(seq.id, g)
                    .iter()
                    .filter(|&&b| b != crate::kv::RELEASED_BLOCK)
                    .count();
                let bound = (w - 1) / self.block_size + 2;
                assert!(
                    owned <= bound,
                    "request {} holds {owned} blocks, more than a window of {w} needs ({bound})",
                    seq.id
                );
            }
        }
        self.steps += 1;
    }

    fn run(&mut self, vocab: u32, max_steps: usize) {
        while self.sched.has_work() {
            assert!(
                self.steps < max_steps,
                "no progress after {max_steps} steps (starvation?)"
            );
            self.step(vocab);
        }
    }
}

fn sequential(prompt: &[u32], max_tokens: usize, vocab: u32) -> Vec<u32> {
    let mut ctx = prompt.to_vec();
    for _ in 0..max_tokens {
        ctx.push(next_token(&ctx, vocab));
    }
    ctx[prompt.len()..].to_vec()
}

fn cfg(seqs: usize, tokens: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: seqs,
        max_num_batched_tokens: tokens,
    }
}

#[test]
fn chunked_prefill_splits_long_prompts_to_the_budget() {
    let mut sim = Sim::new(64, 4, false, cfg(8, 7));
    sim.add(1, (0..20).collect(), 3);
    let plan = sim.sched.schedule();
    assert_eq!(plan.chunks.len(), 1);
    assert_eq!(
        (
            plan.chunks[0].start,
            plan.chunks[0].len,
            plan.chunks[0].samples
        ),
        (0, 7, false)
    );
    sim.sched.complete_step(&plan, &[]);
    let plan = sim.sched.schedule();
    assert_eq!((plan.chunks[0].start, plan.chunks[0].len), (7, 7));
}

#[test]
fn decode_tokens_come_before_new_prefills_and_budget_is_shared() {
    let mut sim = Sim::new(64, 4, false, cfg(8, 10));
    sim.add(1, vec![1, 2, 3], 5);
    sim.step(50);
    sim.add(2, (0..30).collect(), 2);
    let plan = sim.sched.schedule();
    assert_eq!(plan.chunks[0].id, 1);
    assert!(plan.chunks[0].is_decode && plan.chunks[0].len == 1);
    assert_eq!((plan.chunks[1].id, plan.chunks[1].len), (2, 9));
}

#[test]
fn preemption_takes_the_most_recently_admitted_and_recomputes() {
    // 4 blocks of 2 tokens: two requests of 3-token prompts fit, then decoding outgrows the pool.
    let mut sim = Sim::new(4, 2, false, cfg(8, 64));
    sim.add(1, vec![1, 2, 3], 6);
    sim.add(2, vec![4, 5, 6], 6);
    sim.step(50);
    assert_eq!(sim.sched.num_running(), 2);
    let mut preempted = Vec::new();
    while sim.sched.has_work() {
        let before = sim.sched.total_preemptions();
        sim.step(50);
        if sim.sched.total_preemptions() > before {
            preempted.push(sim.steps);
        }
        assert!(sim.steps < 100);
    }
    assert!(
        !preempted.is_empty(),
        "the pool was meant to force a preemption"
    );
    assert_eq!(sim.finished[&1], sequential(&[1, 2, 3], 6, 50));
    assert_eq!(sim.finished[&2], sequential(&[4, 5, 6], 6, 50));
    assert_eq!(sim.sched.kv().num_free_blocks(), 4);
}

#[test]
fn a_recompute_finding_its_own_blocks_is_not_a_prefix_hit() {
    // Distinct prompts, prefix caching on, a pool that forces preemptions: a preempted request's
    // blocks stay cached, and its recompute finds them again (the KV manager counts those as hits;
    // with distinct prompts they can only be recompute hits). Its prefix hits must stay 0.
    let mut sim = Sim::new(6, 2, true, cfg(8, 64));
    sim.add(1, vec![1, 2, 3], 7);
    sim.add(2, vec![4, 5, 6], 7);
    while sim.sched.has_work() {
        sim.step(50);
        for id in [1, 2] {
            if let Some(s) = sim.sched.running_seq(id) {
                assert_eq!(s.prefix_hit_tokens, 0, "request {id}");
            }
        }
        assert!(sim.steps < 200);
    }
    assert!(sim.sched.total_preemptions() > 0, "meant to preempt");
    assert!(
        sim.sched.kv().stats().prefix_hit_tokens > 0,
        "meant to recompute from cached blocks"
    );
    assert_eq!(sim.finished[&1], sequential(&[1, 2, 3], 7, 50));
    assert_eq!(sim.finished[&2], sequential(&[4, 5, 6], 7, 50));
}

#[test]
fn a_window_lets_long_requests_share_a_small_pool() {
    // 12 blocks of 2 tokens hold one 3 + 20 token request alone; two at once only when each gives
    // back what its 3-position window has left (at most 3 blocks each between steps)
    let run = |window: Option<usize>| {
        let mut sim = Sim::windowed(12, 2, false, cfg(8, 64), window);
        sim.add(1, vec![1, 2, 3], 20);
        sim.add(2, vec![4, 5, 6], 20);
        sim.run(50, 500);
        assert_eq!(sim.finished[&1], sequential(&[1, 2, 3], 20, 50));
        assert_eq!(sim.finished[&2], sequential(&[4, 5, 6], 20, 50));
        assert_eq!(sim.sched.kv().num_free_blocks(), 12);
        (
            sim.sched.total_preemptions(),
            sim.sched.kv_stats().window_released_blocks,
        )
    };
    let (preemptions, released) = run(None);
    assert!(preemptions > 0 && released == 0, "{preemptions} {released}");
    let (preemptions, released) = run(Some(3));
    assert_eq!(preemptions, 0);
    assert!(released >= 2 * 9, "released {released}");
}

#[test]
fn under_a_window_requests_longer_than_the_pool_run() {
    // 6 blocks of 2 hold 12 tokens; a 3-position window with 2-token steps needs ⌈(2 + 2) / 2⌉ + 1
    // = 3 blocks at a time: a 9 + 30 token request runs, and two of them together
    let mut sim = Sim::windowed(6, 2, true, cfg(4, 2), Some(3));
    assert_eq!(sim.sched.capacity_tokens(), usize::MAX);
    let (a, b): (Vec<u32>, Vec<u32>) = ((0..9).collect(), (10..19).collect());
    sim.add(1, a.clone(), 30);
    sim.add(2, b.clone(), 30);
    sim.run(50, 1000);
    assert_eq!(sim.finished[&1], sequential(&a, 30, 50));
    assert_eq!(sim.finished[&2], sequential(&b, 30, 50));
    // without the window the pool holds 12 tokens
    let sim = Sim::new(6, 2, true, cfg(4, 2));
    assert_eq!(sim.sched.capacity_tokens(), 12);

    // a prefix hit on a long prompt takes only its window's blocks: request 4 shares request 3's
    // 20-token prompt, hits all 10 cached blocks, and holds at most 3
    let mut sim = Sim::windowed(32, 2, true, cfg(4, 64), Some(3));
    let prompt: Vec<u32> = (0..20).collect();
    sim.add(3, prompt.clone(), 2);
    sim.run(50, 100);
    let mut shared = prompt.clone();
    shared.push(99);
    sim.add(4, shared.clone(), 4);
    let plan = sim.sched.schedule();
    assert_eq!((plan.chunks[0].start, plan.chunks[0].len), (20, 1));
    let owned = sim
        .sched
        .block_table(4, 0)
        .iter()
        .filter(|&&b| b != crate::kv::RELEASED_BLOCK)
        .count();
    assert_eq!(owned, 2, "block 9 (tokens 18, 19) and the new block 10");
    sim.sched.complete_step(&plan, &[(4, 7)]);
    assert_eq!(sim.sched.running_seq(4).unwrap().prefix_hit_tokens, 20);
}

#[test]
fn fcfs_head_blocks_smaller_requests_behind_it() {
    let mut sim = Sim::new(4, 2, false, cfg(8, 64));
    sim.add(1, vec![1; 5], 1); // 3 blocks
    sim.add(2, vec![2; 5], 1); // 3 blocks: does not fit beside request 1
    sim.add(3, vec![3], 1); // 1 block: would fit, but must wait its turn
    let plan = sim.sched.schedule();
    assert_eq!(plan.admitted, vec![1]);
}

#[test]
fn prefix_cache_hits_skip_shared_prompt_blocks() {
    let mut sim = Sim::new(32, 4, true, cfg(8, 64));
    let shared: Vec<u32> = (0..12).collect();
    sim.add(1, [shared.clone(), vec![100, 101]].concat(), 2);
    sim.run(50, 100);
    sim.add(2, [shared.clone(), vec![200]].concat(), 2);
    let plan = sim.sched.schedule();
    assert_eq!((plan.chunks[0].start, plan.chunks[0].len), (12, 1));
    sim.sched.complete_step(&plan, &[(2, 7)]);
    assert_eq!(sim.sched.running_seq(2).unwrap().prefix_hit_tokens, 12);
}

#[test]
fn max_num_seqs_caps_the_batch() {
    let mut sim = Sim::new(64, 4, false, cfg(2, 64));
    for id in 0..5 {
        sim.add(id, vec![id as u32 + 1; 3], 2);
    }
    let plan = sim.sched.schedule();
    assert_eq!(plan.admitted.len(), 2);
    sim.run(50, 100);
    assert_eq!(sim.finished.len(), 5);
}

#[derive(Debug, Clone)]
struct Mix {
    num_blocks: usize,
    block_size: usize,
    caching: bool,
    max_seqs: usize,
    budget: usize,
    /// Each KV group's attention window (one group: every layer's; None: full attention).
    windows: Vec<Option<usize>>,
    /// (prefix family, extra tokens, max_tokens, arrival step)
    requests: Vec<(usize, Vec<u32>, usize, usize)>,
}

fn mix() -> impl Strategy<Value = Mix> {
    (
        1usize..5,
        any::<bool>(),
        1usize..6,
        1usize..24,
        prop::collection::vec(prop::option::of(1usize..12), 1..4),
        prop::collection::vec(
            (
                0usize..3,
                prop::collection::vec(0u32..4, 1..10),
                1usize..8,
                0usize..6,
            ),
            1..10,
        ),
    )
        .prop_map(
            |(block_size, caching, max_seqs, budget, windows, requests)| {
                // the pool must hold the longest request alone: prefix (≤ 8) + extra (≤ 9) + outputs
                // (≤ 7) in every group, where a windowed group needs at most the blocks of its
                // window and a chunk at a time (often fewer: then requests longer than the pool run)
                let longest = 24usize;
                let min_blocks = crate::kv::blocks_held(
                    &windows,
                    block_size,
                    budget,
                    longest.div_ceil(block_size),
                );
                let num_blocks = min_blocks + requests.len() % 3 * 4;
                let cap = crate::kv::max_request_tokens(num_blocks, block_size, &windows, budget);
                assert!(cap >= longest, "the pool must run every request alone");
                Mix {
                    num_blocks,
                    block_size,
                    caching,
                    max_seqs,
                    budget,
                    windows,
                    requests,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random request mixes, with and without an attention window: every request completes with
    /// exactly its sequential output, the KV each chunk reads is its own, a windowed request holds
    /// no more than its window's blocks between steps, reference counts stay consistent (checked every step), and every
    /// block is free at the end.
    #[test]
    fn random_mixes_match_sequential_and_free_everything(m in mix()) {
        let prefixes: [Vec<u32>; 3] = [(0..8).collect(), (0..8).map(|t| t % 3).collect(), vec![7; 5]];
        let mut sim = Sim::grouped(
            m.num_blocks,
            m.block_size,
            m.caching,
            cfg(m.max_seqs, m.budget),
            &m.windows,
        );
        let vocab = 6;
        let mut pending: Vec<(RequestId, Vec<u32>, usize, usize)> = m
            .requests
            .iter()
            .enumerate()
            .map(|(i, (fam, extra, max, arrival))| {
                (i as RequestId, [prefixes[*fam].clone(), extra.clone()].concat(), *max, *arrival)
            })
            .collect();
        let expected: HashMap<RequestId, Vec<u32>> = pending
            .iter()
            .map(|(id, p, max, _)| (*id, sequential(p, *max, vocab)))
            .collect();
        let mut step = 0;
        while !pending.is_empty() || sim.sched.has_work() {
            let (now, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|r| r.3 <= step);
            pending = later;
            for (id, prompt, max, _) in now {
                sim.add(id, prompt, max);
            }
            if sim.sched.has_work() {
                sim.step(vocab);
            }
            step += 1;
            prop_assert!(step < 2000, "no progress: starvation");
        }
        prop_assert_eq!(sim.finished.len(), expected.len());
        for (id, want) in &expected {
            prop_assert_eq!(&sim.finished[id], want, "request {}", id);
        }
        prop_assert_eq!(sim.sched.kv().num_free_blocks(), m.num_blocks);
    }
}

#[test]
fn a_request_aborted_during_its_step_leaves_the_others_their_tokens() {
    // the plan's chunks follow the running order; an abort between `schedule` and
    // `complete_step` shifts the requests after it, whose chunks must still find their own
    let mut sched = Scheduler::new(cfg(8, 64), KvCacheManager::new(32, 2, true));
    for id in 1..=3u64 {
        sched.add(SeqState::new(id, vec![id as u32; 3]));
    }
    let plan = sched.schedule();
    let ids: Vec<RequestId> = plan.chunks.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    for (i, c) in plan.chunks.iter().enumerate() {
        assert_eq!(sched.planned_seq(i, c.id).map(|s| s.id), Some(c.id));
    }
    sched.finish(1);
    assert_eq!(
        sched.planned_seq(1, 2).map(|s| s.id),
        Some(2),
        "found past its hint"
    );
    assert!(sched.planned_seq(0, 1).is_none());
    sched.complete_step(&plan, &[(1, 10), (2, 20), (3, 30)]);
    for (id, token) in [(2, 20), (3, 30)] {
        let seq = sched.running_seq(id).unwrap();
        assert_eq!(seq.num_computed, 3);
        assert_eq!(seq.tokens, vec![id as u32, id as u32, id as u32, token]);
    }
}
