//! Mixture-of-experts routing: which experts each token of a MoE layer goes to, with what weight,
//! and the same choices grouped by expert — the plan [`super::Backend::moe_experts`] runs.
//!
//! Routing happens on the host, from the router's logits downloaded in the compute dtype: softmax
//! in f32, the `top_k` largest probabilities (ties to the lower expert id, as a stable sort),
//! divided by their sum under `renormalize` — what transformers' Mixtral, Qwen3-MoE and OLMoE
//! routers compute from the same logits. The backends then run each expert once over the tokens
//! routed to it (one GEMM pair per expert with tokens), which needs the per-expert token counts on
//! the host anyway: a GPU GEMM's shape is set at launch.
//!
//! ```text
//! experts, weights: [num_tokens, top_k]  choice a = t · top_k + j, token-major
//! by_expert:        [num_tokens · top_k] the choices a, ordered by expert, by token within one
//! expert_starts:    [num_experts + 1]    expert e's choices: by_expert[starts[e] .. starts[e + 1]]
//! slot_of:          [num_tokens · top_k] where choice a sits in by_expert (the inverse order)
//! ```

use crate::error::{Error, Result};

/// One MoE layer's routing of one step ([module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeRouting {
    pub num_tokens: usize,
    pub top_k: usize,
    pub num_experts: usize,
    /// [num_tokens, top_k] the chosen experts, most probable first
    pub experts: Vec<u32>,
    /// [num_tokens, top_k] their weights
    pub weights: Vec<f32>,
    /// [num_tokens · top_k] the choices ordered by expert
    pub by_expert: Vec<u32>,
    /// [num_experts + 1] each expert's run in `by_expert`
    pub expert_starts: Vec<u32>,
    /// [num_tokens · top_k] the position of each choice in `by_expert`
    pub slot_of: Vec<u32>,
}

impl MoeRouting {
    /// Route `num_tokens` tokens from the router's `logits` [num_tokens, num_experts].
    pub fn route(
        logits: &[f32],
        num_tokens: usize,
        num_experts: usize,
        top_k: usize,
        renormalize: bool,
    ) -> Result<Self> {
        if num_experts == 0 || top_k == 0 || top_k > num_experts {
            return Err(Error::Invalid(format!(
                "MoE routing: top {top_k} of {num_experts} experts"
            )));
        }
        if logits.len() < num_tokens * num_experts {
            return Err(Error::Invalid(format!(
                "MoE routing: {} router logits for {num_tokens} tokens of {num_experts} experts",
                logits.len()
            )));
        }
        let mut experts = Vec::with_capacity(num_tokens * top_k);
        let mut weights = Vec::with_capacity(num_tokens * top_k);
        let mut order: Vec<u32> = Vec::with_capacity(num_experts);
        let mut probs = vec![0.0f32; num_experts];
        for row in logits.chunks_exact(num_experts).take(num_tokens) {
            softmax_into(row, &mut probs);
            order.clear();
            order.extend(0..num_experts as u32);
            // descending probability, the lower id first on ties (a stable sort); a NaN logit
            // makes every probability of its row NaN, which then all tie
            order.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
            let chosen = &order[..top_k];
            let sum: f32 = chosen.iter().map(|&e| probs[e as usize]).sum();
            for &e in chosen {
                let p = probs[e as usize];
                experts.push(e);
                weights.push(if renormalize { p / sum } else { p });
            }
        }
        Ok(Self::from_choices(
            num_tokens,
            top_k,
            num_experts,
            experts,
            weights,
        ))
    }

    /// The plan of given choices (`experts`, `weights`: [num_tokens, top_k], every expert id
    /// below `num_experts`): grouped by expert, by token within an expert.
    pub fn from_choices(
        num_tokens: usize,
        top_k: usize,
        num_experts: usize,
        experts: Vec<u32>,
        weights: Vec<f32>,
    ) -> Self {
        let mut counts = vec![0u32; num_experts + 1];
        for &e in &experts {
            counts[e as usize + 1] += 1;
        }
        let mut expert_starts = counts;
        for e in 0..num_experts {
            expert_starts[e + 1] += expert_starts[e];
        }
        let mut next = expert_starts.clone();
        let mut by_expert = vec![0u32; experts.len()];
        let mut slot_of = vec![0u32; experts.len()];
        for (a, &e) in experts.iter().enumerate() {
            let slot = next[e as usize];
            next[e as usize] += 1;
            by_expert[slot as usize] = a as u32;
            slot_of[a] = slot;
        }
        Self {
            num_tokens,
            top_k,
            num_experts,
            experts,
            weights,
            by_expert,
            expert_starts,
            slot_of,
        }
    }

    /// Choices in all: num_tokens · top_k.
    pub fn num_choices(&self) -> usize {
        self.num_tokens * self.top_k
    }

    /// Expert e's choices run by_expert[range].
    pub fn expert_range(&self, e: usize) -> std::ops::Range<usize> {
        self.expert_starts[e] as usize..self.expert_starts[e + 1] as usize
    }

    /// The token of each choice in expert order: the rows a backend gathers.
    pub fn gather_rows(&self) -> Vec<u32> {
        let k = self.top_k as u32;
        self.by_expert.iter().map(|&a| a / k).collect()
    }

