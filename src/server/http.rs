//! Routes and handlers: the OpenAI endpoints, `/v1/models`, `/health`, `/metrics`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::api::{
    parse_body, parse_messages, parse_params, parse_prompt, ApiError, Fields, GenParams,
    PromptInput,
};
use super::detok::{Push, StopReason, TextState};
use super::template::ChatTemplate;
use super::worker::{AddCommand, AddError, Command, Event, Shared};
use crate::engine::{EngineRequest, FinishReason, RequestOptions};
use crate::model::Tokenizer;

/// Largest request body read.
pub(crate) const BODY_LIMIT: usize = 64 << 20;

pub(crate) struct AppState {
    pub commands: Sender<Command>,
    pub shared: Arc<Shared>,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub template: ChatTemplate,
    pub model_name: String,
    pub model_root: String,
    pub max_context: usize,
    pub vocab_size: usize,
    pub kv_capacity_tokens: usize,
    pub max_waiting: usize,
    pub api_key: Option<String>,
    pub next_cid: AtomicU64,
    pub started_unix: u64,
}

impl AppState {
    /// An error response, counted in the metrics.
    fn reject(&self, e: ApiError) -> Response {
        {
            let mut m = self.shared.metrics();
            match e.status {
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    m.rejected_overloaded += 1
                }
                StatusCode::UNAUTHORIZED => m.rejected_unauthorized += 1,
                s if s.is_client_error() => m.rejected_invalid += 1,
                _ => {}
            }
        }
        e.into_response()
    }
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        // ids may hold slashes (`meta-llama/Llama-3.2-1B`), as OpenAI clients send them
        .route("/v1/models/{*id}", get(model))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Compare without an early exit on the first differing byte.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            // the auth scheme is case-insensitive (RFC 9110 §11.1)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if !given.is_some_and(|g| same_secret(g, key)) {
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong API key: send `Authorization: Bearer <key>`",
            );
            e.code = Some("invalid_api_key");
            return st.reject(e);
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> Response {
    let mut e = ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "no route {} {}: the endpoints are POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/models/{{id}}, GET /health, GET /metrics",
            req.method(),
            req.uri().path()
        ),
    );
    e.code = Some("not_found");
    e.into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let mut e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    );
    e.code = Some("method_not_allowed");
    e.into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.shared.alive.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "engine stopped\n").into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let text = st.shared.metrics().render(&st.model_name);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn model_object(st: &AppState) -> Value {
    json!({
        "id": st.model_name,
        "object": "model",
        "created": st.started_unix,
        "owned_by": "infermeter",
        "root": st.model_root,
        "parent": null,
        "max_model_len": st.max_context,
    })
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": [model_object(&st)]})).into_response()
}

/// `GET /v1/models/{id}`: the served model, or OpenAI's 404 `model_not_found` for any other id.
async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == st.model_name {
        return axum::Json(model_object(&st)).into_response();
    }
    let mut e = ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "The model `{id}` does not exist: this server serves `{}`",
            st.model_name
        ),
    );
    e.param = Some("model".into());
    e.code = Some("model_not_found");
    e.into_response()
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("could not read the request body (limit {BODY_LIMIT} bytes): {e}"),
        )
    })
}

fn tokenize(
    st: &AppState,
    text: &str,
    add_special: bool,
    param: &str,
) -> Result<Vec<u32>, ApiError> {
    let Some(tok) = &st.tokenizer else {
        return Err(ApiError::invalid(
            param,
            format!(
                "model `{}` has no tokenizer (tokenizer.json, or vocab.json and merges.txt): send the prompt as token ids",
                st.model_name
            ),
        ));
    };
    let r = if add_special {
        tok.encode(text)
    } else {
        tok.encode_no_special(text)
    };
    r.map_err(|e| ApiError::invalid(param, format!("`{param}`: {e}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completion,
    Chat,
}

async fn completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    let arrived = Instant::now();
    let r = async {
        let bytes = read_body(body).await?;
        let obj = parse_body(&bytes)?;
        let f = Fields(&obj);
        let params = parse_params(&f, false)?;
        let ids = match parse_prompt(&f)? {
            PromptInput::Text(t) => tokenize(&st, &t, true, "prompt")?,
            PromptInput::Ids(ids) => ids,
        };
        start(&st, Endpoint::Completion, ids, params, arrived).await
    }
    .await;
    r.unwrap_or_else(|e| st.reject(e))
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: Body) -> Response {
    let arrived = Instant::now();
    let r = async {
        let bytes = read_body(body).await?;
        let obj = parse_body(&bytes)?;
        let f = Fields(&obj);
        let params = parse_params(&f, true)?;
        let messages = parse_messages(&f)?;
        let add_generation_prompt = f.bool("add_generation_prompt")?.unwrap_or(true);
        let kwargs = match f.get("chat_template_kwargs") {
            None => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "chat_template_kwargs",
                    "`chat_template_kwargs` must be an object",
                ))
            }
        };
        let text = st
            .template
            .render(&messages, add_generation_prompt, &kwargs)
            .map_err(|e| ApiError::invalid("messages", e.0))?;
        let ids = tokenize(&st, &text, st.template.add_special_tokens(), "messages")?;
        start(&st, Endpoint::Chat, ids, params, arrived).await
    }
    .await;
    r.unwrap_or_else(|e| st.reject(e))
}

