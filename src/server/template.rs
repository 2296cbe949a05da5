//! Chat templates: the model's Hugging Face `chat_template` rendered with minijinja, or a plain
//! fallback.
//!
//! Where the template comes from, first found wins: `--chat-template FILE`; `chat_template` in the
//! model directory's `tokenizer_config.json` (a string, or a list of `{name, template}` of which
//! `default` or else the first is used); `chat_template.jinja`; `chat_template.json`. Otherwise the
//! fallback: one `<|role|>\ncontent\n` block per message, then `<|assistant|>\n` when a generation
//! prompt is wanted.
//!
//! HF templates are rendered the way transformers does: `trim_blocks` and `lstrip_blocks` on, loop
//! controls (`break`, `continue`), `raise_exception(msg)`, `strftime_now(fmt)`, `bos_token`,
//! `eos_token` (and `unk_token`, `pad_token`) from `tokenizer_config.json`, `add_generation_prompt`,
//! plus the request's `chat_template_kwargs`. Python string and dict methods the templates call
//! (`.strip()`, `.split()`, `.startswith()`, `.items()`, `.get()`, ...) are provided.
//! A rendered HF template already carries its special tokens, so it is tokenized without adding
//! them again; the fallback's text is tokenized as a plain prompt (special tokens added).

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{from_args, Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, State};
use serde_json::Value as Json;

const TEMPLATE_NAME: &str = "chat";

/// A chat template failed to load or render.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

enum Kind {
    Hf(Box<Environment<'static>>),
    Fallback,
}

/// The chat template of the served model.
pub struct ChatTemplate {
    kind: Kind,
    special: BTreeMap<String, String>,
    origin: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish()
    }
}

impl ChatTemplate {
    /// The plain fallback: `<|role|>\ncontent\n` per message, then `<|assistant|>\n`.
    pub fn fallback() -> Self {
        Self {
            kind: Kind::Fallback,
            special: BTreeMap::new(),
            origin: "fallback (<|role|>\\ncontent\\n per message)".into(),
        }
    }

