//! Which layers share a block table: the KV cache's groups (vLLM's "KV cache groups").
//!
//! A block table tells, per request, which physical block holds each run of `block_size`
//! positions. Layers that attend the same way (the whole context, or the same sliding window)
//! need blocks for the same positions, so they can share one table. A hybrid model (Gemma 2: a
//! window on every other layer; Gemma 3: on 5 of every 6) has layers that do not: its sliding
//! layers need only the blocks of their window, its full layers every block.
//!
//! The layers are therefore split into groups of one kind each, every group of the same number of
//! layers G (the *slots*), and the memory is G tensors of `[num_blocks, block_size, kv_heads,
//! head_dim]` for K and as many for V. Layer `l` lives in slot `slot_of(l)` of group
//! `group_of(l)`; a block id handed to group g stands for that block in each of the G tensors,
//! used by g's layers — one pool of blocks serves every group, each request holding one table per
//! group, and a sliding group's table gives back the blocks its window left while the full
//! group's keeps them. G is the smallest layer count among the kinds (vLLM's rule; the largest
//! when the counts are within 25% of each other, as vLLM does too), so a kind
//! whose count is not a multiple of G has a last group short of layers: its unused slots are the
//! padding paid for one page size. A model whose layers all attend alike has one group of all its
//! layers (G = num_layers): the plain layout.

/// The layers of one group and how they attend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvGroup {
    /// Every layer of the group attends to at most this many positions (its own included); None:
    /// the whole context.
    pub window: Option<usize>,
    /// The group's layers, ascending; layer `layers[s]` uses slot s.
    pub layers: Vec<usize>,
}

/// The model's layers in KV cache groups (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    groups: Vec<KvGroup>,
    /// Layers per group: the tensors (K and V each) the cache holds.
    slots: usize,
    /// Per layer: (group, slot).
    places: Vec<(usize, usize)>,
}

impl KvLayout {
    /// One group of all `num_layers` layers attending within `window` (None: the whole context).
    ///
    /// # Panics
    /// If `num_layers == 0`.
    pub fn single(num_layers: usize, window: Option<usize>) -> Self {
        Self::from_windows(&vec![window; num_layers])
    }

    /// The groups for layers attending within `layer_windows[l]` each (None: the whole context):
    /// one group when they all agree, else the layers of each kind (full first, then windows from
    /// the narrowest) split in layer order into groups of G layers, G the smallest count of a kind
    /// (the largest when every count is within 25% of the smallest), as vLLM groups them.
    ///
    /// # Panics
    /// If `layer_windows` is empty or a window is 0.
    pub fn from_windows(layer_windows: &[Option<usize>]) -> Self {
        assert!(!layer_windows.is_empty(), "a KV layout of no layers");
        assert!(
            !layer_windows.contains(&Some(0)),
            "an attention window of 0 positions"
        );
        let mut kinds: Vec<Option<usize>> = layer_windows.to_vec();
        kinds.sort_unstable(); // None (full attention) first, then windows ascending
        kinds.dedup();
        let layers_of = |kind: Option<usize>| -> Vec<usize> {
            (0..layer_windows.len())
                .filter(|&l| layer_windows[l] == kind)
                .collect()
        };
        // (kinds is not empty: there is a layer)
        let counts: Vec<usize> = kinds.iter().map(|&k| layers_of(k).len()).collect();
        let fewest = counts.iter().copied().min().unwrap_or(layer_windows.len());
        let most = counts.iter().copied().max().unwrap_or(layer_windows.len());
        // vLLM's rule: groups of the smallest kind's count (Gemma 3's 5:1 pattern pads nothing in
        // the full group), unless the kinds' counts are within 25% of each other, where groups
        // of the largest count pad less (12 sliding + 13 full: one padding slot in 2 groups, not
        // 11 in 3 — which would sit in a full group, paid at every position of the context)
        let slots = if 4 * most < 5 * fewest { most } else { fewest };
        let mut groups = Vec::new();
        for &kind in &kinds {
            for chunk in layers_of(kind).chunks(slots) {
                groups.push(KvGroup {
                    window: kind,
                    layers: chunk.to_vec(),
                });
            }
        }
        let mut places = vec![(0, 0); layer_windows.len()];
        for (g, group) in groups.iter().enumerate() {
            for (s, &l) in group.layers.iter().enumerate() {
                places[l] = (g, s);
            }
        }
        KvLayout {
            groups,
            slots,
            places,
        }
    }