fn unavailable() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the engine is not running (the server is shutting down or the engine stopped)",
    );
    e.code = Some("engine_unavailable");
    e.retry_after_s = Some(1);
    e
}

/// Sends `Abort` for its request when dropped, unless the engine already finished it.
struct AbortGuard {
    cid: u64,
    commands: Sender<Command>,
    armed: bool,
}

impl AbortGuard {
    fn abort_now(&mut self, disconnected: bool) {
        if self.armed {
            self.armed = false;
            let _ = self.commands.send(Command::Abort {
                cid: self.cid,
                disconnected,
            });
        }
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        self.abort_now(true);
    }
}

/// Check lengths against the context and the KV pool; the request's `max_tokens`.
fn check_lengths(
    st: &AppState,
    endpoint: Endpoint,
    ids: &[u32],
    p: &GenParams,
) -> Result<usize, ApiError> {
    let prompt_param = match endpoint {
        Endpoint::Completion => "prompt",
        Endpoint::Chat => "messages",
    };
    let n = ids.len();
    if n == 0 {
        return Err(ApiError::invalid(
            prompt_param,
            format!("`{prompt_param}`: the prompt is empty"),
        ));
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= st.vocab_size) {
        return Err(ApiError::invalid(
            prompt_param,
            format!(
                "`{prompt_param}`: token id {bad} is outside the vocabulary of {}",
                st.vocab_size
            ),
        ));
    }
    let ctx = st.max_context;
    if n >= ctx {
        return Err(ApiError::invalid(
            prompt_param,
            format!(
                "This model's maximum context length is {ctx} tokens, and the prompt has {n} tokens: no room for any output. Shorten the prompt."
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let cap = st.kv_capacity_tokens;
    if n >= cap {
        return Err(ApiError::invalid(
            prompt_param,
            format!(
                "the prompt of {n} tokens fills the server's KV pool of {cap} tokens: no room for any output"
            ),
        ));
    }
    let max_tokens = match p.max_tokens {
        None => (ctx - n).min(cap - n),
        Some(m) => {
            if n.saturating_add(m) > ctx {
                return Err(ApiError::invalid(
                    p.max_tokens_key,
                    format!(
                        "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({n} in the prompt, {m} for the completion). Reduce the prompt or `{}`.",
                        n.saturating_add(m),
                        p.max_tokens_key
                    ),
                )
                .with_code("context_length_exceeded"));
            }
            if n.saturating_add(m) > cap {
                return Err(ApiError::invalid(
                    p.max_tokens_key,
                    format!(
                        "{n} prompt + {m} output tokens cannot fit the server's KV pool of {cap} tokens: reduce `{}`",
                        p.max_tokens_key
                    ),
                ));
            }
            m
        }
    };
    if p.min_tokens > max_tokens {
        return Err(ApiError::invalid(
            "min_tokens",
            format!(
                "`min_tokens` ({}) exceeds the {max_tokens} tokens this request can generate",
                p.min_tokens
            ),
        ));
    }
    Ok(max_tokens)
}

/// Queue a request on the engine and answer it, streaming or not.
async fn start(
    st: &Arc<AppState>,
    endpoint: Endpoint,
    prompt_ids: Vec<u32>,
    p: GenParams,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let max_tokens = check_lengths(st, endpoint, &prompt_ids, &p)?;
    let cid = st.next_cid.fetch_add(1, Ordering::Relaxed);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let add = AddCommand {
        cid,
        req: EngineRequest {
            prompt_ids: prompt_ids.clone(),
            max_tokens,
            sampling: p.sampling,
            ignore_eos: p.ignore_eos,
        },
        opts: RequestOptions {
            min_tokens: p.min_tokens,
        },
        arrived,
        events: events_tx,
        reply: reply_tx,
    };
    st.commands
        .send(Command::Add(Box::new(add)))
        .map_err(|_| unavailable())?;
    // From here, dropping this handler (client gone) aborts the request.
    let guard = AbortGuard {
        cid,
        commands: st.commands.clone(),
        armed: true,
    };
    match reply_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(AddError::Overloaded { waiting })) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the server is at capacity: {waiting} requests are already waiting (--max-waiting {}); retry later",
                    st.max_waiting
                ),
            );
            e.code = Some("server_overloaded");
            e.retry_after_s = Some(1);
            return Err(e);
        }
        Ok(Err(AddError::Invalid(err))) => {
            let e = ApiError::invalid("prompt", err.to_string());
            return Err(match err {
                crate::Error::ContextOverflow { .. } => e.with_code("context_length_exceeded"),
                _ => e,
            });
        }
        Err(_) => return Err(unavailable()),
    }
    let text = TextState::new(
        st.tokenizer.clone(),
        &prompt_ids,
        p.stop.clone(),
        p.stop_token_ids.clone(),
        p.min_tokens,
    );
    let gen = Generation {
        events: events_rx,
        guard,
        text,
        shared: st.shared.clone(),
        completion_tokens: 0,
        new_ids: Vec::new(),
        all_ids: Vec::new(),
        done: false,
    };
    let meta = Meta {
        id: match endpoint {
            Endpoint::Completion => format!("cmpl-{:032x}", rand::random::<u128>()),
            Endpoint::Chat => format!("chatcmpl-{:032x}", rand::random::<u128>()),
        },
        created: unix_now(),
        model: st.model_name.clone(),
        endpoint,
        prompt_tokens: prompt_ids.len(),
        include_usage: p.include_usage,
        return_token_ids: p.return_token_ids,
    };
    if p.stream {
        Ok(stream_response(gen, meta))
    } else {
        collect_response(gen, meta).await
    }
}

