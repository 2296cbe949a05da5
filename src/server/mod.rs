//! `infermeter serve`: the reference engine behind an OpenAI-compatible HTTP API.
//!
//! ```text
//! HTTP handlers (tokio) ──Command (std mpsc)──▶ engine thread (owns Engine, steps while work)
//!        ▲                                              │
//!        └──────── Event per token (tokio mpsc) ────────┘
//! ```
//!
//! Handlers parse and validate a request (`api`), render chat templates (`template`), tokenize,
//! check lengths, and send `Add` to the engine thread (`worker`), which answers at once (accepted,
//! or refused: queue full, invalid). Tokens come back one event per token; the handler turns them
//! into text (`detok`: incremental detokenization, stop strings) and streams SSE chunks or collects
//! the full response. A dropped handler or response stream (client gone) sends `Abort`, and the
//! engine thread also drops every request whose event receiver is closed before each step: the
//! request's KV blocks are freed at once. `/metrics` renders what the engine thread publishes after
//! every step (`metrics`).

mod api;
mod detok;
mod http;
mod metrics;
pub mod template;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use template::{ChatTemplate, TemplateError};

use crate::cli::backend::{BackendArgs, EngineBackend, KvSizing};
use crate::engine::{Engine, EngineConfig};
use crate::model::{kv_block_bytes, LoadOptions, ModelConfig, Tokenizer};
use worker::{Command, Shared};

/// How big the KV pool is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvSize {
    Blocks(usize),
    /// CPU: bytes of KV memory (f32), divided into blocks. CUDA: what the memory plan leaves of
    /// `gpu_memory_utilization` of the free GPU memory (reported on stderr).
    Auto {
        cpu_bytes: usize,
        gpu_memory_utilization: f64,
    },
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A model directory or an embedded model name.
    pub model: String,
    pub load: LoadOptions,
    /// Which backend (and CUDA dtype and device) the engine runs on.
    pub backend: BackendArgs,
    /// The name reported in responses and `/v1/models` (default: `model` as given).
    pub served_model_name: Option<String>,
    /// A Jinja chat template file overriding the model's.
    pub chat_template: Option<PathBuf>,
    pub host: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// Require `Authorization: Bearer <key>` on `/v1/*`.
    pub api_key: Option<String>,
    /// Requests that may wait for admission; more get 429.
    pub max_waiting: usize,
    pub block_size: usize,
    pub kv: KvSize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub enable_prefix_caching: bool,
    /// Keep every KV block until its request ends (`--keep-all-kv-blocks`).
    pub keep_all_kv_blocks: bool,
    /// Replay decode steps from CUDA graphs (backends that record them).
    pub cuda_graphs: bool,
}

impl ServerConfig {
    /// Defaults: 127.0.0.1, a free port, 1 GiB of KV memory in blocks of 16, 256 sequences and
    /// 2048 tokens a step, prefix caching on, 1024 waiting requests at most.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            load: LoadOptions::default(),
            backend: BackendArgs::default(),
            served_model_name: None,
            chat_template: None,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            api_key: None,
            max_waiting: 1024,
            block_size: 16,
            kv: KvSize::Auto {
                cpu_bytes: 1 << 30,
                gpu_memory_utilization: 0.9,
            },
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            enable_prefix_caching: true,
            keep_all_kv_blocks: false,
            cuda_graphs: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Engine(#[from] crate::Error),
    #[error("chat template: {0}")]
    Template(#[from] TemplateError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("backend: {0}")]
    Backend(String),
    #[error("the engine thread stopped during startup")]
    EngineThread,
}

/// What the running server serves.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub model_name: String,
    pub config: ModelConfig,
    pub engine: EngineConfig,
    pub kv_pool_bytes: usize,
    /// "safetensors" or "dummy"
    pub weights: &'static str,
    /// The backend in words: "cpu (f32)", "cuda:0 NVIDIA H100 ... (sm_90, bf16; ...)".
    pub backend: String,
    pub has_tokenizer: bool,
    /// Where the chat template came from.
    pub chat_template: String,
}

/// A running server. Dropping it stops the engine and the listener.
pub struct ServerHandle {
    addr: SocketAddr,
    info: ServerInfo,
    commands: std::sync::mpsc::Sender<Command>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    engine: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Wait until the HTTP server stops by itself (it does not, unless it fails).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        match self.server.as_mut() {
            Some(task) => {
                let r = task.await;
                self.server = None;
                r.unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
            None => Ok(()),
        }
    }

    /// Stop: fail the requests in flight, stop accepting, wait (up to 10 s) for connections to end
    /// and for the engine thread.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let mut result = Ok(());
        if let Some(task) = self.server.take() {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(r)) => result = r,
                Ok(Err(e)) => result = Err(std::io::Error::other(e)),
                Err(_) => {} // connections still open after 10 s: leave them
            }
        }
        if let Some(thread) = self.engine.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What the engine thread reports once the model is loaded.
struct Startup {
    tokenizer: Option<Tokenizer>,
    config: ModelConfig,
    engine: EngineConfig,
    kv_pool_bytes: usize,
    weights: &'static str,
    backend: String,
}