    /// A Hugging Face (Jinja) template. `special` maps `bos_token`, `eos_token`, ... to their text.
    pub fn from_jinja(
        source: &str,
        special: BTreeMap<String, String>,
        origin: &str,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| TemplateError(format!("{origin}: {e}")))?,
        );
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(pycompat_method);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| TemplateError(format!("{origin}: invalid chat template: {e:#}")))?;
        Ok(Self {
            kind: Kind::Hf(Box::new(env)),
            special,
            origin: origin.to_string(),
        })
    }

    /// The template of a model directory (see the module docs for the search order), or the
    /// fallback when the directory has none. `None` for `dir` (an embedded model) gives the
    /// fallback.
    pub fn for_model(dir: Option<&Path>) -> Result<Self, TemplateError> {
        let Some(dir) = dir else {
            return Ok(Self::fallback());
        };
        let special = match read_json(&dir.join("tokenizer_config.json"))? {
            Some(cfg) => {
                let special = special_tokens(&cfg);
                let origin = dir.join("tokenizer_config.json").display().to_string();
                if let Some(t) = cfg.get("chat_template") {
                    if let Some(source) = pick_template(t, &origin)? {
                        return Self::from_jinja(&source, special, &origin);
                    }
                }
                special
            }
            None => BTreeMap::new(),
        };
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja)
                .map_err(|e| TemplateError(format!("{}: {e}", jinja.display())))?;
            return Self::from_jinja(&source, special, &jinja.display().to_string());
        }
        let json_path = dir.join("chat_template.json");
        if let Some(v) = read_json(&json_path)? {
            let origin = json_path.display().to_string();
            if let Some(source) = v
                .get("chat_template")
                .map(|t| pick_template(t, &origin))
                .transpose()?
                .flatten()
            {
                return Self::from_jinja(&source, special, &origin);
            }
        }
        Ok(Self::fallback())
    }

    /// A template file given on the command line, with the special tokens of the model directory's
    /// `tokenizer_config.json` when there is one.
    pub fn from_file(path: &Path, model_dir: Option<&Path>) -> Result<Self, TemplateError> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| TemplateError(format!("{}: {e}", path.display())))?;
        let special = match model_dir {
            Some(dir) => read_json(&dir.join("tokenizer_config.json"))?
                .map(|c| special_tokens(&c))
                .unwrap_or_default(),
            None => BTreeMap::new(),
        };
        Self::from_jinja(&source, special, &path.display().to_string())
    }

    /// Where the template came from (a file, or "fallback ...").
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn is_fallback(&self) -> bool {
        matches!(self.kind, Kind::Fallback)
    }

    /// Whether the rendered text should be tokenized with the tokenizer's special tokens added:
    /// false for HF templates (they write `bos_token` themselves), true for the fallback.
    pub fn add_special_tokens(&self) -> bool {
        self.is_fallback()
    }

    /// Render `messages` (JSON objects with at least `role`; `content` a string or null).
    pub fn render(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, Json>,
    ) -> Result<String, TemplateError> {
        match &self.kind {
            Kind::Fallback => Ok(render_fallback(messages, add_generation_prompt)),
            Kind::Hf(env) => {
                let mut ctx: BTreeMap<String, Value> = kwargs
                    .iter()
                    .map(|(k, v)| (k.clone(), json_to_value(v)))
                    .collect();
                for (k, v) in &self.special {
                    ctx.insert(k.clone(), Value::from(v.as_str()));
                }
                ctx.insert(
                    "messages".into(),
                    Value::from(messages.iter().map(json_to_value).collect::<Vec<_>>()),
                );
                ctx.insert(
                    "add_generation_prompt".into(),
                    Value::from(add_generation_prompt),
                );
                let tmpl = env
                    .get_template(TEMPLATE_NAME)
                    .map_err(|e| TemplateError(e.to_string()))?;
                tmpl.render(Value::from(ctx))
                    .map_err(|e| TemplateError(format!("chat template: {}", describe(&e))))
            }
        }
    }
}

/// An error's message, with `raise_exception`'s text as is.
fn describe(e: &JinjaError) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) => d.to_string(),
        _ => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

fn render_fallback(messages: &[Json], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        let role = m.get("role").and_then(Json::as_str).unwrap_or("user");
        let content = m.get("content").and_then(Json::as_str).unwrap_or("");
        out.push_str("<|");
        out.push_str(role);
        out.push_str("|>\n");
        out.push_str(content);
        out.push('\n');
    }
    if add_generation_prompt {
        out.push_str("<|assistant|>\n");
    }
    out
}

fn read_json(path: &Path) -> Result<Option<Json>, TemplateError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| TemplateError(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TemplateError(format!("{}: malformed JSON: {e}", path.display())))
}

/// `chat_template` as HF writes it: a string, or a list of `{"name", "template"}`.
fn pick_template(v: &Json, origin: &str) -> Result<Option<String>, TemplateError> {
    match v {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s.clone())),
        Json::Array(list) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some(name))
            };
            let chosen = named("default").or_else(|| list.first());
            match chosen.and_then(|t| t.get("template")).and_then(Json::as_str) {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(TemplateError(format!(
                    "{origin}: `chat_template` is a list without a usable {{\"name\", \"template\"}} entry"
                ))),
            }
        }
        _ => Err(TemplateError(format!(
            "{origin}: `chat_template` must be a string or a list of {{\"name\", \"template\"}}"
        ))),
    }
}

/// `bos_token`, `eos_token`, `unk_token`, `pad_token` of a tokenizer config: strings, or
/// AddedToken objects with `content`.
fn special_tokens(cfg: &Json) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        let text = match cfg.get(key) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        };
        if let Some(t) = text {
            out.insert(key.to_string(), t);
        }
    }
    out
}

