//! Summary statistics: percentiles with numpy's default ("linear") interpolation, and the summary
//! every latency metric is reported with (count, mean, min, max, p50, p90, p95, p99).

use serde::{Deserialize, Serialize};

/// The `q`-th percentile (`q` in `[0, 100]`) of ascending-sorted `sorted`, as numpy's default
/// `np.percentile(x, q)`: at the virtual index `h = (n − 1) · q / 100`, interpolate linearly between
/// the order statistics `x[⌊h⌋]` and `x[⌊h⌋ + 1]`.
///
/// `q` outside `[0, 100]` is clamped into it. An empty slice (or a NaN `q`) gives NaN. The result is
/// monotone in `q` and lies within `[sorted[0], sorted[n − 1]]`; the input must already be sorted
/// (this is not checked).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 || q.is_nan() {
        return f64::NAN;
    }
    let h = (n - 1) as f64 * (q.clamp(0.0, 100.0) / 100.0);
    let lo = (h.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    lerp(sorted[lo], sorted[hi], h - lo as f64)
}

/// `a + (b − a)·t`, kept within `[a, b]` so rounding cannot break monotonicity across segments.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    if t <= 0.0 || a == b {
        return a;
    }
    let d = b - a;
    let v = if d.is_finite() {
        a + d * t
    } else {
        a * (1.0 - t) + b * t
    };
    v.clamp(a.min(b), a.max(b))
}

/// The summary of one metric's values (seconds for latencies).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Summary {
    /// Summarise `values` (any order). NaNs are ignored: they are left out of every statistic,
    /// `count` included. `None` when no value is left.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let p = |q| percentile(&v, q);
        Some(Summary {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            max: v[v.len() - 1],
            p50: p(50.0),
            p90: p(90.0),
            p95: p(95.0),
            p99: p(99.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
    }

    macro_rules! assert_close {
        ($a:expr, $b:expr) => {
            assert!(close($a, $b), "{} = {} != {}", stringify!($a), $a, $b)
        };
    }

    #[test]
    fn matches_numpy_on_four_values() {
        // np.percentile([1, 2, 3, 4], [0, 25, 50, 90, 95, 99, 100])
        //   -> [1.0, 1.75, 2.5, 3.7, 3.85, 3.97, 4.0]
        let x = [1.0, 2.0, 3.0, 4.0];
        for (q, want) in [
            (0.0, 1.0),
            (25.0, 1.75),
            (50.0, 2.5),
            (90.0, 3.7),
            (95.0, 3.85),
            (99.0, 3.97),
            (100.0, 4.0),
        ] {
            assert_close!(percentile(&x, q), want);
        }
    }

    #[test]
    fn matches_numpy_on_uneven_values() {
        // np.percentile([0.1, 0.2, 0.5, 1.0, 10.0], [50, 90, 99]) -> [0.5, 6.4, 9.64]
        let x = [0.1, 0.2, 0.5, 1.0, 10.0];
        assert_close!(percentile(&x, 50.0), 0.5);
        assert_close!(percentile(&x, 90.0), 6.4);
        assert_close!(percentile(&x, 99.0), 9.64);
    }

    #[test]
    fn edge_cases() {
        assert!(percentile(&[], 50.0).is_nan());
        assert!(percentile(&[1.0], f64::NAN).is_nan());
        assert_eq!(percentile(&[7.0], 0.0), 7.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0], -5.0), 1.0);
        assert_eq!(percentile(&[1.0, 2.0], 150.0), 2.0);
    }

    #[test]
    fn summary_of_unsorted_values() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.count, 4);
        assert_close!(s.mean, 2.5);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        assert_close!(s.p50, 2.5);
        assert_close!(s.p90, 3.7);
        assert_close!(s.p95, 3.85);
        assert_close!(s.p99, 3.97);
    }

    #[test]
    fn summary_of_one_value() {
        let s = Summary::of(&[0.25]).unwrap();
        assert_eq!(
            s,
            Summary {
                count: 1,
                mean: 0.25,
                min: 0.25,
                max: 0.25,
                p50: 0.25,
                p90: 0.25,
                p95: 0.25,
                p99: 0.25
            }
        );
    }

    #[test]
    fn summary_ignores_nans_and_empty_is_none() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        let s = Summary::of(&[2.0, f64::NAN, 1.0]).unwrap();
        assert_eq!((s.count, s.min, s.max), (2, 1.0, 2.0));
        assert_close!(s.mean, 1.5);
    }

    #[test]
    fn summary_serialises_with_its_field_names() {
        let v = serde_json::to_value(Summary::of(&[1.0]).unwrap()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["count", "max", "mean", "min", "p50", "p90", "p95", "p99"]
        );
    }

    proptest! {
        #[test]
        fn percentiles_are_monotone_and_within_range(
            mut xs in proptest::collection::vec(-1e6f64..1e6, 1..60),
            mut qs in proptest::collection::vec(0.0f64..=100.0, 2..20),
        ) {
            xs.sort_by(f64::total_cmp);
            qs.sort_by(f64::total_cmp);
            let ps: Vec<f64> = qs.iter().map(|&q| percentile(&xs, q)).collect();
            for p in &ps {
                prop_assert!(*p >= xs[0] && *p <= xs[xs.len() - 1]);
            }
            for w in ps.windows(2) {
                prop_assert!(w[0] <= w[1], "{:?}", ps);
            }
            let s = Summary::of(&xs).unwrap();
            prop_assert!(s.min <= s.p50 && s.p50 <= s.p90 && s.p90 <= s.p95);
            prop_assert!(s.p95 <= s.p99 && s.p99 <= s.max);
        }
    }
}
