//! A synthetic OpenAI-compatible streaming server: the load generator's test target and its
//! calibration reference.
//!
//! Endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (streamed or not), `GET /v1/models`,
//! `GET /health`. Each request gets `n` output tokens (the `output_len` distribution, capped by the
//! request's `max_tokens`; without a distribution exactly `max_tokens`), the first after `ttft` and the
//! rest `itl` apart, `tokens_per_chunk` per SSE event. Deadlines are absolute from the moment the
//! handler starts and are kept with the sub-millisecond timer of [`crate::client::hires`], so token
//! times do not drift and are not rounded to tokio's 1 ms timer ticks. A chat stream starts with a
//! role-only chunk (empty content) at once, as vLLM does; a streamed response ends with a
//! `finish_reason` chunk, a usage chunk (`stream_options.include_usage`) and `data: [DONE]`.
//!
//! Usage counts: completion tokens are the tokens sent; prompt tokens are the length of a token-id
//! prompt, else the number of whitespace-separated words of the prompt (or of all message contents).
//! Each token is one word with a leading space (`" lorem"`), so a word-level count of the text
//! matches the usage.
//!
//! Errors, for the client's error tests: with probability `error_rate` a request fails in one of
//! `error_modes` (picked uniformly): `http400`/`http429`/`http500`/`http503`/`httpNNN` (an OpenAI
//! error JSON with that status), `reset` (one token, then the connection is aborted: a TCP RST, the
//! listener sets SO_LINGER 0 when this mode is on), `malformed` (one token, then an event that is not
//! JSON), `stall` (one token, then nothing for `stall`, then the body closes without `[DONE]`),
//! `hang` (no response headers for `stall`, then 503). Decisions come from a seeded RNG per request.
//!
//! With `emit_epoch` set (calibration, the client in the same process on the same clock), every
//! content chunk carries `"mock_emit_s"`: seconds from that epoch when the mock handed it to the
//! connection, so the client can measure delivery latency separately from the mock's own timing.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::client::hires;
use crate::error::{Error, Result};
use crate::workload::LengthDist;

/// How a request fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorMode {
    /// An HTTP error status with an OpenAI error body.
    Http(u16),
    /// One token, then the connection is aborted.
    Reset,
    /// One token, then an event that is not JSON.
    Malformed,
    /// One token, then silence for `stall`, then the body ends without `[DONE]`.
    Stall,
    /// No response headers for `stall`, then 503.
    Hang,
}

impl FromStr for ErrorMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let code = t.strip_prefix("http").unwrap_or(&t);
        if let Ok(c) = code.parse::<u16>() {
            if (400..600).contains(&c) {
                return Ok(ErrorMode::Http(c));
            }
        }
        match t.as_str() {
            "reset" => Ok(ErrorMode::Reset),
            "malformed" => Ok(ErrorMode::Malformed),
            "stall" => Ok(ErrorMode::Stall),
            "hang" => Ok(ErrorMode::Hang),
            _ => Err(Error::Invalid(format!(
                "error mode `{s}` is not one of: httpNNN (400-599, e.g. http500), reset, malformed, \
                 stall, hang"
            ))),
        }
    }
}

impl std::fmt::Display for ErrorMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorMode::Http(c) => write!(f, "http{c}"),
            ErrorMode::Reset => f.write_str("reset"),
            ErrorMode::Malformed => f.write_str("malformed"),
            ErrorMode::Stall => f.write_str("stall"),
            ErrorMode::Hang => f.write_str("hang"),
        }
    }
}

/// Parse `http500,reset,stall`.
pub fn parse_error_modes(text: &str) -> Result<Vec<ErrorMode>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(ErrorMode::from_str)
        .collect()
}

