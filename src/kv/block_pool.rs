//! The pool of physical KV blocks: reference counts, the LRU free list and the prefix-cache index.
//!
//! - Every block has a reference count (the number of requests whose block table holds it).
//! - Blocks with reference count 0 are exactly the members of the free list, a doubly linked list
//!   threaded through per-block `prev`/`next` ids (no allocation, O(1) pop-head / push-tail /
//!   unlink-middle). New blocks are taken from the head; released blocks are pushed at the tail, so the
//!   head is always the least recently released block: one LRU queue, as in vLLM v1. Never-cached and
//!   cached-but-free blocks share the queue; a fresh block is not preferred over evicting an older cached
//!   one, which keeps the policy a plain LRU and every operation O(1).
//! - A block may additionally be *cached*: it holds a full block of computed tokens, has a chain hash,
//!   and is indexed in `cache` (hash → block). A cached block stays findable while it sits in the free
//!   list with reference count 0; it loses its block only when it is taken from the free list for
//!   other content (an eviction).
//! - An evicted entry that other cache entries were chained from becomes a *ghost*: its hash, parent
//!   entry and tokens stay (no block) while some entry still descends from it, so a later lookup can
//!   still verify a chain through it token by token — what a sliding-window model needs, whose early
//!   blocks are released (and evicted) first while the blocks its window reads stay cached. A ghost
//!   whose content is computed again is revived under its old identity. Ghosts are capped at one per
//!   block (their tokens take at most what the cached blocks' do); past that an evicted entry is
//!   dropped and its descendants can no longer be reached.

use rustc_hash::FxHashMap;

use super::prefix_hash::{BlockHash, EntryId};
use super::BlockId;

/// "No block" in the free-list links.
const NIL: BlockId = BlockId::MAX;

/// Prefix-cache metadata of one cached block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedBlock {
    /// Chain hash of the block (index key in the pool's map).
    pub hash: BlockHash,
    /// The cache entry this block was chained from ([`EntryId::ROOT`] for block 0 of a sequence).
    pub parent: EntryId,
    /// This registration's unique identity (children name it as their `parent`).
    pub entry: EntryId,
}

/// Result of [`BlockPool::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A cached block with exactly this content (parent entry and tokens).
    Hit { block: BlockId, entry: EntryId },
    /// An evicted entry with exactly this content, kept as a ghost for its descendants: the chain
    /// goes on through `entry`, but there is no block to share.
    Ghost { entry: EntryId },
    /// Nothing cached under the hash.
    Absent,
    /// Something is cached under the hash but its content differs (a hash collision).
    Mismatch,
}

#[derive(Debug, Clone)]
struct Slot {
    /// Number of block tables holding this block; 0 ⇔ the block is in the free list.
    ref_cnt: u32,
    /// Free-list neighbours (towards the head / towards the tail); `NIL` at the ends or when not free.
    prev: BlockId,
    next: BlockId,
    /// Set while the block is registered in the prefix cache.
    cached: Option<CachedBlock>,
}

/// An evicted cache entry kept for the entries chained from it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
struct GhostEntry {
    parent: EntryId,
    entry: EntryId,
    tokens: Vec<u32>,
}

/// The pool of `num_blocks` physical blocks (ids `0..num_blocks`).
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    /// Per-block state, indexed by block id.
    slots: Vec<Slot>,
    /// Token ids of cached blocks, flat `[num_blocks, block_size]` (block `b` at `b*block_size..`);
    /// meaningful only for blocks with `cached.is_some()`. Empty when token storage is off.
    tokens: Vec<u32>,
    /// Free list ends (`NIL` when empty): head = next block to hand out (least recently released).
    free_head: BlockId,
    free_tail: BlockId,
    num_free: usize,
    /// Prefix cache: chain hash → the one block cached under it.
    cache: FxHashMap<BlockHash, BlockId>,
    /// Evicted entries kept for their descendants, by chain hash (never a hash `cache` holds).
    ghosts: FxHashMap<BlockHash, GhostEntry>,
    /// Entries (cached or ghost) chained from each live entry, for the entries that have any.
    children: FxHashMap<EntryId, u32>,
    /// Every live entry (cached or ghost) → its chain hash.
    entry_hash: FxHashMap<EntryId, BlockHash>,
    /// Next [`EntryId`] to hand out (the first `roots` ids are the KV groups' roots).
    next_entry: u64,
    /// Root entries reserved, one per KV group ([`EntryId::root`]).
    roots: u64,
    /// Number of cached blocks taken from the free list for other content.
    evictions: u64,
}

