//! Where a measured call sits on the roofline, and the table both `cargo bench` and
//! `infermeter kernels` print.
//!
//! An op with arithmetic intensity I (FLOPs per byte) can at best reach min(P, I·B) FLOP/s on a
//! device with compute ceiling P and bandwidth B. Below the ridge point P / B it is
//! **memory-bound** and its percentage is achieved GB/s ÷ B; above it **compute-bound**, achieved
//! GFLOP/s ÷ P (both are achieved ÷ attainable). The bound is decided against the measured
//! ceilings; the spec percentage uses the spec's own ridge. Ops without FLOPs (copies) are
//! memory-bound.
//!
//! Small working sets stay in the CPU's caches between repeated calls, so a memory-bound op can
//! show more than 100 % of the DRAM read ceiling: that is cache bandwidth, and says the shape is
//! small.

use super::ceiling::Ceilings;
use super::ops::{Case, Cost};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Memory,
    Compute,
}

/// Bandwidth and compute of a roofline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub memory_gb_s: f64,
    pub compute_gflop_s: f64,
}

impl Peak {
    pub fn ridge(&self) -> f64 {
        if self.memory_gb_s > 0.0 {
            self.compute_gflop_s / self.memory_gb_s
        } else {
            f64::INFINITY
        }
    }

    /// Achieved ÷ attainable at intensity `ai`, in percent.
    fn percent(&self, ai: f64, gb_s: f64, gflop_s: f64) -> Option<f64> {
        let (num, den) = if ai < self.ridge() {
            (gb_s, self.memory_gb_s)
        } else {
            (gflop_s, self.compute_gflop_s)
        };
        (den > 0.0 && num.is_finite()).then(|| 100.0 * num / den)
    }
}

impl From<&Ceilings> for Peak {
    fn from(c: &Ceilings) -> Self {
        Peak {
            memory_gb_s: c.memory_gb_s,
            compute_gflop_s: c.compute_gflop_s,
        }
    }
}

/// One call's time on the roofline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    pub achieved_gb_s: f64,
    pub achieved_gflop_s: f64,
    /// FLOPs per byte.
    pub intensity: f64,
    pub bound: Bound,
    pub pct_of_ceiling: Option<f64>,
    pub pct_of_spec: Option<f64>,
}

/// Place a call of `cost` taking `time_s` against the measured `ceiling` (and a spec peak, if any).
pub fn assess(cost: Cost, time_s: f64, ceiling: Peak, spec: Option<Peak>) -> Assessment {
    let t = if time_s > 0.0 { time_s } else { f64::NAN };
    let gb_s = cost.bytes as f64 / t / 1e9;
    let gflop_s = cost.flops as f64 / t / 1e9;
    let ai = cost.intensity();
    Assessment {
        achieved_gb_s: gb_s,
        achieved_gflop_s: gflop_s,
        intensity: ai,
        bound: if ai < ceiling.ridge() {
            Bound::Memory
        } else {
            Bound::Compute
        },
        pct_of_ceiling: ceiling.percent(ai, gb_s, gflop_s),
        pct_of_spec: spec.and_then(|s| s.percent(ai, gb_s, gflop_s)),
    }
}

/// The note printed under a table where memory-bound rows beat the memory ceiling (`None` where
/// none does): their operands stayed in a cache between back-to-back calls, so the row measures
/// cache bandwidth, not the DRAM/HBM roofline. `gpu_cold_l2`: GPU calls were preceded by an L2
/// flush (then only the L1/shared level remains as an explanation).
pub fn above_ceiling_note<'a>(
    rows: impl IntoIterator<Item = &'a Assessment>,
    gpu: bool,
    gpu_cold_l2: bool,
) -> Option<String> {
    let n = rows
        .into_iter()
        .filter(|a| a.bound == Bound::Memory && a.pct_of_ceiling.is_some_and(|p| p > 100.0))
        .count();
    if n == 0 {
        return None;
    }
    let what = if n == 1 { "row is" } else { "rows are" };
    let advice = match (gpu, gpu_cold_l2) {
        (false, _) => "the CPU's caches hold their operands between back-to-back calls, so they \
                       show cache bandwidth: read them as \"this shape is small\", not as a roofline \
                       figure",
        (true, false) => "the GPU's L2 holds their operands between back-to-back calls; time them \
                          with a cold L2 (--cold-l2, INFERMETER_BENCH_COLD_L2=1) for the HBM roofline",
        (true, true) => "even with the L2 flushed before every call: check the op's byte count \
                         (src/study/ops.rs) against what the kernel reads",
    };
    Some(format!(
        "note: {n} memory-bound {what} above 100% of the measured memory ceiling: {advice}."
    ))
}