struct Finish {
    reason: &'static str,
    stop_reason: Value,
}

enum Piece {
    Delta(String),
    Done { delta: String, finish: Finish },
    Failed(String),
}

/// A request in flight: its events from the engine turned into text pieces.
struct Generation {
    events: mpsc::UnboundedReceiver<Event>,
    guard: AbortGuard,
    text: TextState,
    shared: Arc<Shared>,
    completion_tokens: usize,
    /// Ids since the last piece (for `return_token_ids` in streams).
    new_ids: Vec<u32>,
    all_ids: Vec<u32>,
    done: bool,
}

impl Generation {
    fn finish(&mut self, reason: &'static str, stop: Option<StopReason>) -> Finish {
        self.done = true;
        let mut m = self.shared.metrics();
        if reason == "stop" {
            m.finished_stop += 1;
        } else {
            m.finished_length += 1;
        }
        Finish {
            reason,
            stop_reason: match stop {
                Some(StopReason::Text(s)) => Value::String(s),
                Some(StopReason::Token(t)) => json!(t),
                None => Value::Null,
            },
        }
    }

    async fn next(&mut self) -> Option<Piece> {
        if self.done {
            return None;
        }
        loop {
            match self.events.recv().await {
                Some(Event::Token(t)) => {
                    self.completion_tokens += 1;
                    self.new_ids.push(t);
                    self.all_ids.push(t);
                    match self.text.push_token(t) {
                        Push::Delta(d) if d.is_empty() => continue,
                        Push::Delta(d) => return Some(Piece::Delta(d)),
                        Push::Stop { delta, reason } => {
                            // ended by a stop string or token: free the engine's blocks now
                            self.guard.abort_now(false);
                            let finish = self.finish("stop", Some(reason));
                            return Some(Piece::Done { delta, finish });
                        }
                    }
                }
                Some(Event::Finished(reason)) => {
                    self.guard.armed = false;
                    let (delta, stop) = self.text.finish();
                    let finish = match (stop, reason) {
                        (Some(s), _) => self.finish("stop", Some(s)),
                        (None, FinishReason::Stop) => self.finish("stop", None),
                        (None, FinishReason::Length) => self.finish("length", None),
                    };
                    return Some(Piece::Done { delta, finish });
                }
                Some(Event::Failed(msg)) => {
                    self.guard.armed = false;
                    self.done = true;
                    return Some(Piece::Failed(msg));
                }
                None => {
                    self.guard.armed = false;
                    self.done = true;
                    return Some(Piece::Failed("the engine stopped".into()));
                }
            }
        }
    }

    fn usage(&self, prompt_tokens: usize) -> Value {
        json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_tokens + self.completion_tokens,
        })
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
    prompt_tokens: usize,
    include_usage: bool,
    return_token_ids: bool,
}

