//! Length distributions for prompts and outputs (in tokens).
//!
//! Text forms (what [`LengthDist::from_str`] accepts and [`Display`](fmt::Display) gives back):
//!
//! | form                           | meaning                                                        |
//! |--------------------------------|----------------------------------------------------------------|
//! | `N`                            | always `N` tokens                                              |
//! | `uniform:MIN:MAX`              | uniform over the integers `MIN..=MAX`                          |
//! | `normal:MEAN:STD[:MIN[:MAX]]`  | normal, rounded to nearest, clamped to `[MIN, MAX]` (MIN default 1, MAX default unbounded; MAX may be written `inf`) |
//! | `exp:MEAN[:MAX]`               | exponential of mean `MEAN`, rounded, truncated at `MAX` (llm-infer-bench's "capped exponential": values above MAX are redrawn, never clamped), then lifted to at least 1 |
//!
//! Every sample is at least 1 and within the stated bounds.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Exp1, StandardNormal};

use crate::error::{Error, Result};

/// The accepted text forms, for error messages.
const FORMS: &str = "N, uniform:MIN:MAX, normal:MEAN:STD[:MIN[:MAX]], exp:MEAN[:MAX]";

/// A distribution of token counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LengthDist {
    /// Always this many tokens.
    Fixed(usize),
    /// Uniform over the integers `min..=max`.
    Uniform { min: usize, max: usize },
    /// Normal `N(mean, std²)`, rounded to nearest and clamped to `[min, max]` (`None`: unbounded above).
    Normal {
        mean: f64,
        std: f64,
        min: usize,
        max: Option<usize>,
    },
    /// Exponential of mean `mean`, rounded to nearest, truncated at `max` (values that would round
    /// above `max` are redrawn, as llm-infer-bench's `capped_exponential`; `None`: unbounded), then
    /// lifted to 1 where it rounds to 0.
    Exp { mean: f64, max: Option<usize> },
}

impl LengthDist {
    /// Draw one length: always `>= 1` and within the distribution's bounds. Never panics, even on
    /// hand-built values that parsing would reject (bounds are then normalised: swapped or lifted to 1).
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        match *self {
            LengthDist::Fixed(n) => n.max(1),
            LengthDist::Uniform { min, max } => {
                let (lo, hi) = ordered_bounds(min, max);
                rng.random_range(lo..=hi)
            }
            LengthDist::Normal {
                mean,
                std,
                min,
                max,
            } => {
                let z: f64 = rng.sample(StandardNormal);
                let (lo, hi) = ordered_bounds(min, max.unwrap_or(usize::MAX));
                clamp_round(mean + std.abs() * z, lo, hi)
            }
            LengthDist::Exp { mean, max } => sample_capped_exp(mean, max, rng),
        }
    }

    /// The distribution's mean. Exact for `Fixed` and `Uniform`. For `Normal` and `Exp` it is a
    /// continuous approximation that accounts for the clamping (normal) or truncation (exp) but not
    /// for the rounding to integers nor the lift of 0 to 1; the error is well under one token for
    /// means of a few tokens or more.
    pub fn mean(&self) -> f64 {
        match *self {
            LengthDist::Fixed(n) => n.max(1) as f64,
            LengthDist::Uniform { min, max } => {
                let (lo, hi) = ordered_bounds(min, max);
                (lo as f64 + hi as f64) / 2.0
            }
            LengthDist::Normal {
                mean,
                std,
                min,
                max,
            } => {
                let (lo, hi) = ordered_bounds(min, max.unwrap_or(usize::MAX));
                let hi = if max.is_some() {
                    hi as f64
                } else {
                    f64::INFINITY
                };
                clamped_normal_mean(mean, std.abs(), lo as f64, hi)
            }
            LengthDist::Exp { mean, max } => {
                let cap = max.map_or(f64::INFINITY, |m| m.max(1) as f64 + 0.5);
                truncated_exp_mean(mean, cap).max(1.0)
            }
        }
    }
}

/// `(lo, hi)` with `1 <= lo <= hi`.
fn ordered_bounds(a: usize, b: usize) -> (usize, usize) {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    (lo.max(1), hi.max(1))
}

