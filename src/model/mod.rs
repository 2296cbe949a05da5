//! Models: config parsing, weight loading (safetensors, or seeded dummy weights), tokenizers, the
//! embedded model registry, and the forward pass.

pub mod config;
pub mod forward;
pub mod graphs;
pub mod registry;
pub mod rope;
pub mod tensor_store;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

pub use config::{Arch, ModelConfig};
pub use forward::{kv_block_bytes, KvCache, Model};
pub use tokenizer::Tokenizer;

use crate::error::{Error, Result};
use tensor_store::{HostTensor, TensorStore};
use weights::ModelWeights;

/// How to obtain weights, and how long a context to serve.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Seeded random weights instead of the checkpoint (vLLM's dummy load format).
    pub dummy_weights: bool,
    pub dummy_seed: u64,
    /// Serve sequences of at most this many positions instead of the model's whole context
    /// (vLLM's `--max-model-len`; see [`ModelSource::limit_context`]).
    pub max_model_len: Option<usize>,
}

/// A model's config, host weights and tokenizer, before upload to a backend.
pub struct LoadedModel {
    /// The name or directory it was loaded from.
    pub source: String,
    pub config: ModelConfig,
    pub weights: ModelWeights<HostTensor>,
    pub tokenizer: Option<Tokenizer>,
    /// "safetensors" or "dummy"
    pub weights_kind: &'static str,
}

impl LoadedModel {
    /// Upload to a backend.
    pub fn into_model<B: crate::backend::Backend>(
        self,
        backend: B,
    ) -> Result<(Model<B>, Option<Tokenizer>)> {
        let model = Model::new(backend, self.config, self.weights)?;
        Ok((model, self.tokenizer))
    }
}

/// Where a model's files are.
enum Location {
    Dir(std::path::PathBuf),
    Embedded(&'static registry::EmbeddedModel),
}

/// A model's config and tokenizer, its weights not yet read: enough to validate a request (prompt
/// length, tokenizer present) before the expensive part.
pub struct ModelSource {
    /// The name or directory it was opened from.
    pub name: String,
    /// The config; its `max_context` is the context served (after [`limit_context`](Self::limit_context)).
    pub config: ModelConfig,
    pub tokenizer: Option<Tokenizer>,
    location: Location,
    /// The checkpoint's own context (`max_position_embeddings`), whatever `config.max_context` serves.
    checkpoint_context: usize,
}

/// Open `spec`: a Hugging Face model directory, or the name of an embedded model (`models/`).
pub fn open(spec: &str) -> Result<ModelSource> {
    let path = Path::new(spec);
    if path.is_dir() {
        return open_dir(path);
    }
    if let Some(m) = registry::find(spec) {
        return open_embedded(m);
    }
    if path.exists() {
        return Err(Error::ModelDir {
            dir: path.to_path_buf(),
            msg: "not a directory (pass the model's directory, not a file in it)".into(),
        });
    }
    Err(Error::UnknownModel {
        name: spec.to_string(),
        known: registry::names(),
    })
}

/// Open and load weights in one go.
pub fn load(spec: &str, opts: LoadOptions) -> Result<LoadedModel> {
    open(spec)?.load(opts)
}

fn open_dir(dir: &Path) -> Result<ModelSource> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::ModelDir {
            dir: dir.to_path_buf(),
            msg: "no config.json".into(),
        });
    }
    let mut config = ModelConfig::from_file(&config_path)?;
    let generation_path = dir.join("generation_config.json");
    if generation_path.is_file() {
        let text = std::fs::read_to_string(&generation_path)
            .map_err(|e| Error::io(&generation_path, e))?;
        config.merge_generation_config(&text, &generation_path.display().to_string())?;
    }
    let tokenizer = Tokenizer::from_dir(dir)?;
    if let Some(t) = &tokenizer {
        check_tokenizer_fits(t, &config, t.source(), &config_path.display().to_string())?;
    }
    Ok(ModelSource {
        name: dir.display().to_string(),
        checkpoint_context: config.max_context,
        config,
        tokenizer,
        location: Location::Dir(dir.to_path_buf()),
    })
}

fn open_embedded(m: &'static registry::EmbeddedModel) -> Result<ModelSource> {
    let file = format!("{} (embedded)/config.json", m.name);
    let config = ModelConfig::from_json_str(m.config, &file)?;
    let tokenizer_file = format!("{} (embedded)/tokenizer.json", m.name);
    let tokenizer = m
        .tokenizer
        .map(|bytes| Tokenizer::from_bytes(bytes, &tokenizer_file))
        .transpose()?;
    if let Some(t) = &tokenizer {
        check_tokenizer_fits(t, &config, &tokenizer_file, &file)?;
    }
    Ok(ModelSource {
        name: m.name.to_string(),
        checkpoint_context: config.max_context,
        config,
        tokenizer,
        location: Location::Embedded(m),
    })
}

