//! The engine under continuous batching against sequential generation, for every fixture model:
//! mixed lengths, prefix caching on and off, a KV pool small enough to force preemptions, and a
//! token budget so small that every prefill is chunked.

mod common;

use std::time::Instant;

use common::*;
use infermeter::engine::{
    generate, Engine, EngineConfig, EngineRequest, GenerateRequest, SamplingParams,
};

struct Case {
    name: &'static str,
    cfg: EngineConfig,
}

fn cases(max_context: usize) -> Vec<Case> {
    let roomy = EngineConfig {
        block_size: 16,
        num_blocks: 512,
        max_num_seqs: 64,
        max_num_batched_tokens: 4096,
        enable_prefix_caching: true,
        keep_all_kv_blocks: false,
    };
    vec![
        Case {
            name: "roomy, prefix caching",
            cfg: roomy,
        },
        Case {
            name: "roomy, no prefix caching",
            cfg: EngineConfig {
                enable_prefix_caching: false,
                ..roomy
            },
        },
        Case {
            name: "token budget 7 (every prefill chunked)",
            cfg: EngineConfig {
                max_num_batched_tokens: 7,
                ..roomy
            },
        },
        Case {
            name: "tiny pool (preemptions), block 4",
            cfg: EngineConfig {
                block_size: 4,
                // just enough for the longest request alone
                num_blocks: max_context.div_ceil(4) + 2,
                ..roomy
            },
        },
        Case {
            name: "tiny pool, budget 7, no prefix caching, 3 seqs",
            cfg: EngineConfig {
                block_size: 4,
                num_blocks: max_context.div_ceil(4) + 2,
                max_num_seqs: 3,
                max_num_batched_tokens: 7,
                enable_prefix_caching: false,
                keep_all_kv_blocks: false,
            },
        },
    ]
}

/// Prompts of mixed lengths: the golden ones, their prefixes (prefix-cache hits) and repeats.
fn prompts(name: &str) -> Vec<(Vec<u32>, usize)> {
    let g = golden(name);
    let mut v: Vec<(Vec<u32>, usize)> = g.iter().map(|p| (p.ids.clone(), p.greedy.len())).collect();
    let long = &g[3].ids;
    v.push((long[..long.len() / 2].to_vec(), 9));
    v.push((long[..33].to_vec(), 17));
    v.push((g[0].ids.clone(), 5));
    v.push((vec![g[1].ids[0]], 12));
    v
}

