use anyhow::Context;
use clap::Args;

use super::backend::{BackendArgs, EngineBackend};
use super::{ModelArgs, PromptArgs, SamplingArgs};
use crate::engine::{generate, GenerateRequest};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Number of tokens to generate at most.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Do not stop at the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print prompt ids, output ids, text and timings as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct JsonOut<'a> {
    model: &'a str,
    weights: &'a str,
    backend: &'a str,
    dtype: &'a str,
    prompt_ids: &'a [u32],
    output_ids: &'a [u32],
    text: Option<String>,
    finish_reason: crate::engine::FinishReason,
    prefill_s: f64,
    decode_s: f64,
    decode_tokens_per_s: Option<f64>,
    token_times_s: &'a [f64],
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let backend = super::backend::open(&a.backend)?;
    super::backend::dispatch!(backend, b => run_on(a, b))
}

fn run_on<B: EngineBackend>(a: GenerateArgs, backend: B) -> anyhow::Result<()> {
    // Validate the prompt against the config and tokenizer before reading or generating weights.
    let source = a
        .model
        .open()
        .with_context(|| format!("opening model `{}`", a.model.model))?;
    let prompt_ids = a
        .prompt
        .token_ids(source.tokenizer.as_ref(), &a.model.model)?;
    crate::engine::generate::check_prompt(&prompt_ids, a.max_tokens, &source.config)?;
    let loaded = source
        .load(a.model.load_options())
        .with_context(|| format!("loading model `{}`", a.model.model))?;
    let weights_kind = loaded.weights_kind;
    let (model, tokenizer) = loaded.into_model(backend)?;
    let req = GenerateRequest {
        prompt_ids: prompt_ids.clone(),
        max_tokens: a.max_tokens,
        sampling: a.sampling.params(),
        ignore_eos: a.ignore_eos,
    };
    let out = generate(&model, &req)?;
    let text = tokenizer
        .as_ref()
        .map(|t| t.decode(&out.output_ids))
        .transpose()?;
    if a.json {
        let j = JsonOut {
            model: &a.model.model,
            weights: weights_kind,
            backend: model.backend.name(),
            dtype: model.backend.dtype_name(),
            prompt_ids: &prompt_ids,
            output_ids: &out.output_ids,
            text,
            finish_reason: out.finish_reason,
            prefill_s: out.prefill_s,
            decode_s: out.decode_s,
            decode_tokens_per_s: out.decode_tokens_per_s(),
            token_times_s: &out.token_times_s,
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        match text {
            Some(t) => println!("{t}"),
            None => println!(
                "{}",
                out.output_ids
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
        eprintln!(
            "{} tokens; prefill {:.1} ms ({} prompt tokens); decode {:.1} tokens/s",
            out.output_ids.len(),
            out.prefill_s * 1e3,
            prompt_ids.len(),
            out.decode_tokens_per_s().unwrap_or(0.0)
        );
    }
    Ok(())
}
