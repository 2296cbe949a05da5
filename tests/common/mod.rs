//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use infermeter::backend::cpu::CpuBackend;
use infermeter::model::tensor_store::{raw_to_f32, read_all_raw, OutTensor};
use infermeter::model::{self, LoadOptions, Model};

pub const FIXTURES: &[&str] = &[
    "tiny-gpt2",
    "tiny-llama",
    "tiny-llama-bf16",
    "tiny-qwen2",
    "tiny-mistral",
    "tiny-qwen3",
    "tiny-phi3",
    "tiny-gemma3",
    "tiny-gemma2",
    "tiny-gemma",
    "tiny-granite",
    "tiny-smollm3",
    "tiny-olmo2",
    "tiny-phi",
    "tiny-starcoder2",
    "tiny-gpt-neox",
    "tiny-falcon",
    "tiny-opt",
    "tiny-gpt-bigcode",
    "tiny-gptj",
    "tiny-bloom",
    "tiny-mpt",
    "tiny-falcon-rw",
    "tiny-mixtral",
    "tiny-qwen3-moe",
    "tiny-olmoe",
];

/// [`FIXTURES`], or the ones `INFERMETER_TEST_FIXTURES` lists (comma-separated; each must be one
/// of them): the emulated CUDA runs of the per-fixture model tests take minutes per fixture, so a
/// change to one family can be checked on its own fixtures (`INFERMETER_TEST_FIXTURES=tiny-bloom
/// scripts/emulate-cuda cuda_model`). CI and GPU runs leave it unset.
pub fn fixtures() -> Vec<&'static str> {
    let Ok(list) = std::env::var("INFERMETER_TEST_FIXTURES") else {
        return FIXTURES.to_vec();
    };
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            FIXTURES
                .iter()
                .copied()
                .find(|f| *f == n)
                .unwrap_or_else(|| panic!("INFERMETER_TEST_FIXTURES: `{n}` is not a fixture"))
        })
        .collect()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The model directory of a fixture (weights for two of them live in `models/`).
pub fn model_dir(name: &str) -> PathBuf {
    let in_models = repo().join("models").join(name);
    if in_models.join("model.safetensors").is_file() {
        in_models
    } else {
        repo().join("tests/fixtures").join(name)
    }
}

pub struct GoldenPrompt {
    pub ids: Vec<u32>,
    /// [tokens, vocab]
    pub logits: Vec<f32>,
    pub greedy: Vec<u32>,
}

pub fn golden(name: &str) -> Vec<GoldenPrompt> {
    let tensors = read_all_raw(
        &repo()
            .join("tests/fixtures")
            .join(name)
            .join("golden.safetensors"),
    )
    .expect("golden file");
    let get = |key: &str| -> &OutTensor {
        tensors
            .iter()
            .find(|t| t.name == key)
            .unwrap_or_else(|| panic!("{key} in golden"))
    };
    let ints = |t: &OutTensor| -> Vec<u32> {
        t.bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
            .collect()
    };
    (0..4)
        .map(|n| GoldenPrompt {
            ids: ints(get(&format!("prompt{n}.ids"))),
            logits: raw_to_f32(get(&format!("prompt{n}.logits"))).expect("f32 logits"),
            greedy: ints(get(&format!("prompt{n}.greedy"))),
        })
        .collect()
}

pub fn load_cpu(dir: &Path) -> Model<CpuBackend> {
    load_cpu_result(dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

pub fn load_cpu_result(dir: &Path) -> infermeter::Result<Model<CpuBackend>> {
    let loaded = model::load(dir.to_str().unwrap(), LoadOptions::default())?;
    Ok(loaded.into_model(CpuBackend)?.0)
}

/// The CPU model's greedy continuation of `prompt`, `n` tokens, EOS ignored (as the goldens).
pub fn greedy_ignoring_eos(model: &Model<CpuBackend>, prompt: &[u32], n: usize) -> Vec<u32> {
    use infermeter::engine::generate::{generate, GenerateRequest};
    use infermeter::engine::SamplingParams;
    let req = GenerateRequest {
        prompt_ids: prompt.to_vec(),
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
    };
    generate(model, &req).unwrap().output_ids
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Copy a model directory's files into a fresh temporary directory.
pub fn copy_model(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

pub fn read_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

pub fn write_config(dir: &Path, v: &serde_json::Value) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(v).unwrap(),
    )
    .unwrap();
}

pub fn infermeter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_infermeter"))
}

/// The binary on the CPU backend (`INFERMETER_BACKEND=cpu`): these tests compare against CPU
/// references exactly, so on a GPU machine `--backend auto` must not move them to CUDA.
pub fn infermeter_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(infermeter_bin());
    c.env("INFERMETER_BACKEND", "cpu");
    c
}

