//! Helpers for the `serve` tests: start a server in-process on a free port, send requests with a
//! real HTTP client, parse SSE streams.
#![allow(dead_code)]

use std::time::Duration;

use infermeter::server::{self, KvSize, ServerConfig, ServerHandle};
use serde_json::Value;

pub struct TestServer {
    pub base: String,
    pub handle: ServerHandle,
    pub client: reqwest::Client,
}

/// A server config for tests: the CPU backend (the tests compare with CPU references exactly), a
/// small KV pool, the rest default.
pub fn config(model: &str) -> ServerConfig {
    let mut c = ServerConfig::new(model);
    c.backend.backend = infermeter::cli::backend::BackendChoice::Cpu;
    c.kv = KvSize::Blocks(512);
    c
}

pub async fn start(cfg: ServerConfig) -> TestServer {
    let (addr, handle) = server::spawn(cfg).await.expect("server starts");
    assert!(addr.ip().is_loopback());
    TestServer {
        base: format!("http://{addr}"),
        handle,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST JSON; (status, headers, body as JSON or, if not JSON, as a string).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body read");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, v)
    }

    /// POST a raw body.
    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST a streaming request and read the whole stream; the `data:` payloads in order.
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent");
        assert_eq!(r.status().as_u16(), 200, "streaming request refused");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        parse_sse(&r.text().await.expect("stream read"))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The value of an unlabelled metric in /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.get_text("/metrics").await;
        assert_eq!(status, 200);
        metric_value(&text, name).unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    }
}

pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

/// `data:` payloads of an SSE body; every event must be `data: ...\n\n`.
pub fn parse_sse(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "stream must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {e:?}"))
                .to_string()
        })
        .collect()
}

/// The JSON chunks of a stream (all but the final `[DONE]`, which must be there).
pub fn chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|_| panic!("chunk is not JSON: {e}")))
        .collect()
}

/// Text of a completion or chat stream, concatenated, and the finish reason.
pub fn stream_text(chunks: &[Value]) -> (String, Option<String>) {
    let mut text = String::new();
    let mut finish = None;
    for c in chunks {
        for choice in c["choices"].as_array().unwrap() {
            if let Some(t) = choice["text"].as_str() {
                text.push_str(t);
            }
            if let Some(t) = choice["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                assert!(finish.is_none(), "two finish reasons");
                finish = Some(f.to_string());
            }
        }
    }
    (text, finish)
}

/// The error body of an OpenAI-style error response, checked for shape.
pub fn error_of(body: &Value) -> &Value {
    let e = &body["error"];
    assert!(e["message"].is_string(), "no error.message in {body}");
    assert!(e["type"].is_string(), "no error.type in {body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    e
}
