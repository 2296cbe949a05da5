//! The sweep: find the server's maximum throughput with a closed-loop probe at high concurrency, then
//! run open-loop steps at K rates up to it, stopping after the first step that saturates the server.
//!
//! Saturation criterion (see [`CRITERION`]): in an open loop a server that keeps up completes
//! requests at the rate they arrive, only shifted by its latency; a saturated one completes them at
//! its own service rate, below the arrival rate, while a queue builds. So a step is saturated when
//! its completion rate, `(ok − 1) / (last end − first end)`, is below 90% of its realised arrival
//! rate, `(ok − 1) / (last scheduled − first scheduled)` (the rate the arrival process actually
//! produced, not the nominal one, so Poisson noise does not count), both over the same set: the
//! successful requests (failed ones are judged by the failure criterion, not counted as arrivals
//! that never complete); or when more than 10% of its requests failed, or fewer than two succeeded.

use crate::metrics::RunSummary;
use crate::report::load_results::LoadRequestRecord;

/// The criterion in words, recorded in every sweep's results.
pub const CRITERION: &str = "a step is saturated when its completion rate ((ok - 1) / (last end - first end)) is below 90% of its realised arrival rate ((ok - 1) / (last scheduled - first scheduled)), both over the successful requests, or more than 10% of its requests failed, or fewer than 2 succeeded; the sweep stops after the first saturated step";

/// Completion rate below this fraction of the arrival rate: saturated.
pub const RATE_FRACTION: f64 = 0.9;
/// Failed fraction above this: saturated.
pub const MAX_FAILED_FRACTION: f64 = 0.1;

/// `k` rates evenly spaced up to `max_rps`: `max_rps · i / k` for `i = 1..=k`.
pub fn sweep_rates(max_rps: f64, k: usize) -> Vec<f64> {
    if !(max_rps.is_finite() && max_rps > 0.0) {
        return Vec::new();
    }
    (1..=k).map(|i| max_rps * i as f64 / k as f64).collect()
}

/// The probe's maximum throughput: completed requests per second over its steady-state window
/// (all slots busy) when there is one, else over the whole probe.
pub fn max_throughput(summary: &RunSummary) -> f64 {
    summary
        .steady_state
        .as_ref()
        .map(|s| s.requests_per_s)
        .filter(|r| *r > 0.0)
        .unwrap_or(summary.throughput.requests_per_s)
}

/// Whether a step saturated the server, and the numbers that decided it.
pub fn saturation(records: &[LoadRequestRecord]) -> (bool, String) {
    let n = records.len();
    if n == 0 {
        return (true, "no request was recorded".into());
    }
    let failed = records.iter().filter(|r| !r.record.is_ok()).count();
    let failed_frac = failed as f64 / n as f64;
    if failed_frac > MAX_FAILED_FRACTION {
        return (
            true,
            format!(
                "{failed} of {n} requests failed ({:.0}% > {:.0}%)",
                failed_frac * 100.0,
                MAX_FAILED_FRACTION * 100.0
            ),
        );
    }
    // Arrivals and completions over one set, the successful requests: counting every arrival but
    // only the successful completions would call a server that keeps up with 9% failures saturated.
    let ok: Vec<&LoadRequestRecord> = records.iter().filter(|r| r.record.is_ok()).collect();
    let mut ends: Vec<f64> = ok.iter().map(|r| r.record.finish_s()).collect();
    if ends.len() < 2 {
        return (true, format!("only {} request(s) succeeded", ends.len()));
    }
    ends.sort_by(f64::total_cmp);
    let (lo, hi) = ok.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, r| {
        (a.0.min(r.record.scheduled_s), a.1.max(r.record.scheduled_s))
    });
    let span_in = hi - lo;
    let span_out = ends[ends.len() - 1] - ends[0];
    if span_in <= 0.0 {
        return (
            false,
            "all requests scheduled at one instant: rate not comparable".into(),
        );
    }
    let arrival = (ok.len() - 1) as f64 / span_in;
    let completion = if span_out > 0.0 {
        (ends.len() - 1) as f64 / span_out
    } else {
        f64::INFINITY
    };
    let saturated = completion < RATE_FRACTION * arrival;
    (
        saturated,
        format!(
            "completion rate {completion:.3}/s vs arrival rate {arrival:.3}/s ({:.0}%); {failed} of {n} failed",
            100.0 * completion / arrival
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RequestRecord;
    use crate::report::load_results::TokenSource;

    fn rec(sched: f64, end: f64, ok: bool) -> LoadRequestRecord {
        LoadRequestRecord {
            record: RequestRecord {
                id: 0,
                scheduled_s: sched,
                send_s: sched,
                first_token_s: Some(end),
                chunk_times_s: vec![end],
                end_s: Some(end),
                prompt_tokens: 1,
                output_tokens: 1,
                error: (!ok).then(|| "e".into()),
            },
            session: 0,
            turn: 0,
            error_kind: None,
            http_status: None,
            finish_reason: None,
            prompt_tokens_source: TokenSource::Usage,
            output_tokens_source: TokenSource::Usage,
            usage_prompt_tokens: None,
            usage_output_tokens: None,
            tokenizer_prompt_tokens: None,
            tokenizer_output_tokens: None,
            text: None,
            mock_emit_s: None,
        }
    }

    #[test]
    fn rates_are_evenly_spaced_up_to_the_max() {
        assert_eq!(sweep_rates(10.0, 4), vec![2.5, 5.0, 7.5, 10.0]);
        assert!(sweep_rates(0.0, 4).is_empty());
        assert!(sweep_rates(f64::NAN, 4).is_empty());
    }

    #[test]
    fn keeping_up_is_not_saturated() {
        // 10/s arrivals, each served in 0.3 s: completions also at 10/s.
        let r: Vec<_> = (0..50)
            .map(|i| rec(i as f64 * 0.1, i as f64 * 0.1 + 0.3, true))
            .collect();
        let (sat, why) = saturation(&r);
        assert!(!sat, "{why}");
    }

    #[test]
    fn keeping_up_with_ten_percent_failures_is_not_saturated() {
        // 10/s arrivals served in 0.3 s; every 10th request fails at once. Completions of the
        // successful requests keep pace with their arrivals: not saturated.
        let r: Vec<_> = (0..100)
            .map(|i| {
                let t = i as f64 * 0.1;
                if i % 10 == 5 {
                    rec(t, t + 0.01, false)
                } else {
                    rec(t, t + 0.3, true)
                }
            })
            .collect();
        let (sat, why) = saturation(&r);
        assert!(!sat, "{why}");
        assert!(why.contains("10 of 100 failed"), "{why}");
    }

    #[test]
    fn a_queue_that_builds_is_saturated() {
        // 10/s arrivals, served one at a time at 5/s.
        let r: Vec<_> = (0..50)
            .map(|i| rec(i as f64 * 0.1, 0.2 + i as f64 * 0.2, true))
            .collect();
        let (sat, why) = saturation(&r);
        assert!(sat, "{why}");
        assert!(why.contains("50%"), "{why}");
    }

    #[test]
    fn failures_saturate() {
        let mut r: Vec<_> = (0..10)
            .map(|i| rec(i as f64, i as f64 + 0.1, true))
            .collect();
        r[0] = rec(0.0, 0.1, false);
        r[1] = rec(1.0, 1.1, false);
        assert!(saturation(&r).0);
        assert!(saturation(&[]).0);
        assert!(saturation(&[rec(0.0, 1.0, true)]).0);
    }
}
