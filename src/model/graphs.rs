//! Decode steps replayed from recorded graphs (CUDA graphs): which steps qualify, how they are
//! padded to a fixed shape, and the bookkeeping that keeps a recording valid.
//!
//! A recorded graph replays exactly the launches it recorded: the same grid sizes, kernel
//! arguments and device addresses. So a step is replayed only from a graph recorded for its
//! [`GraphKey`]:
//!
//! - `batch`: the number of sequences rounded up to a bucket of [`BATCH_BUCKETS`] (1, 2, 4, …,
//!   256). The step is padded to it with padding sequences: one token (id 0, position 0) whose K/V
//!   goes to [`PAD_SLOT`] (written nowhere) and whose attention reads one key of block 0; their
//!   logits are computed and dropped.
//! - `ctx`: the longest context rounded up to a power of two (at least [`MIN_CTX_BUCKET`]). It
//!   fixes the block-table width (`ctx / block_size` columns) and the decode attention's launch
//!   plan (`BatchMeta::decode_plan_ctx`: the split-KV decode's split count and partition length),
//!   so a step of any context up to `ctx` reads its metadata correctly and plans the same launches.
//!
//! Only pure decode steps qualify: one new token per sequence, logits of every row in order, at
//! most 256 sequences. Steps with prefill chunks run eagerly (their shapes vary too much).
//!
//! The metadata of a recorded key lives in device arrays prepared once and refilled in place before
//! each replay (`Backend::refill`). What else the graph points at must not move: the model's
//! activation workspace (recordings are dropped when it grows), the KV cache (recordings are bound
//! to one cache by its id) and the backend's own scratch buffers (bound to `Backend::graph_epoch`).
//!
//! The first step of a key runs eagerly (its result is the step's result) and then is recorded;
//! the recording is replayed once at once and its logits compared with the eager ones. A failed
//! recording or a mismatch turns graphs off for the model, with the reason in [`GraphStats`], so a
//! broken recording can cost speed but never a wrong token.

use std::collections::HashMap;

use crate::backend::{Backend, BatchMeta, PAD_SLOT};

/// Batch-size buckets a decode step is padded to.
pub const BATCH_BUCKETS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Smallest context bucket: below it the decode attention runs one split anyway.
pub const MIN_CTX_BUCKET: usize = 256;

/// Replayed logits may differ from the eager run by this much relative to max(1, |logit|)
/// (4 bf16 ulps): the same kernels on the same inputs agree bit for bit, but cuBLAS may pick
/// another algorithm while recording. Stale buffers give differences of order 1.
pub const CHECK_TOLERANCE: f32 = 1.0 / 64.0;

/// The shape a recorded decode step is padded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct GraphKey {
    /// sequences (= tokens) of the padded step
    pub batch: usize,
    /// context the block tables and the decode plan cover
    pub ctx: usize,
}

/// The key of a step that can be replayed from a graph, None for a step that runs eagerly:
/// anything but one new token per sequence with logits for every row in batch order, or more
/// sequences than the largest bucket.
pub fn graph_key(meta: &BatchMeta) -> Option<GraphKey> {
    let n = meta.num_seqs();
    if n == 0 || meta.num_tokens() != n || meta.query_start_loc.len() != n + 1 {
        return None;
    }
    let one_token_each = meta
        .query_start_loc
        .iter()
        .enumerate()
        .all(|(i, &q)| q as usize == i);
    let every_row_in_order = meta.logits_indices.len() == n
        && meta
            .logits_indices
            .iter()
            .enumerate()
            .all(|(i, &r)| r as usize == i);
    if !one_token_each || !every_row_in_order {
        return None;
    }
    let batch = *BATCH_BUCKETS.iter().find(|&&b| b >= n)?;
    let longest = meta.seq_lens.iter().copied().max().unwrap_or(1) as usize;
    Some(GraphKey {
        batch,
        ctx: longest.next_power_of_two().max(MIN_CTX_BUCKET),
    })
}

