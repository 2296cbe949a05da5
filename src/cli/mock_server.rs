//! `infermeter mock-server`: a synthetic OpenAI-compatible streaming server (see [`crate::mock`]) with
//! configurable TTFT, ITL, output lengths and injected errors, for tests and calibration. Prints
//! `listening on http://ADDR` (stdout, flushed) once it accepts connections, so scripts can start it
//! on port 0 and read the port; stops on Ctrl-C or after `--duration`.

use std::io::Write;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;

use anyhow::{anyhow, Context};
use clap::Args;

use crate::client::parse_duration;
use crate::mock::{parse_error_modes, serve, MockConfig};
use crate::workload::LengthDist;

#[derive(Debug, Clone, Args)]
pub struct MockServerArgs {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the line printed at start says which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Time to first token, e.g. 20ms.
    #[arg(long, default_value = "20ms")]
    pub ttft: String,
    /// Inter-token latency, e.g. 5ms.
    #[arg(long, default_value = "5ms")]
    pub itl: String,
    /// Output lengths (capped by each request's max_tokens); default: exactly max_tokens.
    #[arg(long)]
    pub output_len: Option<String>,
    /// Tokens per streamed event.
    #[arg(long, default_value_t = 1)]
    pub tokens_per_chunk: usize,
    /// Fraction of requests that fail, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// How they fail, picked uniformly: httpNNN (e.g. http500, http429), reset, malformed, stall, hang.
    #[arg(long, default_value = "http500")]
    pub error_modes: String,
    /// How long `stall` and `hang` hold a request.
    #[arg(long, default_value = "30s")]
    pub stall: String,
    /// The model id served.
    #[arg(long, default_value = "infermeter-mock")]
    pub model: String,
    /// Seed of lengths and error decisions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Put SSE comments and CRLF line ends into every event (exercises clients' parsers).
    #[arg(long)]
    pub sse_comments: bool,
    /// Runtime threads (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Stop after this long (e.g. 60s); default: until Ctrl-C.
    #[arg(long)]
    pub duration: Option<String>,
}

pub fn run(a: MockServerArgs) -> anyhow::Result<()> {
    let cfg = MockConfig {
        ttft: parse_duration(&a.ttft).map_err(|e| anyhow!("--ttft: {e}"))?,
        itl: parse_duration(&a.itl).map_err(|e| anyhow!("--itl: {e}"))?,
        output_len: a
            .output_len
            .as_deref()
            .map(|t| LengthDist::from_str(t).map_err(|e| anyhow!("--output-len: {e}")))
            .transpose()?,
        tokens_per_chunk: a.tokens_per_chunk,
        error_rate: a.error_rate,
        error_modes: parse_error_modes(&a.error_modes)
            .map_err(|e| anyhow!("--error-modes: {e}"))?,
        stall: parse_duration(&a.stall).map_err(|e| anyhow!("--stall: {e}"))?,
        model: a.model.clone(),
        seed: a.seed,
        emit_epoch: None,
        sse_comments: a.sse_comments,
    };
    cfg.validate()?;
    let stop_after = a
        .duration
        .as_deref()
        .map(|d| parse_duration(d).map_err(|e| anyhow!("--duration: {e}")))
        .transpose()?;
    let addr: SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .with_context(|| format!("--host {} --port {}: not an address", a.host, a.port))?;
    let workers = a
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("infermeter-mock")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        println!(
            "infermeter mock-server listening on http://{local} (ttft {}, itl {}, error rate {})",
            a.ttft, a.itl, a.error_rate
        );
        std::io::stdout().flush()?;
        let stop = async move {
            match stop_after {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        let stats = serve(listener, cfg, stop).await?;
        eprintln!(
            "mock-server: {} requests, {} injected errors, {} tokens",
            stats.requests.load(Ordering::Relaxed),
            stats.injected_errors.load(Ordering::Relaxed),
            stats.tokens.load(Ordering::Relaxed)
        );
        Ok(())
    })
}
