//! Write the new tokens' K and V into the paged cache through the slot mapping.

use crate::backend::KvGeometry;

/// k_cache[slot] = K of token t, v_cache[slot] = V of token t, slot = slot_mapping[t]; a slot past
/// the pool (`PAD_SLOT`) marks a padding token.
/// k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] (a slot is [num_kv_heads, head_dim]);
/// qkv: [num_tokens, q_size + 2 * kv_size] with K at columns q_size.., V at q_size + kv_size..
pub fn write_kv(
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    qkv: &[f32],
    slot_mapping: &[u32],
    geom: &KvGeometry,
    q_size: usize,
) {
    let kv = geom.slot_len();
    let row_len = q_size + 2 * kv;
    let num_slots = geom.num_blocks * geom.block_size;
    for (t, &slot) in slot_mapping.iter().enumerate() {
        if slot as usize >= num_slots {
            continue; // a padding token (`PAD_SLOT`) writes nothing, as in kernels/kv_write.cu
        }
        let row = &qkv[t * row_len..(t + 1) * row_len];
        let dst = slot as usize * kv;
        k_cache[dst..dst + kv].copy_from_slice(&row[q_size..q_size + kv]);
        v_cache[dst..dst + kv].copy_from_slice(&row[q_size + kv..q_size + 2 * kv]);
    }
}