/// `meta` (a step [`graph_key`] accepted) padded to `key`: `key.batch` sequences, block tables of
/// `ceil(key.ctx / block_size)` columns, the decode plan of `key.ctx`. The real sequences keep
/// their rows; padding sequences follow (module docs).
pub fn pad_to_key(meta: &BatchMeta, key: GraphKey, block_size: usize) -> BatchMeta {
    let n = meta.num_seqs();
    let groups = meta.num_kv_groups;
    let width = key.ctx.div_ceil(block_size.max(1)).max(1);
    let pad = key.batch.saturating_sub(n);
    let mut out = BatchMeta {
        token_ids: meta.token_ids.clone(),
        positions: meta.positions.clone(),
        slot_mapping: Vec::with_capacity(groups * key.batch),
        query_start_loc: (0..=key.batch as u32).collect(),
        seq_lens: meta.seq_lens.clone(),
        block_tables: Vec::with_capacity(groups * key.batch * width),
        max_blocks_per_seq: width,
        num_kv_groups: groups,
        logits_indices: (0..key.batch as u32).collect(),
        decode_plan_ctx: Some(key.ctx as u32),
    };
    // per KV group: the real rows' slots and tables, then the padding rows'
    for g in 0..groups {
        out.slot_mapping.extend_from_slice(meta.slot_mapping_of(g));
        out.slot_mapping.extend(std::iter::repeat_n(PAD_SLOT, pad));
        for s in 0..n {
            let row = meta.block_table(g, s);
            let keep = row.len().min(width);
            out.block_tables.extend_from_slice(&row[..keep]);
            out.block_tables
                .extend(std::iter::repeat_n(0, width - keep));
        }
        out.block_tables.extend(std::iter::repeat_n(0, pad * width));
    }
    out.token_ids.extend(std::iter::repeat_n(0, pad));
    out.positions.extend(std::iter::repeat_n(0, pad));
    out.seq_lens.extend(std::iter::repeat_n(1, pad));
    out
}

/// Largest |replayed − eager| relative to max(1, |eager|) (NaN on either side counts as
/// infinitely different).
pub fn relative_difference(replayed: &[f32], eager: &[f32]) -> f32 {
    if replayed.len() != eager.len() {
        return f32::INFINITY;
    }
    replayed
        .iter()
        .zip(eager)
        .map(|(&r, &e)| {
            let d = (r - e).abs() / e.abs().max(1.0);
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f32::max)
}

/// What the graphs of a model did (results files record it per phase).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GraphStats {
    /// Whether decode steps are replayed from graphs (off: `--no-cuda-graphs`, a backend without
    /// graphs, or turned off after a failure; see `disabled_reason`).
    pub enabled: bool,
    /// Graphs recorded (one per key, again after an invalidation).
    pub recorded: u64,
    /// Decode steps replayed from a graph.
    pub replayed: u64,
    /// Steps that ran eagerly (prefill and mixed steps, decode steps of a key's first use or
    /// above the largest bucket, every step with graphs off).
    pub eager: u64,
    /// Times the recorded graphs were dropped (workspace grew, another KV cache, backend buffers
    /// reallocated).
    pub invalidations: u64,
    /// Largest relative difference between a recording's check replay and its eager run.
    pub max_check_difference: f32,
    /// Why graphs were turned off after a failure.
    pub disabled_reason: Option<String>,
}

impl GraphStats {
    /// The counts since `before` (an earlier copy); the state (enabled, reason, largest
    /// difference) as of now.
    pub fn since(&self, before: &GraphStats) -> GraphStats {
        GraphStats {
            recorded: self.recorded - before.recorded.min(self.recorded),
            replayed: self.replayed - before.replayed.min(self.replayed),
            eager: self.eager - before.eager.min(self.eager),
            invalidations: self.invalidations - before.invalidations.min(self.invalidations),
            ..self.clone()
        }
    }
}

/// The workspace rows a model needs for steps of up to `max_seqs` sequences when decode steps are
/// padded to buckets.
pub fn padded_rows(max_seqs: usize) -> usize {
    BATCH_BUCKETS
        .iter()
        .copied()
        .find(|&b| b >= max_seqs)
        .unwrap_or(max_seqs)
}