/// Seconds in the unit that suits them.
pub fn fmt_time(s: f64) -> String {
    if !s.is_finite() {
        "-".into()
    } else if s < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.2} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_pct(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.0}%"))
}

/// Which optional columns a table has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Columns {
    /// `%spec`: % of the device's spec peak (GPUs in the spec table).
    pub spec: bool,
    /// `variant` and `vs base`: the implementation (CUDA attention; the decode step eager or from a
    /// CUDA graph) and its speed-up over the baseline variant (naive attention, the eager step) at
    /// the same shape.
    pub variants: bool,
}

/// The table's column header.
pub fn table_header(cols: Columns) -> String {
    let mut s = format!("{:<18} {:<15} {:<48}", "op", "model", "shape");
    if cols.variants {
        s.push_str(&format!(" {:<12}", "variant"));
    }
    s.push_str(&format!(
        " {:>10} {:>8} {:>9} {:>7} {:>7} {:>7}",
        "time", "GB/s", "GFLOP/s", "FLOP/B", "bound", "%ceil"
    ));
    if cols.spec {
        s.push_str(&format!(" {:>6}", "%spec"));
    }
    if cols.variants {
        s.push_str(&format!(" {:>8}", "vs base"));
    }
    s
}

/// One table line: the case, its (median) time, where it sits and (with variants) its speed-up
/// over the baseline variant at the same shape.
pub fn table_line(
    case: &Case,
    time_s: f64,
    a: &Assessment,
    speedup: Option<f64>,
    cols: Columns,
) -> String {
    let mut s = format!(
        "{:<18} {:<15} {:<48}",
        case.op.name(),
        case.model.as_deref().unwrap_or("-"),
        case.shape_label(),
    );
    if cols.variants {
        s.push_str(&format!(
            " {:<12}",
            case.variant.map_or("-".into(), |v| v.name())
        ));
    }
    s.push_str(&format!(
        " {:>10} {:>8} {:>9} {:>7} {:>7} {:>7}",
        fmt_time(time_s),
        fmt_rate(a.achieved_gb_s),
        if a.achieved_gflop_s > 0.0 {
            fmt_rate(a.achieved_gflop_s)
        } else {
            "-".into()
        },
        format!("{:.2}", a.intensity),
        match a.bound {
            Bound::Memory => "memory",
            Bound::Compute => "compute",
        },
        fmt_pct(a.pct_of_ceiling)
    ));
    if cols.spec {
        s.push_str(&format!(" {:>6}", fmt_pct(a.pct_of_spec)));
    }
    if cols.variants {
        s.push_str(&format!(" {:>8}", fmt_speedup(speedup)));
    }
    s
}

/// `4.20×`, or `-` when there is no ratio.
pub fn fmt_speedup(r: Option<f64>) -> String {
    r.filter(|r| r.is_finite())
        .map_or("-".into(), |r| format!("{r:.2}×"))
}

