//! Decode steps padded to a CUDA-graph key (`model::graphs::pad_to_key`) on the CPU reference: the
//! real rows' logits are those of the unpadded step, padding rows write no K/V (the caches stay
//! equal to the unpadded run's, element for element), and the padded metadata is valid. This is
//! the part of graph replay that does not need a GPU: a replay runs exactly the padded step's ops.

mod common;

use common::*;
use infermeter::backend::cpu::CpuBackend;
use infermeter::engine::batch::{build_batch, LogitsWanted, SeqChunk};
use infermeter::model::graphs::{graph_key, pad_to_key, GraphKey};
use infermeter::model::{KvCache, Model};

const BLOCK: usize = 16;

/// Prefill `lens` sequences of seeded tokens, then decode `steps` steps of all of them, each step
/// run unpadded on one cache and padded on another; returns the keys the steps had.
fn padded_equals_unpadded(
    name: &str,
    m: &Model<CpuBackend>,
    lens: &[usize],
    steps: usize,
) -> Vec<GraphKey> {
    let vocab = m.config.vocab_size;
    let (tables, num_blocks) = consecutive_tables(lens.iter().map(|l| l + steps), BLOCK);
    let mut plain: KvCache<CpuBackend> = m.alloc_kv(num_blocks, BLOCK).unwrap();
    let mut padded: KvCache<CpuBackend> = m.alloc_kv(num_blocks, BLOCK).unwrap();
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(s, &l)| {
            (0..l)
                .map(|i| ((i * 31 + s * 7 + 3) % vocab) as u32)
                .collect()
        })
        .collect();
    let prefill = prefill_batch(&prompts, &tables, BLOCK);
    assert_eq!(graph_key(&prefill).is_some(), lens.iter().all(|&l| l == 1));
    m.forward(&prefill, &mut plain).unwrap();
    m.forward(&prefill, &mut padded).unwrap();
    let mut keys = Vec::new();
    for step in 0..steps {
        let toks: Vec<[u32; 1]> = (0..lens.len())
            .map(|s| [((step * 13 + s) % vocab) as u32])
            .collect();
        let chunks: Vec<SeqChunk> = toks
            .iter()
            .enumerate()
            .map(|(s, t)| SeqChunk {
                tokens: t,
                start_pos: lens[s] + step,
                block_tables: vec![&tables[s]],
                logits: LogitsWanted::Last,
            })
            .collect();
        let meta = build_batch(&chunks, BLOCK);
        let key = graph_key(&meta).expect("a decode step");
        let p = pad_to_key(&meta, key, BLOCK);
        p.validate(&padded.geom).unwrap();
        let want = m.forward(&meta, &mut plain).unwrap();
        let got = m.forward(&p, &mut padded).unwrap();
        assert_eq!(got.len(), key.batch * vocab);
        let d = max_abs_diff(&got[..want.len()], &want);
        assert!(
            d <= 1e-5,
            "{name}: step {step} {key:?}: padded rows' logits differ by {d}"
        );
        keys.push(key);
    }
    for layer in 0..plain.k.len() {
        assert_eq!(
            plain.k[layer], padded.k[layer],
            "{name}: layer {layer} K cache"
        );
        assert_eq!(
            plain.v[layer], padded.v[layer],
            "{name}: layer {layer} V cache"
        );
    }
    keys
}

#[test]
fn padded_decode_steps_match_unpadded_on_every_fixture() {
    for name in FIXTURES {
        let m = load_cpu(&model_dir(name));
        let ctx = m.config.max_context;
        // batch 3 -> bucket 4, 5 -> 8; the longest context crosses 256 where the model allows it
        let long = (ctx - 12).min(250);
        let keys = padded_equals_unpadded(name, &m, &[long, 5, 17], 8);
        assert!(keys.iter().all(|k| k.batch == 4), "{name}: {keys:?}");
        let keys = padded_equals_unpadded(name, &m, &[1, 2, 3, 30, 64], 4);
        assert!(
            keys.iter().all(|k| k.batch == 8 && k.ctx == 256),
            "{name}: {keys:?}"
        );
        if ctx > 270 {
            let keys = padded_equals_unpadded(name, &m, &[250], 10);
            assert!(
                keys.first().is_some_and(|k| k.ctx == 256),
                "{name}: {keys:?}"
            );
            assert!(
                keys.last().is_some_and(|k| k.ctx == 512),
                "{name}: {keys:?}"
            );
        }
    }
}

#[test]
fn the_cpu_backend_runs_every_step_eagerly() {
    let m = load_cpu(&model_dir("tiny-llama"));
    m.set_graphs(true); // ignored: the CPU records nothing
    let s = m.graph_stats();
    assert!(!s.enabled);
    let mut kv = m.alloc_kv(4, BLOCK).unwrap();
    let table = [0u32, 1];
    let meta = build_batch(
        &[SeqChunk {
            tokens: &[5],
            start_pos: 0,
            block_tables: vec![&table],
            logits: LogitsWanted::Last,
        }],
        BLOCK,
    );
    m.forward(&meta, &mut kv).unwrap();
    let s = m.graph_stats();
    assert_eq!((s.recorded, s.replayed, s.eager), (0, 0, 1));
}
