//! The OpenAI-compatible HTTP client: one request to `/v1/completions` or `/v1/chat/completions`,
//! streamed (server-sent events) or not, timed on the run's monotonic clock.
//!
//! Request body: `model` (when known), `prompt` (text or token ids) or `messages`, `max_tokens`,
//! `stream`, `stream_options.include_usage` (streaming), optional `ignore_eos` and `min_tokens` (vLLM,
//! SGLang and llama.cpp extensions), then the `--extra-body` object merged over it key by key.
//!
//! Timing (seconds from the run's epoch, one [`Instant`] clock): `send_s` just before the request
//! goes to the connection (after the body is built, so building it counts as client queueing); every
//! content chunk is stamped when the network read that completed its event returned; `end_s` when
//! the body closed, or when `[DONE]` arrived (a server that keeps the body open after it is given
//! a short grace to close, so the connection can go back to the pool). A content chunk is an event
//! whose `choices[0].text` (completions) or `choices[0].delta.content` / `reasoning_content` /
//! `reasoning` (chat) is non-empty; role-only and usage-only chunks are not content. Reasoning and
//! answer text are kept apart: a multi-turn session replays only the answer, the tokenizer
//! fallback counts both.
//!
//! Leniency, for servers seen in the wild: an empty `finish_reason` (TGI sends `""` on every
//! chunk) is no finish; `"choices": null` is no choices; an empty `data:` event is a keep-alive;
//! events separated by a single newline (one SSE event with several JSON lines) are split into
//! their lines; a bare `{"object": "error", "message": …}` (FastChat-style) is a server error; a
//! JSON body (`content-type: application/json`) to a streaming request is read as a whole response.
//!
//! Failures never panic and never stop a run: each becomes a [`RequestError`] on the exchange, with
//! whatever was timed before it.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::sse::{SseError, SseEvent, SseParser};

/// Which OpenAI endpoint to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/v1/completions`: a text (or token-id) prompt.
    Completions,
    /// `/v1/chat/completions`: a list of messages.
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "completions" | "completion" | "text" => Ok(Endpoint::Completions),
            "chat" | "chat-completions" | "chat_completions" => Ok(Endpoint::Chat),
            _ => Err(crate::Error::Invalid(format!(
                "endpoint `{s}` is not one of: completions, chat"
            ))),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat",
        })
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// What to send as the prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    /// Token ids: `prompt: [ids]` on the completions endpoint (vLLM, SGLang and llama.cpp's
    /// `llama-server` accept it, llama-cpp-python's server does not); the chat endpoint cannot.
    Ids(Vec<u32>),
    /// Chat messages; on the completions endpoint their contents are joined with blank lines.
    Messages(Vec<ChatMessage>),
}

/// How the client talks to the server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server: `http://host:port`, optionally with `/v1` or the full endpoint path.
    pub url: String,
    pub endpoint: Endpoint,
    /// The `model` field; `None` leaves it out.
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub stream: bool,
    /// Ask for `usage` in the last streamed chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub min_tokens: Option<usize>,
    /// Merged over the body, key by key.
    pub extra_body: Map<String, Value>,
    /// Whole exchange, from send to the end of the body.
    pub request_timeout: Duration,
    /// Longest wait for the next bytes of the response.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Keep the generated text on the exchange (chat replay, tokenizer counts, `--save-text`).
    pub keep_text: bool,
}

