use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use super::backend::{BackendArgs, EngineBackend};
use super::{ModelArgs, PromptArgs};
use crate::engine::generate::all_logits;
use crate::model::tensor_store::{write_safetensors, OutTensor};

#[derive(Debug, Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Output safetensors file: `logits` f32 [tokens, vocab] and `ids` i32 [tokens].
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: LogitsArgs) -> anyhow::Result<()> {
    // Before the model is read and the logits computed: a directory there failed only at the end,
    // with the OS's bare "Is a directory" (or "Not a directory" for a trailing `/`).
    check_out_file(&a.out)?;
    let backend = super::backend::open(&a.backend)?;
    super::backend::dispatch!(backend, b => run_on(a, b))
}

/// `--out` names the file to write: refuse an existing directory, or a path written as one.
fn check_out_file(out: &Path) -> anyhow::Result<()> {
    let text = out.to_string_lossy();
    let what = if out.is_dir() {
        "is a directory"
    } else if text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
        "ends in a path separator, so it names a directory"
    } else {
        return Ok(());
    };
    bail!(
        "--out {}: {what}; --out takes the path of the safetensors file to write (e.g. {})",
        out.display(),
        out.join("logits.safetensors").display()
    )
}

fn run_on<B: EngineBackend>(a: LogitsArgs, backend: B) -> anyhow::Result<()> {
    // Validate the prompt against the config and tokenizer before reading or generating weights.
    let source = a
        .model
        .open()
        .with_context(|| format!("opening model `{}`", a.model.model))?;
    let ids = a
        .prompt
        .token_ids(source.tokenizer.as_ref(), &a.model.model)?;
    crate::engine::generate::check_prompt(&ids, 0, &source.config)?;
    let loaded = source
        .load(a.model.load_options())
        .with_context(|| format!("loading model `{}`", a.model.model))?;
    let (model, _tokenizer) = loaded.into_model(backend)?;
    let logits = all_logits(&model, &ids)?;
    let ids_i32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    write_safetensors(
        &a.out,
        &[
            OutTensor::f32("logits", vec![ids.len(), model.config.vocab_size], &logits),
            OutTensor::i32("ids", &ids_i32),
        ],
    )
    .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} ({} tokens x {} vocab; {})",
        a.out.display(),
        ids.len(),
        model.config.vocab_size,
        model.backend.describe()
    );
    Ok(())
}
