//! Per-request records and the run summary built from them.
//!
//! Definitions (DESIGN.md, "Metric definitions"; the JSON and reports use these names):
//!
//! - `client_queue` = send − scheduled: how late the client sent the request against its precomputed
//!   schedule (coordinated omission made visible).
//! - `ttft` = first chunk with non-empty content − send.
//! - `e2el` = last content chunk − send.
//! - `tpot` = (e2el − ttft) / (output_tokens − 1), per request; undefined for output_tokens ≤ 1, and
//!   undefined when the response arrived as a single content chunk (a non-streamed response, or a
//!   stream that delivered everything at once): no per-token timing was observed, and
//!   (e2el − ttft) = 0 would claim an instant decode.
//! - `itl` = every gap between consecutive content chunks, pooled over requests.
//! - throughput = requests, input tokens, output tokens per second over the wall time from the first
//!   send to the last end of the successful requests; also over the steady-state window (all
//!   concurrency slots busy, see [`summarize`]).
//! - `goodput` = successful requests meeting every SLO given, per second of the same wall time.
//!
//! A failed request (its `error` set) counts in `failed` only: it is left out of the latency
//! statistics, the token totals and the throughput. It still occupies a concurrency slot while in
//! flight, so it counts when finding the steady-state window.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::stats::Summary;
use crate::error::{Error, Result};

/// What happened to one request. Every time is in seconds from the run's epoch, all read from one
/// monotonic clock.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub id: u64,
    /// When the arrival process said the request was due.
    pub scheduled_s: f64,
    /// When the client actually sent it.
    pub send_s: f64,
    /// Arrival of the first chunk with non-empty content.
    pub first_token_s: Option<f64>,
    /// Arrival of every content chunk, the first included (a chunk may carry several tokens).
    pub chunk_times_s: Vec<f64>,
    /// When the response was complete (the stream closed), if it completed.
    pub end_s: Option<f64>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// Why the request failed; `None` for a successful one.
    pub error: Option<String>,
}

impl RequestRecord {
    /// Whether the request succeeded (no error recorded).
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    /// `client_queue` = send − scheduled.
    pub fn client_queue(&self) -> f64 {
        self.send_s - self.scheduled_s
    }

    /// The first content chunk's time: `first_token_s`, else the first of `chunk_times_s`.
    pub fn first_content_s(&self) -> Option<f64> {
        self.first_token_s
            .or_else(|| self.chunk_times_s.first().copied())
    }

    /// The last content chunk's time: the last of `chunk_times_s`, else `first_token_s`.
    pub fn last_content_s(&self) -> Option<f64> {
        self.chunk_times_s.last().copied().or(self.first_token_s)
    }

    /// `ttft` = first content chunk − send; `None` when no content arrived.
    pub fn ttft(&self) -> Option<f64> {
        self.first_content_s().map(|t| t - self.send_s)
    }

    /// `e2el` = last content chunk − send; `None` when no content arrived.
    pub fn e2el(&self) -> Option<f64> {
        self.last_content_s().map(|t| t - self.send_s)
    }

    /// Content chunks observed: `chunk_times_s`, or 1 for a record with only `first_token_s`.
    pub fn content_chunks(&self) -> usize {
        match self.chunk_times_s.len() {
            0 => usize::from(self.first_token_s.is_some()),
            n => n,
        }
    }

    /// Whether per-token timing was observed: at least two content chunks. A non-streamed response
    /// is one chunk whatever its length.
    pub fn per_token_timing_observed(&self) -> bool {
        self.content_chunks() >= 2
    }

    /// `tpot` = (e2el − ttft) / (output_tokens − 1); `None` for `output_tokens <= 1`, no content, or
    /// a single content chunk (no per-token timing observed, see the module docs).
    pub fn tpot(&self) -> Option<f64> {
        if self.output_tokens <= 1 || !self.per_token_timing_observed() {
            return None;
        }
        let (ttft, e2el) = (self.ttft()?, self.e2el()?);
        Some((e2el - ttft) / (self.output_tokens - 1) as f64)
    }