impl ClientOptions {
    pub fn new(url: &str, endpoint: Endpoint) -> Self {
        ClientOptions {
            url: url.to_string(),
            endpoint,
            model: None,
            api_key: None,
            stream: true,
            include_usage: true,
            ignore_eos: false,
            min_tokens: None,
            extra_body: Map::new(),
            request_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            keep_text: false,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("timeout: no complete response within {0:?}")]
    Timeout(Duration),
    #[error("idle timeout: nothing received for {0:?}")]
    Idle(Duration),
    #[error("connection error: {0}")]
    Io(String),
    #[error("{0}")]
    Sse(#[from] SseError),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("server error event: {0}")]
    ServerError(String),
    #[error("incomplete stream: the body ended without [DONE] or a finish_reason")]
    Incomplete,
    #[error("request not sent: {0}")]
    Request(String),
}

impl RequestError {
    /// A short class for counting: `connect`, `http_<status>`, `timeout`, `idle_timeout`, `io`,
    /// `malformed_sse`, `malformed_json`, `server_error`, `incomplete`, `request`.
    pub fn kind(&self) -> String {
        match self {
            RequestError::Connect(_) => "connect".into(),
            RequestError::Http { status, .. } => format!("http_{status}"),
            RequestError::Timeout(_) => "timeout".into(),
            RequestError::Idle(_) => "idle_timeout".into(),
            RequestError::Io(_) => "io".into(),
            RequestError::Sse(_) => "malformed_sse".into(),
            RequestError::Malformed(_) => "malformed_json".into(),
            RequestError::ServerError(_) => "server_error".into(),
            RequestError::Incomplete => "incomplete".into(),
            RequestError::Request(_) => "request".into(),
        }
    }
}

/// Token counts the server reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<usize>,
    #[serde(default)]
    pub completion_tokens: Option<usize>,
}

/// One request and what came back, timed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exchange {
    pub send_s: f64,
    pub first_token_s: Option<f64>,
    pub chunk_times_s: Vec<f64>,
    pub end_s: Option<f64>,
    /// The generated answer text (only with `keep_text`).
    pub text: String,
    /// The generated reasoning text (`reasoning_content` / `reasoning`; only with `keep_text`).
    pub reasoning: String,
    pub usage: Option<Usage>,
    /// The `model` field of the response.
    pub server_model: Option<String>,
    pub finish_reason: Option<String>,
    pub http_status: Option<u16>,
    pub error: Option<RequestError>,
    /// `mock_emit_s` of each content chunk, when the server is infermeter's mock started with the
    /// same epoch (calibration): when the mock wrote the chunk.
    pub mock_emit_s: Vec<f64>,
}

/// A client for one server and endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    endpoint_url: String,
    base_url: String,
    opts: ClientOptions,
}

/// Errors of setting the client up (bad URL, HTTP client construction).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--url `{0}`: {1}")]
    Url(String, String),
    #[error("HTTP client: {0}")]
    Build(String),
    #[error("GET {url}: {msg}")]
    Models { url: String, msg: String },
}

/// How long a response may stay open after `[DONE]` before the client drops it.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(200);

/// The endpoint a URL's path names (`…/v1/chat/completions` or `…/v1/completions`), if any.
pub fn endpoint_of_url(url: &str) -> Option<Endpoint> {
    let u = url.trim().trim_end_matches('/');
    if u.ends_with("/v1/chat/completions") {
        Some(Endpoint::Chat)
    } else if u.ends_with("/v1/completions") {
        Some(Endpoint::Completions)
    } else {
        None
    }
}

/// Split a user-given URL into (base, endpoint URL). A URL with the full endpoint path keeps it
/// (the caller resolves `endpoint` against it with [`endpoint_of_url`]).
fn split_url(url: &str, endpoint: Endpoint) -> Result<(String, String), ClientError> {
    let u = url.trim().trim_end_matches('/');
    if u.starts_with("https://") {
        return Err(ClientError::Url(
            url.into(),
            "https is not supported by this build (no TLS); use http:// (e.g. on loopback or through a local tunnel)".into(),
        ));
    }
    if !u.starts_with("http://") || u.len() <= "http://".len() {
        return Err(ClientError::Url(
            url.into(),
            "expected http://HOST:PORT[/v1[/completions|/chat/completions]]".into(),
        ));
    }
    for suffix in ["/v1/chat/completions", "/v1/completions"] {
        if let Some(base) = u.strip_suffix(suffix) {
            return Ok((base.to_string(), u.to_string()));
        }
    }
    let base = u.strip_suffix("/v1").unwrap_or(u).to_string();
    let full = format!("{base}{}", endpoint.path());
    Ok((base, full))
}

/// The messages of an error and its sources, joined (reqwest's own message hides the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn classify(e: &reqwest::Error) -> RequestError {
    let msg = chain(e);
    if e.is_connect() {
        RequestError::Connect(msg)
    } else if e.is_timeout() {
        RequestError::Io(msg)
    } else if e.is_builder() {
        RequestError::Request(msg)
    } else {
        RequestError::Io(msg)
    }
}

