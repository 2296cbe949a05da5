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
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// The new tokens, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache.
    pub start_pos: usize,
    /// Physical blocks of the sequence, covering at least `start_pos + tokens.len()` tokens.
    pub block_table: &'a [u32],
    pub logits: LogitsWanted,
}

/// Flatten chunks into one batch. Block table rows are padded to the longest table.
pub fn build_batch(chunks: &[SeqChunk], block_size: usize) -> BatchMeta {
    let max_blocks = chunks
        .iter()
        .map(|c| c.block_table.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut m = BatchMeta {
        max_blocks_per_seq: max_blocks,
        query_start_loc: vec![0],
        ..Default::default()
    };
    for c in chunks {
        let row0 = m.token_ids.len();
        for (i, &tok) in c.tokens.iter().enumerate() {
            let pos = c.start_pos + i;
            m.token_ids.push(tok);
            m.positions.push(pos as u32);
            m.slot_mapping.push(
                c.block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32,
            );
        }
        let row1 = m.token_ids.len();
        m.query_start_loc.push(row1 as u32);
        m.seq_lens.push((c.start_pos + c.tokens.len()) as u32);
        m.block_tables.extend_from_slice(c.block_table);
        m.block_tables
            .extend(std::iter::repeat_n(0, max_blocks - c.block_table.len()));
        match c.logits {
            LogitsWanted::None => {}
            LogitsWanted::Last if row1 > row0 => m.logits_indices.push(row1 as u32 - 1),
            LogitsWanted::Last => {}
            LogitsWanted::All => m.logits_indices.extend(row0 as u32..row1 as u32),
        }
    }
    m
}