/// The mock's behaviour.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub ttft: Duration,
    pub itl: Duration,
    /// Output lengths; `None`: exactly the request's `max_tokens`.
    pub output_len: Option<LengthDist>,
    pub tokens_per_chunk: usize,
    /// Probability in [0, 1] that a request fails.
    pub error_rate: f64,
    pub error_modes: Vec<ErrorMode>,
    /// How long `stall` and `hang` hold.
    pub stall: Duration,
    /// The model id served and reported.
    pub model: String,
    pub seed: u64,
    /// Stamp content chunks with `mock_emit_s` from this epoch (same-process calibration).
    pub emit_epoch: Option<Instant>,
    /// Put an SSE comment (`: keep-alive`) and CRLF line ends into every event, to exercise parsers.
    pub sse_comments: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            ttft: Duration::from_millis(20),
            itl: Duration::from_millis(5),
            output_len: None,
            tokens_per_chunk: 1,
            error_rate: 0.0,
            error_modes: vec![ErrorMode::Http(500)],
            stall: Duration::from_secs(30),
            model: "infermeter-mock".into(),
            seed: 0,
            emit_epoch: None,
            sse_comments: false,
        }
    }
}

impl MockConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(Error::Invalid(format!(
                "mock error rate must be within [0, 1], got {}",
                self.error_rate
            )));
        }
        if self.error_rate > 0.0 && self.error_modes.is_empty() {
            return Err(Error::Invalid(
                "mock error rate > 0 needs at least one error mode".into(),
            ));
        }
        if self.tokens_per_chunk == 0 {
            return Err(Error::Invalid("tokens per chunk must be at least 1".into()));
        }
        Ok(())
    }
}

/// Counters of what the mock served.
#[derive(Debug, Default)]
pub struct MockStats {
    pub requests: AtomicU64,
    pub injected_errors: AtomicU64,
    pub tokens: AtomicU64,
}

struct Shared {
    cfg: MockConfig,
    model_json: String,
    stats: Arc<MockStats>,
}

const WORDS: &[&str] = &[
    " lorem",
    " ipsum",
    " dolor",
    " sit",
    " amet",
    " consectetur",
    " adipiscing",
    " elit",
    " sed",
    " do",
    " eiusmod",
    " tempor",
    " incididunt",
    " ut",
    " labore",
    " et",
    " dolore",
    " magna",
    " aliqua",
    " enim",
];

/// The axum router of a mock with this configuration.
pub fn router(cfg: MockConfig) -> (Router, Arc<MockStats>) {
    let stats = Arc::new(MockStats::default());
    let shared = Arc::new(Shared {
        model_json: serde_json::to_string(&cfg.model).unwrap_or_else(|_| "\"mock\"".into()),
        cfg,
        stats: Arc::clone(&stats),
    });
    let r = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(shared);
    (r, stats)
}

/// Serve `cfg` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: MockConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<Arc<MockStats>> {
    cfg.validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let reset = cfg.error_modes.contains(&ErrorMode::Reset) && cfg.error_rate > 0.0;
    let (app, stats) = router(cfg);
    use axum::serve::ListenerExt;
    if reset {
        // SO_LINGER 0: aborting a connection sends RST, as a crashed server's kernel would.
        let l = listener.tap_io(|s| {
            let _ = s.set_nodelay(true);
            let _ = s.set_zero_linger();
        });
        axum::serve(l, app).with_graceful_shutdown(shutdown).await?;
    } else {
        let l = listener.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        axum::serve(l, app).with_graceful_shutdown(shutdown).await?;
    }
    Ok(stats)
}

/// A mock running on its own runtime and thread (so its timing does not share the caller's
/// runtime); stopped on [`MockHandle::stop`] or drop.
pub struct MockHandle {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<std::sync::Mutex<Option<Arc<MockStats>>>>,
}

