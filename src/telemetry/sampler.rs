//! The sampler thread: reads every source once per interval onto one [`Timeline`], on the clock of
//! the run (seconds from an `Instant` epoch shared with request and step records).
//!
//! Ticks are scheduled on absolute deadlines (`start + k × interval`), so sampling does not drift;
//! a tick missed because a read overran is skipped and counted, never bunched up. A sample's time is
//! the midpoint of the reads of all sources. [`SamplerHandle::sample_now`] takes an extra sample at
//! once (the `run` command marks phase boundaries with it, so counter differences over a phase need
//! no interpolation at its ends).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::source::{CounterEvents, Source};
use super::timeline::{SamplerStats, Timeline, TimelineBuilder};
use crate::error::{Error, Result};

/// Shortest sampling interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

enum Msg {
    SampleNow,
    Stop,
}

struct State {
    builder: TimelineBuilder,
    forced_done: u64,
    counter_events: Vec<CounterEvents>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // a poisoned lock only means another thread panicked mid-push; the data is still usable
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts the sampler thread (see the module docs).
pub struct TelemetrySampler;

impl TelemetrySampler {
    /// Sample `sources` every `interval` (at least [`MIN_INTERVAL`]) until the handle is stopped or
    /// dropped; times are seconds since `epoch`; the timeline keeps at most `max_points` points.
    /// The first sample is taken at once.
    pub fn start(
        sources: Vec<Box<dyn Source>>,
        interval: Duration,
        epoch: Instant,
        max_points: usize,
    ) -> Result<SamplerHandle> {
        if interval < MIN_INTERVAL {
            return Err(Error::Invalid(format!(
                "the sampling interval must be at least {} ms (got {:?})",
                MIN_INTERVAL.as_millis(),
                interval
            )));
        }
        let lens: Vec<usize> = sources.iter().map(|s| s.channels().len()).collect();
        let channels: Vec<_> = sources.iter().flat_map(|s| s.channels()).collect();
        let builder = TimelineBuilder::new(channels, interval.as_secs_f64(), max_points);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                builder,
                forced_done: 0,
                counter_events: Vec::new(),
            }),
            cv: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let worker = Worker {
            sources,
            lens,
            shared: shared.clone(),
            epoch,
            values: Vec::new(),
            reads: 0,
            read_total_s: 0.0,
            read_max_s: 0.0,
        };
        let thread = std::thread::Builder::new()
            .name("infermeter-telemetry".into())
            .spawn(move || worker.run(interval, rx))
            .map_err(|e| Error::Invalid(format!("cannot start the telemetry thread: {e}")))?;
        Ok(SamplerHandle {
            shared,
            tx,
            thread: Some(thread),
        })
    }
}

/// The running sampler. Dropping it stops the thread.
pub struct SamplerHandle {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<SamplerStats>>,
}

impl SamplerHandle {
    /// Take a sample now and wait for it (at most one second); returns the time of the latest
    /// sample. Used to mark the edges of a measured window.
    pub fn sample_now(&self) -> Option<f64> {
        let before = self.shared.lock().forced_done;
        if self.tx.send(Msg::SampleNow).is_err() {
            return self.shared.lock().builder.last_time();
        }
        let guard = self.shared.lock();
        let (guard, _) = self
            .shared
            .cv
            .wait_timeout_while(guard, Duration::from_secs(1), |s| s.forced_done <= before)
            .unwrap_or_else(|e| e.into_inner());
        guard.builder.last_time()
    }

    /// The timeline so far.
    pub fn snapshot(&self) -> Timeline {
        self.shared.lock().builder.snapshot()
    }

    /// Counter wraps and resets seen so far (updated at forced samples and at the end).
    pub fn counter_events(&self) -> Vec<CounterEvents> {
        self.shared.lock().counter_events.clone()
    }

    /// Take a last sample, stop the thread and return the whole timeline with the sampler's cost.
    pub fn stop(mut self) -> Timeline {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Timeline {
        let _ = self.tx.send(Msg::Stop);
        let stats = self.thread.take().and_then(|t| t.join().ok());
        let mut tl = self.shared.lock().builder.snapshot();
        tl.sampler = stats;
        tl
    }
}

impl Drop for SamplerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

struct Worker {
    sources: Vec<Box<dyn Source>>,
    /// Channels of each source.
    lens: Vec<usize>,
    shared: Arc<Shared>,
    epoch: Instant,
    values: Vec<Option<f64>>,
    reads: u64,
    read_total_s: f64,
    read_max_s: f64,
}

impl Worker {
    fn run(mut self, interval: Duration, rx: mpsc::Receiver<Msg>) -> SamplerStats {
        let cpu0 = thread_cpu_time_s();
        let start = Instant::now();
        let mut forced = 0u64;
        let mut missed = 0u64;
        let mut next = start;
        'ticks: loop {
            self.sample(false);
            next += interval;
            let now = Instant::now();
            if next <= now {
                let behind = (now - next).as_secs_f64() / interval.as_secs_f64();
                let skip = behind.floor() as u32 + 1;
                missed += u64::from(skip);
                next += interval * skip;
            }
            loop {
                let wait = next.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(Msg::SampleNow) => {
                        forced += 1;
                        self.sample(true);
                    }
                    Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break 'ticks,
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
        }
        self.sample(true);
        let wall_s = start.elapsed().as_secs_f64();
        let cpu_s = match (cpu0, thread_cpu_time_s()) {
            (Some(a), Some(b)) if b >= a => Some(b - a),
            _ => None,
        };
        SamplerStats {
            wall_s,
            cpu_s,
            cpu_fraction_of_one_core: cpu_s.filter(|_| wall_s > 0.0).map(|c| c / wall_s),
            samples: self.reads,
            forced_samples: forced,
            missed_ticks: missed,
            mean_read_us: if self.reads > 0 {
                self.read_total_s / self.reads as f64 * 1e6
            } else {
                0.0
            },
            max_read_us: self.read_max_s * 1e6,
        }
    }

    fn sample(&mut self, forced: bool) {
        let n: usize = self.lens.iter().sum();
        self.values.clear();
        self.values.resize(n, None);
        let t0 = self.epoch.elapsed().as_secs_f64();
        let mut at = 0;
        for (s, &k) in self.sources.iter_mut().zip(&self.lens) {
            s.read(t0, &mut self.values[at..at + k]);
            at += k;
        }
        let t1 = self.epoch.elapsed().as_secs_f64();
        self.reads += 1;
        self.read_total_s += t1 - t0;
        self.read_max_s = self.read_max_s.max(t1 - t0);
        let mut st = self.shared.lock();
        st.builder.push(0.5 * (t0 + t1), &self.values);
        if forced {
            st.forced_done += 1;
            st.counter_events = self
                .sources
                .iter()
                .flat_map(|s| s.counter_events())
                .collect();
            drop(st);
            self.shared.cv.notify_all();
        }
    }
}

/// CPU time of the calling thread in seconds: /proc/thread-self/schedstat (ns on the CPU), else
/// utime + stime of /proc/thread-self/stat (clock ticks, assumed 100 Hz). `None` off Linux.
pub fn thread_cpu_time_s() -> Option<f64> {
    if let Ok(s) = std::fs::read_to_string("/proc/thread-self/schedstat") {
        if let Some(ns) = s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            return Some(ns as f64 * 1e-9);
        }
    }
    let s = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