#[test]
fn batched_greedy_equals_sequential_for_every_fixture() {
    for name in FIXTURES {
        let dir = model_dir(name);
        let reqs = prompts(name);
        let reference = load_cpu(&dir);
        let expected: Vec<Vec<u32>> = reqs
            .iter()
            .map(|(p, n)| {
                generate(
                    &reference,
                    &GenerateRequest {
                        prompt_ids: p.clone(),
                        max_tokens: *n,
                        sampling: SamplingParams::greedy(),
                        ignore_eos: true,
                    },
                )
                .unwrap()
                .output_ids
            })
            .collect();
        // the golden prompts must also give HF's greedy continuation
        for (i, g) in golden(name).iter().enumerate() {
            assert_eq!(expected[i], g.greedy, "{name} prompt{i} sequential");
        }
        let max_len = reqs.iter().map(|(p, n)| p.len() + n).max().unwrap();
        // A model sliding on every layer gives back the blocks that left its window, so a pool
        // that forces preemptions otherwise may not: its tiny-pool cases run once releasing and
        // once keeping every block (where the preemptions must happen).
        let windowed = reference.config.kv_window().is_some();
        let runs = cases(max_len).into_iter().flat_map(|case| {
            let both = windowed && case.name.starts_with("tiny pool");
            let keeps: &[bool] = if both { &[false, true] } else { &[false] };
            keeps
                .iter()
                .map(move |&keep_all| (case.name, case.cfg, keep_all))
        });
        for (case_name, cfg, keep_all) in runs {
            let case = Case {
                name: case_name,
                cfg: EngineConfig {
                    keep_all_kv_blocks: keep_all,
                    ..cfg
                },
            };
            let label = match keep_all {
                true => format!("{}, keeping every block", case.name),
                false => case.name.to_string(),
            };
            let mut engine = Engine::new(load_cpu(&dir), case.cfg, Instant::now()).unwrap();
            let add = |engine: &mut Engine<_>, i: usize| {
                let (p, n) = &reqs[i];
                engine
                    .add_request(EngineRequest {
                        prompt_ids: p.clone(),
                        max_tokens: *n,
                        sampling: SamplingParams::greedy(),
                        ignore_eos: true,
                    })
                    .unwrap()
            };
            // The golden prompts arrive first; the ones sharing their prefixes a few steps later,
            // once those prefixes are computed and cached.
            let mut ids: Vec<u64> = (0..4).map(|i| add(&mut engine, i)).collect();
            for _ in 0..3 {
                engine.step().unwrap();
            }
            ids.extend((4..reqs.len()).map(|i| add(&mut engine, i)));
            let mut outputs = std::collections::HashMap::new();
            let mut steps = 0;
            let mut max_batch = 0;
            while engine.has_unfinished() {
                let out = engine.step().unwrap();
                if let Some(r) = out.record {
                    max_batch = max_batch.max(r.batch_size);
                    assert!(r.prefill_tokens + r.decode_tokens <= case.cfg.max_num_batched_tokens);
                }
                for f in out.finished {
                    outputs.insert(f.id, f.output_ids);
                }
                steps += 1;
                assert!(steps < 10_000, "{name} / {}: no progress", label);
            }
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(outputs[id], expected[i], "{name} / {}: request {i}", label);
            }
            assert!(
                max_batch > 1,
                "{name} / {}: requests never shared a step",
                label
            );
            assert_eq!(
                engine.kv_blocks_used(),
                0,
                "{name} / {}: blocks leaked",
                label
            );
            if case.name.starts_with("tiny pool") && (keep_all || !windowed) {
                assert!(
                    engine.total_preemptions() > 0,
                    "{name} / {}: the pool was meant to force preemptions",
                    label
                );
            }
            if case.name == "roomy, prefix caching" {
                assert!(
                    engine.kv_stats().prefix_hit_tokens > 0,
                    "{name}: no prefix hit"
                );
            }
        }
    }
}

/// Sampled (not greedy) generation is unchanged by batching and preemption too: each request has
/// its own seeded RNG, advanced once per token it samples.
#[test]
fn seeded_sampling_is_batch_invariant() {
    let dir = model_dir("tiny-llama");
    let reqs = prompts("tiny-llama");
    let sampling = |i: usize| SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.9,
        seed: 100 + i as u64,
    };
    let reference = load_cpu(&dir);
    let expected: Vec<Vec<u32>> = reqs
        .iter()
        .enumerate()
        .map(|(i, (p, n))| {
            generate(
                &reference,
                &GenerateRequest {
                    prompt_ids: p.clone(),
                    max_tokens: *n,
                    sampling: sampling(i),
                    ignore_eos: true,
                },
            )
            .unwrap()
            .output_ids
        })
        .collect();
    let max_len = reqs.iter().map(|(p, n)| p.len() + n).max().unwrap();
    let cfg = cases(max_len)[4].cfg;
    let mut engine = Engine::new(load_cpu(&dir), cfg, Instant::now()).unwrap();
    for (i, (p, n)) in reqs.iter().enumerate() {
        engine
            .add_request(EngineRequest {
                prompt_ids: p.clone(),
                max_tokens: *n,
                sampling: sampling(i),
                ignore_eos: true,
            })
            .unwrap();
    }
    let mut outputs = std::collections::HashMap::new();
    while engine.has_unfinished() {
        for f in engine.step().unwrap().finished {
            outputs.insert(f.id, f.output_ids);
        }
    }
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&outputs[&(i as u64)], want, "request {i}");
    }
}

