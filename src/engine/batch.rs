//! Building a step's `BatchMeta` from per-sequence chunks of new tokens.

use crate::backend::BatchMeta;

/// Which logits a sequence wants from this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that does not reach the end of the prompt).
    None,
    /// The last new token's (the next token is sampled from it).
    Last,
    /// Every new token's (the `logits` command).
    All,
}

/// New tokens of one sequence in this step.
#[derive(Debug, Clone)]
pub struct SeqChunk<'a> {
    /// The new tokens, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache.
    pub start_pos: usize,
    /// Per KV group, the physical blocks of the sequence, covering at least `start_pos +
    /// tokens.len()` tokens (one table for a model whose layers all attend alike).
    pub block_tables: Vec<&'a [u32]>,
    pub logits: LogitsWanted,
}

/// Flatten chunks into one batch. Block table rows are padded to the longest table. Every chunk
/// has one table per KV group (their number is the batch's `num_kv_groups`).
///
/// # Panics
/// If the chunks disagree on the number of KV groups, or have none.
pub fn build_batch(chunks: &[SeqChunk], block_size: usize) -> BatchMeta {
    let groups = chunks.first().map_or(1, |c| c.block_tables.len());
    assert!(
        groups > 0 && chunks.iter().all(|c| c.block_tables.len() == groups),
        "every chunk needs one block table per KV group"
    );
    let max_blocks = chunks
        .iter()
        .flat_map(|c| c.block_tables.iter().map(|t| t.len()))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut m = BatchMeta {
        max_blocks_per_seq: max_blocks,
        num_kv_groups: groups,
        query_start_loc: vec![0],
        ..Default::default()
    };
    for c in chunks {
        let row0 = m.token_ids.len();
        for (i, &tok) in c.tokens.iter().enumerate() {
            m.token_ids.push(tok);
            m.positions.push((c.start_pos + i) as u32);
        }
        let row1 = m.token_ids.len();
        m.query_start_loc.push(row1 as u32);
        m.seq_lens.push((c.start_pos + c.tokens.len()) as u32);
        match c.logits {
            LogitsWanted::None => {}
            LogitsWanted::Last if row1 > row0 => m.logits_indices.push(row1 as u32 - 1),
            LogitsWanted::Last => {}
            LogitsWanted::All => m.logits_indices.extend(row0 as u32..row1 as u32),
        }
    }
    // [num_kv_groups, num_tokens] slots and [num_kv_groups, num_seqs, max_blocks] tables
    for g in 0..groups {
        for c in chunks {
            let table = c.block_tables[g];
            let slots = (c.start_pos..c.start_pos + c.tokens.len())
                .map(|pos| table[pos / block_size] * block_size as u32 + (pos % block_size) as u32);
            m.slot_mapping.extend(slots);
        }
        for c in chunks {
            let table = c.block_tables[g];
            m.block_tables.extend_from_slice(table);
            m.block_tables
                .extend(std::iter::repeat_n(0, max_blocks - table.len()));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_gets_its_slots_and_tables() {
        // two sequences, two groups; group 1's first entry released (u32::MAX)
        let (a0, a1) = (vec![0u32, 1], vec![u32::MAX, 5]);
        let (b0, b1) = (vec![2u32], vec![6u32]);
        let m = build_batch(
            &[
                SeqChunk {
                    tokens: &[7, 8],
                    start_pos: 4,
                    block_tables: vec![&a0, &a1],
                    logits: LogitsWanted::Last,
                },
                SeqChunk {
                    tokens: &[9],
                    start_pos: 1,
                    block_tables: vec![&b0, &b1],
                    logits: LogitsWanted::All,
                },
            ],
            4,
        );
        assert_eq!(m.num_kv_groups, 2);
        assert_eq!(m.positions, vec![4, 5, 1]);
        // group 0: positions 4, 5 in block 1, position 1 in block 2; group 1: blocks 5 and 6
        assert_eq!(m.slot_mapping_of(0), &[4, 5, 9]);
        assert_eq!(m.slot_mapping_of(1), &[20, 21, 25]);
        assert_eq!(m.block_table(0, 1), &[2, 0]);
        assert_eq!(m.block_table(1, 0), &[u32::MAX, 5]);
        assert_eq!(m.logits_indices, vec![1, 2]);
        let geom = crate::backend::KvGeometry {
            num_blocks: 7,
            block_size: 4,
            num_kv_heads: 1,
            head_dim: 2,
        };
        assert_eq!(m.validate(&geom), Ok(()));
        // a slot written into group 1's released block is refused, naming the group
        let mut bad = m.clone();
        bad.slot_mapping[3] = 1;
        assert!(bad.validate(&geom).unwrap_err().starts_with("KV group 1, "));
    }
}
