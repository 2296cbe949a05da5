//! Sampling from logits: greedy, temperature, top-k, top-p, with a seeded RNG per request so runs are
//! reproducible.
//!
//! A pick is split in two: the request's [`Sampler`] draws the row's uniform number from its RNG
//! ([`Sampler::draw`]: one draw per non-greedy pick, none for greedy), and [`pick`] turns logits,
//! parameters and that number into a token. The engine hands the draws to the model, which picks on
//! the device where the backend can (CUDA's `sample_rows`, the same algorithm with exact weights;
//! `Backend::pick_tokens`) and with [`pick`] on the host otherwise, so a seed gives the same RNG
//! stream wherever the tokens are picked.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::Invalid(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// A request's sampler: its parameters and its own RNG stream.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
        }
    }

    /// Pick the next token from `logits` [vocab]: [`Sampler::draw`], then [`pick`].
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let draw = self.draw();
        pick(logits, &draw)
    }

    /// The next pick's parameters and uniform number (drawn from the request's RNG unless the
    /// request is greedy, which draws none).
    pub fn draw(&mut self) -> TokenDraw {
        let p = &self.params;
        TokenDraw {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            uniform: if p.is_greedy() {
                0.0
            } else {
                self.rng.random()
            },
        }
    }
}

/// How to pick one token from a row of logits: the request's sampling parameters and the uniform
/// number in [0, 1) drawn for this pick (unused when greedy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenDraw {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    pub uniform: f32,
}

impl TokenDraw {
    /// The greedy pick (argmax).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            uniform: 0.0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// A token a row may not pick (its logit counts as -inf): the end-of-sequence tokens of a request
/// that has not reached its `min_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBan {
    /// The row of the step's logits.
    pub row: u32,
    pub token: u32,
}

