//! Host-side study: the KV manager's bookkeeping per scheduler step, in the plain layout (one block
//! table for every layer) and in Gemma 3 1B's KV groups (one full group and six with a 512-token
//! window, `kv::KvLayout`), so the cost the groups add to a step is measured, not guessed.
//!
//! - `admission`: what a waiting request whose prompt is all cached (a shared prefix of 4096 or
//!   32768 tokens) walks each time it is considered: `lookup_prefix_for`, then the all-or-nothing
//!   room check of `allocate` (`can_allocate` walks the same and changes nothing, so every
//!   iteration sees the same state). A request that the pool cannot take is considered again
//!   every step; its chain hashes are kept from its first lookup, so this is the cache's index
//!   walked per group.
//! - `first_admission`: the same for a request looked up for the first time (`lookup_prefix`,
//!   which hashes every block of the prompt once, then the room check).
//! - `decode_step`: 64 running requests from a 4096-token context each growing by one token: per
//!   request `allocate`, `cache_computed` and `release_outside_window`, as the engine does after
//!   every step; one state across the whole measurement (rebuilt outside the timed region after
//!   4096 steps), so every 16th step registers a block of every request in every group.
//! - `scheduler_step`: the whole host-side bookkeeping of a decode step of 256 running requests
//!   (4096-token contexts): `Scheduler::schedule`, the engine's per-chunk lookups of each
//!   request's tokens and block tables, and `complete_step` with one sampled token each.
//!
//! Blocks of 16 tokens, prefix caching on. `cargo bench --bench kv_manager`; CI runs it once
//! (`cargo test --benches`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Bencher, BenchmarkId, Criterion};
use infermeter::kv::{KvCacheManager, KvLayout};
use infermeter::sched::{Scheduler, SchedulerConfig, SeqState};

const BLOCK: usize = 16;

/// (name, each group's window)
fn layouts() -> Vec<(&'static str, Vec<Option<usize>>)> {
    // Gemma 3 1B: 26 layers, every sixth full
    let gemma3: Vec<Option<usize>> = (0..26).map(|l| (l % 6 != 5).then_some(512)).collect();
    vec![
        ("plain", vec![None]),
        (
            "gemma-3-1b groups",
            KvLayout::from_windows(&gemma3).windows(),
        ),
    ]
}

fn admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("kv_manager/admission");
    for (name, windows) in layouts() {
        for tokens in [4096usize, 32768] {
            let groups = windows.len();
            let num_blocks = groups * (tokens / BLOCK + 8);
            let mut m = KvCacheManager::new(num_blocks, BLOCK, true).with_groups(&windows);
            // an earlier request computed the prefix: its blocks stay cached once it is freed
            let prefix: Vec<u32> = (0..tokens as u32).map(|t| t % 50_000).collect();
            m.allocate(1, &prefix, 0, tokens).unwrap();
            m.cache_computed(1, &prefix, tokens);
            m.free(1);
            let mut prompt = prefix.clone();
            prompt.push(7);
            assert_eq!(
                m.lookup_prefix_for(2, &prompt),
                tokens,
                "{name}: the prefix must hit"
            );
            g.bench_function(BenchmarkId::new(name, tokens), |b| {
                b.iter(|| {
                    let hit = m.lookup_prefix_for(2, black_box(&prompt));
                    black_box(m.can_allocate(2, &prompt, hit, prompt.len()))
                })
            });
            g.bench_function(
                BenchmarkId::new(format!("first_admission/{name}"), tokens),
                |b| {
                    b.iter(|| {
                        let hit = m.lookup_prefix(black_box(&prompt));
                        black_box(m.can_allocate(3, &prompt, hit, prompt.len()))
                    })
                },
            );
        }
    }
    g.finish();
}

/// A pool where `seqs` sequences of up to `tokens` tokens each hold every block in each of
/// `groups` groups (no preemption, whatever the windows).
fn pool_blocks(groups: usize, seqs: usize, tokens: usize) -> usize {
    groups * seqs * (tokens / BLOCK + 2)
}