    /// The layout of `model`'s KV cache: its layers grouped by their attention window
    /// ([`from_windows`](Self::from_windows)), or with `keep_all_blocks` one group of full attention
    /// (every block kept while its request runs, windows or not: the full-footprint baseline). A
    /// window that spans the whole context (`max_context`, e.g. under `--max-model-len`) never
    /// leaves a block behind, so its layers count as full attention here (one group, not a group
    /// of tables that release nothing).
    pub fn for_model(model: &crate::model::ModelConfig, keep_all_blocks: bool) -> Self {
        let layers = model.num_layers.max(1);
        if keep_all_blocks {
            return Self::single(layers, None);
        }
        let windows: Vec<Option<usize>> = (0..layers)
            .map(|l| model.layer_window(l).filter(|&w| w < model.max_context))
            .collect();
        Self::from_windows(&windows)
    }

    pub fn groups(&self) -> &[KvGroup] {
        &self.groups
    }

    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }

    /// Layers per group: the K (and V) tensors of the cache, each `[num_blocks, block_size,
    /// kv_heads, head_dim]`, so a block is `slots` layers' worth of memory.
    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn num_layers(&self) -> usize {
        self.places.len()
    }

    /// The group of layer `layer`, whose block table it reads and writes.
    pub fn group_of(&self, layer: usize) -> usize {
        self.places[layer].0
    }

    /// The tensor (of `slots`) layer `layer` keeps its K/V in.
    pub fn slot_of(&self, layer: usize) -> usize {
        self.places[layer].1
    }

    /// Each group's window, in group order (the KV manager's groups).
    pub fn windows(&self) -> Vec<Option<usize>> {
        self.groups.iter().map(|g| g.window).collect()
    }

    /// Slots no layer uses (the last group of a kind short of layers), summed over the groups:
    /// tensor memory paid per block and never written.
    pub fn padding_slots(&self) -> usize {
        self.groups
            .iter()
            .map(|g| self.slots - g.layers.len())
            .sum()
    }

    /// One line for start-up output and reports, e.g. "7 groups of 4 layers: 1 full (4 layers),
    /// 6 with a 512-token window (22 layers; 2 padding slots)"; "" for one group.
    pub fn describe(&self) -> String {
        if self.groups.len() == 1 {
            return String::new();
        }
        let mut kinds: Vec<(Option<usize>, usize, usize)> = Vec::new();
        for g in &self.groups {
            match kinds.last_mut() {
                Some((w, n, layers)) if *w == g.window => {
                    *n += 1;
                    *layers += g.layers.len();
                }
                _ => kinds.push((g.window, 1, g.layers.len())),
            }
        }
        let parts: Vec<String> = kinds
            .iter()
            .map(|&(w, n, layers)| match w {
                None => format!("{n} full ({})", count(layers, "layer")),
                Some(w) => format!("{n} with a {w}-token window ({})", count(layers, "layer")),
            })
            .collect();
        let padding = match self.padding_slots() {
            0 => String::new(),
            p => format!("; {p} padding slot{}", if p == 1 { "" } else { "s" }),
        };
        format!(
            "{} KV groups of {}: {}{padding}",
            self.groups.len(),
            count(self.slots, "layer"),
            parts.join(", ")
        )
    }
}