    /// `itl`: the gaps between consecutive content chunks (one fewer than the chunks).
    pub fn itls(&self) -> Vec<f64> {
        self.chunk_times_s.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// When the request stopped occupying the target: `end_s`, else its last content chunk, else its
    /// send time; never before the send.
    pub fn finish_s(&self) -> f64 {
        let t = self.end_s.or(self.last_content_s()).unwrap_or(self.send_s);
        t.max(self.send_s)
    }
}

/// Service-level objectives, in seconds; a request meets them when it meets every one given.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Slo {
    pub ttft_s: Option<f64>,
    pub tpot_s: Option<f64>,
    pub e2el_s: Option<f64>,
}

impl Slo {
    /// Whether `r` meets every objective given (`<=`, as vLLM's goodput). A request with no content
    /// fails a `ttft` or `e2el` objective; a request of at most one output token has no `tpot` and
    /// meets a `tpot` objective (it has no inter-token time to be late on); a request of several
    /// tokens whose `tpot` was not observed (one content chunk: not streamed) fails it, since the
    /// objective cannot be verified. Failed requests never meet it.
    pub fn is_met_by(&self, r: &RequestRecord) -> bool {
        let within =
            |limit: Option<f64>, value: Option<f64>, undefined_ok: bool| match (limit, value) {
                (None, _) => true,
                (Some(l), Some(v)) => v <= l,
                (Some(_), None) => undefined_ok,
            };
        r.is_ok()
            && within(self.ttft_s, r.ttft(), false)
            && within(self.tpot_s, r.tpot(), r.output_tokens <= 1)
            && within(self.e2el_s, r.e2el(), false)
    }
}

const SLO_FORM: &str =
    "KEY=DURATION[,KEY=DURATION…] with keys ttft, tpot, e2el and units us, ms, s \
                        (e.g. ttft=200ms,tpot=50ms,e2el=10s)";

/// A duration with a unit (`us`, `µs`, `ms`, `s`) in seconds; the error names the SLO key.
fn parse_duration(key: &str, value: &str) -> Result<f64> {
    let v = value.trim();
    // Divide by the exact per-second count so that `200ms` gives the f64 nearest 0.2.
    let (number, per_s) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix("us").or_else(|| v.strip_suffix("µs")) {
        (n, 1e6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(Error::Invalid(format!(
            "SLO `{key}`: `{value}` has no unit (use us, ms or s, e.g. {key}=200ms)"
        )));
    };
    match number.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x / per_s),
        _ => Err(Error::Invalid(format!(
            "SLO `{key}`: `{value}` is not a positive duration"
        ))),
    }
}

impl FromStr for Slo {
    type Err = Error;

    /// Parse `ttft=200ms,tpot=50ms,e2el=10s` (any subset, any order, at least one).
    fn from_str(text: &str) -> Result<Self> {
        let mut slo = Slo::default();
        let entries: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Err(Error::Invalid(format!(
                "SLO `{text}` is empty: expected {SLO_FORM}"
            )));
        }
        for entry in entries {
            let Some((key, value)) = entry.split_once('=') else {
                return Err(Error::Invalid(format!(
                    "SLO entry `{entry}` is not KEY=DURATION: expected {SLO_FORM}"
                )));
            };
            let key = key.trim().to_ascii_lowercase();
            let slot = match key.as_str() {
                "ttft" => &mut slo.ttft_s,
                "tpot" => &mut slo.tpot_s,
                "e2el" => &mut slo.e2el_s,
                _ => {
                    return Err(Error::Invalid(format!(
                        "SLO key `{key}` is unknown (keys: ttft, tpot, e2el)"
                    )))
                }
            };
            if slot.is_some() {
                return Err(Error::Invalid(format!("SLO key `{key}` is given twice")));
            }
            *slot = Some(parse_duration(&key, value)?);
        }
        Ok(slo)
    }
}

impl fmt::Display for Slo {
    /// The parse form, in seconds (`ttft=0.2s,tpot=0.05s`), so it reads back exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            ("ttft", self.ttft_s),
            ("tpot", self.tpot_s),
            ("e2el", self.e2el_s),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}s")))
        .collect();
        f.write_str(&parts.join(","))
    }
}

/// Latency statistics in seconds over the successful requests; `None` where no value exists.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LatencySummary {
    pub ttft: Option<Summary>,
    pub tpot: Option<Summary>,
    pub itl: Option<Summary>,
    pub e2el: Option<Summary>,
    pub client_queue: Option<Summary>,
}

