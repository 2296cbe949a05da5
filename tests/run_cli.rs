//! `infermeter run` end to end: every mode writes a results file that validates against
//! `schemas/results.schema.json`; workload replay through the batching engine gives HF's greedy
//! continuations; config files merge under the command line; an interrupted run keeps its records.

mod common;

use common::*;
use serde_json::Value;

fn run(args: &[&str]) -> (bool, String, String) {
    run_cli(&[&["run", "--no-progress"], args].concat())
}

#[test]
fn grid_mode_writes_a_valid_results_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grid.json");
    let (ok, stdout, err) = run(&[
        "--batch-size",
        "1,3",
        "--input-len",
        "8,20",
        "--output-len",
        "5",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("bs=3 in=20 out=5 rep1"), "{stdout}");
    let doc = validate_results(&out);
    assert_eq!(doc["complete"], true);
    let phases = doc["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2 * 2 * 3);
    for p in phases {
        let bs = p["params"]["batch_size"].as_u64().unwrap() as usize;
        let reqs = p["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), bs);
        for r in reqs {
            assert_eq!(r["output_tokens"], 5);
            assert_eq!(r["prompt_tokens"], p["params"]["input_len"]);
            assert_eq!(r["chunk_times_s"].as_array().unwrap().len(), 5);
        }
        assert!(
            p["summary"]["throughput"]["output_tokens_per_s"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert!(!p["steps"].as_array().unwrap().is_empty());
    }
    assert_eq!(phases.iter().filter(|p| p["warmup"] == true).count(), 4);
}

/// A model that slides on every layer runs with its window's KV release, said at start with the
/// pool; the peak of KV blocks in use stays within what the window needs, and a request longer
/// than the pool runs (one without a window is refused).
#[test]
fn a_model_sliding_on_every_layer_releases_blocks_and_outgrows_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mistral.json");
    // one request of 150 + 40 tokens in blocks of 4, 16-token steps
    let cell = |model: &str, extra: &[&str], out: &std::path::Path| {
        let model = model_dir(model);
        let args = [
            &[
                "--model",
                model.to_str().unwrap(),
                "--batch-size",
                "1",
                "--input-len",
                "150",
                "--output-len",
                "40",
                "--block-size",
                "4",
                "--max-num-batched-tokens",
                "16",
                "--out",
                out.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        run(&args)
    };
    let mistral = |extra: &[&str], out: &std::path::Path| cell("tiny-mistral", extra, out);
    let (ok, _, err) = mistral(&["--kv-blocks", "16"], &out);
    // 190 tokens in a pool of 64: the window and a 16-token step need ⌈52 / 4⌉ + 1 = 14 blocks
    assert!(ok, "{err}");
    assert!(
        err.contains("(blocks that leave the 37-token window are released)"),
        "{err}"
    );
    let doc = validate_results(&out);
    for p in doc["phases"].as_array().unwrap() {
        // one request of 190 tokens: 48 blocks of 4 without the release; at most
        // (37 - 1) / 4 + 2 = 11 between steps with it
        let peak = p["engine_summary"]["peak_kv_blocks_used"].as_u64().unwrap();
        assert!(peak <= 11, "peak {peak} blocks");
    }
    assert_eq!(doc["engine"]["kv_window"], 37);
    // the report says what the KV figures count
    let report = dir.path().join("report");
    let (ok, _, err) = run_cli(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
        "--format",
        "md",
    ]);
    assert!(ok, "{err}");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("released the KV blocks that left its 37-token window"),
        "{md}"
    );
    // --keep-all-kv-blocks: the whole-pool rule again (the 16-block pool refuses the cell), and
    // in a pool that holds it the request keeps every block (48 of 4 at its end)
    let keep_all = ["--keep-all-kv-blocks", "--kv-blocks"];
    let (ok, _, err) = mistral(
        &[&keep_all[..], &["16"]].concat(),
        &dir.path().join("small.json"),
    );
    assert!(!ok);
    assert!(
        err.contains("need 48 KV blocks of 4, the pool has 16"),
        "{err}"
    );
    let kept = dir.path().join("kept.json");
    let (ok, _, err) = mistral(&[&keep_all[..], &["64"]].concat(), &kept);
    assert!(ok, "{err}");
    assert!(!err.contains("window are released"), "{err}");
    let doc = validate_results(&kept);
    assert!(doc["engine"]["kv_window"].is_null(), "{}", doc["engine"]);
    assert_eq!(doc["engine"]["keep_all_kv_blocks"], true);
    for p in doc["phases"].as_array().unwrap() {
        let peak = p["engine_summary"]["peak_kv_blocks_used"].as_u64().unwrap();
        assert!(peak >= 47, "peak {peak} blocks");
    }
    // a model with full-attention layers says nothing of the kind
    let (ok, _, err) = run(&[
        "--batch-size",
        "1",
        "--input-len",
        "8",
        "--output-len",
        "2",
        "--out",
        dir.path().join("llama.json").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(!err.contains("window are released"), "{err}");
    // without a window the same pool refuses the 190-token cell before running anything
    let (ok, _, err) = cell(
        "tiny-llama",
        &["--kv-blocks", "16"],
        &dir.path().join("refused.json"),
    );
    assert!(!ok);
    assert!(
        err.contains("need 48 KV blocks of 4, the pool has 16"),
        "{err}"
    );
}

/// The golden prompts as a workload file, replayed through the batching engine with a tiny token
/// budget and KV pool, give exactly HF's greedy continuations.
#[test]
fn workload_replay_reproduces_golden_greedy_under_batching() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let g = golden(name);
        let wl = dir.path().join(format!("{name}.jsonl"));
        let lines: Vec<String> = g
            .iter()
            .map(|p| {
                serde_json::json!({"prompt_ids": p.ids, "max_tokens": p.greedy.len()}).to_string()
            })
            .collect();
        std::fs::write(&wl, lines.join("\n") + "\n").unwrap();
        let longest = g
            .iter()
            .map(|p| p.ids.len() + p.greedy.len())
            .max()
            .unwrap();
        let model = model_dir(name);
        // room for the longest request alone and a little: one block per 4 tokens in each full
        // KV group, at most a window's and a chunk's in each sliding one
        let layout = infermeter::kv::KvLayout::for_model(&load_cpu(&model).config, false);
        let alone = infermeter::kv::blocks_held(&layout.windows(), 4, 7, longest.div_ceil(4));
        let kv_blocks = (alone + 3).to_string();
        let out = dir.path().join(format!("{name}.json"));
        let (ok, _, err) = run(&[
            "--model",
            model.to_str().unwrap(),
            "--workload",
            wl.to_str().unwrap(),
            "--temperature",
            "0",
            "--ignore-eos",
            "--save-output-ids",
            "--max-num-batched-tokens",
            "7",
            "--block-size",
            "4",
            "--kv-blocks",
            &kv_blocks,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{name}: {err}");
        let doc = validate_results(&out);
        let reqs = doc["phases"][0]["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), 4);
        for r in reqs {
            let i = r["id"].as_u64().unwrap() as usize;
            let ids: Vec<u32> = r["output_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, g[i].greedy, "{name} prompt{i}");
        }
        let steps = doc["phases"][0]["steps"].as_array().unwrap();
        assert!(steps.iter().all(|s| s["prefill_tokens"].as_u64().unwrap()
            + s["decode_tokens"].as_u64().unwrap()
            <= 7));
        // a hybrid's KV groups are in the results and on the start line
        let groups = doc["engine"]["kv_groups"].as_array().map_or(0, Vec::len);
        if layout.num_groups() > 1 {
            assert_eq!(groups, layout.num_groups(), "{name}");
            assert!(err.contains(&layout.describe()), "{name}: {err}");
        } else {
            assert_eq!(groups, 0, "{name}");
        }
    }
}

#[test]
fn stream_mode_saves_a_workload_that_replays_the_same_requests() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stream.json");
    let wl = dir.path().join("saved.jsonl");
    let (ok, _, err) = run(&[
        "--num-requests",
        "12",
        "--input-len",
        "uniform:3:40",
        "--output-len",
        "exp:6:12",
        "--rate",
        "400",
        "--arrival",
        "gamma:0.5",
        "--seed",
        "7",
        "--save-workload",
        wl.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = validate_results(&out);
    let reqs = doc["phases"][0]["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 12);
    let scheduled: Vec<f64> = reqs
        .iter()
        .map(|r| r["scheduled_s"].as_f64().unwrap())
        .collect();
    assert!(
        scheduled.iter().any(|&s| s > scheduled[0]),
        "arrivals are spread out"
    );
    let saved = infermeter::workload::read_jsonl(&wl).unwrap();
    assert_eq!(saved.len(), 12);
    let out2 = dir.path().join("replay.json");
    let (ok, _, err) = run(&[
        "--workload",
        wl.to_str().unwrap(),
        "--ignore-eos",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc2 = validate_results(&out2);
    let tokens = |d: &Value| -> Vec<(u64, u64, u64)> {
        let mut v: Vec<_> = d["phases"][0]["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_u64().unwrap(),
                    r["prompt_tokens"].as_u64().unwrap(),
                    r["output_tokens"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(tokens(&doc), tokens(&doc2));
}

#[test]
fn config_file_options_are_overridden_by_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        "batch_size = [2]\ninput_len = \"6\"\noutput_len = \"3\"\nwarmup = 0\nseed = 11\nno_prefix_caching = true\n",
    )
    .unwrap();
    let out = dir.path().join("cfg.json");
    let (ok, _, err) = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "--seed",
        "12",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = validate_results(&out);
    assert_eq!(doc["config"]["seed"], 12);
    assert_eq!(doc["config"]["batch_size"], serde_json::json!([2]));
    assert_eq!(doc["engine"]["enable_prefix_caching"], false);
    assert_eq!(doc["phases"].as_array().unwrap().len(), 1);
}

#[test]
fn bad_options_and_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let wl = dir.path().join("bad.jsonl");
    std::fs::write(
        &wl,
        "{\"prompt_ids\": [1,2], \"max_tokens\": 3}\n{\"prompt_ids\": [1], \"max_tokens\": 0}\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["--workload", wl.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad.jsonl:2"), "{err}");
    let (ok, _, err) = run(&["--num-requests", "3", "--input-len", "zipf:2"]);
    assert!(!ok);
    assert!(err.contains("--input-len") && err.contains("zipf"), "{err}");
    let (ok, _, err) = run(&["--kv-memory", "12 parsecs"]);
    assert!(!ok);
    assert!(err.contains("parsecs"), "{err}");
    let (ok, _, err) = run(&["--num-requests", "3", "--rate=-1"]);
    assert!(!ok);
    assert!(err.contains("rate"), "{err}");
    // grid cells that can never run are refused before anything is loaded or measured
    let (ok, _, err) = run(&[
        "--input-len",
        "300",
        "--output-len",
        "4",
        "--batch-size",
        "2",
    ]);
    assert!(!ok);
    assert!(
        err.contains(
            "--input-len 300 + --output-len 4 = 304 tokens exceeds tiny-llama's context of 256"
        ),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "--input-len",
        "20",
        "--output-len",
        "30",
        "--kv-blocks",
        "2",
        "--batch-size",
        "1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("need 4 KV blocks of 16, the pool has 2"),
        "{err}"
    );
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, err) = run(&["--workload", empty.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("nothing to run"), "{err}");
}

/// Stream lengths drawn past the context are cut to fit, and the run says how many.
#[test]
fn stream_lengths_cut_to_the_context_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.json");
    let (ok, _, err) = run(&[
        "--num-requests",
        "3",
        "--input-len",
        "300",
        "--output-len",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("3 of 3 requests drawn longer than the model's context"),
        "{err}"
    );
    let doc = validate_results(&out);
    assert_eq!(doc["phases"][0]["params"]["clamped_to_context"], 3);
}

/// A request that cannot run (longer than the context) is recorded as failed; the run goes on.
#[test]
fn a_bad_request_is_recorded_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let wl = dir.path().join("w.jsonl");
    let long: Vec<u32> = (0..300).map(|i| i % 100).collect();
    std::fs::write(
        &wl,
        format!(
            "{}\n{}\n",
            serde_json::json!({"prompt_ids": [1, 2, 3], "max_tokens": 4}),
            serde_json::json!({"prompt_ids": long, "max_tokens": 4})
        ),
    )
    .unwrap();
    let out = dir.path().join("w.json");
    let (ok, _, err) = run(&[
        "--workload",
        wl.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = validate_results(&out);
    let reqs = doc["phases"][0]["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 2);
    let failed: Vec<_> = reqs.iter().filter(|r| !r["error"].is_null()).collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["error"]
        .as_str()
        .unwrap()
        .contains("context of 256"));
    assert_eq!(doc["phases"][0]["summary"]["failed"], 1);
}

/// Killed mid-run, the results file is still a complete, valid document holding what was measured.
#[test]
fn an_interrupted_run_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed.json");
    let mut child = infermeter_cmd()
        .args([
            "run",
            "--no-progress",
            "--num-requests",
            "100000",
            "--rate",
            "300",
        ])
        .args([
            "--input-len",
            "8",
            "--output-len",
            "4",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait until at least one incremental save with records has happened
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let n = std::fs::read_to_string(&out)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map_or(0, |d| {
                d["phases"][0]["requests"].as_array().map_or(0, |r| r.len())
            });
        if n > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no records saved within 60 s"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let doc = validate_results(&out);
    assert_eq!(doc["complete"], false);
    let reqs = doc["phases"][0]["requests"].as_array().unwrap();
    assert!(!reqs.is_empty());
    assert!(reqs.iter().all(|r| r["output_tokens"] == 4));
}

/// The steady state (all slots busy: a grid cell's batch, a stream's --max-num-seqs) and goodput
/// with --slo are computed for the engine as for `load`; a stream that never fills its slots has no
/// steady state (null, not the whole-run figure).
#[test]
fn phases_have_a_steady_state_and_goodput() {
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("grid.json");
    let (ok, stdout, err) = run(&[
        "--batch-size",
        "1,3",
        "--input-len",
        "8",
        "--output-len",
        "5",
        "--warmup",
        "0",
        "--slo",
        "e2el=100s",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("steady o/s"), "{stdout}");
    let doc = validate_results(&grid);
    for p in doc["phases"].as_array().unwrap() {
        let s = &p["summary"];
        let steady = &s["steady_state"];
        let d = steady["duration_s"]
            .as_f64()
            .unwrap_or_else(|| panic!("{s}"));
        assert!(d > 0.0 && d <= s["throughput"]["duration_s"].as_f64().unwrap() + 1e-12);
        assert!(steady["output_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(s["slo"]["e2el_s"], 100.0);
        assert_eq!(
            s["goodput_requests_per_s"], s["throughput"]["requests_per_s"],
            "every request meets e2el=100s"
        );
    }

    for (seqs, has_steady) in [("2", true), ("64", false)] {
        let out = dir.path().join(format!("stream{seqs}.json"));
        let (ok, _, err) = run(&[
            "--num-requests",
            "6",
            "--input-len",
            "8",
            "--output-len",
            "4",
            "--max-num-seqs",
            seqs,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let doc = validate_results(&out);
        let s = &doc["phases"][0]["summary"];
        assert_eq!(!s["steady_state"].is_null(), has_steady, "{seqs}: {s}");
        assert!(
            s["goodput_requests_per_s"].is_null(),
            "no --slo: no goodput"
        );
    }
}

/// A LongRoPE model (tiny-phi3 under the longrope fixture's config) says at start which factors
/// it runs with: the long ones at its whole context, the short ones under `--max-model-len` of
/// the original context, which the results record as the context served; a grid cell past that
/// context is refused naming it.
#[test]
fn a_longrope_run_says_its_factors_and_max_model_len_caps_the_context() {
    let model = copy_model(&model_dir("tiny-phi3"));
    let cfg = read_config(&repo().join("tests/fixtures/tiny-phi3/longrope"));
    write_config(model.path(), &cfg);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("phi3.json");
    let cell = |extra: &[&str]| {
        let args = [
            &[
                "--model",
                model.path().to_str().unwrap(),
                "--batch-size",
                "2",
                "--input-len",
                "40",
                "--output-len",
                "8",
                "--out",
                out.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        run(&args)
    };
    let (ok, _, err) = cell(&[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("LongRoPE long factors: context 256 > original 72"),
        "{err}"
    );
    let (ok, _, err) = cell(&["--max-model-len", "72"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("LongRoPE short factors: context 72 within the original 72"),
        "{err}"
    );
    let doc = validate_results(&out);
    assert_eq!(doc["model"]["config"]["max_context"], 72);
    let (ok, _, err) = cell(&["--max-model-len", "47"]);
    assert!(!ok);
    assert!(
        err.contains("exceeds") && err.contains("context of 47"),
        "{err}"
    );
}
