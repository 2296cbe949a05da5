//! Chain hash of full KV blocks, the key of the prefix cache.
//!
//! Block `i` of a sequence hashes to `H(hash of block i-1, tokens of block i)`; block 0 uses the fixed
//! [`ROOT_HASH`] as its parent. A block's hash therefore names the whole prefix up to and including that
//! block, not just its own tokens, so two requests can only find the same cached block for block `i`
//! when their first `(i + 1) * block_size` tokens agree (up to hash collisions).
//!
//! The hash is only an *index*: a 64-bit collision is astronomically unlikely but not impossible, so the
//! cache never trusts it alone. Every cached block also stores its own token ids and the identity of the
//! cache entry it was chained from ([`EntryId`]), and a lookup accepts a block only when both match
//! exactly (see `block_pool::CachedBlock::matches`). By induction from the root, an accepted chain of
//! entries represents exactly the looked-up prefix, whatever the hashes do.

use std::hash::Hasher;

/// 64-bit chain hash of one full block (and, through the chain, of its whole prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

/// Parent hash used for the first block of every sequence.
pub const ROOT_HASH: BlockHash = BlockHash(0x9e37_79b9_7f4a_7c15);

/// Identity of one registration of a block in the prefix cache. Unique for the lifetime of the pool
/// (a monotonically increasing counter, never reused, even when the block is evicted and cached again
/// with other content), so "my parent is entry E" pins down the parent's exact content, unlike a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub u64);

impl EntryId {
    /// The virtual parent of block 0 of every sequence (in KV group 0).
    pub const ROOT: EntryId = EntryId(0);

    /// The virtual parent of block 0 of every sequence in KV group `group`: each group's chains
    /// start apart, so the same tokens cached by two groups (different layers' K/V) are two
    /// entries that no lookup confuses. The pool reserves one id per group
    /// (`BlockPool::with_roots`).
    pub fn root(group: usize) -> EntryId {
        EntryId(group as u64)
    }
}

/// Parent hash of block 0 in KV group `group`: [`ROOT_HASH`] for group 0, a hash of the group
/// index for the others, so the groups' chains (which share the pool's one hash index) do not
/// collide by construction on equal tokens. The entry ids keep them apart whatever the hashes do.
pub fn group_root_hash(group: usize) -> BlockHash {
    if group == 0 {
        ROOT_HASH
    } else {
        hash_block(ROOT_HASH, &[u32::MAX, group as u32])
    }
}

/// Signature of a block-hash function (the manager holds one so tests can force collisions).
pub type HashFn = fn(BlockHash, &[u32]) -> BlockHash;

/// The chain hash: std's SipHash-1-3 with fixed (zero) keys via `DefaultHasher::new()`, so it is stable
/// within a process (and across runs of the same toolchain), unlike `RandomState`. Feeds the parent
/// hash, the token count and each token id.
pub fn hash_block(parent: BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write_u64(parent.0);
    h.write_u64(tokens.len() as u64);
    for &t in tokens {
        h.write_u32(t);
    }
    BlockHash(h.finish())
}

/// Chain hashes of the full blocks of `tokens` (a trailing partial block gets none), oldest first.
pub fn hash_full_blocks(hash_fn: HashFn, tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
    let mut parent = ROOT_HASH;
    tokens
        .chunks_exact(block_size)
        .map(|chunk| {
            parent = hash_fn(parent, chunk);
            parent
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_deterministic() {
        let a = hash_block(ROOT_HASH, &[1, 2, 3, 4]);
        let b = hash_block(ROOT_HASH, &[1, 2, 3, 4]);
        assert_eq!(a, b);
    }

    #[test]
    fn hash_depends_on_tokens_parent_and_order() {
        let base = hash_block(ROOT_HASH, &[1, 2, 3, 4]);
        assert_ne!(base, hash_block(ROOT_HASH, &[1, 2, 3, 5]));
        assert_ne!(base, hash_block(ROOT_HASH, &[2, 1, 3, 4]));
        assert_ne!(base, hash_block(BlockHash(1), &[1, 2, 3, 4]));
    }

    #[test]
    fn groups_start_their_chains_apart() {
        assert_eq!(group_root_hash(0), ROOT_HASH);
        let roots: std::collections::HashSet<_> = (0..8).map(group_root_hash).collect();
        assert_eq!(roots.len(), 8);
        assert_eq!(EntryId::root(0), EntryId::ROOT);
        assert_ne!(EntryId::root(1), EntryId::ROOT);
    }

    #[test]
    fn chain_hash_names_the_whole_prefix() {
        // Same second block, different first block: the second block's hash must differ.
        let a = hash_full_blocks(hash_block, &[1, 1, 7, 7], 2);
        let b = hash_full_blocks(hash_block, &[2, 2, 7, 7], 2);
        assert_eq!(a.len(), 2);
        assert_ne!(a[1], b[1]);
        // Shared first block: equal first hashes.
        let c = hash_full_blocks(hash_block, &[1, 1, 8, 8, 9], 2);
        assert_eq!(c.len(), 2, "partial trailing block is not hashed");
        assert_eq!(a[0], c[0]);
        assert_ne!(a[1], c[1]);
    }
}
