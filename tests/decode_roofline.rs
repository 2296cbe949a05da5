//! `scripts/gpu/decode_roofline.py` (the GPU session's decode-vs-roofline table) over the checked-in
//! CPU results: its figures against the same formula computed here from the same files, and a
//! clear error for a file missing a field. Needs python3 (CI has it; without it the test prints
//! why and skips unless INFERMETER_REQUIRE_EXTERNAL=1).

mod common;
mod external;

use std::process::Command;

use common::repo;

fn python3_or_skip(test: &str) -> bool {
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            external::skip_or_fail(test, &format!("python3 --version failed: {}", o.status));
            false
        }
        Err(e) => {
            external::skip_or_fail(test, &format!("python3 not found: {e}"));
            false
        }
    }
}

fn script() -> std::path::PathBuf {
    repo().join("scripts/gpu/decode_roofline.py")
}

fn read(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn roofline_rows_follow_the_formula() {
    if !python3_or_skip("roofline_rows_follow_the_formula") {
        return;
    }
    let kernels = repo().join("results/cpu/kernels-cpu.json");
    let run = repo().join("results/cpu/run-llama-3.2-1b.json");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("roofline.json");
    let o = Command::new("python3")
        .arg(script())
        .arg("--kernels")
        .arg(&kernels)
        .arg(format!("--run=f32={}", run.display()))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("| f32 | 1 | 32/32 | off |"), "{stdout}");

    // the same figures from the same files, computed here
    let k = read(&kernels);
    let r = read(&run);
    let bw = k["ceilings"]["memory_gb_s"].as_f64().unwrap() * 1e9;
    let flops = k["ceilings"]["compute_gflop_s"].as_f64().unwrap() * 1e9;
    let cfg = &r["model"]["config"];
    let u = |v: &serde_json::Value| v.as_f64().unwrap();
    assert_eq!(r["model"]["dtype"], "f32");
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap();
    let params = u(&r["model"]["num_parameters"])
        - if tied {
            0.0
        } else {
            u(&cfg["vocab_size"]) * u(&cfg["hidden_size"])
        };
    let kv_per_token =
        2.0 * u(&cfg["num_layers"]) * u(&cfg["num_kv_heads"]) * u(&cfg["head_dim"]) * 4.0;
    let attn = 4.0 * u(&cfg["num_layers"]) * u(&cfg["num_heads"]) * u(&cfg["head_dim"]);
    let doc = read(&out);
    let rows = doc["rows"].as_array().unwrap();
    let measured: Vec<_> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["warmup"] == false)
        .collect();
    assert_eq!(rows.len(), measured.len());
    for (row, p) in rows.iter().zip(measured) {
        let b = u(&p["params"]["batch_size"]);
        let ctx = u(&p["params"]["input_len"]) + u(&p["params"]["output_len"]) / 2.0;
        let bytes = params * 4.0 + b * ctx * kv_per_token;
        let step_flops = b * (2.0 * params + attn * ctx);
        let roof = b / (bytes / bw).max(step_flops / flops);
        let achieved = u(&p["engine_summary"]["decode_tokens_per_s"]);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(close(u(&row["roofline_tokens_per_s"]), roof), "{row}");
        assert!(
            close(u(&row["pct_of_roofline"]), 100.0 * achieved / roof),
            "{row}"
        );
        // the clients' rate: batch / mean TPOT
        let client = b / u(&p["summary"]["latency"]["tpot"]["mean"]);
        assert!(close(u(&row["tpot_tokens_per_s"]), client), "{row}");
        assert!(
            close(u(&row["tpot_pct_of_roofline"]), 100.0 * client / roof),
            "{row}"
        );
        let bound = if bytes / bw >= step_flops / flops {
            "memory"
        } else {
            "compute"
        };
        assert_eq!(row["bound"], bound, "{row}");
    }
    // batch-1 decode of a 1B model is memory-bound
    assert_eq!(rows[0]["batch_size"], 1);
    assert_eq!(rows[0]["bound"], "memory");
}

#[test]
fn a_file_missing_a_field_is_named() {
    if !python3_or_skip("a_file_missing_a_field_is_named") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let kernels = tmp.path().join("kernels.json");
    std::fs::write(&kernels, r#"{"ceilings": {"memory_gb_s": 100.0}}"#).unwrap();
    let run = repo().join("results/cpu/run-tiny-llama.json");
    let o = Command::new("python3")
        .arg(script())
        .arg("--kernels")
        .arg(&kernels)
        .arg(format!("--run=x={}", run.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("kernels.json") && stderr.contains("ceilings.compute_gflop_s"),
        "{stderr}"
    );
    let o = Command::new("python3")
        .arg(script())
        .arg("--kernels")
        .arg(repo().join("results/cpu/kernels-cpu.json"))
        .arg("--run=no-equals-sign")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("LABEL=FILE"), "{stderr}");
}