/// Check a tokenizer against the embedding it feeds.
///
/// - An ordinary vocabulary larger than `vocab_size` belongs to another model: plain text would
///   encode to ids the model cannot embed. Refused.
/// - Added tokens (`added_tokens`) with an id of `vocab_size` or more: only text containing them
///   encodes outside the embedding, and real checkpoints carry such tokens (a fine-tune's `<pad>`
///   added after the embedding was sized; transformers loads them too). Warned about at open, naming
///   the tokens; a prompt that contains one is refused where prompts are checked ("outside the
///   vocabulary"). Only ids count, not how many tokens there are: added tokens inside the embedding
///   (Llama 3's reserved specials, a padded embedding) need nothing.
fn check_tokenizer_fits(
    t: &Tokenizer,
    config: &ModelConfig,
    tokenizer_file: &str,
    config_file: &str,
) -> Result<()> {
    if t.base_vocab_size() > config.vocab_size {
        return Err(Error::config(
            tokenizer_file,
            "model.vocab",
            format!(
                "{} tokens, more than the vocab_size of {} in {config_file}: is this the tokenizer \
                 of another model?",
                t.base_vocab_size(),
                config.vocab_size,
            ),
        ));
    }
    if let Some(w) = added_tokens_outside_warning(t, config.vocab_size, tokenizer_file, config_file)
    {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// The warning for added tokens whose ids fall outside an embedding of `vocab_size` rows, if any.
fn added_tokens_outside_warning(
    t: &Tokenizer,
    vocab_size: usize,
    tokenizer_file: &str,
    config_file: &str,
) -> Option<String> {
    let outside: Vec<(u32, String)> = t
        .added_tokens()
        .into_iter()
        .filter(|&(id, _)| id as usize >= vocab_size)
        .collect();
    let (id, content) = outside.first()?;
    let more = match outside.len() - 1 {
        0 => String::new(),
        1 => " (and 1 more added token past it)".to_string(),
        n => format!(" (and {n} more added tokens past it)"),
    };
    Some(format!(
        "{tokenizer_file}: added token `{content}` has id {id}, outside the embedding: the \
         vocab_size in {config_file} is {vocab_size} (ids 0 to {}){more}; prompts containing it \
         will be refused",
        vocab_size.saturating_sub(1),
    ))
}

impl ModelSource {
    /// Serve sequences of at most `max_model_len` positions (None: the checkpoint's whole context):
    /// requests are checked against it, the RoPE tables hold that many rows (Phi-3's LongRoPE takes
    /// its short factors when it is within the original context), GPT-2 keeps that many learned
    /// positions. Refused when 0 or longer than the checkpoint's context (`max_position_embeddings`, or
    /// the model type's own field: [`ModelConfig::context_field`]). Can be
    /// called again with another value; [`load`](Self::load) applies its options' value.
    ///
    /// An ALiBi model (BLOOM, MPT, Falcon-RW) has no position table: its config's context is the
    /// length it was trained to, which ALiBi was designed to run past (Press et al.), so a longer
    /// `max_model_len` is served, with a warning.
    pub fn limit_context(mut self, max_model_len: Option<usize>) -> Result<Self> {
        let n = max_model_len.unwrap_or(self.checkpoint_context);
        if n > self.checkpoint_context && self.config.alibi.is_some() {
            eprintln!(
                "warning: max_model_len {n} is past the {} positions `{}` was trained to ({} in \
                 its config.json): ALiBi runs there, how well the model does is another matter",
                self.checkpoint_context,
                self.name,
                self.config.context_field()
            );
            self.config.max_context = n;
            return Ok(self);
        }
        if n == 0 || n > self.checkpoint_context {
            return Err(Error::Invalid(format!(
                "max_model_len {n}: must be between 1 and the context of model `{}`, {} positions \
                 ({} in its config.json)",
                self.name,
                self.checkpoint_context,
                self.config.context_field()
            )));
        }
        self.config.max_context = n;
        Ok(self)
    }

    /// Read (or generate) the weights, after [`limit_context`](Self::limit_context) with
    /// `opts.max_model_len` when that is set.
    pub fn load(self, opts: LoadOptions) -> Result<LoadedModel> {
        // without a cap in the options, one set by `limit_context` stays (and one it set to the
        // options' value already is not checked, nor warned about, twice)
        let mut source = match opts.max_model_len {
            Some(n) if n != self.config.max_context => self.limit_context(Some(n))?,
            _ => self,
        };
        // the checkpoint's tensors have its own context (GPT-2's learned positions): read them
        // at that, then keep the rows served
        let served = source.config.max_context;
        source.config.max_context = source.checkpoint_context;
        let mut loaded = source.load_checkpoint(opts)?;
        loaded.config.max_context = served;
        if let Some(pos) = &mut loaded.weights.positions {
            let h = pos.shape[1];
            pos.data.truncate(served * h);
            pos.shape[0] = served;
        }
        Ok(loaded)
    }

    /// Read (or generate) the weights at the config's context.
    fn load_checkpoint(self, opts: LoadOptions) -> Result<LoadedModel> {
        // The host copy is f32 whatever the checkpoint's or the backend's dtype.
        let params = self.config.num_parameters() as u64;
        crate::telemetry::host::check_host_memory(
            params * 4,
            &format!(
                "{}: {:.3} B parameters × 4 bytes (the f32 host copy of the weights)",
                self.name,
                params as f64 / 1e9
            ),
        )?;
        let (weights, weights_kind) = if opts.dummy_weights {
            (
                weights::dummy_weights(&self.config, opts.dummy_seed),
                "dummy",
            )
        } else {
            let store = match &self.location {
                Location::Dir(dir) => TensorStore::open_dir(dir)?,
                Location::Embedded(m) => match m.weights {
                    Some(bytes) => TensorStore::from_static(
                        &format!("{} (embedded)/model.safetensors", m.name),
                        bytes,
                    )?,
                    None => {
                        return Err(Error::Invalid(format!(
                            "model `{}` is a config only: pass --dummy-weights to run it with random weights, or --model DIR for a checkpoint",
                            m.name
                        )))
                    }
                },
            };
            (weights::load_weights(&self.config, &store)?, "safetensors")
        };
        Ok(LoadedModel {
            source: self.name,
            config: self.config,
            weights,
            tokenizer: self.tokenizer,
            weights_kind,
        })
    }
}
