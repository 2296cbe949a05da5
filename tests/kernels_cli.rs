//! `infermeter kernels` end to end, and the kernel studies' definitions: the CPU run writes a
//! results file that validates against `schemas/results.schema.json`; `--backend cuda` fails with a
//! clear reason without a GPU (and runs with one); bytes and FLOPs per call match hand-computed figures at real model shapes; every
//! op family has a bench target named as its kernel file. CUDA attention variants and the
//! acceptance sweep are listed without a GPU; the GPU session's Python scripts compile, and the
//! ratio script's table is checked on the sample files of `tests/fixtures/attention/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use infermeter::study::ops::{decode_step_cost, matmul_params};
use infermeter::study::sweep::{self, SweepSpec};
use infermeter::study::{Dtype, Family, Op, Shape};

fn kernels(args: &[&str]) -> (bool, String, String) {
    run_cli(&[&["kernels"], args].concat())
}

/// Run `kernels args` with `--out` in a temporary folder, require success, and return the results
/// file (validated against the schema) with stdout.
fn kernels_results(args: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kernels.json");
    let (ok, stdout, err) = kernels(&[args, &["--out", out.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    (validate_results(&out), stdout)
}

#[test]
fn cpu_kernels_write_a_valid_results_file() {
    let (doc, stdout) = kernels_results(&[
        "--backend",
        "cpu",
        "--op",
        "rmsnorm,silu_mul,attention_decode,argmax",
        "--shapes",
        "tiny-llama",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--min-run-ms",
        "0.2",
    ]);
    assert!(stdout.contains("CPU ceilings (measured)"), "{stdout}");
    assert!(stdout.contains("%ceil"), "{stdout}");
    assert_eq!(doc["kind"], "kernels");
    assert_eq!(doc["complete"], true);
    assert_eq!(doc["backend"], "cpu");
    assert_eq!(doc["dtype"], "f32");
    assert!(doc["spec"].is_null());
    assert!(doc["spec_note"].as_str().unwrap().contains("CPU"));
    assert!(doc["ceilings"]["memory_gb_s"].as_f64().unwrap() > 0.0);
    assert!(doc["ceilings"]["compute_gflop_s"].as_f64().unwrap() > 0.0);
    assert!(doc["tool"]["git_commit"].as_str().is_some());
    assert!(doc["hardware"]["host"]["logical_cpus"].as_u64().unwrap() >= 1);
    let rows = doc["rows"].as_array().unwrap();
    // tiny-llama (hidden 64, inter 172, 4/2 heads of 16, 256 positions, vocab 512): tokens 1, 64,
    // 1024 for the token-wise ops, decode (1, 2048→256) and (16, 1024→256), sampling rows 1 and 16
    let count = |op: &str| rows.iter().filter(|r| r["op"] == op).count();
    assert_eq!(count("rmsnorm"), 3);
    assert_eq!(count("silu_mul"), 3);
    assert_eq!(count("attention_decode"), 2);
    assert_eq!(count("argmax"), 2);
    assert_eq!(rows.len(), 10);
    assert!(doc["skipped"].as_array().unwrap().is_empty());
    for r in rows {
        assert_eq!(r["backend"], "cpu");
        assert_eq!(r["model"], "tiny-llama");
        // one implementation on the CPU (the reference): no variant, no speed-up
        assert!(r.get("variant").is_none(), "{r}");
        assert!(r.get("speedup_over_baseline").is_none(), "{r}");
        assert!(r["pct_of_spec_peak"].is_null());
        assert!(r["pct_of_measured_ceiling"].as_f64().unwrap() > 0.0);
        assert!(r["time_min_s"].as_f64().unwrap() <= r["time_median_s"].as_f64().unwrap());
        let (bytes, t) = (
            r["bytes"].as_f64().unwrap(),
            r["time_median_s"].as_f64().unwrap(),
        );
        let gb_s = r["achieved_gb_s"].as_f64().unwrap();
        assert!(
            (gb_s - bytes / t / 1e9).abs() <= 1e-9 * gb_s.max(1.0),
            "{r}"
        );
    }
    // rmsnorm of one row of 64: x and out 2·64·4 bytes, weight 64·4; 4 FLOPs per element
    let one = rows
        .iter()
        .find(|r| r["op"] == "rmsnorm" && r["shape"]["rows"] == 1)
        .unwrap();
    assert_eq!(one["bytes"], 768);
    assert_eq!(one["flops"], 256);
    assert_eq!(one["bound"], "memory");
    assert_eq!(one["family"], "norm");
    // decode attention is capped at the model's 256 positions
    assert!(rows
        .iter()
        .filter(|r| r["op"] == "attention_decode")
        .all(|r| r["shape"]["context_len"] == 256));
}

/// `--ceiling-gemm-n` sizes the GEMM that measures the compute ceiling, and the results say so.
/// (A small GEMM reads lower and moves the ridge point: the bounds are checked above, at the
/// default size.)
#[test]
fn ceiling_gemm_size_is_an_option() {
    let (doc, _) = kernels_results(&[
        "--op",
        "rmsnorm",
        "--shapes",
        "tiny-llama",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--ceiling-gemm-n",
        "96",
    ]);
    let method = doc["ceilings"]["compute_method"].as_str().unwrap();
    assert!(method.contains("m = n = k = 96,"), "{method}");
    assert_eq!(doc["config"]["ceiling_gemm_n"], 96);
}

/// Without a GPU (this machine, CI), `--backend cuda` fails with the probe's reason, for every
/// dtype and with the cold-L2 flush, and writes nothing. On a GPU machine it runs (see
/// `cuda_kernels_run_on_a_gpu`).
#[test]
fn cuda_backend_fails_with_a_clear_message() {
    if infermeter::backend::cuda::probe(false).usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.json");
    for extra in [
        &[][..],
        &["--dtype", "f16"][..],
        &["--dtype", "f32", "--cold-l2"][..],
    ] {
        let mut args = vec!["--backend", "cuda", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (ok, _, err) = kernels(&args);
        assert!(!ok);
        assert!(err.contains("--backend cuda"), "{err}");
        assert!(err.contains("no CUDA device: "), "{err}");
        assert!(!out.exists(), "no results file for a refused backend");
    }
}

/// On a GPU machine: a small CUDA run writes a valid file with GPU rows, the GPU's name and
/// ceilings (skipped without a GPU).
#[test]
fn cuda_kernels_run_on_a_gpu() {
    if !infermeter::backend::cuda::probe(false).usable() {
        eprintln!("skipped: no usable GPU");
        return;
    }
    let (doc, stdout) = kernels_results(&[
        "--backend",
        "cuda",
        "--dtype",
        "bf16",
        "--cold-l2",
        "--op",
        "rmsnorm,matmul,argmax",
        "--shapes",
        "tiny-llama",
        "--runs",
        "3",
        "--warmup",
        "1",
        // a small ceiling GEMM keeps this test short (and possible on the emulated stack)
        "--ceiling-gemm-n",
        "512",
    ]);
    assert!(stdout.contains("CUDA ceilings (measured)"), "{stdout}");
    assert_eq!(
        (doc["backend"].as_str(), doc["dtype"].as_str()),
        (Some("cuda"), Some("bf16"))
    );
    assert_eq!(doc["ceilings"]["device"], "cuda");
    assert!(doc["hardware"]["gpus"][0]["name"].as_str().is_some());
    let rows = doc["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        assert_eq!(
            (r["backend"].as_str(), r["dtype"].as_str()),
            (Some("cuda"), Some("bf16"))
        );
    }

    // the attention variants side by side with a cold L2, as `scripts/gpu/session attention`
    // runs them, at a head_dim they have kernels for (tiny-llama's 16 has none)
    let shapes = repo().join("tests/fixtures/attention/shapes-d64");
    let (doc, _) = kernels_results(&[
        "--backend",
        "cuda",
        "--cold-l2",
        "--op",
        "attention",
        "--attention",
        "all",
        "--shapes",
        shapes.to_str().unwrap(),
        "--runs",
        "1",
        "--warmup",
        "0",
        "--ceiling-gemm-n",
        "512",
    ]);
    let rows = doc["rows"].as_array().unwrap();
    let variants = |op: &str| -> Vec<&str> {
        rows.iter()
            .filter(|r| r["op"] == op)
            .map(|r| r["variant"].as_str().unwrap())
            .collect()
    };
    // one 512-token prefill; decode at (1, 2048) and (16, 1024)
    assert_eq!(
        variants("attention_prefill"),
        ["naive", "auto", "auto-sync"]
    );
    assert_eq!(
        variants("attention_decode"),
        [
            "naive",
            "auto",
            "auto-1split",
            "naive",
            "auto",
            "auto-1split"
        ]
    );
    for r in rows {
        let speedup = r["speedup_over_baseline"].as_f64().unwrap();
        if r["variant"] == "naive" {
            assert_eq!(speedup, 1.0, "{r}");
        } else {
            assert!(speedup > 0.0, "{r}");
        }
        if r["op"] == "attention_decode" && r["variant"] != "naive" {
            assert!(r["decode_splits"].as_u64().unwrap() >= 1, "{r}");
        }
    }
}

#[test]
fn dtype_and_cold_l2_options_parse_and_are_checked() {
    // bf16 costs: 2 bytes per element (Llama 3.1 8B's QKV GEMV), listed without opening a GPU
    let (ok, stdout, err) = kernels(&[
        "--list",
        "--backend",
        "cuda",
        "--dtype",
        "bf16",
        "--cold-l2",
        "--op",
        "matmul",
        "--shapes",
        "llama-3.1-8b",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains(&(2 * (4096 + 6144 * 4096 + 6144)).to_string()));
    assert!(stdout.contains("(bf16 elements)"), "{stdout}");
    // the CPU computes in f32 and has no L2 flush
    let (ok, _, err) = kernels(&["--backend", "cpu", "--dtype", "bf16", "--op", "norm"]);
    assert!(!ok);
    assert!(err.contains("f32 only"), "{err}");
    let (ok, _, err) = kernels(&["--backend", "cpu", "--cold-l2", "--op", "norm"]);
    assert!(!ok);
    assert!(
        err.contains("--cold-l2 applies to --backend cuda only"),
        "{err}"
    );
    let (ok, _, err) = kernels(&["--backend", "cuda", "--dtype", "fp8"]);
    assert!(!ok);
    assert!(err.contains("fp8"), "{err}");
}

#[test]
fn bad_selections_are_reported_without_running() {
    let (ok, _, err) = kernels(&["--op", "softmax"]);
    assert!(!ok);
    assert!(
        err.contains("unknown op `softmax`") && err.contains("decode_step"),
        "{err}"
    );
    let (ok, _, err) = kernels(&["--op", "rmsnorm", "--shapes", "tiny-gpt2"]);
    assert!(!ok);
    assert!(err.contains("no case") && err.contains("Llama's"), "{err}");
    let (ok, _, err) = kernels(&["--shapes", "no-such-model"]);
    assert!(!ok);
    assert!(err.contains("no-such-model"), "{err}");
    let (ok, _, err) = kernels(&["--runs", "0"]);
    assert!(!ok);
    assert!(err.contains("--runs"), "{err}");
    let (ok, _, err) = kernels(&["--ceiling-gemm-n", "0"]);
    assert!(!ok);
    assert!(err.contains("--ceiling-gemm-n must be at least 1"), "{err}");
}

#[test]
fn list_shows_cases_costs_and_the_spec_table() {
    let (ok, stdout, err) = kernels(&["--list", "--op", "matmul", "--shapes", "llama-3.1-8b"]);
    assert!(ok, "{err}");
    // Llama 3.1 8B's QKV projection as a GEMV: weights 6144·4096, x 4096, out 6144 (f32)
    assert!(stdout.contains("qkv:m=1,n=6144,k=4096"), "{stdout}");
    assert!(stdout.contains(&(4 * (4096 + 6144 * 4096 + 6144)).to_string()));
    for gpu in [
        "A10",
        "A100 40GB",
        "A100 80GB SXM",
        "L4",
        "H100 SXM",
        "H100 PCIe",
        "H200",
    ] {
        assert!(stdout.contains(gpu), "{gpu} missing:\n{stdout}");
    }
}

fn cfg(name: &str) -> infermeter::model::ModelConfig {
    infermeter::model::open(name).unwrap().config
}

fn one(
    name: &str,
    op: Op,
    spec: &SweepSpec,
    pick: impl Fn(&Shape) -> bool,
) -> infermeter::study::Case {
    sweep::model_cases(name, &cfg(name), &[op], spec)
        .into_iter()
        .find(|c| pick(&c.shape))
        .unwrap_or_else(|| panic!("no {op:?} case for {name}"))
}

/// Bytes and FLOPs per call at real shapes, computed by hand from the configs in `models/`.
#[test]
fn costs_at_real_model_shapes_match_hand_computation() {
    let spec = SweepSpec::for_one_model();
    // Llama 3.1 8B, decode attention of one sequence at 2048 tokens: K and V of 8 KV heads of 128
    // (2·2048·8·128 elements), q and out of 32 heads (2·32·128), f32; one position and 128
    // block-table entries. FLOPs: 4·32·128 per key.
    let c = one("llama-3.1-8b", Op::AttentionDecode, &spec, |s| {
        matches!(s, Shape::Attention { seqs: 1, .. })
    })
    .cost(Dtype::F32);
    assert_eq!(
        c.bytes,
        4 * (2 * 2048 * 8 * 128 + 2 * 32 * 128) + 4 * (1 + 128)
    );
    assert_eq!(c.flops, 4 * 32 * 128 * 2048);
    // the same in bf16 halves the tensor bytes, not the metadata
    let bf = one("llama-3.1-8b", Op::AttentionDecode, &spec, |s| {
        matches!(s, Shape::Attention { seqs: 1, .. })
    })
    .cost(Dtype::Bf16);
    assert_eq!(bf.bytes, 2 * (2 * 2048 * 8 * 128 + 2 * 32 * 128) + 4 * 129);

    // Llama 3.1 8B MLP at 64 tokens: silu_mul reads gate and up, writes out: 3·64·14336 floats
    let c = one("llama-3.1-8b", Op::SiluMul, &spec, |s| {
        matches!(s, Shape::SiluMul { rows: 64, .. })
    })
    .cost(Dtype::F32);
    assert_eq!((c.bytes, c.flops), (4 * 3 * 64 * 14336, 4 * 64 * 14336));

    // GPT-2 small: 124,439,808 parameters (tied head). A decode step at batch 1, context 512 reads
    // every weight except the unused position rows (1024·768 table, 1 row read) plus one embedding
    // row, K and V of 513 token slots in 12 layers of 768; FLOPs: 2 per matmul weight (the tied
    // lm_head's 50257·768 included) plus attention's 4·12 heads·64·512 per layer.
    let gpt2 = cfg("gpt2");
    assert_eq!(gpt2.num_parameters(), 124_439_808);
    let per_layer = 768 * 2304 + 768 * 768 + 2 * 768 * 3072;
    assert_eq!(matmul_params(&gpt2), 12 * per_layer + 50257 * 768);
    let c = decode_step_cost(&gpt2, 1, 512, Dtype::F32);
    let weights = 124_439_808 - 1024 * 768 + 2 * 768;
    let kv = 2 * 12 * 513 * 768;
    assert_eq!(c.bytes, 4 * (weights + kv) + 12);
    assert_eq!(
        c.flops,
        2 * (12 * per_layer + 50257 * 768) + 4 * 12 * 12 * 64 * 512
    );
    assert_eq!(
        one("gpt2", Op::DecodeStep, &spec, |s| matches!(
            s,
            Shape::DecodeStep { batch: 1, .. }
        ))
        .cost(Dtype::F32),
        c
    );
}

/// A reader goes from `kernels/norm.cu` to `benches/norm.rs` without searching.
#[test]
fn every_family_has_a_bench_named_as_its_kernel_file() {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    for f in Family::ALL {
        let bench = repo().join("benches").join(format!("{}.rs", f.name()));
        assert!(bench.is_file(), "{} missing", bench.display());
        assert!(
            manifest.contains(&format!("name = \"{}\"\nharness = false", f.name())),
            "no [[bench]] entry for {}",
            f.name()
        );
        if let Some(k) = f.kernel_file() {
            assert!(repo().join(k).is_file(), "{k} missing");
            assert_eq!(
                Path::new(k).file_stem().unwrap().to_str().unwrap(),
                f.name()
            );
        }
    }
}

/// `--list` shows what a CUDA run would time, without a GPU: every attention case once per
/// variant (naive first), the acceptance sweep's shapes; the CPU keeps one row per shape.
#[test]
fn attention_variants_and_the_acceptance_sweep_are_listed() {
    let acceptance = ["--op", "attention", "--sweep", "attention-acceptance"];
    let (ok, stdout, err) = kernels(&[&["--list", "--backend", "cuda"][..], &acceptance].concat());
    assert!(ok, "{err}");
    assert!(stdout.contains("36 cases (bf16 elements)"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("variant"), "{}", lines[0]);
    let shape = |seqs: usize, q: usize, ctx: usize| {
        format!("seqs={seqs},q={q},ctx={ctx},heads=32/8,d=128,bs=16")
    };
    let variants_of = |op: &str, shape: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with(op) && l.contains(&format!(" {shape} ")))
            .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_string())
            .collect()
    };
    for l in [512, 2048, 8192] {
        assert_eq!(
            variants_of("attention_prefill", &shape(1, l, l)),
            ["naive", "auto", "auto-sync"],
            "{stdout}"
        );
    }
    for b in [1, 16, 64] {
        for c in [1024, 4096, 16384] {
            assert_eq!(
                variants_of("attention_decode", &shape(b, 1, c)),
                ["naive", "auto", "auto-1split"],
                "{stdout}"
            );
        }
    }
    // a subset of the variants, in any order: naive still comes first
    let (ok, stdout, err) = kernels(&[
        "--list",
        "--backend",
        "cuda",
        "--attention",
        "auto-1split,naive",
        "--op",
        "attention_decode",
        "--sweep",
        "attention-acceptance",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("18 cases"), "{stdout}");
    let first = stdout.lines().nth(1).unwrap_or_default();
    assert!(first.contains(" naive "), "{first}");
    // the CPU: the same 12 shapes, one row each, no variant column
    let (ok, stdout, err) = kernels(&[&["--list"][..], &acceptance].concat());
    assert!(ok, "{err}");
    assert!(stdout.contains("12 cases (f32 elements)"), "{stdout}");
    assert!(!stdout.contains("variant") && !stdout.contains(" naive "));
}

#[test]
fn attention_and_sweep_options_are_checked() {
    let refused = |args: &[&str], want: &[&str]| {
        let (ok, _, err) = kernels(args);
        assert!(!ok, "{args:?} ran");
        for w in want {
            assert!(err.contains(w), "{args:?}: `{w}` not in {err}");
        }
    };
    refused(
        &[
            "--backend",
            "cpu",
            "--attention",
            "auto",
            "--op",
            "attention",
        ],
        &["--attention applies to --backend cuda only", "reference"],
    );
    refused(
        &["--list", "--backend", "cuda", "--attention", "naive,flash2"],
        &[
            "--attention",
            "unknown attention variant `flash2`",
            "auto-1split",
        ],
    );
    refused(
        &["--list", "--sweep", "issue5"],
        &["--sweep", "unknown sweep `issue5`", "attention-acceptance"],
    );
    refused(
        &[
            "--list",
            "--sweep",
            "attention-acceptance",
            "--op",
            "matmul",
        ],
        &["attention_prefill and attention_decode cases only"],
    );
    refused(
        &[
            "--list",
            "--sweep",
            "attention-acceptance",
            "--shapes",
            "gpt2",
        ],
        &["--shapes"],
    );
    // only forced split counts on prefill: nothing to run
    refused(
        &[
            "--list",
            "--backend",
            "cuda",
            "--attention",
            "auto-1split,auto-8split",
            "--op",
            "attention_prefill",
        ],
        &["auto-<N>split variants apply to attention_decode only"],
    );
    refused(
        &["--list", "--backend", "cuda", "--attention", "auto-65split"],
        &["unknown attention variant `auto-65split`", "N = 1..64"],
    );
}

/// `python3` if it runs here; otherwise the reason (the test then prints it and skips).
fn python3() -> Result<(), String> {
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("python3 --version failed: {}", o.status)),
        Err(e) => Err(format!("python3 not found: {e}")),
    }
}

/// The GPU session's Python scripts compile (byte-code written to a temporary directory, not
/// next to the scripts).
#[test]
fn gpu_session_scripts_compile() {
    if let Err(why) = python3() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scripts = repo().join("scripts/gpu");
    let mut compiled = 0;
    for entry in std::fs::read_dir(&scripts).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("py") {
            continue;
        }
        let out = Command::new("python3")
            .args([
                "-c",
                "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)",
            ])
            .arg(&path)
            .arg(dir.path().join("out.pyc"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        compiled += 1;
    }
    assert!(
        compiled >= 3,
        "sdpa_compare.py, attention_ratios.py, hf_generate.py"
    );
}

/// scripts/gpu/attention_ratios.py on the sample files of tests/fixtures/attention/ (round
/// numbers, not measurements: tests/fixtures/attention/README.md): the ratios, the targets and
/// the Markdown table, and a clear error for a file it cannot use.
#[test]
fn attention_ratios_script_on_sample_files() {
    let fixtures = repo().join("tests/fixtures/attention");
    let ours = fixtures.join("kernels-attention-bf16.json");
    let sdpa = fixtures.join("sdpa-compare.json");
    // the sample is a valid kernels results file, variants and speed-ups included
    let doc = validate_results(&ours);
    assert!(doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["variant"] == "auto-1split"));
    if let Err(why) = python3() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (md, json) = (dir.path().join("r.md"), dir.path().join("r.json"));
    let script = repo().join("scripts/gpu/attention_ratios.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--ours")
        .arg(&ours)
        .arg("--sdpa")
        .arg(&sdpa)
        .arg("--out-md")
        .arg(&md)
        .arg("--out-json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let close = |v: &serde_json::Value, want: f64| {
        let got = v.as_f64().unwrap_or(f64::NAN);
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{got} != {want}"
        );
    };
    assert_eq!(r["kind"], "attention_ratios");
    close(&r["d2d_gb_s"], 3000.0);
    // prefill: auto at 100 and 450 TFLOP/s against SDPA flash at 200 and 500; naive 8× and 22.5×
    // slower than auto
    let prefill = r["prefill"].as_array().unwrap();
    assert_eq!(prefill.len(), 2);
    assert_eq!(prefill[0]["shape"]["query_len"], 512);
    close(&prefill[0]["auto_vs_sdpa_flash"], 0.5);
    close(&prefill[0]["auto_speedup_over_naive"], 8.0);
    assert_eq!(prefill[0]["target_met"], false);
    close(&prefill[1]["auto_vs_sdpa_flash"], 0.9);
    close(&prefill[1]["auto_tflop_s"], 450.0);
    close(&prefill[1]["auto_speedup_over_naive"], 22.5);
    assert_eq!(prefill[1]["target_met"], true);
    // the cp.async pipeline's gain: auto-sync 1.25× and 1.5× slower than auto
    close(&prefill[0]["pipeline_speedup"], 1.25);
    close(&prefill[1]["pipeline_speedup"], 1.5);
    close(
        &prefill[1]["auto_sync_ms"],
        1.5 * prefill[1]["auto_ms"].as_f64().unwrap(),
    );
    // decode, sorted by (batch, context): auto at 1500, 2400, (skipped), 2700 GB/s of a 3000 GB/s
    // copy; the 85 % target applies from 4096 keys
    let decode = r["decode"].as_array().unwrap();
    let ctx: Vec<(u64, u64)> = decode
        .iter()
        .map(|d| {
            (
                d["shape"]["seqs"].as_u64().unwrap(),
                d["shape"]["context_len"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ctx, [(1, 1024), (1, 16384), (16, 4096), (64, 16384)]);
    close(&decode[0]["auto_pct_of_d2d"], 50.0);
    assert_eq!(decode[0]["target_applies"], false);
    assert!(decode[0]["target_met"].is_null());
    close(&decode[0]["auto_1split_speedup_over_naive"], 7.5);
    close(&decode[0]["pytorch"]["sdpa_flash"]["auto_gb_s_ratio"], 1.5);
    close(&decode[1]["auto_pct_of_d2d"], 80.0);
    assert_eq!(decode[1]["target_met"], false);
    assert!(decode[2]["auto_ms"].is_null() && decode[2]["target_met"].is_null());
    assert!(decode[2]["skipped"]["auto"]
        .as_str()
        .unwrap()
        .contains("too large"));
    close(&decode[2]["auto_1split_speedup_over_naive"], 4.0);
    close(&decode[3]["auto_pct_of_d2d"], 90.0);
    close(&decode[3]["auto_speedup_over_naive"], 10.0);
    close(&decode[3]["pytorch"]["matmul"]["auto_gb_s_ratio"], 1.35);
    assert_eq!(decode[3]["target_met"], true);
    assert_eq!(
        r["summary"],
        serde_json::json!({
            "prefill": {"met": 1, "judged": 2, "shapes": 2},
            "decode": {"met": 1, "judged": 2, "shapes": 3}
        })
    );
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(
        table.contains("| 64 × 16384 |") && table.contains("90.0 %"),
        "{table}"
    );
    assert!(table.contains("auto did not run at seqs=16"), "{table}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), table);

    // a CPU file has no variants: refused, naming the file and the field
    let cpu = repo().join("tests/fixtures/results/kernels.json");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--ours")
        .arg(&cpu)
        .arg("--sdpa")
        .arg(&sdpa)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kernels.json: rows: no attention row with a `variant`"),
        "{stderr}"
    );
    // a row missing a field: the file, the row and the field
    let broken = dir.path().join("broken.json");
    let mut bad: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sdpa).unwrap()).unwrap();
    bad["rows"][1].as_object_mut().unwrap().remove("flops");
    std::fs::write(&broken, bad.to_string()).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg("--ours")
        .arg(&ours)
        .arg("--sdpa")
        .arg(&broken)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("broken.json: rows[1].flops: missing"),
        "{stderr}"
    );
    // a split sweep's forced counts are left to split_sweep.py; an unknown variant is an error
    let ours_doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ours).unwrap()).unwrap();
    let decode_row = ours_doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r["op"] == "attention_decode" && r["variant"] == "auto")
        .unwrap();
    // the sample with a copy of its auto decode row, edited, through the script
    let with_extra_row = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut doc = ours_doc.clone();
        let mut extra = doc["rows"][decode_row].clone();
        edit(&mut extra);
        doc["rows"].as_array_mut().unwrap().push(extra);
        let path = dir.path().join("with-extra.json");
        std::fs::write(&path, doc.to_string()).unwrap();
        Command::new("python3")
            .arg(&script)
            .arg("--ours")
            .arg(&path)
            .arg("--sdpa")
            .arg(&sdpa)
            .arg("--out-json")
            .arg(&json)
            .output()
            .unwrap()
    };
    for (variant, ok) in [("auto-8split", true), ("flash2", false)] {
        let out = with_extra_row(&|row| row["variant"] = variant.into());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{variant}: {stderr}");
        if !ok {
            assert!(stderr.contains("unknown `flash2`"), "{stderr}");
        }
    }
    // a windowed decode row (Mistral 7B v0.1's study) is a shape of its own: never compared
    // with the windowless PyTorch rows of the same sizes
    let out = with_extra_row(&|row| row["shape"]["window"] = 4096.into());
    let r = script_json(&out, &json);
    let decode = r["decode"].as_array().unwrap();
    assert_eq!(decode.len(), 5, "{r}");
    let w: Vec<_> = decode
        .iter()
        .filter(|d| d["shape"]["window"] == 4096)
        .collect();
    assert_eq!(w.len(), 1, "{r}");
    assert_eq!(w[0]["pytorch"], serde_json::json!({}), "{r}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(", window 4096 |"));
    // so is a soft-capped one (Gemma 2's study): PyTorch's SDPA rows cap nothing
    let out = with_extra_row(&|row| row["shape"]["softcap"] = 50.0.into());
    let r = script_json(&out, &json);
    let decode = r["decode"].as_array().unwrap();
    assert_eq!(decode.len(), 5, "{r}");
    let capped: Vec<_> = decode
        .iter()
        .filter(|d| d["shape"]["softcap"] == 50.0)
        .collect();
    assert_eq!(capped.len(), 1, "{r}");
    assert_eq!(capped[0]["pytorch"], serde_json::json!({}), "{r}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(", soft-cap 50 |"));
    let out = with_extra_row(&|row| row["shape"]["softcap"] = "high".into());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(".shape.softcap: expected a positive cap"),
        "{stderr}"
    );
}

