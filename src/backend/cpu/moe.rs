//! The mixture-of-experts MLP (`Backend::moe_experts`): each expert runs once over the rows routed
//! to it, in the order the CUDA backend runs them, so a reduced-precision emulation can round at
//! the same points (`round`).
//!
//! ```text
//! x [num_tokens, hidden] --gather by_expert--> rows [c, hidden]        c = num_tokens · top_k
//! per expert e, its run r:  gate_up[r] = rows[r] · gate_upₑᵀ           [n_e, 2 · inter]
//! act = silu(gate) ⊙ up                                                [c, inter]
//! per expert e:             expert_out[r] = act[r] · downₑᵀ            [n_e, hidden]
//! out[t] = Σ_j weights[t, j] · expert_out[slot_of[t · top_k + j]]      [num_tokens, hidden]
//! ```
//!
//! The weighted sum runs in f32 over j in order, one rounding at the end.

use super::{activation, matmul};
use crate::backend::{MoeRouting, MoeScratch};

/// `out = moe(x)` as the module docs lay out, calling `round` on each intermediate the CUDA
/// backend stores in its compute dtype (a no-op for the f32 reference). Lengths are the caller's
/// to check ([`super::CpuBackend`]'s `moe_experts`).
#[allow(clippy::too_many_arguments)]
pub fn moe_experts(
    out: &mut [f32],
    x: &[f32],
    gate_up: &[f32],
    down: &[f32],
    routing: &MoeRouting,
    scratch: &mut MoeScratch<Vec<f32>>,
    hidden: usize,
    inter: usize,
    round: &dyn Fn(&mut [f32]),
) {
    let (h, c, k) = (hidden, routing.num_choices(), routing.top_k);
    for (i, &t) in routing.gather_rows().iter().enumerate() {
        let t = t as usize;
        scratch.rows[i * h..(i + 1) * h].copy_from_slice(&x[t * h..(t + 1) * h]);
    }
    let per_expert = |e: usize, rows: usize, cols: usize| e * rows * cols..(e + 1) * rows * cols;
    for e in 0..routing.num_experts {
        let r = routing.expert_range(e);
        if r.is_empty() {
            continue;
        }
        matmul::linear(
            &mut scratch.gate_up[r.start * 2 * inter..r.end * 2 * inter],
            &scratch.rows[r.start * h..r.end * h],
            &gate_up[per_expert(e, 2 * inter, h)],
            None,
            r.len(),
            2 * inter,
            h,
        );
    }
    round(&mut scratch.gate_up[..c * 2 * inter]);
    activation::silu_mul(&mut scratch.act, &scratch.gate_up, c, inter);
    round(&mut scratch.act[..c * inter]);
    for e in 0..routing.num_experts {
        let r = routing.expert_range(e);
        if r.is_empty() {
            continue;
        }
        matmul::linear(
            &mut scratch.out[r.start * h..r.end * h],
            &scratch.act[r.start * inter..r.end * inter],
            &down[per_expert(e, h, inter)],
            None,
            r.len(),
            h,
            inter,
        );
    }
    round(&mut scratch.out[..c * h]);
    for t in 0..routing.num_tokens {
        let row = &mut out[t * h..(t + 1) * h];
        row.fill(0.0);
        for j in 0..k {
            let a = t * k + j;
            let w = routing.weights[a];
            let slot = routing.slot_of[a] as usize;
            let y = &scratch.out[slot * h..(slot + 1) * h];
            for (o, &v) in row.iter_mut().zip(y) {
                *o += w * v;
            }
        }
    }
    round(&mut out[..routing.num_tokens * h]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token through each expert by hand: down · (silu(gate · x) ⊙ (up · x)).
    fn expert_by_hand(
        x: &[f32],
        gate_up: &[f32],
        down: &[f32],
        e: usize,
        h: usize,
        i: usize,
    ) -> Vec<f32> {
        let gu = &gate_up[e * 2 * i * h..(e + 1) * 2 * i * h];
        let dn = &down[e * h * i..(e + 1) * h * i];
        let dot = |w: &[f32]| w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        let act: Vec<f32> = (0..i)
            .map(|j| {
                let g = dot(&gu[j * h..(j + 1) * h]);
                let u = dot(&gu[(i + j) * h..(i + j + 1) * h]);
                g / (1.0 + (-g).exp()) * u
            })
            .collect();
        (0..h)
            .map(|r| {
                dn[r * i..(r + 1) * i]
                    .iter()
                    .zip(&act)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn equals_the_weighted_sum_of_each_tokens_experts() {
        let (tokens, h, inter, experts, k) = (5, 6, 4, 3, 2);
        let val = |n: usize, salt: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7 + salt * 13) % 17) as f32 - 8.0) / 9.0)
                .collect()
        };
        let x = val(tokens * h, 1);
        let gate_up = val(experts * 2 * inter * h, 2);
        let down = val(experts * h * inter, 3);
        let logits = val(tokens * experts, 4);
        let routing = MoeRouting::route(&logits, tokens, experts, k, true).unwrap();
        let c = tokens * k;
        let mut scratch = MoeScratch {
            rows: vec![0.0; c * h],
            gate_up: vec![0.0; c * 2 * inter],
            act: vec![0.0; c * inter],
            out: vec![0.0; c * h],
        };
        let mut out = vec![f32::NAN; tokens * h];
        moe_experts(
            &mut out,
            &x,
            &gate_up,
            &down,
            &routing,
            &mut scratch,
            h,
            inter,
            &|_| {},
        );
        for t in 0..tokens {
            let mut want = vec![0.0f32; h];
            for j in 0..k {
                let e = routing.experts[t * k + j] as usize;
                let y = expert_by_hand(&x[t * h..(t + 1) * h], &gate_up, &down, e, h, inter);
                for (w, v) in want.iter_mut().zip(y) {
                    *w += routing.weights[t * k + j] * v;
                }
            }
            for (c, (&got, &want)) in out[t * h..(t + 1) * h].iter().zip(&want).enumerate() {
                assert!(
                    (got - want).abs() < 1e-5,
                    "token {t} col {c}: {got} vs {want}"
                );
            }
        }
    }
}
