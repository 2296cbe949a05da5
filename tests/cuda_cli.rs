//! The CUDA backend from the outside: the probe fails cleanly without a GPU (no panic), the
//! `--backend cuda` flag of every engine command gives the clear "no CUDA device: <reason>" message
//! there (and runs on a GPU), `info` reports GPUs and libraries, and the NVRTC path compiles every
//! kernel file to CUBIN for every dtype — the last needs only NVRTC, not a GPU (it runs here when
//! libnvrtc is on the loader path, e.g. `LD_LIBRARY_PATH=.venv-cuda/lib/python3*/site-packages/nvidia/cu13/lib`
//! and `--no-default-features --features cuda-13`; otherwise it prints `skipped: NVRTC not available: ...`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{infermeter_bin, model_dir};
use infermeter::backend::cuda::compile::{Compiler, Image, Target, KERNEL_FILES};
use infermeter::backend::cuda::{self, CudaBackend, CudaDtype};

fn gpu() -> bool {
    cuda::probe(false).usable()
}

#[test]
fn probe_and_open_fail_cleanly_without_a_gpu() {
    let p = cuda::probe(false);
    if p.usable() {
        assert!(!p.gpus.is_empty());
        println!("GPU present: {:?}", p.gpus);
        return;
    }
    let reason = p.error.clone().unwrap();
    assert!(reason.starts_with("no CUDA device: "), "{reason}");
    println!("skipped: {reason}");
    for e in [
        CudaBackend::<half::bf16>::new()
            .err()
            .map(|e| e.to_string()),
        CudaBackend::<half::f16>::new().err().map(|e| e.to_string()),
        CudaBackend::<f32>::new().err().map(|e| e.to_string()),
    ] {
        let e = e.expect("opening CUDA without a GPU must fail");
        assert!(e.starts_with("backend `cuda`: no CUDA device: "), "{e}");
    }
}

fn ids() -> &'static str {
    "1,2,3,4,5"
}

/// `infermeter run` on tiny-llama with `--backend backend`.
fn run_tiny_llama(backend: &str) -> Command {
    let mut cmd = Command::new(infermeter_bin());
    let dir = model_dir("tiny-llama");
    cmd.args([
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--backend",
        backend,
    ]);
    cmd
}

/// Run `cmd` (an `infermeter run` writing `results`), require success, and return the results file
/// as JSON with the command's stdout and stderr.
fn run_results(cmd: &mut Command, results: &Path) -> (serde_json::Value, String, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?}: {stderr}");
    let text = std::fs::read_to_string(results).unwrap();
    (serde_json::from_str(&text).unwrap(), stdout, stderr)
}

