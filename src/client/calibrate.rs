//! The client's own timing error, measured against the mock server ([`crate::mock`]) started in this
//! process on loopback, on its own runtime and threads, sharing the client's clock.
//!
//! What a check measures (all in seconds, summarised with [`crate::metrics::Summary`]):
//! - `dispatch_lag`: send − scheduled of every request: how late the client sends against its
//!   precomputed schedule (the timer's wake-up, the runtime's scheduling, building the request);
//! - `delivery_latency`: client chunk time − the mock's emit time of the same chunk: loopback, the
//!   HTTP stack and the client's chunk handling (SSE parsing, JSON, bookkeeping);
//! - `ttft_error`, `itl_error`: measured minus configured TTFT and ITL: everything above plus the
//!   mock's own timer error — what a user would see as the tool's error on a perfectly timed server.
//!
//! The short automatic check ([`self_check_spec`]) runs before every load run and is recorded in
//! its results file; `infermeter load --calibrate` runs the full benchmark (see docs/load.md).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::executor::{LiveRecords, Mode, Runner, StepOutcome, StepPlan, Warmup};
use super::openai::{ClientOptions, Endpoint, OpenAiClient};
use crate::error::{Error, Result};
use crate::metrics::Summary;
use crate::mock::{MockConfig, MockHandle};
use crate::report::load_results::TimingCheck;
use crate::workload::session::{Session, Turn, TurnInput};
use crate::workload::Arrival;

/// The acceptance bound on every p99: 1 ms.
pub const BOUND_S: f64 = 1e-3;

/// One timing check against the mock.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub name: String,
    pub plan: StepPlan,
    pub ttft: Duration,
    pub itl: Duration,
    pub output_tokens: usize,
    /// Runtime threads of the mock.
    pub mock_workers: usize,
}

/// The automatic check recorded in every results file: 300 requests at 1,000/s (the first 20 are
/// warmup), each a 4-token stream with TTFT 2 ms and ITL 1 ms; about 0.4 s.
pub fn self_check_spec() -> CheckSpec {
    CheckSpec {
        name: "self-check".into(),
        plan: StepPlan {
            mode: Mode::Open {
                rate: 1000.0,
                arrival: Arrival::Constant,
                max_concurrency: None,
            },
            num_requests: Some(280),
            duration: None,
            warmup: Warmup::Requests(20),
            seed: 0,
            ramp_up: None,
        },
        ttft: Duration::from_millis(2),
        itl: Duration::from_millis(1),
        output_tokens: 4,
        mock_workers: 1,
    }
}

/// Run a check: start the mock, drive it, stop it, summarise.
pub async fn run_check(
    spec: &CheckSpec,
    cancel: watch::Receiver<bool>,
) -> Result<(TimingCheck, StepOutcome)> {
    let epoch = Instant::now();
    let cfg = MockConfig {
        ttft: spec.ttft,
        itl: spec.itl,
        output_len: None,
        emit_epoch: Some(epoch),
        ..MockConfig::default()
    };
    let mock = MockHandle::spawn(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        cfg,
        spec.mock_workers,
    )?;
    let mut opts = ClientOptions::new(&mock.url(), Endpoint::Completions);
    opts.request_timeout = Duration::from_secs(60);
    opts.idle_timeout = Duration::from_secs(30);
    let client = OpenAiClient::new(opts).map_err(|e| Error::Invalid(e.to_string()))?;
    let sessions = vec![Session {
        system: None,
        turns: vec![Turn {
            input: TurnInput::Ids((1..=8).collect()),
            max_tokens: spec.output_tokens.max(1),
            input_tokens: Some(8),
        }],
    }];
    let runner = Arc::new(Runner::new(client, sessions, epoch, cancel, None, false)?);
    let live = Arc::new(Mutex::new(LiveRecords::default()));
    let outcome = runner.run_step(&spec.plan, live).await;
    // Stopping joins the mock's thread: keep that off the async workers.
    let _ = tokio::task::spawn_blocking(move || mock.stop()).await;
    let outcome = outcome?;
    Ok((summarise(spec, &outcome), outcome))
}