/// The report keeps the variants of one shape apart.
#[test]
fn report_names_attention_variants() {
    let dir = tempfile::tempdir().unwrap();
    let ours = repo().join("tests/fixtures/attention/kernels-attention-bf16.json");
    let (ok, _, err) = run_cli(&[
        "report",
        ours.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
        "--format",
        "md",
    ]);
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    for v in ["naive", "auto", "auto-1split"] {
        assert!(
            md.contains(&format!("attention_decode [{v}]")),
            "{v} missing:\n{md}"
        );
    }
    assert!(md.contains("| matmul |"), "{md}");
}

/// Every variant name the kernel studies write is one the results schema accepts, in rows and in
/// skipped cases (the CUDA-only decode step's `eager`/`graphs` included: a GPU run writes them),
/// and a name no study writes is refused.
#[test]
fn every_variant_name_validates_against_the_schema() {
    use infermeter::study::variant::Variant;
    let path = repo().join("tests/fixtures/attention/kernels-attention-bf16.json");
    let sample: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let with_variant = |name: &str, list: &str| {
        let mut doc = sample.clone();
        doc[list][0]["variant"] = name.into();
        doc
    };
    for list in ["rows", "skipped"] {
        let most = infermeter::backend::cuda::params::IM_DECODE_MAX_SPLITS;
        let splits = [Variant::AutoSplits(9), Variant::AutoSplits(most)];
        for v in Variant::ALL.into_iter().chain(splits) {
            let errors = results_schema_errors(&with_variant(&v.name(), list));
            assert!(errors.is_empty(), "{list}: variant {v}: {errors:#?}");
        }
        if list == "rows" {
            for (splits, valid) in [(1, true), (most, true), (0, false), (most + 1, false)] {
                let mut doc = with_variant("auto-8split", list);
                doc[list][0]["decode_splits"] = splits.into();
                let errors = results_schema_errors(&doc);
                assert_eq!(
                    errors.is_empty(),
                    valid,
                    "decode_splits {splits}: {errors:#?}"
                );
            }
        }
        let past = format!("auto-{}split", most + 1);
        for bad in [
            "flash2",
            "auto-split",
            "auto-0split",
            "auto-08split",
            "Auto",
            &past,
        ] {
            let errors = results_schema_errors(&with_variant(bad, list));
            assert!(!errors.is_empty(), "{list}: variant {bad} accepted");
        }
    }
}