/// Round `x` to nearest and clamp into `[lo, hi]`; NaN gives `lo`.
fn clamp_round(x: f64, lo: usize, hi: usize) -> usize {
    if x.is_nan() {
        return lo;
    }
    let r = x.round();
    if r <= lo as f64 {
        lo
    } else if r >= hi as f64 {
        hi
    } else {
        r as usize
    }
}

/// Exponential of mean `mean` conditioned on rounding to at most `max`, drawn by inverting the
/// truncated CDF (the same distribution as redrawing until it fits, without the loop):
/// `x = -mean · ln(1 − u·(1 − e^{−c/mean}))` with `c = max + 0.5`.
fn sample_capped_exp(mean: f64, max: Option<usize>, rng: &mut impl Rng) -> usize {
    let mean = if mean.is_finite() && mean > 0.0 {
        mean
    } else {
        1.0
    };
    let hi = max.unwrap_or(usize::MAX).max(1);
    let x = match max {
        None => mean * rng.sample::<f64, _>(Exp1),
        Some(_) => {
            let c = hi as f64 + 0.5;
            let mass = -(-c / mean).exp_m1(); // P(X < c) = 1 − e^{−c/mean}
            let u: f64 = rng.random();
            -mean * (-u * mass).ln_1p()
        }
    };
    clamp_round(x, 1, hi)
}

/// Mean of `clamp(X, lo, hi)` for `X ~ N(mean, std²)`:
/// `lo·Φ(α) + hi·(1 − Φ(β)) + mean·(Φ(β) − Φ(α)) + std·(φ(α) − φ(β))`, `α = (lo−mean)/std`,
/// `β = (hi−mean)/std`.
fn clamped_normal_mean(mean: f64, std: f64, lo: f64, hi: f64) -> f64 {
    if std == 0.0 || !std.is_finite() {
        return mean.clamp(lo, hi);
    }
    let a = (lo - mean) / std;
    let b = (hi - mean) / std;
    let (cdf_a, cdf_b) = (normal_cdf(a), normal_cdf(b));
    let upper = if hi.is_finite() {
        hi * (1.0 - cdf_b)
    } else {
        0.0
    };
    lo * cdf_a + upper + mean * (cdf_b - cdf_a) + std * (normal_pdf(a) - normal_pdf(b))
}

/// Mean of `X ~ Exp(mean)` conditioned on `X < cap`: `mean − cap·e^{−cap/mean} / (1 − e^{−cap/mean})`.
fn truncated_exp_mean(mean: f64, cap: f64) -> f64 {
    if !cap.is_finite() {
        return mean;
    }
    let t = cap / mean;
    mean - cap * (-t).exp() / -(-t).exp_m1()
}

fn normal_pdf(x: f64) -> f64 {
    if x.is_infinite() {
        return 0.0;
    }
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), enough for an approximate mean.
fn erf(x: f64) -> f64 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    sign * (1.0 - poly * (-x * x).exp())
}

fn invalid(text: &str, why: impl fmt::Display) -> Error {
    Error::Invalid(format!(
        "length distribution `{text}`: {why} (accepted forms: {FORMS})"
    ))
}

fn parse_count(text: &str, name: &str, field: &str) -> Result<usize> {
    let n: usize = field
        .trim()
        .parse()
        .map_err(|_| invalid(text, format!("{name} `{field}` is not a whole number")))?;
    if n == 0 {
        return Err(invalid(text, format!("{name} must be at least 1")));
    }
    Ok(n)
}

fn parse_positive(text: &str, name: &str, field: &str) -> Result<f64> {
    match field.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(invalid(
            text,
            format!("{name} `{field}` must be a positive finite number"),
        )),
    }
}

fn parse_std(text: &str, field: &str) -> Result<f64> {
    match field.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(invalid(
            text,
            format!("STD `{field}` must be a finite number >= 0"),
        )),
    }
}

/// An upper bound: a count, or `inf` for none.
fn parse_max(text: &str, field: &str) -> Result<Option<usize>> {
    if field.trim().eq_ignore_ascii_case("inf") {
        Ok(None)
    } else {
        parse_count(text, "MAX", field).map(Some)
    }
}

