//! Implementation variants of an op under study, side by side.
//!
//! Two ops have more than one implementation, and only on CUDA:
//!
//! - attention (`backend::cuda::AttentionVariant`, docs/attention.md), chosen with `--attention`:
//!   - `naive`: `paged_attention_naive` for every row, the baseline every other variant is
//!     compared with;
//!   - `auto`: split-KV paged decode (flash-decoding, the split count from the backend's
//!     heuristic) and flash prefill on tensor cores;
//!   - `auto-1split` (decode only): the split-KV decode kernel forced to one split. It still
//!     shares each K/V row among the query heads of a GQA group and reads it with 16-byte loads,
//!     but has no split of the context over extra blocks: the instructive step between `naive`
//!     and `auto`.
//! - the whole decode step (`model::graphs`), always both:
//!   - `eager`: every kernel launched from the host, one by one, the baseline;
//!   - `graphs`: the step recorded once into a CUDA graph and replayed (the engine's default
//!     path), so the difference is the launch overhead a graph saves.
//!
//! On the CPU there is one implementation, the reference (`backend/cpu/`), so CPU cases carry no
//! variant (`Case::variant` is `None`, and results rows have no `variant` field). On CUDA,
//! [`expand`] turns every case of such an op into one case per chosen variant, the baseline
//! first, so a variant's speed-up over the baseline at the same shape ([`speedup_over_baseline`])
//! can be printed as soon as it is measured.

use crate::backend::cuda::attention;
use crate::backend::cuda::params::IM_DECODE_MAX_SPLITS;
use crate::backend::cuda::AttentionVariant;
use crate::error::{Error, Result};

use super::ops::{Case, Op, Shape};
use super::roofline::{fmt_speedup, fmt_time};
use super::{Device, Dtype};

/// One implementation of an op with several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Variant {
    /// The naive kernel for every row: the baseline.
    #[serde(rename = "naive")]
    Naive,
    /// Split-KV decode with the heuristic's split count; flash prefill.
    #[serde(rename = "auto")]
    Auto,
    /// Split-KV decode forced to one split (decode only).
    #[serde(rename = "auto-1split")]
    AutoOneSplit,
    /// The decode step launched kernel by kernel: the baseline of the step.
    #[serde(rename = "eager")]
    Eager,
    /// The decode step replayed from a CUDA graph (the engine's default).
    #[serde(rename = "graphs")]
    Graphs,
}

impl Variant {
    /// Every variant, each op's baseline first (the order cases are expanded in).
    pub const ALL: [Variant; 5] = [
        Variant::Naive,
        Variant::Auto,
        Variant::AutoOneSplit,
        Variant::Eager,
        Variant::Graphs,
    ];

    /// The attention variants, the values `--attention` chooses from (naive first).
    pub const ATTENTION: [Variant; 3] = [Variant::Naive, Variant::Auto, Variant::AutoOneSplit];

    /// The variant of `op` the others are compared with: `naive` attention, the `eager` step;
    /// `None` for an op with one implementation.
    pub fn baseline(op: Op) -> Option<Variant> {
        match op {
            Op::AttentionPrefill | Op::AttentionDecode => Some(Variant::Naive),
            Op::DecodeStep => Some(Variant::Eager),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Naive => "naive",
            Variant::Auto => "auto",
            Variant::AutoOneSplit => "auto-1split",
            Variant::Eager => "eager",
            Variant::Graphs => "graphs",
        }
    }

    /// Whether this variant is a distinct implementation of `op` (forcing one split means nothing
    /// to prefill, which has no splits).
    pub fn applies_to(self, op: Op) -> bool {
        match self {
            Variant::Naive | Variant::Auto => {
                matches!(op, Op::AttentionPrefill | Op::AttentionDecode)
            }
            Variant::AutoOneSplit => op == Op::AttentionDecode,
            Variant::Eager | Variant::Graphs => op == Op::DecodeStep,
        }
    }

    /// The CUDA backend's settings for an attention variant: the attention variant and the forced
    /// number of decode splits (`None`: the heuristic). `None` for the step variants, which run
    /// with the backend's own attention setting.
    pub fn cuda_settings(self) -> Option<(AttentionVariant, Option<u32>)> {
        match self {
            Variant::Naive => Some((AttentionVariant::Naive, None)),
            Variant::Auto => Some((AttentionVariant::Auto, None)),
            Variant::AutoOneSplit => Some((AttentionVariant::Auto, Some(1))),
            Variant::Eager | Variant::Graphs => None,
        }
    }

