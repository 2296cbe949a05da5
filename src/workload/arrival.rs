//! Arrival processes: when each request is due, as absolute instants from the run start.
//!
//! The instants are computed before the run, so a sender that falls behind shows the delay as
//! `client_queue` (send − scheduled) instead of silently stretching the schedule: coordinated omission
//! stays visible.
//!
//! Text forms: `constant`, `poisson`, `gamma:B` (B > 0), `burst`.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, Gamma};

use crate::error::{Error, Result};

/// How requests are spread over time at a given rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Evenly spaced: request `i` at `i / rate` (the first at 0).
    Constant,
    /// Poisson process: independent exponential gaps of mean `1 / rate`.
    Poisson,
    /// Gamma-distributed gaps with shape `burstiness` and mean `1 / rate` (vLLM's benchmark_serving
    /// `--burstiness`): 1 is Poisson, below 1 burstier, above 1 more regular.
    Gamma { burstiness: f64 },
    /// Every request at time 0 (the rate is ignored).
    Burst,
}

/// Absolute send instants, in seconds from the run start, for `n` requests at `rate` requests/s.
///
/// - `Constant`: `t_i = i / rate`, so the first is at 0.
/// - `Poisson`, `Gamma`: `t_i = g_0 + … + g_i`, the sum of the gaps up to and including request `i`'s,
///   so the first request waits one gap.
/// - `Burst`: all 0.
///
/// The result is non-decreasing and deterministic for a `seed`. Errors when `rate` is not a positive
/// finite number (except for `Burst`, which ignores it) or when a gamma burstiness is not positive
/// and finite.
pub fn send_offsets(n: usize, rate: f64, arrival: Arrival, seed: u64) -> Result<Vec<f64>> {
    match arrival {
        Arrival::Burst => Ok(vec![0.0; n]),
        Arrival::Constant => {
            check_rate(rate)?;
            Ok((0..n).map(|i| i as f64 / rate).collect())
        }
        Arrival::Poisson => {
            check_rate(rate)?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            Ok(cumulative(n, || rng.sample::<f64, _>(Exp1) / rate))
        }
        Arrival::Gamma { burstiness } => {
            check_rate(rate)?;
            let gamma = gamma_gaps(burstiness, rate)?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            Ok(cumulative(n, || gamma.sample(&mut rng)))
        }
    }
}

fn check_rate(rate: f64) -> Result<()> {
    if rate.is_finite() && rate > 0.0 && (1.0 / rate).is_finite() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "request rate must be a positive finite number of requests per second, got {rate} \
             (use the `burst` arrival to send everything at once)"
        )))
    }
}

/// Gap distribution of the gamma process: shape `b`, scale `1 / (rate · b)`, so the mean gap is
/// `1 / rate`.
fn gamma_gaps(b: f64, rate: f64) -> Result<Gamma<f64>> {
    if let Some(why) = burstiness_problem(b) {
        return Err(Error::Invalid(why));
    }
    Gamma::new(b, 1.0 / (rate * b)).map_err(|e| {
        Error::Invalid(format!(
            "gamma arrival with burstiness {b} at rate {rate}: {e}"
        ))
    })
}

/// Why `b` is not a valid gamma burstiness, if it is not.
fn burstiness_problem(b: f64) -> Option<String> {
    (!(b.is_finite() && b > 0.0))
        .then(|| format!("gamma burstiness must be a positive finite number, got {b}"))
}

/// Running sums of `n` gaps drawn by `gap`.
fn cumulative(n: usize, mut gap: impl FnMut() -> f64) -> Vec<f64> {
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            t += gap();
            t
        })
        .collect()
}

impl FromStr for Arrival {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let t = text.trim().to_ascii_lowercase();
        match t.split_once(':') {
            None if t == "constant" => Ok(Arrival::Constant),
            None if t == "poisson" => Ok(Arrival::Poisson),
            None if t == "burst" => Ok(Arrival::Burst),
            Some(("gamma", b)) => {
                let burstiness = b.trim().parse::<f64>().map_err(|_| {
                    Error::Invalid(format!(
                        "arrival `{text}`: burstiness `{b}` is not a number"
                    ))
                })?;
                if let Some(why) = burstiness_problem(burstiness) {
                    return Err(Error::Invalid(format!("arrival `{text}`: {why}")));
                }
                Ok(Arrival::Gamma { burstiness })
            }
            _ => Err(Error::Invalid(format!(
                "arrival `{text}` is not one of: constant, poisson, gamma:B (B > 0), burst"
            ))),
        }
    }
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arrival::Constant => f.write_str("constant"),
            Arrival::Poisson => f.write_str("poisson"),
            Arrival::Gamma { burstiness } => write!(f, "gamma:{burstiness}"),
            Arrival::Burst => f.write_str("burst"),
        }
    }
}