#[test]
fn requests_that_cannot_fit_are_rejected_with_a_reason() {
    let cfg = EngineConfig {
        block_size: 4,
        num_blocks: 2,
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        enable_prefix_caching: true,
        keep_all_kv_blocks: false,
    };
    let mut engine = Engine::new(load_cpu(&model_dir("tiny-llama")), cfg, Instant::now()).unwrap();
    let err = engine
        .add_request(EngineRequest {
            prompt_ids: vec![1; 6],
            max_tokens: 3,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("KV pool of 8 tokens"), "{err}");
}

#[test]
fn abort_frees_blocks_at_once() {
    let cfg = EngineConfig {
        block_size: 4,
        num_blocks: 64,
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        enable_prefix_caching: false,
        keep_all_kv_blocks: false,
    };
    let mut engine = Engine::new(load_cpu(&model_dir("tiny-llama")), cfg, Instant::now()).unwrap();
    let id = engine
        .add_request(EngineRequest {
            prompt_ids: vec![1; 20],
            max_tokens: 30,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
        })
        .unwrap();
    engine.step().unwrap();
    engine.step().unwrap();
    assert!(engine.kv_blocks_used() >= 5);
    engine.abort(id);
    assert_eq!(engine.kv_blocks_used(), 0);
    assert!(!engine.has_unfinished());
}

/// A model that slides on every layer (tiny-mistral: 37 keys, tiny-phi3: 61) gives back the KV
/// blocks that left its window, so a long request holds about window / block_size + 2 blocks at a
/// time; its outputs stay those of sequential generation, which keeps every block. A hybrid model
/// (tiny-gemma2: windows on layers 0 and 2 only) keeps every block.
#[test]
fn a_model_sliding_on_every_layer_holds_only_its_window() {
    for (name, window) in [
        ("tiny-mistral", Some(37)),
        ("tiny-phi3", Some(61)),
        ("tiny-gemma2", None),
    ] {
        let dir = model_dir(name);
        let reference = load_cpu(&dir);
        assert_eq!(reference.config.kv_window(), window, "{name}");
        let g = golden(name);
        // the long golden prompt decoding past it, and a short one beside it
        let reqs = [(g[3].ids.clone(), 20), (g[1].ids.clone(), 40)];
        let cfg = EngineConfig {
            block_size: 4,
            num_blocks: 256,
            max_num_seqs: 4,
            max_num_batched_tokens: 7,
            enable_prefix_caching: true,
            keep_all_kv_blocks: false,
        };
        let mut engine = Engine::new(load_cpu(&dir), cfg, Instant::now()).unwrap();
        let mut expected = std::collections::HashMap::new();
        for (p, n) in &reqs {
            let (id, want) = submit_greedy(&mut engine, &reference, p, *n);
            expected.insert(id, want);
        }
        let mut peak = 0;
        while engine.has_unfinished() {
            let out = engine.step().unwrap();
            peak = peak.max(out.record.unwrap().kv_blocks_used);
            for f in out.finished {
                assert_eq!(f.output_ids, expected[&f.id], "{name}: request {}", f.id);
                expected.remove(&f.id);
            }
        }
        assert!(expected.is_empty());
        assert_eq!(engine.kv_blocks_used(), 0, "{name}: blocks leaked");
        let longest = reqs[0].0.len() + reqs[0].1;
        let released = engine.kv_stats().window_released_blocks;
        match window {
            Some(w) => {
                // between steps each of the two requests holds at most its window's blocks
                assert!(peak <= 2 * ((w - 1) / 4 + 2), "{name}: peak {peak} blocks");
                assert!(released > 0, "{name}");
            }
            None => {
                assert!(
                    peak >= longest.div_ceil(4) - 1,
                    "{name}: peak {peak} blocks"
                );
                assert_eq!(released, 0, "{name}");
            }
        }
    }
}

/// Under a window on every layer a request longer than the KV pool runs (as vLLM sizes a sliding
/// window's memory): tiny-mistral's 37-key window with 8-token steps needs ⌈(36 + 8) / 4⌉ + 1 = 12
/// blocks of 4 at a time, so a 16-block pool (64 tokens) runs a 230-token prompt and its outputs
/// beside a 100-token prefix of it, giving sequential generation's tokens; without a window (tiny-llama) such a
/// request is refused.
#[test]
fn under_a_window_requests_longer_than_the_pool_run() {
    let cfg = EngineConfig {
        block_size: 4,
        num_blocks: 16,
        max_num_seqs: 4,
        max_num_batched_tokens: 8,
        enable_prefix_caching: true,
        keep_all_kv_blocks: false,
    };
    let dir = model_dir("tiny-mistral");
    let reference = load_cpu(&dir);
    let g = golden("tiny-mistral");
    let mut engine = Engine::new(load_cpu(&dir), cfg, Instant::now()).unwrap();
    let mut expected = std::collections::HashMap::new();
    for p in [g[3].ids.clone(), g[3].ids[..100].to_vec()] {
        assert!(p.len() + 20 > 64, "the request must outgrow the pool");
        let (id, want) = submit_greedy(&mut engine, &reference, &p, 20);
        expected.insert(id, want);
    }
    let mut steps = 0;
    while engine.has_unfinished() {
        for f in engine.step().unwrap().finished {
            assert_eq!(f.output_ids, expected[&f.id], "request {}", f.id);
            expected.remove(&f.id);
        }
        steps += 1;
        assert!(steps < 10_000, "no progress");
    }
    assert!(expected.is_empty());
    assert_eq!(engine.kv_blocks_used(), 0);

    let mut llama = Engine::new(load_cpu(&model_dir("tiny-llama")), cfg, Instant::now()).unwrap();
    let err = llama
        .add_request(EngineRequest {
            prompt_ids: vec![1; 60],
            max_tokens: 5,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("KV pool of 64 tokens"), "{err}");
}

/// Under a window a long prompt's early blocks are released first and so evicted first (here by
/// the request itself: tiny-mistral's 234-token sequence in a 32-block pool of 4), yet a later
/// request sharing its first 200 tokens hits all 200: its first new token's window (37 keys) reads
/// only cached blocks, and the evicted ones before stay verifiable as ghosts. Its outputs equal
/// sequential generation's.
#[test]
fn under_a_window_a_prefix_whose_early_blocks_were_evicted_still_hits() {
    let cfg = EngineConfig {
        block_size: 4,
        num_blocks: 32,
        max_num_seqs: 4,
        max_num_batched_tokens: 16,
        enable_prefix_caching: true,
        keep_all_kv_blocks: false,
    };
    let dir = model_dir("tiny-mistral");
    let reference = load_cpu(&dir);
    let long = golden("tiny-mistral")[3].ids.clone();
    assert_eq!(long.len(), 230);
    let mut engine = Engine::new(load_cpu(&dir), cfg, Instant::now()).unwrap();
    let run = |engine: &mut Engine<_>, prompt: &[u32]| {
        let (id, want) = submit_greedy(engine, &reference, prompt, 4);
        let mut got = None;
        while engine.has_unfinished() {
            for f in engine.step().unwrap().finished {
                assert_eq!(f.id, id);
                got = Some(f.output_ids);
            }
        }
        assert_eq!(got.unwrap(), want);
    };
    run(&mut engine, &long);
    assert_eq!(engine.kv_stats().prefix_hit_tokens, 0);
    assert!(
        engine.kv_stats().evictions > 0,
        "the early blocks were evicted"
    );
    let mut shared = long[..200].to_vec();
    shared.extend([5, 6, 7]);
    run(&mut engine, &shared);
    assert_eq!(engine.kv_stats().prefix_hit_tokens, 200);
    assert_eq!(engine.kv_blocks_used(), 0);
}

/// Queue a greedy request of `max_tokens` (EOS ignored) on `engine`; returns its id and the tokens
/// sequential generation on `reference` gives it.
fn submit_greedy<B: infermeter::backend::Backend>(
    engine: &mut Engine<B>,
    reference: &infermeter::model::Model<infermeter::backend::cpu::CpuBackend>,
    prompt: &[u32],
    max_tokens: usize,
) -> (u64, Vec<u32>) {
    let want = generate(
        reference,
        &GenerateRequest {
            prompt_ids: prompt.to_vec(),
            max_tokens,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
        },
    )
    .unwrap()
    .output_ids;
    let id = engine
        .add_request(EngineRequest {
            prompt_ids: prompt.to_vec(),
            max_tokens,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
        })
        .unwrap();
    (id, want)
}
