//! The KV cache manager: block tables per request on top of the [`BlockPool`], with prefix caching.
//!
//! Typical use by the scheduler, per request and step:
//! 1. new request: `hit = lookup_prefix_for(req, tokens)`, then `allocate(req, tokens, hit, hit +
//!    chunk)` (the first `hit` tokens need no compute); a request that does not fit yet is looked
//!    up again next step, with the hashes kept from its first lookup;
//! 2. running request: `allocate(req, tokens, 0, num_computed + chunk)` to grow its tables;
//! 3. after the step computed tokens: `cache_computed(req, tokens, num_computed)`;
//! 4. finished or preempted: `free(req)`.
//!
//! Under an attention window ([`KvCacheManager::with_window`], or a windowed group of
//! [`KvCacheManager::with_groups`]) step 3 is followed by `release_outside_window(req,
//! num_computed)`, which gives back the blocks no later query can see.
//!
//! A request holds one block table per KV group ([`super::layout`]): all of the same length
//! (block i of every table covers the same positions), each from the one shared pool, each
//! released by its own group's window. Prefix caching keeps each group's chains apart (its own
//! root entry, its keys salted), and a prefix hit is a length every group can serve.
//!
//! A request's chain hashes (one per full block, whatever the groups) are computed once and kept
//! until `free`: the scheduler's `lookup_prefix_for` of a request waiting for room, every step,
//! walks the cache's index without hashing its prompt again.

use std::borrow::Cow;
use std::collections::HashMap;

use rustc_hash::FxHashMap;

use super::block_pool::{BlockPool, Lookup};
use super::prefix_hash::{
    extend_chain, group_key, group_salt, hash_block, hash_full_blocks, BlockHash, EntryId, HashFn,
};
use super::{BlockId, RequestId, RELEASED_BLOCK};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("KV cache out of blocks: need {needed}, {free} free")]
    NoFreeBlocks { needed: usize, free: usize },
}

/// Counters over the manager's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct KvStats {
    /// Tokens looked up by `lookup_prefix` calls that were followed by `allocate` of a new request
    /// (counted by that `allocate`, as `tokens.len()`, only with prefix caching on).
    pub prefix_queries_tokens: u64,
    /// Tokens of those served from the cache (the `prefix_hit_tokens` passed to `allocate`).
    pub prefix_hit_tokens: u64,
    /// Cached blocks reused for other content.
    pub evictions: u64,
    /// Blocks released from running requests because they left the attention window, over every
    /// group (prefix-hit blocks a new request does not take because they lie before its window are
    /// not counted).
    pub window_released_blocks: u64,
}

/// How one KV group attends, and where its prefix-cache chains start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GroupSpec {
    /// Every layer of the group attends to at most this many positions; None: the whole context.
    window: Option<usize>,
    /// Salt of the group's keys in the pool's index ([`group_key`]).
    salt: u64,
    /// Parent entry of a sequence's first block in this group.
    root_entry: EntryId,
}

impl GroupSpec {
    fn new(group: usize, window: Option<usize>) -> Self {
        GroupSpec {
            window,
            salt: group_salt(group),
            root_entry: EntryId::root(group),
        }
    }
}

/// Per-request state in one group.
#[derive(Debug, Clone)]
struct ReqState {
    /// Physical blocks in sequence order: block `i` holds tokens `[i*block_size, (i+1)*block_size)`.
    /// The first `num_released` entries are `RELEASED_BLOCK`.
    table: Vec<BlockId>,
    /// Leading blocks released because they left the attention window (no longer owned).
    num_released: usize,
    /// Leading blocks of `table` already handled by prefix caching (prefix hits, blocks registered by
    /// `cache_computed`, or blocks whose identical twin was already cached).
    num_cached: usize,
    /// Chain state after those blocks: the cache entry of block `num_cached - 1` (the group's root
    /// entry when `num_cached == 0`).
    last_entry: EntryId,
    /// A block of this request could not be chained (its hash slot holds other content, a collision):
    /// its successors have no valid parent entry, so caching stops for this request.
    cache_stopped: bool,
}

impl ReqState {
    fn new(group: &GroupSpec) -> Self {
        ReqState {
            table: Vec::new(),
            num_released: 0,
            num_cached: 0,
            last_entry: group.root_entry,
            cache_stopped: false,
        }
    }
}

/// Result of walking one group's prefix cache along a token sequence: the leading full blocks
/// whose exact content (tokens and chain) the cache knows, each with its cached block, or None
/// where only a ghost is left (evicted, kept for its descendants), and its cache entry.
struct CacheWalk {
    blocks: Vec<Option<BlockId>>,
    entries: Vec<EntryId>,
}

/// A prefix hit resolved against one group's cache.
struct Hit {
    /// The new request's table for the hit blocks: `RELEASED_BLOCK` for those before its first
    /// query's window (not taken), the cached blocks after.
    table: Vec<BlockId>,
    /// Leading entries of `table` that are `RELEASED_BLOCK`.
    skipped: usize,
    /// Chain state after the last hit block.
    last_entry: EntryId,
}

impl Hit {
    /// The cached blocks the request takes.
    fn taken(&self) -> &[BlockId] {
        &self.table[self.skipped..]
    }
}

/// Leading blocks (of `block_size` positions) wholly before the `window` of a query at
/// `next_query`: those no query from there on reads (0 without a window).
fn blocks_before_window(window: Option<usize>, block_size: usize, next_query: usize) -> usize {
    window.map_or(0, |w| (next_query + 1).saturating_sub(w) / block_size)
}

/// New blocks a request's tables (one per group, of one length) need to reach `want_blocks`.
fn blocks_to_grow(states: &[ReqState], want_blocks: usize) -> usize {
    states
        .iter()
        .map(|s| want_blocks.saturating_sub(s.table.len()))
        .sum()
}

/// Block accounting for the paged KV cache (see the module docs of [`crate::kv`]).
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    block_size: usize,
    enable_prefix_caching: bool,
    pool: BlockPool,
    /// Per request: its state in each group, in group order. (FxHash: the ids are the engine's
    /// counters, and a step looks every running request up three or four times.)
    requests: FxHashMap<RequestId, Vec<ReqState>>,
    /// Per request looked up or allocated with prefix caching on: the chain hashes of its leading
    /// full blocks, as far as they were needed (until `free`).
    block_hashes: FxHashMap<RequestId, Vec<BlockHash>>,
    /// Query/hit counters (`evictions` is read from the pool).
    stats: KvStats,
    /// Block hash function; always [`hash_block`] except in tests that force collisions.
    hash_fn: HashFn,
    /// The KV groups (one table per request each); at least one.
    groups: Vec<GroupSpec>,
}

impl KvCacheManager {
    /// A manager over `num_blocks` blocks of `block_size` tokens, all free, with one group of
    /// full attention.
    ///
    /// # Panics
    /// If `block_size == 0` or `num_blocks >= u32::MAX`.
    pub fn new(num_blocks: usize, block_size: usize, enable_prefix_caching: bool) -> Self {
        Self::with_hash_fn(num_blocks, block_size, enable_prefix_caching, hash_block)
    }

    /// Like [`new`](Self::new) with another block hash (tests force collisions with it).
    pub(crate) fn with_hash_fn(
        num_blocks: usize,
        block_size: usize,
        enable_prefix_caching: bool,
        hash_fn: HashFn,
    ) -> Self {
        KvCacheManager {
            block_size,
            enable_prefix_caching,
            pool: BlockPool::new(num_blocks, block_size, enable_prefix_caching),
            requests: FxHashMap::default(),
            block_hashes: FxHashMap::default(),
            stats: KvStats::default(),
            hash_fn,
            groups: vec![GroupSpec::new(0, None)],
        }
    }

    /// The same manager with one group whose layers all attend within `window` positions, which
    /// must bound every layer's attention: a query at position p reads keys p + 1 − w ..= p at most
    /// (see [`release_outside_window`](Self::release_outside_window)). None keeps every block.
    ///
    /// # Panics
    /// If `window` is `Some(0)`, or blocks are already allocated.
    pub fn with_window(self, window: Option<usize>) -> Self {
        self.with_groups(&[window])
    }

    /// The same manager with one KV group per entry of `windows` (the group's attention window;
    /// None: the whole context), as [`super::KvLayout::windows`] lists them: every request holds a
    /// table in each group, all from the one pool.
    ///
    /// # Panics
    /// If `windows` is empty, a window is `Some(0)`, or blocks are already allocated.
    pub fn with_groups(mut self, windows: &[Option<usize>]) -> Self {
        assert!(!windows.is_empty(), "a KV cache of no groups");
        assert!(
            !windows.contains(&Some(0)),
            "an attention window of 0 positions"
        );
        assert!(self.requests.is_empty(), "groups set after allocation");
        self.groups = windows
            .iter()
            .enumerate()
            .map(|(g, &w)| GroupSpec::new(g, w))
            .collect();
        self.pool = BlockPool::new(
            self.pool.num_blocks(),
            self.block_size,
            self.enable_prefix_caching,
        )
        .with_roots(windows.len());
        self
    }