    /// The error for a plan that does not hold together (`backend` names the backend in it):
    /// array lengths, expert ids, the grouping. Both backends check before running it.
    pub fn check(&self, backend: &'static str) -> Result<()> {
        let bad = |msg: String| Error::Backend { backend, msg };
        let a = self.num_choices();
        if self.experts.len() != a
            || self.weights.len() != a
            || self.by_expert.len() != a
            || self.slot_of.len() != a
            || self.expert_starts.len() != self.num_experts + 1
        {
            return Err(bad(format!(
                "MoE routing of {} tokens × top {}: arrays of the wrong length",
                self.num_tokens, self.top_k
            )));
        }
        if let Some(e) = self
            .experts
            .iter()
            .find(|&&e| e as usize >= self.num_experts)
        {
            return Err(bad(format!(
                "MoE routing: expert {e} of {}",
                self.num_experts
            )));
        }
        let grouped = (0..self.num_experts).all(|e| {
            let r = self.expert_range(e);
            r.start <= r.end
                && r.end <= a
                && r.clone().all(|i| {
                    let c = self.by_expert[i] as usize;
                    c < a && self.experts[c] as usize == e && self.slot_of[c] as usize == i
                })
        });
        if !grouped || self.expert_starts[self.num_experts] as usize != a {
            return Err(bad(
                "MoE routing: by_expert does not group the choices".into()
            ));
        }
        Ok(())
    }
}

impl MoeRouting {
    /// [`check`](Self::check), then the lengths of `Backend::moe_experts`' buffers — `lens`: out,
    /// x, gate_up, down; `scratch`: rows, gate_up, act, out (`MoeScratch`) — against the plan.
    pub fn check_buffers(
        &self,
        backend: &'static str,
        lens: [usize; 4],
        scratch: [usize; 4],
        hidden: usize,
        inter: usize,
    ) -> Result<()> {
        self.check(backend)?;
        let (t, c, e) = (self.num_tokens, self.num_choices(), self.num_experts);
        let need = [
            (lens[0], t * hidden, "out"),
            (lens[1], t * hidden, "x"),
            (lens[2], e * 2 * inter * hidden, "gate_up"),
            (lens[3], e * hidden * inter, "down"),
            (scratch[0], c * hidden, "scratch.rows"),
            (scratch[1], c * 2 * inter, "scratch.gate_up"),
            (scratch[2], c * inter, "scratch.act"),
            (scratch[3], c * hidden, "scratch.out"),
        ];
        for (have, need, name) in need {
            super::check_len(backend, have, need, name)?;
        }
        Ok(())
    }
}

/// out = softmax(x) in f32 (max subtracted first).
fn softmax_into(x: &[f32], out: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_the_most_probable_experts_and_groups_by_expert() {
        // 3 tokens, 4 experts, top 2
        let logits = [
            0.0, 2.0, 1.0, -1.0, // experts 1, 2
            3.0, 0.0, 0.0, 3.5, // experts 3, 0
            1.0, 1.0, 1.0, 1.0, // a tie: the lower ids, 0 and 1
        ];
        let r = MoeRouting::route(&logits, 3, 4, 2, false).unwrap();
        assert_eq!(r.experts, vec![1, 2, 3, 0, 0, 1]);
        let p = |row: &[f32], e: usize| {
            let s: f32 = row.iter().map(|v| v.exp()).sum();
            row[e].exp() / s
        };
        assert!((r.weights[0] - p(&logits[0..4], 1)).abs() < 1e-6);
        assert!((r.weights[5] - 0.25).abs() < 1e-6);
        // expert 0: choices 3 (token 1) and 4 (token 2); 1: 0 and 5; 2: 1; 3: 2
        assert_eq!(r.expert_starts, vec![0, 2, 4, 5, 6]);
        assert_eq!(r.by_expert, vec![3, 4, 0, 5, 1, 2]);
        assert_eq!(r.gather_rows(), vec![1, 2, 0, 2, 0, 1]);
        for (a, &slot) in r.slot_of.iter().enumerate() {
            assert_eq!(r.by_expert[slot as usize] as usize, a);
        }
        r.check("test").unwrap();
        let n = MoeRouting::route(&logits, 3, 4, 2, true).unwrap();
        for t in 0..3 {
            assert!((n.weights[2 * t] + n.weights[2 * t + 1] - 1.0).abs() < 1e-6);
        }
        assert_eq!(n.experts, r.experts);
    }

    #[test]
    fn bad_plans_and_arguments_are_refused() {
        assert!(MoeRouting::route(&[0.0; 8], 2, 4, 5, true).is_err());
        assert!(MoeRouting::route(&[0.0; 7], 2, 4, 1, true).is_err());
        let mut r = MoeRouting::route(&[0.0, 1.0, 2.0, 3.0], 1, 4, 2, true).unwrap();
        r.by_expert.swap(0, 1);
        assert!(r.check("test").unwrap_err().to_string().contains("group"));
        let mut r = MoeRouting::route(&[0.0, 1.0, 2.0, 3.0], 1, 4, 2, true).unwrap();
        r.experts[0] = 9;
        assert!(r
            .check("test")
            .unwrap_err()
            .to_string()
            .contains("expert 9"));
    }
}
