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

/// The salt of KV group `group`'s keys in the prefix cache ([`group_key`]): 0 for group 0, a hash
/// of the group index for the others.
pub fn group_salt(group: usize) -> u64 {
    if group == 0 {
        0
    } else {
        hash_block(ROOT_HASH, &[u32::MAX, group as u32]).0
    }
}

/// The prefix cache's key of a block whose chain hash is `chain`, in the KV group of `salt`
/// ([`group_salt`]). A request's chain hashes do not depend on the group (they are computed once
/// per block, however many groups there are); the groups share the pool's one index, so each
/// group's keys are its chain hashes XOR its salt: the same tokens cached by two groups (different
/// layers' K/V) sit under different keys. Keys are only an index: the entry ids (a root per
/// group) keep the groups apart whatever the keys do.
pub fn group_key(chain: BlockHash, salt: u64) -> BlockHash {
    BlockHash(chain.0 ^ salt)
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
    let mut hashes = Vec::new();
    extend_chain(hash_fn, &mut hashes, tokens, block_size, usize::MAX);
    hashes
}

/// Extend `hashes`, the chain hashes of the first `hashes.len()` full blocks of `tokens`, to its
/// first `min(num_blocks, full blocks)`: each block is hashed once, however often a request's
/// prefix is looked up (a request waiting for room is looked up every step).
pub fn extend_chain(
    hash_fn: HashFn,
    hashes: &mut Vec<BlockHash>,
    tokens: &[u32],
    block_size: usize,
    num_blocks: usize,
) {
    let want = num_blocks.min(tokens.len() / block_size);
    let mut parent = hashes.last().copied().unwrap_or(ROOT_HASH);
    for chunk in tokens[..want * block_size]
        .chunks_exact(block_size)
        .skip(hashes.len())
    {
        parent = hash_fn(parent, chunk);
        hashes.push(parent);
    }
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
    fn groups_key_their_chains_apart() {
        assert_eq!(group_salt(0), 0);
        let chain = hash_block(ROOT_HASH, &[1, 2]);
        assert_eq!(group_key(chain, group_salt(0)), chain);
        let keys: std::collections::HashSet<_> =
            (0..8).map(|g| group_key(chain, group_salt(g))).collect();
        assert_eq!(keys.len(), 8);
        assert_eq!(EntryId::root(0), EntryId::ROOT);
        assert_ne!(EntryId::root(1), EntryId::ROOT);
    }

    #[test]
    fn extending_a_chain_hashes_only_the_new_blocks() {
        let tokens: Vec<u32> = (0..11).collect();
        let all = hash_full_blocks(hash_block, &tokens, 2);
        assert_eq!(all.len(), 5);
        let mut hashes = Vec::new();
        extend_chain(hash_block, &mut hashes, &tokens[..4], 2, usize::MAX);
        assert_eq!(hashes, all[..2]);
        extend_chain(hash_block, &mut hashes, &tokens, 2, 3);
        assert_eq!(hashes, all[..3]);
        // blocks already there are not hashed again
        fn no_hash(_: BlockHash, _: &[u32]) -> BlockHash {
            panic!("hashed a block twice")
        }
        extend_chain(no_hash, &mut hashes, &tokens, 2, 2);
        extend_chain(hash_block, &mut hashes, &tokens, 2, usize::MAX);
        assert_eq!(hashes, all);
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