    /// Each group's attention window (None: the whole context), in group order.
    pub fn windows(&self) -> Vec<Option<usize>> {
        self.groups.iter().map(|g| g.window).collect()
    }

    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    /// Blocks with refcount 0 (free, including cached-but-evictable ones).
    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free()
    }

    /// Blocks with refcount > 0.
    pub fn num_used_blocks(&self) -> usize {
        self.pool.num_blocks() - self.pool.num_free()
    }

    pub fn prefix_caching(&self) -> bool {
        self.enable_prefix_caching
    }

    /// Walk group `g`'s cache along the full blocks of `tokens`, at most `max_blocks` of them,
    /// stopping at the first block whose exact prefix the cache does not know (neither cached nor
    /// a ghost), and without a window at the first ghost (no hit reaches past a block that must be
    /// recomputed). `hashes` are the chain hashes of `tokens`' leading full blocks; the walk goes
    /// no further than they do.
    fn walk_cache(
        &self,
        g: usize,
        tokens: &[u32],
        hashes: &[BlockHash],
        max_blocks: usize,
    ) -> CacheWalk {
        let group = &self.groups[g];
        let mut walk = CacheWalk {
            blocks: Vec::new(),
            entries: Vec::new(),
        };
        let mut last_entry = group.root_entry;
        let blocks = tokens.chunks_exact(self.block_size).zip(hashes);
        for (chunk, &hash) in blocks.take(max_blocks) {
            let key = group_key(hash, group.salt);
            let (block, entry) = match self.pool.lookup(key, last_entry, chunk) {
                Lookup::Hit { block, entry } => (Some(block), entry),
                Lookup::Ghost { .. } if group.window.is_none() => break,
                Lookup::Ghost { entry } => (None, entry),
                Lookup::Absent | Lookup::Mismatch => break,
            };
            walk.blocks.push(block);
            walk.entries.push(entry);
            last_entry = entry;
        }
        walk
    }

    /// Chain hashes of the first `num_blocks` full blocks of `tokens` (fewer if it has fewer):
    /// `req`'s kept ones when they reach that far, else computed here.
    fn hashes_for<'a>(
        &'a self,
        req: RequestId,
        tokens: &[u32],
        num_blocks: usize,
    ) -> Cow<'a, [BlockHash]> {
        let want = num_blocks.min(tokens.len() / self.block_size);
        match self.block_hashes.get(&req) {
            Some(kept) if kept.len() >= want => Cow::Borrowed(&kept[..want]),
            kept => {
                let mut hashes = kept.cloned().unwrap_or_default();
                extend_chain(self.hash_fn, &mut hashes, tokens, self.block_size, want);
                Cow::Owned(hashes)
            }
        }
    }

    /// Extend `req`'s kept chain hashes to the first `num_blocks` full blocks of `tokens` (its
    /// known tokens, which only ever grow at the end while it lives). Only with prefix caching on.
    fn keep_hashes(&mut self, req: RequestId, tokens: &[u32], num_blocks: usize) {
        if !self.enable_prefix_caching {
            return;
        }
        let kept = self.block_hashes.entry(req).or_default();
        debug_assert!(
            kept.len() <= tokens.len() / self.block_size,
            "request {req}'s tokens shrank below its {} hashed blocks",
            kept.len()
        );
        extend_chain(self.hash_fn, kept, tokens, self.block_size, num_blocks);
    }

    /// Whether the first `n` blocks of group `g`'s `walk` make a prefix hit: every block from the
    /// first one the next query's window reads (all of them without a window) up to `n` is cached;
    /// those before may be ghosts, as no query of the request reads them.
    fn hit_fits(&self, g: usize, walk: &CacheWalk, n: usize) -> bool {
        let first_read = self.unseen_blocks(g, n * self.block_size).min(n);
        n <= walk.blocks.len() && walk.blocks[first_read..n].iter().all(Option::is_some)
    }

    /// Number of leading tokens of `tokens` a new request can take from the cache (a multiple of
    /// block_size): the most full blocks whose prefix every group's cache knows exactly and whose
    /// blocks the first query's window reads are all cached in that group (without a window:
    /// every block), capped so that at least one token of `tokens` is left to compute (the engine
    /// needs logits of the last prompt token). Under a window, blocks before that window may have
    /// been evicted (ghosts): a long shared prefix whose early blocks are gone still hits. Pure
    /// query: changes nothing. 0 when prefix caching is off.
    pub fn lookup_prefix(&self, tokens: &[u32]) -> usize {
        if !self.enable_prefix_caching || tokens.is_empty() {
            return 0;
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        let hashed = &tokens[..max_blocks * self.block_size];
        let hashes = hash_full_blocks(self.hash_fn, hashed, self.block_size);
        self.longest_hit(tokens, &hashes)
    }

    /// [`lookup_prefix`](Self::lookup_prefix) for request `req` (not yet allocated), keeping the
    /// chain hashes of its prompt for the next lookup, `allocate` and `cache_computed`, so a request
    /// waiting for room is not hashed again every step. `tokens` must be `req`'s known tokens, which
    /// only ever grow at the end until `free(req)` forgets them.
    pub fn lookup_prefix_for(&mut self, req: RequestId, tokens: &[u32]) -> usize {
        if !self.enable_prefix_caching || tokens.is_empty() {
            return 0;
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        self.keep_hashes(req, tokens, max_blocks);
        let hashes = self.hashes_for(req, tokens, max_blocks);
        self.longest_hit(tokens, &hashes)
    }

    /// Tokens of the longest prefix hit every group can serve along the chain `hashes` (of
    /// `tokens`' leading full blocks, those a hit may cover).
    fn longest_hit(&self, tokens: &[u32], hashes: &[BlockHash]) -> usize {
        let walks: Vec<CacheWalk> = (0..self.groups.len())
            .map(|g| self.walk_cache(g, tokens, hashes, hashes.len()))
            .collect();
        let longest = walks.iter().map(|w| w.blocks.len()).min().unwrap_or(0);
        let n = (0..=longest)
            .rev()
            .find(|&n| {
                walks
                    .iter()
                    .enumerate()
                    .all(|(g, walk)| self.hit_fits(g, walk, n))
            })
            .unwrap_or(0);
        n * self.block_size
    }

    /// Whether `req` owns no blocks (then `allocate` takes the prefix hit).
    fn is_new(&self, req: RequestId) -> bool {
        match self.requests.get(&req) {
            Some(states) => states[0].table.is_empty(),
            None => true,
        }
    }

    /// Check the `prefix_hit_tokens` contract and resolve the hit it names in group `g`.
    ///
    /// # Panics
    /// If `prefix_hit_tokens` cannot have come from `lookup_prefix(tokens)` in the current state.
    /// `hashes` are the chain hashes of `tokens`' first `prefix_hit_tokens / block_size` blocks.
    fn resolve_hit(
        &self,
        g: usize,
        tokens: &[u32],
        hashes: &[BlockHash],
        prefix_hit_tokens: usize,
    ) -> Hit {
        let bs = self.block_size;
        let group = &self.groups[g];
        if prefix_hit_tokens == 0 {
            return Hit {
                table: Vec::new(),
                skipped: 0,
                last_entry: group.root_entry,
            };
        }
        assert!(
            self.enable_prefix_caching
                && prefix_hit_tokens % bs == 0
                && prefix_hit_tokens < tokens.len(),
            "prefix_hit_tokens {prefix_hit_tokens} did not come from lookup_prefix \
             ({} tokens, block size {bs}, prefix caching {})",
            tokens.len(),
            self.enable_prefix_caching
        );
        let hit_blocks = prefix_hit_tokens / bs;
        let walk = self.walk_cache(g, tokens, hashes, hit_blocks);
        assert!(
            self.hit_fits(g, &walk, hit_blocks),
            "prefix_hit_tokens {prefix_hit_tokens} is stale: the cache no longer holds those blocks \
             (call lookup_prefix right before allocate)"
        );
        let skipped = self.unseen_blocks(g, prefix_hit_tokens).min(hit_blocks);
        let table = walk
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| match b {
                Some(b) if i >= skipped => *b,
                _ => RELEASED_BLOCK,
            })
            .collect();
        Hit {
            table,
            skipped,
            last_entry: walk.entries[hit_blocks - 1],
        }
    }

    /// Every group's hit for a new request, and how many blocks taking them and growing the tables
    /// to `want_blocks` needs from the free list (new blocks plus hit blocks at refcount 0).
    fn resolve_hits(
        &self,
        req: RequestId,
        tokens: &[u32],
        prefix_hit_tokens: usize,
        want_blocks: usize,
    ) -> (Vec<Hit>, usize) {
        let hashes = if prefix_hit_tokens == 0 {
            Cow::Borrowed(&[][..])
        } else {
            self.hashes_for(req, tokens, prefix_hit_tokens / self.block_size)
        };
        let hits: Vec<Hit> = (0..self.groups.len())
            .map(|g| self.resolve_hit(g, tokens, &hashes, prefix_hit_tokens))
            .collect();
        let needed = hits
            .iter()
            .map(|hit| {
                let from_free = hit
                    .taken()
                    .iter()
                    .filter(|&&b| self.pool.ref_cnt(b) == 0)
                    .count();
                want_blocks.saturating_sub(hit.table.len()) + from_free
            })
            .sum();
        (hits, needed)
    }

    /// Make request `req` own blocks for `total_tokens` tokens in every group. If `req` owns nothing
    /// yet, first take the cached blocks covering `tokens[..prefix_hit_tokens]` (`prefix_hit_tokens`
    /// must come from `lookup_prefix` or `lookup_prefix_for` on the same tokens in the same state;
    /// refcount + 1; a cached block with refcount 0 is removed from the free list). Then add new
    /// blocks from the free list head, evicting cached free blocks in LRU order (their hash entries
    /// are dropped).
    /// All-or-nothing: on Err nothing changed. `tokens` are the request's known tokens (prompt +
    /// outputs so far), used for prefix hashing only. For a request that already owns blocks
    /// `prefix_hit_tokens` is ignored, and a `total_tokens` within its current blocks is a no-op
    /// (tables never shrink). Under an attention window the hit blocks wholly before the first new
    /// token's window are not taken: their entries are `RELEASED_BLOCK` from the start (no query of
    /// the request reads them), so a long shared prefix costs the new request its window's blocks
    /// only in that group.
    ///
    /// `NoFreeBlocks::needed` counts every block that must come out of the free list, over the
    /// groups: the new blocks plus the prefix-hit blocks taken that were themselves free
    /// (refcount 0).
    ///
    /// # Panics
    /// If `req` is new and `prefix_hit_tokens` breaks its contract (not a value `lookup_prefix(tokens)`
    /// returns now). Never on valid use.
    pub fn allocate(
        &mut self,
        req: RequestId,
        tokens: &[u32],
        prefix_hit_tokens: usize,
        total_tokens: usize,
    ) -> Result<(), KvError> {
        let want_blocks = total_tokens.div_ceil(self.block_size);
        let free = self.pool.num_free();
        // a request that owns blocks grows its tables (one lookup: this runs for every running
        // request on every step)
        if let Some(states) = self
            .requests
            .get_mut(&req)
            .filter(|states| !states[0].table.is_empty())
        {
            let needed = blocks_to_grow(states, want_blocks);
            if needed > free {
                return Err(KvError::NoFreeBlocks { needed, free });
            }
            for state in states.iter_mut() {
                while state.table.len() < want_blocks {
                    let b = self.pool.take_free().expect("free count checked");
                    state.table.push(b);
                }
            }
            return Ok(());
        }

        // under a window the hit blocks before the first new token's window are not taken at all
        let (hits, needed) = self.resolve_hits(req, tokens, prefix_hit_tokens, want_blocks);
        if needed > free {
            return Err(KvError::NoFreeBlocks { needed, free });
        }
        // Take every group's hits first so that taking new blocks cannot evict them.
        for hit in &hits {
            for &b in hit.taken() {
                self.pool.acquire(b);
            }
        }
        let mut states = Vec::with_capacity(self.groups.len());
        for (group, hit) in self.groups.iter().zip(hits) {
            let mut state = ReqState::new(group);
            state.num_released = hit.skipped;
            state.num_cached = hit.table.len();
            state.last_entry = hit.last_entry;
            state.table = hit.table;
            while state.table.len() < want_blocks {
                let b = self.pool.take_free().expect("free count checked");
                state.table.push(b);
            }
            states.push(state);
        }
        if self.enable_prefix_caching {
            self.stats.prefix_queries_tokens += tokens.len() as u64;
            self.stats.prefix_hit_tokens += prefix_hit_tokens as u64;
        }
        self.requests.insert(req, states);
        Ok(())
    }

    /// How many new blocks `allocate` would need from the pool over the groups (after taking the
    /// prefix hit); lets the scheduler check before committing.
    ///
    /// This cannot see whether the prefix-hit blocks are themselves in the free list (it has no
    /// tokens), nor which hit blocks a window skips, so for a new request with a hit `allocate` may
    /// still fail when `blocks_needed <= num_free_blocks`; [`can_allocate`](Self::can_allocate) is
    /// exact.
    pub fn blocks_needed(
        &self,
        req: RequestId,
        prefix_hit_tokens: usize,
        total_tokens: usize,
    ) -> usize {
        let want_blocks = total_tokens.div_ceil(self.block_size);
        match self.requests.get(&req) {
            Some(states) if !states[0].table.is_empty() => blocks_to_grow(states, want_blocks),
            _ => {
                self.groups.len() * want_blocks.saturating_sub(prefix_hit_tokens / self.block_size)
            }
        }
    }

    /// Whether `allocate(req, tokens, prefix_hit_tokens, total_tokens)` would succeed now (counts the
    /// prefix-hit blocks that must leave the free list too). Same contract as `allocate`.
    pub fn can_allocate(
        &self,
        req: RequestId,
        tokens: &[u32],
        prefix_hit_tokens: usize,
        total_tokens: usize,
    ) -> bool {
        let needed = if self.is_new(req) {
            let want_blocks = total_tokens.div_ceil(self.block_size);
            self.resolve_hits(req, tokens, prefix_hit_tokens, want_blocks)
                .1
        } else {
            self.blocks_needed(req, prefix_hit_tokens, total_tokens)
        };
        needed <= self.pool.num_free()
    }

    /// Physical blocks of `req` in group `group`, in order (empty slice if none).
    ///
    /// # Panics
    /// If `group` is not a group of this manager.
    pub fn block_table(&self, req: RequestId, group: usize) -> &[BlockId] {
        assert!(group < self.groups.len(), "no KV group {group}");
        self.requests
            .get(&req)
            .map_or(&[], |states| states[group].table.as_slice())
    }

    /// Physical blocks of `req` in each group, in group order (one lookup for all of them; empty
    /// slices if `req` holds none).
    pub fn block_tables(&self, req: RequestId) -> impl Iterator<Item = &[BlockId]> + '_ {
        let states = self.requests.get(&req);
        (0..self.groups.len())
            .map(move |g| states.map_or(&[][..], |states| states[g].table.as_slice()))
    }

    /// Register in the prefix cache every full block of `req` whose tokens are all computed (the first
    /// `num_computed_tokens` of `tokens`), in every group. Idempotent (each block is handled once;
    /// the request remembers how far it got). No-op when prefix caching is off or `req` is unknown.
    ///
    /// If an identical block (same prefix) is already cached, the request keeps its own block (block
    /// ids never change under a running request) and the cache entry stays as it is; the request's
    /// later blocks chain from that entry. If the hash slot holds *different* content (a collision),
    /// the block is not cached and neither are this request's later blocks in that group.
    pub fn cache_computed(&mut self, req: RequestId, tokens: &[u32], num_computed_tokens: usize) {
        if !self.enable_prefix_caching {
            return;
        }
        let bs = self.block_size;
        let Some(states) = self.requests.get(&req) else {
            return;
        };
        let full = (num_computed_tokens.min(tokens.len()) / bs).min(states[0].table.len());
        if states
            .iter()
            .all(|s| s.cache_stopped || s.num_cached >= full)
        {
            return; // no block completed since the last call (most decode steps)
        }
        self.keep_hashes(req, tokens, full);
        let (Some(states), Some(hashes)) =
            (self.requests.get_mut(&req), self.block_hashes.get(&req))
        else {
            return;
        };
        for (state, group) in states.iter_mut().zip(&self.groups) {
            if state.cache_stopped {
                continue;
            }
            for i in state.num_cached..full {
                let chunk = &tokens[i * bs..(i + 1) * bs];
                let hash = group_key(hashes[i], group.salt);
                let block = state.table[i];
                debug_assert!(block != RELEASED_BLOCK, "block {i} released before caching");
                debug_assert!(
                    self.pool.cached(block).is_none(),
                    "unprocessed block {block} is cached"
                );
                let entry = match self.pool.lookup(hash, state.last_entry, chunk) {
                    Lookup::Hit { entry, .. } => Some(entry),
                    // a ghost of this very block is revived by it
                    Lookup::Absent | Lookup::Ghost { .. } => {
                        self.pool.register(block, hash, state.last_entry, chunk)
                    }
                    Lookup::Mismatch => None,
                };
                let Some(entry) = entry else {
                    state.cache_stopped = true;
                    break;
                };
                state.num_cached = i + 1;
                state.last_entry = entry;
            }
        }
    }

    /// Leading blocks no query of group `g` from position `next_query` on reads: those wholly
    /// before its window (0 without a window).
    fn unseen_blocks(&self, g: usize, next_query: usize) -> usize {
        blocks_before_window(self.groups[g].window, self.block_size, next_query)
    }

    /// The longest request that can run alone in this pool with steps of at most `max_chunk`
    /// tokens ([`super::max_request_tokens`]).
    pub fn max_request_tokens(&self, max_chunk: usize) -> usize {
        super::max_request_tokens(
            self.num_blocks(),
            self.block_size,
            &self.windows(),
            max_chunk,
        )
    }

    /// In each group with an attention window of `w` positions, release the leading blocks of
    /// `req` that no query from position `num_computed_tokens` on can read: block `i` once
    /// `(i + 1) * block_size <= num_computed_tokens + 1 - w` (its last position is before the next
    /// query's window). Call it after `cache_computed` for the same tokens, so a released block is already
    /// in the prefix cache (it stays findable there until evicted, like any freed cached block).
    /// The entries become [`RELEASED_BLOCK`]; the table keeps its length, so token `t` still lives
    /// in `table[t / block_size]`. Returns how many blocks were released now, over the groups.
    /// No-op for groups without a window or an unknown `req`; never releases a block holding a
    /// position not yet computed.
    pub fn release_outside_window(&mut self, req: RequestId, num_computed_tokens: usize) -> usize {
        let Some(states) = self.requests.get_mut(&req) else {
            return 0;
        };
        let mut released = 0;
        for (state, group) in states.iter_mut().zip(&self.groups) {
            let unseen = blocks_before_window(group.window, self.block_size, num_computed_tokens);
            let upto = unseen.min(state.table.len());
            let first = state.num_released;
            for entry in state.table.iter_mut().take(upto).skip(first) {
                self.pool.release(*entry);
                *entry = RELEASED_BLOCK;
            }
            released += upto.saturating_sub(first);
            state.num_released = state.num_released.max(upto);
        }
        self.stats.window_released_blocks += released as u64;
        released
    }

    /// Release every block of `req` (refcount − 1) and forget its chain hashes: it is finished or
    /// aborted. Blocks reaching 0 go to the tail of the free list; cached ones stay findable until
    /// evicted. The tables are released tail first, block i of every group before block i − 1 of
    /// any, so that under LRU the end of a sequence is evicted before its shared prefix. Unknown
    /// req: no-op.
    pub fn free(&mut self, req: RequestId) {
        self.block_hashes.remove(&req);
        self.release_blocks(req);
    }

    /// Release every block of `req` as [`free`](Self::free) does, keeping its chain hashes: it is
    /// preempted, and comes back with the same tokens (and more) to be looked up again
    /// (`lookup_prefix_for`) without hashing them again.
    pub fn preempt(&mut self, req: RequestId) {
        self.release_blocks(req);
    }

    fn release_blocks(&mut self, req: RequestId) {
        let Some(states) = self.requests.remove(&req) else {
            return;
        };
        let len = states[0].table.len();
        for i in (0..len).rev() {
            for state in &states {
                if i >= state.num_released {
                    self.pool.release(state.table[i]);
                }
            }
        }
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            evictions: self.pool.evictions(),
            ..self.stats
        }
    }

    /// Check every invariant (for tests): refcount of each block == number of tables holding it;
    /// free list == blocks with refcount 0, each once; hash map entries point at blocks whose
    /// stored hash matches; no block in two tables unless it is a cached (hashed) block, and never
    /// in two groups' tables; a request's tables all of one length; num_free + num_used ==
    /// num_blocks; per-table caching progress and chain state.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool.check_invariants()?;
        let n = self.pool.num_blocks();
        let mut holders = vec![0u32; n];
        // the group each held block belongs to (its tables must all be that group's)
        let mut block_group: HashMap<BlockId, usize> = HashMap::new();
        for (req, states) in &self.requests {
            if states.len() != self.groups.len() {
                return Err(format!(
                    "request {req}: {} tables for {} groups",
                    states.len(),
                    self.groups.len()
                ));
            }
            if states
                .iter()
                .any(|s| s.table.len() != states[0].table.len())
            {
                return Err(format!("request {req}: tables of different lengths"));
            }
            let mut in_tables = std::collections::HashSet::new();
            for (g, (s, group)) in states.iter().zip(&self.groups).enumerate() {
                if s.num_released > s.table.len() {
                    return Err(format!(
                        "request {req} group {g}: {} released blocks but a table of {}",
                        s.num_released,
                        s.table.len()
                    ));
                }
                let (released, owned) = s.table.split_at(s.num_released);
                if released.iter().any(|&b| b != RELEASED_BLOCK) {
                    return Err(format!(
                        "request {req} group {g}: a released entry holds a block"
                    ));
                }
                if s.num_released > 0 && group.window.is_none() {
                    return Err(format!(
                        "request {req} group {g}: blocks released without a window"
                    ));
                }
                for &b in owned {
                    if b as usize >= n {
                        return Err(format!("request {req} holds out-of-range block {b}"));
                    }
                    if !in_tables.insert(b) {
                        return Err(format!("request {req} holds block {b} twice"));
                    }
                    if *block_group.entry(b).or_insert(g) != g {
                        return Err(format!("block {b} is in the tables of two groups"));
                    }
                    holders[b as usize] += 1;
                }
                if s.num_cached > s.table.len() {
                    return Err(format!(
                        "request {req} group {g}: {} cached blocks but a table of {}",
                        s.num_cached,
                        s.table.len()
                    ));
                }
                let at_root = s.last_entry == group.root_entry;
                if (s.num_cached == 0) != at_root {
                    return Err(format!(
                        "request {req} group {g}: chain state does not match {} cached blocks",
                        s.num_cached
                    ));
                }
            }
        }
        let mut used = 0;
        for (b, &h) in holders.iter().enumerate() {
            let rc = self.pool.ref_cnt(b as BlockId);
            if rc != h {
                return Err(format!("block {b}: refcount {rc} but held by {h} tables"));
            }
            if h > 1 && self.pool.cached(b as BlockId).is_none() {
                return Err(format!("uncached block {b} is shared by {h} tables"));
            }
            if !self.enable_prefix_caching && self.pool.cached(b as BlockId).is_some() {
                return Err(format!("block {b} is cached with prefix caching off"));
            }
            used += usize::from(rc > 0);
        }
        if used != self.num_used_blocks() || self.num_free_blocks() + self.num_used_blocks() != n {
            return Err(format!(
                "{used} blocks in use, num_used {} + num_free {} vs {n} blocks",
                self.num_used_blocks(),
                self.num_free_blocks()
            ));
        }
        if self.stats.prefix_hit_tokens > self.stats.prefix_queries_tokens {
            return Err("more prefix hit tokens than queried".into());
        }
        Ok(())
    }

    /// The chain hashes `req` keeps (tests).
    #[cfg(test)]
    fn kept_hashes(&self, req: RequestId) -> &[BlockHash] {
        self.block_hashes.get(&req).map_or(&[], Vec::as_slice)
    }

    /// Comparable image of the whole state (tests: "on Err nothing changed").
    #[cfg(test)]
    fn snapshot(&self) -> impl PartialEq + std::fmt::Debug {
        let mut reqs: Vec<_> = self
            .requests
            .iter()
            .flat_map(|(&r, states)| {
                states.iter().enumerate().map(move |(g, s)| {
                    (
                        r,
                        g,
                        s.table.clone(),
                        s.num_released,
                        s.num_cached,
                        s.last_entry,
                        s.cache_stopped,
                    )
                })
            })
            .collect();
        reqs.sort_unstable_by_key(|x| (x.0, x.1));
        (self.pool.snapshot(), reqs, self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prompt of `n` tokens `base, base+1, ...`.
    fn seq(base: u32, n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| base + i).collect()
    }

    /// Admit `req` with its prefix hit, allocate for all of `tokens`, compute and cache everything.
    /// Returns the hit.
    fn run_prompt(m: &mut KvCacheManager, req: RequestId, tokens: &[u32]) -> usize {
        let hit = m.lookup_prefix(tokens);
        m.allocate(req, tokens, hit, tokens.len()).unwrap();
        m.cache_computed(req, tokens, tokens.len());
        m.check_invariants().unwrap();
        hit
    }

    #[test]
    fn allocate_free_returns_every_block() {
        let mut m = KvCacheManager::new(10, 4, true);
        m.allocate(1, &seq(0, 9), 0, 9).unwrap(); // 3 blocks
        m.allocate(2, &seq(100, 4), 0, 4).unwrap(); // 1 block
        m.allocate(1, &seq(0, 13), 0, 13).unwrap(); // grows to 4 blocks
        assert_eq!(m.block_table(1, 0).len(), 4);
        assert_eq!(m.block_table(2, 0).len(), 1);
        assert_eq!(m.num_used_blocks(), 5);
        assert_eq!(m.num_free_blocks(), 5);
        m.check_invariants().unwrap();
        // Allocating within the current blocks is a no-op.
        m.allocate(1, &seq(0, 13), 0, 10).unwrap();
        assert_eq!(m.block_table(1, 0).len(), 4);
        m.free(1);
        m.free(2);
        m.free(3); // unknown: no-op
        assert_eq!(m.num_free_blocks(), 10);
        assert_eq!(m.num_used_blocks(), 0);
        assert!(m.block_table(1, 0).is_empty());
        m.check_invariants().unwrap();
    }

    #[test]
    fn prefix_hit_while_live_and_after_free() {
        let mut m = KvCacheManager::new(16, 4, true);
        let a = seq(0, 10); // 2 full blocks + 2 tokens
        assert_eq!(run_prompt(&mut m, 1, &a), 0);
        // Same prompt with a different tail: both full blocks hit.
        let mut b = a[..8].to_vec();
        b.extend([77, 78, 79]);
        assert_eq!(m.lookup_prefix(&b), 8);
        // Only the first block shared.
        let mut c = a[..4].to_vec();
        c.extend([50, 51, 52, 53, 54]);
        assert_eq!(m.lookup_prefix(&c), 4);
        // First token differs: nothing.
        let mut d = a.clone();
        d[0] = 999;
        assert_eq!(m.lookup_prefix(&d), 0);
        // After freeing, before eviction, still a hit; stats count the allocate.
        m.free(1);
        assert_eq!(m.lookup_prefix(&b), 8);
        assert_eq!(run_prompt(&mut m, 2, &b), 8);
        assert_eq!(&m.block_table(2, 0)[..2], &[0, 1]);
        let st = m.stats();
        assert_eq!(st.prefix_queries_tokens, (a.len() + b.len()) as u64);
        assert_eq!(st.prefix_hit_tokens, 8);
        assert_eq!(st.evictions, 0);
    }

    #[test]
    fn no_hit_after_eviction() {
        let mut m = KvCacheManager::new(3, 2, true);
        let a = seq(0, 5); // 3 blocks, 2 full
        run_prompt(&mut m, 1, &a);
        m.free(1);
        assert_eq!(m.lookup_prefix(&a), 4);
        // Another request takes every block: all cached blocks are evicted.
        run_prompt(&mut m, 2, &seq(100, 6));
        assert_eq!(m.stats().evictions, 2);
        m.free(2);
        assert_eq!(m.lookup_prefix(&a), 0);
        m.check_invariants().unwrap();
    }

    #[test]
    fn lookup_leaves_at_least_one_token() {
        let mut m = KvCacheManager::new(8, 4, true);
        let a = seq(0, 8); // exactly two blocks
        run_prompt(&mut m, 1, &a);
        assert_eq!(
            m.lookup_prefix(&a),
            4,
            "last block not taken: its last token must be computed"
        );
        assert_eq!(m.lookup_prefix(&a[..5]), 4);
        assert_eq!(m.lookup_prefix(&a[..4]), 0);
        assert_eq!(m.lookup_prefix(&a[..1]), 0);
        assert_eq!(m.lookup_prefix(&[]), 0);
        let mut longer = a.clone();
        longer.push(9);
        assert_eq!(m.lookup_prefix(&longer), 8);
    }

    #[test]
    fn shared_blocks_have_refcount_two() {
        let mut m = KvCacheManager::new(8, 2, true);
        let a = seq(0, 5);
        run_prompt(&mut m, 1, &a);
        let mut b = a[..4].to_vec();
        b.push(42);
        assert_eq!(run_prompt(&mut m, 2, &b), 4);
        let (ta, tb) = (m.block_table(1, 0).to_vec(), m.block_table(2, 0).to_vec());
        assert_eq!(ta[..2], tb[..2]);
        assert_ne!(ta[2], tb[2]);
        for &blk in &ta[..2] {
            assert_eq!(m.pool.ref_cnt(blk), 2);
        }
        assert_eq!(m.num_used_blocks(), 4);
        m.free(1);
        for &blk in &tb[..2] {
            assert_eq!(m.pool.ref_cnt(blk), 1);
        }
        assert_eq!(m.num_used_blocks(), 3);
        m.check_invariants().unwrap();
        m.free(2);
        assert_eq!(m.num_free_blocks(), 8);
    }

    #[test]
    fn no_free_blocks_is_all_or_nothing() {
        let mut m = KvCacheManager::new(4, 2, true);
        let a = seq(0, 5); // 3 blocks
        run_prompt(&mut m, 1, &a);
        // Growing past the pool fails and changes nothing.
        let before = m.snapshot();
        let err = m.allocate(1, &a, 0, 11).unwrap_err();
        assert_eq!(err, KvError::NoFreeBlocks { needed: 3, free: 1 });
        assert_eq!(m.snapshot(), before);
        // A new request whose prefix hit blocks are free counts them as taken from the free list.
        m.free(1);
        run_prompt(&mut m, 2, &seq(50, 2)); // 1 block in use, 3 free (2 of them cached hits)
        let hit = m.lookup_prefix(&a);
        assert_eq!(hit, 4);
        assert_eq!(m.blocks_needed(3, hit, 8), 2);
        assert!(!m.can_allocate(3, &a, hit, 8));
        let before = m.snapshot();
        let err = m.allocate(3, &a, hit, 8).unwrap_err();
        assert_eq!(err, KvError::NoFreeBlocks { needed: 4, free: 3 });
        assert_eq!(m.snapshot(), before);
        m.check_invariants().unwrap();
        // One block fewer fits: hits (2) + 1 new.
        assert!(m.can_allocate(3, &a, hit, 6));
        m.allocate(3, &a, hit, 6).unwrap();
        assert_eq!(m.num_free_blocks(), 0);
        m.check_invariants().unwrap();
    }

    #[test]
    fn eviction_is_lru_and_frees_tail_first() {
        let mut m = KvCacheManager::new(6, 2, true);
        let a = seq(0, 7); // blocks: 3 full + 1 partial = 4 blocks
        run_prompt(&mut m, 1, &a);
        let ta = m.block_table(1, 0).to_vec();
        let b = seq(100, 3); // 2 blocks
        run_prompt(&mut m, 2, &b);
        let tb = m.block_table(2, 0).to_vec();
        m.free(1);
        m.free(2);
        // Free list: the request freed first comes first, each table tail first.
        let mut expect: Vec<BlockId> = ta.iter().rev().copied().collect();
        expect.extend(tb.iter().rev());
        assert_eq!(m.pool.free_list(), expect);
        // Taking 2 blocks evicts a's partial last block (uncached) and its third full block: a keeps a
        // 2-block hit. Taking one more leaves a 1-block hit.
        m.allocate(3, &[], 0, 4).unwrap();
        assert_eq!(m.block_table(3, 0), &[ta[3], ta[2]]);
        assert_eq!(m.stats().evictions, 1);
        assert_eq!(m.lookup_prefix(&a), 4);
        m.allocate(3, &[], 0, 6).unwrap();
        assert_eq!(m.lookup_prefix(&a), 2);
        assert_eq!(m.lookup_prefix(&b), 2, "b, freed later, is still cached");
        m.check_invariants().unwrap();
    }

    #[test]
    fn prefix_caching_off_no_hits_never_hashes() {
        fn no_hash(_: BlockHash, _: &[u32]) -> BlockHash {
            panic!("hashed with prefix caching off")
        }
        let mut m = KvCacheManager::with_hash_fn(8, 2, false, no_hash);
        assert!(!m.prefix_caching());
        let a = seq(0, 7);
        assert_eq!(run_prompt(&mut m, 1, &a), 0);
        assert_eq!(m.lookup_prefix(&a), 0);
        assert_eq!(run_prompt(&mut m, 2, &a), 0);
        let (ta, tb) = (m.block_table(1, 0).to_vec(), m.block_table(2, 0).to_vec());
        assert!(
            ta.iter().all(|x| !tb.contains(x)),
            "no sharing without prefix caching"
        );
        m.free(1);
        assert_eq!(m.lookup_prefix(&a), 0);
        assert!((0..8).all(|b| m.pool.cached(b).is_none()));
        assert_eq!(m.stats(), KvStats::default());
        m.free(2);
        m.check_invariants().unwrap();
    }

    thread_local! {
        static HASHED_BLOCKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// [`hash_block`], counting the blocks it hashes on this thread.
    fn counted_hash(parent: BlockHash, tokens: &[u32]) -> BlockHash {
        HASHED_BLOCKS.with(|n| n.set(n.get() + 1));
        hash_block(parent, tokens)
    }

    fn hashed_blocks() -> usize {
        HASHED_BLOCKS.with(|n| n.replace(0))
    }

    #[test]
    fn a_request_waiting_for_room_is_hashed_once() {
        // 3 groups; request 1 holds 40 blocks in each, request 3 one in each: 2 of 125 free
        let windows = [None, Some(8), Some(8)];
        let mut m = KvCacheManager::with_hash_fn(125, 2, true, counted_hash).with_groups(&windows);
        let prompt = seq(0, 81);
        m.allocate(1, &prompt[..80], 0, 80).unwrap();
        m.cache_computed(1, &prompt[..80], 80);
        assert_eq!(hashed_blocks(), 40, "each block once for every group");
        m.allocate(3, &seq(500, 2), 0, 2).unwrap();
        assert_eq!(m.num_free_blocks(), 2);

        // request 2 shares request 1's 80 tokens but needs a new block in every group for its
        // last one: it waits, looked up again every step
        for _ in 0..3 {
            let hit = m.lookup_prefix_for(2, &prompt);
            assert_eq!(hit, 80);
            assert_eq!(
                m.allocate(2, &prompt, hit, 81),
                Err(KvError::NoFreeBlocks { needed: 3, free: 2 })
            );
        }
        assert_eq!(
            hashed_blocks(),
            40,
            "its prompt hashed at the first lookup only"
        );

        // room made: admitted from the kept hashes, its computed blocks cached without rehashing
        m.free(3);
        let hit = m.lookup_prefix_for(2, &prompt);
        m.allocate(2, &prompt, hit, 81).unwrap();
        let mut tokens = prompt.clone();
        tokens.push(7);
        m.cache_computed(2, &tokens, 82);
        assert_eq!(
            hashed_blocks(),
            1,
            "only the block its first output completed"
        );
        m.check_invariants().unwrap();
        // preempted: its blocks go back, its hashes stay for the recompute's lookup
        m.preempt(2);
        assert!(m.block_table(2, 0).is_empty());
        assert_eq!(m.lookup_prefix_for(2, &tokens), 80);
        assert_eq!(hashed_blocks(), 0);
        m.check_invariants().unwrap();
        // freed: its hashes go with it, a new lookup hashes again
        m.free(2);
        assert_eq!(m.lookup_prefix_for(2, &prompt), 80);
        assert_eq!(hashed_blocks(), 40);
    }

    #[test]
    fn identical_block_already_cached_keeps_own_block() {
        let mut m = KvCacheManager::new(16, 2, true);
        let a = seq(0, 5);
        // Both admitted before either cached: no hits, distinct blocks.
        m.allocate(1, &a, m.lookup_prefix(&a), 5).unwrap();
        m.allocate(2, &a, m.lookup_prefix(&a), 5).unwrap();
        m.cache_computed(1, &a, 5);
        let tb = m.block_table(2, 0).to_vec();
        m.cache_computed(2, &a, 5);
        m.cache_computed(2, &a, 5); // idempotent
        assert_eq!(
            m.block_table(2, 0),
            tb.as_slice(),
            "block ids never change under a request"
        );
        assert!(
            tb.iter().all(|&b| m.pool.cached(b).is_none()),
            "cache entries stay request 1's"
        );
        m.check_invariants().unwrap();
        // Request 2 grows; its next full block chains from request 1's entries.
        let mut a2 = a.clone();
        a2.extend([90, 91, 92]);
        m.allocate(2, &a2, 0, 8).unwrap();
        m.cache_computed(2, &a2, 8);
        let t2 = m.block_table(2, 0).to_vec();
        assert!(m.pool.cached(t2[2]).is_some());
        let mut probe = a2.clone();
        probe.push(0);
        assert_eq!(m.lookup_prefix(&probe), 8);
        assert_eq!(run_prompt(&mut m, 3, &probe), 8);
        let t1 = m.block_table(1, 0).to_vec();
        assert_eq!(m.block_table(3, 0)[..4], [t1[0], t1[1], t2[2], t2[3]]);
        m.check_invariants().unwrap();
    }

    #[test]
    fn cache_computed_only_full_computed_blocks() {
        let mut m = KvCacheManager::new(8, 4, true);
        let a = seq(0, 12);
        m.allocate(1, &a, 0, 12).unwrap();
        m.cache_computed(1, &a, 7); // one full computed block
        assert_eq!(m.lookup_prefix(&a), 4);
        m.cache_computed(1, &a, 8);
        assert_eq!(m.lookup_prefix(&a), 8);
        m.cache_computed(1, &a, 100); // clamped to the tokens
        assert_eq!(m.lookup_prefix(&a), 8, "capped by the one-token rule");
        m.check_invariants().unwrap();
    }

    /// Hash of the tokens only (ignores the parent, so chains collide freely): sum of the tokens.
    fn sum_hash(_: BlockHash, tokens: &[u32]) -> BlockHash {
        BlockHash(tokens.iter().map(|&t| t as u64).sum())
    }

    #[test]
    fn collision_on_block_tokens_is_not_a_hit() {
        let mut m = KvCacheManager::with_hash_fn(8, 2, true, sum_hash);
        let a = [1, 3, 5, 5, 9];
        run_prompt(&mut m, 1, &a);
        // [2, 2] hashes like [1, 3]: must not hit.
        assert_eq!(m.lookup_prefix(&[2, 2, 5, 5, 9]), 0);
        assert_eq!(run_prompt(&mut m, 2, &[2, 2, 5, 5, 9]), 0);
        // Its first block could not be registered (slot taken by other content) and caching stopped.
        assert!(m
            .block_table(2, 0)
            .iter()
            .all(|&b| m.pool.cached(b).is_none()));
        assert_eq!(m.lookup_prefix(&a), 4);
        m.check_invariants().unwrap();
    }

    #[test]
    fn collision_on_parent_chain_is_not_a_hit() {
        // a = [1,3 | 5,5 | 9] caches blocks a0 (hash 4), a1 (hash 10). a0 is then evicted while a1 stays
        // cached: a0 stays as a ghost (a1 descends from it). b = [2,2 | 5,5 | 9] hashes its first
        // block to 4 too: the ghost's tokens differ, so b neither hits nor registers there, and a1
        // (hash 10, equal tokens [5,5]) is never reached through b's chain.
        let mut m = KvCacheManager::with_hash_fn(3, 2, true, sum_hash);
        let a = [1, 3, 5, 5, 9];
        run_prompt(&mut m, 1, &a);
        let ta = m.block_table(1, 0).to_vec();
        m.free(1);
        // Test hook: pin a1 so that it is not evicted.
        m.pool.acquire(ta[1]);
        let b = [2, 2, 5, 5, 9];
        assert_eq!(m.lookup_prefix(&b), 0);
        m.allocate(2, &b, 0, 4).unwrap();
        assert_eq!(m.block_table(2, 0), &[ta[2], ta[0]]);
        assert_eq!(m.stats().evictions, 1);
        assert_eq!(m.pool.num_ghosts(), 1, "a0 is a ghost");
        m.cache_computed(2, &b, 4);
        assert!(
            m.pool.cached(ta[2]).is_none() && m.pool.cached(ta[0]).is_none(),
            "b's first block collided with a0's ghost: caching stopped"
        );
        m.pool.release(ta[1]);
        m.check_invariants().unwrap();
        m.free(2);
        assert_eq!(m.lookup_prefix(&b), 0, "never a1 through b's chain");
        assert_eq!(
            m.lookup_prefix(&a),
            0,
            "a0 was evicted, and without a window it is needed"
        );
        m.check_invariants().unwrap();
    }

    #[test]
    fn invariant_checker_catches_corruption() {
        let mut m = KvCacheManager::new(4, 2, true);
        m.allocate(1, &seq(0, 3), 0, 3).unwrap();
        m.allocate(2, &seq(10, 3), 0, 3).unwrap();
        m.check_invariants().unwrap();
        // An uncached block in two tables.
        let mut bad = m.clone();
        let b0 = bad.block_table(1, 0)[0];
        bad.requests.get_mut(&2).unwrap()[0].table.push(b0);
        bad.pool.acquire(b0);
        assert!(bad.check_invariants().is_err());
        // Refcount off by one.
        let mut bad = m.clone();
        bad.pool.acquire(b0);
        assert!(bad.check_invariants().is_err());
    }

    #[test]
    #[should_panic(expected = "stale")]
    fn stale_prefix_hit_panics() {
        let mut m = KvCacheManager::new(2, 2, true);
        let a = seq(0, 3);
        run_prompt(&mut m, 1, &a);
        m.free(1);
        let hit = m.lookup_prefix(&a);
        m.allocate(2, &[], 0, 4).unwrap(); // evicts a's cached block
        let _ = m.allocate(3, &a, hit, 3);
    }

    #[test]
    fn window_releases_the_blocks_no_query_can_see() {
        // blocks of 4, a window of 6: a query at position p reads keys p - 5 ..= p
        let mut m = KvCacheManager::new(16, 4, false).with_window(Some(6));
        m.allocate(1, &seq(0, 20), 0, 20).unwrap(); // 5 blocks
        let owned = m.block_table(1, 0).to_vec();
        // the next query is at 20 and reads 15..=20: blocks 0-2 (positions 0..12) are out of reach
        assert_eq!(m.release_outside_window(1, 20), 3);
        assert_eq!(m.block_table(1, 0)[..3], [RELEASED_BLOCK; 3]);
        assert_eq!(m.block_table(1, 0)[3..], owned[3..]);
        assert_eq!((m.num_used_blocks(), m.num_free_blocks()), (2, 14));
        assert_eq!(m.release_outside_window(1, 20), 0, "released once");
        m.check_invariants().unwrap();
        // growing keeps the table's indexing: token t in table[t / 4]
        m.allocate(1, &seq(0, 24), 0, 24).unwrap();
        assert_eq!(m.block_table(1, 0).len(), 6);
        // a query at 22 reads 17..=22: block 3 (12..16) is out of reach, block 4 (16..20) is not
        assert_eq!(m.release_outside_window(1, 22), 1);
        // at 24 it reads 19..=24: block 4 still holds 19
        assert_eq!(m.release_outside_window(1, 24), 0);
        assert_eq!(m.release_outside_window(1, 25), 1);
        assert_eq!(m.num_used_blocks(), 1);
        assert_eq!(m.stats().window_released_blocks, 5);
        m.check_invariants().unwrap();
        m.free(1);
        assert_eq!(m.num_free_blocks(), 16);
        m.check_invariants().unwrap();
        // the edge: a window of exactly one block at a block boundary
        let mut m = KvCacheManager::new(8, 4, false).with_window(Some(4));
        m.allocate(2, &seq(0, 8), 0, 8).unwrap();
        assert_eq!(
            m.release_outside_window(2, 6),
            0,
            "a query at 6 reads 3..=6"
        );
        assert_eq!(
            m.release_outside_window(2, 7),
            1,
            "a query at 7 reads 4..=7"
        );
        // without a window nothing is released
        let mut m = KvCacheManager::new(8, 4, false);
        m.allocate(3, &seq(0, 32), 0, 32).unwrap();
        assert_eq!(m.release_outside_window(3, 32), 0);
        assert_eq!(m.num_free_blocks(), 0);
    }

    #[test]
    fn blocks_released_by_the_window_stay_cached_for_prefix_hits() {
        let mut m = KvCacheManager::new(8, 4, true).with_window(Some(3));
        let a = seq(0, 13);
        run_prompt(&mut m, 1, &a); // 4 blocks, 3 full and cached
        let table = m.block_table(1, 0).to_vec();
        // a query at 13 reads 11..=13: blocks 0 and 1 go back to the pool, still cached
        assert_eq!(m.release_outside_window(1, 13), 2);
        assert_eq!(m.num_used_blocks(), 2);
        m.check_invariants().unwrap();
        // a new request with the same 12-token prefix hits all three cached blocks, but its first
        // new token (at 12) reads 10..=12 only: it takes block 2 and skips blocks 0 and 1, which
        // stay free (request 1 keeps its RELEASED entries)
        let mut b = a[..12].to_vec();
        b.push(99);
        assert_eq!(m.lookup_prefix(&b), 12);
        assert!(m.can_allocate(2, &b, 12, 13));
        m.allocate(2, &b, 12, 13).unwrap();
        assert_eq!(m.block_table(2, 0)[..2], [RELEASED_BLOCK; 2]);
        assert_eq!(m.block_table(2, 0)[2], table[2]);
        assert_eq!(
            m.num_used_blocks(),
            3,
            "blocks 2 and 3 of request 1, and one new"
        );
        assert_eq!(m.stats().prefix_hit_tokens, 12);
        m.check_invariants().unwrap();
        // it goes on caching from the hit's chain: its block 3 (tokens 12..16) once computed
        let mut b16 = b.clone();
        b16.extend([100, 101, 102]);
        m.allocate(2, &b16, 0, 16).unwrap();
        m.cache_computed(2, &b16, 16);
        m.check_invariants().unwrap();
        let mut c = b16.clone();
        c.push(7);
        assert_eq!(m.lookup_prefix(&c), 16);
        m.free(1);
        m.free(2);
        assert_eq!(m.num_free_blocks(), 8);
        m.check_invariants().unwrap();
    }

    /// Push `n` blocks of other content through the pool (a request allocated and freed), so the
    /// free list's head — the least recently released blocks — is evicted first.
    fn churn(m: &mut KvCacheManager, req: RequestId, n: usize) {
        let bs = m.block_size();
        m.allocate(req, &seq(10_000, n * bs), 0, n * bs).unwrap();
        m.free(req);
    }

    /// Under a window, a long prompt's early blocks are released first and so evicted first; they
    /// stay as ghosts for the blocks chained from them, and the same prefix still hits: the blocks
    /// the new request's window reads are cached, those before it are not needed. Without a window
    /// the same state gives no hit (every block is read).
    #[test]
    fn a_windowed_hit_reaches_past_evicted_blocks_through_ghosts() {
        for window in [Some(3), None] {
            let mut m = KvCacheManager::new(8, 2, true).with_window(window);
            // a's 13 tokens take blocks 0..=6 (6 full), block 7 stays free; under the window
            // blocks 0..=4 then go back, in order, and at the end the rest, tail first
            let a = seq(0, 13);
            run_prompt(&mut m, 1, &a);
            m.release_outside_window(1, 13);
            m.free(1);
            // 4 blocks of other content take the free list's head: 7, then under the window a's
            // blocks 0, 1, 2 (released first); without it a's blocks 6, 5, 4 (freed first)
            churn(&mut m, 2, 4);
            m.check_invariants().unwrap();
            let mut b = a[..12].to_vec();
            b.push(99);
            match window {
                Some(_) => {
                    assert_eq!(
                        m.pool.num_ghosts(),
                        3,
                        "blocks 0..3 evicted, kept as ghosts"
                    );
                    // the first new token (at 12) reads 10..=12: blocks 5 and 6, both cached
                    assert_eq!(m.lookup_prefix(&b), 12);
                    m.allocate(3, &b, 12, 13).unwrap();
                    let t = m.block_table(3, 0).to_vec();
                    assert_eq!(t[..5], [RELEASED_BLOCK; 5]);
                    assert!(m.pool.cached(t[5]).is_some());
                    m.check_invariants().unwrap();
                }
                None => {
                    // a's leaf blocks went without descendants: no ghosts, and the hit stops at
                    // block 4, which every query reads
                    assert_eq!(m.pool.num_ghosts(), 0);
                    assert_eq!(m.lookup_prefix(&b), 8);
                }
            }
        }
    }

    /// A ghost is verified as a cached block is: under a window, where a hit may run through a
    /// ghost, one whose hash collides with another prefix's first block (its tokens differ) stops
    /// the walk, so the cached block chained from it is never shared with that prefix; the prefix
    /// it does hold still hits through it.
    #[test]
    fn a_ghost_of_other_content_is_not_a_hit() {
        let mut m = KvCacheManager::with_hash_fn(3, 2, true, sum_hash).with_window(Some(2));
        let a = [1, 3, 5, 5, 9];
        run_prompt(&mut m, 1, &a);
        let ta = m.block_table(1, 0).to_vec();
        m.free(1);
        // pin a1 (test hook); 4 tokens of other content evict a's partial block and a0, a ghost
        m.pool.acquire(ta[1]);
        m.allocate(2, &[7, 7, 7, 7], 0, 4).unwrap();
        assert_eq!(m.pool.num_ghosts(), 1);
        m.free(2);
        // [2, 2] sums like [1, 3]: no hit through a0's ghost
        assert_eq!(m.lookup_prefix(&[2, 2, 5, 5, 9]), 0);
        // a itself: a0's ghost matches, a1 is cached and is all its first new token's window reads
        assert_eq!(m.lookup_prefix(&a), 4);
        m.pool.release(ta[1]);
        m.check_invariants().unwrap();
    }

    /// A ghost whose content is computed again is revived under its old identity, so the chain
    /// behind it is whole again; a ghost goes when the last entry chained from it goes.
    #[test]
    fn ghosts_revive_and_go_with_their_descendants() {
        let mut m = KvCacheManager::new(10, 2, true).with_window(Some(2));
        let a = seq(0, 9); // 4 full blocks, a's blocks 0..=4
        run_prompt(&mut m, 1, &a);
        let ta = m.block_table(1, 0).to_vec();
        m.release_outside_window(1, 8); // the query at 8 reads 7..=8: blocks 0, 1, 2 go
        m.free(1);
        churn(&mut m, 2, 8); // the 5 never-used blocks, then a's 0, 1, 2: ghosts
        assert_eq!(m.pool.num_ghosts(), 3);
        m.check_invariants().unwrap();
        // pin a's block 3 (test hook) so the next allocation cannot evict it
        m.pool.acquire(ta[3]);
        // a request computing a from scratch (no hit taken) revives the ghosts with its blocks
        m.allocate(3, &a, 0, 9).unwrap();
        m.cache_computed(3, &a, 9);
        assert_eq!(m.pool.num_ghosts(), 0, "all three revived");
        let t = m.block_table(3, 0).to_vec();
        assert!(t[..3].iter().all(|&b| m.pool.cached(b).is_some()));
        assert!(
            m.pool.cached(t[3]).is_none(),
            "a's own block 3 is still the cached one"
        );
        m.pool.check_invariants().unwrap();
        m.free(3);
        m.pool.release(ta[3]);
        m.check_invariants().unwrap();
        // evicting everything: each ghost chain goes with its last cached descendant
        churn(&mut m, 4, 10);
        assert_eq!(m.pool.num_ghosts(), 0);
        assert_eq!(m.lookup_prefix(&a), 0);
        m.check_invariants().unwrap();
    }

    /// Without a window too: once a prefix's first block is evicted while the blocks after it stay
    /// cached, a request recomputing the prefix revives the first block's ghost, which reconnects
    /// the cached chain behind it, so the next request hits the whole prefix again (a fresh entry
    /// would leave those blocks unreachable: they name the evicted one as their parent).
    #[test]
    fn a_recomputed_ghost_reconnects_the_cached_chain_behind_it() {
        let mut m = KvCacheManager::new(6, 2, true);
        let a = seq(0, 9); // 4 full blocks and a partial one: blocks 0..=4
        run_prompt(&mut m, 1, &a);
        let ta = m.block_table(1, 0).to_vec();
        m.free(1);
        // pin a's blocks 1..=3 (test hook) so that 3 blocks of other content evict block 5, a's
        // partial block 4 and a's block 0 only
        for &b in &ta[1..4] {
            m.pool.acquire(b);
        }
        churn(&mut m, 2, 3);
        assert_eq!(m.pool.num_ghosts(), 1);
        for &b in &ta[1..4] {
            m.pool.release(b);
        }
        m.check_invariants().unwrap();
        assert_eq!(m.lookup_prefix(&a), 0, "block 0 must be recomputed");
        assert_eq!(run_prompt(&mut m, 3, &a), 0);
        assert_eq!(m.pool.num_ghosts(), 0, "revived");
        m.free(3);
        assert_eq!(m.lookup_prefix(&a), 8);
        m.check_invariants().unwrap();
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        const NUM_SLOTS: usize = 5;

        #[derive(Debug, Clone)]
        enum Op {
            /// Admit a request in `slot` (if free) with `prefix[p][..cut]` + `suffix`, first chunk `chunk`.
            Admit {
                slot: usize,
                p: usize,
                cut: usize,
                suffix: Vec<u32>,
                chunk: usize,
            },
            /// Compute `n` more tokens of the request in `slot` (appending outputs as needed).
            Step {
                slot: usize,
                n: usize,
                out: u32,
            },
            Free {
                slot: usize,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (
                    0..NUM_SLOTS,
                    0..3usize,
                    0..16usize,
                    prop::collection::vec(0..3u32, 0..6),
                    1..8usize
                )
                    .prop_map(|(slot, p, cut, suffix, chunk)| Op::Admit {
                        slot,
                        p,
                        cut,
                        suffix,
                        chunk
                    }),
                (0..NUM_SLOTS, 1..6usize, 0..3u32).prop_map(|(slot, n, out)| Op::Step {
                    slot,
                    n,
                    out
                }),
                (0..NUM_SLOTS).prop_map(|slot| Op::Free { slot }),
            ]
        }

        /// Live request in the model.
        struct Live {
            tokens: Vec<u32>,
            computed: usize,
        }

        /// Each request keeps the chain hashes of its own tokens (a prefix of them), and a slot
        /// without a live request keeps none.
        fn check_kept_hashes(
            m: &KvCacheManager,
            live: &[Option<Live>],
            hash_fn: HashFn,
        ) -> Result<(), TestCaseError> {
            for (slot, l) in live.iter().enumerate() {
                let kept = m.kept_hashes(slot as u64);
                match l {
                    Some(l) => {
                        let all = hash_full_blocks(hash_fn, &l.tokens, m.block_size());
                        prop_assert!(kept.len() <= all.len());
                        prop_assert_eq!(kept, &all[..kept.len()]);
                    }
                    None => prop_assert!(kept.is_empty(), "slot {} keeps hashes", slot),
                }
            }
            Ok(())
        }

        /// Few distinct hash buckets: collisions everywhere.
        fn weak_hash(parent: BlockHash, tokens: &[u32]) -> BlockHash {
            BlockHash(hash_block(parent, tokens).0 % 3)
        }

        fn check_sharing(m: &KvCacheManager, live: &[Option<Live>]) -> Result<(), TestCaseError> {
            let bs = m.block_size();
            for (i, a) in live.iter().enumerate() {
                let Some(a) = a else { continue };
                for (j, b) in live.iter().enumerate().skip(i + 1) {
                    let Some(b) = b else { continue };
                    for g in 0..m.num_groups() {
                        check_pair_sharing(m, g, (i, a), (j, b), bs)?;
                    }
                }
            }
            Ok(())
        }

        /// Blocks two live requests share in group g sit at the same position and hold the same
        /// prefix (check_invariants already keeps a block out of two groups' tables).
        fn check_pair_sharing(
            m: &KvCacheManager,
            g: usize,
            (i, a): (usize, &Live),
            (j, b): (usize, &Live),
            bs: usize,
        ) -> Result<(), TestCaseError> {
            let (ta, tb) = (m.block_table(i as u64, g), m.block_table(j as u64, g));
            for (x, blk) in ta.iter().enumerate().filter(|e| *e.1 != RELEASED_BLOCK) {
                if let Some(y) = tb.iter().position(|o| o == blk) {
                    prop_assert_eq!(x, y, "shared block at different positions");
                    let end = (x + 1) * bs;
                    prop_assert!(a.tokens.len() >= end && b.tokens.len() >= end);
                    prop_assert_eq!(
                        &a.tokens[..end],
                        &b.tokens[..end],
                        "shared block, different prefixes"
                    );
                }
            }
            Ok(())
        }

        /// In every group, every live request's next query must find its own K/V at every position
        /// of its window (the whole context without one), in a block of that group, and its
        /// released entries must be exactly the blocks before that window.
        fn check_window(
            m: &KvCacheManager,
            live: &[Option<Live>],
            content: &[(usize, Vec<u32>)],
        ) -> Result<(), TestCaseError> {
            for (g, window) in m.windows().into_iter().enumerate() {
                check_group_window(m, g, window, live, content)?;
            }
            Ok(())
        }

        fn check_group_window(
            m: &KvCacheManager,
            g: usize,
            window: Option<usize>,
            live: &[Option<Live>],
            content: &[(usize, Vec<u32>)],
        ) -> Result<(), TestCaseError> {
            let bs = m.block_size();
            for (req, l) in live.iter().enumerate() {
                let Some(l) = l else { continue };
                let table = m.block_table(req as u64, g);
                let lo = window.map_or(0, |w| (l.computed + 1).saturating_sub(w));
                let released = table.iter().take_while(|&&b| b == RELEASED_BLOCK).count();
                prop_assert_eq!(released, (lo / bs).min(table.len()), "request {}", req);
                for pos in lo..l.computed {
                    let blk = table[pos / bs];
                    prop_assert!(
                        blk != RELEASED_BLOCK,
                        "position {} of {} released",
                        pos,
                        req
                    );
                    let (group, held) = &content[blk as usize];
                    prop_assert!(
                        *group == g && held.len() > pos && held[..=pos] == l.tokens[..=pos],
                        "request {} group {} position {}: its block was overwritten",
                        req,
                        g,
                        pos
                    );
                }
            }
            Ok(())
        }

        #[allow(clippy::too_many_arguments)]
        fn run(
            num_blocks: usize,
            block_size: usize,
            caching: bool,
            weak: bool,
            windows: Vec<Option<usize>>,
            prefixes: Vec<Vec<u32>>,
            ops: Vec<Op>,
        ) -> Result<(), TestCaseError> {
            let hash_fn: HashFn = if weak { weak_hash } else { hash_block };
            let mut m = KvCacheManager::with_hash_fn(num_blocks, block_size, caching, hash_fn)
                .with_groups(&windows);
            let mut live: Vec<Option<Live>> = (0..NUM_SLOTS).map(|_| None).collect();
            // What each physical block holds: the group whose layers wrote it and the prefix of the
            // sequence that wrote it, up to the end of the block (only the last block's slots may
            // be partly written).
            let mut content: Vec<(usize, Vec<u32>)> = vec![(0, Vec::new()); num_blocks];
            let write = |content: &mut Vec<(usize, Vec<u32>)>,
                         m: &KvCacheManager,
                         req: usize,
                         l: &Live,
                         from: usize| {
                for g in 0..m.num_groups() {
                    let table = m.block_table(req as u64, g);
                    for pos in from..l.computed {
                        let blk = table[pos / block_size] as usize;
                        let upto = (pos / block_size) * block_size + pos % block_size + 1;
                        content[blk] = (g, l.tokens[..upto].to_vec());
                    }
                }
            };
            for op in ops {
                match op {
                    Op::Admit {
                        slot,
                        p,
                        cut,
                        suffix,
                        chunk,
                    } => {
                        if live[slot].is_some() {
                            continue;
                        }
                        let pre = &prefixes[p];
                        let mut tokens = pre[..cut.min(pre.len())].to_vec();
                        tokens.extend(suffix);
                        if tokens.is_empty() {
                            tokens.push(1);
                        }
                        let hit = m.lookup_prefix(&tokens);
                        // the scheduler's lookup, which keeps the request's chain hashes
                        prop_assert_eq!(m.lookup_prefix_for(slot as u64, &tokens), hit);
                        prop_assert_eq!(hit % block_size, 0);
                        prop_assert!(hit < tokens.len());
                        if !caching {
                            prop_assert_eq!(hit, 0);
                        }
                        let total = (hit + chunk).min(tokens.len());
                        let can = m.can_allocate(slot as u64, &tokens, hit, total);
                        let before = m.snapshot();
                        match m.allocate(slot as u64, &tokens, hit, total) {
                            Ok(()) => {
                                prop_assert!(can);
                                for (g, window) in windows.iter().enumerate() {
                                    let table = m.block_table(slot as u64, g).to_vec();
                                    prop_assert_eq!(
                                        table.len(),
                                        total.div_ceil(block_size).max(hit / block_size)
                                    );
                                    // Hit blocks hold exactly this prefix, written by this group
                                    // (those it took: under a window the ones before its first
                                    // query's window are skipped).
                                    let skipped = window
                                        .map_or(0, |w| (hit + 1).saturating_sub(w) / block_size);
                                    for (i, &blk) in table[..hit / block_size].iter().enumerate() {
                                        if i < skipped {
                                            prop_assert_eq!(blk, RELEASED_BLOCK);
                                            continue;
                                        }
                                        let (group, held) = &content[blk as usize];
                                        prop_assert_eq!(*group, g);
                                        prop_assert_eq!(&held[..], &tokens[..(i + 1) * block_size]);
                                    }
                                }
                                let l = Live {
                                    tokens,
                                    computed: total,
                                };
                                write(&mut content, &m, slot, &l, hit);
                                m.cache_computed(slot as u64, &l.tokens, l.computed);
                                m.release_outside_window(slot as u64, l.computed);
                                live[slot] = Some(l);
                            }
                            Err(KvError::NoFreeBlocks { needed, free }) => {
                                prop_assert!(!can);
                                prop_assert!(needed > free);
                                prop_assert_eq!(m.snapshot(), before);
                                // given up (as the scheduler aborts a waiting request): its
                                // kept hashes go, and the slot's next request has other tokens
                                m.free(slot as u64);
                            }
                        }
                    }
                    Op::Step { slot, n, out } => {
                        let Some(l) = live[slot].as_mut() else {
                            continue;
                        };
                        let target = l.computed + n;
                        let mut tokens = l.tokens.clone();
                        while tokens.len() < target + 1 {
                            tokens.push(out);
                        }
                        let needed = m.blocks_needed(slot as u64, 0, target);
                        let before = m.snapshot();
                        match m.allocate(slot as u64, &tokens, 0, target) {
                            Ok(()) => {
                                let from = l.computed;
                                l.tokens = tokens;
                                l.computed = target;
                                let l = live[slot].as_ref().unwrap();
                                write(&mut content, &m, slot, l, from);
                                m.cache_computed(slot as u64, &l.tokens, l.computed);
                                m.release_outside_window(slot as u64, l.computed);
                            }
                            Err(KvError::NoFreeBlocks {
                                needed: e_needed,
                                free,
                            }) => {
                                prop_assert_eq!(e_needed, needed);
                                prop_assert!(needed > free);
                                prop_assert_eq!(m.snapshot(), before);
                            }
                        }
                    }
                    Op::Free { slot } => {
                        m.free(slot as u64);
                        live[slot] = None;
                    }
                }
                if let Err(e) = m.check_invariants() {
                    return Err(TestCaseError::fail(e));
                }
                check_sharing(&m, &live)?;
                check_window(&m, &live, &content)?;
                check_kept_hashes(&m, &live, hash_fn)?;
            }
            for slot in 0..NUM_SLOTS {
                m.free(slot as u64);
            }
            prop_assert_eq!(m.num_free_blocks(), m.num_blocks());
            prop_assert_eq!(m.num_used_blocks(), 0);
            if let Err(e) = m.check_invariants() {
                return Err(TestCaseError::fail(e));
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn random_ops_keep_invariants(
                num_blocks in 1..14usize,
                block_size in 1..5usize,
                caching in prop::bool::weighted(0.8),
                weak in prop::bool::weighted(0.3),
                windows in prop::collection::vec(prop::option::of(1..10usize), 1..4),
                prefixes in prop::collection::vec(prop::collection::vec(0..3u32, 0..16), 3),
                ops in prop::collection::vec(op(), 1..60),
            ) {
                run(num_blocks, block_size, caching, weak, windows, prefixes, ops)?;
            }
        }
    }
}
