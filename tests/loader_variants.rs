//! The loader on checkpoint variants not among the fixtures, each built from a fixture so the expected
//! output is known: name prefixes, shards, dtypes, tied/untied heads, GQA ratios, both config styles
//! and every RoPE form, derived head_dim.

mod common;

use std::path::Path;

use common::*;
use infermeter::engine::generate::all_logits;
use infermeter::model::tensor_store::{raw_to_f32, read_all_raw, write_safetensors, OutTensor};
use serde_json::json;

/// Logits of prompt 2 (a mid-length prompt) must match the golden ones.
fn assert_matches_golden(dir: &Path, fixture: &str, tol: f32) {
    let model = load_cpu(dir);
    let g = &golden(fixture)[2];
    let logits = all_logits(&model, &g.ids).unwrap();
    let err = max_abs_diff(&logits, &g.logits);
    assert!(err <= tol, "{}: max abs error {err} > {tol}", dir.display());
}

fn tensors(dir: &Path) -> Vec<OutTensor> {
    read_all_raw(&dir.join("model.safetensors")).unwrap()
}

fn rewrite(dir: &Path, ts: &[OutTensor]) {
    write_safetensors(&dir.join("model.safetensors"), ts).unwrap();
}

#[test]
fn gpt2_without_transformer_prefix() {
    let dir = copy_model(&model_dir("tiny-gpt2"));
    let mut ts = tensors(dir.path());
    assert!(ts.iter().all(|t| t.name.starts_with("transformer.")));
    for t in ts.iter_mut() {
        t.name = t.name.trim_start_matches("transformer.").to_string();
    }
    rewrite(dir.path(), &ts);
    assert_matches_golden(dir.path(), "tiny-gpt2", 1e-3);
}

#[test]
fn gpt2_with_explicit_untied_head_equal_to_embedding() {
    let dir = copy_model(&model_dir("tiny-gpt2"));
    let mut ts = tensors(dir.path());
    let wte = ts
        .iter()
        .find(|t| t.name == "transformer.wte.weight")
        .unwrap();
    let head = OutTensor {
        name: "lm_head.weight".into(),
        dtype: wte.dtype,
        shape: wte.shape.clone(),
        bytes: wte.bytes.clone(),
    };
    ts.push(head);
    rewrite(dir.path(), &ts);
    let mut cfg = read_config(dir.path());
    cfg["tie_word_embeddings"] = json!(false);
    write_config(dir.path(), &cfg);
    assert_matches_golden(dir.path(), "tiny-gpt2", 1e-3);
}

#[test]
fn sharded_checkpoint_with_index() {
    for fixture in ["tiny-llama", "tiny-gpt2"] {
        let dir = copy_model(&model_dir(fixture));
        let ts = tensors(dir.path());
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let (a, b): (Vec<_>, Vec<_>) = ts.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let mut map = serde_json::Map::new();
        for (file, part) in [
            ("model-00001-of-00002.safetensors", a),
            ("model-00002-of-00002.safetensors", b),
        ] {
            let part: Vec<OutTensor> = part.into_iter().map(|(_, t)| t).collect();
            for t in &part {
                map.insert(t.name.clone(), json!(file));
            }
            write_safetensors(&dir.path().join(file), &part).unwrap();
        }
        let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        assert_matches_golden(dir.path(), fixture, 1e-3);
    }
}

/// f16 and bf16 checkpoints load as the f32 values rounded to that dtype, bit for bit, and give
/// logits close to the f32 model's (the rounding of ~1e-3 relative per weight moves logits by ~1e-2).
#[test]
fn f16_and_bf16_checkpoints() {
    let src = model_dir("tiny-llama");
    let ts = tensors(&src);
    for dtype in ["f16", "bf16"] {
        let dir = copy_model(&src);
        let converted: Vec<OutTensor> = ts
            .iter()
            .map(|t| {
                let v = raw_to_f32(t).unwrap();
                match dtype {
                    "f16" => OutTensor::f16(&t.name, t.shape.clone(), &v),
                    _ => OutTensor::bf16(&t.name, t.shape.clone(), &v),
                }
            })
            .collect();
        rewrite(dir.path(), &converted);
        let store = infermeter::model::tensor_store::TensorStore::open_dir(dir.path()).unwrap();
        for t in &ts {
            let got = store.read_f32(&t.name, &t.shape).unwrap();
            let want: Vec<f32> = raw_to_f32(t)
                .unwrap()
                .iter()
                .map(|&x| match dtype {
                    "f16" => half::f16::from_f32(x).to_f32(),
                    _ => half::bf16::from_f32(x).to_f32(),
                })
                .collect();
            assert_eq!(got.data, want, "{dtype} {}", t.name);
        }
        let tol = if dtype == "f16" { 2e-2 } else { 1.5e-1 };
        assert_matches_golden(dir.path(), "tiny-llama", tol);
    }
}

#[test]
fn llama_untied_head_equal_to_embedding() {
    let dir = copy_model(&model_dir("tiny-llama-bf16"));
    let mut ts = tensors(dir.path());
    let e = ts
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
        .unwrap();
    let head = OutTensor {
        name: "lm_head.weight".into(),
        dtype: e.dtype,
        shape: e.shape.clone(),
        bytes: e.bytes.clone(),
    };
    ts.push(head);
    rewrite(dir.path(), &ts);
    let mut cfg = read_config(dir.path());
    cfg["tie_word_embeddings"] = json!(false);
    write_config(dir.path(), &cfg);
    assert_matches_golden(dir.path(), "tiny-llama-bf16", 1e-3);
}

/// Duplicate each KV head `r` times: the same model with `r` times more KV heads (a smaller GQA ratio).
fn expand_kv_heads(fixture: &str, r: usize) -> tempfile::TempDir {
    let dir = copy_model(&model_dir(fixture));
    let mut cfg = read_config(dir.path());
    let nkv = cfg["num_key_value_heads"].as_u64().unwrap() as usize;
    let heads = cfg["num_attention_heads"].as_u64().unwrap() as usize;
    let hidden = cfg["hidden_size"].as_u64().unwrap() as usize;
    let hd = cfg["head_dim"]
        .as_u64()
        .map_or(hidden / heads, |d| d as usize);
    let mut ts = tensors(dir.path());
    for t in ts.iter_mut() {
        if t.name.ends_with("k_proj.weight") || t.name.ends_with("v_proj.weight") {
            let v = raw_to_f32(t).unwrap();
            let mut out = Vec::with_capacity(v.len() * r);
            for h in 0..nkv {
                for _ in 0..r {
                    out.extend_from_slice(&v[h * hd * hidden..(h + 1) * hd * hidden]);
                }
            }
            *t = OutTensor::f32(&t.name, vec![nkv * r * hd, hidden], &out);
        }
    }
    rewrite(dir.path(), &ts);
    cfg["num_key_value_heads"] = json!(nkv * r);
    write_config(dir.path(), &cfg);
    dir
}

