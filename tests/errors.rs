//! Bad input gets a clear error naming what is wrong, never a panic.

mod common;

use std::path::Path;

use common::*;
use infermeter::model::tensor_store::{read_all_raw, write_safetensors, OutTensor};
use serde_json::json;

fn load_err(dir: &Path) -> String {
    match load_cpu_result(dir) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` does not mention `{p}`");
    }
}

#[test]
fn missing_directory_names_it_and_lists_known_models() {
    let e = infermeter::model::load("/no/such/model-dir", Default::default())
        .err()
        .unwrap()
        .to_string();
    assert_mentions(&e, &["/no/such/model-dir", "tiny-llama", "llama-3.2-1b"]);
}

#[test]
fn missing_files() {
    let dir = tempfile::tempdir().unwrap();
    assert_mentions(&load_err(dir.path()), &["config.json"]);
    let dir = copy_model(&model_dir("tiny-llama"));
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &["model.safetensors", "--dummy-weights"],
    );
    // a shard listed in the index but absent
    let dir = copy_model(&model_dir("tiny-llama"));
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        json!({"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}})
            .to_string(),
    )
    .unwrap();
    assert_mentions(&load_err(dir.path()), &["model-00001-of-00001.safetensors"]);
}

#[test]
fn unknown_model_type_lists_supported() {
    let dir = copy_model(&model_dir("tiny-llama"));
    let mut cfg = read_config(dir.path());
    cfg["model_type"] = json!("mamba");
    write_config(dir.path(), &cfg);
    assert_mentions(
        &load_err(dir.path()),
        &["mamba", "gpt2", "llama", "config.json"],
    );
}

#[test]
fn malformed_json_names_the_file() {
    let dir = copy_model(&model_dir("tiny-llama"));
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"llama\",",
    )
    .unwrap();
    assert_mentions(&load_err(dir.path()), &["config.json", "malformed JSON"]);
}

#[test]
fn bad_config_fields_are_named() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("hidden_size", json!("wide"), "hidden_size"),
        ("num_key_value_heads", json!(3), "num_key_value_heads"),
        ("hidden_act", json!("relu"), "hidden_act"),
        (
            "rope_scaling",
            json!({"rope_type": "ntk-by-parts", "factor": 4.0}),
            "ntk-by-parts",
        ),
        (
            "rope_scaling",
            json!({"rope_type": "dynamic", "factor": 0.5}),
            "rope_scaling.factor",
        ),
        (
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": "4"}),
            "rope_scaling.factor",
        ),
        (
            "rope_scaling",
            json!({"rope_type": "yarn", "factor": 4.0, "truncate": "no"}),
            "rope_scaling.truncate",
        ),
        (
            "rope_scaling",
            json!({"rope_type": "llama3", "factor": 8.0}),
            "low_freq_factor",
        ),
    ];
    for (field, value, expect) in cases {
        let dir = copy_model(&model_dir("tiny-llama"));
        let mut cfg = read_config(dir.path());
        cfg[field] = value;
        write_config(dir.path(), &cfg);
        assert_mentions(&load_err(dir.path()), &[expect]);
    }
    let dir = copy_model(&model_dir("tiny-llama"));
    let mut cfg = read_config(dir.path());
    cfg.as_object_mut().unwrap().remove("num_hidden_layers");
    write_config(dir.path(), &cfg);
    assert_mentions(&load_err(dir.path()), &["num_hidden_layers", "missing"]);
}

#[test]
fn truncated_or_corrupt_safetensors() {
    let dir = copy_model(&model_dir("tiny-llama"));
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(&load_err(dir.path()), &["model.safetensors", "truncated"]);
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert_mentions(&load_err(dir.path()), &["model.safetensors"]);
    let mut garbled = bytes.clone();
    for b in garbled[8..40].iter_mut() {
        *b = b'#';
    }
    std::fs::write(&path, &garbled).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &["model.safetensors", "invalid safetensors"],
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_model(&model_dir("tiny-llama"));
    let path = dir.path().join("model.safetensors");
    let ts: Vec<OutTensor> = read_all_raw(&path)
        .unwrap()
        .into_iter()
        .filter(|t| t.name != "model.layers.1.mlp.up_proj.weight")
        .collect();
    write_safetensors(&path, &ts).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &["model.layers.1.mlp.up_proj.weight", "not found"],
    );
}

#[test]
fn misshaped_tensor_names_expected_and_found() {
    let dir = copy_model(&model_dir("tiny-llama"));
    let path = dir.path().join("model.safetensors");
    let mut ts = read_all_raw(&path).unwrap();
    let t = ts
        .iter_mut()
        .find(|t| t.name == "model.layers.0.self_attn.o_proj.weight")
        .unwrap();
    t.shape = vec![t.shape[1], t.shape[0]]; // 64x64 stays square: use a real mismatch instead
    let n = t.bytes.len() / 4;
    t.shape = vec![n / 32, 32];
    write_safetensors(&path, &ts).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &[
            "model.layers.0.self_attn.o_proj.weight",
            "expected shape [64, 64]",
            "found [128, 32]",
        ],
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = copy_model(&model_dir("tiny-llama"));
    let path = dir.path().join("model.safetensors");
    let mut ts = read_all_raw(&path).unwrap();
    let t = ts
        .iter_mut()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    t.dtype = safetensors::Dtype::I32;
    write_safetensors(&path, &ts).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &["model.norm.weight", "I32", "unsupported dtype"],
    );
}

fn run_cli(args: &[&str]) -> (bool, String) {
    let out = infermeter_cmd().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.success(), stderr)
}

#[test]
fn prompt_without_tokenizer() {
    let (ok, err) = run_cli(&[
        "generate",
        "--model",
        "llama-3.2-1b",
        "--dummy-weights",
        "--prompt",
        "hello",
    ]);
    // The config-only model has no tokenizer; the error must say so before any weights are built.
    assert!(!ok);
    assert_mentions(&err, &["--prompt needs a tokenizer", "--ids"]);
}

#[test]
fn config_only_model_without_dummy_weights() {
    let (ok, err) = run_cli(&["generate", "--model", "gpt2", "--ids", "1,2"]);
    assert!(!ok);
    assert_mentions(&err, &["gpt2", "--dummy-weights"]);
}

#[test]
fn prompt_longer_than_context() {
    // tiny-gpt2 has 128 positions
    let ids = vec!["5"; 129].join(",");
    let (ok, err) = run_cli(&[
        "generate",
        "--model",
        "tiny-gpt2",
        "--ids",
        &ids,
        "--max-tokens",
        "1",
    ]);
    assert!(!ok);
    assert_mentions(&err, &["129 tokens", "context of 128"]);
    let (ok, err) = run_cli(&[
        "logits",
        "--model",
        "tiny-gpt2",
        "--ids",
        &ids,
        "--out",
        "/tmp/x.st",
    ]);
    assert!(!ok);
    assert_mentions(&err, &["context of 128"]);
}

#[test]
fn logits_out_naming_a_directory_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let logits_to = |out: &str| {
        run_cli(&[
            "logits",
            "--model",
            "tiny-gpt2",
            "--ids",
            "1,2",
            "--out",
            out,
        ])
    };
    let (ok, err) = logits_to(&d);
    assert!(!ok);
    assert_mentions(&err, &["--out", &d, "is a directory", "file"]);
    // A path written as a directory (trailing `/`) is refused too, not written as `x` or left as
    // a temporary file.
    let slash = format!("{}/x/", d);
    let (ok, err) = logits_to(&slash);
    assert!(!ok);
    assert_mentions(&err, &["--out", &slash, "directory"]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A file path inside it is fine.
    let file = dir.path().join("l.safetensors");
    let (ok, err) = logits_to(file.to_str().unwrap());
    assert!(ok, "{err}");
    assert!(file.is_file());
}

#[test]
fn bad_ids_and_out_of_vocab_tokens() {
    let (ok, err) = run_cli(&["generate", "--ids", "1,x,3"]);
    assert!(!ok);
    assert_mentions(&err, &["`x`"]);
    let (ok, err) = run_cli(&["generate", "--ids", "1,99999", "--max-tokens", "1"]);
    assert!(!ok);
    assert_mentions(&err, &["99999", "vocabulary"]);
}

#[test]
fn bad_sampling_parameters() {
    let (ok, err) = run_cli(&["generate", "--ids", "1,2", "--top-p", "0"]);
    assert!(!ok);
    assert_mentions(&err, &["top_p"]);
}

/// Host memory is checked before the expensive part: a KV pool larger than any machine's memory
/// is refused with the arithmetic (not an allocator abort), and so is a model whose f32 host copy
/// exceeds what this machine has available (checked only where that is the case here).
#[test]
fn host_memory_is_checked_up_front() {
    let (ok, err) = run_cli(&[
        "run",
        "--backend",
        "cpu",
        "--kv-memory",
        "2000GiB",
        "--batch-size",
        "1",
        "--input-len",
        "4",
        "--output-len",
        "2",
        "--warmup",
        "0",
        "--no-telemetry",
        "--out",
        std::env::temp_dir()
            .join("infermeter-kv-too-big.json")
            .to_str()
            .unwrap(),
    ]);
    assert!(!ok);
    assert_mentions(&err, &["GiB of host memory", "--kv-memory"]);
    // llama-2-13b: 13.0 B parameters, 52 GB as f32
    let need = 13_015_864_320u64 * 4;
    match infermeter::telemetry::host::memory_available_bytes() {
        Some(avail) if avail < need => {
            let (ok, err) = run_cli(&[
                "generate",
                "--backend",
                "cpu",
                "--model",
                "llama-2-13b",
                "--dummy-weights",
                "--ids",
                "1,2",
                "--max-tokens",
                "1",
            ]);
            assert!(!ok);
            assert_mentions(
                &err,
                &["llama-2-13b", "B parameters × 4 bytes", "host memory"],
            );
        }
        other => println!("skipped the model check: {other:?} bytes available, llama-2-13b fits"),
    }
}

/// A tokenizer whose vocabulary outgrows the config's embedding (another model's tokenizer) is
/// refused at open, naming tokenizer.json, instead of failing later at the first prompt with an
/// id "outside the vocabulary".
#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_named() {
    let dir = copy_model(&model_dir("tiny-llama-bf16"));
    let mut cfg = read_config(dir.path());
    cfg["vocab_size"] = json!(256);
    write_config(dir.path(), &cfg);
    let err = infermeter::model::open(dir.path().to_str().unwrap())
        .err()
        .expect("refused")
        .to_string();
    assert_mentions(&err, &["tokenizer.json", "more than the vocab_size of 256"]);
}

/// Added tokens (`added_tokens`) with ids at or past the config's vocab_size are refused at open,
/// naming tokenizer.json, the token, its id and the vocab_size; added tokens whose ids fall inside
/// the embedding (a padded vocab_size) are fine.
#[test]
fn added_tokens_outside_the_embedding_are_warned_about_and_refused_in_prompts() {
    let add = |dir: &Path, contents: &[&str]| {
        let path = dir.join("tokenizer.json");
        let mut tok: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let added = tok["added_tokens"].as_array_mut().unwrap();
        for (i, c) in contents.iter().enumerate() {
            added.push(json!({
                "id": 512 + i, "content": c, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
        }
        std::fs::write(&path, serde_json::to_string(&tok).unwrap()).unwrap();
    };
    let open = |dir: &Path| infermeter::model::open(dir.to_str().unwrap());

    // The base vocabulary (512) fits the embedding (512); an added token past it is warned about
    // at open (real fine-tunes carry such a <pad>), and only a prompt containing it is refused.
    let dir = copy_model(&model_dir("tiny-llama-bf16"));
    add(dir.path(), &["<pad>"]);
    open(dir.path()).expect("opens with a warning");
    let generate = |dir: &Path, prompt: &str| {
        let model = dir.to_str().unwrap();
        run_cli(&[
            "generate",
            "--model",
            model,
            "--prompt",
            prompt,
            "--max-tokens",
            "2",
        ])
    };
    let (ok, stderr) = generate(dir.path(), "Hello");
    assert!(ok, "{stderr}");
    assert_mentions(
        &stderr,
        &[
            "warning:",
            "tokenizer.json",
            "`<pad>`",
            "id 512",
            "vocab_size",
            "is 512",
            "refused",
        ],
    );
    let (ok, stderr) = generate(dir.path(), "Hello <pad>");
    assert!(!ok, "a prompt with the token must be refused");
    assert_mentions(&stderr, &["512", "outside the vocabulary"]);

    // Several: the first is named, the rest counted.
    let dir = copy_model(&model_dir("tiny-llama-bf16"));
    add(dir.path(), &["<pad>", "<sep>", "<cls>"]);
    let (ok, stderr) = generate(dir.path(), "Hello");
    assert!(ok, "{stderr}");
    assert_mentions(&stderr, &["`<pad>`", "id 512", "2 more"]);

    // A padded embedding with room for them: more tokens in all than the tokenizer's base
    // vocabulary, every id inside the embedding.
    let dir = copy_model(&model_dir("tiny-llama-bf16"));
    add(dir.path(), &["<pad>", "<sep>", "<cls>"]);
    let mut cfg = read_config(dir.path());
    cfg["vocab_size"] = json!(515);
    write_config(dir.path(), &cfg);
    let src = open(dir.path()).unwrap();
    let tok = src.tokenizer.unwrap();
    assert_eq!(tok.vocab_size(), 515);
    assert_eq!(tok.encode_no_special("<cls>").unwrap(), vec![514]);

    // The fixtures and embedded models (an added token inside the base vocabulary) still open.
    for name in ["tiny-llama", "tiny-gpt2"] {
        open(&model_dir(name)).unwrap();
        infermeter::model::open(name).unwrap();
    }
    open(&model_dir("tiny-llama-bf16")).unwrap();
}