fn parse_uniform(text: &str, args: &[&str]) -> Result<LengthDist> {
    let [min, max] = args else {
        return Err(invalid(text, "uniform takes exactly MIN and MAX"));
    };
    let (min, max) = (
        parse_count(text, "MIN", min)?,
        parse_count(text, "MAX", max)?,
    );
    if min > max {
        return Err(invalid(text, format!("MIN {min} is above MAX {max}")));
    }
    Ok(LengthDist::Uniform { min, max })
}

fn parse_normal(text: &str, args: &[&str]) -> Result<LengthDist> {
    if !(2..=4).contains(&args.len()) {
        return Err(invalid(text, "normal takes MEAN:STD[:MIN[:MAX]]"));
    }
    let mean = parse_positive(text, "MEAN", args[0])?;
    let std = parse_std(text, args[1])?;
    let min = match args.get(2) {
        Some(f) => parse_count(text, "MIN", f)?,
        None => 1,
    };
    let max = match args.get(3) {
        Some(f) => parse_max(text, f)?,
        None => None,
    };
    if let Some(max) = max.filter(|&m| m < min) {
        return Err(invalid(text, format!("MIN {min} is above MAX {max}")));
    }
    Ok(LengthDist::Normal {
        mean,
        std,
        min,
        max,
    })
}

fn parse_exp(text: &str, args: &[&str]) -> Result<LengthDist> {
    if !(1..=2).contains(&args.len()) {
        return Err(invalid(text, "exp takes MEAN[:MAX]"));
    }
    let mean = parse_positive(text, "MEAN", args[0])?;
    let max = match args.get(1) {
        Some(f) => parse_max(text, f)?,
        None => None,
    };
    Ok(LengthDist::Exp { mean, max })
}

impl FromStr for LengthDist {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        let (kind, args) = (parts[0].trim(), &parts[1..]);
        match kind.to_ascii_lowercase().as_str() {
            "uniform" => parse_uniform(text, args),
            "normal" => parse_normal(text, args),
            "exp" => parse_exp(text, args),
            _ if args.is_empty() => parse_count(text, "N", kind).map(LengthDist::Fixed),
            _ => Err(invalid(text, format!("unknown distribution `{kind}`"))),
        }
    }
}

impl fmt::Display for LengthDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LengthDist::Fixed(n) => write!(f, "{n}"),
            LengthDist::Uniform { min, max } => write!(f, "uniform:{min}:{max}"),
            LengthDist::Normal {
                mean,
                std,
                min,
                max,
            } => match max {
                Some(max) => write!(f, "normal:{mean}:{std}:{min}:{max}"),
                None if min == 1 => write!(f, "normal:{mean}:{std}"),
                None => write!(f, "normal:{mean}:{std}:{min}"),
            },
            LengthDist::Exp { mean, max } => match max {
                Some(max) => write!(f, "exp:{mean}:{max}"),
                None => write!(f, "exp:{mean}"),
            },
        }
    }
}

impl serde::Serialize for LengthDist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LengthDist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn parse(s: &str) -> LengthDist {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match s.parse::<LengthDist>() {
            Ok(d) => panic!("{s} parsed as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn samples(d: &LengthDist, n: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        (0..n).map(|_| d.sample(&mut rng)).collect()
    }

    fn empirical_mean(d: &LengthDist, n: usize) -> f64 {
        samples(d, n).iter().sum::<usize>() as f64 / n as f64
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(parse("128"), LengthDist::Fixed(128));
        assert_eq!(
            parse("uniform:1:512"),
            LengthDist::Uniform { min: 1, max: 512 }
        );
        assert_eq!(
            parse("normal:100:20"),
            LengthDist::Normal {
                mean: 100.0,
                std: 20.0,
                min: 1,
                max: None
            }
        );
        assert_eq!(
            parse("normal:100:20:10:200"),
            LengthDist::Normal {
                mean: 100.0,
                std: 20.0,
                min: 10,
                max: Some(200)
            }
        );
        assert_eq!(
            parse("normal:100:20:10:inf"),
            LengthDist::Normal {
                mean: 100.0,
                std: 20.0,
                min: 10,
                max: None
            }
        );
        assert_eq!(
            parse("exp:64"),
            LengthDist::Exp {
                mean: 64.0,
                max: None
            }
        );
        assert_eq!(
            parse("exp:64:1024"),
            LengthDist::Exp {
                mean: 64.0,
                max: Some(1024)
            }
        );
    }

