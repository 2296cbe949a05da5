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
//!     and `auto`;
//!   - `auto-sync` (prefill only): the flash prefill kernel with synchronous K/V tile loads
//!     (through registers, between two barriers) instead of `auto`'s cp.async pipeline: the
//!     instructive step that shows what the pipeline buys;
//!   - `auto-<N>split` (decode only, N up to `IM_DECODE_MAX_SPLITS`; not in `all`): the split-KV
//!     kernel forced to N splits (fewer where the context has fewer key groups), so a sweep over N
//!     shows where the heuristic's choice (`auto`) stands against the best split count.
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

use std::borrow::Cow;

use crate::backend::cuda::attention;
use crate::backend::cuda::params::IM_DECODE_MAX_SPLITS;
use crate::backend::cuda::{AttentionVariant, AutoTuning, PrefillLoads};
use crate::error::{Error, Result};

use super::ops::{Case, Op, Shape};
use super::roofline::{fmt_speedup, fmt_time};
use super::{Device, Dtype};

/// One implementation of an op with several. Written and read by its name ([`Variant::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Variant {
    /// The naive kernel for every row: the baseline.
    Naive,
    /// Split-KV decode with the heuristic's split count; flash prefill.
    Auto,
    /// Flash prefill with synchronous K/V loads, no cp.async pipeline (prefill only).
    AutoSync,
    /// Split-KV decode forced to this many splits, 1..=`IM_DECODE_MAX_SPLITS` (decode only):
    /// `auto-1split`, `auto-8split`, ...
    AutoSplits(u32),
    /// The decode step launched kernel by kernel: the baseline of the step.
    Eager,
    /// The decode step replayed from a CUDA graph (the engine's default).
    Graphs,
}

impl Variant {
    /// The split-KV decode kernel forced to one split: `auto-1split`.
    pub const AUTO_ONE_SPLIT: Variant = Variant::AutoSplits(1);

    /// One of each kind of variant, each op's baseline first (`auto-<N>split` for N = 1).
    pub const ALL: [Variant; 6] = [
        Variant::Naive,
        Variant::Auto,
        Variant::AutoSync,
        Variant::AUTO_ONE_SPLIT,
        Variant::Eager,
        Variant::Graphs,
    ];

    /// The attention variants `all` (and no `--attention`) stands for, naive first; any
    /// `auto-<N>split` can be named besides.
    pub const ATTENTION: [Variant; 4] = [
        Variant::Naive,
        Variant::Auto,
        Variant::AutoSync,
        Variant::AUTO_ONE_SPLIT,
    ];

    /// The step variants, the baseline first: every decode step runs in both.
    pub const STEP: [Variant; 2] = [Variant::Eager, Variant::Graphs];

    /// Whether `--attention` can choose this variant.
    pub fn is_attention(self) -> bool {
        matches!(
            self,
            Variant::Naive | Variant::Auto | Variant::AutoSync | Variant::AutoSplits(_)
        )
    }

    /// Where the variant sorts among the attention variants: naive, auto, auto-sync, then by split
    /// count.
    fn attention_rank(self) -> u64 {
        match self {
            Variant::Naive => 0,
            Variant::Auto => 1,
            Variant::AutoSync => 2,
            Variant::AutoSplits(n) => 3 + u64::from(n),
            Variant::Eager | Variant::Graphs => u64::MAX,
        }
    }

    /// The variant of `op` the others are compared with: `naive` attention, the `eager` step;
    /// `None` for an op with one implementation.
    pub fn baseline(op: Op) -> Option<Variant> {
        match op {
            Op::AttentionPrefill | Op::AttentionDecode => Some(Variant::Naive),
            Op::DecodeStep => Some(Variant::Eager),
            _ => None,
        }
    }