/// What recorded graphs point at; a change drops them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    kv_cache: u64,
    workspace: u64,
    backend_epoch: u64,
}

/// One recorded key: its device metadata (refilled before each replay) and the graph.
struct Recorded<B: Backend> {
    meta: B::Meta,
    graph: B::Graph,
}

/// The recorded graphs of one model.
pub struct StepGraphs<B: Backend> {
    recorded: HashMap<GraphKey, Recorded<B>>,
    binding: Option<Binding>,
    stats: GraphStats,
}

impl<B: Backend> StepGraphs<B> {
    pub fn new(enabled: bool) -> Self {
        Self {
            recorded: HashMap::new(),
            binding: None,
            stats: GraphStats {
                enabled,
                ..GraphStats::default()
            },
        }
    }

    /// Graphs off from the start for a model whose steps cannot be recorded, saying why in the
    /// stats (`disabled_reason`).
    pub fn unavailable(reason: String) -> Self {
        let mut g = Self::new(false);
        g.stats.disabled_reason = Some(reason);
        g
    }

    pub fn enabled(&self) -> bool {
        self.stats.enabled
    }

    pub fn stats(&self) -> &GraphStats {
        &self.stats
    }

    /// Turn graphs on or off (off drops the recordings).
    pub fn set_enabled(&mut self, on: bool) {
        self.stats.enabled = on;
        if !on {
            self.recorded.clear();
        }
    }

    /// Turn graphs off for good after a failure, saying why (once on stderr).
    pub fn disable(&mut self, reason: String) {
        eprintln!("warning: CUDA graphs turned off, decode steps run eagerly: {reason}");
        self.stats.disabled_reason = Some(reason);
        self.set_enabled(false);
    }

    /// Make sure the recordings point at these buffers; drop them when not.
    pub fn bind(&mut self, kv_cache: u64, workspace: u64, backend_epoch: u64) {
        let now = Binding {
            kv_cache,
            workspace,
            backend_epoch,
        };
        if self.binding != Some(now) {
            if !self.recorded.is_empty() {
                self.stats.invalidations += 1;
            }
            self.recorded.clear();
            self.binding = Some(now);
        }
    }

    /// The recording of `key`, if any: its metadata to refill and its graph.
    pub fn get_mut(&mut self, key: GraphKey) -> Option<(&mut B::Meta, &B::Graph)> {
        self.recorded.get_mut(&key).map(|r| (&mut r.meta, &r.graph))
    }

    pub fn insert(&mut self, key: GraphKey, meta: B::Meta, graph: B::Graph, difference: f32) {
        self.recorded.insert(key, Recorded { meta, graph });
        self.stats.recorded += 1;
        self.stats.max_check_difference = self.stats.max_check_difference.max(difference);
    }

    pub fn count_replay(&mut self) {
        self.stats.replayed += 1;
    }

    pub fn count_eager(&mut self) {
        self.stats.eager += 1;
    }