/// "1 layer", "3 layers".
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_that_attend_alike_make_one_group() {
        let full = KvLayout::single(4, None);
        assert_eq!(full.num_groups(), 1);
        assert_eq!(full.slots(), 4);
        assert_eq!((full.group_of(3), full.slot_of(3)), (0, 3));
        assert_eq!(full.describe(), "");
        let sliding = KvLayout::from_windows(&[Some(8); 3]);
        assert_eq!(sliding.windows(), vec![Some(8)]);
        assert_eq!(sliding.padding_slots(), 0);
    }

    #[test]
    fn gemma2_alternating_layers_make_two_groups_of_half() {
        // window on layers 0, 2, 4
        let w = |l: usize| (l % 2 == 0).then_some(16);
        let layout = KvLayout::from_windows(&(0..6).map(w).collect::<Vec<_>>());
        assert_eq!(layout.slots(), 3);
        assert_eq!(layout.windows(), vec![None, Some(16)]);
        assert_eq!(layout.groups()[0].layers, vec![1, 3, 5]);
        assert_eq!(layout.groups()[1].layers, vec![0, 2, 4]);
        assert_eq!((layout.group_of(4), layout.slot_of(4)), (1, 2));
        assert_eq!((layout.group_of(1), layout.slot_of(1)), (0, 0));
        assert_eq!(
            layout.describe(),
            "2 KV groups of 3 layers: 1 full (3 layers), 1 with a 16-token window (3 layers)"
        );
    }

    #[test]
    fn gemma3_1b_pads_its_last_sliding_group() {
        // 26 layers, every 6th (5, 11, 17, 23) full: 4 full, 22 sliding in groups of 4
        let w = |l: usize| (l % 6 != 5).then_some(512);
        let layout = KvLayout::from_windows(&(0..26).map(w).collect::<Vec<_>>());
        assert_eq!(layout.slots(), 4);
        assert_eq!(layout.num_groups(), 7);
        assert_eq!(layout.groups()[0].layers, vec![5, 11, 17, 23]);
        assert_eq!(layout.groups()[6].layers, vec![24, 25]);
        assert_eq!(layout.padding_slots(), 2);
        // every layer has exactly one place, and no two layers share one
        let mut places: Vec<_> = (0..26)
            .map(|l| (layout.group_of(l), layout.slot_of(l)))
            .collect();
        places.sort_unstable();
        places.dedup();
        assert_eq!(places.len(), 26);
        assert!(layout.describe().ends_with("; 2 padding slots"));
    }

    #[test]
    fn kinds_of_nearly_equal_counts_group_by_the_largest() {
        // 12 sliding + 13 full (gpt-oss-20b with an EAGLE layer, vLLM's example): groups of 13,
        // one padding slot, not groups of 12 with a second full group of 1 layer and 11 padding
        let windows: Vec<Option<usize>> = (0..25).map(|l| (l % 2 == 1).then_some(128)).collect();
        let layout = KvLayout::from_windows(&windows);
        assert_eq!((layout.slots(), layout.num_groups()), (13, 2));
        assert_eq!(layout.padding_slots(), 1);
        assert_eq!(layout.windows(), vec![None, Some(128)]);
        // 8 and 9 are within 25% of each other; 4 and 5 are not (5 = 1.25 * 4): groups of 4
        let w = |sliding: usize, full: usize| {
            let mut w = vec![Some(32); sliding];
            w.extend(vec![None; full]);
            KvLayout::from_windows(&w)
        };
        assert_eq!((w(8, 9).slots(), w(8, 9).padding_slots()), (9, 1));
        assert_eq!((w(9, 8).slots(), w(9, 8).num_groups()), (9, 2));
        assert_eq!((w(4, 5).slots(), w(4, 5).padding_slots()), (4, 3));
        assert_eq!((w(5, 4).slots(), w(5, 4).num_groups()), (4, 3));
        // tiny-gemma3's shape: groups of one layer
        assert_eq!(
            KvLayout::from_windows(&[Some(24), Some(24), None]).describe(),
            "3 KV groups of 1 layer: 1 full (1 layer), 2 with a 24-token window (2 layers)"
        );
    }

    #[test]
    fn a_window_spanning_the_context_is_full_attention() {
        let gemma2 = |max_positions: usize| {
            let text = format!(
                r#"{{"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 128,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                "num_hidden_layers": 4, "vocab_size": 256, "max_position_embeddings": {max_positions},
                "sliding_window": 4096}}"#
            );
            crate::model::ModelConfig::from_json_str(&text, "gemma2.json").unwrap()
        };
        let long = KvLayout::for_model(&gemma2(8192), false);
        assert_eq!(long.windows(), vec![None, Some(4096)]);
        assert_eq!(KvLayout::for_model(&gemma2(8192), true).num_groups(), 1);
        // a context no longer than the window: every layer reads every position
        let short = KvLayout::for_model(&gemma2(4096), false);
        assert_eq!((short.windows(), short.slots()), (vec![None], 4));
    }

    #[test]
    fn kinds_are_ordered_full_first_then_narrowest_window() {
        let layout = KvLayout::from_windows(&[Some(64), None, Some(8), Some(64), None, Some(8)]);
        assert_eq!(layout.windows(), vec![None, Some(8), Some(64)]);
        assert_eq!(layout.slots(), 2);
    }
}