fn excerpt(s: &str, n: usize) -> String {
    let t = s.trim();
    if t.len() <= n {
        return t.to_string();
    }
    let mut end = n;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &t[..end])
}

/// `null` as the type's default (`"choices": null` from some servers' usage chunks).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default, deserialize_with = "null_as_default")]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    error: Option<Value>,
    /// `"error"` with `message`: the error object FastChat-style servers send bare.
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    mock_emit_s: Option<f64>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    message: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

impl Choice {
    fn delta(&self) -> Option<&Delta> {
        self.delta.as_ref().or(self.message.as_ref())
    }

    /// The answer text this choice carries, if any: `text` (completions) or `content` (chat).
    fn answer(&self) -> Option<&str> {
        non_empty(&self.text).or_else(|| self.delta().and_then(|d| non_empty(&d.content)))
    }

    /// The reasoning text it carries, if any. `reasoning_content` or else `reasoning`, not both:
    /// servers that send both (vLLM, for compatibility) send the same text twice.
    fn reasoning(&self) -> Option<&str> {
        self.delta()
            .and_then(|d| non_empty(&d.reasoning_content).or_else(|| non_empty(&d.reasoning)))
    }
}

impl OpenAiClient {
    pub fn new(opts: ClientOptions) -> Result<Self, ClientError> {
        let (base_url, endpoint_url) = split_url(&opts.url, opts.endpoint)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(opts.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(usize::MAX)
            .build()
            .map_err(|e| ClientError::Build(chain(&e)))?;
        Ok(OpenAiClient {
            http,
            endpoint_url,
            base_url,
            opts,
        })
    }

    /// The endpoint URL requests go to.
    pub fn url(&self) -> &str {
        &self.endpoint_url
    }

    /// The server's base URL (`http://host:port`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Set the `model` field (e.g. from `/v1/models`).
    pub fn set_model(&mut self, model: Option<String>) {
        self.opts.model = model;
    }

    /// Keep (or not) the generated text on every exchange.
    pub fn set_keep_text(&mut self, keep: bool) {
        self.opts.keep_text = keep;
    }

    /// The request body for `prompt`, as JSON.
    pub fn body(&self, prompt: &Prompt, max_tokens: usize) -> Result<Map<String, Value>, String> {
        let o = &self.opts;
        let mut b = Map::new();
        if let Some(m) = &o.model {
            b.insert("model".into(), Value::from(m.as_str()));
        }
        match (o.endpoint, prompt) {
            (Endpoint::Completions, Prompt::Text(t)) => {
                b.insert("prompt".into(), Value::from(t.as_str()));
            }
            (Endpoint::Completions, Prompt::Ids(ids)) => {
                b.insert("prompt".into(), Value::from(ids.clone()));
            }
            (Endpoint::Completions, Prompt::Messages(ms)) => {
                let joined: Vec<&str> = ms.iter().map(|m| m.content.as_str()).collect();
                b.insert("prompt".into(), Value::from(joined.join("\n\n")));
            }
            (Endpoint::Chat, Prompt::Text(t)) => {
                b.insert(
                    "messages".into(),
                    serde_json::json!([{"role": "user", "content": t}]),
                );
            }
            (Endpoint::Chat, Prompt::Messages(ms)) => {
                let v = serde_json::to_value(ms).map_err(|e| e.to_string())?;
                b.insert("messages".into(), v);
            }
            (Endpoint::Chat, Prompt::Ids(_)) => {
                return Err(
                    "the chat endpoint cannot take token-id prompts: give --tokenizer to \
                            send text, or use --endpoint completions"
                        .into(),
                )
            }
        }
        b.insert("max_tokens".into(), Value::from(max_tokens));
        b.insert("stream".into(), Value::from(o.stream));
        if o.stream && o.include_usage {
            b.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
        if o.ignore_eos {
            b.insert("ignore_eos".into(), Value::from(true));
        }
        if let Some(n) = o.min_tokens {
            b.insert("min_tokens".into(), Value::from(n));
        }
        for (k, v) in &o.extra_body {
            b.insert(k.clone(), v.clone());
        }
        Ok(b)
    }

    /// `GET /v1/models`: the ids the server lists.
    pub async fn list_models(&self) -> Result<Vec<String>, ClientError> {
        let url = format!("{}/v1/models", self.base_url);
        let err = |msg: String| ClientError::Models {
            url: url.clone(),
            msg,
        };
        let mut req = self.http.get(&url);
        if let Some(k) = &self.opts.api_key {
            req = req.bearer_auth(k);
        }
        let fut = async {
            let resp = req.send().await.map_err(|e| err(chain(&e)))?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| err(chain(&e)))?;
            if !status.is_success() {
                return Err(err(format!(
                    "HTTP {}: {}",
                    status.as_u16(),
                    excerpt(&text, 200)
                )));
            }
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| err(format!("not JSON ({e}): {}", excerpt(&text, 200))))?;
            Ok(v["data"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["id"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default())
        };
        match tokio::time::timeout(self.opts.idle_timeout.min(Duration::from_secs(30)), fut).await {
            Ok(r) => r,
            Err(_) => Err(err("timed out".into())),
        }
    }

    /// Send one request and time its response; never fails (errors land on the exchange).
    pub async fn send(&self, prompt: &Prompt, max_tokens: usize, epoch: Instant) -> Exchange {
        let mut ex = Exchange::default();
        let body = match self
            .body(prompt, max_tokens)
            .and_then(|b| serde_json::to_vec(&b).map_err(|e| e.to_string()))
        {
            Ok(b) => b,
            Err(e) => {
                ex.send_s = epoch.elapsed().as_secs_f64();
                ex.error = Some(RequestError::Request(e));
                return ex;
            }
        };
        let mut req = self
            .http
            .post(&self.endpoint_url)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream, application/json");
        if let Some(k) = &self.opts.api_key {
            req = req.bearer_auth(k);
        }
        let req = req.body(body);
        ex.send_s = epoch.elapsed().as_secs_f64();
        let limit = self.opts.request_timeout;
        let outcome = tokio::time::timeout(limit, self.exchange(req, epoch, &mut ex)).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ex.error = Some(e),
            Err(_) => ex.error = Some(RequestError::Timeout(limit)),
        }
        if ex.error.is_some() && ex.end_s.is_none() {
            ex.end_s = Some(epoch.elapsed().as_secs_f64());
        }
        ex
    }

    async fn next_bytes(
        &self,
        resp: &mut reqwest::Response,
    ) -> Result<Option<axum::body::Bytes>, RequestError> {
        match tokio::time::timeout(self.opts.idle_timeout, resp.chunk()).await {
            Err(_) => Err(RequestError::Idle(self.opts.idle_timeout)),
            Ok(Err(e)) => Err(RequestError::Io(chain(&e))),
            Ok(Ok(b)) => Ok(b),
        }
    }

    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        epoch: Instant,
        ex: &mut Exchange,
    ) -> Result<(), RequestError> {
        let mut resp = req.send().await.map_err(|e| classify(&e))?;
        let status = resp.status().as_u16();
        ex.http_status = Some(status);
        if !(200..300).contains(&status) {
            let mut body = Vec::new();
            while body.len() < 4096 {
                match self.next_bytes(&mut resp).await {
                    Ok(Some(b)) => body.extend_from_slice(&b),
                    _ => break,
                }
            }
            return Err(RequestError::Http {
                status,
                body: excerpt(&String::from_utf8_lossy(&body), 300),
            });
        }
        // a server (or gateway) that ignores `stream` answers with one JSON document
        let json_body = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !self.opts.stream || json_body {
            return self.read_whole(resp, epoch, ex).await;
        }
        let mut parser = SseParser::new();
        let mut events: Vec<SseEvent> = Vec::new();
        let mut done = false;
        while !done {
            let Some(bytes) = self.next_bytes(&mut resp).await? else {
                break;
            };
            let t = epoch.elapsed().as_secs_f64();
            let fed = parser.feed(&bytes, &mut events);
            for ev in events.drain(..) {
                if !done {
                    done = self.handle_event(&ev, t, ex)?;
                }
            }
            fed?;
        }
        if done {
            // The request ends at [DONE]. Drain what follows (normally just the end of the
            // chunked body) so the connection goes back to the pool, but only briefly: a server
            // that keeps the body open must not turn a finished request into an idle timeout.
            let t = epoch.elapsed().as_secs_f64();
            let _ = tokio::time::timeout(DRAIN_AFTER_DONE, async {
                while let Ok(Some(_)) = resp.chunk().await {}
            })
            .await;
            ex.end_s = Some(t);
            return Ok(());
        }
        let t = epoch.elapsed().as_secs_f64();
        parser.finish(&mut events)?;
        for ev in events.drain(..) {
            if !done {
                done = self.handle_event(&ev, t, ex)?;
            }
        }
        ex.end_s = Some(t);
        if !done && ex.finish_reason.is_none() {
            return Err(RequestError::Incomplete);
        }
        Ok(())
    }