impl serde::Serialize for Arrival {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Arrival {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(n: usize, rate: f64, a: &str, seed: u64) -> Vec<f64> {
        send_offsets(n, rate, a.parse().unwrap(), seed).unwrap()
    }

    fn gaps(t: &[f64]) -> Vec<f64> {
        let mut prev = 0.0;
        t.iter()
            .map(|&x| {
                let g = x - prev;
                prev = x;
                g
            })
            .collect()
    }

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        (m, xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n)
    }

    #[test]
    fn parses_and_displays() {
        for (s, a) in [
            ("constant", Arrival::Constant),
            ("poisson", Arrival::Poisson),
            ("gamma:0.5", Arrival::Gamma { burstiness: 0.5 }),
            ("burst", Arrival::Burst),
        ] {
            assert_eq!(s.parse::<Arrival>().unwrap(), a);
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(" Poisson ".parse::<Arrival>().unwrap(), Arrival::Poisson);
        assert_eq!(
            serde_json::to_string(&Arrival::Gamma { burstiness: 2.0 }).unwrap(),
            "\"gamma:2\""
        );
    }

    #[test]
    fn parse_errors_name_the_text() {
        for bad in [
            "gamma:0",
            "gamma:-1",
            "gamma:x",
            "gamma:inf",
            "uniform",
            "gamma",
        ] {
            let msg = bad.parse::<Arrival>().unwrap_err().to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
        }
    }

    #[test]
    fn constant_starts_at_zero() {
        assert_eq!(offsets(4, 2.0, "constant", 0), vec![0.0, 0.5, 1.0, 1.5]);
        assert!(offsets(0, 2.0, "constant", 0).is_empty());
    }

    #[test]
    fn burst_is_all_zero_and_ignores_rate() {
        assert_eq!(
            send_offsets(3, 0.0, Arrival::Burst, 1).unwrap(),
            vec![0.0; 3]
        );
        assert_eq!(
            send_offsets(2, f64::NAN, Arrival::Burst, 1).unwrap(),
            vec![0.0; 2]
        );
    }

    #[test]
    fn bad_rates_are_rejected() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-320] {
            for a in ["constant", "poisson", "gamma:2"] {
                let e = send_offsets(3, rate, a.parse().unwrap(), 0).unwrap_err();
                assert!(e.to_string().contains("request rate"), "{e}");
            }
        }
        let e = send_offsets(3, 1.0, Arrival::Gamma { burstiness: 0.0 }, 0).unwrap_err();
        assert!(e.to_string().contains("burstiness"), "{e}");
    }

    #[test]
    fn poisson_is_deterministic_and_non_decreasing() {
        let a = offsets(1000, 10.0, "poisson", 42);
        assert_eq!(a, offsets(1000, 10.0, "poisson", 42));
        assert_ne!(a, offsets(1000, 10.0, "poisson", 43));
        assert!(a[0] > 0.0, "the first request waits one gap");
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn poisson_gaps_have_mean_one_over_rate() {
        let (m, v) = mean_var(&gaps(&offsets(50_000, 4.0, "poisson", 1)));
        assert!((m - 0.25).abs() < 0.01, "{m}");
        // Exponential: variance = mean².
        assert!((v - 0.0625).abs() < 0.005, "{v}");
    }

    #[test]
    fn gamma_gaps_have_mean_one_over_rate_and_cv_from_burstiness() {
        for b in [0.25, 1.0, 4.0] {
            let t = send_offsets(50_000, 4.0, Arrival::Gamma { burstiness: b }, 9).unwrap();
            assert!(t.windows(2).all(|w| w[0] <= w[1]));
            let (m, v) = mean_var(&gaps(&t));
            assert!((m - 0.25).abs() < 0.01, "b={b}: mean {m}");
            // Gamma(shape b): squared coefficient of variation = 1 / b.
            let cv2 = v / (m * m);
            assert!((cv2 - 1.0 / b).abs() < 0.1 / b, "b={b}: cv² {cv2}");
        }
    }
}