#[test]
fn gqa_ratios_1_2_and_4() {
    // tiny-llama: 4 heads / 2 KV heads (ratio 2) -> 4 KV heads (ratio 1)
    let d = expand_kv_heads("tiny-llama", 2);
    assert_matches_golden(d.path(), "tiny-llama", 1e-3);
    // tiny-llama-bf16: 8 heads / 2 KV heads (ratio 4) -> 4 KV heads (ratio 2) and 8 (ratio 1)
    for r in [2, 4] {
        let d = expand_kv_heads("tiny-llama-bf16", r);
        assert_matches_golden(d.path(), "tiny-llama-bf16", 1e-3);
    }
}

/// `generation_config.json`'s `eos_token_id` (one id or a list) adds to config.json's: Llama 3
/// Instruct lists `<|eot_id|>` only there. A bad id names that file.
#[test]
fn generation_config_adds_end_of_sequence_tokens() {
    let dir = copy_model(&model_dir("tiny-llama-bf16"));
    let base = infermeter::model::open(dir.path().to_str().unwrap())
        .unwrap()
        .config
        .eos_token_ids;
    let gen = dir.path().join("generation_config.json");
    std::fs::write(&gen, r#"{"eos_token_id": [199, 7], "do_sample": false}"#).unwrap();
    let merged = infermeter::model::open(dir.path().to_str().unwrap())
        .unwrap()
        .config
        .eos_token_ids;
    let mut want = base.clone();
    for t in [199, 7] {
        if !want.contains(&t) {
            want.push(t);
        }
    }
    assert_eq!(merged, want);
    std::fs::write(&gen, r#"{"eos_token_id": 99999}"#).unwrap();
    let err = infermeter::model::open(dir.path().to_str().unwrap())
        .err()
        .expect("an id outside the vocabulary is refused")
        .to_string();
    assert!(
        err.contains("generation_config.json") && err.contains("eos_token_id"),
        "{err}"
    );
}

/// A checkpoint with weights the config does not use is refused, naming them and the config field
/// that likely disagrees: the forward pass would otherwise run without them (wrong numbers, no
/// error). Buffers transformers ignores (RoPE's inv_freq) are allowed.
#[test]
fn weights_the_config_does_not_use_are_refused() {
    let load = |dir: &Path| {
        infermeter::model::load(dir.to_str().unwrap(), Default::default())
            .err()
            .map(|e| e.to_string())
    };
    // a config with fewer layers than the checkpoint
    let dir = copy_model(&model_dir("tiny-llama-bf16"));
    let mut cfg = read_config(dir.path());
    cfg["num_hidden_layers"] = json!(2);
    write_config(dir.path(), &cfg);
    let err = load(dir.path()).expect("an unused layer is refused");
    assert!(err.contains("model.layers.2."), "{err}");
    assert!(err.contains("num_hidden_layers (2)"), "{err}");
    // q/k/v biases in the checkpoint, attention_bias absent from the config
    let dir = copy_model(&model_dir("tiny-llama-bf16"));
    let mut ts = tensors(dir.path());
    let q_rows = ts
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap()
        .shape[0];
    ts.push(OutTensor::f32(
        "model.layers.0.self_attn.q_proj.bias",
        vec![q_rows],
        &vec![0.5; q_rows],
    ));
    // and a RoPE buffer, which is fine
    ts.push(OutTensor::f32(
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        vec![4],
        &[1.0; 4],
    ));
    rewrite(dir.path(), &ts);
    let err = load(dir.path()).expect("an unused bias is refused");
    assert!(
        err.contains("1 tensor the config does not use (model.layers.0.self_attn.q_proj.bias)"),
        "{err}"
    );
    assert!(err.contains("attention_bias is false or absent"), "{err}");
    assert!(err.contains("model.safetensors"), "names the file: {err}");
}

/// transformers 5.x style: RoPE settings in `rope_parameters`, no top-level `rope_theta`.
#[test]
fn transformers_5_rope_parameters() {
    let dir = copy_model(&model_dir("tiny-llama-bf16"));
    let mut cfg = read_config(dir.path());
    let theta = cfg["rope_theta"].clone();
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("rope_theta");
    obj.remove("rope_scaling");
    obj.insert(
        "rope_parameters".into(),
        json!({"rope_type": "default", "rope_theta": theta}),
    );
    write_config(dir.path(), &cfg);
    assert_matches_golden(dir.path(), "tiny-llama-bf16", 1e-3);
}

/// `linear` and `llama3` scalings with factor 1 are the identity, so they must reproduce the golden
/// logits through their own code paths (the formulas themselves are unit-tested in model::rope);
/// a real factor must change them.
#[test]
fn rope_scaling_forms_in_both_styles() {
    let scalings = [
        json!({"rope_type": "linear", "factor": 1.0}),
        json!({"type": "linear", "factor": 1.0}),
        json!({"rope_type": "llama3", "factor": 1.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    ];
    for s in &scalings {
        for style in ["4.x", "5.x"] {
            let dir = copy_model(&model_dir("tiny-llama"));
            let mut cfg = read_config(dir.path());
            if style == "4.x" {
                cfg["rope_scaling"] = s.clone();
            } else {
                let mut p = s.clone();
                p["rope_theta"] = cfg["rope_theta"].clone();
                cfg.as_object_mut().unwrap().remove("rope_theta");
                cfg["rope_parameters"] = p;
            }
            write_config(dir.path(), &cfg);
            assert_matches_golden(dir.path(), "tiny-llama", 1e-3);
        }
    }
    let dir = copy_model(&model_dir("tiny-llama"));
    let mut cfg = read_config(dir.path());
    cfg["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    write_config(dir.path(), &cfg);
    let model = load_cpu(dir.path());
    let g = &golden("tiny-llama")[2];
    let err = max_abs_diff(&all_logits(&model, &g.ids).unwrap(), &g.logits);
    assert!(
        err > 1e-2,
        "llama3 factor 8 should change the logits (err {err})"
    );
}

#[test]
fn head_dim_derived_when_absent() {
    let dir = copy_model(&model_dir("tiny-llama"));
    let mut cfg = read_config(dir.path());
    cfg.as_object_mut().unwrap().remove("head_dim");
    write_config(dir.path(), &cfg);
    assert_matches_golden(dir.path(), "tiny-llama", 1e-3);
}

/// Every embedded architecture config builds and runs with dummy weights at a reduced depth.
#[test]
fn dummy_weights_for_every_embedded_config() {
    for m in infermeter::model::registry::EMBEDDED {
        let mut cfg: serde_json::Value = serde_json::from_str(m.config).unwrap();
        // keep the real widths, cut the depth and vocabulary so the test stays small
        for key in ["num_hidden_layers", "n_layer", "n_layers"] {
            if cfg.get(key).is_some() {
                cfg[key] = json!(1);
            }
        }
        // a per-layer list keeps its first layer's entry
        for key in ["layer_types", "no_rope_layers"] {
            if let Some(list) = cfg.get_mut(key).and_then(|t| t.as_array_mut()) {
                list.truncate(1);
            }
        }
        // mixture-of-experts configs: two experts (one per token) of the real width
        for key in ["num_local_experts", "num_experts"] {
            if cfg.get(key).is_some() {
                cfg[key] = json!(2);
                cfg["num_experts_per_tok"] = json!(1);
            }
        }
        cfg["vocab_size"] = json!(1000);
        for key in [
            "max_position_embeddings",
            "n_positions",
            "max_seq_len",
            "seq_length",
        ] {
            if cfg.get(key).is_some() {
                cfg[key] = json!(64);
            }
        }
        for key in ["eos_token_id", "bos_token_id"] {
            cfg[key] = json!(1);
        }
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &cfg);
        let opts = infermeter::model::LoadOptions {
            dummy_weights: true,
            dummy_seed: 1,
            ..Default::default()
        };
        let loaded = infermeter::model::load(dir.path().to_str().unwrap(), opts).unwrap();
        let (model, _) = loaded
            .into_model(infermeter::backend::cpu::CpuBackend)
            .unwrap();
        let logits = all_logits(&model, &[1, 2, 3]).unwrap();
        assert_eq!(logits.len(), 3 * 1000, "{}", m.name);
        assert!(logits.iter().all(|x| x.is_finite()), "{}", m.name);
        // seeded: the same seed gives the same weights
        let again = infermeter::model::load(dir.path().to_str().unwrap(), opts)
            .unwrap()
            .into_model(infermeter::backend::cpu::CpuBackend)
            .unwrap()
            .0;
        assert_eq!(all_logits(&again, &[1, 2, 3]).unwrap(), logits);
    }
}

/// The Llama-architecture model types beside `llama` (the fixtures check their logits against
/// transformers): Qwen2's q/k/v biases carry weight, an o_proj bias it does not have is refused,
/// and Mistral's sliding window bounds the context, said when the model opens.
#[test]
fn qwen2_biases_and_mistral_sliding_window() {
    // without its q/k/v biases the Qwen2 fixture is another model: the golden logits see them
    let dir = copy_model(&model_dir("tiny-qwen2"));
    let mut ts = tensors(dir.path());
    for t in ts.iter_mut().filter(|t| t.name.ends_with("_proj.bias")) {
        let n = t.shape[0];
        *t = OutTensor::f32(&t.name, vec![n], &vec![0.0; n]);
    }
    rewrite(dir.path(), &ts);
    let model = load_cpu(dir.path());
    let g = &golden("tiny-qwen2")[2];
    let err = max_abs_diff(&all_logits(&model, &g.ids).unwrap(), &g.logits);
    assert!(
        err > 0.05,
        "zeroed q/k/v biases changed the logits by only {err}"
    );
    // an o_proj bias Qwen2 does not have
    let dir = copy_model(&model_dir("tiny-qwen2"));
    let mut ts = tensors(dir.path());
    ts.push(OutTensor::f32(
        "model.layers.1.self_attn.o_proj.bias",
        vec![64],
        &[0.5; 64],
    ));
    rewrite(dir.path(), &ts);
    let err = infermeter::model::load(dir.path().to_str().unwrap(), Default::default())
        .err()
        .expect("an o_proj bias is refused")
        .to_string();
    assert!(
        err.contains("model.layers.1.self_attn.o_proj.bias")
            && err.contains("model_type `qwen2` does not have"),
        "{err}"
    );

    // tiny-mistral: a 37-key sliding window on every layer (the golden test checks it against
    // transformers): the window carries weight, and the context runs to max_position_embeddings
    // (256), not to the window
    let err = logits_moved_by_config_edit("tiny-mistral", 3, &|c| {
        c["sliding_window"] = serde_json::Value::Null
    });
    assert!(
        err > 0.05,
        "no sliding window moved the logits by only {err}"
    );
    let dir = model_dir("tiny-mistral");
    let generate = |prompt_len: usize, max_tokens: usize| {
        let ids = vec!["5"; prompt_len].join(",");
        infermeter_cmd()
            .args(["generate", "--model", dir.to_str().unwrap(), "--ids", &ids])
            .args(["--max-tokens", &max_tokens.to_string(), "--ignore-eos"])
            .output()
            .unwrap()
    };
    let fits = generate(200, 56);
    assert!(
        fits.status.success(),
        "{}",
        String::from_utf8_lossy(&fits.stderr)
    );
    let long = generate(200, 57);
    let stderr = String::from_utf8_lossy(&long.stderr);
    assert!(!long.status.success());
    assert!(stderr.contains("context of 256 tokens"), "{stderr}");
}

/// Qwen3 (the fixture checks its logits against transformers): its per-head q/k norms carry
/// weight, a checkpoint without them is refused naming the tensor, and the same weights under
/// `model_type: llama` are refused with a hint instead of running without the norms.
#[test]
fn qwen3_qk_norms_are_loaded_and_required() {
    // unit norm weights: another model (the fixture's are 1 + 0.2 N(0, 1))
    let err = logits_moved_by_weight_edit("tiny-qwen3", 2, &|ts| {
        for t in ts
            .iter_mut()
            .filter(|t| t.name.ends_with("q_norm.weight") || t.name.ends_with("k_norm.weight"))
        {
            let n = t.shape[0];
            *t = OutTensor::f32(&t.name, vec![n], &vec![1.0; n]);
        }
    });
    assert!(
        err > 0.05,
        "unit q/k norm weights changed the logits by only {err}"
    );
    // a k_norm missing
    let err = refused_after_weight_edit("tiny-qwen3", &|ts| {
        ts.retain(|t| t.name != "model.layers.1.self_attn.k_norm.weight")
    });
    assert!(
        err.contains("model.layers.1.self_attn.k_norm.weight"),
        "{err}"
    );
    // the same checkpoint called llama: the norms would go unused
    let err = refused_after_config_edit("tiny-qwen3", &|c| c["model_type"] = json!("llama"));
    assert!(
        err.contains("q_norm") && err.contains("model_type `llama` does not have"),
        "{err}"
    );
}

/// YaRN (`rope_type: yarn`) against transformers: tiny-qwen3's weights under the configs of
/// `tests/fixtures/tiny-qwen3/{yarn,yarn-mscale}` (made by make_rope_variants.py): the defaults
/// in 4.x style, and every option (betas, `truncate: false`, mscale / mscale_all_dim) in 5.x style.
/// Every prompt's logits within 1e-3 (the 230-token one runs far past the original context) and
/// the greedy continuations exact; without the attention factor the logits move.
#[test]
fn yarn_rope_scaling_matches_transformers() {
    for variant in ["yarn", "yarn-mscale"] {
        let (fixture, dir, cfg) = check_qwen3_variant(variant);
        // the same frequencies without the attention factor: another model
        let mut cfg = cfg;
        let scaling = if cfg["rope_scaling"].is_object() {
            "rope_scaling"
        } else {
            "rope_parameters"
        };
        cfg[scaling]["attention_factor"] = json!(1.0);
        write_config(dir.path(), &cfg);
        let g = &golden(&fixture)[3];
        let err = max_abs_diff(
            &all_logits(&load_cpu(dir.path()), &g.ids).unwrap(),
            &g.logits,
        );
        assert!(
            err > 0.05,
            "{fixture}: an attention factor of 1 moved the logits by only {err}"
        );
    }
}

/// Dynamic NTK (`rope_type: dynamic`, factor 4) against transformers: within
/// max_position_embeddings, all the engine serves, transformers keeps theta as it is, so every
/// prompt of `tests/fixtures/tiny-qwen3/dynamic` matches plain RoPE's numbers; the config records
/// the scaling.
#[test]
fn dynamic_ntk_within_the_context_matches_transformers() {
    let (_, dir, _) = check_qwen3_variant("dynamic");
    let model = load_cpu(dir.path());
    let rope = model.config.rope.clone().unwrap();
    assert_eq!(
        rope.scaling,
        infermeter::model::config::RopeScaling::DynamicNtk { factor: 4.0 }
    );
    assert_eq!(model.config.max_context, 256);
}

/// tiny-qwen3's weights under the config of `tests/fixtures/tiny-qwen3/<variant>` (made by
/// make_rope_variants.py) match that variant's goldens: every prompt's logits within 1e-3, the
/// greedy continuations exact. Returns (fixture name, the model copy, its config).
fn check_qwen3_variant(variant: &str) -> (String, tempfile::TempDir, serde_json::Value) {
    let fixture = format!("tiny-qwen3/{variant}");
    let dir = copy_model(&model_dir("tiny-qwen3"));
    let cfg = read_config(&repo().join("tests/fixtures").join(&fixture));
    write_config(dir.path(), &cfg);
    let model = load_cpu(dir.path());
    for (n, g) in golden(&fixture).iter().enumerate() {
        let err = max_abs_diff(&all_logits(&model, &g.ids).unwrap(), &g.logits);
        assert!(err <= 1e-3, "{fixture} prompt{n}: max abs error {err}");
        let out = greedy_ignoring_eos(&model, &g.ids, g.greedy.len());
        assert_eq!(out, g.greedy, "{fixture} prompt{n} greedy");
    }
    (fixture, dir, cfg)
}

/// Qwen's sliding window against transformers, per layer: `tiny-qwen3/sliding` (4.x style:
/// use_sliding_window, sliding_window 19, max_window_layers 1: layer 1 slides) and
/// `tiny-qwen3/sliding-layer-types` (5.x style: layer_types puts the 30-key window on layer 0,
/// which max_window_layers cannot). The long prompts run far past both windows; with the window
/// turned off (use_sliding_window false) or on the other layer the logits move.
#[test]
fn qwen_sliding_windows_match_transformers_per_layer() {
    for variant in ["sliding", "sliding-layer-types"] {
        let (fixture, dir, cfg) = check_qwen3_variant(variant);
        let g = &golden(&fixture)[3];
        let moved = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut cfg = cfg.clone();
            edit(&mut cfg);
            write_config(dir.path(), &cfg);
            max_abs_diff(
                &all_logits(&load_cpu(dir.path()), &g.ids).unwrap(),
                &g.logits,
            )
        };
        let off = moved(&|c| c["use_sliding_window"] = json!(false));
        assert!(
            off > 0.05,
            "{fixture}: no window moved the logits by only {off}"
        );
        let other = moved(&|c| {
            c["layer_types"] = json!(if variant == "sliding" {
                ["sliding_attention", "full_attention"]
            } else {
                ["full_attention", "sliding_attention"]
            })
        });
        assert!(
            other > 0.05,
            "{fixture}: the window on the other layer moved the logits by only {other}"
        );
    }
}

/// How far the CPU logits of golden prompt `prompt` of `fixture` move from its goldens when the
/// fixture's config is changed by `edit` (weights and tokenizer as they are): within 1e-3 for no
/// change, more than 0.05 for a change the model must notice.
fn logits_moved_by_config_edit(
    fixture: &str,
    prompt: usize,
    edit: &dyn Fn(&mut serde_json::Value),
) -> f32 {
    let g = &golden(fixture)[prompt];
    let dir = copy_model(&model_dir(fixture));
    let mut cfg = read_config(dir.path());
    edit(&mut cfg);
    write_config(dir.path(), &cfg);
    max_abs_diff(
        &all_logits(&load_cpu(dir.path()), &g.ids).unwrap(),
        &g.logits,
    )
}

/// The error loading `fixture` gives once `edit` changed its config.
fn refused_after_config_edit(fixture: &str, edit: &dyn Fn(&mut serde_json::Value)) -> String {
    let dir = copy_model(&model_dir(fixture));
    let mut cfg = read_config(dir.path());
    edit(&mut cfg);
    write_config(dir.path(), &cfg);
    load_error(dir.path(), fixture)
}

/// `fixture` with its tensors changed by `edit` (config and tokenizer as they are), in a copy.
fn with_weight_edit(fixture: &str, edit: &dyn Fn(&mut Vec<OutTensor>)) -> tempfile::TempDir {
    let dir = copy_model(&model_dir(fixture));
    let mut ts = tensors(dir.path());
    edit(&mut ts);
    rewrite(dir.path(), &ts);
    dir
}

/// How far the CPU logits of golden prompt `prompt` of `fixture` move from its goldens when its
/// tensors are changed by `edit`.
fn logits_moved_by_weight_edit(
    fixture: &str,
    prompt: usize,
    edit: &dyn Fn(&mut Vec<OutTensor>),
) -> f32 {
    let g = &golden(fixture)[prompt];
    let dir = with_weight_edit(fixture, edit);
    max_abs_diff(
        &all_logits(&load_cpu(dir.path()), &g.ids).unwrap(),
        &g.logits,
    )
}

/// How far golden prompt 2's logits move when `fixture`'s tensor names lose `prefix` (a checkpoint
/// saved from the base model rather than the LM-head model).
fn logits_moved_without_prefix(fixture: &str, prefix: &str) -> f32 {
    logits_moved_by_weight_edit(fixture, 2, &|ts| {
        for t in ts.iter_mut() {
            if let Some(rest) = t.name.strip_prefix(prefix) {
                t.name = rest.to_string();
            }
        }
    })
}

/// The error loading `fixture` gives once `edit` changed its tensors.
fn refused_after_weight_edit(fixture: &str, edit: &dyn Fn(&mut Vec<OutTensor>)) -> String {
    let dir = with_weight_edit(fixture, edit);
    load_error(dir.path(), fixture)
}

/// The error loading the model in `dir` (an edited copy of `fixture`) gives.
fn load_error(dir: &Path, fixture: &str) -> String {
    match infermeter::model::load(dir.to_str().unwrap(), Default::default()) {
        Ok(_) => panic!("{fixture} loaded after the edit"),
        Err(e) => e.to_string(),
    }
}

/// Gemma 2 (the fixture checks its logits against transformers): the attention scores'
/// soft-cap, the logits' soft-cap and the sliding window each carry weight (with any one off the
/// logits move), and a soft-cap that is not a positive number is refused naming the field.
#[test]
fn gemma2_soft_caps_and_window_count() {
    let moved =
        |edit: &dyn Fn(&mut serde_json::Value)| logits_moved_by_config_edit("tiny-gemma2", 3, edit);
    assert!(moved(&|_| {}) <= 1e-3);
    for field in [
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "sliding_window",
    ] {
        let err = moved(&|c| c[field] = serde_json::Value::Null);
        assert!(err > 0.05, "{field} null moved the logits by only {err}");
    }
    for bad in [json!(0.0), json!(-30.0), json!("30")] {
        let err = refused_after_config_edit("tiny-gemma2", &|c| {
            c["final_logit_softcapping"] = bad.clone()
        });
        assert!(err.contains("final_logit_softcapping"), "{bad}: {err}");
    }
}

/// Granite (the fixture checks its logits against transformers): each of its four scalars carries
/// weight (with any one at 1, its default, the logits move), and one that is not a positive number
/// is refused naming the field.
#[test]
fn granite_multipliers_count() {
    let moved = |edit: &dyn Fn(&mut serde_json::Value)| {
        logits_moved_by_config_edit("tiny-granite", 3, edit)
    };
    assert!(moved(&|_| {}) <= 1e-3);
    for field in [
        "embedding_multiplier",
        "residual_multiplier",
        "attention_multiplier",
        "logits_scaling",
    ] {
        let err = moved(&|c| c[field] = json!(1.0));
        assert!(err > 0.05, "{field} 1 moved the logits by only {err}");
    }
    for bad in [json!(0.0), json!(-0.22), json!("0.22")] {
        let err =
            refused_after_config_edit("tiny-granite", &|c| c["residual_multiplier"] = bad.clone());
        assert!(err.contains("residual_multiplier"), "{bad}: {err}");
    }
}

/// SmolLM3 (the fixture checks its logits against transformers): its NoPE layer carries weight
/// (with RoPE on every layer the logits move, as they do with RoPE off everywhere else).
#[test]
fn smollm3_nope_layers_count() {
    let moved = |edit: &dyn Fn(&mut serde_json::Value)| {
        logits_moved_by_config_edit("tiny-smollm3", 3, edit)
    };
    assert!(moved(&|_| {}) <= 1e-3);
    for flags in [json!([1, 1, 1]), json!([0, 0, 0])] {
        let err = moved(&|c| c["no_rope_layers"] = flags.clone());
        assert!(
            err > 0.05,
            "no_rope_layers {flags} moved the logits by only {err}"
        );
    }
}

/// OLMo 2 (the fixture checks its logits against transformers): its q/k norms over the whole
/// projections carry weight (set to ones, the logits move), and a checkpoint read as another
/// family is refused for the norms it lacks (as `llama`: no input_layernorm).
#[test]
fn olmo2_whole_projection_qk_norms_count() {
    let err = logits_moved_by_weight_edit("tiny-olmo2", 3, &|ts| {
        for t in ts.iter_mut().filter(|t| t.name.ends_with("_norm.weight")) {
            let n = t.shape[0];
            *t = OutTensor::f32(&t.name, vec![n], &vec![1.0; n]);
        }
    });
    assert!(err > 0.05, "unit q/k norms moved the logits by only {err}");
    let err = refused_after_config_edit("tiny-olmo2", &|c| c["model_type"] = json!("llama"));
    assert!(err.contains("input_layernorm"), "{err}");
}

/// Phi (the fixture checks its logits against transformers): the LM head's bias and the partial
/// rotary width carry weight (zero the bias, or rotate 8 dimensions instead of 6, and the logits
/// move), and a checkpoint without the bias is refused naming it.
#[test]
fn phi_lm_head_bias_and_partial_rotary_count() {
    let err = logits_moved_by_weight_edit("tiny-phi", 3, &|ts| {
        for t in ts.iter_mut().filter(|t| t.name == "lm_head.bias") {
            *t = OutTensor::f32(&t.name, vec![512], &[0.0; 512]);
        }
    });
    assert!(
        err > 0.05,
        "a zero LM head bias moved the logits by only {err}"
    );
    let moved = logits_moved_by_config_edit("tiny-phi", 3, &|c| {
        c["rope_parameters"]["partial_rotary_factor"] = json!(0.5)
    });
    assert!(
        moved > 0.05,
        "8 rotating dimensions moved the logits by only {moved}"
    );
    let err = refused_after_weight_edit("tiny-phi", &|ts| ts.retain(|t| t.name != "lm_head.bias"));
    assert!(err.contains("lm_head.bias"), "{err}");
}

/// StarCoder2 (the fixture checks its logits against transformers): its sliding window carries
/// weight (null, the 230-token prompt's logits move), and a checkpoint with biases read under
/// `use_bias: false` is refused naming the biases and that field.
#[test]
fn starcoder2_window_and_use_bias_count() {
    let moved = logits_moved_by_config_edit("tiny-starcoder2", 3, &|c| {
        c["sliding_window"] = serde_json::Value::Null
    });
    assert!(moved > 0.05, "no window moved the logits by only {moved}");
    let err = refused_after_config_edit("tiny-starcoder2", &|c| c["use_bias"] = json!(false));
    assert!(
        err.contains("k_proj.bias") && err.contains("use_bias is false"),
        "{err}"
    );
}

/// GPT-NeoX (the fixture checks its logits against transformers, parallel block): read with
/// `use_parallel_residual: false`, the same checkpoint matches transformers' sequential block (the
/// golden file's `sequential.prompt3.logits`); Pythia's 4.x config form (`rotary_pct`,
/// `rotary_emb_base`) is the same model; the exact GELU carries weight (read as `gelu_new`, the
/// logits move past the golden tolerance); the buffers Pythia's checkpoints carry (causal masks, `inv_freq`) are ignored;
/// a checkpoint without the QKV bias is refused naming it.
#[test]
fn gpt_neox_sequential_block_pythia_config_and_checkpoints() {
    let fixture = "tiny-gpt-neox";
    let g = &golden(fixture)[3];
    let raw = read_all_raw(
        &repo()
            .join("tests/fixtures")
            .join(fixture)
            .join("golden.safetensors"),
    )
    .unwrap();
    let sequential = raw
        .iter()
        .find(|t| t.name == "sequential.prompt3.logits")
        .map(|t| raw_to_f32(t).unwrap())
        .expect("sequential.prompt3.logits in the golden file");
    let dir = copy_model(&model_dir(fixture));
    let mut cfg = read_config(dir.path());
    cfg["use_parallel_residual"] = json!(false);
    write_config(dir.path(), &cfg);
    let err = max_abs_diff(
        &all_logits(&load_cpu(dir.path()), &g.ids).unwrap(),
        &sequential,
    );
    assert!(err <= 1e-3, "sequential block: max abs error {err}");
    let moved = logits_moved_by_config_edit(fixture, 3, &|c| {
        let obj = c.as_object_mut().unwrap();
        obj.remove("rope_parameters");
        obj.insert("rotary_pct".into(), json!(0.25));
        obj.insert("rotary_emb_base".into(), json!(10000));
    });
    assert!(
        moved <= 1e-3,
        "Pythia's config form moved the logits by {moved}"
    );
    // the tanh approximation is within 3e-4 of the exact GELU at every input, so the logits move
    // little: but past the golden tolerance (1e-3), so tests/golden.rs tells the two apart
    let moved = logits_moved_by_config_edit(fixture, 3, &|c| c["hidden_act"] = json!("gelu_new"));
    assert!(
        moved > 1e-3,
        "the tanh GELU moved the logits by only {moved}"
    );
    let moved = logits_moved_by_weight_edit(fixture, 3, &|ts| {
        for l in 0..2 {
            let p = format!("gpt_neox.layers.{l}.attention");
            ts.push(OutTensor::f32(
                &format!("{p}.bias"),
                vec![1, 1, 4, 4],
                &[1.0; 16],
            ));
            ts.push(OutTensor::f32(&format!("{p}.masked_bias"), vec![], &[-1e9]));
            ts.push(OutTensor::f32(
                &format!("{p}.rotary_emb.inv_freq"),
                vec![2],
                &[1.0, 0.01],
            ));
        }
    });
    assert!(
        moved <= 1e-3,
        "Pythia's buffers moved the logits by {moved}"
    );
    let err = refused_after_weight_edit(fixture, &|ts| {
        ts.retain(|t| t.name != "gpt_neox.layers.1.attention.query_key_value.bias")
    });
    assert!(
        err.contains("gpt_neox.layers.1.attention.query_key_value.bias"),
        "{err}"
    );
}

/// Falcon 40B's `new_decoder_architecture` (tiny-falcon-gqa, outside the fixture list: the fused
/// QKV rows grouped per KV head, `ln_attn` and `ln_mlp`, biases) matches transformers on all four
/// prompts, logits and greedy continuations; its biases read under `bias: false` are refused
/// naming the field, and its norms read as a single-norm block (`num_ln_in_parallel_attn: 1`)
/// are missing by name. (tiny-falcon, Falcon 7B's multi-query block, is in the fixture list.)
#[test]
fn falcon_new_decoder_architecture_matches_transformers() {
    let fixture = "tiny-falcon-gqa";
    let model = load_cpu(&model_dir(fixture));
    for (n, g) in golden(fixture).iter().enumerate() {
        let err = max_abs_diff(&all_logits(&model, &g.ids).unwrap(), &g.logits);
        assert!(err <= 1e-3, "{fixture} prompt{n}: max abs error {err}");
        let greedy = greedy_ignoring_eos(&model, &g.ids, g.greedy.len());
        assert_eq!(greedy, g.greedy, "{fixture} prompt{n}");
    }
    let err = refused_after_config_edit(fixture, &|c| c["bias"] = json!(false));
    assert!(
        err.contains("query_key_value.bias") && err.contains("bias is false"),
        "{err}"
    );
    let err = refused_after_config_edit(fixture, &|c| c["num_ln_in_parallel_attn"] = json!(1));
    assert!(err.contains("transformer.h.0.input_layernorm"), "{err}");
}

/// OPT (the fixture checks its logits against transformers): a checkpoint saved from `OPTModel`
/// (names without `model.`, as the hub's original OPT checkpoints are) is the same model; the two
/// offset rows of its position table carry weight (read without them, at row p for position p,
/// the logits move); a table of the wrong length is refused naming it.
#[test]
fn opt_checkpoint_prefixes_and_position_offset() {
    let fixture = "tiny-opt";
    let moved = logits_moved_without_prefix(fixture, "model.");
    assert!(
        moved <= 1e-3,
        "the prefix-less checkpoint moved the logits by {moved}"
    );
    let moved = logits_moved_by_weight_edit(fixture, 2, &|ts| {
        for t in ts
            .iter_mut()
            .filter(|t| t.name.ends_with("embed_positions.weight"))
        {
            // shift the table by the offset: row p + 2 now holds what row p did
            let row = t.shape[1] * 4;
            let mut bytes = t.bytes[..2 * row].to_vec();
            bytes.extend_from_slice(&t.bytes[..t.bytes.len() - 2 * row]);
            t.bytes = bytes;
        }
    });
    assert!(
        moved > 0.05,
        "positions without the offset moved the logits by only {moved}"
    );
    let err = refused_after_config_edit(fixture, &|c| c["max_position_embeddings"] = json!(258));
    assert!(err.contains("embed_positions"), "{err}");
}

/// BLOOM (the fixture checks its logits against transformers): checkpoints with and without the
/// `transformer.` prefix read alike, the embedding LayerNorm carries weight (without it the logits
/// move) and is required (a checkpoint without it is refused naming it); MPT's slopes' exponent
/// scale (`alibi_bias_max`) carries weight, and learned positions beside its ALiBi are refused.
#[test]
fn bloom_and_mpt_embedding_norm_prefixes_and_alibi_count() {
    let fixture = "tiny-bloom";
    // transformers saves BloomForCausalLM's names with the prefix; bigscience's checkpoints have
    // none (BloomModel's)
    let moved = logits_moved_without_prefix(fixture, "transformer.");
    assert!(
        moved <= 1e-3,
        "the prefix-less checkpoint moved the logits by {moved}"
    );
    let moved = logits_moved_by_weight_edit(fixture, 2, &|ts| {
        for t in ts
            .iter_mut()
            .filter(|t| t.name.contains("word_embeddings_layernorm."))
        {
            let (n, one) = (t.shape[0], t.name.ends_with("weight"));
            *t = OutTensor::f32(&t.name, vec![n], &vec![if one { 1.0 } else { 0.0 }; n]);
        }
    });
    assert!(
        moved > 0.05,
        "a plain embedding LayerNorm moved the logits by only {moved}"
    );
    let err = refused_after_weight_edit(fixture, &|ts| {
        ts.retain(|t| !t.name.contains("word_embeddings_layernorm."))
    });
    assert!(err.contains("word_embeddings_layernorm"), "{err}");

    // MPT: slopes of another exponent scale are another model
    let moved =
        |edit: &dyn Fn(&mut serde_json::Value)| logits_moved_by_config_edit("tiny-mpt", 3, edit);
    assert!(moved(&|_| {}) <= 1e-3);
    let err = moved(&|c| c["attn_config"]["alibi_bias_max"] = json!(4));
    assert!(
        err > 0.05,
        "alibi_bias_max 4 moved the logits by only {err}"
    );
    // learned positions beside ALiBi (MosaicML's `learned_pos_emb` without ALiBi): refused, not
    // run without them
    let err = refused_after_weight_edit("tiny-mpt", &|ts| {
        ts.push(OutTensor::f32(
            "transformer.wpe.weight",
            vec![256, 96],
            &vec![0.0; 256 * 96],
        ))
    });
    assert!(err.contains("transformer.wpe.weight"), "{err}");
}

/// Gemma 1 (the fixture checks its logits against transformers) is Gemma's layout without Gemma
/// 2's additions: read as `gemma2`, the same checkpoint is refused (no sandwich norms), and the
/// (1 + w) norms carry weight (read as `llama`, the logits move).
#[test]
fn gemma1_is_not_gemma2_nor_llama() {
    // read as gemma2, the checkpoint lacks the sandwich norms
    let err = refused_after_config_edit("tiny-gemma", &|c| c["model_type"] = json!("gemma2"));
    assert!(err.contains("pre_feedforward_layernorm"), "{err}");
    let moved =
        |edit: &dyn Fn(&mut serde_json::Value)| logits_moved_by_config_edit("tiny-gemma", 3, edit);
    assert!(moved(&|_| {}) <= 1e-3);
    let err = moved(&|c| {
        c["model_type"] = json!("llama");
        c["hidden_act"] = json!("silu");
        c["tie_word_embeddings"] = json!(false);
    });
    assert!(err > 0.05, "read as llama, the logits moved by only {err}");
}

/// Gemma 3 (the fixture checks its logits against transformers): each layer type's RoPE, the
/// query_pre_attn_scalar and the sandwich norms carry weight, and a checkpoint without a
/// post-feedforward norm is refused naming it.
#[test]
fn gemma3_layer_types_scalar_and_sandwich_norms_count() {
    let moved =
        |edit: &dyn Fn(&mut serde_json::Value)| logits_moved_by_config_edit("tiny-gemma3", 3, edit);
    assert!(moved(&|_| {}) <= 1e-3);
    // the sliding layers given the full layers' RoPE
    let err = moved(&|c| {
        c["rope_parameters"]["sliding_attention"] = c["rope_parameters"]["full_attention"].clone()
    });
    assert!(
        err > 0.05,
        "one RoPE for both layer types moved the logits by {err}"
    );
    // 1/sqrt(head_dim) instead of 1/sqrt(query_pre_attn_scalar)
    let err = moved(&|c| c["query_pre_attn_scalar"] = json!(32));
    assert!(
        err > 0.05,
        "query_pre_attn_scalar 32 moved the logits by {err}"
    );
    // without sandwich norms the post_* norms go unused: refused
    let err = refused_after_weight_edit("tiny-gemma3", &|ts| {
        ts.retain(|t| t.name != "model.layers.2.post_feedforward_layernorm.weight")
    });
    assert!(
        err.contains("model.layers.2.post_feedforward_layernorm.weight"),
        "{err}"
    );
}

/// tiny-phi3's weights loaded under `config` (a model copy), serving at most `max_model_len`
/// positions.
fn load_phi3_variant(
    dir: &Path,
    max_model_len: Option<usize>,
) -> infermeter::model::Model<infermeter::backend::cpu::CpuBackend> {
    let opts = infermeter::model::LoadOptions {
        max_model_len,
        ..Default::default()
    };
    let loaded = infermeter::model::load(dir.to_str().unwrap(), opts).unwrap();
    loaded
        .into_model(infermeter::backend::cpu::CpuBackend)
        .unwrap()
        .0
}

/// Phi-3's LongRoPE against transformers: tiny-phi3's weights under
/// `tests/fixtures/tiny-phi3/{longrope,longrope-partial}` (made by make_rope_variants.py; 4.x
/// style under the old name `su`, and Phi-4-mini style with a partial rotary of 12 of 16
/// dimensions in 5.x `rope_parameters`). transformers takes the short factors for a sequence
/// within `original_max_position_embeddings` and the long ones past it; the engine takes them by
/// the context it serves, so the three short prompts run with `max_model_len` = the original
/// context (short factors) and the 230-token one at the whole context (long factors): every
/// prompt's logits within 1e-3 and its greedy continuation exact. The other factor set moves the
/// logits.
#[test]
fn phi3_longrope_matches_transformers() {
    for variant in ["longrope", "longrope-partial"] {
        let fixture = format!("tiny-phi3/{variant}");
        let dir = copy_model(&model_dir("tiny-phi3"));
        let cfg = read_config(&repo().join("tests/fixtures").join(&fixture));
        write_config(dir.path(), &cfg);
        let original = cfg["original_max_position_embeddings"].as_u64().unwrap() as usize;
        let short = load_phi3_variant(dir.path(), Some(original));
        let long = load_phi3_variant(dir.path(), None);
        assert_eq!(long.config.max_context, 256);
        let goldens = golden(&fixture);
        for (n, g) in goldens.iter().enumerate() {
            let within = g.ids.len() + g.greedy.len() <= original;
            assert_eq!(within, n < 3, "{fixture} prompt{n}: the fixture's design");
            let model = if within { &short } else { &long };
            let err = max_abs_diff(&all_logits(model, &g.ids).unwrap(), &g.logits);
            assert!(err <= 1e-3, "{fixture} prompt{n}: max abs error {err}");
            let out = greedy_ignoring_eos(model, &g.ids, g.greedy.len());
            assert_eq!(out, g.greedy, "{fixture} prompt{n} greedy");
        }
        // the other factors: another model
        let g = &goldens[2];
        let err = max_abs_diff(&all_logits(&long, &g.ids).unwrap(), &g.logits);
        assert!(
            err > 0.05,
            "{fixture}: long factors on a short prompt moved the logits by only {err}"
        );
    }
}

/// `--max-model-len` caps the context served: a request past it is refused naming it, one within
/// runs (GPT-2 keeps the learned positions it serves and generates what it generates at its whole
/// context), and a cap past the model's context or of 0 is refused naming both, but for an ALiBi
/// model, which runs past its trained context with a warning.
#[test]
fn max_model_len_caps_the_context_served() {
    let generate = |model: &str, max_model_len: &str, prompt_len: usize, max_tokens: usize| {
        let ids = vec!["5"; prompt_len].join(",");
        let mut cmd = infermeter_cmd();
        cmd.args(["generate", "--model", model, "--ids", &ids])
            .args(["--max-tokens", &max_tokens.to_string(), "--ignore-eos"]);
        if !max_model_len.is_empty() {
            cmd.args(["--max-model-len", max_model_len]);
        }
        cmd.output().unwrap()
    };
    let stdout = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for model in ["tiny-gpt2", "tiny-llama"] {
        let full = stdout(&generate(model, "", 10, 14));
        assert_eq!(stdout(&generate(model, "24", 10, 14)), full, "{model}");
        let long = generate(model, "24", 10, 15);
        let err = String::from_utf8_lossy(&long.stderr);
        assert!(!long.status.success());
        assert!(err.contains("context of 24 tokens"), "{model}: {err}");
    }
    for bad in ["0", "100000"] {
        let o = generate("tiny-llama", bad, 10, 4);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            err.contains(&format!("max_model_len {bad}"))
                && err.contains("max_position_embeddings"),
            "{err}"
        );
    }
    // a model type whose context has another name is told by it (GPT-2's n_positions)
    let o = generate("tiny-gpt2", "100000", 10, 4);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("(n_positions in its config.json)"), "{err}");
    // an ALiBi model has no position table: past its trained context it runs, with a warning
    // naming it (BLOOM's seq_length), here a 290-token prompt past tiny-bloom's 256
    let bloom = model_dir("tiny-bloom");
    let o = generate(bloom.to_str().unwrap(), "300", 290, 4);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("past the 256 positions") && err.contains("seq_length"),
        "{err}"
    );
}