    /// Why this variant has no kernel of its own for `case` in `dtype` on a GPU of compute
    /// capability `cc`, or `None` when it has. `auto` falls back to the naive kernel for a whole
    /// step it has no kernel for (`backend::cuda::attention::auto_supported`: flash prefill needs
    /// bf16/f16, sm_80 and head_dim 64/128; split-KV decode head_dim 64/128/256), so timing it
    /// there would time the naive kernel a second time under another name.
    pub fn unsupported_reason(self, case: &Case, dtype: Dtype, cc: (i32, i32)) -> Option<String> {
        if let Shape::DecodeStep { batch, .. } = case.shape {
            let largest = *crate::model::graphs::BATCH_BUCKETS.last().unwrap_or(&0);
            return (self == Variant::Graphs && batch > largest).then(|| {
                format!(
                    "`graphs` records decode steps of at most {largest} sequences: a batch of \
                     {batch} would run eagerly"
                )
            });
        }
        if self == Variant::Naive {
            return None;
        }
        let Shape::Attention {
            query_len,
            head_dim,
            ..
        } = case.shape
        else {
            return None;
        };
        let (prefill, decode) = (query_len > 1, query_len == 1);
        let elem = dtype.bytes() as usize;
        if attention::auto_supported(elem, cc, head_dim, prefill, decode) {
            return None;
        }
        Some(format!(
            "`{}` has no kernel for this case ({} in {}, head_dim {head_dim}, sm_{}{}; flash prefill              needs bf16/f16, sm_80+ and head_dim 64/128, split-KV decode head_dim 64/128/256): it              would run the naive kernel",
            self.name(),
            if prefill { "prefill" } else { "decode" },
            dtype.name(),
            cc.0,
            cc.1
        ))
    }

    /// Device bytes the variant allocates besides the case's buffers: split-KV decode's partial
    /// results (`[seqs, num_heads, splits, head_dim]` f32 accumulators and `[…, 2]` max/sum), at
    /// the most splits the backend uses.
    pub fn scratch_bytes(self, case: &Case) -> u64 {
        let Shape::Attention {
            seqs,
            query_len: 1,
            num_heads,
            head_dim,
            ..
        } = case.shape
        else {
            return 0;
        };
        let splits = match self {
            Variant::Naive | Variant::AutoOneSplit | Variant::Eager | Variant::Graphs => return 0,
            Variant::Auto => IM_DECODE_MAX_SPLITS as usize,
        };
        let (acc, ml) = attention::scratch_lens(seqs, num_heads, splits, head_dim);
        4 * (acc + ml) as u64
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Resolve `--attention` values (`naive`, `auto`, `auto-1split`, or `all`), comma-separated or as
/// several values. Order follows [`Variant::ATTENTION`] (naive first); duplicates collapse;
/// nothing given means all.
pub fn parse_list(values: &[String]) -> Result<Vec<Variant>> {
    let mut picked = Vec::new();
    for name in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if name.is_empty() {
            continue;
        }
        if name.eq_ignore_ascii_case("all") {
            picked.extend(Variant::ATTENTION);
            continue;
        }
        match Variant::ATTENTION
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(name))
        {
            Some(v) => picked.push(v),
            None => {
                let names: Vec<&str> = Variant::ATTENTION.iter().map(|v| v.name()).collect();
                return Err(Error::Invalid(format!(
                    "unknown attention variant `{name}` (variants: {}, or all)",
                    names.join(", ")
                )));
            }
        }
    }
    if picked.is_empty() {
        return Ok(Variant::ATTENTION.to_vec());
    }
    Ok(Variant::ATTENTION
        .into_iter()
        .filter(|v| picked.contains(v))
        .collect())
}

/// The cases as they run on `device`: on CUDA, each attention case becomes one case per variant of
/// `attention` (the `--attention` choice) that applies to it, and each decode step one `eager` and
/// one `graphs` case (in [`Variant::ALL`] order); an attention case none of the chosen variants
/// applies to (prefill when only `auto-1split` is chosen) is left out. Other ops, and every case
/// on the CPU, are kept as they are (no variant).
pub fn expand(cases: &[Case], device: Device, attention: &[Variant]) -> Vec<Case> {
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        let has_variants = Variant::ALL.iter().any(|v| v.applies_to(case.op));
        if device == Device::Cpu || !has_variants {
            out.push(case.clone());
            continue;
        }
        for v in Variant::ALL {
            let chosen = attention.contains(&v) || !Variant::ATTENTION.contains(&v);
            if chosen && v.applies_to(case.op) {
                out.push(Case {
                    variant: Some(v),
                    ..case.clone()
                });
            }
        }
    }
    out
}

