//! Workloads: what requests to send and when.
//!
//! - [`dist`]: length distributions for prompts and outputs (`128`, `uniform:1:512`, `normal:…`,
//!   `exp:…`).
//! - [`arrival`]: arrival processes (`constant`, `poisson`, `gamma:B`, `burst`) turned into absolute
//!   send instants computed before the run, so that a sender falling behind shows up as client queueing
//!   rather than a silently stretched schedule.
//! - [`file`](mod@file): JSONL workload files, one request per line, so any target (the reference engine, an
//!   HTTP server, another framework) can be driven by the same requests.
//! - [`random_prompt_ids`]: synthetic prompts of a given length.
//! - [`dataset`]: ShareGPT conversations and prompt files; [`profile`]: named workload profiles
//!   (`chat`, `code-generation`, `classification`, `fixed-length`); [`session`]: the single- and
//!   multi-turn sessions `infermeter load` sends, built from any of these sources.

pub mod arrival;
pub mod dataset;
pub mod dist;
pub mod file;
pub mod profile;
pub mod session;

pub use arrival::{send_offsets, Arrival};
pub use dist::LengthDist;
pub use file::{read_jsonl, write_jsonl, WorkloadRequest};

/// A synthetic prompt of `len` token ids drawn uniformly from `0..vocab`.
///
/// Like vLLM's random dataset, this may draw special ids (BOS, EOS, padding, …): the prompt is meant
/// to have a known length, not to be meaningful text. Ids above `u32::MAX` cannot be drawn (`vocab`
/// is capped there); `vocab == 0` has no ids to draw and gives an empty prompt, which callers should
/// treat as a configuration error.
pub fn random_prompt_ids(len: usize, vocab: usize, rng: &mut impl rand::Rng) -> Vec<u32> {
    let hi = u32::try_from(vocab).unwrap_or(u32::MAX);
    if hi == 0 {
        return Vec::new();
    }
    (0..len).map(|_| rng.random_range(0..hi)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn random_prompt_ids_have_the_length_and_range_asked() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let ids = random_prompt_ids(10_000, 50, &mut rng);
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|&i| i < 50));
        // Uniform: both ends get drawn.
        assert!(ids.contains(&0) && ids.contains(&49));
    }

    #[test]
    fn random_prompt_ids_are_deterministic_for_a_seed() {
        let draw = |seed| random_prompt_ids(64, 32_000, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn random_prompt_ids_edge_cases() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(random_prompt_ids(0, 100, &mut rng).is_empty());
        assert!(random_prompt_ids(5, 0, &mut rng).is_empty());
        assert_eq!(random_prompt_ids(3, 1, &mut rng), vec![0, 0, 0]);
    }
}
