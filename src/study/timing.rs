//! The quick timing loop of `infermeter kernels`: calibrate, warm up, then the median and the
//! minimum of N timed runs.
//!
//! A run is `calls_per_run` back-to-back calls, enough to last at least `min_run_time`, so that the
//! clock's resolution and overhead (tens of nanoseconds) do not matter for microsecond ops; a
//! call's time is the run's time divided by the calls.
//!
//! What reads the time is a [`Clock`]: [`HostClock`] reads the host's monotonic clock around the
//! calls (the CPU backend, whose ops run synchronously); `study::gpu::EventClock` records CUDA
//! events on the backend's stream around them (GPU ops are queued asynchronously, so the host clock
//! would time the queueing), optionally flushing the L2 cache before every call. Criterion's
//! `iter_custom` in the benches uses the same clocks.

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

/// Reads the time of a batch of calls.
pub trait Clock {
    /// The time of `calls` calls of `run` (what a run or a criterion sample counts).
    fn time(&mut self, run: &mut dyn FnMut() -> Result<()>, calls: u64) -> Result<Duration>;
    /// How the time is taken, for results files.
    fn method(&self) -> String;
}

/// The host's monotonic clock around back-to-back calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostClock;

impl Clock for HostClock {
    fn time(&mut self, run: &mut dyn FnMut() -> Result<()>, calls: u64) -> Result<Duration> {
        let t = Instant::now();
        for _ in 0..calls {
            run()?;
        }
        Ok(t.elapsed())
    }

    fn method(&self) -> String {
        "host clock around back-to-back calls; per-call time = run time / calls".into()
    }
}

/// Time `run` as `cfg` says, with the host clock.
pub fn measure(run: &mut RunFn, cfg: &TimingConfig) -> Result<Timing> {
    measure_with(run, cfg, &mut HostClock)
}

/// Time `run` as `cfg` says, reading time from `clock`.
pub fn measure_with(run: &mut RunFn, cfg: &TimingConfig, clock: &mut dyn Clock) -> Result<Timing> {
    if cfg.runs == 0 {
        return Err(Error::Invalid("timing needs at least one run".into()));
    }
    if !(cfg.min_run_s.is_finite() && cfg.min_run_s >= 0.0) {
        return Err(Error::Invalid(format!(
            "minimum run time must be a finite number >= 0, got {}",
            cfg.min_run_s
        )));
    }
    // calibration: a cold call (page faults, cold caches, first launches), then one timed call
    run()?;
    let first = clock.time(run, 1)?.as_secs_f64().max(1e-9);
    let calls = calls_per_run(cfg.min_run_s, first);
    let mut timed_run = || clock.time(run, calls);
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

/// Calls per run so that a run of calls taking `per_call_s` each lasts at least `min_run_s`.
pub fn calls_per_run(min_run_s: f64, per_call_s: f64) -> u64 {
    let per_call = if per_call_s.is_finite() && per_call_s > 0.0 {
        per_call_s
    } else {
        1e-9
    };
    let calls = (min_run_s / per_call).ceil();
    if calls.is_finite() {
        (calls as u64).clamp(1, MAX_CALLS_PER_RUN)
    } else {
        1
    }
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
    fn calls_per_run_batches_short_calls() {
        assert_eq!(calls_per_run(0.002, 0.001), 2);
        assert_eq!(calls_per_run(0.002, 0.01), 1);
        assert_eq!(calls_per_run(0.0, 1e-6), 1);
        assert_eq!(calls_per_run(1.0, 0.0), MAX_CALLS_PER_RUN);
        assert_eq!(calls_per_run(1.0, f64::NAN), MAX_CALLS_PER_RUN);
    }

    #[test]
    fn measure_with_uses_the_clock() {
        /// Every call "takes" 1 ms.
        struct Fake(u64);
        impl Clock for Fake {
            fn time(
                &mut self,
                run: &mut dyn FnMut() -> Result<()>,
                calls: u64,
            ) -> Result<Duration> {
                for _ in 0..calls {
                    run()?;
                }
                self.0 += calls;
                Ok(Duration::from_millis(calls))
            }
            fn method(&self) -> String {
                "fake".into()
            }
        }
        let mut clock = Fake(0);
        let mut run: RunFn = Box::new(|| Ok(()));
        let cfg = TimingConfig {
            warmup: 1,
            runs: 3,
            min_run_s: 0.0025,
        };
        let t = measure_with(&mut run, &cfg, &mut clock).unwrap();
        assert_eq!(t.calls_per_run, 3);
        assert!((t.median_s - 1e-3).abs() < 1e-12 && (t.min_s - 1e-3).abs() < 1e-12);
        // calibration (1) + warmup and runs of 3 calls each
        assert_eq!(clock.0, 1 + 4 * 3);
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