impl LatencySummary {
    fn of(ok: &[&RequestRecord]) -> LatencySummary {
        let each = |f: fn(&RequestRecord) -> Option<f64>| {
            Summary::of(&ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
        };
        let itls: Vec<f64> = ok.iter().flat_map(|r| r.itls()).collect();
        LatencySummary {
            ttft: each(RequestRecord::ttft),
            tpot: each(RequestRecord::tpot),
            itl: Summary::of(&itls),
            e2el: each(RequestRecord::e2el),
            client_queue: each(|r| Some(r.client_queue())),
        }
    }
}

/// Rates over a time span. All rates are 0 when the span is empty (no successful request, or a
/// span of zero length), so the summary never holds NaN or infinity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ThroughputSummary {
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub input_tokens_per_s: f64,
    pub output_tokens_per_s: f64,
    pub total_tokens_per_s: f64,
}

impl ThroughputSummary {
    /// Rates of the given counts (fractional token counts allowed) over `duration_s`.
    pub fn over(duration_s: f64, requests: f64, input_tokens: f64, output_tokens: f64) -> Self {
        let d = if duration_s.is_finite() && duration_s > 0.0 {
            duration_s
        } else {
            0.0
        };
        let rate = |x: f64| if d > 0.0 { x / d } else { 0.0 };
        ThroughputSummary {
            duration_s: d,
            requests_per_s: rate(requests),
            input_tokens_per_s: rate(input_tokens),
            output_tokens_per_s: rate(output_tokens),
            total_tokens_per_s: rate(input_tokens + output_tokens),
        }
    }
}

/// Everything a run's requests say, summarised.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Successful requests.
    pub completed: usize,
    /// Requests with an error.
    pub failed: usize,
    /// Prompt tokens of the successful requests.
    pub total_input_tokens: usize,
    /// Output tokens of the successful requests.
    pub total_output_tokens: usize,
    pub latency: LatencySummary,
    /// Over the wall time from the first send to the last end of the successful requests.
    pub throughput: ThroughputSummary,
    /// Over the steady-state window, when a concurrency was given and reached.
    pub steady_state: Option<ThroughputSummary>,
    /// Successful requests meeting every SLO, per second of the run's wall time; `None` without SLO.
    pub goodput_requests_per_s: Option<f64>,
    pub slo: Option<Slo>,
}

/// Summarise a run.
///
/// - Latencies and token totals: successful requests only.
/// - `throughput`: over the wall time from the first send to the last end ([`RequestRecord::finish_s`])
///   of the successful requests.
/// - `steady_state` (only with `concurrency = Some(c)`): the in-flight count over time is built from
///   every request's send (+1) and finish (−1), failed ones included since they hold a slot; events at
///   the same instant are applied together. The window runs from the first instant the count reaches
///   `c` (or more) to the last instant it drops from `c` or more to below `c`; `None` when that never
///   happens or the window has zero length. Within the window `[start, end]` (both ends included),
///   counting successful requests only:
///   - output tokens: each request's `output_tokens` spread evenly over its content chunks, so it
///     contributes `output_tokens × (chunks inside the window) / (all its chunks)` (a request with no
///     chunk contributes all its tokens if it finished inside the window);
///   - input tokens: the `prompt_tokens` of requests sent inside the window;
///   - requests: those that finished inside the window.
/// - `goodput_requests_per_s` (only with an SLO): successful requests meeting it ÷ the run's wall time.
pub fn summarize(
    records: &[RequestRecord],
    slo: Option<&Slo>,
    concurrency: Option<usize>,
) -> RunSummary {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.is_ok()).collect();
    let total_input_tokens: usize = ok.iter().map(|r| r.prompt_tokens).sum();
    let total_output_tokens: usize = ok.iter().map(|r| r.output_tokens).sum();
    let throughput = ThroughputSummary::over(
        wall_time(&ok),
        ok.len() as f64,
        total_input_tokens as f64,
        total_output_tokens as f64,
    );
    let steady_state = concurrency
        .and_then(|c| steady_window(records, c))
        .map(|w| window_throughput(&ok, w));
    let goodput_requests_per_s = slo.map(|s| {
        let met = ok.iter().filter(|r| s.is_met_by(r)).count();
        ThroughputSummary::over(throughput.duration_s, met as f64, 0.0, 0.0).requests_per_s
    });
    RunSummary {
        completed: ok.len(),
        failed: records.len() - ok.len(),
        total_input_tokens,
        total_output_tokens,
        latency: LatencySummary::of(&ok),
        throughput,
        steady_state,
        goodput_requests_per_s,
        slo: slo.cloned(),
    }
}