/// Time one step per iteration over a long-lived state, so that every step is a steady-state
/// step: `fresh` builds the state (outside the timed region) at the start and after every
/// `steps_per_state` steps; `step` gets the state and the step's number within it (from 1) and
/// returns the time of its measured part.
fn steady_steps<S>(
    b: &mut Bencher,
    state: &mut (S, usize),
    steps_per_state: usize,
    fresh: impl Fn() -> S,
    mut step: impl FnMut(&mut S, usize) -> Duration,
) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if state.1 >= steps_per_state {
                *state = (fresh(), 0);
            }
            state.1 += 1;
            total += step(&mut state.0, state.1);
        }
        total
    })
}

fn decode_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("kv_manager/decode_step");
    const SEQS: usize = 64;
    const CONTEXT: usize = 4096;
    // tokens each request grows by before the state is rebuilt (outside the timed region)
    const GROWTH: usize = 4096;
    for (name, windows) in layouts() {
        let num_blocks = pool_blocks(windows.len(), SEQS, CONTEXT + GROWTH);
        let fresh = || {
            let mut m = KvCacheManager::new(num_blocks, BLOCK, true).with_groups(&windows);
            let seqs: Vec<Vec<u32>> = (0..SEQS as u32)
                .map(|s| (0..CONTEXT as u32).map(|t| s * 100_000 + t).collect())
                .collect();
            for (id, tokens) in seqs.iter().enumerate() {
                m.allocate(id as u64, tokens, 0, CONTEXT).unwrap();
                m.cache_computed(id as u64, tokens, CONTEXT);
                m.release_outside_window(id as u64, CONTEXT);
            }
            (m, seqs)
        };
        let mut state = (fresh(), 0);
        g.bench_function(BenchmarkId::new(name, format!("{SEQS}x{CONTEXT}")), |b| {
            steady_steps(b, &mut state, GROWTH, fresh, |(m, seqs), step| {
                for s in seqs.iter_mut() {
                    s.push(step as u32);
                }
                let start = Instant::now();
                for (id, tokens) in seqs.iter().enumerate() {
                    let n = tokens.len();
                    m.allocate(id as u64, tokens, 0, n).unwrap();
                    m.cache_computed(id as u64, tokens, n);
                    m.release_outside_window(id as u64, n);
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn scheduler_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("kv_manager/scheduler_step");
    const SEQS: usize = 256;
    const CONTEXT: usize = 4096;
    // tokens each request grows by before the state is rebuilt (outside the timed region)
    const GROWTH: usize = 512;
    for (name, windows) in layouts() {
        let num_blocks = pool_blocks(windows.len(), SEQS, CONTEXT + GROWTH);
        let fresh = || {
            let kv = KvCacheManager::new(num_blocks, BLOCK, true).with_groups(&windows);
            let cfg = SchedulerConfig {
                max_num_seqs: SEQS,
                max_num_batched_tokens: SEQS * CONTEXT,
            };
            let mut sched = Scheduler::new(cfg, kv);
            for id in 0..SEQS as u64 {
                let prompt = (0..CONTEXT as u32)
                    .map(|t| id as u32 * 100_000 + t)
                    .collect();
                sched.add(SeqState::new(id, prompt));
            }
            // one step prefills every prompt and samples each one's first token
            let plan = sched.schedule();
            assert_eq!(
                plan.admitted.len(),
                SEQS,
                "{name}: every request admitted at once"
            );
            let sampled: Vec<(u64, u32)> = plan.chunks.iter().map(|c| (c.id, 1)).collect();
            sched.complete_step(&plan, &sampled);
            sched
        };
        let mut state = (fresh(), 0);
        g.bench_function(BenchmarkId::new(name, format!("{SEQS}x{CONTEXT}")), |b| {
            steady_steps(b, &mut state, GROWTH, fresh, |sched, step| {
                let start = Instant::now();
                let plan = sched.schedule();
                // what the engine reads per chunk to build the step's batch
                let mut read = 0usize;
                for (i, c) in plan.chunks.iter().enumerate() {
                    let seq = sched.planned_seq(i, c.id).expect("planned request runs");
                    read += seq.tokens[c.start..c.start + c.len].len();
                    read += sched.block_tables(c.id).map(<[u32]>::len).sum::<usize>();
                }
                let sampled: Vec<(u64, u32)> =
                    plan.chunks.iter().map(|c| (c.id, step as u32)).collect();
                sched.complete_step(&plan, &sampled);
                black_box(read);
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    admission(&mut c);
    decode_step(&mut c);
    scheduler_step(&mut c);
    c.final_summary();
}
