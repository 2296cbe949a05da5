//! Paged KV cache, host side: which physical blocks each request owns.
//!
//! The K/V tensors live elsewhere (`model::forward::KvCache`, per layer
//! `[num_blocks, block_size, num_kv_heads, head_dim]`); this module only does the accounting.
//!
//! - **Block pool** ([`block_pool::BlockPool`]): `num_blocks` fixed-size blocks of `block_size` token
//!   slots, each with a reference count. Blocks at refcount 0 sit in one LRU free list (take from the
//!   head, release to the tail).
//! - **Block tables** ([`KvCacheManager::block_table`]): per request, its blocks in sequence order; token
//!   `t` of the request lives in slot `t % block_size` of block `table[t / block_size]`.
//! - **Prefix caching** ([`prefix_hash`]): a full block whose tokens are computed gets a chain hash
//!   `H(parent hash, its tokens)` and is indexed hash → block. A new request whose leading full blocks
//!   match takes those blocks (refcount + 1) instead of recomputing them. Cached blocks store their
//!   tokens and parent entry, so a hash collision can never make different prefixes share a block.
//! - **Refcounts and eviction**: a block shared by several requests is freed only when the last one
//!   releases it. A freed cached block stays findable in the free list until it reaches the head and is
//!   taken for other content (an eviction, LRU order). Requests free their blocks tail first, so a
//!   sequence's end is evicted before its (more shareable) prefix.
//! - **Attention window** ([`KvCacheManager::with_window`]): when every layer of the model attends
//!   only to the last `w` positions (Mistral v0.1, Phi-3 mini: sliding-window attention on all
//!   layers), a block whose positions all lie before the window of the request's next query can
//!   never be read again. It is released (refcount − 1; a cached one stays findable) and its table
//!   entry becomes [`RELEASED_BLOCK`], so a long sequence holds about `w / block_size + 2` blocks
//!   instead of one per `block_size` tokens. Models with any full-attention layer (Gemma 2/3's
//!   hybrids) keep every block.
//! - **Ghosts**: released early, a windowed request's leading blocks are evicted first, while the
//!   blocks its window read stay cached. An evicted entry that cached entries were chained from stays
//!   as a ghost (chain hash, parent entry and tokens, no block), so a new request's prefix is still
//!   verified token by token from the root; under a window it needs cached blocks only from its
//!   first query's window on, and a long shared prefix whose early blocks are gone still hits
//!   (vLLM's sliding-window manager finds such hits by hash alone). A ghost computed again is
//!   revived; ghosts go with their last descendant and number at most one per block.

pub mod block_pool;
pub mod manager;
pub mod prefix_hash;

pub use manager::{KvCacheManager, KvError, KvStats};

/// Index of a physical KV block (`0..num_blocks`).
pub type BlockId = u32;
/// The table entry of a block released because it left the attention window. Never a pool index:
/// attention reads no key before a query's window, and a read of this entry would fall outside the
/// pool (the CPU backend panics, `BatchMeta::validate` refuses a slot mapped into it).
pub const RELEASED_BLOCK: BlockId = BlockId::MAX;
/// The longest request (prompt + outputs, in tokens) that can run alone in a pool of `num_blocks`
/// blocks, each step adding at most `max_chunk` tokens: the whole pool, or under an attention window
/// `w` that every layer keeps to, any length once the pool holds the blocks a request needs at a
/// time — ⌈(w − 1 + max_chunk) / block_size⌉ + 1: its next chunk plus the window before it, one
/// block more where they straddle a boundary (vLLM sizes a sliding-window layer so) —
/// `usize::MAX`: the model's context is then the only limit.
pub fn max_request_tokens(
    num_blocks: usize,
    block_size: usize,
    window: Option<usize>,
    max_chunk: usize,
) -> usize {
    let whole_pool = num_blocks.saturating_mul(block_size);
    match window {
        Some(w) if (w.saturating_sub(1) + max_chunk).div_ceil(block_size.max(1)) < num_blocks => {
            usize::MAX
        }
        _ => whole_pool,
    }
}

/// Identity of a request, chosen by the scheduler.
pub type RequestId = u64;

#[cfg(test)]
mod tests {
    use super::max_request_tokens;

    #[test]
    fn the_longest_request_a_pool_runs_alone() {
        // 10 blocks of 4: 40 tokens without a window
        assert_eq!(max_request_tokens(10, 4, None, 16), 40);
        // a window of 9 with chunks of 16: ⌈24 / 4⌉ + 1 = 7 blocks at a time fit, any length runs
        assert_eq!(max_request_tokens(10, 4, Some(9), 16), usize::MAX);
        // the window and a chunk need ⌈(20 + 16) / 4⌉ + 1 = 10 blocks: still fits, at the edge
        assert_eq!(max_request_tokens(10, 4, Some(21), 16), usize::MAX);
        // one more key and they do not: back to the whole pool
        assert_eq!(max_request_tokens(10, 4, Some(22), 16), 40);
    }
}