/// Where `doc` breaks `schemas/results.schema.json`: every error with its path (empty: valid).
pub fn results_schema_errors(doc: &serde_json::Value) -> Vec<String> {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/results.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Check a results file against `schemas/results.schema.json` (every error listed) and return it.
pub fn validate_results(path: &Path) -> serde_json::Value {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let errors = results_schema_errors(&doc);
    assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    doc
}

/// `infermeter ARGS` on the CPU backend: (success, stdout, stderr). A panic is always a failure.
pub fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = infermeter_cmd().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    )
}

/// Block tables of consecutive blocks for sequences of `lens` tokens each (room for their decode
/// steps included), from block 1 on: block 0 stays unused, as padding rows of graph-padded steps
/// read it. Returns the tables and the pool size they need.
pub fn consecutive_tables(
    lens: impl IntoIterator<Item = usize>,
    block_size: usize,
) -> (Vec<Vec<u32>>, usize) {
    let mut tables = Vec::new();
    let mut next = 1u32;
    for len in lens {
        let blocks = len.div_ceil(block_size) as u32;
        tables.push((next..next + blocks).collect());
        next += blocks;
    }
    (tables, next as usize)
}

/// One step prefilling whole prompts over their block tables, with the logits of each prompt's
/// last token.
pub fn prefill_batch(
    prompts: &[Vec<u32>],
    tables: &[Vec<u32>],
    block_size: usize,
) -> infermeter::backend::BatchMeta {
    use infermeter::engine::batch::{build_batch, LogitsWanted, SeqChunk};
    let chunks: Vec<SeqChunk> = prompts
        .iter()
        .zip(tables)
        .map(|(p, t)| SeqChunk {
            tokens: p,
            start_pos: 0,
            block_tables: vec![t],
            logits: LogitsWanted::Last,
        })
        .collect();
    build_batch(&chunks, block_size)
}

/// A fixture's long golden prompt followed by 12 "outputs" (a fixed walk over the vocabulary: what
/// matters to the KV-group checks is the context, not the choice).
pub fn groups_probe_tokens(name: &str, vocab: usize) -> Vec<u32> {
    let mut tokens = golden(name)[3].ids.clone();
    tokens.extend((0..12u32).map(|i| (i * 37 + 5) % vocab as u32));
    tokens
}

/// Every position's logits [tokens, vocab] of `tokens` computed step by step through `model`'s KV
/// groups (`KvLayout::for_model`): the first `prompt_len` in chunks of 7, then one per step, over
/// block tables from a KV manager in 200 blocks of 4 whose sliding groups release the blocks that
/// left their window after every step (so later positions take them again). Also returns how many
/// blocks were released.
pub fn logits_through_kv_groups<B: infermeter::backend::Backend>(
    model: &Model<B>,
    tokens: &[u32],
    prompt_len: usize,
) -> (Vec<f32>, u64) {
    use infermeter::engine::batch::{build_batch, LogitsWanted, SeqChunk};
    use infermeter::kv::{KvCacheManager, KvLayout};
    let layout = KvLayout::for_model(&model.config, false);
    let (block_size, num_blocks) = (4, 200);
    let mut kv = KvCacheManager::new(num_blocks, block_size, false).with_groups(&layout.windows());
    let mut cache = model
        .alloc_kv_in(layout.clone(), num_blocks, block_size)
        .unwrap();
    let mut logits = Vec::with_capacity(tokens.len() * model.config.vocab_size);
    let mut done = 0;
    while done < tokens.len() {
        let n = if done < prompt_len {
            (prompt_len - done).min(7)
        } else {
            1
        };
        kv.allocate(1, tokens, 0, done + n).unwrap();
        let tables: Vec<&[u32]> = (0..layout.num_groups())
            .map(|g| kv.block_table(1, g))
            .collect();
        let meta = build_batch(
            &[SeqChunk {
                tokens: &tokens[done..done + n],
                start_pos: done,
                block_tables: tables,
                logits: LogitsWanted::All,
            }],
            block_size,
        );
        logits.extend(model.forward(&meta, &mut cache).unwrap());
        done += n;
        kv.release_outside_window(1, done);
        kv.check_invariants().unwrap();
    }
    kv.free(1);
    assert_eq!(kv.num_free_blocks(), num_blocks, "blocks leaked");
    (logits, kv.stats().window_released_blocks)
}
