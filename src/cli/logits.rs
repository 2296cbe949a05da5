use std::path::PathBuf;

use anyhow::Context;
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
    let backend = super::backend::open(&a.backend)?;
    super::backend::dispatch!(backend, b => run_on(a, b))
}

fn run_on<B: EngineBackend>(a: LogitsArgs, backend: B) -> anyhow::Result<()> {
    // Validate the prompt against the config and tokenizer before reading or generating weights.
    let source = crate::model::open(&a.model.model)
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