/// Pick one token per row of `logits` [draws.len(), vocab] on the host: the `bans` set to -inf
/// first, then [`pick`] with the row's draw.
pub fn pick_rows(
    logits: &mut [f32],
    vocab: usize,
    draws: &[TokenDraw],
    bans: &[TokenBan],
) -> Vec<u32> {
    for ban in bans {
        let i = ban.row as usize * vocab + ban.token as usize;
        if (ban.token as usize) < vocab {
            if let Some(l) = logits.get_mut(i) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    logits
        .chunks(vocab.max(1))
        .zip(draws)
        .map(|(row, draw)| pick(row, draw))
        .collect()
}

/// The token `draw` picks from `logits` [vocab], on the host: greedy is the argmax (first on
/// ties); otherwise inverse-CDF sampling with `draw.uniform` over the tokens left by temperature,
/// top-k and top-p, most likely first. The reference of the device sampler (sampling.cu).
pub fn pick(logits: &[f32], draw: &TokenDraw) -> u32 {
    if draw.is_greedy() {
        return argmax(logits);
    }
    let probs = kept_weights(logits, draw);
    let total: f32 = probs.iter().map(|&(_, p)| p).sum();
    let mut acc = 0.0;
    for &(id, p) in &probs {
        acc += p / total;
        if draw.uniform < acc {
            return id;
        }
    }
    // the f32 running sum can end a little below 1: a draw above it takes the last token that
    // has weight — never a weightless one (a banned, -inf token sorts last), as on the device
    probs
        .iter()
        .rev()
        .find(|&&(_, p)| p > 0.0)
        .or(probs.last())
        .map_or(0, |&(id, _)| id)
}

/// The tokens a non-greedy `p` may draw from `logits` (after temperature, top-k and top-p), most
/// likely first, each with its unnormalised probability: what [`pick`] inverts the CDF of.
pub fn kept_weights(logits: &[f32], p: &TokenDraw) -> Vec<(u32, f32)> {
    let mut cands: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / p.temperature))
        .collect();
    // Descending by logit; ties by token id, so the order is deterministic.
    cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 && p.top_k < cands.len() {
        cands.truncate(p.top_k);
    }
    let max = cands[0].1;
    for c in cands.iter_mut() {
        c.1 = (c.1 - max).exp();
    }
    if p.top_p < 1.0 {
        let total: f32 = cands.iter().map(|c| c.1).sum();
        let mut acc = 0.0;
        let mut keep = cands.len();
        for (i, c) in cands.iter().enumerate() {
            acc += c.1 / total;
            if acc >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        cands.truncate(keep);
    }
    cands
}

/// Index of the largest logit; the first one on ties (as torch.argmax). NaNs never win, and a
/// row of only -inf and NaN gives 0 (as sampling.cu's argmax_rows).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i, l);
        }
    }
    best.0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
        // NaNs never win, wherever they are (as the device's argmax_rows)
        assert_eq!(argmax(&[f32::NAN, 1.0, 2.0]), 2);
        assert_eq!(argmax(&[1.0, f32::NAN, 2.0, f32::NAN]), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, 1.0, 1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn draws_use_the_rng_only_when_sampling() {
        // greedy draws nothing: its sampler's stream is untouched
        let mut g = Sampler::new(params(0.0, 0, 1.0, 5));
        assert_eq!(g.draw(), TokenDraw::greedy());
        // a draw then a pick is exactly `sample`
        let logits: Vec<f32> = (0..40).map(|i| (i as f32 * 0.61).cos() * 3.0).collect();
        let (mut a, mut b) = (
            Sampler::new(params(0.8, 10, 0.9, 11)),
            Sampler::new(params(0.8, 10, 0.9, 11)),
        );
        for _ in 0..50 {
            let d = a.draw();
            assert!((0.0..1.0).contains(&d.uniform));
            assert_eq!((d.temperature, d.top_k, d.top_p), (0.8, 10, 0.9));
            assert_eq!(pick(&logits, &d), b.sample(&logits));
        }
    }

    #[test]
    fn rows_are_picked_with_their_draws_and_bans() {
        let vocab = 4;
        // row 0 prefers token 3, row 1 token 0
        let mut logits = vec![0.0, 1.0, 2.0, 5.0, 9.0, 1.0, 2.0, 3.0];
        let draws = [TokenDraw::greedy(); 2];
        assert_eq!(pick_rows(&mut logits.clone(), vocab, &draws, &[]), [3, 0]);
        // banning row 0's best leaves its second; out-of-range bans are ignored
        let bans = [
            TokenBan { row: 0, token: 3 },
            TokenBan { row: 1, token: 7 },
            TokenBan { row: 5, token: 0 },
        ];
        assert_eq!(pick_rows(&mut logits, vocab, &draws, &bans), [2, 0]);
        assert_eq!(logits[3], f32::NEG_INFINITY);
        // a sampling draw: uniform 0 takes the most likely token, just below 1 the least likely
        let mut row = vec![0.0, 1.0, 2.0, 5.0];
        let mut d = TokenDraw {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            uniform: 0.0,
        };
        assert_eq!(pick_rows(&mut row.clone(), 4, &[d], &[]), [3]);
        d.uniform = 0.999_999;
        assert_eq!(pick_rows(&mut row.clone(), 4, &[d], &[]), [0]);
        // past the running sum's end (it can fall short of 1): the last token with weight, not a
        // banned one
        d.uniform = 1.0;
        assert_eq!(pick_rows(&mut row.clone(), 4, &[d], &[]), [0]);
        let ban = [TokenBan { row: 0, token: 0 }];
        assert_eq!(pick_rows(&mut row, 4, &[d], &ban), [1]);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, seed));
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_restrict_support() {
        let logits = [5.0f32, 4.0, 3.0, -10.0, -10.0];
        let mut s = Sampler::new(params(1.0, 2, 1.0, 1));
        for _ in 0..200 {
            assert!(s.sample(&logits) < 2);
        }
        // p(0) ≈ 0.665, p(0)+p(1) ≈ 0.91: top_p 0.5 keeps only token 0
        let mut s = Sampler::new(params(1.0, 0, 0.5, 1));
        for _ in 0..200 {
            assert_eq!(s.sample(&logits), 0);
        }
    }

    #[test]
    fn frequencies_follow_softmax() {
        let logits = [0.0f32, (2.0f32).ln()]; // probabilities 1/3, 2/3
        let mut s = Sampler::new(params(1.0, 0, 1.0, 3));
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 2.0 / 3.0).abs() < 0.02, "{frac}");
    }

    #[test]
    fn invalid_params_are_rejected() {
        assert!(params(-1.0, 0, 1.0, 0).validate().is_err());
        assert!(params(1.0, 0, 0.0, 0).validate().is_err());
        assert!(params(f32::NAN, 0, 1.0, 0).validate().is_err());
        assert!(params(0.7, 40, 0.9, 0).validate().is_ok());
    }
}