/// JSON to a template value (objects keep their keys, sorted).
pub(crate) fn json_to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        Json::Object(o) => Value::from(
            o.iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// `tojson` as transformers defines it: Python's `json.dumps` (`", "` and `": "` separators, or
/// `indent` spaces per level), non-ASCII kept, no HTML escaping (minijinja's own escapes `<`, `>`,
/// `&` and `'`). Objects have their keys sorted.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    // accepted for compatibility: keys are always sorted, non-ASCII always kept
    let _: Option<Value> = kwargs.get("sort_keys")?;
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(usize::try_from(v).map_err(|_| {
            JinjaError::new(
                ErrorKind::InvalidOperation,
                "tojson: indent must be a non-negative integer",
            )
        })?),
    };
    let mut out = String::new();
    write_json(&mut out, &value_to_json(value)?, indent, 0);
    Ok(Value::from_safe_string(out))
}

fn value_to_json(v: &Value) -> Result<Json, JinjaError> {
    Ok(match v.kind() {
        ValueKind::Undefined | ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(v.is_true()),
        ValueKind::Number => match v.as_i64() {
            Some(i) => Json::from(i),
            None => serde_json::Number::from_f64(f64::try_from(v.clone()).unwrap_or(f64::NAN))
                .map_or(Json::Null, Json::Number),
        },
        ValueKind::String => Json::String(v.as_str().unwrap_or_default().to_string()),
        ValueKind::Seq | ValueKind::Iterable => Json::Array(
            v.try_iter()?
                .map(|x| value_to_json(&x))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::Map => {
            let mut m = serde_json::Map::new();
            for k in v.try_iter()? {
                let item = v.get_item(&k)?;
                let key = k.as_str().map_or_else(|| k.to_string(), str::to_string);
                m.insert(key, value_to_json(&item)?);
            }
            Json::Object(m)
        }
        _ => Json::String(v.to_string()),
    })
}

fn write_json(out: &mut String, v: &Json, indent: Option<usize>, level: usize) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                write_json(out, x, indent, level + 1);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                write_json(out, x, indent, level + 1);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn raise_exception(msg: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)`: the current UTC time formatted with the common strftime codes
/// (%Y %y %m %d %e %b %B %a %A %H %I %M %S %p %j %%).
fn strftime_now(fmt: String) -> Result<Value, JinjaError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(strftime(&fmt, secs)))
}

/// Format unix time `secs` (UTC).
pub(crate) fn strftime(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (h, mi, s) = (tod / 3600, tod % 3600 / 60, tod % 60);
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", (h + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn str_arg(v: &Value, what: &str) -> Result<String, JinjaError> {
    v.as_str().map(str::to_string).ok_or_else(|| {
        JinjaError::new(
            ErrorKind::InvalidOperation,
            format!("{what} must be a string, got {}", v.kind()),
        )
    })
}

/// Strings to try for `startswith` / `endswith`: a string or a tuple (list) of strings.
fn affixes(v: &Value) -> Result<Vec<String>, JinjaError> {
    if v.kind() == ValueKind::Seq {
        v.try_iter()?.map(|x| str_arg(&x, "prefix")).collect()
    } else {
        Ok(vec![str_arg(v, "prefix")?])
    }
}

fn strip_chars<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let pred = |c: char| match chars {
        Some(set) => set.contains(c),
        None => c.is_whitespace(),
    };
    let s = if left { s.trim_start_matches(pred) } else { s };
    if right {
        s.trim_end_matches(pred)
    } else {
        s
    }
}

fn py_split(s: &str, sep: Option<&str>, maxsplit: i64) -> Result<Vec<Value>, JinjaError> {
    let limit = if maxsplit < 0 {
        usize::MAX
    } else {
        maxsplit as usize + 1
    };
    Ok(match sep {
        Some("") => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                "split: empty separator",
            ))
        }
        Some(sep) => s.splitn(limit, sep).map(Value::from).collect(),
        None => {
            // whitespace runs; leading/trailing whitespace ignored
            let mut parts = Vec::new();
            let mut rest = s.trim_start();
            while !rest.is_empty() {
                if parts.len() + 1 == limit {
                    parts.push(Value::from(rest));
                    break;
                }
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                parts.push(Value::from(&rest[..end]));
                rest = rest[end..].trim_start();
            }
            parts
        }
    })
}

/// Python methods on strings and dicts, as HF templates call them.
fn pycompat_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, JinjaError> {
    if let Some(s) = value.as_str() {
        return match method {
            "strip" | "lstrip" | "rstrip" => {
                let (chars,): (Option<&str>,) = from_args(args)?;
                let (l, r) = match method {
                    "strip" => (true, true),
                    "lstrip" => (true, false),
                    _ => (false, true),
                };
                Ok(Value::from(strip_chars(s, chars, l, r)))
            }
            "startswith" | "endswith" => {
                let (what,): (Value,) = from_args(args)?;
                let list = affixes(&what)?;
                Ok(Value::from(list.iter().any(|a| {
                    if method == "startswith" {
                        s.starts_with(a.as_str())
                    } else {
                        s.ends_with(a.as_str())
                    }
                })))
            }
            "split" => {
                let (sep, maxsplit): (Option<&str>, Option<i64>) = from_args(args)?;
                Ok(Value::from(py_split(s, sep, maxsplit.unwrap_or(-1))?))
            }
            "upper" => Ok(Value::from(s.to_uppercase())),
            "lower" => Ok(Value::from(s.to_lowercase())),
            "capitalize" => {
                let mut c = s.chars();
                Ok(Value::from(match c.next() {
                    Some(f) => f
                        .to_uppercase()
                        .chain(c.flat_map(char::to_lowercase))
                        .collect(),
                    None => String::new(),
                }))
            }
            "title" => state.apply_filter("title", std::slice::from_ref(value)),
            "replace" => {
                let (old, new, count): (&str, &str, Option<i64>) = from_args(args)?;
                Ok(Value::from(match count {
                    Some(n) if n >= 0 => s.replacen(old, new, n as usize),
                    _ => s.replace(old, new),
                }))
            }
            "find" => {
                let (sub,): (&str,) = from_args(args)?;
                Ok(Value::from(
                    s.find(sub).map_or(-1, |b| s[..b].chars().count() as i64),
                ))
            }
            "count" => {
                let (sub,): (&str,) = from_args(args)?;
                Ok(Value::from(if sub.is_empty() {
                    s.chars().count() + 1
                } else {
                    s.matches(sub).count()
                }))
            }
            "join" => {
                let (items,): (Value,) = from_args(args)?;
                let parts: Vec<String> = items
                    .try_iter()?
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                    .collect();
                Ok(Value::from(parts.join(s)))
            }
            "isdigit" => Ok(Value::from(
                !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()),
            )),
            "isalpha" => Ok(Value::from(
                !s.is_empty() && s.chars().all(char::is_alphabetic),
            )),
            "isalnum" => Ok(Value::from(
                !s.is_empty() && s.chars().all(char::is_alphanumeric),
            )),
            "isspace" => Ok(Value::from(
                !s.is_empty() && s.chars().all(char::is_whitespace),
            )),
            "islower" => Ok(Value::from(
                s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase),
            )),
            "isupper" => Ok(Value::from(
                s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase),
            )),
            _ => Err(JinjaError::new(
                ErrorKind::UnknownMethod,
                format!("string has no method named {method}"),
            )),
        };
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => {
                let _: () = from_args(args)?;
                state.apply_filter("items", std::slice::from_ref(value))
            }
            "keys" => {
                let _: () = from_args(args)?;
                Ok(Value::from(value.try_iter()?.collect::<Vec<_>>()))
            }
            "values" => {
                let _: () = from_args(args)?;
                let keys: Vec<Value> = value.try_iter()?.collect();
                let vals = keys
                    .iter()
                    .map(|k| value.get_item(k))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Value::from(vals))
            }
            "get" => {
                let (key, default): (Value, Option<Value>) = from_args(args)?;
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() {
                    default.unwrap_or(Value::from(()))
                } else {
                    v
                })
            }
            _ => Err(JinjaError::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(JinjaError::from(ErrorKind::UnknownMethod))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, messages: Json) -> Result<String, TemplateError> {
        let t = ChatTemplate::from_jinja(src, BTreeMap::new(), "test")?;
        t.render(messages.as_array().unwrap(), true, &serde_json::Map::new())
    }

    #[test]
    fn fallback_is_role_blocks_and_assistant_cue() {
        let t = ChatTemplate::fallback();
        let out = t
            .render(
                &[
                    json!({"role": "system", "content": "Be brief."}),
                    json!({"role": "user", "content": "Hi"}),
                ],
                true,
                &serde_json::Map::new(),
            )
            .unwrap();
        assert_eq!(out, "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n");
        assert!(t.add_special_tokens());
    }

    #[test]
    fn python_string_methods_work() {
        let out = render(
            "{{ messages[0].content.strip() }}|{{ '  a b  c '.split() | join(',') }}|\
             {{ 'a,b,c'.split(',', 1) | join(';') }}|{{ 'xxhixx'.strip('x') }}|\
             {{ 'Hello'.startswith(('He', 'x')) }}|{{ 'Hello'.endswith('lo') }}|\
             {{ 'abc'.upper() }}|{{ 'aXa'.replace('a', 'b') }}|{{ '-'.join(['p', 'q']) }}",
            json!([{"role": "user", "content": "  hi  "}]),
        )
        .unwrap();
        assert_eq!(out, "hi|a,b,c|a;b,c|hi|True|True|ABC|bXb|p-q");
    }

    #[test]
    fn dict_methods_and_loop_controls() {
        let out = render(
            "{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}\
             {{ messages[0].get('missing', 'dflt') }}|\
             {% for m in messages %}{% if loop.index0 == 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}",
            json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]),
        )
        .unwrap();
        assert_eq!(out, "content=x;role=user;dflt|user");
    }

    #[test]
    fn raise_exception_gives_its_message() {
        let err = render(
            "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}",
            json!([{"role": "assistant", "content": "x"}]),
        )
        .unwrap_err();
        assert_eq!(err.0, "chat template: Conversation roles must alternate");
    }

    #[test]
    fn invalid_template_is_a_load_error() {
        let err = ChatTemplate::from_jinja("{% for %}", BTreeMap::new(), "cfg.json").unwrap_err();
        assert!(
            err.0.starts_with("cfg.json: invalid chat template"),
            "{err}"
        );
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e %H:%M:%S %p %j %y %%", t),
            "Friday July 26 13:05:09 PM 208 24 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d %a", 951_782_400), "2000-02-29 Tue");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let msgs =
            json!([{"role": "user", "content": "x", "meta": {"b": [1, 2.5, null], "a": "<é>"}}]);
        let out = render("{{ messages[0].meta | tojson }}", msgs.clone()).unwrap();
        assert_eq!(out, r#"{"a": "<é>", "b": [1, 2.5, null]}"#);
        let out = render("{{ messages[0].meta | tojson(indent=2) }}", msgs).unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": \"<é>\",\n  \"b\": [\n    1,\n    2.5,\n    null\n  ]\n}"
        );
    }

    #[test]
    fn template_lists_pick_default() {
        let v =
            json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]);
        assert_eq!(pick_template(&v, "x").unwrap().as_deref(), Some("D"));
        assert!(pick_template(&json!(3), "x").is_err());
    }
}