    /// Keys recorded now, sorted.
    pub fn keys(&self) -> Vec<GraphKey> {
        let mut k: Vec<GraphKey> = self.recorded.keys().copied().collect();
        k.sort();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KvGeometry;

    /// A decode step of `lens` contexts, block tables of consecutive blocks per sequence.
    fn decode_step(lens: &[u32], block_size: usize) -> (BatchMeta, KvGeometry) {
        let width = lens
            .iter()
            .map(|&l| (l as usize).div_ceil(block_size))
            .max()
            .unwrap_or(1);
        let mut m = BatchMeta {
            max_blocks_per_seq: width,
            query_start_loc: vec![0],
            ..Default::default()
        };
        let mut next = 1u32; // block 0 stays free, as padding reads it
        for (s, &len) in lens.iter().enumerate() {
            let blocks = (len as usize).div_ceil(block_size);
            let table: Vec<u32> = (next..next + blocks as u32).collect();
            next += blocks as u32;
            let pos = len - 1;
            m.token_ids.push(s as u32 + 3);
            m.positions.push(pos);
            m.slot_mapping.push(
                table[pos as usize / block_size] * block_size as u32 + pos % block_size as u32,
            );
            m.query_start_loc.push(s as u32 + 1);
            m.seq_lens.push(len);
            m.block_tables.extend_from_slice(&table);
            m.block_tables
                .extend(std::iter::repeat_n(0, width - blocks));
            m.logits_indices.push(s as u32);
        }
        let geom = KvGeometry {
            num_blocks: next as usize,
            block_size,
            num_kv_heads: 1,
            head_dim: 4,
        };
        (m, geom)
    }

    #[test]
    fn keys_round_batch_and_context_up() {
        let (m, _) = decode_step(&[5, 300, 17], 16);
        assert_eq!(graph_key(&m), Some(GraphKey { batch: 4, ctx: 512 }));
        let (m, _) = decode_step(&[1], 16);
        assert_eq!(graph_key(&m), Some(GraphKey { batch: 1, ctx: 256 }));
        let (m, _) = decode_step(&[4096; 17], 16);
        assert_eq!(
            graph_key(&m),
            Some(GraphKey {
                batch: 32,
                ctx: 4096
            })
        );
        let (m, _) = decode_step(&[4097; 256], 16);
        assert_eq!(
            graph_key(&m),
            Some(GraphKey {
                batch: 256,
                ctx: 8192
            })
        );
    }

    #[test]
    fn only_pure_decode_steps_with_every_logit_qualify() {
        let (m, _) = decode_step(&[3; 257], 16);
        assert_eq!(graph_key(&m), None, "above the largest bucket");
        let (mut m, _) = decode_step(&[3, 4], 16);
        m.logits_indices = vec![1];
        assert_eq!(graph_key(&m), None, "not every row's logits");
        let (mut m, _) = decode_step(&[3, 4], 16);
        m.logits_indices = vec![1, 0];
        assert_eq!(graph_key(&m), None, "rows out of order");
        // a prefill of two tokens next to a decode
        let (mut m, _) = decode_step(&[3, 4], 16);
        m.token_ids.push(9);
        m.positions = vec![2, 2, 3];
        m.query_start_loc = vec![0, 1, 3];
        assert_eq!(graph_key(&m), None);
        assert_eq!(graph_key(&BatchMeta::default()), None);
    }

    #[test]
    fn padded_steps_are_valid_and_keep_the_real_rows() {
        for lens in [vec![1u32], vec![5, 300, 17], vec![16, 32, 33, 1000, 7]] {
            let (m, geom) = decode_step(&lens, 16);
            let key = graph_key(&m).unwrap();
            let p = pad_to_key(&m, key, 16);
            p.validate(&geom).unwrap();
            let n = lens.len();
            assert_eq!(p.num_seqs(), key.batch);
            assert_eq!(p.num_tokens(), key.batch);
            assert_eq!(p.max_blocks_per_seq, key.ctx / 16);
            assert_eq!(p.decode_plan_ctx, Some(key.ctx as u32));
            assert_eq!(&p.token_ids[..n], &m.token_ids[..]);
            assert_eq!(&p.slot_mapping[..n], &m.slot_mapping[..]);
            assert!(p.slot_mapping[n..].iter().all(|&s| s == PAD_SLOT));
            assert!(p.seq_lens[n..].iter().all(|&l| l == 1));
            for (s, &len) in lens.iter().enumerate() {
                let real = m.block_table(0, s);
                let used = (len as usize).div_ceil(16);
                assert_eq!(&p.block_table(0, s)[..used], &real[..used]);
            }
            assert_eq!(p.logits_indices, (0..key.batch as u32).collect::<Vec<_>>());
            // the padded step qualifies for the same key
            assert_eq!(graph_key(&p), Some(key));
        }
    }

    #[test]
    fn each_kv_group_is_padded_on_its_own() {
        // group 1: the same sequences in blocks shifted past group 0's, its first entry released
        let lens = [5u32, 40, 17];
        let (m, geom) = decode_step(&lens, 16);
        let shift = geom.num_blocks as u32;
        let shifted =
            |slots: &[u32]| -> Vec<u32> { slots.iter().map(|s| s + shift * 16).collect() };
        let mut tables1: Vec<u32> = m.block_tables.iter().map(|b| b + shift).collect();
        tables1[m.max_blocks_per_seq] = crate::kv::RELEASED_BLOCK; // sequence 1's block 0
        let two = BatchMeta {
            slot_mapping: [m.slot_mapping.clone(), shifted(&m.slot_mapping)].concat(),
            block_tables: [m.block_tables.clone(), tables1].concat(),
            num_kv_groups: 2,
            ..m.clone()
        };
        let geom2 = KvGeometry {
            num_blocks: 2 * geom.num_blocks,
            ..geom
        };
        two.validate(&geom2).unwrap();
        let key = graph_key(&two).unwrap();
        let p = pad_to_key(&two, key, 16);
        p.validate(&geom2).unwrap();
        let n = lens.len();
        for g in 0..2 {
            assert_eq!(
                &p.slot_mapping_of(g)[..n],
                two.slot_mapping_of(g),
                "group {g}"
            );
            assert!(p.slot_mapping_of(g)[n..].iter().all(|&s| s == PAD_SLOT));
            for (s, &len) in lens.iter().enumerate() {
                let used = (len as usize).div_ceil(16);
                assert_eq!(&p.block_table(g, s)[..used], &two.block_table(g, s)[..used]);
            }
        }
        assert_eq!(p.block_table(1, 1)[0], crate::kv::RELEASED_BLOCK);
    }

    #[test]
    fn a_plan_context_shorter_than_a_sequence_is_rejected() {
        let (mut m, geom) = decode_step(&[300], 16);
        m.decode_plan_ctx = Some(256);
        assert!(m.validate(&geom).unwrap_err().contains("decode_plan_ctx"));
    }

    #[test]
    fn stats_deltas_and_padded_rows() {
        let before = GraphStats {
            enabled: true,
            recorded: 2,
            replayed: 10,
            eager: 3,
            ..GraphStats::default()
        };
        let now = GraphStats {
            recorded: 3,
            replayed: 25,
            eager: 4,
            invalidations: 1,
            ..before.clone()
        };
        let d = now.since(&before);
        assert_eq!(
            (d.recorded, d.replayed, d.eager, d.invalidations),
            (1, 15, 1, 1)
        );
        assert!(d.enabled);
        assert_eq!(padded_rows(1), 1);
        assert_eq!(padded_rows(3), 4);
        assert_eq!(padded_rows(256), 256);
        assert_eq!(padded_rows(300), 300);
    }

    #[test]
    fn differences_are_relative_and_nan_is_infinite() {
        assert_eq!(relative_difference(&[1.0, 100.0], &[1.0, 100.0]), 0.0);
        assert_eq!(relative_difference(&[1.5, 101.0], &[1.0, 100.0]), 0.5);
        assert_eq!(relative_difference(&[f32::NAN], &[1.0]), f32::INFINITY);
        assert_eq!(relative_difference(&[1.0], &[1.0, 2.0]), f32::INFINITY);
    }

    #[test]
    fn bindings_drop_recordings_and_count_it() {
        let mut g = StepGraphs::<crate::backend::cpu::CpuBackend>::new(true);
        g.bind(1, 1, 0);
        let key = GraphKey { batch: 1, ctx: 256 };
        g.insert(key, BatchMeta::default(), (), 0.0);
        g.bind(1, 1, 0);
        assert_eq!(g.keys(), vec![key]);
        g.bind(2, 1, 0); // another KV cache
        assert!(g.keys().is_empty());
        assert_eq!(g.stats().invalidations, 1);
        g.insert(key, BatchMeta::default(), (), 1e-3);
        g.bind(2, 1, 5); // the backend reallocated its scratch
        assert!(g.get_mut(key).is_none());
        assert_eq!(g.stats().invalidations, 2);
        assert_eq!(g.stats().recorded, 2);
        assert_eq!(g.stats().max_check_difference, 1e-3);
        g.disable("test".into());
        assert!(!g.enabled());
        assert_eq!(g.stats().disabled_reason.as_deref(), Some("test"));
    }
}
