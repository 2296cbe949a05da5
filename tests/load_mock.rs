//! `infermeter load` against the mock server on loopback: the client's timing and token accounting,
//! every error mode recorded per request while the run goes on, open and closed loops, warmup,
//! concurrency caps, multi-turn replay, cancellation, and the CLI end to end (results files that
//! validate against the schema, sweeps, calibration, Ctrl-C).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use infermeter::client::executor::{LiveRecords, Mode, Runner, StepOutcome, StepPlan, Warmup};
use infermeter::client::{ClientOptions, Endpoint, OpenAiClient};
use infermeter::mock::{ErrorMode, MockConfig, MockHandle};
use infermeter::report::load_results::{LoadRequestRecord, TokenSource};
use infermeter::workload::session::{Session, Turn, TurnInput};
use infermeter::workload::Arrival;
use serde_json::Value;
use tokio::sync::watch;

fn mock(cfg: MockConfig) -> MockHandle {
    MockHandle::spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), cfg, 1).expect("mock starts")
}

fn ids_session(n: u32, max_tokens: usize) -> Session {
    Session {
        system: None,
        turns: vec![Turn {
            input: TurnInput::Ids((1..=n).collect()),
            max_tokens,
            input_tokens: Some(n as usize),
        }],
    }
}

fn text_session(text: &str, max_tokens: usize) -> Session {
    Session {
        system: None,
        turns: vec![Turn {
            input: TurnInput::Text(text.into()),
            max_tokens,
            input_tokens: None,
        }],
    }
}

struct Setup {
    opts: ClientOptions,
    sessions: Vec<Session>,
}

impl Setup {
    fn new(url: &str, endpoint: Endpoint) -> Self {
        let mut opts = ClientOptions::new(url, endpoint);
        opts.request_timeout = Duration::from_secs(20);
        opts.idle_timeout = Duration::from_secs(10);
        opts.connect_timeout = Duration::from_secs(2);
        Setup {
            opts,
            sessions: vec![ids_session(8, 5)],
        }
    }

    fn runner(self, cancel: watch::Receiver<bool>) -> Arc<Runner> {
        let client = OpenAiClient::new(self.opts).unwrap();
        Arc::new(Runner::new(client, self.sessions, Instant::now(), cancel, None, true).unwrap())
    }
}

fn open(rate: f64, arrival: Arrival, n: usize) -> StepPlan {
    StepPlan {
        mode: Mode::Open {
            rate,
            arrival,
            max_concurrency: None,
        },
        num_requests: Some(n),
        duration: None,
        warmup: Warmup::None,
        seed: 1,
        ramp_up: None,
    }
}

fn closed(c: usize, n: usize) -> StepPlan {
    StepPlan {
        mode: Mode::Closed { concurrency: c },
        num_requests: Some(n),
        duration: None,
        warmup: Warmup::None,
        seed: 1,
        ramp_up: None,
    }
}

fn no_cancel() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    std::mem::forget(tx); // never cancelled
    rx
}

async fn step(runner: &Arc<Runner>, plan: &StepPlan) -> StepOutcome {
    let live = Arc::new(Mutex::new(LiveRecords::default()));
    runner.run_step(plan, live).await.expect("step runs")
}