/// A model directory with `vocab.json` and `merges.txt` instead of `tokenizer.json` (OPT's, GPT-J's
/// repositories): the byte-level BPE built from them encodes and decodes as the tokenizer.json
/// transformers wrote for the same vocabulary and merges (tiny-gpt2's), special tokens kept whole;
/// tokenizer_config.json's `add_bos_token` puts the BOS before every text (OPT's `</s>`); another
/// `tokenizer_class` leaves the model without a tokenizer; a malformed field is refused naming it.
#[test]
fn vocab_and_merges_make_gpt2s_tokenizer() {
    let reference = infermeter::model::open("tiny-gpt2")
        .unwrap()
        .tokenizer
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/tiny-gpt2/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let dir = copy_model(&repo().join("models/tiny-gpt2"));
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    std::fs::write(
        dir.path().join("vocab.json"),
        serde_json::to_string(&json["model"]["vocab"]).unwrap(),
    )
    .unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for m in json["model"]["merges"].as_array().unwrap() {
        let pair: Vec<&str> = m
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        merges += &format!("{}\n", pair.join(" "));
    }
    std::fs::write(dir.path().join("merges.txt"), merges).unwrap();
    let open = || infermeter::model::open(dir.path().to_str().unwrap());
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/tiny-gpt2/golden.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<String> = golden["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_string())
        .chain([
            "Hello world<|endoftext|> again".to_string(),
            "  leading spaces, tabs\tand ünïcödé — 日本".to_string(),
        ])
        .collect();
    let tok = open()
        .unwrap()
        .tokenizer
        .expect("a tokenizer from vocab.json and merges.txt");
    assert!(tok.source().ends_with("merges.txt"), "{}", tok.source());
    for text in &texts {
        let want = reference.encode(text).unwrap();
        assert_eq!(tok.encode(text).unwrap(), want, "{text}");
        assert_eq!(tok.decode(&want).unwrap(), reference.decode(&want).unwrap());
    }
    assert_eq!(tok.encode("<|endoftext|>").unwrap(), [0]);

    // OPT's tokenizer_config: the BOS before every text
    let config = |v: serde_json::Value| {
        std::fs::write(dir.path().join("tokenizer_config.json"), v.to_string()).unwrap()
    };
    config(
        json!({"tokenizer_class": "GPT2Tokenizer", "add_bos_token": true,
                  "bos_token": {"content": "<|endoftext|>", "special": true}}),
    );
    let tok = open().unwrap().tokenizer.unwrap();
    for text in &texts {
        let mut want = vec![0];
        want.extend(reference.encode(text).unwrap());
        assert_eq!(tok.encode(text).unwrap(), want, "{text}");
    }
    // another tokenizer's files: no tokenizer, the model still opens
    config(json!({"tokenizer_class": "LlamaTokenizer"}));
    assert!(open().unwrap().tokenizer.is_none());
    for (bad, field) in [
        (json!({"add_bos_token": "yes"}), "add_bos_token"),
        (json!({"bos_token": 3}), "bos_token"),
        (
            json!({"add_bos_token": true, "bos_token": null}),
            "bos_token",
        ),
    ] {
        config(bad.clone());
        let err = open().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(field), "{bad}: {err}");
    }
}