impl MockHandle {
    /// Bind `addr` (port 0 for any free port) and serve `cfg` with `workers` runtime threads.
    pub fn spawn(addr: SocketAddr, cfg: MockConfig, workers: usize) -> Result<MockHandle> {
        cfg.validate()?;
        let std_listener =
            std::net::TcpListener::bind(addr).map_err(|e| Error::io(addr.to_string(), e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(addr.to_string(), e))?;
        let addr = std_listener
            .local_addr()
            .map_err(|e| Error::io(addr.to_string(), e))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stats_slot = Arc::new(std::sync::Mutex::new(None));
        let slot = Arc::clone(&stats_slot);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("infermeter-mock".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers.max(1))
                    .thread_name("infermeter-mock-worker")
                    .enable_all()
                    .build();
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let stop = async move {
                        let _ = rx.await;
                    };
                    if let Ok(stats) = serve(listener, cfg, stop).await {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
                    }
                });
            })
            .map_err(|e| Error::Invalid(format!("cannot start the mock server thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Invalid(format!("mock server: {e}"))),
            Err(_) => return Err(Error::Invalid("mock server thread died".into())),
        }
        Ok(MockHandle {
            addr,
            stop: Some(tx),
            thread: Some(thread),
            stats: stats_slot,
        })
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving (in-flight streams are cut) and wait for the thread; the counters, if it ran.
    pub fn stop(mut self) -> Option<Arc<MockStats>> {
        self.shutdown();
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completions,
    Chat,
}

async fn completions(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    handle(s, body, Kind::Completions).await
}

async fn chat(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    handle(s, body, Kind::Chat).await
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    let body = format!(
        "{{\"object\":\"list\",\"data\":[{{\"id\":{},\"object\":\"model\",\"owned_by\":\"infermeter-mock\"}}]}}",
        s.model_json
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_response(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body =
        serde_json::json!({"error": {"message": message, "type": "mock_error", "code": status}});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Prompt tokens of a request body (see the module documentation).
fn prompt_tokens(v: &Value) -> usize {
    match &v["prompt"] {
        Value::String(s) => words(s),
        Value::Array(a) if a.iter().all(Value::is_number) => a.len(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(words).sum(),
        _ => v["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["content"].as_str())
                    .map(words)
                    .sum()
            })
            .unwrap_or(0),
    }
}

struct Plan {
    kind: Kind,
    start: Instant,
    n: usize,
    finish_reason: &'static str,
    prompt_tokens: usize,
    include_usage: bool,
    error: Option<ErrorMode>,
    id: u64,
}

async fn handle(s: Arc<Shared>, body: Bytes, kind: Kind) -> Response {
    let start = Instant::now();
    let id = s.stats.requests.fetch_add(1, Ordering::Relaxed);
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return error_response(400, "request body is not a JSON object"),
    };
    if kind == Kind::Chat && !v["messages"].is_array() {
        return error_response(400, "`messages` must be an array");
    }
    if kind == Kind::Completions && v["prompt"].is_null() {
        return error_response(400, "`prompt` is required");
    }
    let max_tokens = v["max_tokens"]
        .as_u64()
        .or_else(|| v["max_completion_tokens"].as_u64())
        .unwrap_or(16)
        .max(1) as usize;
    let stream = v["stream"].as_bool().unwrap_or(false);
    let include_usage = v["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let cfg = &s.cfg;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let error = (cfg.error_rate > 0.0
        && !cfg.error_modes.is_empty()
        && rng.random::<f64>() < cfg.error_rate)
        .then(|| cfg.error_modes[rng.random_range(0..cfg.error_modes.len())]);
    if error.is_some() {
        s.stats.injected_errors.fetch_add(1, Ordering::Relaxed);
    }
    let n = cfg
        .output_len
        .map_or(max_tokens, |d| d.sample(&mut rng))
        .clamp(1, max_tokens);
    let plan = Plan {
        kind,
        start,
        n,
        finish_reason: if n >= max_tokens { "length" } else { "stop" },
        prompt_tokens: prompt_tokens(&v),
        include_usage,
        error,
        id,
    };
    match error {
        Some(ErrorMode::Http(code)) => {
            return error_response(code, &format!("injected HTTP {code}"));
        }
        Some(ErrorMode::Hang) => {
            tokio::time::sleep(cfg.stall).await;
            return error_response(503, "injected hang");
        }
        _ => {}
    }
    if stream {
        stream_response(s, plan)
    } else {
        whole_response(s, plan).await
    }
}

fn token_text(k: usize) -> &'static str {
    WORDS[k % WORDS.len()]
}

fn emit_field(s: &Shared) -> String {
    match s.cfg.emit_epoch {
        Some(e) => format!(",\"mock_emit_s\":{}", e.elapsed().as_secs_f64()),
        None => String::new(),
    }
}

fn event(s: &Shared, json: &str) -> Bytes {
    if s.cfg.sse_comments {
        Bytes::from(format!(": keep-alive\r\n\r\ndata: {json}\r\n\r\n"))
    } else {
        Bytes::from(format!("data: {json}\n\n"))
    }
}

fn content_chunk(s: &Shared, p: &Plan, text: &str, finish: Option<&str>) -> Bytes {
    let fin = finish.map_or("null".to_string(), |f| format!("\"{f}\""));
    let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
    let json = match p.kind {
        Kind::Completions => format!(
            "{{\"id\":\"cmpl-mock-{}\",\"object\":\"text_completion\",\"created\":0,\"model\":{},\"choices\":[{{\"index\":0,\"text\":{text},\"logprobs\":null,\"finish_reason\":{fin}}}]{}}}",
            p.id, s.model_json, emit_field(s)
        ),
        Kind::Chat => format!(
            "{{\"id\":\"chatcmpl-mock-{}\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{text}}},\"finish_reason\":{fin}}}]{}}}",
            p.id, s.model_json, emit_field(s)
        ),
    };
    event(s, &json)
}

fn usage_json(p: &Plan) -> String {
    format!(
        "{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}",
        p.prompt_tokens,
        p.n,
        p.prompt_tokens + p.n
    )
}

/// Where a streamed response is.
enum Phase {
    Role,
    Token(usize),
    Usage,
    Done,
    End,
}

fn stream_response(s: Arc<Shared>, p: Plan) -> Response {
    let first = if p.kind == Kind::Chat {
        Phase::Role
    } else {
        Phase::Token(0)
    };
    let st = (s, p, first);
    let stream = futures_util::stream::unfold(st, |(s, p, phase)| async move {
        let cfg = &s.cfg;
        let per = cfg.tokens_per_chunk.max(1);
        match phase {
            Phase::Role => {
                let json = format!(
                    "{{\"id\":\"chatcmpl-mock-{}\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}",
                    p.id, s.model_json
                );
                let b = event(&s, &json);
                Some((Ok::<Bytes, std::io::Error>(b), (s, p, Phase::Token(0))))
            }
            Phase::Token(first_tok) => {
                let last_tok = (first_tok + per).min(p.n) - 1;
                let at = p.start + cfg.ttft + cfg.itl.saturating_mul(last_tok as u32);
                hires::sleep_until(at).await;
                let text: String = (first_tok..=last_tok).map(token_text).collect();
                let done = last_tok + 1 >= p.n;
                let b = content_chunk(&s, &p, &text, done.then_some(p.finish_reason));
                s.stats
                    .tokens
                    .fetch_add((last_tok + 1 - first_tok) as u64, Ordering::Relaxed);
                let next = match p.error {
                    // One token goes out, then `Done` aborts, breaks or stalls the stream.
                    Some(ErrorMode::Reset | ErrorMode::Malformed | ErrorMode::Stall) => Phase::Done,
                    _ if done => {
                        if p.include_usage {
                            Phase::Usage
                        } else {
                            Phase::Done
                        }
                    }
                    _ => Phase::Token(last_tok + 1),
                };
                Some((Ok(b), (s, p, next)))
            }
            Phase::Usage => {
                let obj = if p.kind == Kind::Chat {
                    "chat.completion.chunk"
                } else {
                    "text_completion"
                };
                let json = format!(
                    "{{\"id\":\"mock-{}\",\"object\":\"{obj}\",\"created\":0,\"model\":{},\"choices\":[],\"usage\":{}}}",
                    p.id,
                    s.model_json,
                    usage_json(&p)
                );
                let b = event(&s, &json);
                Some((Ok(b), (s, p, Phase::Done)))
            }
            Phase::Done => match p.error {
                Some(ErrorMode::Reset) => {
                    // The connection dies when the next token would have come.
                    hires::sleep(s.cfg.itl.max(Duration::from_millis(1))).await;
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "injected reset",
                        )),
                        (s, p, Phase::End),
                    ))
                }
                Some(ErrorMode::Malformed) => {
                    let b = Bytes::from_static(b"data: {\"choices\":[{\"text\": \"broken\n\n");
                    Some((Ok(b), (s, p, Phase::End)))
                }
                Some(ErrorMode::Stall) => {
                    tokio::time::sleep(s.cfg.stall).await;
                    None
                }
                _ => Some((
                    Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                    (s, p, Phase::End),
                )),
            },
            Phase::End => None,
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error_response(500, "response build failed"))
}

async fn whole_response(s: Arc<Shared>, p: Plan) -> Response {
    let cfg = &s.cfg;
    let at = p.start + cfg.ttft + cfg.itl.saturating_mul((p.n - 1) as u32);
    hires::sleep_until(at).await;
    match p.error {
        Some(ErrorMode::Reset) => {
            let stream = futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected reset",
                ))
            });
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| error_response(500, "response build failed"));
        }
        Some(ErrorMode::Malformed) => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"choices\":[",
            )
                .into_response()
        }
        Some(ErrorMode::Stall) => {
            tokio::time::sleep(cfg.stall).await;
            return error_response(503, "injected stall");
        }
        _ => {}
    }
    s.stats.tokens.fetch_add(p.n as u64, Ordering::Relaxed);
    let text: String = (0..p.n).map(token_text).collect();
    let text = serde_json::to_string(&text).unwrap_or_else(|_| "\"\"".into());
    let choice = match p.kind {
        Kind::Completions => format!(
            "{{\"index\":0,\"text\":{text},\"logprobs\":null,\"finish_reason\":\"{}\"}}",
            p.finish_reason
        ),
        Kind::Chat => format!(
            "{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{text}}},\"finish_reason\":\"{}\"}}",
            p.finish_reason
        ),
    };
    let obj = if p.kind == Kind::Chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    let body = format!(
        "{{\"id\":\"mock-{}\",\"object\":\"{obj}\",\"created\":0,\"model\":{},\"choices\":[{choice}],\"usage\":{}{}}}",
        p.id,
        s.model_json,
        usage_json(&p),
        emit_field(&s)
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_modes_parse() {
        assert_eq!(
            parse_error_modes("http500, 429,reset,malformed,stall,hang").unwrap(),
            vec![
                ErrorMode::Http(500),
                ErrorMode::Http(429),
                ErrorMode::Reset,
                ErrorMode::Malformed,
                ErrorMode::Stall,
                ErrorMode::Hang
            ]
        );
        for bad in ["http200", "http999", "boom"] {
            assert!(bad.parse::<ErrorMode>().is_err(), "{bad}");
        }
        assert_eq!(ErrorMode::Http(503).to_string(), "http503");
    }

    #[test]
    fn prompt_tokens_count_ids_words_and_messages() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(prompt_tokens(&v(r#"{"prompt":[1,2,3]}"#)), 3);
        assert_eq!(prompt_tokens(&v(r#"{"prompt":"a b  c"}"#)), 3);
        assert_eq!(
            prompt_tokens(&v(
                r#"{"messages":[{"role":"user","content":"a b"},{"role":"assistant","content":"c"}]}"#
            )),
            3
        );
    }

    #[test]
    fn config_is_validated() {
        let mut c = MockConfig {
            error_rate: 1.5,
            ..MockConfig::default()
        };
        assert!(c.validate().is_err());
        c.error_rate = 0.5;
        c.error_modes.clear();
        assert!(c.validate().is_err());
        c.error_modes.push(ErrorMode::Reset);
        assert!(c.validate().is_ok());
    }
}