#[test]
fn backend_cuda_flag_gives_the_clear_message_or_runs() {
    let dir = model_dir("tiny-llama");
    let model = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("logits.safetensors");
    let results = tmp.path().join("run.json");
    let commands: Vec<Vec<String>> = vec![
        vec![
            "generate",
            "--model",
            model,
            "--ids",
            ids(),
            "--max-tokens",
            "4",
            "--json",
        ],
        vec![
            "logits",
            "--model",
            model,
            "--ids",
            ids(),
            "--out",
            out_file.to_str().unwrap(),
        ],
        vec![
            "run",
            "--model",
            model,
            "--batch-size",
            "2",
            "--input-len",
            "8",
            "--output-len",
            "4",
            "--warmup",
            "0",
            "--no-progress",
            "--out",
            results.to_str().unwrap(),
        ],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .collect();
    for dtype in ["bf16", "f16", "f32"] {
        for args in &commands {
            let out = Command::new(infermeter_bin())
                .args(args)
                .args(["--backend", "cuda", "--dtype", dtype])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if gpu() {
                assert!(
                    out.status.success(),
                    "{} on cuda {dtype}: {stderr}",
                    args[0]
                );
                if args[0] == "generate" {
                    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    assert_eq!(
                        (j["backend"].as_str(), j["dtype"].as_str()),
                        (Some("cuda"), Some(dtype))
                    );
                }
                if args[0] == "run" {
                    let j: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
                    assert_eq!(j["model"]["backend"], "cuda");
                    assert_eq!(j["model"]["dtype"], dtype);
                    assert!(
                        stderr.contains("GPU memory:"),
                        "the memory plan is reported: {stderr}"
                    );
                }
            } else {
                assert!(
                    !out.status.success(),
                    "{} --backend cuda without a GPU must fail",
                    args[0]
                );
                assert!(
                    stderr.contains("no CUDA device: "),
                    "{} --backend cuda: unclear message: {stderr}",
                    args[0]
                );
                assert!(!stderr.contains("panicked"), "{stderr}");
            }
        }
    }
}

#[test]
fn auto_picks_cuda_exactly_when_usable() {
    let dir = model_dir("tiny-llama");
    let out = Command::new(infermeter_bin())
        .args(["generate", "--model", dir.to_str().unwrap(), "--ids", ids()])
        .args(["--max-tokens", "3", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = if gpu() { "cuda" } else { "cpu" };
    assert_eq!(j["backend"], want);
}

#[test]
fn info_reports_gpus_and_libraries() {
    let out = Command::new(infermeter_bin()).arg("info").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CUDA libs: NVRTC"), "{text}");
    if gpu() {
        assert!(
            text.contains("GPU 0:") && text.contains("compute capability"),
            "{text}"
        );
    } else {
        assert!(text.contains("GPUs:     none"), "{text}");
        assert!(
            text.contains("cuda:     unavailable: no CUDA device: "),
            "{text}"
        );
    }
    let out = Command::new(infermeter_bin())
        .args(["info", "--json"])
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["cuda"]["build_api"].is_string(), "{j}");
    assert!(j["cuda"]["nvrtc"]["loads"].is_boolean(), "{j}");
    if gpu() {
        // the UUID telemetry finds the engine's GPU by, in NVML's spelling
        let uuid = j["cuda"]["gpus"][0]["uuid"].as_str().unwrap_or_default();
        let groups: Vec<usize> = uuid
            .strip_prefix("GPU-")
            .unwrap_or_default()
            .split('-')
            .map(|g| {
                let hex = g
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
                if hex {
                    g.len()
                } else {
                    0
                }
            })
            .collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "uuid {uuid:?} in {j}");
        assert!(text.contains(&format!("({uuid})")), "{text}");
    }
}

/// The run-time compile path itself (in-memory headers, include folder discovery, CUBIN extraction,
/// the cache), for every kernel file and dtype. Needs NVRTC and its fp16/bf16 headers, no GPU.
#[test]
fn nvrtc_compiles_every_kernel_file_to_cubin() {
    let cache = tempfile::tempdir().unwrap();
    let c = match Compiler::new(Some(cache.path().to_path_buf())) {
        Ok(c) => c,
        Err(e) => {
            println!("skipped: NVRTC not available: {e}");
            return;
        }
    };
    println!(
        "NVRTC {} (archs {:?}); include {:?}",
        c.version_string(),
        c.supported_archs,
        c.include_dirs
    );
    let archs: Vec<u32> = [80u32, 90]
        .into_iter()
        .filter(|a| c.supported_archs.is_empty() || c.supported_archs.contains(a))
        .collect();
    assert!(
        !archs.is_empty(),
        "this NVRTC supports neither sm_80 nor sm_90"
    );
    fn dtypes() -> [(&'static str, u32); 3] {
        [
            (half::bf16::NAME, half::bf16::DTYPE_ID),
            (half::f16::NAME, half::f16::DTYPE_ID),
            (<f32 as CudaDtype>::NAME, <f32 as CudaDtype>::DTYPE_ID),
        ]
    }
    // two threads: NVRTC compiles are independent
    let jobs: Vec<_> = archs
        .iter()
        .flat_map(|&a| dtypes().into_iter().map(move |d| (a, d)))
        .flat_map(|(a, d)| KERNEL_FILES.iter().map(move |f| (a, d, f)))
        .collect();
    let (left, right) = jobs.split_at(jobs.len() / 2);
    std::thread::scope(|s| {
        for half_jobs in [left, right] {
            let c = &c;
            s.spawn(move || {
                for &(arch, (dtype, id), file) in half_jobs {
                    let what = format!("{} {dtype} sm_{arch}", file.name);
                    let out = c
                        .compile(file, dtype, id, Target::Cubin(arch))
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(!out.from_cache, "{what}: fresh cache");
                    assert!(out.log.is_empty(), "{what}: NVRTC warnings:\n{}", out.log);
                    match &out.image {
                        Image::Cubin(b) => assert!(b.starts_with(b"\x7fELF"), "{what}: not ELF"),
                        Image::Ptx(_) => panic!("{what}: PTX instead of CUBIN"),
                    }
                    // second time: from the cache, the same bytes
                    let again = c.compile(file, dtype, id, Target::Cubin(arch)).unwrap();
                    assert!(
                        again.from_cache && again.image == out.image,
                        "{what}: cache"
                    );
                }
            });
        }
    });
    // PTX for the driver to JIT (a device newer than this NVRTC)
    let (dtype, id) = dtypes()[0];
    let ptx = c
        .compile(&KERNEL_FILES[0], dtype, id, Target::Ptx(archs[0]))
        .unwrap();
    assert!(matches!(&ptx.image, Image::Ptx(s) if s.contains(".entry gelu_new")));
    let files = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(files, jobs.len() + 1, "one cache entry per compile");
}

/// `serve --backend cuda`: without a GPU the server does not start and says why; on a GPU it serves
/// a greedy completion equal to `generate --backend cuda` (both one request alone, so the same
/// kernels see the same shapes).
#[test]
fn serve_on_cuda_or_the_clear_message() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = model_dir("tiny-llama");
    let model = dir.to_str().unwrap();
    let mut child = Command::new(infermeter_bin())
        .args([
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--backend",
            "cuda",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    if !gpu() {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            !status.success(),
            "serve --backend cuda without a GPU must fail"
        );
        assert!(stderr.contains("no CUDA device: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        return;
    }
    let addr = first
        .trim()
        .strip_prefix("http://")
        .expect("the first line is the address")
        .to_string();
    let body = format!(
        r#"{{"prompt": [{}], "max_tokens": 12, "temperature": 0, "ignore_eos": true, "return_token_ids": true}}"#,
        ids()
    );
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let json = &resp[resp.find("\r\n\r\n").expect("HTTP response") + 4..];
    let j: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {resp}"));
    let served: Vec<u64> = j["choices"][0]["token_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{j}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let out = Command::new(infermeter_bin())
        .args(["generate", "--model", model, "--ids", ids()])
        .args([
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
        ])
        .args(["--backend", "cuda"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let generated: Vec<u64> = g["output_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{g}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(served, generated);
}

/// `run` records whether decode steps were replayed from CUDA graphs: on the CPU never (no
/// `graphs` in the phases, `--no-cuda-graphs` accepted and changing nothing); on a GPU, replays in
/// every measured phase with graphs on, none with `--no-cuda-graphs`.
#[test]
fn run_records_cuda_graphs() {
    let tmp = tempfile::tempdir().unwrap();
    let backends: &[&str] = if gpu() { &["cpu", "cuda"] } else { &["cpu"] };
    for backend in backends {
        for graphs_off in [false, true] {
            let results = tmp.path().join(format!("run-{backend}-{graphs_off}.json"));
            let mut cmd = run_tiny_llama(backend);
            cmd.args([
                "--batch-size",
                "1,3",
                "--input-len",
                "8",
                "--output-len",
                "12",
            ])
            .args(["--warmup", "1", "--no-progress", "--out"])
            .arg(&results);
            if graphs_off {
                cmd.arg("--no-cuda-graphs");
            }
            let (j, stdout, _) = run_results(&mut cmd, &results);
            let on = *backend == "cuda" && !graphs_off;
            assert_eq!(j["engine"]["cuda_graphs"], on, "{backend} {graphs_off}");
            let phases = j["phases"].as_array().unwrap();
            let measured: Vec<_> = phases.iter().filter(|p| p["warmup"] == false).collect();
            assert_eq!(measured.len(), 2);
            for p in measured {
                let g = &p["graphs"];
                match *backend {
                    "cpu" => assert!(g.is_null(), "the CPU records no graphs: {g}"),
                    _ => {
                        let steps = p["engine_summary"]["steps"].as_u64().unwrap();
                        let replayed = g["replayed"].as_u64().unwrap();
                        assert!(g["disabled_reason"].is_null(), "{g}");
                        if on {
                            // 12 output tokens: 11 decode steps per request batch, the first of
                            // a key recorded (eager), the rest replayed
                            assert!(replayed > 0 && replayed < steps, "{g} of {steps} steps");
                            assert!(stdout.contains("CUDA graphs: "), "{stdout}");
                        } else {
                            assert_eq!(replayed, 0, "{g}");
                            assert_eq!(g["eager"].as_u64(), Some(steps), "{g}");
                        }
                    }
                }
            }
        }
    }
}

/// A step ends when the device has done its work, prefill chunks that sample no token included:
/// their records' times are what `run` attributes to prefill and decode. On the emulated CUDA stack
/// (scripts/emulate-cuda), where device work runs only when the host waits for it, every kernel and
/// GEMM is given 2 ms of device time: a step that returned without waiting would last about its
/// launches' issue time, one that waited at least its ~25 launches' device time. On a GPU the
/// durations are not checked (they are microseconds there), the run and its step records are.
#[test]
fn every_step_waits_for_its_device_work() {
    if !gpu() {
        return; // the CPU computes on the calling thread: nothing to wait for
    }
    let emulated = cuda::probe(false)
        .gpus
        .first()
        .is_some_and(|g| g.name.contains("Emulated"));
    const KERNEL_US: u64 = 2000;
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("run.json");
    // a 100-token prompt in chunks of 32: three steps that sample nothing, then the last chunk's
    // step, then decode steps (the second and later replayed from a graph)
    let mut cmd = run_tiny_llama("cuda");
    cmd.args([
        "--batch-size",
        "1",
        "--input-len",
        "100",
        "--output-len",
        "4",
    ])
    .args(["--max-num-batched-tokens", "32", "--warmup", "0"])
    .args(["--no-progress", "--no-telemetry", "--out"])
    .arg(&results)
    .env("FAKE_CUDA_KERNEL_US", KERNEL_US.to_string());
    let (j, _, _) = run_results(&mut cmd, &results);
    let steps = j["phases"][0]["steps"].as_array().unwrap();
    let prefill: Vec<u64> = steps
        .iter()
        .map(|s| s["prefill_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(prefill, [32, 32, 32, 4, 0, 0, 0], "{steps:?}");
    if !emulated {
        return;
    }
    // tiny-llama issues ~25 kernels and GEMMs a step (2 layers of 10, embedding, final norm,
    // gather, LM head, pick): at least 20 of them is 40 ms of device time; counted at half
    let least_s = 20.0 * KERNEL_US as f64 * 1e-6 / 2.0;
    for s in steps {
        let d = s["end_s"].as_f64().unwrap() - s["start_s"].as_f64().unwrap();
        assert!(
            d >= least_s,
            "step {} ({} prefill tokens) lasted {:.1} ms, less than its device work (>= {:.0} ms): \
             it ended without waiting for the device",
            s["index"],
            s["prefill_tokens"],
            d * 1e3,
            least_s * 1e3
        );
    }
}

/// `--attention` (env INFERMETER_ATTENTION) is checked when parsed, and the variant a run used is in
/// its results file; on a GPU `auto` runs and is named in the backend line.
#[test]
fn attention_flag_is_validated_and_recorded() {
    let dir = model_dir("tiny-llama");
    let out = Command::new(infermeter_bin())
        .args(["generate", "--model", dir.to_str().unwrap(), "--ids", ids()])
        .args(["--max-tokens", "2", "--attention", "bogus"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--attention") && stderr.contains("unknown attention variant `bogus`"),
        "{stderr}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let backend = if gpu() { "cuda" } else { "cpu" };
    let results = tmp.path().join("run.json");
    let mut cmd = run_tiny_llama(backend);
    cmd.args(["--batch-size", "2", "--input-len", "8", "--output-len", "4"])
        .args(["--warmup", "0", "--no-progress", "--out"])
        .arg(&results)
        .env("INFERMETER_ATTENTION", "auto");
    let (j, _, stderr) = run_results(&mut cmd, &results);
    assert_eq!(j["config"]["attention"], "auto", "{}", j["config"]);
    if backend == "cuda" {
        assert!(stderr.contains("attention auto"), "{stderr}");
    }
}

/// `kernels --backend cuda` studies every attention case once per variant and the decode step
/// twice, `eager` and replayed from a CUDA `graphs`, each row with its speed-up over the baseline
/// of its op (the baseline's own row gives 1). Without a GPU: the clear message.
#[test]
fn kernel_studies_time_each_variant_on_a_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("kernels.json");
    let out = Command::new(infermeter_bin())
        .args(["kernels", "--backend", "cuda", "--shapes", "tiny-llama"])
        .args(["--op", "attention_decode,decode_step"])
        .args([
            "--runs",
            "3",
            "--warmup",
            "1",
            "--min-run-ms",
            "0.2",
            "--out",
        ])
        .arg(&results)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !gpu() {
        assert!(!out.status.success());
        assert!(stderr.contains("no CUDA device: "), "{stderr}");
        println!("skipped: no CUDA device");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let doc = common::validate_results(&results);
    assert!(doc["skipped"].as_array().unwrap().is_empty(), "{doc}");
    let rows = doc["rows"].as_array().unwrap();
    let variants = |op: &str| -> Vec<(String, f64)> {
        rows.iter()
            .filter(|r| r["op"] == op)
            .map(|r| {
                let v = r["variant"].as_str().unwrap().to_string();
                (v, r["speedup_over_baseline"].as_f64().unwrap())
            })
            .collect()
    };
    let step = variants("decode_step");
    let names: Vec<&str> = step.iter().map(|(v, _)| v.as_str()).collect();
    // the sweep's decode-step shapes, each eager then graphs
    assert!(!names.is_empty() && names.len() % 2 == 0, "{names:?}");
    for pair in step.chunks(2) {
        assert_eq!(
            (pair[0].0.as_str(), pair[1].0.as_str()),
            ("eager", "graphs")
        );
        assert_eq!(pair[0].1, 1.0);
        assert!(pair[1].1 > 0.0);
    }
    let decode = variants("attention_decode");
    assert!(decode.iter().any(|(v, _)| v == "naive"), "{decode:?}");
    assert!(decode.iter().any(|(v, _)| v == "auto-1split"), "{decode:?}");
    assert!(stdout.contains("vs base"), "{stdout}");
    assert!(stdout.contains("speed-up over the baseline"), "{stdout}");
}