/// From the first send to the last finish of `ok`; 0 when empty.
fn wall_time(ok: &[&RequestRecord]) -> f64 {
    let first = ok.iter().map(|r| r.send_s).fold(f64::INFINITY, f64::min);
    let last = ok
        .iter()
        .map(|r| r.finish_s())
        .fold(f64::NEG_INFINITY, f64::max);
    if ok.is_empty() {
        0.0
    } else {
        last - first
    }
}

/// The steady-state window `(start, end)` for `concurrency` slots (see [`summarize`]).
pub fn steady_window(records: &[RequestRecord], concurrency: usize) -> Option<(f64, f64)> {
    if concurrency == 0 {
        return None;
    }
    let mut events: Vec<(f64, i64)> = records
        .iter()
        .flat_map(|r| [(r.send_s, 1), (r.finish_s(), -1)])
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let c = concurrency as i64;
    let (mut count, mut start, mut end) = (0i64, None, None);
    for group in events.chunk_by(|a, b| a.0 == b.0) {
        let before = count;
        count += group.iter().map(|e| e.1).sum::<i64>();
        let t = group[0].0;
        if count >= c && start.is_none() {
            start = Some(t);
        }
        if before >= c && count < c {
            end = Some(t);
        }
    }
    match (start, end) {
        (Some(s), Some(e)) if e > s => Some((s, e)),
        _ => None,
    }
}

/// Throughput of the successful requests within `[start, end]` (attribution rules in [`summarize`]).
fn window_throughput(ok: &[&RequestRecord], (start, end): (f64, f64)) -> ThroughputSummary {
    let inside = |t: f64| start <= t && t <= end;
    let requests = ok.iter().filter(|r| inside(r.finish_s())).count();
    let input: usize = ok
        .iter()
        .filter(|r| inside(r.send_s))
        .map(|r| r.prompt_tokens)
        .sum();
    let output: f64 = ok.iter().map(|r| output_tokens_within(r, &inside)).sum();
    ThroughputSummary::over(end - start, requests as f64, input as f64, output)
}