/// A map with room for `num_blocks` entries when prefix caching stores tokens (else empty).
fn map_for<K, V>(store_tokens: bool, num_blocks: usize) -> FxHashMap<K, V> {
    let capacity = if store_tokens { num_blocks } else { 0 };
    FxHashMap::with_capacity_and_hasher(capacity, Default::default())
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks, free list in id order. `store_tokens` reserves room for the
    /// token ids of cached blocks (needed only with prefix caching).
    ///
    /// # Panics
    /// If `block_size == 0` or `num_blocks` does not fit a [`BlockId`] (minus one reserved value).
    pub fn new(num_blocks: usize, block_size: usize, store_tokens: bool) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        assert!(
            num_blocks < NIL as usize,
            "too many KV blocks: {num_blocks}"
        );
        let n = num_blocks as BlockId;
        let slots = (0..n)
            .map(|b| Slot {
                ref_cnt: 0,
                prev: if b == 0 { NIL } else { b - 1 },
                next: if b + 1 == n { NIL } else { b + 1 },
                cached: None,
            })
            .collect();
        BlockPool {
            block_size,
            slots,
            tokens: if store_tokens {
                vec![0; num_blocks * block_size]
            } else {
                Vec::new()
            },
            free_head: if n == 0 { NIL } else { 0 },
            free_tail: if n == 0 { NIL } else { n - 1 },
            num_free: num_blocks,
            // sized for every block cached up front: growing a map of 10^5 entries rehashes it
            // within one step (milliseconds on the host, a latency spike in the measured run).
            // FxHash, not SipHash: the keys are chain hashes (SipHash outputs already) and entry
            // counters, and no input reaches them unhashed; it takes about a fifth off a prefix
            // walk and a third off a decode step's bookkeeping (benches/kv_manager.rs)
            cache: map_for(store_tokens, num_blocks),
            ghosts: FxHashMap::default(),
            children: map_for(store_tokens, num_blocks),
            entry_hash: map_for(store_tokens, num_blocks),
            next_entry: 1,
            roots: 1,
            evictions: 0,
        }
    }

    /// The same (unused) pool reserving root entries for `groups` KV groups: ids
    /// `EntryId::root(0..groups)` are never handed out.
    ///
    /// # Panics
    /// If an entry was handed out already, or `groups == 0`.
    pub fn with_roots(mut self, groups: usize) -> Self {
        assert!(groups > 0, "a pool for no KV groups");
        assert_eq!(self.next_entry, self.roots, "roots reserved after use");
        self.roots = groups as u64;
        self.next_entry = self.roots;
        self
    }

    pub fn num_blocks(&self) -> usize {
        self.slots.len()
    }

    /// Blocks with reference count 0 (including cached-but-evictable ones).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Number of cached blocks taken from the free list for other content so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn ref_cnt(&self, block: BlockId) -> u32 {
        self.slots[block as usize].ref_cnt
    }

    /// Cache metadata of `block`, if it is registered in the prefix cache.
    pub fn cached(&self, block: BlockId) -> Option<&CachedBlock> {
        self.slots[block as usize].cached.as_ref()
    }

    fn stored_tokens(&self, block: BlockId) -> &[u32] {
        let start = block as usize * self.block_size;
        &self.tokens[start..start + self.block_size]
    }

    /// Number of ghost entries (evicted, kept for their descendants).
    pub fn num_ghosts(&self) -> usize {
        self.ghosts.len()
    }

    /// Find the cached block, or the ghost, for the chain hash `hash` whose content is exactly
    /// (`parent`, `tokens`).
    pub fn lookup(&self, hash: BlockHash, parent: EntryId, tokens: &[u32]) -> Lookup {
        if let Some(g) = self.ghosts.get(&hash) {
            return if g.parent == parent && g.tokens == tokens {
                Lookup::Ghost { entry: g.entry }
            } else {
                Lookup::Mismatch
            };
        }
        let Some(&block) = self.cache.get(&hash) else {
            return Lookup::Absent;
        };
        let Some(meta) = self.cached(block) else {
            debug_assert!(false, "cache map points at uncached block {block}");
            return Lookup::Mismatch;
        };
        if meta.parent == parent && self.stored_tokens(block) == tokens {
            Lookup::Hit {
                block,
                entry: meta.entry,
            }
        } else {
            Lookup::Mismatch
        }
    }

    /// Take the block at the head of the free list (the least recently released) and give it reference
    /// count 1. If it was cached, it leaves the cache (an eviction): its entry becomes a ghost when
    /// other entries descend from it (and the ghosts are under their cap), else it is dropped.
    /// `None` if no block is free.
    pub fn take_free(&mut self) -> Option<BlockId> {
        let block = self.free_head;
        if block == NIL {
            return None;
        }
        self.unlink(block);
        let slot = &mut self.slots[block as usize];
        slot.ref_cnt = 1;
        if let Some(meta) = slot.cached.take() {
            let removed = self.cache.remove(&meta.hash);
            debug_assert_eq!(removed, Some(block));
            self.evictions += 1;
            if self.children.contains_key(&meta.entry) && self.ghosts.len() < self.slots.len() {
                let tokens = self.stored_tokens(block).to_vec();
                self.ghosts.insert(
                    meta.hash,
                    GhostEntry {
                        parent: meta.parent,
                        entry: meta.entry,
                        tokens,
                    },
                );
            } else {
                // its descendants, if any, can no longer be reached: forget them as children
                self.children.remove(&meta.entry);
                self.entry_hash.remove(&meta.entry);
                self.drop_child_of(meta.parent);
            }
        }
        Some(block)
    }

    /// An entry chained from `parent` is gone: count it off, and drop `parent` too when it is a
    /// ghost left without descendants (up the chain).
    fn drop_child_of(&mut self, mut parent: EntryId) {
        loop {
            let Some(n) = self.children.get_mut(&parent) else {
                return;
            };
            *n -= 1;
            if *n > 0 {
                return;
            }
            self.children.remove(&parent);
            let Some(&hash) = self.entry_hash.get(&parent) else {
                return;
            };
            let Some(ghost) = self.ghosts.remove(&hash) else {
                return; // a cached entry: it stays
            };
            self.entry_hash.remove(&parent);
            parent = ghost.parent;
        }
    }

    /// Add a reference to `block` (e.g. a prefix hit); a block at reference count 0 leaves the free list
    /// and keeps its cache entry.
    pub fn acquire(&mut self, block: BlockId) {
        if self.slots[block as usize].ref_cnt == 0 {
            self.unlink(block);
        }
        self.slots[block as usize].ref_cnt += 1;
    }

    /// Drop a reference to `block`; at 0 it goes to the tail of the free list (a cached block stays
    /// findable until evicted).
    pub fn release(&mut self, block: BlockId) {
        let slot = &mut self.slots[block as usize];
        debug_assert!(slot.ref_cnt > 0, "release of free block {block}");
        if slot.ref_cnt == 0 {
            return;
        }
        slot.ref_cnt -= 1;
        if slot.ref_cnt == 0 {
            self.push_tail(block);
        }
    }

    /// Register the (owned, uncached) `block` in the prefix cache under `hash` with content
    /// (`parent`, `tokens`). Returns the new entry's identity, or `None` (nothing changed) if the block
    /// is already cached, token storage is off, `tokens` is not one full block, or `hash` is taken
    /// (by a cached block, or by a ghost of other content). A ghost of exactly this content is
    /// revived: the block takes its entry, whose descendants are thereby cached again.
    pub fn register(
        &mut self,
        block: BlockId,
        hash: BlockHash,
        parent: EntryId,
        tokens: &[u32],
    ) -> Option<EntryId> {
        if self.slots[block as usize].cached.is_some()
            || self.tokens.is_empty()
            || tokens.len() != self.block_size
            || self.cache.contains_key(&hash)
        {
            return None;
        }
        let entry = match self.ghosts.get(&hash) {
            Some(g) if g.parent == parent && g.tokens == tokens => {
                let entry = g.entry;
                self.ghosts.remove(&hash);
                entry
            }
            Some(_) => return None,
            None => {
                let entry = EntryId(self.next_entry);
                self.next_entry += 1;
                self.entry_hash.insert(entry, hash);
                // a parent that is gone (evicted without descendants at the time) counts nothing:
                // this entry can never be reached through it
                if self.entry_hash.contains_key(&parent) {
                    *self.children.entry(parent).or_insert(0) += 1;
                }
                entry
            }
        };
        let start = block as usize * self.block_size;
        self.tokens[start..start + self.block_size].copy_from_slice(tokens);
        self.slots[block as usize].cached = Some(CachedBlock {
            hash,
            parent,
            entry,
        });
        self.cache.insert(hash, block);
        Some(entry)
    }

    fn unlink(&mut self, block: BlockId) {
        let (prev, next) = {
            let s = &self.slots[block as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            debug_assert_eq!(self.free_head, block);
            self.free_head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            debug_assert_eq!(self.free_tail, block);
            self.free_tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        let s = &mut self.slots[block as usize];
        s.prev = NIL;
        s.next = NIL;
        self.num_free -= 1;
    }

    fn push_tail(&mut self, block: BlockId) {
        let tail = self.free_tail;
        {
            let s = &mut self.slots[block as usize];
            s.prev = tail;
            s.next = NIL;
        }
        if tail == NIL {
            self.free_head = block;
        } else {
            self.slots[tail as usize].next = block;
        }
        self.free_tail = block;
        self.num_free += 1;
    }

    /// The free list, head (next to be taken) first.
    pub fn free_list(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut b = self.free_head;
        while b != NIL && out.len() <= self.slots.len() {
            out.push(b);
            b = self.slots[b as usize].next;
        }
        out
    }

    /// Pool-level invariants: the free list is well linked, holds each refcount-0 block exactly once
    /// and nothing else, `num_free` matches; every map entry points at a cached block with that hash,
    /// every cached block is in the map, entry ids are unique and below the counter.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.slots.len();
        let mut seen = vec![false; n];
        let mut count = 0usize;
        let mut prev = NIL;
        let mut b = self.free_head;
        while b != NIL {
            let i = b as usize;
            if i >= n {
                return Err(format!("free list holds out-of-range block {b}"));
            }
            if seen[i] {
                return Err(format!("free list holds block {b} twice (or loops)"));
            }
            seen[i] = true;
            count += 1;
            if self.slots[i].prev != prev {
                return Err(format!(
                    "free list: block {b} has prev {} but follows {prev}",
                    self.slots[i].prev
                ));
            }
            if self.slots[i].ref_cnt != 0 {
                return Err(format!(
                    "free list holds block {b} with refcount {}",
                    self.slots[i].ref_cnt
                ));
            }
            prev = b;
            b = self.slots[i].next;
        }
        if prev != self.free_tail {
            return Err(format!(
                "free list tail is {} but the walk ends at {prev}",
                self.free_tail
            ));
        }
        if count != self.num_free {
            return Err(format!(
                "num_free is {} but the free list has {count}",
                self.num_free
            ));
        }
        for (i, s) in self.slots.iter().enumerate() {
            if s.ref_cnt == 0 && !seen[i] {
                return Err(format!(
                    "block {i} has refcount 0 but is not in the free list"
                ));
            }
            if s.ref_cnt > 0 && (s.prev != NIL || s.next != NIL) {
                return Err(format!("used block {i} still has free-list links"));
            }
        }
        for (&hash, &block) in &self.cache {
            match self
                .slots
                .get(block as usize)
                .and_then(|s| s.cached.as_ref())
            {
                Some(meta) if meta.hash == hash => {}
                Some(meta) => {
                    return Err(format!(
                        "map entry {hash:?} -> block {block}, whose stored hash is {:?}",
                        meta.hash
                    ))
                }
                None => return Err(format!("map entry {hash:?} -> uncached block {block}")),
            }
        }
        let mut entries = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(meta) = &s.cached {
                if self.cache.get(&meta.hash) != Some(&(i as BlockId)) {
                    return Err(format!(
                        "cached block {i} is not indexed under its hash {:?}",
                        meta.hash
                    ));
                }
                if meta.entry.0 < self.roots
                    || meta.entry.0 >= self.next_entry
                    || meta.parent.0 >= meta.entry.0
                {
                    return Err(format!("cached block {i} has bad entry ids {meta:?}"));
                }
                entries.push(meta.entry);
            }
        }
        // ghosts: hashes apart from the cached blocks', under the cap, each with descendants
        let mut parents: Vec<(EntryId, EntryId)> = self
            .slots
            .iter()
            .filter_map(|s| s.cached.map(|m| (m.entry, m.parent)))
            .collect();
        for (hash, g) in &self.ghosts {
            if self.cache.contains_key(hash) {
                return Err(format!(
                    "ghost {:?} shares hash {hash:?} with a cached block",
                    g.entry
                ));
            }
            if g.tokens.len() != self.block_size {
                return Err(format!(
                    "ghost {:?} holds {} tokens",
                    g.entry,
                    g.tokens.len()
                ));
            }
            if self.entry_hash.get(&g.entry) != Some(hash) {
                return Err(format!("ghost {:?} is not indexed under {hash:?}", g.entry));
            }
            if !self.children.contains_key(&g.entry) {
                return Err(format!("ghost {:?} has no descendants", g.entry));
            }
            entries.push(g.entry);
            parents.push((g.entry, g.parent));
        }
        if self.ghosts.len() > self.slots.len() {
            return Err(format!(
                "{} ghosts over the cap of {}",
                self.ghosts.len(),
                self.slots.len()
            ));
        }
        entries.sort_unstable();
        if entries.windows(2).any(|w| w[0] == w[1]) {
            return Err("two cached blocks or ghosts share an entry id".into());
        }
        if entries.len() != self.entry_hash.len() {
            return Err(format!(
                "{} live entries but {} indexed",
                entries.len(),
                self.entry_hash.len()
            ));
        }
        // each live entry's count of live entries chained from it
        let mut counted: FxHashMap<EntryId, u32> = FxHashMap::default();
        for &(_, parent) in &parents {
            if self.entry_hash.contains_key(&parent) {
                *counted.entry(parent).or_insert(0) += 1;
            }
        }
        if counted != self.children {
            return Err(format!(
                "children counts {:?} but the live entries give {counted:?}",
                self.children
            ));
        }
        Ok(())
    }

    /// Comparable image of the whole pool state (tests: "on Err nothing changed").
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        let mut cache: Vec<(BlockHash, BlockId)> =
            self.cache.iter().map(|(&h, &b)| (h, b)).collect();
        cache.sort_unstable();
        let mut ghosts: Vec<(BlockHash, GhostEntry)> =
            self.ghosts.iter().map(|(&h, g)| (h, g.clone())).collect();
        ghosts.sort_unstable_by_key(|(h, _)| *h);
        let mut children: Vec<(EntryId, u32)> =
            self.children.iter().map(|(&e, &n)| (e, n)).collect();
        children.sort_unstable();
        PoolSnapshot {
            ref_cnts: self.slots.iter().map(|s| s.ref_cnt).collect(),
            cached: self.slots.iter().map(|s| s.cached).collect(),
            free_list: self.free_list(),
            cache,
            ghosts,
            children,
            next_entry: self.next_entry,
            evictions: self.evictions,
        }
    }
}

