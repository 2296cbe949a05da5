//! `infermeter run` with telemetry: the results' `telemetry` section and per-phase `energy` validate
//! against the schema; missing NVML and RAPL are recorded with their reasons; a RAPL tree driven at
//! a known power gives that energy per phase; cost and emissions follow the options; `info` reports
//! power limits and RAPL status.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn run(args: &[&str]) -> (bool, String, String) {
    run_cli(&[&["run", "--no-progress"], args].concat())
}

fn no_nvidia_driver() -> bool {
    !Path::new("/dev/nvidiactl").exists()
}

#[test]
fn missing_nvml_and_rapl_are_recorded_and_cost_still_computed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let (ok, stdout, err) = run(&[
        "--batch-size",
        "2",
        "--input-len",
        "12",
        "--output-len",
        "6",
        "--powercap-root",
        "/nonexistent/powercap",
        "--gpu-price",
        "2.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = validate_results(&out);
    let t = &doc["telemetry"];
    let sources = t["sources"].as_array().unwrap();
    let by = |name: &str| sources.iter().find(|s| s["source"] == name).unwrap();
    if no_nvidia_driver() {
        let nvml = by("nvml");
        assert_eq!(nvml["available"], false);
        let why = nvml["reason"].as_str().unwrap();
        assert!(why.contains("libnvidia-ml"), "{why}");
        assert!(err.contains("nvml unavailable"), "{err}");
    }
    let rapl = by("rapl");
    assert_eq!(rapl["available"], false);
    assert!(rapl["reason"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/powercap"));
    assert_eq!(by("host")["available"], true);
    // the timeline has the host channels, on the run's clock
    let tl = &t["timeline"];
    assert!(tl["samples"].as_u64().unwrap() >= 2);
    assert!(tl["sampler"]["cpu_fraction_of_one_core"].is_number());
    if no_nvidia_driver() {
        // no energy device, but time-based cost per phase
        assert_eq!(t["energy_devices"], serde_json::json!([]));
        for p in doc["phases"].as_array().unwrap() {
            let e = &p["energy"];
            assert!(e["energy"].is_null());
            let c = &e["cost"];
            assert_eq!(c["usd_per_gpu_hour"], 2.5);
            assert_eq!(c["num_gpus"], 1.0);
            let split = &e["time_split"];
            let prefill_s = split["prefill_s"].as_f64().unwrap();
            let input = e["work"]["input_tokens"].as_f64().unwrap();
            assert_eq!(input, 24.0);
            let want = 2.5 * prefill_s / 3600.0 / input * 1e6;
            let got = c["usd_per_1m_input_tokens"].as_f64().unwrap();
            assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
        }
        assert!(stdout.contains("$/1M in"), "{stdout}");
    }
}

/// A fake powercap tree whose counters a thread advances at 40 W (package) and 8 W (DRAM): each
/// phase's energy is 48 W × its duration, by the counter method, and the J/token columns print.
#[test]
fn energy_per_phase_from_a_rapl_tree_at_known_power() {
    let dir = tempfile::tempdir().unwrap();
    let pc = dir.path().join("powercap");
    let max = 1u64 << 40;
    infermeter::telemetry::rapl::write_fake_powercap(&pc, 0, 0, max).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pc, stop) = (pc.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            // In place (the source keeps the file open, so a renamed file would go unseen) and at a
            // fixed width without truncating: a truncate-then-write would let the source read an
            // empty file now and then.
            let open = |zone: &str| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(pc.join(zone).join("energy_uj"))
                    .unwrap()
            };
            let (package, dram) = (open("intel-rapl:0"), open("intel-rapl:0:1"));
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let t = t0.elapsed().as_secs_f64();
                // µJ
                let _ = package
                    .write_all_at(format!("{:020}\n", (40.0 * t * 1e6) as u64).as_bytes(), 0);
                let _ =
                    dram.write_all_at(format!("{:020}\n", (8.0 * t * 1e6) as u64).as_bytes(), 0);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let out = dir.path().join("r.json");
    let (ok, stdout, err) = run(&[
        "--num-requests",
        "20",
        "--input-len",
        "24",
        "--output-len",
        "12",
        "--rate",
        "20",
        "--arrival",
        "constant",
        "--max-num-seqs",
        "1",
        "--powercap-root",
        pc.to_str().unwrap(),
        "--gpus",
        "0",
        "--grid-intensity",
        "400",
        "--sample-interval",
        "10ms",
        "--out",
        out.to_str().unwrap(),
    ]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(ok, "{err}");
    let doc = validate_results(&out);
    let t = &doc["telemetry"];
    if no_nvidia_driver() {
        assert_eq!(
            t["energy_devices"],
            serde_json::json!(["cpu-package0", "cpu-dram0"])
        );
    } else {
        return; // a real GPU is in scope then
    }
    let p = &doc["phases"][0];
    let e = &p["energy"];
    let m = &e["energy"];
    assert_eq!(m["method"], "counter");
    let dur = e["duration_s"].as_f64().unwrap();
    assert!(dur > 0.2, "{dur}");
    let j = m["energy_j"].as_f64().unwrap();
    // The fake counter advances only while the writer thread runs: on a loaded machine it can be
    // descheduled for tens of milliseconds at a phase edge. A ~1 s phase keeps that under 10%.
    assert!(
        (j - 48.0 * dur).abs() < 0.10 * 48.0 * dur,
        "{j} J over {dur} s"
    );
    let split_sum = m["prefill_j"].as_f64().unwrap()
        + m["decode_j"].as_f64().unwrap()
        + m["idle_j"].as_f64().unwrap();
    assert!((split_sum - j).abs() < 1e-6 * j);
    let out_tokens = e["work"]["output_tokens"].as_f64().unwrap();
    assert_eq!(out_tokens, 240.0);
    let jpo = m["j_per_output_token"].as_f64().unwrap();
    assert!((jpo - m["decode_j"].as_f64().unwrap() / 240.0).abs() < 1e-9);
    assert_eq!(m["devices"].as_array().unwrap().len(), 2);
    assert!(m["peak_power_w"].as_f64().unwrap() > 30.0);
    assert_eq!(m["peak_memory_of"], "host process_rss");
    let em = &e["emissions"];
    assert!((em["g_co2e"].as_f64().unwrap() - 400.0 * j / 3.6e6).abs() < 1e-9);
    // the run-level energy is the phase's (one measured phase)
    assert_eq!(t["energy"]["energy"]["energy_j"], m["energy_j"]);
    // The steady state (one slot busy): its own window, energy at the same 48 W, and the work the
    // steady-state throughput attributes to it.
    let st = &e["steady_state"];
    let sd = st["duration_s"].as_f64().unwrap_or_else(|| panic!("{e}"));
    let summary_steady = &p["summary"]["steady_state"];
    assert!((sd - summary_steady["duration_s"].as_f64().unwrap()).abs() < 1e-9);
    assert!(sd > 0.0 && sd <= dur + 1e-9, "{sd} of {dur}");
    let sj = st["energy"]["energy_j"].as_f64().unwrap();
    assert!(
        (sj - 48.0 * sd).abs() < 0.10 * 48.0 * sd,
        "{sj} J over {sd} s"
    );
    let sw = &st["work"];
    let want_out = summary_steady["output_tokens_per_s"].as_f64().unwrap() * sd;
    assert!((sw["output_tokens"].as_f64().unwrap() - want_out).abs() < 1e-6 * want_out);
    let tokens = sw["input_tokens"].as_f64().unwrap() + sw["output_tokens"].as_f64().unwrap();
    let tpj = st["energy"]["tokens_per_j"].as_f64().unwrap();
    assert!((tpj - tokens / sj).abs() < 1e-9 * tpj);
    assert!(t["energy"]["steady_state"]["energy"]["energy_j"].is_number());
    assert!(stdout.contains("decode J/out"), "{stdout}");
    assert!(stdout.contains("steady tok/J"), "{stdout}");
    assert!(stdout.contains("energy counter"), "{stdout}");
}

#[test]
fn no_telemetry_and_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let (ok, _, err) = run(&[
        "--batch-size",
        "1",
        "--input-len",
        "8",
        "--output-len",
        "4",
        "--warmup",
        "0",
        "--no-telemetry",
        "--gpu-price",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = validate_results(&out);
    assert!(doc["telemetry"]["timeline"].is_null());
    assert_eq!(doc["telemetry"]["sources"], serde_json::json!([]));
    assert!(doc["phases"][0]["energy"]["cost"]["total_usd"].is_number());
    for (args, needle) in [
        (vec!["--sample-interval", "0.1ms"], "--sample-interval"),
        (vec!["--gpus", "0,x"], "--gpus"),
        (vec!["--gpu-price=-1"], "--gpu-price"),
        (vec!["--energy-scope", "moon"], "--energy-scope"),
        (vec!["--num-gpus", "0"], "--num-gpus"),
    ] {
        let (ok, _, err) = run(&args);
        assert!(!ok, "{args:?} accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn info_reports_gpu_power_and_rapl_status() {
    let out = infermeter_cmd()
        .args(["info", "--json", "--powercap-root", "/nonexistent/powercap"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &doc["telemetry"];
    assert_eq!(t["rapl"]["available"], false);
    assert!(t["rapl"]["reason"]
        .as_str()
        .unwrap()
        .contains("/nonexistent"));
    if no_nvidia_driver() {
        assert_eq!(t["nvml"]["available"], false);
        assert!(t["gpus"].as_array().unwrap().is_empty());
    }
    let text = infermeter_cmd()
        .args(["info", "--powercap-root", "/nonexistent/powercap"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.contains("RAPL:") && s.contains("NVML:"), "{s}");
}