/// Mixture-of-experts checkpoints: the stacked expert tensors transformers 5 holds in memory
/// (`mlp.experts.gate_up_proj` [E, 2·inter, hidden], `mlp.experts.down_proj` [E, hidden, inter],
/// the router as `mlp.gate`) load as the per-expert ones do; a missing expert tensor, and a
/// config whose dense layers disagree with the checkpoint, are refused by name.
#[test]
fn moe_experts_load_stacked_or_per_expert() {
    let dir = copy_model(&model_dir("tiny-mixtral"));
    let ts = tensors(dir.path());
    let f32s = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = ts.iter().find(|t| t.name == name).unwrap();
        (t.shape.clone(), raw_to_f32(t).unwrap())
    };
    let mut stacked = Vec::new();
    for l in 0..2 {
        let p = format!("model.layers.{l}.block_sparse_moe");
        let (router_shape, router) = f32s(&format!("{p}.gate.weight"));
        let experts = router_shape[0];
        let (mut gate_up, mut down) = (Vec::new(), Vec::new());
        let (mut inter, mut hidden) = (0, 0);
        for e in 0..experts {
            let (shape, w1) = f32s(&format!("{p}.experts.{e}.w1.weight"));
            (inter, hidden) = (shape[0], shape[1]);
            gate_up.extend(w1);
            gate_up.extend(f32s(&format!("{p}.experts.{e}.w3.weight")).1);
            down.extend(f32s(&format!("{p}.experts.{e}.w2.weight")).1);
        }
        let q = format!("model.layers.{l}.mlp");
        stacked.push(OutTensor::f32(
            &format!("{q}.gate.weight"),
            router_shape,
            &router,
        ));
        stacked.push(OutTensor::f32(
            &format!("{q}.experts.gate_up_proj"),
            vec![experts, 2 * inter, hidden],
            &gate_up,
        ));
        stacked.push(OutTensor::f32(
            &format!("{q}.experts.down_proj"),
            vec![experts, hidden, inter],
            &down,
        ));
    }
    let mut out: Vec<OutTensor> = ts
        .into_iter()
        .filter(|t| !t.name.contains("block_sparse_moe"))
        .collect();
    out.extend(stacked);
    rewrite(dir.path(), &out);
    assert_matches_golden(dir.path(), "tiny-mixtral", 1e-3);

    // a per-expert tensor missing: named
    let dir = copy_model(&model_dir("tiny-qwen3-moe"));
    let missing = "model.layers.2.mlp.experts.5.up_proj.weight";
    let ts: Vec<OutTensor> = tensors(dir.path())
        .into_iter()
        .filter(|t| t.name != missing)
        .collect();
    rewrite(dir.path(), &ts);
    let err = infermeter::model::load(dir.path().to_str().unwrap(), Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(missing), "{err}");

    // layer 1 is dense in the checkpoint: a config routing it names the router it looks for
    let dir = copy_model(&model_dir("tiny-qwen3-moe"));
    let mut cfg = read_config(dir.path());
    cfg["mlp_only_layers"] = json!([]);
    write_config(dir.path(), &cfg);
    let err = infermeter::model::load(dir.path().to_str().unwrap(), Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.layers.1.mlp.gate.weight"), "{err}");
}