fn build_engine<B: EngineBackend>(
    cfg: &ServerConfig,
    backend: B,
) -> Result<(Engine<B>, Instant, Startup), ServeError> {
    let source = crate::model::open(&cfg.model)?;
    let loaded = source.load(cfg.load)?;
    let weights = loaded.weights_kind;
    let config = loaded.config.clone();
    let (model, tokenizer) = loaded.into_model(backend)?;
    model.set_graphs(cfg.cuda_graphs);
    let described = model.backend.describe();
    let slots = crate::kv::KvLayout::for_model(&config, cfg.keep_all_kv_blocks).slots();
    let block_bytes = kv_block_bytes(
        &config,
        slots,
        cfg.block_size.max(1),
        model.backend.elem_bytes(),
    );
    let num_blocks = match cfg.kv {
        KvSize::Blocks(n) => n,
        KvSize::Auto {
            cpu_bytes,
            gpu_memory_utilization,
        } => model
            .backend
            .auto_kv_blocks(
                &model,
                &KvSizing {
                    block_size: cfg.block_size,
                    cpu_kv_bytes: cpu_bytes,
                    gpu_memory_utilization,
                    max_num_batched_tokens: cfg.max_num_batched_tokens,
                    max_num_seqs: cfg.max_num_seqs,
                    keep_all_kv_blocks: cfg.keep_all_kv_blocks,
                },
            )
            .map_err(|e| ServeError::Backend(format!("{e:#}")))?,
    };
    let engine_cfg = EngineConfig {
        block_size: cfg.block_size,
        num_blocks,
        max_num_seqs: cfg.max_num_seqs,
        max_num_batched_tokens: cfg.max_num_batched_tokens,
        enable_prefix_caching: cfg.enable_prefix_caching,
        keep_all_kv_blocks: cfg.keep_all_kv_blocks,
    };
    let epoch = Instant::now();
    let engine = Engine::new(model, engine_cfg, epoch)?;
    Ok((
        engine,
        epoch,
        Startup {
            tokenizer,
            config,
            engine: engine_cfg,
            kv_pool_bytes: num_blocks * block_bytes,
            weights,
            backend: described,
        },
    ))
}

/// Marks the engine stopped when the engine thread ends, however it ends.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
    }
}

/// Load the model, start the engine thread and the HTTP server on the current tokio runtime.
/// Returns the bound address (useful with port 0) and a handle.
pub async fn spawn(config: ServerConfig) -> Result<(SocketAddr, ServerHandle), ServeError> {
    let want = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(want)
        .await
        .map_err(|source| ServeError::Bind { addr: want, source })?;
    let addr = listener.local_addr()?;

    let model_dir = Path::new(&config.model)
        .is_dir()
        .then(|| PathBuf::from(&config.model));
    let template = match &config.chat_template {
        Some(path) => ChatTemplate::from_file(path, model_dir.as_deref())?,
        None => ChatTemplate::for_model(model_dir.as_deref())?,
    };

    let shared = Arc::new(Shared::new());
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<Command>();
    let (startup_tx, startup_rx) = oneshot::channel();
    let thread_cfg = config.clone();
    let thread_shared = shared.clone();
    let engine_thread = std::thread::Builder::new()
        .name("infermeter-engine".into())
        .spawn(move || {
            let _alive = AliveGuard(thread_shared.clone());
            // The backend is opened here, on the thread that drives it (a CUDA context is used
            // from the thread that made it current).
            let opened = match crate::cli::backend::open(&thread_cfg.backend) {
                Ok(o) => o,
                Err(e) => {
                    let _ = startup_tx.send(Err(ServeError::Engine(e)));
                    return;
                }
            };
            crate::cli::backend::dispatch!(opened, b => match build_engine(&thread_cfg, b) {
                Ok((engine, epoch, startup)) => {
                    if startup_tx.send(Ok(startup)).is_ok() {
                        worker::run(engine, epoch, cmd_rx, thread_shared, thread_cfg.max_waiting);
                    }
                }
                Err(e) => {
                    let _ = startup_tx.send(Err(e));
                }
            })
        })?;
    let startup = match startup_rx.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = engine_thread.join();
            return Err(e);
        }
        Err(_) => return Err(ServeError::EngineThread),
    };

    let model_name = config
        .served_model_name
        .clone()
        .unwrap_or_else(|| config.model.clone());
    let info = ServerInfo {
        model_name: model_name.clone(),
        config: startup.config.clone(),
        engine: startup.engine,
        kv_pool_bytes: startup.kv_pool_bytes,
        weights: startup.weights,
        backend: startup.backend.clone(),
        has_tokenizer: startup.tokenizer.is_some(),
        chat_template: template.origin().to_string(),
    };
    let state = Arc::new(http::AppState {
        commands: cmd_tx.clone(),
        shared,
        tokenizer: startup.tokenizer.map(Arc::new),
        template,
        model_name,
        model_root: config.model.clone(),
        max_context: startup.config.max_context,
        vocab_size: startup.config.vocab_size,
        kv_capacity_tokens: startup.engine.max_request_tokens(&startup.config),
        max_waiting: config.max_waiting,
        api_key: config.api_key.clone(),
        next_cid: AtomicU64::new(0),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    let app = http::router(state);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // token-sized SSE writes must not wait for Nagle
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    Ok((
        addr,
        ServerHandle {
            addr,
            info,
            commands: cmd_tx,
            stop: Some(stop_tx),
            server: Some(server),
            engine: Some(engine_thread),
        },
    ))
}
