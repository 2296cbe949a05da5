//! `infermeter serve`: the reference engine behind an OpenAI-compatible HTTP API (see
//! `docs/serve.md`). The first line on stdout is the bound address, `http://HOST:PORT`; everything
//! else goes to stderr.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::backend::BackendArgs;
use super::ModelArgs;
use crate::server::{self, KvSize, ServerConfig};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Address to bind (loopback by default; anything else is reachable from other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the bound address is the first line on stdout).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Model name reported in responses and /v1/models (default: --model as given).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: no key).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests that may wait for admission; beyond that, 429 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting: usize,
    /// A Jinja chat template file, overriding the model's.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,

    #[command(flatten)]
    pub engine: super::backend::EngineArgs,
}

fn parse_host(host: &str) -> anyhow::Result<IpAddr> {
    if host == "localhost" {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    host.parse().with_context(|| {
        format!("--host: `{host}` is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1)")
    })
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let host = parse_host(&a.host)?;
    if !host.is_loopback() {
        eprintln!(
            "warning: binding {host}: the server is reachable from other machines{}",
            if a.api_key.is_none() {
                ", and no --api-key is set"
            } else {
                ""
            }
        );
    }
    if a.max_waiting == 0 {
        bail!("--max-waiting must be at least 1");
    }
    let sizing = a.engine.kv_sizing()?;
    let kv = match a.engine.kv_blocks {
        Some(n) => KvSize::Blocks(n),
        None => KvSize::Auto {
            cpu_bytes: sizing.cpu_kv_bytes,
            gpu_memory_utilization: sizing.gpu_memory_utilization,
        },
    };
    let config = ServerConfig {
        model: a.model.model.clone(),
        load: a.model.load_options(),
        backend: a.backend.clone(),
        served_model_name: a.served_model_name.clone(),
        chat_template: a.chat_template.clone(),
        host,
        port: a.port,
        api_key: a.api_key.clone(),
        max_waiting: a.max_waiting,
        block_size: a.engine.block_size,
        kv,
        max_num_seqs: a.engine.max_num_seqs,
        max_num_batched_tokens: a.engine.max_num_batched_tokens,
        enable_prefix_caching: !a.engine.no_prefix_caching,
        keep_all_kv_blocks: a.engine.keep_all_kv_blocks,
        cuda_graphs: !a.engine.no_cuda_graphs,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("infermeter-http")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (addr, mut handle) = server::spawn(config)
            .await
            .with_context(|| format!("starting the server for model `{}`", a.model.model))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "http://{addr}")?;
            out.flush()?;
        }
        let info = handle.info();
        eprintln!(
            "serving `{}` ({:.1}M parameters, {} weights{}) on {}; context {} tokens; KV pool {} blocks x {} tokens ({:.1} MiB){}; chat template: {}{}",
            info.model_name,
            info.config.num_parameters() as f64 / 1e6,
            info.weights,
            crate::model::rope::longrope_note(&info.config),
            info.backend,
            info.config.max_context,
            info.engine.num_blocks,
            info.engine.block_size,
            info.kv_pool_bytes as f64 / (1u64 << 20) as f64,
            crate::engine::window_release_note(&info.engine.kv_layout(&info.config)),
            info.chat_template,
            if info.has_tokenizer {
                ""
            } else {
                "; no tokenizer (tokenizer.json, or vocab.json and merges.txt): prompts must be token ids, output text is [id] per token"
            }
        );
        eprintln!(
            "endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics (Ctrl-C stops)"
        );
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                eprintln!("stopping");
            }
            r = handle.wait() => {
                r.context("the HTTP server failed")?;
            }
        }
        handle.shutdown().await.context("stopping the server")?;
        Ok(())
    })
}
