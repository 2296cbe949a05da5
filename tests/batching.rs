//! The engine under continuous batching against sequential generation, for every fixture model:
//! mixed lengths, prefix caching on and off, a KV pool small enough to force preemptions, and a
//! token budget so small that every prefill is chunked.

mod common;

use std::time::Instant;

use common::*;
use infermeter::engine::{
    generate, Engine, EngineConfig, EngineRequest, GenerateRequest, SamplingParams,
};
use infermeter::kv::KvLayout;

struct Case {
    name: &'static str,
    cfg: EngineConfig,
}

/// The engine configurations, the tiny pools sized for a request of `max_context` tokens alone in
/// KV groups attending within `windows` (one group of full attention: one block per 4 tokens; a
/// hybrid model's sliding groups hold at most their window's blocks on top of the full ones).
fn cases(max_context: usize, windows: &[Option<usize>]) -> Vec<Case> {
    let alone = |budget: usize| {
        infermeter::kv::blocks_held(windows, 4, budget, max_context.div_ceil(4)) + 2
    };
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
                num_blocks: alone(roomy.max_num_batched_tokens),
                ..roomy
            },
        },
        Case {
            name: "tiny pool, budget 7, no prefix caching, 3 seqs",
            cfg: EngineConfig {
                block_size: 4,
                num_blocks: alone(7),
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
        // A model with sliding layers gives back the blocks that left their window, so a pool
        // that forces preemptions otherwise may not: its tiny-pool cases run once releasing and
        // once keeping every block (where the preemptions must happen), each with the pool its
        // KV layout needs for the longest request alone.
        let layout = |keep_all| KvLayout::for_model(&reference.config, keep_all).windows();
        let windowed = layout(false).iter().any(Option::is_some);
        let runs = [false, true].into_iter().flat_map(|keep_all| {
            cases(max_len, &layout(keep_all))
                .into_iter()
                .filter(move |case| !keep_all || (windowed && case.name.starts_with("tiny pool")))
                .map(move |case| (case.name, case.cfg, keep_all))
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
    let cfg = cases(max_len, &[None])[4].cfg;
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

/// A model with sliding layers gives back the KV blocks that left their window: one that slides
/// on every layer (tiny-mistral: 37 keys, tiny-phi3: 61) holds about window / block_size + 2 blocks
/// per request at a time; a hybrid (tiny-gemma2: a 20-key window on layers 0 and 2 of 3,
/// tiny-gemma3: 24 keys on 2 of 3) keeps every block of its full layers' group and the window's
/// blocks of each sliding group. Either way its KV memory at the peak (blocks × the layers a
/// block spans) is below what keeping every block takes, and its outputs stay those of
/// sequential generation, which keeps every block.
#[test]
fn a_model_with_sliding_layers_holds_only_its_windows() {
    for (name, groups) in [
        ("tiny-mistral", vec![Some(37)]),
        ("tiny-phi3", vec![Some(61)]),
        ("tiny-gemma2", vec![None, Some(20), Some(20)]),
        ("tiny-gemma3", vec![None, Some(24), Some(24)]),
    ] {
        let dir = model_dir(name);
        let reference = load_cpu(&dir);
        let layout = KvLayout::for_model(&reference.config, false);
        assert_eq!(layout.windows(), groups, "{name}");
        let g = golden(name);
        // the long golden prompt decoding past it, and a short one beside it
        let reqs = [(g[3].ids.clone(), 20), (g[1].ids.clone(), 40)];
        let run = |keep_all_kv_blocks: bool| {
            let cfg = EngineConfig {
                keep_all_kv_blocks,
                ..small_pool(512, 7)
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
            (peak, engine.kv_stats().window_released_blocks)
        };
        let (peak, released) = run(false);
        assert!(released > 0, "{name}");
        // between steps each request holds its whole sequence in a full group and at most its
        // window's blocks in a sliding one
        let bound: usize = reqs
            .iter()
            .map(|(p, n)| {
                groups
                    .iter()
                    .map(|w| w.map_or((p.len() + n).div_ceil(4), |w| (w - 1) / 4 + 2))
                    .sum::<usize>()
            })
            .sum();
        assert!(peak <= bound, "{name}: peak {peak} blocks, bound {bound}");
        let (peak_all, released_all) = run(true);
        assert_eq!(released_all, 0, "{name}");
        // memory: a block spans `slots` layers releasing, every layer keeping them all
        let layers = reference.config.num_layers;
        assert!(
            peak * layout.slots() < peak_all * layers,
            "{name}: {peak} blocks of {} layers vs {peak_all} of {layers}",
            layout.slots()
        );
    }
}

/// Under a window on every layer a request longer than the KV pool runs (as vLLM sizes a sliding
/// window's memory): tiny-mistral's 37-key window with 8-token steps needs ⌈(36 + 8) / 4⌉ + 1 = 12
/// blocks of 4 at a time, so a 16-block pool (64 tokens) runs a 230-token prompt and its outputs
/// beside a 100-token prefix of it, giving sequential generation's tokens; without a window (tiny-llama) such a
/// request is refused.
#[test]
fn under_a_window_requests_longer_than_the_pool_run() {
    let cfg = small_pool(16, 8);
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
    let cfg = small_pool(32, 16);
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

/// An engine of `num_blocks` blocks of 4 tokens, 4 sequences and `budget` tokens a step, prefix
/// caching on, releasing what leaves a window.
fn small_pool(num_blocks: usize, budget: usize) -> EngineConfig {
    EngineConfig {
        block_size: 4,
        num_blocks,
        max_num_seqs: 4,
        max_num_batched_tokens: budget,
        enable_prefix_caching: true,
        keep_all_kv_blocks: false,
    }
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

/// The KV groups compute the plain layout's numbers: a long prompt prefilled in chunks of 7 and
/// decoded for 12 tokens through a hybrid model's groups (tables from the KV manager, sliding
/// groups releasing the blocks that left their window after every step, so those blocks are
/// taken again for later positions) gives at every step the logits one pass over the whole
/// sequence in the plain layout gives at those positions. The fixtures' greedy outputs repeat a
/// token (untrained weights), so this compares logits, not tokens.
#[test]
fn kv_groups_compute_the_plain_layouts_logits() {
    use infermeter::engine::generate::all_logits;
    for name in ["tiny-gemma2", "tiny-gemma3", "tiny-mistral"] {
        let model = load_cpu(&model_dir(name));
        let tokens = groups_probe_tokens(name, model.config.vocab_size);
        let want = all_logits(&model, &tokens).unwrap();
        let (got, released) = logits_through_kv_groups(&model, &tokens, golden(name)[3].ids.len());
        let worst = max_abs_diff(&got, &want);
        assert!(worst <= 1e-4, "{name}: logits differ by {worst}");
        assert!(released > 0, "{name}");
    }
}