/// The ceilings as a few printed lines.
pub fn describe_ceilings(c: &Ceilings) -> String {
    let one = c
        .memory_gb_s_one_thread
        .map_or(String::new(), |g| format!("; one thread: {g:.1} GB/s"));
    let memory = match c.device {
        super::Device::Cpu => "read",
        super::Device::Cuda => "copy (read + write)",
    };
    format!(
        "{} ceilings (measured): {memory} {:.1} GB/s{one} [{}]\n  compute {:.1} GFLOP/s [{}]\n  \
         ridge point {:.1} FLOP/byte",
        c.device.name().to_uppercase(),
        c.memory_gb_s,
        c.memory_method,
        c.compute_gflop_s,
        c.compute_method,
        c.ridge()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CEIL: Peak = Peak {
        memory_gb_s: 10.0,
        compute_gflop_s: 100.0,
    };

    #[test]
    fn memory_and_compute_bound_percentages() {
        // 1 GB and 1 GFLOP in 0.2 s: intensity 1 < ridge 10 → memory-bound at 5 GB/s = 50 %
        let a = assess(
            Cost {
                bytes: 1_000_000_000,
                flops: 1_000_000_000,
            },
            0.2,
            CEIL,
            None,
        );
        assert_eq!(a.bound, Bound::Memory);
        assert!((a.achieved_gb_s - 5.0).abs() < 1e-9);
        assert!((a.pct_of_ceiling.unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(a.pct_of_spec, None);
        // 0.1 GB and 20 GFLOP in 0.5 s: intensity 200 > 10 → compute-bound at 40 GFLOP/s = 40 %;
        // against a spec of 1000 GFLOP/s, 100 GB/s (ridge 10): 4 %
        let spec = Peak {
            memory_gb_s: 100.0,
            compute_gflop_s: 1000.0,
        };
        let a = assess(
            Cost {
                bytes: 100_000_000,
                flops: 20_000_000_000,
            },
            0.5,
            CEIL,
            Some(spec),
        );
        assert_eq!(a.bound, Bound::Compute);
        assert!((a.pct_of_ceiling.unwrap() - 40.0).abs() < 1e-9);
        assert!((a.pct_of_spec.unwrap() - 4.0).abs() < 1e-9);
        // a copy: no FLOPs, memory-bound
        let a = assess(
            Cost {
                bytes: 10_000_000_000,
                flops: 0,
            },
            1.0,
            CEIL,
            None,
        );
        assert_eq!(a.bound, Bound::Memory);
        assert!((a.pct_of_ceiling.unwrap() - 100.0).abs() < 1e-9);
        // no time: nothing to divide by, no percentage and no panic
        let a = assess(Cost { bytes: 1, flops: 1 }, 0.0, CEIL, None);
        assert_eq!(a.pct_of_ceiling, None);
    }

    #[test]
    fn rows_above_the_memory_ceiling_get_a_note() {
        let at = |bytes: u64, flops: u64| assess(Cost { bytes, flops }, 1.0, CEIL, None);
        let within = at(9_000_000_000, 0); // 90 %
        let above = at(20_000_000_000, 0); // 200 %, memory-bound
        let compute = at(1_000_000_000, 150_000_000_000); // compute-bound at 150 %: not a cache effect
        assert_eq!(above_ceiling_note([&within, &compute], false, false), None);
        let cpu = above_ceiling_note([&within, &above, &above], false, false).unwrap();
        assert!(
            cpu.starts_with("note: 2 memory-bound rows are above 100%"),
            "{cpu}"
        );
        assert!(cpu.contains("CPU's caches"), "{cpu}");
        let gpu = above_ceiling_note([&above], true, false).unwrap();
        assert!(
            gpu.contains("1 memory-bound row is") && gpu.contains("--cold-l2"),
            "{gpu}"
        );
        let cold = above_ceiling_note([&above], true, true).unwrap();
        assert!(cold.contains("byte count"), "{cold}");
    }

    #[test]
    fn variant_columns_appear_only_when_asked() {
        use crate::study::ops::{Op, Shape};
        use crate::study::variant::Variant;
        let case = Case {
            op: Op::AttentionDecode,
            model: Some("llama-3.1-8b".into()),
            shape: Shape::Attention {
                seqs: 1,
                query_len: 1,
                context_len: 1024,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
                block_size: 16,
                window: None,
                softcap: None,
                alibi: None,
            },
            variant: Some(Variant::AUTO_ONE_SPLIT),
        };
        let a = assess(
            Cost {
                bytes: 10,
                flops: 1,
            },
            1e-3,
            CEIL,
            None,
        );
        let plain = Columns::default();
        assert!(!table_header(plain).contains("variant"));
        assert!(!table_line(&case, 1e-3, &a, Some(3.0), plain).contains("auto-1split"));
        let cols = Columns {
            spec: true,
            variants: true,
        };
        let header = table_header(cols);
        assert!(
            header.contains("variant") && header.ends_with("vs base"),
            "{header}"
        );
        let line = table_line(&case, 1e-3, &a, Some(3.0), cols);
        assert!(
            line.contains(" auto-1split ") && line.ends_with("3.00×"),
            "{line}"
        );
        // columns line up with the header
        assert_eq!(
            header.chars().count(),
            line.chars().count(),
            "{header}\n{line}"
        );
        assert!(table_line(&case, 1e-3, &a, None, cols).ends_with(" -"));
        assert_eq!(fmt_speedup(Some(f64::INFINITY)), "-");
    }

    #[test]
    fn formats_times() {
        assert_eq!(fmt_time(5e-8), "50 ns");
        assert_eq!(fmt_time(2.5e-5), "25.00 µs");
        assert_eq!(fmt_time(0.0123), "12.30 ms");
        assert_eq!(fmt_time(2.0), "2.00 s");
    }
}