/// `r`'s output tokens attributed to the window, spread evenly over its content chunks.
fn output_tokens_within(r: &RequestRecord, inside: &impl Fn(f64) -> bool) -> f64 {
    let chunks = &r.chunk_times_s;
    if chunks.is_empty() {
        return if inside(r.finish_s()) {
            r.output_tokens as f64
        } else {
            0.0
        };
    }
    let n_inside = chunks.iter().filter(|&&t| inside(t)).count();
    r.output_tokens as f64 * n_inside as f64 / chunks.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
    }

    macro_rules! assert_close {
        ($a:expr, $b:expr) => {{
            let (a, b): (f64, f64) = ($a, $b);
            assert!(close(a, b), "{} = {} != {}", stringify!($a), a, b)
        }};
    }

    #[allow(clippy::too_many_arguments)]
    fn rec(
        id: u64,
        scheduled: f64,
        send: f64,
        chunks: &[f64],
        end: Option<f64>,
        prompt: usize,
        output: usize,
        error: Option<&str>,
    ) -> RequestRecord {
        RequestRecord {
            id,
            scheduled_s: scheduled,
            send_s: send,
            first_token_s: chunks.first().copied(),
            chunk_times_s: chunks.to_vec(),
            end_s: end,
            prompt_tokens: prompt,
            output_tokens: output,
            error: error.map(String::from),
        }
    }

    /// A: ttft 0.5, e2el 1.5, tpot 1/3, itl [0.25, 0.25, 0.5], queue 0.
    /// B: ttft 0.5, e2el 1.5, tpot 1.0, itl [1.0], queue 0.25 (ends 1 s after its last chunk).
    /// C: ttft 0.25, e2el 0.25, no tpot (1 token), no itl, queue 0.
    /// D: failed; its numbers would change every statistic if it were counted.
    fn run() -> Vec<RequestRecord> {
        vec![
            rec(0, 0.0, 0.0, &[0.5, 0.75, 1.0, 1.5], Some(1.5), 10, 4, None),
            rec(1, 0.25, 0.5, &[1.0, 2.0], Some(2.5), 20, 2, None),
            rec(2, 1.0, 1.0, &[1.25], Some(1.25), 5, 1, None),
            rec(
                3,
                1.0,
                1.0,
                &[1.125],
                Some(3.0),
                100,
                1,
                Some("stream reset"),
            ),
        ]
    }

    #[test]
    fn per_request_metrics() {
        let r = run();
        assert_eq!(r[0].client_queue(), 0.0);
        assert_eq!(r[1].client_queue(), 0.25);
        assert_eq!(r[0].ttft(), Some(0.5));
        assert_eq!(r[0].e2el(), Some(1.5));
        assert_close!(r[0].tpot().unwrap(), 1.0 / 3.0);
        assert_eq!(r[0].itls(), vec![0.25, 0.25, 0.5]);
        assert_eq!(r[1].ttft(), Some(0.5));
        assert_eq!(
            r[1].e2el(),
            Some(1.5),
            "e2el ends at the last chunk, not at end_s"
        );
        assert_eq!(r[1].tpot(), Some(1.0));
        assert_eq!(r[1].finish_s(), 2.5);
        assert_eq!(r[2].ttft(), Some(0.25));
        assert_eq!(r[2].e2el(), Some(0.25));
        assert!(r[2].itls().is_empty());
    }

    #[test]
    fn tpot_is_undefined_for_one_token_or_no_content() {
        let one = rec(0, 0.0, 0.0, &[0.5], Some(0.5), 3, 1, None);
        assert_eq!(one.tpot(), None);
        let zero = rec(0, 0.0, 0.0, &[], Some(0.5), 3, 0, None);
        assert_eq!((zero.ttft(), zero.e2el(), zero.tpot()), (None, None, None));
        assert_eq!(zero.finish_s(), 0.5);
    }

    #[test]
    fn summary_latencies_exclude_failed_requests() {
        let s = summarize(&run(), None, None);
        assert_eq!((s.completed, s.failed), (3, 1));
        assert_eq!((s.total_input_tokens, s.total_output_tokens), (35, 7));

        let ttft = s.latency.ttft.unwrap();
        assert_eq!((ttft.count, ttft.min, ttft.max), (3, 0.25, 0.5));
        assert_close!(ttft.mean, 1.25 / 3.0);
        assert_eq!((ttft.p50, ttft.p90, ttft.p99), (0.5, 0.5, 0.5));

        let tpot = s.latency.tpot.unwrap();
        assert_eq!(tpot.count, 2);
        assert_close!(tpot.mean, 2.0 / 3.0);
        assert_close!(tpot.p50, 2.0 / 3.0);
        assert_close!(tpot.p90, 1.0 / 3.0 + 0.9 * (2.0 / 3.0));

        // Pooled ITLs: [0.25, 0.25, 0.5, 1.0].
        let itl = s.latency.itl.unwrap();
        assert_eq!((itl.count, itl.min, itl.max), (4, 0.25, 1.0));
        assert_close!(itl.mean, 0.5);
        assert_close!(itl.p50, 0.375);
        assert_close!(itl.p90, 0.85);
        assert_close!(itl.p95, 0.925);
        assert_close!(itl.p99, 0.985);

        let e2el = s.latency.e2el.unwrap();
        assert_eq!(
            (e2el.count, e2el.min, e2el.max, e2el.p50),
            (3, 0.25, 1.5, 1.5)
        );
        assert_close!(e2el.mean, 3.25 / 3.0);

        let queue = s.latency.client_queue.unwrap();
        assert_eq!(
            (queue.count, queue.min, queue.max, queue.p50),
            (3, 0.0, 0.25, 0.0)
        );
        assert_close!(queue.mean, 0.25 / 3.0);
    }

    #[test]
    fn throughput_spans_first_send_to_last_successful_end() {
        let t = summarize(&run(), None, None).throughput;
        // 0.0 (A sent) .. 2.5 (B ends); the failed D ending at 3.0 does not stretch it.
        assert_eq!(t.duration_s, 2.5);
        assert_close!(t.requests_per_s, 1.2);
        assert_close!(t.input_tokens_per_s, 14.0);
        assert_close!(t.output_tokens_per_s, 2.8);
        assert_close!(t.total_tokens_per_s, 16.8);
    }

    #[test]
    fn steady_state_window_and_attribution() {
        let r = run();
        // In flight: 0:1, 0.5:2, 1.0:4, 1.25:3, 1.5:2, 2.5:1, 3.0:0.
        assert_eq!(steady_window(&r, 2), Some((0.5, 2.5)));
        assert_eq!(steady_window(&r, 3), Some((1.0, 1.5)));
        assert_eq!(steady_window(&r, 4), Some((1.0, 1.25)));
        assert_eq!(steady_window(&r, 5), None);
        assert_eq!(steady_window(&r, 0), None);

        // [0.5, 2.5]: all 7 output tokens; B's and C's prompts (25); A, B, C finish inside.
        let w = summarize(&r, None, Some(2)).steady_state.unwrap();
        assert_eq!(w.duration_s, 2.0);
        assert_close!(w.output_tokens_per_s, 3.5);
        assert_close!(w.input_tokens_per_s, 12.5);
        assert_close!(w.requests_per_s, 1.5);
        assert_close!(w.total_tokens_per_s, 16.0);

        // [1.0, 1.5]: A 2 of 4 chunks (2 tokens), B 1 of 2 chunks (1 token), C 1; C's prompt (5);
        // C and A finish inside.
        let w = summarize(&r, None, Some(3)).steady_state.unwrap();
        assert_eq!(w.duration_s, 0.5);
        assert_close!(w.output_tokens_per_s, 8.0);
        assert_close!(w.input_tokens_per_s, 10.0);
        assert_close!(w.requests_per_s, 4.0);

        assert_eq!(summarize(&r, None, Some(5)).steady_state, None);
        assert_eq!(summarize(&r, None, None).steady_state, None);
    }

    #[test]
    fn closed_loop_window_ends_at_first_end_after_last_send() {
        // Two slots, four requests of 1 s each, each sent as soon as a slot frees.
        let r = vec![
            rec(0, 0.0, 0.0, &[1.0], Some(1.0), 1, 1, None),
            rec(1, 0.0, 0.0, &[1.5], Some(1.5), 1, 1, None),
            rec(2, 0.0, 1.0, &[2.0], Some(2.0), 1, 1, None),
            rec(3, 0.0, 1.5, &[2.5], Some(2.5), 1, 1, None),
        ];
        assert_eq!(steady_window(&r, 2), Some((0.0, 2.0)));
    }

    #[test]
    fn goodput_counts_successes_meeting_every_slo() {
        let r = run();
        let slo: Slo = "ttft=500ms,tpot=500ms".parse().unwrap();
        // A meets both; B's tpot 1.0 misses; C has no tpot and meets; D failed.
        assert!(slo.is_met_by(&r[0]) && !slo.is_met_by(&r[1]) && slo.is_met_by(&r[2]));
        assert!(!slo.is_met_by(&r[3]));
        let s = summarize(&r, Some(&slo), None);
        assert_close!(s.goodput_requests_per_s.unwrap(), 0.8);
        assert_eq!(s.slo, Some(slo));

        let e2el: Slo = "e2el=1s".parse().unwrap();
        assert_close!(
            summarize(&r, Some(&e2el), None)
                .goodput_requests_per_s
                .unwrap(),
            0.4
        );
        assert_eq!(summarize(&r, None, None).goodput_requests_per_s, None);
    }

    #[test]
    fn a_single_chunk_of_many_tokens_has_no_tpot_and_fails_a_tpot_slo() {
        // A non-streamed response: 10 tokens arriving in one body at 0.5 s.
        let whole = rec(0, 0.0, 0.0, &[0.5], Some(0.5), 3, 10, None);
        assert_eq!((whole.ttft(), whole.e2el()), (Some(0.5), Some(0.5)));
        assert_eq!(whole.tpot(), None, "no per-token timing observed, not 0");
        assert!(!whole.per_token_timing_observed());
        let slo: Slo = "tpot=1ms".parse().unwrap();
        assert!(!slo.is_met_by(&whole), "unobserved TPOT cannot meet an SLO");
        // only a first_token_s: one chunk too
        let mut first_only = whole.clone();
        first_only.chunk_times_s.clear();
        assert_eq!(first_only.tpot(), None);
        // one token in one chunk: no TPOT, and nothing to be late on
        assert!(slo.is_met_by(&rec(0, 0.0, 0.0, &[0.5], Some(0.5), 3, 1, None)));
        let s = summarize(&[whole], Some(&slo), None);
        assert_eq!(s.latency.tpot, None);
        assert_eq!(s.goodput_requests_per_s, Some(0.0));
    }

    #[test]
    fn no_content_fails_ttft_slo() {
        let zero = rec(0, 0.0, 0.0, &[], Some(0.5), 3, 0, None);
        assert!(!"ttft=10s".parse::<Slo>().unwrap().is_met_by(&zero));
        assert!("tpot=10ms".parse::<Slo>().unwrap().is_met_by(&zero));
    }

    #[test]
    fn empty_and_all_failed_runs_have_zero_rates() {
        let s = summarize(&[], None, Some(2));
        assert_eq!((s.completed, s.failed), (0, 0));
        assert_eq!(s.throughput, ThroughputSummary::over(0.0, 0.0, 0.0, 0.0));
        assert_eq!(s.latency.ttft, None);
        assert_eq!(s.steady_state, None);

        let failed = vec![rec(0, 0.0, 0.0, &[0.5], Some(1.0), 3, 1, Some("500"))];
        let s = summarize(&failed, Some(&"ttft=1s".parse().unwrap()), None);
        assert_eq!((s.completed, s.failed), (0, 1));
        assert_eq!(s.throughput.requests_per_s, 0.0);
        assert_eq!(s.goodput_requests_per_s, Some(0.0));
        assert!(serde_json::to_string(&s).unwrap().contains("\"failed\":1"));
    }

    #[test]
    fn slo_parses_units() {
        let s: Slo = "ttft=200ms,tpot=50ms,e2el=10s".parse().unwrap();
        assert_close!(s.ttft_s.unwrap(), 0.2);
        assert_close!(s.tpot_s.unwrap(), 0.05);
        assert_eq!(s.e2el_s, Some(10.0));
        let s: Slo = " TPOT = 100us ".parse().unwrap();
        assert_eq!((s.ttft_s, s.e2el_s), (None, None));
        assert_close!(s.tpot_s.unwrap(), 1e-4);
        assert_eq!(s.to_string(), "tpot=0.0001s");
        let back: Slo = s.to_string().parse().unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn slo_errors_name_the_key() {
        for (text, want) in [
            ("ttft=abc", "SLO `ttft`"),
            ("ttft=200", "SLO `ttft`: `200` has no unit"),
            ("tpot=-5ms", "SLO `tpot`"),
            ("e2el=0s", "SLO `e2el`"),
            ("e2el=nans", "SLO `e2el`"),
            ("foo=1s", "SLO key `foo` is unknown"),
            ("ttft=1s,ttft=2s", "SLO key `ttft` is given twice"),
            ("ttft", "SLO entry `ttft` is not KEY=DURATION"),
            ("", "is empty"),
        ] {
            let msg = text.parse::<Slo>().unwrap_err().to_string();
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }

    #[test]
    fn json_uses_the_design_names() {
        let s = summarize(&run(), Some(&"ttft=1s".parse().unwrap()), Some(2));
        let v = serde_json::to_value(&s).unwrap();
        for key in ["ttft", "tpot", "itl", "e2el", "client_queue"] {
            assert!(v["latency"][key]["p99"].is_number(), "latency.{key}");
        }
        for key in [
            "completed",
            "failed",
            "total_input_tokens",
            "total_output_tokens",
            "throughput",
            "steady_state",
            "goodput_requests_per_s",
            "slo",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        let back: RunSummary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn records_round_trip_through_json() {
        for r in run() {
            let back: RequestRecord =
                serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(back, r);
        }
    }
}
