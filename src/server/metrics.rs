//! Server metrics, rendered in the Prometheus text exposition format (version 0.0.4).
//!
//! The engine thread updates the gauges and engine counters after every step; the HTTP handlers
//! count requests and their outcomes. Names (all prefixed `infermeter_`) are listed in
//! `docs/serve.md`.

use std::fmt::Write;

/// A cumulative histogram with fixed upper bounds (seconds).
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

pub(crate) const STEP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
pub(crate) const E2E_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
];

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        for (i, &b) in self.bounds.iter().enumerate() {
            if v <= b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Everything `/metrics` shows.
#[derive(Debug, Clone)]
pub(crate) struct MetricsState {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub preemptions: u64,
    pub steps: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub finished_stop: u64,
    pub finished_length: u64,
    /// Dropped by the client before finishing (disconnects).
    pub aborted: u64,
    /// Failed inside the engine.
    pub failed: u64,
    pub rejected_invalid: u64,
    pub rejected_overloaded: u64,
    pub rejected_unauthorized: u64,
    pub step_time: Histogram,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

impl Default for MetricsState {
    fn default() -> Self {
        Self {
            running: 0,
            waiting: 0,
            kv_blocks_used: 0,
            kv_blocks_total: 0,
            prefix_query_tokens: 0,
            prefix_hit_tokens: 0,
            preemptions: 0,
            steps: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            finished_stop: 0,
            finished_length: 0,
            aborted: 0,
            failed: 0,
            rejected_invalid: 0,
            rejected_overloaded: 0,
            rejected_unauthorized: 0,
            step_time: Histogram::new(STEP_BUCKETS),
            ttft: Histogram::new(LATENCY_BUCKETS),
            itl: Histogram::new(LATENCY_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

impl MetricsState {
    /// Hits ÷ query tokens; `None` before any prompt token was looked up.
    pub(crate) fn prefix_hit_rate(&self) -> Option<f64> {
        (self.prefix_query_tokens > 0)
            .then(|| self.prefix_hit_tokens as f64 / self.prefix_query_tokens as f64)
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self, model: &str) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP infermeter_info The served model.");
        let _ = writeln!(o, "# TYPE infermeter_info gauge");
        let _ = writeln!(
            o,
            "infermeter_info{{model_name=\"{}\",version=\"{}\"}} 1",
            escape_label(model),
            env!("CARGO_PKG_VERSION")
        );
        metric(
            &mut o,
            "infermeter_num_requests_running",
            "gauge",
            "Requests in the running batch.",
            self.running,
        );
        metric(
            &mut o,
            "infermeter_num_requests_waiting",
            "gauge",
            "Requests queued for admission.",
            self.waiting,
        );
        metric(
            &mut o,
            "infermeter_kv_blocks_used",
            "gauge",
            "KV-cache blocks held by requests.",
            self.kv_blocks_used,
        );
        metric(
            &mut o,
            "infermeter_kv_blocks_free",
            "gauge",
            "KV-cache blocks free (including cached prefix blocks no request holds).",
            self.kv_blocks_total.saturating_sub(self.kv_blocks_used),
        );
        metric(
            &mut o,
            "infermeter_kv_blocks_total",
            "gauge",
            "KV-cache blocks in the pool.",
            self.kv_blocks_total,
        );
        let usage = if self.kv_blocks_total == 0 {
            0.0
        } else {
            self.kv_blocks_used as f64 / self.kv_blocks_total as f64
        };
        metric(
            &mut o,
            "infermeter_kv_cache_usage_ratio",
            "gauge",
            "Fraction of KV-cache blocks used (0 to 1).",
            usage,
        );
        metric(
            &mut o,
            "infermeter_prefix_cache_queries_tokens_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            self.prefix_query_tokens,
        );
        metric(
            &mut o,
            "infermeter_prefix_cache_hits_tokens_total",
            "counter",
            "Prompt tokens served from the prefix cache.",
            self.prefix_hit_tokens,
        );
        metric(
            &mut o,
            "infermeter_prefix_cache_hit_rate",
            "gauge",
            "Prefix-cache hit tokens / query tokens since start (NaN before any lookup).",
            // Undefined until a prompt is looked up: NaN, as Prometheus' own clients expose an
            // undefined value (a summary's quantiles before any observation), not a false 0.
            self.prefix_hit_rate().unwrap_or(f64::NAN),
        );
        metric(
            &mut o,
            "infermeter_num_preemptions_total",
            "counter",
            "Requests preempted (recomputed) for lack of KV blocks.",
            self.preemptions,
        );
        metric(
            &mut o,
            "infermeter_engine_steps_total",
            "counter",
            "Engine steps run.",
            self.steps,
        );
        metric(
            &mut o,
            "infermeter_prompt_tokens_total",
            "counter",
            "Prompt tokens of accepted requests.",
            self.prompt_tokens,
        );
        metric(
            &mut o,
            "infermeter_generation_tokens_total",
            "counter",
            "Tokens generated.",
            self.generation_tokens,
        );
        let _ = writeln!(
            o,
            "# HELP infermeter_request_success_total Requests that finished, by finish_reason."
        );
        let _ = writeln!(o, "# TYPE infermeter_request_success_total counter");
        let _ = writeln!(
            o,
            "infermeter_request_success_total{{finish_reason=\"stop\"}} {}",
            self.finished_stop
        );
        let _ = writeln!(
            o,
            "infermeter_request_success_total{{finish_reason=\"length\"}} {}",
            self.finished_length
        );
        metric(
            &mut o,
            "infermeter_requests_aborted_total",
            "counter",
            "Requests whose client went away before they finished (aborted, blocks freed).",
            self.aborted,
        );
        metric(
            &mut o,
            "infermeter_requests_failed_total",
            "counter",
            "Requests that failed inside the engine.",
            self.failed,
        );
        let _ = writeln!(
            o,
            "# HELP infermeter_requests_rejected_total Requests refused before reaching the engine, by reason."
        );
        let _ = writeln!(o, "# TYPE infermeter_requests_rejected_total counter");
        for (reason, n) in [
            ("invalid", self.rejected_invalid),
            ("overloaded", self.rejected_overloaded),
            ("unauthorized", self.rejected_unauthorized),
        ] {
            let _ = writeln!(
                o,
                "infermeter_requests_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        self.step_time.render(
            &mut o,
            "infermeter_step_duration_seconds",
            "Duration of engine steps.",
        );
        self.ttft.render(
            &mut o,
            "infermeter_time_to_first_token_seconds",
            "From request arrival to its first token.",
        );
        self.itl.render(
            &mut o,
            "infermeter_inter_token_latency_seconds",
            "Between consecutive tokens of a request.",
        );
        self.e2e.render(
            &mut o,
            "infermeter_e2e_request_latency_seconds",
            "From request arrival to its last token.",
        );
        o
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
    }

    #[test]
    fn prefix_hit_rate_is_nan_until_a_lookup() {
        let mut m = MetricsState::default();
        assert_eq!(m.prefix_hit_rate(), None);
        let text = m.render("m");
        assert!(
            text.contains("\ninfermeter_prefix_cache_hit_rate NaN\n"),
            "{text}"
        );
        m.prefix_query_tokens = 8;
        m.prefix_hit_tokens = 2;
        assert_eq!(m.prefix_hit_rate(), Some(0.25));
        assert!(m
            .render("m")
            .contains("\ninfermeter_prefix_cache_hit_rate 0.25\n"));
    }

    #[test]
    fn exposition_names_every_metric_once() {
        let text = MetricsState::default().render("m\"x");
        assert!(text.contains("infermeter_info{model_name=\"m\\\"x\""));
        for name in [
            "infermeter_num_requests_running",
            "infermeter_kv_blocks_free",
            "infermeter_prefix_cache_hit_rate",
            "infermeter_time_to_first_token_seconds",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
    }
}