fn assert_ok(r: &LoadRequestRecord) {
    assert!(r.record.is_ok(), "request failed: {:?}", r.record.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_completions_are_timed_and_counted() {
    let m = mock(MockConfig {
        ttft: Duration::from_millis(30),
        itl: Duration::from_millis(5),
        sse_comments: true,
        ..MockConfig::default()
    });
    let runner = Setup::new(&m.url(), Endpoint::Completions).runner(no_cancel());
    let out = step(&runner, &open(200.0, Arrival::Constant, 20)).await;
    assert_eq!(out.measured.len(), 20);
    assert_eq!((out.sent, out.cancelled, out.interrupted), (20, 0, false));
    for r in &out.measured {
        assert_ok(r);
        let rec = &r.record;
        assert_eq!(rec.chunk_times_s.len(), 5, "one content chunk per token");
        assert_eq!((rec.output_tokens, rec.prompt_tokens), (5, 8));
        assert_eq!(r.output_tokens_source, TokenSource::Usage);
        assert_eq!(r.usage_output_tokens, Some(5));
        assert!(rec.send_s >= rec.scheduled_s);
        // The mock cannot answer before its configured time (measured on this same clock).
        assert!(rec.ttft().unwrap() >= 0.030, "ttft {:?}", rec.ttft());
        assert!(rec.itls().iter().all(|&g| g >= 0.0));
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert_eq!(r.text.as_deref(), Some(" lorem ipsum dolor sit amet"));
        assert!(rec.end_s.unwrap() >= *rec.chunk_times_s.last().unwrap());
    }
    // Constant arrivals at 200/s: scheduled 5 ms apart from the step start.
    let s0 = out.measured[0].record.scheduled_s;
    for (i, r) in out.measured.iter().enumerate() {
        assert!((r.record.scheduled_s - s0 - i as f64 * 0.005).abs() < 1e-9);
    }
    assert_eq!(
        runner.server_model.lock().unwrap().as_deref(),
        Some("infermeter-mock")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_role_chunk_is_not_a_token_and_non_streaming_works() {
    let m = mock(MockConfig {
        ttft: Duration::from_millis(10),
        itl: Duration::from_millis(2),
        ..MockConfig::default()
    });
    let mut s = Setup::new(&m.url(), Endpoint::Chat);
    s.sessions = vec![text_session("say hi to me", 3)];
    let runner = s.runner(no_cancel());
    let out = step(&runner, &closed(2, 6)).await;
    assert_eq!(out.measured.len(), 6);
    for r in &out.measured {
        assert_ok(r);
        assert_eq!(r.record.chunk_times_s.len(), 3);
        assert_eq!(r.record.prompt_tokens, 4, "the mock counts words");
        assert!(r.record.ttft().unwrap() >= 0.010);
    }
    // Non-streaming: one chunk at the end, counts from usage.
    let mut s = Setup::new(&m.url(), Endpoint::Completions);
    s.opts.stream = false;
    let runner = s.runner(no_cancel());
    let out = step(&runner, &closed(1, 3)).await;
    for r in &out.measured {
        assert_ok(r);
        assert_eq!(r.record.chunk_times_s.len(), 1);
        assert_eq!(r.record.output_tokens, 5);
        assert!(r.record.e2el().unwrap() >= 0.010 + 4.0 * 0.002);
    }
}

/// Every error mode, alone and mixed, is recorded per request with its class, and every request is
/// recorded: the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_mode_is_recorded_and_the_run_goes_on() {
    let cases: [(ErrorMode, &str); 7] = [
        (ErrorMode::Http(500), "http_500"),
        (ErrorMode::Http(429), "http_429"),
        (ErrorMode::Http(400), "http_400"),
        (ErrorMode::Reset, "io"),
        (ErrorMode::Malformed, "malformed_json"),
        (ErrorMode::Stall, "idle_timeout"),
        (ErrorMode::Hang, "timeout"),
    ];
    for (mode, kind) in cases {
        let m = mock(MockConfig {
            ttft: Duration::from_millis(2),
            itl: Duration::from_millis(1),
            error_rate: 1.0,
            error_modes: vec![mode],
            stall: Duration::from_millis(1500),
            ..MockConfig::default()
        });
        let mut s = Setup::new(&m.url(), Endpoint::Completions);
        s.opts.idle_timeout = Duration::from_millis(300);
        s.opts.request_timeout = Duration::from_millis(600);
        let runner = s.runner(no_cancel());
        let out = step(&runner, &open(100.0, Arrival::Poisson, 6)).await;
        assert_eq!(out.measured.len(), 6, "{mode}: every request recorded");
        for r in &out.measured {
            assert_eq!(
                r.error_kind.as_deref(),
                Some(kind),
                "{mode}: {:?}",
                r.record.error
            );
            assert!(r.record.error.is_some());
            assert!(r.record.end_s.is_some());
        }
        if let ErrorMode::Http(code) = mode {
            assert!(out.measured.iter().all(|r| r.http_status == Some(code)));
            assert!(out.measured[0]
                .record
                .error
                .as_ref()
                .unwrap()
                .contains("injected"));
        }
        if matches!(
            mode,
            ErrorMode::Reset | ErrorMode::Malformed | ErrorMode::Stall
        ) {
            // One token arrived before the failure and its time is kept.
            assert!(
                out.measured
                    .iter()
                    .all(|r| r.record.chunk_times_s.len() == 1),
                "{mode}"
            );
        }
        let _ = tokio::task::spawn_blocking(move || drop(m)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_errors_and_refused_connections() {
    let m = mock(MockConfig {
        ttft: Duration::from_millis(2),
        itl: Duration::from_millis(1),
        error_rate: 0.5,
        error_modes: vec![ErrorMode::Http(503), ErrorMode::Reset, ErrorMode::Malformed],
        ..MockConfig::default()
    });
    let runner = Setup::new(&m.url(), Endpoint::Completions).runner(no_cancel());
    let out = step(&runner, &closed(4, 60)).await;
    assert_eq!(out.measured.len(), 60);
    let failed = out.measured.iter().filter(|r| !r.record.is_ok()).count();
    assert!((10..=50).contains(&failed), "about half fail: {failed}");
    for r in out.measured.iter().filter(|r| r.record.is_ok()) {
        assert_eq!(r.record.output_tokens, 5);
    }
    let kinds: std::collections::BTreeSet<_> = out
        .measured
        .iter()
        .filter_map(|r| r.error_kind.clone())
        .collect();
    assert_eq!(
        kinds,
        ["http_503", "io", "malformed_json"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    // Nothing listens on a port we just freed: connection refused, recorded, the run completes.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let runner =
        Setup::new(&format!("http://127.0.0.1:{port}"), Endpoint::Completions).runner(no_cancel());
    let out = step(&runner, &open(500.0, Arrival::Constant, 5)).await;
    assert_eq!(out.measured.len(), 5);
    assert!(out
        .measured
        .iter()
        .all(|r| r.error_kind.as_deref() == Some("connect")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_caps_and_closed_loop_concurrency() {
    let m = mock(MockConfig {
        ttft: Duration::from_millis(20),
        itl: Duration::from_millis(2),
        ..MockConfig::default()
    });
    let runner = Setup::new(&m.url(), Endpoint::Completions).runner(no_cancel());
    // Burst of 30 with a cap of 4 in flight and 5 warmup requests.
    let mut plan = open(0.0, Arrival::Burst, 25);
    plan.mode = Mode::Open {
        rate: 0.0,
        arrival: Arrival::Burst,
        max_concurrency: Some(4),
    };
    plan.warmup = Warmup::Requests(5);
    let out = step(&runner, &plan).await;
    assert_eq!(
        (out.warmup.len(), out.measured.len(), out.sent),
        (5, 25, 30)
    );
    let all: Vec<_> = out.warmup.iter().chain(&out.measured).collect();
    let max_in_flight = all
        .iter()
        .map(|r| {
            let t = r.record.send_s;
            all.iter()
                .filter(|o| o.record.send_s <= t && o.record.end_s.unwrap() > t)
                .count()
        })
        .max()
        .unwrap();
    assert!(max_in_flight <= 4, "cap exceeded: {max_in_flight}");
    // Everything was scheduled at once, so waiting for a slot shows as client_queue.
    let queued = out
        .measured
        .iter()
        .filter(|r| r.record.client_queue() > 0.015)
        .count();
    assert!(
        queued >= 15,
        "the cap's wait must show as client_queue ({queued})"
    );
    let ids: Vec<u64> = out.warmup.iter().map(|r| r.record.id).collect();
    assert_eq!(ids, vec![0, 1, 2, 3, 4], "warmup is the first five");

    // Closed loop: three users, each sending again when its previous request ended.
    let out = step(&runner, &closed(3, 12)).await;
    assert_eq!(out.measured.len(), 12);
    let first: Vec<_> = out
        .measured
        .iter()
        .filter(|r| r.record.scheduled_s == out.measured[0].record.scheduled_s)
        .collect();
    assert!(first.len() >= 3, "the users start together");

    // Time-limited with a time warmup.
    let mut plan = open(100.0, Arrival::Constant, 0);
    plan.num_requests = None;
    plan.duration = Some(Duration::from_millis(200));
    plan.warmup = Warmup::Time(Duration::from_millis(100));
    let out = step(&runner, &plan).await;
    assert_eq!(out.warmup.len(), 10, "scheduled in the first 100 ms");
    assert_eq!(out.measured.len(), 20, "scheduled in the next 200 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_sessions_feed_the_replies_back() {
    let m = mock(MockConfig {
        ttft: Duration::from_millis(2),
        itl: Duration::from_millis(1),
        ..MockConfig::default()
    });
    let mut s = Setup::new(&m.url(), Endpoint::Chat);
    s.opts.keep_text = true;
    s.sessions = vec![Session {
        system: Some("be brief".into()),
        turns: (0..3)
            .map(|_| Turn {
                input: TurnInput::Text("one two three".into()),
                max_tokens: 4,
                input_tokens: None,
            })
            .collect(),
    }];
    let runner = s.runner(no_cancel());
    let out = step(&runner, &closed(1, 3)).await;
    assert_eq!(out.measured.len(), 3);
    // The mock counts the words of every message: system 2 + per turn 3 user + 4 reply words.
    let prompts: Vec<usize> = out
        .measured
        .iter()
        .map(|r| r.record.prompt_tokens)
        .collect();
    assert_eq!(prompts, vec![5, 12, 19]);
    assert!(out
        .measured
        .iter()
        .all(|r| r.session == out.measured[0].session));
    let turns: Vec<usize> = out.measured.iter().map(|r| r.turn).collect();
    assert_eq!(turns, vec![0, 1, 2]);
    // Each later turn is scheduled when the previous reply ended.
    for w in out.measured.windows(2) {
        assert!(w[1].record.scheduled_s >= w[0].record.end_s.unwrap() - 1e-9);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_and_keeps_what_finished() {
    let m = mock(MockConfig {
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(20),
        ..MockConfig::default()
    });
    let (tx, rx) = watch::channel(false);
    let mut s = Setup::new(&m.url(), Endpoint::Completions);
    s.sessions = vec![ids_session(4, 20)];
    let runner = s.runner(rx);
    let plan = open(50.0, Arrival::Constant, 10_000);
    let handle = {
        let runner = Arc::clone(&runner);
        tokio::spawn(async move { step(&runner, &plan).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    tx.send(true).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("stops promptly")
        .unwrap();
    assert!(out.interrupted);
    assert!(out.sent < 100, "stopped sending: {}", out.sent);
    assert!(!out.measured.is_empty(), "finished requests are kept");
    assert!(out.cancelled > 0, "in-flight requests were abandoned");
    assert_eq!(out.measured.len() + out.cancelled, out.sent);
}

// ----------------------------------------------------------------------------------------------
// The CLI end to end.

/// `infermeter mock-server --port 0 ARGS`, killed on drop.
struct MockProcess {
    child: Child,
    url: String,
}

impl MockProcess {
    fn start(args: &[&str]) -> MockProcess {
        let mut child = infermeter_cmd()
            .args(["mock-server", "--port", "0", "--workers", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        MockProcess { child, url }
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load(args: &[&str]) -> (bool, String, String) {
    run_cli(&[&["load", "--no-progress"], args].concat())
}

#[test]
fn cli_runs_every_arrival_and_loop_and_writes_valid_results() {
    let m = MockProcess::start(&["--ttft", "5ms", "--itl", "1ms", "--sse-comments"]);
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("poisson", vec!["--rate", "200", "--arrival", "poisson"]),
        (
            "constant",
            vec![
                "--rate",
                "200",
                "--arrival",
                "constant",
                "--max-concurrency",
                "4",
            ],
        ),
        ("gamma", vec!["--rate", "200", "--arrival", "gamma:0.5"]),
        ("burst", vec!["--arrival", "burst"]),
        (
            "closed",
            vec![
                "--concurrency",
                "3",
                "--endpoint",
                "chat",
                "--profile",
                "chat",
                "--turns",
                "2",
                "--output-len",
                "4",
                "--input-len",
                "6",
            ],
        ),
    ];
    for (name, extra) in cases {
        let out = dir.path().join(format!("{name}.json"));
        let mut args = vec![
            "--url",
            &m.url,
            "--num-requests",
            "12",
            "--warmup",
            "3",
            "--output-len",
            "4",
            "--slo",
            "ttft=10s,tpot=1s",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra.iter().copied());
        let (ok, stdout, err) = load(&args);
        assert!(ok, "{name}: {err}");
        assert!(stdout.contains("TTFT p50"), "{name}: {stdout}");
        let doc = validate_results(&out);
        assert_eq!(doc["kind"], "load");
        assert_eq!(doc["complete"], true);
        assert_eq!(doc["target"]["server_model"], "infermeter-mock");
        assert_eq!(doc["target"]["listed_models"][0], "infermeter-mock");
        assert_eq!(doc["client_timing"][0]["name"], "self-check");
        let step = &doc["steps"][0];
        assert_eq!(step["requests"].as_array().unwrap().len(), 12, "{name}");
        assert_eq!(
            step["warmup_requests"].as_array().unwrap().len(),
            3,
            "{name}"
        );
        assert_eq!(step["summary"]["completed"], 12, "{name}");
        assert!(step["summary"]["goodput_requests_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(step["tokens"]["output_sources"]["usage"], 12);
        for r in step["requests"].as_array().unwrap() {
            assert_eq!(r["output_tokens"], 4, "{name}");
        }
        if name == "closed" {
            let turns: Vec<u64> = step["requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["turn"].as_u64().unwrap())
                .collect();
            assert!(turns.contains(&1), "multi-turn replay: {turns:?}");
            assert_eq!(doc["target"]["endpoint"], "chat");
        }
    }
}

#[test]
fn cli_no_stream_has_no_tpot_no_split_and_refuses_a_ttft_or_tpot_slo() {
    let m = MockProcess::start(&["--ttft", "5ms", "--itl", "2ms"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nostream.json");
    let base = [
        "--url",
        &m.url,
        "--no-stream",
        "--concurrency",
        "2",
        "--num-requests",
        "6",
        "--output-len",
        "10",
        "--no-self-check",
        "--out",
        out.to_str().unwrap(),
    ];
    // TTFT without streaming is the time to the whole response, TPOT is not observed: an
    // objective on either is refused before any request is sent (no results file), both named
    // together when both are given.
    for (slo, names) in [
        ("tpot=1ms", "tpot"),
        ("ttft=1s", "ttft"),
        ("ttft=1s,e2el=10s", "ttft"),
        ("ttft=1s,tpot=1ms", "ttft and tpot"),
    ] {
        let (ok, _, err) = load(&[&base[..], &["--slo", slo]].concat());
        assert!(!ok, "--slo {slo} without streaming must be refused");
        assert!(
            err.contains(&format!("--slo {names} cannot be checked with --no-stream")),
            "{slo}: {err}"
        );
        assert!(err.contains("Stream, or drop"), "{err}");
        assert!(!out.exists(), "{slo}: refused at parse, nothing written");
    }

    let (ok, stdout, err) = load(&[&base[..], &["--slo", "e2el=10s", "--gpu-price", "2"]].concat());
    assert!(ok, "{err}");
    assert!(stdout.contains("not streamed: TTFT and E2EL"), "{stdout}");
    let doc = validate_results(&out);
    assert_eq!(doc["target"]["streaming"], false);
    let step = &doc["steps"][0];
    let s = &step["summary"];
    assert_eq!(s["completed"], 6);
    assert!(
        s["latency"]["tpot"].is_null(),
        "TPOT undefined, not 0: {}",
        s["latency"]
    );
    assert!(s["latency"]["itl"].is_null());
    assert!(s["latency"]["ttft"]["p50"].as_f64().unwrap() > 0.0);
    for r in step["requests"].as_array().unwrap() {
        assert_eq!(r["output_tokens"], 10);
        assert_eq!(r["chunk_times_s"].as_array().unwrap().len(), 1);
    }
    // No first token observed: no prefill/decode split, so no $/1M input or output, not $0.
    let e = &step["energy"];
    assert!(e["time_split"].is_null(), "{e}");
    assert!(e["cost"]["usd_per_1m_output_tokens"].is_null(), "{e}");
    assert!(e["cost"]["usd_per_1m_input_tokens"].is_null(), "{e}");
    assert!(
        e["cost"]["usd_per_1m_tokens"].as_f64().unwrap() > 0.0,
        "{e}"
    );
    // Two users: the steady state (both busy) has its own window and work beside the whole step's.
    let st = &e["steady_state"];
    let sd = st["duration_s"].as_f64().unwrap_or_else(|| panic!("{e}"));
    assert!((sd - s["steady_state"]["duration_s"].as_f64().unwrap()).abs() < 1e-12);
    let want = s["steady_state"]["requests_per_s"].as_f64().unwrap() * sd;
    assert!((st["work"]["requests"].as_f64().unwrap() - want).abs() < 1e-9 * want.max(1.0));
}

/// No usage and no --tokenizer: output tokens are chunk counts, and the console and the report say
/// so loudly.
#[test]
fn cli_chunk_counted_tokens_are_flagged_in_console_and_report() {
    let m = MockProcess::start(&["--ttft", "2ms", "--itl", "1ms"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chunks.json");
    let (ok, stdout, err) = load(&[
        "--url",
        &m.url,
        "--no-usage",
        "--concurrency",
        "2",
        "--num-requests",
        "4",
        "--output-len",
        "5",
        "--no-self-check",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = validate_results(&out);
    assert_eq!(doc["steps"][0]["tokens"]["output_sources"]["chunks"], 4);
    assert!(err.contains("counted as stream chunks"), "{err}");
    assert!(
        stdout.contains("WARNING: output tokens of 4 request(s)"),
        "{stdout}"
    );

    let rep = dir.path().join("rep");
    let r = infermeter_cmd()
        .args(["report", "--format", "json", "--out"])
        .arg(&rep)
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    let label = json["rows"][0]["label"].as_str().unwrap();
    assert!(label.ends_with("[tokens = chunks]"), "{label}");
    assert!(
        json["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("counted as stream chunks")),
        "{}",
        json["notes"]
    );

    // With usage, no flag.
    let (ok, stdout, err) = load(&[
        "--url",
        &m.url,
        "--concurrency",
        "2",
        "--num-requests",
        "4",
        "--output-len",
        "5",
        "--no-self-check",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(!err.contains("counted as stream chunks") && !stdout.contains("WARNING"));
}

#[test]
fn cli_takes_the_endpoint_from_a_full_url_path() {
    let m = MockProcess::start(&["--ttft", "1ms", "--itl", "1ms"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chat.json");
    let chat_url = format!("{}/v1/chat/completions", m.url);
    // no --endpoint: the path says chat, so the bodies carry `messages` (the mock answers a
    // completions body on the chat route with 400)
    let (ok, _, err) = load(&[
        "--url",
        &chat_url,
        "--concurrency",
        "2",
        "--num-requests",
        "3",
        "--output-len",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let doc = validate_results(&out);
    assert_eq!(doc["target"]["endpoint"], "chat");
    assert_eq!(doc["steps"][0]["summary"]["completed"], 3);
    assert_eq!(doc["steps"][0]["summary"]["failed"], 0);
    // an --endpoint that contradicts the path is refused before any request
    let (ok, _, err) = load(&[
        "--url",
        &chat_url,
        "--endpoint",
        "completions",
        "--concurrency",
        "1",
        "--num-requests",
        "1",
        "--out",
        dir.path().join("x.json").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("--endpoint completions contradicts --url"),
        "{err}"
    );
}

#[test]
fn cli_sweep_stops_at_saturation_in_one_file() {
    // A server that takes 50 ms per request: 4 users reach about 80/s.
    let m = MockProcess::start(&["--ttft", "40ms", "--itl", "5ms"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep.json");
    let (ok, _, err) = load(&[
        "--url",
        &m.url,
        "--sweep",
        "--sweep-steps",
        "3",
        "--sweep-concurrency",
        "4",
        "--num-requests",
        "24",
        "--output-len",
        "3",
        "--arrival",
        "constant",
        "--out",
        out.to_str().unwrap(),
        "--no-self-check",
    ]);
    assert!(ok, "{err}");
    let doc = validate_results(&out);
    let sweep = &doc["sweep"];
    assert!(sweep["max_throughput_rps"].as_f64().unwrap() > 10.0);
    assert_eq!(sweep["rates"].as_array().unwrap().len(), 3);
    assert!(sweep["criterion"].as_str().unwrap().contains("90%"));
    let steps = doc["steps"].as_array().unwrap();
    assert_eq!(steps[0]["name"], "probe");
    assert_eq!(steps[0]["params"]["mode"], "closed");
    assert!(steps.len() >= 2 && steps.len() <= 4);
    for s in &steps[1..] {
        assert_eq!(s["params"]["mode"], "open");
        assert!(s["saturated"].is_boolean());
        assert!(s["saturation_reason"]
            .as_str()
            .unwrap()
            .contains("arrival rate"));
    }
    // The sweep stops at the first saturated step and says where.
    match steps[1..].iter().position(|s| s["saturated"] == true) {
        Some(i) => {
            assert_eq!(i + 2, steps.len(), "no step after the saturated one");
            assert_eq!(sweep["saturated_at_rps"], steps[i + 1]["params"]["rate"]);
        }
        None => {
            assert_eq!(steps.len(), 4, "all three rates ran");
            assert!(sweep["saturated_at_rps"].is_null());
        }
    }
}

#[test]
fn cli_errors_tokenizer_check_and_calibration() {
    let m = MockProcess::start(&[
        "--ttft",
        "2ms",
        "--itl",
        "1ms",
        "--error-rate",
        "0.3",
        "--error-modes",
        "http500,reset",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("errors.json");
    let (ok, stdout, err) = load(&[
        "--url",
        &m.url,
        "--rate",
        "300",
        "--num-requests",
        "40",
        "--output-len",
        "6",
        "--tokenizer",
        "tiny-llama",
        "--input-len",
        "24",
        "--save-text",
        "--out",
        out.to_str().unwrap(),
        "--no-self-check",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("errors:"), "{stdout}");
    assert!(stdout.contains("output tokens: usage"), "{stdout}");
    let doc = validate_results(&out);
    let step = &doc["steps"][0];
    let s = &step["summary"];
    assert_eq!(
        s["completed"].as_u64().unwrap() + s["failed"].as_u64().unwrap(),
        40
    );
    assert!(s["failed"].as_u64().unwrap() > 0);
    let errors = step["errors"].as_object().unwrap();
    assert!(
        errors.keys().all(|k| k == "http_500" || k == "io"),
        "{errors:?}"
    );
    // The mock's usage counts words; the tokenizer counts tokens: the mismatch is reported.
    let om = &step["tokens"]["output_mismatch"];
    assert!(om["requests"].as_u64().unwrap() > 0);
    assert_eq!(
        om["usage_total"].as_u64().unwrap(),
        6 * om["requests"].as_u64().unwrap()
    );
    let ok_req = step["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["error"].is_null())
        .unwrap();
    assert!(ok_req["text"].as_str().unwrap().starts_with(" lorem"));
    assert_eq!(
        ok_req["tokenizer_prompt_tokens"], 24,
        "exact random prompt length"
    );
    assert_eq!(
        doc["workload"]["prompt_format"],
        "text, exact length by the tokenizer"
    );

    // Calibration, scaled down: results validate and every report states the client's error.
    let cal = dir.path().join("cal.json");
    let (ok, stdout, err) = load(&[
        "--calibrate",
        "--calibrate-rate",
        "500",
        "--calibrate-concurrency",
        "20",
        "--calibrate-duration",
        "1s",
        "--calibrate-ttft",
        "10ms",
        "--calibrate-itl",
        "5ms",
        "--calibrate-output-len",
        "4",
        "--out",
        cal.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("dispatch lag p50"), "{stdout}");
    let doc = validate_results(&cal);
    let checks = doc["client_timing"].as_array().unwrap();
    assert_eq!(checks.len(), 2);
    assert!(checks[0]["dispatch_lag"]["p99"].is_number());
    assert!(checks[1]["delivery_latency"]["p50"].as_f64().unwrap() >= 0.0);
    assert!(checks[1]["itl_error"]["count"].as_u64().unwrap() > 0);
}

#[test]
fn cli_ctrl_c_writes_partial_results() {
    let m = MockProcess::start(&["--ttft", "5ms", "--itl", "10ms"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("partial.json");
    let child = infermeter_cmd()
        .args([
            "load",
            "--no-progress",
            "--no-self-check",
            "--url",
            &m.url,
            "--rate",
            "50",
            "--num-requests",
            "100000",
            "--output-len",
            "20",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run has recorded something, then interrupt it.
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let started = std::fs::read_to_string(&out)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|d| d["steps"].as_array().is_some_and(|s| !s.is_empty()));
        if started && t0.elapsed() > Duration::from_millis(1500) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the run never started"
        );
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "an interrupted run exits non-zero"
    );
    assert!(stderr.contains("partial results"), "{stderr}");
    let doc = validate_results(&out);
    assert_eq!(doc["complete"], false);
    let step = &doc["steps"][0];
    assert_eq!(step["interrupted"], true);
    assert!(!step["requests"].as_array().unwrap().is_empty());
}
