//! Typed errors of the library. Every variant names the file, field, tensor or request at fault, so the
//! CLI can print it as is (with `anyhow` context on top) and tests can match on it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message and deliberately not a `source()` (a field named `source`
    // would be): `{e:#}` printed it twice.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{file}: malformed JSON: {cause}")]
    Json {
        file: String,
        cause: serde_json::Error,
    },

    #[error("{file}: field `{field}`: {msg}")]
    Config {
        file: String,
        field: String,
        msg: String,
    },

    #[error("{file}: unsupported model_type `{found}` (supported: {})", supported.join(", "))]
    UnsupportedModelType {
        file: String,
        found: String,
        supported: Vec<&'static str>,
    },

    #[error("model `{name}` not found: it is not a directory and not a known model name (known: {})", known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },

    #[error("{}: {msg}", dir.display())]
    ModelDir { dir: PathBuf, msg: String },

    #[error("{file}: invalid safetensors file: {msg}")]
    Safetensors { file: String, msg: String },

    #[error("tensor `{name}` not found in {location}")]
    MissingTensor { name: String, location: String },

    #[error("tensor `{name}` in {file}: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        name: String,
        file: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("tensor `{name}` in {file}: unsupported dtype {dtype} (supported: F32, F16, BF16)")]
    TensorDtype {
        name: String,
        file: String,
        dtype: String,
    },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("prompt of {len} tokens plus {max_new} new tokens exceeds the model context of {context} tokens")]
    ContextOverflow {
        len: usize,
        max_new: usize,
        context: usize,
    },

    #[error("invalid input: {0}")]
    Invalid(String),

    #[error("backend `{backend}`: {msg}")]
    Backend { backend: &'static str, msg: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub fn config(file: &str, field: &str, msg: impl Into<String>) -> Self {
        Error::Config {
            file: file.to_string(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
