//! Command-line interface: each command is thin glue over the library.

pub mod backend;
pub mod config_file;
mod generate;
mod info;
pub mod kernels;
pub mod load;
mod logits;
pub mod mock_server;
mod report;
pub mod run;
mod serve;
pub mod telemetry_opts;

use clap::{Args, Parser, Subcommand};

use crate::model::registry::DEFAULT_MODEL;

#[derive(Debug, Parser)]
#[command(
    name = "infermeter",
    version,
    about = "Measure LLM inference: latency, throughput, memory and energy per token",
    // a later occurrence of an option overrides an earlier one (how `run --config` files work)
    args_override_self = true
)]
pub struct Cli {
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the logits at every position of a prompt to a safetensors file.
    Logits(logits::LogitsArgs),
    /// Generate a continuation of a prompt.
    Generate(generate::GenerateArgs),
    /// Describe this machine: CPU, memory, threads.
    Info(info::InfoArgs),
    /// The offline benchmark: run a grid, a stream or a workload file through the engine.
    Run(Box<run::RunArgs>),
    /// Load-test an OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp): open or closed loop,
    /// sweeps, the client's self-calibration.
    Load(Box<load::LoadArgs>),
    /// A synthetic OpenAI-compatible streaming server with configurable timing and errors.
    MockServer(Box<mock_server::MockServerArgs>),
    /// Reports: compare results files in Markdown, HTML (inline SVG plots) or JSON.
    Report(report::ReportArgs),
    /// Serve the reference engine over an OpenAI-compatible HTTP API.
    Serve(Box<serve::ServeArgs>),
    /// Kernel studies: time every op at model shapes against the measured ceilings (roofline).
    Kernels(kernels::KernelsArgs),
}

/// Which model to run.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct ModelArgs {
    /// A Hugging Face model directory, or the name of an embedded model (see `infermeter info`).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Use seeded random weights instead of the checkpoint (no weight files needed).
    #[arg(long)]
    pub dummy_weights: bool,
    /// Seed of the dummy weights.
    #[arg(long, default_value_t = 0)]
    pub dummy_seed: u64,
    /// Serve sequences of at most N positions (prompt + output) instead of the model's whole
    /// context (max_position_embeddings), as vLLM's flag: longer requests are refused, and a
    /// Phi-3 LongRoPE model within its original context uses its short factors.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
}

impl ModelArgs {
    pub fn load_options(&self) -> crate::model::LoadOptions {
        crate::model::LoadOptions {
            dummy_weights: self.dummy_weights,
            dummy_seed: self.dummy_seed,
            max_model_len: self.max_model_len,
        }
    }

    /// Open the model (its config and tokenizer) at the context served.
    pub fn open(&self) -> crate::Result<crate::model::ModelSource> {
        crate::model::open(&self.model)?.limit_context(self.max_model_len)
    }
}

/// Sampling options shared by the commands that generate.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler (for `run`, also of prompts and arrivals).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> crate::engine::SamplingParams {
        crate::engine::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }
}

/// The prompt, as text (needs the model's tokenizer) or token ids.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct PromptArgs {
    /// Prompt text, tokenized with the model's tokenizer.json.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long)]
    pub ids: Option<String>,
}

impl PromptArgs {
    pub fn token_ids(
        &self,
        tokenizer: Option<&crate::model::Tokenizer>,
        model: &str,
    ) -> crate::Result<Vec<u32>> {
        match (&self.prompt, &self.ids) {
            (Some(text), _) => match tokenizer {
                Some(t) => t.encode(text),
                None => Err(crate::Error::Invalid(format!(
                    "--prompt needs a tokenizer, and model `{model}` has none (tokenizer.json, or vocab.json and merges.txt): pass --ids instead"
                ))),
            },
            (None, Some(ids)) => crate::util::parse_ids(ids),
            (None, None) => Err(crate::Error::Invalid("give --prompt or --ids".into())),
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| anyhow::anyhow!("--threads {n}: {e}"))?;
    }
    match cli.command {
        Command::Logits(a) => logits::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Info(a) => info::run(a),
        Command::Run(a) => run::run(*a),
        Command::Load(a) => load::run(*a),
        Command::MockServer(a) => mock_server::run(*a),
        Command::Report(a) => report::run(a),
        Command::Serve(a) => serve::run(*a),
        Command::Kernels(a) => kernels::run(a),
    }
}