#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolSnapshot {
    ref_cnts: Vec<u32>,
    cached: Vec<Option<CachedBlock>>,
    free_list: Vec<BlockId>,
    cache: Vec<(BlockHash, BlockId)>,
    ghosts: Vec<(BlockHash, GhostEntry)>,
    children: Vec<(EntryId, u32)>,
    next_entry: u64,
    evictions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_all_then_release_in_order_is_lru() {
        let mut p = BlockPool::new(4, 2, false);
        let taken: Vec<_> = (0..4).map(|_| p.take_free().unwrap()).collect();
        assert_eq!(taken, vec![0, 1, 2, 3]);
        assert_eq!(p.take_free(), None);
        assert_eq!(p.num_free(), 0);
        p.check_invariants().unwrap();
        for b in [2, 0, 3, 1] {
            p.release(b);
        }
        assert_eq!(p.free_list(), vec![2, 0, 3, 1]);
        assert_eq!(p.take_free(), Some(2));
        p.check_invariants().unwrap();
    }

    #[test]
    fn acquire_unlinks_from_the_middle() {
        let mut p = BlockPool::new(5, 1, false);
        p.acquire(2);
        assert_eq!(p.free_list(), vec![0, 1, 3, 4]);
        p.acquire(0);
        p.acquire(4);
        assert_eq!(p.free_list(), vec![1, 3]);
        p.acquire(4);
        assert_eq!(p.ref_cnt(4), 2);
        p.check_invariants().unwrap();
        p.release(4);
        assert_eq!(p.free_list(), vec![1, 3]);
        p.release(4);
        assert_eq!(p.free_list(), vec![1, 3, 4]);
        p.check_invariants().unwrap();
    }

    #[test]
    fn register_lookup_evict() {
        let mut p = BlockPool::new(2, 2, true);
        let b = p.take_free().unwrap();
        let h = BlockHash(42);
        let e = p.register(b, h, EntryId::ROOT, &[7, 8]).unwrap();
        assert_eq!(
            p.register(b, BlockHash(43), EntryId::ROOT, &[7, 8]),
            None,
            "already cached"
        );
        assert_eq!(
            p.lookup(h, EntryId::ROOT, &[7, 8]),
            Lookup::Hit { block: b, entry: e }
        );
        assert_eq!(p.lookup(h, EntryId::ROOT, &[7, 9]), Lookup::Mismatch);
        assert_eq!(p.lookup(h, e, &[7, 8]), Lookup::Mismatch);
        assert_eq!(
            p.lookup(BlockHash(1), EntryId::ROOT, &[7, 8]),
            Lookup::Absent
        );
        p.release(b);
        // Still findable while free.
        assert!(matches!(
            p.lookup(h, EntryId::ROOT, &[7, 8]),
            Lookup::Hit { .. }
        ));
        p.check_invariants().unwrap();
        // Take both free blocks: the other one first (LRU head), then the cached one is evicted.
        let other = p.take_free().unwrap();
        assert_ne!(other, b);
        assert_eq!(p.evictions(), 0);
        assert_eq!(p.take_free(), Some(b));
        assert_eq!(p.evictions(), 1);
        assert_eq!(p.lookup(h, EntryId::ROOT, &[7, 8]), Lookup::Absent);
        p.check_invariants().unwrap();
    }

    #[test]
    fn register_refuses_taken_hash() {
        let mut p = BlockPool::new(2, 1, true);
        let a = p.take_free().unwrap();
        let b = p.take_free().unwrap();
        assert!(p.register(a, BlockHash(5), EntryId::ROOT, &[1]).is_some());
        assert_eq!(p.register(b, BlockHash(5), EntryId::ROOT, &[1]), None);
        assert!(p.cached(b).is_none());
        p.check_invariants().unwrap();
    }

    #[test]
    fn invariant_checker_catches_corruption() {
        let mut p = BlockPool::new(3, 1, true);
        p.slots[1].ref_cnt = 1; // in the free list with refcount 1
        assert!(p.check_invariants().is_err());
        let mut p = BlockPool::new(3, 1, true);
        p.cache.insert(BlockHash(9), 0); // map entry to an uncached block
        assert!(p.check_invariants().is_err());
        let mut p = BlockPool::new(3, 1, true);
        p.num_free = 2;
        assert!(p.check_invariants().is_err());
    }
}