    #[test]
    fn parse_errors_name_the_text_and_list_forms() {
        for bad in [
            "0",
            "-3",
            "abc",
            "uniform:5",
            "uniform:0:5",
            "uniform:9:5",
            "normal:100",
            "normal:100:-1",
            "normal:0:1",
            "normal:100:20:50:10",
            "exp:0",
            "exp:nan",
            "exp:64:0",
            "zipf:1:2",
            "",
        ] {
            let msg = err(bad);
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
            assert!(msg.contains("uniform:MIN:MAX"), "{msg}");
        }
        assert!(err("zipf:1:2").contains("unknown distribution `zipf`"));
        assert!(err("uniform:9:5").contains("MIN 9 is above MAX 5"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "128",
            "uniform:1:512",
            "normal:100:20",
            "normal:100.5:0.25:3",
            "normal:100:20:10:200",
            "exp:64",
            "exp:64.5:1024",
        ] {
            let d = parse(s);
            assert_eq!(d.to_string(), s);
            assert_eq!(parse(&d.to_string()), d);
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let d = parse("uniform:1:512");
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"uniform:1:512\"");
        let back: LengthDist = serde_json::from_str("\"exp:64:1024\"").unwrap();
        assert_eq!(back, parse("exp:64:1024"));
        assert!(serde_json::from_str::<LengthDist>("\"uniform:0:1\"").is_err());
    }

    #[test]
    fn samples_stay_in_bounds() {
        let cases = [
            ("7", 7, 7),
            ("uniform:3:9", 3, 9),
            ("normal:5:10:2:12", 2, 12),
            ("normal:2:50", 1, usize::MAX),
            ("exp:50:60", 1, 60),
            ("exp:0.1", 1, usize::MAX),
        ];
        for (s, lo, hi) in cases {
            for x in samples(&parse(s), 5000) {
                assert!((lo..=hi).contains(&x), "{s}: {x}");
            }
        }
        let uniform = samples(&parse("uniform:3:9"), 5000);
        assert!(uniform.contains(&3) && uniform.contains(&9));
    }

    #[test]
    fn hand_built_bad_values_do_not_panic() {
        let weird = [
            LengthDist::Fixed(0),
            LengthDist::Uniform { min: 9, max: 0 },
            LengthDist::Normal {
                mean: f64::NAN,
                std: -1.0,
                min: 0,
                max: Some(0),
            },
            LengthDist::Exp {
                mean: -1.0,
                max: Some(0),
            },
        ];
        for d in weird {
            assert!(samples(&d, 100).iter().all(|&x| x >= 1), "{d:?}");
            let _ = d.mean();
        }
    }

    #[test]
    fn exact_means() {
        assert_eq!(parse("128").mean(), 128.0);
        assert_eq!(parse("uniform:1:512").mean(), 256.5);
        assert_eq!(parse("normal:100:0").mean(), 100.0);
        assert_eq!(parse("exp:64").mean(), 64.0);
    }

    #[test]
    fn approximate_means_match_samples() {
        for s in [
            "uniform:1:512",
            "normal:100:20",
            "normal:10:20:1:30",
            "exp:64",
            "exp:64:100",
            "exp:500:100",
        ] {
            let d = parse(s);
            let (want, got) = (d.mean(), empirical_mean(&d, 200_000));
            assert!(
                (want - got).abs() < 0.01 * want + 0.5,
                "{s}: {want} vs {got}"
            );
        }
    }

    #[test]
    fn capped_exp_is_truncated_not_clamped() {
        // Clamping would pile ~21% of the mass on the cap; truncation leaves it no heavier than its
        // neighbours.
        let xs = samples(&parse("exp:64:100"), 100_000);
        let at_cap = xs.iter().filter(|&&x| x == 100).count();
        assert!(at_cap < 2000, "{at_cap} samples at the cap");
    }

    #[test]
    fn sampling_is_deterministic_for_a_seed() {
        let d = parse("normal:100:30");
        assert_eq!(samples(&d, 50), samples(&d, 50));
    }
}