    pub fn name(self) -> Cow<'static, str> {
        match self {
            Variant::Naive => "naive".into(),
            Variant::Auto => "auto".into(),
            Variant::AutoSync => "auto-sync".into(),
            Variant::AutoSplits(n) => format!("auto-{n}split").into(),
            Variant::Eager => "eager".into(),
            Variant::Graphs => "graphs".into(),
        }
    }

    /// The variant named `name` (any case): one of [`Variant::name`]'s names, with
    /// `auto-<N>split` for 1 <= N <= `IM_DECODE_MAX_SPLITS`.
    pub fn from_name(name: &str) -> Result<Variant> {
        let lower = name.trim().to_ascii_lowercase();
        let fixed = [
            Variant::Naive,
            Variant::Auto,
            Variant::AutoSync,
            Variant::Eager,
            Variant::Graphs,
        ];
        if let Some(v) = fixed.into_iter().find(|v| v.name() == lower) {
            return Ok(v);
        }
        let splits = lower
            .strip_prefix("auto-")
            .and_then(|r| r.strip_suffix("split"))
            .and_then(|n| n.parse::<u32>().ok());
        match splits {
            Some(n) if (1..=IM_DECODE_MAX_SPLITS).contains(&n) => Ok(Variant::AutoSplits(n)),
            Some(n) => Err(Error::Invalid(format!(
                "variant `{name}`: {n} splits (the split-KV decode takes 1 to \
                 {IM_DECODE_MAX_SPLITS})"
            ))),
            None => Err(Error::Invalid(format!(
                "unknown variant `{name}` (naive, auto, auto-sync, auto-<N>split for N = 1..\
                 {IM_DECODE_MAX_SPLITS}, eager, graphs)"
            ))),
        }
    }

    /// Whether this variant is a distinct implementation of `op` (forcing one split means nothing
    /// to prefill, which has no splits; the prefill's load scheme nothing to decode).
    pub fn applies_to(self, op: Op) -> bool {
        match self {
            Variant::Naive | Variant::Auto => {
                matches!(op, Op::AttentionPrefill | Op::AttentionDecode)
            }
            Variant::AutoSync => op == Op::AttentionPrefill,
            Variant::AutoSplits(_) => op == Op::AttentionDecode,
            Variant::Eager | Variant::Graphs => op == Op::DecodeStep,
        }
    }

    /// The CUDA backend's settings for an attention variant: the attention variant and the `Auto`
    /// variant's tuning (forced decode splits, prefill loads). `None` for the step variants, which
    /// run with the backend's own attention setting.
    pub fn cuda_settings(self) -> Option<(AttentionVariant, AutoTuning)> {
        let tuned = |t| Some((AttentionVariant::Auto, t));
        match self {
            Variant::Naive => Some((AttentionVariant::Naive, AutoTuning::default())),
            Variant::Auto => tuned(AutoTuning::default()),
            Variant::AutoSync => tuned(AutoTuning {
                prefill_loads: PrefillLoads::Sync,
                ..AutoTuning::default()
            }),
            Variant::AutoSplits(n) => tuned(AutoTuning {
                decode_splits: Some(n),
                ..AutoTuning::default()
            }),
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

    /// The splits the split-KV decode launches for `case` on a GPU with `sms` multiprocessors:
    /// the heuristic's for `auto`, N clamped to what the context allows for `auto-<N>split`
    /// (the same [`attention::decode_split_plan`] the backend runs); `None` for other variants
    /// and cases, and where `auto` has no decode kernel for the head_dim (it runs naive).
    pub fn decode_splits(self, case: &Case, sms: u32) -> Option<u32> {
        let Shape::Attention {
            seqs,
            query_len: 1,
            context_len,
            num_heads,
            num_kv_heads,
            head_dim,
            block_size,
            window,
            ..
        } = case.shape
        else {
            return None;
        };
        let forced = match self {
            Variant::Auto => None,
            Variant::AutoSplits(n) => Some(n),
            Variant::Naive | Variant::AutoSync | Variant::Eager | Variant::Graphs => return None,
        };
        if !attention::DECODE_HEAD_DIMS.contains(&(head_dim as u32)) || num_kv_heads == 0 {
            return None;
        }
        let group = (num_heads / num_kv_heads) as u32;
        let plan = attention::decode_split_plan(
            forced,
            attention::SplitInputs {
                num_decode: seqs,
                kv_units: num_kv_heads * attention::decode_head_chunks(group) as usize,
                // under a window the backend plans the splits over the window's keys only
                max_ctx: attention::window_keys(context_len as u32, attention::window_param(window))
                    as usize,
                block_size,
                sms: sms as usize,
            },
        );
        Some(plan.num_splits)
    }

    /// Device bytes the variant allocates besides the case's buffers: split-KV decode's partial
    /// results (`[seqs, num_heads, splits, head_dim]` f32 accumulators and `[…, 2]` max/sum), at
    /// the most splits the variant uses (none for one split: the kernel writes the output).
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
            Variant::Naive | Variant::AutoSync | Variant::Eager | Variant::Graphs => return 0,
            Variant::AutoSplits(n) if n <= 1 => return 0,
            Variant::AutoSplits(n) => n.min(IM_DECODE_MAX_SPLITS) as usize,
            Variant::Auto => IM_DECODE_MAX_SPLITS as usize,
        };
        let (acc, ml) = attention::scratch_lens(seqs, num_heads, splits, head_dim);
        4 * (acc + ml) as u64
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<Variant> for String {
    fn from(v: Variant) -> String {
        v.name().into_owned()
    }
}

impl TryFrom<String> for Variant {
    type Error = Error;

    fn try_from(s: String) -> Result<Variant> {
        Variant::from_name(&s)
    }
}

/// Resolve `--attention` values (`naive`, `auto`, `auto-sync`, `auto-<N>split`, or `all` for naive,
/// auto, auto-sync and auto-1split), comma-separated or as several values. Sorted naive, auto,
/// auto-sync, then by split count;
/// duplicates collapse; nothing given means all.
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
        let v = Variant::from_name(name)
            .ok()
            .filter(|v| v.is_attention())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown attention variant `{name}` (variants: naive, auto, auto-sync, \
                     auto-1split, auto-<N>split for N = 1..{IM_DECODE_MAX_SPLITS}, or all)"
                ))
            })?;
        picked.push(v);
    }
    if picked.is_empty() {
        return Ok(Variant::ATTENTION.to_vec());
    }
    picked.sort_by_key(|v| v.attention_rank());
    picked.dedup();
    Ok(picked)
}

