//! The OpenAI request format: parsing and validating request bodies (every error names its field),
//! and OpenAI-style error responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::engine::SamplingParams;

/// An error response: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    /// 400 for a bad value of `param`.
    pub(crate) fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            code: Some("invalid_value"),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400 for a parameter this server does not support.
    pub(crate) fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self {
            code: Some("unsupported_parameter"),
            ..Self::invalid(param, message)
        }
    }

    pub(crate) fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub(crate) fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// Parse a request body: a JSON object.
pub(crate) fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("malformed JSON body: {e}"),
        )
        .with_code("invalid_json")
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!(
                "the request body must be a JSON object, got {}",
                type_name(&other)
            ),
        )
        .with_code("invalid_json")),
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        let mut end = 57;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    } else {
        s
    }
}

/// Typed access to a request's fields; `null` counts as absent.
pub(crate) struct Fields<'a>(pub &'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid(
                key,
                format!("`{key}` must be a boolean, got {}", short(v)),
            )),
        }
    }

    pub(crate) fn f64(&self, key: &str) -> Result<Option<f64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                ApiError::invalid(key, format!("`{key}` must be a number, got {}", short(v)))
            }),
        }
    }

    pub(crate) fn i64(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| {
                    let x = v.as_f64()?;
                    (x.fract() == 0.0 && x.abs() <= 9_007_199_254_740_992.0).then_some(x as i64)
                })
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid(key, format!("`{key}` must be an integer, got {}", short(v)))
                }),
        }
    }

    /// A non-negative integer (`2.0` counts: Python clients and vLLM's pydantic accept it).
    pub(crate) fn usize(&self, key: &str) -> Result<Option<usize>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| integral_f64(v))
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid(
                        key,
                        format!("`{key}` must be a non-negative integer, got {}", short(v)),
                    )
                }),
        }
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::invalid(
                key,
                format!("`{key}` must be a string, got {}", short(v)),
            )),
        }
    }
}

/// A prompt as sent: text or token ids.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

fn token_ids(param: &str, list: &[Value]) -> Result<Vec<u32>, ApiError> {
    list.iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        param,
                        format!(
                            "`{param}`: token ids must be non-negative integers, got {}",
                            short(v)
                        ),
                    )
                })
        })
        .collect()
}

/// `prompt` of a completion: a string, token ids, or a list of one of either.
pub(crate) fn parse_prompt(f: &Fields) -> Result<PromptInput, ApiError> {
    let multi = || {
        ApiError::unsupported(
            "prompt",
            "`prompt`: batched prompts are not supported; send one prompt per request",
        )
    };
    match f.get("prompt") {
        None => Err(ApiError::invalid("prompt", "`prompt` is required")
            .with_code("missing_required_parameter")),
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(items)) => match items.first() {
            None => Err(ApiError::invalid("prompt", "`prompt` is an empty list")),
            Some(Value::String(s)) => {
                if items.len() > 1 {
                    return Err(multi());
                }
                Ok(PromptInput::Text(s.clone()))
            }
            Some(Value::Array(inner)) => {
                if items.len() > 1 {
                    return Err(multi());
                }
                Ok(PromptInput::Ids(token_ids("prompt", inner)?))
            }
            Some(Value::Number(_)) => Ok(PromptInput::Ids(token_ids("prompt", items)?)),
            Some(v) => Err(ApiError::invalid(
                "prompt",
                format!(
                    "`prompt` must be a string, a list of token ids, or a list of one of either; found a list of {}",
                    type_name(v)
                ),
            )),
        },
        Some(v) => Err(ApiError::invalid(
            "prompt",
            format!(
                "`prompt` must be a string or a list of token ids, got {}",
                type_name(v)
            ),
        )),
    }
}

