//! Paged KV cache, host side: which physical blocks each request owns.
//!
//! The K/V tensors live elsewhere (`model::forward::KvCache`, per slot of the [`KvLayout`]
//! `[num_blocks, block_size, num_kv_heads, head_dim]`); this module only does the accounting.
//!
//! - **Block pool** ([`block_pool::BlockPool`]): `num_blocks` fixed-size blocks of `block_size` token
//!   slots, each with a reference count. Blocks at refcount 0 sit in one LRU free list (take from the
//!   head, release to the tail).
//! - **Block tables** ([`KvCacheManager::block_table`]): per request and KV group, its blocks in sequence order; token
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
//!   instead of one per `block_size` tokens.
//! - **KV groups** ([`layout`], [`KvCacheManager::with_groups`]): a hybrid model (Gemma 2/3:
//!   sliding layers and full-attention layers) splits its layers into groups of one kind and equal
//!   size; a request holds one table per group from the one pool, and each group releases by its
//!   own window, so the sliding layers' memory stays bounded while the full layers keep every
//!   block (vLLM's hybrid allocator).
//! - **Ghosts**: released early, a windowed request's leading blocks are evicted first, while the
//!   blocks its window read stay cached. An evicted entry that cached entries were chained from stays
//!   as a ghost (chain hash, parent entry and tokens, no block), so a new request's prefix is still
//!   verified token by token from the root; under a window it needs cached blocks only from its
//!   first query's window on, and a long shared prefix whose early blocks are gone still hits
//!   (vLLM's sliding-window manager finds such hits by hash alone). A ghost computed again is
//!   revived; ghosts go with their last descendant and number at most one per block.

pub mod block_pool;
pub mod layout;
pub mod manager;
pub mod prefix_hash;

pub use layout::{KvGroup, KvLayout};
pub use manager::{KvCacheManager, KvError, KvStats};

/// Index of a physical KV block (`0..num_blocks`).
pub type BlockId = u32;
/// The table entry of a block released because it left the attention window. Never a pool index:
/// attention reads no key before a query's window, and a read of this entry would fall outside the
/// pool (the CPU backend panics, `BatchMeta::validate` refuses a slot mapped into it).
pub const RELEASED_BLOCK: BlockId = BlockId::MAX;
/// The longest request (prompt + outputs, in tokens) that can run alone in a pool of `num_blocks`
/// blocks shared by KV groups attending within `windows` (one entry per group, None: the whole
/// context), each step adding at most `max_chunk` tokens. A request of k blocks holds k in each
/// full group and at most min(k, c) in a group of window w, with c = ⌈(w − 1 + max_chunk) /
/// block_size⌉ + 1 — its next chunk plus the window before it, one block more where they straddle
/// a boundary (vLLM sizes a sliding-window layer so). So: the largest k·block_size with
/// (full groups)·k + Σ min(k, c) ≤ num_blocks, or `usize::MAX` when every group has a window and
/// Σ c fits the pool (any length runs: the model's context is then the only limit). One full
/// group: the whole pool.
pub fn max_request_tokens(
    num_blocks: usize,
    block_size: usize,
    windows: &[Option<usize>],
    max_chunk: usize,
) -> usize {
    let held = |k: usize| blocks_held(windows, block_size, max_chunk, k);
    if windows.iter().all(Option::is_some) && held(usize::MAX) <= num_blocks {
        return usize::MAX;
    }
    // held(k) grows with k: the largest k with held(k) <= num_blocks, by bisection over 0..=num_blocks
    let (mut lo, mut hi) = (0usize, num_blocks);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if held(mid) <= num_blocks {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo.saturating_mul(block_size)
}

/// The most blocks a request spanning `blocks` blocks of positions holds at a time over KV groups
/// attending within `windows`, steps adding at most `max_chunk` tokens: `blocks` in each full
/// group, at most ⌈(w − 1 + max_chunk) / block_size⌉ + 1 in a group of window w (see
/// [`max_request_tokens`]).
pub fn blocks_held(
    windows: &[Option<usize>],
    block_size: usize,
    max_chunk: usize,
    blocks: usize,
) -> usize {
    let cap = |w: usize| (w.saturating_sub(1) + max_chunk).div_ceil(block_size.max(1)) + 1;
    windows
        .iter()
        .map(|w| w.map_or(blocks, |w| blocks.min(cap(w))))
        .fold(0usize, usize::saturating_add)
}

/// Identity of a request, chosen by the scheduler.
pub type RequestId = u64;

#[cfg(test)]
mod tests {
    use super::max_request_tokens;

    #[test]
    fn the_longest_request_a_pool_runs_alone() {
        // 10 blocks of 4: 40 tokens without a window
        assert_eq!(max_request_tokens(10, 4, &[None], 16), 40);
        // a window of 9 with chunks of 16: ⌈24 / 4⌉ + 1 = 7 blocks at a time fit, any length runs
        assert_eq!(max_request_tokens(10, 4, &[Some(9)], 16), usize::MAX);
        // the window and a chunk need ⌈(20 + 16) / 4⌉ + 1 = 10 blocks: still fits, at the edge
        assert_eq!(max_request_tokens(10, 4, &[Some(21)], 16), usize::MAX);
        // one more key and they do not: back to the whole pool
        assert_eq!(max_request_tokens(10, 4, &[Some(22)], 16), 40);
    }

    #[test]
    fn the_longest_request_a_hybrid_pool_runs_alone() {
        // a full group and a windowed one holding at most ⌈(8 + 4) / 4⌉ + 1 = 4 blocks: k + min(k, 4)
        // <= 20 gives k = 16, 64 tokens (two full groups would give k = 10)
        assert_eq!(max_request_tokens(20, 4, &[None, Some(9)], 4), 64);
        assert_eq!(max_request_tokens(20, 4, &[None, None], 4), 40);
        // short of its cap the windowed group holds every block: 2k <= 6, k = 3
        assert_eq!(max_request_tokens(6, 4, &[None, Some(9)], 4), 12);
        // windowed groups only: any length once their caps fit together (4 + 4 <= 8), else the
        // largest k with 2·min(k, 4) <= 7: 3 blocks
        assert_eq!(max_request_tokens(8, 4, &[Some(9), Some(9)], 4), usize::MAX);
        assert_eq!(max_request_tokens(7, 4, &[Some(9), Some(9)], 4), 12);
        // bisection agrees with counting up
        for n in 0..40 {
            for windows in [&[None, Some(9), Some(9)][..], &[Some(5), Some(30)][..]] {
                let got = max_request_tokens(n, 4, windows, 4);
                let held = |k: usize| -> usize {
                    windows
                        .iter()
                        .map(|w| w.map_or(k, |w| k.min((w - 1 + 4).div_ceil(4) + 1)))
                        .sum()
                };
                if got != usize::MAX {
                    let k = got / 4;
                    assert!(held(k) <= n && held(k + 1) > n, "{n} {windows:?} {got}");
                }
            }
        }
    }
}