    /// Apply one SSE event; `Ok(true)` at `[DONE]`.
    fn handle_event(&self, ev: &SseEvent, t: f64, ex: &mut Exchange) -> Result<bool, RequestError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        if ev.event.as_deref() == Some("error") {
            return Err(RequestError::ServerError(excerpt(data, 300)));
        }
        if data.is_empty() {
            return Ok(false); // an empty `data:` line used as a keep-alive
        }
        match serde_json::from_str::<Chunk>(data) {
            Ok(chunk) => self.apply_chunk(chunk, t, ex),
            // Several JSON documents in one event: a server that ends its events with a single
            // newline (the SSE spec joins such `data:` lines into one event). Take each line as
            // its own chunk when every line parses; otherwise report the original error.
            Err(e) if data.contains('\n') => {
                // parse every line first: a line that does not parse leaves the event malformed
                let mut chunks = Vec::new();
                for line in data.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    if line == "[DONE]" {
                        break;
                    }
                    match serde_json::from_str::<Chunk>(line) {
                        Ok(c) => chunks.push(c),
                        Err(_) => {
                            return Err(RequestError::Malformed(format!(
                                "{e}: {}",
                                excerpt(data, 200)
                            )))
                        }
                    }
                }
                let done = data.lines().any(|l| l.trim() == "[DONE]");
                for chunk in chunks {
                    self.apply_chunk(chunk, t, ex)?;
                }
                Ok(done)
            }
            Err(e) => Err(RequestError::Malformed(format!(
                "{e}: {}",
                excerpt(data, 200)
            ))),
        }
    }

    fn apply_chunk(&self, chunk: Chunk, t: f64, ex: &mut Exchange) -> Result<bool, RequestError> {
        let bare_error = (chunk.object.as_deref() == Some("error"))
            .then_some(chunk.message)
            .flatten();
        if let Some(err) = chunk.error.or(bare_error) {
            let msg = match &err {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            return Err(RequestError::ServerError(excerpt(&msg, 300)));
        }
        if ex.server_model.is_none() {
            ex.server_model = chunk.model.filter(|m| !m.is_empty());
        }
        if chunk.usage.is_some() {
            ex.usage = chunk.usage;
        }
        for c in chunk.choices.iter().filter(|c| c.index.unwrap_or(0) == 0) {
            let (answer, reasoning) = (c.answer(), c.reasoning());
            if answer.is_some() || reasoning.is_some() {
                ex.chunk_times_s.push(t);
                ex.first_token_s.get_or_insert(t);
                if self.opts.keep_text {
                    ex.reasoning.push_str(reasoning.unwrap_or_default());
                    ex.text.push_str(answer.unwrap_or_default());
                }
                if let Some(m) = chunk.mock_emit_s {
                    ex.mock_emit_s.push(m);
                }
            }
            // TGI sends `"finish_reason": ""` on every chunk before the last
            if let Some(f) = non_empty(&c.finish_reason) {
                ex.finish_reason = Some(f.to_string());
            }
        }
        Ok(false)
    }

    async fn read_whole(
        &self,
        mut resp: reqwest::Response,
        epoch: Instant,
        ex: &mut Exchange,
    ) -> Result<(), RequestError> {
        let mut body = Vec::new();
        while let Some(b) = self.next_bytes(&mut resp).await? {
            body.extend_from_slice(&b);
            if body.len() > super::sse::DEFAULT_MAX_BYTES {
                return Err(RequestError::Malformed("response body above 16 MiB".into()));
            }
        }
        let t = epoch.elapsed().as_secs_f64();
        ex.end_s = Some(t);
        let chunk: Chunk = serde_json::from_slice(&body).map_err(|e| {
            RequestError::Malformed(format!(
                "{e}: {}",
                excerpt(&String::from_utf8_lossy(&body), 200)
            ))
        })?;
        self.apply_chunk(chunk, t, ex)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(endpoint: Endpoint) -> OpenAiClient {
        let mut o = ClientOptions::new("http://127.0.0.1:9", endpoint);
        o.keep_text = true;
        OpenAiClient::new(o).unwrap()
    }

    #[test]
    fn urls_are_normalised() {
        let c = |u: &str, e| split_url(u, e).unwrap();
        assert_eq!(
            c("http://h:1", Endpoint::Chat),
            ("http://h:1".into(), "http://h:1/v1/chat/completions".into())
        );
        assert_eq!(
            c("http://h:1/v1/", Endpoint::Completions),
            ("http://h:1".into(), "http://h:1/v1/completions".into())
        );
        assert_eq!(
            c("http://h:1/v1/completions", Endpoint::Chat).1,
            "http://h:1/v1/completions"
        );
        assert!(split_url("https://h", Endpoint::Chat)
            .unwrap_err()
            .to_string()
            .contains("https"));
        assert!(split_url("h:1", Endpoint::Chat).is_err());
    }

    #[test]
    fn a_full_endpoint_path_names_the_endpoint() {
        assert_eq!(
            endpoint_of_url("http://h:1/v1/chat/completions/"),
            Some(Endpoint::Chat)
        );
        assert_eq!(
            endpoint_of_url(" http://h:1/v1/completions"),
            Some(Endpoint::Completions)
        );
        assert_eq!(endpoint_of_url("http://h:1/v1"), None);
        assert_eq!(endpoint_of_url("http://h:1"), None);
    }

    #[test]
    fn bodies_carry_the_options_and_extra_body_wins() {
        let mut o = ClientOptions::new("http://h:1", Endpoint::Completions);
        o.model = Some("m".into());
        o.ignore_eos = true;
        o.min_tokens = Some(3);
        o.extra_body = serde_json::from_str(r#"{"temperature":0,"max_tokens":7}"#).unwrap();
        let c = OpenAiClient::new(o).unwrap();
        let b = Value::Object(c.body(&Prompt::Ids(vec![1, 2]), 5).unwrap());
        assert_eq!(
            b,
            serde_json::json!({"model":"m","prompt":[1,2],"max_tokens":7,"stream":true,
                "stream_options":{"include_usage":true},"ignore_eos":true,"min_tokens":3,
                "temperature":0})
        );
        let chat = client(Endpoint::Chat);
        let b = Value::Object(chat.body(&Prompt::Text("hi".into()), 4).unwrap());
        assert_eq!(
            b["messages"],
            serde_json::json!([{"role":"user","content":"hi"}])
        );
        assert!(b.get("model").is_none());
        assert!(chat.body(&Prompt::Ids(vec![1]), 4).is_err());
        let comp = client(Endpoint::Completions);
        let msgs = Prompt::Messages(vec![
            ChatMessage::new("user", "a"),
            ChatMessage::new("assistant", "b"),
        ]);
        assert_eq!(comp.body(&msgs, 1).unwrap()["prompt"], "a\n\nb");
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.into(),
            id: None,
        }
    }

    #[test]
    fn events_are_interpreted() {
        let c = client(Endpoint::Chat);
        let mut ex = Exchange::default();
        let role =
            r#"{"model":"srv","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert!(!c.handle_event(&ev(role), 0.1, &mut ex).unwrap());
        assert_eq!(ex.first_token_s, None, "an empty role chunk is not content");
        let tok = r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
        c.handle_event(&ev(tok), 0.2, &mut ex).unwrap();
        let fin = r#"{"choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}]}"#;
        c.handle_event(&ev(fin), 0.3, &mut ex).unwrap();
        let usage =
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        c.handle_event(&ev(usage), 0.4, &mut ex).unwrap();
        assert!(c.handle_event(&ev("[DONE]"), 0.5, &mut ex).unwrap());
        assert_eq!(ex.first_token_s, Some(0.2));
        assert_eq!(ex.chunk_times_s, vec![0.2, 0.3]);
        assert_eq!(ex.text, "Hi!");
        assert_eq!(ex.server_model.as_deref(), Some("srv"));
        assert_eq!(ex.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            ex.usage,
            Some(Usage {
                prompt_tokens: Some(5),
                completion_tokens: Some(2)
            })
        );
    }

    #[test]
    fn bad_events_are_typed_errors() {
        let c = client(Endpoint::Completions);
        let mut ex = Exchange::default();
        let e = c
            .handle_event(&ev("{\"choices\":[{"), 0.0, &mut ex)
            .unwrap_err();
        assert_eq!(e.kind(), "malformed_json");
        let e = c
            .handle_event(&ev(r#"{"error":{"message":"boom"}}"#), 0.0, &mut ex)
            .unwrap_err();
        assert_eq!(e.kind(), "server_error");
        assert!(e.to_string().contains("boom"));
        let named = SseEvent {
            event: Some("error".into()),
            data: "overloaded".into(),
            id: None,
        };
        assert_eq!(
            c.handle_event(&named, 0.0, &mut ex).unwrap_err().kind(),
            "server_error"
        );
        let e = c.handle_event(&ev("[1,2]"), 0.0, &mut ex).unwrap_err();
        assert_eq!(e.kind(), "malformed_json");
        assert_eq!(
            RequestError::Http {
                status: 503,
                body: String::new()
            }
            .kind(),
            "http_503"
        );
    }

    #[test]
    fn completions_text_and_reasoning_count_as_content() {
        let c = client(Endpoint::Completions);
        let mut ex = Exchange::default();
        c.handle_event(
            &ev(r#"{"choices":[{"text":" a"},{"index":1,"text":"x"}]}"#),
            1.0,
            &mut ex,
        )
        .unwrap();
        c.handle_event(&ev(r#"{"choices":[{"text":""}]}"#), 2.0, &mut ex)
            .unwrap();
        c.handle_event(
            &ev(r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#),
            3.0,
            &mut ex,
        )
        .unwrap();
        assert_eq!(ex.chunk_times_s, vec![1.0, 3.0]);
        assert_eq!(ex.text, " a");
        assert_eq!(ex.reasoning, "hm");
    }

    #[test]
    fn reasoning_and_answer_in_one_chunk_are_both_kept_apart() {
        let c = client(Endpoint::Chat);
        let mut ex = Exchange::default();
        let both = r#"{"choices":[{"index":0,"delta":{"reasoning":"R","reasoning_content":"R","content":"A"}}]}"#;
        c.handle_event(&ev(both), 1.0, &mut ex).unwrap();
        assert_eq!((ex.text.as_str(), ex.reasoning.as_str()), ("A", "R"));
        assert_eq!(ex.chunk_times_s, vec![1.0], "one chunk, one time");
        // a non-streamed message with both
        let mut ex = Exchange::default();
        let whole = r#"{"choices":[{"message":{"content":"Hello","reasoning_content":"think"},"finish_reason":"stop"}]}"#;
        c.handle_event(&ev(whole), 1.0, &mut ex).unwrap();
        assert_eq!(
            (ex.text.as_str(), ex.reasoning.as_str()),
            ("Hello", "think")
        );
    }

    /// Serve one connection with `response` (raw HTTP) and then keep it open for 30 s.
    async fn raw_server(response: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            // read the request head and its body (content-length)
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len: usize = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if got.len() >= head_end + 4 + len || n == 0 {
                        break;
                    }
                }
            }
            sock.write_all(response.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        url
    }

    fn raw_client(url: &str) -> OpenAiClient {
        let mut o = ClientOptions::new(url, Endpoint::Chat);
        o.keep_text = true;
        o.idle_timeout = Duration::from_secs(10);
        OpenAiClient::new(o).unwrap()
    }

    #[tokio::test]
    async fn a_stream_kept_open_after_done_ends_at_done() {
        // chunked body whose terminating chunk never comes
        const R: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
            3a\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\r\n\
            e\r\ndata: [DONE]\n\n\r\n";
        let url = raw_server(R).await;
        let epoch = Instant::now();
        let ex = raw_client(&url)
            .send(&Prompt::Text("x".into()), 4, epoch)
            .await;
        assert_eq!(ex.error, None);
        assert_eq!(ex.text, "Hi");
        let took = ex.end_s.unwrap() - ex.send_s;
        assert!(
            took < 5.0,
            "ended {took} s after sending: waited for the idle timeout"
        );
    }

    #[tokio::test]
    async fn a_json_body_to_a_streaming_request_is_a_whole_response() {
        const R: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 135\r\n\r\n\
            {\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello world\"},\"finish_reason\":\"stop\"}],\"usage\":{\"completion_tokens\":2}}";
        assert_eq!(
            R.split("\r\n\r\n").nth(1).unwrap().len(),
            135,
            "content-length"
        );
        let url = raw_server(R).await;
        let ex = raw_client(&url)
            .send(&Prompt::Text("x".into()), 4, Instant::now())
            .await;
        assert_eq!(ex.error, None);
        assert_eq!(ex.text, "Hello world");
        assert_eq!(ex.finish_reason.as_deref(), Some("stop"));
        assert_eq!(ex.usage.unwrap().completion_tokens, Some(2));
    }

    #[test]
    fn servers_in_the_wild_are_read_leniently() {
        let c = client(Endpoint::Completions);
        // TGI: an empty finish_reason on every chunk is no finish
        let mut ex = Exchange::default();
        let tgi = r#"{"choices":[{"index":0,"text":"Hello","finish_reason":""}]}"#;
        c.handle_event(&ev(tgi), 1.0, &mut ex).unwrap();
        assert_eq!(ex.finish_reason, None);
        // an empty data line is a keep-alive
        assert!(!c.handle_event(&ev(""), 1.1, &mut ex).unwrap());
        // "choices": null in a usage chunk
        let usage = r#"{"choices":null,"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        c.handle_event(&ev(usage), 1.2, &mut ex).unwrap();
        assert_eq!(ex.usage.unwrap().completion_tokens, Some(1));
        // an empty model is no model
        let mut ex = Exchange::default();
        let azure = r#"{"model":"","choices":[]}"#;
        c.handle_event(&ev(azure), 0.5, &mut ex).unwrap();
        c.handle_event(&ev(r#"{"model":"gpt","choices":[]}"#), 0.6, &mut ex)
            .unwrap();
        assert_eq!(ex.server_model.as_deref(), Some("gpt"));
        // two JSON lines in one event (events ended by a single newline), then [DONE]
        let mut ex = Exchange::default();
        let joined = "{\"choices\":[{\"text\":\"a\"}]}\n{\"choices\":[{\"text\":\"b\",\"finish_reason\":\"stop\"}]}\n[DONE]";
        assert!(c.handle_event(&ev(joined), 2.0, &mut ex).unwrap());
        assert_eq!(ex.text, "ab");
        assert_eq!(ex.chunk_times_s, vec![2.0, 2.0]);
        assert_eq!(ex.finish_reason.as_deref(), Some("stop"));
        // ... but a line that does not parse is still malformed
        let bad = "{\"choices\":[]}\n{oops";
        assert_eq!(
            c.handle_event(&ev(bad), 2.0, &mut ex).unwrap_err().kind(),
            "malformed_json"
        );
        // FastChat-style bare error object
        let e = c
            .handle_event(
                &ev(r#"{"object":"error","message":"CUDA out of memory","code":500}"#),
                3.0,
                &mut ex,
            )
            .unwrap_err();
        assert_eq!(e.kind(), "server_error");
        assert!(e.to_string().contains("CUDA out of memory"), "{e}");
    }
}