fn server_error(msg: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", msg)
}

async fn collect_response(mut gen: Generation, meta: Meta) -> Result<Response, ApiError> {
    let mut text = String::new();
    let finish = loop {
        match gen.next().await {
            Some(Piece::Delta(d)) => text.push_str(&d),
            Some(Piece::Done { delta, finish }) => {
                text.push_str(&delta);
                break finish;
            }
            Some(Piece::Failed(msg)) => return Err(server_error(msg)),
            None => return Err(server_error("the request ended without a result".into())),
        }
    };
    let mut choice = match meta.endpoint {
        Endpoint::Completion => json!({
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": finish.reason,
            "stop_reason": finish.stop_reason,
        }),
        Endpoint::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish.reason,
            "stop_reason": finish.stop_reason,
        }),
    };
    if meta.return_token_ids {
        choice["token_ids"] = json!(gen.all_ids);
    }
    let body = json!({
        "id": meta.id,
        "object": match meta.endpoint {
            Endpoint::Completion => "text_completion",
            Endpoint::Chat => "chat.completion",
        },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": gen.usage(meta.prompt_tokens),
    });
    Ok(axum::Json(body).into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Role,
    Body,
    Usage,
    Done,
    End,
}

struct StreamState {
    gen: Generation,
    meta: Meta,
    phase: Phase,
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

impl StreamState {
    fn chunk(&mut self, delta: Option<String>, finish: Option<Finish>, role: bool) -> Value {
        let (reason, stop_reason) = match finish {
            Some(f) => (Value::from(f.reason), f.stop_reason),
            None => (Value::Null, Value::Null),
        };
        let mut choice = match self.meta.endpoint {
            Endpoint::Completion => json!({
                "index": 0,
                "text": delta.unwrap_or_default(),
                "logprobs": null,
                "finish_reason": reason,
                "stop_reason": stop_reason,
            }),
            Endpoint::Chat => {
                let mut d = serde_json::Map::new();
                if role {
                    d.insert("role".into(), "assistant".into());
                }
                if let Some(text) = delta {
                    d.insert("content".into(), text.into());
                }
                json!({
                    "index": 0,
                    "delta": d,
                    "logprobs": null,
                    "finish_reason": reason,
                    "stop_reason": stop_reason,
                })
            }
        };
        if self.meta.return_token_ids && !role {
            choice["token_ids"] = json!(std::mem::take(&mut self.gen.new_ids));
        }
        let mut v = json!({
            "id": self.meta.id,
            "object": match self.meta.endpoint {
                Endpoint::Completion => "text_completion",
                Endpoint::Chat => "chat.completion.chunk",
            },
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [choice],
        });
        if self.meta.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    async fn next_bytes(&mut self) -> Option<Bytes> {
        loop {
            match self.phase {
                Phase::Role => {
                    self.phase = Phase::Body;
                    return Some(sse(&self.chunk(Some(String::new()), None, true)));
                }
                Phase::Body => match self.gen.next().await {
                    Some(Piece::Delta(d)) => return Some(sse(&self.chunk(Some(d), None, false))),
                    Some(Piece::Done { delta, finish }) => {
                        self.phase = if self.meta.include_usage {
                            Phase::Usage
                        } else {
                            Phase::Done
                        };
                        let delta = match self.meta.endpoint {
                            Endpoint::Chat if delta.is_empty() => None,
                            _ => Some(delta),
                        };
                        return Some(sse(&self.chunk(delta, Some(finish), false)));
                    }
                    Some(Piece::Failed(msg)) => {
                        self.phase = Phase::Done;
                        return Some(sse(&server_error(msg).body()));
                    }
                    None => self.phase = Phase::Done,
                },
                Phase::Usage => {
                    self.phase = Phase::Done;
                    let v = json!({
                        "id": self.meta.id,
                        "object": match self.meta.endpoint {
                            Endpoint::Completion => "text_completion",
                            Endpoint::Chat => "chat.completion.chunk",
                        },
                        "created": self.meta.created,
                        "model": self.meta.model,
                        "choices": [],
                        "usage": self.gen.usage(self.meta.prompt_tokens),
                    });
                    return Some(sse(&v));
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Some(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Phase::End => return None,
            }
        }
    }
}

fn stream_response(gen: Generation, meta: Meta) -> Response {
    let phase = match meta.endpoint {
        Endpoint::Chat => Phase::Role,
        Endpoint::Completion => Phase::Body,
    };
    let state = StreamState { gen, meta, phase };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        let bytes = s.next_bytes().await?;
        Some((Ok::<Bytes, Infallible>(bytes), s))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
