//! The quick timing loop of `infermeter kernels`: calibrate, warm up, then the median and the
//! minimum of N timed runs.
//!
//! A run is `calls_per_run` back-to-back calls, enough to last at least `min_run_time`, so that the
//! clock's resolution and overhead (tens of nanoseconds) do not matter for microsecond ops; a
//! call's time is the run's time divided by the calls. CPU only: a GPU timing loop records CUDA
//! events around the calls instead of reading the host clock.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::runner::RunFn;

/// Most calls in one run (a 10 ns op at a 1 ms minimum run time needs 100 000).
const MAX_CALLS_PER_RUN: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimingConfig {
    /// Untimed runs after calibration.
    pub warmup: usize,
    /// Timed runs.
    pub runs: usize,
    /// Shortest run: calls are batched until a run lasts this long.
    pub min_run_s: f64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            warmup: 2,
            runs: 10,
            min_run_s: 0.002,
        }
    }
}

/// Seconds per call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub median_s: f64,
    pub min_s: f64,
    pub runs: usize,
    pub calls_per_run: u64,
}

/// Time `run` as `cfg` says.
pub fn measure(run: &mut RunFn, cfg: &TimingConfig) -> Result<Timing> {
    if cfg.runs == 0 {
        return Err(Error::Invalid("timing needs at least one run".into()));
    }
    if !(cfg.min_run_s.is_finite() && cfg.min_run_s >= 0.0) {
        return Err(Error::Invalid(format!(
            "minimum run time must be a finite number >= 0, got {}",
            cfg.min_run_s
        )));
    }
    // calibration: a cold call (page faults, cold caches), then one timed call
    run()?;
    let t = Instant::now();
    run()?;
    let first = t.elapsed().as_secs_f64().max(1e-9);
    let calls = ((cfg.min_run_s / first).ceil() as u64).clamp(1, MAX_CALLS_PER_RUN);
    let mut timed_run = || -> Result<Duration> {
        let t = Instant::now();
        for _ in 0..calls {
            run()?;
        }
        Ok(t.elapsed())
    };
    for _ in 0..cfg.warmup {
        timed_run()?;
    }
    let mut per_call = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs {
        per_call.push(timed_run()?.as_secs_f64() / calls as f64);
    }
    Ok(Timing {
        median_s: median(&mut per_call),
        min_s: per_call.iter().copied().fold(f64::INFINITY, f64::min),
        runs: cfg.runs,
        calls_per_run: calls,
    })
}

/// The median (mean of the middle two for an even count); NaN for no values.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn measures_a_sleep_and_batches_fast_calls() {
        let mut slow: RunFn = Box::new(|| {
            std::thread::sleep(Duration::from_millis(2));
            Ok(())
        });
        let cfg = TimingConfig {
            warmup: 0,
            runs: 3,
            min_run_s: 0.0,
        };
        let t = measure(&mut slow, &cfg).unwrap();
        assert!(t.min_s >= 0.002 && t.median_s < 0.5, "{t:?}");
        assert_eq!(t.calls_per_run, 1);
        let mut count = 0u64;
        let mut fast: RunFn = Box::new(move || {
            count += 1;
            std::hint::black_box(count);
            Ok(())
        });
        let cfg = TimingConfig {
            warmup: 1,
            runs: 2,
            min_run_s: 0.001,
        };
        let t = measure(&mut fast, &cfg).unwrap();
        assert!(t.calls_per_run > 1, "{t:?}");
        assert!(measure(&mut fast, &TimingConfig { runs: 0, ..cfg }).is_err());
    }
}