/// Generation parameters common to both endpoints.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GenParams {
    /// None: as many as the context allows.
    pub max_tokens: Option<usize>,
    /// The request's name for it (`max_tokens`, or `max_completion_tokens` on chat), for errors.
    pub max_tokens_key: &'static str,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub min_tokens: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub return_token_ids: bool,
}

const MAX_STOPS: usize = 16;

/// A JSON number with no fractional part, as a u64 (`2.0` → 2); `None` for anything else.
fn integral_f64(v: &Value) -> Option<u64> {
    let x = v.as_f64()?;
    // 2^53: above it not every integer has an f64, and `as` would saturate silently
    (x.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&x)).then_some(x as u64)
}

fn reject_if(cond: bool, param: &str, msg: &str) -> Result<(), ApiError> {
    if cond {
        Err(ApiError::unsupported(param, msg))
    } else {
        Ok(())
    }
}

/// Parse the generation parameters; `chat` selects the chat endpoint's names and extras.
pub(crate) fn parse_params(f: &Fields, chat: bool) -> Result<GenParams, ApiError> {
    // accepted and reported back as the served name; must be a string when given
    f.string("model")?;
    // unsupported features, rejected clearly rather than ignored
    if let Some(n) = f.i64("n")? {
        reject_if(
            n != 1,
            "n",
            &format!("`n` must be 1 (got {n}): infermeter serve returns one choice per request; send separate requests for more"),
        )?;
    }
    if let Some(b) = f.i64("best_of")? {
        reject_if(b != 1, "best_of", "`best_of` must be 1")?;
    }
    for key in ["presence_penalty", "frequency_penalty"] {
        if let Some(p) = f.f64(key)? {
            reject_if(p != 0.0, key, &format!("`{key}` is not supported (only 0)"))?;
        }
    }
    if let Some(p) = f.f64("repetition_penalty")? {
        reject_if(
            p != 1.0,
            "repetition_penalty",
            "`repetition_penalty` is not supported (only 1)",
        )?;
    }
    if let Some(b) = f.get("logit_bias") {
        let empty = b.as_object().is_some_and(|m| m.is_empty());
        reject_if(!empty, "logit_bias", "`logit_bias` is not supported")?;
    }
    if chat {
        if let Some(l) = f.bool("logprobs")? {
            reject_if(l, "logprobs", "`logprobs` is not supported")?;
        }
        reject_if(
            f.get("top_logprobs").is_some(),
            "top_logprobs",
            "`top_logprobs` is not supported",
        )?;
        if let Some(t) = f.get("tools") {
            let empty = t.as_array().is_some_and(|a| a.is_empty());
            reject_if(
                !empty,
                "tools",
                "`tools` (function calling) is not supported",
            )?;
        }
        reject_if(
            f.get("functions").is_some(),
            "functions",
            "`functions` (function calling) is not supported",
        )?;
        if let Some(tc) = f.get("tool_choice") {
            reject_if(
                tc.as_str() != Some("none") && tc.as_str() != Some("auto"),
                "tool_choice",
                "`tool_choice` is not supported",
            )?;
        }
        if let Some(rf) = f.get("response_format") {
            let text = rf.get("type").and_then(Value::as_str) == Some("text");
            reject_if(
                !text,
                "response_format",
                "`response_format` other than {\"type\": \"text\"} is not supported",
            )?;
        }
    } else {
        reject_if(
            f.get("logprobs").is_some(),
            "logprobs",
            "`logprobs` is not supported",
        )?;
        if let Some(e) = f.bool("echo")? {
            reject_if(e, "echo", "`echo` is not supported")?;
        }
        reject_if(
            f.get("suffix").is_some(),
            "suffix",
            "`suffix` is not supported",
        )?;
    }

    let max_key = if chat && f.get("max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match f.usize(max_key)? {
        Some(0) => {
            return Err(ApiError::invalid(
                max_key,
                format!("`{max_key}` must be at least 1"),
            ))
        }
        other => other,
    };
    let temperature = f.f64("temperature")?.unwrap_or(1.0);
    if !((temperature as f32).is_finite() && temperature >= 0.0) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be a number >= 0, got {temperature}"),
        ));
    }
    let top_p = f.f64("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match f.i64("top_k")? {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1 or 0 (off) or a positive integer, got {k}"),
            ))
        }
    };
    let seed = match f.get("seed") {
        None => rand::random::<u64>(),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(u), _) => u,
            (None, Some(i)) => i as u64,
            _ => {
                return Err(ApiError::invalid(
                    "seed",
                    format!("`seed` must be an integer, got {}", short(v)),
                ))
            }
        },
    };
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(
                        "stop",
                        format!(
                            "`stop` must be a string or a list of strings, found {}",
                            short(v)
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "`stop` must be a string or a list of strings, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "`stop` strings must not be empty",
        ));
    }
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop`: at most {MAX_STOPS} stop strings, got {}",
                stop.len()
            ),
        ));
    }
    let stop_token_ids = match f.get("stop_token_ids") {
        None => Vec::new(),
        Some(Value::Array(list)) => token_ids("stop_token_ids", list)?,
        Some(v) => {
            return Err(ApiError::invalid(
                "stop_token_ids",
                format!(
                    "`stop_token_ids` must be a list of token ids, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    let min_tokens = f.usize("min_tokens")?.unwrap_or(0);
    if let Some(m) = max_tokens {
        if min_tokens > m {
            return Err(ApiError::invalid(
                "min_tokens",
                format!("`min_tokens` ({min_tokens}) must not exceed `{max_key}` ({m})"),
            ));
        }
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::invalid(
                    "stream_options",
                    "`stream_options` is only allowed when `stream` is true",
                ));
            }
            Fields(o)
                .bool("include_usage")
                .map_err(|_| {
                    ApiError::invalid(
                        "stream_options.include_usage",
                        "`stream_options.include_usage` must be a boolean",
                    )
                })?
                .unwrap_or(false)
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("`stream_options` must be an object, got {}", type_name(v)),
            ))
        }
    };
    let return_token_ids = f.bool("return_token_ids")?.unwrap_or(false);
    Ok(GenParams {
        max_tokens,
        max_tokens_key: max_key,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            seed,
        },
        stop,
        stop_token_ids,
        ignore_eos,
        min_tokens,
        stream,
        include_usage,
        return_token_ids,
    })
}

/// A chat request's messages, normalised for the template: `content` as a string (text parts
/// joined) or null; other keys kept.
pub(crate) fn parse_messages(f: &Fields) -> Result<Vec<Value>, ApiError> {
    let list = match f.get("messages") {
        None => {
            return Err(ApiError::invalid("messages", "`messages` is required")
                .with_code("missing_required_parameter"))
        }
        Some(Value::Array(list)) => list,
        Some(v) => {
            return Err(ApiError::invalid(
                "messages",
                format!("`messages` must be a list, got {}", type_name(v)),
            ))
        }
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let param = format!("messages[{i}]");
            let Value::Object(obj) = m else {
                return Err(ApiError::invalid(
                    &param,
                    format!("`{param}` must be an object, got {}", type_name(m)),
                ));
            };
            match obj.get("role") {
                Some(Value::String(r)) if !r.is_empty() => {}
                _ => {
                    return Err(ApiError::invalid(
                        &format!("{param}.role"),
                        format!("`{param}.role` must be a non-empty string"),
                    ))
                }
            }
            let content = match obj.get("content") {
                None | Some(Value::Null) => Value::Null,
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        let kind = p.get("type").and_then(Value::as_str);
                        match (kind, p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ApiError::unsupported(
                                    &format!("{param}.content[{j}]"),
                                    format!(
                                        "`{param}.content[{j}]`: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported"
                                    ),
                                ))
                            }
                        }
                    }
                    Value::String(text)
                }
                Some(v) => {
                    return Err(ApiError::invalid(
                        &format!("{param}.content"),
                        format!(
                            "`{param}.content` must be a string, a list of text parts or null, got {}",
                            type_name(v)
                        ),
                    ))
                }
            };
            let mut out = obj.clone();
            out.insert("content".into(), content);
            Ok(Value::Object(out))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn prompts_in_every_form() {
        let p = |v: Value| parse_prompt(&Fields(&fields(json!({ "prompt": v }))));
        assert_eq!(p(json!("hi")).unwrap(), PromptInput::Text("hi".into()));
        assert_eq!(p(json!(["hi"])).unwrap(), PromptInput::Text("hi".into()));
        assert_eq!(p(json!([1, 2])).unwrap(), PromptInput::Ids(vec![1, 2]));
        assert_eq!(p(json!([[1, 2]])).unwrap(), PromptInput::Ids(vec![1, 2]));
        assert!(p(json!(["a", "b"]))
            .unwrap_err()
            .message
            .contains("batched"));
        assert!(p(json!([1, -2]))
            .unwrap_err()
            .message
            .contains("non-negative"));
        assert!(p(json!([])).is_err());
        assert_eq!(p(json!(3)).unwrap_err().param.as_deref(), Some("prompt"));
    }

    #[test]
    fn params_are_checked_and_name_their_field() {
        let parse = |v: Value| parse_params(&Fields(&fields(v)), false);
        let ok =
            parse(json!({"max_tokens": 5, "temperature": 0, "top_k": -1, "stop": "x", "seed": 3}))
                .unwrap();
        assert_eq!(ok.max_tokens, Some(5));
        assert_eq!(ok.sampling.temperature, 0.0);
        assert_eq!(ok.sampling.top_k, 0);
        assert_eq!(ok.stop, vec!["x".to_string()]);
        for (body, param) in [
            (json!({"max_tokens": "5"}), "max_tokens"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"temperature": -1}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_k": -5}), "top_k"),
            (json!({"n": 2}), "n"),
            (json!({"stop": [1]}), "stop"),
            (json!({"stop": ""}), "stop"),
            (json!({"min_tokens": 9, "max_tokens": 3}), "min_tokens"),
            (
                json!({"stream_options": {"include_usage": true}}),
                "stream_options",
            ),
            (json!({"ignore_eos": "yes"}), "ignore_eos"),
            (json!({"echo": true}), "echo"),
        ] {
            let err = parse(body.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
            assert!(err.message.contains(param), "{body}: {}", err.message);
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
        let chat = parse_params(
            &Fields(&fields(json!({"max_completion_tokens": 4, "stream": true,
                "stream_options": {"include_usage": true}}))),
            true,
        )
        .unwrap();
        assert_eq!(chat.max_tokens, Some(4));
        assert_eq!(chat.max_tokens_key, "max_completion_tokens");
        assert!(chat.include_usage);
        // integral floats are integers (Python clients send 2.0); fractions are not
        let floats = parse(json!({"max_tokens": 2.0, "top_k": 40.0})).unwrap();
        assert_eq!((floats.max_tokens, floats.sampling.top_k), (Some(2), 40));
        for body in [
            json!({"max_tokens": 2.5}),
            json!({"max_tokens": -1.0}),
            json!({"top_k": 1.5}),
        ] {
            assert!(parse(body.clone()).is_err(), "{body}");
        }
    }

    #[test]
    fn messages_are_normalised() {
        let m = parse_messages(&Fields(&fields(json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "name": "x"}
        ]}))))
        .unwrap();
        assert_eq!(m[0]["content"], "ab");
        assert_eq!(m[1]["name"], "x");
        let err =
            parse_messages(&Fields(&fields(json!({"messages": [{"content": "x"}]})))).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"));
        let err = parse_messages(&Fields(&fields(json!({"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}
        ]}))))
        .unwrap_err();
        assert!(err.message.contains("only text parts"), "{}", err.message);
    }
}