/// The cases as they run on `device`: on CUDA, each attention case becomes one case per variant of
/// `attention` (the `--attention` choice, in [`parse_list`]'s order) that applies to it, and each
/// decode step one `eager` and one `graphs` case; an attention case none of the chosen variants
/// applies to (prefill when only `auto-<N>split` variants are chosen, decode when only `auto-sync`)
/// is left out. Other ops, and
/// every case on the CPU, are kept as they are (no variant).
pub fn expand(cases: &[Case], device: Device, attention: &[Variant]) -> Vec<Case> {
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        let has_variants = Variant::ALL.iter().any(|v| v.applies_to(case.op));
        if device == Device::Cpu || !has_variants {
            out.push(case.clone());
            continue;
        }
        let chosen = attention.iter().filter(|v| v.is_attention());
        for &v in chosen.chain(Variant::STEP.iter()) {
            if v.applies_to(case.op) {
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
                    let v = c.variant.map_or("-".into(), |v| v.name());
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
                window: None,
                softcap: None,
                alibi: None,
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

    /// (op, variant) of each case [`expand`] makes on CUDA for the `--attention` value `names`.
    fn expanded_on_cuda(cases: &[Case], names: &str) -> Vec<(Op, Option<Variant>)> {
        let chosen = parse_list(&strings(&[names])).unwrap();
        expand(cases, Device::Cuda, &chosen)
            .iter()
            .map(|c| (c.op, c.variant))
            .collect()
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
            parse_list(&strings(&[
                "auto-1split,naive",
                " AUTO ",
                "auto-sync,naive"
            ]))
            .unwrap(),
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
        let splits = [
            Variant::AutoSplits(2),
            Variant::AutoSplits(IM_DECODE_MAX_SPLITS),
        ];
        for v in Variant::ALL.into_iter().chain(splits) {
            let json = serde_json::to_value(v).unwrap();
            assert_eq!(json.as_str(), Some(&*v.name()));
            assert_eq!(serde_json::from_value::<Variant>(json).unwrap(), v);
            assert_eq!(Variant::from_name(&v.name().to_uppercase()).unwrap(), v);
        }
        assert_eq!(Variant::AUTO_ONE_SPLIT.name(), "auto-1split");
        assert_eq!(Variant::AutoSplits(16).name(), "auto-16split");
        for bad in [
            "auto-0split",
            "auto-65split",
            "auto-split",
            "auto-xsplit",
            "flash2",
            "",
        ] {
            assert!(Variant::from_name(bad).is_err(), "{bad}");
            assert!(
                serde_json::from_value::<Variant>(bad.into()).is_err(),
                "{bad}"
            );
        }
        let e = Variant::from_name("auto-65split").unwrap_err().to_string();
        assert!(e.contains("65 splits") && e.contains("1 to 64"), "{e}");
    }

    #[test]
    fn forced_split_counts_parse_and_sort_after_auto() {
        assert_eq!(
            parse_list(&strings(&[
                "auto-8split,auto,auto-2split",
                "AUTO-8SPLIT",
                "naive"
            ]))
            .unwrap(),
            vec![
                Variant::Naive,
                Variant::Auto,
                Variant::AutoSplits(2),
                Variant::AutoSplits(8)
            ]
        );
        // `all` is naive, auto, auto-sync and auto-1split; more split counts can be named besides
        assert_eq!(
            parse_list(&strings(&["all,auto-4split"])).unwrap(),
            vec![
                Variant::Naive,
                Variant::Auto,
                Variant::AutoSync,
                Variant::AUTO_ONE_SPLIT,
                Variant::AutoSplits(4)
            ]
        );
        let e = parse_list(&strings(&["auto-0split"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auto-<N>split for N = 1..64"), "{e}");
        let v = Variant::AutoSplits(8);
        assert_eq!(
            v.cuda_settings(),
            Some((
                AttentionVariant::Auto,
                AutoTuning {
                    decode_splits: Some(8),
                    prefill_loads: PrefillLoads::Pipelined
                }
            ))
        );
        assert!(v.applies_to(Op::AttentionDecode) && !v.applies_to(Op::AttentionPrefill));
        // 64 sequences × 32 heads × 8 splits × (128 + 2) f32
        let decode = attention(Op::AttentionDecode, 64, 1, 16384);
        assert_eq!(v.scratch_bytes(&decode), 4 * 64 * 32 * 8 * (128 + 2));
        // the splits the rows record: the backend's own plan for the shape
        let h100 = 132;
        let want = attention::plan_decode_splits(attention::SplitInputs {
            num_decode: 64,
            kv_units: 8 * attention::decode_head_chunks(4) as usize,
            max_ctx: 16384,
            block_size: 16,
            sms: 132,
        });
        assert_eq!(
            Variant::Auto.decode_splits(&decode, h100),
            Some(want.num_splits)
        );
        assert_eq!(v.decode_splits(&decode, h100), Some(8));
        // under a 40-key window the plan is the backend's for 40 keys, whatever the context
        let mut windowed = attention(Op::AttentionDecode, 1, 1, 16384);
        if let Shape::Attention { window, .. } = &mut windowed.shape {
            *window = Some(40);
        }
        let short = attention(Op::AttentionDecode, 1, 1, 40);
        for variant in [Variant::Auto, Variant::AutoSplits(64)] {
            assert_eq!(
                variant.decode_splits(&windowed, h100),
                variant.decode_splits(&short, h100)
            );
        }
        // more splits than the context has key groups: as many as it has
        let short = attention(Op::AttentionDecode, 1, 1, 40);
        assert_eq!(
            Variant::AutoSplits(64).decode_splits(&short, h100),
            Some(attention::split_plan_for(64, 40).num_splits)
        );
        assert!(Variant::AutoSplits(64).decode_splits(&short, h100) < Some(64));
        assert_eq!(Variant::Naive.decode_splits(&decode, h100), None);
        let prefill = attention(Op::AttentionPrefill, 1, 512, 512);
        assert_eq!(Variant::Auto.decode_splits(&prefill, h100), None);
        let mut odd = decode.clone();
        if let Shape::Attention { head_dim, .. } = &mut odd.shape {
            *head_dim = 96;
        }
        assert_eq!(Variant::Auto.decode_splits(&odd, h100), None);
        // expanded in the order chosen, after the baseline; prefill gets none of them
        let cases = vec![
            attention(Op::AttentionPrefill, 1, 512, 512),
            attention(Op::AttentionDecode, 16, 1, 4096),
        ];
        assert_eq!(
            expanded_on_cuda(&cases, "auto-4split,naive,auto-2split"),
            vec![
                (Op::AttentionPrefill, Some(Variant::Naive)),
                (Op::AttentionDecode, Some(Variant::Naive)),
                (Op::AttentionDecode, Some(Variant::AutoSplits(2))),
                (Op::AttentionDecode, Some(Variant::AutoSplits(4))),
            ]
        );
    }

    #[test]
    fn one_split_is_a_decode_variant_only() {
        let defaults = AutoTuning::default();
        assert_eq!(
            Variant::AUTO_ONE_SPLIT.cuda_settings(),
            Some((
                AttentionVariant::Auto,
                AutoTuning {
                    decode_splits: Some(1),
                    ..defaults
                }
            ))
        );
        assert_eq!(
            Variant::Auto.cuda_settings(),
            Some((AttentionVariant::Auto, defaults))
        );
        assert_eq!(
            Variant::Naive.cuda_settings(),
            Some((AttentionVariant::Naive, defaults))
        );
        assert!(Variant::AUTO_ONE_SPLIT.applies_to(Op::AttentionDecode));
        assert!(!Variant::AUTO_ONE_SPLIT.applies_to(Op::AttentionPrefill));
        for v in Variant::ALL {
            assert!(!v.applies_to(Op::Matmul), "{v}");
        }
    }

    #[test]
    fn sync_loads_are_a_prefill_variant_only() {
        let v = Variant::AutoSync;
        assert_eq!(Variant::from_name(" AUTO-SYNC ").unwrap(), v);
        assert_eq!(v.name(), "auto-sync");
        assert_eq!(
            v.cuda_settings(),
            Some((
                AttentionVariant::Auto,
                AutoTuning {
                    decode_splits: None,
                    prefill_loads: PrefillLoads::Sync
                }
            ))
        );
        assert!(v.applies_to(Op::AttentionPrefill) && !v.applies_to(Op::AttentionDecode));
        let (prefill, decode) = (
            attention(Op::AttentionPrefill, 1, 512, 512),
            attention(Op::AttentionDecode, 16, 1, 4096),
        );
        assert_eq!(v.decode_splits(&decode, 132), None);
        assert_eq!(v.scratch_bytes(&decode), 0);
        // it has the flash prefill's requirements
        assert_eq!(v.unsupported_reason(&prefill, Dtype::Bf16, (9, 0)), None);
        assert!(v
            .unsupported_reason(&prefill, Dtype::F32, (9, 0))
            .is_some_and(|e| e.contains("`auto-sync`")));
        // alone it leaves decode cases out; sorted after auto
        assert_eq!(
            expanded_on_cuda(&[prefill, decode], "auto-sync,auto"),
            vec![
                (Op::AttentionPrefill, Some(Variant::Auto)),
                (Op::AttentionPrefill, Some(Variant::AutoSync)),
                (Op::AttentionDecode, Some(Variant::Auto)),
            ]
        );
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
        assert!(Variant::AUTO_ONE_SPLIT
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
        assert_eq!(Variant::AUTO_ONE_SPLIT.scratch_bytes(&decode), 0);
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
                (Op::AttentionPrefill, Some(Variant::AutoSync)),
                (Op::AttentionDecode, Some(Variant::Naive)),
                (Op::AttentionDecode, Some(Variant::Auto)),
                (Op::AttentionDecode, Some(Variant::AUTO_ONE_SPLIT)),
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
        let one = expand(&cases, Device::Cuda, &[Variant::AUTO_ONE_SPLIT]);
        let got: Vec<(Op, Option<Variant>)> = one.iter().map(|c| (c.op, c.variant)).collect();
        assert_eq!(
            got,
            vec![
                (Op::Rmsnorm, None),
                (Op::AttentionDecode, Some(Variant::AUTO_ONE_SPLIT)),
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
        let one_large = with(large.clone(), Variant::AUTO_ONE_SPLIT);
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
