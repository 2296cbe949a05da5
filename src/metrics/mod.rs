//! Metrics: per-request records turned into the numbers a run reports.
//!
//! - [`requests`]: the [`RequestRecord`] every target produces (scheduled, send, first-token, chunk and
//!   end times, token counts, error), the per-request metrics (`client_queue`, `ttft`, `tpot`, `itl`,
//!   `e2el`), SLOs, and [`summarize`] into a [`RunSummary`] (latency statistics, throughput over the
//!   run and over the steady-state window, goodput).
//! - [`stats`]: percentiles with numpy's default linear interpolation and the [`Summary`] each latency
//!   metric is reported with (count, mean, min, max, p50, p90, p95, p99).
//!
//! The definitions follow DESIGN.md ("Metric definitions") exactly; times are seconds on one monotonic
//! clock from the run's epoch.

pub mod energy;
pub mod requests;
pub mod stats;

pub use requests::{
    steady_window, summarize, LatencySummary, RequestRecord, RunSummary, Slo, ThroughputSummary,
};
pub use stats::{percentile, Summary};
