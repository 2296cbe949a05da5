//! The load generator: an OpenAI-compatible streaming client, load executors, the sweep and the
//! client's self-calibration against the mock server.
//!
//! - [`sse`]: a byte-level server-sent-events parser (any chunk boundaries, comments, CRLF).
//! - [`openai`]: one request to `/v1/completions` or `/v1/chat/completions`, streamed or not, timed
//!   on the run's clock; failures are typed and recorded, never fatal.
//! - [`hires`]: a sub-millisecond timer (tokio's rounds to 1 ms ticks).
//! - [`executor`]: open loop (arrival process at a rate, optional concurrency cap) and closed loop
//!   (virtual users), warmup, stop conditions, multi-turn replay, cancellation.
//! - [`sweep`]: the rates of a sweep and its saturation criterion.
//! - [`calibrate`]: the client's timing error against the in-process mock.

pub mod calibrate;
pub mod executor;
pub mod hires;
pub mod openai;
pub mod sse;
pub mod sweep;

use std::time::Duration;

use crate::error::{Error, Result};

pub use executor::{Mode, Runner, StepPlan, Warmup};
pub use openai::{ClientOptions, Endpoint, OpenAiClient};

/// Parse a duration with a unit: `250us`, `20ms`, `1.5s`, `2m`, `1h` (a bare number is an error).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let (num, per_s) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us").or_else(|| t.strip_suffix("µs")) {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return Err(Error::Invalid(format!(
            "`{text}` is not a duration with a unit (us, ms, s, m, h; e.g. 500ms, 10s)"
        )));
    };
    match num.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 && x * per_s < 1e9 => {
            Ok(Duration::from_secs_f64(x * per_s))
        }
        _ => Err(Error::Invalid(format!(
            "`{text}` is not a non-negative duration"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("20ms").unwrap(), Duration::from_millis(20));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(
            parse_duration(" 1.5s ").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["10", "-1s", "xs", "infs", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