/// scripts/gpu/split_sweep.py on tests/fixtures/attention/kernels-splits-bf16.json (sample
/// numbers): per decode shape the fastest forced split count, auto's time over it and the flag
/// where the heuristic is off; a clear error for a row it cannot use.
#[test]
fn split_sweep_script_on_a_sample_file() {
    let sample = repo().join("tests/fixtures/attention/kernels-splits-bf16.json");
    let doc = validate_results(&sample);
    assert!(doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["variant"] == "auto-64split" && r["decode_splits"] == 64));
    // the sample's split counts are the ones the backend plans on an H100 (132 SMs)
    for row in doc["rows"].as_array().unwrap() {
        let variant =
            infermeter::study::variant::Variant::from_name(row["variant"].as_str().unwrap())
                .unwrap();
        let sh = &row["shape"];
        let n = |k: &str| sh[k].as_u64().unwrap() as usize;
        let case = infermeter::study::ops::Case {
            op: Op::AttentionDecode,
            model: None,
            shape: Shape::Attention {
                seqs: n("seqs"),
                query_len: n("query_len"),
                context_len: n("context_len"),
                num_heads: n("num_heads"),
                num_kv_heads: n("num_kv_heads"),
                head_dim: n("head_dim"),
                block_size: n("block_size"),
                window: sh["window"].as_u64().map(|w| w as usize),
                softcap: sh["softcap"].as_f64().map(|c| c as f32),
                alibi: sh["alibi"].as_f64().map(|c| c as f32),
            },
            variant: Some(variant),
        };
        let want = variant.decode_splits(&case, 132);
        assert_eq!(row["decode_splits"].as_u64(), want.map(u64::from), "{row}");
    }
    if let Err(why) = python3() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (md, json) = (dir.path().join("s.md"), dir.path().join("s.json"));
    let script = repo().join("scripts/gpu/split_sweep.py");
    let run = |input: &Path| {
        Command::new("python3")
            .arg(&script)
            .arg("--kernels")
            .arg(input)
            .arg("--out-md")
            .arg(&md)
            .arg("--out-json")
            .arg(&json)
            .output()
            .unwrap()
    };
    let out = run(&sample);
    let r = script_json(&out, &json);
    let shapes = r["shapes"].as_array().unwrap();
    assert_eq!(shapes.len(), 2);
    // 1 × 1024: auto (4 splits, 2.8 µs) ties the best forced count, 4 splits; 16 and 64 forced
    // splits launch 8 (1024 keys hold eight 128-key groups)
    let small = &shapes[0];
    assert_eq!(small["shape"]["context_len"], 1024);
    assert_eq!(small["best_forced"], "auto-4split");
    assert_eq!(small["auto"]["splits"], 4);
    assert_eq!(small["forced"]["auto-64split"]["splits"], 8);
    assert!((small["auto_time_over_best"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(small["heuristic_off"], false);
    // 64 × 16384: auto (1 split, 1591 µs) against 4 forced splits (1400 µs): 1.136×, flagged
    let large = &shapes[1];
    assert_eq!(large["best_forced_splits"], 4);
    let ratio = large["auto_time_over_best"].as_f64().unwrap();
    assert!((ratio - 1591.0 / 1400.0).abs() < 1e-9, "{ratio}");
    assert_eq!(large["heuristic_off"], true);
    assert_eq!(r["summary"]["heuristic_off"], 1);
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(
        table.contains("| 64 × 16384 | 32/8, 128 | 15912 | 1591 (1) | 2700 |"),
        "{table}"
    );
    assert_eq!(table.matches("**off**").count(), 1, "{table}");
    assert!(table.contains("| 3.1 (8) |"), "{table}");
    // a split-KV row without its split count: the file and row are named
    let mut broken: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sample).unwrap()).unwrap();
    broken["rows"][1]
        .as_object_mut()
        .unwrap()
        .remove("decode_splits");
    let bad = dir.path().join("broken.json");
    std::fs::write(&bad, broken.to_string()).unwrap();
    let out = run(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("broken.json: rows[1].decode_splits: missing"),
        "{err}"
    );
    // the same rows under a window are another shape, listed apart with their window
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sample).unwrap()).unwrap();
    let mut windowed: Vec<serde_json::Value> = doc["rows"].as_array().unwrap().clone();
    let mut capped = windowed.clone();
    for row in &mut windowed {
        row["shape"]["window"] = 512.into();
    }
    // and under a soft-cap (Gemma 2)
    for row in &mut capped {
        row["shape"]["softcap"] = 50.0.into();
    }
    doc["rows"].as_array_mut().unwrap().extend(windowed);
    doc["rows"].as_array_mut().unwrap().extend(capped);
    let both = dir.path().join("windowed.json");
    std::fs::write(&both, doc.to_string()).unwrap();
    let out = run(&both);
    let r = script_json(&out, &json);
    let options: Vec<_> = r["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["shape"]["window"].as_u64(),
                s["shape"]["softcap"].as_f64(),
            )
        })
        .collect();
    let (plain, windowed, capped) = ((None, None), (Some(512), None), (None, Some(50.0)));
    assert_eq!(
        options,
        [plain, capped, windowed, plain, capped, windowed],
        "{r}"
    );
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(table.contains("| 64 × 16384, window 512 |"), "{table}");
    assert!(table.contains("| 64 × 16384, soft-cap 50 |"), "{table}");
}

/// A script run's `--out-json` file, once the run succeeded (else its stderr is the failure).
fn script_json(out: &std::process::Output, json: &Path) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}