/// `baseline time / this case's time` when `case` has a variant and `timed` (cases with their
/// median seconds per call) holds the baseline case ([`Variant::baseline`]: naive attention, the
/// eager step) of the same op, model and shape; `None` otherwise (the baseline row itself gives 1).
pub fn speedup_over_baseline(case: &Case, time_s: f64, timed: &[(Case, f64)]) -> Option<f64> {
    case.variant?;
    let base = Case {
        variant: Some(Variant::baseline(case.op)?),
        ..case.clone()
    };
    timed
        .iter()
        .find(|(c, _)| *c == base)
        .map(|&(_, t_base)| t_base / time_s)
        .filter(|r| r.is_finite() && *r > 0.0)
}

/// One line per shape studied in several variants (first-seen order): each variant's median time
/// and its speed-up over the baseline, e.g. `attention_decode llama-3.1-8b seqs=1,… naive 80.00 µs ·
/// auto 20.00 µs (4.00×)`.
pub fn summary(timed: &[(Case, f64)]) -> Vec<String> {
    let mut shapes: Vec<Case> = Vec::new();
    for (case, _) in timed {
        let base = Case {
            variant: None,
            ..case.clone()
        };
        if case.variant.is_some() && !shapes.contains(&base) {
            shapes.push(base);
        }
    }
    shapes
        .iter()
        .map(|base| {
            let parts: Vec<String> = timed
                .iter()
                .filter(|(c, _)| c.variant.is_some() && c.op == base.op && c.model == base.model)
                .filter(|(c, _)| c.shape == base.shape)
                .map(|(c, t)| {
                    let v = c.variant.map_or("-", |v| v.name());
                    match speedup_over_baseline(c, *t, timed) {
                        Some(r) if c.variant != Variant::baseline(c.op) => {
                            format!("{v} {} ({})", fmt_time(*t), fmt_speedup(Some(r)))
                        }
                        _ => format!("{v} {}", fmt_time(*t)),
                    }
                })
                .collect();
            format!(
                "{:<18} {:<15} {:<48} {}",
                base.op.name(),
                base.model.as_deref().unwrap_or("-"),
                base.shape_label(),
                parts.join(" · ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn attention(op: Op, seqs: usize, q: usize, ctx: usize) -> Case {
        Case {
            op,
            model: Some("llama-3.1-8b".into()),
            shape: Shape::Attention {
                seqs,
                query_len: q,
                context_len: ctx,
                num_heads: 32,
                num_kv_heads: 8,
                head_dim: 128,
                block_size: 16,
            },
            variant: None,
        }
    }

    fn decode_step(batch: usize) -> Case {
        let config = crate::model::open("tiny-llama").unwrap().config;
        Case {
            op: Op::DecodeStep,
            model: Some("tiny-llama".into()),
            shape: Shape::DecodeStep {
                batch,
                context: 64,
                block_size: 16,
                config: Box::new(config),
            },
            variant: None,
        }
    }

    #[test]
    fn variant_lists_parse_in_baseline_order() {
        assert_eq!(parse_list(&[]).unwrap(), Variant::ATTENTION.to_vec());
        assert_eq!(
            parse_list(&strings(&["all"])).unwrap(),
            Variant::ATTENTION.to_vec()
        );
        // the order given does not matter: naive comes first, duplicates collapse
        assert_eq!(
            parse_list(&strings(&["auto-1split,naive", " AUTO ", "naive"])).unwrap(),
            Variant::ATTENTION.to_vec()
        );
        assert_eq!(
            parse_list(&strings(&["auto"])).unwrap(),
            vec![Variant::Auto]
        );
        assert_eq!(
            parse_list(&strings(&["auto,", ""])).unwrap(),
            vec![Variant::Auto]
        );
        let e = parse_list(&strings(&["naive,flash2"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown attention variant `flash2`") && e.contains("auto-1split"),
            "{e}"
        );
        // the step variants are not attention variants
        assert!(parse_list(&strings(&["graphs"])).is_err());
    }

    #[test]
    fn names_round_trip_through_serde() {
        for v in Variant::ALL {
            let json = serde_json::to_value(v).unwrap();
            assert_eq!(json, v.name());
            assert_eq!(serde_json::from_value::<Variant>(json).unwrap(), v);
        }
    }

    #[test]
    fn one_split_is_a_decode_variant_only() {
        assert_eq!(
            Variant::AutoOneSplit.cuda_settings(),
            Some((AttentionVariant::Auto, Some(1)))
        );
        assert_eq!(
            Variant::Auto.cuda_settings(),
            Some((AttentionVariant::Auto, None))
        );
        assert_eq!(
            Variant::Naive.cuda_settings(),
            Some((AttentionVariant::Naive, None))
        );
        assert!(Variant::AutoOneSplit.applies_to(Op::AttentionDecode));
        assert!(!Variant::AutoOneSplit.applies_to(Op::AttentionPrefill));
        for v in Variant::ALL {
            assert!(!v.applies_to(Op::Matmul), "{v}");
        }
    }

    #[test]
    fn step_variants_apply_to_the_decode_step_only() {
        for v in [Variant::Eager, Variant::Graphs] {
            // the backend keeps its own attention setting
            assert_eq!(v.cuda_settings(), None);
            assert!(v.applies_to(Op::DecodeStep));
            assert!(!v.applies_to(Op::AttentionDecode));
            assert_eq!(v.scratch_bytes(&decode_step(4)), 0);
            assert_eq!(
                v.unsupported_reason(&decode_step(256), Dtype::Bf16, (9, 0)),
                None
            );
        }
        let e = Variant::Graphs
            .unsupported_reason(&decode_step(257), Dtype::Bf16, (9, 0))
            .unwrap();
        assert!(e.contains("at most 256 sequences"), "{e}");
        assert_eq!(
            Variant::Eager.unsupported_reason(&decode_step(257), Dtype::Bf16, (9, 0)),
            None
        );
        for v in Variant::ATTENTION {
            assert!(!v.applies_to(Op::DecodeStep), "{v}");
        }
        assert_eq!(Variant::baseline(Op::DecodeStep), Some(Variant::Eager));
        assert_eq!(Variant::baseline(Op::AttentionDecode), Some(Variant::Naive));
        assert_eq!(
            Variant::baseline(Op::AttentionPrefill),
            Some(Variant::Naive)
        );
        assert_eq!(Variant::baseline(Op::Matmul), None);
    }

    #[test]
    fn auto_is_skipped_where_it_would_run_the_naive_kernel() {
        let prefill = attention(Op::AttentionPrefill, 1, 512, 512);
        let decode = attention(Op::AttentionDecode, 16, 1, 4096);
        let h100 = (9, 0);
        for v in Variant::ALL {
            assert_eq!(v.unsupported_reason(&prefill, Dtype::Bf16, h100), None);
            assert_eq!(v.unsupported_reason(&decode, Dtype::F32, h100), None);
        }
        // no f32 tensor-core prefill, no mma.sync before Ampere; naive always runs
        let e = Variant::Auto
            .unsupported_reason(&prefill, Dtype::F32, h100)
            .unwrap();
        assert!(
            e.contains("prefill in f32") && e.contains("naive kernel"),
            "{e}"
        );
        assert!(Variant::Auto
            .unsupported_reason(&prefill, Dtype::F16, (7, 5))
            .is_some());
        assert_eq!(
            Variant::Naive.unsupported_reason(&prefill, Dtype::F32, (7, 5)),
            None
        );
        // head_dim 96: neither kernel
        let mut odd = decode.clone();
        if let Shape::Attention { head_dim, .. } = &mut odd.shape {
            *head_dim = 96;
        }
        assert!(Variant::AutoOneSplit
            .unsupported_reason(&odd, Dtype::Bf16, h100)
            .is_some());
    }

    #[test]
    fn split_kv_scratch_counts_for_auto_decode_only() {
        let decode = attention(Op::AttentionDecode, 64, 1, 16384);
        // 64 sequences × 32 heads × 64 splits × (128 + 2) f32
        assert_eq!(
            Variant::Auto.scratch_bytes(&decode),
            4 * 64 * 32 * 64 * (128 + 2)
        );
        assert_eq!(Variant::AutoOneSplit.scratch_bytes(&decode), 0);
        assert_eq!(Variant::Naive.scratch_bytes(&decode), 0);
        let prefill = attention(Op::AttentionPrefill, 1, 512, 512);
        assert_eq!(Variant::Auto.scratch_bytes(&prefill), 0);
    }

    #[test]
    fn variants_expand_on_cuda_only() {
        let norm = Case {
            op: Op::Rmsnorm,
            model: None,
            shape: Shape::Rows { rows: 1, cols: 8 },
            variant: None,
        };
        let cases = vec![
            norm.clone(),
            attention(Op::AttentionPrefill, 1, 512, 512),
            attention(Op::AttentionDecode, 16, 1, 4096),
            decode_step(2),
        ];
        assert_eq!(expand(&cases, Device::Cpu, &Variant::ATTENTION), cases);
        let cuda = expand(&cases, Device::Cuda, &Variant::ATTENTION);
        let got: Vec<(Op, Option<Variant>)> = cuda.iter().map(|c| (c.op, c.variant)).collect();
        assert_eq!(
            got,
            vec![
                (Op::Rmsnorm, None),
                (Op::AttentionPrefill, Some(Variant::Naive)),
                (Op::AttentionPrefill, Some(Variant::Auto)),
                (Op::AttentionDecode, Some(Variant::Naive)),
                (Op::AttentionDecode, Some(Variant::Auto)),
                (Op::AttentionDecode, Some(Variant::AutoOneSplit)),
                (Op::DecodeStep, Some(Variant::Eager)),
                (Op::DecodeStep, Some(Variant::Graphs)),
            ]
        );
        // ids stay unique: the variant is part of them
        let mut ids: Vec<String> = cuda.iter().map(|c| c.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), cuda.len());
        // only auto-1split: prefill has nothing to run; the step keeps both of its variants
        let one = expand(&cases, Device::Cuda, &[Variant::AutoOneSplit]);
        let got: Vec<(Op, Option<Variant>)> = one.iter().map(|c| (c.op, c.variant)).collect();
        assert_eq!(
            got,
            vec![
                (Op::Rmsnorm, None),
                (Op::AttentionDecode, Some(Variant::AutoOneSplit)),
                (Op::DecodeStep, Some(Variant::Eager)),
                (Op::DecodeStep, Some(Variant::Graphs)),
            ]
        );
    }

    #[test]
    fn speedups_compare_with_the_baseline_at_the_same_shape() {
        let with = |c: Case, v| Case {
            variant: Some(v),
            ..c
        };
        let small = attention(Op::AttentionDecode, 1, 1, 1024);
        let large = attention(Op::AttentionDecode, 64, 1, 16384);
        let timed = vec![
            (with(small.clone(), Variant::Naive), 4e-5),
            (with(large.clone(), Variant::Naive), 8e-2),
            (with(small.clone(), Variant::Auto), 1e-5),
        ];
        let auto_small = with(small.clone(), Variant::Auto);
        assert_eq!(speedup_over_baseline(&auto_small, 1e-5, &timed), Some(4.0));
        let naive_small = with(small.clone(), Variant::Naive);
        assert_eq!(speedup_over_baseline(&naive_small, 4e-5, &timed), Some(1.0));
        // the large shape's naive row, not the small one's
        let one_large = with(large.clone(), Variant::AutoOneSplit);
        assert_eq!(speedup_over_baseline(&one_large, 2e-2, &timed), Some(4.0));
        // no naive row for this shape, no variant, or no time: no ratio
        let other = with(attention(Op::AttentionDecode, 16, 1, 1024), Variant::Auto);
        assert_eq!(speedup_over_baseline(&other, 1e-5, &timed), None);
        assert_eq!(speedup_over_baseline(&small, 1e-5, &timed), None);
        assert_eq!(speedup_over_baseline(&auto_small, 0.0, &timed), None);
        // the decode step's baseline is the eager step
        let step = decode_step(1);
        let timed = vec![
            (with(step.clone(), Variant::Eager), 4e-4),
            (with(step.clone(), Variant::Graphs), 1e-4),
        ];
        let graphs = with(step.clone(), Variant::Graphs);
        assert_eq!(speedup_over_baseline(&graphs, 1e-4, &timed), Some(4.0));
        let lines = summary(&timed);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].starts_with("decode_step") && lines[0].ends_with("graphs 100.00 µs (4.00×)"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn summary_has_one_line_per_shape() {
        let with = |c: Case, v| Case {
            variant: Some(v),
            ..c
        };
        let small = attention(Op::AttentionDecode, 1, 1, 1024);
        let prefill = attention(Op::AttentionPrefill, 1, 512, 512);
        let norm = Case {
            op: Op::Rmsnorm,
            model: None,
            shape: Shape::Rows { rows: 1, cols: 8 },
            variant: None,
        };
        let timed = vec![
            (norm, 1e-6),
            (with(prefill.clone(), Variant::Naive), 2e-3),
            (with(prefill, Variant::Auto), 5e-4),
            (with(small.clone(), Variant::Auto), 1e-5),
            (with(small, Variant::Naive), 4e-5),
        ];
        let lines = summary(&timed);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].starts_with("attention_prefill"), "{}", lines[0]);
        assert!(
            lines[0].ends_with("naive 2.00 ms · auto 500.00 µs (4.00×)"),
            "{}",
            lines[0]
        );
        // the naive row ran after auto here: the ratio is still found
        assert!(
            lines[1].ends_with("auto 10.00 µs (4.00×) · naive 40.00 µs"),
            "{}",
            lines[1]
        );
        assert!(summary(&timed[..1]).is_empty());
    }
}
