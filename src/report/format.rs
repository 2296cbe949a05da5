//! Numbers for people: about four significant digits, and each table unit's scale.

use super::model::{Figure, Unit};

/// About four significant digits, no exponent between 0.001 and 10⁶.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.3e}");
    }
    let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').into()
    } else {
        s
    }
}

/// A duration in seconds with the unit that reads best ("8.79 µs", "6.41 ms", "2.295 s").
pub fn duration(s: f64) -> String {
    let a = s.abs();
    if a == 0.0 || !a.is_finite() {
        format!("{} s", number(s))
    } else if a < 1e-3 {
        format!("{} µs", number(s * 1e6))
    } else if a < 1.0 {
        format!("{} ms", number(s * 1e3))
    } else {
        format!("{} s", number(s))
    }
}

/// A count in words' units ("156.5K", "7.2M", "70.6B").
pub fn count(n: f64) -> String {
    let a = n.abs();
    if a >= 1e9 {
        format!("{}B", number(n / 1e9))
    } else if a >= 1e6 {
        format!("{}M", number(n / 1e6))
    } else if a >= 1e3 {
        format!("{}K", number(n / 1e3))
    } else {
        number(n)
    }
}

/// Bytes in binary units ("1.5 GiB").
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{} {}", number(v), UNITS[u])
}

/// A table cell's value in the column's unit; `None` when the figure is absent.
pub fn cell(f: &Figure, unit: Unit) -> Option<String> {
    let v = f.value?;
    Some(match unit {
        Unit::Millis => number(v * 1e3),
        Unit::Bytes => bytes(v),
        Unit::Dollars => format!("${}", number(v)),
        Unit::PerSecond | Unit::Joules | Unit::PerJoule | Unit::Watts => number(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_four_digits() {
        assert_eq!(number(2072.5802043201384), "2073");
        assert_eq!(number(64.76813138500432), "64.77");
        assert_eq!(number(0.004888890999999999), "0.004889");
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(5.51e-7), "5.510e-7");
        assert_eq!(number(-12.345), "-12.35");
    }

    #[test]
    fn durations_and_counts_pick_units() {
        assert_eq!(duration(5.51e-7), "0.551 µs");
        assert_eq!(duration(0.00641), "6.41 ms");
        assert_eq!(duration(2.2954), "2.295 s");
        assert_eq!(count(156480.0), "156.5K");
        assert_eq!(count(7.0e9), "7B");
    }

    #[test]
    fn cells_scale_units() {
        assert_eq!(cell(&Figure::of(0.0154), Unit::Millis).unwrap(), "15.4");
        assert_eq!(
            cell(&Figure::of(1.5 * 1024.0 * 1024.0 * 1024.0), Unit::Bytes).unwrap(),
            "1.5 GiB"
        );
        assert_eq!(cell(&Figure::of(0.25), Unit::Dollars).unwrap(), "$0.25");
        assert_eq!(cell(&Figure::absent("x"), Unit::Watts), None);
    }
}