/// p99 of |x| within the bound.
fn p99_abs_within(values: &[f64]) -> Option<bool> {
    let abs: Vec<f64> = values.iter().map(|v| v.abs()).collect();
    Summary::of(&abs).map(|s| s.p99 < BOUND_S)
}

/// The timing check of a finished step.
pub fn summarise(spec: &CheckSpec, out: &StepOutcome) -> TimingCheck {
    let ok: Vec<_> = out.measured.iter().filter(|r| r.record.is_ok()).collect();
    let lag: Vec<f64> = out
        .measured
        .iter()
        .map(|r| r.record.client_queue())
        .collect();
    let mut delivery = Vec::new();
    for r in &ok {
        if let Some(emits) = &r.mock_emit_s {
            delivery.extend(
                r.record
                    .chunk_times_s
                    .iter()
                    .zip(emits)
                    .map(|(got, sent)| got - sent),
            );
        }
    }
    let ttft = spec.ttft.as_secs_f64();
    let itl = spec.itl.as_secs_f64();
    let ttft_err: Vec<f64> = ok
        .iter()
        .filter_map(|r| r.record.ttft())
        .map(|t| t - ttft)
        .collect();
    let itl_err: Vec<f64> = ok
        .iter()
        .flat_map(|r| r.record.itls())
        .map(|t| t - itl)
        .collect();
    let (mode, rate, concurrency) = match spec.plan.mode {
        Mode::Open { rate, .. } => ("open", Some(rate), None),
        Mode::Closed { concurrency } => ("closed", None, Some(concurrency)),
    };
    TimingCheck {
        name: spec.name.clone(),
        mode: mode.into(),
        rate,
        concurrency,
        requests: out.measured.len(),
        failed: out.measured.len() - ok.len(),
        configured_ttft_s: ttft,
        configured_itl_s: itl,
        output_tokens: spec.output_tokens,
        dispatch_lag: Summary::of(&lag),
        delivery_latency: Summary::of(&delivery),
        ttft_error: Summary::of(&ttft_err),
        itl_error: Summary::of(&itl_err),
        bound_s: BOUND_S,
        dispatch_within_bound: (mode == "open")
            .then(|| Summary::of(&lag).map(|s| s.p99 < BOUND_S))
            .flatten(),
        ttft_within_bound: p99_abs_within(&ttft_err),
        itl_within_bound: p99_abs_within(&itl_err),
    }
}

/// One line per check for the terminal.
pub fn describe(c: &TimingCheck) -> String {
    let ms = |s: &Option<Summary>, f: fn(&Summary) -> f64| {
        s.as_ref()
            .map_or("-".to_string(), |s| format!("{:.3}", f(s) * 1e3))
    };
    let what = match (c.rate, c.concurrency) {
        (Some(r), _) => format!("{r:.0} req/s open loop"),
        (_, Some(n)) => format!("{n} concurrent streams"),
        _ => String::new(),
    };
    format!(
        "{} ({what}, {} requests, {} failed): dispatch lag p50 {} p99 {} max {} ms; delivery p50 {} p99 {} ms; \
         TTFT error p50 {} p99 {} ms; ITL error p50 {} p99 {} ms",
        c.name,
        c.requests,
        c.failed,
        ms(&c.dispatch_lag, |s| s.p50),
        ms(&c.dispatch_lag, |s| s.p99),
        ms(&c.dispatch_lag, |s| s.max),
        ms(&c.delivery_latency, |s| s.p50),
        ms(&c.delivery_latency, |s| s.p99),
        ms(&c.ttft_error, |s| s.p50),
        ms(&c.ttft_error, |s| s.p99),
        ms(&c.itl_error, |s| s.p50),
        ms(&c.itl_error, |s| s.p99),
    )
}
